// core/distill/student_init + importance: depth and width pruning against the
// teacher's own forward (exact where the arithmetic is the same), the
// importance against a brute-force recomputation, importance-ranked pruning
// against pruning the least important channels (stories260K), seeded random
// students, and every bad spec as InvalidArgument naming its field.
#include "core/distill/student_init.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/calib/calibration_set.h"
#include "core/distill/importance.h"
#include "core/io/text_file.h"
#include "core/model/llama.h"
#include "core/model/synthetic.h"
#include "core/pipeline/eval.h"
#include "core/tokenizer/tokenizer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray::distill {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

ModelConfig SyntheticConfig(bool qwen2) {
  // 4 heads in 2 KV groups, head_dim 8, 3 layers.
  ModelConfig c = MakeLlamaConfig(32, 48, 3, 4, 2, 64, 64, /*tie_embeddings=*/qwen2);
  if (qwen2) {
    c.arch = Architecture::kQwen2;
    c.architecture_name = "Qwen2ForCausalLM";
    c.model_type = "qwen2";
    c.attention_bias = true;  // q/k/v biases: sliced with their heads
  }
  return c;
}

struct Teacher {
  fs::path dir;
  std::unique_ptr<LlamaModel> model;
};

Teacher SyntheticTeacher(bool qwen2, const std::string& tag) {
  Teacher t;
  t.dir = ::shrinkray::testing::MakeTempDir(tag);
  const absl::Status written = WriteSyntheticModel(t.dir, SyntheticConfig(qwen2), /*seed=*/11);
  EXPECT_TRUE(written.ok()) << written;
  auto model = LlamaModel::Load(t.dir);
  EXPECT_TRUE(model.ok()) << model.status();
  if (model.ok()) t.model = std::move(*model);
  return t;
}

// Seeded windows over a seeded random token stream.
CalibrationSet SyntheticWindows(int vocab, int num_samples, int seqlen) {
  SplitMix64 rng(5);
  std::vector<int32_t> ids(4096);
  for (int32_t& id : ids) id = static_cast<int32_t>(rng.Next() % static_cast<uint64_t>(vocab));
  CalibrationOptions options;
  options.num_samples = num_samples;
  options.seqlen = seqlen;
  options.seed = 3;
  auto set = SampleCalibrationWindows(ids, options, "synthetic");
  EXPECT_TRUE(set.ok()) << set.status();
  return set.ok() ? std::move(*set) : CalibrationSet{};
}

std::vector<float> Logits(const LlamaModel& model, const CalibrationSet& windows) {
  std::vector<float> logits(windows.tokens.size() * model.config().vocab_size);
  const absl::Status s =
      model.Forward(windows.tokens, windows.num_samples, windows.seqlen, logits);
  EXPECT_TRUE(s.ok()) << s;
  return logits;
}

std::unique_ptr<LlamaModel> WriteAndLoad(const StudentModel& student, const fs::path& teacher_dir,
                                         const std::string& tag) {
  const fs::path out = ::shrinkray::testing::MakeTempDir(tag) / "student";
  const absl::Status written = WriteStudentFolder(out, student, teacher_dir, /*overwrite=*/false);
  EXPECT_TRUE(written.ok()) << written;
  auto model = LlamaModel::Load(out);
  EXPECT_TRUE(model.ok()) << model.status();
  return model.ok() ? std::move(*model) : nullptr;
}

const LlamaModel::NamedParameter& Param(const std::vector<LlamaModel::NamedParameter>& params,
                                        const std::string& name) {
  auto it = std::find_if(params.begin(), params.end(),
                         [&](const LlamaModel::NamedParameter& p) { return p.name == name; });
  EXPECT_NE(it, params.end()) << name;
  return *it;
}

size_t Numel(const LlamaModel::NamedParameter& p) {
  size_t n = 1;
  for (int64_t d : p.shape) n *= static_cast<size_t>(d);
  return n;
}

bool SameBytes(const LlamaModel::NamedParameter& a, const LlamaModel::NamedParameter& b) {
  return a.shape == b.shape && std::memcmp(a.data, b.data, Numel(a) * sizeof(float)) == 0;
}

