// The GPU quantizers (cuda/gpu_quantize.cuh) against gquant::Quantize on the
// CPU, which is the contract they implement (the CPU quantizers are checked
// against float64 formulas in quantize_minmax_test.cc and
// quantize_hqq_test.cc). Fresh random matrices every run, outputs poisoned
// before each call; the GPU's error statistics are also checked against a
// float64 recomputation from its own outputs.
#include "gpu_quantize.cuh"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "cuda_test_util.h"
#include "gquant/gemma4/linear_shapes.h"
#include "gquant/quantize.h"
#include "gquant/quantize_checkpoint.h"
#include "gquant/recipe.h"
#include "gquant/thread_pool.h"

namespace gquant::cuda {
namespace {

// ---- bounds ----
// Min-max and scale-only HQQ perform the CPU's float32/float64 operations in
// the CPU's order (no FMA contraction, the same rounding calls), so codes,
// scale and zero_point must be bit-identical.
//
// Asymmetric HQQ differs in one operation: |x|^(p-1) in the shrinkage step,
// libm powf on the CPU against float64 pow rounded to float32 on the GPU
// (each within an ulp of the true value). It only runs where the residual
// |W - W_r| exceeds ~beta^(-1/(2-p)) ~ 0.15, i.e. in groups with a range
// above ~4 (our heavy-tailed, outlier and wide rows). One ulp there changes a
// zero update by ~1e-7 relative; a code flips only if W * s_inv + z then
// crosses a rounding boundary, and a changed zero feeds the next iterations of
// that group only (the early stop compares matrix means that agree to
// ~1e-15). So we allow 0.1% of the codes (at least 2) to differ, and the
// matrix's relative reconstruction error to differ by 0.1% of itself; the
// scale (1 / s_inv, never touched by the solver) must still be bit-identical.
constexpr double kHqqCodeMismatchFraction = 1e-3;
constexpr int64_t kHqqMinAllowedMismatches = 2;
constexpr double kHqqRelativeErrorTolerance = 1e-3;
// Error statistics: the same per-element terms summed in another order
// (float64), ~1e-16 relative per add.
constexpr double kStatsTolerance = 1e-9;
// The recomputation below takes w - deq in float64 where the min-max path
// takes it in float32 (half an ulp, 6e-8 relative, per term).
constexpr double kRecomputedStatsTolerance = 1e-6;

enum class Data { kNormal, kHeavyTailed, kOutliers, kMixed };

const char* DataName(Data d) {
  switch (d) {
    case Data::kNormal:
      return "normal";
    case Data::kHeavyTailed:
      return "heavy-tailed";
    case Data::kOutliers:
      return "outliers";
    case Data::kMixed:
      return "mixed";
  }
  return "?";
}

// Weights like a linear layer's (sigma 0.02), Student-t(3) tails, normal
// weights with 0.2% outliers of magnitude 1-20, or (mixed) rows cycling
// through a wide row (sigma 5: residuals above HQQ's shrink threshold), a
// constant row (exactly 0 for row 1), outliers, heavy tails and normal, with
// a group of range < 1e-4 (HQQ's |max - min| <= 1e-4 guard) in row 0 and a
// group of subnormals in row 3.
std::vector<float> RandomMatrix(Data kind, int64_t rows, int64_t cols, std::mt19937_64& rng) {
  std::normal_distribution<float> normal(0.0f, 0.02f);
  std::student_t_distribution<float> student(3.0f);
  std::uniform_real_distribution<float> uniform(0.0f, 1.0f);
  std::vector<float> w(rows * cols);
  for (int64_t r = 0; r < rows; ++r) {
    const int row_kind = kind == Data::kMixed         ? static_cast<int>(r % 5)
                         : kind == Data::kNormal      ? 4
                         : kind == Data::kHeavyTailed ? 3
                                                      : 2;
    const float constant = r == 1 ? 0.0f : normal(rng) * 5;
    for (int64_t c = 0; c < cols; ++c) {
      float& v = w[r * cols + c];
      switch (row_kind) {  // Data's order; mixed rows start with the unusual ones
        case 0:
          v = 250 * normal(rng);  // sigma 5
          break;
        case 1:
          v = constant;
          break;
        case 2:
          v = normal(rng);
          if (uniform(rng) < 0.002f) v = (uniform(rng) < 0.5f ? -1 : 1) * (1 + 19 * uniform(rng));
          break;
        case 3:
          v = 0.02f * student(rng);
          break;
        default:
          v = normal(rng);
          break;
      }
    }
  }
  if (kind == Data::kMixed && cols >= 32) {
    for (int64_t c = 0; c < 32; ++c) w[c] = 0.3f + 1e-6f * uniform(rng);
  }
  // A group of subnormals of both signs (row 3), which the quantizers keep
  // rather than flush (quantize.h): the GPU must not flush them either.
  if (kind == Data::kMixed && rows >= 4 && cols >= 32) {
    for (int64_t c = 0; c < 32; ++c) {
      const float tiny = std::numeric_limits<float>::denorm_min() * (1 + 1000 * uniform(rng));
      w[3 * cols + c] = c % 3 == 0 ? -tiny : tiny;
    }
  }
  return w;
}

std::vector<std::byte> Encode(const std::vector<float>& w, DType dtype) {
  std::vector<std::byte> bytes(w.size() * DTypeSize(dtype));
  for (size_t i = 0; i < w.size(); ++i) {
    if (dtype == DType::kF32) {
      std::memcpy(bytes.data() + 4 * i, &w[i], 4);
    } else {
      const uint16_t bits = dtype == DType::kBF16 ? FloatToBFloat16(w[i]) : FloatToHalf(w[i]);
      std::memcpy(bytes.data() + 2 * i, &bits, 2);
    }
  }
  return bytes;
}

std::vector<float> Decode(const std::vector<std::byte>& bytes, DType dtype, size_t count) {
  std::vector<float> w(count);
  REQUIRE_OK(ConvertToFloat(dtype, bytes, w));
  return w;
}

struct Quantized {
  absl::Status status;
  std::vector<int8_t> codes;
  std::vector<float> scale;
  std::vector<float> zero;
  ErrorStats stats;
};

// One quantization on the CPU or the GPU into outputs poisoned with 0xff
// bytes (codes -1, outside every 4-bit range; NaN scale and zero).
Quantized Run(bool gpu, const QuantConfig& config, DType dtype, const std::vector<std::byte>& bytes,
              int64_t rows, int64_t cols, const HqqOptions& hqq = {}, ThreadPool* pool = nullptr) {
  const int64_t group = config.group_size == kPerRowGroupSize ? cols : config.group_size;
  const int64_t groups = rows * (cols / group);
  Quantized q;
  q.codes.assign(rows * cols, static_cast<int8_t>(-1));
  q.scale.assign(groups, std::bit_cast<float>(0xffffffffu));
  q.zero.assign(groups, std::bit_cast<float>(0xffffffffu));
  QuantizeOptions options;
  options.hqq = hqq;
  options.pool = pool;
  options.error_stats = &q.stats;
  const QuantizedSpans spans{q.codes, q.scale, q.zero};
  q.status = gpu ? QuantizeOnGpu(config, dtype, bytes, rows, cols, spans, options)
                 : Quantize(config, dtype, bytes, rows, cols, spans, options);
  return q;
}

// Relative reconstruction error in float64 from the outputs themselves.
double RecomputedRelativeError(const QuantConfig& config, const std::vector<float>& w, int64_t rows,
                               int64_t cols, const Quantized& q) {
  std::vector<float> deq(w.size());
  REQUIRE_OK(Dequantize(config, rows, cols, q.codes, q.scale, q.zero, deq));
  double err = 0, ref = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    const double d = static_cast<double>(w[i]) - deq[i];
    err += d * d;
    ref += static_cast<double>(w[i]) * w[i];
  }
  return std::sqrt(err / ref);
}

int64_t CountDifferentBits(const std::vector<float>& a, const std::vector<float>& b) {
  int64_t n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    n += std::bit_cast<uint32_t>(a[i]) != std::bit_cast<uint32_t>(b[i]);
  }
  return n;
}

