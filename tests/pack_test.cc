#include "gquant/pack.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <map>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "gquant/dtype.h"
#include "gquant/ggml_format.h"
#include "gquant/gguf.h"
#include "gquant/gguf_unpack.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/tensor.h"
#include "int4_mma_layout.h"
#include "test_util.h"

namespace gquant {
namespace {

using Kind = QuantizedWeightInfo::Kind;

// ---- independent decoders of the three layouts ----
// Written from the layout comments (pack.h, cuda/int4_mma_layout.h,
// cuda/int8_layout.h), not from the packers' helpers.

template <typename T>
T Load(std::span<const std::byte> bytes, int64_t index) {
  REQUIRE((index + 1) * static_cast<int64_t>(sizeof(T)) <= static_cast<int64_t>(bytes.size()));
  T value;
  std::memcpy(&value, bytes.data() + index * sizeof(T), sizeof(T));
  return value;
}

std::span<const std::byte> PartOf(const PackedMatrix& packed, const std::string& name) {
  auto part = packed.Part(name);
  REQUIRE_OK(part);
  return *part;
}

UnpackedMatrix Allocated(const QuantizedMatrixInfo& info) {
  UnpackedMatrix m{info};
  m.codes.resize(info.rows * info.cols);
  m.scale.resize(info.rows * info.groups());
  m.zero.resize(info.rows * info.groups());
  return m;
}

// cpu_unpacked: codes int8 [N, K], scale and zero f32 [N, G].
UnpackedMatrix DecodeCpuUnpacked(const PackedMatrix& packed) {
  UnpackedMatrix m = Allocated(packed.info);
  const auto codes = PartOf(packed, "codes"), scale = PartOf(packed, "scale"),
             zero = PartOf(packed, "zero");
  REQUIRE(codes.size() == m.codes.size());
  REQUIRE(scale.size() == 4 * m.scale.size());
  REQUIRE(zero.size() == 4 * m.zero.size());
  for (size_t i = 0; i < m.codes.size(); ++i) m.codes[i] = Load<int8_t>(codes, i);
  for (size_t i = 0; i < m.scale.size(); ++i) {
    m.scale[i] = Load<float>(scale, i);
    m.zero[i] = Load<float>(zero, i);
  }
  return m;
}

// cuda_int8_rows: codes int8 [N, K] row-major; params f32 pairs [N][G] (scale, zero).
UnpackedMatrix DecodeInt8Rows(const PackedMatrix& packed) {
  UnpackedMatrix m = Allocated(packed.info);
  const auto codes = PartOf(packed, "codes"), params = PartOf(packed, "params");
  REQUIRE(codes.size() == m.codes.size());
  REQUIRE(params.size() == 8 * m.scale.size());
  for (size_t i = 0; i < m.codes.size(); ++i) m.codes[i] = Load<int8_t>(codes, i);
  for (size_t i = 0; i < m.scale.size(); ++i) {
    m.scale[i] = Load<float>(params, 2 * i);
    m.zero[i] = Load<float>(params, 2 * i + 1);
  }
  return m;
}

// cuda_int4_mma16, element (r, c) of a [N, K] matrix: byte offset of its
// 32-bit word and the nibble's shift. From the layout comment: tiles of 16
// rows x 64 columns, 512 bytes each, [N/16][K/64]; in a tile, physical column
// c = 32h + 8t + 4u + e is k16 step s = 2h + u with mma k index kk = 2t +
// (e % 2) + 8 (e / 2); lane l holds (PTX m16n8k16 A fragment) rows l/4 and
// l/4 + 8 and k indices 2 (l % 4), + 1, + 8, + 9: register a_i covers row
// group i % 2 and k half i / 2; word s of the lane's 16 bytes is step s, and
// the two bf16 halves (even k, odd k) of a_i are nibbles 4i and 16 + 4i.
struct NibbleSlot {
  int64_t byte;
  int shift;
};
NibbleSlot MmaSlot(int64_t r, int64_t c, int64_t k) {
  const int64_t tile = r / 16 * (k / 64) + c / 64;
  const int64_t rr = r % 16, cc = c % 64;
  const int64_t h = cc / 32, t = cc % 32 / 8, u = cc % 8 / 4, e = cc % 4;
  const int64_t step = 2 * h + u, kk = 2 * t + e % 2 + 8 * (e / 2);
  const int64_t lane = 4 * (rr % 8) + kk % 8 / 2;
  const int64_t reg = rr / 8 + 2 * (kk / 8);
  return {tile * 512 + (lane * 4 + step) * 4, static_cast<int>(4 * reg + 16 * (kk % 2))};
}
// params [N/16][G][8][2] bf16x2 words: rows g and g + 8 of a 16-row block
// side by side for each group.
int64_t MmaParamWord(int64_t r, int64_t g, int64_t groups) {
  return ((r / 16 * groups + g) * 8 + r % 8) * 2 + r % 16 / 8;
}

UnpackedMatrix DecodeInt4Mma(const PackedMatrix& packed) {
  UnpackedMatrix m = Allocated(packed.info);
  const int64_t n = m.info.rows, k = m.info.cols, groups = m.info.groups();
  const auto qweight = PartOf(packed, "qweight"), params = PartOf(packed, "params");
  REQUIRE(static_cast<int64_t>(qweight.size()) == n * k / 2);
  REQUIRE(static_cast<int64_t>(params.size()) == 4 * n * groups);
  for (int64_t r = 0; r < n; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const NibbleSlot slot = MmaSlot(r, c, k);
      m.codes[r * k + c] =
          static_cast<int8_t>((Load<uint32_t>(qweight, slot.byte / 4) >> slot.shift) & 0xF);
    }
    for (int64_t g = 0; g < groups; ++g) {
      const uint32_t word = Load<uint32_t>(params, MmaParamWord(r, g, groups));
      m.scale[r * groups + g] = BFloat16ToFloat(static_cast<uint16_t>(word & 0xFFFF));
      m.zero[r * groups + g] = BFloat16ToFloat(static_cast<uint16_t>(word >> 16));
    }
  }
  return m;
}

UnpackedMatrix Decode(const PackedMatrix& packed) {
  if (packed.layout == kCpuUnpackedLayout) return DecodeCpuUnpacked(packed);
  if (packed.layout == kCudaInt8RowsLayout) return DecodeInt8Rows(packed);
  REQUIRE(packed.layout == kCudaInt4Mma16Layout);
  return DecodeInt4Mma(packed);
}

// w = (q - z) * s, or q * s - m in the min form, in float32 as
// QuantizedCheckpoint::Dequantize and ggml evaluate them.
std::vector<float> Dequant(const UnpackedMatrix& m) {
  const int64_t k = m.info.cols, group = m.info.group_size, groups = m.info.groups();
  std::vector<float> w(m.codes.size());
  for (int64_t r = 0; r < m.info.rows; ++r) {
    for (int64_t c = 0; c < k; ++c) {
      const float q = m.codes[r * k + c], s = m.scale[r * groups + c / group],
                  z = m.zero[r * groups + c / group];
      w[r * k + c] = m.info.kind == Kind::kMin ? q * s - z : (q - z) * s;
    }
  }
  return w;
}

void RequireSameFloats(std::span<const float> got, std::span<const float> want) {
  REQUIRE(got.size() == want.size());
  size_t mismatches = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (std::bit_cast<uint32_t>(got[i]) != std::bit_cast<uint32_t>(want[i]) && mismatches++ == 0) {
      first = i;
    }
  }
  INFO("first of " << mismatches << " mismatches at " << first << ": " << got[first] << " vs "
                   << want[first]);
  REQUIRE(mismatches == 0);
}

