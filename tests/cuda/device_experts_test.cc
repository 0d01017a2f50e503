// DeviceExperts (device_experts.cuh) and the kernel under its decode path,
// Int4MmaGemvSelected (int4_mma_gemv.cuh). Int4 experts are quantized by
// gquant's min-max quantizer from fresh random weights, packed for the CUDA
// layout and uploaded; they run with ids on the device (RunSelected, also
// replayed from a CUDA graph with new ids) and chosen on the host (Run), and
// every output row is checked against a float64 reference over the
// dequantized weights of the expert it should have used. Also: bf16 experts
// (FromFloat) and the argument checks. Outputs are poisoned before each run.
#include "device_experts.cuh"

#include <cuda_bf16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <functional>
#include <random>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "bf16_test_data.h"
#include "cuda_test_util.h"
#include "device_buffer.cuh"
#include "device_linear.cuh"
#include "gquant/dtype.h"
#include "gquant/pack.h"
#include "gquant/quantize.h"
#include "gquant/quantized_checkpoint.h"
#include "gquant/status.h"
#include "gquant/thread_pool.h"
#include "int4_mma_gemv.cuh"

namespace gquant::cuda {
namespace {

using Kind = QuantizedWeightInfo::Kind;
using testing::AsBf16;

// The bounds device_linear_test.cc derives for DeviceLinear::Run (and
// int4_gemv_test.cc states norm-wise for the GEMV), reused: per output
//   |y − ref| <= 2^-8 |ref| + (2^-8 + 2^-10) T,
// T = Σ_k m_k |x_k| with m_k the size of weight k's terms ((|q| + |z|) s,
// |q s| + |min|, or |w| for bf16): the bf16 rounding of the output, the bf16
// rounding of each weight on the prefill path (int4 at M > 16), and fp32
// accumulation. Norm-wise ||y − ref|| / ||ref|| < 2^-8 + 1e-4 where the
// weights reach the product exactly (int4 at M <= 16, so every RunSelected
// slot, and bf16 at any M): the output rounding averages ~1.2e-3; 2^-7 on the
// prefill path, whose weight rounding adds an error of the same size.
constexpr double kBf16Rounding = 0x1p-8;
constexpr double kTermBound = 0x1p-8 + 0x1p-10;
constexpr double kExactWeightNorm = 0x1p-8 + 1e-4;
constexpr double kRoundedWeightNorm = 0x1p-7;

// `count` experts of [n, k].
struct ExpertShape {
  const char* name;
  int64_t n, k;
  int count;
};
// Gemma 4 26B-A4B (hidden 2816, expert intermediate 704, 128 experts): gate
// and up stacked along N, and down. Plus a small one.
constexpr ExpertShape kGateUp26b{"26B-A4B gate_up", 1408, 2816, 128};
constexpr ExpertShape kDown26b{"26B-A4B down", 2816, 704, 128};
constexpr ExpertShape kSmall{"small", 64, 128, 16};

ExpertShape WithCount(ExpertShape shape, int count) {
  shape.count = count;
  return shape;
}

// A 4-bit min-max quantization.
struct Int4Spec {
  int group;
  bool symmetric;
  // Symmetric only: zero point 8 stored as the min 8 s (the min form, which
  // GGUF Q4_K unpacks into): the same weights, the kernels' other zero form.
  bool min_form;
  int bits = 4;  // 8: int8 experts (cuda_int8_rows, Int8GemvSelected), no min form
};

// Group 32 asymmetric, and the largest of 128 / 64 dividing K symmetric in
// the min form (and, with `all`, in the zero-point form).
std::vector<Int4Spec> SpecsFor(const ExpertShape& shape, bool all) {
  const int group = shape.k % 128 == 0 ? 128 : 64;
  std::vector<Int4Spec> specs = {{32, false, false}, {group, true, true}};
  if (all) specs.push_back({group, true, false});
  return specs;
}

// Experts in gquant's unpacked form (what the reference reads) and packed
// for the CUDA layout (what DeviceExperts uploads).
struct HostExperts {
  std::vector<UnpackedMatrix> unpacked;
  std::vector<PackedMatrix> packed;

