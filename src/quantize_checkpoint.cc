#include "gquant/quantize_checkpoint.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/atomic_file.h"
#include "gquant/checkpoint.h"
#include "gquant/checkpoint_summary.h"
#include "gquant/gemma4/config.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/safetensors.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

using Json = nlohmann::ordered_json;

constexpr std::string_view kLmHead = "lm_head.weight";

// Files copied beside the weights when present (Hugging Face names).
constexpr const char* kAuxiliaryFiles[] = {"config.json",           "generation_config.json",
                                           "tokenizer.json",        "tokenizer_config.json",
                                           "tokenizer.model",       "special_tokens_map.json",
                                           "chat_template.jinja",   "chat_template.json",
                                           "processor_config.json", "preprocessor_config.json"};

// Min-max rows are independent, so they are quantized in blocks of about this
// many elements: small enough to stay in cache-friendly scratch, large enough
// to split across threads.
constexpr int64_t kBlockElements = int64_t{1} << 22;

struct PlannedTensor {
  TensorReport report;
  std::optional<QuantizedLayout> layout;  // set when quantized
};

std::string ConfigToString(const std::optional<QuantConfig>& config) {
  return config ? QuantConfigToString(*config) : "keep";
}

// The model's layer count and whether lm_head is tied, from config.json when
// there is one; else layers from the tensor names and no tie.
struct ModelFacts {
  int num_layers = 0;
  bool tied_embeddings = false;
};
absl::StatusOr<ModelFacts> ReadModelFacts(const Checkpoint& checkpoint) {
  const std::filesystem::path config_path =
      std::filesystem::path(checkpoint.directory()) / "config.json";
  ModelFacts facts;
  if (std::filesystem::exists(config_path)) {
    GQ_ASSIGN_OR_RETURN(const gemma4::Config config, gemma4::LoadConfig(config_path.string()));
    facts.num_layers = config.text.num_hidden_layers;
    facts.tied_embeddings = config.text.tie_word_embeddings;
    return facts;
  }
  for (const std::string& name : checkpoint.TensorNames()) {
    if (const auto layer = LayerIndexOf(name))
      facts.num_layers = std::max(facts.num_layers, *layer + 1);
  }
  return facts;
}

absl::StatusOr<PlannedTensor> PlanTensor(const Recipe& recipe, const SafetensorsTensorInfo& info,
                                         std::string name, int num_layers) {
  PlannedTensor plan;
  TensorReport& r = plan.report;
  r.source = info.name;
  r.name = std::move(name);
  const RecipeMatch match = recipe.Match(r.name, num_layers);
  r.rule_index = match.rule_index;
  r.config = match.config;
  r.dtype = info.dtype;
  r.shape = info.shape;
  r.bytes_before = r.name == r.source ? static_cast<int64_t>(info.num_bytes()) : 0;
  r.snr_db = std::numeric_limits<double>::infinity();
  if (!r.config) {
    r.bytes_after = static_cast<int64_t>(info.num_bytes());
    return plan;
  }
  const auto context = [&] {
    return absl::StrCat("tensor '", r.name, "' (rule ", r.rule_index, ")");
  };
  if (info.dtype != DType::kBF16 && info.dtype != DType::kF16 && info.dtype != DType::kF32) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: expected a F32, F16 or BF16 weight to quantize, but got %s", context(),
                        DTypeName(info.dtype)));
  }
  auto layout = QuantizedLayout::Create(r.name, r.shape, *r.config);
  if (!layout.ok()) return Annotate(layout.status(), context());
  r.bytes_after = layout->num_bytes();
  plan.layout = std::move(*layout);
  return plan;
}

// Quantizes one input tensor into `layout`'s packed form, returning the
// packed weight and accumulating the reconstruction error.
absl::StatusOr<PackedWeight> QuantizeTensor(const Tensor& input, const QuantizedLayout& layout,
                                            const QuantizeJobOptions& options, ThreadPool* pool,
                                            ErrorStats* stats) {
  PackedWeight packed(layout);
  const QuantConfig& config = layout.config();
  const int64_t rows = layout.rows(), cols = layout.cols(), groups = layout.groups();
  // HQQ's stopping rule is global over a matrix: hand it a whole one. A
  // custom quantizer (the GPU) also gets whole matrices, to transfer each once.
  const bool whole_matrix = config.method == QuantMethod::kHqq || options.quantizer;
  const int64_t block_rows =
      whole_matrix ? rows : std::clamp<int64_t>(kBlockElements / cols, 1, rows);
  std::vector<int8_t> codes(block_rows * cols);
  std::vector<float> scale(block_rows * groups), zero(block_rows * groups);
  const int64_t element_bytes = DTypeSize(input.dtype());
  QuantizeOptions quantize_options{options.hqq, pool, stats};
  for (int64_t m = 0; m < layout.matrices(); ++m) {
    for (int64_t r0 = 0; r0 < rows; r0 += block_rows) {
      const int64_t n = std::min(block_rows, rows - r0);
      const auto source =
          input.bytes().subspan((m * rows + r0) * cols * element_bytes, n * cols * element_bytes);
      const QuantizedSpans spans{std::span(codes).first(n * cols),
                                 std::span(scale).first(n * groups),
                                 std::span(zero).first(n * groups)};
      absl::Status status =
          options.quantizer
              ? options.quantizer(config, input.dtype(), source, n, cols, spans, quantize_options)
              : Quantize(config, input.dtype(), source, n, cols, spans, quantize_options);
      if (!status.ok()) {
        return Annotate(status, absl::StrFormat("matrix %d, rows from %d", m, r0));
      }
      GQ_RETURN_IF_ERROR(packed.Pack(m, r0, n, spans.codes, spans.scale, spans.zero_point));
    }
  }
  return packed;
}

