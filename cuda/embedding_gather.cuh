// Embedding lookup from an int8 table in the "cuda_int8_rows" layout
// (int8_layout.h; Gemma's embedding is per-row, group size K):
//   out[t, :] = bf16(dequant(row ids[t]) * multiplier), t < count,
// where dequant(row) is float32 (c - zero) * scale, or c * scale - min in
// the min form, each operation rounded on its own as in DequantizeInt8Rows,
// then one rounded float32 multiply and round-to-nearest-even to bf16, so a
// host computation reproduces it bit for bit. Gemma scales its embeddings by
// sqrt(hidden): that is `multiplier`.
//
// The ids live on the device (they come from the sampler), so a bad id
// cannot be reported synchronously: an id outside [0, N) gives a row of
// NaNs (bf16 0x7FC0), which poisons every logit downstream and is therefore
// seen at once, rather than silently reading another row or out of bounds.
//
// Memory bound and usually tiny (one row per decode step): one thread per
// 16-byte run of codes, 4 runs per thread loaded before any is stored.
// GatherInt4MmaRows and GatherBf16Rows below keep the same contract for int4
// (cuda_int4_mma16) and plain bf16 tables.
#ifndef GQUANT_CUDA_EMBEDDING_GATHER_CUH_
#define GQUANT_CUDA_EMBEDDING_GATHER_CUH_

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <cstdint>

#include "absl/status/status.h"
#include "int4_mma_gemv.cuh"  // Int4MmaWeight
#include "int8_gemv.cuh"      // Int8RowsWeight

namespace gquant::cuda {

// out ([count, K] bf16, 16-byte aligned) from the rows `ids` (count int32 on
// the device) of `table`, on `stream`; count = 0 does nothing.
// InvalidArgument for a bad shape, count or pointer; Internal for a CUDA
// error. Ids are not checked on the host (see above).
absl::Status GatherInt8Rows(const Int8RowsWeight& table, const int32_t* ids, int count,
                            float multiplier, __nv_bfloat16* out, cudaStream_t stream);

// The same contract for a plain bf16 table [rows, dim] (the unquantized
// embedding, or the per-layer-embedding table):
//   out[t, :] = bf16(float32(table[ids[t], :]) * multiplier),
// one rounded float32 multiply and round-to-nearest-even, so with a bf16
// multiplier (HF's bf16(sqrt(H)), spec gemma4.md §2.2) it equals HF's bf16
// product. Ids outside [0, rows) give NaN rows. Any dim > 0 (16-byte accesses
// when dim % 8 == 0 and table and out are 16-byte aligned); launched with
// programmatic dependent launch (the ids usually come from the previous
// kernel). InvalidArgument for a bad shape, count or pointer; Internal for a
// CUDA error.
absl::Status GatherBf16Rows(const __nv_bfloat16* table, int64_t rows, int64_t dim,
                            const int32_t* ids, int count, float multiplier, __nv_bfloat16* out,
                            cudaStream_t stream);

// The same contract for an int4 table [N, K] in the "cuda_int4_mma16" layout
// (int4_mma_layout.h; N % 16 == 0, K % 64 == 0, group size 32 or a multiple
// of 64): with q the code (0..15) of element (r, c) and scale, zero (min in
// the min form) the two bf16 halves of its params word, as floats,
//   w = __fmul_rn(__fsub_rn(q, zero), scale)    or
//   w = __fsub_rn(__fmul_rn(q, scale), min)     (min form),
//   out[t, c] = bf16_rn(__fmul_rn(w, multiplier)),
// each float32 operation rounded on its own. w is DequantizeInt4Mma's value
// before its bf16 rounding (int4_dequantize.cuh), so with multiplier 1 (or a
// power of two, barring overflow and underflow) the rows equal its output bit for bit.
// Row r is row r % 16 of the tiles of row block r / 16; each thread takes one
// lane's 16 bytes of one tile (two runs of 8 columns of the row). Ids outside
// [0, N) give NaN rows. Pointers: qweight and out 16-byte aligned, params
// 4-byte, ids 4-byte. Launched with programmatic dependent launch (the ids
// usually come from the previous kernel). InvalidArgument for a bad shape,
// count or pointer; Internal for a CUDA error.
absl::Status GatherInt4MmaRows(const Int4MmaWeight& table, const int32_t* ids, int count,
                               float multiplier, __nv_bfloat16* out, cudaStream_t stream);

}  // namespace gquant::cuda

#endif  // GQUANT_CUDA_EMBEDDING_GATHER_CUH_
