#include "gquant/gemma4/cpu_model.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <mutex>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "cpu_ops.h"
#include "gquant/gemma4/image_prompt.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"

namespace gquant::gemma4 {
namespace {

using WeightPtr = std::shared_ptr<const std::vector<float>>;
using cpu::Linear;
using cpu::RmsNorm;

// y += x, elementwise.
void AddTo(std::span<float> y, std::span<const float> x) {
  for (size_t i = 0; i < y.size(); ++i) y[i] += x[i];
}

// Python-float scales that PyTorch multiplies into float32 tensors as float32.
float PowF(double base, double exponent) { return static_cast<float>(std::pow(base, exponent)); }

}  // namespace

struct CpuModel::State {
  std::unique_ptr<WeightSource> source;
  ModelPlan plan;
  std::optional<int> image_token;     // the image placeholder id (multimodal configs)
  bool bidirectional_images = false;  // use_bidirectional_attention "vision"
  CpuModelOptions options;
  std::unique_ptr<ThreadPool> pool;
  std::vector<std::vector<float>> inv_freq;  // per layer
  std::string head_name;                     // lm_head.weight if stored, else the embedding

  mutable std::mutex mu;
  mutable std::map<std::string, WeightPtr, std::less<>> weights;  // kept float32 weights
  mutable int64_t weight_bytes = 0;

  int64_t Capacity(const LayerPlan& layer, int64_t max_positions, int max_chunk) const {
    return KvCacheCapacity(plan.config, layer, max_positions, max_chunk);
  }

  bool WouldKeep(const std::string& name, int64_t bytes) const {
    std::lock_guard<std::mutex> lock(mu);
    return weights.contains(name) || weight_bytes + bytes <= options.weight_cache_bytes;
  }

  // The weight in float32: from the kept set, else read from the source (and
  // kept when it fits the budget).
  absl::StatusOr<WeightPtr> Weight(const std::string& name) const {
    {
      std::lock_guard<std::mutex> lock(mu);
      if (auto it = weights.find(name); it != weights.end()) return it->second;
    }
    GQ_ASSIGN_OR_RETURN(std::vector<float> values, source->Load(name));
    int64_t expected = 1;
    for (int64_t d : source->Shape(name).value_or(std::vector<int64_t>{-1})) expected *= d;
    if (static_cast<int64_t>(values.size()) != expected) {
      return absl::DataLossError(absl::StrCat(source->description(), ": weight '", name, "': read ",
                                              values.size(), " values, expected ", expected));
    }
    auto ptr = std::make_shared<const std::vector<float>>(std::move(values));
    const int64_t bytes = static_cast<int64_t>(ptr->size() * sizeof(float));
    std::lock_guard<std::mutex> lock(mu);
    if (weight_bytes + bytes <= options.weight_cache_bytes && weights.emplace(name, ptr).second) {
      weight_bytes += bytes;
    }
    return ptr;
  }

  // Rows `ids` of the [rows, cols] table `name`, times `scale`: from the
  // whole table when it is (or can be) kept, else row by row.
  absl::StatusOr<std::vector<float>> Gather(const std::string& name, std::span<const int> ids,
                                            int64_t rows, int64_t cols, float scale) const {
    std::vector<float> out(ids.size() * cols);
    if (WouldKeep(name, rows * cols * static_cast<int64_t>(sizeof(float)))) {
      GQ_ASSIGN_OR_RETURN(WeightPtr table, Weight(name));
      for (size_t t = 0; t < ids.size(); ++t) {
        for (int64_t i = 0; i < cols; ++i) out[t * cols + i] = (*table)[ids[t] * cols + i] * scale;
      }
      return out;
    }
    for (size_t t = 0; t < ids.size(); ++t) {
      GQ_ASSIGN_OR_RETURN(std::vector<float> row, source->LoadRows(name, ids[t], 1));
      for (int64_t i = 0; i < cols; ++i) out[t * cols + i] = row[i] * scale;
    }
    return out;
  }

