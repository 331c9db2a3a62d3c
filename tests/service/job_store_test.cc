// The SQLite job store: round trips, persistence across reopen, event paging,
// error codes, schema versioning, a non-database file, concurrent writers.
#include "server/job_store.h"

#include <sqlite3.h>

#include <fstream>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

v1::Job MakeJob(const std::string& id, int64_t create_seconds) {
  v1::Job job;
  job.set_id(id);
  job.set_state(v1::JOB_STATE_QUEUED);
  job.mutable_spec()->set_model_path("/data/models/" + id);
  job.mutable_spec()->set_recipe_yaml("[{gptq: {bits: 4}}]");
  (*job.mutable_spec()->mutable_labels())["team"] = "ml";
  job.mutable_create_time()->set_seconds(create_seconds);
  job.set_attempt(1);
  return job;
}

v1::JobEvent MakeEvent(int64_t sequence, const std::string& text) {
  v1::JobEvent event;
  event.set_sequence(sequence);
  event.mutable_time()->set_seconds(1700000000 + sequence);
  event.mutable_log()->set_level("info");
  event.mutable_log()->set_text(text);
  return event;
}

std::unique_ptr<JobStore> OpenOrDie(const std::filesystem::path& path) {
  auto store = JobStore::Open(path);
  EXPECT_TRUE(store.ok()) << store.status();
  return store.ok() ? std::move(store).value() : nullptr;
}

// Sets PRAGMA user_version on `path` behind the store's back.
void SetUserVersion(const std::filesystem::path& path, int version) {
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open(path.c_str(), &db), SQLITE_OK);
  const std::string sql = "PRAGMA user_version=" + std::to_string(version);
  EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  sqlite3_close(db);
}

TEST(JobStoreTest, InsertGetUpdateRoundTrip) {
  auto dir = testing::MakeTempDir("jobstore");
  auto store = OpenOrDie(dir / "jobs.db");
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->schema_version(), JobStore::kSchemaVersion);

  const v1::Job job = MakeJob("job-1", 100);
  ASSERT_TRUE(store->InsertJob(job).ok());
  auto got = store->GetJob("job-1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->SerializeAsString(), job.SerializeAsString());

  v1::Job updated = job;
  updated.set_state(v1::JOB_STATE_SUCCEEDED);
  updated.mutable_result()->set_output_bytes(12345);
  ASSERT_TRUE(store->UpdateJob(updated).ok());
  got = store->GetJob("job-1");
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(got->result().output_bytes(), 12345);
  EXPECT_EQ(got->spec().labels().at("team"), "ml");
}

TEST(JobStoreTest, PersistsAcrossReopen) {
  auto dir = testing::MakeTempDir("jobstore");
  const auto path = dir / "jobs.db";
  {
    auto store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    // Inserted out of creation order: LoadAllJobs sorts by create_time.
    ASSERT_TRUE(store->InsertJob(MakeJob("b", 200)).ok());
    ASSERT_TRUE(store->InsertJob(MakeJob("a", 100)).ok());
    ASSERT_TRUE(store->InsertJob(MakeJob("c", 200)).ok());  // same time as b: insertion order
    ASSERT_TRUE(store->AppendEvent("a", MakeEvent(1, "queued")).ok());
    ASSERT_TRUE(store->AppendEvent("a", MakeEvent(2, "running")).ok());
  }
  auto store = OpenOrDie(path);
  ASSERT_NE(store, nullptr);
  auto jobs = store->LoadAllJobs();
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 3u);
  EXPECT_EQ((*jobs)[0].id(), "a");
  EXPECT_EQ((*jobs)[1].id(), "b");
  EXPECT_EQ((*jobs)[2].id(), "c");
  auto last = store->LastEventSequence("a");
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(*last, 2);
  auto events = store->EventsAfter("a", 0, 10);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 2u);
  EXPECT_EQ((*events)[1].log().text(), "running");
}

TEST(JobStoreTest, EventsOrderedAndPaged) {
  auto dir = testing::MakeTempDir("jobstore");
  auto store = OpenOrDie(dir / "jobs.db");
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->InsertJob(MakeJob("j", 1)).ok());
  ASSERT_TRUE(store->InsertJob(MakeJob("other", 2)).ok());
  auto none = store->LastEventSequence("j");
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(*none, 0);
  // Appended out of order; read back in sequence order.
  for (int64_t s : {3, 1, 10, 2, 5, 4, 7, 6, 9, 8}) {
    ASSERT_TRUE(store->AppendEvent("j", MakeEvent(s, "e" + std::to_string(s))).ok());
  }
  ASSERT_TRUE(store->AppendEvent("other", MakeEvent(1, "not j")).ok());

  std::vector<int64_t> seen;
  int64_t after = 0;
  int pages = 0;
  while (true) {
    auto page = store->EventsAfter("j", after, 3);
    ASSERT_TRUE(page.ok()) << page.status();
    if (page->empty()) break;
    EXPECT_LE(page->size(), 3u);
    for (const auto& e : *page) {
      EXPECT_EQ(e.log().text(), "e" + std::to_string(e.sequence()));
      seen.push_back(e.sequence());
    }
    after = page->back().sequence();
    ++pages;
  }
  EXPECT_EQ(pages, 4);
  EXPECT_EQ(seen, (std::vector<int64_t>{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}));
  auto last = store->LastEventSequence("j");
  ASSERT_TRUE(last.ok());
  EXPECT_EQ(*last, 10);
  auto unknown = store->EventsAfter("nope", 0, 10);
  ASSERT_TRUE(unknown.ok());
  EXPECT_TRUE(unknown->empty());
  EXPECT_EQ(store->EventsAfter("j", 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(JobStoreTest, DuplicatesAreAlreadyExists) {
  auto dir = testing::MakeTempDir("jobstore");
  auto store = OpenOrDie(dir / "jobs.db");
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->InsertJob(MakeJob("dup", 1)).ok());
  absl::Status s = store->InsertJob(MakeJob("dup", 2));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(s.message(), HasSubstr("dup"));

  ASSERT_TRUE(store->AppendEvent("dup", MakeEvent(1, "x")).ok());
  s = store->AppendEvent("dup", MakeEvent(1, "y"));
  EXPECT_EQ(s.code(), absl::StatusCode::kAlreadyExists) << s;
  EXPECT_THAT(s.message(), HasSubstr("sequence 1"));
  // The first event is untouched.
  auto events = store->EventsAfter("dup", 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].log().text(), "x");
}

