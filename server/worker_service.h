// The internal WorkerService: one bidirectional Connect stream per worker.
// The first message must be a hello (the worker is then registered); the
// coordinator writes the registration, assignments and cancellations through
// a StreamWriteQueue. When the stream ends the worker counts as lost.
#pragma once

#include <string>

#include "server/coordinator.h"
#include "shrinkray/v1/worker.grpc.pb.h"

namespace shrinkray {

class WorkerServiceImpl final : public v1::WorkerService::CallbackService {
 public:
  WorkerServiceImpl(Coordinator* coordinator, std::string token)
      : coordinator_(coordinator), token_(std::move(token)) {}

  grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse>* Connect(
      grpc::CallbackServerContext* context) override;
  grpc::ServerUnaryReactor* StoreSet(grpc::CallbackServerContext* context, const v1::StoreSetRequest* request,
                                     v1::StoreSetResponse* response) override;
  grpc::ServerUnaryReactor* StoreGet(grpc::CallbackServerContext* context, const v1::StoreGetRequest* request,
                                     v1::StoreGetResponse* response) override;

 private:
  Coordinator* const coordinator_;
  const std::string token_;
};

}  // namespace shrinkray
