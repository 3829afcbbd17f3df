#include "journal/journal.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <map>
#include <random>
#include <string_view>
#include <set>

#include "journal/record.h"
#include "util/mutex.h"

namespace nasfs::journal {
namespace {

enum Kind : uint8_t {
  kMissed = kKindMissed,
  kDone = 2,
  kIntent = 3,
  kRetire = 4,
  kFullSync = 5,
  kPair = 6,
  kCheckpointBegin = 7,
  kCheckpointEnd = 8,
};

constexpr size_t kMaxRanges = 64;  // past this, a file is replayed whole
constexpr uint64_t kMaxSeq = uint64_t{1} << 62;  // beyond any journal's life: damage

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string SegmentName(uint64_t n) {
  char b[32];
  std::snprintf(b, sizeof b, "%016llx.log", static_cast<unsigned long long>(n));
  return b;
}

bool ParseSegmentName(const std::string& name, uint64_t* n) {
  if (name.size() != 20 || name.compare(16, 4, ".log") != 0) return false;
  uint64_t v = 0;
  for (size_t i = 0; i < 16; ++i) {
    char c = name[i];
    int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
    if (d < 0) return false;  // only what SegmentName writes: lower-case hex
    v = (v << 4) | static_cast<uint64_t>(d);
  }
  *n = v;
  return true;
}

// Hashes of a path and of its ancestors, in one pass over its bytes: the
// pending index asks "is an ancestor pending?" and "is anything below this
// directory pending?" on every write, and a chain thousands of directories
// deep must cost what its bytes cost, not their square (in time, nor in
// memory: the index keeps a hash per ancestor, not the ancestor's name).
// A polynomial hash modulo the prime 2^61-1 with a base drawn at random per
// daemon: two different paths of length L collide with probability at most
// L/2^61 whatever names a hostile user picks, and a collision only makes
// the index answer "pending" where nothing is (a write is recorded for
// replay that did not need it), never the reverse.
class PathHasher {
 public:
  PathHasher() {
    std::random_device rd;
    base_ = ((static_cast<uint64_t>(rd()) << 32) ^ rd()) % (kPrime - 256) + 256;
  }
  // Calls each(hash) for every ancestor of path, the root ("") first, and
  // returns the hash of path itself. The root has no ancestor.
  template <typename Fn>
  uint64_t Walk(std::string_view path, Fn&& each) const {
    uint64_t h = 0;
    if (path.empty()) return h;
    each(h);  // the root
    for (size_t i = 0; i < path.size(); ++i) {
      if (path[i] == '/') each(h);
      h = Step(h, static_cast<unsigned char>(path[i]));
    }
    return h;
  }
  uint64_t Of(std::string_view path) const {
    return Walk(path, [](uint64_t) {});
  }

 private:
  static constexpr uint64_t kPrime = (uint64_t{1} << 61) - 1;
  uint64_t Step(uint64_t h, unsigned c) const {
    unsigned __int128 x = static_cast<unsigned __int128>(h) * base_ + c + 1;
    uint64_t r = static_cast<uint64_t>(x & kPrime) + static_cast<uint64_t>(x >> 61);
    r = (r & kPrime) + (r >> 61);
    return r >= kPrime ? r - kPrime : r;
  }
  uint64_t base_;
};

void MergeRange(std::vector<Range>* ranges, Range r) {
  if (r.length == 0) return;
  ranges->push_back(r);
  std::sort(ranges->begin(), ranges->end(), [](const Range& a, const Range& b) { return a.offset < b.offset; });
  std::vector<Range> out;
  for (const auto& x : *ranges) {
    if (!out.empty() && x.offset <= out.back().offset + out.back().length) {
      uint64_t end = std::max(out.back().offset + out.back().length, x.offset + x.length);
      out.back().length = end - out.back().offset;
    } else {
      out.push_back(x);
    }
  }
  *ranges = std::move(out);
}

// What a segment's opening checkpoint (if any) is.
enum class CheckpointKind {
  kNone,     // the segment does not open with one
  kWhole,    // every state record is there (CheckpointEnd may be lost: it holds no state)
  kCutOff,   // a crash cut it short while older segments still hold the state: ignored
  kDamaged,  // state records are missing and nothing else holds them: read what is left, report
};

// The record count a CheckpointBegin carries, 0 when it has none (older
// journals).
uint32_t CheckpointCount(std::string_view begin_payload) {
  if (begin_payload.size() != 1 + 8 + 4) return 0;
  return Load32(begin_payload.data() + 9);
}

// How many of the checkpoint's state records (all but its End) are missing.
uint64_t MissingCheckpointRecords(const ScanResult& scan) {
  if (scan.records.empty()) return 0;
  uint32_t count = CheckpointCount(scan.records.front().payload);
  if (count < 2) return 0;
  uint64_t first = scan.records.front().seq;
  std::set<uint64_t> have;
  for (const auto& r : scan.records)
    if (r.seq >= first && r.seq < first + count - 1) have.insert(r.seq);
  return (count - 1) - have.size();
}

// `older_segments`: segments numbered below this one exist (a checkpoint is
// synced before they are deleted, so they do only while it was unfinished).
CheckpointKind CheckpointOf(const ScanResult& scan, bool older_segments) {
  const auto& r = scan.records;
  if (r.empty() || r.front().offset != 0 || r.front().payload.empty() ||
      r.front().payload[0] != static_cast<char>(kCheckpointBegin))
    return CheckpointKind::kNone;
  bool has_end = std::any_of(r.begin(), r.end(), [](const ScannedRecord& x) {
    return !x.payload.empty() && x.payload[0] == static_cast<char>(kCheckpointEnd);
  });
  uint32_t count = CheckpointCount(r.front().payload);
  if (count >= 2 ? MissingCheckpointRecords(scan) == 0 : has_end) return CheckpointKind::kWhole;
  // Damage in the middle is never a crash: a checkpoint is one write.
  if (scan.damaged > 0) return CheckpointKind::kDamaged;
  if (older_segments) return CheckpointKind::kCutOff;
  // Cut short with nothing older to fall back on: what it still holds is
  // the only copy of the state (unless it holds nothing but its Begin).
  return r.size() > 1 ? CheckpointKind::kDamaged : CheckpointKind::kCutOff;
}

// One segment as Open read it.
struct SegmentRead {
  uint64_t num;
  ScanResult scan;
  CheckpointKind kind = CheckpointKind::kNone;
};

// Scans every segment once (contents[i] is segment segs[i]). The tail that
// may be torn is the end of the last segment holding anything: a crash can
// leave an empty segment (or a checkpoint cut off) after it.
std::vector<SegmentRead> ScanSegments(const std::vector<uint64_t>& segs, const std::vector<std::string>& contents) {
  size_t tail = 0;
  for (size_t i = 0; i < segs.size(); ++i)
    if (!contents[i].empty() && CheckpointOf(Scan(contents[i], true), i > 0) != CheckpointKind::kCutOff) tail = i;
  std::vector<SegmentRead> read;
  for (size_t i = 0; i < segs.size(); ++i) {
    SegmentRead s{segs[i], Scan(contents[i], i >= tail)};
    s.kind = CheckpointOf(s.scan, /*older_segments=*/i > 0);
    read.push_back(std::move(s));
  }
  return read;
}

// ---- POSIX Env ----
class PosixFile : public Env::WritableFile {
 public:
  explicit PosixFile(int fd) : fd_(fd) {}
  ~PosixFile() override { close(fd_); }
  int Append(std::string_view data) override {
    while (!data.empty()) {
      ssize_t n = write(fd_, data.data(), data.size());
      if (n < 0) {
        if (errno == EINTR) continue;
        return errno;
      }
      data.remove_prefix(static_cast<size_t>(n));
    }
    return 0;
  }
  int Sync() override { return fdatasync(fd_) == 0 ? 0 : errno; }

