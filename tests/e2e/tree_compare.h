// Snapshots of a directory tree and their comparison, for checking that the
// two NAS of a pair are identical (and that a NAS matches a reference
// directory on the local disk that saw the same operations).
//
// A snapshot never follows a symlink and never reads anything but regular
// files, so a tree that holds escape links (-> /etc) or fifos is safe to walk.
// Differences come back as human-readable lines, so a failing EXPECT prints
// exactly what differs:
//   EXPECT_NO_TREE_DIFFS(CompareTrees(ws.master(), ws.backup()));
#pragma once

#include <sys/types.h>
#include <time.h>

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

namespace nasfs::e2e {

struct TreeEntry {
  enum class Type { kFile, kDir, kSymlink, kOther };
  Type type = Type::kOther;
  mode_t mode = 0;  // full st_mode (type bits included)
  uid_t uid = 0;
  gid_t gid = 0;
  nlink_t nlink = 0;
  off_t size = 0;
  timespec mtime{};
  uint64_t content_hash = 0;  // XXH3_64bits of a regular file's bytes
  std::string link_target;    // symlinks only
  std::map<std::string, std::string> xattrs;  // user.* only
  std::string error;          // why a field could not be read ("" when fine)
};

// Relative path ("" is the root itself, "a/b" below it) -> entry.
using Tree = std::map<std::string, TreeEntry>;

// Walks root. skip_nasfs: leave out the top-level ".nasfs" (nasfs's own
// metadata, present on a NAS, absent from a reference directory).
Tree SnapshotTree(const std::string& root, bool skip_nasfs = true);

struct CompareOptions {
  bool mtime = true;       // st_mtim, seconds and nanoseconds
  // The root's own mtime: off by default, because pairing creates .nasfs on
  // each NAS at its own instant, outside any mirrored operation.
  bool root_mtime = false;
  bool owner = true;       // uid and gid
  bool nlink = true;       // non-directories only (a directory's count is the FS's business)
  bool xattrs = true;      // user.* names and values
  // Directory st_size is never compared: it depends on the directory's
  // history on that filesystem, not on its content.

  static CompareOptions All() { return CompareOptions(); }
  static CompareOptions IgnoringMtime() {
    CompareOptions o;
    o.mtime = false;
    return o;
  }
};

// Differences between two snapshots; names label the sides ("master", "backup").
std::vector<std::string> CompareSnapshots(const Tree& a, const Tree& b, const std::string& a_name,
                                          const std::string& b_name, const CompareOptions& opts = {});

// Both trees snapshotted (top-level .nasfs skipped) and compared.
std::vector<std::string> CompareTrees(const std::string& a, const std::string& b,
                                      const CompareOptions& opts = {});

// A NAS tree (its .nasfs skipped) against a reference directory on the local
// disk that saw the same operations. mtime is not compared by default: the
// reference's clock readings are its own.
std::vector<std::string> CompareWithReference(const std::string& nas, const std::string& reference,
                                              CompareOptions opts = CompareOptions::IgnoringMtime());

// The differences, one per line, "(no differences)" when empty.
std::string FormatDiffs(const std::vector<std::string>& diffs);

// Whether rel ("a/b/c") or a directory above it ("a/b", "a") is one of
// paths: a test model's paths whose state became unknown.
bool AtOrUnderAny(const std::set<std::string>& paths, const std::string& rel);

// XXH3_64bits of the whole file, or nullopt-like 0 with *ok=false on error.
uint64_t HashFile(const std::string& path, bool* ok = nullptr);

}  // namespace nasfs::e2e

#define EXPECT_NO_TREE_DIFFS(diffs_expr)                                        \
  do {                                                                          \
    const auto nasfs_e2e_diffs_ = (diffs_expr);                                 \
    EXPECT_TRUE(nasfs_e2e_diffs_.empty())                                       \
        << #diffs_expr << ":\n" << ::nasfs::e2e::FormatDiffs(nasfs_e2e_diffs_); \
  } while (0)
