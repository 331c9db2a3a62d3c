// The teacher-forward stage (core/distill/teacher_cache.h): a cache written by
// 2 Gloo ranks (threads) holds, for every window and position, the teacher's
// top-k as TopKFromLogits computes it (ids exact, log-probs within fp16
// rounding); training from it follows online top-k training within what that
// rounding allows; a cache used with another teacher, other data, k or T is a
// FailedPrecondition naming the field, and bad k / T InvalidArgument.
#include <algorithm>
#include <cmath>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/distill/distill_trainer.h"
#include "core/distill/teacher_cache.h"
#include "core/distill/train_data.h"
#include "core/model/demo_model.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/tokenizer/tokenizer.h"
#include "core/train/distill_loss.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray::distill {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kSeqlen = 16;
constexpr int kTopK = 8;
constexpr double kTemperature = 2.0;

struct Fixture {
  fs::path dir;
  std::unique_ptr<LlamaModel> teacher, other_teacher;
  std::unique_ptr<TrainData> data, other_data;
};

std::unique_ptr<LlamaModel> Teacher(const fs::path& dir, uint64_t seed) {
  DemoModelOptions o;
  o.hidden_size = 32;
  o.intermediate_size = 64;
  o.num_layers = 2;
  o.num_heads = 4;
  o.num_kv_heads = 2;
  o.max_positions = 64;
  o.seed = seed;
  EXPECT_TRUE(WriteDemoModel(dir, o).ok());
  auto model = LlamaModel::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  return std::move(*model);
}

std::unique_ptr<TrainData> Data(const fs::path& tokenizer_json, uint64_t text_seed) {
  auto tokenizer = Tokenizer::FromFile(tokenizer_json);
  EXPECT_TRUE(tokenizer.ok());
  auto ids = (*tokenizer)->Encode(DemoText(text_seed, 3000), true);
  EXPECT_TRUE(ids.ok());
  auto data = TrainData::FromIds(*ids, kSeqlen, 0, "demo text");
  EXPECT_TRUE(data.ok()) << data.status();
  return std::make_unique<TrainData>(std::move(*data));
}

Fixture& Tiny() {
  static Fixture* f = [] {
    auto* fx = new Fixture;
    fx->dir = testing::MakeTempDir("distill-cache");
    fx->teacher = Teacher(fx->dir / "teacher", 260);
    fx->other_teacher = Teacher(fx->dir / "other-teacher", 261);
    fx->data = Data(fx->dir / "teacher" / "tokenizer.json", 7);
    fx->other_data = Data(fx->dir / "teacher" / "tokenizer.json", 8);
    return fx;
  }();
  return *f;
}

TeacherCacheOptions CacheOptions() {
  TeacherCacheOptions o;
  o.k = kTopK;
  o.temperature = kTemperature;
  o.windows_per_forward = 3;
  return o;
}

// Writes the cache of `f`'s teacher and data into `dir` with 2 Gloo ranks.
absl::Status WriteWithTwoRanks(const fs::path& dir) {
  Fixture& f = Tiny();
  std::shared_ptr<Store> store = MakeInProcessStore();
  std::vector<absl::Status> status(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      CommOptions c;
      c.rank = rank;
      c.size = 2;
      auto comm = MakeGlooCommunicator(store, c);
      status[rank] = comm.ok() ? WriteTeacherCache(dir, *f.teacher, *f.data, CacheOptions(), comm->get())
                               : comm.status();
    });
  }
  for (std::thread& t : threads) t.join();
  return status[0].ok() ? status[1] : status[0];
}

const fs::path& SharedCache() {
  static const fs::path* dir = [] {
    auto* d = new fs::path(testing::MakeTempDir("distill-cache-2r") / "cache");
    const absl::Status s = WriteWithTwoRanks(*d);
    EXPECT_TRUE(s.ok()) << s;
    return d;
  }();
  return *dir;
}

TeacherCacheKey KeyOf(const LlamaModel& teacher, const TrainData& data, int k, double t) {
  TeacherCacheKey key;
  auto fp = TeacherFingerprint(teacher);
  EXPECT_TRUE(fp.ok());
  key.teacher = *fp;
  key.data = data.Fingerprint();
  key.seqlen = data.seqlen();
  key.num_windows = data.num_windows();
  key.vocab_size = teacher.config().vocab_size;
  key.k = k;
  key.temperature = t;
  return key;
}

