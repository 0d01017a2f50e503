#include "gquant/tensor.h"

#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "test_util.h"

namespace gquant {
namespace {

TEST_CASE("NumElements checks signs and overflow", "[tensor]") {
  REQUIRE(*NumElements(std::vector<int64_t>{}) == 1);
  REQUIRE(*NumElements(std::vector<int64_t>{3, 0, 5}) == 0);
  REQUIRE(*NumElements(std::vector<int64_t>{262144, 5376}) == int64_t{262144} * 5376);
  REQUIRE_STATUS_IS(NumElements(std::vector<int64_t>{4, -1}), absl::StatusCode::kInvalidArgument);
  REQUIRE_STATUS_IS(NumElements(std::vector<int64_t>{int64_t{1} << 40, int64_t{1} << 40}),
                    absl::StatusCode::kInvalidArgument);
  REQUIRE(ShapeToString(std::vector<int64_t>{2, 3}) == "[2, 3]");
}

TEST_CASE("Allocate owns aligned zeroed memory; copies share it", "[tensor]") {
  auto t = Tensor::Allocate("w", DType::kBF16, {3, 5});
  REQUIRE_OK(t);
  REQUIRE(t->owns_memory());
  REQUIRE(t->num_elements() == 15);
  REQUIRE(t->num_bytes() == 30);
  REQUIRE(reinterpret_cast<uintptr_t>(t->bytes().data()) % 64 == 0);
  for (std::byte b : t->bytes()) REQUIRE(b == std::byte{0});
  Tensor copy = *t;
  t->mutable_bytes()[7] = std::byte{0x42};
  REQUIRE(copy.bytes()[7] == std::byte{0x42});
  REQUIRE_STATUS_IS(Tensor::Allocate("w", DType::kF32, {int64_t{1} << 62, 8}),
                    absl::StatusCode::kInvalidArgument);
}

TEST_CASE("View checks the byte count and converts to float", "[tensor]") {
  auto rng = testing::MakeRng();
  std::uniform_real_distribution<float> uniform(-4.0f, 4.0f);
  std::vector<float> values(24);
  for (float& v : values) v = uniform(rng);
  auto storage = std::make_shared<std::vector<float>>(values);
  std::span<const std::byte> bytes(reinterpret_cast<const std::byte*>(storage->data()),
                                   storage->size() * sizeof(float));
  auto view = Tensor::View("x", DType::kF32, {2, 3, 4}, bytes, storage);
  REQUIRE_OK(view);
  REQUIRE_FALSE(view->owns_memory());
  REQUIRE(view->mutable_bytes().empty());
  auto floats = view->ToFloat();
  REQUIRE_OK(floats);
  REQUIRE(*floats == values);
  auto wrong = Tensor::View("x", DType::kF32, {5, 5}, bytes, storage);
  REQUIRE_STATUS_IS(wrong, absl::StatusCode::kInvalidArgument);
  REQUIRE(wrong.status().message().find("'x'") != std::string::npos);
}

}  // namespace
}  // namespace gquant
