// nasfs's own inode numbers.
//
// The two NAS give one file different st_ino, so nasfs numbers files itself:
// a node is a (parent, name) edge in a tree rooted at FUSE_ROOT_ID, and its
// number is the same whichever NAS answers. Paths are derived by walking up,
// so renaming a directory is one update, whatever it holds. Numbers are never
// reused within a mount's life.
//
// A node lives while the kernel holds lookups on it (nlookup > 0) or while
// it has children in the table, so a path can always be derived for a node
// the kernel may name. An unlinked node is detached: it has no path, and
// operations on it get ENOENT.
//
// A hard link made through the mount is another name of the same node
// (AddLink), so the kernel sees one inode with one nlink and ctime whichever
// name it uses. Path() gives the node's first name; when that name goes, the
// next one takes its place.
//
// Thread-safe: mu_ guards everything; it is never held across a NAS call.
#pragma once

#include <fuse_lowlevel.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "util/mutex.h"

namespace nasfs {

class InodeTable {
 public:
  InodeTable();

  // The node for parent/name, created if new; adds one kernel lookup.
  // Returns 0 if parent is unknown or detached.
  fuse_ino_t Lookup(fuse_ino_t parent, const std::string& name);
  // Drops n kernel lookups; frees the node once nothing refers to it.
  // Returns true when ino is no longer in the table.
  bool Forget(fuse_ino_t ino, uint64_t n);
  // The node at parent/name if the table has one (no lookup is added), or 0.
  fuse_ino_t Peek(fuse_ino_t parent, const std::string& name) const;

  // NAS-relative path of ino ("" for the root), or nullopt when unknown or
  // detached.
  std::optional<std::string> Path(fuse_ino_t ino) const;
  // The paths of ino's other names (hard links made through the mount), in
  // the order they would take the first name's place. An operation that
  // found nothing at Path() tries these: the first name may have been
  // removed on the NAS by another web server, which this table never hears
  // of, while the file lives on under its other names.
  std::vector<std::string> OtherPaths(fuse_ino_t ino) const;
  std::optional<std::string> ChildPath(fuse_ino_t parent, const std::string& name) const;

  // Mirrors a successful unlink/rmdir: detaches parent/name. Returns the
  // detached node if the kernel still holds it, else 0.
  fuse_ino_t Remove(fuse_ino_t parent, const std::string& name);
  // Mirrors a successful rename: whatever was at the target is detached.
  // Returns that node if the kernel still holds it, else 0.
  fuse_ino_t Rename(fuse_ino_t parent, const std::string& name, fuse_ino_t new_parent,
                    const std::string& new_name);
  // Mirrors a successful link(2): parent/name becomes another name of ino,
  // and the kernel holds one more lookup on it. False if ino is unknown or
  // the name is taken.
  bool AddLink(fuse_ino_t ino, fuse_ino_t parent, const std::string& name);
  // Mirrors a successful RENAME_EXCHANGE.
  void Exchange(fuse_ino_t parent, const std::string& name, fuse_ino_t new_parent,
                const std::string& new_name);

  size_t size() const;

 private:
  struct Name {
    fuse_ino_t parent;
    std::string name;
  };
  struct Node {
    fuse_ino_t ino = 0;
    fuse_ino_t parent = 0;  // first name; 0: detached (unlinked, or replaced by a rename)
    std::string name;
    std::vector<Name> links;  // further names (hard links made through the mount)
    uint64_t nlookup = 0;
    uint64_t children = 0;  // names in the table whose parent is this node
  };
  struct Key {
    fuse_ino_t parent;
    std::string name;
    bool operator==(const Key&) const = default;
  };
  struct KeyHash {
    size_t operator()(const Key& k) const noexcept {
      return std::hash<std::string>()(k.name) ^ (std::hash<uint64_t>()(k.parent) * 0x9e3779b97f4a7c15ULL);
    }
  };

  std::optional<std::string> PathLocked(fuse_ino_t ino) const REQUIRES_SHARED(mu_);
  std::optional<std::string> NamePathLocked(fuse_ino_t parent, const std::string& name) const
      REQUIRES_SHARED(mu_);
  // Removes every name of n.
  void DetachLocked(Node* n) REQUIRES(mu_);
  // Removes one name of n; the next name, if any, becomes the first.
  void DetachNameLocked(Node* n, fuse_ino_t parent, const std::string& name) REQUIRES(mu_);
  void AttachLocked(Node* n, fuse_ino_t parent, const std::string& name) REQUIRES(mu_);
  void MaybeFreeLocked(Node* n) REQUIRES(mu_);

  // Guards the maps and every Node they hold (a Node's fields are read and
  // written only with mu_ held, though the analysis cannot say so).
  mutable SharedMutex mu_;
  std::unordered_map<fuse_ino_t, std::unique_ptr<Node>> nodes_ GUARDED_BY(mu_);
  std::unordered_map<Key, fuse_ino_t, KeyHash> children_ GUARDED_BY(mu_);
  fuse_ino_t next_ino_ GUARDED_BY(mu_) = FUSE_ROOT_ID + 1;
};

}  // namespace nasfs
