#include "gquant/gguf_export.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>

#include "absl/strings/str_format.h"
#include "gquant/gemma4/config.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/gguf.h"
#include "gquant/gguf_convert.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/status.h"
#include "gquant/tensor.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

const GgmlTypeTraits& Traits(GgmlType type) { return *FindGgmlType(static_cast<uint32_t>(type)); }

// The k-quant (or Q8_0) of a recipe's bit width.
GgmlType TypeForBits(int bits) {
  switch (bits) {
    case 4:
      return GgmlType::kQ4_K;
    case 5:
      return GgmlType::kQ5_K;
    case 6:
      return GgmlType::kQ6_K;
    default:
      return GgmlType::kQ8_0;
  }
}

// llama-quantize's fallback for a row that does not fit a 256-block type.
GgmlType SmallBlockFallback(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_K:
      return GgmlType::kQ5_0;
    case GgmlType::kQ5_K:
      return GgmlType::kQ5_1;
    default:
      return GgmlType::kQ8_0;
  }
}

// ggml's llama_ftype for general.file_type, from the type holding the most
// weights (the _M mixtures for the k-quants, as llama-quantize names them).
uint32_t FileTypeOf(GgmlType dominant) {
  switch (dominant) {
    case GgmlType::kF32:
      return 0;
    case GgmlType::kF16:
      return 1;
    case GgmlType::kQ4_0:
      return 2;
    case GgmlType::kQ4_1:
      return 3;
    case GgmlType::kQ8_0:
      return 7;
    case GgmlType::kQ5_0:
      return 8;
    case GgmlType::kQ5_1:
      return 9;
    case GgmlType::kQ4_K:
      return 15;  // MOSTLY_Q4_K_M
    case GgmlType::kQ5_K:
      return 17;  // MOSTLY_Q5_K_M
    case GgmlType::kQ6_K:
      return 18;
    case GgmlType::kBF16:
      return 32;
    default:
      return 0;
  }
}

bool IsNormOrVector(const std::string& hf_name, const std::vector<int64_t>& shape) {
  return shape.size() < 2 || hf_name.ends_with("norm.weight");
}

// Rows of one tensor encoded in parallel, in blocks of this many elements.
constexpr int64_t kChunkElements = int64_t{1} << 20;

struct Encoded {
  std::vector<std::byte> bytes;
  double reference_sq = 0, error_sq = 0;
};

// Encodes rows of `cols` floats, produced block by block by `read_rows(first,
// count, out)`, as `type`; also measures the round-trip error.
absl::StatusOr<Encoded> EncodeRows(
    GgmlType type, int64_t rows, int64_t cols, ThreadPool& pool,
    const std::function<absl::Status(int64_t, int64_t, std::span<float>)>& read_rows) {
  GQ_ASSIGN_OR_RETURN(const uint64_t row_bytes, GgmlRowBytes(type, cols));
  Encoded out;
  out.bytes.resize(row_bytes * rows);
  const int64_t chunk_rows = std::clamp<int64_t>(kChunkElements / std::max<int64_t>(cols, 1), 1,
                                                 std::max<int64_t>(rows, 1));
  const int64_t chunks = (rows + chunk_rows - 1) / chunk_rows;
  std::vector<absl::Status> status(chunks);
  std::vector<double> reference_sq(chunks), error_sq(chunks);
  pool.ParallelFor(chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> x, y;
    for (int64_t c = begin; c < end; ++c) {
      const int64_t first = c * chunk_rows, count = std::min(chunk_rows, rows - first);
      x.resize(count * cols);
      y.resize(count * cols);
      status[c] = read_rows(first, count, x);
      if (!status[c].ok()) continue;
      for (int64_t i = 0; i < count * cols; ++i) {
        if (!std::isfinite(x[i])) {
          status[c] = absl::InvalidArgumentError(absl::StrFormat(
              "non-finite weight %g at row %d, column %d", x[i], first + i / cols, i % cols));
          break;
        }
      }
      if (!status[c].ok()) continue;
      const auto encoded = std::span(out.bytes).subspan(first * row_bytes, count * row_bytes);
      status[c] = QuantizeGgmlRef(type, x, encoded);
      if (status[c].ok()) status[c] = DequantizeGgml(type, encoded, y);
      for (int64_t i = 0; status[c].ok() && i < count * cols; ++i) {
        reference_sq[c] += double(x[i]) * x[i];
        error_sq[c] += (double(x[i]) - y[i]) * (double(x[i]) - y[i]);
      }
    }
  });
  for (int64_t c = 0; c < chunks; ++c) {
    GQ_RETURN_IF_ERROR(status[c]);
    out.reference_sq += reference_sq[c];
    out.error_sq += error_sq[c];
  }
  return out;
}

}  // namespace

