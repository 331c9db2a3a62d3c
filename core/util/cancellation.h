// A flag that a long computation polls at safe points (between layer batches,
// between layers) so that a cancelled job stops promptly and cleanly, without
// killing threads. Set from another thread (the worker's control stream).
#pragma once

#include <atomic>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shrinkray {

class CancellationToken {
 public:
  void Cancel() { cancelled_.store(true, std::memory_order_relaxed); }
  bool cancelled() const { return cancelled_.load(std::memory_order_relaxed); }

  // CancelledError naming where it stopped, or OK.
  absl::Status Check(const std::string& where) const {
    if (!cancelled()) return absl::OkStatus();
    return absl::CancelledError(absl::StrCat("cancelled during ", where));
  }

 private:
  std::atomic<bool> cancelled_{false};
};

// Null-safe check for optional tokens.
inline absl::Status CheckCancelled(const CancellationToken* token, const std::string& where) {
  return token == nullptr ? absl::OkStatus() : token->Check(where);
}

}  // namespace shrinkray