// Requires identical outputs, reporting the first difference.
void RequireBitIdentical(const Quantized& gpu, const Quantized& cpu) {
  for (size_t i = 0; i < cpu.codes.size(); ++i) {
    if (gpu.codes[i] != cpu.codes[i]) {
      INFO("first differing code at flat index " << i);
      REQUIRE(int{gpu.codes[i]} == int{cpu.codes[i]});
    }
  }
  for (size_t g = 0; g < cpu.scale.size(); ++g) {
    if (std::bit_cast<uint32_t>(gpu.scale[g]) != std::bit_cast<uint32_t>(cpu.scale[g]) ||
        std::bit_cast<uint32_t>(gpu.zero[g]) != std::bit_cast<uint32_t>(cpu.zero[g])) {
      INFO("first differing group " << g << ": scale " << gpu.scale[g] << " vs " << cpu.scale[g]
                                    << ", zero " << gpu.zero[g] << " vs " << cpu.zero[g]);
      REQUIRE(std::bit_cast<uint32_t>(gpu.scale[g]) == std::bit_cast<uint32_t>(cpu.scale[g]));
      REQUIRE(std::bit_cast<uint32_t>(gpu.zero[g]) == std::bit_cast<uint32_t>(cpu.zero[g]));
    }
  }
}

