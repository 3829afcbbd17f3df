// Issue 5's mounted scenarios: two web servers over the same pair of NAS.
//
// The fixture: one workspace, two stores (plain directories
// <ws>/store_master and <ws>/store_backup) and four FUSE NAS servers, one
// per (web server, NAS): server a sees the master at <ws>/a_master and the
// backup at <ws>/a_backup, server b at <ws>/b_master and <ws>/b_backup. Each
// is a separate mount of the same store, so a test can cut one server's
// path to one NAS (a partition) or every path to the master (an outage).
// Two nasfs mounts, <ws>/mnt_a (-o node=a,journal=<ws>/journal_a,
// control=<ws>/a.sock,...) and <ws>/mnt_b (node=b, ...), run in the
// foreground with their logs in the workspace; a failing test prints both.
// Mount a comes first (it pairs the two empty stores), then b.
//
// The scenarios (each ends with both stores identical and equal to the
// model, every model file read back through each live mount, and one or
// more "[peers figures]" lines):
//  1. ConcurrentWritersBothHealthy: a and b write at once; a write through
//     a is readable through b within 3 s.
//  2. MasterOutageTwoWriters: both write during a master outage; after it,
//     neither reads from the master while either still holds writes the
//     master lacks (every model file read through a mount the moment it
//     first reports read_from "master").
//  3. ServerKilledDuringOutage / OperatorTakesOverWithReplayNode: a dies
//     during the outage and never returns; b finishes a's replay, after
//     peer_timeout or on `nasfsctl replay MNT --node a`.
//  4. PartitionSplitBrain: a loses the backup, b the master; both write;
//     after the heal the newest version wins and the other is kept under
//     .nasfs/conflicts/<id>/ on both NAS, and can be restored.
//
// NASFS_E2E_SEED repeats a run's random content and order;
// NASFS_E2E_NAS_SERVER=bindfs uses bindfs for the four NAS servers.
//
// Every wait is bounded; TearDown unmounts both nasfs mounts, then the four
// NAS servers, whatever the test did.

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
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

using nlohmann::json;
using Clock = std::chrono::steady_clock;

// Each NAS probed every 250 ms: a dead one is seen within a second or two.
constexpr int kProbeIntervalMs = 250;
// Both NAS healthy after a mount (a pairing copies an empty tree).
constexpr auto kHealthyWithin = 20s;
// A dead NAS shown down.
constexpr auto kDetectWithin = 10s;
// The bound for the switch-back once the master is back.
constexpr auto kSwitchBackWithin = 40s;
// The bound for a split brain to be resolved once healed.
constexpr auto kHealWithin = 60s;
// A change through one server readable through the other (cache_timeout is
// 1 s), and how long to poll for it.
constexpr auto kVisibleWithin = 3s;
constexpr auto kVisibilityCap = 5s;
constexpr double kVisibleWithinMs = std::chrono::duration<double, std::milli>(kVisibleWithin).count();
// The kernel's cache_timeout: a server's attribute cache of a file the
// other changed is at most this old.
constexpr auto kCacheTimeout = 1s;
// Scenario 2: the delay of b's path to the master for the first seconds
// after the masters return (faultfs only), so b's replay is the later one.
constexpr int kSlowReplayDelayMs = 3;
constexpr auto kSlowReplayFor = 5s;
// A batch of writes stuck this long is a failure (nasfs bounds every call).
constexpr auto kBatchWithin = 120s;






double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return -1;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, static_cast<size_t>(p * static_cast<double>(v.size() - 1) + 0.5));
  return v[i];
}

// A short, printable view of a content ("a-version", or "<4711 bytes>").
std::string Show(const std::optional<std::string>& s) {
  if (!s) return "(unreadable)";
  bool printable = s->size() <= 40;
  for (char c : *s) printable = printable && (std::isprint(static_cast<unsigned char>(c)) || c == '\n');
  return printable ? "'" + *s + "'" : fmt::format("<{} bytes>", s->size());
}

// ---- status -----------------------------------------------------------------

// The entry of "peers" for this node, or null.
json PeerOf(const json& status, const std::string& node) {
  const json peers = Get(status, "/peers");
  if (peers.is_array()) {
    for (const auto& p : peers) {
      if (Get(p, "/node") == node) return p;
    }
  }
  return nullptr;
}

bool BothHealthyOnMaster(const json& s) {
  return StateOf(s, "master") == "healthy" && StateOf(s, "backup") == "healthy" && ReadFrom(s) == "master";
}
bool SwitchedBack(const json& s) { return BothHealthyOnMaster(s) && Num(Get(s, "/journal/pending")) == 0; }

// One line of the fields that tell how a return is going.
std::string Brief(const json& s) {
  if (s.contains("nasfsctl_error") || s.contains("nasfs_died")) return s.dump();
  return fmt::format("master={} backup={} read_from={} pending={} (master {}, backup {}) replay={} peers={} "
                     "split_brain={}",
                     StateOf(s, "master"), StateOf(s, "backup"), ReadFrom(s), Get(s, "/journal/pending").dump(),
                     Get(s, "/journal/pending_master").dump(), Get(s, "/journal/pending_backup").dump(),
                     Str(Get(s, "/journal/replay/state")), Get(s, "/peers").dump(), Get(s, "/split_brain").dump());
}

// ---- operations through a mount ----------------------------------------------

// Errno and PutFile: tests/e2e/load.h.

struct FsOp {
  enum class Kind { kMkdir, kCreate, kOverwrite, kUnlink, kRename };
  Kind kind = Kind::kCreate;
  std::string path, to, data;

  std::string What() const {
    switch (kind) {
      case Kind::kMkdir: return "mkdir " + path;
      case Kind::kCreate: return fmt::format("create {} ({} bytes)", path, data.size());
      case Kind::kOverwrite: return fmt::format("overwrite {} ({} bytes)", path, data.size());
      case Kind::kUnlink: return "unlink " + path;
      case Kind::kRename: return "rename " + path + " -> " + to;
    }
    return "?";
  }
};
FsOp Mkdir(std::string p) { return {FsOp::Kind::kMkdir, std::move(p), "", ""}; }
// O_CREAT|O_EXCL: a new file.
FsOp Create(std::string p, std::string d) { return {FsOp::Kind::kCreate, std::move(p), "", std::move(d)}; }
// O_TRUNC, no O_CREAT: the file must exist (as this server sees it).
FsOp Overwrite(std::string p, std::string d) { return {FsOp::Kind::kOverwrite, std::move(p), "", std::move(d)}; }
FsOp Unlink(std::string p) { return {FsOp::Kind::kUnlink, std::move(p), "", ""}; }
FsOp Rename(std::string from, std::string to) { return {FsOp::Kind::kRename, std::move(from), std::move(to), ""}; }

int RunOp(const std::string& mnt, const FsOp& op) {
  const std::string p = mnt + "/" + op.path;
  switch (op.kind) {
    case FsOp::Kind::kMkdir: return Errno(mkdir(p.c_str(), 0755));
    case FsOp::Kind::kCreate: return PutFile(p, op.data, O_CREAT | O_EXCL);
    case FsOp::Kind::kOverwrite: return PutFile(p, op.data, O_TRUNC);
    case FsOp::Kind::kUnlink: return Errno(unlink(p.c_str()));
    case FsOp::Kind::kRename: return Errno(rename(p.c_str(), (mnt + "/" + op.to).c_str()));
  }
  return EINVAL;
}

struct OpResult {
  FsOp op;
  int err = 0;
};

struct BatchResult {
  std::string label;
  std::vector<OpResult> results;
  double seconds = 0, max_ms = 0;
  bool finished = false;
};

BatchResult RunBatch(const std::string& label, const std::string& mnt, const std::vector<FsOp>& ops,
                     const std::atomic<bool>* stop = nullptr) {
  BatchResult r;
  r.label = label;
  const auto t0 = Clock::now();
  for (const auto& op : ops) {
    if (stop != nullptr && stop->load()) break;
    const auto t = Clock::now();
    r.results.push_back({op, RunOp(mnt, op)});
    r.max_ms = std::max(r.max_ms, MsSince(t));
  }
  r.seconds = SecondsSince(t0);
  r.finished = true;
  return r;
}

// ---- the expected tree --------------------------------------------------------

// Files (path -> content) and directories that every operation that
// succeeded through a mount leaves; a path whose operation failed (and what
// lies beneath it) is unknown: it may be in any state, but both NAS must
// still agree on it.
class Model {
 public:
  void Apply(const FsOp& op) {
    switch (op.kind) {
      case FsOp::Kind::kMkdir: dirs_.insert(op.path); break;
      case FsOp::Kind::kCreate:
      case FsOp::Kind::kOverwrite: files_[op.path] = op.data; break;
      case FsOp::Kind::kUnlink: files_.erase(op.path); break;
      case FsOp::Kind::kRename: {
        auto it = files_.find(op.path);
        if (it != files_.end()) {
          std::string data = std::move(it->second);
          files_.erase(it);
          files_[op.to] = std::move(data);
        }
        break;
      }
    }
  }
  void Failed(const FsOp& op) {
    unknown_.insert(op.path);
    if (!op.to.empty()) unknown_.insert(op.to);
  }
  void Unknown(const std::string& rel) { unknown_.insert(rel); }
  bool IsUnknown(const std::string& rel) const { return AtOrUnderAny(unknown_, rel); }
  const std::map<std::string, std::string>& files() const { return files_; }
  size_t unknown_count() const { return unknown_.size(); }
  // The files whose content is known.
  std::map<std::string, std::string> KnownFiles() const {
    std::map<std::string, std::string> out;
    for (const auto& [rel, data] : files_) {
      if (!IsUnknown(rel)) out[rel] = data;
    }
    return out;
  }

  std::vector<std::string> Compare(const Tree& t, const std::string& name) const {
    std::vector<std::string> d;
    for (const auto& dir : dirs_) {
      if (IsUnknown(dir)) continue;
      auto it = t.find(dir);
      if (it == t.end()) {
        d.push_back(fmt::format("{}: directory {} is missing", name, dir));
      } else if (it->second.type != TreeEntry::Type::kDir) {
        d.push_back(fmt::format("{}: {} is not a directory", name, dir));
      }
    }
    for (const auto& [rel, data] : files_) {
      if (IsUnknown(rel)) continue;
      auto it = t.find(rel);
      if (it == t.end()) {
        d.push_back(fmt::format("{}: file {} is missing", name, rel));
        continue;
      }
      const TreeEntry& got = it->second;
      if (!got.error.empty()) d.push_back(fmt::format("{}: {}: {}", name, rel, got.error));
      if (got.type != TreeEntry::Type::kFile) {
        d.push_back(fmt::format("{}: {} is not a regular file", name, rel));
      } else if (got.size != static_cast<off_t>(data.size()) ||
                 got.content_hash != XXH3_64bits(data.data(), data.size())) {
        d.push_back(fmt::format("{}: {} holds other bytes ({} bytes, expected {})", name, rel, got.size, data.size()));
      }
    }
    for (const auto& [rel, got] : t) {
      if (rel.empty() || files_.count(rel) || dirs_.count(rel) || IsUnknown(rel)) continue;
      d.push_back(fmt::format("{}: {} should not exist", name, rel));
    }
    return d;
  }

