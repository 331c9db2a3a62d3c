// The distillation trainer (core/distill/distill_trainer.h) on a tiny demo
// teacher (2 layers, hidden 32) and a smaller random student (1 layer,
// hidden 16) over the demo text: the KD loss goes down, 2 Gloo ranks (threads)
// take the steps of 1 rank on the same global batch, a run stopped and resumed
// from its checkpoint ends bit for bit where an uninterrupted one ends, the
// saved student loads with LlamaModel::Load, and bad options are clear
// errors. Plus a short run against the real stories260K when ../shared/data
// exists.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <iostream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/comm/communicator.h"
#include "core/comm/store.h"
#include "core/distill/distill_trainer.h"
#include "core/distill/train_data.h"
#include "core/io/text_file.h"
#include "core/model/demo_model.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray::distill {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

constexpr int kSeqlen = 16;

struct Fixture {
  fs::path dir;
  std::unique_ptr<LlamaModel> teacher;
  std::unique_ptr<TrainData> data;
};

Fixture& Tiny() {
  static Fixture* f = [] {
    auto* fx = new Fixture;
    fx->dir = testing::MakeTempDir("distill-trainer");
    DemoModelOptions o;
    o.hidden_size = 32;
    o.intermediate_size = 64;
    o.num_layers = 2;
    o.num_heads = 4;
    o.num_kv_heads = 2;
    o.max_positions = 64;
    EXPECT_TRUE(WriteDemoModel(fx->dir / "teacher", o).ok());
    auto teacher = LlamaModel::Load(fx->dir / "teacher");
    EXPECT_TRUE(teacher.ok()) << teacher.status();
    fx->teacher = std::move(*teacher);
    auto tokenizer = Tokenizer::FromFile(fx->dir / "teacher" / "tokenizer.json");
    EXPECT_TRUE(tokenizer.ok());
    auto ids = (*tokenizer)->Encode(DemoText(7, 4000), true);
    EXPECT_TRUE(ids.ok());
    auto data = TrainData::FromIds(*ids, kSeqlen, 0, "demo text");
    EXPECT_TRUE(data.ok()) << data.status();
    fx->data = std::make_unique<TrainData>(std::move(*data));
    return fx;
  }();
  return *f;
}

ModelConfig StudentConfig(int vocab) {
  return MakeLlamaConfig(16, 32, 1, 2, 1, vocab, 64, /*tie_embeddings=*/true);
}

train::ParameterStore Student(int vocab, uint64_t seed = 11) {
  auto store = train::ParameterStore::Create(StudentConfig(vocab));
  EXPECT_TRUE(store.ok()) << store.status();
  store->InitRandom(seed, 0.05);
  return std::move(*store);
}

DistillTrainerOptions Options(int64_t steps) {
  DistillTrainerOptions o;
  o.steps = steps;
  o.global_batch = 4;
  o.micro_batch = 1;
  o.lr = {.max_lr = 3e-3, .min_lr = 3e-4, .warmup_steps = 2, .total_steps = steps};
  o.max_grad_norm = 1.0;
  o.loss.alpha = 0.5;
  o.loss.temperature = 2.0;
  o.seed = 5;
  return o;
}

absl::StatusOr<std::unique_ptr<DistillTrainer>> Make(const DistillTrainerOptions& o) {
  Fixture& f = Tiny();
  return DistillTrainer::Create(o, *f.teacher, *f.data, Student(f.teacher->config().vocab_size));
}

bool SameBits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

