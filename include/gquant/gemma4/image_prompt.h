// Image prompts as token ids (spec gemma4.md §5.5, §5.6): the chat template
// puts one image placeholder (<|image|>, config image_token_id) where an
// image goes; the processor expands it into BOI + N placeholders + EOI, N
// being the image's soft-token count (VisionInput::num_soft_tokens).
#ifndef GQUANT_GEMMA4_IMAGE_PROMPT_H_
#define GQUANT_GEMMA4_IMAGE_PROMPT_H_

#include <cstddef>
#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/config.h"

namespace gquant::gemma4 {

// Replaces the k-th image placeholder of `prompt` by boi, soft_tokens[k]
// placeholders and eoi. InvalidArgument when the config has no image, BOI or
// EOI id, when the prompt holds a different number of placeholders than
// images, or when a count is not positive.
absl::StatusOr<std::vector<int>> ExpandImagePlaceholders(std::span<const int> prompt,
                                                         const Config& config,
                                                         std::span<const int> soft_tokens);

// One forward chunk's image placeholders, as the CPU and GPU forwards take
// them (spec §5.5, §6).
struct ImageChunk {
  std::vector<int> ids;           // the tokens, placeholders replaced by the pad id
  std::vector<int64_t> image_at;  // chunk indices of the placeholders, in order
  // Per token, the last key position it sees, when the config makes images
  // bidirectional (use_bidirectional_attention "vision", sliding layers) and
  // the chunk has images; else empty (causal).
  std::vector<int64_t> last_key;
  bool ends_in_image = false;  // bidirectional and the last token is a placeholder
};

// Plans `tokens` at positions first_position.. with `image_values` floats of
// image rows of width `hidden`. `continues_image`: the previous chunk ended
// inside an image (ImageChunk::ends_in_image). InvalidArgument (prefixed
// with `what`) when the rows do not match the placeholders, or when a
// bidirectional image continues from the previous chunk.
absl::StatusOr<ImageChunk> PlanImageChunk(std::span<const int> tokens, int64_t first_position,
                                          int64_t image_values, int64_t hidden,
                                          const Config& config, bool continues_image,
                                          std::string_view what);

// Ends of the chunks of at most `chunk` tokens that split `tokens`, each
// moved back to the start of a bidirectional image it would cut.
// InvalidArgument when such an image has more placeholders than `chunk`.
absl::StatusOr<std::vector<size_t>> ImageAwareChunkEnds(std::span<const int> tokens, int chunk,
                                                        const Config& config);

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_IMAGE_PROMPT_H_
