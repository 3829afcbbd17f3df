// Backend: the path-confined syscalls on one NAS, against a real temporary
// directory standing in for the NAS. The syscall methods block and need no
// worker pool, so they are called directly. The confinement tests plant
// symlinks and ".." paths that lead to a second directory outside the NAS
// and check both the errno and that nothing outside changed.
#include <dirent.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <vector>
#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <sys/sysmacros.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fs/backend.h"
#include "nas_dirs.h"

namespace nasfs {
namespace {

using ::testing::AnyOf;
using ::testing::Eq;
using ::testing::Ne;
using ::testing::UnorderedElementsAre;
using testutil::Exists;
using testutil::MakeTemp;
using testutil::ReadFile;

timespec Ts(time_t s, long ns) { return timespec{s, ns}; }

bool SameTime(const timespec& a, const timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}

std::string Fmt(const timespec& t) {
  return std::to_string(t.tv_sec) + "." + std::to_string(t.tv_nsec);
}

// Every test runs twice: each call resolved from the NAS root, and through
// the directory fd cache (DirCache).
class BackendTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    root_ = MakeTemp("/tmp/nasfs-backend-nas-XXXXXX");
    outside_ = MakeTemp("/tmp/nasfs-backend-outside-XXXXXX");
    nas_ = std::make_unique<Backend>(Role::kMaster, root_, 1, std::chrono::milliseconds(1000));
    auto r = nas_->OpenRoot();
    ASSERT_TRUE(r) << std::strerror(r.error());
    if (GetParam()) {
      nas_->SetDirCacheTtl(std::chrono::seconds(30));
      cached_ = std::make_unique<DirCache::Scope>();  // the test's calls are the FUSE read path's
    }
    // A file outside the NAS that no confined call may reach.
    WriteFile(outside_ + "/file", "outside");
  }
  void TearDown() override {
    std::error_code ec;
    if (!root_.empty()) std::filesystem::remove_all(root_, ec);
    if (!outside_.empty()) std::filesystem::remove_all(outside_, ec);
  }

  static void WriteFile(const std::string& path, const std::string& content) {
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << content;
    ASSERT_TRUE(f.good()) << path;
  }
  std::string At(const std::string& rel) const { return root_ + "/" + rel; }
  struct stat scratch_{};  // attributes a test does not look at
  std::unique_ptr<DirCache::Scope> cached_;
  // Creates rel as an empty file through the backend.
  void NewFile(const std::string& rel, mode_t mode = 0644) {
    struct stat st;
    ASSERT_EQ(nas_->Create(rel, O_EXCL, mode, who_, Ts(1000, 0), &st), 0) << rel;
  }
  static bool IsRoot() { return ::geteuid() == 0; }

  std::string root_, outside_;
  std::unique_ptr<Backend> nas_;
  Caller who_{1234, 5678};
};

// Of threads racing to make one change of state, exactly one makes it
// (what lets every fault report rule on serving alone: Nasfs::OnFault).
TEST_P(BackendTest, SetStateIfChangesTheStateOnlyFromTheGivenOneAndOnce) {
  auto changes = [&] { return nas_->Status()["state_changes"].get<uint64_t>(); };
  nas_->SetState(BackendState::kRecovering, "test");
  const uint64_t before = changes();
  EXPECT_FALSE(nas_->SetStateIf(BackendState::kDown, BackendState::kHealthy, "from the wrong state"));
  EXPECT_EQ(nas_->state(), BackendState::kRecovering);
  std::atomic<int> made{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 8; ++i)
    threads.emplace_back([&] {
      if (nas_->SetStateIf(BackendState::kRecovering, BackendState::kHealthy, "raced")) ++made;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(made.load(), 1);
  EXPECT_EQ(nas_->state(), BackendState::kHealthy);
  EXPECT_EQ(changes(), before + 1);
}

TEST_P(BackendTest, OpenRootFailsForAMissingDirectoryOrAFile) {
  Backend missing(Role::kBackup, root_ + "/nope", 1, std::chrono::milliseconds(100));
  auto r = missing.OpenRoot();
  ASSERT_FALSE(r);
  EXPECT_EQ(r.error(), ENOENT);
  WriteFile(At("plain"), "x");
  Backend file(Role::kBackup, At("plain"), 1, std::chrono::milliseconds(100));
  auto f = file.OpenRoot();
  ASSERT_FALSE(f);
  EXPECT_EQ(f.error(), ENOTDIR);
}

TEST_P(BackendTest, StatOfTheEmptyPathIsTheRoot) {
  struct stat st, want;
  ASSERT_EQ(nas_->Stat("", &st), 0);
  ASSERT_EQ(::stat(root_.c_str(), &want), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_ino, want.st_ino);
}

TEST_P(BackendTest, MkdirCreateWriteReadAndStatRoundTrip) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("d", 0750, who_, Ts(1000, 1), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0750u);
  ASSERT_EQ(nas_->Create("d/f", O_EXCL, 0640, who_, Ts(1000, 2), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0640u);
  EXPECT_EQ(st.st_size, 0);
  ASSERT_EQ(nas_->Write("d/f", 0, "hello world", Ts(1001, 0)), 0);
  ASSERT_EQ(nas_->Write("d/f", 6, "WORLD!", Ts(1002, 0)), 0);
  std::string got;
  ASSERT_EQ(nas_->Read("d/f", 0, 100, &got), 0);
  EXPECT_EQ(got, "hello WORLD!");
  ASSERT_EQ(nas_->Read("d/f", 6, 3, &got), 0);
  EXPECT_EQ(got, "WOR");
  ASSERT_EQ(nas_->Stat("d/f", &st), 0);
  EXPECT_EQ(st.st_size, 12);
  EXPECT_EQ(ReadFile(At("d/f")), "hello WORLD!");
  EXPECT_EQ(nas_->Stat("d/missing", &st), ENOENT);
  EXPECT_EQ(nas_->Create("d/f", O_EXCL, 0640, who_, Ts(1, 0), &st), EEXIST);
}

TEST_P(BackendTest, WriteAtAnOffsetPastTheEndLeavesAHole) {
  NewFile("f");
  ASSERT_EQ(nas_->Write("f", 10, "x", Ts(5, 0)), 0);
  std::string got;
  ASSERT_EQ(nas_->Read("f", 0, 100, &got), 0);
  EXPECT_EQ(got, std::string(10, '\0') + "x");
}

TEST_P(BackendTest, CreateWithoutExclOpensAnExistingFileAndTruncatesOnlyWithOTrunc) {
  NewFile("f");
  ASSERT_EQ(nas_->Write("f", 0, "content", Ts(5, 0)), 0);
  struct stat st;
  ASSERT_EQ(nas_->Create("f", 0, 0600, who_, Ts(6, 0), &st), 0);
  EXPECT_EQ(st.st_size, 7);
  ASSERT_EQ(nas_->Create("f", O_TRUNC, 0600, who_, Ts(7, 7), &st), 0);
  EXPECT_EQ(st.st_size, 0);
  EXPECT_TRUE(SameTime(st.st_mtim, Ts(7, 7))) << Fmt(st.st_mtim);
}

TEST_P(BackendTest, CreateGivesTheNewFileTheCallersOwner) {
  if (!IsRoot()) GTEST_SKIP() << "chown to another user needs root";
  struct stat st;
  ASSERT_EQ(nas_->Create("f", O_EXCL, 0644, who_, Ts(1000, 0), &st), 0);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);
  struct stat disk;
  ASSERT_EQ(::lstat(At("f").c_str(), &disk), 0);
  EXPECT_EQ(disk.st_uid, 1234u);
  EXPECT_EQ(disk.st_gid, 5678u);
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(1000, 0), &st), 0);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);
  ASSERT_EQ(nas_->Symlink("target", "l", who_, Ts(1000, 0), &st), 0);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 5678u);
}

