#include "gquant/gemma4/random_weight_source.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gquant/dtype.h"
#include "gquant/gemma4/model_plan.h"
#include "gquant/quantize.h"
#include "gquant/status.h"
#include "gquant/tensor.h"
#include "gquant/thread_pool.h"

namespace gquant::gemma4 {
namespace {

// ---- counter-based generator: draw i of stream `key` is Mix(key + (i+1) gamma) ----

constexpr uint64_t kGamma = 0x9E3779B97F4A7C15ull;

// splitmix64's finalizer: a bijection whose outputs pass BigCrush as a stream.
inline uint64_t Mix(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
inline uint64_t Draw(uint64_t key, uint64_t i) { return Mix(key + (i + 1) * kGamma); }
// Uniform in [0, 1) from the top 24 bits.
inline float Unit(uint64_t bits) { return static_cast<float>(bits >> 40) * 0x1p-24f; }
inline float RoundBf16(float v) { return BFloat16ToFloat(FloatToBFloat16(v)); }

uint64_t HashName(std::string_view name) {
  uint64_t h = 0xCBF29CE484222325ull;  // FNV-1a
  for (char c : name) h = (h ^ static_cast<uint8_t>(c)) * 0x100000001B3ull;
  return h;
}

// Standard deviations of uniform codes: sqrt((levels^2 - 1) / 12).
constexpr float kInt4CodeStd = 4.6097722f;  // 16 levels
constexpr float kInt8CodeStd = 73.900158f;  // 256 levels
constexpr int kInt4GroupSize = 32;
// Rows of one generate-and-pack block: about this many elements, a multiple
// of 16 (the int4 tile height). Small enough to stay in L2 and to spread a
// matrix over many threads.
constexpr int64_t kBlockElements = int64_t{1} << 18;
constexpr int64_t kBlockRowMultiple = 16;

enum class Form {
  kVector,  // 1-D: U(0.5, 1.5) * center
  kPlain,   // float32 matrix: uniform with std sigma, bf16-rounded
  kInt8,    // int8 per-row symmetric
  kInt4,    // int4 group 32 asymmetric
};

struct RandomWeight {
  std::vector<int64_t> shape;
  Form form = Form::kVector;
  float center = 1.0f;  // kVector
  float sigma = 0.0f;   // matrices: target standard deviation of the values
  uint64_t key = 0;     // the weight's stream: codes / values
  uint64_t param_key = 0;
  int64_t matrices = 1, rows = 0, cols = 0;  // [E, N, K]; E = 1 for 2-D

  bool quantized() const { return form == Form::kInt8 || form == Form::kInt4; }
  int64_t group_size() const { return form == Form::kInt8 ? cols : kInt4GroupSize; }
  int64_t groups() const { return cols / group_size(); }
  QuantConfig quant_config() const {
    return form == Form::kInt8 ? QuantConfig{8, kPerRowGroupSize, true}
                               : QuantConfig{4, kInt4GroupSize, false};
  }
  QuantizedMatrixInfo info(int64_t row_count) const {
    return form == Form::kInt8
               ? QuantizedMatrixInfo{QuantizedWeightInfo::Kind::kIntx, 8, row_count, cols, cols}
               : QuantizedMatrixInfo{QuantizedWeightInfo::Kind::kInt4, 4, row_count, cols,
                                     kInt4GroupSize};
  }
  int64_t block_rows() const {
    return std::max(kBlockRowMultiple, kBlockElements / std::max<int64_t>(cols, 1) /
                                           kBlockRowMultiple * kBlockRowMultiple);
  }
};

RandomWeight Describe(const WeightSpec& spec, const TextConfig& c, uint64_t seed, bool quantized) {
  RandomWeight w;
  w.shape = spec.shape;
  w.key = Mix(seed ^ Mix(HashName(spec.name)));
  w.param_key = Mix(w.key ^ 0x5CA1Eull);
  const std::string_view name = spec.name;
  if (spec.shape.empty()) {  // a vision clip bound: [-3, -1] or [1, 3]
    w.form = Form::kVector;
    w.center = name.ends_with("_min") ? -2.0f : 2.0f;
    return w;
  }
  if (spec.shape.size() == 1) {
    w.form = Form::kVector;
    if (name.ends_with("self_attn.q_norm.weight") || name.ends_with("self_attn.k_norm.weight")) {
      w.center = std::pow(static_cast<float>(spec.shape[0]), -0.25f);
    }
    return w;
  }
  w.cols = spec.shape.back();
  w.rows = spec.shape[spec.shape.size() - 2];
  for (size_t d = 0; d + 2 < spec.shape.size(); ++d) w.matrices *= spec.shape[d];
  const bool embedding = name == "embed_tokens.weight";
  const bool router = name.ends_with("router.proj.weight");
  if (embedding) {
    w.sigma = 1.0f / std::sqrt(static_cast<float>(c.hidden_size));
  } else if (name == "embed_tokens_per_layer.weight") {
    w.sigma = 1.0f / std::sqrt(static_cast<float>(c.hidden_size_per_layer_input));
  } else if (router) {
    w.sigma = 1.0f;
  } else {
    w.sigma = 1.0f / std::sqrt(static_cast<float>(w.cols));
  }
  const bool vision = name.starts_with("vision_tower.") || name.starts_with("embed_vision.");
  if (!quantized || router) {
    w.form = Form::kPlain;
  } else if (embedding || vision) {  // vision: int8 per row, as the bundled recipes
    w.form = Form::kInt8;
  } else {
    w.form = w.cols % kInt4GroupSize == 0 ? Form::kInt4 : Form::kPlain;
  }
  return w;
}

// ---- generation ----

// Rows [row_begin, row_begin + count) of matrix `m` of a quantized weight in
// the unpacked form. Codes are drawn 64 bits at a time (16 int4 codes, K
// being a multiple of 32, or 8 int8 codes), one draw per row (int8) or group
// (int4) for the parameters.
void GenerateUnpacked(const RandomWeight& w, int64_t m, int64_t row_begin, int64_t count,
                      int8_t* codes, float* scale, float* zero) {
  const int64_t k = w.cols, g = w.groups();
  const int64_t first_row = m * w.rows + row_begin;  // global row index
  if (w.form == Form::kInt4) {
    const float base = w.sigma / kInt4CodeStd;
    for (int64_t r = 0; r < count; ++r) {
      const uint64_t row_draw = static_cast<uint64_t>((first_row + r) * (k / 16));
      int8_t* out = codes + r * k;
      for (int64_t j = 0; j < k / 16; ++j) {
        uint64_t bits = Draw(w.key, row_draw + j);
        for (int i = 0; i < 16; ++i, bits >>= 4) out[16 * j + i] = static_cast<int8_t>(bits & 15);
      }
      for (int64_t j = 0; j < g; ++j) {
        const uint64_t bits = Draw(w.param_key, static_cast<uint64_t>((first_row + r) * g + j));
        scale[r * g + j] = RoundBf16(base * (0.75f + 0.5f * Unit(bits)));
        zero[r * g + j] = static_cast<float>(112 + (bits & 0xFFFF) % 17) / 16.0f;  // 7..8
      }
    }
  } else {
    const float base = w.sigma / kInt8CodeStd;
    for (int64_t r = 0; r < count; ++r) {
      const int64_t draws = (k + 7) / 8;  // the last one partly used when K % 8 != 0
      const uint64_t row_draw = static_cast<uint64_t>((first_row + r) * draws);
      int8_t* out = codes + r * k;
      for (int64_t j = 0; j < draws; ++j) {
        const uint64_t bits = Draw(w.key, row_draw + j);
        // Bytes as two's complement codes: -128..127.
        std::memcpy(out + 8 * j, &bits, static_cast<size_t>(std::min<int64_t>(8, k - 8 * j)));
      }
      const uint64_t bits = Draw(w.param_key, static_cast<uint64_t>(first_row + r));
      scale[r] = RoundBf16(base * (0.75f + 0.5f * Unit(bits)));
      zero[r] = 0.0f;
    }
  }
}

// Elements [begin, end) (flat index over the whole tensor) of a plain weight.
void GeneratePlain(const RandomWeight& w, int64_t begin, int64_t end, float* out) {
  if (w.form == Form::kVector) {
    for (int64_t i = begin; i < end; ++i) {
      out[i - begin] = RoundBf16(w.center * (0.5f + Unit(Draw(w.key, static_cast<uint64_t>(i)))));
    }
    return;
  }
  const float half_width = w.sigma * std::sqrt(3.0f);  // U(-a, a) has std a / sqrt(3)
  for (int64_t i = begin; i < end; ++i) {
    out[i - begin] =
        RoundBf16(half_width * (2.0f * Unit(Draw(w.key, static_cast<uint64_t>(i))) - 1.0f));
  }
}

// Per-thread buffers of one block of rows in the unpacked form.
struct UnpackedBlock {
  std::vector<int8_t> codes;
  std::vector<float> scale, zero;

  UnpackedMatrixView Generate(const RandomWeight& w, int64_t m, int64_t row_begin, int64_t count) {
    codes.resize(count * w.cols);
    scale.resize(count * w.groups());
    zero.resize(count * w.groups());
    GenerateUnpacked(w, m, row_begin, count, codes.data(), scale.data(), zero.data());
    return {w.info(count), codes, scale, zero};
  }
};

int64_t Product(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

class RandomWeightSource final : public WeightSource {
 public:
  RandomWeightSource(Config config, const ModelPlan& plan, const RandomWeightOptions& options)
      : config_(std::move(config)),
        options_(options),
        pool_(std::make_unique<ThreadPool>(options.threads)) {
    std::vector<WeightSpec> specs = plan.AllWeights();
    // What gquant-quantize writes for a tied model: the head apart, under the
    // lm_head rule (int4 in "default").
    if (options.quantized && config_.text.tie_word_embeddings) {
      specs.push_back({"lm_head.weight", {config_.text.vocab_size, config_.text.hidden_size}});
    }
    for (const WeightSpec& spec : specs) {
      names_.push_back(spec.name);
      weights_.emplace(spec.name, Describe(spec, config_.text, options.seed, options.quantized));
    }
    if (config_.vision.has_value()) {
      for (const WeightSpec& spec : VisionWeightSpecs(*config_.vision, config_.text.hidden_size)) {
        media_names_.push_back(spec.name);
        weights_.emplace(spec.name, Describe(spec, config_.text, options.seed, options.quantized));
      }
    }
  }

  const Config& config() const override { return config_; }
  std::vector<std::string> Names() const override { return names_; }
  std::vector<std::string> MediaNames() const override { return media_names_; }
  std::optional<std::vector<int64_t>> Shape(std::string_view name) const override {
    const RandomWeight* w = Find(name);
    if (w == nullptr) return std::nullopt;
    return w->shape;
  }
  std::string description() const override {
    return absl::StrCat("random weights (seed ", options_.seed,
                        options_.quantized ? ", quantized" : ", float32", ")");
  }
  bool StoresQuantized(std::string_view name) const override {
    const RandomWeight* w = Find(name);
    return w != nullptr && w->quantized();
  }

  absl::StatusOr<std::vector<float>> Load(std::string_view name) const override {
    const RandomWeight* w = Find(name);
    if (w == nullptr) return NotFound(name);
    std::vector<float> out(Product(w->shape));
    if (w->form == Form::kVector) {
      GeneratePlain(*w, 0, static_cast<int64_t>(out.size()), out.data());
      return out;
    }
    for (int64_t m = 0; m < w->matrices; ++m) {
      GQ_RETURN_IF_ERROR(
          ReadRows(*w, m, 0, w->rows, std::span(out).subspan(m * w->rows * w->cols)));
    }
    return out;
  }

  absl::StatusOr<std::vector<float>> LoadRows(std::string_view name, int64_t row_begin,
                                              int64_t rows) const override {
    const RandomWeight* w = Find(name);
    if (w == nullptr) return NotFound(name);
    if (w->shape.size() != 2 || row_begin < 0 || rows < 0 || row_begin + rows > w->rows) {
      return absl::InvalidArgumentError(absl::StrCat(description(), ": weight '", std::string(name),
                                                     "': rows [", row_begin, ", ", row_begin + rows,
                                                     ") of shape ", ShapeToString(w->shape)));
    }
    std::vector<float> out(rows * w->cols);
    GQ_RETURN_IF_ERROR(ReadRows(*w, 0, row_begin, rows, out));
    return out;
  }

  absl::StatusOr<std::vector<PackedMatrix>> LoadPacked(std::string_view name,
                                                       PackBackend backend) const override {
    const RandomWeight* w = Find(name);
    if (w == nullptr) return NotFound(name);
    if (!w->quantized()) return WeightSource::LoadPacked(name, backend);
    std::vector<PackedMatrix> out;
    out.reserve(w->matrices);
    for (int64_t m = 0; m < w->matrices; ++m) {
      std::string label = absl::StrCat(description(), ": weight '", std::string(name), "'");
      if (w->matrices > 1) absl::StrAppend(&label, " expert ", m);
      GQ_ASSIGN_OR_RETURN(PackedMatrix packed, Pack(*w, m, backend, label));
      out.push_back(std::move(packed));
    }
    return out;
  }

 private:
  const RandomWeight* Find(std::string_view name) const {
    const auto it = weights_.find(name);
    return it == weights_.end() ? nullptr : &it->second;
  }
  absl::Status NotFound(std::string_view name) const {
    return absl::NotFoundError(
        absl::StrCat(description(), ": no weight '", std::string(name), "'"));
  }

  // Rows [row_begin, row_begin + count) of matrix `m` in float32 into `out`,
  // in parallel blocks: drawn directly, or generated and dequantized.
  absl::Status ReadRows(const RandomWeight& w, int64_t m, int64_t row_begin, int64_t count,
                        std::span<float> out) const {
    const int64_t k = w.cols, step = w.block_rows();
    const int64_t blocks = (count + step - 1) / step;
    std::vector<absl::Status> status(blocks);
    pool_->ParallelFor(blocks, 1, [&](int64_t begin, int64_t end) {
      UnpackedBlock block;
      for (int64_t b = begin; b < end; ++b) {
        const int64_t r0 = b * step, n = std::min(step, count - r0);
        float* dst = out.data() + r0 * k;
        if (!w.quantized()) {
          const int64_t first = (m * w.rows + row_begin + r0) * k;
          GeneratePlain(w, first, first + n * k, dst);
          continue;
        }
        const UnpackedMatrixView v = block.Generate(w, m, row_begin + r0, n);
        status[b] =
            Dequantize(w.quant_config(), n, k, v.codes, v.scale, v.zero, std::span(dst, n * k));
      }
    });
    for (const absl::Status& s : status) GQ_RETURN_IF_ERROR(s);
    return absl::OkStatus();
  }

  // Matrix `m` packed for `backend`: PackMatrix on blocks of rows, run in
  // parallel and concatenated. Every layout (pack.h) stores a block of 16
  // rows as one contiguous run of each part, in row order, with a fixed
  // number of bytes per row, so a block's parts land at row_begin * bytes
  // per row. Matrices of one block, or with N % 16 != 0, are packed whole
  // (and get the packer's own shape errors).
  absl::StatusOr<PackedMatrix> Pack(const RandomWeight& w, int64_t m, PackBackend backend,
                                    const std::string& label) const {
    const int64_t n = w.rows, step = w.block_rows();
    UnpackedBlock first_block;
    if (n <= step || n % kBlockRowMultiple != 0) {
      return PackMatrix(first_block.Generate(w, m, 0, n), backend, label);
    }
    GQ_ASSIGN_OR_RETURN(PackedMatrix first,
                        PackMatrix(first_block.Generate(w, m, 0, step), backend, label));
    PackedMatrix out{first.layout, w.info(n), first.exact, {}};
    std::map<std::string, int64_t, std::less<>> row_bytes;
    for (auto& [part, bytes] : first.parts) {
      const int64_t size = static_cast<int64_t>(bytes.size());
      if (size % step != 0) {
        return absl::InternalError(absl::StrCat(label, ": layout ", std::string(first.layout),
                                                " part '", part, "' has ", size, " bytes for ",
                                                step, " rows"));
      }
      row_bytes[part] = size / step;
      std::vector<std::byte>& dst = out.parts[part];
      dst.resize(size / step * n);
      std::memcpy(dst.data(), bytes.data(), bytes.size());
    }
    first = PackedMatrix{};  // free the first block before the others

    const int64_t blocks = (n + step - 1) / step;
    std::vector<absl::Status> status(blocks);
    std::atomic<bool> exact = out.exact;
    pool_->ParallelFor(blocks - 1, 1, [&](int64_t begin, int64_t end) {
      UnpackedBlock block;
      for (int64_t b = begin + 1; b < end + 1; ++b) {
        const int64_t r0 = b * step, count = std::min(step, n - r0);
        absl::StatusOr<PackedMatrix> packed =
            PackMatrix(block.Generate(w, m, r0, count), backend, label);
        if (!packed.ok()) {
          status[b] = Annotate(packed.status(), "rows ", r0, "..", r0 + count - 1);
          continue;
        }
        if (!packed->exact) exact = false;
        for (const auto& [part, bytes] : packed->parts) {
          const auto it = row_bytes.find(part);
          if (it == row_bytes.end() || static_cast<int64_t>(bytes.size()) != it->second * count) {
            status[b] = absl::InternalError(
                absl::StrCat(label, ": part '", part, "' changed size between row blocks"));
            break;
          }
          std::memcpy(out.parts.find(part)->second.data() + r0 * it->second, bytes.data(),
                      bytes.size());
        }
      }
    });
    for (const absl::Status& s : status) GQ_RETURN_IF_ERROR(s);
    out.exact = exact;
    return out;
  }

  Config config_;
  RandomWeightOptions options_;
  std::unique_ptr<ThreadPool> pool_;
  std::vector<std::string> names_;
  std::vector<std::string> media_names_;  // vision tower and embedder (configs with vision)
  std::map<std::string, RandomWeight, std::less<>> weights_;
};

// ---- released configs (spec gemma4.md §1.1) ----

struct ReleasedShape {
  int hidden, intermediate, layers, heads, kv_heads, full_kv_heads, full_every, window;
  int max_positions, ple, kv_shared;
  bool k_eq_v, double_wide;
  BidirectionalAttention bidirectional;
};

TextConfig ReleasedText(const ReleasedShape& s) {
  TextConfig c;
  c.vocab_size = 262144;
  c.vocab_size_per_layer_input = 262144;
  c.hidden_size = s.hidden;
  c.intermediate_size = s.intermediate;
  c.num_hidden_layers = s.layers;
  c.num_attention_heads = s.heads;
  c.num_key_value_heads = s.kv_heads;
  c.head_dim = 256;
  c.max_position_embeddings = s.max_positions;
  c.rms_norm_eps = 1e-6;
  c.pad_token_id = 0;
  c.eos_token_ids = {1};
  c.bos_token_id = 2;
  c.tie_word_embeddings = true;
  c.sliding_window = s.window;
  c.final_logit_softcapping = 30.0;
  c.use_bidirectional_attention = s.bidirectional;
  c.hidden_size_per_layer_input = s.ple;
  c.attention_k_eq_v = s.k_eq_v;
  c.num_kv_shared_layers = s.kv_shared;
  c.use_double_wide_mlp = s.double_wide;
  c.rope_sliding = {"default", 10000.0, 1.0};
  c.rope_full = {"proportional", 1000000.0, 0.25};
  for (int i = 0; i < s.layers; ++i) {
    const bool full = (i + 1) % s.full_every == 0;
    c.layer_types.push_back(full ? LayerType::kFull : LayerType::kSliding);
    c.layer_head_dim.push_back(full ? 512 : 256);  // global_head_dim on full layers
    c.layer_num_kv_heads.push_back(full ? s.full_kv_heads : s.kv_heads);
  }
  return c;
}

// `config` as a text-only model's: model_type "gemma4_text", the causal-LM
// architecture, the text config's eos ids, no audio tower.
Config TextOnly(Config config) {
  config.model_type = "gemma4_text";
  config.architectures = {"Gemma4ForCausalLM"};
  config.eos_token_ids = config.text.eos_token_ids;
  config.has_audio = false;
  return config;
}

}  // namespace

absl::StatusOr<std::unique_ptr<WeightSource>> MakeRandomWeightSource(
    const Config& config, const RandomWeightOptions& options) {
  GQ_ASSIGN_OR_RETURN(const ModelPlan plan, ModelPlan::Create(config.text));
  // The vision tower (its weights generated too) and the media ids stay.
  Config text_only = TextOnly(config);
  return std::unique_ptr<WeightSource>(new RandomWeightSource(std::move(text_only), plan, options));
}

absl::StatusOr<Config> ReleasedModelConfig(std::string_view name) {
  using BA = BidirectionalAttention;
  TextConfig text;
  if (name == "31b") {
    // [S,S,S,S,S,F] x 10; full layers 512-dim with 4 KV heads and K = V.
    text =
        ReleasedText({5376, 21504, 60, 32, 16, 4, 6, 1024, 262144, 0, 0, true, false, BA::kVision});
  } else if (name == "e2b") {
    // [S,S,S,S,F] x 7; PLE; layers 15..34 share K/V and have a 12288-wide MLP.
    text = ReleasedText({1536, 6144, 35, 8, 1, 1, 5, 512, 131072, 256, 20, false, true, BA::kNone});
  } else if (name == "e4b") {
    // [S,S,S,S,S,F] x 7; PLE; layers 24..41 share K/V.
    text =
        ReleasedText({2560, 10240, 42, 8, 2, 2, 6, 512, 131072, 256, 18, false, false, BA::kNone});
  } else if (name == "26b-a4b") {
    // [S,S,S,S,S,F] x 5; a 2112-wide dense (shared) MLP beside 128 experts of
    // width 704, top 8; full layers 512-dim with 2 KV heads and K = V.
    text =
        ReleasedText({2816, 2112, 30, 16, 8, 2, 6, 1024, 262144, 0, 0, true, false, BA::kVision});
    text.enable_moe_block = true;
    text.num_experts = 128;
    text.top_k_experts = 8;
    text.moe_intermediate_size = 704;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("released Gemma 4 model '", std::string(name),
                     "': expected one of \"31b\", \"e2b\", \"e4b\", \"26b-a4b\""));
  }
  GQ_RETURN_IF_ERROR(
      Annotate(ValidateTextConfig(text), "released Gemma 4 model '", std::string(name), "'"));
  Config config;
  config.text = std::move(text);
  return TextOnly(std::move(config));
}

absl::StatusOr<VisionConfig> ReleasedVisionConfig(std::string_view name) {
  const bool large = name == "31b" || name == "26b-a4b";
  if (!large && name != "e2b" && name != "e4b") {
    return absl::InvalidArgumentError(absl::StrCat(
        "no released vision tower named '", std::string(name), "' (31b, 26b-a4b, e2b, e4b)"));
  }
  VisionConfig v;
  v.hidden_size = large ? 1152 : 768;
  v.intermediate_size = large ? 4304 : 3072;
  v.num_hidden_layers = large ? 27 : 16;
  v.num_attention_heads = v.num_key_value_heads = large ? 16 : 12;
  v.head_dim = large ? 72 : 64;
  v.standardize = large;
  v.use_clipped_linears = !large;
  return v;
}

}  // namespace gquant::gemma4
