#include "core/comm/store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <map>
#include <mutex>
#include <random>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace shrinkray {
namespace {

std::string ErrnoText(int err) { return std::string(std::strerror(err)); }

absl::Status MissingKeys(const std::string& store, const std::vector<std::string>& missing,
                         absl::Duration timeout) {
  return absl::DeadlineExceededError(
      absl::StrCat(store, ": key", missing.size() == 1 ? " " : "s ", absl::StrJoin(missing, ", "),
                   " not set within ", absl::FormatDuration(timeout)));
}

// ---------------------------------------------------------------- in process

class InProcessStore final : public Store {
 public:
  absl::Status Set(const std::string& key, const std::vector<uint8_t>& value) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      values_[key] = value;
    }
    cv_.notify_all();
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<uint8_t>> Get(const std::string& key, absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    const bool found =
        cv_.wait_for(lock, ToChrono(timeout), [&] { return values_.count(key) > 0; });
    if (!found) return MissingKeys("in-process store", {key}, timeout);
    return values_.at(key);
  }

  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(mu_);
    auto all_set = [&] {
      return std::all_of(keys.begin(), keys.end(), [&](const std::string& k) { return values_.count(k) > 0; });
    };
    if (cv_.wait_for(lock, ToChrono(timeout), all_set)) return absl::OkStatus();
    std::vector<std::string> missing;
    for (const std::string& k : keys) {
      if (values_.count(k) == 0) missing.push_back(k);
    }
    return MissingKeys("in-process store", missing, timeout);
  }

 private:
  static std::chrono::nanoseconds ToChrono(absl::Duration d) {
    if (d <= absl::ZeroDuration()) return std::chrono::nanoseconds(0);
    // Clamp: absl::InfiniteDuration() would overflow the chrono conversion.
    return absl::ToChronoNanoseconds(std::min(d, absl::Hours(24 * 365)));
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::vector<uint8_t>> values_;
};

// ---------------------------------------------------------------- files

// Two independent 64-bit hashes (FNV-1a and a splitmix64 chain): stable
// across processes and machines, unlike std::hash.
std::string KeyDigest(const std::string& key) {
  uint64_t fnv = 0xcbf29ce484222325ULL;
  uint64_t mix = 0x9E3779B97F4A7C15ULL ^ key.size();
  for (unsigned char c : key) {
    fnv = (fnv ^ c) * 0x100000001b3ULL;
    uint64_t z = mix + c + 0x9E3779B97F4A7C15ULL;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    mix = z ^ (z >> 31);
  }
  return absl::StrCat(absl::Hex(fnv, absl::kZeroPad16), absl::Hex(mix, absl::kZeroPad16));
}

// Keys may hold '/', '..' or bytes a filesystem rejects: keep [A-Za-z0-9_-]
// and percent-encode every other byte, so each key is one flat, safe name
// that never starts with '.' (temporary files do, so they never collide).
std::string EncodeKey(const std::string& key) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  out.reserve(key.size() + 1);
  for (unsigned char c : key) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
        c == '-') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  // The empty key still needs a file name.
  if (out.empty()) out = "%";
  // NAME_MAX is 255 bytes: a long key keeps a readable head plus a 128-bit
  // digest of the whole key ('~' never appears in an encoded name, so these
  // cannot collide with short names).
  if (out.size() > 200) out = absl::StrCat(out.substr(0, 120), "~", KeyDigest(key));
  return out;
}

class FileStore final : public Store {
 public:
  explicit FileStore(std::string dir) : dir_(std::move(dir)) {}

