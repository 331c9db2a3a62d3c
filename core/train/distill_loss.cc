#include "core/train/distill_loss.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace shrinkray::train {
namespace {

// The teacher's tail mass is floored here, so that reverse KL and log(tail)
// stay finite when its top-k hold (up to rounding) all of its mass.
constexpr double kTailFloor = 1e-12;
// Top-k probabilities may exceed 1 by rounding (float log-probs); more than
// this means they were not normalised over the whole vocabulary.
constexpr double kTopKSumSlack = 1e-3;

double LogSumExp(const double* x, size_t n) {
  double m = -INFINITY;
  for (size_t i = 0; i < n; ++i) m = std::max(m, x[i]);
  if (!std::isfinite(m)) return m;
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += std::exp(x[i] - m);
  return m + std::log(s);
}

double LogAddExp(double a, double b) {
  const double m = std::max(a, b);
  if (m == -INFINITY) return m;
  return m + std::log(std::exp(a - m) + std::exp(b - m));
}

absl::Status ValidateOptions(const DistillLossOptions& o) {
  if (!(o.alpha >= 0.0 && o.alpha <= 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistillLossOptions.alpha = ", o.alpha, " is outside [0, 1]"));
  }
  if (!(o.temperature > 0.0) || !std::isfinite(o.temperature)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistillLossOptions.temperature = ", o.temperature, " must be > 0"));
  }
  if (o.divergence == Divergence::kJSD && !(o.beta > 0.0 && o.beta < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistillLossOptions.beta = ", o.beta, " is outside (0, 1)"));
  }
  return absl::OkStatus();
}

template <typename T>
absl::Status ValidateStudent(std::span<const T> student_logits, long rows, int vocab,
                             std::span<const int32_t> labels, std::span<T> dlogits) {
  if (rows <= 0 || vocab <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistillLoss: rows ", rows, " and vocab ", vocab, " must be positive"));
  }
  const size_t n = static_cast<size_t>(rows) * vocab;
  if (student_logits.size() != n || dlogits.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DistillLoss: student_logits has ", student_logits.size(), " and dlogits ",
        dlogits.size(), " values, expected rows * vocab = ", n));
  }
  if (static_cast<long>(labels.size()) != rows) {
    return absl::InvalidArgumentError(
        absl::StrCat("DistillLoss: labels has ", labels.size(), " values, expected ", rows));
  }
  for (long r = 0; r < rows; ++r) {
    if (labels[r] >= vocab) {
      return absl::InvalidArgumentError(absl::StrCat("DistillLoss: labels[", r, "] = ",
                                                     labels[r], " is outside [0, ", vocab, ")"));
    }
  }
  return absl::OkStatus();
}

// The divergence between bucketed distributions P (teacher) and Q (student)
// given as logs, and G_b = dD/dl_b for logits l whose softmax is Q: with
// g_b = dD/dQ_b, G_b = Q_b (g_b - sum_c Q_c g_c). Written per divergence in
// forms that stay finite when a mass underflows.
double BucketDivergence(const DistillLossOptions& o, const std::vector<double>& log_p,
                        const std::vector<double>& log_q, std::vector<double>* grad) {
  const size_t n = log_p.size();
  grad->assign(n, 0.0);
  double d = 0.0;
  switch (o.divergence) {
    case Divergence::kForwardKL: {
      // g_b = -P_b / Q_b, so G_b = -P_b + Q_b sum(P).
      double sum_p = 0.0;
      for (size_t b = 0; b < n; ++b) {
        const double p = std::exp(log_p[b]);
        sum_p += p;
        if (p > 0.0) d += p * (log_p[b] - log_q[b]);
      }
      for (size_t b = 0; b < n; ++b) (*grad)[b] = -std::exp(log_p[b]) + std::exp(log_q[b]) * sum_p;
      break;
    }
    case Divergence::kReverseKL: {
      // g_b = log(Q_b / P_b) + 1; the 1 cancels against sum(Q) = 1.
      for (size_t b = 0; b < n; ++b) d += std::exp(log_q[b]) * (log_q[b] - log_p[b]);
      for (size_t b = 0; b < n; ++b) {
        (*grad)[b] = std::exp(log_q[b]) * (log_q[b] - log_p[b] - d);
      }
      break;
    }
    case Divergence::kJSD: {
      // dJSD/dQ_b = (1 - beta) log(Q_b / M_b): the terms through M cancel.
      const double lb = std::log(o.beta), l1b = std::log1p(-o.beta);
      std::vector<double> g(n);
      double mean_g = 0.0;
      for (size_t b = 0; b < n; ++b) {
        const double log_m = LogAddExp(lb + log_p[b], l1b + log_q[b]);
        const double p = std::exp(log_p[b]), q = std::exp(log_q[b]);
        if (p > 0.0) d += o.beta * p * (log_p[b] - log_m);
        if (q > 0.0) d += (1.0 - o.beta) * q * (log_q[b] - log_m);
        g[b] = (1.0 - o.beta) * (log_q[b] - log_m);
        mean_g += q * g[b];
      }
      for (size_t b = 0; b < n; ++b) (*grad)[b] = std::exp(log_q[b]) * (g[b] - mean_g);
      break;
    }
  }
  return d;
}

// Shared driver: `row_divergence(r, u, du)` returns D of row r given the
// student's tempered logits u = z_S / T and writes dD/du (zero-filled).
template <typename T, typename RowDivergence>
DistillLossValue Mix(const DistillLossOptions& o, std::span<const T> student_logits, long rows,
                     int vocab, std::span<const int32_t> labels, std::span<T> dlogits,
                     RowDivergence&& row_divergence) {
  const double temp = o.temperature, alpha = o.alpha;
  long labelled = 0;
  for (long r = 0; r < rows; ++r) labelled += labels[r] >= 0 ? 1 : 0;
  // d(alpha T^2 D / rows)/dz = alpha T / rows * dD/du.
  const double kd_scale = alpha * temp / rows;
  const double ce_scale = labelled > 0 ? (1.0 - alpha) / labelled : 0.0;
  DistillLossValue value;
  std::vector<double> z(vocab), u(vocab), du(vocab);
  for (long r = 0; r < rows; ++r) {
    const T* zs = student_logits.data() + r * vocab;
    for (int j = 0; j < vocab; ++j) {
      z[j] = zs[j];
      u[j] = z[j] / temp;
    }
    std::fill(du.begin(), du.end(), 0.0);
    value.divergence += row_divergence(r, u, &du);
    T* out = dlogits.data() + r * vocab;
    for (int j = 0; j < vocab; ++j) out[j] = static_cast<T>(kd_scale * du[j]);
    if (labels[r] >= 0) {
      const double lse = LogSumExp(z.data(), z.size());
      value.cross_entropy += lse - z[labels[r]];
      for (int j = 0; j < vocab; ++j) {
        const double grad = std::exp(z[j] - lse) - (j == labels[r] ? 1.0 : 0.0);
        out[j] = static_cast<T>(out[j] + ce_scale * grad);
      }
    }
  }
  value.divergence /= rows;
  value.cross_entropy = labelled > 0 ? value.cross_entropy / labelled : 0.0;
  value.loss = alpha * temp * temp * value.divergence + (1.0 - alpha) * value.cross_entropy;
  return value;
}

}  // namespace

