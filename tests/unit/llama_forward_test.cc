// LlamaModel::Forward against a float64 reference written here from the Hugging
// Face modeling code's definitions (modeling_llama / mistral / qwen2 / qwen3),
// on tiny seeded random-weight models that go through the whole load path:
// config.json + model.safetensors written to a temp folder, then Load.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <numbers>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "core/io/checkpoint.h"
#include "core/model/config.h"
#include "core/model/llama.h"
#include "core/tensor/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;

// Everything the reference needs, stated independently of ModelConfig so that a
// config-parsing bug cannot cancel out between model and reference.
struct Spec {
  std::string arch = "LlamaForCausalLM";
  int hidden = 32;
  int inter = 48;
  int layers = 2;
  int heads = 4;
  int kv_heads = 2;
  int head_dim = 8;  // written to config.json only when write_head_dim
  bool write_head_dim = false;
  int vocab = 40;
  double theta = 10000.0;
  double eps = 1e-5;
  bool tied = false;
  bool qkv_bias = false;      // Qwen2, or Llama attention_bias
  bool o_bias = false;        // Llama attention_bias
  bool qk_norm = false;       // Qwen3
  std::optional<int> window;  // Mistral sliding_window
  bool llama3 = false;        // rope_scaling llama3 with the fields below
  double factor = 8.0, low_freq_factor = 1.0, high_freq_factor = 4.0;
  int original_max_pos = 64;
  DType dtype = DType::kF32;
};

using Weights = std::map<std::string, std::vector<float>>;
using Shapes = std::map<std::string, std::vector<int64_t>>;

std::string L(int i, const std::string& rest) {
  return "model.layers." + std::to_string(i) + "." + rest;
}

// Seeded weights. Linear weights ~ N(0, 1/fan_in) keep activations O(1) so
// attention is far from uniform; norm weights near 1; biases small.
void MakeWeights(const Spec& s, uint32_t seed, Weights* w, Shapes* shapes) {
  std::mt19937 rng(seed);
  auto add = [&](const std::string& name, std::vector<int64_t> shape, double mean, double sd) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::normal_distribution<float> dist(static_cast<float>(mean), static_cast<float>(sd));
    std::vector<float> v(n);
    for (float& x : v) x = dist(rng);
    if (s.dtype == DType::kBF16) {
      for (float& x : v) x = BF16ToF32(F32ToBF16(x));  // the stored values
    }
    (*w)[name] = std::move(v);
    (*shapes)[name] = std::move(shape);
  };
  const int64_t C = s.hidden, I = s.inter, V = s.vocab, HD = s.head_dim;
  const int64_t QD = s.heads * HD, KVD = s.kv_heads * HD;
  add("model.embed_tokens.weight", {V, C}, 0.0, 1.0);
  for (int i = 0; i < s.layers; ++i) {
    add(L(i, "input_layernorm.weight"), {C}, 1.0, 0.2);
    add(L(i, "self_attn.q_proj.weight"), {QD, C}, 0.0, 1.5 / std::sqrt(C));
    add(L(i, "self_attn.k_proj.weight"), {KVD, C}, 0.0, 1.5 / std::sqrt(C));
    add(L(i, "self_attn.v_proj.weight"), {KVD, C}, 0.0, 1.0 / std::sqrt(C));
    if (s.qkv_bias) {
      add(L(i, "self_attn.q_proj.bias"), {QD}, 0.0, 0.3);
      add(L(i, "self_attn.k_proj.bias"), {KVD}, 0.0, 0.3);
      add(L(i, "self_attn.v_proj.bias"), {KVD}, 0.0, 0.3);
    }
    if (s.qk_norm) {
      add(L(i, "self_attn.q_norm.weight"), {HD}, 1.0, 0.3);
      add(L(i, "self_attn.k_norm.weight"), {HD}, 1.0, 0.3);
    }
    add(L(i, "self_attn.o_proj.weight"), {C, QD}, 0.0, 1.0 / std::sqrt(QD));
    if (s.o_bias) add(L(i, "self_attn.o_proj.bias"), {C}, 0.0, 0.3);
    add(L(i, "post_attention_layernorm.weight"), {C}, 1.0, 0.2);
    add(L(i, "mlp.gate_proj.weight"), {I, C}, 0.0, 1.0 / std::sqrt(C));
    add(L(i, "mlp.up_proj.weight"), {I, C}, 0.0, 1.0 / std::sqrt(C));
    add(L(i, "mlp.down_proj.weight"), {C, I}, 0.0, 1.0 / std::sqrt(I));
  }
  add("model.norm.weight", {C}, 1.0, 0.2);
  if (!s.tied) add("lm_head.weight", {V, C}, 0.0, 1.0 / std::sqrt(C));
}

