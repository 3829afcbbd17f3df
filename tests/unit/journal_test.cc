// Crash and fault-injection tests of the local write-ahead journal
// (journal/journal.h), in the style of RocksDB's FaultInjectionTestFS and
// LevelDB's log tests.
//
// FaultEnv wraps Env::Default() and remembers, per file, how many bytes were
// appended, how many a Sync() made durable, and whether the file's directory
// entry was made durable by a SyncDir of its directory. A crash (Kill) first
// stops every write through the env, as a dead machine would, then destroys
// the journal, then DropUnsynced() leaves the disk as a power cut could: each
// file cut to its synced length, files created since the last SyncDir of their
// directory gone (and, when asked, files removed since then back). Bytes whose
// fdatasync failed are zeroed even if a later sync succeeded (Linux marks
// such pages clean: they may never reach the disk). TearTail, FlipByte and the
// zero helpers damage the tail or the middle of a segment; FailNext*/Fail*Always
// make an append or a sync fail; DeactivateAfter(n) crashes after n more
// writing calls, so a loop can crash at every step of a checkpoint.
//
// Every test uses its own temporary directory and drives Tick() by hand
// (Options.background = false). Nothing here asserts on time: where threads
// race, the assertions are about counts and about what a crash keeps. Random
// tests are seeded; set NASFS_TEST_SEED to repeat one.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "journal/journal.h"
#include "journal/record.h"
#include "journal/peer_log.h"

namespace nasfs::journal {
namespace {

namespace fs = std::filesystem;
using ::testing::Contains;
using ::testing::IsSupersetOf;
using ::testing::Not;
using R = std::pair<uint64_t, uint64_t>;  // offset, length
using namespace std::chrono_literals;

uint64_t TestSeed() {
  if (const char* s = std::getenv("NASFS_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  return std::random_device{}();
}

std::string Norm(const std::string& p) {
  std::string s = fs::path(p).lexically_normal().string();
  while (s.size() > 1 && s.back() == '/') s.pop_back();
  return s;
}
std::string ParentOf(const std::string& p) { return Norm(fs::path(Norm(p)).parent_path().string()); }

// ---------------------------------------------------------------------------
// FaultEnv

class FaultEnv : public Env {
 public:
  FaultEnv() : base_(Env::Default()) {}

  // ---- faults ----
  // The next Append fails with err after writing partial_bytes of its data
  // (a short write: what a full disk does mid-write).
  void FailNextAppend(int err, size_t partial_bytes = 0) {
    std::lock_guard l(mu_);
    append_err_ = err, append_fails_ = 1, append_partial_ = partial_bytes;
  }
  void FailAppendsAlways(int err) {
    std::lock_guard l(mu_);
    append_err_ = err, append_fails_ = -1, append_partial_ = 0;
  }
  void FailNextSync(int err) {
    std::lock_guard l(mu_);
    sync_err_ = err, sync_fails_ = 1;
  }
  void FailSyncsAlways(int err) {
    std::lock_guard l(mu_);
    sync_err_ = err, sync_fails_ = -1;
  }
  void ClearFailures() {
    std::lock_guard l(mu_);
    append_fails_ = 0, sync_fails_ = 0;
  }
  // Inactive: every writing call (append, sync, create, remove, rename,
  // syncdir, mkdir) fails with EIO and changes nothing: the machine is dead.
  void SetActive(bool on) {
    std::lock_guard l(mu_);
    active_ = on, countdown_ = -1;
    cv_.notify_all();
  }
  bool active() const {
    std::lock_guard l(mu_);
    return active_;
  }
  // After n more writing calls succeed, the env goes inactive (a crash at that
  // point). Whether it happened: !active().
  void DeactivateAfter(int64_t n) {
    std::lock_guard l(mu_);
    countdown_ = n;
  }
  // Eager: a created or renamed name is durable at once, and so is a removal
  // (as ext4 in practice commits them within seconds, whatever the program
  // syncs); file data still needs Sync(). Off: only SyncDir makes them so.
  void SetEagerDirEntries(bool on) {
    std::lock_guard l(mu_);
    eager_entries_ = on;
  }
  // Slows every fdatasync down so that concurrent writers pile up (to exercise
  // group commit, never asserted on).
  void SetSyncDelay(std::chrono::microseconds d) {
    std::lock_guard l(mu_);
    sync_delay_ = d;
  }
  // While blocked, Sync() waits (after counting itself as started).
  void BlockSyncs(bool on) {
    std::lock_guard l(mu_);
    block_syncs_ = on;
    cv_.notify_all();
  }
  // False if no Sync() blocked within a generous bound (a hang is worse than
  // a failure); never a timing assertion on the journal.
  bool WaitUntilSyncBlocked() {
    std::unique_lock l(mu_);
    return cv_.wait_for(l, 30s, [&] { return blocked_ > 0; });
  }

  // ---- crash ----
  // What a power cut leaves. Call with no journal open on these files.
  void DropUnsynced(bool undo_unsynced_removes = false) {
    std::lock_guard l(mu_);
    for (auto& [path, st] : files_) {
      if (!st->entry_durable && st->durable_name.empty()) {
        ::unlink(path.c_str());
        continue;
      }
      EXPECT_EQ(::truncate(path.c_str(), static_cast<off_t>(st->synced)), 0) << path << ": " << strerror(errno);
      ZeroPoisonedLocked(path, *st);
      if (!st->entry_durable) {
        EXPECT_EQ(::rename(path.c_str(), st->durable_name.c_str()), 0) << path;
      }
    }
    if (undo_unsynced_removes)
      for (auto& [path, content] : removed_)
        if (!fs::exists(path)) WriteWhole(path, content);
    files_.clear();
    removed_.clear();
    last_appended_.clear();
  }
  // A torn write: of the unsynced bytes of path, only the first
  // keep_unsynced_bytes reached the disk (they count as durable now).
  void TearTail(const std::string& path, uint64_t keep_unsynced_bytes) {
    std::lock_guard l(mu_);
    auto& st = *files_.at(Norm(path));
    uint64_t len = st.synced + std::min(keep_unsynced_bytes, st.size - st.synced);
    ASSERT_EQ(::truncate(path.c_str(), static_cast<off_t>(len)), 0) << path;
    ForgetPoisonPastSynced(st);  // what is kept did reach the disk
    st.size = st.synced = len;
  }
  // The unsynced bytes of path reached the disk as zeros (a file extended by
  // the power cut, its data never written).
  void ZeroUnsynced(const std::string& path) {
    std::lock_guard l(mu_);
    auto& st = *files_.at(Norm(path));
    WriteAt(path, st.synced, std::string(st.size - st.synced, '\0'));
    ForgetPoisonPastSynced(st);
    st.synced = st.size;
  }
  // Bytes at the end of path that are on the disk (zeros of a preallocated
  // tail, say).
  void AppendDurable(const std::string& path, const std::string& bytes) {
    std::lock_guard l(mu_);
    uint64_t at = fs::file_size(path);
    WriteAt(path, at, bytes);
    if (auto it = files_.find(Norm(path)); it != files_.end()) {
      ForgetPoisonPastSynced(*it->second);
      it->second->size = it->second->synced = at + bytes.size();
    }
  }
  void FlipByte(const std::string& path, uint64_t offset, uint8_t mask = 0xff) {
    int fd = ::open(path.c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << path;
    unsigned char c = 0;
    ASSERT_EQ(::pread(fd, &c, 1, static_cast<off_t>(offset)), 1) << path << " @" << offset;
    c ^= mask;
    ASSERT_EQ(::pwrite(fd, &c, 1, static_cast<off_t>(offset)), 1);
    ::close(fd);
  }
  // Forgets every file (they count as durable as they are) and every fault.
  void Forget() {
    std::lock_guard l(mu_);
    files_.clear();
    removed_.clear();
    last_appended_.clear();
    append_fails_ = sync_fails_ = 0;
    active_ = true, countdown_ = -1, block_syncs_ = false, eager_entries_ = false;
    sync_delay_ = {};
  }

  // ---- inspection ----
  uint64_t Size(const std::string& path) const {
    std::lock_guard l(mu_);
    auto it = files_.find(Norm(path));
    return it != files_.end() ? it->second->size : fs::file_size(path);
  }
  uint64_t Synced(const std::string& path) const {
    std::lock_guard l(mu_);
    auto it = files_.find(Norm(path));
    return it != files_.end() ? it->second->synced : fs::file_size(path);
  }
  std::string LastAppended() const {
    std::lock_guard l(mu_);
    return last_appended_;
  }
  std::vector<std::string> FilesWithUnsyncedData() const {
    std::lock_guard l(mu_);
    std::vector<std::string> v;
    for (auto& [path, st] : files_)
      if (st->size > st->synced) v.push_back(path);
    return v;
  }
  uint64_t completed_syncs() const {
    std::lock_guard l(mu_);
    return completed_syncs_;
  }
  // Syncs are numbered 1, 2, ... as they start.
  uint64_t sync_starts() const {
    std::lock_guard l(mu_);
    return sync_starts_;
  }
  // The number of the latest-started sync that completed successfully.
  uint64_t newest_completed_sync_start() const {
    std::lock_guard l(mu_);
    return newest_completed_start_;
  }

  // ---- Env ----
  tl::expected<std::unique_ptr<WritableFile>, int> NewWritableFile(const std::string& path) override {
    std::lock_guard l(mu_);
    if (int e = GateLocked()) return tl::make_unexpected(e);
    auto f = base_->NewWritableFile(path);
    if (!f) return tl::make_unexpected(f.error());
    auto st = std::make_shared<FileState>();
    st->path = Norm(path);
    st->entry_durable = eager_entries_;
    files_[st->path] = st;
    removed_.erase(st->path);
    return std::unique_ptr<WritableFile>(new File(this, st, std::move(*f)));
  }
  tl::expected<std::string, int> ReadFile(const std::string& path) override { return base_->ReadFile(path); }
  tl::expected<std::vector<std::string>, int> ListDir(const std::string& dir) override { return base_->ListDir(dir); }
  int Remove(const std::string& path) override {
    std::lock_guard l(mu_);
    if (int e = GateLocked()) return e;
    std::string p = Norm(path);
    auto stash = eager_entries_ ? std::nullopt : StashLocked(p);
    int rc = base_->Remove(path);
    if (rc != 0) return rc;
    files_.erase(p);
    if (stash) removed_[stash->first] = std::move(stash->second);
    return 0;
  }
  int Rename(const std::string& from, const std::string& to) override {
    std::lock_guard l(mu_);
    if (int e = GateLocked()) return e;
    std::string f = Norm(from), t = Norm(to);
    auto stash = eager_entries_ ? std::nullopt : StashLocked(t);  // a replaced target comes back if the rename is lost
    int rc = base_->Rename(from, to);
    if (rc != 0) return rc;
    std::shared_ptr<FileState> st;
    if (auto it = files_.find(f); it != files_.end()) {
      st = it->second;
      files_.erase(it);
    } else {
      st = std::make_shared<FileState>();
      std::error_code ec;
      st->size = st->synced = fs::file_size(t, ec);
      st->entry_durable = true;
    }
    if (eager_entries_) {
      st->entry_durable = true, st->durable_name.clear();
    } else if (st->entry_durable) {
      st->durable_name = f, st->entry_durable = false;
    }
    st->path = t;
    files_[t] = st;
    if (stash) removed_[stash->first] = std::move(stash->second);
    return 0;
  }
  int SyncDir(const std::string& dir) override {
    std::lock_guard l(mu_);
    if (int e = GateLocked()) return e;
    int rc = base_->SyncDir(dir);
    if (rc != 0) return rc;
    std::string d = Norm(dir);
    for (auto& [path, st] : files_)
      if (ParentOf(path) == d) st->entry_durable = true, st->durable_name.clear();
    for (auto it = removed_.begin(); it != removed_.end();)
      it = ParentOf(it->first) == d ? removed_.erase(it) : std::next(it);
    return 0;
  }
  int CreateDir(const std::string& dir) override {
    std::lock_guard l(mu_);
    if (int e = GateLocked()) return e;
    return base_->CreateDir(dir);
  }
  int LockFile(const std::string& path, int* handle) override { return base_->LockFile(path, handle); }
  void UnlockFile(int handle) override { base_->UnlockFile(handle); }
  int DirId(const std::string& dir, uint64_t id[2]) override { return base_->DirId(dir, id); }

 private:
  struct FileState {
    std::string path;
    uint64_t size = 0, synced = 0;
    bool entry_durable = false;  // a SyncDir of its directory since it got its name
    std::string durable_name;    // renamed but not yet SyncDir'd: the name a crash goes back to
    std::vector<R> poisoned;     // [offset, length) whose fdatasync failed
  };
  class File : public WritableFile {
   public:
    File(FaultEnv* env, std::shared_ptr<FileState> st, std::unique_ptr<WritableFile> base)
        : env_(env), st_(std::move(st)), base_(std::move(base)) {}
    int Append(std::string_view data) override { return env_->DoAppend(*st_, *base_, data); }
    int Sync() override { return env_->DoSync(*st_, *base_); }

   private:
    FaultEnv* env_;
    std::shared_ptr<FileState> st_;
    std::unique_ptr<WritableFile> base_;
  };

  int GateLocked() {
    if (!active_) return EIO;
    if (countdown_ == 0) {
      active_ = false, countdown_ = -1;
      return EIO;
    }
    if (countdown_ > 0) --countdown_;
    return 0;
  }

  int DoAppend(FileState& st, WritableFile& base, std::string_view data) {
    std::lock_guard l(mu_);
    if (int e = GateLocked()) return e;
    if (append_fails_ != 0) {
      if (append_fails_ > 0) --append_fails_;
      size_t partial = std::min(append_partial_, data.size());
      if (partial > 0 && base.Append(data.substr(0, partial)) == 0) st.size += partial;
      return append_err_;
    }
    int rc = base.Append(data);
    if (rc == 0) st.size += data.size(), last_appended_ = st.path;
    return rc;
  }

  int DoSync(FileState& st, WritableFile& base) {
    uint64_t my_start, covers;
    std::chrono::microseconds delay;
    {
      std::unique_lock l(mu_);
      if (int e = GateLocked()) return e;
      my_start = ++sync_starts_;
      covers = st.size;  // fdatasync covers what was written before it was called
      if (block_syncs_) {
        ++blocked_;
        cv_.notify_all();
        cv_.wait(l, [&] { return !block_syncs_ || !active_; });
        --blocked_;
        if (!active_) return EIO;
      }
      if (sync_fails_ != 0) {
        if (sync_fails_ > 0) --sync_fails_;
        if (st.size > st.synced) st.poisoned.push_back({st.synced, st.size - st.synced});
        return sync_err_;
      }
      delay = sync_delay_;
    }
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    int rc = base.Sync();
    std::lock_guard l(mu_);
    if (rc != 0) return rc;
    st.synced = std::max(st.synced, covers);
    ++completed_syncs_;
    newest_completed_start_ = std::max(newest_completed_start_, my_start);
    return 0;
  }

  // What a crash would bring back at some name if path were removed now.
  std::optional<std::pair<std::string, std::string>> StashLocked(const std::string& p) {
    auto content = base_->ReadFile(p);
    if (!content) return std::nullopt;
    auto it = files_.find(p);
    if (it == files_.end()) return std::make_pair(p, std::move(*content));
    const FileState& st = *it->second;
    std::string name = st.entry_durable ? p : st.durable_name;
    if (name.empty()) return std::nullopt;
    content->resize(std::min<uint64_t>(content->size(), st.synced));
    for (auto [off, len] : st.poisoned)
      for (uint64_t i = off; i < off + len && i < content->size(); ++i) (*content)[i] = '\0';
    return std::make_pair(name, std::move(*content));
  }

  static void ForgetPoisonPastSynced(FileState& st) {
    std::erase_if(st.poisoned, [&](const R& r) { return r.first >= st.synced; });
  }

  void ZeroPoisonedLocked(const std::string& path, const FileState& st) {
    for (auto [off, len] : st.poisoned) {
      if (off >= st.synced) continue;
      WriteAt(path, off, std::string(std::min(len, st.synced - off), '\0'));
    }
  }

  static void WriteAt(const std::string& path, uint64_t at, const std::string& bytes) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CLOEXEC);
    ASSERT_GE(fd, 0) << path;
    ASSERT_EQ(::pwrite(fd, bytes.data(), bytes.size(), static_cast<off_t>(at)), static_cast<ssize_t>(bytes.size()));
    ::close(fd);
  }
  static void WriteWhole(const std::string& path, const std::string& bytes) {
    int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << path;
    ASSERT_EQ(::write(fd, bytes.data(), bytes.size()), static_cast<ssize_t>(bytes.size()));
    ::close(fd);
  }

  Env* base_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::shared_ptr<FileState>> files_;  // files written through this env
  std::map<std::string, std::string> removed_;  // removed, their removal not yet SyncDir'd: name -> durable content
  std::string last_appended_;
  bool active_ = true;
  int64_t countdown_ = -1;
  int append_err_ = 0, sync_err_ = 0;
  int append_fails_ = 0, sync_fails_ = 0;  // -1: always
  size_t append_partial_ = 0;
  std::chrono::microseconds sync_delay_{0};
  bool block_syncs_ = false;
  bool eager_entries_ = false;
  int blocked_ = 0;
  uint64_t completed_syncs_ = 0, sync_starts_ = 0, newest_completed_start_ = 0;
};

// ---------------------------------------------------------------------------
// Helpers

uint32_t Bit(Op op) { return 1u << static_cast<unsigned>(op); }
constexpr uint32_t kAnyOps = ~0u;

Change W(std::string path, uint64_t offset, uint64_t length) {
  return Change{std::move(path), Scope::kEntry, Op::kWrite, offset, length, {}};
}
Change C(std::string path, Op op, Scope scope = Scope::kEntry) { return Change{std::move(path), scope, op, 0, 0, {}}; }
// link(2): path is the new name.
Change Link(std::string path, std::string existing) {
  return Change{std::move(path), Scope::kEntry, Op::kCreate, 0, 0, std::move(existing)};
}

std::vector<R> RangesOf(const Pending& p) {
  std::vector<R> v;
  for (const Range& r : p.ranges) v.push_back({r.offset, r.length});
  std::sort(v.begin(), v.end());
  return v;
}

std::string Describe(const Pending& p) {
  std::ostringstream o;
  o << "{path='" << p.path << "' target=" << int(p.target) << " scope=" << int(p.scope) << " ops=0x" << std::hex
    << p.ops << std::dec << " data_only=" << p.data_only << " ranges=[";
  for (auto [off, len] : RangesOf(p)) o << " " << off << "+" << len;
  o << " ] seq=" << p.seq << " data_bytes=" << p.data_bytes << "}";
  return o.str();
}

std::map<std::string, Pending> PendingMap(const Journal& j, Target t) {
  std::map<std::string, Pending> m;
  for (Pending& p : j.PendingFor(t)) {
    EXPECT_EQ(p.target, t) << Describe(p);
    std::string path = p.path;
    EXPECT_TRUE(m.emplace(path, std::move(p)).second) << "two entries for '" << path << "'";
  }
  return m;
}

std::set<std::string> Paths(const std::map<std::string, Pending>& m) {
  std::set<std::string> s;
  for (auto& [k, v] : m) s.insert(k);
  return s;
}

// One expected entry.
struct Want {
  uint32_t ops;
  Scope scope = Scope::kEntry;
  bool data_only = false;
  std::vector<R> ranges = {};  // none unless data_only
};

void ExpectEntry(const std::map<std::string, Pending>& m, const std::string& path, const Want& w) {
  auto it = m.find(path);
  ASSERT_NE(it, m.end()) << "no pending entry for '" << path << "'";
  const Pending& p = it->second;
  EXPECT_EQ(p.ops, w.ops) << Describe(p);
  EXPECT_EQ(int(p.scope), int(w.scope)) << Describe(p);
  EXPECT_EQ(p.data_only, w.data_only) << Describe(p);
  EXPECT_EQ(RangesOf(p), w.ranges) << Describe(p);
  uint64_t sum = 0;
  for (auto [off, len] : w.ranges) sum += len;
  EXPECT_EQ(p.data_bytes, sum) << Describe(p);
}

// The same entries, field by field (seq aside).
void ExpectSameEntries(const std::map<std::string, Pending>& want, const std::map<std::string, Pending>& got) {
  EXPECT_EQ(Paths(got), Paths(want));
  for (auto& [path, w] : want) {
    auto it = got.find(path);
    if (it == got.end()) continue;
    const Pending& g = it->second;
    EXPECT_EQ(g.ops, w.ops) << Describe(w) << " vs " << Describe(g);
    EXPECT_EQ(int(g.scope), int(w.scope)) << Describe(w) << " vs " << Describe(g);
    EXPECT_EQ(g.data_only, w.data_only) << Describe(w) << " vs " << Describe(g);
    EXPECT_EQ(RangesOf(g), RangesOf(w)) << Describe(w) << " vs " << Describe(g);
    EXPECT_EQ(g.data_bytes, w.data_bytes) << Describe(w) << " vs " << Describe(g);
    EXPECT_EQ(g.first_ns, w.first_ns) << "first_ns of '" << path << "' changed across reopen";
    EXPECT_EQ(g.link_from, w.link_from) << "link_from of '" << path << "'";
    EXPECT_EQ(g.inodes, w.inodes) << "inodes of '" << path << "'";
  }
}

// ---------------------------------------------------------------------------
// Fixture

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nasfs-journal-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << strerror(errno);
    root_ = tmpl;
    dir_ = root_ + "/journal";
  }
  void TearDown() override {
    env_.SetActive(true);
    env_.BlockSyncs(false);
    j_.reset();
    std::error_code ec;
    fs::remove_all(root_, ec);
  }

