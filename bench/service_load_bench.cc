// Load on one coordinator through the public API (issue 4): 100 watchers held
// open on 100 queued jobs, 1,000 dry-run SubmitJobs from --concurrency
// threads, 1,000 GetJobs on random ids, ListJobs through every page, then the
// queued jobs cancelled and each watcher checked to see its CANCELLED event and
// a clean end of stream. Prints per-call latency (p50/p99/max) and throughput
// as a Markdown table. bench/service_load_bench.sh starts the coordinator and
// adds its memory; this program only needs --server.
//
// Not a Google Benchmark program (it needs a running coordinator), so
// scripts/bench.sh skips it.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <sys/resource.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "core/util/flags.h"
#include "core/util/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "grpcpp/support/channel_arguments.h"
#include "proto/status_conversion.h"
#include "shrinkray/v1/compression.grpc.pb.h"

namespace shrinkray {
namespace {

using Clock = std::chrono::steady_clock;

constexpr const char* kUsage = R"(usage: service_load_bench --server HOST:PORT --model DIR --calib FILE --out-root DIR
    [--jobs 1000] [--watchers 100] [--concurrency 8] [--gets 1000] [--page-size 100] [--recipe-yaml TEXT]
  --out-root must lie under the coordinator's --allowed-root; job outputs are
  named out-root/job-N (dry runs) and out-root/queued-N and must not exist.
)";

// GPTQ w4 g32 (the service demo's recipe): a dry run parses it and checks its
// targets against the model.
constexpr const char* kDefaultRecipe = "[{gptq: {bits: 4, group_size: 32, act_order: true}}]";

struct Options {
  std::string server;
  std::string model;
  std::string calib;
  std::string out_root;
  std::string recipe_yaml = kDefaultRecipe;
  int jobs = 1000;
  int watchers = 100;
  int concurrency = 8;
  int gets = 1000;
  int page_size = 100;
};

std::string Threads(int n) { return absl::StrCat(n, n == 1 ? " thread" : " threads"); }

double Ms(Clock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

// One operation's latencies and the wall time of its phase.
struct Series {
  explicit Series(std::string n) : name(std::move(n)) {}
  std::string name;
  std::vector<double> ms;
  double wall_s = 0;
};

// Nearest-rank percentile of sorted samples.
double Percentile(const std::vector<double>& sorted, double p) {
  if (sorted.empty()) return 0;
  const size_t rank = static_cast<size_t>(std::ceil(p * static_cast<double>(sorted.size())));
  return sorted[std::clamp<size_t>(rank, 1, sorted.size()) - 1];
}

void PrintTable(const std::vector<Series>& rows) {
  std::printf("| operation | count | p50 ms | p99 ms | max ms | throughput/s |\n");
  std::printf("|---|---:|---:|---:|---:|---:|\n");
  for (const Series& s : rows) {
    if (s.ms.empty()) continue;  // e.g. the watcher rows with --watchers 0
    std::vector<double> v = s.ms;
    std::sort(v.begin(), v.end());
    // A row without a phase of its own (wall_s 0) has no throughput.
    const std::string rate =
        s.wall_s > 0 ? absl::StrFormat("%.0f", static_cast<double>(v.size()) / s.wall_s) : std::string("–");
    std::printf("| %s | %zu | %.2f | %.2f | %.2f | %s |\n", s.name.c_str(), v.size(), Percentile(v, 0.50),
                Percentile(v, 0.99), v.empty() ? 0.0 : v.back(), rate.c_str());
  }
}

// Each channel gets its own subchannel pool, hence its own TCP connection:
// 100 watchers are 100 clients to the coordinator, not 100 streams on one
// connection.
std::unique_ptr<v1::CompressionService::Stub> NewStub(const std::string& server) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  args.SetMaxReceiveMessageSize(64 << 20);  // ListJobs pages carry whole jobs
  return v1::CompressionService::NewStub(
      grpc::CreateCustomChannel(server, grpc::InsecureChannelCredentials(), args));
}

void SetDeadline(grpc::ClientContext* context) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
}

v1::JobSpec MakeSpec(const Options& o, const std::string& output, bool dry_run) {
  v1::JobSpec spec;
  spec.set_model_path(o.model);
  spec.set_recipe_yaml(o.recipe_yaml);
  spec.mutable_calibration()->set_path(o.calib);
  spec.mutable_calibration()->set_num_samples(32);
  spec.mutable_calibration()->set_seqlen(128);
  spec.set_output_path((std::filesystem::path(o.out_root) / output).string());
  spec.set_output_format(v1::OUTPUT_FORMAT_GPTQ);
  spec.set_dry_run(dry_run);
  (*spec.mutable_labels())["bench"] = "service-load";
  return spec;
}

