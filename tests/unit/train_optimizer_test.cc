// core/train/adamw, lr_schedule, grad_clip, train_step: AdamW against values
// worked by hand, schedule values at chosen steps, clipping, accumulation of
// micro-batches equal to one batch of both, reproducible seeded steps, and
// the validation errors.
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "core/model/synthetic.h"
#include "core/train/adamw.h"
#include "core/train/grad_clip.h"
#include "core/train/llama_trainer_model.h"
#include "core/train/lr_schedule.h"
#include "core/train/parameter_store.h"
#include "core/train/train_step.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shrinkray::train {
namespace {

using ::testing::HasSubstr;

// One parameter p0 = 1, lr 0.1, weight decay 0.1, betas (0.9, 0.999), eps
// 1e-8, gradients 1, -0.5, 2:
//  t=1: p = 1 * 0.99 = 0.99; m = 0.1, v = 0.001; m^ = 1, v^ = 1;
//       p = 0.99 - 0.1 * 1 / (1 + 1e-8) = 0.890000001
//  t=2: p = 0.890000001 * 0.99; m = 0.09 - 0.05 = 0.04; v = 0.000999 + 0.00025
//       = 0.001249; m^ = 0.04 / 0.19, v^ = 0.001249 / 0.001999;
//       p = 0.8811000010 - 0.1 * 0.2105263 / (0.7904509 + 1e-8) = 0.8544662974
//  t=3: m = 0.036 + 0.2 = 0.236; v = 0.001247751 + 0.004 = 0.005247751;
//       p = 0.8544662974 * 0.99 - 0.1 * (0.236 / 0.271) / sqrt(0.005247751 / 0.002997001)
//         = 0.7801104749
// Float storage of p, m and v rounds each step by ~6e-8 relative: 1e-6.
TEST(TrainAdamWTest, MatchesHandComputedSteps) {
  AdamWOptions o;
  o.beta1 = 0.9;
  o.beta2 = 0.999;
  o.eps = 1e-8;
  std::vector<float> p = {1.0f}, m = {0.0f}, v = {0.0f};
  const float grads[] = {1.0f, -0.5f, 2.0f};
  const double expected_p[] = {0.890000001, 0.8544662973609032, 0.7801104748591943};
  const double expected_m[] = {0.1, 0.04, 0.236};
  const double expected_v[] = {0.001, 0.001249, 0.005247751};
  for (int t = 1; t <= 3; ++t) {
    std::vector<float> g = {grads[t - 1]};
    AdamW::Update(p, g, m, v, o, /*lr=*/0.1, /*weight_decay=*/0.1, t);
    EXPECT_NEAR(p[0], expected_p[t - 1], 1e-6) << "step " << t;
    EXPECT_NEAR(m[0], expected_m[t - 1], 1e-7) << "step " << t;
    EXPECT_NEAR(v[0], expected_v[t - 1], 1e-9) << "step " << t;
  }
}

TEST(TrainAdamWTest, StepDecaysMatricesOnlyAndCountsSteps) {
  const ModelConfig config = MakeLlamaConfig(16, 24, 1, 2, 1, 10, 16, false);
  absl::StatusOr<ParameterStore> store = ParameterStore::Create(config);
  ASSERT_TRUE(store.ok());
  store->InitRandom(1, 0.5);
  const std::vector<float> before(store->params().begin(), store->params().end());
  AdamWOptions o;
  o.weight_decay = 0.5;
  absl::StatusOr<AdamW> adam = AdamW::Create(o);
  ASSERT_TRUE(adam.ok());
  // Zero gradients: Adam's own update is 0 / (0 + eps) = 0, leaving the decay
  // p * (1 - lr * wd) = p * 0.95 on matrices and nothing on 1-D weights.
  ASSERT_TRUE(adam->Step(*store, 0.1).ok());
  EXPECT_EQ(adam->step(), 1);
  for (const ParameterView& v : store->views()) {
    const double factor = v.shape.size() >= 2 ? 0.95 : 1.0;
    for (size_t i = 0; i < v.numel; ++i) {
      ASSERT_NEAR(store->param(v)[i], before[v.offset + i] * factor, 1e-7) << v.name;
    }
  }
  // A non-zero gradient moves p by ~lr at the first step (m^/sqrt(v^) = sign(g)).
  const ParameterView* norm = *store->Find("model.norm.weight");
  store->grad(*norm)[0] = 3.0f;
  const float p0 = store->param(*norm)[0];
  ASSERT_TRUE(adam->Step(*store, 0.01).ok());
  EXPECT_EQ(adam->step(), 2);
  // Step 2 on zero moments: m = 0.1 g, v = 0.001 g^2, bias corrections
  // 1 - 0.9^2 = 0.19 and 1 - 0.999^2 = 0.001999, so the update is
  // (0.1 / 0.19) / sqrt(0.001 / 0.001999) = 0.7441 whatever g > 0 is (no
  // decay on a norm weight). 2e-7: float rounding of p ~ 1.
  EXPECT_NEAR(p0 - store->param(*norm)[0], 0.01 * (0.1 / 0.19) / std::sqrt(0.001 / 0.001999),
              2e-7);
}

TEST(TrainAdamWTest, ValidationErrorsNameTheField) {
  AdamWOptions o;
  o.beta1 = 1.0;
  EXPECT_THAT(AdamW::Create(o).status().message(), HasSubstr("beta1"));
  o = {};
  o.beta2 = -0.1;
  EXPECT_THAT(AdamW::Create(o).status().message(), HasSubstr("beta2"));
  o = {};
  o.eps = 0.0;
  EXPECT_THAT(AdamW::Create(o).status().message(), HasSubstr("eps"));
  o = {};
  o.weight_decay = -1.0;
  const absl::Status s = AdamW::Create(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("weight_decay"));
}

TEST(TrainLrScheduleTest, WarmupThenCosineToMinimum) {
  LrScheduleOptions o;
  o.max_lr = 1e-3;
  o.min_lr = 1e-4;
  o.warmup_steps = 10;
  o.total_steps = 110;
  absl::StatusOr<LrSchedule> s = LrSchedule::Create(o);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_DOUBLE_EQ(s->At(0), 1e-4);   // 1e-3 * 1/10
  EXPECT_DOUBLE_EQ(s->At(4), 5e-4);   // 1e-3 * 5/10
  EXPECT_DOUBLE_EQ(s->At(9), 1e-3);   // end of warmup
  EXPECT_DOUBLE_EQ(s->At(10), 1e-3);  // cosine at p = 0
  // p = 25/100: 1e-4 + 9e-4 * (1 + cos(pi/4)) / 2 = 8.681980515e-4.
  EXPECT_NEAR(s->At(35), 8.681980515339464e-4, 1e-15);
  EXPECT_NEAR(s->At(60), 5.5e-4, 1e-15);  // p = 1/2: the midpoint
  EXPECT_NEAR(s->At(109), 1e-4 + 9e-4 * 0.5 * (1 + std::cos(std::numbers::pi * 0.99)), 1e-15);
  EXPECT_DOUBLE_EQ(s->At(110), 1e-4);
  EXPECT_DOUBLE_EQ(s->At(5000), 1e-4);
  // Monotone non-increasing after warmup.
  for (int step = 10; step < 120; ++step) EXPECT_LE(s->At(step + 1), s->At(step));
}

TEST(TrainLrScheduleTest, ValidationErrorsNameTheField) {
  LrScheduleOptions o;
  o.max_lr = 0.0;
  EXPECT_THAT(LrSchedule::Create(o).status().message(), HasSubstr("max_lr"));
  o = {};
  o.min_lr = 1.0;
  EXPECT_THAT(LrSchedule::Create(o).status().message(), HasSubstr("min_lr"));
  o = {};
  o.warmup_steps = -1;
  EXPECT_THAT(LrSchedule::Create(o).status().message(), HasSubstr("warmup_steps"));
  o = {};
  o.warmup_steps = 10;
  o.total_steps = 10;
  const absl::Status s = LrSchedule::Create(o).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("total_steps"));
}