 private:
  std::map<std::string, std::string> files_;
  std::set<std::string> dirs_;
  std::set<std::string> unknown_;
};

// Every file read through mnt with O_DIRECT (so the daemon answers, not the
// page cache) against what it must hold; one line per file that differs.
std::vector<std::string> ReadEveryFile(const std::string& mnt, const std::map<std::string, std::string>& files) {
  std::vector<std::string> bad;
  for (const auto& [rel, data] : files) {
    const auto got = ReadDirect(mnt + "/" + rel);
    if (!got) {
      bad.push_back(fmt::format("{}: {}", rel, std::strerror(errno)));
    } else if (*got != data) {
      bad.push_back(fmt::format("{}: read {} bytes {}, expected {} bytes {}", rel, got->size(), Show(got),
                                data.size(), Show(data)));
    }
  }
  return bad;
}

// ---- watching a switch-back ---------------------------------------------------

struct SwitchBackResult {
  // Seconds after `from`: the first status with read_from "master"; the
  // first with reads on the master, both NAS healthy and nothing pending.
  double first_master_s = -1, done_s = -1;
  // Every model file read through the mount at that first moment: the ones
  // that were not what the model holds (stale: the master lacked a write).
  std::vector<std::string> stale;
  size_t checked = 0;
  double check_s = 0;
  // Times the mount reported reads on the backup again after the master.
  int back_off_master = 0;
  std::vector<std::string> timeline;
  json last;
};

// Polls `nasfsctl status` of mnt every 50 ms from `from` for `within`; the
// moment it first reports read_from "master", reads every model file through
// the mount and compares. Stops once switched back (or told to).
SwitchBackResult WatchSwitchBack(const OwnedWorker<SwitchBackResult>::State& st, const std::string& mnt,
                                 const std::map<std::string, std::string>& files, Clock::time_point from,
                                 std::chrono::milliseconds within) {
  SwitchBackResult r;
  std::string last_key;
  bool seen_master = false;
  while (!st.stop && Clock::now() < from + within) {
    auto s = Status(mnt, Within(2s));
    r.last = s.ok() ? s.json : json{{"nasfsctl_error", s.error}};
    const double t = SecondsSince(from);
    const std::string key = s.ok() ? fmt::format("master={} backup={} read_from={} pending={} replay={}",
                                                 StateOf(s.json, "master"), StateOf(s.json, "backup"),
                                                 ReadFrom(s.json), Get(s.json, "/journal/pending").dump(),
                                                 Str(Get(s.json, "/journal/replay/state")))
                                   : "nasfsctl failed";
    if (key != last_key) {
      r.timeline.push_back(fmt::format("t={:.2f}s {}", t, key));
      last_key = key;
    }
    if (s.ok() && ReadFrom(s.json) == "master") {
      if (!seen_master) {
        seen_master = true;
        r.first_master_s = t;
        const auto t0 = Clock::now();
        r.stale = ReadEveryFile(mnt, files);
        r.checked = files.size();
        r.check_s = SecondsSince(t0);
      }
      if (SwitchedBack(s.json)) {
        r.done_s = t;
        break;
      }
    } else if (s.ok() && seen_master) {
      ++r.back_off_master;
    }
    std::this_thread::sleep_for(50ms);
  }
  return r;
}

// ---- conflicts ------------------------------------------------------------------

struct ConflictList {
  CommandResult cmd;
  json list = json::array();  // "conflicts"
  std::string error;          // "" when it ran and parsed
};

ConflictList ListConflicts(const std::string& mnt) {
  ConflictList c;
  c.cmd = RunCommand({NasfsctlBin(), "conflicts", mnt, "--json"}, Within(20s));
  if (!c.cmd.ok()) {
    c.error = "nasfsctl conflicts failed: " + c.cmd.Describe();
    return c;
  }
  const json j = json::parse(c.cmd.out, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || Get(j, "/ok") != true || !Get(j, "/conflicts").is_array()) {
    c.error = "nasfsctl conflicts --json did not answer {\"ok\":true,\"conflicts\":[...]}: " + c.cmd.Describe();
    return c;
  }
  c.list = Get(j, "/conflicts");
  return c;
}

// A conflict's path as the mount shows it, without a leading '/'.
std::string ConflictPath(const json& c) {
  std::string p = Str(Get(c, "/path"));
  while (!p.empty() && p.front() == '/') p.erase(0, 1);
  return p;
}

// <store>/.nasfs/conflicts/<id>/<leaf>, or "" when the id is no plain name.
std::string ConflictFile(const std::string& store, const json& c, const std::string& leaf) {
  const std::string id = Str(Get(c, "/id"));
  if (id.empty() || id == "null" || id.find('/') != std::string::npos || id == "." || id == "..") return "";
  return store + "/.nasfs/conflicts/" + id + "/" + leaf;
}

// ---- the fixture ------------------------------------------------------------------

struct StartOptions {
  int peer_timeout_s = 10;
};

class PeersTest : public WorkspaceTest {
 protected:
  struct Server {
    std::string node;
    std::unique_ptr<FuseNas> master, backup;  // this server's views of the two NAS
    MountSpec spec;
    std::unique_ptr<MountedNasfs> mount;
    std::unique_ptr<ReaderLoad> reader;
    bool killed = false;  // SIGKILLed by the test: its death is no failure
    bool died_reported = false;
  };

  void SetUp() override {
    WorkspaceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    srv_[0].node = "a";
    srv_[1].node = "b";
    store_master_ = ws_.Path("store_master");
    store_backup_ = ws_.Path("store_backup");
    std::printf("[peers] NAS server: %s\n", NasServerName(DefaultNasServer()));
  }

  void TearDown() override {
    for (auto& s : srv_) {
      if (s.master) s.master->Cont();
      if (s.backup) s.backup->Cont();
    }
    for (auto& s : srv_) (void)StopReader(s);
    for (auto& s : srv_) (void)DaemonDied(s);
    if (HasFailure()) PrintLogs();
    for (int i = 1; i >= 0; --i) {
      Server& s = srv_[i];
      if (s.mount) {
        const std::string problem = s.mount->Unmount();
        if (!s.killed) {
          EXPECT_EQ(problem, "") << "unmounting mnt_" << s.node;
        }
        s.mount.reset();
      }
    }
    for (auto& s : srv_) {
      s.master.reset();
      s.backup.reset();
    }
  }

  Server& A() { return srv_[0]; }
  Server& B() { return srv_[1]; }
  Server& Other(const Server& s) { return &s == &srv_[0] ? srv_[1] : srv_[0]; }
  std::string Mnt(const Server& s) const { return ws_.Path("mnt_" + s.node); }
  std::string M(const Server& s, const std::string& rel) const { return Mnt(s) + "/" + rel; }

  void PrintLogs() {
    for (auto& s : srv_) {
      const std::string log = ReadFile(s.spec.log_file).value_or("");
      if (log.empty()) continue;
      std::printf("---- the last lines of nasfs %s's log (%s) ----\n%s\n---- end of nasfs %s's log ----\n",
                  s.node.c_str(), s.spec.log_file.c_str(), Tail(log, 150).c_str(), s.node.c_str());
    }
    std::fflush(stdout);
  }

  // ---- start ----

  void StartNas() {
    for (auto& s : srv_) {
      s.master = MakeNas(ws_, "master", s.node + "_master", DefaultNasServer());
      ASSERT_TRUE(s.master->ok()) << s.master->error();
      s.backup = MakeNas(ws_, "backup", s.node + "_backup", DefaultNasServer());
      ASSERT_TRUE(s.backup->ok()) << s.backup->error();
    }
  }

  void Mount(Server& s) {
    const std::string journal = ws_.MakeDir("journal_" + s.node);
    chmod(journal.c_str(), 0700);
    s.spec = MountSpec();
    s.spec.source = s.master->path() + ":" + s.backup->path();
    s.spec.mountpoint = ws_.MakeDir("mnt_" + s.node);
    s.spec.default_options = false;
    s.spec.extra_options = fmt::format("node={},journal={},control={},probe_interval={}", s.node, journal,
                                       ws_.Path(s.node + ".sock"), kProbeIntervalMs);
    s.spec.extra_options += fmt::format(",peer_timeout={}", peer_timeout_s_);
    s.spec.log_file = ws_.Path("nasfs_" + s.node + ".log");
    s.killed = false;
    s.died_reported = false;
    s.mount = std::make_unique<MountedNasfs>(ws_, s.spec);
    ASSERT_TRUE(s.mount->mounted()) << "nasfs " << s.node << ": " << s.mount->error() << "\nlog:\n"
                                    << Tail(s.mount->Log(), 40);
    json st;
    ASSERT_TRUE(WaitForStatus(s, BothHealthyOnMaster, kHealthyWithin, &st))
        << "mnt_" << s.node << ": both NAS not healthy with reads on the master "
        << std::chrono::duration_cast<std::chrono::seconds>(kHealthyWithin).count()
        << " s after mounting: " << st.dump(2);
  }

  // Both servers back on the master with nothing pending, within
  // kHealWithin of `heal`.
  void ExpectBothSwitchBack(Clock::time_point heal) {
    bool settled = false;
    json sa, sb;
    while (!settled && Clock::now() < heal + kHealWithin && DaemonDied(A()).empty() && DaemonDied(B()).empty()) {
      sa = StatusNow(A());
      sb = StatusNow(B());
      settled = SwitchedBack(sa) && SwitchedBack(sb);
      if (!settled) std::this_thread::sleep_for(50ms);
    }
    ASSERT_TRUE(settled) << "after the heal:\n  a: " << Brief(sa) << "\n  b: " << Brief(sb);
  }

  // The four NAS servers, then a (pairing the empty stores), then b.
  void StartAll(StartOptions o) {
    const auto t0 = Clock::now();
    peer_timeout_s_ = o.peer_timeout_s;
    ASSERT_NO_FATAL_FAILURE(StartNas());
    ASSERT_NO_FATAL_FAILURE(Mount(A()));
    ASSERT_NO_FATAL_FAILURE(Mount(B()));
    std::printf("[peers] both mounted in %.2f s\n", SecondsSince(t0));
  }

