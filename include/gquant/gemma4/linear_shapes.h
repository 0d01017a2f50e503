// The [N, K] shapes of Gemma 4's linear layers (spec gemma4.md §1), one table
// per model, shared by the kernel tests and the microbenchmarks so both cover
// the same shapes.
#ifndef GQUANT_GEMMA4_LINEAR_SHAPES_H_
#define GQUANT_GEMMA4_LINEAR_SHAPES_H_

#include <cstdint>
#include <span>
#include <string_view>

namespace gquant::gemma4 {

struct LinearShape {
  std::string_view name;
  int64_t n;  // output features
  int64_t k;  // input features
};

// 31B: hidden 5376; sliding layers 32 x 256 query heads and 16 KV heads (k and
// v alike); full layers 32 x 512 query heads and 4 KV heads (K = V, no
// v_proj); MLP 21504 (gate and up alike); vocabulary 262144 (tied lm_head).
inline constexpr LinearShape kGemma4_31bLinearShapes[] = {
    {"q_sliding", 8192, 5376}, {"kv_sliding", 4096, 5376}, {"o_sliding", 5376, 8192},
    {"q_full", 16384, 5376},   {"k_full", 2048, 5376},     {"o_full", 5376, 16384},
    {"gate_up", 21504, 5376},  {"down", 5376, 21504},      {"lm_head", 262144, 5376},
};

// E2B: hidden 1536; 8 x 256 query heads and 1 KV head on sliding layers, 8 x
// 512 and 1 on full layers; MLP 6144, 12288 on the KV-shared layers.
inline constexpr LinearShape kGemma4E2bLinearShapes[] = {
    {"q_sliding", 2048, 1536},  {"kv_sliding", 256, 1536}, {"o_sliding", 1536, 2048},
    {"q_full", 4096, 1536},     {"kv_full", 512, 1536},    {"o_full", 1536, 4096},
    {"gate_up", 6144, 1536},    {"down", 1536, 6144},      {"gate_up_wide", 12288, 1536},
    {"down_wide", 1536, 12288}, {"lm_head", 262144, 1536},
};

// 26B-A4B experts (128 per layer, 8 chosen per token): hidden 2816, expert
// width 704; gate and up stacked as one [2 x 704, 2816] matrix, as stored.
inline constexpr LinearShape kGemma4_26bExpertShapes[] = {
    {"expert_gate_up", 1408, 2816},
    {"expert_down", 2816, 704},
};

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_LINEAR_SHAPES_H_
