// The shape of every unary handler: check the bearer token, run the body,
// finish the call with the body's status mapped once to gRPC's.
#pragma once

#include <string>

#include "grpcpp/server_context.h"
#include "grpcpp/support/server_callback.h"
#include "proto/status_conversion.h"
#include "server/bearer_token.h"

namespace shrinkray {

template <typename Body>
grpc::ServerUnaryReactor* AuthorizedUnary(grpc::CallbackServerContext* context, const std::string& token, Body body) {
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  absl::Status status = CheckBearerToken(token, *context);
  if (status.ok()) status = body();
  reactor->Finish(ToGrpcStatus(status));
  return reactor;
}

}  // namespace shrinkray
