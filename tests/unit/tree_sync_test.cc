// TreeSync: the background copy of one NAS onto the other, between two real
// temporary directories. Trees are built with plain syscalls on the source,
// the copy runs on its own thread, and the tests wait for its done callback
// (bounded), then compare the two trees entry by entry: type, mode, owner,
// size, mtime to the nanosecond, content and symlink targets.
//
// Random trees are seeded; set NASFS_TEST_SEED to repeat one.
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <shared_mutex>
#include <string>
#include <vector>
#include <thread>
#include <atomic>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <spdlog/sinks/null_sink.h>
#include <spdlog/spdlog.h>

#include "fs/tree_sync.h"
#include "tree_diff.h"

namespace nasfs {
namespace {

using ::testing::ElementsAre;
using testutil::Exists;
using testutil::MakeTemp;
using testutil::StartPair;
using testutil::ReadFile;

constexpr size_t kMiB = 1 << 20;
constexpr auto kSyncBound = std::chrono::seconds(20);

uint64_t TestSeed() {
  if (const char* s = std::getenv("NASFS_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

// TreeSync and Backend log through named spdlog loggers the daemon creates.
void EnsureLogger(const char* name) {
  if (!spdlog::get(name))
    spdlog::register_logger(
        std::make_shared<spdlog::logger>(name, std::make_shared<spdlog::sinks::null_sink_mt>()));
}

// ---- ComparePaths ----

TEST(ComparePathsTest, TheEmptyPathComesFirst) {
  EXPECT_EQ(ComparePaths("", ""), 0);
  EXPECT_LT(ComparePaths("", "a"), 0);
  EXPECT_GT(ComparePaths("a", ""), 0);
}

TEST(ComparePathsTest, ADirectoryComesBeforeWhatItHolds) {
  EXPECT_LT(ComparePaths("a", "a/b"), 0);
  EXPECT_LT(ComparePaths("a/b", "a/b/c"), 0);
  EXPECT_GT(ComparePaths("a/b/c", "a"), 0);
  EXPECT_EQ(ComparePaths("a/b", "a/b"), 0);
}

TEST(ComparePathsTest, PathsCompareComponentByComponent) {
  // Bytewise, '.' (0x2e) < '/' (0x2f) < '0' (0x30) would put "a.b" before
  // "a/b"; the walk visits a's contents before the sibling "a.b".
  EXPECT_LT(ComparePaths("a/b", "a.b"), 0);
  EXPECT_LT(ComparePaths("a/b", "a0"), 0);
  EXPECT_LT(ComparePaths("a.b", "a0"), 0);
  EXPECT_LT(ComparePaths("a/zzz", "a.b"), 0);
  EXPECT_GT(ComparePaths("a.b", "a/b"), 0);
  EXPECT_GT(ComparePaths("a/b.c", "a/b/c"), 0);
  EXPECT_LT(ComparePaths("B", "a"), 0);  // bytes, not locale
}

TEST(ComparePathsTest, SortingByComparePathsGivesTheWalkOrder) {
  std::vector<std::string> v = {"a0", "a.b", "a/b/c", "", "a/b", "a", "b", "a/b.c", "a/c"};
  std::sort(v.begin(), v.end(),
            [](const std::string& x, const std::string& y) { return ComparePaths(x, y) < 0; });
  EXPECT_THAT(v, ElementsAre("", "a", "a/b", "a/b/c", "a/b.c", "a/c", "a.b", "a0", "b"));
}

// ---- the copy ----

struct Meta {
  mode_t mode;
  uid_t uid;
  gid_t gid;
  timespec mtime;
};

class TreeSyncTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EnsureLogger("sync");
    EnsureLogger("health");
    src_dir_ = MakeTemp("/tmp/nasfs-sync-src-XXXXXX");
    dst_dir_ = MakeTemp("/tmp/nasfs-sync-dst-XXXXXX");
    ASSERT_TRUE(StartPair(src_dir_, dst_dir_, &src_, &dst_));
  }
  void TearDown() override {
    sync_.reset();  // joins the walk before the backends go
    src_.reset();
    dst_.reset();
    std::error_code ec;
    std::filesystem::remove_all(src_dir_, ec);
    std::filesystem::remove_all(dst_dir_, ec);
  }

  static bool IsRoot() { return ::geteuid() == 0; }

  // ---- building trees with plain syscalls ----
  static void PutFile(const std::string& path, const std::string& content) {
    std::filesystem::create_directories(std::filesystem::path(path).parent_path());
    std::ofstream f(path, std::ios::binary | std::ios::trunc);
    f << content;
    f.close();
    ASSERT_FALSE(f.fail()) << path;
  }
  static void SetMeta(const std::string& path, const Meta& m) {
    struct stat st;
    ASSERT_EQ(::lstat(path.c_str(), &st), 0) << path;
    if (IsRoot()) {
      ASSERT_EQ(::lchown(path.c_str(), m.uid, m.gid), 0) << path;
    }
    if (!S_ISLNK(st.st_mode)) {
      ASSERT_EQ(::chmod(path.c_str(), m.mode), 0) << path;
    }
    const timespec times[2] = {m.mtime, m.mtime};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << path;
  }
  static void SetMtime(const std::string& path, timespec t) {
    const timespec times[2] = {t, t};
    ASSERT_EQ(::utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW), 0) << path;
  }
  static ino_t Ino(const std::string& path) {
    struct stat st;
    return ::lstat(path.c_str(), &st) == 0 ? st.st_ino : 0;
  }
  std::string S(const std::string& rel) const { return rel.empty() ? src_dir_ : src_dir_ + "/" + rel; }
  std::string D(const std::string& rel) const { return rel.empty() ? dst_dir_ : dst_dir_ + "/" + rel; }

  // ---- running the copy ----
  // `tracker`: the walk copies data before the lock (see SetWriteTracker).
  void StartSync(bool verify_content, const WriteTracker* tracker = nullptr) {
    {
      std::lock_guard lk(done_mu_);
      done_ = false;
    }
    sync_ = std::make_unique<TreeSync>(src_.get(), dst_.get(), &sync_mu_, verify_content, /*displace=*/true,
                                       [this](bool ok) {
                                         std::lock_guard lk(done_mu_);
                                         done_ = true;
                                         ok_ = ok;
                                         done_cv_.notify_all();
                                       });
    sync_->SetWriteTracker(tracker);
    sync_->Start();
  }
  // Waits (bounded) for the done callback; returns whether the copy succeeded.
  ::testing::AssertionResult WaitDone() {
    std::unique_lock lk(done_mu_);
    if (!done_cv_.wait_for(lk, kSyncBound, [&] { return done_; }))
      return ::testing::AssertionFailure() << "the copy did not finish within the bound";
    lk.unlock();
    // The callback runs before the status is final (the owner's part
    // first): the thread's end is what makes it so.
    sync_->Stop();
    if (!ok_) return ::testing::AssertionFailure() << "the copy failed: " << sync_->Status().dump();
    return ::testing::AssertionSuccess();
  }
  ::testing::AssertionResult RunSync(bool verify_content = false) {
    StartSync(verify_content);
    return WaitDone();
  }
  bool Covers(const std::string& path) {
    std::shared_lock lk(sync_mu_);
    return sync_->Covers(path);
  }

  // The single .nasfs/displaced/<time> directory, relative to the target.
  std::string DisplacedDir() {
    std::vector<std::string> dirs;
    std::error_code ec;
    for (auto& e : std::filesystem::directory_iterator(D(".nasfs/displaced"), ec))
      dirs.push_back(e.path().filename());
    EXPECT_EQ(dirs.size(), 1u) << "displaced directories: " << dirs.size();
    return dirs.empty() ? "" : ".nasfs/displaced/" + dirs[0];
  }
  // Every regular file under the target's .nasfs/displaced, by content.
  std::multiset<std::string> DisplacedContents() {
    std::multiset<std::string> out;
    std::error_code ec;
    for (auto& e : std::filesystem::recursive_directory_iterator(D(".nasfs/displaced"), ec))
      if (e.is_regular_file()) out.insert(ReadFile(e.path()));
    return out;
  }

  // ---- comparing trees ----
  // Lists rel in both trees (without the target's .nasfs at the top) and
  // records every difference.
  void CompareTrees(const std::string& rel, std::vector<std::string>* diffs) const {
    testutil::CompareTrees({src_dir_, "source"}, {dst_dir_, "target"}, rel, diffs);
  }
  void ExpectSameTrees(const std::string& rel = "") {
    std::vector<std::string> diffs;
    CompareTrees(rel, &diffs);
    std::string text;
    for (size_t i = 0; i < diffs.size() && i < 30; ++i) text += "\n  " + diffs[i];
    EXPECT_TRUE(diffs.empty()) << diffs.size() << " differences:" << text;
  }

  // A random tree on the source: nested directories, files of assorted sizes
  // (empty, sub-page, exactly one copy chunk, one byte either side of it, and
  // more chunks than the copier keeps in flight), symlinks, a FIFO, assorted
  // modes (set-id bits too), owners and nanosecond mtimes.
  void MakeRandomTree(std::mt19937_64& rng, int entries) {
    auto pick = [&](size_t n) { return static_cast<size_t>(rng() % n); };
    auto rand_time = [&] {
      return timespec{static_cast<time_t>(1000000000 + rng() % 700000000),
                      static_cast<long>(rng() % 1000000000)};
    };
    auto rand_owner = [&](Meta* m) {
      m->uid = static_cast<uid_t>(rng() % 60000);
      m->gid = static_cast<gid_t>(rng() % 60000);
    };
    const std::vector<std::string> names = {"a", "b", "a.b", "a0", "index.html", "img", "x y",
                                            "-dash", ".hidden", "Z", "long_name_with_more_chars",
                                            "\xc3\xa9t\xc3\xa9"};
    const std::vector<size_t> small = {0, 1, 100, 4095, 4096, 4097, 65537};
    const std::vector<size_t> big = {kMiB - 1, kMiB, kMiB + 1, 5 * kMiB + 12345};
    const std::vector<mode_t> file_modes = {0644, 0600, 0640, 0755, 0444, 04755, 02755, 0000};
    const std::vector<mode_t> dir_modes = {0755, 0700, 0750, 01777, 02775, 0555};
    std::vector<std::string> dirs = {""};
    std::vector<std::pair<std::string, Meta>> dir_meta;
    size_t big_left = big.size() + 1;
    for (int i = 0; i < entries; ++i) {
      const std::string parent = dirs[pick(dirs.size())];
      std::string name = names[pick(names.size())];
      if (rng() % 3 == 0) name += std::to_string(rng() % 100);
      const std::string rel = parent.empty() ? name : parent + "/" + name;
      if (Exists(S(rel))) continue;
      Meta m{};
      rand_owner(&m);
      m.mtime = rand_time();
      int kind = static_cast<int>(pick(100));
      if (kind < 25) {
        ASSERT_EQ(::mkdir(S(rel).c_str(), 0755), 0) << rel;
        m.mode = dir_modes[pick(dir_modes.size())];
        dirs.push_back(rel);
        dir_meta.emplace_back(rel, m);  // applied last, deepest first
        continue;
      }
      if (kind < 80) {
        size_t size;
        if (big_left > 0 && rng() % 6 == 0) {
          size = big[(big_left--) % big.size()];
        } else {
          size = small[pick(small.size())];
        }
        std::string data(size, '\0');
        for (auto& c : data) c = static_cast<char>(rng());
        PutFile(S(rel), data);
        m.mode = file_modes[pick(file_modes.size())];
      } else if (kind < 95) {
        const std::vector<std::string> targets = {"index.html", "../a", "/etc/passwd",
                                                  "nowhere/at/all", std::string(200, 'x')};
        ASSERT_EQ(::symlink(targets[pick(targets.size())].c_str(), S(rel).c_str()), 0) << rel;
      } else {
        ASSERT_EQ(::mkfifo(S(rel).c_str(), 0644), 0) << rel;
        m.mode = 0620;
      }
      SetMeta(S(rel), m);
    }
    // Guarantee the large cases whatever the dice said.
    for (size_t i = 0; i < big.size(); ++i) {
      std::string rel = "big" + std::to_string(i);
      std::string data(big[i], '\0');
      for (auto& c : data) c = static_cast<char>(rng());
      PutFile(S(rel), data);
      Meta m{0644, 0, 0, rand_time()};
      rand_owner(&m);
      SetMeta(S(rel), m);
    }
    std::sort(dir_meta.begin(), dir_meta.end(), [](auto& a, auto& b) {
      return std::count(a.first.begin(), a.first.end(), '/') >
             std::count(b.first.begin(), b.first.end(), '/');
    });
    for (auto& [rel, m] : dir_meta) SetMeta(S(rel), m);
    Meta root{0755, 0, 0, rand_time()};
    rand_owner(&root);
    SetMeta(src_dir_, root);
  }

  std::string src_dir_, dst_dir_;
  std::unique_ptr<Backend> src_, dst_;
  SharedGate sync_mu_;
  std::unique_ptr<TreeSync> sync_;

  std::mutex done_mu_;
  std::condition_variable done_cv_;
  bool done_ = false;  // guarded by done_mu_
  bool ok_ = false;    // guarded by done_mu_
};

TEST_F(TreeSyncTest, ARandomTreeIsCopiedExactly) {
  const uint64_t seed = TestSeed();
  std::printf("TreeSync random tree seed=%llu (NASFS_TEST_SEED to repeat)\n",
              static_cast<unsigned long long>(seed));
  RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 rng(seed);
  MakeRandomTree(rng, 120);
  if (HasFatalFailure()) return;
  // The tree holds what the test claims to cover.
  std::map<std::string, int> kinds;
  for (auto& e : std::filesystem::recursive_directory_iterator(src_dir_)) {
    if (e.is_symlink()) ++kinds["link"];
    else if (e.is_directory()) ++kinds["dir"];
    else if (e.is_regular_file()) ++kinds[e.file_size() > kMiB ? "big" : "file"];
  }
  ASSERT_GE(kinds["dir"], 3);
  ASSERT_GE(kinds["link"], 1);
  ASSERT_GE(kinds["file"], 10);
  ASSERT_GE(kinds["big"], 2);
  ASSERT_TRUE(RunSync()) << "seed " << seed;
  ExpectSameTrees();
  auto st = sync_->Status();
  EXPECT_EQ(st["state"], "done");
  EXPECT_EQ(st["displaced"], 0u) << "nothing on an empty target to displace";
  EXPECT_GT(st["bytes_copied"].get<uint64_t>(), 5 * kMiB);
  EXPECT_FALSE(Exists(D(".nasfs/displaced")));
  if (HasFailure()) ADD_FAILURE() << "seed " << seed;
}

// The comparison the copy tests rely on sees a one-nanosecond difference.
TEST_F(TreeSyncTest, TheTreeComparisonSeesEveryKindOfDifference) {
  PutFile(S("d/f"), "same");
  PutFile(D("d/f"), "same");
  const timespec t{1600000000, 1};
  SetMtime(S("d/f"), t);
  SetMtime(D("d/f"), timespec{1600000000, 2});
  PutFile(S("g"), "abc");
  PutFile(D("g"), "abd");
  PutFile(S("only-src"), "");
  std::vector<std::string> diffs;
  CompareTrees("", &diffs);
  auto mentions = [&](const std::string& what) {
    return std::any_of(diffs.begin(), diffs.end(),
                       [&](const std::string& d) { return d.find(what) != std::string::npos; });
  };
  EXPECT_TRUE(mentions("'d/f' mtime.nsec"));
  EXPECT_TRUE(mentions("'g' content differs"));
  EXPECT_TRUE(mentions("'only-src' missing on the target"));
}

TEST_F(TreeSyncTest, LargeFilesNotInThePageCacheAreCopiedByteForByte) {
  // Reads that miss the page cache complete out of order in io_uring's
  // workers; the copy must still put every chunk at its own offset.
  const uint64_t seed = TestSeed();
  std::printf("TreeSync uncached files seed=%llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  for (int i = 0; i < 4; ++i) {
    std::string data(12 * kMiB + static_cast<size_t>(rng() % kMiB), '\0');
    uint64_t* w = reinterpret_cast<uint64_t*>(data.data());
    for (size_t k = 0; k < data.size() / 8; ++k) w[k] = rng();
    const std::string rel = "f" + std::to_string(i);
    PutFile(S(rel), data);
    int fd = ::open(S(rel).c_str(), O_RDONLY);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(::fdatasync(fd), 0);
    ASSERT_EQ(::posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
    ::close(fd);
  }
  ASSERT_TRUE(RunSync()) << "seed " << seed;
  ExpectSameTrees();
}

TEST_F(TreeSyncTest, CoversNothingBeforeStartAndEverythingOnceDone) {
  PutFile(S("a/b"), "x");
  PutFile(S("c"), "y");
  sync_ = std::make_unique<TreeSync>(src_.get(), dst_.get(), &sync_mu_, false, /*displace=*/true, nullptr);
  for (const char* p : {"", "a", "a/b", "c", "zzz/never"}) EXPECT_FALSE(Covers(p)) << p;
  sync_.reset();
  ASSERT_TRUE(RunSync());
  for (const char* p : {"", "a", "a/b", "a.b", "c", "zzz/never", "a/b/c/d"})
    EXPECT_TRUE(Covers(p)) << p;
  auto st = sync_->Status();
  EXPECT_EQ(st["state"], "done");
  EXPECT_EQ(st["entries_done"], 3u);
  EXPECT_TRUE(st["finished"].is_string());
  EXPECT_TRUE(st["error"].is_null());
}

TEST_F(TreeSyncTest, CoversNothingWhileTheWalkWaitsForTheLock) {
  PutFile(S("a"), "x");
  std::unique_lock hold(sync_mu_);
  StartSync(false);
  // The walk cannot mark its start while we hold the lock.
  EXPECT_FALSE(sync_->Covers(""));
  EXPECT_FALSE(sync_->Covers("a"));
  hold.unlock();
  ASSERT_TRUE(WaitDone());
  EXPECT_TRUE(Covers("a"));
}

TEST_F(TreeSyncTest, ADifferingTargetFileIsDisplacedWithItsOldContentAndReplaced) {
  PutFile(S("dir/page.html"), "new content from the source");
  PutFile(D("dir/page.html"), "old");
  ASSERT_TRUE(RunSync());
  EXPECT_EQ(ReadFile(D("dir/page.html")), "new content from the source");
  const std::string displaced = DisplacedDir();
  ASSERT_FALSE(displaced.empty());
  EXPECT_EQ(ReadFile(D(displaced + "/dir/page.html")), "old");
  EXPECT_EQ(sync_->Status()["displaced"], 1u);
  ExpectSameTrees();
}

TEST_F(TreeSyncTest, ATargetOnlyFileIsDisplacedNotDeleted) {
  PutFile(S("keep"), "k");
  PutFile(D("stray.txt"), "stray");
  PutFile(D("olddir/deep/file"), "deep");
  PutFile(S("common/x"), "x");
  PutFile(D("common/only-on-target"), "t");
  ASSERT_TRUE(RunSync());
  EXPECT_FALSE(Exists(D("stray.txt")));
  EXPECT_FALSE(Exists(D("olddir")));
  EXPECT_FALSE(Exists(D("common/only-on-target")));
  const std::string displaced = DisplacedDir();
  ASSERT_FALSE(displaced.empty());
  EXPECT_EQ(ReadFile(D(displaced + "/stray.txt")), "stray");
  EXPECT_EQ(ReadFile(D(displaced + "/olddir/deep/file")), "deep");
  EXPECT_EQ(ReadFile(D(displaced + "/common/only-on-target")), "t");
  EXPECT_EQ(sync_->Status()["displaced"], 3u);
  ExpectSameTrees();
}

TEST_F(TreeSyncTest, AnEntryOfAnotherTypeIsDisplacedAndReplaced) {
  PutFile(S("was-dir"), "now a file");
  PutFile(D("was-dir/inner"), "inner");
  ASSERT_EQ(::mkdir(S("was-file").c_str(), 0755), 0);
  PutFile(D("was-file"), "old file");
  ASSERT_EQ(::symlink("target", S("link").c_str()), 0);
  PutFile(D("link"), "not a link");
  ASSERT_TRUE(RunSync());
  ExpectSameTrees();
  const std::string displaced = DisplacedDir();
  EXPECT_EQ(ReadFile(D(displaced + "/was-dir/inner")), "inner");
  EXPECT_EQ(ReadFile(D(displaced + "/was-file")), "old file");
  EXPECT_EQ(ReadFile(D(displaced + "/link")), "not a link");
}

TEST_F(TreeSyncTest, IdenticalFilesAreLeftInPlace) {
  const timespec t{1600000000, 123456789};
  PutFile(S("same"), "identical bytes");
  PutFile(D("same"), "identical bytes");
  SetMtime(S("same"), t);
  SetMtime(D("same"), t);
  const ino_t before = Ino(D("same"));
  ASSERT_TRUE(RunSync());
  EXPECT_EQ(Ino(D("same")), before) << "an identical file was copied again";
  EXPECT_EQ(sync_->Status()["displaced"], 0u);
  EXPECT_EQ(sync_->Status()["bytes_copied"], 0u);
  ExpectSameTrees();
}

TEST_F(TreeSyncTest, WithoutVerificationEqualSizeAndMtimeCountAsIdentical) {
  // The quick check of a resumed copy: it trusts what it wrote itself.
  const timespec t{1600000000, 5};
  PutFile(S("f"), "AAAA");
  PutFile(D("f"), "BBBB");
  SetMtime(S("f"), t);
  SetMtime(D("f"), t);
  const ino_t before = Ino(D("f"));
  ASSERT_TRUE(RunSync(/*verify_content=*/false));
  EXPECT_EQ(Ino(D("f")), before);
  EXPECT_EQ(ReadFile(D("f")), "BBBB");
}

TEST_F(TreeSyncTest, WithVerificationEqualSizeAndMtimeButOtherBytesAreReplaced) {
  const timespec t{1600000000, 5};
  PutFile(S("f"), "AAAA");
  PutFile(D("f"), "BBBB");
  PutFile(S("same"), "CCCC");
  PutFile(D("same"), "CCCC");
  for (const char* n : {"f", "same"}) {
    SetMtime(S(n), t);
    SetMtime(D(n), t);
  }
  const ino_t same_before = Ino(D("same"));
  ASSERT_TRUE(RunSync(/*verify_content=*/true));
  EXPECT_EQ(ReadFile(D("f")), "AAAA");
  EXPECT_EQ(ReadFile(D(DisplacedDir() + "/f")), "BBBB");
  EXPECT_EQ(Ino(D("same")), same_before) << "identical content was copied again";
  ExpectSameTrees();
}

TEST_F(TreeSyncTest, ASecondRunOverACompleteCopyChangesNothing) {
  std::mt19937_64 rng(42);
  MakeRandomTree(rng, 40);
  if (HasFatalFailure()) return;
  ASSERT_TRUE(RunSync());
  std::map<std::string, ino_t> inos;
  for (auto& e : std::filesystem::recursive_directory_iterator(dst_dir_))
    inos[e.path().string()] = Ino(e.path().string());
  sync_.reset();
  ASSERT_TRUE(RunSync());
  EXPECT_EQ(sync_->Status()["displaced"], 0u);
  EXPECT_EQ(sync_->Status()["bytes_copied"], 0u);
  for (auto& [p, ino] : inos) {
    if (p.find("/.nasfs") == std::string::npos) {
      EXPECT_EQ(Ino(p), ino) << p << " was replaced";
    }
  }
  ExpectSameTrees();
}

TEST_F(TreeSyncTest, ReconcileTreeBringsOneSubtreeInLineAndLeavesTheRest) {
  PutFile(S("sub/a"), "a1");
  PutFile(S("sub/gone"), "gone");
  PutFile(S("sub/deep/x"), "x1");
  PutFile(S("other"), "o1");
  ASSERT_TRUE(RunSync());
  ExpectSameTrees();
  // Changes on the source that the target missed.
  PutFile(S("sub/a"), "a2 longer");
  ASSERT_EQ(::unlink(S("sub/gone").c_str()), 0);
  PutFile(S("sub/new"), "new");
  PutFile(S("sub/deep/x"), "x2 longer");
  PutFile(S("other"), "o2 longer");
  {
    std::unique_lock lk(sync_mu_);
    ASSERT_EQ(sync_->ReconcileTree("sub"), 0);
  }
  ExpectSameTrees("sub");
  EXPECT_EQ(ReadFile(D("other")), "o1") << "ReconcileTree reached outside its subtree";
  EXPECT_FALSE(Exists(D("sub/gone")));
  std::multiset<std::string> kept = DisplacedContents();
  EXPECT_TRUE(kept.count("gone")) << "a file the source lost was deleted, not displaced";
  EXPECT_TRUE(kept.count("a1"));
}

TEST_F(TreeSyncTest, ReconcileTreeOfAPathGoneFromTheSourceDisplacesIt) {
  PutFile(S("f"), "f");
  ASSERT_TRUE(RunSync());
  ASSERT_EQ(::unlink(S("f").c_str()), 0);
  {
    std::unique_lock lk(sync_mu_);
    ASSERT_EQ(sync_->ReconcileTree("f"), 0);
  }
  EXPECT_FALSE(Exists(D("f")));
  EXPECT_TRUE(DisplacedContents().count("f"));
}

// "Whatever the copy would overwrite or delete on the target is first moved
// to .nasfs/displaced/<start time>/<path>: nothing is destroyed." A path
// displaced twice in one run (once by the walk, once by a reconcile after a
// rename across the walk's position) must keep both old versions.
TEST_F(TreeSyncTest, DisplacingTheSamePathTwiceKeepsBothOldVersions) {
  PutFile(S("page"), "source version 1");
  PutFile(D("page"), "foreign data nasfs never saw");
  ASSERT_TRUE(RunSync());
  ASSERT_EQ(ReadFile(D("page")), "source version 1");
  PutFile(S("page"), "source version 2, longer");
  {
    std::unique_lock lk(sync_mu_);
    ASSERT_EQ(sync_->ReconcileTree("page"), 0);
  }
  EXPECT_EQ(ReadFile(D("page")), "source version 2, longer");
  std::multiset<std::string> kept = DisplacedContents();
  EXPECT_TRUE(kept.count("foreign data nasfs never saw"))
      << "the foreign file displaced by the walk was destroyed by the second displacement";
  EXPECT_TRUE(kept.count("source version 1"));
}

TEST_F(TreeSyncTest, AFailedCopyReportsFailureThroughTheCallback) {
  // An unreadable source file: chmod 000 stops nobody as root, so use a
  // source directory the target cannot mirror: the target's path is a file
  // that cannot be displaced (its .nasfs is a file).
  PutFile(S("d/f"), "x");
  PutFile(D("d"), "file in the way");
  PutFile(D(".nasfs"), "not a directory");
  StartSync(false);
  std::unique_lock lk(done_mu_);
  ASSERT_TRUE(done_cv_.wait_for(lk, kSyncBound, [&] { return done_; }));
  EXPECT_FALSE(ok_);
  lk.unlock();
  sync_->Stop();  // the status is final once the thread ends (see WaitDone)
  auto st = sync_->Status();
  EXPECT_EQ(st["state"], "failed");
  EXPECT_TRUE(st["error"].is_string());
  EXPECT_FALSE(Covers("zzz")) << "a failed copy covers what it never reached";
  EXPECT_EQ(ReadFile(D("d")), "file in the way") << "the blocking file was destroyed";
}

// ---- Issue 10: hard links survive every copy ----

// Links on the target: the inode numbers of names that must be one file.
std::set<ino_t> Inodes(const std::vector<std::string>& paths) {
  std::set<ino_t> out;
  for (const auto& p : paths) {
    struct stat st;
    out.insert(::lstat(p.c_str(), &st) == 0 ? st.st_ino : 0);
  }
  return out;
}

TEST_F(TreeSyncTest, AWalkCopiesHardLinksAsLinks) {
  PutFile(S("d/a"), "linked");
  ASSERT_EQ(::link(S("d/a").c_str(), S("d/b").c_str()), 0);
  ASSERT_EQ(::mkdir(S("e").c_str(), 0755), 0);
  ASSERT_EQ(::link(S("d/a").c_str(), S("e/c").c_str()), 0);
  PutFile(S("single"), "one name");
  ASSERT_TRUE(RunSync());
  EXPECT_EQ(Inodes({D("d/a"), D("d/b"), D("e/c")}).size(), 1u) << "three names, not one file, on the target";
  struct stat st;
  ASSERT_EQ(::lstat(D("d/a").c_str(), &st), 0);
  EXPECT_EQ(st.st_nlink, 3u);
  ExpectSameTrees();
}

// A target that holds the names as separate files (or one file the source
// has as two) is brought to the source's shape, even when every file's
// size and mtime already match.
TEST_F(TreeSyncTest, AWalkJoinsAndSplitsLinksToMatchTheSource) {
  PutFile(S("a"), "same");
  ASSERT_EQ(::link(S("a").c_str(), S("b").c_str()), 0);
  PutFile(S("x"), "twin");
  PutFile(S("y"), "twin");
  SetMtime(S("x"), {1000, 0});
  SetMtime(S("y"), {1000, 0});
  // The target: a and b separate, x and y one file.
  PutFile(D("a"), "same");
  PutFile(D("b"), "same");
  PutFile(D("x"), "twin");
  ASSERT_EQ(::link(D("x").c_str(), D("y").c_str()), 0);
  struct stat st;
  ASSERT_EQ(::lstat(S("a").c_str(), &st), 0);
  for (const char* n : {"a", "b"}) SetMtime(D(n), st.st_mtim);
  SetMtime(D("x"), {1000, 0});
  ASSERT_TRUE(RunSync());
  EXPECT_EQ(Inodes({D("a"), D("b")}).size(), 1u) << "a and b are one file on the source";
  EXPECT_EQ(Inodes({D("x"), D("y")}).size(), 2u) << "x and y are two files on the source";
  ExpectSameTrees();
}

// The reproduction, as the replay does it: `echo v1 > d/a; ln d/a
// d/b; mv d e` while the target was out. The replay reconciles e whole
// (the rename's tree scope): e/a and e/b must be one file there, so a later
// write through either name reaches both.
TEST_F(TreeSyncTest, ReconcilingARenamedDirectoryKeepsItsHardLinks) {
  PutFile(S("e/a"), "v1");
  ASSERT_EQ(::link(S("e/a").c_str(), S("e/b").c_str()), 0);
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  for (const char* p : {"d", "d/a", "d/b"}) ASSERT_EQ(rs.Reconcile(p, journal::Scope::kEntry, true), 0) << p;
  ASSERT_EQ(rs.Reconcile("e", journal::Scope::kTree, true), 0);
  ASSERT_EQ(rs.ReconcileDirTimes(""), 0);  // as the replay does for the parents of what it replayed
  EXPECT_EQ(Inodes({D("e/a"), D("e/b")}).size(), 1u);
  ExpectSameTrees();
}

// A link between a name the replay visits and one it does not (made before
// the outage, or outside the renamed directory): the other name on the
// target becomes a link to the new copy.
TEST_F(TreeSyncTest, ReconcilingOneNameLinksItsOtherNamesOutsideTheScope) {
  PutFile(S("old/a"), "v2");
  ASSERT_TRUE(std::filesystem::create_directories(S("new")));
  ASSERT_EQ(::link(S("old/a").c_str(), S("new/b").c_str()), 0);
  // The target has old/a from before, as a file of its own.
  PutFile(D("old/a"), "v1");
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("new", journal::Scope::kTree, true), 0);
  ASSERT_EQ(rs.ReconcileDirTimes(""), 0);  // as the replay does for the parents of what it replayed
  EXPECT_EQ(Inodes({D("old/a"), D("new/b")}).size(), 1u) << "old/a was left a separate file";
  EXPECT_EQ(ReadFile(D("old/a")), "v2");
  EXPECT_EQ(rs.TakeRelinked(), std::vector<std::string>{"old/a"});
  ExpectSameTrees();
}

// A link made a moment after this TreeSync indexed the source's links (by
// an earlier entry of the same replay): the index misses the file and is
// made again, so the other name is linked, not left a copy of its own. The
// soak found it: a link made, then its directory renamed, within 5 s.
TEST_F(TreeSyncTest, ALinkMadeAfterTheLinkIndexIsStillFound) {
  PutFile(S("x/one"), "one");
  ASSERT_EQ(::link(S("x/one").c_str(), S("x/two").c_str()), 0);
  PutFile(S("f"), "shared");
  ASSERT_TRUE(std::filesystem::create_directories(D("x")));
  PutFile(D("f"), "shared");
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  // x/one is copied, x/two not yet: the index is built to find its name.
  ASSERT_EQ(rs.Reconcile("x/one", journal::Scope::kEntry, true), 0);
  ASSERT_EQ(Inodes({D("x/one"), D("x/two")}).size(), 1u);
  // Now f gets a second name in a new directory, which is replayed whole.
  ASSERT_TRUE(std::filesystem::create_directories(S("new")));
  ASSERT_EQ(::link(S("f").c_str(), S("new/g").c_str()), 0);
  ASSERT_EQ(rs.Reconcile("new", journal::Scope::kTree, true), 0);
  ASSERT_EQ(rs.ReconcileDirTimes(""), 0);
  EXPECT_EQ(Inodes({D("f"), D("new/g")}).size(), 1u) << "new/g was left a file of its own";
  ExpectSameTrees();
}

// A replayed link(2) brings its existing name up to date first; that copy
// puts a new file in the existing name's directory, whose times must stay
// the source's (the soak found the master's directory newer by seconds).
TEST_F(TreeSyncTest, AReplayedLinkLeavesTheTimesOfItsSourcesDirectory) {
  PutFile(S("a/f"), "second version");
  ASSERT_TRUE(std::filesystem::create_directories(S("b")));
  ASSERT_EQ(::link(S("a/f").c_str(), S("b/h").c_str()), 0);
  PutFile(D("a/f"), "first");
  ASSERT_TRUE(std::filesystem::create_directories(D("b")));
  ASSERT_TRUE(std::filesystem::create_directories(D(".nasfs/tmp")));  // as on a paired NAS
  const timespec old[2] = {{1600000000, 0}, {1600000000, 0}};
  for (const std::string& dir : {S(""), D(""), S("a"), D("a"), S("b"), D("b")})
    ASSERT_EQ(::utimensat(AT_FDCWD, dir.c_str(), old, 0), 0) << dir;
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.ReplayLink("b/h", "a/f"), 0);
  ASSERT_EQ(rs.ReconcileDirTimes("b"), 0);  // as the replay does for its entries' directories
  EXPECT_EQ(Inodes({D("a/f"), D("b/h")}).size(), 1u);
  EXPECT_EQ(ReadFile(D("b/h")), "second version");
  ExpectSameTrees();
}

// Written through one name of a linked file, which was then removed: the
// write may be journaled under that name alone (the daemon knew the other
// name by a lookup of its own), so the replay of the removal is the last
// chance to carry it. The target's other names of that file are copied
// again. The soak found the backup's h827 with zeros where r863's append
// had gone.
TEST_F(TreeSyncTest, RemovingANameOfALinkedFileCopiesItsOtherNamesAgain) {
  PutFile(S("b/h"), "old bytes, then an append through a/r");
  PutFile(D("a/r"), "old bytes");
  ASSERT_TRUE(std::filesystem::create_directories(D("b")));
  ASSERT_EQ(::link(D("a/r").c_str(), D("b/h").c_str()), 0);
  ASSERT_TRUE(std::filesystem::create_directories(S("a")));
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("a/r", journal::Scope::kEntry, true), 0);
  for (const char* dir : {"a", ""}) ASSERT_EQ(rs.ReconcileDirTimes(dir), 0);  // as the replay does
  EXPECT_FALSE(std::filesystem::exists(D("a/r")));
  EXPECT_EQ(ReadFile(D("b/h")), "old bytes, then an append through a/r");
  EXPECT_EQ(rs.TakeRelinked(), std::vector<std::string>{"b/h"}) << "handed to Settle";
  ExpectSameTrees();
}

