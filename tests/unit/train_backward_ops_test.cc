// core/train/backward_ops: every op's backward (every input and parameter
// gradient) against float64 central finite differences (train_grad_check.h
// states the tolerance), and the float forwards against the inference
// kernels of core/kernels/cpu that LlamaModel runs.
#include "core/train/backward_ops.h"

#include <cmath>
#include <random>
#include <vector>

#include "core/kernels/cpu/ops.h"
#include "gtest/gtest.h"
#include "train_grad_check.h"

namespace shrinkray::train {
namespace {

using ::shrinkray::testing::ExpectGradientMatchesFd;
using ::shrinkray::testing::Project;
using ::shrinkray::testing::RandomVector;

using Vec = std::vector<double>;

TEST(TrainBackwardOpsTest, EmbeddingGradientMatchesFiniteDifferences) {
  std::mt19937 rng(1);
  const int V = 6, C = 5;
  const std::vector<int32_t> tokens = {3, 1, 3, 0, 5, 3};  // repeats accumulate
  const long N = static_cast<long>(tokens.size());
  Vec table = RandomVector(V * C, rng), r = RandomVector(N * C, rng);
  auto loss = [&] {
    Vec out(N * C);
    EmbeddingForward(out.data(), tokens.data(), table.data(), N, C);
    return Project(out, r);
  };
  Vec dtable(V * C, 0.0);
  EmbeddingBackward(dtable.data(), r.data(), tokens.data(), N, C);
  ExpectGradientMatchesFd(table, dtable, loss, "dtable");
  // Rows of ids never used get nothing.
  for (int c = 0; c < C; ++c) EXPECT_EQ(dtable[2 * C + c], 0.0);
}

TEST(TrainBackwardOpsTest, RmsNormGradientsMatchFiniteDifferences) {
  std::mt19937 rng(2);
  const long N = 4;
  const int C = 7;
  const double eps = 1e-5;
  Vec x = RandomVector(N * C, rng), w = RandomVector(C, rng, 1.0, 0.3),
      r = RandomVector(N * C, rng);
  auto loss = [&] {
    Vec out(N * C), rstd(N);
    RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
    return Project(out, r);
  };
  Vec out(N * C), rstd(N), dx(N * C, 0.0), dw(C, 0.0);
  RmsNormForward(out.data(), rstd.data(), x.data(), w.data(), N, C, eps);
  RmsNormBackward(dx.data(), dw.data(), r.data(), x.data(), w.data(), rstd.data(), N, C);
  ExpectGradientMatchesFd(x, dx, loss, "dinp");
  ExpectGradientMatchesFd(w, dw, loss, "dweight");
}

TEST(TrainBackwardOpsTest, RopeGradientMatchesFiniteDifferences) {
  std::mt19937 rng(3);
  const int B = 2, S = 5, NH = 3, HD = 6;
  std::vector<double> inv_freq(HD / 2);
  for (int i = 0; i < HD / 2; ++i) inv_freq[i] = 1.0 / std::pow(10000.0, 2.0 * i / HD);
  Vec cos, sin;
  RopeTables(inv_freq, S, &cos, &sin);
  const size_t n = static_cast<size_t>(B) * S * NH * HD;
  Vec x = RandomVector(n, rng), r = RandomVector(n, rng);
  auto loss = [&] {
    Vec out(n);
    RopeForward(out.data(), x.data(), cos.data(), sin.data(), B, S, NH, HD);
    return Project(out, r);
  };
  Vec dx(n, 0.0);
  RopeBackward(dx.data(), r.data(), cos.data(), sin.data(), B, S, NH, HD);
  ExpectGradientMatchesFd(x, dx, loss, "dinp");
}

TEST(TrainBackwardOpsTest, LinearGradientsMatchFiniteDifferences) {
  std::mt19937 rng(4);
  const int N = 5, C = 6, OC = 4;
  Vec x = RandomVector(N * C, rng), w = RandomVector(OC * C, rng), b = RandomVector(OC, rng),
      r = RandomVector(N * OC, rng);
  auto loss = [&] {
    Vec out(N * OC);
    LinearForward(out.data(), x.data(), w.data(), b.data(), N, C, OC);
    return Project(out, r);
  };
  Vec dx(N * C, 0.0), dw(OC * C, 0.0), db(OC, 0.0);
  LinearBackward(dx.data(), dw.data(), db.data(), r.data(), x.data(), w.data(), N, C, OC);
  ExpectGradientMatchesFd(x, dx, loss, "dinp");
  ExpectGradientMatchesFd(w, dw, loss, "dweight");
  ExpectGradientMatchesFd(b, db, loss, "dbias");
}

// lm_head tied to the embeddings: the table is used twice (lookup and output
// projection) and its gradient is the sum of both uses.
TEST(TrainBackwardOpsTest, TiedLmHeadGradientSumsBothUses) {
  std::mt19937 rng(5);
  const int V = 7, C = 4;
  const std::vector<int32_t> tokens = {2, 6, 2, 0};
  const int N = static_cast<int>(tokens.size());
  Vec table = RandomVector(V * C, rng), r = RandomVector(N * V, rng);
  auto loss = [&] {
    Vec h(N * C), logits(N * V);
    EmbeddingForward(h.data(), tokens.data(), table.data(), N, C);
    LinearForward(logits.data(), h.data(), table.data(), static_cast<const double*>(nullptr), N,
                  C, V);
    return Project(logits, r);
  };
  Vec h(N * C), dh(N * C, 0.0), dtable(V * C, 0.0);
  EmbeddingForward(h.data(), tokens.data(), table.data(), N, C);
  LinearBackward(dh.data(), dtable.data(), static_cast<double*>(nullptr), r.data(), h.data(),
                 table.data(), N, C, V);
  EmbeddingBackward(dtable.data(), dh.data(), tokens.data(), N, C);
  ExpectGradientMatchesFd(table, dtable, loss, "dtable (tied)");
}

void CheckAttention(int window) {
  std::mt19937 rng(6 + window);
  const int B = 2, S = 5, NH = 4, NKV = 2, HD = 4;
  const size_t nq = static_cast<size_t>(B) * S * NH * HD, nkv = static_cast<size_t>(B) * S * NKV * HD;
  Vec q = RandomVector(nq, rng), k = RandomVector(nkv, rng), v = RandomVector(nkv, rng),
      r = RandomVector(nq, rng);
  Vec probs(static_cast<size_t>(B) * NH * S * S);
  auto loss = [&] {
    Vec out(nq), p(probs.size());
    AttentionForward(out.data(), p.data(), q.data(), k.data(), v.data(), B, S, NH, NKV, HD,
                     window);
    return Project(out, r);
  };
  Vec out(nq), dq(nq, 0.0), dk(nkv, 0.0), dv(nkv, 0.0);
  AttentionForward(out.data(), probs.data(), q.data(), k.data(), v.data(), B, S, NH, NKV, HD,
                   window);
  AttentionBackward(dq.data(), dk.data(), dv.data(), r.data(), q.data(), k.data(), v.data(),
                    probs.data(), B, S, NH, NKV, HD, window);
  const std::string tag = " (window " + std::to_string(window) + ")";
  ExpectGradientMatchesFd(q, dq, loss, "dq" + tag);
  ExpectGradientMatchesFd(k, dk, loss, "dk" + tag);
  ExpectGradientMatchesFd(v, dv, loss, "dv" + tag);
  // The cached softmax rows sum to 1 over the visible keys and are 0 elsewhere.
  for (int bh = 0; bh < B * NH; ++bh) {
    for (int i = 0; i < S; ++i) {
      double sum = 0.0;
      for (int j = 0; j < S; ++j) {
        const double p = probs[(static_cast<size_t>(bh) * S + i) * S + j];
        const bool visible = j <= i && (window == 0 || i - j < window);
        if (!visible) EXPECT_EQ(p, 0.0);
        sum += p;
      }
      EXPECT_NEAR(sum, 1.0, 1e-12);
    }
  }
}

TEST(TrainBackwardOpsTest, GqaCausalAttentionGradientsMatchFiniteDifferences) {
  CheckAttention(/*window=*/0);
}

TEST(TrainBackwardOpsTest, SlidingWindowAttentionGradientsMatchFiniteDifferences) {
  CheckAttention(/*window=*/2);
}

TEST(TrainBackwardOpsTest, SwigluGradientsMatchFiniteDifferences) {
  std::mt19937 rng(8);
  const long N = 12;
  Vec gate = RandomVector(N, rng, 0.0, 2.0), up = RandomVector(N, rng), r = RandomVector(N, rng);
  auto loss = [&] {
    Vec out(N);
    SwigluForward(out.data(), gate.data(), up.data(), N);
    return Project(out, r);
  };
  Vec dgate(N, 0.0), dup(N, 0.0);
  SwigluBackward(dgate.data(), dup.data(), r.data(), gate.data(), up.data(), N);
  ExpectGradientMatchesFd(gate, dgate, loss, "dgate");
  ExpectGradientMatchesFd(up, dup, loss, "dup");
}

TEST(TrainBackwardOpsTest, CrossEntropyValueAndGradient) {
  std::mt19937 rng(9);
  const long N = 4;
  const int V = 6;
  const std::vector<int32_t> targets = {1, -100, 5, 0};  // one ignored row
  Vec z = RandomVector(N * V, rng, 0.0, 2.0);
  auto loss = [&] {
    Vec probs(N * V);
    return CrossEntropyForward(probs.data(), z.data(), targets.data(), N, V);
  };
  Vec probs(N * V), dz(N * V, 0.0);
  const double ce = CrossEntropyForward(probs.data(), z.data(), targets.data(), N, V);
  CrossEntropyBackward(dz.data(), probs.data(), targets.data(), N, V, 1.0);
  ExpectGradientMatchesFd(z, dz, loss, "dlogits");
  for (int j = 0; j < V; ++j) EXPECT_EQ(dz[1 * V + j], 0.0) << "ignored row " << j;
  // Uniform logits: every labelled row costs log V exactly.
  Vec flat(N * V, 0.25);
  EXPECT_NEAR(CrossEntropyForward(probs.data(), flat.data(), targets.data(), N, V), std::log(V),
              1e-15);
  EXPECT_GT(ce, 0.0);
}

// The float forwards are the inference kernels' arithmetic, step for step
// (same summation order), so LlamaModel and the trainer agree; 4-ULP slack
// (EXPECT_FLOAT_EQ) only for libm / compiler differences.
TEST(TrainBackwardOpsTest, FloatForwardsMatchInferenceKernels) {
  std::mt19937 rng(10);
  std::normal_distribution<float> dist(0.0f, 1.0f);
  auto rand = [&](size_t n) {
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    return v;
  };
  const int B = 2, S = 6, NH = 4, NKV = 2, HD = 8, C = 16, OC = 12;
  const int N = B * S;
  {
    std::vector<float> x = rand(N * C), w = rand(C), a(N * C), b(N * C), rstd(N);
    rmsnorm_forward(a.data(), nullptr, x.data(), w.data(), N, C, 1e-5f);
    RmsNormForward(b.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    for (int i = 0; i < N * C; ++i) EXPECT_FLOAT_EQ(a[i], b[i]) << "rmsnorm " << i;
  }
  {
    std::vector<float> x = rand(N * C), w = rand(OC * C), bias = rand(OC), a(N * OC), b(N * OC);
    matmul_forward(a.data(), x.data(), w.data(), bias.data(), N, C, OC);
    LinearForward(b.data(), x.data(), w.data(), bias.data(), N, C, OC);
    for (int i = 0; i < N * OC; ++i) EXPECT_FLOAT_EQ(a[i], b[i]) << "linear " << i;
  }
  {
    std::vector<float> g = rand(N * C), u = rand(N * C), a(N * C), b(N * C);
    swiglu_forward(a.data(), g.data(), u.data(), N * C);
    SwigluForward(b.data(), g.data(), u.data(), N * C);
    for (int i = 0; i < N * C; ++i) EXPECT_FLOAT_EQ(a[i], b[i]) << "swiglu " << i;
  }
  std::vector<double> inv_freq(HD / 2);
  for (int i = 0; i < HD / 2; ++i) inv_freq[i] = 1.0 / std::pow(10000.0, 2.0 * i / HD);
  std::vector<float> cos, sin;
  RopeTables(inv_freq, S, &cos, &sin);
  {
    std::vector<float> x = rand(N * NH * HD), a(x.size()), b(x.size());
    rope_forward(a.data(), x.data(), cos.data(), sin.data(), B, S, NH, HD);
    RopeForward(b.data(), x.data(), cos.data(), sin.data(), B, S, NH, HD);
    for (size_t i = 0; i < x.size(); ++i) EXPECT_FLOAT_EQ(a[i], b[i]) << "rope " << i;
  }
  for (int window : {0, 3}) {
    std::vector<float> q = rand(N * NH * HD), k = rand(N * NKV * HD), v = rand(N * NKV * HD);
    std::vector<float> a(q.size()), b(q.size()), probs(static_cast<size_t>(B) * NH * S * S);
    attention_forward(a.data(), q.data(), k.data(), v.data(), B, S, NH, NKV, HD, window);
    AttentionForward(b.data(), probs.data(), q.data(), k.data(), v.data(), B, S, NH, NKV, HD,
                     window);
    for (size_t i = 0; i < q.size(); ++i) {
      EXPECT_FLOAT_EQ(a[i], b[i]) << "attention window " << window << " at " << i;
    }
  }
}

}  // namespace
}  // namespace shrinkray::train
