#include "core/pipeline/device_factories.h"

#include <string>
#include <utility>

#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<std::unique_ptr<SolverBackend>> MakeSolverBackend(const ComputeDevice& device) {
  if (!device.is_cuda()) return std::unique_ptr<SolverBackend>();
  return MakeCudaSolverBackend(device.index);
}

absl::StatusOr<LayerExecutorFactory> MakeLayerExecutorFactory(const ComputeDevice& device) {
  if (!device.is_cuda()) return LayerExecutorFactory();
  // Checked now, so that a bad device fails the program before any run does.
  SR_RETURN_IF_ERROR(CheckComputeDevice(device));
  const int index = device.index;
  return LayerExecutorFactory(
      [index](const LayerExecutorSpec& spec) { return MakeCudaLayerExecutor(index, spec); });
}

absl::StatusOr<distill::DistillRunnerFactory> MakeDistillRunnerFactory(const ComputeDevice& device) {
  if (!device.is_cuda()) return distill::DistillRunnerFactory();
  SR_RETURN_IF_ERROR(CheckComputeDevice(device));
  const int index = device.index;
  return distill::DistillRunnerFactory([index](const distill::DistillTrainerOptions& options,
                                               const LlamaModel& teacher, const distill::TrainData& data,
                                               train::ParameterStore student) {
    return distill::MakeCudaDistillRunner(index, options, teacher, data, std::move(student));
  });
}

}  // namespace shrinkray
