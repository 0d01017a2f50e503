#include <algorithm>
#include <climits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "device_experts.cuh"
#include "gquant/status.h"
#include "int4_dequantize.cuh"
#include "int4_mma_gemv.cuh"
#include "int8_dequantize.cuh"
#include "int8_gemv.cuh"

namespace gquant::cuda {
namespace {

absl::Status Invalid(std::string_view name, std::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat("experts '", std::string(name), "': ", std::string(what)));
}

}  // namespace

absl::StatusOr<SortedRunScratch> SortedRunScratch::Create(int64_t expert_elements, int batch) {
  if (expert_elements < 0 || batch < 1 || expert_elements > INT64_MAX / batch) {
    return absl::InvalidArgumentError(
        absl::StrFormat("SortedRunScratch: %d experts of %d weights", batch, expert_elements));
  }
  SortedRunScratch scratch;
  if (expert_elements > 0) {
    GQ_ASSIGN_OR_RETURN(scratch.weights,
                        DeviceBuffer<__nv_bfloat16>::Allocate(expert_elements * batch));
  }
  GQ_ASSIGN_OR_RETURN(scratch.pointers, DeviceBuffer<const void*>::Allocate(3 * batch));
  scratch.expert_elements = expert_elements;
  scratch.batch = batch;
  return scratch;
}