  // Spec §2.3: the per-layer inputs [T, L, P] from the token ids and the
  // scaled embedding x [T, H].
  absl::StatusOr<std::vector<float>> PerLayerInputs(std::span<const int> tokens,
                                                    const std::vector<float>& x) const {
    const TextConfig& c = plan.config;
    const int64_t t = tokens.size(), h = c.hidden_size, p = c.hidden_size_per_layer_input;
    const int64_t width = int64_t{c.num_hidden_layers} * p;
    GQ_ASSIGN_OR_RETURN(std::vector<float> ple,
                        Gather("embed_tokens_per_layer.weight", tokens,
                               c.vocab_size_per_layer_input, width, PowF(p, 0.5)));
    GQ_ASSIGN_OR_RETURN(WeightPtr proj, Weight("per_layer_model_projection.weight"));
    GQ_ASSIGN_OR_RETURN(WeightPtr norm, Weight("per_layer_projection_norm.weight"));
    std::vector<float> context(t * width);
    Linear(x, t, h, *proj, width, context, pool.get());
    const float proj_scale = PowF(h, -0.5);
    for (float& v : context) v *= proj_scale;
    RmsNorm(context, p, *norm, static_cast<float>(c.rms_norm_eps));
    const float input_scale = PowF(2.0, -0.5);
    for (size_t i = 0; i < ple.size(); ++i) ple[i] = (context[i] + ple[i]) * input_scale;
    return ple;
  }

  // Spec §2.5: attention for the chunk at positions p0.., writing this
  // layer's K/V into the cache first (KV-shared layers read their source's).
  // last_key: see cpu::Attention (image tokens on sliding layers); empty: causal.
  void Attend(const LayerPlan& layer, const std::map<std::string, WeightPtr>& w, KvCache& cache,
              int64_t p0, int64_t t, std::span<const float> a, std::span<float> out,
              std::span<const int64_t> last_key) const {
    const TextConfig& c = plan.config;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const int64_t h = c.hidden_size, d = layer.head_dim, nh = layer.num_heads,
                  nkv = layer.num_kv_heads;
    const std::string pre = absl::StrCat("layers.", layer.index, ".self_attn.");
    const auto& inv = inv_freq[layer.index];

    std::vector<float> q(t * nh * d);
    Linear(a, t, h, *w.at(pre + "q_proj.weight"), nh * d, q, pool.get());
    RmsNorm(q, d, *w.at(pre + "q_norm.weight"), eps);
    for (int64_t i = 0; i < t; ++i) {
      cpu::ApplyRope(std::span(q).subspan(i * nh * d, nh * d), nh, d, p0 + i, inv);
    }
    if (!layer.kv_shared) {
      std::vector<float> k(t * nkv * d), v;
      Linear(a, t, h, *w.at(pre + "k_proj.weight"), nkv * d, k, pool.get());
      if (layer.v_from_k) {
        v = k;  // K=V layers: V is the raw K projection, before k_norm and RoPE
      } else {
        v.resize(k.size());
        Linear(a, t, h, *w.at(pre + "v_proj.weight"), nkv * d, v, pool.get());
      }
      RmsNorm(k, d, *w.at(pre + "k_norm.weight"), eps);
      for (int64_t i = 0; i < t; ++i) {
        cpu::ApplyRope(std::span(k).subspan(i * nkv * d, nkv * d), nkv, d, p0 + i, inv);
      }
      RmsNorm(v, d, {}, eps);
      KvCache::Layer& own = cache.layers_[layer.index];
      for (int64_t i = 0; i < t; ++i) {
        const int64_t slot = (p0 + i) % own.capacity;
        std::copy_n(k.begin() + i * nkv * d, nkv * d, own.k.begin() + slot * nkv * d);
        std::copy_n(v.begin() + i * nkv * d, nkv * d, own.v.begin() + slot * nkv * d);
      }
    }
    const KvCache::Layer& src = cache.layers_[layer.kv_source];
    const cpu::KvView kv{src.k.data(), src.v.data(), src.capacity, static_cast<int>(nkv),
                         static_cast<int>(d)};
    const bool sliding = layer.type == LayerType::kSliding;
    std::vector<float> attn(q.size());
    // HF (transformers 5.17, create_masks_for_vision_model): images are
    // bidirectional on sliding layers only; full layers stay causal.
    cpu::Attention(q, t, static_cast<int>(nh), p0, sliding ? c.sliding_window : 0, kv, attn,
                   pool.get(), sliding ? last_key : std::span<const int64_t>());
    Linear(attn, t, nh * d, *w.at(pre + "o_proj.weight"), h, out, pool.get());
  }

