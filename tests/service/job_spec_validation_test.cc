// JobSpec validation: defaults, and one test per error with its exact code and
// a message that names the field.
#include "server/job_spec_validation.h"

#include <filesystem>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class JobSpecValidationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = testing::MakeTempDir("specval");
    ASSERT_FALSE(base_.empty());
    root_ = base_ / "root";
    fs::create_directories(root_);
    fs::create_directories(base_ / "outside");
    auto policy = PathPolicy::Create({root_});
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *policy;
  }

  // A minimal valid spec. The paths need not exist: validation does not look.
  v1::JobSpec Valid() const {
    v1::JobSpec spec;
    spec.set_model_path((root_ / "models" / "m").string());
    spec.set_recipe_yaml("[{gptq: {bits: 4, group_size: 128}}]");
    spec.mutable_calibration()->set_path((root_ / "calib.txt").string());
    spec.set_output_path((root_ / "out" / "m-w4").string());
    return spec;
  }

  // Expects `spec` to fail with `code` and a message containing `field`.
  void ExpectError(const v1::JobSpec& spec, absl::StatusCode code, const std::string& field) {
    auto result = ValidateJobSpec(spec, policy_, limits_);
    ASSERT_FALSE(result.ok()) << "expected an error naming " << field;
    EXPECT_EQ(result.status().code(), code) << result.status();
    EXPECT_THAT(result.status().message(), HasSubstr(field));
  }

  fs::path base_;
  fs::path root_;
  PathPolicy policy_;
  JobLimits limits_;
};

TEST_F(JobSpecValidationTest, FillsDefaults) {
  auto result = ValidateJobSpec(Valid(), policy_, limits_);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->calibration().num_samples(), 128);
  EXPECT_EQ(result->calibration().seqlen(), 2048);
  EXPECT_EQ(result->num_workers(), 1);
  EXPECT_EQ(result->output_format(), v1::OUTPUT_FORMAT_DENSE);
  EXPECT_EQ(result->device(), v1::DEVICE_PREFERENCE_ANY);
  // No evaluation asked for: nothing filled in there.
  EXPECT_TRUE(result->evaluation().path().empty());
  EXPECT_EQ(result->evaluation().seqlen(), 0);
}

TEST_F(JobSpecValidationTest, FillsEvaluationDefaultsAndKeepsGivenValues) {
  v1::JobSpec spec = Valid();
  spec.mutable_evaluation()->set_path((root_ / "valid.txt").string());
  spec.mutable_calibration()->set_num_samples(7);
  spec.mutable_calibration()->set_seqlen(256);
  spec.mutable_calibration()->set_seed(99);
  spec.set_num_workers(8);
  spec.set_output_format(v1::OUTPUT_FORMAT_GPTQ);
  spec.set_device(v1::DEVICE_PREFERENCE_CUDA);
  (*spec.mutable_labels())["team.ml-infra_1"] = "x";
  auto result = ValidateJobSpec(spec, policy_, limits_);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->evaluation().seqlen(), 256);
  EXPECT_EQ(result->evaluation().max_chars(), 0);
  EXPECT_EQ(result->calibration().num_samples(), 7);
  EXPECT_EQ(result->calibration().seqlen(), 256);
  EXPECT_EQ(result->calibration().seed(), 99u);
  EXPECT_EQ(result->num_workers(), 8);
  EXPECT_EQ(result->output_format(), v1::OUTPUT_FORMAT_GPTQ);
  EXPECT_EQ(result->device(), v1::DEVICE_PREFERENCE_CUDA);
}

TEST_F(JobSpecValidationTest, ModelPathRequired) {
  v1::JobSpec spec = Valid();
  spec.clear_model_path();
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.model_path");
}

TEST_F(JobSpecValidationTest, ModelPathOutsideRoots) {
  v1::JobSpec spec = Valid();
  spec.set_model_path((base_ / "outside" / "m").string());
  ExpectError(spec, absl::StatusCode::kPermissionDenied, "spec.model_path");
}

TEST_F(JobSpecValidationTest, ModelPathRelative) {
  v1::JobSpec spec = Valid();
  spec.set_model_path("models/m");
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.model_path");
}

TEST_F(JobSpecValidationTest, RecipeRequired) {
  v1::JobSpec spec = Valid();
  spec.clear_recipe_yaml();
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.recipe_yaml");
}

TEST_F(JobSpecValidationTest, RecipeErrorPassedThroughWithFieldName) {
  v1::JobSpec spec = Valid();
  spec.set_recipe_yaml("[{gptq: {bits: 9}}]");
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.recipe_yaml");
  auto result = ValidateJobSpec(spec, policy_, limits_);
  EXPECT_THAT(result.status().message(), HasSubstr("bits"));
  spec.set_recipe_yaml("[{nosuchmethod: {}}");
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.recipe_yaml");
}

TEST_F(JobSpecValidationTest, RecipeTooLarge) {
  v1::JobSpec spec = Valid();
  spec.set_recipe_yaml(std::string(kMaxRecipeBytes + 1, ' '));
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.recipe_yaml");
}

TEST_F(JobSpecValidationTest, CalibrationPathRequired) {
  v1::JobSpec spec = Valid();
  spec.mutable_calibration()->clear_path();
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.calibration.path");
}

TEST_F(JobSpecValidationTest, CalibrationPathOutsideRoots) {
  v1::JobSpec spec = Valid();
  spec.mutable_calibration()->set_path("/etc/passwd");
  ExpectError(spec, absl::StatusCode::kPermissionDenied, "spec.calibration.path");
}

