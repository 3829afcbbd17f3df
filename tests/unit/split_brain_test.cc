// SplitBrainResolver and the kept versions: two real temporary directories
// play the master and the backup, each with its .nasfs. Each test builds the
// two diverged versions with plain syscalls and explicit mtimes, resolves,
// then checks both directories (content, mode, mtime to the nanosecond) and
// what was kept (ListConflicts on both, the data and meta.json of each).
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "fs/split_brain.h"
#include "tree_diff.h"

namespace nasfs {
namespace {

using ::testing::UnorderedElementsAre;
using testutil::CompareTrees;
using testutil::Exists;
using testutil::LinkTarget;
using testutil::MakeTemp;
using testutil::StartPair;
using testutil::ReadFile;

// An mtime with a nanosecond part, so a copy that rounds is caught.
timespec T(time_t sec) { return timespec{sec, 123456789}; }
int64_t Ns(time_t sec) { return static_cast<int64_t>(sec) * 1000000000 + 123456789; }

class SplitBrainTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!spdlog::get("sync"))
      spdlog::register_logger(
          std::make_shared<spdlog::logger>("sync", std::make_shared<spdlog::sinks::null_sink_mt>()));
    master_dir_ = MakeTemp("/tmp/nasfs-sb-master-XXXXXX");
    backup_dir_ = MakeTemp("/tmp/nasfs-sb-backup-XXXXXX");
    for (const auto& d : {master_dir_, backup_dir_}) ASSERT_EQ(::mkdir((d + "/.nasfs").c_str(), 0700), 0);
    ASSERT_TRUE(StartPair(master_dir_, backup_dir_, &master_, &backup_));
    resolver_ = std::make_unique<SplitBrainResolver>(master_.get(), backup_.get(), "web1");
  }
  void TearDown() override {
    resolver_.reset();
    master_.reset();
    backup_.reset();
    std::error_code ec;
    std::filesystem::remove_all(master_dir_, ec);
    std::filesystem::remove_all(backup_dir_, ec);
  }

  std::string M(const std::string& rel) const { return rel.empty() ? master_dir_ : master_dir_ + "/" + rel; }
  std::string B(const std::string& rel) const { return rel.empty() ? backup_dir_ : backup_dir_ + "/" + rel; }

  // ---- building the two versions ----
  // Writes a file (creating its directories) and stamps mtime.
  static void Put(const std::string& path, const std::string& content, time_t mtime, mode_t mode = 0644) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << content;
    f.close();
    ASSERT_FALSE(f.fail()) << path;
    ASSERT_EQ(::chmod(path.c_str(), mode), 0) << path;
    SetMtime(path, mtime);
  }
  static void Dir(const std::string& path, time_t mtime) {
    std::filesystem::create_directories(path);
    SetMtime(path, mtime);
  }
  static void Link(const std::string& target, const std::string& path, time_t mtime) {
    ASSERT_EQ(::symlink(target.c_str(), path.c_str()), 0) << path;
    SetMtime(path, mtime);
  }
  static void SetMtime(const std::string& path, time_t sec) {
    const timespec times[2] = {T(sec), T(sec)};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << path;
  }

  // ---- looking at them ----
  static int64_t Mtime(const std::string& path) {
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) return -1;
    return static_cast<int64_t>(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
  }
  static mode_t Mode(const std::string& path) {
    struct stat st;
    return ::lstat(path.c_str(), &st) == 0 ? st.st_mode : 0;
  }
  std::vector<ConflictRecord> Conflicts(Backend& nas) {
    std::vector<ConflictRecord> out;
    EXPECT_EQ(ListConflicts(nas, &out), 0) << nas.name();
    return out;
  }
  // The kept data of conflict id on one NAS.
  static std::string Data(const std::string& root, const std::string& id) {
    return root + "/.nasfs/conflicts/" + id + "/data";
  }

  // The root's own mtime is left out (as nasfsctl verify does): each NAS
  // creates its .nasfs at its own instant.
  void ExpectSameTrees(const std::string& rel) {
    std::vector<std::string> diffs;
    CompareTrees({master_dir_, "master"}, {backup_dir_, "backup"}, rel, &diffs);
    if (rel.empty())
      std::erase_if(diffs, [](const std::string& d) { return d.starts_with("'' mtime"); });
    std::string text;
    for (const auto& d : diffs) text += "\n  " + d;
    EXPECT_TRUE(diffs.empty()) << diffs.size() << " differences:" << text;
  }

  // Both NAS list exactly one kept version, the same; returns it.
  ConflictRecord OnlyConflict() {
    auto m = Conflicts(*master_), b = Conflicts(*backup_);
    EXPECT_EQ(m.size(), 1u);
    EXPECT_EQ(b.size(), 1u);
    if (m.size() != 1 || b.size() != 1) return {};
    EXPECT_EQ(ToJson(m[0]), ToJson(b[0]));
    return m[0];
  }

  // A directory "site" that differs on both sides in every way a merge meets.
  // The backup's directory is the newer (1001 against 1000); everything one
  // side lacks is newer than the other side's directory, so it was created
  // during the split, not deleted on the other side.
  void BuildDivergedSite() {
    Put(M("site/same"), "equal", 1200);
    Put(B("site/same"), "equal", 1250);
    Put(M("site/conf"), "master's", 1300);
    Put(B("site/conf"), "backup's", 1350);  // backup newer: wins
    Put(M("site/only_m"), "m", 2000);
    Put(B("site/only_b"), "b", 2000);
    Put(M("site/sub/deep"), "master deep", 1400);  // master newer: wins
    Put(B("site/sub/deep"), "backup deep", 1300);
    Put(M("site/sub/only_m2"), "m2", 2100);
    Put(M("site/msub/x"), "x", 2200);
    Put(B("site/bsub/y/z"), "z", 2300);
    Dir(M("site/msub"), 2250);
    Dir(B("site/bsub/y"), 2310);
    Dir(B("site/bsub"), 2320);
    Dir(M("site/sub"), 1500);
    Dir(B("site/sub"), 1450);
    Dir(M("site"), 1000);
    Dir(B("site"), 1001);
  }

  std::string master_dir_, backup_dir_;
  std::unique_ptr<Backend> master_, backup_;
  std::unique_ptr<SplitBrainResolver> resolver_;
};

