// The experts of one mixture-of-experts matrix (gate_up_proj [E, 2I, H] or
// down_proj [E, H, I]) in GPU memory: one DeviceLinear per expert, in the
// form the checkpoint gave them (packed per expert, pack.h), and two ways to
// run them:
//   - Run(e, ...): expert e on any number of rows, chosen on the host;
//   - RunSorted: rows sorted by expert through all used experts as grouped
//     cuBLAS GEMMs, quantized experts dequantized to bf16 first (the
//     prefill path, where each expert has many rows: one launch per batch of
//     experts instead of a dequantize-and-GEMM per expert);
//   - RunSelected: one row per slot through the expert whose id an earlier
//     kernel wrote on the device (the decode path, RouteTopK's ids), one
//     launch for all slots, so the decode step stays a CUDA graph. Int4 and
//     int8 experts (Int4MmaGemvSelected / Int8GemvSelected read the
//     per-expert pointer tables kept here; GGUF Q4_K_M files carry both);
//     selectable() says whether this object can.
#ifndef GQUANT_CUDA_DEVICE_EXPERTS_CUH_
#define GQUANT_CUDA_DEVICE_EXPERTS_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "device_buffer.cuh"
#include "device_linear.cuh"
#include "gquant/pack.h"

namespace gquant::cuda {

// Device scratch of DeviceExperts::RunSorted: bf16 room for `batch` experts
// of up to `expert_elements` weights (0 for bf16 experts, read in place),
// and the grouped GEMM's pointers.
struct SortedRunScratch {
  static absl::StatusOr<SortedRunScratch> Create(int64_t expert_elements, int batch);
  DeviceBuffer<__nv_bfloat16> weights;  // [batch, expert_elements]
  DeviceBuffer<const void*> pointers;   // [3 x batch]
  int64_t expert_elements = 0;
  int batch = 0;
};

class DeviceExperts {
 public:
  DeviceExperts() = default;

  // One expert per packed matrix (all the same layout and shape).
  // InvalidArgument (naming `name`) for none, mixed shapes or forms, or
  // DeviceLinear::FromPacked's errors; Internal for a CUDA error.
  static absl::StatusOr<DeviceExperts> FromPacked(std::span<const PackedMatrix> experts,
                                                  std::string_view name);
  // `count` experts of float32 [n, k] row-major, stored as bf16.
  static absl::StatusOr<DeviceExperts> FromFloat(std::span<const float> values, int count,
                                                 int64_t n, int64_t k, std::string_view name);

  int count() const { return static_cast<int>(experts_.size()); }
  int64_t n() const { return experts_.empty() ? 0 : experts_[0].n(); }
  int64_t k() const { return experts_.empty() ? 0 : experts_[0].k(); }
  LinearForm form() const { return experts_.empty() ? LinearForm::kBf16 : experts_[0].form(); }
  int64_t num_bytes() const;  // all experts' weights
  bool selectable() const { return form() != LinearForm::kBf16; }

  // y[m, N] = x[m, K] · W_eᵀ (DeviceLinear::Run). InvalidArgument for e
  // outside [0, count).
  absl::Status Run(int e, const __nv_bfloat16* x, int64_t m, __nv_bfloat16* y,
                   LinearContext& context, cudaStream_t stream) const;

  // Rows sorted by expert, expert e's in [row_begin[e], row_begin[e + 1])
  // (count() + 1 host entries, non-decreasing, from 0): y[those rows] =
  // x[those rows] · W_eᵀ, x [rows, K] and y [rows, N]. Experts with no rows
  // are skipped; the others run scratch.batch at a time as one grouped GEMM
  // (LinearContext::GroupedGemmBf16), int4 / int8 experts dequantized into
  // scratch first. InvalidArgument for a bad row_begin or a scratch too small.
  absl::Status RunSorted(const __nv_bfloat16* x, std::span<const int64_t> row_begin,
                         __nv_bfloat16* y, SortedRunScratch& scratch, LinearContext& context,
                         cudaStream_t stream) const;

  // y[s, :] = x[s * x_slot_stride, :K] · W_{ids[s]}ᵀ for s < slots, ids
  // int32 on the device (Int4MmaGemvSelected, Int8GemvSelected).
  // FailedPrecondition when not selectable().
  absl::Status RunSelected(const __nv_bfloat16* x, int64_t x_slot_stride, const int32_t* ids,
                           int slots, __nv_bfloat16* y, cudaStream_t stream) const;

 private:
  std::string name_;
  std::vector<DeviceLinear> experts_;
  // Each expert's pointers, for RunSelected: int4 qweight and params, or
  // int8 codes and params.
  DeviceBuffer<const uint4*> qweight_table_;
  DeviceBuffer<const __nv_bfloat162*> params_table_;
  DeviceBuffer<const int8_t*> codes_table_;
  DeviceBuffer<const float2*> int8_params_table_;
};

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_DEVICE_EXPERTS_CUH_
