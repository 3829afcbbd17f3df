// The chaos soak: two web servers (nasfs mounts a and b) over one pair of
// NAS, under a randomized, seeded schedule of real faults, with every
// promise of DESIGN.md checked all along.
//
// Set-up (as tests/e2e/peers_test.cc): two stores <ws>/store_master and
// <ws>/store_backup, four faultfs views of them (a_master, a_backup,
// b_master, b_backup: each server's own path to each NAS, which can fail
// alone), two nasfs mounts <ws>/mnt_a (node=a) and <ws>/mnt_b (node=b) in
// the foreground with their logs in the workspace, each journal on a small
// tmpfs of its own (so the journal disk can be filled), a short io_timeout
// and probe_interval so that a soak minute holds many outages.
//
// Load, on both mounts at once:
//  - writers (NASFS_SOAK_WRITERS per mount, default 2), each in its own
//    subtree (a0/, a1/, b0/, ...), so the model of what was acknowledged is
//    exact per path: create, overwrite, append, pwrite, truncate, rename of
//    files (also over an existing file) and of directories, hard link,
//    symlink, mkdir, rmdir, unlink, chmod, setxattr;
//  - readers (NASFS_SOAK_READERS per mount, default 2) reading with O_DIRECT
//    (so the daemon answers, not the page cache) files of every writer, the
//    ones of their own server and of the other.
//
// Faults, on a schedule drawn from the seed: a NAS view hung (SIGSTOP),
// killed and remounted, unmounted and remounted, full (ENOSPC), failing
// (EIO on writes or on everything), slow (delay below io_timeout) or very
// slow (above it), flapping; each on one server's path only (a partition)
// or on both servers' paths to that NAS (an outage of the NAS); a split
// brain (a loses one NAS while b loses the other); nasfs SIGKILLed and
// restarted on the same journal and socket (sometimes after peer_timeout,
// so the other server takes over its replay; sometimes during an outage);
// the journal disk full. A fault on one NAS of a server starts only once
// that server shows the other NAS healthy (faulting both NAS of one
// server's path at once would make errors expected): when the other NAS is
// still being replayed onto, the fault goes to that NAS instead (a fault
// during a replay), else it waits up to 20 s and is skipped. Every fault is
// undone by an RAII guard, whatever happens.
//
// Invariants:
//  1. Nothing acknowledged is lost: at every quiescent point each model path
//     is on both stores and reads back exactly through both mounts (type,
//     content, mode, symlink target, xattr, hard-link structure, directory
//     listings). An operation that failed has an unknown outcome: its paths
//     are uncertain until the next quiescent point, which adopts what both
//     NAS (then identical) hold.
//  2. No stale read: a read through the writer's own server returns the
//     version acknowledged when the read started, or a newer one; through
//     the other server, one current at most cache_timeout + a slack before
//     (see CrossAllowance). A read that overlapped a write of that path
//     which shows intermediate states (open+write+close, truncate) and
//     matches no version is undecidable and skipped; ENOENT from read(2)
//     after open(2) succeeded counts as "absent". At each switch-back (a
//     mount first reporting read_from "master" again) every model path is
//     read through it at once. During a split brain the test makes, reads
//     of the other server's files are not judged until both mounts show it
//     healed (each side legitimately reads its own NAS meanwhile); so do
//     faults that make one (a server loses a NAS while the other server has
//     the other NAS out or still being replayed onto).
//  3. No request through a mount (each syscall: open, write, read, rename,
//     ...) takes longer than io_timeout + 0.5 s, and none fails while its
//     server has a healthy NAS and a working journal (DESIGN promise 3),
//     except through a daemon the test killed.
//  4. No daemon dies but the ones the test kills.
//  5. At each quiescent point (every NASFS_SOAK_QUIESCE_EVERY s, default
//     25: faults undone, writers paused, both mounts on the master with both
//     NAS healthy, nothing pending, the other server alive with nothing
//     pending, every wait bounded): the stores are identical (content,
//     mode, owner, mtime, link count, xattrs), `nasfsctl verify` exits 0 on
//     both mounts (and does not say "match" while the stores differ).
// Violations of 1-3 are recorded and the soak goes on; a quiescent point
// that fails (or a daemon death) ends it, since the model then no longer
// says what the NAS should hold.
//
// Environment: NASFS_SOAK_SECONDS (default 180, the last quiescent point
// included), NASFS_E2E_SEED (repeats a run's choices: the fault schedule and
// every writer's operations; their timing still depends on the machine),
// NASFS_SOAK_WRITERS, NASFS_SOAK_READERS, NASFS_SOAK_QUIESCE_EVERY,
// NASFS_SOAK_WRITE_PAUSE_MS (a writer's mean pause between operations, 12),
// NASFS_SOAK_SETTLE_S (how long a quiescent point may take to settle, 60),
// NASFS_SOAK_SKIP_OPS (operation kinds the writers leave out, e.g. "link":
// to look past a known bug, never to make a run pass), NASFS_SOAK_ARTIFACTS
// (where a failing run keeps its schedule, violations and both daemons'
// logs; default /tmp/nasfs-soak-<seed>-<pid>). A violation is printed at
// once ("[soak VIOLATION]"); at the end a failing run prints the seed, the
// whole fault schedule with times (relative and wall clock, to match the
// daemons' log lines), the first violation of each kind with the daemons'
// log lines around it, and the tail of both daemons' logs.
//
// Run: meson test -C BUILD soak --print-errorlogs -v (or BUILD/tests/soak/soak
// directly); an hour: NASFS_SOAK_SECONDS=3600 meson test -C BUILD soak -t 0.

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
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

using nlohmann::json;
using Clock = std::chrono::steady_clock;
using TimePoint = Clock::time_point;
using Ms = std::chrono::milliseconds;

constexpr TimePoint kNever = TimePoint::max();

// Run by hand (build/tests/soak/soak), the binaries are two levels up, not
// where mount_fixture's default (one level up) looks: point at them unless
// the environment already does (meson test sets all three).
const bool g_binaries_defaulted = [] {
  std::error_code ec;
  const auto exe = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return false;
  const auto build = exe.parent_path().parent_path().parent_path();
  const std::pair<const char*, const char*> bins[] = {
      {"NASFS_BIN", "fs/nasfs"}, {"NASFSCTL_BIN", "tools/nasfsctl"}, {"FAULTFS_BIN", "tests/faultfs"}};
  for (const auto& [var, rel] : bins) {
    if (std::getenv(var) == nullptr) setenv(var, (build / rel).c_str(), 0);
  }
  return true;
}();

// ---- settings -----------------------------------------------------------------

int EnvInt(const char* name, int def, int lo, int hi) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return def;
  return std::clamp(std::atoi(v), lo, hi);
}

struct Config {
  int seconds = EnvInt("NASFS_SOAK_SECONDS", 180, 5, 7 * 24 * 3600);
  int quiesce_every_s = EnvInt("NASFS_SOAK_QUIESCE_EVERY", 25, 5, 3600);
  int writers = EnvInt("NASFS_SOAK_WRITERS", 2, 1, 8);
  int readers = EnvInt("NASFS_SOAK_READERS", 2, 0, 8);
  // A writer pauses 0..2x this between operations (a replay has to catch
  // up with the writes it re-pends).
  int write_pause_ms = EnvInt("NASFS_SOAK_WRITE_PAUSE_MS", 12, 0, 10000);
  // A quiescent point's settle (the replays of everything the faults left,
  // coordinated between the two servers) must end within this. 60 s on the
  // machines CI runs on; a run on a machine several times slower (the
  // note says when one was) may raise it, never to pass a run that does
  // not settle at all.
  int settle_s = EnvInt("NASFS_SOAK_SETTLE_S", 60, 10, 3600);
  // Operation kinds the writers leave out (comma-separated names as
  // Op::Name gives them): to look past a known bug, never to pass a run.
  std::string skip_ops = std::getenv("NASFS_SOAK_SKIP_OPS") != nullptr ? std::getenv("NASFS_SOAK_SKIP_OPS") : "";
  // Short, so a soak minute holds many outages and their returns.
  int io_timeout_ms = 400;
  int probe_interval_ms = 150;
  int peer_timeout_s = 3;
  int cache_timeout_s = 1;
  // The journal's tmpfs: roomy for the journal, quick to fill.
  int journal_fs_mb = 32;
  // A writer's subtree is kept around this many entries.
  size_t max_nodes = 150;

  // Invariant 3's bound.
  Ms LatencyBound() const { return Ms(io_timeout_ms + 500); }
  // Invariant 2 for a file written through the other server: the reader's
  // kernel may hold names and attributes for cache_timeout; and when only
  // the writer's path to a NAS failed (a partition), the reader's server
  // goes on reading that NAS until its next probe of the other NAS finds
  // the writer's pending log there (WatchPeers): one probe interval plus
  // the probe itself (at most io_timeout), and some scheduling slack.
  Ms CrossAllowance() const { return Ms(cache_timeout_s * 1000 + probe_interval_ms + io_timeout_ms + 250); }
  // How long a path's history is kept beyond what any read check needs.
  Ms HistoryKeep() const { return CrossAllowance() + Ms(10000); }
};

// ---- time ---------------------------------------------------------------------

// Wall-clock "HH:MM:SS.mmm", as the daemons' spdlog lines carry it.
std::string WallNow() {
  timespec ts{};
  clock_gettime(CLOCK_REALTIME, &ts);
  tm t{};
  localtime_r(&ts.tv_sec, &t);
  return fmt::format("{:02d}:{:02d}:{:02d}.{:03d}", t.tm_hour, t.tm_min, t.tm_sec, ts.tv_nsec / 1000000);
}

double MsBetween(TimePoint a, TimePoint b) { return std::chrono::duration<double, std::milli>(b - a).count(); }

// ---- what a path holds --------------------------------------------------------

struct PathState {
  enum class Kind : uint8_t { kAbsent, kFile, kDir, kSymlink, kUnknown };
  Kind kind = Kind::kAbsent;
  uint64_t hash = 0;  // kFile: XXH3 of the bytes
  size_t size = 0;    // kFile

  static PathState Of(Kind k) {
    PathState s;
    s.kind = k;
    return s;
  }
  static PathState File(const std::string& data) {
    PathState s;
    s.kind = Kind::kFile;
    s.hash = XXH3_64bits(data.data(), data.size());
    s.size = data.size();
    return s;
  }
  bool operator==(const PathState& o) const {
    return kind == o.kind && (kind != Kind::kFile || (hash == o.hash && size == o.size));
  }
  std::string Show() const {
    switch (kind) {
      case Kind::kAbsent: return "absent";
      case Kind::kFile: return fmt::format("file({} bytes, xxh3 {:016x})", size, hash);
      case Kind::kDir: return "directory";
      case Kind::kSymlink: return "symlink";
      case Kind::kUnknown: return "unknown";
    }
    return "?";
  }
};

// One operation's effect on one path: from `start` (before its first
// syscall) to `end` (after its last; kNever while in flight) the path goes
// to `after`. `atomic`: no other state is visible in between (rename,
// link, unlink, truncate...); a data write (open+write+close) shows an
// empty or partial file on the way.
struct Event {
  TimePoint start, end;
  PathState after;
  bool atomic = true;
  std::string op;  // for reports
};

// The states a path went through. One writer owns each path, so its events
// never overlap; only the last one may be in flight.
struct History {
  PathState initial;  // before the first event kept
  std::deque<Event> events;

  // Drops what no read check needs any more, keeping the last few events
  // whatever their age (a report of a lost write shows them).
  void Trim(TimePoint now, Ms keep) {
    while (events.size() > 4 && events.front().end != kNever && events.front().end < now - keep) {
      initial = events.front().after;
      events.pop_front();
    }
  }
};

enum class Verdict { kOk, kSkip, kStale };

// Judges a read made in [t0, t1] that observed `seen`: acceptable are the
// state current at t0 - allowance and every state an operation overlapping
// [t0 - allowance, t1] left. A mismatch while a non-atomic operation
// overlapped is undecidable (it may be an intermediate state): skipped.
// `cross`: the path is the other server's. Until this server's kernel
// refreshes its cached attributes (cache_timeout), it may serve pages it
// cached of the previous version beside the new version's bytes from
// nasfs: a read that mixes the two is undecidable too, while a change lies
// in the window. (Telling the kernel at once, so it drops those pages, is
// issue 13's cross-server invalidation; DESIGN.md promises another server's
// change only within cache_timeout.) Outside the window, every read must be
// exact.
Verdict CheckRead(const History& h, TimePoint t0, TimePoint t1, Ms allowance, const PathState& seen,
                  std::string* why, bool cross = false) {
  const TimePoint from = t0 - allowance;
  PathState base = h.initial;
  std::vector<const Event*> overlapping;
  for (const Event& e : h.events) {
    if (e.end < from) {
      base = e.after;
    } else if (e.start <= t1) {
      overlapping.push_back(&e);
    }
  }
  bool unknown = base.kind == PathState::Kind::kUnknown;
  bool undecidable = false;
  if (seen == base) return Verdict::kOk;
  for (const Event* e : overlapping) {
    if (seen == e->after) return Verdict::kOk;
    unknown = unknown || e->after.kind == PathState::Kind::kUnknown;
    undecidable = undecidable || !e->atomic;
  }
  if (unknown || undecidable || (cross && !overlapping.empty())) return Verdict::kSkip;
  std::string s = fmt::format("read {}; acceptable: {} (current {:.0f} ms before the read began)", seen.Show(),
                              base.Show(), allowance.count() * 1.0);
  for (const Event* e : overlapping) {
    s += fmt::format("; {} (by `{}`, {:.0f}..{} ms from the read's start)", e->after.Show(), e->op,
                     MsBetween(t0, e->start), e->end == kNever ? "in flight" : fmt::format("{:.0f}", MsBetween(t0, e->end)));
  }
  // The versions before, for the report: what the reader may have seen.
  std::vector<std::string> older;
  for (const Event& e : h.events) {
    if (e.end < from) older.push_back(fmt::format("{} by `{}` acked {:.0f} ms from the read's start", e.after.Show(),
                                                  e.op, MsBetween(t0, e.end)));
  }
  if (!older.empty()) {
    s += "; earlier versions:";
    for (size_t i = older.size() > 4 ? older.size() - 4 : 0; i < older.size(); ++i) s += " [" + older[i] + "]";
  }
  *why = s;
  return Verdict::kStale;
}

