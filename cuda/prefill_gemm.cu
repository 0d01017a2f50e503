// Defaults of WeightOnlyGemmOptions, reasoned before measuring, for an H100
// (132 SMs, ~3 TB/s, ~650 TFLOPS bf16 dense in practice) at M = 2048:
//   - dequantizing moves 2.625 bytes per weight at group 32 (0.5 of codes,
//     0.125 of params, 2 of bf16), ~0.9 ps at 3 TB/s, against 2 M = 4096
//     flops per weight of GEMM, ~6.2 ps: ~14% of the GEMM if run alone;
//   - split: beside a GEMM on 124 SMs, a chunk's dequantization on d = 8
//     SMs must move 2.625 B x chunk weights in the chunk's GEMM time, ~50
//     GB/s per SM, about half of what one SM can store (~64 B/clock) and
//     within what 32 warps x 2 KiB of loads in flight sustain; the GEMM loses
//     8/132 = 6% of its SMs instead of waiting ~14% for dequantization;
//   - a chunk of ~4 Mi outputs (2048 rows at M = 2048) is about one wave of
//     128 x 256 output tiles, so each GEMM still fills the GPU, and the first
//     chunk's exposed dequantization (on the whole GPU) is 2048 / N of the
//     whole: ~3.5% of the GEMM for q_sliding (N = 8192), ~1.3% for gate_up;
//   - 2 buffers: one chunk of lookahead is all the split can use.
// prefill_gemm_bench.cc measures each choice against its alternatives.
#include <cublas_v2.h>

#include <algorithm>
#include <climits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "cublas_status.cuh"
#include "cuda_status.cuh"
#include "device_buffer.cuh"
#include "gquant/status.h"
#include "int4_dequantize.cuh"
#include "prefill_gemm.cuh"

namespace gquant::cuda {
namespace {

// cuBLAS's recommended workspace on Hopper. Owning it (instead of cuBLAS's
// implicit pool) keeps allocations out of Run, which graph capture needs.
constexpr size_t kCublasWorkspaceBytes = size_t{32} << 20;
constexpr int kMaxBuffers = 8;
constexpr int64_t kRowAlign = 16;  // dequantizers work in 16-row blocks

int64_t RoundUp(int64_t value, int64_t multiple) {
  return (value + multiple - 1) / multiple * multiple;
}

absl::Status CheckOptions(const WeightOnlyGemmOptions& o) {
  if (o.max_chunk_elements <= 0 || o.buffers < 1 || o.buffers > kMaxBuffers || o.chunk_rows < 0 ||
      o.chunk_rows % kRowAlign != 0 || o.first_chunk_rows < 0 ||
      o.first_chunk_rows % kRowAlign != 0 || o.dequantize_multiprocessors < kPrefillAutoSplit) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "WeightOnlyGemmOptions: expected max_chunk_elements > 0, buffers in 1..%d, chunk_rows and "
        "first_chunk_rows non-negative multiples of 16, and dequantize_multiprocessors >= -1, but "
        "got %d, %d, %d, %d and %d",
        kMaxBuffers, o.max_chunk_elements, o.buffers, o.chunk_rows, o.first_chunk_rows,
        o.dequantize_multiprocessors));
  }
  return absl::OkStatus();
}

// Auto split: below kSplitMinM the GEMM is memory bound and the SMs are not
// worth splitting; at kSplitReferenceM, kSplitReferenceSms dequantize.
constexpr int64_t kSplitMinM = 256;
constexpr int64_t kSplitReferenceM = 2048;
constexpr int64_t kSplitReferenceSms = 8;

}  // namespace

int PrefillDequantizeMultiprocessors(const WeightOnlyGemmOptions& options, int64_t m,
                                     int multiprocessors) {
  if (options.dequantize_multiprocessors != kPrefillAutoSplit) {
    return options.dequantize_multiprocessors;
  }
  if (m < kSplitMinM) return 0;
  const int64_t d = (kSplitReferenceSms * kSplitReferenceM + m - 1) / m;
  return static_cast<int>(std::clamp<int64_t>(d, 2, std::max(multiprocessors / 4, 2)));
}

absl::StatusOr<std::vector<int64_t>> PrefillChunkRows(const WeightOnlyGemmOptions& options,
                                                      int64_t n, int64_t k, int64_t m) {
  GQ_RETURN_IF_ERROR(CheckOptions(options));
  if (n <= 0 || k <= 0 || m <= 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight-only GEMM: expected positive N, K and M, but got N=%d K=%d M=%d", n, k, m));
  }
  const int64_t cap = options.max_chunk_elements / k / kRowAlign * kRowAlign;
  if (cap < kRowAlign) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight-only GEMM: K=%d needs %d scratch elements for 16 rows, but max_chunk_elements is "
        "%d",
        k, kRowAlign * k, options.max_chunk_elements));
  }
  const int64_t rows = options.chunk_rows > 0 ? std::min(options.chunk_rows, cap) : cap;
  const int64_t first =
      std::min({options.first_chunk_rows > 0 ? options.first_chunk_rows : rows, rows, n});
  std::vector<int64_t> chunks = {first};
  int64_t remaining = n - first;
  if (remaining > 0) {
    // Equal chunks rather than full ones and a small tail: the same GEMM
    // shape each time, no short last GEMM.
    const int64_t count = (remaining + rows - 1) / rows;
    const int64_t each = RoundUp((remaining + count - 1) / count, kRowAlign);  // <= rows
    for (; remaining > 0; remaining -= chunks.back()) {
      chunks.push_back(std::min(each, remaining));
    }
  }
  return chunks;
}

