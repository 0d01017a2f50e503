#include "gquant/gemma4/backend_weights.h"

#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gquant/dtype.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/quantize.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/status.h"

namespace gquant::gemma4 {
namespace {

constexpr std::string_view kLmHead = "lm_head.weight";

// A packer's "cannot take this": no packer for the format, or a shape the
// layout has no room for. The weight then runs in float32.
bool IsNoLayout(const absl::Status& status) {
  return absl::IsUnimplemented(status) || absl::IsInvalidArgument(status);
}

// The name gquant-quantize matches the recipe against: the tensor's name in
// an HF checkpoint, under the prefix HF uses for this model type (what
// gquant-gguf convert writes for a GGUF, too), so a recipe picks the same
// rules in both places.
std::string RecipeTensorName(const WeightSource& source, std::string_view name) {
  if (name == kLmHead) return std::string(name);
  const std::string_view prefix =
      source.config().model_type == "gemma4" ? kHfPrefixMultimodal : kHfPrefixText;
  return absl::StrCat(std::string(prefix), std::string(name));
}

// Quantizes `values` with `layout`'s config into the form gquant-quantize
// stores (PackedWeight), one whole matrix (expert) at a time, as HQQ needs.
// `context` names the source, weight and rule in errors.
absl::StatusOr<PackedWeight> QuantizeValues(std::span<const float> values,
                                            const QuantizedLayout& layout, ThreadPool* pool,
                                            const MatrixQuantizer& quantizer,
                                            const std::string& context) {
  PackedWeight packed(layout);
  const int64_t rows = layout.rows(), cols = layout.cols(), groups = layout.groups();
  std::vector<int8_t> codes(rows * cols);
  std::vector<float> scale(rows * groups), zero(rows * groups);
  QuantizeOptions quantize_options;
  quantize_options.pool = pool;
  for (int64_t m = 0; m < layout.matrices(); ++m) {
    const std::span<const float> matrix = values.subspan(m * rows * cols, rows * cols);
    const QuantizedSpans spans{codes, scale, zero};
    absl::Status status = quantizer ? quantizer(layout.config(), DType::kF32, std::as_bytes(matrix),
                                                rows, cols, spans, quantize_options)
                                    : Quantize(layout.config(), DType::kF32, std::as_bytes(matrix),
                                               rows, cols, spans, quantize_options);
    if (status.ok()) status = packed.Pack(m, 0, rows, codes, scale, zero);
    if (!status.ok()) {
      return Annotate(status, context,
                      layout.matrices() > 1 ? absl::StrCat(" expert ", m) : std::string());
    }
  }
  return packed;
}

// Weight `name` of `out.shape`, quantized on load with `config` (recipe rule
// `rule_index`), then packed for `backend`; the values the quantized weight
// stands for when the backend has no layout for it.
absl::StatusOr<BackendWeight> QuantizeOnLoad(const WeightSource& source, std::string_view name,
                                             const QuantConfig& config, int rule_index,
                                             PackBackend backend,
                                             const BackendWeightOptions& options,
                                             BackendWeight out) {
  const std::string context =
      absl::StrCat(source.description(), ": weight '", std::string(name), "' (recipe rule ",
                   rule_index, ", ", QuantConfigToString(config), ")");
  absl::StatusOr<QuantizedLayout> layout =
      QuantizedLayout::Create(std::string(name), out.shape, config);
  if (!layout.ok()) return Annotate(layout.status(), context);
  GQ_ASSIGN_OR_RETURN(std::vector<float> values, source.Load(name));
  GQ_ASSIGN_OR_RETURN(const PackedWeight quantized,
                      QuantizeValues(values, *layout, options.pool, options.quantizer, context));
  out.quantized_on_load = true;

  const int64_t matrices = layout->matrices();
  for (int64_t m = 0; m < matrices; ++m) {
    GQ_ASSIGN_OR_RETURN(const UnpackedMatrix matrix, quantized.Unpack(m));
    std::string label = absl::StrCat(source.description(), ": weight '", std::string(name), "'");
    if (matrices > 1) absl::StrAppend(&label, " expert ", m);
    absl::StatusOr<PackedMatrix> packed = PackMatrix(matrix.view(), backend, label);
    if (packed.ok()) {
      out.packed.push_back(*std::move(packed));
      continue;
    }
    if (!IsNoLayout(packed.status())) return packed.status();
    out.packed.clear();
    out.note = std::string(packed.status().message());
    break;
  }
  if (out.note.empty()) return out;

  // No layout: run on the dequantized weight, as a checkpoint quantized with
  // the same recipe would.
  const int64_t rows = layout->rows(), cols = layout->cols();
  for (int64_t m = 0; m < matrices; ++m) {
    GQ_ASSIGN_OR_RETURN(const UnpackedMatrix matrix, quantized.Unpack(m));
    GQ_RETURN_IF_ERROR(Dequantize(layout->config(), rows, cols, matrix.codes, matrix.scale,
                                  matrix.zero,
                                  std::span(values).subspan(m * rows * cols, rows * cols)));
  }
  out.values = std::move(values);
  return out;
}

}  // namespace

absl::StatusOr<BackendWeight> LoadBackendWeight(const WeightSource& source, std::string_view name,
                                                PackBackend backend,
                                                const BackendWeightOptions& options) {
  std::optional<std::vector<int64_t>> shape = source.Shape(name);
  if (!shape.has_value()) {
    return absl::NotFoundError(
        absl::StrCat(source.description(), ": no weight '", std::string(name), "'"));
  }
  BackendWeight out;
  out.shape = *std::move(shape);

  if (source.StoresQuantized(name)) {
    absl::StatusOr<std::vector<PackedMatrix>> packed = source.LoadPacked(name, backend);
    if (packed.ok()) {
      out.packed = *std::move(packed);
      return out;
    }
    if (!IsNoLayout(packed.status())) return packed.status();
    out.note = std::string(packed.status().message());
    GQ_ASSIGN_OR_RETURN(out.values, source.Load(name));
    return out;
  }

  // Only matrices ([N, K], [E, N, K]) run quantized; vectors stay float32.
  const bool matrix = out.shape.size() == 2 || out.shape.size() == 3;
  if (options.recipe != nullptr && matrix) {
    const RecipeMatch match = options.recipe->Match(
        RecipeTensorName(source, options.match_as.empty() ? name : options.match_as),
        source.config().text.num_hidden_layers);
    if (match.config.has_value()) {
      return QuantizeOnLoad(source, name, *match.config, match.rule_index, backend, options,
                            std::move(out));
    }
  }
  GQ_ASSIGN_OR_RETURN(out.values, source.Load(name));
  return out;
}

}  // namespace gquant::gemma4
