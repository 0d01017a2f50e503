// Gemma 4 <-> llama.cpp GGUF mapping: the name table maps every HF text tensor
// of the bundled fixtures to GGUF and back; a TextConfig survives a trip
// through GGUF metadata (with and without the converted tensors) and through
// config.json; malformed metadata is rejected with the key named.
#include "gquant/gemma4/gguf_mapping.h"

#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "gquant/ggml_format.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using testing::TempDir;
using testing::TestDataDir;
using Metadata = std::vector<std::pair<std::string, GgufValue>>;

struct Fixture {
  std::string name;
  std::string_view hf_prefix;  // the prefix its checkpoint uses
  size_t num_tensors;
};
const Fixture kFixtures[] = {{"tiny-31b", kHfPrefixMultimodal, 84},
                             {"tiny-e2b", kHfPrefixText, 115},
                             {"tiny-moe", kHfPrefixText, 88}};
const Fixture& k31B = kFixtures[0];
const Fixture& kE2B = kFixtures[1];
const Fixture& kMoe = kFixtures[2];

std::string FixtureDir(const Fixture& f) { return TestDataDir() + "/" + f.name + "/bf16"; }

TextConfig FixtureConfig(const Fixture& f) {
  absl::StatusOr<Config> config = LoadConfig(FixtureDir(f));
  REQUIRE_OK(config);
  return config->text;
}

SafetensorsFile FixtureWeights(const Fixture& f) {
  absl::StatusOr<SafetensorsFile> file =
      SafetensorsFile::Open(FixtureDir(f) + "/model.safetensors");
  REQUIRE_OK(file);
  return *std::move(file);
}

