// The client side of CompressionService for the `shrinkray` service commands:
// the channel (plaintext or TLS), the bearer token on every call, the deadline
// on unary calls, and gRPC errors turned into absl::Status.
#pragma once

#include <chrono>
#include <functional>
#include <memory>
#include <set>
#include <string>

#include "absl/status/statusor.h"
#include "core/util/flags.h"
#include "grpcpp/channel.h"
#include "shrinkray/v1/compression.grpc.pb.h"

namespace shrinkray::cli {

// --server HOST:PORT, --token-file FILE, --tls-ca FILE, --timeout SECONDS.
extern const std::set<std::string> kConnectionFlags;
// `base` plus kConnectionFlags, for Flags::Parse.
std::set<std::string> WithConnectionFlags(std::set<std::string> base);

struct ConnectionOptions {
  std::string server = "127.0.0.1:50051";
  std::string token;         // sent as "authorization: Bearer <token>"; "" sends nothing
  std::string tls_root_pem;  // "" -> plaintext
  std::chrono::milliseconds timeout{30'000};  // per unary call
};

// Reads the token and CA files named by the flags.
absl::StatusOr<ConnectionOptions> ConnectionOptionsFromFlags(const Flags& flags);

class CompressionClient {
 public:
  explicit CompressionClient(ConnectionOptions options);

  absl::StatusOr<v1::Job> SubmitJob(const v1::JobSpec& spec);
  absl::StatusOr<v1::Job> GetJob(const std::string& job_id);
  absl::StatusOr<v1::ListJobsResponse> ListJobs(const v1::ListJobsRequest& request);
  absl::StatusOr<v1::Job> CancelJob(const std::string& job_id, const std::string& reason);

  // One WatchJob stream, without a deadline (keepalive pings notice a dead
  // connection): calls `on_message` for each message until the stream ends or
  // `on_message` returns an error (which is returned). Returns the stream's
  // status; *received tells whether any message arrived. `replay_history`
  // asks for every stored event after the snapshot.
  absl::Status WatchJob(const std::string& job_id, int64_t after_sequence,
                        const std::function<absl::Status(const v1::WatchJobResponse&)>& on_message,
                        bool* received, bool replay_history = false);

  // Blocks until the channel is connected or `deadline` passes (reconnects).
  bool WaitForConnected(std::chrono::system_clock::time_point deadline);

  const ConnectionOptions& options() const { return options_; }

 private:
  void Prepare(grpc::ClientContext* context, bool with_deadline) const;
  // FromGrpcStatus, with the server address and a hint added where they help.
  absl::Status ToStatus(const grpc::Status& status) const;

  ConnectionOptions options_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::CompressionService::Stub> stub_;
};

}  // namespace shrinkray::cli
