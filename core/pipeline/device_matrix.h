// A matrix's float32 values in a device's memory, as one component of a
// layerwise job holds them for another: the GPU executor's copy of a
// layer's weight (LayerExecutor::DeviceWeight), read by a GPU solver backend
// on the same device instead of copying the host's values up again
// (SolverBackend::HoldWeight). Core code sees only the pointer; null data:
// no such copy.
#pragma once

namespace shrinkray {

struct DeviceMatrix {
  int device = -1;              // the CUDA device index that holds it
  const float* data = nullptr;  // [rows, cols] row-major, as the host's
};

}  // namespace shrinkray
