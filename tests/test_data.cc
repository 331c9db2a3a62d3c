#include "test_data.h"

#include <cstdlib>
#include <mutex>
#include <random>
#include <vector>

namespace shrinkray::testing {

std::filesystem::path SharedDataDir() {
  if (const char* env = std::getenv("SHRINKRAY_SHARED_DATA"); env != nullptr && *env != '\0') {
    return std::filesystem::path(env);
  }
  return std::filesystem::path(SHRINKRAY_SOURCE_DIR).parent_path() / "shared" / "data";
}

namespace {
struct TempDirs {
  std::mutex mu;
  std::vector<std::filesystem::path> dirs;
  ~TempDirs() {
    std::error_code ec;
    for (const auto& d : dirs) std::filesystem::remove_all(d, ec);
  }
};
TempDirs& Registry() {
  static TempDirs registry;
  return registry;
}
}  // namespace

std::filesystem::path MakeTempDir(const std::string& tag) {
  std::random_device rd;
  auto base = std::filesystem::temp_directory_path();
  for (int attempt = 0; attempt < 100; ++attempt) {
    auto dir = base / ("shrinkray-test-" + tag + "-" + std::to_string(rd()));
    std::error_code ec;
    if (std::filesystem::create_directory(dir, ec)) {
      std::lock_guard<std::mutex> lock(Registry().mu);
      Registry().dirs.push_back(dir);
      return dir;
    }
  }
  return {};
}

}  // namespace shrinkray::testing
