// Calibration of the vision embedder's int8 activations: observe the
// embedder input over calibration images, measure held-out SNRs, save the
// params beside the checkpoint (vision_calibration.h).
#include "gquant/gemma4/vision_calibration.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <limits>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "cpu_ops.h"
#include "gquant/gemma4/weight_source.h"
#include "gquant/image.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"

namespace gquant::gemma4 {
namespace {

// Runs the tower on one image and records its embedder input as one batch.
// Returns the rows observed.
absl::StatusOr<int64_t> ObserveImage(const CpuVisionModel& model, const VisionInput& input,
                                     ActivationObserver& observer) {
  GQ_ASSIGN_OR_RETURN(const std::vector<float> tokens, model.SoftTokens(input));
  const int64_t rows = static_cast<int64_t>(tokens.size()) / model.config().hidden_size;
  GQ_ASSIGN_OR_RETURN(const std::vector<float> x, model.EmbedderInput(tokens, rows));
  GQ_RETURN_IF_ERROR(observer.Observe(x, rows));
  return rows;
}

// The preprocessed image at `path`; errors name it.
absl::StatusOr<VisionInput> LoadImage(const std::string& path, const VisionConfig& config,
                                      int max_soft_tokens, const char* role) {
  absl::StatusOr<RgbImage> image = ReadImageFile(path);
  GQ_RETURN_IF_ERROR(Annotate(image.status(), role, " image '", path, "'"));
  absl::StatusOr<VisionInput> input = PreprocessImage(*image, config, max_soft_tokens);
  GQ_RETURN_IF_ERROR(Annotate(input.status(), role, " image '", path, "'"));
  return input;
}

// The directory that holds the checkpoint at `path` (itself, or the parent of
// a .safetensors file).
std::string CheckpointDirectory(const std::string& path) {
  std::error_code ignored;
  if (std::filesystem::is_directory(path, ignored)) return path;
  const std::filesystem::path parent = std::filesystem::path(path).parent_path();
  return parent.empty() ? std::string(".") : parent.string();
}

// Running sums of SignalToNoiseDb over several outputs.
struct SnrSums {
  double signal = 0;
  double noise = 0;

  void Add(std::span<const float> reference, std::span<const float> test) {
    for (size_t i = 0; i < reference.size(); ++i) {
      const double r = reference[i], d = r - static_cast<double>(test[i]);
      signal += r * r;
      noise += d * d;
    }
  }
  // SignalToNoiseDb's conventions: +inf for no noise, -inf for no signal.
  double Db() const {
    if (noise == 0) return std::numeric_limits<double>::infinity();
    if (signal == 0) return -std::numeric_limits<double>::infinity();
    return 10 * std::log10(signal / noise);
  }
};

// Values of the [rows, channels] activation x outside the params'
// representable range [(quant_min - zp) * scale, (quant_max - zp) * scale].
int64_t CountOutsideRange(std::span<const float> x, const ActivationQuantParams& p) {
  const size_t channels = p.scale.size();  // 1 per tensor
  int64_t outside = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const size_t c = i % channels;
    const double scale = p.scale[c];
    const double lo = (p.quant_min - p.zero_point[c]) * scale;
    const double hi = (p.quant_max - p.zero_point[c]) * scale;
    outside += x[i] < lo || x[i] > hi;
  }
  return outside;
}

std::string FormatDb(double db) {
  if (std::isinf(db) && db > 0) return "+inf dB (no error)";
  return absl::StrFormat("%.2f dB", db);
}

std::string ObserverDescription(const ActivationQuantParams& p) {
  return absl::StrCat(std::string(ObserverKindName(p.observer)), " ",
                      std::string(QuantGranularityName(p.granularity)), " ",
                      p.symmetric ? "symmetric" : "affine");
}

}  // namespace

