// Totals over a checkpoint's tensors (count, parameters, bytes, per dtype),
// and the text report gquant-inspect prints.
#ifndef GQUANT_CHECKPOINT_SUMMARY_H_
#define GQUANT_CHECKPOINT_SUMMARY_H_

#include <cstdint>
#include <map>
#include <string>

#include "gquant/checkpoint.h"
#include "gquant/dtype.h"

namespace gquant {

struct DTypeTotals {
  int64_t tensors = 0;
  int64_t parameters = 0;  // elements
  int64_t bytes = 0;
};

struct CheckpointSummary {
  int64_t shards = 0;
  DTypeTotals total;
  std::map<DType, DTypeTotals> by_dtype;
};

// Reads only the headers: no tensor data is touched.
CheckpointSummary SummarizeCheckpoint(const Checkpoint& checkpoint);

// "1,234,567"
std::string FormatWithThousands(int64_t value);

// The summary as lines of text; with `list_tensors`, one line per tensor
// (name, dtype, shape) in name order after the totals.
std::string FormatCheckpointReport(const Checkpoint& checkpoint, const CheckpointSummary& summary,
                                   bool list_tensors);

}  // namespace gquant

#endif  // GQUANT_CHECKPOINT_SUMMARY_H_
