#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cublas_status.cuh"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_buffer.cuh"
#include "device_primitives.cuh"
#include "gquant/status.h"
#include "launch.cuh"
#include "rope_rotation.cuh"
#include "row_access.cuh"
#include "vision_kernels.cuh"

namespace gquant::cuda {
namespace {

// Threads per block of the elementwise kernels and of the pooler.
constexpr int kThreads = 256;
// Threads per softmax row (one block per row of up to ~10^4 keys).
constexpr int kSoftmaxThreads = 256;
// The cuBLAS handle's fixed workspace (as device_linear.cu's).
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// Score / probability rows are padded to this many elements: 32-byte
// aligned fp32 rows and 16-byte aligned bf16 rows for every num_keys.
constexpr int64_t kRowPad = 8;

int64_t RoundUp(int64_t n, int64_t multiple) { return (n + multiple - 1) / multiple * multiple; }

// Blocks of kThreads covering `threads`, or InvalidArgument past the grid.
absl::Status BlocksFor(const char* op, int64_t threads, int& blocks) {
  const int64_t needed = (threads + kThreads - 1) / kThreads;
  if (needed > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: %d elements is more than one launch covers", op, threads));
  }
  blocks = static_cast<int>(needed);
  return absl::OkStatus();
}

// ---- block reductions (blockDim.x a multiple of 32, at most 1024) ----
// (rms_norm.cu's BlockSum is private to it and sums only.)

struct MaxOp {
  template <typename T>
  __device__ __forceinline__ T operator()(T a, T b) const {
    return a > b ? a : b;
  }
};
struct FloatMaxOp {
  // fmaxf ignores a NaN operand; a NaN score still poisons the row through
  // exp(NaN - max) in the sum.
  __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
struct SumOp {
  __device__ __forceinline__ float operator()(float a, float b) const { return a + b; }
};

// op over the block; every thread gets the same value (the warp results are
// combined in one fixed order). `scratch` holds 32 values in shared memory.
template <typename T, typename Op>
__device__ __forceinline__ T BlockReduce(T v, Op op, T* scratch) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) v = op(v, __shfl_xor_sync(0xFFFFFFFFu, v, offset));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = v;
  __syncthreads();
  T total = scratch[0];
  for (int w = 1; w < static_cast<int>(blockDim.x / 32); ++w) total = op(total, scratch[w]);
  __syncthreads();  // before a second call overwrites scratch
  return total;
}

// ---- PatchEmbeddingsToResidual ----

__device__ __forceinline__ bool IsPadding(const int32_t* positions, int64_t patch) {
  return positions[2 * patch] == -1 && positions[2 * patch + 1] == -1;
}

struct EmbedArgs {
  const __nv_bfloat16* projected;  // [patches, hidden]
  const __nv_bfloat16* x_rows;     // [patches, hidden]
  const __nv_bfloat16* y_rows;     // [patches, hidden]
  const int32_t* positions;        // [patches, 2]
  float* residual;                 // [patches, hidden]
  int64_t hidden;
  int64_t runs_per_row;  // hidden / kWidth
  int64_t runs;          // patches * runs_per_row
};

// One thread per run of kWidth elements of one row.
template <int kWidth>
__global__ void __launch_bounds__(kThreads) PatchEmbeddingsKernel(const EmbedArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t run = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (run >= a.runs) return;
  const int64_t row = run / a.runs_per_row;
  const int64_t offset = row * a.hidden + (run - row * a.runs_per_row) * kWidth;
  float h[kWidth];
  LoadBf16<kWidth>(a.projected + offset, h);
  if (!IsPadding(a.positions, row)) {
    float ex[kWidth], ey[kWidth];
    LoadBf16<kWidth>(a.x_rows + offset, ex);
    LoadBf16<kWidth>(a.y_rows + offset, ey);
#pragma unroll
    for (int i = 0; i < kWidth; ++i) h[i] += ex[i] + ey[i];  // cpu_vision.cc's order
  }
  StoreF32<kWidth>(a.residual + offset, h);
}

// ---- ClampBf16 ----

// One thread per run of kWidth elements. cpu::Clamp's comparisons: a NaN v
// fails both, so it passes through.
template <int kWidth>
__global__ void __launch_bounds__(kThreads)
    ClampKernel(const __nv_bfloat16* in, __nv_bfloat16* out, int64_t runs, float lo, float hi) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t run = int64_t{blockIdx.x} * kThreads + threadIdx.x;
  if (run >= runs) return;
  float v[kWidth];
  LoadBf16<kWidth>(in + run * kWidth, v);
#pragma unroll
  for (int i = 0; i < kWidth; ++i) {
    const float raised = v[i] < lo ? lo : v[i];
    v[i] = hi < raised ? hi : raised;
  }
  StoreBf16<kWidth>(out + run * kWidth, v);
}

