// Gloo over TCP (Debian's libgloo-dev, upstream 2022-05-18).
//
// Gloo reports every failure by throwing (gloo::IoException for I/O and
// timeouts, gloo::EnforceNotMet for assertions, our StoreFailure from the
// rendezvous store, std::bad_alloc...). Every entry point below runs its gloo
// calls inside Guarded(), which catches everything and returns an
// absl::Status; no exception leaves this file.
#include <netdb.h>
#include <signal.h>
#include <sys/socket.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <mutex>
#include <new>
#include <type_traits>
#include <string>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"
#include "core/tensor/convert.h"
#include "gloo/allgather.h"
#include "gloo/allgatherv.h"
#include "gloo/allreduce.h"
#include "gloo/barrier.h"
#include "gloo/broadcast.h"
#include "gloo/common/error.h"
#include "gloo/common/logging.h"
#include "gloo/rendezvous/context.h"
#include "gloo/rendezvous/store.h"
#include "gloo/transport/tcp/attr.h"
#include "gloo/transport/tcp/device.h"

namespace shrinkray {
namespace {

// A Store error carried through gloo's code (which only knows exceptions)
// back to our boundary, where it becomes the Status again.
class StoreFailure : public std::exception {
 public:
  explicit StoreFailure(absl::Status status) : status_(std::move(status)), what_(status_.ToString()) {}
  const char* what() const noexcept override { return what_.c_str(); }
  const absl::Status& status() const { return status_; }

 private:
  absl::Status status_;
  std::string what_;
};

// gloo::rendezvous::Store on top of ours. gloo's get() has no timeout of its
// own (it calls wait() first), so ours bounds it with the communicator's.
class GlooStore final : public gloo::rendezvous::Store {
 public:
  GlooStore(std::shared_ptr<shrinkray::Store> store, absl::Duration timeout)
      : store_(std::move(store)), timeout_(timeout) {}

  void set(const std::string& key, const std::vector<char>& data) override {
    const absl::Status st = store_->Set(key, std::vector<uint8_t>(data.begin(), data.end()));
    if (!st.ok()) throw StoreFailure(st);
  }
  std::vector<char> get(const std::string& key) override {
    absl::StatusOr<std::vector<uint8_t>> value = store_->Get(key, timeout_);
    if (!value.ok()) throw StoreFailure(value.status());
    return std::vector<char>(value->begin(), value->end());
  }
  void wait(const std::vector<std::string>& keys) override { wait(keys, std::chrono::milliseconds(0)); }
  void wait(const std::vector<std::string>& keys, const std::chrono::milliseconds& timeout) override {
    // gloo passes its context timeout; 0 (kNoTimeout) means "none": use ours.
    const absl::Duration t = timeout.count() > 0 ? absl::FromChrono(timeout) : timeout_;
    const absl::Status st = store_->Wait(keys, t);
    if (!st.ok()) throw StoreFailure(st);
  }

 private:
  std::shared_ptr<shrinkray::Store> store_;
  absl::Duration timeout_;
};

std::chrono::milliseconds ToMillis(absl::Duration d) {
  return std::chrono::milliseconds(std::max<int64_t>(1, absl::ToInt64Milliseconds(d)));
}

// gloo's TCP transport writes with writev(2), which raises SIGPIPE when a peer
// has gone; the default action would kill this process instead of letting the
// write fail with EPIPE (-> gloo::IoException -> Unavailable). Only a default
// disposition is changed: a handler the program installed is left alone.
void IgnoreSigpipeOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction old {};
    if (sigaction(SIGPIPE, nullptr, &old) == 0 && old.sa_handler == SIG_DFL) {
      struct sigaction sa {};
      sa.sa_handler = SIG_IGN;
      sigemptyset(&sa.sa_mask);
      sigaction(SIGPIPE, &sa, nullptr);
    }
  });
}

// Resolves `host` to a numeric address gloo can bind. gloo's own lookup
// (tcp::CreateDeviceAttr in this version) checks getaddrinfo's result against
// -1 only, so an unresolvable name makes it walk an uninitialised list and
// crash: resolve here, and hand gloo a numeric address that cannot fail.
absl::StatusOr<std::string> ResolveInterface(const std::string& host, const std::string& what) {
  struct addrinfo hints {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  struct addrinfo* result = nullptr;
  const int rv = getaddrinfo(host.c_str(), nullptr, &hints, &result);
  if (rv != 0 || result == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": cannot resolve interface address '", host,
                                                   "': ", std::string(gai_strerror(rv))));
  }
  char numeric[NI_MAXHOST];
  const int nv = getnameinfo(result->ai_addr, result->ai_addrlen, numeric, sizeof(numeric), nullptr, 0,
                             NI_NUMERICHOST);
  freeaddrinfo(result);
  if (nv != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": interface address '", host, "': ", std::string(gai_strerror(nv))));
  }
  return std::string(numeric);
}

