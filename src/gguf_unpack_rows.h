// Row decoders of gguf_unpack.h's table, shared by UnpackGgufWeight (whole
// weights into the file layout) and pack.cc's GGUF packers (rows straight into
// a packed layout, skipping the file layout). Not installed.
#ifndef GQUANT_SRC_GGUF_UNPACK_ROWS_H_
#define GQUANT_SRC_GGUF_UNPACK_ROWS_H_

#include <cstddef>
#include <cstdint>

#include "gquant/ggml_format.h"

namespace gquant {

// One row in gquant's unpacked form: codes [K], scale and zero (or min) [K / group].
struct GgufRowOut {
  int8_t* codes;
  float* scale;
  float* zero;
};

// Decodes the blocks of one row of `n` elements (a multiple of the block size)
// into the codes and parameters of gguf_unpack.h's table.
using GgufRowUnpackFn = void (*)(const std::byte* src, int64_t n, const GgufRowOut& out);

// The row decoder of `type`, or nullptr for a type gguf_unpack.h does not unpack.
GgufRowUnpackFn FindGgufRowUnpacker(GgmlType type);

}  // namespace gquant

#endif  // GQUANT_SRC_GGUF_UNPACK_ROWS_H_
