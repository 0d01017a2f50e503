#include "gquant/gemma4/cpu_vision.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cpu_ops.h"
#include "gquant/pack.h"
#include "gquant/status.h"
#include "gquant/tensor.h"
#include "gquant/thread_pool.h"

namespace gquant::gemma4 {
namespace {

using cpu::ClipBounds;
using cpu::Linear;
using cpu::RmsNorm;

constexpr char kInputProj[] = "vision_tower.patch_embedder.input_proj.weight";
constexpr char kPositionTable[] = "vision_tower.patch_embedder.position_embedding_table";
constexpr char kStdBias[] = "vision_tower.std_bias";
constexpr char kStdScale[] = "vision_tower.std_scale";
constexpr char kProjection[] = "embed_vision.embedding_projection.weight";
constexpr absl::string_view kClipBounds[] = {"input_min", "input_max", "output_min", "output_max"};
constexpr absl::string_view kLayerNorms[] = {"input_layernorm", "post_attention_layernorm",
                                             "pre_feedforward_layernorm",
                                             "post_feedforward_layernorm"};

std::string LayerPrefix(int layer) {
  return absl::StrCat("vision_tower.encoder.layers.", layer, ".");
}

// One Gemma4ClippableLinear of an encoder layer: its module name under the
// layer and its [out, in] weight shape.
struct LinearSpec {
  absl::string_view name;
  int64_t out;
  int64_t in;
};

// The layer's linears in the order LayerWeights lists them.
std::vector<LinearSpec> LayerLinears(const VisionConfig& c) {
  const int64_t h = c.hidden_size, m = c.intermediate_size;
  const int64_t q = int64_t{c.num_attention_heads} * c.head_dim;
  const int64_t kv = int64_t{c.num_key_value_heads} * c.head_dim;
  return {{"self_attn.q_proj", q, h}, {"self_attn.k_proj", kv, h}, {"self_attn.v_proj", kv, h},
          {"self_attn.o_proj", h, q}, {"mlp.gate_proj", m, h},     {"mlp.up_proj", m, h},
          {"mlp.down_proj", h, m}};
}

// Sizes the encoder relies on. The config parser checks these too; a
// hand-built config reaches here unchecked.
absl::Status CheckVisionConfig(const VisionConfig& c) {
  const std::pair<absl::string_view, int> positive[] = {
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"patch_size", c.patch_size},
      {"pooling_kernel_size", c.pooling_kernel_size},
      {"position_embedding_size", c.position_embedding_size}};
  for (const auto& [name, value] : positive) {
    if (value <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("vision_config: ", name, ": expected a positive value, but got ", value));
    }
  }
  if (c.head_dim % 4 != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "vision_config: head_dim: expected a multiple of 4 (2-D RoPE), but got ", c.head_dim));
  }
  if (c.num_attention_heads % c.num_key_value_heads != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vision_config: num_key_value_heads ", c.num_key_value_heads,
                     " does not divide num_attention_heads ", c.num_attention_heads));
  }
  if (!(c.rms_norm_eps > 0) || !(c.rope_theta > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("vision_config: rms_norm_eps ", c.rms_norm_eps,
                                                   " and rope_theta ", c.rope_theta,
                                                   " must be positive"));
  }
  return absl::OkStatus();
}

// A Gemma4ClippableLinear's weight [out, in] and bounds.
struct ClippedWeight {
  std::vector<float> weight;
  ClipBounds clip;
};

// One encoder layer's weights, read for one call.
struct LayerWeights {
  ClippedWeight q, k, v, o, gate, up, down;
  std::vector<float> q_norm, k_norm;
  std::vector<float> input_norm, post_attention_norm, pre_feedforward_norm, post_feedforward_norm;
};

bool IsPadding(std::span<const int32_t> positions, int64_t patch) {
  return positions[2 * patch] == -1 && positions[2 * patch + 1] == -1;
}

}  // namespace

struct CpuVisionModel::State {
  const WeightSource* source = nullptr;
  VisionConfig config;
  int text_hidden = 0;
  std::unique_ptr<ThreadPool> pool;
  std::vector<float> inv_freq;  // head_dim / 4 entries, shared by both axes
  std::optional<ActivationQuantParams> embedder_activations;  // CpuVisionOptions'

  // `name` in float32, checked to hold `size` values (a reader could
  // disagree with its own Shape).
  absl::StatusOr<std::vector<float>> Weight(const std::string& name, int64_t size) const {
    GQ_ASSIGN_OR_RETURN(std::vector<float> values, source->Load(name));
    if (static_cast<int64_t>(values.size()) != size) {
      return absl::DataLossError(absl::StrCat(source->description(), ": weight '", name, "': read ",
                                              values.size(), " values, expected ", size));
    }
    return values;
  }

