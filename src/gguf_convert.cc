#include "gquant/gguf_convert.h"

#include <chrono>
#include <filesystem>
#include <map>
#include <optional>

#include "absl/strings/str_format.h"
#include "gquant/atomic_file.h"
#include "gquant/gemma4/gguf_mapping.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"
#include "gquant/gguf_unpack.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

using How = GgufConvertedTensor::How;

const char* HowName(How how) {
  switch (how) {
    case How::kUnpacked:
      return "unpacked";
    case How::kCopied:
      return "copied";
    case How::kDequantized:
      return "dequantized to F32";
    case How::kSkipped:
      return "skipped";
  }
  return "?";
}

// The plain dtype a GGUF float type is copied as.
std::optional<DType> PlainDType(GgmlType type) {
  switch (type) {
    case GgmlType::kF32:
      return DType::kF32;
    case GgmlType::kF16:
      return DType::kF16;
    case GgmlType::kBF16:
      return DType::kBF16;
    default:
      return std::nullopt;
  }
}

// One GGUF tensor's plan: its name and storage in the checkpoint.
struct PlannedTensor {
  const GgufTensorInfo* info;
  GgufConvertedTensor report;
  QuantizedCheckpointEntry entry;
};

absl::StatusOr<PlannedTensor> PlanTensor(const GgufTensorInfo& info) {
  PlannedTensor plan{&info};
  GgufConvertedTensor& r = plan.report;
  r.gguf_name = info.name;
  r.shape = info.TorchShape();
  r.bytes_in = static_cast<int64_t>(info.num_bytes);
  const GgmlTypeTraits* traits = FindGgmlType(info.type);
  const GgmlType type = static_cast<GgmlType>(info.type);
  r.ggml_type = GgmlTypeName(info.type);
  auto hf_name = gemma4::HfNameFromGguf(info.name, gemma4::kHfPrefixText);
  if (absl::IsNotFound(hf_name.status())) {
    r.how = How::kSkipped;
    return plan;
  }
  GQ_RETURN_IF_ERROR(hf_name.status());
  r.hf_name = *hf_name;
  plan.entry.fqn = r.hf_name;
  if (const std::optional<DType> dtype = PlainDType(type)) {
    r.how = How::kCopied;
    plan.entry.dtype = *dtype;
    plan.entry.shape = r.shape;
    r.bytes_out = r.bytes_in;
    return plan;
  }
  if (r.shape.size() >= 2 && GgufUnpackFormatOf(type).ok()) {
    const GgufUnpackFormat format = *GgufUnpackFormatOf(type);
    GQ_ASSIGN_OR_RETURN(QuantizedLayout layout,
                        QuantizedLayout::Create(r.hf_name, r.shape, format.config, format.format));
    r.how = How::kUnpacked;
    r.bytes_out = layout.num_bytes();
    plan.entry.layout = std::move(layout);
    return plan;
  }
  if (traits == nullptr || traits->dequantize_row == nullptr) {
    return absl::UnimplementedError(
        absl::StrFormat("ggml type %s cannot be decoded by gquant", r.ggml_type));
  }
  r.how = How::kDequantized;
  plan.entry.dtype = DType::kF32;
  plan.entry.shape = r.shape;
  int64_t elements = 1;
  for (int64_t d : r.shape) elements *= d;
  r.bytes_out = elements * 4;
  return plan;
}

// Keeps the GGUF's tokenizer.* keys in a tensor-less GGUF beside the
// checkpoint, so `export` can give them back to llama.cpp unchanged.
absl::Status WriteTokenizerMetadata(const GgufFile& file, const std::string& path) {
  std::vector<const std::pair<std::string, GgufValue>*> keys;
  for (const auto& kv : file.metadata()) {
    if (kv.first.starts_with("tokenizer.")) keys.push_back(&kv);
  }
  if (keys.empty()) return absl::OkStatus();
  GQ_ASSIGN_OR_RETURN(std::unique_ptr<GgufWriter> writer, GgufWriter::Create(path));
  for (const auto* kv : keys) writer->SetMetadata(kv->first, kv->second);
  return writer->Commit();
}

}  // namespace