 private:
  int fd_;
};

class PosixEnv : public Env {
 public:
  tl::expected<std::unique_ptr<WritableFile>, int> NewWritableFile(const std::string& path) override {
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_APPEND | O_CLOEXEC, 0600);
    if (fd < 0) return tl::unexpected(errno);
    return std::make_unique<PosixFile>(fd);
  }
  tl::expected<std::string, int> ReadFile(const std::string& path) override {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return tl::unexpected(errno);
    std::string out;
    char buf[65536];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) {
        int e = errno;
        close(fd);
        return tl::unexpected(e);
      }
      if (n == 0) break;
      out.append(buf, static_cast<size_t>(n));
    }
    close(fd);
    return out;
  }
  tl::expected<std::vector<std::string>, int> ListDir(const std::string& dir) override {
    DIR* d = opendir(dir.c_str());
    if (!d) return tl::unexpected(errno);
    std::vector<std::string> out;
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n != "." && n != "..") out.push_back(n);
    }
    closedir(d);
    return out;
  }
  int Remove(const std::string& path) override { return unlink(path.c_str()) == 0 ? 0 : errno; }
  int Rename(const std::string& from, const std::string& to) override {
    return rename(from.c_str(), to.c_str()) == 0 ? 0 : errno;
  }
  int SyncDir(const std::string& dir) override {
    int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return errno;
    int r = fsync(fd) == 0 ? 0 : errno;
    close(fd);
    return r;
  }
  int CreateDir(const std::string& dir) override {
    for (size_t pos = 1; pos <= dir.size(); ++pos) {
      if (pos != dir.size() && dir[pos] != '/') continue;
      std::string p = dir.substr(0, pos);
      if (mkdir(p.c_str(), 0700) != 0 && errno != EEXIST) return errno;
    }
    struct stat st;
    if (stat(dir.c_str(), &st) != 0) return errno;
    return S_ISDIR(st.st_mode) ? 0 : ENOTDIR;
  }
  int LockFile(const std::string& path, int* handle) override {
    int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return errno;
    if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
      int e = errno;
      close(fd);
      return e;
    }
    *handle = fd;
    return 0;
  }
  void UnlockFile(int handle) override { close(handle); }
  int DirId(const std::string& dir, uint64_t id[2]) override {
    struct stat st;
    if (stat(dir.c_str(), &st) != 0) return errno;
    if (!S_ISDIR(st.st_mode)) return ENOTDIR;
    id[0] = st.st_dev;
    id[1] = st.st_ino;
    return 0;
  }
};

// Records no larger than the reader accepts: a list of names (Intent,
// Retire) is cut into as many records as it needs.
std::vector<std::string> ListRecords(uint8_t kind, const std::vector<std::string>& names) {
  std::vector<std::string> out;
  std::string p;
  uint32_t n = 0;
  size_t count_at = 0;
  auto flush = [&] {
    if (n == 0) return;
    for (int i = 0; i < 4; ++i) p[count_at + i] = static_cast<char>(n >> (8 * i));
    out.push_back(std::move(p));
    p.clear();
    n = 0;
  };
  for (const auto& d : names) {
    if (n > 0 && p.size() + 4 + d.size() > kMaxPayload) flush();
    if (n == 0) {
      Put8(&p, kind);
      count_at = p.size();
      Put32(&p, 0);
    }
    PutStr(&p, d);
    ++n;
  }
  flush();
  return out;
}

}  // namespace

const char* TargetName(Target t) { return t == kMaster ? "master" : "backup"; }

void AddInode(std::vector<uint64_t>* inodes, uint64_t ino) {
  auto at = std::lower_bound(inodes->begin(), inodes->end(), ino);
  if (at == inodes->end() || *at != ino) inodes->insert(at, ino);
}

void AppendChanges(const std::string& path, Scope scope, uint32_t ops, const std::vector<uint64_t>& inodes,
                   std::vector<Change>* out) {
  ForEachOp(ops, [&](Op op) {
    if (op != Op::kLinked) {
      out->push_back(Change{path, scope, op, 0, 0, {}});
      return;
    }
    for (uint64_t ino : inodes) out->push_back(Change{path, scope, op, ino, 0, {}});
  });
}

