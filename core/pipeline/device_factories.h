// How a program that picks its device at run time (the CLI, the worker)
// reaches it: one factory per kind of work, made once from the device and
// handed to core through the job's options (LayerwiseOptions.solvers and
// .executors, CompressionJob.distill_runners). Core never names a device
// backend itself. For the CPU each gives "none" (null, an empty factory),
// which core runs on the CPU; for cuda:N the CUDA one bound to GPU N, after
// CheckComputeDevice (core/util/compute_device.h): Unimplemented naming the
// build without CUDA, FailedPrecondition when GPU N is not visible.
//
// Defined in device_factories.cc, which CUDA builds compile into
// shrinkray_cuda (core/CMakeLists.txt), so that static link order resolves
// the CUDA entry points it calls: a program calling these links
// shrinkray_cuda there.
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "core/distill/distill_device.h"
#include "core/pipeline/layer_executor.h"
#include "core/pipeline/solver_backend.h"
#include "core/util/compute_device.h"

namespace shrinkray {

// Where GPTQ/SparseGPT solve: null on the CPU, else MakeCudaSolverBackend.
absl::StatusOr<std::unique_ptr<SolverBackend>> MakeSolverBackend(const ComputeDevice& device);

// Where the layer forwards and statistics run: empty on the CPU, else
// MakeCudaLayerExecutor on the device's index.
absl::StatusOr<LayerExecutorFactory> MakeLayerExecutorFactory(const ComputeDevice& device);

// Where distillation trains: empty on the CPU, else MakeCudaDistillRunner on
// the device's index.
absl::StatusOr<distill::DistillRunnerFactory> MakeDistillRunnerFactory(const ComputeDevice& device);

// The CUDA executor on device `device` (cuda:N; CUDA builds, elsewhere
// Unimplemented naming the build).
absl::StatusOr<std::unique_ptr<LayerExecutor>> MakeCudaLayerExecutor(int device, const LayerExecutorSpec& spec);

}  // namespace shrinkray
