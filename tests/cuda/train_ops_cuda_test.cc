// The CUDA training ops (core/kernels/cuda/train_ops.h) against their CPU
// references in core/train: backward_ops.h (EmbeddingBackward, RmsNormBackward,
// RopeBackward, SwigluBackward, LinearBackward), distill_loss.h (DistillLoss,
// forward KL with teacher logits), adamw.h (AdamW::Update). Every GPU op gets
// the same bf16-rounded inputs as its reference; the references run in double
// where the instantiation exists, so the tolerances measure the GPU's error.
// Without a CUDA device the TrainOpsCudaTest* tests SKIP; TrainOpsArgsTest
// (argument checks, which return before any CUDA call) runs everywhere.
//
// Tolerances (nmse = sum (gpu - ref)^2 / sum ref^2):
//  * bf16 outputs: one rounding to 8 significant bits (relative error <=
//    2^-9, nmse ~1e-6 to 3e-6): nmse <= 1e-5.
//  * fp32 parameter gradients summed in fp32 (embedding, rmsnorm dweight,
//    dbias): only the summation order and fp32 rounding differ: nmse <= 1e-10.
//  * fp32 dweight from bf16 tensor-core GEMMs: exact bf16 products, fp32
//    accumulation whose adders may truncate: nmse <= 1e-8 (as matmul_forward).
//  * distillation loss means: fp32 online softmax statistics over up to 128k
//    logits (log-sum-exp of ~10 with ~1e-6 relative error): 2e-4 absolute.
//  * AdamW: fp32 versus the CPU's double per element, a few fp32 roundings per
//    step over 3 steps: |dp| <= 2e-6 |p| + 1e-7; moments nmse <= 1e-11.
#include <cuda_bf16.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <span>
#include <string>
#include <vector>

#include "core/kernels/cuda/train_ops.h"
#include "core/train/adamw.h"
#include "core/train/backward_ops.h"
#include "core/train/distill_loss.h"
#include "cuda/cuda_test_util.h"

