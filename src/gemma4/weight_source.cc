#include "gquant/gemma4/weight_source.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gquant/dtype.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"
#include "gquant/pack.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/status.h"
#include "gquant/tensor.h"

namespace gquant::gemma4 {
namespace {

// The rest of "model." beside the text weights: the vision/audio towers and
// their embedders (WeightSource::MediaNames).
constexpr std::array<std::string_view, 4> kMediaPrefixes = {"vision_tower.", "embed_vision.",
                                                            "audio_tower.", "embed_audio."};
constexpr std::string_view kLmHead = "lm_head.weight";
constexpr std::array<std::string_view, 4> kSharedLayerIgnored = {"k_proj.", "v_proj.", "k_norm.",
                                                                 "v_norm."};

bool IsMediaName(std::string_view name) {
  return std::any_of(kMediaPrefixes.begin(), kMediaPrefixes.end(),
                     [&](std::string_view m) { return name.starts_with(m); });
}

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

absl::Status CheckRows(std::string_view name, const std::vector<int64_t>& shape, int64_t row_begin,
                       int64_t rows) {
  if (shape.size() != 2 || row_begin < 0 || rows < 0 || row_begin + rows > shape[0]) {
    return absl::InvalidArgumentError(absl::StrCat("weight '", std::string(name), "': rows [",
                                                   row_begin, ", ", row_begin + rows, ") of shape ",
                                                   ShapeToString(shape)));
  }
  return absl::OkStatus();
}

// A Hugging Face or gquant quantized checkpoint with config.json beside it.
class CheckpointSource final : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<WeightSource>> Open(const std::string& path) {
    GQ_ASSIGN_OR_RETURN(QuantizedCheckpoint checkpoint, QuantizedCheckpoint::Open(path));
    GQ_ASSIGN_OR_RETURN(Config config, LoadConfig(checkpoint.checkpoint().directory()));
    return std::unique_ptr<WeightSource>(
        new CheckpointSource(path, std::move(checkpoint), std::move(config)));
  }

  const Config& config() const override { return config_; }
  std::vector<std::string> Names() const override { return names_; }
  std::vector<std::string> MediaNames() const override { return media_names_; }
  std::optional<std::vector<int64_t>> Shape(std::string_view name) const override {
    const QuantizedWeightInfo* info = Info(name);
    if (info == nullptr) return std::nullopt;
    return info->shape;
  }

  absl::StatusOr<std::vector<float>> Load(std::string_view name) const override {
    const auto it = fqns_.find(name);
    if (it == fqns_.end()) return NotFound(name);
    absl::StatusOr<std::vector<float>> out = checkpoint_.Dequantize(it->second);
    if (!out.ok()) return Annotate(out.status(), description());
    return out;
  }

  // Plain tensors convert just the rows; quantized ones dequantize the whole.
  absl::StatusOr<std::vector<float>> LoadRows(std::string_view name, int64_t row_begin,
                                              int64_t rows) const override {
    const QuantizedWeightInfo* info = Info(name);
    if (info == nullptr) return NotFound(name);
    GQ_RETURN_IF_ERROR(CheckRows(name, info->shape, row_begin, rows));
    return checkpoint_.DequantizeRows(info->fqn, row_begin, rows);
  }

  std::string description() const override { return absl::StrCat("checkpoint '", path_, "'"); }

  bool StoresQuantized(std::string_view name) const override {
    const QuantizedWeightInfo* info = Info(name);
    return info != nullptr && info->kind != QuantizedWeightInfo::Kind::kPlain;
  }

  // The stored codes packed as they are: no dequantize / requantize trip.
  absl::StatusOr<std::vector<PackedMatrix>> LoadPacked(std::string_view name,
                                                       PackBackend backend) const override {
    const QuantizedWeightInfo* info = Info(name);
    if (info == nullptr) return NotFound(name);
    if (info->kind == QuantizedWeightInfo::Kind::kPlain) {
      return WeightSource::LoadPacked(name, backend);
    }
    absl::StatusOr<std::vector<PackedMatrix>> packed = PackWeight(checkpoint_, info->fqn, backend);
    // The packed copy owns its bytes: the mapped pages can go, so loading a
    // large checkpoint onto a device stays near one weight of host memory.
    checkpoint_.Release(info->fqn);
    if (!packed.ok()) return Annotate(packed.status(), description());  // names the FQN
    return packed;
  }