// Brute-force importance, written independently of importance.cc: one window
// per forward, the SwiGLU output recomputed in double from the normed input of
// gate/up, per-head norms from o_proj's input; the aggregation is Minitron's
// (per window mean over tokens, then L2 across windows).
struct BruteImportance {
  std::vector<std::vector<double>> mlp, heads;  // [layer][channel / head]
};

BruteImportance BruteForceImportance(const LlamaModel& m, const CalibrationSet& windows) {
  const ModelConfig& c = m.config();
  const int L = c.num_hidden_layers, C = c.hidden_size, I = c.intermediate_size;
  const int NH = c.num_attention_heads, HD = c.head_dim, S = windows.seqlen;
  BruteImportance out;
  out.mlp.assign(L, std::vector<double>(I, 0.0));
  out.heads.assign(L, std::vector<double>(NH, 0.0));
  for (int w = 0; w < windows.num_samples; ++w) {
    std::vector<float> hidden(static_cast<size_t>(S) * C);
    EXPECT_TRUE(m.Embed(windows.Window(w), hidden).ok());
    for (int l = 0; l < L; ++l) {
      std::vector<double> mlp(I, 0.0), heads(NH, 0.0);
      const LayerWeights& lw = m.layer(l);
      auto observer = [&](int, LinearGroup group, const float* x, long rows, int) {
        if (group == LinearGroup::kGateUp) {
          for (long t = 0; t < rows; ++t) {
            for (int i = 0; i < I; ++i) {
              double g = 0, u = 0;
              for (int k = 0; k < C; ++k) {
                g += static_cast<double>(lw.gate_proj[static_cast<size_t>(i) * C + k]) * x[t * C + k];
                u += static_cast<double>(lw.up_proj[static_cast<size_t>(i) * C + k]) * x[t * C + k];
              }
              mlp[i] += std::fabs(g / (1.0 + std::exp(-g)) * u) / S;
            }
          }
        } else if (group == LinearGroup::kO) {
          for (long t = 0; t < rows; ++t) {
            for (int h = 0; h < NH; ++h) {
              double ss = 0;
              for (int d = 0; d < HD; ++d) ss += std::pow(x[t * NH * HD + h * HD + d], 2.0);
              heads[h] += std::sqrt(ss) / S;
            }
          }
        }
      };
      EXPECT_TRUE(m.LayerForward(l, lw, 1, S, hidden, observer).ok());
      for (int i = 0; i < I; ++i) out.mlp[l][i] += mlp[i] * mlp[i];
      for (int h = 0; h < NH; ++h) out.heads[l][h] += heads[h] * heads[h];
    }
  }
  for (auto* table : {&out.mlp, &out.heads}) {
    for (auto& row : *table) {
      for (double& v : row) v = std::sqrt(v);
    }
  }
  return out;
}