// ---- one writer's model -----------------------------------------------------------

// A regular file's inode: shared by its hard links.
struct FileObj {
  std::string data;
  mode_t mode = 0644;
  std::string xattr;  // user.soak, "" when unset
};

struct Node {
  PathState::Kind kind = PathState::Kind::kDir;
  std::shared_ptr<FileObj> file;  // kFile
  std::string target;             // kSymlink
  mode_t mode = 0755;             // kDir
};

struct Op {
  enum class Kind {
    kCreate, kOverwrite, kAppend, kPwrite, kTruncate, kRename, kRenameOver, kRenameDir,
    kLink, kSymlink, kMkdir, kRmdir, kUnlink, kChmod, kSetxattr
  };
  Kind kind = Kind::kCreate;
  std::string path, to;  // to: rename's and link's new name
  std::string data;      // create/overwrite/append/pwrite; setxattr's value; symlink's target
  off_t off = 0;         // pwrite's offset; truncate's length
  mode_t mode = 0;       // chmod

  static const char* Name(Kind k) {
    switch (k) {
      case Kind::kCreate: return "create";
      case Kind::kOverwrite: return "overwrite";
      case Kind::kAppend: return "append";
      case Kind::kPwrite: return "pwrite";
      case Kind::kTruncate: return "truncate";
      case Kind::kRename: return "rename";
      case Kind::kRenameOver: return "rename_over";
      case Kind::kRenameDir: return "rename_dir";
      case Kind::kLink: return "link";
      case Kind::kSymlink: return "symlink";
      case Kind::kMkdir: return "mkdir";
      case Kind::kRmdir: return "rmdir";
      case Kind::kUnlink: return "unlink";
      case Kind::kChmod: return "chmod";
      case Kind::kSetxattr: return "setxattr";
    }
    return "?";
  }
  // A read overlapping a non-atomic operation may see a state between the
  // two. A truncate counts as one: nasfs reads a file in several NAS calls
  // when the NAS answers short (Backend::ReadFd), so a read racing a
  // truncate can return the old bytes cut at the new size rounded up to a
  // page (seen: 49152 bytes of a file going from 50048 to 47080).
  bool Atomic() const {
    return kind != Kind::kCreate && kind != Kind::kOverwrite && kind != Kind::kAppend && kind != Kind::kPwrite &&
           kind != Kind::kTruncate;
  }
  std::string What() const {
    switch (kind) {
      case Kind::kCreate: return fmt::format("create {} ({} bytes)", path, data.size());
      case Kind::kOverwrite: return fmt::format("overwrite {} ({} bytes)", path, data.size());
      case Kind::kAppend: return fmt::format("append {} ({} bytes)", path, data.size());
      case Kind::kPwrite: return fmt::format("pwrite {} ({} bytes at {})", path, data.size(), off);
      case Kind::kTruncate: return fmt::format("truncate {} to {}", path, off);
      case Kind::kRename: return fmt::format("rename {} -> {}", path, to);
      case Kind::kRenameOver: return fmt::format("rename {} over {}", path, to);
      case Kind::kRenameDir: return fmt::format("rename dir {} -> {}", path, to);
      case Kind::kLink: return fmt::format("link {} -> {}", path, to);
      case Kind::kSymlink: return fmt::format("symlink {} -> '{}'", path, data);
      case Kind::kMkdir: return "mkdir " + path;
      case Kind::kRmdir: return "rmdir " + path;
      case Kind::kUnlink: return "unlink " + path;
      case Kind::kChmod: return fmt::format("chmod {:o} {}", mode, path);
      case Kind::kSetxattr: return fmt::format("setxattr user.soak={} {}", data, path);
    }
    return "?";
  }
};

bool Under(const std::string& p, const std::string& dir) {
  return p.size() > dir.size() && p.compare(0, dir.size(), dir) == 0 && p[dir.size()] == '/';
}
std::string Parent(const std::string& p) {
  const auto i = p.rfind('/');
  return i == std::string::npos ? "" : p.substr(0, i);
}
std::string Leaf(const std::string& p) {
  const auto i = p.rfind('/');
  return i == std::string::npos ? p : p.substr(i + 1);
}

// What one writer had acknowledged in its subtree, and each path's history.
// Guarded by mu (the writer changes it; readers and the main thread read it).
class Model {
 public:
  Model(std::string root, int server) : root_(std::move(root)), server_(server) {}

  const std::string& root() const { return root_; }
  int server() const { return server_; }
  std::mutex mu;

  // ---- queries (caller holds mu) ----
  bool Uncertain(const std::string& p) const { return AtOrUnderAny(uncertain_, p); }
  bool UncertainBelow(const std::string& dir) const {
    for (auto it = uncertain_.lower_bound(dir + "/"); it != uncertain_.end() && Under(*it, dir); ++it) return true;
    return false;
  }
  const std::map<std::string, Node>& nodes() const { return nodes_; }
  const std::set<std::string>& uncertain() const { return uncertain_; }
  std::map<std::string, History>& history() { return history_; }

  PathState StateOf(const std::string& p) const {
    auto it = nodes_.find(p);
    if (it == nodes_.end()) return PathState::Of(PathState::Kind::kAbsent);
    if (it->second.kind == PathState::Kind::kFile) return PathState::File(it->second.file->data);
    return PathState::Of(it->second.kind);
  }
  std::vector<std::string> Children(const std::string& dir) const {
    std::vector<std::string> out;
    for (auto it = nodes_.lower_bound(dir + "/"); it != nodes_.end() && Under(it->first, dir); ++it) {
      if (Parent(it->first) == dir) out.push_back(it->first);
    }
    return out;
  }
  std::vector<std::string> LinksOf(const FileObj* f) const {
    std::vector<std::string> out;
    for (const auto& [p, n] : nodes_) {
      if (n.file.get() == f) out.push_back(p);
    }
    return out;
  }

  // Whether op takes the name p away from a regular file that lives on
  // under another name: a rename moves it, and an unlink or a rename over p
  // leaves its other hard links. A reader that opened p just before reads
  // that file, and its next changes come through the other name, in that
  // name's history, not p's: a read of p overlapping op may show any of
  // them. Such a read is judged like one racing a data write (a mismatch is
  // undecidable). The soak once reported it as a stale read: bytes of a
  // write through h17008 read through r17007, its other name, unlinked 2 ms
  // into the read.
  bool Detaches(const Op& op, const std::string& p) const {
    auto it = nodes_.find(p);
    if (it == nodes_.end() || !it->second.file) return false;
    auto other_names = [&] { return LinksOf(it->second.file.get()).size() > 1; };
    switch (op.kind) {
      case Op::Kind::kRename:
      case Op::Kind::kRenameOver: return p == op.path || (p == op.to && other_names());
      case Op::Kind::kRenameDir: return Under(p, op.path);
      case Op::Kind::kUnlink: return p == op.path && other_names();
      default: return false;
    }
  }

  // ---- the writer's side ----

  // A feasible operation drawn from rng, on paths that are not uncertain.
  Op Plan(std::mt19937_64& rng, size_t max_nodes, const std::string& skip_ops) {
    std::vector<std::string> dirs, files, symlinks, empty_dirs, movable_dirs;
    for (const auto& [p, n] : nodes_) {
      if (Uncertain(p)) continue;
      switch (n.kind) {
        case PathState::Kind::kDir:
          dirs.push_back(p);
          if (p != root_ && !UncertainBelow(p)) {
            movable_dirs.push_back(p);
            if (Children(p).empty()) empty_dirs.push_back(p);
          }
          break;
        case PathState::Kind::kFile: files.push_back(p); break;
        case PathState::Kind::kSymlink: symlinks.push_back(p); break;
        default: break;
      }
    }
    auto pick = [&](const std::vector<std::string>& v) -> const std::string& { return v[rng() % v.size()]; };
    auto fresh = [&](const char* prefix) {
      return pick(dirs) + "/" + fmt::format("{}{}", prefix, next_name_++);
    };
    const bool crowded = nodes_.size() > max_nodes;
    // Weights: kinds that cannot apply now are drawn again.
    struct W {
      Op::Kind k;
      int w;
    };
    const W weights[] = {
        {Op::Kind::kCreate, crowded ? 3 : 20}, {Op::Kind::kOverwrite, 14}, {Op::Kind::kAppend, 10},
        {Op::Kind::kPwrite, 8},                {Op::Kind::kTruncate, 6},   {Op::Kind::kRename, 6},
        {Op::Kind::kRenameOver, 4},            {Op::Kind::kRenameDir, 3},  {Op::Kind::kLink, crowded ? 1 : 4},
        {Op::Kind::kSymlink, crowded ? 1 : 4}, {Op::Kind::kMkdir, crowded ? 1 : 5},
        {Op::Kind::kRmdir, crowded ? 12 : 3},  {Op::Kind::kUnlink, crowded ? 30 : 7},
        {Op::Kind::kChmod, 5},                 {Op::Kind::kSetxattr, 3},
    };
    auto skipped = [&](Op::Kind k) {
      return ("," + skip_ops + ",").find("," + std::string(Op::Name(k)) + ",") != std::string::npos;
    };
    int total = 0;
    for (const auto& w : weights) total += skipped(w.k) ? 0 : w.w;
    for (int attempt = 0; attempt < 20 && total > 0; ++attempt) {
      int x = static_cast<int>(rng() % static_cast<uint64_t>(total));
      Op::Kind k = Op::Kind::kCreate;
      for (const auto& w : weights) {
        if (skipped(w.k)) continue;
        if (x < w.w) {
          k = w.k;
          break;
        }
        x -= w.w;
      }
      Op op;
      op.kind = k;
      switch (k) {
        case Op::Kind::kCreate:
          op.path = fresh("f");
          op.data = Content(rng);
          return op;
        case Op::Kind::kOverwrite:
        case Op::Kind::kAppend:
          if (files.empty()) continue;
          op.path = pick(files);
          op.data = Content(rng);
          return op;
        case Op::Kind::kPwrite: {
          if (files.empty()) continue;
          op.path = pick(files);
          const size_t size = nodes_.at(op.path).file->data.size();
          op.off = static_cast<off_t>(rng() % (size + 2048));
          op.data = RandomBytes(rng, 1 + rng() % 9000);
          return op;
        }
        case Op::Kind::kTruncate: {
          if (files.empty()) continue;
          op.path = pick(files);
          const size_t size = nodes_.at(op.path).file->data.size();
          op.off = static_cast<off_t>(rng() % 3 == 0 ? size + rng() % 5000 : rng() % (size + 1));
          return op;
        }
        case Op::Kind::kRename:
          if (files.empty() && symlinks.empty()) continue;
          op.path = (symlinks.empty() || (!files.empty() && rng() % 4 != 0)) ? pick(files) : pick(symlinks);
          op.to = fresh("r");
          return op;
        case Op::Kind::kRenameOver: {
          if (files.size() < 2) continue;
          op.path = pick(files);
          op.to = pick(files);
          // rename(2) between two names of one inode does nothing: not this.
          if (nodes_.at(op.path).file == nodes_.at(op.to).file) continue;
          return op;
        }
        case Op::Kind::kRenameDir: {
          if (movable_dirs.empty()) continue;
          op.path = pick(movable_dirs);
          std::vector<std::string> into;
          for (const auto& d : dirs) {
            if (d != op.path && !Under(d, op.path)) into.push_back(d);
          }
          if (into.empty()) continue;
          op.to = pick(into) + "/" + fmt::format("D{}", next_name_++);
          return op;
        }
        case Op::Kind::kLink:
          if (files.empty()) continue;
          op.path = pick(files);
          op.to = fresh("h");
          return op;
        case Op::Kind::kSymlink: {
          op.path = fresh("s");
          const int t = static_cast<int>(rng() % 20);
          const std::string parent = Parent(op.path);
          std::vector<std::string> siblings;
          for (const auto& c : Children(parent)) siblings.push_back(Leaf(c));
          if (t < 10 && !siblings.empty()) {
            op.data = pick(siblings);
          } else if (t < 15) {
            op.data = fmt::format("../x{}/y", rng() % 100);
          } else if (t < 19) {
            op.data = fmt::format("nowhere-{}", rng() % 1000);
          } else {
            op.data = "/etc/hostname";  // stored as is, never followed by nasfs
          }
          return op;
        }
        case Op::Kind::kMkdir:
          op.path = fresh("d");
          return op;
        case Op::Kind::kRmdir:
          if (empty_dirs.empty()) continue;
          op.path = pick(empty_dirs);
          return op;
        case Op::Kind::kUnlink:
          if (files.empty() && symlinks.empty()) continue;
          op.path = (symlinks.empty() || (!files.empty() && rng() % 4 != 0)) ? pick(files) : pick(symlinks);
          return op;
        case Op::Kind::kChmod: {
          static constexpr mode_t kFileModes[] = {0600, 0640, 0644, 0664, 0444, 0755};
          static constexpr mode_t kDirModes[] = {0700, 0750, 0755, 0775};
          const bool dir = files.empty() || (movable_dirs.size() > 0 && rng() % 3 == 0);
          if (dir) {
            if (movable_dirs.empty()) continue;
            op.path = pick(movable_dirs);
            op.mode = kDirModes[rng() % std::size(kDirModes)];
          } else {
            op.path = pick(files);
            op.mode = kFileModes[rng() % std::size(kFileModes)];
          }
          return op;
        }
        case Op::Kind::kSetxattr:
          if (files.empty()) continue;
          op.path = pick(files);
          op.data = fmt::format("v{}", rng() % 100000);
          return op;
      }
    }
    Op op;
    op.path = fresh("f");
    op.data = Content(rng);
    return op;
  }

