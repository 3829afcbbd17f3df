// Identity and first pairing (docs/ARCHITECTURE.md, "Identity and first
// pairing"): which couples of NAS directories nasfs mounts, which it refuses,
// what the background copy of a first pairing leaves behind, and that a
// refusal writes nothing.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <map>
#include <regex>

#include <fmt/format.h>
#include <thread>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/e2e/mount_fixture.h"
#include "tests/e2e/tree_compare.h"

namespace nasfs::e2e {
namespace {

namespace fsys = std::filesystem;
using nlohmann::json;

json ReadIdentity(const std::string& nas) {
  auto raw = ReadFile(nas + "/.nasfs/identity.json");
  if (!raw) return nullptr;
  json j = json::parse(*raw, nullptr, false);
  return j.is_discarded() ? json(nullptr) : j;
}

// Entries of a directory, "." and ".." left out.
std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : fsys::directory_iterator(dir, ec)) names.push_back(e.path().filename().string());
  std::sort(names.begin(), names.end());
  return names;
}

void SetMtime(const std::string& path, timespec t) {
  const timespec ts[2] = {t, t};
  ASSERT_EQ(utimensat(AT_FDCWD, path.c_str(), ts, AT_SYMLINK_NOFOLLOW), 0) << path << ": " << std::strerror(errno);
}

// A seeded site: nested directories, files of assorted sizes (an empty one
// and a 1 MiB one among them), modes, owners, nanosecond mtimes, symlinks
// and user xattrs. Directory mtimes are set last, deepest first.
void PopulateSite(const std::string& root, std::mt19937_64& rng) {
  const std::vector<std::string> dirs = {"css", "img", "img/2024", "img/2024/05", "empty_dir", "private"};
  for (const auto& d : dirs) ASSERT_EQ(mkdir((root + "/" + d).c_str(), 0755), 0);
  ASSERT_EQ(chmod((root + "/private").c_str(), 0700), 0);
  std::vector<std::pair<std::string, size_t>> files = {
      {"index.html", 1200}, {"empty.txt", 0}, {"css/site.css", 5000}, {"img/logo.png", 1 << 20},
      {"img/2024/05/a.jpg", 70000}, {"img/2024/05/b.jpg", 4096}, {"private/secret.txt", 17}};
  for (int i = 0; i < 40; ++i) files.push_back({fmt::format("img/2024/thumb{:02d}.png", i), rng() % 30000});
  const mode_t modes[] = {0644, 0600, 0640, 0755, 04755};
  size_t i = 0;
  for (const auto& [rel, size] : files) {
    const std::string p = root + "/" + rel;
    ASSERT_TRUE(WriteFile(p, RandomBytes(rng, size))) << p;
    ASSERT_EQ(chmod(p.c_str(), modes[i % 5]), 0);
    if (i % 3 == 0) {
      ASSERT_EQ(lchown(p.c_str(), 1234, 5678), 0);
    }
    if (i % 4 == 0) {
      const std::string v = fmt::format("value {}", rng() % 1000);
      ASSERT_EQ(lsetxattr(p.c_str(), "user.origin", v.data(), v.size(), 0), 0) << std::strerror(errno);
    }
    SetMtime(p, timespec{1600000000 + static_cast<time_t>(rng() % 100000000), static_cast<long>(rng() % 1000000000)});
    ++i;
  }
  ASSERT_EQ(symlink("index.html", (root + "/home.html").c_str()), 0);
  ASSERT_EQ(symlink("../css/site.css", (root + "/img/style").c_str()), 0);
  ASSERT_EQ(symlink("/nonexistent/absolute", (root + "/dangling").c_str()), 0);
  ASSERT_EQ(lchown((root + "/home.html").c_str(), 1234, 5678), 0);
  SetMtime(root + "/home.html", timespec{1500000000, 42});
  ASSERT_EQ(lsetxattr((root + "/css").c_str(), "user.dir", "d", 1, 0), 0);
  std::vector<std::string> by_depth = dirs;
  std::sort(by_depth.begin(), by_depth.end(),
            [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  for (const auto& d : by_depth) SetMtime(root + "/" + d, timespec{1700000000, static_cast<long>(rng() % 1000000000)});
}

class PairingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NASFS_E2E_REQUIRE_MOUNTS();
    ASSERT_TRUE(ws_.ok()) << ws_.error();
  }

  // Polls status until sync.state is "done" ("none" too when nothing_to_copy:
  // an empty master gives the first-pairing copy nothing to do); returns the
  // last status seen.
  json WaitForSyncDone(const MountedNasfs& m, std::chrono::milliseconds timeout, bool nothing_to_copy = false) {
    json last;
    std::string last_error;
    WaitFor(
        [&] {
          auto s = m.Status();
          last_error = s.error;
          if (!s.ok()) return false;
          last = s.json;
          const json state = Get(last, "/sync/state");
          return state == "done" || state == "failed" || state == "error" || (nothing_to_copy && state == "none");
        },
        timeout, 100ms);
    const json state = Get(last, "/sync/state");
    EXPECT_TRUE(state == "done" || (nothing_to_copy && state == "none"))
        << "sync.state " << state << "; last status: " << last.dump() << " " << last_error;
    return last;
  }

  // Mounts, checks it worked, unmounts cleanly: a paired couple.
  void PairAndUnmount() {
    MountedNasfs m(ws_);
    ASSERT_TRUE(m.mounted()) << m.error();
    WaitForSyncDone(m, 30s, /*nothing_to_copy=*/ListDir(ws_.master()) == std::vector<std::string>{".nasfs"});
    ASSERT_EQ(m.Unmount(), "");
  }

  void ExpectRefused(const MountedNasfs& m) {
    EXPECT_FALSE(m.command().timed_out) << m.command().Describe();
    EXPECT_NE(m.command().exit_code, 0) << "mounted although it must be refused: " << m.command().Describe();
    EXPECT_FALSE(m.mounted());
    EXPECT_FALSE(m.command().err.empty()) << "refused without a message: " << m.command().Describe();
    EXPECT_FALSE(FindMount(ws_.mnt()).has_value());
    std::printf("refusal message: %s", m.command().err.c_str());
  }

  Workspace ws_;
};

