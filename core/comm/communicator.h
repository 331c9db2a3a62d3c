// Collectives between the ranks of one job attempt. Every call has a timeout
// and returns a Status: a peer that died or hangs becomes an error on the
// others within the timeout, never a hang or a crash. Buffers are host memory
// for Gloo and device memory for NCCL (the caller knows which it built).
//
// All ranks must call the same collectives in the same order with the same
// sizes (as with MPI/NCCL); sizes that differ are the caller's bug, reported
// as an error where the backend can tell.
//
// Errors: a bad argument (null buffer, root or counts out of range) is
// InvalidArgument and leaves the communicator usable (no data was exchanged).
// A failed collective (DeadlineExceeded on timeout, Unavailable when a peer or
// the network fails, Internal otherwise; the message names the backend, the
// operation, the rank and the size) leaves the ranks out of step, so every
// later call returns FailedPrecondition: build a new communicator (new store
// prefix) to go on. Calls on one communicator are serialised; do not issue
// them from several threads unless every rank orders them the same way.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "core/comm/store.h"

namespace shrinkray {

enum class CommDType { kF32, kF64, kBF16, kI32, kU8 };
enum class ReduceOp { kSum, kMax };

size_t CommDTypeSize(CommDType dtype);
std::string CommDTypeName(CommDType dtype);

class Communicator {
 public:
  virtual ~Communicator() = default;

  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;  // "gloo", "nccl", "local"

  // In place: every rank ends with the element-wise reduction of all ranks'
  // `count` elements. BF16 sums accumulate in fp32 per element pair.
  virtual absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op) = 0;
  // In place: every rank ends with `root`'s `count` elements.
  virtual absl::Status Broadcast(void* data, size_t count, CommDType dtype, int root) = 0;
  // `output` holds size() * count elements: rank r's `input` at offset r*count.
  virtual absl::Status AllGather(const void* input, void* output, size_t count, CommDType dtype) = 0;
  // Uneven all-gather: rank r contributes counts[r] elements (counts known to
  // all); `output` holds their sum, in rank order.
  virtual absl::Status AllGatherV(const void* input, void* output, const std::vector<size_t>& counts,
                                  CommDType dtype) = 0;
  virtual absl::Status Barrier() = 0;

  // The communicator over the same ranks for buffers in CUDA device
  // `device`'s memory, or null: NCCL on that device answers itself, the
  // host-staged NCCL one the communicator it stages into, every other null.
  // The two are one channel: a collective through either meets the same
  // collective through the other on a peer, so a rank may take either path
  // as long as every rank issues the same collectives in the same order.
  virtual Communicator* OnDevice(int device) { return nullptr; }

  absl::Duration timeout() const { return timeout_; }

 protected:
  explicit Communicator(absl::Duration timeout) : timeout_(timeout) {}
  absl::Duration timeout_;
};

struct CommOptions {
  int rank = 0;
  int size = 1;
  absl::Duration timeout = absl::Seconds(60);
  std::string interface_address = "127.0.0.1";  // Gloo: the address peers dial
  // NCCL: the CUDA device (cuda:N) the communicator's state and staging
  // buffers live on; collectives make it current and restore the caller's.
  int device = 0;
};

// One rank: every collective is a no-op copy (single-worker jobs, tests).
std::unique_ptr<Communicator> MakeLocalCommunicator(absl::Duration timeout = absl::Seconds(60));

// Gloo over TCP, rendezvous through `store`.
absl::StatusOr<std::unique_ptr<Communicator>> MakeGlooCommunicator(std::shared_ptr<Store> store,
                                                                   const CommOptions& options);

// NCCL (CUDA builds only; elsewhere Unimplemented): the unique id goes through
// `store`; collectives run on the communicator's own stream; buffers are device
// pointers on options.device (FailedPrecondition when it is not visible).
absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(std::shared_ptr<Store> store,
                                                                   const CommOptions& options);

// NCCL for host buffers (CUDA builds only; elsewhere Unimplemented): every
// collective stages the caller's host memory through one device buffer. What
// the layerwise CPU pipeline uses when a job asks for the nccl backend.
absl::StatusOr<std::unique_ptr<Communicator>> MakeHostStagedNcclCommunicator(std::shared_ptr<Store> store,
                                                                             const CommOptions& options);

// A communicator over host buffers by backend name: "gloo", or "nccl"
// (host-staged). Another name is InvalidArgument naming it.
absl::StatusOr<std::unique_ptr<Communicator>> MakeHostCommunicator(const std::string& backend,
                                                                   std::shared_ptr<Store> store,
                                                                   const CommOptions& options);

}  // namespace shrinkray
