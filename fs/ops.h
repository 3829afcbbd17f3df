// Helpers shared by the FUSE operation files (ops_*.cc). Internal to fs/.
//
// Each operation is split as libfuse's passthrough_hp does: a DoX() that
// returns 0 or a positive errno and fills its outputs, and the handler that
// makes the one fuse_reply_* call. That call is the handler's last: nothing
// after it may throw, because Operations() answers EIO for a handler that
// threw (an exception must never cross libfuse's C frames).
//
// Outputs written by a NAS call live in shared_ptr state captured by the
// call: a call abandoned at its deadline may still finish later, and must
// then write into memory that is still ours.
#pragma once

#include <fuse_lowlevel.h>
#include <sys/stat.h>

#include <cstring>
#include <memory>
#include <string>

#include "fs/nasfs.h"

namespace nasfs::ops {

inline Nasfs& Fs(fuse_req_t req) { return *static_cast<Nasfs*>(fuse_req_userdata(req)); }

inline Caller CallerOf(fuse_req_t req) {
  const fuse_ctx* c = fuse_req_ctx(req);
  return Caller{c->uid, c->gid};
}

// The hidden metadata directory: only at the top of the tree.
inline bool IsMetaName(fuse_ino_t parent, const char* name) {
  return parent == FUSE_ROOT_ID && std::strcmp(name, kMetaDir) == 0;
}

// One stat per NAS, indexed by Role.
struct StatPair {
  struct stat st[2] = {};
  // The stat of the side whose result the mirror returned.
  const struct stat& Result() const { return st[0].st_ino ? st[0] : st[1]; }
};

// Attributes as the kernel sees them: nasfs's inode number, and no caching
// of a hard-linked file's attributes, whose nlink and ctime another name can
// change without the kernel knowing the two names are one file.
inline double AttrTimeout(const Nasfs& fs, const struct stat& st) {
  return (!S_ISDIR(st.st_mode) && st.st_nlink > 1) ? 0.0 : fs.cache_timeout();
}

inline void FillEntry(const Nasfs& fs, fuse_ino_t ino, const struct stat& st, fuse_entry_param* e) {
  *e = {};
  e->ino = ino;
  e->attr = st;
  e->attr.st_ino = ino;
  e->attr_timeout = AttrTimeout(fs, st);
  e->entry_timeout = fs.cache_timeout();
}

// The path of ino, or of parent/name; ENOENT when the node is gone.
inline int PathOf(Nasfs& fs, fuse_ino_t ino, std::string* out) {
  auto p = fs.inodes().Path(ino);
  if (!p) return ENOENT;
  *out = std::move(*p);
  return 0;
}
inline int ChildPathOf(Nasfs& fs, fuse_ino_t parent, const char* name, std::string* out) {
  auto p = fs.inodes().ChildPath(parent, name);
  if (!p) return ENOENT;
  *out = std::move(*p);
  return 0;
}

// The same, replying with the error when there is none: handlers write
// `if (!PathOrReply(req, fs, ino, &path)) return;`.
inline bool PathOrReply(fuse_req_t req, Nasfs& fs, fuse_ino_t ino, std::string* out) {
  if (int e = PathOf(fs, ino, out)) {
    fuse_reply_err(req, e);
    return false;
  }
  return true;
}

// What an inode names on the NAS: its path, or, for a file whose name went
// away while the kernel held it, its orphan fds. Holds the inode's name
// (Nasfs::ShareName) while the operation runs, so no rename or unlink
// swaps the file at that path meanwhile.
struct FileRef {
  fuse_ino_t ino = 0;
  std::string path;
  std::shared_ptr<Orphan> orphan;
  std::shared_lock<SharedGate> name;
  uint64_t renames = 0;  // Nasfs::RenameSnapshot() when it was resolved
};
inline int RefOf(Nasfs& fs, fuse_ino_t ino, FileRef* out) {
  out->ino = ino;
  out->name = fs.ShareName(ino);
  out->renames = fs.RenameSnapshot();
  if (PathOf(fs, ino, &out->path) == 0) return 0;
  out->orphan = fs.FindOrphan(ino);
  return out->orphan ? 0 : ENOENT;
}

inline bool RefOrReply(fuse_req_t req, Nasfs& fs, fuse_ino_t ino, FileRef* out) {
  if (int e = RefOf(fs, ino, out)) {
    fuse_reply_err(req, e);
    return false;
  }
  return true;
}

// Runs a read on the read NAS, with failover: by_path(backend, path, out),
// or by_fd(backend, fd, out) for an orphan. See Nasfs::ReadInto.
// A path found empty (ENOENT) may have moved under the operation: a
// directory above it renamed between resolving the path and using it (the
// NAS renamed, the inode table not yet). Once that rename is over, the
// path is resolved again and the operation retried, once. Without this, a
// LOOKUP in that window would have the kernel cache "no such name" for
// cache_timeout. `resolve` fills *path from the inode table, or returns an
// errno; `op` acts on the path.
template <typename Resolve, typename Op>
int OnResolvedPath(Nasfs& fs, Resolve resolve, Op op, std::string* path) {
  const uint64_t renames = fs.RenameSnapshot();
  if (int e = resolve(path)) return e;
  int r = op(*path);
  if (r != ENOENT || !fs.RenamedSince(renames)) return r;
  std::string now;
  if (resolve(&now) != 0 || now == *path) return r;
  *path = std::move(now);
  return op(*path);
}

// The same for a FileRef resolved already (RefOf took the snapshot). A
// file with other names (hard links) is also tried by those: its first
// name may be gone on the NAS (removed by another web server) while the
// file lives on under the name the application used.
template <typename Op>
int RetryIfMoved(Nasfs& fs, FileRef& ref, Op op) {
  int r = op(ref.path);
  if (r != ENOENT || ref.orphan) return r;
  for (auto& other : fs.inodes().OtherPaths(ref.ino)) {
    int o = op(other);
    if (o != ENOENT) {
      ref.path = std::move(other);
      return o;
    }
  }
  if (!fs.RenamedSince(ref.renames)) return r;
  std::string now;
  if (PathOf(fs, ref.ino, &now) != 0 || now == ref.path) return r;
  ref.path = std::move(now);
  return op(ref.path);
}

template <typename T, typename P, typename F>
int ReadRef(Nasfs& fs, FileRef& ref, P by_path, F by_fd, T* result) {
  if (!ref.orphan)
    return RetryIfMoved(fs, ref, [&](const std::string& path) {
      return fs.ReadInto<T>([path, by_path](const Backend& b, T* out) { return by_path(b, path, out); }, result);
    });
  return fs.ReadInto<T>(
      [o = ref.orphan, by_fd](const Backend& b, T* out) {
        int fd = o->Fd(b.role());
        return fd < 0 ? kNotOnThisNas : by_fd(b, fd, out);
      },
      result, /*hedge=*/false);
}

// The same for a change, applied to both NAS.
template <typename P, typename F>
int MutateRef(Nasfs& fs, Mutation what, FileRef& ref, P by_path, F by_fd, journal::Range range = {}) {
  if (!ref.orphan)
    return RetryIfMoved(fs, ref, [&](const std::string& path) {
      return fs.Mutate(what, {path}, [path, by_path](const Backend& b) { return by_path(b, path); }, range, {},
                       fs.AliasesOf(ref.ino, path));
    });
  return fs.MutateOrphan(what, ref.orphan, by_fd);
}

// Registers parent/name in the inode table and replies with its entry.
void ReplyNewEntry(fuse_req_t req, fuse_ino_t parent, const char* name, const struct stat& st);

// Handler declarations, grouped by file.
void Init(void* userdata, fuse_conn_info* conn);
void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name);
void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup);
void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets);
void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi);
void StatFs(fuse_req_t req, fuse_ino_t ino);

void ReadLink(fuse_req_t req, fuse_ino_t ino);
void Mknod(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, dev_t rdev);
void Mkdir(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode);
void Symlink(fuse_req_t req, const char* link, fuse_ino_t parent, const char* name);
void Link(fuse_req_t req, fuse_ino_t ino, fuse_ino_t parent, const char* name);
void Unlink(fuse_req_t req, fuse_ino_t parent, const char* name);
void Rmdir(fuse_req_t req, fuse_ino_t parent, const char* name);
void Rename(fuse_req_t req, fuse_ino_t parent, const char* name, fuse_ino_t newparent,
            const char* newname, unsigned int flags);
void OpenDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void ReadDir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
void ReadDirPlus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
void ReleaseDir(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void FsyncDir(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi);

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi);
void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi);
void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi);
void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi);
void Fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi);
void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, fuse_file_info* fi);

void SetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, const char* value, size_t size, int flags);
void GetXattr(fuse_req_t req, fuse_ino_t ino, const char* name, size_t size);
void ListXattr(fuse_req_t req, fuse_ino_t ino, size_t size);
void RemoveXattr(fuse_req_t req, fuse_ino_t ino, const char* name);

}  // namespace nasfs::ops
