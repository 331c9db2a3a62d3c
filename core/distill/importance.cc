#include "core/distill/importance.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>

#include "absl/strings/str_cat.h"
#include "core/util/status_macros.h"

namespace shrinkray::distill {
namespace {

// Per-window means folded across windows as ImportanceAggregation says.
class Aggregate {
 public:
  Aggregate(ImportanceAggregation how, size_t dim) : how_(how), acc_(dim, 0.0) {}
  void AddWindow(std::span<const double> window_mean) {
    for (size_t c = 0; c < acc_.size(); ++c) {
      const double s = window_mean[c];
      acc_[c] += how_ == ImportanceAggregation::kL2 ? s * s : s;
    }
    ++windows_;
  }
  std::vector<double> Finish() const {
    std::vector<double> out(acc_.size());
    for (size_t c = 0; c < acc_.size(); ++c) {
      out[c] = how_ == ImportanceAggregation::kL2 ? std::sqrt(acc_[c])
                                                  : acc_[c] / static_cast<double>(windows_);
    }
    return out;
  }

 private:
  ImportanceAggregation how_;
  std::vector<double> acc_;
  long windows_ = 0;
};

// Adds the mean over window b's tokens of |x_c| into out[b * cols + c].
void AddWindowMeanAbs(const float* x, int batch, int seqlen, int cols, std::vector<double>& out) {
  for (int b = 0; b < batch; ++b) {
    double* o = out.data() + static_cast<size_t>(b) * cols;
    for (int t = 0; t < seqlen; ++t) {
      const float* row = x + (static_cast<size_t>(b) * seqlen + t) * cols;
      for (int c = 0; c < cols; ++c) o[c] += std::fabs(static_cast<double>(row[c])) / seqlen;
    }
  }
}

}  // namespace

absl::StatusOr<ModelImportance> ComputeActivationImportance(const LlamaModel& teacher,
                                                            const CalibrationSet& windows,
                                                            const ImportanceOptions& options) {
  const ModelConfig& c = teacher.config();
  if (teacher.streaming()) {
    return absl::FailedPreconditionError(
        "activation importance needs the teacher loaded whole, not streaming");
  }
  if (windows.num_samples <= 0 || windows.seqlen <= 0 ||
      windows.tokens.size() != static_cast<size_t>(windows.num_samples) * windows.seqlen) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration windows: need at least one window of positive seqlen, got ",
                     windows.num_samples, " x ", windows.seqlen, " (", windows.tokens.size(),
                     " tokens)"));
  }
  if (windows.seqlen > c.max_position_embeddings) {
    return absl::InvalidArgumentError(
        absl::StrCat("calibration windows: seqlen ", windows.seqlen,
                     " exceeds the teacher's max_position_embeddings ", c.max_position_embeddings));
  }
  const int L = c.num_hidden_layers, C = c.hidden_size, I = c.intermediate_size;
  const int NH = c.num_attention_heads, HD = c.head_dim, S = windows.seqlen;
  const int per_call = std::max(1, options.batch);

  std::vector<Aggregate> mlp, heads;
  for (int l = 0; l < L; ++l) {
    mlp.emplace_back(options.across_windows, I);
    heads.emplace_back(options.across_windows, NH);
  }
  Aggregate embedding(options.across_windows, C);

  std::vector<float> hidden;
  std::vector<double> mlp_mean, head_mean, emb_mean;
  for (int first = 0; first < windows.num_samples; first += per_call) {
    const int B = std::min(per_call, windows.num_samples - first);
    const auto tokens = std::span<const int32_t>(windows.tokens)
                            .subspan(static_cast<size_t>(first) * S, static_cast<size_t>(B) * S);
    hidden.assign(static_cast<size_t>(B) * S * C, 0.0f);
    SR_RETURN_IF_ERROR(teacher.Embed(tokens, hidden));
    emb_mean.assign(static_cast<size_t>(B) * C, 0.0);
    for (int l = 0; l < L; ++l) {
      mlp_mean.assign(static_cast<size_t>(B) * I, 0.0);
      head_mean.assign(static_cast<size_t>(B) * NH, 0.0);
      auto observer = [&](int, LinearGroup group, const float* x, long, int cols) {
        switch (group) {
          case LinearGroup::kQkv:
          case LinearGroup::kGateUp:
            AddWindowMeanAbs(x, B, S, cols, emb_mean);
            break;
          case LinearGroup::kDown:
            AddWindowMeanAbs(x, B, S, cols, mlp_mean);
            break;
          case LinearGroup::kO:
            // Each token's row is [head][head_dim]: one L2 norm per head.
            for (int b = 0; b < B; ++b) {
              for (int t = 0; t < S; ++t) {
                const float* row = x + (static_cast<size_t>(b) * S + t) * cols;
                for (int h = 0; h < NH; ++h) {
                  double ss = 0;
                  for (int d = 0; d < HD; ++d) {
                    const double v = row[h * HD + d];
                    ss += v * v;
                  }
                  head_mean[static_cast<size_t>(b) * NH + h] += std::sqrt(ss) / S;
                }
              }
            }
            break;
        }
      };
      SR_RETURN_IF_ERROR(teacher.LayerForward(l, teacher.layer(l), B, S, hidden, observer));
      for (int b = 0; b < B; ++b) {
        mlp[l].AddWindow(std::span<const double>(mlp_mean).subspan(static_cast<size_t>(b) * I, I));
        heads[l].AddWindow(
            std::span<const double>(head_mean).subspan(static_cast<size_t>(b) * NH, NH));
      }
    }
    for (int b = 0; b < B; ++b) {
      embedding.AddWindow(std::span<const double>(emb_mean).subspan(static_cast<size_t>(b) * C, C));
    }
  }

  ModelImportance out;
  out.num_windows = windows.num_samples;
  out.seqlen = S;
  out.embedding_channels = embedding.Finish();
  const int group = NH / c.num_key_value_heads;
  for (int l = 0; l < L; ++l) {
    LayerImportance li;
    li.mlp_channels = mlp[l].Finish();
    li.heads = heads[l].Finish();
    li.kv_groups.assign(c.num_key_value_heads, 0.0);
    // Query head h reads KV head h / group (repeat_kv's layout).
    for (int h = 0; h < NH; ++h) li.kv_groups[h / group] += li.heads[h];
    out.layers.push_back(std::move(li));
  }
  return out;
}

std::vector<int> TopKIndices(std::span<const double> scores, int k) {
  const int n = static_cast<int>(scores.size());
  k = std::clamp(k, 0, n);
  std::vector<int> order(n);
  std::iota(order.begin(), order.end(), 0);
  // Stable on index: among equal scores the lower index ranks first.
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return scores[a] > scores[b]; });
  order.resize(k);
  std::sort(order.begin(), order.end());
  return order;
}

}  // namespace shrinkray::distill