// ---- two versions of one file ----

TEST_F(SplitBrainTest, TheNewerBackupFileWinsAndTheMastersIsKeptOnBothNas) {
  Put(M("d/f"), "old", 1000);
  Put(B("d/f"), "new!", 2000);
  Dir(M("d"), 500);
  Dir(B("d"), 600);
  ASSERT_EQ(resolver_->Resolve("d/f"), 0);
  for (const auto& p : {M("d/f"), B("d/f")}) {
    EXPECT_EQ(ReadFile(p), "new!") << p;
    EXPECT_EQ(Mtime(p), Ns(2000)) << p;
  }
  ASSERT_EQ(resolver_->kept().size(), 1u);
  const ConflictRecord& k = resolver_->kept()[0];
  EXPECT_EQ(k.path, "d/f");
  EXPECT_EQ(k.kept_from, "master");
  EXPECT_EQ(k.winner, "backup");
  EXPECT_EQ(k.kind, "file");
  EXPECT_EQ(k.reason, "split brain");
  EXPECT_EQ(k.kept_mtime_ns, Ns(1000));
  EXPECT_EQ(k.winner_mtime_ns, Ns(2000));
  EXPECT_EQ(k.size, 3u);
  EXPECT_EQ(k.node, "web1");
  EXPECT_FALSE(k.detected.empty());
  EXPECT_THAT(k.id, ::testing::MatchesRegex("[0-9]{8}T[0-9]{6}\\.[0-9]{3}Z-web1-[0-9]{4,}"));
  ConflictRecord listed = OnlyConflict();
  EXPECT_EQ(ToJson(listed), ToJson(k)) << "meta.json holds the record";
  for (const auto& root : {master_dir_, backup_dir_}) {
    EXPECT_EQ(ReadFile(Data(root, k.id)), "old") << root;
    EXPECT_EQ(Mtime(Data(root, k.id)), Ns(1000)) << root;
  }
  // The parent is left with the times it had on each NAS.
  EXPECT_EQ(Mtime(M("d")), Ns(500));
  EXPECT_EQ(Mtime(B("d")), Ns(600));
  EXPECT_GE(resolver_->bytes_copied(), 3u + 4u) << "the kept version to the backup, the winner to the master";
}