struct WeightOnlyGemm::Resources {
  WeightOnlyGemmOptions options;
  int multiprocessors = 0;  // of the device
  cublasHandle_t handle = nullptr;
  cudaStream_t side = nullptr;     // dequantizes
  cudaEvent_t entry = nullptr;     // the caller's stream at Run's entry
  size_t next_buffer = 0;          // of the next Run's first chunk
  std::vector<cudaEvent_t> ready;  // per buffer: its chunk is dequantized
  std::vector<cudaEvent_t> freed;  // per buffer: the last GEMM reading it is done
  DeviceBuffer<uint8_t> workspace;
  std::vector<DeviceBuffer<__nv_bfloat16>> scratch;

  ~Resources() {
    // The buffers are freed after this body: wait for the work using them.
    for (cudaEvent_t e : freed) cudaEventSynchronize(e);
    if (side != nullptr) cudaStreamSynchronize(side);
    for (cudaEvent_t e : ready) cudaEventDestroy(e);
    for (cudaEvent_t e : freed) cudaEventDestroy(e);
    if (entry != nullptr) cudaEventDestroy(entry);
    if (side != nullptr) cudaStreamDestroy(side);
    if (handle != nullptr) cublasDestroy(handle);
  }
};

WeightOnlyGemm::WeightOnlyGemm(std::unique_ptr<Resources> resources)
    : resources_(std::move(resources)) {}
WeightOnlyGemm::WeightOnlyGemm(WeightOnlyGemm&&) noexcept = default;
WeightOnlyGemm& WeightOnlyGemm::operator=(WeightOnlyGemm&&) noexcept = default;
WeightOnlyGemm::~WeightOnlyGemm() = default;

const WeightOnlyGemmOptions& WeightOnlyGemm::options() const { return resources_->options; }
int WeightOnlyGemm::multiprocessors() const { return resources_->multiprocessors; }

absl::StatusOr<WeightOnlyGemm> WeightOnlyGemm::Create(const WeightOnlyGemmOptions& options) {
  GQ_RETURN_IF_ERROR(CheckOptions(options));
  auto r = std::make_unique<Resources>();
  r->options = options;
  int device = 0;
  GQ_RETURN_IF_CUDA_ERROR(cudaGetDevice(&device));
  GQ_RETURN_IF_CUDA_ERROR(
      cudaDeviceGetAttribute(&r->multiprocessors, cudaDevAttrMultiProcessorCount, device));
  if (options.dequantize_multiprocessors >= r->multiprocessors) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "WeightOnlyGemmOptions: dequantize_multiprocessors %d leaves no SM of %d to the GEMM",
        options.dequantize_multiprocessors, r->multiprocessors));
  }
  GQ_RETURN_IF_CUBLAS_ERROR(cublasCreate(&r->handle));
  // Split-K reductions in fp32, not bf16: the error bound stays fp32
  // accumulation plus one bf16 rounding of the output.
  GQ_RETURN_IF_CUBLAS_ERROR(cublasSetMathMode(
      r->handle, static_cast<cublasMath_t>(CUBLAS_DEFAULT_MATH |
                                           CUBLAS_MATH_DISALLOW_REDUCED_PRECISION_REDUCTION)));
  int least_priority = 0, greatest_priority = 0;
  GQ_RETURN_IF_CUDA_ERROR(cudaDeviceGetStreamPriorityRange(&least_priority, &greatest_priority));
  // Non-blocking: no implicit synchronization with a caller on the legacy
  // default stream, which would serialize the two streams.
  GQ_RETURN_IF_CUDA_ERROR(cudaStreamCreateWithPriority(
      &r->side, cudaStreamNonBlocking,
      options.dequantize_high_priority ? greatest_priority : least_priority));
  GQ_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&r->entry, cudaEventDisableTiming));
  for (int b = 0; b < options.buffers; ++b) {
    for (std::vector<cudaEvent_t>* events : {&r->ready, &r->freed}) {
      cudaEvent_t e = nullptr;
      GQ_RETURN_IF_CUDA_ERROR(cudaEventCreateWithFlags(&e, cudaEventDisableTiming));
      events->push_back(e);
    }
  }
  GQ_ASSIGN_OR_RETURN(r->workspace, DeviceBuffer<uint8_t>::Allocate(kCublasWorkspaceBytes));
  for (int b = 0; b < options.buffers; ++b) {
    GQ_ASSIGN_OR_RETURN(auto buffer,
                        DeviceBuffer<__nv_bfloat16>::Allocate(options.max_chunk_elements));
    r->scratch.push_back(std::move(buffer));
  }
  return WeightOnlyGemm(std::move(r));
}