absl::Status CopyAuxiliaryFiles(const std::string& from, const std::string& to) {
  for (const char* file : kAuxiliaryFiles) {
    const std::filesystem::path source = std::filesystem::path(from) / file;
    if (!std::filesystem::exists(source)) continue;
    std::ifstream in(source, std::ios::binary);
    std::stringstream contents;
    contents << in.rdbuf();
    if (!in.good() && !in.eof()) {
      return absl::InternalError(absl::StrFormat("cannot read '%s'", source.string()));
    }
    GQ_RETURN_IF_ERROR(
        WriteFileAtomically((std::filesystem::path(to) / file).string(), contents.str()));
  }
  return absl::OkStatus();
}

QuantizeReport BuildReport(const Recipe& recipe, std::vector<PlannedTensor>& plan) {
  QuantizeReport report;
  report.recipe = recipe.name();
  for (size_t i = 0; i < recipe.rules().size(); ++i) {
    report.rules.push_back(
        {static_cast<int>(i), recipe.rules()[i].pattern, recipe.rules()[i].config});
  }
  report.rules.push_back({-1, "(no rule)", std::nullopt});
  for (PlannedTensor& p : plan) {
    RuleReport& rule =
        p.report.rule_index < 0 ? report.rules.back() : report.rules[p.report.rule_index];
    rule.tensors += 1;
    rule.bytes_before += p.report.bytes_before;
    rule.bytes_after += p.report.bytes_after;
    report.bytes_before += p.report.bytes_before;
    report.bytes_after += p.report.bytes_after;
    report.tensors.push_back(p.report);
  }
  return report;
}

}  // namespace

absl::StatusOr<QuantizeReport> QuantizeCheckpoint(const Recipe& recipe,
                                                  const QuantizeJobOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  GQ_ASSIGN_OR_RETURN(const Checkpoint checkpoint, Checkpoint::Open(options.input));
  GQ_ASSIGN_OR_RETURN(const ModelFacts facts, ReadModelFacts(checkpoint));

  // ---- plan: every output tensor, its rule and its stored size ----
  std::vector<PlannedTensor> plan;
  const bool has_lm_head = checkpoint.Find(kLmHead) != nullptr;
  for (const std::string& name : checkpoint.TensorNames()) {
    const SafetensorsTensorInfo& info = *checkpoint.Find(name);
    GQ_ASSIGN_OR_RETURN(PlannedTensor planned, PlanTensor(recipe, info, name, facts.num_layers));
    plan.push_back(std::move(planned));
    // A tied lm_head is absent from HF checkpoints; when the recipe gives it a
    // config, quantize it independently from the embedding (spec §2.5).
    const bool is_embedding = name.ends_with("embed_tokens.weight");
    if (is_embedding && facts.tied_embeddings && !has_lm_head &&
        recipe.Match(kLmHead, facts.num_layers).config) {
      GQ_ASSIGN_OR_RETURN(PlannedTensor head,
                          PlanTensor(recipe, info, std::string(kLmHead), facts.num_layers));
      plan.push_back(std::move(head));
    }
  }
  if (options.dry_run) {
    QuantizeReport report = BuildReport(recipe, plan);
    report.seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    return report;
  }

  // ---- write: header first, then payloads as the input streams by ----
  std::error_code error;
  std::filesystem::create_directories(options.output_dir, error);
  if (error) {
    return absl::InternalError(absl::StrFormat("cannot create output directory '%s': %s",
                                               options.output_dir, error.message()));
  }
  std::vector<QuantizedCheckpointEntry> entries;
  std::multimap<std::string, size_t> by_source;
  for (size_t i = 0; i < plan.size(); ++i) {
    const TensorReport& r = plan[i].report;
    by_source.emplace(r.source, i);
    entries.push_back({r.name, plan[i].layout, r.dtype, r.shape});
  }
  const std::string output_file =
      (std::filesystem::path(options.output_dir) / "model.safetensors").string();
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<QuantizedCheckpointWriter> writer,
                      QuantizedCheckpointWriter::Create(output_file, entries,
                                                        {{"gquant.recipe", recipe.ToJson()}}));

  ThreadPool pool(options.threads);
  JobProgress progress;
  progress.tensors_total = static_cast<int64_t>(plan.size());
  progress.bytes_total = SummarizeCheckpoint(checkpoint).total.bytes;
  GQ_RETURN_IF_ERROR(checkpoint.ForEachTensor([&](const Tensor& input) -> absl::Status {
    const auto [first, last] = by_source.equal_range(input.name());
    for (auto it = first; it != last; ++it) {
      PlannedTensor& p = plan[it->second];
      progress.current = p.report.name;
      if (!p.layout) {
        GQ_RETURN_IF_ERROR(writer->WritePlain(p.report.name, input.bytes()));
      } else {
        ErrorStats stats;
        auto packed = QuantizeTensor(input, *p.layout, options, &pool, &stats);
        if (!packed.ok()) {
          return Annotate(packed.status(), "tensor '", p.report.name, "' (rule ",
                          p.report.rule_index, ")");
        }
        GQ_RETURN_IF_ERROR(writer->WritePacked(*packed));
        p.report.relative_error = stats.RelativeError();
        p.report.snr_db = stats.SnrDb();
      }
      progress.tensors_done += 1;
      if (options.progress) options.progress(progress);
    }
    progress.bytes_done += static_cast<int64_t>(input.num_bytes());
    return absl::OkStatus();
  }));
  GQ_RETURN_IF_ERROR(writer->Commit());
  GQ_RETURN_IF_ERROR(CopyAuxiliaryFiles(checkpoint.directory(), options.output_dir));

  QuantizeReport report = BuildReport(recipe, plan);
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  GQ_RETURN_IF_ERROR(WriteFileAtomically(
      (std::filesystem::path(options.output_dir) / "quantize_report.json").string(),
      report.ToJson()));
  return report;
}

