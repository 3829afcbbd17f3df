// Comparing two real directory trees entry by entry, for the unit tests that
// copy or merge one NAS onto the other (tree_sync_test, split_brain_test).
#pragma once

#include <dirent.h>
#include <sys/stat.h>

#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "nas_dirs.h"

namespace nasfs::testutil {

// One of the two trees: its root directory and what messages call it
// ("master", "source", ...).
struct TreeSide {
  std::string root;
  std::string name;

  std::string At(const std::string& rel) const { return rel.empty() ? root : root + "/" + rel; }
};

// Appends to diffs every difference between rel in tree a and rel in tree b
// (each root's top .nasfs left out), recursively: a path on one side only,
// type and mode, owner, mtime to the nanosecond, and by type size and
// content, symlink target, or the entries of a directory.
inline void CompareTrees(const TreeSide& a, const TreeSide& b, const std::string& rel,
                         std::vector<std::string>* diffs) {
  struct stat x, y;
  const bool in_a = ::lstat(a.At(rel).c_str(), &x) == 0, in_b = ::lstat(b.At(rel).c_str(), &y) == 0;
  if (!in_a || !in_b) {
    diffs->push_back("'" + rel + "' missing on " + (in_a ? "the " + b.name : in_b ? "the " + a.name : "both"));
    return;
  }
  auto diff = [&](const char* what, auto u, auto v) {
    if (u != v) {
      std::ostringstream os;
      os << "'" << rel << "' " << what << ": " << a.name << " " << u << ", " << b.name << " " << v;
      diffs->push_back(os.str());
    }
  };
  diff("type+mode", static_cast<unsigned>(x.st_mode), static_cast<unsigned>(y.st_mode));
  diff("uid", x.st_uid, y.st_uid);
  diff("gid", x.st_gid, y.st_gid);
  diff("mtime.sec", x.st_mtim.tv_sec, y.st_mtim.tv_sec);
  diff("mtime.nsec", x.st_mtim.tv_nsec, y.st_mtim.tv_nsec);
  if ((x.st_mode & S_IFMT) != (y.st_mode & S_IFMT)) return;
  if (S_ISREG(x.st_mode)) {
    diff("size", x.st_size, y.st_size);
    if (ReadFile(a.At(rel)) != ReadFile(b.At(rel))) diffs->push_back("'" + rel + "' content differs");
  } else if (S_ISLNK(x.st_mode)) {
    diff("link target", LinkTarget(a.At(rel)), LinkTarget(b.At(rel)));
  } else if (S_ISDIR(x.st_mode)) {
    std::set<std::string> names;
    for (const std::string& dir : {a.At(rel), b.At(rel)}) {
      DIR* dp = ::opendir(dir.c_str());
      if (!dp) continue;
      while (dirent* e = ::readdir(dp)) {
        std::string n = e->d_name;
        if (n == "." || n == ".." || (rel.empty() && n == ".nasfs")) continue;
        names.insert(n);
      }
      ::closedir(dp);
    }
    for (const auto& n : names) CompareTrees(a, b, rel.empty() ? n : rel + "/" + n, diffs);
  }
}

}  // namespace nasfs::testutil
