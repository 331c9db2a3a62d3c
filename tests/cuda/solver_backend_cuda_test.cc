// The GPU SolverBackend with a held Hessian (core/pipeline/solver_backend.h):
// one device copy and one preparation per hold and option set must give, bit
// for bit, what a copy and a preparation per matrix give; a hold never serves
// other values (a new hold at the same address, a span that is not the held
// one). Skipped without a CUDA device.
#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "core/algo/gptq.h"
#include "core/algo/sparsegpt.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/solver_backend.h"
#include "cuda_test_util.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using cuda_test::CudaTest;
using cuda_test::RandomNormal;

// H = XᵀX / n, one dead column, a positive diagonal elsewhere.
std::vector<float> MakeHessian(int cols, uint32_t seed) {
  const int n = 2 * cols;
  const std::vector<float> x = RandomNormal(static_cast<size_t>(n) * cols, 1.0f, seed);
  std::vector<float> h(static_cast<size_t>(cols) * cols);
  for (int i = 0; i < cols; ++i) {
    for (int j = i; j < cols; ++j) {
      double s = 0.0;
      if (i != cols / 3 && j != cols / 3) {
        for (int t = 0; t < n; ++t) s += static_cast<double>(x[t * cols + i]) * x[t * cols + j];
      }
      h[static_cast<size_t>(i) * cols + j] = h[static_cast<size_t>(j) * cols + i] = static_cast<float>(s / n);
    }
  }
  return h;
}

void ExpectSame(const GptqResult& a, const GptqResult& b) {
  EXPECT_EQ(a.weight, b.weight);
  EXPECT_EQ(a.perm, b.perm);
  EXPECT_EQ(a.quantized.codes, b.quantized.codes);
  EXPECT_EQ(a.quantized.scales, b.quantized.scales);
  EXPECT_EQ(a.quantized.zeros, b.quantized.zeros);
  EXPECT_EQ(a.quantized.g_idx, b.quantized.g_idx);
  EXPECT_EQ(a.report.loss, b.report.loss);
  EXPECT_EQ(a.report.damp_used, b.report.damp_used);
  EXPECT_EQ(a.report.dead_columns, b.report.dead_columns);
}

void ExpectSame(const SparseGptResult& a, const SparseGptResult& b) {
  EXPECT_EQ(a.weight, b.weight);
  EXPECT_EQ(a.keep, b.keep);
  EXPECT_EQ(a.pruned, b.pruned);
  EXPECT_EQ(a.report.loss, b.report.loss);
}

class SolverBackendCudaTest : public CudaTest {
 protected:
  static std::unique_ptr<SolverBackend> Backend() {
    absl::StatusOr<std::unique_ptr<SolverBackend>> b = MakeSolverBackend(ComputeDevice::Cuda(0));
    EXPECT_TRUE(b.ok()) << b.status();
    return b.ok() ? std::move(*b) : nullptr;
  }
};

