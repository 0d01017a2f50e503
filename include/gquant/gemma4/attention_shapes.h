// The attention shapes of Gemma 4's layers (spec gemma4.md §1.1), shared by
// the attention kernels' tests and microbenchmarks.
#ifndef GQUANT_GEMMA4_ATTENTION_SHAPES_H_
#define GQUANT_GEMMA4_ATTENTION_SHAPES_H_

#include <cstdint>
#include <string_view>

namespace gquant::gemma4 {

struct AttentionShape {
  std::string_view name;
  int num_heads;
  int num_kv_heads;
  int head_dim;
  int64_t window;  // sliding window in positions; 0: full attention
};

inline constexpr AttentionShape kGemma4AttentionShapes[] = {
    {"31B sliding", 32, 16, 256, 1024},
    {"31B full", 32, 4, 512, 0},
    {"E2B sliding", 8, 1, 256, 512},
    {"E2B full", 8, 1, 512, 0},
};

}  // namespace gquant::gemma4

#endif  // GQUANT_GEMMA4_ATTENTION_SHAPES_H_
