// The device a program computes on, as its --device flag names it: "cpu",
// "cuda" or "cuda:N" (PyTorch's spelling). "cuda" is cuda:0, the device a
// process uses when nothing chose another, so one GPU per process (one pod per
// GPU) needs no index; a multi-GPU host runs one process per cuda:N.
#pragma once

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace shrinkray {

struct ComputeDevice {
  enum class Kind { kCpu, kCuda };
  Kind kind = Kind::kCpu;
  int index = 0;  // the CUDA ordinal of cuda:N; 0 for the CPU

  static ComputeDevice Cpu() { return {}; }
  static ComputeDevice Cuda(int index) { return {Kind::kCuda, index}; }
  bool is_cuda() const { return kind == Kind::kCuda; }
  std::string ToString() const;  // "cpu" or "cuda:N"
  bool operator==(const ComputeDevice&) const = default;
};

// "cpu", "cuda" (= cuda:0) or "cuda:N" with N a non-negative decimal integer
// (no sign, space or other text). Anything else is InvalidArgument naming
// `field` and the value: "device must be cpu, cuda or cuda:N, got 'cuda:x'".
absl::StatusOr<ComputeDevice> ParseComputeDevice(absl::string_view text, absl::string_view field = "device");

// Whether `device` can be used here, before any work: OK for the CPU; for
// cuda:N, Unimplemented naming the build when it has no CUDA, else
// FailedPrecondition when no GPU is visible or N is not below the number
// visible ("device cuda:3: 1 CUDA device(s) visible"). Defined with the CUDA
// kernels (shrinkray_cuda, core/kernels/cuda/cuda_check.cc: a program calling
// it links that library) or, in builds without CUDA, in cuda_device_stub.cc.
absl::Status CheckComputeDevice(const ComputeDevice& device);

// What every `cuda:N` entry point answers in a build without CUDA.
absl::Status CudaNotBuiltError(const ComputeDevice& device);

}  // namespace shrinkray
