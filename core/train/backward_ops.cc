#include "core/train/backward_ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/util/parallel.h"

namespace shrinkray::train {

void Gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda,
          const float* B, int ldb, float beta, float* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void Gemm(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A, int lda,
          const double* B, int ldb, double beta, double* C, int ldc) {
  if (M <= 0 || N <= 0) return;
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
}

template <typename T>
void EmbeddingForward(T* out, const int32_t* tokens, const T* table, long N, int C) {
  for (long n = 0; n < N; ++n) {
    std::memcpy(out + n * C, table + static_cast<long>(tokens[n]) * C, sizeof(T) * C);
  }
}

template <typename T>
void EmbeddingBackward(T* dtable, const T* dout, const int32_t* tokens, long N, int C) {
  for (long n = 0; n < N; ++n) {
    T* row = dtable + static_cast<long>(tokens[n]) * C;
    const T* d = dout + n * C;
    for (int c = 0; c < C; ++c) row[c] += d[c];
  }
}

template <typename T>
void RmsNormForward(T* out, T* rstd, const T* inp, const T* weight, long N, int C, T eps) {
  for (long n = 0; n < N; ++n) {
    const T* x = inp + n * C;
    T* y = out + n * C;
    double sum_sq = 0.0;
    for (int c = 0; c < C; ++c) sum_sq += static_cast<double>(x[c]) * x[c];
    // Same rounding steps as rmsnorm_forward, so float matches LlamaModel.
    const T r = T(1) / std::sqrt(static_cast<T>(sum_sq / C) + eps);
    for (int c = 0; c < C; ++c) y[c] = (x[c] * r) * weight[c];
    rstd[n] = r;
  }
}

template <typename T>
void RmsNormBackward(T* dinp, T* dweight, const T* dout, const T* inp, const T* weight,
                     const T* rstd, long N, int C) {
  for (long n = 0; n < N; ++n) {
    const T* x = inp + n * C;
    const T* dy = dout + n * C;
    const T r = rstd[n];
    // y_c = w_c x_c r with dr/dx_j = -r^3 x_j / C, hence
    // dx_j = r g_j - r^3 x_j (g . x) / C for g = dy * w.
    double dot = 0.0;
    for (int c = 0; c < C; ++c) dot += static_cast<double>(dy[c]) * weight[c] * x[c];
    const T coef = static_cast<T>(dot / C) * r * r * r;
    if (dinp != nullptr) {
      T* dx = dinp + n * C;
      for (int c = 0; c < C; ++c) dx[c] += r * dy[c] * weight[c] - coef * x[c];
    }
    if (dweight != nullptr) {
      for (int c = 0; c < C; ++c) dweight[c] += dy[c] * x[c] * r;
    }
  }
}

template <typename T>
void RopeForward(T* out, const T* inp, const T* cos, const T* sin, int B, int S, int NH, int HD) {
  const int half = HD / 2;
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < S; ++t) {
      const T* c = cos + static_cast<long>(t) * half;
      const T* s = sin + static_cast<long>(t) * half;
      const long row = (static_cast<long>(b) * S + t) * NH * HD;
      for (int h = 0; h < NH; ++h) {
        const T* x = inp + row + static_cast<long>(h) * HD;
        T* y = out + row + static_cast<long>(h) * HD;
        for (int d = 0; d < half; ++d) {
          const T x1 = x[d], x2 = x[d + half];
          y[d] = x1 * c[d] - x2 * s[d];
          y[d + half] = x2 * c[d] + x1 * s[d];
        }
      }
    }
  }
}

template <typename T>
void RopeBackward(T* dinp, const T* dout, const T* cos, const T* sin, int B, int S, int NH,
                  int HD) {
  const int half = HD / 2;
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < S; ++t) {
      const T* c = cos + static_cast<long>(t) * half;
      const T* s = sin + static_cast<long>(t) * half;
      const long row = (static_cast<long>(b) * S + t) * NH * HD;
      for (int h = 0; h < NH; ++h) {
        const T* dy = dout + row + static_cast<long>(h) * HD;
        T* dx = dinp + row + static_cast<long>(h) * HD;
        for (int d = 0; d < half; ++d) {
          const T dy1 = dy[d], dy2 = dy[d + half];
          dx[d] += dy1 * c[d] + dy2 * s[d];
          dx[d + half] += dy2 * c[d] - dy1 * s[d];
        }
      }
    }
  }
}

template <typename T>
void LinearForward(T* out, const T* inp, const T* weight, const T* bias, int N, int C, int OC) {
  Gemm(false, true, N, OC, C, T(1), inp, C, weight, C, T(0), out, OC);
  if (bias != nullptr) {
    for (int n = 0; n < N; ++n) {
      T* row = out + static_cast<long>(n) * OC;
      for (int o = 0; o < OC; ++o) row[o] += bias[o];
    }
  }
}