// The same when a directory goes: a linked file inside it keeps its names
// outside, which are copied again (the hour soak: a directory renamed away
// on the backup held a name of r19265, written through that name alone;
// the master's r19265 kept the older bytes).
TEST_F(TreeSyncTest, RemovingADirectoryCopiesTheOutsideNamesOfLinkedFilesInIt) {
  PutFile(S("keep/r"), "newer bytes written through gone/deep/f");
  PutFile(D("gone/deep/f"), "older");
  ASSERT_TRUE(std::filesystem::create_directories(D("keep")));
  ASSERT_EQ(::link(D("gone/deep/f").c_str(), D("keep/r").c_str()), 0);
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("gone", journal::Scope::kTree, true), 0);
  for (const char* dir : {"keep", ""}) ASSERT_EQ(rs.ReconcileDirTimes(dir), 0);  // as the replay does
  EXPECT_FALSE(std::filesystem::exists(D("gone")));
  EXPECT_EQ(ReadFile(D("keep/r")), "newer bytes written through gone/deep/f");
  ExpectSameTrees();
}

// journal::Op::kLinked: the names the source gives a written inode are
// brought over with their data, with the times of their directories, but
// only names the target holds as files, and none the caller says the
// source itself lacks a change to. (CI's soak: a name copied into a
// directory that another server had renamed away brought the directory
// back on both NAS; a name another server had just written on the target
// alone got the source's older bytes.) A target file newer than the
// source's is left alone too.
TEST_F(TreeSyncTest, TheNamesOfAWrittenInodeAreCopiedOnlyWhereTheTargetHoldsThemAndNotSkipped) {
  PutFile(S("keep/a"), "new bytes written through a name now gone");
  ASSERT_TRUE(std::filesystem::create_directories(S("moved/sub")));
  ASSERT_EQ(::link(S("keep/a").c_str(), S("moved/sub/b").c_str()), 0);
  PutFile(S("keep/c"), "older on the source");
  PutFile(S("keep/n"), "older on the source too");
  PutFile(D("keep/a"), "old");
  PutFile(D("keep/c"), "skipped by the caller");
  PutFile(D("keep/n"), "newer on the target alone");
  ASSERT_TRUE(std::filesystem::create_directories(D("moved")));  // "sub" renamed away there
  // The target's a and c are older than the source's, n newer.
  const timespec old_times[2] = {{1000, 0}, {1000, 0}};
  for (const char* f : {"keep/a", "keep/c"}) ASSERT_EQ(::utimensat(AT_FDCWD, D(f).c_str(), old_times, 0), 0);
  ASSERT_EQ(::utimensat(AT_FDCWD, S("keep/n").c_str(), old_times, 0), 0);
  struct stat a{}, c{}, n{}, keep_src{};
  ASSERT_EQ(::stat(S("keep/a").c_str(), &a), 0);
  ASSERT_EQ(::stat(S("keep/c").c_str(), &c), 0);
  ASSERT_EQ(::stat(S("keep/n").c_str(), &n), 0);
  ASSERT_EQ(::stat(S("keep").c_str(), &keep_src), 0);
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  std::vector<uint64_t> inodes{static_cast<uint64_t>(a.st_ino), static_cast<uint64_t>(c.st_ino),
                               static_cast<uint64_t>(n.st_ino)};
  std::sort(inodes.begin(), inodes.end());
  ASSERT_EQ(rs.ReconcileNamesOf(inodes, [](const std::string& n) { return n == "keep/c"; }, /*exclusive=*/false), 0);
  EXPECT_EQ(ReadFile(D("keep/a")), "new bytes written through a name now gone");
  EXPECT_FALSE(std::filesystem::exists(D("moved/sub"))) << "a directory the target lacks was made";
  EXPECT_EQ(ReadFile(D("keep/c")), "skipped by the caller") << "a skipped name was copied";
  EXPECT_EQ(ReadFile(D("keep/n")), "newer on the target alone") << "a newer target file was copied over";
  struct stat keep_dst{};
  ASSERT_EQ(::stat(D("keep").c_str(), &keep_dst), 0);
  EXPECT_EQ(keep_dst.st_mtim.tv_sec, keep_src.st_mtim.tv_sec);
  EXPECT_EQ(keep_dst.st_mtim.tv_nsec, keep_src.st_mtim.tv_nsec) << "keep's times moved with the copy";
}

