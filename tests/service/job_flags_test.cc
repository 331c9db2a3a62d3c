// `shrinkray submit` flags -> JobSpec, and the positional job id of
// watch/get/cancel.
#include "client/cli/job_flags.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "test_data.h"

namespace shrinkray::cli {
namespace {

Flags Parse(const std::vector<std::string>& args) {
  absl::StatusOr<Flags> flags = Flags::Parse(args, kJobSpecValueFlags, kJobSpecBoolFlags, kJobSpecRepeatedFlags);
  EXPECT_TRUE(flags.ok()) << flags.status();
  return *flags;
}

class JobFlagsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::MakeTempDir("job_flags");
    recipe_ = (dir_ / "w4.yaml").string();
    std::ofstream(recipe_) << "[{gptq: {bits: 4, group_size: 32}}]\n";
  }

  // The required flags, then `extra`.
  std::vector<std::string> Args(std::vector<std::string> extra) const {
    std::vector<std::string> args = {"--model", "/shared/models/m", "--recipe", recipe_,
                                     "--calib", "/shared/calib.txt", "--out",   "/shared/out/m-w4"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
  }

  absl::Status Error(std::vector<std::string> extra) const { return JobSpecFromFlags(Parse(Args(extra))).status(); }

  std::filesystem::path dir_;
  std::string recipe_;
};

TEST_F(JobFlagsTest, EveryFlagLandsInTheSpec) {
  absl::StatusOr<v1::JobSpec> spec = JobSpecFromFlags(Parse(Args(
      {"--num-samples", "64", "--seqlen", "256", "--seed", "7", "--format", "gptq", "--overwrite", "--eval",
       "/shared/valid.txt", "--eval-max-chars", "20000", "--eval-seqlen", "128", "--workers", "2", "--device",
       "cuda", "--label", "team=ml", "--label", "run=a=b", "--dry-run"})));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model_path(), "/shared/models/m");
  EXPECT_EQ(spec->recipe_yaml(), "[{gptq: {bits: 4, group_size: 32}}]\n");
  EXPECT_EQ(spec->calibration().path(), "/shared/calib.txt");
  EXPECT_EQ(spec->calibration().num_samples(), 64);
  EXPECT_EQ(spec->calibration().seqlen(), 256);
  EXPECT_EQ(spec->calibration().seed(), 7u);
  EXPECT_EQ(spec->evaluation().path(), "/shared/valid.txt");
  EXPECT_EQ(spec->evaluation().max_chars(), 20000);
  EXPECT_EQ(spec->evaluation().seqlen(), 128);
  EXPECT_EQ(spec->output_path(), "/shared/out/m-w4");
  EXPECT_EQ(spec->output_format(), v1::OUTPUT_FORMAT_GPTQ);
  EXPECT_EQ(spec->num_workers(), 2);
  EXPECT_EQ(spec->device(), v1::DEVICE_PREFERENCE_CUDA);
  ASSERT_EQ(spec->labels().size(), 2u);
  EXPECT_EQ(spec->labels().at("team"), "ml");
  EXPECT_EQ(spec->labels().at("run"), "a=b");  // only the first '=' splits
  EXPECT_TRUE(spec->dry_run());
  EXPECT_TRUE(spec->overwrite());
}

TEST_F(JobFlagsTest, DefaultsAreLeftToTheCoordinator) {
  absl::StatusOr<v1::JobSpec> spec = JobSpecFromFlags(Parse(Args({})));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->calibration().num_samples(), 0);
  EXPECT_EQ(spec->calibration().seqlen(), 0);
  EXPECT_FALSE(spec->has_evaluation());
  EXPECT_EQ(spec->output_format(), v1::OUTPUT_FORMAT_DENSE);
  EXPECT_EQ(spec->num_workers(), 0);
  EXPECT_EQ(spec->device(), v1::DEVICE_PREFERENCE_ANY);
  EXPECT_TRUE(spec->labels().empty());
  EXPECT_FALSE(spec->dry_run());
  EXPECT_FALSE(spec->overwrite());
}

