// End-to-end speed of the GPU forward (cuda/gpu_model.cuh) on Gemma 4 shaped
// models with random weights in the default recipe's forms (int4 group-32
// linears, int8 per-row embedding; gemma4/random_weight_source.h): no
// checkpoint needed, the real shapes.
//
// BM_Decode/model/context: greedy decode after `context` cached positions
// (SkipTo: decode's cost does not depend on the cached values), 32 steps per
// iteration through GpuModel::Generate (CUDA graph, GPU sampler, one 4-byte
// read per token). Counters: tokens_per_s; bytes_per_token = weight bytes a
// step reads (every matrix once; tables only gathered from, such as the PLE
// table, excluded; of an MoE layer's experts top_k / num_experts, the
// chosen ones) + the K/V rows its attention reads; floor_tokens_per_s =
// the copy ceiling measured in the same run (cudaMemcpy D2D, read + written
// bytes/s) / bytes_per_token; of_floor = tokens_per_s / floor_tokens_per_s;
// gpu_mem_GB = device memory in use with the model and this sequence.
//
// BM_Prefill/model/tokens: one prompt of `tokens` in one chunk, after an
// untimed first prompt (first_prompt_ms: its one-time set-up included).
// cublas_tokens_per_s = tokens / the summed time of cuBLAS bf16 GEMMs at
// M = tokens for every linear of the model (each distinct shape timed in the
// same run, times its count; an MoE layer's experts each at M = tokens *
// top_k / num_experts, the even split): the "cuBLAS-bf16-only estimate" (no
// attention, no norms, no routing). of_cublas = tokens_per_s / that.
#include <cuda_profiler_api.h>

#include <algorithm>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "cuda_bench_util.h"
#include "gpu_model.cuh"
#include "gquant/gemma4/random_weight_source.h"

namespace gquant::cuda {
namespace {

using namespace bench;

constexpr const char* kModels[] = {"31b", "e4b", "e2b", "26b-a4b"};

// One model at a time stays loaded (the 31B alone takes ~21 GB).
GpuModel& ModelFor(int index) {
  static int loaded = -1;
  static std::unique_ptr<GpuModel> model;
  if (loaded != index) {
    model.reset();
    absl::StatusOr<gemma4::Config> config = gemma4::ReleasedModelConfig(kModels[index]);
    if (!config.ok()) std::abort();
    auto source = gemma4::MakeRandomWeightSource(*config, {.seed = 1, .quantized = true});
    if (!source.ok()) std::abort();
    absl::StatusOr<std::unique_ptr<GpuModel>> made = GpuModel::FromSource(*std::move(source), {});
    if (!made.ok()) {
      std::fprintf(stderr, "loading %s: %s\n", kModels[index], made.status().ToString().c_str());
      std::abort();
    }
    model = *std::move(made);
    loaded = index;
    std::fprintf(stderr, "%s: %.2f GB of weights loaded in %.1f s\n", kModels[index],
                 model->load_report().weight_bytes / 1e9, model->load_report().seconds);
  }
  return *model;
}

// Bytes of K and V that decode attention reads at `position` over all layers
// (a KV-shared layer reads its source's rows again).
int64_t KvBytesRead(const gemma4::ModelPlan& plan, int64_t position) {
  int64_t bytes = 0;
  for (const gemma4::LayerPlan& layer : plan.layers) {
    int64_t visible = position + 1;
    if (layer.type == gemma4::LayerType::kSliding) {
      visible = std::min<int64_t>(visible, plan.config.sliding_window);
    }
    bytes += visible * layer.num_kv_heads * layer.head_dim * 2 * 2;
  }
  return bytes;
}

std::vector<int> RandomPrompt(int count, int vocab) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> id(3, vocab - 1);
  std::vector<int> tokens(count);
  for (int& t : tokens) t = id(rng);
  return tokens;
}

void BM_Decode(benchmark::State& state) {
  if (NoGpu(state)) return;
  constexpr int kSteps = 32;
  GpuModel& model = ModelFor(static_cast<int>(state.range(0)));
  const int64_t context = state.range(1);
  absl::StatusOr<GpuSequence> seq = model.NewSequence(context + kSteps + 1, 16);
  if (!seq.ok()) {
    state.SkipWithError(seq.status().ToString().c_str());
    return;
  }
  const std::vector<int> token = {5};
  double seconds = 0;
  int steps = 0;
  for (auto _ : state) {
    if (!seq->SkipTo(context).ok()) std::abort();
    absl::StatusOr<GenerateResult> result =
        model.Generate(*seq, token, {.max_new_tokens = kSteps + 1, .chunk = 1});
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      return;
    }
    state.SetIterationTime(result->decode_seconds);
    seconds += result->decode_seconds;
    steps += result->decode_steps;
  }
  const GpuLoadReport& report = model.load_report();
  const gemma4::TextConfig& c = model.config().text;
  const int64_t chosen_expert_bytes =
      c.enable_moe_block ? report.expert_bytes * *c.top_k_experts / *c.num_experts : 0;
  const int64_t bytes = report.weight_bytes - report.lookup_only_bytes - report.expert_bytes +
                        chosen_expert_bytes + KvBytesRead(model.plan(), context + kSteps / 2);
  const double tokens_per_s = steps / seconds;
  const double floor = CopyCeiling() / bytes;
  state.counters["tokens_per_s"] = tokens_per_s;
  state.counters["bytes_per_token_GB"] = bytes / 1e9;
  state.counters["floor_tokens_per_s"] = floor;
  state.counters["of_floor"] = tokens_per_s / floor;
  state.counters["copy_GBps"] = CopyCeiling() / 1e9;
  absl::StatusOr<int64_t> in_use = DeviceMemoryInUse();
  if (in_use.ok()) state.counters["gpu_mem_GB"] = *in_use / 1e9;
}

