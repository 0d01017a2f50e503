// DeviceLinear and LinearContext (device_linear.cuh). Host code only: the
// inputs are checked and the stacking planned before the first CUDA call (so
// bad arguments read the same on machines without a GPU), then the parts are
// uploaded and Run / Gather pick the kernel for the form and M.
#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "activations.cuh"
#include "aligned.h"
#include "cublas_status.cuh"
#include "cuda_status.cuh"
#include "device.cuh"
#include "device_linear.cuh"
#include "embedding_gather.cuh"
#include "gquant/dtype.h"
#include "gquant/status.h"
#include "int4_mma_layout.h"
#include "int4_wgmma_gemm.cuh"
#include "int8_dequantize.cuh"
#include "prefill_gemm.cuh"

namespace gquant::cuda {

// What FromStack uploads: the stacked shape and, per matrix, the bytes of its
// two parts, which are concatenated in order.
struct PackedStack {
  bool int4 = false;  // cuda_int4_mma16; else cuda_int8_rows
  int64_t n = 0, k = 0, group_size = 0;
  bool min_form = false;
  int64_t codes_bytes = 0, params_bytes = 0;
  std::vector<std::span<const std::byte>> codes, params;
};

namespace {

// cuBLAS's recommended workspace on Hopper. Owning it (instead of cuBLAS's
// implicit pool) keeps allocations out of Run, which graph capture needs.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
// The prefill GEMM caps a dequantizer beside its GEMM in SMs;
// DequantizeInt8Rows caps its grid in blocks, 4 of which fill an SM (its
// default grid).
constexpr int kInt8DequantizeBlocksPerSm = 4;
// Floats converted to bf16 per host staging step in FromFloatRows: bounds the
// staging buffer (32 MiB) for tables as large as the LM head.
constexpr int64_t kBf16StagingElements = int64_t{1} << 24;
// Up to this M the int4 / int8 forms run their decode GEMV; above it the
// prefill GEMM (dequantize + cuBLAS).
constexpr int64_t kGemvMaxM = kInt4MmaMaxM;

// Whether an int4 product of m > kGemvMaxM tokens takes the fused GEMM
// (int4_wgmma_gemm.cuh) rather than dequantize + cuBLAS. Measured on an
// H100 (bench/RESULTS.md): the fused kernel wins up to 512 tokens (no
// dequantization pass to amortize; q_proj 83.4 against 108 µs, gate/up 237
// against 287 at M = 512) as long as its tiles fill at least half the
// multiprocessors (down_proj's 42 row tiles at M = 128: 286 against 226);
// from 1024 tokens on, cuBLAS's speed outweighs the dequantization.
bool PreferFusedInt4Gemm(int64_t n, int64_t m) {
  constexpr int64_t kMaxTokens = 512;
  if (m > kMaxTokens || !Int4WgmmaGemmAvailable()) return false;
  absl::StatusOr<DeviceLimits> device = CurrentDeviceLimits();
  return device.ok() && 2 * Int4WgmmaGemmTiles(n, m) >= device->multiprocessors;
}
static_assert(kInt8GemvMaxM == kGemvMaxM);

// Rows of gate (then of up) in each 16-row block of a gate / up pair weight.
constexpr int64_t kGatePairHalf = kInt4MmaRows / 2;

// "linear '<name>'", the prefix of every message.
std::string Label(std::string_view name) { return absl::StrFormat("linear '%s'", name); }

absl::Status Invalid(std::string_view name, std::string_view message) {
  return absl::InvalidArgumentError(absl::StrFormat("linear '%s': %s", name, message));
}

// Both layouts order their bytes by rows first: cuda_int8_rows is row-major
// ([N, K] codes, [N][G] params), and cuda_int4_mma16 stores whole 16-row
// blocks one after another (qweight [N/16][K/64][512 B], params
// [N/16][G][8][2]; int4_mma_layout.h), with N % 16 == 0 for every matrix.
// So matrices with the same K, group size and zero form stack along N by
// concatenating each part.
absl::StatusOr<PackedStack> PlanPackedStack(std::span<const PackedMatrix> matrices,
                                            std::string_view name) {
  if (matrices.empty()) return Invalid(name, "expected at least one packed matrix, but got none");
  const PackedMatrix& first = matrices.front();
  PackedStack stack;
  stack.int4 = first.layout == kCudaInt4Mma16Layout;
  if (!stack.int4 && first.layout != kCudaInt8RowsLayout) {
    return Invalid(name, absl::StrFormat("expected layout '%s' or '%s', but got '%s'",
                                         kCudaInt4Mma16Layout, kCudaInt8RowsLayout, first.layout));
  }
  stack.k = first.info.cols;
  stack.group_size = first.info.group_size;
  stack.min_form = first.info.zero_form() == ZeroForm::kMin;
  const std::string_view codes_part = stack.int4 ? "qweight" : "codes";
  for (size_t i = 0; i < matrices.size(); ++i) {
    const PackedMatrix& m = matrices[i];
    const QuantizedMatrixInfo& info = m.info;
    const std::string what =
        absl::StrFormat("matrix %d of %d ([%d, %d], group %d)", i, matrices.size(), info.rows,
                        info.cols, info.group_size);
    if (m.layout != first.layout || info.cols != stack.k || info.group_size != stack.group_size ||
        (info.zero_form() == ZeroForm::kMin) != stack.min_form) {
      return Invalid(name, absl::StrFormat(
                               "%s: expected layout '%s', K=%d, group %d and the %s form of matrix "
                               "0 to stack along N, but got layout '%s' in the %s form",
                               what, first.layout, stack.k, stack.group_size,
                               stack.min_form ? "min" : "zero-point", m.layout,
                               info.zero_form() == ZeroForm::kMin ? "min" : "zero-point"));
    }
    if (info.kind == QuantizedWeightInfo::Kind::kPlain) {
      return Invalid(name, what + ": expected a quantized kind, but got a plain one");
    }
    if (absl::Status s = stack.int4 ? CheckInt4MmaShape(info.rows, info.cols, info.group_size)
                                    : CheckInt8RowsShape(info.rows, info.cols, info.group_size);
        !s.ok()) {
      return Annotate(s, Label(name), ": ", what);
    }
    // Parts per the layout headers: int4 half a byte per weight and one
    // bf16x2 word per (row, group); int8 one byte per weight and one float
    // pair per (row, group).
    const int64_t weights = info.rows * info.cols, params = info.rows * info.groups();
    const int64_t codes_bytes = stack.int4 ? weights / 2 : weights;
    const int64_t params_bytes = params * (stack.int4 ? 4 : 8);
    std::span<const std::byte> parts[2];
    const std::pair<std::string_view, int64_t> expected[2] = {{codes_part, codes_bytes},
                                                              {"params", params_bytes}};
    for (int p = 0; p < 2; ++p) {
      absl::StatusOr<std::span<const std::byte>> bytes = m.Part(expected[p].first);
      if (!bytes.ok()) {
        return Invalid(name, absl::StrFormat("%s: %s", what, bytes.status().message()));
      }
      if (static_cast<int64_t>(bytes->size()) != expected[p].second) {
        return Invalid(name, absl::StrFormat("%s: expected part '%s' of %d bytes, but got %d", what,
                                             expected[p].first, expected[p].second, bytes->size()));
      }
      parts[p] = *bytes;
    }
    stack.codes.push_back(parts[0]);
    stack.params.push_back(parts[1]);
    stack.n += info.rows;
    stack.codes_bytes += codes_bytes;
    stack.params_bytes += params_bytes;
  }
  return stack;
}

// Waits for the uploads: cudaMemcpy from pageable memory may return before
// its DMA lands, and a Run on a non-blocking stream would not wait for it.
absl::Status FinishUploads(std::string_view name) {
  if (const cudaError_t e = cudaStreamSynchronize(nullptr); e != cudaSuccess) {
    return Annotate(CudaStatus(e, "cudaStreamSynchronize"), Label(name), ": uploading");
  }
  return absl::OkStatus();
}

// `parts` concatenated into a new device buffer.
absl::StatusOr<DeviceBuffer<std::byte>> UploadConcatenated(
    std::span<const std::span<const std::byte>> parts, int64_t total_bytes) {
  GQ_ASSIGN_OR_RETURN(DeviceBuffer<std::byte> buffer,
                      DeviceBuffer<std::byte>::Allocate(static_cast<size_t>(total_bytes)));
  std::byte* at = buffer.data();
  for (std::span<const std::byte> part : parts) {
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpy(at, part.data(), part.size(), cudaMemcpyHostToDevice));
    at += part.size();
  }
  return buffer;
}

}  // namespace

