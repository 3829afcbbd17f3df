// ParseOptions: the nasfs command line, against real temporary directories
// (MASTER, BACKUP and MOUNTPOINT must exist; realpath resolves them).
#include <limits.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <initializer_list>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "fs/control_protocol.h"
#include "fs/options.h"

namespace nasfs {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class OptionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nasfs-options-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    master_ = dir_ + "/master";
    backup_ = dir_ + "/backup";
    mnt_ = dir_ + "/mnt";
    for (const auto* d : {&master_, &backup_, &mnt_}) ASSERT_EQ(::mkdir(d->c_str(), 0755), 0);
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  tl::expected<Options, std::string> Parse(std::initializer_list<std::string> args) {
    std::vector<std::string> owned{"nasfs"};
    owned.insert(owned.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : owned) argv.push_back(a.data());
    argv.push_back(nullptr);
    return ParseOptions(static_cast<int>(owned.size()), argv.data());
  }
  std::string Spec() const { return master_ + ":" + backup_; }
  // Parses MASTER:BACKUP MOUNTPOINT -o <opts> and returns the error text,
  // or "" when it parsed.
  std::string ErrorFor(const std::string& opts) {
    auto o = Parse({Spec(), mnt_, "-o", opts});
    return o ? std::string() : o.error();
  }

  std::string dir_, master_, backup_, mnt_;
};

TEST_F(OptionsTest, AFullCommandLineSetsEveryField) {
  auto o = Parse({Spec(), mnt_, "-o",
                  "io_timeout=250,node=web1,journal=/x,control=/y.sock,source=master,"
                  "cache_timeout=0.5,threads=8,backend_threads=4,replay_threads=2",
                  "-f"});
  ASSERT_TRUE(o) << o.error();
  EXPECT_EQ(o->master, master_);
  EXPECT_EQ(o->backup, backup_);
  EXPECT_EQ(o->source_spec, Spec());
  EXPECT_EQ(o->mountpoint, mnt_);
  EXPECT_EQ(o->io_timeout_ms, 250);
  EXPECT_EQ(o->node, "web1");
  EXPECT_EQ(o->journal_dir, "/x");
  EXPECT_EQ(o->control_socket, "/y.sock");
  EXPECT_EQ(o->source, "master");
  EXPECT_DOUBLE_EQ(o->cache_timeout_s, 0.5);
  EXPECT_EQ(o->fuse_threads, 8);
  EXPECT_EQ(o->backend_threads, 4);
  EXPECT_EQ(o->replay_threads, 2);
  EXPECT_TRUE(o->foreground);
  EXPECT_FALSE(o->debug);
  EXPECT_FALSE(o->show_help);
  EXPECT_THAT(o->fuse_mount_opts, IsEmpty());
}

TEST_F(OptionsTest, OptionsGluedToDashOAndBeforeThePositionalsParseTheSame) {
  auto o = Parse({"-oio_timeout=300,source=backup", Spec(), mnt_});
  ASSERT_TRUE(o) << o.error();
  EXPECT_EQ(o->io_timeout_ms, 300);
  EXPECT_EQ(o->source, "backup");
  EXPECT_EQ(o->mountpoint, mnt_);
}

TEST_F(OptionsTest, PathsAreMadeAbsoluteAndCanonical) {
  std::string rel_master = master_ + "/../master/.";
  auto o = Parse({rel_master + ":" + backup_ + "/", mnt_ + "//"});
  ASSERT_TRUE(o) << o.error();
  EXPECT_EQ(o->master, master_);
  EXPECT_EQ(o->backup, backup_);
  EXPECT_EQ(o->mountpoint, mnt_);
}

TEST_F(OptionsTest, DefaultsFollowTheMountIdAndTheHostName) {
  auto o = Parse({Spec(), mnt_});
  ASSERT_TRUE(o) << o.error();
  const std::string id = control::MountId(mnt_);
  ASSERT_FALSE(id.empty());
  EXPECT_EQ(o->io_timeout_ms, 1000);
  EXPECT_DOUBLE_EQ(o->cache_timeout_s, 1.0);
  EXPECT_EQ(o->journal_dir, "/var/lib/nasfs/" + id);
  EXPECT_EQ(o->control_socket, "/run/nasfs/" + id + ".sock");
  char host[HOST_NAME_MAX + 1] = {};
  ASSERT_EQ(gethostname(host, sizeof host - 1), 0);
  EXPECT_EQ(o->node, std::string(host));
  EXPECT_EQ(o->source, "");
  EXPECT_EQ(o->fuse_threads, 64);
  EXPECT_EQ(o->backend_threads, 16);
  EXPECT_EQ(o->replay_threads, 4);
  EXPECT_EQ(o->control_gid, static_cast<gid_t>(-1));
  EXPECT_FALSE(o->foreground);
  EXPECT_THAT(o->fuse_mount_opts, IsEmpty());
}

