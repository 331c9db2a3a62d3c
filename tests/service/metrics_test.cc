// The coordinator's and the workers' Prometheus metrics, scraped over HTTP
// from a MetricsEndpoint and checked by promtool.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <string>

#include "absl/strings/str_split.h"
#include "core/util/process_memory.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "prometheus/registry.h"
#include "proto/metrics_endpoint.h"
#include "server/coordinator_metrics.h"
#include "test_data.h"
#include "worker/worker_metrics.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// GET http://127.0.0.1:port/path; returns the body, or "" with a test failure.
std::string HttpGet(int port, const std::string& path) {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) {
    ADD_FAILURE() << "socket() failed";
    return "";
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    close(fd);
    ADD_FAILURE() << "connect to 127.0.0.1:" << port << " failed";
    return "";
  }
  // HTTP/1.0 with Connection: close so the server ends the body by closing.
  const std::string request =
      "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
  if (send(fd, request.data(), request.size(), 0) != static_cast<ssize_t>(request.size())) {
    close(fd);
    ADD_FAILURE() << "send failed";
    return "";
  }
  std::string response;
  char buf[4096];
  for (ssize_t n; (n = recv(fd, buf, sizeof(buf), 0)) > 0;) response.append(buf, n);
  close(fd);
  const size_t body = response.find("\r\n\r\n");
  EXPECT_THAT(response, ::testing::StartsWith("HTTP/1.1 200")) << response.substr(0, 200);
  return body == std::string::npos ? "" : response.substr(body + 4);
}

// Series ("name{labels}" exactly as exposed) to value, from the text format.
std::map<std::string, double> ParseSeries(const std::string& text) {
  std::map<std::string, double> series;
  for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
    if (line.front() == '#') continue;
    const size_t space = line.rfind(' ');
    if (space == absl::string_view::npos) continue;
    const std::string value(line.substr(space + 1));
    series[std::string(line.substr(0, space))] = std::strtod(value.c_str(), nullptr);
  }
  return series;
}

