// Small helpers shared by the compression tests (unit and sharded/resume).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/calib/device_hessian.h"
#include "core/comm/communicator.h"
#include "core/model/llama.h"
#include "core/pipeline/eval.h"
#include "core/pipeline/recipe.h"
#include "nlohmann/json.hpp"

namespace shrinkray::testing {

// A DeviceHessian whose "device memory" is a host vector: what the GPU
// executor hands over, for tests without a GPU. Counts the copies to the
// host (the traffic device-only Hessians exist to avoid).
class FakeDeviceHessian final : public DeviceHessian {
 public:
  FakeDeviceHessian(int device, int dim, std::vector<float> values, int* fetches)
      : device_(device), dim_(dim), values_(std::move(values)), fetches_(fetches) {}
  int device() const override { return device_; }
  int dim() const override { return dim_; }
  const float* data() const override { return values_.data(); }
  absl::Status CopyToHost(absl::Span<float> out) const override {
    if (out.size() != values_.size()) return absl::InvalidArgumentError("FakeDeviceHessian: size");
    std::copy(values_.begin(), values_.end(), out.begin());
    if (fetches_ != nullptr) ++*fetches_;
    return absl::OkStatus();
  }
  // What a device merge does, when set; unset: it cannot start (nullopt).
  std::function<absl::StatusOr<std::optional<long>>(Communicator& comm, long n_samples)> merge;
  absl::StatusOr<std::optional<long>> MergeAcrossRanks(Communicator& comm, long n_samples) override {
    if (!merge) return std::optional<long>();
    return merge(comm, n_samples);
  }
  const std::vector<float>& values() const { return values_; }

 private:
  int device_;
  int dim_;
  std::vector<float> values_;
  int* fetches_;
};

// Forwards to `inner`, counting each kind of call (what the job issued); its
// OnDevice communicator (inner's, if any) is counted the same way.
class CountingCommunicator final : public Communicator {
 public:
  explicit CountingCommunicator(Communicator* inner) : Communicator(inner->timeout()), inner_(inner) {}
  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string backend() const override { return inner_->backend(); }
  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op) override {
    ++all_reduces;
    reduced_bytes += count * CommDTypeSize(dtype);
    return inner_->AllReduce(data, count, dtype, op);
  }
  absl::Status Broadcast(void* data, size_t count, CommDType dtype, int root) override {
    ++broadcasts;
    return inner_->Broadcast(data, count, dtype, root);
  }
  absl::Status AllGather(const void* input, void* output, size_t count, CommDType dtype) override {
    return inner_->AllGather(input, output, count, dtype);
  }
  absl::Status AllGatherV(const void* input, void* output, const std::vector<size_t>& counts,
                          CommDType dtype) override {
    return inner_->AllGatherV(input, output, counts, dtype);
  }
  absl::Status Barrier() override { return inner_->Barrier(); }
  Communicator* OnDevice(int device) override {
    Communicator* inner = inner_->OnDevice(device);
    if (inner == nullptr) return nullptr;
    if (on_device_ == nullptr || on_device_inner_ != inner) {
      on_device_ = std::make_unique<CountingCommunicator>(inner);
      on_device_inner_ = inner;
    }
    return on_device_.get();
  }
  // The calls made through OnDevice's communicator.
  const CountingCommunicator* on_device() const { return on_device_.get(); }

  long all_reduces = 0, broadcasts = 0;
  size_t reduced_bytes = 0;

 private:
  Communicator* inner_;
  Communicator* on_device_inner_ = nullptr;
  std::unique_ptr<CountingCommunicator> on_device_;
};

// Runs body(rank) for ranks 0 .. size-1, each on a thread of its own (a gang
// in one process), and joins them.
inline void OnRankThreads(int size, const std::function<void(int rank)>& body) {
  std::vector<std::thread> threads;
  for (int rank = 0; rank < size; ++rank) threads.emplace_back(body, rank);
  for (std::thread& t : threads) t.join();
}