// The indices of the k largest (or smallest) scores in ascending order, by a
// full sort: the reference for TopKIndices and for the "least important" student.
std::vector<int> Ranked(const std::vector<double>& s, int k, bool largest) {
  std::vector<int> idx(s.size());
  for (size_t i = 0; i < s.size(); ++i) idx[i] = static_cast<int>(i);
  std::sort(idx.begin(), idx.end(), [&](int a, int b) {
    return largest ? (s[a] > s[b] || (s[a] == s[b] && a < b)) : (s[a] < s[b] || (s[a] == s[b] && a < b));
  });
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

// The smallest relative gap between the k-th and (k+1)-th largest score: the
// brute force and the implementation may only disagree on the kept set when
// it is below their numerical difference.
double BoundaryGap(std::vector<double> s, int k) {
  std::sort(s.begin(), s.end(), std::greater<double>());
  return (s[k - 1] - s[k]) / s[k - 1];
}

void ExpectInvalid(const absl::StatusOr<StudentModel>& r, const std::string& field) {
  ASSERT_FALSE(r.ok()) << "expected an error naming " << field;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_THAT(std::string(r.status().message()), HasSubstr(field));
}

// ---- Synthetic teacher: no shared data needed.

TEST(DistillStudentInitTest, DepthKeepingEveryLayerReproducesTheTeacherExactly) {
  Teacher t = SyntheticTeacher(false, "student-depth-all");
  ASSERT_NE(t.model, nullptr);
  StudentSpec spec;
  spec.kind = StudentInitKind::kDepth;
  spec.keep_layers = {0, 1, 2};
  auto student = InitStudent(*t.model, spec);
  ASSERT_TRUE(student.ok()) << student.status();
  EXPECT_EQ(student->config.num_hidden_layers, 3);
  auto loaded = WriteAndLoad(*student, t.dir, "student-depth-all-out");
  ASSERT_NE(loaded, nullptr);
  const CalibrationSet w = SyntheticWindows(64, 3, 16);
  const std::vector<float> a = Logits(*t.model, w), b = Logits(*loaded, w);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

TEST(DistillStudentInitTest, DepthPruningEqualsAForwardThatSkipsTheDroppedLayers) {
  Teacher t = SyntheticTeacher(false, "student-depth-skip");
  ASSERT_NE(t.model, nullptr);
  StudentSpec spec;
  spec.kind = StudentInitKind::kDepth;
  spec.keep_layers = {0, 2};
  auto student = InitStudent(*t.model, spec);
  ASSERT_TRUE(student.ok()) << student.status();
  auto loaded = WriteAndLoad(*student, t.dir, "student-depth-skip-out");
  ASSERT_NE(loaded, nullptr);
  EXPECT_EQ(loaded->config().num_hidden_layers, 2);

  // The teacher's own pieces with layer 1 left out.
  const CalibrationSet w = SyntheticWindows(64, 2, 16);
  const int C = t.model->config().hidden_size, V = t.model->config().vocab_size;
  std::vector<float> hidden(w.tokens.size() * C), manual(w.tokens.size() * V);
  ASSERT_TRUE(t.model->Embed(w.tokens, hidden).ok());
  ASSERT_TRUE(t.model->LayerForward(0, t.model->layer(0), w.num_samples, w.seqlen, hidden).ok());
  ASSERT_TRUE(t.model->LayerForward(1, t.model->layer(2), w.num_samples, w.seqlen, hidden).ok());
  ASSERT_TRUE(t.model->Head(hidden, static_cast<long>(w.tokens.size()), manual).ok());
  const std::vector<float> got = Logits(*loaded, w);
  ASSERT_EQ(got.size(), manual.size());
  EXPECT_EQ(std::memcmp(got.data(), manual.data(), got.size() * sizeof(float)), 0);
}

TEST(DistillStudentInitTest, WidthPruningToTheFullWidthReproducesTheTeacherExactly) {
  for (bool qwen2 : {false, true}) {
    SCOPED_TRACE(qwen2 ? "qwen2 (biases, tied)" : "llama");
    Teacher t = SyntheticTeacher(qwen2, "student-width-full");
    ASSERT_NE(t.model, nullptr);
    StudentSpec spec;
    spec.kind = StudentInitKind::kWidth;
    spec.intermediate_size = t.model->config().intermediate_size;
    spec.num_attention_heads = t.model->config().num_attention_heads;
    spec.calibration = SyntheticWindows(64, 4, 16);
    auto student = InitStudent(*t.model, spec);
    ASSERT_TRUE(student.ok()) << student.status();
    auto loaded = WriteAndLoad(*student, t.dir, "student-width-full-out");
    ASSERT_NE(loaded, nullptr);
    const std::vector<float> a = Logits(*t.model, spec.calibration);
    const std::vector<float> b = Logits(*loaded, spec.calibration);
    ASSERT_EQ(a.size(), b.size());
    EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
  }
}

// Dropping MLP channel c removes column c of down_proj's sum, and dropping a
// head removes its columns of o_proj's: the pruned student must equal the
// teacher with those columns zeroed (up to the matmuls' summation order).
TEST(DistillStudentInitTest, WidthPruningEqualsTheTeacherWithDroppedColumnsZeroed) {
  for (bool qwen2 : {false, true}) {
    SCOPED_TRACE(qwen2 ? "qwen2 (biases, tied)" : "llama");
    Teacher t = SyntheticTeacher(qwen2, "student-width-zero");
    ASSERT_NE(t.model, nullptr);
    const ModelConfig tc = t.model->config();
    StudentSpec spec;
    spec.kind = StudentInitKind::kWidth;
    spec.intermediate_size = tc.intermediate_size / 2;
    spec.num_attention_heads = tc.num_attention_heads / 2;
    spec.calibration = SyntheticWindows(64, 4, 16);
    auto student = InitStudent(*t.model, spec);
    ASSERT_TRUE(student.ok()) << student.status();
    ASSERT_TRUE(student->selection.has_value());
    // GQA stays valid: 2 heads in 1 group of 2, head_dim kept explicitly.
    auto loaded = WriteAndLoad(*student, t.dir, "student-width-zero-out");
    ASSERT_NE(loaded, nullptr);
    EXPECT_EQ(loaded->config().intermediate_size, 24);
    EXPECT_EQ(loaded->config().num_attention_heads, 2);
    EXPECT_EQ(loaded->config().num_key_value_heads, 1);
    EXPECT_EQ(loaded->config().head_dim, 8);
    EXPECT_EQ(loaded->config().hidden_size, 32);

    const CalibrationSet w = SyntheticWindows(64, 2, 16);
    const std::vector<float> pruned = Logits(*loaded, w);
    const int per_group = tc.num_attention_heads / tc.num_key_value_heads;
    for (int l = 0; l < tc.num_hidden_layers; ++l) {
      const std::vector<int>& keep_c = student->selection->mlp_channels[l];
      const std::vector<int>& keep_g = student->selection->kv_groups[l];
      LayerWeights& lw = t.model->mutable_layer(l);
      for (int i = 0; i < tc.intermediate_size; ++i) {
        if (std::binary_search(keep_c.begin(), keep_c.end(), i)) continue;
        for (int r = 0; r < tc.hidden_size; ++r) lw.down_proj[r * tc.intermediate_size + i] = 0;
      }
      for (int h = 0; h < tc.num_attention_heads; ++h) {
        if (std::binary_search(keep_g.begin(), keep_g.end(), h / per_group)) continue;
        for (int r = 0; r < tc.hidden_size; ++r) {
          for (int d = 0; d < tc.head_dim; ++d) lw.o_proj[r * tc.q_dim() + h * tc.head_dim + d] = 0;
        }
      }
    }
    const std::vector<float> zeroed = Logits(*t.model, w);
    ASSERT_EQ(pruned.size(), zeroed.size());
    double max_diff = 0, max_abs = 0;
    for (size_t i = 0; i < pruned.size(); ++i) {
      max_diff = std::max(max_diff, std::fabs(static_cast<double>(pruned[i]) - zeroed[i]));
      max_abs = std::max(max_abs, std::fabs(static_cast<double>(zeroed[i])));
    }
    EXPECT_GT(max_abs, 0.1);
    EXPECT_LT(max_diff, 1e-5 * std::max(1.0, max_abs)) << "max |logit| " << max_abs;
  }
}

TEST(DistillStudentInitTest, ImportanceMatchesABruteForceRecomputation) {
  Teacher t = SyntheticTeacher(false, "student-importance");
  ASSERT_NE(t.model, nullptr);
  const CalibrationSet w = SyntheticWindows(64, 6, 16);
  ImportanceOptions options;
  options.batch = 4;  // 4 + 2 windows: batching must not change the scores
  auto imp = ComputeActivationImportance(*t.model, w, options);
  ASSERT_TRUE(imp.ok()) << imp.status();
  const BruteImportance brute = BruteForceImportance(*t.model, w);
  const ModelConfig& c = t.model->config();
  ASSERT_EQ(imp->layers.size(), 3u);
  EXPECT_EQ(imp->num_windows, 6);
  EXPECT_EQ(imp->embedding_channels.size(), 32u);
  for (double e : imp->embedding_channels) EXPECT_GT(e, 0.0);
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const LayerImportance& li = imp->layers[l];
    ASSERT_EQ(li.mlp_channels.size(), 48u);
    ASSERT_EQ(li.heads.size(), 4u);
    ASSERT_EQ(li.kv_groups.size(), 2u);
    for (int i = 0; i < 48; ++i) {
      EXPECT_NEAR(li.mlp_channels[i], brute.mlp[l][i], 1e-5 * brute.mlp[l][i]) << l << " " << i;
    }
    for (int h = 0; h < 4; ++h) {
      EXPECT_NEAR(li.heads[h], brute.heads[l][h], 1e-6 * brute.heads[l][h]);
    }
    EXPECT_DOUBLE_EQ(li.kv_groups[0], li.heads[0] + li.heads[1]);
    EXPECT_DOUBLE_EQ(li.kv_groups[1], li.heads[2] + li.heads[3]);
    EXPECT_EQ(TopKIndices(li.mlp_channels, 24), Ranked(brute.mlp[l], 24, true));
  }
  // Same windows, same scores; the mean aggregation is the plain token mean.
  auto again = ComputeActivationImportance(*t.model, w, options);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->layers[1].mlp_channels, imp->layers[1].mlp_channels);
  auto mean = ComputeActivationImportance(*t.model, w, {ImportanceAggregation::kMean, 4});
  ASSERT_TRUE(mean.ok());
  for (int i = 0; i < 48; ++i) {
    // mean <= L2 / sqrt(n) (power means), with equality only for equal windows.
    EXPECT_LE(mean->layers[0].mlp_channels[i],
              imp->layers[0].mlp_channels[i] / std::sqrt(6.0) * (1 + 1e-12));
  }
}