nlohmann::json ConfigJson(const Spec& s) {
  nlohmann::json j;
  j["architectures"] = {s.arch};
  j["hidden_size"] = s.hidden;
  j["intermediate_size"] = s.inter;
  j["num_hidden_layers"] = s.layers;
  j["num_attention_heads"] = s.heads;
  j["num_key_value_heads"] = s.kv_heads;
  if (s.write_head_dim) j["head_dim"] = s.head_dim;
  j["vocab_size"] = s.vocab;
  j["rope_theta"] = s.theta;
  j["rms_norm_eps"] = s.eps;
  j["tie_word_embeddings"] = s.tied;
  j["max_position_embeddings"] = 128;
  j["hidden_act"] = "silu";
  if (s.arch == "LlamaForCausalLM" || s.arch == "Qwen3ForCausalLM") {
    j["attention_bias"] = s.arch == "LlamaForCausalLM" && s.qkv_bias;
  }
  if (s.arch == "MistralForCausalLM") {
    j["sliding_window"] = s.window ? nlohmann::json(*s.window) : nlohmann::json(nullptr);
  }
  if (s.llama3) {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", s.factor},
                         {"low_freq_factor", s.low_freq_factor},
                         {"high_freq_factor", s.high_freq_factor},
                         {"original_max_position_embeddings", s.original_max_pos}};
  } else {
    j["rope_scaling"] = nullptr;
  }
  return j;
}

// Writes config.json + model.safetensors (in s.dtype) into a fresh temp folder.
std::filesystem::path WriteModel(const Spec& s, const Weights& w, const Shapes& shapes,
                                 const std::string& tag) {
  const auto dir = testing::MakeTempDir(tag);
  {
    std::ofstream out(dir / "config.json");
    out << ConfigJson(s).dump(2);
  }
  std::vector<std::vector<uint16_t>> half_storage;
  half_storage.reserve(w.size());
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, values] : w) {
    TensorToWrite t;
    t.name = name;
    t.dtype = s.dtype;
    t.shape = shapes.at(name);
    if (s.dtype == DType::kBF16) {
      auto& bits = half_storage.emplace_back(values.size());
      for (size_t i = 0; i < values.size(); ++i) bits[i] = F32ToBF16(values[i]);
      t.data = std::as_bytes(std::span<const uint16_t>(bits));
    } else {
      t.data = std::as_bytes(std::span<const float>(values));
    }
    tensors.push_back(std::move(t));
  }
  const absl::Status status = WriteCheckpoint(dir, tensors);
  EXPECT_TRUE(status.ok()) << status;
  return dir;
}

// ---------------------------------------------------------------------------
// The float64 reference, one sequence at a time, in the HF modules' terms.
using Mat = std::vector<std::vector<double>>;  // [rows][cols]

Mat Linear(const Mat& x, const std::vector<float>& weight, int out,
           const std::vector<float>* bias) {
  const int in = static_cast<int>(x[0].size());
  Mat y(x.size(), std::vector<double>(out));
  for (size_t r = 0; r < x.size(); ++r) {
    for (int o = 0; o < out; ++o) {
      double acc = bias ? (*bias)[o] : 0.0;
      for (int i = 0; i < in; ++i) acc += x[r][i] * static_cast<double>(weight[o * in + i]);
      y[r][o] = acc;
    }
  }
  return y;
}

// LlamaRMSNorm: x * rsqrt(mean(x^2) + eps) * weight.
std::vector<double> RmsNorm(const std::vector<double>& x, const float* weight, double eps) {
  double ms = 0.0;
  for (double v : x) ms += v * v;
  ms /= x.size();
  const double r = 1.0 / std::sqrt(ms + eps);
  std::vector<double> y(x.size());
  for (size_t i = 0; i < x.size(); ++i) y[i] = weight[i] * (x[i] * r);
  return y;
}

// _compute_default_rope_parameters, then _compute_llama3_parameters written
// as its torch.where sequence.
std::vector<double> InvFreq(const Spec& s, bool apply_scaling) {
  const int d = s.head_dim;
  std::vector<double> inv(d / 2);
  for (int i = 0; i < d / 2; ++i) inv[i] = 1.0 / std::pow(s.theta, static_cast<double>(2 * i) / d);
  if (!s.llama3 || !apply_scaling) return inv;
  const double low_wavelen = s.original_max_pos / s.low_freq_factor;
  const double high_wavelen = s.original_max_pos / s.high_freq_factor;
  for (double& f : inv) {
    const double wavelen = 2 * std::numbers::pi / f;
    const double inv_llama = wavelen > low_wavelen ? f / s.factor : f;
    const double smooth = (s.original_max_pos / wavelen - s.low_freq_factor) /
                          (s.high_freq_factor - s.low_freq_factor);
    const double smoothed = (1 - smooth) * inv_llama / s.factor + smooth * inv_llama;
    const bool is_medium = !(wavelen < high_wavelen) && !(wavelen > low_wavelen);
    f = is_medium ? smoothed : inv_llama;
  }
  return inv;
}