  int count() const { return static_cast<int>(unpacked.size()); }
  int64_t n() const { return unpacked.front().info.rows; }
  int64_t k() const { return unpacked.front().info.cols; }
};

// One expert: normal weights from `seed` (weights is scratch of n k floats),
// quantized and packed.
absl::Status QuantizeAndPack(int64_t n, int64_t k, const Int4Spec& spec, uint64_t seed,
                             std::vector<float>& weights, UnpackedMatrix& u, PackedMatrix& packed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> value(0.0f, 0.05f);
  for (float& w : weights) w = value(rng);
  const int64_t params = n * (k / spec.group);
  u.info = {spec.min_form    ? Kind::kMin
            : spec.bits == 8 ? Kind::kIntx
                             : Kind::kInt4,
            spec.bits, n, k, spec.group};
  u.codes.resize(n * k);
  u.scale.resize(params);
  u.zero.resize(params);
  const QuantConfig config{
      .bits = spec.bits, .group_size = spec.group, .symmetric = spec.symmetric};
  GQ_RETURN_IF_ERROR(Quantize(config, DType::kF32, std::as_bytes(std::span<const float>(weights)),
                              n, k, {u.codes, u.scale, u.zero}));
  if (spec.min_form) {
    for (int64_t i = 0; i < params; ++i) {
      if (u.zero[i] != 8.0f) return absl::InternalError("a symmetric zero point is not 8");
      u.zero[i] *= u.scale[i];  // exact: 8 times a bf16 value is one
    }
  }
  GQ_ASSIGN_OR_RETURN(packed, PackMatrix(u.view(), PackBackend::kCuda));
  // The reference reads the unpacked values: the packed ones must equal them.
  if (!packed.exact) return absl::InternalError("the packed expert is not exact");
  return absl::OkStatus();
}

// shape.count experts, one seed each from `rng`, quantized in parallel
// (128 experts of the 26B gate_up are half a billion weights).
HostExperts MakeExperts(const ExpertShape& shape, const Int4Spec& spec, std::mt19937_64& rng,
                        ThreadPool& pool) {
  const int count = shape.count;
  std::vector<uint64_t> seeds(count);
  for (uint64_t& seed : seeds) seed = rng();
  HostExperts host{std::vector<UnpackedMatrix>(count), std::vector<PackedMatrix>(count)};
  std::vector<absl::Status> statuses(count);  // Catch's macros are not thread-safe
  pool.ParallelFor(count, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> weights(shape.n * shape.k);
    for (int64_t e = begin; e < end; ++e) {
      statuses[e] = QuantizeAndPack(shape.n, shape.k, spec, seeds[e], weights, host.unpacked[e],
                                    host.packed[e]);
    }
  });
  for (int e = 0; e < count; ++e) {
    INFO("expert " << e);
    REQUIRE_OK(statuses[e]);
  }
  return host;
}

DeviceExperts Upload(const HostExperts& host, std::string_view name) {
  absl::StatusOr<DeviceExperts> experts = DeviceExperts::FromPacked(host.packed, name);
  REQUIRE_OK(experts);
  return *std::move(experts);
}

// Row r of a weight in float64 (w) and the sizes of its terms (see the bound).
using RowFn = std::function<void(int64_t r, std::span<double> w, std::span<double> size)>;

RowFn Int4Row(const UnpackedMatrix& u) {
  return [&u](int64_t r, std::span<double> w, std::span<double> size) {
    const int64_t k = u.info.cols, group = u.info.group_size, groups = k / group;
    const bool min = u.info.zero_form() == ZeroForm::kMin;
    for (int64_t c = 0; c < k; ++c) {
      const double q = u.codes[r * k + c];
      const double s = u.scale[r * groups + c / group], z = u.zero[r * groups + c / group];
      w[c] = min ? q * s - z : (q - z) * s;
      size[c] = min ? std::abs(q * s) + std::abs(z) : (std::abs(q) + std::abs(z)) * s;
    }
  };
}

// A float32 matrix as FromFloat stores it (bf16, round to nearest even).
RowFn Bf16Row(std::span<const float> values, int64_t k) {
  return [values, k](int64_t r, std::span<double> w, std::span<double> size) {
    for (int64_t c = 0; c < k; ++c) {
      w[c] = BFloat16ToFloat(FloatToBFloat16(values[r * k + c]));
      size[c] = std::abs(w[c]);
    }
  };
}

// One output row in float64 and the T of each of its entries.
struct RowReference {
  std::vector<double> y, terms;
};

RowReference Reference(int64_t n, int64_t k, const RowFn& row, std::span<const float> x,
                       ThreadPool& pool) {
  RowReference ref{std::vector<double>(n), std::vector<double>(n)};
  pool.ParallelFor(n, 16, [&](int64_t begin, int64_t end) {
    std::vector<double> w(k), size(k);
    for (int64_t r = begin; r < end; ++r) {
      row(r, w, size);
      double y = 0, terms = 0;
      for (int64_t c = 0; c < k; ++c) {
        y += w[c] * x[c];
        terms += size[c] * std::abs(x[c]);
      }
      ref.y[r] = y;
      ref.terms[r] = terms;
    }
  });
  return ref;
}

// Rows i of x ([rows, k]) times `row`'s weight.
std::vector<RowReference> References(int64_t n, int64_t k, const RowFn& row,
                                     std::span<const float> x, int64_t rows, ThreadPool& pool) {
  std::vector<RowReference> refs;
  for (int64_t i = 0; i < rows; ++i) {
    refs.push_back(Reference(n, k, row, x.subspan(i * k, k), pool));
  }
  return refs;
}

// Checks `got` (rows of n outputs, one per reference): every output within
// the bound above (an unwritten, NaN, output fails), and the error's norm
// over all rows below norm_bound relative to the reference's.
void CheckRows(std::span<const float> got, const std::vector<RowReference>& want,
               double norm_bound) {
  const size_t n = want.front().y.size();
  REQUIRE(got.size() == want.size() * n);
  double err2 = 0, ref2 = 0;
  for (size_t row = 0; row < want.size(); ++row) {
    INFO("output row " << row);
    const RowReference& ref = want[row];
    const std::span<const float> y = got.subspan(row * n, n);
    testing::RequireClose(
        y, ref.y,
        [&](size_t i) { return kBf16Rounding * std::abs(ref.y[i]) + kTermBound * ref.terms[i]; },
        "y");
    for (size_t i = 0; i < n; ++i) {
      err2 += (y[i] - ref.y[i]) * (y[i] - ref.y[i]);
      ref2 += ref.y[i] * ref.y[i];
    }
  }
  const double relative = std::sqrt(err2 / ref2);
  CAPTURE(relative);
  REQUIRE(relative < norm_bound);
}

// The buffer's floats once all work on the device has finished (the prefill
// path runs on a side stream).
std::vector<float> Download(const DeviceBuffer<uint16_t>& buffer) {
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  return testing::DownloadBf16(buffer);
}

// `slots` ids uniform over [0, count); for two or more slots the last
// repeats the first (two slots on one expert).
std::vector<int32_t> RandomIds(int slots, int count, std::mt19937_64& rng) {
  std::uniform_int_distribution<int32_t> id(0, count - 1);
  std::vector<int32_t> ids(slots);
  for (int32_t& v : ids) v = id(rng);
  if (slots > 1) ids.back() = ids.front();
  return ids;
}

// Activations for `slots` slots read at x[s * stride, :k] (one row for
// stride 0), nonzero bf16.
testing::Bf16Values SlotActivations(int slots, int64_t stride, int64_t k, std::mt19937_64& rng) {
  return testing::RandomBf16(stride == 0 ? k : slots * stride, 0.05f, 2.0f, rng);
}

// The references of one selected step: slot s reads x[s * stride, :k]
// through expert experts[s].
std::vector<RowReference> SelectedReferences(const HostExperts& host, std::span<const int> experts,
                                             std::span<const float> x, int64_t stride,
                                             ThreadPool& pool) {
  std::vector<RowReference> refs;
  for (size_t s = 0; s < experts.size(); ++s) {
    refs.push_back(Reference(host.n(), host.k(), Int4Row(host.unpacked[experts[s]]),
                             x.subspan(s * stride, host.k()), pool));
  }
  return refs;
}

// Runs y[s, :] = x[s * stride, :K] · W_{ids[s]}ᵀ (x, ids and y device pointers).
using SelectedFn = std::function<absl::Status(const __nv_bfloat16* x, int64_t stride,
                                              const int32_t* ids, int slots, __nv_bfloat16* y)>;

// One selected step on fresh activations, run twice: every slot s against
// expert experts[s] (ids[s] itself, or where an id outside [0, E) is clamped
// to), y poisoned before each run with one guard row past the slots that
// must stay untouched, and the two runs bit-identical (split row blocks are
// summed in warp order, never by timing).
void CheckSelected(const HostExperts& host, const std::vector<int32_t>& ids,
                   const std::vector<int>& experts, int64_t stride, const SelectedFn& run,
                   std::mt19937_64& rng, ThreadPool& pool) {
  const int slots = static_cast<int>(ids.size());
  const int64_t n = host.n();
  INFO("slots " << slots << ", x_slot_stride " << stride);
  const testing::Bf16Values x = SlotActivations(slots, stride, host.k(), rng);
  const auto x_device = testing::Upload(x.bits);
  const auto ids_device = testing::Upload(ids);
  const std::vector<RowReference> want = SelectedReferences(host, experts, x.values, stride, pool);
  std::vector<float> first;
  for (int run_index = 0; run_index < 2; ++run_index) {
    INFO("run " << run_index);
    auto y = testing::PoisonedBf16((slots + 1) * n);
    REQUIRE_OK(run(AsBf16(x_device), stride, ids_device.data(), slots, AsBf16(y)));
    const std::vector<float> got = Download(y);
    const std::span<const float> guard = std::span(got).subspan(slots * n);
    REQUIRE(std::all_of(guard.begin(), guard.end(), [](float v) { return std::isnan(v); }));
    const std::span<const float> outputs = std::span(got).first(slots * n);
    if (run_index == 0) {
      CheckRows(outputs, want, kExactWeightNorm);
      first.assign(outputs.begin(), outputs.end());
    } else {
      REQUIRE(std::equal(outputs.begin(), outputs.end(), first.begin()));
    }
  }
}

SelectedFn RunSelectedOf(const DeviceExperts& experts) {
  return [&experts](const __nv_bfloat16* x, int64_t stride, const int32_t* ids, int slots,
                    __nv_bfloat16* y) {
    return experts.RunSelected(x, stride, ids, slots, y, nullptr);
  };
}

void CheckInt4Experts(const DeviceExperts& experts, const HostExperts& host, const Int4Spec& spec) {
  CHECK(experts.count() == host.count());
  CHECK(experts.n() == host.n());
  CHECK(experts.k() == host.k());
  CHECK(experts.form() == LinearForm::kInt4);
  CHECK(experts.selectable());
  const int64_t per_expert = host.n() * host.k() / 2 + host.n() * (host.k() / spec.group) * 4;
  CHECK(experts.num_bytes() == host.count() * per_expert);
}

std::string Describe(const ExpertShape& shape, const Int4Spec& spec) {
  return std::string(shape.name) + " [" + std::to_string(shape.n) + ", " + std::to_string(shape.k) +
         "] x " + std::to_string(shape.count) + ", group " + std::to_string(spec.group) +
         (spec.symmetric ? " symmetric" : " asymmetric") + (spec.min_form ? " (min form)" : "");
}

TEST_CASE("DeviceExperts::RunSelected runs the experts whose ids are on the device",
          "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  for (const ExpertShape& shape : {kSmall, kGateUp26b, kDown26b}) {
    const bool small = shape.n * shape.k <= kSmall.n * kSmall.k;  // every spec there
    for (const Int4Spec& spec : SpecsFor(shape, small)) {
      INFO(Describe(shape, spec));
      const HostExperts host = MakeExperts(shape, spec, rng, pool);
      const DeviceExperts experts = Upload(host, shape.name);
      CheckInt4Experts(experts, host, spec);
      for (int slots : {1, 3, 8}) {
        // Every slot on one row; a row per slot; rows with padding between.
        for (int64_t stride : {int64_t{0}, shape.k, shape.k + 8}) {
          const std::vector<int32_t> ids = RandomIds(slots, shape.count, rng);
          CAPTURE(ids);
          CheckSelected(host, ids, std::vector<int>(ids.begin(), ids.end()), stride,
                        RunSelectedOf(experts), rng, pool);
        }
      }
    }
  }
}