  // down(gelu_tanh(gate(x)) * up(x)) for x [t, in] with weights [I, in] (gate,
  // up) and [out, I] (down).
  void GatedMlp(std::span<const float> x, int64_t t, int64_t in, std::span<const float> gate,
                std::span<const float> up, int64_t width, std::span<const float> down,
                int64_t out_dim, std::span<float> out) const {
    std::vector<float> g(t * width), u(t * width);
    Linear(x, t, in, gate, width, g, pool.get());
    Linear(x, t, in, up, width, u, pool.get());
    for (size_t i = 0; i < g.size(); ++i) g[i] = cpu::GeluTanh(g[i]) * u[i];
    Linear(g, t, width, down, out_dim, out, pool.get());
  }

  // Gemma4TextRouter + Gemma4TextExperts on the residual r [t, H]: routing
  // from the weightless-normed r, experts on pre_feedforward_layernorm_2(r).
  void Experts(const LayerPlan& layer, const std::map<std::string, WeightPtr>& w, int64_t t,
               std::span<const float> r, std::span<float> out) const {
    const TextConfig& c = plan.config;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const int64_t h = c.hidden_size, e_count = *c.num_experts, m = *c.moe_intermediate_size;
    const std::string pre = absl::StrCat("layers.", layer.index, ".");

    std::vector<float> routed(r.begin(), r.end());
    RmsNorm(routed, h, {}, eps);
    const std::vector<float>& scale = *w.at(pre + "router.scale");
    const float root = PowF(h, -0.5);
    for (size_t i = 0; i < routed.size(); ++i) routed[i] = routed[i] * scale[i % h] * root;
    std::vector<float> logits(t * e_count);
    Linear(routed, t, h, *w.at(pre + "router.proj.weight"), e_count, logits, pool.get());
    std::vector<std::vector<cpu::ExpertChoice>> choices(t);
    for (int64_t i = 0; i < t; ++i) {
      choices[i] = cpu::RouteTopK(std::span(logits).subspan(i * e_count, e_count),
                                  *w.at(pre + "router.per_expert_scale"), *c.top_k_experts);
    }

    std::vector<float> x(r.begin(), r.end());
    RmsNorm(x, h, *w.at(pre + "pre_feedforward_layernorm_2.weight"), eps);
    const std::vector<float>& gate_up = *w.at(pre + "experts.gate_up_proj");
    const std::vector<float>& down = *w.at(pre + "experts.down_proj");
    std::fill(out.begin(), out.end(), 0.0f);
    // Expert by expert in ascending order, as HF adds them.
    for (int64_t e = 0; e < e_count; ++e) {
      std::vector<int64_t> rows;
      std::vector<float> weights, in;
      for (int64_t i = 0; i < t; ++i) {
        for (const cpu::ExpertChoice& ch : choices[i]) {
          if (ch.expert != e) continue;
          rows.push_back(i);
          weights.push_back(ch.weight);
          in.insert(in.end(), x.begin() + i * h, x.begin() + (i + 1) * h);
        }
      }
      if (rows.empty()) continue;
      const int64_t n = rows.size();
      const std::span<const float> gu(gate_up.data() + e * 2 * m * h, 2 * m * h);
      std::vector<float> y(n * h);
      GatedMlp(in, n, h, gu.subspan(0, m * h), gu.subspan(m * h, m * h), m,
               std::span<const float>(down.data() + e * h * m, h * m), h, y);
      for (int64_t j = 0; j < n; ++j) {
        for (int64_t i = 0; i < h; ++i) out[rows[j] * h + i] += y[j * h + i] * weights[j];
      }
    }
  }

