#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "activations.cuh"
#include "convert.cuh"
#include "cuda_status.cuh"
#include "device_buffer.cuh"
#include "device_linear.cuh"
#include "device_upload.cuh"
#include "gemma4/cpu_ops.h"  // RopeInverseFrequencies, ClipBounds: the CPU's float32 values
#include "gpu_quantize.cuh"
#include "gpu_vision.cuh"
#include "gquant/dtype.h"
#include "gquant/gemma4/backend_weights.h"
#include "gquant/gemma4/weight_source.h"
#include "gquant/recipe.h"
#include "gquant/status.h"
#include "rms_norm.cuh"
#include "vision_flash_attention.cuh"
#include "vision_kernels.cuh"

namespace gquant::cuda {
namespace {

using bf16 = __nv_bfloat16;
using gemma4::VisionConfig;
using gemma4::VisionInput;
using gemma4::cpu::ClipBounds;

// A Gemma4ClippableLinear: the weight and its bounds (infinite when the
// config has no clipping).
struct ClippedLinear {
  DeviceLinear linear;
  ClipBounds clip;
};

struct VisionLayer {
  ClippedLinear q, k, v, o, gate, up, down;
  DeviceBuffer<bf16> q_norm, k_norm;
  DeviceBuffer<bf16> input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm;
};

// Device buffers for images of up to `patches` patches.
struct Activations {
  int64_t patches = 0;
  DeviceBuffer<bf16> pixels;              // [P, 3 p^2], 2 (v - 0.5)
  DeviceBuffer<int32_t> positions;        // [P, 2]
  DeviceBuffer<int32_t> x_ids, y_ids;     // [P]: position table rows
  DeviceBuffer<bf16> x_rows, y_rows;      // [P, Hv]
  DeviceBuffer<float> residual;           // [P, Hv]
  DeviceBuffer<bf16> normed, delta;       // [P, Hv]
  DeviceBuffer<bf16> clipped;             // [P, max(Hv, nH D, I)]: a clamped linear input,
                                          // and the MLP's gated product
  DeviceBuffer<bf16> q, k, v, attention;  // [P, nH D] (k, v: nKV D)
  DeviceBuffer<bf16> gate, up;            // [P, I]
  DeviceBuffer<bf16> soft;                // [N, Hv]
  DeviceBuffer<float> soft_float;         // [N, Hv]
  DeviceBuffer<bf16> soft_normed;         // [N, Hv]
  DeviceBuffer<bf16> embedded;            // [N, H_text]
  DeviceBuffer<float> embedded_float;     // [N, H_text]
};

float PowF(double base, double exponent) { return static_cast<float>(std::pow(base, exponent)); }

// gemma4::CheckVisionInput, and what the kernels assume beyond it: the real
// patches first (the attention's keys are rows [0, num_real)), in whole
// pooling windows, as HF's processor writes them. Returns the number of real
// patches.
absl::StatusOr<int64_t> CheckGpuVisionInput(const VisionInput& input, const VisionConfig& c) {
  GQ_ASSIGN_OR_RETURN(const std::vector<int64_t> real, gemma4::CheckVisionInput(input, c));
  const int64_t count = static_cast<int64_t>(real.size());
  for (int64_t i = 0; i < count; ++i) {
    if (real[i] != i) {
      return absl::InvalidArgumentError(
          absl::StrCat("VisionInput: patch ", i, " is padding but real patch ", real[i],
                       " follows it; the GPU vision tower takes the real patches first"));
    }
  }
  const int64_t k2 = int64_t{c.pooling_kernel_size} * c.pooling_kernel_size;
  if (count % k2 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "VisionInput: ", count, " real patches: expected a multiple of pooling^2 = ", k2));
  }
  return count;
}

}  // namespace

struct GpuVisionModel::State {
  VisionConfig config;
  int text_hidden = 0;
  std::optional<Recipe> recipe;
  std::string description;
  int64_t weight_bytes = 0;

  DeviceLinear input_proj, position_table, projection;
  std::vector<VisionLayer> layers;
  DeviceBuffer<bf16> std_bias, std_scale;  // standardize only
  DeviceBuffer<float> inv_freq;            // [head_dim / 4]

  cudaStream_t stream = nullptr;
  // VisionFlashAttention (head dims that are multiples of 8 up to 128: every
  // released tower); else the cuBLAS path.
  bool use_flash = true;
  std::optional<LinearContext> linear;
  std::optional<VisionAttentionWorkspace> attention;
  Activations act;

