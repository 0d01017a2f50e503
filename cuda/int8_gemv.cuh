// Int8 weight-only products for decode on the tensor cores: y[M, N] =
// x[M, K] · W[N, K]ᵀ for M = 1..16 with bf16 activations and output and fp32
// accumulation, reading the "cuda_int8_rows" layout (int8_layout.h: int8
// codes [N, K] row-major, float32 (scale, zero | min) pairs [N][G]).
//
// Design (why each choice; numbers for an H100 at ~3 TB/s):
// - Tensor cores for every M. On CUDA cores M = 16 needs 16 FMAs per weight,
//   more than the FP32 units issue at HBM speed; mma.m16n8k16 takes 16 rows
//   of weights as A and up to 8 tokens as B (two B tiles for M > 8), so one
//   kernel serves M = 1..16 and the extra tokens are nearly free.
// - Exact weights. An int8 code does not fit a bf16 magic number (8 bits vs
//   7 mantissa bits), so each code goes through a float: the bits
//   0x4B000000 | (c ^ 0x80) are 2^23 + 128 + c, one byte permute; one
//   subtract leaves c exactly, and one F2FP packs two into bf16x2 (exact:
//   |c| <= 128 has at most 8 significant bits). About 2.75 instructions per
//   weight, ~5.5 with the mma, copies and group corrections (counted in the
//   PTX at M = 1): ~40% of the issue rate at 2.6 TB/s of weights.
// - Group sums shared: a group's part of a dot product is
//   s · (Σ c x − z Σ x), or s Σ c x − min Σ x in the min form; Σ x comes
//   from a second mma with an A of ones (row independent), so the scale and
//   zero are applied once per group and row, not per weight.
// - Memory-level parallelism without registers: each warp streams its
//   16-row x 128-column tiles through a private ring of shared-memory stages
//   with cp.async (16-byte, coalesced: 8 lanes read one row's 128-byte
//   segment), so 3 tiles (~7 KB) per warp are in flight while one is used.
//   Warp-private rings need only __syncwarp in the main loop.
// - The mma wants, per lane, 4 columns of a 16-column block for rows g and
//   g + 8 (g = lane / 4), which a 16-byte row load cannot give without a
//   transpose; ldmatrix (treating byte pairs as b16) does that transpose
//   from the stage (XOR-swizzled, so neither the copies nor ldmatrix have
//   bank conflicts). The mma's k order is free as long as A and B agree:
//   lane t's k slots 2t, 2t+1, 2t+8, 2t+9 hold columns 4t..4t+3 of the
//   block, so its B is one 8-byte load of x.
// - One wave, as the int4 kernel (one_wave_grid.cuh): each thread block
//   owns whole 16-row blocks, its warps take equal contiguous runs of their
//   (row block, tile) steps, and a row block split between runs is finished
//   in the block. The rings fill and drain once per launch, not once per
//   row block (version 1 gave each block one row block and its warps
//   strided K tiles: several rounds of blocks, 0.39-0.75 of the copy
//   ceiling on the 31B layer shapes). At M = 1 the block copies x to shared
//   memory once and requests its first weights before the predecessor wait.
//   Very tall weights at M = 1 (an LM head: 32+ row blocks per one-wave
//   block) run one row block per block in rounds instead, its warps side by
//   side in the same 16 rows, which measured faster there.
#ifndef GQUANT_CUDA_INT8_GEMV_CUH_
#define GQUANT_CUDA_INT8_GEMV_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "int8_layout.h"

namespace gquant::cuda {

inline constexpr int kInt8GemvMaxM = 16;

// Device pointers and shape of one "cuda_int8_rows" weight (int8_layout.h).
// codes 16-byte aligned, params 8-byte aligned.
struct Int8RowsWeight {
  const int8_t* codes = nullptr;   // [N, K] row-major
  const float2* params = nullptr;  // [N][K / group_size]: (scale, zero) or (scale, min)
  int64_t n = 0;
  int64_t k = 0;
  int64_t group_size = 32;  // a multiple of 16 dividing K; K for per-row
  bool min_form = false;    // w = c * scale - min instead of (c - zero) * scale
};

// Benchmark knobs; the defaults are the measured best.
struct Int8GemvTuning {
  int warps_per_sm = 0;        // resident warps per multiprocessor (0: 16)
  bool serial_launch = false;  // no programmatic dependent launch
  bool late_weights = false;   // M = 1: first weights only after the predecessor wait
  int stages = 0;              // ring stages per warp: 3 or 4 (0: 3)
  // The grid: one wave (one_wave_grid.cuh), or one row block per thread
  // block in rounds (warps_per_sm then unused); by default rounds only for
  // very tall weights such as an LM head at M = 1.
  enum Schedule { kByShape = 0, kOneWave = 1, kRounds = 2 };
  int schedule = kByShape;
};

// y = x · Wᵀ for m in 1..kInt8GemvMaxM rows of x ([m, K] bf16, 8-byte
// aligned) into y ([m, N] bf16). InvalidArgument for a bad shape, pointer,
// M or knob, or at M = 1 a K whose activation row does not fit in shared
// memory beside the rings (K above ~100K on an H100); Internal for a launch
// error.
absl::Status Int8Gemv(const Int8RowsWeight& weight, const __nv_bfloat16* x, int m, __nv_bfloat16* y,
                      cudaStream_t stream, const Int8GemvTuning& tuning = {});

// The experts of one mixture-of-experts matrix (device_experts.cuh), as
// Int4MmaExpertTables: every expert has `shape`'s form, its pointers in
// device tables indexed by the expert id.
struct Int8RowsExpertTables {
  const int8_t* const* codes = nullptr;   // [num_experts], on the device
  const float2* const* params = nullptr;  // [num_experts], on the device
  int num_experts = 0;
};

// Decode through experts chosen on the device, as Int4MmaGemvSelected: for
// slot s < slots, y[s, :] = x[s * x_slot_stride, :K] · W_eᵀ with e =
// expert_ids[s] clamped into [0, num_experts), y [slots, N]; each block
// reads its slot's id after the predecessor wait. `shape` gives N, K, the
// group size and form. InvalidArgument as Int8Gemv's, plus slots < 1, null
// tables or ids, an x_slot_stride negative or not a multiple of 4.
absl::Status Int8GemvSelected(const Int8RowsWeight& shape, const Int8RowsExpertTables& experts,
                              const int32_t* expert_ids, int slots, const __nv_bfloat16* x,
                              int64_t x_slot_stride, __nv_bfloat16* y, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT8_GEMV_CUH_
