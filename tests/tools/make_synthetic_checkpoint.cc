// Writes a Gemma-shaped bf16 checkpoint of random weights: for the tool tests
// (kill/resume, memory; small, seconds on 2 cores) and for measuring
// gquant-quantize and gquant-gguf (bench/measure_*_memory.sh) without
// downloading a model.
//
//   gquant_make_synthetic_checkpoint OUT_DIR LAYERS HIDDEN VOCAB
//
// Tensors: model.embed_tokens.weight [VOCAB, HIDDEN]; per layer q/k/v/o
// [HIDDEN, HIDDEN], gate/up [2 HIDDEN, HIDDEN], down [HIDDEN, 2 HIDDEN] and
// two norms [HIDDEN]. Values are uniform in (-1, 1) from splitmix64 with a
// fixed seed: the same bytes on every run, never zero-filled, never NaN. A
// text-only Gemma 4 config.json (HIDDEN / 256 heads of 256, the last layer
// full) makes the directory a valid input for gquant-gguf export too, and a
// generation_config.json makes the auxiliary-file copy part of every run.
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

constexpr int64_t kHeadDim = 256;

uint64_t SplitMix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

absl::Status Write(const std::string& dir, int layers, int64_t hidden, int64_t vocab) {
  std::vector<gquant::SafetensorsTensorSpec> specs;
  specs.push_back({"model.embed_tokens.weight", gquant::DType::kBF16, {vocab, hidden}});
  for (int layer = 0; layer < layers; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    for (const char* name :
         {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj"}) {
      specs.push_back({p + name + ".weight", gquant::DType::kBF16, {hidden, hidden}});
    }
    specs.push_back({p + "mlp.gate_proj.weight", gquant::DType::kBF16, {2 * hidden, hidden}});
    specs.push_back({p + "mlp.up_proj.weight", gquant::DType::kBF16, {2 * hidden, hidden}});
    specs.push_back({p + "mlp.down_proj.weight", gquant::DType::kBF16, {hidden, 2 * hidden}});
    specs.push_back({p + "input_layernorm.weight", gquant::DType::kBF16, {hidden}});
    specs.push_back({p + "post_attention_layernorm.weight", gquant::DType::kBF16, {hidden}});
  }
  std::filesystem::create_directories(dir);
  GQ_ASSIGN_OR_RETURN(auto writer, gquant::SafetensorsWriter::Create(dir + "/model.safetensors",
                                                                     specs, {{"format", "pt"}}));
  uint64_t state = 20261122;
  std::vector<uint16_t> values;
  int64_t bytes = 0;
  for (const auto& spec : specs) {
    int64_t count = 1;
    for (int64_t d : spec.shape) count *= d;
    values.resize(count);
    for (auto& v : values) {
      const float u = static_cast<float>(SplitMix64(state) >> 40) * 0x1p-23f - 1.0f;
      v = gquant::FloatToBFloat16(u == 0 ? 0.5f : u);
    }
    GQ_RETURN_IF_ERROR(writer->WriteTensor(spec.name, std::as_bytes(std::span(values))));
    bytes += count * 2;
  }
  GQ_RETURN_IF_ERROR(writer->Commit());
  std::string layer_types;
  for (int i = 0; i < layers; ++i) {
    layer_types += i + 1 < layers ? "\"sliding_attention\", " : "\"full_attention\"";
  }
  const int64_t heads = hidden / kHeadDim;
  GQ_RETURN_IF_ERROR(gquant::WriteFileAtomically(
      dir + "/config.json",
      absl::StrFormat(R"({"model_type": "gemma4_text", "architectures": ["Gemma4ForCausalLM"],
 "vocab_size": %d, "hidden_size": %d, "intermediate_size": %d, "num_hidden_layers": %d,
 "num_attention_heads": %d, "num_key_value_heads": %d, "head_dim": %d, "global_head_dim": %d,
 "hidden_size_per_layer_input": 0, "layer_types": [%s]}
)",
                      vocab, hidden, 2 * hidden, layers, heads, heads, kHeadDim, kHeadDim,
                      layer_types)));
  GQ_RETURN_IF_ERROR(gquant::WriteFileAtomically(
      dir + "/generation_config.json", "{\"do_sample\": false, \"max_new_tokens\": 16}\n"));
  std::printf("wrote %s: %zu tensors, %.1f MB\n", dir.c_str(), specs.size(), bytes / 1048576.0);
  return absl::OkStatus();
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 5) {
    std::fprintf(stderr, "usage: %s OUT_DIR LAYERS HIDDEN VOCAB\n", argv[0]);
    return 2;
  }
  const int layers = std::atoi(argv[2]);
  const int64_t hidden = std::atoll(argv[3]), vocab = std::atoll(argv[4]);
  if (layers < 1 || hidden <= 0 || hidden % kHeadDim != 0 || vocab <= 0) {
    std::fprintf(stderr, "LAYERS >= 1, HIDDEN a positive multiple of %d, VOCAB > 0\n",
                 static_cast<int>(kHeadDim));
    return 2;
  }
  if (absl::Status s = Write(argv[1], layers, hidden, vocab); !s.ok()) {
    std::fprintf(stderr, "%s\n", s.ToString().c_str());
    return 1;
  }
  return 0;
}