  // The paths whose state (as a read sees it) the operation changes.
  std::vector<std::string> Affected(const Op& op) const {
    std::vector<std::string> out;
    auto links = [&](const std::string& p) {
      auto it = nodes_.find(p);
      if (it != nodes_.end() && it->second.file) {
        for (auto& l : LinksOf(it->second.file.get())) out.push_back(l);
      } else {
        out.push_back(p);
      }
    };
    switch (op.kind) {
      case Op::Kind::kOverwrite:
      case Op::Kind::kAppend:
      case Op::Kind::kPwrite:
      case Op::Kind::kTruncate:
      case Op::Kind::kChmod:
      case Op::Kind::kSetxattr:
        links(op.path);
        break;
      case Op::Kind::kRenameDir:
        out.push_back(op.path);
        out.push_back(op.to);
        for (auto it = nodes_.lower_bound(op.path + "/"); it != nodes_.end() && Under(it->first, op.path); ++it) {
          out.push_back(it->first);
          out.push_back(op.to + it->first.substr(op.path.size()));
        }
        break;
      case Op::Kind::kRename:
      case Op::Kind::kRenameOver:
      case Op::Kind::kLink:
        out.push_back(op.path);
        out.push_back(op.to);
        break;
      default:
        out.push_back(op.path);
    }
    return out;
  }

  // Everything whose state an operation that failed leaves unknown: its
  // paths, every name of the files involved (their content and link count),
  // and what lies beneath.
  std::vector<std::string> Unknowable(const Op& op) const {
    std::vector<std::string> out = Affected(op);
    for (const std::string* p : {&op.path, &op.to}) {
      auto it = nodes_.find(*p);
      if (!p->empty() && it != nodes_.end() && it->second.file) {
        for (auto& l : LinksOf(it->second.file.get())) out.push_back(l);
      }
    }
    return out;
  }

  // Applies an acknowledged operation.
  void Apply(const Op& op) {
    switch (op.kind) {
      case Op::Kind::kCreate: {
        Node n;
        n.kind = PathState::Kind::kFile;
        n.file = std::make_shared<FileObj>();
        n.file->data = op.data;
        nodes_[op.path] = n;
        break;
      }
      case Op::Kind::kOverwrite: nodes_.at(op.path).file->data = op.data; break;
      case Op::Kind::kAppend: nodes_.at(op.path).file->data += op.data; break;
      case Op::Kind::kPwrite: {
        std::string& d = nodes_.at(op.path).file->data;
        const size_t off = static_cast<size_t>(op.off);
        if (d.size() < off + op.data.size()) d.resize(off + op.data.size(), '\0');
        d.replace(off, op.data.size(), op.data);
        break;
      }
      case Op::Kind::kTruncate: nodes_.at(op.path).file->data.resize(static_cast<size_t>(op.off), '\0'); break;
      case Op::Kind::kRename:
      case Op::Kind::kRenameOver: {
        Node n = nodes_.at(op.path);
        nodes_.erase(op.path);
        nodes_[op.to] = n;
        break;
      }
      case Op::Kind::kRenameDir: {
        std::vector<std::pair<std::string, Node>> moved;
        for (auto it = nodes_.lower_bound(op.path); it != nodes_.end() && (it->first == op.path || Under(it->first, op.path));) {
          moved.emplace_back(op.to + it->first.substr(op.path.size()), it->second);
          it = nodes_.erase(it);
        }
        for (auto& [p, n] : moved) nodes_[p] = n;
        break;
      }
      case Op::Kind::kLink: nodes_[op.to] = nodes_.at(op.path); break;
      case Op::Kind::kSymlink: {
        Node n;
        n.kind = PathState::Kind::kSymlink;
        n.target = op.data;
        nodes_[op.path] = n;
        break;
      }
      case Op::Kind::kMkdir: {
        Node n;
        n.kind = PathState::Kind::kDir;
        n.mode = 0755;
        nodes_[op.path] = n;
        break;
      }
      case Op::Kind::kRmdir:
      case Op::Kind::kUnlink: nodes_.erase(op.path); break;
      case Op::Kind::kChmod: {
        Node& n = nodes_.at(op.path);
        if (n.file) {
          n.file->mode = op.mode;
        } else {
          n.mode = op.mode;
        }
        break;
      }
      case Op::Kind::kSetxattr: nodes_.at(op.path).file->xattr = op.data; break;
    }
  }

  // Forgets the histories of paths gone for longer than `keep` (a long soak
  // would otherwise remember every name it ever made).
  void PruneHistory(TimePoint now, Ms keep) {
    for (auto it = history_.begin(); it != history_.end();) {
      const auto& ev = it->second.events;
      const bool gone = !nodes_.count(it->first) && !Uncertain(it->first) && !ev.empty() && ev.back().end != kNever &&
                        ev.back().end < now - keep && ev.back().after.kind == PathState::Kind::kAbsent;
      it = gone ? history_.erase(it) : std::next(it);
    }
  }

  void MarkUncertain(const std::vector<std::string>& paths) {
    for (const auto& p : paths) uncertain_.insert(p);
  }

  // The root directory, made by the test before any load.
  void AddRoot() {
    Node n;
    n.kind = PathState::Kind::kDir;
    nodes_[root_] = n;
  }

  // Replaces the model with `adopted` (what the NAS hold, after the certain
  // paths were checked against it) and forgets every uncertainty. Each path
  // whose state changes gets an event at `now`.
  void Adopt(std::map<std::string, Node> adopted, TimePoint now) {
    std::set<std::string> paths;
    for (const auto& [p, n] : nodes_) paths.insert(p);
    for (const auto& [p, n] : adopted) paths.insert(p);
    for (const auto& u : uncertain_) paths.insert(u);
    std::map<std::string, Node> old = std::move(nodes_);
    nodes_ = std::move(adopted);
    for (const auto& p : paths) {
      const PathState after = StateOf(p);
      auto it = history_.find(p);
      const bool known = it != history_.end();
      if (known && !it->second.events.empty() && it->second.events.back().after == after) continue;
      if (!known && after.kind == PathState::Kind::kAbsent) continue;
      history_[p].events.push_back(Event{now, now, after, true, "adopted at a quiescent point"});
    }
    uncertain_.clear();
  }

  static std::string Content(std::mt19937_64& rng) {
    const int r = static_cast<int>(rng() % 100);
    const size_t n = r < 70 ? rng() % 4096 : r < 95 ? 4096 + rng() % 60000 : 65536 + rng() % 200000;
    return RandomBytes(rng, n);
  }

 private:
  const std::string root_;
  const int server_;
  std::map<std::string, Node> nodes_;     // acknowledged state
  std::set<std::string> uncertain_;       // paths (and what lies beneath) of unknown state
  std::map<std::string, History> history_;
  uint64_t next_name_ = 0;
};

// ---- a gate in front of a mount -------------------------------------------------

// While nasfs is being restarted its mount point is bare (the dead mount
// detached, the new one not yet there): a write landing there would land on
// the local disk and look acknowledged. Every access to a mount goes
// through its gate; a restart closes it once the daemon is dead (the calls
// in flight then end at once with ENOTCONN) and opens it on the new mount.
class Gate {
 public:
  // false if the gate stayed closed for `wait` (or the soak stops).
  bool Enter(Ms wait, const std::atomic<bool>& stop) {
    std::unique_lock lk(mu_);
    const bool ok = cv_.wait_for(lk, wait, [&] { return !closed_ || stop.load(); });
    if (!ok || stop.load()) return false;
    ++active_;
    return true;
  }
  void Leave() {
    std::lock_guard lk(mu_);
    --active_;
    cv_.notify_all();
  }
  // Closes and waits for the calls inside to leave; false if some are still
  // inside after `wait` (the gate stays closed either way).
  bool Close(Ms wait) {
    std::unique_lock lk(mu_);
    closed_ = true;
    return cv_.wait_for(lk, wait, [&] { return active_ == 0; });
  }
  void Open() {
    std::lock_guard lk(mu_);
    closed_ = false;
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool closed_ = false;  // guarded by mu_
  int active_ = 0;       // guarded by mu_
};

// ---- the state the threads share ------------------------------------------------

struct Violation {
  double t;
  std::string wall, category, text;
};

// Everything the load threads use; they hold it by shared_ptr, so a thread
// left stuck in a call on a dead mount can be abandoned safely.
struct Shared {
  Config cfg;
  TimePoint t0 = Clock::now();
  std::string mnt[2];
  std::string node[2] = {"a", "b"};
  std::string store[2];  // the directories behind the NAS views (master, backup)
  Gate gate[2];
  // Odd while the test is killing and restarting that server's nasfs (its
  // calls may fail with ENOTCONN and take any time); a call during which it
  // changed is exempt from invariant 3.
  std::atomic<uint64_t> kill_gen[2] = {0, 0};
  // Odd while that server's journal disk is full (until the journal says
  // "ok" again after it is freed): changes may be refused (ENOSPC, EIO).
  std::atomic<uint64_t> journal_gen[2] = {0, 0};
  // A split brain was made: reads of the other server's files are not
  // judged until it is over (split_active false) and both mounts show it
  // healed (on the master, both NAS healthy, nothing pending).
  std::atomic<bool> cross_suspended{false};
  std::atomic<bool> split_active{false};

  std::vector<std::unique_ptr<Model>> models;

  std::atomic<bool> stop{false};
  std::mutex pause_mu;
  std::condition_variable pause_cv;
  bool pause = false;  // guarded by pause_mu
  int paused = 0;      // guarded by pause_mu: writers waiting at the pause

  // Figures.
  std::atomic<uint64_t> ops_ok{0}, ops_failed_expected{0}, ops_failed{0};
  std::atomic<uint64_t> reads_ok{0}, reads_skipped{0}, reads_cross_unjudged{0}, reads_failed_expected{0};
  std::atomic<uint64_t> sweeps{0}, sweep_reads{0};
  std::mutex lat_mu;
  double max_call_ms = 0;  // guarded by lat_mu (exempt calls left out)
  std::string max_call;    // guarded by lat_mu

  std::mutex log_mu;
  std::vector<std::string> schedule;     // guarded by log_mu
  std::vector<Violation> violations;     // guarded by log_mu (the first 2000)
  size_t violation_count = 0;            // guarded by log_mu
  std::map<std::string, int> by_category;  // guarded by log_mu
  json last_status[2];                     // guarded by log_mu

  double Now() const { return SecondsSince(t0); }

  void Log(const std::string& text) {
    const std::string line = fmt::format("t={:8.3f}s ({}) {}", Now(), WallNow(), text);
    {
      std::lock_guard lk(log_mu);
      schedule.push_back(line);
    }
    std::printf("[soak] %s\n", line.c_str());
    std::fflush(stdout);
  }

  void Violate(const std::string& category, const std::string& text) {
    Violation v{Now(), WallNow(), category, text};
    size_t n;
    {
      std::lock_guard lk(log_mu);
      n = ++violation_count;
      ++by_category[category];
      // The first ones tell; a flood of one bug is counted, not kept.
      if (violations.size() < 2000) {
        violations.push_back(v);
        schedule.push_back(fmt::format("t={:8.3f}s ({}) VIOLATION [{}] {}", v.t, v.wall, category, text));
      }
    }
    if (n <= 200) {
      std::printf("[soak VIOLATION] t=%.3fs (%s) [%s] %s\n", v.t, v.wall.c_str(), category.c_str(), text.c_str());
      std::fflush(stdout);
    }
  }

  // The slowest call judged so far, as text.
  std::string Slowest() {
    std::lock_guard lk(lat_mu);
    return fmt::format("{:.0f} ms: {}", max_call_ms, max_call);
  }

  size_t ViolationCount() {
    std::lock_guard lk(log_mu);
    return violation_count;
  }

  // Invariant 3, for one call through server s's mount.
  void CheckLatency(int s, const char* call, const std::string& path, double ms, bool exempt) {
    if (exempt) return;
    {
      std::lock_guard lk(lat_mu);
      if (ms > max_call_ms) {
        max_call_ms = ms;
        max_call = fmt::format("{} {} through mnt_{} at t={:.3f}s", call, path, node[s], Now());
      }
    }
    if (ms > static_cast<double>(cfg.LatencyBound().count())) {
      Violate("latency", fmt::format("{}({}) through mnt_{} took {:.0f} ms (bound: io_timeout {} ms + 500 ms)", call,
                                     path, node[s], ms, cfg.io_timeout_ms));
    }
  }
};

// Times each syscall of one operation and checks invariant 3 for it.
class CallTimer {
 public:
  // *failed_call (if given) names the last call that returned -1.
  CallTimer(Shared& sh, int server, const std::string& path, const char** failed_call = nullptr)
      : sh_(sh), s_(server), path_(path), failed_call_(failed_call) {}
  template <class F>
  auto operator()(const char* call, F f) {
    const uint64_t g0 = sh_.kill_gen[s_].load();
    const auto t = Clock::now();
    errno = 0;
    auto r = f();
    const int e = errno;
    if (r < 0 && failed_call_ != nullptr) *failed_call_ = call;
    const double ms = MsSince(t);
    const uint64_t g1 = sh_.kill_gen[s_].load();
    sh_.CheckLatency(s_, call, path_, ms, g0 != g1 || (g1 & 1) != 0);
    errno = e;
    return r;
  }

