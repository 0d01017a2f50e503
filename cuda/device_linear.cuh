// One linear layer's weight in GPU memory, in the form the checkpoint gave
// it, and y[M, N] = x[M, K] · Wᵀ for any M (bf16 activations, fp32
// accumulation, bf16 output):
//
//   form   layout (pack.h)      M <= 16                M > 16
//   int4   cuda_int4_mma16      Int4MmaGemv            WeightOnlyGemm (dequantize + cuBLAS);
//                                                      Int4WgmmaGemm (fused) on sm_90a up to
//                                                      512 tokens where it fills the GPU
//   int8   cuda_int8_rows       Int8Gemv               WeightOnlyGemm (DequantizeInt8Rows)
//   bf16   [N, K] row-major     cuBLAS GemmEx          cuBLAS GemmEx
//
// The same object is also an embedding table (Gemma ties the LM head to the
// embedding): Gather reads rows of the int8 and bf16 forms, and of the int4
// form through GatherInt4MmaRows (embedding_gather.cuh).
//
// Several matrices with the same K and form can be stacked along N into one
// (FromPackedRows): gate and up become one GEMV whose output row is
// [gate | up], one launch instead of two; RunRows runs one member alone.
//
// Graph capture: Run with M <= 16 launches kernels (and, for bf16, one cuBLAS
// call on a handle with a fixed workspace), so a decode step that calls it
// can be captured into a CUDA graph and replayed. M > 16 uses the side stream
// and events of WeightOnlyGemm and is not meant for capture.
#ifndef GQUANT_CUDA_DEVICE_LINEAR_CUH_
#define GQUANT_CUDA_DEVICE_LINEAR_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "device_buffer.cuh"
#include "gquant/pack.h"
#include "int4_mma_gemv.cuh"
#include "int8_gemv.cuh"

namespace gquant::cuda {

// What Run needs besides the weight: a cuBLAS handle with its workspace and
// the prefill GEMM's scratch buffers and side stream. One per host thread /
// stream user, as WeightOnlyGemm (prefill_gemm.cuh) requires.
class LinearContext {
 public:
  // On the current device. Internal for a CUDA or cuBLAS error.
  static absl::StatusOr<LinearContext> Create();
  LinearContext(LinearContext&&) noexcept;
  LinearContext& operator=(LinearContext&&) noexcept;
  ~LinearContext();

  // y_i[m_i, n] = x_i[m_i, k] · W_iᵀ for i < weights.size() (bf16, W_i
  // [n, k] and x_i, y_i row-major, device pointers) in one grouped cuBLAS
  // GEMM, one group per i: the MoE prefill runs each expert's rows so
  // (DeviceExperts::RunSorted). `pointers` is device room for 3 x count
  // pointers, filled in stream order. InvalidArgument for mismatched spans
  // or a bad size; Internal for a CUDA or cuBLAS error.
  absl::Status GroupedGemmBf16(std::span<const __nv_bfloat16* const> weights, int n, int k,
                               std::span<const __nv_bfloat16* const> x, std::span<const int> m,
                               std::span<__nv_bfloat16* const> y, const void** pointers,
                               cudaStream_t stream);

 private:
  friend class DeviceLinear;
  struct Resources;
  explicit LinearContext(std::unique_ptr<Resources> resources);
  std::unique_ptr<Resources> resources_;
};

enum class LinearForm : uint8_t { kInt4, kInt8, kBf16 };
std::string_view LinearFormName(LinearForm form);  // "int4", "int8", "bf16"

struct PackedStack;  // the upload plan of packed matrices (device_linear.cu)

class DeviceLinear {
 public:
  DeviceLinear() = default;

  // Uploads one packed matrix (layout cuda_int4_mma16 or cuda_int8_rows).
  // InvalidArgument for another layout or missing or mis-sized parts (naming
  // `name`), found before any CUDA call; Internal for a CUDA error. Like the
  // other factories, returns once the copies have landed, so the weight is
  // ready for work on any stream.
  static absl::StatusOr<DeviceLinear> FromPacked(const PackedMatrix& packed,
                                                 std::string_view name = "linear");
  // Matrices with the same layout, K, group size and zero form, stacked along
  // N in the given order. InvalidArgument when they differ (or none).
  static absl::StatusOr<DeviceLinear> FromPackedRows(std::span<const PackedMatrix> parts,
                                                     std::string_view name = "linear");
  // An MLP's int4 gate and up ([I, K] each, packed alike, I % 16 == 0) as
  // one [2I, K] weight interleaved by halves of 16-row blocks
  // (InterleaveInt4MmaRowHalves), for RunGeluGate. InvalidArgument when they
  // are not both cuda_int4_mma16 of one shape and form, or I % 16 != 0.
  static absl::StatusOr<DeviceLinear> FromPackedGatePairs(const PackedMatrix& gate,
                                                          const PackedMatrix& up,
                                                          std::string_view name = "linear");
  // A float32 [n, k] row-major matrix, stored as bf16 (round to nearest even).
  // InvalidArgument for a size mismatch or n, k < 1.
  static absl::StatusOr<DeviceLinear> FromFloat(std::span<const float> values, int64_t n, int64_t k,
                                                std::string_view name = "linear");
  // Several float32 [n_i, k] matrices stacked along N, as FromPackedRows.
  static absl::StatusOr<DeviceLinear> FromFloatRows(std::span<const std::span<const float>> parts,
                                                    std::span<const int64_t> rows, int64_t k,
                                                    std::string_view name = "linear");

