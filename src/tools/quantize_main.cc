// gquant-quantize: quantize a Hugging Face Gemma 4 checkpoint with a recipe
// and save a quantized checkpoint (see gquant/quantize_checkpoint.h).
//
//   gquant-quantize --recipe=default --output=OUT_DIR [--threads=N] [--dry-run]
//                   [--device=cpu|cuda] [--resume] [--max-memory=BYTES]
//                   [--eval [--prompts=FILE]]
//                   [--calibrate-images=FILE[,FILE...] [--held-out-images=FILE[,FILE...]]
//                    [--observer=min_max|moving_average_min_max]
//                    [--activation-granularity=per_tensor|per_channel] [--image-tokens=N]]
//                   INPUT
//
// Flag names take dashes or underscores (--dry-run, --dry_run).
//
// INPUT is a checkpoint directory (model.safetensors or a sharded index) or
// one .safetensors file. --recipe takes a bundled name (default, sensitive) or
// a JSON path. --device=cuda quantizes each matrix on the first GPU
// (cuda/gpu_quantize.cuh: the CPU's results within float rounding); it needs
// a build with the CUDA backend. Progress goes to stderr: a bar on a
// terminal, plain lines otherwise; the report (after a "device:" line) goes to
// stdout and OUT_DIR/quantize_report.json.
//
// Every output file is written to a temporary beside it and renamed when
// complete, model.safetensors last but the report (quantize_checkpoint.h), so
// a kill never leaves a partial file under a final name. --resume continues a
// killed run into the same OUT_DIR: quantized tensors it finished are checked
// against their recorded hashes and reused (same recipe, input and device
// only); the output is byte-identical to an uninterrupted run.
// --max-memory (bytes; K/M/G/KiB/MiB/GiB suffixes) refuses up front, naming
// the tensor, a job whose bound (one tensor in flight: its input pages,
// packed output and quantizer scratch, plus a 32 MiB baseline) exceeds it;
// the report prints the bound.
//
// --eval then loads INPUT and OUT_DIR with the CPU reference model and prints
// the KL divergence and top-1 agreement of the quantized model's next-token
// distributions against the original's (gquant/gemma4/quality.h), over the
// prompts of --prompts (token ids, one prompt per line) or, by default,
// kEvalPrompts random prompts of kEvalPromptLength ids (RandomPrompts, seed
// kEvalSeed): a tokenizer-free stand-in that probes the weights, rougher than
// real text.
//
// --calibrate-images then calibrates int8 activations for the vision
// embedder of OUT_DIR (gquant/gemma4/vision_calibration.h): it runs OUT_DIR's
// vision tower on each image (PNG or JPEG, preprocessed to at most
// --image-tokens soft tokens), observes the embedder input with --observer at
// --activation-granularity, writes OUT_DIR/activation_quant.safetensors and
// prints the SNR of the int8 embedder against OUT_DIR's float-activation
// embedder on --held-out-images. The flags are refused before quantizing
// when INPUT has no vision tower, and so are unreadable images.
#include <cctype>
#include <cstdio>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/algorithm/container.h"
#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "gquant/gemma4/cpu_model.h"
#include "gquant/gemma4/quality.h"
#include "gquant/gemma4/vision_calibration.h"
#include "gquant/gemma4/weight_source.h"
#include "gquant/image.h"
#include "gquant/quantize_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/status.h"
#include "tools/flag_spelling.h"
#include "tools/progress_printer.h"

#if defined(GQUANT_HAS_CUDA)
#include "device.cuh"
#include "gpu_quantize.cuh"
#endif

ABSL_FLAG(std::string, recipe, "default",
          "Bundled recipe name (default, sensitive) or path to a recipe JSON file");
ABSL_FLAG(std::string, output, "", "Output directory (created if missing)");
ABSL_FLAG(int, threads, 0, "Worker threads (0: all hardware threads)");
ABSL_FLAG(std::string, device, "cpu",
          "Where to quantize: cpu (all --threads) or cuda (the first GPU; CUDA builds only)");
ABSL_FLAG(bool, dry_run, false, "Print the rule each tensor matches; write nothing");
ABSL_FLAG(bool, per_tensor, true, "Print per-tensor error and SNR in the report");
ABSL_FLAG(bool, hqq_best_iterate, false,
          "HQQ: keep the best iterate's zero instead of the reference's one-past-best");
ABSL_FLAG(bool, resume, false,
          "Reuse the quantized tensors a killed run into --output finished (verified by hash)");
