// The GPU kernels of the Gemma 4 vision encoder (spec gemma4.md §5.2-§5.4;
// HF Gemma4VisionModel; CPU reference gemma4/cpu_vision.cc), the pieces that
// are not a linear, a row RMSNorm or an activation (rms_norm.cuh,
// activations.cuh, device_linear.cuh serve those):
//   PatchEmbeddingsToResidual  the patch embedder's sum, into the residual;
//   ClampBf16                  a Gemma4ClippableLinear's input / output clamp;
//   VisionHeadNormRope2d       q_norm / k_norm + the 2-D RoPE, and v_norm;
//   VisionAttention            bidirectional attention over the real patches;
//   VisionPool                 Gemma4VisionPooler + the standardization.
//
// Layout. An image is P = max_patches patch rows (9 per soft token), the real
// patches first (rows [0, num_real)) and padding rows after them. positions
// is int32 [P, 2] on the device: (x, y) = (column, row) of the patch grid, and
// (-1, -1) marks a padding row (the only way one is marked). Activations are
// bf16 in global memory with float32 math and one bf16 rounding per stored
// tensor, as in the text model; the residual stream is float32 [P, Hv].
//
// Every function checks its arguments and returns InvalidArgument naming the
// bad one (null or misaligned pointer, bad shape), Internal for a CUDA or
// cuBLAS error; work is queued on `stream` (the kernels with programmatic
// dependent launch, launch.cuh) and nothing synchronizes. Pointers are device
// pointers unless said otherwise.
#ifndef GQUANT_CUDA_VISION_KERNELS_CUH_
#define GQUANT_CUDA_VISION_KERNELS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace gquant::cuda {

// Gemma4VisionPatchEmbedder after its input projection:
//   residual[p, :] = float(projected[p, :])
//                    + (float(x_rows[p, :]) + float(y_rows[p, :]))
// for a real patch p, and float(projected[p, :]) for a padding one (HF adds a
// zero position embedding there). x_rows / y_rows are the position table rows
// of each patch's x and y, gathered by the caller; padding rows of them are
// never read (they may hold anything, NaN included). The float32 additions
// are cpu_vision.cc's, in its order: on the same inputs the result is that
// float32 sum bit for bit. All [patches, hidden]; patches = 0 does nothing.
absl::Status PatchEmbeddingsToResidual(const __nv_bfloat16* projected, const __nv_bfloat16* x_rows,
                                       const __nv_bfloat16* y_rows, const int32_t* positions,
                                       int64_t patches, int hidden, float* residual,
                                       cudaStream_t stream);

// out[i] = bf16(torch.clamp(in[i], lo, hi)) for i < count, as cpu::Clamp:
// min(max(v, lo), hi), so NaN stays NaN and lo > hi gives hi. lo and hi are
// float32 (the checkpoint's 0-d bounds), infinite allowed, NaN refused. The
// result is the input itself or a bound rounded to bf16; this equals clamping
// to the bf16-rounded bounds (HF's bf16 clamp), since rounding is monotonic.
// out may be in (in place), otherwise it must not overlap in.
absl::Status ClampBf16(const __nv_bfloat16* in, __nv_bfloat16* out, int64_t count, float lo,
                       float hi, cudaStream_t stream);

// In place on x bf16 [patches, heads, head_dim]: every head vector becomes
// RmsNorm(x) (* weight when weight is not null) in float32, then, when
// inv_freq is not null, the 2-D RoPE of cpu::ApplyRope2d: dims [0, D/2)
// rotate by the patch's x and [D/2, D) by its y, each half as NeoX RoPE of
// its own (pairs j <-> j + D/4), angle = float(position) * inv_freq[j] in
// float32; padding patches rotate by (-1, -1) as in HF. One bf16 rounding.
//   q: weight = q_norm, inv_freq;  k: k_norm, inv_freq;  v: null, null.
//   inv_freq: float32 [head_dim / 4] (RopeInverseFrequencies over D/2);
//   positions: int32 [patches, 2], read only with inv_freq (else nullable).
// With RoPE head_dim must be a multiple of 4. 16-byte accesses when x,
// weight and inv_freq are 16-byte aligned and head_dim % 32 == 0 (% 8 without
// RoPE); a scalar path otherwise. eps >= 0.
absl::Status VisionHeadNormRope2d(__nv_bfloat16* x, int64_t patches, int heads, int head_dim,
                                  const __nv_bfloat16* weight, float eps, const float* inv_freq,
                                  const int32_t* positions, cudaStream_t stream);

// ---- Bidirectional attention ----

// The query heads one pair of strided-batched GEMMs computes: [first_head,
// first_head + heads). With num_heads == num_kv_heads a batch spans any heads
// (the K/V head advances with the query head); with grouped heads it stays
// inside one KV head's group (K/V batch stride 0). Host only.
struct VisionAttentionBatch {
  int first_head;
  int heads;
};

// Cuts query heads [0, num_heads) into batches of at most max_batch_heads
// (>= 1), in head order, never crossing a KV group when num_heads >
// num_kv_heads (num_heads a positive multiple of num_kv_heads). Host only.
std::vector<VisionAttentionBatch> PlanVisionAttentionBatches(int num_heads, int num_kv_heads,
                                                             int64_t max_batch_heads);