absl::Status WeightOnlyGemm::Run(RowDequantizer dequantize, int64_t n, int64_t k,
                                 const __nv_bfloat16* x, int64_t m, __nv_bfloat16* y,
                                 cudaStream_t stream) {
  Resources& r = *resources_;
  if (x == nullptr || y == nullptr || n > INT_MAX || k > INT_MAX || m > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "weight-only GEMM: expected non-null x and y and N, K, M within int, but got x %p, y %p, "
        "N=%d K=%d M=%d",
        x, y, n, k, m));
  }
  GQ_ASSIGN_OR_RETURN(const std::vector<int64_t> chunks, PrefillChunkRows(r.options, n, k, m));

  if (!r.options.dequantize_ahead) {
    GQ_RETURN_IF_CUDA_ERROR(cudaEventRecord(r.entry, stream));
    GQ_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(r.side, r.entry, 0));
  }
  // cublasSetStream resets the workspace to cuBLAS's pool: set it after.
  GQ_RETURN_IF_CUBLAS_ERROR(cublasSetStream(r.handle, stream));
  GQ_RETURN_IF_CUBLAS_ERROR(cublasSetWorkspace(r.handle, r.workspace.data(), r.workspace.size()));

  const int split = PrefillDequantizeMultiprocessors(r.options, m, r.multiprocessors);
  int sm_target = -1;  // the handle's, set before a GEMM that needs another
  const float alpha = 1, beta = 0;
  int64_t row = 0;
  for (size_t i = 0; i < chunks.size(); ++i) {
    const int64_t rows = chunks[i];
    const bool first = i == 0, last = i + 1 == chunks.size();
    const size_t b = (r.next_buffer + i) % r.scratch.size();
    __nv_bfloat16* w = r.scratch[b].data();
    GQ_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(r.side, r.freed[b], 0));
    // The first chunk's dequantization runs alone: the whole GPU. The others
    // run beside a GEMM: d SMs.
    if (absl::Status s = dequantize(row, rows, w, r.side, first ? 0 : split); !s.ok()) {
      return Annotate(s, absl::StrFormat("weight-only GEMM dequantizing rows [%d, %d) of N=%d", row,
                                         row + rows, n));
    }
    GQ_RETURN_IF_CUDA_ERROR(cudaEventRecord(r.ready[b], r.side));
    GQ_RETURN_IF_CUDA_ERROR(cudaStreamWaitEvent(stream, r.ready[b], 0));
    // A GEMM with a next chunk leaves d SMs to its dequantization; the last
    // one has the GPU (0 restores cuBLAS's default, all SMs).
    const int target = split > 0 && !last ? r.multiprocessors - split : 0;
    if (target != sm_target) {
      GQ_RETURN_IF_CUBLAS_ERROR(cublasSetSmCountTarget(r.handle, target));
      sm_target = target;
    }
    // Column-major view (see bench::CublasBf16Gemm): y's columns row..row +
    // rows are C [rows, M] with ldc N; the chunk is A = Wᵀ (K x rows, lda K);
    // x is B (K x M, ldb K).
    GQ_RETURN_IF_ERROR(CublasStatus(
        cublasGemmEx(r.handle, CUBLAS_OP_T, CUBLAS_OP_N, static_cast<int>(rows),
                     static_cast<int>(m), static_cast<int>(k), &alpha, w, CUDA_R_16BF,
                     static_cast<int>(k), x, CUDA_R_16BF, static_cast<int>(k), &beta, y + row,
                     CUDA_R_16BF, static_cast<int>(n), CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
        absl::StrFormat("cublasGemmEx for rows [%d, %d) of N=%d, M=%d, K=%d", row, row + rows, n, m,
                        k)));
    GQ_RETURN_IF_CUDA_ERROR(cudaEventRecord(r.freed[b], stream));
    row += rows;
  }
  r.next_buffer = (r.next_buffer + chunks.size()) % r.scratch.size();
  return absl::OkStatus();
}

absl::Status WeightOnlyGemm::Run(const Int4MmaWeight& weight, const __nv_bfloat16* x, int64_t m,
                                 __nv_bfloat16* y, cudaStream_t stream) {
  GQ_RETURN_IF_ERROR(CheckInt4MmaShape(weight.n, weight.k, weight.group_size));
  return Run(
      [&](int64_t row_begin, int64_t rows, __nv_bfloat16* out, cudaStream_t s,
          int multiprocessors) {
        return DequantizeInt4Mma(weight, row_begin, rows, out, s, multiprocessors);
      },
      weight.n, weight.k, x, m, y, stream);
}

}  // namespace gquant::cuda
