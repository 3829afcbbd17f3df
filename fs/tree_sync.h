// Copies one NAS onto the other in the background while nasfs serves from the
// source: the first pairing of a master with data and an empty or foreign
// backup, or its resumption after a restart.
//
// The walk visits the source tree depth first, names in byte order, so the
// paths it has passed form a prefix of that order: Covers(path). A mutation
// through the mount goes to the target too only when the walk has passed
// every path it touches; otherwise the target is skipped and the walk copies
// the result when it gets there. Each entry is copied while holding *sync_mu
// exclusively, and mutations hold it shared, so the walk and a mirrored
// write never interleave on one entry. A directory's listing is taken again
// under the lock before the walk leaves it, so a name created meanwhile is
// either copied or covered.
//
// With `displace`, whatever the copy would overwrite or delete on the target
// is first moved to <target>/.nasfs/displaced/<start time>/<path>: nothing
// is destroyed. Without it (a replay of paths the target is known to have
// missed), stale entries are simply replaced.
// File data moves through io_uring (linked read/write pairs, several chunks
// in flight), each completion waited with the io_timeout deadline.
//
// The copy is idempotent: a file whose type, size and mtime already match is
// left alone, so a copy cut off by a crash simply runs again. When the
// target holds data nasfs never saw (`verify_content`), equal size and mtime
// prove nothing (ext4 stamps with a coarse clock): the content must match by
// xxh3 too.
#pragma once

#include <sys/stat.h>

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <shared_mutex>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "fs/backend.h"
#include "util/mutex.h"
#include "fs/log.h"
#include "journal/journal.h"

namespace nasfs {

// Walk order: component by component, bytewise; a directory before what it
// holds. Returns <0, 0, >0.
int ComparePaths(const std::string& a, const std::string& b);

// Counts the writes through the mount by path (hashed into buckets), so a
// copy made without the lock can tell whether a write touched its path
// since (a bucket shared by other paths only costs a copy made again).
// Thread-safe.
class WriteTracker {
 public:
  // Around each write to path (Nasfs::Mutate, holding sync_mu shared).
  void Begin(const std::string& path);
  void End(const std::string& path);
  // The writes begun on path's bucket, when none is under way; nullopt while
  // one is.
  std::optional<uint64_t> Quiet(const std::string& path) const;

 private:
  static constexpr size_t kBuckets = 4096;
  static size_t Bucket(const std::string& path);
  std::atomic<uint64_t> started_[kBuckets] = {};
  std::atomic<uint64_t> finished_[kBuckets] = {};
};

class TreeSync {
 public:
  // *source, *target and *sync_mu must outlive the TreeSync. `done` runs on
  // the sync thread when the copy finished (ok) or gave up (!ok).
  TreeSync(Backend* source, Backend* target, SharedGate* sync_mu, bool verify_content,
           bool displace, std::function<void(bool ok)> done);
  ~TreeSync();  // stops and joins the walk

  void Start();
  void Stop();
  // The walk copies a file's data before taking *sync_mu, and keeps it only
  // if `tracker` saw no write to the path meanwhile (without one, it copies
  // under the lock). *tracker must outlive the TreeSync.
  void SetWriteTracker(const WriteTracker* tracker) { tracker_ = tracker; }