// Runs `fn` (gloo calls) and maps whatever it throws to a Status whose
// message starts with `what` (backend, operation, rank and size).
template <typename Fn>
absl::Status Guarded(const std::string& what, Fn&& fn) {
  try {
    fn();
    return absl::OkStatus();
  } catch (const StoreFailure& e) {
    return absl::Status(e.status().code(), absl::StrCat(what, ": rendezvous: ", e.status().message()));
  } catch (const gloo::IoException& e) {
    // gloo has no timeout type: its timeouts are IoExceptions saying so
    // ("Timed out waiting ...ms for recv operation", "Connect timeout").
    const std::string msg = e.what();
    const std::string lower = absl::AsciiStrToLower(msg);
    if (absl::StrContains(lower, "timed out") || absl::StrContains(lower, "timeout")) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": timed out: ", msg));
    }
    return absl::UnavailableError(absl::StrCat(what, ": peer or network failure: ", msg));
  } catch (const gloo::EnforceNotMet& e) {
    return absl::InternalError(absl::StrCat(what, ": gloo assertion failed: ", std::string(e.what())));
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError(absl::StrCat(what, ": out of memory"));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat(what, ": ", std::string(e.what())));
  } catch (...) {
    return absl::InternalError(absl::StrCat(what, ": unknown exception"));
  }
}

// ---------------------------------------------------------------- reductions

using ReduceFn = gloo::AllreduceOptions::Func;

template <typename T>
T AddWrapping(T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    // Unsigned arithmetic: overflow wraps (two's complement) instead of UB.
    using U = std::make_unsigned_t<T>;
    return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
  } else {
    return a + b;
  }
}

template <typename T>
T Max(T a, T b) {
  if constexpr (std::is_floating_point_v<T>) {
    // NaN wins, so a NaN on any rank is visible on every rank.
    if (std::isnan(a)) return a;
    if (std::isnan(b)) return b;
  }
  return a < b ? b : a;
}

template <typename T>
void SumKernel(void* c, const void* a, const void* b, size_t n) {
  T* out = static_cast<T*>(c);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = AddWrapping(x[i], y[i]);
}

template <typename T>
void MaxKernel(void* c, const void* a, const void* b, size_t n) {
  T* out = static_cast<T*>(c);
  const T* x = static_cast<const T*>(a);
  const T* y = static_cast<const T*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = Max(x[i], y[i]);
}

// BF16 has no native type here: each pair is widened to fp32 (exact), added
// in fp32, and rounded back to bf16 to nearest even. `c` may alias `a`.
void SumBF16(void* c, const void* a, const void* b, size_t n) {
  uint16_t* out = static_cast<uint16_t*>(c);
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; ++i) out[i] = F32ToBF16(BF16ToF32(x[i]) + BF16ToF32(y[i]));
}

// Max needs no rounding: the larger input is returned bit for bit.
void MaxBF16(void* c, const void* a, const void* b, size_t n) {
  uint16_t* out = static_cast<uint16_t*>(c);
  const uint16_t* x = static_cast<const uint16_t*>(a);
  const uint16_t* y = static_cast<const uint16_t*>(b);
  for (size_t i = 0; i < n; ++i) {
    const float fx = BF16ToF32(x[i]);
    const float fy = BF16ToF32(y[i]);
    out[i] = (std::isnan(fx) || (!std::isnan(fy) && !(fx < fy))) ? x[i] : y[i];
  }
}

ReduceFn PickReduce(CommDType dtype, ReduceOp op) {
  const bool sum = op == ReduceOp::kSum;
  switch (dtype) {
    case CommDType::kF32: return sum ? ReduceFn(&SumKernel<float>) : ReduceFn(&MaxKernel<float>);
    case CommDType::kF64: return sum ? ReduceFn(&SumKernel<double>) : ReduceFn(&MaxKernel<double>);
    case CommDType::kBF16: return sum ? ReduceFn(&SumBF16) : ReduceFn(&MaxBF16);
    case CommDType::kI32: return sum ? ReduceFn(&SumKernel<int32_t>) : ReduceFn(&MaxKernel<int32_t>);
    case CommDType::kU8: return sum ? ReduceFn(&SumKernel<uint8_t>) : ReduceFn(&MaxKernel<uint8_t>);
  }
  return nullptr;
}