template <typename T>
void LinearBackward(T* dinp, T* dweight, T* dbias, const T* dout, const T* inp, const T* weight,
                    int N, int C, int OC) {
  // dinp[N, C] += dout[N, OC] @ weight[OC, C]; dweight[OC, C] += dout^T @ inp.
  if (dinp != nullptr) Gemm(false, false, N, C, OC, T(1), dout, OC, weight, C, T(1), dinp, C);
  if (dweight != nullptr) Gemm(true, false, OC, C, N, T(1), dout, OC, inp, C, T(1), dweight, C);
  if (dbias != nullptr) {
    for (int n = 0; n < N; ++n) {
      const T* row = dout + static_cast<long>(n) * OC;
      for (int o = 0; o < OC; ++o) dbias[o] += row[o];
    }
  }
}

template <typename T>
void AttentionForward(T* out, T* probs, const T* q, const T* k, const T* v, int B, int S, int NH,
                      int NKV, int HD, int window) {
  const int group = NH / NKV;
  const long q_stride = static_cast<long>(NH) * HD;
  const long kv_stride = static_cast<long>(NKV) * HD;
  const T scale = T(1) / std::sqrt(static_cast<T>(HD));
  // (b, h) pairs write disjoint rows of out and probs: parallel and deterministic.
  ParallelFor(static_cast<int64_t>(B) * NH, [&](int64_t task) {
    const int b = static_cast<int>(task / NH);
    const int h = static_cast<int>(task % NH);
    const int kvh = h / group;
    const T* qb = q + static_cast<long>(b) * S * q_stride + static_cast<long>(h) * HD;
    const T* kb = k + static_cast<long>(b) * S * kv_stride + static_cast<long>(kvh) * HD;
    const T* vb = v + static_cast<long>(b) * S * kv_stride + static_cast<long>(kvh) * HD;
    T* ob = out + static_cast<long>(b) * S * q_stride + static_cast<long>(h) * HD;
    T* pb = probs + (static_cast<long>(b) * NH + h) * S * S;
    for (int i = 0; i < S; ++i) {
      const int lo = window > 0 ? std::max(0, i - window + 1) : 0;
      T* p = pb + static_cast<long>(i) * S;
      std::fill(p, p + S, T(0));
      const T* qi = qb + i * q_stride;
      T max_score = -INFINITY;
      for (int j = lo; j <= i; ++j) {
        const T* kj = kb + j * kv_stride;
        T acc = 0;
        for (int d = 0; d < HD; ++d) acc += qi[d] * kj[d];
        p[j] = acc * scale;
        max_score = std::max(max_score, p[j]);
      }
      T sum = 0;
      for (int j = lo; j <= i; ++j) {
        p[j] = std::exp(p[j] - max_score);
        sum += p[j];
      }
      const T inv_sum = T(1) / sum;
      T* oi = ob + i * q_stride;
      std::fill(oi, oi + HD, T(0));
      for (int j = lo; j <= i; ++j) {
        p[j] *= inv_sum;
        const T* vj = vb + j * kv_stride;
        for (int d = 0; d < HD; ++d) oi[d] += p[j] * vj[d];
      }
    }
  });
}

template <typename T>
void AttentionBackward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                       const T* probs, int B, int S, int NH, int NKV, int HD, int window) {
  const int group = NH / NKV;
  const long q_stride = static_cast<long>(NH) * HD;
  const long kv_stride = static_cast<long>(NKV) * HD;
  const T scale = T(1) / std::sqrt(static_cast<T>(HD));
  // One task per (b, kv head): the query heads sharing a kv head add into the
  // same dk/dv rows, so they run in one task, in a fixed order.
  ParallelFor(static_cast<int64_t>(B) * NKV, [&](int64_t task) {
    const int b = static_cast<int>(task / NKV);
    const int kvh = static_cast<int>(task % NKV);
    const long kv_off = static_cast<long>(b) * S * kv_stride + static_cast<long>(kvh) * HD;
    const T* kb = k + kv_off;
    const T* vb = v + kv_off;
    T* dkb = dk + kv_off;
    T* dvb = dv + kv_off;
    std::vector<T> dp(S);
    for (int h = kvh * group; h < (kvh + 1) * group; ++h) {
      const long q_off = static_cast<long>(b) * S * q_stride + static_cast<long>(h) * HD;
      const T* pb = probs + (static_cast<long>(b) * NH + h) * S * S;
      for (int i = 0; i < S; ++i) {
        const int lo = window > 0 ? std::max(0, i - window + 1) : 0;
        const T* p = pb + static_cast<long>(i) * S;
        const T* doi = dout + q_off + i * q_stride;
        const T* qi = q + q_off + i * q_stride;
        T* dqi = dq + q_off + i * q_stride;
        // dp_j = dout_i . v_j; softmax backward ds_j = p_j (dp_j - sum_l p_l dp_l).
        T weighted = 0;
        for (int j = lo; j <= i; ++j) {
          const T* vj = vb + j * kv_stride;
          T acc = 0;
          for (int d = 0; d < HD; ++d) acc += doi[d] * vj[d];
          dp[j] = acc;
          weighted += p[j] * acc;
        }
        for (int j = lo; j <= i; ++j) {
          const T ds = p[j] * (dp[j] - weighted) * scale;
          const T* kj = kb + j * kv_stride;
          T* dkj = dkb + j * kv_stride;
          T* dvj = dvb + j * kv_stride;
          for (int d = 0; d < HD; ++d) {
            dqi[d] += ds * kj[d];
            dkj[d] += ds * qi[d];
            dvj[d] += p[j] * doi[d];
          }
        }
      }
    }
  });
}