TEST_F(PairingTest, TheFirstMountWritesAMatchingIdentityOnBothNas) {
  MountedNasfs m(ws_);
  ASSERT_TRUE(m.mounted()) << m.error();
  const json master = ReadIdentity(ws_.master());
  const json backup = ReadIdentity(ws_.backup());
  ASSERT_TRUE(master.is_object()) << "no readable master/.nasfs/identity.json";
  ASSERT_TRUE(backup.is_object()) << "no readable backup/.nasfs/identity.json";
  EXPECT_EQ(Get(master, "/format"), 1);
  EXPECT_EQ(Get(backup, "/format"), 1);
  EXPECT_EQ(Get(master, "/role"), "master");
  EXPECT_EQ(Get(backup, "/role"), "backup");
  const json pair = Get(master, "/pair_id");
  ASSERT_TRUE(pair.is_string()) << master.dump();
  EXPECT_TRUE(std::regex_match(pair.get<std::string>(), std::regex("[0-9a-f]{32}"))) << pair;
  EXPECT_EQ(Get(backup, "/pair_id"), pair);
  EXPECT_TRUE(Get(master, "/created").is_string()) << master.dump();
  EXPECT_TRUE(Get(backup, "/created").is_string()) << backup.dump();
  auto s = m.Status();
  ASSERT_TRUE(s.ok()) << s.error;
  EXPECT_EQ(Get(s.json, "/pair_id"), pair);
}

TEST_F(PairingTest, APairedCoupleMountsAgainWithTheSamePairId) {
  PairAndUnmount();
  const json before = ReadIdentity(ws_.master());
  MountedNasfs m(ws_);
  ASSERT_TRUE(m.mounted()) << m.error();
  EXPECT_EQ(ReadIdentity(ws_.master()), before);
  EXPECT_EQ(Get(ReadIdentity(ws_.backup()), "/pair_id"), Get(before, "/pair_id"));
}

TEST_F(PairingTest, AMasterWithDataIsCopiedOntoAnEmptyBackupInTheBackground) {
  const uint64_t seed = TestSeed();
  std::printf("seed=%llu (NASFS_E2E_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 rng(seed);
  PopulateSite(ws_.master(), rng);
  if (HasFatalFailure()) return;
  const Tree master_before = SnapshotTree(ws_.master());

  MountedNasfs m(ws_);
  ASSERT_TRUE(m.mounted()) << m.error();
  // Reads are served (from the master) while the copy runs.
  EXPECT_EQ(ReadFile(ws_.mnt() + "/private/secret.txt"), ReadFile(ws_.master() + "/private/secret.txt"));
  const json done = WaitForSyncDone(m, 60s);
  EXPECT_EQ(Get(done, "/sync/source"), "master") << done.dump();
  EXPECT_EQ(Get(done, "/sync/target"), "backup") << done.dump();
  EXPECT_EQ(Get(done, "/read_from"), "master");

  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
  EXPECT_NO_TREE_DIFFS(CompareSnapshots(master_before, SnapshotTree(ws_.master()), "master before", "master after"));
  for (const auto& b : Get(done, "/backends")) {
    EXPECT_EQ(Get(b, "/state"), "healthy") << "after the copy: " << b.dump();
  }
  EXPECT_TRUE(WaitFor([&] { return access((ws_.backup() + "/.nasfs/sync.json").c_str(), F_OK) != 0; }, 5s))
      << "backup/.nasfs/sync.json is still there after the copy finished";
}

TEST_F(PairingTest, TwoNonEmptyNeverPairedNasAreRefused) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/index.html", "master site"));
  ASSERT_TRUE(WriteFile(ws_.backup() + "/index.html", "some other site"));
  const Tree master_before = SnapshotTree(ws_.master(), false);
  const Tree backup_before = SnapshotTree(ws_.backup(), false);
  {
    MountedNasfs m(ws_);
    ExpectRefused(m);
    EXPECT_TRUE(m.command().err.find("source") != std::string::npos)
        << "the message does not point at source=: " << m.command().err;
  }
  // Nothing was written: no marker, no copy, no displaced files.
  EXPECT_NO_TREE_DIFFS(CompareSnapshots(master_before, SnapshotTree(ws_.master(), false), "master before", "master after"));
  EXPECT_NO_TREE_DIFFS(CompareSnapshots(backup_before, SnapshotTree(ws_.backup(), false), "backup before", "backup after"));
}

