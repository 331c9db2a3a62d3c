// The one mapping between absl::Status (core, server logic) and grpc::Status
// (the wire). Codes map number for number (both follow google.rpc.Code).
#pragma once

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace shrinkray {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace shrinkray