TEST_F(SplitBrainTest, TheNewerMasterFileWinsAndTheBackupsIsKept) {
  Put(M("f"), "master wins", 3000, 0600);
  Put(B("f"), "backup", 2000);
  ASSERT_EQ(resolver_->Resolve("f"), 0);
  for (const auto& p : {M("f"), B("f")}) {
    EXPECT_EQ(ReadFile(p), "master wins") << p;
    EXPECT_EQ(Mtime(p), Ns(3000)) << p;
    EXPECT_EQ(Mode(p) & 07777, 0600u) << p;
  }
  ConflictRecord k = OnlyConflict();
  EXPECT_EQ(k.kept_from, "backup");
  EXPECT_EQ(k.winner, "master");
  EXPECT_EQ(k.path, "f");
  for (const auto& root : {master_dir_, backup_dir_}) EXPECT_EQ(ReadFile(Data(root, k.id)), "backup") << root;
}

TEST_F(SplitBrainTest, EqualMtimesGoToTheMaster) {
  Put(M("f"), "aaaa", 2000);
  Put(B("f"), "bbbb", 2000);
  ASSERT_EQ(resolver_->Resolve("f"), 0);
  EXPECT_EQ(ReadFile(M("f")), "aaaa");
  EXPECT_EQ(ReadFile(B("f")), "aaaa");
  ConflictRecord k = OnlyConflict();
  EXPECT_EQ(k.kept_from, "backup");
  for (const auto& root : {master_dir_, backup_dir_}) EXPECT_EQ(ReadFile(Data(root, k.id)), "bbbb") << root;
}

TEST_F(SplitBrainTest, EqualContentKeepsNothingAndTakesTheNewerAttributes) {
  Put(M("f"), "same bytes", 1000, 0600);
  Put(B("f"), "same bytes", 2000, 0640);
  struct stat before;
  ASSERT_EQ(::lstat(M("f").c_str(), &before), 0);
  ASSERT_EQ(resolver_->Resolve("f"), 0);
  for (const auto& p : {M("f"), B("f")}) {
    EXPECT_EQ(Mtime(p), Ns(2000)) << p;
    EXPECT_EQ(Mode(p) & 07777, 0640u) << p;
    EXPECT_EQ(ReadFile(p), "same bytes") << p;
  }
  struct stat after;
  ASSERT_EQ(::lstat(M("f").c_str(), &after), 0);
  EXPECT_EQ(after.st_ino, before.st_ino) << "equal data is not copied again";
  EXPECT_EQ(resolver_->bytes_copied(), 0u);
  EXPECT_TRUE(resolver_->kept().empty());
  EXPECT_TRUE(Conflicts(*master_).empty());
  EXPECT_TRUE(Conflicts(*backup_).empty());
}

// The soak's finding: a chmod on one side moves no mtime, so "the newer
// side's attributes" lost it. The side that alone changed them (the logs
// say so) wins them; the times still go to the newer side's.
TEST_F(SplitBrainTest, AChmodMadeOnOneSideAloneSurvivesTheMerge) {
  Put(M("f"), "same", 2000, 0644);
  Put(B("f"), "same", 1000, 0600);  // chmod 600 on the backup; the master's mtime is newer
  Dir(M("d"), 2000);
  Dir(B("d"), 1000);
  ASSERT_EQ(::chmod(B("d").c_str(), 0700), 0);
  SetMtime(B("d"), 1000);
  resolver_->SetMetaChangedFn([](const std::string& p, Role side) {
    return side == Role::kBackup && (p == "f" || p == "d");
  });
  ASSERT_EQ(resolver_->Resolve("f"), 0);
  ASSERT_EQ(resolver_->Resolve("d"), 0);
  EXPECT_EQ(Mode(M("f")) & 07777, 0600u) << "the backup's chmod was lost";
  EXPECT_EQ(Mode(B("f")) & 07777, 0600u);
  EXPECT_EQ(Mtime(M("f")), Mtime(B("f")));
  EXPECT_EQ(Mtime(M("f")), Ns(2000)) << "the newer mtime";
  EXPECT_EQ(Mode(M("d")) & 07777, 0700u);
  EXPECT_EQ(Mode(B("d")) & 07777, 0700u);
  EXPECT_EQ(Mtime(M("d")), Mtime(B("d")));
  EXPECT_TRUE(Conflicts(*master_).empty()) << "equal content is no conflict";
}