struct Shape {
  int64_t rows, cols;
};

// Small odd shapes and one real one (E2B q_proj, 2048 x 1536).
std::vector<Shape> TestShapes() {
  const gemma4::LinearShape& real = gemma4::kGemma4E2bLinearShapes[0];
  return {{3, 96}, {17, 384}, {real.n, real.k}};
}

// Runs CPU and GPU on fresh data of every kind (the real shape: mixed only),
// both source dtypes, and checks them with `compare`.
template <typename Compare>
void ForEachCase(const std::vector<QuantConfig>& configs, const HqqOptions& hqq, Compare compare) {
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  for (const QuantConfig& config : configs) {
    for (const Shape& shape : TestShapes()) {
      const int64_t group = config.group_size == kPerRowGroupSize ? shape.cols : config.group_size;
      if (shape.cols % group != 0) continue;
      const bool real = shape.rows > 1000;
      for (Data kind : {Data::kNormal, Data::kHeavyTailed, Data::kOutliers, Data::kMixed}) {
        if (real && kind != Data::kMixed) continue;
        for (DType dtype : {DType::kBF16, DType::kF32}) {
          INFO(QuantConfigToString(config) << ", " << shape.rows << " x " << shape.cols << ", "
                                           << DataName(kind) << ", " << DTypeName(dtype));
          const std::vector<std::byte> bytes =
              Encode(RandomMatrix(kind, shape.rows, shape.cols, rng), dtype);
          const std::vector<float> w = Decode(bytes, dtype, shape.rows * shape.cols);
          const Quantized cpu =
              Run(false, config, dtype, bytes, shape.rows, shape.cols, hqq, &pool);
          const Quantized gpu = Run(true, config, dtype, bytes, shape.rows, shape.cols, hqq);
          REQUIRE_OK(cpu.status);
          REQUIRE_OK(gpu.status);
          compare(config, w, shape, cpu, gpu);
        }
      }
    }
  }
}

void RequireStatsMatch(const QuantConfig& config, const std::vector<float>& w, const Shape& shape,
                       const Quantized& gpu, const Quantized& reference) {
  REQUIRE(gpu.stats.reference_sq ==
          Approx(reference.stats.reference_sq).epsilon(kStatsTolerance).margin(0));
  REQUIRE(gpu.stats.RelativeError() ==
          Approx(RecomputedRelativeError(config, w, shape.rows, shape.cols, gpu))
              .epsilon(kRecomputedStatsTolerance)
              .margin(1e-30));
}

