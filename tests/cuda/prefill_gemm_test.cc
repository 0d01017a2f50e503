// The prefill path: the int4 dequantizer bit for bit against a host
// computation, and the chunked weight-only GEMM (prefill_gemm.cuh) against a
// float64 CPU reference, on fresh random weights packed by PackInt4Mma and
// outputs poisoned first. The chunk schedule is checked on the host.
#include "prefill_gemm.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <utility>
#include <vector>

#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "gquant/dtype.h"
#include "gquant/gemma4/linear_shapes.h"
#include "int4_dequantize.cuh"
#include "int4_mma_layout.h"
#include "int4_wgmma_gemm.cuh"

namespace gquant::cuda {
namespace {

constexpr uint16_t kPoison = 0xFFFF;  // a bf16 NaN: DeviceBuffer::FillBytes(0xFF)

struct Int4Shape {
  int64_t n, k;
  int group;
  bool min_form;
};

// A random int4 weight in gquant's unpacked form (codes [n, k], bf16-exact
// scale and zero or min [n, G]), its packed layout, and its dequantized bf16
// bits [n, k] as the device must compute them.
struct HostInt4 {
  Int4Shape shape;
  std::vector<int8_t> codes;
  std::vector<float> scale, zero;
  PackedInt4Mma packed;
  std::vector<uint16_t> dequantized;
};

// float32 (q - zero) * scale, or q * scale - min, each operation rounded to
// float as the device's __fsub_rn / __fmul_rn do. Computed in double, then
// rounded to float: double has more than 2 x 24 + 2 bits, so this double
// rounding gives the correctly rounded float result of each operation, and
// no FMA contraction by the host compiler can change it.
float DequantizeReference(int q, float scale, float zero, bool min_form) {
  if (min_form) {
    const float product = static_cast<float>(static_cast<double>(q) * scale);
    return static_cast<float>(static_cast<double>(product) - zero);
  }
  const float difference = static_cast<float>(q - static_cast<double>(zero));
  return static_cast<float>(static_cast<double>(difference) * scale);
}

HostInt4 MakeInt4(const Int4Shape& s, std::mt19937_64& rng) {
  const int64_t groups = s.k / s.group;
  std::uniform_int_distribution<int> code(0, 15);
  std::uniform_real_distribution<float> scale(0.002f, 0.02f), zero(0.0f, 15.0f);
  HostInt4 w{s, std::vector<int8_t>(s.n * s.k), std::vector<float>(s.n * groups),
             std::vector<float>(s.n * groups)};
  for (int8_t& c : w.codes) c = static_cast<int8_t>(code(rng));
  for (int64_t i = 0; i < s.n * groups; ++i) {
    w.scale[i] = BFloat16ToFloat(FloatToBFloat16(scale(rng)));
    // A min is a code-sized factor times the scale; a zero is code-sized.
    w.zero[i] = BFloat16ToFloat(FloatToBFloat16(s.min_form ? zero(rng) * w.scale[i] : zero(rng)));
  }
  auto packed = PackInt4Mma(w.codes, w.scale, w.zero, s.n, s.k, s.group);
  REQUIRE_OK(packed);
  w.packed = *std::move(packed);
  w.dequantized.resize(s.n * s.k);
  for (int64_t row = 0; row < s.n; ++row) {
    for (int64_t col = 0; col < s.k; ++col) {
      const int64_t g = row * groups + col / s.group;
      w.dequantized[row * s.k + col] = FloatToBFloat16(
          DequantizeReference(w.codes[row * s.k + col], w.scale[g], w.zero[g], s.min_form));
    }
  }
  return w;
}

DeviceBuffer<uint16_t> Poisoned(size_t count) {
  auto buffer = DeviceBuffer<uint16_t>::Allocate(count);
  REQUIRE_OK(buffer);
  REQUIRE_OK(buffer->FillBytes(0xFF));
  return *std::move(buffer);
}

std::vector<uint16_t> Download(const DeviceBuffer<uint16_t>& buffer) {
  std::vector<uint16_t> host(buffer.size());
  REQUIRE_OK(buffer.CopyToHost(host));
  return host;
}

struct DeviceInt4 {
  DeviceBuffer<uint8_t> qweight;
  DeviceBuffer<uint32_t> params;
  Int4MmaWeight weight;
};

DeviceInt4 UploadInt4(const HostInt4& w) {
  DeviceInt4 d{testing::Upload(w.packed.qweight), testing::Upload(w.packed.params), {}};
  d.weight = {reinterpret_cast<const uint4*>(d.qweight.data()),
              reinterpret_cast<const __nv_bfloat162*>(d.params.data()),
              w.shape.n,
              w.shape.k,
              w.shape.group,
              w.shape.min_form};
  return d;
}

const __nv_bfloat16* Bf16(const DeviceBuffer<uint16_t>& b) {
  return reinterpret_cast<const __nv_bfloat16*>(b.data());
}
__nv_bfloat16* Bf16(DeviceBuffer<uint16_t>& b) {
  return reinterpret_cast<__nv_bfloat16*>(b.data());
}

// One device buffer behind every pointer of the argument checks, in
// distinct regions (weights at 0, x at 256 KiB, y at 512 KiB): the calls are
// rejected before they read anything, but one weight-only GEMM call runs for
// real (on garbage values).
struct ArgumentScratch {
  DeviceBuffer<uint8_t> buffer;
  const uint4* tiles;
  const __nv_bfloat162* params;
  const __nv_bfloat16* x;
  __nv_bfloat16* y;
};

ArgumentScratch MakeArgumentScratch() {
  auto buffer = DeviceBuffer<uint8_t>::Allocate(1 << 20);
  REQUIRE_OK(buffer);
  uint8_t* base = buffer->data();
  return {*std::move(buffer), reinterpret_cast<const uint4*>(base),
          reinterpret_cast<const __nv_bfloat162*>(base),
          reinterpret_cast<const __nv_bfloat16*>(base + (256 << 10)),
          reinterpret_cast<__nv_bfloat16*>(base + (512 << 10))};
}

TEST_CASE("int4 dequantizer matches the host bit for bit", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const Int4Shape shapes[] = {
      {16, 64, 32, false},     {48, 192, 64, true},     {48, 192, 192, false},
      {32, 128, 128, true},    {6144, 1536, 32, false},  // E2B gate_up
      {4096, 5376, 128, true},                           // 31B kv_sliding
  };
  constexpr int64_t kGuard = 64;  // poisoned elements past the output: must stay poisoned
  for (const Int4Shape& s : shapes) {
    const HostInt4 host = MakeInt4(s, rng);
    const DeviceInt4 device = UploadInt4(host);
    // (row_begin, rows): the whole weight, the first and last row blocks, the inside.
    std::vector<std::pair<int64_t, int64_t>> ranges = {{0, s.n}, {0, 16}, {s.n - 16, 16}};
    if (s.n >= 48) ranges.push_back({16, s.n - 32});
    for (const auto& [begin, rows] : ranges) {
      for (int multiprocessors : {0, 1, 3}) {
        INFO("N=" << s.n << " K=" << s.k << " group " << s.group << " min form " << s.min_form
                  << " rows [" << begin << ", " << begin + rows << ") on " << multiprocessors
                  << " SMs");
        auto out = Poisoned(rows * s.k + kGuard);
        REQUIRE_OK(
            DequantizeInt4Mma(device.weight, begin, rows, Bf16(out), nullptr, multiprocessors));
        const std::vector<uint16_t> got = Download(out);
        const uint16_t* want = host.dequantized.data() + begin * s.k;
        int64_t mismatches = 0, first = -1;
        for (int64_t i = 0; i < rows * s.k; ++i) {
          if (got[i] != want[i]) {
            if (mismatches++ == 0) first = i;
          }
        }
        if (first >= 0) {
          INFO("first mismatch at row " << begin + first / s.k << " column " << first % s.k
                                        << ": got bf16 0x" << std::hex << got[first]
                                        << ", expected 0x" << want[first]);
          CHECK(mismatches == 0);
        }
        REQUIRE(mismatches == 0);
        REQUIRE(
            std::all_of(got.end() - kGuard, got.end(), [](uint16_t v) { return v == kPoison; }));
      }
    }
  }
}

TEST_CASE("int4 dequantizer rejects bad arguments", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  const ArgumentScratch scratch = MakeArgumentScratch();
  const uint4* tiles = scratch.tiles;
  const __nv_bfloat162* params = scratch.params;
  __nv_bfloat16* out = scratch.y;
  const Int4MmaWeight w{tiles, params, 64, 128, 32, false};
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_STATUS_IS(DequantizeInt4Mma(w, 8, 16, out, nullptr), kInvalid);   // row_begin % 16
  REQUIRE_STATUS_IS(DequantizeInt4Mma(w, 0, 24, out, nullptr), kInvalid);   // rows % 16
  REQUIRE_STATUS_IS(DequantizeInt4Mma(w, 48, 32, out, nullptr), kInvalid);  // past N
  REQUIRE_STATUS_IS(DequantizeInt4Mma(w, -16, 16, out, nullptr), kInvalid);
  REQUIRE_STATUS_IS(DequantizeInt4Mma(w, 0, 16, nullptr, nullptr), kInvalid);
  REQUIRE_STATUS_IS(DequantizeInt4Mma(w, 0, 16, out + 1, nullptr), kInvalid);  // alignment
  REQUIRE_STATUS_IS(DequantizeInt4Mma(w, 0, 16, out, nullptr, -1), kInvalid);  // SMs
  REQUIRE_STATUS_IS(DequantizeInt4Mma({tiles, params, 24, 128, 32}, 0, 16, out, nullptr),
                    kInvalid);  // N % 16
  REQUIRE_STATUS_IS(DequantizeInt4Mma({tiles, params, 64, 192, 96}, 0, 16, out, nullptr),
                    kInvalid);  // group 96
  REQUIRE_STATUS_IS(DequantizeInt4Mma({nullptr, params, 64, 128, 32}, 0, 16, out, nullptr),
                    kInvalid);
  REQUIRE_OK(DequantizeInt4Mma(w, 16, 0, out, nullptr));  // nothing to do
}

// Bound of one output entry against the float64 reference over the same
// bf16 weights: each product of two bf16 values is exact in fp32, and the
// fp32 sum over K (in any order, split-K included, since the handle keeps
// reductions in fp32) errs by at most about K u Σ|w x| with u = 2^-24; we
// allow K 2^-23 in case the tensor cores truncate instead of rounding. The
// bf16 output then rounds to nearest: at most 2^-8 of the value. So
//   |y - ref| <= 2^-8 |ref| + (1 + 2^-8) K 2^-23 Σ|w x|.
// Norm-wise the output rounding dominates (measured ~1.2e-3 in the GEMV
// tests), within 2^-8 plus a little for fp32.
constexpr double kOutputRounding = 0x1p-8;
constexpr double kNormBound = 0x1p-8 + 1e-4;

// Checks y ([m, n] bf16 bits) against the float64 reference y = x · Wᵀ over
// w ([n, k]) and x ([m, k]), bf16 values as floats: every entry written (no
// poison left), and the bound above on every entry when m n k is small, else
// on one random row of x per output column (so every chunk and row of W is
// covered) plus 256 random entries.
void CheckGemm(const std::vector<uint16_t>& y, const std::vector<float>& w,
               const std::vector<float>& x, int64_t m, int64_t n, int64_t k, std::mt19937_64& rng) {
  REQUIRE(static_cast<int64_t>(y.size()) == m * n);
  int64_t unwritten = 0;
  for (uint16_t v : y) unwritten += !std::isfinite(BFloat16ToFloat(v));
  REQUIRE(unwritten == 0);

  std::vector<std::pair<int64_t, int64_t>> entries;  // (row of x, row of W)
  if (m * n * k <= (int64_t{1} << 24)) {
    for (int64_t mi = 0; mi < m; ++mi) {
      for (int64_t ni = 0; ni < n; ++ni) entries.push_back({mi, ni});
    }
  } else {
    std::uniform_int_distribution<int64_t> row_of_x(0, m - 1), row_of_w(0, n - 1);
    for (int64_t ni = 0; ni < n; ++ni) entries.push_back({row_of_x(rng), ni});
    for (int i = 0; i < 256; ++i) entries.push_back({row_of_x(rng), row_of_w(rng)});
  }
  double err2 = 0, ref2 = 0;
  int64_t outside = 0;
  for (const auto& [mi, ni] : entries) {
    double ref = 0, abs_sum = 0;
    for (int64_t c = 0; c < k; ++c) {
      const double p = static_cast<double>(w[ni * k + c]) * x[mi * k + c];
      ref += p;
      abs_sum += std::abs(p);
    }
    const double got = BFloat16ToFloat(y[mi * n + ni]);
    const double bound = kOutputRounding * std::abs(ref) +
                         (1 + kOutputRounding) * static_cast<double>(k) * 0x1p-23 * abs_sum;
    if (std::abs(got - ref) > bound) {
      if (outside++ == 0) {
        INFO("y[" << mi << ", " << ni << "] = " << got << ", reference " << ref << ", bound "
                  << bound);
        CHECK(std::abs(got - ref) <= bound);
      }
    }
    err2 += (got - ref) * (got - ref);
    ref2 += ref * ref;
  }
  REQUIRE(outside == 0);
  REQUIRE(std::sqrt(err2 / ref2) < kNormBound);
}

std::vector<uint16_t> RandomActivations(int64_t count, std::mt19937_64& rng) {
  std::normal_distribution<float> act(0.0f, 1.0f);
  std::vector<uint16_t> x(count);
  for (uint16_t& v : x) v = FloatToBFloat16(act(rng));
  return x;
}

std::vector<float> ToFloat(const std::vector<uint16_t>& bf16) {
  std::vector<float> out(bf16.size());
  std::transform(bf16.begin(), bf16.end(), out.begin(), BFloat16ToFloat);
  return out;
}

// Option sets every GEMM case runs with: the defaults (one or a few chunks),
// many 16-row chunks over three buffers with the SMs split at every M
// (stresses the event ordering), and one buffer with a smaller first chunk
// and no split.
std::vector<WeightOnlyGemmOptions> TestOptions() {
  WeightOnlyGemmOptions many_chunks, one_buffer;
  many_chunks.max_chunk_elements = one_buffer.max_chunk_elements = 1 << 20;
  many_chunks.chunk_rows = 16;
  many_chunks.buffers = 3;
  many_chunks.dequantize_multiprocessors = 4;  // split at every M
  one_buffer.chunk_rows = 64;
  one_buffer.first_chunk_rows = 16;
  one_buffer.buffers = 1;
  one_buffer.dequantize_multiprocessors = 0;
  return {WeightOnlyGemmOptions{}, many_chunks, one_buffer};
}

void CheckInt4Gemm(const Int4Shape& s, std::initializer_list<int64_t> ms,
                   std::vector<WeightOnlyGemm>& gemms, std::mt19937_64& rng) {
  const HostInt4 host = MakeInt4(s, rng);
  const DeviceInt4 device = UploadInt4(host);
  const std::vector<float> w = ToFloat(host.dequantized);
  for (int64_t m : ms) {
    const std::vector<uint16_t> x_host = RandomActivations(m * s.k, rng);
    const std::vector<float> x_float = ToFloat(x_host);
    const auto x = testing::Upload(x_host);
    for (size_t o = 0; o < gemms.size(); ++o) {
      INFO("N=" << s.n << " K=" << s.k << " group " << s.group << " min form " << s.min_form
                << " M=" << m << " option set " << o);
      auto y = Poisoned(m * s.n);
      REQUIRE_OK(gemms[o].Run(device.weight, Bf16(x), m, Bf16(y), nullptr));
      CheckGemm(Download(y), w, x_float, m, s.n, s.k, rng);
    }
  }
}

std::vector<WeightOnlyGemm> MakeGemms() {
  std::vector<WeightOnlyGemm> gemms;
  for (const WeightOnlyGemmOptions& o : TestOptions()) {
    auto gemm = WeightOnlyGemm::Create(o);
    REQUIRE_OK(gemm);
    gemms.push_back(*std::move(gemm));
  }
  return gemms;
}

TEST_CASE("int4 weight-only GEMM matches a float64 reference", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  std::vector<WeightOnlyGemm> gemms = MakeGemms();
  const std::initializer_list<int64_t> ms = {1, 3, 17, 2048};
  SECTION("small odd shapes") {
    for (const Int4Shape& s : {Int4Shape{16, 64, 32, false}, Int4Shape{48, 192, 64, true},
                               Int4Shape{16, 192, 192, false}, Int4Shape{48, 64, 32, true}}) {
      CheckInt4Gemm(s, ms, gemms, rng);
    }
  }
  SECTION("E2B shapes") {
    int i = 0;
    for (const gemma4::LinearShape& shape : gemma4::kGemma4E2bLinearShapes) {
      // The 262144-row lm_head would take seconds to pack on the host; its K
      // (1536) is covered by the other shapes.
      if (shape.n * shape.k > (int64_t{1} << 26)) continue;
      INFO(shape.name);
      CheckInt4Gemm({shape.n, shape.k, i % 2 == 0 ? 32 : 128, i % 3 == 0}, ms, gemms, rng);
      ++i;
    }
  }
  SECTION("a 31B shape at M = 2048") {
    const gemma4::LinearShape& shape = gemma4::kGemma4_31bLinearShapes[2];  // o_sliding
    INFO(shape.name);
    std::vector<WeightOnlyGemm> defaults;
    defaults.push_back(std::move(gemms[0]));
    CheckInt4Gemm({shape.n, shape.k, 32, false}, {2048}, defaults, rng);
  }
}

TEST_CASE("weight-only GEMM orders its streams", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // Four weights back to back on a non-blocking stream (no implicit ordering
  // with the legacy stream), no synchronization between the runs: a run's
  // dequantization must wait for the GEMMs still reading its scratch buffer,
  // in many chunks or one per weight (the buffers rotate across runs), with
  // the side stream dequantizing ahead of the caller's stream or not.
  const Int4Shape shapes[] = {
      {256, 192, 64, false}, {512, 128, 32, true}, {384, 192, 32, false}, {128, 128, 64, true}};
  constexpr int kWeights = 4;
  std::vector<HostInt4> host;
  std::vector<DeviceInt4> device;
  for (const Int4Shape& shape : shapes) {
    host.push_back(MakeInt4(shape, rng));
    device.push_back(UploadInt4(host.back()));
  }
  constexpr int64_t kM = 257;
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  for (const bool ahead : {true, false}) {
    for (const int64_t chunk_rows : {16, 0}) {
      INFO("dequantize_ahead " << ahead << " chunk_rows " << chunk_rows);
      WeightOnlyGemmOptions options;
      options.chunk_rows = chunk_rows;
      options.buffers = 2;
      options.dequantize_multiprocessors = chunk_rows > 0 ? 2 : 0;
      options.dequantize_ahead = ahead;
      auto gemm = WeightOnlyGemm::Create(options);
      REQUIRE_OK(gemm);
      std::vector<std::vector<uint16_t>> x_host;
      std::vector<DeviceBuffer<uint16_t>> x, y;
      for (int i = 0; i < kWeights; ++i) {
        x_host.push_back(RandomActivations(kM * shapes[i].k, rng));
        x.push_back(testing::Upload(x_host[i]));
        y.push_back(Poisoned(kM * shapes[i].n));
      }
      REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the uploads and poison are done
      for (int i = 0; i < kWeights; ++i) {
        REQUIRE_OK(gemm->Run(device[i].weight, Bf16(x[i]), kM, Bf16(y[i]), stream));
      }
      REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
      for (int i = 0; i < kWeights; ++i) {
        INFO("weight " << i);
        CheckGemm(Download(y[i]), ToFloat(host[i].dequantized), ToFloat(x_host[i]), kM, shapes[i].n,
                  shapes[i].k, rng);
      }
    }
  }
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

TEST_CASE("weight-only GEMM takes any row dequantizer", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  // A bf16 "dequantizer" that copies rows of a dense W; N = 40 is not a
  // multiple of 16, so the last chunk has 8 rows.
  constexpr int64_t kN = 40, kK = 96, kM = 5;
  const std::vector<uint16_t> w_host = RandomActivations(kN * kK, rng);
  const std::vector<uint16_t> x_host = RandomActivations(kM * kK, rng);
  const auto w = testing::Upload(w_host);
  const auto x = testing::Upload(x_host);
  auto y = Poisoned(kM * kN);
  WeightOnlyGemmOptions options;
  options.chunk_rows = 16;
  auto gemm = WeightOnlyGemm::Create(options);
  REQUIRE_OK(gemm);
  std::vector<int64_t> seen;
  auto copy_rows = [&](int64_t row_begin, int64_t rows, __nv_bfloat16* out, cudaStream_t stream,
                       int /*multiprocessors*/) -> absl::Status {
    seen.push_back(rows);
    GQ_RETURN_IF_CUDA_ERROR(cudaMemcpyAsync(out, w.data() + row_begin * kK,
                                            rows * kK * sizeof(uint16_t), cudaMemcpyDeviceToDevice,
                                            stream));
    return absl::OkStatus();
  };
  REQUIRE_OK(gemm->Run(copy_rows, kN, kK, Bf16(x), kM, Bf16(y), nullptr));
  CHECK(seen == std::vector<int64_t>{16, 16, 8});
  CheckGemm(Download(y), ToFloat(w_host), ToFloat(x_host), kM, kN, kK, rng);

  // A failing dequantizer's error comes back with its code.
  auto failing = [](int64_t, int64_t, __nv_bfloat16*, cudaStream_t, int) {
    return absl::DataLossError("corrupt block");
  };
  REQUIRE_STATUS_IS(gemm->Run(failing, kN, kK, Bf16(x), kM, Bf16(y), nullptr),
                    absl::StatusCode::kDataLoss);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

TEST_CASE("weight-only GEMM rejects bad arguments", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  WeightOnlyGemmOptions bad;
  bad.buffers = 0;
  REQUIRE_STATUS_IS(WeightOnlyGemm::Create(bad), kInvalid);
  bad = {};
  bad.chunk_rows = 8;
  REQUIRE_STATUS_IS(WeightOnlyGemm::Create(bad), kInvalid);
  bad = {};
  bad.dequantize_multiprocessors = -2;
  REQUIRE_STATUS_IS(WeightOnlyGemm::Create(bad), kInvalid);
  bad.dequantize_multiprocessors = 1 << 20;  // every SM
  REQUIRE_STATUS_IS(WeightOnlyGemm::Create(bad), kInvalid);

  WeightOnlyGemmOptions small;
  small.max_chunk_elements = 1024;  // 8 rows of K = 128: too few
  auto gemm = WeightOnlyGemm::Create(small);
  REQUIRE_OK(gemm);
  const ArgumentScratch scratch = MakeArgumentScratch();
  const uint4* tiles = scratch.tiles;
  const __nv_bfloat162* params = scratch.params;
  const __nv_bfloat16* x = scratch.x;
  __nv_bfloat16* y = scratch.y;
  REQUIRE_STATUS_IS(gemm->Run({tiles, params, 64, 128, 32}, x, 1, y, nullptr), kInvalid);  // K
  REQUIRE_OK(gemm->Run({tiles, params, 16, 64, 32}, x, 1, y, nullptr));  // 16 rows of 64 fit
  REQUIRE_STATUS_IS(gemm->Run({tiles, params, 24, 64, 32}, x, 1, y, nullptr), kInvalid);  // N
  REQUIRE_STATUS_IS(gemm->Run({tiles, params, 16, 64, 32}, x, 0, y, nullptr), kInvalid);  // M
  REQUIRE_STATUS_IS(gemm->Run({tiles, params, 16, 64, 32}, nullptr, 1, y, nullptr), kInvalid);
  REQUIRE_STATUS_IS(gemm->Run({tiles, params, 16, 64, 32}, x, 1, nullptr, nullptr), kInvalid);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

// The wgmma GEMM's weights: bf16(q * scale + bf16(-zero * scale)), or
// bf16(q * scale - min), as its bf16x2 FMA rounds them once. The sums are
// exact in double; the float on the way to bf16 can round once more only
// for a zero below ~1e-4 (a bf16 unit at most, inside CheckGemm's bound).
std::vector<float> WgmmaGemmWeights(const HostInt4& host) {
  const Int4Shape& s = host.shape;
  const int64_t groups = s.k / s.group;
  std::vector<float> w(s.n * s.k);
  for (int64_t row = 0; row < s.n; ++row) {
    for (int64_t col = 0; col < s.k; ++col) {
      const int64_t g = row * groups + col / s.group;
      const double offset = s.min_form
                                ? -static_cast<double>(host.zero[g])
                                : BFloat16ToFloat(FloatToBFloat16(-host.zero[g] * host.scale[g]));
      const double exact =
          host.codes[row * s.k + col] * static_cast<double>(host.scale[g]) + offset;
      w[row * s.k + col] = BFloat16ToFloat(FloatToBFloat16(static_cast<float>(exact)));
    }
  }
  return w;
}

// The wgmma GEMM that dequantizes in its main loop: the same bound, against
// its own weights. Shapes cover a partial weight tile (N not a multiple of
// 128), one and two groups per 64 columns, both zero forms, and token counts
// inside one 256-token tile, across tiles and ragged.
void CheckInt4WgmmaGemm(const Int4Shape& s, std::initializer_list<int64_t> ms,
                        std::mt19937_64& rng) {
  const HostInt4 host = MakeInt4(s, rng);
  const DeviceInt4 device = UploadInt4(host);
  const std::vector<float> w = WgmmaGemmWeights(host);
  for (int64_t m : ms) {
    INFO("N=" << s.n << " K=" << s.k << " group " << s.group << " min form " << s.min_form
              << " M=" << m);
    const std::vector<uint16_t> x_host = RandomActivations(m * s.k, rng);
    const auto x = testing::Upload(x_host);
    auto y = Poisoned(m * s.n);
    REQUIRE_OK(Int4WgmmaGemm(device.weight, Bf16(x), m, Bf16(y), nullptr));
    CheckGemm(Download(y), w, ToFloat(x_host), m, s.n, s.k, rng);
  }
}

TEST_CASE("int4 wgmma GEMM matches a float64 reference", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  if (!Int4WgmmaGemmAvailable()) {
    WARN("skipped: needs an sm_90a build on a compute capability 9.0 GPU");
    return;
  }
  auto rng = testing::MakeRng();
  SECTION("small odd shapes") {
    for (const Int4Shape& s : {Int4Shape{16, 64, 32, false}, Int4Shape{48, 192, 64, true},
                               Int4Shape{272, 192, 192, false}, Int4Shape{528, 128, 32, true},
                               Int4Shape{256, 320, 64, false}}) {
      CheckInt4WgmmaGemm(s, {1, 3, 128, 130, 257}, rng);
    }
  }
  SECTION("E2B shapes") {
    int i = 0;
    for (const gemma4::LinearShape& shape : gemma4::kGemma4E2bLinearShapes) {
      if (shape.n * shape.k > (int64_t{1} << 26)) continue;  // the lm_head, as above
      INFO(shape.name);
      CheckInt4WgmmaGemm({shape.n, shape.k, i % 2 == 0 ? 32 : 128, i % 3 == 0}, {17, 2048}, rng);
      ++i;
    }
  }
  SECTION("31B shapes at M = 2048") {
    for (int index : {2, 7}) {  // o_sliding, down (K = 21504)
      const gemma4::LinearShape& shape = gemma4::kGemma4_31bLinearShapes[index];
      INFO(shape.name);
      CheckInt4WgmmaGemm({shape.n, shape.k, 32, false}, {2048}, rng);
    }
  }
}

TEST_CASE("int4 wgmma GEMM rejects bad arguments", "[cuda][prefill_gemm]") {
  GQ_SKIP_WITHOUT_CUDA();
  const ArgumentScratch scratch = MakeArgumentScratch();
  const uint4* tiles = scratch.tiles;
  const __nv_bfloat162* params = scratch.params;
  const __nv_bfloat16* x = scratch.x;
  __nv_bfloat16* y = scratch.y;
  const Int4MmaWeight w{tiles, params, 64, 128, 32, false};
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  REQUIRE_STATUS_IS(Int4WgmmaGemm({tiles, params, 24, 128, 32}, x, 1, y, nullptr), kInvalid);
  REQUIRE_STATUS_IS(Int4WgmmaGemm({tiles, params, 64, 96, 32}, x, 1, y, nullptr), kInvalid);
  REQUIRE_STATUS_IS(Int4WgmmaGemm(w, x, 0, y, nullptr), kInvalid);
  REQUIRE_STATUS_IS(Int4WgmmaGemm(w, nullptr, 1, y, nullptr), kInvalid);
  REQUIRE_STATUS_IS(Int4WgmmaGemm(w, x + 1, 1, y, nullptr), kInvalid);  // alignment
  REQUIRE_STATUS_IS(Int4WgmmaGemm(w, x, 1, nullptr, nullptr), kInvalid);
  if (!Int4WgmmaGemmAvailable()) {
    REQUIRE_STATUS_IS(Int4WgmmaGemm(w, x, 1, y, nullptr), absl::StatusCode::kFailedPrecondition);
  }
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

// Host only: the chunk schedule.
TEST_CASE("prefill chunk schedule", "[prefill_gemm]") {
  auto check = [](const WeightOnlyGemmOptions& o, int64_t n, int64_t k, int64_t m,
                  int64_t expected_first, int64_t max_rows) {
    INFO("N=" << n << " K=" << k << " M=" << m);
    auto chunks = PrefillChunkRows(o, n, k, m);
    REQUIRE_OK(chunks);
    REQUIRE(!chunks->empty());
    CHECK(chunks->front() == expected_first);
    CHECK(std::accumulate(chunks->begin(), chunks->end(), int64_t{0}) == n);
    for (size_t i = 0; i < chunks->size(); ++i) {
      CHECK((*chunks)[i] > 0);
      CHECK((*chunks)[i] <= max_rows);
      if (i + 1 < chunks->size()) CHECK((*chunks)[i] % 16 == 0);
    }
    // Chunks after the first are equal but for the last.
    for (size_t i = 2; i + 1 < chunks->size(); ++i) CHECK((*chunks)[i] == (*chunks)[1]);
    return *chunks;
  };
  const WeightOnlyGemmOptions defaults;
  // As many rows as the scratch holds: 64 Mi / 5376 and 64 Mi / 21504, to 16.
  check(defaults, 21504, 5376, 2048, 12480, 12480);
  check(defaults, 5376, 21504, 8192, 3120, 3120);
  check(defaults, 262144, 5376, 1, 12480, 12480);
  // Fewer rows than a chunk: one chunk.
  CHECK(check(defaults, 1024, 5376, 2048, 1024, 1024) == std::vector<int64_t>{1024});

  WeightOnlyGemmOptions knobs;
  knobs.chunk_rows = 1024;
  knobs.first_chunk_rows = 256;
  // 8192 - 256 = 7936 in ceil(7936 / 1024) = 8 equal chunks of 992.
  const auto chunks = check(knobs, 8192, 5376, 2048, 256, 1024);
  CHECK(chunks.size() == 9);
  CHECK(chunks[1] == 992);
  knobs.first_chunk_rows = 0;
  check(knobs, 40, 64, 1, 40, 40);  // N not a multiple of 16

  WeightOnlyGemmOptions small;
  small.max_chunk_elements = 16 * 5376 * 3 + 100;  // 48 rows of K = 5376
  check(small, 21504, 5376, 2048, 48, 48);
  REQUIRE_STATUS_IS(PrefillChunkRows(small, 21504, 21504, 2048),
                    absl::StatusCode::kInvalidArgument);  // 16 rows do not fit
  REQUIRE_STATUS_IS(PrefillChunkRows(defaults, 0, 5376, 2048), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(PrefillChunkRows(defaults, 16, 5376, 0), absl::StatusCode::kInvalidArgument);
  knobs.first_chunk_rows = 24;
  REQUIRE_STATUS_IS(PrefillChunkRows(knobs, 1024, 64, 1), absl::StatusCode::kInvalidArgument);
}

// Host only: the SMs that dequantize beside a GEMM.
TEST_CASE("prefill SM split", "[prefill_gemm]") {
  WeightOnlyGemmOptions automatic;
  automatic.dequantize_multiprocessors = kPrefillAutoSplit;
  CHECK(PrefillDequantizeMultiprocessors(automatic, 2048, 132) == 8);
  CHECK(PrefillDequantizeMultiprocessors(automatic, 512, 132) == 32);
  CHECK(PrefillDequantizeMultiprocessors(automatic, 8192, 132) == 2);
  CHECK(PrefillDequantizeMultiprocessors(automatic, 300, 132) == 33);  // at most a quarter
  CHECK(PrefillDequantizeMultiprocessors(automatic, 255, 132) == 0);   // memory bound: no split
  CHECK(PrefillDequantizeMultiprocessors(automatic, 1, 132) == 0);
  WeightOnlyGemmOptions fixed;
  fixed.dequantize_multiprocessors = 5;
  CHECK(PrefillDequantizeMultiprocessors(fixed, 2048, 132) == 5);
  fixed.dequantize_multiprocessors = 0;
  CHECK(PrefillDequantizeMultiprocessors(fixed, 2048, 132) == 0);
}

}  // namespace
}  // namespace gquant::cuda
