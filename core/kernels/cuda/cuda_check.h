// CUDA errors as absl::Status values, device discovery, and an RAII device buffer.
// Library code never exits or aborts on a CUDA failure: every runtime call goes
// through SR_CUDA_RETURN_IF_ERROR / CudaStatus and the caller decides.
// Host-only header: includable from .cc files compiled by g++.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace shrinkray {

// OK for cudaSuccess; otherwise an error naming the CUDA error, the failed
// expression and where it was called. Out-of-memory maps to ResourceExhausted,
// a bad argument to InvalidArgument, everything else to Internal.
absl::Status CudaStatus(cudaError_t err, const char* expr, const char* file, int line);

// The number of CUDA devices this process can use. 0, not an error, when the
// machine has no GPU or no (new enough) driver, so callers and tests can fall
// back or skip cleanly.
absl::StatusOr<int> CudaDeviceCount();

// Makes CUDA device `index` current on the calling thread for `device
// cuda:N` work, after CheckComputeDevice (core/util/compute_device.h):
// FailedPrecondition without a GPU or when `index` is not below the number
// visible. State made on a device belongs to it: an object that keeps any
// stores the index and makes it current again on every call, since callers
// may come from other threads.
absl::Status UseCudaDevice(int index);

// Makes `device` current for the scope and restores the caller's device (for
// code that must not change which device its caller's thread uses, e.g. a
// communicator's collectives). Failures are ignored: the CUDA calls in the
// scope report a broken context themselves.
class CudaDeviceGuard {
 public:
  explicit CudaDeviceGuard(int device) {
    if (cudaGetDevice(&previous_) == cudaSuccess && previous_ != device) {
      restore_ = cudaSetDevice(device) == cudaSuccess;
    }
  }
  ~CudaDeviceGuard() {
    if (restore_) (void)cudaSetDevice(previous_);
  }
  CudaDeviceGuard(const CudaDeviceGuard&) = delete;
  CudaDeviceGuard& operator=(const CudaDeviceGuard&) = delete;

 private:
  int previous_ = -1;
  bool restore_ = false;
};

}  // namespace shrinkray

