// gquant-gguf's two jobs together: export a checkpoint to GGUF, convert the
// GGUF back, and check every step against an independent computation.
#include "gquant/gguf_convert.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "gquant/gemma4/config.h"
#include "gquant/gemma4/cpu_model.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"
#include "gquant/gguf_export.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant {
namespace {

using Kind = QuantizedWeightInfo::Kind;

std::string Fixture(const std::string& name) { return testing::TestDataDir() + "/" + name; }

Recipe RecipeFromJson(const std::string& json) {
  auto recipe = Recipe::FromJson(json, "test");
  REQUIRE_OK(recipe);
  return *std::move(recipe);
}

// Every tensor of the GGUF, decoded by ggml's reference formula, must equal
// the converted checkpoint's dequantization bit for bit.
void RequireConvertedExactly(const GgufFile& gguf, const QuantizedCheckpoint& converted) {
  for (const GgufTensorInfo& info : gguf.tensors()) {
    INFO(info.name);
    auto hf_name = gemma4::HfNameFromGguf(info.name);
    if (absl::IsNotFound(hf_name.status())) continue;
    REQUIRE_OK(hf_name);
    int64_t n = 1;
    for (int64_t d : info.dims) n *= d;
    std::vector<float> want(n);
    REQUIRE_OK(DequantizeGgml(static_cast<GgmlType>(info.type), gguf.TensorData(info), want));
    auto got = converted.Dequantize(*hf_name);
    REQUIRE_OK(got);
    REQUIRE(converted.Find(*hf_name)->shape == info.TorchShape());
    size_t mismatches = 0;
    for (int64_t i = 0; i < n; ++i) {
      mismatches += std::bit_cast<uint32_t>((*got)[i]) != std::bit_cast<uint32_t>(want[i]);
    }
    REQUIRE(mismatches == 0);
  }
}

// ||a - b|| / ||b||.
double RelativeError(const std::vector<float>& a, const std::vector<float>& b) {
  double err = 0, ref = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    err += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    ref += double(b[i]) * b[i];
  }
  return std::sqrt(err / ref);
}

