// End-to-end quantize-and-save on the bundled Hugging Face fixtures, checked
// against the quantizer called directly and against the input weights.
#include "gquant/quantize_checkpoint.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "gquant/atomic_file.h"
#include "gquant/checkpoint.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant {
namespace {

using Json = nlohmann::json;

std::string Fixture(const std::string& name) { return testing::TestDataDir() + "/" + name; }

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

absl::StatusOr<QuantizeReport> Run(const std::string& input, const Recipe& recipe,
                                   const std::string& output, bool dry_run = false) {
  QuantizeJobOptions options;
  options.input = input;
  options.output_dir = output;
  options.threads = 2;
  options.dry_run = dry_run;
  return QuantizeCheckpoint(recipe, options);
}

absl::StatusOr<QuantizeReport> Run(const std::string& input, const std::string& recipe_name,
                                   const std::string& output, bool dry_run = false) {
  GQ_ASSIGN_OR_RETURN(const Recipe recipe, Recipe::Load(recipe_name));
  return Run(input, recipe, output, dry_run);
}

double RelativeError(const std::vector<float>& got, const std::vector<float>& ref) {
  double err = 0, norm = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
    norm += double(ref[i]) * ref[i];
  }
  return std::sqrt(err / norm);
}

TEST_CASE("default recipe on the 31B-like fixture", "[quantize_checkpoint]") {
  testing::TempDir out;
  const std::string input = Fixture("tiny-31b/bf16");
  auto report = Run(input, "default", out.path().string());
  REQUIRE_OK(report);
  auto source = Checkpoint::Open(input);
  auto result = QuantizedCheckpoint::Open(out.path().string());
  REQUIRE_OK(source);
  REQUIRE_OK(result);

  // Every input weight is there, plus an independent lm_head from the tied
  // embedding.
  REQUIRE(result->weight_names().size() == source->num_tensors() + 1);
  const std::string embed = "model.language_model.embed_tokens.weight";
  REQUIRE(result->Find(embed)->kind == QuantizedWeightInfo::Kind::kIntx);
  REQUIRE(result->Find(embed)->bits == 8);
  REQUIRE(result->Find(embed)->group_size == 64);  // per row: K = hidden
  REQUIRE(result->Find("lm_head.weight")->kind == QuantizedWeightInfo::Kind::kInt4);
  REQUIRE(result->Find("lm_head.weight")->group_size == 32);
  const std::string norm = "model.language_model.layers.3.input_layernorm.weight";
  REQUIRE(result->Find(norm)->kind == QuantizedWeightInfo::Kind::kPlain);
  REQUIRE(result->Find("model.language_model.layers.3.layer_scalar")->kind ==
          QuantizedWeightInfo::Kind::kPlain);
  // Kept tensors are byte-identical.
  auto kept_in = source->Get(norm);
  auto kept_out = result->checkpoint().Get(norm);
  REQUIRE_OK(kept_in);
  REQUIRE_OK(kept_out);
  REQUIRE(std::equal(kept_in->bytes().begin(), kept_in->bytes().end(), kept_out->bytes().begin(),
                     kept_out->bytes().end()));

  // The report's error is the error of the saved file against the input.
  for (const TensorReport& t : report->tensors) {
    if (!t.config) continue;
    INFO(t.name);
    auto original = source->Get(t.source)->ToFloat();
    auto restored = result->Dequantize(t.name);
    REQUIRE_OK(original);
    REQUIRE_OK(restored);
    const double error = RelativeError(*restored, *original);
    REQUIRE(std::fabs(error - t.relative_error) <= 1e-6 * error + 1e-12);
    REQUIRE(std::fabs(t.snr_db - (-20 * std::log10(error))) < 1e-6);
    // int4 gs32 on Gaussian-like weights: ~10% relative error; int8 per row: < 2%.
    REQUIRE(error < (t.config->bits == 8 ? 0.02 : 0.15));
    REQUIRE(error > 0);
  }

  // Bookkeeping: per-rule totals add up, and the files are in place.
  int64_t tensors = 0, before = 0, after = 0;
  for (const RuleReport& r : report->rules) {
    tensors += r.tensors;
    before += r.bytes_before;
    after += r.bytes_after;
  }
  REQUIRE(tensors == static_cast<int64_t>(report->tensors.size()));
  REQUIRE(before == report->bytes_before);
  REQUIRE(after == report->bytes_after);
  REQUIRE(before == static_cast<int64_t>(std::filesystem::file_size(input + "/model.safetensors")) -
                        static_cast<int64_t>(source->shards()[0].data_start()));
  REQUIRE(ReadFile(out.File("config.json")) == ReadFile(input + "/config.json"));
  const Json json = Json::parse(ReadFile(out.File("quantize_report.json")));
  REQUIRE(json["tensors"].size() == report->tensors.size());
  REQUIRE(Recipe::FromJson(result->recipe_json(), "stored").ok());
  for (const auto& entry : std::filesystem::directory_iterator(out.path())) {
    INFO(entry.path());
    REQUIRE(entry.path().filename().string().find(".tmp") == std::string::npos);
  }
}

