// The Llama forward ops on the GPU (embedding, matmul, residual, RoPE,
// attention) against their CPU references in core/kernels/cpu/ops.h.
// Without a CUDA device every test SKIPS.
//
// Tolerances (nmse = Σ(gpu - cpu)² / Σ cpu²):
//  * fp32 ops: only summation order differs: nmse <= 1e-10.
//  * bf16 in, fp32 out (matmul): exact bf16 products, fp32 accumulation on
//    tensor cores (whose adders may truncate): nmse <= 1e-8.
//  * bf16 out: one rounding to 8 significant bits (rel. error <= 2^-9,
//    nmse ~3e-6): nmse <= 1e-5.
//  * bf16 tensor-core attention: additionally P is rounded to bf16 before
//    P·V (flash-attention practice): nmse <= 1e-4 (measured ~1e-5 class).
#include <cstdint>
#include <vector>

#include "core/kernels/cpu/ops.h"
#include "core/kernels/cuda/ops.h"
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

constexpr double kNmseF32 = 1e-10;
constexpr double kNmseBf16In = 1e-8;
constexpr double kNmseBf16Out = 1e-5;
constexpr double kNmseFlashBf16 = 1e-4;

class LlamaOpsCudaTest : public CudaTest {};

TEST_F(LlamaOpsCudaTest, EmbeddingMatchesLookup) {
  const int V = 50, C = 24, N = 9;
  const std::vector<float> wte = RandomNormal(static_cast<size_t>(V) * C, 1.0f, 1u);
  const std::vector<int32_t> tokens = {0, 49, 7, 7, 13, -1, 50, 3, 21};  // -1, 50: out of range
  std::vector<float> ref(static_cast<size_t>(N) * C, 0.0f);
  for (int n = 0; n < N; ++n) {
    if (tokens[n] < 0 || tokens[n] >= V) continue;
    for (int c = 0; c < C; ++c) ref[n * C + c] = wte[tokens[n] * C + c];
  }
  SR_ASSERT_OK_AND_ASSIGN(auto d_tok, DeviceBuffer<int32_t>::FromHost(tokens, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_wte, DeviceBuffer<float>::FromHost(wte, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<float>::Create(ref.size()));
  SR_ASSERT_OK(embedding_forward(d_out.data(), d_tok.data(), d_wte.data(), N, V, C, stream_));
  std::vector<float> out(ref.size());
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(out), stream_));
  EXPECT_EQ(out, ref);

  SR_ASSERT_OK_AND_ASSIGN(auto d_wte16, DeviceBuffer<bf16>::FromHost(ToBf16(wte), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out16, DeviceBuffer<bf16>::Create(ref.size()));
  SR_ASSERT_OK(embedding_forward(d_out16.data(), d_tok.data(), d_wte16.data(), N, V, C, stream_));
  std::vector<bf16> out16(ref.size());
  SR_ASSERT_OK(d_out16.CopyToHost(absl::MakeSpan(out16), stream_));
  EXPECT_EQ(FromBf16(out16), RoundToBf16(ref));
}

struct MatmulShape {
  int N, C, OC;
};

class MatmulCudaTest : public CudaTest, public ::testing::WithParamInterface<MatmulShape> {};

TEST_P(MatmulCudaTest, AllPrecisionsMatchCpu) {
  const auto [N, C, OC] = GetParam();
  const std::vector<float> inp = RoundToBf16(RandomNormal(static_cast<size_t>(N) * C, 1.0f, 11u));
  const std::vector<float> w = RoundToBf16(RandomNormal(static_cast<size_t>(OC) * C, 0.05f, 12u));
  const std::vector<float> bias = RandomNormal(OC, 0.1f, 13u);
  std::vector<float> ref(static_cast<size_t>(N) * OC), ref_nb(ref.size());
  matmul_forward(ref.data(), inp.data(), w.data(), bias.data(), N, C, OC);
  matmul_forward(ref_nb.data(), inp.data(), w.data(), nullptr, N, C, OC);

  SR_ASSERT_OK_AND_ASSIGN(auto d_inp, DeviceBuffer<float>::FromHost(inp, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<float>::FromHost(w, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_b, DeviceBuffer<float>::FromHost(bias, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<float>::Create(ref.size()));
  std::vector<float> out(ref.size());

  // fp32 (IEEE, no TF32).
  SR_ASSERT_OK(matmul_forward(d_out.data(), d_inp.data(), d_w.data(), d_b.data(), N, C, OC,
                              stream_));
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(out), stream_));
  const auto e32 = Compare(out, ref);
  EXPECT_LE(e32.nmse, kNmseF32) << "fp32 " << Describe(e32);

  // bf16 in, fp32 out.
  SR_ASSERT_OK_AND_ASSIGN(auto d_inp16, DeviceBuffer<bf16>::FromHost(ToBf16(inp), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w16, DeviceBuffer<bf16>::FromHost(ToBf16(w), stream_));
  SR_ASSERT_OK(matmul_forward(d_out.data(), d_inp16.data(), d_w16.data(), nullptr, N, C, OC,
                              stream_));
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(out), stream_));
  const auto e16f = Compare(out, ref_nb);
  EXPECT_LE(e16f.nmse, kNmseBf16In) << "bf16->fp32 " << Describe(e16f);

  // bf16 in and out.
  SR_ASSERT_OK_AND_ASSIGN(auto d_out16, DeviceBuffer<bf16>::Create(ref.size()));
  SR_ASSERT_OK(matmul_forward(d_out16.data(), d_inp16.data(), d_w16.data(), nullptr, N, C, OC,
                              stream_));
  std::vector<bf16> out16(ref.size());
  SR_ASSERT_OK(d_out16.CopyToHost(absl::MakeSpan(out16), stream_));
  const auto e16 = Compare(FromBf16(out16), ref_nb);
  EXPECT_LE(e16.nmse, kNmseBf16Out) << "bf16 " << Describe(e16);
}

INSTANTIATE_TEST_SUITE_P(Shapes, MatmulCudaTest,
                         ::testing::Values(MatmulShape{1, 64, 64}, MatmulShape{7, 172, 64},
                                           MatmulShape{33, 4096, 1024},
                                           MatmulShape{300, 512, 1376}));

TEST_F(LlamaOpsCudaTest, ResidualMatchesCpu) {
  const long N = 100003;
  const std::vector<float> a = RoundToBf16(RandomNormal(N, 1.0f, 21u));
  const std::vector<float> b = RoundToBf16(RandomNormal(N, 1.0f, 22u));
  std::vector<float> ref(N);
  residual_forward(ref.data(), a.data(), b.data(), N);
  SR_ASSERT_OK_AND_ASSIGN(auto d_a, DeviceBuffer<float>::FromHost(a, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_b, DeviceBuffer<float>::FromHost(b, stream_));
  SR_ASSERT_OK(residual_forward(d_a.data(), d_a.data(), d_b.data(), N, stream_));  // in place
  std::vector<float> out(N);
  SR_ASSERT_OK(d_a.CopyToHost(absl::MakeSpan(out), stream_));
  EXPECT_EQ(out, ref);

  SR_ASSERT_OK_AND_ASSIGN(auto d_a16, DeviceBuffer<bf16>::FromHost(ToBf16(a), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_b16, DeviceBuffer<bf16>::FromHost(ToBf16(b), stream_));
  SR_ASSERT_OK(residual_forward(d_a16.data(), d_a16.data(), d_b16.data(), N, stream_));
  std::vector<bf16> out16(N);
  SR_ASSERT_OK(d_a16.CopyToHost(absl::MakeSpan(out16), stream_));
  EXPECT_EQ(FromBf16(out16), RoundToBf16(ref));  // one rounding of the exact fp32 sum
}

TEST_F(LlamaOpsCudaTest, RopeMatchesCpu) {
  const int B = 2, T = 37, NH = 3, HD = 64;
  std::vector<float> cos_t, sin_t;
  cuda_test::RopeTables(T, HD, &cos_t, &sin_t);
  const size_t n = static_cast<size_t>(B) * T * NH * HD;
  const std::vector<float> x = RoundToBf16(RandomNormal(n, 1.0f, 31u));
  std::vector<float> ref(n);
  rope_forward(ref.data(), x.data(), cos_t.data(), sin_t.data(), B, T, NH, HD);
  SR_ASSERT_OK_AND_ASSIGN(auto d_cos, DeviceBuffer<float>::FromHost(cos_t, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_sin, DeviceBuffer<float>::FromHost(sin_t, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_x, DeviceBuffer<float>::FromHost(x, stream_));
  SR_ASSERT_OK(rope_forward(d_x.data(), d_x.data(), d_cos.data(), d_sin.data(), B, T, NH, HD,
                            stream_));
  std::vector<float> out(n);
  SR_ASSERT_OK(d_x.CopyToHost(absl::MakeSpan(out), stream_));
  const auto e = Compare(out, ref);
  EXPECT_LE(e.nmse, 1e-13) << Describe(e);  // same operation order: expected bit-exact

  SR_ASSERT_OK_AND_ASSIGN(auto d_x16, DeviceBuffer<bf16>::FromHost(ToBf16(x), stream_));
  SR_ASSERT_OK(rope_forward(d_x16.data(), d_x16.data(), d_cos.data(), d_sin.data(), B, T, NH, HD,
                            stream_));
  std::vector<bf16> out16(n);
  SR_ASSERT_OK(d_x16.CopyToHost(absl::MakeSpan(out16), stream_));
  const auto e16 = Compare(FromBf16(out16), ref);
  EXPECT_LE(e16.nmse, kNmseBf16Out) << Describe(e16);
}

struct AttnShape {
  int B, T, NH, NKV, HD, window;
};

std::string AttnName(const ::testing::TestParamInfo<AttnShape>& info) {
  const AttnShape& s = info.param;
  return absl::StrFormat("B%d_T%d_NH%d_NKV%d_HD%d_W%d", s.B, s.T, s.NH, s.NKV, s.HD, s.window);
}

class AttentionCudaTest : public CudaTest, public ::testing::WithParamInterface<AttnShape> {};

TEST_P(AttentionCudaTest, MatchesCpu) {
  const auto [B, T, NH, NKV, HD, window] = GetParam();
  const size_t nq = static_cast<size_t>(B) * T * NH * HD;
  const size_t nkv = static_cast<size_t>(B) * T * NKV * HD;
  // Scores of a few units: a softmax that is neither flat nor one-hot.
  const std::vector<float> q = RoundToBf16(RandomNormal(nq, 1.0f, 41u + T));
  const std::vector<float> k = RoundToBf16(RandomNormal(nkv, 1.0f, 42u + T));
  const std::vector<float> v = RoundToBf16(RandomNormal(nkv, 1.0f, 43u + T));
  std::vector<float> ref(nq);
  attention_forward(ref.data(), q.data(), k.data(), v.data(), B, T, NH, NKV, HD, window);

  // fp32: the tiled kernel where the shape allows (HD 64/128), else SIMT.
  SR_ASSERT_OK_AND_ASSIGN(auto d_q, DeviceBuffer<float>::FromHost(q, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_k, DeviceBuffer<float>::FromHost(k, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_v, DeviceBuffer<float>::FromHost(v, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_o, DeviceBuffer<float>::Create(nq));
  SR_ASSERT_OK(attention_forward(d_o.data(), d_q.data(), d_k.data(), d_v.data(), B, T, NH, NKV,
                                 HD, window, stream_));
  std::vector<float> out(nq);
  SR_ASSERT_OK(d_o.CopyToHost(absl::MakeSpan(out), stream_));
  const auto e32 = Compare(out, ref);
  EXPECT_LE(e32.nmse, kNmseF32) << "fp32 (tiled if HD 64/128) " << Describe(e32);
  // The one-warp-per-query fp32 kernel it replaced for those head sizes.
  SR_ASSERT_OK(attention_forward_simt(d_o.data(), d_q.data(), d_k.data(), d_v.data(), B, T, NH, NKV, HD, window,
                                      stream_));
  SR_ASSERT_OK(d_o.CopyToHost(absl::MakeSpan(out), stream_));
  const auto e32simt = Compare(out, ref);
  EXPECT_LE(e32simt.nmse, kNmseF32) << "fp32 SIMT " << Describe(e32simt);

  // bf16: tensor-core kernel where the shape allows, and the SIMT kernel.
  SR_ASSERT_OK_AND_ASSIGN(auto d_q16, DeviceBuffer<bf16>::FromHost(ToBf16(q), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_k16, DeviceBuffer<bf16>::FromHost(ToBf16(k), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_v16, DeviceBuffer<bf16>::FromHost(ToBf16(v), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_o16, DeviceBuffer<bf16>::Create(nq));
  std::vector<bf16> out16(nq);
  SR_ASSERT_OK(attention_forward(d_o16.data(), d_q16.data(), d_k16.data(), d_v16.data(), B, T,
                                 NH, NKV, HD, window, stream_));
  SR_ASSERT_OK(d_o16.CopyToHost(absl::MakeSpan(out16), stream_));
  const auto etc = Compare(FromBf16(out16), ref);
  EXPECT_LE(etc.nmse, kNmseFlashBf16) << "bf16 (tensor cores if HD 64/128) " << Describe(etc);
  EXPECT_TRUE(etc.finite);

  SR_ASSERT_OK(attention_forward_simt(d_o16.data(), d_q16.data(), d_k16.data(), d_v16.data(), B,
                                      T, NH, NKV, HD, window, stream_));
  SR_ASSERT_OK(d_o16.CopyToHost(absl::MakeSpan(out16), stream_));
  const auto esimt = Compare(FromBf16(out16), ref);
  EXPECT_LE(esimt.nmse, kNmseBf16Out) << "bf16 SIMT " << Describe(esimt);
}

// T around the 64-row tiles (1, 63, 64, 65, 200) and the fp32 kernel's
// 32-row ones (31, 33), GQA groups 1/2/4/8, HD 64 and 128 (tensor cores; fp32
// tiled) and 16/80 (SIMT fallback), sliding windows inside one 32-key tile
// (5) and across tiles (33, 70).
INSTANTIATE_TEST_SUITE_P(
    Shapes, AttentionCudaTest,
    ::testing::Values(AttnShape{1, 1, 4, 2, 64, 0}, AttnShape{2, 63, 4, 2, 64, 0},
                      AttnShape{1, 64, 8, 1, 128, 0}, AttnShape{2, 65, 4, 4, 128, 0},
                      AttnShape{1, 200, 8, 2, 128, 0}, AttnShape{1, 300, 32, 8, 128, 0},
                      AttnShape{2, 37, 4, 2, 16, 0}, AttnShape{1, 50, 2, 1, 80, 0},
                      AttnShape{1, 200, 4, 2, 128, 70}, AttnShape{1, 130, 4, 2, 64, 5},
                      AttnShape{3, 31, 4, 1, 64, 0}, AttnShape{1, 100, 8, 8, 128, 33}),
    AttnName);

TEST_F(LlamaOpsCudaTest, RejectsBadArguments) {
  float* p = nullptr;
  bf16* b = nullptr;
  EXPECT_EQ(matmul_forward(p, p, p, nullptr, 2, 3, 4, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(attention_forward(b, b, b, b, 1, 4, 3, 2, 64, 0, stream_).code(),
            absl::StatusCode::kInvalidArgument);  // NH % NKV != 0
  EXPECT_EQ(rope_forward(p, p, p, p, 1, 1, 1, 3, stream_).code(),
            absl::StatusCode::kInvalidArgument);  // odd HD
  EXPECT_TRUE(matmul_forward(p, p, p, nullptr, 0, 3, 4, stream_).ok());
}

}  // namespace
}  // namespace shrinkray
