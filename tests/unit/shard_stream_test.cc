#include "core/io/shard_stream.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/io/checkpoint.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

struct Tensor {
  std::string name;
  std::vector<float> values;
};

// Tensors of `sizes` floats each, named in an order that is not sorted.
std::vector<Tensor> MakeTensors(const std::vector<int>& sizes) {
  std::vector<Tensor> out;
  for (size_t i = 0; i < sizes.size(); ++i) {
    Tensor t;
    t.name = absl::StrCat("t", std::string(1, static_cast<char>('z' - i)), ".weight");
    for (int k = 0; k < sizes[i]; ++k) t.values.push_back(static_cast<float>(i) * 100 + k + 0.5f);
    out.push_back(std::move(t));
  }
  return out;
}

// Streamed in pieces of 3 floats, as the writer's copies from its scratch file are.
StreamedTensor Streamed(const Tensor& t) {
  const std::span<const std::byte> bytes = std::as_bytes(std::span<const float>(t.values));
  return {t.name, DType::kF32, {static_cast<int64_t>(t.values.size())}, bytes.size(),
          [bytes](const ByteSink& sink) {
            for (size_t i = 0; i < bytes.size(); i += 12) {
              absl::Status s = sink(bytes.subspan(i, std::min<size_t>(12, bytes.size() - i)));
              if (!s.ok()) return s;
            }
            return absl::OkStatus();
          }};
}

// Every tensor reads back from the folder (through the index when sharded).
void ExpectReadsBack(const fs::path& dir, const std::vector<Tensor>& tensors) {
  auto checkpoint = Checkpoint::Open(dir);
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ((*checkpoint)->names().size(), tensors.size());
  for (const Tensor& t : tensors) {
    auto values = (*checkpoint)->ReadF32(t.name);
    ASSERT_TRUE(values.ok()) << t.name << ": " << values.status();
    EXPECT_EQ(*values, t.values) << t.name;
  }
}