// Rank 0 of a 2-rank job whose peer adds `peer` to every float64 sum
// all-reduce (a Hessian merge: core/calib/hessian_merge_layout.h), on host
// buffers; a subclass adds into device ones (AddPeer). OnDevice(reach)
// answers `device_side`.
class PeerCommunicator : public Communicator {
 public:
  explicit PeerCommunicator(std::vector<double> peer, int reach = -1, Communicator* device_side = nullptr)
      : Communicator(absl::Seconds(5)), peer_(std::move(peer)), reach_(reach), device_side_(device_side) {}
  int rank() const override { return 0; }
  int size() const override { return 2; }
  std::string backend() const override { return "fake"; }
  absl::Status AllReduce(void* data, size_t count, CommDType dtype, ReduceOp op) override {
    ++all_reduces;
    if (dtype != CommDType::kF64 || op != ReduceOp::kSum || count != peer_.size()) {
      return absl::InvalidArgumentError(absl::StrCat("unexpected all-reduce of ", count, " values"));
    }
    return AddPeer(static_cast<double*>(data));
  }
  absl::Status Broadcast(void*, size_t, CommDType, int) override { return absl::UnimplementedError("broadcast"); }
  absl::Status AllGather(const void*, void*, size_t, CommDType) override { return absl::UnimplementedError("gather"); }
  absl::Status AllGatherV(const void*, void*, const std::vector<size_t>&, CommDType) override {
    return absl::UnimplementedError("gather");
  }
  absl::Status Barrier() override { return absl::OkStatus(); }
  Communicator* OnDevice(int device) override { return device == reach_ ? device_side_ : nullptr; }
  int all_reduces = 0;

 protected:
  virtual absl::Status AddPeer(double* data) {
    for (size_t i = 0; i < peer_.size(); ++i) data[i] += peer_[i];
    return absl::OkStatus();
  }
  const std::vector<double>& peer() const { return peer_; }

 private:
  std::vector<double> peer_;
  int reach_;
  Communicator* device_side_;
};

// The recipe, or an empty one after a test failure naming the parse error.
// Scales every weight of `group` in decoder layer `layer` by 0.97: what
// compressing the group would do to the passes after it (the executor tests:
// anything kept from before is then stale).
inline void PerturbGroup(LlamaModel& model, int layer, LinearGroup group) {
  const ModelConfig& c = model.config();
  LayerWeights& w = model.mutable_layer(layer);
  auto scale = [](float* p, size_t n) {
    for (size_t i = 0; i < n; ++i) p[i] *= 0.97f;
  };
  const size_t C = c.hidden_size, I = c.intermediate_size, QD = c.q_dim(), KVD = c.kv_dim();
  switch (group) {
    case LinearGroup::kQkv:
      scale(w.q_proj, QD * C);
      scale(w.k_proj, KVD * C);
      scale(w.v_proj, KVD * C);
      break;
    case LinearGroup::kO: scale(w.o_proj, C * QD); break;
    case LinearGroup::kGateUp:
      scale(w.gate_proj, I * C);
      scale(w.up_proj, I * C);
      break;
    case LinearGroup::kDown: scale(w.down_proj, C * I); break;
  }
}

inline Recipe MustParseRecipe(const std::string& yaml) {
  auto r = ParseRecipe(yaml, "test");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : Recipe{};
}

inline std::string ReadFileBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Perplexity of the model in `dir` on `ids` in windows of `seqlen` (0 after a
// test failure).
inline double PerplexityOf(const std::filesystem::path& dir, const std::vector<int32_t>& ids, int seqlen) {
  auto model = LlamaModel::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return 0.0;
  auto r = EvaluatePerplexity(**model, ids, {seqlen, 0});
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->ppl : 0.0;
}

// Every path under `dir`, relative to it, sorted.
inline std::vector<std::string> Listing(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (const auto& item : std::filesystem::recursive_directory_iterator(dir)) {
    names.push_back(std::filesystem::relative(item.path(), dir).string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// report.json without what may differ between two runs of one job: timings,
// the output path, per-matrix seconds, and the top-level keys in `ignore`.
inline nlohmann::json ComparableReport(const std::filesystem::path& dir,
                                       const std::vector<std::string>& ignore = {}) {
  nlohmann::json j = nlohmann::json::parse(ReadFileBytes(dir / "report.json"));
  j.erase("timings");
  j.erase("output");
  for (const std::string& key : ignore) j.erase(key);
  j["totals"].erase("solve_seconds");
  for (auto& row : j["matrices"]) row.erase("seconds");
  return j;
}

// Every file of `a` and `b` (recursively) is the same bytes, but report.json,
// compared as ComparableReport(…, ignore).
inline void ExpectSameFiles(const std::filesystem::path& a, const std::filesystem::path& b,
                            const std::vector<std::string>& ignore = {}) {
  ASSERT_EQ(Listing(a), Listing(b));
  for (const std::string& name : Listing(a)) {
    if (std::filesystem::is_directory(a / name)) continue;
    if (name == "report.json") {
      EXPECT_EQ(ComparableReport(a, ignore), ComparableReport(b, ignore));
    } else {
      EXPECT_TRUE(ReadFileBytes(a / name) == ReadFileBytes(b / name)) << name << " differs";
    }
  }
}

}  // namespace shrinkray::testing
