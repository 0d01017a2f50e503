#include <cuda_bf16.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <optional>
#include <tuple>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "activations.cuh"
#include "attention_inputs.cuh"
#include "convert.cuh"
#include "cuda_status.cuh"
#include "decode_attention.cuh"
#include "device_buffer.cuh"
#include "device_experts.cuh"
#include "device_linear.cuh"
#include "device_upload.cuh"
#include "gemma4/cpu_ops.h"  // RopeInverseFrequencies: the same float32 table as the CPU
#include "gpu_model.cuh"
#include "gpu_quantize.cuh"
#include "gpu_sampler.cuh"
#include "gquant/dtype.h"
#include "gquant/gemma4/backend_weights.h"
#include "gquant/gemma4/image_prompt.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"
#include "kv_cache.cuh"
#include "moe_kernels.cuh"
#include "per_layer_inputs.cuh"
#include "prefill_attention.cuh"
#include "rms_norm.cuh"

namespace gquant::cuda {
namespace {

using bf16 = __nv_bfloat16;
using gemma4::LayerPlan;
using gemma4::LayerType;
using gemma4::TextConfig;
using Clock = std::chrono::steady_clock;

// Python-float scales that PyTorch multiplies into float32 tensors as float32
// (as the CPU reference computes them).
float PowF(double base, double exponent) { return static_cast<float>(std::pow(base, exponent)); }

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

__global__ void SetPositionKernel(int64_t* position, int64_t value) { *position = value; }
__global__ void AdvancePositionKernel(int64_t* position) { *position += 1; }

// Linears that read the same input (q, k, v; gate, up): one stacked GEMV
// when their forms allow, else one launch each. Either way Run leaves member
// i's [t, widths[i]] block at y + t * (widths[0] + ... + widths[i-1]), so
// consumers see contiguous per-member outputs. The MLP's int4 gate and up
// may instead be one gate / up pair weight (RunGeluGate).
struct LinearGroup {
  std::vector<DeviceLinear> linears;  // one (stacked) or one per member
  std::vector<int64_t> widths;        // N of each member

  // y = the members' outputs as blocks [t, width_i] one after another. One
  // token runs a stack as one launch ([1, total] is those blocks); more run
  // each member's rows straight into its block (copying them out of one
  // [t, total] output cost a 31B 2K prefill ~10% of its time).
  absl::Status Run(const bf16* x, int64_t t, bf16* y, LinearContext& context,
                   cudaStream_t stream) const {
    if (t == 1 && linears.size() == 1) return linears[0].Run(x, t, y, context, stream);
    int64_t offset = 0;
    for (size_t i = 0; i < widths.size(); ++i) {
      const DeviceLinear& linear = linears.size() == 1 ? linears[0] : linears[i];
      const int64_t begin = linears.size() == 1 ? offset : 0;
      GQ_RETURN_IF_ERROR(linear.RunRows(x, t, begin, widths[i], y + t * offset, context, stream));
      offset += widths[i];
    }
    return absl::OkStatus();
  }

  // y [t, widths[0]] = gelu_tanh(member 0) * member 1 (the MLP's gate and
  // up), through `scratch` [t, 2 widths[0]] where needed: a gate / up pair
  // weight (DeviceLinear::FromPackedGatePairs) forms the product in its GEMV
  // at t <= 16 (one launch less per decode layer), others run the members
  // and the elementwise product.
  absl::Status RunGeluGate(const bf16* x, int64_t t, bf16* scratch, bf16* y, LinearContext& context,
                           cudaStream_t stream) const {
    if (linears.size() == 1 && linears[0].gate_pairs()) {
      return linears[0].RunGeluGate(x, t, scratch, y, context, stream);
    }
    GQ_RETURN_IF_ERROR(Run(x, t, scratch, context, stream));
    const int64_t width = widths[0];
    return GeluTanhMul(scratch, width, scratch + t * width, width, t, width, y, stream);
  }
};

// One decoder layer's weights on the device (spec §2.4-§2.6).
struct LayerWeights {
  LinearGroup qkv;      // q, k, v (k only on K=V layers; q only on KV-shared ones)
  LinearGroup gate_up;  // the MLP's gate and up
  DeviceLinear o, down, ple_gate, ple_projection;
  bool has_v = false;  // false on K=V and KV-shared layers
  DeviceBuffer<bf16> input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm;
  DeviceBuffer<bf16> q_norm, k_norm, post_ple_norm;
  DeviceBuffer<float> layer_scalar;  // [1]
  DeviceBuffer<float> inv_freq;      // [head_dim / 2]
  // Mixture of experts (26B-A4B), beside the dense MLP: the router in
  // float32 (moe_kernels.cuh says why) and the experts.
  DeviceBuffer<float> router_proj, router_scale, per_expert_scale;  // [E, H], [H], [E]
  DeviceBuffer<bf16> pre_feedforward_norm_2, post_feedforward_norm_1, post_feedforward_norm_2;
  DeviceExperts experts_gate_up, experts_down;  // [E] x [2I, H], [E] x [H, I]
};

}  // namespace

// ---------------------------------------------------------------- the model

struct GpuModel::State {
  std::unique_ptr<gemma4::WeightSource> source;
  gemma4::ModelPlan plan;
  GpuModelOptions options;
  GpuLoadReport report;
  std::optional<Recipe> recipe;
  std::unique_ptr<ThreadPool> pool;

  DeviceLinear embed, lm_head, ple_embed, ple_projection;
  bool tied_head = true;
  DeviceBuffer<bf16> final_norm, ple_projection_norm;
  std::vector<LayerWeights> layers;
  // The widest activations any layer needs, to size a sequence's buffers.
  int64_t max_q_width = 0, max_kv_width = 0, max_mlp_width = 0;
  // Some MoE layer's experts are bf16 (not DeviceExperts::selectable): its
  // decode routes on the host, so the decode step is not captured.
  bool moe_host_routing = false;
  // Some MoE layer's experts are int4 or int8: grouped prefill GEMMs need
  // room to dequantize them (SortedRunScratch).
  bool quantized_experts = false;
  int64_t weights_done = 0, weights_total = 0;

  const TextConfig& config() const { return plan.config; }
  const DeviceLinear& head() const { return tied_head ? embed : lm_head; }

  // Plain weights a recipe quantizes are quantized here on the GPU (the
  // same codes as on the CPU, in a fraction of the time).
  gemma4::BackendWeightOptions LoadOptions(std::string_view match_as) const {
    return {recipe ? &*recipe : nullptr, pool.get(), QuantizeOnGpu, match_as};
  }

  absl::StatusOr<gemma4::BackendWeight> LoadWeight(const std::string& name) {
    GQ_ASSIGN_OR_RETURN(
        gemma4::BackendWeight weight,
        gemma4::LoadBackendWeight(*source, name, PackBackend::kCuda, LoadOptions(/*match_as=*/"")));
    if (!weight.note.empty()) report.notes.push_back(absl::StrCat(name, ": ", weight.note));
    if (weight.quantized_on_load) ++report.quantized_on_load;
    Loaded(name);
    return weight;
  }
  void Loaded(const std::string& name) {
    ++weights_done;
    if (options.progress) {
      options.progress(
          {.tensors_done = weights_done, .tensors_total = weights_total, .current = name});
    }
  }

  void Count(const DeviceLinear& linear, int matrices) {
    Count(linear.form(), linear.num_bytes(), matrices);
  }
  void Count(LinearForm form, int64_t bytes, int matrices) {
    report.weight_bytes += bytes;
    switch (form) {
      case LinearForm::kInt4:
        report.int4_matrices += matrices;
        break;
      case LinearForm::kInt8:
        report.int8_matrices += matrices;
        break;
      case LinearForm::kBf16:
        report.bf16_matrices += matrices;
        break;
    }
  }

  // One DeviceLinear from one loaded matrix: packed, or bf16 from floats.
  absl::StatusOr<DeviceLinear> UploadCountedLinear(const gemma4::BackendWeight& weight,
                                                   const std::string& name) {
    GQ_ASSIGN_OR_RETURN(DeviceLinear linear, cuda::UploadLinear(weight, name));
    Count(linear, 1);
    return linear;
  }