absl::StatusOr<DeviceExperts> DeviceExperts::FromPacked(std::span<const PackedMatrix> experts,
                                                        std::string_view name) {
  if (experts.empty()) return Invalid(name, "no experts");
  DeviceExperts out;
  out.name_ = std::string(name);
  for (size_t e = 0; e < experts.size(); ++e) {
    GQ_ASSIGN_OR_RETURN(
        DeviceLinear linear,
        DeviceLinear::FromPacked(experts[e], absl::StrCat(std::string(name), " expert ", e)));
    // The selected kernels take expert 0's shape, group size and form for all.
    const DeviceLinear& first = e > 0 ? out.experts_[0] : linear;
    const bool same_int4 = linear.form() != LinearForm::kInt4 ||
                           (linear.int4().group_size == first.int4().group_size &&
                            linear.int4().min_form == first.int4().min_form);
    const bool same_int8 = linear.form() != LinearForm::kInt8 ||
                           (linear.int8().group_size == first.int8().group_size &&
                            linear.int8().min_form == first.int8().min_form);
    if (e > 0 && (linear.form() != out.form() || linear.n() != out.n() || linear.k() != out.k() ||
                  !same_int4 || !same_int8)) {
      return Invalid(name, absl::StrFormat("expert %d differs from expert 0 in form or shape", e));
    }
    out.experts_.push_back(std::move(linear));
  }
  // The per-expert pointer tables of RunSelected.
  const auto table = [&]<typename T>(DeviceBuffer<T>& buffer, auto pointer) -> absl::Status {
    std::vector<T> pointers;
    for (const DeviceLinear& linear : out.experts_) pointers.push_back(pointer(linear));
    GQ_ASSIGN_OR_RETURN(buffer, DeviceBuffer<T>::Allocate(pointers.size()));
    return buffer.CopyFromHost(pointers);
  };
  if (out.form() == LinearForm::kInt4) {
    GQ_RETURN_IF_ERROR(
        table(out.qweight_table_, [](const DeviceLinear& l) { return l.int4().qweight; }));
    GQ_RETURN_IF_ERROR(
        table(out.params_table_, [](const DeviceLinear& l) { return l.int4().params; }));
  } else if (out.form() == LinearForm::kInt8) {
    GQ_RETURN_IF_ERROR(
        table(out.codes_table_, [](const DeviceLinear& l) { return l.int8().codes; }));
    GQ_RETURN_IF_ERROR(
        table(out.int8_params_table_, [](const DeviceLinear& l) { return l.int8().params; }));
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

absl::Status DeviceExperts::RunSorted(const __nv_bfloat16* x, std::span<const int64_t> row_begin,
                                      __nv_bfloat16* y, SortedRunScratch& scratch,
                                      LinearContext& context, cudaStream_t stream) const {
  if (static_cast<int>(row_begin.size()) != count() + 1 || row_begin[0] != 0 ||
      !std::is_sorted(row_begin.begin(), row_begin.end()) || row_begin.back() > INT_MAX) {
    return Invalid(name_, absl::StrFormat("RunSorted: expected %d non-decreasing row offsets "
                                          "from 0 (rows < 2^31), got %d",
                                          count() + 1, row_begin.size()));
  }
  const bool quantized = form() != LinearForm::kBf16;
  if (scratch.batch < 1 || (quantized && scratch.expert_elements < n() * k())) {
    return Invalid(name_, absl::StrFormat("RunSorted: scratch of %d experts x %d weights, "
                                          "expert of %d",
                                          scratch.batch, scratch.expert_elements, n() * k()));
  }
  std::vector<int> used;
  for (int e = 0; e < count(); ++e) {
    if (row_begin[e + 1] > row_begin[e]) used.push_back(e);
  }
  const int64_t n = this->n(), k = this->k();
  std::vector<const __nv_bfloat16*> weights, inputs;
  std::vector<__nv_bfloat16*> outputs;
  std::vector<int> rows;
  for (size_t first = 0; first < used.size(); first += scratch.batch) {
    const size_t batch = std::min<size_t>(scratch.batch, used.size() - first);
    weights.clear();
    inputs.clear();
    outputs.clear();
    rows.clear();
    for (size_t i = 0; i < batch; ++i) {
      const int e = used[first + i];
      const DeviceLinear& expert = experts_[e];
      __nv_bfloat16* const slot = scratch.weights.data() + i * scratch.expert_elements;
      switch (expert.form()) {
        case LinearForm::kInt4:
          GQ_RETURN_IF_ERROR(DequantizeInt4Mma(expert.int4(), 0, n, slot, stream));
          weights.push_back(slot);
          break;
        case LinearForm::kInt8:
          GQ_RETURN_IF_ERROR(DequantizeInt8Rows(expert.int8(), 0, n, slot, stream));
          weights.push_back(slot);
          break;
        case LinearForm::kBf16:
          weights.push_back(expert.bf16());
          break;
      }
      inputs.push_back(x + row_begin[e] * k);
      outputs.push_back(y + row_begin[e] * n);
      rows.push_back(static_cast<int>(row_begin[e + 1] - row_begin[e]));
    }
    GQ_RETURN_IF_ERROR(
        Annotate(context.GroupedGemmBf16(weights, static_cast<int>(n), static_cast<int>(k), inputs,
                                         rows, outputs, scratch.pointers.data(), stream),
                 "experts '", name_, "'"));
  }
  return absl::OkStatus();
}

absl::Status DeviceExperts::RunSelected(const __nv_bfloat16* x, int64_t x_slot_stride,
                                        const int32_t* ids, int slots, __nv_bfloat16* y,
                                        cudaStream_t stream) const {
  if (!selectable()) {
    return absl::FailedPreconditionError(
        absl::StrCat("experts '", name_, "': ", std::string(LinearFormName(form())),
                     " experts cannot be selected on the device (int4 and int8 only)"));
  }
  if (form() == LinearForm::kInt8) {
    const Int8RowsExpertTables tables{codes_table_.data(), int8_params_table_.data(), count()};
    return Annotate(
        Int8GemvSelected(experts_[0].int8(), tables, ids, slots, x, x_slot_stride, y, stream),
        "experts '", name_, "'");
  }
  const Int4MmaExpertTables tables{qweight_table_.data(), params_table_.data(), count()};
  return Annotate(
      Int4MmaGemvSelected(experts_[0].int4(), tables, ids, slots, x, x_slot_stride, y, stream),
      "experts '", name_, "'");
}

}  // namespace gquant::cuda