// Writes go on while the replay or a split brain's merge walks the source
// for a written file's other names: a directory moved or removed between
// its listing and the stat of its entries is as if never listed. The
// soak's merge failed on it, and each failure set the master down again.
TEST_F(TreeSyncTest, AWalkForLinkedNamesOutlivesDirectoriesMovedUnderIt) {
  PutFile(S("keep/a"), "linked");
  ASSERT_EQ(::link(S("keep/a").c_str(), S("keep/b").c_str()), 0);
  struct stat a{};
  ASSERT_EQ(::stat(S("keep/a").c_str(), &a), 0);
  std::atomic<bool> stop{false};
  std::atomic<int> churned{0};
  // A directory of more than one stat batch (256 names), moved away and
  // back as fast as it goes: half the time its name is gone.
  for (int i = 0; i < 600; ++i) PutFile(S("churn/d/f" + std::to_string(i)), "");
  std::thread writer([&] {
    while (!stop) {
      if (::rename(S("churn/d").c_str(), S("churn/e").c_str()) == 0 &&
          ::rename(S("churn/e").c_str(), S("churn/d").c_str()) == 0)
        ++churned;
    }
  });
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  int failures = 0, last = 0, walks = 0;
  auto end = std::chrono::steady_clock::now() + std::chrono::seconds(2);
  while (std::chrono::steady_clock::now() < end) {
    ++walks;
    if (int r = rs.IndexInodes({static_cast<uint64_t>(a.st_ino)})) {
      ++failures;
      last = r;
    }
  }
  stop = true;
  writer.join();
  EXPECT_EQ(failures, 0) << failures << " of " << walks << " walks failed, the last with " << std::strerror(last);
  EXPECT_GT(churned.load(), 0);
}

