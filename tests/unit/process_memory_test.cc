// How the process keeps memory it frees (core/util/process_memory.h): after
// KeepFreedMemory a 64 MiB block comes from the heap, not from its own
// mapping, and once freed its bytes stay with the heap for the next block.
// Read through glibc's mallinfo2 (mapped blocks, free heap bytes); skipped
// where the allocator is not glibc's own (ASan replaces it).
#include "core/util/process_memory.h"

#include <cstdlib>
#include <vector>

#include "gtest/gtest.h"

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace shrinkray {
namespace {

#if defined(__SANITIZE_ADDRESS__) || !defined(__GLIBC__)
constexpr bool kGlibcMalloc = false;
#else
constexpr bool kGlibcMalloc = true;
#endif

TEST(ProcessMemoryTest, TheEnvironmentCanAskForTheDefault) {
  ASSERT_EQ(setenv("SHRINKRAY_KEEP_FREED_MEMORY", "0", 1), 0);
  EXPECT_FALSE(KeepFreedMemory());
  ASSERT_EQ(unsetenv("SHRINKRAY_KEEP_FREED_MEMORY"), 0);
}

TEST(ProcessMemoryTest, LargeBlocksComeFromTheHeapAndStayWhenFreed) {
  if (!kGlibcMalloc) GTEST_SKIP() << "not glibc's allocator (a sanitizer's, or another libc)";
#if defined(__GLIBC__) && !defined(__SANITIZE_ADDRESS__)
  ASSERT_EQ(unsetenv("SHRINKRAY_KEEP_FREED_MEMORY"), 0);  // whatever the caller's environment says
  ASSERT_TRUE(KeepFreedMemory());
  constexpr size_t kBytes = size_t{64} << 20;
  const struct mallinfo2 before = mallinfo2();
  {
    std::vector<char> big(kBytes, 1);
    const struct mallinfo2 during = mallinfo2();
    // glibc's default maps every block over 32 MiB on its own.
    EXPECT_EQ(during.hblks, before.hblks);
    EXPECT_EQ(during.hblkhd, before.hblkhd);
  }
  const struct mallinfo2 after = mallinfo2();
  // Freed, the block's bytes are still the heap's (not trimmed away).
  EXPECT_GE(after.fordblks, kBytes);
  EXPECT_GE(after.arena, kBytes);
#endif
}

}  // namespace
}  // namespace shrinkray