// Three weights sharing one Hessian (q/k/v), each solved with two GPTQ
// settings whose preparations differ (act_order) and with SparseGPT, and each
// error: held, against a fresh backend per call.
TEST_F(SolverBackendCudaTest, HeldHessianGivesThePerMatrixResultsBitForBit) {
  const int cols = 160;
  const std::vector<float> h = MakeHessian(cols, 3u);
  const std::vector<int> rows = {64, 96, 64};
  GptqOptions plain;
  plain.bits = 4;
  plain.group_size = 32;
  GptqOptions ordered = plain;
  ordered.act_order = true;
  SparseGptOptions sparse;
  sparse.sparsity = 0.5;

  std::unique_ptr<SolverBackend> held = Backend();
  ASSERT_NE(held, nullptr);
  const HeldHessian scope(held.get(), h);
  for (size_t m = 0; m < rows.size(); ++m) {
    SCOPED_TRACE(testing::Message() << "matrix " << m);
    const std::vector<float> w = RandomNormal(static_cast<size_t>(rows[m]) * cols, 0.02f, 10u + m);
    for (const GptqOptions* o : {&plain, &ordered, &plain}) {
      std::unique_ptr<SolverBackend> fresh = Backend();
      ASSERT_NE(fresh, nullptr);
      SR_ASSERT_OK_AND_ASSIGN(GptqResult want, fresh->Gptq(w, rows[m], cols, h, *o));
      SR_ASSERT_OK_AND_ASSIGN(GptqResult got, held->Gptq(w, rows[m], cols, h, *o));
      ExpectSame(got, want);
      SR_ASSERT_OK_AND_ASSIGN(double e_want, fresh->OutputError(w, want.weight, rows[m], cols, h));
      SR_ASSERT_OK_AND_ASSIGN(double e_got, held->OutputError(w, got.weight, rows[m], cols, h));
      EXPECT_EQ(e_got, e_want);
      EXPECT_GT(e_got, 0.0);
    }
    std::unique_ptr<SolverBackend> fresh = Backend();
    ASSERT_NE(fresh, nullptr);
    SR_ASSERT_OK_AND_ASSIGN(SparseGptResult want, fresh->SparseGpt(w, rows[m], cols, h, sparse));
    SR_ASSERT_OK_AND_ASSIGN(SparseGptResult got, held->SparseGpt(w, rows[m], cols, h, sparse));
    ExpectSame(got, want);
    // And the CPU's masks, as for an unheld solve.
    SR_ASSERT_OK_AND_ASSIGN(SparseGptResult cpu, SparseGptPrune(w, rows[m], cols, h, sparse));
    EXPECT_EQ(got.keep, cpu.keep);
  }
}

// A hold serves only the values it was made for.
TEST_F(SolverBackendCudaTest, AHoldNeverServesOtherValues) {
  const int cols = 96, rows = 48;
  std::vector<float> h = MakeHessian(cols, 5u);
  const std::vector<float> h2 = MakeHessian(cols, 6u);
  const std::vector<float> w = RandomNormal(static_cast<size_t>(rows) * cols, 0.02f, 8u);
  GptqOptions o;
  o.bits = 3;
  o.group_size = 32;
  std::unique_ptr<SolverBackend> held = Backend(), fresh = Backend();
  ASSERT_NE(held, nullptr);
  ASSERT_NE(fresh, nullptr);
  SR_ASSERT_OK_AND_ASSIGN(GptqResult with_h, fresh->Gptq(w, rows, cols, h, o));
  SR_ASSERT_OK_AND_ASSIGN(GptqResult with_h2, fresh->Gptq(w, rows, cols, h2, o));
  ASSERT_NE(with_h.quantized.codes, with_h2.quantized.codes);
  {
    const HeldHessian scope(held.get(), h);
    SR_ASSERT_OK_AND_ASSIGN(GptqResult got, held->Gptq(w, rows, cols, h, o));
    ExpectSame(got, with_h);
    // Inside the hold, another span is solved from its own values.
    SR_ASSERT_OK_AND_ASSIGN(GptqResult other, held->Gptq(w, rows, cols, h2, o));
    ExpectSame(other, with_h2);
    SR_ASSERT_OK_AND_ASSIGN(GptqResult again, held->Gptq(w, rows, cols, h, o));
    ExpectSame(again, with_h);
  }
  // The next group's Hessian at the same address (the pipeline's buffers are
  // reused): a new hold copies and prepares it again.
  std::copy(h2.begin(), h2.end(), h.begin());
  {
    const HeldHessian scope(held.get(), h);
    SR_ASSERT_OK_AND_ASSIGN(GptqResult got, held->Gptq(w, rows, cols, h, o));
    ExpectSame(got, with_h2);
  }
  // No hold: every call copies its own.
  SR_ASSERT_OK_AND_ASSIGN(GptqResult after, held->Gptq(w, rows, cols, h, o));
  ExpectSame(after, with_h2);
}

}  // namespace
}  // namespace shrinkray