TEST(DistillTrainData, OrderIsSeededAndCoversEveryWindowPerEpoch) {
  const TrainData& data = *Tiny().data;
  ASSERT_GE(data.num_windows(), 8);
  const std::vector<int64_t> e0 = data.EpochOrder(0), e1 = data.EpochOrder(1);
  EXPECT_EQ(e0, data.EpochOrder(0));
  EXPECT_NE(e0, e1);
  std::vector<int64_t> sorted = e0;
  std::sort(sorted.begin(), sorted.end());
  for (int64_t i = 0; i < data.num_windows(); ++i) EXPECT_EQ(sorted[i], i);
  // A batch crossing the epoch boundary continues in epoch 1's order.
  const int64_t n = data.num_windows();
  Position next;
  const auto batch = data.GlobalBatch({0, n - 1}, 3, &next);
  EXPECT_EQ(batch, (std::vector<int64_t>{e0[n - 1], e1[0], e1[1]}));
  EXPECT_EQ(next, (Position{1, 2}));
  // Windows overlap by one id: the label of the last position is the next input.
  EXPECT_EQ(data.Window(0)[kSeqlen], data.Window(1)[0]);
  auto slice = RankSlice(8, 1, 2);
  ASSERT_TRUE(slice.ok());
  EXPECT_EQ(*slice, std::make_pair(4, 8));
  EXPECT_EQ(RankSlice(6, 0, 4).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MicroBatches(std::vector<int64_t>{1, 2, 3, 4, 5}, 2).size(), 3u);
}

// (a) The KD loss decreases over 30 steps; the metrics are consistent.
TEST(DistillTrainer, KdLossDecreases) {
  DistillTrainerOptions o = Options(30);
  o.lr.max_lr = 1e-2;
  o.lr.min_lr = 1e-3;
  auto trainer = Make(o);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::vector<StepMetrics> steps;
  ASSERT_TRUE((*trainer)->Run([&](const StepMetrics& m) { steps.push_back(m); }).ok());
  ASSERT_EQ(steps.size(), 30u);
  double first = 0, last = 0;
  for (int i = 0; i < 5; ++i) first += steps[i].loss / 5, last += steps[25 + i].loss / 5;
  std::cout << "KD loss: first 5 steps " << first << ", last 5 " << last << "\n";
  EXPECT_LT(last, 0.8 * first);
  for (const StepMetrics& m : steps) {
    // loss = alpha * T^2 * D + (1 - alpha) * CE with alpha 0.5, T 2.
    EXPECT_NEAR(m.loss, 0.5 * 4.0 * m.divergence + 0.5 * m.cross_entropy, 1e-9 * m.loss);
    EXPECT_GT(m.tokens_per_s, 0);
    EXPECT_GT(m.grad_norm, 0);
  }
  EXPECT_DOUBLE_EQ(steps[0].lr, 1e-2 / 2);  // warmup: max_lr * 1 / 2
  EXPECT_EQ(steps[29].step, 30);
  EXPECT_EQ((*trainer)->Step().status().code(), absl::StatusCode::kFailedPrecondition);
}

// (b) 2 ranks with the same global batch take the 1-rank steps. Only the order
// of the gradient sums differs (each rank sums its 2 micro-batches, then the
// all-reduce adds the two partial sums; 1 rank adds 4 in a row), a float32
// rounding difference ~1e-7 relative per step that AdamW turns into parameter
// differences below 1e-6 after 5 steps (measured: 7.5e-9).
TEST(DistillTrainer, TwoRanksEqualOneRank) {
  const int64_t kSteps = 5;
  auto single = Make(Options(kSteps));
  ASSERT_TRUE(single.ok()) << single.status();
  std::vector<StepMetrics> single_metrics;
  ASSERT_TRUE((*single)->Run([&](const StepMetrics& m) { single_metrics.push_back(m); }).ok());

  std::shared_ptr<Store> store = MakeInProcessStore();
  std::vector<absl::Status> status(2);
  std::vector<std::vector<float>> params(2);
  std::vector<std::vector<StepMetrics>> metrics(2);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      CommOptions c;
      c.rank = rank;
      c.size = 2;
      auto comm = MakeGlooCommunicator(store, c);
      if (!comm.ok()) {
        status[rank] = comm.status();
        return;
      }
      DistillTrainerOptions o = Options(kSteps);
      o.comm = comm->get();
      o.bucket_floats = 1000;  // several buckets
      auto trainer = Make(o);
      if (!trainer.ok()) {
        status[rank] = trainer.status();
        return;
      }
      status[rank] = (*trainer)->Run([&](const StepMetrics& m) { metrics[rank].push_back(m); });
      auto p = (*trainer)->student().params();
      params[rank].assign(p.begin(), p.end());
    });
  }
  for (std::thread& t : threads) t.join();
  ASSERT_TRUE(status[0].ok()) << status[0];
  ASSERT_TRUE(status[1].ok()) << status[1];
  // The ranks apply the same summed gradient: identical to each other.
  EXPECT_TRUE(SameBits(params[0], params[1]));
  const auto ref = (*single)->student().params();
  ASSERT_EQ(ref.size(), params[0].size());
  double max_diff = 0;
  for (size_t i = 0; i < ref.size(); ++i) {
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(ref[i]) - params[0][i]));
  }
  std::cout << "2 ranks vs 1: max |param diff| after 5 steps = " << max_diff << "\n";
  EXPECT_LE(max_diff, 1e-6);
  for (int64_t s = 0; s < kSteps; ++s) {
    EXPECT_NEAR(metrics[0][s].loss, single_metrics[s].loss, 1e-5 * single_metrics[s].loss);
    EXPECT_NEAR(metrics[0][s].grad_norm, single_metrics[s].grad_norm, 1e-4 * single_metrics[s].grad_norm);
  }
}