  ~State() {
    if (stream != nullptr) cudaStreamDestroy(stream);
  }

  int64_t q_width() const { return int64_t{config.num_attention_heads} * config.head_dim; }
  int64_t kv_width() const { return int64_t{config.num_key_value_heads} * config.head_dim; }

  absl::StatusOr<gemma4::BackendWeight> LoadWeight(const gemma4::WeightSource& source,
                                                   const std::string& name) const {
    const gemma4::BackendWeightOptions options{recipe ? &*recipe : nullptr, nullptr, QuantizeOnGpu,
                                               ""};
    return gemma4::LoadBackendWeight(source, name, PackBackend::kCuda, options);
  }

  // A matrix [rows, cols] (or a stack of them, the position table), checked.
  absl::StatusOr<DeviceLinear> LoadLinear(const gemma4::WeightSource& source,
                                          const std::string& name, int64_t rows, int64_t cols) {
    GQ_ASSIGN_OR_RETURN(const gemma4::BackendWeight weight, LoadWeight(source, name));
    int64_t leading = 1;
    for (size_t i = 0; i + 1 < weight.shape.size(); ++i) leading *= weight.shape[i];
    if (weight.shape.size() < 2 || leading != rows || weight.shape.back() != cols) {
      return absl::InvalidArgumentError(
          absl::StrCat(description, ": weight '", name, "': expected ", rows, " rows of ", cols));
    }
    GQ_ASSIGN_OR_RETURN(DeviceLinear linear, UploadLinear(weight, name));
    weight_bytes += linear.num_bytes();
    return linear;
  }

  absl::StatusOr<std::vector<float>> LoadValues(const gemma4::WeightSource& source,
                                                const std::string& name, int64_t size) const {
    GQ_ASSIGN_OR_RETURN(std::vector<float> values, source.Load(name));
    if (static_cast<int64_t>(values.size()) != size) {
      return absl::InvalidArgumentError(absl::StrCat(description, ": weight '", name, "' has ",
                                                     values.size(), " values, expected ", size));
    }
    return values;
  }

  absl::StatusOr<DeviceBuffer<bf16>> LoadNorm(const gemma4::WeightSource& source,
                                              const std::string& name, int64_t size) {
    GQ_ASSIGN_OR_RETURN(const std::vector<float> values, LoadValues(source, name, size));
    weight_bytes += size * static_cast<int64_t>(sizeof(bf16));
    return UploadBf16(values);
  }

  absl::StatusOr<ClippedLinear> LoadClipped(const gemma4::WeightSource& source,
                                            const std::string& module, int64_t rows, int64_t cols) {
    ClippedLinear out;
    GQ_ASSIGN_OR_RETURN(out.linear, LoadLinear(source, module + ".linear.weight", rows, cols));
    if (config.use_clipped_linears) {
      float* bounds[] = {&out.clip.input_min, &out.clip.input_max, &out.clip.output_min,
                         &out.clip.output_max};
      const char* names[] = {"input_min", "input_max", "output_min", "output_max"};
      for (int i = 0; i < 4; ++i) {
        GQ_ASSIGN_OR_RETURN(const std::vector<float> value,
                            LoadValues(source, absl::StrCat(module, ".", names[i]), 1));
        *bounds[i] = value[0];
      }
    }
    return out;
  }

  absl::Status LoadLayer(const gemma4::WeightSource& source, int index) {
    const VisionConfig& c = config;
    const std::string pre = absl::StrCat("vision_tower.encoder.layers.", index, ".");
    const int64_t h = c.hidden_size, m = c.intermediate_size;
    VisionLayer& w = layers.emplace_back();
    GQ_ASSIGN_OR_RETURN(w.q, LoadClipped(source, pre + "self_attn.q_proj", q_width(), h));
    GQ_ASSIGN_OR_RETURN(w.k, LoadClipped(source, pre + "self_attn.k_proj", kv_width(), h));
    GQ_ASSIGN_OR_RETURN(w.v, LoadClipped(source, pre + "self_attn.v_proj", kv_width(), h));
    GQ_ASSIGN_OR_RETURN(w.o, LoadClipped(source, pre + "self_attn.o_proj", h, q_width()));
    GQ_ASSIGN_OR_RETURN(w.gate, LoadClipped(source, pre + "mlp.gate_proj", m, h));
    GQ_ASSIGN_OR_RETURN(w.up, LoadClipped(source, pre + "mlp.up_proj", m, h));
    GQ_ASSIGN_OR_RETURN(w.down, LoadClipped(source, pre + "mlp.down_proj", h, m));
    GQ_ASSIGN_OR_RETURN(w.q_norm, LoadNorm(source, pre + "self_attn.q_norm.weight", c.head_dim));
    GQ_ASSIGN_OR_RETURN(w.k_norm, LoadNorm(source, pre + "self_attn.k_norm.weight", c.head_dim));
    GQ_ASSIGN_OR_RETURN(w.input_norm, LoadNorm(source, pre + "input_layernorm.weight", h));
    GQ_ASSIGN_OR_RETURN(w.post_attention_norm,
                        LoadNorm(source, pre + "post_attention_layernorm.weight", h));
    GQ_ASSIGN_OR_RETURN(w.pre_feedforward_norm,
                        LoadNorm(source, pre + "pre_feedforward_layernorm.weight", h));
    GQ_ASSIGN_OR_RETURN(w.post_feedforward_norm,
                        LoadNorm(source, pre + "post_feedforward_layernorm.weight", h));
    return absl::OkStatus();
  }