TEST(DistillStudentInitTest, TopKIndicesKeepsTheOriginalOrderAndBreaksTiesByIndex) {
  const std::vector<double> s = {0.5, 3.0, 1.0, 3.0, 0.1};
  EXPECT_EQ(TopKIndices(s, 2), (std::vector<int>{1, 3}));
  EXPECT_EQ(TopKIndices(s, 3), (std::vector<int>{1, 2, 3}));
  EXPECT_EQ(TopKIndices(std::vector<double>{2.0, 2.0, 2.0}, 1), (std::vector<int>{0}));
  EXPECT_EQ(TopKIndices(s, 9).size(), 5u);
  EXPECT_TRUE(TopKIndices(s, 0).empty());
}

TEST(DistillStudentInitTest, RandomInitIsSeeded) {
  Teacher t = SyntheticTeacher(false, "student-random");
  ASSERT_NE(t.model, nullptr);
  StudentSpec spec;
  spec.kind = StudentInitKind::kRandom;
  spec.config = MakeLlamaConfig(16, 40, 2, 2, 1, 64, 64, true);
  spec.seed = 42;
  auto a = InitStudent(*t.model, spec), b = InitStudent(*t.model, spec);
  spec.seed = 43;
  auto c = InitStudent(*t.model, spec);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok()) << a.status() << b.status() << c.status();
  const auto pa = a->weights.params(), pb = b->weights.params(), pc = c->weights.params();
  ASSERT_EQ(pa.size(), pb.size());
  EXPECT_TRUE(std::equal(pa.begin(), pa.end(), pb.begin()));
  EXPECT_FALSE(std::equal(pa.begin(), pa.end(), pc.begin()));
  EXPECT_EQ(a->config.hidden_size, 16);
  EXPECT_EQ(a->config.num_hidden_layers, 2);
  EXPECT_EQ(a->config.vocab_size, 64);

  // It is a loadable model of its own shape with the values it was given.
  auto loaded = WriteAndLoad(*a, t.dir, "student-random-out");
  ASSERT_NE(loaded, nullptr);
  EXPECT_EQ(loaded->config().intermediate_size, 40);
  EXPECT_EQ(loaded->num_parameters(), static_cast<long>(pa.size()));
  const auto params = loaded->Parameters();
  const auto& gate = Param(params, "model.layers.1.mlp.gate_proj.weight");
  auto view = a->weights.Find("model.layers.1.mlp.gate_proj.weight");
  ASSERT_TRUE(view.ok());
  const auto values = a->weights.param(**view);
  EXPECT_EQ(std::memcmp(gate.data, values.data(), values.size() * sizeof(float)), 0);
}

