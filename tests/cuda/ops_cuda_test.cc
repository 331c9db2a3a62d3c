// CUDA ops against their CPU references (core/kernels/cpu/ops.h), on random
// seeded inputs and a spread of shapes: odd widths (scalar path), widths that
// take the 128-bit vector path, the warp-per-row / block-per-row switch at
// C = 1024, and N = 1, 7, 300 rows. Without a CUDA device every test SKIPS.
//
// Error metric (ggml test-backend-ops style): the normalised mean squared error
//   nmse = sum((gpu - cpu)^2) / sum(cpu^2),
// plus an element-wise bound so that one bad element cannot hide in a sum.
#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "absl/types/span.h"
#include "core/kernels/cpu/ops.h"
#include "core/kernels/cuda/cuda_check.h"
#include "core/kernels/cuda/ops.h"
#include "cuda_test_util.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

// fp32 ops: same math as the CPU op, only the summation order (and expf's
// last bits) differ, i.e. relative errors of ~1e-7..1e-6 -> nmse ~1e-13.
constexpr double kNmseF32 = 1e-10;
// Element-wise, relative to the reference magnitude: |gpu - cpu| <= tol * (1 + |cpu|).
constexpr double kElemTolF32 = 2e-6;
// rstd is one fp32 value per row: relative error from the sum order alone.
constexpr double kRstdRelTol = 1e-5;

// bf16 ops: the reference runs in fp32 on the same bf16-rounded inputs, so the
// only real difference is rounding the output to bf16 (8 significant bits):
// at most half an ulp, i.e. a relative error of at most 2^-8 and on average
// about 2^-9, giving nmse ~3e-6 over many elements (<= 2^-16 ~ 1.5e-5 even in
// the worst case). 1e-5 is only meaningful as a statistic, so it is checked
// for at least kMinNmseCount elements; the element-wise bound always is.
constexpr double kNmseBf16 = 1e-5;
constexpr long kMinNmseCount = 64;
// Half an ulp of bf16 relative to the value, plus fp32 slack for the
// reference's own last bits.
constexpr double kElemRelTolBf16 = 0.00390625 + 1e-5;  // 2^-8 + slack

struct ErrorStats {
  double nmse = 0.0;
  double max_abs = 0.0;        // max |a - b|
  double max_scaled = 0.0;     // max |a - b| / (1 + |b|)
  double max_rel = 0.0;        // max |a - b| / |b| over b != 0
  long worst = -1;             // index of max_scaled
};

// a: the value under test, b: the reference.
ErrorStats Compare(absl::Span<const float> a, absl::Span<const float> b) {
  ErrorStats s;
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
    num += d * d;
    den += static_cast<double>(b[i]) * b[i];
    s.max_abs = std::max(s.max_abs, std::abs(d));
    const double scaled = std::abs(d) / (1.0 + std::abs(static_cast<double>(b[i])));
    if (scaled > s.max_scaled || s.worst < 0) {
      s.max_scaled = std::max(s.max_scaled, scaled);
      s.worst = static_cast<long>(i);
    }
    if (b[i] != 0.0f) s.max_rel = std::max(s.max_rel, std::abs(d) / std::abs(b[i]));
    if (!std::isfinite(a[i])) s.max_abs = s.max_scaled = s.max_rel = INFINITY;
  }
  s.nmse = den > 0.0 ? num / den : num;
  return s;
}

std::string Describe(const ErrorStats& s) {
  return absl::StrFormat("nmse=%.3g max_abs=%.3g max_scaled=%.3g max_rel=%.3g at %d", s.nmse,
                         s.max_abs, s.max_scaled, s.max_rel, s.worst);
}

std::vector<float> RoundToBf16(absl::Span<const float> x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __bfloat162float(__float2bfloat16_rn(x[i]));
  return r;
}

std::vector<__nv_bfloat16> ToBf16(absl::Span<const float> x) {
  std::vector<__nv_bfloat16> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __float2bfloat16_rn(x[i]);
  return r;
}

