// Which filesystem paths a job may name: everything a client sends (model,
// calibration, evaluation, output) must lie under one of the coordinator's
// allowed roots, so a client cannot make workers read or overwrite arbitrary
// files on the shared storage.
//
// Error codes of Check:
//   INVALID_ARGUMENT  the path is empty, relative, contains a NUL byte, or has
//                     a ".." component (rejected outright, wherever it would
//                     resolve, even with no roots configured);
//   PERMISSION_DENIED the path resolves outside every root (after following
//                     symlinks, so a symlink inside a root that points out is
//                     refused), goes through a dangling symlink, or cannot be
//                     resolved. The message names the field, the path, what it
//                     resolved to and the roots.
//
// Checking is advisory against races: a symlink swapped in after Check is not
// caught (workers should open paths with the same policy in force).
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shrinkray {

class PathPolicy {
 public:
  // Each root is canonicalized here; it must exist and be a directory
  // (INVALID_ARGUMENT naming the root otherwise).
  static absl::StatusOr<PathPolicy> Create(const std::vector<std::filesystem::path>& roots);

  // With no roots configured every absolute path is allowed.
  PathPolicy() = default;

  // OK when `path` (absolute, no "..") lies under one of the roots once
  // symlinks are resolved; a path that does not exist yet (an output folder)
  // is resolved as far as it exists. `field` names the request field in
  // errors, e.g. "spec.model_path". Reads only; thread-safe.
  absl::Status Check(const std::string& field, const std::string& path) const;

  // The canonical roots, in the order given.
  const std::vector<std::filesystem::path>& roots() const { return roots_; }

 private:
  explicit PathPolicy(std::vector<std::filesystem::path> roots) : roots_(std::move(roots)) {}
  std::vector<std::filesystem::path> roots_;
};

// True when `path` equals `dir` or lies below it, comparing whole components
// ("/tmp/abcd" is not under "/tmp/abc"). Purely lexical: pass normalized paths.
bool PathIsWithin(const std::filesystem::path& path, const std::filesystem::path& dir);

}  // namespace shrinkray