  // The matrices `names` (same K) as one stacked DeviceLinear when their
  // forms allow (all packed alike, or all float), else one each; with
  // `gate_up`, two int4 matrices become a gate / up pair weight
  // (LinearGroup::RunGeluGate) where their shapes allow.
  absl::StatusOr<LinearGroup> LoadGroup(std::span<const std::string> names, bool gate_up = false) {
    std::vector<gemma4::BackendWeight> weights;
    LinearGroup group;
    for (const std::string& name : names) {
      GQ_ASSIGN_OR_RETURN(weights.emplace_back(), LoadWeight(name));
      const gemma4::BackendWeight& w = weights.back();
      if (w.shape.size() != 2 || (!w.packed.empty() && w.packed.size() != 1)) {
        return absl::InvalidArgumentError(
            absl::StrCat(source->description(), ": weight '", name, "' is not a matrix"));
      }
      group.widths.push_back(w.shape[0]);
    }
    if (names.size() > 1) {
      const std::string label = absl::StrJoin(names, " + ");
      if (gate_up && names.size() == 2 && weights[0].packed.size() == 1 &&
          weights[1].packed.size() == 1) {
        absl::StatusOr<DeviceLinear> pairs =
            DeviceLinear::FromPackedGatePairs(weights[0].packed[0], weights[1].packed[0], label);
        if (pairs.ok()) {
          Count(*pairs, 2);
          group.linears.push_back(*std::move(pairs));
          return group;
        }
        // Not int4, or not in whole 16-row blocks: stacked or one each.
        if (!absl::IsInvalidArgument(pairs.status())) return pairs.status();
      }
      auto stack = [&]() -> absl::StatusOr<DeviceLinear> {
        if (std::all_of(weights.begin(), weights.end(),
                        [](const auto& w) { return w.packed.size() == 1; })) {
          std::vector<PackedMatrix> parts;
          for (const gemma4::BackendWeight& w : weights) parts.push_back(w.packed[0]);
          return DeviceLinear::FromPackedRows(parts, label);
        }
        if (std::all_of(weights.begin(), weights.end(),
                        [](const auto& w) { return w.packed.empty(); })) {
          std::vector<std::span<const float>> parts;
          for (const gemma4::BackendWeight& w : weights) parts.push_back(w.values);
          return DeviceLinear::FromFloatRows(parts, group.widths, weights[0].shape[1], label);
        }
        return absl::InvalidArgumentError("mixed forms");
      };
      absl::StatusOr<DeviceLinear> stacked = stack();
      if (stacked.ok()) {
        Count(*stacked, static_cast<int>(names.size()));
        group.linears.push_back(*std::move(stacked));
        return group;
      }
      if (!absl::IsInvalidArgument(stacked.status())) return stacked.status();
      // Not stackable (different forms or group sizes): one launch each.
    }
    for (size_t i = 0; i < names.size(); ++i) {
      GQ_ASSIGN_OR_RETURN(group.linears.emplace_back(), UploadCountedLinear(weights[i], names[i]));
    }
    return group;
  }
  absl::StatusOr<DeviceLinear> LoadLinear(const std::string& name) {
    GQ_ASSIGN_OR_RETURN(gemma4::BackendWeight weight, LoadWeight(name));
    if (weight.shape.size() != 2 || (!weight.packed.empty() && weight.packed.size() != 1)) {
      return absl::InvalidArgumentError(
          absl::StrCat(source->description(), ": weight '", name, "' is not a matrix"));
    }
    return UploadCountedLinear(weight, name);
  }

  // The float32 values of a weight no packed kernel reads (norms,
  // layer_scalar, the MoE router), dequantized if stored quantized: straight
  // from the source, so a recipe rule matching the router's projection
  // neither quantizes it on load nor counts it as quantized.
  absl::StatusOr<std::vector<float>> LoadVector(const std::string& name) {
    GQ_ASSIGN_OR_RETURN(std::vector<float> values, source->Load(name));
    Loaded(name);
    return values;
  }
  absl::StatusOr<DeviceBuffer<bf16>> LoadNorm(const std::string& name) {
    GQ_ASSIGN_OR_RETURN(std::vector<float> values, LoadVector(name));
    report.weight_bytes += static_cast<int64_t>(values.size() * sizeof(bf16));
    return UploadBf16(values);
  }
  // LoadVector's values as float32 on the device.
  absl::StatusOr<DeviceBuffer<float>> LoadFloat(const std::string& name) {
    GQ_ASSIGN_OR_RETURN(std::vector<float> values, LoadVector(name));
    report.weight_bytes += static_cast<int64_t>(values.size() * sizeof(float));
    return Upload<float>(values);
  }

  // A 3-D [E, N, K] expert weight, one DeviceLinear per expert.
  absl::StatusOr<DeviceExperts> LoadExperts(const std::string& name) {
    GQ_ASSIGN_OR_RETURN(gemma4::BackendWeight weight, LoadWeight(name));
    if (weight.shape.size() != 3) {
      return absl::InvalidArgumentError(
          absl::StrCat(source->description(), ": weight '", name, "' is not [experts, N, K]"));
    }
    const int count = static_cast<int>(weight.shape[0]);
    GQ_ASSIGN_OR_RETURN(DeviceExperts experts,
                        !weight.packed.empty()
                            ? DeviceExperts::FromPacked(weight.packed, name)
                            : DeviceExperts::FromFloat(weight.values, count, weight.shape[1],
                                                       weight.shape[2], name));
    Count(experts.form(), experts.num_bytes(), experts.count());
    report.expert_bytes += experts.num_bytes();
    quantized_experts |= experts.form() != LinearForm::kBf16;
    if (!experts.selectable() && !moe_host_routing) {
      moe_host_routing = true;
      report.notes.push_back(absl::StrCat(
          name, ": ", std::string(LinearFormName(experts.form())),
          " experts; decode routes tokens on the host (int4 and int8 experts are chosen on "
          "the GPU), "
          "without a CUDA graph"));
    }
    return experts;
  }

