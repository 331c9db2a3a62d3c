#include "server/job_store.h"

#include <sqlite3.h>

#include <iterator>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace shrinkray {
namespace {

// Schema migrations: kMigrations[v] takes a database from version v to v + 1.
// Append only; never edit a released step.
constexpr const char* kMigrations[] = {
    // 0 -> 1: jobs as blobs with the columns we query by; events per job.
    R"sql(
      CREATE TABLE jobs (
        id TEXT PRIMARY KEY NOT NULL,
        state INTEGER NOT NULL,
        create_time_us INTEGER NOT NULL,
        job BLOB NOT NULL
      );
      CREATE INDEX jobs_by_create_time ON jobs (create_time_us);
      CREATE INDEX jobs_by_state ON jobs (state, create_time_us);
      CREATE TABLE events (
        job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
        sequence INTEGER NOT NULL,
        event BLOB NOT NULL,
        PRIMARY KEY (job_id, sequence)
      ) WITHOUT ROWID;
    )sql",
};
static_assert(std::size(kMigrations) == JobStore::kSchemaVersion, "one migration per schema version");

constexpr int kBusyTimeoutMs = 5000;

int64_t TimestampMicros(const google::protobuf::Timestamp& t) {
  return t.seconds() * 1000000 + t.nanos() / 1000;
}

void BindText(sqlite3_stmt* stmt, int index, const std::string& text) {
  sqlite3_bind_text(stmt, index, text.data(), static_cast<int>(text.size()), SQLITE_TRANSIENT);
}

void BindBlob(sqlite3_stmt* stmt, int index, const std::string& blob) {
  sqlite3_bind_blob(stmt, index, blob.data(), static_cast<int>(blob.size()), SQLITE_TRANSIENT);
}

// Column `index` of the current row as a parsed message (false when it does not parse).
template <typename Message>
bool ParseColumn(sqlite3_stmt* stmt, int index, Message* message) {
  const void* data = sqlite3_column_blob(stmt, index);
  const int size = sqlite3_column_bytes(stmt, index);
  if (size == 0) {
    message->Clear();
    return true;
  }
  return message->ParseFromArray(data, size);
}

void BindJobRow(sqlite3_stmt* stmt, const v1::Job& job, const std::string& blob) {
  BindText(stmt, 1, job.id());
  sqlite3_bind_int(stmt, 2, static_cast<int>(job.state()));
  sqlite3_bind_int64(stmt, 3, TimestampMicros(job.create_time()));
  BindBlob(stmt, 4, blob);
}

}  // namespace

// Resets a cached statement when the call that used it returns, so it never
// holds a read transaction open or keeps stale bindings.
class JobStore::Reset {
 public:
  explicit Reset(sqlite3_stmt* stmt) : stmt_(stmt) {}
  ~Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
  }
  Reset(const Reset&) = delete;
  Reset& operator=(const Reset&) = delete;

 private:
  sqlite3_stmt* stmt_;
};

JobStore::JobStore(std::filesystem::path path, sqlite3* db) : path_(std::move(path)), db_(db) {}

JobStore::~JobStore() {
  absl::MutexLock lock(&mu_);
  for (auto& [sql, stmt] : statements_) sqlite3_finalize(stmt);
  statements_.clear();
  sqlite3_close_v2(db_);
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::filesystem::path& db_path) {
  if (db_path.empty()) return absl::InvalidArgumentError("job store: the database path is empty");
  sqlite3* db = nullptr;
  // We serialize calls ourselves, so SQLite's own connection mutex is not needed.
  const int rc = sqlite3_open_v2(db_path.c_str(), &db,
                                 SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    std::string message = db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close_v2(db);
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", db_path.string(), ": cannot open: ", message,
                     " (its folder must exist and be writable)"));
  }
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  std::unique_ptr<JobStore> store(new JobStore(db_path, db));
  {
    absl::MutexLock lock(&store->mu_);
    SR_RETURN_IF_ERROR(store->Init());
  }
  return store;
}