 private:
  Shared& sh_;
  int s_;
  const std::string& path_;
  const char** failed_call_;
};

// What each store holds at rel right now (read directly, never through a
// NAS view, so a hung view cannot hang it), for a report: "store_master:
// file(...)" or the first missing component.
std::string StoreFacts(const Shared& sh, const std::string& rel) {
  std::string out;
  for (int r = 0; r < 2; ++r) {
    const std::string full = sh.store[r] + "/" + rel;
    struct stat st {};
    std::string what;
    if (lstat(full.c_str(), &st) == 0) {
      if (S_ISREG(st.st_mode)) {
        bool ok = true;
        const uint64_t h = HashFile(full, &ok);
        what = fmt::format("file({} bytes, xxh3 {:016x}, mode {:o}, ino {})", st.st_size, h, st.st_mode & 07777,
                           st.st_ino);
      } else {
        what = fmt::format("mode {:o}", st.st_mode);
      }
    } else {
      std::string missing = rel;
      for (std::string p = Parent(rel); !p.empty(); p = Parent(p)) {
        if (lstat((sh.store[r] + "/" + p).c_str(), &st) == 0) break;
        missing = p;
      }
      what = fmt::format("absent ({} is missing)", missing);
    }
    out += fmt::format(" store_{}: {};", r == 0 ? "master" : "backup", what);
  }
  return out;
}

// ---- operations through a mount --------------------------------------------------

int WriteAll(CallTimer& timed, int fd, const std::string& data, off_t off, bool positional) {
  size_t done = 0;
  while (done < data.size()) {
    const ssize_t n = timed(positional ? "pwrite" : "write", [&] {
      return positional ? pwrite(fd, data.data() + done, data.size() - done, off + static_cast<off_t>(done))
                        : write(fd, data.data() + done, data.size() - done);
    });
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return n < 0 ? errno : EIO;
    done += static_cast<size_t>(n);
  }
  return 0;
}

// Runs op through the mount: 0 or the errno of the call that failed.
int Execute(Shared& sh, int s, const Op& op, const char** failed_call) {
  const std::string p = sh.mnt[s] + "/" + op.path;
  const std::string to = sh.mnt[s] + "/" + op.to;
  CallTimer timed(sh, s, op.path, failed_call);
  auto put = [&](int flags, bool positional) {
    const int fd = timed("open", [&] { return open(p.c_str(), flags | O_WRONLY | O_CLOEXEC, 0644); });
    if (fd < 0) return errno;
    int e = WriteAll(timed, fd, op.data, op.off, positional);
    const int c = timed("close", [&] { return close(fd); });
    if (e == 0 && c != 0) e = errno;
    return e;
  };
  auto rc = [](int r) { return r == 0 ? 0 : errno; };
  switch (op.kind) {
    case Op::Kind::kCreate: return put(O_CREAT | O_EXCL, false);
    case Op::Kind::kOverwrite: return put(O_TRUNC, false);
    case Op::Kind::kAppend: return put(O_APPEND, false);
    case Op::Kind::kPwrite: return put(0, true);
    case Op::Kind::kTruncate: return rc(timed("truncate", [&] { return truncate(p.c_str(), op.off); }));
    case Op::Kind::kRename:
    case Op::Kind::kRenameOver:
    case Op::Kind::kRenameDir: return rc(timed("rename", [&] { return rename(p.c_str(), to.c_str()); }));
    case Op::Kind::kLink: return rc(timed("link", [&] { return link(p.c_str(), to.c_str()); }));
    case Op::Kind::kSymlink: return rc(timed("symlink", [&] { return symlink(op.data.c_str(), p.c_str()); }));
    case Op::Kind::kMkdir: return rc(timed("mkdir", [&] { return mkdir(p.c_str(), 0755); }));
    case Op::Kind::kRmdir: return rc(timed("rmdir", [&] { return rmdir(p.c_str()); }));
    case Op::Kind::kUnlink: return rc(timed("unlink", [&] { return unlink(p.c_str()); }));
    case Op::Kind::kChmod: return rc(timed("chmod", [&] { return chmod(p.c_str(), op.mode); }));
    case Op::Kind::kSetxattr:
      return rc(timed("setxattr",
                      [&] { return setxattr(p.c_str(), "user.soak", op.data.data(), op.data.size(), 0); }));
  }
  return EINVAL;
}

// What a read through a mount found: a state, or the errno of a failure.
struct Observed {
  PathState state;
  int err = 0;
  // read(2) said ENOENT after open(2) succeeded: nasfs keeps no open
  // state (no-open), so each READ opens the inode's path on the NAS, and
  // the name went away in between (or the open was answered from the
  // kernel's cache of a name already gone). Judged as "absent".
  bool enoent_on_read = false;
  std::string data;  // a file's bytes, for a report
};

// Reads path with O_DIRECT (the daemon answers, not the page cache),
// without following a symlink.
Observed ReadPath(Shared& sh, int s, const std::string& rel) {
  const std::string p = sh.mnt[s] + "/" + rel;
  CallTimer timed(sh, s, rel);
  Observed o;
  const int fd = timed("open", [&] { return open(p.c_str(), O_RDONLY | O_DIRECT | O_NOFOLLOW | O_CLOEXEC); });
  // O_DIRECT on a directory answers EINVAL: lstat tells. It may find the
  // directory removed since the open (another writer): absent, then.
  bool gone = false;
  auto is_dir = [&] {
    struct stat st {};
    if (timed("lstat", [&] { return lstat(p.c_str(), &st); }) != 0) {
      gone = errno == ENOENT;
      return false;
    }
    return S_ISDIR(st.st_mode);
  };
  if (fd < 0) {
    const int e = errno;
    if (e == ENOENT) {
      o.state = PathState::Of(PathState::Kind::kAbsent);
    } else if (e == ELOOP) {
      o.state = PathState::Of(PathState::Kind::kSymlink);
    } else if ((e == EINVAL || e == EISDIR) && is_dir()) {
      o.state = PathState::Of(PathState::Kind::kDir);
    } else if (e == EINVAL && gone) {
      o.state = PathState::Of(PathState::Kind::kAbsent);
    } else {
      o.err = e;
    }
    return o;
  }
  constexpr size_t kChunk = 256 * 1024;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, kChunk) != 0) {
    close(fd);
    o.err = ENOMEM;
    return o;
  }
  std::string data;
  int err = 0;
  for (;;) {
    const ssize_t n = timed("read", [&] { return read(fd, buf, kChunk); });
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) break;
    data.append(static_cast<char*>(buf), static_cast<size_t>(n));
  }
  free(buf);
  timed("close", [&] { return close(fd); });
  if (err == EISDIR || (err == EINVAL && is_dir())) {
    o.state = PathState::Of(PathState::Kind::kDir);
  } else if (err == ENOENT) {
    o.state = PathState::Of(PathState::Kind::kAbsent);
    o.enoent_on_read = true;
  } else if (err != 0) {
    o.err = err;
  } else {
    o.state = PathState::File(data);
    o.data = std::move(data);
  }
  return o;
}

// The last operations on rel and on each directory above it, with their
// times on the soak's clock (the schedule's "t="), for a report. Caller
// holds m.mu.
std::string RecentOps(TimePoint t0, Model& m, const std::string& rel) {
  std::string out;
  for (std::string p = rel; !p.empty(); p = Parent(p)) {
    auto it = m.history().find(p);
    if (it == m.history().end()) continue;
    const auto& ev = it->second.events;
    for (size_t i = ev.size() > 3 ? ev.size() - 3 : 0; i < ev.size(); ++i) {
      out += fmt::format(" [{}: `{}` t={:.3f}..{} -> {}]", p, ev[i].op, MsBetween(t0, ev[i].start) / 1000,
                         ev[i].end == kNever ? "(in flight)" : fmt::format("{:.3f}s", MsBetween(t0, ev[i].end) / 1000),
                         ev[i].after.Show());
    }
  }
  return out.empty() ? "(none recorded)" : out;
}

// Where the bytes of a stale read came from, for its report: every path
// of either model whose file holds them now or held them after a recent
// operation, and else the file now holding the longest common prefix with
// them. Takes each model's lock in turn (the caller holds none).
std::string WhoseBytes(Shared& sh, const std::string& data) {
  const PathState seen = PathState::File(data);
  std::vector<std::string> found;
  size_t best_prefix = 0;
  std::string best_path;
  for (auto& mp : sh.models) {
    Model& m = *mp;
    std::lock_guard lk(m.mu);
    for (const auto& [p, n] : m.nodes()) {
      if (!n.file) continue;
      const std::string& d = n.file->data;
      if (PathState::File(d) == seen) {
        found.push_back(fmt::format("the file now at {}", p));
        continue;
      }
      const auto mis = std::mismatch(d.begin(), d.end(), data.begin(), data.end());
      const size_t common = static_cast<size_t>(mis.first - d.begin());
      if (common > best_prefix) {
        best_prefix = common;
        best_path = p;
      }
    }
    for (const auto& [p, h] : m.history())
      for (const Event& e : h.events)
        if (e.after == seen)
          found.push_back(fmt::format("{} after `{}` (t={:.3f}s)", p, e.op, MsBetween(sh.t0, e.start) / 1000));
  }
  if (found.size() > 6) found.resize(6);
  if (!found.empty()) return fmt::format("; the bytes read are those of: {}", fmt::join(found, "; "));
  if (best_prefix >= 16)
    return fmt::format("; no known version holds the bytes read; their first {} bytes are those of the file now at {}",
                       best_prefix, best_path);
  return "; no known version holds the bytes read, nor begins like them";
}

// One read of `rel` (of model m) through server s's mount, judged by
// invariant 2. `what` names the reader in a report.
void ReadAndJudge(Shared& sh, int s, Model& m, const std::string& rel, const char* what) {
  const bool cross = m.server() != s;
  if (cross && sh.cross_suspended.load()) {
    ++sh.reads_cross_unjudged;
    return;
  }
  if (!sh.gate[s].Enter(Ms(60000), sh.stop)) return;
  const uint64_t k0 = sh.kill_gen[s].load();
  const TimePoint t0 = Clock::now();
  const Observed o = ReadPath(sh, s, rel);
  const TimePoint t1 = Clock::now();
  const uint64_t k1 = sh.kill_gen[s].load();
  sh.gate[s].Leave();
  if (k0 != k1 || (k1 & 1) != 0) {
    ++sh.reads_failed_expected;  // nasfs was killed under it: any answer goes
    return;
  }
  if (o.err != 0) {
    sh.Violate("read_error", fmt::format("{}: read of {} through mnt_{} failed: {}; now on the stores:{}", what, rel,
                                         sh.node[s], Errstr(o.err), StoreFacts(sh, rel)));
    return;
  }
  if (cross && sh.cross_suspended.load()) {
    ++sh.reads_cross_unjudged;
    return;
  }
  std::string why;
  Verdict v;
  {
    std::lock_guard lk(m.mu);
    if (m.Uncertain(rel)) {
      ++sh.reads_skipped;
      return;
    }
    auto it = m.history().find(rel);
    if (it == m.history().end()) {
      ++sh.reads_skipped;
      return;
    }
    v = CheckRead(it->second, t0, t1, cross ? sh.cfg.CrossAllowance() : Ms(0), o.state, &why, cross);
    if (v == Verdict::kStale) {
      if (o.enoent_on_read) why += "; (ENOENT came from read(2), after open(2) succeeded)";
      auto n = m.nodes().find(rel);
      if (n != m.nodes().end() && n->second.file && o.state.kind == PathState::Kind::kFile) {
        const std::string& cur = n->second.file->data;
        if (o.data.size() < cur.size() && cur.compare(0, o.data.size(), o.data) == 0) {
          why += fmt::format("; the bytes read are the first {} of the {} bytes the file holds now (a torn read)",
                             o.data.size(), cur.size());
        } else if (o.data.size() > cur.size() && o.data.compare(0, cur.size(), cur) == 0) {
          const bool zeros = o.data.find_first_not_of('\0', cur.size()) == std::string::npos;
          why += fmt::format("; the bytes read begin with the {} bytes the file holds now, then {} more ({})",
                             cur.size(), o.data.size() - cur.size(), zeros ? "all zero" : "not all zero");
        }
      }
      why += "; now on the stores:" + StoreFacts(sh, rel) + " the path's recent operations: " + RecentOps(sh.t0, m, rel);
    }
  }
  if (v == Verdict::kOk) {
    ++sh.reads_ok;
  } else if (v == Verdict::kSkip) {
    ++sh.reads_skipped;
  } else {
    if (o.state.kind == PathState::Kind::kFile) why += WhoseBytes(sh, o.data);
    json st;
    {
      std::lock_guard lk(sh.log_mu);
      st = sh.last_status[s];
    }
    sh.Violate("stale_read",
               fmt::format("{}: {} read through mnt_{} ({} server's file, read took {:.0f} ms): {}; mnt_{} last "
                           "status: read_from={} master={} backup={} pending={}",
                           what, rel, sh.node[s], cross ? "the other" : "its own", MsBetween(t0, t1), why, sh.node[s],
                           ReadFrom(st), StateOf(st, "master"), StateOf(st, "backup"),
                           Get(st, "/journal/pending").dump()));
  }
}

// ---- the load threads --------------------------------------------------------------

void WriterLoop(std::shared_ptr<Shared> sh, Model* m, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int s = m->server();
  while (!sh->stop) {
    {
      std::unique_lock lk(sh->pause_mu);
      if (sh->pause) {
        ++sh->paused;
        sh->pause_cv.notify_all();
        sh->pause_cv.wait(lk, [&] { return !sh->pause || sh->stop.load(); });
        --sh->paused;
        continue;
      }
    }
    if (!sh->gate[s].Enter(Ms(60000), sh->stop)) continue;
    const uint64_t k0 = sh->kill_gen[s].load(), j0 = sh->journal_gen[s].load();
    Op op;
    std::vector<std::string> affected;
    {
      std::lock_guard lk(m->mu);
      op = m->Plan(rng, sh->cfg.max_nodes, sh->cfg.skip_ops);
      affected = m->Affected(op);
      const TimePoint now = Clock::now();
      for (const auto& p : affected) {
        History& h = m->history()[p];
        h.Trim(now, sh->cfg.HistoryKeep());
        h.events.push_back(Event{now, kNever, PathState::Of(PathState::Kind::kUnknown),
                                 op.Atomic() && !m->Detaches(op, p), op.What()});
      }
    }
    const char* failed_call = "";
    const int err = Execute(*sh, s, op, &failed_call);
    const uint64_t k1 = sh->kill_gen[s].load(), j1 = sh->journal_gen[s].load();
    sh->gate[s].Leave();
    std::string recent;
    {
      std::lock_guard lk(m->mu);
      const TimePoint now = Clock::now();
      if (err == 0) {
        m->Apply(op);
      } else {
        recent = RecentOps(sh->t0, *m, op.path);
        m->MarkUncertain(m->Unknowable(op));
      }
      for (const auto& p : affected) {
        Event& e = m->history()[p].events.back();
        e.end = now;
        e.after = err == 0 ? m->StateOf(p) : PathState::Of(PathState::Kind::kUnknown);
      }
    }
    if (err == 0) {
      ++sh->ops_ok;
    } else {
      const bool killed = k0 != k1 || (k1 & 1) != 0;
      const bool journal_full = (j0 != j1 || (j1 & 1) != 0) && (err == ENOSPC || err == EIO);
      if (killed || journal_full) {
        ++sh->ops_failed_expected;
      } else {
        ++sh->ops_failed;
        sh->Violate("op_error", fmt::format("writer {}: `{}` through mnt_{} failed in {}(): {} (the server had a "
                                            "healthy NAS and a working journal); now on the stores:{} recent "
                                            "operations: {}",
                                            m->root(), op.What(), sh->node[s], failed_call, Errstr(err),
                                            StoreFacts(*sh, op.path), recent));
      }
    }
    std::this_thread::sleep_for(Ms(rng() % (2 * static_cast<uint64_t>(sh->cfg.write_pause_ms) + 1)));
  }
}

