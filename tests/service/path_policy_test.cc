// Allowed roots: what is inside, what escapes (.., symlinks, prefix tricks).
#include "server/path_policy.h"

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class PathPolicyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = testing::MakeTempDir("pathpolicy");
    ASSERT_FALSE(base_.empty());
    root_ = base_ / "abc";
    fs::create_directories(root_ / "models" / "m1");
    fs::create_directories(base_ / "abcd");
    fs::create_directories(base_ / "outside");
    auto policy = PathPolicy::Create({root_});
    ASSERT_TRUE(policy.ok()) << policy.status();
    policy_ = *policy;
  }

  fs::path base_;
  fs::path root_;
  PathPolicy policy_;
};

TEST_F(PathPolicyTest, InsideIsAllowed) {
  EXPECT_TRUE(policy_.Check("spec.model_path", (root_ / "models" / "m1").string()).ok());
  EXPECT_TRUE(policy_.Check("spec.model_path", root_.string()).ok());
  EXPECT_TRUE(policy_.Check("spec.model_path", (root_ / "models" / "m1").string() + "/").ok());
  ASSERT_EQ(policy_.roots().size(), 1u);
  EXPECT_EQ(policy_.roots()[0], fs::canonical(root_));
}

TEST_F(PathPolicyTest, NestedOutputThatDoesNotExistYetIsAllowed) {
  absl::Status s = policy_.Check("spec.output_path", (root_ / "out" / "new" / "deeper").string());
  EXPECT_TRUE(s.ok()) << s;
}

TEST_F(PathPolicyTest, DotDotIsRejectedOutright) {
  // Even one that would resolve back inside the root.
  absl::Status s = policy_.Check("spec.model_path", (root_ / "models" / ".." / "models").string());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("spec.model_path"));
  EXPECT_THAT(s.message(), HasSubstr(".."));
  s = policy_.Check("spec.output_path", (root_ / ".." / "outside").string());
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST_F(PathPolicyTest, RelativeAndEmptyAreInvalid) {
  absl::Status s = policy_.Check("spec.calibration.path", "data/calib.txt");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("spec.calibration.path"));
  EXPECT_THAT(s.message(), HasSubstr("absolute"));
  s = policy_.Check("spec.calibration.path", "");
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("spec.calibration.path"));
  std::string with_nul = root_.string() + "/a";
  with_nul.push_back('\0');
  with_nul += "b";
  s = policy_.Check("spec.calibration.path", with_nul);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST_F(PathPolicyTest, OutsideIsPermissionDeniedNamingFieldPathAndRoots) {
  const std::string outside = (base_ / "outside").string();
  absl::Status s = policy_.Check("spec.model_path", outside);
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("spec.model_path"));
  EXPECT_THAT(s.message(), HasSubstr(outside));
  EXPECT_THAT(s.message(), HasSubstr(fs::canonical(root_).string()));
  EXPECT_EQ(policy_.Check("spec.model_path", "/etc/passwd").code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(PathPolicyTest, SymlinkPointingOutIsRejected) {
  fs::create_directory_symlink(base_ / "outside", root_ / "escape");
  absl::Status s = policy_.Check("spec.model_path", (root_ / "escape").string());
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("resolves to"));
  // Below it, and below it where nothing exists yet.
  EXPECT_EQ(policy_.Check("spec.output_path", (root_ / "escape" / "new" / "x").string()).code(),
            absl::StatusCode::kPermissionDenied);
  // A symlink that stays inside is fine.
  fs::create_directory_symlink(root_ / "models", root_ / "alias");
  EXPECT_TRUE(policy_.Check("spec.model_path", (root_ / "alias" / "m1").string()).ok());
}

TEST_F(PathPolicyTest, DanglingSymlinkIsRejected) {
  // Points out to something that does not exist yet: writing through it would escape.
  fs::create_directory_symlink(base_ / "outside" / "not-yet", root_ / "dangling");
  absl::Status s = policy_.Check("spec.output_path", (root_ / "dangling" / "out").string());
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_THAT(s.message(), HasSubstr("dangling"));
}

TEST_F(PathPolicyTest, RootPrefixTrick) {
  // base/abcd shares a string prefix with the root base/abc but is not under it.
  absl::Status s = policy_.Check("spec.model_path", (base_ / "abcd").string());
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  s = policy_.Check("spec.output_path", (base_ / "abcd" / "new").string());
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_FALSE(PathIsWithin("/tmp/abcd", "/tmp/abc"));
  EXPECT_TRUE(PathIsWithin("/tmp/abc/d", "/tmp/abc"));
  EXPECT_TRUE(PathIsWithin("/tmp/abc", "/tmp/abc/"));
  EXPECT_TRUE(PathIsWithin("/tmp", "/"));
}

TEST_F(PathPolicyTest, SeveralRoots) {
  auto policy = PathPolicy::Create({root_, base_ / "outside"});
  ASSERT_TRUE(policy.ok()) << policy.status();
  EXPECT_TRUE(policy->Check("f", (base_ / "outside" / "x").string()).ok());
  EXPECT_EQ(policy->Check("f", (base_ / "abcd").string()).code(), absl::StatusCode::kPermissionDenied);
}

TEST(PathPolicyNoRootsTest, EveryAbsolutePathIsAllowed) {
  auto policy = PathPolicy::Create({});
  ASSERT_TRUE(policy.ok());
  EXPECT_TRUE(policy->Check("spec.model_path", "/anywhere/at/all").ok());
  EXPECT_EQ(policy->Check("spec.model_path", "relative").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(policy->Check("spec.model_path", "/a/../b").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(PathPolicy().Check("spec.model_path", "/x").ok());
}

TEST(PathPolicyCreateTest, BadRootsAreInvalidArgumentNamingTheRoot) {
  auto dir = testing::MakeTempDir("pathpolicy");
  const fs::path missing = dir / "missing";
  auto policy = PathPolicy::Create({missing});
  EXPECT_EQ(policy.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(policy.status().message(), HasSubstr(missing.string()));
  const fs::path file = dir / "file";
  { std::ofstream(file) << "x"; }
  policy = PathPolicy::Create({file});
  EXPECT_EQ(policy.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(policy.status().message(), HasSubstr(file.string()));
  EXPECT_THAT(policy.status().message(), HasSubstr("not a directory"));
}

}  // namespace
}  // namespace shrinkray
