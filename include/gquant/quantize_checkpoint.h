// The quantize-and-save job behind gquant-quantize: a Hugging Face
// checkpoint in, a quantized checkpoint (quantized_checkpoint.h) out, one
// tensor at a time.
//
// Memory: min-max weights are quantized in blocks of rows straight from the
// memory-mapped input into their packed output, so the peak stays near one
// packed tensor plus the pages of the input tensor being read (released after
// each tensor). HQQ's early stop is global over a matrix (as in torchao), so
// HQQ works on one whole matrix (one expert) at a time: about 6 bytes of
// scratch per weight element on top.
#ifndef GQUANT_QUANTIZE_CHECKPOINT_H_
#define GQUANT_QUANTIZE_CHECKPOINT_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/dtype.h"
#include "gquant/progress.h"
#include "gquant/quantize.h"
#include "gquant/recipe.h"

namespace gquant {

// Quantizes one matrix with gquant::Quantize's contract (arguments, outputs,
// errors, error_stats accumulation).
using MatrixQuantizer = std::function<absl::Status(
    const QuantConfig& config, DType dtype, std::span<const std::byte> weight, int64_t rows,
    int64_t cols, const QuantizedSpans& out, const QuantizeOptions& options)>;

struct QuantizeJobOptions {
  std::string input;       // HF checkpoint directory (or one .safetensors file)
  std::string output_dir;  // created if missing
  int threads = 0;         // 0: all hardware threads
  bool dry_run = false;    // plan and report the matched rules; write nothing
  HqqOptions hqq;
  // Quantizes one matrix; empty: gquant::Quantize on the CPU (threads above).
  // gquant-quantize --device=cuda passes cuda::QuantizeOnGpu. When set, every
  // matrix (one expert of a 3-D tensor) is passed whole, min-max ones too, so
  // a GPU quantizer pays its transfers once per matrix.
  MatrixQuantizer quantizer;
  // Called after each tensor (from the calling thread).
  ProgressCallback progress;
};

struct TensorReport {
  std::string name;
  std::string source;  // input tensor it came from (differs for an untied lm_head)
  int rule_index = -1;
  std::optional<QuantConfig> config;  // nullopt: kept as is
  DType dtype = DType::kBF16;         // input dtype
  std::vector<int64_t> shape;
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;
  // ||W - deq(Q(W))|| / ||W|| and its SNR in dB; 0 and +inf when kept.
  double relative_error = 0;
  double snr_db = 0;
};

struct RuleReport {
  int rule_index = -1;  // -1: tensors no rule matched
  std::string pattern;
  std::optional<QuantConfig> config;
  int64_t tensors = 0;
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;
};

struct QuantizeReport {
  std::string recipe;
  std::vector<TensorReport> tensors;  // in output order
  std::vector<RuleReport> rules;      // every rule, then "no match"
  int64_t bytes_before = 0;
  int64_t bytes_after = 0;
  double seconds = 0;

  std::string ToJson() const;
  // Per-rule table, then per-tensor lines (quantized ones with error and SNR).
  std::string ToText(bool per_tensor) const;
};

// Plans the job (recipe match per tensor, output shapes and sizes) and, unless
// dry_run, writes <output_dir>/model.safetensors, copies config.json,
// generation_config.json and the tokenizer files, and writes
// quantize_report.json; each file is written to a temporary name and renamed.
// A tied embedding gets an independent "lm_head.weight" when the recipe gives
// lm_head.weight a config (spec formats.md §2.5).
// Returns the errors of the reader, the recipe and the quantizers, annotated
// with the tensor name and rule index; InvalidArgument for a quantized tensor
// that is not 2-D/3-D float or whose last dimension does not fit the group.
absl::StatusOr<QuantizeReport> QuantizeCheckpoint(const Recipe& recipe,
                                                  const QuantizeJobOptions& options);

}  // namespace gquant

#endif  // GQUANT_QUANTIZE_CHECKPOINT_H_