// ---- report formatting ----

std::string QuantizeReport::ToJson() const {
  auto config_json = [](const std::optional<QuantConfig>& config) -> Json {
    if (!config) return nullptr;
    return Json{{"bits", config->bits},
                {"group_size", config->group_size == kPerRowGroupSize ? Json("per_row")
                                                                      : Json(config->group_size)},
                {"symmetric", config->symmetric},
                {"method", std::string(QuantMethodName(config->method))}};
  };
  Json rules_json = Json::array();
  for (const RuleReport& r : rules) {
    rules_json.push_back({{"rule", r.rule_index},
                          {"pattern", r.pattern},
                          {"config", config_json(r.config)},
                          {"tensors", r.tensors},
                          {"bytes_before", r.bytes_before},
                          {"bytes_after", r.bytes_after}});
  }
  Json tensors_json = Json::array();
  for (const TensorReport& t : tensors) {
    Json entry = {{"name", t.name},
                  {"source", t.source},
                  {"rule", t.rule_index},
                  {"config", config_json(t.config)},
                  {"dtype", std::string(DTypeName(t.dtype))},
                  {"shape", t.shape},
                  {"bytes_before", t.bytes_before},
                  {"bytes_after", t.bytes_after}};
    if (t.config) {
      entry["relative_error"] = t.relative_error;
      entry["snr_db"] = t.snr_db;
    }
    tensors_json.push_back(std::move(entry));
  }
  return Json{{"recipe", recipe},   {"bytes_before", bytes_before}, {"bytes_after", bytes_after},
              {"seconds", seconds}, {"rules", rules_json},          {"tensors", tensors_json}}
      .dump(1);
}

std::string QuantizeReport::ToText(bool per_tensor) const {
  std::string out = absl::StrFormat(
      "recipe '%s': %d tensors, %s -> %s bytes (%.2fx smaller) in %.2f s\n", recipe, tensors.size(),
      FormatWithThousands(bytes_before), FormatWithThousands(bytes_after),
      bytes_after > 0 ? static_cast<double>(bytes_before) / bytes_after : 0.0, seconds);
  absl::StrAppendFormat(&out, "%4s  %-40s %-24s %7s %15s %15s\n", "rule", "pattern", "config",
                        "tensors", "bytes before", "bytes after");
  for (const RuleReport& r : rules) {
    absl::StrAppendFormat(&out, "%4s  %-40s %-24s %7d %15s %15s\n",
                          r.rule_index < 0 ? "--" : absl::StrCat(r.rule_index), r.pattern,
                          ConfigToString(r.config), r.tensors, FormatWithThousands(r.bytes_before),
                          FormatWithThousands(r.bytes_after));
  }
  if (!per_tensor) return out;
  size_t width = 6;
  for (const TensorReport& t : tensors) width = std::max(width, t.name.size());
  absl::StrAppendFormat(&out, "%-*s  %-24s %10s %8s\n", static_cast<int>(width), "tensor", "config",
                        "rel.error", "SNR dB");
  for (const TensorReport& t : tensors) {
    if (!t.config) continue;
    absl::StrAppendFormat(&out, "%-*s  %-24s %10.5f %8.2f\n", static_cast<int>(width), t.name,
                          ConfigToString(t.config), t.relative_error, t.snr_db);
  }
  return out;
}

}  // namespace gquant
