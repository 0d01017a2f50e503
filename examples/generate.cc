// gquant-generate: generate token ids with a Gemma 4 model, on the CPU
// reference forward or on an NVIDIA GPU.
//
//   gquant-generate MODEL_PATH --prompt="2 45 99" | --prompt-file=FILE
//       [--device=cpu|cuda] [--recipe=NAME|PATH] [--bos=auto|always|never]
//       [--max-new-tokens=N] [--temperature=T --top-k=K --top-p=P --seed=S]
//       [--chunk=N] [--threads=N] [--no-graph] [--image=FILE[,FILE...]]
//       [--image-tokens=N]
//
// MODEL_PATH is a Hugging Face checkpoint directory (config.json beside the
// weights), a gquant quantized checkpoint, or a .gguf file. Prompts are token
// ids (no tokenizer here), separated by spaces or commas; a prompt file holds
// one prompt per line, and each is generated in turn. --bos=auto prepends the
// config's BOS id when a prompt does not start with it (what HF tokenizers
// do). Generation stops after N tokens or at one of the config's eos ids
// (printed as the last id). The generated ids go to stdout, one line per
// prompt; timings go to stderr.
//
// --image gives the prompt images (PNG or JPEG), one per image placeholder
// id (<|image|>, the config's image_token_id) in the prompt, in order; each
// placeholder is expanded into BOI + N soft tokens + EOI (N from the image
// size and --image-tokens) and the vision tower's output takes their place.
// The vision tower runs on the same device as the text model; on the CPU, a
// checkpoint calibrated by gquant-quantize --calibrate-images runs its
// embedder with the int8 activations it recorded.
//
// --device=cuda packs the weights onto the GPU (quantized ones stay
// quantized; --recipe quantizes a plain checkpoint on load), samples on the
// GPU and replays the decode step as a CUDA graph; the summary adds the GPU
// memory in use.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "gquant/activation_quant.h"
#include "gquant/gemma4/cpu_model.h"
#include "gquant/gemma4/cpu_vision.h"
#include "gquant/gemma4/image_prompt.h"
#include "gquant/gemma4/quality.h"
#include "gquant/gemma4/vision_calibration.h"
#include "gquant/gemma4/vision_input.h"
#include "gquant/image.h"
#include "gquant/sampler.h"
#include "gquant/status.h"
#include "tools/flag_spelling.h"
#include "tools/progress_printer.h"
#if GQUANT_HAS_CUDA
#include "gpu_model.cuh"
#include "gpu_vision.cuh"
#endif

ABSL_FLAG(std::string, prompt, "", "Prompt token ids, e.g. \"2 45 99\"");
ABSL_FLAG(std::string, prompt_file, "", "File of prompts, one line of token ids each");
ABSL_FLAG(std::string, device, "cpu", "cpu (reference forward) or cuda");
ABSL_FLAG(std::string, recipe, "",
          "cuda: quantize plain weights on load with this recipe (bundled name or path)");
ABSL_FLAG(std::string, bos, "auto",
          "auto: prepend the BOS id unless the prompt starts with it; always; never");
ABSL_FLAG(int, max_new_tokens, 32, "Tokens to generate per prompt (fewer at an eos id)");
ABSL_FLAG(float, temperature, 0.0f, "Sampling temperature (0: greedy)");
ABSL_FLAG(int, top_k, 0, "Keep the K most likely tokens (0: all)");
ABSL_FLAG(float, top_p, 1.0f, "Keep the smallest set of tokens with this much probability");
ABSL_FLAG(uint64_t, seed, 0, "Sampler seed");
ABSL_FLAG(int, chunk, 0, "Prefill chunk size in tokens (0: 512 on the CPU, 2048 on the GPU)");
ABSL_FLAG(int, threads, 0, "Worker threads (0: all hardware threads)");
ABSL_FLAG(std::vector<std::string>, image, {},
          "Image files (PNG/JPEG) for the prompt's image placeholders, comma-separated, in order");
ABSL_FLAG(int, image_tokens, 0,
          "Soft tokens per image: 70, 140, 280, 560 or 1120 (0: the config's "
          "vision_soft_tokens_per_image)");
ABSL_FLAG(bool, graph, true, "cuda: replay the decode step as a CUDA graph (--no-graph: launch)");

