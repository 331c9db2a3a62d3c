#include "core/io/safetensors.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/tensor/convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

template <typename T>
std::vector<std::byte> AsBytes(const std::vector<T>& values) {
  std::vector<std::byte> bytes(values.size() * sizeof(T));
  if (!bytes.empty()) std::memcpy(bytes.data(), values.data(), bytes.size());
  return bytes;
}

void WriteBytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(out.good()) << path;
}

std::string LengthPrefix(uint64_t n) {
  std::string prefix(8, '\0');
  for (int i = 0; i < 8; ++i) prefix[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return prefix;
}

// A safetensors file from a raw header string and `data_bytes` zero bytes.
std::string RawFile(const std::string& header, size_t data_bytes) {
  return LengthPrefix(header.size()) + header + std::string(data_bytes, '\0');
}

std::string ReadAll(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

TEST(SafetensorsTest, RoundTripKeepsEverything) {
  const fs::path dir = testing::MakeTempDir("st-roundtrip");
  const fs::path path = dir / "model.safetensors";
  const auto w = AsBytes(std::vector<float>{1, 2, 3, 4, 5, 6});
  const auto b = AsBytes(std::vector<uint16_t>{0x3F80, 0x4000, 0xC000, 0x7F80});
  const auto i8 = AsBytes(std::vector<int8_t>{-1, 0, 1});
  const auto scalar = AsBytes(std::vector<int64_t>{42});
  const std::vector<TensorToWrite> tensors = {
      {"z.weight", DType::kF32, {2, 3}, w},
      {"Alpha", DType::kBF16, {4}, b},  // capital: sorts before "__metadata__" in ASCII
      {"m.bias", DType::kI8, {3, 1}, i8},
      {"m.empty", DType::kF16, {0, 5}, {}},
      {"step", DType::kI64, {}, scalar},
  };
  const std::map<std::string, std::string> metadata = {{"format", "pt"},
                                                       {"note", "h\u00e9llo \"q\""}};
  ASSERT_TRUE(WriteSafetensors(path, tensors, metadata).ok());

  // Only the final file: the temporary was renamed away.
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
  const std::string raw = ReadAll(path);
  ASSERT_GE(raw.size(), 8u);
  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<uint8_t>(raw[i]);
  EXPECT_EQ(header_len % 8, 0u);
  EXPECT_EQ(raw.size(), 8 + header_len + 24 + 8 + 3 + 0 + 8);
  EXPECT_EQ(raw.substr(8, 15), "{\"__metadata__\"");

  absl::StatusOr<std::unique_ptr<SafetensorsFile>> file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->metadata(), metadata);
  ASSERT_EQ((*file)->tensors().size(), tensors.size());
  // Written in name order, so offset order is name order; the empty
  // "m.empty" shares its offset with "step" and sorts first as the shorter range.
  std::vector<std::string> names;
  for (const TensorInfo& t : (*file)->tensors()) names.push_back(t.name);
  EXPECT_EQ(names, (std::vector<std::string>{"Alpha", "m.bias", "m.empty", "step", "z.weight"}));
  for (const TensorToWrite& expected : tensors) {
    SCOPED_TRACE(expected.name);
    const TensorInfo* info = (*file)->Find(expected.name);
    ASSERT_NE(info, nullptr);
    EXPECT_EQ(info->dtype, expected.dtype);
    EXPECT_EQ(info->shape, expected.shape);
    ASSERT_EQ(info->nbytes, expected.data.size());
    if (info->nbytes > 0) {
      EXPECT_EQ(std::memcmp(info->data, expected.data.data(), info->nbytes), 0);
    }
  }
  EXPECT_EQ((*file)->Find("z.weight")->numel(), 6);
  EXPECT_EQ((*file)->Find("step")->numel(), 1);
  EXPECT_EQ((*file)->Find("m.empty")->numel(), 0);
  EXPECT_EQ((*file)->Find("missing"), nullptr);
}

TEST(SafetensorsTest, EmptyFileWithoutMetadata) {
  const fs::path path = testing::MakeTempDir("st-empty") / "empty.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {}).ok());
  EXPECT_EQ(ReadAll(path), LengthPrefix(8) + "{}      ");
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE((*file)->tensors().empty());
  EXPECT_TRUE((*file)->metadata().empty());
}

TEST(SafetensorsTest, ReadsMisalignedTensorData) {
  // U8 first puts the F32 tensor at an odd address in the mapping.
  const fs::path path = testing::MakeTempDir("st-align") / "a.safetensors";
  std::string header = R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[1,9]}})";
  std::string data(9, '\0');
  const float values[2] = {1.25f, -7.5f};
  std::memcpy(data.data() + 1, values, sizeof(values));
  WriteBytes(path, LengthPrefix(header.size()) + header + data);
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  const TensorInfo* b = (*file)->Find("b");
  ASSERT_NE(b, nullptr);
  float out[2];
  ASSERT_TRUE(ConvertToF32(out, b->data, b->dtype, 2).ok());
  EXPECT_EQ(out[0], 1.25f);
  EXPECT_EQ(out[1], -7.5f);
}

