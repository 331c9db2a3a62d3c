#include "core/io/dense_format.h"

#include <set>
#include <string>
#include <utility>

#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

class DenseEncoder : public FormatEncoder {
 public:
  explicit DenseEncoder(DType dtype) : dtype_(dtype) {}

  absl::Status Add(std::span<const CompressedTensorEntry> tensors,
                   const EncodedTensorSink& sink) override {
    // Validate the quantized weights even though only their values are
    // written, so that a bad spec fails the same way in every format.
    SR_RETURN_IF_ERROR(ValidateQuantizedEntries(tensors, &names_));
    for (const CompressedTensorEntry& entry : tensors) {
      SR_ASSIGN_OR_RETURN(const StreamedTensor t, EncodeDense(entry, dtype_));
      SR_RETURN_IF_ERROR(sink(t, {}));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<FormatOutput> Finish() override { return FormatOutput{}; }

 private:
  DType dtype_;
  std::set<std::string> names_;
};

}  // namespace

std::unique_ptr<FormatEncoder> MakeDenseEncoder(const CompressedModelSpec& header) {
  return std::make_unique<DenseEncoder>(header.dense_dtype);
}

}  // namespace shrinkray
