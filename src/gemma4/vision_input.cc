// Gemma 4 image preprocessing, following HF's Gemma4ImageProcessor
// (transformers 5.17, models/gemma4/image_processing_gemma4.py) step by step.
#include "gquant/gemma4/vision_input.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "cpu_ops.h"
#include "gquant/status.h"

namespace gquant::gemma4 {
namespace {

constexpr int kSupportedSoftTokens[] = {70, 140, 280, 560, 1120};

// torch computes `uint8_image * (1 / 255)` (HF's rescale) in float32 with the
// scalar rounded to float first; this is that product, bit for bit. It is
// within one ulp of v / 255.
float RescaleByte(uint8_t v) {
  static const float kScale = static_cast<float>(1.0 / 255.0);
  return static_cast<float>(v) * kScale;
}

absl::Status CheckVisionConfig(const VisionConfig& config) {
  if (config.patch_size <= 0 || config.pooling_kernel_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vision config: expected positive patch_size and pooling_kernel_size, but got ",
        config.patch_size, " and ", config.pooling_kernel_size));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ImageSize> AspectRatioPreservingSize(int height, int width, int patch_size,
                                                    int max_patches, int pooling_kernel_size) {
  if (height <= 0 || width <= 0 || patch_size <= 0 || max_patches <= 0 ||
      pooling_kernel_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("AspectRatioPreservingSize: expected positive arguments, but got height ",
                     height, ", width ", width, ", patch_size ", patch_size, ", max_patches ",
                     max_patches, ", pooling_kernel_size ", pooling_kernel_size));
  }
  // get_aspect_ratio_preserving_size in Python's double arithmetic: int / int
  // is one correctly rounded division (exact operands: both are < 2^53).
  const int64_t total_px = int64_t{height} * width;
  const int64_t target_px = int64_t{max_patches} * patch_size * patch_size;
  const double factor = std::sqrt(static_cast<double>(target_px) / static_cast<double>(total_px));
  const double ideal_height = factor * height;
  const double ideal_width = factor * width;
  const int64_t side_mult = int64_t{pooling_kernel_size} * patch_size;

  int64_t target_height =
      static_cast<int64_t>(std::floor(ideal_height / static_cast<double>(side_mult))) * side_mult;
  int64_t target_width =
      static_cast<int64_t>(std::floor(ideal_width / static_cast<double>(side_mult))) * side_mult;
  if (target_height == 0 && target_width == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AspectRatioPreservingSize: a ", height, " x ", width, " image within ", max_patches,
        " patches rounds to 0 x 0 (sides must be multiples of ", side_mult, ")"));
  }
  const int64_t max_side_length =
      (max_patches / (int64_t{pooling_kernel_size} * pooling_kernel_size)) * side_mult;
  if (target_height == 0) {
    target_height = side_mult;
    target_width =
        std::min(static_cast<int64_t>(std::floor(static_cast<double>(width) / height)) * side_mult,
                 max_side_length);
  } else if (target_width == 0) {
    target_width = side_mult;
    target_height =
        std::min(static_cast<int64_t>(std::floor(static_cast<double>(height) / width)) * side_mult,
                 max_side_length);
  }
  if (target_height * target_width > target_px) {
    return absl::InvalidArgumentError(absl::StrCat(
        "AspectRatioPreservingSize: resizing ", height, " x ", width, " to ", target_height, " x ",
        target_width, " exceeds ", max_patches, " patches of ", patch_size, " pixels"));
  }
  if (target_height > INT32_MAX || target_width > INT32_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("AspectRatioPreservingSize: ", target_height,
                                                   " x ", target_width, " does not fit int"));
  }
  return ImageSize{static_cast<int>(target_height), static_cast<int>(target_width)};
}

