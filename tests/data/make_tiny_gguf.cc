// Writes tests/data/tiny.gguf, the sample GGUF the gquant-gguf inspect test
// reads:  build/tests/gquant_make_tiny_gguf tests/data/tiny.gguf
// (libstdc++'s normal_distribution makes the bytes reproducible with GCC).
#include <cstdio>
#include <random>
#include <span>
#include <string>
#include <vector>

#include "gquant/ggml_format.h"
#include "gquant/gguf.h"

using namespace gquant;  // a one-file generator

#define CHECK_OK(expr)                                     \
  do {                                                     \
    absl::Status s_ = (expr);                              \
    if (!s_.ok()) {                                        \
      std::fprintf(stderr, "%s\n", s_.ToString().c_str()); \
      return 1;                                            \
    }                                                      \
  } while (0)

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s OUT.gguf\n", argv[0]);
    return 2;
  }
  auto writer_or = GgufWriter::Create(argv[1]);
  CHECK_OK(writer_or.status());
  GgufWriter& w = **writer_or;
  w.SetMetadata("general.architecture", GgufValue("gemma4"));
  w.SetMetadata("general.name", GgufValue("gquant tiny GGUF sample"));
  w.SetMetadata("general.alignment", GgufValue(uint32_t{32}));
  w.SetMetadata("general.file_type", GgufValue(uint32_t{15}));
  w.SetMetadata("gemma4.context_length", GgufValue(uint64_t{131072}));
  w.SetMetadata("gemma4.block_count", GgufValue(int32_t{2}));
  w.SetMetadata("gemma4.attention.layer_norm_rms_epsilon", GgufValue(1e-6f));
  w.SetMetadata("gemma4.final_logit_softcapping", GgufValue(30.0));
  w.SetMetadata("gemma4.use_bidirectional_attention", GgufValue(true));
  w.SetMetadata("test.uint8", GgufValue(uint8_t{200}));
  w.SetMetadata("test.int8", GgufValue(int8_t{-5}));
  w.SetMetadata("test.int64", GgufValue(int64_t{-1234567890123}));
  w.SetMetadata("test.long_string",
                GgufValue(std::string("A long description that goes on and on, well past the "
                                      "sixty-four characters that inspect shows before it cuts.")));
  w.SetMetadata("gemma4.attention.sliding_window_pattern",
                GgufValue::ArrayOf<int32_t>({1, 1, 0, 1, 1, 0}));
  std::vector<std::string> tokens;
  for (int i = 0; i < 12; ++i) tokens.push_back("tok" + std::to_string(i));
  tokens[0] = "<pad>";
  tokens[1] = "<eos>";
  w.SetMetadata("tokenizer.ggml.tokens", GgufValue::ArrayOf<std::string>(tokens));
  w.SetMetadata("tokenizer.ggml.scores", GgufValue::ArrayOf<float>({0.0f, -1.5f, -2.25f}));

  std::mt19937 rng(1);
  std::normal_distribution<float> normal(0.0f, 0.02f);
  struct T {
    const char* name;
    std::vector<int64_t> dims;
    GgmlType type;
  };
  const std::vector<T> specs = {{"token_embd.weight", {64, 12}, GgmlType::kF32},
                                {"blk.0.attn_q.weight", {64, 32}, GgmlType::kQ8_0},
                                {"blk.0.ffn_up.weight", {256, 8}, GgmlType::kQ4_K}};
  std::vector<std::vector<std::byte>> data;
  for (const T& t : specs) {
    const int64_t n = t.dims[0] * t.dims[1];
    std::vector<float> values(n);
    for (float& v : values) v = normal(rng);
    const uint64_t bytes = *GgmlRowBytes(t.type, t.dims[0]) * t.dims[1];
    data.emplace_back(bytes);
    CHECK_OK(QuantizeGgmlRef(t.type, values, data.back()));
    CHECK_OK(w.AddTensor(t.name, t.dims, static_cast<uint32_t>(t.type), bytes));
  }
  for (size_t i = 0; i < specs.size(); ++i) CHECK_OK(w.WriteTensorData(specs[i].name, data[i]));
  CHECK_OK(w.Commit());
  return 0;
}