ABSL_FLAG(std::string, max_memory, "",
          "Refuse to start if the job's memory bound exceeds this many bytes (suffixes K, M, G, "
          "KiB, MiB, GiB); empty: no bound");
ABSL_FLAG(bool, eval, false,
          "After quantizing, compare the output's next-token predictions with the input's");
ABSL_FLAG(std::string, prompts, "",
          "--eval prompts: a file of token ids, one prompt per line (default: random ids)");
ABSL_FLAG(std::string, calibrate_images, "",
          "After quantizing, calibrate int8 vision-embedder activations on these images "
          "(comma-separated PNG/JPEG paths) and write OUT_DIR/activation_quant.safetensors");
ABSL_FLAG(std::string, held_out_images, "",
          "--calibrate-images: images (comma-separated) to measure the int8 embedder's SNR on");
ABSL_FLAG(std::string, observer, "min_max",
          "--calibrate-images observer: min_max or moving_average_min_max");
ABSL_FLAG(std::string, activation_granularity, "per_tensor",
          "--calibrate-images granularity: per_tensor (int8 x int8 Linear) or per_channel");
ABSL_FLAG(int, image_tokens, 280,
          "--calibrate-images: soft-token budget per image (70, 140, 280, 560 or 1120)");

namespace {

constexpr int kEvalPrompts = 4;
constexpr int kEvalPromptLength = 64;
constexpr uint64_t kEvalSeed = 0;

// The quality report of `output` against `input` over `prompts` (empty: the
// random default; see --eval above).
absl::StatusOr<gquant::gemma4::QualityReport> Evaluate(const std::string& input,
                                                       const std::string& output,
                                                       std::vector<std::vector<int>> prompts,
                                                       int threads) {
  const gquant::gemma4::CpuModelOptions options{.threads = threads};
  GQ_ASSIGN_OR_RETURN(const auto reference, gquant::gemma4::CpuModel::Load(input, options));
  GQ_ASSIGN_OR_RETURN(const auto quantized, gquant::gemma4::CpuModel::Load(output, options));
  if (prompts.empty()) {
    prompts = gquant::gemma4::RandomPrompts(reference->source().config().text.vocab_size,
                                            kEvalPrompts, kEvalPromptLength, kEvalSeed);
  }
  return gquant::gemma4::CompareModels(*reference, *quantized, prompts);
}

// Points options->quantizer at the device named by --device and returns the
// report's device line; an error message for an unknown or unavailable device.
absl::StatusOr<std::string> SelectDevice(const std::string& device,
                                         gquant::QuantizeJobOptions* options) {
  if (device == "cpu") return std::string("device: cpu");
  if (device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrFormat("--device: expected cpu or cuda, but got '%s'", device));
  }
#if defined(GQUANT_HAS_CUDA)
  if (gquant::cuda::DeviceCount() == 0) {
    return absl::FailedPreconditionError("--device=cuda: no CUDA device is visible");
  }
  GQ_ASSIGN_OR_RETURN(const gquant::cuda::DeviceInfo info, gquant::cuda::GetDeviceInfo(0));
  options->quantizer = gquant::cuda::QuantizeOnGpu;
  options->quantizer_id = absl::StrFormat("cuda %s", info.name);
  return absl::StrFormat("device: cuda:0 %s (compute capability %d.%d)", info.name,
                         info.compute_capability_major, info.compute_capability_minor);
#else
  (void)options;
  return absl::FailedPreconditionError(
      "--device=cuda: this gquant-quantize was built without the CUDA backend (configure with "
      "nvcc available and -DGQUANT_ENABLE_CUDA=ON)");
#endif
}

// "1500000", "512M", "2GiB" -> bytes; InvalidArgument otherwise. K/M/G are
// powers of 1000, KiB/MiB/GiB powers of 1024.
absl::StatusOr<int64_t> ParseBytes(const std::string& text) {
  size_t digits = 0;
  while (digits < text.size() && std::isdigit(static_cast<unsigned char>(text[digits]))) ++digits;
  const std::string suffix = text.substr(digits);
  int64_t unit = 0;
  if (suffix.empty()) unit = 1;
  if (suffix == "K") unit = 1000;
  if (suffix == "M") unit = 1000 * 1000;
  if (suffix == "G") unit = 1000 * 1000 * 1000;
  if (suffix == "KiB") unit = int64_t{1} << 10;
  if (suffix == "MiB") unit = int64_t{1} << 20;
  if (suffix == "GiB") unit = int64_t{1} << 30;
  const auto invalid = [&] {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--max-memory: expected a positive byte count with an optional K, M, G, KiB, MiB or GiB "
        "suffix, but got '%s'",
        text));
  };
  if (digits == 0 || digits > 15 || unit == 0) return invalid();
  const int64_t value = std::stoll(text.substr(0, digits));
  if (value == 0 || value > std::numeric_limits<int64_t>::max() / unit) return invalid();
  return value * unit;
}

