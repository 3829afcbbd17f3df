// Identity: DecidePairing against the table in docs/ARCHITECTURE.md
// ("Identity and first pairing"), row by row, and the marker files on a real
// temporary directory.
//
// The table, for reference ("empty": nothing but .nasfs and lost+found):
//   master               | backup                         | result
//   marker P, master     | marker P, backup               | mount
//   any marker           | another pair's, or roles swapped | refuse
//   marker P             | no marker                      | refuse, unless source=master: adopt it
//   no marker            | marker P                       | refuse, unless source=backup
//   no marker, any       | no marker, empty               | pair; copy master onto backup
//   no marker, empty     | no marker, non-empty           | refuse unless source=backup
//   no marker, non-empty | no marker, non-empty           | refuse unless source=master or source=backup
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fs/identity.h"

namespace nasfs {
namespace {

using ::testing::HasSubstr;

const std::string kMp = "/srv/nas_master";
const std::string kBp = "/srv/nas_backup";
const std::string kP = "0123456789abcdef0123456789abcdef";
const std::string kQ = "fedcba9876543210fedcba9876543210";

SideFacts Marked(const std::string& pair, Role role, bool empty = false) {
  SideFacts f;
  f.marker = Marker{pair, role, "2024-01-01T00:00:00.000Z"};
  f.empty = empty;
  return f;
}
SideFacts Unmarked(bool empty) {
  SideFacts f;
  f.empty = empty;
  return f;
}
bool IsPairId(const std::string& s) { return std::regex_match(s, std::regex("[0-9a-f]{32}")); }

auto Decide(const SideFacts& m, const SideFacts& b, const std::string& source = "") {
  return DecidePairing(m, b, source, kMp, kBp);
}

// ---- row 1: marker P master, marker P backup: mount ----

TEST(DecidePairingTest, MatchingMarkersMountWithoutCopyOrWrites) {
  for (bool empty : {false, true}) {
    auto p = Decide(Marked(kP, Role::kMaster, empty), Marked(kP, Role::kBackup, empty));
    ASSERT_TRUE(p) << p.error();
    EXPECT_EQ(p->pair_id, kP);
    EXPECT_FALSE(p->write_master_marker);
    EXPECT_FALSE(p->write_backup_marker);
    EXPECT_FALSE(p->copy_from.has_value());
    EXPECT_FALSE(p->displace);
  }
}

TEST(DecidePairingTest, MatchingMarkersIgnoreTheSourceOption) {
  for (const char* source : {"master", "backup"}) {
    auto p = Decide(Marked(kP, Role::kMaster), Marked(kP, Role::kBackup), source);
    ASSERT_TRUE(p) << p.error();
    EXPECT_FALSE(p->copy_from.has_value()) << source;
    EXPECT_FALSE(p->write_master_marker || p->write_backup_marker) << source;
  }
}

TEST(DecidePairingTest, ASyncPendingOnTheBackupResumesTheCopyFromTheMaster) {
  SideFacts b = Marked(kP, Role::kBackup);
  b.sync_pending = true;
  auto p = Decide(Marked(kP, Role::kMaster), b);
  ASSERT_TRUE(p) << p.error();
  ASSERT_TRUE(p->copy_from.has_value());
  EXPECT_EQ(*p->copy_from, Role::kMaster);
  EXPECT_FALSE(p->write_master_marker || p->write_backup_marker);
}

TEST(DecidePairingTest, ASyncPendingOnTheMasterResumesTheCopyFromTheBackup) {
  SideFacts m = Marked(kP, Role::kMaster);
  m.sync_pending = true;
  auto p = Decide(m, Marked(kP, Role::kBackup), "master");
  ASSERT_TRUE(p) << p.error();
  ASSERT_TRUE(p->copy_from.has_value());
  EXPECT_EQ(*p->copy_from, Role::kBackup);
}

// ---- row 2: another pair's marker, or roles swapped: refuse ----

TEST(DecidePairingTest, MarkersOfDifferentPairsAreRefusedWhateverTheSource) {
  for (const char* source : {"", "master", "backup"}) {
    auto p = Decide(Marked(kP, Role::kMaster), Marked(kQ, Role::kBackup), source);
    ASSERT_FALSE(p) << "source=" << source;
    EXPECT_THAT(p.error(), HasSubstr(kMp));
    EXPECT_THAT(p.error(), HasSubstr(kBp));
    EXPECT_THAT(p.error(), HasSubstr(kP.substr(0, 8)));
    EXPECT_THAT(p.error(), HasSubstr(kQ.substr(0, 8)));
  }
}

TEST(DecidePairingTest, ADifferentPairIsRefusedEvenWithASyncPending) {
  SideFacts b = Marked(kQ, Role::kBackup);
  b.sync_pending = true;
  EXPECT_FALSE(Decide(Marked(kP, Role::kMaster), b));
}

TEST(DecidePairingTest, SwappedRolesAreRefusedAsTheWrongOrder) {
  auto p = Decide(Marked(kP, Role::kBackup), Marked(kP, Role::kMaster));
  ASSERT_FALSE(p);
  EXPECT_THAT(p.error(), HasSubstr(kMp));
  EXPECT_THAT(p.error(), HasSubstr(kBp));
  EXPECT_THAT(p.error(), HasSubstr("wrong order"));
}

TEST(DecidePairingTest, TwoSidesClaimingTheSameRoleAreRefused) {
  EXPECT_FALSE(Decide(Marked(kP, Role::kMaster), Marked(kP, Role::kMaster)));
  EXPECT_FALSE(Decide(Marked(kP, Role::kBackup), Marked(kP, Role::kBackup)));
}

// ---- row 3: marker P / no marker: refuse unless source=master ----

TEST(DecidePairingTest, AnUnmarkedBackupIsRefusedWithTheSourceMasterHint) {
  for (bool empty : {true, false}) {
    auto p = Decide(Marked(kP, Role::kMaster), Unmarked(empty));
    ASSERT_FALSE(p) << "backup empty=" << empty;
    EXPECT_THAT(p.error(), HasSubstr(kBp));
    EXPECT_THAT(p.error(), HasSubstr(kMp));
    EXPECT_THAT(p.error(), HasSubstr("source=master"));
  }
}

TEST(DecidePairingTest, AnUnmarkedBackupIsRefusedWithSourceBackup) {
  EXPECT_FALSE(Decide(Marked(kP, Role::kMaster), Unmarked(true), "backup"));
  EXPECT_FALSE(Decide(Marked(kP, Role::kMaster), Unmarked(false), "backup"));
}

TEST(DecidePairingTest, SourceMasterAdoptsAnUnmarkedBackupIntoThePair) {
  for (bool empty : {true, false}) {
    auto p = Decide(Marked(kP, Role::kMaster), Unmarked(empty), "master");
    ASSERT_TRUE(p) << p.error();
    EXPECT_EQ(p->pair_id, kP);
    EXPECT_FALSE(p->write_master_marker);
    EXPECT_TRUE(p->write_backup_marker);
    ASSERT_TRUE(p->copy_from.has_value());
    EXPECT_EQ(*p->copy_from, Role::kMaster);
    EXPECT_EQ(p->displace, !empty) << "backup empty=" << empty;
  }
}

TEST(DecidePairingTest, AMasterMarkedBackupWithAnUnmarkedBackupIsRefused) {
  EXPECT_FALSE(Decide(Marked(kP, Role::kBackup), Unmarked(true), "master"));
}

// ---- row 4: no marker / marker P: refuse unless source=backup ----

TEST(DecidePairingTest, AnUnmarkedMasterIsRefusedWithTheSourceBackupHint) {
  for (bool empty : {true, false}) {
    auto p = Decide(Unmarked(empty), Marked(kP, Role::kBackup));
    ASSERT_FALSE(p) << "master empty=" << empty;
    EXPECT_THAT(p.error(), HasSubstr(kMp));
    EXPECT_THAT(p.error(), HasSubstr(kBp));
    EXPECT_THAT(p.error(), HasSubstr("source=backup"));
  }
  EXPECT_FALSE(Decide(Unmarked(true), Marked(kP, Role::kBackup), "master"));
}

TEST(DecidePairingTest, SourceBackupAdoptsAnUnmarkedMasterIntoThePair) {
  for (bool empty : {true, false}) {
    auto p = Decide(Unmarked(empty), Marked(kP, Role::kBackup), "backup");
    ASSERT_TRUE(p) << p.error();
    EXPECT_EQ(p->pair_id, kP);
    EXPECT_TRUE(p->write_master_marker);
    EXPECT_FALSE(p->write_backup_marker);
    ASSERT_TRUE(p->copy_from.has_value());
    EXPECT_EQ(*p->copy_from, Role::kBackup);
    EXPECT_EQ(p->displace, !empty);
  }
}

TEST(DecidePairingTest, ABackupMarkedMasterWithAnUnmarkedMasterIsRefused) {
  EXPECT_FALSE(Decide(Unmarked(true), Marked(kP, Role::kMaster), "backup"));
}

// The one-marker refusals say, in the same words either way round, which
// NAS looks new and which option adopts it (one helper serves both rows).
TEST(DecidePairingTest, OneMarkerRefusalsNameTheNewSideAndTheOptionThatAdoptsIt) {
  const std::string id = kP.substr(0, 8);
  auto unmarked_backup = Decide(Marked(kP, Role::kMaster), Unmarked(false));
  ASSERT_FALSE(unmarked_backup);
  EXPECT_EQ(unmarked_backup.error(),
            kBp + " has no nasfs marker but " + kMp + " belongs to pair " + id +
                ": the backup looks unmounted or new. Mount the NAS there, or to adopt it as a new backup mount "
                "once with -o source=master");
  auto unmarked_master = Decide(Unmarked(false), Marked(kP, Role::kBackup), "master");
  ASSERT_FALSE(unmarked_master);
  EXPECT_EQ(unmarked_master.error(),
            kMp + " has no nasfs marker but " + kBp + " belongs to pair " + id +
                ": the master looks unmounted or new. Mount the NAS there, or to adopt it as a new master mount "
                "once with -o source=backup");
  auto wrong_master = Decide(Marked(kP, Role::kBackup), Unmarked(true), "master");
  ASSERT_FALSE(wrong_master);
  EXPECT_EQ(wrong_master.error(), kMp + " is marked backup, not master");
  auto wrong_backup = Decide(Unmarked(true), Marked(kP, Role::kMaster), "backup");
  ASSERT_FALSE(wrong_backup);
  EXPECT_EQ(wrong_backup.error(), kBp + " is marked master, not backup");
}

// ---- row 5: no marker, any / no marker, empty: pair, copy master onto backup ----

TEST(DecidePairingTest, TwoEmptyUnmarkedSidesPairWithoutACopy) {
  auto p = Decide(Unmarked(true), Unmarked(true));
  ASSERT_TRUE(p) << p.error();
  EXPECT_TRUE(IsPairId(p->pair_id)) << p->pair_id;
  EXPECT_TRUE(p->write_master_marker);
  EXPECT_TRUE(p->write_backup_marker);
  EXPECT_FALSE(p->copy_from.has_value());
  EXPECT_FALSE(p->displace);
}

TEST(DecidePairingTest, AMasterWithDataAndAnEmptyBackupPairAndCopyMasterOntoBackup) {
  for (const char* source : {"", "master"}) {
    auto p = Decide(Unmarked(false), Unmarked(true), source);
    ASSERT_TRUE(p) << p.error();
    EXPECT_TRUE(IsPairId(p->pair_id)) << p->pair_id;
    EXPECT_TRUE(p->write_master_marker);
    EXPECT_TRUE(p->write_backup_marker);
    ASSERT_TRUE(p->copy_from.has_value()) << "source=" << source;
    EXPECT_EQ(*p->copy_from, Role::kMaster);
    EXPECT_FALSE(p->displace);
  }
}

// Row 5 has no "unless": an empty, unmarked backup is exactly what an
// unmounted backup NAS looks like, and copying it over a master that holds
// data would move the whole site into .nasfs/displaced/. source= is for two
// NAS that both hold data; here it must not reverse the copy.
TEST(DecidePairingTest, SourceBackupNeverCopiesAnEmptyBackupOverAMasterWithData) {
  auto p = Decide(Unmarked(false), Unmarked(true), "backup");
  if (p) {
    ASSERT_TRUE(p->copy_from.has_value());
    EXPECT_EQ(*p->copy_from, Role::kMaster)
        << "an empty backup is copied over the master's data (displace=" << p->displace << ")";
  }
}

TEST(DecidePairingTest, FreshPairIdsDiffer) {
  auto a = Decide(Unmarked(true), Unmarked(true));
  auto b = Decide(Unmarked(true), Unmarked(true));
  ASSERT_TRUE(a && b);
  EXPECT_NE(a->pair_id, b->pair_id);
  EXPECT_TRUE(IsPairId(NewPairId()));
}

// ---- row 6: no marker, empty / no marker, non-empty: refuse unless source=backup ----

TEST(DecidePairingTest, AnEmptyMasterAndABackupWithDataAreRefusedWithTheSourceBackupHint) {
  auto p = Decide(Unmarked(true), Unmarked(false));
  ASSERT_FALSE(p);
  EXPECT_THAT(p.error(), HasSubstr(kMp));
  EXPECT_THAT(p.error(), HasSubstr(kBp));
  EXPECT_THAT(p.error(), HasSubstr("source=backup"));
}

TEST(DecidePairingTest, SourceBackupCopiesTheBackupOntoAnEmptyMaster) {
  auto p = Decide(Unmarked(true), Unmarked(false), "backup");
  ASSERT_TRUE(p) << p.error();
  EXPECT_TRUE(IsPairId(p->pair_id));
  EXPECT_TRUE(p->write_master_marker);
  EXPECT_TRUE(p->write_backup_marker);
  ASSERT_TRUE(p->copy_from.has_value());
  EXPECT_EQ(*p->copy_from, Role::kBackup);
  EXPECT_FALSE(p->displace);
}

// The table: "refuse unless source=backup". An empty unmarked master is what
// an unmounted master NAS looks like; source=master must not copy it over the
// backup's data.
TEST(DecidePairingTest, AnEmptyMasterAndABackupWithDataAreRefusedWithSourceMaster) {
  auto p = Decide(Unmarked(true), Unmarked(false), "master");
  EXPECT_FALSE(p) << "accepted: copy_from="
                  << (p && p->copy_from ? RoleName(*p->copy_from) : "none")
                  << " displace=" << (p && p->displace);
}

// ---- row 7: both non-empty, unmarked: refuse unless source= ----

TEST(DecidePairingTest, TwoUnmarkedSidesWithDataAreRefusedWithBothSourceHints) {
  auto p = Decide(Unmarked(false), Unmarked(false));
  ASSERT_FALSE(p);
  EXPECT_THAT(p.error(), HasSubstr(kMp));
  EXPECT_THAT(p.error(), HasSubstr(kBp));
  EXPECT_THAT(p.error(), HasSubstr("source=master"));
  EXPECT_THAT(p.error(), HasSubstr("source=backup"));
  EXPECT_THAT(p.error(), HasSubstr(".nasfs/displaced"));
}

TEST(DecidePairingTest, TwoUnmarkedSidesWithDataCopyTheNamedSourceAndDisplace) {
  for (Role source : {Role::kMaster, Role::kBackup}) {
    auto p = Decide(Unmarked(false), Unmarked(false), RoleName(source));
    ASSERT_TRUE(p) << p.error();
    EXPECT_TRUE(IsPairId(p->pair_id));
    EXPECT_TRUE(p->write_master_marker);
    EXPECT_TRUE(p->write_backup_marker);
    ASSERT_TRUE(p->copy_from.has_value());
    EXPECT_EQ(*p->copy_from, source);
    EXPECT_TRUE(p->displace);
  }
}

// ---- markers on disk ----

class IdentityFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nasfs-identity-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    nas_ = std::make_unique<Backend>(Role::kBackup, dir_, 1, std::chrono::milliseconds(1000));
    auto r = nas_->OpenRoot();
    ASSERT_TRUE(r) << std::strerror(r.error());
  }
  void TearDown() override {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  void Write(const std::string& rel, const std::string& content) {
    std::filesystem::create_directories(std::filesystem::path(dir_ + "/" + rel).parent_path());
    std::ofstream f(dir_ + "/" + rel, std::ios::trunc);
    f << content;
    ASSERT_TRUE(f.good());
  }
  std::string Read(const std::string& rel) {
    std::ifstream f(dir_ + "/" + rel);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }

  std::string dir_;
  std::unique_ptr<Backend> nas_;
};

TEST_F(IdentityFilesTest, AFreshDirectoryIsEmptyUnmarkedAndNotSyncing) {
  auto f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f) << f.error();
  EXPECT_FALSE(f->marker.has_value());
  EXPECT_TRUE(f->empty);
  EXPECT_FALSE(f->sync_pending);
}

