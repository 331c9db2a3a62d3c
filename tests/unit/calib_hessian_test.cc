// The running-average Hessian and Wanda accumulators against a direct float64
// computation of (2/n)·Σ x xᵀ and Σx²/n, with uneven batches of samples.
#include <algorithm>
#include <cmath>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "core/calib/activation_norm_accumulator.h"
#include "core/calib/hessian_accumulator.h"
#include "core/calib/layer_statistics.h"
#include "core/comm/communicator.h"
#include "core/model/synthetic.h"
#include "compress_test_util.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

constexpr int kDim = 13;
constexpr int kSeqlen = 6;
const std::vector<int> kBatches = {1, 4, 2, 7, 3};  // samples per Add

std::vector<float> RandomRows(long rows, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<float> x(static_cast<size_t>(rows) * kDim);
  for (float& v : x) v = 3.0f * rng.NextSymmetric() + 0.5f;  // non-zero mean, like real activations
  return x;
}

// (2/n) Σ x xᵀ over all rows, n = samples.
std::vector<double> DirectHessian(const std::vector<float>& x, long rows, int samples) {
  std::vector<double> h(kDim * kDim, 0.0);
  for (long r = 0; r < rows; ++r) {
    for (int i = 0; i < kDim; ++i) {
      for (int j = 0; j < kDim; ++j) h[i * kDim + j] += double{x[r * kDim + i]} * x[r * kDim + j];
    }
  }
  for (double& v : h) v *= 2.0 / samples;
  return h;
}

class CalibHessianTest : public ::testing::TestWithParam<HessianPrecision> {};