template <typename T>
void RequireSame(const std::vector<T>& got, const std::vector<T>& want, const char* what) {
  INFO(what);
  REQUIRE(got.size() == want.size());
  size_t mismatches = 0, first = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!(got[i] == want[i]) && mismatches++ == 0) first = i;
  }
  INFO("first of " << mismatches << " mismatches at " << first << ": " << +got[first] << " vs "
                   << +want[first]);
  REQUIRE(mismatches == 0);
}

float Bf16(float v) { return BFloat16ToFloat(FloatToBFloat16(v)); }
std::vector<float> Bf16(std::vector<float> v) {
  for (float& x : v) x = Bf16(x);
  return v;
}

// ---- registry ----

struct Expected {
  PackSource source;
  PackBackend backend;
  std::string_view layout;
};
// The table of pack.h, written out again.
constexpr Expected kExpectedTable[] = {
    {PackSource::kInt4, PackBackend::kCpu, kCpuUnpackedLayout},
    {PackSource::kIntx, PackBackend::kCpu, kCpuUnpackedLayout},
    {PackSource::kMin4, PackBackend::kCpu, kCpuUnpackedLayout},
    {PackSource::kMinx, PackBackend::kCpu, kCpuUnpackedLayout},
    {PackSource::kGgufQ8_0, PackBackend::kCpu, kCpuUnpackedLayout},
    {PackSource::kGgufQ6_K, PackBackend::kCpu, kCpuUnpackedLayout},
    {PackSource::kGgufQ4_K, PackBackend::kCpu, kCpuUnpackedLayout},
    {PackSource::kInt4, PackBackend::kCuda, kCudaInt4Mma16Layout},
    {PackSource::kMin4, PackBackend::kCuda, kCudaInt4Mma16Layout},
    {PackSource::kIntx, PackBackend::kCuda, kCudaInt8RowsLayout},
    {PackSource::kMinx, PackBackend::kCuda, kCudaInt8RowsLayout},
    {PackSource::kGgufQ8_0, PackBackend::kCuda, kCudaInt8RowsLayout},
    {PackSource::kGgufQ6_K, PackBackend::kCuda, kCudaInt8RowsLayout},
    {PackSource::kGgufQ4_K, PackBackend::kCuda, kCudaInt4Mma16Layout},
};

