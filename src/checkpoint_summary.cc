#include "gquant/checkpoint_summary.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gquant/tensor.h"

namespace gquant {

CheckpointSummary SummarizeCheckpoint(const Checkpoint& checkpoint) {
  CheckpointSummary summary;
  summary.shards = static_cast<int64_t>(checkpoint.shards().size());
  for (const SafetensorsFile& shard : checkpoint.shards()) {
    for (const SafetensorsTensorInfo& info : shard.tensors()) {
      // Shapes were validated when the shard was opened, so this cannot fail.
      const int64_t elements = NumElements(info.shape).value_or(0);
      for (DTypeTotals* totals : {&summary.total, &summary.by_dtype[info.dtype]}) {
        totals->tensors += 1;
        totals->parameters += elements;
        totals->bytes += static_cast<int64_t>(info.end - info.begin);
      }
    }
  }
  return summary;
}

std::string FormatWithThousands(int64_t value) {
  std::string digits = absl::StrCat(value < 0 ? -value : value);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return value < 0 ? "-" + out : out;
}

std::string FormatCheckpointReport(const Checkpoint& checkpoint, const CheckpointSummary& summary,
                                   bool list_tensors) {
  std::string out = absl::StrFormat(
      "checkpoint %s: %d shard%s, %d tensors, %s parameters, %s bytes\n", checkpoint.directory(),
      summary.shards, summary.shards == 1 ? "" : "s", summary.total.tensors,
      FormatWithThousands(summary.total.parameters), FormatWithThousands(summary.total.bytes));
  for (const auto& [dtype, totals] : summary.by_dtype) {
    absl::StrAppendFormat(&out, "  %-8s %6d tensors  %15s parameters\n", DTypeName(dtype),
                          totals.tensors, FormatWithThousands(totals.parameters));
  }
  if (!list_tensors) return out;
  const std::vector<std::string> names = checkpoint.TensorNames();
  size_t width = 0;
  for (const std::string& name : names) width = std::max(width, name.size());
  absl::StrAppend(&out, "tensors:\n");
  for (const std::string& name : names) {
    const SafetensorsTensorInfo* info = checkpoint.Find(name);
    absl::StrAppendFormat(&out, "  %-*s  %-5s %s\n", static_cast<int>(width), name,
                          DTypeName(info->dtype), ShapeToString(info->shape));
  }
  return out;
}

}  // namespace gquant
