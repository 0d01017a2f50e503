// The int8, bf16 and int4 embedding gathers against an exact host
// computation on fresh random tables and ids (the int4 one also against
// DequantizeInt4Mma), outputs poisoned first, and their NaN rows for ids out
// of range.
#include "embedding_gather.cuh"

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <string_view>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/dtype.h"
#include "gquant/pack.h"
#include "gquant/quantized_checkpoint.h"
#include "int4_dequantize.cuh"
#include "int8_layout.h"

namespace gquant::cuda {
namespace {

struct Table {
  int64_t n, k, group;
  bool min_form;
  std::vector<int8_t> codes;       // [N, K]
  std::vector<float> scale, zero;  // [N, G]; zero is the min in the min form
  DeviceBuffer<int8_t> codes_d;
  DeviceBuffer<float> params_d;
  Int8RowsWeight view;
};

// Random int8 codes (6-bit unsigned in the min form) and params, packed and
// uploaded.
Table MakeTable(int64_t n, int64_t k, int64_t group, bool min_form, std::mt19937_64& rng) {
  Table t{n, k, group, min_form, {}, {}, {}, {}, {}, {}};
  std::uniform_int_distribution<int> code(min_form ? 0 : -128, min_form ? 63 : 127);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f), zero(-8.0f, 8.0f), min(0.0f, 64.0f);
  t.codes.resize(n * k);
  for (int8_t& c : t.codes) c = static_cast<int8_t>(code(rng));
  t.scale.resize(n * (k / group));
  t.zero.resize(n * (k / group));
  for (size_t i = 0; i < t.scale.size(); ++i) {
    t.scale[i] = scale(rng);
    t.zero[i] = min_form ? min(rng) * t.scale[i] : zero(rng);
  }
  auto packed = PackInt8Rows(t.codes, t.scale, t.zero, n, k, group);
  REQUIRE_OK(packed);
  t.codes_d = testing::Upload(packed->codes);
  t.params_d = testing::Upload(packed->params);
  t.view = {t.codes_d.data(), reinterpret_cast<const float2*>(t.params_d.data()), n, k, group,
            min_form};
  return t;
}

// The gather's contract on the host: float32 operations rounded one at a
// time, then round-to-nearest-even to bf16. Products go through double,
// where they are exact, and are rounded to float once, so no FMA contraction
// by the host compiler can change them.
uint16_t GatherOnHost(const Table& t, int64_t row, int64_t column, float multiplier) {
  const int64_t p = row * (t.k / t.group) + column / t.group;
  const float c = t.codes[row * t.k + column], s = t.scale[p], z = t.zero[p];
  const float w = t.min_form ? static_cast<float>(static_cast<double>(c) * s) - z
                             : static_cast<float>(static_cast<double>(c - z) * s);
  return FloatToBFloat16(static_cast<float>(static_cast<double>(w) * multiplier));
}

constexpr uint16_t kPoisonBits = 0xFFFF;  // a bf16 NaN: FillBytes(0xFF)
constexpr int64_t kGuard = 64;            // poisoned elements past an output

bool IsBf16NaN(uint16_t bits) { return (bits & 0x7F80) == 0x7F80 && (bits & 0x7F) != 0; }

// Runs the gather of `ids` into an output poisoned with `poison` bytes and
// returns it ([count, K] bf16 bits).
std::vector<uint16_t> Gather(const Table& t, const std::vector<int32_t>& ids, float multiplier,
                             unsigned char poison) {
  auto ids_d = testing::Upload(ids);
  auto out = DeviceBuffer<uint16_t>::Allocate(ids.size() * t.k);
  REQUIRE_OK(out);
  REQUIRE_OK(out->FillBytes(poison));
  REQUIRE_OK(GatherInt8Rows(t.view, ids_d.data(), static_cast<int>(ids.size()), multiplier,
                            reinterpret_cast<__nv_bfloat16*>(out->data()), nullptr));
  std::vector<uint16_t> got(ids.size() * t.k);
  REQUIRE_OK(out->CopyToHost(got));
  return got;
}

TEST_CASE("int8 embedding gather is bit-exact against the host", "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Shape {
    int64_t n, k, group;
  };
  // Gemma's per-row tables at both widths (fewer rows than the real 262144:
  // the kernel does not depend on N), a grouped one, and a small odd one.
  const Shape shapes[] = {{4000, 5376, 5376}, {5000, 1536, 1536}, {3000, 1536, 32}, {37, 48, 16}};
  for (const Shape& s : shapes) {
    for (bool min_form : {false, true}) {
      const Table t = MakeTable(s.n, s.k, s.group, min_form, rng);
      for (int count : {1, 7, 300}) {
        for (float multiplier : {1.0f, std::sqrt(5376.0f)}) {
          INFO("N=" << s.n << " K=" << s.k << " group " << s.group << " min form " << min_form
                    << " count " << count << " multiplier " << multiplier);
          std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(s.n - 1));
          std::vector<int32_t> ids(count);
          for (int32_t& v : ids) v = id(rng);
          ids[0] = static_cast<int32_t>(s.n - 1);  // the last row too
          // Poison 0xFFFF is a bf16 NaN, never a gathered value here.
          const std::vector<uint16_t> got = Gather(t, ids, multiplier, 0xFF);
          int64_t mismatches = 0, first = -1;
          for (int i = 0; i < count; ++i) {
            for (int64_t c = 0; c < s.k; ++c) {
              if (got[i * s.k + c] != GatherOnHost(t, ids[i], c, multiplier) && mismatches++ == 0) {
                first = i * s.k + c;
              }
            }
          }
          if (mismatches > 0) {
            INFO(mismatches << " mismatches; first: id index " << first / s.k << " column "
                            << first % s.k);
            REQUIRE(mismatches == 0);
          }
        }
      }
    }
  }
}