TEST(DistillStudentInitTest, BadSpecsAreInvalidArgumentNamingTheField) {
  Teacher t = SyntheticTeacher(false, "student-errors");
  ASSERT_NE(t.model, nullptr);
  const LlamaModel& m = *t.model;

  StudentSpec depth;
  depth.kind = StudentInitKind::kDepth;
  ExpectInvalid(InitStudent(m, depth), "keep_layers is empty");
  depth.keep_layers = {0, 1, 2, 2};
  ExpectInvalid(InitStudent(m, depth), "keep_layers has 4 entries but the teacher has 3");
  depth.keep_layers = {0, 3};
  ExpectInvalid(InitStudent(m, depth), "keep_layers[1] = 3 is outside [0, 3)");
  depth.keep_layers = {-1};
  ExpectInvalid(InitStudent(m, depth), "keep_layers[0] = -1 is outside");
  depth.keep_layers = {1, 1};
  ExpectInvalid(InitStudent(m, depth), "keep_layers[1] = 1 is repeated");
  depth.keep_layers = {2, 0};
  ExpectInvalid(InitStudent(m, depth), "keep_layers[1] = 0 is out of order");

  StudentSpec width;
  width.kind = StudentInitKind::kWidth;
  width.calibration = SyntheticWindows(64, 2, 8);
  ExpectInvalid(InitStudent(m, width), "intermediate_size and/or num_attention_heads");
  width.intermediate_size = 49;
  ExpectInvalid(InitStudent(m, width), "intermediate_size 49 is larger than the teacher's 48");
  width.intermediate_size = 0;
  ExpectInvalid(InitStudent(m, width), "intermediate_size = 0 must be positive");
  width.intermediate_size = std::nullopt;
  width.num_attention_heads = 8;
  ExpectInvalid(InitStudent(m, width), "num_attention_heads 8 is larger than the teacher's 4");
  width.num_attention_heads = 3;
  ExpectInvalid(InitStudent(m, width), "num_attention_heads 3 is not a multiple of the 2");
  width.num_attention_heads = 0;
  ExpectInvalid(InitStudent(m, width), "num_attention_heads = 0 must be positive");
  width.num_attention_heads = 2;
  width.calibration = CalibrationSet{};
  ExpectInvalid(InitStudent(m, width), "calibration has no windows");

  WidthSelection uneven;
  uneven.mlp_channels = {{0, 1}, {0, 1}, {0}};
  uneven.kv_groups = {{0}, {0}, {0}};
  ExpectInvalid(PruneWidth(m, uneven), "every layer must keep the same widths");
  WidthSelection repeated;
  repeated.mlp_channels = {{0, 1}, {0, 1}, {1, 1}};
  repeated.kv_groups = {{0}, {1}, {0}};
  ExpectInvalid(PruneWidth(m, repeated), "mlp_channels[2][1] = 1 is repeated");
  WidthSelection bad_group;
  bad_group.mlp_channels = {{0}, {0}, {0}};
  bad_group.kv_groups = {{0}, {2}, {0}};
  ExpectInvalid(PruneWidth(m, bad_group), "kv_groups[1][0] = 2 is outside [0, 2)");

  StudentSpec random;
  random.kind = StudentInitKind::kRandom;
  random.config = MakeLlamaConfig(16, 40, 2, 2, 1, 65, 64, true);
  ExpectInvalid(InitStudent(m, random), "vocab_size 65 differs from the teacher's 64");
  random.config = MakeLlamaConfig(16, 0, 2, 2, 1, 64, 64, true);
  ExpectInvalid(InitStudent(m, random), "intermediate_size = 0 must be positive");
  random.config = MakeLlamaConfig(16, 40, 0, 2, 1, 64, 64, true);
  ExpectInvalid(InitStudent(m, random), "num_hidden_layers = 0 must be positive");
}

