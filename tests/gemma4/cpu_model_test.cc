// The CPU reference forward against Hugging Face's golden outputs
// (tests/data/make_fixtures.py): prefill logits and hidden states, greedy and
// forced decoding through the KV cache, chunked prefill, and the same model
// loaded from an HF checkpoint, a gquant checkpoint and GGUF exports.
//
// Error norm used throughout ("relative error"): for each position,
// ||ours - golden||_inf / ||golden||_inf over the vocabulary (or hidden
// size), then the maximum over positions.
#include "gquant/gemma4/cpu_model.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "golden_util.h"
#include "gquant/dtype.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf_convert.h"
#include "gquant/gguf_export.h"
#include "gquant/quantize_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using gquant::testing::FixtureDir;
using gquant::testing::MaxRelativeError;
using gquant::testing::TempDir;
using gquant::testing::TestDataDir;

using Golden = gquant::testing::ModelGolden;

Golden ReadGolden(const std::string& fixture) { return gquant::testing::ReadModelGolden(fixture); }

double MaxAbsDiff(std::span<const float> a, std::span<const float> b) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) worst = std::max<double>(worst, std::abs(a[i] - b[i]));
  return worst;
}

template <typename T>
int ArgMax(std::span<const T> row) {
  return static_cast<int>(std::max_element(row.begin(), row.end()) - row.begin());
}

std::unique_ptr<CpuModel> LoadModel(const std::string& path, CpuModelOptions options = {}) {
  auto model = CpuModel::Load(path, options);
  REQUIRE_OK(model);
  return *std::move(model);
}

std::vector<float> Prefill(const CpuModel& model, const std::vector<int>& ids, int chunk) {
  KvCache cache = model.NewCache(static_cast<int64_t>(ids.size()), chunk);
  auto logits = model.Prefill(cache, ids, chunk);
  REQUIRE_OK(logits);
  REQUIRE(cache.length() == static_cast<int64_t>(ids.size()));
  return *std::move(logits);
}

TEST_CASE("CPU forward: prefill logits and hidden states match HF", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  const Golden golden = ReadGolden(fixture);
  auto model = LoadModel(FixtureDir(fixture) + "/f32");
  const TextConfig& c = model->plan().config;
  const int64_t t = golden.input_ids.size(), h = c.hidden_size;

  auto hidden = model->HiddenStates(golden.input_ids);
  REQUIRE_OK(hidden);
  REQUIRE(hidden->size() == golden.hidden.size());
  for (int l = 0; l <= c.num_hidden_layers; ++l) {
    const double err = MaxRelativeError(std::span(*hidden).subspan(l * t * h, t * h),
                                        std::span(golden.hidden).subspan(l * t * h, t * h), h);
    INFO("hidden state " << l << ": relative error " << err);
    CHECK(err <= 1e-4);
  }

  const std::vector<float> logits = Prefill(*model, golden.input_ids, static_cast<int>(t));
  const double err = MaxRelativeError(logits, golden.prefill, c.vocab_size);
  INFO("prefill logits: relative error " << err);
  CHECK(err <= 1e-4);
}

// Feeds `tokens` one at a time after the prompt and compares each step's
// logits with `golden` [S, V]; with `greedy`, also checks that each fed token
// is the argmax of the previous logits, as HF's greedy decode chose it.
void CheckDecode(const CpuModel& model, const std::vector<int>& prompt, int chunk,
                 const std::vector<int>& tokens, const std::vector<double>& golden, bool greedy) {
  const int64_t v = model.plan().config.vocab_size;
  KvCache cache = model.NewCache(static_cast<int64_t>(prompt.size() + tokens.size()), chunk);
  auto prefill = model.Prefill(cache, prompt, chunk);
  REQUIRE_OK(prefill);
  std::vector<float> last(prefill->end() - v, prefill->end());
  double worst = 0;
  for (size_t s = 0; s < tokens.size(); ++s) {
    if (greedy) {
      INFO("step " << s);
      CHECK(ArgMax<float>(last) == tokens[s]);
    }
    const int token = tokens[s];
    auto step = model.Forward(cache, std::span(&token, 1));
    REQUIRE_OK(step);
    worst = std::max(worst, MaxRelativeError(*step, std::span(golden).subspan(s * v, v), v));
    last = *std::move(step);
  }
  INFO("decode logits (prefill chunk " << chunk << "): relative error " << worst);
  CHECK(worst <= 1e-4);
}

