// Mirroring through a nasfs mount: every mutation is on both NAS when the
// syscall returns, bursts and tree-wide operations leave the two NAS
// identical, and changes made on the NAS by someone else (the other web
// server) show through the mount within the cache timeout (1 s).

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/e2e/mount_fixture.h"
#include "tests/e2e/tree_compare.h"

namespace nasfs::e2e {
namespace {

namespace fsys = std::filesystem;
using Clock = std::chrono::steady_clock;

bool Exists(const std::string& p) {
  struct stat st {};
  return lstat(p.c_str(), &st) == 0;
}

std::optional<std::string> PreadFile(const std::string& path, off_t off, size_t n) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string buf(n, '\0');
  ssize_t r = pread(fd, buf.data(), n, off);
  close(fd);
  if (r < 0) return std::nullopt;
  buf.resize(static_cast<size_t>(r));
  return buf;
}

class MirrorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NASFS_E2E_REQUIRE_MOUNTS();
    ASSERT_TRUE(ws_.ok()) << ws_.error();
    ref_ = ws_.MakeDir("ref");
    mount_ = std::make_unique<MountedNasfs>(ws_);
    ASSERT_TRUE(mount_->mounted()) << mount_->error();
  }
  void TearDown() override { mount_.reset(); }

  std::string M(const std::string& rel) const { return ws_.mnt() + "/" + rel; }
  std::string Master(const std::string& rel) const { return ws_.master() + "/" + rel; }
  std::string Backup(const std::string& rel) const { return ws_.backup() + "/" + rel; }

  Workspace ws_;
  std::string ref_;
  std::unique_ptr<MountedNasfs> mount_;
};

