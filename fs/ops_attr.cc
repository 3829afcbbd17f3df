// Lookup, attributes, statfs, and the operations table.
#include <type_traits>

#include <spdlog/spdlog.h>

#include "fs/log.h"
#include "fs/ops.h"

namespace nasfs::ops {

void ReplyNewEntry(fuse_req_t req, fuse_ino_t parent, const char* name, const struct stat& st) {
  Nasfs& fs = Fs(req);
  fuse_ino_t ino = fs.inodes().Lookup(parent, name);
  if (!ino) {
    fuse_reply_err(req, ENOENT);
    return;
  }
  fuse_entry_param e;
  FillEntry(fs, ino, st, &e);
  fuse_reply_entry(req, &e);
}

void Init(void* userdata, fuse_conn_info* conn) {
  (void)userdata;
  // Mirrored writes must reach both NAS before the reply: no writeback cache.
  conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
  // OPEN answers ENOSYS (no-open), so it cannot truncate: without this the
  // kernel would leave O_TRUNC to an OPEN that never comes, and
  // open(O_TRUNC) would silently keep the old bytes. Cleared, the kernel
  // truncates through SETATTR, which the mirror applies to both NAS.
  conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
  // Drop cached pages when a refreshed mtime or size shows the file changed
  // (another web server wrote it).
  if (conn->capable & FUSE_CAP_AUTO_INVAL_DATA) conn->want |= FUSE_CAP_AUTO_INVAL_DATA;
  if (conn->capable & FUSE_CAP_READDIRPLUS) conn->want |= FUSE_CAP_READDIRPLUS;
  if (conn->capable & FUSE_CAP_READDIRPLUS_AUTO) conn->want |= FUSE_CAP_READDIRPLUS_AUTO;
  if (conn->capable & FUSE_CAP_PARALLEL_DIROPS) conn->want |= FUSE_CAP_PARALLEL_DIROPS;
  // Locks stay local to this web server: a NAS lock would not be seen by the
  // other server's nasfs either, so pretending otherwise would mislead.
  conn->want &= ~(FUSE_CAP_POSIX_LOCKS | FUSE_CAP_FLOCK_LOCKS);
  conn->max_write = 1 << 20;
  conn->max_readahead = 1 << 20;
  if (!(conn->capable & FUSE_CAP_NO_OPEN_SUPPORT))
    Logger("fuse")->warn("kernel lacks no-open support: every open costs a round trip");
}

int DoLookup(Nasfs& fs, fuse_ino_t parent, const char* name, struct stat* st, std::string* tried) {
  if (IsMetaName(parent, name)) return ENOENT;
  return OnResolvedPath(
      fs, [&](std::string* p) { return ChildPathOf(fs, parent, name, p); },
      [&](const std::string& p) {
        return fs.ReadInto<struct stat>([p](const Backend& b, struct stat* o) { return b.Stat(p, o); }, st);
      },
      tried);
}

void Lookup(fuse_req_t req, fuse_ino_t parent, const char* name) {
  Nasfs& fs = Fs(req);
  const uint64_t renames = fs.RenameSnapshot();
  struct stat st;
  std::string tried;
  int r = DoLookup(fs, parent, name, &st, &tried);
  if (r == ENOENT) {
    // A negative entry: the kernel caches the miss for cache_timeout.
    // Not when a rename through this mount began or was under way while
    // the lookup ran: the path it tried may be one the rename took away (a
    // directory above it moved), and a cached miss would then hide the
    // name under its new path for cache_timeout. The soak saw that twice,
    // each time a lookup racing a directory rename: a read 564 ms later,
    // and an open 150 ms later, answered ENOENT for a file both NAS held.
    // OnResolvedPath retries such a lookup once; this keeps whatever
    // window is left from being cached. An error reply leaves the kernel
    // a negative entry that is already stale, so the next access asks
    // again.
    const bool racing = fs.RenameRacing(renames);
    // SPDLOG_LEVEL=fuse=debug traces each miss.
    if (auto log = Logger("fuse"); log->should_log(spdlog::level::debug)) {
      auto p = fs.inodes().ChildPath(parent, name);
      log->debug("lookup '{}': no such entry on the {} (tried '{}'; renames finished {} at the start, {} now){}",
                 p ? ShownPath(*p) : "(parent gone)", fs.router().ReadFromName(), ShownPath(tried), renames,
                 fs.RenameSnapshot(), racing ? "; not cached: a rename ran meanwhile" : "");
    }
    if (racing) {
      fuse_reply_err(req, ENOENT);
      return;
    }
    fuse_entry_param e{};
    e.entry_timeout = fs.cache_timeout();
    fuse_reply_entry(req, &e);
    return;
  }
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  ReplyNewEntry(req, parent, name, st);
}

namespace {
void DoForget(Nasfs& fs, fuse_ino_t ino, uint64_t nlookup) {
  if (fs.inodes().Forget(ino, nlookup)) fs.DropOrphan(ino);
}
}  // namespace

void Forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup) {
  DoForget(Fs(req), ino, nlookup);
  fuse_reply_none(req);
}