TEST_CASE("DeviceExperts::RunSelected runs int8 experts whose ids are on the device",
          "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  // Group 32 asymmetric and per-row symmetric (GGUF Q6_K / Q8_0 experts
  // unpack to int8 with groups of 16 / 32).
  for (const ExpertShape& shape : {kSmall, WithCount(kDown26b, 8), WithCount(kGateUp26b, 8)}) {
    for (const Int4Spec& spec :
         {Int4Spec{32, false, false, 8}, Int4Spec{static_cast<int>(shape.k), true, false, 8}}) {
      INFO(Describe(shape, spec) << ", int8");
      const HostExperts host = MakeExperts(shape, spec, rng, pool);
      const DeviceExperts experts = Upload(host, shape.name);
      CHECK(experts.form() == LinearForm::kInt8);
      CHECK(experts.selectable());
      for (const int slots : {1, 3, 8}) {
        for (const int64_t stride : {int64_t{0}, shape.k}) {
          const std::vector<int32_t> ids = RandomIds(slots, shape.count, rng);
          CAPTURE(ids);
          CheckSelected(host, ids, std::vector<int>(ids.begin(), ids.end()), stride,
                        RunSelectedOf(experts), rng, pool);
        }
      }
      // Ids outside [0, E) are clamped into it.
      const std::vector<int32_t> outside = {-3, shape.count + 5};
      CheckSelected(host, outside, {0, shape.count - 1}, shape.k, RunSelectedOf(experts), rng,
                    pool);
    }
  }
}