// A file renamed over one name of a linked file: on the source that name
// is now another file (linked elsewhere); the target's is still the old
// group's. The new data must not go into the target's old file, whose
// other names would change with it (the soak: f1406 and h1781 took f1756's
// bytes on the master).
TEST_F(TreeSyncTest, ARenameOverALinkedNameDoesNotWriteIntoTheOldGroup) {
  PutFile(S("old/a"), "the old group");
  ASSERT_EQ(::link(S("old/a").c_str(), S("old/b").c_str()), 0);
  PutFile(S("new/x"), "the new file, linked elsewhere");
  ASSERT_EQ(::link(S("new/x").c_str(), S("new/y").c_str()), 0);
  TreeSync walk(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  for (const char* p : {"old", "new"}) ASSERT_EQ(walk.Reconcile(p, journal::Scope::kTree, true), 0) << p;
  // On the source, new/x is renamed over old/a.
  ASSERT_EQ(::rename(S("new/x").c_str(), S("old/a").c_str()), 0);
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("old/a", journal::Scope::kEntry, true), 0);
  EXPECT_EQ(ReadFile(D("old/b")), "the old group") << "old/b took the renamed file's bytes";
  EXPECT_EQ(ReadFile(D("old/a")), "the new file, linked elsewhere");
  ASSERT_EQ(rs.Reconcile("new/x", journal::Scope::kEntry, true), 0);
  for (const char* dir : {"old", "new", ""}) ASSERT_EQ(rs.ReconcileDirTimes(dir), 0);  // as the replay does
  ExpectSameTrees();
}