  // Spec §2.4: one decoder layer on x [t, H] in place.
  absl::Status RunLayer(const LayerPlan& layer, KvCache& cache, int64_t p0, int64_t t,
                        std::vector<float>& x, const std::vector<float>& ple,
                        std::span<const int64_t> last_key) const {
    const TextConfig& c = plan.config;
    const float eps = static_cast<float>(c.rms_norm_eps);
    const int64_t h = c.hidden_size;
    std::map<std::string, WeightPtr> w;
    for (const WeightSpec& spec : plan.layer_weights[layer.index]) {
      GQ_ASSIGN_OR_RETURN(w[spec.name], Weight(spec.name));
    }
    const std::string pre = absl::StrCat("layers.", layer.index, ".");
    auto weight = [&](const char* name) -> const std::vector<float>& { return *w.at(pre + name); };

    std::vector<float> a = x, o(t * h);
    RmsNorm(a, h, weight("input_layernorm.weight"), eps);
    Attend(layer, w, cache, p0, t, a, o, last_key);
    RmsNorm(o, h, weight("post_attention_layernorm.weight"), eps);
    AddTo(x, o);

    std::vector<float> m = x, mlp(t * h);
    RmsNorm(m, h, weight("pre_feedforward_layernorm.weight"), eps);
    GatedMlp(m, t, h, weight("mlp.gate_proj.weight"), weight("mlp.up_proj.weight"), layer.mlp_width,
             weight("mlp.down_proj.weight"), h, mlp);
    if (layer.has_moe) {
      RmsNorm(mlp, h, weight("post_feedforward_layernorm_1.weight"), eps);
      std::vector<float> experts(t * h);
      Experts(layer, w, t, x, experts);
      RmsNorm(experts, h, weight("post_feedforward_layernorm_2.weight"), eps);
      AddTo(mlp, experts);
    }
    RmsNorm(mlp, h, weight("post_feedforward_layernorm.weight"), eps);
    AddTo(x, mlp);

    if (layer.has_ple) {
      const int64_t p = c.hidden_size_per_layer_input, l = c.num_hidden_layers;
      std::vector<float> g(t * p), proj(t * h);
      Linear(x, t, h, weight("per_layer_input_gate.weight"), p, g, pool.get());
      for (int64_t i = 0; i < t; ++i) {
        for (int64_t j = 0; j < p; ++j) {
          float& v = g[i * p + j];
          v = cpu::GeluTanh(v) * ple[(i * l + layer.index) * p + j];
        }
      }
      Linear(g, t, p, weight("per_layer_projection.weight"), h, proj, pool.get());
      RmsNorm(proj, h, weight("post_per_layer_input_norm.weight"), eps);
      AddTo(x, proj);
    }
    const float scalar = weight("layer_scalar")[0];
    for (float& v : x) v *= scalar;
    return absl::OkStatus();
  }

  absl::Status CheckChunk(const KvCache& cache, std::span<const int> tokens) const {
    const TextConfig& c = plan.config;
    // Shapes, not identity: a cache from an identically shaped model is fine.
    bool fits = cache.layers_.size() == plan.layers.size();
    for (size_t i = 0; fits && i < plan.layers.size(); ++i) {
      const LayerPlan& l = plan.layers[i];
      const KvCache::Layer& kv = cache.layers_[i];
      const int64_t capacity = Capacity(l, cache.max_positions_, cache.max_chunk_);
      fits = kv.capacity == capacity &&
             static_cast<int64_t>(kv.k.size()) == capacity * l.num_kv_heads * l.head_dim &&
             kv.v.size() == kv.k.size();
    }
    if (!fits) return absl::InvalidArgumentError("KV cache: not made by this model's NewCache");
    if (tokens.empty()) return absl::InvalidArgumentError("Forward: empty chunk");
    if (static_cast<int64_t>(tokens.size()) > cache.max_chunk_) {
      return absl::InvalidArgumentError(absl::StrCat("Forward: chunk of ", tokens.size(),
                                                     " tokens, but the cache allows at most ",
                                                     cache.max_chunk_));
    }
    if (cache.length_ + static_cast<int64_t>(tokens.size()) > cache.max_positions_) {
      return absl::InvalidArgumentError(
          absl::StrCat("Forward: ", cache.length_, " cached + ", tokens.size(),
                       " new tokens exceed the cache's ", cache.max_positions_, " positions"));
    }
    return CheckTokenIds(c, tokens, "Forward");
  }