TEST_CASE("DeviceExperts::RunSelected clamps ids outside [0, E)", "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  const HostExperts host = MakeExperts(kSmall, {32, false, false}, rng, pool);
  const DeviceExperts experts = Upload(host, kSmall.name);
  const int e = kSmall.count;
  const std::vector<int32_t> ids = {-3, e + 5, INT32_MIN, INT32_MAX, e, -1};
  const std::vector<int> clamped = {0, e - 1, 0, e - 1, e - 1, 0};
  for (int64_t stride : {int64_t{0}, kSmall.k}) {
    CheckSelected(host, ids, clamped, stride, RunSelectedOf(experts), rng, pool);
  }
}

// The launcher splits each slot's row blocks among thread blocks and warps
// by the slot count (more slots: more row blocks per thread block), and a
// thread block at the end of a slot may hold fewer steps (row blocks x K/64)
// than warps, so that some warps have none (and no partial sums to add to a
// split row block's). Every count from 1 to 32, on the
// 26B down shape (K/64 = 11, fewer than a thread block's 16 warps) and on a
// small-K shape with more row blocks (133) than an H100 has multiprocessors.
TEST_CASE("DeviceExperts::RunSelected is right for every slot count up to 32",
          "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  for (const ExpertShape& shape : {WithCount(kDown26b, 8), ExpertShape{"small K", 2128, 128, 8}}) {
    const Int4Spec spec{32, false, false};
    INFO(Describe(shape, spec));
    const HostExperts host = MakeExperts(shape, spec, rng, pool);
    const DeviceExperts experts = Upload(host, shape.name);
    for (int slots = 1; slots <= 32; ++slots) {
      const std::vector<int32_t> ids = RandomIds(slots, shape.count, rng);
      CAPTURE(ids);
      CheckSelected(host, ids, std::vector<int>(ids.begin(), ids.end()), shape.k,
                    RunSelectedOf(experts), rng, pool);
    }
  }
}

// Experts as DeviceExperts keeps them (a DeviceLinear each and device tables
// of their pointers), built here to call Int4MmaGemvSelected directly.
struct ExpertTables {
  std::vector<DeviceLinear> linears;
  DeviceBuffer<const uint4*> qweights;
  DeviceBuffer<const __nv_bfloat162*> params;