// A tree reconciled with the lock held (a takeover, the split-brain merge)
// takes it one entry at a time: a write waits for one entry's calls, not
// for a renamed directory's whole copy. The soak's hour run found writes
// held 1.1 s by a merge copying a renamed tree. Seen from a writer's side:
// between two shared holds, the target holds some of the files, not all or
// none.
TEST_F(TreeSyncTest, AnExclusiveTreeReconcileHoldsTheLockPerEntry) {
  constexpr int kFiles = 200;
  for (int i = 0; i < kFiles; ++i) PutFile(S("t/f" + std::to_string(i)), "file " + std::to_string(i));
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  std::atomic<bool> done{false};
  int result = -1;
  std::thread reconcile([&] {
    result = rs.ReconcileExclusive("t", journal::Scope::kTree, true);
    done = true;
  });
  std::set<size_t> seen;
  while (!done) {
    std::shared_lock lk(sync_mu_);  // as a write through the mount takes it
    size_t n = 0;
    std::error_code ec;
    for (auto it = std::filesystem::directory_iterator(D("t"), ec); !ec && it != std::filesystem::directory_iterator();
         it.increment(ec))
      ++n;
    seen.insert(n);
  }
  reconcile.join();
  ASSERT_EQ(result, 0);
  ASSERT_EQ(rs.ReconcileDirTimes(""), 0);  // as the replay does for the parents of what it replayed
  size_t partial = 0;
  for (size_t n : seen) partial += n > 0 && n < kFiles;
  EXPECT_GT(partial, 0u) << "a writer only ever saw the tree not begun or whole: the lock was held for all of it";
  ExpectSameTrees();
}

