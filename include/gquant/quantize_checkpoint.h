// The quantize-and-save job behind gquant-quantize: a Hugging Face
// checkpoint in, a quantized checkpoint (quantized_checkpoint.h) out, one
// tensor at a time.
//
// Memory: one tensor is in flight at a time. Min-max weights are quantized in
// blocks of rows straight from the memory-mapped input into their packed
// output, and each block's input pages are dropped once read, so the peak is
// near one packed tensor plus a few MB. HQQ's early stop is global over a
// matrix (as in torchao), so HQQ (and a custom `quantizer`) works on one whole
// matrix (one expert) at a time: its input pages, 1 byte of codes per weight
// and ~20 bytes of scale/zero state per group on top. Kept tensors are copied
// from the mapping whole. The job bounds each tensor's working set from its
// shape (TensorReport::working_set_bytes) and checks the largest against
// QuantizeJobOptions::max_memory before writing anything.
//
// Output directory and write order (every file goes through
// AtomicFileWriter: a temporary `.<name>.tmp.XXXXXX` beside it, fsync,
// rename, directory fsync, so no final name ever holds a partial file):
//   1. The job locks the directory (flock; a second job into it fails) and
//      removes the temporaries earlier killed runs left (`.<name>.tmp.XXXXXX`
//      of the names below), keeping the one --resume reuses.
//   2. model.safetensors is written into its temporary, sized up front;
//      ".model.safetensors.tmp.progress.json" (the resume manifest, written
//      atomically every checkpoint_seconds) names that temporary and lists
//      the quantized tensors already in it, with a hash of their bytes.
//   3. config.json, generation_config.json and the tokenizer files are
//      copied (skipped when the output already holds the same bytes).
//   4. model.safetensors is renamed into place: the commit point.
//   5. quantize_report.json is written, then the manifest removed.
// What a reader sees after a kill at any point: every final name holds a
// complete file, either the previous run's or this run's. model.safetensors
// is self-contained (its metadata carries the recipe). The only mix possible
// is across files: between steps 3 and 4 copies of a changed input's config
// sit beside the previous weights, and between 4 and 5 the previous
// quantize_report.json sits beside the new weights. Rerunning the same job
// (or --resume) converges to the complete output. Leftovers are only
// `.<name>.tmp.*` files, which the next run removes.
//
// Resume (QuantizeJobOptions::resume): the manifest records the job's
// identity (gquant version, recipe JSON, quantizer, HQQ options, and the
// path, size and mtime of every input shard and config.json). When it
// matches and the temporary it names is still there, each listed tensor is
// read back from it, repacked into the new output and kept only if its bytes
// hash (xxHash64) to the recorded value; everything else is quantized again.
// The result is byte-identical to an uninterrupted run (the report differs
// in "seconds" only). Interrupted means killed (signal, crash, power loss):
// a run that fails with an error removes its temporary and manifest.
// The weights stay one model.safetensors (not shards + index) because the
// readers, the GPU tests and the bench scripts take that file; resuming
// into a fresh temporary costs one copy of the finished part, not a redo.
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
  // Names `quantizer` in the resume manifest ("" is the CPU quantizer): a
  // resume reuses only tensors the same quantizer made.
  std::string quantizer_id;
  // Called after each tensor (from the calling thread).
  ProgressCallback progress;
  // Reuse the quantized tensors an interrupted run into output_dir left (see
  // "Resume" above). Without it, what such a run left is removed.
  bool resume = false;
  // Seconds between resume checkpoints (manifest rewrites); 0: after every
  // quantized tensor.
  double checkpoint_seconds = 0.25;
  // Bound in bytes on the job's resident memory (0: none): the job refuses to
  // start (ResourceExhausted, naming the tensor) when kBaselineMemoryBytes plus
  // the largest tensor's working set exceeds it.
  int64_t max_memory = 0;
};

// Resident memory of the job apart from the tensor in flight (code, libraries,
// thread stacks, the writer's buffer, read-ahead), measured with margin.
inline constexpr int64_t kBaselineMemoryBytes = int64_t{32} << 20;

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
  // Numerical edge cases met in a quantized input (quantize.h): NaN/Inf stop
  // the job, so a report never has any.
  int64_t subnormal_values = 0;
  int64_t constant_groups = 0;  // zero groups included
  int64_t zero_groups = 0;
  // Bound on the bytes held while this tensor is written (see "Memory").
  int64_t working_set_bytes = 0;
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
  // kBaselineMemoryBytes + the largest working set: the job's memory bound.
  int64_t memory_bound_bytes = 0;
  // Quantized tensors taken from an interrupted run, and why none or not all
  // were (not in the JSON, which a resumed run reproduces exactly).
  int64_t resumed_tensors = 0;
  std::string resume_note;

  std::string ToJson() const;
  // Per-rule table, then per-tensor lines (quantized ones with error and SNR).
  std::string ToText(bool per_tensor) const;
};

// Plans the job (recipe match per tensor, output shapes and sizes) and, unless
// dry_run, writes <output_dir>/model.safetensors, copies config.json,
// generation_config.json and the tokenizer files, and writes
// quantize_report.json, in the order given above.
// A tied embedding gets an independent "lm_head.weight" when the recipe gives
// lm_head.weight a config (spec formats.md §2.5).
// Returns the errors of the reader, the recipe and the quantizers, annotated
// with the tensor name and rule index; InvalidArgument for a quantized tensor
// that is not 2-D/3-D float or whose last dimension does not fit the group,
// or that holds a NaN/Inf (naming the first: matrix, row, column);
// ResourceExhausted when max_memory is too small (naming the tensor) or the
// disk is full; FailedPrecondition when another job holds output_dir.
absl::StatusOr<QuantizeReport> QuantizeCheckpoint(const Recipe& recipe,
                                                  const QuantizeJobOptions& options);

}  // namespace gquant

#endif  // GQUANT_QUANTIZE_CHECKPOINT_H_