  // ---- status ----

  // "" while the server's nasfs runs, else how it died (reported once as a
  // failure unless the test killed it).
  std::string DaemonDied(Server& s) {
    if (!s.mount) return "";
    const std::string ended = s.mount->DaemonEnded();
    if (!ended.empty() && !s.died_reported && !s.killed) {
      s.died_reported = true;
      ADD_FAILURE() << "nasfs " << s.node << " (pid " << s.mount->daemon_pid() << ") died: " << ended;
    }
    return ended;
  }

  json StatusNow(Server& s) {
    if (!s.mount) return json{{"nasfsctl_error", "mnt_" + s.node + " is not mounted"}};
    auto r = Status(Mnt(s), Within(2s));
    return r.ok() ? r.json : json{{"nasfsctl_error", r.error}};
  }

  // Polls the server's status every 50 ms until pred holds, `within` passes
  // or its nasfs dies.
  bool WaitForStatus(Server& s, const std::function<bool(const json&)>& pred, std::chrono::milliseconds within,
                     json* last) {
    const auto deadline = Clock::now() + within;
    for (;;) {
      if (const std::string died = DaemonDied(s); !died.empty()) {
        *last = json{{"nasfs_died", died}};
        return false;
      }
      *last = StatusNow(s);
      if (!last->contains("nasfsctl_error") && pred(*last)) return true;
      if (Clock::now() >= deadline) return false;
      std::this_thread::sleep_for(50ms);
    }
  }

  // Waits until the server shows `role` down and reads from the other NAS.
  void ExpectShownDown(Server& s, const std::string& role) {
    const std::string other = role == "master" ? "backup" : "master";
    json st;
    ASSERT_TRUE(WaitForStatus(
        s, [&](const json& j) { return StateOf(j, role) == "down" && ReadFrom(j) == other; }, kDetectWithin, &st))
        << "mnt_" << s.node << ": its dead path to the " << role << " is not shown down (reads on the " << other
        << ") within " << std::chrono::duration_cast<std::chrono::seconds>(kDetectWithin).count()
        << " s: " << st.dump(2);
  }

  // ---- writing ----

  void Record(const BatchResult& r) {
    for (const auto& x : r.results) {
      if (x.err == 0) {
        model_.Apply(x.op);
      } else {
        model_.Failed(x.op);
        op_failures_.push_back(fmt::format("{}: {}: {}", r.label, x.op.What(), Errstr(x.err)));
      }
    }
    ops_ += static_cast<int>(r.results.size());
    last_write_ = Clock::now();
  }

  // The ops through one server's mount, on this thread.
  BatchResult RunOn(Server& s, const std::string& label, const std::vector<FsOp>& ops) {
    BatchResult r = RunBatch(s.node + ": " + label, Mnt(s), ops);
    Record(r);
    return r;
  }

  // a's ops through mnt_a and b's through mnt_b, at the same time.
  std::pair<BatchResult, BatchResult> RunConcurrently(const std::string& label, std::vector<FsOp> a_ops,
                                                      std::vector<FsOp> b_ops) {
    OwnedWorker<BatchResult> ta, tb;
    ta.Start([mnt = Mnt(A()), label = "a: " + label, ops = std::move(a_ops)](const OwnedWorker<BatchResult>::State& st) {
      return RunBatch(label, mnt, ops, &st.stop);
    });
    tb.Start([mnt = Mnt(B()), label = "b: " + label, ops = std::move(b_ops)](const OwnedWorker<BatchResult>::State& st) {
      return RunBatch(label, mnt, ops, &st.stop);
    });
    const bool a_done = ta.Join(kBatchWithin);
    const bool b_done = tb.Join(kBatchWithin);
    EXPECT_TRUE(a_done) << label << ": a's writes are not done in " << kBatchWithin.count() << " s";
    EXPECT_TRUE(b_done) << label << ": b's writes are not done in " << kBatchWithin.count() << " s";
    std::pair<BatchResult, BatchResult> out{ta.result(), tb.result()};
    // A batch left running: what it was doing is unknown to the model.
    for (auto* r : {&out.first, &out.second}) {
      if (!r->finished) {
        ADD_FAILURE() << r->label << " abandoned";
        continue;
      }
      Record(*r);
    }
    return out;
  }

  void ExpectNoOpFailures(const std::string& when) {
    EXPECT_TRUE(op_failures_.empty()) << when << ": " << op_failures_.size()
                                      << " operations failed through the mounts:" << FirstLines(op_failures_);
  }

  std::string Content(const std::string& what, size_t max = 8000) {
    return what + "\n" + RandomBytes(rng_, 64 + rng_() % max);
  }

  // Each server's baseline at once: <node>/base/f000.. (`n` files); a also
  // writes static/ (20 files the readers fetch, never changed) and shared/.
  void WriteBaseline(int n) {
    std::vector<FsOp> ops[2];
    for (int i = 0; i < 2; ++i) {
      const std::string& node = srv_[i].node;
      ops[i].push_back(Mkdir(node));
      ops[i].push_back(Mkdir(node + "/base"));
      for (int k = 0; k < n; ++k) {
        const std::string rel = fmt::format("{}/base/f{:03d}", node, k);
        ops[i].push_back(Create(rel, Content(node + " baseline " + rel)));
      }
    }
    ops[0].push_back(Mkdir("static"));
    ops[0].push_back(Mkdir("shared"));
    for (int k = 0; k < 20; ++k) {
      const std::string rel = fmt::format("static/s{:02d}.html", k);
      std::string data = Content("static " + rel);
      stable_[rel] = data;
      stable_dirs_["static"].insert(rel.substr(rel.find('/') + 1));
      ops[0].push_back(Create(rel, std::move(data)));
    }
    const auto [ra, rb] = RunConcurrently("baseline", ops[0], ops[1]);
    ASSERT_TRUE(op_failures_.empty()) << "the baseline, both NAS healthy:" << FirstLines(op_failures_);
    std::printf("baseline: a %zu ops in %.2f s, b %zu ops in %.2f s\n", ra.results.size(), ra.seconds,
                rb.results.size(), rb.seconds);
  }

  // ---- readers ----

  void StartReader(Server& s) {
    s.reader = std::make_unique<ReaderLoad>(Mnt(s), stable_, std::map<std::string, std::string>{}, stable_dirs_,
                                            seed_ ^ rng_(), ReaderPace::PauseAfterEach(10ms));
    s.reader->Start();
  }
  LoadStats StopReader(Server& s) {
    if (!s.reader) return {};
    LoadStats r = s.reader->Stop(s.mount ? s.mount->daemon_pid() : -1);
    s.reader.reset();
    return r;
  }
  void ExpectNoFailedRead(Server& s, const std::string& when, LoadStats* out = nullptr) {
    const LoadStats r = StopReader(s);
    EXPECT_GT(r.ops, 0) << "mnt_" << s.node << "'s reader made no request";
    EXPECT_EQ(r.failures, 0) << when << ": reads of unchanged files through mnt_" << s.node
                             << " failed:" << r.Failures();
    if (out != nullptr) *out = r;
  }

  // Cross-server visibility: `rounds` times, a new file (even rounds) or a
  // new content of one file (odd rounds) written through a, polled through b
  // (O_DIRECT, every 10 ms); each must be read within kVisibleWithin. *ms
  // gets each round's time (-1: never seen within kVisibilityCap).
  void ExpectVisible(const std::string& dir, int rounds, std::vector<double>* ms) {
    ASSERT_NO_FATAL_FAILURE(RunOn(A(), "visibility", {Mkdir(dir)}));
    std::vector<std::string> late;
    for (int i = 0; i < rounds; ++i) {
      const std::string rel = i % 2 == 0 ? fmt::format("{}/n{:02d}", dir, i) : dir + "/shared";
      const std::string data = Content(fmt::format("visibility round {}", i), 3000);
      const BatchResult w = RunOn(A(), "visibility", {i % 2 == 0 || i == 1 ? Create(rel, data) : Overwrite(rel, data)});
      ASSERT_EQ(w.results.at(0).err, 0) << w.results.at(0).op.What() << ": " << Errstr(w.results.at(0).err);
      const auto t0 = Clock::now();
      std::optional<std::string> got;
      const bool seen = WaitFor(
          [&] {
            got = ReadDirect(M(B(), rel));
            return got && *got == data;
          },
          kVisibilityCap, 10ms);
      const double t = MsSince(t0);
      ms->push_back(seen ? t : -1);
      if (!seen || t > kVisibleWithinMs) {
        late.push_back(fmt::format("round {} ({}): {}", i, rel,
                                   seen ? fmt::format("read through b after {:.0f} ms", t)
                                        : fmt::format("not read through b after {:.0f} ms; b reads {}", t, Show(got))));
      }
    }
    EXPECT_TRUE(late.empty()) << dir << ": writes through a not readable through b within "
                              << std::chrono::duration_cast<std::chrono::seconds>(kVisibleWithin).count()
                              << " s:" << FirstLines(late);
  }
  // The median and the largest of the times ExpectVisible saw, as text.
  static std::string VisibleFigures(const std::vector<double>& ms) {
    std::vector<double> seen;
    for (double x : ms)
      if (x >= 0) seen.push_back(x);
    return fmt::format("median={:.0f} max={:.0f} not_seen={}", Percentile(seen, 0.5),
                       seen.empty() ? -1.0 : *std::max_element(seen.begin(), seen.end()), ms.size() - seen.size());
  }

  // ---- the end of a scenario ----

  // Both stores identical (content, mode, owner, mtime; .nasfs left out) and
  // equal to the model; every model file read through each live mount.
  void ExpectStoresEqualModel(const std::string& when) {
    const auto diffs = CompareTrees(store_master_, store_backup_);
    EXPECT_TRUE(diffs.empty()) << when << ": store_master and store_backup differ (" << diffs.size()
                               << " differences):" << FirstLines(diffs);
    for (const std::string* store : {&store_master_, &store_backup_}) {
      const std::string name = store == &store_master_ ? "store_master" : "store_backup";
      const auto d = model_.Compare(SnapshotTree(*store), name);
      EXPECT_TRUE(d.empty()) << when << ": " << name << " differs from the model (" << d.size()
                             << " differences):" << FirstLines(d);
    }
    // A server's attributes of a file the other just changed may be a cache
    // period old (and an O_DIRECT read is cut at the size it believes).
    const auto since = Clock::now() - last_write_;
    if (since < kCacheTimeout + 200ms) std::this_thread::sleep_for(kCacheTimeout + 200ms - since);
    const auto files = model_.KnownFiles();
    for (auto& s : srv_) {
      if (!s.mount || s.killed) continue;
      const auto bad = ReadEveryFile(Mnt(s), files);
      EXPECT_TRUE(bad.empty()) << when << ": " << bad.size() << " of " << files.size()
                               << " files read through mnt_" << s.node << " differ from the model:" << FirstLines(bad);
    }
    std::printf("%s: stores compared; %zu files read back through each live mount\n", when.c_str(), files.size());
  }