namespace shrinkray {
namespace {

using cuda_test::Compare;
using cuda_test::CudaTest;
using cuda_test::Describe;
using cuda_test::FromBf16;
using cuda_test::RandomNormal;
using cuda_test::RoundToBf16;
using cuda_test::ToBf16;
using bf16 = __nv_bfloat16;

constexpr double kNmseBf16Out = 1e-5;    // bf16 output rounding
constexpr double kNmseF32Grad = 1e-10;   // fp32 sums, different order
constexpr double kNmseBf16Gemm = 1e-8;   // bf16 tensor cores, fp32 accumulate
constexpr double kLossAbs = 2e-4;        // fp32 online softmax statistics

std::vector<double> ToDouble(const std::vector<float>& x) { return {x.begin(), x.end()}; }
std::vector<float> ToFloat(const std::vector<double>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = static_cast<float>(x[i]);
  return r;
}

template <typename T>
absl::StatusOr<std::vector<T>> Download(const DeviceBuffer<T>& buf, size_t n,
                                        cudaStream_t stream) {
  std::vector<T> host(n);
  absl::Status st = buf.CopyToHost(absl::MakeSpan(host), stream);
  if (!st.ok()) return st;
  return host;
}

class TrainOpsCudaTest : public CudaTest {};

// ---- embedding_backward ----------------------------------------------------------

TEST_F(TrainOpsCudaTest, EmbeddingBackwardScattersIntoDwte) {
  const int V = 50, C = 40, N = 200;
  std::vector<int32_t> tokens(N);
  for (int n = 0; n < N; ++n) tokens[n] = (n * 7) % 23;  // many repeats
  tokens[3] = -1;                                        // out of range: adds nothing
  tokens[10] = V;
  tokens[11] = V - 1;
  const std::vector<float> dout = RoundToBf16(RandomNormal(static_cast<size_t>(N) * C, 1.0f, 1u));
  const std::vector<float> dwte0 = RandomNormal(static_cast<size_t>(V) * C, 1.0f, 2u);

  // The CPU op indexes every token: give it the in-range rows only.
  std::vector<int32_t> ref_tokens;
  std::vector<double> ref_dout;
  for (int n = 0; n < N; ++n) {
    if (tokens[n] < 0 || tokens[n] >= V) continue;
    ref_tokens.push_back(tokens[n]);
    ref_dout.insert(ref_dout.end(), dout.begin() + n * C, dout.begin() + (n + 1) * C);
  }
  std::vector<double> ref = ToDouble(dwte0);
  train::EmbeddingBackward<double>(ref.data(), ref_dout.data(), ref_tokens.data(),
                                   static_cast<long>(ref_tokens.size()), C);

  SR_ASSERT_OK_AND_ASSIGN(auto d_tok, DeviceBuffer<int32_t>::FromHost(tokens, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dout, DeviceBuffer<bf16>::FromHost(ToBf16(dout), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dwte, DeviceBuffer<float>::FromHost(dwte0, stream_));
  SR_ASSERT_OK(embedding_backward(d_dwte.data(), d_dout.data(), d_tok.data(), N, V, C, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto out, Download(d_dwte, dwte0.size(), stream_));
  const auto e = Compare(out, ToFloat(ref));
  EXPECT_LE(e.nmse, kNmseF32Grad) << Describe(e);  // fp32 atomics, a few terms per element
}

// ---- rmsnorm_backward --------------------------------------------------------------

struct RmsShape {
  int N, C;
};

class TrainOpsRmsnormTest : public CudaTest, public ::testing::WithParamInterface<RmsShape> {};

TEST_P(TrainOpsRmsnormTest, AccumulatesLikeCpu) {
  const auto [N, C] = GetParam();
  const size_t n = static_cast<size_t>(N) * C;
  const std::vector<float> inp = RoundToBf16(RandomNormal(n, 1.0f, 11u));
  std::vector<float> weight = RandomNormal(C, 0.1f, 12u);
  for (auto& w : weight) w += 1.0f;
  const std::vector<float> dout = RoundToBf16(RandomNormal(n, 1.0f, 13u));
  // dinp starts non-zero: the op ACCUMULATES into the residual gradient.
  const std::vector<float> dinp0 = RoundToBf16(RandomNormal(n, 0.5f, 14u));
  const std::vector<float> dweight0 = RandomNormal(C, 1.0f, 15u);
  std::vector<float> fwd(n), rstd(N);
  train::RmsNormForward<float>(fwd.data(), rstd.data(), inp.data(), weight.data(), N, C, 1e-5f);

  std::vector<double> ref_dinp = ToDouble(dinp0), ref_dweight = ToDouble(dweight0);
  const std::vector<double> dout_d = ToDouble(dout), inp_d = ToDouble(inp),
                            w_d = ToDouble(weight), rstd_d = ToDouble(rstd);
  train::RmsNormBackward<double>(ref_dinp.data(), ref_dweight.data(), dout_d.data(), inp_d.data(),
                                 w_d.data(), rstd_d.data(), N, C);

  SR_ASSERT_OK_AND_ASSIGN(auto d_inp, DeviceBuffer<bf16>::FromHost(ToBf16(inp), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dout, DeviceBuffer<bf16>::FromHost(ToBf16(dout), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<float>::FromHost(weight, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_rstd, DeviceBuffer<float>::FromHost(rstd, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dinp, DeviceBuffer<bf16>::FromHost(ToBf16(dinp0), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dw, DeviceBuffer<float>::FromHost(dweight0, stream_));
  SR_ASSERT_OK(rmsnorm_backward(d_dinp.data(), d_dw.data(), d_dout.data(), d_inp.data(),
                                d_w.data(), d_rstd.data(), N, C, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dinp16, Download(d_dinp, n, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dw, Download(d_dw, C, stream_));
  const auto ei = Compare(FromBf16(dinp16), ToFloat(ref_dinp));
  EXPECT_LE(ei.nmse, kNmseBf16Out) << "dinp (bf16 out) " << Describe(ei);
  const auto ew = Compare(dw, ToFloat(ref_dweight));
  EXPECT_LE(ew.nmse, kNmseF32Grad) << "dweight (fp32 sums) " << Describe(ew);

  // dweight alone (dinp null), accumulating a second time.
  SR_ASSERT_OK(rmsnorm_backward(nullptr, d_dw.data(), d_dout.data(), d_inp.data(), nullptr,
                                d_rstd.data(), N, C, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dw2, Download(d_dw, C, stream_));
  std::vector<float> ref2(C);
  for (int c = 0; c < C; ++c) ref2[c] = static_cast<float>(2 * ref_dweight[c] - dweight0[c]);
  const auto ew2 = Compare(dw2, ref2);
  EXPECT_LE(ew2.nmse, kNmseF32Grad) << "dweight twice " << Describe(ew2);
}

// {7, 4096}: 128-bit path, one row chunk (deterministic dweight); {300, 100}:
// scalar path (C % 8 != 0), 5 chunks with atomics; {513, 768}: vector path, 9
// chunks.
INSTANTIATE_TEST_SUITE_P(TrainOps, TrainOpsRmsnormTest,
                         ::testing::Values(RmsShape{7, 4096}, RmsShape{300, 100},
                                           RmsShape{513, 768}));

// ---- rope_backward -----------------------------------------------------------------

TEST_F(TrainOpsCudaTest, RopeBackwardIsTransposedRotation) {
  const int B = 2, T = 37, NH = 3, HD = 64;
  std::vector<float> cos_t, sin_t;
  cuda_test::RopeTables(T, HD, &cos_t, &sin_t);
  const size_t n = static_cast<size_t>(B) * T * NH * HD;
  const std::vector<float> dout = RoundToBf16(RandomNormal(n, 1.0f, 21u));
  std::vector<double> ref(n, 0.0);  // the CPU op accumulates; the GPU op overwrites
  const std::vector<double> dout_d = ToDouble(dout), cos_d = ToDouble(cos_t),
                            sin_d = ToDouble(sin_t);
  train::RopeBackward<double>(ref.data(), dout_d.data(), cos_d.data(), sin_d.data(), B, T, NH,
                              HD);

  SR_ASSERT_OK_AND_ASSIGN(auto d_cos, DeviceBuffer<float>::FromHost(cos_t, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_sin, DeviceBuffer<float>::FromHost(sin_t, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dout, DeviceBuffer<bf16>::FromHost(ToBf16(dout), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dinp, DeviceBuffer<bf16>::Create(n));
  SR_ASSERT_OK(d_dinp.Memset(0xFF, stream_));  // NaN garbage: must be overwritten
  SR_ASSERT_OK(rope_backward(d_dinp.data(), d_dout.data(), d_cos.data(), d_sin.data(), B, T, NH,
                             HD, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto out, Download(d_dinp, n, stream_));
  const auto e = Compare(FromBf16(out), ToFloat(ref));
  EXPECT_LE(e.nmse, kNmseBf16Out) << Describe(e);
  EXPECT_TRUE(e.finite);

  // In place (dinp == dout): the same values.
  SR_ASSERT_OK(rope_backward(d_dout.data(), d_dout.data(), d_cos.data(), d_sin.data(), B, T, NH,
                             HD, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto inplace, Download(d_dout, n, stream_));
  EXPECT_EQ(FromBf16(inplace), FromBf16(out));
}

// ---- swiglu_backward -----------------------------------------------------------------

TEST_F(TrainOpsCudaTest, SwigluBackwardMatchesCpu) {
  const long N = 100003;  // not a multiple of the 8-element vectors: a tail
  const std::vector<float> gate = RoundToBf16(RandomNormal(N, 2.0f, 31u));
  const std::vector<float> up = RoundToBf16(RandomNormal(N, 1.0f, 32u));
  const std::vector<float> dout = RoundToBf16(RandomNormal(N, 1.0f, 33u));
  std::vector<double> ref_dg(N, 0.0), ref_du(N, 0.0);  // the CPU op accumulates
  const std::vector<double> gate_d = ToDouble(gate), up_d = ToDouble(up),
                            dout_d = ToDouble(dout);
  train::SwigluBackward<double>(ref_dg.data(), ref_du.data(), dout_d.data(), gate_d.data(),
                                up_d.data(), N);

  SR_ASSERT_OK_AND_ASSIGN(auto d_gate, DeviceBuffer<bf16>::FromHost(ToBf16(gate), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_up, DeviceBuffer<bf16>::FromHost(ToBf16(up), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dout, DeviceBuffer<bf16>::FromHost(ToBf16(dout), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dg, DeviceBuffer<bf16>::Create(N));
  SR_ASSERT_OK_AND_ASSIGN(auto d_du, DeviceBuffer<bf16>::Create(N));

  // Out of place, 128-bit path.
  SR_ASSERT_OK(swiglu_backward(d_dg.data(), d_du.data(), d_dout.data(), d_gate.data(),
                               d_up.data(), N, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dg, Download(d_dg, N, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto du, Download(d_du, N, stream_));
  const auto eg = Compare(FromBf16(dg), ToFloat(ref_dg));
  const auto eu = Compare(FromBf16(du), ToFloat(ref_du));
  EXPECT_LE(eg.nmse, kNmseBf16Out) << "dgate " << Describe(eg);
  EXPECT_LE(eu.nmse, kNmseBf16Out) << "dup " << Describe(eu);

  // Misaligned pointers (scalar path) over elements [1, N).
  SR_ASSERT_OK(d_dg.Memset(0, stream_));
  SR_ASSERT_OK(swiglu_backward(d_dg.data() + 1, d_du.data() + 1, d_dout.data() + 1,
                               d_gate.data() + 1, d_up.data() + 1, N - 1, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dg1, Download(d_dg, N, stream_));
  const std::vector<float> dg1f = FromBf16(dg1);
  EXPECT_EQ(dg1f[0], 0.0f);  // outside the range: untouched
  const std::vector<float> ref_dg1 = ToFloat(ref_dg);
  const auto eg1 = Compare(absl::MakeConstSpan(dg1f).subspan(1),
                           absl::MakeConstSpan(ref_dg1).subspan(1));
  EXPECT_LE(eg1.nmse, kNmseBf16Out) << "dgate, scalar path " << Describe(eg1);

  // In place: dgate over gate, dup over up.
  SR_ASSERT_OK(swiglu_backward(d_gate.data(), d_up.data(), d_dout.data(), d_gate.data(),
                               d_up.data(), N, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dg_in, Download(d_gate, N, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto du_in, Download(d_up, N, stream_));
  EXPECT_EQ(FromBf16(dg_in), FromBf16(dg));
  EXPECT_EQ(FromBf16(du_in), FromBf16(du));
}

// ---- matmul_backward ---------------------------------------------------------------

struct MatmulBwdShape {
  int N, C, OC;
  float beta;
};

class TrainOpsMatmulTest : public CudaTest,
                           public ::testing::WithParamInterface<MatmulBwdShape> {};

TEST_P(TrainOpsMatmulTest, AllGradientsMatchLinearBackward) {
  const auto [N, C, OC, beta] = GetParam();
  const std::vector<float> dout =
      RoundToBf16(RandomNormal(static_cast<size_t>(N) * OC, 1.0f, 41u));
  const std::vector<float> inp = RoundToBf16(RandomNormal(static_cast<size_t>(N) * C, 1.0f, 42u));
  const std::vector<float> w = RoundToBf16(RandomNormal(static_cast<size_t>(OC) * C, 0.05f, 43u));
  const std::vector<float> dinp0 =
      RoundToBf16(RandomNormal(static_cast<size_t>(N) * C, 0.3f, 44u));
  const std::vector<float> dw0 = RandomNormal(static_cast<size_t>(OC) * C, 1.0f, 45u);
  const std::vector<float> db0 = RandomNormal(OC, 1.0f, 46u);

  std::vector<double> ref_dinp = ToDouble(dinp0), ref_dw = ToDouble(dw0), ref_db = ToDouble(db0);
  for (double& x : ref_dinp) x *= beta;  // the CPU op always adds
  const std::vector<double> dout_d = ToDouble(dout), inp_d = ToDouble(inp), w_d = ToDouble(w);
  train::LinearBackward<double>(ref_dinp.data(), ref_dw.data(), ref_db.data(), dout_d.data(),
                                inp_d.data(), w_d.data(), N, C, OC);

  SR_ASSERT_OK_AND_ASSIGN(auto d_dout, DeviceBuffer<bf16>::FromHost(ToBf16(dout), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_inp, DeviceBuffer<bf16>::FromHost(ToBf16(inp), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<bf16>::FromHost(ToBf16(w), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dinp, DeviceBuffer<bf16>::FromHost(ToBf16(dinp0), stream_));
  if (beta == 0.0f) SR_ASSERT_OK(d_dinp.Memset(0xFF, stream_));  // NaN: beta 0 must not read it
  SR_ASSERT_OK_AND_ASSIGN(auto d_dw, DeviceBuffer<float>::FromHost(dw0, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_db, DeviceBuffer<float>::FromHost(db0, stream_));
  SR_ASSERT_OK(matmul_backward(d_dinp.data(), d_dw.data(), d_db.data(), d_dout.data(),
                               d_inp.data(), d_w.data(), N, C, OC, beta, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dinp, Download(d_dinp, ref_dinp.size(), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dw, Download(d_dw, ref_dw.size(), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto db, Download(d_db, ref_db.size(), stream_));
  const auto ei = Compare(FromBf16(dinp), ToFloat(ref_dinp));
  EXPECT_LE(ei.nmse, kNmseBf16Out) << "dinp (bf16 out) " << Describe(ei);
  EXPECT_TRUE(ei.finite);
  const auto ew = Compare(dw, ToFloat(ref_dw));
  EXPECT_LE(ew.nmse, kNmseBf16Gemm) << "dweight (bf16 GEMM, fp32 C) " << Describe(ew);
  const auto eb = Compare(db, ToFloat(ref_db));
  EXPECT_LE(eb.nmse, kNmseF32Grad) << "dbias (fp32 sums) " << Describe(eb);
}

std::string MatmulBwdName(const ::testing::TestParamInfo<MatmulBwdShape>& info) {
  const MatmulBwdShape& s = info.param;
  return absl::StrFormat("N%d_C%d_OC%d_beta%d", s.N, s.C, s.OC, static_cast<int>(s.beta));
}

// {1000, 64, 48}: dbias over 16 row chunks (atomics).
INSTANTIATE_TEST_SUITE_P(
    TrainOps, TrainOpsMatmulTest,
    ::testing::Values(MatmulBwdShape{64, 128, 96, 0.0f}, MatmulBwdShape{64, 128, 96, 1.0f},
                      MatmulBwdShape{33, 200, 72, 0.0f}, MatmulBwdShape{33, 200, 72, 1.0f},
                      MatmulBwdShape{256, 512, 1376, 1.0f}, MatmulBwdShape{1000, 64, 48, 0.0f}),
    MatmulBwdName);

TEST_F(TrainOpsCudaTest, MatmulBackwardNullOutputsAreSkipped) {
  const int N = 40, C = 72, OC = 56;
  const std::vector<float> dout = RoundToBf16(RandomNormal(static_cast<size_t>(N) * OC, 1.0f, 51u));
  const std::vector<float> inp = RoundToBf16(RandomNormal(static_cast<size_t>(N) * C, 1.0f, 52u));
  const std::vector<float> w = RoundToBf16(RandomNormal(static_cast<size_t>(OC) * C, 0.05f, 53u));
  std::vector<double> ref_dinp(static_cast<size_t>(N) * C, 0.0),
      ref_dw(static_cast<size_t>(OC) * C, 0.0), ref_db(OC, 0.0);
  const std::vector<double> dout_d = ToDouble(dout), inp_d = ToDouble(inp), w_d = ToDouble(w);
  train::LinearBackward<double>(ref_dinp.data(), ref_dw.data(), ref_db.data(), dout_d.data(),
                                inp_d.data(), w_d.data(), N, C, OC);

  SR_ASSERT_OK_AND_ASSIGN(auto d_dout, DeviceBuffer<bf16>::FromHost(ToBf16(dout), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_inp, DeviceBuffer<bf16>::FromHost(ToBf16(inp), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<bf16>::FromHost(ToBf16(w), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dinp, DeviceBuffer<bf16>::Create(ref_dinp.size()));
  SR_ASSERT_OK_AND_ASSIGN(auto d_dw, DeviceBuffer<float>::Create(ref_dw.size()));
  SR_ASSERT_OK_AND_ASSIGN(auto d_db, DeviceBuffer<float>::Create(ref_db.size()));
  SR_ASSERT_OK(d_dw.Memset(0, stream_));
  SR_ASSERT_OK(d_db.Memset(0, stream_));

  // Only dbias; inp and weight may then be null too.
  SR_ASSERT_OK(matmul_backward(nullptr, nullptr, d_db.data(), d_dout.data(), nullptr, nullptr, N,
                               C, OC, 0.0f, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto db, Download(d_db, OC, stream_));
  const auto eb = Compare(db, ToFloat(ref_db));
  EXPECT_LE(eb.nmse, kNmseF32Grad) << "dbias alone " << Describe(eb);

  // Only dweight.
  SR_ASSERT_OK(matmul_backward(nullptr, d_dw.data(), nullptr, d_dout.data(), d_inp.data(),
                               nullptr, N, C, OC, 0.0f, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dw, Download(d_dw, ref_dw.size(), stream_));
  const auto ew = Compare(dw, ToFloat(ref_dw));
  EXPECT_LE(ew.nmse, kNmseBf16Gemm) << "dweight alone " << Describe(ew);

  // Only dinp, overwriting NaN garbage.
  SR_ASSERT_OK(d_dinp.Memset(0xFF, stream_));
  SR_ASSERT_OK(matmul_backward(d_dinp.data(), nullptr, nullptr, d_dout.data(), nullptr,
                               d_w.data(), N, C, OC, 0.0f, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dinp, Download(d_dinp, ref_dinp.size(), stream_));
  const auto ei = Compare(FromBf16(dinp), ToFloat(ref_dinp));
  EXPECT_LE(ei.nmse, kNmseBf16Out) << "dinp alone " << Describe(ei);
  EXPECT_TRUE(ei.finite);

  // OC == 0: dinp = beta * dinp is all that is left (beta 0: zeros).
  SR_ASSERT_OK(d_dinp.Memset(0xFF, stream_));
  SR_ASSERT_OK(matmul_backward(d_dinp.data(), d_dw.data(), d_db.data(), nullptr, d_inp.data(),
                               d_w.data(), N, C, 0, 0.0f, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto zeros, Download(d_dinp, ref_dinp.size(), stream_));
  EXPECT_EQ(FromBf16(zeros), std::vector<float>(ref_dinp.size(), 0.0f));
}

// ---- distill_loss_backward -------------------------------------------------------

struct DistillCase {
  int N, V;
  float alpha, temperature;
  bool teacher;     // false: teacher null (plain CE; alpha must be 0)
  bool cpu_float;   // reference DistillLoss<float> instead of <double>
};

std::string DistillName(const ::testing::TestParamInfo<DistillCase>& info) {
  const DistillCase& c = info.param;
  return absl::StrFormat("N%d_V%d_alpha%d_T%d%s", c.N, c.V, static_cast<int>(c.alpha * 10),
                         static_cast<int>(c.temperature), c.teacher ? "" : "_noteacher");
}

class TrainOpsDistillTest : public CudaTest, public ::testing::WithParamInterface<DistillCase> {};

template <typename T>
absl::StatusOr<train::DistillLossValue> CpuDistill(const DistillCase& c,
                                                   const std::vector<float>& student,
                                                   const std::vector<float>& teacher,
                                                   const std::vector<int32_t>& targets,
                                                   std::vector<float>* grad) {
  const std::vector<T> s(student.begin(), student.end()), t(teacher.begin(), teacher.end());
  std::vector<T> d(s.size());
  train::DistillLossOptions o;
  o.divergence = train::Divergence::kForwardKL;
  o.alpha = c.alpha;
  o.temperature = c.temperature;
  train::TeacherLogits<T> tl{std::span<const T>(t), c.V};
  absl::StatusOr<train::DistillLossValue> v = train::DistillLoss<T>(
      o, std::span<const T>(s), c.N, c.V, tl, std::span<const int32_t>(targets), std::span<T>(d));
  grad->assign(d.begin(), d.end());
  return v;
}

TEST_P(TrainOpsDistillTest, LossAndGradientMatchDistillLoss) {
  const DistillCase c = GetParam();
  const size_t n = static_cast<size_t>(c.N) * c.V;
  // A teacher with logits of a few units and a correlated student: a KL of
  // order 0.1..1 and softmaxes that are neither flat nor one-hot.
  const std::vector<float> teacher = RoundToBf16(RandomNormal(n, 2.0f, 61u + c.V));
  std::vector<float> student = RandomNormal(n, 1.0f, 62u + c.V);
  for (size_t i = 0; i < n; ++i) student[i] += 0.7f * teacher[i];
  student = RoundToBf16(student);
  std::vector<int32_t> targets(c.N);
  int labelled = 0;
  for (int r = 0; r < c.N; ++r) {
    if (r % 5 == 1) {
      targets[r] = -100;  // ignored (HF's -100)
    } else {
      targets[r] = r % 7 == 3 ? c.V - 1 : (r == 0 ? 0 : (r * 7919) % c.V);
      ++labelled;
    }
  }
  ASSERT_GT(labelled, 0);

  std::vector<float> ref_grad;
  absl::StatusOr<train::DistillLossValue> ref =
      c.cpu_float ? CpuDistill<float>(c, student, teacher, targets, &ref_grad)
                  : CpuDistill<double>(c, student, teacher, targets, &ref_grad);
  ASSERT_TRUE(ref.ok()) << ref.status();

  SR_ASSERT_OK_AND_ASSIGN(auto d_logits, DeviceBuffer<bf16>::FromHost(ToBf16(student), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_teacher, DeviceBuffer<bf16>::FromHost(ToBf16(teacher), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_targets, DeviceBuffer<int32_t>::FromHost(targets, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_kl, DeviceBuffer<float>::Create(c.N));
  SR_ASSERT_OK_AND_ASSIGN(auto d_ce, DeviceBuffer<float>::Create(c.N));
  SR_ASSERT_OK(d_kl.Memset(0xFF, stream_));
  SR_ASSERT_OK(d_ce.Memset(0xFF, stream_));
  SR_ASSERT_OK(distill_loss_backward(d_logits.data(), d_kl.data(), d_ce.data(),
                                     c.teacher ? d_teacher.data() : nullptr, d_targets.data(),
                                     c.N, c.V, c.alpha, c.temperature, 1.0f / c.N,
                                     1.0f / labelled, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto grad16, Download(d_logits, n, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto kl_rows, Download(d_kl, c.N, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto ce_rows, Download(d_ce, c.N, stream_));

  const auto eg = Compare(FromBf16(grad16), ref_grad);
  EXPECT_LE(eg.nmse, kNmseBf16Out) << "gradient (bf16 out) " << Describe(eg);
  EXPECT_TRUE(eg.finite);

  double kl_sum = 0.0, ce_sum = 0.0;
  for (int r = 0; r < c.N; ++r) {
    kl_sum += kl_rows[r];
    ce_sum += ce_rows[r];
    if (targets[r] < 0) {
      EXPECT_EQ(ce_rows[r], 0.0f) << "row " << r;
    }
    if (!c.teacher) {
      EXPECT_EQ(kl_rows[r], 0.0f) << "row " << r;
    }
  }
  const double kl_mean = kl_sum / c.N;
  const double ce_mean = ce_sum / labelled;
  EXPECT_NEAR(ce_mean, ref->cross_entropy, kLossAbs * (1.0 + std::abs(ref->cross_entropy)));
  if (c.teacher) {
    EXPECT_NEAR(kl_mean, ref->divergence, kLossAbs * (1.0 + std::abs(ref->divergence)));
    const double t2 = static_cast<double>(c.temperature) * c.temperature;
    const double loss = c.alpha * t2 * kl_mean + (1.0 - c.alpha) * ce_mean;
    EXPECT_NEAR(loss, ref->loss, kLossAbs * (1.0 + t2) * (1.0 + std::abs(ref->loss)));
  }
}

// V = 1000 and 128256 take the 128-bit path, V = 997 the scalar one.
INSTANTIATE_TEST_SUITE_P(
    TrainOps, TrainOpsDistillTest,
    ::testing::Values(DistillCase{37, 1000, 0.0f, 1.0f, false, false},
                      DistillCase{37, 1000, 0.0f, 2.0f, true, false},
                      DistillCase{37, 1000, 0.5f, 1.0f, true, false},
                      DistillCase{37, 1000, 0.5f, 2.0f, true, false},
                      DistillCase{37, 1000, 1.0f, 1.0f, true, false},
                      DistillCase{37, 1000, 1.0f, 2.0f, true, false},
                      DistillCase{21, 997, 0.5f, 2.0f, true, false},
                      DistillCase{4, 128256, 0.5f, 2.0f, true, true},
                      DistillCase{3, 128256, 0.0f, 1.0f, false, false}),
    DistillName);

// ---- global_norm_squared / clip_scale ------------------------------------------------

TEST_F(TrainOpsCudaTest, GlobalNormSquaredIsDeterministicAndAccurate) {
  const long n = 1000003;  // odd, prime-ish: a vector tail and a partial block
  const std::vector<float> g = RandomNormal(n, 0.01f, 71u);
  SR_ASSERT_OK_AND_ASSIGN(auto d_g, DeviceBuffer<float>::FromHost(g, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<float>::Create(2));

  auto expect_sum = [&](long offset, long count) {
    double ref = 0.0;
    for (long i = offset; i < offset + count; ++i) ref += static_cast<double>(g[i]) * g[i];
    float first = 0.0f, second = 0.0f;
    ASSERT_TRUE(global_norm_squared(d_out.data(), d_g.data() + offset, count, stream_).ok());
    ASSERT_TRUE(d_out.CopyToHost(absl::MakeSpan(&first, 1), stream_).ok());
    ASSERT_TRUE(global_norm_squared(d_out.data(), d_g.data() + offset, count, stream_).ok());
    ASSERT_TRUE(d_out.CopyToHost(absl::MakeSpan(&second, 1), stream_).ok());
    // fp32 partial sums of positive terms: relative error ~1e-7 x log(terms).
    EXPECT_NEAR(first, ref, 1e-5 * ref + 1e-30) << "offset " << offset << " n " << count;
    EXPECT_EQ(first, second) << "not deterministic";  // same bits run to run
  };
  expect_sum(0, n);        // 128-bit path
  expect_sum(1, n - 1);    // misaligned: scalar path
  expect_sum(0, 5);
  expect_sum(3, 1);

  // n == 0 writes 0.
  const std::vector<float> junk = {123.0f};
  SR_ASSERT_OK(d_out.CopyFromHost(junk, stream_));
  SR_ASSERT_OK(global_norm_squared(d_out.data(), d_g.data(), 0, stream_));
  float zero = -1.0f;
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(&zero, 1), stream_));
  EXPECT_EQ(zero, 0.0f);
}

TEST_F(TrainOpsCudaTest, ClipScaleMatchesClipGradNormFactor) {
  const std::vector<float> norms_sq = {16.0f, 0.25f, std::numeric_limits<float>::infinity(),
                                       std::numeric_limits<float>::quiet_NaN()};
  SR_ASSERT_OK_AND_ASSIGN(auto d_ns, DeviceBuffer<float>::FromHost(norms_sq, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_scale, DeviceBuffer<float>::Create(1));
  auto scale_for = [&](int i, float max_norm) -> float {
    float s = -1.0f;
    EXPECT_TRUE(clip_scale(d_scale.data(), d_ns.data() + i, max_norm, stream_).ok());
    EXPECT_TRUE(d_scale.CopyToHost(absl::MakeSpan(&s, 1), stream_).ok());
    return s;
  };
  EXPECT_NEAR(scale_for(0, 1.0f), 1.0 / (4.0 + 1e-6), 1e-7);  // norm 4 > 1: clipped
  EXPECT_EQ(scale_for(0, 10.0f), 1.0f);                      // under max_norm
  EXPECT_EQ(scale_for(0, 0.0f), 1.0f);                       // clipping off
  EXPECT_NEAR(scale_for(1, 0.1f), 0.1 / (0.5 + 1e-6), 1e-7);
  EXPECT_EQ(scale_for(2, 1.0f), 1.0f);  // non-finite norm: left to the caller
  EXPECT_EQ(scale_for(3, 1.0f), 1.0f);
}

// ---- adamw_update -------------------------------------------------------------------

enum class ScaleMode { kNone, kHost, kDevice };

struct AdamCase {
  float weight_decay;
  bool bf16_copy;
  ScaleMode scale;
};

class TrainOpsAdamWTest : public CudaTest, public ::testing::WithParamInterface<AdamCase> {};

TEST_P(TrainOpsAdamWTest, ThreeStepsMatchCpuUpdate) {
  const AdamCase c = GetParam();
  const long n = 10007;
  const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f;
  const float scale = c.scale == ScaleMode::kNone ? 1.0f : 0.37f;
  // The CPU update gets the float-rounded hyper-parameters, so that both sides
  // use the same betas (0.999f is not 0.999).
  train::AdamWOptions o;
  o.beta1 = beta1;
  o.beta2 = beta2;
  o.eps = eps;
  o.weight_decay = c.weight_decay;

  std::vector<float> p = RandomNormal(n, 0.5f, 81u), m(n, 0.0f), v(n, 0.0f);
  SR_ASSERT_OK_AND_ASSIGN(auto d_p, DeviceBuffer<float>::FromHost(p, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_m, DeviceBuffer<float>::FromHost(m, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_v, DeviceBuffer<float>::FromHost(v, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_p16, DeviceBuffer<bf16>::Create(n));
  SR_ASSERT_OK_AND_ASSIGN(auto d_g, DeviceBuffer<float>::Create(n));
  const std::vector<float> scale_host = {scale};
  SR_ASSERT_OK_AND_ASSIGN(auto d_scale, DeviceBuffer<float>::FromHost(scale_host, stream_));

  for (int step = 1; step <= 3; ++step) {
    const std::vector<float> g = RandomNormal(n, 0.01f, 90u + step);
    SR_ASSERT_OK(d_g.CopyFromHost(g, stream_));
    std::vector<float> g_scaled(n);
    for (long i = 0; i < n; ++i) g_scaled[i] = g[i] * scale;  // the kernel's fp32 product
    train::AdamW::Update(std::span<float>(p), std::span<const float>(g_scaled),
                         std::span<float>(m), std::span<float>(v), o, static_cast<double>(lr),
                         c.weight_decay, step);

    SR_ASSERT_OK(adamw_update(d_p.data(), c.bf16_copy ? d_p16.data() : nullptr, d_g.data(),
                              d_m.data(), d_v.data(), n, lr, beta1, beta2, eps, c.weight_decay,
                              step, c.scale == ScaleMode::kHost ? scale : 1.0f,
                              c.scale == ScaleMode::kDevice ? d_scale.data() : nullptr, stream_));
    SR_ASSERT_OK_AND_ASSIGN(auto gp, Download(d_p, n, stream_));
    SR_ASSERT_OK_AND_ASSIGN(auto gm, Download(d_m, n, stream_));
    SR_ASSERT_OK_AND_ASSIGN(auto gv, Download(d_v, n, stream_));
    long bad = 0;
    double worst = 0.0;
    for (long i = 0; i < n; ++i) {
      // fp32 vs double: ~1.5 ulp of p per step plus lr x (1e-6 of an update of ~1).
      const double err = std::abs(static_cast<double>(gp[i]) - p[i]);
      const double tol = 2e-6 * std::abs(p[i]) + 1e-7;
      if (err > tol) ++bad;
      worst = std::max(worst, err / tol);
    }
    EXPECT_EQ(bad, 0) << "step " << step << " worst err/tol " << worst;
    const auto em = Compare(gm, m);
    const auto ev = Compare(gv, v);
    EXPECT_LE(em.nmse, 1e-11) << "m, step " << step << " " << Describe(em);
    EXPECT_LE(ev.nmse, 1e-11) << "v, step " << step << " " << Describe(ev);
    if (c.bf16_copy) {
      SR_ASSERT_OK_AND_ASSIGN(auto gp16, Download(d_p16, n, stream_));
      EXPECT_EQ(FromBf16(gp16), RoundToBf16(gp)) << "bf16 copy, step " << step;
    }
  }
}

std::string AdamName(const ::testing::TestParamInfo<AdamCase>& info) {
  const AdamCase& c = info.param;
  const char* s = c.scale == ScaleMode::kNone ? "noscale"
                  : c.scale == ScaleMode::kHost ? "hostscale"
                                                : "devscale";
  return absl::StrFormat("wd%d_%s_%s", static_cast<int>(c.weight_decay * 100),
                         c.bf16_copy ? "bf16copy" : "nocopy", s);
}

INSTANTIATE_TEST_SUITE_P(TrainOps, TrainOpsAdamWTest,
                         ::testing::Values(AdamCase{0.0f, false, ScaleMode::kNone},
                                           AdamCase{0.1f, true, ScaleMode::kNone},
                                           AdamCase{0.1f, true, ScaleMode::kHost},
                                           AdamCase{0.1f, false, ScaleMode::kDevice}),
                         AdamName);

// ---- argument checks (no device needed: they fail before any CUDA call) ----------

void ExpectInvalid(const absl::Status& st, const char* fn) {
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_NE(st.message().find(fn), std::string::npos) << st;
}

TEST(TrainOpsArgsTest, BadArgumentsAreInvalidArgument) {
  // Non-null dummies: never dereferenced, every call below fails its checks.
  float f[4] = {};
  bf16 b[4] = {};
  int32_t t[4] = {};
  float* fp = f;
  bf16* bp = b;
  bf16* bp2 = b + 1;
  cudaStream_t s = nullptr;

  ExpectInvalid(embedding_backward(nullptr, bp, t, 2, 5, 3, s), "embedding_backward");
  ExpectInvalid(embedding_backward(fp, bp, nullptr, 2, 5, 3, s), "embedding_backward");
  ExpectInvalid(embedding_backward(fp, bp, t, -1, 5, 3, s), "embedding_backward");

  ExpectInvalid(rmsnorm_backward(bp, fp, nullptr, bp2, fp, fp, 2, 3, s), "rmsnorm_backward");
  ExpectInvalid(rmsnorm_backward(bp, fp, bp2, bp2, fp, nullptr, 2, 3, s), "rmsnorm_backward");
  ExpectInvalid(rmsnorm_backward(bp, fp, bp2, bp2, fp, fp, -2, 3, s), "rmsnorm_backward");
  ExpectInvalid(rmsnorm_backward(bp, fp, bp, bp2, fp, fp, 2, 3, s), "rmsnorm_backward");  // alias

  ExpectInvalid(rope_backward(bp, bp, fp, fp, 1, 2, 2, 3, s), "rope_backward");  // odd HD
  ExpectInvalid(rope_backward(bp, bp, nullptr, fp, 1, 2, 2, 4, s), "rope_backward");
  ExpectInvalid(rope_backward(bp, bp, fp, fp, -1, 2, 2, 4, s), "rope_backward");

  ExpectInvalid(swiglu_backward(bp, bp2, bp, bp, bp2, -1, s), "swiglu_backward");
  ExpectInvalid(swiglu_backward(bp, bp2, bp, bp, nullptr, 4, s), "swiglu_backward");
  ExpectInvalid(swiglu_backward(bp, bp, bp, bp, bp2, 4, s), "swiglu_backward");  // dgate == dup

  ExpectInvalid(matmul_backward(bp, fp, fp, bp, bp, bp2, -1, 2, 3, 0.0f, s), "matmul_backward");
  ExpectInvalid(matmul_backward(bp, fp, fp, nullptr, bp, bp2, 2, 2, 3, 0.0f, s),
                "matmul_backward");
  ExpectInvalid(matmul_backward(bp2, nullptr, nullptr, bp, nullptr, nullptr, 2, 2, 3, 1.0f, s),
                "matmul_backward");  // dinp wanted, weight null
  ExpectInvalid(matmul_backward(nullptr, fp, nullptr, bp, nullptr, nullptr, 2, 2, 3, 1.0f, s),
                "matmul_backward");  // dweight wanted, inp null
  ExpectInvalid(matmul_backward(bp, nullptr, nullptr, bp2, nullptr, bp2, 2, 2, 3,
                                std::numeric_limits<float>::quiet_NaN(), s),
                "matmul_backward");

  const float nan = std::numeric_limits<float>::quiet_NaN();
  auto distill = [&](bf16* logits, const bf16* teacher, const int32_t* targets, int N, int V,
                     float alpha, float temp) {
    return distill_loss_backward(logits, fp, fp, teacher, targets, N, V, alpha, temp, 0.5f, 0.5f,
                                 s);
  };
  ExpectInvalid(distill(bp, bp2, t, 2, 4, -0.1f, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, t, 2, 4, 1.5f, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, t, 2, 4, nan, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, t, 2, 4, 0.5f, 0.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, t, 2, 4, 0.5f, -1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, t, 2, 4, 0.5f, nan), "distill_loss_backward");
  ExpectInvalid(distill(bp, nullptr, t, 2, 4, 0.5f, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(nullptr, bp2, t, 2, 4, 0.5f, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, nullptr, 2, 4, 0.5f, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, t, -1, 4, 0.5f, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp2, t, 2, 0, 0.5f, 1.0f), "distill_loss_backward");
  ExpectInvalid(distill(bp, bp, t, 2, 4, 0.5f, 1.0f), "distill_loss_backward");  // alias
  ExpectInvalid(distill_loss_backward(bp, fp, fp, bp2, t, 2, 4, 0.5f, 1.0f, -1.0f, 0.5f, s),
                "distill_loss_backward");  // inv_rows < 0

  ExpectInvalid(global_norm_squared(fp, fp, -1, s), "global_norm_squared");
  ExpectInvalid(global_norm_squared(nullptr, fp, 4, s), "global_norm_squared");
  ExpectInvalid(global_norm_squared(fp, nullptr, 4, s), "global_norm_squared");

  auto adamw = [&](float* m, long n, float lr, float b1, float b2, float eps, float wd, int step) {
    return adamw_update(fp, bp, fp, m, fp, n, lr, b1, b2, eps, wd, step, 1.0f, nullptr, s);
  };
  ExpectInvalid(adamw(nullptr, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1), "adamw_update");
  ExpectInvalid(adamw(fp, -1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1), "adamw_update");
  ExpectInvalid(adamw(fp, 4, -1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1), "adamw_update");
  ExpectInvalid(adamw(fp, 4, 1e-3f, 1.0f, 0.999f, 1e-8f, 0.0f, 1), "adamw_update");
  ExpectInvalid(adamw(fp, 4, 1e-3f, 0.9f, -0.1f, 1e-8f, 0.0f, 1), "adamw_update");
  ExpectInvalid(adamw(fp, 4, 1e-3f, 0.9f, 0.999f, 0.0f, 0.0f, 1), "adamw_update");
  ExpectInvalid(adamw(fp, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, -0.1f, 1), "adamw_update");
  ExpectInvalid(adamw(fp, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0), "adamw_update");
  ExpectInvalid(adamw_update(fp, bp, fp, fp, fp, 4, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 1, nan,
                             nullptr, s),
                "adamw_update");

  ExpectInvalid(clip_scale(nullptr, fp, 1.0f, s), "clip_scale");
  ExpectInvalid(clip_scale(fp, nullptr, 1.0f, s), "clip_scale");
  ExpectInvalid(clip_scale(fp, fp, nan, s), "clip_scale");
}

}  // namespace
}  // namespace shrinkray