const char* OpName(Op op) {
  switch (op) {
    case Op::kWrite: return "write";
    case Op::kMeta: return "meta";
    case Op::kTruncate: return "truncate";
    case Op::kCreate: return "create";
    case Op::kRemove: return "remove";
    case Op::kRename: return "rename";
    case Op::kDirTimes: return "dir-times";
    case Op::kCrash: return "crash";
    case Op::kLinked: return "linked";
  }
  return "?";
}

Env* Env::Default() {
  static PosixEnv env;
  return &env;
}

struct Journal::Impl {
  // Set before the journal is shared, then never changed: read without mu.
  Options opts;
  Env* env = nullptr;
  int outer_lock = -1;  // DIR.lock, beside the directory; kept for the journal's life

  mutable Mutex mu;
  CondVar cv;

  // The repair (Tick, under mu) relocks a recreated directory, so these
  // change after Open.
  int lock_handle GUARDED_BY(mu) = -1;          // DIR/LOCK
  uint64_t dir_id[2] GUARDED_BY(mu) = {0, 0};   // the directory's identity at Open (or repair)
  bool dir_lost GUARDED_BY(mu) = false;         // removed or replaced under us

  // ---- the in-memory state the log describes ----
  std::unordered_map<std::string, Pending> pending[2] GUARDED_BY(mu);
  // Entries a replay is copying (BeginReplay): the changes recorded since,
  // merged the same way, so a Done that finds newer changes leaves just
  // those pending (see Done). In memory only.
  struct Tail {
    uint64_t since = 0;  // the entry's seq when the copy began
    Pending changes;     // path, target, seq and writers unused
  };
  std::unordered_map<std::string, Tail> tails[2] GUARDED_BY(mu);
  // By PathHasher hash, per target: pending entries at a path, and pending
  // entries strictly below a directory. The hasher's base is drawn once, at
  // construction: read without mu.
  PathHasher hasher;
  std::unordered_map<uint64_t, uint32_t> pending_at[2] GUARDED_BY(mu);
  std::unordered_map<uint64_t, uint32_t> below[2] GUARDED_BY(mu);
  bool full_sync[2] GUARDED_BY(mu) = {false, false};
  std::string pair_id GUARDED_BY(mu);
  struct Mark {
    int refs = 0;
    uint64_t seq = 0;  // of the record that made it; durable once durable_seq >= seq
  };
  std::unordered_map<std::string, Mark> active GUARDED_BY(mu);  // activity log marks
  std::set<std::string> recovered GUARDED_BY(mu);  // marks found at Open, not yet retired

  // ---- the log ----
  std::string buf GUARDED_BY(mu);  // records appended, not yet written
  uint64_t next_seq GUARDED_BY(mu) = 1;
  uint64_t durable_seq GUARDED_BY(mu) = 0;
  bool writer_busy GUARDED_BY(mu) = false;  // a leader or a checkpoint owns `file`
  // The pointer is guarded by mu; the file it points to is written only by
  // whoever set writer_busy, which does so with mu released.
  std::unique_ptr<Env::WritableFile> file GUARDED_BY(mu);
  std::vector<uint64_t> segments GUARDED_BY(mu);  // numbers, oldest first; the last is `file`
  uint64_t last_no GUARDED_BY(mu) = 0;            // highest segment number ever used here
  uint64_t seg_bytes GUARDED_BY(mu) = 0, log_bytes GUARDED_BY(mu) = 0, live_bytes GUARDED_BY(mu) = 0;
  int failed GUARDED_BY(mu) = 0;
  std::string failed_text GUARDED_BY(mu);
  uint64_t syncs GUARDED_BY(mu) = 0, records GUARDED_BY(mu) = 0, checkpoints GUARDED_BY(mu) = 0;

  // Started and joined only by the thread that owns the Journal (Open,
  // StartBackground, the destructor); the background thread never touches it.
  std::thread thread;
  bool stopping GUARDED_BY(mu) = false;

  std::string Path(uint64_t n) const { return opts.dir + "/" + SegmentName(n); }