TEST_F(PairingTest, WithSourceMasterEveryBackupFileOverwrittenOrDeletedIsKeptUnderDisplaced) {
  const std::string& M = ws_.master();
  const std::string& B = ws_.backup();
  ASSERT_EQ(mkdir((M + "/dir").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((M + "/conflict").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFile(M + "/common.txt", "master version"));
  ASSERT_TRUE(WriteFile(M + "/only_master.txt", "only on the master"));
  ASSERT_TRUE(WriteFile(M + "/dir/x.txt", "master x"));
  ASSERT_TRUE(WriteFile(M + "/conflict/inner.txt", "a directory on the master"));
  ASSERT_TRUE(WriteFile(M + "/same.txt", "identical on both"));
  SetMtime(M + "/same.txt", timespec{1600000000, 5});

  ASSERT_EQ(mkdir((B + "/dir").c_str(), 0755), 0);
  ASSERT_EQ(mkdir((B + "/dir/y").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFile(B + "/same.txt", "identical on both"));
  SetMtime(B + "/same.txt", timespec{1600000000, 5});
  // What the copy will destroy on the backup, and the content to find again.
  const std::map<std::string, std::string> doomed = {
      {"common.txt", "backup version"},
      {"only_backup.txt", "only on the backup"},
      {"dir/x.txt", "backup x"},
      {"dir/y/deep.txt", "deep on the backup"},
      {"conflict", "a file on the backup"},
  };
  for (const auto& [rel, data] : doomed) ASSERT_TRUE(WriteFile(B + "/" + rel, data));
  const Tree master_before = SnapshotTree(M);

  MountedNasfs m(ws_, WithOptions("source=master"));
  ASSERT_TRUE(m.mounted()) << m.error();
  const json done = WaitForSyncDone(m, 60s);
  EXPECT_GE(Get(done, "/sync/displaced").is_number() ? Get(done, "/sync/displaced").get<long>() : -1, 1)
      << done.dump();

  EXPECT_NO_TREE_DIFFS(CompareTrees(M, B));
  EXPECT_NO_TREE_DIFFS(CompareSnapshots(master_before, SnapshotTree(M), "master before", "master after"));

  // Every displaced file: somewhere under backup/.nasfs/displaced/<...>/<path>, old content.
  const std::string displaced = B + "/.nasfs/displaced";
  ASSERT_TRUE(fsys::is_directory(displaced)) << displaced << " missing";
  std::vector<std::string> kept;
  std::error_code ec;
  for (auto it = fsys::recursive_directory_iterator(displaced, ec); !ec && it != fsys::recursive_directory_iterator();
       it.increment(ec)) {
    if (it->is_regular_file()) kept.push_back(fsys::relative(it->path(), displaced).string());
  }
  for (const auto& [rel, data] : doomed) {
    bool found = false;
    for (const auto& k : kept) {
      if (k.size() > rel.size() && k.compare(k.size() - rel.size(), rel.size(), rel) == 0 &&
          k[k.size() - rel.size() - 1] == '/' && ReadFile(displaced + "/" + k) == data) {
        found = true;
      }
    }
    std::string all;
    for (const auto& k : kept) all += "  " + k + "\n";
    EXPECT_TRUE(found) << "backup's old " << rel << " ('" << data << "') is not under " << displaced
                       << "/<...>/" << rel << "; displaced holds:\n" << all;
  }
}

TEST_F(PairingTest, SwappedMasterAndBackupAreRefused) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/index.html", "site"));
  PairAndUnmount();
  const json master_id = ReadIdentity(ws_.master());
  const json backup_id = ReadIdentity(ws_.backup());
  MountSpec spec;
  spec.source = ws_.backup() + ":" + ws_.master();
  {
    MountedNasfs m(ws_, spec);
    ExpectRefused(m);
  }
  EXPECT_EQ(ReadIdentity(ws_.master()), master_id);
  EXPECT_EQ(ReadIdentity(ws_.backup()), backup_id);
}

TEST_F(PairingTest, ABackupWhoseMarkerNamesAnotherPairIsRefused) {
  PairAndUnmount();
  json other = ReadIdentity(ws_.backup());
  ASSERT_TRUE(other.is_object());
  other["pair_id"] = "0123456789abcdef0123456789abcdef";
  ASSERT_NE(other["pair_id"], Get(ReadIdentity(ws_.master()), "/pair_id"));
  ASSERT_TRUE(WriteFile(ws_.backup() + "/.nasfs/identity.json", other.dump()));
  {
    MountedNasfs m(ws_);
    ExpectRefused(m);
  }
  EXPECT_EQ(ReadIdentity(ws_.backup()), other) << "the foreign marker was rewritten";
}

TEST_F(PairingTest, ABackupWithoutItsMarkerIsTreatedAsDownAndNothingIsWrittenIntoIt) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/index.html", "site"));
  PairAndUnmount();
  // The backup NAS is not mounted: its mount point is a bare, empty directory.
  std::error_code ec;
  fsys::remove_all(ws_.backup(), ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(mkdir(ws_.backup().c_str(), 0755), 0);
  {
    MountedNasfs m(ws_);
    ASSERT_TRUE(m.mounted()) << "a web server rebooting during an outage must still mount: " << m.error();
    auto s = m.Status();
    ASSERT_TRUE(s.ok()) << s.error;
    EXPECT_EQ(Get(s.json, "/read_from"), "master");
    EXPECT_EQ(Get(s.json, "/backends/1/state"), "down");
    // Writes go to the master alone, and probes run: still nothing lands in the bare dir.
    ASSERT_TRUE(WriteFile(ws_.mnt() + "/during.html", "x"));
    std::this_thread::sleep_for(1500ms);
    EXPECT_EQ(ReadFile(ws_.master() + "/during.html"), "x");
    EXPECT_EQ(Get(m.Status().json, "/backends/1/state"), "down");
  }
  EXPECT_EQ(ListDir(ws_.backup()), std::vector<std::string>{}) << "something was written into the bare backup dir";
}

TEST_F(PairingTest, ABackupWithoutItsMarkerIsAdoptedWithSourceMaster) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/index.html", "site"));
  PairAndUnmount();
  const json master_id = ReadIdentity(ws_.master());
  std::error_code ec;
  fsys::remove_all(ws_.backup(), ec);
  ASSERT_EQ(mkdir(ws_.backup().c_str(), 0755), 0);
  MountedNasfs m(ws_, WithOptions("source=master"));
  ASSERT_TRUE(m.mounted()) << m.error();
  WaitForSyncDone(m, 30s);
  EXPECT_EQ(Get(ReadIdentity(ws_.backup()), "/pair_id"), Get(master_id, "/pair_id"));
  EXPECT_EQ(Get(ReadIdentity(ws_.backup()), "/role"), "backup");
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

TEST_F(PairingTest, AMasterWithoutItsMarkerNextToAMarkedBackupIsTreatedAsDown) {
  ASSERT_TRUE(WriteFile(ws_.master() + "/index.html", "site"));
  PairAndUnmount();
  ASSERT_EQ(unlink((ws_.master() + "/.nasfs/identity.json").c_str()), 0);
  const Tree master_before = SnapshotTree(ws_.master(), false);
  {
    MountedNasfs m(ws_);
    ASSERT_TRUE(m.mounted()) << m.error();
    auto s = m.Status();
    ASSERT_TRUE(s.ok()) << s.error;
    EXPECT_EQ(Get(s.json, "/read_from"), "backup");
    EXPECT_EQ(Get(s.json, "/backends/0/state"), "down");
    EXPECT_EQ(ReadFile(ws_.mnt() + "/index.html"), "site") << "served from the backup";
    std::this_thread::sleep_for(1500ms);  // probes run: they must not write to the unmarked master
  }
  EXPECT_NO_TREE_DIFFS(CompareSnapshots(master_before, SnapshotTree(ws_.master(), false), "master before", "master after"));
}

TEST_F(PairingTest, AnEmptyMasterNextToANonEmptyUnpairedBackupIsRefused) {
  ASSERT_TRUE(WriteFile(ws_.backup() + "/index.html", "only the backup has a site"));
  {
    MountedNasfs m(ws_);
    ExpectRefused(m);
  }
  EXPECT_EQ(ListDir(ws_.master()), std::vector<std::string>{}) << "the refused mount wrote into the master";
  EXPECT_EQ(ListDir(ws_.backup()), std::vector<std::string>{"index.html"}) << "the refused mount wrote into the backup";
}

}  // namespace
}  // namespace nasfs::e2e