  // The forward of one chunk. Writes K/V only into slots that no position
  // still visible to a later chunk occupies (the ring holds W + max_chunk - 1),
  // so an error leaves the cache as it was: length and every live position.
  absl::StatusOr<std::vector<float>> Run(KvCache& cache, std::span<const int> tokens,
                                         std::span<const float> image_rows,
                                         std::vector<float>* hidden) const {
    const TextConfig& c = plan.config;
    const int64_t t = tokens.size(), h = c.hidden_size, p0 = cache.length_;
    GQ_ASSIGN_OR_RETURN(const ImageChunk chunk,
                        PlanImageChunk(tokens, p0, static_cast<int64_t>(image_rows.size()), h,
                                       source->config(), cache.open_image_, "Forward"));
    GQ_RETURN_IF_ERROR(CheckChunk(cache, chunk.ids));
    // sqrt(H) in float32: HF casts it to the weight dtype (float32 here).
    GQ_ASSIGN_OR_RETURN(std::vector<float> x,
                        Gather("embed_tokens.weight", chunk.ids, c.vocab_size, h, PowF(h, 0.5)));
    for (size_t k = 0; k < chunk.image_at.size(); ++k) {  // spec §5.5: unscaled
      std::copy_n(image_rows.begin() + k * h, h, x.begin() + chunk.image_at[k] * h);
    }
    std::vector<float> ple;
    if (c.has_per_layer_embeddings()) {
      GQ_ASSIGN_OR_RETURN(ple, PerLayerInputs(chunk.ids, x));
    }
    const std::vector<int64_t>& last_key = chunk.last_key;
    if (hidden != nullptr) hidden->insert(hidden->end(), x.begin(), x.end());
    for (const LayerPlan& layer : plan.layers) {
      GQ_RETURN_IF_ERROR(
          Annotate(RunLayer(layer, cache, p0, t, x, ple, last_key), "layer ", layer.index));
      if (hidden != nullptr) hidden->insert(hidden->end(), x.begin(), x.end());
    }
    GQ_ASSIGN_OR_RETURN(WeightPtr norm, Weight("norm.weight"));
    RmsNorm(x, h, *norm, static_cast<float>(c.rms_norm_eps));
    // As HF's output_hidden_states: the last entry is after the final norm.
    if (hidden != nullptr) std::copy(x.begin(), x.end(), hidden->end() - t * h);
    GQ_ASSIGN_OR_RETURN(WeightPtr head, Weight(head_name));
    std::vector<float> logits(t * c.vocab_size);
    Linear(x, t, h, *head, c.vocab_size, logits, pool.get());
    if (c.final_logit_softcapping.has_value()) {
      cpu::SoftCap(logits, static_cast<float>(*c.final_logit_softcapping));
    }
    cache.length_ += t;
    cache.open_image_ = chunk.ends_in_image;
    return logits;
  }
};

CpuModel::CpuModel(std::unique_ptr<State> state) : state_(std::move(state)) {}
CpuModel::~CpuModel() = default;

absl::StatusOr<std::unique_ptr<CpuModel>> CpuModel::Load(const std::string& path,
                                                         const CpuModelOptions& options) {
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<WeightSource> source, OpenWeightSource(path));
  return FromSource(std::move(source), options);
}

absl::StatusOr<std::unique_ptr<CpuModel>> CpuModel::FromSource(std::unique_ptr<WeightSource> source,
                                                               const CpuModelOptions& options) {
  if (source == nullptr) return absl::InvalidArgumentError("CpuModel: null weight source");
  auto state = std::make_unique<State>();
  GQ_ASSIGN_OR_RETURN(state->plan, ModelPlan::Create(source->config().text));
  GQ_RETURN_IF_ERROR(CheckWeights(state->plan, *source));
  state->head_name =
      source->Shape("lm_head.weight").has_value() ? "lm_head.weight" : "embed_tokens.weight";
  for (const LayerPlan& layer : state->plan.layers) {
    state->inv_freq.push_back(cpu::RopeInverseFrequencies(layer.rope, layer.head_dim));
  }
  state->options = options;
  state->pool = std::make_unique<ThreadPool>(options.threads);
  state->source = std::move(source);
  return std::unique_ptr<CpuModel>(new CpuModel(std::move(state)));
}