std::vector<float> FromBf16(absl::Span<const __nv_bfloat16> x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = __bfloat162float(x[i]);
  return r;
}

// Element-wise |gpu - ref| <= rel_tol * |ref| (+ a tiny absolute floor).
void ExpectRelWithin(absl::Span<const float> gpu, absl::Span<const float> ref, double rel_tol,
                     const std::string& what) {
  long bad = 0;
  long first_bad = -1;
  for (size_t i = 0; i < gpu.size(); ++i) {
    const double d = std::abs(static_cast<double>(gpu[i]) - ref[i]);
    if (!(d <= rel_tol * std::abs(static_cast<double>(ref[i])) + 1e-30)) {
      if (bad++ == 0) first_bad = static_cast<long>(i);
    }
  }
  EXPECT_EQ(bad, 0) << what << ": " << bad << " elements outside rel " << rel_tol
                    << ", first at " << first_bad << ": gpu=" << gpu[first_bad]
                    << " ref=" << ref[first_bad];
}

// Rows with different magnitudes (so rstd varies over orders of magnitude),
// Gaussian within a row.
std::vector<float> RandomRows(int N, int C, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::uniform_real_distribution<float> log_scale(-2.0f, 2.0f);
  std::vector<float> x(static_cast<size_t>(N) * C);
  for (int n = 0; n < N; ++n) {
    const float scale = std::pow(10.0f, log_scale(rng));
    for (int c = 0; c < C; ++c) x[static_cast<size_t>(n) * C + c] = scale * normal(rng);
  }
  return x;
}