TEST_F(IdentityFilesTest, WriteMarkerAndReadSideFactsRoundTrip) {
  auto w = WriteMarker(*nas_, Marker{kP, Role::kBackup, "2024-05-06T07:08:09.010Z"});
  ASSERT_TRUE(w) << w.error();
  auto f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f) << f.error();
  ASSERT_TRUE(f->marker.has_value());
  EXPECT_EQ(f->marker->pair_id, kP);
  EXPECT_EQ(f->marker->role, Role::kBackup);
  EXPECT_EQ(f->marker->created, "2024-05-06T07:08:09.010Z");
  EXPECT_TRUE(f->empty) << ".nasfs alone does not make a NAS non-empty";
  // The documented format.
  auto j = nlohmann::json::parse(Read(".nasfs/identity.json"));
  EXPECT_EQ(j["format"], 1);
  EXPECT_EQ(j["pair_id"], kP);
  EXPECT_EQ(j["role"], "backup");
  // No temporary left behind.
  EXPECT_FALSE(std::filesystem::exists(dir_ + "/.nasfs/identity.json.tmp"));
}

TEST_F(IdentityFilesTest, AMarkerWithoutACreationTimeGetsNow) {
  ASSERT_TRUE(WriteMarker(*nas_, Marker{kP, Role::kMaster, ""}));
  auto j = nlohmann::json::parse(Read(".nasfs/identity.json"));
  ASSERT_TRUE(j["created"].is_string());
  EXPECT_TRUE(std::regex_match(j["created"].get<std::string>(),
                               std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")))
      << j["created"];
}

TEST_F(IdentityFilesTest, RewritingAMarkerReplacesIt) {
  ASSERT_TRUE(WriteMarker(*nas_, Marker{kP, Role::kMaster, ""}));
  ASSERT_TRUE(WriteMarker(*nas_, Marker{kQ, Role::kBackup, ""}));
  auto f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f && f->marker);
  EXPECT_EQ(f->marker->pair_id, kQ);
  EXPECT_EQ(f->marker->role, Role::kBackup);
}

TEST_F(IdentityFilesTest, ADamagedMarkerIsAnErrorNamingTheNas) {
  for (const char* bad : {"{not json", "[]", R"({"pair_id": 5, "role": "master"})",
                          R"({"pair_id": "abc", "role": "primary"})", R"({"role": "master"})",
                          ""}) {
    Write(".nasfs/identity.json", bad);
    auto f = ReadSideFacts(*nas_);
    ASSERT_FALSE(f) << "accepted damaged marker: " << bad;
    EXPECT_THAT(f.error(), HasSubstr(dir_)) << bad;
  }
}

TEST_F(IdentityFilesTest, EmptyIgnoresLostAndFoundAndTheMetaDirectory) {
  ASSERT_EQ(::mkdir((dir_ + "/lost+found").c_str(), 0700), 0);
  Write(".nasfs/whatever", "x");
  auto f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f) << f.error();
  EXPECT_TRUE(f->empty);
}