// ---- LinearContext ----

struct LinearContext::Resources {
  cublasHandle_t handle = nullptr;  // the bf16 form's GEMMs
  DeviceBuffer<uint8_t> workspace;  // the handle's, fixed (graph capture)
  // int4 / int8 at M > 16; created by the first such Run, since its scratch
  // (2 x 128 MiB) is wasted on a model that never prefills.
  std::optional<WeightOnlyGemm> prefill;

  ~Resources() {
    // Waits for the device (cublasDestroy synchronizes) before the workspace goes.
    if (handle != nullptr) cublasDestroy(handle);
  }

  absl::StatusOr<WeightOnlyGemm*> Prefill() {
    if (!prefill.has_value()) {
      GQ_ASSIGN_OR_RETURN(WeightOnlyGemm gemm, WeightOnlyGemm::Create());
      prefill.emplace(std::move(gemm));
    }
    return &*prefill;
  }

  // Points the handle at `stream` with the fixed workspace, before each call.
  absl::Status Bind(cudaStream_t stream) {
    // cublasSetStream resets the workspace to cuBLAS's pool: set it after.
    GQ_RETURN_IF_ERROR(CublasStatus(cublasSetStream(handle, stream), "cublasSetStream"));
    return CublasStatus(cublasSetWorkspace(handle, workspace.data(), workspace.size()),
                        "cublasSetWorkspace");
  }

