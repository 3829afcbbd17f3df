#include "tests/e2e/tree_compare.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>

#include <fmt/format.h>
#include <xxhash.h>

namespace nasfs::e2e {
namespace {

const char* TypeName(TreeEntry::Type t) {
  switch (t) {
    case TreeEntry::Type::kFile: return "file";
    case TreeEntry::Type::kDir: return "dir";
    case TreeEntry::Type::kSymlink: return "symlink";
    case TreeEntry::Type::kOther: return "other";
  }
  return "?";
}

std::string Join(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

// user.* xattrs of the object at `full` (not following a symlink).
void ReadXattrs(const std::string& full, TreeEntry& e) {
  ssize_t n = llistxattr(full.c_str(), nullptr, 0);
  if (n < 0) {
    if (errno != ENOTSUP) e.error += fmt::format("llistxattr: {}; ", std::strerror(errno));
    return;
  }
  std::string names(static_cast<size_t>(n), '\0');
  n = llistxattr(full.c_str(), names.data(), names.size());
  if (n < 0) {
    e.error += fmt::format("llistxattr: {}; ", std::strerror(errno));
    return;
  }
  names.resize(static_cast<size_t>(n));
  for (size_t pos = 0; pos < names.size();) {
    std::string name(names.c_str() + pos);
    pos += name.size() + 1;
    if (name.rfind("user.", 0) != 0) continue;
    ssize_t vn = lgetxattr(full.c_str(), name.c_str(), nullptr, 0);
    std::string value(vn > 0 ? static_cast<size_t>(vn) : 0, '\0');
    if (vn > 0) vn = lgetxattr(full.c_str(), name.c_str(), value.data(), value.size());
    if (vn < 0) {
      e.error += fmt::format("lgetxattr {}: {}; ", name, std::strerror(errno));
      continue;
    }
    value.resize(static_cast<size_t>(vn));
    e.xattrs[name] = value;
  }
}

uint64_t HashFd(int fd, bool* ok) {
  XXH3_state_t* st = XXH3_createState();
  XXH3_64bits_reset(st);
  char buf[1 << 16];
  *ok = true;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      *ok = false;
      break;
    }
    if (n == 0) break;
    XXH3_64bits_update(st, buf, static_cast<size_t>(n));
  }
  uint64_t h = XXH3_64bits_digest(st);
  XXH3_freeState(st);
  return h;
}

// rel is relative to the snapshot root; dirfd is the open directory `rel`.
void Walk(int dirfd, const std::string& root, const std::string& rel, bool skip_nasfs, Tree& out) {
  DIR* d = fdopendir(dirfd);
  if (d == nullptr) {
    out[rel].error += fmt::format("fdopendir: {}; ", std::strerror(errno));
    close(dirfd);
    return;
  }
  std::vector<std::string> names;
  while (dirent* de = readdir(d)) {
    std::string name = de->d_name;
    if (name == "." || name == "..") continue;
    if (rel.empty() && skip_nasfs && name == ".nasfs") continue;
    names.push_back(name);
  }
  std::sort(names.begin(), names.end());
  for (const auto& name : names) {
    const std::string child = Join(rel, name);
    const std::string full = root + "/" + child;
    TreeEntry e;
    struct stat st {};
    if (fstatat(dirfd, name.c_str(), &st, AT_SYMLINK_NOFOLLOW) != 0) {
      e.error = fmt::format("lstat: {}", std::strerror(errno));
      out[child] = e;
      continue;
    }
    e.mode = st.st_mode;
    e.uid = st.st_uid;
    e.gid = st.st_gid;
    e.nlink = st.st_nlink;
    e.size = st.st_size;
    e.mtime = st.st_mtim;
    ReadXattrs(full, e);
    if (S_ISREG(st.st_mode)) {
      e.type = TreeEntry::Type::kFile;
      int fd = openat(dirfd, name.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
      if (fd < 0) {
        e.error += fmt::format("open: {}; ", std::strerror(errno));
      } else {
        bool ok = false;
        e.content_hash = HashFd(fd, &ok);
        if (!ok) e.error += fmt::format("read: {}; ", std::strerror(errno));
        close(fd);
      }
      out[child] = e;
    } else if (S_ISLNK(st.st_mode)) {
      e.type = TreeEntry::Type::kSymlink;
      char buf[PATH_MAX + 1];
      ssize_t n = readlinkat(dirfd, name.c_str(), buf, sizeof buf);
      if (n < 0) {
        e.error += fmt::format("readlink: {}; ", std::strerror(errno));
      } else {
        e.link_target.assign(buf, static_cast<size_t>(n));
      }
      out[child] = e;
    } else if (S_ISDIR(st.st_mode)) {
      e.type = TreeEntry::Type::kDir;
      out[child] = e;
      int sub = openat(dirfd, name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
      if (sub < 0) {
        out[child].error += fmt::format("opendir: {}; ", std::strerror(errno));
      } else {
        Walk(sub, root, child, skip_nasfs, out);
      }
    } else {
      e.type = TreeEntry::Type::kOther;
      out[child] = e;
    }
  }
  closedir(d);  // closes dirfd
}

std::string Mode(mode_t m) { return fmt::format("{:04o}", m & 07777); }

}  // namespace

Tree SnapshotTree(const std::string& root, bool skip_nasfs) {
  Tree out;
  TreeEntry r;
  struct stat st {};
  if (lstat(root.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    r.error = fmt::format("cannot stat {} as a directory: {}", root, std::strerror(errno));
    out[""] = r;
    return out;
  }
  r.type = TreeEntry::Type::kDir;
  r.mode = st.st_mode;
  r.uid = st.st_uid;
  r.gid = st.st_gid;
  r.nlink = st.st_nlink;
  r.mtime = st.st_mtim;
  ReadXattrs(root, r);
  out[""] = r;
  int fd = open(root.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    out[""].error = fmt::format("open: {}", std::strerror(errno));
    return out;
  }
  Walk(fd, root, "", skip_nasfs, out);
  return out;
}

std::vector<std::string> CompareSnapshots(const Tree& a, const Tree& b, const std::string& an,
                                          const std::string& bn, const CompareOptions& opts) {
  std::vector<std::string> diffs;
  std::set<std::string> paths;
  for (const auto& [p, e] : a) paths.insert(p);
  for (const auto& [p, e] : b) paths.insert(p);
  for (const auto& p : paths) {
    const std::string label = p.empty() ? "/ (root)" : p;
    auto ia = a.find(p);
    auto ib = b.find(p);
    if (ia == a.end()) {
      diffs.push_back(fmt::format("{}: only in {} ({})", label, bn, TypeName(ib->second.type)));
      continue;
    }
    if (ib == b.end()) {
      diffs.push_back(fmt::format("{}: only in {} ({})", label, an, TypeName(ia->second.type)));
      continue;
    }
    const TreeEntry& x = ia->second;
    const TreeEntry& y = ib->second;
    auto diff = [&](const std::string& what, const std::string& xv, const std::string& yv) {
      diffs.push_back(fmt::format("{}: {} differs: {}={} {}={}", label, what, an, xv, bn, yv));
    };
    if (!x.error.empty() || !y.error.empty()) {
      diffs.push_back(fmt::format("{}: unreadable: {}: [{}] {}: [{}]", label, an, x.error, bn, y.error));
    }
    if (x.type != y.type) {
      diff("type", TypeName(x.type), TypeName(y.type));
      continue;
    }
    if ((x.mode & 07777) != (y.mode & 07777)) diff("mode", Mode(x.mode), Mode(y.mode));
    if ((x.mode & S_IFMT) != (y.mode & S_IFMT)) diff("file type bits", Mode(x.mode >> 12), Mode(y.mode >> 12));
    if (opts.owner && (x.uid != y.uid || x.gid != y.gid)) {
      diff("owner", fmt::format("{}:{}", x.uid, x.gid), fmt::format("{}:{}", y.uid, y.gid));
    }
    const bool dir = x.type == TreeEntry::Type::kDir;
    if (!dir && x.size != y.size) diff("size", std::to_string(x.size), std::to_string(y.size));
    if (!dir && opts.nlink && x.nlink != y.nlink) diff("nlink", std::to_string(x.nlink), std::to_string(y.nlink));
    if (x.type == TreeEntry::Type::kFile && x.content_hash != y.content_hash) {
      diff("content (xxh3)", fmt::format("{:016x}", x.content_hash), fmt::format("{:016x}", y.content_hash));
    }
    if (x.type == TreeEntry::Type::kSymlink && x.link_target != y.link_target) {
      diff("symlink target", "'" + x.link_target + "'", "'" + y.link_target + "'");
    }
    const bool want_mtime = p.empty() ? opts.root_mtime : opts.mtime;
    if (want_mtime && (x.mtime.tv_sec != y.mtime.tv_sec || x.mtime.tv_nsec != y.mtime.tv_nsec)) {
      diff("mtime", fmt::format("{}.{:09d}", x.mtime.tv_sec, x.mtime.tv_nsec),
           fmt::format("{}.{:09d}", y.mtime.tv_sec, y.mtime.tv_nsec));
    }
    if (opts.xattrs && x.xattrs != y.xattrs) {
      auto fmtx = [](const std::map<std::string, std::string>& m) {
        std::string s = "{";
        for (const auto& [k, v] : m) s += fmt::format("{}='{}' ", k, v);
        return s + "}";
      };
      diff("user xattrs", fmtx(x.xattrs), fmtx(y.xattrs));
    }
  }
  return diffs;
}

std::vector<std::string> CompareTrees(const std::string& a, const std::string& b, const CompareOptions& opts) {
  return CompareSnapshots(SnapshotTree(a), SnapshotTree(b), a, b, opts);
}

std::vector<std::string> CompareWithReference(const std::string& nas, const std::string& reference,
                                              CompareOptions opts) {
  return CompareSnapshots(SnapshotTree(nas, /*skip_nasfs=*/true), SnapshotTree(reference, /*skip_nasfs=*/false),
                          nas, reference, opts);
}

std::string FormatDiffs(const std::vector<std::string>& diffs) {
  if (diffs.empty()) return "(no differences)";
  std::string s;
  for (const auto& d : diffs) s += "  " + d + "\n";
  return s;
}

bool AtOrUnderAny(const std::set<std::string>& paths, const std::string& rel) {
  for (std::string p = rel;;) {
    if (paths.count(p)) return true;
    const auto slash = p.rfind('/');
    if (slash == std::string::npos) return false;
    p.resize(slash);
  }
}

uint64_t HashFile(const std::string& path, bool* ok) {
  bool local_ok = false;
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (ok != nullptr) *ok = false;
    return 0;
  }
  uint64_t h = HashFd(fd, &local_ok);
  close(fd);
  if (ok != nullptr) *ok = local_ok;
  return h;
}

}  // namespace nasfs::e2e