std::vector<float> RandomUniform(size_t n, float lo, float hi, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

std::vector<float> RandomNormal(size_t n, float stddev, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> x(n);
  for (auto& v : x) v = dist(rng);
  return x;
}

// The shared fixture (skips, never passes, without a device) and assertion
// macros live in cuda_test_util.h.
using CudaOpsTest = cuda_test::CudaTest;

struct RowShape {
  int N;
  int C;
};

std::string RowShapeName(const ::testing::TestParamInfo<RowShape>& info) {
  return absl::StrFormat("N%d_C%d", info.param.N, info.param.C);
}

// 64 and 172 are the stories260K hidden and MLP widths; 4096 a 7B-class
// hidden; 5000 is wide but not a power of two; 1024/1025/1028 straddle the
// warp-per-row limit; 1, 4, 8 are below one vector lane count.
const RowShape kRowShapes[] = {
    {1, 64},    {7, 64},    {300, 64},   {1, 172},  {7, 172},  {300, 172},  {1, 4096},
    {7, 4096},  {300, 4096}, {1, 5000},  {7, 5000}, {300, 5000}, {3, 1},    {5, 4},
    {9, 8},     {7, 1024},  {7, 1025},   {7, 1028}, {2, 16384},
};

class RmsnormCudaTest : public CudaOpsTest, public ::testing::WithParamInterface<RowShape> {};

constexpr float kEps = 1e-5f;

TEST_P(RmsnormCudaTest, F32MatchesCpu) {
  const auto [N, C] = GetParam();
  const size_t n = static_cast<size_t>(N) * C;
  const std::vector<float> inp = RandomRows(N, C, 1000u + N * 7919u + C);
  const std::vector<float> weight = RandomUniform(C, 0.5f, 1.5f, 17u + C);
  std::vector<float> ref(n), ref_rstd(N);
  rmsnorm_forward(ref.data(), ref_rstd.data(), inp.data(), weight.data(), N, C, kEps);

  SR_ASSERT_OK_AND_ASSIGN(auto d_inp, DeviceBuffer<float>::FromHost(inp, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<float>::FromHost(weight, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<float>::Create(n));
  SR_ASSERT_OK_AND_ASSIGN(auto d_rstd, DeviceBuffer<float>::Create(N));
  SR_ASSERT_OK(rmsnorm_forward(d_out.data(), d_rstd.data(), d_inp.data(), d_w.data(), N, C, kEps,
                            stream_));
  std::vector<float> out(n), rstd(N);
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(out), stream_));
  SR_ASSERT_OK(d_rstd.CopyToHost(absl::MakeSpan(rstd), stream_));

  const ErrorStats e = Compare(out, ref);
  EXPECT_LE(e.nmse, kNmseF32) << Describe(e);
  EXPECT_LE(e.max_scaled, kElemTolF32) << Describe(e);
  const ErrorStats er = Compare(rstd, ref_rstd);
  EXPECT_LE(er.max_rel, kRstdRelTol) << "rstd " << Describe(er);
}

TEST_P(RmsnormCudaTest, Bf16MatchesCpuOnRoundedInputs) {
  const auto [N, C] = GetParam();
  const size_t n = static_cast<size_t>(N) * C;
  const std::vector<float> inp = RoundToBf16(RandomRows(N, C, 2000u + N * 7919u + C));
  const std::vector<float> weight = RandomUniform(C, 0.5f, 1.5f, 29u + C);
  std::vector<float> ref(n), ref_rstd(N);
  rmsnorm_forward(ref.data(), ref_rstd.data(), inp.data(), weight.data(), N, C, kEps);

  SR_ASSERT_OK_AND_ASSIGN(auto d_inp, DeviceBuffer<__nv_bfloat16>::FromHost(ToBf16(inp), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<float>::FromHost(weight, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<__nv_bfloat16>::Create(n));
  SR_ASSERT_OK_AND_ASSIGN(auto d_rstd, DeviceBuffer<float>::Create(N));
  SR_ASSERT_OK(rmsnorm_forward(d_out.data(), d_rstd.data(), d_inp.data(), d_w.data(), N, C, kEps,
                            stream_));
  std::vector<__nv_bfloat16> out_bf(n);
  std::vector<float> rstd(N);
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(out_bf), stream_));
  SR_ASSERT_OK(d_rstd.CopyToHost(absl::MakeSpan(rstd), stream_));
  const std::vector<float> out = FromBf16(out_bf);

  const ErrorStats e = Compare(out, ref);
  if (static_cast<long>(n) >= kMinNmseCount) {
    EXPECT_LE(e.nmse, kNmseBf16) << Describe(e);
  }
  ExpectRelWithin(out, ref, kElemRelTolBf16, "bf16 rmsnorm out");
  // rstd is fp32 from fp32 accumulation of the (exact) bf16 inputs.
  const ErrorStats er = Compare(rstd, ref_rstd);
  EXPECT_LE(er.max_rel, kRstdRelTol) << "rstd " << Describe(er);
}

TEST_P(RmsnormCudaTest, F32NullRstdAndInPlace) {
  const auto [N, C] = GetParam();
  const size_t n = static_cast<size_t>(N) * C;
  const std::vector<float> inp = RandomRows(N, C, 3000u + N * 7919u + C);
  const std::vector<float> weight = RandomUniform(C, 0.5f, 1.5f, 31u + C);
  std::vector<float> ref(n);
  rmsnorm_forward(ref.data(), nullptr, inp.data(), weight.data(), N, C, kEps);

  SR_ASSERT_OK_AND_ASSIGN(auto d_x, DeviceBuffer<float>::FromHost(inp, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<float>::FromHost(weight, stream_));
  SR_ASSERT_OK(rmsnorm_forward(d_x.data(), nullptr, d_x.data(), d_w.data(), N, C, kEps, stream_));
  std::vector<float> out(n);
  SR_ASSERT_OK(d_x.CopyToHost(absl::MakeSpan(out), stream_));
  const ErrorStats e = Compare(out, ref);
  EXPECT_LE(e.nmse, kNmseF32) << Describe(e);
  EXPECT_LE(e.max_scaled, kElemTolF32) << Describe(e);
}

INSTANTIATE_TEST_SUITE_P(Shapes, RmsnormCudaTest, ::testing::ValuesIn(kRowShapes), RowShapeName);

// Pointers offset by one element are not 16-byte aligned: the kernels must
// take the scalar path and still be right.
TEST_F(CudaOpsTest, RmsnormMisalignedPointers) {
  const int N = 7, C = 4096;
  const size_t n = static_cast<size_t>(N) * C;
  const std::vector<float> inp = RandomRows(N, C, 77u);
  const std::vector<float> weight = RandomUniform(C, 0.5f, 1.5f, 78u);
  std::vector<float> ref(n), ref_rstd(N);
  rmsnorm_forward(ref.data(), ref_rstd.data(), inp.data(), weight.data(), N, C, kEps);

  SR_ASSERT_OK_AND_ASSIGN(auto d_inp, DeviceBuffer<float>::Create(n + 1));
  SR_ASSERT_OK_AND_ASSIGN(auto d_w, DeviceBuffer<float>::Create(C + 1));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<float>::Create(n + 1));
  SR_ASSERT_OK_AND_ASSIGN(auto d_rstd, DeviceBuffer<float>::Create(N));
  ASSERT_EQ(cudaMemcpy(d_inp.data() + 1, inp.data(), n * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  ASSERT_EQ(cudaMemcpy(d_w.data() + 1, weight.data(), C * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  SR_ASSERT_OK(rmsnorm_forward(d_out.data() + 1, d_rstd.data(), d_inp.data() + 1, d_w.data() + 1, N,
                            C, kEps, stream_));
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  std::vector<float> out(n), rstd(N);
  ASSERT_EQ(cudaMemcpy(out.data(), d_out.data() + 1, n * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  SR_ASSERT_OK(d_rstd.CopyToHost(absl::MakeSpan(rstd), stream_));
  const ErrorStats e = Compare(out, ref);
  EXPECT_LE(e.nmse, kNmseF32) << Describe(e);
  EXPECT_LE(e.max_scaled, kElemTolF32) << Describe(e);
  EXPECT_LE(Compare(rstd, ref_rstd).max_rel, kRstdRelTol);
}

TEST_F(CudaOpsTest, RejectsBadArguments) {
  float* p = nullptr;
  EXPECT_EQ(rmsnorm_forward(p, nullptr, p, p, -1, 4, kEps, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rmsnorm_forward(p, nullptr, p, p, 2, 4, kEps, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(rmsnorm_forward(p, nullptr, p, p, 2, 4, NAN, stream_).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(swiglu_forward(p, p, p, -3, stream_).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(swiglu_forward(p, p, p, 5, stream_).code(), absl::StatusCode::kInvalidArgument);
  // Empty work is fine and launches nothing.
  EXPECT_TRUE(rmsnorm_forward(p, nullptr, p, p, 0, 4, kEps, stream_).ok());
  EXPECT_TRUE(swiglu_forward(p, p, p, 0, stream_).ok());
}

// ---- SwiGLU ---------------------------------------------------------------

class SwigluCudaTest : public CudaOpsTest, public ::testing::WithParamInterface<long> {};

std::string LengthName(const ::testing::TestParamInfo<long>& info) {
  return absl::StrFormat("N%d", info.param);
}

// 1, 7: tails only; 172 and 300*172: stories260K MLP; 7*4096, 300*5000 + 3:
// vector body plus a tail; 2^22 + 5: more work than the grid (grid-stride).
const long kSwigluLengths[] = {1, 7, 8, 172, 300L * 172, 7L * 4096, 300L * 5000 + 3,
                               (1L << 22) + 5};

TEST_P(SwigluCudaTest, F32MatchesCpu) {
  const long N = GetParam();
  // gate spans silu's curved region and both tails; up is unit Gaussian.
  const std::vector<float> gate = RandomNormal(N, 4.0f, 5000u + N);
  const std::vector<float> up = RandomNormal(N, 1.0f, 6000u + N);
  std::vector<float> ref(N);
  swiglu_forward(ref.data(), gate.data(), up.data(), N);

  SR_ASSERT_OK_AND_ASSIGN(auto d_gate, DeviceBuffer<float>::FromHost(gate, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_up, DeviceBuffer<float>::FromHost(up, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<float>::Create(N));
  SR_ASSERT_OK(swiglu_forward(d_out.data(), d_gate.data(), d_up.data(), N, stream_));
  std::vector<float> out(N);
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(out), stream_));
  const ErrorStats e = Compare(out, ref);
  EXPECT_LE(e.nmse, kNmseF32) << Describe(e);
  EXPECT_LE(e.max_scaled, kElemTolF32) << Describe(e);
}

TEST_P(SwigluCudaTest, Bf16MatchesCpuOnRoundedInputs) {
  const long N = GetParam();
  const std::vector<float> gate = RoundToBf16(RandomNormal(N, 4.0f, 7000u + N));
  const std::vector<float> up = RoundToBf16(RandomNormal(N, 1.0f, 8000u + N));
  std::vector<float> ref(N);
  swiglu_forward(ref.data(), gate.data(), up.data(), N);

  SR_ASSERT_OK_AND_ASSIGN(auto d_gate, DeviceBuffer<__nv_bfloat16>::FromHost(ToBf16(gate), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_up, DeviceBuffer<__nv_bfloat16>::FromHost(ToBf16(up), stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto d_out, DeviceBuffer<__nv_bfloat16>::Create(N));
  SR_ASSERT_OK(swiglu_forward(d_out.data(), d_gate.data(), d_up.data(), N, stream_));
  std::vector<__nv_bfloat16> out_bf(N);
  SR_ASSERT_OK(d_out.CopyToHost(absl::MakeSpan(out_bf), stream_));
  const std::vector<float> out = FromBf16(out_bf);
  const ErrorStats e = Compare(out, ref);
  if (N >= kMinNmseCount) {
    EXPECT_LE(e.nmse, kNmseBf16) << Describe(e);
  }
  ExpectRelWithin(out, ref, kElemRelTolBf16, "bf16 swiglu out");
}

INSTANTIATE_TEST_SUITE_P(Lengths, SwigluCudaTest, ::testing::ValuesIn(kSwigluLengths),
                         LengthName);

TEST_F(CudaOpsTest, SwigluMisalignedAndInPlace) {
  const long N = 4099;
  const std::vector<float> gate = RandomNormal(N, 4.0f, 91u);
  const std::vector<float> up = RandomNormal(N, 1.0f, 92u);
  std::vector<float> ref(N);
  swiglu_forward(ref.data(), gate.data(), up.data(), N);

  // gate at an odd offset (scalar path); out written over gate (in place).
  SR_ASSERT_OK_AND_ASSIGN(auto d_gate, DeviceBuffer<float>::Create(N + 1));
  SR_ASSERT_OK_AND_ASSIGN(auto d_up, DeviceBuffer<float>::FromHost(up, stream_));
  ASSERT_EQ(cudaMemcpy(d_gate.data() + 1, gate.data(), N * sizeof(float), cudaMemcpyHostToDevice),
            cudaSuccess);
  SR_ASSERT_OK(swiglu_forward(d_gate.data() + 1, d_gate.data() + 1, d_up.data(), N, stream_));
  ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
  std::vector<float> out(N);
  ASSERT_EQ(cudaMemcpy(out.data(), d_gate.data() + 1, N * sizeof(float), cudaMemcpyDeviceToHost),
            cudaSuccess);
  const ErrorStats e = Compare(out, ref);
  EXPECT_LE(e.nmse, kNmseF32) << Describe(e);
  EXPECT_LE(e.max_scaled, kElemTolF32) << Describe(e);
}

}  // namespace
}  // namespace shrinkray