GgmlType ChooseGgmlType(const Recipe& recipe, const std::string& hf_name,
                        const std::vector<int64_t>& shape, int num_layers, GgmlType keep_type,
                        bool* fell_back) {
  *fell_back = false;
  const RecipeMatch match = recipe.Match(hf_name, num_layers);
  if (!match.config || IsNormOrVector(hf_name, shape)) {
    return IsNormOrVector(hf_name, shape) ? GgmlType::kF32 : keep_type;
  }
  GgmlType type = TypeForBits(match.config->bits);
  const int64_t row = shape.back();
  if (row % Traits(type).block_elements != 0) {
    *fell_back = true;
    type = SmallBlockFallback(type);
    if (row % Traits(type).block_elements != 0) type = keep_type;
  }
  return type;
}

std::string GgufExportReport::ToText(bool per_tensor) const {
  std::map<std::string, std::pair<int64_t, int64_t>> by_type;  // count, bytes
  std::string lines;
  for (const GgufExportedTensor& t : tensors) {
    if (t.gguf_name.empty()) {
      lines += absl::StrFormat("  %-56s left out (not a text-model tensor)\n", t.hf_name);
      continue;
    }
    const std::string type(Traits(t.type).name);
    by_type[type].first += 1;
    by_type[type].second += t.bytes;
    lines += absl::StrFormat("  %-40s %-6s %-20s rel.err %.2e%s\n", t.gguf_name, type,
                             ShapeToString(t.shape), t.relative_error,
                             t.fell_back ? "  (fallback: row not a multiple of 256)" : "");
  }
  std::string text = "ggml type  tensors  bytes\n";
  for (const auto& [type, row] : by_type) {
    text += absl::StrFormat("%-9s  %7d  %d\n", type, row.first, row.second);
  }
  return text + (per_tensor ? lines : "") +
         absl::StrFormat("total: %d bytes in %.2f s\n", bytes_out, seconds);
}

