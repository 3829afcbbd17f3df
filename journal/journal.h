// The local write-ahead journal: what a NAS has not received, and which
// directories are being written (the activity log), kept durable on the web
// server's own disk so that neither a crash of nasfs nor a power cut loses
// track of a change one NAS lacks. No FUSE here: the daemon (fs/) tells the
// journal what happened, the journal remembers it.
//
// Three kinds of knowledge, each a record in one append-only log (the
// format is journal/FORMAT.md):
//  - Missed: NAS t lacks the change to `path` (an operation, and the byte
//    range of a data write). Durable before the write is acknowledged (or,
//    when t is already known to be out, before the first byte reaches the
//    other NAS). Replay reconciles the path from the other NAS, then writes
//    Done(t, path, seq): every change to path up to seq is on t.
//  - Intent: a directory whose entries are about to change on both NAS.
//    Durable before the first byte reaches a NAS. Cheap on the hot path: a
//    directory already marked costs nothing, new marks from concurrent
//    writers share one fdatasync, and marks are retired lazily once no
//    write under them is in flight. After a crash, the directories still
//    marked are exactly those that may differ between the NAS: Open hands
//    them back for reconciliation (like DRBD's activity log).
//  - State: the pair this journal belongs to, and "NAS t needs a whole-tree
//    copy" (what it lacks is unknown).
//
// Group commit: a writer appends its records to a shared buffer and waits
// until a sync covers them; one waiter (the leader) writes the buffer and
// fdatasyncs for everyone waiting. A failed write or fdatasync is never
// retried as success: the journal fails (every call returns the errno) until
// a checkpoint into a fresh segment succeeds, which the background thread
// tries once a second. The in-memory state is kept meanwhile, so nothing
// already recorded is forgotten.
//
// Compaction: the log is a sequence of segment files. A checkpoint writes the
// whole live state (pending entries, unretired intents, state) into a new
// segment, syncs it and the directory, and only then deletes the older
// segments. It runs when the log has grown well past its live content, and
// when the pending set drains (a replay finished), so replayed records do
// not linger.
//
// Thread-safe.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <thread>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include <tl/expected.hpp>