TEST_P(BackendTest, CreateKeepsTheSetuidBitThatChownClears) {
  if (!IsRoot()) GTEST_SKIP() << "chown to another user needs root";
  struct stat st;
  ASSERT_EQ(nas_->Create("suid", O_EXCL, 04755, who_, Ts(1000, 0), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
  ASSERT_EQ(nas_->Create("sgid", O_EXCL, 02755, who_, Ts(1000, 0), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 02755u);
  struct stat disk;
  ASSERT_EQ(::lstat(At("suid").c_str(), &disk), 0);
  EXPECT_EQ(disk.st_mode & 07777, 04755u);
  EXPECT_EQ(disk.st_uid, 1234u);
}

TEST_P(BackendTest, ANewEntryInASetgidDirectoryTakesTheDirectorysGroup) {
  if (!IsRoot()) GTEST_SKIP() << "chown to another user needs root";
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("shared", 0775, Caller{0, 4242}, Ts(1000, 0), &st), 0);
  ASSERT_EQ(::chmod(At("shared").c_str(), 02775), 0);
  ASSERT_EQ(nas_->Create("shared/f", O_EXCL, 0644, who_, Ts(1000, 0), &st), 0);
  EXPECT_EQ(st.st_uid, 1234u);
  EXPECT_EQ(st.st_gid, 4242u);
}

TEST_P(BackendTest, ANewEntryAndItsParentGetTheGivenTimestampExactly) {
  struct stat st, parent;
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(1600000000, 123456789), &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, Ts(1600000000, 123456789))) << Fmt(st.st_mtim);
  EXPECT_TRUE(SameTime(st.st_atim, Ts(1600000000, 123456789))) << Fmt(st.st_atim);

  const timespec t = Ts(1700000000, 987654321);
  ASSERT_EQ(nas_->Create("d/f", O_EXCL, 0644, who_, t, &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, t)) << Fmt(st.st_mtim);
  ASSERT_EQ(nas_->Stat("d", &parent), 0);
  EXPECT_TRUE(SameTime(parent.st_mtim, t)) << Fmt(parent.st_mtim);

  const timespec t2 = Ts(1700000001, 1);
  ASSERT_EQ(nas_->Symlink("f", "d/l", who_, t2, &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, t2)) << Fmt(st.st_mtim);
  ASSERT_EQ(nas_->Stat("d", &parent), 0);
  EXPECT_TRUE(SameTime(parent.st_mtim, t2)) << Fmt(parent.st_mtim);

  const timespec t3 = Ts(1700000002, 2);
  ASSERT_EQ(nas_->Mknod("d/fifo", S_IFIFO | 0600, 0, who_, t3, &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode));
  EXPECT_TRUE(SameTime(st.st_mtim, t3)) << Fmt(st.st_mtim);
  ASSERT_EQ(nas_->Stat("d", &parent), 0);
  EXPECT_TRUE(SameTime(parent.st_mtim, t3)) << Fmt(parent.st_mtim);
}

TEST_P(BackendTest, WriteStampsTheGivenMtime) {
  NewFile("f");
  const timespec t = Ts(1650000000, 424242424);
  ASSERT_EQ(nas_->Write("f", 0, "data", t), 0);
  struct stat st;
  ASSERT_EQ(nas_->Stat("f", &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, t)) << Fmt(st.st_mtim);
}

TEST_P(BackendTest, SetAttrTruncatesAndSetsMtime) {
  NewFile("f");
  ASSERT_EQ(nas_->Write("f", 0, "0123456789", Ts(5, 0)), 0);
  SetAttrArgs a;
  a.set_size = true;
  a.size = 4;
  a.set_mtime = true;
  a.mtime = Ts(1234567890, 111);
  struct stat st;
  ASSERT_EQ(nas_->SetAttr("f", a, &st), 0);
  EXPECT_EQ(st.st_size, 4);
  EXPECT_TRUE(SameTime(st.st_mtim, Ts(1234567890, 111))) << Fmt(st.st_mtim);
  EXPECT_EQ(ReadFile(At("f")), "0123");
  // Growing fills with zeros.
  SetAttrArgs grow;
  grow.set_size = true;
  grow.size = 6;
  ASSERT_EQ(nas_->SetAttr("f", grow, &st), 0);
  EXPECT_EQ(ReadFile(At("f")), std::string("0123\0\0", 6));
}