  absl::Status LoadLayer(const LayerPlan& layer) {
    const std::string p = absl::StrCat("layers.", layer.index, ".");
    LayerWeights& w = layers.emplace_back();
    GQ_ASSIGN_OR_RETURN(w.input_norm, LoadNorm(p + "input_layernorm.weight"));
    std::vector<std::string> qkv = {p + "self_attn.q_proj.weight"};
    if (!layer.kv_shared) {
      qkv.push_back(p + "self_attn.k_proj.weight");
      if (!layer.v_from_k) qkv.push_back(p + "self_attn.v_proj.weight");
    }
    w.has_v = qkv.size() == 3;
    GQ_ASSIGN_OR_RETURN(w.qkv, LoadGroup(qkv));
    GQ_ASSIGN_OR_RETURN(w.q_norm, LoadNorm(p + "self_attn.q_norm.weight"));
    if (!layer.kv_shared) {
      GQ_ASSIGN_OR_RETURN(w.k_norm, LoadNorm(p + "self_attn.k_norm.weight"));
    }
    GQ_ASSIGN_OR_RETURN(w.o, LoadLinear(p + "self_attn.o_proj.weight"));
    GQ_ASSIGN_OR_RETURN(w.post_attention_norm, LoadNorm(p + "post_attention_layernorm.weight"));
    GQ_ASSIGN_OR_RETURN(w.pre_feedforward_norm, LoadNorm(p + "pre_feedforward_layernorm.weight"));
    const std::string gate_up[] = {p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"};
    GQ_ASSIGN_OR_RETURN(w.gate_up, LoadGroup(gate_up, /*gate_up=*/true));
    GQ_ASSIGN_OR_RETURN(w.down, LoadLinear(p + "mlp.down_proj.weight"));
    GQ_ASSIGN_OR_RETURN(w.post_feedforward_norm, LoadNorm(p + "post_feedforward_layernorm.weight"));
    if (layer.has_moe) {
      GQ_ASSIGN_OR_RETURN(w.router_proj, LoadFloat(p + "router.proj.weight"));
      GQ_ASSIGN_OR_RETURN(w.router_scale, LoadFloat(p + "router.scale"));
      GQ_ASSIGN_OR_RETURN(w.per_expert_scale, LoadFloat(p + "router.per_expert_scale"));
      GQ_ASSIGN_OR_RETURN(w.pre_feedforward_norm_2,
                          LoadNorm(p + "pre_feedforward_layernorm_2.weight"));
      GQ_ASSIGN_OR_RETURN(w.post_feedforward_norm_1,
                          LoadNorm(p + "post_feedforward_layernorm_1.weight"));
      GQ_ASSIGN_OR_RETURN(w.post_feedforward_norm_2,
                          LoadNorm(p + "post_feedforward_layernorm_2.weight"));
      GQ_ASSIGN_OR_RETURN(w.experts_gate_up, LoadExperts(p + "experts.gate_up_proj"));
      GQ_ASSIGN_OR_RETURN(w.experts_down, LoadExperts(p + "experts.down_proj"));
    }
    if (layer.has_ple) {
      GQ_ASSIGN_OR_RETURN(w.ple_gate, LoadLinear(p + "per_layer_input_gate.weight"));
      GQ_ASSIGN_OR_RETURN(w.ple_projection, LoadLinear(p + "per_layer_projection.weight"));
      GQ_ASSIGN_OR_RETURN(w.post_ple_norm, LoadNorm(p + "post_per_layer_input_norm.weight"));
    }
    GQ_ASSIGN_OR_RETURN(std::vector<float> scalar, LoadVector(p + "layer_scalar"));
    GQ_ASSIGN_OR_RETURN(w.layer_scalar, Upload<float>(scalar));
    const std::vector<float> inv_freq =
        gemma4::cpu::RopeInverseFrequencies(layer.rope, layer.head_dim);
    GQ_ASSIGN_OR_RETURN(w.inv_freq, Upload<float>(inv_freq));

    max_q_width = std::max<int64_t>(max_q_width, int64_t{layer.num_heads} * layer.head_dim);
    max_kv_width = std::max<int64_t>(max_kv_width, int64_t{layer.num_kv_heads} * layer.head_dim);
    max_mlp_width = std::max<int64_t>(max_mlp_width, layer.mlp_width);
    return absl::OkStatus();
  }

  absl::Status LoadAll() {
    const TextConfig& c = config();
    weights_total = static_cast<int64_t>(plan.AllWeights().size());
    GQ_ASSIGN_OR_RETURN(embed, LoadLinear(std::string("embed_tokens.weight")));
    if (c.has_per_layer_embeddings()) {
      GQ_ASSIGN_OR_RETURN(ple_embed, LoadLinear(std::string("embed_tokens_per_layer.weight")));
      GQ_ASSIGN_OR_RETURN(ple_projection,
                          LoadLinear(std::string("per_layer_model_projection.weight")));
      GQ_ASSIGN_OR_RETURN(ple_projection_norm,
                          LoadNorm(std::string("per_layer_projection_norm.weight")));
    }
    for (const LayerPlan& layer : plan.layers) {
      GQ_RETURN_IF_ERROR(Annotate(LoadLayer(layer), "layer ", layer.index));
    }
    GQ_ASSIGN_OR_RETURN(final_norm, LoadNorm(std::string("norm.weight")));
    // A stored lm_head (untied, or quantized apart from the embedding) wins.
    // Quantizing on load, a tied head is the embedding under the recipe's
    // lm_head rule, as gquant-quantize writes it ("default": int4, not the
    // embedding's int8).
    tied_head = !source->Shape("lm_head.weight").has_value();
    if (!tied_head) {
      GQ_ASSIGN_OR_RETURN(lm_head, LoadLinear(std::string("lm_head.weight")));
    } else if (recipe.has_value() && !source->StoresQuantized("embed_tokens.weight")) {
      GQ_ASSIGN_OR_RETURN(
          gemma4::BackendWeight head,
          gemma4::LoadBackendWeight(*source, "embed_tokens.weight", PackBackend::kCuda,
                                    LoadOptions(/*match_as=*/"lm_head.weight")));
      if (!head.packed.empty()) {
        GQ_ASSIGN_OR_RETURN(lm_head, UploadCountedLinear(head, "lm_head.weight (tied)"));
        ++report.quantized_on_load;
        tied_head = false;
      }
    }
    if (!tied_head) report.lookup_only_bytes += embed.num_bytes();
    if (c.has_per_layer_embeddings()) report.lookup_only_bytes += ple_embed.num_bytes();
    return absl::OkStatus();
  }
};

// ------------------------------------------------------------- a sequence

struct GpuSequence::State {
  const GpuModel::State* model = nullptr;
  int64_t max_positions = 0;
  int max_chunk = 0;
  int64_t length = 0;
  cudaStream_t stream = nullptr;

  std::vector<DeviceBuffer<bf16>> k_cache, v_cache;  // per layer; empty on shared layers
  std::vector<KvLayerView> views;                    // per layer: the cache it attends to
  std::vector<DecodeAttentionWorkspace> workspaces;
  std::vector<int> workspace_of;  // per layer: index into workspaces
  int64_t cache_bytes = 0;

  // Activations for up to max_chunk tokens (bf16 unless noted).
  DeviceBuffer<float> residual;        // [C, H] float32
  DeviceBuffer<float> residual_spare;  // [H]: decode alternates (EnqueueLayers)
  DeviceBuffer<bf16> normed, qkv, attention, delta, gate_up, mlp;
  DeviceBuffer<bf16> per_layer, per_layer_context;  // [C, L * P] (PLE models)
  DeviceBuffer<bf16> head_out;                      // [kHeadRows, vocab]
  DeviceBuffer<float> logits;                       // [kHeadRows, vocab]
  DeviceBuffer<int32_t> ids;                        // [C]; ids[0] is the decode token
  DeviceBuffer<int32_t> last_key;                   // [C]: image runs' keys (prefill)
  bool open_image = false;         // the last chunk ended inside a bidirectional image
  DeviceBuffer<int64_t> position;  // [1]: the chunk's first position
  int32_t* host_token = nullptr;   // pinned, one id

  // MoE models (C tokens, top k of E experts, width I): the router's logits
  // [C, E] and choices [C, k]; the experts' input [C, H]; rows in expert
  // order [C k, H] (prefill: gathered inputs, then the experts' outputs),
  // gate_up [C k, 2I], the gated product [C k, I] and the outputs in
  // [token, slot] order [C k, H]; the prefill's gather and scatter indices
  // [2 C k] and the host's copy of the ids (pinned).
  DeviceBuffer<float> router_logits, route_weights;
  DeviceBuffer<int32_t> route_ids, route_index;
  DeviceBuffer<bf16> moe_normed, expert_rows, expert_gate_up, expert_mlp, expert_out;
  int32_t* host_route_ids = nullptr;
  // Dequantized experts for grouped prefill GEMMs (max_chunk > 16 only).
  std::optional<SortedRunScratch> expert_scratch;

  std::optional<LinearContext> linear_context;  // set by NewSequence
  std::optional<GpuSampler> sampler;
  cudaGraphExec_t decode_graph = nullptr;

  static constexpr int kHeadRows = 16;  // logit rows per head GEMV (Forward)

