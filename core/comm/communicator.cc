#include "core/comm/communicator.h"

#include <cstring>

#include "absl/strings/str_cat.h"

namespace shrinkray {

size_t CommDTypeSize(CommDType dtype) {
  switch (dtype) {
    case CommDType::kF32: return 4;
    case CommDType::kF64: return 8;
    case CommDType::kBF16: return 2;
    case CommDType::kI32: return 4;
    case CommDType::kU8: return 1;
  }
  return 0;
}

std::string CommDTypeName(CommDType dtype) {
  switch (dtype) {
    case CommDType::kF32: return "F32";
    case CommDType::kF64: return "F64";
    case CommDType::kBF16: return "BF16";
    case CommDType::kI32: return "I32";
    case CommDType::kU8: return "U8";
  }
  return absl::StrCat("CommDType(", static_cast<int>(dtype), ")");
}

namespace {

// Size 1: the reduction of one rank is its own data, so only the gathers move
// bytes (input -> output). Checks the same arguments the real backends check,
// so a caller's bug shows up in single-worker jobs too.
class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(absl::Duration timeout) : Communicator(timeout) {}

  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string backend() const override { return "local"; }

  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op) override {
    if (data == nullptr && count > 0) return absl::InvalidArgumentError("local AllReduce: null buffer");
    return absl::OkStatus();
  }
  absl::Status Broadcast(void* data, size_t count, CommDType dtype, int root) override {
    if (data == nullptr && count > 0) return absl::InvalidArgumentError("local Broadcast: null buffer");
    if (root != 0) {
      return absl::InvalidArgumentError(absl::StrCat("local Broadcast: root ", root, " out of range [0, 1)"));
    }
    return absl::OkStatus();
  }
  absl::Status AllGather(const void* input, void* output, size_t count, CommDType dtype) override {
    return Copy("AllGather", input, output, count, dtype);
  }
  absl::Status AllGatherV(const void* input, void* output, const std::vector<size_t>& counts,
                          CommDType dtype) override {
    if (counts.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat("local AllGatherV: ", counts.size(), " counts for 1 rank"));
    }
    return Copy("AllGatherV", input, output, counts[0], dtype);
  }
  absl::Status Barrier() override { return absl::OkStatus(); }

 private:
  static absl::Status Copy(const char* op, const void* input, void* output, size_t count, CommDType dtype) {
    if (count == 0) return absl::OkStatus();
    if (input == nullptr || output == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("local ", op, ": null buffer"));
    }
    // memmove: in-place gathers (input == output) are legal for one rank.
    if (input != output) std::memmove(output, input, count * CommDTypeSize(dtype));
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Communicator> MakeLocalCommunicator(absl::Duration timeout) {
  return std::make_unique<LocalCommunicator>(timeout);
}

}  // namespace shrinkray
