// Library example: open a Hugging Face Gemma 4 checkpoint, read its config,
// and stream every tensor once (memory stays near one tensor), printing the
// RMS of each layer's q_proj.
//
//   read_checkpoint tests/data/tiny-31b/bf16
#include <cmath>
#include <cstdio>
#include <string>

#include "gquant/checkpoint.h"
#include "gquant/gemma4/config.h"
#include "gquant/status.h"

namespace {

absl::Status Run(const std::string& path) {
  GQ_ASSIGN_OR_RETURN(const gquant::gemma4::Config config, gquant::gemma4::LoadConfig(path));
  GQ_ASSIGN_OR_RETURN(const gquant::Checkpoint checkpoint, gquant::Checkpoint::Open(path));
  std::printf("%d layers, %zu tensors\n", config.text.num_hidden_layers, checkpoint.num_tensors());
  return checkpoint.ForEachTensor([](const gquant::Tensor& tensor) -> absl::Status {
    if (tensor.name().find("q_proj.weight") == std::string::npos) return absl::OkStatus();
    GQ_ASSIGN_OR_RETURN(const std::vector<float> values, tensor.ToFloat());
    double sum = 0;
    for (float v : values) sum += static_cast<double>(v) * v;
    std::printf("%-60s rms %.4f\n", tensor.name().c_str(), std::sqrt(sum / values.size()));
    return absl::OkStatus();
  });
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_DIR\n", argv[0]);
    return 2;
  }
  if (absl::Status status = Run(argv[1]); !status.ok()) {
    std::fprintf(stderr, "read_checkpoint: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