  absl::Status Set(const std::string& key, const std::vector<uint8_t>& value) override {
    std::error_code ec;
    std::filesystem::create_directories(dir_, ec);
    if (ec) {
      return absl::UnavailableError(
          absl::StrCat("file store: cannot create ", dir_, ": ", ec.message()));
    }
    const std::string name = EncodeKey(key);
    const std::string final_path = dir_ + "/" + name;
    // Unique per writer and call (a random per-process nonce, since pids
    // repeat across machines on a shared filesystem): concurrent writers of
    // one key never share a temporary file; the last rename wins.
    static const uint64_t nonce = std::random_device{}() * 0x100000001ULL ^ static_cast<uint64_t>(getpid());
    static std::atomic<uint64_t> counter{0};
    const std::string tmp_path = absl::StrCat(dir_, "/.tmp.", absl::Hex(nonce), ".", counter.fetch_add(1));
    const int fd = ::open(tmp_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0) {
      return absl::UnavailableError(
          absl::StrCat("file store: cannot create ", tmp_path, " for key ", key, ": ", ErrnoText(errno)));
    }
    size_t done = 0;
    while (done < value.size()) {
      const ssize_t n = ::write(fd, value.data() + done, value.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        const int err = errno;
        ::close(fd);
        ::unlink(tmp_path.c_str());
        return absl::UnavailableError(
            absl::StrCat("file store: cannot write key ", key, " to ", tmp_path, ": ", ErrnoText(err)));
      }
      done += static_cast<size_t>(n);
    }
    if (::close(fd) != 0) {
      const int err = errno;
      ::unlink(tmp_path.c_str());
      return absl::UnavailableError(
          absl::StrCat("file store: cannot close ", tmp_path, " for key ", key, ": ", ErrnoText(err)));
    }
    // rename(2) is atomic: a reader sees either no file or the whole value.
    if (::rename(tmp_path.c_str(), final_path.c_str()) != 0) {
      const int err = errno;
      ::unlink(tmp_path.c_str());
      return absl::UnavailableError(
          absl::StrCat("file store: cannot rename to ", final_path, " for key ", key, ": ", ErrnoText(err)));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<uint8_t>> Get(const std::string& key, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    Backoff backoff;
    while (true) {
      absl::StatusOr<std::vector<uint8_t>> value = TryRead(key);
      if (value.ok() || !absl::IsNotFound(value.status())) return value;
      if (absl::Now() >= deadline) return MissingKeys(StoreName(), {key}, timeout);
      backoff.Sleep(deadline);
    }
  }

  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    Backoff backoff;
    std::vector<std::string> missing = keys;
    while (true) {
      std::vector<std::string> still;
      for (const std::string& k : missing) {
        const std::string path = dir_ + "/" + EncodeKey(k);
        if (::access(path.c_str(), F_OK) != 0) still.push_back(k);
      }
      missing = std::move(still);
      if (missing.empty()) return absl::OkStatus();
      if (absl::Now() >= deadline) return MissingKeys(StoreName(), missing, timeout);
      backoff.Sleep(deadline);
    }
  }

 private:
  // Polling: a file store has no change notification that works on every
  // shared filesystem. Start fast (rendezvous is usually quick), cap at 20 ms.
  struct Backoff {
    absl::Duration next = absl::Milliseconds(1);
    void Sleep(absl::Time deadline) {
      const absl::Duration left = deadline - absl::Now();
      absl::SleepFor(std::max(absl::ZeroDuration(), std::min(next, left)));
      next = std::min(next * 2, absl::Milliseconds(20));
    }
  };

  std::string StoreName() const { return absl::StrCat("file store ", dir_); }

  // NotFound while the key is not set yet.
  absl::StatusOr<std::vector<uint8_t>> TryRead(const std::string& key) {
    const std::string path = dir_ + "/" + EncodeKey(key);
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      if (errno == ENOENT) return absl::NotFoundError(key);
      return absl::UnavailableError(
          absl::StrCat("file store: cannot open ", path, " for key ", key, ": ", ErrnoText(errno)));
    }
    std::vector<uint8_t> value;
    uint8_t buf[64 * 1024];
    while (true) {
      const ssize_t n = ::read(fd, buf, sizeof(buf));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        const int err = errno;
        ::close(fd);
        return absl::UnavailableError(
            absl::StrCat("file store: cannot read ", path, " for key ", key, ": ", ErrnoText(err)));
      }
      if (n == 0) break;
      value.insert(value.end(), buf, buf + n);
    }
    ::close(fd);
    return value;
  }

  const std::string dir_;
};

// ---------------------------------------------------------------- prefix

class PrefixStore final : public Store {
 public:
  PrefixStore(std::shared_ptr<Store> base, std::string prefix)
      : base_(std::move(base)), prefix_(std::move(prefix) + "/") {}

  absl::Status Set(const std::string& key, const std::vector<uint8_t>& value) override {
    return base_->Set(prefix_ + key, value);
  }
  absl::StatusOr<std::vector<uint8_t>> Get(const std::string& key, absl::Duration timeout) override {
    return base_->Get(prefix_ + key, timeout);
  }
  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override {
    std::vector<std::string> full;
    full.reserve(keys.size());
    for (const std::string& k : keys) full.push_back(prefix_ + k);
    return base_->Wait(full, timeout);
  }

 private:
  std::shared_ptr<Store> base_;
  const std::string prefix_;
};

}  // namespace

std::shared_ptr<Store> MakeInProcessStore() { return std::make_shared<InProcessStore>(); }

std::shared_ptr<Store> MakeFileStore(const std::string& dir) { return std::make_shared<FileStore>(dir); }

std::shared_ptr<Store> MakePrefixStore(std::shared_ptr<Store> base, const std::string& prefix) {
  return std::make_shared<PrefixStore>(std::move(base), prefix);
}

}  // namespace shrinkray
