// Uses the installed gquant: writes a safetensors file through the public API,
// reads it back, and checks the bytes and a bf16 conversion.
#include <cstdio>
#include <string>
#include <vector>

#include "gquant/checkpoint.h"
#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"
#ifdef GQUANT_HAS_CUDA
#include "gquant/cuda/device.cuh"
#endif

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string path = std::string(argv[1]) + "/consumer.safetensors";
  auto tensor = gquant::Tensor::Allocate("w", gquant::DType::kBF16, {2, 3});
  if (!tensor.ok()) return 1;
  std::vector<float> values = {1.5f, -2.25f, 3.0f, 0.1f, -0.5f, 7.0f};
  if (!gquant::ConvertFromFloat(values, gquant::DType::kBF16, tensor->mutable_bytes()).ok())
    return 1;
  std::vector<gquant::Tensor> tensors = {*tensor};
  if (absl::Status s = gquant::WriteSafetensors(path, tensors, {{"producer", "consumer"}});
      !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  auto checkpoint = gquant::Checkpoint::Open(path);
  if (!checkpoint.ok()) return 1;
  auto back = checkpoint->Get("w");
  if (!back.ok()) return 1;
  auto floats = back->ToFloat();
  if (!floats.ok() || (*floats)[0] != 1.5f ||
      (*floats)[3] != gquant::BFloat16ToFloat(gquant::FloatToBFloat16(0.1f))) {
    return 1;
  }
#ifdef GQUANT_HAS_CUDA
  std::printf("consumer: CUDA devices visible: %d\n", gquant::cuda::DeviceCount());
#endif
  std::printf("consumer: gquant round trip ok\n");
  return 0;
}
