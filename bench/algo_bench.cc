// Compression solver throughput on Llama-2-7B shapes: GPTQ (w4, group 128)
// and SparseGPT (50% unstructured) on W [4096|11008, 4096] with H from 8192
// random calibration tokens, with either inverse factor (the chain, the
// flipped Cholesky: core/algo/hessian_inverse.h) and that factor alone; Hessian accumulation (X [8192, 4096]) through
// cblas_ssyrk and cblas_sgemm against a plain 4096³ sgemm as the machine's
// practical peak.
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "core/algo/gptq.h"
#include "core/algo/sparsegpt.h"
#include "core/pipeline/apply_stages.h"
#include "core/util/parallel.h"

namespace shrinkray {
namespace {

constexpr int kCols = 4096;
constexpr int kTokens = 8192;

// Deterministic N(0, 1)-ish values, filled in parallel (one stream per row).
std::vector<float> RandomMatrix(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> m(static_cast<size_t>(rows * cols));
  ParallelFor(rows, [&](int64_t r) {
    std::mt19937_64 rng(seed * 1000003u + static_cast<uint64_t>(r));
    std::normal_distribution<float> normal(0.0f, 1.0f);
    float* row = m.data() + r * cols;
    for (int64_t c = 0; c < cols; ++c) row[c] = normal(rng);
  });
  return m;
}

// Calibration tokens with correlated channels (a shared low-rank part) and
// per-channel scales, like real activations; H = 2/n XᵀX (full, symmetric).
const std::vector<float>& Tokens() {
  static const std::vector<float> x = [] {
    std::vector<float> x = RandomMatrix(kTokens, kCols, 1);
    const int rank = 64;
    const std::vector<float> z = RandomMatrix(kTokens, rank, 2);
    const std::vector<float> a = RandomMatrix(rank, kCols, 3);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, kTokens, kCols, rank, 0.3f, z.data(), rank, a.data(),
                kCols, 1.0f, x.data(), kCols);
    for (int64_t t = 0; t < kTokens; ++t)
      for (int c = 0; c < kCols; ++c) x[t * kCols + c] *= 0.5f + static_cast<float>(c % 7) * 0.25f;
    return x;
  }();
  return x;
}

const std::vector<float>& Hessian() {
  static const std::vector<float> h = [] {
    const std::vector<float>& x = Tokens();
    std::vector<float> h(static_cast<size_t>(kCols) * kCols);
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, kCols, kTokens, 2.0f / kTokens, x.data(), kCols, 0.0f,
                h.data(), kCols);
    for (int i = 0; i < kCols; ++i)
      for (int j = 0; j < i; ++j) h[static_cast<size_t>(i) * kCols + j] = h[static_cast<size_t>(j) * kCols + i];
    return h;
  }();
  return h;
}

// The bench's argument 0 / 1.
InverseFactorMethod Method(int64_t flipped) {
  return flipped != 0 ? InverseFactorMethod::kFlippedCholesky : InverseFactorMethod::kCholeskyInverseChain;
}

const std::vector<float>& Weight(int rows) {
  static std::map<int, std::vector<float>> cache;
  auto it = cache.find(rows);
  if (it == cache.end()) it = cache.emplace(rows, RandomMatrix(rows, kCols, 10 + rows)).first;
  return it->second;
}

void BM_GptqW4G128(benchmark::State& state) {
  const int rows = static_cast<int>(state.range(0));
  const auto& w = Weight(rows);
  const auto& h = Hessian();
  GptqOptions o;
  o.bits = 4;
  o.group_size = 128;
  o.act_order = state.range(1) != 0;
  o.inverse_factor = Method(state.range(2));
  for (auto _ : state) {
    auto r = GptqQuantize(w, rows, kCols, h, o);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(r->weight.data());
    state.counters["loss"] = r->report.loss;
  }
}
BENCHMARK(BM_GptqW4G128)
    ->Args({4096, 0, 0})
    ->Args({4096, 0, 1})
    ->Args({4096, 1, 0})
    ->Args({11008, 0, 0})
    ->Args({11008, 0, 1})
    ->ArgNames({"rows", "act_order", "flipped"})
    ->Unit(benchmark::kSecond)
    ->UseRealTime()
    ->Iterations(1);

void BM_SparseGpt50(benchmark::State& state) {
  const int rows = static_cast<int>(state.range(0));
  const auto& w = Weight(rows);
  const auto& h = Hessian();
  SparseGptOptions o;
  o.sparsity = 0.5;
  o.inverse_factor = Method(state.range(1));
  for (auto _ : state) {
    auto r = SparseGptPrune(w, rows, kCols, h, o);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(r->weight.data());
  }
}
BENCHMARK(BM_SparseGpt50)
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->Args({11008, 0})
    ->ArgNames({"rows", "flipped"})
    ->Unit(benchmark::kSecond)
    ->UseRealTime()
    ->Iterations(1);