TEST_P(BackendTest, SetAttrChangesModeOwnerAndTimesOfADirectoryAndTheRoot) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(5, 0), &st), 0);
  SetAttrArgs a;
  a.set_mode = true;
  a.mode = 01777;
  a.set_atime = a.set_mtime = true;
  a.atime = Ts(10, 10);
  a.mtime = Ts(20, 20);
  ASSERT_EQ(nas_->SetAttr("d", a, &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 01777u);
  EXPECT_TRUE(SameTime(st.st_mtim, Ts(20, 20)));
  EXPECT_TRUE(SameTime(st.st_atim, Ts(10, 10)));
  ASSERT_EQ(nas_->SetAttr("", a, &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, Ts(20, 20)));
  SetAttrArgs size;
  size.set_size = true;
  EXPECT_EQ(nas_->SetAttr("d", size, &st), EISDIR);
}

TEST_P(BackendTest, SetAttrChmodAfterChownKeepsTheExplicitSetuidBit) {
  if (!IsRoot()) GTEST_SKIP() << "chown to another user needs root";
  NewFile("f", 0755);
  SetAttrArgs a;
  a.set_uid = a.set_gid = a.set_mode = true;
  a.uid = 4321;
  a.gid = 8765;
  a.mode = 04755;
  struct stat st;
  ASSERT_EQ(nas_->SetAttr("f", a, &st), 0);
  EXPECT_EQ(st.st_uid, 4321u);
  EXPECT_EQ(st.st_gid, 8765u);
  EXPECT_EQ(st.st_mode & 07777, 04755u);
}

TEST_P(BackendTest, RenameWithNoreplaceOntoAnExistingNameFailsWithEexist) {
  NewFile("a");
  NewFile("b");
  ASSERT_EQ(nas_->Write("a", 0, "A", Ts(5, 0)), 0);
  ASSERT_EQ(nas_->Write("b", 0, "B", Ts(5, 0)), 0);
  EXPECT_EQ(nas_->Rename("a", "b", RENAME_NOREPLACE, Ts(6, 0)), EEXIST);
  EXPECT_EQ(ReadFile(At("a")), "A");
  EXPECT_EQ(ReadFile(At("b")), "B");
  EXPECT_EQ(nas_->Rename("a", "c", RENAME_NOREPLACE, Ts(6, 0)), 0);
  EXPECT_FALSE(Exists(At("a")));
  EXPECT_EQ(ReadFile(At("c")), "A");
}

TEST_P(BackendTest, RenameExchangeSwapsTwoEntries) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(5, 0), &st), 0);
  NewFile("d/inner");
  NewFile("f");
  ASSERT_EQ(nas_->Write("f", 0, "file", Ts(5, 0)), 0);
  ASSERT_EQ(nas_->Rename("d", "f", RENAME_EXCHANGE, Ts(6, 0)), 0);
  EXPECT_EQ(ReadFile(At("d")), "file");
  EXPECT_TRUE(Exists(At("f/inner")));
}

TEST_P(BackendTest, RenameMovesAcrossDirectoriesAndStampsBothParents) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("src", 0755, who_, Ts(5, 0), &st), 0);
  ASSERT_EQ(nas_->Mkdir("dst", 0755, who_, Ts(5, 0), &st), 0);
  NewFile("src/f");
  NewFile("dst/old");
  const timespec t = Ts(1700000000, 5);
  ASSERT_EQ(nas_->Rename("src/f", "dst/old", 0, t), 0);
  EXPECT_FALSE(Exists(At("src/f")));
  ASSERT_EQ(nas_->Stat("src", &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, t)) << Fmt(st.st_mtim);
  ASSERT_EQ(nas_->Stat("dst", &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, t)) << Fmt(st.st_mtim);
  EXPECT_EQ(nas_->Rename("src/missing", "dst/x", 0, t), ENOENT);
}

TEST_P(BackendTest, UnlinkRemovesAFileAndStampsTheParent) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(5, 0), &st), 0);
  NewFile("d/f");
  const timespec t = Ts(1700000003, 3);
  ASSERT_EQ(nas_->Unlink("d/f", t), 0);
  EXPECT_FALSE(Exists(At("d/f")));
  ASSERT_EQ(nas_->Stat("d", &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, t)) << Fmt(st.st_mtim);
  EXPECT_EQ(nas_->Unlink("d/f", t), ENOENT);
  EXPECT_EQ(nas_->Unlink("d", t), EISDIR);
}

TEST_P(BackendTest, RmdirRemovesOnlyAnEmptyDirectory) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(5, 0), &st), 0);
  NewFile("d/f");
  EXPECT_EQ(nas_->Rmdir("d", Ts(6, 0)), ENOTEMPTY);
  ASSERT_EQ(nas_->Unlink("d/f", Ts(6, 0)), 0);
  const timespec t = Ts(1700000004, 4);
  ASSERT_EQ(nas_->Rmdir("d", t), 0);
  EXPECT_FALSE(Exists(At("d")));
  ASSERT_EQ(nas_->Stat("", &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, t)) << Fmt(st.st_mtim);
}

TEST_P(BackendTest, SymlinkAndReadLinkRoundTrip) {
  struct stat st;
  ASSERT_EQ(nas_->Symlink("../some/where else", "l", who_, Ts(5, 0), &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  std::string target;
  ASSERT_EQ(nas_->ReadLink("l", &target), 0);
  EXPECT_EQ(target, "../some/where else");
  // Not a link: an error (the kernel says ENOENT for readlinkat(fd, "") on
  // a non-link where readlink(2) would say EINVAL; FUSE only asks for links).
  NewFile("f");
  EXPECT_NE(nas_->ReadLink("f", &target), 0);
}

TEST_P(BackendTest, LinkAddsASecondNameForTheSameInode) {
  NewFile("f");
  struct stat st, orig;
  ASSERT_EQ(nas_->Stat("f", &orig), 0);
  struct stat dst;
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(5, 0), &dst), 0);
  const timespec t = Ts(1700000005, 5);
  ASSERT_EQ(nas_->Link("f", "d/g", t, &st), 0);
  EXPECT_EQ(st.st_ino, orig.st_ino);
  EXPECT_EQ(st.st_nlink, 2u);
  ASSERT_EQ(nas_->Write("d/g", 0, "shared", Ts(6, 0)), 0);
  EXPECT_EQ(ReadFile(At("f")), "shared");
  ASSERT_EQ(nas_->Stat("d", &dst), 0);
  EXPECT_TRUE(SameTime(dst.st_mtim, t)) << Fmt(dst.st_mtim);
  EXPECT_EQ(nas_->Link("f", "d/g", t, &st), EEXIST);
}