  // Grows the activation buffers (and the attention workspace) to `patches`.
  absl::Status Reserve(int64_t patches) {
    if (patches <= act.patches) return absl::OkStatus();
    const VisionConfig& c = config;
    const int64_t p = patches, h = c.hidden_size, m = c.intermediate_size;
    const int64_t n = p / (int64_t{c.pooling_kernel_size} * c.pooling_kernel_size);
    const int64_t row = 3 * int64_t{c.patch_size} * c.patch_size;
    act = {};  // free the smaller buffers first
    GQ_ASSIGN_OR_RETURN(act.pixels, DeviceBuffer<bf16>::Allocate(p * row));
    GQ_ASSIGN_OR_RETURN(act.positions, DeviceBuffer<int32_t>::Allocate(2 * p));
    GQ_ASSIGN_OR_RETURN(act.x_ids, DeviceBuffer<int32_t>::Allocate(p));
    GQ_ASSIGN_OR_RETURN(act.y_ids, DeviceBuffer<int32_t>::Allocate(p));
    GQ_ASSIGN_OR_RETURN(act.x_rows, DeviceBuffer<bf16>::Allocate(p * h));
    GQ_ASSIGN_OR_RETURN(act.y_rows, DeviceBuffer<bf16>::Allocate(p * h));
    GQ_ASSIGN_OR_RETURN(act.residual, DeviceBuffer<float>::Allocate(p * h));
    GQ_ASSIGN_OR_RETURN(act.normed, DeviceBuffer<bf16>::Allocate(p * h));
    GQ_ASSIGN_OR_RETURN(act.delta, DeviceBuffer<bf16>::Allocate(p * h));
    GQ_ASSIGN_OR_RETURN(act.clipped, DeviceBuffer<bf16>::Allocate(p * std::max({h, q_width(), m})));
    GQ_ASSIGN_OR_RETURN(act.q, DeviceBuffer<bf16>::Allocate(p * q_width()));
    GQ_ASSIGN_OR_RETURN(act.k, DeviceBuffer<bf16>::Allocate(p * kv_width()));
    GQ_ASSIGN_OR_RETURN(act.v, DeviceBuffer<bf16>::Allocate(p * kv_width()));
    GQ_ASSIGN_OR_RETURN(act.attention, DeviceBuffer<bf16>::Allocate(p * q_width()));
    GQ_ASSIGN_OR_RETURN(act.gate, DeviceBuffer<bf16>::Allocate(p * m));
    GQ_ASSIGN_OR_RETURN(act.up, DeviceBuffer<bf16>::Allocate(p * m));
    GQ_ASSIGN_OR_RETURN(act.soft, DeviceBuffer<bf16>::Allocate(n * h));
    GQ_ASSIGN_OR_RETURN(act.soft_float, DeviceBuffer<float>::Allocate(n * h));
    GQ_ASSIGN_OR_RETURN(act.soft_normed, DeviceBuffer<bf16>::Allocate(n * h));
    GQ_ASSIGN_OR_RETURN(act.embedded, DeviceBuffer<bf16>::Allocate(n * text_hidden));
    GQ_ASSIGN_OR_RETURN(act.embedded_float, DeviceBuffer<float>::Allocate(n * text_hidden));
    attention.reset();
    if (!use_flash) {  // the cuBLAS path's score buffers: 0.6 GB at 10080 patches
      GQ_ASSIGN_OR_RETURN(attention, VisionAttentionWorkspace::Create(p, c.num_attention_heads));
    }
    act.patches = p;
    return absl::OkStatus();
  }

