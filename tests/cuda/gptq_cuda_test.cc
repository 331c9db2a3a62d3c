// GPU GPTQ (core/kernels/cuda/gptq_cuda.h) against the CPU solver
// (core/algo/gptq.h, the reference's numerics) on random matrices with a
// realistic H = (2/n) Σ x xᵀ (correlated inputs, one dead column), in every
// grid mode. Without a device: SKIP.
//
// Why not bit-exact: the two sides' Cholesky chains (cuSOLVER vs LAPACK) and
// trailing GEMMs (cuBLAS vs OpenBLAS) sum in different orders, so W and Hinv
// differ in the last bits. A code flips only where w/scale sits within that
// noise (~1e-6 relative) of a rounding boundary, but a flipped code changes
// that column's error by a full grid step, which then moves the rest of the
// row (by err·Hinv[i, j] / Hinv[j, j] grid steps per later column) and can
// flip a few more codes in it. Bounds (with margin over what this cascade
// gives on these sizes):
//   * codes differing:            <= 2% of entries (typically well under 0.5%);
//   * dequantized W nmse vs CPU:  <= 2e-3;
//   * reported loss:              within 2% of the CPU's;
//   * perm, g_idx:                exact; per-row and static grids: exact
//     (fitted on the unmodified input); dynamic group grids: nmse <= 1e-4.
#include <cmath>
#include <cstdio>
#include <vector>

#include "core/algo/gptq.h"
#include "core/kernels/cuda/gptq_cuda.h"
#include "cuda/cuda_test_util.h"

