#include "core/io/checkpoint.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/tensor/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

// Owns the bytes that TensorToWrite spans point at.
struct Model {
  std::vector<std::vector<std::byte>> storage;
  std::vector<TensorToWrite> tensors;

  template <typename T>
  void Add(std::string name, DType dtype, std::vector<int64_t> shape,
           const std::vector<T>& values) {
    std::vector<std::byte>& bytes = storage.emplace_back(values.size() * sizeof(T));
    if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
    tensors.push_back({std::move(name), dtype, std::move(shape), bytes});
  }
};

std::vector<float> Iota(size_t n, float start) {
  std::vector<float> v(n);
  std::iota(v.begin(), v.end(), start);
  return v;
}

// Tensors of varied sizes and dtypes, added out of name order.
Model MakeModel() {
  Model m;
  m.storage.reserve(16);  // spans must stay valid
  m.Add("model.layers.1.mlp.up_proj.weight", DType::kF32, {64, 172}, Iota(64 * 172, 0.5f));
  m.Add("model.embed_tokens.weight", DType::kF32, {100, 64}, Iota(6400, -100.0f));
  m.Add("model.layers.0.input_layernorm.weight", DType::kF16, {4},
        std::vector<uint16_t>{0x3C00, 0x4000, 0xC000, 0x0001});
  m.Add("model.layers.0.self_attn.q_proj.weight", DType::kBF16, {2, 2},
        std::vector<uint16_t>{0x3F80, 0x4049, 0xBF80, 0x0000});
  m.Add("model.layers.0.mlp.down_proj.weight", DType::kF32, {172, 64}, Iota(172 * 64, 3.0f));
  m.Add("model.norm.weight", DType::kF32, {64}, Iota(64, 1.0f));
  m.Add("lm_head.weight", DType::kF32, {100, 64}, Iota(6400, 7.0f));
  m.Add("model.step", DType::kI32, {2}, std::vector<int32_t>{-3, 9});
  m.Add("model.mask", DType::kBool, {3}, std::vector<uint8_t>{1, 0, 1});
  return m;
}

std::vector<std::string> SortedNames(const Model& m) {
  std::vector<std::string> names;
  for (const auto& t : m.tensors) names.push_back(t.name);
  std::sort(names.begin(), names.end());
  return names;
}

nlohmann::json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in, nullptr, false);
}

void WriteText(const fs::path& path, const std::string& text) {
  std::ofstream out(path, std::ios::trunc);
  out << text;
}

TEST(CheckpointTest, SingleFile) {
  const Model model = MakeModel();
  const fs::path dir = testing::MakeTempDir("ckpt-single");
  ASSERT_TRUE(WriteCheckpoint(dir, model.tensors).ok());
  EXPECT_TRUE(fs::exists(dir / "model.safetensors"));
  EXPECT_FALSE(fs::exists(dir / "model.safetensors.index.json"));

  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->dir(), dir);
  EXPECT_EQ((*ckpt)->names(), SortedNames(model));
  ASSERT_EQ((*ckpt)->files().size(), 1u);
  EXPECT_EQ((*ckpt)->files()[0]->metadata().at("format"), "pt");

  const int64_t shape[] = {64, 172};
  auto up = (*ckpt)->ReadF32("model.layers.1.mlp.up_proj.weight", shape);
  ASSERT_TRUE(up.ok()) << up.status();
  EXPECT_EQ(*up, Iota(64 * 172, 0.5f));
  auto norm = (*ckpt)->ReadF32("model.layers.0.input_layernorm.weight");
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ(*norm, (std::vector<float>{1.0f, 2.0f, -2.0f, std::ldexp(1.0f, -24)}));
  auto q = (*ckpt)->ReadF32("model.layers.0.self_attn.q_proj.weight");
  ASSERT_TRUE(q.ok()) << q.status();
  EXPECT_EQ(*q, (std::vector<float>{1.0f, 3.140625f, -1.0f, 0.0f}));
  auto step = (*ckpt)->ReadF32("model.step");
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_EQ(*step, (std::vector<float>{-3.0f, 9.0f}));

  std::vector<float> buffer(64);
  ASSERT_TRUE((*ckpt)->ReadF32Into("model.norm.weight", buffer).ok());
  EXPECT_EQ(buffer, Iota(64, 1.0f));
  EXPECT_TRUE((*ckpt)->Contains("lm_head.weight"));
  EXPECT_FALSE((*ckpt)->Contains("lm_head"));
}

