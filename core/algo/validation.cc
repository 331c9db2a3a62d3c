#include "core/algo/validation.h"

#include <cmath>
#include <string>

#include "absl/strings/str_cat.h"

namespace shrinkray::algo_internal {
namespace {

template <typename T>
absl::Status CheckMatrixImpl(std::string_view field, absl::Span<const T> values, int64_t rows, int64_t cols) {
  // absl::string_view is not std::string_view in this abseil build.
  const std::string name(field);
  if (rows <= 0 || cols <= 0) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": shape must be positive, got [", rows, ", ", cols, "]"));
  }
  if (static_cast<int64_t>(values.size()) != rows * cols) {
    return absl::InvalidArgumentError(absl::StrCat(name, ": shape mismatch, expected [", rows, ", ", cols, "] = ",
                                                   rows * cols, " values, got ", values.size()));
  }
  for (size_t i = 0; i < values.size(); ++i) {
    if (!std::isfinite(values[i])) {
      return absl::InvalidArgumentError(absl::StrCat(name, ": non-finite value ", static_cast<double>(values[i]),
                                                     " at [", static_cast<int64_t>(i) / cols, ", ",
                                                     static_cast<int64_t>(i) % cols, "]"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckMatrix(std::string_view field, absl::Span<const float> values, int64_t rows, int64_t cols) {
  return CheckMatrixImpl(field, values, rows, cols);
}

absl::Status CheckMatrix(std::string_view field, absl::Span<const double> values, int64_t rows, int64_t cols) {
  return CheckMatrixImpl(field, values, rows, cols);
}

absl::Status CheckBits(int bits, bool allow_wide) {
  const int max_bits = allow_wide ? 16 : 8;
  if (bits < 2 || bits > max_bits) {
    return absl::InvalidArgumentError(absl::StrCat("bits must be in [2, ", max_bits, "], got ", bits));
  }
  return absl::OkStatus();
}

absl::Status CheckGroupSize(int group_size) {
  if (group_size == 0 || group_size < -1) {
    return absl::InvalidArgumentError(
        absl::StrCat("group_size must be -1 (per row) or positive, got ", group_size));
  }
  return absl::OkStatus();
}

absl::Status CheckSparsity(double sparsity) {
  if (!(sparsity >= 0.0 && sparsity < 1.0)) {
    return absl::InvalidArgumentError(absl::StrCat("sparsity must be in [0, 1), got ", sparsity));
  }
  return absl::OkStatus();
}

absl::Status CheckNm(int prune_n, int prune_m, int64_t cols, int block_size) {
  if (prune_n == 0 && prune_m == 0) return absl::OkStatus();
  if (prune_n <= 0 || prune_m <= 0 || prune_n >= prune_m) {
    return absl::InvalidArgumentError(
        absl::StrCat("prune_n:prune_m must satisfy 0 < prune_n < prune_m, got ", prune_n, ":", prune_m));
  }
  if (cols % prune_m != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("prune_m (", prune_m, ") must divide the number of columns (", cols, ")"));
  }
  if (block_size > 0 && block_size % prune_m != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("prune_m (", prune_m, ") must divide block_size (", block_size, ")"));
  }
  return absl::OkStatus();
}

}  // namespace shrinkray::algo_internal