// Field by field, so that a failure names the field.
void RequireSameConfig(const TextConfig& got, const TextConfig& want) {
#define GQ_SAME(field)              \
  do {                              \
    INFO(#field);                   \
    CHECK(got.field == want.field); \
  } while (0)
  GQ_SAME(vocab_size);
  GQ_SAME(hidden_size);
  GQ_SAME(intermediate_size);
  GQ_SAME(num_hidden_layers);
  GQ_SAME(num_attention_heads);
  GQ_SAME(num_key_value_heads);
  GQ_SAME(head_dim);
  GQ_SAME(hidden_activation);
  GQ_SAME(max_position_embeddings);
  GQ_SAME(rms_norm_eps);
  GQ_SAME(pad_token_id);
  GQ_SAME(eos_token_ids);
  GQ_SAME(bos_token_id);
  GQ_SAME(tie_word_embeddings);
  GQ_SAME(attention_bias);
  GQ_SAME(sliding_window);
  GQ_SAME(final_logit_softcapping);
  GQ_SAME(use_bidirectional_attention);
  GQ_SAME(vocab_size_per_layer_input);
  GQ_SAME(hidden_size_per_layer_input);
  GQ_SAME(attention_k_eq_v);
  GQ_SAME(num_kv_shared_layers);
  GQ_SAME(enable_moe_block);
  GQ_SAME(use_double_wide_mlp);
  GQ_SAME(num_experts);
  GQ_SAME(top_k_experts);
  GQ_SAME(moe_intermediate_size);
  GQ_SAME(rope_sliding.rope_type);
  GQ_SAME(rope_sliding.rope_theta);
  GQ_SAME(rope_sliding.partial_rotary_factor);
  GQ_SAME(rope_full.rope_type);
  GQ_SAME(rope_full.rope_theta);
  GQ_SAME(rope_full.partial_rotary_factor);
  GQ_SAME(layer_types);
  GQ_SAME(last_layer_forced_full);
  GQ_SAME(layer_head_dim);
  GQ_SAME(layer_num_kv_heads);
#undef GQ_SAME
}

struct TensorSpec {
  std::string name;
  std::vector<int64_t> dims;
  GgmlType type;
  std::vector<std::byte> data;
};

template <typename T>
std::vector<std::byte> BytesOf(const std::vector<T>& values) {
  std::vector<std::byte> bytes(values.size() * sizeof(T));
  std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

TensorSpec F32Tensor(std::string name, std::vector<int64_t> dims,
                     const std::vector<float>& values) {
  return {std::move(name), std::move(dims), GgmlType::kF32, BytesOf(values)};
}

TensorSpec RopeFreqsTensor(const std::vector<float>& freqs) {
  return F32Tensor(std::string(kGgufRopeFreqsTensor), {static_cast<int64_t>(freqs.size())}, freqs);
}

// What a converter writes for the fixture: every weight under its GGUF name
// with dims = reversed torch shape and the bf16 bytes unchanged, plus the
// generated rope_freqs tensor.
std::vector<TensorSpec> ConvertedTensors(const Fixture& f, const TextConfig& config) {
  const SafetensorsFile weights = FixtureWeights(f);
  std::vector<TensorSpec> out;
  for (const SafetensorsTensorInfo& info : weights.tensors()) {
    REQUIRE(info.dtype == DType::kBF16);
    absl::StatusOr<std::string> name = GgufNameFromHf(info.name);
    REQUIRE_OK(name);
    absl::StatusOr<Tensor> tensor = weights.Get(info.name);
    REQUIRE_OK(tensor);
    out.push_back({*name,
                   {info.shape.rbegin(), info.shape.rend()},
                   GgmlType::kBF16,
                   {tensor->bytes().begin(), tensor->bytes().end()}});
  }
  out.push_back(RopeFreqsTensor(RopeFreqsFromTextConfig(config)));
  return out;
}

GgufFile WriteAndOpen(const std::string& path, const Metadata& metadata,
                      const std::vector<TensorSpec>& tensors = {}) {
  absl::StatusOr<std::unique_ptr<GgufWriter>> writer = GgufWriter::Create(path);
  REQUIRE_OK(writer);
  for (const auto& [key, value] : metadata) (*writer)->SetMetadata(key, value);
  for (const TensorSpec& t : tensors) {
    REQUIRE_OK((*writer)->AddTensor(t.name, t.dims, static_cast<uint32_t>(t.type), t.data.size()));
  }
  for (const TensorSpec& t : tensors) REQUIRE_OK((*writer)->WriteTensorData(t.name, t.data));
  REQUIRE_OK((*writer)->Commit());
  absl::StatusOr<GgufFile> file = GgufFile::Open(path);
  REQUIRE_OK(file);
  return *std::move(file);
}

TextConfig ReadOk(const GgufFile& file) {
  absl::StatusOr<TextConfig> config = TextConfigFromGguf(file);
  REQUIRE_OK(config);
  return *std::move(config);
}

// The fixture as `gquant-gguf export` would write it: its metadata, plus its
// converted tensors unless `with_tensors` is false.
GgufFile ConvertFixture(const Fixture& f, const TempDir& dir, bool with_tensors = true) {
  const TextConfig config = FixtureConfig(f);
  REQUIRE_OK(CheckGgufRepresentable(config));
  return WriteAndOpen(dir.File(f.name + ".gguf"), GgufMetadataFromTextConfig(config, f.name),
                      with_tensors ? ConvertedTensors(f, config) : std::vector<TensorSpec>{});
}

std::vector<int64_t> IntsOf(const GgufFile& file, std::string_view key) {
  const GgufValue* value = file.Find(key);
  REQUIRE(value != nullptr);
  std::vector<int64_t> out;
  if (value->array() == nullptr) {
    out.push_back(*value->AsInt64());
    return out;
  }
  for (const GgufValue& element : value->array()->elements) out.push_back(*element.AsInt64());
  return out;
}

std::vector<int64_t> DimsOf(const GgufFile& file, std::string_view tensor) {
  const GgufTensorInfo* info = file.FindTensor(tensor);
  REQUIRE(info != nullptr);
  return info->dims;
}

void Set(Metadata& metadata, std::string_view key, GgufValue value) {
  for (auto& [k, v] : metadata) {
    if (k == key) {
      v = std::move(value);
      return;
    }
  }
  metadata.emplace_back(std::string(key), std::move(value));
}

void Erase(Metadata& metadata, std::string_view key) {
  std::erase_if(metadata, [key](const auto& kv) { return kv.first == key; });
}

// ---- names ----

TEST_CASE("every Gemma 4 text tensor name maps both ways", "[gguf_mapping]") {
  const std::pair<std::string, std::string> kNames[] = {
      {"token_embd.weight", "model.embed_tokens.weight"},
      {"output_norm.weight", "model.norm.weight"},
      {"per_layer_token_embd.weight", "model.embed_tokens_per_layer.weight"},
      {"per_layer_model_proj.weight", "model.per_layer_model_projection.weight"},
      {"per_layer_proj_norm.weight", "model.per_layer_projection_norm.weight"},
      {"blk.0.attn_norm.weight", "model.layers.0.input_layernorm.weight"},
      {"blk.1.attn_q.weight", "model.layers.1.self_attn.q_proj.weight"},
      {"blk.2.attn_k.weight", "model.layers.2.self_attn.k_proj.weight"},
      {"blk.3.attn_v.weight", "model.layers.3.self_attn.v_proj.weight"},
      {"blk.4.attn_output.weight", "model.layers.4.self_attn.o_proj.weight"},
      {"blk.5.attn_q_norm.weight", "model.layers.5.self_attn.q_norm.weight"},
      {"blk.6.attn_k_norm.weight", "model.layers.6.self_attn.k_norm.weight"},
      {"blk.7.post_attention_norm.weight", "model.layers.7.post_attention_layernorm.weight"},
      {"blk.8.ffn_norm.weight", "model.layers.8.pre_feedforward_layernorm.weight"},
      {"blk.9.ffn_gate.weight", "model.layers.9.mlp.gate_proj.weight"},
      {"blk.10.ffn_up.weight", "model.layers.10.mlp.up_proj.weight"},
      {"blk.11.ffn_down.weight", "model.layers.11.mlp.down_proj.weight"},
      {"blk.12.post_ffw_norm.weight", "model.layers.12.post_feedforward_layernorm.weight"},
      {"blk.13.layer_output_scale.weight", "model.layers.13.layer_scalar"},
      {"blk.14.inp_gate.weight", "model.layers.14.per_layer_input_gate.weight"},
      {"blk.15.proj.weight", "model.layers.15.per_layer_projection.weight"},
      {"blk.16.post_norm.weight", "model.layers.16.post_per_layer_input_norm.weight"},
      {"blk.17.ffn_gate_inp.weight", "model.layers.17.router.proj.weight"},
      {"blk.18.ffn_gate_inp.scale", "model.layers.18.router.scale"},
      {"blk.19.ffn_gate_up_exps.weight", "model.layers.19.experts.gate_up_proj"},
      {"blk.20.ffn_down_exps.weight", "model.layers.20.experts.down_proj"},
      {"blk.21.ffn_down_exps.scale", "model.layers.21.router.per_expert_scale"},
      {"blk.22.pre_ffw_norm_2.weight", "model.layers.22.pre_feedforward_layernorm_2.weight"},
      {"blk.23.post_ffw_norm_1.weight", "model.layers.23.post_feedforward_layernorm_1.weight"},
      {"blk.59.post_ffw_norm_2.weight", "model.layers.59.post_feedforward_layernorm_2.weight"},
      {"blk.123456789.attn_q.weight", "model.layers.123456789.self_attn.q_proj.weight"},
  };
  for (const auto& [gguf, hf] : kNames) {
    INFO(gguf);
    CHECK(HfNameFromGguf(gguf).value_or("") == hf);
    CHECK(GgufNameFromHf(hf).value_or("") == gguf);
    const std::string bare = hf.substr(kHfPrefixText.size());
    const std::string multimodal = std::string(kHfPrefixMultimodal) + bare;
    CHECK(HfNameFromGguf(gguf, kHfPrefixMultimodal).value_or("") == multimodal);
    CHECK(GgufNameFromHf(multimodal).value_or("") == gguf);
    CHECK(GgufNameFromHf(bare).value_or("") == gguf);
  }
  // The untied head sits outside the model prefix in both HF classes.
  CHECK(HfNameFromGguf("output.weight").value_or("") == "lm_head.weight");
  CHECK(HfNameFromGguf("output.weight", kHfPrefixMultimodal).value_or("") == "lm_head.weight");
  CHECK(GgufNameFromHf("lm_head.weight").value_or("") == "output.weight");
}

TEST_CASE("every HF tensor of the fixtures maps to GGUF and back", "[gguf_mapping]") {
  for (const Fixture& f : kFixtures) {
    DYNAMIC_SECTION(f.name) {
      const SafetensorsFile weights = FixtureWeights(f);
      REQUIRE(weights.tensors().size() == f.num_tensors);
      const std::string_view other_prefix =
          f.hf_prefix == kHfPrefixText ? kHfPrefixMultimodal : kHfPrefixText;
      std::set<std::string> gguf_names;
      for (const SafetensorsTensorInfo& info : weights.tensors()) {
        INFO(info.name);
        const absl::StatusOr<std::string> gguf = GgufNameFromHf(info.name);
        REQUIRE_OK(gguf);
        CHECK(gguf->size() <= kGgufMaxTensorName);
        CHECK(HfNameFromGguf(*gguf, f.hf_prefix).value_or("") == info.name);
        const absl::StatusOr<std::string> other = HfNameFromGguf(*gguf, other_prefix);
        REQUIRE_OK(other);
        CHECK(other->starts_with(other_prefix));
        CHECK(GgufNameFromHf(*other).value_or("") == *gguf);
        gguf_names.insert(*gguf);
      }
      CHECK(gguf_names.size() == f.num_tensors);  // no two HF names share a GGUF name
    }
  }
}

TEST_CASE("names without a counterpart are refused with the right code", "[gguf_mapping]") {
  for (const char* gguf : {"rope_freqs.weight", "blk.5.rope_freqs.weight"}) {
    REQUIRE_STATUS_IS(HfNameFromGguf(gguf), absl::StatusCode::kNotFound);
  }
  for (const char* hf : {"model.vision_tower.encoder.layers.0.self_attn.q_proj.linear.weight",
                         "model.embed_vision.embedding_projection.weight",
                         "model.audio_tower.layers.0.feed_forward1.ffw_layer_1.linear.weight",
                         "model.embed_audio.embedding_projection.weight",
                         "vision_tower.patch_embedder.input_proj.weight"}) {
    REQUIRE_STATUS_IS(GgufNameFromHf(hf), absl::StatusCode::kNotFound);
  }
  for (const char* gguf : {"blk.0.ffn_gate_exps.weight", "blk.3.ffn_up_exps.weight"}) {
    REQUIRE_STATUS_IS(HfNameFromGguf(gguf), absl::StatusCode::kUnimplemented);
  }
  for (const char* gguf :
       {"", "token_embd", "attn_q.weight", "blk.x.attn_q.weight", "blk.01.attn_q.weight",
        "blk.-1.attn_q.weight", "blk.0.attn_q.bias", "blk.1234567890.attn_q.weight",
        "v.blk.0.attn_q.weight", "blk.0.token_embd.weight"}) {
    const absl::StatusOr<std::string> hf = HfNameFromGguf(gguf);
    REQUIRE_STATUS_IS(hf, absl::StatusCode::kInvalidArgument);
    CHECK(hf.status().message().find(absl::StrCat("'", gguf, "'")) != absl::string_view::npos);
  }
  for (const char* hf : {"", "model.embed_tokens", "model.layers.0.self_attn.q_proj.bias",
                         "model.layers.0.layer_scalar.weight", "model.lm_head.weight",
                         "model.language_model.lm_head.weight", "layers.01.mlp.up_proj.weight",
                         "model.layers.0.embed_tokens.weight",
                         "model.language_model.layers.0.router.scale.weight"}) {
    const absl::StatusOr<std::string> gguf = GgufNameFromHf(hf);
    REQUIRE_STATUS_IS(gguf, absl::StatusCode::kInvalidArgument);
    CHECK(gguf.status().message().find(absl::StrCat("'", hf, "'")) != absl::string_view::npos);
  }
}

// ---- config through GGUF ----

TEST_CASE("converted fixtures give back their config", "[gguf_mapping]") {
  for (const Fixture& f : kFixtures) {
    DYNAMIC_SECTION(f.name) {
      TempDir dir;
      const GgufFile file = ConvertFixture(f, dir);
      CHECK(file.metadata()[0].first == "general.architecture");
      CHECK(file.GetString("general.architecture").value_or("") == "gemma4");
      CHECK(file.GetString("general.name").value_or("") == f.name);
      CHECK(file.tensors().size() == f.num_tensors + 1);  // + rope_freqs
      TextConfig want = FixtureConfig(f);
      want.use_bidirectional_attention = BidirectionalAttention::kNone;  // no GGUF key
      RequireSameConfig(ReadOk(file), want);
    }
  }
}

TEST_CASE("tiny-31b as GGUF: K=V full layers, per-layer KV heads, two head dims",
          "[gguf_mapping]") {
  TempDir dir;
  const GgufFile file = ConvertFixture(k31B, dir);
  CHECK(IntsOf(file, "gemma4.block_count") == std::vector<int64_t>{6});
  CHECK(IntsOf(file, "gemma4.vocab_size") == std::vector<int64_t>{512});
  CHECK(IntsOf(file, "gemma4.attention.head_count_kv") == std::vector<int64_t>{2, 2, 1, 2, 2, 1});
  CHECK(file.Find("gemma4.attention.head_count_kv")->array()->element_type ==
        GgufValueType::kInt32);  // as gguf-py writes Python int lists
  CHECK(IntsOf(file, "gemma4.feed_forward_length") == std::vector<int64_t>{128});
  CHECK(IntsOf(file, "gemma4.attention.key_length") == std::vector<int64_t>{64});
  CHECK(IntsOf(file, "gemma4.attention.key_length_swa") == std::vector<int64_t>{32});
  CHECK(IntsOf(file, "gemma4.rope.dimension_count") == std::vector<int64_t>{64});
  CHECK(IntsOf(file, "gemma4.rope.dimension_count_swa") == std::vector<int64_t>{32});
  CHECK(IntsOf(file, "gemma4.attention.sliding_window") == std::vector<int64_t>{8});
  CHECK(IntsOf(file, "tokenizer.ggml.eos_token_id") == std::vector<int64_t>{1});
  CHECK(file.GetFloat("gemma4.rope.freq_base").value_or(0) == 1e6);
  CHECK(file.GetFloat("gemma4.rope.freq_base_swa").value_or(0) == 1e4);
  CHECK(file.GetFloat("gemma4.final_logit_softcapping").value_or(0) == 30.0);
  CHECK(file.Find("gemma4.expert_count") == nullptr);
  const GgufValue* pattern = file.Find("gemma4.attention.sliding_window_pattern");
  REQUIRE(pattern != nullptr);
  CHECK(*pattern == GgufValue::ArrayOf<bool>({true, true, false, true, true, false}));

  CHECK(file.FindTensor("blk.2.attn_v.weight") == nullptr);
  CHECK(file.FindTensor("output.weight") == nullptr);
  CHECK(DimsOf(file, "token_embd.weight") == std::vector<int64_t>{64, 512});
  CHECK(DimsOf(file, "blk.0.attn_v.weight") == std::vector<int64_t>{64, 64});
  CHECK(DimsOf(file, "blk.2.attn_q.weight") == std::vector<int64_t>{64, 256});
  CHECK(DimsOf(file, "blk.2.attn_k.weight") == std::vector<int64_t>{64, 64});
  CHECK(DimsOf(file, "blk.2.attn_output.weight") == std::vector<int64_t>{256, 64});
  CHECK(DimsOf(file, "blk.0.layer_output_scale.weight") == std::vector<int64_t>{1});
  // partial_rotary_factor 0.25 of a 64-wide head: 8 of 32 pairs rotate.
  std::vector<float> freqs(32, 1e30f);
  std::fill_n(freqs.begin(), 8, 1.0f);
  CHECK(RopeFreqsFromTextConfig(FixtureConfig(k31B)) == freqs);

  const TextConfig config = ReadOk(file);
  CHECK(config.attention_k_eq_v);
  CHECK(config.tie_word_embeddings);
  CHECK(config.layer_head_dim == std::vector<int>{32, 32, 64, 32, 32, 64});
  CHECK(config.layer_num_kv_heads == std::vector<int>{2, 2, 1, 2, 2, 1});
  CHECK(config.num_key_value_heads == 2);
  CHECK(config.rope_full.partial_rotary_factor == 0.25);
  CHECK(config.rms_norm_eps == 1e-6);  // exact although the file holds a float
}

TEST_CASE("tiny-e2b as GGUF: PLE, KV sharing, double-wide MLP", "[gguf_mapping]") {
  TempDir dir;
  const GgufFile file = ConvertFixture(kE2B, dir);
  CHECK(IntsOf(file, "gemma4.feed_forward_length") ==
        std::vector<int64_t>{96, 96, 96, 96, 192, 192, 192});
  CHECK(file.Find("gemma4.attention.head_count_kv")->type() == GgufValueType::kUint32);
  CHECK(IntsOf(file, "gemma4.attention.head_count_kv") == std::vector<int64_t>{1});
  CHECK(IntsOf(file, "gemma4.attention.shared_kv_layers") == std::vector<int64_t>{3});
  CHECK(IntsOf(file, "gemma4.embedding_length_per_layer_input") == std::vector<int64_t>{32});
  CHECK(DimsOf(file, "per_layer_token_embd.weight") == std::vector<int64_t>{224, 512});
  CHECK(DimsOf(file, "per_layer_model_proj.weight") == std::vector<int64_t>{64, 224});
  CHECK(DimsOf(file, "blk.0.inp_gate.weight") == std::vector<int64_t>{64, 32});
  CHECK(DimsOf(file, "blk.4.ffn_up.weight") == std::vector<int64_t>{64, 192});
  CHECK(file.FindTensor("blk.4.attn_k.weight") == nullptr);  // KV-shared

  const TextConfig config = ReadOk(file);
  CHECK(config.use_double_wide_mlp);
  CHECK(config.intermediate_size == 96);
  CHECK(config.mlp_width(3) == 96);
  CHECK(config.mlp_width(4) == 192);
  CHECK(config.kv_source_layer(5) == 2);
  CHECK(config.kv_source_layer(6) == 3);
  CHECK(config.hidden_size_per_layer_input == 32);
  CHECK(config.vocab_size_per_layer_input == 512);
  CHECK_FALSE(config.attention_k_eq_v);

  // Without tensors nothing is lost for this fixture: no K=V, tied, and the
  // PLE vocabulary and partial rotation take the values it has.
  TempDir bare_dir;
  RequireSameConfig(ReadOk(ConvertFixture(kE2B, bare_dir, /*with_tensors=*/false)),
                    FixtureConfig(kE2B));
}

TEST_CASE("tiny-moe as GGUF: experts and router", "[gguf_mapping]") {
  TempDir dir;
  const GgufFile file = ConvertFixture(kMoe, dir);
  CHECK(IntsOf(file, "gemma4.expert_count") == std::vector<int64_t>{8});
  CHECK(IntsOf(file, "gemma4.expert_used_count") == std::vector<int64_t>{2});
  CHECK(IntsOf(file, "gemma4.expert_feed_forward_length") == std::vector<int64_t>{32});
  CHECK(IntsOf(file, "gemma4.feed_forward_length") == std::vector<int64_t>{96});
  // The shapes llama.cpp's load_arch_tensors asks for.
  CHECK(DimsOf(file, "blk.0.ffn_gate_inp.weight") == std::vector<int64_t>{64, 8});
  CHECK(DimsOf(file, "blk.0.ffn_gate_inp.scale") == std::vector<int64_t>{64});
  CHECK(DimsOf(file, "blk.0.ffn_gate_up_exps.weight") == std::vector<int64_t>{64, 64, 8});
  CHECK(DimsOf(file, "blk.0.ffn_down_exps.weight") == std::vector<int64_t>{32, 64, 8});
  CHECK(DimsOf(file, "blk.0.ffn_down_exps.scale") == std::vector<int64_t>{8});
  CHECK(DimsOf(file, "blk.3.pre_ffw_norm_2.weight") == std::vector<int64_t>{64});
  CHECK(file.FindTensor("blk.1.attn_v.weight") == nullptr);

  const TextConfig config = ReadOk(file);
  CHECK(config.enable_moe_block);
  CHECK(config.num_experts == 8);
  CHECK(config.top_k_experts == 2);
  CHECK(config.moe_intermediate_size == 32);
  CHECK(config.attention_k_eq_v);
}

TEST_CASE("fields GGUF does not carry read back as documented", "[gguf_mapping]") {
  TempDir dir;
  // Metadata only: K=V cannot be seen without the tensor list.
  TextConfig want = FixtureConfig(k31B);
  REQUIRE(want.attention_k_eq_v);
  const TextConfig bare = ReadOk(ConvertFixture(k31B, dir, /*with_tensors=*/false));
  CHECK_FALSE(bare.attention_k_eq_v);
  CHECK(bare.use_bidirectional_attention == BidirectionalAttention::kNone);
  want.attention_k_eq_v = false;
  want.use_bidirectional_attention = BidirectionalAttention::kNone;
  RequireSameConfig(bare, want);

  // One eos id; absent ids read back as absent.
  TextConfig ids = FixtureConfig(kE2B);
  ids.eos_token_ids = {1, 106};
  ids.pad_token_id.reset();
  ids.bos_token_id.reset();
  const Metadata metadata = GgufMetadataFromTextConfig(ids, "ids");
  for (const auto& [key, value] : metadata) {
    CHECK(key != "tokenizer.ggml.padding_token_id");
    CHECK(key != "tokenizer.ggml.bos_token_id");
  }
  const TextConfig read = ReadOk(WriteAndOpen(dir.File("ids.gguf"), metadata));
  CHECK(read.eos_token_ids == std::vector<int>{1});
  CHECK_FALSE(read.pad_token_id.has_value());
  CHECK_FALSE(read.bos_token_id.has_value());
}

TEST_CASE("tensor-derived fields: untied head, rope_freqs, K=V consistency", "[gguf_mapping]") {
  TempDir dir;
  TextConfig config = FixtureConfig(kE2B);
  const Metadata metadata = GgufMetadataFromTextConfig(config, "e2b");

  SECTION("output.weight means an untied head") {
    const TextConfig read =
        ReadOk(WriteAndOpen(dir.File("untied.gguf"), metadata,
                            {F32Tensor("output.weight", {64, 512}, std::vector<float>(64 * 512))}));
    CHECK_FALSE(read.tie_word_embeddings);
  }
  SECTION("rope_freqs.weight carries the full layers' partial rotation") {
    config.rope_full.partial_rotary_factor = 0.5;
    REQUIRE_OK(CheckGgufRepresentable(config));
    const std::vector<float> freqs = RopeFreqsFromTextConfig(config);
    REQUIRE(freqs.size() == 32);
    CHECK(freqs[15] == 1.0f);
    CHECK(freqs[16] == 1e30f);
    const TextConfig read =
        ReadOk(WriteAndOpen(dir.File("half.gguf"), metadata, {RopeFreqsTensor(freqs)}));
    CHECK(read.rope_full.partial_rotary_factor == 0.5);
    CHECK(read.rope_full.rope_type == "proportional");
  }
  SECTION("a malformed rope_freqs.weight is refused") {
    for (const TensorSpec& bad : {RopeFreqsTensor(std::vector<float>(32, 1e30f)),
                                  RopeFreqsTensor(std::vector<float>(16, 1.0f))}) {
      const GgufFile file = WriteAndOpen(dir.File("bad.gguf"), metadata, {bad});
      const absl::StatusOr<TextConfig> read = TextConfigFromGguf(file);
      REQUIRE_STATUS_IS(read, absl::StatusCode::kInvalidArgument);
      CHECK(read.status().message().find("tensor 'rope_freqs.weight'") != absl::string_view::npos);
    }
  }
  SECTION("attn_v on some non-shared full layers but not others") {
    std::vector<TensorSpec> tensors = ConvertedTensors(k31B, FixtureConfig(k31B));
    tensors.push_back(F32Tensor("blk.2.attn_v.weight", {64, 64}, std::vector<float>(64 * 64)));
    const GgufFile file = WriteAndOpen(
        dir.File("mixed.gguf"), GgufMetadataFromTextConfig(FixtureConfig(k31B), "31b"), tensors);
    const absl::StatusOr<TextConfig> read = TextConfigFromGguf(file);
    REQUIRE_STATUS_IS(read, absl::StatusCode::kInvalidArgument);
    CHECK(read.status().message().find("tensor 'blk.5.attn_v.weight'") != absl::string_view::npos);
  }
  SECTION("vocabulary size from the tokenizer, checked against the embedding") {
    Metadata edited = metadata;
    Erase(edited, "gemma4.vocab_size");
    Set(edited, "tokenizer.ggml.tokens",
        GgufValue::ArrayOf(std::vector<std::string>(300, "<unused>")));
    CHECK(ReadOk(WriteAndOpen(dir.File("tokens.gguf"), edited)).vocab_size == 300);

    const GgufFile file =
        WriteAndOpen(dir.File("embd.gguf"), edited,
                     {F32Tensor("token_embd.weight", {64, 512}, std::vector<float>(64 * 512))});
    const absl::StatusOr<TextConfig> read = TextConfigFromGguf(file);
    REQUIRE_STATUS_IS(read, absl::StatusCode::kInvalidArgument);
    CHECK(read.status().message().find("tensor 'token_embd.weight'") != absl::string_view::npos);
  }
}

TEST_CASE("malformed GGUF metadata is refused naming the key", "[gguf_mapping]") {
  const Metadata base = GgufMetadataFromTextConfig(FixtureConfig(kE2B), "e2b");
  struct Case {
    const char* what;
    std::function<void(Metadata&)> edit;
    const char* message;
  };
  const Case cases[] = {
      {"wrong architecture",
       [](Metadata& m) { Set(m, "general.architecture", GgufValue("gemma3")); },
       "key 'general.architecture': expected STRING 'gemma4', but got STRING 'gemma3'"},
      {"architecture of the wrong type",
       [](Metadata& m) { Set(m, "general.architecture", GgufValue(uint32_t{4})); },
       "key 'general.architecture'"},
      {"no architecture", [](Metadata& m) { Erase(m, "general.architecture"); },
       "missing required key 'general.architecture'"},
      {"no block count", [](Metadata& m) { Erase(m, "gemma4.block_count"); },
       "missing required key 'gemma4.block_count'"},
      {"no sliding head dim", [](Metadata& m) { Erase(m, "gemma4.attention.key_length_swa"); },
       "missing required key 'gemma4.attention.key_length_swa'"},
      {"no layer pattern", [](Metadata& m) { Erase(m, "gemma4.attention.sliding_window_pattern"); },
       "missing required key 'gemma4.attention.sliding_window_pattern'"},
      {"block count as a string", [](Metadata& m) { Set(m, "gemma4.block_count", GgufValue("7")); },
       "key 'gemma4.block_count': expected a non-negative integer in int32 range, but got STRING "
       "'7'"},
      {"negative embedding length",
       [](Metadata& m) { Set(m, "gemma4.embedding_length", GgufValue(int32_t{-64})); },
       "key 'gemma4.embedding_length': expected a non-negative integer in int32 range, but got "
       "INT32 -64"},
      {"epsilon as an integer",
       [](Metadata& m) {
         Set(m, "gemma4.attention.layer_norm_rms_epsilon", GgufValue(uint32_t{0}));
       },
       "key 'gemma4.attention.layer_norm_rms_epsilon': expected a FLOAT32 or FLOAT64"},
      {"pattern of integers",
       [](Metadata& m) {
         Set(m, "gemma4.attention.sliding_window_pattern",
             GgufValue::ArrayOf<uint32_t>({1, 1, 1, 0, 1, 1, 0}));
       },
       "key 'gemma4.attention.sliding_window_pattern': expected an ARRAY of BOOL"},
      {"pattern one layer short",
       [](Metadata& m) {
         Set(m, "gemma4.attention.sliding_window_pattern",
             GgufValue::ArrayOf<bool>({true, true, true, false, true, false}));
       },
       "key 'gemma4.attention.sliding_window_pattern': expected 7 entries (gemma4.block_count), "
       "but got ARRAY of BOOL[6]"},
      {"KV heads array too short",
       [](Metadata& m) {
         Set(m, "gemma4.attention.head_count_kv", GgufValue::ArrayOf<int32_t>({1, 1, 1}));
       },
       "key 'gemma4.attention.head_count_kv': expected 7 entries (gemma4.block_count), but got "
       "ARRAY of INT32[3]"},
      {"KV heads array of strings",
       [](Metadata& m) {
         Set(m, "gemma4.attention.head_count_kv",
             GgufValue::ArrayOf(std::vector<std::string>(7, "1")));
       },
       "key 'gemma4.attention.head_count_kv[0]'"},
      {"MLP widths array too long",
       [](Metadata& m) {
         Set(m, "gemma4.feed_forward_length",
             GgufValue::ArrayOf<int32_t>({96, 96, 96, 96, 192, 192, 192, 192}));
       },
       "key 'gemma4.feed_forward_length': expected 7 entries"},
      {"MLP width that is not 2x on a shared layer",
       [](Metadata& m) {
         Set(m, "gemma4.feed_forward_length",
             GgufValue::ArrayOf<int32_t>({96, 96, 96, 96, 192, 96, 192}));
       },
       "key 'gemma4.feed_forward_length[5]': expected 192"},
      {"head counts that differ per layer",
       [](Metadata& m) {
         Set(m, "gemma4.attention.head_count", GgufValue::ArrayOf<int32_t>({4, 4, 4, 2, 4, 4, 4}));
       },
       "key 'gemma4.attention.head_count[3]'"},
      {"zero layers", [](Metadata& m) { Set(m, "gemma4.block_count", GgufValue(uint32_t{0})); },
       "key 'gemma4.block_count': expected a value in [1, 4096]"},
      {"every layer KV-shared",
       [](Metadata& m) { Set(m, "gemma4.attention.shared_kv_layers", GgufValue(uint32_t{7})); },
       "key 'gemma4.attention.shared_kv_layers': expected a value in [0, 7)"},
      {"V head dim unlike K's",
       [](Metadata& m) { Set(m, "gemma4.attention.value_length", GgufValue(uint32_t{48})); },
       "key 'gemma4.attention.value_length': expected 64"},
      {"zero full head dim",
       [](Metadata& m) { Set(m, "gemma4.attention.key_length", GgufValue(uint32_t{0})); },
       "key 'gemma4.attention.key_length': expected a positive head dim"},
      {"partial rotation through dimension_count",
       [](Metadata& m) { Set(m, "gemma4.rope.dimension_count", GgufValue(uint32_t{16})); },
       "key 'gemma4.rope.dimension_count': expected 64"},
      {"more rotated dims than the sliding head",
       [](Metadata& m) { Set(m, "gemma4.rope.dimension_count_swa", GgufValue(uint32_t{64})); },
       "key 'gemma4.rope.dimension_count_swa': expected a value in [1, 32]"},
      {"experts without a top-k",
       [](Metadata& m) { Set(m, "gemma4.expert_count", GgufValue(uint32_t{4})); },
       "missing required key 'gemma4.expert_used_count'"},
      {"no vocabulary size", [](Metadata& m) { Erase(m, "gemma4.vocab_size"); },
       "no vocabulary size"},
      {"zero sliding window (ValidateTextConfig)",
       [](Metadata& m) { Set(m, "gemma4.attention.sliding_window", GgufValue(uint32_t{0})); },
       "sliding_window"},
      {"bos outside the vocabulary (ValidateTextConfig)",
       [](Metadata& m) { Set(m, "tokenizer.ggml.bos_token_id", GgufValue(uint32_t{600})); },
       "bos_token_id"},
  };
  TempDir dir;
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.what) {
      Metadata metadata = base;
      c.edit(metadata);
      const std::string path = dir.File("bad.gguf");
      const absl::StatusOr<TextConfig> read = TextConfigFromGguf(WriteAndOpen(path, metadata));
      REQUIRE_STATUS_IS(read, absl::StatusCode::kInvalidArgument);
      const absl::string_view message = read.status().message();
      CHECK(message.find(absl::StrCat("GGUF '", path, "': ")) == 0);
      CHECK(message.find(c.message) != absl::string_view::npos);
    }
  }
}