  ~State() {
    if (decode_graph != nullptr) cudaGraphExecDestroy(decode_graph);
    if (host_token != nullptr) cudaFreeHost(host_token);
    if (host_route_ids != nullptr) cudaFreeHost(host_route_ids);
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  void DropGraph() {
    if (decode_graph != nullptr) cudaGraphExecDestroy(decode_graph);
    decode_graph = nullptr;
  }
};

GpuSequence::GpuSequence(std::unique_ptr<State> state) : state_(std::move(state)) {}
GpuSequence::GpuSequence(GpuSequence&&) noexcept = default;
GpuSequence& GpuSequence::operator=(GpuSequence&&) noexcept = default;
GpuSequence::~GpuSequence() = default;
int64_t GpuSequence::length() const { return state_->length; }
int64_t GpuSequence::max_positions() const { return state_->max_positions; }
int GpuSequence::max_chunk() const { return state_->max_chunk; }
int64_t GpuSequence::cache_bytes() const { return state_->cache_bytes; }
void GpuSequence::Clear() {
  state_->length = 0;
  state_->open_image = false;
}
cudaStream_t GpuSequence::stream() const { return state_->stream; }

absl::Status GpuSequence::SkipTo(int64_t length) {
  if (length < 0 || length >= state_->max_positions) {
    return absl::InvalidArgumentError(
        absl::StrCat("SkipTo: position ", length, " outside [0, ", state_->max_positions, ")"));
  }
  state_->length = length;
  return absl::OkStatus();
}

// ------------------------------------------------------------ the forward

namespace {

// Image rows of a prefill chunk (spec §5.5): its plan (placeholders at
// plan->image_at, and the last keys the sliding layers use, already in
// seq.last_key when not empty) and the float rows (row k for image_at[k]).
struct ChunkImages {
  const gemma4::ImageChunk* plan = nullptr;
  std::span<const float> rows;
};

// Copies each run of image placeholders' rows, as bf16, over the scaled
// embeddings in `embedded` [t, H] (unscaled, as HF's masked_scatter).
absl::Status ScatterImageRows(const ChunkImages& images, int64_t h, bf16* embedded,
                              cudaStream_t stream) {
  const std::vector<int64_t>& at = images.plan->image_at;
  std::vector<uint16_t> bits(images.rows.size());
  for (size_t i = 0; i < bits.size(); ++i) bits[i] = FloatToBFloat16(images.rows[i]);
  for (size_t begin = 0; begin < at.size();) {
    size_t end = begin + 1;
    while (end < at.size() && at[end] == at[end - 1] + 1) ++end;
    // Pageable memory: the copy has taken the bytes when the call returns.
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(embedded + at[begin] * h, bits.data() + begin * h,
                                            (end - begin) * h * sizeof(uint16_t),
                                            cudaMemcpyHostToDevice, stream));
    begin = end;
  }
  return absl::OkStatus();
}

// The experts' part of an MoE layer's MLP (spec §2.4) for `t` tokens whose
// dense MLP output is in seq.delta: routing from `residual` [t, H], the chosen
// experts on pre_feedforward_layernorm_2(residual), and seq.delta replaced by
// post_feedforward_layernorm_1(dense) + post_feedforward_layernorm_2(experts).
absl::Status EnqueueExperts(const GpuModel::State& m, GpuSequence::State& s, const LayerWeights& w,
                            const float* residual, int64_t t) {
  const TextConfig& c = m.config();
  const cudaStream_t stream = s.stream;
  const int h = c.hidden_size, experts = *c.num_experts, k = *c.top_k_experts;
  const int64_t width = *c.moe_intermediate_size, pairs = t * k;
  const float eps = static_cast<float>(c.rms_norm_eps);
  GQ_RETURN_IF_ERROR(RouterLogits(residual, t, h, w.router_scale.data(), PowF(h, -0.5), eps,
                                  w.router_proj.data(), experts, s.router_logits.data(), stream));
  GQ_RETURN_IF_ERROR(RouteTopK(s.router_logits.data(), t, experts, w.per_expert_scale.data(), k,
                               s.route_ids.data(), s.route_weights.data(), stream));
  GQ_RETURN_IF_ERROR(
      RmsNorm(residual, t, h, w.pre_feedforward_norm_2.data(), eps, s.moe_normed.data(), stream));
  bf16* const gate_up = s.expert_gate_up.data();
  if (t == 1 && w.experts_gate_up.selectable() && w.experts_down.selectable()) {
    // Decode: each matrix once for all k slots, the ids read on the device.
    GQ_RETURN_IF_ERROR(w.experts_gate_up.RunSelected(s.moe_normed.data(), 0, s.route_ids.data(), k,
                                                     gate_up, stream));
    GQ_RETURN_IF_ERROR(GeluTanhMul(gate_up, 2 * width, gate_up + width, 2 * width, k, width,
                                   s.expert_mlp.data(), stream));
    GQ_RETURN_IF_ERROR(w.experts_down.RunSelected(s.expert_mlp.data(), width, s.route_ids.data(), k,
                                                  s.expert_out.data(), stream));
  } else {
    // The (token, slot) pairs sorted by expert on the host; each used
    // expert then runs once on its rows.
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s.host_route_ids, s.route_ids.data(),
                                            pairs * sizeof(int32_t), cudaMemcpyDeviceToHost,
                                            stream));
    GQ_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
    std::vector<int64_t> begin(experts + 1, 0);
    for (int64_t i = 0; i < pairs; ++i) {
      const int32_t e = s.host_route_ids[i];
      if (e < 0 || e >= experts) {
        return absl::InternalError(absl::StrCat("MoE routing chose expert ", e, " of ", experts));
      }
      ++begin[e + 1];
    }
    for (int e = 0; e < experts; ++e) begin[e + 1] += begin[e];
    // index[0, pairs): the token each sorted row reads; index[pairs, 2
    // pairs): the [token, slot] row each sorted output goes to.
    std::vector<int32_t> index(2 * pairs);
    std::vector<int64_t> next(begin.begin(), begin.end() - 1);
    for (int64_t i = 0; i < pairs; ++i) {
      const int64_t row = next[s.host_route_ids[i]]++;
      index[row] = static_cast<int32_t>(i / k);
      index[pairs + row] = static_cast<int32_t>(i);
    }
    // Pageable memory: the copy has taken the bytes when the call returns.
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s.route_index.data(), index.data(),
                                            index.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                            stream));
    bf16* const rows = s.expert_rows.data();
    GQ_RETURN_IF_ERROR(
        GatherRows(s.moe_normed.data(), s.route_index.data(), pairs, h, rows, stream));
    LinearContext& linear = *s.linear_context;
    // Many rows per expert (a long prefill chunk): grouped GEMMs on
    // dequantized experts. Few: each expert's GEMV on its int4 codes.
    int64_t used = 0;
    for (int e = 0; e < experts; ++e) used += begin[e + 1] > begin[e] ? 1 : 0;
    const bool grouped = s.expert_scratch.has_value() && pairs > 16 * used;
    const auto run = [&](const DeviceExperts& matrix, const bf16* x, bf16* y) -> absl::Status {
      if (grouped) return matrix.RunSorted(x, begin, y, *s.expert_scratch, linear, stream);
      for (int e = 0; e < experts; ++e) {
        const int64_t n = begin[e + 1] - begin[e];
        if (n == 0) continue;
        GQ_RETURN_IF_ERROR(
            matrix.Run(e, x + begin[e] * matrix.k(), n, y + begin[e] * matrix.n(), linear, stream));
      }
      return absl::OkStatus();
    };
    GQ_RETURN_IF_ERROR(run(w.experts_gate_up, rows, gate_up));
    GQ_RETURN_IF_ERROR(GeluTanhMul(gate_up, 2 * width, gate_up + width, 2 * width, pairs, width,
                                   s.expert_mlp.data(), stream));
    // The outputs over the inputs, still in expert order.
    GQ_RETURN_IF_ERROR(run(w.experts_down, s.expert_mlp.data(), rows));
    GQ_RETURN_IF_ERROR(
        ScatterRows(rows, s.route_index.data() + pairs, pairs, h, s.expert_out.data(), stream));
  }
  return CombineExperts(s.delta.data(), s.expert_out.data(), s.route_weights.data(), t, k, h,
                        w.post_feedforward_norm_1.data(), w.post_feedforward_norm_2.data(), eps,
                        s.delta.data(), stream);
}

