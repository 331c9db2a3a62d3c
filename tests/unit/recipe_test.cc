// Recipe parsing: valid recipes and every bad input, with messages that name
// the stage and field (and the YAML position).
#include "core/pipeline/recipe.h"

#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace shrinkray {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(RecipeTest, ParsesTheIssueExample) {
  auto r = ParseRecipe(
      "[{sparsegpt: {sparsity: 0.5}}, {gptq: {bits: 4, group_size: 128, act_order: true}}]", "r.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->stages.size(), 2u);
  const RecipeStage& s = r->stages[0];
  EXPECT_EQ(s.method, StageMethod::kSparseGpt);
  EXPECT_DOUBLE_EQ(s.sparsity, 0.5);
  EXPECT_EQ(s.bits, 0);
  EXPECT_TRUE(s.prunes());
  EXPECT_FALSE(s.quantizes());
  const RecipeStage& g = r->stages[1];
  EXPECT_EQ(g.index, 1);
  EXPECT_EQ(g.method, StageMethod::kGptq);
  EXPECT_EQ(g.bits, 4);
  EXPECT_EQ(g.group_size, 128);
  EXPECT_TRUE(g.act_order);
  EXPECT_TRUE(g.sym);
  EXPECT_DOUBLE_EQ(g.damp, 0.01);
  EXPECT_EQ(g.block_size, 128);
  EXPECT_TRUE(r->true_sequential());
  EXPECT_EQ(r->hessian_dtype(), HessianPrecision::kFloat32);
  EXPECT_EQ(r->forward_dtype(), ForwardDtype::kFloat32);
  EXPECT_EQ(r->ToJson()[1]["bits"], 4);
  EXPECT_FALSE(r->ToJson()[1].contains("forward_dtype"));
}

TEST(RecipeTest, BlockStyleAllFieldsAndDefaults) {
  auto r = ParseRecipe(R"(
stages:
  - wanda:
      pattern: "2:4"
      targets: ['mlp\.']
      ignore: ['layers\.0\.']
  - gptq:
      bits: 3
      group_size: 32
      sym: false
      static_groups: yes
      damp: 0.05
      damp_auto_increment: 0.0025
      block_size: 64
      hessian_dtype: float64
  - rtn: {targets: [self_attn]}
)");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->stages.size(), 3u);
  EXPECT_EQ(r->stages[0].prune_n, 2);
  EXPECT_EQ(r->stages[0].prune_m, 4);
  EXPECT_TRUE(r->stages[0].Applies("model.layers.3.mlp.down_proj"));
  EXPECT_FALSE(r->stages[0].Applies("model.layers.0.mlp.down_proj"));
  EXPECT_FALSE(r->stages[0].Applies("model.layers.3.self_attn.q_proj"));
  const RecipeStage& g = r->stages[1];
  EXPECT_EQ(g.bits, 3);
  EXPECT_FALSE(g.sym);
  EXPECT_TRUE(g.static_groups);
  EXPECT_DOUBLE_EQ(g.damp, 0.05);
  EXPECT_DOUBLE_EQ(g.damp_auto_increment, 0.0025);
  EXPECT_EQ(g.block_size, 64);
  EXPECT_EQ(r->hessian_dtype(), HessianPrecision::kFloat64);
  EXPECT_EQ(r->stages[2].bits, 4);  // rtn default
  EXPECT_EQ(r->stages[2].group_size, -1);
}

TEST(RecipeTest, DefaultTargetsAreDecoderLinearsOnly) {
  auto r = ParseRecipe("- rtn: {bits: 8}");
  ASSERT_TRUE(r.ok()) << r.status();
  const RecipeStage& s = r->stages[0];
  for (const char* m : {"model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
                        "model.layers.0.self_attn.v_proj", "model.layers.0.self_attn.o_proj",
                        "model.layers.11.mlp.gate_proj", "model.layers.11.mlp.up_proj",
                        "model.layers.11.mlp.down_proj"}) {
    EXPECT_TRUE(s.Applies(m)) << m;
  }
  for (const char* m : {"lm_head", "model.embed_tokens", "model.norm", "model.layers.0.input_layernorm"}) {
    EXPECT_FALSE(s.Applies(m)) << m;
  }
  // Even an explicit catch-all target never reaches lm_head or embeddings.
  auto all = ParseRecipe("- rtn: {targets: ['.*']}");
  ASSERT_TRUE(all.ok());
  EXPECT_FALSE(all->stages[0].Applies("lm_head"));
}