TEST_F(IdentityFilesTest, AnyOtherEntryMakesTheNasNonEmpty) {
  for (const char* name : {".hidden", "index.html", "lost+found2", ".nasfs2"}) {
    Write(name, "x");
    auto f = ReadSideFacts(*nas_);
    ASSERT_TRUE(f) << f.error();
    EXPECT_FALSE(f->empty) << name;
    std::filesystem::remove(dir_ + "/" + name);
  }
  ASSERT_EQ(::mkdir((dir_ + "/emptydir").c_str(), 0755), 0);
  auto f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f);
  EXPECT_FALSE(f->empty) << "an empty directory is still content";
}

TEST_F(IdentityFilesTest, SyncPendingIsSeenUntilCleared) {
  auto w = WriteSyncPending(*nas_, Role::kMaster, /*verify_content=*/false);
  ASSERT_TRUE(w) << w.error();
  auto j = nlohmann::json::parse(Read(".nasfs/sync.json"));
  EXPECT_EQ(j["source"], "master");
  auto f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f) << f.error();
  EXPECT_TRUE(f->sync_pending);
  EXPECT_FALSE(f->sync_verify);
  EXPECT_TRUE(f->empty);
  auto c = ClearSyncPending(*nas_);
  ASSERT_TRUE(c) << c.error();
  f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f);
  EXPECT_FALSE(f->sync_pending);
  EXPECT_TRUE(ClearSyncPending(*nas_)) << "clearing twice is fine";
}

