#include <algorithm>

#include "absl/strings/str_format.h"
#include "int8_layout.h"

namespace gquant::cuda {

absl::Status CheckInt8RowsShape(int64_t n, int64_t k, int64_t group_size) {
  if (n <= 0 || k <= 0 || k % 16 != 0 || group_size <= 0 || group_size % 16 != 0 ||
      k % group_size != 0 || n > (int64_t{1} << 31) || k > (int64_t{1} << 30)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda_int8_rows layout: expected K %% 16 == 0 and a group size that is a multiple of 16 "
        "dividing K, but got N=%d K=%d group=%d",
        n, k, group_size));
  }
  return absl::OkStatus();
}

absl::StatusOr<PackedInt8Rows> PackInt8Rows(std::span<const int8_t> codes,
                                            std::span<const float> scale,
                                            std::span<const float> zero, int64_t n, int64_t k,
                                            int64_t group_size) {
  if (absl::Status s = CheckInt8RowsShape(n, k, group_size); !s.ok()) return s;
  const int64_t groups = k / group_size;
  if (static_cast<int64_t>(codes.size()) != n * k ||
      static_cast<int64_t>(scale.size()) != n * groups ||
      static_cast<int64_t>(zero.size()) != n * groups) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "cuda_int8_rows packer: expected %d codes and %d scales and zeros for [%d, %d] group %d, "
        "but got %d, %d and %d",
        n * k, n * groups, n, k, group_size, codes.size(), scale.size(), zero.size()));
  }
  PackedInt8Rows out;
  out.codes.assign(codes.begin(), codes.end());
  out.params.resize(2 * n * groups);
  for (int64_t i = 0; i < n * groups; ++i) {
    out.params[2 * i] = scale[i];
    out.params[2 * i + 1] = zero[i];
  }
  return out;
}

}  // namespace gquant::cuda