  // y[m, n] = x[m, k] · Wᵀ for W [n, k] row-major bf16 (all within int).
  absl::Status GemmBf16(const __nv_bfloat16* w, int n, int k, const __nv_bfloat16* x, int m,
                        __nv_bfloat16* y, cudaStream_t stream) {
    GQ_RETURN_IF_ERROR(Bind(stream));
    // Column-major view: y is C [n, m] (ldc n), W is A = Wᵀ stored as K x N
    // (lda k), x is B [k, m] (ldb k).
    const float alpha = 1, beta = 0;
    return CublasStatus(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n, m, k, &alpha, w,
                                     CUDA_R_16BF, k, x, CUDA_R_16BF, k, &beta, y, CUDA_R_16BF, n,
                                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
                        "cublasGemmEx");
  }
};

LinearContext::LinearContext(std::unique_ptr<Resources> resources)
    : resources_(std::move(resources)) {}
LinearContext::LinearContext(LinearContext&&) noexcept = default;
LinearContext& LinearContext::operator=(LinearContext&&) noexcept = default;
LinearContext::~LinearContext() = default;

absl::StatusOr<LinearContext> LinearContext::Create() {
  auto r = std::make_unique<Resources>();
  GQ_RETURN_IF_ERROR(CublasStatus(cublasCreate(&r->handle), "LinearContext: cublasCreate"));
  // Split-K reductions in fp32, not bf16: the error bound stays fp32
  // accumulation plus one bf16 rounding of the output.
  GQ_RETURN_IF_ERROR(CublasStatus(
      cublasSetMathMode(
          r->handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                               CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)),
      "LinearContext: cublasSetMathMode"));
  GQ_ASSIGN_OR_RETURN(r->workspace, DeviceBuffer<uint8_t>::Allocate(kCublasWorkspaceBytes));
  return LinearContext(std::move(r));
}

