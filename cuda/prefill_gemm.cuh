// Weight-only quantized GEMM for prefill (large M): y[M, N] = x[M, K] · Wᵀ
// with bf16 activations and output and fp32 accumulation, W dequantized to
// bf16 chunk by chunk into scratch and multiplied by cuBLAS.
//
// Why this form: at M in the thousands the GEMM is compute bound, and cuBLAS
// bf16 is near the tensor cores' peak. Dequantizing the whole weight first
// would add its memory-bound pass (~10-15% at M = 2048) to the critical path;
// instead the weight is cut into chunks of rows, a side stream dequantizes
// chunk i + 1 into one scratch buffer while the caller's stream multiplies
// chunk i from another, and the first chunk of the next weight is
// dequantized while the caller's stream still runs the work before it
// (dequantize_ahead).
//
// Sharing the GPU: cuBLAS's Hopper kernels are persistent (one CTA per SM,
// each holding a whole SM's registers), so a dequantization launched beside
// one cannot interleave with it: it would either wait for the GEMM to end or
// take SMs the GEMM's grid counts on, delaying the whole GEMM by its length.
// So the GPU is split: while a GEMM that has a next chunk runs, it targets
// all but d SMs (cublasSetSmCountTarget) and the next chunk's dequantization
// runs on d SMs (dequantizers take `multiprocessors` = d and launch blocks
// that fill an SM each). The first chunk's dequantization, which nothing
// overlaps, and the last GEMM use the whole GPU.
//
// Stream ordering (events, no host synchronization):
//   - entry (only with dequantize_ahead off): the side stream waits for the
//     caller's stream, so anything the caller queued before is done;
//   - buffer b: the side stream waits until the last GEMM that read b is
//     done (event freed[b], also across Run calls and caller streams) before
//     dequantizing into it, and the GEMM waits for that dequantization
//     (event ready[b]). The buffers rotate across Run calls, so with
//     dequantize_ahead a Run's first chunk goes to the buffer the previous
//     Run's last GEMM is not reading and is dequantized while the caller's
//     stream still runs that GEMM or whatever it queued after it;
//   - exit: every GEMM runs on the caller's stream after its chunk's
//     dequantization, so y is complete when the caller's stream reaches the
//     end of Run's work.
// One object serves one Run at a time from one host thread (it owns one
// cuBLAS handle and one set of buffers); use one object per concurrent user.
#ifndef GQUANT_CUDA_PREFILL_GEMM_CUH_
#define GQUANT_CUDA_PREFILL_GEMM_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "int4_mma_gemv.cuh"  // Int4MmaWeight

