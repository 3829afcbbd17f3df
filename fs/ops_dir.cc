// Namespace operations and directory listing.
#include <dirent.h>
#include <linux/fs.h>

#include <algorithm>
#include <vector>

#include "fs/ops.h"

namespace nasfs::ops {

void ReadLink(fuse_req_t req, fuse_ino_t ino) {
  Nasfs& fs = Fs(req);
  std::string path, out;
  int r = OnResolvedPath(
      fs, [&](std::string* p) { return PathOf(fs, ino, p); },
      [&](const std::string& p) {
        return fs.ReadInto<std::string>([p](const Backend& b, std::string* o) { return b.ReadLink(p, o); }, &out);
      },
      &path);
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  fuse_reply_readlink(req, out.c_str());
}

namespace {

// The shape every "make a new name" operation shares: check the name,
// resolve the path, mirror `make`, reply with the new entry. `same_as`, for
// link(2), is the inode the new name joins.
template <typename MakeFn>
void MakeEntry(fuse_req_t req, Mutation what, fuse_ino_t parent, const char* name, MakeFn make,
               fuse_ino_t same_as = 0, const std::string& link_from = {}) {
  Nasfs& fs = Fs(req);
  if (IsMetaName(parent, name)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  std::string path;
  auto out = std::make_shared<StatPair>();
  int r = OnResolvedPath(
      fs, [&](std::string* p) { return ChildPathOf(fs, parent, name, p); },
      [&](const std::string& p) { return fs.Mutate(what, {p}, make(p, out), {}, link_from); }, &path);
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  if (same_as && fs.inodes().AddLink(same_as, parent, name)) {
    // One inode for both names: the kernel then shows one nlink and ctime
    // through either.
    fuse_entry_param e;
    FillEntry(fs, same_as, out->Result(), &e);
    fuse_reply_entry(req, &e);
    return;
  }
  ReplyNewEntry(req, parent, name, out->Result());
}

}  // namespace

void Mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev) {
  Caller who = CallerOf(req);
  timespec t = Mirror::Now();
  MakeEntry(req, Mutation::kMknod, parent, name, [=](const std::string& path, std::shared_ptr<StatPair> out) {
    return [=](const Backend& b) { return b.Mknod(path, mode, rdev, who, t, &out->st[RoleIndex(b)]); };
  });
}

void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode) {
  Caller who = CallerOf(req);
  timespec t = Mirror::Now();
  MakeEntry(req, Mutation::kMkdir, parent, name, [=](const std::string& path, std::shared_ptr<StatPair> out) {
    return [=](const Backend& b) { return b.Mkdir(path, mode, who, t, &out->st[RoleIndex(b)]); };
  });
}

void Symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name) {
  Caller who = CallerOf(req);
  timespec t = Mirror::Now();
  std::string target = link;
  MakeEntry(req, Mutation::kSymlink, parent, name, [=](const std::string& path, std::shared_ptr<StatPair> out) {
    return [=](const Backend& b) { return b.Symlink(target, path, who, t, &out->st[RoleIndex(b)]); };
  });
}

void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char* name) {
  Nasfs& fs = Fs(req);
  std::string old_path;
  if (!PathOrReply(req, fs, ino, &old_path)) return;
  timespec t = Mirror::Now();
  MakeEntry(
      req, Mutation::kLink, parent, name,
      [=](const std::string& path, std::shared_ptr<StatPair> out) {
        return [=](const Backend& b) { return b.Link(old_path, path, t, &out->st[RoleIndex(b)]); };
      },
      ino, old_path);
}

