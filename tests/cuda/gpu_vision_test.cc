// The GPU vision tower and embedder (cuda/gpu_vision.cuh) against the CPU
// reference (gemma4/cpu_vision.h) and Hugging Face's goldens: on the tiny
// vision fixtures (tests/data/tiny-{31b,e2b}-vision: standardize; clipped
// linears) and at the released towers' widths with random weights (two
// layers), float and int8 per-row weights, with and without padding patches.
//
// Error norm: ||gpu - reference|| / ||reference|| over the whole output
// (relative Frobenius norm), as the text model's GPU tests: the GPU keeps
// activations in bf16 (one rounding per stored tensor, ~15 per layer)
// against float32. Bound 2e-2 (kLogitsRelativeL2's reasoning) at the real
// widths; on the tiny fixtures, HF's own bf16 error. Measured values are
// printed.
#include "gpu_vision.cuh"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <memory>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "golden_util.h"
#include "gquant/gemma4/cpu_vision.h"
#include "gquant/gemma4/random_weight_source.h"
#include "gquant/gemma4/vision_input.h"
#include "gquant/safetensors.h"

namespace gquant::cuda {
namespace {

using gemma4::CpuVisionModel;
using gemma4::VisionInput;
using gquant::testing::FixtureDir;

constexpr double kRelativeL2 = 2e-2;

double RelativeL2(const std::vector<float>& got, const std::vector<double>& want) {
  REQUIRE(got.size() == want.size());
  double err = 0, norm = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    REQUIRE(std::isfinite(got[i]));
    err += (got[i] - want[i]) * (got[i] - want[i]);
    norm += want[i] * want[i];
  }
  return std::sqrt(err / norm);
}

std::vector<double> Widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

std::unique_ptr<GpuVisionModel> LoadGpu(const gemma4::WeightSource& source) {
  auto model = GpuVisionModel::Load(source, {});
  REQUIRE_OK(model);
  return *std::move(model);
}

TEST_CASE("GPU vision tower matches the HF goldens and the CPU", "[cuda][gpu_vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  const std::string fixture = GENERATE(as<std::string>{}, "tiny-31b-vision", "tiny-e2b-vision");
  INFO(fixture);
  auto source = gemma4::OpenWeightSource(FixtureDir(fixture) + "/f32");
  REQUIRE_OK(source);
  auto golden = SafetensorsFile::Open(FixtureDir(fixture) + "/golden.safetensors");
  REQUIRE_OK(golden);
  const std::vector<uint8_t> bytes = gquant::testing::ReadBytes(*golden, "pixel_values_u8");
  const std::vector<int> positions = gquant::testing::ReadIds(*golden, "image_position_ids");
  std::vector<float> pixels;
  for (uint8_t b : bytes) pixels.push_back(static_cast<float>(b) * static_cast<float>(1.0 / 255));
  auto input = gemma4::VisionInputFromPatches(
      std::move(pixels), {positions.begin(), positions.end()}, *(*source)->config().vision);
  REQUIRE_OK(input);

  auto gpu = LoadGpu(**source);
  auto soft = gpu->SoftTokens(*input);
  REQUIRE_OK(soft);
  auto rows = gpu->EncodeImage(*input);
  REQUIRE_OK(rows);
  const double soft_err =
      RelativeL2(*soft, gquant::testing::ReadDoubles(*golden, "vision_soft_tokens_f64"));
  const double rows_err =
      RelativeL2(*rows, gquant::testing::ReadDoubles(*golden, "image_embeddings_f64"));
  const double rows_hf_bf16 =
      RelativeL2(*rows, gquant::testing::ReadDoubles(*golden, "image_embeddings_bf16"));
  // HF's own bf16 run against float64, for scale.
  std::vector<float> hf_bf16;
  for (double v : gquant::testing::ReadDoubles(*golden, "image_embeddings_bf16")) {
    hf_bf16.push_back(static_cast<float>(v));
  }
  const double hf_err =
      RelativeL2(hf_bf16, gquant::testing::ReadDoubles(*golden, "image_embeddings_f64"));
  WARN(fixture << ": GPU vs HF float64: soft tokens " << soft_err << ", embeddings " << rows_err
               << "; GPU vs HF bf16 " << rows_hf_bf16 << "; HF bf16 vs float64 " << hf_err);
  // The tiny random towers amplify bf16 rounding more than real widths do
  // (below: 0.004-0.007): HF's own bf16 run misses float64 by 0.022 (31B
  // style) and 0.035 (E2B style, clipped). Bound: no worse than HF's bf16.
  // Measured on the H100: 0.017 and 0.023.
  CHECK(soft_err <= hf_err);
  CHECK(rows_err <= hf_err);

  // A second call reuses the buffers and gives the same bits.
  auto again = gpu->EncodeImage(*input);
  REQUIRE_OK(again);
  CHECK(*again == *rows);
}

// The released towers' widths, two layers, random weights.
gemma4::Config RealShapes(bool large) {
  auto config = gemma4::ReleasedModelConfig(large ? "31b" : "e2b");
  REQUIRE_OK(config);
  auto vision = gemma4::ReleasedVisionConfig(large ? "31b" : "e2b");
  REQUIRE_OK(vision);
  vision->num_hidden_layers = 2;
  config->vision = *vision;
  return *config;
}

VisionInput RandomImage(const gemma4::VisionConfig& c, int window_rows, int window_cols,
                        std::mt19937_64& rng) {
  RgbImage image;
  image.height = window_rows * 48;
  image.width = window_cols * 48;
  image.pixels.resize(static_cast<size_t>(image.height) * image.width * 3);
  // Smooth structure plus noise, as photos have.
  std::uniform_int_distribution<int> noise(-20, 20);
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < image.width; ++x) {
      for (int ch = 0; ch < 3; ++ch) {
        const int base = (x * (ch + 1) + y * (3 - ch)) % 256;
        image.pixels[(static_cast<size_t>(y) * image.width + x) * 3 + ch] =
            static_cast<uint8_t>(std::clamp(base + noise(rng), 0, 255));
      }
    }
  }
  auto input = gemma4::PreprocessImage(image, c, 280);
  REQUIRE_OK(input);
  return *std::move(input);
}

