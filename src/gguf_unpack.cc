#include "gquant/gguf_unpack.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "gguf_unpack_rows.h"
#include "gquant/dtype.h"
#include "gquant/ggml_blocks.h"
#include "gquant/status.h"
#include "gquant/tensor.h"
#include "gquant/thread_pool.h"

namespace gquant {
namespace {

// The row decoders (GgufRowUnpackFn) give the codes, scales and zeros of the
// table in gguf_unpack.h; comments give ggml's formula each one reproduces.

// The fifth bits of a Q5_0/Q5_1 block: element j's is bit j of qh.
uint32_t LoadQh(const uint8_t (&qh)[4]) {
  uint32_t bits;
  std::memcpy(&bits, qh, 4);
  return bits;
}

// The 32 codes of a Q4_0/Q4_1/Q5_0/Q5_1 block minus `bias`: element j in the
// low nibble of qs[j], element j + 16 in the high one, and (5-bit types) bit
// j of qh as the fifth bit (qh = 0 for 4-bit types).
void BlockCodes(const uint8_t (&qs)[kQK / 2], uint32_t qh, int bias, int8_t* q) {
  for (int j = 0; j < kQK / 2; ++j) {
    q[j] = static_cast<int8_t>(((qs[j] & 0xF) | (((qh >> j) & 1) << 4)) - bias);
    q[j + kQK / 2] = static_cast<int8_t>(((qs[j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - bias);
  }
}

void UnpackQ8_0(const std::byte* src, int64_t n, const GgufRowOut& out) {  // y = q * d
  for (int64_t b = 0; b < n / kQK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ8_0>(src, b);
    for (int j = 0; j < kQK; ++j) out.codes[b * kQK + j] = block.qs[j];
    out.scale[b] = HalfToFloat(block.d);
    out.zero[b] = 0;
  }
}

void UnpackQ4_0(const std::byte* src, int64_t n, const GgufRowOut& out) {  // y = (q - 8) * d
  for (int64_t b = 0; b < n / kQK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ4_0>(src, b);
    BlockCodes(block.qs, 0, 0, out.codes + b * kQK);
    out.scale[b] = HalfToFloat(block.d);
    out.zero[b] = 8;
  }
}

void UnpackQ5_0(const std::byte* src, int64_t n, const GgufRowOut& out) {  // y = (q - 16) * d
  for (int64_t b = 0; b < n / kQK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ5_0>(src, b);
    BlockCodes(block.qs, LoadQh(block.qh), 16, out.codes + b * kQK);
    out.scale[b] = HalfToFloat(block.d);
    out.zero[b] = 0;
  }
}

void UnpackQ4_1(const std::byte* src, int64_t n, const GgufRowOut& out) {  // y = q * d + m
  for (int64_t b = 0; b < n / kQK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ4_1>(src, b);
    BlockCodes(block.qs, 0, 0, out.codes + b * kQK);
    out.scale[b] = HalfToFloat(block.d);
    out.zero[b] = -HalfToFloat(block.m);  // q*d - (-m) == q*d + m exactly
  }
}

void UnpackQ5_1(const std::byte* src, int64_t n, const GgufRowOut& out) {  // y = q * d + m
  for (int64_t b = 0; b < n / kQK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ5_1>(src, b);
    BlockCodes(block.qs, LoadQh(block.qh), 0, out.codes + b * kQK);
    out.scale[b] = HalfToFloat(block.d);
    out.zero[b] = -HalfToFloat(block.m);
  }
}

// The eight (d*sc, dmin*m) pairs of a Q4_K/Q5_K super-block, as ggml forms them.
void ScalesK4(uint16_t d_bits, uint16_t dmin_bits, const uint8_t* scales, float* scale,
              float* min) {
  const float d = HalfToFloat(d_bits), dmin = HalfToFloat(dmin_bits);
  for (int j = 0; j < kQKK / 32; ++j) {
    uint8_t sc, m;
    ScaleMinK4(j, scales, &sc, &m);
    scale[j] = d * sc;
    min[j] = dmin * m;
  }
}

void UnpackQ4K(const std::byte* src, int64_t n, const GgufRowOut& out) {  // y = (d*sc) q - (dmin*m)
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ4K>(src, b);
    ScalesK4(block.d, block.dmin, block.scales, out.scale + b * 8, out.zero + b * 8);
    // Per 64 elements, 32 bytes: element l in the low nibble, l + 32 in the high.
    int8_t* q = out.codes + b * kQKK;
    for (int g = 0; g < kQKK / 64; ++g) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t byte = block.qs[32 * g + l];
        q[64 * g + l] = static_cast<int8_t>(byte & 0xF);
        q[64 * g + 32 + l] = static_cast<int8_t>(byte >> 4);
      }
    }
  }
}

void UnpackQ5K(const std::byte* src, int64_t n, const GgufRowOut& out) {  // as Q4_K, q in 0..31
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ5K>(src, b);
    ScalesK4(block.d, block.dmin, block.scales, out.scale + b * 8, out.zero + b * 8);
    // Low nibbles as Q4_K; the high bit of element e is bit e/32 of qh[e % 32].
    int8_t* q = out.codes + b * kQKK;
    for (int g = 0; g < kQKK / 64; ++g) {
      for (int l = 0; l < 32; ++l) {
        const uint8_t byte = block.qs[32 * g + l], high = block.qh[l];
        q[64 * g + l] = static_cast<int8_t>((byte & 0xF) | (((high >> (2 * g)) & 1) << 4));
        q[64 * g + 32 + l] = static_cast<int8_t>((byte >> 4) | (((high >> (2 * g + 1)) & 1) << 4));
      }
    }
  }
}

void UnpackQ6K(const std::byte* src, int64_t n, const GgufRowOut& out) {  // y = (d*sc) q
  for (int64_t b = 0; b < n / kQKK; ++b) {
    const auto block = LoadGgmlBlock<BlockQ6K>(src, b);
    const float d = HalfToFloat(block.d);
    for (int s = 0; s < kQKK / 16; ++s) {
      out.scale[b * 16 + s] = d * block.scales[s];
      out.zero[b * 16 + s] = 0;
    }
    // Per 128-element half h and l in 0..31: elements l, l+32, l+64, l+96 take
    // ql[l] low, ql[l+32] low, ql[l] high, ql[l+32] high and qh[l] bit pairs 0..3.
    int8_t* q = out.codes + b * kQKK;
    for (int h = 0; h < 2; ++h) {
      const uint8_t* ql = block.ql + 64 * h;
      const uint8_t* qh = block.qh + 32 * h;
      for (int l = 0; l < 32; ++l) {
        const int low[4] = {ql[l] & 0xF, ql[l + 32] & 0xF, ql[l] >> 4, ql[l + 32] >> 4};
        for (int k = 0; k < 4; ++k) {
          const int high = (qh[l] >> (2 * k)) & 3;
          q[128 * h + 32 * k + l] = static_cast<int8_t>((low[k] | (high << 4)) - 32);
        }
      }
    }
  }
}

struct Unpacker {
  GgmlType type;
  GgufUnpackFormat format;
  GgufRowUnpackFn unpack_row;
};

constexpr QuantConfig Bits(int bits, int group) {
  return {bits, group, false, QuantMethod::kMinMax};
}
constexpr StorageFormat kF16 = {DType::kF16, ZeroForm::kZeroPoint};
constexpr StorageFormat kF32 = {DType::kF32, ZeroForm::kZeroPoint};
constexpr StorageFormat kMinF16 = {DType::kF16, ZeroForm::kMin};
constexpr StorageFormat kMinF32 = {DType::kF32, ZeroForm::kMin};

constexpr Unpacker kUnpackers[] = {
    {GgmlType::kQ8_0, {Bits(8, kQK), kF16}, UnpackQ8_0},
    {GgmlType::kQ4_0, {Bits(4, kQK), kF16}, UnpackQ4_0},
    {GgmlType::kQ5_0, {Bits(5, kQK), kF16}, UnpackQ5_0},
    {GgmlType::kQ4_1, {Bits(4, kQK), kMinF16}, UnpackQ4_1},
    {GgmlType::kQ5_1, {Bits(5, kQK), kMinF16}, UnpackQ5_1},
    {GgmlType::kQ4_K, {Bits(4, 32), kMinF32}, UnpackQ4K},
    {GgmlType::kQ5_K, {Bits(5, 32), kMinF32}, UnpackQ5K},
    {GgmlType::kQ6_K, {Bits(6, 16), kF32}, UnpackQ6K},
};

const Unpacker* FindUnpacker(GgmlType type) {
  for (const Unpacker& u : kUnpackers) {
    if (u.type == type) return &u;
  }
  return nullptr;
}

// Rows per parallel task: enough work to amortize the scheduling.
constexpr int64_t kRowsPerTask = 16;

}  // namespace

