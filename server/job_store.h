// The coordinator's durable job store: one SQLite file holding every job and
// its event stream, so a restarted coordinator knows what it was doing.
//
// Jobs are stored as serialized v1::Job blobs beside a few indexed columns
// (id, state, create time): the schema then survives proto changes, which
// stay wire compatible. Events are (job_id, sequence, blob) rows keyed by
// (job_id, sequence).
//
// Durability: WAL journal with synchronous=NORMAL. A commit survives a crash
// or kill of the coordinator (the common failure); a power loss may roll back
// the last few commits but never corrupts the file. FULL would fsync on every
// commit, i.e. on every progress/metric event, with the store's lock held.
// When the filesystem cannot do WAL we fall back to synchronous=FULL, since
// NORMAL with a rollback journal may corrupt on power loss.
//
// Thread safety: every method may be called from any thread; one connection
// is guarded by a mutex (calls are serialized). Another process opening the
// same file waits up to the busy timeout (5 s), then gets UNAVAILABLE.
//
// Error codes: ALREADY_EXISTS (duplicate job id or event sequence),
// NOT_FOUND (unknown job id), INVALID_ARGUMENT (empty id, bad sequence/limit),
// FAILED_PRECONDITION (a file that is not a SQLite database, or a schema newer
// than this binary), DATA_LOSS (a corrupt database or blob), UNAVAILABLE
// (locked by another process), INTERNAL (anything else). Every message names
// the database file.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "shrinkray/v1/compression.pb.h"

struct sqlite3;
struct sqlite3_stmt;

namespace shrinkray {

class JobStore {
 public:
  // The schema version this binary writes (PRAGMA user_version).
  static constexpr int kSchemaVersion = 1;

  // Creates or opens the database at `db_path` (its folder must exist) and
  // creates or migrates the schema. A database with a schema newer than
  // kSchemaVersion is FAILED_PRECONDITION naming the file and both versions.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(const std::filesystem::path& db_path);

  ~JobStore();
  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  const std::filesystem::path& path() const { return path_; }
  // The schema version of the open database (kSchemaVersion after Open).
  int schema_version() const { return schema_version_; }

  // ALREADY_EXISTS when a job with job.id() is stored; INVALID_ARGUMENT for an empty id.
  absl::Status InsertJob(const v1::Job& job);
  // Replaces the stored job with the same id; NOT_FOUND for an unknown id.
  absl::Status UpdateJob(const v1::Job& job);
  // NOT_FOUND naming the id.
  absl::StatusOr<v1::Job> GetJob(const std::string& id);
  // Every job, oldest first (by create_time, then insertion order).
  absl::StatusOr<std::vector<v1::Job>> LoadAllJobs();

  // Stores one event. event.sequence() is set by the caller: >= 1 and unique
  // per job (ALREADY_EXISTS otherwise). NOT_FOUND when the job is not stored.
  absl::Status AppendEvent(const std::string& job_id, const v1::JobEvent& event);
  // Up to `limit` (>= 1) events with sequence > after_sequence, in sequence
  // order. An unknown job has no events (empty, not NOT_FOUND).
  absl::StatusOr<std::vector<v1::JobEvent>> EventsAfter(const std::string& job_id, int64_t after_sequence,
                                                        int limit);
  // The highest stored sequence of the job; 0 when it has none.
  absl::StatusOr<int64_t> LastEventSequence(const std::string& job_id);

 private:
  class Reset;
  JobStore(std::filesystem::path path, sqlite3* db);

  absl::Status Init() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Exec(const char* sql, const std::string& what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<int> ReadUserVersion() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // A cached prepared statement for `sql`, reset and unbound.
  absl::StatusOr<sqlite3_stmt*> Prepare(const char* sql) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::string> SerializeJob(const v1::Job& job) const;
  // A status for SQLite result code `rc` of operation `what`, naming the file.
  absl::Status SqlError(int rc, const std::string& what) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::filesystem::path path_;
  int schema_version_ = 0;
  absl::Mutex mu_;
  sqlite3* db_ ABSL_GUARDED_BY(mu_);
  std::unordered_map<std::string, sqlite3_stmt*> statements_ ABSL_GUARDED_BY(mu_);
};

}  // namespace shrinkray
