// relative_output_error (core/kernels/cuda/output_error_cuda.h) against the
// CPU's RelativeOutputError on random W, a perturbed Q and a symmetric
// positive semi-definite H = XᵀX / n, for shapes with odd sizes; and the
// backend method the pipeline calls. Skipped without a CUDA device.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "core/kernels/cuda/output_error_cuda.h"
#include "core/pipeline/apply_stages.h"
#include "core/pipeline/device_factories.h"
#include "core/pipeline/solver_backend.h"
#include "cuda_test_util.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using cuda_test::CudaTest;

class OutputErrorCudaTest : public CudaTest {};

TEST_F(OutputErrorCudaTest, MatchesTheCpuError) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  // 40 x 2100: three column tiles of H (1024, 1024, 52), so the tiles below
  // the diagonal and their factor 2 count.
  ASSERT_EQ(kOutputErrorTileCols, 1024);
  for (const auto& [rows, cols] : std::vector<std::pair<int, int>>{{5, 3}, {37, 64}, {300, 257}, {40, 2100}}) {
    std::vector<float> w(static_cast<size_t>(rows) * cols), q(w.size());
    for (size_t i = 0; i < w.size(); ++i) {
      w[i] = normal(rng);
      q[i] = w[i] + 0.05f * normal(rng);
    }
    const int n = std::min(2 * cols, 96);  // tokens: H = XᵀX / n (rank n is enough)
    std::vector<float> x(static_cast<size_t>(n) * cols);
    for (float& v : x) v = normal(rng);
    std::vector<float> h(static_cast<size_t>(cols) * cols, 0.0f);
    for (int i = 0; i < cols; ++i) {
      for (int j = 0; j < cols; ++j) {
        double s = 0.0;
        for (int t = 0; t < n; ++t) s += static_cast<double>(x[t * cols + i]) * x[t * cols + j];
        h[static_cast<size_t>(i) * cols + j] = static_cast<float>(s / n);
      }
    }
    const double cpu = RelativeOutputError(w, q, rows, cols, h);
    SR_ASSERT_OK_AND_ASSIGN(auto dw, DeviceBuffer<float>::FromHost(w, stream_));
    SR_ASSERT_OK_AND_ASSIGN(auto dq, DeviceBuffer<float>::FromHost(q, stream_));
    SR_ASSERT_OK_AND_ASSIGN(auto dh, DeviceBuffer<float>::FromHost(h, stream_));
    SR_ASSERT_OK_AND_ASSIGN(double gpu, relative_output_error(dw.data(), dq.data(), rows, cols, dh.data(), stream_));
    EXPECT_GT(cpu, 1e-4) << rows << "x" << cols;
    EXPECT_NEAR(gpu / cpu, 1.0, 1e-5) << rows << "x" << cols << ": cpu " << cpu << " gpu " << gpu;
    // What the pipeline calls: the backend's method, through the helper.
    SR_ASSERT_OK_AND_ASSIGN(std::unique_ptr<SolverBackend> backend, MakeSolverBackend(ComputeDevice::Cuda(0)));
    LinearInputStats input;
    input.h32 = h;
    SR_ASSERT_OK_AND_ASSIGN(double via, RelativeOutputErrorOn(backend.get(), w, q, rows, cols, input));
    EXPECT_EQ(via, gpu);
  }
  // A zero W H Wᵀ gives 0, as on the CPU.
  std::vector<float> zeros(12, 0.0f), h(16, 0.0f);
  for (int i = 0; i < 4; ++i) h[i * 5] = 1.0f;
  SR_ASSERT_OK_AND_ASSIGN(auto dz, DeviceBuffer<float>::FromHost(zeros, stream_));
  SR_ASSERT_OK_AND_ASSIGN(auto dh, DeviceBuffer<float>::FromHost(h, stream_));
  SR_ASSERT_OK_AND_ASSIGN(double e, relative_output_error(dz.data(), dz.data(), 3, 4, dh.data(), stream_));
  EXPECT_EQ(e, 0.0);
}

}  // namespace
}  // namespace shrinkray