GgufRowUnpackFn FindGgufRowUnpacker(GgmlType type) {
  const Unpacker* unpacker = FindUnpacker(type);
  return unpacker == nullptr ? nullptr : unpacker->unpack_row;
}

absl::StatusOr<GgufUnpackFormat> GgufUnpackFormatOf(GgmlType type) {
  const Unpacker* unpacker = FindUnpacker(type);
  if (unpacker == nullptr) {
    return absl::UnimplementedError(absl::StrFormat(
        "ggml type %s has no lossless unpacker (supported: q8_0, q4_0, q5_0, q4_1, q5_1, q4_K, "
        "q5_K, q6_K)",
        GgmlTypeName(static_cast<uint32_t>(type))));
  }
  return unpacker->format;
}

absl::StatusOr<PackedWeight> UnpackGgufWeight(std::string fqn, std::vector<int64_t> torch_shape,
                                              GgmlType type, std::span<const std::byte> data,
                                              ThreadPool* pool) {
  const Unpacker* unpacker = FindUnpacker(type);
  if (unpacker == nullptr) return Annotate(GgufUnpackFormatOf(type).status(), "tensor '", fqn, "'");
  const GgmlTypeTraits& traits = *FindGgmlType(static_cast<uint32_t>(type));
  GQ_ASSIGN_OR_RETURN(
      QuantizedLayout layout,
      QuantizedLayout::Create(fqn, torch_shape, unpacker->format.config, unpacker->format.format));
  const int64_t k = layout.cols(), groups = layout.groups();
  if (k % traits.block_elements != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor '%s': %s needs rows of a multiple of %d elements, but K = %d", fqn,
                        traits.name, traits.block_elements, k));
  }
  const int64_t row_bytes = k / traits.block_elements * traits.block_bytes;
  const int64_t total_rows = layout.matrices() * layout.rows();
  if (static_cast<int64_t>(data.size()) != total_rows * row_bytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("tensor '%s': %s %s needs %d bytes, but got %d", fqn, traits.name,
                        ShapeToString(torch_shape), total_rows * row_bytes, data.size()));
  }
  PackedWeight packed(std::move(layout));
  // Tasks of kRowsPerTask rows that stay inside one matrix, as Pack wants.
  const int64_t rows_per_matrix = packed.layout().rows();
  const int64_t tasks_per_matrix = (rows_per_matrix + kRowsPerTask - 1) / kRowsPerTask;
  std::vector<absl::Status> task_status(packed.layout().matrices() * tasks_per_matrix);
  ParallelFor(pool, static_cast<int64_t>(task_status.size()), 1, [&](int64_t begin, int64_t end) {
    std::vector<int8_t> codes(kRowsPerTask * k);
    std::vector<float> scale(kRowsPerTask * groups), zero(kRowsPerTask * groups);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t matrix = task / tasks_per_matrix;
      const int64_t row = (task % tasks_per_matrix) * kRowsPerTask;
      const int64_t rows = std::min(kRowsPerTask, rows_per_matrix - row);
      const std::byte* src = data.data() + (matrix * rows_per_matrix + row) * row_bytes;
      for (int64_t r = 0; r < rows; ++r) {
        unpacker->unpack_row(
            src + r * row_bytes, k,
            {codes.data() + r * k, scale.data() + r * groups, zero.data() + r * groups});
      }
      task_status[task] =
          packed.Pack(matrix, row, rows, std::span(codes).first(rows * k),
                      std::span(scale).first(rows * groups), std::span(zero).first(rows * groups));
    }
  });
  for (const absl::Status& status : task_status) GQ_RETURN_IF_ERROR(status);
  return packed;
}

}  // namespace gquant
