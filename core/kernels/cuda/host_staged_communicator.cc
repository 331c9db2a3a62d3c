// NCCL for callers whose buffers live in host memory (the layerwise CPU
// pipeline's Hessian sums, broadcast solve results): each collective copies
// its host buffer into one reusable device buffer, runs the NCCL collective
// on it and copies the result back. On GPU nodes this puts the CPU pipeline's
// traffic on NVLink / InfiniBand through NCCL instead of Gloo's TCP.
//
// Argument checks and error codes are the wrapped NCCL communicator's (see
// core/comm/communicator.h); a failed copy is Internal and, like a failed
// collective, leaves the communicator unusable.
#include <cuda_runtime_api.h>

#include <cstring>
#include <memory>
#include <mutex>
#include <numeric>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

class HostStagedCommunicator final : public Communicator {
 public:
  HostStagedCommunicator(std::unique_ptr<Communicator> device, int gpu)
      : Communicator(device->timeout()), device_(std::move(device)), gpu_(gpu) {}
  ~HostStagedCommunicator() override {
    CudaDeviceGuard guard(gpu_);
    staging_.Reset();
  }

  int rank() const override { return device_->rank(); }
  int size() const override { return device_->size(); }
  std::string backend() const override { return device_->backend(); }
  // The staged-into communicator itself: its collectives take device buffers.
  Communicator* OnDevice(int device) override { return device_->OnDevice(device); }

  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op) override {
    if (data == nullptr || count == 0) return device_->AllReduce(data, count, dtype, op);
    return InPlace(data, count, dtype, [&](void* staged) { return device_->AllReduce(staged, count, dtype, op); });
  }

  absl::Status Broadcast(void* data, size_t count, CommDType dtype, int root) override {
    if (data == nullptr || count == 0) return device_->Broadcast(data, count, dtype, root);
    return InPlace(data, count, dtype,
                   [&](void* staged) { return device_->Broadcast(staged, count, dtype, root); });
  }

  absl::Status AllGather(const void* input, void* output, size_t count, CommDType dtype) override {
    if (input == nullptr || output == nullptr || count == 0) return device_->AllGather(input, output, count, dtype);
    const size_t elem = CommDTypeSize(dtype);
    return Gather(input, count * elem, output, count * elem * static_cast<size_t>(size()),
                  [&](const void* in, void* out) { return device_->AllGather(in, out, count, dtype); });
  }

  absl::Status AllGatherV(const void* input, void* output, const std::vector<size_t>& counts,
                          CommDType dtype) override {
    const size_t total = std::accumulate(counts.begin(), counts.end(), size_t{0});
    const bool counts_ok = counts.size() == static_cast<size_t>(size());
    const size_t mine = counts_ok ? counts[static_cast<size_t>(rank())] : 0;
    if (!counts_ok || (input == nullptr && mine > 0) || output == nullptr || total == 0) {
      return device_->AllGatherV(input, output, counts, dtype);
    }
    const size_t elem = CommDTypeSize(dtype);
    return Gather(input, mine * elem, output, total * elem,
                  [&](const void* in, void* out) { return device_->AllGatherV(in, out, counts, dtype); });
  }

  absl::Status Barrier() override { return device_->Barrier(); }

 private:
  // Grows the staging buffer to at least `bytes` (never shrinks: the pipeline
  // repeats the same sizes layer after layer).
  absl::Status Reserve(size_t bytes) {
    if (bytes <= staging_.size()) return absl::OkStatus();
    absl::StatusOr<DeviceBuffer<uint8_t>> grown = DeviceBuffer<uint8_t>::Create(bytes);
    if (!grown.ok()) return grown.status();
    staging_ = std::move(*grown);
    return absl::OkStatus();
  }

  absl::Status Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind, const char* what) {
    const cudaError_t e = cudaMemcpy(dst, src, bytes, kind);
    if (e == cudaSuccess) return absl::OkStatus();
    failure_ = absl::InternalError(absl::StrCat("nccl (host-staged) ", what, " of ", bytes, " bytes on rank ",
                                                rank(), ": ", cudaGetErrorName(e), ": ", cudaGetErrorString(e)));
    return failure_;
  }

  absl::Status CheckUsable() const {
    if (failure_.ok()) return absl::OkStatus();
    return absl::FailedPreconditionError(
        absl::StrCat("nccl (host-staged): communicator unusable after an earlier error: ", failure_.ToString()));
  }

  template <typename Fn>
  absl::Status InPlace(void* data, size_t count, CommDType dtype, Fn&& collective) {
    std::lock_guard<std::mutex> lock(mu_);
    SR_RETURN_IF_ERROR(CheckUsable());
    CudaDeviceGuard guard(gpu_);  // the staging buffer is on the communicator's device
    const size_t bytes = count * CommDTypeSize(dtype);
    SR_RETURN_IF_ERROR(Reserve(bytes));
    SR_RETURN_IF_ERROR(Copy(staging_.data(), data, bytes, cudaMemcpyHostToDevice, "copy to the device"));
    SR_RETURN_IF_ERROR(collective(staging_.data()));
    return Copy(data, staging_.data(), bytes, cudaMemcpyDeviceToHost, "copy to the host");
  }

  // Input at the front of the staging buffer, output after it (NCCL wants
  // them apart unless in place at the rank's offset).
  template <typename Fn>
  absl::Status Gather(const void* input, size_t in_bytes, void* output, size_t out_bytes, Fn&& collective) {
    std::lock_guard<std::mutex> lock(mu_);
    SR_RETURN_IF_ERROR(CheckUsable());
    CudaDeviceGuard guard(gpu_);  // the staging buffer is on the communicator's device
    const size_t in_slot = (in_bytes + 255) / 256 * 256;  // keep the output aligned
    SR_RETURN_IF_ERROR(Reserve(in_slot + out_bytes));
    uint8_t* in = staging_.data();
    uint8_t* out = staging_.data() + in_slot;
    if (in_bytes > 0) SR_RETURN_IF_ERROR(Copy(in, input, in_bytes, cudaMemcpyHostToDevice, "copy to the device"));
    SR_RETURN_IF_ERROR(collective(in, out));
    return Copy(output, out, out_bytes, cudaMemcpyDeviceToHost, "copy to the host");
  }

  std::unique_ptr<Communicator> device_;
  const int gpu_;  // CommOptions.device
  std::mutex mu_;
  DeviceBuffer<uint8_t> staging_;
  absl::Status failure_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeHostStagedNcclCommunicator(std::shared_ptr<Store> store,
                                                                             const CommOptions& options) {
  absl::StatusOr<std::unique_ptr<Communicator>> device = MakeNcclCommunicator(std::move(store), options);
  if (!device.ok()) return device.status();
  return std::unique_ptr<Communicator>(new HostStagedCommunicator(std::move(*device), options.device));
}

}  // namespace shrinkray
