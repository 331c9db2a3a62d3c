// Float64, unblocked re-statements of the published algorithms (GPTQ
// fasterquant, SparseGPT fasterprune) for the algo_*_test.cc suites, written
// for clarity, not speed. They share no code with core/algo.
//
// Unblocked is mathematically equal to the blocked sweep: the outer W at the
// start of block [i1, i2) equals the fully-updated W after column i1 - 1.
// Two things still depend on the blocks and are modelled with a snapshot of W
// taken at each block start: GPTQ's group refit (on the stale outer W) and
// SparseGPT's per-block unstructured mask.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <vector>

namespace shrinkray::algo_test {

struct RefParams {
  double scale = 1.0;
  double zero = 0.0;
};

inline RefParams RefFit(const double* x, int n, double maxq, bool sym, const uint8_t* keep = nullptr) {
  double xmin = 0.0, xmax = 0.0;
  for (int i = 0; i < n; ++i) {
    const double v = (keep != nullptr && keep[i] == 0) ? 0.0 : x[i];
    xmin = std::min(xmin, v);
    xmax = std::max(xmax, v);
  }
  if (sym) {
    xmax = std::max(std::fabs(xmin), xmax);
    if (xmin < 0) xmin = -xmax;
  }
  if (xmin == 0 && xmax == 0) {
    xmin = -1;
    xmax = 1;
  }
  RefParams p;
  p.scale = (xmax - xmin) / maxq;
  p.zero = sym ? (maxq + 1) / 2 : std::nearbyint(-xmin / p.scale);
  return p;
}

inline double RefCode(double x, const RefParams& p, double maxq) {
  return std::clamp(std::nearbyint(x / p.scale) + p.zero, 0.0, maxq);
}

// Lower Cholesky factor of a symmetric positive definite a [n, n]; false when
// not positive definite.
inline bool RefCholesky(const std::vector<double>& a, int n, std::vector<double>* l) {
  l->assign(static_cast<size_t>(n) * n, 0.0);
  for (int j = 0; j < n; ++j) {
    double s = a[static_cast<size_t>(j) * n + j];
    for (int k = 0; k < j; ++k) s -= (*l)[static_cast<size_t>(j) * n + k] * (*l)[static_cast<size_t>(j) * n + k];
    if (!(s > 0)) return false;
    const double d = std::sqrt(s);
    (*l)[static_cast<size_t>(j) * n + j] = d;
    for (int i = j + 1; i < n; ++i) {
      double t = a[static_cast<size_t>(i) * n + j];
      for (int k = 0; k < j; ++k) t -= (*l)[static_cast<size_t>(i) * n + k] * (*l)[static_cast<size_t>(j) * n + k];
      (*l)[static_cast<size_t>(i) * n + j] = t / d;
    }
  }
  return true;
}

// U (upper) with (H + damp·mean(diag)·I)⁻¹ = Uᵀ U.
inline std::vector<double> RefHinvUpper(std::vector<double> h, int n, double percdamp) {
  double mean = 0;
  for (int j = 0; j < n; ++j) mean += h[static_cast<size_t>(j) * n + j];
  mean /= n;
  for (int j = 0; j < n; ++j) h[static_cast<size_t>(j) * n + j] += percdamp * mean;
  std::vector<double> l;
  if (!RefCholesky(h, n, &l)) return {};
  // inv(L) by forward substitution, then H⁻¹ = inv(L)ᵀ inv(L).
  std::vector<double> li(static_cast<size_t>(n) * n, 0.0);
  for (int c = 0; c < n; ++c) {
    for (int i = c; i < n; ++i) {
      double s = (i == c) ? 1.0 : 0.0;
      for (int k = c; k < i; ++k) s -= l[static_cast<size_t>(i) * n + k] * li[static_cast<size_t>(k) * n + c];
      li[static_cast<size_t>(i) * n + c] = s / l[static_cast<size_t>(i) * n + i];
    }
  }
  std::vector<double> inv(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j <= i; ++j) {
      double s = 0;
      for (int k = i; k < n; ++k) s += li[static_cast<size_t>(k) * n + i] * li[static_cast<size_t>(k) * n + j];
      inv[static_cast<size_t>(i) * n + j] = s;
      inv[static_cast<size_t>(j) * n + i] = s;
    }
  }
  std::vector<double> l2;
  if (!RefCholesky(inv, n, &l2)) return {};
  std::vector<double> u(static_cast<size_t>(n) * n, 0.0);
  for (int i = 0; i < n; ++i) {
    for (int j = i; j < n; ++j) u[static_cast<size_t>(i) * n + j] = l2[static_cast<size_t>(j) * n + i];
  }
  return u;
}