TEST(JobStoreTest, UnknownIdsAndBadInput) {
  auto dir = testing::MakeTempDir("jobstore");
  auto store = OpenOrDie(dir / "jobs.db");
  ASSERT_NE(store, nullptr);
  auto got = store->GetJob("missing-id");
  EXPECT_EQ(got.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(got.status().message(), HasSubstr("missing-id"));
  absl::Status s = store->UpdateJob(MakeJob("missing-id", 1));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_THAT(s.message(), HasSubstr("missing-id"));
  s = store->AppendEvent("missing-id", MakeEvent(1, "x"));
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_EQ(store->InsertJob(MakeJob("", 1)).code(), absl::StatusCode::kInvalidArgument);
  ASSERT_TRUE(store->InsertJob(MakeJob("j", 1)).ok());
  EXPECT_EQ(store->AppendEvent("j", MakeEvent(0, "x")).code(), absl::StatusCode::kInvalidArgument);
}

TEST(JobStoreTest, NewerSchemaIsFailedPrecondition) {
  auto dir = testing::MakeTempDir("jobstore");
  const auto path = dir / "jobs.db";
  {
    auto store = OpenOrDie(path);
    ASSERT_NE(store, nullptr);
    ASSERT_TRUE(store->InsertJob(MakeJob("keep", 1)).ok());
  }
  SetUserVersion(path, JobStore::kSchemaVersion + 1);
  auto store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(store.status().message(), HasSubstr(std::to_string(JobStore::kSchemaVersion + 1)));
  EXPECT_THAT(store.status().message(), HasSubstr(std::to_string(JobStore::kSchemaVersion)));
  // Refusing must not have changed the file: back at the known version it opens with its data.
  SetUserVersion(path, JobStore::kSchemaVersion);
  auto again = OpenOrDie(path);
  ASSERT_NE(again, nullptr);
  EXPECT_TRUE(again->GetJob("keep").ok());
}

TEST(JobStoreTest, NonDatabaseFileIsAClearError) {
  auto dir = testing::MakeTempDir("jobstore");
  const auto path = dir / "garbage.db";
  {
    std::mt19937 rng(42);
    std::ofstream f(path, std::ios::binary);
    for (int i = 0; i < 8192; ++i) f.put(static_cast<char>(rng() & 0xff));
  }
  auto store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_THAT(store.status().message(), HasSubstr(path.string()));
  EXPECT_THAT(store.status().message(), HasSubstr("not a"));
}

TEST(JobStoreTest, MissingFolderIsAnErrorNamingThePath) {
  auto dir = testing::MakeTempDir("jobstore");
  const auto path = dir / "no" / "such" / "jobs.db";
  auto store = JobStore::Open(path);
  ASSERT_FALSE(store.ok());
  EXPECT_THAT(store.status().message(), HasSubstr(path.string()));
}

TEST(JobStoreTest, ConcurrentWritersLoseNothing) {
  auto dir = testing::MakeTempDir("jobstore");
  auto store = OpenOrDie(dir / "jobs.db");
  ASSERT_NE(store, nullptr);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 250;
  ASSERT_TRUE(store->InsertJob(MakeJob("shared", 1)).ok());
  for (int t = 0; t < kThreads; ++t) ASSERT_TRUE(store->InsertJob(MakeJob("own" + std::to_string(t), 2)).ok());

  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      const std::string own = "own" + std::to_string(t);
      for (int i = 0; i < kPerThread; ++i) {
        // Interleaved sequences on one job, plus a job of its own, plus reads.
        const int64_t seq = 1 + static_cast<int64_t>(i) * kThreads + t;
        if (!store->AppendEvent("shared", MakeEvent(seq, "s")).ok()) ++failures[t];
        if (!store->AppendEvent(own, MakeEvent(i + 1, own)).ok()) ++failures[t];
        if (i % 50 == 0) {
          v1::Job job = MakeJob(own, 2);
          job.set_attempt(i);
          if (!store->UpdateJob(job).ok()) ++failures[t];
          if (!store->LastEventSequence("shared").ok()) ++failures[t];
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kThreads; ++t) EXPECT_EQ(failures[t], 0) << "thread " << t;

  auto events = store->EventsAfter("shared", 0, 100000);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), static_cast<size_t>(kThreads * kPerThread));
  for (size_t i = 0; i < events->size(); ++i) EXPECT_EQ((*events)[i].sequence(), static_cast<int64_t>(i + 1));
  for (int t = 0; t < kThreads; ++t) {
    auto last = store->LastEventSequence("own" + std::to_string(t));
    ASSERT_TRUE(last.ok());
    EXPECT_EQ(*last, kPerThread);
  }
}

}  // namespace
}  // namespace shrinkray
