// The precision a layerwise job runs its calibration forwards and gathers
// their statistics in. float32 is the reference (the CPU forward, and the
// GPU's cuBLAS fp32 GEMMs); bfloat16 runs the GPU executor's activations,
// weights and GEMMs in bf16 on tensor cores with fp32 accumulation (the
// Hessians are then sums of exact products of bf16 values, accumulated in
// fp32), as GPU compression tools usually run a bf16 model. The CPU always
// runs float32.
#pragma once

#include <string_view>

namespace shrinkray {

enum class ForwardDtype { kFloat32, kBfloat16 };

inline std::string_view ForwardDtypeName(ForwardDtype dtype) {
  return dtype == ForwardDtype::kBfloat16 ? "bfloat16" : "float32";
}

}  // namespace shrinkray