TEST(CheckpointTest, ThreeShardsMatchSingleFile) {
  const Model model = MakeModel();
  const fs::path single_dir = testing::MakeTempDir("ckpt-one");
  const fs::path sharded_dir = testing::MakeTempDir("ckpt-three");
  ASSERT_TRUE(WriteCheckpoint(single_dir, model.tensors).ok());
  ASSERT_TRUE(WriteCheckpoint(sharded_dir, model.tensors, 3).ok());
  for (const char* name : {"model-00001-of-00003.safetensors", "model-00002-of-00003.safetensors",
                           "model-00003-of-00003.safetensors", "model.safetensors.index.json"}) {
    EXPECT_TRUE(fs::exists(sharded_dir / name)) << name;
  }
  EXPECT_FALSE(fs::exists(sharded_dir / "model.safetensors"));

  const nlohmann::json index = ReadJson(sharded_dir / "model.safetensors.index.json");
  ASSERT_FALSE(index.is_discarded());
  size_t total = 0;
  for (const auto& t : model.tensors) total += t.data.size();
  EXPECT_EQ(index["metadata"]["total_size"].get<size_t>(), total);
  EXPECT_EQ(index["weight_map"].size(), model.tensors.size());
  EXPECT_EQ(index["weight_map"]["lm_head.weight"], "model-00001-of-00003.safetensors");
  EXPECT_EQ(index["weight_map"]["model.step"], "model-00003-of-00003.safetensors");

  auto single = Checkpoint::Open(single_dir);
  auto sharded = Checkpoint::Open(sharded_dir);
  ASSERT_TRUE(single.ok()) << single.status();
  ASSERT_TRUE(sharded.ok()) << sharded.status();
  ASSERT_EQ((*sharded)->files().size(), 3u);
  EXPECT_EQ((*sharded)->names(), (*single)->names());
  // Contiguous in name order: each shard's names follow the previous shard's.
  std::string last_name;
  for (const auto& file : (*sharded)->files()) {
    ASSERT_FALSE(file->tensors().empty());
    std::vector<std::string> names;
    for (const auto& t : file->tensors()) names.push_back(t.name);
    std::sort(names.begin(), names.end());
    EXPECT_LT(last_name, names.front());
    last_name = names.back();
  }
  for (const std::string& name : (*single)->names()) {
    SCOPED_TRACE(name);
    auto a = (*single)->Find(name);
    auto b = (*sharded)->Find(name);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ((*a)->dtype, (*b)->dtype);
    EXPECT_EQ((*a)->shape, (*b)->shape);
    ASSERT_EQ((*a)->nbytes, (*b)->nbytes);
    if ((*a)->nbytes > 0) {
      EXPECT_EQ(std::memcmp((*a)->data, (*b)->data, (*a)->nbytes), 0);
    }
  }
}

TEST(CheckpointTest, ShardBytesAreBalanced) {
  // Eight equal tensors into four shards: two each.
  Model m;
  m.storage.reserve(8);
  for (int i = 0; i < 8; ++i) m.Add("t" + std::to_string(i), DType::kF32, {16}, Iota(16, 0.0f));
  const fs::path dir = testing::MakeTempDir("ckpt-balance");
  ASSERT_TRUE(WriteCheckpoint(dir, m.tensors, 4).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  ASSERT_EQ((*ckpt)->files().size(), 4u);
  for (const auto& file : (*ckpt)->files()) EXPECT_EQ(file->tensors().size(), 2u);
}

TEST(CheckpointTest, MissingShardIsNotFound) {
  const fs::path dir = testing::MakeTempDir("ckpt-noshard");
  ASSERT_TRUE(WriteCheckpoint(dir, MakeModel().tensors, 3).ok());
  fs::remove(dir / "model-00002-of-00003.safetensors");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("model-00002-of-00003.safetensors"));
}

