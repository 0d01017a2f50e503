// Fuzzes DecodeImage (PNG and JPEG through libpng / libjpeg-turbo, EXIF
// orientation through gquant's own TIFF reader) with arbitrary bytes. On
// success it checks the image's shape and does what an image prompt does
// next: Gemma 4's preprocessing (resize, patchify, pad) for images small
// enough to keep an input fast, checking the patch rows it produces.
#include <algorithm>
#include <span>

#include "fuzz_util.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/vision_input.h"
#include "gquant/image.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gquant;
  const absl::StatusOr<RgbImage> image =
      DecodeImage(std::span<const uint8_t>(data, size), "fuzz-input");
  if (!image.ok()) {
    fuzz::CheckErrorNames(image.status(), "fuzz-input");
    return 0;
  }
  FUZZ_CHECK(image->height > 0 && image->width > 0);
  FUZZ_CHECK(int64_t{image->height} * image->width <= kMaxImagePixels);
  FUZZ_CHECK(image->pixels.size() == static_cast<size_t>(image->height) * image->width * 3);
  if (int64_t{image->height} * image->width > 64 * 64) return 0;  // resizes cost per pixel

  gemma4::VisionConfig config;  // patch 16, pooling 3
  const absl::StatusOr<gemma4::VisionInput> input = gemma4::PreprocessImage(*image, config, 70);
  if (!input.ok()) return 0;  // an aspect ratio HF refuses, e.g. 1 x 64
  FUZZ_CHECK(input->max_patches == 630);
  FUZZ_CHECK(input->num_patches == int64_t{input->grid_height} * input->grid_width);
  FUZZ_CHECK(input->num_patches > 0 && input->num_patches <= input->max_patches);
  FUZZ_CHECK(input->num_soft_tokens * 9 == input->num_patches);
  FUZZ_CHECK(input->pixel_values.size() == 630u * 768);
  FUZZ_CHECK(std::all_of(input->pixel_values.begin(), input->pixel_values.end(),
                         [](float v) { return v >= 0.0f && v <= 1.0f; }));
  for (int64_t p = input->num_patches; p < input->max_patches; ++p) {
    FUZZ_CHECK(input->positions[2 * p] == -1 && input->positions[2 * p + 1] == -1);
  }
  return 0;
}