TEST_F(SplitBrainTest, EqualSizeButOtherBytesIsAConflict) {
  // Past one comparison chunk, so the difference is in the second one.
  std::string a(1500000, 'x'), b = a;
  b[1400000] = 'y';
  Put(M("big"), a, 1000);
  Put(B("big"), b, 1000);
  ASSERT_EQ(resolver_->Resolve("big"), 0);
  EXPECT_EQ(ReadFile(B("big")), a);
  ConflictRecord k = OnlyConflict();
  EXPECT_EQ(k.kept_from, "backup");
  EXPECT_EQ(ReadFile(Data(master_dir_, k.id)), b);
}

// ---- one side deleted it ----

TEST_F(SplitBrainTest, ADeletionNewerThanTheOtherSidesFileWins) {
  Put(B("d/f"), "backup's", 2000);
  Dir(B("d"), 1500);
  Dir(M("d"), 3000);  // the master deleted d/f at 3000
  ASSERT_EQ(resolver_->Resolve("d/f"), 0);
  EXPECT_FALSE(Exists(M("d/f")));
  EXPECT_FALSE(Exists(B("d/f")));
  ConflictRecord k = OnlyConflict();
  EXPECT_EQ(k.path, "d/f");
  EXPECT_EQ(k.kept_from, "backup");
  EXPECT_EQ(k.winner, "master");
  EXPECT_EQ(k.winner_mtime_ns, 0);
  EXPECT_TRUE(ToJson(k)["winner_mtime"].is_null());
  EXPECT_EQ(ToJson(k)["kept_mtime"], "1970-01-01T00:33:20.123456789Z");
  for (const auto& root : {master_dir_, backup_dir_}) {
    EXPECT_EQ(ReadFile(Data(root, k.id)), "backup's") << root;
    EXPECT_EQ(Mtime(Data(root, k.id)), Ns(2000)) << root;
  }
  EXPECT_EQ(Mtime(M("d")), Ns(3000));
  EXPECT_EQ(Mtime(B("d")), Ns(1500));
}

TEST_F(SplitBrainTest, AFileNewerThanTheOtherSidesDeletionComesBack) {
  Put(B("d/f"), "backup's", 2000);
  Dir(B("d"), 1500);
  Dir(M("d"), 1000);  // the master deleted d/f at 1000, before the backup wrote it
  ASSERT_EQ(resolver_->Resolve("d/f"), 0);
  EXPECT_EQ(ReadFile(M("d/f")), "backup's");
  EXPECT_EQ(Mtime(M("d/f")), Ns(2000));
  EXPECT_EQ(ReadFile(B("d/f")), "backup's");
  EXPECT_TRUE(resolver_->kept().empty());
  EXPECT_TRUE(Conflicts(*master_).empty());
  EXPECT_TRUE(Conflicts(*backup_).empty());
  EXPECT_EQ(Mtime(M("d")), Ns(1000)) << "the parent keeps its times";
}

