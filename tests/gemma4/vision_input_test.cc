// Gemma 4 image preprocessing against HF's Gemma4ImageProcessor: the sizing
// rule on HF's own size table, the full PNG -> patches path on the fixtures
// (one downscale, one upscale), the patch layout, and VisionInputFromPatches.
#include "gquant/gemma4/vision_input.h"

#include <algorithm>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "golden_util.h"
#include "gquant/gemma4/config.h"
#include "gquant/image.h"
#include "test_util.h"

namespace gquant::gemma4 {
namespace {

using testing::MakeRng;

// What HF computes for a uint8 pixel v: `uint8_tensor * (1 / 255)` in
// float32, the scalar rounded to float first.
float HfRescaled(uint8_t v) { return static_cast<float>(v) * static_cast<float>(1.0 / 255.0); }

VisionConfig DefaultVision() { return VisionConfig{}; }  // patch 16, pooling 3

VisionConfig FixtureVision(const std::string& name) {
  auto config = LoadConfig(testing::FixtureDir(name) + "/f32");
  REQUIRE_OK(config);
  REQUIRE(config->vision.has_value());
  return *config->vision;
}

RgbImage RandomImage(std::mt19937_64& rng, int height, int width) {
  std::uniform_int_distribution<int> byte(0, 255);
  RgbImage image{height, width, std::vector<uint8_t>(size_t{3} * height * width)};
  for (auto& v : image.pixels) v = static_cast<uint8_t>(byte(rng));
  return image;
}

TEST_CASE("AspectRatioPreservingSize matches HF's get_aspect_ratio_preserving_size",
          "[vision_input]") {
  for (const char* name : {"tiny-31b-vision", "tiny-e2b-vision"}) {
    CAPTURE(name);
    auto golden = SafetensorsFile::Open(testing::FixtureDir(name) + "/golden.safetensors");
    REQUIRE_OK(golden);
    const auto cases = nlohmann::json::parse(golden->metadata().at("size_cases"));
    REQUIRE(cases.size() >= 10);
    for (const auto& row : cases) {
      const int height = row[0], width = row[1], tokens = row[2];
      const int want_height = row[3], want_width = row[4];
      CAPTURE(height, width, tokens);
      auto size = AspectRatioPreservingSize(height, width, 16, tokens * 9, 3);
      if (want_height == -1) {
        REQUIRE_STATUS_IS(size, absl::StatusCode::kInvalidArgument);
      } else {
        REQUIRE_OK(size);
        CHECK(size->height == want_height);
        CHECK(size->width == want_width);
      }
    }
  }
  // Spec §5.1's example: 672 x 960 at 280 tokens is already 42 x 60 patches.
  auto spec = AspectRatioPreservingSize(672, 960, 16, 280 * 9, 3);
  REQUIRE_OK(spec);
  CHECK(spec->height == 672);
  CHECK(spec->width == 960);
  CHECK((672 / 16) * (960 / 16) / 9 == 280);
}

TEST_CASE("AspectRatioPreservingSize refuses what HF refuses", "[vision_input]") {
  // 100 x 100 within 8 patches: both sides round down to 0 multiples of 48.
  auto zero = AspectRatioPreservingSize(100, 100, 16, 8, 3);
  REQUIRE_STATUS_IS(zero, absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(zero.status().message()), Catch::Matchers::Contains("0 x 0"));
  // One side rounding to 0 takes the 48-pixel minimum (HF's edge case).
  auto thin = AspectRatioPreservingSize(5, 4000, 16, 70 * 9, 3);
  REQUIRE_OK(thin);
  CHECK(thin->height == 48);
  CHECK(thin->width == 3360);
  for (auto [h, w, p, m, k] : {std::tuple{0, 10, 16, 630, 3}, std::tuple{10, -1, 16, 630, 3},
                               std::tuple{10, 10, 0, 630, 3}, std::tuple{10, 10, 16, 0, 3},
                               std::tuple{10, 10, 16, 630, 0}}) {
    CAPTURE(h, w, p, m, k);
    REQUIRE_STATUS_IS(AspectRatioPreservingSize(h, w, p, m, k), absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("PreprocessImage reproduces HF's pixel_values and positions from the PNGs",
          "[vision_input]") {
  // tiny-31b-vision: 360 x 540 shrunk to 288 x 480; tiny-e2b-vision: 100 x
  // 150 enlarged to 288 x 480. Both at 70 soft tokens (630 patches).
  for (const char* name : {"tiny-31b-vision", "tiny-e2b-vision"}) {
    CAPTURE(name);
    const std::string dir = testing::FixtureDir(name);
    auto golden = SafetensorsFile::Open(dir + "/golden.safetensors");
    REQUIRE_OK(golden);
    const std::vector<uint8_t> want_pixels = testing::ReadBytes(*golden, "pixel_values_u8");
    const std::vector<int> want_positions = testing::ReadIds(*golden, "image_position_ids");
    const int want_tokens = std::stoi(golden->metadata().at("num_soft_tokens"));

    auto image = ReadImageFile(dir + "/image.png");
    REQUIRE_OK(image);
    auto input = PreprocessImage(*image, FixtureVision(name), 70);
    REQUIRE_OK(input);
    CHECK(input->grid_height == 18);
    CHECK(input->grid_width == 30);
    CHECK(input->num_patches == 540);
    CHECK(input->max_patches == 630);
    CHECK(input->num_soft_tokens == want_tokens);
    REQUIRE(input->pixel_values.size() == want_pixels.size());
    REQUIRE(input->positions.size() == want_positions.size());

    // The resize is torch's integer (fixed-point) algorithm, so every byte
    // and every float must match exactly.
    int64_t differing = 0, worst = 0;
    for (size_t i = 0; i < want_pixels.size(); ++i) {
      const float want = HfRescaled(want_pixels[i]);
      if (input->pixel_values[i] != want) {
        ++differing;
        worst = std::max<int64_t>(
            worst, std::llabs(std::llround(input->pixel_values[i] * 255.0) - want_pixels[i]));
      }
    }
    CAPTURE(differing, worst);
    CHECK(differing == 0);
    int64_t wrong_positions = 0;
    for (size_t i = 0; i < want_positions.size(); ++i) {
      wrong_positions += input->positions[i] != want_positions[i];
    }
    CHECK(wrong_positions == 0);
  }
}

TEST_CASE("PreprocessImage patchifies an image already at its target size", "[vision_input]") {
  auto rng = MakeRng();
  // 288 x 480 within 630 patches stays 288 x 480 (18 x 30 patches).
  const RgbImage image = RandomImage(rng, 288, 480);
  auto input = PreprocessImage(image, DefaultVision(), 70);
  REQUIRE_OK(input);
  REQUIRE(input->grid_height == 18);
  REQUIRE(input->grid_width == 30);
  REQUIRE(input->num_soft_tokens == 60);
  REQUIRE(input->pixel_values.size() == size_t{630} * 768);
  REQUIRE(input->positions.size() == size_t{630} * 2);
  int64_t wrong = 0;
  for (int64_t p = 0; p < 630; ++p) {
    const bool real = p < 540;
    const int x = input->positions[2 * p], y = input->positions[2 * p + 1];
    CHECK(x == (real ? p % 30 : -1));
    CHECK(y == (real ? p / 30 : -1));
    for (int k = 0; k < 768; ++k) {
      // Element k of a patch is (py, px, c) with c fastest.
      const int py = k / 48, px = (k / 3) % 16, c = k % 3;
      const float want =
          real ? HfRescaled(image.pixels[((y * 16 + py) * 480 + x * 16 + px) * 3 + c]) : 0.0f;
      wrong += input->pixel_values[p * 768 + k] != want;
    }
  }
  CHECK(wrong == 0);
}

TEST_CASE("PreprocessImage resizes with ResizeBicubicAntialias to HF's size", "[vision_input]") {
  auto rng = MakeRng();
  std::uniform_int_distribution<int> side(1, 400);
  for (int tokens : {70, 140, 280, 560, 1120}) {
    const RgbImage image = RandomImage(rng, side(rng), side(rng));
    CAPTURE(tokens, image.height, image.width);
    auto size = AspectRatioPreservingSize(image.height, image.width, 16, tokens * 9, 3);
    REQUIRE_OK(size);
    auto resized = ResizeBicubicAntialias(image, size->height, size->width);
    REQUIRE_OK(resized);
    auto input = PreprocessImage(image, DefaultVision(), tokens);
    REQUIRE_OK(input);
    REQUIRE(input->grid_height == size->height / 16);
    REQUIRE(input->grid_width == size->width / 16);
    CHECK(input->num_soft_tokens == input->num_patches / 9);
    CHECK(input->num_soft_tokens <= tokens);
    CHECK(input->max_patches == tokens * 9);
    int64_t wrong = 0;
    for (int64_t p = 0; p < input->num_patches; ++p) {
      const int x = input->positions[2 * p], y = input->positions[2 * p + 1];
      for (int k = 0; k < 768; ++k) {
        const int py = k / 48, px = (k / 3) % 16, c = k % 3;
        const size_t at =
            ((size_t{static_cast<size_t>(y)} * 16 + py) * size->width + x * 16 + px) * 3 + c;
        wrong += input->pixel_values[p * 768 + k] != HfRescaled(resized->pixels[at]);
      }
    }
    CHECK(wrong == 0);
  }
}

TEST_CASE("PreprocessImage rejects bad arguments", "[vision_input]") {
  auto rng = MakeRng();
  const RgbImage image = RandomImage(rng, 30, 40);
  auto tokens = PreprocessImage(image, DefaultVision(), 100);
  REQUIRE_STATUS_IS(tokens, absl::StatusCode::kInvalidArgument);
  CHECK_THAT(std::string(tokens.status().message()), Catch::Matchers::Contains("100"));
  REQUIRE_STATUS_IS(PreprocessImage(RgbImage{}, DefaultVision(), 70),
                    absl::StatusCode::kInvalidArgument);
  RgbImage torn = image;
  torn.pixels.resize(10);
  REQUIRE_STATUS_IS(PreprocessImage(torn, DefaultVision(), 70), absl::StatusCode::kInvalidArgument);
  VisionConfig no_patch;
  no_patch.patch_size = 0;
  REQUIRE_STATUS_IS(PreprocessImage(image, no_patch, 70), absl::StatusCode::kInvalidArgument);
}

// The golden arrays as VisionInputFromPatches takes them.
struct GoldenPatches {
  std::vector<float> pixel_values;
  std::vector<int32_t> positions;
};

GoldenPatches ReadGoldenPatches(const std::string& name) {
  auto golden = SafetensorsFile::Open(testing::FixtureDir(name) + "/golden.safetensors");
  REQUIRE_OK(golden);
  GoldenPatches out;
  for (uint8_t v : testing::ReadBytes(*golden, "pixel_values_u8")) {
    out.pixel_values.push_back(HfRescaled(v));
  }
  for (int v : testing::ReadIds(*golden, "image_position_ids")) out.positions.push_back(v);
  return out;
}

TEST_CASE("VisionInputFromPatches accepts HF's arrays and fills the grid", "[vision_input]") {
  const VisionConfig config = FixtureVision("tiny-e2b-vision");
  const GoldenPatches golden = ReadGoldenPatches("tiny-e2b-vision");
  auto input = VisionInputFromPatches(golden.pixel_values, golden.positions, config);
  REQUIRE_OK(input);
  CHECK(input->patch_size == 16);
  CHECK(input->pooling_kernel_size == 3);
  CHECK(input->grid_height == 18);
  CHECK(input->grid_width == 30);
  CHECK(input->num_patches == 540);
  CHECK(input->max_patches == 630);
  CHECK(input->num_soft_tokens == 60);
  CHECK(input->pixel_values == golden.pixel_values);
  CHECK(input->positions == golden.positions);

  // And PreprocessImage's output round-trips, with no padding at all
  // (672 x 960 at 280 tokens fills the budget exactly).
  auto rng = MakeRng();
  auto full = PreprocessImage(RandomImage(rng, 672, 960), DefaultVision(), 280);
  REQUIRE_OK(full);
  REQUIRE(full->num_patches == full->max_patches);
  auto again = VisionInputFromPatches(full->pixel_values, full->positions, DefaultVision());
  REQUIRE_OK(again);
  CHECK(again->grid_height == 42);
  CHECK(again->grid_width == 60);
  CHECK(again->num_soft_tokens == 280);
}

TEST_CASE("VisionInputFromPatches rejects malformed patch lists", "[vision_input]") {
  const VisionConfig config = DefaultVision();
  const GoldenPatches golden = ReadGoldenPatches("tiny-31b-vision");
  auto expect_error = [&](std::vector<float> pixels, std::vector<int32_t> positions,
                          const std::string& substring) {
    auto input = VisionInputFromPatches(std::move(pixels), std::move(positions), config);
    REQUIRE_STATUS_IS(input, absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(input.status().message()), Catch::Matchers::Contains(substring));
  };

  SECTION("shapes") {
    auto odd = golden.positions;
    odd.pop_back();
    expect_error(golden.pixel_values, odd, "[P, 2]");
    expect_error({}, {}, "[P, 2]");
    auto short_pixels = golden.pixel_values;
    short_pixels.resize(short_pixels.size() - 1);
    expect_error(short_pixels, golden.positions, "pixel_values");
    auto wide = golden.pixel_values;
    wide.resize(630 * 769);
    expect_error(wide, golden.positions, "pixel_values");
  }
  SECTION("a patch count that is not a multiple of 9") {
    auto pixels = golden.pixel_values;
    auto positions = golden.positions;
    pixels.resize(629 * 768);
    positions.resize(629 * 2);
    expect_error(pixels, positions, "multiple of");
  }
  SECTION("positions out of row-major order") {
    auto swapped = golden.positions;
    std::swap(swapped[2 * 31], swapped[2 * 32]);  // x of two patches on row 1
    expect_error(golden.pixel_values, swapped, "expected patch 31");
    auto transposed = golden.positions;  // (row, column) instead of (x, y)
    for (size_t p = 0; p < 540; ++p) std::swap(transposed[2 * p], transposed[2 * p + 1]);
    expect_error(golden.pixel_values, transposed, "grid");
  }
  SECTION("padding before real patches") {
    auto early = golden.positions;
    early[2 * 100] = early[2 * 100 + 1] = -1;
    expect_error(golden.pixel_values, early, "follows padding");
    auto late = golden.positions;  // a real-looking patch after the padding
    late[2 * 600] = 0;
    late[2 * 600 + 1] = 18;
    expect_error(golden.pixel_values, late, "follows padding");
    auto all_padding = golden.positions;
    std::fill(all_padding.begin(), all_padding.end(), -1);
    expect_error(golden.pixel_values, all_padding, "every patch is padding");
  }
  SECTION("a grid that is not whole pooling windows") {
    // 2 x 9 real patches (height 2 is not a multiple of 3), padded to 27.
    std::vector<int32_t> positions(27 * 2, -1);
    for (int p = 0; p < 18; ++p) {
      positions[2 * p] = p % 9;
      positions[2 * p + 1] = p / 9;
    }
    std::vector<float> pixels(27 * 768, 0.5f);
    expect_error(pixels, positions, "pooling windows");
    // 3 x 4: width 4 is not a multiple of 3.
    std::vector<int32_t> narrow(18 * 2, -1);
    for (int p = 0; p < 12; ++p) {
      narrow[2 * p] = p % 4;
      narrow[2 * p + 1] = p / 4;
    }
    expect_error(std::vector<float>(18 * 768, 0.5f), narrow, "pooling windows");
  }
  SECTION("a bad config") {
    VisionConfig bad = config;
    bad.pooling_kernel_size = 0;
    auto input = VisionInputFromPatches(golden.pixel_values, golden.positions, bad);
    REQUIRE_STATUS_IS(input, absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("CheckVisionInput returns the real patches and refuses what a tower cannot index",
          "[vision_input]") {
  const VisionConfig config = FixtureVision("tiny-e2b-vision");  // position table 64
  const GoldenPatches golden = ReadGoldenPatches("tiny-e2b-vision");
  auto input = VisionInputFromPatches(golden.pixel_values, golden.positions, config);
  REQUIRE_OK(input);
  auto real = CheckVisionInput(*input, config);
  REQUIRE_OK(real);
  REQUIRE(real->size() == 540);  // of 630 rows: HF's 18 x 30 grid, then padding
  for (int64_t i = 0; i < 540; ++i) REQUIRE((*real)[i] == i);

  auto expect_error = [&](const VisionInput& bad, const std::string& substring) {
    auto checked = CheckVisionInput(bad, config);
    REQUIRE_STATUS_IS(checked, absl::StatusCode::kInvalidArgument);
    CHECK_THAT(std::string(checked.status().message()), Catch::Matchers::Contains(substring));
  };
  VisionInput bad = *input;
  bad.patch_size = 14;
  expect_error(bad, "patch_size");
  bad = *input;
  bad.pixel_values.pop_back();
  expect_error(bad, "pixel_values");
  bad = *input;
  bad.positions[2 * 7] = 64;  // x outside the position table
  expect_error(bad, "position_embedding_size");
  bad = *input;
  bad.positions[2 * 7 + 1] = 63;  // inside the table, but pooling window 7 / 3 + 10 * 21 >= 70
  expect_error(bad, "pooling window");
  bad = *input;
  std::fill(bad.positions.begin(), bad.positions.end(), -1);
  expect_error(bad, "no real patches");
}

}  // namespace
}  // namespace gquant::gemma4