namespace {

void RemoveEntry(fuse_req_t req, fuse_ino_t parent, const char* name, bool dir) {
  Nasfs& fs = Fs(req);
  if (IsMetaName(parent, name)) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  std::string path;
  timespec t = Mirror::Now();
  // A file the kernel knows may be open: keep it reachable (see Orphan).
  fuse_ino_t known = fs.inodes().Peek(parent, name);
  auto orphan = !dir && known ? std::make_shared<Orphan>() : nullptr;
  // No read or write acts on it by this name until the table follows.
  auto guard = fs.LockNames(known);
  int r = OnResolvedPath(
      fs, [&](std::string* p) { return ChildPathOf(fs, parent, name, p); },
      [&](const std::string& p) {
        return fs.Mutate(dir ? Mutation::kRmdir : Mutation::kUnlink, {p}, [p, t, dir, orphan](const Backend& b) {
          if (orphan) orphan->Set(b.role(), b.OpenIfRegular(p));
          return dir ? b.Rmdir(p, t) : b.Unlink(p, t);
        });
      },
      &path);
  if (r == 0)
    if (fuse_ino_t gone = fs.inodes().Remove(parent, name); gone && orphan) fs.AdoptOrphan(gone, orphan);
  fuse_reply_err(req, r);
}

}  // namespace

void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name) { RemoveEntry(req, parent, name, false); }
void Rmdir(fuse_req_t req, fuse_ino_t parent, const char* name) { RemoveEntry(req, parent, name, true); }

int DoRename(Nasfs& fs, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
             const char* newname, unsigned int flags) {
  if (IsMetaName(parent, name) || IsMetaName(newparent, newname)) return EPERM;
  if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE)) return EINVAL;
  std::string from, to;
  if (int e = ChildPathOf(fs, parent, name, &from)) return e;
  if (int e = ChildPathOf(fs, newparent, newname, &to)) return e;
  timespec t = Mirror::Now();
  // The file a rename replaces may be open (a deploy renaming a new
  // index.html over the one nginx is sending): keep it reachable.
  fuse_ino_t moving = fs.inodes().Peek(parent, name), replaced = fs.inodes().Peek(newparent, newname);
  auto orphan = !(flags & RENAME_EXCHANGE) && replaced ? std::make_shared<Orphan>() : nullptr;
  // Both names change: no read or write acts on either file by its old name
  // until the table follows (see Nasfs::ShareName).
  auto guard = fs.LockNames(moving, replaced);
  Nasfs::RenameMark mark(fs);
  int r = fs.Mutate(Mutation::kRename, {from, to}, [from, to, flags, t, orphan](const Backend& b) {
    if (orphan) orphan->Set(b.role(), b.OpenIfRegular(to));
    return b.Rename(from, to, flags, t);
  });
  if (r) return r;
  if (flags & RENAME_EXCHANGE) {
    fs.inodes().Exchange(parent, name, newparent, newname);
  } else if (fuse_ino_t gone = fs.inodes().Rename(parent, name, newparent, newname); gone && orphan) {
    fs.AdoptOrphan(gone, orphan);
  }
  return 0;
}

void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
            const char* newname, unsigned int flags) {
  fuse_reply_err(req, DoRename(Fs(req), parent, name, newparent, newname, flags));
}

namespace {

// A directory listing taken at opendir, served by offset: a snapshot keeps
// offsets stable while the directory changes underneath.
struct DirHandle {
  std::string path;
  std::vector<DirEntry> entries;
};

DirHandle* HandleOf(fuse_file_info* fi) { return reinterpret_cast<DirHandle*>(fi->fh); }

// A d_ino for an entry listed without a lookup: readdir takes no lookup
// count, so it cannot hand out a nasfs number; a stable stand-in, never 0
// (some readers skip d_ino 0). stat() gives the real number.
fuse_ino_t DirentIno(const std::string& name) {
  return (std::hash<std::string>()(name) | (1ULL << 63));
}

}  // namespace

