// Reading evaluation / calibration text: whole file, validated as UTF-8,
// optionally cut to its first N characters (Unicode code points, as Python's
// text[:N] counts them, which is how the golden numbers were made).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace shrinkray {

// max_chars < 0 reads everything. Errors: NotFound (missing file),
// InvalidArgument for an empty file or one that is not valid UTF-8 (naming the
// byte offset).
absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path, long max_chars = -1);

// Byte offset of the first invalid UTF-8 sequence, or -1 when `text` is valid.
long FindInvalidUtf8(std::string_view text);

// Writes `text` to `path` crash-safely (temporary file, fsync, rename), as the
// safetensors writer does: a crash never leaves a half-written file at `path`.
absl::Status WriteTextFile(const std::filesystem::path& path, std::string_view text);

}  // namespace shrinkray
