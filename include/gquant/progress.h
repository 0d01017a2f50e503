// Progress of a tensor-by-tensor job (quantize, GGUF convert and export),
// reported to a caller's callback after each tensor.
#ifndef GQUANT_PROGRESS_H_
#define GQUANT_PROGRESS_H_

#include <cstdint>
#include <functional>
#include <string>

namespace gquant {

struct JobProgress {
  int64_t tensors_done = 0;
  int64_t tensors_total = 0;
  int64_t bytes_done = 0;  // input bytes consumed
  int64_t bytes_total = 0;
  std::string current;  // tensor being processed
};

using ProgressCallback = std::function<void(const JobProgress&)>;

}  // namespace gquant

#endif  // GQUANT_PROGRESS_H_