// q * cos + rotate_half(q) * sin, emb = cat(freqs, freqs), rotate_half(x) = cat(-x2, x1).
std::vector<double> ApplyRope(const std::vector<double>& x, int pos,
                              const std::vector<double>& inv_freq) {
  const int d = static_cast<int>(x.size()), half = d / 2;
  std::vector<double> rotated(d), out(d);
  for (int i = 0; i < half; ++i) {
    rotated[i] = -x[i + half];
    rotated[i + half] = x[i];
  }
  for (int i = 0; i < d; ++i) {
    const double angle = pos * inv_freq[i % half];
    out[i] = x[i] * std::cos(angle) + rotated[i] * std::sin(angle);
  }
  return out;
}

struct RefOptions {
  bool apply_window = true;
  bool apply_rope_scaling = true;
};

// Inputs of each Linear group, per layer, in the model's (row-major) order.
using GroupInputs = std::map<std::pair<int, int>, std::vector<double>>;

void Record(GroupInputs* rec, int layer, LinearGroup g, const Mat& x) {
  if (rec == nullptr) return;
  auto& v = (*rec)[{layer, static_cast<int>(g)}];
  for (const auto& row : x) v.insert(v.end(), row.begin(), row.end());
}

// logits [T][V] for one sequence.
Mat ReferenceForward(const Spec& s, const Weights& w, const std::vector<int32_t>& tokens,
                     const RefOptions& opt = {}, GroupInputs* rec = nullptr) {
  const int T = static_cast<int>(tokens.size()), C = s.hidden, HD = s.head_dim;
  const int NH = s.heads, NKV = s.kv_heads, n_rep = NH / NKV;
  const auto inv_freq = InvFreq(s, opt.apply_rope_scaling);
  auto W = [&](const std::string& name) -> const std::vector<float>& { return w.at(name); };
  auto B = [&](const std::string& name) -> const std::vector<float>* {
    auto it = w.find(name);
    return it == w.end() ? nullptr : &it->second;
  };
  Mat h(T, std::vector<double>(C));
  for (int t = 0; t < T; ++t) {
    for (int c = 0; c < C; ++c) h[t][c] = W("model.embed_tokens.weight")[tokens[t] * C + c];
  }
  for (int l = 0; l < s.layers; ++l) {
    Mat x(T);
    for (int t = 0; t < T; ++t)
      x[t] = RmsNorm(h[t], W(L(l, "input_layernorm.weight")).data(), s.eps);
    Record(rec, l, LinearGroup::kQkv, x);
    Mat q =
        Linear(x, W(L(l, "self_attn.q_proj.weight")), NH * HD, B(L(l, "self_attn.q_proj.bias")));
    Mat k =
        Linear(x, W(L(l, "self_attn.k_proj.weight")), NKV * HD, B(L(l, "self_attn.k_proj.bias")));
    Mat v =
        Linear(x, W(L(l, "self_attn.v_proj.weight")), NKV * HD, B(L(l, "self_attn.v_proj.bias")));
    // Split heads: qh[head][t] is a head_dim vector; norm (Qwen3) then rope.
    auto split = [&](const Mat& m, int heads, const char* norm, bool rope) {
      std::vector<Mat> out(heads, Mat(T));
      for (int hh = 0; hh < heads; ++hh) {
        for (int t = 0; t < T; ++t) {
          std::vector<double> vec(m[t].begin() + hh * HD, m[t].begin() + (hh + 1) * HD);
          if (s.qk_norm && norm != nullptr) vec = RmsNorm(vec, W(L(l, norm)).data(), s.eps);
          out[hh][t] = rope ? ApplyRope(vec, t, inv_freq) : vec;
        }
      }
      return out;
    };
    auto qh = split(q, NH, "self_attn.q_norm.weight", true);
    auto kh = split(k, NKV, "self_attn.k_norm.weight", true);
    auto vh = split(v, NKV, nullptr, false);
    Mat att(T, std::vector<double>(NH * HD, 0.0));
    for (int hh = 0; hh < NH; ++hh) {
      const int kvh = hh / n_rep;  // repeat_kv
      for (int i = 0; i < T; ++i) {
        std::vector<double> scores(T, -INFINITY);
        double mx = -INFINITY;
        for (int j = 0; j < T; ++j) {
          bool visible = j <= i;
          // masking_utils.sliding_window_overlay: kv_idx > q_idx - sliding_window.
          if (opt.apply_window && s.window.has_value()) visible = visible && j > i - *s.window;
          if (!visible) continue;
          double dot = 0.0;
          for (int d = 0; d < HD; ++d) dot += qh[hh][i][d] * kh[kvh][j][d];
          scores[j] = dot / std::sqrt(static_cast<double>(HD));
          mx = std::max(mx, scores[j]);
        }
        double sum = 0.0;
        for (double& sc : scores) {
          sc = std::exp(sc - mx);  // exp(-inf) = 0 for masked keys
          sum += sc;
        }
        for (int j = 0; j < T; ++j) {
          for (int d = 0; d < HD; ++d) att[i][hh * HD + d] += scores[j] / sum * vh[kvh][j][d];
        }
      }
    }
    Record(rec, l, LinearGroup::kO, att);
    Mat o = Linear(att, W(L(l, "self_attn.o_proj.weight")), C, B(L(l, "self_attn.o_proj.bias")));
    for (int t = 0; t < T; ++t) {
      for (int c = 0; c < C; ++c) h[t][c] += o[t][c];
    }
    for (int t = 0; t < T; ++t) {
      x[t] = RmsNorm(h[t], W(L(l, "post_attention_layernorm.weight")).data(), s.eps);
    }
    Record(rec, l, LinearGroup::kGateUp, x);
    Mat g = Linear(x, W(L(l, "mlp.gate_proj.weight")), s.inter, nullptr);
    Mat u = Linear(x, W(L(l, "mlp.up_proj.weight")), s.inter, nullptr);
    for (int t = 0; t < T; ++t) {
      for (int i = 0; i < s.inter; ++i) g[t][i] = g[t][i] / (1.0 + std::exp(-g[t][i])) * u[t][i];
    }
    Record(rec, l, LinearGroup::kDown, g);
    Mat down = Linear(g, W(L(l, "mlp.down_proj.weight")), C, nullptr);
    for (int t = 0; t < T; ++t) {
      for (int c = 0; c < C; ++c) h[t][c] += down[t][c];
    }
  }
  Mat x(T);
  for (int t = 0; t < T; ++t) x[t] = RmsNorm(h[t], W("model.norm.weight").data(), s.eps);
  return Linear(x, W(s.tied ? "model.embed_tokens.weight" : "lm_head.weight"), s.vocab, nullptr);
}