// ---- VisionHeadNormRope2d ----

struct Rope2dArgs {
  __nv_bfloat16* x;  // [vectors, head_dim]
  int64_t vectors;   // patches * heads
  int heads;
  int head_dim;
  const __nv_bfloat16* weight;  // [head_dim] or null
  float eps;
  const float* inv_freq;     // [head_dim / 4], or null: no RoPE
  const int32_t* positions;  // [patches, 2]
};

// One warp per head vector, as HeadNormRope (rms_norm.cu), with the rotation
// done as two NeoX RoPEs of head_dim / 2 each: the first half at the patch's
// x, the second at its y (cpu::ApplyRope2d). The warp sum in HeadInverseRms
// orders every lane's reads before any write; each lane then rewrites only
// elements it reads itself.
template <int kWidth>
__global__ void __launch_bounds__(kHeadsPerBlock * 32) HeadNormRope2dKernel(const Rope2dArgs a) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t vector = int64_t{blockIdx.x} * kHeadsPerBlock + threadIdx.x / 32;
  if (vector >= a.vectors) return;  // whole warps
  const int lane = threadIdx.x % 32;
  __nv_bfloat16* head = a.x + vector * a.head_dim;
  const float scale = HeadInverseRms<kWidth>(head, a.head_dim, a.eps, lane);
  if (a.inv_freq == nullptr) {
    ScaleAndRotateHead<kWidth>(head, a.head_dim, scale, a.weight, nullptr, 0.0f, lane);
    return;
  }
  const int32_t* position = a.positions + 2 * (vector / a.heads);
  const int half = a.head_dim / 2;
  // int32 -> float32 rounds to nearest as the CPU's static_cast (exact here).
  ScaleAndRotateHead<kWidth>(head, half, scale, a.weight, a.inv_freq,
                             static_cast<float>(position[0]), lane);
  ScaleAndRotateHead<kWidth>(head + half, half, scale, OffsetOrNull(a.weight, half), a.inv_freq,
                             static_cast<float>(position[1]), lane);
}

// ---- softmax of VisionAttention ----

struct SoftmaxArgs {
  const float* scores;   // [rows, ld], columns [0, keys) used
  __nv_bfloat16* probs;  // [rows, ld]
  int keys;
  int64_t ld;  // a multiple of kRowPad
};