// ---- stories260K (../shared/data): skipped when absent.

class DistillStudentStoriesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::shrinkray::testing::SharedDataDir() / "stories260K";
    const fs::path text = ::shrinkray::testing::SharedDataDir() / "text";
    SHRINKRAY_REQUIRE_PATH(dir_ / "model.safetensors");
    SHRINKRAY_REQUIRE_PATH(text / "tinystories_train_prefix.txt");
    SHRINKRAY_REQUIRE_PATH(text / "tinystories_valid_prefix.txt");
    auto model = LlamaModel::Load(dir_);
    ASSERT_TRUE(model.ok()) << model.status();
    teacher_ = std::move(*model);
    auto tokenizer = Tokenizer::FromFile(dir_ / "tokenizer.json");
    ASSERT_TRUE(tokenizer.ok()) << tokenizer.status();
    CalibrationOptions options;
    options.num_samples = 16;
    options.seqlen = 128;
    options.seed = 0;
    auto calib = CalibrationSetFromText(text / "tinystories_train_prefix.txt", **tokenizer, options);
    ASSERT_TRUE(calib.ok()) << calib.status();
    calib_ = std::move(*calib);
    auto valid = ReadTextFile(text / "tinystories_valid_prefix.txt", 20000);
    ASSERT_TRUE(valid.ok()) << valid.status();
    auto ids = (*tokenizer)->Encode(*valid, true);
    ASSERT_TRUE(ids.ok()) << ids.status();
    eval_ids_ = std::move(*ids);
  }

  double Perplexity(const LlamaModel& model) {
    auto r = EvaluatePerplexity(model, eval_ids_, {128, 0});
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? r->ppl : -1.0;
  }

  fs::path dir_;
  std::unique_ptr<LlamaModel> teacher_;
  CalibrationSet calib_;
  std::vector<int32_t> eval_ids_;
};