absl::StatusOr<GgufExportReport> ExportGguf(const Recipe& recipe,
                                            const GgufExportOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  if (options.keep_type != GgmlType::kF32 && options.keep_type != GgmlType::kF16 &&
      options.keep_type != GgmlType::kBF16) {
    return absl::InvalidArgumentError(
        absl::StrFormat("export keep type: expected f32, f16 or bf16, but got %s",
                        GgmlTypeName(static_cast<uint32_t>(options.keep_type))));
  }
  GQ_ASSIGN_OR_RETURN(const QuantizedCheckpoint checkpoint,
                      QuantizedCheckpoint::Open(options.input));
  GQ_ASSIGN_OR_RETURN(const gemma4::Config config,
                      gemma4::LoadConfig(checkpoint.checkpoint().directory()));
  const int num_layers = config.text.num_hidden_layers;
  GQ_RETURN_IF_ERROR(
      Annotate(gemma4::CheckGgufRepresentable(config.text), "checkpoint '", options.input, "'"));

  std::vector<GgufExportedTensor> plan;
  std::map<GgmlType, int64_t> elements_by_type;
  for (const std::string& name : checkpoint.weight_names()) {
    GgufExportedTensor r{name};
    r.shape = checkpoint.Find(name)->shape;
    auto gguf_name = gemma4::GgufNameFromHf(name);
    if (absl::IsNotFound(gguf_name.status())) {
      plan.push_back(std::move(r));
      continue;
    }
    GQ_RETURN_IF_ERROR(Annotate(gguf_name.status(), "checkpoint '", options.input, "'"));
    r.gguf_name = *gguf_name;
    r.rule_index = recipe.Match(name, num_layers).rule_index;
    r.type = ChooseGgmlType(recipe, name, r.shape, num_layers, options.keep_type, &r.fell_back);
    GQ_ASSIGN_OR_RETURN(const int64_t elements, NumElements(r.shape));
    elements_by_type[r.type] += elements;
    plan.push_back(std::move(r));
  }

  GQ_ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> writer, GgufWriter::Create(options.output_file));
  const std::string model_name =
      std::filesystem::path(checkpoint.checkpoint().directory()).filename().string();
  for (auto& [key, value] : gemma4::GgufMetadataFromTextConfig(config.text, model_name)) {
    writer->SetMetadata(key, value);
  }
  GgmlType dominant = GgmlType::kF32;
  for (const auto& [type, elements] : elements_by_type) {
    if (elements > elements_by_type[dominant]) dominant = type;
  }
  // A tokenizer kept by `convert` goes back as it came.
  const std::filesystem::path tokenizer =
      std::filesystem::path(checkpoint.checkpoint().directory()) / kGgufTokenizerFile;
  if (std::filesystem::exists(tokenizer)) {
    GQ_ASSIGN_OR_RETURN(const GgufFile tokenizer_file, GgufFile::Open(tokenizer.string()));
    for (const auto& [key, value] : tokenizer_file.metadata()) writer->SetMetadata(key, value);
  }
  writer->SetMetadata("general.quantization_version", GgufValue(uint32_t{2}));
  writer->SetMetadata("general.file_type", GgufValue(FileTypeOf(dominant)));
  for (const GgufExportedTensor& t : plan) {
    if (t.gguf_name.empty()) continue;
    const std::vector<int64_t> dims(t.shape.rbegin(), t.shape.rend());
    GQ_ASSIGN_OR_RETURN(const uint64_t bytes, GgufTensorBytes(dims, static_cast<uint32_t>(t.type)));
    GQ_RETURN_IF_ERROR(writer->AddTensor(t.gguf_name, dims, static_cast<uint32_t>(t.type), bytes));
  }

  // llama.cpp's proportional RoPE on full layers reads its frequency factors
  // from a tensor the converter generates; HF has no counterpart.
  const std::vector<float> rope_freqs = gemma4::RopeFreqsFromTextConfig(config.text);
  const std::span<const std::byte> rope_bytes = std::as_bytes(std::span(rope_freqs));
  if (!rope_freqs.empty()) {
    GQ_RETURN_IF_ERROR(writer->AddTensor(std::string(gemma4::kGgufRopeFreqsTensor),
                                         {static_cast<int64_t>(rope_freqs.size())},
                                         static_cast<uint32_t>(GgmlType::kF32), rope_bytes.size()));
    GQ_RETURN_IF_ERROR(writer->WriteTensorData(gemma4::kGgufRopeFreqsTensor, rope_bytes));
  }

  ThreadPool pool(options.threads);
  JobProgress progress;
  progress.tensors_total = static_cast<int64_t>(plan.size());
  GgufExportReport report;
  for (GgufExportedTensor& r : plan) {
    progress.current = r.hf_name;
    if (!r.gguf_name.empty()) {
      const int64_t cols = r.shape.back();
      const int64_t rows = *NumElements(r.shape) / std::max<int64_t>(cols, 1);
      // Block by block from the map, plain or quantized alike.
      const auto read_rows = [&](int64_t first, int64_t count, std::span<float> out) {
        GQ_ASSIGN_OR_RETURN(const std::vector<float> values,
                            checkpoint.DequantizeRows(r.hf_name, first, count));
        std::copy(values.begin(), values.end(), out.begin());
        return absl::OkStatus();
      };
      auto encoded = EncodeRows(r.type, rows, cols, pool, read_rows);
      if (!encoded.ok()) return Annotate(encoded.status(), "tensor '", r.hf_name, "'");
      r.bytes = static_cast<int64_t>(encoded->bytes.size());
      r.relative_error =
          encoded->reference_sq > 0 ? std::sqrt(encoded->error_sq / encoded->reference_sq) : 0.0;
      GQ_RETURN_IF_ERROR(writer->WriteTensorData(r.gguf_name, encoded->bytes));
      checkpoint.Release(r.hf_name);
      report.bytes_out += r.bytes;
      progress.bytes_done += r.bytes;
    }
    progress.tensors_done += 1;
    if (options.progress) options.progress(progress);
    report.tensors.push_back(std::move(r));
  }
  GQ_RETURN_IF_ERROR(writer->Commit());
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace gquant
