// Random-weight Gemma 4 models: deterministic weights, the three read paths
// (Load, LoadRows, LoadPacked) agreeing, shapes matching the plan, the
// released configs, and forwards whose activations stay O(1).
#include "gquant/gemma4/random_weight_source.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "gquant/gemma4/cpu_model.h"
#include "gquant/gemma4/cpu_vision.h"
#include "gquant/gemma4/model_plan.h"
#include "gquant/gemma4/vision_input.h"
#include "gquant/pack.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using gquant::testing::MakeRng;

enum class Variant { kDense, kPle, kMoe };

// A small text config (hidden 256, head dims 256 / 512, vocab `vocab`) in the
// released models' shape: [S, S, S, F]; kDense has K = V on the full layer,
// kPle per-layer embeddings, KV sharing and a double-wide MLP, kMoe experts.
Config SmallConfig(Variant variant, int vocab = 1024, int intermediate = 512) {
  TextConfig c;
  c.vocab_size = vocab;
  c.vocab_size_per_layer_input = vocab;
  c.hidden_size = 256;
  c.intermediate_size = intermediate;
  c.num_hidden_layers = 4;
  c.num_attention_heads = 2;
  c.num_key_value_heads = 1;
  c.head_dim = 256;
  c.sliding_window = 8;
  c.final_logit_softcapping = 30.0;
  c.hidden_size_per_layer_input = variant == Variant::kPle ? 64 : 0;
  for (int i = 0; i < 4; ++i) {
    const bool full = i == 3;
    c.layer_types.push_back(full ? LayerType::kFull : LayerType::kSliding);
    c.layer_head_dim.push_back(full ? 512 : 256);
    c.layer_num_kv_heads.push_back(1);
  }
  if (variant == Variant::kDense) {
    c.attention_k_eq_v = true;
    c.num_key_value_heads = 2;
    c.layer_num_kv_heads = {2, 2, 2, 1};
  }
  if (variant == Variant::kPle) {
    // [S, F, S, F]: layers 2 and 3 read the K/V of layers 0 and 1.
    c.layer_types = {LayerType::kSliding, LayerType::kFull, LayerType::kSliding, LayerType::kFull};
    c.layer_head_dim = {256, 512, 256, 512};
    c.num_kv_shared_layers = 2;
    c.use_double_wide_mlp = true;
  }
  if (variant == Variant::kMoe) {
    c.enable_moe_block = true;
    c.num_experts = 4;
    c.top_k_experts = 2;
    c.moe_intermediate_size = 128;
  }
  REQUIRE_OK(ValidateTextConfig(c));
  Config config;
  config.model_type = "gemma4_text";
  config.text = c;
  config.eos_token_ids = c.eos_token_ids;
  return config;
}

std::unique_ptr<WeightSource> MakeSource(const Config& config, uint64_t seed, bool quantized) {
  auto source = MakeRandomWeightSource(config, {.seed = seed, .quantized = quantized});
  REQUIRE_OK(source);
  return *std::move(source);
}

std::vector<float> LoadOk(const WeightSource& source, const std::string& name) {
  auto values = source.Load(name);
  INFO(name);
  REQUIRE_OK(values);
  return *std::move(values);
}

double Rms(const std::vector<float>& v) {
  double sum = 0;
  for (float x : v) sum += double{x} * x;
  return std::sqrt(sum / static_cast<double>(v.size()));
}

TEST_CASE("Random weights: same seed, same weights; another seed, others", "[random_weights]") {
  auto rng = MakeRng();
  const uint64_t seed = rng();
  CAPTURE(seed);
  for (const bool quantized : {true, false}) {
    CAPTURE(quantized);
    const Config config = SmallConfig(Variant::kMoe);
    const auto a = MakeSource(config, seed, quantized);
    // Another thread count: the same values (generation is per row).
    auto b_or =
        MakeRandomWeightSource(config, {.seed = seed, .quantized = quantized, .threads = 1});
    REQUIRE_OK(b_or);
    const auto b = *std::move(b_or);
    const auto other = MakeSource(config, seed + 1, quantized);
    REQUIRE(a->Names() == b->Names());
    for (const std::string& name : a->Names()) {
      INFO(name);
      const std::vector<float> va = LoadOk(*a, name);
      CHECK(va == LoadOk(*b, name));
      const std::vector<float> vo = LoadOk(*other, name);
      REQUIRE(vo.size() == va.size());
      // Every weight has at least one element drawn from 2^24 (or 17 x 2^24)
      // values per element; one differing element is all it takes.
      int64_t differing = 0;
      for (size_t i = 0; i < va.size(); ++i) differing += va[i] != vo[i];
      CHECK(differing > 0);
      CHECK(std::all_of(va.begin(), va.end(), [](float v) { return std::isfinite(v); }));
    }
  }
}