// Queues the forward of `t` tokens (ids already in seq.ids, *seq.position =
// p0) through the final norm: seq.normed holds the normed last hidden
// states [t, H]. One token uses the decode kernels, which read the position
// on the device (so a captured graph replays at any position).
absl::Status EnqueueLayers(const GpuModel::State& m, GpuSequence::State& s, int64_t t, int64_t p0,
                           const ChunkImages& images = {}) {
  const TextConfig& c = m.config();
  const cudaStream_t stream = s.stream;
  const int64_t h = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const int layers = c.num_hidden_layers;
  const int p = c.hidden_size_per_layer_input;
  const bool decode = t == 1;
  const int64_t* position = s.position.data();
  LinearContext& linear = *s.linear_context;

  // Spec §2.2: the scaled embedding (sqrt(H) in float32), the residual.
  GQ_RETURN_IF_ERROR(
      m.embed.Gather(s.ids.data(), static_cast<int>(t), PowF(h, 0.5), s.normed.data(), stream));
  const bool has_images = images.plan != nullptr && !images.plan->image_at.empty();
  if (has_images) GQ_RETURN_IF_ERROR(ScatterImageRows(images, h, s.normed.data(), stream));
  const int32_t* last_key =
      has_images && !images.plan->last_key.empty() ? s.last_key.data() : nullptr;
  GQ_RETURN_IF_ERROR(Convert16ToFloat(DType::kBF16,
                                      reinterpret_cast<const uint16_t*>(s.normed.data()),
                                      s.residual.data(), t * h, stream));
  if (c.has_per_layer_embeddings()) {  // spec §2.3
    GQ_RETURN_IF_ERROR(m.ple_embed.Gather(s.ids.data(), static_cast<int>(t), PowF(p, 0.5),
                                          s.per_layer.data(), stream));
    GQ_RETURN_IF_ERROR(
        m.ple_projection.Run(s.normed.data(), t, s.per_layer_context.data(), linear, stream));
    GQ_RETURN_IF_ERROR(CombinePerLayerInputs(s.per_layer_context.data(), s.per_layer.data(), t,
                                             layers, p, m.ple_projection_norm.data(), PowF(h, -0.5),
                                             eps, PowF(2.0, -0.5), s.per_layer.data(), stream));
  }
  GQ_RETURN_IF_ERROR(RmsNorm(s.residual.data(), t, static_cast<int>(h),
                             m.layers[0].input_norm.data(), eps, s.normed.data(), stream));

  // Decode: a residual add + norm whose row only the next int4 GEMV reads is
  // left pending, and that GEMV forms the row in its prologue
  // (RunAfterAddNorm), storing the new residual to the other of two buffers
  // (its other blocks still read the old one): one launch and one round trip
  // less per site. Anything else first runs the norm kernel (flush).
  float* residual = s.residual.data();
  float* spare = s.residual_spare.data();
  std::optional<ResidualAddNorm> pending;
  const auto add_norm = [&](const bf16* delta_weight, const float* scalar,
                            const bf16* next_weight) {
    return ResidualAddNorm{.delta = s.delta.data(),
                           .delta_weight = delta_weight,
                           .scalar = scalar,
                           .next_weight = next_weight,
                           .eps = eps};
  };
  const auto flush = [&]() -> absl::Status {
    if (!pending.has_value()) return absl::OkStatus();
    const ResidualAddNorm row = *std::exchange(pending, std::nullopt);
    if (row.next_norm) {
      return AddNormalizedThenNorm(residual, row.delta, t, static_cast<int>(h), row.delta_weight,
                                   eps, row.scalar, row.next_weight, s.normed.data(), stream);
    }
    GQ_RETURN_IF_ERROR(AddNormalized(residual, row.delta, t, static_cast<int>(h), row.delta_weight,
                                     eps, row.scalar, stream));
    return ConvertFloatTo16(DType::kBF16, residual, reinterpret_cast<uint16_t*>(s.normed.data()),
                            t * h, stream);
  };
  const auto run_pending = [&](const DeviceLinear& linear, bf16* y,
                               const bf16* gelu_times = nullptr) -> absl::Status {
    ResidualAddNorm row = *std::exchange(pending, std::nullopt);
    row.residual = residual;
    row.residual_out = spare;
    GQ_RETURN_IF_ERROR(linear.RunAfterAddNorm(row, y, stream, gelu_times));
    std::swap(residual, spare);
    return absl::OkStatus();
  };
  // `linear` when it forms its row at decode (an int4 GEMV), else null.
  const auto fusing = [&](const DeviceLinear& linear, bool gated) -> const DeviceLinear* {
    return decode && linear.fuses_add_norm() && linear.gate_pairs() == gated ? &linear : nullptr;
  };
  // The single GEMV a group runs at decode when it forms its row, or null.
  const auto fusing_gemv = [&](const LinearGroup& group, bool gated) -> const DeviceLinear* {
    return group.linears.size() == 1 ? fusing(group.linears[0], gated) : nullptr;
  };

  for (const LayerPlan& layer : m.plan.layers) {
    const LayerWeights& w = m.layers[layer.index];
    const int nh = layer.num_heads, nkv = layer.num_kv_heads, d = layer.head_dim;
    const int64_t window = layer.type == LayerType::kSliding ? c.sliding_window : 0;

    // Attention (spec §2.5): q, k, v as blocks of s.qkv.
    if (const DeviceLinear* qkv = fusing_gemv(w.qkv, false); pending && qkv != nullptr) {
      GQ_RETURN_IF_ERROR(run_pending(*qkv, s.qkv.data()));
    } else {
      GQ_RETURN_IF_ERROR(flush());
      GQ_RETURN_IF_ERROR(w.qkv.Run(s.normed.data(), t, s.qkv.data(), linear, stream));
    }
    // q_norm + RoPE on q; k_norm + RoPE, v_norm and the cache append for K/V.
    bf16* q = s.qkv.data();
    GQ_RETURN_IF_ERROR(PrepareAttentionInputs(
        q, t, nh, nkv, d, w.has_v, layer.kv_shared, w.q_norm.data(), w.k_norm.data(), eps,
        w.inv_freq.data(), position, s.views[layer.index], stream));
    const KvLayerView& kv = s.views[layer.kv_source];
    if (decode) {
      GQ_RETURN_IF_ERROR(DecodeAttention(q, nh, kv, position, window, s.attention.data(),
                                         s.workspaces[s.workspace_of[layer.index]], stream));
    } else {
      // HF: images are bidirectional on sliding layers only (spec §6).
      GQ_RETURN_IF_ERROR(PrefillAttention(q, t, nh, p0, window, kv, s.attention.data(), stream,
                                          window > 0 ? last_key : nullptr));
    }
    GQ_RETURN_IF_ERROR(w.o.Run(s.attention.data(), t, s.delta.data(), linear, stream));

    // MLP: down(gelu_tanh(gate(x)) * up(x)), gate and up as one GEMV, on
    // pre_feedforward_layernorm(residual + post_attention_layernorm(o)).
    pending = add_norm(w.post_attention_norm.data(), nullptr, w.pre_feedforward_norm.data());
    // In MoE layers the router and the experts' norm read the new residual
    // (`residual`, swapped by run_pending) after the dense MLP.
    if (const DeviceLinear* gate_up = fusing_gemv(w.gate_up, true); gate_up != nullptr) {
      GQ_RETURN_IF_ERROR(run_pending(*gate_up, s.mlp.data()));
    } else {
      GQ_RETURN_IF_ERROR(flush());
      GQ_RETURN_IF_ERROR(w.gate_up.RunGeluGate(s.normed.data(), t, s.gate_up.data(), s.mlp.data(),
                                               linear, stream));
    }
    GQ_RETURN_IF_ERROR(w.down.Run(s.mlp.data(), t, s.delta.data(), linear, stream));
    if (layer.has_moe) GQ_RETURN_IF_ERROR(EnqueueExperts(m, s, w, residual, t));

    // The next block's pre-norm (or the final norm) fused into the last add;
    // layer_scalar multiplies the residual after the layer's last block.
    const bf16* next_norm = layer.index + 1 < layers ? m.layers[layer.index + 1].input_norm.data()
                                                     : m.final_norm.data();
    if (layer.has_ple) {  // spec §2.4, after the MLP; the PLE gate reads bf16(residual)
      // gelu_tanh(gate(bf16(residual))) * this layer's per-layer input: at
      // decode the gate GEMV's store forms the product.
      const bf16* layer_input = s.per_layer.data() + int64_t{layer.index} * p;
      pending = add_norm(w.post_feedforward_norm.data(), nullptr, nullptr);
      pending->next_norm = false;
      if (const DeviceLinear* gate = fusing(w.ple_gate, false); gate != nullptr) {
        GQ_RETURN_IF_ERROR(run_pending(*gate, s.mlp.data(), layer_input));
      } else {
        GQ_RETURN_IF_ERROR(flush());
        GQ_RETURN_IF_ERROR(w.ple_gate.Run(s.normed.data(), t, s.gate_up.data(), linear, stream));
        GQ_RETURN_IF_ERROR(GeluTanhMul(s.gate_up.data(), p, layer_input, int64_t{layers} * p, t, p,
                                       s.mlp.data(), stream));
      }
      GQ_RETURN_IF_ERROR(w.ple_projection.Run(s.mlp.data(), t, s.delta.data(), linear, stream));
      pending = add_norm(w.post_ple_norm.data(), w.layer_scalar.data(), next_norm);
    } else {
      pending = add_norm(w.post_feedforward_norm.data(), w.layer_scalar.data(), next_norm);
    }
  }
  return flush();  // the final norm
}