// Two servers upload different files into one directory during the split:
// the directory's later mtime on the backup would make the master's upload
// look deleted there. Told by the logs that the backup removed nothing, the
// merge copies it over and keeps nothing; a removal the logs do record still
// wins by time.
TEST_F(SplitBrainTest, WhatTheLogsSayWasNeverRemovedIsCopiedNotKept) {
  Put(M("up/from_a"), "a's upload", 2000);
  Put(B("up/from_b"), "b's upload", 2100);
  Put(M("up/gone"), "removed on the backup", 1900);
  Dir(M("up"), 2000);
  Dir(B("up"), 3000);  // b's upload and b's removal of up/gone
  std::vector<std::pair<std::string, Role>> asked;
  resolver_->SetRemovedFn([&asked](const std::string& path, Role side) {
    asked.emplace_back(path, side);
    return path == "up/gone" && side == Role::kBackup;
  });
  ASSERT_EQ(resolver_->Resolve("up"), 0);
  EXPECT_EQ(ReadFile(B("up/from_a")), "a's upload");
  EXPECT_EQ(Mtime(B("up/from_a")), Ns(2000));
  EXPECT_EQ(ReadFile(M("up/from_b")), "b's upload");
  EXPECT_FALSE(Exists(M("up/gone")));
  EXPECT_FALSE(Exists(B("up/gone")));
  ConflictRecord k = OnlyConflict();
  EXPECT_EQ(k.path, "up/gone");
  EXPECT_EQ(k.kept_from, "master");
  EXPECT_THAT(asked, ::testing::UnorderedElementsAre(std::pair<std::string, Role>{"up/from_a", Role::kBackup},
                                                     std::pair<std::string, Role>{"up/from_b", Role::kMaster},
                                                     std::pair<std::string, Role>{"up/gone", Role::kBackup}));
  ExpectSameTrees("up");
}

TEST_F(SplitBrainTest, AnAncestorOnOneSideOnlyIsResolvedWhole) {
  Put(M("n/sub/x"), "x", 3000);
  Put(M("n/y"), "y", 3100);
  Dir(M("n/sub"), 3000);
  Dir(M("n"), 3200);
  SetMtime(M(""), 3300);
  SetMtime(B(""), 1000);  // the backup never had n
  ASSERT_EQ(resolver_->Resolve("n/sub/x"), 0);
  ExpectSameTrees("n");
  EXPECT_EQ(ReadFile(B("n/y")), "y") << "all of n, not only n/sub/x";
  EXPECT_TRUE(resolver_->kept().empty());
  EXPECT_EQ(Mtime(B("")), Ns(1000));
  EXPECT_EQ(Mtime(M("")), Ns(3300));
}

TEST_F(SplitBrainTest, APathOnNeitherNasIsNothingToDo) {
  EXPECT_EQ(resolver_->Resolve("nowhere/at/all"), 0);
  EXPECT_FALSE(Exists(M("nowhere")));
  EXPECT_FALSE(Exists(B("nowhere")));
}

TEST_F(SplitBrainTest, PathsOutsideTheWebsiteAreRefused) {
  Put(M(".nasfs/x"), "m", 1000);
  Put(B(".nasfs/x"), "b", 2000);
  for (const std::string p : {".nasfs", ".nasfs/x", "../x", "/x", "a//b", "a/./b", "a/"})
    EXPECT_EQ(resolver_->Resolve(p), EINVAL) << p;
  EXPECT_EQ(ReadFile(M(".nasfs/x")), "m");
}

// ---- directories ----

TEST_F(SplitBrainTest, TwoDirectoriesMergeIntoTheirUnion) {
  BuildDivergedSite();
  ASSERT_EQ(resolver_->Resolve("site"), 0);
  ExpectSameTrees("site");
  for (const auto& root : {master_dir_, backup_dir_}) {
    EXPECT_EQ(ReadFile(root + "/site/same"), "equal") << root;
    EXPECT_EQ(Mtime(root + "/site/same"), Ns(1250)) << root;
    EXPECT_EQ(ReadFile(root + "/site/conf"), "backup's") << root;
    EXPECT_EQ(ReadFile(root + "/site/sub/deep"), "master deep") << root;
    EXPECT_EQ(ReadFile(root + "/site/only_m"), "m") << root;
    EXPECT_EQ(ReadFile(root + "/site/only_b"), "b") << root;
    EXPECT_EQ(ReadFile(root + "/site/sub/only_m2"), "m2") << root;
    EXPECT_EQ(ReadFile(root + "/site/msub/x"), "x") << root;
    EXPECT_EQ(ReadFile(root + "/site/bsub/y/z"), "z") << root;
    EXPECT_EQ(Mtime(root + "/site"), Ns(1001)) << "the newer directory's time, from before the merge";
    EXPECT_EQ(Mtime(root + "/site/sub"), Ns(1500)) << root;
    EXPECT_EQ(Mtime(root + "/site/bsub/y"), Ns(2310)) << root;
  }
  std::vector<std::string> paths;
  for (const auto& k : resolver_->kept()) paths.push_back(k.path);
  EXPECT_THAT(paths, UnorderedElementsAre("site/conf", "site/sub/deep"));
  for (Backend* nas : {master_.get(), backup_.get()}) {
    auto list = Conflicts(*nas);
    ASSERT_EQ(list.size(), 2u) << nas->name();
    EXPECT_LT(list[0].id, list[1].id) << "sorted by id";
  }
  for (const auto& k : resolver_->kept()) {
    const std::string lost = k.path == "site/conf" ? "master's" : "backup deep";
    EXPECT_EQ(k.kept_from, k.path == "site/conf" ? "master" : "backup");
    for (const auto& root : {master_dir_, backup_dir_}) EXPECT_EQ(ReadFile(Data(root, k.id)), lost) << root;
  }
}