TEST_CASE("CheckGgufRepresentable names what GGUF cannot describe", "[gguf_mapping]") {
  for (const Fixture& f : kFixtures) REQUIRE_OK(CheckGgufRepresentable(FixtureConfig(f)));
  struct Case {
    const char* what;
    std::function<void(TextConfig&)> edit;
    const char* field;
  };
  const Case cases[] = {
      {"two sliding head dims", [](TextConfig& c) { c.layer_head_dim[1] = 16; },
       "field 'layer_head_dim[1]': expected 32"},
      {"proportional sliding RoPE",
       [](TextConfig& c) { c.rope_sliding.rope_type = "proportional"; },
       "field 'rope_parameters.sliding_attention.rope_type'"},
      {"default full RoPE", [](TextConfig& c) { c.rope_full.rope_type = "default"; },
       "field 'rope_parameters.full_attention.rope_type'"},
      {"fractional rotated dims", [](TextConfig& c) { c.rope_sliding.partial_rotary_factor = 0.3; },
       "field 'rope_parameters.sliding_attention.partial_rotary_factor'"},
      {"fractional rotated pairs", [](TextConfig& c) { c.rope_full.partial_rotary_factor = 0.3; },
       "field 'rope_parameters.full_attention.partial_rotary_factor'"},
      {"PLE vocabulary unlike the token vocabulary",
       [](TextConfig& c) { c.vocab_size_per_layer_input = 1024; },
       "field 'vocab_size_per_layer_input': expected 512"},
      {"another activation", [](TextConfig& c) { c.hidden_activation = "gelu"; },
       "field 'hidden_activation'"},
      {"attention bias", [](TextConfig& c) { c.attention_bias = true; }, "field 'attention_bias'"},
  };
  for (const Case& c : cases) {
    DYNAMIC_SECTION(c.what) {
      TextConfig config = FixtureConfig(kE2B);
      c.edit(config);
      const absl::Status status = CheckGgufRepresentable(config);
      REQUIRE_STATUS_IS(status, absl::StatusCode::kInvalidArgument);
      CHECK(status.message().find(c.field) != absl::string_view::npos);
    }
  }
}

