// Reads the Hugging Face fixtures under tests/data (make_fixtures.py) and
// checks them against what gquant derives on its own: the tensor set and
// shapes implied by the parsed config, our bf16 rounding of the float32
// weights, and the internal consistency of the golden outputs.
#include <algorithm>
#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "gquant/checkpoint.h"
#include "gquant/dtype.h"
#include "gquant/gemma4/config.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant {
namespace {

using Shapes = std::map<std::string, std::vector<int64_t>>;

// The tensors a Gemma 4 text checkpoint must hold, derived from the config
// alone (spec gemma4.md §4.1); the fixtures come from HF's own modules, so
// this pins our config resolution to HF's.
Shapes ExpectedTensors(const gemma4::Config& config) {
  const gemma4::TextConfig& c = config.text;
  const std::string prefix = config.is_multimodal() ? "model.language_model." : "model.";
  const int64_t h = c.hidden_size;
  Shapes shapes;
  shapes[prefix + "embed_tokens.weight"] = {c.vocab_size, h};
  shapes[prefix + "norm.weight"] = {h};
  if (c.has_per_layer_embeddings()) {
    const int64_t ple = int64_t{c.num_hidden_layers} * c.hidden_size_per_layer_input;
    shapes[prefix + "embed_tokens_per_layer.weight"] = {c.vocab_size_per_layer_input, ple};
    shapes[prefix + "per_layer_model_projection.weight"] = {ple, h};
    shapes[prefix + "per_layer_projection_norm.weight"] = {c.hidden_size_per_layer_input};
  }
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = prefix + "layers." + std::to_string(l) + ".";
    const int64_t d = c.layer_head_dim[l], kv = c.layer_num_kv_heads[l];
    const int64_t q = int64_t{c.num_attention_heads} * d;
    shapes[p + "layer_scalar"] = {1};
    shapes[p + "self_attn.q_proj.weight"] = {q, h};
    shapes[p + "self_attn.o_proj.weight"] = {h, q};
    shapes[p + "self_attn.q_norm.weight"] = {d};
    if (!c.is_kv_shared(l)) {
      shapes[p + "self_attn.k_proj.weight"] = {kv * d, h};
      shapes[p + "self_attn.k_norm.weight"] = {d};
      if (!c.k_eq_v(l)) shapes[p + "self_attn.v_proj.weight"] = {kv * d, h};
    }
    const int64_t width = c.mlp_width(l);
    shapes[p + "mlp.gate_proj.weight"] = {width, h};
    shapes[p + "mlp.up_proj.weight"] = {width, h};
    shapes[p + "mlp.down_proj.weight"] = {h, width};
    for (const char* norm : {"input_layernorm", "post_attention_layernorm",
                             "pre_feedforward_layernorm", "post_feedforward_layernorm"}) {
      shapes[p + norm + ".weight"] = {h};
    }
    if (c.has_per_layer_embeddings()) {
      shapes[p + "per_layer_input_gate.weight"] = {c.hidden_size_per_layer_input, h};
      shapes[p + "per_layer_projection.weight"] = {h, c.hidden_size_per_layer_input};
      shapes[p + "post_per_layer_input_norm.weight"] = {h};
    }
    if (c.enable_moe_block) {
      const int64_t experts = *c.num_experts, moe = *c.moe_intermediate_size;
      shapes[p + "router.scale"] = {h};
      shapes[p + "router.per_expert_scale"] = {experts};
      shapes[p + "router.proj.weight"] = {experts, h};
      shapes[p + "experts.gate_up_proj"] = {experts, 2 * moe, h};
      shapes[p + "experts.down_proj"] = {experts, h, moe};
      for (const char* norm : {"post_feedforward_layernorm_1", "post_feedforward_layernorm_2",
                               "pre_feedforward_layernorm_2"}) {
        shapes[p + norm + ".weight"] = {h};
      }
    }
  }
  return shapes;
}

std::vector<double> ReadAsDouble(const SafetensorsFile& file, const std::string& name) {
  auto tensor = file.Get(name);
  REQUIRE_OK(tensor);
  std::vector<double> out(tensor->num_elements());
  const std::byte* bytes = tensor->bytes().data();
  for (size_t i = 0; i < out.size(); ++i) {
    switch (tensor->dtype()) {
      case DType::kF64:
        std::memcpy(&out[i], bytes + 8 * i, 8);
        break;
      case DType::kF32: {
        float f;
        std::memcpy(&f, bytes + 4 * i, 4);
        out[i] = f;
        break;
      }
      case DType::kI64: {
        int64_t v;
        std::memcpy(&v, bytes + 8 * i, 8);
        out[i] = static_cast<double>(v);
        break;
      }
      default:
        FAIL("unexpected dtype in golden file: " << DTypeName(tensor->dtype()));
    }
  }
  return out;
}

int64_t ArgMax(const double* row, int64_t n) { return std::max_element(row, row + n) - row; }

double RelativeError(const std::vector<double>& got, const std::vector<double>& ref) {
  double diff = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    diff += (got[i] - ref[i]) * (got[i] - ref[i]);
    norm += ref[i] * ref[i];
  }
  return std::sqrt(diff / norm);
}

const char* const kFixtures[] = {"tiny-31b", "tiny-e2b", "tiny-moe"};

