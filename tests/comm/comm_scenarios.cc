#include "comm/comm_scenarios.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <set>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "core/tensor/convert.h"

namespace shrinkray::comm_test {
namespace {

constexpr CommDType kAllDTypes[] = {CommDType::kF32, CommDType::kF64, CommDType::kBF16, CommDType::kI32,
                                    CommDType::kU8};

// Collects failures; keeps the first few so one bad buffer cannot flood the log.
class Errors {
 public:
  void Add(const std::string& e) {
    if (list_.size() < 20) list_.push_back(e);
    ++count_;
  }
  std::string Text() const {
    if (count_ == 0) return "";
    return absl::StrCat(count_, " failure(s):\n  ", absl::StrJoin(list_, "\n  "));
  }
  bool empty() const { return count_ == 0; }

 private:
  std::vector<std::string> list_;
  size_t count_ = 0;
};

void Put(CommDType d, void* base, size_t i, double v) {
  switch (d) {
    case CommDType::kF32: static_cast<float*>(base)[i] = static_cast<float>(v); return;
    case CommDType::kF64: static_cast<double*>(base)[i] = v; return;
    case CommDType::kBF16: static_cast<uint16_t*>(base)[i] = F32ToBF16(static_cast<float>(v)); return;
    case CommDType::kI32: static_cast<int32_t*>(base)[i] = static_cast<int32_t>(v); return;
    case CommDType::kU8: static_cast<uint8_t*>(base)[i] = static_cast<uint8_t>(v); return;
  }
}

double Get(CommDType d, const void* base, size_t i) {
  switch (d) {
    case CommDType::kF32: return static_cast<const float*>(base)[i];
    case CommDType::kF64: return static_cast<const double*>(base)[i];
    case CommDType::kBF16: return BF16ToF32(static_cast<const uint16_t*>(base)[i]);
    case CommDType::kI32: return static_cast<const int32_t*>(base)[i];
    case CommDType::kU8: return static_cast<const uint8_t*>(base)[i];
  }
  return 0.0;
}

// Small integers, so that every sum of up to 3 ranks (and every partial sum,
// in any order) is exact in the dtype: |v| <= 512 for F32/F64/I32, <= 64 for
// BF16 (8 significant bits: integers up to 256 are exact), 0..79 for U8.
double Value(CommDType d, int rank, size_t i, uint64_t salt) {
  const uint64_t h = i * 7 + static_cast<uint64_t>(rank) * 13 + salt * 31;
  switch (d) {
    case CommDType::kF32:
    case CommDType::kF64:
    case CommDType::kI32: return static_cast<double>(static_cast<int64_t>(h % 1024) - 512);
    case CommDType::kBF16: return static_cast<double>(static_cast<int64_t>(h % 128) - 64);
    case CommDType::kU8: return static_cast<double>(h % 80);
  }
  return 0.0;
}

std::vector<uint8_t> Buffer(CommDType d, size_t n) { return std::vector<uint8_t>(n * CommDTypeSize(d)); }

// Compares element by element (bit for bit); names the first mismatches.
void Expect(Errors& errors, const std::string& what, CommDType d, const std::vector<uint8_t>& got,
            const std::vector<uint8_t>& want) {
  if (got.size() != want.size()) {
    errors.Add(absl::StrCat(what, ": size ", got.size(), " != ", want.size()));
    return;
  }
  const size_t es = CommDTypeSize(d);
  const size_t n = got.size() / es;
  int shown = 0;
  size_t bad = 0;
  for (size_t i = 0; i < n; ++i) {
    if (std::memcmp(got.data() + i * es, want.data() + i * es, es) != 0) {
      if (shown++ < 3) {
        errors.Add(absl::StrCat(what, ": element ", i, " is ", Get(d, got.data(), i), ", expected ",
                                Get(d, want.data(), i)));
      }
      ++bad;
    }
  }
  if (bad > 3) errors.Add(absl::StrCat(what, ": ", bad, " of ", n, " elements differ"));
}

void ExpectOk(Errors& errors, const std::string& what, const absl::Status& st) {
  if (!st.ok()) errors.Add(absl::StrCat(what, ": ", st.ToString()));
}

std::string Name(const char* op, CommDType d, size_t n) {
  return absl::StrCat(op, " ", CommDTypeName(d), " x", n);
}

void CheckAllReduce(Communicator& comm, Errors& errors) {
  const int size = comm.size();
  for (CommDType d : kAllDTypes) {
    for (ReduceOp op : {ReduceOp::kSum, ReduceOp::kMax}) {
      for (size_t n : TestSizes()) {
        const std::string what = Name(op == ReduceOp::kSum ? "AllReduce(sum)" : "AllReduce(max)", d, n);
        std::vector<uint8_t> data = Buffer(d, n), want = Buffer(d, n);
        for (size_t i = 0; i < n; ++i) {
          Put(d, data.data(), i, Value(d, comm.rank(), i, 1));
          double acc = Value(d, 0, i, 1);
          for (int r = 1; r < size; ++r) {
            const double v = Value(d, r, i, 1);
            acc = op == ReduceOp::kSum ? acc + v : std::max(acc, v);
          }
          Put(d, want.data(), i, acc);
        }
        const absl::Status st = comm.AllReduce(data.data(), n, d, op);
        ExpectOk(errors, what, st);
        if (st.ok()) Expect(errors, what, d, data, want);
      }
    }
  }
  // I32 sums far from zero (exact in int32, not in float).
  {
    const size_t n = 1001;
    std::vector<int32_t> data(n), want(n, 0);
    for (size_t i = 0; i < n; ++i) {
      for (int r = 0; r < size; ++r) {
        const int32_t v = static_cast<int32_t>(100000007LL * (r + 1) + static_cast<int64_t>(i) * 977) *
                          ((i % 2) ? -1 : 1);
        if (r == comm.rank()) data[i] = v;
        want[i] += v;
      }
    }
    const absl::Status st = comm.AllReduce(data.data(), n, CommDType::kI32, ReduceOp::kSum);
    ExpectOk(errors, "AllReduce(sum) I32 large", st);
    if (st.ok() && data != want) errors.Add("AllReduce(sum) I32 large: wrong values");
  }
}

// A bf16 value from (rank, i): random-looking, |v| < 8, so sums need rounding.
uint16_t RandomBf16(int rank, size_t i) {
  uint64_t z = (static_cast<uint64_t>(rank) << 40) + i + 0x9E3779B97F4A7C15ULL;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  z ^= z >> 31;
  const float f = (static_cast<float>(z % 2000001) / 1000000.0f - 1.0f) * 8.0f;
  return F32ToBF16(f);
}

float AddBf16(float a, float b) { return BF16ToF32(F32ToBF16(a + b)); }

// BF16 sums that round: each pair adds in fp32 and rounds to bf16 (nearest
// even). With 2 ranks that fixes the result; with 3 the pairing order is the
// backend's, so the result must be one of the three pairwise orders.
void CheckBf16Rounding(Communicator& comm, Errors& errors) {
  const int size = comm.size();
  for (size_t n : TestSizes()) {
    std::vector<uint16_t> data(n);
    for (size_t i = 0; i < n; ++i) data[i] = RandomBf16(comm.rank(), i);
    const std::string what = absl::StrCat("AllReduce(sum) BF16 rounding x", n);
    const absl::Status st = comm.AllReduce(data.data(), n, CommDType::kBF16, ReduceOp::kSum);
    ExpectOk(errors, what, st);
    if (!st.ok()) continue;
    size_t bad = 0;
    for (size_t i = 0; i < n; ++i) {
      std::vector<float> v;
      for (int r = 0; r < size; ++r) v.push_back(BF16ToF32(RandomBf16(r, i)));
      std::set<uint16_t> allowed;
      if (size == 1) {
        allowed.insert(F32ToBF16(v[0]));
      } else if (size == 2) {
        allowed.insert(F32ToBF16(v[0] + v[1]));
      } else if (size == 3) {
        allowed.insert(F32ToBF16(AddBf16(v[0], v[1]) + v[2]));
        allowed.insert(F32ToBF16(AddBf16(v[0], v[2]) + v[1]));
        allowed.insert(F32ToBF16(AddBf16(v[1], v[2]) + v[0]));
      }
      if (allowed.count(data[i]) == 0 && bad++ < 3) {
        errors.Add(absl::StrCat(what, ": element ", i, " is ", BF16ToF32(data[i]), ", not a pairwise-rounded sum"));
      }
    }
    if (bad > 3) errors.Add(absl::StrCat(what, ": ", bad, " of ", n, " elements differ"));
  }
}

void CheckBroadcast(Communicator& comm, Errors& errors) {
  for (CommDType d : kAllDTypes) {
    for (size_t n : TestSizes()) {
      for (int root = 0; root < comm.size(); ++root) {
        const std::string what = absl::StrCat(Name("Broadcast", d, n), " from ", root);
        std::vector<uint8_t> data = Buffer(d, n), want = Buffer(d, n);
        for (size_t i = 0; i < n; ++i) Put(d, want.data(), i, Value(d, root, i, 2));
        if (comm.rank() == root) {
          data = want;
        } else {
          std::fill(data.begin(), data.end(), 0xAB);  // garbage that must be overwritten
        }
        const absl::Status st = comm.Broadcast(data.data(), n, d, root);
        ExpectOk(errors, what, st);
        if (st.ok()) Expect(errors, what, d, data, want);
      }
    }
  }
}

void CheckAllGather(Communicator& comm, Errors& errors) {
  const int size = comm.size();
  for (CommDType d : kAllDTypes) {
    for (size_t n : TestSizes()) {
      const std::string what = Name("AllGather", d, n);
      std::vector<uint8_t> in = Buffer(d, n), out = Buffer(d, n * size), want = Buffer(d, n * size);
      std::fill(out.begin(), out.end(), 0xCD);
      for (size_t i = 0; i < n; ++i) Put(d, in.data(), i, Value(d, comm.rank(), i, 3));
      for (int r = 0; r < size; ++r) {
        for (size_t i = 0; i < n; ++i) Put(d, want.data(), r * n + i, Value(d, r, i, 3));
      }
      const absl::Status st = comm.AllGather(in.data(), out.data(), n, d);
      ExpectOk(errors, what, st);
      if (st.ok()) Expect(errors, what, d, out, want);
    }
  }
}

void CheckAllGatherV(Communicator& comm, Errors& errors) {
  const int size = comm.size();
  // Uneven, with a zero count in each set (sizes 2 and 3; 1 for a single rank).
  std::vector<std::vector<size_t>> sets;
  if (size == 1) {
    sets = {{7}, {0}};
  } else if (size == 2) {
    sets = {{0, 7}, {1000003, 0}, {1, 5}};
  } else {
    sets = {{3, 0, 11}, {1000003, 1, 0}, {0, 0, 7}};
  }
  for (CommDType d : kAllDTypes) {
    for (const std::vector<size_t>& counts : sets) {
      if (counts.size() != static_cast<size_t>(size)) continue;
      const std::string what =
          absl::StrCat("AllGatherV ", CommDTypeName(d), " counts {", absl::StrJoin(counts, ","), "}");
      size_t total = 0;
      for (size_t c : counts) total += c;
      const size_t mine = counts[comm.rank()];
      std::vector<uint8_t> in = Buffer(d, mine), out = Buffer(d, total), want = Buffer(d, total);
      std::fill(out.begin(), out.end(), 0xEF);
      for (size_t i = 0; i < mine; ++i) Put(d, in.data(), i, Value(d, comm.rank(), i, 4));
      size_t offset = 0;
      for (int r = 0; r < size; ++r) {
        for (size_t i = 0; i < counts[r]; ++i) Put(d, want.data(), offset + i, Value(d, r, i, 4));
        offset += counts[r];
      }
      // A rank with nothing to send may pass a null input.
      const absl::Status st = comm.AllGatherV(mine > 0 ? in.data() : nullptr, out.data(), counts, d);
      ExpectOk(errors, what, st);
      if (st.ok()) Expect(errors, what, d, out, want);
    }
  }
}

void CheckZeroAndBadArguments(Communicator& comm, Errors& errors) {
  // Zero elements: nothing to exchange, OK on every rank.
  ExpectOk(errors, "AllReduce x0", comm.AllReduce(nullptr, 0, CommDType::kF32, ReduceOp::kSum));
  ExpectOk(errors, "Broadcast x0", comm.Broadcast(nullptr, 0, CommDType::kF32, 0));
  ExpectOk(errors, "AllGather x0", comm.AllGather(nullptr, nullptr, 0, CommDType::kF32));
  ExpectOk(errors, "AllGatherV all zero",
           comm.AllGatherV(nullptr, nullptr, std::vector<size_t>(comm.size(), 0), CommDType::kF32));
  // Bad arguments are rejected before anything is sent (same on every rank).
  const absl::Status null_buf = comm.AllReduce(nullptr, 3, CommDType::kF32, ReduceOp::kSum);
  if (!absl::IsInvalidArgument(null_buf)) errors.Add(absl::StrCat("null buffer: ", null_buf.ToString()));
  float x = 1.0f;
  const absl::Status bad_root = comm.Broadcast(&x, 1, CommDType::kF32, comm.size());
  if (!absl::IsInvalidArgument(bad_root)) errors.Add(absl::StrCat("bad root: ", bad_root.ToString()));
  const absl::Status bad_counts =
      comm.AllGatherV(&x, &x, std::vector<size_t>(comm.size() + 1, 1), CommDType::kF32);
  if (!absl::IsInvalidArgument(bad_counts)) errors.Add(absl::StrCat("bad counts: ", bad_counts.ToString()));
}

void CheckBarrier(Communicator& comm, Store& store, Errors& errors) {
  // Later ranks arrive later; after the barrier every arrival key must exist.
  absl::SleepFor(absl::Milliseconds(50 * comm.rank()));
  ExpectOk(errors, "Barrier arrival key", store.Set(absl::StrCat("arrived/", comm.rank()), {1}));
  ExpectOk(errors, "Barrier", comm.Barrier());
  std::vector<std::string> keys;
  for (int r = 0; r < comm.size(); ++r) keys.push_back(absl::StrCat("arrived/", r));
  ExpectOk(errors, "every rank arrived before the barrier released", store.Wait(keys, absl::ZeroDuration()));
}

// Every rank all-reduces 4M floats in a loop; the last rank _exits from a
// second thread 30 ms in, most likely in the middle of a transfer (reads and
// writes on sockets that break). The others must fail within the bound.
int DieDuringTransfer(Communicator& comm, Store& store, const std::string& me, int odd_one) {
  std::vector<float> data(4 << 20, 1.0f);
  if (comm.rank() == odd_one) {
    std::thread([] {
      absl::SleepFor(absl::Milliseconds(30));
      _exit(0);
    }).detach();
  }
  const absl::Time start = absl::Now();
  absl::Status st;
  int rounds = 0;
  while (st.ok() && rounds < 1000 && absl::Now() - start < absl::Seconds(kFailureBoundSeconds)) {
    std::fill(data.begin(), data.end(), 1.0f);
    st = comm.AllReduce(data.data(), data.size(), CommDType::kF32, ReduceOp::kSum);
    ++rounds;
  }
  if (comm.rank() == odd_one) {
    absl::SleepFor(absl::Seconds(5));  // the helper thread ends the process
    return 4;
  }
  const absl::Duration took = absl::Now() - start;
  std::fprintf(stderr, "%s: AllReduce #%d after the peer left: %s (after %s)\n", me.c_str(), rounds,
               st.ToString().c_str(), absl::FormatDuration(took).c_str());
  (void)store.Set(absl::StrCat("result/", comm.rank()), std::vector<uint8_t>{static_cast<uint8_t>(st.code())});
  if (st.ok() || took > absl::Seconds(kFailureBoundSeconds)) {
    std::fprintf(stderr, "%s: FAIL: no error within %ds\n", me.c_str(), kFailureBoundSeconds);
    return 1;
  }
  if (!absl::IsFailedPrecondition(comm.Barrier())) {
    std::fprintf(stderr, "%s: FAIL: call after the error is not FailedPrecondition\n", me.c_str());
    return 1;
  }
  return 0;
}

}  // namespace

std::string RunCollectives(Communicator& comm, Store& store) {
  Errors errors;
  CheckAllReduce(comm, errors);
  CheckBf16Rounding(comm, errors);
  CheckBroadcast(comm, errors);
  CheckAllGather(comm, errors);
  CheckAllGatherV(comm, errors);
  CheckZeroAndBadArguments(comm, errors);
  CheckBarrier(comm, store, errors);
  // Still usable after the InvalidArgument calls above.
  ExpectOk(errors, "final Barrier", comm.Barrier());
  return errors.Text();
}

int RunChild(int rank, int size, const std::string& store_dir, const std::string& scenario) {
  const std::string me = absl::StrCat("rank ", rank, " of ", size, " (", scenario, ")");
  std::shared_ptr<Store> store = MakeFileStore(store_dir);
  CommOptions options;
  options.rank = rank;
  options.size = size;
  const bool failure_scenario = scenario != "collectives";
  options.timeout = absl::Seconds(failure_scenario ? kFailureTimeoutSeconds : 30);
  absl::StatusOr<std::unique_ptr<Communicator>> comm = MakeGlooCommunicator(store, options);
  if (!comm.ok()) {
    std::fprintf(stderr, "%s: MakeGlooCommunicator: %s\n", me.c_str(), comm.status().ToString().c_str());
    return 2;
  }
  if (scenario == "collectives") {
    const std::string errors = RunCollectives(**comm, *store);
    if (!errors.empty()) {
      std::fprintf(stderr, "%s: %s\n", me.c_str(), errors.c_str());
      return 1;
    }
    return 0;
  }
  if (scenario != "die_exit" && scenario != "die_kill" && scenario != "hang" && scenario != "die_during") {
    std::fprintf(stderr, "%s: unknown scenario\n", me.c_str());
    return 3;
  }
  // Every rank is connected and alive here.
  if (absl::Status st = (*comm)->Barrier(); !st.ok()) {
    std::fprintf(stderr, "%s: first Barrier: %s\n", me.c_str(), st.ToString().c_str());
    return 1;
  }
  const int odd_one = size - 1;
  if (scenario == "die_during") return DieDuringTransfer(**comm, *store, me, odd_one);
  if (rank == odd_one) {
    std::fflush(nullptr);
    if (scenario == "die_exit") _exit(0);
    if (scenario == "die_kill") raise(SIGKILL);
    // hang: alive, sockets open, but never joins; leaves once the others
    // have reported (or after the bound, should they never).
    std::vector<std::string> reported;
    for (int r = 0; r < odd_one; ++r) reported.push_back(absl::StrCat("result/", r));
    (void)store->Wait(reported, absl::Seconds(kFailureBoundSeconds));
    _exit(0);
  }
  std::vector<float> data(1000, 1.0f);
  const absl::Time start = absl::Now();
  const absl::Status st = (*comm)->AllReduce(data.data(), data.size(), CommDType::kF32, ReduceOp::kSum);
  const absl::Duration took = absl::Now() - start;
  std::fprintf(stderr, "%s: AllReduce after the peer left: %s (after %s)\n", me.c_str(), st.ToString().c_str(),
               absl::FormatDuration(took).c_str());
  // The parent checks the codes across ranks.
  (void)store->Set(absl::StrCat("result/", rank), std::vector<uint8_t>{static_cast<uint8_t>(st.code())});
  int rc = 0;
  if (st.ok()) {
    std::fprintf(stderr, "%s: FAIL: AllReduce succeeded without rank %d\n", me.c_str(), odd_one);
    rc = 1;
  }
  if (took > absl::Seconds(kFailureBoundSeconds)) {
    std::fprintf(stderr, "%s: FAIL: the error took longer than %ds\n", me.c_str(), kFailureBoundSeconds);
    rc = 1;
  }
  if (!st.ok() && !absl::IsDeadlineExceeded(st) && !absl::IsUnavailable(st)) {
    std::fprintf(stderr, "%s: FAIL: expected DeadlineExceeded or Unavailable\n", me.c_str());
    rc = 1;
  }
  const absl::Status after = (*comm)->Barrier();
  if (!absl::IsFailedPrecondition(after)) {
    std::fprintf(stderr, "%s: FAIL: call after the error: %s (expected FailedPrecondition)\n", me.c_str(),
                 after.ToString().c_str());
    rc = 1;
  }
  return rc;
}

}  // namespace shrinkray::comm_test