// The settings of --calibrate-images, checked before the quantization.
struct Calibration {
  std::vector<std::string> images;
  std::vector<std::string> held_out;
  gquant::ObserverOptions observer;
  int image_tokens = 0;
};

std::vector<std::string> SplitPaths(const std::string& list) {
  return absl::StrSplit(list, ',', absl::SkipEmpty());
}

// The --calibrate-images settings (nullopt without the flag). Refuses, before
// anything is written, bad names, a dry run, an INPUT without a vision tower
// and images that cannot be read.
absl::StatusOr<std::optional<Calibration>> ParseCalibration(const std::string& input,
                                                            bool dry_run) {
  Calibration c;
  c.images = SplitPaths(absl::GetFlag(FLAGS_calibrate_images));
  c.held_out = SplitPaths(absl::GetFlag(FLAGS_held_out_images));
  if (c.images.empty()) {
    if (!c.held_out.empty()) {
      return absl::InvalidArgumentError("--held-out-images needs --calibrate-images");
    }
    return std::nullopt;
  }
  if (dry_run) {
    return absl::InvalidArgumentError(
        "--calibrate-images needs a written checkpoint, so it cannot go with --dry-run");
  }
  absl::StatusOr<gquant::ObserverKind> kind =
      gquant::ObserverKindFromName(absl::GetFlag(FLAGS_observer));
  GQ_RETURN_IF_ERROR(gquant::Annotate(kind.status(), "--observer"));
  c.observer.kind = *kind;
  absl::StatusOr<gquant::QuantGranularity> granularity =
      gquant::QuantGranularityFromName(absl::GetFlag(FLAGS_activation_granularity));
  GQ_RETURN_IF_ERROR(gquant::Annotate(granularity.status(), "--activation-granularity"));
  c.observer.granularity = *granularity;
  c.image_tokens = absl::GetFlag(FLAGS_image_tokens);
  if (!absl::c_linear_search(std::vector<int>{70, 140, 280, 560, 1120}, c.image_tokens)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--image-tokens: expected 70, 140, 280, 560 or 1120, but got %d", c.image_tokens));
  }
  GQ_ASSIGN_OR_RETURN(const auto source, gquant::gemma4::OpenWeightSource(input));
  if (!source->config().vision.has_value()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "--calibrate-images: %s has no vision tower (no vision_config in its config), so there "
        "is no vision embedder to calibrate",
        source->description()));
  }
  for (const std::vector<std::string>* list : {&c.images, &c.held_out}) {
    for (const std::string& path : *list) {
      const absl::StatusOr<gquant::RgbImage> image = gquant::ReadImageFile(path);
      if (!image.ok()) {
        return gquant::Annotate(image.status(),
                                list == &c.images ? "--calibrate-images" : "--held-out-images");
      }
    }
  }
  return c;
}

void PrintDryRun(const gquant::Recipe& recipe, const gquant::QuantizeReport& report) {
  for (const gquant::TensorReport& t : report.tensors) {
    const std::string rule =
        t.rule_index < 0
            ? "no rule"
            : absl::StrFormat("rule %d '%s'", t.rule_index, recipe.rules()[t.rule_index].pattern);
    std::printf("%-60s %-44s %s\n", t.name.c_str(), rule.c_str(),
                t.config ? gquant::QuantConfigToString(*t.config).c_str() : "keep");
  }
}

}  // namespace