std::string GgufConvertReport::ToText() const {
  struct Row {
    int64_t count = 0, bytes_in = 0, bytes_out = 0;
  };
  std::map<std::pair<std::string, std::string>, Row> rows;  // (type, how)
  for (const GgufConvertedTensor& t : tensors) {
    Row& row = rows[{t.ggml_type, HowName(t.how)}];
    row.count += 1;
    row.bytes_in += t.bytes_in;
    row.bytes_out += t.bytes_out;
  }
  std::string text = absl::StrFormat("%-8s %-20s %8s %16s %16s\n", "type", "stored as", "tensors",
                                     "GGUF bytes", "gquant bytes");
  for (const auto& [key, row] : rows) {
    text += absl::StrFormat("%-8s %-20s %8d %16d %16d\n", key.first, key.second, row.count,
                            row.bytes_in, row.bytes_out);
  }
  text += absl::StrFormat("total: %d tensors, %d -> %d bytes in %.2f s\n", tensors.size(), bytes_in,
                          bytes_out, seconds);
  return text;
}

absl::StatusOr<GgufConvertReport> ConvertGgufToCheckpoint(const GgufConvertOptions& options) {
  const auto start = std::chrono::steady_clock::now();
  GQ_ASSIGN_OR_RETURN(const GgufFile file, GgufFile::Open(options.input));
  GQ_ASSIGN_OR_RETURN(const gemma4::TextConfig config, gemma4::TextConfigFromGguf(file));

  std::vector<PlannedTensor> plan;
  std::vector<QuantizedCheckpointEntry> entries;
  GgufConvertReport report;
  for (const GgufTensorInfo& info : file.tensors()) {
    auto planned = PlanTensor(info);
    if (!planned.ok()) {
      return Annotate(planned.status(), "GGUF file '", options.input, "': tensor '", info.name,
                      "'");
    }
    if (planned->report.how != How::kSkipped) entries.push_back(planned->entry);
    report.bytes_in += planned->report.bytes_in;
    report.bytes_out += planned->report.bytes_out;
    plan.push_back(*std::move(planned));
  }

  std::error_code error;
  std::filesystem::create_directories(options.output_dir, error);
  if (error) {
    return absl::InternalError(absl::StrFormat("cannot create output directory '%s': %s",
                                               options.output_dir, error.message()));
  }
  const std::filesystem::path out_dir(options.output_dir);
  GQ_ASSIGN_OR_RETURN(
      std::unique_ptr<QuantizedCheckpointWriter> writer,
      QuantizedCheckpointWriter::Create((out_dir / "model.safetensors").string(), entries,
                                        {{"gquant.source", options.input}}));
  ThreadPool pool(options.threads);
  JobProgress progress;
  progress.tensors_total = static_cast<int64_t>(plan.size());
  progress.bytes_total = report.bytes_in;
  for (const PlannedTensor& p : plan) {
    const GgufTensorInfo& info = *p.info;
    progress.current = info.name;
    GQ_RETURN_IF_ERROR(file.CheckNotTruncated());  // before touching mapped tensor bytes
    const std::span<const std::byte> data = file.TensorData(info);
    absl::Status status;
    switch (p.report.how) {
      case How::kSkipped:
        break;
      case How::kCopied:
        status = writer->WritePlain(p.report.hf_name, data);
        break;
      case How::kUnpacked: {
        auto packed = UnpackGgufWeight(p.report.hf_name, p.report.shape,
                                       static_cast<GgmlType>(info.type), data, &pool);
        status = packed.ok() ? writer->WritePacked(*packed) : packed.status();
        break;
      }
      case How::kDequantized: {
        std::vector<float> values(p.report.bytes_out / 4);
        status = DequantizeGgml(static_cast<GgmlType>(info.type), data, values);
        if (status.ok())
          status = writer->WritePlain(p.report.hf_name, std::as_bytes(std::span(values)));
        break;
      }
    }
    if (!status.ok()) {
      return Annotate(status, "GGUF file '", options.input, "': tensor '", info.name, "'");
    }
    file.ReleaseTensorData(info);
    progress.tensors_done += 1;
    progress.bytes_done += p.report.bytes_in;
    if (options.progress) options.progress(progress);
  }
  // The weights are renamed into place last (the commit point, as in
  // gquant-quantize): a kill before leaves the previous model.safetensors.
  GQ_RETURN_IF_ERROR(WriteFileAtomically((out_dir / "config.json").string(),
                                         gemma4::ConfigJsonFromTextConfig(config)));
  GQ_RETURN_IF_ERROR(WriteTokenizerMetadata(file, (out_dir / kGgufTokenizerFile).string()));
  GQ_RETURN_IF_ERROR(writer->Commit());
  for (PlannedTensor& p : plan) report.tensors.push_back(std::move(p.report));
  report.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return report;
}

}  // namespace gquant