// Codes and params bit-identical to the CPU's; stats equal up to summation order.
void RequireSameAsCpu(const QuantConfig& config, const std::vector<float>& w, const Shape& shape,
                      const Quantized& cpu, const Quantized& gpu) {
  RequireBitIdentical(gpu, cpu);
  RequireStatsMatch(config, w, shape, gpu, cpu);
  REQUIRE(gpu.stats.error_sq == Approx(cpu.stats.error_sq).epsilon(kStatsTolerance).margin(0));
}

TEST_CASE("GPU min-max is bit-identical to the CPU", "[cuda][gpu_quantize]") {
  GQ_SKIP_WITHOUT_CUDA();
  const std::vector<QuantConfig> configs = {
      {4, 32, false, QuantMethod::kMinMax},
      {4, 32, true, QuantMethod::kMinMax},
      {8, kPerRowGroupSize, true, QuantMethod::kMinMax},
      {8, 32, true, QuantMethod::kMinMax},
      {8, 64, false, QuantMethod::kMinMax},
      {5, 32, false, QuantMethod::kMinMax},
      {6, 32, true, QuantMethod::kMinMax},
  };
  ForEachCase(configs, {}, RequireSameAsCpu);
}

TEST_CASE("GPU scale-only HQQ is bit-identical to the CPU", "[cuda][gpu_quantize]") {
  GQ_SKIP_WITHOUT_CUDA();
  const std::vector<QuantConfig> configs = {
      {4, 32, true, QuantMethod::kHqq},
      {8, 32, true, QuantMethod::kHqq},
      {6, 64, true, QuantMethod::kHqq},
  };
  ForEachCase(configs, {}, RequireSameAsCpu);
}

// Asymmetric HQQ within the bound at the top of the file.
void RequireHqqClose(const QuantConfig& config, const std::vector<float>& w, const Shape& shape,
                     const Quantized& cpu, const Quantized& gpu) {
  int64_t code_mismatches = 0;
  for (size_t i = 0; i < cpu.codes.size(); ++i) {
    REQUIRE(gpu.codes[i] >= 0);  // also catches unwritten (poisoned) codes
    REQUIRE(gpu.codes[i] <= 15);
    code_mismatches += gpu.codes[i] != cpu.codes[i];
  }
  const int64_t zero_mismatches = CountDifferentBits(gpu.zero, cpu.zero);
  CAPTURE(code_mismatches, zero_mismatches, cpu.codes.size(), cpu.zero.size());
  REQUIRE(static_cast<double>(code_mismatches) <=
          std::max<double>(kHqqMinAllowedMismatches,
                           kHqqCodeMismatchFraction * static_cast<double>(cpu.codes.size())));
  REQUIRE(CountDifferentBits(gpu.scale, cpu.scale) == 0);
  for (float z : gpu.zero) REQUIRE(std::isfinite(z));
  REQUIRE(gpu.stats.RelativeError() ==
          Approx(cpu.stats.RelativeError()).epsilon(kHqqRelativeErrorTolerance).margin(0));
  RequireStatsMatch(config, w, shape, gpu, cpu);
}

TEST_CASE("GPU asymmetric HQQ matches the CPU within the bound", "[cuda][gpu_quantize]") {
  GQ_SKIP_WITHOUT_CUDA();
  const std::vector<QuantConfig> configs = {{4, 32, false, QuantMethod::kHqq},
                                            {4, 128, false, QuantMethod::kHqq}};
  SECTION("reference solver (one-past-best zero)") { ForEachCase(configs, {}, RequireHqqClose); }
  SECTION("keep_best_iterate") {
    HqqOptions hqq;
    hqq.keep_best_iterate = true;
    ForEachCase({configs[0]}, hqq, RequireHqqClose);
  }
  SECTION("no early stop, p = 1") {
    HqqOptions hqq;
    hqq.early_stop = false;
    hqq.lp_norm = 1.0f;
    ForEachCase({configs[0]}, hqq, RequireHqqClose);
  }
}

