// Rotary position embedding on the GPU (spec gemma4.md §3): NeoX
// ("rotate_half") RoPE in place on a bf16 [tokens, heads, head_dim] tensor,
// token t at position *first_position + t, exactly as cpu::ApplyRope but in
// bf16 storage: dim j pairs with j + D/2, angle = float32(position) *
// inv_freq[j] (one rounded float32 product), cos and sin in float32, the
// rotation in float32 and one rounding to bf16 per output.
//
// inv_freq is cpu::RopeInverseFrequencies(rope, head_dim) uploaded once; the
// "proportional" full-attention RoPE has zeros for its unrotated pairs
// (cos 1, sin 0: those dims pass through, up to the bf16 round trip, which
// is exact), so no special case is needed. first_position is on the device
// so one captured decode graph serves every position.
#ifndef GQUANT_CUDA_ROPE_CUH_
#define GQUANT_CUDA_ROPE_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace gquant::cuda {

// x ([tokens, heads, head_dim] bf16, in place) rotated; inv_freq: head_dim /
// 2 floats on the device; first_position: one int64 on the device, read
// when the kernel runs. Launched with programmatic dependent launch on
// `stream`; tokens = 0 does nothing. InvalidArgument for a null or
// misaligned pointer, a bad shape or an odd head_dim; Internal for a CUDA
// error.
absl::Status ApplyRope(__nv_bfloat16* x, int64_t tokens, int heads, int head_dim,
                       const float* inv_freq, const int64_t* first_position, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_ROPE_CUH_
