// The GPU SolverBackend with a held Hessian (core/pipeline/solver_backend.h):
// one device copy and one preparation per hold and option set must give, bit
// for bit, what a copy and a preparation per matrix give; a hold never serves
// other values (a new hold at the same address, a span that is not the held
// one). Skipped without a CUDA device.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "core/algo/gptq.h"
#include "core/algo/sparsegpt.h"
#include "core/calib/device_hessian.h"
#include "core/kernels/cuda/cuda_check.h"
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

// Three weights sharing one Hessian (q/k/v), each solved with three GPTQ
// settings whose preparations differ (act_order, the inverse factor) and with
// SparseGPT by either factor, and each error: held, against a fresh backend
// per call.
TEST_F(SolverBackendCudaTest, HeldHessianGivesThePerMatrixResultsBitForBit) {
  const int cols = 160;
  const std::vector<float> h = MakeHessian(cols, 3u);
  const std::vector<int> rows = {64, 96, 64};
  GptqOptions plain;
  plain.bits = 4;
  plain.group_size = 32;
  GptqOptions ordered = plain;
  ordered.act_order = true;
  GptqOptions flipped = plain;
  flipped.inverse_factor = InverseFactorMethod::kFlippedCholesky;
  SparseGptOptions sparse;
  sparse.sparsity = 0.5;
  SparseGptOptions sparse_flipped = sparse;
  sparse_flipped.inverse_factor = InverseFactorMethod::kFlippedCholesky;

  std::unique_ptr<SolverBackend> held = Backend();
  ASSERT_NE(held, nullptr);
  const HeldHessian scope(held.get(), h);
  for (size_t m = 0; m < rows.size(); ++m) {
    SCOPED_TRACE(testing::Message() << "matrix " << m);
    const std::vector<float> w = RandomNormal(static_cast<size_t>(rows[m]) * cols, 0.02f, 10u + m);
    for (const GptqOptions* o : {&plain, &ordered, &flipped, &plain}) {
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
    for (const SparseGptOptions* o : {&sparse_flipped, &sparse}) {
      std::unique_ptr<SolverBackend> fresh = Backend();
      ASSERT_NE(fresh, nullptr);
      SR_ASSERT_OK_AND_ASSIGN(SparseGptResult want, fresh->SparseGpt(w, rows[m], cols, h, *o));
      SR_ASSERT_OK_AND_ASSIGN(SparseGptResult got, held->SparseGpt(w, rows[m], cols, h, *o));
      ExpectSame(got, want);
    }
    // And the CPU's masks by the same factor, as for an unheld solve: the
    // same but where a score lies within float32 rounding noise of its
    // block's threshold (cuSOLVER's and LAPACK's factors differ in their last
    // bits: sparsegpt_cuda_test.cc's bound).
    for (const SparseGptOptions* o : {&sparse, &sparse_flipped}) {
      SR_ASSERT_OK_AND_ASSIGN(SparseGptResult got, held->SparseGpt(w, rows[m], cols, h, *o));
      SR_ASSERT_OK_AND_ASSIGN(SparseGptResult cpu, SparseGptPrune(w, rows[m], cols, h, *o));
      ASSERT_EQ(got.keep.size(), cpu.keep.size());
      long differ = 0;
      for (size_t i = 0; i < got.keep.size(); ++i) differ += got.keep[i] != cpu.keep[i];
      EXPECT_LE(differ, static_cast<long>(got.keep.size()) / 1000) << InverseFactorMethodName(o->inverse_factor);
    }
  }
}

// A solve asked for its output error (options.output_error) reports, from
// the device copies of W and the result it made, what OutputError gives for
// that result afterwards (the same kernel on the same values): held and
// unheld, GPTQ and SparseGPT; not asked, it reports none.
TEST_F(SolverBackendCudaTest, ASolveAskedForItsOutputErrorReportsOutputErrorsValue) {
  const int cols = 160, rows = 96;
  const std::vector<float> h = MakeHessian(cols, 7u);
  const std::vector<float> w = RandomNormal(static_cast<size_t>(rows) * cols, 0.02f, 12u);
  GptqOptions gptq;
  gptq.bits = 4;
  gptq.group_size = 32;
  gptq.act_order = true;
  SparseGptOptions sparse;
  sparse.sparsity = 0.5;
  std::unique_ptr<SolverBackend> backend = Backend();
  ASSERT_NE(backend, nullptr);
  for (const bool hold : {false, true}) {
    SCOPED_TRACE(hold ? "held" : "unheld");
    std::unique_ptr<HeldHessian> scope = hold ? std::make_unique<HeldHessian>(backend.get(), h) : nullptr;
    SR_ASSERT_OK_AND_ASSIGN(GptqResult quiet, backend->Gptq(w, rows, cols, h, gptq));
    EXPECT_FALSE(quiet.report.output_error.has_value());
    GptqOptions asked = gptq;
    asked.output_error = true;
    SR_ASSERT_OK_AND_ASSIGN(GptqResult q, backend->Gptq(w, rows, cols, h, asked));
    ExpectSame(q, quiet);
    ASSERT_TRUE(q.report.output_error.has_value());
    SR_ASSERT_OK_AND_ASSIGN(double e, backend->OutputError(w, q.weight, rows, cols, h));
    EXPECT_EQ(*q.report.output_error, e);
    EXPECT_GT(e, 0.0);

    SparseGptOptions sparse_asked = sparse;
    sparse_asked.output_error = true;
    SR_ASSERT_OK_AND_ASSIGN(SparseGptResult p, backend->SparseGpt(w, rows, cols, h, sparse_asked));
    ASSERT_TRUE(p.report.output_error.has_value());
    SR_ASSERT_OK_AND_ASSIGN(double ep, backend->OutputError(w, p.weight, rows, cols, h));
    EXPECT_EQ(*p.report.output_error, ep);
    EXPECT_GT(ep, e);  // half the weights gone costs more than 4-bit rounding
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

// The Hessian as the GPU executor hands it over: device memory of device 0.
class DeviceCopy final : public DeviceHessian {
 public:
  static std::shared_ptr<DeviceCopy> Of(const std::vector<float>& h, int dim) {
    absl::StatusOr<DeviceBuffer<float>> buffer = DeviceBuffer<float>::FromHost(h);
    EXPECT_TRUE(buffer.ok()) << buffer.status();
    if (!buffer.ok()) return nullptr;
    return std::make_shared<DeviceCopy>(dim, std::move(*buffer));
  }
  DeviceCopy(int dim, DeviceBuffer<float> values) : dim_(dim), values_(std::move(values)) {}
  int device() const override { return 0; }
  int dim() const override { return dim_; }
  const float* data() const override { return values_.data(); }
  absl::Status CopyToHost(absl::Span<float> out) const override {
    ADD_FAILURE() << "the backend copied a device-only Hessian to the host";
    return values_.CopyToHost(out);
  }

 private:
  int dim_;
  DeviceBuffer<float> values_;
};

// A hold that only the device copy backs (the host span empty) solves and
// measures errors from that copy: the same bits as a hold of the host values.
// A NaN in it (which a Gram matrix's diagonal always shows) is an error that
// names it, not a silent result. Another device's copy is not read in place.
TEST_F(SolverBackendCudaTest, ADeviceOnlyHoldSolvesFromTheCopy) {
  const int cols = 128, rows = 64;
  const std::vector<float> h = MakeHessian(cols, 9u);
  const std::vector<float> w = RandomNormal(static_cast<size_t>(rows) * cols, 0.02f, 12u);
  GptqOptions gptq;
  gptq.bits = 4;
  gptq.group_size = 32;
  SparseGptOptions sparse;
  sparse.sparsity = 0.5;
  std::unique_ptr<SolverBackend> host = Backend(), device = Backend();
  ASSERT_NE(host, nullptr);
  ASSERT_NE(device, nullptr);
  std::shared_ptr<DeviceCopy> copy = DeviceCopy::Of(h, cols);
  ASSERT_NE(copy, nullptr);
  EXPECT_TRUE(device->ReadsDevice(*copy));
  const absl::Span<const float> none;
  {
    const HeldHessian with_host(host.get(), h);
    const HeldHessian device_only(device.get(), none, copy.get());
    SR_ASSERT_OK_AND_ASSIGN(GptqResult want, host->Gptq(w, rows, cols, h, gptq));
    SR_ASSERT_OK_AND_ASSIGN(GptqResult got, device->Gptq(w, rows, cols, none, gptq));
    ExpectSame(got, want);
    SR_ASSERT_OK_AND_ASSIGN(double e_want, host->OutputError(w, want.weight, rows, cols, h));
    SR_ASSERT_OK_AND_ASSIGN(double e_got, device->OutputError(w, got.weight, rows, cols, none));
    EXPECT_EQ(e_got, e_want);
    SR_ASSERT_OK_AND_ASSIGN(SparseGptResult s_want, host->SparseGpt(w, rows, cols, h, sparse));
    SR_ASSERT_OK_AND_ASSIGN(SparseGptResult s_got, device->SparseGpt(w, rows, cols, none, sparse));
    ExpectSame(s_got, s_want);
    // A shape that is not the held one.
    EXPECT_EQ(device->Gptq(w, rows / 2, cols * 2, none, gptq).status().code(), absl::StatusCode::kInvalidArgument);
  }
  // Outside the hold an empty Hessian is just bad input.
  EXPECT_EQ(device->Gptq(w, rows, cols, none, gptq).status().code(), absl::StatusCode::kInvalidArgument);

  std::vector<float> bad = h;
  bad[5 * cols + 5] = std::numeric_limits<float>::quiet_NaN();
  std::shared_ptr<DeviceCopy> nan = DeviceCopy::Of(bad, cols);
  ASSERT_NE(nan, nullptr);
  {
    const HeldHessian device_only(device.get(), none, nan.get());
    const absl::Status s = device->Gptq(w, rows, cols, none, gptq).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(s.message().find("h: non-finite value nan at [5, 5]"), std::string::npos) << s;
    const absl::Status p = device->SparseGpt(w, rows, cols, none, sparse).status();
    EXPECT_EQ(p.code(), absl::StatusCode::kInvalidArgument) << p;
  }

  class OtherDevice final : public DeviceHessian {
   public:
    int device() const override { return 1; }
    int dim() const override { return 4; }
    const float* data() const override { return nullptr; }
    absl::Status CopyToHost(absl::Span<float>) const override { return absl::OkStatus(); }
  };
  EXPECT_FALSE(device->ReadsDevice(OtherDevice()));
}

}  // namespace
}  // namespace shrinkray