// (c) Stopped after step 3 and resumed from its checkpoint, a run ends at step
// 6 bit-identical (params, moments, data position) to an uninterrupted one.
TEST(DistillTrainer, ResumeIsBitIdentical) {
  const fs::path root = testing::MakeTempDir("distill-resume");
  DistillTrainerOptions o = Options(6);
  o.checkpoint_every = 3;
  o.checkpoint_dir = root / "straight";
  auto straight = Make(o);
  ASSERT_TRUE(straight.ok()) << straight.status();
  EXPECT_TRUE((*straight)->resume_note().empty());
  ASSERT_TRUE((*straight)->Run().ok());

  o.checkpoint_dir = root / "killed";
  {
    auto first = Make(o);
    ASSERT_TRUE(first.ok()) << first.status();
    for (int i = 0; i < 3; ++i) ASSERT_TRUE((*first)->Step().ok());
  }  // destroyed after step 3, as a killed worker
  EXPECT_TRUE(fs::exists(root / "killed" / "step-00000003.safetensors"));
  auto resumed = Make(o);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_THAT((*resumed)->resume_note(), HasSubstr("resumed from"));
  EXPECT_EQ((*resumed)->step(), 3);
  ASSERT_TRUE((*resumed)->Run().ok());
  EXPECT_EQ((*resumed)->step(), 6);
  EXPECT_EQ((*resumed)->position(), (*straight)->position());
  const train::ParameterStore& a = (*straight)->student();
  const train::ParameterStore& b = (*resumed)->student();
  EXPECT_TRUE(SameBits(a.params(), b.params()));
  EXPECT_TRUE(SameBits(a.first_moment(), b.first_moment()));
  EXPECT_TRUE(SameBits(a.second_moment(), b.second_moment()));
  // Only the newest checkpoint is kept.
  EXPECT_TRUE(fs::exists(root / "killed" / "step-00000006.safetensors"));
  EXPECT_FALSE(fs::exists(root / "killed" / "step-00000003.safetensors"));

  // Another run's checkpoint is not resumed from.
  DistillTrainerOptions other = o;
  other.loss.alpha = 0.25;
  auto fresh = Make(other);
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  EXPECT_EQ((*fresh)->step(), 0);
  EXPECT_THAT((*fresh)->resume_note(), HasSubstr("another run"));
  EXPECT_THAT((*fresh)->resume_note(), HasSubstr("starting over"));
}

// The saved student is a model folder that LlamaModel::Load reads, with the
// trainer's logits.
TEST(DistillTrainer, SavedStudentLoads) {
  Fixture& f = Tiny();
  auto trainer = Make(Options(3));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  ASSERT_TRUE((*trainer)->Run().ok());
  const fs::path out = testing::MakeTempDir("distill-save") / "student";
  ASSERT_TRUE((*trainer)->SaveStudent(out, f.dir / "teacher", false).ok());
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  auto model = LlamaModel::Load(out);
  ASSERT_TRUE(model.ok()) << model.status();
  EXPECT_EQ((*model)->config().hidden_size, 16);
  const auto window = f.data->Window(0).first(kSeqlen);
  const int V = (*model)->config().vocab_size;
  std::vector<float> got(static_cast<size_t>(kSeqlen) * V), want(got.size());
  ASSERT_TRUE((*model)->Forward(window, 1, kSeqlen, got).ok());
  auto trainer_model = train::LlamaTrainerModel<float>::Create((*trainer)->student().config());
  ASSERT_TRUE(trainer_model.ok());
  ASSERT_TRUE(trainer_model->Forward((*trainer)->student(), window, 1, kSeqlen, want).ok());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_NEAR(got[i], want[i], 1e-5) << i;
}