// Calls fn(T{}) with the C++ element type gloo's typed setters need (the
// bits of a BF16 are a uint16_t; gloo only uses sizeof(T)).
template <typename Fn>
void WithElementType(CommDType dtype, Fn&& fn) {
  switch (dtype) {
    case CommDType::kF32: fn(float{}); return;
    case CommDType::kF64: fn(double{}); return;
    case CommDType::kBF16: fn(uint16_t{}); return;
    case CommDType::kI32: fn(int32_t{}); return;
    case CommDType::kU8: fn(uint8_t{}); return;
  }
}

bool ValidDType(CommDType dtype) { return CommDTypeSize(dtype) != 0; }

const char* OpName(ReduceOp op) { return op == ReduceOp::kSum ? "sum" : "max"; }

// ---------------------------------------------------------------- call check

// What one rank is about to do; exchanged (fixed size, so the exchange itself
// always matches) before every collective. Ranks that disagree would
// otherwise reach gloo with different sizes, and this gloo version then fails
// an assertion on its event-loop thread, where nothing can catch it: the
// process terminates. With the check every rank gets InvalidArgument.
enum class Kind : uint32_t { kAllReduce = 1, kBroadcast, kAllGather, kAllGatherV, kBarrier };

struct Call {
  Kind kind;
  CommDType dtype;
  int32_t arg;  // ReduceOp for AllReduce, root for Broadcast
  uint32_t reserved = 0;  // explicit, so no byte sent is uninitialised padding
  uint64_t count;  // elements per rank (AllGatherV: in all)
  uint64_t counts_digest;  // AllGatherV: digest of the per-rank counts

  Call() : Call(Kind::kBarrier, CommDType::kU8, 0, 0, 0) {}
  Call(Kind k, CommDType d, int32_t a, uint64_t c, uint64_t digest)
      : kind(k), dtype(d), arg(a), count(c), counts_digest(digest) {}
  Call(const Call&) = default;
  Call& operator=(const Call&) = default;

  bool operator==(const Call& o) const {
    return kind == o.kind && dtype == o.dtype && arg == o.arg && count == o.count &&
           counts_digest == o.counts_digest;
  }
  std::string ToString() const {
    switch (kind) {
      case Kind::kAllReduce:
        return absl::StrCat("AllReduce(", arg == static_cast<int32_t>(ReduceOp::kSum) ? "sum" : "max", ") of ",
                            count, " ", CommDTypeName(dtype));
      case Kind::kBroadcast: return absl::StrCat("Broadcast from ", arg, " of ", count, " ", CommDTypeName(dtype));
      case Kind::kAllGather: return absl::StrCat("AllGather of ", count, " ", CommDTypeName(dtype));
      case Kind::kAllGatherV:
        return absl::StrCat("AllGatherV of ", count, " ", CommDTypeName(dtype), " (counts digest ",
                            absl::Hex(counts_digest), ")");
      case Kind::kBarrier: return "Barrier";
    }
    return absl::StrCat("unknown call ", static_cast<uint32_t>(kind));
  }
};
static_assert(sizeof(Call) == 32, "Call is exchanged as raw bytes: no padding surprises");

uint64_t CountsDigest(const std::vector<size_t>& counts) {
  uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a over the 64-bit counts
  for (size_t c : counts) {
    for (int b = 0; b < 8; ++b) h = (h ^ ((static_cast<uint64_t>(c) >> (8 * b)) & 0xff)) * 0x100000001b3ULL;
  }
  return h;
}

// ---------------------------------------------------------------- communicator

class GlooCommunicator final : public Communicator {
 public:
  GlooCommunicator(std::shared_ptr<gloo::transport::Device> device,
                   std::shared_ptr<gloo::rendezvous::Context> context, absl::Duration timeout)
      : Communicator(timeout), device_(std::move(device)), context_(std::move(context)) {}