std::vector<int32_t> RandomTokens(int n, int vocab, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int32_t> dist(0, vocab - 1);
  std::vector<int32_t> t(n);
  for (int32_t& x : t) x = dist(rng);
  return t;
}

// Max |model - reference| over a [B*T, V] batch whose rows are separate sequences.
double MaxError(const std::vector<float>& logits, const std::vector<Mat>& ref, int V) {
  double err = 0.0;
  long row = 0;
  for (const Mat& seq : ref) {
    for (const auto& r : seq) {
      for (int v = 0; v < V; ++v) err = std::max(err, std::abs(logits[row * V + v] - r[v]));
      ++row;
    }
  }
  return err;
}

double MaxDiff(const std::vector<Mat>& a, const std::vector<Mat>& b) {
  double d = 0.0;
  for (size_t s = 0; s < a.size(); ++s) {
    for (size_t t = 0; t < a[s].size(); ++t) {
      for (size_t v = 0; v < a[s][t].size(); ++v)
        d = std::max(d, std::abs(a[s][t][v] - b[s][t][v]));
    }
  }
  return d;
}

// float32 logits of O(1-10) magnitude after a few layers of fp32 GEMMs and
// softmaxes carry rounding of ~1e-6 relative; 1e-4 absolute leaves an order of
// magnitude of slack while any formula error (wrong rope order, mask off by
// one, missing bias) moves logits by >= 1e-2.
constexpr double kTolerance = 1e-4;
constexpr int kBatch = 2;
constexpr int kSeqLen = 12;

struct Variant {
  const char* name;
  Spec spec;
};

class LlamaForwardTest : public ::testing::TestWithParam<Variant> {};