TEST_CASE("saved weights equal the quantizer's own output", "[quantize_checkpoint]") {
  testing::TempDir out;
  const std::string input = Fixture("tiny-e2b/f32");
  REQUIRE_OK(Run(input, "sensitive", out.path().string()));
  auto source = Checkpoint::Open(input);
  auto result = QuantizedCheckpoint::Open(out.path().string());
  REQUIRE_OK(result);
  // 7 layers: floor(0.25 * 7) = 1 edge layer each side, so layer 0 and 6
  // down_proj are int8 gs32 and layer 3's is HQQ int4.
  REQUIRE(result->Find("model.layers.0.mlp.down_proj.weight")->bits == 8);
  REQUIRE(result->Find("model.layers.6.mlp.down_proj.weight")->bits == 8);
  REQUIRE(result->Find("model.layers.3.mlp.down_proj.weight")->bits == 4);
  for (const auto& [name, config] : {std::pair{std::string("model.layers.0.mlp.down_proj.weight"),
                                               QuantConfig{8, 32, true, QuantMethod::kMinMax}},
                                     std::pair{std::string("model.layers.3.mlp.down_proj.weight"),
                                               QuantConfig{4, 32, false, QuantMethod::kHqq}}}) {
    INFO(name);
    auto weight = source->Get(name);
    REQUIRE_OK(weight);
    const int64_t rows = weight->shape()[0], cols = weight->shape()[1], groups = cols / 32;
    std::vector<int8_t> codes(rows * cols);
    std::vector<float> scale(rows * groups), zero(rows * groups), expected(rows * cols);
    REQUIRE_OK(
        Quantize(config, weight->dtype(), weight->bytes(), rows, cols, {codes, scale, zero}));
    REQUIRE_OK(Dequantize(config, rows, cols, codes, scale, zero, expected));
    auto saved = result->Dequantize(name);
    REQUIRE_OK(saved);
    REQUIRE(*saved == expected);
  }
}

TEST_CASE("MoE experts quantize per expert as 3-D tensors", "[quantize_checkpoint]") {
  testing::TempDir out;
  REQUIRE_OK(Run(Fixture("tiny-moe/bf16"), "default", out.path().string()));
  auto result = QuantizedCheckpoint::Open(out.path().string());
  REQUIRE_OK(result);
  const QuantizedWeightInfo* experts = result->Find("model.layers.1.experts.gate_up_proj");
  REQUIRE(experts != nullptr);
  REQUIRE(experts->kind == QuantizedWeightInfo::Kind::kInt4);
  REQUIRE(experts->shape == std::vector<int64_t>{8, 64, 64});
  REQUIRE(result->Find("model.layers.1.router.per_expert_scale")->kind ==
          QuantizedWeightInfo::Kind::kPlain);
}

TEST_CASE("dry run plans without writing", "[quantize_checkpoint]") {
  testing::TempDir out;
  const std::string target = out.File("never");
  auto report = Run(Fixture("tiny-31b/bf16"), "sensitive", target, /*dry_run=*/true);
  REQUIRE_OK(report);
  REQUIRE_FALSE(std::filesystem::exists(target));
  int64_t matched = 0;
  for (const TensorReport& t : report->tensors) matched += t.rule_index >= 0;
  REQUIRE(matched > 0);
  REQUIRE(report->bytes_after < report->bytes_before);
}

