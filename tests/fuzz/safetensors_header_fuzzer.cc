// Fuzzes ParseSafetensorsHeader with whole files: the 8-byte length, the JSON
// header and the tensor table. On success it checks what SafetensorsFile and
// every later reader rely on (the tensors tile the data buffer exactly, each
// has exactly the bytes its shape and dtype need) and reads every tensor's
// values, as a converter would.
#include <vector>

#include "fuzz_util.h"
#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "gquant/tensor.h"

namespace gquant::fuzz {
namespace {

void WalkHeader(const SafetensorsHeader& header, std::span<const std::byte> file) {
  FUZZ_CHECK(header.data_start >= 8 && header.data_start <= file.size());
  uint64_t expected_begin = 0;
  for (const SafetensorsTensorInfo& info : header.tensors) {
    FUZZ_CHECK(info.name != "__metadata__");
    FUZZ_CHECK(info.begin == expected_begin && info.begin <= info.end);
    expected_begin = info.end;
    FUZZ_CHECK(header.data_start + info.end <= file.size());
    const absl::StatusOr<int64_t> elements = NumElements(info.shape);
    FUZZ_CHECK(elements.ok());
    FUZZ_CHECK(static_cast<uint64_t>(*elements) * DTypeSize(info.dtype) == info.num_bytes());

    const std::span<const std::byte> bytes =
        file.subspan(header.data_start + info.begin, info.num_bytes());
    absl::StatusOr<Tensor> tensor = Tensor::View(info.name, info.dtype, info.shape, bytes, nullptr);
    FUZZ_CHECK(tensor.ok());
    std::vector<float> values(static_cast<size_t>(*elements));
    FUZZ_CHECK(ConvertToFloat(info.dtype, bytes, values).ok());
  }
  FUZZ_CHECK(header.data_start + expected_begin == file.size());
  for (const auto& [key, value] : header.metadata)
    FUZZ_CHECK(key.size() + value.size() <= file.size());
}

}  // namespace
}  // namespace gquant::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace gquant;
  const std::span<const std::byte> file = fuzz::AsBytes(data, size);
  const absl::StatusOr<SafetensorsHeader> header = ParseSafetensorsHeader(file, "fuzz-input");
  if (!header.ok()) {
    fuzz::CheckErrorNames(header.status(), "safetensors 'fuzz-input'");
    return 0;
  }
  fuzz::WalkHeader(*header, file);
  return 0;
}
