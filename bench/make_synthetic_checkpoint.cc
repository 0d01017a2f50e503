// Writes a Gemma-shaped bf16 checkpoint of random weights for measuring
// gquant-quantize (memory, speed) without downloading a model.
//
//   gquant_make_synthetic_checkpoint OUT_DIR TOTAL_MB LARGEST_MB
//
// The largest tensor is the embedding ([LARGEST_MB * 2^19 / 4096, 4096] bf16);
// layers of q/k/v/o [4096, 4096], gate/up [8192, 4096], down [4096, 8192] and
// two norms are added until the total reaches TOTAL_MB. Values are uniform in
// (-1, 1) from splitmix64: cheap, never zero-filled, never NaN. A text-only
// Gemma 4 config.json (16 heads of 256, the last layer full) makes the
// directory a valid input for gquant-gguf export too.
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "gquant/atomic_file.h"
#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "gquant/status.h"

namespace {

constexpr int64_t kHidden = 4096;

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

absl::Status Write(const std::string& dir, int64_t total_mb, int64_t largest_mb) {
  std::vector<gquant::SafetensorsTensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight",
                   gquant::DType::kBF16,
                   {largest_mb * (int64_t{1} << 19) / kHidden, kHidden}});
  int64_t bytes = largest_mb << 20;
  for (int layer = 0; bytes < (total_mb << 20); ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    for (const char* name :
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}) {
      specs.push_back({p + name + ".weight", gquant::DType::kBF16, {kHidden, kHidden}});
    }
    specs.push_back({p + "mlp.gate_proj.weight", gquant::DType::kBF16, {2 * kHidden, kHidden}});
    specs.push_back({p + "mlp.up_proj.weight", gquant::DType::kBF16, {2 * kHidden, kHidden}});
    specs.push_back({p + "mlp.down_proj.weight", gquant::DType::kBF16, {kHidden, 2 * kHidden}});
    specs.push_back({p + "input_layernorm.weight", gquant::DType::kBF16, {kHidden}});
    specs.push_back({p + "post_attention_layernorm.weight", gquant::DType::kBF16, {kHidden}});
    bytes += (4 + 6) * kHidden * kHidden * 2 + 4 * kHidden;
  }
  std::filesystem::create_directories(dir);
  GQ_ASSIGN_OR_RETURN(auto writer, gquant::SafetensorsWriter::Create(dir + "/model.safetensors",
                                                                     specs, {{"format", "pt"}}));
  uint64_t state = 20261122;
  std::vector<uint16_t> values;
  for (const auto& spec : specs) {
    int64_t count = 1;
    for (int64_t d : spec.shape) count *= d;
    values.resize(count);
    for (auto& v : values) {
      const float u = static_cast<float>(SplitMix64(state) >> 40) * 0x1p-23f - 1.0f;
      v = gquant::FloatToBFloat16(u == 0 ? 0.5f : u);
    }
    GQ_RETURN_IF_ERROR(writer->WriteTensor(spec.name, std::as_bytes(std::span(values))));
  }
  GQ_RETURN_IF_ERROR(writer->Commit());
  const int layers = static_cast<int>((specs.size() - 1) / 9);
  std::string layer_types;
  for (int i = 0; i < layers; ++i) {
    layer_types += i + 1 < layers ? "\"sliding_attention\", " : "\"full_attention\"";
  }
  GQ_RETURN_IF_ERROR(gquant::WriteFileAtomically(
      dir + "/config.json",
      absl::StrFormat(R"({"model_type": "gemma4_text", "architectures": ["Gemma4ForCausalLM"],
 "vocab_size": %d, "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d,
 "num_attention_heads": 16, "num_key_value_heads": 16, "head_dim": 256, "global_head_dim": 256,
 "hidden_size_per_layer_input": 0, "layer_types": [%s]}
)",
                      specs[0].shape[0], kHidden, 2 * kHidden, layers, layer_types)));
  std::printf("wrote %s: %zu tensors, %.1f MB\n", dir.c_str(), specs.size(), bytes / 1048576.0);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: %s OUT_DIR TOTAL_MB LARGEST_MB\n", argv[0]);
    return 2;
  }
  if (absl::Status s = Write(argv[1], std::atoll(argv[2]), std::atoll(argv[3])); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