 private:
  CheckpointSource(std::string path, QuantizedCheckpoint checkpoint, Config config)
      : path_(std::move(path)), checkpoint_(std::move(checkpoint)), config_(std::move(config)) {
    const std::vector<std::string>& fqns = checkpoint_.weight_names();
    const bool multimodal = std::any_of(fqns.begin(), fqns.end(), [](const std::string& f) {
      return f.starts_with(kHfPrefixMultimodal);
    });
    const std::string_view prefix = multimodal ? kHfPrefixMultimodal : kHfPrefixText;
    for (const std::string& fqn : fqns) {
      std::string name;
      bool media = false;
      if (fqn == kLmHead) {
        name = fqn;
      } else if (fqn.starts_with(prefix)) {
        name = fqn.substr(prefix.size());
        media = !multimodal && IsMediaName(name);
      } else if (fqn.starts_with(kHfPrefixText) && IsMediaName(fqn.substr(kHfPrefixText.size()))) {
        name = fqn.substr(kHfPrefixText.size());  // a tower of a multimodal checkpoint
        media = true;
      } else {
        continue;
      }
      (media ? media_names_ : names_).push_back(name);
      fqns_.emplace(std::move(name), fqn);
    }
  }

  const QuantizedWeightInfo* Info(std::string_view name) const {
    const auto it = fqns_.find(name);
    return it == fqns_.end() ? nullptr : checkpoint_.Find(it->second);
  }
  absl::Status NotFound(std::string_view name) const {
    return absl::NotFoundError(
        absl::StrCat(description(), ": no weight '", std::string(name), "'"));
  }

  std::string path_;
  QuantizedCheckpoint checkpoint_;
  Config config_;
  std::vector<std::string> names_;
  std::vector<std::string> media_names_;
  std::map<std::string, std::string, std::less<>> fqns_;  // unprefixed -> file FQN (both kinds)
};

// A llama.cpp GGUF file, read through gemma4/gguf_mapping.h's names.
class GgufSource final : public WeightSource {
 public:
  static absl::StatusOr<std::unique_ptr<WeightSource>> Open(const std::string& path) {
    GQ_ASSIGN_OR_RETURN(GgufFile file, GgufFile::Open(path));
    Config config;
    config.model_type = "gemma4_text";
    config.architectures = {"Gemma4ForCausalLM"};
    GQ_ASSIGN_OR_RETURN(config.text, TextConfigFromGguf(file));
    config.eos_token_ids = config.text.eos_token_ids;
    auto source = std::unique_ptr<GgufSource>(new GgufSource(path, std::move(file), config));
    for (const GgufTensorInfo& info : source->file_.tensors()) {
      absl::StatusOr<std::string> name = HfNameFromGguf(info.name, "");
      if (absl::IsNotFound(name.status())) continue;  // rope_freqs: RoPE comes from the config
      if (absl::IsUnimplemented(name.status()))
        return Annotate(name.status(), source->description());
      // A non-Gemma tensor keeps its GGUF name, so CheckWeights reports it.
      std::string hf = name.ok() ? *std::move(name) : info.name;
      source->names_.push_back(hf);
      source->infos_.emplace(std::move(hf), &info);
    }
    return std::unique_ptr<WeightSource>(std::move(source));
  }

  const Config& config() const override { return config_; }
  std::vector<std::string> Names() const override { return names_; }
  std::optional<std::vector<int64_t>> Shape(std::string_view name) const override {
    const auto it = infos_.find(name);
    if (it == infos_.end()) return std::nullopt;
    return it->second->TorchShape();
  }

  absl::StatusOr<std::vector<float>> Load(std::string_view name) const override {
    const auto it = infos_.find(name);
    if (it == infos_.end()) return NotFound(name);
    GQ_RETURN_IF_ERROR(file_.CheckNotTruncated());  // before touching mapped tensor bytes
    return Decode(*it->second, file_.TensorData(*it->second), Product(it->second->TorchShape()));
  }

