// Prefill attention (prefill_attention.cuh) on a 2048-token prompt chunk for
// the Gemma 4 31B sliding (32 / 16 heads of 256, window 1024) and full
// (32 / 4 heads of 512) layers, plus E2B's two layer kinds, against cuBLAS
// bf16 batched GEMMs (cublasGemmStridedBatchedEx over the query heads) for
// the two products of the same, unmasked shape measured in the same run:
// S = Q Kᵀ [tokens x keys] and O = S V, keys = every position the chunk's
// queries see (ChunkKeyRange). cuBLAS is the tensor-core throughput a plain
// GEMM reaches at these shapes; the kernel does only the visible pairs.
//
// Counters: TFLOPS = 4 · head_dim · heads · visible (query, key) pairs per
// second (VisiblePairs: only what the mask lets through); cublas_TFLOPS =
// 4 · head_dim · heads · tokens · keys per second of the two cuBLAS GEMMs;
// vs_cublas = TFLOPS / cublas_TFLOPS; weight_GBps = bytes of q, out and the
// visible cache entries per second; copy_GBps = the copy ceiling.
// No rotation: attention is compute bound and its inputs (16-64 MiB of q
// and cache per launch) are read many times over from L2 within a launch.
#include <cublas_v2.h>
#include <cuda_bf16.h>

#include <algorithm>
#include <chrono>
#include <iterator>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "cuda_bench_util.h"
#include "gquant/gemma4/attention_shapes.h"
#include "prefill_attention.cuh"

namespace gquant::cuda {
namespace {

using namespace bench;

using Layer = gemma4::AttentionShape;
constexpr std::span<const Layer> kLayers = gemma4::kGemma4AttentionShapes;

DeviceBuffer<uint16_t> RandomDevice(int64_t count, uint64_t seed) {
  return Upload(RandomHost<uint16_t>(count, seed));
}

// A prompt chunk of `tokens` queries from `first_position` and a cache that
// holds exactly the keys they see.
struct AttentionProblem {
  AttentionProblem(const Layer& layer, int64_t tokens, int64_t first_position)
      : layer(layer),
        tokens(tokens),
        first_position(first_position),
        keys(ChunkKeyRange(first_position, tokens, layer.window)),
        q(RandomDevice(tokens * layer.num_heads * layer.head_dim, 1)),
        k(RandomDevice(keys.size() * layer.num_kv_heads * layer.head_dim, 2)),
        v(RandomDevice(keys.size() * layer.num_kv_heads * layer.head_dim, 3)) {
    auto buffer = DeviceBuffer<uint16_t>::Allocate(tokens * layer.num_heads * layer.head_dim);
    if (!buffer.ok()) std::abort();
    out = *std::move(buffer);
  }

  void Launch(cudaStream_t stream, PrefillAttentionPath path) {
    const KvLayerView cache{reinterpret_cast<__nv_bfloat16*>(k.data()),
                            reinterpret_cast<__nv_bfloat16*>(v.data()), keys.size(),
                            layer.num_kv_heads, layer.head_dim};
    if (!PrefillAttention(reinterpret_cast<const __nv_bfloat16*>(q.data()), tokens, layer.num_heads,
                          first_position, layer.window, cache,
                          reinterpret_cast<__nv_bfloat16*>(out.data()), stream, nullptr, path)
             .ok()) {
      std::abort();
    }
  }

  double flops() const {
    return 4.0 * layer.head_dim * layer.num_heads *
           static_cast<double>(VisiblePairs(first_position, tokens, layer.window));
  }
  // q and out, and every cache entry once.
  int64_t bytes() const {
    return 2 * (2 * tokens * layer.num_heads + 2 * keys.size() * layer.num_kv_heads) *
           layer.head_dim;
  }