TEST_F(SplitBrainTest, AFileAgainstADirectoryKeepsTheLoserWhicheverItIs) {
  Put(M("x"), "master file", 1000);
  Put(B("x/a"), "in backup dir", 1500);
  Dir(B("x"), 2000);  // newer: the backup's directory wins
  Put(M("y"), "master file", 3000);  // newer: the master's file wins
  Put(B("y/c"), "in backup dir", 1500);
  Dir(B("y"), 2500);
  ASSERT_EQ(resolver_->Resolve("x"), 0);
  ASSERT_EQ(resolver_->Resolve("y"), 0);
  ExpectSameTrees("x");
  ExpectSameTrees("y");
  EXPECT_EQ(ReadFile(M("x/a")), "in backup dir");
  EXPECT_EQ(ReadFile(B("y")), "master file");
  ASSERT_EQ(resolver_->kept().size(), 2u);
  const ConflictRecord& kx = resolver_->kept()[0];
  const ConflictRecord& ky = resolver_->kept()[1];
  EXPECT_EQ(kx.kind, "file");
  EXPECT_EQ(kx.kept_from, "master");
  EXPECT_EQ(ky.kind, "dir");
  EXPECT_EQ(ky.kept_from, "backup");
  EXPECT_EQ(ky.size, 0u);
  for (const auto& root : {master_dir_, backup_dir_}) {
    EXPECT_EQ(ReadFile(Data(root, kx.id)), "master file") << root;
    EXPECT_EQ(ReadFile(Data(root, ky.id) + "/c"), "in backup dir") << root;
    EXPECT_EQ(Mtime(Data(root, ky.id)), Ns(2500)) << root;
  }
}

TEST_F(SplitBrainTest, DifferentSymlinkTargetsAreAConflict) {
  Link("a", M("l"), 1000);
  Link("b", B("l"), 2000);
  ASSERT_EQ(resolver_->Resolve("l"), 0);
  for (const auto& p : {M("l"), B("l")}) {
    EXPECT_EQ(LinkTarget(p), "b") << p;
    EXPECT_EQ(Mtime(p), Ns(2000)) << p;
  }
  ConflictRecord k = OnlyConflict();
  EXPECT_EQ(k.kind, "symlink");
  EXPECT_EQ(k.kept_from, "master");
  for (const auto& root : {master_dir_, backup_dir_}) EXPECT_EQ(LinkTarget(Data(root, k.id)), "a") << root;
}

TEST_F(SplitBrainTest, EqualSymlinksKeepNothing) {
  Link("same", M("l"), 1000);
  Link("same", B("l"), 2000);
  ASSERT_EQ(resolver_->Resolve("l"), 0);
  EXPECT_EQ(Mtime(M("l")), Ns(2000));
  EXPECT_TRUE(resolver_->kept().empty());
}