struct RefGptqOptions {
  int bits = 4;
  int group_size = -1;
  bool sym = true;
  bool act_order = false;
  bool static_groups = false;
  double damp = 0.01;
  int block_size = 128;  // only for the stale group refit
  std::vector<uint8_t> keep;  // optional [rows, cols]
};

struct RefGptqResult {
  std::vector<double> q;        // dequantized, original order
  std::vector<int> codes;       // original order
  std::vector<int> g_idx;
  std::vector<RefParams> groups;  // [num_groups * rows]
  double loss = 0;
  bool ok = false;
};

inline RefGptqResult RefGptq(std::vector<double> w, int rows, int cols, std::vector<double> h,
                             const RefGptqOptions& o) {
  RefGptqResult res;
  const double maxq = std::pow(2.0, o.bits) - 1;
  const int gs = o.group_size;
  const bool grouped = gs > 0;
  const bool stat = grouped && o.static_groups;
  const int ng = grouped ? (cols + gs - 1) / gs : 1;
  auto at = [cols](int r, int c) { return static_cast<size_t>(r) * cols + c; };
  std::vector<uint8_t> keep = o.keep;
  if (!keep.empty()) {
    for (size_t i = 0; i < w.size(); ++i)
      if (!keep[i]) w[i] = 0;
  }
  auto krow = [&](int r, int c) -> const uint8_t* { return keep.empty() ? nullptr : keep.data() + at(r, c); };
  std::vector<RefParams> cur(rows);
  if (!grouped)
    for (int r = 0; r < rows; ++r) cur[r] = RefFit(&w[at(r, 0)], cols, maxq, o.sym, krow(r, 0));
  for (int j = 0; j < cols; ++j) {
    if (h[at(j, j)] == 0) {
      h[at(j, j)] = 1;
      for (int r = 0; r < rows; ++r) w[at(r, j)] = 0;
    }
  }
  res.groups.assign(static_cast<size_t>(ng) * rows, RefParams{});
  if (stat) {
    for (int g = 0; g < ng; ++g)
      for (int r = 0; r < rows; ++r)
        res.groups[static_cast<size_t>(g) * rows + r] =
            RefFit(&w[at(r, g * gs)], std::min(gs, cols - g * gs), maxq, o.sym, krow(r, g * gs));
  }
  std::vector<int> perm(cols);
  std::iota(perm.begin(), perm.end(), 0);
  if (o.act_order) {
    std::stable_sort(perm.begin(), perm.end(), [&](int a, int b) { return h[at(a, a)] > h[at(b, b)]; });
  }
  std::vector<double> wp(w.size()), hp(h.size());
  std::vector<uint8_t> kp(keep.size());
  for (int r = 0; r < rows; ++r)
    for (int k = 0; k < cols; ++k) {
      wp[at(r, k)] = w[at(r, perm[k])];
      if (!keep.empty()) kp[at(r, k)] = keep[at(r, perm[k])];
    }
  for (int i = 0; i < cols; ++i)
    for (int j = 0; j < cols; ++j) hp[at(i, j)] = h[static_cast<size_t>(perm[i]) * cols + perm[j]];
  const std::vector<double> u = RefHinvUpper(hp, cols, o.damp);
  if (u.empty()) return res;
  std::vector<double> q(w.size());
  std::vector<int> codes(w.size());
  std::vector<double> snapshot;
  for (int c = 0; c < cols; ++c) {
    if (c % o.block_size == 0) snapshot = wp;  // the outer W of this block
    const double d = u[at(c, c)];
    for (int r = 0; r < rows; ++r) {
      const uint8_t* kr = keep.empty() ? nullptr : kp.data() + at(r, 0);
      if (grouped) {
        if (stat) {
          cur[r] = res.groups[static_cast<size_t>(perm[c] / gs) * rows + r];
        } else if (c % gs == 0) {
          cur[r] = RefFit(&snapshot[at(r, c)], std::min(gs, cols - c), maxq, o.sym, kr == nullptr ? nullptr : kr + c);
          res.groups[static_cast<size_t>(c / gs) * rows + r] = cur[r];
        }
      }
      const double wv = (kr != nullptr && kr[c] == 0) ? 0.0 : wp[at(r, c)];
      const double code = RefCode(wv, cur[r], maxq);
      const double qv = cur[r].scale * (code - cur[r].zero);
      q[at(r, c)] = qv;
      codes[at(r, c)] = static_cast<int>(code);
      res.loss += (wv - qv) * (wv - qv) / (d * d) / 2;
      const double e = (wv - qv) / d;
      for (int j = c + 1; j < cols; ++j) wp[at(r, j)] -= e * u[at(c, j)];
    }
  }
  if (!grouped) res.groups = cur;
  res.q.resize(w.size());
  res.codes.resize(w.size());
  res.g_idx.assign(cols, 0);
  for (int k = 0; k < cols; ++k) {
    for (int r = 0; r < rows; ++r) {
      res.q[at(r, perm[k])] = q[at(r, k)];
      res.codes[at(r, perm[k])] = codes[at(r, k)];
    }
    if (grouped) res.g_idx[perm[k]] = stat ? perm[k] / gs : k / gs;
  }
  res.ok = true;
  return res;
}