  // After a split brain's heal: waits until kHealWithin after `heal` (or a
  // daemon dies) for both mounts to read from the master with both NAS
  // healthy and nothing pending, the split brain settled on both and
  // counted on at least one. st[] gets each mount's last status.
  bool WaitSplitBrainHealed(Clock::time_point heal, json st[2]) {
    while (Clock::now() < heal + kHealWithin && DaemonDied(A()).empty() && DaemonDied(B()).empty()) {
      bool all = true;
      int64_t count = 0;
      for (int i = 0; i < 2; ++i) {
        st[i] = StatusNow(srv_[i]);
        const std::string state = Str(Get(st[i], "/split_brain/state"));
        all = all && SwitchedBack(st[i]) && state != "detected" && state != "resolving";
        count = std::max(count, Num(Get(st[i], "/split_brain/count")));
      }
      if (all && count >= 1) return true;
      std::this_thread::sleep_for(50ms);
    }
    return false;
  }

  // Status of a live server (within 5 s, a heartbeat or two): reads on the
  // master, both NAS healthy, nothing pending; with issue 5, every other
  // live server listed alive with nothing pending.
  void ExpectSettled(Server& s, const std::string& when) {
    std::vector<std::string> why;
    auto settled = [&](const json& st) {
      why.clear();
      if (!SwitchedBack(st)) why.push_back("not on the master with both NAS healthy and journal.pending 0");
      {
        for (auto& o : srv_) {
          if (&o == &s || o.killed || !o.mount) continue;
          const json p = PeerOf(st, o.node);
          if (Get(p, "/alive") != true || Get(p, "/pending_master") != 0 || Get(p, "/pending_backup") != 0) {
            why.push_back(fmt::format("peer {} should be alive with pending_master and pending_backup 0: {}", o.node,
                                      p.dump()));
          }
        }
      }
      return why.empty();
    };
    json st;
    const bool ok = WaitForStatus(s, settled, 5s, &st);
    EXPECT_TRUE(ok) << when << ": mnt_" << s.node << ":" << FirstLines(why) << "\nstatus: " << st.dump(2);
  }

  void Figures(const std::string& scenario, const std::string& text) {
    const std::string line = fmt::format("[peers figures] {}: {}", scenario, text);
    std::printf("%s\n", line.c_str());
    std::fflush(stdout);
    RecordProperty("figures", line);
  }

  // ---- a server killed ----

  // SIGKILLs the server's nasfs and detaches its dead mount (never mounted again).
  void KillServer(Server& s) {
    ASSERT_TRUE(s.mount);
    const pid_t pid = s.mount->daemon_pid();
    ASSERT_GT(pid, 0) << "no pid for nasfs " << s.node;
    s.killed = true;
    ASSERT_EQ(kill(pid, SIGKILL), 0) << std::strerror(errno);
    ASSERT_TRUE(WaitFor([&] { return ProcessGone(pid); }, 5s)) << "nasfs " << s.node << " still there after SIGKILL";
    StopReader(s);
    const auto lazy = RunCommand({"fusermount3", "-uz", Mnt(s)}, Within(10s));
    if (!lazy.ok()) {
      const auto l = RunCommand({"umount", "-l", Mnt(s)}, Within(10s));
      EXPECT_TRUE(l.ok()) << lazy.Describe() << "; " << l.Describe();
    }
    (void)s.mount->Unmount();
    EXPECT_EQ(CountMountsAt(Mnt(s)), 0) << "mnt_" << s.node << " still mounted";
  }

  // ---- a switch-back on several mounts at once ----

  // Starts a watch on each server (live ones), from `from`.
  std::vector<std::unique_ptr<OwnedWorker<SwitchBackResult>>> WatchSwitchBacks(const std::vector<Server*>& servers,
                                                                        Clock::time_point from,
                                                                        std::chrono::milliseconds within) {
    std::vector<std::unique_ptr<OwnedWorker<SwitchBackResult>>> tasks;
    const auto files = model_.KnownFiles();
    for (Server* s : servers) {
      auto t = std::make_unique<OwnedWorker<SwitchBackResult>>();
      t->Start([mnt = Mnt(*s), files, from, within](const OwnedWorker<SwitchBackResult>::State& st) {
        return WatchSwitchBack(st, mnt, files, from, within);
      });
      tasks.push_back(std::move(t));
    }
    return tasks;
  }

  // Joins the watches and checks them: switched back within `within`, no
  // stale read at the first moment on the master. Returns the results.
  std::vector<SwitchBackResult> ExpectSwitchBacks(const std::vector<Server*>& servers,
                                                  std::vector<std::unique_ptr<OwnedWorker<SwitchBackResult>>>& tasks,
                                                  std::chrono::milliseconds within, const std::string& when) {
    std::vector<SwitchBackResult> out;
    for (size_t i = 0; i < tasks.size(); ++i) {
      Server& s = *servers[i];
      // The watch ends by itself within `within` (plus one full read check).
      const bool joined = tasks[i]->Join(within + 60s);
      EXPECT_TRUE(joined) << "the switch-back watch of mnt_" << s.node << " is stuck";
      SwitchBackResult r = tasks[i]->result();
      (void)DaemonDied(s);
      std::printf("mnt_%s's return (%s), as status showed it:%s\n", s.node.c_str(), when.c_str(),
                  FirstLines(r.timeline, 60).c_str());
      EXPECT_GE(r.done_s, 0) << when << ": mnt_" << s.node << " does not read from the master with both NAS "
                             << "healthy and journal.pending 0 within "
                             << std::chrono::duration_cast<std::chrono::seconds>(within).count()
                             << " s; last status: " << r.last.dump(2);
      EXPECT_TRUE(r.stale.empty()) << when << ": the moment mnt_" << s.node << " first reported read_from "
                                   << "\"master\" (t=" << r.first_master_s << " s), " << r.stale.size() << " of "
                                   << r.checked << " files read through it were not the latest version "
                                   << "(it switched back while a write was missing on the master):"
                                   << FirstLines(r.stale);
      EXPECT_EQ(r.back_off_master, 0) << when << ": mnt_" << s.node << " went back to reading from the backup "
                                      << r.back_off_master << " times after reading from the master";
      out.push_back(std::move(r));
    }
    return out;
  }

  // ---- the scenario 3 set-up ----

  // Baseline, master outage, a writes and dies, b writes. Returns when a was killed.
  Clock::time_point OutageWithServerKilled() {
    EXPECT_NO_FATAL_FAILURE(WriteBaseline(50));
    if (HasFatalFailure()) return Clock::now();
    StartReader(B());
    for (auto& s : srv_) s.master->Kill();
    outage_at_ = Clock::now();
    for (auto& s : srv_) {
      EXPECT_NO_FATAL_FAILURE(ExpectShownDown(s, "master"));
      if (HasFatalFailure()) return Clock::now();
    }
    std::vector<FsOp> a_ops = {Mkdir("a/new")};
    for (int k = 0; k < 200; ++k) a_ops.push_back(Create(fmt::format("a/new/n{:03d}", k), Content("a during")));
    for (int k = 0; k < 20; ++k) {
      a_ops.push_back(Overwrite(fmt::format("b/base/f{:03d}", k), Content("a overwrote b's file")));
    }
    const BatchResult ra = RunOn(A(), "outage", a_ops);
    const json sa = StatusNow(A());
    std::printf("a before it is killed: %s\n", Brief(sa).c_str());
    EXPECT_GT(Num(Get(sa, "/journal/pending")), 0) << "a's journal holds nothing for the master: " << Brief(sa);
    EXPECT_NO_FATAL_FAILURE(KillServer(A()));
    const auto killed_at = Clock::now();
    std::vector<FsOp> b_ops = {Mkdir("b/new")};
    for (int k = 0; k < 100; ++k) b_ops.push_back(Create(fmt::format("b/new/n{:03d}", k), Content("b during")));
    for (int k = 0; k < 10; ++k) {
      b_ops.push_back(Overwrite(fmt::format("a/base/f{:03d}", k), Content("b overwrote a's file")));
    }
    const BatchResult rb = RunOn(B(), "outage, a dead", b_ops);
    ExpectNoOpFailures("during the master outage");
    std::printf("outage writes: a %zu ops in %.2f s, b %zu ops in %.2f s\n", ra.results.size(), ra.seconds,
                rb.results.size(), rb.seconds);
    return killed_at;
  }

  Server srv_[2];
  std::string store_master_, store_backup_;
  int peer_timeout_s_ = 10;

  Model model_;
  std::map<std::string, std::string> stable_;  // the readers' files
  std::map<std::string, std::set<std::string>> stable_dirs_;
  std::vector<std::string> op_failures_;
  int ops_ = 0;
  Clock::time_point last_write_ = Clock::now();
  Clock::time_point outage_at_;
};

// ---- 1. two writers, both NAS healthy ---------------------------------------------

// a and b write at the same time, each its own 200 new files, then each
// overwrites 100 of the other's; then 20 times a write through a is polled
// through b until b reads it (every one within 3 s). Both stores identical
// and equal to the model, every file read back through both mounts.
TEST_F(PeersTest, ConcurrentWritersBothHealthy) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 10}));
  std::vector<FsOp> create[2], over[2];
  for (int i = 0; i < 2; ++i) {
    const std::string& node = srv_[i].node;
    const std::string& other = srv_[1 - i].node;
    create[i].push_back(Mkdir(node));
    for (int k = 0; k < 200; ++k) {
      const std::string rel = fmt::format("{}/f{:03d}", node, k);
      create[i].push_back(Create(rel, Content(node + " wrote " + rel)));
    }
    for (int k = 0; k < 200; k += 2) {
      const std::string rel = fmt::format("{}/f{:03d}", other, k);
      over[i].push_back(Overwrite(rel, Content(node + " overwrote " + rel)));
    }
  }
  const auto [ca, cb] = RunConcurrently("creates", create[0], create[1]);
  const auto [oa, ob] = RunConcurrently("overwrites of the other's", over[0], over[1]);
  ExpectNoOpFailures("both NAS healthy");

  std::vector<double> ms;
  ASSERT_NO_FATAL_FAILURE(ExpectVisible("vis", 20, &ms));
  ExpectStoresEqualModel("after two concurrent writers");
  for (auto& s : srv_) ExpectSettled(s, "after two concurrent writers");
  Figures("ConcurrentWritersBothHealthy",
          fmt::format("creates a={:.2f}s b={:.2f}s (200 each, max op {:.0f}/{:.0f} ms) overwrites a={:.2f}s "
                      "b={:.2f}s (100 each) visibility_ms {} failed_ops={}",
                      ca.seconds, cb.seconds, ca.max_ms, cb.max_ms, oa.seconds, ob.seconds, VisibleFigures(ms),
                      op_failures_.size()));
}