TEST(TrainGradClipTest, ScalesByGlobalNorm) {
  // Norm 13 over two "tensors" (3, 4) and (12): clipped to 1 keeps direction.
  std::vector<float> g = {3.0f, 4.0f, 12.0f};
  absl::StatusOr<double> norm = ClipGradNorm<float>(g, 1.0);
  ASSERT_TRUE(norm.ok());
  EXPECT_DOUBLE_EQ(*norm, 13.0);
  const double coef = 1.0 / (13.0 + 1e-6);
  EXPECT_NEAR(g[0], 3.0 * coef, 1e-7);
  EXPECT_NEAR(g[1], 4.0 * coef, 1e-7);
  EXPECT_NEAR(g[2], 12.0 * coef, 1e-7);
  EXPECT_NEAR(GlobalGradNorm<float>(g), 1.0, 1e-6);
  // Below the threshold nothing changes.
  std::vector<double> small = {0.3, 0.4};
  ASSERT_TRUE(ClipGradNorm<double>(small, 1.0).ok());
  EXPECT_EQ(small, (std::vector<double>{0.3, 0.4}));
  const absl::Status s = ClipGradNorm<double>(small, 0.0).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("max_norm"));
}

std::vector<int32_t> Tokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = dist(rng);
  return t;
}

// Micro-batches A (2 x 5 tokens) and B (1 x 5, two targets ignored) summed
// equal one batch of all three rows: the weights by labelled-token share make
// the sum the gradient of the same mean. Float64: only summation order
// differs, so 1e-12 relative to the largest gradient.
TEST(TrainStepTest, AccumulatingTwoMicroBatchesEqualsOneBatchOfBoth) {
  const ModelConfig config = MakeLlamaConfig(16, 24, 2, 4, 2, 20, 16, false);
  absl::StatusOr<BasicParameterStore<double>> store = BasicParameterStore<double>::Create(config);
  absl::StatusOr<LlamaTrainerModel<double>> model = LlamaTrainerModel<double>::Create(config);
  ASSERT_TRUE(store.ok() && model.ok());
  store->InitRandom(3, 0.3);
  const std::vector<int32_t> tokens = Tokens(15, 20, 1);
  std::vector<int32_t> targets = Tokens(15, 20, 2);
  targets[11] = -100;
  targets[13] = -100;
  const std::span<const int32_t> tk(tokens), tg(targets);
  const TokenBatch both[] = {{tk, tg, 3, 5}};
  const TokenBatch micro[] = {{tk.subspan(0, 10), tg.subspan(0, 10), 2, 5},
                              {tk.subspan(10, 5), tg.subspan(10, 5), 1, 5}};
  absl::StatusOr<double> loss_both = AccumulateCrossEntropyGradients(*model, *store, both);
  ASSERT_TRUE(loss_both.ok()) << loss_both.status();
  const std::vector<double> g_both(store->grads().begin(), store->grads().end());
  absl::StatusOr<double> loss_micro = AccumulateCrossEntropyGradients(*model, *store, micro);
  ASSERT_TRUE(loss_micro.ok()) << loss_micro.status();
  EXPECT_NEAR(*loss_micro, *loss_both, 1e-13);
  double scale = 0.0;
  for (double g : g_both) scale = std::max(scale, std::abs(g));
  ASSERT_GT(scale, 1e-3);
  for (size_t i = 0; i < g_both.size(); ++i) {
    ASSERT_NEAR(store->grads()[i], g_both[i], 1e-12 * scale) << i;
  }
  // Near log(20) = 3.0 for small random weights: a real loss, not a zero.
  EXPECT_NEAR(*loss_both, std::log(20.0), 0.5);
}

