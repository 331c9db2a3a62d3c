// A key-value store for rendezvous: the ranks of one job attempt exchange
// addresses (Gloo) or the NCCL unique id through it before their first
// collective. Implementations: the coordinator-backed store (worker/,
// keys scoped per job attempt), a file store on shared storage and an
// in-process one (tests).
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace shrinkray {

// Implementations are thread-safe. A timeout <= 0 checks once, without waiting.
class Store {
 public:
  virtual ~Store() = default;
  // Sets `key` (last write wins).
  virtual absl::Status Set(const std::string& key, const std::vector<uint8_t>& value) = 0;
  // Waits until `key` exists, then returns its value. DeadlineExceeded naming
  // the key after `timeout`.
  virtual absl::StatusOr<std::vector<uint8_t>> Get(const std::string& key, absl::Duration timeout) = 0;
  // Waits until every key exists. DeadlineExceeded naming the missing keys.
  virtual absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) = 0;
};

// Thread-safe, in memory: for ranks that are threads of one process.
std::shared_ptr<Store> MakeInProcessStore();

// Files under `dir` (one per key, written atomically): for processes on one
// machine or on a shared filesystem. `dir` is created on first Set. Key names
// are percent-encoded into file names (any key is allowed, '/' included).
std::shared_ptr<Store> MakeFileStore(const std::string& dir);

// Every key of `base` gets `prefix` + "/" in front (one key space per job
// attempt on a shared store).
std::shared_ptr<Store> MakePrefixStore(std::shared_ptr<Store> base, const std::string& prefix);

}  // namespace shrinkray
