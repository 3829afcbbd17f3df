// The nasfs command line: it returns only once the mount is usable, refuses
// bad input with one clear line and no mount, documents its options, and its
// daemon goes away with the mount.

#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <memory>

#include <gtest/gtest.h>

#include "tests/e2e/mount_fixture.h"
#include "tests/e2e/tree_compare.h"

namespace nasfs::e2e {
namespace {

constexpr long kFuseSuperMagic = 0x65735546;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class MountTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NASFS_E2E_REQUIRE_MOUNTS();
    ASSERT_TRUE(ws_.ok()) << ws_.error();
  }

  // A refused mount: non-zero exit, something on stderr, no mount left.
  void ExpectRefused(const MountedNasfs& m, const std::string& mentions) {
    EXPECT_FALSE(m.command().timed_out) << m.command().Describe();
    EXPECT_NE(m.command().exit_code, 0) << m.command().Describe();
    EXPECT_FALSE(m.mounted());
    EXPECT_FALSE(m.command().err.empty()) << "no message on stderr: " << m.command().Describe();
    // ARCHITECTURE.md: "exits non-zero with one clear line on stderr".
    std::string err = m.command().err;
    while (!err.empty() && err.back() == '\n') err.pop_back();
    EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 0) << "more than one line on stderr:\n" << m.command().err;
    if (!mentions.empty()) {
      EXPECT_TRUE(Contains(m.command().err, mentions))
          << "the message does not mention '" << mentions << "': " << m.command().Describe();
    }
    EXPECT_FALSE(FindMount(m.mountpoint()).has_value()) << m.mountpoint() << " is mounted after a refusal";
  }

  Workspace ws_;
};

TEST_F(MountTest, TheCommandReturnsOnlyOnceTheMountIsUsable) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/hello.txt", "hello from the master"));
  MountedNasfs m(ws_);
  ASSERT_TRUE(m.command().ok()) << m.command().Describe();
  // Checked at the instant the command returned, without waiting.
  EXPECT_TRUE(m.listed_when_command_returned()) << "nasfs returned before the mount was listed";
  struct stat mnt_st {}, root_st {};
  ASSERT_EQ(stat(ws_.mnt().c_str(), &mnt_st), 0) << std::strerror(errno);
  ASSERT_EQ(stat(ws_.root().c_str(), &root_st), 0);
  EXPECT_NE(mnt_st.st_dev, root_st.st_dev) << "the mount point is still the bare directory";
  struct statfs sf {};
  ASSERT_EQ(statfs(ws_.mnt().c_str(), &sf), 0);
  EXPECT_EQ(sf.f_type, kFuseSuperMagic);
  EXPECT_EQ(ReadFile(ws_.mnt() + "/hello.txt").value_or("(unreadable)"), "hello from the master");
}

TEST_F(MountTest, TheMountIsListedAsFuseNasfs) {
  MountedNasfs m(ws_);
  ASSERT_TRUE(m.command().ok()) << m.command().Describe();
  auto entry = FindMount(ws_.mnt());
  ASSERT_TRUE(entry.has_value()) << ws_.mnt() << " not in /proc/self/mounts";
  EXPECT_EQ(entry->type, "fuse.nasfs");
  auto listed = RunCommand({"findmnt", "-n", "-t", "fuse.nasfs", "-o", "TARGET"}, Within(10s));
  EXPECT_TRUE(Contains(listed.out, ws_.mnt())) << listed.Describe();
}

TEST_F(MountTest, AMissingMasterDirectoryIsRefusedWithAMessageNamingIt) {
  MountSpec spec;
  spec.source = ws_.Path("no_such_master") + ":" + ws_.backup();
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "no_such_master");
}

TEST_F(MountTest, AMissingBackupDirectoryIsRefusedWithAMessageNamingIt) {
  MountSpec spec;
  spec.source = ws_.master() + ":" + ws_.Path("no_such_backup");
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "no_such_backup");
  // A refusal leaves no state behind: a marker on the master alone would
  // change how the next mount of this pair is judged.
  EXPECT_NE(access((ws_.master() + "/.nasfs").c_str(), F_OK), 0) << "a refused mount wrote .nasfs on the master";
}

