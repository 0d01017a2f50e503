// Fuzzes QuantizedCheckpoint::Open (the torchao metadata reader on top of the
// safetensors reader) with whole files. The reader only opens paths, so each
// input is written to an in-memory file (memfd) and opened as
// /proc/self/fd/<n>. On success it does what gquant-inspect, the GGUF
// exporter and the model loader do next: dequantizes every weight, reads its
// first row, and unpacks the first matrix of every quantized weight.
#include <sys/mman.h>
#include <unistd.h>

#include <string>

#include "fuzz_util.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/tensor.h"

namespace gquant::fuzz {
namespace {

// One in-memory file for the whole run, rewritten for every input.
class MemoryFile {
 public:
  MemoryFile() : fd_(memfd_create("gquant-fuzz", MFD_CLOEXEC)) {
    FUZZ_CHECK(fd_ >= 0);
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  const std::string& Write(const uint8_t* data, size_t size) {
    FUZZ_CHECK(ftruncate(fd_, 0) == 0);
    size_t done = 0;
    while (done < size) {
      const ssize_t n = pwrite(fd_, data + done, size - done, static_cast<off_t>(done));
      FUZZ_CHECK(n > 0);
      done += static_cast<size_t>(n);
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

void WalkWeights(const QuantizedCheckpoint& checkpoint, size_t file_size) {
  for (const std::string& fqn : checkpoint.weight_names()) {
    const QuantizedWeightInfo* info = checkpoint.Find(fqn);
    FUZZ_CHECK(info != nullptr && info->fqn == fqn);
    const absl::StatusOr<int64_t> elements = NumElements(info->shape);
    // Quantized weights hold at least half a byte per element, plain ones a
    // byte: anything larger must have been rejected by Open.
    FUZZ_CHECK(elements.ok() && static_cast<uint64_t>(*elements) <= 2 * file_size);
    const absl::StatusOr<std::vector<float>> values = checkpoint.Dequantize(fqn);
    FUZZ_CHECK(values.ok());
    FUZZ_CHECK(values->size() == static_cast<size_t>(*elements));
    (void)checkpoint.DequantizeRows(fqn, 0, 1);
    if (info->kind != QuantizedWeightInfo::Kind::kPlain) {
      const absl::StatusOr<UnpackedMatrix> matrix = checkpoint.Unpack(fqn, 0);
      if (matrix.ok()) FUZZ_CHECK(ValidateUnpackedMatrix(matrix->view(), fqn).ok());
    }
    checkpoint.Release(fqn);
  }
  (void)checkpoint.recipe_json();
}

}  // namespace
}  // namespace gquant::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gquant;
  static fuzz::MemoryFile* file = new fuzz::MemoryFile();
  const std::string& path = file->Write(data, size);
  const absl::StatusOr<QuantizedCheckpoint> checkpoint = QuantizedCheckpoint::Open(path);
  if (!checkpoint.ok()) {
    fuzz::CheckErrorNames(checkpoint.status(), path);
    return 0;
  }
  fuzz::WalkWeights(*checkpoint, size);
  return 0;
}