TEST_CASE("pack registry: every entry is found, a missing pair is Unimplemented", "[pack]") {
  REQUIRE(Packers().size() == std::size(kExpectedTable));
  for (const Expected& want : kExpectedTable) {
    INFO(PackSourceName(want.source) << " -> " << PackBackendName(want.backend));
    auto packer = FindPacker(want.source, want.backend);
    REQUIRE_OK(packer);
    CHECK((*packer)->source == want.source);
    CHECK((*packer)->backend == want.backend);
    CHECK((*packer)->layout == want.layout);
    // GGUF sources read blocks, the others the unpacked form: exactly one function.
    CHECK(IsGgufPackSource(want.source) == ((*packer)->pack_gguf != nullptr));
    CHECK(IsGgufPackSource(want.source) == ((*packer)->pack_unpacked == nullptr));
  }
  for (const Packer& packer : Packers()) {
    auto found = FindPacker(packer.source, packer.backend);
    REQUIRE_OK(found);
    CHECK(*found == &packer);
  }
  // Every real pair has a packer, so a missing pair needs a source value the
  // table does not know (e.g. from a newer build).
  const auto unknown = static_cast<PackSource>(77);
  const auto missing = FindPacker(unknown, PackBackend::kCuda);
  REQUIRE_STATUS_IS(missing, absl::StatusCode::kUnimplemented);
  CHECK(std::string(missing.status().message()).find("cuda") != std::string::npos);

  CHECK(PackBackendName(PackBackend::kCpu) == "cpu");
  CHECK(PackBackendName(PackBackend::kCuda) == "cuda");
  CHECK(*PackBackendFromName("cuda") == PackBackend::kCuda);
  CHECK(*PackBackendFromName("cpu") == PackBackend::kCpu);
  REQUIRE_STATUS_IS(PackBackendFromName("metal"), absl::StatusCode::kInvalidArgument);

  CHECK(*GgufPackSourceOf(GgmlType::kQ8_0) == PackSource::kGgufQ8_0);
  CHECK(*GgufPackSourceOf(GgmlType::kQ6_K) == PackSource::kGgufQ6_K);
  CHECK(*GgufPackSourceOf(GgmlType::kQ4_K) == PackSource::kGgufQ4_K);
  REQUIRE_STATUS_IS(GgufPackSourceOf(GgmlType::kQ5_K), absl::StatusCode::kUnimplemented);
  CHECK(*PackSourceOf({Kind::kInt4, 4, 1, 32, 32}) == PackSource::kInt4);
  CHECK(*PackSourceOf({Kind::kIntx, 8, 1, 32, 32}) == PackSource::kIntx);
  CHECK(*PackSourceOf({Kind::kMin, 4, 1, 32, 32}) == PackSource::kMin4);
  CHECK(*PackSourceOf({Kind::kMin, 6, 1, 32, 32}) == PackSource::kMinx);
  REQUIRE_STATUS_IS(PackSourceOf({Kind::kPlain, 0, 1, 32, 32}), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(PackSourceOf({Kind::kMin, 8, 1, 32, 32}), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("cuda_int4_mma16 decoder agrees with the layout header's helpers", "[pack]") {
  // The test's own derivation of the slots, from the layout comment, must give
  // the header's constexpr helpers and place all 1024 nibbles of a tile once.
  std::vector<int> seen(cuda::kInt4MmaTileBytes * 2, 0);
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < 64; ++c) {
      const NibbleSlot mine = MmaSlot(r, c, 64);
      const cuda::Int4MmaSlot header = cuda::Int4MmaSlotOf(r, c);
      INFO("r " << r << " c " << c);
      CHECK(mine.byte == header.word_offset);
      CHECK(mine.shift == header.shift);
      ++seen[mine.byte * 2 + mine.shift / 4];
    }
  }
  for (int count : seen) CHECK(count == 1);
  for (int64_t groups : {1, 3}) {
    for (int64_t r = 0; r < 48; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        CHECK(MmaParamWord(r, g, groups) == cuda::Int4MmaParamIndex(r, g, groups));
      }
    }
  }
}

TEST_CASE("cuda_int4_mma16 row-half interleave equals packing the interleaved rows", "[pack]") {
  // Reference computed another way: permute the unpacked rows (row 16 i + j
  // of the result is a's 8 i + j, row 16 i + 8 + j is b's) and pack that.
  auto rng = testing::MakeRng();
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> param(0.01f, 15.0f);
  for (const auto& [n, k, group] :
       {std::tuple<int64_t, int64_t, int64_t>{16, 64, 32}, {48, 192, 64}, {32, 256, 256}}) {
    INFO("N=" << n << " K=" << k << " group " << group);
    const int64_t groups = k / group;
    std::vector<int8_t> codes[2];
    std::vector<float> scales[2], zeros[2];
    absl::StatusOr<cuda::PackedInt4Mma> packed[2];
    for (int m = 0; m < 2; ++m) {
      for (int64_t i = 0; i < n * k; ++i) codes[m].push_back(static_cast<int8_t>(code(rng)));
      for (int64_t i = 0; i < n * groups; ++i) {
        scales[m].push_back(Bf16(param(rng)));
        zeros[m].push_back(Bf16(param(rng)));
      }
      packed[m] = cuda::PackInt4Mma(codes[m], scales[m], zeros[m], n, k, group);
      REQUIRE_OK(packed[m]);
    }
    std::vector<int8_t> codes_ab;
    std::vector<float> scales_ab, zeros_ab;
    for (int64_t row = 0; row < 2 * n; ++row) {
      const int m = row % 16 / 8;
      const int64_t source = row / 16 * 8 + row % 8;
      codes_ab.insert(codes_ab.end(), codes[m].begin() + source * k,
                      codes[m].begin() + (source + 1) * k);
      scales_ab.insert(scales_ab.end(), scales[m].begin() + source * groups,
                       scales[m].begin() + (source + 1) * groups);
      zeros_ab.insert(zeros_ab.end(), zeros[m].begin() + source * groups,
                      zeros[m].begin() + (source + 1) * groups);
    }
    auto want = cuda::PackInt4Mma(codes_ab, scales_ab, zeros_ab, 2 * n, k, group);
    REQUIRE_OK(want);
    auto got = cuda::InterleaveInt4MmaRowHalves(packed[0]->qweight, packed[0]->params,
                                                packed[1]->qweight, packed[1]->params, n, k, group);
    REQUIRE_OK(got);
    CHECK(got->qweight == want->qweight);
    CHECK(got->params == want->params);
  }
  // N not a multiple of 16, and parts of the wrong size.
  const std::vector<uint8_t> bytes(8 * 64 / 2);
  const std::vector<uint32_t> words(8 * 2);
  CHECK(cuda::InterleaveInt4MmaRowHalves(bytes, words, bytes, words, 8, 64, 32).status().code() ==
        absl::StatusCode::kInvalidArgument);
  const std::vector<uint8_t> block(16 * 64 / 2);
  const std::vector<uint32_t> block_params(16 * 2);
  CHECK(cuda::InterleaveInt4MmaRowHalves(block, block_params, bytes, block_params, 16, 64, 32)
            .status()
            .code() == absl::StatusCode::kInvalidArgument);
}