absl::StatusOr<VisionInput> PreprocessImage(const RgbImage& image, const VisionConfig& config,
                                            int max_soft_tokens) {
  GQ_RETURN_IF_ERROR(CheckVisionConfig(config));
  if (std::find(std::begin(kSupportedSoftTokens), std::end(kSupportedSoftTokens),
                max_soft_tokens) == std::end(kSupportedSoftTokens)) {
    return absl::InvalidArgumentError(
        absl::StrCat("PreprocessImage: expected max_soft_tokens in {70, 140, 280, 560, 1120}, but "
                     "got ",
                     max_soft_tokens));
  }
  if (image.height <= 0 || image.width <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.height) * image.width * 3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "PreprocessImage: expected a non-empty image with height * width * 3 bytes, but got ",
        image.height, " x ", image.width, " with ", image.pixels.size(), " bytes"));
  }
  const int patch = config.patch_size;
  const int pooling = config.pooling_kernel_size;
  const int64_t max_patches = int64_t{max_soft_tokens} * pooling * pooling;
  GQ_ASSIGN_OR_RETURN(ImageSize size,
                      AspectRatioPreservingSize(image.height, image.width, patch,
                                                static_cast<int>(max_patches), pooling));

  RgbImage resized_storage;
  const RgbImage* resized = &image;
  if (size.height != image.height || size.width != image.width) {
    GQ_ASSIGN_OR_RETURN(resized_storage, ResizeBicubicAntialias(image, size.height, size.width));
    resized = &resized_storage;
  }

  VisionInput input;
  input.patch_size = patch;
  input.pooling_kernel_size = pooling;
  input.grid_height = size.height / patch;
  input.grid_width = size.width / patch;
  input.num_patches = int64_t{input.grid_height} * input.grid_width;
  input.max_patches = max_patches;
  input.num_soft_tokens = static_cast<int>(input.num_patches / (pooling * pooling));
  const int64_t patch_values = int64_t{3} * patch * patch;
  input.pixel_values.assign(max_patches * patch_values, 0.0f);
  input.positions.assign(max_patches * 2, -1);

  // convert_image_to_patches: [3, h, w] -> [gh * gw, (py, px, c)], i.e. each
  // patch row copies patch * 3 consecutive interleaved bytes of the image.
  const int64_t image_row = int64_t{size.width} * 3;
  for (int gy = 0; gy < input.grid_height; ++gy) {
    for (int gx = 0; gx < input.grid_width; ++gx) {
      const int64_t p = int64_t{gy} * input.grid_width + gx;
      float* out = &input.pixel_values[p * patch_values];
      for (int py = 0; py < patch; ++py) {
        const uint8_t* row =
            &resized->pixels[(int64_t{gy} * patch + py) * image_row + int64_t{gx} * patch * 3];
        for (int i = 0; i < patch * 3; ++i) *out++ = RescaleByte(row[i]);
      }
      // meshgrid(arange(gw), arange(gh), indexing="xy"): (x, y) = (column, row).
      input.positions[2 * p] = gx;
      input.positions[2 * p + 1] = gy;
    }
  }
  return input;
}

absl::StatusOr<VisionInput> VisionInputFromPatches(std::vector<float> pixel_values,
                                                   std::vector<int32_t> positions,
                                                   const VisionConfig& config) {
  GQ_RETURN_IF_ERROR(CheckVisionConfig(config));
  const int patch = config.patch_size;
  const int64_t pooling = config.pooling_kernel_size;
  const int64_t window = pooling * pooling;
  const int64_t patch_values = int64_t{3} * patch * patch;
  if (positions.size() % 2 != 0 || positions.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VisionInputFromPatches: expected positions of shape [P, 2] with P > 0, but got ",
        positions.size(), " values"));
  }
  const int64_t rows = static_cast<int64_t>(positions.size() / 2);
  if (static_cast<int64_t>(pixel_values.size()) != rows * patch_values) {
    return absl::InvalidArgumentError(
        absl::StrCat("VisionInputFromPatches: expected pixel_values of shape [", rows, ", ",
                     patch_values, "] (", rows * patch_values, " values) to match positions [",
                     rows, ", 2], but got ", pixel_values.size(), " values"));
  }
  if (rows % window != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("VisionInputFromPatches: expected the patch count ", rows,
                     " to be a multiple of pooling_kernel_size^2 = ", window));
  }

  // Real patches: the leading rows that are not (-1, -1); all later rows pad.
  int64_t real = 0;
  while (real < rows && !(positions[2 * real] == -1 && positions[2 * real + 1] == -1)) ++real;
  for (int64_t p = real; p < rows; ++p) {
    if (positions[2 * p] != -1 || positions[2 * p + 1] != -1) {
      return absl::InvalidArgumentError(absl::StrCat("VisionInputFromPatches: patch ", p, " at (",
                                                     positions[2 * p], ", ", positions[2 * p + 1],
                                                     ") follows padding at patch ", real,
                                                     "; real patches must come first"));
    }
  }
  if (real == 0) {
    return absl::InvalidArgumentError("VisionInputFromPatches: every patch is padding (-1, -1)");
  }
  // The grid width is the run of patches on row 0; then every patch must sit
  // at (p % width, p / width).
  int64_t width = 0;
  while (width < real && positions[2 * width + 1] == 0) ++width;
  if (width == 0 || real % width != 0) {
    return absl::InvalidArgumentError(absl::StrCat("VisionInputFromPatches: ", real,
                                                   " real patches with ", width,
                                                   " on row 0 do not form a full row-major grid"));
  }
  for (int64_t p = 0; p < real; ++p) {
    const int64_t x = p % width, y = p / width;
    if (positions[2 * p] != x || positions[2 * p + 1] != y) {
      return absl::InvalidArgumentError(
          absl::StrCat("VisionInputFromPatches: expected patch ", p, " at (x, y) = (", x, ", ", y,
                       ") of a row-major ", real / width, " x ", width, " grid, but got (",
                       positions[2 * p], ", ", positions[2 * p + 1], ")"));
    }
  }
  const int64_t height = real / width;
  if (height % pooling != 0 || width % pooling != 0) {
    return absl::InvalidArgumentError(absl::StrCat("VisionInputFromPatches: the ", height, " x ",
                                                   width, " patch grid is not made of whole ",
                                                   pooling, " x ", pooling, " pooling windows"));
  }

  VisionInput input;
  input.patch_size = patch;
  input.pooling_kernel_size = static_cast<int>(pooling);
  input.grid_height = static_cast<int>(height);
  input.grid_width = static_cast<int>(width);
  input.num_patches = real;
  input.max_patches = rows;
  input.num_soft_tokens = static_cast<int>(real / window);
  input.pixel_values = std::move(pixel_values);
  input.positions = std::move(positions);
  return input;
}