TEST_F(OptionsTest, DashDTurnsOnDebugAndForeground) {
  auto o = Parse({Spec(), mnt_, "-d"});
  ASSERT_TRUE(o) << o.error();
  EXPECT_TRUE(o->debug);
  EXPECT_TRUE(o->foreground);
}

TEST_F(OptionsTest, ASourceWithoutAColonIsRefused) {
  auto o = Parse({master_, mnt_});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr("MASTER:BACKUP"));
  EXPECT_THAT(o.error(), HasSubstr(master_));
}

TEST_F(OptionsTest, ASourceWithThreePartsIsRefused) {
  auto o = Parse({master_ + ":" + backup_ + ":" + mnt_, mnt_});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr("MASTER:BACKUP"));
}

TEST_F(OptionsTest, AMissingMasterDirectoryIsNamedInTheError) {
  std::string missing = dir_ + "/no-such-master";
  auto o = Parse({missing + ":" + backup_, mnt_});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr(missing));
  EXPECT_THAT(o.error(), HasSubstr("master"));
}

TEST_F(OptionsTest, AMissingBackupDirectoryIsNamedInTheError) {
  std::string missing = dir_ + "/no-such-backup";
  auto o = Parse({master_ + ":" + missing, mnt_});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr(missing));
  EXPECT_THAT(o.error(), HasSubstr("backup"));
}

TEST_F(OptionsTest, AMissingMountPointIsNamedInTheError) {
  std::string missing = dir_ + "/no-such-mnt";
  auto o = Parse({Spec(), missing});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr(missing));
}

TEST_F(OptionsTest, AMissingPositionalGivesTheUsageLine) {
  auto o = Parse({Spec()});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr("usage"));
}

TEST_F(OptionsTest, BadIoTimeoutsAreRefusedNamingTheOption) {
  for (const char* bad : {"io_timeout=abc", "io_timeout=0", "io_timeout=9", "io_timeout=600001",
                          "io_timeout=99999999999999999999999", "io_timeout=12ms", "io_timeout=",
                          "io_timeout"}) {
    std::string e = ErrorFor(bad);
    EXPECT_THAT(e, HasSubstr("io_timeout")) << bad << " was accepted";
  }
  EXPECT_EQ(ErrorFor("io_timeout=10"), "");
  EXPECT_EQ(ErrorFor("io_timeout=600000"), "");
}

TEST_F(OptionsTest, BadThreadCountsAndCacheTimeoutsAreRefused) {
  for (const char* bad : {"threads=1", "threads=x", "threads=1025", "backend_threads=0",
                          "backend_threads=257", "replay_threads=0", "replay_threads=17", "cache_timeout=-1", "cache_timeout=abc",
                          "cache_timeout=3601", "cache_timeout=nan", "cache_timeout="}) {
    EXPECT_NE(ErrorFor(bad), "") << bad << " was accepted";
  }
}

TEST_F(OptionsTest, AnUnknownFlagIsRefused) {
  auto o = Parse({Spec(), mnt_, "--bogus"});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr("--bogus"));
}

TEST_F(OptionsTest, RelativeJournalAndControlPathsAreRefused) {
  EXPECT_THAT(ErrorFor("journal=var/lib/nasfs"), HasSubstr("journal="));
  EXPECT_THAT(ErrorFor("control=nasfs.sock"), HasSubstr("control="));
}

TEST_F(OptionsTest, AnUnknownSourceIsRefused) {
  EXPECT_THAT(ErrorFor("source=bogus"), HasSubstr("source="));
  EXPECT_NE(ErrorFor("source="), "");
}