namespace {

using Clock = std::chrono::steady_clock;

// --chunk, or the backend's default: on the H100 the GPU's int4 prefill GEMM
// reaches 0.86-0.90 of cuBLAS bf16 at 2048 rows but 0.57-0.66 at 512 (each
// chunk dequantizes every weight once; bench/RESULTS.md); the CPU gains
// nothing from chunks that large.
int PrefillChunk(bool cuda) {
  const int chunk = absl::GetFlag(FLAGS_chunk);
  return chunk > 0 ? chunk : (cuda ? 2048 : 512);
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

// What one prompt produced, for the summary line.
struct Generation {
  std::vector<int> tokens;
  bool stopped_at_eos = false;
  double prefill_seconds = 0, decode_seconds = 0;
  int decode_steps = 0;
};

void Report(const Generation& g, size_t prompt_tokens, const std::string& extra) {
  std::printf("%s\n", absl::StrJoin(g.tokens, " ").c_str());
  std::fflush(stdout);
  std::fprintf(stderr,
               "prompt %zu tokens, prefill %.1f tokens/s; generated %zu tokens, decode %.1f "
               "tokens/s%s%s\n",
               prompt_tokens, prompt_tokens / std::max(g.prefill_seconds, 1e-9), g.tokens.size(),
               g.decode_steps > 0 ? g.decode_steps / std::max(g.decode_seconds, 1e-9) : 0.0,
               g.stopped_at_eos ? "; stopped at eos" : "", extra.c_str());
}

// Prefills `prompt` on the CPU, then samples and decodes until
// max_new_tokens or an eos id.
// The prompt's images, encoded: their soft-token counts and embedder rows.
struct EncodedImages {
  std::vector<int> soft_tokens;
  std::vector<float> rows;  // [sum of soft_tokens, H]
  double seconds = 0;
};

// Reads, preprocesses and encodes --image with `encode` (the CPU or GPU
// vision tower of the model).
absl::StatusOr<EncodedImages> EncodeImages(
    const gquant::gemma4::Config& config, const std::vector<std::string>& files,
    const std::function<absl::StatusOr<std::vector<float>>(const gquant::gemma4::VisionInput&)>&
        encode) {
  EncodedImages out;
  const Clock::time_point start = Clock::now();
  const int tokens = absl::GetFlag(FLAGS_image_tokens) > 0 ? absl::GetFlag(FLAGS_image_tokens)
                                                           : config.vision_soft_tokens_per_image;
  for (const std::string& file : files) {
    GQ_ASSIGN_OR_RETURN(const gquant::RgbImage image, gquant::ReadImageFile(file));
    absl::StatusOr<gquant::gemma4::VisionInput> input =
        gquant::gemma4::PreprocessImage(image, *config.vision, tokens);
    if (!input.ok()) return gquant::Annotate(input.status(), "--image '", file, "'");
    GQ_ASSIGN_OR_RETURN(std::vector<float> rows, encode(*input));
    out.soft_tokens.push_back(input->num_soft_tokens);
    out.rows.insert(out.rows.end(), rows.begin(), rows.end());
    std::fprintf(stderr, "image %s: %dx%d -> %dx%d patches, %d soft tokens\n", file.c_str(),
                 image.width, image.height, input->grid_width, input->grid_height,
                 input->num_soft_tokens);
  }
  out.seconds = Seconds(start);
  return out;
}

// The embedder's int8 activation params when the checkpoint directory at
// `path` holds activation_quant.safetensors (gquant-quantize
// --calibrate-images), else nullopt.
absl::StatusOr<std::optional<gquant::ActivationQuantParams>> CalibratedEmbedder(
    const std::string& path) {
  const std::filesystem::path dir = std::filesystem::is_directory(path)
                                        ? std::filesystem::path(path)
                                        : std::filesystem::path(path).parent_path();
  if (!std::filesystem::exists(dir / gquant::kActivationQuantFileName)) return std::nullopt;
  GQ_ASSIGN_OR_RETURN(gquant::ActivationQuantParams params,
                      gquant::gemma4::ReadEmbedderActivationParams(dir.string()));
  std::fprintf(stderr, "vision embedder: int8 activations from %s\n",
               (dir / gquant::kActivationQuantFileName).c_str());
  return params;
}

absl::Status CheckHasVision(const std::string& path, const gquant::gemma4::Config& config) {
  if (config.vision.has_value()) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrFormat("--image: %s has no vision tower (no vision_config)", path));
}

// The prompt with each image placeholder expanded (unchanged without images).
absl::StatusOr<std::vector<int>> ExpandImages(const std::vector<int>& prompt,
                                              const gquant::gemma4::Config& config,
                                              const EncodedImages& images) {
  if (images.soft_tokens.empty()) return prompt;
  absl::StatusOr<std::vector<int>> expanded =
      gquant::gemma4::ExpandImagePlaceholders(prompt, config, images.soft_tokens);
  if (!expanded.ok()) return gquant::Annotate(expanded.status(), "--image");
  return expanded;
}

std::string ImagesNote(const EncodedImages& images) {
  if (images.soft_tokens.empty()) return "";
  return absl::StrFormat("; %d image(s) encoded in %.3f s", images.soft_tokens.size(),
                         images.seconds);
}

absl::StatusOr<Generation> GenerateOnCpu(const gquant::gemma4::CpuModel& model,
                                         gquant::Sampler& sampler, const std::vector<int>& prompt,
                                         std::span<const float> image_rows, int max_new_tokens,
                                         int chunk) {
  const std::vector<int>& eos = model.source().config().eos_token_ids;
  const int vocab = model.source().config().text.vocab_size;
  gquant::gemma4::KvCache cache =
      model.NewCache(static_cast<int64_t>(prompt.size()) + max_new_tokens, chunk);

  Generation g;
  const Clock::time_point prefill_start = Clock::now();
  GQ_ASSIGN_OR_RETURN(std::vector<float> logits, model.Prefill(cache, prompt, chunk, image_rows));
  if (logits.size() != prompt.size() * vocab) {
    return absl::InternalError(absl::StrFormat("Prefill: expected %d x %d logits, but got %d",
                                               prompt.size(), vocab, logits.size()));
  }
  std::span<const float> last(logits.data() + logits.size() - vocab, vocab);
  GQ_ASSIGN_OR_RETURN(int token, sampler.Sample(last));
  g.prefill_seconds = Seconds(prefill_start);
  const Clock::time_point decode_start = Clock::now();
  while (true) {
    g.tokens.push_back(token);
    if (std::find(eos.begin(), eos.end(), token) != eos.end()) {
      g.stopped_at_eos = true;
      break;
    }
    if (static_cast<int>(g.tokens.size()) == max_new_tokens) break;
    const int step[] = {token};
    GQ_ASSIGN_OR_RETURN(logits, model.Forward(cache, step));
    GQ_ASSIGN_OR_RETURN(token, sampler.Sample(std::span<const float>(logits.data(), vocab)));
    ++g.decode_steps;
  }
  g.decode_seconds = Seconds(decode_start);
  return g;
}

absl::Status RunOnCpu(const std::string& path, const std::vector<std::vector<int>>& prompts,
                      const gquant::SamplerConfig& sampler_config) {
  GQ_ASSIGN_OR_RETURN(gquant::Sampler sampler, gquant::Sampler::Create(sampler_config));
  const Clock::time_point load_start = Clock::now();
  GQ_ASSIGN_OR_RETURN(
      const std::unique_ptr<gquant::gemma4::CpuModel> model,
      gquant::gemma4::CpuModel::Load(path, {.threads = absl::GetFlag(FLAGS_threads)}));
  std::fprintf(stderr, "loaded %s in %.2f s\n", model->source().description().c_str(),
               Seconds(load_start));
  const std::vector<std::string> files = absl::GetFlag(FLAGS_image);
  EncodedImages images;
  if (!files.empty()) {
    const gquant::gemma4::Config& config = model->source().config();
    GQ_RETURN_IF_ERROR(CheckHasVision(path, config));
    gquant::gemma4::CpuVisionOptions options{.threads = absl::GetFlag(FLAGS_threads)};
    // A checkpoint calibrated by gquant-quantize --calibrate-images runs its
    // embedder with int8 activations.
    GQ_ASSIGN_OR_RETURN(options.embedder_activations, CalibratedEmbedder(path));
    GQ_ASSIGN_OR_RETURN(const std::unique_ptr<gquant::gemma4::CpuVisionModel> vision,
                        gquant::gemma4::CpuVisionModel::Create(model->source(), options));
    GQ_ASSIGN_OR_RETURN(images, EncodeImages(config, files, [&](const auto& input) {
                          return vision->EncodeImage(input);
                        }));
  }
  for (const std::vector<int>& prompt : prompts) {
    GQ_ASSIGN_OR_RETURN(const std::vector<int> ids,
                        ExpandImages(prompt, model->source().config(), images));
    GQ_ASSIGN_OR_RETURN(const Generation g, GenerateOnCpu(*model, sampler, ids, images.rows,
                                                          absl::GetFlag(FLAGS_max_new_tokens),
                                                          PrefillChunk(/*cuda=*/false)));
    Report(g, ids.size(), ImagesNote(images));
  }
  return absl::OkStatus();
}

#if GQUANT_HAS_CUDA
absl::Status RunOnCuda(const std::string& path, const std::vector<std::vector<int>>& prompts,
                       const gquant::SamplerConfig& sampler_config) {
  gquant::tools::ProgressPrinter printer("loading onto the GPU");
  GQ_ASSIGN_OR_RETURN(
      const std::unique_ptr<gquant::cuda::GpuModel> model,
      gquant::cuda::GpuModel::Load(
          path, {.recipe = absl::GetFlag(FLAGS_recipe),
                 .threads = absl::GetFlag(FLAGS_threads),
                 .progress = [&](const gquant::JobProgress& p) { printer.Update(p); }}));
  const gquant::cuda::GpuLoadReport& report = model->load_report();
  std::fprintf(stderr,
               "loaded %s onto the GPU in %.2f s: %.2f GB of weights (%d int4, %d int8, %d bf16 "
               "matrices; %d quantized on load)\n",
               path.c_str(), report.seconds, report.weight_bytes / 1e9, report.int4_matrices,
               report.int8_matrices, report.bf16_matrices, report.quantized_on_load);
  for (const std::string& note : report.notes) std::fprintf(stderr, "  note: %s\n", note.c_str());

  const int max_new_tokens = absl::GetFlag(FLAGS_max_new_tokens);
  size_t longest = 0;
  const std::vector<std::string> files = absl::GetFlag(FLAGS_image);
  EncodedImages images;
  if (!files.empty()) {  // the vision tower on the GPU too, loaded from the same path
    GQ_RETURN_IF_ERROR(CheckHasVision(path, model->config()));
    GQ_ASSIGN_OR_RETURN(const auto calibrated, CalibratedEmbedder(path));
    if (calibrated.has_value()) {
      std::fprintf(stderr, "  note: the GPU vision embedder runs with bf16 activations\n");
    }
    GQ_ASSIGN_OR_RETURN(const std::unique_ptr<gquant::cuda::GpuVisionModel> vision,
                        gquant::cuda::GpuVisionModel::Load(
                            model->source(), {.recipe = absl::GetFlag(FLAGS_recipe)}));
    GQ_ASSIGN_OR_RETURN(images, EncodeImages(model->config(), files, [&](const auto& input) {
                          return vision->EncodeImage(input);
                        }));
  }
  std::vector<std::vector<int>> expanded;
  for (const std::vector<int>& prompt : prompts) {
    GQ_ASSIGN_OR_RETURN(expanded.emplace_back(), ExpandImages(prompt, model->config(), images));
    longest = std::max(longest, expanded.back().size());
  }
  // Activations for no more rows than the longest prompt needs.
  const int chunk = std::min<int64_t>(PrefillChunk(/*cuda=*/true), longest);
  GQ_ASSIGN_OR_RETURN(gquant::cuda::GpuSequence seq,
                      model->NewSequence(static_cast<int64_t>(longest) + max_new_tokens, chunk));
  for (const std::vector<int>& ids : expanded) {
    seq.Clear();
    GQ_ASSIGN_OR_RETURN(const gquant::cuda::GenerateResult result,
                        model->Generate(seq, ids,
                                        {.max_new_tokens = max_new_tokens,
                                         .sampler = sampler_config,
                                         .stop_ids = model->config().eos_token_ids,
                                         .chunk = chunk,
                                         .use_graph = absl::GetFlag(FLAGS_graph),
                                         .image_rows = images.rows}));
    GQ_ASSIGN_OR_RETURN(const int64_t in_use, gquant::cuda::DeviceMemoryInUse());
    Report({result.tokens, result.stopped_at_stop_id, result.prefill_seconds, result.decode_seconds,
            result.decode_steps},
           ids.size(),
           absl::StrCat(ImagesNote(images),
                        absl::StrFormat("; GPU memory in use %.2f GB", in_use / 1e9)));
  }
  return absl::OkStatus();
}
#endif

absl::StatusOr<std::vector<std::vector<int>>> ReadPrompts() {
  const std::string prompt = absl::GetFlag(FLAGS_prompt);
  const std::string prompt_file = absl::GetFlag(FLAGS_prompt_file);
  if (prompt.empty() == prompt_file.empty()) {
    return absl::InvalidArgumentError("expected exactly one of --prompt and --prompt-file");
  }
  if (!prompt.empty()) {
    absl::StatusOr<std::vector<int>> ids = gquant::gemma4::ParsePromptIds(prompt);
    if (!ids.ok()) return gquant::Annotate(ids.status(), "--prompt");
    return std::vector<std::vector<int>>{*std::move(ids)};
  }
  return gquant::gemma4::ReadPromptFile(prompt_file);
}

// Applies --bos with the model's BOS id (from its config, read before the
// slow load).
absl::Status AddBos(const std::string& path, std::vector<std::vector<int>>& prompts) {
  const std::string bos = absl::GetFlag(FLAGS_bos);
  if (bos != "auto" && bos != "always" && bos != "never") {
    return absl::InvalidArgumentError(
        absl::StrFormat("--bos: expected auto, always or never, but got '%s'", bos));
  }
  if (bos == "never") return absl::OkStatus();
  GQ_ASSIGN_OR_RETURN(const std::unique_ptr<gquant::gemma4::WeightSource> source,
                      gquant::gemma4::OpenWeightSource(path));
  const std::optional<int> id = source->config().text.bos_token_id;
  if (!id.has_value()) {
    if (bos == "always")
      return absl::InvalidArgumentError("--bos=always: the config has no BOS id");
    return absl::OkStatus();
  }
  for (std::vector<int>& ids : prompts) {
    if (bos == "always" || ids.empty() || ids.front() != *id) ids.insert(ids.begin(), *id);
  }
  return absl::OkStatus();
}

absl::Status Run(const std::string& path) {
  GQ_ASSIGN_OR_RETURN(std::vector<std::vector<int>> prompts, ReadPrompts());
  if (absl::GetFlag(FLAGS_max_new_tokens) < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("--max-new-tokens: expected >= 1, but got %d",
                                                      absl::GetFlag(FLAGS_max_new_tokens)));
  }
  if (absl::GetFlag(FLAGS_chunk) < 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--chunk: expected >= 1 (or 0 for the default), but got %d", absl::GetFlag(FLAGS_chunk)));
  }
  const gquant::SamplerConfig sampler_config{absl::GetFlag(FLAGS_temperature),
                                             absl::GetFlag(FLAGS_top_k), absl::GetFlag(FLAGS_top_p),
                                             absl::GetFlag(FLAGS_seed)};
  // Config errors come before the (slow) model load.
  GQ_RETURN_IF_ERROR(sampler_config.Validate());
  const std::string device = absl::GetFlag(FLAGS_device);
  if (device != "cpu" && device != "cuda") {
    return absl::InvalidArgumentError(
        absl::StrFormat("--device: expected cpu or cuda, but got '%s'", device));
  }
  if (device == "cpu" && !absl::GetFlag(FLAGS_recipe).empty()) {
    return absl::InvalidArgumentError(
        "--recipe quantizes on load for --device=cuda; for the CPU, quantize the checkpoint with "
        "gquant-quantize first");
  }
  GQ_RETURN_IF_ERROR(AddBos(path, prompts));
  if (device == "cpu") return RunOnCpu(path, prompts, sampler_config);
#if GQUANT_HAS_CUDA
  return RunOnCuda(path, prompts, sampler_config);
#else
  return absl::UnimplementedError("--device=cuda: this build has no CUDA backend");
#endif
}

}  // namespace

int main(int argc, char** argv) {
  gquant::tools::DashesToUnderscoresInFlagNames(argc, argv);
  absl::SetProgramUsageMessage(
      "gquant-generate MODEL_PATH --prompt=\"2 45 99\" | --prompt-file=FILE [--device=cpu|cuda] "
      "[--recipe=R] [--bos=auto|always|never] [--max-new-tokens=N] [--temperature=T] [--top-k=K] "
      "[--top-p=P] [--seed=S] [--chunk=N] [--threads=N] [--no-graph] [--image=FILE[,FILE]] "
      "[--image-tokens=N]");
  const std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() != 2) {
    std::fprintf(stderr, "usage: %s\n", absl::ProgramUsageMessage().data());
    return 2;
  }
  if (const absl::Status status = Run(args[1]); !status.ok()) {
    std::fprintf(stderr, "gquant-generate: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
