// core/train/distill_loss: values against hand-computed divergences, the
// gradient w.r.t. the student logits against float64 central differences for
// every divergence and teacher form (full, top-k renormalised, top-k with a
// tail bucket), and the validation errors.
#include "core/train/distill_loss.h"

#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "train_grad_check.h"

namespace shrinkray::train {
namespace {

using ::shrinkray::testing::ExpectGradientMatchesFd;
using ::shrinkray::testing::RandomVector;
using ::testing::HasSubstr;

using Vec = std::vector<double>;

// Values are in double end to end; 1e-12 covers log/exp rounding on O(1) sums.
constexpr double kValueTol = 1e-12;

DistillLossOptions Options(Divergence d, double alpha, double temperature, double beta = 0.5) {
  DistillLossOptions o;
  o.divergence = d;
  o.alpha = alpha;
  o.temperature = temperature;
  o.beta = beta;
  return o;
}

// Teacher p = (1/2, 1/4, 1/4) as logits T * log p; the student uniform.
struct ThreeWay {
  Vec student = {0.0, 0.0, 0.0};
  Vec teacher;
  explicit ThreeWay(double temperature)
      : teacher{temperature * std::log(0.5), temperature * std::log(0.25),
                temperature * std::log(0.25)} {}
};

double Full(const DistillLossOptions& o, const Vec& student, const Vec& teacher, long rows,
            int vocab, const std::vector<int32_t>& labels, Vec* grad) {
  Vec g(student.size());
  absl::StatusOr<DistillLossValue> v =
      DistillLoss<double>(o, student, rows, vocab, TeacherLogits<double>{teacher, vocab}, labels, g);
  EXPECT_TRUE(v.ok()) << v.status();
  if (grad != nullptr) *grad = g;
  return v.ok() ? v->loss : NAN;
}

TEST(TrainDistillLossTest, ForwardKlMatchesHandValueAndGradient) {
  // KL(p || uniform) = log 3 - 1.5 log 2; d/dz = alpha * T * (q - p) / rows.
  const double kl = std::log(3.0) - 1.5 * std::log(2.0);
  EXPECT_NEAR(kl, 0.05889151782819174, 1e-15);
  for (double temperature : {1.0, 2.0}) {
    ThreeWay t(temperature);
    Vec grad;
    const double loss = Full(Options(Divergence::kForwardKL, 1.0, temperature), t.student,
                             t.teacher, 1, 3, {-100}, &grad);
    EXPECT_NEAR(loss, temperature * temperature * kl, kValueTol) << "T=" << temperature;
    const double q = 1.0 / 3.0;
    EXPECT_NEAR(grad[0], temperature * (q - 0.5), kValueTol);
    EXPECT_NEAR(grad[1], temperature * (q - 0.25), kValueTol);
    EXPECT_NEAR(grad[2], temperature * (q - 0.25), kValueTol);
  }
}

TEST(TrainDistillLossTest, ReverseKlAndJsdMatchHandValues) {
  ThreeWay t(1.0);
  // KL(uniform || p) = (5/3) log 2 - log 3.
  EXPECT_NEAR(Full(Options(Divergence::kReverseKL, 1.0, 1.0), t.student, t.teacher, 1, 3, {-1},
                   nullptr),
              5.0 / 3.0 * std::log(2.0) - std::log(3.0), kValueTol);
  // JSD_0.5 with M = (5/12, 7/24, 7/24), and JSD_0.3 (M = 0.3 p + 0.7 q),
  // evaluated independently (Python, math.log).
  EXPECT_NEAR(Full(Options(Divergence::kJSD, 1.0, 1.0, 0.5), t.student, t.teacher, 1, 3, {-1},
                   nullptr),
              0.014362591564146779, kValueTol);
  EXPECT_NEAR(Full(Options(Divergence::kJSD, 1.0, 1.0, 0.3), t.student, t.teacher, 1, 3, {-1},
                   nullptr),
              0.012168328010969039, kValueTol);
  // JSD_0.5 is symmetric: swapping teacher and student gives the same value.
  EXPECT_NEAR(Full(Options(Divergence::kJSD, 1.0, 1.0, 0.5), t.teacher, t.student, 1, 3, {-1},
                   nullptr),
              0.014362591564146779, kValueTol);
  // Every divergence is zero (with zero gradient) when the two agree.
  for (Divergence d : {Divergence::kForwardKL, Divergence::kReverseKL, Divergence::kJSD}) {
    Vec grad;
    EXPECT_NEAR(Full(Options(d, 1.0, 1.5), t.teacher, t.teacher, 1, 3, {-1}, &grad), 0.0,
                kValueTol);
    for (double g : grad) EXPECT_NEAR(g, 0.0, kValueTol);
  }
}

TEST(TrainDistillLossTest, MixesCrossEntropyByAlpha) {
  // alpha = 0.25: 0.25 * KL + 0.75 * CE, CE of a uniform student = log 3.
  ThreeWay t(1.0);
  const double kl = std::log(3.0) - 1.5 * std::log(2.0);
  Vec grad(3);
  absl::StatusOr<DistillLossValue> v = DistillLoss<double>(
      Options(Divergence::kForwardKL, 0.25, 1.0), t.student, 1, 3,
      TeacherLogits<double>{t.teacher, 3}, std::vector<int32_t>{0}, grad);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_NEAR(v->divergence, kl, kValueTol);
  EXPECT_NEAR(v->cross_entropy, std::log(3.0), kValueTol);
  EXPECT_NEAR(v->loss, 0.25 * kl + 0.75 * std::log(3.0), kValueTol);
  // 0.25 (q - p) + 0.75 (q - onehot(0)).
  EXPECT_NEAR(grad[0], 0.25 * (1.0 / 3 - 0.5) + 0.75 * (1.0 / 3 - 1.0), kValueTol);
  EXPECT_NEAR(grad[1], 0.25 * (1.0 / 3 - 0.25) + 0.75 * (1.0 / 3), kValueTol);
}

// Teacher p = (0.5, 0.2, 0.2, 0.1), student uniform over 4, k = 2: the top-2
// are ids 0 and 1 (tie at 0.2 broken towards the lower id).
TEST(TrainDistillLossTest, TopKModesMatchHandValues) {
  const Vec teacher = {std::log(0.5), std::log(0.2), std::log(0.2), std::log(0.1)};
  const Vec student(4, 0.0);
  absl::StatusOr<TopKTable<double>> top = TopKFromLogits<double>(teacher, 1, 4, 2, 1.0);
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_THAT(top->ids, ::testing::ElementsAre(0, 1));
  EXPECT_NEAR(top->log_probs[0], std::log(0.5), kValueTol);
  EXPECT_NEAR(top->log_probs[1], std::log(0.2), kValueTol);
  Vec grad(4);
  const std::vector<int32_t> labels = {-100};
  // Tail bucket: (0.5, 0.2, 0.3) against (0.25, 0.25, 0.5).
  TeacherTopK<double> tail{top->ids, top->log_probs, 2, TopKMode::kTailBucket};
  absl::StatusOr<DistillLossValue> v =
      DistillLoss<double>(Options(Divergence::kForwardKL, 1.0, 1.0), student, 1, 4, tail, labels, grad);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_NEAR(v->loss, 0.5 * std::log(2.0) + 0.2 * std::log(0.8) + 0.3 * std::log(0.6),
              kValueTol);
  // Tail ids share the tail bucket's gradient by their share of its mass:
  // G_tail = -P_tail + Q_tail = 0.2, split 0.1 / 0.1.
  EXPECT_NEAR(grad[2], 0.1, kValueTol);
  EXPECT_NEAR(grad[3], 0.1, kValueTol);
  EXPECT_NEAR(grad[0], 0.25 - 0.5, kValueTol);
  // Renormalised: (5/7, 2/7) against (1/2, 1/2); ids outside get no gradient.
  TeacherTopK<double> renorm{top->ids, top->log_probs, 2, TopKMode::kRenormalize};
  v = DistillLoss<double>(Options(Divergence::kForwardKL, 1.0, 1.0), student, 1, 4, renorm, labels,
                          grad);
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_NEAR(v->loss, 5.0 / 7 * std::log(10.0 / 7) + 2.0 / 7 * std::log(4.0 / 7), kValueTol);
  EXPECT_NEAR(grad[0], 0.5 - 5.0 / 7, kValueTol);
  EXPECT_EQ(grad[2], 0.0);
  EXPECT_EQ(grad[3], 0.0);
}

// With k = vocab both top-k modes are the full-logit loss.
TEST(TrainDistillLossTest, TopKOfWholeVocabularyEqualsFullLogits) {
  std::mt19937 rng(11);
  const long rows = 3;
  const int V = 5;
  const double temperature = 1.7;
  Vec student = RandomVector(rows * V, rng, 0.0, 2.0), teacher = RandomVector(rows * V, rng, 0.0, 2.0);
  const std::vector<int32_t> labels = {4, -100, 0};
  absl::StatusOr<TopKTable<double>> top = TopKFromLogits<double>(teacher, rows, V, V, temperature);
  ASSERT_TRUE(top.ok()) << top.status();
  for (Divergence d : {Divergence::kForwardKL, Divergence::kReverseKL, Divergence::kJSD}) {
    const DistillLossOptions o = Options(d, 0.6, temperature, 0.4);
    Vec full_grad;
    const double full = Full(o, student, teacher, rows, V, labels, &full_grad);
    for (TopKMode mode : {TopKMode::kRenormalize, TopKMode::kTailBucket}) {
      Vec grad(rows * V);
      absl::StatusOr<DistillLossValue> v = DistillLoss<double>(
          o, student, rows, V, TeacherTopK<double>{top->ids, top->log_probs, V, mode}, labels, grad);
      ASSERT_TRUE(v.ok()) << v.status();
      EXPECT_NEAR(v->loss, full, kValueTol);
      for (size_t i = 0; i < grad.size(); ++i) EXPECT_NEAR(grad[i], full_grad[i], kValueTol);
    }
  }
}

// The gradient of the mixed loss (alpha = 0.7, T = 2, beta = 0.3, one row
// without a label) w.r.t. every student logit, for every divergence and
// teacher form, against central differences.
TEST(TrainDistillLossTest, GradientsMatchFiniteDifferences) {
  std::mt19937 rng(12);
  const long rows = 3;
  const int V = 8, k = 3;
  const double temperature = 2.0;
  Vec student = RandomVector(rows * V, rng, 0.0, 2.0);
  const Vec teacher = RandomVector(rows * V, rng, 0.0, 3.0);
  const std::vector<int32_t> labels = {2, -100, 7};
  absl::StatusOr<TopKTable<double>> top = TopKFromLogits<double>(teacher, rows, V, k, temperature);
  ASSERT_TRUE(top.ok()) << top.status();
  const char* names[] = {"forward KL", "reverse KL", "JSD"};
  for (Divergence d : {Divergence::kForwardKL, Divergence::kReverseKL, Divergence::kJSD}) {
    const DistillLossOptions o = Options(d, 0.7, temperature, 0.3);
    const std::string name = names[static_cast<int>(d)];
    // Full teacher logits.
    {
      Vec grad;
      Full(o, student, teacher, rows, V, labels, &grad);
      ExpectGradientMatchesFd(student, grad,
                              [&] { return Full(o, student, teacher, rows, V, labels, nullptr); },
                              name + ", full logits");
    }
    for (TopKMode mode : {TopKMode::kRenormalize, TopKMode::kTailBucket}) {
      const TeacherTopK<double> t{top->ids, top->log_probs, k, mode};
      auto loss = [&](Vec* grad) {
        Vec g(rows * V);
        absl::StatusOr<DistillLossValue> v = DistillLoss<double>(o, student, rows, V, t, labels, g);
        EXPECT_TRUE(v.ok()) << v.status();
        if (grad != nullptr) *grad = g;
        return v.ok() ? v->loss : NAN;
      };
      Vec grad;
      loss(&grad);
      ExpectGradientMatchesFd(student, grad, [&] { return loss(nullptr); },
                              name + (mode == TopKMode::kRenormalize ? ", top-k renormalize"
                                                                     : ", top-k tail bucket"));
    }
  }
}

TEST(TrainDistillLossTest, FloatGradientAgreesWithDouble) {
  std::mt19937 rng(13);
  const long rows = 2;
  const int V = 6;
  const Vec sd = RandomVector(rows * V, rng), td = RandomVector(rows * V, rng);
  const std::vector<float> sf(sd.begin(), sd.end()), tf(td.begin(), td.end());
  const std::vector<int32_t> labels = {1, 3};
  const DistillLossOptions o = Options(Divergence::kJSD, 0.5, 1.5, 0.5);
  Vec gd(rows * V);
  std::vector<float> gf(rows * V);
  absl::StatusOr<DistillLossValue> vd =
      DistillLoss<double>(o, sd, rows, V, TeacherLogits<double>{td, V}, labels, gd);
  absl::StatusOr<DistillLossValue> vf =
      DistillLoss<float>(o, sf, rows, V, TeacherLogits<float>{tf, V}, labels, gf);
  ASSERT_TRUE(vd.ok() && vf.ok());
  // The inputs are float-rounded copies (relative 6e-8) and the arithmetic is
  // double either way: only the final rounding of the gradient to float differs.
  EXPECT_NEAR(vf->loss, vd->loss, 1e-6);
  for (size_t i = 0; i < gd.size(); ++i) EXPECT_NEAR(gf[i], gd[i], 1e-6);
}

TEST(TrainDistillLossTest, ValidationErrorsNameTheField) {
  const Vec student(2 * 4, 0.1), teacher(2 * 4, 0.2);
  const std::vector<int32_t> labels = {0, 1};
  const std::vector<int32_t> ids = {0, 1, 2, 3};
  const Vec log_probs = {-1.0, -2.0, -1.0, -2.0};
  Vec grad(2 * 4);
  auto full = [&](const DistillLossOptions& o, int teacher_vocab) {
    return DistillLoss<double>(o, student, 2, 4, TeacherLogits<double>{teacher, teacher_vocab},
                               labels, grad)
        .status();
  };
  auto topk = [&](const DistillLossOptions& o, int k, const std::vector<int32_t>& i,
                  const Vec& lp) {
    return DistillLoss<double>(o, student, 2, 4, TeacherTopK<double>{i, lp, k, TopKMode::kTailBucket},
                               labels, grad)
        .status();
  };
  struct Case {
    absl::Status status;
    const char* field;
  };
  const std::vector<int32_t> ids5(2 * 5, 0);
  const Vec lp5(2 * 5, -3.0);
  const Case cases[] = {
      {full(Options(Divergence::kForwardKL, 1.5, 1.0), 4), "alpha"},
      {full(Options(Divergence::kForwardKL, -0.1, 1.0), 4), "alpha"},
      {full(Options(Divergence::kForwardKL, 0.5, 0.0), 4), "temperature"},
      {full(Options(Divergence::kForwardKL, 0.5, -2.0), 4), "temperature"},
      {full(Options(Divergence::kJSD, 0.5, 1.0, 1.0), 4), "beta"},
      {full(Options(Divergence::kJSD, 0.5, 1.0, 0.0), 4), "beta"},
      {full(Options(Divergence::kForwardKL, 0.5, 1.0), 5), "teacher vocab 5"},
      {topk(Options(Divergence::kForwardKL, 0.5, 1.0), 5, ids5, lp5), "top_k = 5"},
      {topk(Options(Divergence::kForwardKL, 0.5, 1.0), 0, {}, {}), "top_k = 0"},
      {topk(Options(Divergence::kForwardKL, 0.5, 1.0), 2, {0, 9, 1, 2}, log_probs), "top-k id 9"},
      {topk(Options(Divergence::kForwardKL, 0.5, 1.0), 2, {1, 1, 1, 2}, log_probs), "repeats"},
      {topk(Options(Divergence::kForwardKL, 0.5, 1.0), 2, ids, {-0.1, -0.2, -1, -1}), "sum to"},
  };
  for (const Case& c : cases) {
    EXPECT_EQ(c.status.code(), absl::StatusCode::kInvalidArgument) << c.field << ": " << c.status;
    EXPECT_THAT(c.status.message(), HasSubstr(c.field));
  }
  // beta is only checked for JSD.
  EXPECT_TRUE(full(Options(Divergence::kForwardKL, 0.5, 1.0, 1.0), 4).ok());
  // TopKFromLogits checks k as well.
  absl::StatusOr<TopKTable<double>> top = TopKFromLogits<double>(teacher, 2, 4, 5, 1.0);
  EXPECT_EQ(top.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(top.status().message(), HasSubstr("top_k = 5"));
}

}  // namespace
}  // namespace shrinkray::train