  // Whether the walk has passed `path`. Caller holds *sync_mu (shared or
  // exclusive): asserted to the analysis, which cannot see that a caller's
  // gate is this one.
  bool Covers(const std::string& path) const;
  // Makes the target's `path` (and everything under it) equal to the
  // source's, creating missing ancestors first. Caller holds *sync_mu
  // exclusively. Returns 0 or an errno.
  int ReconcileTree(const std::string& path) { return Reconcile(path, journal::Scope::kTree, false); }
  // The same for a journaled change, over `scope` of path (kEntry: the
  // entry alone; kShallow: a directory and its direct children, copying
  // whole only the children the target lacked; kTree: everything under
  // it). `force_data` copies a regular file's data even when size and mtime
  // match: the journal says the target missed a write (an application may
  // have set the old mtime back). The caller keeps writes off the paths
  // (the journal routes them), or holds *sync_mu exclusively.
  int Reconcile(const std::string& path, journal::Scope scope, bool force_data);
  // Reconcile with *sync_mu held exclusively, taken here for one entry at
  // a time (a subtree is walked entry by entry, like the copy's walk): each
  // file's data is copied before the lock (see SetWriteTracker), so the
  // writes it holds back wait for one entry's metadata calls only, never
  // for a large file's bytes or a renamed directory's whole copy.
  int ReconcileExclusive(const std::string& path, journal::Scope scope, bool force_data);
  // Every name the source now gives the files with these inode numbers
  // (journal::Op::kLinked: written through a name that may be gone, so the
  // file may have one name left) and the target holds as a file, each
  // reconciled with its data, unless skip(name).
  // A name whose target file is newer than the source's (a write the
  // source lacks) is left alone too. Names come from IndexInodes when it
  // covered the inode; otherwise from a walk made here.
  // exclusive: each name as ReconcileExclusive; otherwise as Reconcile,
  // without the lock (the replay and a takeover, whose Settle looks at
  // each name again under the lock: see TakeRelinked).
  int ReconcileNamesOf(const std::vector<uint64_t>& inodes, const std::function<bool(const std::string&)>& skip,
                       bool exclusive);
  // One walk of the source recording the names of these inodes (in any
  // order, repeats allowed), for the ReconcileNamesOf calls that follow: a
  // replay round's, a takeover's, a merge's. One walk for all of them; a
  // walk per entry cost the soak's settle limit.
  int IndexInodes(std::vector<uint64_t> inodes);
  // IndexInodes over the inode numbers of entries' kLinked changes
  // (entry(x).inodes for each x: a replay round's, a takeover's, a merge's).
  template <class Entries, class Entry = std::identity>
  int IndexInodesOf(const Entries& entries, Entry entry = {}) {
    std::vector<uint64_t> inodes;
    for (const auto& x : entries) {
      const auto& e = entry(x);
      inodes.insert(inodes.end(), e.inodes.begin(), e.inodes.end());
    }
    return IndexInodes(std::move(inodes));
  }
  // Copies only the given byte ranges of a regular file present on both
  // sides, then its size, xattrs and attributes. ENOENT/EINVAL when either
  // side's file is missing or not regular (reconcile it whole instead).
  int CopyRanges(const std::string& path, const std::vector<journal::Range>& ranges);
  // Makes the target's `path` a hard link to its `from` when the source's
  // two names are one inode; EINVAL when they are not (copy it instead).
  int ReplayLink(const std::string& path, const std::string& from);

  // Sets path's directory times (only those) to the source's (after a
  // replay changed what it holds). Caller holds *sync_mu exclusively.
  int ReconcileDirTimes(const std::string& path) { return SyncDirTimes(path); }

  // A plain-only TreeSync (a replay's lane, run beside others) copies only
  // what needs no directory work and no link work: a Reconcile that would
  // make, remove or copy a directory, touch a file with several names on
  // either side, or make a missing ancestor, changes nothing and returns
  // kNotPlain (the caller replays the entry the full way, alone). A path
  // below an ancestor neither side has is on neither: done, 0.
  static constexpr int kNotPlain = -2;
  void SetPlainOnly(bool on) { plain_only_ = on; }

  // A replay round (BeginRound .. EndRound) remembers what its Reconciles
  // made on the target: the directories found or made there (so the
  // ancestors of its next paths are not looked up again), and each entry
  // made or copied whole with the write count of its path just before
  // (WriteTracker::Quiet). Caller: the replay thread, between rounds.
  void BeginRound();
  void EndRound();
  // Whether a Reconcile of this round made or copied path whole, and no
  // write through the mount touched it since: the target's entry is the
  // source's as of after every write journaled for it, so an entry of the
  // journal for path alone is already replayed (a file in a directory the
  // round copied whole). False without a WriteTracker.
  bool CopiedSince(const std::string& path) const;

  Backend* source() const { return source_; }
  Backend* target() const { return target_; }

  // Names (besides those it was asked for) a Reconcile made the target
  // link, to keep the source's hard links: the caller compares them again
  // later (Nasfs::Settle), since writes through the mount do not wait for
  // them. Cleared by the call.
  std::vector<std::string> TakeRelinked();
  // Regular files a Reconcile copied data into (a tree's files too, not
  // only the paths it was asked for): a write racing the copy through the
  // mount leaves them differing, which the caller's Settle compares and
  // copies again. Cleared by the call.
  std::vector<std::string> TakeCopied();

  nlohmann::json Status() const;