  // ---- state transitions, shared by the live path and Open's replay ----
  static void Count(std::unordered_map<uint64_t, uint32_t>& m, uint64_t h, int delta) {
    auto& c = m[h];
    c = static_cast<uint32_t>(static_cast<int>(c) + delta);
    if (c == 0) m.erase(h);
  }
  // Counts path in (delta +1) or out of (-1) target t's hash index.
  void Index(int t, const std::string& path, int delta) REQUIRES(mu) {
    const uint64_t h = hasher.Walk(path, [&](uint64_t a) {
      mu.AssertHeld();  // Walk calls back at once, on this thread
      Count(below[t], a, delta);
    });
    Count(pending_at[t], h, delta);
  }
  // Merges one change into e (ops, scope, ranges, link), as the entry of
  // every change recorded for its path.
  static void Merge(Pending& e, Scope scope, Op op, uint8_t flags, int64_t ns, uint64_t off, uint64_t len,
                    const std::string& from) {
    e.ops |= 1u << static_cast<unsigned>(op);
    e.scope = std::max(e.scope, scope);
    if ((flags & kFlagWhole) || (op != Op::kWrite && op != Op::kMeta)) {
      e.data_only = false;
      e.ranges.clear();
    } else if (op == Op::kWrite && e.data_only) {
      MergeRange(&e.ranges, Range{off, len});
      if (e.ranges.size() > kMaxRanges) {
        e.data_only = false;
        e.ranges.clear();
      }
    }
    e.data_bytes = 0;
    for (const auto& r : e.ranges) e.data_bytes += r.length;
    if (op == Op::kCreate) e.link_from = from;
    if (op == Op::kLinked) AddInode(&e.inodes, off);
    e.first_ns = std::min(e.first_ns, ns);
  }
  void ApplyMissed(int t, const std::string& path, Scope scope, Op op, uint8_t flags, int64_t ns, uint64_t seq,
                   uint64_t off, uint64_t len, const std::string& from) REQUIRES(mu) {
    auto start = [&](Pending& e) {
      e.data_only = true;
      e.first_ns = ns;
    };
    auto [it, fresh] = pending[t].try_emplace(path);
    Pending& e = it->second;
    if (fresh) {
      e.path = path;
      e.target = t == 0 ? kMaster : kBackup;
      start(e);
      Index(t, path, +1);
      live_bytes += 64 + path.size();
    }
    Merge(e, scope, op, flags, ns, off, len, from);
    e.seq = std::max(e.seq, seq);
    if (auto tl = tails[t].find(path); tl != tails[t].end() && seq > tl->second.since) {
      Pending& c = tl->second.changes;
      if (c.ops == 0) start(c);
      Merge(c, scope, op, flags, ns, off, len, from);
    }
  }
  void ApplyDone(int t, const std::string& path, uint64_t seq) REQUIRES(mu) {
    auto it = pending[t].find(path);
    if (it == pending[t].end()) return;
    auto tl = tails[t].find(path);
    if (it->second.seq > seq) {
      // Changes came while the replay copied: what the copy began with is
      // on t now, so only those stay pending (a large file written
      // steadily is then copied once, and after that by its new ranges).
      if (tl != tails[t].end() && tl->second.since == seq && tl->second.changes.ops != 0) {
        Pending& e = it->second;
        Pending narrowed = std::move(tl->second.changes);  // what, not whose
        narrowed.path = std::move(e.path);
        narrowed.target = e.target;
        narrowed.seq = e.seq;
        narrowed.writers = e.writers;
        e = std::move(narrowed);
        tails[t].erase(tl);
      }
      return;
    }
    if (tl != tails[t].end()) tails[t].erase(tl);
    pending[t].erase(it);
    Index(t, path, -1);
    live_bytes -= std::min<uint64_t>(live_bytes, 64 + path.size());
  }
  void ResetState() REQUIRES(mu) {
    for (int t = 0; t < 2; ++t) {
      pending[t].clear();
      tails[t].clear();
      pending_at[t].clear();
      below[t].clear();
      full_sync[t] = false;
    }
    pair_id.clear();
    recovered.clear();
    live_bytes = 0;
  }

  // Applies the records of the segments Open read, from `first` (the last
  // whole or damaged checkpoint) on; a checkpoint cut off is skipped.
  // Counts them and the damage in *rec, the activity marks in *marks, the
  // names of damaged segments in *damaged. Returns the highest seq read in
  // any segment.
  uint64_t ApplySegments(const std::vector<SegmentRead>& read, size_t first, Recovered* rec,
                         std::set<std::string>* marks, std::vector<std::string>* damaged) REQUIRES(mu) {
    uint64_t max_seq = 0;
    for (size_t i = 0; i < read.size(); ++i) {
      const SegmentRead& s = read[i];
      for (const auto& x : s.scan.records)
        if (x.seq <= kMaxSeq) max_seq = std::max(max_seq, x.seq);
      if (i < first || s.kind == CheckpointKind::kCutOff) continue;
      uint64_t bad = s.scan.damaged;
      // A damaged checkpoint lacks state records that were there.
      if (s.kind == CheckpointKind::kDamaged) bad += std::max<uint64_t>(1, MissingCheckpointRecords(s.scan));
      for (const auto& x : s.scan.records) {
        // A seq no journal reaches (2^62 records) would wrap the counter, and
        // every later record would count as durable before it is written.
        if (x.seq <= kMaxSeq && ApplyRecord(x.seq, x.payload, marks)) ++rec->records;
        else ++bad;  // a well-framed record that makes no sense
      }
      rec->torn_bytes += s.scan.torn_bytes;
      rec->damaged_records += bad;
      if (bad) damaged->push_back(SegmentName(s.num));
    }
    return max_seq;
  }

  // Applies one record read back from disk; false if it makes no sense.
  bool ApplyRecord(uint64_t seq, std::string_view payload, std::set<std::string>* marks) REQUIRES(mu) {
    Reader r(payload);
    uint8_t kind = r.U8();
    switch (kind) {
      case kMissed: {
        MissedRecord m;
        if (!DecodeMissed(payload, &m)) return false;
        const Change& c = m.change;
        ApplyMissed(TargetIndex(m.target), c.path, c.scope, c.op, m.flags, m.ns, m.entry_seq ? m.entry_seq : seq,
                    c.offset, c.length, c.link_from);
        return true;
      }
      case kDone: {
        uint8_t target = r.U8();
        uint64_t upto = r.U64();
        std::string path = r.Str();
        if (!r.done() || (target != kMaster && target != kBackup)) return false;
        ApplyDone(target == kMaster ? 0 : 1, path, upto);
        return true;
      }
      case kIntent:
      case kRetire: {
        uint32_t n = r.U32();
        std::vector<std::string> dirs;
        for (uint32_t i = 0; i < n && r.ok(); ++i) dirs.push_back(r.Str());
        if (!r.done()) return false;
        for (auto& d : dirs) {
          if (kind == kIntent) marks->insert(d);
          else marks->erase(d);
        }
        return true;
      }
      case kFullSync: {
        uint8_t target = r.U8(), on = r.U8();
        if (!r.done() || (target != kMaster && target != kBackup)) return false;
        full_sync[target == kMaster ? 0 : 1] = on != 0;
        return true;
      }
      case kPair: {
        std::string id = r.Str();
        if (!r.done()) return false;
        pair_id = id;
        return true;
      }
      case kCheckpointBegin:
        r.U64();
        if (!r.done()) r.U32();  // the record count (absent in journals written before it was added)
        if (!r.done()) return false;
        ResetState();
        marks->clear();
        return true;
      case kCheckpointEnd:
        if (r.U32(); !r.done()) return false;
        return true;
    }
    return false;
  }

  // ---- appending ----
  uint64_t AppendLocked(const std::string& payload) REQUIRES(mu) {
    uint64_t seq = next_seq++;
    Frame(&buf, seq, payload);
    ++records;
    return seq;
  }