// One block per row: the row is read once into shared memory (float4, rows
// are 32-byte aligned), then max, sum of exp(s - max) and p = e / sum in
// float32 as cpu::BidirectionalAttention (expf and an IEEE division, not the
// fast approximations), p stored as bf16. Each thread revisits only the
// elements it stored, so only the reductions synchronize.
__global__ void __launch_bounds__(kSoftmaxThreads) SoftmaxRowsKernel(const SoftmaxArgs a) {
  extern __shared__ float4 row4[];  // round_up(keys, 4) floats
  __shared__ float scratch[32];
  float* row = reinterpret_cast<float*>(row4);
  WaitForPredecessor();
  const float* s = a.scores + int64_t{blockIdx.x} * a.ld;
  const int vectors = a.keys / 4, tail = vectors * 4;
  float m = -INFINITY;
  for (int i = threadIdx.x; i < vectors; i += kSoftmaxThreads) {
    const float4 v = reinterpret_cast<const float4*>(s)[i];
    row4[i] = v;
    m = fmaxf(m, fmaxf(fmaxf(v.x, v.y), fmaxf(v.z, v.w)));
  }
  for (int j = tail + threadIdx.x; j < a.keys; j += kSoftmaxThreads) {
    row[j] = s[j];
    m = fmaxf(m, row[j]);
  }
  m = BlockReduce(m, FloatMaxOp{}, scratch);

  float sum = 0.0f;
  for (int i = threadIdx.x; i < vectors; i += kSoftmaxThreads) {
    float4 v = row4[i];
    v.x = expf(v.x - m), v.y = expf(v.y - m), v.z = expf(v.z - m), v.w = expf(v.w - m);
    row4[i] = v;
    sum += (v.x + v.y) + (v.z + v.w);
  }
  for (int j = tail + threadIdx.x; j < a.keys; j += kSoftmaxThreads) {
    row[j] = expf(row[j] - m);
    sum += row[j];
  }
  sum = BlockReduce(sum, SumOp{}, scratch);

  __nv_bfloat16* p = a.probs + int64_t{blockIdx.x} * a.ld;
  for (int i = threadIdx.x; i < vectors; i += kSoftmaxThreads) {
    const float4 v = row4[i];
    reinterpret_cast<uint2*>(p)[i] =
        make_uint2(PackBf16x2(v.x / sum, v.y / sum), PackBf16x2(v.z / sum, v.w / sum));
  }
  for (int j = tail + threadIdx.x; j < a.keys; j += kSoftmaxThreads) {
    p[j] = __float2bfloat16_rn(row[j] / sum);
  }
  AllowDependents();  // (a no-op: launched without PDL, see VisionAttention)
}

// The dynamic shared memory a softmax row of `keys` takes.
int64_t SoftmaxSharedBytes(int64_t keys) {
  return RoundUp(keys, 4) * static_cast<int64_t>(sizeof(float));
}

// ---- VisionPool ----

struct PoolArgs {
  const float* residual;     // [patches, hidden]
  const int32_t* positions;  // [patches, 2]
  int64_t patches;
  int hidden;
  int kernel;
  float weight;  // float32(1 / kernel^2), HF's one_hot / k^2
  float scale;
  const __nv_bfloat16* std_bias;   // [hidden] or null
  const __nv_bfloat16* std_scale;  // [hidden] or null
  __nv_bfloat16* out;              // [num_windows, hidden]
};