// A tiny checkpoint with one poisoned or ill-shaped weight.
std::string WriteCheckpoint(const testing::TempDir& dir, const std::vector<float>& values,
                            std::vector<int64_t> shape) {
  const std::string path = dir.File("in.safetensors");
  auto writer = SafetensorsWriter::Create(
      path, {{"model.layers.0.mlp.up_proj.weight", DType::kF32, shape}}, {});
  REQUIRE_OK(writer);
  REQUIRE_OK((*writer)->WriteTensor("model.layers.0.mlp.up_proj.weight",
                                    std::as_bytes(std::span(values))));
  REQUIRE_OK((*writer)->Commit());
  return path;
}

TEST_CASE("bad weights fail with the tensor and rule named, leaving no output",
          "[quantize_checkpoint]") {
  testing::TempDir dir;
  auto rng = testing::MakeRng();
  std::normal_distribution<float> normal;
  std::vector<float> values(8 * 64);
  for (float& v : values) v = normal(rng);
  values[3 * 64 + 17] = std::numeric_limits<float>::quiet_NaN();
  auto report = Run(WriteCheckpoint(dir, values, {8, 64}), "default", dir.File("out"));
  REQUIRE_STATUS_IS(report, absl::StatusCode::kInvalidArgument);
  REQUIRE(report.status().message().find("model.layers.0.mlp.up_proj.weight") != std::string::npos);
  REQUIRE(report.status().message().find("rule 7") != std::string::npos);
  REQUIRE_FALSE(std::filesystem::exists(dir.File("out/model.safetensors")));

  testing::TempDir dir2;
  std::vector<float> ragged(4 * 48, 0.5f);  // 48 columns: not a multiple of 32
  auto bad_shape = Run(WriteCheckpoint(dir2, ragged, {4, 48}), "default", dir2.File("out"));
  REQUIRE_STATUS_IS(bad_shape, absl::StatusCode::kInvalidArgument);
  REQUIRE(bad_shape.status().message().find("rule 7") != std::string::npos);
}

TEST_CASE("NaN errors name the element in the whole tensor; reports count edge cases",
          "[quantize_checkpoint]") {
  testing::TempDir dir;
  auto rng = testing::MakeRng();
  std::normal_distribution<float> normal;
  // 8 x 64 with group 32: row 0 all zero (2 zero groups), row 1 constant
  // 0.25 (2 constant groups), 3 subnormal values in row 2.
  std::vector<float> values(8 * 64);
  for (float& v : values) v = normal(rng);
  std::fill_n(values.begin(), 64, 0.0f);
  std::fill_n(values.begin() + 64, 64, 0.25f);
  for (int i = 0; i < 3; ++i) values[2 * 64 + 5 * i] = std::numeric_limits<float>::denorm_min();
  auto report = Run(WriteCheckpoint(dir, values, {8, 64}), "default", dir.File("out"));
  REQUIRE_OK(report);
  REQUIRE(report->tensors.size() == 1);
  const TensorReport& t = report->tensors[0];
  CHECK(t.zero_groups == 2);
  CHECK(t.constant_groups == 4);
  CHECK(t.subnormal_values == 3);
  const Json json = Json::parse(ReadFile(dir.File("out/quantize_report.json")));
  CHECK(json["tensors"][0]["constant_groups"] == 4);
  CHECK(json["tensors"][0]["zero_groups"] == 2);
  CHECK(json["tensors"][0]["subnormal_values"] == 3);
  CHECK(json["memory_bound_bytes"].get<int64_t>() ==
        kBaselineMemoryBytes + json["tensors"][0]["working_set_bytes"].get<int64_t>());

  // An Inf in row 6: the error gives the row in the tensor, not in a block.
  values[6 * 64 + 40] = -std::numeric_limits<float>::infinity();
  testing::TempDir dir2;
  auto bad = Run(WriteCheckpoint(dir2, values, {8, 64}), "default", dir2.File("out"));
  REQUIRE_STATUS_IS(bad, absl::StatusCode::kInvalidArgument);
  INFO(bad.status().message());
  REQUIRE(bad.status().message().find("[matrix 0, row 6, column 40]") != std::string::npos);
  REQUIRE(bad.status().message().find("-inf") != std::string::npos);
  // Nothing but the (empty) directory is left.
  REQUIRE(std::filesystem::is_empty(dir2.File("out")));
}