  LinearForm form() const { return form_; }
  int64_t n() const { return n_; }
  int64_t k() const { return k_; }
  int64_t num_bytes() const;  // device bytes of the weight (codes + parameters)

  // y[m, N] = x[m, K] · Wᵀ on `stream`; x and y device pointers, 16-byte
  // aligned, row-major. m = 0 does nothing. InvalidArgument for m < 0, an
  // empty object or bad pointers; the kernels' errors otherwise.
  absl::Status Run(const __nv_bfloat16* x, int64_t m, __nv_bfloat16* y, LinearContext& context,
                   cudaStream_t stream) const;
  // y[m, rows] = x[m, K] · W[row_begin : row_begin + rows]ᵀ: one member of a
  // stack (FromPackedRows) into its own matrix, no copy of the others. The
  // int4 form needs a range of whole 16-row blocks. InvalidArgument for a
  // range outside [0, N), else as Run.
  absl::Status RunRows(const __nv_bfloat16* x, int64_t m, int64_t row_begin, int64_t rows,
                       __nv_bfloat16* y, LinearContext& context, cudaStream_t stream) const;

  // For a FromPackedGatePairs weight: y[m, N/2] = gelu_tanh(x · Gateᵀ) *
  // (x · Upᵀ). M <= 16: one GEMV with the product in its epilogue (no
  // separate launch; decode); above, Run into `scratch` [m, N] (interleaved
  // gate / up halves) and the elementwise product over it. InvalidArgument on
  // another weight or bad pointers, else as Run.
  absl::Status RunGeluGate(const __nv_bfloat16* x, int64_t m, __nv_bfloat16* scratch,
                           __nv_bfloat16* y, LinearContext& context, cudaStream_t stream) const;
  bool gate_pairs() const { return gate_pairs_; }

  // Decode of one token whose input row the GEMV forms itself from `row`
  // (Int4MmaGemvAfterAddNorm: the residual add and norms of
  // AddNormalizedThenNorm, the new residual to row.residual_out), saving
  // the norm kernel: y[1, N] = x · Wᵀ as Run, or for a gate / up pair weight
  // y[1, N/2] as RunGeluGate; with `gelu_times` ([N] bf16 on the device, not
  // for gate / up pairs), y = gelu_tanh(x · Wᵀ) * gelu_times. The int4 form
  // only (fuses_add_norm()); InvalidArgument for another form or bad
  // pointers, else the kernel's.
  bool fuses_add_norm() const { return form_ == LinearForm::kInt4; }
  absl::Status RunAfterAddNorm(const ResidualAddNorm& row, __nv_bfloat16* y, cudaStream_t stream,
                               const __nv_bfloat16* gelu_times = nullptr) const;

  // out[t, :] = bf16(row ids[t] of W, dequantized, * multiplier) for t < count,
  // ids int32 on the device (an id outside [0, N) gives a row of NaNs, as the
  // gathers in embedding_gather.cuh). out is [count, K], 16-byte aligned.
  absl::Status Gather(const int32_t* ids, int count, float multiplier, __nv_bfloat16* out,
                      cudaStream_t stream) const;

  // The kernel views (valid for the int4 / int8 forms; for tests and benches).
  const Int4MmaWeight& int4() const { return int4_; }
  const Int8RowsWeight& int8() const { return int8_; }
  const __nv_bfloat16* bf16() const { return bf16_.data(); }

 private:
  // Uploads a planned stack (device_linear.cu) and sets the kernel view.
  static absl::StatusOr<DeviceLinear> FromStack(const PackedStack& stack, std::string_view name,
                                                bool gate_pairs);
  // Run and Gather on an empty object (n_ == 0) fail with InvalidArgument.
  absl::Status CheckNotEmpty(std::string_view what) const;
  std::string Describe() const;  // "linear '<name>' (<form> [N, K])", for messages

  std::string name_ = "linear";  // labels error messages
  LinearForm form_ = LinearForm::kBf16;
  int64_t n_ = 0, k_ = 0;
  bool gate_pairs_ = false;           // FromPackedGatePairs
  DeviceBuffer<std::byte> codes_;     // int4 qweight or int8 codes
  DeviceBuffer<std::byte> params_;    // int4 bf16x2 params or int8 float2 params
  DeviceBuffer<__nv_bfloat16> bf16_;  // bf16 form
  Int4MmaWeight int4_;
  Int8RowsWeight int8_;
};

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_DEVICE_LINEAR_CUH_