  // y = clip_out(linear(clip_in(x))) for x [P, in] (x is not changed).
  absl::Status RunClipped(const ClippedLinear& w, const bf16* x, int64_t p, bf16* y) {
    const bf16* input = x;
    if (config.use_clipped_linears) {
      GQ_RETURN_IF_ERROR(ClampBf16(x, act.clipped.data(), p * w.linear.k(), w.clip.input_min,
                                   w.clip.input_max, stream));
      input = act.clipped.data();
    }
    GQ_RETURN_IF_ERROR(w.linear.Run(input, p, y, *linear, stream));
    if (config.use_clipped_linears) {
      GQ_RETURN_IF_ERROR(
          ClampBf16(y, y, p * w.linear.n(), w.clip.output_min, w.clip.output_max, stream));
    }
    return absl::OkStatus();
  }

  // Uploads the image and queues the tower through the pooled, standardized
  // soft tokens (act.soft, [N, Hv] bf16). Returns N.
  absl::StatusOr<int64_t> EnqueueTower(const VisionInput& input) {
    const VisionConfig& c = config;
    GQ_ASSIGN_OR_RETURN(const int64_t real, CheckGpuVisionInput(input, c));
    const int64_t p = input.max_patches, h = c.hidden_size;
    const int64_t k2 = int64_t{c.pooling_kernel_size} * c.pooling_kernel_size;
    GQ_RETURN_IF_ERROR(Reserve(p));
    const float eps = static_cast<float>(c.rms_norm_eps);

    // Patch embedder (spec §5.2): 2 (v - 0.5) in float32, then bf16, as HF
    // casts the pixels to the weight dtype.
    std::vector<uint16_t> pixels(input.pixel_values.size());
    for (size_t i = 0; i < pixels.size(); ++i) {
      pixels[i] = FloatToBFloat16(2.0f * (input.pixel_values[i] - 0.5f));
    }
    std::vector<int32_t> x_ids(p), y_ids(p);
    for (int64_t i = 0; i < p; ++i) {  // padding rows read row 0; the kernel ignores them
      x_ids[i] = std::max(input.positions[2 * i], 0);
      y_ids[i] = c.position_embedding_size + std::max(input.positions[2 * i + 1], 0);
    }
    // Pageable memory: each copy has taken the bytes when the call returns.
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(act.pixels.data(), pixels.data(),
                                            pixels.size() * sizeof(uint16_t),
                                            cudaMemcpyHostToDevice, stream));
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(act.positions.data(), input.positions.data(),
                                            2 * p * sizeof(int32_t), cudaMemcpyHostToDevice,
                                            stream));
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(act.x_ids.data(), x_ids.data(), p * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, stream));
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(act.y_ids.data(), y_ids.data(), p * sizeof(int32_t),
                                            cudaMemcpyHostToDevice, stream));
    GQ_RETURN_IF_ERROR(input_proj.Run(act.pixels.data(), p, act.delta.data(), *linear, stream));
    GQ_RETURN_IF_ERROR(position_table.Gather(act.x_ids.data(), static_cast<int>(p), 1.0f,
                                             act.x_rows.data(), stream));
    GQ_RETURN_IF_ERROR(position_table.Gather(act.y_ids.data(), static_cast<int>(p), 1.0f,
                                             act.y_rows.data(), stream));
    GQ_RETURN_IF_ERROR(PatchEmbeddingsToResidual(act.delta.data(), act.x_rows.data(),
                                                 act.y_rows.data(), act.positions.data(), p,
                                                 static_cast<int>(h), act.residual.data(), stream));
    GQ_RETURN_IF_ERROR(RmsNorm(act.residual.data(), p, static_cast<int>(h),
                               layers[0].input_norm.data(), eps, act.normed.data(), stream));

    // Encoder layers (spec §5.3).
    const int nh = c.num_attention_heads, nkv = c.num_key_value_heads, d = c.head_dim;
    const int64_t m = c.intermediate_size;
    for (size_t l = 0; l < layers.size(); ++l) {
      const VisionLayer& w = layers[l];
      GQ_RETURN_IF_ERROR(RunClipped(w.q, act.normed.data(), p, act.q.data()));
      GQ_RETURN_IF_ERROR(RunClipped(w.k, act.normed.data(), p, act.k.data()));
      GQ_RETURN_IF_ERROR(RunClipped(w.v, act.normed.data(), p, act.v.data()));
      GQ_RETURN_IF_ERROR(VisionHeadNormRope2d(act.q.data(), p, nh, d, w.q_norm.data(), eps,
                                              inv_freq.data(), act.positions.data(), stream));
      GQ_RETURN_IF_ERROR(VisionHeadNormRope2d(act.k.data(), p, nkv, d, w.k_norm.data(), eps,
                                              inv_freq.data(), act.positions.data(), stream));
      GQ_RETURN_IF_ERROR(
          VisionHeadNormRope2d(act.v.data(), p, nkv, d, nullptr, eps, nullptr, nullptr, stream));
      if (use_flash) {
        GQ_RETURN_IF_ERROR(VisionFlashAttention(act.q.data(), act.k.data(), act.v.data(), p, real,
                                                nh, nkv, d, act.attention.data(), stream));
      } else {
        GQ_RETURN_IF_ERROR(VisionAttention(act.q.data(), act.k.data(), act.v.data(), p, real, nh,
                                           nkv, d, act.attention.data(), *attention, stream));
      }
      GQ_RETURN_IF_ERROR(RunClipped(w.o, act.attention.data(), p, act.delta.data()));
      GQ_RETURN_IF_ERROR(AddNormalizedThenNorm(act.residual.data(), act.delta.data(), p,
                                               static_cast<int>(h), w.post_attention_norm.data(),
                                               eps, nullptr, w.pre_feedforward_norm.data(),
                                               act.normed.data(), stream));
      GQ_RETURN_IF_ERROR(RunClipped(w.gate, act.normed.data(), p, act.gate.data()));
      GQ_RETURN_IF_ERROR(RunClipped(w.up, act.normed.data(), p, act.up.data()));
      // The product goes to act.clipped: down's input clamp then runs in place.
      GQ_RETURN_IF_ERROR(
          GeluTanhMul(act.gate.data(), m, act.up.data(), m, p, m, act.clipped.data(), stream));
      GQ_RETURN_IF_ERROR(RunClipped(w.down, act.clipped.data(), p, act.delta.data()));
      if (l + 1 < layers.size()) {
        GQ_RETURN_IF_ERROR(
            AddNormalizedThenNorm(act.residual.data(), act.delta.data(), p, static_cast<int>(h),
                                  w.post_feedforward_norm.data(), eps, nullptr,
                                  layers[l + 1].input_norm.data(), act.normed.data(), stream));
      } else {  // no norm after the stack
        GQ_RETURN_IF_ERROR(AddNormalized(act.residual.data(), act.delta.data(), p,
                                         static_cast<int>(h), w.post_feedforward_norm.data(), eps,
                                         nullptr, stream));
      }
    }

    // Pooler and standardization (spec §5.4).
    const int64_t n = real / k2;
    GQ_RETURN_IF_ERROR(VisionPool(
        act.residual.data(), act.positions.data(), p, static_cast<int>(h), c.pooling_kernel_size, n,
        PowF(h, 0.5), c.standardize ? std_bias.data() : nullptr,
        c.standardize ? std_scale.data() : nullptr, act.soft.data(), stream));
    return n;
  }

  // The embedder on act.soft: RMSNorm without weight (float32), projection.
  absl::Status EnqueueEmbed(int64_t n) {
    const int64_t h = config.hidden_size;
    GQ_RETURN_IF_ERROR(Convert16ToFloat(DType::kBF16,
                                        reinterpret_cast<const uint16_t*>(act.soft.data()),
                                        act.soft_float.data(), n * h, stream));
    GQ_RETURN_IF_ERROR(RmsNorm(act.soft_float.data(), n, static_cast<int>(h), nullptr,
                               static_cast<float>(config.rms_norm_eps), act.soft_normed.data(),
                               stream));
    return projection.Run(act.soft_normed.data(), n, act.embedded.data(), *linear, stream);
  }

  // bf16 [count] on the device -> float32 on the host (synchronizes).
  absl::StatusOr<std::vector<float>> Download(const bf16* values, float* staging, int64_t count) {
    GQ_RETURN_IF_ERROR(Convert16ToFloat(DType::kBF16, reinterpret_cast<const uint16_t*>(values),
                                        staging, count, stream));
    std::vector<float> out(count);
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(out.data(), staging, count * sizeof(float),
                                            cudaMemcpyDeviceToHost, stream));
    GQ_RETURN_IF_CUDA_ERROR(cudaStreamSynchronize(stream));
    return out;
  }
};