  absl::StatusOr<ClippedWeight> Clipped(const std::string& module, int64_t out, int64_t in) const {
    ClippedWeight w;
    GQ_ASSIGN_OR_RETURN(w.weight, Weight(module + ".linear.weight", out * in));
    if (config.use_clipped_linears) {
      float* bounds[] = {&w.clip.input_min, &w.clip.input_max, &w.clip.output_min,
                         &w.clip.output_max};
      for (size_t i = 0; i < std::size(kClipBounds); ++i) {
        GQ_ASSIGN_OR_RETURN(std::vector<float> value,
                            Weight(absl::StrCat(module, ".", kClipBounds[i]), 1));
        *bounds[i] = value[0];
      }
    }
    return w;
  }

  absl::StatusOr<LayerWeights> LoadLayer(int layer) const {
    const std::string pre = LayerPrefix(layer);
    const std::vector<LinearSpec> specs = LayerLinears(config);
    LayerWeights w;
    ClippedWeight* linears[] = {&w.q, &w.k, &w.v, &w.o, &w.gate, &w.up, &w.down};
    for (size_t i = 0; i < specs.size(); ++i) {
      GQ_ASSIGN_OR_RETURN(*linears[i],
                          Clipped(absl::StrCat(pre, specs[i].name), specs[i].out, specs[i].in));
    }
    GQ_ASSIGN_OR_RETURN(w.q_norm, Weight(pre + "self_attn.q_norm.weight", config.head_dim));
    GQ_ASSIGN_OR_RETURN(w.k_norm, Weight(pre + "self_attn.k_norm.weight", config.head_dim));
    std::vector<float>* norms[] = {&w.input_norm, &w.post_attention_norm, &w.pre_feedforward_norm,
                                   &w.post_feedforward_norm};
    for (size_t i = 0; i < std::size(kLayerNorms); ++i) {
      GQ_ASSIGN_OR_RETURN(*norms[i],
                          Weight(absl::StrCat(pre, kLayerNorms[i], ".weight"), config.hidden_size));
    }
    return w;
  }

  // Gemma4VisionPatchEmbedder: [max_patches, hidden].
  absl::StatusOr<std::vector<float>> EmbedPatches(const VisionInput& input) const {
    const int64_t p = input.max_patches, h = config.hidden_size;
    const int64_t row = 3 * int64_t{config.patch_size} * config.patch_size;
    const int64_t table_rows = config.position_embedding_size;
    std::vector<float> pixels = input.pixel_values;
    for (float& v : pixels) v = 2.0f * (v - 0.5f);  // [0, 1] -> [-1, 1], in the model
    GQ_ASSIGN_OR_RETURN(std::vector<float> proj, Weight(kInputProj, h * row));
    std::vector<float> x(p * h);
    Linear(pixels, p, row, proj, h, x, pool.get());
    // HF 5.17 looks the rows up (F.embedding); the spec's one_hot @ table
    // gives the same float32 values.
    GQ_ASSIGN_OR_RETURN(std::vector<float> table, Weight(kPositionTable, 2 * table_rows * h));
    for (int64_t i = 0; i < p; ++i) {
      if (IsPadding(input.positions, i)) continue;  // HF adds a zero position embedding
      const float* ex = table.data() + int64_t{input.positions[2 * i]} * h;
      const float* ey = table.data() + (table_rows + input.positions[2 * i + 1]) * h;
      for (int64_t j = 0; j < h; ++j) x[i * h + j] += ex[j] + ey[j];
    }
    return x;
  }

