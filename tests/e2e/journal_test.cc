// Issue 4's mounted scenarios: the writes one NAS misses while it is out
// survive the outage, a crash of nasfs in the middle of it and a full journal
// disk, and reach that NAS before reads switch back to it.
//
// Each scenario:
//  - a baseline tree written through the mount with both NAS healthy (300
//    files in a few directories, subdirectories, symlinks, a 4 MiB file);
//  - an outage: the NAS's FUSE server is killed (its mount answers ENOTCONN);
//  - through the mount, the operations: 1,000 files created (varied
//    sizes, some in new directories), 100 overwritten, 50 appended to, 50
//    truncated, 120 deleted, 120 renamed (some across directories, some over
//    an existing file), 50 chmodded, 20 symlinks, a directory renamed with its
//    content, another removed with rm -r, and a small pwrite into the middle
//    of the 4 MiB file; each one applied to an in-memory model of the
//    expected tree as it succeeds;
//  - meanwhile a reader fetches files nobody changes, and no read may fail;
//  - status, during the outage: the NAS down, the journal counting entries;
//  - the NAS back; within the 30 s, status shows reads on the master
//    with nothing pending, and never showed reads on a master that lacked
//    something;
//  - both NAS identical (content, mode, owner, mtime), both equal to the
//    model (content, mode, type, symlink targets), and reads served by the
//    master.
// The variants: a master outage and a backup outage (each with writes
// racing the replay); a master outage with nasfs SIGKILLed halfway, under a
// writer, and mounted again while the master is still dead (the journal
// must carry the pending set: no whole-tree copy); a master outage during
// which the journal's disk (a 1 MiB tmpfs) fills up.
// Each scenario prints one "[journal figures]" line (switch-back time and
// the rest).
//
// nasfs runs in the foreground with its output in the workspace (this
// machine may have no syslog); a failing scenario prints the log's tail.
// Every wait is bounded; TearDown undoes every fault and unmounts nasfs,
// the tmpfs and the NAS servers, whatever the test did.

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "tests/e2e/load.h"
#include "tests/e2e/mount_fixture.h"
#include "tests/e2e/nas_fault.h"
#include "tests/e2e/tree_compare.h"

namespace nasfs::e2e {
namespace {

namespace fsys = std::filesystem;
using nlohmann::json;
using Clock = std::chrono::steady_clock;

// "Once the master's mount is back, within 30 s" (the issue).
constexpr auto kSwitchBackWithin = 30s;
// A dead NAS is seen in band or by the next probe (every 500 ms).
constexpr auto kDetectWithin = 5s;
// The journal retries a fresh segment once a second once its disk has room.
constexpr auto kJournalRecoversWithin = 10s;






// What is wrong with one status answer, reported once with the answer
// (a failing EXPECT per field would print the whole answer each time).
// Made with STATUS_EXPECT, so a failure names the line that made it.
class StatusExpect {
 public:
  StatusExpect(json s, std::string when, const char* file, int line)
      : s_(std::move(s)), when_(std::move(when)), file_(file), line_(line) {}
  ~StatusExpect() {
    if (!bad_.empty()) ADD_FAILURE_AT(file_, line_) << when_ << ":" << FirstLines(bad_) << "\nstatus: " << s_.dump(2);
  }
  const json& s() const { return s_; }

  void Is(const std::string& pointer, const json& want, const std::string& why = "") {
    const json got = Get(s_, pointer);
    if (got != want) bad_.push_back(fmt::format("{} is {}, expected {}{}", pointer, got.dump(), want.dump(), why));
  }
  void Positive(const std::string& pointer, const std::string& why = "") {
    const json got = Get(s_, pointer);
    if (!got.is_number() || got.get<double>() <= 0) bad_.push_back(fmt::format("{} is {}, expected > 0{}", pointer, got.dump(), why));
  }
  void State(const std::string& role, const std::string& want) {
    if (StateOf(s_, role) != want) bad_.push_back(fmt::format("the {} is {}, expected {}", role, StateOf(s_, role), want));
  }
  void True(bool ok, const std::string& what) {
    if (!ok) bad_.push_back(what);
  }