// ---- config.json ----

TEST_CASE("config.json written from a TextConfig parses back equal", "[gguf_mapping]") {
  for (const Fixture& f : kFixtures) {
    DYNAMIC_SECTION(f.name) {
      const TextConfig want = FixtureConfig(f);
      const absl::StatusOr<Config> parsed =
          ParseConfigJson(ConfigJsonFromTextConfig(want), "generated");
      REQUIRE_OK(parsed);
      CHECK(parsed->model_type == "gemma4_text");
      CHECK(parsed->architectures == std::vector<std::string>{"Gemma4ForCausalLM"});
      RequireSameConfig(parsed->text, want);
    }
  }
}

TEST_CASE("config.json keeps HF's per-layer and legacy shape keys", "[gguf_mapping]") {
  using Json = nlohmann::json;
  const Json j31 = Json::parse(ConfigJsonFromTextConfig(FixtureConfig(k31B)));
  CHECK(j31["per_layer_config"] == Json::parse(R"({"2": {"head_dim": 64, "num_key_value_heads": 1},
                                                   "5": {"head_dim": 64, "num_key_value_heads": 1}})"));
  CHECK(j31["global_head_dim"] == 64);
  CHECK(j31["num_global_key_value_heads"] == 1);
  CHECK(j31["num_key_value_heads"] == 2);
  CHECK(j31["use_bidirectional_attention"] == "vision");
  CHECK(j31["eos_token_id"] == 1);
  CHECK(j31["rope_parameters"] == Json::parse(R"({
      "full_attention": {"rope_type": "proportional", "rope_theta": 1000000.0,
                         "partial_rotary_factor": 0.25},
      "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0}})"));

  const Json je2b = Json::parse(ConfigJsonFromTextConfig(FixtureConfig(kE2B)));
  CHECK(je2b["per_layer_config"] ==
        Json::parse(R"({"3": {"head_dim": 64}, "6": {"head_dim": 64}})"));
  CHECK(je2b["global_head_dim"] == 64);
  CHECK(je2b["num_global_key_value_heads"].is_null());  // not K=V: full layers keep the base
  CHECK(je2b["use_double_wide_mlp"] == true);

  // Shapes the legacy keys cannot express: only per_layer_config, still exact.
  TextConfig odd = FixtureConfig(k31B);
  odd.layer_num_kv_heads[0] = 1;
  odd.eos_token_ids = {1, 106};
  odd.pad_token_id.reset();
  const std::string text = ConfigJsonFromTextConfig(odd);
  const Json jodd = Json::parse(text);
  CHECK_FALSE(jodd.contains("global_head_dim"));
  CHECK(jodd["per_layer_config"]["0"] == Json::parse(R"({"num_key_value_heads": 1})"));
  CHECK(jodd["eos_token_id"] == Json::array({1, 106}));
  CHECK(jodd["pad_token_id"].is_null());
  const absl::StatusOr<Config> parsed = ParseConfigJson(text, "odd");
  REQUIRE_OK(parsed);
  RequireSameConfig(parsed->text, odd);
}

}  // namespace
}  // namespace gquant::gemma4
