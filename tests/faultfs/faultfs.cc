// faultfs: a FUSE passthrough over a directory whose faults are switched at
// run time, for the failover tests (a NAS that fails writes, fills up, fails
// everything, or answers slowly).
//
//   faultfs [-f] [-o ctl=FILE] SOURCE MOUNTPOINT [FUSE options]
//
// FILE (outside the mount) holds the faults in force, whitespace- or
// comma-separated; a missing or empty file means none:
//   eio_writes     every mutation fails with EIO
//   enospc_writes  every mutation fails with ENOSPC
//   eio_all        every operation fails with EIO
//   delay_ms=N     every operation first sleeps N ms
// A "mutation" is anything that changes the tree: write, create, mknod,
// mkdir, unlink, rmdir, rename, symlink, link, chmod, chown, truncate (and
// open with O_TRUNC), utimens, fallocate, setxattr, removexattr. fsync is a
// mutation too (a full disk or a failing one reports there as well).
// The file is checked before every operation and re-read when its inode,
// size or mtime changed; write it by rename so a change is never missed.
//
// Everything is resolved relative to an fd on SOURCE opened before the mount
// (so SOURCE may even lie under MOUNTPOINT). Attributes and entries are not
// cached by the kernel (timeouts 0) and file data bypasses the page cache
// (direct_io), so a fault switched on applies to the very next request.
// Unlinked open files are removed at once (hard_remove), never hidden as
// .fuse_hidden*, so the tree underneath stays exactly what the client made.
// The price: the high-level API then forgets an unlinked file's path, so a
// GETATTR on it that carries no handle (fstat of an open, unlinked file)
// fails with ESTALE; reads, writes and truncates through the handle work.
//
// A test tool: correctness over speed, the high-level path-based API, and
// each operation the plain syscall on the source.

#include <dirent.h>
#include <fcntl.h>
#include <fuse.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>

namespace {

struct Faults {
  bool eio_writes = false;
  bool enospc_writes = false;
  bool eio_all = false;
  int delay_ms = 0;

