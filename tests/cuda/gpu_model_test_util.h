// Shared pieces of the GPU forward tests: gpu_model_test.cc (in-memory
// random weights) and gpu_model_checkpoint_test.cc (checkpoint files). The
// configs are small but use the kernels' real head dims (256 sliding, 512
// full); the tiny fixtures under tests/data (head dims 32/64) do not fit the
// GPU attention kernels.
#ifndef GQUANT_TESTS_CUDA_GPU_MODEL_TEST_UTIL_H_
#define GQUANT_TESTS_CUDA_GPU_MODEL_TEST_UTIL_H_

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <vector>

namespace gquant::testing {

// Error bound on the logits of a run, ||gpu - cpu|| / ||cpu|| over all of
// its rows (relative Frobenius norm): the GPU keeps activations in bf16 (8
// significant bits, one rounding per stored tensor, ~20 roundings per layer
// on the path to the logits) against the CPU's float32, and these random
// models amplify them. Measured on the H100: 0.009-0.015 over a run; single
// rows reach 0.019, which is why the bound, the issue's 2e-2, is on the
// whole run (a row-wise bound would fail now and then on a fresh seed).
inline constexpr double kLogitsRelativeL2 = 2e-2;

// 31B-style: S,S,F,S,S,F; full layers K=V with one KV head of 512; soft-cap.
inline constexpr const char* k31bStyle = R"({
  "model_type": "gemma4_text", "vocab_size": 1024, "hidden_size": 256,
  "intermediate_size": 512, "num_hidden_layers": 6, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 256, "global_head_dim": 512,
  "num_global_key_value_heads": 1, "attention_k_eq_v": true, "sliding_window": 16,
  "final_logit_softcapping": 30.0, "hidden_size_per_layer_input": 0,
  "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                  "sliding_attention", "sliding_attention", "full_attention"]})";

// E2B-style: PLE (64 per layer), the last 2 of 5 layers KV-shared, double-wide
// MLP there; no soft-cap, so the head's logits reach the sampler raw.
inline constexpr const char* kE2bStyle = R"({
  "model_type": "gemma4_text", "vocab_size": 1024, "hidden_size": 256,
  "intermediate_size": 384, "num_hidden_layers": 5, "num_attention_heads": 4,
  "num_key_value_heads": 1, "head_dim": 256, "global_head_dim": 512,
  "sliding_window": 16, "final_logit_softcapping": null,
  "hidden_size_per_layer_input": 64, "vocab_size_per_layer_input": 1024,
  "num_kv_shared_layers": 2, "use_double_wide_mlp": true,
  "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                  "sliding_attention", "full_attention"]})";

// 26B-A4B-style: 31B-style attention and, beside a dense MLP on every
// layer, a mixture of experts (width 128, int4-kernel shapes). Here every
// one of the 8 experts is chosen: with a top-k boundary, bf16 activations
// move near-tied router logits across it now and then, and a token whose
// expert flips differs wholesale (k26bSparseStyle's test bounds that apart).
inline constexpr const char* k26bStyle = R"({
  "model_type": "gemma4_text", "vocab_size": 1024, "hidden_size": 256,
  "intermediate_size": 256, "num_hidden_layers": 4, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 256, "global_head_dim": 512,
  "num_global_key_value_heads": 1, "attention_k_eq_v": true, "sliding_window": 16,
  "final_logit_softcapping": 30.0, "hidden_size_per_layer_input": 0,
  "enable_moe_block": true, "num_experts": 8, "top_k_experts": 8,
  "moe_intermediate_size": 128,
  "layer_types": ["sliding_attention", "sliding_attention", "full_attention",
                  "sliding_attention"]})";

// A sparse choice, top 4 of 16 experts, in one layer: a near tie among the
// router logits lets bf16 rounding pick another expert for that token, and
// through later layers (attention mixes tokens) one flip spreads; measured:
// with 4 layers, from 2% to 100% of rows agreed between two GPU paths,
// depending on the seed. One layer keeps each flip to its own row.
inline constexpr const char* k26bSparseStyle = R"({
  "model_type": "gemma4_text", "vocab_size": 1024, "hidden_size": 256,
  "intermediate_size": 256, "num_hidden_layers": 1, "num_attention_heads": 4,
  "num_key_value_heads": 2, "head_dim": 256, "sliding_window": 16,
  "final_logit_softcapping": 30.0, "hidden_size_per_layer_input": 0,
  "enable_moe_block": true, "num_experts": 16, "top_k_experts": 4,
  "moe_intermediate_size": 128, "layer_types": ["sliding_attention"]})";

inline std::vector<int> RandomTokens(std::mt19937_64& rng, int count, int vocab) {
  std::uniform_int_distribution<int> id(0, vocab - 1);
  std::vector<int> tokens(count);
  for (int& t : tokens) t = id(rng);
  return tokens;
}

inline int Argmax(std::span<const float> row) {
  return static_cast<int>(std::max_element(row.begin(), row.end()) - row.begin());
}

// The gap between the two largest logits.
inline float Margin(std::span<const float> row) {
  std::vector<float> sorted(row.begin(), row.end());
  std::partial_sort(sorted.begin(), sorted.begin() + 2, sorted.end(), std::greater<>());
  return sorted[0] - sorted[1];
}

// A greedy choice is compared only where the CPU's top two logits are at
// least this far apart. The choice flips only when the GPU's errors on the
// two logits differ by more than the gap: measured on the H100, single
// logits err by 0.02-0.03 typically and 0.08 at most (int4, E2B-style), so
// 0.15 is about twice the worst single error. (0.05 let one run in eight of
// the image-prompt test compare a row whose choice flipped.)
inline constexpr float kClearMargin = 0.15f;

// ||gpu - cpu|| / ||cpu|| over all rows checked (relative_l2()), the worst
// row's, and max |gpu - cpu|, with the argmax of every row whose CPU margin
// is clear compared; fails on a NaN.
struct RowErrors {
  double squared_error = 0, squared_norm = 0;
  double worst_row = 0, max_abs = 0;
  int argmax_compared = 0;
  double relative_l2() const { return std::sqrt(squared_error / std::max(squared_norm, 1e-30)); }
};
inline void CheckRows(const std::vector<float>& gpu, const std::vector<float>& cpu, int64_t vocab,
                      RowErrors& errors) {
  REQUIRE(gpu.size() == cpu.size());
  for (size_t row = 0; row * vocab < cpu.size(); ++row) {
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < vocab; ++i) {
      const double g = gpu[row * vocab + i], c = cpu[row * vocab + i];
      REQUIRE(std::isfinite(g));
      diff += (g - c) * (g - c);
      norm += c * c;
      errors.max_abs = std::max(errors.max_abs, std::abs(g - c));
    }
    errors.squared_error += diff;
    errors.squared_norm += norm;
    errors.worst_row = std::max(errors.worst_row, std::sqrt(diff / std::max(norm, 1e-30)));
    const std::span<const float> want(cpu.data() + row * vocab, vocab);
    if (Margin(want) >= kClearMargin) {
      CAPTURE(row);
      CHECK(Argmax(std::span<const float>(gpu.data() + row * vocab, vocab)) == Argmax(want));
      ++errors.argmax_compared;
    }
  }
}

}  // namespace gquant::testing

#endif  // GQUANT_TESTS_CUDA_GPU_MODEL_TEST_UTIL_H_