void ExpectInvalid(const fs::path& path, const std::vector<std::string>& fragments) {
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kInvalidArgument) << file.status();
  const std::string message(file.status().message());
  EXPECT_THAT(message, HasSubstr(path.string()));
  for (const std::string& fragment : fragments) EXPECT_THAT(message, HasSubstr(fragment));
}

TEST(SafetensorsTest, MissingFileIsNotFound) {
  const fs::path path = testing::MakeTempDir("st-missing") / "nope.safetensors";
  auto file = SafetensorsFile::Open(path);
  ASSERT_FALSE(file.ok());
  EXPECT_EQ(file.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(file.status().message()), HasSubstr(path.string()));
}

TEST(SafetensorsTest, TruncatedFile) {
  const fs::path path = testing::MakeTempDir("st-trunc") / "t.safetensors";
  WriteBytes(path, std::string("\x05\0\0\0\0", 5));
  ExpectInvalid(path, {"truncated: 5 bytes, need at least 8"});
  WriteBytes(path, "");
  ExpectInvalid(path, {"truncated: 0 bytes, need at least 8"});
}

TEST(SafetensorsTest, HeaderLengthPastEndOfFile) {
  const fs::path path = testing::MakeTempDir("st-eof") / "h.safetensors";
  WriteBytes(path, LengthPrefix(1000) + "{}        ");
  ExpectInvalid(path, {"header length 1000 exceeds file size 18"});
  WriteBytes(path, LengthPrefix(~0ull) + "{}");
  ExpectInvalid(path, {"header length 18446744073709551615 exceeds file size 10"});
}

TEST(SafetensorsTest, AbsurdHeaderLength) {
  // A sparse 200 MB file whose length field claims a 150 MB header.
  const fs::path path = testing::MakeTempDir("st-absurd") / "big.safetensors";
  WriteBytes(path, LengthPrefix(150'000'000) + "{}");
  fs::resize_file(path, 200'000'000);
  ExpectInvalid(path, {"header length 150000000 exceeds the limit"});
}

struct BadHeaderCase {
  const char* label;
  std::string header;
  size_t data_bytes;
  std::vector<std::string> fragments;
};

TEST(SafetensorsTest, RejectsBadHeaders) {
  const fs::path dir = testing::MakeTempDir("st-bad");
  const std::vector<BadHeaderCase> cases = {
      {"invalid json", R"({"w": {"dtype": "F32",)", 0, {"header is not valid JSON"}},
      {"not an object", R"([1, 2, 3])", 0, {"header must be a JSON object", "array"}},
      {"entry not an object", R"({"w": [1]})", 0, {"tensor 'w'", "entry must be an object"}},
      {"missing dtype",
       R"({"w": {"shape": [1], "data_offsets": [0, 4]}})",
       4,
       {"tensor 'w'", "missing 'dtype'"}},
      {"missing shape",
       R"({"w": {"dtype": "F32", "data_offsets": [0, 4]}})",
       4,
       {"tensor 'w'", "missing 'shape'"}},
      {"missing offsets",
       R"({"w": {"dtype": "F32", "shape": [1]}})",
       4,
       {"tensor 'w'", "missing 'data_offsets'"}},
      {"unknown dtype",
       R"({"w": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}})",
       1,
       {"tensor 'w'", "unknown dtype 'F8'"}},
      {"dtype not string",
       R"({"w": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})",
       4,
       {"tensor 'w'", "dtype must be a string"}},
      {"negative dim",
       R"({"w": {"dtype": "F32", "shape": [-1, 2], "data_offsets": [0, 4]}})",
       4,
       {"tensor 'w'", "shape [-1,2] must hold non-negative integers"}},
      {"float dim",
       R"({"w": {"dtype": "F32", "shape": [2.5], "data_offsets": [0, 4]}})",
       4,
       {"tensor 'w'", "non-negative integers"}},
      {"shape not array",
       R"({"w": {"dtype": "F32", "shape": 3, "data_offsets": [0, 12]}})",
       12,
       {"tensor 'w'", "shape must be an array"}},
      {"size mismatch",
       R"({"w": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})",
       20,
       {"tensor 'w'", "shape [2, 3] x F32 needs 24 bytes", "hold 20 bytes"}},
      {"shape overflow",
       R"({"w": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 4]}})",
       4,
       {"tensor 'w'", "overflows"}},
      {"end past data",
       R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
       12,
       {"tensor 'w'", "data_offsets [0, 16] end past the data region of 12 bytes"}},
      {"begin > end",
       R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})",
       12,
       {"tensor 'w'", "begin > end"}},
      {"three offsets",
       R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})",
       8,
       {"tensor 'w'", "must be [begin, end]"}},
      {"negative offset",
       R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})",
       8,
       {"tensor 'w'", "must be [begin, end]"}},
      {"overlap",
       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
       R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
       12,
       {"tensors 'a' [0, 8) and 'b' [4, 12) overlap"}},
      {"contained overlap",
       R"({"big": {"dtype": "U8", "shape": [16], "data_offsets": [0, 16]},)"
       R"( "c": {"dtype": "U8", "shape": [2], "data_offsets": [4, 6]},)"
       R"( "d": {"dtype": "U8", "shape": [2], "data_offsets": [8, 10]}})",
       16,
       {"'big'", "'c'", "overlap"}},
      {"metadata value not string",
       R"({"__metadata__": {"k": 1}})",
       0,
       {"__metadata__ must map strings to strings", "'k'"}},
      {"metadata not object", R"({"__metadata__": "pt"})", 0, {"__metadata__ must be an object"}},
  };
  for (const BadHeaderCase& c : cases) {
    SCOPED_TRACE(c.label);
    const fs::path path = dir / (std::string("bad-") + std::to_string(&c - cases.data()) + ".st");
    WriteBytes(path, RawFile(c.header, c.data_bytes));
    ExpectInvalid(path, c.fragments);
  }
}