  // A fresh journal directory and a fresh env (to rebuild a scenario in a loop).
  void NewDir() {
    j_.reset();
    env_.Forget();
    dir_ = root_ + "/journal" + std::to_string(++dirs_);
  }

  Options Opts() const {
    Options o;
    o.dir = dir_;
    o.env = const_cast<FaultEnv*>(&env_);
    o.background = false;
    o.segment_bytes = segment_bytes_;
    return o;
  }

#define REOPEN_OR_RETURN() \
  do {                       \
    Reopen();                \
    if (HasFatalFailure()) return; \
  } while (0)
  // (Re)opens into j_, asserting success.
  void Reopen(Recovered* rec = nullptr) {
    j_.reset();
    Recovered local;
    Recovered* r = rec ? rec : &local;
    *r = Recovered{};
    auto j = Journal::Open(Opts(), r);
    ASSERT_TRUE(j.has_value()) << "Open(" << dir_ << "): " << j.error();
    j_ = std::move(*j);
  }

  // A crash: nothing more reaches the disk, the journal goes away, the disk
  // keeps what was synced.
  void Kill(bool undo_unsynced_removes = false) {
    env_.SetActive(false);
    j_.reset();
    env_.DropUnsynced(undo_unsynced_removes);
    env_.ClearFailures();
    env_.SetActive(true);
  }
  // check(when) in memory, after a clean reopen, and after a crash.
  void CheckAcrossReopenAndCrash(const std::function<void(const char*)>& check) {
    check("in memory");
    j_.reset();
    REOPEN_OR_RETURN();
    check("after a clean reopen");
    Kill();
    REOPEN_OR_RETURN();
    check("after a crash");
  }
  // A crash that leaves the disk exactly as it is (the caller damages it).
  void StopWithoutDropping() {
    env_.SetActive(false);
    j_.reset();
    env_.ClearFailures();
    env_.SetActive(true);
  }

  std::vector<std::string> DirNames() const {
    std::vector<std::string> v;
    for (auto& e : fs::directory_iterator(dir_)) v.push_back(e.path().filename().string());
    std::sort(v.begin(), v.end());
    return v;
  }

  FaultEnv env_;  // outlives j_
  std::unique_ptr<Journal> j_;
  std::string root_, dir_;
  int dirs_ = 0;
  uint64_t segment_bytes_ = 8ull << 20;
};

#define REOPEN(...) ASSERT_NO_FATAL_FAILURE(Reopen(__VA_ARGS__))

// ---------------------------------------------------------------------------
// Round trip

TEST_F(JournalTest, RoundTripKeepsEntriesAndStateAcrossReopen) {
  Recovered rec;
  REOPEN(&rec);
  EXPECT_TRUE(rec.fresh);
  EXPECT_EQ(rec.damaged_records, 0u);
  EXPECT_TRUE(rec.unfinished_dirs.empty());
  EXPECT_FALSE(j_->HasPending(kMaster));
  EXPECT_FALSE(j_->HasPending(kBackup));
  EXPECT_EQ(j_->pair_id(), "");

  ASSERT_EQ(j_->AddMissed(kMaster, {W("a/f", 0, 100), W("a/f", 100, 50), W("a/f", 4096, 10), C("a/g", Op::kCreate),
                                    C("a/old", Op::kRename), C("a/new", Op::kRename),
                                    C("tree", Op::kCreate, Scope::kTree), C("a", Op::kDirTimes, Scope::kShallow)}),
            0);
  ASSERT_EQ(j_->AddMissed(kBackup, {W("b/data", 10, 20), C("b/x", Op::kRemove), C("", Op::kDirTimes),
                                    C("b/data", Op::kMeta)}),
            0);
  ASSERT_EQ(j_->SetFullSync(kBackup, true), 0);
  ASSERT_EQ(j_->SetPairId("pair-0123456789abcdef"), 0);

  auto master = PendingMap(*j_, kMaster);
  auto backup = PendingMap(*j_, kBackup);
  EXPECT_EQ(Paths(master), (std::set<std::string>{"a/f", "a/g", "a/old", "a/new", "tree", "a"}));
  EXPECT_EQ(Paths(backup), (std::set<std::string>{"b/data", "b/x", ""}));
  ExpectEntry(master, "a/f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 150}, {4096, 10}}});
  ExpectEntry(master, "a/g", {Bit(Op::kCreate)});
  ExpectEntry(master, "a/old", {Bit(Op::kRename)});
  ExpectEntry(master, "a/new", {Bit(Op::kRename)});
  ExpectEntry(master, "tree", {Bit(Op::kCreate), Scope::kTree});
  ExpectEntry(master, "a", {Bit(Op::kDirTimes), Scope::kShallow});
  ExpectEntry(backup, "b/data", {Bit(Op::kWrite) | Bit(Op::kMeta), Scope::kEntry, true, {{10, 20}}});
  ExpectEntry(backup, "b/x", {Bit(Op::kRemove)});
  ExpectEntry(backup, "", {Bit(Op::kDirTimes)});
  for (auto& [p, e] : master) EXPECT_GT(e.first_ns, 0) << Describe(e);
  Stats st = j_->stats();
  EXPECT_TRUE(st.ok);
  EXPECT_EQ(st.pending[0], 6u);
  EXPECT_EQ(st.pending[1], 3u);
  EXPECT_EQ(st.data_bytes[0], 160u);
  EXPECT_EQ(st.data_bytes[1], 20u);
  EXPECT_FALSE(st.full_sync[0]);
  EXPECT_TRUE(st.full_sync[1]);
  EXPECT_GT(st.oldest_ns[0], 0);

  j_.reset();  // a clean close
  REOPEN(&rec);
  EXPECT_FALSE(rec.fresh);
  EXPECT_GT(rec.records, 0u);
  EXPECT_EQ(rec.torn_bytes, 0u);
  EXPECT_EQ(rec.damaged_records, 0u);
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  EXPECT_TRUE(rec.unfinished_dirs.empty());
  ExpectSameEntries(master, PendingMap(*j_, kMaster));
  ExpectSameEntries(backup, PendingMap(*j_, kBackup));
  EXPECT_TRUE(j_->full_sync(kBackup));
  EXPECT_FALSE(j_->full_sync(kMaster));
  EXPECT_EQ(j_->pair_id(), "pair-0123456789abcdef");
  st = j_->stats();
  EXPECT_EQ(st.pending[0], 6u);
  EXPECT_EQ(st.pending[1], 3u);
  EXPECT_TRUE(st.full_sync[1]);

  // And once more: state written by Open's own checkpoint reads back too.
  ASSERT_EQ(j_->SetFullSync(kBackup, false), 0);
  ASSERT_EQ(j_->SetFullSync(kMaster, true), 0);
  j_.reset();
  REOPEN(&rec);
  ExpectSameEntries(master, PendingMap(*j_, kMaster));
  ExpectSameEntries(backup, PendingMap(*j_, kBackup));
  EXPECT_FALSE(j_->full_sync(kBackup));
  EXPECT_TRUE(j_->full_sync(kMaster));
  EXPECT_EQ(j_->pair_id(), "pair-0123456789abcdef");
}

TEST_F(JournalTest, DoneRetiresOnlyUpToItsSeq) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("p", 0, 10)}), 0);
  uint64_t s1 = PendingMap(*j_, kMaster).at("p").seq;
  ASSERT_EQ(j_->AddMissed(kMaster, {W("p", 10, 10)}), 0);
  uint64_t s2 = PendingMap(*j_, kMaster).at("p").seq;
  EXPECT_GT(s2, s1);

  // A replay that started before the second write must not retire it.
  j_->Done(kMaster, "p", s1);
  auto m = PendingMap(*j_, kMaster);
  ASSERT_EQ(m.count("p"), 1u) << "Done with an older seq retired a newer change";
  EXPECT_EQ(m.at("p").seq, s2);
  j_->Done(kMaster, "p", s2);
  EXPECT_EQ(PendingMap(*j_, kMaster).count("p"), 0u);
  EXPECT_FALSE(j_->HasPending(kMaster));

  // Done is per target.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("q", Op::kCreate)}), 0);
  ASSERT_EQ(j_->AddMissed(kBackup, {C("q", Op::kCreate)}), 0);
  j_->Done(kBackup, "q", PendingMap(*j_, kBackup).at("q").seq);
  EXPECT_EQ(PendingMap(*j_, kMaster).count("q"), 1u);
  EXPECT_EQ(PendingMap(*j_, kBackup).count("q"), 0u);

  // A stale Done read back from the log does not retire the newer change.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("r", Op::kMeta)}), 0);
  uint64_t r1 = PendingMap(*j_, kMaster).at("r").seq;
  ASSERT_EQ(j_->AddMissed(kMaster, {C("r", Op::kCreate)}), 0);
  j_->Done(kMaster, "r", r1);
  ASSERT_EQ(j_->Flush(), 0);
  j_.reset();

  REOPEN();
  auto master = PendingMap(*j_, kMaster);
  EXPECT_EQ(Paths(master), (std::set<std::string>{"q", "r"}));
  EXPECT_EQ(PendingMap(*j_, kBackup).size(), 0u);
  if (master.count("r")) {
    EXPECT_EQ(master.at("r").ops, Bit(Op::kMeta) | Bit(Op::kCreate));
  }

  // After a reopen, a new change gets a newer seq than what was recovered, so
  // a replay of the recovered entry cannot retire it.
  ASSERT_EQ(master.count("q"), 1u);
  uint64_t sq = master.at("q").seq;
  ASSERT_EQ(j_->AddMissed(kMaster, {C("q", Op::kMeta)}), 0);
  EXPECT_GT(PendingMap(*j_, kMaster).at("q").seq, sq);
  j_->Done(kMaster, "q", sq);
  EXPECT_EQ(PendingMap(*j_, kMaster).count("q"), 1u) << "Done(recovered seq) retired a change made after the reopen";
  EXPECT_GE(j_->stats().next_seq, PendingMap(*j_, kMaster).at("q").seq);
}

