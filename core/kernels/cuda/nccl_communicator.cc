// NCCL backend of core/comm/communicator.h (CUDA builds; the stub in
// core/comm/nccl_stub.cc stands in elsewhere).
//
// Every NCCL call is bounded by the communicator's timeout: the communicator
// is created non-blocking (config.blocking = 0), so neither ncclCommInitRank
// nor a collective can hang the calling thread; we poll
// ncclCommGetAsyncError and cudaStreamQuery until the deadline, then
// ncclCommAbort (which also stops kernels waiting on a dead peer) and report
// DeadlineExceeded. After any failure the communicator is aborted and every
// later call returns FailedPrecondition.
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/util/compute_device.h"

namespace shrinkray {
namespace {

ncclDataType_t ToNccl(CommDType dtype) {
  switch (dtype) {
    case CommDType::kF32: return ncclFloat32;
    case CommDType::kF64: return ncclFloat64;
    case CommDType::kBF16: return ncclBfloat16;
    case CommDType::kI32: return ncclInt32;
    case CommDType::kU8: return ncclUint8;
  }
  return ncclFloat32;
}

const char* OpName(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "max"; }

// NCCL result -> Status code: a remote or system failure is a peer/network
// problem (Unavailable), a usage error is the caller's (InvalidArgument).
absl::Status NcclStatus(ncclResult_t r, const std::string& what, ncclComm_t comm) {
  std::string detail = ncclGetErrorString(r);
  if (comm != nullptr) {
    const char* last = ncclGetLastError(comm);
    if (last != nullptr && last[0] != '\0') detail = absl::StrCat(detail, ": ", std::string(last));
  }
  const std::string msg = absl::StrCat(what, ": ", detail);
  switch (r) {
    case ncclSystemError:
    case ncclRemoteError: return absl::UnavailableError(msg);
    case ncclInvalidArgument:
    case ncclInvalidUsage: return absl::InvalidArgumentError(msg);
    default: return absl::InternalError(msg);
  }
}

// Short sleeps while polling: collectives are usually quick, so spin a little
// before yielding the CPU, but never burn a core for a whole timeout.
class PollPacer {
 public:
  void Pause() {
    if (++spins_ < 100) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(spins_ < 1000 ? 20 : 200));
    }
  }

 private:
  int spins_ = 0;
};

// Polls a non-blocking communicator until it leaves ncclInProgress, the
// deadline passes (DeadlineExceeded) or it reports an error.
absl::Status WaitReady(ncclComm_t comm, absl::Time deadline, absl::Duration timeout, const std::string& what) {
  PollPacer pacer;
  while (true) {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t r = ncclCommGetAsyncError(comm, &state);
    if (r != ncclSuccess) return NcclStatus(r, what, comm);
    if (state == ncclSuccess) return absl::OkStatus();
    if (state != ncclInProgress) return NcclStatus(state, what, comm);
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": timed out after ", absl::FormatDuration(timeout)));
    }
    pacer.Pause();
  }
}