template <typename T>
absl::StatusOr<DistillLossValue> DistillLoss(const DistillLossOptions& options,
                                             std::span<const T> student_logits, long rows,
                                             int vocab, const TeacherLogits<T>& teacher,
                                             std::span<const int32_t> labels,
                                             std::span<T> dlogits) {
  SR_RETURN_IF_ERROR(ValidateOptions(options));
  SR_RETURN_IF_ERROR(ValidateStudent(student_logits, rows, vocab, labels, dlogits));
  if (teacher.vocab != vocab) {
    return absl::InvalidArgumentError(absl::StrCat("DistillLoss: teacher vocab ", teacher.vocab,
                                                   " does not match the student's vocab ",
                                                   vocab));
  }
  if (teacher.logits.size() != static_cast<size_t>(rows) * vocab) {
    return absl::InvalidArgumentError(absl::StrCat("DistillLoss: teacher logits has ",
                                                   teacher.logits.size(), " values, expected ",
                                                   static_cast<size_t>(rows) * vocab));
  }
  std::vector<double> log_p(vocab), log_q(vocab), grad;
  return Mix<T>(options, student_logits, rows, vocab, labels, dlogits,
                [&](long r, const std::vector<double>& u, std::vector<double>* du) {
                  const T* zt = teacher.logits.data() + r * vocab;
                  for (int j = 0; j < vocab; ++j) log_p[j] = zt[j] / options.temperature;
                  const double lse_p = LogSumExp(log_p.data(), log_p.size());
                  const double lse_q = LogSumExp(u.data(), u.size());
                  for (int j = 0; j < vocab; ++j) {
                    log_p[j] -= lse_p;
                    log_q[j] = u[j] - lse_q;
                  }
                  const double d = BucketDivergence(options, log_p, log_q, &grad);
                  std::copy(grad.begin(), grad.end(), du->begin());
                  return d;
                });
}

