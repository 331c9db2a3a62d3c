#include "core/io/text_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace shrinkray {

long FindInvalidUtf8(std::string_view text) {
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = s[i];
    int len;
    uint32_t cp;
    if (c < 0x80) {
      ++i;
      continue;
    } else if ((c & 0xE0) == 0xC0) {
      len = 2;
      cp = c & 0x1F;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3;
      cp = c & 0x0F;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4;
      cp = c & 0x07;
    } else {
      return static_cast<long>(i);
    }
    if (i + len > n) return static_cast<long>(i);
    for (int k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return static_cast<long>(i);
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are invalid UTF-8.
    static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return static_cast<long>(i);
    }
    i += len;
  }
  return -1;
}

absl::StatusOr<std::string> ReadTextFile(const std::filesystem::path& path, long max_chars) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!std::filesystem::exists(path, ec)) {
      return absl::NotFoundError(absl::StrCat(path.string(), ": text file not found"));
    }
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": cannot open text file"));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  std::string text = std::move(buffer).str();
  if (text.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(path.string(), ": text file is empty"));
  }
  if (const long bad = FindInvalidUtf8(text); bad >= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(path.string(), ": not valid UTF-8 at byte ", bad));
  }
  if (max_chars >= 0) {
    // Cut after max_chars code points: count bytes that start a code point.
    long chars = 0;
    size_t i = 0;
    for (; i < text.size(); ++i) {
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
        if (chars == max_chars) break;
        ++chars;
      }
    }
    text.resize(i);
    if (text.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat(path.string(), ": --max-chars ", max_chars, " leaves no text"));
    }
  }
  return text;
}

absl::Status WriteTextFile(const std::filesystem::path& path, std::string_view text) {
  const std::string final_path = path.string();
  const std::string tmp_path = absl::StrCat(final_path, ".tmp.", ::getpid());
  const int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return absl::ErrnoToStatus(errno, absl::StrCat("create ", tmp_path));
  absl::Status status;
  const char* p = text.data();
  size_t left = text.size();
  while (status.ok() && left > 0) {
    const ssize_t n = ::write(fd, p, left);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      status = absl::ErrnoToStatus(errno, absl::StrCat("write ", tmp_path));
      break;
    }
    p += n;
    left -= static_cast<size_t>(n);
  }
  if (status.ok() && ::fsync(fd) != 0) status = absl::ErrnoToStatus(errno, "fsync " + tmp_path);
  if (::close(fd) != 0 && status.ok()) status = absl::ErrnoToStatus(errno, "close " + tmp_path);
  if (status.ok() && ::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
    status = absl::ErrnoToStatus(errno, absl::StrCat("rename ", tmp_path, " to ", final_path));
  }
  if (!status.ok()) ::unlink(tmp_path.c_str());
  return status;
}


}  // namespace shrinkray
