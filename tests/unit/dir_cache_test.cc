// DirCache: expiry, forgetting a subtree, the capacity, a replaced root.
#include "fs/dir_cache.h"

#include <fcntl.h>
#include <unistd.h>

#include <thread>

#include <gtest/gtest.h>

namespace nasfs {
namespace {

using namespace std::chrono_literals;

DirCache::Fd Open(const char* path = "/tmp") {
  return std::make_shared<const UniqueFd>(open(path, O_PATH | O_DIRECTORY | O_CLOEXEC));
}

TEST(DirCacheTest, KeepsAnFdForTheTtlOnly) {
  DirCache c(100ms);
  auto root = Open("/");
  auto fd = Open();
  c.Put(root, "a/b", fd);
  EXPECT_EQ(c.Find(root, "a/b"), fd);
  EXPECT_EQ(c.Find(root, "a"), nullptr);
  std::this_thread::sleep_for(150ms);
  EXPECT_EQ(c.Find(root, "a/b"), nullptr) << "an expired fd was handed out";
}

TEST(DirCacheTest, ForgetTakesADirectoryAndEverythingBeneathItOnly) {
  DirCache c(10s);
  auto root = Open("/");
  for (const char* d : {"a", "a/b", "a/b/c", "ab", "a.b", "x/a"}) c.Put(root, d, Open());
  c.Forget("a");
  EXPECT_EQ(c.Find(root, "a"), nullptr);
  EXPECT_EQ(c.Find(root, "a/b"), nullptr);
  EXPECT_EQ(c.Find(root, "a/b/c"), nullptr);
  EXPECT_NE(c.Find(root, "ab"), nullptr);
  EXPECT_NE(c.Find(root, "a.b"), nullptr);
  EXPECT_NE(c.Find(root, "x/a"), nullptr);
  c.Forget("");  // the root: everything
  EXPECT_EQ(c.size(), 0u);
}

TEST(DirCacheTest, ANewRootEmptiesIt) {
  DirCache c(10s);
  auto root = Open("/"), other = Open("/");
  c.Put(root, "a", Open());
  EXPECT_EQ(c.Find(other, "a"), nullptr) << "an fd opened beneath another root was handed out";
  EXPECT_EQ(c.size(), 0u);
}

TEST(DirCacheTest, NeverHoldsMoreThanItsCapacity) {
  DirCache c(10s, 8);
  auto root = Open("/");
  for (int i = 0; i < 100; ++i) {
    c.Put(root, "d" + std::to_string(i), Open());
    ASSERT_LE(c.size(), 8u);
  }
  EXPECT_NE(c.Find(root, "d99"), nullptr) << "the newest entry was not kept";
}

TEST(DirCacheTest, OffKeepsNothing) {
  DirCache c(0ms);
  auto root = Open("/");
  c.Put(root, "a", Open());
  EXPECT_FALSE(c.enabled());
  EXPECT_EQ(c.Find(root, "a"), nullptr);
}

}  // namespace
}  // namespace nasfs