TEST(RecipeTest, TrueSequentialMustAgree) {
  auto ok = ParseRecipe("[{wanda: {sparsity: 0.5, true_sequential: false}}, {rtn: {true_sequential: false}}]");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_FALSE(ok->true_sequential());
  auto bad = ParseRecipe("[{wanda: {sparsity: 0.5, true_sequential: false}}, {rtn: {bits: 4}}]", "x.yaml");
  EXPECT_THAT(bad.status().message(),
              AllOf(HasSubstr("stage 1 (rtn)"), HasSubstr("'true_sequential'"), HasSubstr("stage 0 (wanda)")));
}

TEST(RecipeTest, ForwardDtypeIsOneValueForAllStages) {
  auto ok = ParseRecipe("[{sparsegpt: {sparsity: 0.5, forward_dtype: bf16}}, {gptq: {bits: 4, forward_dtype: bfloat16}}]");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->forward_dtype(), ForwardDtype::kBfloat16);
  EXPECT_EQ(ok->ToJson()[1]["forward_dtype"], "bfloat16");
  auto fp32 = ParseRecipe("[{wanda: {sparsity: 0.5, forward_dtype: fp32}}]");
  ASSERT_TRUE(fp32.ok()) << fp32.status();
  EXPECT_EQ(fp32->forward_dtype(), ForwardDtype::kFloat32);

  auto mixed = ParseRecipe("[{wanda: {sparsity: 0.5, forward_dtype: bf16}}, {rtn: {bits: 4}}]", "x.yaml");
  EXPECT_EQ(mixed.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(mixed.status().message(),
              AllOf(HasSubstr("stage 1 (rtn)"), HasSubstr("'forward_dtype' is float32"), HasSubstr("stage 0 (wanda)"),
                    HasSubstr("bfloat16")));
  auto bad = ParseRecipe("[{gptq: {bits: 4, forward_dtype: fp16}}]", "x.yaml");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(),
              AllOf(HasSubstr("forward_dtype"), HasSubstr("expected float32 or bfloat16, got 'fp16'")));
}

TEST(RecipeTest, InverseFactorIsPerSolverStageAndInTheJsonOnlyWhenFlipped) {
  auto r = ParseRecipe("[{sparsegpt: {sparsity: 0.5, inverse_factor: flipped}}, {gptq: {bits: 4, inverse_factor: chain}}]");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->stages[0].inverse_factor, InverseFactorMethod::kFlippedCholesky);
  EXPECT_EQ(r->stages[1].inverse_factor, InverseFactorMethod::kCholeskyInverseChain);
  EXPECT_EQ(r->ToJson()[0]["inverse_factor"], "flipped");
  // The default leaves the JSON (and so the layer checkpoints' fingerprints)
  // as it was before the field existed.
  EXPECT_FALSE(r->ToJson()[1].contains("inverse_factor"));
  auto d = ParseRecipe("[{gptq: {bits: 4}}]");
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->stages[0].inverse_factor, InverseFactorMethod::kCholeskyInverseChain);
}

TEST(RecipeTest, DistillStageLeadsAndTheRestKeepTheirIndex) {
  auto r = ParseRecipe(R"(
- distill:
    student: {keep_layers: [0, 2, 4]}
    data: /data/train.txt
    steps: 300
    batch: 16
    micro_batch: 4
    seqlen: 128
    alpha: 1
    temperature: 2
    loss: jsd
    beta: 0.3
    top_k: 32
    lr: 3e-3
    min_lr: 3e-4
    warmup: 20
    weight_decay: 0.01
    clip: 0.5
    checkpoint_every: 25
    seed: 7
- sparsegpt: {sparsity: 0.3}
- gptq: {bits: 4, group_size: 32}
)",
                       "chain.yaml");
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_TRUE(r->distill.has_value());
  const DistillStage& d = *r->distill;
  EXPECT_EQ(d.student, DistillStudentKind::kDepth);
  EXPECT_EQ(d.keep_layers, (std::vector<int>{0, 2, 4}));
  EXPECT_EQ(d.data, "/data/train.txt");
  EXPECT_EQ(d.steps, 300);
  EXPECT_EQ(d.batch, 16);
  EXPECT_EQ(d.micro_batch, 4);
  EXPECT_EQ(d.seqlen, 128);
  EXPECT_DOUBLE_EQ(d.alpha, 1.0);
  EXPECT_DOUBLE_EQ(d.temperature, 2.0);
  EXPECT_EQ(d.loss, "jsd");
  EXPECT_DOUBLE_EQ(d.beta, 0.3);
  EXPECT_EQ(d.top_k, 32);
  EXPECT_DOUBLE_EQ(d.lr, 3e-3);
  EXPECT_DOUBLE_EQ(d.min_lr.value(), 3e-4);
  EXPECT_EQ(d.warmup, 20);
  EXPECT_DOUBLE_EQ(d.weight_decay, 0.01);
  EXPECT_DOUBLE_EQ(d.clip, 0.5);
  EXPECT_EQ(d.checkpoint_every, 25);
  EXPECT_EQ(d.seed, 7u);
  // The later stages are the compression stages, numbered as in the file.
  ASSERT_EQ(r->stages.size(), 2u);
  EXPECT_EQ(r->stages[0].method, StageMethod::kSparseGpt);
  EXPECT_EQ(r->stages[0].Label(), "stage 1 (sparsegpt)");
  EXPECT_EQ(r->stages[1].Label(), "stage 2 (gptq)");
  const nlohmann::json j = r->ToJson();
  ASSERT_EQ(j.size(), 3u);
  EXPECT_EQ(j[0]["method"], "distill");
  EXPECT_EQ(j[0]["student"]["keep_layers"], nlohmann::json({0, 2, 4}));
  EXPECT_EQ(j[1]["method"], "sparsegpt");
}

