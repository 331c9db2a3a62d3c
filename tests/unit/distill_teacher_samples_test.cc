// Sequence-level KD (core/distill/teacher_samples.h) and the sampler under it
// (core/pipeline/generate.h SampleGenerate) on a tiny demo teacher: the
// windows are a pure function of the seed (and not of the batch size), valid
// ids of the requested count, a student trained on them moves towards the
// teacher, and bad options are InvalidArgument naming the field.
#include <algorithm>
#include <iostream>
#include <memory>
#include <vector>

#include "core/distill/distill_trainer.h"
#include "core/distill/teacher_samples.h"
#include "core/distill/train_data.h"
#include "core/model/demo_model.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/pipeline/generate.h"
#include "core/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray::distill {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kSeqlen = 16;
constexpr int32_t kBos = 1;

struct Fixture {
  std::unique_ptr<LlamaModel> teacher;
  std::unique_ptr<TrainData> data;
};

Fixture& Tiny() {
  static Fixture* f = [] {
    auto* fx = new Fixture;
    const fs::path dir = testing::MakeTempDir("distill-teacher-samples");
    DemoModelOptions o;
    o.hidden_size = 32;
    o.intermediate_size = 64;
    o.num_layers = 2;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.max_positions = 64;
    EXPECT_TRUE(WriteDemoModel(dir / "teacher", o).ok());
    auto teacher = LlamaModel::Load(dir / "teacher");
    EXPECT_TRUE(teacher.ok()) << teacher.status();
    fx->teacher = std::move(*teacher);
    auto tokenizer = Tokenizer::FromFile(dir / "teacher" / "tokenizer.json");
    EXPECT_TRUE(tokenizer.ok());
    auto ids = (*tokenizer)->Encode(DemoText(7, 2000), true);
    EXPECT_TRUE(ids.ok());
    auto data = TrainData::FromIds(*ids, kSeqlen, 0, "demo text");
    EXPECT_TRUE(data.ok()) << data.status();
    fx->data = std::make_unique<TrainData>(std::move(*data));
    return fx;
  }();
  return *f;
}

TeacherSampleOptions Options(uint64_t seed, int64_t windows = 6) {
  TeacherSampleOptions o;
  o.num_windows = windows;
  o.seqlen = kSeqlen;
  o.seed = seed;
  o.batch = 4;
  return o;
}

std::vector<int32_t> Sample(const TeacherSampleOptions& o, const TrainData* prompts = nullptr) {
  auto s = SampleTeacherWindows(*Tiny().teacher, o, kBos, prompts);
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *s : std::vector<int32_t>{};
}

TEST(DistillTeacherSamples, SameSeedSameWindowsDifferentSeedDifferent) {
  const std::vector<int32_t> a = Sample(Options(3));
  EXPECT_EQ(a, Sample(Options(3)));
  EXPECT_NE(a, Sample(Options(4)));
  // The batch size does not change the windows (one stream per window) ...
  TeacherSampleOptions one = Options(3);
  one.batch = 1;
  EXPECT_EQ(a, Sample(one));
  // ... nor does asking for more (a prefix of the same stream of windows).
  const std::vector<int32_t> more = Sample(Options(3, 9));
  ASSERT_EQ(more.size(), 9u * (kSeqlen + 1));
  EXPECT_TRUE(std::equal(a.begin(), a.end(), more.begin()));
}

