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
  EXPECT_EQ(r->ToJson()[1]["bits"], 4);
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
        BadCase{"[{gptq: {targets: {a: 1}}}]", {"field 'targets'", "list of regular expressions"}},
        BadCase{"[{sparsegpt: {sparsity: 0.5, group_size: 32}}]", {"field 'group_size'", "needs 'bits'"}},
        BadCase{"[{gptq: 4}]", {"stage 0 (gptq)", "expected a mapping of fields"}},
        BadCase{"[{gptq: {bits: 4}, rtn: {bits: 4}}]", {"stage 0", "one key"}},
        BadCase{"[gptq]", {"stage 0", "one key"}},
        BadCase{"{gptq: {bits: 4}}", {"expected a list of stages"}},
        BadCase{"[]", {"has no stages"}},
        BadCase{"[{gptq: {bits: 4}", {"invalid YAML", "line"}},
        BadCase{"- gptq:\n    bits: 4\n   group_size: 32\n", {"invalid YAML", "line 3"}}),
    // Stable test names (the default prints the case's raw bytes, pointers included).
    [](const ::testing::TestParamInfo<BadCase>& info) { return "case" + std::to_string(info.index); });

}  // namespace
}  // namespace shrinkray
