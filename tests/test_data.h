// Where the tests find ../shared/data, and a skip that names the missing path.
#pragma once

#include <filesystem>
#include <string>

namespace shrinkray::testing {

// ../shared/data beside the source tree, or $SHRINKRAY_SHARED_DATA when set.
std::filesystem::path SharedDataDir();

// A fresh, empty temporary directory unique to the calling test; removed at exit.
std::filesystem::path MakeTempDir(const std::string& tag);

}  // namespace shrinkray::testing

// Skips the current test (GTEST_SKIP) with a message naming `path` when it does not exist.
#define SHRINKRAY_REQUIRE_PATH(path)                                              \
  do {                                                                            \
    if (!std::filesystem::exists(path)) {                                         \
      GTEST_SKIP() << "test data not found: " << (path).string()                  \
                   << " (the shared data folder ../shared/data is absent)";      \
    }                                                                             \
  } while (0)