void ForgetMulti(fuse_req_t req, size_t count, fuse_forget_data* forgets) {
  for (size_t i = 0; i < count; ++i) DoForget(Fs(req), forgets[i].ino, forgets[i].nlookup);
  fuse_reply_none(req);
}

int DoGetAttr(Nasfs& fs, fuse_ino_t ino, struct stat* st) {
  FileRef ref;
  if (int e = RefOf(fs, ino, &ref)) return e;
  int r = ReadRef(
      fs, ref, [](const Backend& b, const std::string& p, struct stat* o) { return b.Stat(p, o); },
      [](const Backend&, int fd, struct stat* o) { return fstat(fd, o) == 0 ? 0 : errno; }, st);
  if (r == 0) st->st_ino = ino;
  return r;
}

void GetAttr(fuse_req_t req, fuse_ino_t ino, fuse_file_info* fi) {
  (void)fi;
  Nasfs& fs = Fs(req);
  struct stat st;
  if (int r = DoGetAttr(fs, ino, &st)) {
    fuse_reply_err(req, r);
    return;
  }
  fuse_reply_attr(req, &st, AttrTimeout(fs, st));
}

int DoSetAttr(Nasfs& fs, fuse_ino_t ino, const struct stat& attr, int to_set, struct stat* st) {
  FileRef ref;
  if (int e = RefOf(fs, ino, &ref)) return e;
  timespec now = Mirror::Now();
  SetAttrArgs a;
  a.set_mode = to_set & FUSE_SET_ATTR_MODE;
  a.mode = attr.st_mode;
  a.set_uid = to_set & FUSE_SET_ATTR_UID;
  a.uid = attr.st_uid;
  a.set_gid = to_set & FUSE_SET_ATTR_GID;
  a.gid = attr.st_gid;
  a.set_size = to_set & FUSE_SET_ATTR_SIZE;
  a.size = attr.st_size;
  a.set_atime = to_set & (FUSE_SET_ATTR_ATIME | FUSE_SET_ATTR_ATIME_NOW);
  a.atime = (to_set & FUSE_SET_ATTR_ATIME_NOW) ? now : attr.st_atim;
  a.set_mtime = to_set & (FUSE_SET_ATTR_MTIME | FUSE_SET_ATTR_MTIME_NOW);
  a.mtime = (to_set & FUSE_SET_ATTR_MTIME_NOW) ? now : attr.st_mtim;
  if (a.set_size && !a.set_mtime) {
    // Each NAS would stamp its own clock on the truncate; stamp ours on both.
    a.set_mtime = true;
    a.mtime = now;
  }
  auto out = std::make_shared<StatPair>();
  int r = MutateRef(
      fs, a.set_size ? Mutation::kTruncate : Mutation::kSetAttr, ref,
      [a, out](const Backend& b, const std::string& p) { return b.SetAttr(p, a, &out->st[RoleIndex(b)]); },
      [a, out](const Backend& b, int fd) { return Backend::SetAttrFd(fd, a, &out->st[RoleIndex(b)]); });
  if (r == 0) {
    *st = out->Result();
    st->st_ino = ino;
  }
  return r;
}

void SetAttr(fuse_req_t req, fuse_ino_t ino, struct stat* attr, int to_set, fuse_file_info* fi) {
  (void)fi;
  Nasfs& fs = Fs(req);
  struct stat st;
  if (int r = DoSetAttr(fs, ino, *attr, to_set, &st)) {
    fuse_reply_err(req, r);
    return;
  }
  fuse_reply_attr(req, &st, AttrTimeout(fs, st));
}

