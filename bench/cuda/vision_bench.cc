// Vision encode time of the GPU vision tower and embedder (cuda/gpu_vision.cuh)
// on Gemma 4 shaped towers with random weights (gemma4/random_weight_source.h):
// the 31B's (27 layers, hidden 1152, MLP 4304, 16 heads of 72, standardize)
// and E2B/E4B's (16 layers, hidden 768, MLP 3072, 12 heads of 64, clipped
// linears), each with the embedder to the text width.
//
// BM_VisionEncode/model/int8/tokens: one image of `tokens` soft tokens (280:
// a 672 x 960 image, 42 x 60 patches, no padding; 1120: 1344 x 1920, 84 x
// 120 patches), from upload to the embedder's output on the device
// (GpuVisionModel::EnqueueEncode, CUDA events). int8: the linears int8 per
// row (the bundled recipes), else bf16. Counters: ms_per_image; images_per_s;
// cublas_ms = the summed time of cuBLAS bf16 GEMMs at M = patches for every
// linear of the tower and the embedder, in the same run (the linears-only
// estimate; attention, norms and the pooler not counted); of_cublas =
// cublas_ms / ms_per_image.
#include <map>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda_bench_util.h"
#include "gpu_vision.cuh"
#include "gquant/gemma4/random_weight_source.h"
#include "gquant/gemma4/vision_input.h"

namespace gquant::cuda {
namespace {

using namespace bench;

constexpr const char* kModels[] = {"31b", "e2b"};

// One tower at a time stays loaded.
GpuVisionModel& ModelFor(int index, bool quantized) {
  static int loaded = -1;
  static std::unique_ptr<GpuVisionModel> model;
  const int key = 2 * index + (quantized ? 1 : 0);
  if (loaded != key) {
    model.reset();
    absl::StatusOr<gemma4::Config> config = gemma4::ReleasedModelConfig(kModels[index]);
    absl::StatusOr<gemma4::VisionConfig> vision = gemma4::ReleasedVisionConfig(kModels[index]);
    if (!config.ok() || !vision.ok()) std::abort();
    config->vision = *vision;
    auto source = gemma4::MakeRandomWeightSource(*config, {.seed = 3, .quantized = quantized});
    if (!source.ok()) std::abort();
    absl::StatusOr<std::unique_ptr<GpuVisionModel>> made = GpuVisionModel::Load(**source, {});
    if (!made.ok()) {
      std::fprintf(stderr, "loading %s vision: %s\n", kModels[index],
                   made.status().ToString().c_str());
      std::abort();
    }
    model = *std::move(made);
    loaded = key;
    std::fprintf(stderr, "%s vision (%s): %.3f GB of weights\n", kModels[index],
                 quantized ? "int8" : "bf16", model->weight_bytes() / 1e9);
  }
  return *model;
}

// A random image already at its target size: `tokens` soft tokens as a
// grid of (rows x cols) pooling windows.
gemma4::VisionInput RandomImage(const gemma4::VisionConfig& c, int window_rows, int window_cols,
                                int max_soft_tokens) {
  const int k = c.pooling_kernel_size;
  gquant::RgbImage image;
  image.height = window_rows * k * c.patch_size;
  image.width = window_cols * k * c.patch_size;
  image.pixels.resize(static_cast<size_t>(image.height) * image.width * 3);
  std::mt19937_64 rng(5);
  for (uint8_t& p : image.pixels) p = static_cast<uint8_t>(rng());
  absl::StatusOr<gemma4::VisionInput> input = gemma4::PreprocessImage(image, c, max_soft_tokens);
  if (!input.ok()) {
    std::fprintf(stderr, "%s\n", input.status().ToString().c_str());
    std::abort();
  }
  return *std::move(input);
}

// Seconds of cuBLAS bf16 for the tower's and the embedder's linears at
// M = patches.
double CublasVisionSeconds(const gemma4::VisionConfig& c, int64_t text_hidden, int patches) {
  const int64_t h = c.hidden_size, m = c.intermediate_size;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim;
  const int64_t kv = int64_t{c.num_key_value_heads} * c.head_dim;
  const int layers = c.num_hidden_layers;
  std::map<std::pair<int64_t, int64_t>, int> shapes;
  shapes[{q, h}] += layers;
  shapes[{kv, h}] += 2 * layers;
  shapes[{h, q}] += layers;
  shapes[{m, h}] += 2 * layers;
  shapes[{h, m}] += layers;
  shapes[{h, 3 * int64_t{c.patch_size} * c.patch_size}] += 1;
  const double tower = CublasBf16Seconds(shapes, patches);
  const int soft = patches / (c.pooling_kernel_size * c.pooling_kernel_size);
  return tower + CublasBf16Seconds({{{text_hidden, h}, 1}}, soft);
}

void BM_VisionEncode(benchmark::State& state) {
  if (NoGpu(state)) return;
  const int index = static_cast<int>(state.range(0));
  const bool quantized = state.range(1) == 1;
  const int tokens = static_cast<int>(state.range(2));
  GpuVisionModel& model = ModelFor(index, quantized);
  const gemma4::VisionConfig& c = model.config();
  // 280 tokens: 14 x 20 windows (672 x 960 pixels); 1120: 28 x 40.
  const int rows = tokens == 1120 ? 28 : 14, cols = tokens == 1120 ? 40 : 20;
  const gemma4::VisionInput input = RandomImage(c, rows, cols, tokens);
  EventTimer timer;
  auto encode = [&] {
    if (const absl::Status status = model.EnqueueEncode(input); !status.ok()) {
      std::fprintf(stderr, "%s\n", status.ToString().c_str());
      std::abort();
    }
  };
  timer.Milliseconds(model.stream(), encode);  // warm-up (buffers, cuBLAS plans)
  double seconds = 0;
  for (auto _ : state) {
    const float ms = timer.Milliseconds(model.stream(), encode);
    state.SetIterationTime(ms / 1e3);
    seconds += ms / 1e3;
  }
  absl::StatusOr<gemma4::Config> config = gemma4::ReleasedModelConfig(kModels[index]);
  const double per_image = seconds / state.iterations();
  const double cublas =
      CublasVisionSeconds(c, config->text.hidden_size, static_cast<int>(input.max_patches));
  state.counters["ms_per_image"] = per_image * 1e3;
  state.counters["images_per_s"] = 1.0 / per_image;
  state.counters["cublas_ms"] = cublas * 1e3;
  state.counters["of_cublas"] = cublas / per_image;
}

const bool kRegistered = [] {
  for (int model = 0; model < static_cast<int>(std::size(kModels)); ++model) {
    for (int quantized : {1, 0}) {
      for (int tokens : {280, 1120}) {
        benchmark::RegisterBenchmark("BM_VisionEncode", BM_VisionEncode)
            ->Args({model, quantized, tokens})
            ->ArgNames({"model", "int8", "tokens"})
            ->UseManualTime()
            ->Iterations(5)
            ->Unit(benchmark::kMillisecond);
      }
    }
  }
  return true;
}();

}  // namespace
}  // namespace gquant::cuda