// Logits (after the soft-cap) of `rows` <= kHeadRows normed hidden states
// starting at row `first` of seq.normed, into seq.logits.
absl::Status EnqueueHead(const GpuModel::State& m, GpuSequence::State& s, int64_t first,
                         int64_t rows) {
  const TextConfig& c = m.config();
  const int64_t vocab = c.vocab_size;
  LinearContext& linear = *s.linear_context;
  GQ_RETURN_IF_ERROR(m.head().Run(s.normed.data() + first * c.hidden_size, rows, s.head_out.data(),
                                  linear, s.stream));
  if (c.final_logit_softcapping.has_value()) {
    return SoftCap(s.head_out.data(), rows * vocab, static_cast<float>(*c.final_logit_softcapping),
                   s.logits.data(), s.stream);
  }
  return Convert16ToFloat(DType::kBF16, reinterpret_cast<const uint16_t*>(s.head_out.data()),
                          s.logits.data(), rows * vocab, s.stream);
}

absl::Status SetPosition(GpuSequence::State& s, int64_t value) {
  SetPositionKernel<<<1, 1, 0, s.stream>>>(s.position.data(), value);
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

// One decode step on the token in ids[0] at *position: the layers, the head,
// the sampler (its id replaces ids[0]) and the position advance. Everything
// reads its inputs on the device, so it is captured once and replayed.
absl::Status EnqueueDecodeStep(const GpuModel::State& m, GpuSequence::State& s) {
  GQ_RETURN_IF_ERROR(EnqueueLayers(m, s, 1, /*p0=*/0));
  GQ_RETURN_IF_ERROR(EnqueueHead(m, s, 0, 1));
  GQ_RETURN_IF_ERROR(s.sampler->Sample(s.logits.data(), s.ids.data(), s.stream));
  AdvancePositionKernel<<<1, 1, 0, s.stream>>>(s.position.data());
  GQ_RETURN_IF_CUDA_ERROR(cudaGetLastError());
  return absl::OkStatus();
}

absl::Status CaptureDecodeGraph(const GpuModel::State& m, GpuSequence::State& s) {
  s.DropGraph();
  GQ_RETURN_IF_CUDA_ERROR(cudaStreamBeginCapture(s.stream, cudaStreamCaptureModeThreadLocal));
  const absl::Status enqueued = EnqueueDecodeStep(m, s);
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(s.stream, &graph);
  GQ_RETURN_IF_ERROR(Annotate(enqueued, "capturing the decode step"));
  GQ_RETURN_IF_CUDA_ERROR(ended);
  const cudaError_t instantiated = cudaGraphInstantiate(&s.decode_graph, graph, 0);
  cudaGraphDestroy(graph);
  GQ_RETURN_IF_CUDA_ERROR(instantiated);
  return absl::OkStatus();
}

// Checks a chunk before any work; returns its image plan (ids with the
// placeholders replaced by the pad id).
absl::StatusOr<gemma4::ImageChunk> CheckChunk(const GpuModel::State& m, const GpuSequence::State& s,
                                              std::span<const int> tokens,
                                              std::span<const float> image_rows) {
  if (s.model != &m) {
    return absl::InvalidArgumentError("GPU sequence: not made by this model's NewSequence");
  }
  if (tokens.empty()) return absl::InvalidArgumentError("Forward: empty chunk");
  if (static_cast<int64_t>(tokens.size()) > s.max_chunk) {
    return absl::InvalidArgumentError(absl::StrCat("Forward: chunk of ", tokens.size(),
                                                   " tokens, but the sequence allows at most ",
                                                   s.max_chunk));
  }
  if (s.length + static_cast<int64_t>(tokens.size()) > s.max_positions) {
    return absl::InvalidArgumentError(
        absl::StrCat("Forward: ", s.length, " cached + ", tokens.size(),
                     " new tokens exceed the sequence's ", s.max_positions, " positions"));
  }
  GQ_ASSIGN_OR_RETURN(
      gemma4::ImageChunk plan,
      gemma4::PlanImageChunk(tokens, s.length, static_cast<int64_t>(image_rows.size()),
                             m.config().hidden_size, m.source->config(), s.open_image, "Forward"));
  GQ_RETURN_IF_ERROR(gemma4::CheckTokenIds(m.config(), plan.ids, "Forward"));
  return plan;
}

// Uploads a checked chunk's ids (and image last keys), sets the position and
// queues its layers.
absl::Status EnqueueChunk(const GpuModel::State& m, GpuSequence::State& s,
                          const gemma4::ImageChunk& plan, std::span<const float> image_rows) {
  static_assert(sizeof(int) == sizeof(int32_t));
  GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s.ids.data(), plan.ids.data(),
                                          plan.ids.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                          s.stream));
  if (!plan.last_key.empty()) {
    // Positions are < 2^30 (PrefillAttention checks), so int32 holds them.
    const std::vector<int32_t> last_key(plan.last_key.begin(), plan.last_key.end());
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s.last_key.data(), last_key.data(),
                                            last_key.size() * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, s.stream));
  }
  GQ_RETURN_IF_ERROR(SetPosition(s, s.length));
  GQ_RETURN_IF_ERROR(EnqueueLayers(m, s, static_cast<int64_t>(plan.ids.size()), s.length,
                                   {.plan = &plan, .rows = image_rows}));
  s.open_image = plan.ends_in_image;
  return absl::OkStatus();
}

}  // namespace

GpuModel::GpuModel(std::unique_ptr<State> state) : state_(std::move(state)) {}
GpuModel::~GpuModel() = default;

const gemma4::ModelPlan& GpuModel::plan() const { return state_->plan; }
const gemma4::Config& GpuModel::config() const { return state_->source->config(); }
const gemma4::WeightSource& GpuModel::source() const { return *state_->source; }
const GpuLoadReport& GpuModel::load_report() const { return state_->report; }

absl::StatusOr<std::unique_ptr<GpuModel>> GpuModel::Load(const std::string& path,
                                                         const GpuModelOptions& options) {
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<gemma4::WeightSource> source, gemma4::OpenWeightSource(path));
  return FromSource(std::move(source), options);
}