// The damped inverse factor of the 4096-wide H alone, as the solvers run it.
void BM_InverseFactor(benchmark::State& state) {
  const auto& h = Hessian();
  const InverseFactorMethod method = Method(state.range(0));
  for (auto _ : state) {
    auto r = algo_internal::InvertHessian(h, kCols, 0.01, 0.0015, method);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    benchmark::DoNotOptimize(r->upper.data());
  }
  // The chain's 4n³/3 or the flipped factor's 2n³/3.
  const double n = kCols;
  state.counters["GFLOP/s"] =
      benchmark::Counter((method == InverseFactorMethod::kFlippedCholesky ? 2.0 : 4.0) / 3.0 * n * n * n / 1e9,
                         benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_InverseFactor)->Arg(0)->Arg(1)->ArgName("flipped")->Unit(benchmark::kMillisecond)->UseRealTime();

// H += XᵀX for X [8192, 4096]: ssyrk computes one triangle (n·k·(n+1) flops).
void BM_HessianSsyrk(benchmark::State& state) {
  const auto& x = Tokens();
  std::vector<float> h(static_cast<size_t>(kCols) * kCols, 0.0f);
  for (auto _ : state) {
    cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, kCols, kTokens, 2.0f / kTokens, x.data(), kCols, 1.0f,
                h.data(), kCols);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(static_cast<double>(kTokens) * kCols * (kCols + 1) / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_HessianSsyrk)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// The same with a full sgemm (both triangles, 2·n²·k flops).
void BM_HessianSgemm(benchmark::State& state) {
  const auto& x = Tokens();
  std::vector<float> h(static_cast<size_t>(kCols) * kCols, 0.0f);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, kCols, kCols, kTokens, 2.0f / kTokens, x.data(), kCols,
                x.data(), kCols, 1.0f, h.data(), kCols);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(2.0 * kTokens * kCols * kCols / 1e9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_HessianSgemm)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

// A matrix's reported error (RelativeOutputError: tr(D H Dᵀ)/tr(W H Wᵀ)) on
// W [rows, 4096], against the form it replaced in the same run: two full
// ssymm products (arg 1 = 0) vs the tiles on and right of H's diagonal
// (arg 1 = 1).
double FullSymmTrace(const float* a, int rows, int cols, const float* h) {
  std::vector<float> ah(static_cast<size_t>(rows) * cols);
  cblas_ssymm(CblasRowMajor, CblasRight, CblasUpper, rows, cols, 1.0f, h, cols, a, cols, 0.0f, ah.data(), cols);
  double sum = 0.0;
  for (size_t i = 0; i < ah.size(); ++i) sum += static_cast<double>(a[i]) * ah[i];
  return sum;
}

void BM_OutputError(benchmark::State& state) {
  const int rows = static_cast<int>(state.range(0));
  const bool tiled = state.range(1) != 0;
  const auto& w = Weight(rows);
  const auto& h = Hessian();
  std::vector<float> q(w.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = std::round(w[i] * 4.0f) / 4.0f;
  double error = 0.0;
  for (auto _ : state) {
    if (tiled) {
      error = RelativeOutputError(w, q, rows, kCols, h);
    } else {
      std::vector<float> d(w.size());
      for (size_t i = 0; i < d.size(); ++i) d[i] = w[i] - q[i];
      error = FullSymmTrace(d.data(), rows, kCols, h.data()) / FullSymmTrace(w.data(), rows, kCols, h.data());
    }
    benchmark::DoNotOptimize(error);
  }
  state.counters["error"] = error;
  state.SetLabel(tiled ? "upper tiles" : "two ssymm");
}
BENCHMARK(BM_OutputError)
    ->Args({4096, 0})
    ->Args({4096, 1})
    ->Args({11008, 0})
    ->Args({11008, 1})
    ->ArgNames({"rows", "tiled"})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->Iterations(3);

// Reference point: a plain 4096³ sgemm.
void BM_SgemmPeak(benchmark::State& state) {
  const int n = 4096;
  const std::vector<float> a = RandomMatrix(n, n, 4), b = RandomMatrix(n, n, 5);
  std::vector<float> c(static_cast<size_t>(n) * n);
  for (auto _ : state) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, c.data(),
                n);
    benchmark::DoNotOptimize(c.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * n * n * n / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_SgemmPeak)->Unit(benchmark::kMillisecond)->UseRealTime()->MinTime(2.0);

}  // namespace
}  // namespace shrinkray

BENCHMARK_MAIN();