TEST_P(BackendTest, UserXattrsCanBeSetReadListedAndRemoved) {
  NewFile("f");
  int r = nas_->SetXattr("f", "user.color", "blue", 0);
  if (r == EOPNOTSUPP) GTEST_SKIP() << "no user xattrs on " << root_;
  ASSERT_EQ(r, 0);
  ASSERT_EQ(nas_->SetXattr("f", "user.shape", std::string("sq\0re", 5), 0), 0);
  EXPECT_EQ(nas_->SetXattr("f", "user.color", "red", XATTR_CREATE), EEXIST);
  EXPECT_EQ(nas_->SetXattr("f", "user.none", "x", XATTR_REPLACE), ENODATA);
  std::string v;
  ASSERT_EQ(nas_->GetXattr("f", "user.color", 0, &v), 0);
  EXPECT_EQ(v, "4");  // the size query answers the length
  ASSERT_EQ(nas_->GetXattr("f", "user.color", 64, &v), 0);
  EXPECT_EQ(v, "blue");
  ASSERT_EQ(nas_->GetXattr("f", "user.shape", 64, &v), 0);
  EXPECT_EQ(v, std::string("sq\0re", 5));
  EXPECT_EQ(nas_->GetXattr("f", "user.color", 2, &v), ERANGE);
  std::string list;
  ASSERT_EQ(nas_->ListXattr("f", 1024, &list), 0);
  std::vector<std::string> names;
  for (size_t i = 0; i < list.size();) {
    names.emplace_back(list.c_str() + i);
    i += names.back().size() + 1;
  }
  EXPECT_THAT(names, UnorderedElementsAre("user.color", "user.shape"));
  ASSERT_EQ(nas_->RemoveXattr("f", "user.color"), 0);
  EXPECT_EQ(nas_->GetXattr("f", "user.color", 64, &v), ENODATA);
  EXPECT_EQ(nas_->RemoveXattr("f", "user.color"), ENODATA);
}

TEST_P(BackendTest, ReadDirListsEveryEntryWithItsType) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("d", 0755, who_, Ts(5, 0), &st), 0);
  NewFile("d/file");
  ASSERT_EQ(nas_->Mkdir("d/sub", 0755, who_, Ts(5, 0), &st), 0);
  ASSERT_EQ(nas_->Symlink("file", "d/link", who_, Ts(5, 0), &st), 0);
  std::vector<DirEntry> out;
  ASSERT_EQ(nas_->ReadDir("d", &out), 0);
  std::map<std::string, unsigned char> got;
  for (auto& e : out) got[e.name] = e.type;
  EXPECT_EQ(got.size(), 5u);
  EXPECT_TRUE(got.count("."));
  EXPECT_TRUE(got.count(".."));
  EXPECT_EQ(got["file"], DT_REG);
  EXPECT_EQ(got["sub"], DT_DIR);
  EXPECT_EQ(got["link"], DT_LNK);
  EXPECT_EQ(nas_->ReadDir("d/file", &out), ENOTDIR);
  EXPECT_EQ(nas_->ReadDir("nope", &out), ENOENT);
}

TEST_P(BackendTest, StatChildrenMarksMissingNamesWithInodeZero) {
  NewFile("here");
  std::vector<struct stat> out;
  ASSERT_EQ(nas_->StatChildren("", {"here", "gone"}, &out), 0);
  ASSERT_EQ(out.size(), 2u);
  EXPECT_NE(out[0].st_ino, 0u);
  EXPECT_EQ(out[1].st_ino, 0u);
}

TEST_P(BackendTest, ReadReturnsShortOnlyAtEndOfFile) {
  // Large enough that the kernel may split the read.
  const size_t size = (3 << 20) + 12345;
  std::string data(size, '\0');
  std::mt19937 rng(7);
  for (auto& c : data) c = static_cast<char>(rng());
  WriteFile(At("big"), data);
  std::string got;
  ASSERT_EQ(nas_->Read("big", 0, size, &got), 0);
  EXPECT_EQ(got.size(), size);
  EXPECT_TRUE(got == data);
  ASSERT_EQ(nas_->Read("big", 1000, 2 << 20, &got), 0);
  EXPECT_EQ(got.size(), static_cast<size_t>(2 << 20));
  EXPECT_TRUE(got == data.substr(1000, 2 << 20));
  // Across the end: short, exactly what is left.
  ASSERT_EQ(nas_->Read("big", static_cast<off_t>(size - 10), 4096, &got), 0);
  EXPECT_EQ(got, data.substr(size - 10));
  // At and past the end: empty, not an error.
  ASSERT_EQ(nas_->Read("big", static_cast<off_t>(size), 10, &got), 0);
  EXPECT_EQ(got, "");
  ASSERT_EQ(nas_->Read("big", static_cast<off_t>(size + 100), 10, &got), 0);
  EXPECT_EQ(got, "");
}

TEST_P(BackendTest, HashIsTheSameForEqualContentAndDiffersOtherwise) {
  WriteFile(At("a"), "same content");
  WriteFile(At("b"), "same content");
  WriteFile(At("c"), "same contenT");
  uint64_t ha = 0, hb = 0, hc = 0;
  ASSERT_EQ(nas_->Hash("a", &ha), 0);
  ASSERT_EQ(nas_->Hash("b", &hb), 0);
  ASSERT_EQ(nas_->Hash("c", &hc), 0);
  EXPECT_EQ(ha, hb);
  EXPECT_NE(ha, hc);
}