// ---- 2. a master outage under two writers ------------------------------------------

// The check. Both write before the outage; every path to the master
// dies; during it each writes 400 new files, overwrites 50 of the other's,
// deletes 30 of its own and renames 10 of the other's, and b overwrites 50
// files a just made; a reader on each mount sees no failure. The masters
// return: within 40 s both mounts read from the master with nothing pending,
// and the moment each first reports read_from "master", every model file
// read through it is the latest version (no server switched back while the
// other still held writes the master lacked; b's path to the master is
// slowed while they return, so b's replay is the later one). During the
// outage each shows the other alive with writes pending for the master;
// after it, with nothing pending.
TEST_F(PeersTest, MasterOutageTwoWriters) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 10}));
  ASSERT_NO_FATAL_FAILURE(WriteBaseline(100));
  for (auto& s : srv_) StartReader(s);
  std::this_thread::sleep_for(300ms);

  for (auto& s : srv_) s.master->Kill();
  outage_at_ = Clock::now();
  for (auto& s : srv_) ASSERT_NO_FATAL_FAILURE(ExpectShownDown(s, "master"));
  const double detect_s = SecondsSince(outage_at_);

  std::vector<FsOp> ops[2];
  for (int i = 0; i < 2; ++i) {
    const std::string& node = srv_[i].node;
    const std::string& other = srv_[1 - i].node;
    std::vector<FsOp> rest;
    for (int k = 0; k < 400; ++k) rest.push_back(Create(fmt::format("{}/new/n{:03d}", node, k), Content(node + " during", 16000)));
    for (int k = 0; k < 50; ++k) {
      rest.push_back(Overwrite(fmt::format("{}/base/f{:03d}", other, k), Content(node + " overwrote during")));
    }
    for (int k = 50; k < 80; ++k) rest.push_back(Unlink(fmt::format("{}/base/f{:03d}", node, k)));
    for (int k = 80; k < 90; ++k) {
      rest.push_back(Rename(fmt::format("{}/base/f{:03d}", other, k), fmt::format("{}/base/r_by_{}_{:03d}", other, node, k)));
    }
    std::shuffle(rest.begin(), rest.end(), rng_);
    ops[i].push_back(Mkdir(node + "/new"));
    ops[i].insert(ops[i].end(), rest.begin(), rest.end());
  }
  const auto [ra, rb] = RunConcurrently("the master outage", ops[0], ops[1]);
  std::vector<FsOp> a_shared, b_shared;
  for (int k = 0; k < 50; ++k) {
    a_shared.push_back(Create(fmt::format("shared/s{:02d}", k), Content("a made shared")));
    b_shared.push_back(Overwrite(fmt::format("shared/s{:02d}", k), Content("b overwrote shared")));
  }
  const BatchResult sa = RunOn(A(), "shared files", a_shared);
  const BatchResult sb = RunOn(B(), "a's shared files", b_shared);
  ExpectNoOpFailures("during the master outage");
  std::vector<double> vis_outage, vis_after;
  ASSERT_NO_FATAL_FAILURE(ExpectVisible("vis_outage", 10, &vis_outage));

  // During the outage: each server journaled its writes and sees the other
  // alive with writes pending for the master.
  for (auto& s : srv_) {
    const Server& o = Other(s);
    json st;
    const bool ok = WaitForStatus(
        s,
        [&](const json& j) {
          return StateOf(j, "master") == "down" && ReadFrom(j) == "backup" && Num(Get(j, "/journal/pending")) > 0 &&
                 Get(PeerOf(j, o.node), "/alive") == true && Num(Get(PeerOf(j, o.node), "/pending_master")) > 0;
        },
        10s, &st);
    EXPECT_TRUE(ok) << "during the outage, mnt_" << s.node << " should show the master down, reads on the backup, "
                    << "journal.pending > 0 and peer " << o.node << " alive with pending_master > 0: " << Brief(st);
    std::printf("mnt_%s during the outage: %s\n", s.node.c_str(), Brief(st).c_str());
  }

  // The masters return. For its first seconds back, b's path to the master
  // answers a few ms late, so b's replay ends well after a's: a server that
  // switched back on its own journal alone would serve stale reads the
  // moment it did.
  auto* slow = dynamic_cast<FaultfsNas*>(B().master.get());
  if (slow != nullptr) {
    ASSERT_TRUE(slow->SetFaults(fmt::format("delay_ms={}", kSlowReplayDelayMs)));
  }
  const auto back = Clock::now();
  std::vector<Server*> both = {&A(), &B()};
  auto watches = WatchSwitchBacks(both, back, kSwitchBackWithin);
  for (auto& s : srv_) ASSERT_EQ(s.master->Remount(), "") << s.node << "_master server";
  if (slow != nullptr) {
    std::this_thread::sleep_until(back + kSlowReplayFor);
    ASSERT_TRUE(slow->SetFaults(""));
  }
  const auto results = ExpectSwitchBacks(both, watches, kSwitchBackWithin, "after the master outage");
  LoadStats reads[2];
  for (int i = 0; i < 2; ++i) ExpectNoFailedRead(srv_[i], "through the outage and the return", &reads[i]);
  ASSERT_NO_FATAL_FAILURE(ExpectVisible("vis_after", 10, &vis_after));
  ExpectStoresEqualModel("after the master returned");
  for (auto& s : srv_) ExpectSettled(s, "after the master returned");
  Figures("MasterOutageTwoWriters", fmt::format("visibility_ms during the outage {}, after the switch-back {}",
                                                VisibleFigures(vis_outage), VisibleFigures(vis_after)));
  Figures("MasterOutageTwoWriters",
          fmt::format("detect_s={:.2f} outage_ops a={} in {:.2f}s b={} in {:.2f}s shared a={:.2f}s b={:.2f}s "
                      "first_master_s a={:.2f} b={:.2f} switch_back_s a={:.2f} b={:.2f} check_s a={:.2f} b={:.2f} "
                      "reads a={} b={} failed_reads={} max_read_ms={:.0f} failed_ops={} model_files={} "
                      "b_master_delay_ms={}",
                      detect_s, ra.results.size(), ra.seconds, rb.results.size(), rb.seconds, sa.seconds, sb.seconds,
                      results[0].first_master_s, results[1].first_master_s, results[0].done_s, results[1].done_s,
                      results[0].check_s, results[1].check_s, reads[0].ops, reads[1].ops,
                      reads[0].failures + reads[1].failures, std::max(reads[0].max_ms, reads[1].max_ms),
                      op_failures_.size(), model_.files().size(), slow != nullptr ? kSlowReplayDelayMs : 0));
}

// ---- 2b. a replay raced by another server's write ------------------------------------

// Another server's write reaches both NAS in no order against a replay's
// copy of the same path, so the copy can leave the returning master older
// (it read the backup before the write landed there and wrote the master
// after it did). The test plants that outcome: in the middle of a's replay
// (slowed by a 2 ms delay on a's path to the master), a file a has already
// copied gets an older version on the master's store. Before it switches
// back, a compares what it replayed on both NAS and copies again what still
// differs an io_timeout later: the stores end identical, and a's status
// counts the path under counters.settled_paths. Without that pass the
// master keeps the older version.
TEST_F(PeersTest, AReplayRacedByAnotherServerIsSettled) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 10}));
  auto* slow = dynamic_cast<FaultfsNas*>(A().master.get());
  if (slow == nullptr) GTEST_SKIP() << "needs faultfs NAS servers (a delay on a's path to the master)";
  // The directory exists on both NAS, so the replay copies each file on its
  // own (a directory made during the outage would be copied whole).
  (void)RunOn(A(), "the directory", {Mkdir("race")});
  for (auto& s : srv_) s.master->Kill();
  for (auto& s : srv_) ASSERT_NO_FATAL_FAILURE(ExpectShownDown(s, "master"));
  std::vector<FsOp> ops;
  for (int k = 0; k < 300; ++k) ops.push_back(Create(fmt::format("race/f{:03d}", k), Content("a during the outage")));
  (void)RunOn(A(), "writes during the outage", ops);
  ExpectNoOpFailures("during the master outage");

  ASSERT_TRUE(slow->SetFaults("delay_ms=2"));
  for (auto& s : srv_) ASSERT_EQ(s.master->Remount(), "") << s.node << "_master server";
  json st;
  ASSERT_TRUE(WaitForStatus(
      A(),
      [](const json& j) {
        return Str(Get(j, "/journal/replay/state")) == "running" && Num(Get(j, "/journal/replay/done")) >= 10;
      },
      30s, &st))
      << "a's replay should be running past its 10th entry: " << Brief(st) << " done "
      << Get(st, "/journal/replay/done");
  // race/f000 was copied among the first (parents first, then names in order).
  const std::string planted = store_master_ + "/race/f000";
  ASSERT_TRUE(WriteFile(planted, "an older version")) << planted << ": " << std::strerror(errno);
  const timespec old_times[2] = {{1000000000, 0}, {1000000000, 0}};
  ASSERT_EQ(utimensat(AT_FDCWD, planted.c_str(), old_times, 0), 0) << std::strerror(errno);
  ASSERT_TRUE(slow->SetFaults(""));

  for (auto& s : srv_) {
    EXPECT_TRUE(WaitForStatus(s, SwitchedBack, kSwitchBackWithin, &st))
        << "mnt_" << s.node << " should read from the master with nothing pending: " << Brief(st);
  }
  ExpectStoresEqualModel("after a replay raced by a write");
  const int64_t settled = Num(Get(StatusNow(A()), "/counters/settled_paths"));
  EXPECT_GE(settled, 1) << "a should have copied race/f000 again";
  for (auto& s : srv_) ExpectSettled(s, "after a replay raced by a write");
  Figures("AReplayRacedByAnotherServerIsSettled", fmt::format("settled_paths={}", settled));
}