namespace gquant::cuda {

// Writes rows [row_begin, row_begin + rows) of W as bf16 [rows, K] row-major
// into `out`, queued on `stream`, using at most `multiprocessors` SMs (0: the
// whole GPU). row_begin is a multiple of 16, and so is rows except for the
// last chunk of an N that is not. DequantizeInt4Mma fits it through a lambda;
// a dequantizer without an SM cap still works, but may then take SMs from a
// GEMM launched at the same moment.
using RowDequantizer = absl::FunctionRef<absl::Status(
    int64_t row_begin, int64_t rows, __nv_bfloat16* out, cudaStream_t stream, int multiprocessors)>;

inline constexpr int kPrefillAutoSplit = -1;

// Defaults reasoned for an H100 at M = 2048 (see prefill_gemm.cu); the
// benchmark (prefill_gemm_bench.cc) measures the alternatives.
struct WeightOnlyGemmOptions {
  // bf16 elements per scratch buffer: caps the chunk at this / K rows.
  // 64 Mi elements = 128 MiB, 2048 rows of the widest K (21504) fit.
  int64_t max_chunk_elements = int64_t{64} << 20;
  // Scratch buffers the chunks rotate through: 2 overlaps one dequantization
  // with one GEMM; 1 serializes them.
  int buffers = 2;
  // Rows per chunk, a multiple of 16; 0 = as many as a scratch buffer holds.
  // Measured on an H100 at M = 2048 (bench/RESULTS.md): dequantizing the
  // whole weight and running one GEMM (0.76-0.78x cuBLAS bf16) beat
  // 2048-row chunks overlapped on two streams (0.75x): cuBLAS keeps every SM
  // busy, so the overlap buys nothing and the smaller GEMMs cost efficiency.
  int64_t chunk_rows = 0;
  // Rows of the first chunk (its dequantization is not hidden), a multiple
  // of 16; 0 = as the others.
  int64_t first_chunk_rows = 0;
  // d, the SMs that dequantize beside a GEMM: kPrefillAutoSplit = by M
  // (PrefillDequantizeMultiprocessors), 0 = no split (both kernels may use
  // every SM), else d itself (less than the device's SM count). Measured:
  // splits of 4, 8 and 16 SMs lost 3-45% against no split, so 0 is the default.
  int dequantize_multiprocessors = 0;
  // Whether the side stream has the device's highest priority (matters
  // without a split: the next chunk's blocks then take SMs as soon as the
  // GEMM frees them; the GEMM waits for them anyway).
  bool dequantize_high_priority = true;
  // Whether the side stream may dequantize a weight before the caller's
  // stream reaches Run (it then waits only for its scratch buffers). Needs
  // the weights complete on the device before Run is called, as the packers
  // leave them (synchronous uploads); a dequantizer that reads data the
  // caller's stream produces needs false. Measured on an H100 (2K prompts,
  // bench/RESULTS.md): the first chunk's dequantization, exposed without
  // it, then overlaps the GEMM and norms before it: E2B +10%, 31B +1.3%.
  bool dequantize_ahead = true;
};

// The split's d at M rows of x on a device with `multiprocessors` SMs:
// options.dequantize_multiprocessors, or with kPrefillAutoSplit, none below
// M = 256 (memory-bound GEMMs, which the SMs cannot share usefully), else
// ceil(8 * 2048 / M) clamped to [2, multiprocessors / 4]: a chunk's
// dequantization moves 2.6 bytes per weight against 2 M flops of GEMM, so
// the SMs it needs to keep pace scale as 1 / M; 8 of 132 at M = 2048 leaves
// a 2x margin (see prefill_gemm.cu). Host only.
int PrefillDequantizeMultiprocessors(const WeightOnlyGemmOptions& options, int64_t m,
                                     int multiprocessors);

// The rows of each chunk Run cuts an [n, k] weight into at m rows of x: the
// first chunk, then equal multiples of 16 (the last takes the remainder).
// InvalidArgument if K is so large that 16 rows do not fit a scratch buffer,
// or for a bad shape or option. Host only; exposed for tests and benchmarks.
absl::StatusOr<std::vector<int64_t>> PrefillChunkRows(const WeightOnlyGemmOptions& options,
                                                      int64_t n, int64_t k, int64_t m);

class WeightOnlyGemm {
 public:
  // Creates the cuBLAS handle (with its own workspace, so Run can be
  // captured in a CUDA graph), the side stream, the events and the scratch
  // buffers on the current device, where Run must then be called.
  // InvalidArgument for a bad option (a split of all the device's SMs
  // included); Internal for a CUDA or cuBLAS error.
  static absl::StatusOr<WeightOnlyGemm> Create(const WeightOnlyGemmOptions& options = {});

  WeightOnlyGemm(WeightOnlyGemm&&) noexcept;
  WeightOnlyGemm& operator=(WeightOnlyGemm&&) noexcept;
  ~WeightOnlyGemm();  // waits for the work that uses its buffers

  // y[M, N] = x[M, K] · Wᵀ, W [N, K] given by `dequantize`; x [m, k] and y
  // [m, n] row-major bf16 on the device, queued on `stream` (see the stream
  // ordering above). InvalidArgument for a bad shape or pointer; the
  // dequantizer's status if it fails; Internal for a CUDA or cuBLAS error.
  absl::Status Run(RowDequantizer dequantize, int64_t n, int64_t k, const __nv_bfloat16* x,
                   int64_t m, __nv_bfloat16* y, cudaStream_t stream);

  // The same with an int4 weight (cuda_int4_mma16) and DequantizeInt4Mma.
  absl::Status Run(const Int4MmaWeight& weight, const __nv_bfloat16* x, int64_t m, __nv_bfloat16* y,
                   cudaStream_t stream);

  const WeightOnlyGemmOptions& options() const;
  int multiprocessors() const;  // the device's SM count

 private:
  struct Resources;
  explicit WeightOnlyGemm(std::unique_ptr<Resources> resources);
  std::unique_ptr<Resources> resources_;
};

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_PREFILL_GEMM_CUH_