TEST_F(JournalTest, RangesMergeAndDataOnlyFollowsTheOps) {
  REOPEN();
  // Overlapping, adjacent and separate ranges, across calls.
  ASSERT_EQ(j_->AddMissed(kMaster, {W("f", 0, 10), W("f", 5, 10)}), 0);
  ExpectEntry(PendingMap(*j_, kMaster), "f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 15}}});
  ASSERT_EQ(j_->AddMissed(kMaster, {W("f", 15, 5)}), 0);  // adjacent
  ExpectEntry(PendingMap(*j_, kMaster), "f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 20}}});
  ASSERT_EQ(j_->AddMissed(kMaster, {W("f", 100, 10), W("f", 300, 1)}), 0);  // separate
  ExpectEntry(PendingMap(*j_, kMaster), "f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 20}, {100, 10}, {300, 1}}});
  ASSERT_EQ(j_->AddMissed(kMaster, {W("f", 90, 10)}), 0);  // adjacent before
  ExpectEntry(PendingMap(*j_, kMaster), "f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 20}, {90, 20}, {300, 1}}});
  ASSERT_EQ(j_->AddMissed(kMaster, {W("f", 19, 72)}), 0);  // bridges two
  ExpectEntry(PendingMap(*j_, kMaster), "f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 110}, {300, 1}}});
  ASSERT_EQ(j_->AddMissed(kMaster, {W("f", 50, 10)}), 0);  // inside
  ExpectEntry(PendingMap(*j_, kMaster), "f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 110}, {300, 1}}});

  // kMeta keeps data_only, in either order.
  ASSERT_EQ(j_->AddMissed(kMaster, {W("g", 0, 10), C("g", Op::kMeta)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {C("h", Op::kMeta)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("h", 7, 3)}), 0);
  // Any other op means the whole file, and stays so.
  ASSERT_EQ(j_->AddMissed(kMaster, {W("i", 0, 10), C("i", Op::kTruncate)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("k", 0, 10)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {C("k", Op::kCreate)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("k", 20, 10)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {C("n", Op::kRename), W("n", 0, 1)}), 0);
  // The widest scope wins.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("s", Op::kMeta), C("s", Op::kCreate, Scope::kTree),
                                    C("s", Op::kDirTimes, Scope::kShallow)}),
            0);

  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    auto m = PendingMap(*j_, kMaster);
    ExpectEntry(m, "f", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 110}, {300, 1}}});
    ExpectEntry(m, "g", {Bit(Op::kWrite) | Bit(Op::kMeta), Scope::kEntry, true, {{0, 10}}});
    ExpectEntry(m, "h", {Bit(Op::kWrite) | Bit(Op::kMeta), Scope::kEntry, true, {{7, 3}}});
    ExpectEntry(m, "i", {Bit(Op::kWrite) | Bit(Op::kTruncate)});
    ExpectEntry(m, "k", {Bit(Op::kWrite) | Bit(Op::kCreate)});
    ExpectEntry(m, "n", {Bit(Op::kWrite) | Bit(Op::kRename)});
    ExpectEntry(m, "s", {Bit(Op::kMeta) | Bit(Op::kCreate) | Bit(Op::kDirTimes), Scope::kTree});
    EXPECT_EQ(m.size(), 7u);
  };
  check("in memory");
  j_.reset();
  REOPEN();
  check("after reopen");
}

// journal.h: data_only means "ops within kWrite | kMeta" ... "none [ranges]
// for a metadata-only entry"; false means the whole entry, ranges empty.
TEST_F(JournalTest, AMetaOnlyEntryIsDataOnlyWithNoRanges) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {C("m", Op::kMeta)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {C("m2", Op::kMeta), C("m2", Op::kMeta)}), 0);
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    auto m = PendingMap(*j_, kMaster);
    ExpectEntry(m, "m", {Bit(Op::kMeta), Scope::kEntry, true, {}});
    ExpectEntry(m, "m2", {Bit(Op::kMeta), Scope::kEntry, true, {}});
  };
  CheckAcrossReopenAndCrash(check);
}

// link(2): the entry remembers the newest existing name it was linked from.
TEST_F(JournalTest, LinkFromSurvivesReopenAndCrash) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kBackup, {Link("dir/new", "dir/old")}), 0);
  ASSERT_EQ(j_->AddMissed(kBackup, {Link("two", "first"), W("two", 0, 10)}), 0);
  ASSERT_EQ(j_->AddMissed(kBackup, {Link("two", "second")}), 0);
  ASSERT_EQ(j_->AddMissed(kBackup, {C("plain", Op::kCreate), W("plain", 0, 1)}), 0);
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    auto m = PendingMap(*j_, kBackup);
    ASSERT_EQ(Paths(m), (std::set<std::string>{"dir/new", "two", "plain"}));
    EXPECT_EQ(m.at("dir/new").link_from, "dir/old");
    EXPECT_EQ(m.at("two").link_from, "second");
    EXPECT_EQ(m.at("plain").link_from, "");
    ExpectEntry(m, "two", {Bit(Op::kCreate) | Bit(Op::kWrite)});
    EXPECT_FALSE(j_->HasPending(kMaster));
  };
  CheckAcrossReopenAndCrash(check);
}

// Op::kLinked: the inode numbers of linked files written through a path
// are kept (sorted, once each), make the entry whole-file, and survive a
// reopen, a crash and a checkpoint.
TEST_F(JournalTest, LinkedInodesSurviveReopenCrashAndCheckpoint) {
  REOPEN();
  auto linked = [](const std::string& path, uint64_t ino) {
    return Change{path, Scope::kEntry, Op::kLinked, ino, 0, {}};
  };
  ASSERT_EQ(j_->AddMissed(kMaster, {W("c", 0, 100), linked("c", 77)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("c", 100, 100), linked("c", 12), linked("c", 77)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("plain", 0, 10)}), 0);
  ASSERT_EQ(j_->AddMissed(kBackup, {linked("other", (uint64_t{1} << 63) + 5)}), 0);
  auto check = [&](const char* when) {
    SCOPED_TRACE(when);
    auto m = PendingMap(*j_, kMaster);
    ASSERT_EQ(Paths(m), (std::set<std::string>{"c", "plain"}));
    EXPECT_EQ(m.at("c").inodes, (std::vector<uint64_t>{12, 77}));
    EXPECT_FALSE(m.at("c").data_only) << "a linked file's entry is reconciled whole";
    ExpectEntry(m, "c", {Bit(Op::kWrite) | Bit(Op::kLinked), Scope::kEntry, false, {}});
    EXPECT_TRUE(m.at("plain").inodes.empty());
    auto b = PendingMap(*j_, kBackup);
    ASSERT_EQ(Paths(b), (std::set<std::string>{"other"}));
    EXPECT_EQ(b.at("other").inodes, (std::vector<uint64_t>{(uint64_t{1} << 63) + 5}));
  };
  CheckAcrossReopenAndCrash(check);
  if (HasFatalFailure()) return;
  ASSERT_EQ(j_->Checkpoint(), 0);
  j_.reset();
  REOPEN();
  check("after a checkpoint");
}

// ---------------------------------------------------------------------------
// Crashes

TEST_F(JournalTest, CrashKeepsEverythingWhoseCallReturned) {
  REOPEN();
  ASSERT_EQ(j_->SetPairId("pair-A"), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("x/1", 0, 4096), C("x/2", Op::kCreate)}), 0);
  ASSERT_EQ(j_->AddMissed(kBackup, {C("y", Op::kRemove, Scope::kTree)}), 0);
  ASSERT_EQ(j_->SetFullSync(kMaster, true), 0);
  ASSERT_EQ(j_->Intend({"d1", "d2"}), 0);
  j_->Release({"d1"});
  ASSERT_EQ(j_->AddMissed(kMaster, {W("x/1", 8192, 10)}), 0);
  auto master = PendingMap(*j_, kMaster);
  auto backup = PendingMap(*j_, kBackup);

  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u);
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  ExpectSameEntries(master, PendingMap(*j_, kMaster));
  ExpectSameEntries(backup, PendingMap(*j_, kBackup));
  EXPECT_TRUE(j_->full_sync(kMaster));
  EXPECT_FALSE(j_->full_sync(kBackup));
  EXPECT_EQ(j_->pair_id(), "pair-A");
  EXPECT_THAT(rec.unfinished_dirs, Contains("d2"));  // d1 may be there too: it was released, not retired

  // And a second crash right after recovery loses nothing either.
  Kill();
  REOPEN(&rec);
  ExpectSameEntries(master, PendingMap(*j_, kMaster));
  EXPECT_EQ(j_->pair_id(), "pair-A");
  EXPECT_THAT(rec.unfinished_dirs, Contains("d2"));
}

TEST_F(JournalTest, UnsyncedRecordsMayBeLostButNeverBecomeGarbage) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("kept", 0, 10)}), 0);
  j_->Done(kMaster, "kept", PendingMap(*j_, kMaster).at("kept").seq);  // lazily written
  ASSERT_EQ(j_->AddMissed(kMaster, {W("kept2", 0, 10)}), 0);
  env_.FailNextSync(EIO);
  EXPECT_EQ(j_->AddMissed(kMaster, {W("maybe", 5, 5)}), EIO);
  EXPECT_FALSE(env_.FilesWithUnsyncedData().empty()) << "the failed call appended nothing: the test proves little";

  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u);
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  auto m = PendingMap(*j_, kMaster);
  EXPECT_EQ(m.count("kept2"), 1u);
  for (auto& [p, e] : m) EXPECT_THAT((std::set<std::string>{"kept", "kept2", "maybe"}), Contains(p)) << Describe(e);
  if (m.count("maybe")) ExpectEntry(m, "maybe", {Bit(Op::kWrite), Scope::kEntry, true, {{5, 5}}});
  EXPECT_FALSE(j_->HasPending(kBackup));
}

// Synced records A; then a batch whose sync failed (unsynced bytes); the power
// cut keeps every prefix length of the unsynced bytes in turn.
TEST_F(JournalTest, TornTailAtEveryLengthIsDroppedQuietly) {
  const std::string torn_path = "torn/three-with-a-rather-longer-name-to-cut-through";
  uint64_t unsynced_len = 0;
  for (uint64_t k = 0;; ++k) {
    SCOPED_TRACE("keep " + std::to_string(k) + " unsynced bytes");
    NewDir();
    REOPEN();
    ASSERT_EQ(j_->AddMissed(kMaster, {W("synced/one", 0, 10)}), 0);
    ASSERT_EQ(j_->AddMissed(kBackup, {C("synced/two", Op::kCreate)}), 0);
    ASSERT_EQ(j_->SetPairId("pair"), 0);
    std::string seg = env_.LastAppended();
    ASSERT_FALSE(seg.empty());
    env_.FailNextSync(EIO);
    ASSERT_EQ(j_->AddMissed(kMaster, {W(torn_path, 5, 5)}), EIO);
    ASSERT_EQ(env_.FilesWithUnsyncedData(), std::vector<std::string>{Norm(seg)});
    uint64_t len = env_.Size(seg) - env_.Synced(seg);
    if (k == 0) unsynced_len = len;
    ASSERT_EQ(len, unsynced_len) << "the same scenario wrote a different length";
    ASSERT_GT(len, 0u);

    env_.SetActive(false);
    j_.reset();
    env_.TearTail(seg, k);
    env_.DropUnsynced();
    env_.SetActive(true);

    Recovered rec;
    REOPEN(&rec);
    EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
    EXPECT_TRUE(rec.damage.empty()) << rec.damage;
    if (k == 0 || k == len)
      EXPECT_EQ(rec.torn_bytes, 0u);
    else
      EXPECT_GT(rec.torn_bytes, 0u);
    EXPECT_LE(rec.torn_bytes, k);
    auto m = PendingMap(*j_, kMaster);
    ExpectEntry(m, "synced/one", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 10}}});
    ExpectEntry(PendingMap(*j_, kBackup), "synced/two", {Bit(Op::kCreate)});
    EXPECT_EQ(j_->pair_id(), "pair");
    if (k == len) {
      ExpectEntry(m, torn_path, {Bit(Op::kWrite), Scope::kEntry, true, {{5, 5}}});  // whole and valid: read
    } else if (m.count(torn_path)) {
      ExpectEntry(m, torn_path, {Bit(Op::kWrite), Scope::kEntry, true, {{5, 5}}});
    }
    EXPECT_LE(m.size(), 2u);

    // The recovered journal appends cleanly: nothing of the torn tail ends up
    // in front of new records.
    ASSERT_EQ(j_->AddMissed(kMaster, {C("after", Op::kCreate)}), 0);
    Kill();
    REOPEN(&rec);
    EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
    EXPECT_EQ(PendingMap(*j_, kMaster).count("after"), 1u);
    EXPECT_EQ(PendingMap(*j_, kMaster).count("synced/one"), 1u);
    if (HasFailure() || k >= unsynced_len) break;
  }
}

