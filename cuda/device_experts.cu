#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "device_experts.cuh"
#include "gquant/status.h"
#include "int4_mma_gemv.cuh"

namespace gquant::cuda {
namespace {

absl::Status Invalid(std::string_view name, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("experts '", std::string(name), "': ", std::string(what)));
}

}  // namespace

absl::StatusOr<DeviceExperts> DeviceExperts::FromPacked(std::span<const PackedMatrix> experts,
                                                        std::string_view name) {
  if (experts.empty()) return Invalid(name, "no experts");
  DeviceExperts out;
  out.name_ = std::string(name);
  for (size_t e = 0; e < experts.size(); ++e) {
    GQ_ASSIGN_OR_RETURN(
        DeviceLinear linear,
        DeviceLinear::FromPacked(experts[e], absl::StrCat(std::string(name), " expert ", e)));
    if (e > 0 && (linear.form() != out.form() || linear.n() != out.n() || linear.k() != out.k() ||
                  (linear.form() == LinearForm::kInt4 &&
                   (linear.int4().group_size != out.experts_[0].int4().group_size ||
                    linear.int4().min_form != out.experts_[0].int4().min_form)))) {
      return Invalid(name, absl::StrFormat("expert %d differs from expert 0 in form or shape", e));
    }
    out.experts_.push_back(std::move(linear));
  }
  if (out.selectable()) {
    std::vector<const uint4*> qweights;
    std::vector<const __nv_bfloat162*> params;
    for (const DeviceLinear& linear : out.experts_) {
      qweights.push_back(linear.int4().qweight);
      params.push_back(linear.int4().params);
    }
    GQ_ASSIGN_OR_RETURN(out.qweight_table_, DeviceBuffer<const uint4*>::Allocate(qweights.size()));
    GQ_RETURN_IF_ERROR(out.qweight_table_.CopyFromHost(qweights));
    GQ_ASSIGN_OR_RETURN(out.params_table_,
                        DeviceBuffer<const __nv_bfloat162*>::Allocate(params.size()));
    GQ_RETURN_IF_ERROR(out.params_table_.CopyFromHost(params));
  }
  return out;
}

absl::StatusOr<DeviceExperts> DeviceExperts::FromFloat(std::span<const float> values, int count,
                                                       int64_t n, int64_t k,
                                                       std::string_view name) {
  if (count < 1 || n < 1 || k < 1 || n > INT64_MAX / k / count ||
      static_cast<int64_t>(values.size()) != int64_t{count} * n * k) {
    return Invalid(name, absl::StrFormat("expected %d experts of %d x %d floats, but got %d values",
                                         count, n, k, values.size()));
  }
  DeviceExperts out;
  out.name_ = std::string(name);
  for (int e = 0; e < count; ++e) {
    GQ_ASSIGN_OR_RETURN(out.experts_.emplace_back(),
                        DeviceLinear::FromFloat(values.subspan(e * n * k, n * k), n, k,
                                                absl::StrCat(std::string(name), " expert ", e)));
  }
  return out;
}

int64_t DeviceExperts::num_bytes() const {
  int64_t bytes = 0;
  for (const DeviceLinear& linear : experts_) bytes += linear.num_bytes();
  return bytes;
}

absl::Status DeviceExperts::Run(int e, const __nv_bfloat16* x, int64_t m, __nv_bfloat16* y,
                                LinearContext& context, cudaStream_t stream) const {
  if (e < 0 || e >= count()) {
    return Invalid(name_, absl::StrFormat("expert %d outside [0, %d)", e, count()));
  }
  return experts_[e].Run(x, m, y, context, stream);
}

absl::Status DeviceExperts::RunSelected(const __nv_bfloat16* x, int64_t x_slot_stride,
                                        const int32_t* ids, int slots, __nv_bfloat16* y,
                                        cudaStream_t stream) const {
  if (!selectable()) {
    return absl::FailedPreconditionError(
        absl::StrCat("experts '", name_, "': ", std::string(LinearFormName(form())),
                     " experts cannot be selected on the device (int4 only)"));
  }
  const Int4MmaExpertTables tables{qweight_table_.data(), params_table_.data(), count()};
  return Annotate(
      Int4MmaGemvSelected(experts_[0].int4(), tables, ids, slots, x, x_slot_stride, y, stream),
      "experts '", name_, "'");
}

}  // namespace gquant::cuda