// Block (w, tile): window w, columns tile * kThreads + thread. The block
// finds the grid width (a max over all positions), then walks the patches in
// chunks of kThreads: each thread tests one patch for membership of w, a
// ballot per warp collects the members, and every thread adds the members'
// values of its column in patch order (cpu::AvgPoolWindows' order; a window
// has kernel^2 members, so the adds are few and the walk is the cost).
__global__ void __launch_bounds__(kThreads) PoolKernel(const PoolArgs a) {
  __shared__ int64_t width_scratch[32];
  __shared__ uint32_t members[kThreads / 32];
  WaitForPredecessor();
  int64_t width = 0;  // cpu::PoolWindows: positions clamped at 0
  for (int64_t p = threadIdx.x; p < a.patches; p += kThreads) {
    const int32_t x = a.positions[2 * p];
    width = MaxOp{}(width, int64_t{x < 0 ? 0 : x} + 1);
  }
  const int64_t windows_per_row = BlockReduce(width, MaxOp{}, width_scratch) / a.kernel;
  const int64_t window = blockIdx.x;
  const int column = blockIdx.y * kThreads + threadIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float sum = 0.0f;
  for (int64_t first = 0; first < a.patches; first += kThreads) {
    const int64_t p = first + threadIdx.x;
    bool member = false;
    if (p < a.patches) {
      // Padding (-1, -1) is skipped; a real patch's coordinates are >= 0.
      const int64_t x = a.positions[2 * p], y = a.positions[2 * p + 1];
      member = x >= 0 && y >= 0 && x / a.kernel + windows_per_row * (y / a.kernel) == window;
    }
    const uint32_t bits = __ballot_sync(0xFFFFFFFFu, member);
    if (lane == 0) members[warp] = bits;
    __syncthreads();
    if (column < a.hidden) {
      for (int w = 0; w < kThreads / 32; ++w) {
        for (uint32_t rest = members[w]; rest != 0; rest &= rest - 1) {
          const int64_t patch = first + w * 32 + (__ffs(rest) - 1);
          // __fmul_rn: no FMA, the CPU's two roundings.
          sum += __fmul_rn(a.weight, a.residual[patch * a.hidden + column]);
        }
      }
    }
    __syncthreads();  // before the next chunk overwrites members
  }
  AllowDependents();  // late: the grid has several waves
  if (column >= a.hidden) return;
  float t = __fmul_rn(sum, a.scale);
  if (a.std_bias != nullptr) {
    t = __fmul_rn(t - __bfloat162float(a.std_bias[column]), __bfloat162float(a.std_scale[column]));
  }
  a.out[window * a.hidden + column] = __float2bfloat16_rn(t);
}

}  // namespace

// ---- PatchEmbeddingsToResidual ----

absl::Status PatchEmbeddingsToResidual(const __nv_bfloat16* projected, const __nv_bfloat16* x_rows,
                                       const __nv_bfloat16* y_rows, const int32_t* positions,
                                       int64_t patches, int hidden, float* residual,
                                       cudaStream_t stream) {
  if (projected == nullptr || x_rows == nullptr || y_rows == nullptr || positions == nullptr ||
      residual == nullptr || !Aligned(projected, 2) || !Aligned(x_rows, 2) || !Aligned(y_rows, 2) ||
      !Aligned(positions, 4) || !Aligned(residual, 4)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PatchEmbeddingsToResidual: expected non-null aligned pointers, but got projected %p, "
        "x_rows %p, y_rows %p, positions %p, residual %p",
        projected, x_rows, y_rows, positions, residual));
  }
  if (patches < 0 || hidden <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "PatchEmbeddingsToResidual: expected patches >= 0 and hidden > 0, but got patches %d, "
        "hidden %d",
        patches, hidden));
  }
  if (patches == 0) return absl::OkStatus();
  const bool vectorized = hidden % kVectorWidth == 0 && Aligned(projected, 16) &&
                          Aligned(x_rows, 16) && Aligned(y_rows, 16) && Aligned(residual, 16);
  const int64_t runs_per_row = vectorized ? hidden / kVectorWidth : hidden;
  const EmbedArgs args{projected, x_rows, y_rows,       positions,
                       residual,  hidden, runs_per_row, patches * runs_per_row};
  int blocks = 0;
  if (absl::Status s = BlocksFor("PatchEmbeddingsToResidual", args.runs, blocks); !s.ok()) {
    return s;
  }
  const auto kernel = vectorized ? PatchEmbeddingsKernel<kVectorWidth> : PatchEmbeddingsKernel<1>;
  return LaunchKernel(kernel, blocks, kThreads, 0, stream, /*overlap=*/true, args);
}

// ---- ClampBf16 ----

