// A shrinkray worker: dials the coordinator's WorkerService, registers, sends
// heartbeats, runs each assigned job with the pipeline runner (the same one
// as `shrinkray compress`), streams its progress, and stops promptly when the
// job is cancelled. When the stream breaks (coordinator restart, network) the
// running job is cancelled — the coordinator re-queues it — and the worker
// reconnects with exponential backoff.
#pragma once

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "core/distill/distill_device.h"
#include "core/pipeline/layer_executor.h"
#include "core/pipeline/solver_backend.h"
#include "core/util/compute_device.h"
#include "worker/worker_metrics.h"

namespace shrinkray {

struct WorkerOptions {
  std::string coordinator = "127.0.0.1:50051";
  std::string name;             // stable across reconnects; default hostname-pid
  // Where jobs run (cpu, cuda:N), reported to the coordinator; the
  // factories below are this device's (device_factories.h). The NCCL
  // communicator of a job (comm_backend nccl) lives on cuda:N too (cuda:0 on a
  // CPU worker).
  ComputeDevice device;
  std::string token;            // bearer token, empty: none
  std::string tls_ca_pem;       // root certificate; empty: plaintext
  std::string metrics_address;  // reported in the hello
  // The address other ranks of a job dial for collectives (Gloo); empty:
  // 127.0.0.1 when the coordinator is on loopback, else this host's name.
  std::string comm_address;
  std::string comm_backend = "gloo";  // "gloo" or "nccl" (host-staged)
  // GPTQ/SparseGPT solves of every job run here. Not owned; must outlive the
  // worker. Null: the CPU.
  SolverBackend* solvers = nullptr;
  // The layer forwards and statistics (empty: the CPU).
  LayerExecutorFactory executors;
  // A distill stage's training (empty: the CPU).
  distill::DistillRunnerFactory distill_runners;
  absl::Duration comm_timeout = absl::Minutes(30);  // one collective's limit
  absl::Duration initial_backoff = absl::Milliseconds(200);
  absl::Duration max_backoff = absl::Seconds(5);
};

class Worker {
 public:
  Worker(WorkerOptions options, WorkerMetrics* metrics);
  ~Worker();

  // Connects and serves until Shutdown(); reconnects after every failure.
  void Run();
  // Makes Run() return soon: cancels the running job and the stream.
  void Shutdown();

 private:
  class Session;
  const WorkerOptions options_;
  WorkerMetrics* const metrics_;
  std::atomic<bool> stopping_{false};
  std::mutex session_mu_;
  Session* session_ = nullptr;  // the live connection, guarded by session_mu_
};

}  // namespace shrinkray
