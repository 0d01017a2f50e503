// GELU with the tanh approximation on the GPU, shared by the elementwise
// gated product (activations.cu) and the int4 GEMV's paired epilogue
// (int4_mma_gemv.cu), so both compute the CPU reference's formula.
#ifndef GQUANT_CUDA_GELU_TANH_CUH_
#define GQUANT_CUDA_GELU_TANH_CUH_

namespace gquant::cuda {

// cpu::GeluTanh's float32 formula; tanhf is accurate (not the approximate
// tanh.approx instruction).
__device__ __forceinline__ float GeluTanh(float x) {
  constexpr float kBeta = 0.7978845608028654f;  // sqrt(2 / pi)
  constexpr float kKappa = 0.044715f;
  const float inner = kBeta * (x + kKappa * (x * x * x));
  return 0.5f * x * (1.0f + tanhf(inner));
}

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_GELU_TANH_CUH_