 private:
  void Run();
  int WalkDir(const std::string& dir);
  // Makes the target's entry (not its children) match; *is_dir tells the
  // walk whether to descend.
  // force_data: see Reconcile. *created: the target lacked it (or had
  // another type), so a directory must be copied whole.
  int SyncEntry(const std::string& path, bool* is_dir, bool force_data = false, bool* created = nullptr);
  // SyncEntry's steps once the path's two sides are known (s: the source's,
  // d: the target's when `have`): a directory (made, xattrs, owner and mode;
  // its times when the walk leaves it), a regular file (its data, linked or
  // not), a symlink or device (made again when it differs). The caller
  // copies xattrs and the rest of the attributes after SyncFile and
  // SyncSpecial.
  int SyncDir(const std::string& path, const std::shared_ptr<struct stat>& s, bool have);
  // *copied: the data was copied, into a file given s's owner, mode and
  // times (CopyToTemp), so SyncEntry need not set them again.
  int SyncFile(const std::string& path, const struct stat& s, bool have, const struct stat& d, bool force_data,
               bool* copied);
  int SyncSpecial(const std::string& path, const std::shared_ptr<struct stat>& s, bool have, const struct stat& d);
  int ListUnion(const std::string& dir, std::vector<std::string>* names);
  int SyncDirTimes(const std::string& path);
  // Moves aside (displace_) or removes the target's entry at path.
  int Displace(const std::string& path);
  // A debug line (SPDLOG_LEVEL=sync=debug) of what the copy did at path.
  template <typename... A>
  void Trace(const std::string& path, fmt::format_string<A...> what, A&&... args) const {
    if (trace_->should_log(spdlog::level::debug))
      trace_->debug("{} -> {}: '{}': {}", source_->name(), target_->name(), ShownPath(path),
                    fmt::format(what, std::forward<A>(args)...));
  }
  int ReconcileSubtree(const std::string& path);
  // One entry of ReconcileExclusive under the lock, then (a directory) its
  // children, each a step of its own; `top`: its ancestors first.
  int ExclusiveStep(const std::string& path, journal::Scope scope, bool force_data, bool top);
  // ReconcileSubtree of every name either side has in dir.
  int ReconcileChildren(const std::string& dir);
  // Creates (from the source) the ancestors of path the target lacks.
  // (Plain-only: kNotPlain for an ancestor the target lacks and the source
  // holds; kNeitherHas when both lack one, so path is on neither side.)
  int EnsureAncestors(const std::string& path);
  static constexpr int kNeitherHas = -3;
  // The round's memory of path, and of what is under it, is dropped (the
  // target's entry is being removed or replaced).
  void ForgetTargetDirs(const std::string& path);
  bool SameContent(const std::string& path);
  // Copies the source's data of path onto the target: into a new file
  // renamed over the target's name, or, with `in_place`, into the target's
  // own file (whose other names then see it too: a hard link kept).
  int CopyFileData(const std::string& path, const struct stat& st, bool in_place = false);
  // The parts of it: the data into a temp file under .nasfs/tmp (or, with
  // `in_place`, into the target's own file) with the source's owner, mode
  // and times; then the temp file renamed over the target's name.
  int CopyToTemp(const std::string& path, const struct stat& st, bool in_place, std::string* tmp);
  int InstallTemp(const std::string& tmp, const std::string& path);
  // The walk's copy before the lock (see SetWriteTracker): Precopy copies
  // path's data if it needs copying; TakePrecopy (under the lock) hands the
  // temp file over if the source is still what was copied; DropPrecopy
  // removes one not taken.
  int Precopy(const std::string& path, bool force_data = false);
  bool TakePrecopy(const std::string& path, const struct stat& s, std::string* tmp);
  void DropPrecopy();
  // The bytes of a whole file, sfd onto tfd: through io_uring, or pread and
  // pwrite where io_uring is not available. Returns the bytes copied in
  // *copied.
  int CopyBytes(const std::shared_ptr<UniqueFd>& sfd, const std::shared_ptr<UniqueFd>& tfd, off_t size,
                uint64_t* copied);
  void SetCursor(const std::string& path, bool subtree_done) REQUIRES(sync_mu_);

  // ---- hard links ----
  // A regular file the source holds under several names (s: its stat):
  // makes the target's `path` one file with the target's copies of its
  // other names, and that file's data the source's (copied in place when
  // it was copied before the source changed, or force_data). *handled:
  // path was made (or was) that link: nothing else to copy.
  int SyncLinked(const std::string& path, const struct stat& s, bool have, const struct stat& d, bool force_data,
                 bool* handled);
  // Makes the target's `to` another name of the target's `from`: a link
  // made under a temp name and renamed over `to`, so `to` is never missing.
  int LinkOver(const std::string& from, const std::string& to);
  // After path was copied as the first name of its source inode: links the
  // target's copies of the inode's other names to it (Reconcile only; a
  // walk visits every name itself).
  int LinkOtherNames(const std::string& path, const struct stat& s);
  // Every name of the source's inode (dev, ino), found by a walk of the
  // whole source tree, done once and again when it misses and was made
  // before the Reconcile under way began (the file may have been linked
  // since: a link made a moment before a replay must be found by it).
  int OtherNames(const struct stat& s, std::vector<std::string>* out);
  // The multi-name files of one NAS, by a walk of its whole tree.
  using InodeKey = std::pair<dev_t, ino_t>;
  struct LinkIndex {
    std::map<InodeKey, std::vector<std::string>> names;
    Clock::time_point at{};
    bool built = false;
  };
  // The names on `nas` of s's inode, `expect` of them: made again when
  // fewer are found and the index predates the Reconcile under way.
  int NamesOf(Backend* nas, LinkIndex& ix, const struct stat& s, nlink_t expect, std::vector<std::string>* out);
  int IndexLinks(Backend* nas, LinkIndex& ix, const std::string& dir);
  // Walks dir on nas (all of it; the root's .nasfs and lost+found left
  // out): calls file(path, stat) for each entry not a directory.
  int WalkFiles(Backend* nas, const std::string& dir,
                const std::function<void(const std::string&, const struct stat&)>& file);
  // `removed`, a name of a linked file on the target, was removed (or
  // replaced): `names`, the file's other names there, are copied again.
  int CopyAgain(const std::string& removed, const std::vector<std::string>& names);
  // Whether each other name of the target's file d (at path) is, on the
  // source, a name of s's file too: only then may s's data go into d.
  int SameLinkGroup(const std::string& path, const struct stat& s, const struct stat& d, bool* same);
  // The target's names outside `dir` of linked files inside it.
  int LinkedNamesOutside(const std::string& dir, std::vector<std::string>* out);
  // Reconcile's body; Reconcile itself runs FinishLinks after the outermost.
  int ReconcileOnce(const std::string& path, journal::Scope scope, bool force_data);
  // The files copied by this Reconcile whose target copy has fewer names
  // than the source's: their other names are linked (LinkOtherNames).
  int FinishLinks();