absl::StatusOr<ActivationQuantParams> CalibrateEmbedder(const CpuVisionModel& model,
                                                        std::span<const VisionInput> images,
                                                        const ObserverOptions& options) {
  if (images.empty()) {
    return absl::InvalidArgumentError(
        "vision embedder calibration: expected at least one calibration image, but got none");
  }
  GQ_ASSIGN_OR_RETURN(ActivationObserver observer,
                      ActivationObserver::Create(options, model.config().hidden_size));
  for (size_t i = 0; i < images.size(); ++i) {
    GQ_RETURN_IF_ERROR(
        Annotate(ObserveImage(model, images[i], observer).status(), "calibration image ", i));
  }
  return observer.Compute();
}

std::string EmbedderCalibrationReport::ToText() const {
  const ActivationQuantParams& p = params;
  std::string range;
  if (p.granularity == QuantGranularity::kPerTensor) {
    range = absl::StrFormat("scale %.6g, zero point %d", p.scale[0], p.zero_point[0]);
    if (!p.min_val.empty()) {
      absl::StrAppend(&range,
                      absl::StrFormat(", observed range [%.6g, %.6g]", p.min_val[0], p.max_val[0]));
    }
  } else {
    const auto [lo, hi] = std::minmax_element(p.scale.begin(), p.scale.end());
    range = absl::StrFormat("%d channels, scales in [%.6g, %.6g]", p.scale.size(), *lo, *hi);
  }
  std::string text = absl::StrFormat(
      "embedder activations int8 (%s): %s; calibrated on %d image(s), %d soft tokens (max %d per "
      "image)\n",
      ObserverDescription(p), range, calibration_images, calibration_rows, max_soft_tokens);
  if (held_out_images == 0) {
    absl::StrAppend(&text, "embedder held-out SNR vs float: not measured (no held-out images)\n");
  } else {
    absl::StrAppend(
        &text,
        absl::StrFormat("embedder held-out SNR vs float: int8 activations + int8 weights %s; int8 "
                        "weights alone %s; on %d image(s), %d soft tokens, %d of %d activation "
                        "values outside the calibrated range\n",
                        FormatDb(snr_db), FormatDb(weight_only_snr_db), held_out_images,
                        held_out_rows, held_out_clamped, held_out_values));
  }
  if (!file.empty()) absl::StrAppend(&text, "wrote ", file, "\n");
  return text;
}