// ---- confinement ----

TEST_P(BackendTest, StatThroughASymlinkedDirectoryLeavingTheNasFails) {
  ASSERT_EQ(::symlink(outside_.c_str(), At("link").c_str()), 0);
  struct stat st;
  int r = nas_->Stat("link/file", &st);
  EXPECT_THAT(r, AnyOf(Eq(ELOOP), Eq(EXDEV), Eq(ENOENT))) << std::strerror(r);
  std::string data;
  r = nas_->Read("link/file", 0, 100, &data);
  EXPECT_THAT(r, AnyOf(Eq(ELOOP), Eq(EXDEV), Eq(ENOENT))) << std::strerror(r);
  std::vector<DirEntry> list;
  EXPECT_NE(nas_->ReadDir("link", &list), 0);
  uint64_t h;
  EXPECT_NE(nas_->Hash("link/file", &h), 0);
}

TEST_P(BackendTest, CreatingThroughASymlinkedDirectoryFailsAndCreatesNothingOutside) {
  ASSERT_EQ(::symlink(outside_.c_str(), At("link").c_str()), 0);
  struct stat st;
  int r = nas_->Create("link/new", O_EXCL, 0644, who_, Ts(5, 0), &st);
  EXPECT_THAT(r, AnyOf(Eq(ELOOP), Eq(EXDEV), Eq(ENOENT))) << std::strerror(r);
  EXPECT_NE(nas_->Create("link/new2", 0, 0644, who_, Ts(5, 0), &st), 0);
  EXPECT_NE(nas_->Mkdir("link/newdir", 0755, who_, Ts(5, 0), &st), 0);
  EXPECT_NE(nas_->Symlink("x", "link/newlink", who_, Ts(5, 0), &st), 0);
  EXPECT_NE(nas_->Mknod("link/fifo", S_IFIFO | 0644, 0, who_, Ts(5, 0), &st), 0);
  NewFile("inside");
  EXPECT_NE(nas_->Link("inside", "link/hardlink", Ts(5, 0), &st), 0);
  EXPECT_NE(nas_->Rename("inside", "link/moved", 0, Ts(5, 0)), 0);
  EXPECT_TRUE(Exists(At("inside")));
  for (const char* n : {"new", "new2", "newdir", "newlink", "fifo", "hardlink", "moved"})
    EXPECT_FALSE(Exists(outside_ + "/" + n)) << n << " was created outside the NAS";
}

TEST_P(BackendTest, ChangingAFileThroughASymlinkedDirectoryLeavesItAlone) {
  ASSERT_EQ(::symlink(outside_.c_str(), At("link").c_str()), 0);
  struct stat before;
  ASSERT_EQ(::stat((outside_ + "/file").c_str(), &before), 0);
  EXPECT_NE(nas_->Write("link/file", 0, "PWNED", Ts(5, 0)), 0);
  SetAttrArgs a;
  a.set_size = true;
  a.size = 0;
  a.set_mode = true;
  a.mode = 0777;
  struct stat st;
  EXPECT_NE(nas_->SetAttr("link/file", a, &st), 0);
  EXPECT_NE(nas_->Fallocate("link/file", 0, 0, 4096, Ts(5, 0)), 0);
  EXPECT_NE(nas_->SetXattr("link/file", "user.x", "y", 0), 0);
  EXPECT_NE(nas_->Unlink("link/file", Ts(5, 0)), 0);
  EXPECT_NE(nas_->Rename("link/file", "stolen", 0, Ts(5, 0)), 0);
  EXPECT_EQ(ReadFile(outside_ + "/file"), "outside");
  struct stat after;
  ASSERT_EQ(::stat((outside_ + "/file").c_str(), &after), 0);
  EXPECT_EQ(after.st_mode, before.st_mode);
  EXPECT_FALSE(Exists(At("stolen")));
}

TEST_P(BackendTest, ARelativeSymlinkClimbingOutOfTheNasIsNotFollowed) {
  std::string out_name = std::filesystem::path(outside_).filename();
  ASSERT_EQ(::symlink(("../" + out_name).c_str(), At("up").c_str()), 0);
  struct stat st;
  EXPECT_NE(nas_->Stat("up/file", &st), 0);
  EXPECT_NE(nas_->Create("up/new", O_EXCL, 0644, who_, Ts(5, 0), &st), 0);
  EXPECT_FALSE(Exists(outside_ + "/new"));
}

TEST_P(BackendTest, PathsWithDotDotThatLeaveTheNasFail) {
  std::string out_name = std::filesystem::path(outside_).filename();
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("sub", 0755, who_, Ts(5, 0), &st), 0);
  for (const std::string& p : {"../" + out_name + "/file", "sub/../../" + out_name + "/file",
                               std::string(".."), std::string("sub/../..")}) {
    int r = nas_->Stat(p, &st);
    EXPECT_NE(r, 0) << p << " resolved outside the NAS";
    std::string data;
    EXPECT_NE(nas_->Read(p, 0, 10, &data), 0) << p;
    EXPECT_NE(nas_->Write(p, 0, "PWNED", Ts(5, 0)), 0) << p;
  }
  for (const std::string& p : {"../" + out_name + "/new", "sub/../../" + out_name + "/new"}) {
    EXPECT_NE(nas_->Create(p, O_EXCL, 0644, who_, Ts(5, 0), &st), 0) << p;
    EXPECT_NE(nas_->Mkdir(p + "dir", 0755, who_, Ts(5, 0), &st), 0) << p;
    EXPECT_NE(nas_->Symlink("x", p + "link", who_, Ts(5, 0), &st), 0) << p;
  }
  EXPECT_NE(nas_->Unlink("../" + out_name + "/file", Ts(5, 0)), 0);
  EXPECT_NE(nas_->Rename("../" + out_name + "/file", "stolen", 0, Ts(5, 0)), 0);
  EXPECT_EQ(ReadFile(outside_ + "/file"), "outside");
  for (const char* n : {"new", "newdir", "newlink"})
    EXPECT_FALSE(Exists(outside_ + "/" + n)) << n << " was created outside the NAS";
  EXPECT_FALSE(Exists(At("stolen")));
}