TEST_CASE("int8 embedding gather writes NaN rows for ids out of range",
          "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const Table t = MakeTable(100, 1536, 1536, false, rng);
  const std::vector<int32_t> ids = {
      -1, 100, 42, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), 99};
  // Poison 0x7F7F (a finite bf16, ~3.4e38) so a NaN row proves it was written.
  const std::vector<uint16_t> got = Gather(t, ids, 2.0f, 0x7F);
  for (size_t i = 0; i < ids.size(); ++i) {
    const bool in_range = ids[i] >= 0 && ids[i] < t.n;
    INFO("id " << ids[i]);
    int64_t wrong = 0;
    for (int64_t c = 0; c < t.k; ++c) {
      const uint16_t v = got[i * t.k + c];
      wrong += in_range ? v != GatherOnHost(t, ids[i], c, 2.0f) : !IsBf16NaN(v);
    }
    REQUIRE(wrong == 0);
  }
}

TEST_CASE("int8 embedding gather rejects bad arguments", "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<uint8_t>::Allocate(1 << 20);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));
  const auto* codes = reinterpret_cast<const int8_t*>(buffer->data());
  const auto* params = reinterpret_cast<const float2*>(buffer->data());
  const auto* ids = reinterpret_cast<const int32_t*>(buffer->data());
  auto* out = reinterpret_cast<__nv_bfloat16*>(buffer->data() + (1 << 19));
  const auto invalid = absl::StatusCode::kInvalidArgument;
  const Int8RowsWeight good{codes, params, 64, 64, 64, false};
  REQUIRE_OK(GatherInt8Rows(good, ids, 4, 1.0f, out, nullptr));  // ids 0: row 0
  REQUIRE_OK(GatherInt8Rows(good, ids, 0, 1.0f, out, nullptr));  // nothing to do
  REQUIRE_STATUS_IS(GatherInt8Rows(good, ids, -1, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherInt8Rows(good, nullptr, 4, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherInt8Rows(good, ids, 4, 1.0f, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherInt8Rows(good, ids, 4, 1.0f, out + 1, nullptr), invalid);  // alignment
  REQUIRE_STATUS_IS(
      GatherInt8Rows({nullptr, params, 64, 64, 64, false}, ids, 4, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherInt8Rows({codes, params, 64, 40, 40, false}, ids, 4, 1.0f, out, nullptr),
                    invalid);  // K % 16
  REQUIRE_STATUS_IS(GatherInt8Rows({codes, params, 0, 64, 64, false}, ids, 4, 1.0f, out, nullptr),
                    invalid);  // N
}

// The bf16 gather's contract on the host: one float32 product (the bf16
// value times a float is exact in double, so the cast rounds once), then
// round-to-nearest-even to bf16.
uint16_t Bf16GatherOnHost(uint16_t value, float multiplier) {
  return FloatToBFloat16(
      static_cast<float>(static_cast<double>(BFloat16ToFloat(value)) * multiplier));
}

// Runs GatherBf16Rows on `table` ([rows, dim] bits) into an output of
// `out_offset` + count x dim elements poisoned with `poison` bytes, and
// returns the count x dim elements from out_offset on.
std::vector<uint16_t> GatherBf16(const cuda::DeviceBuffer<uint16_t>& table, int64_t rows,
                                 int64_t dim, const std::vector<int32_t>& ids, float multiplier,
                                 int64_t out_offset, unsigned char poison) {
  auto ids_d = testing::Upload(ids);
  const int64_t n = static_cast<int64_t>(ids.size()) * dim;
  auto out = DeviceBuffer<uint16_t>::Allocate(out_offset + n);
  REQUIRE_OK(out);
  REQUIRE_OK(out->FillBytes(poison));
  REQUIRE_OK(GatherBf16Rows(testing::AsBf16(table), rows, dim, ids_d.data(),
                            static_cast<int>(ids.size()), multiplier,
                            testing::AsBf16(*out) + out_offset, nullptr));
  std::vector<uint16_t> all(out_offset + n);
  REQUIRE_OK(out->CopyToHost(all));
  return std::vector<uint16_t>(all.begin() + out_offset, all.end());
}

TEST_CASE("bf16 embedding gather is bit-exact against the host", "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Shape {
    int64_t rows, dim, out_offset;
  };
  // The 31B and E2B embeddings and the E2B per-layer table (35 x 256), with
  // fewer rows than the real 262144 (the kernel does not depend on them),
  // odd widths and a misaligned output (scalar path).
  const Shape shapes[] = {{1000, 5376, 0}, {3000, 1536, 0}, {500, 8960, 0}, {37, 1, 0},
                          {37, 7, 0},      {50, 100, 0},    {200, 256, 1}};
  // 1; HF's bf16(sqrt(H)) for the 31B and E2B and the PLE's 16; a float32
  // sqrt(H) that is not a bf16 (llama.cpp's scale).
  const float multipliers[] = {1.0f, 73.5f, 39.25f, 16.0f, std::sqrt(5376.0f)};
  for (const Shape& s : shapes) {
    const auto table = testing::RandomBf16(s.rows * s.dim, 1e-3f, 0.1f, rng);
    auto table_d = testing::Upload(table.bits);
    for (int count : {1, 7, 300}) {
      for (float multiplier : multipliers) {
        INFO("rows " << s.rows << " dim " << s.dim << " out offset " << s.out_offset << " count "
                     << count << " multiplier " << multiplier);
        std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(s.rows - 1));
        std::vector<int32_t> ids(count);
        for (int32_t& v : ids) v = id(rng);
        ids[0] = static_cast<int32_t>(s.rows - 1);  // the last row too
        const std::vector<uint16_t> got =
            GatherBf16(table_d, s.rows, s.dim, ids, multiplier, s.out_offset, 0xFF);
        int64_t mismatches = 0, first = -1;
        for (int i = 0; i < count; ++i) {
          for (int64_t c = 0; c < s.dim; ++c) {
            const uint16_t want = Bf16GatherOnHost(table.bits[ids[i] * s.dim + c], multiplier);
            if (got[i * s.dim + c] != want && mismatches++ == 0) first = i * s.dim + c;
          }
        }
        if (mismatches > 0) {
          INFO(mismatches << " mismatches; first: id index " << first / s.dim << " column "
                          << first % s.dim);
          REQUIRE(mismatches == 0);
        }
      }
    }
  }
}

TEST_CASE("bf16 embedding gather writes NaN rows for ids out of range",
          "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  for (int64_t dim : {1536, 100}) {
    INFO("dim " << dim);
    const auto table = testing::RandomBf16(100 * dim, 1e-3f, 0.1f, rng);
    auto table_d = testing::Upload(table.bits);
    const std::vector<int32_t> ids = {
        -1, 100, 42, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), 99};
    // Poison 0x7F7F (a finite bf16, ~3.4e38) so a NaN row proves it was written.
    const std::vector<uint16_t> got = GatherBf16(table_d, 100, dim, ids, 2.0f, 0, 0x7F);
    for (size_t i = 0; i < ids.size(); ++i) {
      const bool in_range = ids[i] >= 0 && ids[i] < 100;
      INFO("id " << ids[i]);
      int64_t wrong = 0;
      for (int64_t c = 0; c < dim; ++c) {
        const uint16_t v = got[i * dim + c];
        wrong +=
            in_range ? v != Bf16GatherOnHost(table.bits[ids[i] * dim + c], 2.0f) : !IsBf16NaN(v);
      }
      REQUIRE(wrong == 0);
    }
  }
}