absl::StatusOr<EmbedderCalibrationReport> CalibrateCheckpointEmbedder(
    const std::string& checkpoint_dir, std::span<const std::string> calibration_images,
    std::span<const std::string> held_out_images, const ObserverOptions& options,
    int max_soft_tokens, int threads) {
  if (calibration_images.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("vision embedder calibration of '", checkpoint_dir,
                     "': expected at least one calibration image, but got none"));
  }
  GQ_ASSIGN_OR_RETURN(const std::unique_ptr<WeightSource> source, OpenWeightSource(checkpoint_dir));
  if (!source->config().vision.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat(source->description(),
                     ": the config has no vision_config, so there is no vision embedder to "
                     "calibrate"));
  }
  GQ_ASSIGN_OR_RETURN(const std::unique_ptr<CpuVisionModel> model,
                      CpuVisionModel::Create(*source, {.threads = threads}));
  const VisionConfig& config = model->config();
  const int64_t hidden = config.hidden_size, text_hidden = model->text_hidden_size();

  EmbedderCalibrationReport report;
  report.checkpoint = checkpoint_dir;
  report.max_soft_tokens = max_soft_tokens;
  // One image in memory at a time.
  GQ_ASSIGN_OR_RETURN(ActivationObserver observer, ActivationObserver::Create(options, hidden));
  for (const std::string& path : calibration_images) {
    GQ_ASSIGN_OR_RETURN(const VisionInput input,
                        LoadImage(path, config, max_soft_tokens, "calibration"));
    absl::StatusOr<int64_t> rows = ObserveImage(*model, input, observer);
    GQ_RETURN_IF_ERROR(Annotate(rows.status(), "calibration image '", path, "'"));
    ++report.calibration_images;
    report.calibration_rows += *rows;
  }
  GQ_ASSIGN_OR_RETURN(report.params, observer.Compute());

  // Held out: the float embedder, the int8 one, and int8 weights alone.
  SnrSums quantized, weight_only;
  std::vector<float> int8_projection;  // dequantized codes, [text_hidden, hidden]
  ThreadPool pool(threads);
  if (!held_out_images.empty()) {
    GQ_ASSIGN_OR_RETURN(const Int8RowWeights w, model->EmbedderProjectionInt8());
    int8_projection.resize(w.codes.size());
    for (size_t i = 0; i < w.codes.size(); ++i) {
      int8_projection[i] = static_cast<float>(w.codes[i]) * w.scale[i / hidden];
    }
  }
  for (const std::string& path : held_out_images) {
    GQ_ASSIGN_OR_RETURN(const VisionInput input,
                        LoadImage(path, config, max_soft_tokens, "held-out"));
    const auto run = [&]() -> absl::Status {
      GQ_ASSIGN_OR_RETURN(const std::vector<float> tokens, model->SoftTokens(input));
      const int64_t rows = static_cast<int64_t>(tokens.size()) / hidden;
      GQ_ASSIGN_OR_RETURN(const std::vector<float> reference, model->Embed(tokens, rows));
      GQ_ASSIGN_OR_RETURN(const std::vector<float> int8,
                          model->EmbedQuantized(tokens, rows, report.params));
      GQ_ASSIGN_OR_RETURN(const std::vector<float> x, model->EmbedderInput(tokens, rows));
      std::vector<float> weights_only(rows * text_hidden);
      cpu::Linear(x, rows, hidden, int8_projection, text_hidden, weights_only, &pool);
      quantized.Add(reference, int8);
      weight_only.Add(reference, weights_only);
      report.held_out_clamped += CountOutsideRange(x, report.params);
      report.held_out_values += static_cast<int64_t>(x.size());
      report.held_out_rows += rows;
      return absl::OkStatus();
    };
    GQ_RETURN_IF_ERROR(Annotate(run(), "held-out image '", path, "'"));
    ++report.held_out_images;
  }
  const double nan = std::numeric_limits<double>::quiet_NaN();
  report.snr_db = held_out_images.empty() ? nan : quantized.Db();
  report.weight_only_snr_db = held_out_images.empty() ? nan : weight_only.Db();

  const std::string dir = CheckpointDirectory(checkpoint_dir);
  const std::map<std::string, std::string> metadata = {
      {"gquant.calibration.images", absl::StrJoin(calibration_images, ",")},
      {"gquant.calibration.held_out_images", absl::StrJoin(held_out_images, ",")},
      {"gquant.calibration.max_soft_tokens", absl::StrCat(max_soft_tokens)},
      {"gquant.calibration.observer", ObserverDescription(report.params)},
      {"gquant.calibration.snr_db", absl::StrFormat("%.6g", report.snr_db)},
      {"gquant.calibration.weight_only_snr_db", absl::StrFormat("%.6g", report.weight_only_snr_db)},
  };
  GQ_RETURN_IF_ERROR(
      WriteActivationQuantParams(dir, {{kEmbedderProjectionWeight, report.params}}, metadata));
  report.file = absl::StrCat(dir, "/", std::string(kActivationQuantFileName));
  return report;
}

absl::StatusOr<ActivationQuantParams> ReadEmbedderActivationParams(
    const std::string& checkpoint_dir) {
  const std::string dir = CheckpointDirectory(checkpoint_dir);
  GQ_ASSIGN_OR_RETURN(auto params, ReadActivationQuantParams(dir));
  const auto it = params.find(kEmbedderProjectionWeight);
  if (it == params.end()) {
    return absl::NotFoundError(absl::StrCat(dir, "/", std::string(kActivationQuantFileName),
                                            ": no activation params for '",
                                            kEmbedderProjectionWeight, "'"));
  }
  return it->second;
}

}  // namespace gquant::gemma4
