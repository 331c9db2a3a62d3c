// Optional bearer-token authentication: every RPC except the health service
// must carry `authorization: Bearer <token>` when the coordinator has a token.
#pragma once

#include <filesystem>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "grpcpp/server_context.h"

namespace shrinkray {

// The token in `path`, surrounding whitespace removed. An empty file is an
// error (it would silently disable authentication).
absl::StatusOr<std::string> ReadTokenFile(const std::filesystem::path& path);

// UNAUTHENTICATED unless `authorization_header` is "Bearer <expected>".
// An empty `expected` accepts everything. Compares in constant time.
absl::Status CheckBearerToken(const std::string& expected, const std::string& authorization_header);

// The same check on a call's `authorization` metadata.
absl::Status CheckBearerToken(const std::string& expected, const grpc::CallbackServerContext& context);

}  // namespace shrinkray