class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream, float* scratch, int device, int rank, int size,
                   absl::Duration timeout)
      : Communicator(timeout),
        comm_(comm),
        stream_(stream),
        scratch_(scratch),
        device_(device),
        rank_(rank),
        size_(size) {}

  ~NcclCommunicator() override {
    CudaDeviceGuard guard(device_);
    if (comm_ != nullptr) {
      // A healthy communicator flushes (bounded by the timeout) and is
      // destroyed; anything else is aborted, which never waits on peers.
      bool clean = false;
      if (failure_.ok()) {
        const ncclResult_t r = ncclCommFinalize(comm_);
        clean = r == ncclSuccess || r == ncclInProgress;
      }
      if (clean) {
        clean = WaitReady(comm_, absl::Now() + timeout_, timeout_, "nccl finalize").ok();
      }
      if (clean) {
        (void)ncclCommDestroy(comm_);
      } else {
        (void)ncclCommAbort(comm_);
      }
      comm_ = nullptr;
    }
    if (scratch_ != nullptr) (void)cudaFree(scratch_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string backend() const override { return "nccl"; }
  Communicator* OnDevice(int device) override { return device == device_ ? this : nullptr; }

  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op) override {
    const std::string what =
        Describe(absl::StrCat("AllReduce(", OpName(op), ") of ", count, " ", CommDTypeName(dtype)));
    if (data == nullptr && count > 0) return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    return Run(what, count == 0, [&] {
      return ncclAllReduce(data, data, count, ToNccl(dtype), op == ReduceOp::kSum ? ncclSum : ncclMax, comm_,
                           stream_);
    });
  }

  absl::Status Broadcast(void* data, size_t count, CommDType dtype, int root) override {
    const std::string what =
        Describe(absl::StrCat("Broadcast from ", root, " of ", count, " ", CommDTypeName(dtype)));
    if (data == nullptr && count > 0) return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    if (root < 0 || root >= size_) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": root out of range [0, ", size_, ")"));
    }
    return Run(what, count == 0,
               [&] { return ncclBroadcast(data, data, count, ToNccl(dtype), root, comm_, stream_); });
  }

  absl::Status AllGather(const void* input, void* output, size_t count, CommDType dtype) override {
    const std::string what = Describe(absl::StrCat("AllGather of ", count, " ", CommDTypeName(dtype)));
    if ((input == nullptr || output == nullptr) && count > 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    }
    return Run(what, count == 0,
               [&] { return ncclAllGather(input, output, count, ToNccl(dtype), comm_, stream_); });
  }

  absl::Status AllGatherV(const void* input, void* output, const std::vector<size_t>& counts,
                          CommDType dtype) override {
    size_t total = 0;
    for (size_t c : counts) total += c;
    const std::string what = Describe(absl::StrCat("AllGatherV of ", total, " ", CommDTypeName(dtype)));
    if (counts.size() != static_cast<size_t>(size_)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", counts.size(), " counts for ", size_, " ranks"));
    }
    const size_t mine = counts[static_cast<size_t>(rank_)];
    if ((input == nullptr && mine > 0) || (output == nullptr && total > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    }
    // One broadcast per contributing rank, fused into one group launch (NCCL
    // has no all-gather-v; this moves no padding bytes).
    return Run(what, total == 0, [&]() -> ncclResult_t {
      const size_t elem = CommDTypeSize(dtype);
      char* out = static_cast<char*>(output);
      ncclResult_t r = ncclGroupStart();
      if (r != ncclSuccess) return r;
      size_t offset = 0;
      for (int peer = 0; peer < size_; ++peer) {
        const size_t n = counts[static_cast<size_t>(peer)];
        if (n > 0) {
          const void* send = peer == rank_ ? input : out + offset * elem;
          r = ncclBroadcast(send, out + offset * elem, n, ToNccl(dtype), peer, comm_, stream_);
          if (r != ncclSuccess && r != ncclInProgress) {
            (void)ncclGroupEnd();
            return r;
          }
        }
        offset += n;
      }
      return ncclGroupEnd();
    });
  }

  absl::Status Barrier() override {
    // NCCL has no barrier: a one-element all-reduce meets the same condition
    // (no rank passes before every rank has arrived).
    return Run(Describe("Barrier"), false,
               [&] { return ncclAllReduce(scratch_, scratch_, 1, ncclFloat32, ncclSum, comm_, stream_); });
  }

 private:
  std::string Describe(const std::string& op) const {
    return absl::StrCat("nccl ", op, " on rank ", rank_, " of ", size_);
  }

  // Issues the collective (`issue` returns its ncclResult_t), then waits for
  // it on the host until the deadline. Returns once the results are in place.
  template <typename Fn>
  absl::Status Run(const std::string& what, bool noop, Fn&& issue) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": communicator unusable after an earlier error: ", failure_.ToString()));
    }
    if (noop) return absl::OkStatus();
    CudaDeviceGuard guard(device_);
    absl::Status st = IssueAndWait(what, issue);
    if (!st.ok()) {
      failure_ = st;
      // Abort: frees the communicator's resources and unblocks kernels that
      // wait for a peer, so the stream can drain.
      (void)ncclCommAbort(comm_);
      comm_ = nullptr;
    }
    return st;
  }

  template <typename Fn>
  absl::Status IssueAndWait(const std::string& what, Fn&& issue) {
    const absl::Time deadline = absl::Now() + timeout_;
    const ncclResult_t r = issue();
    if (r != ncclSuccess && r != ncclInProgress) return NcclStatus(r, what, comm_);
    // Non-blocking communicator: the call may still be enqueueing.
    absl::Status st = WaitReady(comm_, deadline, timeout_, what);
    if (!st.ok()) return st;
    PollPacer pacer;
    while (true) {
      const cudaError_t q = cudaStreamQuery(stream_);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) {
        return absl::InternalError(
            absl::StrCat(what, ": CUDA error ", cudaGetErrorName(q), ": ", cudaGetErrorString(q)));
      }
      // A peer failure shows up here (the kernels would wait forever).
      ncclResult_t async = ncclSuccess;
      if (ncclCommGetAsyncError(comm_, &async) == ncclSuccess && async != ncclSuccess &&
          async != ncclInProgress) {
        return NcclStatus(async, what, comm_);
      }
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(
            absl::StrCat(what, ": timed out after ", absl::FormatDuration(timeout_)));
      }
      pacer.Pause();
    }
  }

  std::mutex mu_;
  ncclComm_t comm_;
  cudaStream_t stream_;
  float* scratch_;
  const int device_;
  const int rank_;
  const int size_;
  absl::Status failure_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeNcclCommunicator(std::shared_ptr<Store> store,
                                                                   const CommOptions& options) {
  const std::string what = absl::StrCat("nccl init on rank ", options.rank, " of ", options.size);
  if (store == nullptr) return absl::InvalidArgumentError(absl::StrCat(what, ": no store"));
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": rank out of range"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": timeout must be positive"));
  }
  const int device = options.device;
  if (absl::Status st = CheckComputeDevice(ComputeDevice::Cuda(device)); !st.ok()) {
    return absl::Status(st.code(), absl::StrCat(what, ": ", st.message()));
  }
  // NCCL binds the communicator to the current device; the caller's stays.
  CudaDeviceGuard guard(device);
  const absl::Time deadline = absl::Now() + options.timeout;

  // Rendezvous: rank 0 makes the id (it holds rank 0's bootstrap address),
  // every other rank reads it.
  std::shared_ptr<Store> nccl_store = MakePrefixStore(std::move(store), "nccl");
  ncclUniqueId id;
  std::memset(&id, 0, sizeof(id));
  if (options.rank == 0) {
    const ncclResult_t r = ncclGetUniqueId(&id);
    if (r != ncclSuccess) return NcclStatus(r, absl::StrCat(what, ": ncclGetUniqueId"), nullptr);
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(&id);
    absl::Status st = nccl_store->Set("unique_id", std::vector<uint8_t>(bytes, bytes + sizeof(id)));
    if (!st.ok()) return absl::Status(st.code(), absl::StrCat(what, ": rendezvous: ", st.message()));
  } else {
    absl::StatusOr<std::vector<uint8_t>> value = nccl_store->Get("unique_id", options.timeout);
    if (!value.ok()) {
      return absl::Status(value.status().code(), absl::StrCat(what, ": rendezvous: ", value.status().message()));
    }
    if (value->size() != sizeof(id)) {
      return absl::InternalError(
          absl::StrCat(what, ": rendezvous: unique id of ", value->size(), " bytes, expected ", sizeof(id)));
    }
    std::memcpy(&id, value->data(), sizeof(id));
  }

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every wait below is ours, bounded by the timeout
  ncclComm_t comm = nullptr;
  ncclResult_t r = ncclCommInitRankConfig(&comm, options.size, id, options.rank, &config);
  if (r != ncclSuccess && r != ncclInProgress) {
    absl::Status st = NcclStatus(r, absl::StrCat(what, ": ncclCommInitRankConfig"), comm);
    if (comm != nullptr) (void)ncclCommAbort(comm);
    return st;
  }
  absl::Status st = WaitReady(comm, deadline, options.timeout, absl::StrCat(what, ": ncclCommInitRankConfig"));
  if (!st.ok()) {
    (void)ncclCommAbort(comm);
    return st;
  }

  cudaStream_t stream = nullptr;
  float* scratch = nullptr;
  cudaError_t e = cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaMalloc(reinterpret_cast<void**>(&scratch), sizeof(float));
  if (e == cudaSuccess) e = cudaMemset(scratch, 0, sizeof(float));
  if (e != cudaSuccess) {
    if (scratch != nullptr) (void)cudaFree(scratch);
    if (stream != nullptr) (void)cudaStreamDestroy(stream);
    (void)ncclCommAbort(comm);
    return CudaStatus(e, "nccl communicator stream/scratch", __FILE__, __LINE__);
  }
  return std::unique_ptr<Communicator>(
      new NcclCommunicator(comm, stream, scratch, device, options.rank, options.size, options.timeout));
}

}  // namespace shrinkray