  // Gemma4VisionEncoderLayer on x [max_patches, hidden] in place; `keys`
  // are the real patches, the only keys attention sees.
  void RunLayer(const LayerWeights& w, const VisionInput& input, std::span<const int64_t> keys,
                std::vector<float>& x) const {
    const VisionConfig& c = config;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const int64_t p = input.max_patches, h = c.hidden_size, d = c.head_dim;
    const int64_t nh = c.num_attention_heads, nkv = c.num_key_value_heads;
    ThreadPool* tp = pool.get();

    std::vector<float> a = x;
    RmsNorm(a, h, w.input_norm, eps);
    std::vector<float> q(p * nh * d), k(p * nkv * d), v(p * nkv * d);
    cpu::ClippedLinear(a, p, h, w.q.weight, nh * d, w.q.clip, q, tp);
    cpu::ClippedLinear(a, p, h, w.k.weight, nkv * d, w.k.clip, k, tp);
    cpu::ClippedLinear(a, p, h, w.v.weight, nkv * d, w.v.clip, v, tp);
    RmsNorm(q, d, w.q_norm, eps);
    RmsNorm(k, d, w.k_norm, eps);
    RmsNorm(v, d, {}, eps);
    // Padding patches rotate by (-1, -1), as in HF: their rows stay finite
    // and are masked as keys, so the real patches do not depend on them.
    ParallelFor(tp, p, 64, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int32_t px = input.positions[2 * i], py = input.positions[2 * i + 1];
        cpu::ApplyRope2d(std::span(q).subspan(i * nh * d, nh * d), nh, c.head_dim, px, py,
                         inv_freq);
        cpu::ApplyRope2d(std::span(k).subspan(i * nkv * d, nkv * d), nkv, c.head_dim, px, py,
                         inv_freq);
      }
    });
    std::vector<float> attn(q.size()), o(p * h);
    cpu::BidirectionalAttention(q, k, v, p, c.num_attention_heads, c.num_key_value_heads,
                                c.head_dim, keys, attn, tp);
    cpu::ClippedLinear(attn, p, nh * d, w.o.weight, h, w.o.clip, o, tp);
    RmsNorm(o, h, w.post_attention_norm, eps);
    for (size_t i = 0; i < x.size(); ++i) x[i] += o[i];

    std::vector<float> m = x;
    RmsNorm(m, h, w.pre_feedforward_norm, eps);
    const int64_t width = c.intermediate_size;
    std::vector<float> gate(p * width), up(p * width), down(p * h);
    cpu::ClippedLinear(m, p, h, w.gate.weight, width, w.gate.clip, gate, tp);
    cpu::ClippedLinear(m, p, h, w.up.weight, width, w.up.clip, up, tp);
    for (size_t i = 0; i < gate.size(); ++i) gate[i] = cpu::GeluTanh(gate[i]) * up[i];
    cpu::ClippedLinear(gate, p, width, w.down.weight, h, w.down.clip, down, tp);
    RmsNorm(down, h, w.post_feedforward_norm, eps);
    for (size_t i = 0; i < x.size(); ++i) x[i] += down[i];
  }

  // The patch embedder and the encoder stack (no final norm): the last
  // layer's output, appending every state to `states` when not null.
  absl::StatusOr<std::vector<float>> Encode(const VisionInput& input,
                                            std::vector<float>* states) const {
    GQ_ASSIGN_OR_RETURN(const std::vector<int64_t> keys, CheckVisionInput(input, config));
    GQ_ASSIGN_OR_RETURN(std::vector<float> x, EmbedPatches(input));
    if (states != nullptr) states->insert(states->end(), x.begin(), x.end());
    for (int layer = 0; layer < config.num_hidden_layers; ++layer) {
      absl::StatusOr<LayerWeights> w = LoadLayer(layer);
      GQ_RETURN_IF_ERROR(Annotate(w.status(), "vision layer ", layer));
      RunLayer(*w, input, keys, x);
      if (states != nullptr) states->insert(states->end(), x.begin(), x.end());
    }
    return x;
  }

  // Gemma4VisionPooler, the padding strip and the standardization.
  absl::StatusOr<std::vector<float>> SoftTokens(const VisionInput& input) const {
    GQ_ASSIGN_OR_RETURN(std::vector<float> x, Encode(input, nullptr));
    const int64_t h = config.hidden_size, k = config.pooling_kernel_size;
    for (int64_t i = 0; i < input.max_patches; ++i) {
      if (IsPadding(input.positions, i)) std::fill_n(x.begin() + i * h, h, 0.0f);
    }
    // HF multiplies by the Python float hidden_size**0.5, which PyTorch
    // rounds to float32 for a float32 tensor.
    const float scale = static_cast<float>(std::pow(static_cast<double>(h), 0.5));
    std::vector<float> tokens =
        cpu::AvgPoolWindows(x, h, cpu::PoolWindows(input.positions, static_cast<int>(k)),
                            static_cast<int>(k), input.max_patches / (k * k), scale);
    if (config.standardize) {
      GQ_ASSIGN_OR_RETURN(std::vector<float> bias, Weight(kStdBias, h));
      GQ_ASSIGN_OR_RETURN(std::vector<float> std_scale, Weight(kStdScale, h));
      for (size_t i = 0; i < tokens.size(); ++i) {
        tokens[i] = (tokens[i] - bias[i % h]) * std_scale[i % h];
      }
    }
    return tokens;
  }

  // Gemma4MultimodalEmbedder's RMSNorm without weight. The eps is the vision
  // config's rms_norm_eps (HF code; the spec writes 1e-6, its value in every
  // released config).
  absl::StatusOr<std::vector<float>> EmbedderInput(std::span<const float> soft_tokens, int64_t rows,
                                                   const char* what) const {
    const int64_t h = config.hidden_size;
    if (rows < 0 || static_cast<int64_t>(soft_tokens.size()) % h != 0 ||
        static_cast<int64_t>(soft_tokens.size()) / h != rows) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": expected [rows = ", rows,
                                                     ", hidden = ", h, "] soft tokens, but got ",
                                                     soft_tokens.size(), " values"));
    }
    std::vector<float> x(soft_tokens.begin(), soft_tokens.end());
    RmsNorm(x, h, {}, static_cast<float>(config.rms_norm_eps));
    return x;
  }

  // Gemma4MultimodalEmbedder: the norm above, then the projection to the
  // text width.
  absl::StatusOr<std::vector<float>> Embed(std::span<const float> soft_tokens, int64_t rows) const {
    const int64_t h = config.hidden_size;
    GQ_ASSIGN_OR_RETURN(std::vector<float> x, EmbedderInput(soft_tokens, rows, "Embed"));
    GQ_ASSIGN_OR_RETURN(std::vector<float> proj, Weight(kProjection, int64_t{text_hidden} * h));
    std::vector<float> out(rows * text_hidden);
    Linear(x, rows, h, proj, text_hidden, out, pool.get());
    return out;
  }

  // The stored codes when the checkpoint holds the projection as
  // kInt8RowWeightConfig makes it (8-bit signed codes, one group per row,
  // zero point 0), else nullopt.
  absl::StatusOr<std::optional<Int8RowWeights>> StoredProjectionInt8() const {
    if (!source->StoresQuantized(kProjection)) return std::nullopt;
    GQ_ASSIGN_OR_RETURN(std::vector<PackedMatrix> packed,
                        source->LoadPacked(kProjection, PackBackend::kCpu));
    if (packed.size() != 1) return std::nullopt;
    GQ_ASSIGN_OR_RETURN(const UnpackedMatrixView view, CpuUnpackedView(packed[0]));
    const int64_t h = config.hidden_size;
    if (view.info.kind != QuantizedWeightInfo::Kind::kIntx || view.info.bits != 8 ||
        view.info.rows != text_hidden || view.info.cols != h || view.info.group_size != h ||
        std::any_of(view.zero.begin(), view.zero.end(), [](float z) { return z != 0.0f; })) {
      return std::nullopt;
    }
    Int8RowWeights w;
    w.codes.assign(view.codes.begin(), view.codes.end());
    w.scale.assign(view.scale.begin(), view.scale.end());
    return w;
  }

  absl::StatusOr<Int8RowWeights> ProjectionInt8() const {
    absl::StatusOr<std::optional<Int8RowWeights>> stored = StoredProjectionInt8();
    GQ_RETURN_IF_ERROR(Annotate(stored.status(), "vision embedder projection"));
    if (stored->has_value()) return **std::move(stored);
    const int64_t h = config.hidden_size;
    GQ_ASSIGN_OR_RETURN(std::vector<float> proj, Weight(kProjection, int64_t{text_hidden} * h));
    absl::StatusOr<Int8RowWeights> w = QuantizeInt8Rows(proj, text_hidden, h, pool.get());
    GQ_RETURN_IF_ERROR(Annotate(w.status(), "vision embedder projection ", kProjection));
    return w;
  }

  // Per-channel params must have one value per vision hidden channel.
  absl::Status CheckEmbedderParams(const ActivationQuantParams& params) const {
    GQ_RETURN_IF_ERROR(
        Annotate(ValidateActivationQuantParams(params), "vision embedder activation params"));
    if (params.granularity == QuantGranularity::kPerChannel &&
        static_cast<int64_t>(params.scale.size()) != config.hidden_size) {
      return absl::InvalidArgumentError(absl::StrCat(
          "vision embedder activation params: expected ", config.hidden_size,
          " per-channel scales (the vision hidden size), but got ", params.scale.size()));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<float>> EmbedQuantized(std::span<const float> soft_tokens,
                                                    int64_t rows,
                                                    const ActivationQuantParams& params) const {
    GQ_RETURN_IF_ERROR(CheckEmbedderParams(params));
    const int64_t h = config.hidden_size;
    GQ_ASSIGN_OR_RETURN(std::vector<float> x, EmbedderInput(soft_tokens, rows, "EmbedQuantized"));
    GQ_ASSIGN_OR_RETURN(const Int8RowWeights w, ProjectionInt8());
    std::vector<float> out(rows * text_hidden);
    if (params.granularity == QuantGranularity::kPerTensor) {
      GQ_RETURN_IF_ERROR(LinearInt8(x, rows, h, w.view(), text_hidden, params, out, pool.get()));
      return out;
    }
    GQ_RETURN_IF_ERROR(FakeQuantizeActivations(x, rows, params));
    std::vector<float> dequantized(w.codes.size());
    for (size_t i = 0; i < dequantized.size(); ++i) {
      dequantized[i] = static_cast<float>(w.codes[i]) * w.scale[i / h];
    }
    Linear(x, rows, h, dequantized, text_hidden, out, pool.get());
    return out;
  }
};

CpuVisionModel::CpuVisionModel(std::unique_ptr<State> state) : state_(std::move(state)) {}
CpuVisionModel::~CpuVisionModel() = default;

absl::StatusOr<std::unique_ptr<CpuVisionModel>> CpuVisionModel::Create(
    const WeightSource& source, const CpuVisionOptions& options) {
  const Config& config = source.config();
  if (!config.vision.has_value()) {
    return absl::FailedPreconditionError(
        absl::StrCat(source.description(), ": the config has no vision_config"));
  }
  const VisionConfig& c = *config.vision;
  if (c.hidden_activation != "gelu_pytorch_tanh") {
    return absl::UnimplementedError(
        absl::StrCat(source.description(), ": vision hidden_activation '", c.hidden_activation,
                     "' (only gelu_pytorch_tanh)"));
  }
  GQ_RETURN_IF_ERROR(Annotate(CheckVisionConfig(c), source.description()));
  if (config.text.hidden_size <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(source.description(), ": text hidden_size ",
                                                   config.text.hidden_size, " is not positive"));
  }

  GQ_RETURN_IF_ERROR(CheckVisionWeights(source));

  auto state = std::make_unique<State>();
  state->source = &source;
  state->config = c;
  state->text_hidden = config.text.hidden_size;
  state->pool = std::make_unique<ThreadPool>(options.threads);
  // Gemma4VisionRotaryEmbedding: 1 / theta^(2j / spatial) over spatial =
  // head_dim / 2, the "default" formula on half the head.
  state->inv_freq = cpu::RopeInverseFrequencies({"default", c.rope_theta, 1.0}, c.head_dim / 2);
  if (options.embedder_activations.has_value()) {
    GQ_RETURN_IF_ERROR(
        Annotate(state->CheckEmbedderParams(*options.embedder_activations), source.description()));
    state->embedder_activations = options.embedder_activations;
  }
  return std::unique_ptr<CpuVisionModel>(new CpuVisionModel(std::move(state)));
}

