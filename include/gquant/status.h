// Error handling for gquant: every fallible call returns absl::Status or
// absl::StatusOr<T>. Abseil 20220623 (Debian 12) has no status_macros.h, so the
// propagation macros live here.
//
// Status-code conventions (use the first that fits):
//   InvalidArgument    a malformed argument: bad shape, dtype, regex, config value
//   NotFound           a missing tensor, file or key
//   DataLoss           a corrupt or inconsistent file (bad header, overlapping data)
//   OutOfRange         a read past the end of a buffer or file
//   Unimplemented      an unsupported format x backend pair or file feature
//   FailedPrecondition the system is in the wrong state for the call
//   ResourceExhausted  a declared size that would not fit in memory or disk
//   Internal           a CUDA error or a broken invariant
// Messages read "<what> '<name>': expected X, but got Y" and quote the value.
#ifndef GQUANT_STATUS_H_
#define GQUANT_STATUS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace gquant {

// Returns `status` with `context` prepended to its message ("context: message"),
// keeping its code. OK stays OK. Used at layer boundaries to name the file,
// tensor or rule an error came from.
template <typename... Context>
absl::Status Annotate(const absl::Status& status, const Context&... context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context..., ": ", status.message()));
}

namespace internal_status {
inline const absl::Status& AsStatus(const absl::Status& s) { return s; }
template <typename T>
const absl::Status& AsStatus(const absl::StatusOr<T>& s) {
  return s.status();
}
}  // namespace internal_status

}  // namespace gquant

#define GQ_STATUS_CONCAT_INNER_(a, b) a##b
#define GQ_STATUS_CONCAT_(a, b) GQ_STATUS_CONCAT_INNER_(a, b)

// Evaluates `expr` (an absl::Status or StatusOr) and returns its status from
// the enclosing function when it is not OK.
#define GQ_RETURN_IF_ERROR(expr)                                                     \
  do {                                                                               \
    if (const absl::Status gq_status_ = ::gquant::internal_status::AsStatus((expr)); \
        !gq_status_.ok()) {                                                          \
      return gq_status_;                                                             \
    }                                                                                \
  } while (0)

// `lhs` = value of the StatusOr `rexpr`, or return its error. `lhs` may be a
// declaration ("auto x") or an existing variable.
#define GQ_ASSIGN_OR_RETURN(lhs, rexpr) \
  GQ_ASSIGN_OR_RETURN_IMPL_(GQ_STATUS_CONCAT_(gq_statusor_, __LINE__), lhs, rexpr)

#define GQ_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr)    \
  auto statusor = (rexpr);                                 \
  if (!statusor.ok()) return std::move(statusor).status(); \
  lhs = std::move(statusor).value()

#endif  // GQUANT_STATUS_H_