 private:
  const json s_;
  const std::string when_;
  const char* const file_;
  const int line_;
  std::vector<std::string> bad_;
};
#define STATUS_EXPECT(var, status, when) StatusExpect var((status), (when), __FILE__, __LINE__)

// ---- syscalls through the mount, returning 0 or an errno --------------------

// Errno, PutFile and t_failed_call: tests/e2e/load.h.

int PwriteAt(const std::string& path, std::string_view data, off_t offset) {
  t_failed_call = "open";
  const int fd = open(path.c_str(), O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  t_failed_call = "pwrite";
  const ssize_t n = pwrite(fd, data.data(), data.size(), offset);
  int e = n < 0 ? errno : (static_cast<size_t>(n) != data.size() ? EIO : 0);
  if (close(fd) != 0 && e == 0) e = errno;
  return e;
}

// ---- the expected tree ------------------------------------------------------

struct Expected {
  TreeEntry::Type type = TreeEntry::Type::kFile;
  mode_t perm = 0644;  // permission bits
  std::string data;    // a file's bytes, a symlink's target
};

const char* TypeName(TreeEntry::Type t) {
  switch (t) {
    case TreeEntry::Type::kFile: return "file";
    case TreeEntry::Type::kDir: return "directory";
    case TreeEntry::Type::kSymlink: return "symlink";
    default: return "other";
  }
}

// What the tree must hold: every operation that succeeded through the mount
// is applied here as well. A path whose operation failed is "unknown": it
// and everything beneath it may be in any state (but both NAS must still
// agree on it).
class Model {
 public:
  void File(const std::string& rel, std::string data, mode_t perm) {
    e_[rel] = Expected{TreeEntry::Type::kFile, perm, std::move(data)};
  }
  void Dir(const std::string& rel, mode_t perm = 0755) { e_[rel] = Expected{TreeEntry::Type::kDir, perm, ""}; }
  void Link(const std::string& rel, std::string target) {
    e_[rel] = Expected{TreeEntry::Type::kSymlink, 0777, std::move(target)};
  }
  bool Has(const std::string& rel) const { return e_.count(rel) != 0; }
  Expected& At(const std::string& rel) { return e_.at(rel); }
  const std::map<std::string, Expected>& entries() const { return e_; }

  // Removes rel and everything beneath it.
  void Remove(const std::string& rel) {
    e_.erase(rel);
    const std::string prefix = rel + "/";
    for (auto it = e_.lower_bound(prefix); it != e_.end() && it->first.starts_with(prefix);) it = e_.erase(it);
  }
  // rename(2): `to` (and what is beneath it) replaced by `from` and what is beneath it.
  void Rename(const std::string& from, const std::string& to) {
    std::vector<std::pair<std::string, Expected>> moved;
    const std::string prefix = from + "/";
    if (auto it = e_.find(from); it != e_.end()) moved.emplace_back(to, it->second);
    for (auto it = e_.lower_bound(prefix); it != e_.end() && it->first.starts_with(prefix); ++it) {
      moved.emplace_back(to + "/" + it->first.substr(prefix.size()), it->second);
    }
    Remove(from);
    Remove(to);
    for (auto& [rel, e] : moved) e_[rel] = std::move(e);
  }
  void Unknown(const std::string& rel) { unknown_.insert(rel); }
  size_t unknown_count() const { return unknown_.size(); }
  // rel or a directory above it was made unknown.
  bool IsUnknown(const std::string& rel) const { return AtOrUnderAny(unknown_, rel); }

  // Differences between the model and a snapshot (labelled `name`).
  std::vector<std::string> Compare(const Tree& t, const std::string& name) const {
    std::vector<std::string> d;
    for (const auto& [rel, x] : e_) {
      if (IsUnknown(rel)) continue;
      auto it = t.find(rel);
      if (it == t.end()) {
        d.push_back(fmt::format("{}: {} ({}) is missing", name, rel, TypeName(x.type)));
        continue;
      }
      const TreeEntry& got = it->second;
      if (!got.error.empty()) d.push_back(fmt::format("{}: {}: {}", name, rel, got.error));
      if (got.type != x.type) {
        d.push_back(fmt::format("{}: {} is a {}, expected a {}", name, rel, TypeName(got.type), TypeName(x.type)));
        continue;
      }
      if (x.type != TreeEntry::Type::kSymlink && (got.mode & 07777) != x.perm) {
        d.push_back(fmt::format("{}: {} has mode {:04o}, expected {:04o}", name, rel, got.mode & 07777, x.perm));
      }
      if (x.type == TreeEntry::Type::kFile &&
          (got.size != static_cast<off_t>(x.data.size()) || got.content_hash != XXH3_64bits(x.data.data(), x.data.size()))) {
        d.push_back(fmt::format("{}: {} holds other bytes ({} bytes, expected {})", name, rel, got.size, x.data.size()));
      }
      if (x.type == TreeEntry::Type::kSymlink && got.link_target != x.data) {
        d.push_back(fmt::format("{}: {} points to '{}', expected '{}'", name, rel, got.link_target, x.data));
      }
    }
    for (const auto& [rel, got] : t) {
      if (rel.empty() || e_.count(rel) || IsUnknown(rel)) continue;
      d.push_back(fmt::format("{}: {} ({}) should not exist", name, rel, TypeName(got.type)));
    }
    return d;
  }

 private:
  std::map<std::string, Expected> e_;  // relative path -> entry; the root is not in it
  std::set<std::string> unknown_;
};

// ---- watching status --------------------------------------------------------

// Polls `nasfsctl status --json` every 100 ms (the control server never
// waits on a NAS) and keeps every answer, for the checks that hold
// "throughout" (reads stay on the master, no whole-tree copy) and the figures.
class StatusWatch {
 public:
  struct Sample {
    Clock::time_point at;
    json s;
  };

  explicit StatusWatch(std::string mnt) : mnt_(std::move(mnt)) {}
  ~StatusWatch() { Stop(); }

  void Start() {
    thread_ = std::thread([this] {
      while (!stop_) {
        auto r = Status(mnt_, Within(2s));
        if (r.ok()) {
          std::lock_guard<std::mutex> lock(mu_);
          samples_.push_back({Clock::now(), std::move(r.json)});
        }
        std::this_thread::sleep_for(100ms);
      }
    });
  }
  void Stop() {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }
  std::vector<Sample> Since(Clock::time_point t) const {
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<Sample> out;
    for (const auto& x : samples_) {
      if (x.at >= t) out.push_back(x);
    }
    return out;
  }

 private:
  const std::string mnt_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  mutable std::mutex mu_;
  std::vector<Sample> samples_;  // guarded by mu_
};

// ---- writers that own their state ------------------------------------------

// The writers below are OwnedWorkers (tests/e2e/load.h): each shares its
// state with its thread, so one stuck on a dead mount can be abandoned.

// ---- a writer nasfs is killed under -----------------------------------------

struct InflightWrites {
  std::vector<std::pair<std::string, std::string>> done;  // rel -> data, every call succeeded
  std::string failed;                                     // the file being written when a call failed
  int err = 0;
};

// Creates one new 64 KiB file after another in `dir` through the mount until
// a call fails (the mount died under it): whatever nasfs was doing when it
// was killed, this writer was in the middle of it.
class InflightWriter : public OwnedWorker<InflightWrites> {
 public:
  InflightWriter(std::string mnt, std::string dir, uint64_t seed)
      : mnt_(std::move(mnt)), dir_(std::move(dir)), seed_(seed) {}

  void Start() {
    Launch([mnt = mnt_, dir = dir_, seed = seed_](State& st) {
      std::mt19937_64 rng(seed);
      for (int i = 0; !st.stop; ++i) {
        const std::string rel = fmt::format("{}/w{:04d}", dir, i);
        const std::string data = RandomBytes(rng, 64 << 10);
        const int err = PutFile(mnt + "/" + rel, data, O_CREAT | O_EXCL);
        std::lock_guard<std::mutex> lock(st.mu);
        if (err != 0) {
          st.result.failed = rel;
          st.result.err = err;
          break;
        }
        st.result.done.emplace_back(rel, data);
      }
    });
  }
  size_t Done() const {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->result.done.size();
  }

 private:
  const std::string mnt_, dir_;
  const uint64_t seed_;
};

// ---- writes racing the replay -------------------------------------------------

struct RacerWrites {
  std::map<std::string, std::string> files;  // rel -> content: every file it wrote or made
  std::string dir;                           // the directory it made, "" if that failed
  std::set<std::string> unknown;             // paths whose write failed
  std::vector<std::string> failures;
  int writes = 0;
};

// While a returning NAS is being replayed, overwrites and appends to files
// the outage left pending, and creates new ones in a new directory, one
// write every 10 ms: writes that race the replay for the same paths, which
// must reach both NAS and never be undone by an older copy. The fixture
// applies the result to the model once it stopped.
class ReplayRacer : public OwnedWorker<RacerWrites> {
 public:
  // `pause` between writes (0: as fast as nasfs answers); it stops by itself
  // after `run_for` (0: only when told); `create_pct` of its writes create
  // a new file, the rest overwrite (2/3) or append to (1/3) one.
  ReplayRacer(std::string mnt, std::map<std::string, std::string> files, std::string dir, uint64_t seed,
              std::chrono::milliseconds pause, std::chrono::milliseconds run_for, int create_pct = 10)
      : mnt_(std::move(mnt)), dir_(std::move(dir)), seed_(seed), pause_(pause), run_for_(run_for), create_pct_(create_pct) {
    state_->result.files = std::move(files);
  }

  void Start() {
    Launch([mnt = mnt_, dir = dir_, seed = seed_, pause = pause_, run_for = run_for_, create_pct = create_pct_,
            r = state_->result](State& st) mutable {
      const auto until = Clock::now() + run_for;
      // Works on its own copy `r`; published when it stops.
      std::mt19937_64 rng(seed);
      std::vector<std::string> names;
      for (const auto& [rel, data] : r.files) names.push_back(rel);
      if (mkdir((mnt + "/" + dir).c_str(), 0755) == 0) {
        r.dir = dir;
      } else {
        r.failures.push_back(fmt::format("mkdir {}: {}", dir, std::strerror(errno)));
        r.unknown.insert(dir);
      }
      for (int i = 0; !st.stop && (run_for.count() == 0 || Clock::now() < until); ++i) {
        const int kind = static_cast<int>(rng() % 100);
        std::string rel, what, data;
        int err = 0;
        if ((kind < create_pct && !r.dir.empty()) || names.empty()) {
          rel = fmt::format("{}/n{:04d}", dir, i);
          data = RandomBytes(rng, rng() % (16 << 10));
          what = "create " + rel;
          err = PutFile(mnt + "/" + rel, data, O_CREAT | O_EXCL);
          if (err == 0) names.push_back(rel);
        } else if (rel = names[rng() % names.size()]; rng() % 3 != 0) {
          data = RandomBytes(rng, rng() % (64 << 10));
          what = "overwrite " + rel;
          err = PutFile(mnt + "/" + rel, data, O_TRUNC);
        } else {
          const std::string more = RandomBytes(rng, 1 + rng() % 4096);
          what = "append to " + rel;
          err = PutFile(mnt + "/" + rel, more, O_APPEND);
          data = r.files[rel] + more;
        }
        ++r.writes;
        if (err == 0) {
          r.files[rel] = std::move(data);
        } else {
          r.failures.push_back(fmt::format("{}: {}", what, Errstr(err)));
          r.unknown.insert(rel);
          names.erase(std::remove(names.begin(), names.end(), rel), names.end());
        }
        if (pause.count() > 0) std::this_thread::sleep_for(pause);
      }
      std::lock_guard<std::mutex> lock(st.mu);
      st.result = std::move(r);
    });
  }
  // Stops the writer; false if it is stuck for 20 s in one write.
  bool Stop() {
    RequestStop();
    return Join(20s);
  }

 private:
  const std::string mnt_, dir_;
  const uint64_t seed_;
  const std::chrono::milliseconds pause_, run_for_;
  const int create_pct_;
};

// ---- the operations ---------------------------------------------------------

enum class Op {
  kCreate, kOverwrite, kAppend, kTruncate, kDelete, kRename, kChmod, kSymlink,
  // Once each, at fixed points of the plan:
  kPwriteBig,     // a small pwrite into the middle of the 4 MiB file
  kTouchOldDir,   // changes inside the directory about to be renamed
  kRenameDir,     // olddir -> data/b/moved_dir, with its content
  kTouchMovedDir, // a file created in the renamed directory
  kTouchDoomed,   // a change inside the tree about to be removed
  kRemoveTree,    // rm -r doomed
};

// How many of each (the figures at scale 1).
struct Counts {
  int create = 1000, overwrite = 100, append = 50, truncate = 50, remove = 120, rename = 120, chmod = 50,
      symlink = 20;
};

// The operations in a random order, the one-off ones at fixed points.
std::vector<Op> MakePlan(std::mt19937_64& rng, double scale) {
  const Counts c;
  auto n = [scale](int k) { return std::max(1, static_cast<int>(k * scale + 0.5)); };
  std::vector<Op> plan;
  auto add = [&](Op op, int k) { plan.insert(plan.end(), static_cast<size_t>(n(k)), op); };
  add(Op::kCreate, c.create);
  add(Op::kOverwrite, c.overwrite);
  add(Op::kAppend, c.append);
  add(Op::kTruncate, c.truncate);
  add(Op::kDelete, c.remove);
  add(Op::kRename, c.rename);
  add(Op::kChmod, c.chmod);
  add(Op::kSymlink, c.symlink);
  std::shuffle(plan.begin(), plan.end(), rng);
  // Highest position first, so earlier insertions do not move later ones.
  const std::vector<std::pair<double, Op>> fixed = {{0.70, Op::kRemoveTree},   {0.45, Op::kTouchMovedDir},
                                                    {0.40, Op::kRenameDir},    {0.35, Op::kTouchDoomed},
                                                    {0.30, Op::kTouchOldDir},  {0.20, Op::kPwriteBig}};
  const size_t size = plan.size();
  for (const auto& [at, op] : fixed) plan.insert(plan.begin() + static_cast<long>(size * at), op);
  return plan;
}

// ---- the fixture ------------------------------------------------------------

constexpr size_t kBigSize = 4u << 20;
const char* const kBig = "big.bin";

class JournalTest : public WorkspaceTest {
 protected:
  void SetUp() override {
    WorkspaceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    spec_.log_file = ws_.Path("nasfs.log");
  }

  // Undo every fault, then the loads, the mounts, the NAS servers.
  void TearDown() override {
    if (master_) master_->Cont();
    if (backup_) backup_->Cont();
    (void)StopReader();
    if (watch_) watch_->Stop();
    (void)DaemonDied();
    if (HasFailure()) PrintLog();
    if (mount_) {
      const std::string problem = mount_->Unmount();
      EXPECT_EQ(problem, "") << "unmounting nasfs";
      mount_.reset();
    }
    if (!tmpfs_.empty()) {
      if (umount2(tmpfs_.c_str(), MNT_DETACH) != 0) ADD_FAILURE() << "umount " << tmpfs_ << ": " << std::strerror(errno);
      tmpfs_.clear();
    }
    backup_.reset();
    master_.reset();
  }

  void PrintLog() {
    const std::string log = ReadFile(spec_.log_file).value_or("");
    if (log.empty()) return;
    std::printf("---- the last lines of nasfs's log (%s) ----\n%s\n---- end of nasfs's log ----\n",
                spec_.log_file.c_str(), Tail(log, 150).c_str());
    std::fflush(stdout);
  }

  std::string M(const std::string& rel) const { return ws_.mnt() + "/" + rel; }
  FuseNas& Nas(const std::string& role) { return role == "master" ? *master_ : *backup_; }

  // ---- start ----

  void StartNas() {
    master_ = MakeNas(ws_, "master", DefaultNasServer());
    ASSERT_TRUE(master_->ok()) << master_->error();
    backup_ = MakeNas(ws_, "backup", DefaultNasServer());
    ASSERT_TRUE(backup_->ok()) << backup_->error();
  }

  void Mount() {
    const auto t0 = Clock::now();
    mount_ = std::make_unique<MountedNasfs>(ws_, spec_);
    mount_ms_ = MsSince(t0);
    ASSERT_TRUE(mount_->mounted()) << mount_->error() << "\nlog:\n" << Tail(mount_->Log(), 40);
  }

  // Both NAS, the mount, both healthy with reads on the master, the watch.
  void StartMounted() {
    ASSERT_NO_FATAL_FAILURE(StartNas());
    ASSERT_NO_FATAL_FAILURE(Mount());
    json s;
    ASSERT_TRUE(WaitForStatus(
        [](const json& j) {
          return StateOf(j, "master") == "healthy" && StateOf(j, "backup") == "healthy" && ReadFrom(j) == "master";
        },
        10s, &s))
        << "both NAS not healthy 10 s after mounting: " << s.dump(2);
    watch_ = std::make_unique<StatusWatch>(ws_.mnt());
    watch_->Start();
  }

  // "" while nasfs runs, else how it died (reported once as a failure).
  std::string DaemonDied() {
    if (!mount_) return "";
    const std::string ended = mount_->DaemonEnded();
    if (!ended.empty() && !died_reported_) {
      died_reported_ = true;
      ADD_FAILURE() << "nasfs (pid " << mount_->daemon_pid() << ") died: " << ended;
    }
    return ended;
  }

  // Polls status until pred holds, `within` passes or nasfs dies.
  bool WaitForStatus(const std::function<bool(const json&)>& pred, std::chrono::milliseconds within, json* last) {
    const auto deadline = Clock::now() + within;
    for (;;) {
      if (!DaemonDied().empty()) {
        *last = json{{"nasfs_died", mount_->DaemonEnded()}};
        return false;
      }
      auto s = Status(ws_.mnt(), Within(2s));
      *last = s.ok() ? s.json : json{{"nasfsctl_error", s.error}};
      if (s.ok() && pred(s.json)) return true;
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(50ms);
    }
  }
  json StatusNow() {
    auto s = Status(ws_.mnt(), Within(2s));
    return s.ok() ? s.json : json{{"nasfsctl_error", s.error}};
  }

  // ---- the baseline ----

  // Must succeed (the baseline, with both NAS healthy).
  void Must(const std::string& what, int err) { ASSERT_EQ(err, 0) << what << ": " << Errstr(err); }
  void MkdirB(const std::string& rel) {
    ASSERT_NO_FATAL_FAILURE(Must("mkdir " + rel, Errno(mkdir(M(rel).c_str(), 0755))));
    model_.Dir(rel);
  }
  void FileB(const std::string& rel, std::string data, bool stable = false) {
    ASSERT_NO_FATAL_FAILURE(Must("create " + rel, PutFile(M(rel), data, O_CREAT | O_TRUNC)));
    if (stable) {
      stable_files_[rel] = data;
      const auto slash = rel.rfind('/');
      stable_dirs_[rel.substr(0, slash)].insert(rel.substr(slash + 1));
    }
    model_.File(rel, std::move(data), 0644);
  }
  void LinkB(const std::string& rel, const std::string& target, bool stable = false) {
    ASSERT_NO_FATAL_FAILURE(Must("symlink " + rel, Errno(symlink(target.c_str(), M(rel).c_str()))));
    model_.Link(rel, target);
    if (stable) stable_links_[rel] = target;
  }

  size_t SmallSize() {
    const int r = static_cast<int>(rng_() % 100);
    if (r < 40) return rng_() % 513;                 // some empty
    if (r < 80) return 512 + rng_() % (8 << 10);
    if (r < 97) return (8 << 10) + rng_() % (56 << 10);
    return (64 << 10) + rng_() % (192 << 10);        // up to 256 KiB
  }

  // 300 files: 60 the reader fetches (static/, never changed), 210 the
  // operations work on (data/), 15 in the directory to be renamed, 15 in
  // the tree to be removed; symlinks; the 4 MiB file.
  void WriteBaseline() {
    const auto t0 = Clock::now();
    for (const char* d : {"static", "static/img", "data", "data/a", "data/a/sub", "data/b", "data/c", "olddir",
                          "olddir/sub", "doomed", "doomed/sub"}) {
      ASSERT_NO_FATAL_FAILURE(MkdirB(d));
    }
    for (int i = 0; i < 60; ++i) {
      const std::string rel = i % 3 == 2 ? fmt::format("static/img/p{:02d}.png", i) : fmt::format("static/s{:02d}.html", i);
      ASSERT_NO_FATAL_FAILURE(FileB(rel, RandomBytes(rng_, 100 + rng_() % 8000), /*stable=*/true));
    }
    for (int i = 0; i < 4; ++i) {
      ASSERT_NO_FATAL_FAILURE(LinkB(fmt::format("static/link{}", i), fmt::format("s{:02d}.html", i * 3), true));
      stable_dirs_["static"].insert(fmt::format("link{}", i));
    }
    const std::vector<std::string> data_dirs = {"data/a", "data/a/sub", "data/b", "data/c"};
    for (int i = 0; i < 210; ++i) {
      const std::string rel = fmt::format("{}/f{:03d}.dat", data_dirs[i % data_dirs.size()], i);
      ASSERT_NO_FATAL_FAILURE(FileB(rel, RandomBytes(rng_, SmallSize())));
      files_.push_back(rel);
    }
    for (int i = 0; i < 15; ++i) {
      const std::string sub = i < 10 ? "" : "sub/";
      ASSERT_NO_FATAL_FAILURE(FileB(fmt::format("olddir/{}o{}.txt", sub, i), RandomBytes(rng_, 50 + rng_() % 3000)));
      ASSERT_NO_FATAL_FAILURE(FileB(fmt::format("doomed/{}d{}.txt", sub, i), RandomBytes(rng_, 50 + rng_() % 3000)));
    }
    ASSERT_NO_FATAL_FAILURE(LinkB("olddir/sub/up", "../o1.txt"));
    ASSERT_NO_FATAL_FAILURE(LinkB("doomed/sub/up", "../d1.txt"));
    ASSERT_NO_FATAL_FAILURE(LinkB("data/a/to_b", "../b"));
    ASSERT_NO_FATAL_FAILURE(FileB(kBig, RandomBytes(rng_, kBigSize)));
    dirs_ = data_dirs;
    baseline_s_ = SecondsSince(t0);
    EXPECT_NO_TREE_DIFFS(CompareTrees(master_->store(), backup_->store()));
    EXPECT_NO_TREE_DIFFS(model_.Compare(SnapshotTree(master_->store()), "master (baseline)"));
  }

  // ---- nasfs killed under a writer ----

  // After nasfs was killed: detaches its dead mount (ENOTCONN) so nasfs can
  // be mounted there again.
  void ForgetDeadMount() {
    const auto lazy = RunCommand({"fusermount3", "-uz", ws_.mnt()}, Within(10s));
    if (!lazy.ok()) {
      const auto l = RunCommand({"umount", "-l", ws_.mnt()}, Within(10s));
      ASSERT_TRUE(l.ok()) << lazy.Describe() << "; " << l.Describe();
    }
    EXPECT_EQ(mount_->Unmount(), "");
    mount_.reset();
  }

  // Starts an InflightWriter in "inflight" (which must exist), waits for it
  // to make `min_files` files, SIGKILLs nasfs (`pid`), and sets *w to what
  // the writer did, applied to the model (the file it was writing unknown).
  void KillUnderWriter(pid_t pid, size_t min_files, InflightWrites* w) {
    InflightWriter writer(ws_.mnt(), "inflight", rng_());
    writer.Start();
    EXPECT_TRUE(WaitFor([&] { return writer.Done() >= min_files; }, 10s))
        << "the writer made " << writer.Done() << " files in 10 s";
    died_reported_ = true;  // this death is ours
    ASSERT_EQ(kill(pid, SIGKILL), 0) << std::strerror(errno);
    ASSERT_TRUE(WaitFor([&] { return ProcessGone(pid); }, 5s)) << "nasfs pid " << pid << " still there after SIGKILL";
    writer.RequestStop();
    ASSERT_TRUE(writer.Join(10s)) << "the writer is stuck 10 s after nasfs was killed";
    *w = writer.result();
    for (const auto& [rel, data] : w->done) model_.File(rel, data, 0644);
    if (!w->failed.empty()) model_.Unknown(w->failed);
  }

  // ---- the reader ----

  void StartReader() {
    // Reads files nobody changes, a request every 5 ms or so.
    reader_ = std::make_unique<ReaderLoad>(ws_.mnt(), stable_files_, stable_links_, stable_dirs_, seed_ ^ rng_(),
                                           ReaderPace::PauseAfterEach(5ms));
    reader_->Start();
  }
  LoadStats StopReader() {
    if (!reader_) return reads_;
    const LoadStats r = reader_->Stop(mount_ ? mount_->daemon_pid() : -1);
    reader_.reset();
    reads_.ops += r.ops;
    reads_.failures += r.failures;
    reads_.max_ms = std::max(reads_.max_ms, r.max_ms);
    for (const auto& l : r.failure_lines) {
      if (reads_.failure_lines.size() < 10) reads_.failure_lines.push_back(l);
    }
    return reads_;
  }

  // ---- outages ----

  // Kills the NAS's server (its mount answers ENOTCONN) and waits until
  // status shows it out (for the master: reads on the backup).
  void TakeDown(const std::string& role) {
    outage_at_ = Clock::now();
    Nas(role).Kill();
    json s;
    const bool out = WaitForStatus(
        [&](const json& j) {
          return StateOf(j, role) == "down" && ReadFrom(j) == (role == "master" ? "backup" : "master");
        },
        kDetectWithin, &s);
    ASSERT_TRUE(out) << "the dead " << role << " is not shown down within " << kDetectWithin.count()
                     << " ms: " << s.dump(2);
    sync_at_outage_ = Get(s, "/sync");
  }

  // While `role` is out: status counts what it lacks.
  void ExpectPending(const std::string& role, const std::string& when) {
    const std::string other = role == "master" ? "backup" : "master";
    STATUS_EXPECT(x, StatusNow(), when);
    const json j = Get(x.s(), "/journal");
    x.State(role, "down");
    x.Is("/read_from", other);
    x.Positive("/journal/pending");
    x.Positive("/journal/pending_" + role);
    x.Is("/journal/pending_" + other, 0);
    x.Positive("/journal/bytes", " (data writes are pending)");
    x.True(Get(j, "/oldest").is_string(), "journal.oldest is " + Get(j, "/oldest").dump() + ", expected a time");
    x.Is("/journal/state", "ok");
    pending_peak_ = std::max(pending_peak_, Num(Get(j, "/pending")));
    std::printf("%s: journal %s\n", when.c_str(), j.dump().c_str());
  }

  // Remounts the NAS's server and waits (at most 30 s, the bound)
  // for reads on the master, both NAS healthy and nothing pending.
  void BringBack(const std::string& role, const std::function<void()>& once_remounted = {}) {
    const auto back = Clock::now();
    ASSERT_EQ(Nas(role).Remount(), "") << role << " server";
    if (once_remounted) once_remounted();
    json s;
    const bool ok = WaitForStatus(
        [](const json& j) {
          return ReadFrom(j) == "master" && Num(Get(j, "/journal/pending")) == 0 &&
                 StateOf(j, "master") == "healthy" && StateOf(j, "backup") == "healthy";
        },
        kSwitchBackWithin, &s);
    switch_back_s_ = ok ? SecondsSince(back) : -1;
    std::printf("switch-back: %s %.2f s after the %s's server was mounted again\n",
                ok ? "done" : "NOT done", SecondsSince(back), role.c_str());
    EXPECT_TRUE(ok) << "30 s after the " << role
                    << " returned, status does not show reads on the master, both healthy, nothing pending: "
                    << s.dump(2);
    // Reads never went back to the master while it lacked something.
    std::vector<std::string> early;
    for (const auto& x : watch_->Since(outage_at_)) {
      if (ReadFrom(x.s) == "master" &&
          (Num(Get(x.s, "/journal/pending_master")) > 0 || StateOf(x.s, "master") != "healthy")) {
        early.push_back(fmt::format("t={:.2f} s after the outage began: read_from master, the master {}, "
                                    "journal.pending_master {}",
                                    std::chrono::duration<double>(x.at - outage_at_).count(), StateOf(x.s, "master"),
                                    Get(x.s, "/journal/pending_master").dump()));
      }
    }
    EXPECT_TRUE(early.empty()) << "reads went to the master before it had every write:" << FirstLines(early);
    // How the return went, as status showed it: one line per change of state.
    std::string timeline, last_key;
    for (const auto& x : watch_->Since(back)) {
      const json r = Get(x.s, "/journal/replay");
      const std::string key = fmt::format("master={} backup={} read_from={} replay={}", StateOf(x.s, "master"),
                                          StateOf(x.s, "backup"), ReadFrom(x.s), Str(Get(r, "/state")));
      if (key == last_key) continue;
      last_key = key;
      timeline += fmt::format("\n  t={:.2f}s {} done/total={}/{} pending={}",
                              std::chrono::duration<double>(x.at - back).count(), key, Get(r, "/done").dump(),
                              Get(r, "/total").dump(), Get(x.s, "/journal/pending").dump());
    }
    timeline += fmt::format("\n  t={:.2f}s master={} backup={} read_from={} replay={} pending={} (the wait's last answer)",
                            SecondsSince(back), StateOf(s, "master"), StateOf(s, "backup"), ReadFrom(s),
                            Str(Get(s, "/journal/replay/state")), Get(s, "/journal/pending").dump());
    std::printf("the %s's return, as status showed it:%s\n", role.c_str(), timeline.c_str());
    replay_s_ = Get(s, "/journal/replay/seconds").is_number() ? Get(s, "/journal/replay/seconds").get<double>() : -1;
    // The replay's progress, as status showed it meanwhile.
    for (const auto& x : watch_->Since(back)) {
      const json r = Get(x.s, "/journal/replay");
      if (Get(r, "/state") == "running") {
        replay_total_ = std::max(replay_total_, Num(Get(r, "/total")));
        const json rate = Get(r, "/rate_per_s");
        if (rate.is_number()) replay_rate_ = std::max(replay_rate_, rate.get<double>());
      }
    }
  }

  // No whole-tree copy started since `since` (the cost of a return grows
  // with what changed, not with the tree): the sync object status shows is
  // the one it showed at `baseline`, or none.
  void ExpectNoWholeTreeCopy(Clock::time_point since, const json& baseline, const std::string& when) {
    std::set<std::string> seen;
    for (const auto& x : watch_->Since(since)) {
      const json sync = Get(x.s, "/sync");
      const bool same = Get(sync, "/started") == Get(baseline, "/started") && Get(sync, "/target") == Get(baseline, "/target");
      if (Get(sync, "/state") == "running" || (!same && Get(sync, "/state") != "none" && !sync.is_null())) {
        seen.insert(fmt::format("state={} target={} started={}", Str(Get(sync, "/state")), Str(Get(sync, "/target")),
                                Str(Get(sync, "/started"))));
      }
    }
    EXPECT_TRUE(seen.empty()) << when << ": a whole-tree copy ran (status \"sync\" was at the start "
                              << baseline.dump() << "):" << FirstLines({seen.begin(), seen.end()});
  }

  // ---- running the operations ----

  // One mutation through the mount. `apply` updates the model when it
  // succeeded; when it failed, `paths` become unknown to the model. During
  // an outage every operation must succeed (the other NAS takes it) unless
  // `may_fail`.
  int Do(const std::string& what, const std::vector<std::string>& paths, const std::function<int()>& op,
         const std::function<void()>& apply, bool may_fail = false) {
    const auto t0 = Clock::now();
    t_failed_call = "";
    const int err = op();
    max_op_ms_ = std::max(max_op_ms_, MsSince(t0));
    ++ops_done_;
    last_err_ = err;
    last_what_ = *t_failed_call != '\0' ? fmt::format("{} (at {})", what, t_failed_call) : what;
    if (err == 0) {
      apply();
      return 0;
    }
    for (const auto& p : paths) model_.Unknown(p);
    failed_ops_.push_back(fmt::format("{}: {}", last_what_, Errstr(err)));
    if (!may_fail && !failures_allowed_) {
      ++op_failures_;
      if (op_failure_lines_.size() < 20) op_failure_lines_.push_back(last_what_ + ": " + Errstr(err));
    }
    return err;
  }

  std::string PickFile() {
    return files_.empty() ? std::string() : files_[rng_() % files_.size()];
  }
  void DropFile(const std::string& rel) {
    auto it = std::find(files_.begin(), files_.end(), rel);
    if (it != files_.end()) {
      *it = files_.back();
      files_.pop_back();
    }
  }
  std::string PickDir() {
    // A third of the time one of ten new directories, made on first use.
    if (rng_() % 3 == 0) {
      const std::string dir = fmt::format("new/n{}", rng_() % 10);
      if (!model_.Has("new")) {
        Do("mkdir new", {"new"}, [&] { return Errno(mkdir(M("new").c_str(), 0755)); }, [&] { model_.Dir("new"); });
      }
      if (!model_.Has(dir)) {
        Do("mkdir " + dir, {dir}, [&] { return Errno(mkdir(M(dir).c_str(), 0755)); }, [&] {
          model_.Dir(dir);
          dirs_.push_back(dir);
        });
      }
      if (model_.Has(dir)) return dir;
    }
    return dirs_[rng_() % dirs_.size()];
  }
  mode_t PickMode() {
    static const mode_t kModes[] = {0600, 0640, 0444, 0755, 0700, 0664, 0400, 0750};
    return kModes[rng_() % (sizeof kModes / sizeof kModes[0])];
  }

  void Create(const std::string& dir, size_t size, bool may_fail = false) {
    const std::string rel = fmt::format("{}/c{:04d}.bin", dir, counter_++);
    const int r = static_cast<int>(rng_() % 20);
    const mode_t mode = r < 14 ? 0644 : r < 17 ? 0600 : r < 19 ? 0755 : 0640;
    std::string data = RandomBytes(rng_, size);
    Do("create " + rel, {rel}, [&] { return PutFile(M(rel), data, O_CREAT | O_EXCL, mode); }, [&] {
      model_.File(rel, data, mode & ~022);
      files_.push_back(rel);
    }, may_fail);
  }

  void RunOne(Op op, bool may_fail = false) {
    std::string rel = PickFile();
    const bool have_file = !rel.empty();
    switch (op) {
      case Op::kCreate: Create(PickDir(), SmallSize(), may_fail); return;
      case Op::kOverwrite: {
        if (!have_file) return Create(PickDir(), SmallSize(), may_fail);
        std::string data = RandomBytes(rng_, SmallSize());
        Do("overwrite " + rel, {rel}, [&] { return PutFile(M(rel), data, O_TRUNC); },
           [&] { model_.At(rel).data = data; }, may_fail);
        return;
      }
      case Op::kAppend: {
        if (!have_file) return Create(PickDir(), SmallSize(), may_fail);
        std::string data = RandomBytes(rng_, 1 + rng_() % 8192);
        Do("append to " + rel, {rel}, [&] { return PutFile(M(rel), data, O_APPEND); },
           [&] { model_.At(rel).data += data; }, may_fail);
        return;
      }
      case Op::kTruncate: {
        if (!have_file) return Create(PickDir(), SmallSize(), may_fail);
        const size_t old = model_.At(rel).data.size();
        // Mostly shorter (to 0 now and then), sometimes longer (zeros).
        const int r = static_cast<int>(rng_() % 10);
        const size_t size = r == 0 ? 0 : r < 8 ? (old == 0 ? 0 : rng_() % old) : old + 1 + rng_() % 8192;
        Do(fmt::format("truncate {} {} -> {}", rel, old, size), {rel},
           [&] { return Errno(truncate(M(rel).c_str(), static_cast<off_t>(size))); },
           [&] { model_.At(rel).data.resize(size, '\0'); }, may_fail);
        return;
      }
      case Op::kDelete: {
        if (!have_file) return;
        Do("unlink " + rel, {rel}, [&] { return Errno(unlink(M(rel).c_str())); }, [&] {
          model_.Remove(rel);
          DropFile(rel);
        }, may_fail);
        return;
      }
      case Op::kRename: {
        if (!have_file) return;
        std::string to;
        const int r = static_cast<int>(rng_() % 10);
        if (r == 0 && files_.size() > 1) {
          to = PickFile();  // over an existing file
          if (to == rel) to.clear();
        }
        if (to.empty()) {
          const std::string dir = r < 5 ? PickDir() : rel.substr(0, rel.rfind('/'));  // half across directories
          to = fmt::format("{}/r{:04d}.bin", dir, counter_++);
        }
        Do("rename " + rel + " -> " + to, {rel, to}, [&] { return Errno(rename(M(rel).c_str(), M(to).c_str())); }, [&] {
          model_.Rename(rel, to);
          DropFile(to);
          DropFile(rel);
          files_.push_back(to);
        }, may_fail);
        return;
      }
      case Op::kChmod: {
        if (!have_file) return;
        const mode_t mode = PickMode();
        Do(fmt::format("chmod {:04o} {}", mode, rel), {rel}, [&] { return Errno(chmod(M(rel).c_str(), mode)); },
           [&] { model_.At(rel).perm = mode; }, may_fail);
        return;
      }
      case Op::kSymlink: {
        const std::string dir = have_file ? rel.substr(0, rel.rfind('/')) : PickDir();
        const std::string link = fmt::format("{}/l{:04d}", dir, counter_++);
        const int r = static_cast<int>(rng_() % 4);
        const std::string target = r == 0 && have_file ? rel.substr(rel.rfind('/') + 1)   // a file beside it
                                   : r == 1            ? fmt::format("../nowhere/{}", counter_)  // dangling
                                   : r == 2            ? "/etc/hostname"                     // absolute, outside
                                                       : "../../static/s00.html";
        Do("symlink " + link + " -> " + target, {link}, [&] { return Errno(symlink(target.c_str(), M(link).c_str())); },
           [&] { model_.Link(link, target); }, may_fail);
        return;
      }
      case Op::kPwriteBig: {
        std::string data = RandomBytes(rng_, 4096);
        const off_t off = (2 << 20) + 4321;
        Do(fmt::format("pwrite {} bytes at {} into {}", data.size(), off, kBig), {kBig},
           [&] { return PwriteAt(M(kBig), data, off); },
           [&] { model_.At(kBig).data.replace(static_cast<size_t>(off), data.size(), data); }, may_fail);
        return;
      }
      case Op::kTouchOldDir: {
        std::string data = RandomBytes(rng_, 2000);
        Do("overwrite olddir/o0.txt", {"olddir/o0.txt"}, [&] { return PutFile(M("olddir/o0.txt"), data, O_TRUNC); },
           [&] { model_.At("olddir/o0.txt").data = data; }, may_fail);
        Do("create olddir/sub/during.txt", {"olddir/sub/during.txt"},
           [&] { return PutFile(M("olddir/sub/during.txt"), "made during the outage\n", O_CREAT | O_EXCL); },
           [&] { model_.File("olddir/sub/during.txt", "made during the outage\n", 0644); }, may_fail);
        Do("chmod 0700 olddir/sub", {"olddir/sub"}, [&] { return Errno(chmod(M("olddir/sub").c_str(), 0700)); },
           [&] { model_.At("olddir/sub").perm = 0700; }, may_fail);
        return;
      }
      case Op::kRenameDir:
        Do("rename olddir -> data/b/moved_dir", {"olddir", "data/b/moved_dir"},
           [&] { return Errno(rename(M("olddir").c_str(), M("data/b/moved_dir").c_str())); },
           [&] { model_.Rename("olddir", "data/b/moved_dir"); }, may_fail);
        return;
      case Op::kTouchMovedDir:
        Do("create data/b/moved_dir/sub/after.txt", {"data/b/moved_dir/sub/after.txt"},
           [&] { return PutFile(M("data/b/moved_dir/sub/after.txt"), "after the rename\n", O_CREAT | O_EXCL); },
           [&] { model_.File("data/b/moved_dir/sub/after.txt", "after the rename\n", 0644); }, may_fail);
        return;
      case Op::kTouchDoomed: {
        std::string data = RandomBytes(rng_, 1500);
        Do("create doomed/sub/during.txt", {"doomed/sub/during.txt"},
           [&] { return PutFile(M("doomed/sub/during.txt"), data, O_CREAT | O_EXCL); },
           [&] { model_.File("doomed/sub/during.txt", data, 0644); }, may_fail);
        return;
      }
      case Op::kRemoveTree:
        Do("rm -r doomed", {"doomed"}, [&] {
          std::error_code ec;
          fsys::remove_all(M("doomed"), ec);
          return ec.value();
        }, [&] { model_.Remove("doomed"); }, may_fail);
        return;
    }
  }

  // Runs plan_[next_op_, end).
  void RunPlan(size_t end) {
    const auto t0 = Clock::now();
    for (; next_op_ < end && next_op_ < plan_.size() && DaemonDied().empty(); ++next_op_) RunOne(plan_[next_op_]);
    ops_s_ += SecondsSince(t0);
  }

  void ExpectOpsSucceeded(const std::string& when) {
    EXPECT_EQ(op_failures_, 0) << when << ": operations failed through the mount:" << FirstLines(op_failure_lines_);
  }

  // ---- the end of a scenario ----

  // Both NAS identical and equal to the model; reads served by the master.
  void CheckFinal(const std::string& when) {
    {
      STATUS_EXPECT(x, StatusNow(), when);
      x.Is("/read_from", "master");
      x.State("master", "healthy");
      x.State("backup", "healthy");
      x.Is("/journal/pending", 0);
      x.Is("/journal/pending_master", 0);
      x.Is("/journal/pending_backup", 0);
      x.Is("/journal/state", "ok");
      x.Is("/journal/replay/state", "idle");
    }
    // The stores beneath the NAS servers: identical, and what the model says.
    EXPECT_NO_TREE_DIFFS(CompareTrees(master_->store(), backup_->store()));
    for (const FuseNas* nas : {master_.get(), backup_.get()}) {
      const auto diffs = model_.Compare(SnapshotTree(nas->store()), nas == master_.get() ? "master" : "backup");
      EXPECT_TRUE(diffs.empty()) << when << ": " << (nas == master_.get() ? "master" : "backup") << " store "
                                 << nas->store() << " differs from the expected tree (" << diffs.size()
                                 << " differences):" << FirstLines(diffs);
    }
    // Through the mount, from the master: the names and types, and every
    // file's content read with O_DIRECT (so nasfs serves it, not the cache).
    const json before = StatusNow();
    const auto mnt_diffs = model_.Compare(SnapshotTree(ws_.mnt(), /*skip_nasfs=*/false), "mount");
    EXPECT_TRUE(mnt_diffs.empty()) << when << ": the mount differs from the expected tree:" << FirstLines(mnt_diffs);
    std::vector<std::string> bad;
    int reads = 0;
    for (const auto& [rel, x] : model_.entries()) {
      if (x.type != TreeEntry::Type::kFile || model_.IsUnknown(rel)) continue;
      if (!x.data.empty()) ++reads;  // an empty file may cost no READ
      const auto got = ReadDirect(M(rel));
      if (!got) {
        bad.push_back(fmt::format("{}: {}", rel, std::strerror(errno)));
      } else if (*got != x.data) {
        bad.push_back(fmt::format("{}: {} bytes read, other than the {} expected", rel, got->size(), x.data.size()));
      }
    }
    EXPECT_TRUE(bad.empty()) << when << ": reads through the mount:" << FirstLines(bad);
    const json after = StatusNow();
    const int64_t master_ops = Num(Get(BackendOf(after, "master"), "/ops")) - Num(Get(BackendOf(before, "master"), "/ops"));
    const int64_t backup_ops = Num(Get(BackendOf(after, "backup"), "/ops")) - Num(Get(BackendOf(before, "backup"), "/ops"));
    EXPECT_EQ(ReadFrom(after), "master") << after.dump(2);
    EXPECT_GE(master_ops, reads) << "reading " << reads << " files through the mount cost the master " << master_ops
                                 << " operations and the backup " << backup_ops;
    EXPECT_LT(backup_ops * 4, master_ops) << "reading " << reads << " files through the mount cost the master "
                                          << master_ops << " operations and the backup " << backup_ops;
    std::printf("%s: %d files read back through the mount: master ops +%lld, backup ops +%lld\n", when.c_str(), reads,
                static_cast<long long>(master_ops), static_cast<long long>(backup_ops));
  }

  void ExpectNoFailedRead() {
    const LoadStats r = StopReader();
    EXPECT_GT(r.ops, 0);
    EXPECT_EQ(r.failures, 0) << "reads of unchanged files failed:" << FirstLines(r.failure_lines);
  }

  void Report(const std::string& scenario, const std::string& extra = "") {
    const LoadStats r = reads_;
    const std::string line = fmt::format(
        "[journal figures] {}: baseline_s={:.1f} ops={} ops_s={:.1f} max_op_ms={:.0f} failed_ops={} reads={} "
        "failed_reads={} max_read_ms={:.0f} pending_peak={} switch_back_s={:.2f} replay_s={:.2f} replay_total={} "
        "replay_rate_per_s={:.0f} unknown_paths={}{}",
        scenario, baseline_s_, ops_done_, ops_s_, max_op_ms_, op_failures_, r.ops, r.failures, r.max_ms,
        pending_peak_, switch_back_s_, replay_s_, replay_total_, replay_rate_, model_.unknown_count(), extra);
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    RecordProperty("switch_back_s", fmt::format("{:.2f}", switch_back_s_));
    RecordProperty("figures", line);
  }

  // Brings `role` back while `writers` threads write, each to its own
  // `files_each` files the outage left pending and to new files in its own
  // new directory, `pause` between writes, for `run_for` after the NAS's
  // server is back (0: until half a second after the switch-back); then
  // applies what they wrote to the model.
  void BringBackUnderWrites(const std::string& role, int writers, size_t files_each, std::chrono::milliseconds pause,
                            std::chrono::milliseconds run_for, int create_pct = 10) {
    std::vector<std::unique_ptr<ReplayRacer>> racers;
    std::set<std::string> taken;
    for (int w = 0; w < writers; ++w) {
      std::map<std::string, std::string> raced;
      for (int tries = 0; raced.size() < files_each && tries < 10000; ++tries) {
        const std::string rel = PickFile();
        if (!rel.empty() && taken.insert(rel).second) raced[rel] = model_.At(rel).data;
      }
      racers.push_back(
          std::make_unique<ReplayRacer>(ws_.mnt(), raced, fmt::format("racer{}", w), rng_(), pause, run_for, create_pct));
    }
    ASSERT_NO_FATAL_FAILURE(BringBack(role, [&] {
      for (auto& r : racers) r->Start();
    }));
    std::this_thread::sleep_for(500ms);  // a few more, with reads on the master again
    for (auto& racer : racers) {
      ASSERT_TRUE(racer->Stop()) << "a write racing the replay is stuck for 20 s";
      const ReplayRacer::Result r = racer->result();
      if (!r.dir.empty()) model_.Dir(r.dir);
      for (const auto& [rel, data] : r.files) {
        if (!model_.Has(rel)) {
          model_.File(rel, data, 0644);
        } else {
          model_.At(rel).data = data;
        }
      }
      for (const auto& rel : r.unknown) model_.Unknown(rel);
      EXPECT_TRUE(r.failures.empty()) << "writes racing the replay failed:" << FirstLines(r.failures);
      racer_writes_ += r.writes;
    }
    std::printf("writes racing the replay: %d\n", racer_writes_);
  }

  // The scenario of (a) and (c): `role` out during every operation.
  void OutageScenario(const std::string& role) {
    ASSERT_NO_FATAL_FAILURE(StartMounted());
    ASSERT_NO_FATAL_FAILURE(WriteBaseline());
    StartReader();
    std::this_thread::sleep_for(300ms);
    ASSERT_NO_FATAL_FAILURE(TakeDown(role));
    const auto outage = outage_at_;
    plan_ = MakePlan(rng_, 1.0);
    RunPlan(plan_.size());
    ExpectOpsSucceeded("during the " + role + " outage");
    ExpectPending(role, "after the operations, " + role + " still out");
    ASSERT_NO_FATAL_FAILURE(BringBackUnderWrites(role, 1, 40, 10ms, 0ms));
    ExpectNoFailedRead();
    if (role == "backup") {
      for (const auto& x : watch_->Since(outage)) {
        EXPECT_EQ(ReadFrom(x.s), "master") << "during the backup outage, status said: " << x.s.dump(2);
        if (ReadFrom(x.s) != "master") break;
      }
    }
    ExpectNoWholeTreeCopy(outage, sync_at_outage_, "after the " + role + " outage");
    CheckFinal("after the " + role + " returned");
  }

  MountSpec spec_;
  // Declared before the mount: destroyed after it (TearDown orders it anyway).
  std::unique_ptr<FuseNas> master_, backup_;
  std::string tmpfs_;  // a tmpfs mounted by the test, "" if none
  std::unique_ptr<MountedNasfs> mount_;
  std::unique_ptr<StatusWatch> watch_;
  std::unique_ptr<ReaderLoad> reader_;

  Model model_;
  std::map<std::string, std::string> stable_files_, stable_links_;  // the reader's
  std::map<std::string, std::set<std::string>> stable_dirs_;
  std::vector<std::string> files_;  // regular files the operations may change
  std::vector<std::string> dirs_;   // directories they may create in
  std::vector<Op> plan_;
  size_t next_op_ = 0;
  int counter_ = 0;

  Clock::time_point outage_at_;
  json sync_at_outage_;
  LoadStats reads_;
  int ops_done_ = 0, op_failures_ = 0;
  std::vector<std::string> failed_ops_;  // every Do() that failed, with its errno
  int racer_writes_ = 0;
  bool died_reported_ = false;
  int last_err_ = 0;           // of the last Do()
  std::string last_what_;      // of the last Do()
  bool failures_allowed_ = false;  // Do() failures are the test's business, not failures
  std::vector<std::string> op_failure_lines_;
  double baseline_s_ = 0, ops_s_ = 0, max_op_ms_ = 0, mount_ms_ = 0, switch_back_s_ = -1, replay_s_ = -1, replay_rate_ = 0;
  int64_t pending_peak_ = 0, replay_total_ = 0;
};

// ---- the scenarios ----------------------------------------------------------

// (a) The master dies; the operations go to the backup and the journal; the
// master's mount comes back and gets them before reads return to it.
TEST_F(JournalTest, AMasterOutageIsReplayedOntoTheMasterBeforeReadsReturnToIt) {
  OutageScenario("master");
  Report("master-outage", fmt::format(" writes_racing_replay={}", racer_writes_));
}

// (b) The same, with nasfs SIGKILLed halfway through the operations and
// mounted again (same journal, socket and NAS) while the master is still
// dead: the journal carries what the master lacks, so the master gets a
// replay of those paths, not a whole-tree copy.
TEST_F(JournalTest, NasfsKilledDuringAMasterOutageFindsItsJournalAndReplaysIt) {
  ASSERT_NO_FATAL_FAILURE(StartMounted());
  ASSERT_NO_FATAL_FAILURE(WriteBaseline());
  StartReader();
  std::this_thread::sleep_for(300ms);
  ASSERT_NO_FATAL_FAILURE(TakeDown("master"));
  plan_ = MakePlan(rng_, 1.0);
  RunPlan(plan_.size() / 2);
  ExpectOpsSucceeded("the first half of the master outage");
  ExpectPending("master", "halfway, before the crash");

  // The crash, in the middle of a write: a writer creates 64 KiB files one
  // after another; once it has made a few, SIGKILL. Its file in flight may
  // be anywhere between absent and complete, but the same on both NAS in the
  // end (the journal records a change before the backup gets it).
  (void)StopReader();
  const json before = StatusNow();
  const pid_t pid = static_cast<pid_t>(Num(Get(before, "/pid")));
  ASSERT_GT(pid, 0) << "no pid in status: " << before.dump(2);
  EXPECT_EQ(pid, mount_->daemon_pid());
  const int64_t pending_before = Num(Get(before, "/journal/pending"));
  Do("mkdir inflight", {"inflight"}, [&] { return Errno(mkdir(M("inflight").c_str(), 0755)); },
     [&] { model_.Dir("inflight"); });
  InflightWrites w;
  ASSERT_NO_FATAL_FAILURE(KillUnderWriter(pid, 5, &w));
  {
    std::printf("crash: the writer made %zu files; %s failed with %s\n", w.done.size(),
                w.failed.empty() ? "(none)" : w.failed.c_str(), Errstr(w.err).c_str());
  }
  ASSERT_NO_FATAL_FAILURE(ForgetDeadMount());

  // Mounted again while the master is still dead.
  const auto restart = Clock::now();
  ASSERT_NO_FATAL_FAILURE(Mount());
  died_reported_ = false;
  const json s = StatusNow();
  {
    STATUS_EXPECT(x, s, "right after the restart");
    x.Is("/read_from", "backup");
    x.State("master", "down");
    x.Positive("/journal/pending",
               fmt::format(": the journal did not carry the pending set across the crash ({} before)", pending_before));
    x.Positive("/journal/pending_master");
    x.Is("/journal/state", "ok");
    x.True(Get(BackendOf(s, "master"), "/missed/full_copy_needed") == false,
           "the restarted nasfs wants a whole-tree copy for the master (missed.full_copy_needed " +
               Get(BackendOf(s, "master"), "/missed/full_copy_needed").dump() + "), though its journal knows what it lacks");
    x.Is("/sync/state", "none");
  }
  const json sync_at_restart = Get(s, "/sync");
  std::printf("restart: mounted in %.0f ms; status journal %s\n", mount_ms_, Get(s, "/journal").dump().c_str());
  StartReader();
  RunPlan(plan_.size());
  ExpectOpsSucceeded("the master outage");
  ExpectPending("master", "after the operations, master still out");
  ASSERT_NO_FATAL_FAILURE(BringBack("master"));
  ExpectNoFailedRead();
  ExpectNoWholeTreeCopy(restart, sync_at_restart, "after the restart");
  CheckFinal("after the master returned");
  Report("master-outage-nasfs-killed", fmt::format(" pending_at_crash={} restart_mount_ms={:.0f}", pending_before,
                                                   mount_ms_));
}

// Issue 10: the master out, writes acknowledged, nasfs unmounted, the
// journal directory lost (a replaced disk), the master back, nasfs mounted
// again: reads went to the master, which lacked the writes, status said
// nothing, and nasfs deleted its pending log on the backup that still
// listed them. That log is exactly the record that saves this case: the new
// journal adopts it, the master is kept out of reads and replayed, and
// nothing acknowledged is lost.
TEST_F(JournalTest, AJournalLostDuringAMasterOutageIsRebuiltFromThisServersPendingLog) {
  ASSERT_NO_FATAL_FAILURE(StartMounted());
  ASSERT_NO_FATAL_FAILURE(WriteBaseline());
  ASSERT_NO_FATAL_FAILURE(TakeDown("master"));
  plan_ = MakePlan(rng_, 0.3);
  RunPlan(plan_.size());
  ExpectOpsSucceeded("the master outage");
  ExpectPending("master", "before the journal is lost");
  // The operator unmounts; the web server's disk is replaced; the master is
  // repaired; nasfs is mounted again.
  ASSERT_EQ(mount_->Unmount(), "");
  mount_.reset();
  std::error_code ec;
  fsys::remove_all(ws_.journal_dir(), ec);
  ASSERT_FALSE(ec) << ec.message();
  ASSERT_EQ(master_->Remount(), "") << "master server";
  const auto restart = Clock::now();
  ASSERT_NO_FATAL_FAILURE(Mount());
  {
    const json st = StatusNow();
    STATUS_EXPECT(x, st, "right after mounting with a new journal");
    x.Is("/read_from", "backup");
    x.True(StateOf(st, "master") != "healthy", "the master serves though it lacks the outage's writes");
    x.Is("/journal/at_start/vouched", false);
    x.Positive("/journal/at_start/adopted_from_own_logs/master",
               ": this server's pending log on the backup was not adopted");
  }
  json st;
  EXPECT_TRUE(WaitForStatus(
      [](const json& j) {
        return ReadFrom(j) == "master" && Num(Get(j, "/journal/pending")) == 0 && StateOf(j, "master") == "healthy" &&
               StateOf(j, "backup") == "healthy";
      },
      kSwitchBackWithin, &st))
      << "the master did not come back within 30 s: " << st.dump(2);
  std::printf("journal lost during a master outage: back on the master %.2f s after mounting\n", SecondsSince(restart));
  std::vector<std::string> early;
  for (const auto& x : watch_->Since(restart))
    if (ReadFrom(x.s) == "master" && (Num(Get(x.s, "/journal/pending_master")) > 0 || StateOf(x.s, "master") != "healthy"))
      early.push_back(x.s.dump());
  EXPECT_TRUE(early.empty()) << "reads went to the master before it had every write:" << FirstLines(early);
  CheckFinal("after the journal was lost and rebuilt");
}

// Issue 10: hard links broke on recovery. During a master outage, `echo v1
// > d/a; ln d/a d/b; mv d e` left the master with e/a and e/b as two files,
// so a later write through e/a left e/b stale on the master; a random
// workload with hard links left link counts differing between the NAS.
TEST_F(JournalTest, HardLinksMadeAndMovedDuringAnOutageAreLinksOnTheReturningNas) {
  ASSERT_NO_FATAL_FAILURE(StartMounted());
  auto must = [&](const std::string& what, int err) { ASSERT_EQ(err, 0) << what << ": " << Errstr(err); };
  for (const char* d : {"x", "y", "r0", "r1", "r2", "r3"})
    ASSERT_NO_FATAL_FAILURE(must(std::string("mkdir ") + d, Errno(mkdir(M(d).c_str(), 0755))));
  ASSERT_NO_FATAL_FAILURE(must("write x/old", PutFile(M("x/old"), "before", O_CREAT | O_TRUNC)));
  ASSERT_NO_FATAL_FAILURE(must("link x/old y/old2", Errno(link(M("x/old").c_str(), M("y/old2").c_str()))));
  ASSERT_NO_FATAL_FAILURE(TakeDown("master"));
  // The reproduction.
  ASSERT_NO_FATAL_FAILURE(must("mkdir d", Errno(mkdir(M("d").c_str(), 0755))));
  ASSERT_NO_FATAL_FAILURE(must("write d/a", PutFile(M("d/a"), "v1", O_CREAT | O_TRUNC)));
  ASSERT_NO_FATAL_FAILURE(must("ln d/a d/b", Errno(link(M("d/a").c_str(), M("d/b").c_str()))));
  ASSERT_NO_FATAL_FAILURE(must("mv d e", Errno(rename(M("d").c_str(), M("e").c_str()))));
  // A new name for a file the outage never touched, then its directory moved.
  ASSERT_NO_FATAL_FAILURE(must("ln x/old y/new", Errno(link(M("x/old").c_str(), M("y/new").c_str()))));
  ASSERT_NO_FATAL_FAILURE(must("mv y z", Errno(rename(M("y").c_str(), M("z").c_str()))));
  // Like fsstress: creates, links, renames, unlinks and writes in place among
  // a few dozen names in four directories. Failures (a name already taken,
  // or gone) are part of the workload.
  std::vector<std::string> names;
  for (int d = 0; d < 4; ++d)
    for (int i = 0; i < 10; ++i) names.push_back(fmt::format("r{}/n{}", d, i));
  int ops = 0;
  for (int k = 0; k < 400; ++k) {
    const std::string a = M(names[rng_() % names.size()]), b = M(names[rng_() % names.size()]);
    switch (rng_() % 5) {
      case 0: ops += PutFile(a, RandomBytes(rng_, rng_() % 3000), O_CREAT | O_TRUNC) == 0; break;
      case 1: ops += link(a.c_str(), b.c_str()) == 0; break;
      case 2: ops += rename(a.c_str(), b.c_str()) == 0; break;
      case 3: ops += unlink(a.c_str()) == 0; break;
      case 4: ops += PwriteAt(a, RandomBytes(rng_, 100), static_cast<off_t>(rng_() % 500)) == 0; break;
    }
  }
  std::printf("random workload with hard links: %d of 400 operations applied\n", ops);
  ASSERT_NO_FATAL_FAILURE(BringBack("master"));
  // A write through one name after the switch-back reaches every name, on
  // both NAS.
  ASSERT_NO_FATAL_FAILURE(must("write e/a", PutFile(M("e/a"), "v2", O_TRUNC)));
  EXPECT_EQ(ReadFile(master_->store() + "/e/b").value_or("?"), "v2") << "e/b is stale on the master";
  EXPECT_EQ(ReadFile(backup_->store() + "/e/b").value_or("?"), "v2");
  ASSERT_NO_FATAL_FAILURE(must("write x/old", PutFile(M("x/old"), "after", O_TRUNC)));
  EXPECT_EQ(ReadFile(master_->store() + "/z/new").value_or("?"), "after") << "z/new is stale on the master";
  EXPECT_EQ(ReadFile(master_->store() + "/z/old2").value_or("?"), "after");
  // Both NAS the same, link counts included, and verify agrees.
  EXPECT_NO_TREE_DIFFS(CompareTrees(master_->store(), backup_->store()));
  auto v = RunCommand({NasfsctlBin(), "verify", ws_.mnt()}, Within(60s));
  EXPECT_EQ(v.exit_code, 0) << v.Describe();
}

// nasfs SIGKILLed with both NAS healthy, in the middle of writes: what the
// crash can leave is a change on one NAS and not the other, recorded
// nowhere but in the activity log, which names the directories being
// written. The restart reconciles them from the master before the backup
// serves again. The damage a crash can do is made explicit on the backup's
// store: a file of the writer truncated (its write never got there), one
// deleted (its create never got there) and one extra (created on the backup
// only). No whole-tree copy is needed for that.
TEST_F(JournalTest, NasfsKilledWithBothNasHealthyReconcilesWhatItWasWriting) {
  ASSERT_NO_FATAL_FAILURE(StartMounted());
  ASSERT_NO_FATAL_FAILURE(WriteBaseline());
  Do("mkdir inflight", {"inflight"}, [&] { return Errno(mkdir(M("inflight").c_str(), 0755)); },
     [&] { model_.Dir("inflight"); });
  const json before = StatusNow();
  const pid_t pid = static_cast<pid_t>(Num(Get(before, "/pid")));
  ASSERT_GT(pid, 0) << "no pid in status: " << before.dump(2);
  InflightWrites w;
  ASSERT_NO_FATAL_FAILURE(KillUnderWriter(pid, 8, &w));
  ASSERT_GE(w.done.size(), 3u);
  ASSERT_NO_FATAL_FAILURE(ForgetDeadMount());

  // What a crash between the two NAS leaves, on the backup's store.
  const std::string b = backup_->store() + "/";
  ASSERT_EQ(truncate((b + w.done[0].first).c_str(), 1), 0) << std::strerror(errno);
  ASSERT_EQ(unlink((b + w.done[1].first).c_str()), 0) << std::strerror(errno);
  ASSERT_TRUE(WriteFile(b + "inflight/only-on-the-backup", "a create the master never got"));

  const auto restart = Clock::now();
  ASSERT_NO_FATAL_FAILURE(Mount());
  died_reported_ = false;
  {
    const json s = StatusNow();
    STATUS_EXPECT(x, s, "right after the restart");
    x.Positive("/journal/at_start/unfinished_dirs", ": the activity log named no directory being written");
    x.Is("/read_from", "master");
    x.Is("/sync/state", "none");
  }
  json s;
  EXPECT_TRUE(WaitForStatus(
      [](const json& j) {
        return StateOf(j, "backup") == "healthy" && ReadFrom(j) == "master" && Num(Get(j, "/journal/pending")) == 0;
      },
      30s, &s))
      << "the backup is not reconciled 30 s after the restart: " << s.dump(2);
  std::printf("restart after a crash with both NAS healthy: backup reconciled in %.2f s; journal %s\n",
              MsSince(restart) / 1000.0, Get(s, "/journal").dump().c_str());
  CheckFinal("after the restart");
}

// A hard link made during a master outage reaches the master as a link
// (one inode, two names), not as a second copy of the data.
TEST_F(JournalTest, AHardLinkMadeDuringAnOutageIsReplayedAsALink) {
  ASSERT_NO_FATAL_FAILURE(StartMounted());
  const std::string data = RandomBytes(rng_, 5000);
  Do("create a", {"a"}, [&] { return PutFile(M("a"), data, O_CREAT | O_TRUNC); }, [&] { model_.File("a", data, 0644); });
  ASSERT_NO_FATAL_FAILURE(TakeDown("master"));
  Do("mkdir d", {"d"}, [&] { return Errno(mkdir(M("d").c_str(), 0755)); }, [&] { model_.Dir("d"); });
  Do("link a d/b", {"d/b"}, [&] { return Errno(link(M("a").c_str(), M("d/b").c_str())); },
     [&] { model_.File("d/b", data, 0644); });
  const std::string more = "written through the second name";
  Do("append to d/b", {"d/b"}, [&] { return PutFile(M("d/b"), more, O_APPEND); }, [&] {
    model_.At("a").data += more;
    model_.At("d/b").data += more;
  });
  ExpectOpsSucceeded("the outage");
  ASSERT_NO_FATAL_FAILURE(BringBack("master"));
  CheckFinal("after the master returned");
  for (const FuseNas* nas : {master_.get(), backup_.get()}) {
    struct stat a, b;
    ASSERT_EQ(stat((nas->store() + "/a").c_str(), &a), 0) << std::strerror(errno);
    ASSERT_EQ(stat((nas->store() + "/d/b").c_str(), &b), 0) << std::strerror(errno);
    EXPECT_EQ(a.st_ino, b.st_ino) << nas->store() << ": a and d/b are two files, not one linked twice";
    EXPECT_EQ(a.st_nlink, 2u) << nas->store();
  }
}

// Issue 10 (hour soak, seed 9916408223397310835): a write through a name
// that this mount did not know as another name of its file (a link made by
// another web server, or older than the mount: the inode table numbers
// names, not files) was journaled under that name alone. Once that name was
// gone, the replay had nothing to carry the bytes by: the master kept the
// file's old bytes under its other name, a lost write there. Here another
// web server links a to b (and t to t2, u to u2) on the backup during the
// master outage; this one renames b, writes it and removes it before the
// master returns; likewise a truncate and an append.
TEST_F(JournalTest, AWriteThroughALinkThisMountDoesNotKnowReachesTheFilesOtherNames) {
  ASSERT_NO_FATAL_FAILURE(StartMounted());
  const std::string v1 = RandomBytes(rng_, 9000), w1 = RandomBytes(rng_, 7000), u1 = RandomBytes(rng_, 3000);
  // The names that live on are in a directory of their own, which nothing
  // else changes: its times must come back the same on both NAS.
  Do("mkdir keep", {"keep"}, [&] { return Errno(mkdir(M("keep").c_str(), 0755)); }, [&] { model_.Dir("keep"); });
  Do("create a", {"keep/a"}, [&] { return PutFile(M("keep/a"), v1, O_CREAT | O_TRUNC); },
     [&] { model_.File("keep/a", v1, 0644); });
  Do("create t", {"keep/t"}, [&] { return PutFile(M("keep/t"), w1, O_CREAT | O_TRUNC); },
     [&] { model_.File("keep/t", w1, 0644); });
  Do("create u", {"keep/u"}, [&] { return PutFile(M("keep/u"), u1, O_CREAT | O_TRUNC); },
     [&] { model_.File("keep/u", u1, 0644); });
  ASSERT_NO_FATAL_FAILURE(TakeDown("master"));
  // The other web server's links, on the NAS it writes (its own journal
  // holds them for the master).
  for (auto [from, to] : {std::pair{"keep/a", "b"}, {"keep/t", "t2"}, {"keep/u", "u2"}}) {
    const std::string b = backup_->store() + "/";
    ASSERT_EQ(link((b + from).c_str(), (b + to).c_str()), 0) << to << ": " << std::strerror(errno);
    model_.File(to, model_.At(from).data, 0644);
  }
  Do("mv b c", {"b", "c"}, [&] { return Errno(rename(M("b").c_str(), M("c").c_str())); },
     [&] { model_.Rename("b", "c"); });
  const std::string v2 = RandomBytes(rng_, 12000);
  Do("overwrite c", {"keep/a", "c"}, [&] { return PutFile(M("c"), v2, O_TRUNC); }, [&] {
    model_.At("keep/a").data = v2;
    model_.At("c").data = v2;
  });
  Do("rm c", {"c"}, [&] { return Errno(unlink(M("c").c_str())); }, [&] { model_.Remove("c"); });
  Do("truncate t2", {"keep/t", "t2"}, [&] { return Errno(truncate(M("t2").c_str(), 100)); }, [&] {
    model_.At("keep/t").data.resize(100);
    model_.At("t2").data.resize(100);
  });
  Do("mv t2 t3", {"t2", "t3"}, [&] { return Errno(rename(M("t2").c_str(), M("t3").c_str())); },
     [&] { model_.Rename("t2", "t3"); });
  Do("rm t3", {"t3"}, [&] { return Errno(unlink(M("t3").c_str())); }, [&] { model_.Remove("t3"); });
  const std::string more = "appended through the second name";
  Do("append u2", {"keep/u", "u2"}, [&] { return PutFile(M("u2"), more, O_APPEND); }, [&] {
    model_.At("keep/u").data += more;
    model_.At("u2").data += more;
  });
  Do("rm u2", {"u2"}, [&] { return Errno(unlink(M("u2").c_str())); }, [&] { model_.Remove("u2"); });
  ExpectOpsSucceeded("the outage");
  ASSERT_NO_FATAL_FAILURE(BringBack("master"));
  EXPECT_EQ(ReadFile(master_->store() + "/keep/a").value_or("?") == v2, true) << "a is stale on the master";
  EXPECT_EQ(ReadFile(master_->store() + "/keep/t").value_or("?").size(), 100u) << "t is not truncated on the master";
  EXPECT_EQ(ReadFile(master_->store() + "/keep/u").value_or("?"), u1 + more) << "u lacks the append on the master";
  struct stat km{}, kb{};
  ASSERT_EQ(stat((master_->store() + "/keep").c_str(), &km), 0);
  ASSERT_EQ(stat((backup_->store() + "/keep").c_str(), &kb), 0);
  EXPECT_TRUE(km.st_mtim.tv_sec == kb.st_mtim.tv_sec && km.st_mtim.tv_nsec == kb.st_mtim.tv_nsec)
      << "keep's mtime differs: master " << km.st_mtim.tv_sec << "." << km.st_mtim.tv_nsec << ", backup "
      << kb.st_mtim.tv_sec << "." << kb.st_mtim.tv_nsec;
  CheckFinal("after the master returned");
}

// (c) The backup dies: reads stay on the master throughout; the backup gets
// the operations when it returns.
TEST_F(JournalTest, ABackupOutageIsReplayedOntoTheBackupWhileReadsStayOnTheMaster) {
  OutageScenario("backup");
  Report("backup-outage", fmt::format(" writes_racing_replay={}", racer_writes_));
}

// Writes racing a replay. A short backup outage, so the replay is soon in
// small rounds; then for 6 s after the backup's return a writer makes a new
// file every ~10 ms in a new directory (a create, then a write: separate
// requests, each journaled while the directory is pending) and now and then
// overwrites or appends to a file the outage left pending. None of them may
// be lost on the backup, none undone by an older copy, and the switch-back
// must still come within 30 s.
TEST_F(JournalTest, WritesRacingAReplayAllReachTheReturningNas) {
  ASSERT_NO_FATAL_FAILURE(StartMounted());
  ASSERT_NO_FATAL_FAILURE(WriteBaseline());
  StartReader();
  ASSERT_NO_FATAL_FAILURE(TakeDown("backup"));
  plan_ = MakePlan(rng_, 0.05);
  RunPlan(plan_.size());
  ExpectOpsSucceeded("during the backup outage");
  ExpectPending("backup", "after the operations, backup still out");
  ASSERT_NO_FATAL_FAILURE(BringBackUnderWrites("backup", 1, 5, 10ms, 6s, /*create_pct=*/90));
  ExpectNoFailedRead();
  CheckFinal("after the backup returned under writes");
  Report("backup-outage-writes-racing-replay", fmt::format(" writes_racing_replay={}", racer_writes_));
}

// (d) The journal's disk (a 1 MiB tmpfs) fills during a master outage:
// writes the journal cannot record fail with ENOSPC or EIO, status says why,
// reads go on; once there is room again, writes succeed; and every write the
// application was told succeeded is on both NAS once the master returns.
TEST_F(JournalTest, AFullJournalDiskFailsWritesCleanlyAndRecoversWhenThereIsRoomAgain) {
  const std::string jfs = ws_.MakeDir("jfs");
  ASSERT_EQ(mount("tmpfs", jfs.c_str(), "tmpfs", 0, "size=1m,mode=0755"), 0) << std::strerror(errno);
  tmpfs_ = jfs;
  const std::string jdir = jfs + "/journal";
  ASSERT_EQ(mkdir(jdir.c_str(), 0700), 0) << std::strerror(errno);
  spec_.default_options = false;
  spec_.extra_options = fmt::format("control={},journal={}", ws_.control_socket(), jdir);

  ASSERT_NO_FATAL_FAILURE(StartMounted());
  ASSERT_NO_FATAL_FAILURE(WriteBaseline());
  ASSERT_EQ(Str(Get(StatusNow(), "/journal/dir")), jdir);
  StartReader();
  std::this_thread::sleep_for(300ms);
  ASSERT_NO_FATAL_FAILURE(TakeDown("master"));
  plan_ = MakePlan(rng_, 0.1);
  RunPlan(plan_.size());
  ExpectOpsSucceeded("the master outage, the journal's disk not yet full");
  ExpectPending("master", "before the journal's disk fills");
  Do("mkdir full", {"full"}, [&] { return Errno(mkdir(M("full").c_str(), 0755)); }, [&] { model_.Dir("full"); });

  // Fill the tmpfs.
  const std::string filler = jfs + "/filler";
  {
    const int fd = open(filler.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    const std::string block(4096, 'f');
    int err = 0;
    for (int i = 0; i < 1024 && err == 0; ++i) {
      if (write(fd, block.data(), block.size()) < 0) err = errno;
    }
    close(fd);
    ASSERT_EQ(err, ENOSPC) << "filling " << jfs << ": " << Errstr(err);
  }

  // Creations until one fails: some may still fit in the journal's last page.
  const auto full_at = Clock::now();
  std::vector<std::string> wrong_errno;
  int fit = 0, first_err = 0;
  for (int i = 0; i < 3000 && first_err == 0; ++i) {
    first_err = [&] {
      const std::string rel = fmt::format("full/f{:04d}", counter_++);
      const std::string data = fmt::format("written with the journal's disk full, {}\n", i);
      return Do("create " + rel, {rel}, [&] { return PutFile(M(rel), data, O_CREAT | O_EXCL); },
                [&] { model_.File(rel, data, 0644); }, /*may_fail=*/true);
    }();
    if (first_err == 0) ++fit;
  }
  ASSERT_NE(first_err, 0) << "3000 creations succeeded with the master out and the journal's disk full";
  if (first_err != ENOSPC && first_err != EIO) wrong_errno.push_back("the first failed creation: " + Errstr(first_err));
  const double first_failure_ms = MsSince(full_at);
  {
    STATUS_EXPECT(x, StatusNow(), "with the journal's disk full");
    const json error = Get(x.s(), "/journal/error");
    x.Is("/journal/state", "failed");
    x.True(error.is_string() && !error.get<std::string>().empty(), "journal.error is " + error.dump() + ", expected why");
    x.Is("/read_from", "backup");
    std::printf("with the journal's disk full: journal %s\n", Get(x.s(), "/journal").dump().c_str());
  }
  // Every kind of mutation now fails, cleanly, with ENOSPC or EIO.
  std::vector<std::string> succeeded;
  auto check = [&](int ops_before) {
    if (ops_done_ == ops_before) return;
    if (last_err_ == 0) {
      succeeded.push_back(last_what_);
    } else if (last_err_ != ENOSPC && last_err_ != EIO) {
      wrong_errno.push_back(last_what_ + ": " + Errstr(last_err_));
    }
  };
  failures_allowed_ = true;
  for (Op op : {Op::kCreate, Op::kOverwrite, Op::kAppend, Op::kTruncate, Op::kDelete, Op::kRename, Op::kChmod,
                Op::kSymlink, Op::kPwriteBig, Op::kCreate}) {
    const int ops_before = ops_done_;
    RunOne(op);
    check(ops_before);
  }
  {
    const int ops_before = ops_done_;
    Do("mkdir full/dir", {"full/dir"}, [&] { return Errno(mkdir(M("full/dir").c_str(), 0755)); },
       [&] { model_.Dir("full/dir"); });
    check(ops_before);
  }
  EXPECT_TRUE(succeeded.empty()) << "mutations succeeded with the journal failed and its disk still full:"
                                 << FirstLines(succeeded);
  EXPECT_TRUE(wrong_errno.empty()) << "writes the journal cannot record must fail with ENOSPC or EIO:"
                                   << FirstLines(wrong_errno);

  // Room again: writes succeed within a few seconds, and status says ok.
  ASSERT_EQ(unlink(filler.c_str()), 0) << std::strerror(errno);
  const auto room = Clock::now();
  bool writable = false;
  while (!writable && Clock::now() < room + kJournalRecoversWithin) {
    const std::string rel = fmt::format("full/again{:04d}", counter_++);
    writable = Do("create " + rel, {rel}, [&] { return PutFile(M(rel), "room again\n", O_CREAT | O_EXCL); },
                  [&] { model_.File(rel, "room again\n", 0644); }, true) == 0;
    if (!writable) std::this_thread::sleep_for(250ms);
  }
  const double writable_s = SecondsSince(room);
  EXPECT_TRUE(writable) << "writes still fail " << kJournalRecoversWithin.count()
                        << " ms after the journal's disk has room again";
  json s;
  EXPECT_TRUE(WaitForStatus([](const json& j) { return Get(j, "/journal/state") == "ok"; }, 5s, &s))
      << "journal.state is not ok again: " << s.dump(2);
  failures_allowed_ = false;
  const int failures_before = op_failures_;
  for (int i = 0; i < 20; ++i) Create("full", SmallSize());
  EXPECT_EQ(op_failures_, failures_before) << "with room again:" << FirstLines(op_failure_lines_);
  ExpectPending("master", "with room again, master still out");

  ASSERT_NO_FATAL_FAILURE(BringBack("master"));
  ExpectNoFailedRead();
  CheckFinal("after the master returned");
  // For the record: what the writes that failed left behind (any outcome is
  // allowed, as long as both NAS agree, which CheckFinal saw).
  {
    const Tree master = SnapshotTree(master_->store());
    std::vector<std::string> left;
    for (const auto& [rel, e] : master) {
      if (rel.empty() || !model_.IsUnknown(rel)) continue;
      if (!model_.Has(rel)) {
        left.push_back(fmt::format("{} ({}, {} bytes) is on both NAS", rel, TypeName(e.type), e.size));
      } else if (model_.At(rel).type == TreeEntry::Type::kFile &&
                 e.content_hash != XXH3_64bits(model_.At(rel).data.data(), model_.At(rel).data.size())) {
        left.push_back(fmt::format("{} changed ({} bytes, {} before)", rel, e.size, model_.At(rel).data.size()));
      }
    }
    std::printf("the writes that failed:%s\nwhat they left on both NAS:%s\n", FirstLines(failed_ops_).c_str(),
                FirstLines(left).c_str());
  }
  Report("journal-disk-full",
         fmt::format(" fit_after_full={} first_failure_ms={:.0f} writable_again_s={:.2f}", fit, first_failure_ms,
                     writable_s));
}

}  // namespace
}  // namespace nasfs::e2e