// ---- gquant sources, through a quantized checkpoint ----

struct WeightSpec {
  std::string fqn;
  std::vector<int64_t> shape;
  QuantConfig config;
  StorageFormat format;
};

// Random unpacked data for `layout` ([E * N, K] rows): codes over the full
// range, positive scales, zeros (or mins) the stored dtype holds exactly, so
// the file keeps every value and Unpack must return them.
UnpackedMatrix RandomWeight(std::mt19937_64& rng, const QuantizedLayout& layout) {
  const bool min_form = layout.format().zero_form == ZeroForm::kMin;
  const int bits = layout.config().bits;
  const CodeRange range = min_form ? CodeRange{0, (1 << bits) - 1} : CodeRangeOf(layout.config());
  const auto stored = [&](float v) {
    switch (layout.format().scale_dtype) {
      case DType::kF32:
        return v;
      case DType::kF16:
        return HalfToFloat(FloatToHalf(v));
      default:
        return Bf16(v);
    }
  };
  QuantizedMatrixInfo info{min_form ? Kind::kMin : (bits == 4 ? Kind::kInt4 : Kind::kIntx), bits,
                           layout.matrices() * layout.rows(), layout.cols(),
                           layout.config().group_size};
  UnpackedMatrix u = Allocated(info);
  std::uniform_int_distribution<int> code(range.quant_min, range.quant_max);
  std::uniform_real_distribution<float> positive(0.001f, 0.5f), real_zero(0.0f, 15.0f);
  for (int8_t& c : u.codes) c = static_cast<int8_t>(code(rng));
  for (size_t i = 0; i < u.scale.size(); ++i) {
    u.scale[i] = stored(positive(rng));
    // 4-bit zeros may be non-integers (HQQ), mins are reals; Intx zeros are integers.
    const bool real = min_form || bits == 4;
    u.zero[i] = real ? stored(real_zero(rng) * (min_form ? u.scale[i] : 1.0f))
                     : static_cast<float>(code(rng));
  }
  return u;
}

// Rows [row, row + count) of `u` as their own matrix.
UnpackedMatrix RowsOf(const UnpackedMatrix& u, int64_t row, int64_t count) {
  QuantizedMatrixInfo info = u.info;
  info.rows = count;
  UnpackedMatrix m{info};
  const int64_t k = info.cols, g = info.groups();
  m.codes.assign(u.codes.begin() + row * k, u.codes.begin() + (row + count) * k);
  m.scale.assign(u.scale.begin() + row * g, u.scale.begin() + (row + count) * g);
  m.zero.assign(u.zero.begin() + row * g, u.zero.begin() + (row + count) * g);
  return m;
}

QuantConfig Config(int bits, int group, bool symmetric = false) {
  return {bits, group, symmetric, QuantMethod::kMinMax};
}
constexpr StorageFormat kBf16 = {DType::kBF16, ZeroForm::kZeroPoint};
constexpr StorageFormat kF16 = {DType::kF16, ZeroForm::kZeroPoint};
constexpr StorageFormat kF32 = {DType::kF32, ZeroForm::kZeroPoint};
constexpr StorageFormat kMinBf16 = {DType::kBF16, ZeroForm::kMin};
constexpr StorageFormat kMinF16 = {DType::kF16, ZeroForm::kMin};
constexpr StorageFormat kMinF32 = {DType::kF32, ZeroForm::kMin};

// Every gquant source, 2-D and 3-D, several group sizes, and the scale dtypes
// (F16/F32 scales are not bf16 values: the int4 layout must round them). Some
// have more rows than a packer step (64), some a partial last step.
const std::vector<WeightSpec>& CheckpointWeights() {
  static const std::vector<WeightSpec> weights = {
      {"m.int4_g32.weight", {80, 128}, Config(4, 32), kBf16},
      {"m.int4_sym_g128.weight", {32, 256}, Config(4, 128, true), kBf16},
      {"m.int4_experts.weight", {3, 32, 128}, Config(4, 64), kBf16},
      {"m.int4_per_row.weight", {16, 192}, Config(4, kPerRowGroupSize), kBf16},
      {"m.int4_f32_scales.weight", {16, 64}, Config(4, 32), kF32},
      {"m.min4.weight", {32, 128}, Config(4, 32), kMinBf16},
      {"m.min4_experts.weight", {2, 16, 256}, Config(4, 64), kMinF32},
      {"m.int8.weight", {72, 96}, Config(8, 32), kBf16},
      {"m.int6_experts.weight", {2, 24, 64}, Config(6, 16), kF32},
      {"m.int5_per_row.weight", {8, 80}, Config(5, kPerRowGroupSize, true), kF16},
      {"m.min5.weight", {16, 64}, Config(5, 32), kMinF16},
      {"m.min6_experts.weight", {3, 8, 128}, Config(6, 64), kMinF32},
  };
  return weights;
}

// The cuda layout each spec goes to (pack.h's table).
std::string_view CudaLayoutOf(const WeightSpec& spec) {
  return spec.config.bits == 4 ? kCudaInt4Mma16Layout : kCudaInt8RowsLayout;
}

struct TestCheckpoint {
  testing::TempDir dir;
  std::map<std::string, UnpackedMatrix> written;  // by FQN, [E * N, K]
  std::string path;
};

