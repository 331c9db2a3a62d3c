#include "client/cli/rpc_client.h"

#include <cmath>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "core/util/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/status_conversion.h"

namespace shrinkray::cli {
namespace {

absl::StatusOr<std::string> ReadSmallFile(const std::string& flag, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--", flag, " ", path, ": cannot open"));
  std::ostringstream text;
  text << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("--", flag, " ", path, ": read failed"));
  return text.str();
}

std::shared_ptr<grpc::Channel> MakeChannel(const ConnectionOptions& options) {
  grpc::ChannelArguments args;
  // Watch streams have no deadline, so keepalive pings are what notices a
  // peer that vanished without closing the connection. The coordinator must
  // allow pings this often (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS
  // below 60 s); with gRPC's default (5 min) an idle watch gets a
  // "too_many_pings" GOAWAY after about 3 minutes, and watch reconnects.
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 60'000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20'000);
  args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);  // a watch sends no data after its request
  // Reconnect to a restarted coordinator within seconds, not gRPC's default
  // of up to two minutes; watch gives up after about a minute.
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 500);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 5'000);
  // A page of jobs with their recipes and report.json can pass gRPC's 4 MiB default.
  args.SetMaxReceiveMessageSize(64 << 20);
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.tls_root_pem.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    grpc::SslCredentialsOptions ssl;
    ssl.pem_root_certs = options.tls_root_pem;
    credentials = grpc::SslCredentials(ssl);
  }
  return grpc::CreateCustomChannel(options.server, credentials, args);
}

}  // namespace

const std::set<std::string> kConnectionFlags = {"server", "token-file", "tls-ca", "timeout"};

std::set<std::string> WithConnectionFlags(std::set<std::string> base) {
  base.insert(kConnectionFlags.begin(), kConnectionFlags.end());
  return base;
}

absl::StatusOr<ConnectionOptions> ConnectionOptionsFromFlags(const Flags& flags) {
  ConnectionOptions options;
  options.server = flags.Get("server", options.server);
  if (options.server.empty()) return absl::InvalidArgumentError("--server must not be empty");
  if (flags.Has("token-file")) {
    const std::string path = flags.Get("token-file", "");
    SR_ASSIGN_OR_RETURN(std::string token, ReadSmallFile("token-file", path));
    options.token = std::string(absl::StripAsciiWhitespace(token));
    // An empty token would silently send unauthenticated calls.
    if (options.token.empty()) return absl::InvalidArgumentError(absl::StrCat("--token-file ", path, ": empty"));
  }
  if (flags.Has("tls-ca")) {
    const std::string path = flags.Get("tls-ca", "");
    SR_ASSIGN_OR_RETURN(options.tls_root_pem, ReadSmallFile("tls-ca", path));
    if (options.tls_root_pem.find("-----BEGIN CERTIFICATE-----") == std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("--tls-ca ", path, ": no PEM certificate in it"));
    }
  }
  SR_ASSIGN_OR_RETURN(double seconds, flags.GetDouble("timeout", 30.0));
  if (!(seconds > 0) || seconds > 86'400) {
    return absl::InvalidArgumentError(absl::StrCat("--timeout must be in (0, 86400] seconds, got ", seconds));
  }
  options.timeout = std::chrono::milliseconds(static_cast<int64_t>(std::ceil(seconds * 1000)));
  return options;
}

CompressionClient::CompressionClient(ConnectionOptions options)
    : options_(std::move(options)),
      channel_(MakeChannel(options_)),
      stub_(v1::CompressionService::NewStub(channel_)) {}

void CompressionClient::Prepare(grpc::ClientContext* context, bool with_deadline) const {
  if (!options_.token.empty()) context->AddMetadata("authorization", absl::StrCat("Bearer ", options_.token));
  // No wait_for_ready: a coordinator that is down fails the call at once
  // (UNAVAILABLE) instead of after the whole timeout.
  if (with_deadline) context->set_deadline(std::chrono::system_clock::now() + options_.timeout);
}

absl::Status CompressionClient::ToStatus(const grpc::Status& grpc_status) const {
  absl::Status status = FromGrpcStatus(grpc_status);
  if (status.ok()) return status;
  const std::string message(status.message());
  switch (status.code()) {
    case absl::StatusCode::kUnavailable:
      return absl::UnavailableError(
          absl::StrCat("cannot reach the coordinator at ", options_.server, ": ", message));
    case absl::StatusCode::kDeadlineExceeded:
      return absl::DeadlineExceededError(absl::StrFormat("no answer from the coordinator at %s within %.3g s (--timeout): %s",
                                                         options_.server, options_.timeout.count() / 1000.0, message));
    case absl::StatusCode::kUnauthenticated:
      if (options_.token.empty()) return absl::UnauthenticatedError(absl::StrCat(message, " (no --token-file given)"));
      return status;
    default:
      return status;
  }
}

absl::StatusOr<v1::Job> CompressionClient::SubmitJob(const v1::JobSpec& spec) {
  grpc::ClientContext context;
  Prepare(&context, true);
  v1::SubmitJobRequest request;
  *request.mutable_spec() = spec;
  v1::SubmitJobResponse response;
  SR_RETURN_IF_ERROR(ToStatus(stub_->SubmitJob(&context, request, &response)));
  return response.job();
}

absl::StatusOr<v1::Job> CompressionClient::GetJob(const std::string& job_id) {
  grpc::ClientContext context;
  Prepare(&context, true);
  v1::GetJobRequest request;
  request.set_job_id(job_id);
  v1::GetJobResponse response;
  SR_RETURN_IF_ERROR(ToStatus(stub_->GetJob(&context, request, &response)));
  return response.job();
}

absl::StatusOr<v1::ListJobsResponse> CompressionClient::ListJobs(const v1::ListJobsRequest& request) {
  grpc::ClientContext context;
  Prepare(&context, true);
  v1::ListJobsResponse response;
  SR_RETURN_IF_ERROR(ToStatus(stub_->ListJobs(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::Job> CompressionClient::CancelJob(const std::string& job_id, const std::string& reason) {
  grpc::ClientContext context;
  Prepare(&context, true);
  v1::CancelJobRequest request;
  request.set_job_id(job_id);
  request.set_reason(reason);
  v1::CancelJobResponse response;
  SR_RETURN_IF_ERROR(ToStatus(stub_->CancelJob(&context, request, &response)));
  return response.job();
}

absl::Status CompressionClient::WatchJob(const std::string& job_id, int64_t after_sequence,
                                         const std::function<absl::Status(const v1::WatchJobResponse&)>& on_message,
                                         bool* received, bool replay_history) {
  *received = false;
  grpc::ClientContext context;
  Prepare(&context, /*with_deadline=*/false);
  v1::WatchJobRequest request;
  request.set_job_id(job_id);
  request.set_after_sequence(after_sequence);
  request.set_replay_history(replay_history);
  std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader = stub_->WatchJob(&context, request);
  v1::WatchJobResponse message;
  while (reader->Read(&message)) {
    *received = true;
    if (absl::Status status = on_message(message); !status.ok()) {
      context.TryCancel();
      (void)reader->Finish();  // CANCELLED, by us; the callback's error is the one that matters
      return status;
    }
  }
  return ToStatus(reader->Finish());
}

bool CompressionClient::WaitForConnected(std::chrono::system_clock::time_point deadline) {
  return channel_->WaitForConnected(deadline);
}

}  // namespace shrinkray::cli