// Picks a path of m to read: mostly a current file, sometimes any path
// with a history (a deleted one must stay deleted). "" if none.
std::string PickReadPath(Model& m, std::mt19937_64& rng) {
  std::lock_guard lk(m.mu);
  std::vector<const std::string*> files;
  for (const auto& [p, n] : m.nodes()) {
    if (n.kind == PathState::Kind::kFile && !m.Uncertain(p)) files.push_back(&p);
  }
  if (!files.empty() && rng() % 5 != 0) return *files[rng() % files.size()];
  if (m.history().empty()) return "";
  auto it = m.history().begin();
  std::advance(it, static_cast<long>(rng() % m.history().size()));
  return m.Uncertain(it->first) ? "" : it->first;
}

void ReaderLoop(std::shared_ptr<Shared> sh, int s, uint64_t seed, std::string name) {
  std::mt19937_64 rng(seed);
  while (!sh->stop) {
    Model& m = *sh->models[rng() % sh->models.size()];
    const std::string rel = PickReadPath(m, rng);
    if (!rel.empty()) ReadAndJudge(*sh, s, m, rel, name.c_str());
    std::this_thread::sleep_for(Ms(rng() % 6));
  }
}

// Every file of every model (and each recently deleted path) read through
// server s's mount at once: run the moment it reports read_from "master"
// again after an outage.
void SwitchBackSweep(Shared& sh, int s) {
  ++sh.sweeps;
  const uint64_t before_bad = sh.ViolationCount();
  size_t n = 0;
  for (auto& mp : sh.models) {
    std::vector<std::string> paths;
    {
      std::lock_guard lk(mp->mu);
      for (const auto& [p, h] : mp->history()) {
        if (!mp->Uncertain(p)) paths.push_back(p);
      }
    }
    for (const auto& p : paths) {
      if (sh.stop) return;
      ReadAndJudge(sh, s, *mp, p, "switch-back sweep");
      ++n;
    }
  }
  sh.sweep_reads += n;
  sh.Log(fmt::format("mnt_{} reads from the master again: {} paths read back through it, {} new violations",
                     sh.node[s], n, sh.ViolationCount() - before_bad));
}

// A status line's fields that tell how an outage goes.
std::string Brief(const json& st) {
  if (st.is_null()) return "(no status)";
  if (st.contains("nasfsctl_error")) return "status failed";
  const std::string replay = Str(Get(st, "/journal/replay/state"));
  return fmt::format("read_from={} master={} backup={} pending={} journal={} replay={}{} split_brain={} waiting_for={}",
                     ReadFrom(st), StateOf(st, "master"), StateOf(st, "backup"), Get(st, "/journal/pending").dump(),
                     Str(Get(st, "/journal/state")), replay,
                     replay == "running" ? fmt::format("(round {})", Get(st, "/journal/replay/rounds").dump()) : "",
                     Str(Get(st, "/split_brain/state")), Get(st, "/coordination/waiting_for").dump());
}

// Polls both mounts' status, logs every change, and sweeps a mount the
// moment it switches back to the master.
void MonitorLoop(std::shared_ptr<Shared> sh) {
  std::string last_key[2];
  std::string last_read_from[2] = {"master", "master"};
  bool healed[2] = {false, false};
  while (!sh->stop) {
    for (int s = 0; s < 2 && !sh->stop; ++s) {
      const uint64_t k0 = sh->kill_gen[s].load();
      if ((k0 & 1) != 0) {
        last_read_from[s] = "(restarting)";
        continue;
      }
      auto r = Status(sh->mnt[s], Within(Ms(3000)));
      if (sh->kill_gen[s].load() != k0) continue;
      const json st = r.ok() ? r.json : json{{"nasfsctl_error", r.error}};
      {
        std::lock_guard lk(sh->log_mu);
        sh->last_status[s] = st;
      }
      // Logged when a state changes (not on every count that moves).
      const std::string key =
          r.ok() ? fmt::format("{} {} {} {} {} {} {} {}", ReadFrom(st), StateOf(st, "master"), StateOf(st, "backup"),
                               Num(Get(st, "/journal/pending")) > 0, Str(Get(st, "/journal/state")),
                               Str(Get(st, "/journal/replay/state")), Str(Get(st, "/split_brain/state")),
                               Get(st, "/coordination/waiting_for").dump())
                 : "failed";
      if (key != last_key[s]) {
        sh->Log(fmt::format("status mnt_{}: {}", sh->node[s], Brief(st)));
        last_key[s] = key;
      }
      healed[s] = r.ok() && ReadFrom(st) == "master" && StateOf(st, "master") == "healthy" &&
                  StateOf(st, "backup") == "healthy" && Num(Get(st, "/journal/pending")) == 0 &&
                  Str(Get(st, "/split_brain/state")) != "detected" && Str(Get(st, "/split_brain/state")) != "resolving" &&
                  Get(st, "/coordination/waiting_for").empty();
      if (!r.ok()) continue;
      const std::string rf = ReadFrom(st);
      if (rf == "master" && last_read_from[s] != "master") SwitchBackSweep(*sh, s);
      last_read_from[s] = rf;
    }
    if (sh->cross_suspended && !sh->split_active && healed[0] && healed[1]) {
      sh->cross_suspended = false;
      sh->Log("the split brain is healed on both mounts: reads of the other server's files are judged again");
    }
    std::this_thread::sleep_for(Ms(150));
  }
}

// ---- the fixture ----------------------------------------------------------------------

enum class FaultKind {
  kHang, kKill, kUnmount, kEnospc, kEioWrites, kEioAll, kSlow, kVerySlow, kFlap, kRestart, kJournalFull, kSplit
};
const char* KindName(FaultKind k) {
  switch (k) {
    case FaultKind::kHang: return "hang";
    case FaultKind::kKill: return "kill";
    case FaultKind::kUnmount: return "unmount";
    case FaultKind::kEnospc: return "enospc";
    case FaultKind::kEioWrites: return "eio_writes";
    case FaultKind::kEioAll: return "eio_all";
    case FaultKind::kSlow: return "slow";
    case FaultKind::kVerySlow: return "very_slow";
    case FaultKind::kFlap: return "flap";
    case FaultKind::kRestart: return "nasfs_restart";
    case FaultKind::kJournalFull: return "journal_full";
    case FaultKind::kSplit: return "split_brain";
  }
  return "?";
}

const char* RoleName(int r) { return r == 0 ? "master" : "backup"; }

class SoakTest : public WorkspaceTest {
 protected:
  struct Server {
    std::string node;
    std::unique_ptr<FuseNas> view[2];  // this server's paths to the master [0] and the backup [1]
    MountSpec spec;
    std::unique_ptr<MountedNasfs> mount;
    std::string journal_fs;  // the tmpfs holding its journal ("" if none could be mounted)
    bool journal_fs_mounted = false;
    std::string fill;        // the file that fills it
  };

  void SetUp() override {
    WorkspaceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    sh_ = std::make_shared<Shared>();
    srv_[0].node = "a";
    srv_[1].node = "b";
    store_[0] = ws_.Path("store_master");
    store_[1] = ws_.Path("store_backup");
    for (int s = 0; s < 2; ++s) {
      Server& v = srv_[s];
      for (int r = 0; r < 2; ++r) {
        v.view[r] = std::make_unique<FaultfsNas>(ws_, RoleName(r), v.node + "_" + RoleName(r));
        ASSERT_TRUE(v.view[r]->ok()) << v.view[r]->error();
      }
    }
    for (int s = 0; s < 2; ++s) ASSERT_NO_FATAL_FAILURE(Mount(s, /*first=*/true));
    sh_->mnt[0] = Mnt(0);
    sh_->mnt[1] = Mnt(1);
    sh_->store[0] = store_[0];
    sh_->store[1] = store_[1];
    for (int s = 0; s < 2; ++s) {
      for (int w = 0; w < sh_->cfg.writers; ++w) {
        auto m = std::make_unique<Model>(fmt::format("{}{}", srv_[s].node, w), s);
        ASSERT_EQ(mkdir((Mnt(s) + "/" + m->root()).c_str(), 0755), 0) << m->root() << ": " << std::strerror(errno);
        m->AddRoot();
        m->history()[m->root()].events.push_back(
            Event{Clock::now(), Clock::now(), PathState::Of(PathState::Kind::kDir), true, "mkdir (set-up)"});
        sh_->models.push_back(std::move(m));
      }
    }
  }

  void TearDown() override {
    if (!sh_) return;
    StopLoad();
    for (auto& v : srv_) {
      for (auto& n : v.view) {
        if (n) n->Cont();
      }
    }
    for (auto& v : srv_) {
      for (auto& n : v.view) {
        if (auto* f = dynamic_cast<FaultfsNas*>(n.get())) (void)f->SetFaults("");
      }
      if (!v.fill.empty()) unlink(v.fill.c_str());
    }
    if (HasFailure()) Report();
    for (int s = 1; s >= 0; --s) {
      if (srv_[s].mount) {
        const std::string problem = srv_[s].mount->Unmount();
        EXPECT_EQ(problem, "") << "unmounting mnt_" << srv_[s].node;
        srv_[s].mount.reset();
      }
    }
    for (auto& v : srv_) {
      if (v.journal_fs_mounted && umount2(v.journal_fs.c_str(), MNT_DETACH) != 0) {
        ADD_FAILURE() << "umount " << v.journal_fs << ": " << std::strerror(errno);
      }
      v.journal_fs_mounted = false;
    }
    for (auto& v : srv_) {
      for (auto& n : v.view) n.reset();
    }
  }

  std::string Mnt(int s) const { return ws_.Path("mnt_" + srv_[s].node); }
  FaultfsNas& View(int s, int r) { return static_cast<FaultfsNas&>(*srv_[s].view[r]); }

  // ---- mounting ----

  // Mounts server s's nasfs (first: the journal's tmpfs too, and waits for
  // both NAS healthy with reads on the master).
  void Mount(int s, bool first) {
    Server& v = srv_[s];
    const Config& cfg = sh_->cfg;
    if (first) {
      v.journal_fs = ws_.MakeDir("jfs_" + v.node);
      const std::string opts = fmt::format("size={}m,mode=0700", cfg.journal_fs_mb);
      if (mount("tmpfs", v.journal_fs.c_str(), "tmpfs", MS_NOSUID | MS_NODEV, opts.c_str()) == 0) {
        v.journal_fs_mounted = true;
      } else {
        std::printf("[soak] cannot mount a tmpfs at %s (%s): the journal goes on the workspace's disk and the "
                    "journal-full fault is off\n",
                    v.journal_fs.c_str(), std::strerror(errno));
      }
      const std::string journal = v.journal_fs + "/journal";
      mkdir(journal.c_str(), 0700);
      v.fill = v.journal_fs + "/fill";
      v.spec = MountSpec();
      v.spec.source = v.view[0]->path() + ":" + v.view[1]->path();
      v.spec.mountpoint = ws_.MakeDir("mnt_" + v.node);
      v.spec.default_options = false;
      v.spec.extra_options =
          fmt::format("node={},journal={},control={},io_timeout={},probe_interval={},peer_timeout={},cache_timeout={}",
                      v.node, journal, ws_.Path(v.node + ".sock"), cfg.io_timeout_ms, cfg.probe_interval_ms,
                      cfg.peer_timeout_s, cfg.cache_timeout_s);
      v.spec.log_file = ws_.Path("nasfs_" + v.node + ".log");
    }
    v.mount = std::make_unique<MountedNasfs>(ws_, v.spec);
    ASSERT_TRUE(v.mount->mounted()) << "nasfs " << v.node << ": " << v.mount->error() << "\nlog:\n"
                                    << Tail(v.mount->Log(), 60);
    if (first) {
      json st;
      ASSERT_TRUE(WaitStatus(s, Ms(20000), &st, [](const json& j) {
        return StateOf(j, "master") == "healthy" && StateOf(j, "backup") == "healthy" && ReadFrom(j) == "master";
      })) << "mnt_" << v.node << ": both NAS not healthy with reads on the master 20 s after mounting: " << st.dump(2);
    }
  }

  json StatusNow(int s) {
    if (!srv_[s].mount) return json{{"nasfsctl_error", "not mounted"}};
    auto r = Status(Mnt(s), Within(Ms(3000)));
    return r.ok() ? r.json : json{{"nasfsctl_error", r.error}};
  }

  bool WaitStatus(int s, Ms within, json* last, const std::function<bool(const json&)>& pred) {
    const auto deadline = Clock::now() + within;
    for (;;) {
      *last = StatusNow(s);
      if (!last->contains("nasfsctl_error") && pred(*last)) return true;
      if (Clock::now() >= deadline || aborted_) return false;
      std::this_thread::sleep_for(Ms(50));
    }
  }

  // ---- the load ----

  void StartLoad() {
    for (auto& m : sh_->models) {
      auto w = std::make_unique<OwnedWorker<int>>();
      w->Start([sh = sh_, mp = m.get(), seed = seed_ ^ rng_()](const OwnedWorker<int>::State&) {
        WriterLoop(sh, mp, seed);
        return 0;
      });
      threads_.push_back(std::move(w));
    }
    for (int s = 0; s < 2; ++s) {
      for (int r = 0; r < sh_->cfg.readers; ++r) {
        auto w = std::make_unique<OwnedWorker<int>>();
        w->Start([sh = sh_, s, seed = seed_ ^ rng_(), name = fmt::format("reader {}{}", srv_[s].node, r)](
                     const OwnedWorker<int>::State&) {
          ReaderLoop(sh, s, seed, name);
          return 0;
        });
        threads_.push_back(std::move(w));
      }
    }
    auto w = std::make_unique<OwnedWorker<int>>();
    w->Start([sh = sh_](const OwnedWorker<int>::State&) {
      MonitorLoop(sh);
      return 0;
    });
    threads_.push_back(std::move(w));
  }