TEST_F(SplitBrainTest, ResolvingTwiceFindsNothingTheSecondTime) {
  BuildDivergedSite();
  Put(M("top"), "m", 1000);
  Put(B("top"), "b", 2000);
  Put(M(".nasfs/own"), "nasfs's own, master", 1000);
  ASSERT_EQ(resolver_->Resolve(""), 0);
  ExpectSameTrees("");
  ASSERT_EQ(resolver_->kept().size(), 3u);
  const uint64_t bytes = resolver_->bytes_copied();
  EXPECT_FALSE(Exists(B(".nasfs/own"))) << ".nasfs is not merged";
  ASSERT_EQ(resolver_->Resolve(""), 0);
  EXPECT_EQ(resolver_->kept().size(), 3u) << "the second run kept something";
  EXPECT_EQ(resolver_->bytes_copied(), bytes) << "the second run copied data";
  EXPECT_EQ(Conflicts(*master_).size(), 3u);
  EXPECT_EQ(Conflicts(*backup_).size(), 3u);
  ExpectSameTrees("");
}

// ---- listing and restoring ----

TEST_F(SplitBrainTest, ListConflictsShowsADirectoryWithoutMetaAsUnknown) {
  EXPECT_TRUE(Conflicts(*master_).empty()) << "no .nasfs/conflicts yet";
  Put(M(".nasfs/conflicts/zz-broken/data"), "x", 1000);
  Put(M(".nasfs/conflicts/aa-damaged/meta.json"), "{not json", 1000);
  Put(M("f"), "m", 1000);
  Put(B("f"), "b", 2000);
  ASSERT_EQ(resolver_->Resolve("f"), 0);
  auto list = Conflicts(*master_);
  ASSERT_EQ(list.size(), 3u);
  EXPECT_EQ(list[0].id, resolver_->kept()[0].id) << "ids sort by time first, digits before letters";
  EXPECT_EQ(list[0].kind, "file");
  EXPECT_EQ(list[1].id, "aa-damaged");
  EXPECT_EQ(list[1].kind, "unknown");
  EXPECT_EQ(list[2].id, "zz-broken");
  EXPECT_EQ(list[2].kind, "unknown");
  EXPECT_TRUE(list[2].path.empty());
}

TEST_F(SplitBrainTest, RestorePutsTheKeptVersionBackAndKeepsTheOneItReplaces) {
  Put(M("d/f"), "old", 1000);
  Put(B("d/f"), "new!", 2000);
  ASSERT_EQ(resolver_->Resolve("d/f"), 0);
  const std::string id = OnlyConflict().id;
  ASSERT_FALSE(id.empty());
  SharedGate mu;
  ConflictRecord restored, displaced;
  ASSERT_EQ(RestoreConflict(master_.get(), backup_.get(), &mu, "web2", id, &restored, &displaced), 0);
  EXPECT_EQ(restored.id, id);
  EXPECT_EQ(restored.path, "d/f");
  for (const auto& p : {M("d/f"), B("d/f")}) {
    EXPECT_EQ(ReadFile(p), "old") << p;
    EXPECT_EQ(Mtime(p), Ns(1000)) << p;
  }
  ExpectSameTrees("");
  EXPECT_EQ(displaced.path, "d/f");
  EXPECT_EQ(displaced.reason, "restore");
  EXPECT_EQ(displaced.kept_from, "both");
  EXPECT_EQ(displaced.kind, "file");
  EXPECT_EQ(displaced.node, "web2");
  EXPECT_EQ(displaced.kept_mtime_ns, Ns(2000));
  EXPECT_EQ(displaced.winner_mtime_ns, Ns(1000));
  EXPECT_EQ(displaced.size, 4u);
  ConflictRecord now = OnlyConflict();
  EXPECT_EQ(now.id, displaced.id) << "the old id is gone, the new one is there";
  EXPECT_NE(now.id, id);
  for (const auto& root : {master_dir_, backup_dir_}) {
    EXPECT_EQ(ReadFile(Data(root, now.id)), "new!") << root;
    EXPECT_FALSE(Exists(root + "/.nasfs/conflicts/" + id)) << root;
  }
}