TEST_F(JobFlagsTest, RelativePathsBecomeAbsolute) {
  const std::filesystem::path cwd = std::filesystem::current_path();
  absl::StatusOr<v1::JobSpec> spec = JobSpecFromFlags(Parse(
      {"--model", "models/../models/m", "--recipe", recipe_, "--calib", "./calib.txt", "--out", "out"}));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->model_path(), (cwd / "models/m").string());
  EXPECT_EQ(spec->calibration().path(), (cwd / "calib.txt").string());
  EXPECT_EQ(spec->output_path(), (cwd / "out").string());
}

TEST_F(JobFlagsTest, BadValuesNameTheirFlag) {
  struct Case {
    std::vector<std::string> extra;
    std::string want;
  };
  const std::vector<Case> cases = {
      {{"--format", "awq"}, "--format must be dense, gptq or compressed-tensors, got 'awq'"},
      {{"--device", "tpu"}, "--device must be cpu, cuda or any, got 'tpu'"},
      {{"--label", "x"}, "--label must be key=value, got 'x'"},
      {{"--label", "=v"}, "--label must be key=value, got '=v'"},
      {{"--label", "a=1", "--label", "a=2"}, "--label key 'a' given twice"},
      {{"--workers", "0"}, "--workers must be in 1..1024, got 0"},
      {{"--num-samples", "-5"}, "--num-samples must be in 1..1000000, got -5"},
      {{"--seed", "-1"}, "--seed must be >= 0, got -1"},
      {{"--eval-max-chars", "100"}, "--eval-max-chars needs --eval"},
  };
  for (const Case& c : cases) {
    const absl::Status status = Error(c.extra);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << c.want;
    EXPECT_EQ(status.message(), c.want);
  }
}

TEST_F(JobFlagsTest, MissingFlagsAndRecipe) {
  absl::Status missing = JobSpecFromFlags(Parse({"--model", "/m", "--recipe", recipe_, "--out", "/o"})).status();
  EXPECT_EQ(missing, absl::InvalidArgumentError("missing required flag --calib"));
  absl::Status no_recipe = JobSpecFromFlags(Parse({"--model", "/m", "--recipe", (dir_ / "none.yaml").string(),
                                                   "--calib", "/c", "--out", "/o"}))
                               .status();
  EXPECT_EQ(no_recipe.code(), absl::StatusCode::kNotFound);
  EXPECT_NE(no_recipe.message().find("--recipe: "), absl::string_view::npos) << no_recipe;
  EXPECT_NE(no_recipe.message().find("none.yaml"), absl::string_view::npos) << no_recipe;
}

TEST(JobIdTest, PositionalOrJobFlag) {
  PositionalArgs split = SplitPositional({"abc", "--json"});
  EXPECT_EQ(split.positional, "abc");
  EXPECT_EQ(split.rest, std::vector<std::string>{"--json"});
  absl::StatusOr<Flags> flags = Flags::Parse(split.rest, {"job"}, {"json"});
  ASSERT_TRUE(flags.ok());
  EXPECT_EQ(*JobIdFrom(split, *flags), "abc");

  split = SplitPositional({"--job", "xyz"});
  EXPECT_EQ(split.positional, "");
  flags = Flags::Parse(split.rest, {"job"});
  ASSERT_TRUE(flags.ok());
  EXPECT_EQ(*JobIdFrom(split, *flags), "xyz");

  split = SplitPositional({"abc", "--job", "xyz"});
  flags = Flags::Parse(split.rest, {"job"});
  EXPECT_EQ(JobIdFrom(split, *flags).status().code(), absl::StatusCode::kInvalidArgument);

  split = SplitPositional({});
  flags = Flags::Parse(split.rest, {"job"});
  EXPECT_EQ(JobIdFrom(split, *flags).status(), absl::InvalidArgumentError("missing job id (first argument or --job)"));
}

}  // namespace
}  // namespace shrinkray::cli