TEST(CheckpointTest, IndexedTensorAbsentFromShard) {
  const fs::path dir = testing::MakeTempDir("ckpt-ghost");
  ASSERT_TRUE(WriteCheckpoint(dir, MakeModel().tensors, 3).ok());
  nlohmann::json index = ReadJson(dir / "model.safetensors.index.json");
  index["weight_map"]["ghost.weight"] = "model-00001-of-00003.safetensors";
  WriteText(dir / "model.safetensors.index.json", index.dump());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("'ghost.weight'"));
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("model-00001-of-00003.safetensors"));
}

TEST(CheckpointTest, ShardTensorMissingFromIndex) {
  const fs::path dir = testing::MakeTempDir("ckpt-unlisted");
  ASSERT_TRUE(WriteCheckpoint(dir, MakeModel().tensors, 3).ok());
  nlohmann::json index = ReadJson(dir / "model.safetensors.index.json");
  index["weight_map"].erase("model.norm.weight");
  WriteText(dir / "model.safetensors.index.json", index.dump());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("'model.norm.weight'"));
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("does not list"));
}

TEST(CheckpointTest, TensorInTwoShards) {
  const fs::path dir = testing::MakeTempDir("ckpt-twice");
  const std::vector<float> v = {1, 2};
  const auto bytes = std::as_bytes(std::span(v));
  const std::vector<TensorToWrite> first = {{"a", DType::kF32, {2}, bytes},
                                            {"b", DType::kF32, {2}, bytes}};
  const std::vector<TensorToWrite> second = {{"b", DType::kF32, {2}, bytes}};
  ASSERT_TRUE(WriteSafetensors(dir / "s1.safetensors", first).ok());
  ASSERT_TRUE(WriteSafetensors(dir / "s2.safetensors", second).ok());
  WriteText(dir / "model.safetensors.index.json",
            R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("tensor 'b' is in two shards"));
}

TEST(CheckpointTest, BadIndexJson) {
  const fs::path dir = testing::MakeTempDir("ckpt-badindex");
  for (const char* text : {"{\"weight_map\": ", "[]", "{\"metadata\": {}}",
                           "{\"weight_map\": {\"a\": 3}}", "{\"weight_map\": {\"a\": \"../x\"}}"}) {
    WriteText(dir / "model.safetensors.index.json", text);
    auto ckpt = Checkpoint::Open(dir);
    ASSERT_FALSE(ckpt.ok()) << text;
    EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kInvalidArgument) << ckpt.status();
    EXPECT_THAT(std::string(ckpt.status().message()), HasSubstr("model.safetensors.index.json"));
  }
}

TEST(CheckpointTest, EmptyFolderIsNotFound) {
  const fs::path dir = testing::MakeTempDir("ckpt-empty");
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_FALSE(ckpt.ok());
  EXPECT_EQ(ckpt.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ckpt.status().message(),
            "no model.safetensors or model.safetensors.index.json in " + dir.string());
}