// Three synced records A, B, C in one segment.
struct ThreeRecords {
  std::string seg;
  uint64_t a_end = 0, b_end = 0, c_end = 0;
};
const std::string kLongB = "b/" + std::string(80, 'b') + "/middle-record";

class JournalDamageTest : public JournalTest {
 protected:
  void WriteThree(ThreeRecords* t) {
    REOPEN();
    ASSERT_EQ(j_->AddMissed(kMaster, {W("a", 0, 10)}), 0);
    t->seg = env_.LastAppended();
    t->a_end = env_.Synced(t->seg);
    ASSERT_EQ(j_->AddMissed(kMaster, {W(kLongB, 0, 20)}), 0);
    ASSERT_EQ(env_.LastAppended(), t->seg);
    t->b_end = env_.Synced(t->seg);
    ASSERT_EQ(j_->AddMissed(kMaster, {W("c", 0, 30)}), 0);
    ASSERT_EQ(env_.LastAppended(), t->seg);
    t->c_end = env_.Synced(t->seg);
    ASSERT_LT(t->a_end, t->b_end);
    ASSERT_LT(t->b_end, t->c_end);
    StopWithoutDropping();
  }
  void ExpectExact(const std::map<std::string, Pending>& m, const std::string& p) {
    if (p == "a") ExpectEntry(m, p, {Bit(Op::kWrite), Scope::kEntry, true, {{0, 10}}});
    if (p == kLongB) ExpectEntry(m, p, {Bit(Op::kWrite), Scope::kEntry, true, {{0, 20}}});
    if (p == "c") ExpectEntry(m, p, {Bit(Op::kWrite), Scope::kEntry, true, {{0, 30}}});
  }
};

TEST_F(JournalDamageTest, FlippedByteMidSegmentIsDamageAndLaterRecordsAreRead) {
  ThreeRecords t;
  ASSERT_NO_FATAL_FAILURE(WriteThree(&t));
  env_.FlipByte(t.seg, t.a_end + (t.b_end - t.a_end) / 2);

  Recovered rec;
  REOPEN(&rec);
  EXPECT_GT(rec.damaged_records, 0u);
  EXPECT_FALSE(rec.damage.empty());
  EXPECT_EQ(rec.torn_bytes, 0u);
  auto m = PendingMap(*j_, kMaster);
  ExpectExact(m, "a");
  ExpectExact(m, "c");
  EXPECT_EQ(m.count(kLongB), 0u) << "a damaged record was replayed";
  EXPECT_EQ(m.size(), 2u);
  EXPECT_FALSE(rec.damaged_files.empty());
  auto names = DirNames();
  EXPECT_TRUE(std::any_of(names.begin(), names.end(),
                          [](const std::string& n) { return n.size() > 8 && n.ends_with(".damaged"); }))
      << "no <name>.damaged kept aside";

  // The damage is reported once: the next open reads the checkpoint, not the
  // damaged segment.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("d", Op::kCreate)}), 0);
  Kill();
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  m = PendingMap(*j_, kMaster);
  EXPECT_EQ(Paths(m), (std::set<std::string>{"a", "c", "d"}));
}

// Open cannot write its checkpoint (the journal disk is full): it fails, and
// the damaged segment's readable records must still be there for the next
// Open once space is back.
TEST_F(JournalDamageTest, AnOpenThatFailsOnDamageKeepsTheReadableRecords) {
  ThreeRecords t;
  ASSERT_NO_FATAL_FAILURE(WriteThree(&t));
  env_.FlipByte(t.seg, t.a_end + (t.b_end - t.a_end) / 2);
  env_.FailAppendsAlways(ENOSPC);
  {
    Recovered rec;
    auto j = Journal::Open(Opts(), &rec);
    EXPECT_FALSE(j.has_value()) << "Open succeeded without writing anything";
  }
  env_.ClearFailures();
  Recovered rec;
  REOPEN(&rec);
  auto m = PendingMap(*j_, kMaster);
  ExpectExact(m, "a");
  ExpectExact(m, "c");
  EXPECT_GT(rec.damaged_records, 0u);
}

TEST_F(JournalDamageTest, FlippedByteInTheLastRecordIsATornTail) {
  ThreeRecords t;
  ASSERT_NO_FATAL_FAILURE(WriteThree(&t));
  env_.FlipByte(t.seg, t.b_end + (t.c_end - t.b_end) / 2);

  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  EXPECT_GT(rec.torn_bytes, 0u);
  auto m = PendingMap(*j_, kMaster);
  ExpectExact(m, "a");
  ExpectExact(m, kLongB);
  EXPECT_EQ(m.count("c"), 0u) << "a damaged record was replayed";
}

// Whatever byte of the middle record is hit, nothing wrong is replayed, the
// records before it are read, and a record after it is only ever lost loudly.
TEST_F(JournalDamageTest, EveryFlippedByteOfARecordIsDetected) {
  ThreeRecords first;
  ASSERT_NO_FATAL_FAILURE(WriteThree(&first));
  for (uint64_t off = first.a_end; off < first.b_end; ++off) {
    SCOPED_TRACE("flipped byte at " + std::to_string(off));
    NewDir();
    ThreeRecords t;
    ASSERT_NO_FATAL_FAILURE(WriteThree(&t));
    ASSERT_EQ(t.a_end, first.a_end);
    ASSERT_EQ(t.b_end, first.b_end);
    env_.FlipByte(t.seg, off);
    Recovered rec;
    REOPEN(&rec);
    auto m = PendingMap(*j_, kMaster);
    ExpectExact(m, "a");
    for (auto& [p, e] : m) {
      ASSERT_TRUE(p == "a" || p == kLongB || p == "c") << "garbage replayed: " << Describe(e);
      ExpectExact(m, p);
    }
    if (!m.count("c")) {
      EXPECT_FALSE(rec.damage.empty()) << "a synced record after the damage was lost silently";
    }
    if (HasFailure()) break;
  }
}

TEST_F(JournalDamageTest, ZerosAtTheTailAreATornTail) {
  ThreeRecords t;
  ASSERT_NO_FATAL_FAILURE(WriteThree(&t));
  env_.AppendDurable(t.seg, std::string(4096, '\0'));
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  EXPECT_GT(rec.torn_bytes, 0u);
  auto m = PendingMap(*j_, kMaster);
  EXPECT_EQ(Paths(m), (std::set<std::string>{"a", kLongB, "c"}));
  for (auto& [p, e] : m) ExpectExact(m, p);
}

TEST_F(JournalTest, AnUnsyncedRecordThatReachedTheDiskAsZerosIsATornTail) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("a", 0, 10)}), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("b", 0, 10)}), 0);
  std::string seg = env_.LastAppended();
  env_.FailNextSync(EIO);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("c", 0, 10)}), EIO);
  env_.SetActive(false);
  j_.reset();
  env_.ZeroUnsynced(seg);
  env_.AppendDurable(seg, std::string(1000, '\0'));
  env_.DropUnsynced();
  env_.SetActive(true);

  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  EXPECT_GT(rec.torn_bytes, 0u);
  EXPECT_EQ(Paths(PendingMap(*j_, kMaster)), (std::set<std::string>{"a", "b"}));
}

// A failed sync leaves half-written bytes at the end of the active segment;
// the repair's new segment was created (its name reached the disk) but the
// power went before anything was in it. The half-written bytes are still a
// torn tail: nothing readable follows them.
TEST_F(JournalTest, ATornSegmentFollowedByAnEmptyOneIsATornTailNotDamage) {
  env_.SetEagerDirEntries(true);
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("a", 0, 10)}), 0);
  std::string seg = env_.LastAppended();
  env_.FailNextSync(EIO);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("b/" + std::string(60, 'b'), 0, 10)}), EIO);
  uint64_t unsynced = env_.Size(seg) - env_.Synced(seg);
  ASSERT_GT(unsynced, 2u);
  env_.DeactivateAfter(1);  // the repair creates its segment, then the power goes
  j_->Tick();
  ASSERT_FALSE(env_.active());
  j_.reset();
  env_.TearTail(seg, unsynced / 2);
  env_.DropUnsynced();
  env_.SetActive(true);
  ASSERT_GT(DirNames().size(), 2u) << "expected the empty repair segment to be left behind";

  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  EXPECT_TRUE(rec.damaged_files.empty());
  EXPECT_GT(rec.torn_bytes, 0u);
  EXPECT_EQ(PendingMap(*j_, kMaster).count("a"), 1u);
}

// ---------------------------------------------------------------------------
// Activity log

TEST_F(JournalTest, IntendedDirsAreHandedBackAfterACrash) {
  REOPEN();
  ASSERT_EQ(j_->Intend({"a", "b/c"}), 0);
  ASSERT_EQ(j_->Intend({""}), 0);
  EXPECT_EQ(j_->stats().active_dirs, 3u);
  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_THAT(rec.unfinished_dirs, IsSupersetOf({"a", "b/c", ""}));
  EXPECT_EQ(rec.unfinished_dirs.size(), 3u);
}

TEST_F(JournalTest, ReleasedRetiredAndFlushedDirsAreNotReported) {
  REOPEN();
  ASSERT_EQ(j_->Intend({"a", "b"}), 0);
  j_->Release({"a", "b"});
  j_->Tick();
  EXPECT_EQ(j_->stats().active_dirs, 0u);
  ASSERT_EQ(j_->Flush(), 0);
  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_TRUE(rec.unfinished_dirs.empty()) << rec.unfinished_dirs.size() << " reported, first '"
                                           << rec.unfinished_dirs[0] << "'";
}

TEST_F(JournalTest, AReleasedDirMayBeReportedAnUnreleasedOneMustBe) {
  REOPEN();
  ASSERT_EQ(j_->Intend({"released"}), 0);
  ASSERT_EQ(j_->Intend({"held"}), 0);
  // Two writers under one dir: one Release leaves it marked.
  ASSERT_EQ(j_->Intend({"shared"}), 0);
  ASSERT_EQ(j_->Intend({"shared"}), 0);
  j_->Release({"released"});
  j_->Release({"shared"});
  j_->Tick();  // no Flush: the retire record may be lost
  EXPECT_EQ(j_->stats().active_dirs, 2u);
  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_THAT(rec.unfinished_dirs, IsSupersetOf({"held", "shared"}));
  for (auto& d : rec.unfinished_dirs) EXPECT_THAT((std::set<std::string>{"released", "held", "shared"}), Contains(d));
}

TEST_F(JournalTest, IntendOfAMarkedDirCostsNoSync) {
  REOPEN();
  ASSERT_EQ(j_->Intend({"a"}), 0);
  uint64_t syncs = j_->stats().syncs, env_syncs = env_.completed_syncs();
  ASSERT_EQ(j_->Intend({"a"}), 0);
  ASSERT_EQ(j_->Intend({"a"}), 0);
  EXPECT_EQ(j_->stats().syncs, syncs);
  EXPECT_EQ(env_.completed_syncs(), env_syncs);
  ASSERT_EQ(j_->Intend({"a", "b"}), 0);  // one new: a sync
  EXPECT_GT(env_.completed_syncs(), env_syncs);
  EXPECT_GT(j_->stats().syncs, syncs);
  j_->Release({"a"});
  j_->Release({"a"});
  j_->Release({"a", "b"});
}

// A writer that finds its dir marked by a mark still being synced must wait
// for that sync: an already-marked dir is free only once the mark is durable.
TEST_F(JournalTest, IntendOfADirWhoseMarkIsStillSyncingWaitsForIt) {
  REOPEN();
  env_.BlockSyncs(true);
  int rc1 = -1, rc2 = -1;
  std::thread t1([&] { rc1 = j_->Intend({"hot"}); });
  if (!env_.WaitUntilSyncBlocked()) {
    env_.BlockSyncs(false);
    t1.join();
    FAIL() << "the call never reached a Sync()";
  }
  uint64_t marking_sync = env_.sync_starts();
  std::atomic<bool> returned{false};
  uint64_t seen = 0;
  std::thread t2([&] {
    rc2 = j_->Intend({"hot"});
    seen = env_.newest_completed_sync_start();
    returned = true;
  });
  // Gives a buggy Intend the chance to return early; a slow machine only makes
  // this test less sensitive, never fail.
  for (int i = 0; i < 100 && !returned; ++i) std::this_thread::sleep_for(2ms);
  env_.BlockSyncs(false);
  t1.join();
  t2.join();
  EXPECT_EQ(rc1, 0);
  EXPECT_EQ(rc2, 0);
  EXPECT_GE(seen, marking_sync) << "Intend returned 0 before the sync carrying the mark completed";
}

// Same for a missed change: its call returns only after a sync that started
// after the call did.
TEST_F(JournalTest, AddMissedNeverReturnsOnASyncThatStartedBeforeIt) {
  REOPEN();
  env_.BlockSyncs(true);
  int rc1 = -1, rc2 = -1;
  std::thread t1([&] { rc1 = j_->AddMissed(kMaster, {C("one", Op::kCreate)}); });
  if (!env_.WaitUntilSyncBlocked()) {
    env_.BlockSyncs(false);
    t1.join();
    FAIL() << "the call never reached a Sync()";
  }
  uint64_t first_sync = env_.sync_starts();
  std::atomic<bool> returned{false};
  uint64_t seen = 0;
  std::thread t2([&] {
    rc2 = j_->AddMissed(kMaster, {C("two", Op::kCreate)});
    seen = env_.newest_completed_sync_start();
    returned = true;
  });
  for (int i = 0; i < 100 && !returned; ++i) std::this_thread::sleep_for(2ms);
  env_.BlockSyncs(false);
  t1.join();
  t2.join();
  EXPECT_EQ(rc1, 0);
  EXPECT_EQ(rc2, 0);
  EXPECT_GT(seen, first_sync) << "AddMissed returned on a sync that started before its record was written";
  Kill();
  REOPEN();
  EXPECT_EQ(Paths(PendingMap(*j_, kMaster)), (std::set<std::string>{"one", "two"}));
}