template <typename T>
void SwigluForward(T* out, const T* gate, const T* up, long N) {
  for (long i = 0; i < N; ++i) {
    const T g = gate[i];
    out[i] = g / (T(1) + std::exp(-g)) * up[i];
  }
}

template <typename T>
void SwigluBackward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long N) {
  for (long i = 0; i < N; ++i) {
    const T g = gate[i];
    const T sig = T(1) / (T(1) + std::exp(-g));
    // d silu/dg = sig (1 + g (1 - sig)).
    dgate[i] += dout[i] * up[i] * sig * (T(1) + g * (T(1) - sig));
    dup[i] += dout[i] * g * sig;
  }
}

template <typename T>
T CrossEntropyForward(T* probs, const T* logits, const int32_t* targets, long N, int V) {
  double total = 0.0;
  long count = 0;
  for (long n = 0; n < N; ++n) {
    const T* z = logits + n * V;
    T* p = probs + n * V;
    const T max_z = *std::max_element(z, z + V);
    double sum = 0.0;
    for (int j = 0; j < V; ++j) sum += std::exp(static_cast<double>(z[j] - max_z));
    for (int j = 0; j < V; ++j) p[j] = static_cast<T>(std::exp(static_cast<double>(z[j] - max_z)) / sum);
    if (targets[n] < 0) continue;
    total += std::log(sum) + max_z - z[targets[n]];
    ++count;
  }
  return count == 0 ? T(0) : static_cast<T>(total / count);
}

template <typename T>
void CrossEntropyBackward(T* dlogits, const T* probs, const int32_t* targets, long N, int V,
                          T dloss) {
  long count = 0;
  for (long n = 0; n < N; ++n) count += targets[n] >= 0 ? 1 : 0;
  if (count == 0) return;
  const T scale = dloss / static_cast<T>(count);
  for (long n = 0; n < N; ++n) {
    if (targets[n] < 0) continue;
    T* d = dlogits + n * V;
    const T* p = probs + n * V;
    for (int j = 0; j < V; ++j) d[j] += scale * p[j];
    d[targets[n]] -= scale;
  }
}

#define SHRINKRAY_TRAIN_INSTANTIATE(T)                                                        \
  template void EmbeddingForward<T>(T*, const int32_t*, const T*, long, int);                 \
  template void EmbeddingBackward<T>(T*, const T*, const int32_t*, long, int);                \
  template void RmsNormForward<T>(T*, T*, const T*, const T*, long, int, T);                  \
  template void RmsNormBackward<T>(T*, T*, const T*, const T*, const T*, const T*, long, int); \
  template void RopeForward<T>(T*, const T*, const T*, const T*, int, int, int, int);         \
  template void RopeBackward<T>(T*, const T*, const T*, const T*, int, int, int, int);        \
  template void LinearForward<T>(T*, const T*, const T*, const T*, int, int, int);            \
  template void LinearBackward<T>(T*, T*, T*, const T*, const T*, const T*, int, int, int);   \
  template void AttentionForward<T>(T*, T*, const T*, const T*, const T*, int, int, int, int, \
                                    int, int);                                                \
  template void AttentionBackward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,      \
                                     const T*, int, int, int, int, int, int);                 \
  template void SwigluForward<T>(T*, const T*, const T*, long);                               \
  template void SwigluBackward<T>(T*, T*, const T*, const T*, const T*, long);                \
  template T CrossEntropyForward<T>(T*, const T*, const int32_t*, long, int);                 \
  template void CrossEntropyBackward<T>(T*, const T*, const int32_t*, long, int, T);

SHRINKRAY_TRAIN_INSTANTIATE(float)
SHRINKRAY_TRAIN_INSTANTIATE(double)

#undef SHRINKRAY_TRAIN_INSTANTIATE

}  // namespace shrinkray::train