GpuVisionModel::GpuVisionModel(std::unique_ptr<State> state) : state_(std::move(state)) {}
GpuVisionModel::~GpuVisionModel() = default;

absl::StatusOr<std::unique_ptr<GpuVisionModel>> GpuVisionModel::Load(
    const gemma4::WeightSource& source, const GpuVisionOptions& options) {
  const gemma4::Config& config = source.config();
  if (!config.vision.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat(source.description(), ": the config has no vision_config"));
  }
  auto s = std::make_unique<State>();
  s->config = *config.vision;
  s->text_hidden = config.text.hidden_size;
  s->description = source.description();
  const VisionConfig& c = s->config;
  if (c.hidden_activation != "gelu_pytorch_tanh") {
    return absl::UnimplementedError(absl::StrCat(s->description, ": vision hidden_activation '",
                                                 c.hidden_activation,
                                                 "' (only gelu_pytorch_tanh)"));
  }
  if (c.head_dim % 4 != 0 || c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        s->description, ": vision head_dim ", c.head_dim, " (a multiple of 4) and heads ",
        c.num_attention_heads, " / ", c.num_key_value_heads));
  }
  GQ_RETURN_IF_ERROR(gemma4::CheckVisionWeights(source));
  if (!options.recipe.empty()) {
    GQ_ASSIGN_OR_RETURN(s->recipe, Recipe::Load(options.recipe));
  }
  s->use_flash = c.head_dim % 8 == 0 && c.head_dim <= 128;
  GQ_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
  GQ_ASSIGN_OR_RETURN(s->linear, LinearContext::Create());

  const int64_t h = c.hidden_size, patch = c.patch_size;
  GQ_ASSIGN_OR_RETURN(
      s->input_proj,
      s->LoadLinear(source, "vision_tower.patch_embedder.input_proj.weight", h, 3 * patch * patch));
  GQ_ASSIGN_OR_RETURN(s->position_table,
                      s->LoadLinear(source, "vision_tower.patch_embedder.position_embedding_table",
                                    2 * int64_t{c.position_embedding_size}, h));
  for (int l = 0; l < c.num_hidden_layers; ++l) GQ_RETURN_IF_ERROR(s->LoadLayer(source, l));
  if (c.standardize) {
    GQ_ASSIGN_OR_RETURN(s->std_bias, s->LoadNorm(source, "vision_tower.std_bias", h));
    GQ_ASSIGN_OR_RETURN(s->std_scale, s->LoadNorm(source, "vision_tower.std_scale", h));
  }
  GQ_ASSIGN_OR_RETURN(
      s->projection,
      s->LoadLinear(source, "embed_vision.embedding_projection.weight", s->text_hidden, h));
  // The 2-D RoPE's frequencies: "default" RoPE over half the head (each axis
  // rotates half of it), in float32 as the CPU computes them.
  const std::vector<float> inv_freq =
      gemma4::cpu::RopeInverseFrequencies({"default", c.rope_theta, 1.0}, c.head_dim / 2);
  GQ_ASSIGN_OR_RETURN(s->inv_freq, Upload<float>(inv_freq));
  return std::unique_ptr<GpuVisionModel>(new GpuVisionModel(std::move(s)));
}