// A log a server left on the NAS and never removed (it stopped between
// draining its journal and removing the log) names writes the master lacks
// as far as the other servers can tell, so they keep reads off the master.
// The server that owns it, alive with nothing pending, removes it: reads
// are back on the master for both within a few probes.
TEST_F(PeersTest, ALeftoverLogOfALiveServerIsRemovedByIt) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 600}));
  const std::string dir = store_backup_ + "/.nasfs/peers/a";
  ASSERT_EQ(RunCommand({"mkdir", "-p", dir}).exit_code, 0);
  ASSERT_TRUE(WriteFile(dir + "/lacks-master.log", "left over by an earlier run"));
  const bool gone = WaitFor([&] { return !ReadFile(dir + "/lacks-master.log").has_value(); }, 10s);
  EXPECT_TRUE(gone) << "a should remove its own leftover log within 10 s";
  for (auto& s : srv_) {
    json st;
    EXPECT_TRUE(WaitForStatus(s, SwitchedBack, 10s, &st))
        << "mnt_" << s.node << " should read from the master again: " << Brief(st);
  }
  ExpectStoresEqualModel("after the leftover log");
}

// A hard link made on a, its first name removed on b: a never hears of
// the removal, yet the file lives on under the name a's applications use.
// Reading, stat'ing and appending through that name on a keep working
// (they once answered ENOENT for as long as a's kernel held the file), and
// both NAS end with the appended file.
TEST_F(PeersTest, AHardLinkOutlivesItsFirstNameRemovedByAnotherServer) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 600}));
  ASSERT_EQ(mkdir(M(A(), "hl").c_str(), 0755), 0) << std::strerror(errno);
  ASSERT_TRUE(WriteFile(M(A(), "hl/first"), "v1\n"));
  ASSERT_EQ(link(M(A(), "hl/first").c_str(), M(A(), "hl/second").c_str()), 0) << std::strerror(errno);
  struct stat st {};
  ASSERT_EQ(stat(M(A(), "hl/second").c_str(), &st), 0) << std::strerror(errno);
  ASSERT_EQ(st.st_nlink, 2u);
  // a's kernel keeps the file (an open fd, like nginx's open_file_cache).
  const int fd = open(M(A(), "hl/second").c_str(), O_RDWR | O_APPEND);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  ASSERT_EQ(unlink(M(B(), "hl/first").c_str()), 0) << std::strerror(errno);
  std::this_thread::sleep_for(1500ms);  // past cache_timeout: a asks nasfs again
  EXPECT_EQ(stat(M(A(), "hl/second").c_str(), &st), 0) << "stat through a: " << std::strerror(errno);
  EXPECT_EQ(st.st_nlink, 1u);
  EXPECT_EQ(fstat(fd, &st), 0) << "fstat through a: " << std::strerror(errno);
  EXPECT_EQ(write(fd, "v2\n", 3), 3) << "append through a: " << std::strerror(errno);
  close(fd);
  // O_DIRECT: from nasfs, not from a's page cache.
  const int rfd = open(M(A(), "hl/second").c_str(), O_RDONLY | O_DIRECT);
  ASSERT_GE(rfd, 0) << std::strerror(errno);
  alignas(4096) static char buf[4096];
  const ssize_t n = read(rfd, buf, sizeof buf);
  close(rfd);
  EXPECT_EQ(n, 6) << "read through a: " << std::strerror(errno);
  if (n > 0) {
    EXPECT_EQ(std::string(buf, static_cast<size_t>(n)), "v1\nv2\n");
  }
  for (const auto* store : {&store_master_, &store_backup_}) {
    EXPECT_EQ(ReadFile(*store + "/hl/second"), std::optional<std::string>("v1\nv2\n")) << *store;
    EXPECT_FALSE(ReadFile(*store + "/hl/first").has_value()) << *store;
  }
  EXPECT_NO_TREE_DIFFS(CompareTrees(store_master_, store_backup_));
}

// ---- 3. a server killed during the outage ------------------------------------------

// a writes during a master outage and is SIGKILLed, never to return; b
// writes too. With peer_timeout=3, b counts a dead, and once the masters are
// back b finishes a's replay from what a left on the backup: within 40 s b
// reads from the master with nothing pending, and both stores hold every
// write a acknowledged. Then a comes back with its journal and settles too.
TEST_F(PeersTest, ServerKilledDuringOutage) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 3}));
  const auto killed_at = OutageWithServerKilled();
  ASSERT_FALSE(HasFatalFailure());

  json st;
  const bool dead = WaitForStatus(
      B(), [](const json& j) { return Get(PeerOf(j, "a"), "/alive") == false; }, 3s + 10s, &st);
  const double dead_after_s = SecondsSince(killed_at);
  EXPECT_TRUE(dead) << "b does not show peer a dead (alive false) " << dead_after_s
                    << " s after a was killed, with peer_timeout=3: " << Brief(st);
  std::printf("b shows a dead %.2f s after a was killed: peer %s\n", dead_after_s, PeerOf(st, "a").dump().c_str());

  const auto back = Clock::now();
  std::vector<Server*> only_b = {&B()};
  auto watches = WatchSwitchBacks(only_b, back, kSwitchBackWithin);
  for (auto& s : srv_) ASSERT_EQ(s.master->Remount(), "") << s.node << "_master server";
  const auto results = ExpectSwitchBacks(only_b, watches, kSwitchBackWithin, "after the master outage, a dead");
  LoadStats reads;
  ExpectNoFailedRead(B(), "through the outage and the return", &reads);
  const json peer_a = PeerOf(StatusNow(B()), "a");
  EXPECT_EQ(Get(peer_a, "/alive"), false) << "after the takeover, b's status of peer a: " << peer_a.dump();
  ExpectStoresEqualModel("after b finished a's replay");
  ExpectSettled(B(), "after b finished a's replay");

  // a comes back after all, with its journal still listing what the master
  // lacked: its replay finds those paths already there (b replayed them)
  // and it switches back, changing nothing.
  const auto again = Clock::now();
  ASSERT_NO_FATAL_FAILURE(Mount(A()));
  const double a_back_s = SecondsSince(again);
  const json a_st = StatusNow(A());
  EXPECT_GT(Num(Get(a_st, "/journal/replay/done")), 0)
      << "a's restart should have replayed what its journal held: " << a_st.dump();
  ExpectStoresEqualModel("after a returned with its journal");
  for (auto& s : srv_) ExpectSettled(s, "after a returned with its journal");
  Figures("ServerKilledDuringOutage", fmt::format("a_restarted_and_on_master_s={:.2f} a_replayed={}", a_back_s,
                                                  Num(Get(a_st, "/journal/replay/done"))));
  Figures("ServerKilledDuringOutage",
          fmt::format("peer_dead_after_s={:.2f} first_master_s={:.2f} switch_back_s={:.2f} check_s={:.2f} "
                      "reads={} failed_reads={} failed_ops={} model_files={} peer_a_after={}",
                      dead_after_s, results[0].first_master_s, results[0].done_s, results[0].check_s, reads.ops,
                      reads.failures, op_failures_.size(), model_.files().size(), peer_a.dump()));
}

// The same with peer_timeout=600: b does not count a dead, so it does not
// switch back by itself (a's writes are still missing on the master); an
// operator's `nasfsctl replay MNT --node a` makes b finish a's replay at
// once. An unknown node name is refused.
TEST_F(PeersTest, OperatorTakesOverWithReplayNode) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 600}));
  (void)OutageWithServerKilled();
  ASSERT_FALSE(HasFatalFailure());

  const auto back = Clock::now();
  for (auto& s : srv_) ASSERT_EQ(s.master->Remount(), "") << s.node << "_master server";
  // For 5 s, b must not read from the master: a's writes are not there.
  std::vector<std::string> early;
  json st;
  while (Clock::now() < back + 5s) {
    st = StatusNow(B());
    if (ReadFrom(st) == "master") {
      early.push_back(fmt::format("t={:.2f}s {}", SecondsSince(back), Brief(st)));
    }
    std::this_thread::sleep_for(100ms);
  }
  EXPECT_TRUE(early.empty()) << "b read from the master while a (dead, its lease of 600 s not yet out) still held "
                             << "writes the master lacks:" << FirstLines(early, 5);
  std::printf("b 5 s after the masters returned: %s\n", Brief(st).c_str());
  EXPECT_EQ(Get(PeerOf(st, "a"), "/alive"), true) << "with peer_timeout=600, a counts as alive: " << Brief(st);
  EXPECT_GT(Num(Get(PeerOf(st, "a"), "/pending_master")), 0)
      << "a left writes the master lacks; b's status should count them: " << Brief(st);

  // (A nasfsctl without --node refuses every such call as a usage error.)
  const CommandResult help = RunCommand({NasfsctlBin(), "replay", "--help"}, Within(10s));
  EXPECT_NE((help.out + help.err).find("--node"), std::string::npos)
      << "`nasfsctl replay --help` lists no --node option: " << help.Describe();
  const CommandResult unknown = RunCommand({NasfsctlBin(), "replay", Mnt(B()), "--node", "b_does_not_exist"}, Within(20s));
  EXPECT_FALSE(unknown.timed_out) << unknown.Describe();
  EXPECT_NE(unknown.exit_code, 0) << "a replay for an unknown node must be refused: " << unknown.Describe();
  EXPECT_FALSE(unknown.err.empty() && unknown.out.empty()) << "refused without a message: " << unknown.Describe();

  const auto take_over = Clock::now();
  std::vector<Server*> only_b = {&B()};
  auto watches = WatchSwitchBacks(only_b, take_over, kSwitchBackWithin);
  const CommandResult replay = RunCommand({NasfsctlBin(), "replay", Mnt(B()), "--node", "a"}, Within(20s));
  EXPECT_TRUE(replay.ok()) << replay.Describe();
  std::printf("%s\n", replay.Describe().c_str());
  const auto results = ExpectSwitchBacks(only_b, watches, kSwitchBackWithin, "after nasfsctl replay --node a");
  LoadStats reads;
  ExpectNoFailedRead(B(), "through the outage and the return", &reads);
  ExpectStoresEqualModel("after b finished a's replay on request");
  ExpectSettled(B(), "after b finished a's replay on request");
  Figures("OperatorTakesOverWithReplayNode",
          fmt::format("early_master_reads={} first_master_s={:.2f} switch_back_s={:.2f} (after the replay "
                      "command) check_s={:.2f} reads={} failed_reads={} failed_ops={} model_files={}",
                      early.size(), results[0].first_master_s, results[0].done_s, results[0].check_s, reads.ops,
                      reads.failures, op_failures_.size(), model_.files().size()));
}

// ---- 4. a partition: split brain ----------------------------------------------------