TEST_P(LlamaForwardTest, MatchesFloat64Reference) {
  const Spec& s = GetParam().spec;
  Weights w;
  Shapes shapes;
  MakeWeights(s, 1234, &w, &shapes);
  const auto dir = WriteModel(s, w, shapes, std::string("llama-fwd-") + GetParam().name);
  auto model = LlamaModel::Load(dir);
  ASSERT_TRUE(model.ok()) << model.status();
  const ModelConfig& config = (*model)->config();
  EXPECT_EQ(config.head_dim, s.head_dim);
  EXPECT_EQ(config.tie_word_embeddings, s.tied);

  const auto tokens = RandomTokens(kBatch * kSeqLen, s.vocab, 99);
  std::vector<float> logits(static_cast<size_t>(kBatch) * kSeqLen * s.vocab);
  ASSERT_TRUE((*model)->Forward(tokens, kBatch, kSeqLen, logits).ok());

  std::vector<Mat> ref;
  for (int b = 0; b < kBatch; ++b) {
    std::vector<int32_t> row(tokens.begin() + b * kSeqLen, tokens.begin() + (b + 1) * kSeqLen);
    ref.push_back(ReferenceForward(s, w, row));
  }
  const double err = MaxError(logits, ref, s.vocab);
  std::printf("[%s] max |logit - float64 reference| = %.3g\n", GetParam().name, err);
  EXPECT_LE(err, kTolerance);
  // Not a degenerate model: logits vary well beyond the tolerance.
  double spread = 0.0;
  for (float v : logits) spread = std::max(spread, std::abs(static_cast<double>(v)));
  EXPECT_GT(spread, 0.5);

  // The features under test change the answer: without them the reference
  // would disagree with the model by far more than the tolerance.
  if (s.window.has_value()) {
    std::vector<Mat> no_window;
    for (int b = 0; b < kBatch; ++b) {
      std::vector<int32_t> row(tokens.begin() + b * kSeqLen, tokens.begin() + (b + 1) * kSeqLen);
      no_window.push_back(ReferenceForward(s, w, row, {.apply_window = false}));
    }
    EXPECT_GT(MaxDiff(ref, no_window), 100 * kTolerance);
    EXPECT_GT(MaxError(logits, no_window, s.vocab), 100 * kTolerance);
  }
  if (s.llama3) {
    std::vector<Mat> unscaled;
    for (int b = 0; b < kBatch; ++b) {
      std::vector<int32_t> row(tokens.begin() + b * kSeqLen, tokens.begin() + (b + 1) * kSeqLen);
      unscaled.push_back(ReferenceForward(s, w, row, {.apply_rope_scaling = false}));
    }
    EXPECT_GT(MaxError(logits, unscaled, s.vocab), 100 * kTolerance);
  }
}

Spec LlamaUntied() {
  Spec s;
  s.heads = 4;
  s.kv_heads = 2;
  return s;
}
Spec LlamaTied() {
  Spec s;
  s.tied = true;
  s.kv_heads = 4;  // MHA
  return s;
}
Spec LlamaBf16Biased() {
  Spec s;
  s.dtype = DType::kBF16;
  s.qkv_bias = s.o_bias = true;  // Llama attention_bias
  s.kv_heads = 1;                // MQA
  return s;
}
Spec LlamaRope3() {
  Spec s;
  s.head_dim = 16;
  s.hidden = 64;
  // Wavelengths run from 6.3 to ~6000: with original_max_pos 64 and factors
  // 1/4 the bands are > 64 (scaled), 16..64 (smoothed), < 16 (kept).
  s.llama3 = true;
  s.factor = 8.0;
  s.original_max_pos = 64;
  return s;
}
Spec Mistral() {
  Spec s;
  s.arch = "MistralForCausalLM";
  s.window = 4;  // < kSeqLen, so the window matters
  return s;
}
Spec Qwen2() {
  Spec s;
  s.arch = "Qwen2ForCausalLM";
  s.qkv_bias = true;
  s.tied = true;
  s.theta = 1e6;
  return s;
}
Spec Qwen3() {
  Spec s;
  s.arch = "Qwen3ForCausalLM";
  s.qk_norm = true;
  s.head_dim = 12;  // != hidden / heads = 8
  s.write_head_dim = true;
  s.eps = 1e-6;
  return s;
}

INSTANTIATE_TEST_SUITE_P(Variants, LlamaForwardTest,
                         ::testing::Values(Variant{"llama_untied_gqa", LlamaUntied()},
                                           Variant{"llama_tied_mha", LlamaTied()},
                                           Variant{"llama_bf16_bias_mqa", LlamaBf16Biased()},
                                           Variant{"llama_rope_llama3", LlamaRope3()},
                                           Variant{"mistral_window", Mistral()},
                                           Variant{"qwen2_bias", Qwen2()},
                                           Variant{"qwen3_qknorm", Qwen3()}),
                         [](const auto& info) { return std::string(info.param.name); });

