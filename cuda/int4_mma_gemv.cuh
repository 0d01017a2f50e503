// Int4 weight-only products for decode on the tensor cores: y[M, N] =
// x[M, K] · W[N, K]ᵀ for M = 1..16 with bf16 activations and output and fp32
// accumulation, using mma.m16n8k16 with the weights as the 16-row A operand
// and the activations as one or two 8-column B operands.
//
// Why this form: on CUDA cores a decode GEMV spends ~4 instructions per
// weight (unpack, convert, FMA), which caps it near 60% of HBM bandwidth on
// an H100. Here the codes go to the tensor cores as exact bf16 values 128 + q
// (one shift and one LOP3 per two weights, no conversion), and each group's
// scale and zero are applied to its partial sums:
//   Σ_k∈g w_k x_k = s · (Σ (128 + q_k) x_k − (128 + z) Σ x_k),
// with Σ x_k from the same mma against an A of ones. Weights are never
// rounded, so the only rounding is fp32 accumulation and the bf16 output.
//
// Streaming: the 16 x 64 tiles of the layout (int4_mma_layout.h) are one
// contiguous sequence, row block after row block. Each thread block owns
// whole row blocks (enough that the grid is one wave) and its warps take
// equal contiguous runs of their tiles, streaming them through a
// shared-memory ring with cp.async, so several tiles per warp are always in
// flight without holding registers. A row block split between two or more
// runs is finished inside the thread block: partial sums meet in shared
// memory after one barrier and are added in warp order, so results do not
// depend on timing and no global scratch or atomics are needed (version 4
// finished split blocks across the grid with counters: its fences and
// atomics cost ~2-3 µs per launch). For M > 8 a step covers two row blocks'
// tiles at the same columns, which share one staged copy of x and one Σx mma.
//
// Launch overlap: the kernel is launched with programmatic dependent launch
// (launch.cuh), so in a chain of decode kernels its launch and set-up overlap
// the predecessor's tail; it reads x and writes y only after the predecessor
// is done. At M = 1 each thread block copies x to shared memory once, so the
// ring holds only weights and its first stages are requested before that
// wait. A thread block takes enough shared memory that no multiprocessor can
// hold more of them than the one-wave grid assumes: launched early behind
// another kernel, blocks otherwise land two to a multiprocessor beside idle
// ones (measured: up to 2x slower behind another GEMV).
#ifndef GQUANT_CUDA_INT4_MMA_GEMV_CUH_
#define GQUANT_CUDA_INT4_MMA_GEMV_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "int4_mma_layout.h"
#include "rms_norm.cuh"