// a loses its path to the backup, b its path to the master: each writes to
// the NAS it sees. a makes A1..A20 and writes "a-version" into S1..S10
// (files both had), deletes D1, and later deletes X1; b, ~50 ms later, makes
// B1..B20, writes "b-version" into S1..S10, and modifies M1 and X1. The
// heal: both mounts healthy on the master with nothing pending within 60 s,
// a split brain counted; the stores identical; S* hold b's version (the
// newer) on both; a's version of each kept under .nasfs/conflicts/<id>/ on
// both NAS and listed by `nasfsctl conflicts --json`, invisible through the
// mount; no version written during the partition lost. Then a restore of
// S1's kept version: "a-version" read through both mounts within 3 s, and
// "b-version" kept in turn.
// a loses its backup and writes: its log tells b the backup lacks those
// writes, so b takes its backup out of reads while a replays. Then b loses
// the master. b's backup holds every write of b's own and lacks only a's
// newest ones: it serves (as it would had the master died a moment
// earlier), instead of leaving b with no NAS at all (the soak: every read
// and write through b failed with EIO until the master came back). The
// heal merges the two sides.
TEST_F(PeersTest, ABackupWaitingOnlyForAnotherServersReplayServesWhenTheMasterDies) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 10}));
  RunOn(B(), "before the faults", {Mkdir("own"), Create("own/b1", "b's before\n"), Mkdir("fromA")});
  ASSERT_TRUE(op_failures_.empty()) << FirstLines(op_failures_);
  std::this_thread::sleep_for(300ms);

  A().backup->Kill();
  ASSERT_NO_FATAL_FAILURE(ExpectShownDown(A(), "backup"));
  RunOn(A(), "a's backup out", {Create("fromA/a1", "a while its backup is out\n")});
  json st;
  ASSERT_TRUE(WaitForStatus(B(), [](const json& j) { return StateOf(j, "backup") == "recovering"; }, 10s, &st))
      << "b never took its backup out of reads for a's writes: " << st.dump(2);

  // Read through b from the moment its master dies: every read answered
  // (the first ones find the master dead and are served by the backup).
  // Several readers at once: a read that found the master dead just after
  // another request took it down once answered EIO, before that request
  // had let the backup serve alone (an hour soak at a71463d, t=889 s).
  std::vector<std::string> failed_reads;
  std::mutex failed_mu;
  std::atomic<bool> go{false};
  const auto start = Clock::now() + 100ms;
  std::vector<std::thread> readers;
  for (int i = 0; i < 8; ++i)
    readers.emplace_back([&] {
      while (!go) std::this_thread::yield();
      for (const auto until = start + 2s; Clock::now() < until;) {
        const auto got = ReadDirect(M(B(), "own/b1"));
        if (got != std::optional<std::string>("b's before\n")) {
          const int e = errno;
          std::lock_guard lk(failed_mu);
          failed_reads.push_back(
              fmt::format("{:.0f} ms after the kill: {}", MsSince(start), got ? "wrong bytes" : std::strerror(e)));
        }
        std::this_thread::sleep_for(2ms);
      }
    });
  std::this_thread::sleep_until(start);
  go = true;
  B().master->Kill();
  for (auto& t : readers) t.join();
  EXPECT_TRUE(failed_reads.empty()) << failed_reads.size() << " reads of b's own file failed with b's master dead:"
                                    << FirstLines(failed_reads);
  ASSERT_TRUE(WaitForStatus(
      B(), [](const json& j) { return ReadFrom(j) == "backup" && StateOf(j, "backup") == "healthy"; }, kDetectWithin,
      &st))
      << "b's backup, which holds all of b's writes, does not serve once b's master died: " << st.dump(2);
  EXPECT_EQ(ReadFile(Mnt(B()) + "/own/b1").value_or("(unreadable)"), "b's before\n");
  RunOn(B(), "b's master out", {Create("own/b2", "b alone on its backup\n")});
  ExpectNoOpFailures("with b on its backup alone");

  const auto heal = Clock::now();
  ASSERT_EQ(A().backup->Remount(), "") << "a_backup server";
  ASSERT_EQ(B().master->Remount(), "") << "b_master server";
  ASSERT_NO_FATAL_FAILURE(ExpectBothSwitchBack(heal));
  for (auto& s : srv_) ExpectSettled(s, "after the heal");
  ExpectStoresEqualModel("after the heal");
  for (const std::string* store : {&store_master_, &store_backup_}) {
    EXPECT_EQ(ReadFile(*store + "/fromA/a1").value_or("(missing)"), "a while its backup is out\n") << *store;
    EXPECT_EQ(ReadFile(*store + "/own/b2").value_or("(missing)"), "b alone on its backup\n") << *store;
  }
}

// A server that starts while another server's log on the backup lists
// writes the master lacks reads from the backup from its first request
// (the hour soak: b, restarted, read from such a master for 500 ms, until
// a probe read the logs: 60 stale reads). b's view of the backup answers
// 50 ms late here, so its first probe, which reads the logs, ends long
// after b's first read.
TEST_F(PeersTest, AServerStartingWhileAnotherHoldsWritesTheMasterLacksReadsTheBackup) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 600}));
  auto* b_backup = dynamic_cast<FaultfsNas*>(B().backup.get());
  if (b_backup == nullptr) GTEST_SKIP() << "needs faultfs (a NAS that answers late)";
  RunOn(B(), "before", {Mkdir("d"), Create("d/x", "before\n")});
  ASSERT_TRUE(op_failures_.empty()) << FirstLines(op_failures_);
  ASSERT_EQ(B().mount->Unmount(), "") << "unmounting mnt_b";
  B().mount.reset();

  A().master->Kill();
  ASSERT_NO_FATAL_FAILURE(ExpectShownDown(A(), "master"));
  RunOn(A(), "a's master out", {Overwrite("d/x", "a on the backup alone\n"), Create("d/y", "new from a\n")});
  ASSERT_TRUE(op_failures_.empty()) << FirstLines(op_failures_);

  ASSERT_TRUE(b_backup->SetFaults("delay_ms=50"));
  B().spec.extra_options += ",io_timeout=5000";
  B().mount = std::make_unique<MountedNasfs>(ws_, B().spec);
  ASSERT_TRUE(B().mount->mounted()) << B().mount->error() << "\nlog:\n" << Tail(B().mount->Log(), 40);
  const auto x = ReadFile(M(B(), "d/x"));
  const auto y = ReadFile(M(B(), "d/y"));
  const json st = StatusNow(B());
  EXPECT_EQ(x.value_or("(unreadable)"), "a on the backup alone\n") << "b's first read was stale: " << Brief(st);
  EXPECT_EQ(y.value_or("(unreadable)"), "new from a\n") << "b's first read was stale: " << Brief(st);
  EXPECT_EQ(ReadFrom(st), "backup") << Brief(st);
  ASSERT_TRUE(b_backup->SetFaults(""));

  const auto heal = Clock::now();
  ASSERT_EQ(A().master->Remount(), "") << "a_master server";
  ASSERT_NO_FATAL_FAILURE(ExpectBothSwitchBack(heal));
  for (auto& s : srv_) ExpectSettled(s, "after the heal");
  ExpectStoresEqualModel("after the heal");
  EXPECT_EQ(ReadFile(M(B(), "d/x")).value_or("(unreadable)"), "a on the backup alone\n");
}

// Each side of a split brain writes into a directory and then chmods it. The
// merge copies the new files, which stamps the directory's times on the
// side that lacked them; settling those times once took the mode along
// (the older chmod-less one), and a chmod listed after the directory's
// times was not listed at all. Both chmods must survive, on both NAS.
TEST_F(PeersTest, ASplitBrainMergeKeepsEachSidesChmodOfADirectory) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 10}));
  RunOn(A(), "before the partition", {Mkdir("da"), Mkdir("db")});
  ASSERT_TRUE(op_failures_.empty()) << FirstLines(op_failures_);
  std::this_thread::sleep_for(300ms);

  A().backup->Kill();
  B().master->Kill();
  ASSERT_NO_FATAL_FAILURE(ExpectShownDown(A(), "backup"));
  ASSERT_NO_FATAL_FAILURE(ExpectShownDown(B(), "master"));
  RunOn(A(), "partition", {Create("da/x", "a's file\n")});
  ASSERT_EQ(Errno(chmod((Mnt(A()) + "/da").c_str(), 0700)), 0);
  RunOn(B(), "partition", {Create("db/y", "b's file\n")});
  ASSERT_EQ(Errno(chmod((Mnt(B()) + "/db").c_str(), 0750)), 0);
  ExpectNoOpFailures("during the partition");

  const auto heal = Clock::now();
  ASSERT_EQ(A().backup->Remount(), "") << "a_backup server";
  ASSERT_EQ(B().master->Remount(), "") << "b_master server";
  json st[2];
  ASSERT_TRUE(WaitSplitBrainHealed(heal, st)) << "after the heal:\n  a: " << Brief(st[0]) << "\n  b: " << Brief(st[1]);
  for (auto& s : srv_) ExpectSettled(s, "after the heal");
  ExpectStoresEqualModel("after the heal");
  for (const std::string* store : {&store_master_, &store_backup_}) {
    for (const auto& [dir, mode] : {std::pair<std::string, mode_t>{"da", 0700}, {"db", 0750}}) {
      struct stat sb{};
      ASSERT_EQ(Errno(stat((*store + "/" + dir).c_str(), &sb)), 0) << *store << "/" << dir;
      EXPECT_EQ(sb.st_mode & 07777, mode) << *store << "/" << dir << ": mode " << fmt::format("{:o}", sb.st_mode & 07777)
                                          << ", the chmod made during the split brain was lost";
    }
  }
}

