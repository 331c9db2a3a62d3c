#include "server/worker_service.h"

#include <memory>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/status_conversion.h"
#include "server/bearer_token.h"
#include "server/stream_write_queue.h"
#include "server/unary_call.h"

namespace shrinkray {
namespace {

class ConnectReactor final : public grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse> {
 public:
  ConnectReactor(Coordinator* coordinator, const std::string& token, grpc::CallbackServerContext* context)
      : coordinator_(coordinator) {
    queue_ = std::make_shared<StreamWriteQueue<v1::ConnectResponse>>(
        [this](const v1::ConnectResponse* m) { StartWrite(m); }, [this](const grpc::Status& s) { Finish(s); });
    absl::Status status = CheckBearerToken(token, *context);
    if (!status.ok()) {
      queue_->Abort(ToGrpcStatus(status));
      return;
    }
    StartRead(&request_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {  // the worker closed its side (or went away)
      Disconnect("the worker closed the stream");
      queue_->Close(grpc::Status::OK);
      return;
    }
    absl::Status status;
    if (worker_id_.empty()) {
      if (!request_.has_hello()) {
        status = absl::FailedPreconditionError("the first message on a worker stream must be a hello");
      } else {
        std::shared_ptr<StreamWriteQueue<v1::ConnectResponse>> queue = queue_;
        auto registered = coordinator_->RegisterWorker(
            request_.hello(), [queue](const v1::ConnectResponse& m) { queue->Push(m); });
        status = registered.status();
        if (registered.ok()) {
          absl::MutexLock lock(&mu_);
          worker_id_ = registered->worker_id();
        }
      }
    } else {
      status = coordinator_->HandleWorkerMessage(worker_id_, request_);
    }
    if (!status.ok()) {
      Disconnect(std::string(status.message()));
      queue_->Abort(ToGrpcStatus(status));
      return;
    }
    StartRead(&request_);
  }

  void OnWriteDone(bool ok) override { queue_->OnWriteDone(ok); }
  void OnCancel() override {
    Disconnect("the stream was cancelled");
    queue_->Abort(grpc::Status(grpc::StatusCode::CANCELLED, "worker stream cancelled"));
  }
  void OnDone() override {
    Disconnect("the stream ended");
    queue_->Detach();
    delete this;
  }

 private:
  // OnCancel may run concurrently with the read reaction, hence the lock.
  void Disconnect(const std::string& reason) {
    std::string id;
    {
      absl::MutexLock lock(&mu_);
      if (worker_id_.empty() || disconnected_) return;
      disconnected_ = true;
      id = worker_id_;
    }
    coordinator_->WorkerDisconnected(id, reason);
  }

  Coordinator* const coordinator_;
  std::shared_ptr<StreamWriteQueue<v1::ConnectResponse>> queue_;
  v1::ConnectRequest request_;
  absl::Mutex mu_;
  std::string worker_id_;  // written once, by the read reaction
  bool disconnected_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* WorkerServiceImpl::StoreSet(grpc::CallbackServerContext* context,
                                                       const v1::StoreSetRequest* request, v1::StoreSetResponse*) {
  return AuthorizedUnary(context, token_, [&] {
    return coordinator_->StoreSet(request->job_id(), request->attempt(), request->key(), request->value());
  });
}

grpc::ServerUnaryReactor* WorkerServiceImpl::StoreGet(grpc::CallbackServerContext* context,
                                                       const v1::StoreGetRequest* request,
                                                       v1::StoreGetResponse* response) {
  return AuthorizedUnary(context, token_, [&]() -> absl::Status {
    auto value = coordinator_->StoreGet(request->job_id(), request->attempt(), request->key());
    if (!value.ok()) return value.status();
    response->set_value(std::move(*value));
    return absl::OkStatus();
  });
}

grpc::ServerBidiReactor<v1::ConnectRequest, v1::ConnectResponse>* WorkerServiceImpl::Connect(
    grpc::CallbackServerContext* context) {
  return new ConnectReactor(coordinator_, token_, context);
}

}  // namespace shrinkray
