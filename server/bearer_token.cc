#include "server/bearer_token.h"

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "core/io/text_file.h"
#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<std::string> ReadTokenFile(const std::filesystem::path& path) {
  SR_ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  std::string token(absl::StripAsciiWhitespace(text));
  if (token.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("token file ", path.string(), " is empty"));
  }
  return token;
}

absl::Status CheckBearerToken(const std::string& expected, const std::string& authorization_header) {
  if (expected.empty()) return absl::OkStatus();
  const std::string prefix = "Bearer ";
  if (authorization_header.rfind(prefix, 0) != 0) {
    return absl::UnauthenticatedError("missing bearer token (authorization: Bearer <token>)");
  }
  const std::string given = authorization_header.substr(prefix.size());
  // Length leaks nothing useful; the content comparison must not stop early.
  unsigned char diff = given.size() == expected.size() ? 0 : 1;
  for (size_t i = 0; i < given.size(); ++i) {
    diff |= static_cast<unsigned char>(given[i] ^ expected[i % expected.size()]);
  }
  if (diff != 0) return absl::UnauthenticatedError("bad bearer token");
  return absl::OkStatus();
}

absl::Status CheckBearerToken(const std::string& expected, const grpc::CallbackServerContext& context) {
  if (expected.empty()) return absl::OkStatus();
  const auto& metadata = context.client_metadata();
  auto it = metadata.find("authorization");
  if (it == metadata.end()) return absl::UnauthenticatedError("missing bearer token (authorization: Bearer <token>)");
  return CheckBearerToken(expected, std::string(it->second.data(), it->second.size()));
}

}  // namespace shrinkray