absl::Status JobStore::Init() {
  // Read the version first: a newer database must not be touched at all
  // (not even its journal mode).
  SR_ASSIGN_OR_RETURN(int version, ReadUserVersion());
  if (version > kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job store ", path_.string(), ": schema version ", version, " is newer than this binary's ",
        kSchemaVersion, " (written by a newer shrinkray-coordinator; upgrade it or use another file)"));
  }
  std::string mode;
  {
    SR_ASSIGN_OR_RETURN(sqlite3_stmt * wal, Prepare("PRAGMA journal_mode=WAL"));
    Reset reset_wal(wal);  // before the migration: a stepped statement blocks COMMIT
    const int rc = sqlite3_step(wal);
    if (rc != SQLITE_ROW) return SqlError(rc, "setting journal_mode=WAL");
    const unsigned char* mode_text = sqlite3_column_text(wal, 0);
    if (mode_text != nullptr) mode = reinterpret_cast<const char*>(mode_text);
  }
  // See the header: NORMAL is only crash-safe with WAL.
  SR_RETURN_IF_ERROR(Exec(mode == "wal" ? "PRAGMA synchronous=NORMAL" : "PRAGMA synchronous=FULL",
                          "setting synchronous"));
  SR_RETURN_IF_ERROR(Exec("PRAGMA foreign_keys=ON", "enabling foreign keys"));
  return Migrate();
}

absl::StatusOr<int> JobStore::ReadUserVersion() {
  SR_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, Prepare("PRAGMA user_version"));
  Reset reset(stmt);
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_ROW) return SqlError(rc, "reading user_version");
  return sqlite3_column_int(stmt, 0);
}

absl::Status JobStore::Migrate() {
  // IMMEDIATE takes the write lock up front, so two coordinators starting on
  // the same file cannot both run a migration.
  SR_RETURN_IF_ERROR(Exec("BEGIN IMMEDIATE", "starting the schema migration"));
  auto run = [&]() -> absl::Status {
    SR_ASSIGN_OR_RETURN(int version, ReadUserVersion());
    if (version > kSchemaVersion) {
      return absl::FailedPreconditionError(absl::StrCat("job store ", path_.string(), ": schema version ",
                                                        version, " is newer than this binary's ",
                                                        kSchemaVersion));
    }
    for (int v = version; v < kSchemaVersion; ++v) {
      SR_RETURN_IF_ERROR(Exec(kMigrations[v], absl::StrCat("migrating the schema from version ", v)));
    }
    if (version != kSchemaVersion) {
      // PRAGMA takes no bound parameters; the value is our own constant.
      const std::string set_version = absl::StrCat("PRAGMA user_version=", kSchemaVersion);
      SR_RETURN_IF_ERROR(Exec(set_version.c_str(), "setting user_version"));
    }
    return absl::OkStatus();
  };
  absl::Status status = run();
  if (!status.ok()) {
    Exec("ROLLBACK", "rolling back the schema migration").IgnoreError();
    return status;
  }
  SR_RETURN_IF_ERROR(Exec("COMMIT", "committing the schema migration"));
  schema_version_ = kSchemaVersion;
  return absl::OkStatus();
}

absl::Status JobStore::Exec(const char* sql, const std::string& what) {
  // Prepared one statement at a time (not sqlite3_exec), stepping each to the end.
  const char* tail = sql;
  while (tail != nullptr && *tail != '\0') {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db_, tail, -1, &stmt, &tail);
    if (rc != SQLITE_OK) return SqlError(rc, what);
    if (stmt == nullptr) continue;  // whitespace or a comment
    do {
      rc = sqlite3_step(stmt);
    } while (rc == SQLITE_ROW);
    absl::Status status = rc == SQLITE_DONE ? absl::OkStatus() : SqlError(rc, what);
    sqlite3_finalize(stmt);
    SR_RETURN_IF_ERROR(status);
  }
  return absl::OkStatus();
}

