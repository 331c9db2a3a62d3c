#include "core/kernels/cpu/ops.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/util/parallel.h"

namespace shrinkray {

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight,
                     int N, int C, float eps) {
  for (int n = 0; n < N; ++n) {
    const float* x = inp + static_cast<long>(n) * C;
    float* y = out + static_cast<long>(n) * C;
    // Accumulate in double: the mean of squares is the one place where fp32
    // summation order visibly moves the result for wide rows.
    double sum_sq = 0.0;
    for (int c = 0; c < C; ++c) sum_sq += static_cast<double>(x[c]) * x[c];
    const float r = 1.0f / std::sqrt(static_cast<float>(sum_sq / C) + eps);
    for (int c = 0; c < C; ++c) y[c] = (x[c] * r) * weight[c];
    if (rstd != nullptr) rstd[n] = r;
  }
}

void swiglu_forward(float* out, const float* gate, const float* up, long N) {
  for (long i = 0; i < N; ++i) {
    const float g = gate[i];
    out[i] = g / (1.0f + std::exp(-g)) * up[i];
  }
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias,
                    int N, int C, int OC) {
  if (N <= 0 || OC <= 0) return;
  // Row-major out = inp * weight^T: weight is [OC, C], so it is read transposed.
  cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f, inp, C, weight, C, 0.0f,
              out, OC);
  if (bias != nullptr) {
    for (int n = 0; n < N; ++n) {
      float* row = out + static_cast<long>(n) * OC;
      for (int o = 0; o < OC; ++o) row[o] += bias[o];
    }
  }
}

void residual_forward(float* out, const float* inp1, const float* inp2, long N) {
  for (long i = 0; i < N; ++i) out[i] = inp1[i] + inp2[i];
}

void rope_forward(float* out, const float* inp, const float* cos, const float* sin, int B, int T,
                  int NH, int HD) {
  const int half = HD / 2;
  for (int b = 0; b < B; ++b) {
    for (int t = 0; t < T; ++t) {
      const float* c = cos + static_cast<long>(t) * half;
      const float* s = sin + static_cast<long>(t) * half;
      const long row = (static_cast<long>(b) * T + t) * NH * HD;
      for (int h = 0; h < NH; ++h) {
        const float* x = inp + row + static_cast<long>(h) * HD;
        float* y = out + row + static_cast<long>(h) * HD;
        for (int d = 0; d < half; ++d) {
          const float x1 = x[d];
          const float x2 = x[d + half];
          y[d] = x1 * c[d] - x2 * s[d];
          y[d + half] = x2 * c[d] + x1 * s[d];
        }
      }
    }
  }
}

void attention_forward(float* out, const float* q, const float* k, const float* v, int B, int T,
                       int NH, int NKV, int HD, int window) {
  const int group = NH / NKV;
  const long q_stride = static_cast<long>(NH) * HD;    // floats between tokens in q/out
  const long kv_stride = static_cast<long>(NKV) * HD;  // floats between tokens in k/v
  const float scale = 1.0f / std::sqrt(static_cast<float>(HD));
  ParallelFor(static_cast<int64_t>(B) * NH, [&](int64_t task) {
    const int b = static_cast<int>(task / NH);
    const int h = static_cast<int>(task % NH);
    const int kvh = h / group;
    const float* qb = q + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * HD;
    const float* kb = k + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * HD;
    const float* vb = v + static_cast<long>(b) * T * kv_stride + static_cast<long>(kvh) * HD;
    float* ob = out + static_cast<long>(b) * T * q_stride + static_cast<long>(h) * HD;
    // Keys transposed to [HD, T] so that a query's scores accumulate over
    // contiguous key positions (vectorisable, no strided dot products).
    std::vector<float> kt(static_cast<size_t>(HD) * T);
    for (int j = 0; j < T; ++j) {
      const float* kj = kb + j * kv_stride;
      for (int d = 0; d < HD; ++d) kt[static_cast<size_t>(d) * T + j] = kj[d];
    }
    std::vector<float> scores(T);
    for (int i = 0; i < T; ++i) {
      const int lo = window > 0 ? std::max(0, i - window + 1) : 0;
      const int len = i - lo + 1;
      float* s = scores.data() + lo;
      std::fill(s, s + len, 0.0f);
      const float* qi = qb + i * q_stride;
      for (int d = 0; d < HD; ++d) {
        const float qd = qi[d];
        const float* krow = kt.data() + static_cast<size_t>(d) * T + lo;
        for (int j = 0; j < len; ++j) s[j] += qd * krow[j];
      }
      float max_score = -INFINITY;
      for (int j = 0; j < len; ++j) {
        s[j] *= scale;
        max_score = std::max(max_score, s[j]);
      }
      float sum = 0.0f;
      for (int j = 0; j < len; ++j) {
        s[j] = std::exp(s[j] - max_score);
        sum += s[j];
      }
      const float inv_sum = 1.0f / sum;
      float* oi = ob + i * q_stride;
      std::fill(oi, oi + HD, 0.0f);
      for (int j = 0; j < len; ++j) {
        const float p = s[j] * inv_sum;
        const float* vj = vb + static_cast<long>(lo + j) * kv_stride;
        for (int d = 0; d < HD; ++d) oi[d] += p * vj[d];
      }
    }
  });
}

}  // namespace shrinkray