TEST_F(MountTest, AMissingMountPointIsRefused) {
  MountedNasfs m(ws_, MountAt(ws_.Path("no_such_mountpoint")));
  ExpectRefused(m, "no_such_mountpoint");
}

TEST_F(MountTest, ANonNumericIoTimeoutIsRefusedWithAMessage) {
  MountedNasfs m(ws_, WithOptions("io_timeout=abc"));
  ExpectRefused(m, "io_timeout");
}

TEST_F(MountTest, AnUnknownOptionIsRefusedWithAMessage) {
  MountedNasfs m(ws_, WithOptions("bogus=1"));
  ExpectRefused(m, "bogus");
}

// Issue 10: impossible layouts were accepted (a copy recursing forever, a
// master root moved into .nasfs/displaced/, a daemon deadlocked on its own
// journal, a file mounted and answering EIO, a node name no file can hold).
// Each is refused at mount with one line, and nothing is left mounted or
// written on either NAS.
TEST_F(MountTest, ABackupInsideTheMasterIsRefused) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/index.html", "site"));
  std::string inner = ws_.master() + "/nested-backup";
  ASSERT_EQ(mkdir(inner.c_str(), 0755), 0);
  MountSpec spec;
  spec.source = ws_.master() + ":" + inner;
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "must not contain each other");
  EXPECT_NE(access((ws_.master() + "/.nasfs").c_str(), F_OK), 0) << "a refused mount wrote on the master";
}

TEST_F(MountTest, AMasterInsideTheBackupIsRefusedEvenWithSourceMaster) {
  ASSERT_TRUE(WriteFile(ws_.backup() + "/index.html", "site"));
  std::string inner = ws_.backup() + "/nested-master";
  ASSERT_EQ(mkdir(inner.c_str(), 0755), 0);
  ASSERT_TRUE(WriteFile(inner + "/page.html", "master page"));
  MountSpec spec;
  spec.source = inner + ":" + ws_.backup();
  spec.extra_options = "source=master";
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "must not contain each other");
  EXPECT_EQ(ReadFile(inner + "/page.html").value_or(""), "master page");
  EXPECT_NE(access((ws_.backup() + "/.nasfs").c_str(), F_OK), 0) << "a refused mount wrote on the backup";
}

// Paths alone cannot see a bind mount: the inode check can.
TEST_F(MountTest, ABackupThatIsABindMountOfTheMastersSubdirectoryIsRefused) {
  std::string sub = ws_.master() + "/sub";
  std::string alias = ws_.Path("alias");
  ASSERT_EQ(mkdir(sub.c_str(), 0755), 0);
  ASSERT_EQ(mkdir(alias.c_str(), 0755), 0);
  auto bind = RunCommand({"mount", "--bind", sub, alias}, Within(10s));
  ASSERT_TRUE(bind.ok()) << bind.Describe();
  struct Unbind {
    std::string path;
    ~Unbind() { RunCommand({"umount", "-l", path}, Within(10s)); }
  } unbind{alias};
  MountSpec spec;
  spec.source = ws_.master() + ":" + alias;
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "must not contain each other");
  EXPECT_NE(access((sub + "/.nasfs").c_str(), F_OK), 0) << "a refused mount wrote on the backup";
}

TEST_F(MountTest, AJournalInsideTheMountPointIsRefused) {
  MountSpec spec;
  spec.default_options = false;
  spec.extra_options = "control=" + ws_.control_socket() + ",journal=" + ws_.mnt() + "/journal";
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "own disk");
}

TEST_F(MountTest, AJournalOnANasIsRefused) {
  MountSpec spec;
  spec.default_options = false;
  spec.extra_options = "control=" + ws_.control_socket() + ",journal=" + ws_.backup() + "/.journal";
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "own disk");
  EXPECT_NE(access((ws_.backup() + "/.journal").c_str(), F_OK), 0);
}

TEST_F(MountTest, AControlSocketInsideTheMountPointIsRefused) {
  MountSpec spec;
  spec.default_options = false;
  spec.extra_options = "control=" + ws_.mnt() + "/ctl.sock,journal=" + ws_.journal_dir();
  MountedNasfs m(ws_, spec);
  ExpectRefused(m, "own disk");
}

