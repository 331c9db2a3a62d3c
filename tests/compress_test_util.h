// Small helpers shared by the compression tests (unit and sharded/resume).
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "core/model/llama.h"
#include "core/pipeline/eval.h"
#include "core/pipeline/recipe.h"

namespace shrinkray::testing {

// The recipe, or an empty one after a test failure naming the parse error.
inline Recipe MustParseRecipe(const std::string& yaml) {
  auto r = ParseRecipe(yaml, "test");
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? *r : Recipe{};
}

inline std::string ReadFileBytes(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Perplexity of the model in `dir` on `ids` in windows of `seqlen` (0 after a
// test failure).
inline double PerplexityOf(const std::filesystem::path& dir, const std::vector<int32_t>& ids, int seqlen) {
  auto model = LlamaModel::Load(dir);
  EXPECT_TRUE(model.ok()) << model.status();
  if (!model.ok()) return 0.0;
  auto r = EvaluatePerplexity(**model, ids, {seqlen, 0});
  EXPECT_TRUE(r.ok()) << r.status();
  return r.ok() ? r->ppl : 0.0;
}

}  // namespace shrinkray::testing