// Both sides linked, the data changed: it goes into the target's file
// itself, so every name sees it and the link stays.
TEST_F(TreeSyncTest, NewDataForALinkedFileKeepsTheLink) {
  PutFile(S("a"), "new content");
  ASSERT_EQ(::link(S("a").c_str(), S("b").c_str()), 0);
  PutFile(D("a"), "old");
  ASSERT_EQ(::link(D("a").c_str(), D("b").c_str()), 0);
  const ino_t before = Ino(D("a"));
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("a", journal::Scope::kEntry, true), 0);
  EXPECT_EQ(Ino(D("a")), before);
  EXPECT_EQ(ReadFile(D("b")), "new content");
  // An entry's Reconcile leaves its parent's times alone (the replay sets
  // them after); the roots were linked into a few microseconds apart, in
  // the same clock tick or not.
  ASSERT_EQ(rs.ReconcileDirTimes(""), 0);
  ExpectSameTrees();
}

// The replay's second look (a path written by another web server while it
// was replayed is copied again, force_data) at a linked file whose other
// name this replay copied earlier: the data is copied again, not skipped
// as "linked already". It once was, and the master kept the old bytes
// (found by the soak: reads after switch-back returned a longer file).
TEST_F(TreeSyncTest, CopyingALinkedFileAgainCopiesItsData) {
  PutFile(S("a"), "first version, longer");
  ASSERT_EQ(::link(S("a").c_str(), S("b").c_str()), 0);
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("a", journal::Scope::kEntry, true), 0);
  ASSERT_EQ(rs.Reconcile("b", journal::Scope::kEntry, true), 0);
  ASSERT_EQ(Inodes({D("a"), D("b")}).size(), 1u);
  // Written on the source, in place; b (not a, which this TreeSync copied
  // first) is found differing.
  {
    std::ofstream f(S("b"), std::ios::trunc);
    f << "second";
  }
  ASSERT_EQ(rs.Reconcile("b", journal::Scope::kEntry, true), 0);
  EXPECT_EQ(ReadFile(D("a")), "second");
  EXPECT_EQ(ReadFile(D("b")), "second");
  EXPECT_EQ(Inodes({D("a"), D("b")}).size(), 1u);
  ExpectSameTrees();
}