namespace gquant::cuda {

inline constexpr int kInt4MmaMaxM = 16;

// Device pointers and shape of one weight in the cuda_int4_mma16 layout.
struct Int4MmaWeight {
  const uint4* qweight = nullptr;          // [N/16][K/64][32 lanes][16 bytes]
  const __nv_bfloat162* params = nullptr;  // [N/16][G][8][2]
  int64_t n = 0;
  int64_t k = 0;
  int group_size = 32;
  bool min_form = false;
};

// Benchmark knobs; the defaults are the measured best.
struct Int4MmaTuning {
  int stages = 0;              // ring stages per warp (2 tiles each): 3 or 4 (0: 3)
  int row_tiles = 0;           // 16-row tiles sharing x per step: 1 or 2 (0: 2 for M > 8)
  int warps_per_sm = 0;        // resident warps per multiprocessor (0: 16, 32 for N >= 131072)
  bool serial_launch = false;  // no programmatic dependent launch (launch.cuh)
  bool late_weights = false;   // M = 1: first weights only after the predecessor wait (version 5)
};

// y = x · Wᵀ for m in 1..kInt4MmaMaxM rows of x ([m, K] bf16) into y ([m, N]
// bf16). InvalidArgument for a bad shape, pointer or knob; Internal for a
// launch error. Launches on one stream may overlap (programmatic dependent
// launch) but each reads x only after the previous kernel has finished.
absl::Status Int4MmaGemv(const Int4MmaWeight& weight, const __nv_bfloat16* x, int m,
                         __nv_bfloat16* y, cudaStream_t stream, const Int4MmaTuning& tuning = {});

// The MLP's gated product in one launch: for a weight whose 16-row blocks
// pair a gate and an up matrix [N/2, K] by halves (row 16 i + j is gate row
// 8 i + j, row 16 i + 8 + j is up row 8 i + j; InterleaveInt4MmaRowHalves
// packs it), y[m, N/2] = gelu_tanh(x · Gateᵀ) * (x · Upᵀ), each product from
// its fp32 sums (no bf16 rounding between them). Saves the decode step the
// separate elementwise launch; errors as Int4MmaGemv's, and InvalidArgument
// for tuning.stages 4 (only the default ring depth is built).
absl::Status Int4MmaGemvGeluPairs(const Int4MmaWeight& weight, const __nv_bfloat16* x, int m,
                                  __nv_bfloat16* y, cudaStream_t stream,
                                  const Int4MmaTuning& tuning = {});

// Decode (M = 1) of a row the GEMV forms itself: x = bf16(RmsNorm(r) *
// next_weight) (or bf16(r) without row.next_norm) with r = (residual +
// RmsNorm(delta) * delta_weight) * (*scalar), the row AddNormalizedThenNorm
// (rms_norm.cuh) would write, made
// by every thread block in its prologue from `row` ([K] vectors) while its
// first weights stream in, and r stored to row.residual_out by one block.
// Saves a decode step the norm kernel's launch and a round trip through
// memory (bench/RESULTS.md: 31B decode +1.9% with the norm rows' inputs in
// registers, E2B +6%). residual_out must not overlap residual
// (the other blocks are still reading it). `epilogue` says what is stored.
// Errors as Int4MmaGemv's, and InvalidArgument for a null, misaligned (16
// bytes) or overlapping vector, eps < 0, or both epilogues at once.
struct Int4MmaEpilogue {
  // y[1, N/2] = gelu_tanh(gate) * up of a gate / up pair weight, as
  // Int4MmaGemvGeluPairs.
  bool gelu_pairs = false;
  // When set (device, [N] bf16): y[1, N] = gelu_tanh(x · Wᵀ) * gelu_times,
  // from the fp32 sums. Gemma's per-layer-input gate times that layer's
  // input (spec §2.4) without the elementwise launch between the two GEMVs.
  const __nv_bfloat16* gelu_times = nullptr;
};
absl::Status Int4MmaGemvAfterAddNorm(const Int4MmaWeight& weight, const ResidualAddNorm& row,
                                     const Int4MmaEpilogue& epilogue, __nv_bfloat16* y,
                                     cudaStream_t stream, const Int4MmaTuning& tuning = {});

// The experts of one mixture-of-experts matrix (device_experts.cuh): every
// expert has the shape and form of the Int4MmaWeight passed beside it, and
// its pointers sit in device tables indexed by the expert id.
struct Int4MmaExpertTables {
  const uint4* const* qweights = nullptr;         // [num_experts], on the device
  const __nv_bfloat162* const* params = nullptr;  // [num_experts], on the device
  int num_experts = 0;
};

// Decode through experts chosen on the device: for slot s < slots,
// y[s, :] = x[s * x_slot_stride, :K] · W_e[N, K]ᵀ with e = expert_ids[s]
// (int32 on the device, written by an earlier kernel such as RouteTopK; an
// id outside [0, num_experts) is clamped into it) and y [slots, N]. `shape`
// gives N, K, the group size and form (its pointers are not used);
// x_slot_stride 0 lets every slot read the same row. One launch of the M = 1
// kernel over a (row blocks, slots) grid: each block reads its slot's id
// after the predecessor wait, so it is captured into a graph like any GEMV.
// Errors as Int4MmaGemv's, plus InvalidArgument for slots < 1, null tables
// or ids, or an x_slot_stride that is negative or not a multiple of 8.
absl::Status Int4MmaGemvSelected(const Int4MmaWeight& shape, const Int4MmaExpertTables& experts,
                                 const int32_t* expert_ids, int slots, const __nv_bfloat16* x,
                                 int64_t x_slot_stride, __nv_bfloat16* y, cudaStream_t stream,
                                 const Int4MmaTuning& tuning = {});

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_MMA_GEMV_CUH_