TEST(RecipeTest, DistillTeacherSamplesFields) {
  auto r = ParseRecipe(
      "[{distill: {student: {keep_layers: [0, 2]}, teacher_samples: 64, sample_temperature: 0.8, "
      "sample_top_k: 40, sample_top_p: 0.95, sample_seed: 7}}]");
  ASSERT_TRUE(r.ok()) << r.status();
  const DistillStage& d = *r->distill;
  EXPECT_EQ(d.teacher_samples, 64);
  EXPECT_DOUBLE_EQ(d.sample_temperature, 0.8);
  EXPECT_EQ(d.sample_top_k, 40);
  EXPECT_DOUBLE_EQ(d.sample_top_p, 0.95);
  EXPECT_EQ(d.sample_seed.value(), 7u);
  const auto j = d.ToJson();
  EXPECT_EQ(j["teacher_samples"], 64);
  EXPECT_EQ(j["sample_seed"], 7);
  auto plain = ParseRecipe("[{distill: {student: {keep_layers: [0]}}}]");
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->distill->teacher_samples, 0);
  EXPECT_FALSE(plain->distill->ToJson().contains("teacher_samples"));
}

TEST(RecipeTest, DistillDefaultsAndStudentKinds) {
  auto depth = ParseRecipe("[{distill: {student: {keep_layers: [1]}}}]");
  ASSERT_TRUE(depth.ok()) << depth.status();
  EXPECT_TRUE(depth->stages.empty());  // distill alone: the output is the student
  const DistillStage& d = *depth->distill;
  EXPECT_EQ(d.steps, 100);
  EXPECT_EQ(d.batch, 8);
  EXPECT_EQ(d.micro_batch, 0);
  EXPECT_EQ(d.seqlen, 256);
  EXPECT_DOUBLE_EQ(d.alpha, 0.5);
  EXPECT_DOUBLE_EQ(d.temperature, 1.0);
  EXPECT_EQ(d.loss, "kl");
  EXPECT_DOUBLE_EQ(d.lr, 1e-3);
  EXPECT_FALSE(d.min_lr.has_value());
  EXPECT_EQ(d.ToJson()["min_lr"], 1e-4);
  EXPECT_TRUE(d.data.empty());

  auto width = ParseRecipe("[{distill: {student: {mlp_fraction: 0.5, heads: 4, importance_windows: 8}}}, {rtn: {}}]");
  ASSERT_TRUE(width.ok()) << width.status();
  EXPECT_EQ(width->distill->student, DistillStudentKind::kWidth);
  EXPECT_DOUBLE_EQ(width->distill->mlp_fraction.value(), 0.5);
  EXPECT_EQ(width->distill->num_attention_heads.value(), 4);
  EXPECT_EQ(width->distill->importance_windows, 8);
  EXPECT_FALSE(width->distill->intermediate_size.has_value());

  auto config = ParseRecipe("[{distill: {student: {config: /m/student.json}}}]");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->distill->student, DistillStudentKind::kConfig);
  EXPECT_EQ(config->distill->student_config, "/m/student.json");
}

struct BadCase {
  const char* yaml;
  std::vector<const char*> fragments;
};

class RecipeErrorTest : public ::testing::TestWithParam<BadCase> {};

TEST_P(RecipeErrorTest, IsInvalidArgumentNamingTheProblem) {
  auto r = ParseRecipe(GetParam().yaml, "bad.yaml");
  ASSERT_FALSE(r.ok()) << GetParam().yaml;
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("recipe bad.yaml: "));
  for (const char* f : GetParam().fragments) EXPECT_THAT(r.status().message(), HasSubstr(f));
}