  std::string Describe() const {
    std::string s;
    if (eio_writes) s += " eio_writes";
    if (enospc_writes) s += " enospc_writes";
    if (eio_all) s += " eio_all";
    if (delay_ms > 0) s += " delay_ms=" + std::to_string(delay_ms);
    return s.empty() ? " (none)" : s;
  }
};

struct Config {
  char* ctl = nullptr;  // -o ctl=FILE (fuse_opt allocates it)
  std::string source;
};

Config g_cfg;
int g_root = -1;  // O_PATH fd of SOURCE, opened before the mount

// The control file's identity when last read, and what it said.
std::mutex g_faults_mu;
Faults g_faults;         // guarded by g_faults_mu
struct stat g_ctl_seen;  // guarded by g_faults_mu; st_ino 0: absent

Faults Parse(const std::string& text) {
  Faults f;
  std::string norm = text;
  for (char& c : norm) {
    if (c == ',') c = ' ';
  }
  std::istringstream in(norm);
  std::string tok;
  while (in >> tok) {
    if (tok == "eio_writes") {
      f.eio_writes = true;
    } else if (tok == "enospc_writes") {
      f.enospc_writes = true;
    } else if (tok == "eio_all") {
      f.eio_all = true;
    } else if (tok.rfind("delay_ms=", 0) == 0) {
      f.delay_ms = std::atoi(tok.c_str() + 9);
    } else {
      std::fprintf(stderr, "faultfs: ignoring unknown fault '%s'\n", tok.c_str());
    }
  }
  return f;
}

// The faults in force, re-reading the control file if it changed.
Faults Current() {
  std::lock_guard<std::mutex> lock(g_faults_mu);
  if (g_cfg.ctl == nullptr) return g_faults;
  struct stat st {};
  if (stat(g_cfg.ctl, &st) != 0) st = {};
  const bool same = st.st_ino == g_ctl_seen.st_ino && st.st_dev == g_ctl_seen.st_dev &&
                    st.st_size == g_ctl_seen.st_size &&
                    st.st_mtim.tv_sec == g_ctl_seen.st_mtim.tv_sec &&
                    st.st_mtim.tv_nsec == g_ctl_seen.st_mtim.tv_nsec;
  if (same) return g_faults;
  g_ctl_seen = st;
  std::string text;
  if (st.st_ino != 0) {
    if (FILE* f = std::fopen(g_cfg.ctl, "re")) {
      char buf[512];
      size_t n;
      while ((n = std::fread(buf, 1, sizeof buf, f)) > 0) text.append(buf, n);
      std::fclose(f);
    }
  }
  g_faults = Parse(text);
  std::fprintf(stderr, "faultfs: faults now:%s\n", g_faults.Describe().c_str());
  return g_faults;
}

enum class Kind { kRead, kMutation };

// Applies the faults to one operation: sleeps if asked, then returns the
// negative errno to fail it with, or 0.
int Inject(Kind kind) {
  const Faults f = Current();
  if (f.delay_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(f.delay_ms));
  if (f.eio_all) return -EIO;
  if (kind == Kind::kMutation) {
    if (f.eio_writes) return -EIO;
    if (f.enospc_writes) return -ENOSPC;
  }
  return 0;
}

#define FAULT(kind)                           \
  do {                                        \
    if (int fault_ = Inject(kind)) return fault_; \
  } while (0)

// "/a/b" -> "a/b"; "/" -> ".".
const char* Rel(const char* path) {
  if (path == nullptr || path[0] == '\0') return ".";
  while (*path == '/') ++path;
  return *path == '\0' ? "." : path;
}

// A path naming rel through the root fd, for the calls that have no *at form
// (xattrs): the kernel resolves /proc/self/fd/N to SOURCE and goes on.
std::string ProcPath(const char* path) {
  return "/proc/self/fd/" + std::to_string(g_root) + "/" + Rel(path);
}

int Neg(int r) { return r < 0 ? -errno : r; }

// ---- operations -------------------------------------------------------------

void* Init(fuse_conn_info* conn, fuse_config* cfg) {
  (void)conn;
  cfg->use_ino = 1;
  cfg->entry_timeout = 0;
  cfg->attr_timeout = 0;
  cfg->negative_timeout = 0;
  cfg->direct_io = 1;
  cfg->hard_remove = 1;
  cfg->nullpath_ok = 1;
  return nullptr;
}

int GetAttr(const char* path, struct stat* st, fuse_file_info* fi) {
  FAULT(Kind::kRead);
  if (fi != nullptr) return Neg(fstat(static_cast<int>(fi->fh), st));
  if (path == nullptr) return -ESTALE;  // nullpath_ok: never stat the root instead
  return Neg(fstatat(g_root, Rel(path), st, AT_SYMLINK_NOFOLLOW));
}

int ReadLink(const char* path, char* buf, size_t size) {
  FAULT(Kind::kRead);
  if (size == 0) return -EINVAL;
  ssize_t n = readlinkat(g_root, Rel(path), buf, size - 1);
  if (n < 0) return -errno;
  buf[n] = '\0';
  return 0;
}

int OpenDir(const char* path, fuse_file_info* fi) {
  FAULT(Kind::kRead);
  int fd = openat(g_root, Rel(path), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return -errno;
  DIR* d = fdopendir(fd);
  if (d == nullptr) {
    int e = errno;
    close(fd);
    return -e;
  }
  fi->fh = reinterpret_cast<uint64_t>(d);
  return 0;
}

int ReadDir(const char* path, void* buf, fuse_fill_dir_t filler, off_t offset, fuse_file_info* fi,
            fuse_readdir_flags flags) {
  (void)path;
  (void)offset;
  (void)flags;
  FAULT(Kind::kRead);
  DIR* d = reinterpret_cast<DIR*>(fi->fh);
  rewinddir(d);
  errno = 0;
  while (dirent* e = readdir(d)) {
    struct stat st {};
    st.st_ino = e->d_ino;
    st.st_mode = static_cast<mode_t>(DTTOIF(e->d_type));
    if (filler(buf, e->d_name, &st, 0, static_cast<fuse_fill_dir_flags>(0)) != 0) break;
    errno = 0;
  }
  return errno != 0 ? -errno : 0;
}

int ReleaseDir(const char* path, fuse_file_info* fi) {
  (void)path;
  closedir(reinterpret_cast<DIR*>(fi->fh));
  return 0;
}

int Mknod(const char* path, mode_t mode, dev_t rdev) {
  FAULT(Kind::kMutation);
  return Neg(mknodat(g_root, Rel(path), mode, rdev));
}

int Mkdir(const char* path, mode_t mode) {
  FAULT(Kind::kMutation);
  return Neg(mkdirat(g_root, Rel(path), mode));
}

int Unlink(const char* path) {
  FAULT(Kind::kMutation);
  return Neg(unlinkat(g_root, Rel(path), 0));
}

int Rmdir(const char* path) {
  FAULT(Kind::kMutation);
  return Neg(unlinkat(g_root, Rel(path), AT_REMOVEDIR));
}

int Symlink(const char* target, const char* path) {
  FAULT(Kind::kMutation);
  return Neg(symlinkat(target, g_root, Rel(path)));
}

int Rename(const char* from, const char* to, unsigned int flags) {
  FAULT(Kind::kMutation);
  return Neg(renameat2(g_root, Rel(from), g_root, Rel(to), flags));
}

int Link(const char* from, const char* to) {
  FAULT(Kind::kMutation);
  return Neg(linkat(g_root, Rel(from), g_root, Rel(to), 0));
}

int Chmod(const char* path, mode_t mode, fuse_file_info* fi) {
  FAULT(Kind::kMutation);
  if (fi != nullptr) return Neg(fchmod(static_cast<int>(fi->fh), mode));
  // fchmodat cannot skip a symlink (AT_SYMLINK_NOFOLLOW is EOPNOTSUPP), and
  // the kernel never asks to chmod one: plain fchmodat is right.
  return Neg(fchmodat(g_root, Rel(path), mode, 0));
}

int Chown(const char* path, uid_t uid, gid_t gid, fuse_file_info* fi) {
  FAULT(Kind::kMutation);
  if (fi != nullptr) return Neg(fchown(static_cast<int>(fi->fh), uid, gid));
  return Neg(fchownat(g_root, Rel(path), uid, gid, AT_SYMLINK_NOFOLLOW));
}

int Truncate(const char* path, off_t size, fuse_file_info* fi) {
  FAULT(Kind::kMutation);
  if (fi != nullptr) return Neg(ftruncate(static_cast<int>(fi->fh), size));
  int fd = openat(g_root, Rel(path), O_WRONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) return -errno;
  int r = Neg(ftruncate(fd, size));
  close(fd);
  return r;
}

int Utimens(const char* path, const timespec tv[2], fuse_file_info* fi) {
  FAULT(Kind::kMutation);
  if (fi != nullptr) return Neg(futimens(static_cast<int>(fi->fh), tv));
  return Neg(utimensat(g_root, Rel(path), tv, AT_SYMLINK_NOFOLLOW));
}

int Create(const char* path, mode_t mode, fuse_file_info* fi) {
  FAULT(Kind::kMutation);
  int fd = openat(g_root, Rel(path), (fi->flags & ~O_DIRECT) | O_CLOEXEC, mode);
  if (fd < 0) return -errno;
  fi->fh = static_cast<uint64_t>(fd);
  return 0;
}

int Open(const char* path, fuse_file_info* fi) {
  FAULT((fi->flags & O_TRUNC) ? Kind::kMutation : Kind::kRead);
  // O_DIRECT is the kernel's business here (direct_io already bypasses the
  // page cache); passing it on would impose alignment on the source.
  int fd = openat(g_root, Rel(path), (fi->flags & ~O_DIRECT) | O_CLOEXEC);
  if (fd < 0) return -errno;
  fi->fh = static_cast<uint64_t>(fd);
  return 0;
}

int Read(const char* path, char* buf, size_t size, off_t off, fuse_file_info* fi) {
  (void)path;
  FAULT(Kind::kRead);
  ssize_t n = pread(static_cast<int>(fi->fh), buf, size, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int Write(const char* path, const char* buf, size_t size, off_t off, fuse_file_info* fi) {
  (void)path;
  FAULT(Kind::kMutation);
  ssize_t n = pwrite(static_cast<int>(fi->fh), buf, size, off);
  return n < 0 ? -errno : static_cast<int>(n);
}

int StatFs(const char* path, struct statvfs* st) {
  (void)path;
  FAULT(Kind::kRead);
  return Neg(fstatvfs(g_root, st));
}

int Release(const char* path, fuse_file_info* fi) {
  (void)path;
  close(static_cast<int>(fi->fh));
  return 0;
}

int Fsync(const char* path, int datasync, fuse_file_info* fi) {
  (void)path;
  FAULT(Kind::kMutation);
  int fd = static_cast<int>(fi->fh);
  return Neg(datasync ? fdatasync(fd) : fsync(fd));
}

int Fallocate(const char* path, int mode, off_t off, off_t len, fuse_file_info* fi) {
  (void)path;
  FAULT(Kind::kMutation);
  return Neg(fallocate(static_cast<int>(fi->fh), mode, off, len));
}

int SetXattr(const char* path, const char* name, const char* value, size_t size, int flags) {
  FAULT(Kind::kMutation);
  return Neg(lsetxattr(ProcPath(path).c_str(), name, value, size, flags));
}

int GetXattr(const char* path, const char* name, char* value, size_t size) {
  FAULT(Kind::kRead);
  ssize_t n = lgetxattr(ProcPath(path).c_str(), name, value, size);
  return n < 0 ? -errno : static_cast<int>(n);
}

int ListXattr(const char* path, char* list, size_t size) {
  FAULT(Kind::kRead);
  ssize_t n = llistxattr(ProcPath(path).c_str(), list, size);
  return n < 0 ? -errno : static_cast<int>(n);
}

int RemoveXattr(const char* path, const char* name) {
  FAULT(Kind::kMutation);
  return Neg(lremovexattr(ProcPath(path).c_str(), name));
}

fuse_operations MakeOperations() {
  fuse_operations ops{};
  ops.init = Init;
  ops.getattr = GetAttr;
  ops.readlink = ReadLink;
  ops.opendir = OpenDir;
  ops.readdir = ReadDir;
  ops.releasedir = ReleaseDir;
  ops.mknod = Mknod;
  ops.mkdir = Mkdir;
  ops.unlink = Unlink;
  ops.rmdir = Rmdir;
  ops.symlink = Symlink;
  ops.rename = Rename;
  ops.link = Link;
  ops.chmod = Chmod;
  ops.chown = Chown;
  ops.truncate = Truncate;
  ops.utimens = Utimens;
  ops.create = Create;
  ops.open = Open;
  ops.read = Read;
  ops.write = Write;
  ops.statfs = StatFs;
  ops.release = Release;
  ops.fsync = Fsync;
  ops.fallocate = Fallocate;
  ops.setxattr = SetXattr;
  ops.getxattr = GetXattr;
  ops.listxattr = ListXattr;
  ops.removexattr = RemoveXattr;
  return ops;
}

const fuse_opt kOptSpec[] = {
    {"ctl=%s", offsetof(Config, ctl), 0},
    FUSE_OPT_END,
};

// The first non-option argument is SOURCE; the rest (MOUNTPOINT) goes on to
// libfuse.
int ProcessArg(void* data, const char* arg, int key, fuse_args* outargs) {
  (void)outargs;
  auto* cfg = static_cast<Config*>(data);
  if (key == FUSE_OPT_KEY_NONOPT && cfg->source.empty()) {
    cfg->source = arg;
    return 0;
  }
  return 1;
}

}  // namespace

int main(int argc, char* argv[]) {
  fuse_args args = FUSE_ARGS_INIT(argc, argv);
  if (fuse_opt_parse(&args, &g_cfg, kOptSpec, ProcessArg) != 0) return 1;
  if (g_cfg.source.empty()) {
    std::fprintf(stderr, "usage: faultfs [-f] [-o ctl=FILE] SOURCE MOUNTPOINT [FUSE options]\n");
    return 1;
  }
  g_root = open(g_cfg.source.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (g_root < 0) {
    std::fprintf(stderr, "faultfs: %s: %s\n", g_cfg.source.c_str(), std::strerror(errno));
    return 1;
  }
  if (g_cfg.ctl != nullptr) {
    // Relative to where we started: fuse_main may chdir("/") when it daemonizes.
    if (char* abs = realpath(g_cfg.ctl, nullptr)) {
      free(g_cfg.ctl);
      g_cfg.ctl = abs;
    } else if (g_cfg.ctl[0] != '/') {
      std::fprintf(stderr, "faultfs: ctl=%s: give an absolute path when the file does not exist yet\n",
                   g_cfg.ctl);
      return 1;
    }
  }
  (void)Current();  // report the faults in force at start
  const fuse_operations ops = MakeOperations();
  int r = fuse_main(args.argc, args.argv, &ops, nullptr);
  fuse_opt_free_args(&args);
  return r;
}