TEST_CASE("GPU vision tower at the released widths matches the CPU", "[cuda][gpu_vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = gquant::testing::MakeRng();
  for (const bool large : {true, false}) {
    for (const bool quantized : {true, false}) {
      const gemma4::Config config = RealShapes(large);
      auto source = gemma4::MakeRandomWeightSource(config, {.seed = 9, .quantized = quantized});
      REQUIRE_OK(source);
      auto cpu = CpuVisionModel::Create(**source, {});
      REQUIRE_OK(cpu);
      auto gpu = LoadGpu(**source);
      // 14 x 20 windows: exactly the 280 tokens; 10 x 12: resized to 15 x 18
      // windows (270 tokens), the rest of the 2520 patches padding.
      for (const auto& [rows, cols] : {std::pair{14, 20}, std::pair{10, 12}}) {
        CAPTURE(large, quantized, rows, cols);
        const VisionInput input = RandomImage(*config.vision, rows, cols, rng);
        REQUIRE(input.max_patches == 2520);
        CHECK((rows == 14 ? input.num_patches == 2520 : input.num_patches < 2520));
        auto want = (*cpu)->EncodeImage(input);
        REQUIRE_OK(want);
        auto got = gpu->EncodeImage(input);
        REQUIRE_OK(got);
        const double err = RelativeL2(*got, Widen(*want));
        WARN((large ? "31B" : "E2B")
             << (quantized ? " int8" : " bf16") << " vision, " << input.num_soft_tokens << " of "
             << input.max_patches / 9 << " soft tokens: relative L2 " << err);
        CHECK(err <= kRelativeL2);
      }
    }
  }
}

TEST_CASE("GPU vision tower: a head dim the flash kernel refuses takes the cuBLAS attention",
          "[cuda][gpu_vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  std::mt19937_64 rng = gquant::testing::MakeRng();
  gemma4::Config config = RealShapes(true);
  config.vision->num_attention_heads = config.vision->num_key_value_heads = 8;
  config.vision->head_dim = 20;  // a multiple of 4 (2-D RoPE), not of 8
  auto source = gemma4::MakeRandomWeightSource(config, {.seed = 4, .quantized = false});
  REQUIRE_OK(source);
  auto cpu = CpuVisionModel::Create(**source, {});
  REQUIRE_OK(cpu);
  auto gpu = LoadGpu(**source);
  const VisionInput input = RandomImage(*config.vision, 10, 12, rng);
  auto want = (*cpu)->EncodeImage(input);
  REQUIRE_OK(want);
  auto got = gpu->EncodeImage(input);
  REQUIRE_OK(got);
  const double err = RelativeL2(*got, Widen(*want));
  WARN("head dim 20 (cuBLAS attention): relative L2 " << err);
  CHECK(err <= kRelativeL2);
}

TEST_CASE("GPU vision tower refuses what it cannot run", "[cuda][gpu_vision]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto text_only = gemma4::OpenWeightSource(FixtureDir("tiny-31b") + "/f32");
  REQUIRE_OK(text_only);
  REQUIRE_STATUS_IS(GpuVisionModel::Load(**text_only, {}), absl::StatusCode::kFailedPrecondition);

  auto source = gemma4::OpenWeightSource(FixtureDir("tiny-31b-vision") + "/f32");
  REQUIRE_OK(source);
  auto gpu = LoadGpu(**source);
  std::mt19937_64 rng = gquant::testing::MakeRng();
  VisionInput input = RandomImage(gpu->config(), 2, 3, rng);
  VisionInput bad = input;
  bad.pixel_values.pop_back();
  REQUIRE_STATUS_IS(gpu->EncodeImage(bad), absl::StatusCode::kInvalidArgument);
  bad = input;
  bad.positions[0] = gpu->config().position_embedding_size;  // outside the table
  REQUIRE_STATUS_IS(gpu->EncodeImage(bad), absl::StatusCode::kInvalidArgument);
  bad = input;
  std::swap(bad.positions[0], bad.positions.back());  // a padding patch first
  std::swap(bad.positions[1], bad.positions[bad.positions.size() - 2]);
  REQUIRE_STATUS_IS(gpu->EncodeImage(bad), absl::StatusCode::kInvalidArgument);
  REQUIRE_OK(gpu->EncodeImage(input));  // still fine afterwards
}

}  // namespace
}  // namespace gquant::cuda