TEST_F(JournalTest, RecoveredDirsStayUntilRetiredByTheCaller) {
  REOPEN();
  ASSERT_EQ(j_->Intend({"x", "y"}), 0);
  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_THAT(rec.unfinished_dirs, IsSupersetOf({"x", "y"}));

  // Not retired: a clean close and a reopen hand them back again.
  j_.reset();
  REOPEN(&rec);
  EXPECT_THAT(rec.unfinished_dirs, IsSupersetOf({"x", "y"}));

  // The caller records what x covers, then retires it.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("x", Op::kCrash, Scope::kShallow)}), 0);
  ASSERT_EQ(j_->AddMissed(kBackup, {C("x", Op::kCrash, Scope::kShallow)}), 0);
  j_->RetireRecovered({"x"});
  j_->Tick();
  ASSERT_EQ(j_->Flush(), 0);
  Kill();
  REOPEN(&rec);
  EXPECT_THAT(rec.unfinished_dirs, Contains("y"));
  EXPECT_THAT(rec.unfinished_dirs, Not(Contains("x")));
  ExpectEntry(PendingMap(*j_, kMaster), "x", {Bit(Op::kCrash), Scope::kShallow});
  ExpectEntry(PendingMap(*j_, kBackup), "x", {Bit(Op::kCrash), Scope::kShallow});

  j_->RetireRecovered({"y"});
  j_->Tick();
  ASSERT_EQ(j_->Flush(), 0);
  Kill();
  REOPEN(&rec);
  EXPECT_TRUE(rec.unfinished_dirs.empty());
}

// A new write under a recovered dir, once released, does not retire the
// recovered mark: only RetireRecovered does.
TEST_F(JournalTest, ARecoveredMarkSurvivesANewIntendAndRelease) {
  REOPEN();
  ASSERT_EQ(j_->Intend({"x"}), 0);
  Kill();
  Recovered rec;
  REOPEN(&rec);
  ASSERT_THAT(rec.unfinished_dirs, Contains("x"));
  ASSERT_EQ(j_->Intend({"x"}), 0);
  j_->Release({"x"});
  j_->Tick();
  ASSERT_EQ(j_->Flush(), 0);
  Kill();
  REOPEN(&rec);
  EXPECT_THAT(rec.unfinished_dirs, Contains("x")) << "a recovered mark was retired without RetireRecovered";
}

// ---------------------------------------------------------------------------
// Group commit

TEST_F(JournalTest, GroupCommitSharesSyncsAndLosesNothing) {
  REOPEN();
  env_.SetSyncDelay(1ms);  // lets writers pile up behind a leader
  constexpr int kThreads = 8, kPerThread = 200;
  uint64_t syncs0 = j_->stats().syncs, env_syncs0 = env_.completed_syncs();
  std::atomic<int> failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      Target target = t % 2 ? kBackup : kMaster;
      for (int i = 0; i < kPerThread; ++i)
        if (j_->AddMissed(target, {W("t" + std::to_string(t) + "/f" + std::to_string(i), uint64_t(i) * 10, 10)}) != 0)
          ++failures;
    });
  for (auto& th : threads) th.join();
  env_.SetSyncDelay(0us);
  EXPECT_EQ(failures.load(), 0);
  Stats st = j_->stats();
  EXPECT_TRUE(st.ok);
  EXPECT_EQ(st.pending[0] + st.pending[1], uint64_t(kThreads * kPerThread));
  EXPECT_LT(st.syncs - syncs0, uint64_t(kThreads * kPerThread)) << "no fdatasync was shared";
  EXPECT_LT(env_.completed_syncs() - env_syncs0, uint64_t(kThreads * kPerThread)) << "no fdatasync was shared";
  EXPECT_GT(st.syncs - syncs0, 0u);

  Kill();
  REOPEN();
  auto master = PendingMap(*j_, kMaster), backup = PendingMap(*j_, kBackup);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kPerThread; ++i) {
      std::string p = "t" + std::to_string(t) + "/f" + std::to_string(i);
      auto& m = t % 2 ? backup : master;
      auto it = m.find(p);
      ASSERT_NE(it, m.end()) << "lost " << p;
      EXPECT_EQ(RangesOf(it->second), (std::vector<R>{{uint64_t(i) * 10, 10}}));
    }
  EXPECT_EQ(master.size() + backup.size(), size_t(kThreads * kPerThread));
}

// The machine dies while eight writers are at it: every call that returned 0
// is on the disk.
TEST_F(JournalTest, GroupCommitCrashMidwayKeepsEveryAcknowledgedCall) {
  for (int64_t crash_after : {10, 40, 120}) {
    SCOPED_TRACE("crash after " + std::to_string(crash_after) + " writing calls");
    NewDir();
    REOPEN();
    env_.SetSyncDelay(200us);
    env_.DeactivateAfter(crash_after);
    constexpr int kThreads = 8, kPerThread = 100;
    std::mutex mu;
    std::vector<std::string> acked;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t)
      threads.emplace_back([&, t] {
        for (int i = 0; i < kPerThread; ++i) {
          std::string p = "t" + std::to_string(t) + "/f" + std::to_string(i);
          if (j_->AddMissed(kMaster, {C(p, Op::kCreate)}) == 0) {
            std::lock_guard l(mu);
            acked.push_back(p);
          }
        }
      });
    for (auto& th : threads) th.join();
    Kill();
    Recovered rec;
    REOPEN(&rec);
    EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
    auto m = PendingMap(*j_, kMaster);
    for (auto& p : acked) EXPECT_EQ(m.count(p), 1u) << "acknowledged and lost: " << p;
    if (HasFailure()) break;
  }
}

// ---------------------------------------------------------------------------
// Failures

TEST_F(JournalTest, AFailedSyncFailsTheJournalUntilATickRepairsIt) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("before", 0, 100)}), 0);
  ASSERT_EQ(j_->Intend({"dir0"}), 0);

  env_.FailNextSync(EIO);
  EXPECT_EQ(j_->AddMissed(kMaster, {W("failed", 0, 1)}), EIO);
  Stats st = j_->stats();
  EXPECT_FALSE(st.ok);
  EXPECT_EQ(st.error, EIO);
  EXPECT_FALSE(st.error_text.empty());

  // Failed until repaired, even though the disk works again: a failed
  // fdatasync is never retried as success.
  EXPECT_EQ(j_->AddMissed(kMaster, {W("during", 0, 1)}), EIO);
  EXPECT_EQ(j_->Intend({"dir1"}), EIO);
  EXPECT_EQ(j_->SetFullSync(kBackup, true), EIO);
  EXPECT_EQ(j_->SetPairId("p"), EIO);
  EXPECT_EQ(j_->Flush(), EIO);
  bool recorded = true;
  EXPECT_EQ(j_->RecordIfTouching(kMaster, {W("before", 0, 1)}, &recorded), EIO);
  EXPECT_FALSE(j_->stats().ok);
  // Nothing already recorded is forgotten meanwhile.
  EXPECT_EQ(PendingMap(*j_, kMaster).count("before"), 1u);

  j_->Tick();
  st = j_->stats();
  EXPECT_TRUE(st.ok) << st.error_text;
  EXPECT_EQ(st.error, 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {W("after", 0, 1)}), 0);
  ASSERT_EQ(j_->Intend({"dir2"}), 0);
  auto m = PendingMap(*j_, kMaster);
  ExpectEntry(m, "before", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 100}}});
  EXPECT_EQ(m.count("after"), 1u);

  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  m = PendingMap(*j_, kMaster);
  ExpectEntry(m, "before", {Bit(Op::kWrite), Scope::kEntry, true, {{0, 100}}});
  EXPECT_EQ(m.count("after"), 1u);
  for (auto& [p, e] : m) EXPECT_THAT((std::set<std::string>{"before", "failed", "during", "after"}), Contains(p));
  EXPECT_THAT(rec.unfinished_dirs, IsSupersetOf({"dir0", "dir2"}));
}

TEST_F(JournalTest, ATickDoesNotRepairWhileSyncsStillFail) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {C("a", Op::kCreate)}), 0);
  env_.FailSyncsAlways(EIO);
  EXPECT_EQ(j_->AddMissed(kMaster, {C("b", Op::kCreate)}), EIO);
  j_->Tick();
  EXPECT_FALSE(j_->stats().ok);
  EXPECT_EQ(j_->AddMissed(kMaster, {C("c", Op::kCreate)}), EIO);
  EXPECT_NE(j_->Checkpoint(), 0);
  env_.ClearFailures();
  j_->Tick();
  EXPECT_TRUE(j_->stats().ok) << j_->stats().error_text;
  EXPECT_EQ(j_->AddMissed(kMaster, {C("d", Op::kCreate)}), 0);
  Kill();
  REOPEN();
  auto m = PendingMap(*j_, kMaster);
  EXPECT_EQ(m.count("a"), 1u);
  EXPECT_EQ(m.count("d"), 1u);
}

TEST_F(JournalTest, AFullJournalDiskFailsCallsUntilSpaceComesBack) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("a", 0, 1)}), 0);
  ASSERT_EQ(j_->Intend({"d0"}), 0);
  env_.FailAppendsAlways(ENOSPC);
  EXPECT_EQ(j_->AddMissed(kMaster, {W("b", 0, 1)}), ENOSPC);
  EXPECT_EQ(j_->Intend({"d1"}), ENOSPC);
  EXPECT_EQ(j_->stats().error, ENOSPC);
  j_->Tick();  // a checkpoint cannot be written either
  EXPECT_FALSE(j_->stats().ok);
  EXPECT_EQ(j_->AddMissed(kBackup, {W("c", 0, 1)}), ENOSPC);
  EXPECT_EQ(j_->Intend({"d1"}), ENOSPC);

  env_.ClearFailures();
  j_->Tick();
  EXPECT_TRUE(j_->stats().ok) << j_->stats().error_text;
  ASSERT_EQ(j_->AddMissed(kMaster, {W("e", 0, 1)}), 0);
  ASSERT_EQ(j_->Intend({"d2"}), 0);
  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  auto m = PendingMap(*j_, kMaster);
  EXPECT_EQ(m.count("a"), 1u);
  EXPECT_EQ(m.count("e"), 1u);
  EXPECT_THAT(rec.unfinished_dirs, IsSupersetOf({"d0", "d2"}));
}

// A disk that fills mid-write leaves half a record in the segment.
TEST_F(JournalTest, AShortAppendIsAnErrorAndLeavesNoDamage) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("a", 0, 1)}), 0);
  env_.FailNextAppend(ENOSPC, 7);
  EXPECT_EQ(j_->AddMissed(kMaster, {W("b/" + std::string(100, 'x'), 0, 1)}), ENOSPC);
  EXPECT_FALSE(j_->stats().ok);
  j_->Tick();
  EXPECT_TRUE(j_->stats().ok) << j_->stats().error_text;
  ASSERT_EQ(j_->AddMissed(kMaster, {W("c", 0, 1)}), 0);
  Kill();
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  auto m = PendingMap(*j_, kMaster);
  EXPECT_EQ(m.count("a"), 1u);
  EXPECT_EQ(m.count("c"), 1u);
}

// ---------------------------------------------------------------------------
// Compaction

TEST_F(JournalTest, DrainingThePendingSetCompactsTheLog) {
  REOPEN();
  // A log well past anything a checkpoint of an empty state needs (the
  // header leaves the threshold open; this one is way past it).
  const std::string dir = "some/directory/" + std::string(64, 'd') + "/file-";
  for (int i = 0; i < 2000; ++i)
    ASSERT_EQ(j_->AddMissed(i % 2 ? kBackup : kMaster, {W(dir + std::to_string(i), 0, 4096)}), 0);
  Stats before = j_->stats();
  EXPECT_GT(before.log_bytes, 2000u * 64);
  for (Target t : {kMaster, kBackup})
    for (const Pending& p : j_->PendingFor(t)) j_->Done(t, p.path, p.seq);
  EXPECT_FALSE(j_->HasPending(kMaster));
  EXPECT_FALSE(j_->HasPending(kBackup));
  EXPECT_EQ(j_->stats().pending[0] + j_->stats().pending[1], 0u);
  j_->Tick();
  Stats after = j_->stats();
  EXPECT_GT(after.checkpoints, before.checkpoints) << "the drained pending set was not compacted";
  EXPECT_EQ(after.segments, 1u);
  EXPECT_LT(after.log_bytes, 4096u);
  EXPECT_LT(after.log_bytes, before.log_bytes / 4);

  Kill();
  REOPEN();
  EXPECT_FALSE(j_->HasPending(kMaster));
  EXPECT_FALSE(j_->HasPending(kBackup));
}

TEST_F(JournalTest, CheckpointKeepsTheLiveStateAndDropsTheRest) {
  segment_bytes_ = 4096;
  REOPEN();
  ASSERT_EQ(j_->SetPairId("pair-ckpt"), 0);
  ASSERT_EQ(j_->SetFullSync(kBackup, true), 0);
  ASSERT_EQ(j_->Intend({"held"}), 0);
  for (int i = 0; i < 300; ++i) ASSERT_EQ(j_->AddMissed(kMaster, {W("f" + std::to_string(i), uint64_t(i), 1)}), 0);
  EXPECT_GT(j_->stats().segments, 1u);
  for (const Pending& p : j_->PendingFor(kMaster))
    if (std::stoi(p.path.substr(1)) % 3 != 0) j_->Done(kMaster, p.path, p.seq);
  auto live = PendingMap(*j_, kMaster);
  EXPECT_EQ(live.size(), 100u);
  uint64_t ckpts = j_->stats().checkpoints;
  ASSERT_EQ(j_->Checkpoint(), 0);
  Stats st = j_->stats();
  EXPECT_EQ(st.checkpoints, ckpts + 1);
  EXPECT_LE(st.segments, 2u);  // the checkpoint may itself be past segment_bytes

  Kill();
  Recovered rec;
  REOPEN(&rec);
  ExpectSameEntries(live, PendingMap(*j_, kMaster));
  EXPECT_EQ(j_->pair_id(), "pair-ckpt");
  EXPECT_TRUE(j_->full_sync(kBackup));
  EXPECT_THAT(rec.unfinished_dirs, Contains("held"));
}

