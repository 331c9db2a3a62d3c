#include "server/compression_service.h"

#include <memory>

#include "proto/status_conversion.h"
#include "server/bearer_token.h"
#include "server/stream_write_queue.h"
#include "server/unary_call.h"

namespace shrinkray {
namespace {

// One WatchJob call: the coordinator pushes into the queue (as a JobWatcher),
// the queue writes to the client one message at a time.
class WatchReactor final : public grpc::ServerWriteReactor<v1::WatchJobResponse> {
 public:
  class Watcher final : public JobWatcher {
   public:
    explicit Watcher(std::shared_ptr<StreamWriteQueue<v1::WatchJobResponse>> queue) : queue_(std::move(queue)) {}
    void OnSnapshot(const v1::Job& job) override {
      v1::WatchJobResponse r;
      *r.mutable_job() = job;
      queue_->Push(std::move(r));
    }
    void OnEvent(const v1::JobEvent& event) override {
      v1::WatchJobResponse r;
      *r.mutable_event() = event;
      queue_->Push(std::move(r));
    }
    void OnFinished() override { queue_->Close(grpc::Status::OK); }

   private:
    std::shared_ptr<StreamWriteQueue<v1::WatchJobResponse>> queue_;
  };

  WatchReactor(Coordinator* coordinator, const std::string& token, grpc::CallbackServerContext* context,
               const v1::WatchJobRequest& request)
      : coordinator_(coordinator), job_id_(request.job_id()) {
    queue_ = std::make_shared<StreamWriteQueue<v1::WatchJobResponse>>(
        [this](const v1::WatchJobResponse* m) { StartWrite(m); }, [this](const grpc::Status& s) { Finish(s); });
    absl::Status status = CheckBearerToken(token, *context);
    if (status.ok()) {
      watcher_ = std::make_shared<Watcher>(queue_);
      status = coordinator_->WatchJob(job_id_, request.after_sequence(), watcher_, request.replay_history());
    }
    if (!status.ok()) {
      watcher_.reset();
      queue_->Abort(ToGrpcStatus(status));
    }
  }

  void OnWriteDone(bool ok) override { queue_->OnWriteDone(ok); }
  void OnCancel() override { queue_->Abort(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled")); }
  void OnDone() override {
    queue_->Detach();
    if (watcher_) coordinator_->Unwatch(job_id_, watcher_.get());
    delete this;
  }

 private:
  Coordinator* const coordinator_;
  const std::string job_id_;
  std::shared_ptr<StreamWriteQueue<v1::WatchJobResponse>> queue_;
  std::shared_ptr<Watcher> watcher_;
};

}  // namespace

grpc::ServerUnaryReactor* CompressionServiceImpl::SubmitJob(grpc::CallbackServerContext* context,
                                                            const v1::SubmitJobRequest* request,
                                                            v1::SubmitJobResponse* response) {
  return AuthorizedUnary(context, token_, [&]() -> absl::Status {
    auto job = coordinator_->SubmitJob(request->spec());
    if (!job.ok()) return job.status();
    *response->mutable_job() = std::move(*job);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CompressionServiceImpl::GetJob(grpc::CallbackServerContext* context,
                                                         const v1::GetJobRequest* request,
                                                         v1::GetJobResponse* response) {
  return AuthorizedUnary(context, token_, [&]() -> absl::Status {
    auto job = coordinator_->GetJob(request->job_id());
    if (!job.ok()) return job.status();
    *response->mutable_job() = std::move(*job);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CompressionServiceImpl::ListJobs(grpc::CallbackServerContext* context,
                                                           const v1::ListJobsRequest* request,
                                                           v1::ListJobsResponse* response) {
  return AuthorizedUnary(context, token_, [&]() -> absl::Status {
    auto list = coordinator_->ListJobs(*request);
    if (!list.ok()) return list.status();
    *response = std::move(*list);
    return absl::OkStatus();
  });
}

grpc::ServerUnaryReactor* CompressionServiceImpl::CancelJob(grpc::CallbackServerContext* context,
                                                            const v1::CancelJobRequest* request,
                                                            v1::CancelJobResponse* response) {
  return AuthorizedUnary(context, token_, [&]() -> absl::Status {
    auto job = coordinator_->CancelJob(request->job_id(), request->reason());
    if (!job.ok()) return job.status();
    *response->mutable_job() = std::move(*job);
    return absl::OkStatus();
  });
}

grpc::ServerWriteReactor<v1::WatchJobResponse>* CompressionServiceImpl::WatchJob(
    grpc::CallbackServerContext* context, const v1::WatchJobRequest* request) {
  return new WatchReactor(coordinator_, token_, context, *request);
}

}  // namespace shrinkray