// A write replayed by byte ranges onto a file with other names: the bytes
// outside the ranges may have come through a name the journal never listed
// with this one (the hour soak: an append's range was copied onto the
// master's h37679 over bytes that an overwrite through f37537 never brought
// there). CopyRanges refuses it, and the replay's Reconcile copies the
// whole file.
TEST_F(TreeSyncTest, ARangedCopyOfALinkedFileIsLeftToAWholeCopy) {
  const std::string now = std::string(2749, 'n') + std::string(1622, 'x');
  PutFile(S("d/f"), now);
  ASSERT_EQ(::link(S("d/f").c_str(), S("h").c_str()), 0);
  PutFile(D("d/f"), std::string(now.size(), 'o'));  // not linked there yet
  PutFile(D("h"), std::string(now.size(), 'o'));
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  EXPECT_EQ(rs.CopyRanges("h", {journal::Range{2749, 1622}}), EINVAL);
  EXPECT_EQ(ReadFile(D("h")), std::string(now.size(), 'o')) << "a range was copied";
  ASSERT_EQ(rs.Reconcile("h", journal::Scope::kEntry, true), 0);
  EXPECT_EQ(ReadFile(D("h")), now);
}

// The other way round: the target's file still has a name the source's
// no longer shares. Ranges written into it would reach that name too.
TEST_F(TreeSyncTest, ARangedCopyIntoATargetFileWithOtherNamesIsLeftToAWholeCopy) {
  const std::string now = std::string(100, 'a') + std::string(50, 'b');
  PutFile(S("x"), now);
  PutFile(S("other"), std::string(150, 'o'));
  PutFile(D("x"), std::string(150, 'o'));
  ASSERT_EQ(::link(D("x").c_str(), D("other").c_str()), 0);  // split on the source since
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  EXPECT_EQ(rs.CopyRanges("x", {journal::Range{100, 50}}), EINVAL);
  ASSERT_EQ(rs.Reconcile("x", journal::Scope::kEntry, true), 0);
  EXPECT_EQ(ReadFile(D("x")), now);
  EXPECT_EQ(ReadFile(D("other")), std::string(150, 'o')) << "the split name took x's bytes";
}

// A tree's files copied by one Reconcile are handed to the caller's Settle
// (a write racing the copy leaves them differing; the soak once ended with
// an append missing on the master), once, and only files whose data moved.
TEST_F(TreeSyncTest, ReconcileListsTheFilesItCopiedIntoATree) {
  PutFile(S("d/a"), "one");
  PutFile(S("d/e/b"), "two");
  PutFile(S("d/same"), "same");
  PutFile(D("d/same"), "same");
  struct stat st;
  ASSERT_EQ(::lstat(S("d/same").c_str(), &st), 0);
  SetMtime(D("d/same"), st.st_mtim);
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("d", journal::Scope::kTree, false), 0);
  auto copied = rs.TakeCopied();
  std::sort(copied.begin(), copied.end());
  EXPECT_EQ(copied, (std::vector<std::string>{"d/a", "d/e/b"}));
  EXPECT_TRUE(rs.TakeCopied().empty());
}

// A replay round remembers what it copied whole: a file in a directory the
// target lacked need not be copied again for its own journal entry, unless
// a write through the mount touched it after the copy looked at it. Outside
// a round, or with no tracker, nothing counts as copied.
TEST_F(TreeSyncTest, ARoundRemembersWhatItCopiedWholeUntilAWriteTouchesIt) {
  PutFile(S("d/a"), "one");
  PutFile(S("d/e/b"), "two");
  PutFile(S("old"), "old");
  PutFile(D("old"), "old");
  SetMtime(S("old"), timespec{1000, 0});
  SetMtime(D("old"), timespec{1000, 0});
  WriteTracker tracker;
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("d", journal::Scope::kEntry, true), 0);
  EXPECT_FALSE(rs.CopiedSince("d/a")) << "no round under way";

  rs.SetWriteTracker(&tracker);
  rs.BeginRound();
  PutFile(S("n/a"), "new one");
  PutFile(S("n/e/b"), "new two");
  ASSERT_EQ(rs.Reconcile("n", journal::Scope::kEntry, true), 0);  // the target lacked n: copied whole
  ASSERT_EQ(rs.Reconcile("old", journal::Scope::kEntry, false), 0);
  EXPECT_EQ(ReadFile(D("n/e/b")), "new two");
  EXPECT_TRUE(rs.CopiedSince("n"));
  EXPECT_TRUE(rs.CopiedSince("n/a"));
  EXPECT_TRUE(rs.CopiedSince("n/e/b"));
  EXPECT_FALSE(rs.CopiedSince("old")) << "the same on both sides: compared, not copied";
  EXPECT_FALSE(rs.CopiedSince("n/missing"));
  // Ancestors made for a deeper path are made without what they hold: their
  // own entries still copy it.
  PutFile(S("m/x/f"), "deep");
  PutFile(S("m/x/other"), "not copied with f");
  ASSERT_EQ(rs.Reconcile("m/x/f", journal::Scope::kEntry, true), 0);
  EXPECT_EQ(ReadFile(D("m/x/f")), "deep");
  EXPECT_FALSE(Exists(D("m/x/other")));
  EXPECT_TRUE(rs.CopiedSince("m/x/f"));
  EXPECT_FALSE(rs.CopiedSince("m/x"));
  EXPECT_FALSE(rs.CopiedSince("m"));

  // A write through the mount after the copy: its entry is replayed.
  tracker.Begin("n/a");
  EXPECT_FALSE(rs.CopiedSince("n/a")) << "a write under way";
  tracker.End("n/a");
  EXPECT_FALSE(rs.CopiedSince("n/a")) << "a write since the copy";
  EXPECT_TRUE(rs.CopiedSince("n/e/b"));

  // Removed from the target by the round (the source lost it): forgotten.
  ASSERT_EQ(::unlink(S("n/e/b").c_str()), 0);
  ASSERT_EQ(::rmdir(S("n/e").c_str()), 0);
  ASSERT_EQ(rs.Reconcile("n/e", journal::Scope::kTree, false), 0);
  EXPECT_FALSE(Exists(D("n/e")));
  EXPECT_FALSE(rs.CopiedSince("n/e/b"));
  EXPECT_FALSE(rs.CopiedSince("n/e"));

  rs.EndRound();
  EXPECT_FALSE(rs.CopiedSince("n")) << "a round's memory ends with it";
}

// A replay lane's plain-only TreeSync copies lone files and refuses, having
// changed nothing, whatever needs directory or link work: the replay thread
// does those alone.
TEST_F(TreeSyncTest, APlainOnlyReconcileCopiesLoneFilesAndRefusesTheRest) {
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  rs.SetPlainOnly(true);
  PutFile(S("d/f"), "new data");
  PutFile(D("d/f"), "old");
  ASSERT_EQ(rs.Reconcile("d/f", journal::Scope::kEntry, true), 0);
  EXPECT_EQ(ReadFile(D("d/f")), "new data");
  PutFile(D("d/gone"), "the source lost it");
  ASSERT_EQ(rs.Reconcile("d/gone", journal::Scope::kEntry, true), 0);
  EXPECT_FALSE(Exists(D("d/gone")));
  ASSERT_EQ(::symlink("d/f", S("d/l").c_str()), 0);
  ASSERT_EQ(rs.Reconcile("d/l", journal::Scope::kEntry, true), 0);
  EXPECT_TRUE(Exists(D("d/l")));

  // A directory on either side.
  ASSERT_EQ(::mkdir(S("d/sub").c_str(), 0755), 0);
  EXPECT_EQ(rs.Reconcile("d/sub", journal::Scope::kEntry, true), TreeSync::kNotPlain);
  EXPECT_FALSE(Exists(D("d/sub")));
  ASSERT_EQ(::mkdir(D("d/tdir").c_str(), 0755), 0);
  PutFile(S("d/tdir"), "a file where the target has a directory");
  EXPECT_EQ(rs.Reconcile("d/tdir", journal::Scope::kEntry, true), TreeSync::kNotPlain);
  struct stat st;
  ASSERT_EQ(::lstat(D("d/tdir").c_str(), &st), 0);
  EXPECT_TRUE(S_ISDIR(st.st_mode));
  // A missing ancestor.
  PutFile(S("n/f"), "under a directory the target lacks");
  EXPECT_EQ(rs.Reconcile("n/f", journal::Scope::kEntry, true), TreeSync::kNotPlain);
  EXPECT_FALSE(Exists(D("n")));
  // An ancestor neither side has (removed since): nothing to do, done.
  EXPECT_EQ(rs.Reconcile("gone/deeper/f", journal::Scope::kEntry, true), 0);
  EXPECT_FALSE(Exists(D("gone")));
  // A file with other names, on the source or on the target.
  PutFile(S("d/h1"), "linked");
  ASSERT_EQ(::link(S("d/h1").c_str(), S("d/h2").c_str()), 0);
  EXPECT_EQ(rs.Reconcile("d/h1", journal::Scope::kEntry, true), TreeSync::kNotPlain);
  EXPECT_FALSE(Exists(D("d/h1")));
  PutFile(S("d/t1"), "alone on the source");
  PutFile(D("d/t1"), "linked on the target");
  ASSERT_EQ(::link(D("d/t1").c_str(), D("d/t2").c_str()), 0);
  EXPECT_EQ(rs.Reconcile("d/t1", journal::Scope::kEntry, true), TreeSync::kNotPlain);
  EXPECT_EQ(ReadFile(D("d/t2")), "linked on the target");

  // The same TreeSync, not plain-only, does all of it.
  rs.SetPlainOnly(false);
  for (const char* p : {"d/sub", "d/tdir", "n/f", "d/h1", "d/t1"})
    EXPECT_EQ(rs.Reconcile(p, journal::Scope::kEntry, true), 0) << p;
  EXPECT_EQ(ReadFile(D("n/f")), "under a directory the target lacks");
  EXPECT_EQ(ReadFile(D("d/t1")), "alone on the source");
}