absl::StatusOr<std::unique_ptr<GpuModel>> GpuModel::FromSource(
    std::unique_ptr<gemma4::WeightSource> source, const GpuModelOptions& options) {
  if (source == nullptr) return absl::InvalidArgumentError("GpuModel: null weight source");
  const Clock::time_point start = Clock::now();
  auto state = std::make_unique<State>();
  GQ_ASSIGN_OR_RETURN(state->plan, gemma4::ModelPlan::Create(source->config().text));
  GQ_RETURN_IF_ERROR(gemma4::CheckWeights(state->plan, *source));
  for (const LayerPlan& layer : state->plan.layers) {
    if (layer.head_dim != 256 && layer.head_dim != 512) {  // prefill_attention.cuh
      return absl::UnimplementedError(absl::StrCat(
          source->description(), ": layer ", layer.index, " has head_dim ", layer.head_dim,
          "; the GPU attention kernels take 256 and 512 (the released models)"));
    }
  }
  if (!options.recipe.empty()) {
    GQ_ASSIGN_OR_RETURN(state->recipe, Recipe::Load(options.recipe));
  }
  state->options = options;
  state->pool = std::make_unique<ThreadPool>(options.threads);
  state->source = std::move(source);
  GQ_RETURN_IF_ERROR(state->LoadAll());
  state->report.seconds = Seconds(start);
  return std::unique_ptr<GpuModel>(new GpuModel(std::move(state)));
}

absl::StatusOr<GpuSequence> GpuModel::NewSequence(int64_t max_positions, int max_chunk) const {
  if (max_positions < 1 || max_chunk < 1) {
    return absl::InvalidArgumentError(absl::StrCat("NewSequence: max_positions ", max_positions,
                                                   " and max_chunk ", max_chunk,
                                                   " must be at least 1"));
  }
  const State& m = *state_;
  const TextConfig& c = m.config();
  auto s = std::make_unique<GpuSequence::State>();
  s->model = &m;
  s->max_positions = max_positions;
  s->max_chunk = max_chunk;
  GQ_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  GQ_RETURN_IF_CUDA_ERROR(cudaMallocHost(&s->host_token, sizeof(int32_t)));

  // KV caches, and a decode workspace per distinct (heads, head_dim, span).
  s->k_cache.resize(m.plan.layers.size());
  s->v_cache.resize(m.plan.layers.size());
  s->views.resize(m.plan.layers.size());
  std::map<std::tuple<int, int, int64_t>, int> workspace_index;
  for (const LayerPlan& layer : m.plan.layers) {
    const int64_t capacity = gemma4::KvCacheCapacity(c, layer, max_positions, max_chunk);
    if (!layer.kv_shared) {
      const int64_t elements = capacity * layer.num_kv_heads * layer.head_dim;
      GQ_ASSIGN_OR_RETURN(s->k_cache[layer.index], DeviceBuffer<bf16>::Allocate(elements));
      GQ_ASSIGN_OR_RETURN(s->v_cache[layer.index], DeviceBuffer<bf16>::Allocate(elements));
      // Zeros, not whatever the allocator hands back: a slot never written
      // (SkipTo) must hold finite values.
      GQ_RETURN_IF_ERROR(s->k_cache[layer.index].FillBytes(0));
      GQ_RETURN_IF_ERROR(s->v_cache[layer.index].FillBytes(0));
      s->cache_bytes += 2 * elements * static_cast<int64_t>(sizeof(bf16));
      s->views[layer.index] = {s->k_cache[layer.index].data(), s->v_cache[layer.index].data(),
                               capacity, layer.num_kv_heads, layer.head_dim};
    }
  }
  for (const LayerPlan& layer : m.plan.layers) {
    // A KV-shared layer attends to its source's cache (an earlier layer).
    s->views[layer.index] = s->views[layer.kv_source];
    const KvLayerView& kv = s->views[layer.index];
    const int64_t window = layer.type == LayerType::kSliding ? c.sliding_window : 0;
    const int64_t span = DecodeMaxSpan(window, kv.capacity);
    const auto key = std::make_tuple(layer.num_heads, layer.head_dim, span);
    auto [it, inserted] = workspace_index.emplace(key, static_cast<int>(s->workspaces.size()));
    if (inserted) {
      GQ_ASSIGN_OR_RETURN(s->workspaces.emplace_back(),
                          DecodeAttentionWorkspace::Create(layer.num_heads, layer.head_dim, span));
    }
    s->workspace_of.push_back(it->second);
  }

  const int64_t chunk = max_chunk, h = c.hidden_size;
  const int64_t ple_width = int64_t{c.num_hidden_layers} * c.hidden_size_per_layer_input;
  const int64_t mlp_width = std::max<int64_t>(m.max_mlp_width, c.hidden_size_per_layer_input);
  GQ_ASSIGN_OR_RETURN(s->residual, DeviceBuffer<float>::Allocate(chunk * h));
  GQ_ASSIGN_OR_RETURN(s->residual_spare, DeviceBuffer<float>::Allocate(h));
  GQ_ASSIGN_OR_RETURN(s->normed, DeviceBuffer<bf16>::Allocate(chunk * h));
  GQ_ASSIGN_OR_RETURN(s->qkv,
                      DeviceBuffer<bf16>::Allocate(chunk * (m.max_q_width + 2 * m.max_kv_width)));
  GQ_ASSIGN_OR_RETURN(s->attention, DeviceBuffer<bf16>::Allocate(chunk * m.max_q_width));
  GQ_ASSIGN_OR_RETURN(s->delta, DeviceBuffer<bf16>::Allocate(chunk * h));
  GQ_ASSIGN_OR_RETURN(s->gate_up, DeviceBuffer<bf16>::Allocate(chunk * 2 * mlp_width));
  GQ_ASSIGN_OR_RETURN(s->mlp, DeviceBuffer<bf16>::Allocate(chunk * mlp_width));
  if (ple_width > 0) {
    GQ_ASSIGN_OR_RETURN(s->per_layer, DeviceBuffer<bf16>::Allocate(chunk * ple_width));
    GQ_ASSIGN_OR_RETURN(s->per_layer_context, DeviceBuffer<bf16>::Allocate(chunk * ple_width));
  }
  const int64_t head_elements = int64_t{GpuSequence::State::kHeadRows} * c.vocab_size;
  GQ_ASSIGN_OR_RETURN(s->head_out, DeviceBuffer<bf16>::Allocate(head_elements));
  GQ_ASSIGN_OR_RETURN(s->logits, DeviceBuffer<float>::Allocate(head_elements));
  GQ_ASSIGN_OR_RETURN(s->ids, DeviceBuffer<int32_t>::Allocate(chunk));
  GQ_ASSIGN_OR_RETURN(s->last_key, DeviceBuffer<int32_t>::Allocate(chunk));
  GQ_ASSIGN_OR_RETURN(s->position, DeviceBuffer<int64_t>::Allocate(1));
  if (c.enable_moe_block) {
    const int64_t experts = *c.num_experts, pairs = chunk * *c.top_k_experts,
                  width = *c.moe_intermediate_size;
    GQ_ASSIGN_OR_RETURN(s->router_logits, DeviceBuffer<float>::Allocate(chunk * experts));
    GQ_ASSIGN_OR_RETURN(s->route_weights, DeviceBuffer<float>::Allocate(pairs));
    GQ_ASSIGN_OR_RETURN(s->route_ids, DeviceBuffer<int32_t>::Allocate(pairs));
    GQ_ASSIGN_OR_RETURN(s->route_index, DeviceBuffer<int32_t>::Allocate(2 * pairs));
    GQ_ASSIGN_OR_RETURN(s->moe_normed, DeviceBuffer<bf16>::Allocate(chunk * h));
    GQ_ASSIGN_OR_RETURN(s->expert_rows, DeviceBuffer<bf16>::Allocate(pairs * h));
    GQ_ASSIGN_OR_RETURN(s->expert_gate_up, DeviceBuffer<bf16>::Allocate(pairs * 2 * width));
    GQ_ASSIGN_OR_RETURN(s->expert_mlp, DeviceBuffer<bf16>::Allocate(pairs * width));
    GQ_ASSIGN_OR_RETURN(s->expert_out, DeviceBuffer<bf16>::Allocate(pairs * h));
    GQ_RETURN_IF_CUDA_ERROR(cudaMallocHost(&s->host_route_ids, pairs * sizeof(int32_t)));
    if (max_chunk > 16) {
      // 32 experts at a time: 254 MB for the 26B-A4B's gate_up, a quarter
      // of dequantizing all 128 at once, and already 32 GEMMs per launch;
      // bf16 experts are read in place (no room to dequantize into).
      GQ_ASSIGN_OR_RETURN(s->expert_scratch,
                          SortedRunScratch::Create(m.quantized_experts ? 2 * width * h : 0,
                                                   std::min<int>(experts, 32)));
    }
  }
  GQ_ASSIGN_OR_RETURN(s->linear_context, LinearContext::Create());
  return GpuSequence(std::move(s));
}