TEST_CASE("max_memory refuses a job whose largest tensor does not fit", "[quantize_checkpoint]") {
  testing::TempDir out;
  auto recipe = Recipe::Load("default");
  REQUIRE_OK(recipe);
  QuantizeJobOptions options;
  options.input = Fixture("tiny-31b/bf16");
  options.output_dir = out.File("out");
  options.threads = 2;
  options.dry_run = true;
  auto plan = QuantizeCheckpoint(*recipe, options);
  REQUIRE_OK(plan);
  REQUIRE(plan->memory_bound_bytes > kBaselineMemoryBytes);
  options.dry_run = false;
  options.max_memory = plan->memory_bound_bytes - 1;
  auto refused = QuantizeCheckpoint(*recipe, options);
  REQUIRE_STATUS_IS(refused, absl::StatusCode::kResourceExhausted);
  REQUIRE(refused.status().message().find("tensor '") != std::string::npos);
  REQUIRE_FALSE(std::filesystem::exists(out.File("out")));
  options.max_memory = plan->memory_bound_bytes;
  REQUIRE_OK(QuantizeCheckpoint(*recipe, options));
}

// Runs the job in a child process that SIGKILLs itself once `tensors`
// tensors are done (checkpointing after every quantized tensor), leaving
// what a killed gquant-quantize leaves.
void RunKilledAfter(const QuantizeJobOptions& base, const Recipe& recipe, int64_t tensors) {
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    QuantizeJobOptions options = base;
    options.checkpoint_seconds = 0;
    options.progress = [tensors](const JobProgress& p) {
      if (p.tensors_done >= tensors) raise(SIGKILL);
    };
    (void)QuantizeCheckpoint(recipe, options);
    _exit(0);  // finished before the kill point
  }
  int status = 0;
  REQUIRE(waitpid(pid, &status, 0) == pid);
  REQUIRE(WIFSIGNALED(status));
  REQUIRE(WTERMSIG(status) == SIGKILL);
}

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// The report without its timing, which differs from run to run.
Json ReportWithoutTime(const std::string& dir) {
  Json json = Json::parse(ReadFile(dir + "/quantize_report.json"));
  json.erase("seconds");
  return json;
}

TEST_CASE("resume after a kill reuses finished tensors and matches an uninterrupted run",
          "[quantize_checkpoint]") {
  testing::TempDir dir;
  auto recipe = Recipe::Load("sensitive");  // min-max and HQQ tensors
  REQUIRE_OK(recipe);
  QuantizeJobOptions options;
  options.input = Fixture("tiny-e2b/f32");
  options.threads = 2;
  options.output_dir = dir.File("reference");
  auto reference = QuantizeCheckpoint(*recipe, options);
  REQUIRE_OK(reference);
  REQUIRE(reference->resumed_tensors == 0);
  const std::string model = ReadFile(dir.File("reference/model.safetensors"));
  int64_t quantized = 0;
  for (const TensorReport& t : reference->tensors) quantized += t.config.has_value();

  options.output_dir = dir.File("out");
  const int64_t kill_after = static_cast<int64_t>(reference->tensors.size()) / 2;
  RunKilledAfter(options, *recipe, kill_after);
  const std::string manifest = dir.File("out/.model.safetensors.tmp.progress.json");
  REQUIRE(std::filesystem::exists(manifest));
  REQUIRE_FALSE(std::filesystem::exists(dir.File("out/model.safetensors")));
  for (const std::string& name : ListDir(dir.File("out"))) {
    INFO(name);
    REQUIRE(name.find(".tmp.") != std::string::npos);  // only temporaries
  }

  SECTION("resume") {
    options.resume = true;
    auto resumed = QuantizeCheckpoint(*recipe, options);
    REQUIRE_OK(resumed);
    INFO(resumed->resume_note);
    REQUIRE(resumed->resumed_tensors > 0);
    REQUIRE(resumed->resumed_tensors < quantized);
    REQUIRE(ReadFile(dir.File("out/model.safetensors")) == model);
    REQUIRE(ReportWithoutTime(dir.File("out")) == ReportWithoutTime(dir.File("reference")));
    REQUIRE(ListDir(dir.File("out")) == ListDir(dir.File("reference")));
  }
  SECTION("a damaged tensor is redone, the rest reused") {
    // Flip one byte in the middle of the interrupted run's file: inside the
    // payload of some finished tensor or of an unfinished one.
    const Json progress = Json::parse(ReadFile(manifest));
    const std::string temporary = dir.File("out/" + progress["temporary"].get<std::string>());
    std::string bytes = ReadFile(temporary);
    auto reader = QuantizedCheckpoint::Open(temporary);
    REQUIRE_OK(reader);
    const std::string first = progress["finished"][0]["name"].get<std::string>();
    auto flattened = FlattenedNamesOf(first);
    REQUIRE_OK(flattened);
    const SafetensorsTensorInfo* info = reader->checkpoint().Find(flattened->qdata);
    REQUIRE(info != nullptr);
    const uint64_t at = reader->checkpoint().shards()[0].data_start() + info->begin;
    bytes[at] = static_cast<char>(bytes[at] ^ 0x11);
    REQUIRE_OK(WriteFileAtomically(temporary, bytes));
    options.resume = true;
    auto resumed = QuantizeCheckpoint(*recipe, options);
    REQUIRE_OK(resumed);
    INFO(resumed->resume_note);
    REQUIRE(resumed->resume_note.find("1 did not verify") != std::string::npos);
    REQUIRE(resumed->resumed_tensors == static_cast<int64_t>(progress["finished"].size()) - 1);
    REQUIRE(ReadFile(dir.File("out/model.safetensors")) == model);
  }
  SECTION("another recipe starts over") {
    auto other = Recipe::Load("default");
    REQUIRE_OK(other);
    options.resume = true;
    auto report = QuantizeCheckpoint(*other, options);
    REQUIRE_OK(report);
    REQUIRE(report->resumed_tensors == 0);
    REQUIRE(report->resume_note.find("another recipe") != std::string::npos);
    REQUIRE(ListDir(dir.File("out")) == ListDir(dir.File("reference")));
  }
  SECTION("without resume the leftovers are cleared") {
    auto report = QuantizeCheckpoint(*recipe, options);
    REQUIRE_OK(report);
    REQUIRE(report->resumed_tensors == 0);
    REQUIRE(ReadFile(dir.File("out/model.safetensors")) == model);
    REQUIRE(ListDir(dir.File("out")) == ListDir(dir.File("reference")));
  }
}