// Runs `work(thread, i)` for i in [0, n) on `threads` threads; each thread
// takes the next index, so a slow call does not hold back a fixed share.
template <typename Work>
double RunParallel(int n, int threads, Work work) {
  std::atomic<int> next{0};
  const auto start = Clock::now();
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      for (int i = next++; i < n; i = next++) work(t, i);
    });
  }
  for (std::thread& th : pool) th.join();
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// One WatchJob stream on a queued job, read on its own thread until it ends.
class Watcher {
 public:
  Watcher(const std::string& server, std::string job_id) : stub_(NewStub(server)), job_id_(std::move(job_id)) {}

  void Start(absl::Mutex* mu, int* snapshots, int* done) {
    thread_ = std::thread([this, mu, snapshots, done] {
      Run(mu, snapshots);
      absl::MutexLock lock(mu);
      ++*done;
    });
  }
  void Cancel() { context_.TryCancel(); }
  void Join() { thread_.join(); }

  const std::string& job_id() const { return job_id_; }
  // Everything below is read after Join().
  double snapshot_ms = -1;          // call start to the snapshot; -1: none
  Clock::time_point cancelled_at;   // when the CANCELLED event arrived
  bool saw_cancelled = false;
  int other_messages = 0;           // events besides QUEUED/CANCELLED state changes
  std::string problem;              // empty: snapshot, CANCELLED event, stream ended OK

 private:
  void Run(absl::Mutex* mu, int* snapshots) {
    v1::WatchJobRequest request;
    request.set_job_id(job_id_);
    const auto start = Clock::now();
    std::unique_ptr<grpc::ClientReader<v1::WatchJobResponse>> reader = stub_->WatchJob(&context_, request);
    v1::WatchJobResponse message;
    bool first = true;
    while (reader->Read(&message)) {
      if (first) {
        first = false;
        snapshot_ms = Ms(Clock::now() - start);
        if (!message.has_job() || message.job().id() != job_id_ || message.job().state() != v1::JOB_STATE_QUEUED) {
          problem = absl::StrCat("first message is not the QUEUED snapshot: ", message.ShortDebugString());
        }
        absl::MutexLock lock(mu);
        ++*snapshots;
        continue;
      }
      if (message.has_event() && message.event().has_state_change() &&
          message.event().state_change().state() == v1::JOB_STATE_CANCELLED) {
        cancelled_at = Clock::now();
        saw_cancelled = true;
      } else {
        ++other_messages;
      }
    }
    const grpc::Status status = reader->Finish();
    if (first) {
      absl::MutexLock lock(mu);
      ++*snapshots;  // never got one, but the caller must not wait for it
    }
    if (!problem.empty()) return;
    if (first) {
      problem = absl::StrCat("no snapshot; stream ended ", FromGrpcStatus(status).ToString());
    } else if (!status.ok()) {
      problem = absl::StrCat("stream ended ", FromGrpcStatus(status).ToString());
    } else if (!saw_cancelled) {
      problem = "stream ended OK without the CANCELLED event";
    }
  }

  std::unique_ptr<v1::CompressionService::Stub> stub_;
  const std::string job_id_;
  grpc::ClientContext context_;
  std::thread thread_;
};