absl::StatusOr<std::vector<int64_t>> CheckVisionInput(const VisionInput& input,
                                                      const VisionConfig& c) {
  auto error = [](auto&&... parts) {
    return absl::InvalidArgumentError(absl::StrCat("VisionInput: ", parts...));
  };
  if (input.patch_size != c.patch_size) {
    return error("patch_size ", input.patch_size, ", but the vision tower takes ", c.patch_size);
  }
  if (input.pooling_kernel_size != c.pooling_kernel_size) {
    return error("pooling_kernel_size ", input.pooling_kernel_size, ", but the vision tower pools ",
                 c.pooling_kernel_size);
  }
  const int64_t k2 = int64_t{c.pooling_kernel_size} * c.pooling_kernel_size;
  const int64_t p = input.max_patches;
  if (p <= 0 || p % k2 != 0) {
    return error("max_patches ", p, ": expected a positive multiple of pooling^2 = ", k2);
  }
  // Divisions, not products: a huge max_patches must not overflow.
  const int64_t row = 3 * int64_t{c.patch_size} * c.patch_size;
  if (input.pixel_values.size() % row != 0 ||
      static_cast<int64_t>(input.pixel_values.size() / row) != p) {
    return error("pixel_values: expected [max_patches = ", p, ", 3 * patch^2 = ", row,
                 "], but got ", input.pixel_values.size(), " values");
  }
  if (input.positions.size() % 2 != 0 || static_cast<int64_t>(input.positions.size() / 2) != p) {
    return error("positions: expected [max_patches = ", p, ", 2], but got ", input.positions.size(),
                 " values");
  }
  std::vector<int64_t> real;
  for (int64_t i = 0; i < p; ++i) {
    const int32_t x = input.positions[2 * i], y = input.positions[2 * i + 1];
    if (x == -1 && y == -1) continue;  // padding
    // HF would clamp a lone -1 to 0 and treat the patch as real; no
    // processor writes one, so it is refused here.
    if (x < 0 || y < 0 || x >= c.position_embedding_size || y >= c.position_embedding_size) {
      return error("patch ", i, " at position (", x, ", ", y,
                   "): expected (-1, -1) or coordinates in [0, position_embedding_size = ",
                   c.position_embedding_size, ")");
    }
    real.push_back(i);
  }
  if (real.empty()) return error("no real patches (every position is (-1, -1))");
  const int64_t length = p / k2;
  const std::vector<int64_t> windows = cpu::PoolWindows(input.positions, c.pooling_kernel_size);
  for (int64_t i = 0; i < p; ++i) {
    if (windows[i] >= length) {
      return error("patch ", i, " at (", input.positions[2 * i], ", ", input.positions[2 * i + 1],
                   ") falls in pooling window ", windows[i], ", beyond the ", length,
                   " soft tokens of ", p, " patches");
    }
  }
  return real;
}

}  // namespace gquant::gemma4