TEST_F(MirrorTest, ABurstOfFiveHundredCreationsInNestedDirsLeavesBothNasIdentical) {
  const uint64_t seed = TestSeed();
  std::printf("seed=%llu (NASFS_E2E_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 rng(seed);
  std::map<std::string, std::string> files;
  std::vector<std::string> dirs;
  for (int a = 0; a < 10; ++a) {
    dirs.push_back(fmt::format("d{}", a));
    for (int b = 0; b < 5; ++b) dirs.push_back(fmt::format("d{}/s{}", a, b));
  }
  for (int i = 0; i < 500; ++i) {
    const std::string& dir = dirs[rng() % dirs.size()];
    files[fmt::format("{}/f{:03d}.html", dir, i)] = RandomBytes(rng, rng() % 9000);
  }
  const mode_t modes[] = {0644, 0600, 0755, 0640};
  for (const std::string& root : {ws_.mnt(), ref_}) {
    for (const auto& d : dirs) ASSERT_EQ(mkdir((root + "/" + d).c_str(), 0755), 0) << root << "/" << d << ": " << std::strerror(errno);
    size_t i = 0;
    for (const auto& [rel, data] : files) {
      ASSERT_TRUE(WriteFile(root + "/" + rel, data, modes[i++ % 4])) << root << "/" << rel << ": " << std::strerror(errno);
    }
  }
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
  EXPECT_NO_TREE_DIFFS(CompareWithReference(ws_.master(), ref_));
  int wrong = 0;
  for (const auto& [rel, data] : files) {
    if (ReadFile(M(rel)) != data && ++wrong <= 5) ADD_FAILURE() << "through the mount, " << rel << " differs";
  }
  EXPECT_EQ(wrong, 0);
}

TEST_F(MirrorTest, RenamingADirectoryWithContentsMovesItOnBothNas) {
  ASSERT_EQ(mkdir(M("a").c_str(), 0755), 0);
  ASSERT_EQ(mkdir(M("a/sub").c_str(), 0750), 0);
  ASSERT_EQ(mkdir(M("b").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFile(M("a/index.html"), "index"));
  ASSERT_TRUE(WriteFile(M("a/sub/deep.txt"), "deep"));
  ASSERT_EQ(symlink("sub/deep.txt", M("a/link").c_str()), 0);
  // Let nasfs know the children before the move.
  ASSERT_EQ(ReadFile(M("a/sub/deep.txt")).value_or("?"), "deep");

  ASSERT_EQ(rename(M("a").c_str(), M("b/moved").c_str()), 0) << std::strerror(errno);
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    EXPECT_FALSE(Exists(nas + "/a")) << nas << "/a still there";
    EXPECT_EQ(ReadFile(nas + "/b/moved/index.html").value_or("(missing)"), "index") << nas;
    EXPECT_EQ(ReadFile(nas + "/b/moved/sub/deep.txt").value_or("(missing)"), "deep") << nas;
  }
  struct stat st {};
  EXPECT_EQ(stat(M("a/index.html").c_str(), &st), -1);
  EXPECT_EQ(ReadFile(M("b/moved/link")).value_or("(missing)"), "deep");
  // Children known under the old path now live under the new one.
  ASSERT_TRUE(WriteFile(M("b/moved/sub/deep.txt"), "rewritten after the move"));
  EXPECT_EQ(ReadFile(Master("b/moved/sub/deep.txt")).value_or("(missing)"), "rewritten after the move");
  EXPECT_EQ(ReadFile(Backup("b/moved/sub/deep.txt")).value_or("(missing)"), "rewritten after the move");
  EXPECT_FALSE(Exists(Master("a"))) << "writing the moved file recreated the old path";
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

TEST_F(MirrorTest, RemovingADeepTreeRemovesItFromBothNas) {
  std::string path = "deep";
  for (int level = 0; level < 25; ++level) {
    ASSERT_EQ(mkdir(M(path).c_str(), 0755), 0) << path << ": " << std::strerror(errno);
    for (int f = 0; f < 3; ++f) ASSERT_TRUE(WriteFile(M(fmt::format("{}/f{}", path, f)), path));
    ASSERT_EQ(symlink("f0", M(path + "/l").c_str()), 0);
    ASSERT_EQ(mkdir(M(path + "/empty").c_str(), 0755), 0);
    path += fmt::format("/level{}", level);
  }
  ASSERT_TRUE(WriteFile(M("keep.txt"), "stays"));
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));

  std::error_code ec;
  const auto removed = fsys::remove_all(M("deep"), ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_EQ(removed, 25u * 6u);
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    EXPECT_FALSE(Exists(nas + "/deep")) << nas << "/deep still there";
    EXPECT_EQ(ReadFile(nas + "/keep.txt").value_or("(missing)"), "stays") << nas;
  }
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

TEST_F(MirrorTest, EveryMutationIsOnBothNasWhenTheSyscallReturns) {
  const uint64_t seed = TestSeed();
  std::printf("seed=%llu (NASFS_E2E_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 rng(seed);
  const int fd = open(M("data.bin").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  for (const auto& nas : {ws_.master(), ws_.backup()}) EXPECT_TRUE(Exists(nas + "/data.bin")) << nas << " after create";
  for (int i = 0; i < 50; ++i) {
    const std::string chunk = RandomBytes(rng, 1 + rng() % 20000);
    const off_t off = static_cast<off_t>(rng() % 200000);
    ASSERT_EQ(pwrite(fd, chunk.data(), chunk.size(), off), static_cast<ssize_t>(chunk.size()));
    for (const auto& nas : {ws_.master(), ws_.backup()}) {
      EXPECT_TRUE(PreadFile(nas + "/data.bin", off, chunk.size()) == chunk)
          << nas << ": write " << i << " (" << chunk.size() << " bytes at " << off << ") not there on return";
    }
  }
  close(fd);

  ASSERT_EQ(mkdir(M("dir").c_str(), 0700), 0);
  for (const auto& nas : {ws_.master(), ws_.backup()}) EXPECT_TRUE(Exists(nas + "/dir")) << nas << " after mkdir";
  ASSERT_EQ(chmod(M("dir").c_str(), 0751), 0);
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    struct stat st {};
    ASSERT_EQ(lstat((nas + "/dir").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0751u) << nas << " after chmod";
  }
  ASSERT_EQ(truncate(M("data.bin").c_str(), 1000), 0);
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    struct stat st {};
    ASSERT_EQ(lstat((nas + "/data.bin").c_str(), &st), 0);
    EXPECT_EQ(st.st_size, 1000) << nas << " after truncate";
  }
  ASSERT_EQ(setxattr(M("data.bin").c_str(), "user.tag", "v1", 2, 0), 0) << std::strerror(errno);
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    char v[8] = {};
    EXPECT_EQ(lgetxattr((nas + "/data.bin").c_str(), "user.tag", v, sizeof v), 2) << nas << " after setxattr";
  }
  ASSERT_EQ(rename(M("data.bin").c_str(), M("dir/renamed.bin").c_str()), 0);
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    EXPECT_FALSE(Exists(nas + "/data.bin")) << nas << " after rename";
    EXPECT_TRUE(Exists(nas + "/dir/renamed.bin")) << nas << " after rename";
  }
  ASSERT_EQ(symlink("renamed.bin", M("dir/link").c_str()), 0);
  ASSERT_EQ(link(M("dir/renamed.bin").c_str(), M("hard").c_str()), 0);
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    EXPECT_TRUE(Exists(nas + "/dir/link")) << nas << " after symlink";
    EXPECT_TRUE(Exists(nas + "/hard")) << nas << " after link";
  }
  ASSERT_EQ(unlink(M("dir/renamed.bin").c_str()), 0);
  for (const auto& nas : {ws_.master(), ws_.backup()}) EXPECT_FALSE(Exists(nas + "/dir/renamed.bin")) << nas << " after unlink";
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