// (d) Every window's cached rows equal TopKFromLogits of the teacher's logits:
// the same ids, log-probs within fp16's rounding (half an ulp: 2^-11 relative).
TEST(DistillTeacherCache, TwoRankCacheEqualsTopKOfTeacherLogits) {
  Fixture& f = Tiny();
  const fs::path& dir = SharedCache();
  EXPECT_TRUE(fs::exists(dir / "manifest.json"));
  EXPECT_TRUE(fs::exists(dir / "shard-00000-of-00002.safetensors"));
  EXPECT_TRUE(fs::exists(dir / "shard-00001-of-00002.safetensors"));
  auto cache = TeacherCache::Open(dir);
  ASSERT_TRUE(cache.ok()) << cache.status();
  ASSERT_TRUE((*cache)->Validate(KeyOf(*f.teacher, *f.data, kTopK, kTemperature)).ok());
  const int V = f.teacher->config().vocab_size;
  std::vector<float> logits(static_cast<size_t>(kSeqlen) * V);
  double max_rel = 0;
  for (int64_t w = 0; w < f.data->num_windows(); ++w) {
    ASSERT_TRUE(f.teacher->Forward(f.data->Window(w).first(kSeqlen), 1, kSeqlen, logits).ok());
    auto want = train::TopKFromLogits<float>(logits, kSeqlen, V, kTopK, kTemperature);
    ASSERT_TRUE(want.ok());
    std::vector<int32_t> ids;
    std::vector<float> log_probs;
    ASSERT_TRUE((*cache)->AppendRows(w, &ids, &log_probs).ok());
    ASSERT_EQ(ids, want->ids) << "window " << w;
    ASSERT_EQ(log_probs.size(), want->log_probs.size());
    for (size_t i = 0; i < log_probs.size(); ++i) {
      const double exact = want->log_probs[i];
      ASSERT_LE(std::fabs(log_probs[i] - exact), std::ldexp(std::fabs(exact), -11) + 1e-7)
          << "window " << w << " entry " << i;
      if (exact != 0) max_rel = std::max(max_rel, std::fabs(log_probs[i] - exact) / std::fabs(exact));
    }
  }
  std::cout << "cache log-probs: max relative error " << max_rel << " (fp16: <= 4.9e-4)\n";
}

// (d) Training from the cache follows online top-k training: the only
// difference is the fp16 rounding of the teacher's log-probs (<= 4.9e-4
// relative), so the per-step losses agree to 1e-3 relative and the
// parameters' movement after 5 AdamW steps to 2% (see below).
TEST(DistillTeacherCache, TrainingFromCacheMatchesOnlineTopK) {
  Fixture& f = Tiny();
  const int V = f.teacher->config().vocab_size;
  auto run = [&](TeacherMode mode, std::vector<double>* losses) -> std::vector<float> {
    DistillTrainerOptions o;
    o.steps = 5;
    o.global_batch = 4;
    o.micro_batch = 2;
    o.lr = {.max_lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 1, .total_steps = 5};
    o.loss.alpha = 0.7;
    o.loss.temperature = kTemperature;
    o.teacher_mode = mode;
    o.top_k = kTopK;
    o.teacher_cache = SharedCache();
    auto student = train::ParameterStore::Create(MakeLlamaConfig(16, 32, 1, 2, 1, V, 64, true));
    EXPECT_TRUE(student.ok());
    student->InitRandom(11, 0.05);
    auto trainer = DistillTrainer::Create(o, *f.teacher, *f.data, std::move(*student));
    EXPECT_TRUE(trainer.ok()) << trainer.status();
    if (!trainer.ok()) return {};
    EXPECT_TRUE((*trainer)->Run([&](const StepMetrics& m) { losses->push_back(m.loss); }).ok());
    auto p = (*trainer)->student().params();
    return std::vector<float>(p.begin(), p.end());
  };
  std::vector<double> online_losses, cache_losses;
  const std::vector<float> online = run(TeacherMode::kOnlineTopK, &online_losses);
  const std::vector<float> cached = run(TeacherMode::kCache, &cache_losses);
  ASSERT_EQ(online.size(), cached.size());
  ASSERT_EQ(online_losses.size(), 5u);
  ASSERT_EQ(cache_losses.size(), 5u);
  for (int s = 0; s < 5; ++s) EXPECT_NEAR(cache_losses[s], online_losses[s], 1e-3 * online_losses[s]);
  // Where the gradient of an element is tiny, AdamW's normalised step can
  // differ in sign between the two runs (up to 2 lr per step), so compare the
  // parameters' movement as a whole: the mean |difference| against the mean
  // |update| from the common starting point.
  std::vector<float> init(online.size());
  {
    auto student = train::ParameterStore::Create(MakeLlamaConfig(16, 32, 1, 2, 1, V, 64, true));
    ASSERT_TRUE(student.ok());
    student->InitRandom(11, 0.05);
    std::copy(student->params().begin(), student->params().end(), init.begin());
  }
  double max_diff = 0, sum_diff = 0, sum_update = 0;
  for (size_t i = 0; i < online.size(); ++i) {
    const double d = std::fabs(static_cast<double>(online[i]) - cached[i]);
    max_diff = std::max(max_diff, d);
    sum_diff += d;
    sum_update += std::fabs(static_cast<double>(online[i]) - init[i]);
  }
  std::cout << "cache vs online top-k after 5 steps: max |param diff| " << max_diff
            << ", mean |diff| / mean |update| " << sum_diff / sum_update << "\n";
  EXPECT_LE(max_diff, 2 * 3e-3 * 5);  // AdamW's bound: 2 lr per step
  EXPECT_LE(sum_diff / sum_update, 0.02);
}