void StatFs(fuse_req_t req, fuse_ino_t ino) {
  (void)ino;
  struct statvfs out {};
  int r = Fs(req).ReadInto<struct statvfs>([](const Backend& b, struct statvfs* o) { return b.StatFs(o); }, &out);
  if (r) {
    fuse_reply_err(req, r);
    return;
  }
  fuse_reply_statfs(req, &out);
}

}  // namespace nasfs::ops

namespace nasfs {

namespace ops {
namespace {

// An exception out of a handler would cross libfuse's C frames and end the
// daemon: every handler runs inside CatchAll, and one that threw is answered
// EIO (a handler's fuse_reply_* is its last call, so none was sent yet; see
// fs/ops.h). forget takes no answer but fuse_reply_none.
void AnswerAfterException(fuse_req_t req, const ExceptionText& what, bool forget) {
  ExceptionText ignored;
  (void)CatchAll(
      [&] {
        Fs(req).CountInternalError();
        Logger("fuse")->error("a request failed with an internal error: {}", what.c_str());
      },
      &ignored);
  if (forget) fuse_reply_none(req);
  else fuse_reply_err(req, EIO);
}

// forget and forget_multi are answered with fuse_reply_none.
template <auto Handler>
constexpr bool IsForget() {
  if constexpr (std::is_same_v<decltype(Handler), decltype(&Forget)>) return Handler == &Forget;
  else if constexpr (std::is_same_v<decltype(Handler), decltype(&ForgetMulti)>) return Handler == &ForgetMulti;
  else return false;
}

template <auto Handler>
struct Guarded;
template <typename... Args, void (*Handler)(fuse_req_t, Args...)>
struct Guarded<Handler> {
  static void Call(fuse_req_t req, Args... args) {
    ExceptionText what;
    if (!CatchAll([&] { Handler(req, args...); }, &what))
      AnswerAfterException(req, what, IsForget<Handler>());
  }
};

void GuardedInit(void* userdata, fuse_conn_info* conn) {
  ExceptionText what;
  if (!CatchAll([&] { Init(userdata, conn); }, &what))
    Logger("fuse")->error("init failed with an internal error: {}", what.c_str());
}

}  // namespace
}  // namespace ops

const fuse_lowlevel_ops& Operations() {
  static const fuse_lowlevel_ops ops = [] {
    using ops::Guarded;
    fuse_lowlevel_ops o{};
    o.init = ops::GuardedInit;
    o.lookup = Guarded<&ops::Lookup>::Call;
    o.forget = Guarded<&ops::Forget>::Call;
    o.forget_multi = Guarded<&ops::ForgetMulti>::Call;
    o.getattr = Guarded<&ops::GetAttr>::Call;
    o.setattr = Guarded<&ops::SetAttr>::Call;
    o.statfs = Guarded<&ops::StatFs>::Call;
    o.readlink = Guarded<&ops::ReadLink>::Call;
    o.mknod = Guarded<&ops::Mknod>::Call;
    o.mkdir = Guarded<&ops::Mkdir>::Call;
    o.symlink = Guarded<&ops::Symlink>::Call;
    o.link = Guarded<&ops::Link>::Call;
    o.unlink = Guarded<&ops::Unlink>::Call;
    o.rmdir = Guarded<&ops::Rmdir>::Call;
    o.rename = Guarded<&ops::Rename>::Call;
    o.opendir = Guarded<&ops::OpenDir>::Call;
    o.readdir = Guarded<&ops::ReadDir>::Call;
    o.readdirplus = Guarded<&ops::ReadDirPlus>::Call;
    o.releasedir = Guarded<&ops::ReleaseDir>::Call;
    o.fsyncdir = Guarded<&ops::FsyncDir>::Call;
    o.open = Guarded<&ops::Open>::Call;
    o.create = Guarded<&ops::Create>::Call;
    o.read = Guarded<&ops::Read>::Call;
    o.write = Guarded<&ops::Write>::Call;
    o.flush = Guarded<&ops::Flush>::Call;
    o.release = Guarded<&ops::Release>::Call;
    o.fsync = Guarded<&ops::Fsync>::Call;
    o.fallocate = Guarded<&ops::Fallocate>::Call;
    o.setxattr = Guarded<&ops::SetXattr>::Call;
    o.getxattr = Guarded<&ops::GetXattr>::Call;
    o.listxattr = Guarded<&ops::ListXattr>::Call;
    o.removexattr = Guarded<&ops::RemoveXattr>::Call;
    return o;
  }();
  return ops;
}

}  // namespace nasfs