// Same seed, same data: three full steps (accumulate, clip, schedule, AdamW)
// give bit-identical parameters; the loss falls on the repeated batch.
TEST(TrainStepTest, SeededStepsAreReproducibleAndLearn) {
  const ModelConfig config = MakeLlamaConfig(16, 32, 2, 4, 2, 24, 16, false);
  const std::vector<int32_t> tokens = Tokens(16, 24, 5);
  std::vector<int32_t> targets(tokens.begin() + 1, tokens.end());
  targets.push_back(-100);
  const TokenBatch micro[] = {{std::span<const int32_t>(tokens).subspan(0, 8),
                               std::span<const int32_t>(targets).subspan(0, 8), 1, 8},
                              {std::span<const int32_t>(tokens).subspan(8, 8),
                               std::span<const int32_t>(targets).subspan(8, 8), 1, 8}};
  LrScheduleOptions so;
  so.max_lr = 1e-2;
  so.min_lr = 1e-3;
  so.warmup_steps = 2;
  so.total_steps = 40;
  auto run = [&](uint64_t seed, int steps, std::vector<double>* losses) {
    absl::StatusOr<ParameterStore> store = ParameterStore::Create(config);
    absl::StatusOr<LlamaTrainerModel<float>> model = LlamaTrainerModel<float>::Create(config);
    absl::StatusOr<AdamW> adam = AdamW::Create(AdamWOptions{.weight_decay = 0.01});
    absl::StatusOr<LrSchedule> schedule = LrSchedule::Create(so);
    EXPECT_TRUE(store.ok() && model.ok() && adam.ok() && schedule.ok());
    store->InitRandom(seed, 0.1);
    for (int i = 0; i < steps; ++i) {
      absl::StatusOr<TrainStepResult> r = TrainStep(*model, *store, *adam, *schedule, 1.0, micro);
      EXPECT_TRUE(r.ok()) << r.status();
      if (!r.ok()) break;
      EXPECT_EQ(r->step, i + 1);
      EXPECT_DOUBLE_EQ(r->lr, schedule->At(i));
      if (losses != nullptr) losses->push_back(r->loss);
    }
    return std::vector<float>(store->params().begin(), store->params().end());
  };
  const std::vector<float> a = run(9, 3, nullptr), b = run(9, 3, nullptr), c = run(10, 3, nullptr);
  EXPECT_TRUE(a == b) << "same seed, same steps: bitwise equal";
  EXPECT_FALSE(a == c);
  std::vector<double> losses;
  run(9, 40, &losses);
  ASSERT_EQ(losses.size(), 40u);
  // Starts near log(24) = 3.18 (small random weights); a 2-layer model
  // memorises 15 tokens well below that.
  EXPECT_NEAR(losses.front(), std::log(24.0), 0.2);
  EXPECT_LT(losses.back(), 0.5 * losses.front());
}

}  // namespace
}  // namespace shrinkray::train