namespace shrinkray {
namespace {

using cuda_test::Compare;
using cuda_test::CudaTest;
using cuda_test::Describe;
using cuda_test::RandomNormal;

struct GptqCase {
  const char* name;
  int rows, cols, bits, group_size;
  bool sym, act_order, static_groups;
  bool pruned = false;  // a keep mask (2:4 by row, shifted per row), W left nonzero under it
};

std::string CaseName(const ::testing::TestParamInfo<GptqCase>& info) { return info.param.name; }

// H = (2/n) XᵀX for X [tokens, cols] with correlated columns (a shared
// low-rank part plus per-column scales over two orders of magnitude), and
// column `dead` all zero.
std::vector<float> MakeHessian(int cols, int tokens, int dead, uint32_t seed) {
  const std::vector<float> z = RandomNormal(static_cast<size_t>(tokens) * cols, 1.0f, seed);
  const std::vector<float> common = RandomNormal(static_cast<size_t>(tokens) * 4, 1.0f, seed + 1);
  const std::vector<float> mix = RandomNormal(static_cast<size_t>(cols) * 4, 0.5f, seed + 2);
  std::vector<double> x(static_cast<size_t>(tokens) * cols);
  for (int t = 0; t < tokens; ++t) {
    for (int c = 0; c < cols; ++c) {
      double v = z[t * cols + c];
      for (int r = 0; r < 4; ++r) v += common[t * 4 + r] * mix[c * 4 + r];
      v *= std::pow(10.0, -1.0 + 2.0 * ((c * 37) % cols) / cols);
      x[t * cols + c] = c == dead ? 0.0 : v;
    }
  }
  std::vector<float> h(static_cast<size_t>(cols) * cols);
  for (int i = 0; i < cols; ++i) {
    for (int j = i; j < cols; ++j) {
      double s = 0.0;
      for (int t = 0; t < tokens; ++t) s += x[t * cols + i] * x[t * cols + j];
      h[i * cols + j] = h[j * cols + i] = static_cast<float>(2.0 * s / tokens);
    }
  }
  return h;
}

class GptqCudaTest : public CudaTest, public ::testing::WithParamInterface<GptqCase> {};

TEST_P(GptqCudaTest, MatchesCpuSolver) {
  const GptqCase& tc = GetParam();
  const std::vector<float> w = RandomNormal(static_cast<size_t>(tc.rows) * tc.cols, 0.02f, 7u);
  const std::vector<float> h = MakeHessian(tc.cols, 2 * tc.cols, /*dead=*/tc.cols / 3, 9u);
  GptqOptions o;
  o.bits = tc.bits;
  o.group_size = tc.group_size;
  o.sym = tc.sym;
  o.act_order = tc.act_order;
  o.static_groups = tc.static_groups;
  // GPTQ after pruning: the pruned entries keep their values in w, so both
  // solvers must read them as 0 themselves (fits, sweeps, refits).
  std::vector<uint8_t> keep;
  if (tc.pruned) {
    keep.resize(w.size());
    for (int r = 0; r < tc.rows; ++r) {
      for (int c = 0; c < tc.cols; ++c) keep[static_cast<size_t>(r) * tc.cols + c] = ((c + r) % 4) < 2 ? 1 : 0;
    }
    o.keep_mask = keep;
  }

  absl::StatusOr<GptqResult> cpu = GptqQuantize(w, tc.rows, tc.cols, h, o);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  absl::StatusOr<GptqResult> gpu = GptqQuantizeCuda(w, tc.rows, tc.cols, h, o, stream_);
  ASSERT_TRUE(gpu.ok()) << gpu.status();

  EXPECT_EQ(gpu->perm, cpu->perm);
  EXPECT_EQ(gpu->quantized.g_idx, cpu->quantized.g_idx);
  EXPECT_EQ(gpu->quantized.num_groups, cpu->quantized.num_groups);
  EXPECT_EQ(gpu->quantized.act_order, cpu->quantized.act_order);
  EXPECT_EQ(gpu->report.dead_columns, 1);
  EXPECT_EQ(gpu->report.dead_columns, cpu->report.dead_columns);
  EXPECT_EQ(gpu->report.damp_used, cpu->report.damp_used);

  const auto& gc = gpu->quantized.codes;
  const auto& cc = cpu->quantized.codes;
  ASSERT_EQ(gc.size(), cc.size());
  long differ = 0;
  long differ_by_more = 0;
  for (size_t i = 0; i < gc.size(); ++i) {
    differ += gc[i] != cc[i];
    differ_by_more += std::abs(gc[i] - cc[i]) > 1;
  }
  const double frac = static_cast<double>(differ) / gc.size();
  const auto ew = Compare(gpu->weight, cpu->weight);
  const double loss_rel = std::abs(gpu->report.loss - cpu->report.loss) / cpu->report.loss;
  std::printf("[gptq-cuda %s] codes differing %ld/%zu (%.4f%%, %ld by >1), W nmse %.3g, "
              "loss gpu %.6g cpu %.6g (rel %.3g)\n",
              tc.name, differ, gc.size(), 100.0 * frac, differ_by_more, ew.nmse,
              gpu->report.loss, cpu->report.loss, loss_rel);
  EXPECT_LE(frac, 0.02);
  EXPECT_LE(ew.nmse, 2e-3) << Describe(ew);
  EXPECT_TRUE(ew.finite);
  EXPECT_LE(loss_rel, 0.02);

  // A pruned weight is exactly 0, its code the row's zero point, on both.
  long pruned_nonzero = 0;
  for (size_t i = 0; i < keep.size(); ++i) {
    if (keep[i] != 0) continue;
    pruned_nonzero += gpu->weight[i] != 0.0f;
    EXPECT_EQ(cpu->weight[i], 0.0f);
  }
  EXPECT_EQ(pruned_nonzero, 0);

  // Dequantized weights are the grid points of the returned codes.
  for (int r = 0; r < tc.rows; r += 17) {
    for (int c = 0; c < tc.cols; c += 5) {
      ASSERT_EQ(gpu->quantized.Dequantize(r, c), gpu->weight[static_cast<size_t>(r) * tc.cols + c])
          << r << "," << c;
    }
  }
  const auto es = Compare(gpu->quantized.scales, cpu->quantized.scales);
  if (tc.group_size <= 0 || tc.static_groups) {
    EXPECT_EQ(gpu->quantized.scales, cpu->quantized.scales);
    EXPECT_EQ(gpu->quantized.zeros, cpu->quantized.zeros);
  } else {
    EXPECT_LE(es.nmse, 1e-4) << "scales " << Describe(es);
  }
}

// 300 columns: two full 128-blocks and a partial one; 70 rows: a partial
// 32-row CTA (warps with rows past the end). Groups smaller, equal and
// larger than the block.
INSTANTIATE_TEST_SUITE_P(
    Modes, GptqCudaTest,
    ::testing::Values(GptqCase{"PerRowSym4", 96, 300, 4, -1, true, false, false},
                      GptqCase{"PerRowAsym3ActOrder", 96, 300, 3, -1, false, true, false},
                      GptqCase{"Group32Asym4", 96, 300, 4, 32, false, false, false},
                      GptqCase{"Group128Sym4ActOrder", 70, 300, 4, 128, true, true, false},
                      GptqCase{"Group256Sym8", 64, 300, 8, 256, true, false, false},
                      GptqCase{"Group64StaticActOrder", 96, 300, 4, 64, true, true, true},
                      GptqCase{"Wide1024PerRow", 160, 1024, 4, 128, true, false, false},
                      GptqCase{"PerRowSym4ActOrderPruned", 96, 300, 4, -1, true, true, false, true},
                      GptqCase{"Group32Asym4ActOrderPruned", 70, 300, 4, 32, false, true, false, true},
                      GptqCase{"Group64StaticActOrderPruned", 96, 300, 4, 64, true, true, true, true}),
    CaseName);

TEST_F(GptqCudaTest, NotPositiveDefiniteFails) {
  const int cols = 8;
  std::vector<float> h(cols * cols, 0.0f);
  for (int j = 0; j < cols; ++j) h[j * cols + j] = -1.0f;  // negative definite, not dead
  const std::vector<float> w = RandomNormal(4 * cols, 1.0f, 3u);
  absl::StatusOr<GptqResult> r = GptqQuantizeCuda(w, 4, cols, h, GptqOptions(), stream_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
}

// The device keep mask goes with options.keep_mask, and only with it.
TEST_F(GptqCudaTest, QuantizeChecksTheKeepMask) {
  const int rows = 4, cols = 8;
  const std::vector<float> w = RandomNormal(rows * cols, 1.0f, 5u);
  std::vector<float> h(cols * cols, 0.0f);
  for (int j = 0; j < cols; ++j) h[j * cols + j] = 1.0f;
  GptqOptions o;
  SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<GptqCuda> gptq, GptqCuda::Create(stream_));
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> d_h, DeviceBuffer<float>::FromHost(h, stream_));
  SR_ASSERT_OK(gptq->PrepareHessian(d_h.data(), cols, o));
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> d_w, DeviceBuffer<float>::FromHost(w, stream_));
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<uint8_t> codes, DeviceBuffer<uint8_t>::Create(rows * cols));
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<float> scales, DeviceBuffer<float>::Create(rows));
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<int32_t> zeros, DeviceBuffer<int32_t>::Create(rows));
  const std::vector<uint8_t> keep(rows * cols, 1);
  SR_ASSERT_OK_AND_ASSIGN(DeviceBuffer<uint8_t> d_keep, DeviceBuffer<uint8_t>::FromHost(keep, stream_));
  GptqCudaOutputs out;
  out.codes = codes.data();
  out.scales = scales.data();
  out.zeros = zeros.data();
  // A device mask without options.keep_mask, and the other way round.
  EXPECT_EQ(gptq->Quantize(d_w.data(), rows, o, out, d_keep.data()).status().code(),
            absl::StatusCode::kInvalidArgument);
  o.keep_mask = keep;
  EXPECT_EQ(gptq->Quantize(d_w.data(), rows, o, out).status().code(), absl::StatusCode::kInvalidArgument);
  SR_ASSERT_OK(gptq->Quantize(d_w.data(), rows, o, out, d_keep.data()).status());
}

TEST_F(GptqCudaTest, UnsupportedOptions) {
  const std::vector<float> w(16, 1.0f), h(16, 0.0f);
  GptqOptions o;
  o.precision = HessianPrecision::kFloat64;
  EXPECT_EQ(GptqQuantizeCuda(w, 4, 4, h, o, stream_).status().code(),
            absl::StatusCode::kUnimplemented);
  o = GptqOptions();
  o.bits = 1;
  EXPECT_EQ(GptqQuantizeCuda(w, 4, 4, h, o, stream_).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace shrinkray
