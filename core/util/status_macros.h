// Early-return helpers for absl::Status / absl::StatusOr, the error values used
// at every fallible boundary in core.
#pragma once

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define SR_CONCAT_INNER_(a, b) a##b
#define SR_CONCAT_(a, b) SR_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function when `expr` is not OK.
#define SR_RETURN_IF_ERROR(expr)                  \
  do {                                            \
    ::absl::Status sr_status_ = (expr);           \
    if (!sr_status_.ok()) return sr_status_;      \
  } while (0)

// `SR_ASSIGN_OR_RETURN(auto x, Foo());` — declares/assigns x from a StatusOr or
// returns its status.
#define SR_ASSIGN_OR_RETURN(lhs, expr) \
  SR_ASSIGN_OR_RETURN_IMPL_(SR_CONCAT_(sr_statusor_, __LINE__), lhs, expr)
#define SR_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                              \
  if (!tmp.ok()) return tmp.status();             \
  lhs = std::move(tmp).value()