// Seconds of cuBLAS bf16 GEMMs at M = m over every linear of `plan`.
double CublasLinearSeconds(const gemma4::ModelPlan& plan, int m) {
  std::map<std::pair<int64_t, int64_t>, int> shapes;  // (N, K) -> count
  const gemma4::TextConfig& c = plan.config;
  for (const gemma4::LayerPlan& l : plan.layers) {
    const int64_t h = c.hidden_size, q = int64_t{l.num_heads} * l.head_dim,
                  kv = int64_t{l.num_kv_heads} * l.head_dim;
    ++shapes[{q, h}];
    if (!l.kv_shared) shapes[{kv, h}] += l.v_from_k ? 1 : 2;
    ++shapes[{h, q}];
    ++shapes[{2 * int64_t{l.mlp_width}, h}];
    ++shapes[{h, l.mlp_width}];
    if (l.has_ple) {
      ++shapes[{c.hidden_size_per_layer_input, h}];
      ++shapes[{h, c.hidden_size_per_layer_input}];
    }
  }
  if (c.has_per_layer_embeddings()) {
    ++shapes[{int64_t{c.num_hidden_layers} * c.hidden_size_per_layer_input, c.hidden_size}];
  }
  double seconds = CublasBf16Seconds(shapes, m);
  if (c.enable_moe_block) {
    std::map<std::pair<int64_t, int64_t>, int> experts;
    const int64_t width = *c.moe_intermediate_size;
    for (const gemma4::LayerPlan& l : plan.layers) {
      if (!l.has_moe) continue;
      experts[{2 * width, c.hidden_size}] += *c.num_experts;
      experts[{c.hidden_size, width}] += *c.num_experts;
    }
    const int per_expert = std::max(1, m * *c.top_k_experts / *c.num_experts);
    seconds += CublasBf16Seconds(experts, per_expert);
  }
  return seconds;
}

void BM_Prefill(benchmark::State& state) {
  if (NoGpu(state)) return;
  GpuModel& model = ModelFor(static_cast<int>(state.range(0)));
  const int tokens = static_cast<int>(state.range(1));
  absl::StatusOr<GpuSequence> seq = model.NewSequence(tokens, tokens);
  if (!seq.ok()) {
    state.SkipWithError(seq.status().ToString().c_str());
    return;
  }
  const std::vector<int> prompt = RandomPrompt(tokens, model.config().text.vocab_size);
  const GenerateOptions options = {.max_new_tokens = 1, .chunk = tokens};
  // The sequence's first prompt also creates the prefill GEMM's scratch and
  // cuBLAS handle and loads each GEMM kernel's module (lazy loading): ~0.1 s
  // once per process and sequence, reported apart (first_prompt_ms).
  absl::StatusOr<GenerateResult> first = model.Generate(*seq, prompt, options);
  if (!first.ok()) {
    state.SkipWithError(first.status().ToString().c_str());
    return;
  }
  double seconds = 0;
  bool profiled = false;
  for (auto _ : state) {
    seq->Clear();
    // A profiler started with --profile-from-start off sees one prompt.
    if (!profiled) cudaProfilerStart();
    absl::StatusOr<GenerateResult> result = model.Generate(*seq, prompt, options);
    if (!profiled) cudaProfilerStop();
    profiled = true;
    if (!result.ok()) {
      state.SkipWithError(result.status().ToString().c_str());
      return;
    }
    state.SetIterationTime(result->prefill_seconds);
    seconds += result->prefill_seconds;
  }
  const double tokens_per_s = tokens * state.iterations() / seconds;
  const double cublas = tokens / CublasLinearSeconds(model.plan(), tokens);
  state.counters["tokens_per_s"] = tokens_per_s;
  state.counters["cublas_tokens_per_s"] = cublas;
  state.counters["of_cublas"] = tokens_per_s / cublas;
  state.counters["first_prompt_ms"] = first->prefill_seconds * 1e3;
}

// Per model: decode at each context, then prefill, so each model loads once.
const bool kRegistered = [] {
  for (int model = 0; model < static_cast<int>(std::size(kModels)); ++model) {
    for (int64_t context : {128, 4096, 32768, 131072}) {
      benchmark::RegisterBenchmark("BM_Decode", BM_Decode)
          ->Args({model, context})
          ->ArgNames({"model", "context"})
          ->UseManualTime()
          ->Iterations(4)
          ->Unit(benchmark::kMillisecond);
    }
    benchmark::RegisterBenchmark("BM_Prefill", BM_Prefill)
        ->Args({model, 512})
        ->Args({model, 2048})
        ->ArgNames({"model", "tokens"})
        ->UseManualTime()
        ->Iterations(3)
        ->Unit(benchmark::kMillisecond);
  }
  return true;
}();

}  // namespace
}  // namespace gquant::cuda