// A new copy of a file's data takes the source's owner, mode and times on
// the temp file before it is renamed into place; the attributes are not set
// a second time, so they must be right from the copy alone.
TEST_F(TreeSyncTest, ACopiedFileHasTheSourcesModeOwnerAndTimes) {
  PutFile(S("f"), "data");
  ASSERT_EQ(::chmod(S("f").c_str(), 04751), 0);
  ASSERT_EQ(::chown(S("f").c_str(), 1234, 5678), 0);
  ASSERT_EQ(::chmod(S("f").c_str(), 04751), 0);  // chown cleared the set-id bit
  SetMtime(S("f"), timespec{1000000, 123456789});
  PutFile(D("f"), "stale data");
  TreeSync rs(src_.get(), dst_.get(), &sync_mu_, false, false, nullptr);
  ASSERT_EQ(rs.Reconcile("f", journal::Scope::kEntry, true), 0);
  struct stat s, d;
  ASSERT_EQ(::lstat(S("f").c_str(), &s), 0);
  ASSERT_EQ(::lstat(D("f").c_str(), &d), 0);
  EXPECT_EQ(ReadFile(D("f")), "data");
  EXPECT_EQ(d.st_mode, s.st_mode);
  EXPECT_EQ(d.st_uid, 1234u);
  EXPECT_EQ(d.st_gid, 5678u);
  EXPECT_EQ(d.st_mtim.tv_sec, s.st_mtim.tv_sec);
  EXPECT_EQ(d.st_mtim.tv_nsec, s.st_mtim.tv_nsec);
}

// Design hole of issue 10: with io_uring unavailable (disabled by the
// kernel or a seccomp filter) the copy must still finish.
TEST_F(TreeSyncTest, WithoutIoUringTheCopyStillFinishes) {
  ::setenv("NASFS_NO_IO_URING", "1", 1);
  std::string big(3 * kMiB + 17, '\0');
  std::mt19937_64 rng(TestSeed());
  for (auto& c : big) c = static_cast<char>(rng());
  PutFile(S("big"), big);
  PutFile(S("small"), "s");
  bool ok = RunSync();
  ::unsetenv("NASFS_NO_IO_URING");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ReadFile(D("big")), big);
  ExpectSameTrees();
}

// Design hole of issue 10: the walk copied each file under the exclusive
// lock, so a large file held every write through the mount that long. Its
// data is now copied before the lock and kept only if no write touched the
// path meanwhile. Writes race the walk here as Nasfs::Mutate makes them
// (shared lock, tracked, to the target too once the walk covers the path):
// the trees still end equal.
TEST_F(TreeSyncTest, DataCopiedBeforeTheLockIsKeptOnlyIfNoWriteTouchedIt) {
  std::mt19937_64 rng(TestSeed());
  constexpr int kFiles = 24;
  for (int i = 0; i < kFiles; ++i) PutFile(S("f" + std::to_string(i)), std::string(kMiB + i, 'a' + i % 26));
  WriteTracker tracker;
  StartSync(/*verify_content=*/false, &tracker);
  std::atomic<bool> stop{false};
  std::atomic<int> writes{0};
  std::thread writer([&] {
    std::mt19937_64 wr(rng());
    while (!stop) {
      std::string rel = "f" + std::to_string(wr() % kFiles);
      std::string data(4096, static_cast<char>('A' + wr() % 26));
      off_t off = static_cast<off_t>(wr() % kMiB);
      std::shared_lock lk(sync_mu_);
      tracker.Begin(rel);
      for (const std::string& root : {src_dir_, dst_dir_}) {
        if (root == dst_dir_ && !sync_->Covers(rel)) continue;  // the walk copies it when it gets there
        int fd = ::open((root + "/" + rel).c_str(), O_WRONLY);
        if (fd >= 0) {
          (void)!::pwrite(fd, data.data(), data.size(), off);
          const timespec t[2] = {{5000, 0}, {5000, static_cast<long>(writes.load())}};
          ::futimens(fd, t);
          ::close(fd);
        }
      }
      tracker.End(rel);
      ++writes;
      lk.unlock();
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  });
  const ::testing::AssertionResult copied = WaitDone();
  stop = true;
  writer.join();
  ASSERT_TRUE(copied);
  EXPECT_GT(writes.load(), 0);
  ExpectSameTrees();
}

// The walk copies a file's data without the lock (Precopy) while a FUSE
// thread may copy under it: a rename across the walk's position reconciles
// a subtree (Nasfs::Mutate's ReconcileTree). The two copies once shared one
// io_uring, each reaping the other's completions, and the precopied file's
// record was read by one thread while the other wrote it. Each copy now
// takes a ring of its own and the record has its own lock: both finish,
// with every byte where it belongs.
TEST_F(TreeSyncTest, AReconcileUnderTheLockRacesTheWalksUnlockedCopy) {
  constexpr int kFiles = 24, kHot = 4;
  for (int i = 0; i < kFiles; ++i) PutFile(S("z/f" + std::to_string(i)), std::string(2 * kMiB + i, 'a' + i % 26));
  for (int i = 0; i < kHot; ++i) PutFile(S("a/g" + std::to_string(i)), std::string(2 * kMiB, 'A'));
  WriteTracker tracker;
  StartSync(/*verify_content=*/false, &tracker);
  std::atomic<bool> stop{false};
  std::atomic<int> rounds{0}, failures{0}, last_error{0};
  std::thread fuse([&] {
    for (int n = 0; !stop; ++n) {
      std::string rel = "a/g" + std::to_string(n % kHot);
      {
        // A write through the mount: the tracker sees it, the source gets
        // new bytes (and a new mtime), so the reconcile copies data.
        std::shared_lock lk(sync_mu_);
        tracker.Begin(rel);
        int fd = ::open(S(rel).c_str(), O_WRONLY);
        if (fd >= 0) {
          std::string data(2 * kMiB, static_cast<char>('A' + n % 26));
          (void)!::pwrite(fd, data.data(), data.size(), 0);
          ::close(fd);
        }
        tracker.End(rel);
      }
      std::unique_lock lk(sync_mu_);
      if (int r = sync_->ReconcileTree("a")) {
        ++failures;
        last_error = r;
      }
      ++rounds;
    }
  });
  const ::testing::AssertionResult copied = WaitDone();
  stop = true;
  fuse.join();
  ASSERT_TRUE(copied);
  EXPECT_EQ(failures.load(), 0) << "last error: " << std::strerror(last_error.load());
  EXPECT_GT(rounds.load(), 0);
  ExpectSameTrees();
}

}  // namespace
}  // namespace nasfs