// (e) Bad options: InvalidArgument naming the field.
TEST(DistillTrainer, BadInputsAreClearErrors) {
  Fixture& f = Tiny();
  const int V = f.teacher->config().vocab_size;
  auto expect_invalid = [&](const DistillTrainerOptions& o, train::ParameterStore student,
                            const std::string& field) {
    auto t = DistillTrainer::Create(o, *f.teacher, *f.data, std::move(student));
    ASSERT_FALSE(t.ok()) << field;
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
    EXPECT_THAT(std::string(t.status().message()), HasSubstr(field));
  };
  expect_invalid(Options(1), Student(V + 1), "vocab_size");
  DistillTrainerOptions o = Options(1);
  o.teacher_mode = TeacherMode::kOnlineTopK;
  o.top_k = V + 1;
  expect_invalid(o, Student(V), "top_k");
  o.top_k = 0;
  expect_invalid(o, Student(V), "top_k");
  for (const double alpha : {-0.1, 1.5}) {
    o = Options(1);
    o.loss.alpha = alpha;
    expect_invalid(o, Student(V), "alpha");
  }
  for (const double t : {0.0, -1.0}) {
    o = Options(1);
    o.loss.temperature = t;
    expect_invalid(o, Student(V), "temperature");
  }
  o = Options(1);
  o.global_batch = 3;
  o.micro_batch = 0;
  expect_invalid(o, Student(V), "micro_batch");
  o = Options(1);
  o.checkpoint_every = 2;
  expect_invalid(o, Student(V), "checkpoint_dir");
}

// On the real stories260K teacher (5 layers, hidden 64): a 1-layer student
// distilled on TinyStories text lowers its KD loss within 15 steps.
TEST(DistillTrainer, Stories260KLossDecreases) {
  const fs::path dir = testing::SharedDataDir() / "stories260K";
  const fs::path text_path = testing::SharedDataDir() / "text" / "tinystories_train_prefix.txt";
  SHRINKRAY_REQUIRE_PATH(dir / "model.safetensors");
  SHRINKRAY_REQUIRE_PATH(text_path);
  auto teacher = LlamaModel::Load(dir);
  ASSERT_TRUE(teacher.ok()) << teacher.status();
  auto tokenizer = Tokenizer::FromFile(dir / "tokenizer.json");
  ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
  auto text = ReadTextFile(text_path, 40000);
  ASSERT_TRUE(text.ok());
  auto ids = (*tokenizer)->Encode(*text, true);
  ASSERT_TRUE(ids.ok());
  auto data = TrainData::FromIds(*ids, 64, 0, text_path.string());
  ASSERT_TRUE(data.ok()) << data.status();
  ModelConfig config = (*teacher)->config();
  config.num_hidden_layers = 1;
  auto student = train::ParameterStore::Create(config);
  ASSERT_TRUE(student.ok());
  student->InitRandom(3, 0.02);
  DistillTrainerOptions o = Options(15);
  o.lr = {.max_lr = 5e-3, .min_lr = 5e-4, .warmup_steps = 1, .total_steps = 15};
  o.global_batch = 4;
  o.micro_batch = 2;
  auto trainer = DistillTrainer::Create(o, **teacher, *data, std::move(*student));
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  std::vector<double> losses;
  ASSERT_TRUE((*trainer)->Run([&](const StepMetrics& m) { losses.push_back(m.loss); }).ok());
  std::cout << "stories260K KD loss: step 1 " << losses.front() << ", step 15 " << losses.back() << "\n";
  EXPECT_LT((losses[12] + losses[13] + losses[14]) / 3, 0.8 * (losses[0] + losses[1] + losses[2]) / 3);
}

}  // namespace
}  // namespace shrinkray::distill