const gemma4::VisionConfig& GpuVisionModel::config() const { return state_->config; }
int64_t GpuVisionModel::weight_bytes() const { return state_->weight_bytes; }
cudaStream_t GpuVisionModel::stream() const { return state_->stream; }

absl::Status GpuVisionModel::EnqueueEncode(const gemma4::VisionInput& input) {
  GQ_ASSIGN_OR_RETURN(const int64_t n, state_->EnqueueTower(input));
  return state_->EnqueueEmbed(n);
}

absl::StatusOr<std::vector<float>> GpuVisionModel::SoftTokens(const gemma4::VisionInput& input) {
  State& s = *state_;
  GQ_ASSIGN_OR_RETURN(const int64_t n, s.EnqueueTower(input));
  return s.Download(s.act.soft.data(), s.act.soft_float.data(), n * s.config.hidden_size);
}

absl::StatusOr<std::vector<float>> GpuVisionModel::EncodeImage(const gemma4::VisionInput& input) {
  State& s = *state_;
  GQ_ASSIGN_OR_RETURN(const int64_t n, s.EnqueueTower(input));
  GQ_RETURN_IF_ERROR(s.EnqueueEmbed(n));
  return s.Download(s.act.embedded.data(), s.act.embedded_float.data(), n * s.text_hidden);
}

}  // namespace gquant::cuda