TEST(DistillTeacherSamples, ValidIdsOfTheRequestedCountInTrainDataForm) {
  const int vocab = Tiny().teacher->config().vocab_size;
  const std::vector<int32_t> s = Sample(Options(1, 5));
  ASSERT_EQ(s.size(), 5u * (kSeqlen + 1));
  for (const int32_t id : s) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, vocab);
  }
  auto data = TrainData::FromWindows(s, kSeqlen, 0, "teacher samples");
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->num_windows(), 5);
  for (int w = 0; w < 5; ++w) {
    EXPECT_EQ(data->Window(w)[0], kBos);  // prompted by BOS
    EXPECT_TRUE(std::equal(data->Window(w).begin(), data->Window(w).end(), s.begin() + w * (kSeqlen + 1)));
  }
  // Windows differ from each other (own streams), not copies of one.
  EXPECT_FALSE(std::equal(data->Window(0).begin(), data->Window(0).end(), data->Window(1).begin()));
  // Mixed with the user's windows: theirs first, unchanged.
  std::vector<int32_t> mixed = Tiny().data->tokens();
  mixed.insert(mixed.end(), s.begin(), s.end());
  auto both = TrainData::FromWindows(mixed, kSeqlen, 0, "mixed");
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(both->num_windows(), Tiny().data->num_windows() + 5);
  EXPECT_EQ(TrainData::FromWindows({1, 2, 3}, kSeqlen, 0, "x").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DistillTeacherSamples, PromptsFromTheUsersWindows) {
  TeacherSampleOptions o = Options(2, 4);
  o.prompt_tokens = 5;
  const std::vector<int32_t> s = Sample(o, Tiny().data.get());
  ASSERT_EQ(s.size(), 4u * (kSeqlen + 1));
  for (int w = 0; w < 4; ++w) {
    const auto prompt = Tiny().data->Window(w).first(5);
    EXPECT_TRUE(std::equal(prompt.begin(), prompt.end(), s.begin() + w * (kSeqlen + 1))) << w;
  }
  // prompt_tokens without data.
  auto none = SampleTeacherWindows(*Tiny().teacher, o, kBos, nullptr);
  EXPECT_EQ(none.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(none.status().message(), HasSubstr("prompt_tokens"));
}

TEST(DistillTeacherSamples, SamplerTopKOneIsGreedyAndLowTemperatureConcentrates) {
  const std::vector<float> logits = {0.1f, 2.0f, 1.9f, -3.0f};
  SamplingOptions greedy{.temperature = 1.0, .top_k = 1};
  for (uint64_t r : {0ull, 1ull << 63, ~0ull}) EXPECT_EQ(SampleFromLogits(logits, greedy, r), 1);
  SamplingOptions nucleus{.temperature = 1.0, .top_p = 1e-6};
  EXPECT_EQ(SampleFromLogits(logits, nucleus, ~0ull), 1);
  SamplingOptions hot{.temperature = 1.0};
  EXPECT_EQ(SampleFromLogits(logits, hot, 0), 1);           // u = 0: the most likely
  EXPECT_EQ(SampleFromLogits(logits, hot, ~0ull), 3);       // u -> 1: the least likely
  EXPECT_THAT(ValidateSamplingOptions({.temperature = 0}).message(), HasSubstr("temperature"));
  EXPECT_THAT(ValidateSamplingOptions({.top_p = 0}).message(), HasSubstr("top_p"));
  EXPECT_THAT(ValidateSamplingOptions({.top_k = -1}).message(), HasSubstr("top_k"));
}

TEST(DistillTeacherSamples, BadOptionsNameTheField) {
  struct Case {
    TeacherSampleOptions o;
    const char* field;
  };
  std::vector<Case> cases;
  TeacherSampleOptions o = Options(0);
  o.num_windows = 0;
  cases.push_back({o, "num_windows"});
  o = Options(0);
  o.num_windows = -3;
  cases.push_back({o, "num_windows"});
  o = Options(0);
  o.sampling.temperature = 0;
  cases.push_back({o, "temperature"});
  o = Options(0);
  o.sampling.temperature = -1;
  cases.push_back({o, "temperature"});
  o = Options(0);
  o.sampling.top_p = 1.5;
  cases.push_back({o, "top_p"});
  o = Options(0);
  o.seqlen = 64;  // + 1 > max_position_embeddings 64
  cases.push_back({o, "seqlen"});
  o = Options(0);
  o.prompt_tokens = -1;
  cases.push_back({o, "prompt_tokens"});
  for (const Case& c : cases) {
    auto s = SampleTeacherWindows(*Tiny().teacher, c.o, kBos, nullptr);
    ASSERT_FALSE(s.ok()) << c.field;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << c.field;
    EXPECT_THAT(s.status().message(), HasSubstr(c.field));
  }
  auto no_bos = SampleTeacherWindows(*Tiny().teacher, Options(0), std::nullopt, nullptr);
  EXPECT_EQ(no_bos.status().code(), absl::StatusCode::kInvalidArgument);
}

// A student trained with KD on nothing but the teacher's samples gets closer
// to the teacher: the KL of the last steps is below that of the first.
TEST(DistillTeacherSamples, KdOnSampledTextReducesKl) {
  Fixture& f = Tiny();
  auto data = TrainData::FromWindows(Sample(Options(9, 16)), kSeqlen, 0, "teacher samples");
  ASSERT_TRUE(data.ok()) << data.status();
  const int vocab = f.teacher->config().vocab_size;
  auto store = train::ParameterStore::Create(MakeLlamaConfig(16, 32, 1, 2, 1, vocab, 64, true));
  ASSERT_TRUE(store.ok()) << store.status();
  store->InitRandom(11, 0.05);
  DistillTrainerOptions o;
  o.steps = 30;
  o.global_batch = 4;
  o.micro_batch = 2;
  o.lr = {.max_lr = 1e-2, .min_lr = 1e-3, .warmup_steps = 2, .total_steps = 30};
  o.loss.alpha = 1.0;
  o.loss.temperature = 1.0;
  o.seed = 5;
  auto trainer = DistillTrainer::Create(o, *f.teacher, *data, std::move(*store));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::vector<double> kl;
  ASSERT_TRUE((*trainer)->Run([&](const StepMetrics& m) { kl.push_back(m.divergence); }).ok());
  ASSERT_EQ(kl.size(), 30u);
  double first = 0, last = 0;
  for (int i = 0; i < 3; ++i) first += kl[i] / 3, last += kl[27 + i] / 3;
  std::cout << "KL on teacher samples: first 3 steps " << first << ", last 3 " << last << "\n";
  EXPECT_LT(last, 0.7 * first);
}

}  // namespace
}  // namespace shrinkray::distill