std::string FindPromtool() {
  if (std::filesystem::exists("/usr/bin/promtool")) return "/usr/bin/promtool";
  const char* path = std::getenv("PATH");
  for (absl::string_view dir : absl::StrSplit(path ? path : "", ':', absl::SkipEmpty())) {
    const std::filesystem::path candidate = std::filesystem::path(std::string(dir)) / "promtool";
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "";
}

class MetricsTest : public ::testing::Test {
 protected:
  std::shared_ptr<prometheus::Registry> registry_ = std::make_shared<prometheus::Registry>();
};

TEST_F(MetricsTest, ResidentMemoryIsPositive) {
  const absl::StatusOr<int64_t> bytes = ResidentMemoryBytes();
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_GT(*bytes, 1 << 20);  // a gtest binary with gRPC linked is well over 1 MiB
}

TEST_F(MetricsTest, ServesEveryMetricOverHttpAndPassesPromtool) {
  CoordinatorMetrics coordinator(*registry_);
  WorkerMetrics worker(*registry_);

  coordinator.SetJobsByState({{"queued", 7}, {"running", 1}, {"failed", 4}});
  // The second call drops "failed" (and never named the others): they read 0.
  coordinator.SetJobsByState({{"queued", 3}, {"running", 2}, {"succeeded", 5}});
  coordinator.JobSubmitted();
  coordinator.JobSubmitted();
  coordinator.JobStarted(12.0);
  coordinator.JobStarted(400.0);
  coordinator.JobFinished("succeeded", 42.0);
  coordinator.JobFinished("failed", 7200.0);
  coordinator.SetWorkersByState({{"busy", 2}});
  coordinator.JobRequeued();
  coordinator.UpdateResidentMemory();

  worker.LayerCompleted("calibrate", 0.5);
  worker.LayerCompleted("calibrate", 3.0);
  worker.LayerCompleted("distill", 100.0);
  worker.CalibrationTokens(4096);
  worker.CalibrationTokens(-5);  // ignored: counters never go down
  worker.SetBusy(true);
  worker.SetProgress(0.25);
  worker.UpdateResidentMemory();

  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("127.0.0.1:0", registry_);
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  ASSERT_GT((*endpoint)->port(), 0);
  EXPECT_EQ((*endpoint)->address(), "127.0.0.1:" + std::to_string((*endpoint)->port()));

  std::string text = HttpGet((*endpoint)->port(), "/metrics");
  ASSERT_FALSE(text.empty());
  std::map<std::string, double> s = ParseSeries(text);
  auto expect = [&](const std::string& name, double value) {
    auto it = s.find(name);
    if (it == s.end()) {
      ADD_FAILURE() << "series " << name << " missing from:\n" << text;
    } else {
      EXPECT_DOUBLE_EQ(it->second, value) << name;
    }
  };

  expect("shrinkray_jobs{state=\"queued\"}", 3);
  expect("shrinkray_jobs{state=\"running\"}", 2);
  expect("shrinkray_jobs{state=\"succeeded\"}", 5);
  expect("shrinkray_jobs{state=\"failed\"}", 0);
  expect("shrinkray_jobs{state=\"cancelled\"}", 0);
  expect("shrinkray_jobs_submitted_total", 2);
  expect("shrinkray_job_queue_wait_seconds_count", 2);
  expect("shrinkray_job_queue_wait_seconds_sum", 412);
  expect("shrinkray_job_queue_wait_seconds_bucket{le=\"5\"}", 0);
  expect("shrinkray_job_queue_wait_seconds_bucket{le=\"15\"}", 1);
  expect("shrinkray_job_queue_wait_seconds_bucket{le=\"600\"}", 2);
  expect("shrinkray_job_queue_wait_seconds_bucket{le=\"86400\"}", 2);
  expect("shrinkray_job_queue_wait_seconds_bucket{le=\"+Inf\"}", 2);
  expect("shrinkray_jobs_finished_total{state=\"succeeded\"}", 1);
  expect("shrinkray_jobs_finished_total{state=\"failed\"}", 1);
  expect("shrinkray_jobs_finished_total{state=\"cancelled\"}", 0);
  expect("shrinkray_job_duration_seconds_count", 2);
  expect("shrinkray_job_duration_seconds_sum", 7242);
  expect("shrinkray_job_duration_seconds_bucket{le=\"60\"}", 1);
  expect("shrinkray_job_duration_seconds_bucket{le=\"3600\"}", 1);
  expect("shrinkray_job_duration_seconds_bucket{le=\"7200\"}", 2);
  expect("shrinkray_workers{state=\"idle\"}", 0);
  expect("shrinkray_workers{state=\"busy\"}", 2);
  expect("shrinkray_jobs_requeued_total", 1);
  ASSERT_TRUE(s.contains("shrinkray_coordinator_resident_memory_bytes")) << text;
  EXPECT_GT(s["shrinkray_coordinator_resident_memory_bytes"], 1 << 20);

  expect("shrinkray_worker_layers_completed_total{stage=\"calibrate\"}", 2);
  expect("shrinkray_worker_layers_completed_total{stage=\"distill\"}", 1);
  expect("shrinkray_worker_layer_duration_seconds_count{stage=\"calibrate\"}", 2);
  expect("shrinkray_worker_layer_duration_seconds_sum{stage=\"calibrate\"}", 3.5);
  expect("shrinkray_worker_layer_duration_seconds_bucket{stage=\"calibrate\",le=\"0.01\"}", 0);
  expect("shrinkray_worker_layer_duration_seconds_bucket{stage=\"calibrate\",le=\"0.5\"}", 1);
  expect("shrinkray_worker_layer_duration_seconds_bucket{stage=\"calibrate\",le=\"5\"}", 2);
  expect("shrinkray_worker_layer_duration_seconds_bucket{stage=\"distill\",le=\"60\"}", 0);
  expect("shrinkray_worker_layer_duration_seconds_bucket{stage=\"distill\",le=\"1800\"}", 1);
  expect("shrinkray_worker_calibration_tokens_total", 4096);
  expect("shrinkray_worker_job_progress_ratio", 0.25);
  expect("shrinkray_worker_busy", 1);
  ASSERT_TRUE(s.contains("shrinkray_worker_resident_memory_bytes")) << text;
  EXPECT_GT(s["shrinkray_worker_resident_memory_bytes"], 1 << 20);

  // Low cardinality: jobs are never labels.
  EXPECT_THAT(text, Not(HasSubstr("job_id")));
  EXPECT_THAT(text, Not(HasSubstr("job=")));

  // Progress is clamped, and going idle resets it.
  worker.SetProgress(1.5);
  expect("shrinkray_worker_job_progress_ratio", 0.25);  // the old scrape, unchanged
  s = ParseSeries(HttpGet((*endpoint)->port(), "/metrics"));
  EXPECT_DOUBLE_EQ(s["shrinkray_worker_job_progress_ratio"], 1.0);
  worker.SetBusy(false);
  s = ParseSeries(HttpGet((*endpoint)->port(), "/metrics"));
  EXPECT_DOUBLE_EQ(s["shrinkray_worker_busy"], 0.0);
  EXPECT_DOUBLE_EQ(s["shrinkray_worker_job_progress_ratio"], 0.0);
  worker.SetProgress(-1.0);
  s = ParseSeries(HttpGet((*endpoint)->port(), "/metrics"));
  EXPECT_DOUBLE_EQ(s["shrinkray_worker_job_progress_ratio"], 0.0);

  // promtool's lint: naming conventions, HELP/TYPE lines, histogram shape.
  const std::string promtool = FindPromtool();
  if (promtool.empty()) {
    GTEST_SKIP() << "promtool not found (Debian package `prometheus`, "
                    "scripts/install-deps.sh); the metrics text was not linted";
  }
  const std::filesystem::path file = shrinkray::testing::MakeTempDir("metrics") / "metrics.txt";
  std::ofstream(file) << text;
  const std::string command = promtool + " check metrics < '" + file.string() + "' 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr) << command;
  std::string report;
  char buf[512];
  for (size_t n; (n = fread(buf, 1, sizeof(buf), pipe)) > 0;) report.append(buf, n);
  const int status = pclose(pipe);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << command << " exited " << status << ":\n" << report << "\n--- metrics ---\n" << text;
  EXPECT_EQ(report, "") << report;
}

TEST_F(MetricsTest, BadListenAddressIsInvalidArgument) {
  for (const std::string listen :
       {"", "9090", "not-an-address", "127.0.0.1:", "127.0.0.1:99999", "127.0.0.1:-1",
        "127.0.0.1:80s", "example.com:80", "[::zz]:80", "1.2.3.4:5,6.7.8.9:10"}) {
    absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
        MetricsEndpoint::Start(listen, registry_);
    ASSERT_FALSE(endpoint.ok()) << listen;
    EXPECT_EQ(endpoint.status().code(), absl::StatusCode::kInvalidArgument) << listen;
    EXPECT_THAT(endpoint.status().message(), HasSubstr("\"" + listen + "\""));
  }
  EXPECT_EQ(MetricsEndpoint::Start("127.0.0.1:0", nullptr).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(MetricsTest, PortInUseIsUnavailable) {
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> first =
      MetricsEndpoint::Start("127.0.0.1:0", registry_);
  ASSERT_TRUE(first.ok()) << first.status();
  const std::string taken = "127.0.0.1:" + std::to_string((*first)->port());
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> second =
      MetricsEndpoint::Start(taken, registry_);
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable) << second.status();
  EXPECT_THAT(second.status().message(), HasSubstr(taken));
  // The first endpoint still serves.
  EXPECT_FALSE(HttpGet((*first)->port(), "/metrics").empty());
}

TEST_F(MetricsTest, LocalhostAndEveryInterfaceAreAccepted) {
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> local =
      MetricsEndpoint::Start("localhost:0", registry_);
  ASSERT_TRUE(local.ok()) << local.status();
  EXPECT_EQ((*local)->address(), "127.0.0.1:" + std::to_string((*local)->port()));
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> any = MetricsEndpoint::Start(":0", registry_);
  ASSERT_TRUE(any.ok()) << any.status();
  EXPECT_GT((*any)->port(), 0);
}

}  // namespace
}  // namespace shrinkray