  Int4MmaExpertTables view() const {
    return {qweights.data(), params.data(), static_cast<int>(linears.size())};
  }
  const Int4MmaWeight& shape() const { return linears.front().int4(); }
};

ExpertTables UploadTables(const HostExperts& host) {
  ExpertTables tables;
  std::vector<const uint4*> qweights;
  std::vector<const __nv_bfloat162*> params;
  for (const PackedMatrix& packed : host.packed) {
    absl::StatusOr<DeviceLinear> linear = DeviceLinear::FromPacked(packed, "expert");
    REQUIRE_OK(linear);
    qweights.push_back(linear->int4().qweight);
    params.push_back(linear->int4().params);
    tables.linears.push_back(*std::move(linear));
  }
  tables.qweights = testing::Upload(qweights);
  tables.params = testing::Upload(params);
  return tables;
}

TEST_CASE("Int4MmaGemvSelected matches the reference under every tuning",
          "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  // Deeper ring; one and two row tiles per step; few warps per
  // multiprocessor (whole row blocks per warp, more thread blocks); an
  // ordinary launch; late weights (the selected path always is).
  const Int4MmaTuning tunings[] = {{},
                                   {.stages = 4},
                                   {.row_tiles = 1},
                                   {.row_tiles = 2},
                                   {.warps_per_sm = 1},
                                   {.stages = 4, .warps_per_sm = 4},
                                   {.serial_launch = true},
                                   {.late_weights = true}};
  for (const ExpertShape& shape : {kSmall, WithCount(kDown26b, 8)}) {
    for (const Int4Spec& spec : SpecsFor(shape, false)) {
      INFO(Describe(shape, spec));
      const HostExperts host = MakeExperts(shape, spec, rng, pool);
      const ExpertTables tables = UploadTables(host);
      for (const Int4MmaTuning& tuning : tunings) {
        INFO("stages " << tuning.stages << ", row tiles " << tuning.row_tiles << ", warps/SM "
                       << tuning.warps_per_sm << ", serial " << tuning.serial_launch
                       << ", late weights " << tuning.late_weights);
        const std::vector<int32_t> ids = RandomIds(8, shape.count, rng);
        CAPTURE(ids);
        const SelectedFn run = [&](const __nv_bfloat16* x, int64_t stride, const int32_t* ids_d,
                                   int slots, __nv_bfloat16* y) {
          return Int4MmaGemvSelected(tables.shape(), tables.view(), ids_d, slots, x, stride, y,
                                     nullptr, tuning);
        };
        CheckSelected(host, ids, std::vector<int>(ids.begin(), ids.end()), shape.k, run, rng, pool);
      }
    }
  }
}

// The decode step is a CUDA graph: the ids are read on the device at each
// replay, so new ids (and activations) written before a replay are used.
TEST_CASE("DeviceExperts::RunSelected replays from a CUDA graph with new ids",
          "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  const ExpertShape shape = WithCount(kDown26b, 16);
  const HostExperts host = MakeExperts(shape, {32, false, false}, rng, pool);
  const DeviceExperts experts = Upload(host, shape.name);
  constexpr int kSlots = 8;
  const int64_t stride = shape.k;
  auto x = testing::Upload(SlotActivations(kSlots, stride, shape.k, rng).bits);
  auto ids = testing::Upload(RandomIds(kSlots, shape.count, rng));
  auto y = testing::PoisonedBf16(kSlots * shape.n);
  cudaStream_t stream;
  REQUIRE(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // the uploads and fill (legacy stream)
  // One eager run first (module loading), as a decode loop does.
  REQUIRE_OK(experts.RunSelected(AsBf16(x), stride, ids.data(), kSlots, AsBf16(y), stream));
  REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
  cudaGraph_t graph;
  REQUIRE(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal) == cudaSuccess);
  const absl::Status captured =
      experts.RunSelected(AsBf16(x), stride, ids.data(), kSlots, AsBf16(y), stream);
  REQUIRE(cudaStreamEndCapture(stream, &graph) == cudaSuccess);
  REQUIRE_OK(captured);
  cudaGraphExec_t exec;
  REQUIRE(cudaGraphInstantiate(&exec, graph, 0) == cudaSuccess);
  for (int replay = 0; replay < 3; ++replay) {
    const std::vector<int32_t> new_ids = RandomIds(kSlots, shape.count, rng);
    const testing::Bf16Values new_x = SlotActivations(kSlots, stride, shape.k, rng);
    INFO("replay " << replay);
    CAPTURE(new_ids);
    REQUIRE_OK(ids.CopyFromHost(new_ids));
    REQUIRE_OK(x.CopyFromHost(new_x.bits));
    REQUIRE_OK(y.FillBytes(0xFF));
    REQUIRE(cudaDeviceSynchronize() == cudaSuccess);  // a non-blocking stream does not wait
    REQUIRE(cudaGraphLaunch(exec, stream) == cudaSuccess);
    REQUIRE(cudaStreamSynchronize(stream) == cudaSuccess);
    const std::vector<int> selected(new_ids.begin(), new_ids.end());
    CheckRows(Download(y), SelectedReferences(host, selected, new_x.values, stride, pool),
              kExactWeightNorm);
  }
  REQUIRE(cudaGraphExecDestroy(exec) == cudaSuccess);
  REQUIRE(cudaGraphDestroy(graph) == cudaSuccess);
  REQUIRE(cudaStreamDestroy(stream) == cudaSuccess);
}

