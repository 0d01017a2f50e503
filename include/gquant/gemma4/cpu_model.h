// The CPU reference forward of the Gemma 4 text decoder, in float32 with
// Eigen, following spec gemma4.md §2-§3 and §6 operation by operation. Every
// GPU kernel is judged against it, and it is proven against Hugging Face's
// golden outputs (tests/data).
//
// Usage:
//   auto model = CpuModel::Load("/models/tiny", {});
//   KvCache cache = model->NewCache(/*max_positions=*/4096);
//   auto logits = model->Forward(cache, prompt_ids);   // [T, vocab]
//   auto next = model->Forward(cache, {token});        // [1, vocab]
//
// Image prompts (spec §5.5): the prompt holds one image_token_id placeholder
// per soft token, and `image_rows` [placeholders, H] holds their embeddings
// (CpuVisionModel::EncodeImage, images in prompt order). Placeholders are
// looked up as the pad id (so per-layer embeddings use pad), their rows
// replaced unscaled; with use_bidirectional_attention "vision" (31B) the
// tokens of one image see each other on sliding layers, so an image's
// placeholders must arrive in one Forward call (Prefill keeps them together).
//
// Weights stay in their source (quantized ones quantized) and are read per
// layer as the forward reaches it; up to `weight_cache_bytes` of float32
// weights are kept between calls, so a small model is read once and a large
// one never sits in memory whole in float32.
//
// Numerics: float32 throughout (HF's float32 path; the goldens are float64
// runs, matched to ~1e-5). One deliberate deviation for bf16 checkpoints: the
// embedding scale is float32 sqrt(H), where HF rounds it to the weight dtype
// (73.5 instead of 73.32 for the 31B, spec §2.2), as llama.cpp does. Each
// token's result is independent of how the sequence is chunked and of the
// thread count, bit for bit.
#ifndef GQUANT_GEMMA4_CPU_MODEL_H_
#define GQUANT_GEMMA4_CPU_MODEL_H_

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/gemma4/model_plan.h"
#include "gquant/gemma4/weight_source.h"

namespace gquant::gemma4 {

// Keys and values of every non-shared layer, for one sequence. Sliding layers
// keep a ring buffer of the last `sliding_window + max_chunk - 1` positions
// (what a chunk of up to max_chunk new tokens can see; at most max_positions);
// full layers keep all positions up to max_positions. KV-shared layers read
// their source layer's buffers.
class KvCache {
 public:
  int64_t length() const { return length_; }  // positions processed so far
  int64_t max_positions() const { return max_positions_; }
  int max_chunk() const { return max_chunk_; }
  void Clear() {
    length_ = 0;
    open_image_ = false;
  }

 private:
  friend class CpuModel;
  struct Layer {
    int64_t capacity = 0;     // positions held (ring size for sliding layers)
    std::vector<float> k, v;  // [capacity, nKV, D], slot = position % capacity
  };
  std::vector<Layer> layers_;  // by layer; empty for KV-shared layers
  int64_t length_ = 0;
  int64_t max_positions_ = 0;
  int max_chunk_ = 0;
  bool open_image_ = false;  // the last call ended inside an image's placeholders
};

struct CpuModelOptions {
  int threads = 0;                                // 0: all hardware threads
  int64_t weight_cache_bytes = int64_t{1} << 30;  // float32 weights kept between calls
};

class CpuModel {
 public:
  // Opens the weights (OpenWeightSource), builds the plan from their config,
  // and checks every weight's presence and shape (CheckWeights).
  static absl::StatusOr<std::unique_ptr<CpuModel>> Load(const std::string& path,
                                                        const CpuModelOptions& options);
  static absl::StatusOr<std::unique_ptr<CpuModel>> FromSource(std::unique_ptr<WeightSource> source,
                                                              const CpuModelOptions& options);
  ~CpuModel();

  const ModelPlan& plan() const;
  const WeightSource& source() const;

  // A cache for one sequence of up to `max_positions` tokens, fed at most
  // `max_chunk` tokens per Forward call (both at least 1).
  KvCache NewCache(int64_t max_positions, int max_chunk = 512) const;

  // Runs `tokens` at positions cache.length() .. + T - 1, appends their K/V,
  // and returns the logits of every one of them, [T, vocab] row-major, after
  // the final soft-cap. `image_rows` holds one H-wide row per image
  // placeholder in `tokens`, in order (see the top of this file). Returns
  // InvalidArgument for an empty chunk, more than max_chunk tokens, a token
  // id outside the vocabulary, a sequence longer than max_positions, a cache
  // made by another model, image rows that do not match the placeholders, or
  // (bidirectional image attention) an image continued from the previous
  // call; the source's errors
  // while reading weights (annotated with the layer). On error the cache is
  // unchanged as far as any later call can tell: its length and every
  // position it holds stay as they were (K/V are written only to ring slots
  // no later query reads before they are rewritten).
  absl::StatusOr<std::vector<float>> Forward(KvCache& cache, std::span<const int> tokens,
                                             std::span<const float> image_rows = {}) const;

  // Forward over `tokens` in chunks of at most `chunk` (<= cache.max_chunk()),
  // each ending before an image whose placeholders would not fit in it;
  // returns all logits [T, vocab], bit-identical to a one-shot Forward.
  // InvalidArgument for a bad chunk size or no tokens, when the tokens would
  // not fit, or when one image has more placeholders than `chunk`, before any
  // work; on a later error the cache holds the chunks that completed.
  absl::StatusOr<std::vector<float>> Prefill(KvCache& cache, std::span<const int> tokens, int chunk,
                                             std::span<const float> image_rows = {}) const;

  // The residual stream of `tokens` run on a fresh cache, [L+1, T, H], laid
  // out as HF's output_hidden_states: the scaled embedding, the outputs of
  // layers 0..L-2, and the last layer's output after the final norm. For
  // tests that localize a mismatch.
  absl::StatusOr<std::vector<float>> HiddenStates(std::span<const int> tokens,
                                                  std::span<const float> image_rows = {}) const;

 private:
  struct State;
  explicit CpuModel(std::unique_ptr<State> state);
  std::unique_ptr<State> state_;
};

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_CPU_MODEL_H_
