#include <algorithm>
#include <cstdint>

#include "absl/strings/str_format.h"
#include "aligned.h"
#include "cuda_status.cuh"
#include "device_primitives.cuh"
#include "kv_cache.cuh"
#include "launch.cuh"

namespace gquant::cuda {
namespace {

constexpr int kThreads = 256;
// A decode step appends one token (nKV * D / 8 = 256..512 vectors): one or
// two blocks. Prefill chunks are larger; the grid-stride loop covers any size
// with at most this many blocks (a few waves of 132 multiprocessors).
constexpr int64_t kMaxBlocks = 1024;

// One 16-byte vector per thread and iteration. Vector i of the written range
// is token skipped + i / vectors_per_token (tokens before `skipped` are
// overwritten by later ones of the same append and are not written at all,
// so two threads never write the same slot).
__global__ void __launch_bounds__(kThreads)
    AppendKvKernel(uint4* __restrict__ k_cache,  // [capacity][vectors_per_token]
                   uint4* __restrict__ v_cache,  // [capacity][vectors_per_token]
                   const uint4* __restrict__ k,  // [tokens][vectors_per_token]
                   const uint4* __restrict__ v,  // [tokens][vectors_per_token]
                   int64_t capacity, int64_t vectors_per_token, int tokens,
                   const int64_t* __restrict__ first_position) {
  WaitForPredecessor();
  AllowDependents();
  const int64_t first = *first_position;
  if (first < 0) return;
  const int64_t skipped = std::max<int64_t>(0, tokens - capacity);
  const int64_t total = (tokens - skipped) * vectors_per_token;
  for (int64_t i = int64_t{blockIdx.x} * kThreads + threadIdx.x; i < total;
       i += int64_t{gridDim.x} * kThreads) {
    const int64_t token = skipped + i / vectors_per_token, within = i % vectors_per_token;
    const int64_t source = token * vectors_per_token + within;
    const int64_t target = (first + token) % capacity * vectors_per_token + within;
    k_cache[target] = k[source];
    v_cache[target] = v[source];
  }
}

}  // namespace

absl::Status CheckKvLayerView(const KvLayerView& cache, const char* what) {
  if (cache.k == nullptr || cache.v == nullptr) {
    return absl::InvalidArgumentError(absl::StrFormat("%s: cache.k / cache.v is null", what));
  }
  if (!Aligned(cache.k, 16) || !Aligned(cache.v, 16)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: cache.k / cache.v must be 16-byte aligned", what));
  }
  if (cache.capacity < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s: cache.capacity must be >= 1, but got %d", what, cache.capacity));
  }
  if (cache.num_kv_heads < 1) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: cache.num_kv_heads must be >= 1, but got %d", what, cache.num_kv_heads));
  }
  if (cache.head_dim < 8 || cache.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: cache.head_dim must be a positive multiple of 8, but got %d", what, cache.head_dim));
  }
  return absl::OkStatus();
}

absl::Status AppendKv(const KvLayerView& cache, const __nv_bfloat16* k, const __nv_bfloat16* v,
                      int tokens, const int64_t* first_position, cudaStream_t stream) {
  if (absl::Status s = CheckKvLayerView(cache, "AppendKv"); !s.ok()) return s;
  if (k == nullptr || v == nullptr || !Aligned(k, 16) || !Aligned(v, 16)) {
    return absl::InvalidArgumentError("AppendKv: k / v must be non-null and 16-byte aligned");
  }
  if (first_position == nullptr || !Aligned(first_position, sizeof(int64_t))) {
    return absl::InvalidArgumentError(
        "AppendKv: first_position must be a non-null, aligned device pointer");
  }
  if (tokens < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("AppendKv: tokens must be >= 0, but got %d", tokens));
  }
  if (tokens == 0) return absl::OkStatus();
  const int64_t vectors_per_token = int64_t{cache.num_kv_heads} * cache.head_dim / 8;
  const int64_t written = std::min<int64_t>(tokens, cache.capacity) * vectors_per_token;
  const int64_t blocks = std::min(kMaxBlocks, (written + kThreads - 1) / kThreads);
  return LaunchKernel(AppendKvKernel, dim3(static_cast<unsigned>(blocks)), dim3(kThreads), 0,
                      stream, /*overlap=*/true, reinterpret_cast<uint4*>(cache.k),
                      reinterpret_cast<uint4*>(cache.v), reinterpret_cast<const uint4*>(k),
                      reinterpret_cast<const uint4*>(v), cache.capacity, vectors_per_token, tokens,
                      first_position);
}

}  // namespace gquant::cuda