TEST_CASE("bf16 embedding gather rejects bad arguments", "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<uint16_t>::Allocate(1 << 16);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));
  const __nv_bfloat16* table = testing::AsBf16(*buffer);
  const auto* ids = reinterpret_cast<const int32_t*>(buffer->data());  // zeros: row 0
  __nv_bfloat16* out = testing::AsBf16(*buffer) + (1 << 15);
  const auto invalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_OK(GatherBf16Rows(table, 64, 64, ids, 4, 1.0f, out, nullptr));
  REQUIRE_OK(GatherBf16Rows(table, 64, 64, ids, 0, 1.0f, out, nullptr));
  REQUIRE_OK(GatherBf16Rows(table + 1, 64, 7, ids, 4, 1.0f, out + 1, nullptr));  // scalar path
  REQUIRE_STATUS_IS(GatherBf16Rows(nullptr, 64, 64, ids, 4, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherBf16Rows(table, 64, 64, nullptr, 4, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherBf16Rows(table, 64, 64, ids, 4, 1.0f, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherBf16Rows(table, 64, 64, ids, -1, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherBf16Rows(table, 0, 64, ids, 4, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherBf16Rows(table, 64, 0, ids, 4, 1.0f, out, nullptr), invalid);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the accepted launches ran
}

// ---- int4 (cuda_int4_mma16) ----

enum class Int4Form { kAsymmetric, kSymmetric, kMin };

struct Int4Table {
  UnpackedMatrix matrix;  // codes [N, K] 0..15, scale and zero (or min) [N, G]
  DeviceBuffer<uint8_t> qweight;
  DeviceBuffer<uint8_t> params;
  Int4MmaWeight view;
};

std::vector<uint8_t> Bytes(const PackedMatrix& packed, std::string_view part) {
  auto bytes = packed.Part(part);
  REQUIRE_OK(bytes);
  const auto* data = reinterpret_cast<const uint8_t*>(bytes->data());
  return std::vector<uint8_t>(data, data + bytes->size());
}

// A random int4 matrix in gquant's unpacked form, packed with PackMatrix for
// the CUDA backend and uploaded. Scales (and asymmetric zeros and mins) are
// float32 values that need not be bf16, so the packer's rounding to bf16 is
// part of what the test checks.
Int4Table MakeInt4Table(int64_t n, int64_t k, int64_t group, Int4Form form, std::mt19937_64& rng) {
  using Kind = QuantizedWeightInfo::Kind;
  const int64_t groups = k / group;
  Int4Table t;
  t.matrix.info = {form == Int4Form::kMin ? Kind::kMin : Kind::kInt4, 4, n, k, group};
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f), zero(0.0f, 15.0f);
  t.matrix.codes.resize(n * k);
  for (int8_t& c : t.matrix.codes) c = static_cast<int8_t>(code(rng));
  t.matrix.scale.resize(n * groups);
  t.matrix.zero.resize(n * groups);
  for (int64_t i = 0; i < n * groups; ++i) {
    t.matrix.scale[i] = scale(rng);
    // A min is a code-sized factor times the scale; a zero point is code-sized.
    t.matrix.zero[i] = form == Int4Form::kSymmetric ? 8.0f
                       : form == Int4Form::kMin     ? zero(rng) * t.matrix.scale[i]
                                                    : zero(rng);
  }
  auto packed = PackMatrix(t.matrix.view(), PackBackend::kCuda, "int4 table");
  REQUIRE_OK(packed);
  REQUIRE(packed->layout == kCudaInt4Mma16Layout);
  t.qweight = testing::Upload(Bytes(*packed, "qweight"));
  t.params = testing::Upload(Bytes(*packed, "params"));
  t.view = {reinterpret_cast<const uint4*>(t.qweight.data()),
            reinterpret_cast<const __nv_bfloat162*>(t.params.data()),
            n,
            k,
            static_cast<int>(group),
            form == Int4Form::kMin};
  return t;
}

float RoundToBf16(float v) { return BFloat16ToFloat(FloatToBFloat16(v)); }

// GatherInt4MmaRows's contract on the host, from the unpacked codes: scale
// and zero (min) rounded to bf16 as the packer stores them, float32
// operations rounded one at a time (through double, where the products are
// exact and the differences of these small numbers too, so the cast to float
// rounds once and no FMA contraction can change them), then
// round-to-nearest-even to bf16.
uint16_t Int4GatherOnHost(const UnpackedMatrix& m, int64_t row, int64_t column, float multiplier) {
  const int64_t group = m.info.group_size, k = m.info.cols;
  const int64_t p = row * (k / group) + column / group;
  const double q = m.codes[row * k + column];
  const float s = RoundToBf16(m.scale[p]), z = RoundToBf16(m.zero[p]);
  const float w = m.info.kind == QuantizedWeightInfo::Kind::kMin
                      ? static_cast<float>(static_cast<double>(static_cast<float>(q * s)) - z)
                      : static_cast<float>(static_cast<double>(static_cast<float>(q - z)) * s);
  return FloatToBFloat16(static_cast<float>(static_cast<double>(w) * multiplier));
}

// Runs the int4 gather of `ids` into an output of count x K elements plus a
// guard, poisoned with `poison` bytes; returns all of it (bf16 bits).
std::vector<uint16_t> GatherInt4(const Int4Table& t, const std::vector<int32_t>& ids,
                                 float multiplier, unsigned char poison) {
  auto ids_d = testing::Upload(ids);
  auto out = DeviceBuffer<uint16_t>::Allocate(ids.size() * t.view.k + kGuard);
  REQUIRE_OK(out);
  REQUIRE_OK(out->FillBytes(poison));
  REQUIRE_OK(GatherInt4MmaRows(t.view, ids_d.data(), static_cast<int>(ids.size()), multiplier,
                               reinterpret_cast<__nv_bfloat16*>(out->data()), nullptr));
  std::vector<uint16_t> got(out->size());
  REQUIRE_OK(out->CopyToHost(got));
  return got;
}

// The whole table through DequantizeInt4Mma (bf16 [N, K] bits): the
// dequantizer that the prefill GEMM uses, a second implementation of the
// same layout reading.
std::vector<uint16_t> DequantizeOnDevice(const Int4Table& t) {
  auto out = testing::PoisonedBf16(t.view.n * t.view.k);
  REQUIRE_OK(DequantizeInt4Mma(t.view, 0, t.view.n, testing::AsBf16(out), nullptr));
  std::vector<uint16_t> bits(out.size());
  REQUIRE_OK(out.CopyToHost(bits));
  return bits;
}

// The multiple of a bf16 by a power of two (exact: no overflow or
// underflow at these magnitudes).
uint16_t TimesPowerOfTwo(uint16_t bits, float power) {
  return FloatToBFloat16(BFloat16ToFloat(bits) * power);
}

TEST_CASE("int4 embedding gather is bit-exact against the host and DequantizeInt4Mma",
          "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  struct Shape {
    int64_t n, k, group;
  };
  // The E2B embedding (K 1536), the 31B one (5376) and the E2B per-layer
  // table (35 x 256 = 8960) with fewer rows than the real 262144 (the kernel
  // does not depend on N), at group sizes 32, 64 and 128 (and a whole-tile
  // multiple, 192), plus small tables of one or a few tiles.
  const Shape shapes[] = {{4000, 1536, 32}, {2000, 1536, 128}, {1008, 8960, 64}, {496, 5376, 128},
                          {16, 64, 32},     {48, 192, 64},     {48, 192, 192},   {32, 128, 128}};
  // 1; 16 (the PLE's sqrt(256)), both powers of two; HF's bf16(sqrt(1536));
  // a float32 sqrt(H) that is not a bf16 (llama.cpp's scale).
  const float multipliers[] = {1.0f, 16.0f, 39.25f, std::sqrt(5376.0f)};
  for (const Shape& s : shapes) {
    for (Int4Form form : {Int4Form::kAsymmetric, Int4Form::kSymmetric, Int4Form::kMin}) {
      const Int4Table t = MakeInt4Table(s.n, s.k, s.group, form, rng);
      const std::vector<uint16_t> dequantized = DequantizeOnDevice(t);
      for (int count : {1, 7, 300}) {
        // Random ids with the last and first rows, a repeat, and (from 7
        // ids on) one out of range, which must give a NaN row.
        std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(s.n - 1));
        std::vector<int32_t> ids(count);
        for (int32_t& v : ids) v = id(rng);
        ids[0] = static_cast<int32_t>(s.n - 1);
        if (count >= 7) {
          ids[1] = 0;
          ids[2] = ids[4];
          ids[5] = std::bernoulli_distribution(0.5)(rng) ? -1 : static_cast<int32_t>(s.n);
        }
        for (float multiplier : multipliers) {
          INFO("N=" << s.n << " K=" << s.k << " group " << s.group << " form "
                    << static_cast<int>(form) << " count " << count << " multiplier "
                    << multiplier);
          const std::vector<uint16_t> got = GatherInt4(t, ids, multiplier, 0xFF);
          const bool power_of_two = multiplier == 1.0f || multiplier == 16.0f;
          int64_t host_mismatches = 0, device_mismatches = 0, first = -1;
          for (int i = 0; i < count; ++i) {
            const bool in_range = ids[i] >= 0 && ids[i] < s.n;
            for (int64_t c = 0; c < s.k; ++c) {
              const uint16_t v = got[i * s.k + c];
              if (!in_range) {
                if (!IsBf16NaN(v) && host_mismatches++ == 0) first = i * s.k + c;
                continue;
              }
              if (v != Int4GatherOnHost(t.matrix, ids[i], c, multiplier) &&
                  host_mismatches++ == 0) {
                first = i * s.k + c;
              }
              if (power_of_two && v != TimesPowerOfTwo(dequantized[ids[i] * s.k + c], multiplier)) {
                ++device_mismatches;
              }
            }
          }
          if (host_mismatches > 0) {
            INFO(host_mismatches << " mismatches against the host; first: id index " << first / s.k
                                 << " (id " << ids[first / s.k] << ") column " << first % s.k);
            REQUIRE(host_mismatches == 0);
          }
          REQUIRE(device_mismatches == 0);
          REQUIRE(std::all_of(got.end() - kGuard, got.end(),
                              [](uint16_t v) { return v == kPoisonBits; }));
        }
      }
    }
  }
}

TEST_CASE("int4 embedding gather writes NaN rows for ids out of range",
          "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const Int4Table t = MakeInt4Table(96, 1536, 32, Int4Form::kAsymmetric, rng);
  const std::vector<int32_t> ids = {
      -1, 96, 42, std::numeric_limits<int32_t>::max(), std::numeric_limits<int32_t>::min(), 95};
  // Poison 0x7F7F (a finite bf16, ~3.4e38) so a NaN row proves it was written.
  const std::vector<uint16_t> got = GatherInt4(t, ids, 2.0f, 0x7F);
  for (size_t i = 0; i < ids.size(); ++i) {
    const bool in_range = ids[i] >= 0 && ids[i] < t.view.n;
    INFO("id " << ids[i]);
    int64_t wrong = 0;
    for (int64_t c = 0; c < t.view.k; ++c) {
      const uint16_t v = got[i * t.view.k + c];
      wrong += in_range ? v != Int4GatherOnHost(t.matrix, ids[i], c, 2.0f) : !IsBf16NaN(v);
    }
    REQUIRE(wrong == 0);
  }
}

TEST_CASE("int4 embedding gather rejects bad arguments", "[cuda][embedding_gather]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto buffer = DeviceBuffer<uint8_t>::Allocate(1 << 20);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0));
  const auto* tiles = reinterpret_cast<const uint4*>(buffer->data());
  const auto* params = reinterpret_cast<const __nv_bfloat162*>(buffer->data());
  const auto* ids = reinterpret_cast<const int32_t*>(buffer->data());
  auto* out = reinterpret_cast<__nv_bfloat16*>(buffer->data() + (1 << 19));
  const auto invalid = absl::StatusCode::kInvalidArgument;
  const Int4MmaWeight good{tiles, params, 64, 128, 32, false};
  REQUIRE_OK(GatherInt4MmaRows(good, ids, 4, 1.0f, out, nullptr));  // ids 0: row 0
  REQUIRE_OK(GatherInt4MmaRows(good, ids, 0, 1.0f, out, nullptr));  // nothing to do
  REQUIRE_OK(GatherInt4MmaRows({tiles, params, 64, 128, 128, true}, ids, 4, 1.0f, out, nullptr));
  REQUIRE_STATUS_IS(GatherInt4MmaRows(good, ids, -1, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherInt4MmaRows(good, nullptr, 4, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherInt4MmaRows(good, ids, 4, 1.0f, nullptr, nullptr), invalid);
  REQUIRE_STATUS_IS(GatherInt4MmaRows(good, ids, 4, 1.0f, out + 1, nullptr), invalid);  // alignment
  REQUIRE_STATUS_IS(GatherInt4MmaRows(good, reinterpret_cast<const int32_t*>(buffer->data() + 2), 4,
                                      1.0f, out, nullptr),
                    invalid);  // ids alignment
  REQUIRE_STATUS_IS(
      GatherInt4MmaRows({nullptr, params, 64, 128, 32, false}, ids, 4, 1.0f, out, nullptr),
      invalid);
  REQUIRE_STATUS_IS(
      GatherInt4MmaRows({tiles, nullptr, 64, 128, 32, false}, ids, 4, 1.0f, out, nullptr), invalid);
  REQUIRE_STATUS_IS(
      GatherInt4MmaRows({tiles, params, 24, 128, 32, false}, ids, 4, 1.0f, out, nullptr),
      invalid);  // N % 16
  REQUIRE_STATUS_IS(
      GatherInt4MmaRows({tiles, params, 64, 96, 32, false}, ids, 4, 1.0f, out, nullptr),
      invalid);  // K % 64
  REQUIRE_STATUS_IS(
      GatherInt4MmaRows({tiles, params, 64, 192, 96, false}, ids, 4, 1.0f, out, nullptr),
      invalid);  // group size

  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the accepted launches ran
}

}  // namespace
}  // namespace gquant::cuda