TEST_F(JournalTest, SegmentsRollAndACrashLosesNone) {
  segment_bytes_ = 4096;
  REOPEN();
  std::vector<std::string> paths;
  for (int i = 0; i < 300; ++i) {
    paths.push_back("some/deeper/directory/name/file-" + std::to_string(i));
    ASSERT_EQ(j_->AddMissed(i % 2 ? kBackup : kMaster, {W(paths.back(), 0, 1)}), 0);
  }
  EXPECT_GT(j_->stats().segments, 2u);
  ASSERT_EQ(j_->Intend({"some/deeper"}), 0);
  Kill();  // a segment made after the last SyncDir of the journal dir is gone
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  auto master = PendingMap(*j_, kMaster), backup = PendingMap(*j_, kBackup);
  for (int i = 0; i < 300; ++i) EXPECT_EQ((i % 2 ? backup : master).count(paths[i]), 1u) << "lost " << paths[i];
  EXPECT_THAT(rec.unfinished_dirs, Contains("some/deeper"));
}

// Old segments a checkpoint removed come back when the removal was not made
// durable: they must not override the newer state.
TEST_F(JournalTest, ResurrectedOldSegmentsDoNotOverrideNewerState) {
  REOPEN();
  ASSERT_EQ(j_->SetPairId("old-pair"), 0);
  ASSERT_EQ(j_->SetFullSync(kMaster, true), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {C("gone", Op::kCreate)}), 0);
  ASSERT_EQ(j_->Intend({"old-dir"}), 0);
  j_->Release({"old-dir"});
  j_->Done(kMaster, "gone", PendingMap(*j_, kMaster).at("gone").seq);
  j_->Tick();
  ASSERT_EQ(j_->SetPairId("new-pair"), 0);
  ASSERT_EQ(j_->SetFullSync(kMaster, false), 0);
  ASSERT_EQ(j_->Checkpoint(), 0);
  ASSERT_EQ(j_->AddMissed(kMaster, {C("kept", Op::kCreate)}), 0);
  Kill(/*undo_unsynced_removes=*/true);
  Recovered rec;
  REOPEN(&rec);
  EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
  EXPECT_EQ(j_->pair_id(), "new-pair");
  EXPECT_FALSE(j_->full_sync(kMaster));
  EXPECT_EQ(PendingMap(*j_, kMaster).count("kept"), 1u);
}

// ---------------------------------------------------------------------------
// Crash at every step

struct Scenario {
  std::map<std::string, Pending> master, backup;
};

class JournalCrashPointTest : public JournalTest {
 protected:
  // Entries, state and a held mark, all acknowledged.
  void Populate(Scenario* s) {
    ASSERT_EQ(j_->SetPairId("pair-crash"), 0);
    ASSERT_EQ(j_->SetFullSync(kBackup, true), 0);
    for (int i = 0; i < 20; ++i)
      ASSERT_EQ(j_->AddMissed(i % 2 ? kBackup : kMaster, {W("p" + std::to_string(i), 0, 100 + i),
                                                          C("p" + std::to_string(i), Op::kMeta)}),
                0);
    for (const Pending& p : j_->PendingFor(kMaster))
      if (p.path == "p0" || p.path == "p2") j_->Done(kMaster, p.path, p.seq);
    ASSERT_EQ(j_->Intend({"held"}), 0);
    ASSERT_EQ(j_->Intend({"released"}), 0);
    j_->Release({"released"});
    ASSERT_EQ(j_->Flush(), 0);
    s->master = PendingMap(*j_, kMaster);
    s->backup = PendingMap(*j_, kBackup);
  }
  void Verify(const Scenario& s, const Recovered& rec) {
    EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
    auto master = PendingMap(*j_, kMaster);
    for (auto& [p, e] : s.master) EXPECT_EQ(master.count(p), 1u) << "lost " << p;
    for (auto& [p, e] : master)
      EXPECT_TRUE(s.master.count(p) || p == "p0" || p == "p2") << "garbage: " << Describe(e);
    ExpectSameEntries(s.backup, PendingMap(*j_, kBackup));
    EXPECT_EQ(j_->pair_id(), "pair-crash");
    EXPECT_TRUE(j_->full_sync(kBackup));
    EXPECT_THAT(rec.unfinished_dirs, Contains("held"));
  }
};

// How a crash treats directory entries: only SyncDir makes them durable
// (removes may come undone), or the filesystem commits them by itself.
struct EntryMode {
  const char* name;
  bool undo_removes, eager;
};
constexpr EntryMode kEntryModes[] = {
    {"entries durable on SyncDir", false, false},
    {"entries durable on SyncDir, lost removes come back", true, false},
    {"entries durable at once", false, true},
};

// For each entry mode, runs `run(mode, n, &crashed)` for n = 0, 1, 2, ...:
// run sets up, crashes the journal after n writing calls of what it tests
// (env_.DeactivateAfter(n)), recovers, checks, and says whether the crash
// came. Stops a mode at the first n that ran to the end without crashing (or
// at a failure); each mode must have crashed at 4 points at least.
void ForEveryCrashPoint(const std::function<void(const EntryMode&, int64_t, bool*)>& run, const char* why = "") {
  for (const EntryMode& mode : kEntryModes) {
    int crashes = 0;
    for (int64_t n = 0; n < 200; ++n) {
      SCOPED_TRACE(std::string(mode.name) + ", crash after " + std::to_string(n) + " writing calls");
      bool crashed = false;
      run(mode, n, &crashed);
      if (::testing::Test::HasFailure() || !crashed) break;
      ++crashes;
    }
    if (::testing::Test::HasFailure()) break;
    EXPECT_GE(crashes, 4) << mode.name << why;
  }
}

TEST_F(JournalCrashPointTest, CrashAtEveryStepOfACheckpoint) {
  ForEveryCrashPoint([&](const EntryMode& mode, int64_t n, bool* crashed) {
    NewDir();
    env_.SetEagerDirEntries(mode.eager);
    REOPEN();
    Scenario s;
    ASSERT_NO_FATAL_FAILURE(Populate(&s));
    env_.DeactivateAfter(n);
    int rc = j_->Checkpoint();
    *crashed = !env_.active();
    if (!*crashed) {
      EXPECT_EQ(rc, 0);
    }
    Kill(mode.undo_removes);
    Recovered rec;
    REOPEN(&rec);
    Verify(s, rec);
  }, ": a checkpoint is at least create, append, sync, syncdir");
}

TEST_F(JournalCrashPointTest, CrashAtEveryStepOfOpen) {
  ForEveryCrashPoint([&](const EntryMode& mode, int64_t n, bool* crashed) {
    NewDir();
    env_.SetEagerDirEntries(mode.eager);
    REOPEN();
    Scenario s;
    ASSERT_NO_FATAL_FAILURE(Populate(&s));
    Kill();
    env_.SetEagerDirEntries(mode.eager);
    env_.DeactivateAfter(n);
    {
      Recovered rec;
      auto j = Journal::Open(Opts(), &rec);
      if (j) j_ = std::move(*j);
    }
    *crashed = !env_.active();
    Kill(mode.undo_removes);
    Recovered rec;
    REOPEN(&rec);
    Verify(s, rec);
  });
}

TEST_F(JournalCrashPointTest, CrashAtEveryStepOfARepair) {
  ForEveryCrashPoint([&](const EntryMode& mode, int64_t n, bool* crashed) {
    NewDir();
    env_.SetEagerDirEntries(mode.eager);
    REOPEN();
    Scenario s;
    ASSERT_NO_FATAL_FAILURE(Populate(&s));
    env_.FailNextSync(EIO);
    EXPECT_EQ(j_->AddMissed(kMaster, {C("p0", Op::kMeta)}), EIO);
    env_.DeactivateAfter(n);
    j_->Tick();
    *crashed = !env_.active();
    if (!*crashed) {
      EXPECT_TRUE(j_->stats().ok) << j_->stats().error_text;
    }
    Kill(mode.undo_removes);
    Recovered rec;
    REOPEN(&rec);
    Verify(s, rec);
    EXPECT_TRUE(rec.damage.empty()) << "a crash alone reported damage: " << rec.damage;
  });
}

// Open finds a damaged record, sets the segment aside and writes a
// checkpoint; a crash anywhere in that must not lose the segment's readable
// records.
TEST_F(JournalDamageTest, CrashAtEveryStepOfAnOpenThatFindsDamage) {
  ForEveryCrashPoint([&](const EntryMode& mode, int64_t n, bool* crashed) {
    NewDir();
    ThreeRecords t;
    ASSERT_NO_FATAL_FAILURE(WriteThree(&t));
    env_.FlipByte(t.seg, t.a_end + (t.b_end - t.a_end) / 2);
    env_.SetEagerDirEntries(mode.eager);
    env_.DeactivateAfter(n);
    {
      Recovered rec;
      auto j = Journal::Open(Opts(), &rec);
      if (j) j_ = std::move(*j);
    }
    *crashed = !env_.active();
    Kill(mode.undo_removes);
    Recovered rec;
    REOPEN(&rec);
    auto m = PendingMap(*j_, kMaster);
    ExpectExact(m, "a");
    ExpectExact(m, "c");
    EXPECT_EQ(m.count(kLongB), 0u);
  });
}

// ---------------------------------------------------------------------------
// Random operations, a crash at a random point

struct ModelEntry {
  uint32_t req_ops = 0;  // acknowledged since the last Done that retired it
  int req_scope = 0;
  bool req_nondata = false;
  std::vector<R> req_ranges;
  uint32_t allowed_ops = 0;  // ever attempted
  int allowed_scope = 0;
};

bool Covered(const std::vector<R>& have, R want) {
  uint64_t at = want.first, end = want.first + want.second;
  for (auto [off, len] : have) {  // sorted
    if (off > at) break;
    if (off + len > at) at = off + len;
    if (at >= end) return true;
  }
  return at >= end;
}