absl::Status LinearContext::GroupedGemmBf16(std::span<const __nv_bfloat16* const> weights, int n,
                                            int k, std::span<const __nv_bfloat16* const> x,
                                            std::span<const int> m,
                                            std::span<__nv_bfloat16* const> y,
                                            const void** pointers, cudaStream_t stream) {
  const size_t count = weights.size();
  if (count == 0) return absl::OkStatus();
  if (x.size() != count || m.size() != count || y.size() != count || pointers == nullptr || n < 1 ||
      k < 1 || count > INT_MAX / 3) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "GroupedGemmBf16: %d weights, %d inputs, %d row counts, %d outputs, n=%d, k=%d", count,
        x.size(), m.size(), y.size(), n, k));
  }
  // Column-major view per group, as GemmBf16: C = y [n, m_i], A = W [k, n]
  // transposed, B = x [k, m_i].
  std::vector<const void*> arrays(3 * count);
  for (size_t i = 0; i < count; ++i) {
    if (m[i] < 1) return absl::InvalidArgumentError("GroupedGemmBf16: a group with no rows");
    arrays[i] = weights[i];
    arrays[count + i] = x[i];
    arrays[2 * count + i] = y[i];
  }
  // Pageable memory: the copy has taken the bytes when the call returns.
  GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(pointers, arrays.data(), arrays.size() * sizeof(void*),
                                          cudaMemcpyHostToDevice, stream));
  const int groups = static_cast<int>(count);
  const std::vector<cublasOperation_t> transa(count, CUBLAS_OP_T), transb(count, CUBLAS_OP_N);
  const std::vector<int> ns(count, n), ks(count, k), ones(count, 1);
  const std::vector<float> alpha(count, 1.0f), beta(count, 0.0f);
  GQ_RETURN_IF_ERROR(resources_->Bind(stream));
  return CublasStatus(
      cublasGemmGroupedBatchedEx(resources_->handle, transa.data(), transb.data(), ns.data(),
                                 m.data(), ks.data(), alpha.data(), pointers, CUDA_R_16BF,
                                 ks.data(), pointers + count, CUDA_R_16BF, ks.data(), beta.data(),
                                 const_cast<void* const*>(pointers + 2 * count), CUDA_R_16BF,
                                 ns.data(), groups, ones.data(), CUBLAS_COMPUTE_32F),
      "cublasGemmGroupedBatchedEx");
}

// ---- DeviceLinear ----

std::string_view LinearFormName(LinearForm form) {
  switch (form) {
    case LinearForm::kInt4:
      return "int4";
    case LinearForm::kInt8:
      return "int8";
    case LinearForm::kBf16:
      return "bf16";
  }
  return "unknown";
}

absl::StatusOr<DeviceLinear> DeviceLinear::FromPacked(const PackedMatrix& packed,
                                                      std::string_view name) {
  return FromPackedRows(std::span<const PackedMatrix>(&packed, 1), name);
}

absl::StatusOr<DeviceLinear> DeviceLinear::FromPackedRows(std::span<const PackedMatrix> parts,
                                                          std::string_view name) {
  GQ_ASSIGN_OR_RETURN(const PackedStack stack, PlanPackedStack(parts, name));
  return FromStack(stack, name, /*gate_pairs=*/false);
}

absl::StatusOr<DeviceLinear> DeviceLinear::FromStack(const PackedStack& stack,
                                                     std::string_view name, bool gate_pairs) {
  DeviceLinear linear;
  linear.name_ = std::string(name);
  linear.form_ = stack.int4 ? LinearForm::kInt4 : LinearForm::kInt8;
  linear.gate_pairs_ = gate_pairs;
  linear.n_ = stack.n;
  linear.k_ = stack.k;
  absl::StatusOr<DeviceBuffer<std::byte>> codes =
      UploadConcatenated(stack.codes, stack.codes_bytes);
  if (!codes.ok()) return Annotate(codes.status(), Label(name), ": uploading codes");
  absl::StatusOr<DeviceBuffer<std::byte>> params =
      UploadConcatenated(stack.params, stack.params_bytes);
  if (!params.ok()) return Annotate(params.status(), Label(name), ": uploading params");
  GQ_RETURN_IF_ERROR(FinishUploads(name));
  linear.codes_ = *std::move(codes);
  linear.params_ = *std::move(params);
  // cudaMalloc's alignment (256 bytes) covers the kernels' 16- and 8-byte needs.
  if (stack.int4) {
    linear.int4_ = {reinterpret_cast<const uint4*>(linear.codes_.data()),
                    reinterpret_cast<const __nv_bfloat162*>(linear.params_.data()),
                    stack.n,
                    stack.k,
                    static_cast<int>(stack.group_size),
                    stack.min_form};
  } else {
    linear.int8_ = {reinterpret_cast<const int8_t*>(linear.codes_.data()),
                    reinterpret_cast<const float2*>(linear.params_.data()),
                    stack.n,
                    stack.k,
                    stack.group_size,
                    stack.min_form};
  }
  return linear;
}