TEST_P(CalibHessianTest, RunningFormEqualsDirectSumForUnevenBatches) {
  int samples = 0;
  for (int b : kBatches) samples += b;
  const long rows = static_cast<long>(samples) * kSeqlen;
  const std::vector<float> x = RandomRows(rows, 42);
  HessianAccumulator acc(kDim, GetParam());
  long offset = 0;
  for (int b : kBatches) {
    ASSERT_TRUE(acc.Add(x.data() + offset * kDim, static_cast<long>(b) * kSeqlen, b).ok());
    offset += static_cast<long>(b) * kSeqlen;
  }
  EXPECT_EQ(acc.num_samples(), samples);
  const std::vector<double> expected = DirectHessian(x, rows, samples);
  const std::vector<double> h64 = acc.HessianF64().value();
  const std::vector<float> h32 = acc.HessianF32().value();
  const double tol = GetParam() == HessianPrecision::kFloat64 ? 1e-12 : 2e-6;
  for (int i = 0; i < kDim; ++i) {
    for (int j = 0; j < kDim; ++j) {
      const double e = expected[i * kDim + j];
      const double scale = std::sqrt(expected[i * kDim + i] * expected[j * kDim + j]);
      EXPECT_NEAR(h64[i * kDim + j], e, tol * scale) << i << "," << j;
      EXPECT_NEAR(h32[i * kDim + j], e, 2e-6 * scale) << i << "," << j;
      EXPECT_EQ(h64[i * kDim + j], h64[j * kDim + i]);  // symmetric fill
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Precisions, CalibHessianTest,
                         ::testing::Values(HessianPrecision::kFloat32, HessianPrecision::kFloat64));

TEST(CalibHessianAccumulatorTest, RejectsEmptySampleCount) {
  HessianAccumulator acc(kDim, HessianPrecision::kFloat32);
  const std::vector<float> x = RandomRows(kSeqlen, 1);
  EXPECT_FALSE(acc.Add(x.data(), kSeqlen, 0).ok());
}

TEST(CalibActivationNormTest, RunningFormEqualsSumOfSquaresOverSamples) {
  int samples = 0;
  for (int b : kBatches) samples += b;
  const long rows = static_cast<long>(samples) * kSeqlen;
  const std::vector<float> x = RandomRows(rows, 9);
  ActivationNormAccumulator acc(kDim);
  long offset = 0;
  for (int b : kBatches) {
    ASSERT_TRUE(acc.Add(x.data() + offset * kDim, static_cast<long>(b) * kSeqlen, b).ok());
    offset += static_cast<long>(b) * kSeqlen;
  }
  for (int j = 0; j < kDim; ++j) {
    double sum = 0.0;
    for (long r = 0; r < rows; ++r) sum += double{x[r * kDim + j]} * x[r * kDim + j];
    EXPECT_NEAR(acc.scaler_row()[j], sum / samples, 1e-5 * sum / samples) << j;
  }
}

// LayerStatistics feeds the requested group only, from a LayerForward observer.
TEST(CalibLayerStatisticsTest, ObservesOnlyRequestedGroups) {
  const ModelConfig config = MakeLlamaConfig(16, 24, 1, 2, 1, 32, 16, true);
  LayerStatistics stats(config, /*seqlen=*/4, HessianPrecision::kFloat32);
  stats.Request(LinearGroup::kDown, /*hessian=*/true, /*act_norm=*/true);
  absl::Status status;
  LinearInputObserver observer = stats.Observer(&status);
  std::vector<float> x_qkv(8 * 16, 1.0f), x_down(8 * 24, 2.0f);
  observer(0, LinearGroup::kQkv, x_qkv.data(), 8, 16);
  observer(0, LinearGroup::kDown, x_down.data(), 8, 24);
  ASSERT_TRUE(status.ok()) << status;
  EXPECT_EQ(stats.hessian(LinearGroup::kQkv), nullptr);
  ASSERT_NE(stats.hessian(LinearGroup::kDown), nullptr);
  EXPECT_EQ(stats.hessian(LinearGroup::kDown)->num_samples(), 2);
  // 8 rows of 2.0 over 2 samples: H = 2/2 · 8 · 4 = 32 everywhere, scaler = 8·4/2 = 16.
  EXPECT_FLOAT_EQ(stats.hessian(LinearGroup::kDown)->HessianF32().value()[5], 32.0f);
  EXPECT_FLOAT_EQ(stats.act_norm(LinearGroup::kDown)->scaler_row()[3], 16.0f);
  observer(0, LinearGroup::kDown, x_down.data(), 8, 23);  // wrong width
  EXPECT_FALSE(status.ok());
}

// What another device accumulated replaces the state (the GPU executor's
// hand-over); the shapes and the float32-only rule are checked.
TEST(CalibHessianAccumulatorTest, AssignReplacesStateAndChecksShape) {
  HessianAccumulator h(2, HessianPrecision::kFloat32);
  ASSERT_TRUE(h.Assign({1.0f, 2.0f, 2.0f, 5.0f}, 3).ok());
  EXPECT_EQ(h.num_samples(), 3);
  EXPECT_EQ(h.HessianF32().value(), (std::vector<float>{1.0f, 2.0f, 2.0f, 5.0f}));
  const absl::Status wrong = h.Assign({1.0f, 2.0f, 3.0f}, 1);
  EXPECT_EQ(wrong.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(wrong.message().find("3 values for a 2x2 H"), std::string::npos) << wrong;
  HessianAccumulator h64(2, HessianPrecision::kFloat64);
  EXPECT_EQ(h64.Assign({1.0f, 0.0f, 0.0f, 1.0f}, 1).code(), absl::StatusCode::kInvalidArgument);

  ActivationNormAccumulator a(3);
  ASSERT_TRUE(a.Assign({1.0f, 2.0f, 3.0f}, 4).ok());
  EXPECT_EQ(a.num_samples(), 4);
  EXPECT_EQ(a.scaler_row(), (std::vector<float>{1.0f, 2.0f, 3.0f}));
  EXPECT_EQ(a.Assign({1.0f}, 1).code(), absl::StatusCode::kInvalidArgument);
}

// SymmetricF32 is HessianF32 without the copy: the same values bit for bit,
// also after more batches (the in-place mirror must not leak into the
// accumulation), and zeros when nothing was accumulated.
TEST(CalibHessianAccumulatorTest, SymmetricViewEqualsTheCopyAcrossMoreBatches) {
  const std::vector<float> x = RandomRows(4 * kSeqlen, 5);
  HessianAccumulator acc(kDim, HessianPrecision::kFloat32);
  EXPECT_EQ(acc.HessianF32().value(), std::vector<float>(kDim * kDim, 0.0f));
  EXPECT_EQ(acc.HessianF64().value(), std::vector<double>(kDim * kDim, 0.0));
  HessianAccumulator reference(kDim, HessianPrecision::kFloat32);
  for (int batch = 0; batch < 4; ++batch) {
    const float* rows = x.data() + static_cast<size_t>(batch) * kSeqlen * kDim;
    ASSERT_TRUE(acc.Add(rows, kSeqlen, 1).ok());
    ASSERT_TRUE(reference.Add(rows, kSeqlen, 1).ok());
    const std::vector<float> copy = reference.HessianF32().value();
    const absl::Span<const float> view = acc.SymmetricF32().value();
    ASSERT_EQ(view.size(), copy.size());
    EXPECT_TRUE(std::equal(view.begin(), view.end(), copy.begin())) << "after batch " << batch;
    EXPECT_EQ(acc.HessianF32().value(), copy);
  }
  HessianAccumulator f64(kDim, HessianPrecision::kFloat64);
  EXPECT_TRUE(f64.SymmetricF32().value().empty());
}

// Values that only a device holds (the GPU executor's hand-over) reach the
// host once, when something reads them there: HessianF32/F64 copy them into
// their result, SymmetricF32 fetches them into the accumulator, and an Add
// after the hand-over continues from them exactly as from Assign's values.
TEST(CalibHessianAccumulatorTest, DeviceOnlyValuesAreFetchedOnceWhenNeeded) {
  HessianAccumulator reference(kDim, HessianPrecision::kFloat32);
  const std::vector<float> x = RandomRows(3 * kSeqlen, 9);
  ASSERT_TRUE(reference.Add(x.data(), 2 * kSeqlen, 2).ok());
  const std::vector<float> values = reference.HessianF32().value();

  int fetches = 0;
  HessianAccumulator acc(kDim, HessianPrecision::kFloat32);
  auto device = std::make_shared<testing::FakeDeviceHessian>(3, kDim, values, &fetches);
  ASSERT_TRUE(acc.AssignOnDevice(device, 2).ok());
  EXPECT_TRUE(acc.host_pending());
  EXPECT_EQ(acc.on_device().get(), device.get());
  EXPECT_EQ(acc.num_samples(), 2);
  EXPECT_EQ(acc.HessianF32().value(), values);  // a copy for the caller
  const std::vector<double> h64 = acc.HessianF64().value();
  EXPECT_EQ(h64[1], static_cast<double>(values[1]));
  EXPECT_EQ(fetches, 2);
  EXPECT_TRUE(acc.host_pending());
  const absl::Span<const float> view = acc.SymmetricF32().value();
  EXPECT_TRUE(std::equal(view.begin(), view.end(), values.begin()));
  EXPECT_EQ(fetches, 3);
  EXPECT_FALSE(acc.host_pending());
  EXPECT_EQ(acc.on_device().get(), device.get());  // still the same values
  ASSERT_TRUE(acc.SymmetricF32().ok());
  ASSERT_TRUE(acc.FetchToHost().ok());
  EXPECT_EQ(fetches, 3);

  // An Add continues from the device's values, fetched first.
  HessianAccumulator assigned(kDim, HessianPrecision::kFloat32);
  ASSERT_TRUE(assigned.Assign(values, 2).ok());
  HessianAccumulator pending(kDim, HessianPrecision::kFloat32);
  ASSERT_TRUE(pending.AssignOnDevice(device, 2).ok());
  const float* last = x.data() + static_cast<size_t>(2) * kSeqlen * kDim;
  ASSERT_TRUE(assigned.Add(last, kSeqlen, 1).ok());
  ASSERT_TRUE(pending.Add(last, kSeqlen, 1).ok());
  EXPECT_EQ(fetches, 4);
  EXPECT_EQ(pending.on_device(), nullptr);  // the values changed
  EXPECT_EQ(pending.num_samples(), 3);
  EXPECT_EQ(pending.HessianF32().value(), assigned.HessianF32().value());

  // A host Assign drops the device copy; the shapes and precision are checked.
  ASSERT_TRUE(acc.Assign(values, 2).ok());
  EXPECT_EQ(acc.on_device(), nullptr);
  const absl::Status narrow =
      acc.AssignOnDevice(std::make_shared<testing::FakeDeviceHessian>(3, kDim - 1, std::vector<float>(), nullptr), 1);
  EXPECT_EQ(narrow.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(narrow.message().find(absl::StrCat(kDim - 1, "-wide device H for a ", kDim, "-wide")), std::string::npos)
      << narrow;
  EXPECT_EQ(acc.AssignOnDevice(nullptr, 1).code(), absl::StatusCode::kInvalidArgument);
  HessianAccumulator f64(kDim, HessianPrecision::kFloat64);
  EXPECT_EQ(f64.AssignOnDevice(device, 2).code(), absl::StatusCode::kInvalidArgument);

  // A failed copy is an error that names it, and nothing changes.
  class FailingDevice final : public DeviceHessian {
   public:
    int device() const override { return 0; }
    int dim() const override { return kDim; }
    const float* data() const override { return nullptr; }
    absl::Status CopyToHost(absl::Span<float>) const override { return absl::InternalError("device lost"); }
  };
  HessianAccumulator failing(kDim, HessianPrecision::kFloat32);
  ASSERT_TRUE(failing.AssignOnDevice(std::make_shared<FailingDevice>(), 1).ok());
  const absl::Status lost = failing.FetchToHost();
  EXPECT_EQ(lost.code(), absl::StatusCode::kInternal);
  EXPECT_NE(lost.message().find("Hessian from the device: device lost"), std::string::npos) << lost;
  EXPECT_TRUE(failing.host_pending());
  EXPECT_EQ(failing.SymmetricF32().status().code(), absl::StatusCode::kInternal);
}

// A merge across ranks runs where the values are when the communicator
// reaches their device (NCCL): the device's merge is asked, nothing is
// fetched and the host all-reduces nothing; when the device's merge cannot
// start, or the communicator does not reach that device, the host merges
// (one fetch) with the layout of core/calib/hessian_merge_layout.h: the upper
// triangle of H·n row by row, then n.
TEST(CalibHessianAccumulatorTest, MergeRunsWhereTheValuesAreWhenTheCommunicatorReachesThem) {
  HessianAccumulator a(kDim, HessianPrecision::kFloat32), b(kDim, HessianPrecision::kFloat32);
  const std::vector<float> xa = RandomRows(2 * kSeqlen, 21), xb = RandomRows(3 * kSeqlen, 22);
  ASSERT_TRUE(a.Add(xa.data(), 2 * kSeqlen, 2).ok());
  ASSERT_TRUE(b.Add(xb.data(), 3 * kSeqlen, 3).ok());
  const std::vector<float> ha = a.HessianF32().value(), hb = b.HessianF32().value();
  std::vector<double> peer;
  for (int i = 0; i < kDim; ++i) {
    ASSERT_EQ(peer.size(), HessianMergeRowStart(i, kDim));
    for (int j = i; j < kDim; ++j) peer.push_back(static_cast<double>(hb[i * kDim + j]) * 3.0);
  }
  peer.push_back(3.0);
  ASSERT_EQ(peer.size(), HessianMergeCount(kDim));
  // Σ H_r·n_r / Σ n_r in float64, rounded once.
  std::vector<float> expected(kDim * kDim);
  for (int i = 0; i < kDim; ++i) {
    for (int j = 0; j < kDim; ++j) {
      const int u = std::min(i, j) * kDim + std::max(i, j);
      expected[i * kDim + j] =
          static_cast<float>((static_cast<double>(ha[u]) * 2.0 + static_cast<double>(hb[u]) * 3.0) / 5.0);
    }
  }

  testing::PeerCommunicator device_side(peer);
  {  // The device merges.
    int fetches = 0;
    testing::PeerCommunicator comm(peer, 3, &device_side);
    auto device = std::make_shared<testing::FakeDeviceHessian>(3, kDim, ha, &fetches);
    Communicator* merged_through = nullptr;
    long merged_n = -1;
    device->merge = [&](Communicator& c, long n) -> absl::StatusOr<std::optional<long>> {
      merged_through = &c;
      merged_n = n;
      return std::optional<long>(n + 3);
    };
    HessianAccumulator acc(kDim, HessianPrecision::kFloat32);
    ASSERT_TRUE(acc.AssignOnDevice(device, 2).ok());
    ASSERT_TRUE(acc.MergeAcrossRanks(comm).ok());
    EXPECT_EQ(merged_through, &device_side);
    EXPECT_EQ(merged_n, 2);
    EXPECT_EQ(acc.num_samples(), 5);
    EXPECT_EQ(fetches, 0);
    EXPECT_EQ(comm.all_reduces, 0);
    EXPECT_TRUE(acc.host_pending());
    EXPECT_EQ(acc.on_device().get(), device.get());

    // Its failure is the merge's, named.
    device->merge = [](Communicator&, long) -> absl::StatusOr<std::optional<long>> {
      return absl::UnavailableError("peer lost");
    };
    const absl::Status lost = acc.MergeAcrossRanks(comm);
    EXPECT_EQ(lost.code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(lost.message(), "Hessian all-reduce: peer lost");
  }
  // The device cannot start (nullopt), or the communicator does not reach
  // it: the host merges, with the peer's sums, to the expected values.
  for (const int reach : {3, 4}) {
    int fetches = 0;
    testing::PeerCommunicator comm(peer, reach, &device_side);
    auto device = std::make_shared<testing::FakeDeviceHessian>(3, kDim, ha, &fetches);
    int asked = 0;
    device->merge = [&](Communicator&, long) -> absl::StatusOr<std::optional<long>> {
      ++asked;
      return std::optional<long>();
    };
    HessianAccumulator acc(kDim, HessianPrecision::kFloat32);
    ASSERT_TRUE(acc.AssignOnDevice(device, 2).ok());
    ASSERT_TRUE(acc.MergeAcrossRanks(comm).ok());
    EXPECT_EQ(asked, reach == 3 ? 1 : 0);
    EXPECT_EQ(fetches, 1);
    EXPECT_EQ(comm.all_reduces, 1);
    EXPECT_EQ(acc.num_samples(), 5);
    EXPECT_EQ(acc.on_device(), nullptr);  // the values changed
    EXPECT_EQ(acc.HessianF32().value(), expected) << "reach " << reach;
  }
  {  // Values the host holds merge on the host, whatever the communicator reaches.
    testing::PeerCommunicator comm(peer, 3, &device_side);
    HessianAccumulator acc(kDim, HessianPrecision::kFloat32);
    ASSERT_TRUE(acc.Add(xa.data(), 2 * kSeqlen, 2).ok());
    ASSERT_TRUE(acc.MergeAcrossRanks(comm).ok());
    EXPECT_EQ(comm.all_reduces, 1);
    EXPECT_EQ(acc.num_samples(), 5);
    EXPECT_EQ(acc.HessianF32().value(), expected);
  }
  EXPECT_EQ(device_side.all_reduces, 0);
}

}  // namespace
}  // namespace shrinkray