TEST_CASE("fixture checkpoints hold exactly the tensors their config implies", "[fixtures]") {
  for (const char* fixture : kFixtures) {
    for (const char* precision : {"f32", "bf16"}) {
      const std::string dir = testing::TestDataDir() + "/" + fixture + "/" + precision;
      INFO(dir);
      auto config = gemma4::LoadConfig(dir);
      REQUIRE_OK(config);
      auto checkpoint = Checkpoint::Open(dir);
      REQUIRE_OK(checkpoint);
      const Shapes expected = ExpectedTensors(*config);
      for (const auto& [name, shape] : expected) {
        INFO(name);
        const SafetensorsTensorInfo* info = checkpoint->Find(name);
        REQUIRE(info != nullptr);
        REQUIRE(info->shape == shape);
        REQUIRE(info->dtype == (std::string(precision) == "f32" ? DType::kF32 : DType::kBF16));
      }
      for (const std::string& name : checkpoint->TensorNames()) {
        INFO("unexpected tensor " << name);
        REQUIRE(expected.count(name) == 1);
      }
    }
  }
}

TEST_CASE("fixture bf16 weights are the float32 weights rounded to nearest even", "[fixtures]") {
  for (const char* fixture : kFixtures) {
    const std::string base = testing::TestDataDir() + "/" + fixture;
    auto f32 = Checkpoint::Open(base + "/f32");
    auto bf16 = Checkpoint::Open(base + "/bf16");
    REQUIRE_OK(f32);
    REQUIRE_OK(bf16);
    REQUIRE(f32->TensorNames() == bf16->TensorNames());
    int64_t checked = 0;
    REQUIRE_OK(f32->ForEachTensor([&](const Tensor& wide) -> absl::Status {
      GQ_ASSIGN_OR_RETURN(Tensor narrow, bf16->Get(wide.name()));
      GQ_ASSIGN_OR_RETURN(std::vector<float> values, wide.ToFloat());
      const std::byte* bits = narrow.bytes().data();
      for (size_t i = 0; i < values.size(); ++i) {
        uint16_t got;
        std::memcpy(&got, bits + 2 * i, 2);
        if (got != FloatToBFloat16(values[i])) {
          return absl::InternalError(absl::StrCat(wide.name(), "[", i, "] rounds differently"));
        }
      }
      checked += static_cast<int64_t>(values.size());
      return absl::OkStatus();
    }));
    REQUIRE(checked > 100000);
  }
}

TEST_CASE("fixture goldens are consistent with the config and with themselves", "[fixtures]") {
  for (const char* fixture : kFixtures) {
    const std::string base = testing::TestDataDir() + "/" + fixture;
    INFO(base);
    auto config = gemma4::LoadConfig(base + "/f32");
    REQUIRE_OK(config);
    auto golden = SafetensorsFile::Open(base + "/golden.safetensors");
    REQUIRE_OK(golden);
    const int64_t vocab = config->text.vocab_size, hidden = config->text.hidden_size;
    const int64_t layers = config->text.num_hidden_layers;
    const int64_t prompt = std::stoll(golden->metadata().at("prompt_len"));
    const int64_t steps = std::stoll(golden->metadata().at("decode_steps"));
    REQUIRE(prompt > config->text.sliding_window);  // the window must slide

    const std::vector<int64_t> expected_shapes[] = {
        {prompt}, {prompt, vocab}, {layers + 1, prompt, hidden}, {steps}, {steps, vocab}};
    const char* const names[] = {"input_ids", "prefill_logits_f64", "hidden_states_f64",
                                 "decode_tokens", "decode_logits_f64"};
    for (int i = 0; i < 5; ++i) REQUIRE(golden->Find(names[i])->shape == expected_shapes[i]);

    const auto ids = ReadAsDouble(*golden, "input_ids");
    const auto logits64 = ReadAsDouble(*golden, "prefill_logits_f64");
    const auto logits32 = ReadAsDouble(*golden, "prefill_logits_f32");
    const auto hidden_states = ReadAsDouble(*golden, "hidden_states_f64");
    const auto tokens = ReadAsDouble(*golden, "decode_tokens");
    const auto decode = ReadAsDouble(*golden, "decode_logits_f64");
    REQUIRE(ids[0] == *config->text.bos_token_id);

    const double cap = config->text.final_logit_softcapping.value_or(INFINITY);
    for (double v : logits64) REQUIRE((std::isfinite(v) && std::fabs(v) < cap));
    // float32 and float64 runs of the same weights agree to float32 rounding.
    REQUIRE(RelativeError(logits32, logits64) < 1e-4);
    // Greedy: the first decoded token is the prompt's argmax, and each next
    // token is the argmax of the previous step's logits.
    REQUIRE(tokens[0] == ArgMax(&logits64[(prompt - 1) * vocab], vocab));
    for (int64_t s = 1; s < steps; ++s)
      REQUIRE(tokens[s] == ArgMax(&decode[(s - 1) * vocab], vocab));

    // hidden_states[0] is the embedding row times sqrt(H), which is exact
    // here (H = 64) in float64 from float32 weights.
    auto weights = Checkpoint::Open(base + "/f32");
    REQUIRE_OK(weights);
    const std::string prefix = config->is_multimodal() ? "model.language_model." : "model.";
    auto embedding = weights->Get(prefix + "embed_tokens.weight");
    REQUIRE_OK(embedding);
    auto table = embedding->ToFloat();
    REQUIRE_OK(table);
    const double scale = std::sqrt(static_cast<double>(hidden));
    for (int64_t t = 0; t < prompt; ++t) {
      for (int64_t j = 0; j < hidden; ++j) {
        const double expected = (*table)[static_cast<int64_t>(ids[t]) * hidden + j] * scale;
        REQUIRE(hidden_states[t * hidden + j] == expected);
      }
    }
  }
}

}  // namespace
}  // namespace gquant