  const Layer& layer;
  int64_t tokens, first_position;
  KeyRange keys;
  DeviceBuffer<uint16_t> q, k, v, out;
};

// The two products of multi-head attention at the same shape, unmasked,
// with one K and V per query head: per head h, S_h = Q_h K_hᵀ [tokens x
// keys] then O_h = S_h V_h, bf16 in and out, fp32 compute. Row-major
// [rows, heads, D] q, k, v and out are, per head, column-major D x rows
// matrices with leading dimension heads · D and batch stride D; S is [heads,
// tokens, keys], i.e. column-major keys x tokens per head.
class CublasAttentionGemms {
 public:
  CublasAttentionGemms(const Layer& layer, int64_t tokens, int64_t keys)
      : heads_(layer.num_heads),
        d_(layer.head_dim),
        tokens_(static_cast<int>(tokens)),
        keys_(static_cast<int>(keys)),
        q_(RandomDevice(tokens * heads_ * d_, 4)),
        k_(RandomDevice(keys * heads_ * d_, 5)),
        v_(RandomDevice(keys * heads_ * d_, 6)) {
    auto s = DeviceBuffer<uint16_t>::Allocate(int64_t{heads_} * tokens * keys);
    auto o = DeviceBuffer<uint16_t>::Allocate(tokens * heads_ * d_);
    if (!s.ok() || !o.ok()) std::abort();
    s_ = *std::move(s);
    o_ = *std::move(o);
    if (cublasCreate(&handle_) != CUBLAS_STATUS_SUCCESS) std::abort();
  }
  ~CublasAttentionGemms() { cublasDestroy(handle_); }
  CublasAttentionGemms(const CublasAttentionGemms&) = delete;
  CublasAttentionGemms& operator=(const CublasAttentionGemms&) = delete;

  static double Flops(const Layer& layer, int64_t tokens, int64_t keys) {
    return 4.0 * layer.head_dim * layer.num_heads * static_cast<double>(tokens) *
           static_cast<double>(keys);
  }
  double flops() const { return 4.0 * d_ * heads_ * static_cast<double>(tokens_) * keys_; }

