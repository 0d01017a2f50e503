// Calibration of the Gemma 4 vision embedder's int8 activations (issue 9):
// observers (activation_quant.h) over the embedder input of a calibration set
// of images give the activation's int8 scale / zero point; they are saved
// beside the checkpoint (activation_quant.safetensors) and measured on
// held-out images against the float embedder.
//
// The quantized activation is the one the embedder's projection sees: the
// RMS-normed soft tokens (CpuVisionModel::EmbedderInput). One observer batch
// per image, as a torch observer sees one forward per calibration sample.
//
// Usage:
//   std::vector<std::string> calibration = {"a.png", "b.jpg"}, held_out = {"c.png"};
//   auto report = CalibrateCheckpointEmbedder("/models/gemma-4-31b-int8", calibration,
//                                             held_out, {}, 280);
//   // report->snr_db; the checkpoint now holds activation_quant.safetensors.
//   auto params = ReadEmbedderActivationParams("/models/gemma-4-31b-int8");
//   auto vision = CpuVisionModel::Create(*source, {.embedder_activations = *params});
#ifndef GQUANT_GEMMA4_VISION_CALIBRATION_H_
#define GQUANT_GEMMA4_VISION_CALIBRATION_H_

#include <cstdint>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "gquant/activation_quant.h"
#include "gquant/gemma4/cpu_vision.h"
#include "gquant/gemma4/vision_input.h"

namespace gquant::gemma4 {

// The weight whose input the embedder's params quantize, as the checkpoint
// names it: the key of its entry in activation_quant.safetensors.
inline constexpr char kEmbedderProjectionWeight[] =
    "model.embed_vision.embedding_projection.weight";

// Runs the vision tower on each image and observes the embedder input
// ([num_soft_tokens, hidden], one batch per image) with `options`, then
// computes the params. Returns InvalidArgument for no images and for
// ActivationObserver's errors (bad options, a NaN/Inf activation, a range too
// wide for a float32 scale); the model's errors, naming the image's index.
absl::StatusOr<ActivationQuantParams> CalibrateEmbedder(const CpuVisionModel& model,
                                                        std::span<const VisionInput> images,
                                                        const ObserverOptions& options);

struct EmbedderCalibrationReport {
  std::string checkpoint;  // as given
  std::string file;        // the activation_quant.safetensors written
  ActivationQuantParams params;
  int max_soft_tokens = 0;
  int64_t calibration_images = 0;
  int64_t calibration_rows = 0;  // soft tokens observed
  int64_t held_out_images = 0;
  int64_t held_out_rows = 0;
  // Over every held-out embedding value, 10 log10(sum ref^2 / sum (ref -
  // test)^2) (SignalToNoiseDb) with ref the checkpoint's float32 embedder
  // (CpuVisionModel::Embed: its projection as stored, dequantized, on float
  // activations), and test:
  //   snr_db              the int8 embedder, EmbedQuantized(params): int8
  //                       activations and int8 per-row weights;
  //   weight_only_snr_db  float activations and the int8 per-row projection
  //                       (EmbedderProjectionInt8): the weights' share alone;
  //                       +inf when the checkpoint already stores the
  //                       projection int8 per row (a gquant-quantize output).
  // NaN when there are no held-out images.
  double snr_db = 0;
  double weight_only_snr_db = 0;
  // Held-out activation values outside the calibrated range (they clamp).
  int64_t held_out_clamped = 0;
  int64_t held_out_values = 0;

  // A few lines: the params, the counts and the SNRs ("... held-out SNR
  // 38.2 dB ...").
  std::string ToText() const;
};

// Opens the checkpoint at `checkpoint_dir` (OpenWeightSource: a float or a
// gquant quantized checkpoint; CpuVisionModel with `threads`), reads and preprocesses each image
// (ReadImageFile, PreprocessImage with `max_soft_tokens`), calibrates the
// embedder on `calibration_images` (CalibrateEmbedder), measures the held-out
// SNRs described in EmbedderCalibrationReport on `held_out_images` (may be
// empty), and writes the params to <dir>/activation_quant.safetensors
// (WriteActivationQuantParams, key kEmbedderProjectionWeight; <dir> is the
// checkpoint directory, or the directory of a .safetensors path) with
// metadata "gquant.calibration.images", "gquant.calibration.held_out_images"
// (the paths as given, joined by ","), "gquant.calibration.max_soft_tokens",
// "gquant.calibration.observer" (e.g. "min_max per_tensor affine"),
// "gquant.calibration.snr_db" and "gquant.calibration.weight_only_snr_db".
// Nothing is written unless every step succeeded.
// Errors: InvalidArgument for no calibration images (before opening
// anything); OpenWeightSource's errors; FailedPrecondition when the config has
// no vision_config; CpuVisionModel::Create's and CalibrateEmbedder's errors;
// ReadImageFile's (NotFound for a missing file) and PreprocessImage's errors,
// annotated with the image's path; WriteActivationQuantParams' errors.
absl::StatusOr<EmbedderCalibrationReport> CalibrateCheckpointEmbedder(
    const std::string& checkpoint_dir, std::span<const std::string> calibration_images,
    std::span<const std::string> held_out_images, const ObserverOptions& options,
    int max_soft_tokens, int threads = 0);

// The embedder's params from <checkpoint_dir>/activation_quant.safetensors
// (ReadActivationQuantParams' errors; NotFound when the file has no entry for
// kEmbedderProjectionWeight), ready for CpuVisionOptions::embedder_activations.
absl::StatusOr<ActivationQuantParams> ReadEmbedderActivationParams(
    const std::string& checkpoint_dir);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_VISION_CALIBRATION_H_
