#include "gquant/status.h"

#include <string>

#include "test_util.h"

namespace gquant {
namespace {

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError(absl::StrCat("odd value ", x));
  return x / 2;
}

absl::StatusOr<int> Quarter(int x) {
  GQ_ASSIGN_OR_RETURN(int half, Half(x));
  GQ_ASSIGN_OR_RETURN(half, Half(half));  // assigning to an existing variable
  return half;
}

absl::Status CheckQuarter(int x, int* calls) {
  ++*calls;
  GQ_RETURN_IF_ERROR(Quarter(x));
  GQ_RETURN_IF_ERROR(absl::OkStatus());
  return absl::OkStatus();
}

TEST_CASE("GQ_ASSIGN_OR_RETURN and GQ_RETURN_IF_ERROR propagate", "[status]") {
  auto ok = Quarter(12);
  REQUIRE_OK(ok);
  REQUIRE(*ok == 3);
  auto bad = Quarter(6);  // 6 -> 3 -> odd
  REQUIRE_STATUS_IS(bad, absl::StatusCode::kInvalidArgument);
  REQUIRE(bad.status().message() == "odd value 3");
  int calls = 0;
  REQUIRE_OK(CheckQuarter(8, &calls));
  REQUIRE_STATUS_IS(CheckQuarter(2, &calls), absl::StatusCode::kInvalidArgument);
  REQUIRE(calls == 2);
}

TEST_CASE("Annotate prepends context and keeps the code", "[status]") {
  const absl::Status base = absl::DataLossError("bad block");
  const absl::Status annotated = Annotate(base, "tensor '", "blk.0.attn_q.weight", "'");
  REQUIRE(annotated.code() == absl::StatusCode::kDataLoss);
  REQUIRE(annotated.message() == "tensor 'blk.0.attn_q.weight': bad block");
  REQUIRE(Annotate(absl::OkStatus(), "ignored").ok());
}

}  // namespace
}  // namespace gquant