TEST_F(JournalTest, RandomOperationsAndACrashAnywhereLoseNothingAcknowledged) {
  const uint64_t seed = TestSeed();
  SCOPED_TRACE("NASFS_TEST_SEED=" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto pick = [&](size_t n) { return size_t(rng() % n); };
  const std::vector<std::string> paths = {"",      "a",     "a/b", "a/b/c.txt", "a/bc", "d",
                                          "d/e",   "d/e/f", "g",   "h/i/j/k",   "long/" + std::string(60, 'L')};
  const std::vector<std::string> dirs = {"", "a", "a/b", "d", "d/e", "h/i"};
  const Op ops[] = {Op::kWrite, Op::kWrite, Op::kWrite, Op::kMeta,   Op::kTruncate,
                    Op::kCreate, Op::kRemove, Op::kRename, Op::kDirTimes};
  segment_bytes_ = 1024;

  for (int iter = 0; iter < 40; ++iter) {
    SCOPED_TRACE("iteration " + std::to_string(iter));
    NewDir();
    REOPEN();
    std::map<std::string, ModelEntry> model[2];
    std::map<std::string, int> held;
    std::set<std::string> intended;
    std::set<bool> full_sync[2] = {{false}, {false}};
    std::set<std::string> pair_ids = {""};
    const bool undo_removes = iter % 2;
    env_.DeactivateAfter(int64_t(pick(250)));

    auto random_change = [&] {
      Change c;
      c.path = paths[pick(paths.size())];
      c.op = ops[pick(std::size(ops))];
      c.scope = static_cast<Scope>(pick(3));
      if (c.op == Op::kWrite) c.offset = pick(1000), c.length = 1 + pick(100);
      return c;
    };
    auto note = [&](Target t, const std::vector<Change>& cs, bool acked) {
      for (const Change& c : cs) {
        ModelEntry& e = model[TargetIndex(t)][c.path];
        e.allowed_ops |= Bit(c.op);
        e.allowed_scope = std::max(e.allowed_scope, int(c.scope));
        if (!acked) continue;
        e.req_ops |= Bit(c.op);
        e.req_scope = std::max(e.req_scope, int(c.scope));
        if (c.op == Op::kWrite)
          e.req_ranges.push_back({c.offset, c.length});
        else if (c.op != Op::kMeta)
          e.req_nondata = true;
      }
    };

    for (int step = 0; step < 120; ++step) {
      size_t what = pick(100);
      Target t = pick(2) ? kBackup : kMaster;
      if (what < 40) {
        std::vector<Change> cs;
        for (size_t n = 1 + pick(3); n > 0; --n) cs.push_back(random_change());
        note(t, cs, j_->AddMissed(t, cs) == 0);
      } else if (what < 50) {
        auto pending = j_->PendingFor(t);
        if (pending.empty()) continue;
        const Pending& p = pending[pick(pending.size())];
        j_->Done(t, p.path, p.seq);
        ModelEntry& e = model[TargetIndex(t)][p.path];
        e.req_ops = 0, e.req_scope = 0, e.req_nondata = false, e.req_ranges.clear();
      } else if (what < 60) {
        std::vector<std::string> ds = {dirs[pick(dirs.size())]};
        if (pick(2)) ds.push_back(dirs[pick(dirs.size())]);
        std::sort(ds.begin(), ds.end());
        ds.erase(std::unique(ds.begin(), ds.end()), ds.end());
        intended.insert(ds.begin(), ds.end());
        if (j_->Intend(ds) == 0)
          for (auto& d : ds) ++held[d];
      } else if (what < 70) {
        std::vector<std::string> h;
        for (auto& [d, n] : held)
          if (n > 0) h.push_back(d);
        if (h.empty()) continue;
        std::string d = h[pick(h.size())];
        j_->Release({d});
        --held[d];
      } else if (what < 75) {
        j_->Tick();
      } else if (what < 80) {
        (void)j_->Flush();
      } else if (what < 83) {
        (void)j_->Checkpoint();
      } else if (what < 87) {
        bool on = pick(2);
        if (j_->SetFullSync(t, on) == 0)
          full_sync[TargetIndex(t)] = {on};
        else
          full_sync[TargetIndex(t)].insert(on);
      } else if (what < 90) {
        std::string id = "pair-" + std::to_string(pick(1000));
        if (j_->SetPairId(id) == 0)
          pair_ids = {id};
        else
          pair_ids.insert(id);
      } else {
        std::vector<Change> cs = {random_change()};
        bool recorded = false;
        int rc = j_->RecordIfTouching(t, cs, &recorded);
        note(t, cs, rc == 0 && recorded);
      }
    }

    Kill(undo_removes);
    Recovered rec;
    REOPEN(&rec);
    EXPECT_EQ(rec.damaged_records, 0u) << rec.damage;
    EXPECT_TRUE(rec.damage.empty()) << rec.damage;
    for (Target t : {kMaster, kBackup}) {
      SCOPED_TRACE(TargetName(t));
      auto got = PendingMap(*j_, t);
      const auto& m = model[TargetIndex(t)];
      for (auto& [p, g] : got) {
        auto it = m.find(p);
        if (it == m.end()) {
          ADD_FAILURE() << "garbage: " << Describe(g);
          continue;
        }
        EXPECT_EQ(g.ops & ~it->second.allowed_ops, 0u) << Describe(g);
        EXPECT_LE(int(g.scope), it->second.allowed_scope) << Describe(g);
        if (g.ops & ~(Bit(Op::kWrite) | Bit(Op::kMeta))) {
          EXPECT_FALSE(g.data_only) << Describe(g);
        }
        if (!g.data_only) {
          EXPECT_TRUE(g.ranges.empty()) << Describe(g);
        }
      }
      for (auto& [p, e] : m) {
        if (!e.req_ops) continue;
        auto it = got.find(p);
        if (it == got.end()) {
          ADD_FAILURE() << "lost '" << p << "' (ops 0x" << std::hex << e.req_ops << ")";
          continue;
        }
        const Pending& g = it->second;
        EXPECT_EQ(g.ops & e.req_ops, e.req_ops) << Describe(g);
        EXPECT_GE(int(g.scope), e.req_scope) << Describe(g);
        if (g.data_only) {
          EXPECT_FALSE(e.req_nondata) << Describe(g);
          auto have = RangesOf(g);
          for (R r : e.req_ranges) EXPECT_TRUE(Covered(have, r)) << r.first << "+" << r.second << " not in " << Describe(g);
        }
      }
      EXPECT_TRUE(full_sync[TargetIndex(t)].count(j_->full_sync(t)));
    }
    EXPECT_TRUE(pair_ids.count(j_->pair_id())) << j_->pair_id();
    for (auto& [d, n] : held)
      if (n > 0) {
        EXPECT_THAT(rec.unfinished_dirs, Contains(d)) << "held mark lost";
      }
    for (auto& d : rec.unfinished_dirs) EXPECT_TRUE(intended.count(d)) << "garbage mark '" << d << "'";
    if (HasFailure()) break;
  }
}

// ---------------------------------------------------------------------------
// Replay coordination

// A chain thousands of directories deep (any user can make one): the
// pending index answers about its ancestors and descendants exactly, and
// forgets them all when the entry is done.
TEST_F(JournalTest, DeepPathsAreIndexedAndForgotten) {
  REOPEN();
  std::string deep, mid;
  for (int i = 0; i < 3000; ++i) {
    deep += (i ? "/d" : "d") + std::to_string(i);
    if (i == 1499) mid = deep;
  }
  ASSERT_EQ(j_->AddMissed(kBackup, {W(deep + "/f", 0, 1)}), 0);
  EXPECT_TRUE(j_->Touches(kBackup, {C(mid, Op::kDirTimes)}));            // a descendant is pending
  EXPECT_TRUE(j_->Touches(kBackup, {C("d0", Op::kMeta)}));
  EXPECT_TRUE(j_->Touches(kBackup, {C(deep + "/f/x", Op::kCreate)}));    // an ancestor is pending
  EXPECT_FALSE(j_->Touches(kBackup, {C(mid + "x", Op::kCreate)}));       // a string prefix, not a parent
  EXPECT_FALSE(j_->Touches(kBackup, {C(deep + "/g", Op::kCreate)}));     // a sibling
  EXPECT_FALSE(j_->Touches(kMaster, {C(mid, Op::kDirTimes)}));
  Kill();
  REOPEN();  // rebuilt from the log alike
  EXPECT_TRUE(j_->Touches(kBackup, {C(mid, Op::kDirTimes)}));
  ASSERT_EQ(j_->PendingFor(kBackup).size(), 1u);
  j_->Done(kBackup, deep + "/f", j_->PendingFor(kBackup)[0].seq);
  EXPECT_FALSE(j_->HasPending(kBackup));
  // The index is empty again: a new entry elsewhere does not make the old
  // chain look pending.
  ASSERT_EQ(j_->AddMissed(kBackup, {W("other", 0, 1)}), 0);
  EXPECT_FALSE(j_->Touches(kBackup, {C(mid, Op::kDirTimes)}));
  EXPECT_FALSE(j_->Touches(kBackup, {C("d0", Op::kMeta)}));
  EXPECT_TRUE(j_->Touches(kBackup, {C("other", Op::kMeta)}));
}

TEST_F(JournalTest, RecordIfTouchingRecordsOnlyChangesNearAPendingPath) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kBackup, {W("d1/f", 0, 1), C("d2", Op::kCreate, Scope::kTree)}), 0);

  auto touch = [&](Target t, std::vector<Change> cs) {
    bool recorded = false;
    EXPECT_EQ(j_->RecordIfTouching(t, cs, &recorded), 0);
    return recorded;
  };
  // Unrelated, including names that share a string prefix with pending ones.
  for (const char* p : {"d10", "d1/fx", "d1/f.tmp", "d2x", "d", "e/g"}) {
    EXPECT_FALSE(touch(kBackup, {C(p, Op::kCreate)})) << p;
    EXPECT_EQ(PendingMap(*j_, kBackup).count(p), 0u) << p;
  }
  EXPECT_EQ(PendingMap(*j_, kBackup).size(), 2u);
  // Nothing pending for master: nothing touches.
  EXPECT_FALSE(touch(kMaster, {C("d1/f", Op::kMeta)}));
  EXPECT_FALSE(j_->HasPending(kMaster));

  EXPECT_TRUE(touch(kBackup, {C("d1/f", Op::kMeta)}));                // itself
  EXPECT_TRUE(touch(kBackup, {C("d1/f/x", Op::kCreate)}));            // an ancestor is pending
  EXPECT_TRUE(touch(kBackup, {W("d2/sub/file", 0, 5)}));              // an ancestor is pending
  EXPECT_TRUE(touch(kBackup, {C("d1", Op::kDirTimes)}));              // a descendant is pending
  EXPECT_TRUE(touch(kBackup, {C("zzz", Op::kCreate), C("d2/a", Op::kCreate)}));  // one touches: all recorded
  auto m = PendingMap(*j_, kBackup);
  EXPECT_EQ(m.at("d1/f").ops, Bit(Op::kWrite) | Bit(Op::kMeta));
  EXPECT_THAT(Paths(m), IsSupersetOf({"d1/f/x", "d2/sub/file", "d1", "zzz", "d2/a"}));
  EXPECT_EQ(m.size(), 7u);

  // Recorded durably.
  Kill();
  REOPEN();
  EXPECT_EQ(Paths(PendingMap(*j_, kBackup)), Paths(m));

  // The root pending: everything touches it.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("", Op::kDirTimes)}), 0);
  EXPECT_TRUE(touch(kMaster, {C("any/where", Op::kCreate)}));
  // Any pending path is under the root.
  EXPECT_TRUE(touch(kBackup, {C("", Op::kMeta)}));
}

TEST_F(JournalTest, FinishIfEmptyRunsOnlyWhenNothingIsPending) {
  REOPEN();
  int ran = 0;
  EXPECT_TRUE(j_->FinishIfEmpty(kMaster, [&] { ++ran; }));
  EXPECT_EQ(ran, 1);
  ASSERT_EQ(j_->AddMissed(kMaster, {C("x", Op::kCreate)}), 0);
  EXPECT_FALSE(j_->FinishIfEmpty(kMaster, [&] { ++ran; }));
  EXPECT_EQ(ran, 1);
  EXPECT_TRUE(j_->FinishIfEmpty(kBackup, [&] { ++ran; }));
  EXPECT_EQ(ran, 2);
  j_->Done(kMaster, "x", PendingMap(*j_, kMaster).at("x").seq);
  EXPECT_TRUE(j_->FinishIfEmpty(kMaster, [&] { ++ran; }));
  EXPECT_EQ(ran, 3);
  // It runs under the journal's lock, and the journal is usable afterwards.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("y", Op::kCreate)}), 0);
  EXPECT_TRUE(j_->HasPending(kMaster));
}

// ---------------------------------------------------------------------------
// Lock

TEST_F(JournalTest, ASecondOpenOfTheSameDirFails) {
  REOPEN();
  Recovered rec;
  auto second = Journal::Open(Opts(), &rec);
  ASSERT_FALSE(second.has_value()) << "two journals open on " << dir_;
  std::string err = second.error();
  EXPECT_FALSE(err.empty());
  std::string lower = err;
  std::transform(lower.begin(), lower.end(), lower.begin(), [](unsigned char c) { return std::tolower(c); });
  EXPECT_TRUE(lower.find("lock") != std::string::npos || err.find(dir_) != std::string::npos) << err;
  // With the default env too.
  Options o = Opts();
  o.env = nullptr;
  EXPECT_FALSE(Journal::Open(o, &rec).has_value());
  // The first one is unharmed, and the lock goes with it.
  ASSERT_EQ(j_->AddMissed(kMaster, {C("x", Op::kCreate)}), 0);
  j_.reset();
  REOPEN(&rec);
  EXPECT_EQ(PendingMap(*j_, kMaster).count("x"), 1u);
}

// A write journaled for a NAS being replayed onto counts as a writer on its
// entries until it has landed on the other NAS: the replay skips such
// entries, so it cannot copy the path before the write lands and retire it.
TEST_F(JournalTest, RecordedWritesCountAsWritersUntilEndWrites) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {W("d/f", 0, 1)}), 0);
  EXPECT_EQ(PendingMap(*j_, kMaster).at("d/f").writers, 0u);
  std::vector<Change> w1 = {W("d/f", 10, 5)};
  std::vector<Change> w2 = {W("d/f", 20, 5), C("d/g", Op::kCreate)};
  bool recorded = false;
  ASSERT_EQ(j_->RecordIfTouching(kMaster, w1, &recorded), 0);
  ASSERT_TRUE(recorded);
  ASSERT_EQ(j_->RecordIfTouching(kMaster, w2, &recorded), 0);
  ASSERT_TRUE(recorded);
  auto m = PendingMap(*j_, kMaster);
  EXPECT_EQ(m.at("d/f").writers, 2u);
  EXPECT_EQ(m.at("d/g").writers, 1u);
  j_->EndWrites(kMaster, w1);
  EXPECT_EQ(PendingMap(*j_, kMaster).at("d/f").writers, 1u);
  j_->EndWrites(kMaster, w2);
  m = PendingMap(*j_, kMaster);
  EXPECT_EQ(m.at("d/f").writers, 0u);
  EXPECT_EQ(m.at("d/g").writers, 0u);
  // Never below zero, and an entry already gone is ignored.
  j_->EndWrites(kMaster, w2);
  EXPECT_EQ(PendingMap(*j_, kMaster).at("d/f").writers, 0u);
  j_->Done(kMaster, "d/g", m.at("d/g").seq);
  j_->EndWrites(kMaster, w2);
  EXPECT_EQ(PendingMap(*j_, kMaster).count("d/g"), 0u);
  // A snapshot taken before a write was journaled does not retire it.
  uint64_t old_seq = PendingMap(*j_, kMaster).at("d/f").seq;
  ASSERT_EQ(j_->RecordIfTouching(kMaster, w1, &recorded), 0);
  j_->Done(kMaster, "d/f", old_seq);
  EXPECT_EQ(PendingMap(*j_, kMaster).count("d/f"), 1u);
}


// ---- the pending index on the shared NAS (peer_log.h) ----

TEST(PeerLog, RoundTripMergesByPathAndKeepsTheWidestScope) {
  uint64_t seq = 1;
  std::string log = EncodePeerRecords(kMaster,
                                      {{"d/f", Scope::kEntry, Op::kWrite, 0, 10, {}},
                                       {"d", Scope::kEntry, Op::kDirTimes, 0, 0, {}},
                                       {"d/f", Scope::kTree, Op::kRename, 0, 0, {}},
                                       {"n\nl\tname", Scope::kEntry, Op::kCreate, 0, 0, "d/f"}},
                                      &seq);
  log += EncodePeerRecords(kBackup, {{"other", Scope::kEntry, Op::kCreate, 0, 0, {}}}, &seq);
  EXPECT_EQ(seq, 6u);
  auto c = DecodePeerLog(log, kMaster);
  EXPECT_EQ(c.records, 5u);
  EXPECT_EQ(c.last_seq, 5u);
  EXPECT_EQ(c.torn_bytes, 0u);
  ASSERT_EQ(c.entries.size(), 3u);  // "other" is for the backup
  EXPECT_EQ(c.entries[0].path, "d/f");
  EXPECT_EQ(c.entries[0].scope, Scope::kTree);
  EXPECT_EQ(c.entries[0].ops, (1u << static_cast<unsigned>(Op::kWrite)) | (1u << static_cast<unsigned>(Op::kRename)));
  EXPECT_EQ(c.entries[1].path, "d");
  EXPECT_EQ(c.entries[2].path, "n\nl\tname");
  EXPECT_EQ(DecodePeerLog(log, kBackup).entries.size(), 1u);
}

TEST(PeerLog, LinkedInodesAreListedOncePerInode) {
  uint64_t seq = 1;
  std::vector<Change> changes;
  AppendChanges("c", Scope::kTree, (1u << static_cast<unsigned>(Op::kWrite)) | (1u << static_cast<unsigned>(Op::kLinked)),
                {9, 4}, &changes);
  ASSERT_EQ(changes.size(), 3u);  // the write, and one per inode
  changes.push_back({"c", Scope::kEntry, Op::kLinked, 9, 0, {}});  // again: kept once
  auto c = DecodePeerLog(EncodePeerRecords(kMaster, changes, &seq), kMaster);
  ASSERT_EQ(c.entries.size(), 1u);
  EXPECT_EQ(c.entries[0].inodes, (std::vector<uint64_t>{4, 9}));
  EXPECT_EQ(c.entries[0].ops, (1u << static_cast<unsigned>(Op::kWrite)) | (1u << static_cast<unsigned>(Op::kLinked)));
  EXPECT_EQ(c.entries[0].scope, Scope::kTree);
}

TEST(PeerLog, ATornAppendLosesOnlyItsOwnRecord) {
  uint64_t seq = 1;
  std::string whole = EncodePeerRecords(kMaster, {{"a", Scope::kEntry, Op::kCreate, 0, 0, {}}}, &seq);
  std::string next = EncodePeerRecords(kMaster, {{"b", Scope::kEntry, Op::kCreate, 0, 0, {}}}, &seq);
  for (size_t cut = 0; cut < next.size(); ++cut) {
    auto c = DecodePeerLog(whole + next.substr(0, cut), kMaster);
    ASSERT_EQ(c.entries.size(), 1u) << "cut at " << cut;
    EXPECT_EQ(c.entries[0].path, "a");
    EXPECT_EQ(c.torn_bytes, cut);
  }
  // A flipped byte in the first record: the second still reads.
  std::string bad = whole + next;
  bad[20] ^= 0x40;
  auto c = DecodePeerLog(bad, kMaster);
  ASSERT_EQ(c.entries.size(), 1u);
  EXPECT_EQ(c.entries[0].path, "b");
  EXPECT_EQ(c.damaged, 1u);
}