namespace nasfs::journal {

// Which NAS a record concerns. Values are bits (masks are used on disk).
enum Target : uint8_t { kMaster = 1, kBackup = 2 };
inline int TargetIndex(Target t) { return t == kMaster ? 0 : 1; }
const char* TargetName(Target t);

// How much of a path replay reconciles.
enum class Scope : uint8_t {
  kEntry = 0,    // the entry itself (a directory's attributes and times, not its children)
  kShallow = 1,  // a directory and its direct children (a crash-time activity mark)
  kTree = 2,     // the entry and everything under it
};

// What changed, for listing and to know when a ranged copy is safe.
enum class Op : uint8_t {
  kWrite = 1,     // data at [offset, offset+length)
  kMeta = 2,      // mode, owner, times, xattrs: no data, no name
  kTruncate = 3,  // size (and fallocate)
  kCreate = 4,    // create, mknod, symlink, link, mkdir
  kRemove = 5,    // unlink, rmdir
  kRename = 6,    // either side of a rename
  kDirTimes = 7,  // a directory whose entries changed
  kCrash = 8,     // marked by the activity log when nasfs stopped
  // A write or truncate reached a file with other names, some perhaps not
  // known to the daemon (links older than the mount): offset holds the
  // file's inode number on the NAS that took it. Replay brings every name
  // of that inode over, not only the path written through, which may be
  // gone by then (the hour soak lost a write that way).
  kLinked = 9,
};
constexpr unsigned kLastOp = 9;
// Every op's bit (1 << Op): what an entry's ops may hold.
constexpr uint32_t kAllOps = ((1u << (kLastOp + 1)) - 1) & ~1u;
const char* OpName(Op op);
// Adds ino to a sorted list of inode numbers (kLinked), once.
void AddInode(std::vector<uint64_t>* inodes, uint64_t ino);
struct Change;
// Appends one Change per op in ops (kLinked: one per inode) for path, as a
// listing of a merged entry needs them (the peer logs: no byte ranges and
// no link names).
void AppendChanges(const std::string& path, Scope scope, uint32_t ops, const std::vector<uint64_t>& inodes,
                   std::vector<Change>* out);
// Calls f(op) for each op whose bit (1 << op) is set in ops, in order.
template <class F>
void ForEachOp(uint32_t ops, F&& f) {
  for (unsigned op = 1; op <= kLastOp; ++op)
    if (ops & (1u << op)) f(static_cast<Op>(op));
}

struct Change {
  std::string path;  // relative to the NAS root, "" is the root
  Scope scope = Scope::kEntry;
  Op op = Op::kMeta;
  uint64_t offset = 0, length = 0;  // kWrite only
  std::string link_from;            // kCreate by link(2): the existing name
};

// A byte range of a file.
struct Range {
  uint64_t offset = 0, length = 0;
};

// What one NAS lacks of one path: every change recorded for it, merged.
struct Pending {
  std::string path;
  Target target = kMaster;
  Scope scope = Scope::kEntry;  // the widest recorded
  uint32_t ops = 0;             // bit (1 << Op) for each Op recorded
  // Only data writes and metadata changes were recorded (ops within
  // kWrite | kMeta): replay may copy just `ranges` (the written bytes,
  // merged; none for a metadata-only entry) and then the attributes.
  // false: reconcile the whole entry (ranges is empty).
  bool data_only = false;
  std::vector<Range> ranges;
  uint64_t seq = 0;           // of the newest change: Done(path, seq) retires it
  int64_t first_ns = 0;       // wall clock of the oldest change
  uint64_t data_bytes = 0;    // sum of ranges
  std::string link_from;      // the newest link(2) that made this name
  // kLinked: the inode numbers (on the NAS that took the changes) of the
  // linked files written through this name. Sorted, no duplicates.
  std::vector<uint64_t> inodes;
  // Writes journaled by RecordIfTouching and not yet applied to the other
  // NAS (EndWrites): a replay must not copy the path meanwhile, or it could
  // copy it before the write lands and then retire it. In memory only.
  uint32_t writers = 0;
};

// File access, replaceable so tests can inject faults (see
// tests/unit/journal_test.cc): drop what was not synced, tear the tail,
// fail a write or a sync.
class Env {
 public:
  virtual ~Env() = default;
  class WritableFile {
   public:
    virtual ~WritableFile() = default;
    // 0 or an errno. A short write is an error.
    virtual int Append(std::string_view data) = 0;
    virtual int Sync() = 0;  // fdatasync
  };
  // Creates a new file (O_EXCL): a segment is never reused.
  virtual tl::expected<std::unique_ptr<WritableFile>, int> NewWritableFile(const std::string& path) = 0;
  virtual tl::expected<std::string, int> ReadFile(const std::string& path) = 0;
  // Names in dir (no . or ..).
  virtual tl::expected<std::vector<std::string>, int> ListDir(const std::string& dir) = 0;
  virtual int Remove(const std::string& path) = 0;
  virtual int Rename(const std::string& from, const std::string& to) = 0;
  virtual int SyncDir(const std::string& dir) = 0;
  virtual int CreateDir(const std::string& dir) = 0;  // mkdir -p, 0700; EEXIST is success
  // Takes an exclusive lock on path (created if absent) for the life of
  // the process or until UnlockFile: two daemons never share a journal.
  virtual int LockFile(const std::string& path, int* handle) = 0;
  virtual void UnlockFile(int handle) = 0;
  // The identity of directory `dir` (device and inode): the journal notices
  // its directory removed (ENOENT) or replaced (another identity) under it.
  // An Env that cannot tell answers {0, 0} always.
  virtual int DirId(const std::string& dir, uint64_t id[2]) {
    (void)dir;
    id[0] = id[1] = 0;
    return 0;
  }

