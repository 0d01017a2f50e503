// The job behind `gquant-gguf export`: a Hugging Face or gquant checkpoint of
// a Gemma 4 text model in, a llama.cpp GGUF file out, one tensor at a time.
//
// A recipe picks each tensor's ggml type by its HF name, reusing gquant's
// recipe files: a rule's bits choose the k-quant of that width (group size,
// symmetry and method do not apply to ggml's fixed block formats):
//   bits 4 -> Q4_K, 5 -> Q5_K, 6 -> Q6_K, 8 -> Q8_0;
//   kept (null config or no match) -> F32 for 1-D tensors and norms (as
//   llama.cpp's converter does), else `keep_type` (F16 by default).
// When a row is not a multiple of the k-quant block (256), the type falls back
// as llama-quantize does (spec gguf.md §7): Q4_K -> Q5_0, Q5_K -> Q5_1,
// Q6_K -> Q8_0; a row that is not a multiple of 32 then gets `keep_type`.
// Encoding is ggml's reference quantizer (quantize_row_*_ref), byte-identical
// to llama-quantize without an imatrix.
//
// Input weights are read as float32, a block of rows at a time, plain ones
// converted and quantized ones dequantized (so a gquant checkpoint is
// re-quantized, not re-packed). Vision and audio tensors are left out (llama.cpp keeps them in a
// separate mmproj file); "rope_freqs.weight", which llama.cpp's converter
// generates for proportional RoPE, is added. Metadata: gemma4/gguf_mapping.h's
// GgufMetadataFromTextConfig plus general.file_type and
// general.quantization_version, and the "tokenizer.*" keys of a
// kGgufTokenizerFile in the input directory (left by `convert`). An HF
// checkpoint's tokenizer.json is not converted to GGUF's vocabulary yet, so
// llama.cpp cannot load such an export without one.
#ifndef GQUANT_GGUF_EXPORT_H_
#define GQUANT_GGUF_EXPORT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/ggml_format.h"
#include "gquant/progress.h"
#include "gquant/recipe.h"

namespace gquant {

struct GgufExportOptions {
  std::string input;        // checkpoint directory (or .safetensors file) with config.json
  std::string output_file;  // the .gguf to write
  GgmlType keep_type = GgmlType::kF16;  // F32, F16 or BF16, for kept matrices
  int threads = 0;                      // 0: all hardware threads
  ProgressCallback progress;            // called after each tensor
};

struct GgufExportedTensor {
  std::string hf_name;
  std::string gguf_name;  // empty when left out
  int rule_index = -1;
  GgmlType type = GgmlType::kF32;
  bool fell_back = false;      // the recipe's k-quant did not fit the row length
  std::vector<int64_t> shape;  // torch order
  int64_t bytes = 0;           // in the GGUF
  // ||W - ggml_dequant(W_q)|| / ||W|| of the written tensor (0 when copied exactly).
  double relative_error = 0;
};

struct GgufExportReport {
  std::vector<GgufExportedTensor> tensors;  // in input order
  int64_t bytes_out = 0;
  double seconds = 0;

  // One line per ggml type (and per tensor when asked), then the totals.
  std::string ToText(bool per_tensor) const;
};

// Chooses the ggml type for a tensor of `shape` (torch order) named `hf_name`
// under `recipe`, as described above; sets *fell_back when the row length
// forced a fallback.
GgmlType ChooseGgmlType(const Recipe& recipe, const std::string& hf_name,
                        const std::vector<int64_t>& shape, int num_layers, GgmlType keep_type,
                        bool* fell_back);

// Writes options.output_file (to a temporary name, renamed at the end).
// Returns the errors of the checkpoint reader and the config parser,
// InvalidArgument for a config GGUF cannot describe (CheckGgufRepresentable),
// a keep_type other than F32/F16/BF16, a tensor that is
// not a Gemma 4 text tensor, or a non-finite weight (naming the tensor).
absl::StatusOr<GgufExportReport> ExportGguf(const Recipe& recipe, const GgufExportOptions& options);

}  // namespace gquant

#endif  // GQUANT_GGUF_EXPORT_H_