TEST_F(MountTest, ARegularFileAsTheMountPointIsRefused) {
  std::string file = ws_.Path("not-a-dir");
  ASSERT_TRUE(WriteFile(file, "x"));
  MountedNasfs m(ws_, MountAt(file));
  ExpectRefused(m, "not a directory");
}

TEST_F(MountTest, ANodeNameTooLongForAFileNameIsRefused) {
  MountedNasfs m(ws_, WithOptions("node=" + std::string(65, 'n')));
  ExpectRefused(m, "longer than 64");
  MountedNasfs ok(ws_, WithOptions("node=" + std::string(64, 'n')));
  EXPECT_TRUE(ok.mounted()) << ok.error();
}

TEST_F(MountTest, MountingOverAnExistingNasfsMountIsRefused) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/first.txt", "first mount"));
  MountedNasfs first(ws_);
  ASSERT_TRUE(first.mounted()) << first.error();
  // A second, separate pair (own NAS, socket, journal) aimed at the same mount point.
  Workspace other;
  ASSERT_TRUE(other.ok()) << other.error();
  int before = 0;
  for (const auto& e : ReadMounts()) before += e.target == ws_.mnt() ? 1 : 0;
  {
    MountedNasfs second(other, MountAt(ws_.mnt()));
    EXPECT_NE(second.command().exit_code, 0) << "a second nasfs mounted over the first: "
                                             << second.command().Describe();
    EXPECT_FALSE(second.command().err.empty()) << second.command().Describe();
    int after = 0;
    for (const auto& e : ReadMounts()) after += e.target == ws_.mnt() ? 1 : 0;
    EXPECT_EQ(after, before) << "mounts stacked on " << ws_.mnt();
  }
  EXPECT_EQ(ReadFile(ws_.mnt() + "/first.txt").value_or("(unreadable)"), "first mount")
      << "the first mount no longer serves";
  EXPECT_TRUE(FindMount(ws_.mnt()).has_value());
}

TEST_F(MountTest, HelpExitsZeroAndDocumentsTheNasfsOptions) {
  auto r = RunCommand({NasfsBin(), "--help"}, Within(10s));
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  const std::string text = r.out + r.err;
  for (const char* opt : {"journal=", "control=", "node=", "io_timeout=", "cache_timeout=", "source=",
                          "control_group=", "threads=", "backend_threads="}) {
    EXPECT_TRUE(Contains(text, opt)) << "--help does not mention " << opt << ":\n" << text;
  }
}

TEST_F(MountTest, UmountOfTheMountPointUnmountsAndTheDaemonExits) {
  MountedNasfs m(ws_);
  ASSERT_TRUE(m.mounted()) << m.error();
  ASSERT_GT(m.daemon_pid(), 0) << "no nasfs process found for " << ws_.mnt();
  auto r = RunCommand({"umount", ws_.mnt()}, Within(15s));
  EXPECT_TRUE(r.ok()) << r.Describe();
  EXPECT_FALSE(FindMount(ws_.mnt()).has_value()) << "still mounted after umount";
  EXPECT_TRUE(m.WaitForDaemonExit(10s)) << "daemon pid " << m.daemon_pid() << " still running 10 s after umount";
  // The NAS are intact and the pair mounts again.
  MountedNasfs again(ws_);
  EXPECT_TRUE(again.mounted()) << again.error();
}

TEST_F(MountTest, FusermountUnmountAlsoStopsTheDaemon) {
  MountedNasfs m(ws_);
  ASSERT_TRUE(m.mounted()) << m.error();
  ASSERT_GT(m.daemon_pid(), 0);
  auto r = RunCommand({"fusermount3", "-u", ws_.mnt()}, Within(15s));
  EXPECT_TRUE(r.ok()) << r.Describe();
  EXPECT_TRUE(m.WaitForDaemonExit(10s)) << "daemon pid " << m.daemon_pid() << " still running";
}

}  // namespace
}  // namespace nasfs::e2e