// Writes CheckpointWeights() (plus a plain tensor "m.norm.weight") with fresh data.
void WriteCheckpoint(std::mt19937_64& rng, TestCheckpoint& out) {
  std::vector<QuantizedCheckpointEntry> entries;
  std::vector<PackedWeight> packed;
  for (const WeightSpec& spec : CheckpointWeights()) {
    auto layout = QuantizedLayout::Create(spec.fqn, spec.shape, spec.config, spec.format);
    REQUIRE_OK(layout);
    entries.push_back({spec.fqn, *layout});
    const UnpackedMatrix u = RandomWeight(rng, *layout);
    PackedWeight weight(*layout);
    for (int64_t e = 0; e < layout->matrices(); ++e) {
      const UnpackedMatrix m = RowsOf(u, e * layout->rows(), layout->rows());
      REQUIRE_OK(weight.Pack(e, 0, layout->rows(), m.codes, m.scale, m.zero));
    }
    packed.push_back(std::move(weight));
    out.written.emplace(spec.fqn, u);
  }
  entries.push_back({"m.norm.weight", std::nullopt, DType::kF32, {64}});
  out.path = out.dir.File("q.safetensors");
  auto writer = QuantizedCheckpointWriter::Create(out.path, entries);
  REQUIRE_OK(writer);
  for (const PackedWeight& w : packed) REQUIRE_OK((*writer)->WritePacked(w));
  std::vector<float> norm(64, 1.5f);
  REQUIRE_OK((*writer)->WritePlain("m.norm.weight", std::as_bytes(std::span(norm))));
  REQUIRE_OK((*writer)->Commit());
}