TEST_F(OptionsTest, AMountPointInsideANasIsRefused) {
  std::string inside = master_ + "/www";
  ASSERT_EQ(::mkdir(inside.c_str(), 0755), 0);
  auto o = Parse({Spec(), inside});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr(inside));
}

TEST_F(OptionsTest, ANasInsideTheMountPointIsRefused) {
  std::string nested = mnt_ + "/backup";
  ASSERT_EQ(::mkdir(nested.c_str(), 0755), 0);
  auto o = Parse({master_ + ":" + nested, mnt_});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr(nested));
}

TEST_F(OptionsTest, AMountPointBesideANasWithACommonPrefixIsAccepted) {
  // "/x/master2" is not inside "/x/master".
  std::string beside = master_ + "2";
  ASSERT_EQ(::mkdir(beside.c_str(), 0755), 0);
  auto o = Parse({Spec(), beside});
  EXPECT_TRUE(o) << o.error();
}

TEST_F(OptionsTest, TheSameDirectoryAsMasterAndBackupIsRefused) {
  auto o = Parse({master_ + ":" + master_ + "/.", mnt_});
  EXPECT_FALSE(o);
}

TEST_F(OptionsTest, MountHelperOptionsAreAcceptedAndNotPassedOn) {
  auto o = Parse({Spec(), mnt_, "-o",
                  "_netdev,nofail,x-systemd.automount,defaults,auto,noauto,user,users,nouser,"
                  "allow_other,default_permissions,rw,comment=systemd.x,x-systemd.requires=a.mount"});
  ASSERT_TRUE(o) << o.error();
  EXPECT_THAT(o->fuse_mount_opts, IsEmpty());
}

TEST_F(OptionsTest, UnknownFuseOptionsArePassedOnInOrder) {
  auto o = Parse({Spec(), mnt_, "-o", "ro,_netdev,noatime", "-o", "nosuid,,max_read=4096"});
  ASSERT_TRUE(o) << o.error();
  EXPECT_THAT(o->fuse_mount_opts, ElementsAre("ro", "noatime", "nosuid", "max_read=4096"));
}

TEST_F(OptionsTest, FsnameAndSubtypeAreNasfssOwn) {
  EXPECT_THAT(ErrorFor("fsname=x"), HasSubstr("fsname"));
  EXPECT_THAT(ErrorFor("subtype=x"), HasSubstr("subtype"));
}

TEST_F(OptionsTest, AnUnknownControlGroupIsRefused) {
  EXPECT_THAT(ErrorFor("control_group=no-such-group-nasfs-test"),
              HasSubstr("no-such-group-nasfs-test"));
}

TEST_F(OptionsTest, AKnownControlGroupResolvesToItsGid) {
  auto o = Parse({Spec(), mnt_, "-o", "control_group=root"});
  ASSERT_TRUE(o) << o.error();
  EXPECT_EQ(o->control_gid, 0u);
}

TEST_F(OptionsTest, ANodeNameWithASlashIsRefused) {
  EXPECT_THAT(ErrorFor("node=web/1"), HasSubstr("web/1"));
}

TEST_F(OptionsTest, HelpNeedsNoPositionalsAndSetsShowHelp) {
  for (const char* flag : {"--help", "-h"}) {
    auto o = Parse({flag});
    ASSERT_TRUE(o) << flag << ": " << o.error();
    EXPECT_TRUE(o->show_help) << flag;
  }
  auto v = Parse({"--version"});
  ASSERT_TRUE(v) << v.error();
  EXPECT_TRUE(v->show_version);
}

TEST_F(OptionsTest, UsageTextMentionsEveryNasfsOption) {
  const std::string u = UsageText();
  for (const char* opt : {"journal=", "control=", "control_group=", "node=", "io_timeout=",
                          "cache_timeout=", "source=", " threads=", "backend_threads=", "-f",
                          "--help"})
    EXPECT_THAT(u, HasSubstr(opt));
  // The documented defaults.
  EXPECT_THAT(u, HasSubstr("default 1000"));
  EXPECT_THAT(u, HasSubstr("/var/lib/nasfs/"));
  EXPECT_THAT(u, HasSubstr("/run/nasfs/"));
}

