// The public CompressionService over the callback API: each handler checks the
// bearer token, calls the Coordinator and maps its absl::Status once
// (proto/status_conversion.h).
#pragma once

#include <string>

#include "server/coordinator.h"
#include "shrinkray/v1/compression.grpc.pb.h"

namespace shrinkray {

class CompressionServiceImpl final : public v1::CompressionService::CallbackService {
 public:
  CompressionServiceImpl(Coordinator* coordinator, std::string token)
      : coordinator_(coordinator), token_(std::move(token)) {}

  grpc::ServerUnaryReactor* SubmitJob(grpc::CallbackServerContext* context, const v1::SubmitJobRequest* request,
                                      v1::SubmitJobResponse* response) override;
  grpc::ServerUnaryReactor* GetJob(grpc::CallbackServerContext* context, const v1::GetJobRequest* request,
                                   v1::GetJobResponse* response) override;
  grpc::ServerUnaryReactor* ListJobs(grpc::CallbackServerContext* context, const v1::ListJobsRequest* request,
                                     v1::ListJobsResponse* response) override;
  grpc::ServerUnaryReactor* CancelJob(grpc::CallbackServerContext* context, const v1::CancelJobRequest* request,
                                      v1::CancelJobResponse* response) override;
  grpc::ServerWriteReactor<v1::WatchJobResponse>* WatchJob(grpc::CallbackServerContext* context,
                                                          const v1::WatchJobRequest* request) override;

 private:
  Coordinator* const coordinator_;
  const std::string token_;
};

}  // namespace shrinkray