void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  Nasfs& fs = Fs(req);
  std::string path;
  std::vector<DirEntry> out;
  int r = OnResolvedPath(
      fs, [&](std::string* p) { return PathOf(fs, ino, p); },
      [&](const std::string& p) {
        return fs.ReadInto<std::vector<DirEntry>>(
            [p](const Backend& b, std::vector<DirEntry>* o) { return b.ReadDir(p, o); }, &out);
      },
      &path);
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  auto h = std::make_unique<DirHandle>();
  h->path = path;
  h->entries.reserve(out.size());
  for (auto& e : out)
    if (!(ino == FUSE_ROOT_ID && e.name == kMetaDir)) h->entries.push_back(std::move(e));
  fi->fh = reinterpret_cast<uint64_t>(h.get());
  if (fuse_reply_open(req, fi) == 0) h.release();
}

void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  (void)ino;
  DirHandle* h = HandleOf(fi);
  std::string buf(size, '\0');
  size_t used = 0;
  for (size_t i = static_cast<size_t>(off); i < h->entries.size(); ++i) {
    const DirEntry& e = h->entries[i];
    struct stat st {};
    st.st_ino = DirentIno(e.name);
    st.st_mode = static_cast<mode_t>(e.type) << 12;
    size_t n = fuse_add_direntry(req, buf.data() + used, size - used, e.name.c_str(), &st,
                                 static_cast<off_t>(i + 1));
    if (n > size - used) break;
    used += n;
  }
  fuse_reply_buf(req, buf.data(), used);
}

void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  Nasfs& fs = Fs(req);
  DirHandle* h = HandleOf(fi);
  // Stat this batch in one NAS call. A batch holds at most what fits: each
  // entry takes at least ~150 bytes of the reply.
  size_t first = static_cast<size_t>(off);
  size_t last = std::min(h->entries.size(), first + size / 128 + 1);
  std::vector<std::string> names;
  for (size_t i = first; i < last; ++i) names.push_back(h->entries[i].name);
  std::vector<struct stat> stats;
  // The directory may have been renamed since opendir took its listing:
  // its path comes from the inode table now.
  std::string path = h->path;
  int r = OnResolvedPath(
      fs,
      [&](std::string* p) {
        if (PathOf(fs, ino, p) != 0) *p = h->path;
        return 0;
      },
      [&](const std::string& p) {
        return fs.ReadInto<std::vector<struct stat>>(
            [p, names](const Backend& b, std::vector<struct stat>* o) { return b.StatChildren(p, names, o); },
            &stats);
      },
      &path);
  h->path = path;
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  std::string buf(size, '\0');
  size_t used = 0;
  for (size_t i = first; i < last; ++i) {
    const DirEntry& d = h->entries[i];
    const struct stat& st = stats[i - first];
    fuse_entry_param e{};
    bool dot = d.name == "." || d.name == "..";
    if (dot || st.st_ino == 0) {
      // No lookup is taken: the kernel treats ino 0 as "name only".
      e.attr.st_ino = DirentIno(d.name);
      e.attr.st_mode = static_cast<mode_t>(d.type) << 12;
    } else {
      FillEntry(fs, 0, st, &e);
    }
    size_t need = fuse_add_direntry_plus(req, nullptr, 0, d.name.c_str(), &e, 0);
    if (need > size - used) break;
    if (!dot && st.st_ino != 0) {
      fuse_ino_t child = fs.inodes().Lookup(ino, d.name);
      if (!child) break;
      e.ino = child;
      e.attr.st_ino = child;
    } else {
      e.ino = 0;
    }
    used += fuse_add_direntry_plus(req, buf.data() + used, size - used, d.name.c_str(), &e,
                                   static_cast<off_t>(i + 1));
  }
  fuse_reply_buf(req, buf.data(), used);
}

void ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  (void)ino;
  delete HandleOf(fi);
  fuse_reply_err(req, 0);
}

void FsyncDir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  (void)fi;
  Nasfs& fs = Fs(req);
  std::string path;
  if (!PathOrReply(req, fs, ino, &path)) return;
  fuse_reply_err(req, fs.Mutate(Mutation::kFsyncDir, {path}, [path, datasync](const Backend& b) {
    return b.Fsync(path, datasync != 0);
  }));
}

}  // namespace nasfs::ops