absl::Status ClampBf16(const __nv_bfloat16* in, __nv_bfloat16* out, int64_t count, float lo,
                       float hi, cudaStream_t stream) {
  if (in == nullptr || out == nullptr || !Aligned(in, 2) || !Aligned(out, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ClampBf16: expected non-null aligned in and out, but got %p, %p", in, out));
  }
  if (count < 0 || std::isnan(lo) || std::isnan(hi)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "ClampBf16: expected count >= 0 and bounds that are not NaN, but got count %d, lo %g, "
        "hi %g",
        count, lo, hi));
  }
  if (count == 0) return absl::OkStatus();
  const bool vectorized = count % kVectorWidth == 0 && Aligned(in, 16) && Aligned(out, 16);
  const int64_t runs = vectorized ? count / kVectorWidth : count;
  int blocks = 0;
  if (absl::Status s = BlocksFor("ClampBf16", runs, blocks); !s.ok()) return s;
  const auto kernel = vectorized ? ClampKernel<kVectorWidth> : ClampKernel<1>;
  return LaunchKernel(kernel, blocks, kThreads, 0, stream, /*overlap=*/true, in, out, runs, lo, hi);
}

// ---- VisionHeadNormRope2d ----

absl::Status VisionHeadNormRope2d(__nv_bfloat16* x, int64_t patches, int heads, int head_dim,
                                  const __nv_bfloat16* weight, float eps, const float* inv_freq,
                                  const int32_t* positions, cudaStream_t stream) {
  // The shape checks of HeadNormRope (RoPE's own follow: positions, not a
  // first position).
  if (absl::Status s =
          CheckHeads("VisionHeadNormRope2d", x, patches, heads, head_dim, nullptr, nullptr);
      !s.ok()) {
    return s;
  }
  if (!Aligned(weight, 2) || !(eps >= 0.0f)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionHeadNormRope2d: expected an aligned weight and eps >= 0, but got %p and %g", weight,
        eps));
  }
  if (inv_freq != nullptr) {
    if (head_dim % 4 != 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "VisionHeadNormRope2d: 2-D RoPE needs head_dim a multiple of 4, but got %d", head_dim));
    }
    if (!Aligned(inv_freq, 4) || positions == nullptr || !Aligned(positions, 4)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "VisionHeadNormRope2d: expected aligned inv_freq and non-null aligned positions, but "
          "got %p and %p",
          inv_freq, positions));
    }
  }
  if (patches == 0) return absl::OkStatus();
  const Rope2dArgs args{x, patches * heads, heads, head_dim, weight, eps, inv_freq, positions};
  const int blocks = static_cast<int>((args.vectors + kHeadsPerBlock - 1) / kHeadsPerBlock);
  // With RoPE each half is rotated as a head of head_dim / 2 (its second
  // half's weight and elements then start head_dim bytes in: 16-byte aligned
  // whenever head_dim / 2 passes).
  const bool vectorized =
      HeadsVectorizable(x, inv_freq == nullptr ? head_dim : head_dim / 2, weight, inv_freq);
  const auto kernel = vectorized ? HeadNormRope2dKernel<kVectorWidth> : HeadNormRope2dKernel<1>;
  return LaunchKernel(kernel, blocks, kHeadsPerBlock * 32, 0, stream, /*overlap=*/true, args);
}

// ---- VisionAttention ----

std::vector<VisionAttentionBatch> PlanVisionAttentionBatches(int num_heads, int num_kv_heads,
                                                             int64_t max_batch_heads) {
  if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0) return {};
  const int group = num_heads / num_kv_heads;
  const int64_t most = std::max<int64_t>(1, max_batch_heads);
  std::vector<VisionAttentionBatch> batches;
  for (int first = 0; first < num_heads;) {
    int64_t heads = std::min<int64_t>(most, num_heads - first);
    if (group > 1) heads = std::min<int64_t>(heads, group - first % group);  // one KV head
    batches.push_back({first, static_cast<int>(heads)});
    first += static_cast<int>(heads);
  }
  return batches;
}

struct VisionAttentionWorkspace::Resources {
  int64_t max_patches = 0;
  cublasHandle_t handle = nullptr;
  DeviceBuffer<uint8_t> cublas_workspace;
  DeviceBuffer<float> scores;         // one batch's S
  DeviceBuffer<__nv_bfloat16> probs;  // one batch's P, same shape