TEST_F(DistillStudentStoriesTest, DepthPruningKeepsLayers024ByteForByte) {
  StudentSpec spec;
  spec.kind = StudentInitKind::kDepth;
  spec.keep_layers = {0, 2, 4};
  auto student = InitStudent(*teacher_, spec);
  ASSERT_TRUE(student.ok()) << student.status();
  const fs::path out = ::shrinkray::testing::MakeTempDir("student-stories-depth") / "s";
  ASSERT_TRUE(WriteStudentFolder(out, *student, dir_, false).ok());
  EXPECT_TRUE(fs::exists(out / "tokenizer.json"));
  EXPECT_TRUE(fs::exists(out / "tokenizer_config.json"));
  std::ifstream in(out / "config.json");
  const nlohmann::json config = nlohmann::json::parse(in);
  EXPECT_EQ(config["num_hidden_layers"], 3);
  EXPECT_EQ(config["shrinkray"]["recipe"]["kept_layers"], nlohmann::json({0, 2, 4}));
  auto loaded = LlamaModel::Load(out);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ((*loaded)->config().num_hidden_layers, 3);

  const auto tp = teacher_->Parameters(), sp = (*loaded)->Parameters();
  const int kept[] = {0, 2, 4};
  for (int l = 0; l < 3; ++l) {
    const auto sl = (*loaded)->LayerParameters(l), tl = teacher_->LayerParameters(kept[l]);
    ASSERT_EQ(sl.size(), tl.size());
    for (size_t i = 0; i < sl.size(); ++i) EXPECT_TRUE(SameBytes(sl[i], tl[i])) << sl[i].name;
  }
  EXPECT_TRUE(SameBytes(Param(sp, "model.embed_tokens.weight"), Param(tp, "model.embed_tokens.weight")));
  EXPECT_TRUE(SameBytes(Param(sp, "model.norm.weight"), Param(tp, "model.norm.weight")));

  const double ppl = Perplexity(**loaded), base = Perplexity(*teacher_);
  std::printf("stories260K perplexity: teacher %.3f, layers {0,2,4} %.3f\n", base, ppl);
  EXPECT_TRUE(std::isfinite(ppl));
  EXPECT_GT(ppl, base);
}