TEST_F(SplitBrainTest, RestoreRecreatesMissingDirectoriesAndCopiesMissingData) {
  Put(B("a/b/f"), "kept", 2000);
  Dir(B("a/b"), 1500);
  Dir(B("a"), 1500);
  SetMtime(M(""), 3000);  // the master deleted a after the backup wrote it
  SetMtime(B(""), 1000);
  ASSERT_EQ(resolver_->Resolve("a/b/f"), 0);
  ASSERT_FALSE(Exists(B("a"))) << "the precondition: a is resolved whole, and deleted";
  const std::string id = OnlyConflict().id;
  std::filesystem::remove_all(Data(master_dir_, id));  // the master lost its copy
  SharedGate mu;
  ConflictRecord restored, displaced;
  ASSERT_EQ(RestoreConflict(master_.get(), backup_.get(), &mu, "web1", id, &restored, &displaced), 0);
  EXPECT_EQ(restored.path, "a");
  EXPECT_TRUE(displaced.id.empty()) << "nothing was at the path";
  ExpectSameTrees("");
  EXPECT_EQ(ReadFile(M("a/b/f")), "kept");
  EXPECT_EQ(Mtime(M("a/b")), Ns(1500));
  EXPECT_TRUE(Conflicts(*master_).empty());
  EXPECT_TRUE(Conflicts(*backup_).empty());
}

TEST_F(SplitBrainTest, RestoreCreatesMissingAncestorsAs0755) {
  Put(M("p/q/f"), "m", 1000);
  Put(B("p/q/f"), "b", 2000);
  ASSERT_EQ(resolver_->Resolve("p/q/f"), 0);
  const std::string id = OnlyConflict().id;
  std::filesystem::remove_all(M("p"));
  std::filesystem::remove_all(B("p"));
  SharedGate mu;
  ConflictRecord restored, displaced;
  ASSERT_EQ(RestoreConflict(master_.get(), backup_.get(), &mu, "web1", id, &restored, &displaced), 0);
  for (const auto& root : {master_dir_, backup_dir_}) {
    EXPECT_EQ(ReadFile(root + "/p/q/f"), "m") << root;
    EXPECT_EQ(Mode(root + "/p/q") & 07777, 0755u) << root;
  }
  ExpectSameTrees("");
}

TEST_F(SplitBrainTest, RestoreRefusesMalformedAndUnknownIds) {
  SharedGate mu;
  ConflictRecord restored, displaced;
  for (const std::string id : {"", ".", "..", "a/b", "../conflicts"})
    EXPECT_EQ(RestoreConflict(master_.get(), backup_.get(), &mu, "web1", id, &restored, &displaced), EINVAL)
        << id;
  EXPECT_EQ(RestoreConflict(master_.get(), backup_.get(), &mu, "web1", "no-such-id", &restored, &displaced),
            ENOENT);
  Put(M(".nasfs/conflicts/no-meta/data"), "x", 1000);
  EXPECT_EQ(RestoreConflict(master_.get(), backup_.get(), &mu, "web1", "no-meta", &restored, &displaced),
            EBADMSG);
  EXPECT_TRUE(Exists(M(".nasfs/conflicts/no-meta/data"))) << "a refused restore changes nothing";
}

TEST(ConflictRecordTest, ToJsonHasEveryFieldAndIsoMtimes) {
  ConflictRecord r{"20261124T013005.123Z-a-0007", "d/f", "master", "backup", "file", "split brain",
                   Ns(2000), Ns(3000), 42, "2026-11-24T01:30:05.123Z", "a"};
  auto j = ToJson(r);
  EXPECT_EQ(j["id"], r.id);
  EXPECT_EQ(j["path"], "d/f");
  EXPECT_EQ(j["kept_from"], "master");
  EXPECT_EQ(j["winner"], "backup");
  EXPECT_EQ(j["kind"], "file");
  EXPECT_EQ(j["reason"], "split brain");
  EXPECT_EQ(j["kept_mtime_ns"], Ns(2000));
  EXPECT_EQ(j["winner_mtime_ns"], Ns(3000));
  EXPECT_EQ(j["kept_mtime"], "1970-01-01T00:33:20.123456789Z");
  EXPECT_EQ(j["winner_mtime"], "1970-01-01T00:50:00.123456789Z");
  EXPECT_EQ(j["size"], 42u);
  EXPECT_EQ(j["detected"], r.detected);
  EXPECT_EQ(j["node"], "a");
  EXPECT_EQ(j.size(), 13u);
}

}  // namespace
}  // namespace nasfs