int main(int argc, char** argv) {
  gquant::tools::DashesToUnderscoresInFlagNames(argc, argv);
  absl::SetProgramUsageMessage(
      "gquant-quantize --recipe=NAME_OR_PATH --output=DIR [--threads=N] [--dry-run] "
      "[--device=cpu|cuda] [--resume] [--max-memory=BYTES] [--eval [--prompts=FILE]] "
      "[--calibrate-images=FILE[,FILE...] [--held-out-images=FILE[,FILE...]] "
      "[--observer=min_max|moving_average_min_max] "
      "[--activation-granularity=per_tensor|per_channel] [--image-tokens=N]] INPUT");
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  const bool dry_run = absl::GetFlag(FLAGS_dry_run);
  const bool eval = absl::GetFlag(FLAGS_eval);
  if (args.size() != 2 || (!dry_run && absl::GetFlag(FLAGS_output).empty()) || (dry_run && eval)) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  const absl::StatusOr<gquant::Recipe> recipe = gquant::Recipe::Load(absl::GetFlag(FLAGS_recipe));
  if (!recipe.ok()) {
    std::fprintf(stderr, "gquant-quantize: %s\n", recipe.status().ToString().c_str());
    return 1;
  }
  // A bad prompt file fails now rather than after the quantization.
  std::vector<std::vector<int>> eval_prompts;
  if (const std::string file = absl::GetFlag(FLAGS_prompts); eval && !file.empty()) {
    absl::StatusOr<std::vector<std::vector<int>>> prompts = gquant::gemma4::ReadPromptFile(file);
    if (!prompts.ok()) {
      std::fprintf(stderr, "gquant-quantize: %s\n", prompts.status().ToString().c_str());
      return 1;
    }
    eval_prompts = *std::move(prompts);
  }
  // So are bad calibration settings.
  const absl::StatusOr<std::optional<Calibration>> calibration = ParseCalibration(args[1], dry_run);
  if (!calibration.ok()) {
    std::fprintf(stderr, "gquant-quantize: %s\n", calibration.status().ToString().c_str());
    return 2;
  }
  gquant::tools::ProgressPrinter printer("quantized");
  gquant::QuantizeJobOptions options;
  options.input = args[1];
  options.output_dir = absl::GetFlag(FLAGS_output);
  options.threads = absl::GetFlag(FLAGS_threads);
  options.dry_run = dry_run;
  options.hqq.keep_best_iterate = absl::GetFlag(FLAGS_hqq_best_iterate);
  options.resume = absl::GetFlag(FLAGS_resume);
  if (const std::string bound = absl::GetFlag(FLAGS_max_memory); !bound.empty()) {
    const absl::StatusOr<int64_t> bytes = ParseBytes(bound);
    if (!bytes.ok()) {
      std::fprintf(stderr, "gquant-quantize: %s\n", bytes.status().ToString().c_str());
      return 2;
    }
    options.max_memory = *bytes;
  }
  options.progress = [&printer](const gquant::JobProgress& p) { printer.Update(p); };
  const absl::StatusOr<std::string> device_line =
      SelectDevice(absl::GetFlag(FLAGS_device), &options);
  if (!device_line.ok()) {
    std::fprintf(stderr, "gquant-quantize: %s\n", device_line.status().ToString().c_str());
    return absl::IsInvalidArgument(device_line.status()) ? 2 : 1;
  }

  const absl::StatusOr<gquant::QuantizeReport> report =
      gquant::QuantizeCheckpoint(*recipe, options);
  if (!report.ok()) {
    std::fprintf(stderr, "\ngquant-quantize: %s\n", report.status().ToString().c_str());
    return 1;
  }
  if (dry_run) PrintDryRun(*recipe, *report);
  std::printf("%s\n", device_line->c_str());
  std::printf("%s", report->ToText(!dry_run && absl::GetFlag(FLAGS_per_tensor)).c_str());
  if (!dry_run) {
    std::printf("wrote %s/model.safetensors and quantize_report.json\n",
                options.output_dir.c_str());
  }
  if (calibration->has_value()) {
    const Calibration& c = **calibration;
    std::fflush(stdout);
    const absl::StatusOr<gquant::gemma4::EmbedderCalibrationReport> calibrated =
        gquant::gemma4::CalibrateCheckpointEmbedder(options.output_dir, c.images, c.held_out,
                                                    c.observer, c.image_tokens, options.threads);
    if (!calibrated.ok()) {
      std::fprintf(stderr, "gquant-quantize --calibrate-images: %s\n",
                   calibrated.status().ToString().c_str());
      return 1;
    }
    std::printf("%s", calibrated->ToText().c_str());
  }
  if (eval) {
    if (eval_prompts.empty()) {
      std::printf("eval: %d random prompts of %d token ids (seed %d)\n", kEvalPrompts,
                  kEvalPromptLength, static_cast<int>(kEvalSeed));
    } else {
      std::printf("eval: %zu prompts from %s\n", eval_prompts.size(),
                  absl::GetFlag(FLAGS_prompts).c_str());
    }
    std::fflush(stdout);
    const absl::StatusOr<gquant::gemma4::QualityReport> quality =
        Evaluate(options.input, options.output_dir, std::move(eval_prompts), options.threads);
    if (!quality.ok()) {
      std::fprintf(stderr, "gquant-quantize --eval: %s\n", quality.status().ToString().c_str());
      return 1;
    }
    std::printf("%s", quality->ToText().c_str());
  }
  return 0;
}