  void Launch() {
    const float alpha = 1, beta = 0;
    const int ld = heads_ * d_;
    const int64_t s_stride = int64_t{tokens_} * keys_;
    // Sᵀ (keys x tokens) = (K as D x keys)ᵀ · (Q as D x tokens).
    if (cublasGemmStridedBatchedEx(
            handle_, CUBLAS_OP_T, CUBLAS_OP_N, keys_, tokens_, d_, &alpha, k_.data(), CUDA_R_16BF,
            ld, d_, q_.data(), CUDA_R_16BF, ld, d_, &beta, s_.data(), CUDA_R_16BF, keys_, s_stride,
            heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      std::abort();
    }
    // Oᵀ (D x tokens) = (V as D x keys) · Sᵀ (keys x tokens).
    if (cublasGemmStridedBatchedEx(
            handle_, CUBLAS_OP_N, CUBLAS_OP_N, d_, tokens_, keys_, &alpha, v_.data(), CUDA_R_16BF,
            ld, d_, s_.data(), CUDA_R_16BF, keys_, s_stride, &beta, o_.data(), CUDA_R_16BF, ld, d_,
            heads_, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT) != CUBLAS_STATUS_SUCCESS) {
      std::abort();
    }
  }

 private:
  int heads_, d_, tokens_, keys_;
  DeviceBuffer<uint16_t> q_, k_, v_, s_, o_;
  cublasHandle_t handle_;
};

// The cuBLAS pair's seconds per launch for (layer, tokens, first_position):
// median of 5 batches after ~0.1 s of warm-up (the sustained clock the
// kernel is timed at, as prefill_gemm_bench.cc does). Once per process.
double CublasSeconds(int layer_index, int64_t tokens, int64_t first_position) {
  static std::map<std::tuple<int, int64_t, int64_t>, double> cache;
  const auto key = std::make_tuple(layer_index, tokens, first_position);
  if (auto it = cache.find(key); it != cache.end()) return it->second;
  const Layer& layer = kLayers[layer_index];
  CublasAttentionGemms cublas(layer, tokens,
                              ChunkKeyRange(first_position, tokens, layer.window).size());
  const auto start = std::chrono::steady_clock::now();
  while (std::chrono::steady_clock::now() - start < std::chrono::milliseconds(100)) {
    for (int b = 0; b < kBatch; ++b) cublas.Launch();
    Check(cudaDeviceSynchronize());
  }
  EventTimer timer;
  std::vector<float> ms(5);
  for (float& t : ms) {
    t = timer.Milliseconds(nullptr, [&] {
      for (int b = 0; b < kBatch; ++b) cublas.Launch();
    });
  }
  std::sort(ms.begin(), ms.end());
  return cache[key] = ms[ms.size() / 2] / 1e3 / kBatch;
}

std::string Label(const AttentionProblem& p, const char* what) {
  return absl::StrCat(std::string(p.layer.name), " ", what, ", ", p.tokens, " tokens from ",
                      p.first_position, " (", p.keys.size(), " keys)");
}

// The kernel. Args: layer index, tokens, first position, kernel (0:
// mma.sync, 1: wgmma).
void BM_PrefillAttention(benchmark::State& state) {
  if (NoGpu(state)) return;
  const bool wgmma = state.range(3) != 0;
  if (wgmma && !PrefillAttentionWgmmaAvailable()) {
    state.SkipWithError("the wgmma kernel needs an sm_90a build and a compute capability 9.0 GPU");
    return;
  }
  const PrefillAttentionPath path =
      wgmma ? PrefillAttentionPath::kWgmma : PrefillAttentionPath::kMmaSync;
  const int layer_index = static_cast<int>(state.range(0));
  AttentionProblem p(kLayers[layer_index], state.range(1), state.range(2));
  const double cublas_seconds = CublasSeconds(layer_index, p.tokens, p.first_position);
  TimeLaunches(state, [&](int64_t) { p.Launch(nullptr, path); });
  Report(state, p.bytes());
  const double iterations = static_cast<double>(state.iterations());
  state.counters["TFLOPS"] =
      benchmark::Counter(p.flops() * iterations / 1e12, benchmark::Counter::kIsRate);
  const double cublas_tflops =
      CublasAttentionGemms::Flops(p.layer, p.tokens, p.keys.size()) / cublas_seconds / 1e12;
  state.counters["cublas_TFLOPS"] = cublas_tflops;
  state.counters["vs_cublas"] = benchmark::Counter(p.flops() * iterations / 1e12 / cublas_tflops,
                                                   benchmark::Counter::kIsRate);
  state.SetLabel(Label(p, wgmma ? "flash attention (wgmma)" : "flash attention (mma.sync)"));
}

// cuBLAS's two unmasked GEMMs at the same shape. Args as above.
void BM_PrefillAttentionCublas(benchmark::State& state) {
  if (NoGpu(state)) return;
  const Layer& layer = kLayers[state.range(0)];
  const int64_t tokens = state.range(1), first_position = state.range(2);
  const KeyRange keys = ChunkKeyRange(first_position, tokens, layer.window);
  CublasAttentionGemms cublas(layer, tokens, keys.size());
  TimeLaunches(state, [&](int64_t) { cublas.Launch(); });
  Report(state, 2 * (2 * tokens + 2 * keys.size()) * layer.num_heads * layer.head_dim);
  state.counters["TFLOPS"] = benchmark::Counter(
      cublas.flops() * static_cast<double>(state.iterations()) / 1e12, benchmark::Counter::kIsRate);
  state.SetLabel(absl::StrCat(std::string(layer.name), " cublas bf16 S = Q K^T and O = S V, ",
                              tokens, " tokens x ", keys.size(), " keys, unmasked"));
}

// (layer, tokens, first position) of every chunk measured: a 2048-token
// prompt (first chunk) on every layer; the 31B layers also as a later chunk
// (from position 2048: the window's steady state on sliding layers, 4096
// keys on full ones), and the 31B full layer at 16K keys (a long prompt's
// later chunk).
std::vector<std::vector<int64_t>> ChunkArgs() {
  std::vector<std::vector<int64_t>> args;
  for (int64_t layer = 0; layer < static_cast<int64_t>(std::size(kLayers)); ++layer) {
    args.push_back({layer, 2048, 0});
    if (layer < 2) args.push_back({layer, 2048, 2048});
    if (layer == 1) args.push_back({layer, 2048, 14336});
  }
  return args;
}
void Chunks(benchmark::internal::Benchmark* b) {
  for (const std::vector<int64_t>& a : ChunkArgs()) b->Args(a);
}
// The same for both kernels.
void KernelChunks(benchmark::internal::Benchmark* b) {
  for (const std::vector<int64_t>& a : ChunkArgs()) {
    for (int64_t wgmma : {0, 1}) {
      std::vector<int64_t> with_kernel = a;
      with_kernel.push_back(wgmma);
      b->Args(with_kernel);
    }
  }
}

BENCHMARK(BM_PrefillAttention)
    ->ArgNames({"layer", "tokens", "first", "wgmma"})
    ->Apply(KernelChunks)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.2);
BENCHMARK(BM_PrefillAttentionCublas)
    ->ArgNames({"layer", "tokens", "first"})
    ->Apply(Chunks)
    ->UseManualTime()
    ->Unit(benchmark::kMicrosecond)
    ->MinTime(0.2);

}  // namespace
}  // namespace gquant::cuda