// Issue 10: impossible layouts are refused with one line.
TEST_F(OptionsTest, NasInsideTheOtherNasIsRefused) {
  ASSERT_EQ(::mkdir((master_ + "/inner").c_str(), 0755), 0);
  auto o = Parse({master_ + ":" + master_ + "/inner", mnt_});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr("must not contain each other"));
  o = Parse({master_ + "/inner:" + master_, mnt_});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr("must not contain each other"));
}

TEST_F(OptionsTest, AMountPointThatIsAFileIsRefused) {
  std::string file = dir_ + "/file";
  FILE* f = std::fopen(file.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fclose(f);
  auto o = Parse({Spec(), file});
  ASSERT_FALSE(o);
  EXPECT_THAT(o.error(), HasSubstr("not a directory"));
}

TEST_F(OptionsTest, JournalAndSocketMustBeOnTheLocalDisk) {
  EXPECT_THAT(ErrorFor("journal=" + mnt_ + "/j"), HasSubstr("inside the mount point"));
  EXPECT_THAT(ErrorFor("journal=" + mnt_), HasSubstr("inside the mount point"));
  EXPECT_THAT(ErrorFor("journal=" + master_ + "/j/deeper"), HasSubstr("inside the master NAS"));
  EXPECT_THAT(ErrorFor("journal=" + backup_ + "/../backup/j"), HasSubstr("inside the backup NAS"));
  EXPECT_THAT(ErrorFor("control=" + mnt_ + "/ctl.sock"), HasSubstr("inside the mount point"));
  EXPECT_THAT(ErrorFor("control=" + master_ + "/ctl.sock"), HasSubstr("inside the master NAS"));
  // Through a symlink that points into the mount point.
  std::string link = dir_ + "/link";
  ASSERT_EQ(::symlink(mnt_.c_str(), link.c_str()), 0);
  EXPECT_THAT(ErrorFor("journal=" + link + "/j"), HasSubstr("inside the mount point"));
  EXPECT_EQ(ErrorFor("journal=" + dir_ + "/journal"), "");
  auto o = Parse({Spec(), mnt_, "-o", "journal=" + dir_ + "/./x/../journal"});
  ASSERT_TRUE(o) << o.error();
  EXPECT_EQ(o->journal_dir, dir_ + "/journal");
}

TEST_F(OptionsTest, NodeNamesLongerThanAHostNameAreRefused) {
  EXPECT_EQ(ErrorFor("node=" + std::string(64, 'a')), "");
  EXPECT_THAT(ErrorFor("node=" + std::string(65, 'a')), HasSubstr("longer than 64"));
}

TEST_F(OptionsTest, ABindMountIsSeenAsTheDirectoryItShows) {
  std::string mi = dir_ + "/mountinfo";
  FILE* f = std::fopen(mi.c_str(), "w");
  ASSERT_NE(f, nullptr);
  std::fputs("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n"
             "2 1 8:1 /srv/nas/sub /mnt/alias rw - ext4 /dev/sda1 rw\n"
             "3 1 0:50 / /mnt/nfs rw shared:1 - nfs server:/x rw\n"
             "4 1 0:50 /deep /mnt/nfs2 rw - nfs server:/x rw\n"
             "5 1 8:1 /with\\040space /mnt/sp rw - ext4 x rw\n"
             "garbage line\n",
             f);
  std::fclose(f);
  FsLocation l = LocationOf("/mnt/alias/f", mi);
  EXPECT_EQ(l.dev, "8:1");
  EXPECT_EQ(l.path, "/srv/nas/sub/f");
  EXPECT_TRUE(Nested("/mnt/alias", "/srv/nas", mi));
  EXPECT_FALSE(Nested("/srv/nas", "/mnt/alias", mi));
  EXPECT_TRUE(Nested("/mnt/nfs2", "/mnt/nfs", mi)) << "two mounts of one export";
  EXPECT_FALSE(Nested("/mnt/nfs", "/mnt/nfs2", mi));
  EXPECT_FALSE(Nested("/mnt/nfs/a", "/srv", mi)) << "another filesystem";
  EXPECT_EQ(LocationOf("/mnt/sp/a", mi).path, "/with space/a");
  EXPECT_EQ(LocationOf("/etc", mi).path, "/etc");
  EXPECT_EQ(LocationOf("/etc", dir_ + "/missing").dev, "") << "no table: paths only";
}

}  // namespace
}  // namespace nasfs
