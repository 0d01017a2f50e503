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
// contiguous sequence; every warp of the grid takes an equal contiguous run
// of it (a whole number of waves, no tail) and streams it through a
// shared-memory ring with cp.async, so several tiles per warp are always in
// flight without holding registers. A row block split between warps is
// finished by the last warp to arrive (a per-row-block counter), which adds
// the partial sums in warp order: results do not depend on timing.
#ifndef GQUANT_CUDA_INT4_MMA_GEMV_CUH_
#define GQUANT_CUDA_INT4_MMA_GEMV_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/statusor.h"
#include "device_buffer.cuh"
#include "int4_mma_layout.h"

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

// Scratch of the split over K: two partial-sum slots per warp of the grid and
// one arrival counter per 16-row block, zero between launches (the last warp
// of each row block resets its counter). Launches that may run concurrently
// need separate workspaces; one per stream is enough.
class Int4MmaWorkspace {
 public:
  // Sized for weights of up to `max_n` rows on the current device. Internal
  // for a CUDA error.
  static absl::StatusOr<Int4MmaWorkspace> Create(int64_t max_n);

  float* partials() { return partials_.data(); }
  int* counters() { return counters_.data(); }
  int64_t max_warps() const { return max_warps_; }
  int64_t max_row_blocks() const { return static_cast<int64_t>(counters_.size()); }
  int multiprocessors() const { return multiprocessors_; }

 private:
  DeviceBuffer<float> partials_;
  DeviceBuffer<int> counters_;
  int64_t max_warps_ = 0;
  int multiprocessors_ = 0;
};

// Benchmark knobs (0: the default).
struct Int4MmaTuning {
  int stages = 0;        // tiles per warp in the shared-memory ring: 4 or 8
  int warps_per_sm = 0;  // caps the grid below what fits on a multiprocessor
};

// y = x · Wᵀ for m in 1..kInt4MmaMaxM rows of x ([m, K] bf16) into y ([m, N]
// bf16). InvalidArgument for a bad shape, pointer, knob or a workspace too
// small for N; Internal for a launch error.
absl::Status Int4MmaGemv(const Int4MmaWeight& weight, const __nv_bfloat16* x, int m,
                         __nv_bfloat16* y, Int4MmaWorkspace& workspace, cudaStream_t stream,
                         const Int4MmaTuning& tuning = {});

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_INT4_MMA_GEMV_CUH_
