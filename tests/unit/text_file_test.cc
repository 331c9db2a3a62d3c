#include "core/io/text_file.h"

#include <fstream>

#include "gtest/gtest.h"
#include "test_data.h"

namespace shrinkray {
namespace {

std::filesystem::path WriteBytes(const std::string& name, const std::string& bytes) {
  auto path = testing::MakeTempDir("text") / name;
  std::ofstream(path, std::ios::binary) << bytes;
  return path;
}

TEST(TextFileTest, MaxCharsCountsCodePointsNotBytes) {
  // "é" is 2 bytes, "€" 3, "😀" 4: the first 4 characters are "aé€😀" = 10 bytes.
  auto path = WriteBytes("t.txt", "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80zz");
  auto text = ReadTextFile(path, 4);
  ASSERT_TRUE(text.ok()) << text.status();
  EXPECT_EQ(*text, "a\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  EXPECT_EQ(ReadTextFile(path, -1)->size(), 12u);
}

TEST(TextFileTest, EmptyFileIsAnErrorNamingTheFile) {
  auto path = WriteBytes("empty.txt", "");
  auto text = ReadTextFile(path);
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(text.status().message().find("empty.txt"), std::string_view::npos);
  EXPECT_NE(text.status().message().find("empty"), std::string_view::npos);
}

TEST(TextFileTest, InvalidUtf8IsAnErrorNamingTheByte) {
  auto path = WriteBytes("bad.txt", "abc\xFF\xFE");
  auto text = ReadTextFile(path);
  EXPECT_EQ(text.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(text.status().message().find("bad.txt: not valid UTF-8 at byte 3"), std::string_view::npos)
      << text.status();
}

TEST(TextFileTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadTextFile("/nonexistent/x.txt").status().code(), absl::StatusCode::kNotFound);
}

TEST(TextFileTest, Utf8ValidatorRejectsOverlongSurrogatesAndTruncation) {
  EXPECT_EQ(FindInvalidUtf8("plain ascii"), -1);
  EXPECT_EQ(FindInvalidUtf8("\xC3\xA9"), -1);
  EXPECT_EQ(FindInvalidUtf8("x\xC0\xAF"), 1);          // overlong '/'
  EXPECT_EQ(FindInvalidUtf8("xy\xED\xA0\x80"), 2);      // UTF-16 surrogate D800
  EXPECT_EQ(FindInvalidUtf8("\xE2\x82"), 0);            // truncated 3-byte sequence
  EXPECT_EQ(FindInvalidUtf8("\xF4\x90\x80\x80"), 0);    // past U+10FFFF
  EXPECT_EQ(FindInvalidUtf8("ok\x80"), 2);              // stray continuation byte
}

}  // namespace
}  // namespace shrinkray