TEST_CASE("export the tiny checkpoint to GGUF and convert it back exactly", "[gguf_convert]") {
  for (const char* variant : {"tiny-31b", "tiny-e2b", "tiny-moe"}) {
    INFO(variant);
    testing::TempDir dir;
    const std::string input = Fixture(std::string(variant) + "/bf16");
    const std::string gguf_path = dir.File("tiny.gguf");
    auto recipe = Recipe::Load("default");
    REQUIRE_OK(recipe);
    GgufExportOptions export_options{input, gguf_path};
    auto exported = ExportGguf(*recipe, export_options);
    REQUIRE_OK(exported);

    auto gguf = GgufFile::Open(gguf_path);
    REQUIRE_OK(gguf);
    REQUIRE(*gguf->GetString("general.architecture") == "gemma4");
    auto source = QuantizedCheckpoint::Open(input);
    REQUIRE_OK(source);
    // Types follow the recipe with llama-quantize's fallbacks (rows of 64 or
    // 128 are not multiples of 256): int8 embedding -> Q8_0, int4 -> Q5_0
    // (Q4_K where a row is 256 long), norms F32.
    for (const GgufExportedTensor& t : exported->tensors) {
      INFO(t.hf_name);
      if (t.gguf_name.empty()) continue;
      const GgufTensorInfo* info = gguf->FindTensor(t.gguf_name);
      REQUIRE(info != nullptr);
      REQUIRE(info->type == static_cast<uint32_t>(t.type));
      REQUIRE(info->TorchShape() == t.shape);
      if (t.hf_name.ends_with("embed_tokens.weight")) REQUIRE(t.type == GgmlType::kQ8_0);
      if (t.hf_name.ends_with("norm.weight")) REQUIRE(t.type == GgmlType::kF32);
      if (t.hf_name.ends_with("q_proj.weight")) {
        REQUIRE(t.type == GgmlType::kQ5_0);
        REQUIRE(t.fell_back);
      }
      // The reported error is the GGUF's own, recomputed here from the source.
      auto original = source->Dequantize(t.hf_name);
      REQUIRE_OK(original);
      std::vector<float> decoded(original->size());
      REQUIRE_OK(DequantizeGgml(t.type, gguf->TensorData(*info), decoded));
      REQUIRE(std::fabs(RelativeError(decoded, *original) - t.relative_error) <=
              1e-6 + 1e-3 * t.relative_error);
      // Bounds ~1.3x ggml's own figures on normal data (4-bit 0.07, 5-bit 0.04).
      const bool four_or_five = t.type == GgmlType::kQ4_K || t.type == GgmlType::kQ5_0;
      REQUIRE(t.relative_error < (four_or_five ? 0.09 : 0.01));
    }

    const std::string out_dir = dir.File("converted");
    GgufConvertOptions convert_options{gguf_path, out_dir};
    int64_t progress_calls = 0;
    convert_options.progress = [&](const JobProgress& p) {
      ++progress_calls;
      REQUIRE(p.tensors_done <= p.tensors_total);
    };
    auto converted = ConvertGgufToCheckpoint(convert_options);
    REQUIRE_OK(converted);
    REQUIRE(progress_calls == static_cast<int64_t>(gguf->tensors().size()));
    auto checkpoint = QuantizedCheckpoint::Open(out_dir);
    REQUIRE_OK(checkpoint);
    RequireConvertedExactly(*gguf, *checkpoint);

    // The config survives both trips.
    auto before = gemma4::LoadConfig(input);
    auto after = gemma4::LoadConfig(out_dir);
    REQUIRE_OK(before);
    REQUIRE_OK(after);
    const gemma4::TextConfig& a = after->text;
    const gemma4::TextConfig& b = before->text;
    REQUIRE(a.hidden_size == b.hidden_size);
    REQUIRE(a.num_hidden_layers == b.num_hidden_layers);
    REQUIRE(a.layer_types == b.layer_types);
    REQUIRE(a.layer_head_dim == b.layer_head_dim);
    REQUIRE(a.layer_num_kv_heads == b.layer_num_kv_heads);
    REQUIRE(a.num_kv_shared_layers == b.num_kv_shared_layers);
    REQUIRE(a.hidden_size_per_layer_input == b.hidden_size_per_layer_input);
    REQUIRE(a.attention_k_eq_v == b.attention_k_eq_v);
    REQUIRE(a.enable_moe_block == b.enable_moe_block);
    REQUIRE(a.final_logit_softcapping == b.final_logit_softcapping);
  }
}

TEST_CASE("an exported GGUF and its conversion give the same logits", "[gguf_convert]") {
  // Issue 4's end-to-end check: the model run straight from the GGUF and from
  // the gquant checkpoint convert made of it see bit-identical weights, so the
  // reference forward must give bit-identical logits.
  for (const char* variant : {"tiny-31b", "tiny-e2b", "tiny-moe"}) {
    INFO(variant);
    testing::TempDir dir;
    const std::string input = Fixture(std::string(variant) + "/f32");
    auto recipe = Recipe::Load("default");
    REQUIRE_OK(recipe);
    const std::string gguf_path = dir.File("model.gguf");
    REQUIRE_OK(ExportGguf(*recipe, {input, gguf_path}));
    REQUIRE_OK(ConvertGgufToCheckpoint({gguf_path, dir.File("converted")}));

    auto golden = SafetensorsFile::Open(Fixture(std::string(variant) + "/golden.safetensors"));
    REQUIRE_OK(golden);
    auto ids_tensor = golden->Get("input_ids");
    REQUIRE_OK(ids_tensor);
    std::vector<int> ids(ids_tensor->num_bytes() / 8);
    for (size_t i = 0; i < ids.size(); ++i) {
      int64_t id;
      std::memcpy(&id, ids_tensor->bytes().data() + 8 * i, 8);
      ids[i] = static_cast<int>(id);
    }
    std::vector<std::vector<float>> logits;
    for (const std::string& path : {gguf_path, dir.File("converted"), input}) {
      auto model = gemma4::CpuModel::Load(path, {});
      REQUIRE_OK(model);
      gemma4::KvCache cache = (*model)->NewCache(64, 8);
      auto out = (*model)->Prefill(cache, ids, 5);
      REQUIRE_OK(out);
      logits.push_back(*std::move(out));
    }
    REQUIRE(logits[0].size() == logits[1].size());
    size_t mismatches = 0;
    for (size_t i = 0; i < logits[0].size(); ++i) {
      mismatches += std::bit_cast<uint32_t>(logits[0][i]) != std::bit_cast<uint32_t>(logits[1][i]);
    }
    REQUIRE(mismatches == 0);
    // Quantized, they differ from the float32 model. The tiny random models
    // amplify weight error about tenfold (Q5_0's 4% gives 0.4-0.65 relative
    // logit error; Q8_0 keeps greedy decoding intact), so this bound is loose.
    const double drift = RelativeError(logits[0], logits[2]);
    INFO("relative logit drift of the GGUF model: " << drift);
    REQUIRE(drift > 0);
    REQUIRE(drift < 1.0);
  }
}