TEST_CASE("CPU forward: greedy and forced decoding through the KV cache match HF",
          "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  const Golden golden = ReadGolden(fixture);
  auto model = LoadModel(FixtureDir(fixture) + "/f32");
  const int window = model->plan().config.sliding_window;
  REQUIRE(golden.input_ids.size() > static_cast<size_t>(2 * window));  // the ring wraps
  // One-shot prefill, and prefill in chunks of the window, whose ring of
  // 2W - 1 slots wraps several times during the prompt and the decode.
  for (int chunk : {static_cast<int>(golden.input_ids.size()), window}) {
    CheckDecode(*model, golden.input_ids, chunk, golden.decode_tokens, golden.decode, true);
    CheckDecode(*model, golden.input_ids, chunk, golden.forced_tokens, golden.forced, false);
  }
}

TEST_CASE("CPU forward: chunked prefill gives the one-shot logits", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  const Golden golden = ReadGolden(fixture);
  auto model = LoadModel(FixtureDir(fixture) + "/f32");
  const int window = model->plan().config.sliding_window;
  const std::vector<float> one_shot =
      Prefill(*model, golden.input_ids, static_cast<int>(golden.input_ids.size()));
  for (int chunk : {1, 3, window, window + 5}) {
    const std::vector<float> chunked = Prefill(*model, golden.input_ids, chunk);
    const double diff = MaxAbsDiff(chunked, one_shot);
    INFO("chunk " << chunk << ": max abs difference " << diff);
    CHECK(diff <= 1e-5);  // the issue's bound, absolute on logits
    // What the design gives: every op treats each token on its own (Linear is
    // row-independent, cpu_ops.h), so the logits are bit-identical.
    CHECK(chunked == one_shot);
  }
}

Recipe KeepEverything() {
  auto recipe =
      Recipe::FromJson(R"({"name": "keep", "rules": [{"pattern": ".*", "config": null}]})", "keep");
  REQUIRE_OK(recipe);
  return *std::move(recipe);
}

TEST_CASE("CPU forward: HF, kept gquant and F32 GGUF checkpoints give identical logits",
          "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  const Golden golden = ReadGolden(fixture);
  const std::string hf = FixtureDir(fixture) + "/f32";
  const int t = static_cast<int>(golden.input_ids.size());
  const std::vector<float> reference = Prefill(*LoadModel(hf), golden.input_ids, t);
  TempDir dir;

  // Every config null: the gquant file stores each weight as a plain tensor.
  QuantizeJobOptions quantize;
  quantize.input = hf;
  quantize.output_dir = dir.File("kept");
  REQUIRE_OK(QuantizeCheckpoint(KeepEverything(), quantize));
  auto kept = LoadModel(quantize.output_dir);
  CHECK(kept->source().description().find("checkpoint") != std::string::npos);
  CHECK(Prefill(*kept, golden.input_ids, t) == reference);

  // F32 GGUF: matrices keep_type F32, norms and vectors F32 anyway, so every
  // weight is the same float and the logits are bit-identical.
  GgufExportOptions f32;
  f32.input = hf;
  f32.output_file = dir.File("f32.gguf");
  f32.keep_type = GgmlType::kF32;
  REQUIRE_OK(ExportGguf(KeepEverything(), f32));
  auto gguf = LoadModel(f32.output_file);
  CHECK(gguf->source().description().find("GGUF") != std::string::npos);
  CHECK(Prefill(*gguf, golden.input_ids, t) == reference);

  // F16 GGUF: matrices rounded to fp16 (11-bit significand), so close only.
  GgufExportOptions f16 = f32;
  f16.output_file = dir.File("f16.gguf");
  f16.keep_type = GgmlType::kF16;
  REQUIRE_OK(ExportGguf(KeepEverything(), f16));
  const std::vector<float> half = Prefill(*LoadModel(f16.output_file), golden.input_ids, t);
  const double half_err = MaxRelativeError(half, golden.prefill, gguf->plan().config.vocab_size);
  INFO("F16 GGUF: relative error " << half_err);
  CHECK(half_err <= 5e-2);
}