// Embed + LayerForward per layer + Head is Forward, bit for bit, and the
// observer sees exactly each Linear group's input.
TEST(LlamaLayerwiseTest, LayerForwardEqualsForwardAndObserverSeesInputs) {
  Spec s = Qwen2();
  s.layers = 3;
  Weights w;
  Shapes shapes;
  MakeWeights(s, 77, &w, &shapes);
  auto model = LlamaModel::Load(WriteModel(s, w, shapes, "llama-layerwise"));
  ASSERT_TRUE(model.ok()) << model.status();
  const LlamaModel& m = **model;
  const int rows = kBatch * kSeqLen;
  const auto tokens = RandomTokens(rows, s.vocab, 5);

  std::vector<float> expected(static_cast<size_t>(rows) * s.vocab);
  ASSERT_TRUE(m.Forward(tokens, kBatch, kSeqLen, expected).ok());

  std::vector<float> hidden(static_cast<size_t>(rows) * s.hidden);
  ASSERT_TRUE(m.Embed(tokens, hidden).ok());
  std::map<std::pair<int, int>, std::vector<float>> seen;
  int calls = 0;
  auto observer = [&](int layer, LinearGroup group, const float* x, long n, int cols) {
    ++calls;
    EXPECT_EQ(n, rows);
    const int want_cols = group == LinearGroup::kO      ? s.heads * s.head_dim
                          : group == LinearGroup::kDown ? s.inter
                                                        : s.hidden;
    EXPECT_EQ(cols, want_cols) << "layer " << layer << " group " << static_cast<int>(group);
    seen[{layer, static_cast<int>(group)}].assign(x, x + n * cols);
  };
  for (int l = 0; l < s.layers; ++l) {
    ASSERT_TRUE(m.LayerForward(l, m.layer(l), kBatch, kSeqLen, hidden, observer).ok());
  }
  std::vector<float> logits(expected.size());
  ASSERT_TRUE(m.Head(hidden, rows, logits).ok());
  EXPECT_EQ(calls, 4 * s.layers);
  ASSERT_EQ(0, std::memcmp(logits.data(), expected.data(), logits.size() * sizeof(float)));

  // Observed inputs against the reference's, sequence by sequence.
  std::vector<GroupInputs> ref(kBatch);
  for (int b = 0; b < kBatch; ++b) {
    std::vector<int32_t> row(tokens.begin() + b * kSeqLen, tokens.begin() + (b + 1) * kSeqLen);
    ReferenceForward(s, w, row, {}, &ref[b]);
  }
  for (const auto& [key, values] : seen) {
    const size_t per_seq = values.size() / kBatch;
    double err = 0.0;
    for (int b = 0; b < kBatch; ++b) {
      const auto& r = ref[b].at(key);
      ASSERT_EQ(r.size(), per_seq);
      for (size_t i = 0; i < per_seq; ++i) {
        err = std::max(err, std::abs(values[b * per_seq + i] - r[i]));
      }
    }
    EXPECT_LE(err, kTolerance) << "layer " << key.first << " group " << key.second;
  }
}

TEST(LlamaModelTest, ParametersAreNamedViewsOfOneArena) {
  Spec s = Qwen3();
  Weights w;
  Shapes shapes;
  MakeWeights(s, 3, &w, &shapes);
  auto model = LlamaModel::Load(WriteModel(s, w, shapes, "llama-params"));
  ASSERT_TRUE(model.ok()) << model.status();
  const auto params = (*model)->Parameters();
  ASSERT_EQ(params.size(), w.size());
  long total = 0;
  for (const auto& p : params) {
    ASSERT_TRUE(w.count(p.name)) << p.name;
    EXPECT_EQ(p.shape, shapes.at(p.name)) << p.name;
    const auto& values = w.at(p.name);
    EXPECT_EQ(0, std::memcmp(p.data, values.data(), values.size() * sizeof(float))) << p.name;
    total += static_cast<long>(values.size());
  }
  EXPECT_EQ((*model)->num_parameters(), total);
  // Contiguous, in order: each view starts where the previous one ends.
  for (size_t i = 1; i < params.size(); ++i) {
    long n = 1;
    for (int64_t d : params[i - 1].shape) n *= d;
    EXPECT_EQ(params[i].data, params[i - 1].data + n) << params[i].name;
  }
  for (const auto& p : params) {
    if (p.name == "model.layers.1.self_attn.q_norm.weight") {
      EXPECT_EQ((*model)->layer(1).q_norm, p.data);
    }
  }
}