  void FailLocked(int e, const std::string& what) REQUIRES(mu) {
    if (!failed) {
      failed = e;
      failed_text = what + ": " + std::strerror(e);
    }
    buf.clear();  // a repair checkpoint writes the whole state afresh
    cv.SignalAll();
  }

  // Waits until every record up to seq is on disk; the first waiter that
  // finds no write running writes and syncs for everyone (group commit),
  // with mu released meanwhile.
  int WaitDurableLocked(uint64_t seq) REQUIRES(mu) {
    while (durable_seq < seq) {
      if (failed) return failed;
      if (writer_busy) {
        cv.Wait(&mu);
        continue;
      }
      // Writing into a segment of a directory that is gone would "succeed"
      // into a deleted file: nothing recorded would survive a restart.
      if (int e = CheckDirLocked()) return e;
      writer_busy = true;
      std::string data;
      data.swap(buf);
      uint64_t upto = next_seq - 1;
      Env::WritableFile* f = file.get();
      mu.Unlock();
      int e = data.empty() ? 0 : f->Append(data);
      if (!e && !data.empty()) e = f->Sync();
      mu.Lock();
      writer_busy = false;
      if (e) {
        // The repair (RecreateDirLocked) may have emptied the list while
        // this write ran with mu released.
        FailLocked(e, "writing " + (segments.empty() ? opts.dir : Path(segments.back())));
        return e;
      }
      durable_seq = std::max(durable_seq, upto);
      seg_bytes += data.size();
      log_bytes += data.size();
      ++syncs;
      if (seg_bytes >= opts.segment_bytes) RollLocked();
      cv.SignalAll();
    }
    return failed && durable_seq < seq ? failed : 0;
  }

  // Fails the journal if its directory was removed or replaced.
  int CheckDirLocked() REQUIRES(mu) {
    uint64_t id[2];
    int e = env->DirId(opts.dir, id);
    if (e == 0 && id[0] == dir_id[0] && id[1] == dir_id[1]) return 0;
    dir_lost = true;
    FailLocked(ENOENT, "the journal directory " + opts.dir +
                           (e ? " was removed" : " was replaced by another directory"));
    return failed;
  }

  // A lost directory is made again, locked, and given the whole state (the
  // checkpoint that follows). Caller is the repair (Tick).
  int RecreateDirLocked() REQUIRES(mu) {
    if (int e = env->CreateDir(opts.dir)) return e;
    int handle = -1;
    if (int e = env->LockFile(opts.dir + "/LOCK", &handle)) return e;
    if (int e = env->DirId(opts.dir, dir_id)) {
      env->UnlockFile(handle);
      return e;
    }
    if (lock_handle >= 0) env->UnlockFile(lock_handle);
    lock_handle = handle;
    segments.clear();  // they went with the old directory
    dir_lost = false;
    return 0;
  }

  // Seals the current segment and starts an empty one (mu released while
  // the file is made).
  void RollLocked() REQUIRES(mu) {
    writer_busy = true;
    uint64_t n = ++last_no;
    std::string path = Path(n);
    mu.Unlock();
    auto f = env->NewWritableFile(path);
    int e = f ? env->SyncDir(opts.dir) : f.error();
    mu.Lock();
    writer_busy = false;
    if (e) {
      FailLocked(e, "starting " + path);
      return;
    }
    file = std::move(*f);
    segments.push_back(n);
    seg_bytes = 0;
  }

  // The whole live state as records, for a checkpoint.
  // The whole live state as records, for a checkpoint: CheckpointBegin
  // (carrying how many records the checkpoint holds, so a reader can tell a
  // whole one from a damaged one), the state, CheckpointEnd.
  std::string SnapshotLocked(uint64_t* last_seq) REQUIRES(mu) {
    std::vector<std::string> body;
    std::string p;
    if (!pair_id.empty()) {
      Put8(&p, kPair);
      PutStr(&p, pair_id);
      body.push_back(std::move(p));
      p.clear();
    }
    for (int t = 0; t < 2; ++t) {
      uint8_t target = t == 0 ? kMaster : kBackup;
      if (full_sync[t]) {
        Put8(&p, kFullSync);
        Put8(&p, target);
        Put8(&p, 1);
        body.push_back(std::move(p));
        p.clear();
      }
      for (const auto& [path, e] : pending[t]) {
        auto missed = [&](Op op, uint8_t flags, uint64_t off, uint64_t len) {
          MissedRecord m{static_cast<Target>(target), {path, e.scope, op, off, len, op == Op::kCreate ? e.link_from : std::string()},
                         flags, e.first_ns, e.seq};
          body.push_back(EncodeMissed(m));
        };
        ForEachOp(e.ops, [&](Op op) {
          if (op == Op::kLinked)
            for (uint64_t ino : e.inodes) missed(op, kFlagWhole, ino, 0);
          else if (op != Op::kWrite)
            missed(op, e.data_only ? 0 : kFlagWhole, 0, 0);
        });
        if (e.ops & (1u << static_cast<unsigned>(Op::kWrite))) {
          if (!e.data_only || e.ranges.empty()) missed(Op::kWrite, kFlagWhole, 0, 0);
          for (const auto& r : e.ranges) missed(Op::kWrite, 0, r.offset, r.length);
        }
      }
    }
    std::vector<std::string> marks(recovered.begin(), recovered.end());
    for (const auto& [d, m] : active) marks.push_back(d);
    for (auto& r : ListRecords(kIntent, marks)) body.push_back(std::move(r));
    const uint32_t count = static_cast<uint32_t>(body.size() + 2);
    std::string out;
    Put8(&p, kCheckpointBegin);
    Put64(&p, next_seq);
    Put32(&p, count);
    Frame(&out, next_seq++, p);
    for (const auto& r : body) Frame(&out, next_seq++, r);
    p.clear();
    Put8(&p, kCheckpointEnd);
    Put32(&p, count);
    Frame(&out, next_seq++, p);
    *last_seq = next_seq - 1;
    return out;
  }