  // Stops every load thread; one stuck in a call past 20 s is a failure, and
  // killing the daemons releases it (its calls then fail with ENOTCONN).
  void StopLoad() {
    sh_->stop = true;
    {
      std::lock_guard lk(sh_->pause_mu);
      sh_->pause = false;
    }
    sh_->pause_cv.notify_all();
    for (auto& g : sh_->gate) g.Open();
    bool stuck = false;
    for (auto& t : threads_) stuck = !t->Join(Ms(20000)) || stuck;
    if (stuck) {
      ADD_FAILURE() << "a load thread is stuck 20 s after the soak ended; killing both nasfs daemons";
      for (auto& v : srv_) {
        if (v.mount && v.mount->daemon_pid() > 0) kill(v.mount->daemon_pid(), SIGKILL);
      }
      for (auto& t : threads_) (void)t->Join(Ms(10000));
    }
    threads_.clear();  // a thread still stuck is detached (it owns its state)
  }

  // Pauses the writers after their current operation; false (a violation)
  // if one is still in an operation after `within`.
  bool PauseWriters(Ms within) {
    std::unique_lock lk(sh_->pause_mu);
    sh_->pause = true;
    const int n = static_cast<int>(sh_->models.size());
    const bool ok = sh_->pause_cv.wait_for(lk, within, [&] { return sh_->paused == n; });
    if (!ok) {
      sh_->Violate("stuck_writer", fmt::format("only {} of {} writers paused within {} ms", sh_->paused, n,
                                               within.count()));
    }
    return ok;
  }
  void ResumeWriters() {
    {
      std::lock_guard lk(sh_->pause_mu);
      sh_->pause = false;
    }
    sh_->pause_cv.notify_all();
  }

  // ---- invariant 4 ----

  // Checks both daemons (not one the test is restarting); a death is a
  // violation and ends the soak.
  void CheckDaemons() {
    for (int s = 0; s < 2; ++s) {
      if ((sh_->kill_gen[s].load() & 1) != 0 || !srv_[s].mount) continue;
      const std::string ended = srv_[s].mount->DaemonEnded();
      if (!ended.empty() && !death_reported_[s]) {
        death_reported_[s] = true;
        sh_->Violate("daemon_death", fmt::format("nasfs {} (pid {}) died: {}", srv_[s].node,
                                                 srv_[s].mount->daemon_pid(), ended));
        aborted_ = true;
      }
    }
  }

  // Sleeps `d`, checking the daemons every 100 ms.
  void Hold(Ms d) {
    const auto until = Clock::now() + d;
    while (Clock::now() < until && !aborted_) {
      CheckDaemons();
      std::this_thread::sleep_for(std::min<Clock::duration>(Ms(100), until - Clock::now()));
    }
  }

  // ---- faults ----

  // The undo actions of the faults in force, run in reverse order by Undo()
  // or the destructor, whatever happened in between.
  class Guard {
   public:
    explicit Guard(Shared& sh) : sh_(sh) {}
    ~Guard() { Undo(); }
    Guard(const Guard&) = delete;
    Guard& operator=(const Guard&) = delete;
    void Add(std::string what, std::function<void()> undo) { undo_.emplace_back(std::move(what), std::move(undo)); }
    void Undo() {
      while (!undo_.empty()) {
        auto [what, fn] = std::move(undo_.back());
        undo_.pop_back();
        sh_.Log("undo: " + what);
        fn();
      }
    }

   private:
    Shared& sh_;
    std::vector<std::pair<std::string, std::function<void()>>> undo_;
  };

  // Brings view (s, r) back after a kill or an unmount; a server that
  // cannot be mounted again is a broken test set-up.
  void RemountView(int s, int r) {
    const std::string e = View(s, r).Remount();
    if (!e.empty()) {
      ADD_FAILURE() << View(s, r).name() << ": " << e;
      aborted_ = true;
    }
  }

  // Applies one NAS fault to view (s, r); its undo goes to g.
  void ApplyNasFault(Guard& g, FaultKind k, int s, int r, int param) {
    FaultfsNas& v = View(s, r);
    const std::string name = v.name();
    // s loses r while the other server has the other NAS out (or still
    // being replayed onto): the servers disagree about which NAS is alive,
    // a split brain, whichever episode made it.
    const json other = StatusNow(1 - s);
    if (!other.contains("nasfsctl_error") && StateOf(other, RoleName(1 - r)) != "healthy") {
      sh_->Log(fmt::format("a split brain: {} loses the {} while mnt_{} shows the {} {}", srv_[s].node, RoleName(r),
                           srv_[1 - s].node, RoleName(1 - r), StateOf(other, RoleName(1 - r))));
      sh_->cross_suspended = true;
      sh_->split_active = true;
      g.Add("the split brain's faults are over", [this] { sh_->split_active = false; });
    }
    sh_->Log(fmt::format("{}: {}{}", name, KindName(k), param ? fmt::format("({})", param) : ""));
    auto set = [&](const std::string& faults) {
      if (!v.SetFaults(faults)) aborted_ = true;
      g.Add(fmt::format("{}: no faults", name), [this, s, r] { (void)View(s, r).SetFaults(""); });
    };
    switch (k) {
      case FaultKind::kHang:
        v.Stop();
        g.Add(fmt::format("{}: SIGCONT", name), [this, s, r] { View(s, r).Cont(); });
        break;
      case FaultKind::kKill:
        v.Kill();
        g.Add(fmt::format("{}: remount", name), [this, s, r] { RemountView(s, r); });
        break;
      case FaultKind::kUnmount:
        v.Unmount();
        g.Add(fmt::format("{}: remount", name), [this, s, r] { RemountView(s, r); });
        break;
      case FaultKind::kEnospc: set("enospc_writes"); break;
      case FaultKind::kEioWrites: set("eio_writes"); break;
      case FaultKind::kEioAll: set("eio_all"); break;
      case FaultKind::kSlow:
      case FaultKind::kVerySlow: set(fmt::format("delay_ms={}", param)); break;
      default: ADD_FAILURE() << "not a NAS fault: " << KindName(k);
    }
  }

  // Before a fault on NAS r of the servers `who`: each must show the other
  // NAS healthy (a server with both NAS out has nowhere to write). Waits up
  // to 20 s; false (the fault is skipped) if one does not.
  bool OtherNasHealthy(const std::vector<int>& who, int r) {
    for (int s : who) {
      json st;
      const std::string other = RoleName(1 - r);
      if (!WaitStatus(s, Ms(20000), &st, [&](const json& j) { return StateOf(j, other) == "healthy"; })) {
        sh_->Log(fmt::format("skipped: mnt_{} does not show the {} healthy within 20 s: {}", srv_[s].node, other,
                             Brief(st)));
        return false;
      }
    }
    return true;
  }

  // SIGKILLs server s's nasfs, detaches its dead mount, waits `down`, and
  // mounts it again on the same journal and socket.
  void RestartNasfs(int s, Ms down) {
    Server& v = srv_[s];
    const pid_t pid = v.mount->daemon_pid();
    ++sh_->kill_gen[s];  // odd: its calls may now fail or take any time
    sh_->Log(fmt::format("nasfs {}: SIGKILL (pid {})", v.node, pid));
    if (pid <= 0 || kill(pid, SIGKILL) != 0) {
      ADD_FAILURE() << "cannot kill nasfs " << v.node << " (pid " << pid << "): " << std::strerror(errno);
      aborted_ = true;
      ++sh_->kill_gen[s];
      return;
    }
    // Wait until it is reaped: only then are its journal lock and socket
    // free. A thread of it may wait for the answer of a NAS view the test
    // stopped: the kernel does not abandon a FUSE request already sent, so
    // the process cannot finish exiting until that view answers (NFS hard
    // mounts wait killably; the simulated NAS does not). Such a view is
    // continued, which ends the hang early.
    auto reaped = [&] { return !v.mount->DaemonEnded().empty(); };
    if (!WaitFor(reaped, Ms(3000))) {
      for (int r = 0; r < 2; ++r) {
        if (View(s, r).stopped()) {
          sh_->Log(fmt::format("nasfs {} waits for its stopped {} to exit: SIGCONT", v.node, View(s, r).name()));
          View(s, r).Cont();
        }
      }
      if (!WaitFor(reaped, Ms(10000))) {
        sh_->Violate("restart", fmt::format("nasfs {} (pid {}) has not exited 13 s after SIGKILL", v.node, pid));
      }
    }
    if (!sh_->gate[s].Close(Ms(20000))) {
      sh_->Violate("stuck_call", fmt::format("calls through mnt_{} still in flight 20 s after its nasfs was killed",
                                             v.node));
    }
    const auto lazy = RunCommand({"fusermount3", "-uz", Mnt(s)}, Within(Ms(10000)));
    if (!lazy.ok()) {
      const auto l = RunCommand({"umount", "-l", Mnt(s)}, Within(Ms(10000)));
      if (!l.ok()) ADD_FAILURE() << lazy.Describe() << "; " << l.Describe();
    }
    (void)v.mount->Unmount();
    v.mount.reset();
    Hold(down);
    sh_->Log(fmt::format("nasfs {}: starting again", v.node));
    const auto t = Clock::now();
    v.mount = std::make_unique<MountedNasfs>(ws_, v.spec);
    if (!v.mount->mounted()) {
      sh_->Violate("restart", fmt::format("nasfs {} does not mount again on its journal: {}", v.node,
                                          v.mount->error()));
      death_reported_[s] = true;  // that failed start is this violation
      aborted_ = true;
    } else {
      death_reported_[s] = false;
      sh_->Log(fmt::format("nasfs {}: mounted again in {:.0f} ms (pid {})", v.node, MsSince(t),
                           v.mount->daemon_pid()));
    }
    sh_->gate[s].Open();
    ++sh_->kill_gen[s];  // even: back to normal
  }

  // Fills server s's journal disk; the undo frees it and waits (bounded)
  // for the journal to report "ok" again before errors count again.
  void FillJournal(Guard& g, int s) {
    Server& v = srv_[s];
    ++sh_->journal_gen[s];
    const int fd = open(v.fill.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t filled = 0;
    if (fd >= 0) {
      std::string chunk(1 << 20, 'x');
      for (size_t n : {size_t{1} << 20, size_t{4096}, size_t{512}}) {
        while (write(fd, chunk.data(), n) == static_cast<ssize_t>(n)) filled += n;
      }
      close(fd);
    }
    sh_->Log(fmt::format("journal disk of {} full ({} KiB written to {})", v.node, filled / 1024, v.fill));
    g.Add(fmt::format("journal disk of {}: freed", v.node), [this, s] {
      unlink(srv_[s].fill.c_str());
      json st;
      if (!WaitStatus(s, Ms(15000), &st, [](const json& j) { return Str(Get(j, "/journal/state")) == "ok"; })) {
        sh_->Violate("journal", fmt::format("the journal of {} is not \"ok\" 15 s after its disk was freed: {}",
                                            srv_[s].node, Get(st, "/journal").dump()));
      }
      ++sh_->journal_gen[s];
    });
  }

  // ---- the schedule ----

  double Uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(sched_); }
  int Pick(int n) { return static_cast<int>(sched_() % static_cast<uint64_t>(n)); }
  Ms Secs(double s) { return Ms(static_cast<int64_t>(s * 1000)); }

  // A fault kind for one NAS view and its parameter.
  std::pair<FaultKind, int> DrawNasFault() {
    static constexpr std::pair<FaultKind, int> kinds[] = {
        {FaultKind::kHang, 12},     {FaultKind::kKill, 10},  {FaultKind::kUnmount, 6}, {FaultKind::kEnospc, 8},
        {FaultKind::kEioWrites, 6}, {FaultKind::kEioAll, 6}, {FaultKind::kSlow, 8},    {FaultKind::kVerySlow, 5}};
    int total = 0;
    for (auto& [k, w] : kinds) total += w;
    int x = Pick(total);
    for (auto& [k, w] : kinds) {
      if (x < w) {
        int param = 0;
        if (k == FaultKind::kSlow) param = std::array<int, 4>{5, 20, 50, 100}[Pick(4)];
        if (k == FaultKind::kVerySlow) param = sh_->cfg.io_timeout_ms + 100 + Pick(600);
        return {k, param};
      }
      x -= w;
    }
    return {FaultKind::kHang, 0};
  }
  double DrawDuration() { return Pick(10) == 0 ? Uniform(5, 10) : Uniform(0.3, 4); }

  // When a server in `who` does not show the NAS other than r healthy now
  // (a replay onto it runs) but shows r healthy, the fault goes to that
  // other NAS instead: a fault in the middle of a replay.
  int PreferReplayingNas(const std::vector<int>& who, int r) {
    bool other_out = false, r_ok = true;
    for (int s : who) {
      const json st = StatusNow(s);
      other_out = other_out || StateOf(st, RoleName(1 - r)) != "healthy";
      r_ok = r_ok && StateOf(st, RoleName(r)) == "healthy";
    }
    if (other_out && r_ok) {
      sh_->Log(fmt::format("the {} is not healthy on every server concerned: the fault goes to it instead (a fault "
                           "during its replay)",
                           RoleName(1 - r)));
      return 1 - r;
    }
    return r;
  }

  void NasEpisode() {
    const auto [k, param] = DrawNasFault();
    std::vector<int> who;
    const int scope = Pick(10);
    if (scope < 4) {
      who = {Pick(2)};
    } else {
      who = {0, 1};
    }
    const int r = PreferReplayingNas(who, Pick(10) < 6 ? 0 : 1);
    const double d = DrawDuration();
    std::string views;
    for (int s : who) views += (views.empty() ? "" : "+") + View(s, r).name();
    sh_->Log(fmt::format("episode: {}{} on {} for {:.2f} s{}", KindName(k), param ? fmt::format("({})", param) : "",
                         views, d, who.size() == 1 ? " (a partition: one server's path only)" : " (the NAS itself)"));
    if (!OtherNasHealthy(who, r)) return;
    Guard g(*sh_);
    for (int s : who) ApplyNasFault(g, k, s, r, param);
    Hold(Secs(d));
    g.Undo();
  }