// A synthetic Gemma 4 text checkpoint whose rows are multiples of 256, so the
// k-quants apply. Returns its directory.
std::string WriteKQuantCheckpoint(const testing::TempDir& dir, std::mt19937_64& rng) {
  const std::string path = dir.File("kq");
  std::filesystem::create_directories(path);
  nlohmann::json config = {
      {"model_type", "gemma4_text"},
      {"architectures", {"Gemma4ForCausalLM"}},
      {"vocab_size", 512},
      {"hidden_size", 256},
      {"intermediate_size", 512},
      {"num_hidden_layers", 2},
      {"num_attention_heads", 2},
      {"num_key_value_heads", 1},
      {"head_dim", 128},
      {"global_head_dim", 256},
      {"hidden_size_per_layer_input", 0},
      {"layer_types", {"sliding_attention", "full_attention"}},
      {"sliding_window", 64},
      {"final_logit_softcapping", 30.0},
  };
  std::ofstream(path + "/config.json") << config.dump(2);
  std::map<std::string, std::vector<int64_t>> shapes = {
      {"model.embed_tokens.weight", {512, 256}},
      {"model.norm.weight", {256}},
  };
  for (int layer = 0; layer < 2; ++layer) {
    const std::string p = "model.layers." + std::to_string(layer) + ".";
    const int64_t head_dim = layer == 1 ? 256 : 128;
    shapes[p + "self_attn.q_proj.weight"] = {2 * head_dim, 256};
    shapes[p + "self_attn.k_proj.weight"] = {head_dim, 256};
    shapes[p + "self_attn.v_proj.weight"] = {head_dim, 256};
    shapes[p + "self_attn.o_proj.weight"] = {256, 2 * head_dim};
    shapes[p + "self_attn.q_norm.weight"] = {head_dim};
    shapes[p + "self_attn.k_norm.weight"] = {head_dim};
    shapes[p + "mlp.gate_proj.weight"] = {512, 256};
    shapes[p + "mlp.up_proj.weight"] = {512, 256};
    shapes[p + "mlp.down_proj.weight"] = {256, 512};
    for (const char* norm : {"input_layernorm", "post_attention_layernorm",
                             "pre_feedforward_layernorm", "post_feedforward_layernorm"}) {
      shapes[p + norm + ".weight"] = {256};
    }
    shapes[p + "layer_scalar"] = {1};
  }
  std::student_t_distribution<float> heavy(4.0f);
  std::vector<Tensor> tensors;
  for (const auto& [name, shape] : shapes) {
    auto t = Tensor::Allocate(name, DType::kF32, shape);
    REQUIRE_OK(t);
    auto values = t->mutable_bytes();
    for (size_t i = 0; i < values.size() / 4; ++i) {
      const float v = 0.02f * heavy(rng) + (shape.size() == 1 ? 1.0f : 0.0f);
      std::memcpy(values.data() + 4 * i, &v, 4);
    }
    tensors.push_back(*std::move(t));
  }
  REQUIRE_OK(WriteSafetensors(path + "/model.safetensors", tensors, {}));
  return path;
}

