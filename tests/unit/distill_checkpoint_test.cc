// The distillation checkpoint files shared by the CPU trainer and the CUDA
// runner (core/distill/distill_checkpoint.h): a round trip, the newest
// matching one wins, and a damaged or foreign one is skipped without touching
// the store (so the next candidate, or the starting weights, are what the run
// goes on from).
#include <cstring>
#include <filesystem>
#include <span>
#include <string>
#include <vector>

#include "core/distill/distill_checkpoint.h"
#include "core/io/safetensors.h"
#include "core/model/synthetic.h"
#include "core/train/parameter_store.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray::distill {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

train::ParameterStore Store(float base) {
  auto store = train::ParameterStore::Create(MakeLlamaConfig(16, 32, 1, 2, 1, 40, 32, true));
  EXPECT_TRUE(store.ok()) << store.status();
  for (size_t i = 0; i < store->size(); ++i) {
    store->params()[i] = base + 0.001f * static_cast<float>(i);
    store->first_moment()[i] = -base;
    store->second_moment()[i] = base * base;
  }
  return std::move(*store);
}

bool SameBits(std::span<const float> a, std::span<const float> b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

bool SameState(const train::ParameterStore& a, const train::ParameterStore& b) {
  return SameBits(a.params(), b.params()) && SameBits(a.first_moment(), b.first_moment()) &&
         SameBits(a.second_moment(), b.second_moment());
}

// Reads dir into a fresh store: the step and position it reports, what its
// note says (each of `notes`; none: empty) and the store it leaves (`expect`).
void ExpectRead(const fs::path& dir, const std::string& fingerprint, int64_t step, Position position,
                const std::vector<std::string>& notes, const train::ParameterStore& expect) {
  train::ParameterStore into = Store(0.0f);
  const ResumedDistillCheckpoint r = ReadDistillCheckpoint(dir, fingerprint, into);
  EXPECT_EQ(r.step, step);
  EXPECT_EQ(r.position, position);
  if (notes.empty()) EXPECT_EQ(r.note, "");
  for (const std::string& n : notes) EXPECT_THAT(r.note, HasSubstr(n));
  EXPECT_TRUE(SameState(into, expect));
}

TEST(DistillCheckpoint, DueEveryPeriodAndAtTheEnd) {
  EXPECT_FALSE(DistillCheckpointDue(3, 0, 10));
  EXPECT_TRUE(DistillCheckpointDue(3, 3, 10));
  EXPECT_FALSE(DistillCheckpointDue(4, 3, 10));
  EXPECT_TRUE(DistillCheckpointDue(10, 3, 10));
}

TEST(DistillCheckpoint, RoundTripKeepsOnlyTheNewest) {
  const fs::path dir = testing::MakeTempDir("distill-ckpt") / "ckpt";
  const train::ParameterStore a = Store(1.0f), b = Store(2.0f);
  ASSERT_TRUE(WriteDistillCheckpoint(dir, "run", 3, {0, 12}, 5, a).ok());
  ASSERT_TRUE(WriteDistillCheckpoint(dir, "run", 6, {1, 2}, 5, b).ok());
  EXPECT_FALSE(fs::exists(dir / "step-00000003.safetensors"));
  auto file = SafetensorsFile::Open(dir / "step-00000006.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata().at("format"), "shrinkray-distill-checkpoint");
  EXPECT_EQ((*file)->metadata().at("seed"), "5");

  ExpectRead(dir, "run", 6, {1, 2}, {"resumed from", "step-00000006.safetensors at step 6"}, b);
  // Nothing to resume: no note, the store untouched.
  ExpectRead(dir / "absent", "run", 0, {}, {}, Store(0.0f));
}

TEST(DistillCheckpoint, DamagedOrForeignIsSkippedWithoutTouchingTheStore) {
  const fs::path dir = testing::MakeTempDir("distill-ckpt-bad") / "ckpt";
  const train::ParameterStore good = Store(1.0f);
  ASSERT_TRUE(WriteDistillCheckpoint(dir, "run", 3, {0, 6}, 0, good).ok());
  // A newer file of the same run whose params are fine but whose moments are
  // short: nothing of it may reach the store.
  const train::ParameterStore newer = Store(9.0f);
  const int64_t n = static_cast<int64_t>(newer.size());
  const std::vector<TensorToWrite> tensors = {
      {"params", DType::kF32, {n}, std::as_bytes(newer.params())},
      {"exp_avg", DType::kF32, {n - 1}, std::as_bytes(newer.first_moment().first(n - 1))},
      {"exp_avg_sq", DType::kF32, {n}, std::as_bytes(newer.second_moment())},
  };
  ASSERT_TRUE(WriteSafetensors(dir / "step-00000009.safetensors", tensors,
                               {{"fingerprint", "run"}, {"step", "9"}, {"epoch", "0"}, {"index", "18"}})
                  .ok());

  ExpectRead(dir, "run", 3, {0, 6},
             {"step-00000009.safetensors is damaged (tensor exp_avg missing or not F32", "at step 3"}, good);
  // Another run's checkpoints only: starting over from the store as it was.
  ExpectRead(dir, "another", 0, {}, {"is for another run", "starting over"}, Store(0.0f));
}

}  // namespace
}  // namespace shrinkray::distill