TEST_CASE("a second job into the same directory is refused while one runs",
          "[quantize_checkpoint]") {
  testing::TempDir dir;
  auto recipe = Recipe::Load("default");
  REQUIRE_OK(recipe);
  QuantizeJobOptions options;
  options.input = Fixture("tiny-31b/bf16");
  options.output_dir = dir.path().string();
  options.threads = 1;
  absl::Status inner;
  bool tried = false;
  options.progress = [&](const JobProgress&) {
    if (tried) return;
    tried = true;
    QuantizeJobOptions second = options;
    second.progress = nullptr;
    inner = QuantizeCheckpoint(*recipe, second).status();
  };
  REQUIRE_OK(QuantizeCheckpoint(*recipe, options));
  REQUIRE(tried);
  REQUIRE_STATUS_IS(inner, absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace gquant

namespace gquant {
namespace {

// Writes quantized checkpoints and gquant's dequantization of them for
// tests/data/interop/check_quantized.py (hidden; run by hand for the GPU
// machine check, with GQUANT_INTEROP_OUT set).
TEST_CASE("writes quantized checkpoints for the Python check", "[.interop_quantized]") {
  const char* out = std::getenv("GQUANT_INTEROP_OUT");
  REQUIRE(out != nullptr);
  for (const auto& [fixture, recipe] :
       {std::pair{"tiny-31b/bf16", "default"}, std::pair{"tiny-e2b/f32", "sensitive"},
        std::pair{"tiny-moe/bf16", "default"}}) {
    const std::string dir =
        std::string(out) + "/" + std::string(fixture).substr(0, 8) + "-" + recipe;
    REQUIRE_OK(Run(Fixture(fixture), recipe, dir));
    auto result = QuantizedCheckpoint::Open(dir);
    REQUIRE_OK(result);
    std::vector<Tensor> dequantized;
    for (const std::string& name : result->weight_names()) {
      auto values = result->Dequantize(name);
      REQUIRE_OK(values);
      auto tensor = Tensor::Allocate(name, DType::kF32, result->Find(name)->shape);
      REQUIRE_OK(tensor);
      std::memcpy(tensor->mutable_bytes().data(), values->data(), tensor->num_bytes());
      dequantized.push_back(*tensor);
    }
    REQUIRE_OK(WriteSafetensors(dir + "/dequantized.safetensors", dequantized));
  }
}

}  // namespace
}  // namespace gquant