  void FlapEpisode() {
    const int r0 = Pick(10) < 6 ? 0 : 1;
    std::vector<int> who = Pick(2) == 0 ? std::vector<int>{Pick(2)} : std::vector<int>{0, 1};
    const int r = PreferReplayingNas(who, r0);
    const int n = 3 + Pick(4);
    std::string views;
    for (int s : who) views += (views.empty() ? "" : "+") + View(s, r).name();
    sh_->Log(fmt::format("episode: flap {} x{}", views, n));
    if (!OtherNasHealthy(who, r)) return;
    for (int i = 0; i < n && !aborted_; ++i) {
      static constexpr FaultKind kinds[] = {FaultKind::kKill, FaultKind::kHang, FaultKind::kEioAll, FaultKind::kVerySlow};
      const FaultKind k = kinds[Pick(4)];
      const double down = Uniform(0.15, 0.8), up = Uniform(0.2, 1.2);
      {
        Guard g(*sh_);
        sh_->Log(fmt::format("flap {}/{}: {} for {:.2f} s", i + 1, n, KindName(k), down));
        for (int s : who) ApplyNasFault(g, k, s, r, k == FaultKind::kVerySlow ? sh_->cfg.io_timeout_ms + 200 : 0);
        Hold(Secs(down));
      }
      Hold(Secs(up));
    }
  }

  void SplitEpisode() {
    const int ra = Pick(2);  // a loses ra, b loses the other
    static constexpr FaultKind kinds[] = {FaultKind::kKill, FaultKind::kHang, FaultKind::kEioAll, FaultKind::kUnmount};
    const FaultKind ka = kinds[Pick(4)], kb = kinds[Pick(4)];
    const double d = Uniform(1, 6);
    sh_->Log(fmt::format("episode: split brain: {} {} and {} {} for {:.2f} s", KindName(ka), View(0, ra).name(),
                         KindName(kb), View(1, 1 - ra).name(), d));
    if (!OtherNasHealthy({0}, ra) || !OtherNasHealthy({1}, 1 - ra)) return;
    // Each server now legitimately reads its own NAS: the other's files are
    // not judged until the next quiescent point.
    {
      Guard g(*sh_);
      sh_->cross_suspended = true;
      sh_->split_active = true;
      g.Add("the split brain's faults are over", [this] { sh_->split_active = false; });
      ApplyNasFault(g, ka, 0, ra, 0);
      ApplyNasFault(g, kb, 1, 1 - ra, 0);
      Hold(Secs(d));
    }
  }

  void RestartEpisode() {
    const int s = Pick(2);
    // After peer_timeout the other server counts it dead and takes over.
    const bool long_down = Pick(10) < 3;
    const Ms down = long_down ? Secs(sh_->cfg.peer_timeout_s + Uniform(1, 3)) : Secs(Uniform(0, 1));
    const bool during_outage = Pick(10) < 4;
    const int r = Pick(10) < 6 ? 0 : 1;
    const FaultKind k = Pick(2) == 0 ? FaultKind::kKill : FaultKind::kHang;
    sh_->Log(fmt::format("episode: nasfs {} killed and restarted after {} ms{}", srv_[s].node, down.count(),
                         during_outage ? fmt::format(", during a {} of {}", KindName(k), View(s, r).name()) : ""));
    Guard g(*sh_);
    if (during_outage) {
      if (!OtherNasHealthy({s}, r)) return;
      ApplyNasFault(g, k, s, r, 0);
      Hold(Secs(Uniform(0.3, 2)));
    }
    RestartNasfs(s, down);
    if (during_outage) Hold(Secs(Uniform(0.5, 2)));
    g.Undo();
  }

  void JournalFullEpisode() {
    const int s = Pick(2);
    if (!srv_[s].journal_fs_mounted) return NasEpisode();
    const bool with_outage = Pick(2) == 0;
    const int r = Pick(10) < 6 ? 0 : 1;
    const double d = Uniform(0.5, 4);
    sh_->Log(fmt::format("episode: journal disk of {} full for {:.2f} s{}", srv_[s].node, d,
                         with_outage ? fmt::format(", with {} killed", View(s, r).name()) : ""));
    Guard g(*sh_);
    FillJournal(g, s);
    if (with_outage && OtherNasHealthy({s}, r)) ApplyNasFault(g, FaultKind::kKill, s, r, 0);
    Hold(Secs(d));
    g.Undo();
  }

  void Episode() {
    const int x = Pick(100);
    if (x < 62) return NasEpisode();
    if (x < 72) return FlapEpisode();
    if (x < 82) return RestartEpisode();
    if (x < 91) return JournalFullEpisode();
    return SplitEpisode();
  }

  // ---- quiescent points ----

  // Why server s is not settled yet ("" once it is).
  std::string Unsettled(int s, const json& st) {
    if (st.contains("nasfsctl_error")) return "status failed: " + Str(st["nasfsctl_error"]);
    std::vector<std::string> why;
    if (ReadFrom(st) != "master") why.push_back("read_from " + ReadFrom(st));
    for (const char* r : {"master", "backup"}) {
      if (StateOf(st, r) != "healthy") why.push_back(fmt::format("{} {}", r, StateOf(st, r)));
    }
    if (Num(Get(st, "/journal/pending")) != 0) why.push_back("journal.pending " + Get(st, "/journal/pending").dump());
    if (Str(Get(st, "/journal/state")) != "ok") why.push_back("journal.state " + Str(Get(st, "/journal/state")));
    const std::string sb = Str(Get(st, "/split_brain/state"));
    if (sb == "detected" || sb == "resolving") why.push_back("split_brain " + sb);
    const json waiting = Get(st, "/coordination/waiting_for");
    if (waiting.is_array() && !waiting.empty()) why.push_back("waiting_for " + waiting.dump());
    bool peer_ok = false;
    for (const auto& p : Get(st, "/peers")) {
      if (Get(p, "/node") == srv_[1 - s].node) {
        peer_ok = Get(p, "/alive") == true && Get(p, "/pending_master") == 0 && Get(p, "/pending_backup") == 0;
      }
    }
    if (!peer_ok) why.push_back("peer " + srv_[1 - s].node + " not alive with nothing pending");
    std::string out;
    for (const auto& w : why) out += (out.empty() ? "" : ", ") + w;
    return out;
  }

  // One model path checked against a NAS store (or a mount): "" when it
  // holds what the model says.
  static std::string CheckEntry(const std::string& root, const std::string& p, const Node& n, size_t nlink) {
    const std::string full = root + "/" + p;
    struct stat st {};
    if (lstat(full.c_str(), &st) != 0) return fmt::format("{}: {}", p, std::strerror(errno));
    switch (n.kind) {
      case PathState::Kind::kDir:
        if (!S_ISDIR(st.st_mode)) return fmt::format("{}: not a directory (mode {:o})", p, st.st_mode);
        if ((st.st_mode & 07777) != n.mode) return fmt::format("{}: mode {:o}, expected {:o}", p, st.st_mode & 07777, n.mode);
        return "";
      case PathState::Kind::kSymlink: {
        if (!S_ISLNK(st.st_mode)) return fmt::format("{}: not a symlink (mode {:o})", p, st.st_mode);
        char buf[4096];
        const ssize_t len = readlink(full.c_str(), buf, sizeof buf);
        if (len < 0) return fmt::format("{}: readlink: {}", p, std::strerror(errno));
        if (std::string(buf, static_cast<size_t>(len)) != n.target) {
          return fmt::format("{}: symlink to '{}', expected '{}'", p, std::string(buf, static_cast<size_t>(len)), n.target);
        }
        return "";
      }
      case PathState::Kind::kFile: {
        if (!S_ISREG(st.st_mode)) return fmt::format("{}: not a regular file (mode {:o})", p, st.st_mode);
        std::vector<std::string> bad;
        if ((st.st_mode & 07777) != n.file->mode) {
          bad.push_back(fmt::format("mode {:o}, expected {:o}", st.st_mode & 07777, n.file->mode));
        }
        if (st.st_nlink != nlink) bad.push_back(fmt::format("{} links, expected {}", st.st_nlink, nlink));
        const auto data = ReadFile(full);
        const std::string& want = n.file->data;
        if (!data) {
          bad.push_back(fmt::format("unreadable: {}", std::strerror(errno)));
        } else if (*data != want) {
          size_t first = 0;
          while (first < data->size() && first < want.size() && (*data)[first] == want[first]) ++first;
          bad.push_back(fmt::format("holds {} bytes (xxh3 {:016x}), expected {} bytes (xxh3 {:016x}); first "
                                    "difference at byte {}",
                                    data->size(), XXH3_64bits(data->data(), data->size()), want.size(),
                                    XXH3_64bits(want.data(), want.size()), first));
        }
        char xv[256];
        const ssize_t xl = lgetxattr(full.c_str(), "user.soak", xv, sizeof xv);
        const std::string xattr = xl >= 0 ? std::string(xv, static_cast<size_t>(xl)) : "";
        if (xattr != n.file->xattr) bad.push_back(fmt::format("user.soak '{}', expected '{}'", xattr, n.file->xattr));
        if (bad.empty()) return "";
        std::string s = p + ":";
        for (size_t i = 0; i < bad.size(); ++i) s += (i == 0 ? " " : "; ") + bad[i];
        return s;
      }
      default: return p + ": ?";
    }
  }

  // The model's certain paths against what `root` (a store or a mount)
  // holds; `exact`: also no entry the model lacks (outside uncertain
  // paths), and each hard-link group one inode.
  std::vector<std::string> CheckModel(Model& m, const std::string& root, const std::string& name, bool through_mount) {
    std::vector<std::string> bad;
    std::map<const FileObj*, size_t> links;
    for (const auto& [p, n] : m.nodes()) {
      if (n.file) ++links[n.file.get()];
    }
    std::map<const FileObj*, ino_t> ino_of;
    std::map<ino_t, const FileObj*> obj_of;
    for (const auto& [p, n] : m.nodes()) {
      if (m.Uncertain(p)) continue;
      std::string e = CheckEntry(root, p, n, n.file ? links[n.file.get()] : 0);
      if (e.empty() && through_mount && n.kind == PathState::Kind::kFile) {
        // Through the mount, the bytes as a reader gets them (O_DIRECT).
        const auto got = ReadDirect(root + "/" + p);
        if (!got || *got != n.file->data) {
          e = fmt::format("{}: an O_DIRECT read gives {}, expected {} bytes", p,
                          got ? fmt::format("{} bytes (other bytes)", got->size()) : std::string(std::strerror(errno)),
                          n.file->data.size());
        }
      }
      if (!e.empty()) bad.push_back(name + ": " + e + "; its operations:" + RecentOps(sh_->t0, m, p));
      if (n.file && !through_mount) {
        struct stat st {};
        if (lstat((root + "/" + p).c_str(), &st) == 0) {
          auto [it, fresh] = ino_of.emplace(n.file.get(), st.st_ino);
          if (!fresh && it->second != st.st_ino) {
            bad.push_back(fmt::format("{}: {} is a hard link of another name but has its own inode", name, p));
          }
          auto [jt, fresh2] = obj_of.emplace(st.st_ino, n.file.get());
          if (!fresh2 && jt->second != n.file.get()) {
            bad.push_back(fmt::format("{}: {} shares an inode with a file it is no link of", name, p));
          }
        }
      }
      if (n.kind == PathState::Kind::kDir && !m.UncertainBelow(p)) {
        // The listing: exactly the model's children (nothing resurrected,
        // nothing lost).
        std::set<std::string> want, got;
        for (const auto& c : m.Children(p)) want.insert(Leaf(c));
        DIR* d = opendir((root + "/" + p).c_str());
        if (d == nullptr) {
          bad.push_back(fmt::format("{}: opendir {}: {}", name, p, std::strerror(errno)));
          continue;
        }
        while (dirent* de = readdir(d)) {
          if (std::strcmp(de->d_name, ".") != 0 && std::strcmp(de->d_name, "..") != 0) got.insert(de->d_name);
        }
        closedir(d);
        for (const auto& w : want) {
          if (!got.count(w)) bad.push_back(fmt::format("{}: {}/{} is not listed", name, p, w));
        }
        for (const auto& g : got) {
          if (!want.count(g)) bad.push_back(fmt::format("{}: {}/{} should not exist", name, p, g));
        }
      }
    }
    return bad;
  }

  // What a store holds under dir, as model nodes (hard links sharing one
  // FileObj by inode).
  static void ReadTree(const std::string& store, const std::string& rel, std::map<std::string, Node>* out,
                       std::map<ino_t, std::shared_ptr<FileObj>>* by_ino) {
    const std::string full = store + "/" + rel;
    struct stat st {};
    if (lstat(full.c_str(), &st) != 0) return;
    Node n;
    if (S_ISDIR(st.st_mode)) {
      n.kind = PathState::Kind::kDir;
      n.mode = st.st_mode & 07777;
      (*out)[rel] = n;
      DIR* d = opendir(full.c_str());
      if (d == nullptr) return;
      std::vector<std::string> names;
      while (dirent* de = readdir(d)) {
        if (std::strcmp(de->d_name, ".") != 0 && std::strcmp(de->d_name, "..") != 0) names.push_back(de->d_name);
      }
      closedir(d);
      for (const auto& name : names) ReadTree(store, rel + "/" + name, out, by_ino);
    } else if (S_ISLNK(st.st_mode)) {
      n.kind = PathState::Kind::kSymlink;
      char buf[4096];
      const ssize_t len = readlink(full.c_str(), buf, sizeof buf);
      n.target = len >= 0 ? std::string(buf, static_cast<size_t>(len)) : "";
      (*out)[rel] = n;
    } else if (S_ISREG(st.st_mode)) {
      n.kind = PathState::Kind::kFile;
      auto& f = (*by_ino)[st.st_ino];
      if (!f) {
        f = std::make_shared<FileObj>();
        f->data = ReadFile(full).value_or("");
        f->mode = st.st_mode & 07777;
        char xv[256];
        const ssize_t xl = lgetxattr(full.c_str(), "user.soak", xv, sizeof xv);
        f->xattr = xl >= 0 ? std::string(xv, static_cast<size_t>(xl)) : "";
      }
      n.file = f;
      (*out)[rel] = n;
    }
  }