const VisionConfig& CpuVisionModel::config() const { return state_->config; }
int CpuVisionModel::text_hidden_size() const { return state_->text_hidden; }

absl::StatusOr<std::vector<float>> CpuVisionModel::EncoderStates(const VisionInput& input) const {
  std::vector<float> states;
  GQ_RETURN_IF_ERROR(state_->Encode(input, &states).status());
  return states;
}

absl::StatusOr<std::vector<float>> CpuVisionModel::SoftTokens(const VisionInput& input) const {
  return state_->SoftTokens(input);
}

absl::StatusOr<std::vector<float>> CpuVisionModel::Embed(std::span<const float> soft_tokens,
                                                         int64_t rows) const {
  return state_->Embed(soft_tokens, rows);
}

absl::StatusOr<std::vector<float>> CpuVisionModel::EmbedderInput(std::span<const float> soft_tokens,
                                                                 int64_t rows) const {
  return state_->EmbedderInput(soft_tokens, rows, "EmbedderInput");
}

absl::StatusOr<Int8RowWeights> CpuVisionModel::EmbedderProjectionInt8() const {
  return state_->ProjectionInt8();
}

absl::StatusOr<std::vector<float>> CpuVisionModel::EmbedQuantized(
    std::span<const float> soft_tokens, int64_t rows, const ActivationQuantParams& params) const {
  return state_->EmbedQuantized(soft_tokens, rows, params);
}

absl::StatusOr<std::vector<float>> CpuVisionModel::EncodeImage(const VisionInput& input) const {
  GQ_ASSIGN_OR_RETURN(std::vector<float> tokens, state_->SoftTokens(input));
  const int64_t rows = static_cast<int64_t>(tokens.size()) / state_->config.hidden_size;
  if (state_->embedder_activations.has_value()) {
    return state_->EmbedQuantized(tokens, rows, *state_->embedder_activations);
  }
  return state_->Embed(tokens, rows);
}

}  // namespace gquant::gemma4
