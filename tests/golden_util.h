// Reading the Hugging Face goldens (tests/data/*/golden.safetensors) and the
// error norm the model tests quote.
#ifndef GQUANT_TESTS_GOLDEN_UTIL_H_
#define GQUANT_TESTS_GOLDEN_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "gquant/dtype.h"
#include "gquant/safetensors.h"
#include "test_util.h"

namespace gquant::testing {

inline std::string FixtureDir(const std::string& name) { return TestDataDir() + "/" + name; }

// A float tensor of any dtype, widened to double.
inline std::vector<double> ReadDoubles(const SafetensorsFile& file, const std::string& name) {
  auto tensor = file.Get(name);
  REQUIRE_OK(tensor);
  std::vector<double> out(tensor->num_elements());
  if (tensor->dtype() == DType::kF64) {
    std::memcpy(out.data(), tensor->bytes().data(), tensor->num_bytes());
  } else {
    auto floats = tensor->ToFloat();
    REQUIRE_OK(floats);
    std::copy(floats->begin(), floats->end(), out.begin());
  }
  return out;
}

// An I64 tensor as ints.
inline std::vector<int> ReadIds(const SafetensorsFile& file, const std::string& name) {
  auto tensor = file.Get(name);
  REQUIRE_OK(tensor);
  REQUIRE(tensor->dtype() == DType::kI64);
  std::vector<int64_t> ids(tensor->num_elements());
  std::memcpy(ids.data(), tensor->bytes().data(), tensor->num_bytes());
  return {ids.begin(), ids.end()};
}

// A U8 tensor's bytes.
inline std::vector<uint8_t> ReadBytes(const SafetensorsFile& file, const std::string& name) {
  auto tensor = file.Get(name);
  REQUIRE_OK(tensor);
  REQUIRE(tensor->dtype() == DType::kU8);
  std::vector<uint8_t> out(tensor->num_bytes());
  std::memcpy(out.data(), tensor->bytes().data(), out.size());
  return out;
}

// A fixture's golden.safetensors (tests/data/README.md), widened to double /
// int; image_rows (HF's float64 embedder rows, as float) only in the vision
// fixtures.
struct ModelGolden {
  std::vector<int> input_ids, decode_tokens, forced_tokens;
  std::vector<double> prefill, prefill_bf16, hidden, decode, forced;
  std::vector<float> image_rows;
};

inline ModelGolden ReadModelGolden(const std::string& fixture) {
  auto file = SafetensorsFile::Open(FixtureDir(fixture) + "/golden.safetensors");
  REQUIRE_OK(file);
  ModelGolden g;
  g.input_ids = ReadIds(*file, "input_ids");
  g.decode_tokens = ReadIds(*file, "decode_tokens");
  g.forced_tokens = ReadIds(*file, "forced_tokens");
  g.prefill = ReadDoubles(*file, "prefill_logits_f64");
  g.prefill_bf16 = ReadDoubles(*file, "prefill_logits_bf16");
  g.hidden = ReadDoubles(*file, "hidden_states_f64");
  g.decode = ReadDoubles(*file, "decode_logits_f64");
  g.forced = ReadDoubles(*file, "forced_logits_f64");
  if (file->Find("image_embeddings_f64") != nullptr) {
    const std::vector<double> rows = ReadDoubles(*file, "image_embeddings_f64");
    g.image_rows.assign(rows.begin(), rows.end());
  }
  return g;
}

// max over rows of ||a - b||_inf / ||b||_inf, rows of `width`.
inline double MaxRelativeError(std::span<const float> a, std::span<const double> b, int64_t width) {
  REQUIRE(a.size() == b.size());
  double worst = 0;
  for (size_t row = 0; row < a.size(); row += width) {
    double diff = 0, norm = 0;
    for (int64_t i = 0; i < width; ++i) {
      diff = std::max(diff, std::abs(a[row + i] - b[row + i]));
      norm = std::max(norm, std::abs(b[row + i]));
    }
    worst = std::max(worst, diff / norm);
  }
  return worst;
}

}  // namespace gquant::testing

#endif  // GQUANT_TESTS_GOLDEN_UTIL_H_