  Backend* source_;
  Backend* target_;
  SharedGate* sync_mu_;
  const bool verify_content_;
  const bool displace_;
  std::function<void(bool)> done_;
  std::thread thread_;
  std::atomic<bool> stop_{false};

  // The walk's position (see Covers).
  std::string cursor_ GUARDED_BY(sync_mu_);
  bool cursor_subtree_done_ GUARDED_BY(sync_mu_) = false;
  bool started_walk_ GUARDED_BY(sync_mu_) = false;
  bool finished_ GUARDED_BY(sync_mu_) = false;

  std::string displaced_dir_;  // .nasfs/displaced/<start time>, set by Run
  std::atomic<bool> tmp_dir_made_{false};  // the target's .nasfs/tmp was there at the last copy

  // A replay round's memory (BeginRound); the replay thread's alone.
  static constexpr size_t kMaxFresh = 1 << 20;  // entries each; past it, nothing more is remembered
  bool round_ = false;
  bool plain_only_ = false;
  std::map<std::string, uint64_t> fresh_;  // made or copied whole -> its WriteTracker count before
  std::set<std::string> target_dirs_;      // directories on the target, found or made

  // Hard links. The steps that touch these run one at a time: the copy's
  // SyncEntry holds *sync_mu_ exclusively, as does a FUSE thread's
  // ReconcileTree (Nasfs::Mutate); a replay's TreeSync is the replay
  // thread's alone. What the walk does without the lock (Precopy) touches
  // none of them.
  std::map<InodeKey, std::string> linked_;  // source inode -> the target name made for it
  bool reconciling_ = false;                // inside Reconcile (not the walk)
  std::vector<std::string> link_check_;      // see FinishLinks
  LinkIndex source_links_, target_links_;
  // IndexInodes: the source's names of the inodes it was asked for.
  std::map<uint64_t, std::vector<std::string>> inode_names_;
  Clock::time_point reconcile_began_{};       // of the outermost Reconcile
  std::vector<std::string> relinked_;
  std::vector<std::string> copied_;

  const WriteTracker* tracker_ = nullptr;
  struct Precopied {
    std::string path, tmp;
    struct stat src {};
    uint64_t version = 0;
    bool valid = false;
  };
  // Made by the walk's thread without the lock; taken by whichever thread
  // then copies the path under the lock (the walk's, or a FUSE thread's
  // ReconcileTree).
  mutable Mutex precopy_mu_;
  Precopied precopied_ GUARDED_BY(precopy_mu_);
  // A ring serves one copy at a time: the walk's Precopy runs without
  // *sync_mu_ while a FUSE thread may copy under it. Each copy takes the
  // spare ring, or makes one, and gives it back after; a ring whose NAS
  // hung mid-copy is leaked, never torn down (its requests own its buffers).
  struct Uring;
  std::unique_ptr<Uring> TakeRing();
  void ReturnRing(std::unique_ptr<Uring> ring);
  Mutex rings_mu_;
  std::unique_ptr<Uring> spare_ring_ GUARDED_BY(rings_mu_);

  mutable Mutex status_mu_;
  std::string state_ GUARDED_BY(status_mu_) = "idle";
  std::string error_ GUARDED_BY(status_mu_);
  std::string started_ GUARDED_BY(status_mu_), finished_at_ GUARDED_BY(status_mu_);
  std::atomic<uint64_t> entries_{0}, bytes_{0}, displaced_{0};
  std::shared_ptr<spdlog::logger> trace_ = Logger("sync");
};

}  // namespace nasfs