absl::StatusOr<sqlite3_stmt*> JobStore::Prepare(const char* sql) {
  auto it = statements_.find(sql);
  if (it != statements_.end()) return it->second;
  sqlite3_stmt* stmt = nullptr;
  const int rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, nullptr);
  if (rc != SQLITE_OK) {
    sqlite3_finalize(stmt);
    return SqlError(rc, absl::StrCat("preparing '", sql, "'"));
  }
  statements_.emplace(sql, stmt);
  return stmt;
}

absl::Status JobStore::SqlError(int rc, const std::string& what) const {
  const std::string message = absl::StrCat("job store ", path_.string(), ": ", what, ": ",
                                           db_ != nullptr ? sqlite3_errmsg(db_) : sqlite3_errstr(rc),
                                           " (sqlite code ", rc, ")");
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
      return absl::FailedPreconditionError(absl::StrCat(message, "; expected a shrinkray job store (SQLite) file"));
    case SQLITE_CORRUPT:
      return absl::DataLossError(message);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(message);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    case SQLITE_CANTOPEN:
      return absl::FailedPreconditionError(message);
    case SQLITE_PERM:
    case SQLITE_READONLY:
    case SQLITE_AUTH:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

// Serialized outside the lock; InsertJob and UpdateJob then bind the same
// columns: ?1 id, ?2 state, ?3 create time, ?4 the job.
absl::StatusOr<std::string> JobStore::SerializeJob(const v1::Job& job) const {
  std::string blob;
  if (!job.SerializeToString(&blob)) {
    return absl::InternalError(absl::StrCat("job store ", path_.string(), ": cannot serialize job ", job.id()));
  }
  return blob;
}


absl::Status JobStore::InsertJob(const v1::Job& job) {
  if (job.id().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("job store ", path_.string(), ": job id is empty"));
  }
  SR_ASSIGN_OR_RETURN(const std::string blob, SerializeJob(job));
  absl::MutexLock lock(&mu_);
  SR_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                      Prepare("INSERT INTO jobs (id, state, create_time_us, job) VALUES (?1, ?2, ?3, ?4)"));
  Reset reset(stmt);
  BindJobRow(stmt, job, blob);
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_CONSTRAINT_PRIMARYKEY || rc == SQLITE_CONSTRAINT_UNIQUE) {
    return absl::AlreadyExistsError(
        absl::StrCat("job store ", path_.string(), ": job ", job.id(), " already exists"));
  }
  if (rc != SQLITE_DONE) return SqlError(rc, absl::StrCat("inserting job ", job.id()));
  return absl::OkStatus();
}

absl::Status JobStore::UpdateJob(const v1::Job& job) {
  SR_ASSIGN_OR_RETURN(const std::string blob, SerializeJob(job));
  absl::MutexLock lock(&mu_);
  SR_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                      Prepare("UPDATE jobs SET state = ?2, create_time_us = ?3, job = ?4 WHERE id = ?1"));
  Reset reset(stmt);
  BindJobRow(stmt, job, blob);
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_DONE) return SqlError(rc, absl::StrCat("updating job ", job.id()));
  if (sqlite3_changes(db_) == 0) {
    return absl::NotFoundError(absl::StrCat("job store ", path_.string(), ": no job with id '", job.id(), "'"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Job> JobStore::GetJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  SR_ASSIGN_OR_RETURN(sqlite3_stmt * stmt, Prepare("SELECT job FROM jobs WHERE id = ?1"));
  Reset reset(stmt);
  BindText(stmt, 1, id);
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_DONE) {
    return absl::NotFoundError(absl::StrCat("job store ", path_.string(), ": no job with id '", id, "'"));
  }
  if (rc != SQLITE_ROW) return SqlError(rc, absl::StrCat("reading job ", id));
  v1::Job job;
  if (!ParseColumn(stmt, 0, &job)) {
    return absl::DataLossError(absl::StrCat("job store ", path_.string(), ": job ", id, " does not parse"));
  }
  return job;
}

absl::StatusOr<std::vector<v1::Job>> JobStore::LoadAllJobs() {
  absl::MutexLock lock(&mu_);
  SR_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                      Prepare("SELECT id, job FROM jobs ORDER BY create_time_us, rowid"));
  Reset reset(stmt);
  std::vector<v1::Job> jobs;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    v1::Job job;
    if (!ParseColumn(stmt, 1, &job)) {
      const unsigned char* id = sqlite3_column_text(stmt, 0);
      return absl::DataLossError(absl::StrCat("job store ", path_.string(), ": job ",
                                              id != nullptr ? reinterpret_cast<const char*>(id) : "",
                                              " does not parse"));
    }
    jobs.push_back(std::move(job));
  }
  if (rc != SQLITE_DONE) return SqlError(rc, "loading jobs");
  return jobs;
}