absl::StatusOr<DeviceLinear> DeviceLinear::FromPackedGatePairs(const PackedMatrix& gate,
                                                               const PackedMatrix& up,
                                                               std::string_view name) {
  // Each planned alone (a span of the two would need a copy of their parts),
  // then compared as a stack of the two would be.
  GQ_ASSIGN_OR_RETURN(const PackedStack g, PlanPackedStack(std::span(&gate, 1), name));
  GQ_ASSIGN_OR_RETURN(const PackedStack u, PlanPackedStack(std::span(&up, 1), name));
  const int64_t rows = g.n;
  if (!g.int4 || !u.int4 || u.n != rows || u.k != g.k || u.group_size != g.group_size ||
      u.min_form != g.min_form) {
    return Invalid(
        name, absl::StrFormat("gate / up pairs need two cuda_int4_mma16 matrices of one "
                              "[I, K], group size and zero form, but got '%s' [%d, %d] "
                              "group %d and '%s' [%d, %d] group %d%s",
                              gate.layout, rows, g.k, g.group_size, up.layout, u.n, u.k,
                              u.group_size, u.min_form != g.min_form ? " in different forms" : ""));
  }
  const auto bytes = [](std::span<const std::byte> part) {
    return std::span<const uint8_t>(reinterpret_cast<const uint8_t*>(part.data()), part.size());
  };
  // The params parts hold bf16x2 words (4-byte aligned: std::vector storage).
  const auto words = [](std::span<const std::byte> part) {
    return std::span<const uint32_t>(reinterpret_cast<const uint32_t*>(part.data()),
                                     part.size() / 4);
  };
  absl::StatusOr<PackedInt4Mma> pairs =
      InterleaveInt4MmaRowHalves(bytes(g.codes[0]), words(g.params[0]), bytes(u.codes[0]),
                                 words(u.params[0]), rows, g.k, g.group_size);
  if (!pairs.ok()) return Annotate(pairs.status(), Label(name));
  // The interleaved matrix as a stack of one: [2I, K], the pair's bytes.
  PackedStack stack = g;
  stack.n = 2 * rows;
  stack.codes = {std::as_bytes(std::span(pairs->qweight))};
  stack.params = {std::as_bytes(std::span(pairs->params))};
  stack.codes_bytes = static_cast<int64_t>(stack.codes[0].size());
  stack.params_bytes = static_cast<int64_t>(stack.params[0].size());
  return FromStack(stack, name, /*gate_pairs=*/true);
}

absl::StatusOr<DeviceLinear> DeviceLinear::FromFloat(std::span<const float> values, int64_t n,
                                                     int64_t k, std::string_view name) {
  const std::span<const float> parts[1] = {values};
  const int64_t rows[1] = {n};
  return FromFloatRows(parts, rows, k, name);
}

absl::StatusOr<DeviceLinear> DeviceLinear::FromFloatRows(
    std::span<const std::span<const float>> parts, std::span<const int64_t> rows, int64_t k,
    std::string_view name) {
  if (parts.empty() || parts.size() != rows.size() || k < 1) {
    return Invalid(name, absl::StrFormat("expected at least one matrix, as many row counts as "
                                         "matrices and K >= 1, but got %d matrices, %d row counts "
                                         "and K=%d",
                                         parts.size(), rows.size(), k));
  }
  int64_t n = 0;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (rows[i] < 1 || rows[i] > INT64_MAX / k / 2 - n ||
        static_cast<int64_t>(parts[i].size()) != rows[i] * k) {
      return Invalid(name, absl::StrFormat("matrix %d of %d: expected %d x %d floats (N >= 1), but "
                                           "got %d values",
                                           i, parts.size(), rows[i], k, parts[i].size()));
    }
    n += rows[i];
  }
  DeviceLinear linear;
  linear.name_ = std::string(name);
  linear.form_ = LinearForm::kBf16;
  linear.n_ = n;
  linear.k_ = k;
  absl::StatusOr<DeviceBuffer<__nv_bfloat16>> buffer =
      DeviceBuffer<__nv_bfloat16>::Allocate(static_cast<size_t>(n * k));
  if (!buffer.ok()) return Annotate(buffer.status(), Label(name));
  linear.bf16_ = *std::move(buffer);
  // Convert and copy in bounded steps: parts are contiguous in the stack.
  std::vector<uint16_t> staging(std::min(n * k, kBf16StagingElements));
  __nv_bfloat16* at = linear.bf16_.data();
  for (std::span<const float> part : parts) {
    for (size_t begin = 0; begin < part.size(); begin += staging.size()) {
      const size_t count = std::min(staging.size(), part.size() - begin);
      std::transform(part.begin() + begin, part.begin() + begin + count, staging.begin(),
                     FloatToBFloat16);
      if (const cudaError_t e =
              cudaMemcpy(at, staging.data(), count * sizeof(uint16_t), cudaMemcpyHostToDevice);
          e != cudaSuccess) {
        return Annotate(CudaStatus(e, "cudaMemcpy"), Label(name), ": uploading bf16 values");
      }
      at += count;
    }
  }
  GQ_RETURN_IF_ERROR(FinishUploads(name));
  return linear;
}