  ~GlooCommunicator() override {
    // Pairs close their sockets here; the device joins its event-loop thread.
    // Neither should throw, but a destructor must not let anything out.
    try {
      context_.reset();
      device_.reset();
    } catch (...) {
    }
  }

  int rank() const override { return context_->rank; }
  int size() const override { return context_->size; }
  std::string backend() const override { return "gloo"; }

  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op) override {
    const std::string what =
        Describe(absl::StrCat("AllReduce(", OpName(op), ") of ", count, " ", CommDTypeName(dtype)));
    if (!ValidDType(dtype)) return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype"));
    if (data == nullptr && count > 0) return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    return Run(what, Call{Kind::kAllReduce, dtype, static_cast<int>(op), count, 0}, count == 0, [&] {
      gloo::AllreduceOptions opts(context_);
      WithElementType(dtype, [&](auto t) {
        using T = decltype(t);
        opts.setOutput(static_cast<T*>(data), count);
      });
      opts.setReduceFunction(PickReduce(dtype, op));
      opts.setTag(NextTag());
      opts.setTimeout(ToMillis(timeout_));
      gloo::allreduce(opts);
    });
  }

  absl::Status Broadcast(void* data, size_t count, CommDType dtype, int root) override {
    const std::string what =
        Describe(absl::StrCat("Broadcast from ", root, " of ", count, " ", CommDTypeName(dtype)));
    if (!ValidDType(dtype)) return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype"));
    if (data == nullptr && count > 0) return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    if (root < 0 || root >= size()) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": root out of range [0, ", size(), ")"));
    }
    return Run(what, Call{Kind::kBroadcast, dtype, root, count, 0}, count == 0, [&] {
      gloo::BroadcastOptions opts(context_);
      // In place: the root's output buffer is also its input.
      WithElementType(dtype, [&](auto t) {
        using T = decltype(t);
        opts.setOutput(static_cast<T*>(data), count);
      });
      opts.setRoot(root);
      opts.setTag(NextTag());
      opts.setTimeout(ToMillis(timeout_));
      gloo::broadcast(opts);
    });
  }

  absl::Status AllGather(const void* input, void* output, size_t count, CommDType dtype) override {
    const std::string what = Describe(absl::StrCat("AllGather of ", count, " ", CommDTypeName(dtype)));
    if (!ValidDType(dtype)) return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype"));
    if ((input == nullptr || output == nullptr) && count > 0) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    }
    return Run(what, Call{Kind::kAllGather, dtype, 0, count, 0}, count == 0, [&] {
      gloo::AllgatherOptions opts(context_);
      WithElementType(dtype, [&](auto t) {
        using T = decltype(t);
        // gloo's setters take non-const pointers; the input is only read.
        opts.setInput(const_cast<T*>(static_cast<const T*>(input)), count);
        opts.setOutput(static_cast<T*>(output), count * static_cast<size_t>(size()));
      });
      opts.setTag(NextTag());
      opts.setTimeout(ToMillis(timeout_));
      gloo::allgather(opts);
    });
  }

  absl::Status AllGatherV(const void* input, void* output, const std::vector<size_t>& counts,
                          CommDType dtype) override {
    size_t total = 0;
    for (size_t c : counts) total += c;
    const std::string what = Describe(absl::StrCat("AllGatherV of ", total, " ", CommDTypeName(dtype)));
    if (!ValidDType(dtype)) return absl::InvalidArgumentError(absl::StrCat(what, ": unknown dtype"));
    if (counts.size() != static_cast<size_t>(size())) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", counts.size(), " counts for ", size(), " ranks"));
    }
    const size_t mine = counts[static_cast<size_t>(rank())];
    if ((input == nullptr && mine > 0) || (output == nullptr && total > 0)) {
      return absl::InvalidArgumentError(absl::StrCat(what, ": null buffer"));
    }
    return Run(what, Call{Kind::kAllGatherV, dtype, 0, total, CountsDigest(counts)}, total == 0, [&] {
      gloo::AllgathervOptions opts(context_);
      WithElementType(dtype, [&](auto t) {
        using T = decltype(t);
        // A rank with nothing to send still needs a (zero-byte) buffer.
        T dummy{};
        T* in = mine > 0 ? const_cast<T*>(static_cast<const T*>(input)) : &dummy;
        opts.setInput(in, mine);
        opts.setOutput(static_cast<T*>(output), counts);
        opts.setTag(NextTag());
        opts.setTimeout(ToMillis(timeout_));
        gloo::allgatherv(opts);
      });
    });
  }

  absl::Status Barrier() override {
    // The call check before it is an all-gather, which no rank leaves before
    // every rank has joined: that is the barrier.
    return Run(Describe("Barrier"), Call{Kind::kBarrier, CommDType::kU8, 0, 0, 0}, true, [] {});
  }

 private:
  std::string Describe(const std::string& op) const {
    return absl::StrCat("gloo ", op, " on rank ", rank(), " of ", size());
  }

  // Serialises calls (a gloo context is not safe for concurrent collectives
  // on one tag), refuses them after a failure, checks that every rank makes
  // the same call, and marks the communicator failed when gloo throws.
  // `noop`: nothing to move (zero elements on every rank), so after the
  // check gloo is not called at all.
  template <typename Fn>
  absl::Status Run(const std::string& what, const Call& call, bool noop, Fn&& fn) {
    std::lock_guard<std::mutex> lock(mu_);
    if (!failure_.ok()) {
      return absl::FailedPreconditionError(
          absl::StrCat(what, ": communicator unusable after an earlier error: ", failure_.ToString()));
    }
    std::vector<Call> calls(static_cast<size_t>(size()));
    absl::Status st = Guarded(what, [&] {
      gloo::AllgatherOptions opts(context_);
      opts.setInput(const_cast<Call*>(&call), 1);
      opts.setOutput(calls.data(), calls.size());
      opts.setTag(NextTag());
      opts.setTimeout(ToMillis(timeout_));
      gloo::allgather(opts);
    });
    if (st.ok()) {
      for (size_t r = 0; r < calls.size(); ++r) {
        if (!(calls[r] == call)) {
          // Every rank sees every call, so all of them return this error
          // and stay in step: the communicator remains usable.
          return absl::InvalidArgumentError(absl::StrCat(what, ": ranks disagree: rank ", r, " called ",
                                                         calls[r].ToString(), ", this rank ", call.ToString()));
        }
      }
      if (noop) return absl::OkStatus();
      st = Guarded(what, fn);
    }
    if (!st.ok()) {
      failure_ = st;
      // Close our sockets now, so peers still waiting on this rank fail
      // at once (connection closed) instead of at their own timeout.
      (void)Guarded(what, [&] { context_->closeConnections(); });
    }
    return st;
  }

  // Same sequence on every rank (same calls in the same order), so tags
  // match; a stray message from another operation cannot match this one.
  uint32_t NextTag() { return next_tag_++; }

  std::mutex mu_;
  std::shared_ptr<gloo::transport::Device> device_;
  std::shared_ptr<gloo::rendezvous::Context> context_;
  uint32_t next_tag_ = 1;
  absl::Status failure_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeGlooCommunicator(std::shared_ptr<Store> store,
                                                                   const CommOptions& options) {
  const std::string what = absl::StrCat("gloo rendezvous on rank ", options.rank, " of ", options.size);
  if (store == nullptr) return absl::InvalidArgumentError(absl::StrCat(what, ": no store"));
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": rank out of range"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": timeout must be positive"));
  }
  IgnoreSigpipeOnce();
  absl::StatusOr<std::string> address = ResolveInterface(options.interface_address, what);
  if (!address.ok()) return address.status();

  std::shared_ptr<gloo::transport::Device> device;
  std::shared_ptr<gloo::rendezvous::Context> context;
  absl::Status st = Guarded(what, [&] {
    gloo::transport::tcp::attr attr;
    attr.hostname = *address;
    device = gloo::transport::tcp::CreateDevice(attr);
    context = std::make_shared<gloo::rendezvous::Context>(options.rank, options.size);
    // Pairs copy the context timeout when created: set it before connecting.
    // gloo waits up to 5x this for the TCP connections themselves.
    context->setTimeout(ToMillis(options.timeout));
    // gloo's own keys are the bare rank numbers: keep them in a sub-space.
    GlooStore gloo_store(MakePrefixStore(std::move(store), "gloo"), options.timeout);
    context->connectFullMesh(gloo_store, device);
  });
  if (!st.ok()) {
    // Destroy the half-built context inside the guard as well.
    (void)Guarded(what, [&] {
      context.reset();
      device.reset();
    });
    return st;
  }
  return std::unique_ptr<Communicator>(
      new GlooCommunicator(std::move(device), std::move(context), options.timeout));
}

}  // namespace shrinkray