  // Every GGUF row is a whole number of blocks, so rows slice the bytes.
  absl::StatusOr<std::vector<float>> LoadRows(std::string_view name, int64_t row_begin,
                                              int64_t rows) const override {
    const auto it = infos_.find(name);
    if (it == infos_.end()) return NotFound(name);
    const GgufTensorInfo& info = *it->second;
    GQ_RETURN_IF_ERROR(CheckRows(name, info.TorchShape(), row_begin, rows));
    const int64_t cols = info.dims[0];
    GQ_ASSIGN_OR_RETURN(const uint64_t row_bytes,
                        GgmlRowBytes(static_cast<GgmlType>(info.type), cols));
    GQ_RETURN_IF_ERROR(file_.CheckNotTruncated());
    return Decode(info, file_.TensorData(info).subspan(row_begin * row_bytes, rows * row_bytes),
                  rows * cols);
  }

  std::string description() const override { return absl::StrCat("GGUF '", path_, "'"); }

  bool StoresQuantized(std::string_view name) const override {
    const auto it = infos_.find(name);
    if (it == infos_.end()) return false;
    const GgmlTypeTraits* traits = FindGgmlType(it->second->type);
    return traits != nullptr && traits->is_quantized;
  }

  // Q8_0 / Q6_K / Q4_K blocks pack directly, other quantized types through
  // the gquant form; F32 / F16 / BF16 are plain.
  absl::StatusOr<std::vector<PackedMatrix>> LoadPacked(std::string_view name,
                                                       PackBackend backend) const override {
    const auto it = infos_.find(name);
    if (it == infos_.end()) return NotFound(name);
    if (!StoresQuantized(name)) return WeightSource::LoadPacked(name, backend);
    absl::StatusOr<std::vector<PackedMatrix>> packed =
        PackGgufTensor(file_, it->second->name, backend);
    if (!packed.ok()) {  // the packer names the GGUF tensor; add the HF name
      return Annotate(packed.status(), description(), ": weight '", std::string(name), "'");
    }
    return packed;
  }

 private:
  GgufSource(std::string path, GgufFile file, Config config)
      : path_(std::move(path)), file_(std::move(file)), config_(std::move(config)) {}

  absl::StatusOr<std::vector<float>> Decode(const GgufTensorInfo& info,
                                            std::span<const std::byte> bytes,
                                            int64_t elements) const {
    std::vector<float> out(elements);
    const absl::Status status = DequantizeGgml(static_cast<GgmlType>(info.type), bytes, out);
    if (!status.ok()) return Annotate(status, description(), ": tensor '", info.name, "'");
    return out;
  }
  absl::Status NotFound(std::string_view name) const {
    return absl::NotFoundError(
        absl::StrCat(description(), ": no weight '", std::string(name), "'"));
  }

  std::string path_;
  GgufFile file_;
  Config config_;
  std::vector<std::string> names_;
  std::map<std::string, const GgufTensorInfo*, std::less<>> infos_;  // into file_.tensors()
};

bool IsGgufFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  char magic[4] = {};
  return in.read(magic, 4) && std::string_view(magic, 4) == "GGUF";
}

}  // namespace

absl::StatusOr<std::vector<float>> WeightSource::LoadRows(std::string_view name, int64_t row_begin,
                                                          int64_t rows) const {
  const std::optional<std::vector<int64_t>> shape = Shape(name);
  if (!shape.has_value()) {
    return absl::NotFoundError(
        absl::StrCat(description(), ": no weight '", std::string(name), "'"));
  }
  GQ_RETURN_IF_ERROR(CheckRows(name, *shape, row_begin, rows));
  GQ_ASSIGN_OR_RETURN(std::vector<float> all, Load(name));
  const int64_t cols = (*shape)[1];
  return std::vector<float>(all.begin() + row_begin * cols,
                            all.begin() + (row_begin + rows) * cols);
}

std::vector<std::string> WeightSource::MediaNames() const { return {}; }

bool WeightSource::StoresQuantized(std::string_view) const { return false; }

absl::StatusOr<std::vector<PackedMatrix>> WeightSource::LoadPacked(std::string_view name,
                                                                   PackBackend backend) const {
  return absl::UnimplementedError(absl::StrCat(description(), ": weight '", std::string(name),
                                               "' is not stored quantized (no ",
                                               std::string(PackBackendName(backend)), " packing)"));
}

absl::StatusOr<std::unique_ptr<WeightSource>> OpenWeightSource(const std::string& path) {
  std::error_code ec;
  if (std::filesystem::is_regular_file(path, ec) && IsGgufFile(path)) {
    return GgufSource::Open(path);
  }
  return CheckpointSource::Open(path);
}

