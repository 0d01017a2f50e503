// Gemma 4 image preprocessing (spec gemma4.md §5.1; HF Gemma4ImageProcessor):
// the aspect-ratio preserving resize to a multiple of pooling * patch pixels
// within the patch budget, rescale to [0, 1], patchify in (py, px, c) order,
// and pad to the budget with zero pixels at position (-1, -1).
#ifndef GQUANT_GEMMA4_VISION_INPUT_H_
#define GQUANT_GEMMA4_VISION_INPUT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/config.h"
#include "gquant/image.h"

namespace gquant::gemma4 {

// One preprocessed image, as the vision tower takes it.
struct VisionInput {
  int patch_size = 16;
  int pooling_kernel_size = 3;
  int grid_height = 0;      // patches per column of the resized image
  int grid_width = 0;       // patches per row
  int64_t num_patches = 0;  // grid_height * grid_width: the real patches
  int64_t max_patches = 0;  // rows after padding: max_soft_tokens * pooling^2
  int num_soft_tokens = 0;  // num_patches / pooling^2: placeholder tokens in the prompt
  // [max_patches, 3 * patch^2]: patch p = (row p / grid_width, column p %
  // grid_width), each (py, px, c) with c fastest, values (8-bit pixel) / 255
  // computed as HF does, float(v) * float(1.0 / 255) (torch's uint8 tensor *
  // 1/255; within one ulp of v / 255.0f, and different from it for 126 of
  // the 256 values); padding rows are 0.
  std::vector<float> pixel_values;
  // [max_patches, 2]: (x, y) = (column, row) of each patch; (-1, -1) pads.
  std::vector<int32_t> positions;
};

struct ImageSize {
  int height = 0;
  int width = 0;
};

// HF's get_aspect_ratio_preserving_size: the largest multiples of
// pooling_kernel_size * patch_size that keep the aspect ratio within
// max_patches patches, with its rules for a side rounding to 0.
// InvalidArgument for non-positive arguments or when HF would refuse (both
// sides round to 0, or the result exceeds the budget).
absl::StatusOr<ImageSize> AspectRatioPreservingSize(int height, int width, int patch_size,
                                                    int max_patches, int pooling_kernel_size);

// Resizes `image` (ResizeBicubicAntialias; untouched when already the target
// size), rescales, patchifies and pads as HF's processor does, with
// max_soft_tokens in {70, 140, 280, 560, 1120} (InvalidArgument otherwise).
absl::StatusOr<VisionInput> PreprocessImage(const RgbImage& image, const VisionConfig& config,
                                            int max_soft_tokens);

// A VisionInput from pixel values and positions prepared elsewhere (HF's
// processor output, tests): checks the shapes ([P, 3 * patch^2], [P, 2]),
// that P is a multiple of pooling^2, that real patches come first and form a
// full grid of whole pooling windows in row-major order, and fills the
// derived fields. InvalidArgument naming the first problem.
absl::StatusOr<VisionInput> VisionInputFromPatches(std::vector<float> pixel_values,
                                                   std::vector<int32_t> positions,
                                                   const VisionConfig& config);

// Whether `input` is what HF's processor could produce for `config`, so that
// a vision tower indexes nothing out of range: patch size and pooling as
// configured, max_patches a positive multiple of pooling^2, pixel values
// [max_patches, 3 * patch^2] and positions [max_patches, 2], each position
// (-1, -1) (padding) or inside the position table, at least one real patch,
// and every real patch in a pooling window below max_patches / pooling^2.
// Returns the real patches' indices; InvalidArgument naming the first
// problem.
absl::StatusOr<std::vector<int64_t>> CheckVisionInput(const VisionInput& input,
                                                      const VisionConfig& config);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_VISION_INPUT_H_