TEST_CASE("Random weights: shapes, names and storage follow the plan", "[random_weights]") {
  for (const Variant variant : {Variant::kDense, Variant::kPle, Variant::kMoe}) {
    const Config config = SmallConfig(variant);
    auto plan = ModelPlan::Create(config.text);
    REQUIRE_OK(plan);
    const auto source = MakeSource(config, 7, true);
    const auto plain = MakeSource(config, 7, false);
    REQUIRE_OK(CheckWeights(*plan, *source));
    REQUIRE_OK(CheckWeights(*plan, *plain));
    CHECK(source->config().model_type == "gemma4_text");
    CHECK(source->config().eos_token_ids == config.text.eos_token_ids);
    std::vector<std::string> names;
    for (const WeightSpec& spec : plan->AllWeights()) {
      names.push_back(spec.name);
      INFO(spec.name);
      const bool quantized = spec.shape.size() >= 2 && !spec.name.ends_with("router.proj.weight");
      CHECK(source->StoresQuantized(spec.name) == quantized);
      CHECK(!plain->StoresQuantized(spec.name));
      if (!quantized) {
        REQUIRE_STATUS_IS(source->LoadPacked(spec.name, PackBackend::kCpu),
                          absl::StatusCode::kUnimplemented);
      }
    }
    // A tied model's quantized source also stores the head apart (int4).
    CHECK(config.text.tie_word_embeddings);
    CHECK(plain->Names() == names);
    names.push_back("lm_head.weight");
    CHECK(source->Names() == names);
    CHECK(source->StoresQuantized("lm_head.weight"));
    CHECK(source->Shape("lm_head.weight") == source->Shape("embed_tokens.weight"));
  }
  const auto source = MakeSource(SmallConfig(Variant::kDense), 7, true);
  CHECK(!source->Shape("nope").has_value());
  CHECK(!source->StoresQuantized("nope"));
  REQUIRE_STATUS_IS(source->Load("nope"), absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(source->LoadPacked("nope", PackBackend::kCpu), absl::StatusCode::kNotFound);
  REQUIRE_STATUS_IS(source->LoadRows("embed_tokens.weight", 1020, 5),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(source->LoadRows("norm.weight", 0, 1), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Random weights: LoadRows returns the rows of Load", "[random_weights]") {
  auto rng = MakeRng();
  const uint64_t seed = rng();
  CAPTURE(seed);
  for (const bool quantized : {true, false}) {
    CAPTURE(quantized);
    const auto source = MakeSource(SmallConfig(Variant::kPle, 2048), seed, quantized);
    for (const std::string name : {"embed_tokens.weight", "embed_tokens_per_layer.weight",
                                   "layers.1.mlp.down_proj.weight"}) {
      INFO(name);
      const std::vector<float> all = LoadOk(*source, name);
      const int64_t rows = (*source->Shape(name))[0], cols = (*source->Shape(name))[1];
      for (int trial = 0; trial < 8; ++trial) {
        const int64_t count = 1 + static_cast<int64_t>(rng() % 40);
        const int64_t begin = static_cast<int64_t>(rng() % (rows - count + 1));
        CAPTURE(begin, count);
        auto part = source->LoadRows(name, begin, count);
        REQUIRE_OK(part);
        REQUIRE(static_cast<int64_t>(part->size()) == count * cols);
        CHECK(std::equal(part->begin(), part->end(), all.begin() + begin * cols));
      }
    }
  }
}

// w = (code - zero) * scale from the cpu_unpacked parts, in float64: every
// code - zero and product is exact in float64 and rounds once to float32, as
// the float32 dequantization does (codes and zeros have at most 8
// significant bits, scales are bf16), so the match is exact.
std::vector<float> DequantizeReference(const PackedMatrix& packed) {
  auto view = CpuUnpackedView(packed);
  REQUIRE_OK(view);
  const QuantizedMatrixInfo& info = view->info;
  std::vector<float> out(info.rows * info.cols);
  for (int64_t r = 0; r < info.rows; ++r) {
    for (int64_t c = 0; c < info.cols; ++c) {
      const int64_t g = r * info.groups() + c / info.group_size;
      out[r * info.cols + c] = static_cast<float>(
          (static_cast<double>(view->codes[r * info.cols + c]) - view->zero[g]) * view->scale[g]);
    }
  }
  return out;
}

TEST_CASE("Random weights: Load is the dequantized LoadPacked, packed block by block",
          "[random_weights]") {
  auto rng = MakeRng();
  const uint64_t seed = rng();
  CAPTURE(seed);
  // vocab 4096 and width 2048 give several pack blocks per matrix.
  const Config config = SmallConfig(Variant::kMoe, 4096, 2048);
  const auto source = MakeSource(config, seed, true);
  for (const std::string name :
       {"embed_tokens.weight", "layers.0.mlp.gate_proj.weight", "layers.0.mlp.down_proj.weight",
        "layers.3.self_attn.q_proj.weight", "layers.1.experts.gate_up_proj",
        "layers.1.experts.down_proj"}) {
    INFO(name);
    const std::vector<int64_t> shape = *source->Shape(name);
    const std::vector<float> loaded = LoadOk(*source, name);
    auto cpu = source->LoadPacked(name, PackBackend::kCpu);
    REQUIRE_OK(cpu);
    auto cuda = source->LoadPacked(name, PackBackend::kCuda);
    REQUIRE_OK(cuda);
    const int64_t matrices = shape.size() == 3 ? shape[0] : 1;
    REQUIRE(static_cast<int64_t>(cpu->size()) == matrices);
    REQUIRE(static_cast<int64_t>(cuda->size()) == matrices);
    const int64_t n = shape[shape.size() - 2], k = shape.back();
    const bool embedding = name == "embed_tokens.weight";
    for (int64_t e = 0; e < matrices; ++e) {
      CAPTURE(e);
      const PackedMatrix& c = (*cpu)[e];
      CHECK(c.layout == kCpuUnpackedLayout);
      CHECK(c.info.rows == n);
      CHECK(c.info.cols == k);
      CHECK(c.info.bits == (embedding ? 8 : 4));
      CHECK(c.info.group_size == (embedding ? k : 32));
      CHECK(c.exact);
      const std::vector<float> reference = DequantizeReference(c);
      CHECK(std::equal(reference.begin(), reference.end(), loaded.begin() + e * n * k));

      // The block-wise CUDA packing equals PackMatrix on the whole matrix.
      const PackedMatrix& g = (*cuda)[e];
      CHECK(g.layout == (embedding ? kCudaInt8RowsLayout : kCudaInt4Mma16Layout));
      CHECK(g.exact);
      CHECK(g.info == c.info);
      auto whole = PackMatrix(*CpuUnpackedView(c), PackBackend::kCuda);
      REQUIRE_OK(whole);
      REQUIRE(g.parts.size() == whole->parts.size());
      for (const auto& [part, bytes] : whole->parts) {
        INFO(part);
        REQUIRE(g.parts.contains(part));
        CHECK(g.parts.at(part) == bytes);
      }
    }
    // Magnitudes: linear weights have std 1/sqrt(K) (the embedding
    // 1/sqrt(H)); per-group scales vary by +-25%, so allow 10%.
    const double target = 1.0 / std::sqrt(static_cast<double>(k));
    CHECK(Rms(loaded) == Approx(target).epsilon(0.1));
  }
  // Plain weights of the same config: the same magnitudes, continuous values.
  const auto plain = MakeSource(config, seed, false);
  const std::vector<float> gate = LoadOk(*plain, "layers.0.mlp.gate_proj.weight");
  CHECK(Rms(gate) == Approx(1.0 / 16).epsilon(0.05));
  const std::vector<float> norm = LoadOk(*plain, "layers.0.input_layernorm.weight");
  CHECK(std::all_of(norm.begin(), norm.end(), [](float v) { return v >= 0.5f && v <= 1.5f; }));
  CHECK(Rms(norm) == Approx(std::sqrt(1 + 1 / 12.0)).epsilon(0.08));  // E[U(0.5, 1.5)^2]
  const std::vector<float> q_norm = LoadOk(*plain, "layers.3.self_attn.q_norm.weight");
  REQUIRE(q_norm.size() == 512);
  const float root = std::pow(512.0f, 0.25f);  // D^(1/4)
  CHECK(std::all_of(q_norm.begin(), q_norm.end(),
                    [&](float v) { return std::abs(v * root - 1.0f) <= 0.51f; }));
}

TEST_CASE("Random weights: odd shapes", "[random_weights]") {
  Config odd = SmallConfig(Variant::kDense);
  odd.text.hidden_size = 84;  // embed [1024, 84]: K % 8 == 4; o_proj [84, 512]: N % 16 == 4
  const auto source = MakeSource(odd, 7, true);
  CHECK(!source->StoresQuantized("layers.0.self_attn.q_proj.weight"));  // K = 84: plain
  CHECK(source->StoresQuantized("layers.0.self_attn.o_proj.weight"));
  CHECK(source->StoresQuantized("embed_tokens.weight"));
  for (const std::string name : {"embed_tokens.weight", "layers.0.self_attn.o_proj.weight"}) {
    INFO(name);
    const std::vector<float> loaded = LoadOk(*source, name);
    auto cpu = source->LoadPacked(name, PackBackend::kCpu);
    REQUIRE_OK(cpu);
    REQUIRE(cpu->size() == 1);
    CHECK(DequantizeReference(cpu->front()) == loaded);
    auto rows = source->LoadRows(name, 3, 5);
    REQUIRE_OK(rows);
    CHECK(std::equal(rows->begin(), rows->end(), loaded.begin() + 3 * (*source->Shape(name))[1]));
  }
  // The int4 layout needs N % 16 == 0: the packer's error, naming the weight.
  const auto packed = source->LoadPacked("layers.0.self_attn.o_proj.weight", PackBackend::kCuda);
  REQUIRE_STATUS_IS(packed, absl::StatusCode::kInvalidArgument);
  CHECK(packed.status().message().find("o_proj") != std::string_view::npos);
}

TEST_CASE("Random weights: a vision tower the CPU vision model runs", "[random_weights]") {
  Config config = SmallConfig(Variant::kDense);
  VisionConfig vision;
  vision.hidden_size = 64;
  vision.intermediate_size = 96;
  vision.num_hidden_layers = 2;
  vision.num_attention_heads = 2;
  vision.num_key_value_heads = 2;
  vision.head_dim = 24;
  vision.position_embedding_size = 32;
  for (const bool clipped : {false, true}) {
    INFO("clipped " << clipped);
    vision.use_clipped_linears = clipped;
    vision.standardize = !clipped;
    config.vision = vision;
    for (const bool quantized : {false, true}) {
      INFO("quantized " << quantized);
      const auto source = MakeSource(config, 11, quantized);
      std::vector<std::string> expected;
      for (const WeightSpec& spec : VisionWeightSpecs(vision, config.text.hidden_size)) {
        expected.push_back(spec.name);
        CHECK(source->Shape(spec.name) == spec.shape);
      }
      CHECK(source->MediaNames() == expected);
      CHECK(source->StoresQuantized("vision_tower.encoder.layers.1.mlp.down_proj.linear.weight") ==
            quantized);
      if (clipped) {
        CHECK(LoadOk(*source, "vision_tower.encoder.layers.0.mlp.up_proj.input_min")[0] < -0.5f);
        CHECK(LoadOk(*source, "vision_tower.encoder.layers.0.mlp.up_proj.output_max")[0] > 0.5f);
      }
      // A 6 x 6 patch grid (4 soft tokens) of random pixels, padded to 7 tokens.
      auto model = CpuVisionModel::Create(*source, {.threads = 2});
      REQUIRE_OK(model);
      std::mt19937_64 rng = MakeRng();
      std::uniform_real_distribution<float> unit(0.0f, 1.0f);
      VisionInput input;
      input.max_patches = 63;
      input.grid_height = input.grid_width = 6;
      input.num_patches = 36;
      input.num_soft_tokens = 4;
      input.pixel_values.assign(63 * 768, 0.0f);
      for (int64_t i = 0; i < 36 * 768; ++i) input.pixel_values[i] = unit(rng);
      input.positions.assign(2 * 63, -1);
      for (int p = 0; p < 36; ++p) {
        input.positions[2 * p] = p % 6;
        input.positions[2 * p + 1] = p / 6;
      }
      auto rows = (*model)->EncodeImage(input);
      REQUIRE_OK(rows);
      REQUIRE(rows->size() == 4u * config.text.hidden_size);
      double sum2 = 0;
      for (float v : *rows) {
        REQUIRE(std::isfinite(v));
        sum2 += double{v} * v;
      }
      const double rms = std::sqrt(sum2 / rows->size());
      CAPTURE(rms);
      CHECK((rms > 0.1 && rms < 10));  // O(1): the random scales keep activations sane
    }
  }
}

TEST_CASE("Released model configs", "[random_weights]") {
  struct Expected {
    std::string name;
    int layers, hidden, intermediate, heads, kv_sliding, kv_full, full_every, window, ple,
        kv_shared;
    bool k_eq_v;
  };
  const Expected table[] = {
      {"31b", 60, 5376, 21504, 32, 16, 4, 6, 1024, 0, 0, true},
      {"e2b", 35, 1536, 6144, 8, 1, 1, 5, 512, 256, 20, false},
      {"e4b", 42, 2560, 10240, 8, 2, 2, 6, 512, 256, 18, false},
      {"26b-a4b", 30, 2816, 2112, 16, 8, 2, 6, 1024, 0, 0, true},
  };
  for (const Expected& x : table) {
    INFO(x.name);
    auto config = ReleasedModelConfig(x.name);
    REQUIRE_OK(config);
    const TextConfig& t = config->text;
    REQUIRE_OK(ValidateTextConfig(t));
    CHECK(config->model_type == "gemma4_text");
    CHECK(config->eos_token_ids == std::vector<int>{1});
    CHECK(t.vocab_size == 262144);
    CHECK(t.num_hidden_layers == x.layers);
    CHECK(t.hidden_size == x.hidden);
    CHECK(t.intermediate_size == x.intermediate);
    CHECK(t.num_attention_heads == x.heads);
    CHECK(t.sliding_window == x.window);
    CHECK(t.hidden_size_per_layer_input == x.ple);
    CHECK(t.num_kv_shared_layers == x.kv_shared);
    CHECK(t.final_logit_softcapping == 30.0);
    CHECK(t.rope_full.rope_type == "proportional");
    CHECK(t.rope_full.partial_rotary_factor == 0.25);
    CHECK(t.rope_full.rope_theta == 1e6);
    CHECK(t.rope_sliding.rope_theta == 1e4);
    for (int i = 0; i < x.layers; ++i) {
      INFO("layer " << i);
      const bool full = (i + 1) % x.full_every == 0;
      CHECK(t.is_full(i) == full);
      CHECK(t.layer_head_dim[i] == (full ? 512 : 256));
      CHECK(t.layer_num_kv_heads[i] == (full ? x.kv_full : x.kv_sliding));
      CHECK(t.k_eq_v(i) == (x.k_eq_v && full));
    }
    // A source of the full model costs nothing until read.
    auto plan = ModelPlan::Create(t);
    REQUIRE_OK(plan);
    const auto source = MakeSource(*config, 1, true);
    REQUIRE_OK(CheckWeights(*plan, *source));
    auto row = source->LoadRows("embed_tokens.weight", 262143, 1);
    REQUIRE_OK(row);
    CHECK(Rms(*row) == Approx(1.0 / std::sqrt(x.hidden)).epsilon(0.3));
  }
  const TextConfig e2b = ReleasedModelConfig("e2b")->text;
  CHECK(e2b.mlp_width(14) == 6144);
  CHECK(e2b.mlp_width(15) == 12288);
  CHECK(e2b.kv_source_layer(33) == 13);
  CHECK(e2b.kv_source_layer(34) == 14);
  CHECK(ReleasedModelConfig("e4b")->text.kv_source_layer(41) == 23);
  CHECK(ReleasedModelConfig("31b")->text.use_bidirectional_attention ==
        BidirectionalAttention::kVision);
  const TextConfig moe = ReleasedModelConfig("26b-a4b")->text;
  CHECK(moe.enable_moe_block);
  CHECK(moe.num_experts == 128);
  CHECK(moe.top_k_experts == 8);
  CHECK(moe.moe_intermediate_size == 704);
  REQUIRE_STATUS_IS(ReleasedModelConfig("31B-it"), absl::StatusCode::kInvalidArgument);

  // Vision towers (spec §1.2): the 31B's with its embedder has ~0.58 B parameters.
  auto large = ReleasedVisionConfig("31b");
  REQUIRE_OK(large);
  CHECK(large->hidden_size == 1152);
  CHECK(large->num_attention_heads * large->head_dim == 1152);
  CHECK(large->standardize);
  CHECK_FALSE(large->use_clipped_linears);
  int64_t params = 0;
  for (const WeightSpec& spec : VisionWeightSpecs(*large, 5376)) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    params += n;
  }
  CHECK((params > 570'000'000 && params < 590'000'000));
  auto small = ReleasedVisionConfig("e4b");
  REQUIRE_OK(small);
  CHECK(small->num_hidden_layers == 16);
  CHECK(small->num_attention_heads * small->head_dim == 768);
  CHECK(small->use_clipped_linears);
  REQUIRE_STATUS_IS(ReleasedVisionConfig("12b"), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("Random weights: the CPU forward stays O(1)", "[random_weights]") {
  auto rng = MakeRng();
  const uint64_t seed = rng();
  CAPTURE(seed);
  for (const Variant variant : {Variant::kDense, Variant::kPle, Variant::kMoe}) {
    for (const bool quantized : {true, false}) {
      CAPTURE(static_cast<int>(variant), quantized);
      const Config config = SmallConfig(variant);
      auto model = CpuModel::FromSource(MakeSource(config, seed, quantized), {.threads = 2});
      REQUIRE_OK(model);
      std::vector<int> tokens(12);
      for (int& t : tokens) t = static_cast<int>(rng() % config.text.vocab_size);
      KvCache cache = (*model)->NewCache(64);
      auto logits = (*model)->Forward(cache, tokens);
      REQUIRE_OK(logits);
      REQUIRE(logits->size() == tokens.size() * 1024);
      CHECK(std::all_of(logits->begin(), logits->end(),
                        [](float v) { return std::isfinite(v) && std::abs(v) <= 30.0f; }));
      // Unit-RMS hidden states against a unit-RMS-row head: logits of O(1)
      // spread, well inside the soft-cap.
      const double rms = Rms(*logits);
      CHECK(rms > 0.3);
      CHECK(rms < 10.0);
      auto hidden = (*model)->HiddenStates(tokens);
      REQUIRE_OK(hidden);
      const int64_t h = config.text.hidden_size, per_layer = tokens.size() * h;
      for (int64_t l = 0; l * per_layer < static_cast<int64_t>(hidden->size()); ++l) {
        CAPTURE(l);
        const std::vector<float> state(hidden->begin() + l * per_layer,
                                       hidden->begin() + (l + 1) * per_layer);
        const double state_rms = Rms(state);
        CHECK(state_rms > 0.1);
        CHECK(state_rms < 20.0);
      }
    }
  }
}

// Generation and packing speed at the 31B's shapes; hidden (run with
// "[random_weights_speed]").
TEST_CASE("Random weights: 31B packing speed", "[.][random_weights_speed]") {
  auto config = ReleasedModelConfig("31b");
  REQUIRE_OK(config);
  const auto source = MakeSource(*config, 1, true);
  const auto time = [&](const std::string& name, PackBackend backend) {
    const auto start = std::chrono::steady_clock::now();
    auto packed = source->LoadPacked(name, backend);
    const double s =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    REQUIRE_OK(packed);
    const std::vector<int64_t> shape = *source->Shape(name);
    const double weights = static_cast<double>(shape[0]) * static_cast<double>(shape[1]);
    std::cout << name << " [" << shape[0] << ", " << shape[1] << "] -> " << PackBackendName(backend)
              << ": " << s * 1e3 << " ms, " << weights / s / 1e9 << " G weights/s\n";
  };
  for (const PackBackend backend : {PackBackend::kCuda, PackBackend::kCpu}) {
    time("layers.0.mlp.gate_proj.weight", backend);
    time("embed_tokens.weight", backend);
  }
  const auto start = std::chrono::steady_clock::now();
  auto row = source->LoadRows("embed_tokens.weight", 12345, 1);
  REQUIRE_OK(row);
  std::cout << "embed_tokens.weight LoadRows(1 row): "
            << std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() * 1e6
            << " us\n";
}

}  // namespace
}  // namespace gquant::gemma4
