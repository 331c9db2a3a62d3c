// Gloo across REAL processes on loopback: this binary re-executes itself
// (/proc/self/exe) once per rank with SHRINKRAY_COMM_CHILD set; the ranks
// meet through a file store in a fresh temporary directory. The parent waits
// a bounded time, kills whatever is left and fails.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "comm/comm_scenarios.h"
#include "core/comm/store.h"
#include "gtest/gtest.h"
#include "test_data.h"

extern char** environ;

namespace shrinkray {
namespace {

struct Child {
  int rank = 0;
  pid_t pid = -1;
  std::filesystem::path log;
  int status = 0;       // waitpid status
  bool done = false;
  bool killed = false;  // still running at the deadline
};

std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string Describe(const Child& c) {
  std::string how;
  if (c.killed) {
    how = "killed at the deadline";
  } else if (WIFEXITED(c.status)) {
    how = absl::StrCat("exit ", WEXITSTATUS(c.status));
  } else if (WIFSIGNALED(c.status)) {
    how = absl::StrCat("signal ", WTERMSIG(c.status));
  }
  return absl::StrCat("rank ", c.rank, " (", how, "):\n", ReadFile(c.log));
}

// Starts `size` ranks of `scenario` and waits for all of them, at most `limit`.
std::vector<Child> RunRanks(int size, const std::string& scenario, const std::filesystem::path& dir,
                            absl::Duration limit) {
  char exe[4096];
  const ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
  EXPECT_GT(n, 0) << "readlink /proc/self/exe: " << std::strerror(errno);
  if (n <= 0) return {};
  exe[n] = '\0';
  const std::string store_dir = (dir / "store").string();

  std::vector<Child> children(size);
  for (int rank = 0; rank < size; ++rank) {
    Child& c = children[rank];
    c.rank = rank;
    c.log = dir / absl::StrCat("rank", rank, ".log");
    // The environment of this process, with our variable replaced.
    std::vector<std::string> env_strings;
    for (char** e = environ; *e != nullptr; ++e) {
      if (std::strncmp(*e, comm_test::kChildEnv, std::strlen(comm_test::kChildEnv)) != 0) env_strings.push_back(*e);
    }
    env_strings.push_back(absl::StrCat(comm_test::kChildEnv, "=", rank, ",", size, ",", store_dir, ",", scenario));
    std::vector<char*> envp;
    for (std::string& s : env_strings) envp.push_back(s.data());
    envp.push_back(nullptr);
    char* argv[] = {exe, nullptr};

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 1, c.log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    posix_spawn_file_actions_adddup2(&actions, 1, 2);
    const int rc = posix_spawn(&c.pid, exe, &actions, nullptr, argv, envp.data());
    posix_spawn_file_actions_destroy(&actions);
    EXPECT_EQ(rc, 0) << "posix_spawn: " << std::strerror(rc);
    if (rc != 0) c.done = true;
  }

  const absl::Time deadline = absl::Now() + limit;
  while (true) {
    bool all_done = true;
    for (Child& c : children) {
      if (c.done) continue;
      const pid_t r = waitpid(c.pid, &c.status, WNOHANG);
      if (r == c.pid) {
        c.done = true;
      } else {
        all_done = false;
      }
    }
    if (all_done) break;
    if (absl::Now() >= deadline) {
      for (Child& c : children) {
        if (c.done) continue;
        kill(c.pid, SIGKILL);
        waitpid(c.pid, &c.status, 0);
        c.done = true;
        c.killed = true;
      }
      break;
    }
    absl::SleepFor(absl::Milliseconds(10));
  }
  return children;
}

bool ExitedZero(const Child& c) { return !c.killed && WIFEXITED(c.status) && WEXITSTATUS(c.status) == 0; }

constexpr absl::Duration kLimit = absl::Seconds(60);

class GlooProcessTest : public ::testing::TestWithParam<int> {};

TEST_P(GlooProcessTest, EveryCollectiveEveryDType) {
  const int size = GetParam();
  const std::filesystem::path dir = testing::MakeTempDir("comm-proc");
  const absl::Time start = absl::Now();
  const std::vector<Child> children = RunRanks(size, "collectives", dir, kLimit);
  for (const Child& c : children) EXPECT_TRUE(ExitedZero(c)) << Describe(c);
  std::cout << size << " processes: " << absl::FormatDuration(absl::Now() - start) << "\n";
}

// The last rank leaves after a first Barrier; the others' next collective
// must fail (not hang, not crash) within the timeout + slack, and every call
// after that must be FailedPrecondition (checked in the child).
void CheckPeerFailure(int size, const std::string& scenario) {
  const std::filesystem::path dir = testing::MakeTempDir("comm-proc");
  const absl::Time start = absl::Now();
  const std::vector<Child> children = RunRanks(size, scenario, dir, kLimit);
  const absl::Duration took = absl::Now() - start;
  ASSERT_EQ(children.size(), static_cast<size_t>(size));
  const Child& odd = children.back();
  if (scenario == "die_kill") {
    EXPECT_TRUE(!odd.killed && WIFSIGNALED(odd.status) && WTERMSIG(odd.status) == SIGKILL) << Describe(odd);
  } else {
    EXPECT_TRUE(ExitedZero(odd)) << Describe(odd);
  }
  std::shared_ptr<Store> store = MakeFileStore((dir / "store").string());
  bool any_deadline = false;
  for (int r = 0; r + 1 < size; ++r) {
    const Child& c = children[r];
    EXPECT_TRUE(ExitedZero(c)) << Describe(c);
    std::cout << Describe(c);
    absl::StatusOr<std::vector<uint8_t>> code = store->Get(absl::StrCat("result/", r), absl::ZeroDuration());
    ASSERT_TRUE(code.ok()) << code.status();
    ASSERT_EQ(code->size(), 1u);
    if (static_cast<absl::StatusCode>((*code)[0]) == absl::StatusCode::kDeadlineExceeded) any_deadline = true;
  }
  // A peer that hangs (sockets open) can only be noticed by a timeout.
  if (scenario == "hang") EXPECT_TRUE(any_deadline) << "no survivor reported DeadlineExceeded";
  EXPECT_LT(took, absl::Seconds(comm_test::kFailureBoundSeconds + 10));
}

TEST_P(GlooProcessTest, PeerExitsBeforeCollective) { CheckPeerFailure(GetParam(), "die_exit"); }
TEST_P(GlooProcessTest, PeerKilledBeforeCollective) { CheckPeerFailure(GetParam(), "die_kill"); }
TEST_P(GlooProcessTest, PeerHangsInsteadOfCollective) { CheckPeerFailure(GetParam(), "hang"); }
TEST_P(GlooProcessTest, PeerExitsDuringTransfers) { CheckPeerFailure(GetParam(), "die_during"); }

INSTANTIATE_TEST_SUITE_P(Ranks, GlooProcessTest, ::testing::Values(2, 3),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return absl::StrCat(info.param, "Processes");
                         });

}  // namespace
}  // namespace shrinkray