struct RefSparseGptOptions {
  double sparsity = 0.5;
  int prune_n = 0, prune_m = 0;
  int block_size = 128;
  double damp = 0.01;
  int bits = 0;
  bool sym = true;
};

struct RefSparseGptResult {
  std::vector<double> w;
  std::vector<uint8_t> keep;
  double loss = 0;
  bool ok = false;
};

inline RefSparseGptResult RefSparseGpt(std::vector<double> w, int rows, int cols, std::vector<double> h,
                                       const RefSparseGptOptions& o) {
  RefSparseGptResult res;
  auto at = [cols](int r, int c) { return static_cast<size_t>(r) * cols + c; };
  const double maxq = o.bits ? std::pow(2.0, o.bits) - 1 : 0;
  std::vector<RefParams> par(rows);
  if (o.bits)
    for (int r = 0; r < rows; ++r) par[r] = RefFit(&w[at(r, 0)], cols, maxq, o.sym);
  for (int j = 0; j < cols; ++j) {
    if (h[at(j, j)] == 0) {
      h[at(j, j)] = 1;
      for (int r = 0; r < rows; ++r) w[at(r, j)] = 0;
    }
  }
  const std::vector<double> u = RefHinvUpper(h, cols, o.damp);
  if (u.empty()) return res;
  res.keep.assign(w.size(), 1);
  res.w.assign(w.size(), 0);
  for (int c = 0; c < cols; ++c) {
    if (o.prune_n == 0 && c % o.block_size == 0) {
      const int c2 = std::min(cols, c + o.block_size);
      std::vector<double> score;
      for (int r = 0; r < rows; ++r)
        for (int k = c; k < c2; ++k) score.push_back(w[at(r, k)] * w[at(r, k)] / (u[at(k, k)] * u[at(k, k)]));
      std::vector<double> sorted = score;
      std::sort(sorted.begin(), sorted.end());
      const double thresh = sorted[static_cast<size_t>(static_cast<double>(sorted.size()) * o.sparsity)];
      size_t s = 0;
      for (int r = 0; r < rows; ++r)
        for (int k = c; k < c2; ++k) res.keep[at(r, k)] = score[s++] <= thresh ? 0 : 1;
    }
    for (int r = 0; r < rows; ++r) {
      if (o.prune_n != 0 && c % o.prune_m == 0) {
        std::vector<int> idx(o.prune_m);
        std::iota(idx.begin(), idx.end(), 0);
        std::vector<double> sc(o.prune_m);
        for (int k = 0; k < o.prune_m; ++k)
          sc[k] = w[at(r, c + k)] * w[at(r, c + k)] / (u[at(c + k, c + k)] * u[at(c + k, c + k)]);
        std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return sc[a] < sc[b]; });
        for (int k = 0; k < o.prune_n; ++k) res.keep[at(r, c + idx[k])] = 0;
      }
      const double d = u[at(c, c)];
      const double wv = w[at(r, c)];
      double qv = res.keep[at(r, c)] ? wv : 0.0;
      if (o.bits) qv = par[r].scale * (RefCode(qv, par[r], maxq) - par[r].zero);
      res.w[at(r, c)] = qv;
      res.loss += (wv - qv) * (wv - qv) / (d * d) / 2;
      const double e = (wv - qv) / d;
      for (int j = c + 1; j < cols; ++j) w[at(r, j)] -= e * u[at(c, j)];
    }
  }
  res.ok = true;
  return res;
}