TEST_CASE("k-quant export and lossless convert back", "[gguf_convert]") {
  auto rng = testing::MakeRng();
  testing::TempDir dir;
  const std::string input = WriteKQuantCheckpoint(dir, rng);
  // Bits 4/5/6/8 pick Q4_K/Q5_K/Q6_K/Q8_0; kept matrices become BF16 here.
  const Recipe recipe = RecipeFromJson(R"({"name": "mix", "rules": [
      {"pattern": ".*embed_tokens\\.weight", "config": {"bits": 6}},
      {"pattern": ".*norm\\.weight", "config": null},
      {"pattern": ".*\\.o_proj\\.weight", "config": null},
      {"pattern": ".*\\.(v_proj|down_proj)\\.weight", "config": {"bits": 8}},
      {"pattern": ".*\\.k_proj\\.weight", "config": {"bits": 5}},
      {"pattern": ".*\\.weight", "config": {"bits": 4}}]})");
  // A tokenizer left beside the checkpoint (as `convert` leaves one) is exported.
  const std::vector<std::string> tokens = {"<pad>", "<eos>", "<bos>", "hello", "world"};
  {
    auto tokenizer = GgufWriter::Create(input + "/" + kGgufTokenizerFile);
    REQUIRE_OK(tokenizer);
    (*tokenizer)->SetMetadata("tokenizer.ggml.model", GgufValue("gemma4"));
    (*tokenizer)->SetMetadata("tokenizer.ggml.tokens", GgufValue::ArrayOf(tokens));
    (*tokenizer)->SetMetadata("tokenizer.ggml.eos_token_id", GgufValue(uint32_t{1}));
    REQUIRE_OK((*tokenizer)->Commit());
  }
  GgufExportOptions options{input, dir.File("kq.gguf"), GgmlType::kBF16};
  auto exported = ExportGguf(recipe, options);
  REQUIRE_OK(exported);
  std::map<std::string, GgmlType> types;
  for (const GgufExportedTensor& t : exported->tensors) types[t.gguf_name] = t.type;
  REQUIRE(types.at("token_embd.weight") == GgmlType::kQ6_K);
  REQUIRE(types.at("blk.0.attn_q.weight") == GgmlType::kQ4_K);
  REQUIRE(types.at("blk.0.attn_k.weight") == GgmlType::kQ5_K);
  REQUIRE(types.at("blk.1.ffn_down.weight") == GgmlType::kQ8_0);
  REQUIRE(types.at("blk.1.attn_output.weight") == GgmlType::kBF16);
  REQUIRE(types.at("blk.1.attn_q_norm.weight") == GgmlType::kF32);
  REQUIRE(types.at("blk.0.layer_output_scale.weight") == GgmlType::kF32);

  // Bytes equal ggml's reference encoder on the same floats.
  auto gguf = GgufFile::Open(options.output_file);
  REQUIRE_OK(gguf);
  auto source = QuantizedCheckpoint::Open(input);
  REQUIRE_OK(source);
  for (const char* name : {"model.layers.0.self_attn.q_proj.weight", "model.embed_tokens.weight"}) {
    auto values = source->Dequantize(name);
    REQUIRE_OK(values);
    const GgufTensorInfo* info = gguf->FindTensor(*gemma4::GgufNameFromHf(name));
    std::vector<std::byte> want(info->num_bytes);
    REQUIRE_OK(QuantizeGgmlRef(static_cast<GgmlType>(info->type), *values, want));
    const auto got = gguf->TensorData(*info);
    REQUIRE(std::equal(got.begin(), got.end(), want.begin(), want.end()));
  }

  const std::string out_dir = dir.File("kq-converted");
  REQUIRE_OK(ConvertGgufToCheckpoint({options.output_file, out_dir}));
  auto converted = QuantizedCheckpoint::Open(out_dir);
  REQUIRE_OK(converted);
  RequireConvertedExactly(*gguf, *converted);
  REQUIRE(*gguf->GetString("tokenizer.ggml.model") == "gemma4");
  // Storage kinds: Q4_K/Q5_K in the min form, Q6_K/Q8_0 as Intx, BF16 copied.
  REQUIRE(converted->Find("model.layers.0.self_attn.q_proj.weight")->kind == Kind::kMin);
  REQUIRE(converted->Find("model.layers.0.self_attn.k_proj.weight")->bits == 5);
  const QuantizedWeightInfo* embed = converted->Find("model.embed_tokens.weight");
  REQUIRE(embed->kind == Kind::kIntx);
  REQUIRE(embed->bits == 6);
  REQUIRE(embed->group_size == 16);
  REQUIRE(converted->Find("model.layers.1.self_attn.o_proj.weight")->kind == Kind::kPlain);
  REQUIRE(converted->checkpoint().Find("model.layers.1.self_attn.o_proj.weight")->dtype ==
          DType::kBF16);
  REQUIRE(converted->Find("model.layers.1.mlp.down_proj.weight")->kind == Kind::kIntx);

  // A gquant checkpoint exports too: the converted one, back to GGUF, with
  // every type the same, gives the same bytes (its values are ggml's floats,
  // and requantizing them with the same reference encoder is idempotent for
  // Q8_0 and the kept types).
  GgufExportOptions again{out_dir, dir.File("again.gguf"), GgmlType::kBF16};
  auto re_exported = ExportGguf(recipe, again);
  REQUIRE_OK(re_exported);
  auto gguf_again = GgufFile::Open(again.output_file);
  REQUIRE_OK(gguf_again);
  // The tokenizer made the whole trip, key for key.
  for (const char* key :
       {"tokenizer.ggml.model", "tokenizer.ggml.tokens", "tokenizer.ggml.eos_token_id"}) {
    INFO(key);
    REQUIRE(gguf_again->Find(key) != nullptr);
    REQUIRE(*gguf_again->Find(key) == *gguf->Find(key));
  }
  REQUIRE(gguf_again->Find("tokenizer.ggml.tokens")->array()->elements.size() == tokens.size());
  for (const char* name :
       {"blk.1.ffn_down.weight", "blk.1.attn_output.weight", "output_norm.weight"}) {
    INFO(name);
    const auto a = gguf->TensorData(*gguf->FindTensor(name));
    const auto b = gguf_again->TensorData(*gguf_again->FindTensor(name));
    REQUIRE(std::equal(a.begin(), a.end(), b.begin(), b.end()));
  }
}