// Returns a non-OK absl::Status from the enclosing function when the CUDA
// runtime call `expr` does not return cudaSuccess.
#define SR_CUDA_RETURN_IF_ERROR(expr)                                                \
  do {                                                                               \
    const cudaError_t sr_cuda_err_ = (expr);                                         \
    if (sr_cuda_err_ != cudaSuccess) {                                               \
      return ::shrinkray::CudaStatus(sr_cuda_err_, #expr, __FILE__, __LINE__);       \
    }                                                                                \
  } while (0)

// The status of the last kernel launch (a launch itself returns nothing).
#define SR_CUDA_CHECK_LAUNCH() SR_CUDA_RETURN_IF_ERROR(cudaGetLastError())

namespace shrinkray {

// An owning device allocation of `size()` elements of T. Move-only; frees on
// destruction. Host copies are synchronous with respect to the host (they wait
// for `stream`), so the host span may be reused as soon as they return.
// CUDA events created on first use and reused (phase timing on a stream);
// destroyed with the pool.
class CudaEventPool {
 public:
  CudaEventPool() = default;
  ~CudaEventPool() {
    for (cudaEvent_t e : events_) (void)cudaEventDestroy(e);  // nothing to report from a destructor
  }
  CudaEventPool(const CudaEventPool&) = delete;
  CudaEventPool& operator=(const CudaEventPool&) = delete;

  // The i-th event, creating events up to it.
  absl::StatusOr<cudaEvent_t> Get(size_t i) {
    while (events_.size() <= i) {
      cudaEvent_t e = nullptr;
      SR_CUDA_RETURN_IF_ERROR(cudaEventCreate(&e));
      events_.push_back(e);
    }
    return events_[i];
  }
  // An event Get already created.
  cudaEvent_t operator[](size_t i) const { return events_[i]; }

 private:
  std::vector<cudaEvent_t> events_;
};

template <typename T>
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Reset(); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  // Allocates `count` uninitialised elements on the current device.
  static absl::StatusOr<DeviceBuffer> Create(size_t count) {
    DeviceBuffer buf;
    if (count > 0) {
      void* p = nullptr;
      SR_CUDA_RETURN_IF_ERROR(cudaMalloc(&p, count * sizeof(T)));
      buf.ptr_ = static_cast<T*>(p);
      buf.size_ = count;
    }
    return buf;
  }

  // Allocates and fills from host memory.
  static absl::StatusOr<DeviceBuffer> FromHost(absl::Span<const T> src,
                                               cudaStream_t stream = nullptr) {
    absl::StatusOr<DeviceBuffer> buf = Create(src.size());
    if (!buf.ok()) return buf.status();
    absl::Status st = buf->CopyFromHost(src, stream);
    if (!st.ok()) return st;
    return buf;
  }

  absl::Status CopyFromHost(absl::Span<const T> src, cudaStream_t stream = nullptr) {
    if (src.size() > size_) {
      return absl::InvalidArgumentError("DeviceBuffer::CopyFromHost: source larger than buffer");
    }
    if (src.empty()) return absl::OkStatus();
    SR_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(ptr_, src.data(), src.size() * sizeof(T), cudaMemcpyHostToDevice, stream));
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }

  absl::Status CopyToHost(absl::Span<T> dst, cudaStream_t stream = nullptr) const {
    if (dst.size() > size_) {
      return absl::InvalidArgumentError("DeviceBuffer::CopyToHost: destination larger than buffer");
    }
    if (dst.empty()) return absl::OkStatus();
    SR_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(dst.data(), ptr_, dst.size() * sizeof(T), cudaMemcpyDeviceToHost, stream));
    SR_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(stream));
    return absl::OkStatus();
  }

  // Sets every byte to `value` (asynchronously on `stream`).
  absl::Status Memset(int value, cudaStream_t stream = nullptr) {
    if (size_ == 0) return absl::OkStatus();
    SR_CUDA_RETURN_IF_ERROR(cudaMemsetAsync(ptr_, value, size_ * sizeof(T), stream));
    return absl::OkStatus();
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }
  size_t bytes() const { return size_ * sizeof(T); }

  // Frees the allocation now. A destructor cannot return a status, and a
  // failing cudaFree means the context is already broken (the next checked
  // call reports it), so the error is dropped here on purpose.
  void Reset() {
    if (ptr_ != nullptr) (void)cudaFree(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

// An owning page-locked host allocation of `size()` elements of T: the DMA
// engines copy from it while the host and the kernels work on (a copy from
// pageable memory is staged by the driver and blocks the caller). Move-only.
template <typename T>
class PinnedHostBuffer {
 public:
  PinnedHostBuffer() = default;
  ~PinnedHostBuffer() { Reset(); }
  PinnedHostBuffer(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer(PinnedHostBuffer&& other) noexcept
      : ptr_(std::exchange(other.ptr_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  PinnedHostBuffer& operator=(PinnedHostBuffer&& other) noexcept {
    if (this != &other) {
      Reset();
      ptr_ = std::exchange(other.ptr_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }

  // `count` uninitialised elements; ResourceExhausted when the host cannot
  // lock that much.
  static absl::StatusOr<PinnedHostBuffer> Create(size_t count) {
    PinnedHostBuffer buf;
    if (count > 0) {
      void* p = nullptr;
      SR_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&p, count * sizeof(T), cudaHostAllocDefault));
      buf.ptr_ = static_cast<T*>(p);
      buf.size_ = count;
    }
    return buf;
  }

  T* data() { return ptr_; }
  const T* data() const { return ptr_; }
  size_t size() const { return size_; }

  // As DeviceBuffer::Reset: a failing free is reported by the next checked call.
  void Reset() {
    if (ptr_ != nullptr) (void)cudaFreeHost(ptr_);
    ptr_ = nullptr;
    size_ = 0;
  }

 private:
  T* ptr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace shrinkray