  static Env* Default();  // POSIX
};

// The longest path the journal records (and nasfs changes: Nasfs::Mutate
// refuses longer ones with ENAMETOOLONG). A record holds at most two paths,
// so every record fits the reader's limit (record.h kMaxPayload): the
// writer never produces what the reader would reject.
inline constexpr size_t kMaxPathBytes = 256 * 1024;

struct Options {
  std::string dir;
  Env* env = nullptr;                      // nullptr: Env::Default()
  uint64_t segment_bytes = 8ull << 20;     // a segment is sealed past this size
  bool background = true;                  // run the retire/compact/repair thread
  int background_interval_ms = 1000;
};

// What Open found.
struct Recovered {
  bool fresh = false;             // no journal existed: nothing is known of the past
  uint64_t records = 0;           // valid records read
  uint64_t torn_bytes = 0;        // dropped from the end of the last segment
  uint64_t damaged_records = 0;   // unreadable records followed by readable ones
  std::string damage;             // operator-facing description, empty if none
  std::vector<std::string> damaged_files;  // kept aside as <name>.damaged
  // Directories marked by the activity log and never retired: writes under
  // them may have reached one NAS and not the other when nasfs stopped.
  std::vector<std::string> unfinished_dirs;
};

struct Stats {
  bool ok = true;
  int error = 0;                    // errno of the failure, when !ok
  std::string error_text;           // what failed, for status
  uint64_t pending[2] = {0, 0};     // entries per target (master, backup)
  uint64_t data_bytes[2] = {0, 0};  // bytes of recorded data writes per target
  int64_t oldest_ns[2] = {0, 0};    // wall clock of the oldest pending change, 0 if none
  bool full_sync[2] = {false, false};
  uint64_t log_bytes = 0;           // on disk, all segments
  uint64_t segments = 0;
  uint64_t active_dirs = 0;         // marked by the activity log
  uint64_t syncs = 0, records = 0, checkpoints = 0;
  uint64_t next_seq = 0;
};

class Journal {
 public:
  // Opens (or creates) the journal in opts.dir, replays its records into
  // memory and writes a checkpoint. Errors are one operator-facing line.
  // Two locks keep a second daemon off the journal: DIR/LOCK, and DIR.lock
  // beside it, which outlives the directory being removed under a running
  // daemon (it then fails its writes, recreates the directory and carries
  // on from memory; see Tick).
  static tl::expected<std::unique_ptr<Journal>, std::string> Open(const Options& opts, Recovered* out);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // ---- activity log ----
  // Marks dirs as about to change; returns once the marks are durable (at
  // once when all were marked already). 0 or an errno; on 0 the caller must
  // call Release(dirs) when the write is over (mirrored or recorded).
  int Intend(const std::vector<std::string>& dirs);
  void Release(const std::vector<std::string>& dirs);
  // Retires marks handed back by Open once the caller has recorded what
  // they cover (as Missed changes).
  void RetireRecovered(const std::vector<std::string>& dirs);

  // ---- missed changes ----
  // Records that `target` lacks `changes`; returns once durable.
  int AddMissed(Target target, const std::vector<Change>& changes);
  // For a NAS being replayed onto: if any change touches a pending path
  // (itself, an ancestor, or a descendant is pending for target), records
  // all of them for target, durably, and sets *recorded. Atomic with
  // FinishIfEmpty: a write either sees target's pending set as it is, or
  // the NAS already switched back.
  // When it records, every entry it touched counts one more writer until
  // EndWrites(target, changes), which the caller must call once the write
  // has been applied to the other NAS (or failed).
  int RecordIfTouching(Target target, const std::vector<Change>& changes, bool* recorded);
  void EndWrites(Target target, const std::vector<Change>& changes);
  // Whether any change touches a pending path of target (as
  // RecordIfTouching judges it), without recording anything.
  bool Touches(Target target, const std::vector<Change>& changes) const;
  // A snapshot of target's pending entries (any order).
  std::vector<Pending> PendingFor(Target target) const;
  bool HasPending(Target target) const;
  // A replay is about to copy path onto target: *out is its entry as of
  // now. False (copy nothing) when path is not pending or a write journaled
  // for it has not landed on the other NAS yet (writers > 0).
  bool BeginReplay(Target target, const std::string& path, Pending* out);
  // Replay brought path onto target as of seq (BeginReplay's entry): retires
  // the entry; if newer changes came meanwhile, only those stay pending (a
  // file written steadily during its copy then needs just its new ranges,
  // not another whole copy). Not waited for: a Done lost in a crash only
  // means the path is replayed again, whole.
  void Done(Target target, const std::string& path, uint64_t seq);
  // Runs on_empty under the journal's lock if target has nothing pending,
  // and returns whether it ran.
  bool FinishIfEmpty(Target target, const std::function<void()>& on_empty);

  // ---- state ----
  int SetFullSync(Target target, bool on);
  bool full_sync(Target target) const;
  int SetPairId(const std::string& id);
  std::string pair_id() const;

  // Forces what was appended to disk (0 or errno).
  int Flush();
  // Writes a checkpoint now and drops the older segments (0 or errno).
  int Checkpoint();
  // Starts the background thread (after daemonizing: threads do not
  // survive fork) when Options.background was false at Open.
  void StartBackground();
  // One background round: retire released marks, compact if due, repair a
  // failed journal. Called by the background thread; public for tests.
  void Tick();

  Stats stats() const;
  const std::string& dir() const { return dir_; }

 private:
  struct Entry;
  struct Impl;
  explicit Journal(const Options& opts);
  std::unique_ptr<Impl> impl_;
  std::string dir_;
};

}  // namespace nasfs::journal
