#include "core/io/dense_format.h"

#include <utility>

#include "core/util/status_macros.h"

namespace shrinkray {

absl::StatusOr<FormatOutput> BuildDenseOutput(const CompressedModelSpec& spec) {
  FormatOutput out;
  // Validate the quantized weights even though only their values are written,
  // so that a bad spec fails the same way in every format.
  SR_RETURN_IF_ERROR(ValidateQuantizedEntries(spec));
  out.tensors.reserve(spec.tensors.size());
  for (const CompressedTensorEntry& entry : spec.tensors) {
    SR_ASSIGN_OR_RETURN(OwnedTensor t, EncodeDense(entry, spec.dense_dtype));
    out.tensors.push_back(std::move(t));
  }
  return out;
}

}  // namespace shrinkray
