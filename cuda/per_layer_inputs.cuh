// The per-layer inputs of Gemma 4's PLE models (E2B, E4B; spec gemma4.md
// §2.3), the part after the two lookups/matmuls, fused into one kernel:
//
//   out[t, l, :] = (RmsNorm(context[t, l, :] * projection_scale) * norm_weight
//                   + per_layer[t, l, :]) * input_scale
//
// where context = per_layer_model_projection(scaled embedding) and
// per_layer = the embed_tokens_per_layer rows already times sqrt(P), both bf16
// [tokens, layers * P]; the RmsNorm is over each P-long slice, in float32 as
// cpu::RmsNorm (eps inside the root), with one bf16 rounding at the store.
// Released models: projection_scale = hidden^-0.5, input_scale = 2^-0.5.
//
// Header without device code: plain C++ files may include it.
#ifndef GQUANT_CUDA_PER_LAYER_INPUTS_CUH_
#define GQUANT_CUDA_PER_LAYER_INPUTS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace gquant::cuda {

// Device pointers; out may alias per_layer. tokens = 0 does nothing.
// InvalidArgument for null pointers, layers or dim < 1, or eps < 0;
// Internal for a CUDA error.
absl::Status CombinePerLayerInputs(const __nv_bfloat16* context, const __nv_bfloat16* per_layer,
                                   int64_t tokens, int layers, int dim,
                                   const __nv_bfloat16* norm_weight, float projection_scale,
                                   float eps, float input_scale, __nv_bfloat16* out,
                                   cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_PER_LAYER_INPUTS_CUH_