// The fp32 score buffer of VisionAttention is at most this large when it
// holds more than one head ([heads per batch, P, round_up(num_keys, 8)]).
inline constexpr int64_t kVisionScoreBudgetBytes = int64_t{512} << 20;

// What VisionAttention needs besides its tensors: a cuBLAS handle (default
// math, tensor cores, fp32 reductions only) with a fixed 32 MiB workspace (so
// calls can be captured in a CUDA graph), the float32 scores and the bf16
// probabilities of one batch of heads. Create it on the device it is used on;
// it serves one call at a time (calls on different streams must not overlap).
class VisionAttentionWorkspace {
 public:
  // Room for images of up to max_patches patches: the buffers hold
  // max(1, min(heads, kVisionScoreBudgetBytes / score bytes of one head))
  // heads at max_patches (one head at 10080 patches is 406 MB of scores and
  // 203 MB of probabilities), and smaller images batch more heads in the
  // same room. InvalidArgument for max_patches < 1 or so large that a row of
  // scores (4 bytes a key) does not fit in one block's shared memory
  // (~58000 keys on an H100), or heads < 1; ResourceExhausted when device
  // memory runs out; Internal for a CUDA or cuBLAS error.
  static absl::StatusOr<VisionAttentionWorkspace> Create(int64_t max_patches, int heads);

  VisionAttentionWorkspace(VisionAttentionWorkspace&&) noexcept;
  VisionAttentionWorkspace& operator=(VisionAttentionWorkspace&&) noexcept;
  ~VisionAttentionWorkspace();

  int64_t max_patches() const;
  // Float32 scores the buffer holds: heads per batch = this / (P *
  // round_up(num_keys, 8)).
  int64_t score_capacity() const;

 private:
  struct Resources;
  explicit VisionAttentionWorkspace(std::unique_ptr<Resources> resources);
  std::unique_ptr<Resources> resources_;

  friend absl::Status VisionAttention(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                      const __nv_bfloat16* v, int64_t patches, int64_t num_keys,
                                      int num_heads, int num_kv_heads, int head_dim,
                                      __nv_bfloat16* out, VisionAttentionWorkspace& workspace,
                                      cudaStream_t stream);
};

// Gemma4VisionAttention's core with scale 1.0 (spec §5.3): for every query
// row t < patches (padding rows too, as HF computes them) and query head h,
//   out[t, h, :] = sum_{j < num_keys} softmax_j(q[t, h, :] · k[j, g, :]) v[j, g, :]
// with g = h / (num_heads / num_kv_heads): the keys are the real patches
// [0, num_keys); padding keys and values (rows >= num_keys) are never read.
// Per batch of heads (PlanVisionAttentionBatches): S = Q Kᵀ by cuBLAS (bf16
// inputs, fp32 accumulate, fp32 S), a softmax kernel over each row of S in
// fp32 (max, sum of exp, then p / sum) storing P as bf16 (HF's eager path
// casts the softmax to the query dtype before @V), then O = P V by cuBLAS
// (fp32 accumulate, bf16 out, ldc num_heads * head_dim).
//   q, out: bf16 [patches, num_heads, head_dim]; k, v: bf16 [patches,
//   num_kv_heads, head_dim]; all 16-byte aligned. out may be q (a head's
//   queries are read before its output is written), never k or v.
// 1 <= num_keys <= patches <= workspace.max_patches(); patches = 0 (with
// num_keys = 0) does nothing. num_heads a positive multiple of num_kv_heads;
// head_dim > 0 (a multiple of 8 keeps every head 16-byte aligned, which the
// fastest cuBLAS kernels want).
absl::Status VisionAttention(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             int64_t patches, int64_t num_keys, int num_heads, int num_kv_heads,
                             int head_dim, __nv_bfloat16* out, VisionAttentionWorkspace& workspace,
                             cudaStream_t stream);

// ---- Pooler ----

// Gemma4VisionPooler and the standardization on the encoder output residual
// float32 [patches, hidden] (spec §5.4), as cpu_vision.cc's SoftTokens:
//   grid_width = max over all patches of max(x, 0) + 1 (= the largest real x
//                + 1), computed on the device from positions;
//   window(p)  = floor(x / kernel) + (grid_width / kernel) * floor(y / kernel);
//   t[w]       = (sum over the real patches p of window w, in patch order, of
//                float(1 / kernel^2) * residual[p]) * scale     (float32)
//   out[w, :]  = bf16((t[w] - std_bias) * std_scale), or bf16(t[w]) when
//                std_bias is null,
// for w < num_windows (the soft tokens). Padding rows are skipped (HF zeroes
// them), so whatever they hold, NaN included, does not matter. scale is HF's
// hidden**0.5 as float32. std_bias and std_scale (bf16 [hidden]) are both
// given or both null. The input is a whole grid of whole windows, so every
// window w < num_windows has real patches; patches of a window >=
// num_windows are ignored. out: bf16 [num_windows, hidden].
absl::Status VisionPool(const float* residual, const int32_t* positions, int64_t patches,
                        int hidden, int kernel, int64_t num_windows, float scale,
                        const __nv_bfloat16* std_bias, const __nv_bfloat16* std_scale,
                        __nv_bfloat16* out, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_VISION_KERNELS_CUH_