namespace nasfs::journal {
namespace {

// Issue 10: one byte flipped in a checkpoint dropped its pending entries
// silently (no damage reported, the segment deleted), when the flip hit the
// CheckpointEnd. Now, whatever byte is hit, every pending entry survives, or
// the damage is reported and the segment kept for the operator.
TEST_F(JournalDamageTest, EveryFlippedByteOfACheckpointIsReportedOrLosesNothing) {
  auto build = [&](std::string* seg, uint64_t* size) {
    REOPEN();
    ASSERT_EQ(j_->SetPairId("pair-1"), 0);
    ASSERT_EQ(j_->AddMissed(kMaster, {W("a", 0, 10), W("a", 100, 5), C("d/e", Op::kCreate)}), 0);
    Change link = C("d/f", Op::kCreate);
    link.link_from = "d/e";
    ASSERT_EQ(j_->AddMissed(kBackup, {link, C("g", Op::kRename, Scope::kTree)}), 0);
    ASSERT_EQ(j_->SetFullSync(kBackup, true), 0);
    ASSERT_EQ(j_->Checkpoint(), 0);
    *seg = env_.LastAppended();
    *size = env_.Synced(*seg);
    StopWithoutDropping();
  };
  std::string seg;
  uint64_t size = 0;
  ASSERT_NO_FATAL_FAILURE(build(&seg, &size));
  ASSERT_GT(size, 0u);
  REOPEN();
  const auto want_m = PendingMap(*j_, kMaster), want_b = PendingMap(*j_, kBackup);
  ASSERT_EQ(want_m.size(), 2u);
  ASSERT_EQ(want_b.size(), 2u);
  j_.reset();
  int reported = 0;
  // Every third byte, and every byte of the tail (CheckpointEnd and the
  // record before it): a full sweep costs minutes under the sanitizers.
  for (uint64_t off = 0; off < size; off += (off + 64 >= size ? 1 : 3)) {
    SCOPED_TRACE("flipped byte at " + std::to_string(off) + " of " + std::to_string(size));
    NewDir();
    std::string s2;
    uint64_t size2 = 0;
    ASSERT_NO_FATAL_FAILURE(build(&s2, &size2));
    ASSERT_EQ(size2, size);
    env_.FlipByte(s2, off);
    Recovered rec;
    REOPEN(&rec);
    auto m = PendingMap(*j_, kMaster), b = PendingMap(*j_, kBackup);
    for (auto& [p, e] : m) ASSERT_TRUE(want_m.count(p)) << "garbage replayed: " << Describe(e);
    for (auto& [p, e] : b) ASSERT_TRUE(want_b.count(p)) << "garbage replayed: " << Describe(e);
    bool all = m.size() == want_m.size() && b.size() == want_b.size() && j_->pair_id() == "pair-1" &&
               j_->full_sync(kBackup);
    if (!all) {
      EXPECT_FALSE(rec.damage.empty()) << "the checkpoint lost state silently";
      auto names = DirNames();
      EXPECT_TRUE(std::any_of(names.begin(), names.end(), [](const std::string& n) { return n.ends_with(".damaged"); }))
          << "the damaged checkpoint was not kept";
      ++reported;
    }
    if (HasFailure()) break;
  }
  EXPECT_GT(reported, 0) << "no flip was ever reported: the test proves nothing";
}

// Issue 10: a record bigger than the reader accepts could be written and
// acknowledged, then read back as damage. The writer refuses what the
// reader would reject, and cuts long lists into records that fit.
TEST_F(JournalTest, TheWriterNeverProducesARecordTheReaderRejects) {
  REOPEN();
  std::string huge(kMaxPathBytes + 1, 'p');
  EXPECT_EQ(j_->AddMissed(kMaster, {C(huge, Op::kCreate)}), ENAMETOOLONG);
  Change link = C("ok", Op::kCreate);
  link.link_from = huge;
  EXPECT_EQ(j_->AddMissed(kMaster, {link}), ENAMETOOLONG);
  bool recorded = true;
  EXPECT_EQ(j_->RecordIfTouching(kMaster, {C(huge, Op::kCreate)}, &recorded), ENAMETOOLONG);
  EXPECT_FALSE(recorded);
  EXPECT_EQ(j_->Intend({huge}), ENAMETOOLONG);
  EXPECT_TRUE(j_->stats().ok) << "a refused record failed the journal";
  EXPECT_FALSE(j_->HasPending(kMaster));

  // The longest paths it takes, in one record: read back whole.
  std::string longest(kMaxPathBytes, 'l');
  Change big = C(longest, Op::kCreate);
  big.link_from = std::string(kMaxPathBytes, 'f');
  ASSERT_EQ(j_->AddMissed(kMaster, {big}), 0);
  // Marks whose list is larger than one record may be.
  std::vector<std::string> dirs;
  for (int i = 0; i < 600; ++i) dirs.push_back(std::to_string(i) + "/" + std::string(2000, 'd'));
  ASSERT_EQ(j_->Intend(dirs), 0);
  StopWithoutDropping();  // a crash: the marks are still set
  Recovered rec;
  REOPEN(&rec);
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  EXPECT_EQ(rec.unfinished_dirs.size(), 600u);
  auto m = PendingMap(*j_, kMaster);
  ASSERT_EQ(m.count(longest), 1u);
  EXPECT_EQ(m[longest].link_from, big.link_from);
  // The checkpoint Open wrote holds them too, in records that fit.
  StopWithoutDropping();
  REOPEN(&rec);
  EXPECT_TRUE(rec.damage.empty()) << rec.damage;
  EXPECT_EQ(rec.unfinished_dirs.size(), 600u);
  EXPECT_EQ(PendingMap(*j_, kMaster).count(longest), 1u);
}

// Issue 10: the journal directory removed while nasfs ran: writes kept
// "succeeding" into deleted files, and a second daemon could start on the
// same path. Now the removal fails the journal like a full disk, the lock
// beside the directory keeps every other daemon off it, and the next tick
// makes the directory again with the whole state.
TEST_F(JournalTest, AJournalDirectoryRemovedUnderTheDaemonFailsWritesAndComesBack) {
  for (bool replace : {false, true}) {
    SCOPED_TRACE(replace ? "replaced" : "removed");
    NewDir();
    REOPEN();
    ASSERT_EQ(j_->AddMissed(kMaster, {C("before", Op::kCreate)}), 0);
    fs::remove_all(dir_);
    if (replace) fs::create_directories(dir_);
    int e = j_->AddMissed(kMaster, {C("during", Op::kCreate)});
    EXPECT_NE(e, 0) << "a write was acknowledged into a removed journal";
    EXPECT_FALSE(j_->stats().ok);
    EXPECT_NE(j_->stats().error_text.find(replace ? "replaced" : "removed"), std::string::npos)
        << j_->stats().error_text;
    // No second daemon on it meanwhile.
    Recovered rec;
    auto second = Journal::Open(Opts(), &rec);
    EXPECT_FALSE(second.has_value()) << "a second journal opened on " << dir_;
    // The repair makes the directory again and writes the whole state.
    j_->Tick();
    ASSERT_TRUE(j_->stats().ok) << j_->stats().error_text;
    ASSERT_EQ(j_->AddMissed(kMaster, {C("after", Op::kCreate)}), 0);
    StopWithoutDropping();
    REOPEN(&rec);
    auto m = PendingMap(*j_, kMaster);
    EXPECT_EQ(m.count("before"), 1u) << "what was recorded before the removal was lost";
    EXPECT_EQ(m.count("after"), 1u);
    EXPECT_EQ(m.count("during"), e == 0 ? 1u : m.count("during"));
  }
}

// The fuzzer's F1: a record at the top of the seq space made the next seq
// wrap to 0 with every seq counted durable, so calls returned 0 with
// nothing synced. Such a record is damage now.
TEST_F(JournalTest, ASeqAtTheTopOfItsRangeIsDamageNotAWrap) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {C("before", Op::kCreate)}), 0);
  std::string seg = env_.LastAppended();
  StopWithoutDropping();
  std::string p;
  Put8(&p, 6);  // Pair
  PutStr(&p, "p");
  std::string rec;
  Frame(&rec, UINT64_MAX, p);
  env_.AppendDurable(seg, rec);
  Recovered r;
  REOPEN(&r);
  EXPECT_FALSE(r.damage.empty()) << "the record was applied";
  ASSERT_EQ(j_->AddMissed(kMaster, {C("after", Op::kCreate)}), 0);
  ASSERT_EQ(j_->Intend({"dir"}), 0);
  Kill();  // what was not synced is lost
  REOPEN(&r);
  auto m = PendingMap(*j_, kMaster);
  EXPECT_EQ(m.count("after"), 1u) << "AddMissed returned 0 but nothing was synced";
  EXPECT_EQ(m.count("before"), 1u);
  EXPECT_THAT(r.unfinished_dirs, ::testing::Contains("dir"));
}

// The nets' F2: resynchronizing after damage tried every offset, hashing up
// to each one's length: 1 MiB of fake headers took 34 s. Bounded now.
TEST(RecordScanTest, FakeHeadersCannotMakeScanningQuadratic) {
  std::string data;
  for (int i = 0; i < (1 << 20) / 8; ++i) {
    Put32(&data, kMagic);
    Put32(&data, 1 << 19);
  }
  std::string good;
  Frame(&good, 1, std::string("x"));
  auto t0 = std::chrono::steady_clock::now();
  ScanResult r = Scan(good + data + good, /*last=*/false);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(3));
  ASSERT_FALSE(r.records.empty());
  EXPECT_EQ(r.records.front().seq, 1u);
  EXPECT_GT(r.damaged, 0u);
}

}  // namespace
}  // namespace nasfs::journal

// A file written steadily while the replay copies it (found by
// bench/write_pause.sh: a 256 MiB file written every 10 ms kept the master
// out for good, copied whole round after round). Done after a copy that
// began at BeginReplay leaves pending only what came since, merged the
// same way: here one written range, so the next copy is that range.
TEST_F(JournalTest, ChangesDuringACopyAreAllThatStayPending) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {C("big", Op::kCreate), W("big", 0, 1 << 20)}), 0);
  journal::Pending cur;
  ASSERT_TRUE(j_->BeginReplay(kMaster, "big", &cur));
  EXPECT_FALSE(cur.data_only);
  // Written during the copy (through the mount: RecordIfTouching).
  bool recorded = false;
  const std::vector<Change> w = {W("big", 8192, 4096)};
  ASSERT_EQ(j_->RecordIfTouching(kMaster, w, &recorded), 0);
  ASSERT_TRUE(recorded);
  // The write has not landed on the backup yet: no copy may begin.
  journal::Pending busy;
  EXPECT_FALSE(j_->BeginReplay(kMaster, "big", &busy));
  j_->EndWrites(kMaster, w);
  j_->Done(kMaster, "big", cur.seq);
  auto left = PendingMap(*j_, kMaster);
  ASSERT_EQ(left.count("big"), 1u) << "the write during the copy was retired with it";
  const auto& e = left.at("big");
  EXPECT_TRUE(e.data_only);
  EXPECT_EQ(e.ops, 1u << static_cast<unsigned>(Op::kWrite));
  ASSERT_EQ(e.ranges.size(), 1u);
  EXPECT_EQ(e.ranges[0].offset, 8192u);
  EXPECT_EQ(e.ranges[0].length, 4096u);
  EXPECT_TRUE(e.link_from.empty());

  // The next copy (of that range) with nothing written meanwhile retires it.
  ASSERT_TRUE(j_->BeginReplay(kMaster, "big", &cur));
  EXPECT_EQ(cur.ranges.size(), 1u);
  j_->Done(kMaster, "big", cur.seq);
  EXPECT_FALSE(j_->HasPending(kMaster));
}

// Without a copy begun (a Done for an older seq, or from before a restart)
// nothing is narrowed: the whole entry stays. And after a crash the log
// gives back the whole entry, never less than what was acknowledged.
TEST_F(JournalTest, ANarrowedEntryIsNeverLessThanTheLogAfterACrash) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {C("f", Op::kCreate)}), 0);
  const uint64_t old_seq = PendingMap(*j_, kMaster).at("f").seq;
  ASSERT_EQ(j_->AddMissed(kMaster, {C("f", Op::kTruncate)}), 0);
  j_->Done(kMaster, "f", old_seq);  // no BeginReplay: stays whole
  {
    const auto e = PendingMap(*j_, kMaster).at("f");
    EXPECT_FALSE(e.data_only);
    EXPECT_TRUE(e.ops & (1u << static_cast<unsigned>(Op::kCreate)));
  }
  journal::Pending cur;
  ASSERT_TRUE(j_->BeginReplay(kMaster, "f", &cur));
  ASSERT_EQ(j_->AddMissed(kMaster, {W("f", 0, 5)}), 0);
  j_->Done(kMaster, "f", cur.seq);
  ASSERT_EQ(PendingMap(*j_, kMaster).at("f").ops, 1u << static_cast<unsigned>(Op::kWrite));
  ASSERT_EQ(j_->Flush(), 0);
  Kill();
  REOPEN();
  const auto after = PendingMap(*j_, kMaster);
  ASSERT_EQ(after.count("f"), 1u);
  EXPECT_TRUE(after.at("f").ops & (1u << static_cast<unsigned>(Op::kWrite)));
}

// A link whose source is still pending for a returning NAS touches it (the
// soak: the link reached the master, which had no source yet, answered
// ENOENT, and the disagreement took the healthy backup down).
TEST_F(JournalTest, ALinkTouchesThePendingNameItLinksTo) {
  REOPEN();
  ASSERT_EQ(j_->AddMissed(kMaster, {C("d/src", Op::kCreate)}), 0);
  Change link = C("e/dst", Op::kCreate);
  link.link_from = "d/src";
  EXPECT_TRUE(j_->Touches(kMaster, {link}));
  Change other = C("e/dst", Op::kCreate);
  other.link_from = "d/elsewhere";
  EXPECT_FALSE(j_->Touches(kMaster, {other}));
  bool recorded = false;
  ASSERT_EQ(j_->RecordIfTouching(kMaster, {link}, &recorded), 0);
  EXPECT_TRUE(recorded);
  j_->EndWrites(kMaster, {link});
  EXPECT_EQ(PendingMap(*j_, kMaster).at("e/dst").link_from, "d/src");
}

}  // namespace
}  // namespace nasfs::journal
