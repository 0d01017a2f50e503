// The GPU key/value cache of one attention layer and the append that decode
// and prefill use to write new positions into it.
//
// Layout (the same as the CPU reference's KvView, src/gemma4/cpu_ops.h, in
// bf16 instead of float32): k and v are each [capacity, num_kv_heads,
// head_dim], position p lives in slot p % capacity. A full-attention layer
// gets a capacity of the whole context (a flat buffer: slot = position); a
// sliding layer gets at least its window and uses the cache as a ring. K and V
// are always stored separately, also on the 31B full layers where V comes
// from the K projection (spec gemma4.md §2.5: they differ after the norms and
// RoPE).
#ifndef GQUANT_CUDA_KV_CACHE_CUH_
#define GQUANT_CUDA_KV_CACHE_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"

namespace gquant::cuda {

// One layer's cache (device pointers, not owned).
struct KvLayerView {
  __nv_bfloat16* k = nullptr;  // [capacity, num_kv_heads, head_dim]
  __nv_bfloat16* v = nullptr;  // [capacity, num_kv_heads, head_dim]
  int64_t capacity = 0;        // slots; position p is in slot p % capacity
  int num_kv_heads = 0;
  int head_dim = 0;
};

// Writes `tokens` new keys and values, k and v [tokens, num_kv_heads,
// head_dim] bf16, at positions *first_position + i (slot (*first_position +
// i) % capacity). first_position is a device pointer (int64) so that a CUDA
// graph of the decode step, captured once, replays for every position: the
// host only updates the value between replays. When tokens > capacity only
// the last `capacity` tokens are written (the earlier ones would be
// overwritten in the same ring anyway), so the result never depends on
// thread timing. A negative *first_position writes nothing.
//
// Requires head_dim % 8 == 0 and 16-byte aligned k, v and cache pointers (the
// copy moves 16 bytes per thread). Launched with programmatic dependent
// launch (launch.cuh). tokens == 0 is a no-op. InvalidArgument naming the
// argument for a bad shape or pointer; Internal for a launch error.
absl::Status AppendKv(const KvLayerView& cache, const __nv_bfloat16* k, const __nv_bfloat16* v,
                      int tokens, const int64_t* first_position, cudaStream_t stream);

// The checks AppendKv makes on `cache` alone (also used by the attention
// launchers): non-null 16-byte aligned k and v, capacity >= 1,
// num_kv_heads >= 1, head_dim >= 8 and a multiple of 8. `what` prefixes the
// message (the caller's name).
absl::Status CheckKvLayerView(const KvLayerView& cache, const char* what);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_KV_CACHE_CUH_