  // Writes the snapshot into a new segment with mu released meanwhile.
  int CheckpointLocked() REQUIRES(mu) {
    while (writer_busy) cv.Wait(&mu);
    writer_busy = true;
    uint64_t upto = 0;
    std::string data = SnapshotLocked(&upto);
    buf.clear();  // everything appended so far is in the snapshot
    uint64_t n = ++last_no;
    std::string path = Path(n);
    std::vector<uint64_t> old = segments;
    mu.Unlock();
    int e = 0;
    auto f = env->NewWritableFile(path);
    if (!f) e = f.error();
    if (!e) e = (*f)->Append(data);
    if (!e) e = (*f)->Sync();
    if (!e) e = env->SyncDir(opts.dir);
    if (!e)
      for (uint64_t o : old) (void)env->Remove(Path(o));
    if (e && f) (void)env->Remove(path);
    mu.Lock();
    writer_busy = false;
    if (e) {
      FailLocked(e, "checkpoint into " + path);
      return e;
    }
    file = std::move(*f);
    segments = {n};
    seg_bytes = log_bytes = data.size();
    durable_seq = std::max(durable_seq, upto);
    failed = 0;
    failed_text.clear();
    ++checkpoints;
    ++syncs;
    cv.SignalAll();
    return 0;
  }

  // Whether path, an ancestor of it, or something below it is pending for
  // target t: one pass over path's bytes (see PathHasher).
  bool TouchesLocked(int t, const std::string& path) const REQUIRES(mu) {
    if (pending[t].empty()) return false;
    bool ancestor = false;
    const uint64_t h = hasher.Walk(path, [&](uint64_t a) {
      mu.AssertHeld();  // Walk calls back at once, on this thread
      ancestor = ancestor || pending_at[t].count(a);
    });
    return ancestor || pending_at[t].count(h) || below[t].count(h);
  }

  // The same for a change: its path, and for a link the name it links to
  // (a link made where its source is still pending would find no source).
  bool TouchesLocked(int t, const Change& c) const REQUIRES(mu) {
    return TouchesLocked(t, c.path) || (!c.link_from.empty() && TouchesLocked(t, c.link_from));
  }

  uint64_t AppendMissedLocked(Target target, const Change& c) REQUIRES(mu) {
    int64_t ns = NowNs();
    uint64_t seq = AppendLocked(EncodeMissed(MissedRecord{target, c, 0, ns, 0}));
    ApplyMissed(TargetIndex(target), c.path, c.scope, c.op, 0, ns, seq, c.offset, c.length, c.link_from);
    return seq;
  }

  void RunBackground(Journal* j) EXCLUDES(mu) {
    MutexLock lk(&mu);
    while (!stopping) {
      // One wait, not a loop to the deadline: a signal (a failure, a sync,
      // the destructor) starts the next tick early, as it always has.
      auto until = std::chrono::steady_clock::now() + std::chrono::milliseconds(opts.background_interval_ms);
      (void)cv.WaitUntil(&mu, until);
      if (stopping) break;
      lk.Unlock();
      // Nothing a tick does may end the daemon (memory exhausted, say):
      // the next tick tries again.
      try {
        j->Tick();
      } catch (...) {
      }
      lk.Lock();
    }
  }
};

Journal::Journal(const Options& opts) : impl_(std::make_unique<Impl>()), dir_(opts.dir) {
  impl_->opts = opts;
  impl_->env = opts.env ? opts.env : Env::Default();
}

Journal::~Journal() {
  {
    MutexLock lk(&impl_->mu);
    impl_->stopping = true;
  }
  impl_->cv.SignalAll();
  if (impl_->thread.joinable()) impl_->thread.join();
  (void)Flush();
  // No other thread is left, so file and lock_handle need no lock here (nor
  // does clang check destructors).
  impl_->file.reset();
  if (impl_->lock_handle >= 0) impl_->env->UnlockFile(impl_->lock_handle);
  if (impl_->outer_lock >= 0) impl_->env->UnlockFile(impl_->outer_lock);
}