  ~Resources() {
    // cublasDestroy waits for the device before the buffers are freed.
    if (handle != nullptr) cublasDestroy(handle);
  }
};

VisionAttentionWorkspace::VisionAttentionWorkspace(std::unique_ptr<Resources> resources)
    : resources_(std::move(resources)) {}
VisionAttentionWorkspace::VisionAttentionWorkspace(VisionAttentionWorkspace&&) noexcept = default;
VisionAttentionWorkspace& VisionAttentionWorkspace::operator=(VisionAttentionWorkspace&&) noexcept =
    default;
VisionAttentionWorkspace::~VisionAttentionWorkspace() = default;

int64_t VisionAttentionWorkspace::max_patches() const {
  return resources_ == nullptr ? 0 : resources_->max_patches;
}
int64_t VisionAttentionWorkspace::score_capacity() const {
  return resources_ == nullptr ? 0 : static_cast<int64_t>(resources_->scores.size());
}

absl::StatusOr<VisionAttentionWorkspace> VisionAttentionWorkspace::Create(int64_t max_patches,
                                                                          int heads) {
  if (max_patches < 1 || heads < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionAttentionWorkspace: expected max_patches >= 1 and heads >= 1, but got %d and %d",
        max_patches, heads));
  }
  GQ_ASSIGN_OR_RETURN(const DeviceLimits limits, CurrentDeviceLimits());
  cudaFuncAttributes attributes{};
  GQ_RETURN_IF_CUDA_ERROR(cudaFuncGetAttributes(&attributes, SoftmaxRowsKernel));
  const int64_t room =
      int64_t{limits.shared_per_block} - static_cast<int64_t>(attributes.sharedSizeBytes);
  if (max_patches > INT_MAX || SoftmaxSharedBytes(max_patches) > room) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionAttentionWorkspace: max_patches %d: a softmax row needs %d bytes of shared "
        "memory, more than the %d a block can have",
        max_patches, SoftmaxSharedBytes(max_patches), room));
  }
  // Opt in to all of it (the same value for every workspace, so a later
  // Create never lowers what an earlier one's calls use).
  GQ_RETURN_IF_CUDA_ERROR(cudaFuncSetAttribute(
      SoftmaxRowsKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(room)));

  const int64_t per_head = max_patches * RoundUp(max_patches, kRowPad);
  const int64_t batch_heads = std::clamp<int64_t>(
      kVisionScoreBudgetBytes / (per_head * static_cast<int64_t>(sizeof(float))), 1, heads);
  auto r = std::make_unique<Resources>();
  r->max_patches = max_patches;
  GQ_ASSIGN_OR_RETURN(r->scores, DeviceBuffer<float>::Allocate(batch_heads * per_head));
  GQ_ASSIGN_OR_RETURN(r->probs, DeviceBuffer<__nv_bfloat16>::Allocate(batch_heads * per_head));
  GQ_ASSIGN_OR_RETURN(r->cublas_workspace, DeviceBuffer<uint8_t>::Allocate(kCublasWorkspaceBytes));
  GQ_RETURN_IF_ERROR(
      CublasStatus(cublasCreate(&r->handle), "VisionAttentionWorkspace: cublasCreate"));
  // Tensor cores allowed (the default); split-K reductions in fp32, not
  // bf16, so each GEMM is fp32 accumulation plus its output's rounding.
  GQ_RETURN_IF_ERROR(CublasStatus(
      cublasSetMathMode(
          r->handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                               CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
      "VisionAttentionWorkspace: cublasSetMathMode"));
  return VisionAttentionWorkspace(std::move(r));
}