// Test data: W ~ N(0, 1); X [tokens, cols] with correlated columns
// (X = Z · A, A = I + 0.5·N(0,1)/sqrt(cols)) and per-column scales spread
// over a decade; H = 2/tokens · XᵀX as float (what the calibration executor
// delivers).
struct Problem {
  int rows = 0, cols = 0;
  std::vector<float> w;
  std::vector<float> h;
};

inline Problem MakeProblem(int rows, int cols, int tokens, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<double> normal(0.0, 1.0);
  std::uniform_real_distribution<double> uni(0.3, 3.0);
  Problem p;
  p.rows = rows;
  p.cols = cols;
  p.w.resize(static_cast<size_t>(rows) * cols);
  for (auto& v : p.w) v = static_cast<float>(normal(rng));
  std::vector<double> a(static_cast<size_t>(cols) * cols);
  for (int i = 0; i < cols; ++i)
    for (int j = 0; j < cols; ++j)
      a[static_cast<size_t>(i) * cols + j] = (i == j ? 1.0 : 0.0) + 0.5 * normal(rng) / std::sqrt(cols);
  std::vector<double> colscale(cols);
  for (auto& s : colscale) s = uni(rng);
  std::vector<double> x(static_cast<size_t>(tokens) * cols, 0.0);
  std::vector<double> z(cols);
  for (int t = 0; t < tokens; ++t) {
    for (auto& v : z) v = normal(rng);
    for (int k = 0; k < cols; ++k) {
      const double zk = z[k];
      const double* ar = a.data() + static_cast<size_t>(k) * cols;
      double* xr = x.data() + static_cast<size_t>(t) * cols;
      for (int j = 0; j < cols; ++j) xr[j] += zk * ar[j];
    }
    for (int j = 0; j < cols; ++j) x[static_cast<size_t>(t) * cols + j] *= colscale[j];
  }
  p.h.assign(static_cast<size_t>(cols) * cols, 0.0f);
  std::vector<double> hd(static_cast<size_t>(cols) * cols, 0.0);
  for (int t = 0; t < tokens; ++t) {
    const double* xr = x.data() + static_cast<size_t>(t) * cols;
    for (int i = 0; i < cols; ++i) {
      const double xi = xr[i];
      double* hr = hd.data() + static_cast<size_t>(i) * cols;
      for (int j = 0; j < cols; ++j) hr[j] += xi * xr[j];
    }
  }
  for (size_t i = 0; i < hd.size(); ++i) p.h[i] = static_cast<float>(2.0 * hd[i] / tokens);
  return p;
}

// Marks columns dead: their row and column of H become exactly zero.
inline void KillColumns(Problem* p, const std::vector<int>& dead) {
  for (int j : dead)
    for (int k = 0; k < p->cols; ++k) {
      p->h[static_cast<size_t>(j) * p->cols + k] = 0.0f;
      p->h[static_cast<size_t>(k) * p->cols + j] = 0.0f;
    }
}

inline std::vector<double> ToDouble(const std::vector<float>& v) { return std::vector<double>(v.begin(), v.end()); }

// Σ_r Δ_r H Δ_rᵀ with Δ = W - Q: the layer's output error ‖(W - Q)X‖² up to
// the constant tokens/2.
inline double OutputError(const std::vector<float>& w, const std::vector<float>& q, const std::vector<float>& h,
                          int rows, int cols) {
  double total = 0;
  std::vector<double> delta(cols);
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c)
      delta[c] = static_cast<double>(w[static_cast<size_t>(r) * cols + c]) - q[static_cast<size_t>(r) * cols + c];
    for (int i = 0; i < cols; ++i) {
      double s = 0;
      for (int j = 0; j < cols; ++j) s += h[static_cast<size_t>(i) * cols + j] * delta[j];
      total += delta[i] * s;
    }
  }
  return total;
}

}  // namespace shrinkray::algo_test
