// The packer registry: (source format, backend) -> the packer that turns one
// quantized matrix into the bytes that backend's kernels read. One constexpr
// table in src/pack.cc (STYLE.md "REGISTRY"); each layout's bytes are defined
// by the header beside the kernel that reads them.
//
// Sources. gquant's unpacked form (quantized_checkpoint.h: UnpackedMatrix),
// from a quantized checkpoint or any quantizer, or GGUF blocks read directly:
//   int4       Int4: codes 0..15, zero point (sym or asym), any group size
//   intx       Intx: signed codes, 5/6/8 bits (torchao files: 1..8)
//   min4       min form, 4 bits (what GGUF Q4_K / Q4_1 unpack into)
//   minx       min form, 5 or 6 bits (Q5_K / Q5_1)
//   gguf_q8_0  Q8_0 blocks: codes copied, scale d                 (exact)
//   gguf_q6_K  Q6_K blocks: codes q - 32, scale d * sc (float32)  (exact)
//   gguf_q4_K  Q4_K blocks: codes q, scale d * sc, min dmin * m
// GGUF types without a direct source (Q4_0, Q5_0, Q4_1, Q5_1, Q5_K) go through
// UnpackGgufWeight to the gquant form first (PackGgufTensor does this).
//
// Layouts (one packed matrix; G = K / group size):
//   cpu_unpacked     parts "codes" int8 [N, K], "scale" f32 [N, G], "zero"
//                    f32 [N, G] (zero point, or min in the min form): the
//                    unpacked form itself, for the CPU forward. Every source.
//   cuda_int4_mma16  parts "qweight" and "params" (cuda/int4_mma_layout.h:
//                    16x64 tiles, bf16x2 (scale, zero or min) words). Sources
//                    int4, min4, gguf_q4_K. Needs N % 16 == 0, K % 64 == 0 and
//                    a group size of 32 or a multiple of 64.
//   cuda_int8_rows   parts "codes" int8 [N, K] and "params" f32 [N][G][2]
//                    (cuda/int8_layout.h). Sources intx, minx, gguf_q8_0,
//                    gguf_q6_K. Needs K % 16 == 0 and a group size that is a
//                    multiple of 16.
// Exactness: int8 rows and cpu keep every value. int4 mma rounds scales and
// zeros (mins) to bf16 (8 significant bits): exact for gquant's quantizers
// (bf16 by construction) but not for Q4_K, whose d * sc and dmin * m have up
// to 17. There |w_packed - w_ggml| <= 2^-8 (q |d sc| + |dmin m|) per weight,
// the same relative size as the bf16 rounding of the activations that the
// tensor-core kernel applies to every product anyway; for a typical block
// (dmin m ~ 8 d sc) at most 0.09 d sc, a fifth of Q4_K's own rounding step.
// Q4_K therefore keeps the 4-bit layout (half of int8 rows' bytes; decode is
// bandwidth-bound). PackedMatrix::exact says whether any value rounded.
//
// 3-D expert weights [E, N, K] pack per expert: one PackedMatrix each.
#ifndef GQUANT_PACK_H_
#define GQUANT_PACK_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/ggml_format.h"
#include "gquant/quantized_checkpoint.h"

namespace gquant {

class GgufFile;

enum class PackBackend : uint8_t {
  kCpu,   // "cpu": the unpacked form, read by the CPU forward
  kCuda,  // "cuda": the CUDA kernels' layouts
};
// "cpu" / "cuda", and back (InvalidArgument for another name).
std::string_view PackBackendName(PackBackend backend);
absl::StatusOr<PackBackend> PackBackendFromName(std::string_view name);

// What a packer reads; the names are those of the table above.
enum class PackSource : uint8_t {
  kInt4,
  kIntx,
  kMin4,
  kMinx,
  kGgufQ8_0,
  kGgufQ6_K,
  kGgufQ4_K,
};
std::string_view PackSourceName(PackSource source);
// Whether the source is GGUF blocks (Packer::pack_gguf) rather than the
// unpacked form (Packer::pack_unpacked).
bool IsGgufPackSource(PackSource source);
// The source of a matrix in the unpacked form: its kind and bits.
// InvalidArgument for a plain kind or bits the kind cannot have.
absl::StatusOr<PackSource> PackSourceOf(const QuantizedMatrixInfo& info);
// The direct source for blocks of ggml `type`; Unimplemented for a type that
// is not read directly (unpack it with UnpackGgufWeight instead).
absl::StatusOr<PackSource> GgufPackSourceOf(GgmlType type);

inline constexpr std::string_view kCpuUnpackedLayout = "cpu_unpacked";
inline constexpr std::string_view kCudaInt4Mma16Layout = "cuda_int4_mma16";
inline constexpr std::string_view kCudaInt8RowsLayout = "cuda_int8_rows";

// One matrix packed into a layout: its byte buffers by part name.
struct PackedMatrix {
  std::string_view layout;   // one of the k*Layout names above
  QuantizedMatrixInfo info;  // the source matrix: kind (zero form), bits, shape, group size
  bool exact = true;         // every code and parameter equals the source's value
  std::map<std::string, std::vector<std::byte>, std::less<>> parts;