template <typename T>
absl::StatusOr<DistillLossValue> DistillLoss(const DistillLossOptions& options,
                                             std::span<const T> student_logits, long rows,
                                             int vocab, const TeacherTopK<T>& teacher,
                                             std::span<const int32_t> labels,
                                             std::span<T> dlogits) {
  SR_RETURN_IF_ERROR(ValidateOptions(options));
  SR_RETURN_IF_ERROR(ValidateStudent(student_logits, rows, vocab, labels, dlogits));
  const int k = teacher.k;
  if (k <= 0) {
    return absl::InvalidArgumentError(absl::StrCat("DistillLoss: top_k = ", k, " must be positive"));
  }
  if (k > vocab) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DistillLoss: top_k = ", k, " is larger than the vocabulary (", vocab, ")"));
  }
  const size_t n = static_cast<size_t>(rows) * k;
  if (teacher.ids.size() != n || teacher.log_probs.size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "DistillLoss: top-k ids has ", teacher.ids.size(), " and log_probs ",
        teacher.log_probs.size(), " values, expected rows * top_k = ", n));
  }
  // Ids in range and distinct in each row; in tail mode, mass at most 1.
  std::vector<long> seen(vocab, -1);
  for (long r = 0; r < rows; ++r) {
    double mass = 0.0;
    for (int i = 0; i < k; ++i) {
      const int32_t id = teacher.ids[r * k + i];
      if (id < 0 || id >= vocab) {
        return absl::InvalidArgumentError(absl::StrCat("DistillLoss: top-k id ", id, " in row ",
                                                       r, " is outside [0, ", vocab, ")"));
      }
      if (seen[id] == r) {
        return absl::InvalidArgumentError(
            absl::StrCat("DistillLoss: top-k id ", id, " repeats in row ", r));
      }
      seen[id] = r;
      mass += std::exp(static_cast<double>(teacher.log_probs[r * k + i]));
    }
    if (teacher.mode == TopKMode::kTailBucket && mass > 1.0 + kTopKSumSlack) {
      return absl::InvalidArgumentError(absl::StrCat(
          "DistillLoss: top-k probabilities of row ", r, " sum to ", mass,
          " > 1; tail_bucket needs log-probs normalised over the whole vocabulary"));
    }
  }

  const bool tail = teacher.mode == TopKMode::kTailBucket && k < vocab;
  const size_t buckets = static_cast<size_t>(k) + (tail ? 1 : 0);
  std::vector<double> log_p(buckets), log_q(buckets), grad, u_top(k), u_rest;
  std::vector<char> in_top(vocab, 0);
  return Mix<T>(
      options, student_logits, rows, vocab, labels, dlogits,
      [&](long r, const std::vector<double>& u, std::vector<double>* du) {
        const int32_t* ids = teacher.ids.data() + r * k;
        const T* lp = teacher.log_probs.data() + r * k;
        for (int i = 0; i < k; ++i) {
          u_top[i] = u[ids[i]];
          log_p[i] = lp[i];
        }
        if (teacher.mode == TopKMode::kRenormalize) {
          // Both distributions renormalised over the k ids.
          const double lse_p = LogSumExp(log_p.data(), k);
          const double lse_q = LogSumExp(u_top.data(), k);
          for (int i = 0; i < k; ++i) {
            log_p[i] -= lse_p;
            log_q[i] = u_top[i] - lse_q;
          }
          const double d = BucketDivergence(options, log_p, log_q, &grad);
          for (int i = 0; i < k; ++i) (*du)[ids[i]] = grad[i];
          return d;
        }
        const double lse_all = LogSumExp(u.data(), u.size());
        double mass = 0.0;
        for (int i = 0; i < k; ++i) {
          log_q[i] = u_top[i] - lse_all;
          mass += std::exp(log_p[i]);
        }
        double lse_rest = -INFINITY;
        if (tail) {
          for (int i = 0; i < k; ++i) in_top[ids[i]] = 1;
          u_rest.clear();
          for (int j = 0; j < vocab; ++j) {
            if (!in_top[j]) u_rest.push_back(u[j]);
          }
          for (int i = 0; i < k; ++i) in_top[ids[i]] = 0;
          // The student's tail as a log-sum-exp of its own logits, not 1 - sum.
          lse_rest = LogSumExp(u_rest.data(), u_rest.size());
          log_q[k] = lse_rest - lse_all;
          log_p[k] = std::log(std::max(1.0 - mass, kTailFloor));
        }
        const double d = BucketDivergence(options, log_p, log_q, &grad);
        if (tail) {
          // dD/du_j = (q_j / Q_tail) G_tail for every j outside the top-k.
          for (int j = 0; j < vocab; ++j) (*du)[j] = std::exp(u[j] - lse_rest) * grad[k];
        }
        for (int i = 0; i < k; ++i) (*du)[ids[i]] = grad[i];
        return d;
      });
}