TEST_CASE("GPU HQQ is deterministic and takes F16", "[cuda][gpu_quantize]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const gemma4::LinearShape& real = gemma4::kGemma4E2bLinearShapes[0];
  const std::vector<std::byte> bytes =
      Encode(RandomMatrix(Data::kMixed, real.n, real.k, rng), DType::kF16);
  const std::vector<float> w = Decode(bytes, DType::kF16, real.n * real.k);
  ThreadPool pool(0);
  for (const QuantConfig& config :
       {QuantConfig{4, 32, false, QuantMethod::kHqq}, QuantConfig{8, 32, true, QuantMethod::kHqq},
        QuantConfig{4, 32, false, QuantMethod::kMinMax}}) {
    INFO(QuantConfigToString(config));
    const Quantized first = Run(true, config, DType::kF16, bytes, real.n, real.k);
    const Quantized second = Run(true, config, DType::kF16, bytes, real.n, real.k);
    REQUIRE_OK(first.status);
    REQUIRE_OK(second.status);
    RequireBitIdentical(second, first);
    REQUIRE(std::bit_cast<uint64_t>(second.stats.error_sq) ==
            std::bit_cast<uint64_t>(first.stats.error_sq));
    const Quantized cpu = Run(false, config, DType::kF16, bytes, real.n, real.k, {}, &pool);
    REQUIRE_OK(cpu.status);
    if (config.method == QuantMethod::kHqq && !config.symmetric) {
      RequireHqqClose(config, w, {real.n, real.k}, cpu, first);
    } else {
      RequireBitIdentical(first, cpu);
    }
  }
}

TEST_CASE("GPU quantizers reject NaN/Inf weights as the CPU does", "[cuda][gpu_quantize]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const int64_t rows = 9, cols = 128;
  std::uniform_int_distribution<int64_t> row(0, rows - 1), col(0, cols - 1);
  for (const QuantConfig& config : {QuantConfig{4, 32, false, QuantMethod::kMinMax},
                                    QuantConfig{4, 32, false, QuantMethod::kHqq},
                                    QuantConfig{8, 64, true, QuantMethod::kHqq}}) {
    for (DType dtype : {DType::kBF16, DType::kF32}) {
      for (float bad :
           {std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity()}) {
        std::vector<float> w = RandomMatrix(Data::kNormal, rows, cols, rng);
        const int64_t r = row(rng), c = col(rng);
        w[r * cols + c] = bad;
        // A second bad element later in flat order: the first one is reported.
        w[rows * cols - 1] = std::numeric_limits<float>::infinity();
        INFO(QuantConfigToString(config)
             << ", " << DTypeName(dtype) << ", bad " << bad << " at [" << r << ", " << c << "]");
        const std::vector<std::byte> bytes = Encode(w, dtype);
        const Quantized gpu = Run(true, config, dtype, bytes, rows, cols);
        const Quantized cpu = Run(false, config, dtype, bytes, rows, cols);
        REQUIRE_STATUS_IS(gpu.status, absl::StatusCode::kInvalidArgument);
        REQUIRE(
            std::string(gpu.status.message()).find(absl::StrFormat("[row %d, column %d]", r, c)) !=
            std::string::npos);
        REQUIRE(gpu.status == cpu.status);
      }
    }
  }
}