const ModelPlan& CpuModel::plan() const { return state_->plan; }
const WeightSource& CpuModel::source() const { return *state_->source; }

KvCache CpuModel::NewCache(int64_t max_positions, int max_chunk) const {
  KvCache cache;
  cache.max_positions_ = std::max<int64_t>(max_positions, 1);
  cache.max_chunk_ = std::max(max_chunk, 1);
  for (const LayerPlan& layer : state_->plan.layers) {
    KvCache::Layer& l = cache.layers_.emplace_back();
    l.capacity = state_->Capacity(layer, cache.max_positions_, cache.max_chunk_);
    l.k.assign(l.capacity * layer.num_kv_heads * layer.head_dim, 0.0f);
    l.v.assign(l.k.size(), 0.0f);
  }
  return cache;
}

absl::StatusOr<std::vector<float>> CpuModel::Forward(KvCache& cache, std::span<const int> tokens,
                                                     std::span<const float> image_rows) const {
  return state_->Run(cache, tokens, image_rows, nullptr);
}

absl::StatusOr<std::vector<float>> CpuModel::Prefill(KvCache& cache, std::span<const int> tokens,
                                                     int chunk,
                                                     std::span<const float> image_rows) const {
  if (chunk < 1 || chunk > cache.max_chunk()) {
    return absl::InvalidArgumentError(
        absl::StrCat("Prefill: chunk size ", chunk, " outside [1, ", cache.max_chunk(), "]"));
  }
  if (cache.length() + static_cast<int64_t>(tokens.size()) > cache.max_positions()) {
    return absl::InvalidArgumentError(absl::StrCat("Prefill: ", cache.length(), " cached + ",
                                                   tokens.size(), " new tokens exceed the cache's ",
                                                   cache.max_positions(), " positions"));
  }
  if (tokens.empty()) return absl::InvalidArgumentError("Prefill: no tokens");
  const Config& config = state_->source->config();
  const auto is_image = [&](int id) { return config.image_token_id == id; };
  absl::StatusOr<std::vector<size_t>> ends = ImageAwareChunkEnds(tokens, chunk, config);
  if (!ends.ok()) return Annotate(ends.status(), "Prefill");
  const int64_t h = state_->plan.config.hidden_size;
  const size_t images = std::count_if(tokens.begin(), tokens.end(), is_image);
  if (image_rows.size() != images * h) {
    return absl::InvalidArgumentError(
        absl::StrCat("Prefill: ", images, " image placeholder tokens need ", images * h,
                     " embedding values, but ", image_rows.size(), " were given"));
  }
  std::vector<float> logits;
  size_t begin = 0, row = 0;
  for (size_t end : *ends) {
    const size_t n = std::count_if(tokens.begin() + begin, tokens.begin() + end, is_image);
    GQ_ASSIGN_OR_RETURN(std::vector<float> part, Forward(cache, tokens.subspan(begin, end - begin),
                                                         image_rows.subspan(row, n * h)));
    logits.insert(logits.end(), part.begin(), part.end());
    row += n * h;
    begin = end;
  }
  return logits;
}

absl::StatusOr<std::vector<float>> CpuModel::HiddenStates(std::span<const int> tokens,
                                                          std::span<const float> image_rows) const {
  const int chunk = static_cast<int>(std::max<size_t>(tokens.size(), 1));
  KvCache cache = NewCache(chunk, chunk);
  std::vector<float> hidden;
  GQ_RETURN_IF_ERROR(state_->Run(cache, tokens, image_rows, &hidden).status());
  return hidden;
}

}  // namespace gquant::gemma4