// (e) A cache for another teacher / data / k / T: FailedPrecondition naming it.
TEST(DistillTeacherCache, MismatchedCacheIsRefused) {
  Fixture& f = Tiny();
  auto cache = TeacherCache::Open(SharedCache());
  ASSERT_TRUE(cache.ok()) << cache.status();
  auto expect = [&](const TeacherCacheKey& key, const std::string& field) {
    const absl::Status s = (*cache)->Validate(key);
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << field << ": " << s;
    EXPECT_THAT(std::string(s.message()), HasSubstr(field));
  };
  expect(KeyOf(*f.other_teacher, *f.data, kTopK, kTemperature), "teacher");
  expect(KeyOf(*f.teacher, *f.other_data, kTopK, kTemperature), "data");
  expect(KeyOf(*f.teacher, *f.data, kTopK + 1, kTemperature), "top_k");
  expect(KeyOf(*f.teacher, *f.data, kTopK, 1.0), "temperature");

  // The trainer checks the cache against what it trains with.
  const int V = f.teacher->config().vocab_size;
  DistillTrainerOptions o;
  o.steps = 1;
  o.global_batch = 2;
  o.lr.total_steps = 1;
  o.loss.temperature = kTemperature;
  o.teacher_mode = TeacherMode::kCache;
  o.top_k = kTopK;
  o.teacher_cache = SharedCache();
  auto student = train::ParameterStore::Create(MakeLlamaConfig(16, 32, 1, 2, 1, V, 64, true));
  ASSERT_TRUE(student.ok());
  auto trainer = DistillTrainer::Create(o, *f.other_teacher, *f.data, std::move(*student));
  ASSERT_FALSE(trainer.ok());
  EXPECT_EQ(trainer.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(trainer.status().message()), HasSubstr("teacher"));
  // A folder without a manifest is no cache.
  EXPECT_EQ(TeacherCache::Open(f.dir).status().code(), absl::StatusCode::kNotFound);
}

// (e) top_k larger than the vocabulary, T <= 0: InvalidArgument naming them.
TEST(DistillTeacherCache, BadKOrTemperatureIsInvalid) {
  Fixture& f = Tiny();
  const fs::path dir = testing::MakeTempDir("distill-cache-bad") / "cache";
  TeacherCacheOptions o = CacheOptions();
  o.k = f.teacher->config().vocab_size + 1;
  absl::Status s = WriteTeacherCache(dir, *f.teacher, *f.data, o, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("top_k"));
  o = CacheOptions();
  o.temperature = 0;
  s = WriteTeacherCache(dir, *f.teacher, *f.data, o, nullptr);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(s.message()), HasSubstr("temperature"));
  EXPECT_FALSE(fs::exists(dir / "manifest.json"));
}

}  // namespace
}  // namespace shrinkray::distill