// The tiny random models amplify weight noise: fp16 rounding alone moves
// their logits by ~2% (above), so 4-6 bit weights move them by O(1). The
// check that matters here is exactness of the quantized read path: the GGUF
// read directly and its lossless conversion to a gquant checkpoint
// (gguf_convert.h) must give the same logits bit for bit.
TEST_CASE("CPU forward: a GGUF exported with the default recipe runs", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  const Golden golden = ReadGolden(fixture);
  TempDir dir;
  auto recipe = Recipe::Load("default");
  REQUIRE_OK(recipe);
  GgufExportOptions options;
  options.input = FixtureDir(fixture) + "/f32";
  options.output_file = dir.File("default.gguf");
  auto report = ExportGguf(*recipe, options);
  REQUIRE_OK(report);
  REQUIRE(std::any_of(report->tensors.begin(), report->tensors.end(), [](const auto& t) {
    return FindGgmlType(static_cast<uint32_t>(t.type))->is_quantized;
  }));
  auto model = LoadModel(options.output_file);
  const int64_t v = model->plan().config.vocab_size;
  const int t = static_cast<int>(golden.input_ids.size());
  const std::vector<float> logits = Prefill(*model, golden.input_ids, t);
  CHECK(std::all_of(logits.begin(), logits.end(), [](float x) { return std::isfinite(x); }));
  int agree = 0;
  for (int i = 0; i < t; ++i) {
    agree += ArgMax<float>(std::span(logits).subspan(i * v, v)) ==
             ArgMax<double>(std::span(golden.prefill).subspan(i * v, v));
  }
  const double err = MaxRelativeError(logits, golden.prefill, v);
  INFO("default-recipe GGUF: relative error " << err << ", top-1 agreement " << agree << "/" << t);
  CHECK(err <= 2.0);
  CHECK(agree >= t / 4);

  GgufConvertOptions convert;
  convert.input = options.output_file;
  convert.output_dir = dir.File("converted");
  REQUIRE_OK(ConvertGgufToCheckpoint(convert));
  CHECK(Prefill(*LoadModel(convert.output_dir), golden.input_ids, t) == logits);
}

// bf16 weights run in float32. Exact part: the bf16 checkpoint gives the
// logits of an f32 checkpoint holding the same (widened) values. Loose part:
// HF's goldens cannot pin the float32 run of bf16 weights (its bf16 run
// rounds every activation too), and these tiny random models amplify the
// bf16 rounding of the weights to 14-32% of the logits' range. So we require
// our run to be about as close to the f64 reference as HF's own bf16 run:
// error within 1.25x of it (measured: 1.11x, 1.11x, 1.00x) and at most two
// positions fewer with the f64 reference's top-1 token.
TEST_CASE("CPU forward: bf16 checkpoints", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-e2b", "tiny-moe");
  INFO(fixture);
  const Golden golden = ReadGolden(fixture);
  const std::string bf16_dir = FixtureDir(fixture) + "/bf16";
  auto model = LoadModel(bf16_dir);
  const int64_t v = model->plan().config.vocab_size;
  const int t = static_cast<int>(golden.input_ids.size());
  const std::vector<float> logits = Prefill(*model, golden.input_ids, t);

  TempDir dir;
  auto file = SafetensorsFile::Open(bf16_dir + "/model.safetensors");
  REQUIRE_OK(file);
  std::vector<Tensor> widened;
  for (const SafetensorsTensorInfo& info : file->tensors()) {
    REQUIRE(info.dtype == DType::kBF16);
    auto tensor = file->Get(info.name);
    REQUIRE_OK(tensor);
    auto values = tensor->ToFloat();
    REQUIRE_OK(values);
    auto f32 = Tensor::Allocate(info.name, DType::kF32, info.shape);
    REQUIRE_OK(f32);
    std::memcpy(f32->mutable_bytes().data(), values->data(), f32->num_bytes());
    widened.push_back(*std::move(f32));
  }
  REQUIRE_OK(WriteSafetensors(dir.File("model.safetensors"), widened));
  std::filesystem::copy_file(bf16_dir + "/config.json", dir.File("config.json"));
  CHECK(Prefill(*LoadModel(dir.path().string()), golden.input_ids, t) == logits);

  const std::vector<float> hf_bf16(golden.prefill_bf16.begin(), golden.prefill_bf16.end());
  const double ours = MaxRelativeError(logits, golden.prefill, v);
  const double hf = MaxRelativeError(hf_bf16, golden.prefill, v);
  int ours_top1 = 0, hf_top1 = 0;
  for (int i = 0; i < t; ++i) {
    const int ref = ArgMax<double>(std::span(golden.prefill).subspan(i * v, v));
    ours_top1 += ArgMax<float>(std::span(logits).subspan(i * v, v)) == ref;
    hf_top1 += ArgMax<float>(std::span(hf_bf16).subspan(i * v, v)) == ref;
  }
  INFO("bf16 weights vs f64: ours " << ours << " (top-1 " << ours_top1 << "/" << t << "), HF bf16 "
                                    << hf << " (top-1 " << hf_top1 << "/" << t << ")");
  CHECK(ours <= 1.25 * hf);
  CHECK(ours_top1 >= hf_top1 - 2);
}

