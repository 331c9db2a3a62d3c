#include "core/util/compute_device.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace shrinkray {

std::string ComputeDevice::ToString() const {
  return is_cuda() ? absl::StrCat("cuda:", index) : "cpu";
}

absl::StatusOr<ComputeDevice> ParseComputeDevice(absl::string_view text, absl::string_view field) {
  if (text == "cpu") return ComputeDevice::Cpu();
  if (text == "cuda") return ComputeDevice::Cuda(0);
  constexpr absl::string_view kPrefix = "cuda:";
  if (absl::StartsWith(text, kPrefix)) {
    const absl::string_view digits = text.substr(kPrefix.size());
    int index = 0;
    // SimpleAtoi alone would take "+1" and " 1": only digits name an ordinal.
    const bool all_digits = !digits.empty() && std::all_of(digits.begin(), digits.end(), absl::ascii_isdigit);
    if (all_digits && absl::SimpleAtoi(digits, &index)) return ComputeDevice::Cuda(index);
  }
  return absl::InvalidArgumentError(absl::StrCat(field, " must be cpu, cuda or cuda:N, got '", text, "'"));
}

absl::Status CudaNotBuiltError(const ComputeDevice& device) {
  return absl::UnimplementedError(absl::StrCat("device ", device.ToString(),
                                               ": shrinkray was built without CUDA (configure with "
                                               "-DSHRINKRAY_CUDA=ON); use device cpu"));
}

}  // namespace shrinkray