int64_t DeviceLinear::num_bytes() const {
  return static_cast<int64_t>(codes_.size() + params_.size() +
                              bf16_.size() * sizeof(__nv_bfloat16));
}

absl::Status DeviceLinear::CheckNotEmpty(std::string_view what) const {
  if (n_ > 0) return absl::OkStatus();
  return Invalid(name_, absl::StrFormat("%s on an empty DeviceLinear (no weight uploaded)", what));
}

absl::Status DeviceLinear::Run(const __nv_bfloat16* x, int64_t m, __nv_bfloat16* y,
                               LinearContext& context, cudaStream_t stream) const {
  return RunRows(x, m, 0, n_, y, context, stream);
}

absl::Status DeviceLinear::RunRows(const __nv_bfloat16* x, int64_t m, int64_t row_begin,
                                   int64_t rows, __nv_bfloat16* y, LinearContext& context,
                                   cudaStream_t stream) const {
  if (m < 0) return Invalid(name_, absl::StrFormat("Run: expected M >= 0, but got %d", m));
  GQ_RETURN_IF_ERROR(CheckNotEmpty("Run"));
  // Both packed layouts store 16-row blocks contiguously (int4_mma_layout.h,
  // int8_layout.h), so a block-aligned range is a view at an offset.
  const int64_t align = form_ == LinearForm::kInt4 ? kInt4MmaRows : 1;
  if (row_begin < 0 || rows < 1 || row_begin > n_ - rows || row_begin % align != 0 ||
      rows % align != 0) {
    return Invalid(
        name_, absl::StrFormat("Run: rows [%d, %d) are not a range of N=%d%s", row_begin,
                               row_begin + rows, n_, align > 1 ? " in whole 16-row blocks" : ""));
  }
  if (m == 0) return absl::OkStatus();
  if (x == nullptr || y == nullptr || !Aligned(x, 16) || !Aligned(y, 16) ||
      context.resources_ == nullptr) {
    return Invalid(name_, absl::StrFormat("Run: expected x and y non-null and 16-byte aligned and "
                                          "a live LinearContext, but got x %p, y %p, context %s",
                                          x, y, context.resources_ ? "live" : "moved from"));
  }
  if (form_ == LinearForm::kBf16 && (rows > INT_MAX || k_ > INT_MAX || m > INT_MAX)) {
    return Invalid(name_, absl::StrFormat("Run: cuBLAS needs N, K and M within int, but got N=%d "
                                          "K=%d M=%d",
                                          rows, k_, m));
  }
  LinearContext::Resources& r = *context.resources_;
  const absl::Status status = [&]() -> absl::Status {
    if (form_ == LinearForm::kBf16) {
      return r.GemmBf16(bf16_.data() + row_begin * k_, static_cast<int>(rows), static_cast<int>(k_),
                        x, static_cast<int>(m), y, stream);
    }
    Int4MmaWeight int4 = int4_;
    Int8RowsWeight int8 = int8_;
    if (form_ == LinearForm::kInt4) {
      const int64_t blocks = row_begin / kInt4MmaRows;
      int4.qweight += blocks * (k_ / kInt4MmaTileK) * 32;
      int4.params += blocks * (k_ / int4.group_size) * kInt4MmaRows;
      int4.n = rows;
    } else {
      int8.codes += row_begin * k_;
      int8.params += row_begin * (k_ / int8.group_size);
      int8.n = rows;
    }
    if (m <= kGemvMaxM) {
      return form_ == LinearForm::kInt4 ? Int4MmaGemv(int4, x, static_cast<int>(m), y, stream)
                                        : Int8Gemv(int8, x, static_cast<int>(m), y, stream);
    }
    if (form_ == LinearForm::kInt4 && PreferFusedInt4Gemm(rows, m)) {
      return Int4WgmmaGemm(int4, x, m, y, stream);
    }
    GQ_ASSIGN_OR_RETURN(WeightOnlyGemm * gemm, r.Prefill());
    if (form_ == LinearForm::kInt4) return gemm->Run(int4, x, m, y, stream);
    return gemm->Run(
        [&int8](int64_t begin, int64_t count, __nv_bfloat16* out, cudaStream_t s,
                int multiprocessors) {
          return DequantizeInt8Rows(int8, begin, count, out, s,
                                    multiprocessors * kInt8DequantizeBlocksPerSm);
        },
        rows, k_, x, m, y, stream);
  }();
  if (row_begin == 0 && rows == n_) {
    return Annotate(status, Describe(), absl::StrFormat(", M=%d", m));
  }
  return Annotate(status, Describe(),
                  absl::StrFormat(", rows [%d, %d), M=%d", row_begin, row_begin + rows, m));
}

