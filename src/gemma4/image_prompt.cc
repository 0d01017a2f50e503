#include "gquant/gemma4/image_prompt.h"

#include <algorithm>
#include <string>

#include "absl/strings/str_cat.h"

namespace gquant::gemma4 {

absl::StatusOr<std::vector<int>> ExpandImagePlaceholders(std::span<const int> prompt,
                                                         const Config& config,
                                                         std::span<const int> soft_tokens) {
  if (!config.image_token_id || !config.boi_token_id || !config.eoi_token_id) {
    return absl::InvalidArgumentError(
        "image prompt: the model's config has no image placeholder, BOI or EOI token id (a "
        "text-only config?)");
  }
  const int image = *config.image_token_id;
  const auto placeholders = std::count(prompt.begin(), prompt.end(), image);
  if (placeholders != static_cast<std::ptrdiff_t>(soft_tokens.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("image prompt: ", soft_tokens.size(), " image(s) but ", placeholders,
                     " image placeholder token(s) (id ", image,
                     ") in the prompt; put one where each image goes"));
  }
  std::vector<int> out;
  size_t k = 0;
  for (const int id : prompt) {
    if (id != image) {
      out.push_back(id);
      continue;
    }
    if (soft_tokens[k] < 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("image prompt: image ", k, " has ", soft_tokens[k], " soft tokens"));
    }
    out.push_back(*config.boi_token_id);
    out.insert(out.end(), soft_tokens[k], image);
    out.push_back(*config.eoi_token_id);
    ++k;
  }
  return out;
}

namespace {

bool BidirectionalImages(const Config& config) {
  return config.text.use_bidirectional_attention == BidirectionalAttention::kVision;
}

}  // namespace

absl::StatusOr<ImageChunk> PlanImageChunk(std::span<const int> tokens, int64_t first_position,
                                          int64_t image_values, int64_t hidden,
                                          const Config& config, bool continues_image,
                                          std::string_view what) {
  const auto is_image = [&](int id) {
    return config.image_token_id && id == *config.image_token_id;
  };
  const int64_t t = static_cast<int64_t>(tokens.size());
  ImageChunk chunk;
  chunk.ids.assign(tokens.begin(), tokens.end());
  for (int64_t i = 0; i < t; ++i) {
    if (is_image(tokens[i])) {
      chunk.image_at.push_back(i);
      chunk.ids[i] = config.text.pad_token_id.value_or(0);
    }
  }
  const int64_t images = static_cast<int64_t>(chunk.image_at.size());
  if (image_values != images * hidden) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(what), ": ", images, " image placeholder tokens (id ",
                     config.image_token_id.value_or(-1), ") need ", images, " rows of ", hidden,
                     " embedding values, but ", image_values, " values were given"));
  }
  const bool bidirectional = BidirectionalImages(config);
  if (bidirectional && continues_image && images > 0 && chunk.image_at[0] == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        std::string(what),
        ": the previous call ended inside an image; with bidirectional image attention "
        "(use_bidirectional_attention \"vision\") an image's placeholder tokens must be in one "
        "call"));
  }
  if (bidirectional && images > 0) {
    chunk.last_key.resize(t);
    int64_t run_end = t - 1;
    for (int64_t i = t - 1; i >= 0; --i) {
      const bool image = is_image(tokens[i]);
      if (!image || i + 1 == t || !is_image(tokens[i + 1])) run_end = i;
      chunk.last_key[i] = first_position + (image ? run_end : i);
    }
  }
  chunk.ends_in_image = bidirectional && t > 0 && is_image(tokens.back());
  return chunk;
}

absl::StatusOr<std::vector<size_t>> ImageAwareChunkEnds(std::span<const int> tokens, int chunk,
                                                        const Config& config) {
  const auto is_image = [&](size_t i) {
    return config.image_token_id && tokens[i] == *config.image_token_id;
  };
  const bool bidirectional = BidirectionalImages(config);
  std::vector<size_t> ends;
  for (size_t begin = 0; begin < tokens.size(); begin = ends.back()) {
    size_t end = std::min<size_t>(begin + chunk, tokens.size());
    if (bidirectional && end < tokens.size() && is_image(end) && is_image(end - 1)) {
      size_t run = end - 1;
      while (run > begin && is_image(run - 1)) --run;
      if (run == begin) {
        return absl::InvalidArgumentError(
            absl::StrCat("the image at token ", begin, " has more placeholders than the chunk ",
                         "size ", chunk, "; they attend to each other and must be in one chunk"));
      }
      end = run;
    }
    ends.push_back(end);
  }
  return ends;
}

}  // namespace gquant::gemma4