TEST(LlamaModelTest, TiedModelHasNoLmHeadParameter) {
  Spec s = LlamaTied();
  Weights w;
  Shapes shapes;
  MakeWeights(s, 4, &w, &shapes);
  auto model = LlamaModel::Load(WriteModel(s, w, shapes, "llama-tied"));
  ASSERT_TRUE(model.ok()) << model.status();
  for (const auto& p : (*model)->Parameters()) EXPECT_NE(p.name, "lm_head.weight");
}

TEST(LlamaModelTest, MissingTensorIsNotFound) {
  Spec s = LlamaUntied();
  Weights w;
  Shapes shapes;
  MakeWeights(s, 5, &w, &shapes);
  w.erase("model.layers.1.mlp.up_proj.weight");
  auto model = LlamaModel::Load(WriteModel(s, w, shapes, "llama-missing"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("model.layers.1.mlp.up_proj.weight"));
}

TEST(LlamaModelTest, UntiedWithoutLmHeadIsNotFound) {
  Spec s = LlamaUntied();
  Weights w;
  Shapes shapes;
  MakeWeights(s, 6, &w, &shapes);
  w.erase("lm_head.weight");
  auto model = LlamaModel::Load(WriteModel(s, w, shapes, "llama-nohead"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("lm_head.weight"));
}

TEST(LlamaModelTest, WrongShapeIsInvalidArgument) {
  Spec s = LlamaUntied();
  Weights w;
  Shapes shapes;
  MakeWeights(s, 7, &w, &shapes);
  // k_proj stored transposed: same element count, wrong shape.
  auto& shape = shapes.at("model.layers.0.self_attn.k_proj.weight");
  std::swap(shape[0], shape[1]);
  ASSERT_NE(shape[0], shape[1]);
  auto model = LlamaModel::Load(WriteModel(s, w, shapes, "llama-shape"));
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kInvalidArgument) << model.status();
  EXPECT_THAT(std::string(model.status().message()),
              HasSubstr("model.layers.0.self_attn.k_proj.weight"));
}

TEST(LlamaModelTest, BadInputsAreInvalidArgument) {
  Spec s = LlamaUntied();
  Weights w;
  Shapes shapes;
  MakeWeights(s, 8, &w, &shapes);
  auto model = LlamaModel::Load(WriteModel(s, w, shapes, "llama-inputs"));
  ASSERT_TRUE(model.ok()) << model.status();
  std::vector<int32_t> tokens = {1, 2, s.vocab};
  std::vector<float> logits(3 * s.vocab);
  auto status = (*model)->Forward(tokens, 1, 3, logits);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("token id 40"));
  tokens = {1, 2, 3};
  EXPECT_EQ((*model)->Forward(tokens, 1, 2, logits).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> small(3);
  EXPECT_EQ((*model)->Forward(tokens, 1, 3, small).code(), absl::StatusCode::kInvalidArgument);
  std::vector<float> hidden(3 * s.hidden);
  EXPECT_EQ((*model)->LayerForward(s.layers, (*model)->layer(0), 1, 3, hidden).code(),
            absl::StatusCode::kInvalidArgument);
}

// A streaming model holds only what was loaded, and a layer loaded on its own
// computes exactly what the full model's layer does.
TEST(LlamaStreamingTest, LoadedLayerForwardEqualsTheFullModel) {
  for (Spec s : {Qwen2(), Qwen3(), LlamaTied(), LlamaBf16Biased()}) {
    s.layers = 3;
    SCOPED_TRACE(s.arch + (s.tied ? " tied" : ""));
    Weights w;
    Shapes shapes;
    MakeWeights(s, 21, &w, &shapes);
    const auto dir = WriteModel(s, w, shapes, "llama-streaming");
    auto full = LlamaModel::Load(dir);
    ASSERT_TRUE(full.ok()) << full.status();
    auto config = LoadModelConfig(dir);
    auto checkpoint = Checkpoint::Open(dir);
    ASSERT_TRUE(config.ok() && checkpoint.ok());
    auto streaming = LlamaModel::OpenStreaming(*config, **checkpoint);
    ASSERT_TRUE(streaming.ok()) << streaming.status();
    const LlamaModel& f = **full;
    LlamaModel& m = **streaming;
    EXPECT_TRUE(m.streaming());
    EXPECT_FALSE(f.streaming());
    EXPECT_EQ(m.num_parameters(), f.num_parameters());
    for (const auto& p : m.Parameters()) EXPECT_EQ(p.data, nullptr) << p.name;

    const int rows = kBatch * kSeqLen;
    const auto tokens = RandomTokens(rows, s.vocab, 6);
    std::vector<float> expected(static_cast<size_t>(rows) * s.hidden), hidden(expected.size());
    EXPECT_EQ(m.Embed(tokens, hidden).code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE(m.LoadEmbeddings().ok());
    ASSERT_TRUE(f.Embed(tokens, expected).ok());
    ASSERT_TRUE(m.Embed(tokens, hidden).ok());
    EXPECT_EQ(hidden, expected);
    m.ReleaseEmbeddings();

    const float* previous_start = nullptr;
    for (int l = 0; l < s.layers; ++l) {
      EXPECT_EQ(m.LayerForward(l, m.layer(l), kBatch, kSeqLen, hidden).code(),
                absl::StatusCode::kInvalidArgument);  // not loaded: no views
      ASSERT_TRUE(m.LoadLayer(l).ok());
      EXPECT_TRUE(m.layer_loaded(l));
      // Only this layer is resident.
      for (const auto& p : m.Parameters()) {
        EXPECT_EQ(p.data != nullptr, p.layer == l) << p.name;
      }
      const auto layer_params = m.LayerParameters(l);
      const auto full_params = f.LayerParameters(l);
      ASSERT_EQ(layer_params.size(), full_params.size());
      // The released layer's allocation was read into (and holds this layer's values).
      if (l > 0) EXPECT_EQ(layer_params[0].data, previous_start);
      previous_start = layer_params[0].data;
      for (size_t i = 0; i < layer_params.size(); ++i) {
        EXPECT_EQ(layer_params[i].name, full_params[i].name);
        auto values = m.ReadParameter(layer_params[i]);
        ASSERT_TRUE(values.ok()) << values.status();
        auto read = f.ReadParameter(full_params[i]);
        ASSERT_TRUE(read.ok()) << read.status();
        EXPECT_EQ(*values, *read) << layer_params[i].name;
      }
      ASSERT_TRUE(f.LayerForward(l, f.layer(l), kBatch, kSeqLen, expected).ok());
      ASSERT_TRUE(m.LayerForward(l, m.layer(l), kBatch, kSeqLen, hidden).ok());
      ASSERT_EQ(0, std::memcmp(hidden.data(), expected.data(), hidden.size() * sizeof(float)));
      m.ReleaseLayer(l);
      EXPECT_FALSE(m.layer_loaded(l));
      EXPECT_EQ(m.layer(l).q_proj, nullptr);
    }

    std::vector<float> logits(static_cast<size_t>(rows) * s.vocab), want(logits.size());
    EXPECT_EQ(m.Head(hidden, rows, logits).code(), absl::StatusCode::kFailedPrecondition);
    ASSERT_TRUE(m.LoadHead().ok());
    if (s.tied) ASSERT_TRUE(m.LoadEmbeddings().ok());  // the head is the embedding
    ASSERT_TRUE(f.Head(expected, rows, want).ok());
    ASSERT_TRUE(m.Head(hidden, rows, logits).ok());
    EXPECT_EQ(logits, want);
    // Parameters outside the layers read from the checkpoint when not loaded.
    m.ReleaseHead();
    m.ReleaseEmbeddings();
    const auto all = m.Parameters();
    const auto all_full = f.Parameters();
    ASSERT_EQ(all.size(), all_full.size());
    for (size_t i = 0; i < all.size(); ++i) {
      if (all[i].layer >= 0) continue;
      auto values = m.ReadParameter(all[i]);
      ASSERT_TRUE(values.ok()) << values.status();
      auto read = f.ReadParameter(all_full[i]);
      ASSERT_TRUE(read.ok()) << read.status();
      EXPECT_EQ(*values, *read) << all[i].name;
    }
  }
}

TEST(LlamaStreamingTest, OpenChecksTensorsAndLoadNeedsAStreamingModel) {
  Spec s = LlamaUntied();
  Weights w;
  Shapes shapes;
  MakeWeights(s, 22, &w, &shapes);
  const auto good = WriteModel(s, w, shapes, "llama-streaming-good");
  auto full = LlamaModel::Load(good);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_EQ((*full)->LoadLayer(0).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*full)->layer_loaded(1));

  w.erase("model.layers.1.mlp.up_proj.weight");
  const auto missing = WriteModel(s, w, shapes, "llama-streaming-missing");
  auto config = LoadModelConfig(missing);
  auto checkpoint = Checkpoint::Open(missing);
  ASSERT_TRUE(config.ok() && checkpoint.ok());
  auto model = LlamaModel::OpenStreaming(*config, **checkpoint);
  ASSERT_FALSE(model.ok());
  EXPECT_EQ(model.status().code(), absl::StatusCode::kNotFound) << model.status();
  EXPECT_THAT(std::string(model.status().message()), HasSubstr("model.layers.1.mlp.up_proj.weight"));
}

}  // namespace
}  // namespace shrinkray
