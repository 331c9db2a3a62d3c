// main() of shrinkray_comm_tests. With SHRINKRAY_COMM_CHILD="rank,size,dir,scenario"
// set, the binary is one rank of a multi-process test (started by
// gloo_process_test.cc through /proc/self/exe) and never touches GoogleTest;
// otherwise it runs the tests.
#include <cstdio>
#include <cstdlib>
#include <string>

#include "comm/comm_scenarios.h"
#include "gtest/gtest.h"

namespace {

int ChildMain(const std::string& spec) {
  // rank,size,store_dir,scenario: the directory may hold commas, the others not.
  const size_t a = spec.find(',');
  const size_t b = a == std::string::npos ? a : spec.find(',', a + 1);
  const size_t c = spec.rfind(',');
  if (a == std::string::npos || b == std::string::npos || c <= b) {
    std::fprintf(stderr, "bad %s: %s\n", shrinkray::comm_test::kChildEnv, spec.c_str());
    return 64;
  }
  const int rank = std::atoi(spec.substr(0, a).c_str());
  const int size = std::atoi(spec.substr(a + 1, b - a - 1).c_str());
  return shrinkray::comm_test::RunChild(rank, size, spec.substr(b + 1, c - b - 1), spec.substr(c + 1));
}

}  // namespace

int main(int argc, char** argv) {
  if (const char* spec = std::getenv(shrinkray::comm_test::kChildEnv); spec != nullptr && *spec != '\0') {
    return ChildMain(spec);
  }
  ::testing::InitGoogleTest(&argc, argv);
  return RUN_ALL_TESTS();
}