template <typename T>
absl::StatusOr<TopKTable<T>> TopKFromLogits(std::span<const T> logits, long rows, int vocab,
                                            int k, double temperature) {
  if (rows <= 0 || vocab <= 0) {
    return absl::InvalidArgumentError("TopKFromLogits: rows and vocab must be positive");
  }
  if (k <= 0 || k > vocab) {
    return absl::InvalidArgumentError(absl::StrCat("TopKFromLogits: top_k = ", k,
                                                   " is outside [1, vocab = ", vocab, "]"));
  }
  if (!(temperature > 0.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("TopKFromLogits: temperature = ", temperature, " must be > 0"));
  }
  if (logits.size() != static_cast<size_t>(rows) * vocab) {
    return absl::InvalidArgumentError(absl::StrCat("TopKFromLogits: logits has ", logits.size(),
                                                   " values, expected rows * vocab"));
  }
  TopKTable<T> table;
  table.k = k;
  table.ids.resize(static_cast<size_t>(rows) * k);
  table.log_probs.resize(table.ids.size());
  std::vector<double> u(vocab);
  std::vector<int32_t> order(vocab);
  for (long r = 0; r < rows; ++r) {
    const T* z = logits.data() + r * vocab;
    for (int j = 0; j < vocab; ++j) u[j] = z[j] / temperature;
    const double lse = LogSumExp(u.data(), u.size());
    std::iota(order.begin(), order.end(), 0);
    std::partial_sort(order.begin(), order.begin() + k, order.end(), [&](int32_t a, int32_t b) {
      return u[a] != u[b] ? u[a] > u[b] : a < b;
    });
    for (int i = 0; i < k; ++i) {
      table.ids[r * k + i] = order[i];
      table.log_probs[r * k + i] = static_cast<T>(u[order[i]] - lse);
    }
  }
  return table;
}

#define SHRINKRAY_DISTILL_INSTANTIATE(T)                                                      \
  template absl::StatusOr<DistillLossValue> DistillLoss<T>(                                   \
      const DistillLossOptions&, std::span<const T>, long, int, const TeacherLogits<T>&,      \
      std::span<const int32_t>, std::span<T>);                                                \
  template absl::StatusOr<DistillLossValue> DistillLoss<T>(                                   \
      const DistillLossOptions&, std::span<const T>, long, int, const TeacherTopK<T>&,        \
      std::span<const int32_t>, std::span<T>);                                                \
  template absl::StatusOr<TopKTable<T>> TopKFromLogits<T>(std::span<const T>, long, int, int, \
                                                          double);

SHRINKRAY_DISTILL_INSTANTIATE(float)
SHRINKRAY_DISTILL_INSTANTIATE(double)

#undef SHRINKRAY_DISTILL_INSTANTIATE

}  // namespace shrinkray::train