LinearContext MakeContext() {
  absl::StatusOr<LinearContext> context = LinearContext::Create();
  REQUIRE_OK(context);
  return *std::move(context);
}

// y = Run(e, x) for m random rows, against row(e)'s reference.
void CheckRun(const DeviceExperts& experts, int e, int64_t m, const RowFn& row, bool rounded,
              LinearContext& context, std::mt19937_64& rng, ThreadPool& pool) {
  INFO("expert " << e << ", M=" << m);
  const int64_t n = experts.n(), k = experts.k();
  const testing::Bf16Values x = testing::RandomBf16(m * k, 0.05f, 2.0f, rng);
  const auto x_device = testing::Upload(x.bits);
  auto y = testing::PoisonedBf16(m * n);
  REQUIRE_OK(experts.Run(e, AsBf16(x_device), m, AsBf16(y), context, nullptr));
  CheckRows(Download(y), References(n, k, row, x.values, m, pool),
            rounded ? kRoundedWeightNorm : kExactWeightNorm);
}

TEST_CASE("DeviceExperts::Run runs the expert chosen on the host", "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  LinearContext context = MakeContext();
  for (const ExpertShape& shape : {kSmall, WithCount(kGateUp26b, 4), WithCount(kDown26b, 4)}) {
    for (const Int4Spec& spec : SpecsFor(shape, false)) {
      INFO(Describe(shape, spec));
      const HostExperts host = MakeExperts(shape, spec, rng, pool);
      const DeviceExperts experts = Upload(host, shape.name);
      const int middle = std::uniform_int_distribution<int>(1, shape.count - 2)(rng);
      for (int e : {0, middle, shape.count - 1}) {
        // M > 16 is the prefill path (WeightOnlyGemm): weights rounded to bf16.
        for (int64_t m : {1, 5, 40}) {
          CheckRun(experts, e, m, Int4Row(host.unpacked[e]), m > 16, context, rng, pool);
        }
      }
    }
  }
}

TEST_CASE("DeviceExperts::FromFloat runs bf16 experts on the host's choice only",
          "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  LinearContext context = MakeContext();
  constexpr int kCount = 3;
  constexpr int64_t kN = 40, kK = 203;  // cuBLAS takes any K
  std::normal_distribution<float> value(0.0f, 0.05f);
  std::vector<float> values(kCount * kN * kK);
  for (float& v : values) v = value(rng);
  absl::StatusOr<DeviceExperts> experts =
      DeviceExperts::FromFloat(values, kCount, kN, kK, "dense_experts");
  REQUIRE_OK(experts);
  CHECK(experts->count() == kCount);
  CHECK(experts->n() == kN);
  CHECK(experts->k() == kK);
  CHECK(experts->form() == LinearForm::kBf16);
  CHECK_FALSE(experts->selectable());
  CHECK(experts->num_bytes() == kCount * kN * kK * 2);
  for (int e = 0; e < kCount; ++e) {
    const RowFn row = Bf16Row(std::span(values).subspan(e * kN * kK, kN * kK), kK);
    for (int64_t m : {1, 5, 40}) CheckRun(*experts, e, m, row, false, context, rng, pool);
  }
  auto x = testing::Upload(testing::RandomBf16(kK, 0.05f, 2.0f, rng).bits);
  auto ids = testing::Upload(std::vector<int32_t>{0});
  auto y = testing::PoisonedBf16(kN);
  const absl::Status selected =
      experts->RunSelected(AsBf16(x), 0, ids.data(), 1, AsBf16(y), nullptr);
  REQUIRE_STATUS_IS(selected, absl::StatusCode::kFailedPrecondition);
  CHECK(std::string(selected.message()).find("dense_experts") != std::string::npos);
}

// InvalidArgument naming `name`.
void RequireInvalidNaming(const absl::Status& status, std::string_view name) {
  REQUIRE_STATUS_IS(status, absl::StatusCode::kInvalidArgument);
  CHECK(std::string(status.message()).find(name) != std::string::npos);
}