TEST(SafetensorsTest, AcceptsEmptyTensorsAndPaddedHeaders) {
  const fs::path path = testing::MakeTempDir("st-zero") / "z.safetensors";
  // Zero-size tensors at a shared offset overlap nothing; trailing spaces pad.
  const std::string header = R"({"e1": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]},)"
                             R"( "e2": {"dtype": "BF16", "shape": [3, 0], "data_offsets": [4, 4]},)"
                             R"( "w": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}    )";
  WriteBytes(path, RawFile(header, 4));
  auto file = SafetensorsFile::Open(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ((*file)->tensors().size(), 3u);
  EXPECT_EQ((*file)->tensors().front().name, "w");
}

TEST(SafetensorsTest, WriterRejectsBadTensors) {
  const fs::path path = testing::MakeTempDir("st-wbad") / "w.safetensors";
  const auto four = AsBytes(std::vector<float>{1, 2, 3, 4});
  struct WriterCase {
    std::vector<TensorToWrite> tensors;
    std::string fragment;
  };
  const std::vector<WriterCase> cases = {
      {{{"w", DType::kF32, {2, 3}, four}}, "tensor 'w': shape [2, 3] x F32 needs 24 bytes but 16"},
      {{{"w", DType::kF32, {4}, four}, {"w", DType::kF32, {4}, four}}, "duplicate tensor name 'w'"},
      {{{"", DType::kF32, {4}, four}}, "must not be empty"},
      {{{"__metadata__", DType::kF32, {4}, four}}, "reserved"},
      {{{"w", DType::kF32, {-4}, four}}, "bad shape [-4]"},
      {{{"bad\xff", DType::kF32, {4}, four}}, "not valid UTF-8"},
  };
  for (const WriterCase& c : cases) {
    const absl::Status status = WriteSafetensors(path, c.tensors);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(c.fragment));
  }
  EXPECT_FALSE(fs::exists(path));
  EXPECT_TRUE(fs::is_empty(path.parent_path()));
}

// The observer sees exactly the file's bytes, in order, header included; an
// observer's error is the write's and leaves no file.
TEST(SafetensorsTest, ObserverSeesEveryByteOfTheFile) {
  const fs::path dir = testing::MakeTempDir("st-observer");
  const auto a = AsBytes(std::vector<float>{1, 2, 3, 4, 5, 6});
  const auto b = AsBytes(std::vector<int32_t>{7, -8});
  const std::vector<TensorToWrite> tensors = {{"z", DType::kF32, {2, 3}, a}, {"a", DType::kI32, {2}, b}};
  std::string seen;
  ASSERT_TRUE(WriteSafetensorsStreamed(dir / "x.safetensors", StreamFromMemory(tensors), {{"k", "v"}},
                                       [&](std::span<const std::byte> piece) {
                                         seen.append(reinterpret_cast<const char*>(piece.data()), piece.size());
                                         return absl::OkStatus();
                                       })
                  .ok());
  const std::string file = ReadAll(dir / "x.safetensors");
  EXPECT_EQ(file.size(), 8 + 8 * ((file.size() - 8) / 8));  // header padded to 8
  EXPECT_TRUE(seen == file) << seen.size() << " bytes seen, " << file.size() << " in the file";

  const absl::Status refused = WriteSafetensorsStreamed(
      dir / "y.safetensors", StreamFromMemory(tensors), {},
      [](std::span<const std::byte>) { return absl::DataLossError("observer refuses"); });
  EXPECT_EQ(refused.code(), absl::StatusCode::kDataLoss) << refused;
  EXPECT_FALSE(fs::exists(dir / "y.safetensors"));
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator()), 1);
}

}  // namespace
}  // namespace shrinkray
