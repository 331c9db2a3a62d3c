#include "server/path_policy.h"

#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;

std::string RootList(const std::vector<fs::path>& roots) {
  std::vector<std::string> names;
  names.reserve(roots.size());
  for (const fs::path& root : roots) names.push_back(root.string());
  return absl::StrCat("[", absl::StrJoin(names, ", "), "]");
}

// The components of `p` without the empty one a trailing separator leaves.
std::vector<fs::path> Components(const fs::path& p) {
  std::vector<fs::path> parts;
  for (const fs::path& part : p) {
    if (!part.empty()) parts.push_back(part);
  }
  return parts;
}

}  // namespace

bool PathIsWithin(const fs::path& path, const fs::path& dir) {
  const std::vector<fs::path> p = Components(path);
  const std::vector<fs::path> d = Components(dir);
  if (d.size() > p.size()) return false;
  for (size_t i = 0; i < d.size(); ++i) {
    if (p[i] != d[i]) return false;
  }
  return true;
}

absl::StatusOr<PathPolicy> PathPolicy::Create(const std::vector<fs::path>& roots) {
  std::vector<fs::path> canonical_roots;
  canonical_roots.reserve(roots.size());
  for (const fs::path& root : roots) {
    if (root.empty()) return absl::InvalidArgumentError("allowed root is an empty path");
    std::error_code ec;
    fs::path canonical = fs::canonical(root, ec);
    if (ec) {
      return absl::InvalidArgumentError(
          absl::StrCat("allowed root ", root.string(), " cannot be resolved: ", ec.message()));
    }
    if (!fs::is_directory(canonical, ec)) {
      return absl::InvalidArgumentError(absl::StrCat("allowed root ", root.string(), " is not a directory"));
    }
    canonical_roots.push_back(std::move(canonical));
  }
  return PathPolicy(std::move(canonical_roots));
}

absl::Status PathPolicy::Check(const std::string& field, const std::string& path) const {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(field, " is empty"));
  if (path.find('\0') != std::string::npos) {
    // The OS would silently cut the path at the NUL.
    return absl::InvalidArgumentError(absl::StrCat(field, " contains a NUL byte"));
  }
  const fs::path p(path);
  if (!p.is_absolute()) {
    return absl::InvalidArgumentError(absl::StrCat(field, " must be an absolute path, got '", path, "'"));
  }
  for (const fs::path& part : p) {
    if (part == "..") {
      return absl::InvalidArgumentError(absl::StrCat(field, " must not contain '..', got '", path, "'"));
    }
  }
  if (roots_.empty()) return absl::OkStatus();

  // weakly_canonical stops resolving at the first missing component, so a
  // dangling symlink there would pass as a lexical path inside the root while
  // a write through it lands wherever it points. Refuse those.
  fs::path prefix;
  for (const fs::path& part : p) {
    prefix /= part;
    std::error_code ec;
    const fs::file_status st = fs::status(prefix, ec);
    if (st.type() == fs::file_type::not_found) {
      if (fs::is_symlink(fs::symlink_status(prefix, ec))) {
        return absl::PermissionDeniedError(absl::StrCat(field, " '", path, "' goes through the dangling symlink ",
                                                        prefix.string(), "; allowed roots: ", RootList(roots_)));
      }
      break;  // nothing below a missing component exists
    }
    if (ec) {
      return absl::PermissionDeniedError(
          absl::StrCat(field, " '", path, "' cannot be resolved at ", prefix.string(), ": ", ec.message()));
    }
  }

  std::error_code ec;
  const fs::path resolved = fs::weakly_canonical(p, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat(field, " '", path, "' cannot be resolved: ", ec.message()));
  }
  for (const fs::path& root : roots_) {
    if (PathIsWithin(resolved, root)) return absl::OkStatus();
  }
  const std::string resolved_note =
      resolved.lexically_normal() == p.lexically_normal() ? "" : absl::StrCat(" (resolves to ", resolved.string(), ")");
  return absl::PermissionDeniedError(absl::StrCat(field, " '", path, "'", resolved_note,
                                                  " is outside the allowed roots ", RootList(roots_)));
}

}  // namespace shrinkray
