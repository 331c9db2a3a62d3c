// shrinkray-coordinator: serves CompressionService (public), WorkerService
// (internal), grpc.health.v1 and server reflection on --listen, Prometheus
// metrics on --metrics-listen; jobs live in SQLite under --data-dir.
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/text_file.h"
#include "core/util/flags.h"
#include "core/util/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "prometheus/registry.h"
#include "proto/metrics_endpoint.h"
#include "server/bearer_token.h"
#include "server/compression_service.h"
#include "server/coordinator.h"
#include "server/worker_service.h"

namespace shrinkray {
namespace {

constexpr const char* kUsage = R"(usage: shrinkray-coordinator [flags]
  --listen HOST:PORT            gRPC address (default 0.0.0.0:50051; port 0 picks one)
  --metrics-listen HOST:PORT    Prometheus /metrics (default 0.0.0.0:9090; empty: off)
  --data-dir DIR                SQLite job store folder (default ./shrinkray-data)
  --allowed-root DIR            model/data/output paths must lie under it (repeatable)
  --token-file FILE             require "authorization: Bearer <token>" (not on health)
  --tls-cert FILE --tls-key FILE  serve TLS
  --max-queued-jobs N           SubmitJob is RESOURCE_EXHAUSTED beyond it (default 1000)
  --max-workers-per-job N       default 8
  --heartbeat-timeout-seconds S a silent worker is lost after S (default 10)
  --max-attempts N              re-queues before a job fails (default 3)
  --port-file FILE              write the bound gRPC port there (for scripts/tests)
)";

std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

absl::Status Run(const std::vector<std::string>& args) {
  SR_ASSIGN_OR_RETURN(
      Flags flags,
      Flags::Parse(args,
                   {"listen", "metrics-listen", "data-dir", "token-file", "tls-cert", "tls-key", "max-queued-jobs",
                    "max-workers-per-job", "heartbeat-timeout-seconds", "max-attempts", "port-file"},
                   {"help"}, {"allowed-root"}));
  if (flags.Has("help")) {
    std::fputs(kUsage, stdout);
    return absl::OkStatus();
  }
  CoordinatorOptions options;
  SR_ASSIGN_OR_RETURN(long max_queued, flags.GetInt("max-queued-jobs", 1000));
  SR_ASSIGN_OR_RETURN(long max_workers, flags.GetInt("max-workers-per-job", 8));
  SR_ASSIGN_OR_RETURN(double heartbeat_timeout, flags.GetDouble("heartbeat-timeout-seconds", 10.0));
  SR_ASSIGN_OR_RETURN(long max_attempts, flags.GetInt("max-attempts", 3));
  if (max_queued < 0) return absl::InvalidArgumentError("--max-queued-jobs must be >= 0");
  if (max_workers < 1) return absl::InvalidArgumentError("--max-workers-per-job must be >= 1");
  if (heartbeat_timeout <= 0) return absl::InvalidArgumentError("--heartbeat-timeout-seconds must be > 0");
  if (max_attempts < 1) return absl::InvalidArgumentError("--max-attempts must be >= 1");
  options.max_queued_jobs = static_cast<int>(max_queued);
  options.limits.max_workers_per_job = static_cast<int>(max_workers);
  options.heartbeat_timeout = absl::Seconds(heartbeat_timeout);
  options.heartbeat_interval = std::min(absl::Seconds(1), options.heartbeat_timeout / 4);
  options.max_attempts = static_cast<int>(max_attempts);

  std::string token;
  if (flags.Has("token-file")) {
    SR_ASSIGN_OR_RETURN(token, ReadTokenFile(flags.Get("token-file", "")));
  }
  std::vector<std::filesystem::path> roots;
  for (const std::string& r : flags.GetAll("allowed-root")) roots.emplace_back(r);
  SR_ASSIGN_OR_RETURN(PathPolicy paths, PathPolicy::Create(roots));

  const std::filesystem::path data_dir = flags.Get("data-dir", "shrinkray-data");
  std::error_code ec;
  std::filesystem::create_directories(data_dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--data-dir ", data_dir.string(), ": ", ec.message()));
  SR_ASSIGN_OR_RETURN(std::unique_ptr<JobStore> store, JobStore::Open(data_dir / "jobs.sqlite"));

  auto registry = std::make_shared<prometheus::Registry>();
  CoordinatorMetrics metrics(*registry);
  std::unique_ptr<MetricsEndpoint> endpoint;
  const std::string metrics_listen = flags.Get("metrics-listen", "0.0.0.0:9090");
  if (!metrics_listen.empty()) {
    SR_ASSIGN_OR_RETURN(endpoint, MetricsEndpoint::Start(metrics_listen, registry));
  }

  SR_ASSIGN_OR_RETURN(std::unique_ptr<Coordinator> coordinator,
                      Coordinator::Create(std::move(store), std::move(paths), options, &metrics));
  CompressionServiceImpl compression(coordinator.get(), token);
  WorkerServiceImpl workers(coordinator.get(), token);

  std::shared_ptr<grpc::ServerCredentials> credentials = grpc::InsecureServerCredentials();
  if (flags.Has("tls-cert") || flags.Has("tls-key")) {
    SR_ASSIGN_OR_RETURN(std::string cert, ReadTextFile(flags.Get("tls-cert", "")));
    SR_ASSIGN_OR_RETURN(std::string key, ReadTextFile(flags.Get("tls-key", "")));
    grpc::SslServerCredentialsOptions ssl;
    ssl.pem_key_cert_pairs.push_back({key, cert});
    credentials = grpc::SslServerCredentials(ssl);
  }
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  int port = 0;
  const std::string listen = flags.Get("listen", "0.0.0.0:50051");
  builder.AddListeningPort(listen, credentials, &port);
  // Clients keep idle watch streams alive with a ping a minute; the default
  // policy would call that abuse and cut them off.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.RegisterService(&compression);
  builder.RegisterService(&workers);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    return absl::UnavailableError(absl::StrCat("--listen ", listen, ": cannot listen there"));
  }
  coordinator->Start();
  if (flags.Has("port-file")) SR_RETURN_IF_ERROR(WriteTextFile(flags.Get("port-file", ""), absl::StrCat(port, "\n")));
  std::printf("shrinkray-coordinator listening on %s (port %d), metrics %s, data %s\n", listen.c_str(), port,
              endpoint ? endpoint->address().c_str() : "off", data_dir.string().c_str());
  std::fflush(stdout);

  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  while (!g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::printf("shrinkray-coordinator: shutting down\n");
  server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
  coordinator->Stop();
  return absl::OkStatus();
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) {
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::Status status = shrinkray::Run(args);
  if (!status.ok()) {
    std::fprintf(stderr, "shrinkray-coordinator: %s\n", status.ToString().c_str());
    return 2;
  }
  return 0;
}