// Passes reads through to `inner`, failing the weight `fail_on` while armed.
class FailingSource final : public WeightSource {
 public:
  FailingSource(std::unique_ptr<WeightSource> inner, std::string fail_on)
      : inner_(std::move(inner)), fail_on_(std::move(fail_on)) {}
  const Config& config() const override { return inner_->config(); }
  std::vector<std::string> Names() const override { return inner_->Names(); }
  std::optional<std::vector<int64_t>> Shape(std::string_view name) const override {
    return inner_->Shape(name);
  }
  absl::StatusOr<std::vector<float>> Load(std::string_view name) const override {
    if (armed && name == fail_on_) return absl::DataLossError("injected read error");
    return inner_->Load(name);
  }
  std::string description() const override { return "failing " + inner_->description(); }
  bool armed = false;

 private:
  std::unique_ptr<WeightSource> inner_;
  std::string fail_on_;
};

TEST_CASE("CPU forward: bad chunks and read errors leave the cache usable", "[gemma4_model]") {
  const Golden golden = ReadGolden("tiny-e2b");
  const std::vector<int>& ids = golden.input_ids;
  auto inner = OpenWeightSource(FixtureDir("tiny-e2b") + "/f32");
  REQUIRE_OK(inner);
  // A KV-shared layer late in the stack: its sources have written this
  // chunk's K/V into the ring when the read fails.
  auto failing = std::make_unique<FailingSource>(*std::move(inner), "layers.5.mlp.up_proj.weight");
  FailingSource* source = failing.get();
  CpuModelOptions options;
  options.weight_cache_bytes = 0;  // read every weight on every call
  auto model = CpuModel::FromSource(std::move(failing), options);
  REQUIRE_OK(model);
  const int64_t v = (*model)->plan().config.vocab_size;
  const std::vector<float> expected = Prefill(**model, ids, 8);

  KvCache cache = (*model)->NewCache(static_cast<int64_t>(ids.size()), 8);
  const std::span<const int> all(ids);
  REQUIRE_OK((*model)->Prefill(cache, all.first(16), 8));
  const int bad_ids[] = {-1, static_cast<int>(v)};
  REQUIRE_STATUS_IS((*model)->Forward(cache, {}), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS((*model)->Forward(cache, all.subspan(0, 9)),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS((*model)->Forward(cache, std::span(bad_ids, 1)),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS((*model)->Forward(cache, std::span(bad_ids + 1, 1)),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS((*model)->Prefill(cache, all.subspan(16), 0),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS((*model)->Prefill(cache, all, 8), absl::StatusCode::kInvalidArgument);
  KvCache foreign = LoadModel(FixtureDir("tiny-31b") + "/f32")->NewCache(64, 8);
  REQUIRE_STATUS_IS((*model)->Forward(foreign, all.first(1)), absl::StatusCode::kInvalidArgument);
  {
    // Same layers and shapes, but a window of 4: its sliding rings are too
    // small for this model.
    TempDir dir;
    const std::string src = FixtureDir("tiny-e2b") + "/f32";
    std::filesystem::copy_file(src + "/model.safetensors", dir.File("model.safetensors"));
    std::ifstream in(src + "/config.json");
    nlohmann::json config = nlohmann::json::parse(in);
    config["sliding_window"] = 4;
    std::ofstream(dir.File("config.json")) << config.dump();
    KvCache narrow = LoadModel(dir.path().string())->NewCache(64, 8);
    REQUIRE_STATUS_IS((*model)->Forward(narrow, all.first(1)), absl::StatusCode::kInvalidArgument);
  }
  source->armed = true;
  auto failed = (*model)->Forward(cache, all.subspan(16));
  REQUIRE_STATUS_IS(failed, absl::StatusCode::kDataLoss);
  CHECK(failed.status().message().find("layer 5") != std::string::npos);
  REQUIRE(cache.length() == 16);

  source->armed = false;
  auto rest = (*model)->Forward(cache, all.subspan(16));
  REQUIRE_OK(rest);
  CHECK(*rest == std::vector<float>(expected.end() - 8 * v, expected.end()));
}

TEST_CASE("CPU forward: results do not depend on threads or the weight budget", "[gemma4_model]") {
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b", "tiny-moe");
  const Golden golden = ReadGolden(fixture);
  const std::string path = FixtureDir(fixture) + "/f32";
  const int t = static_cast<int>(golden.input_ids.size());
  const std::vector<float> reference = Prefill(*LoadModel(path), golden.input_ids, t);
  CpuModelOptions options;
  options.threads = 1;
  options.weight_cache_bytes = 0;
  CHECK(Prefill(*LoadModel(path, options), golden.input_ids, t) == reference);
  options.threads = 3;
  options.weight_cache_bytes = 20'000;  // some weights kept, the rest re-read
  auto model = LoadModel(path, options);
  CHECK(Prefill(*model, golden.input_ids, t) == reference);
  CHECK(Prefill(*model, golden.input_ids, t) == reference);
}

}  // namespace
}  // namespace gquant::gemma4