TEST_P(BackendTest, AnAbsoluteSymlinkAsTheLastComponentIsStatedButNeverFollowed) {
  const std::string target = outside_ + "/file";
  ASSERT_EQ(::symlink(target.c_str(), At("abs").c_str()), 0);
  struct stat st;
  ASSERT_EQ(nas_->Stat("abs", &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  std::string link;
  ASSERT_EQ(nas_->ReadLink("abs", &link), 0);
  EXPECT_EQ(link, target);

  std::string data;
  int r = nas_->Read("abs", 0, 100, &data);
  EXPECT_THAT(r, AnyOf(Eq(ELOOP), Eq(EXDEV))) << std::strerror(r);
  EXPECT_NE(nas_->Write("abs", 0, "PWNED", Ts(5, 0)), 0);
  EXPECT_NE(nas_->Create("abs", O_TRUNC, 0644, who_, Ts(5, 0), &st), 0);
  uint64_t h;
  EXPECT_NE(nas_->Hash("abs", &h), 0);
  EXPECT_NE(nas_->Fsync("abs", false), 0);
  SetAttrArgs size;
  size.set_size = true;
  size.size = 0;
  EXPECT_NE(nas_->SetAttr("abs", size, &st), 0);
  SetAttrArgs mode;
  mode.set_mode = true;
  mode.mode = 0777;
  EXPECT_NE(nas_->SetAttr("abs", mode, &st), 0);
  EXPECT_EQ(nas_->GetXattr("abs", "user.x", 10, &data), ENODATA);
  EXPECT_NE(nas_->SetXattr("abs", "user.x", "y", 0), 0);

  EXPECT_EQ(ReadFile(target), "outside");
  struct stat out;
  ASSERT_EQ(::stat(target.c_str(), &out), 0);
  EXPECT_NE(out.st_mode & 07777, 0777u);
  char v[8];
  EXPECT_LT(::getxattr(target.c_str(), "user.x", v, sizeof v), 0);
}

TEST_P(BackendTest, ChangingTheOwnerOfASymlinkLeavesItsTargetAlone) {
  if (!IsRoot()) GTEST_SKIP() << "chown to another user needs root";
  const std::string target = outside_ + "/file";
  ASSERT_EQ(::symlink(target.c_str(), At("abs").c_str()), 0);
  struct stat before;
  ASSERT_EQ(::stat(target.c_str(), &before), 0);
  SetAttrArgs a;
  a.set_uid = a.set_gid = true;
  a.uid = 4321;
  a.gid = 8765;
  a.set_mtime = true;
  a.mtime = Ts(77, 77);
  struct stat st;
  ASSERT_EQ(nas_->SetAttr("abs", a, &st), 0);
  EXPECT_TRUE(S_ISLNK(st.st_mode));
  EXPECT_EQ(st.st_uid, 4321u);
  EXPECT_TRUE(SameTime(st.st_mtim, Ts(77, 77)));
  struct stat after;
  ASSERT_EQ(::stat(target.c_str(), &after), 0);
  EXPECT_EQ(after.st_uid, before.st_uid);
  EXPECT_EQ(after.st_gid, before.st_gid);
  EXPECT_TRUE(SameTime(after.st_mtim, before.st_mtim));
}

TEST_P(BackendTest, CreatingOverADanglingSymlinkDoesNotCreateItsTarget) {
  const std::string target = outside_ + "/created-through-link";
  ASSERT_EQ(::symlink(target.c_str(), At("dangling").c_str()), 0);
  struct stat st;
  EXPECT_NE(nas_->Create("dangling", 0, 0644, who_, Ts(5, 0), &st), 0);
  EXPECT_NE(nas_->Create("dangling", O_TRUNC, 0644, who_, Ts(5, 0), &st), 0);
  EXPECT_EQ(nas_->Create("dangling", O_EXCL, 0644, who_, Ts(5, 0), &st), EEXIST);
  EXPECT_FALSE(Exists(target));
}

TEST_P(BackendTest, ADirectorySwappedForASymlinkBehindOurBackIsNotFollowed) {
  struct stat st;
  ASSERT_EQ(nas_->Mkdir("www", 0755, who_, Ts(5, 0), &st), 0);
  NewFile("www/index.html");
  ASSERT_EQ(nas_->Stat("www/index.html", &st), 0);
  // Someone on the NAS replaces the directory with a link to elsewhere.
  std::filesystem::remove_all(At("www"));
  ASSERT_EQ(::symlink(outside_.c_str(), At("www").c_str()), 0);
  EXPECT_NE(nas_->Stat("www/file", &st), 0);
  EXPECT_NE(nas_->Create("www/index.html", O_EXCL, 0644, who_, Ts(5, 0), &st), 0);
  EXPECT_FALSE(Exists(outside_ + "/index.html"));
}

TEST_P(BackendTest, JoinPathAndIsFaultErrnoBehaveAsDocumented) {
  EXPECT_EQ(JoinPath("", "c"), "c");
  EXPECT_EQ(JoinPath("a/b", "c"), "a/b/c");
  EXPECT_TRUE(IsFaultErrno(EIO));
  EXPECT_TRUE(IsFaultErrno(ETIMEDOUT));
  EXPECT_FALSE(IsFaultErrno(ENOENT));
  EXPECT_FALSE(IsFaultErrno(EEXIST));
}

// ---- Issue 10: hostile entries on the NAS ---------------------------------

// Runs fn on a thread and says whether it returned within `limit` (a call
// stuck on a FIFO would never return: the thread is then left behind).
bool ReturnsWithin(std::function<void()> fn, std::chrono::milliseconds limit) {
  auto done = std::make_shared<std::atomic<bool>>(false);
  std::thread([fn, done] {
    fn();
    *done = true;
  }).detach();
  auto until = std::chrono::steady_clock::now() + limit;
  while (!*done && std::chrono::steady_clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return *done;
}

// A FIFO or a device where a file should be is never opened for data:
// opening a FIFO blocks until a peer comes, and a device is this machine's.
TEST_P(BackendTest, AFifoOrDeviceOnTheNasIsNeverOpenedForData) {
  ASSERT_EQ(::mkfifo(At("fifo").c_str(), 0666), 0);
  std::vector<std::string> names = {"fifo"};
  if (IsRoot() && ::mknod(At("null").c_str(), S_IFCHR | 0666, makedev(1, 3)) == 0) names.push_back("null");
  for (const auto& n : names) {
    SCOPED_TRACE(n);
    int r[6] = {-1, -1, -1, -1, -1, -1};
    bool regular_fd = true;
    ASSERT_TRUE(ReturnsWithin(
        [&, this] {
          std::string data;
          uint64_t h;
          struct stat st;
          r[0] = nas_->Read(n, 0, 10, &data);
          r[1] = nas_->Write(n, 0, "x", Ts(5, 0));
          r[2] = nas_->Hash(n, &h);
          r[3] = nas_->Fsync(n, false);
          r[4] = nas_->Create(n, 0, 0644, who_, Ts(5, 0), &st);
          regular_fd = nas_->OpenIfRegular(n).valid();
          auto f = nas_->OpenBeneath(n, O_WRONLY | O_CREAT | O_TRUNC, 0600);
          r[5] = f ? 0 : f.error();
        },
        std::chrono::seconds(3)))
        << "a call blocked on " << n;
    for (int i = 0; i < 6; ++i) EXPECT_NE(r[i], 0) << "call " << i << " opened " << n;
    EXPECT_FALSE(regular_fd);
  }
  struct stat st;
  ASSERT_EQ(::lstat(At("fifo").c_str(), &st), 0);
  EXPECT_TRUE(S_ISFIFO(st.st_mode)) << "the FIFO was replaced";
}

// The reproduced escape of issue 10: a user who can write a NAS directory
// renames a symlink to an outside file over each name the daemon creates
// (O_CREAT|O_EXCL, set-id mode, for an unprivileged caller). The daemon's
// chmod used to follow it and made the outside root-owned file 6777. The
// new entry is finished through its own fd, so the outside file never
// changes, whatever the timing.
TEST_P(BackendTest, ASymlinkSwappedOverANewNameNeverRedirectsItsChmodOrChown) {
  if (!IsRoot()) GTEST_SKIP() << "needs root (the daemon's chown)";
  const std::string target = outside_ + "/file";
  ASSERT_EQ(::chmod(target.c_str(), 0600), 0);
  ASSERT_EQ(::mkdir(At("pub").c_str(), 0777), 0);
  Caller nobody{65534, 65534};
  std::atomic<int> current{-1};
  std::atomic<bool> stop{false};
  std::atomic<long> swaps{0};
  std::thread racer([&] {
    std::string tmp = At("pub/.swap");
    while (!stop) {
      int i = current.load();
      if (i < 0) continue;
      ::unlink(tmp.c_str());
      if (::symlink(target.c_str(), tmp.c_str()) != 0) continue;
      if (::rename(tmp.c_str(), At("pub/f" + std::to_string(i)).c_str()) == 0) ++swaps;
    }
  });
  int created = 0;
  for (int i = 0; i < 3000; ++i) {
    current = i;
    struct stat st;
    if (nas_->Create("pub/f" + std::to_string(i), O_EXCL, 06777, nobody, Ts(7, 0), &st) == 0) ++created;
  }
  stop = true;
  racer.join();
  struct stat st;
  ASSERT_EQ(::stat(target.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u) << "the outside file's mode was changed through a swapped symlink";
  EXPECT_EQ(st.st_uid, 0u) << "the outside file's owner was changed";
  EXPECT_EQ(ReadFile(target), "outside");
  EXPECT_GT(swaps.load(), 0) << "the racer never swapped a name: the test proves nothing";
  std::printf("%d creates, %ld swaps\n", created, swaps.load());
}

// ---- the directory fd cache ----

// Deep paths are served from the cache: each level is opened beneath the
// one above it, once.
TEST_P(BackendTest, ADeepPathIsResolvedFromTheCachedParent) {
  if (!GetParam()) GTEST_SKIP() << "cache off";
  std::string dir;
  for (int i = 0; i < 40; ++i) {
    dir = JoinPath(dir, "d" + std::to_string(i));
    ASSERT_EQ(nas_->Mkdir(dir, 0755, Caller{}, Ts(1, 0), &scratch_), 0) << dir;
  }
  NewFile(dir + "/f");
  ASSERT_EQ(nas_->Write(dir + "/f", 0, "deep", Ts(2, 0)), 0);
  const uint64_t hits = nas_->dir_cache().hits();
  std::string out;
  for (int i = 0; i < 10; ++i) ASSERT_EQ(nas_->Read(dir + "/f", 0, 10, &out), 0);
  EXPECT_EQ(out, "deep");
  EXPECT_GE(nas_->dir_cache().hits() - hits, 10u);
  EXPECT_LE(nas_->dir_cache().size(), 256u);
  // Outside a Scope (a change, the replay, the copy): from the root.
  const uint64_t before = nas_->dir_cache().hits() + nas_->dir_cache().misses();
  std::thread([&] { EXPECT_EQ(nas_->Read(dir + "/f", 0, 10, &out), 0); }).join();
  EXPECT_EQ(nas_->dir_cache().hits() + nas_->dir_cache().misses(), before) << "a call outside a Scope used the cache";
}

// This server's renames and removals take effect at once: the old path is
// gone, the new one works, a directory made again at the old name is the
// new one.
TEST_P(BackendTest, OwnRenamesAndRemovalsForgetTheCachedDirectories) {
  if (!GetParam()) GTEST_SKIP() << "cache off";
  ASSERT_EQ(nas_->Mkdir("a", 0755, Caller{}, Ts(1, 0), &scratch_), 0);
  ASSERT_EQ(nas_->Mkdir("a/b", 0755, Caller{}, Ts(1, 0), &scratch_), 0);
  NewFile("a/b/f");
  struct stat st;
  ASSERT_EQ(nas_->Stat("a/b/f", &st), 0);
  ASSERT_EQ(nas_->Rename("a", "z", 0, Ts(2, 0)), 0);
  EXPECT_EQ(nas_->Stat("a/b/f", &st), ENOENT);
  EXPECT_EQ(nas_->Stat("z/b/f", &st), 0);
  // Made again under the old name: the new directory, not the moved one.
  ASSERT_EQ(nas_->Mkdir("a", 0755, Caller{}, Ts(3, 0), &scratch_), 0);
  ASSERT_EQ(nas_->Mkdir("a/b", 0755, Caller{}, Ts(3, 0), &scratch_), 0);
  NewFile("a/b/g");
  EXPECT_TRUE(Exists(At("a/b/g")));
  EXPECT_FALSE(Exists(At("z/b/g")));
  // rmdir, then a file where the directory was.
  ASSERT_EQ(nas_->Unlink("a/b/g", Ts(4, 0)), 0);
  ASSERT_EQ(nas_->Rmdir("a/b", Ts(4, 0)), 0);
  EXPECT_EQ(nas_->Stat("a/b/g", &st), ENOENT);
  NewFile("a/b");
  EXPECT_EQ(nas_->Stat("a/b/g", &st), ENOTDIR);
  // A whole tree removed.
  ASSERT_EQ(nas_->Stat("z/b/f", &st), 0);
  ASSERT_EQ(nas_->RemoveTree("z"), 0);
  EXPECT_EQ(nas_->Stat("z/b/f", &st), ENOENT);
}

// Another web server moves a directory: the cached fd follows it for at
// most the ttl, then the path is resolved afresh. A directory swapped for
// a symlink leading out of the NAS is never followed, cached or not.
TEST_P(BackendTest, ADirectoryMovedByAnotherServerIsSeenWhereItIsOnceTheTtlPasses) {
  if (!GetParam()) GTEST_SKIP() << "cache off";
  nas_->SetDirCacheTtl(std::chrono::milliseconds(200));
  ASSERT_EQ(nas_->Mkdir("a", 0755, Caller{}, Ts(1, 0), &scratch_), 0);
  ASSERT_EQ(nas_->Mkdir("a/b", 0755, Caller{}, Ts(1, 0), &scratch_), 0);
  NewFile("a/b/f");
  struct stat st;
  ASSERT_EQ(nas_->Stat("a/b/f", &st), 0);
  // The other server: a/b moved to c, and a symlink to the outside put in
  // its place.
  ASSERT_EQ(::rename(At("a/b").c_str(), At("c").c_str()), 0);
  ASSERT_EQ(::symlink(outside_.c_str(), At("a/b").c_str()), 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(nas_->Stat("a/b/f", &st), ELOOP);
  EXPECT_EQ(nas_->Stat("a/b/file", &st), ELOOP) << "the symlink out of the NAS was followed";
  EXPECT_EQ(nas_->Stat("c/f", &st), 0);
  EXPECT_EQ(ReadFile(outside_ + "/file"), "outside");
}

INSTANTIATE_TEST_SUITE_P(DirCache, BackendTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& i) { return i.param ? "Cached" : "FromRoot"; });

// A step that holds the copy's lock exclusively makes several NAS calls;
// each write through the mount waits for it. StepDeadline gives the calls
// one budget between them: past it, a call fails with ETIMEDOUT at once and
// never runs (a step must not write after its lock is gone).
TEST(StepDeadlineTest, CallsInAScopeShareOneBudgetAndLateOnesNeverRun) {
  std::string root = MakeTemp("/tmp/nasfs-backend-nas-XXXXXX");
  Backend nas(Role::kMaster, root, 2, std::chrono::milliseconds(5000));
  ASSERT_TRUE(nas.OpenRoot());
  nas.Start();
  std::atomic<int> ran{0};
  auto slow = [&ran] {
    ++ran;
    std::this_thread::sleep_for(std::chrono::milliseconds(150));
    return 0;
  };
  std::vector<int> results;
  {
    StepDeadline step(std::chrono::milliseconds(400));
    EXPECT_LE(StepDeadline::Current(), Clock::now() + std::chrono::milliseconds(400));
    for (int i = 0; i < 6; ++i) results.push_back(nas.Run(slow));
    {
      // A file's bytes under the lock: each chunk its own io_timeout.
      StepDeadline::Lift bulk;
      EXPECT_EQ(StepDeadline::Current(), Clock::time_point::max());
      EXPECT_EQ(nas.Run(slow), 0) << "a lifted call was cut off by the step's budget";
    }
    EXPECT_EQ(nas.Run(slow), ETIMEDOUT) << "the Lift outlived its scope";
  }
  EXPECT_EQ(StepDeadline::Current(), Clock::time_point::max());
  EXPECT_EQ(nas.Run(slow), 0) << "the step's budget outlived its scope";
  // 150 ms each in a 400 ms budget: two or three ran (the third cut off at
  // the deadline), and none after one failed.
  int ok = static_cast<int>(std::count(results.begin(), results.end(), 0));
  EXPECT_GE(ok, 1);
  EXPECT_LE(ok, 3);
  for (size_t i = static_cast<size_t>(ok); i < results.size(); ++i) EXPECT_EQ(results[i], ETIMEDOUT) << "call " << i;
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // an abandoned call finishes
  EXPECT_LE(ran.load(), ok + 1 + 2) << "calls past the budget ran";
  std::error_code ec;
  std::filesystem::remove_all(root, ec);
}

// A StepLock's budget starts once the lock is held, not while it waits.
TEST(StepDeadlineTest, AStepLocksBudgetStartsOnceTheLockIsHeld) {
  SharedGate gate;
  Clock::time_point got{};
  std::thread other;
  {
    WriterLock held(&gate);
    other = std::thread([&] {
      StepLock step(&gate, std::chrono::milliseconds(1000));
      got = StepDeadline::Current();
    });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
  }
  other.join();
  auto released = Clock::now();
  EXPECT_GT(got, released + std::chrono::milliseconds(600)) << "the wait for the lock was counted";
  EXPECT_EQ(StepDeadline::Current(), Clock::time_point::max());
}

}  // namespace
}  // namespace nasfs