tl::expected<std::unique_ptr<Journal>, std::string> Journal::Open(const Options& opts, Recovered* out) {
  Recovered local;
  Recovered& rec = out ? *out : local;
  rec = Recovered{};
  std::unique_ptr<Journal> j(new Journal(opts));
  Impl& m = *j->impl_;
  Env* env = m.env;
  // Nothing else sees the journal until Open returns, and the background
  // thread starts only after this is released: the lock is uncontended, and
  // held so that the analysis checks the state filled in here. Declared
  // after j, so an early return releases it before ~Journal takes it.
  MutexLock lk(&m.mu);
  auto fail = [&](const std::string& what, int e) {
    return tl::unexpected(std::string("journal ") + opts.dir + ": " + what + ": " + std::strerror(e));
  };
  if (opts.dir.empty() || opts.dir.front() != '/')
    return tl::unexpected(std::string("journal directory must be an absolute path"));
  if (int e = env->CreateDir(opts.dir)) return fail("cannot create it", e);
  std::string outer = opts.dir;
  while (outer.size() > 1 && outer.back() == '/') outer.pop_back();
  for (auto [path, handle] : {std::pair{outer + ".lock", &m.outer_lock}, std::pair{opts.dir + "/LOCK", &m.lock_handle}})
    if (int e = env->LockFile(path, handle))
      return e == EWOULDBLOCK ? tl::unexpected("journal " + opts.dir + " is in use by another nasfs")
                              : fail("cannot lock " + path, e);
  if (int e = env->DirId(opts.dir, m.dir_id)) return fail("cannot stat it", e);
  auto names = env->ListDir(opts.dir);
  if (!names) return fail("cannot list it", names.error());
  std::vector<uint64_t> segs;
  for (const auto& n : *names) {
    uint64_t num;
    if (ParseSegmentName(n, &num)) segs.push_back(num);
  }
  std::sort(segs.begin(), segs.end());
  rec.fresh = segs.empty();

  // Read every segment once. A segment that opens with a whole checkpoint
  // supersedes everything before it. One whose checkpoint was cut off by a
  // crash is ignored: the segments it was to replace are still there, since
  // they are deleted only after it is synced. Anything else that breaks a
  // checkpoint is damage (see CheckpointOf).
  std::vector<std::string> contents;
  for (uint64_t n : segs) {
    auto d = env->ReadFile(m.Path(n));
    if (!d) return fail("cannot read " + SegmentName(n), d.error());
    contents.push_back(std::move(*d));
  }
  std::vector<SegmentRead> read = ScanSegments(segs, contents);
  size_t first = 0;
  for (size_t i = 0; i < read.size(); ++i)
    if (read[i].kind == CheckpointKind::kWhole || read[i].kind == CheckpointKind::kDamaged) first = i;
  std::set<std::string> marks;
  std::vector<std::string> damaged;
  uint64_t max_seq = m.ApplySegments(read, first, &rec, &marks, &damaged);
  if (!damaged.empty())
    rec.damage = std::to_string(rec.damaged_records) + " unreadable record(s) in " + std::to_string(damaged.size()) +
                 " segment(s) of " + opts.dir + "; what they named is unknown (kept as *.damaged)";
  rec.unfinished_dirs.assign(marks.begin(), marks.end());
  m.recovered = marks;
  m.next_seq = max_seq + 1;
  m.durable_seq = max_seq;
  m.last_no = segs.empty() ? 0 : segs.back();
  for (uint64_t n : segs)
    if (std::find(damaged.begin(), damaged.end(), SegmentName(n)) == damaged.end()) m.segments.push_back(n);
  // Start a fresh segment holding the state just read: torn tails and
  // superseded segments go away with the old files.
  if (int e = m.CheckpointLocked()) return fail("cannot write a checkpoint", e);
  lk.Unlock();
  // Only now, with their readable records safe in the checkpoint, are
  // damaged segments set aside for the operator (a crash before this
  // leaves them superseded, and the next Open deletes them).
  for (const auto& d : damaged) {
    std::string from = opts.dir + "/" + d;
    if (env->Rename(from, from + ".damaged") == 0) rec.damaged_files.push_back(d + ".damaged");
  }
  if (!damaged.empty()) (void)env->SyncDir(opts.dir);
  if (opts.background) m.thread = std::thread([&m, jp = j.get()] { m.RunBackground(jp); });
  return j;
}

void Journal::StartBackground() {
  Impl& m = *impl_;
  if (m.thread.joinable()) return;
  m.thread = std::thread([&m, this] { m.RunBackground(this); });
}

int Journal::Intend(const std::vector<std::string>& dirs) {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  std::vector<std::string> fresh;
  uint64_t wait_for = 0;
  for (const auto& d : dirs) {
    auto it = m.active.find(d);
    if (it != m.active.end()) {
      ++it->second.refs;
      wait_for = std::max(wait_for, it->second.seq);
    } else if (std::find(fresh.begin(), fresh.end(), d) == fresh.end()) {
      fresh.push_back(d);
    } else {
      ++m.active[d].refs;  // listed twice in one call
    }
  }
  for (const auto& d : fresh)
    if (d.size() > kMaxPathBytes) {
      lk.Unlock();
      Release(dirs);
      return ENAMETOOLONG;
    }
  if (!fresh.empty()) {
    uint64_t seq = 0;
    for (const auto& p : ListRecords(kIntent, fresh)) seq = m.AppendLocked(p);
    for (const auto& d : fresh) {
      auto& mark = m.active[d];
      mark.refs += 1;
      mark.seq = seq;
    }
    wait_for = std::max(wait_for, seq);
  }
  int e = m.failed;
  if (!e && wait_for > m.durable_seq) e = m.WaitDurableLocked(wait_for);
  if (e) {
    lk.Unlock();
    Release(dirs);
  }
  return e;
}

void Journal::Release(const std::vector<std::string>& dirs) {
  MutexLock lk(&impl_->mu);
  for (const auto& d : dirs)
    if (auto it = impl_->active.find(d); it != impl_->active.end() && it->second.refs > 0) --it->second.refs;
}

void Journal::RetireRecovered(const std::vector<std::string>& dirs) {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  std::vector<std::string> gone;
  for (const auto& d : dirs)
    if (m.recovered.erase(d) && !m.active.count(d)) gone.push_back(d);
  for (const auto& p : ListRecords(kRetire, gone)) m.AppendLocked(p);
}

namespace {

// Whether every change fits a record (see kMaxPathBytes).
bool Recordable(const std::vector<Change>& changes) {
  for (const auto& c : changes)
    if (c.path.size() > kMaxPathBytes || c.link_from.size() > kMaxPathBytes) return false;
  return true;
}

}  // namespace

int Journal::AddMissed(Target target, const std::vector<Change>& changes) {
  if (!Recordable(changes)) return ENAMETOOLONG;
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  uint64_t seq = 0;
  for (const auto& c : changes) seq = m.AppendMissedLocked(target, c);
  if (m.failed) return m.failed;
  return seq ? m.WaitDurableLocked(seq) : 0;
}

int Journal::RecordIfTouching(Target target, const std::vector<Change>& changes, bool* recorded) {
  *recorded = false;
  if (!Recordable(changes)) return ENAMETOOLONG;
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  int t = TargetIndex(target);
  bool touch = false;
  for (const auto& c : changes) touch = touch || m.TouchesLocked(t, c);
  if (!touch) return 0;
  *recorded = true;
  uint64_t seq = 0;
  for (const auto& c : changes) {
    seq = m.AppendMissedLocked(target, c);
    ++m.pending[t][c.path].writers;
  }
  if (m.failed) return m.failed;
  return m.WaitDurableLocked(seq);
}

bool Journal::Touches(Target target, const std::vector<Change>& changes) const {
  MutexLock lk(&impl_->mu);
  for (const auto& c : changes)
    if (impl_->TouchesLocked(TargetIndex(target), c)) return true;
  return false;
}