// RunSorted on random row counts per expert (some experts empty), with a
// scratch of `batch` experts: every row against its expert's reference, the
// rows after the last one untouched.
void CheckSorted(const DeviceExperts& experts, int batch, const std::function<RowFn(int)>& row,
                 bool rounded, LinearContext& context, std::mt19937_64& rng, ThreadPool& pool) {
  INFO("batch " << batch);
  const int64_t n = experts.n(), k = experts.k();
  std::vector<int64_t> begin = {0};
  std::uniform_int_distribution<int> rows_of(0, 40);
  for (int e = 0; e < experts.count(); ++e) {
    const int rows = e % 3 == 1 ? 0 : rows_of(rng);  // every third expert empty
    begin.push_back(begin.back() + rows);
  }
  const int64_t total = begin.back();
  REQUIRE(total > 0);
  const testing::Bf16Values x = testing::RandomBf16(total * k, 0.05f, 2.0f, rng);
  const auto x_device = testing::Upload(x.bits);
  auto y = testing::PoisonedBf16((total + 1) * n);
  // bf16 experts are read in place: a scratch with no room for weights.
  const bool dense = experts.form() == LinearForm::kBf16;
  absl::StatusOr<SortedRunScratch> scratch = SortedRunScratch::Create(dense ? 0 : n * k, batch);
  REQUIRE_OK(scratch);
  REQUIRE_OK(experts.RunSorted(AsBf16(x_device), begin, AsBf16(y), *scratch, context, nullptr));
  const std::vector<float> got = Download(y);
  for (int e = 0; e < experts.count(); ++e) {
    const int64_t rows = begin[e + 1] - begin[e];
    if (rows == 0) continue;
    INFO("expert " << e << ", rows " << rows);
    CheckRows(
        std::span(got).subspan(begin[e] * n, rows * n),
        References(n, k, row(e), std::span(x.values).subspan(begin[e] * k, rows * k), rows, pool),
        rounded ? kRoundedWeightNorm : kExactWeightNorm);
  }
  const std::span<const float> guard = std::span(got).subspan(total * n);
  CHECK(std::all_of(guard.begin(), guard.end(), [](float v) { return std::isnan(v); }));
}