TEST_F(IdentityFilesTest, AResumedCopyOntoForeignDataStillVerifiesContent) {
  auto w = WriteSyncPending(*nas_, Role::kMaster, /*verify_content=*/true);
  ASSERT_TRUE(w) << w.error();
  auto f = ReadSideFacts(*nas_);
  ASSERT_TRUE(f) << f.error();
  EXPECT_TRUE(f->sync_verify);
  SideFacts master{Marker{"p", Role::kMaster, ""}, false, false, false};
  SideFacts backup = *f;
  backup.marker = Marker{"p", Role::kBackup, ""};
  auto plan = DecidePairing(master, backup, "", "/m", "/b");
  ASSERT_TRUE(plan) << plan.error();
  ASSERT_TRUE(plan->copy_from.has_value());
  EXPECT_EQ(*plan->copy_from, Role::kMaster);
  EXPECT_TRUE(plan->displace) << "the resumed copy must compare content again";
}

TEST_F(IdentityFilesTest, AMarkerThatIsASymlinkIsNotFollowed) {
  // A marker planted as a link to another pair's marker must not be trusted.
  char other[] = "/tmp/nasfs-identity-other-XXXXXX";
  ASSERT_NE(::mkdtemp(other), nullptr);
  std::string other_marker = std::string(other) + "/identity.json";
  {
    std::ofstream f(other_marker);
    f << R"({"format":1,"pair_id":")" << kQ << R"(","role":"backup","created":"x"})";
  }
  ASSERT_EQ(::mkdir((dir_ + "/.nasfs").c_str(), 0700), 0);
  ASSERT_EQ(::symlink(other_marker.c_str(), (dir_ + "/.nasfs/identity.json").c_str()), 0);
  auto f = ReadSideFacts(*nas_);
  EXPECT_FALSE(f && f->marker && f->marker->pair_id == kQ) << "followed a symlinked marker";
  std::error_code ec;
  std::filesystem::remove_all(other, ec);
}

}  // namespace
}  // namespace nasfs