absl::Status CheckWeights(const ModelPlan& plan, const WeightSource& source) {
  const TextConfig& c = plan.config;
  std::vector<std::string> missing, unexpected, misshaped;
  std::set<std::string, std::less<>> expected;
  for (const WeightSpec& spec : plan.AllWeights()) {
    expected.insert(spec.name);
    const std::optional<std::vector<int64_t>> shape = source.Shape(spec.name);
    if (!shape.has_value()) {
      missing.push_back(spec.name);
    } else if (*shape != spec.shape) {
      misshaped.push_back(absl::StrCat(spec.name, ": expected ", ShapeToString(spec.shape),
                                       ", but got ", ShapeToString(*shape)));
    }
  }
  int source_layers = 0;
  for (const std::string& name : source.Names()) {
    const std::optional<int> layer = LayerIndexOf(name);
    if (layer.has_value()) source_layers = std::max(source_layers, *layer + 1);
    if (expected.contains(name)) continue;
    // HF ignores the K/V weights of KV-shared layers
    // (_keys_to_ignore_on_load_unexpected).
    if (layer.has_value() && *layer < c.num_hidden_layers && c.is_kv_shared(*layer)) {
      const std::string attn = absl::StrCat("layers.", *layer, ".self_attn.");
      if (std::any_of(
              kSharedLayerIgnored.begin(), kSharedLayerIgnored.end(),
              [&](std::string_view w) { return name.starts_with(attn + std::string(w)); })) {
        continue;
      }
    }
    // A tied model may carry an untied head (a quantized copy of the
    // embedding); the forward then uses it.
    if (name == kLmHead &&
        source.Shape(name) == std::vector<int64_t>{c.vocab_size, c.hidden_size}) {
      continue;
    }
    unexpected.push_back(name);
  }
  std::vector<std::string> problems;
  if (source_layers != c.num_hidden_layers) {
    problems.push_back(absl::StrCat("layer count: the config has ", c.num_hidden_layers,
                                    " layers, but the weights cover ", source_layers));
  }
  if (!missing.empty()) {
    problems.push_back(absl::StrCat(missing.size(), " missing: ", absl::StrJoin(missing, ", ")));
  }
  if (!unexpected.empty()) {
    problems.push_back(
        absl::StrCat(unexpected.size(), " unexpected: ", absl::StrJoin(unexpected, ", ")));
  }
  if (!misshaped.empty()) {
    problems.push_back(
        absl::StrCat(misshaped.size(), " with the wrong shape: ", absl::StrJoin(misshaped, "; ")));
  }
  if (problems.empty()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(source.description(),
                   ": weights do not match the Gemma 4 model: ", absl::StrJoin(problems, "; ")));
}

absl::Status CheckVisionWeights(const WeightSource& source) {
  const Config& config = source.config();
  if (!config.vision.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat(source.description(), ": the config has no vision_config"));
  }
  std::vector<std::string> missing, misshaped;
  for (const WeightSpec& spec : VisionWeightSpecs(*config.vision, config.text.hidden_size)) {
    const std::optional<std::vector<int64_t>> shape = source.Shape(spec.name);
    if (!shape.has_value()) {
      missing.push_back(spec.name);
    } else if (*shape != spec.shape &&
               // A clip bound may be stored as [1] rather than 0-d.
               !(spec.shape.empty() && *shape == std::vector<int64_t>{1})) {
      misshaped.push_back(absl::StrCat(spec.name, ": expected ", ShapeToString(spec.shape),
                                       ", but got ", ShapeToString(*shape)));
    }
  }
  if (missing.empty() && misshaped.empty()) return absl::OkStatus();
  std::vector<std::string> problems;
  if (!missing.empty()) {
    problems.push_back(absl::StrCat(missing.size(), " missing: ", absl::StrJoin(missing, ", ")));
  }
  if (!misshaped.empty()) {
    problems.push_back(
        absl::StrCat(misshaped.size(), " with the wrong shape: ", absl::StrJoin(misshaped, "; ")));
  }
  return absl::InvalidArgumentError(
      absl::StrCat(source.description(),
                   ": vision weights do not match the config: ", absl::StrJoin(problems, "; ")));
}

}  // namespace gquant::gemma4
