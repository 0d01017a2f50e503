#include <cuda_bf16.h>

#include <cstdint>

#include "absl/strings/str_format.h"
#include "device_primitives.cuh"
#include "launch.cuh"
#include "rope.cuh"
#include "rope_rotation.cuh"

namespace gquant::cuda {
namespace {

struct RopeArgs {
  __nv_bfloat16* x;  // [vectors, head_dim]
  int64_t vectors;   // tokens * heads
  int heads;
  int head_dim;
  const float* inv_freq;  // [head_dim / 2]
  const int64_t* first_position;
};

// One warp per head vector, kHeadsPerBlock per block.
template <int kWidth>
__global__ void __launch_bounds__(kHeadsPerBlock * 32) RopeKernel(const RopeArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t vector = int64_t{blockIdx.x} * kHeadsPerBlock + threadIdx.x / 32;
  if (vector >= a.vectors) return;
  const float position = RopePosition(a.first_position, vector / a.heads);
  ScaleAndRotateHead<kWidth>(a.x + vector * a.head_dim, a.head_dim, 1.0f, nullptr, a.inv_freq,
                             position, threadIdx.x % 32);
}

}  // namespace

absl::Status ApplyRope(__nv_bfloat16* x, int64_t tokens, int heads, int head_dim,
                       const float* inv_freq, const int64_t* first_position, cudaStream_t stream) {
  if (inv_freq == nullptr) {
    return absl::InvalidArgumentError("ApplyRope: inv_freq must be non-null");
  }
  if (absl::Status s =
          CheckHeads("ApplyRope", x, tokens, heads, head_dim, inv_freq, first_position);
      !s.ok()) {
    return s;
  }
  if (tokens == 0) return absl::OkStatus();
  const RopeArgs args{x, tokens * heads, heads, head_dim, inv_freq, first_position};
  const int blocks = static_cast<int>((args.vectors + kHeadsPerBlock - 1) / kHeadsPerBlock);
  const auto kernel =
      HeadsVectorizable(x, head_dim, nullptr, inv_freq) ? RopeKernel<kVectorWidth> : RopeKernel<1>;
  return LaunchKernel(kernel, blocks, kHeadsPerBlock * 32, 0, stream, /*overlap=*/true, args);
}

}  // namespace gquant::cuda
