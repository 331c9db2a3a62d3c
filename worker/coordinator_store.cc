#include "worker/coordinator_store.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/status_conversion.h"

namespace shrinkray {
namespace {

class CoordinatorStore final : public Store {
 public:
  CoordinatorStore(std::shared_ptr<v1::WorkerService::StubInterface> stub, std::string token, std::string job_id,
                   int attempt)
      : stub_(std::move(stub)), token_(std::move(token)), job_id_(std::move(job_id)), attempt_(attempt) {}

  absl::Status Set(const std::string& key, const std::vector<uint8_t>& value) override {
    grpc::ClientContext context;
    Prepare(context, absl::Seconds(10));
    v1::StoreSetRequest request;
    request.set_job_id(job_id_);
    request.set_attempt(attempt_);
    request.set_key(key);
    request.set_value(std::string(value.begin(), value.end()));
    v1::StoreSetResponse response;
    return Named(key, FromGrpcStatus(stub_->StoreSet(&context, request, &response)));
  }

  // Polls: the coordinator answers NOT_FOUND until a peer sets the key.
  absl::StatusOr<std::vector<uint8_t>> Get(const std::string& key, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    absl::Duration pause = absl::Milliseconds(5);
    while (true) {
      grpc::ClientContext context;
      Prepare(context, std::min(absl::Seconds(10), std::max(absl::Milliseconds(100), deadline - absl::Now())));
      v1::StoreGetRequest request;
      request.set_job_id(job_id_);
      request.set_attempt(attempt_);
      request.set_key(key);
      v1::StoreGetResponse response;
      absl::Status s = FromGrpcStatus(stub_->StoreGet(&context, request, &response));
      if (s.ok()) return std::vector<uint8_t>(response.value().begin(), response.value().end());
      if (!absl::IsNotFound(s) && !absl::IsUnavailable(s)) return Named(key, s);
      if (absl::Now() + pause > deadline) {
        return absl::DeadlineExceededError(absl::StrCat("store key ", key, " of job ", job_id_, " attempt ", attempt_,
                                                        " not set within ", absl::FormatDuration(timeout)));
      }
      absl::SleepFor(pause);
      pause = std::min(pause * 2, absl::Milliseconds(100));
    }
  }

  absl::Status Wait(const std::vector<std::string>& keys, absl::Duration timeout) override {
    const absl::Time deadline = absl::Now() + timeout;
    for (const std::string& key : keys) {
      auto value = Get(key, std::max(absl::ZeroDuration(), deadline - absl::Now()));
      if (!value.ok()) return value.status();
    }
    return absl::OkStatus();
  }

 private:
  void Prepare(grpc::ClientContext& context, absl::Duration timeout) const {
    if (!token_.empty()) context.AddMetadata("authorization", absl::StrCat("Bearer ", token_));
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(absl::ToInt64Milliseconds(timeout)));
  }

  absl::Status Named(const std::string& key, const absl::Status& s) const {
    if (s.ok()) return s;
    return absl::Status(s.code(), absl::StrCat("rendezvous store (job ", job_id_, " attempt ", attempt_, ", key ", key,
                                               "): ", s.message()));
  }

  std::shared_ptr<v1::WorkerService::StubInterface> stub_;
  std::string token_, job_id_;
  int attempt_;
};

}  // namespace

std::shared_ptr<Store> MakeCoordinatorStore(std::shared_ptr<v1::WorkerService::StubInterface> stub,
                                            std::string token, std::string job_id, int attempt) {
  return std::make_shared<CoordinatorStore>(std::move(stub), std::move(token), std::move(job_id), attempt);
}

}  // namespace shrinkray
