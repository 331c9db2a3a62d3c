// shrinkray-worker: dials the coordinator, runs the jobs it is assigned,
// exports Prometheus metrics on --metrics-listen.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/text_file.h"
#include "core/pipeline/device_factories.h"
#include "core/util/flags.h"
#include "core/util/process_memory.h"
#include "core/util/status_macros.h"
#include "prometheus/registry.h"
#include "proto/metrics_endpoint.h"
#include "server/bearer_token.h"
#include "worker/worker.h"

namespace shrinkray {
namespace {

constexpr const char* kUsage = R"(usage: shrinkray-worker [flags]
  --coordinator HOST:PORT      the coordinator (default 127.0.0.1:50051)
  --metrics-listen HOST:PORT   Prometheus /metrics (default 0.0.0.0:9091; empty: off)
  --device cpu|cuda|cuda:N     what this worker runs jobs on (default cpu); cuda:N: the layer
                               forwards, statistics, GPTQ/SparseGPT solves, distillation and
                               NCCL collectives on GPU N (cuda = cuda:0): one worker per GPU
  --name NAME                  stable worker name (default HOSTNAME-PID)
  --token-file FILE            bearer token for the coordinator
  --tls-ca FILE                root certificate: dial with TLS
  --comm-address HOST          address the other ranks of a job dial (default: 127.0.0.1
                               with a loopback coordinator, else this host's name)
  --comm-timeout-seconds S     limit of one collective between ranks (default 1800)
  --comm-backend gloo|nccl     collectives between ranks: gloo (TCP, default) or nccl (GPU
                               machines; CUDA builds only; every worker of a gang must use
                               the same). With nccl even a 1-rank job runs its collectives.
)";

// Signal handlers may only set a flag; a thread turns it into Shutdown().
std::atomic<bool> g_stop{false};
void OnSignal(int) { g_stop.store(true); }

absl::Status Run(const std::vector<std::string>& args) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args, {"coordinator", "metrics-listen", "device", "name", "token-file",
                                                       "tls-ca", "comm-address", "comm-timeout-seconds", "comm-backend"},
                                                {"help"}));
  if (flags.Has("help")) {
    std::fputs(kUsage, stdout);
    return absl::OkStatus();
  }
  WorkerOptions options;
  options.coordinator = flags.Get("coordinator", "127.0.0.1:50051");
  SR_ASSIGN_OR_RETURN(options.device, ParseComputeDevice(flags.Get("device", "cpu"), "--device"));
  // The device's factories: a clear error without CUDA or that GPU, before
  // the worker registers.
  SR_ASSIGN_OR_RETURN(std::unique_ptr<SolverBackend> solvers, MakeSolverBackend(options.device));
  options.solvers = solvers.get();
  SR_ASSIGN_OR_RETURN(options.executors, MakeLayerExecutorFactory(options.device));
  SR_ASSIGN_OR_RETURN(options.distill_runners, MakeDistillRunnerFactory(options.device));
  options.comm_address = flags.Get("comm-address", "");
  options.comm_backend = flags.Get("comm-backend", "gloo");
  if (options.comm_backend != "gloo" && options.comm_backend != "nccl") {
    return absl::InvalidArgumentError(
        absl::StrCat("--comm-backend must be gloo or nccl, got '", options.comm_backend, "'"));
  }
  SR_ASSIGN_OR_RETURN(double comm_timeout, flags.GetDouble("comm-timeout-seconds", 1800.0));
  if (comm_timeout <= 0) return absl::InvalidArgumentError("--comm-timeout-seconds must be > 0");
  options.comm_timeout = absl::Seconds(comm_timeout);
  char host[256] = {0};
  gethostname(host, sizeof(host) - 1);
  options.name = flags.Get("name", absl::StrCat(host, "-", getpid()));
  if (flags.Has("token-file")) {
    SR_ASSIGN_OR_RETURN(options.token, ReadTokenFile(flags.Get("token-file", "")));
  }
  if (flags.Has("tls-ca")) {
    SR_ASSIGN_OR_RETURN(options.tls_ca_pem, ReadTextFile(flags.Get("tls-ca", "")));
  }
  auto registry = std::make_shared<prometheus::Registry>();
  WorkerMetrics metrics(*registry);
  std::unique_ptr<MetricsEndpoint> endpoint;
  const std::string metrics_listen = flags.Get("metrics-listen", "0.0.0.0:9091");
  if (!metrics_listen.empty()) {
    SR_ASSIGN_OR_RETURN(endpoint, MetricsEndpoint::Start(metrics_listen, registry));
    options.metrics_address = endpoint->address();
  }
  std::printf("shrinkray-worker %s: coordinator %s, device %s, metrics %s\n", options.name.c_str(),
              options.coordinator.c_str(), options.device.ToString().c_str(), endpoint ? endpoint->address().c_str() : "off");
  std::fflush(stdout);
  Worker worker(options, &metrics);
  std::signal(SIGINT, OnSignal);
  std::signal(SIGTERM, OnSignal);
  std::atomic<bool> done{false};
  std::thread stopper([&] {
    while (!done.load() && !g_stop.load()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
    worker.Shutdown();
  });
  worker.Run();
  done.store(true);
  stopper.join();
  return absl::OkStatus();
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) {
  shrinkray::KeepFreedMemory();  // before the first large allocation
  std::vector<std::string> args(argv + 1, argv + argc);
  absl::Status status = shrinkray::Run(args);
  if (!status.ok()) {
    std::fprintf(stderr, "shrinkray-worker: %s\n", status.ToString().c_str());
    return 2;
  }
  return 0;
}