  // The bytes of part `name`; NotFound (naming the layout) if it has none.
  absl::StatusOr<std::span<const std::byte>> Part(std::string_view name) const;
  int64_t num_bytes() const;  // all parts
};

// A cpu_unpacked matrix seen as the unpacked form (no copy; valid while
// `packed` lives). InvalidArgument for another layout or mis-sized parts.
absl::StatusOr<UnpackedMatrixView> CpuUnpackedView(const PackedMatrix& packed);

// Packs one matrix in the unpacked form. Checks the input (sizes, and that its
// kind matches the entry's source) and returns InvalidArgument otherwise.
using PackUnpackedFn = absl::StatusOr<PackedMatrix> (*)(const UnpackedMatrixView& matrix);
// Packs one [rows, cols] matrix of GGUF blocks (row-major, rows * cols /
// block elements blocks). InvalidArgument for a wrong byte count.
using PackGgufFn = absl::StatusOr<PackedMatrix> (*)(std::span<const std::byte> blocks, int64_t rows,
                                                    int64_t cols);

struct Packer {
  PackSource source;
  PackBackend backend;
  std::string_view layout;       // what the packer produces
  PackUnpackedFn pack_unpacked;  // gquant sources; nullptr for GGUF ones
  PackGgufFn pack_gguf;          // GGUF sources; nullptr for gquant ones
};

// Every table entry, in table order.
std::span<const Packer> Packers();
// The entry for (source, backend); Unimplemented naming both if there is none.
absl::StatusOr<const Packer*> FindPacker(PackSource source, PackBackend backend);

// Checked entry points. `name` only labels messages ("<name> (<source> ->
// <backend>): ..."). InvalidArgument for a bad matrix or a shape the layout
// cannot take; Unimplemented for a pair without a packer.
absl::StatusOr<PackedMatrix> PackMatrix(const UnpackedMatrixView& matrix, PackBackend backend,
                                        std::string_view name = "matrix");
absl::StatusOr<PackedMatrix> PackGgufMatrix(GgmlType type, std::span<const std::byte> blocks,
                                            int64_t rows, int64_t cols, PackBackend backend,
                                            std::string_view name = "matrix");

// Every matrix of quantized weight `fqn` (E for [E, N, K], else one), packed
// for `backend`. NotFound for an unknown FQN, InvalidArgument for a plain
// weight; otherwise the errors above, naming the weight and expert.
absl::StatusOr<std::vector<PackedMatrix>> PackWeight(const QuantizedCheckpoint& checkpoint,
                                                     std::string_view fqn, PackBackend backend);

// Every matrix of GGUF tensor `name` ([N, K] or [E, N, K] in torch order),
// packed for `backend`: directly from the blocks for Q8_0 / Q6_K / Q4_K,
// through UnpackGgufWeight for the other unpackable types. NotFound for an
// unknown tensor; Unimplemented for a type with neither path (F32, F16, BF16
// included: they are not quantized); InvalidArgument for another rank or a
// shape the layout cannot take.
absl::StatusOr<std::vector<PackedMatrix>> PackGgufTensor(const GgufFile& file,
                                                         std::string_view name,
                                                         PackBackend backend);

}  // namespace gquant

#endif  // GQUANT_PACK_H_