TEST_CASE("GGUF convert and export errors leave no output", "[gguf_convert]") {
  testing::TempDir dir;
  // The bundled GGUF sample is a gemma4 file without the model's hyperparameters.
  const std::string out_dir = dir.File("out");
  auto status = ConvertGgufToCheckpoint({Fixture("tiny.gguf"), out_dir});
  REQUIRE_STATUS_IS(status, absl::StatusCode::kInvalidArgument);
  REQUIRE(!std::filesystem::exists(out_dir + "/model.safetensors"));
  REQUIRE_STATUS_IS(ConvertGgufToCheckpoint({dir.File("missing.gguf"), out_dir}),
                    absl::StatusCode::kNotFound);

  // A NaN weight is named, and no GGUF appears.
  auto rng = testing::MakeRng();
  const std::string input = WriteKQuantCheckpoint(dir, rng);
  {
    auto file = SafetensorsFile::Open(input + "/model.safetensors");
    REQUIRE_OK(file);
    std::vector<Tensor> tensors;
    for (const auto& info : file->tensors()) {
      auto t = file->Get(info.name);
      REQUIRE_OK(t);
      auto copy = Tensor::Allocate(info.name, t->dtype(), t->shape());
      REQUIRE_OK(copy);
      std::memcpy(copy->mutable_bytes().data(), t->bytes().data(), t->num_bytes());
      if (info.name == "model.layers.1.mlp.up_proj.weight") {
        const float nan = std::nanf("");
        std::memcpy(copy->mutable_bytes().data() + 4 * 300, &nan, 4);
      }
      tensors.push_back(*std::move(copy));
    }
    REQUIRE_OK(WriteSafetensors(input + "/model.safetensors", tensors, {}));
  }
  auto recipe = Recipe::Load("default");
  REQUIRE_OK(recipe);
  const std::string gguf_path = dir.File("nan.gguf");
  auto exported = ExportGguf(*recipe, {input, gguf_path});
  REQUIRE_STATUS_IS(exported, absl::StatusCode::kInvalidArgument);
  const std::string message(exported.status().message());
  REQUIRE(message.find("model.layers.1.mlp.up_proj.weight") != std::string::npos);
  REQUIRE(message.find("row 1, column 44") != std::string::npos);
  REQUIRE(!std::filesystem::exists(gguf_path));
  REQUIRE_STATUS_IS(ExportGguf(*recipe, {input, gguf_path, GgmlType::kQ4_K}),
                    absl::StatusCode::kInvalidArgument);  // keep type
}

}  // namespace
}  // namespace gquant
