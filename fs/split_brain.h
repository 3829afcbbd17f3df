// Merging the two versions a network partition left behind ("split brain").
//
// While the web servers could each reach only one NAS, server a wrote to the
// master only and server b to the backup only. Once the partition heals, the
// daemon learns which paths the two NAS disagree on and calls Resolve on
// each, holding sync_mu exclusively (no write races the merge).
//
// Resolve(path) makes path, and everything under a directory there, one
// version on both NAS:
//   - absent on both, or equal (same type; regular files: same size and the
//     same bytes; symlinks: the same target; devices: the same rdev): nothing
//     is kept; the attributes (owner, mode, xattrs, times) of the side with
//     the newer mtime (ties: the master) are copied to the other.
//   - directories on both: every name either holds is resolved the same way
//     (at the root, .nasfs and lost+found are left out, as everywhere in
//     nasfs), then both get the newer directory's attributes and its times
//     from before the merge.
//   - anything else differs: the newer mtime wins (ties: the master). A side
//     that lacks the path counts as having deleted it at its parent
//     directory's mtime (every namespace change stamps the parent), so a
//     deletion newer than the other side's modification wins.
//   The losing version, when there is one, is kept: renamed on its own NAS to
//   .nasfs/conflicts/<id>/data (atomic, no copy), with meta.json (the
//   ConflictRecord) beside it, and that directory copied to the winner's NAS,
//   so both NAS hold every kept version. Then the winner is copied over the
//   loser's NAS (or, for a winning deletion, nothing: moving the loser aside
//   removed it).
//
// Resolve leaves path's parent directory with the times it had on each NAS
// before the call: merging one name is no change of its parent's, and the
// next sibling's deletion time is read from them. A directory's times are
// made equal by resolving the directory itself.
//
// Every NAS call goes through Backend::Run (the NAS's worker pool, under the
// io_timeout deadline), directly or through TreeSync, which does every copy.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <shared_mutex>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fs/backend.h"
#include "util/mutex.h"
#include "fs/nas_files.h"

namespace nasfs {

class TreeSync;

// Where kept versions live on each NAS, relative to its root.
inline constexpr const char* kConflictsDir = ".nasfs/conflicts";

// ConflictRecord and its meta.json format: fs/nas_files.h.

class SplitBrainResolver {
 public:
  // *master and *backup must outlive the resolver. `node` names this server
  // in the ids and records of what it keeps.
  SplitBrainResolver(Backend* master, Backend* backup, std::string node);
  ~SplitBrainResolver();
  SplitBrainResolver(const SplitBrainResolver&) = delete;
  SplitBrainResolver& operator=(const SplitBrainResolver&) = delete;

  // Makes `path` (relative to the NAS roots, "" for the whole tree) one
  // version on both NAS, by the rules above. When an ancestor of path is not
  // a directory on both NAS, the topmost such ancestor is resolved instead
  // (path has no place on one side until it is). Caller holds sync_mu
  // exclusively. Returns 0, EINVAL for a path that is not a plain relative
  // path or lies under .nasfs, or the NAS's errno (ETIMEDOUT for a missed
  // deadline); what was kept before a failure stays kept, and calling it
  // again finishes the merge. Idempotent: a second call finds the two equal.
  int Resolve(const std::string& path);

  // Tells whether `side` removed `path` (or renamed it away) during the
  // split, as the servers' pending logs record. Without it, a path one side
  // lacks counts as removed there at its parent's mtime; with it, a path the
  // lacking side never removed was only created on the other side, and is
  // copied over with nothing kept (two servers uploading different files
  // into one directory both keep their upload).
  using RemovedFn = std::function<bool(const std::string& path, Role side)>;
  void SetRemovedFn(RemovedFn fn) { removed_ = std::move(fn); }
  // Tells whether `side` changed path's owner, mode or xattrs during the
  // split (chmod moves no mtime). When exactly one side did, its attributes
  // win for an entry equal on both sides (or a directory), whatever the
  // mtimes say; the times still go to the newer side's.
  using MetaChangedFn = std::function<bool(const std::string& path, Role side)>;
  void SetMetaChangedFn(MetaChangedFn fn) { meta_changed_ = std::move(fn); }

  // What this resolver kept so far.
  const std::vector<ConflictRecord>& kept() const { return kept_; }
  // File bytes it copied (kept versions to the winner's NAS, winners to the
  // loser's).
  uint64_t bytes_copied() const;

 private:
  // Resolves path, whose parent is a directory on both NAS with the given
  // mtimes from before the merge touched it.
  int ResolveEntry(const std::string& path, const timespec& master_parent, const timespec& backup_parent);
  int ResolveDir(const std::string& path, const struct stat& m, const struct stat& b);
  // Whether two regular files of one size hold the same bytes.
  int SameContent(const std::string& path, off_t size, bool* same);
  // Equal entries: the newer side's attributes onto the other.
  int AlignAttributes(const std::string& path, const struct stat& m, const struct stat& b);
  // Moves the loser's version at path into a new conflict and copies that to
  // the winner's NAS. `loser_parent` is the mtime of path's parent on the loser.
  int Keep(const std::string& path, bool master_loses, const struct stat& lost, const struct stat* won,
           const timespec& loser_parent);
  // The TreeSync copying from one NAS onto the other.
  TreeSync& From(const Backend* source);
  // Where an equal entry's (or a directory's) owner, mode and xattrs come
  // from: the side that alone changed them, else `newer`.
  Backend* AttributesFrom(const std::string& path, Backend* newer) const;
  // Copies path's attributes from `source` onto the other NAS, then gives
  // both the times n_atim/n_mtim (the newer side's).
  int CopyAttributes(const std::string& path, Backend* source, const timespec& atime, const timespec& mtime);

  Backend* master_;
  Backend* backup_;
  const std::string node_;
  // TreeSync takes its mutex only in its background walk, which a resolver
  // never starts; the caller holds the daemon's sync_mu around Resolve.
  SharedGate copy_mu_;
  std::unique_ptr<TreeSync> to_backup_, to_master_;
  std::vector<ConflictRecord> kept_;
  RemovedFn removed_;
  MetaChangedFn meta_changed_;
};

// The versions kept under .nasfs/conflicts/ of `nas`, sorted by id, read
// through nas.Run. A directory without a readable meta.json is listed with
// only its id and kind "unknown". Returns 0 or an errno.
int ListConflicts(Backend& nas, std::vector<ConflictRecord>* out);

// Puts the kept version `id` back at its path on both NAS. Whatever is at the
// path now is kept first as a new conflict (reason "restore", kept_from and
// winner "both"), so nothing is lost; *displaced gets its record (id empty
// when nothing was there). Missing ancestors of the path are created with
// mode 0755 and the restored version's owner. A NAS that lacks conflict id's
// data gets it from the other first; conflict id is removed from both at the
// end. Caller holds *sync_mu exclusively.
// Returns 0; EINVAL for a malformed id (not exactly one path component);
// ENOENT when neither NAS holds id's data; EBADMSG when no NAS has a usable
// meta.json for it (its path is unknown); ENOTDIR when an ancestor of the
// path is not a directory; or the NAS's errno. The path is assumed to hold
// one version on both NAS (outside split brain it does): each NAS's own
// version is what it keeps. A failure midway leaves every version kept;
// calling it again finishes the restore.
int RestoreConflict(Backend* master, Backend* backup, SharedGate* sync_mu, const std::string& node,
                    const std::string& id, ConflictRecord* restored, ConflictRecord* displaced);

}  // namespace nasfs