absl::Status DeviceLinear::RunGeluGate(const __nv_bfloat16* x, int64_t m, __nv_bfloat16* scratch,
                                       __nv_bfloat16* y, LinearContext& context,
                                       cudaStream_t stream) const {
  if (!gate_pairs_) {
    return Invalid(name_, "RunGeluGate: expected a gate / up pair weight (FromPackedGatePairs)");
  }
  if (m <= 0) return Run(x, m, y, context, stream);  // nothing, or Run's error for M < 0
  if (m > kGemvMaxM) {
    if (scratch == nullptr || !Aligned(scratch, 16)) {
      return Invalid(name_, absl::StrFormat("RunGeluGate: M=%d needs a 16-byte aligned scratch "
                                            "[M, N], but got %p",
                                            m, scratch));
    }
    GQ_RETURN_IF_ERROR(Run(x, m, scratch, context, stream));
    // scratch rows are runs of [8 gate | 8 up]: m N / 16 rows of 8 products.
    return Annotate(
        GeluTanhMul(scratch, 2 * kGatePairHalf, scratch + kGatePairHalf, 2 * kGatePairHalf,
                    m * n_ / (2 * kGatePairHalf), kGatePairHalf, y, stream),
        Describe(), absl::StrFormat(", gated product at M=%d", m));
  }
  if (x == nullptr || y == nullptr || !Aligned(x, 16) || !Aligned(y, 2)) {
    return Invalid(name_, absl::StrFormat("RunGeluGate: expected x 16-byte aligned and y non-null, "
                                          "but got x %p, y %p",
                                          x, y));
  }
  return Annotate(Int4MmaGemvGeluPairs(int4_, x, static_cast<int>(m), y, stream), Describe(),
                  absl::StrFormat(", gated product at M=%d", m));
}

absl::Status DeviceLinear::RunAfterAddNorm(const ResidualAddNorm& row, __nv_bfloat16* y,
                                           cudaStream_t stream,
                                           const __nv_bfloat16* gelu_times) const {
  GQ_RETURN_IF_ERROR(CheckNotEmpty("RunAfterAddNorm"));
  if (!fuses_add_norm() || y == nullptr || !Aligned(y, 2)) {
    return Invalid(name_, absl::StrFormat("RunAfterAddNorm: expected the int4 form and an aligned "
                                          "y, but got %s and y %p",
                                          LinearFormName(form_), y));
  }
  return Annotate(Int4MmaGemvAfterAddNorm(
                      int4_, row, {.gelu_pairs = gate_pairs_, .gelu_times = gelu_times}, y, stream),
                  Describe(),
                  gate_pairs_ || gelu_times != nullptr
                      ? ", gated product after the residual add and norms"
                      : ", after the residual add and norms");
}

absl::Status DeviceLinear::Gather(const int32_t* ids, int count, float multiplier,
                                  __nv_bfloat16* out, cudaStream_t stream) const {
  GQ_RETURN_IF_ERROR(CheckNotEmpty("Gather"));
  const absl::Status status = [&]() -> absl::Status {
    switch (form_) {
      case LinearForm::kInt4:
        return GatherInt4MmaRows(int4_, ids, count, multiplier, out, stream);
      case LinearForm::kInt8:
        return GatherInt8Rows(int8_, ids, count, multiplier, out, stream);
      case LinearForm::kBf16:
        return GatherBf16Rows(bf16_.data(), n_, k_, ids, count, multiplier, out, stream);
    }
    return absl::InternalError("unknown form");
  }();
  return Annotate(status, Describe(), ", Gather");
}

std::string DeviceLinear::Describe() const {
  return absl::StrFormat("linear '%s' (%s [%d, %d])", name_, LinearFormName(form_), n_, k_);
}

}  // namespace gquant::cuda