  // Invariants 1 and 5. Returns false (the soak stops) when they fail.
  bool Quiesce(int index, bool final_point) {
    sh_->Log(fmt::format("quiescent point #{}{}: pausing the writers", index, final_point ? " (the last)" : ""));
    const auto t = Clock::now();
    if (!PauseWriters(Ms(30000))) return false;
    const auto settle_from = Clock::now();
    json st[2];
    std::string why[2];
    bool settled = false;
    while (!aborted_) {
      CheckDaemons();
      for (int s = 0; s < 2; ++s) {
        st[s] = StatusNow(s);
        why[s] = Unsettled(s, st[s]);
      }
      if (why[0].empty() && why[1].empty()) {
        settled = true;
        break;
      }
      if (Clock::now() > settle_from + std::chrono::seconds(sh_->cfg.settle_s)) break;
      std::this_thread::sleep_for(Ms(100));
    }
    if (!settled) {
      if (!aborted_) {
        sh_->Violate("settle", fmt::format("{} s after every fault was undone and the writers paused, not settled "
                                           "(both mounts on the master, both NAS healthy, nothing pending):\n  a: {}\n"
                                           "  b: {}\n  status a: {}\n  status b: {}",
                                           sh_->cfg.settle_s,
                                           why[0], why[1], st[0].dump(), st[1].dump()));
      }
      return false;
    }
    const double settle_s = SecondsSince(settle_from);
    // A server's attributes of what the other just changed may be a cache
    // period old.
    std::this_thread::sleep_for(Ms(sh_->cfg.cache_timeout_s * 1000 + 300));

    bool ok = true;
    const auto diffs = CompareTrees(store_[0], store_[1]);
    if (!diffs.empty()) {
      sh_->Violate("store_diff", fmt::format("the stores differ ({} differences):{}", diffs.size(), FirstLines(diffs, 30)));
      ok = false;
    }
    for (int s = 0; s < 2; ++s) {
      const auto v = RunCommand({NasfsctlBin(), "verify", Mnt(s)}, Within(Ms(60000)));
      if (!v.ok()) {
        sh_->Violate("verify", fmt::format("nasfsctl verify mnt_{}: {}", srv_[s].node, v.Describe()));
        ok = false;
      } else if (!diffs.empty()) {
        // verify's promise: "reports every difference".
        sh_->Violate("verify_missed", fmt::format("nasfsctl verify mnt_{} exits 0 (\"match\") while the stores differ "
                                                  "({} differences, first: {}): {}",
                                                  srv_[s].node, diffs.size(), diffs.front(), v.Describe()));
      }
    }
    // Invariant 1: the certain paths on both stores and through both
    // mounts; then the uncertain ones adopted from the (identical) stores.
    size_t paths = 0, uncertain = 0;
    for (auto& mp : sh_->models) {
      Model& m = *mp;
      std::lock_guard lk(m.mu);
      uncertain += m.uncertain().size();
      paths += m.nodes().size();
      for (int r = 0; r < 2; ++r) {
        const auto bad = CheckModel(m, store_[r], fmt::format("store_{}", RoleName(r)), false);
        if (!bad.empty()) {
          sh_->Violate("lost_write", fmt::format("writer {}: the {} does not hold what was acknowledged ({} "
                                                 "differences):{}",
                                                 m.root(), RoleName(r), bad.size(), FirstLines(bad, 30)));
          ok = false;
        }
      }
      if (!ok) continue;
      std::map<std::string, Node> adopted;
      std::map<ino_t, std::shared_ptr<FileObj>> by_ino;
      ReadTree(store_[0], m.root(), &adopted, &by_ino);
      if (!m.uncertain().empty()) m.Adopt(std::move(adopted), Clock::now());
      m.PruneHistory(Clock::now(), sh_->cfg.HistoryKeep());
      for (int s = 0; s < 2; ++s) {
        const auto bad = CheckModel(m, Mnt(s), "mnt_" + srv_[s].node, true);
        if (!bad.empty()) {
          sh_->Violate("mount_readback", fmt::format("writer {}: read back through mnt_{} ({} differences):{}",
                                                     m.root(), srv_[s].node, bad.size(), FirstLines(bad, 30)));
          ok = false;
        }
      }
    }
    if (ok) sh_->cross_suspended = false;
    sh_->Log(fmt::format("quiescent point #{}: {} (settled in {:.2f} s, whole check {:.2f} s; {} model paths, {} "
                         "uncertain; ops ok={} failed(expected)={} failed={}; reads judged={} skipped={} "
                         "unjudged(split)={} killed={}; sweeps={} ({} reads); slowest call {})",
                         index, ok ? "all invariants hold" : "VIOLATED", settle_s, SecondsSince(t), paths, uncertain,
                         sh_->ops_ok.load(), sh_->ops_failed_expected.load(), sh_->ops_failed.load(),
                         sh_->reads_ok.load(), sh_->reads_skipped.load(), sh_->reads_cross_unjudged.load(),
                         sh_->reads_failed_expected.load(), sh_->sweeps.load(), sh_->sweep_reads.load(),
                         sh_->Slowest()));
    if (ok) ResumeWriters();
    return ok;
  }

  // ---- the report ----

  // The lines of log whose spdlog time ("[YYYY-mm-dd HH:MM:SS.mmm]") is
  // within `window_ms` of wall ("HH:MM:SS.mmm").
  static std::vector<std::string> LinesAround(const std::string& log, const std::string& wall, int window_ms) {
    auto ms_of = [](const std::string& hms) -> int64_t {
      int h, m, s, ms;
      if (std::sscanf(hms.c_str(), "%d:%d:%d.%d", &h, &m, &s, &ms) != 4) return -1;
      return ((h * 60LL + m) * 60 + s) * 1000 + ms;
    };
    const int64_t at = ms_of(wall);
    std::vector<std::string> out;
    size_t pos = 0;
    while (pos < log.size()) {
      size_t nl = log.find('\n', pos);
      if (nl == std::string::npos) nl = log.size();
      const std::string line = log.substr(pos, nl - pos);
      pos = nl + 1;
      // "[2025-01-01 11:44:11.123] ..."
      if (line.size() > 24 && line[0] == '[' && line[11] == ' ') {
        const int64_t t = ms_of(line.substr(12, 12));
        if (t >= 0 && at >= 0 && std::llabs(t - at) <= window_ms) out.push_back(line);
      }
    }
    return out;
  }

  // Everything a failing run leaves for a person: printed (seed, schedule,
  // violations with the daemons' log lines around them, the logs' tails)
  // and kept in a directory outside the workspace (which is removed):
  // $NASFS_SOAK_ARTIFACTS, or /tmp/nasfs-soak-<seed>-<pid>.
  void Report() {
    if (reported_) return;
    reported_ = true;
    std::vector<Violation> vs;
    std::vector<std::string> schedule;
    std::map<std::string, int> cats;
    {
      std::lock_guard lk(sh_->log_mu);
      vs = sh_->violations;
      schedule = sh_->schedule;
      cats = sh_->by_category;
    }
    std::string logs[2];
    for (int s = 0; s < 2; ++s) logs[s] = ReadFile(srv_[s].spec.log_file).value_or("");
    const char* dir_env = std::getenv("NASFS_SOAK_ARTIFACTS");
    const std::string dir = dir_env != nullptr && *dir_env != '\0'
                                ? std::string(dir_env)
                                : fmt::format("/tmp/nasfs-soak-{}-{}", seed_, getpid());
    std::error_code ec;
    std::filesystem::create_directories(dir, ec);
    std::string all_schedule, all_violations;
    for (const auto& l : schedule) all_schedule += l + "\n";
    for (const auto& v : vs) all_violations += fmt::format("t={:.3f}s ({}) [{}] {}\n", v.t, v.wall, v.category, v.text);
    bool saved = !ec;
    saved = saved && WriteFile(dir + "/schedule.txt", all_schedule) && WriteFile(dir + "/violations.txt", all_violations);
    for (int s = 0; s < 2; ++s) saved = saved && WriteFile(fmt::format("{}/nasfs_{}.log", dir, srv_[s].node), logs[s]);

    std::printf("\n==== soak report: seed=%llu (NASFS_E2E_SEED=%llu NASFS_SOAK_SECONDS=%d%s to repeat) ====\n",
                static_cast<unsigned long long>(seed_), static_cast<unsigned long long>(seed_), sh_->cfg.seconds,
                sh_->cfg.skip_ops.empty() ? "" : (" NASFS_SOAK_SKIP_OPS=" + sh_->cfg.skip_ops).c_str());
    std::printf("%s\n", saved ? fmt::format("schedule, violations and both daemons' whole logs kept in {}", dir).c_str()
                              : fmt::format("(could not keep the artifacts in {})", dir).c_str());
    std::printf("---- the schedule (faults, status changes, quiescent points; violations inline) ----\n");
    size_t inline_violations = 0;
    for (const auto& l : schedule) {
      const bool is_violation = l.find(") VIOLATION [") != std::string::npos;
      if (is_violation && ++inline_violations > 40) continue;
      std::printf("  %s\n", l.c_str());
    }
    if (inline_violations > 40) std::printf("  (%zu more violation lines left out above)\n", inline_violations - 40);
    std::printf("---- %zu violations, by kind ----\n", sh_->ViolationCount());
    for (const auto& [c, n] : cats) std::printf("  %s: %d\n", c.c_str(), n);
    auto print = [&](size_t i, bool context) {
      const auto& v = vs[i];
      std::printf("[%zu] t=%.3fs (%s) [%s] %s\n", i + 1, v.t, v.wall.c_str(), v.category.c_str(), v.text.c_str());
      if (!context) return;
      for (int s = 0; s < 2; ++s) {
        const auto around = LinesAround(logs[s], v.wall, 1500);
        std::printf("  nasfs %s's log within 1.5 s:%s\n", srv_[s].node.c_str(), FirstLines(around, 40).c_str());
      }
    };
    std::printf("---- the first violation of each kind, with the daemons' log lines around it ----\n");
    std::set<std::string> shown;
    for (size_t i = 0; i < vs.size(); ++i) {
      if (shown.insert(vs[i].category).second) print(i, true);
    }
    std::printf("---- the first %zu violations ----\n", std::min<size_t>(vs.size(), 30));
    for (size_t i = 0; i < vs.size() && i < 30; ++i) print(i, false);
    for (int s = 0; s < 2; ++s) {
      std::printf("---- the last lines of nasfs %s's log (%s) ----\n%s\n---- end of nasfs %s's log ----\n",
                  srv_[s].node.c_str(), srv_[s].spec.log_file.c_str(), Tail(logs[s], 150).c_str(),
                  srv_[s].node.c_str());
    }
    std::fflush(stdout);
  }

  // ---- the soak ----

  void Run() {
    const Config& cfg = sh_->cfg;
    sched_.seed(seed_ * 0x9E3779B97F4A7C15ULL + 1);
    sh_->t0 = Clock::now();
    sh_->Log(fmt::format("soak: {} s, seed {}, {} writers and {} readers per mount, io_timeout={} ms "
                         "probe_interval={} ms peer_timeout={} s cache_timeout={} s, quiescent point every {} s (settled within {} s){}",
                         cfg.seconds, seed_, cfg.writers, cfg.readers, cfg.io_timeout_ms, cfg.probe_interval_ms,
                         cfg.peer_timeout_s, cfg.cache_timeout_s, cfg.quiesce_every_s, cfg.settle_s,
                         cfg.skip_ops.empty() ? "" : ", writers leave out: " + cfg.skip_ops));
    StartLoad();
    // The last quiescent point (replays to finish, then the checks) fits in
    // the duration: faults stop this much before its end.
    const auto reserve = std::chrono::seconds(std::min(30, cfg.seconds / 6));
    const auto end = sh_->t0 + std::chrono::seconds(cfg.seconds) - reserve;
    auto next_quiesce = sh_->t0 + std::chrono::seconds(cfg.quiesce_every_s);
    int quiesced = 0, episodes = 0;
    bool ok = true;
    Hold(Ms(2000));  // the load gets going on a healthy pair first
    while (ok && !aborted_ && Clock::now() < end) {
      if (Clock::now() >= next_quiesce) {
        ok = Quiesce(++quiesced, false);
        next_quiesce = Clock::now() + std::chrono::seconds(cfg.quiesce_every_s);
        continue;
      }
      Episode();
      ++episodes;
      Hold(Secs(Uniform(0.5, 2.5)));
    }
    if (ok && !aborted_) ok = Quiesce(++quiesced, true);
    StopLoad();
    CheckDaemons();
    const size_t n = sh_->ViolationCount();
    const std::string figures = fmt::format(
        "[soak figures] seconds={:.0f} seed={} episodes={} quiescent_points={} ops_ok={} ops_failed_expected={} "
        "ops_failed={} reads_judged={} reads_skipped={} reads_unjudged_split={} reads_killed={} sweeps={} "
        "sweep_reads={} slowest_call={} violations={}",
        sh_->Now(), seed_, episodes, quiesced, sh_->ops_ok.load(), sh_->ops_failed_expected.load(),
        sh_->ops_failed.load(), sh_->reads_ok.load(), sh_->reads_skipped.load(), sh_->reads_cross_unjudged.load(),
        sh_->reads_failed_expected.load(), sh_->sweeps.load(), sh_->sweep_reads.load(), sh_->Slowest(), n);
    std::printf("%s\n", figures.c_str());
    RecordProperty("figures", figures);
    EXPECT_EQ(n, 0u) << n << " violations of nasfs's promises (seed " << seed_
                     << "; the report above lists each, with the schedule and the daemons' logs)";
    EXPECT_GT(sh_->reads_ok.load(), 0u) << "no read was judged";
    EXPECT_GT(sh_->ops_ok.load(), 0u) << "no write was acknowledged";
    if (n > 0 || HasFailure()) Report();
  }

  std::shared_ptr<Shared> sh_;
  Server srv_[2];
  std::string store_[2];
  std::vector<std::unique_ptr<OwnedWorker<int>>> threads_;
  std::mt19937_64 sched_;  // the fault schedule's own
  bool aborted_ = false;
  bool death_reported_[2] = {false, false};
  bool reported_ = false;
};

// Both web servers write and read at once while NAS views hang, die, fill
// up, fail and crawl, nasfs is killed and restarted, the journal disk
// fills, and the servers disagree about which NAS is alive; every promise
// is checked all along and at each quiescent point.
TEST_F(SoakTest, RandomFaultsKeepEveryPromise) { Run(); }

}  // namespace
}  // namespace nasfs::e2e