absl::Status VisionAttention(const __nv_bfloat16* q, const __nv_bfloat16* k, const __nv_bfloat16* v,
                             int64_t patches, int64_t num_keys, int num_heads, int num_kv_heads,
                             int head_dim, __nv_bfloat16* out, VisionAttentionWorkspace& workspace,
                             cudaStream_t stream) {
  VisionAttentionWorkspace::Resources* r = workspace.resources_.get();
  if (r == nullptr) {
    return absl::InvalidArgumentError("VisionAttention: the workspace was moved from");
  }
  if (q == nullptr || k == nullptr || v == nullptr || out == nullptr || !Aligned(q, 16) ||
      !Aligned(k, 16) || !Aligned(v, 16) || !Aligned(out, 16)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionAttention: expected non-null 16-byte aligned q, k, v and out, but got %p, %p, %p, "
        "%p",
        q, k, v, out));
  }
  if (out == k || out == v) {
    return absl::InvalidArgumentError("VisionAttention: out must not be k or v");
  }
  if (num_heads < 1 || num_kv_heads < 1 || num_heads % num_kv_heads != 0 || head_dim < 1 ||
      int64_t{num_heads} * head_dim > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionAttention: expected num_heads a positive multiple of num_kv_heads >= 1 and "
        "head_dim >= 1, but got num_heads %d, num_kv_heads %d, head_dim %d",
        num_heads, num_kv_heads, head_dim));
  }
  if (patches == 0 && num_keys == 0) return absl::OkStatus();
  if (num_keys < 1 || num_keys > patches || patches > r->max_patches) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionAttention: expected 1 <= num_keys <= patches <= the workspace's max_patches %d, "
        "but got num_keys %d, patches %d",
        r->max_patches, num_keys, patches));
  }
  // Everything below fits in int: patches <= max_patches <= INT_MAX (Create).
  const int64_t ld = RoundUp(num_keys, kRowPad);
  const int64_t per_head = patches * ld;
  // Heads per batch: as many as the score buffer holds (>= 1, since
  // per_head <= max_patches * round_up(max_patches, kRowPad)).
  const int64_t batch_heads =
      std::min<int64_t>(static_cast<int64_t>(r->scores.size()) / per_head, num_heads);
  if (batch_heads * patches > INT_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("VisionAttention: %d patches x %d heads is more softmax rows than one "
                        "launch covers",
                        patches, batch_heads));
  }
  const int group = num_heads / num_kv_heads;
  const int q_ld = num_heads * head_dim, kv_ld = num_kv_heads * head_dim;
  // The KV head advances with the query head only without grouping; a
  // grouped batch stays on one KV head (PlanVisionAttentionBatches).
  const int64_t kv_stride = group == 1 ? head_dim : 0;
  const int m = static_cast<int>(patches), keys = static_cast<int>(num_keys);

  // cublasSetStream resets the workspace to cuBLAS's pool: set it after.
  GQ_RETURN_IF_ERROR(CublasStatus(cublasSetStream(r->handle, stream), "cublasSetStream"));
  GQ_RETURN_IF_ERROR(CublasStatus(
      cublasSetWorkspace(r->handle, r->cublas_workspace.data(), r->cublas_workspace.size()),
      "cublasSetWorkspace"));
  const float one = 1.0f, zero = 0.0f;
  for (const VisionAttentionBatch& batch :
       PlanVisionAttentionBatches(num_heads, num_kv_heads, batch_heads)) {
    const int64_t kv_head = batch.first_head / group;
    // Column-major view. Sᵀ [keys, patches] (ldc ld, stride patches * ld per
    // head) = K_h · Q_hᵀ: K_h stored row-major [keys, D] with row pitch kv_ld
    // is column-major D x keys (lda kv_ld), transposed; Q_h likewise D x
    // patches (ldb q_ld). So row t of S (query t) is contiguous.
    GQ_RETURN_IF_ERROR(CublasStatus(
        cublasGemmStridedBatchedEx(
            r->handle, CUBLAS_OP_T, CUBLAS_OP_N, keys, m, head_dim, &one, k + kv_head * head_dim,
            CUDA_R_16BF, kv_ld, kv_stride, q + int64_t{batch.first_head} * head_dim, CUDA_R_16BF,
            q_ld, head_dim, &zero, r->scores.data(), CUDA_R_32F, static_cast<int>(ld), per_head,
            batch.heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        absl::StrFormat("VisionAttention: S = Q K^T for heads [%d, %d), %d patches, %d keys",
                        batch.first_head, batch.first_head + batch.heads, patches, num_keys)));
    // The batch's rows are back to back: head b's row t is row b * patches +
    // t. An ordinary launch: between two cuBLAS GEMMs there is no launch
    // latency to hide, and no early start is wanted beside them.
    GQ_RETURN_IF_ERROR(LaunchKernel(SoftmaxRowsKernel, batch.heads * m, kSoftmaxThreads,
                                    static_cast<size_t>(SoftmaxSharedBytes(num_keys)), stream,
                                    /*overlap=*/false,
                                    SoftmaxArgs{r->scores.data(), r->probs.data(), keys, ld}));
    // Oᵀ [D, patches] (ldc q_ld, stride D per head) = V_hᵀ [D, keys] (V_h
    // row-major with pitch kv_ld, lda kv_ld) · Pᵀ [keys, patches] (ldb ld).
    GQ_RETURN_IF_ERROR(CublasStatus(
        cublasGemmStridedBatchedEx(
            r->handle, CUBLAS_OP_N, CUBLAS_OP_N, head_dim, m, keys, &one, v + kv_head * head_dim,
            CUDA_R_16BF, kv_ld, kv_stride, r->probs.data(), CUDA_R_16BF, static_cast<int>(ld),
            per_head, &zero, out + int64_t{batch.first_head} * head_dim, CUDA_R_16BF, q_ld,
            head_dim, batch.heads, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        absl::StrFormat("VisionAttention: O = P V for heads [%d, %d), %d patches, %d keys",
                        batch.first_head, batch.first_head + batch.heads, patches, num_keys)));
  }
  return absl::OkStatus();
}

// ---- VisionPool ----

absl::Status VisionPool(const float* residual, const int32_t* positions, int64_t patches,
                        int hidden, int kernel, int64_t num_windows, float scale,
                        const __nv_bfloat16* std_bias, const __nv_bfloat16* std_scale,
                        __nv_bfloat16* out, cudaStream_t stream) {
  if (residual == nullptr || positions == nullptr || out == nullptr || !Aligned(residual, 4) ||
      !Aligned(positions, 4) || !Aligned(out, 2) || !Aligned(std_bias, 2) ||
      !Aligned(std_scale, 2)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionPool: expected non-null aligned residual, positions and out, but got %p, %p, %p "
        "(std_bias %p, std_scale %p)",
        residual, positions, out, std_bias, std_scale));
  }
  if ((std_bias == nullptr) != (std_scale == nullptr)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionPool: std_bias and std_scale must both be given or both be null, but got %p and %p",
        std_bias, std_scale));
  }
  const int64_t column_tiles = (int64_t{hidden} + kThreads - 1) / kThreads;
  if (patches < 1 || hidden < 1 || kernel < 1 || num_windows < 1 || num_windows > INT_MAX ||
      column_tiles > 65535) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "VisionPool: expected patches, hidden, kernel and num_windows >= 1 (num_windows and "
        "hidden within one launch), but got patches %d, hidden %d, kernel %d, num_windows %d",
        patches, hidden, kernel, num_windows));
  }
  if (!std::isfinite(scale)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("VisionPool: scale must be finite, but got %g", scale));
  }
  const PoolArgs args{residual, positions, patches,
                      hidden,   kernel,    1.0f / static_cast<float>(int64_t{kernel} * kernel),
                      scale,    std_bias,  std_scale,
                      out};
  const dim3 grid(static_cast<unsigned>(num_windows), static_cast<unsigned>(column_tiles));
  return LaunchKernel(PoolKernel, grid, kThreads, 0, stream, /*overlap=*/true, args);
}

}  // namespace gquant::cuda