INSTANTIATE_TEST_SUITE_P(
    BadInputs, RecipeErrorTest,
    ::testing::Values(
        BadCase{"[{awq: {bits: 4}}]", {"stage 0 (awq)", "unknown stage 'awq'", "line 1, column 3"}},
        BadCase{"[{gptq: {bitz: 4}}]", {"stage 0 (gptq)", "unknown field 'bitz'"}},
        BadCase{"[{rtn: {bits: 4}}, {wanda: {sparsity: 0.5, act_order: true}}]",
                {"stage 1 (wanda)", "unknown field 'act_order'"}},
        BadCase{"[{gptq: {bits: 9}}]", {"stage 0 (gptq)", "field 'bits'", "2..8, got 9", "line 1, column 16"}},
        BadCase{"[{gptq: {bits: 1}}]", {"field 'bits'", "got 1"}},
        BadCase{"[{sparsegpt: {sparsity: 0.5, bits: 16}}]", {"stage 0 (sparsegpt)", "field 'bits'"}},
        BadCase{"[{gptq: {group_size: 0}}]", {"field 'group_size'", "got 0"}},
        BadCase{"[{rtn: {group_size: -2}}]", {"stage 0 (rtn)", "field 'group_size'", "got -2"}},
        BadCase{"[{wanda: {sparsity: 1.0}}]", {"field 'sparsity'", "[0, 1), got 1"}},
        BadCase{"[{magnitude: {sparsity: -0.1}}]", {"stage 0 (magnitude)", "field 'sparsity'"}},
        BadCase{"[{sparsegpt: {pattern: \"4:4\"}}]", {"field 'pattern'", "N >= M"}},
        BadCase{"[{wanda: {pattern: \"4:2\"}}]", {"field 'pattern'", "N >= M"}},
        BadCase{"[{wanda: {pattern: \"2-4\"}}]", {"field 'pattern'", "\"N:M\""}},
        BadCase{"[{wanda: {pattern: \"0:4\"}}]", {"field 'pattern'", "positive"}},
        BadCase{"[{sparsegpt: {pattern: \"2:3\"}}]", {"field 'pattern'", "must divide block_size 128"}},
        BadCase{"[{wanda: {}}]", {"stage 0 (wanda)", "needs 'sparsity'"}},
        BadCase{"[{wanda: {sparsity: 0.5, pattern: \"2:4\"}}]", {"not both"}},
        BadCase{"[{gptq: {targets: ['mlp(']}}]", {"field 'targets'", "bad regular expression 'mlp('"}},
        BadCase{"[{gptq: {ignore: ['[a-']}}]", {"field 'ignore'", "bad regular expression"}},
        BadCase{"[{gptq: {bits: four}}]", {"field 'bits'", "expected an integer, got 'four'"}},
        BadCase{"[{gptq: {bits: 4.5}}]", {"field 'bits'", "expected an integer"}},
        BadCase{"[{gptq: {bits: \"4\"}}]", {"field 'bits'", "expected an integer"}},
        BadCase{"[{gptq: {bits: [4]}}]", {"field 'bits'", "got a list"}},
        BadCase{"[{gptq: {act_order: maybe}}]", {"field 'act_order'", "expected true or false"}},
        BadCase{"[{gptq: {damp: high}}]", {"field 'damp'", "expected a number"}},
        BadCase{"[{gptq: {damp: 1.5}}]", {"field 'damp'", "[0, 1)"}},
        BadCase{"[{gptq: {block_size: 0}}]", {"field 'block_size'", "positive"}},
        BadCase{"[{gptq: {hessian_dtype: f16}}]", {"field 'hessian_dtype'"}},
        BadCase{"[{gptq: {inverse_factor: lu}}]", {"field 'inverse_factor'", "expected chain or flipped, got 'lu'"}},
        BadCase{"[{wanda: {sparsity: 0.5, inverse_factor: flipped}}]", {"inverse_factor"}},
        BadCase{"[{gptq: {targets: {a: 1}}}]", {"field 'targets'", "list of regular expressions"}},
        BadCase{"[{sparsegpt: {sparsity: 0.5, group_size: 32}}]", {"field 'group_size'", "needs 'bits'"}},
        BadCase{"[{gptq: 4}]", {"stage 0 (gptq)", "expected a mapping of fields"}},
        BadCase{"[{gptq: {bits: 4}, rtn: {bits: 4}}]", {"stage 0", "one key"}},
        BadCase{"[gptq]", {"stage 0", "one key"}},
        BadCase{"{gptq: {bits: 4}}", {"expected a list of stages"}},
        BadCase{"[]", {"has no stages"}},
        BadCase{"[{gptq: {bits: 4}", {"invalid YAML", "line"}},
        BadCase{"- gptq:\n    bits: 4\n   group_size: 32\n", {"invalid YAML", "line 3"}},
        // distill
        BadCase{"[{gptq: {}}, {distill: {student: {keep_layers: [0]}}}]",
                {"stage 1 (distill)", "must come first"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}}}, {distill: {student: {keep_layers: [0]}}}]",
                {"stage 1 (distill)", "must come first"}},
        BadCase{"[{distill: {steps: 10}}]", {"stage 0 (distill)", "needs 'student'"}},
        BadCase{"[{distill: {}}]", {"stage 0 (distill)", "needs 'student'"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, alpha: 1.5}}]",
                {"stage 0 (distill)", "field 'alpha'", "[0, 1], got 1.5", "line 1"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, alpha: -0.1}}]", {"field 'alpha'"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, temperature: 0}}]",
                {"field 'temperature'", "positive, got 0"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, loss: mse}}]",
                {"field 'loss'", "kl, reverse_kl or jsd, got 'mse'"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, beta: 0.5}}]", {"field 'beta'", "jsd only"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, loss: jsd, beta: 1}}]", {"field 'beta'", "(0, 1)"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, steps: 0}}]", {"field 'steps'", "positive"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, batch: 4, micro_batch: 8}}]",
                {"field 'micro_batch'", "<= batch"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, seqlen: 1}}]", {"field 'seqlen'", ">= 2"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, lr: 0}}]", {"field 'lr'", "positive"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, lr: 1e-3, min_lr: 1e-2}}]", {"field 'min_lr'", "<= lr"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, steps: 10, warmup: 10}}]",
                {"field 'warmup'", "less than steps"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, top_k: -1}}]", {"field 'top_k'", ">= 0"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, seed: -3}}]", {"field 'seed'"}},
        // sequence-level KD
        BadCase{"[{distill: {student: {keep_layers: [0]}, teacher_samples: 0}}]",
                {"stage 0 (distill)", "field 'teacher_samples'", "positive, got 0"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, teacher_samples: -5}}]",
                {"field 'teacher_samples'", "positive, got -5"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, teacher_samples: 8, sample_temperature: 0}}]",
                {"stage 0 (distill)", "field 'sample_temperature'", "positive, got 0"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, teacher_samples: 8, sample_temperature: -1}}]",
                {"field 'sample_temperature'", "positive"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, teacher_samples: 8, sample_top_p: 1.5}}]",
                {"field 'sample_top_p'", "(0, 1]"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, teacher_samples: 8, sample_top_k: -1}}]",
                {"field 'sample_top_k'", ">= 0"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, sample_temperature: 0.8}}]",
                {"field 'sample_temperature'", "needs teacher_samples"}},
        BadCase{"[{distill: {student: {keep_layers: [0]}, epochs: 3}}]", {"unknown field 'epochs'", "allowed:"}},
        BadCase{"[{distill: {student: {keep_layers: [2, 1]}}}]",
                {"field 'student.keep_layers'", "strictly increasing"}},
        BadCase{"[{distill: {student: {keep_layers: []}}}]", {"field 'student.keep_layers'", "at least one"}},
        BadCase{"[{distill: {student: {keep_layers: [-1]}}}]", {"field 'student.keep_layers'", ">= 0"}},
        BadCase{"[{distill: {student: {mlp_fraction: 1.5}}}]",
                {"field 'student.mlp_fraction'", "(0, 1]", "cannot be wider"}},
        BadCase{"[{distill: {student: {keep_layers: [0], heads: 2}}}]", {"field 'student'", "exclusive"}},
        BadCase{"[{distill: {student: {}}}]", {"field 'student'", "needs one of"}},
        BadCase{"[{distill: {student: {depth: 3}}}]", {"field 'student'", "unknown field 'depth'"}},
        BadCase{"[{distill: {student: 3}}]", {"field 'student'", "expected a mapping"}},
        BadCase{"[{distill: {student: {keep_layers: [0], importance_windows: 4}}}]",
                {"field 'student.importance_windows'", "width pruning"}},
        BadCase{"[{distill: {student: {mlp_fraction: 0.5, mlp_width: 10}}}]", {"not both"}}),
    // Stable test names (the default prints the case's raw bytes, pointers included).
    [](const ::testing::TestParamInfo<BadCase>& info) { return "case" + std::to_string(info.index); });

}  // namespace
}  // namespace shrinkray