absl::StatusOr<std::vector<float>> GpuModel::Forward(GpuSequence& seq, std::span<const int> tokens,
                                                     std::span<const float> image_rows) const {
  const State& m = *state_;
  GpuSequence::State& s = *seq.state_;
  GQ_ASSIGN_OR_RETURN(const gemma4::ImageChunk plan, CheckChunk(m, s, tokens, image_rows));
  const int64_t t = static_cast<int64_t>(tokens.size()), vocab = m.config().vocab_size;
  GQ_RETURN_IF_ERROR(EnqueueChunk(m, s, plan, image_rows));
  std::vector<float> logits(t * vocab);
  for (int64_t row = 0; row < t; row += GpuSequence::State::kHeadRows) {
    const int64_t rows = std::min<int64_t>(GpuSequence::State::kHeadRows, t - row);
    GQ_RETURN_IF_ERROR(EnqueueHead(m, s, row, rows));
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(logits.data() + row * vocab, s.logits.data(),
                                            rows * vocab * sizeof(float), cudaMemcpyDeviceToHost,
                                            s.stream));
  }
  GQ_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(s.stream));
  s.length += t;
  return logits;
}

absl::StatusOr<GenerateResult> GpuModel::Generate(GpuSequence& seq, std::span<const int> prompt,
                                                  const GenerateOptions& options) const {
  const State& m = *state_;
  GpuSequence::State& s = *seq.state_;
  if (s.model != &m) {
    return absl::InvalidArgumentError("Generate: sequence not made by this model's NewSequence");
  }
  if (prompt.empty()) return absl::InvalidArgumentError("Generate: empty prompt");
  if (options.max_new_tokens < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: max_new_tokens ", options.max_new_tokens, " < 1"));
  }
  const int chunk_size = options.chunk == 0 ? s.max_chunk : options.chunk;
  if (chunk_size < 1 || chunk_size > s.max_chunk) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: chunk ", options.chunk, " outside [1, ", s.max_chunk, "]"));
  }
  // The last generated token is never run through the model.
  const int64_t needed =
      s.length + static_cast<int64_t>(prompt.size()) + options.max_new_tokens - 1;
  if (needed > s.max_positions) {
    return absl::InvalidArgumentError(absl::StrCat(
        "Generate: ", s.length, " cached + ", prompt.size(), " prompt + ", options.max_new_tokens,
        " new tokens need ", needed, " positions, but the sequence has ", s.max_positions));
  }
  GQ_RETURN_IF_ERROR(options.sampler.Validate());
  // Chunks that keep each bidirectional image whole, each planned (and its
  // ids checked) before any work.
  const gemma4::Config& config = m.source->config();
  absl::StatusOr<std::vector<size_t>> ends =
      gemma4::ImageAwareChunkEnds(prompt, chunk_size, config);
  if (!ends.ok()) return Annotate(ends.status(), "Generate");
  const int64_t h = m.config().hidden_size;
  const auto is_image = [&](int id) { return config.image_token_id == id; };
  const size_t images = std::count_if(prompt.begin(), prompt.end(), is_image);
  if (options.image_rows.size() != images * h) {
    return absl::InvalidArgumentError(
        absl::StrCat("Generate: ", images, " image placeholder tokens need ", images * h,
                     " embedding values, but ", options.image_rows.size(), " were given"));
  }
  std::vector<gemma4::ImageChunk> plans;
  std::vector<std::span<const float>> chunk_rows;
  {
    size_t begin = 0, row = 0;
    bool open_image = s.open_image;
    for (const size_t end : *ends) {
      const std::span<const int> chunk = prompt.subspan(begin, end - begin);
      const size_t n = std::count_if(chunk.begin(), chunk.end(), is_image);
      chunk_rows.push_back(options.image_rows.subspan(row, n * h));
      GQ_ASSIGN_OR_RETURN(plans.emplace_back(),
                          gemma4::PlanImageChunk(chunk, s.length + static_cast<int64_t>(begin),
                                                 static_cast<int64_t>(n * h), h, config, open_image,
                                                 "Generate: prompt"));
      GQ_RETURN_IF_ERROR(gemma4::CheckTokenIds(m.config(), plans.back().ids, "Generate: prompt"));
      open_image = plans.back().ends_in_image;
      begin = end;
      row += n * h;
    }
  }
  if (!s.sampler.has_value() || !(s.sampler->config() == options.sampler)) {
    s.DropGraph();
    s.sampler.reset();
    GQ_ASSIGN_OR_RETURN(s.sampler, GpuSampler::Create(options.sampler, m.config().vocab_size));
  }

  GenerateResult result;
  auto read_token = [&](int step) -> absl::StatusOr<int> {
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(s.host_token, s.ids.data(), sizeof(int32_t),
                                            cudaMemcpyDeviceToHost, s.stream));
    GQ_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(s.stream));
    if (*s.host_token < 0) {
      return absl::InternalError(
          absl::StrCat("Generate: the logits of step ", step, " hold a NaN (no token sampled)"));
    }
    return static_cast<int>(*s.host_token);
  };
  auto take = [&](int token) {
    result.tokens.push_back(token);
    const bool stop = std::find(options.stop_ids.begin(), options.stop_ids.end(), token) !=
                      options.stop_ids.end();
    result.stopped_at_stop_id = stop;
    return stop || static_cast<int>(result.tokens.size()) == options.max_new_tokens;
  };

  // Prefill: every chunk's layers, then the head and sampler on the last row.
  const Clock::time_point prefill_start = Clock::now();
  int64_t last_rows = 0;
  for (size_t i = 0; i < plans.size(); ++i) {
    GQ_RETURN_IF_ERROR(EnqueueChunk(m, s, plans[i], chunk_rows[i]));
    last_rows = static_cast<int64_t>(plans[i].ids.size());
    s.length += last_rows;
  }
  GQ_RETURN_IF_ERROR(EnqueueHead(m, s, last_rows - 1, 1));
  GQ_RETURN_IF_ERROR(s.sampler->Sample(s.logits.data(), s.ids.data(), s.stream));
  GQ_RETURN_IF_ERROR(SetPosition(s, s.length));
  GQ_ASSIGN_OR_RETURN(int token, read_token(0));
  result.prefill_seconds = Seconds(prefill_start);
  if (take(token)) return result;

  // Decode: the token sampled last is in ids[0]; each step runs it at
  // *position, samples the next into ids[0] and advances the position.
  const bool use_graph = options.use_graph && !m.moe_host_routing;
  if (use_graph && s.decode_graph == nullptr) {
    GQ_RETURN_IF_ERROR(CaptureDecodeGraph(m, s));
  }
  const Clock::time_point decode_start = Clock::now();
  while (true) {
    if (use_graph) {
      GQ_RETURN_IF_CUDA_ERROR(cudaGraphLaunch(s.decode_graph, s.stream));
    } else {
      GQ_RETURN_IF_ERROR(EnqueueDecodeStep(m, s));
    }
    s.length += 1;
    ++result.decode_steps;
    GQ_ASSIGN_OR_RETURN(token, read_token(result.decode_steps));
    if (take(token)) break;
  }
  result.decode_seconds = Seconds(decode_start);
  return result;
}

absl::StatusOr<int64_t> DeviceMemoryInUse() {
  size_t free = 0, total = 0;
  GQ_RETURN_IF_CUDA_ERROR(cudaMemGetInfo(&free, &total));
  return static_cast<int64_t>(total - free);
}

}  // namespace gquant::cuda