TEST_F(DistillStudentStoriesTest, HalfMlpWidthKeepsTheMostImportantChannels) {
  StudentSpec spec;
  spec.kind = StudentInitKind::kWidth;
  spec.intermediate_size = teacher_->config().intermediate_size / 2;  // 86 of 172
  spec.calibration = calib_;
  auto top = InitStudent(*teacher_, spec);
  ASSERT_TRUE(top.ok()) << top.status();
  ASSERT_TRUE(top->selection.has_value() && top->importance.has_value());
  EXPECT_EQ(top->config.num_attention_heads, 8);  // heads untouched

  // The kept channels are the top half of a brute-force recomputation.
  const BruteImportance brute = BruteForceImportance(*teacher_, calib_);
  const int k = *spec.intermediate_size;
  for (int l = 0; l < teacher_->config().num_hidden_layers; ++l) {
    ASSERT_GT(BoundaryGap(brute.mlp[l], k), 1e-6) << "near tie at the cut of layer " << l;
    EXPECT_EQ(top->selection->mlp_channels[l], Ranked(brute.mlp[l], k, true)) << "layer " << l;
  }

  // Against the least important half, chosen from the same scores.
  WidthSelection bottom;
  for (const LayerImportance& li : top->importance->layers) {
    bottom.mlp_channels.push_back(Ranked(li.mlp_channels, k, false));
    bottom.kv_groups.push_back({0, 1, 2, 3});
  }
  auto low = PruneWidth(*teacher_, bottom);
  ASSERT_TRUE(low.ok()) << low.status();
  auto top_model = WriteAndLoad(*top, dir_, "student-stories-top");
  auto low_model = WriteAndLoad(*low, dir_, "student-stories-low");
  ASSERT_NE(top_model, nullptr);
  ASSERT_NE(low_model, nullptr);
  EXPECT_EQ(top_model->config().intermediate_size, 86);
  const double base = Perplexity(*teacher_);
  const double ppl_top = Perplexity(*top_model), ppl_low = Perplexity(*low_model);
  std::printf("stories260K perplexity: teacher %.3f, top-86 MLP channels %.3f, bottom-86 %.3f\n",
              base, ppl_top, ppl_low);
  EXPECT_TRUE(std::isfinite(ppl_top));
  EXPECT_LT(ppl_top, ppl_low);
}

TEST_F(DistillStudentStoriesTest, HeadPruningKeepsGqaValid) {
  StudentSpec spec;
  spec.kind = StudentInitKind::kWidth;
  spec.num_attention_heads = 4;  // of 8 heads in 4 KV groups: 2 groups stay
  spec.calibration = calib_;
  auto student = InitStudent(*teacher_, spec);
  ASSERT_TRUE(student.ok()) << student.status();
  auto loaded = WriteAndLoad(*student, dir_, "student-stories-heads");
  ASSERT_NE(loaded, nullptr);
  const ModelConfig& c = loaded->config();
  EXPECT_EQ(c.num_attention_heads, 4);
  EXPECT_EQ(c.num_key_value_heads, 2);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.intermediate_size, 172);
  // The kept groups are the top 2 of each layer's group scores, and their
  // k_proj rows are the teacher's.
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::vector<int>& g = student->selection->kv_groups[l];
    EXPECT_EQ(g, TopKIndices(student->importance->layers[l].kv_groups, 2));
    const float* tk = teacher_->layer(l).k_proj;
    const float* sk = loaded->layer(l).k_proj;
    for (int j = 0; j < 2; ++j) {
      EXPECT_EQ(std::memcmp(sk + j * 8 * 64, tk + g[j] * 8 * 64, 8 * 64 * sizeof(float)), 0);
    }
  }
  const double ppl = Perplexity(*loaded);
  std::printf("stories260K perplexity: teacher %.3f, top 4 of 8 heads %.3f\n",
              Perplexity(*teacher_), ppl);
  EXPECT_TRUE(std::isfinite(ppl));
}

}  // namespace
}  // namespace shrinkray::distill