absl::Status Run(const Options& o) {
  std::unique_ptr<v1::CompressionService::Stub> main_stub = NewStub(o.server);
  std::vector<Series> rows;
  std::vector<std::string> problems;
  std::printf("service_load_bench: %s, %d watchers, %d dry-run jobs from %s, %d GetJobs\n", o.server.c_str(),
              o.watchers, o.jobs, Threads(o.concurrency).c_str(), o.gets);

  // (a) Queued jobs (no workers: they stay QUEUED) and one watcher on each.
  std::vector<std::string> queued_ids;
  {
    Series s{"SubmitJob, queued (1 thread)"};
    const auto start = Clock::now();
    for (int i = 0; i < o.watchers; ++i) {
      grpc::ClientContext context;
      SetDeadline(&context);
      v1::SubmitJobRequest request;
      *request.mutable_spec() = MakeSpec(o, absl::StrCat("queued-", i), /*dry_run=*/false);
      v1::SubmitJobResponse response;
      const auto t0 = Clock::now();
      const grpc::Status status = main_stub->SubmitJob(&context, request, &response);
      s.ms.push_back(Ms(Clock::now() - t0));
      if (!status.ok()) {
        return absl::Status(FromGrpcStatus(status).code(),
                            absl::StrCat("SubmitJob (queued ", i, ") at ", o.server, ": ", status.error_message()));
      }
      if (response.job().state() != v1::JOB_STATE_QUEUED) {
        return absl::FailedPreconditionError(absl::StrCat("queued job ", response.job().id(), " is ",
                                                          v1::JobState_Name(response.job().state()),
                                                          "; is a worker connected?"));
      }
      queued_ids.push_back(response.job().id());
    }
    s.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
    rows.push_back(std::move(s));
  }

  absl::Mutex watch_mu;
  int snapshots = 0;
  int watchers_done = 0;
  std::vector<std::unique_ptr<Watcher>> watchers;
  {
    Series s{"WatchJob open → snapshot (all at once)"};
    const auto start = Clock::now();
    for (const std::string& id : queued_ids) {
      watchers.push_back(std::make_unique<Watcher>(o.server, id));
      watchers.back()->Start(&watch_mu, &snapshots, &watchers_done);
    }
    absl::MutexLock lock(&watch_mu);
    const int want = static_cast<int>(watchers.size());
    auto all = [&]() ABSL_SHARED_LOCKS_REQUIRED(watch_mu) { return snapshots == want; };
    if (!watch_mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(60))) {
      problems.push_back(absl::StrCat("only ", snapshots, " of ", want, " watchers got a snapshot within 60 s"));
    }
    s.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
    rows.push_back(std::move(s));  // latencies are filled in after Join()
  }
  const size_t watch_row = rows.size() - 1;

  // (b) Dry runs: validated synchronously, SUCCEEDED in the response.
  std::vector<std::string> dry_ids(o.jobs);
  std::vector<std::string> dry_failures(o.jobs);
  {
    Series s{absl::StrCat("SubmitJob, dry run (", Threads(o.concurrency), ")")};
    std::vector<std::unique_ptr<v1::CompressionService::Stub>> stubs;
    for (int t = 0; t < o.concurrency; ++t) stubs.push_back(NewStub(o.server));
    std::vector<double> ms(o.jobs);
    s.wall_s = RunParallel(o.jobs, o.concurrency, [&](int t, int i) {
      grpc::ClientContext context;
      SetDeadline(&context);
      v1::SubmitJobRequest request;
      *request.mutable_spec() = MakeSpec(o, absl::StrCat("job-", i), /*dry_run=*/true);
      v1::SubmitJobResponse response;
      const auto t0 = Clock::now();
      const grpc::Status status = stubs[t]->SubmitJob(&context, request, &response);
      ms[i] = Ms(Clock::now() - t0);
      if (!status.ok()) {
        dry_failures[i] = absl::StrCat("SubmitJob: ", FromGrpcStatus(status).ToString());
      } else if (response.job().state() != v1::JOB_STATE_SUCCEEDED) {
        dry_failures[i] = absl::StrCat(v1::JobState_Name(response.job().state()), ": ",
                                       response.job().error().message());
      }
      dry_ids[i] = response.job().id();
    });
    s.ms = std::move(ms);
    rows.push_back(std::move(s));
  }
  int succeeded = 0;
  int failed = 0;
  for (int i = 0; i < o.jobs; ++i) {
    if (dry_failures[i].empty()) {
      ++succeeded;
    } else {
      ++failed;
      if (failed <= 10) problems.push_back(absl::StrCat("dry run job-", i, " ", dry_ids[i], ": ", dry_failures[i]));
    }
  }

  // (c) GetJob on random ids of this run, checking each answer's state.
  std::map<std::string, v1::JobState> expected;
  for (const std::string& id : queued_ids) expected[id] = v1::JOB_STATE_QUEUED;
  for (int i = 0; i < o.jobs; ++i) {
    if (dry_failures[i].empty()) expected[dry_ids[i]] = v1::JOB_STATE_SUCCEEDED;
  }
  const std::vector<std::pair<std::string, v1::JobState>> known(expected.begin(), expected.end());
  std::atomic<int> get_errors{0};
  if (!known.empty() && o.gets > 0) {
    Series s{absl::StrCat("GetJob, random id (", Threads(o.concurrency), ")")};
    std::mt19937 rng(4);
    std::uniform_int_distribution<size_t> pick(0, known.size() - 1);
    std::vector<size_t> targets(o.gets);
    for (size_t& t : targets) t = pick(rng);
    std::vector<std::unique_ptr<v1::CompressionService::Stub>> stubs;
    for (int t = 0; t < o.concurrency; ++t) stubs.push_back(NewStub(o.server));
    std::vector<double> ms(o.gets);
    std::vector<std::string> errors(o.gets);
    s.wall_s = RunParallel(o.gets, o.concurrency, [&](int t, int i) {
      const auto& [id, state] = known[targets[i]];
      grpc::ClientContext context;
      SetDeadline(&context);
      v1::GetJobRequest request;
      request.set_job_id(id);
      v1::GetJobResponse response;
      const auto t0 = Clock::now();
      const grpc::Status status = stubs[t]->GetJob(&context, request, &response);
      ms[i] = Ms(Clock::now() - t0);
      if (!status.ok()) {
        errors[i] = absl::StrCat("GetJob ", id, ": ", FromGrpcStatus(status).ToString());
      } else if (response.job().id() != id || response.job().state() != state) {
        errors[i] = absl::StrCat("GetJob ", id, ": got ", response.job().id(), " ",
                                 v1::JobState_Name(response.job().state()), ", want ", v1::JobState_Name(state));
      }
    });
    for (const std::string& e : errors) {
      if (e.empty()) continue;
      if (++get_errors <= 10) problems.push_back(e);
    }
    s.ms = std::move(ms);
    rows.push_back(std::move(s));
  }

  // (d) ListJobs, every page; every job of this run must appear once.
  int listed = 0;
  {
    Series s{absl::StrCat("ListJobs, page of ", o.page_size)};
    std::set<std::string> seen;
    std::string token;
    const auto start = Clock::now();
    do {
      grpc::ClientContext context;
      SetDeadline(&context);
      v1::ListJobsRequest request;
      request.set_page_size(o.page_size);
      request.set_page_token(token);
      v1::ListJobsResponse response;
      const auto t0 = Clock::now();
      const grpc::Status status = main_stub->ListJobs(&context, request, &response);
      s.ms.push_back(Ms(Clock::now() - t0));
      if (!status.ok()) {
        problems.push_back(absl::StrCat("ListJobs: ", FromGrpcStatus(status).ToString()));
        break;
      }
      for (const v1::Job& job : response.jobs()) {
        if (!seen.insert(job.id()).second) problems.push_back(absl::StrCat("ListJobs: ", job.id(), " twice"));
      }
      token = response.next_page_token();
    } while (!token.empty());
    s.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
    listed = static_cast<int>(seen.size());
    int missing = 0;
    for (const auto& [id, state] : known) missing += seen.count(id) == 0;
    if (missing > 0) problems.push_back(absl::StrCat("ListJobs: ", missing, " jobs of this run not listed"));
    std::printf("ListJobs: %d jobs in %zu pages, %.1f ms in all\n", listed, s.ms.size(), s.wall_s * 1000);
    rows.push_back(std::move(s));
  }

  // (e) Cancel the queued jobs; each watcher must see CANCELLED, then the end.
  std::vector<Clock::time_point> cancel_start(queued_ids.size());
  {
    Series s{"CancelJob, queued job (1 thread)"};
    const auto start = Clock::now();
    for (size_t i = 0; i < queued_ids.size(); ++i) {
      grpc::ClientContext context;
      SetDeadline(&context);
      v1::CancelJobRequest request;
      request.set_job_id(queued_ids[i]);
      request.set_reason("service_load_bench done");
      v1::CancelJobResponse response;
      cancel_start[i] = Clock::now();
      const grpc::Status status = main_stub->CancelJob(&context, request, &response);
      s.ms.push_back(Ms(Clock::now() - cancel_start[i]));
      if (!status.ok()) {
        problems.push_back(absl::StrCat("CancelJob ", queued_ids[i], ": ", FromGrpcStatus(status).ToString()));
      } else if (response.job().state() != v1::JOB_STATE_CANCELLED) {
        problems.push_back(absl::StrCat("CancelJob ", queued_ids[i], ": state ",
                                        v1::JobState_Name(response.job().state())));
      }
    }
    s.wall_s = std::chrono::duration<double>(Clock::now() - start).count();
    rows.push_back(std::move(s));
  }
  {
    absl::MutexLock lock(&watch_mu);
    const int want = static_cast<int>(watchers.size());
    auto all = [&]() ABSL_SHARED_LOCKS_REQUIRED(watch_mu) { return watchers_done == want; };
    if (!watch_mu.AwaitWithTimeout(absl::Condition(&all), absl::Seconds(30))) {
      problems.push_back(absl::StrCat(want - watchers_done, " watch streams still open 30 s after the cancels"));
    }
  }
  for (auto& w : watchers) w->Cancel();  // no-op on a finished stream
  for (auto& w : watchers) w->Join();

  Series fanout{"CancelJob start → watcher's CANCELLED event"};
  int watch_ok = 0;
  for (size_t i = 0; i < watchers.size(); ++i) {
    const Watcher& w = *watchers[i];
    if (w.snapshot_ms >= 0) rows[watch_row].ms.push_back(w.snapshot_ms);
    if (w.saw_cancelled) fanout.ms.push_back(Ms(w.cancelled_at - cancel_start[i]));
    if (w.problem.empty()) {
      ++watch_ok;
    } else {
      problems.push_back(absl::StrCat("watcher of ", w.job_id(), ": ", w.problem));
    }
    if (w.other_messages > 0) {
      problems.push_back(absl::StrCat("watcher of ", w.job_id(), ": ", w.other_messages, " unexpected messages"));
    }
  }
  rows.push_back(std::move(fanout));

  std::printf("\n");
  PrintTable(rows);
  std::printf("\ndry runs: %d SUCCEEDED, %d FAILED (of %d)\n", succeeded, failed, o.jobs);
  std::printf("watchers: %d of %zu saw the snapshot, the CANCELLED event and a clean end of stream\n", watch_ok,
              watchers.size());
  std::printf("GetJob: %d wrong or failed answers; ListJobs: %d jobs listed\n", get_errors.load(), listed);
  // The client shares the machine with the coordinator: say what it used.
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::printf("bench client CPU: %.2f s user, %.2f s system\n",
              usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6, usage.ru_stime.tv_sec + usage.ru_stime.tv_usec / 1e6);
  if (!problems.empty()) {
    for (const std::string& p : problems) std::fprintf(stderr, "problem: %s\n", p.c_str());
    return absl::InternalError(absl::StrCat(problems.size(), " problems (above)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Options> ParseOptions(const std::vector<std::string>& args, bool* help) {
  SR_ASSIGN_OR_RETURN(Flags flags, Flags::Parse(args,
                                                {"server", "model", "calib", "out-root", "jobs", "watchers",
                                                 "concurrency", "gets", "page-size", "recipe-yaml"},
                                                {"help"}));
  *help = flags.Has("help");
  Options o;
  if (*help) return o;
  SR_ASSIGN_OR_RETURN(o.server, flags.Required("server"));
  SR_ASSIGN_OR_RETURN(o.model, flags.Required("model"));
  SR_ASSIGN_OR_RETURN(o.calib, flags.Required("calib"));
  SR_ASSIGN_OR_RETURN(o.out_root, flags.Required("out-root"));
  o.recipe_yaml = flags.Get("recipe-yaml", o.recipe_yaml);
  SR_ASSIGN_OR_RETURN(long jobs, flags.GetInt("jobs", o.jobs));
  SR_ASSIGN_OR_RETURN(long watchers, flags.GetInt("watchers", o.watchers));
  SR_ASSIGN_OR_RETURN(long concurrency, flags.GetInt("concurrency", o.concurrency));
  SR_ASSIGN_OR_RETURN(long gets, flags.GetInt("gets", o.gets));
  SR_ASSIGN_OR_RETURN(long page_size, flags.GetInt("page-size", o.page_size));
  if (jobs < 1 || jobs > 1'000'000) return absl::InvalidArgumentError("--jobs must be in 1..1000000");
  if (watchers < 0 || watchers > 10'000) return absl::InvalidArgumentError("--watchers must be in 0..10000");
  if (concurrency < 1 || concurrency > 256) return absl::InvalidArgumentError("--concurrency must be in 1..256");
  if (gets < 0 || gets > 1'000'000) return absl::InvalidArgumentError("--gets must be in 0..1000000");
  if (page_size < 1 || page_size > 1000) return absl::InvalidArgumentError("--page-size must be in 1..1000");
  o.jobs = static_cast<int>(jobs);
  o.watchers = static_cast<int>(watchers);
  o.concurrency = static_cast<int>(concurrency);
  o.gets = static_cast<int>(gets);
  o.page_size = static_cast<int>(page_size);
  return o;
}

}  // namespace
}  // namespace shrinkray

int main(int argc, char** argv) {
  bool help = false;
  absl::StatusOr<shrinkray::Options> options =
      shrinkray::ParseOptions(std::vector<std::string>(argv + 1, argv + argc), &help);
  if (help) {
    std::fputs(shrinkray::kUsage, stdout);
    return 0;
  }
  if (!options.ok()) {
    std::fprintf(stderr, "service_load_bench: %s\n%s", options.status().ToString().c_str(), shrinkray::kUsage);
    return 2;
  }
  const absl::Status status = shrinkray::Run(*options);
  if (!status.ok()) {
    std::fprintf(stderr, "service_load_bench: %s\n", status.ToString().c_str());
    return 1;
  }
  return 0;
}
