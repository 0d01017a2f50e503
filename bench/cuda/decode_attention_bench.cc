// Decode attention (one query token, split-K over the KV cache) on the Gemma 4
// layer shapes: the 31B full layer (32 query heads over 4 KV heads, D = 512)
// at 4K, 32K and 128K positions, the 31B sliding layer (32 over 16, D = 256,
// window 1024 on a wrapped ring), and the E2B layers (8 over 1). The baseline
// is the device copy ceiling measured in the same run (cudaMemcpy D2D of
// 1 GiB, bytes read + written); issue 7's goal is >= 80% of it at 128K.
// Short context: span 128 in a 1K or 512-slot ring, or in a full cache sized
// for 161, 4K or 128K positions (the grid follows the capacity). The visible
// rows rotate over up to 32 offsets in one cache (>= 256 MiB where that many
// fit) so L2 does not hold them. Each timed iteration is kBatch back-to-back
// launches (on a stream, or replayed from a CUDA graph as a decode step
// issues them); the time is per launch.
// Counters: weight_GBps = bytes of the visible K and V rows per second,
// copy_GBps = the copy ceiling.
#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "cuda_bench_util.h"
#include "decode_attention.cuh"
#include "gquant/gemma4/attention_shapes.h"

namespace gquant::cuda {
namespace {

using namespace bench;

using Layer = gemma4::AttentionShape;
constexpr std::span<const Layer> kLayers = gemma4::kGemma4AttentionShapes;

// Args: layer index, span (visible keys), capacity (cache slots; 0: the
// span), variant = 100 * stages + blocks per multiprocessor (0: defaults),
// graph (1: replayed from a CUDA graph). A cache larger than the span is read
// at position span - 1 (the grid is sized for the capacity, the chunks for the
// span: decode early in a long cache); otherwise full layers read a flat
// cache of exactly `span` positions at the last one, and sliding layers a
// ring of `window` slots at position 5000 (the visible keys wrap around the
// ring's end).
void BM_DecodeAttention(benchmark::State& state) {
  if (NoGpu(state)) return;
  const Layer& layer = kLayers[state.range(0)];
  const int64_t span = state.range(1);
  const int64_t capacity = std::max(span, state.range(2));
  const int variant = static_cast<int>(state.range(3));
  const DecodeAttentionTuning tuning{variant / 100, variant % 100};
  const bool graph = state.range(4) != 0;
  const int64_t position = capacity > span || layer.window == 0 ? span - 1 : 5000;
  const int64_t row = int64_t{layer.num_kv_heads} * layer.head_dim;
  const int64_t kv_bytes = span * row * 2 * 2;  // the visible K and V, bf16
  // Rotation: copy i is a cache view starting `span` rows after copy i - 1's
  // in one buffer, so each reads rows the previous ones did not.
  const int copies = Copies(kv_bytes);
  const int64_t rows = capacity + (copies - 1) * span;
  DeviceBuffer<uint16_t> k = Upload(RandomHost<uint16_t>(rows * row, 11));
  DeviceBuffer<uint16_t> v = Upload(RandomHost<uint16_t>(rows * row, 12));
  DeviceBuffer<uint16_t> q = Upload(RandomHost<uint16_t>(layer.num_heads * layer.head_dim, 13));
  DeviceBuffer<int64_t> position_d = Upload(std::vector<int64_t>{position});
  auto out = DeviceBuffer<uint16_t>::Allocate(layer.num_heads * layer.head_dim);
  auto workspace = DecodeAttentionWorkspace::Create(layer.num_heads, layer.head_dim,
                                                    DecodeMaxSpan(layer.window, capacity));
  if (!out.ok() || !workspace.ok()) std::abort();
  const auto launch = [&](int64_t i, cudaStream_t stream) {
    const int64_t offset = i % copies * span * row;
    const KvLayerView cache{reinterpret_cast<__nv_bfloat16*>(k.data() + offset),
                            reinterpret_cast<__nv_bfloat16*>(v.data() + offset), capacity,
                            layer.num_kv_heads, layer.head_dim};
    if (!DecodeAttention(reinterpret_cast<const __nv_bfloat16*>(q.data()), layer.num_heads, cache,
                         position_d.data(), layer.window,
                         reinterpret_cast<__nv_bfloat16*>(out->data()), *workspace, stream, tuning)
             .ok()) {
      std::abort();
    }
  };
  if (graph) {
    TimeGraphLaunches(state, launch);
  } else {
    TimeLaunches(state, [&](int64_t i) { launch(i, nullptr); });
  }
  Report(state, kv_bytes);
  state.SetLabel(std::string(layer.name) + " " + std::to_string(layer.num_heads) + "q/" +
                 std::to_string(layer.num_kv_heads) + "kv D=" + std::to_string(layer.head_dim) +
                 " cache " + std::to_string(capacity) + (graph ? ", graph" : ""));
}

BENCHMARK(BM_DecodeAttention)
    ->ArgNames({"layer", "span", "capacity", "variant", "graph"})
    ->Apply([](benchmark::internal::Benchmark* b) {
      for (int graph : {0, 1}) {
        for (int64_t span : {4096, 32768, 131072}) b->Args({1, span, 0, 0, graph});
        b->Args({0, 1024, 0, 0, graph});
        b->Args({3, 32768, 0, 0, graph});
        b->Args({2, 512, 0, 0, graph});
      }
      // Early in a cache (span 128: in a 1K / 512 ring, and full layers sized
      // for 161 positions as the end-to-end benchmark's, and for 4K and 128K).
      b->Args({0, 128, 1024, 0, 1});
      b->Args({2, 128, 512, 0, 1});
      for (int64_t capacity : {161, 4096, 131072}) b->Args({1, 128, capacity, 0, 1});
      b->Args({3, 128, 161, 0, 1});
      // Ring depth x blocks per multiprocessor at 128K (the default: 4
      // stages, 2 blocks), and in a decode graph on every layer.
      for (int stages : {3, 4, 6}) {
        for (int blocks : {0, 1, 2, 3}) {
          if (stages != 4 && blocks == 0) continue;
          if (blocks <= 2) b->Args({1, 131072, 0, 100 * stages + blocks, 0});
        }
      }
      for (int variant : {302, 303, 403, 404, 602}) {
        for (const auto& [layer, span] :
             {std::pair{0, 1024}, {2, 512}, {1, 4096}, {1, 32768}, {1, 131072}, {3, 32768}}) {
          b->Args({layer, span, 0, variant, 1});
        }
        b->Args({0, 128, 1024, variant, 1});
        b->Args({1, 128, 131072, variant, 1});
        b->Args({3, 128, 161, variant, 1});
      }
    })
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.05);

}  // namespace
}  // namespace gquant::cuda
