// The job behind `gquant-gguf convert`: a llama.cpp GGUF file of a Gemma 4
// text model in, a gquant quantized checkpoint out (model.safetensors plus
// config.json), one tensor at a time.
//
// Each tensor takes its Hugging Face name (gemma4/gguf_mapping.h, "model."
// prefix, text-only config) and is stored without loss:
//   * Q8_0, Q4_0, Q5_0, Q4_1, Q5_1, Q4_K, Q5_K, Q6_K matrices are unpacked
//     (gguf_unpack.h): dequantizing them gives ggml's floats bit for bit;
//   * F32, F16 and BF16 tensors are copied unchanged;
//   * any other decodable tensor (a quantized 1-D tensor, Q8_K) is stored as
//     its float32 dequantization, again ggml's exact values.
// Tensors llama.cpp generates ("rope_freqs.weight") are skipped. The tied
// embedding stays one tensor, "model.embed_tokens.weight", used by the model
// layer for both the lookup (one row dequantized per token) and the LM head;
// an "output.weight" becomes an untied "lm_head.weight".
//
// The GGUF's "tokenizer.*" metadata is kept, unchanged, in a tensor-less GGUF
// named kGgufTokenizerFile beside the checkpoint; `export` writes it back.
//
// Memory stays near the largest packed tensor: the GGUF is memory-mapped and
// each tensor's pages are released after it is written.
#ifndef GQUANT_GGUF_CONVERT_H_
#define GQUANT_GGUF_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "gquant/progress.h"

namespace gquant {

inline constexpr char kGgufTokenizerFile[] = "tokenizer.gguf";

struct GgufConvertOptions {
  std::string input;          // the .gguf file
  std::string output_dir;     // created if missing
  int threads = 0;            // 0: all hardware threads
  ProgressCallback progress;  // called after each tensor
};

struct GgufConvertedTensor {
  std::string gguf_name;
  std::string hf_name;  // empty when skipped
  std::string ggml_type;
  std::vector<int64_t> shape;  // torch order
  enum class How { kUnpacked, kCopied, kDequantized, kSkipped } how = How::kCopied;
  int64_t bytes_in = 0;
  int64_t bytes_out = 0;
};

struct GgufConvertReport {
  std::vector<GgufConvertedTensor> tensors;  // in GGUF order
  int64_t bytes_in = 0;
  int64_t bytes_out = 0;
  double seconds = 0;

  // One line per ggml type (count, how, bytes) and the totals.
  std::string ToText() const;
};

// Converts options.input into options.output_dir/{model.safetensors,
// config.json, tokenizer.gguf (when the GGUF has a tokenizer)}, each written to a temporary name
// and renamed. Returns the errors of the GGUF reader and the mapping (a non-Gemma-4 file, unknown
// tensor names, bad metadata), Unimplemented for a tensor type gquant cannot
// decode, each annotated with the tensor name.
absl::StatusOr<GgufConvertReport> ConvertGgufToCheckpoint(const GgufConvertOptions& options);

}  // namespace gquant

#endif  // GQUANT_GGUF_CONVERT_H_