TEST_CASE("QuantizedCheckpoint::Unpack returns the stored matrices", "[pack]") {
  auto rng = testing::MakeRng();
  TestCheckpoint ckpt;
  WriteCheckpoint(rng, ckpt);
  auto file = QuantizedCheckpoint::Open(ckpt.path);
  REQUIRE_OK(file);
  for (const WeightSpec& spec : CheckpointWeights()) {
    INFO(spec.fqn);
    const UnpackedMatrix& written = ckpt.written.at(spec.fqn);
    const int64_t matrices = spec.shape.size() == 3 ? spec.shape[0] : 1;
    const int64_t n = spec.shape[spec.shape.size() - 2];
    for (int64_t e = 0; e < matrices; ++e) {
      auto got = file->Unpack(spec.fqn, e);
      REQUIRE_OK(got);
      const UnpackedMatrix want = RowsOf(written, e * n, n);
      CHECK(got->info == want.info);
      RequireSame(got->codes, want.codes, "codes");
      RequireSame(got->scale, want.scale, "scale");
      RequireSame(got->zero, want.zero, "zero");
      // And its (q - z) * s or q * s - m is the checkpoint's own dequantization.
      auto rows = file->DequantizeRows(spec.fqn, e * n, n);
      REQUIRE_OK(rows);
      RequireSameFloats(Dequant(*got), *rows);
    }
    REQUIRE_STATUS_IS(file->Unpack(spec.fqn, matrices), absl::StatusCode::kInvalidArgument);
    REQUIRE_STATUS_IS(file->Unpack(spec.fqn, -1), absl::StatusCode::kInvalidArgument);
  }
  REQUIRE_STATUS_IS(file->Unpack("m.norm.weight", 0), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(file->Unpack("m.missing.weight", 0), absl::StatusCode::kNotFound);
}

TEST_CASE("PackedWeight::Unpack inverts Pack", "[pack]") {
  auto rng = testing::MakeRng();
  for (const WeightSpec& spec : CheckpointWeights()) {
    INFO(spec.fqn);
    auto layout = QuantizedLayout::Create(spec.fqn, spec.shape, spec.config, spec.format);
    REQUIRE_OK(layout);
    const UnpackedMatrix u = RandomWeight(rng, *layout);
    PackedWeight weight(*layout);
    const int64_t n = layout->rows();
    for (int64_t e = 0; e < layout->matrices(); ++e) {
      const UnpackedMatrix m = RowsOf(u, e * n, n);
      REQUIRE_OK(weight.Pack(e, 0, n, m.codes, m.scale, m.zero));
    }
    for (int64_t e = 0; e < layout->matrices(); ++e) {
      auto got = weight.Unpack(e);
      REQUIRE_OK(got);
      const UnpackedMatrix want = RowsOf(u, e * n, n);
      RequireSame(got->codes, want.codes, "codes");
      RequireSame(got->scale, want.scale, "scale");
      RequireSame(got->zero, want.zero, "zero");
    }
    REQUIRE_STATUS_IS(weight.Unpack(layout->matrices()), absl::StatusCode::kInvalidArgument);
  }
}

TEST_CASE("PackWeight: every gquant source and backend decodes to the checkpoint's weight",
          "[pack]") {
  auto rng = testing::MakeRng();
  TestCheckpoint ckpt;
  WriteCheckpoint(rng, ckpt);
  auto file = QuantizedCheckpoint::Open(ckpt.path);
  REQUIRE_OK(file);
  for (const WeightSpec& spec : CheckpointWeights()) {
    for (PackBackend backend : {PackBackend::kCpu, PackBackend::kCuda}) {
      INFO(spec.fqn << " for " << PackBackendName(backend));
      auto packed = PackWeight(*file, spec.fqn, backend);
      REQUIRE_OK(packed);
      const int64_t matrices = spec.shape.size() == 3 ? spec.shape[0] : 1;
      const int64_t n = spec.shape[spec.shape.size() - 2];
      REQUIRE(static_cast<int64_t>(packed->size()) == matrices);
      const std::string_view layout =
          backend == PackBackend::kCpu ? kCpuUnpackedLayout : CudaLayoutOf(spec);
      for (int64_t e = 0; e < matrices; ++e) {
        INFO("expert " << e);
        const PackedMatrix& p = (*packed)[e];
        CHECK(p.layout == layout);
        const UnpackedMatrix want = RowsOf(ckpt.written.at(spec.fqn), e * n, n);
        CHECK(p.info == want.info);
        const UnpackedMatrix got = Decode(p);
        RequireSame(got.codes, want.codes, "codes");
        auto rows = file->DequantizeRows(spec.fqn, e * n, n);
        REQUIRE_OK(rows);
        if (layout != kCudaInt4Mma16Layout || spec.format.scale_dtype == DType::kBF16) {
          // Every value kept: the decoded weight is the checkpoint's, bit for bit.
          CHECK(p.exact);
          RequireSame(got.scale, want.scale, "scale");
          RequireSame(got.zero, want.zero, "zero");
          RequireSameFloats(Dequant(got), *rows);
        } else {
          // F32 / F16 params into bf16: round to nearest even, and the packer says so.
          CHECK_FALSE(p.exact);
          RequireSame(got.scale, Bf16(want.scale), "scale rounded to bf16");
          RequireSame(got.zero, Bf16(want.zero), "zero rounded to bf16");
        }
        if (backend == PackBackend::kCpu) {  // the CPU forward's view of it
          auto view = CpuUnpackedView(p);
          REQUIRE_OK(view);
          CHECK(view->info == want.info);
          CHECK(std::equal(view->codes.begin(), view->codes.end(), want.codes.begin()));
          CHECK(std::equal(view->scale.begin(), view->scale.end(), want.scale.begin()));
          CHECK(std::equal(view->zero.begin(), view->zero.end(), want.zero.begin()));
        }
        int64_t bytes = 0;
        for (const auto& [name, part] : p.parts) bytes += part.size();
        CHECK(p.num_bytes() == bytes);
      }
    }
  }
  REQUIRE_STATUS_IS(PackWeight(*file, "m.norm.weight", PackBackend::kCuda),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(PackWeight(*file, "m.missing.weight", PackBackend::kCpu),
                    absl::StatusCode::kNotFound);
}

// ---- GGUF sources ----

std::vector<float> Sample(std::mt19937_64& rng, int64_t n, int dist) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(n);
  for (float& v : x) {
    switch (dist) {
      case 0:  // weight-like
        v = 0.02f * normal(rng);
        break;
      case 1:  // 1% outliers x40
        v = normal(rng) * (rng() % 100 == 0 ? 40.0f : 1.0f);
        break;
      default:  // all positive, offset: exercises the mins
        v = 3.0f + std::fabs(normal(rng));
        break;
    }
  }
  return x;
}

struct GgufSpec {
  std::string name;
  std::vector<int64_t> shape;  // torch order
  GgmlType type;
};

std::vector<int64_t> GgufDims(const std::vector<int64_t>& torch_shape) {
  return {torch_shape.rbegin(), torch_shape.rend()};
}

// Direct types (2-D and 3-D experts) and two through-the-gquant-form types.
const std::vector<GgufSpec>& GgufTensors() {
  static const std::vector<GgufSpec> tensors = {
      {"blk.0.q8.weight", {70, 128}, GgmlType::kQ8_0},
      {"blk.0.q6.weight", {32, 512}, GgmlType::kQ6_K},
      {"blk.0.q4k.weight", {112, 256}, GgmlType::kQ4_K},
      {"blk.0.q4k_exps.weight", {3, 16, 256}, GgmlType::kQ4_K},
      {"blk.0.q6k_exps.weight", {2, 8, 256}, GgmlType::kQ6_K},
      {"blk.0.q8_exps.weight", {2, 16, 64}, GgmlType::kQ8_0},
      {"blk.0.q5k.weight", {16, 256}, GgmlType::kQ5_K},
      {"blk.0.q4_0.weight", {16, 128}, GgmlType::kQ4_0},
  };
  return tensors;
}

// The layout each GGUF tensor goes to for cuda.
std::string_view CudaLayoutOf(GgmlType type) {
  switch (type) {
    case GgmlType::kQ4_K:
    case GgmlType::kQ4_0:
      return kCudaInt4Mma16Layout;
    default:
      return kCudaInt8RowsLayout;
  }
}

struct TestGguf {
  testing::TempDir dir;
  std::string path;
  std::map<std::string, std::vector<std::byte>> blocks;
};

void WriteGguf(std::mt19937_64& rng, TestGguf& out, const std::vector<GgufSpec>& extra = {}) {
  out.path = out.dir.File("t.gguf");
  auto writer = GgufWriter::Create(out.path);
  REQUIRE_OK(writer);
  std::vector<GgufSpec> all = GgufTensors();
  all.insert(all.end(), extra.begin(), extra.end());
  int dist = 0;
  for (const GgufSpec& spec : all) {
    int64_t n = 1;
    for (int64_t d : spec.shape) n *= d;
    auto bytes = GgmlRowBytes(spec.type, n);
    REQUIRE_OK(bytes);
    std::vector<std::byte>& blocks = out.blocks[spec.name];
    blocks.resize(*bytes);
    REQUIRE_OK(QuantizeGgmlRef(spec.type, Sample(rng, n, dist++ % 3), blocks));
    REQUIRE_OK((*writer)->AddTensor(spec.name, GgufDims(spec.shape),
                                    static_cast<uint32_t>(spec.type), blocks.size()));
  }
  for (const GgufSpec& spec : all) {
    REQUIRE_OK((*writer)->WriteTensorData(spec.name, out.blocks[spec.name]));
  }
  REQUIRE_OK((*writer)->Commit());
}

TEST_CASE("PackGgufTensor: direct and unpacked paths decode to ggml's weights", "[pack]") {
  auto rng = testing::MakeRng();
  TestGguf gguf;
  WriteGguf(rng, gguf);
  auto file = GgufFile::Open(gguf.path);
  REQUIRE_OK(file);
  for (const GgufSpec& spec : GgufTensors()) {
    const std::vector<std::byte>& blocks = gguf.blocks.at(spec.name);
    // References: gquant's exact unpacking, and ggml's dequantization.
    auto reference = UnpackGgufWeight(spec.name, spec.shape, spec.type, blocks);
    REQUIRE_OK(reference);
    int64_t elements = 1;
    for (int64_t d : spec.shape) elements *= d;
    std::vector<float> ggml(elements);
    REQUIRE_OK(DequantizeGgml(spec.type, blocks, ggml));
    const int64_t matrices = spec.shape.size() == 3 ? spec.shape[0] : 1;
    const int64_t n = spec.shape[spec.shape.size() - 2], k = spec.shape.back();
    for (PackBackend backend : {PackBackend::kCpu, PackBackend::kCuda}) {
      INFO(spec.name << " for " << PackBackendName(backend));
      auto packed = PackGgufTensor(*file, spec.name, backend);
      REQUIRE_OK(packed);
      REQUIRE(static_cast<int64_t>(packed->size()) == matrices);
      const std::string_view layout =
          backend == PackBackend::kCpu ? kCpuUnpackedLayout : CudaLayoutOf(spec.type);
      for (int64_t e = 0; e < matrices; ++e) {
        INFO("expert " << e);
        const PackedMatrix& p = (*packed)[e];
        CHECK(p.layout == layout);
        auto want = reference->Unpack(e);
        REQUIRE_OK(want);
        CHECK(p.info == want->info);
        const UnpackedMatrix got = Decode(p);
        RequireSame(got.codes, want->codes, "codes");
        const std::span<const float> ggml_matrix = std::span(ggml).subspan(e * n * k, n * k);
        if (layout != kCudaInt4Mma16Layout) {
          // int8 rows and cpu: ggml's parameters exactly, so ggml's weights bit for bit.
          CHECK(p.exact);
          RequireSame(got.scale, want->scale, "scale");
          RequireSame(got.zero, want->zero, "zero");
          RequireSameFloats(Dequant(got), ggml_matrix);
          continue;
        }
        // int4 mma: params rounded to bf16 (nearest even), so per weight
        // |w - w_ggml| <= 2^-8 (|q s| + |m|) (bf16 keeps 8 significant bits),
        // plus 2^-22 of the same for float32 rounding in ggml's own evaluation.
        RequireSame(got.scale, Bf16(want->scale), "scale rounded to bf16");
        RequireSame(got.zero, Bf16(want->zero), "zero rounded to bf16");
        CHECK_FALSE(p.exact);  // random fp16 d: some product needs more than 8 bits
        const int64_t groups = want->info.groups(), group = want->info.group_size;
        double worst = 0;
        for (int64_t r = 0; r < n; ++r) {
          for (int64_t c = 0; c < k; ++c) {
            const int64_t gi = r * groups + c / group;
            const double q = got.codes[r * k + c];
            const double s = got.scale[gi], z = got.zero[gi];
            const double w = want->info.kind == Kind::kMin ? q * s - z : (q - z) * s;
            const double terms = want->info.kind == Kind::kMin
                                     ? std::fabs(q * want->scale[gi]) + std::fabs(want->zero[gi])
                                     : (q + std::fabs(want->zero[gi])) * std::fabs(want->scale[gi]);
            const double bound = (std::ldexp(1.0, -8) + std::ldexp(1.0, -22)) * terms;
            const double err = std::fabs(w - ggml_matrix[r * k + c]);
            worst = std::max(worst, bound > 0 ? err / bound : err);
          }
        }
        INFO("worst error / bound " << worst);
        CHECK(worst <= 1.0);
      }
    }
  }
}

TEST_CASE("PackGgufMatrix packs one matrix of blocks as PackGgufTensor does", "[pack]") {
  auto rng = testing::MakeRng();
  TestGguf gguf;
  WriteGguf(rng, gguf);
  auto file = GgufFile::Open(gguf.path);
  REQUIRE_OK(file);
  const GgufSpec& spec = GgufTensors()[3];  // q4_K experts [3, 16, 256]
  REQUIRE(spec.type == GgmlType::kQ4_K);
  auto whole = PackGgufTensor(*file, spec.name, PackBackend::kCuda);
  REQUIRE_OK(whole);
  const std::vector<std::byte>& blocks = gguf.blocks.at(spec.name);
  const int64_t per_matrix = static_cast<int64_t>(blocks.size()) / 3;
  for (int64_t e = 0; e < 3; ++e) {
    auto one =
        PackGgufMatrix(GgmlType::kQ4_K, std::span(blocks).subspan(e * per_matrix, per_matrix), 16,
                       256, PackBackend::kCuda);
    REQUIRE_OK(one);
    CHECK(one->parts == (*whole)[e].parts);
  }
}

// ---- errors ----

UnpackedMatrix RandomMatrix(std::mt19937_64& rng, QuantizedMatrixInfo info) {
  UnpackedMatrix m = Allocated(info);
  const int top = info.kind == Kind::kIntx ? (1 << (info.bits - 1)) - 1 : (1 << info.bits) - 1;
  const int bottom = info.kind == Kind::kIntx ? -(1 << (info.bits - 1)) : 0;
  std::uniform_int_distribution<int> code(bottom, top);
  for (int8_t& c : m.codes) c = static_cast<int8_t>(code(rng));
  for (float& s : m.scale) s = Bf16(0.01f * (1 + rng() % 100));
  for (float& z : m.zero) z = static_cast<float>(rng() % 8);
  return m;
}

bool Mentions(const absl::Status& status, std::string_view text) {
  return std::string(status.message()).find(text) != std::string::npos;
}

TEST_CASE("pack errors name the matrix, the layout and the pair", "[pack]") {
  auto rng = testing::MakeRng();
  {  // N % 16 for the int4 tiles: the cuda layout refuses, cpu keeps it
    const UnpackedMatrix m = RandomMatrix(rng, {Kind::kInt4, 4, 24, 128, 32});
    auto packed = PackMatrix(m.view(), PackBackend::kCuda, "weight 'a.b'");
    REQUIRE_STATUS_IS(packed, absl::StatusCode::kInvalidArgument);
    CHECK(Mentions(packed.status(), "weight 'a.b'"));
    CHECK(Mentions(packed.status(), "cuda_int4_mma16"));
    CHECK(Mentions(packed.status(), "int4 -> cuda"));
    REQUIRE_OK(PackMatrix(m.view(), PackBackend::kCpu));
  }
  {  // a group size the int4 tiles cannot take
    const UnpackedMatrix m = RandomMatrix(rng, {Kind::kInt4, 4, 16, 128, 16});
    REQUIRE_STATUS_IS(PackMatrix(m.view(), PackBackend::kCuda), absl::StatusCode::kInvalidArgument);
  }
  {  // K % 16 for int8 rows
    const UnpackedMatrix m = RandomMatrix(rng, {Kind::kIntx, 8, 4, 40, 8});
    auto packed = PackMatrix(m.view(), PackBackend::kCuda, "weight 'c.d'");
    REQUIRE_STATUS_IS(packed, absl::StatusCode::kInvalidArgument);
    CHECK(Mentions(packed.status(), "cuda_int8_rows"));
    CHECK(Mentions(packed.status(), "weight 'c.d'"));
  }
  {  // a 4-bit code outside 0..15
    UnpackedMatrix m = RandomMatrix(rng, {Kind::kInt4, 4, 16, 64, 32});
    m.codes[rng() % m.codes.size()] = 16;
    REQUIRE_STATUS_IS(PackMatrix(m.view(), PackBackend::kCuda), absl::StatusCode::kInvalidArgument);
  }
  {  // spans of the wrong size
    UnpackedMatrix m = RandomMatrix(rng, {Kind::kIntx, 8, 16, 64, 32});
    m.scale.pop_back();
    for (PackBackend backend : {PackBackend::kCpu, PackBackend::kCuda}) {
      REQUIRE_STATUS_IS(PackMatrix(m.view(), backend), absl::StatusCode::kInvalidArgument);
    }
  }
  {  // a table function given a source its entry does not list
    const UnpackedMatrix m = RandomMatrix(rng, {Kind::kIntx, 8, 16, 64, 32});
    auto int4 = FindPacker(PackSource::kInt4, PackBackend::kCuda);
    REQUIRE_OK(int4);
    REQUIRE_STATUS_IS((*int4)->pack_unpacked(m.view()), absl::StatusCode::kInvalidArgument);
  }
  {  // GGUF blocks of the wrong size
    std::vector<std::byte> blocks(sizeof(BlockQ6K) * 3);
    auto packed = PackGgufMatrix(GgmlType::kQ6_K, blocks, 2, 512, PackBackend::kCuda, "t");
    REQUIRE_STATUS_IS(packed, absl::StatusCode::kInvalidArgument);
    CHECK(Mentions(packed.status(), "gguf_q6_K -> cuda"));
    REQUIRE_STATUS_IS(PackGgufMatrix(GgmlType::kQ5_K, blocks, 1, 256, PackBackend::kCuda),
                      absl::StatusCode::kUnimplemented);
  }
  {  // a cpu_unpacked view of another layout
    const UnpackedMatrix m = RandomMatrix(rng, {Kind::kIntx, 8, 16, 64, 32});
    auto packed = PackMatrix(m.view(), PackBackend::kCuda);
    REQUIRE_OK(packed);
    REQUIRE_STATUS_IS(CpuUnpackedView(*packed), absl::StatusCode::kInvalidArgument);
    REQUIRE_STATUS_IS(packed->Part("qweight"), absl::StatusCode::kNotFound);
  }
  // GGUF tensors: rows not a multiple of 16 for int4 (cuda only), a plain
  // type, a 1-D tensor, and a missing name.
  TestGguf gguf;
  WriteGguf(rng, gguf,
            {{"blk.1.odd.weight", {24, 256}, GgmlType::kQ4_K},
             {"blk.1.f32.weight", {16, 32}, GgmlType::kF32},
             {"blk.1.norm.weight", {256}, GgmlType::kQ8_0}});
  auto file = GgufFile::Open(gguf.path);
  REQUIRE_OK(file);
  auto odd = PackGgufTensor(*file, "blk.1.odd.weight", PackBackend::kCuda);
  REQUIRE_STATUS_IS(odd, absl::StatusCode::kInvalidArgument);
  CHECK(Mentions(odd.status(), "blk.1.odd.weight"));
  CHECK(Mentions(odd.status(), "cuda_int4_mma16"));
  REQUIRE_OK(PackGgufTensor(*file, "blk.1.odd.weight", PackBackend::kCpu));
  auto plain = PackGgufTensor(*file, "blk.1.f32.weight", PackBackend::kCuda);
  REQUIRE_STATUS_IS(plain, absl::StatusCode::kUnimplemented);
  CHECK(Mentions(plain.status(), "blk.1.f32.weight"));
  REQUIRE_STATUS_IS(PackGgufTensor(*file, "blk.1.norm.weight", PackBackend::kCpu),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(PackGgufTensor(*file, "blk.9.none.weight", PackBackend::kCpu),
                    absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace gquant