TEST_CASE("DeviceExperts::RunSorted runs rows sorted by expert as grouped GEMMs",
          "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(0);
  LinearContext context = MakeContext();
  // Int4 (dequantized to bf16 first: weights rounded, as the prefill GEMM),
  // in batches that divide the experts and that do not.
  for (const ExpertShape& shape : {kSmall, WithCount(kDown26b, 6)}) {
    const Int4Spec spec{32, false, false};
    INFO(Describe(shape, spec));
    const HostExperts host = MakeExperts(shape, spec, rng, pool);
    const DeviceExperts experts = Upload(host, shape.name);
    for (const int batch : {1, 4, shape.count}) {
      CheckSorted(
          experts, batch, [&](int e) { return Int4Row(host.unpacked[e]); }, true, context, rng,
          pool);
    }
  }
  // Bf16 experts run from their own storage.
  constexpr int kCount = 5;
  constexpr int64_t kN = 48, kK = 72;
  std::normal_distribution<float> value(0.0f, 0.05f);
  std::vector<float> values(kCount * kN * kK);
  for (float& v : values) v = value(rng);
  absl::StatusOr<DeviceExperts> dense = DeviceExperts::FromFloat(values, kCount, kN, kK, "dense");
  REQUIRE_OK(dense);
  CheckSorted(
      *dense, 2,
      [&](int e) { return Bf16Row(std::span(values).subspan(e * kN * kK, kN * kK), kK); }, false,
      context, rng, pool);

  // Bad offsets and a scratch too small for an expert are refused.
  auto x = testing::Upload(testing::RandomBf16(kK, 0.05f, 2.0f, rng).bits);
  auto y = testing::PoisonedBf16(kN);
  absl::StatusOr<SortedRunScratch> scratch = SortedRunScratch::Create(16, 2);
  REQUIRE_OK(scratch);
  const std::vector<int64_t> unsorted = {0, 2, 1, 3, 3, 3};
  RequireInvalidNaming(dense->RunSorted(AsBf16(x), unsorted, AsBf16(y), *scratch, context, nullptr),
                       "dense");
  const HostExperts small = MakeExperts(kSmall, {32, false, false}, rng, pool);
  const DeviceExperts int4 = Upload(small, "small_experts");
  std::vector<int64_t> begin(kSmall.count + 1, 0);
  RequireInvalidNaming(int4.RunSorted(AsBf16(x), begin, AsBf16(y), *scratch, context, nullptr),
                       "small_experts");
  absl::StatusOr<SortedRunScratch> no_room = SortedRunScratch::Create(0, 2);
  REQUIRE_OK(no_room);
  RequireInvalidNaming(int4.RunSorted(AsBf16(x), begin, AsBf16(y), *no_room, context, nullptr),
                       "small_experts");
  REQUIRE_STATUS_IS(SortedRunScratch::Create(-1, 2), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(SortedRunScratch::Create(16, 0), absl::StatusCode::kInvalidArgument);
}

TEST_CASE("DeviceExperts and Int4MmaGemvSelected reject bad arguments", "[cuda][device_experts]") {
  GQ_SKIP_WITHOUT_CUDA();
  auto rng = testing::MakeRng();
  ThreadPool pool(1);
  constexpr auto kInvalid = absl::StatusCode::kInvalidArgument;
  const ExpertShape shape = WithCount(kSmall, 2);
  const HostExperts host = MakeExperts(shape, {32, false, false}, rng, pool);

  // Factories: none; another shape, group size or zero form than expert 0;
  // floats of the wrong count.
  RequireInvalidNaming(DeviceExperts::FromPacked({}, "gate_up").status(), "gate_up");
  const auto mixed = [&](const ExpertShape& other_shape, const Int4Spec& other_spec) {
    const HostExperts other = MakeExperts(WithCount(other_shape, 1), other_spec, rng, pool);
    const std::vector<PackedMatrix> packed = {host.packed[0], host.packed[1], other.packed[0]};
    return DeviceExperts::FromPacked(packed, "down").status();
  };
  RequireInvalidNaming(mixed({"wider", 2 * shape.n, shape.k, 1}, {32, false, false}), "down");
  RequireInvalidNaming(mixed({"longer", shape.n, 2 * shape.k, 1}, {32, false, false}), "down");
  RequireInvalidNaming(mixed(shape, {64, false, false}), "down");
  RequireInvalidNaming(mixed(shape, {64, true, true}), "down");
  const std::vector<float> values(2 * 16 * 64, 0.5f);
  RequireInvalidNaming(DeviceExperts::FromFloat(values, 3, 16, 64, "up").status(), "up");

  const DeviceExperts experts = Upload(host, "moe_down");
  auto x = testing::Upload(SlotActivations(2, shape.k, shape.k, rng).bits);
  auto ids = testing::Upload(std::vector<int32_t>{0, 1});
  auto y = testing::PoisonedBf16(2 * shape.n);

  // Run: e outside [0, count).
  absl::StatusOr<LinearContext> context = LinearContext::Create();
  REQUIRE_OK(context);
  RequireInvalidNaming(experts.Run(-1, AsBf16(x), 1, AsBf16(y), *context, nullptr), "moe_down");
  RequireInvalidNaming(experts.Run(2, AsBf16(x), 1, AsBf16(y), *context, nullptr), "moe_down");

  // RunSelected passes the kernel's errors on, naming the experts.
  RequireInvalidNaming(experts.RunSelected(AsBf16(x), shape.k, ids.data(), 0, AsBf16(y), nullptr),
                       "moe_down");
  RequireInvalidNaming(experts.RunSelected(AsBf16(x), 4, ids.data(), 2, AsBf16(y), nullptr),
                       "moe_down");
  RequireInvalidNaming(experts.RunSelected(AsBf16(x), shape.k, nullptr, 2, AsBf16(y), nullptr),
                       "moe_down");

  // The kernel's own checks, on real tables and buffers, so that most checks
  // missed would launch a harmless kernel rather than fault.
  const ExpertTables tables = UploadTables(host);
  const Int4MmaWeight& w = tables.shape();
  const Int4MmaExpertTables good = tables.view();
  const auto selected = [&](const Int4MmaExpertTables& t, const int32_t* id, int slots,
                            const __nv_bfloat16* x_ptr, int64_t stride, __nv_bfloat16* y_ptr) {
    return Int4MmaGemvSelected(w, t, id, slots, x_ptr, stride, y_ptr, nullptr);
  };
  const __nv_bfloat16* x0 = AsBf16(x);
  __nv_bfloat16* y0 = AsBf16(y);
  REQUIRE_STATUS_IS(selected(good, ids.data(), 0, x0, shape.k, y0), kInvalid);  // slots
  REQUIRE_STATUS_IS(selected(good, ids.data(), -1, x0, shape.k, y0), kInvalid);
  REQUIRE_STATUS_IS(selected(good, ids.data(), 65536, x0, shape.k, y0), kInvalid);
  REQUIRE_STATUS_IS(selected(good, nullptr, 2, x0, shape.k, y0), kInvalid);  // ids
  REQUIRE_STATUS_IS(selected(good, ids.data(), 2, x0, 4, y0), kInvalid);     // stride % 8
  REQUIRE_STATUS_IS(selected(good, ids.data(), 2, x0, -shape.k, y0), kInvalid);
  REQUIRE_STATUS_IS(selected({nullptr, good.params, 2}, ids.data(), 2, x0, shape.k, y0), kInvalid);
  REQUIRE_STATUS_IS(selected({good.qweights, nullptr, 2}, ids.data(), 2, x0, shape.k, y0),
                    kInvalid);
  REQUIRE_STATUS_IS(selected({good.qweights, good.params, 0}, ids.data(), 2, x0, shape.k, y0),
                    kInvalid);
  REQUIRE_STATUS_IS(selected(good, ids.data(), 2, nullptr, shape.k, y0), kInvalid);  // x
  REQUIRE_STATUS_IS(selected(good, ids.data(), 2, x0 + 1, shape.k, y0), kInvalid);   // aligned
  REQUIRE_STATUS_IS(selected(good, ids.data(), 2, x0, shape.k, nullptr), kInvalid);  // y

  // An empty object selects nothing and runs nothing.
  const DeviceExperts empty;
  CHECK(empty.count() == 0);
  CHECK_FALSE(empty.selectable());
  REQUIRE_STATUS_IS(empty.RunSelected(x0, shape.k, ids.data(), 2, y0, nullptr),
                    absl::StatusCode::kFailedPrecondition);
  REQUIRE_STATUS_IS(empty.Run(0, x0, 1, y0, *context, nullptr), kInvalid);

  // None of the above disturbed the device: a good call still runs.
  REQUIRE_OK(selected(good, ids.data(), 2, x0, shape.k, y0));
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
}

}  // namespace
}  // namespace gquant::cuda