absl::Status JobStore::AppendEvent(const std::string& job_id, const v1::JobEvent& event) {
  if (event.sequence() < 1) {
    return absl::InvalidArgumentError(absl::StrCat("job store ", path_.string(), ": event of job ", job_id,
                                                   " has sequence ", event.sequence(), "; sequences start at 1"));
  }
  std::string blob;
  if (!event.SerializeToString(&blob)) {
    return absl::InternalError(absl::StrCat("job store ", path_.string(), ": cannot serialize event ",
                                            event.sequence(), " of job ", job_id));
  }
  absl::MutexLock lock(&mu_);
  SR_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                      Prepare("INSERT INTO events (job_id, sequence, event) VALUES (?1, ?2, ?3)"));
  Reset reset(stmt);
  BindText(stmt, 1, job_id);
  sqlite3_bind_int64(stmt, 2, event.sequence());
  BindBlob(stmt, 3, blob);
  const int rc = sqlite3_step(stmt);
  if (rc == SQLITE_CONSTRAINT_PRIMARYKEY) {
    return absl::AlreadyExistsError(absl::StrCat("job store ", path_.string(), ": job ", job_id,
                                                 " already has an event with sequence ", event.sequence()));
  }
  if (rc == SQLITE_CONSTRAINT_FOREIGNKEY) {
    return absl::NotFoundError(
        absl::StrCat("job store ", path_.string(), ": no job with id '", job_id, "' for event ", event.sequence()));
  }
  if (rc != SQLITE_DONE) return SqlError(rc, absl::StrCat("appending an event to job ", job_id));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::JobEvent>> JobStore::EventsAfter(const std::string& job_id, int64_t after_sequence,
                                                                int limit) {
  if (limit < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("job store ", path_.string(), ": event limit must be at least 1, got ", limit));
  }
  absl::MutexLock lock(&mu_);
  SR_ASSIGN_OR_RETURN(
      sqlite3_stmt * stmt,
      Prepare("SELECT sequence, event FROM events WHERE job_id = ?1 AND sequence > ?2 ORDER BY sequence LIMIT ?3"));
  Reset reset(stmt);
  BindText(stmt, 1, job_id);
  sqlite3_bind_int64(stmt, 2, after_sequence);
  sqlite3_bind_int(stmt, 3, limit);
  std::vector<v1::JobEvent> events;
  int rc;
  while ((rc = sqlite3_step(stmt)) == SQLITE_ROW) {
    v1::JobEvent event;
    if (!ParseColumn(stmt, 1, &event)) {
      return absl::DataLossError(absl::StrCat("job store ", path_.string(), ": event ",
                                              sqlite3_column_int64(stmt, 0), " of job ", job_id,
                                              " does not parse"));
    }
    events.push_back(std::move(event));
  }
  if (rc != SQLITE_DONE) return SqlError(rc, absl::StrCat("reading events of job ", job_id));
  return events;
}

absl::StatusOr<int64_t> JobStore::LastEventSequence(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  SR_ASSIGN_OR_RETURN(sqlite3_stmt * stmt,
                      Prepare("SELECT COALESCE(MAX(sequence), 0) FROM events WHERE job_id = ?1"));
  Reset reset(stmt);
  BindText(stmt, 1, job_id);
  const int rc = sqlite3_step(stmt);
  if (rc != SQLITE_ROW) return SqlError(rc, absl::StrCat("reading the last event of job ", job_id));
  return static_cast<int64_t>(sqlite3_column_int64(stmt, 0));
}

}  // namespace shrinkray
