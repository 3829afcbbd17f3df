// File data: open/create, read, write, fsync, fallocate.
//
// nasfs keeps no per-open state. OPEN answers ENOSYS once, and the kernel
// then stops sending OPEN, FLUSH and RELEASE (no-open support, which also
// keeps the page cache across opens): opening and closing a hot file costs
// no round trip. Each READ or WRITE names the file by inode; a NAS worker
// opens its path beneath the NAS root for the one call. A file unlinked
// while the kernel holds it stays usable through the fds its orphan keeps
// (see Orphan in nasfs.h).
#include "fs/ops.h"

namespace nasfs::ops {

void Open(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  (void)ino;
  (void)fi;
  fuse_reply_err(req, ENOSYS);
}

void Create(fuse_req_t req, fuse_ino_t parent, const char* name, mode_t mode, fuse_file_info* fi) {
  Nasfs& fs = Fs(req);
  if (IsMetaName(parent, name)) {
    fuse_reply_err(req, EPERM);
    return;
  }
  Caller who = CallerOf(req);
  timespec t = Mirror::Now();
  int flags = fi->flags;
  auto out = std::make_shared<StatPair>();
  std::string path;
  int r = OnResolvedPath(
      fs, [&](std::string* p) { return ChildPathOf(fs, parent, name, p); },
      [&](const std::string& p) {
        return fs.Mutate(Mutation::kCreate, {p}, [=](const Backend& b) {
          return b.Create(p, flags, mode, who, t, &out->st[RoleIndex(b)]);
        });
      },
      &path);
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  fuse_ino_t ino = fs.inodes().Lookup(parent, name);
  if (!ino) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e;
  FillEntry(fs, ino, out->Result(), &e);
  fi->fh = 0;
  if (fuse_reply_create(req, &e, fi) != 0) fs.inodes().Forget(ino, 1);
}

void Read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off, fuse_file_info* fi) {
  (void)fi;
  Nasfs& fs = Fs(req);
  FileRef ref;
  if (!RefOrReply(req, fs, ino, &ref)) return;
  std::string out;
  int r = ReadRef(
      fs, ref, [=](const Backend& b, const std::string& p, std::string* o) { return b.Read(p, off, size, o); },
      [=](const Backend&, int fd, std::string* o) { return Backend::ReadFd(fd, off, size, o); }, &out);
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  fuse_reply_buf(req, out.data(), out.size());
}

void Write(fuse_req_t req, fuse_ino_t ino, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  (void)fi;
  Nasfs& fs = Fs(req);
  FileRef ref;
  if (!RefOrReply(req, fs, ino, &ref)) return;
  // The request buffer is libfuse's and is reused after the reply; a NAS
  // call that outlives its deadline must own its bytes.
  auto data = std::make_shared<const std::string>(buf, size);
  timespec t = Mirror::Now();
  int r = MutateRef(
      fs, Mutation::kWrite, ref, [=](const Backend& b, const std::string& p) { return b.Write(p, off, *data, t); },
      [=](const Backend&, int fd) { return Backend::WriteFd(fd, off, *data, t); },
      journal::Range{static_cast<uint64_t>(off), size});
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  fuse_reply_write(req, size);
}

void Flush(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  (void)ino;
  (void)fi;
  // Writes are on both NAS before WRITE is answered: nothing to flush.
  // ENOSYS tells the kernel to stop sending FLUSH at all.
  fuse_reply_err(req, ENOSYS);
}

void Release(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  (void)ino;
  (void)fi;
  fuse_reply_err(req, 0);
}

void Fsync(fuse_req_t req, fuse_ino_t ino, int datasync, fuse_file_info* fi) {
  (void)fi;
  Nasfs& fs = Fs(req);
  FileRef ref;
  if (!RefOrReply(req, fs, ino, &ref)) return;
  fuse_reply_err(req, MutateRef(
                          fs, Mutation::kFsync, ref,
                          [datasync](const Backend& b, const std::string& p) { return b.Fsync(p, datasync != 0); },
                          [datasync](const Backend&, int fd) {
                            return (datasync ? fdatasync(fd) : fsync(fd)) == 0 ? 0 : errno;
                          }));
}

void Fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len, fuse_file_info* fi) {
  (void)fi;
  Nasfs& fs = Fs(req);
  auto name = fs.ShareName(ino);  // see FileRef
  std::string path;
  if (!PathOrReply(req, fs, ino, &path)) return;
  timespec t = Mirror::Now();
  fuse_reply_err(req, fs.Mutate(
                          Mutation::kFallocate, {path}, [=](const Backend& b) { return b.Fallocate(path, mode, off, len, t); },
                          {}, {}, fs.AliasesOf(ino, path)));
}

}  // namespace nasfs::ops