std::vector<std::string> FileNames(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& item : fs::directory_iterator(dir)) names.push_back(item.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

TEST(ShardStreamTest, OneShardIsAModelSafetensorsWithTheHeaderInItsReservedSpace) {
  const fs::path dir = testing::MakeTempDir("shard-one");
  const std::vector<Tensor> tensors = MakeTensors({5, 1, 0, 7});
  auto stream = ShardStream::Open(dir, {.header_bytes = 1024});
  ASSERT_TRUE(stream.ok()) << stream.status();
  for (const Tensor& t : tensors) ASSERT_TRUE((*stream)->Add(Streamed(t)).ok());
  (*stream)->StartWriteback();
  ASSERT_TRUE((*stream)->Finish().ok());
  EXPECT_EQ(FileNames(dir), std::vector<std::string>{"model.safetensors"});
  EXPECT_EQ((*stream)->total_bytes(), 13u * 4);
  ExpectReadsBack(dir, tensors);
  // The data starts right after the reserved header, in the order added.
  auto file = SafetensorsFile::Open(dir / "model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(fs::file_size(dir / "model.safetensors"), 1024u + 13 * 4);
  EXPECT_EQ((*file)->metadata().at("format"), "pt");
  std::ifstream in(dir / "model.safetensors", std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), {});
  float first;
  std::memcpy(&first, bytes.data() + 1024, sizeof(first));
  EXPECT_EQ(first, tensors[0].values[0]);
  EXPECT_EQ(bytes[1023], ' ');  // padding
}

// Shards close before the tensor that would take them past shard_bytes (one
// larger than that gets a shard of its own), are named -of-N and indexed.
TEST(ShardStreamTest, ShardsSplitByBytesAndAreIndexed) {
  const fs::path dir = testing::MakeTempDir("shard-bytes");
  const std::vector<Tensor> tensors = MakeTensors({4, 4, 4, 30, 2, 2});  // 16-byte shards
  auto stream = ShardStream::Open(dir, {.shard_bytes = 32, .header_bytes = 512});
  ASSERT_TRUE(stream.ok());
  for (const Tensor& t : tensors) ASSERT_TRUE((*stream)->Add(Streamed(t)).ok());
  ASSERT_TRUE((*stream)->Finish().ok());
  EXPECT_EQ(FileNames(dir), (std::vector<std::string>{
                                "model-00001-of-00004.safetensors", "model-00002-of-00004.safetensors",
                                "model-00003-of-00004.safetensors", "model-00004-of-00004.safetensors",
                                "model.safetensors.index.json"}));
  std::ifstream in(dir / "model.safetensors.index.json");
  const nlohmann::json index = nlohmann::json::parse(in);
  EXPECT_EQ(index["metadata"]["total_size"], 46 * 4);
  EXPECT_EQ(index["weight_map"][tensors[0].name], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"][tensors[1].name], "model-00001-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"][tensors[2].name], "model-00002-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"][tensors[3].name], "model-00003-of-00004.safetensors");
  EXPECT_EQ(index["weight_map"][tensors[5].name], "model-00004-of-00004.safetensors");
  ExpectReadsBack(dir, tensors);
}

// A shard also closes before an entry its reserved header cannot hold; an
// entry no header can hold is refused by name.
TEST(ShardStreamTest, ShardsSplitWhenTheHeaderIsFull) {
  const fs::path dir = testing::MakeTempDir("shard-header");
  std::vector<Tensor> tensors = MakeTensors({1, 1, 1, 1, 1, 1});
  auto stream = ShardStream::Open(dir, {.header_bytes = 160, .metadata = {}});
  ASSERT_TRUE(stream.ok());
  for (const Tensor& t : tensors) ASSERT_TRUE((*stream)->Add(Streamed(t)).ok()) << t.name;
  Tensor long_name = {std::string(200, 'x'), {1.0f}};
  const absl::Status refused = (*stream)->Add(Streamed(long_name));
  EXPECT_EQ(refused.code(), absl::StatusCode::kInvalidArgument) << refused;
  EXPECT_THAT(std::string(refused.message()), HasSubstr("does not fit the 160 reserved"));
  EXPECT_EQ((*stream)->Finish().code(), absl::StatusCode::kInvalidArgument);  // the stream failed

  const fs::path again = testing::MakeTempDir("shard-header-2");
  auto second = ShardStream::Open(again, {.header_bytes = 160, .metadata = {}});
  ASSERT_TRUE(second.ok());
  for (const Tensor& t : tensors) ASSERT_TRUE((*second)->Add(Streamed(t)).ok());
  ASSERT_TRUE((*second)->Finish().ok());
  const std::vector<std::string> files = FileNames(again);
  EXPECT_EQ(files.size(), 4u);  // two entries of ~60 bytes per 160-byte header: 3 shards and the index
  EXPECT_EQ(files.back(), "model.safetensors.index.json");
  ExpectReadsBack(again, tensors);
}

TEST(ShardStreamTest, BadTensorsAndUnfinishedStreamsLeaveNothing) {
  const fs::path dir = testing::MakeTempDir("shard-bad");
  const std::vector<Tensor> tensors = MakeTensors({2, 3});
  {
    auto stream = ShardStream::Open(dir, {.shard_bytes = 8});
    ASSERT_TRUE(stream.ok());
    ASSERT_TRUE((*stream)->Add(Streamed(tensors[0])).ok());
    ASSERT_TRUE((*stream)->Add(Streamed(tensors[1])).ok());  // another shard
    const absl::Status duplicate = (*stream)->Add(Streamed(tensors[0]));
    EXPECT_EQ(duplicate.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(duplicate.message()), HasSubstr("duplicate tensor name '" + tensors[0].name + "'"));
    const std::vector<Tensor> four = MakeTensors({4, 1});
    StreamedTensor wrong = Streamed(four[0]);
    wrong.name = "short";
    wrong.shape = {5};
    wrong.nbytes = 20;  // the producer passes 16
    const absl::Status short_write = (*stream)->Add(wrong);
    EXPECT_EQ(short_write.code(), absl::StatusCode::kInternal) << short_write;
    EXPECT_THAT(std::string(short_write.message()), HasSubstr("16 bytes produced, expected 20"));
    EXPECT_EQ((*stream)->Add(Streamed(four[1])).code(), absl::StatusCode::kInternal);  // the stream failed
    EXPECT_FALSE(fs::is_empty(dir));
  }
  EXPECT_TRUE(fs::is_empty(dir));  // unfinished: its files are removed
  EXPECT_EQ(ShardStream::Open(dir / "missing").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ShardStream::Open(dir, {.header_bytes = 100}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(ShardStreamTest, NoTensorsIsAnEmptyFile) {
  const fs::path dir = testing::MakeTempDir("shard-empty");
  auto stream = ShardStream::Open(dir);
  ASSERT_TRUE(stream.ok());
  ASSERT_TRUE((*stream)->Finish().ok());
  EXPECT_EQ((*stream)->Finish().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(FileNames(dir), std::vector<std::string>{"model.safetensors"});
  ExpectReadsBack(dir, {});
}

}  // namespace
}  // namespace shrinkray