TEST_F(JobSpecValidationTest, CalibrationNumSamplesRange) {
  v1::JobSpec spec = Valid();
  spec.mutable_calibration()->set_num_samples(-1);
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.calibration.num_samples must be in 1..1000000, got -1");
  spec.mutable_calibration()->set_num_samples(1000001);
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.calibration.num_samples");
  spec.mutable_calibration()->set_num_samples(1000000);
  EXPECT_TRUE(ValidateJobSpec(spec, policy_, limits_).ok());
}

TEST_F(JobSpecValidationTest, CalibrationSeqlenRange) {
  v1::JobSpec spec = Valid();
  spec.mutable_calibration()->set_seqlen(-5);
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.calibration.seqlen");
  spec.mutable_calibration()->set_seqlen(2000000);
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.calibration.seqlen");
}

TEST_F(JobSpecValidationTest, EvaluationPathOutsideRoots) {
  v1::JobSpec spec = Valid();
  spec.mutable_evaluation()->set_path((base_ / "outside" / "v.txt").string());
  ExpectError(spec, absl::StatusCode::kPermissionDenied, "spec.evaluation.path");
}

TEST_F(JobSpecValidationTest, EvaluationSeqlenRange) {
  v1::JobSpec spec = Valid();
  spec.mutable_evaluation()->set_path((root_ / "v.txt").string());
  spec.mutable_evaluation()->set_seqlen(1);
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.evaluation.seqlen must be in 2..1000000, got 1");
}

TEST_F(JobSpecValidationTest, EvaluationMaxCharsNegative) {
  v1::JobSpec spec = Valid();
  spec.mutable_evaluation()->set_path((root_ / "v.txt").string());
  spec.mutable_evaluation()->set_max_chars(-1);
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.evaluation.max_chars");
}

TEST_F(JobSpecValidationTest, OutputPathRequired) {
  v1::JobSpec spec = Valid();
  spec.clear_output_path();
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.output_path");
}

TEST_F(JobSpecValidationTest, OutputPathOutsideRoots) {
  v1::JobSpec spec = Valid();
  spec.set_output_path((base_ / "outside" / "o").string());
  ExpectError(spec, absl::StatusCode::kPermissionDenied, "spec.output_path");
}

TEST_F(JobSpecValidationTest, OutputPathDotDot) {
  v1::JobSpec spec = Valid();
  spec.set_output_path((root_ / "out" / ".." / "out2").string());
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.output_path");
}

TEST_F(JobSpecValidationTest, OutputPathEqualsModelPath) {
  v1::JobSpec spec = Valid();
  spec.set_output_path(spec.model_path() + "/");
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.output_path");
}

TEST_F(JobSpecValidationTest, OutputPathInsideModelPath) {
  v1::JobSpec spec = Valid();
  spec.set_output_path(spec.model_path() + "/compressed");
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.output_path");
}

TEST_F(JobSpecValidationTest, OutputPathContainingModelPath) {
  v1::JobSpec spec = Valid();
  spec.set_output_path((root_ / "models").string());
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.output_path");
}

TEST_F(JobSpecValidationTest, OutputPathIsModelThroughSymlink) {
  fs::create_directories(root_ / "models" / "m");
  fs::create_directory_symlink(root_ / "models" / "m", root_ / "alias");
  v1::JobSpec spec = Valid();
  spec.set_output_path((root_ / "alias").string());
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.output_path");
}

TEST_F(JobSpecValidationTest, OutputFormatUnknown) {
  v1::JobSpec spec = Valid();
  spec.set_output_format(static_cast<v1::OutputFormat>(42));
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.output_format");
}

TEST_F(JobSpecValidationTest, NumWorkersNegative) {
  v1::JobSpec spec = Valid();
  spec.set_num_workers(-2);
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.num_workers");
}

TEST_F(JobSpecValidationTest, NumWorkersAboveLimit) {
  v1::JobSpec spec = Valid();
  spec.set_num_workers(9);
  ExpectError(spec, absl::StatusCode::kResourceExhausted, "spec.num_workers");
  limits_.max_workers_per_job = 16;
  EXPECT_TRUE(ValidateJobSpec(spec, policy_, limits_).ok());
}

TEST_F(JobSpecValidationTest, DeviceUnknown) {
  v1::JobSpec spec = Valid();
  spec.set_device(static_cast<v1::DevicePreference>(7));
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.device");
}

TEST_F(JobSpecValidationTest, LabelKeyBad) {
  for (const std::string& key : std::vector<std::string>{"", "Upper", "has space", "slash/no", std::string(64, 'a')}) {
    v1::JobSpec spec = Valid();
    (*spec.mutable_labels())[key] = "v";
    ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.labels");
  }
  v1::JobSpec spec = Valid();
  (*spec.mutable_labels())[std::string(63, 'a')] = "v";
  EXPECT_TRUE(ValidateJobSpec(spec, policy_, limits_).ok());
}

TEST_F(JobSpecValidationTest, LabelValueTooLong) {
  v1::JobSpec spec = Valid();
  (*spec.mutable_labels())["k"] = std::string(257, 'x');
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.labels");
  (*spec.mutable_labels())["k"] = std::string(256, 'x');
  EXPECT_TRUE(ValidateJobSpec(spec, policy_, limits_).ok());
}

TEST_F(JobSpecValidationTest, TooManyLabels) {
  v1::JobSpec spec = Valid();
  for (int i = 0; i < 33; ++i) (*spec.mutable_labels())["k" + std::to_string(i)] = "v";
  ExpectError(spec, absl::StatusCode::kInvalidArgument, "spec.labels");
  spec.mutable_labels()->erase("k0");
  EXPECT_TRUE(ValidateJobSpec(spec, policy_, limits_).ok());
}

}  // namespace
}  // namespace shrinkray