TEST(CheckpointTest, LookupErrors) {
  const fs::path dir = testing::MakeTempDir("ckpt-lookup");
  ASSERT_TRUE(WriteCheckpoint(dir, MakeModel().tensors).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();

  auto missing = (*ckpt)->Find("nope");
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(missing.status().message(), "tensor 'nope' not found in " + dir.string());
  EXPECT_EQ((*ckpt)->ReadF32("nope").status().code(), absl::StatusCode::kNotFound);

  const int64_t transposed[] = {172, 64};
  auto wrong = (*ckpt)->ReadF32("model.layers.1.mlp.up_proj.weight", transposed);
  ASSERT_FALSE(wrong.ok());
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(wrong.status().message());
  EXPECT_THAT(message, HasSubstr("'model.layers.1.mlp.up_proj.weight'"));
  EXPECT_THAT(message, HasSubstr("[64, 172] vs expected [172, 64]"));

  std::vector<float> small(10);
  const absl::Status size = (*ckpt)->ReadF32Into("model.norm.weight", small);
  EXPECT_EQ(size.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(size.message()), HasSubstr("64 elements"));

  auto mask = (*ckpt)->ReadF32("model.mask");
  ASSERT_FALSE(mask.ok());
  EXPECT_EQ(mask.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(mask.status().message()), HasSubstr("'model.mask'"));
}

TEST(CheckpointTest, WriterRejectsBadArguments) {
  const fs::path dir = testing::MakeTempDir("ckpt-wbad");
  const Model model = MakeModel();
  EXPECT_EQ(WriteCheckpoint(dir, model.tensors, 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(WriteCheckpoint(dir, model.tensors, 10).code(), absl::StatusCode::kInvalidArgument);
  std::vector<TensorToWrite> dup = model.tensors;
  dup.push_back(model.tensors.front());
  const absl::Status status = WriteCheckpoint(dir, dup, 3);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(status.message()), HasSubstr("duplicate tensor name"));
}

TEST(CheckpointTest, SingleWriteReplacesStaleIndex) {
  const fs::path dir = testing::MakeTempDir("ckpt-stale");
  const Model model = MakeModel();
  ASSERT_TRUE(WriteCheckpoint(dir, model.tensors, 3).ok());
  const std::vector<TensorToWrite> one(model.tensors.begin(), model.tensors.begin() + 1);
  ASSERT_TRUE(WriteCheckpoint(dir, one).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  EXPECT_EQ((*ckpt)->names(), std::vector<std::string>{one[0].name});
}

std::string FileBytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Tensors whose bytes are produced in pieces while each shard is written give
// the same files as in-memory ones; a producer that miscounts leaves no file.
TEST(CheckpointTest, StreamedWriteEqualsInMemoryWrite) {
  const Model model = MakeModel();
  const fs::path dir = testing::MakeTempDir("ckpt-streamed");
  std::vector<StreamedTensor> streamed;
  for (const TensorToWrite& t : model.tensors) {
    streamed.push_back({t.name, t.dtype, t.shape, t.data.size(), [data = t.data](const ByteSink& sink) {
                          for (size_t i = 0; i < data.size(); i += 7) {
                            absl::Status s = sink(data.subspan(i, std::min<size_t>(7, data.size() - i)));
                            if (!s.ok()) return s;
                          }
                          return absl::OkStatus();
                        }});
  }
  for (int shards : {1, 3}) {
    const fs::path memory = dir / absl::StrCat("memory-", shards);
    const fs::path pieces = dir / absl::StrCat("pieces-", shards);
    ASSERT_TRUE(WriteCheckpoint(memory, model.tensors, shards).ok());
    ASSERT_TRUE(WriteCheckpointStreamed(pieces, streamed, shards).ok());
    size_t files = 0;
    for (const auto& item : fs::directory_iterator(memory)) {
      ++files;
      EXPECT_TRUE(FileBytes(item.path()) == FileBytes(pieces / item.path().filename()))
          << item.path().filename();
    }
    EXPECT_EQ(files, shards == 1 ? 1u : 4u);
  }

  streamed[0].write = [](const ByteSink&) { return absl::OkStatus(); };
  const absl::Status status = WriteCheckpointStreamed(dir / "short", streamed);
  EXPECT_EQ(status.code(), absl::StatusCode::kInternal) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr(streamed[0].name));
  EXPECT_TRUE(fs::is_empty(dir / "short"));
}

// Dropping a tensor's mapped pages loses nothing: reads fault them back in.
TEST(CheckpointTest, ReleasedPagesReadAgain) {
  const Model model = MakeModel();
  const fs::path dir = testing::MakeTempDir("ckpt-release");
  ASSERT_TRUE(WriteCheckpoint(dir, model.tensors, 3).ok());
  auto ckpt = Checkpoint::Open(dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  auto before = (*ckpt)->ReadF32("model.layers.1.mlp.up_proj.weight");
  ASSERT_TRUE(before.ok()) << before.status();
  (*ckpt)->ReleasePages("model.layers.");
  (*ckpt)->ReleasePages("");
  auto after = (*ckpt)->ReadF32("model.layers.1.mlp.up_proj.weight");
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(*after, *before);
  EXPECT_EQ(*after, Iota(64 * 172, 0.5f));
}

}  // namespace
}  // namespace shrinkray