TEST_CASE("GPU quantizers check arguments as the CPU does", "[cuda][gpu_quantize]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  const int64_t rows = 4, cols = 64;
  const std::vector<std::byte> bytes =
      Encode(RandomMatrix(Data::kNormal, rows, cols, rng), DType::kBF16);
  std::vector<int8_t> codes(rows * cols);
  std::vector<float> scale(rows * 2), zero(rows * 2);
  const QuantConfig config{4, 32, false, QuantMethod::kHqq};
  const auto both = [&](const QuantConfig& c, DType dtype, std::span<const std::byte> weight,
                        int64_t r, int64_t k, const QuantizedSpans& out) {
    const absl::Status gpu = QuantizeOnGpu(c, dtype, weight, r, k, out);
    const absl::Status cpu = Quantize(c, dtype, weight, r, k, out);
    INFO("GPU: " << gpu.ToString() << "\nCPU: " << cpu.ToString());
    REQUIRE(absl::IsInvalidArgument(gpu));
    REQUIRE(gpu == cpu);
  };
  const QuantizedSpans out{codes, scale, zero};
  both(config, DType::kF64, bytes, rows, cols, out);
  both(config, DType::kBF16, std::span(bytes).first(bytes.size() - 2), rows, cols, out);
  both(config, DType::kBF16, bytes, rows, cols, {std::span(codes).first(10), scale, zero});
  both(config, DType::kBF16, bytes, rows, cols, {codes, std::span(scale).first(7), zero});
  both(config, DType::kBF16, bytes, rows, cols, {codes, scale, std::span(zero).first(1)});
  both({4, 48, false, QuantMethod::kHqq}, DType::kBF16, bytes, rows, cols, out);
  both({8, 32, false, QuantMethod::kHqq}, DType::kBF16, bytes, rows, cols, out);
  both({3, 32, true, QuantMethod::kMinMax}, DType::kBF16, bytes, rows, cols, out);
  both(config, DType::kBF16, bytes, -1, cols, out);
  // No rows: nothing to do, as on the CPU.
  REQUIRE_OK(QuantizeOnGpu(config, DType::kBF16, {}, 0, cols, {{}, {}, {}}));
}

std::string ReadFile(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

TEST_CASE("QuantizeCheckpoint with the GPU quantizer matches the CPU run", "[cuda][gpu_quantize]") {
  GQ_SKIP_WITHOUT_CUDA();
  const std::string input = testing::TestDataDir() + "/tiny-31b/bf16";
  // default: min-max everywhere (bit-identical, so the files are too);
  // sensitive: int4 HQQ for most weights (the bound above).
  for (const char* recipe_name : {"default", "sensitive"}) {
    INFO(recipe_name);
    auto recipe = Recipe::Load(recipe_name);
    REQUIRE_OK(recipe);
    testing::TempDir cpu_out, gpu_out;
    QuantizeJobOptions options;
    options.input = input;
    options.threads = 2;
    options.output_dir = cpu_out.path().string();
    auto cpu = QuantizeCheckpoint(*recipe, options);
    options.output_dir = gpu_out.path().string();
    options.quantizer = QuantizeOnGpu;
    auto gpu = QuantizeCheckpoint(*recipe, options);
    REQUIRE_OK(cpu);
    REQUIRE_OK(gpu);
    REQUIRE(gpu->tensors.size() == cpu->tensors.size());
    const bool exact = std::string(recipe_name) == "default";
    for (size_t i = 0; i < cpu->tensors.size(); ++i) {
      const TensorReport& c = cpu->tensors[i];
      const TensorReport& g = gpu->tensors[i];
      INFO(c.name);
      REQUIRE(g.name == c.name);
      if (!c.config) continue;
      REQUIRE(g.relative_error > 0);
      // Asymmetric HQQ within its bound; everything else bit-identical, so
      // the errors differ only by summation order.
      const bool bit_identical = c.config->method == QuantMethod::kMinMax || c.config->symmetric;
      REQUIRE(g.relative_error ==
              Approx(c.relative_error)
                  .epsilon(bit_identical ? kStatsTolerance : kHqqRelativeErrorTolerance)
                  .margin(0));
    }
    if (exact) {
      REQUIRE(ReadFile(gpu_out.path() / "model.safetensors") ==
              ReadFile(cpu_out.path() / "model.safetensors"));
    }
  }
}

}  // namespace
}  // namespace gquant::cuda