TEST_F(PeersTest, PartitionSplitBrain) {
  ASSERT_NO_FATAL_FAILURE(StartAll({.peer_timeout_s = 10}));
  const std::string kA = "a-version", kB = "b-version";
  auto S = [](int i) { return fmt::format("split/S{}", i); };
  {
    std::vector<FsOp> ops = {Mkdir("split")};
    for (int i = 1; i <= 10; ++i) ops.push_back(Create(S(i), fmt::format("base of S{}\n", i)));
    for (const char* f : {"split/D1", "split/M1", "split/X1"}) ops.push_back(Create(f, fmt::format("base of {}\n", f)));
    RunOn(A(), "before the partition", ops);
    ASSERT_TRUE(op_failures_.empty()) << FirstLines(op_failures_);
  }
  std::this_thread::sleep_for(300ms);

  A().backup->Kill();
  B().master->Kill();
  const auto partition_at = Clock::now();
  ASSERT_NO_FATAL_FAILURE(ExpectShownDown(A(), "backup"));
  ASSERT_NO_FATAL_FAILURE(ExpectShownDown(B(), "master"));

  // Every version written during the partition: path -> contents.
  std::vector<std::pair<std::string, std::string>> written;
  std::vector<FsOp> a_ops, b_ops;
  for (int i = 1; i <= 20; ++i) a_ops.push_back(Create(fmt::format("split/A{}", i), fmt::format("a only: A{}\n", i)));
  for (int i = 1; i <= 10; ++i) a_ops.push_back(Overwrite(S(i), kA));
  a_ops.push_back(Unlink("split/D1"));
  // Both make the same new directory and upload different files into it:
  // both uploads must stay at their paths, neither kept as a conflict.
  a_ops.push_back(Mkdir("split/up"));
  a_ops.push_back(Create("split/up/from_a", "a's upload\n"));
  b_ops.push_back(Mkdir("split/up"));
  b_ops.push_back(Create("split/up/from_b", "b's upload\n"));
  for (int i = 1; i <= 20; ++i) b_ops.push_back(Create(fmt::format("split/B{}", i), fmt::format("b only: B{}\n", i)));
  for (int i = 1; i <= 10; ++i) b_ops.push_back(Overwrite(S(i), kB));
  b_ops.push_back(Overwrite("split/M1", "b modified M1\n"));
  b_ops.push_back(Overwrite("split/X1", "b modified X1\n"));
  for (const auto* ops : {&a_ops, &b_ops}) {
    for (const auto& op : *ops) {
      if (!op.data.empty()) written.emplace_back(op.path, op.data);
    }
  }
  RunOn(A(), "partition", a_ops);
  std::this_thread::sleep_for(50ms);  // b's versions are the newer
  RunOn(B(), "partition", b_ops);
  std::this_thread::sleep_for(50ms);
  RunOn(A(), "partition, after b", {Unlink("split/X1")});
  // X1: modified by b, deleted later by a: either outcome may win, but b's
  // version must not be lost (checked below).
  model_.Unknown("split/X1");
  ExpectNoOpFailures("during the partition");
  const double partition_s = SecondsSince(partition_at);
  for (auto& s : srv_) std::printf("mnt_%s during the partition: %s\n", s.node.c_str(), Brief(StatusNow(s)).c_str());

  // The heal.
  const auto heal = Clock::now();
  ASSERT_EQ(A().backup->Remount(), "") << "a_backup server";
  ASSERT_EQ(B().master->Remount(), "") << "b_master server";
  json st[2];
  const bool settled = WaitSplitBrainHealed(heal, st);
  const double settled_s = settled ? SecondsSince(heal) : -1;
  ASSERT_TRUE(settled) << "60 s after the heal, both mounts should read from the master with both NAS healthy, "
                       << "nothing pending, split_brain settled and counted (count >= 1) on at least one:\n  a: "
                       << Brief(st[0]) << "\n  b: " << Brief(st[1]);
  for (int i = 0; i < 2; ++i) {
    const json sb = Get(st[i], "/split_brain");
    std::printf("mnt_%s split_brain after the heal: %s\n", srv_[i].node.c_str(), sb.dump().c_str());
    if (Num(Get(sb, "/count")) >= 1) {
      EXPECT_EQ(Get(sb, "/state"), "resolved") << "mnt_" << srv_[i].node << ": " << sb.dump();
      EXPECT_TRUE(Get(sb, "/last/detected").is_string()) << "mnt_" << srv_[i].node << ": " << sb.dump();
      EXPECT_TRUE(Get(sb, "/last/resolved").is_string()) << "mnt_" << srv_[i].node << ": " << sb.dump();
    }
  }
  for (int i = 1; i <= 10; ++i) model_.Apply(Overwrite(S(i), kB));

  // The stores: identical; S* hold b's version.
  {
    const auto diffs = CompareTrees(store_master_, store_backup_);
    EXPECT_TRUE(diffs.empty()) << "after the heal, the stores differ:" << FirstLines(diffs);
  }
  for (int i = 1; i <= 10; ++i) {
    for (const std::string* store : {&store_master_, &store_backup_}) {
      const auto got = ReadFile(*store + "/" + S(i));
      EXPECT_EQ(got.value_or("(unreadable)"), kB) << *store << "/" << S(i) << ": the newer version (b's) must win";
    }
  }
  // The kept versions, listed and on both NAS.
  ConflictList cl = ListConflicts(Mnt(A()));
  ASSERT_EQ(cl.error, "");
  std::printf("nasfsctl conflicts %s --json: %s\n", Mnt(A()).c_str(), cl.list.dump().c_str());
  auto kept_in_both = [&](const json& c, const std::string& data) {
    for (const std::string* store : {&store_master_, &store_backup_}) {
      const std::string f = ConflictFile(*store, c, "data");
      if (f.empty() || ReadFile(f) != data) return false;
    }
    return true;
  };
  std::string s1_id;
  for (int i = 1; i <= 10; ++i) {
    const json* found = nullptr;
    for (const auto& c : cl.list) {
      if (ConflictPath(c) == S(i) && kept_in_both(c, kA)) found = &c;
    }
    if (found == nullptr) {
      std::vector<std::string> seen;
      for (const auto& c : cl.list) {
        if (ConflictPath(c) != S(i)) continue;
        seen.push_back(fmt::format("{}: data in store_master {}, in store_backup {}", c.dump(),
                                   Show(ReadFile(ConflictFile(store_master_, c, "data"))),
                                   Show(ReadFile(ConflictFile(store_backup_, c, "data")))));
      }
      ADD_FAILURE() << S(i) << ": no conflict listed whose .nasfs/conflicts/<id>/data holds '" << kA
                    << "' in both stores; its entries:" << FirstLines(seen);
      continue;
    }
    const json& c = *found;
    if (i == 1) s1_id = Str(Get(c, "/id"));
    for (const std::string* store : {&store_master_, &store_backup_}) {
      const std::string meta = ConflictFile(*store, c, "meta.json");
      EXPECT_TRUE(ReadFile(meta).has_value()) << meta << ": " << std::strerror(errno);
    }
    for (const char* field : {"id", "path", "kept_from", "winner", "kind", "reason", "kept_mtime_ns",
                              "winner_mtime_ns", "size", "detected", "node"}) {
      EXPECT_TRUE(c.contains(field)) << S(i) << "'s conflict has no \"" << field << "\": " << c.dump();
    }
    EXPECT_EQ(Num(Get(c, "/size")), static_cast<int64_t>(kA.size())) << c.dump();
    EXPECT_LT(Num(Get(c, "/kept_mtime_ns")), Num(Get(c, "/winner_mtime_ns")))
        << "the kept version must be the older: " << c.dump();
  }
  // The uploads into the directory both sides made are no conflicts.
  for (const auto& c : cl.list)
    EXPECT_NE(ConflictPath(c).rfind("split/up", 0), 0u)
        << "an upload made on one side only was kept as a conflict: " << c.dump();
  // Invisible through the mounts.
  for (auto& s : srv_) {
    struct stat sst;
    errno = 0;
    EXPECT_TRUE(lstat(M(s, ".nasfs").c_str(), &sst) != 0 && errno == ENOENT)
        << "mnt_" << s.node << "/.nasfs is visible: " << std::strerror(errno);
    EXPECT_TRUE(lstat(M(s, ".nasfs/conflicts").c_str(), &sst) != 0)
        << "mnt_" << s.node << "/.nasfs/conflicts is visible";
  }
  // No version lost: each is at its path on both NAS or kept on both.
  std::vector<std::string> lost;
  for (const auto& [path, data] : written) {
    const bool at_path = ReadFile(store_master_ + "/" + path) == data && ReadFile(store_backup_ + "/" + path) == data;
    bool kept = false;
    for (const auto& c : cl.list) kept = kept || (ConflictPath(c) == path && kept_in_both(c, data));
    if (!at_path && !kept) {
      lost.push_back(fmt::format("{} {}: at its path store_master holds {}, store_backup {}; not kept", path,
                                 Show(data), Show(ReadFile(store_master_ + "/" + path)),
                                 Show(ReadFile(store_backup_ + "/" + path))));
    }
  }
  EXPECT_TRUE(lost.empty()) << "versions written during the partition are lost:" << FirstLines(lost);
  ExpectStoresEqualModel("after the split brain was resolved");

  // A restore of S1's kept version.
  ASSERT_FALSE(s1_id.empty()) << "no kept version of " << S(1) << " to restore";
  const auto restore_at = Clock::now();
  const CommandResult restore = RunCommand({NasfsctlBin(), "conflicts", Mnt(A()), "--restore", s1_id}, Within(20s));
  ASSERT_TRUE(restore.ok()) << restore.Describe();
  double visible_ms[2] = {-1, -1};
  for (int i = 0; i < 2; ++i) {
    std::optional<std::string> got;
    if (WaitFor([&] { return (got = ReadDirect(M(srv_[i], S(1)))) == kA; }, kVisibilityCap, 10ms)) {
      visible_ms[i] = MsSince(restore_at);
    }
    EXPECT_TRUE(visible_ms[i] >= 0 && visible_ms[i] <= kVisibleWithinMs)
        << "after the restore, " << S(1) << " through mnt_" << srv_[i].node << " reads " << Show(got) << " ("
        << visible_ms[i] << " ms), expected '" << kA << "' within 3 s";
  }
  model_.Apply(Overwrite(S(1), kA));
  last_write_ = Clock::now();
  const ConflictList after = ListConflicts(Mnt(A()));
  EXPECT_EQ(after.error, "");
  bool b_kept = false;
  for (const auto& c : after.list) b_kept = b_kept || (ConflictPath(c) == S(1) && kept_in_both(c, kB));
  EXPECT_TRUE(b_kept) << "after the restore, the replaced '" << kB << "' of " << S(1)
                      << " is not kept as a conflict in both stores: " << after.list.dump();
  ExpectStoresEqualModel("after the restore");
  for (auto& s : srv_) ExpectSettled(s, "after the restore");
  Figures("PartitionSplitBrain",
          fmt::format("partition_s={:.2f} settled_s={:.2f} conflicts={} lost_versions={} restore_visible_ms a={:.0f} "
                      "b={:.0f} split_brain_count a={} b={}",
                      partition_s, settled_s, cl.list.size(), lost.size(), visible_ms[0], visible_ms[1],
                      Num(Get(st[0], "/split_brain/count")), Num(Get(st[1], "/split_brain/count"))));
}

}  // namespace
}  // namespace nasfs::e2e