void Journal::EndWrites(Target target, const std::vector<Change>& changes) {
  MutexLock lk(&impl_->mu);
  auto& pending = impl_->pending[TargetIndex(target)];
  for (const auto& c : changes)
    if (auto it = pending.find(c.path); it != pending.end() && it->second.writers > 0) --it->second.writers;
}

std::vector<Pending> Journal::PendingFor(Target target) const {
  MutexLock lk(&impl_->mu);
  std::vector<Pending> out;
  for (const auto& [p, e] : impl_->pending[TargetIndex(target)]) out.push_back(e);
  return out;
}

bool Journal::HasPending(Target target) const {
  MutexLock lk(&impl_->mu);
  return !impl_->pending[TargetIndex(target)].empty();
}

bool Journal::BeginReplay(Target target, const std::string& path, Pending* out) {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  const int t = TargetIndex(target);
  auto it = m.pending[t].find(path);
  if (it == m.pending[t].end() || it->second.writers > 0) return false;
  *out = it->second;
  m.tails[t][path] = Impl::Tail{it->second.seq, {}};
  return true;
}

void Journal::Done(Target target, const std::string& path, uint64_t seq) {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  int t = TargetIndex(target);
  auto it = m.pending[t].find(path);
  if (it == m.pending[t].end()) return;
  if (it->second.seq > seq) {
    // Newer changes: narrowed in memory only (a restart has the log's whole
    // entry back, never less).
    m.ApplyDone(t, path, seq);
    return;
  }
  std::string p;
  Put8(&p, kDone);
  Put8(&p, target);
  Put64(&p, seq);
  PutStr(&p, path);
  m.AppendLocked(p);
  m.ApplyDone(t, path, seq);
}

bool Journal::FinishIfEmpty(Target target, const std::function<void()>& on_empty) {
  MutexLock lk(&impl_->mu);
  if (!impl_->pending[TargetIndex(target)].empty()) return false;
  on_empty();
  return true;
}

int Journal::SetFullSync(Target target, bool on) {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  m.full_sync[TargetIndex(target)] = on;
  std::string p;
  Put8(&p, kFullSync);
  Put8(&p, target);
  Put8(&p, on ? 1 : 0);
  uint64_t seq = m.AppendLocked(p);
  if (m.failed) return m.failed;
  return m.WaitDurableLocked(seq);
}

bool Journal::full_sync(Target target) const {
  MutexLock lk(&impl_->mu);
  return impl_->full_sync[TargetIndex(target)];
}

int Journal::SetPairId(const std::string& id) {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  if (m.pair_id == id) return m.failed;
  m.pair_id = id;
  std::string p;
  Put8(&p, kPair);
  PutStr(&p, id);
  uint64_t seq = m.AppendLocked(p);
  if (m.failed) return m.failed;
  return m.WaitDurableLocked(seq);
}

std::string Journal::pair_id() const {
  MutexLock lk(&impl_->mu);
  return impl_->pair_id;
}

int Journal::Flush() {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  if (m.failed) return m.failed;
  if (m.buf.empty() && !m.writer_busy) return 0;
  return m.WaitDurableLocked(m.next_seq - 1);
}

int Journal::Checkpoint() {
  MutexLock lk(&impl_->mu);
  return impl_->CheckpointLocked();
}

void Journal::Tick() {
  Impl& m = *impl_;
  MutexLock lk(&m.mu);
  if (!m.failed) (void)m.CheckDirLocked();
  if (m.failed) {
    // A directory removed or replaced under us is made again (the outer
    // lock kept any other daemon off it meanwhile).
    if (m.dir_lost)
      if (int e = m.RecreateDirLocked()) {
        m.failed_text = "the journal directory " + m.opts.dir + " is gone and cannot be made again: " +
                        std::strerror(e);
        return;
      }
    // A failed write is never retried as success: the whole state goes
    // into a fresh segment, and only its sync clears the failure.
    (void)m.CheckpointLocked();
    return;
  }
  // Retire marks no write is using any more.
  std::vector<std::string> idle;
  for (const auto& [d, mark] : m.active)
    if (mark.refs == 0 && mark.seq <= m.durable_seq) idle.push_back(d);
  for (const auto& d : idle) m.active.erase(d);
  // A mark found at Open stays until RetireRecovered, whatever new writes
  // under it did meanwhile.
  std::erase_if(idle, [&m](const std::string& d) {
    m.mu.AssertHeld();  // called by erase_if, here
    return m.recovered.count(d) > 0;
  });
  for (const auto& p : ListRecords(kRetire, idle)) m.AppendLocked(p);
  bool empty = m.pending[0].empty() && m.pending[1].empty() && m.active.empty() && m.recovered.empty();
  uint64_t log = m.log_bytes + m.buf.size();
  // Compact when the log is mostly dead records, or when a replay drained
  // everything and more than a checkpoint's worth is on disk.
  if ((empty && (m.segments.size() > 1 || log > 64 * 1024)) || log > 2 * m.live_bytes + (4ull << 20)) {
    (void)m.CheckpointLocked();
    return;
  }
  if (!m.buf.empty()) (void)m.WaitDurableLocked(m.next_seq - 1);
}

Stats Journal::stats() const {
  const Impl& m = *impl_;
  MutexLock lk(&m.mu);
  Stats s;
  s.ok = m.failed == 0;
  s.error = m.failed;
  s.error_text = m.failed_text;
  for (int t = 0; t < 2; ++t) {
    s.pending[t] = m.pending[t].size();
    s.full_sync[t] = m.full_sync[t];
    for (const auto& [p, e] : m.pending[t]) {
      s.data_bytes[t] += e.data_bytes;
      if (s.oldest_ns[t] == 0 || e.first_ns < s.oldest_ns[t]) s.oldest_ns[t] = e.first_ns;
    }
  }
  s.log_bytes = m.log_bytes;
  s.segments = m.segments.size();
  s.active_dirs = m.active.size() + m.recovered.size();
  s.syncs = m.syncs;
  s.records = m.records;
  s.checkpoints = m.checkpoints;
  s.next_seq = m.next_seq;
  return s;
}

}  // namespace nasfs::journal
