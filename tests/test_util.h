// Shared helpers for gquant's Catch2 tests.
#ifndef GQUANT_TESTS_TEST_UTIL_H_
#define GQUANT_TESTS_TEST_UTIL_H_

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <random>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gquant/status.h"

namespace gquant::testing {

inline const absl::Status& StatusOf(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& StatusOf(const absl::StatusOr<T>& s) {
  return s.status();
}

}  // namespace gquant::testing

// REQUIRE that a Status/StatusOr is OK, printing the message otherwise.
#define REQUIRE_OK(expr)                                                    \
  do {                                                                      \
    const absl::Status gq_test_status_ = ::gquant::testing::StatusOf(expr); \
    INFO(gq_test_status_.ToString());                                       \
    REQUIRE(gq_test_status_.ok());                                          \
  } while (0)

// REQUIRE that a Status/StatusOr failed with `code` (an absl::StatusCode).
#define REQUIRE_STATUS_IS(expr, expected_code)                              \
  do {                                                                      \
    const absl::Status gq_test_status_ = ::gquant::testing::StatusOf(expr); \
    INFO(gq_test_status_.ToString());                                       \
    REQUIRE(gq_test_status_.code() == (expected_code));                     \
  } while (0)

namespace gquant::testing {

// A fresh random engine per test; the seed is logged so a failure can be
// replayed with GQUANT_TEST_SEED=<seed>.
inline std::mt19937_64 MakeRng() {
  uint64_t seed = std::random_device{}();
  if (const char* forced = std::getenv("GQUANT_TEST_SEED")) seed = std::stoull(forced);
  UNSCOPED_INFO("GQUANT_TEST_SEED=" << seed);
  return std::mt19937_64(seed);
}

// A directory under the system temp dir, removed when the object dies.
class TempDir {
 public:
  TempDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "gquant_test_XXXXXX").string();
    REQUIRE(mkdtemp(pattern.data()) != nullptr);
    path_ = pattern;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::filesystem::path& path() const { return path_; }
  std::string File(const std::string& name) const { return (path_ / name).string(); }

 private:
  std::filesystem::path path_;
};

inline std::string TestDataDir() { return GQUANT_TEST_DATA_DIR; }

}  // namespace gquant::testing

#endif  // GQUANT_TESTS_TEST_UTIL_H_
