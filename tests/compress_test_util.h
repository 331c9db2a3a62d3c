// Small helpers shared by the compression tests (unit and sharded/resume).
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/calib/device_hessian.h"
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
  const std::vector<float>& values() const { return values_; }

 private:
  int device_;
  int dim_;
  std::vector<float> values_;
  int* fetches_;
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