// The other web server's nasfs writes both NAS; this mount must notice
// within the cache timeout. Returns how long it took, or nullopt.
std::optional<std::chrono::milliseconds> TimeUntilVisible(const std::string& path, const std::string& want,
                                                          std::chrono::milliseconds timeout) {
  const auto start = Clock::now();
  if (!WaitFor([&] { return ReadFile(path) == want; }, timeout, 10ms)) return std::nullopt;
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
}

void WriteBehindTheMount(const std::vector<std::string>& paths, const std::string& data, timespec mtime) {
  for (const auto& p : paths) {
    ASSERT_TRUE(WriteFile(p, data)) << p;
    const timespec t[2] = {mtime, mtime};
    ASSERT_EQ(utimensat(AT_FDCWD, p.c_str(), t, 0), 0) << p;
  }
}

TEST_F(MirrorTest, ContentChangedDirectlyOnTheMasterBecomesVisibleWithinTwoSeconds) {
  ASSERT_TRUE(WriteFile(M("page.html"), "version 1"));
  ASSERT_EQ(ReadFile(M("page.html")).value_or("?"), "version 1");  // now in the kernel's caches
  const std::string v2 = "version 2, written by the other web server";
  WriteBehindTheMount({Master("page.html"), Backup("page.html")}, v2, timespec{2000000000, 1});
  auto took = TimeUntilVisible(M("page.html"), v2, 5s);
  ASSERT_TRUE(took.has_value()) << "still '" << ReadFile(M("page.html")).value_or("?") << "' after 5 s";
  EXPECT_LE(took->count(), 2500) << "visible only after " << took->count() << " ms";
  std::printf("visible after %lld ms\n", static_cast<long long>(took->count()));
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

TEST_F(MirrorTest, SameSizeContentChangedDirectlyOnTheMasterBecomesVisibleWithinTwoSeconds) {
  ASSERT_TRUE(WriteFile(M("page.html"), "AAAAAAAA"));
  ASSERT_EQ(ReadFile(M("page.html")).value_or("?"), "AAAAAAAA");
  WriteBehindTheMount({Master("page.html"), Backup("page.html")}, "BBBBBBBB", timespec{2000000000, 2});
  auto took = TimeUntilVisible(M("page.html"), "BBBBBBBB", 5s);
  ASSERT_TRUE(took.has_value()) << "still '" << ReadFile(M("page.html")).value_or("?") << "' after 5 s";
  EXPECT_LE(took->count(), 2500) << "visible only after " << took->count() << " ms";
  std::printf("visible after %lld ms\n", static_cast<long long>(took->count()));
}

TEST_F(MirrorTest, AFileCreatedDirectlyOnTheMasterBecomesVisibleWithinTwoSeconds) {
  struct stat st {};
  ASSERT_EQ(stat(M("new.html").c_str(), &st), -1);  // a cached negative lookup now
  WriteBehindTheMount({Master("new.html"), Backup("new.html")}, "fresh", timespec{2000000000, 3});
  auto took = TimeUntilVisible(M("new.html"), "fresh", 5s);
  ASSERT_TRUE(took.has_value()) << "not visible after 5 s";
  EXPECT_LE(took->count(), 2500) << "visible only after " << took->count() << " ms";
  std::printf("visible after %lld ms\n", static_cast<long long>(took->count()));
}

TEST_F(MirrorTest, AFileRemovedDirectlyOnTheMasterDisappearsWithinTwoSeconds) {
  ASSERT_TRUE(WriteFile(M("gone.html"), "soon gone"));
  ASSERT_EQ(ReadFile(M("gone.html")).value_or("?"), "soon gone");
  ASSERT_EQ(unlink(Master("gone.html").c_str()), 0);
  ASSERT_EQ(unlink(Backup("gone.html").c_str()), 0);
  const auto start = Clock::now();
  struct stat st {};
  ASSERT_TRUE(WaitFor([&] { return stat(M("gone.html").c_str(), &st) == -1 && errno == ENOENT; }, 5s, 10ms))
      << "still visible after 5 s";
  const auto took = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
  EXPECT_LE(took.count(), 2500) << "gone only after " << took.count() << " ms";
}

}  // namespace
}  // namespace nasfs::e2e
