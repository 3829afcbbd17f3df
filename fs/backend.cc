#include "fs/backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include <fmt/format.h>
#include <xxhash.h>
#include <spdlog/spdlog.h>

#include "fs/log.h"

namespace nasfs {

const char* RoleName(Role r) { return r == Role::kMaster ? "master" : "backup"; }

const char* StateName(BackendState s) {
  switch (s) {
    case BackendState::kHealthy: return "healthy";
    case BackendState::kSyncing: return "syncing";
    case BackendState::kDown: return "down";
    case BackendState::kRecovering: return "recovering";
  }
  return "unknown";
}

std::string ParentOf(const std::string& path) {
  auto slash = path.rfind('/');
  return slash == std::string::npos ? "" : path.substr(0, slash);
}

bool IsBeneath(int fd, const struct stat& ancestor) {
  struct stat st;
  if (fstat(fd, &st) != 0) return false;
  UniqueFd cur;
  for (int level = 0; level < 4096; ++level) {
    if (st.st_dev == ancestor.st_dev && st.st_ino == ancestor.st_ino) return true;
    UniqueFd up(openat(cur ? cur.get() : fd, "..", O_PATH | O_DIRECTORY | O_CLOEXEC));
    struct stat parent;
    if (!up || fstat(up.get(), &parent) != 0) return false;
    if (parent.st_dev == st.st_dev && parent.st_ino == st.st_ino) return false;  // "/": its own parent
    cur = std::move(up);
    st = parent;
  }
  return false;
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  return dir.empty() ? name : dir + "/" + name;
}

bool IsFaultErrno(int e) {
  switch (e) {
    case EIO: case ENOTCONN: case ESTALE: case ETIMEDOUT: case EHOSTDOWN: case EHOSTUNREACH:
    case ENODEV: case ENXIO: case ESHUTDOWN: case ECONNABORTED: case ECONNRESET: case ENETDOWN:
    case ENETUNREACH: case ECANCELED:
      return true;
    default:
      return false;
  }
}

std::string NowIso8601() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm;
  gmtime_r(&ts.tv_sec, &tm);
  char buf[64];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:03d}Z", buf, ts.tv_nsec / 1000000);
}

namespace {

std::string ProcPath(int fd) { return fmt::format("/proc/self/fd/{}", fd); }

int Errno() { return errno ? errno : EIO; }

// Full-length pwrite: a short write is retried, never reported as success.
int WriteAll(int fd, const char* p, size_t n, off_t off) {
  while (n > 0) {
    ssize_t w = pwrite(fd, p, n, off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return Errno();
    }
    if (w == 0) return EIO;
    p += w;
    n -= static_cast<size_t>(w);
    off += w;
  }
  return 0;
}

// Sets dirfd/name's mtime to t and keeps its atime, sending both fields:
// some FUSE servers (those built on libfuse 2, Debian's bindfs among them)
// answer a setattr that carries only the mtime (atime UTIME_OMIT) with
// success and drop it, which would leave the two NAS with different mtimes.
int StampMtimeAt(int dirfd, const char* name, const timespec& t, int flags) {
  struct stat st;
  if (fstatat(dirfd, name, &st, flags) != 0) return Errno();
  const timespec times[2] = {st.st_atim, t};
  return utimensat(dirfd, name, times, flags) == 0 ? 0 : Errno();
}

int StampMtimeFd(int fd, const timespec& t) {
  struct stat st;
  if (fstat(fd, &st) != 0) return Errno();
  const timespec times[2] = {st.st_atim, t};
  return futimens(fd, times) == 0 ? 0 : Errno();
}

// The times a setattr asks for, with the ones it leaves alone filled in from
// `cur`, for the same reason.
void ExplicitTimes(const SetAttrArgs& a, const struct stat& cur, timespec out[2]) {
  out[0] = a.set_atime ? a.atime : cur.st_atim;
  out[1] = a.set_mtime ? a.mtime : cur.st_mtim;
}

}  // namespace

Backend::Backend(Role role, std::string path, int threads, std::chrono::milliseconds io_timeout)
    : role_(role),
      path_(std::move(path)),
      io_timeout_(io_timeout),
      pool_(RoleName(role), threads, /*max_queue=*/static_cast<size_t>(threads) * 64),
      state_since_(NowIso8601()) {}

Result<void> Backend::OpenRoot() {
  auto fd = OpenPathAfresh();
  if (!fd) return Err(fd.error());
  SwapRoot(std::move(*fd));
  return {};
}

Result<UniqueFd> Backend::OpenPathAfresh() const {
  int fd = open(path_.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return ErrFromErrno();
  return UniqueFd(fd);
}

std::shared_ptr<const UniqueFd> Backend::Root() const {
  MutexLock lk(&root_mu_);
  return root_ ? root_ : std::make_shared<const UniqueFd>();
}

void Backend::SwapRoot(UniqueFd fd) {
  auto next = std::make_shared<const UniqueFd>(std::move(fd));
  {
    MutexLock lk(&root_mu_);
    root_ = std::move(next);
  }
  dirs_.Clear();  // (and an fd opened beneath the old root is never handed out: DirCache)
}

void Backend::SetState(BackendState s, const std::string& why) {
  BackendState old = state_.exchange(s, std::memory_order_acq_rel);
  if (old != s) StateChanged(old, s, why);
}

bool Backend::SetStateIf(BackendState from, BackendState to, const std::string& why) {
  if (!state_.compare_exchange_strong(from, to, std::memory_order_acq_rel)) return false;
  if (from != to) StateChanged(from, to, why);
  return true;
}

void Backend::StateChanged(BackendState old, BackendState s, const std::string& why) {
  state_changes_.fetch_add(1, std::memory_order_relaxed);
  {
    MutexLock lk(&status_mu_);
    state_since_ = NowIso8601();
  }
  auto log = Logger("health");
  if (s == BackendState::kDown)
    log->warn("{} {}: {} -> down ({})", name(), path_, StateName(old), why);
  else
    log->info("{} {}: {} -> {} ({})", name(), path_, StateName(old), StateName(s), why);
}

void Backend::SetLastError(const std::string& e) {
  MutexLock lk(&status_mu_);
  last_error_ = fmt::format("{} at {}", e, NowIso8601());
}

void Backend::RecordProbe(bool ok, double latency_ms) {
  if (ok) {
    probe_streak_.fetch_add(1, std::memory_order_relaxed);
  } else {
    probe_streak_.store(0, std::memory_order_relaxed);
    probes_failed_.fetch_add(1, std::memory_order_relaxed);
  }
  MutexLock lk(&status_mu_);
  probe_latency_ms_ = latency_ms;
}

namespace {
thread_local Clock::time_point t_step_deadline = Clock::time_point::max();
}  // namespace

StepDeadline::StepDeadline(std::chrono::milliseconds budget) : saved_(t_step_deadline) {
  t_step_deadline = std::min(saved_, Clock::now() + budget);
}
StepDeadline::~StepDeadline() { t_step_deadline = saved_; }
Clock::time_point StepDeadline::Current() { return t_step_deadline; }
StepDeadline::Lift::Lift() : saved_(t_step_deadline) { t_step_deadline = Clock::time_point::max(); }
StepDeadline::Lift::~Lift() { t_step_deadline = saved_; }

int Backend::Run(WorkerPool::Fn fn) {
  auto deadline = std::min(Deadline(), StepDeadline::Current());
  int r = Submit(std::move(fn), deadline)->Wait(deadline);
  Account(r);
  return r;
}

int Backend::RunStat(const std::string& rel, struct stat* out) {
  auto st = std::make_shared<struct stat>();
  int r = Run([self = this, rel, st] { return self->Stat(rel, st.get()); });
  if (r == 0) *out = *st;
  return r;
}

std::shared_ptr<Call> Backend::Submit(WorkerPool::Fn fn, Clock::time_point deadline) {
  // ESTALE says a handle no longer names anything: on NFS, a file another
  // client removed (one name, not the NAS), or the whole export gone (the
  // NAS). Only a root that answers tells them apart.
  return pool_.Submit(
      [fn = std::move(fn), self = this] {
        int r = fn();
        if (r == ESTALE && self->RootAnswers()) r = ENOENT;
        return r;
      },
      deadline);
}

bool Backend::RootAnswers() const {
  auto root = Root();
  struct stat st;
  return root->valid() && fstat(root->get(), &st) == 0;
}

void Backend::Account(int r) {
  ops_.fetch_add(1, std::memory_order_relaxed);
  if (r == ETIMEDOUT) timeouts_.fetch_add(1, std::memory_order_relaxed);
  if (IsFaultErrno(r)) {
    errors_.fetch_add(1, std::memory_order_relaxed);
    MutexLock lk(&status_mu_);
    last_error_ = fmt::format("{} at {}", std::strerror(r), NowIso8601());
  }
}

nlohmann::json Backend::Status() const {
  nlohmann::json j;
  j["role"] = name();
  j["path"] = path_;
  j["state"] = StateName(state());
  {
    MutexLock lk(&status_mu_);
    j["state_since"] = state_since_;
    j["last_error"] = last_error_.empty() ? nlohmann::json(nullptr) : nlohmann::json(last_error_);
    j["probe_latency_ms"] = probe_latency_ms_ < 0 ? nlohmann::json(nullptr) : nlohmann::json(probe_latency_ms_);
    j["missed"] = {{"count", 0}, {"full_copy_needed", needs_full_sync_.load()}};  // count: the journal's
  }
  j["state_changes"] = state_changes_.load();
  j["probes_failed"] = probes_failed_.load();
  j["ops"] = ops_.load();
  j["errors"] = errors_.load();
  j["timeouts"] = timeouts_.load();
  j["in_flight"] = pool_.InFlight();
  j["dir_cache"] = {{"entries", dirs_.size()}, {"hits", dirs_.hits()}, {"misses", dirs_.misses()}};
  return j;
}

Result<UniqueFd> Backend::OpenBeneath(const std::string& rel, int flags, mode_t mode) const {
  auto root = Root();
  if (!root->valid()) return Err(ENOTCONN);
  if (rel.empty() || !DirCache::InScope() || !dirs_.enabled()) return OpenBeneathAt(root->get(), rel, flags, mode);
  if (flags == (O_PATH | O_DIRECTORY)) {
    // A directory to act in (OpenParent): its cached fd, duplicated.
    auto dir = DirFd(root, rel);
    if (!dir) return Err(dir.error());
    int fd = fcntl((*dir)->get(), F_DUPFD_CLOEXEC, 0);
    if (fd < 0) return ErrFromErrno();
    return UniqueFd(fd);
  }
  const auto slash = rel.rfind('/');
  if (slash == std::string::npos) return OpenBeneathAt(root->get(), rel, flags, mode);
  // The last component beneath its parent's fd. An fd gone stale (the
  // directory removed on an NFS server) is dropped and the path resolved
  // from the root instead.
  const std::string dir = rel.substr(0, slash);
  if (auto parent = DirFd(root, dir)) {
    auto r = OpenBeneathAt((*parent)->get(), rel.substr(slash + 1), flags, mode);
    if (r || r.error() != ESTALE) return r;
    dirs_.Forget(dir);
  }
  return OpenBeneathAt(root->get(), rel, flags, mode);
}

Result<DirCache::Fd> Backend::DirFd(const DirCache::Fd& root, const std::string& dir) const {
  if (auto fd = dirs_.Find(root, dir)) return fd;
  // A deep path is usually met level by level (the kernel looks up each
  // directory in turn): the parent's fd is then cached, one lookup away.
  const auto slash = dir.rfind('/');
  Result<UniqueFd> opened = Err(ENOENT);
  DirCache::Fd parent = slash == std::string::npos ? nullptr : dirs_.Find(root, dir.substr(0, slash));
  if (parent) opened = OpenBeneathAt(parent->get(), dir.substr(slash + 1), O_PATH | O_DIRECTORY);
  if (!parent || (!opened && opened.error() == ESTALE)) opened = OpenBeneathAt(root->get(), dir, O_PATH | O_DIRECTORY);
  if (!opened) return Err(opened.error());
  auto fd = std::make_shared<const UniqueFd>(std::move(*opened));
  dirs_.Put(root, dir, fd);
  return fd;
}

namespace {

// One confined openat2 of rel beneath dirfd, as asked: no check of what is
// opened (see Backend::OpenBeneathAt).
Result<UniqueFd> OpenRawBeneathAt(int dirfd, const std::string& rel, int flags, mode_t mode) {
  // A path through the mount can be any length; one openat2 takes at most
  // PATH_MAX. Longer paths are walked a chunk of whole components at a
  // time, each chunk confined beneath the directory the last one opened, so
  // the walk is as confined as a single call.
  constexpr size_t kChunk = 2048;
  if (rel.size() >= PATH_MAX - 1) {
    size_t cut = rel.rfind('/', kChunk);
    if (cut == std::string::npos || cut == 0) return Err(ENAMETOOLONG);
    auto dir = OpenRawBeneathAt(dirfd, rel.substr(0, cut), O_PATH | O_DIRECTORY, 0);
    if (!dir) return dir;
    return OpenRawBeneathAt(dir->get(), rel.substr(cut + 1), flags, mode);
  }
  struct open_how how {};
  how.flags = static_cast<uint64_t>(flags | O_CLOEXEC);
  how.mode = (flags & (O_CREAT | O_TMPFILE)) ? mode : 0;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV;
  const char* p = rel.empty() ? "." : rel.c_str();
  for (int attempt = 0;; ++attempt) {
    long fd = syscall(SYS_openat2, dirfd, p, &how, sizeof how);
    if (fd >= 0) return UniqueFd(static_cast<int>(fd));
    // EAGAIN: a concurrent rename raced the confined walk; the kernel asks
    // us to retry rather than risk an escape.
    if ((errno == EAGAIN || errno == EINTR) && attempt < 8) continue;
    return ErrFromErrno();
  }
}

// Opens, with `flags` (the access mode, O_TRUNC, O_APPEND, O_NOATIME), the
// very inode the O_PATH fd `path_fd` names, if it is a regular file.
Result<UniqueFd> ReopenRegular(int path_fd, int flags) {
  struct stat st;
  if (fstat(path_fd, &st) != 0) return ErrFromErrno();
  if (!S_ISREG(st.st_mode)) return Err(S_ISDIR(st.st_mode) ? EISDIR : S_ISLNK(st.st_mode) ? ELOOP : EINVAL);
  // Through /proc: the magic link is the inode itself, never a name that
  // could have been swapped meanwhile. (O_NOFOLLOW would refuse the link.)
  int fd = open(ProcPath(path_fd).c_str(),
                (flags & ~(O_CREAT | O_EXCL | O_NOFOLLOW | O_DIRECTORY | O_PATH)) | O_CLOEXEC);
  if (fd < 0) return ErrFromErrno();
  return UniqueFd(fd);
}

}  // namespace

Result<UniqueFd> Backend::OpenBeneathAt(int dirfd, const std::string& rel, int flags, mode_t mode) {
  // O_PATH and directories are opened as asked: neither reads nor writes
  // data, and O_DIRECTORY fails on anything else before opening it.
  if (flags & (O_PATH | O_DIRECTORY)) return OpenRawBeneathAt(dirfd, rel, flags, mode);
  // Data: only regular files. Opening a FIFO blocks until a peer comes (a
  // worker stuck forever on a FIFO planted on a NAS), and opening a device
  // acts on this machine's device. So the name is looked up without
  // opening it, checked, and only then opened.
  // An exclusive create makes a new regular file or fails: nothing to check.
  if ((flags & O_CREAT) && (flags & O_EXCL)) return OpenRawBeneathAt(dirfd, rel, flags | O_NOFOLLOW, mode);
  for (int attempt = 0; attempt < 8; ++attempt) {
    auto p = OpenRawBeneathAt(dirfd, rel, O_PATH | O_NOFOLLOW, 0);
    if (p) return ReopenRegular(p->get(), flags);
    if (p.error() != ENOENT || !(flags & O_CREAT)) return p;
    // Missing: created exclusively, so nothing else can be opened in its place.
    auto c = OpenRawBeneathAt(dirfd, rel, flags | O_EXCL | O_NOFOLLOW, mode);
    if (c || c.error() != EEXIST) return c;
    // Created by someone else meanwhile: look at it.
  }
  return Err(EAGAIN);
}

Result<UniqueFd> Backend::OpenParent(const std::string& rel, std::string* name) const {
  auto slash = rel.rfind('/');
  if (slash == std::string::npos) {
    *name = rel.empty() ? "." : rel;
    return OpenBeneath("", O_PATH | O_DIRECTORY);
  }
  *name = rel.substr(slash + 1);
  return OpenBeneath(rel.substr(0, slash), O_PATH | O_DIRECTORY);
}

int Backend::Stat(const std::string& rel, struct stat* st) const {
  auto fd = OpenBeneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  return fstat(fd->get(), st) == 0 ? 0 : Errno();
}

int Backend::ReadLink(const std::string& rel, std::string* target) const {
  auto fd = OpenBeneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  char buf[PATH_MAX + 1];
  ssize_t n = readlinkat(fd->get(), "", buf, sizeof buf);
  if (n < 0) return Errno();
  if (n > PATH_MAX) return ENAMETOOLONG;
  target->assign(buf, static_cast<size_t>(n));
  return 0;
}

int Backend::ReadDir(const std::string& rel, std::vector<DirEntry>* out) const {
  auto fd = OpenBeneath(rel, O_RDONLY | O_DIRECTORY | O_NOATIME);
  if (!fd) return fd.error();
  DIR* d = fdopendir(fd->get());
  if (!d) return Errno();
  fd->release();
  out->clear();
  errno = 0;
  while (struct dirent* e = readdir(d)) {
    out->push_back(DirEntry{e->d_name, e->d_type});
    errno = 0;
  }
  int err = errno;
  closedir(d);
  return err;
}

int Backend::StatChildren(const std::string& rel, const std::vector<std::string>& names,
                          std::vector<struct stat>* out) const {
  auto fd = OpenBeneath(rel, O_PATH | O_DIRECTORY);
  if (!fd) return fd.error();
  out->assign(names.size(), {});
  for (size_t i = 0; i < names.size(); ++i)
    if (fstatat(fd->get(), names[i].c_str(), &(*out)[i], AT_SYMLINK_NOFOLLOW) != 0)
      (*out)[i].st_ino = 0;
  return 0;
}

int Backend::ReadFd(int fd, off_t off, size_t size, std::string* out) {
  out->resize(size);
  size_t got = 0;
  while (got < size) {
    ssize_t n = pread(fd, out->data() + got, size - got, off + static_cast<off_t>(got));
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno();
    }
    if (n == 0) break;  // end of file: the only short read
    got += static_cast<size_t>(n);
  }
  out->resize(got);
  return 0;
}

int Backend::WriteFd(int fd, off_t off, const std::string& data, const timespec& t) {
  if (int e = WriteAll(fd, data.data(), data.size(), off)) return e;
  return StampMtimeFd(fd, t);
}

int Backend::SetAttrFd(int fd, const SetAttrArgs& a, struct stat* st) {
  if ((a.set_uid || a.set_gid) &&
      fchown(fd, a.set_uid ? a.uid : static_cast<uid_t>(-1), a.set_gid ? a.gid : static_cast<gid_t>(-1)) != 0)
    return Errno();
  if (a.set_mode && fchmod(fd, a.mode & 07777) != 0) return Errno();
  if (a.set_size && ftruncate(fd, a.size) != 0) return Errno();
  if (a.set_atime || a.set_mtime) {
    struct stat cur;
    if (fstat(fd, &cur) != 0) return Errno();
    timespec times[2];
    ExplicitTimes(a, cur, times);
    if (futimens(fd, times) != 0) return Errno();
  }
  return fstat(fd, st) == 0 ? 0 : Errno();
}

UniqueFd Backend::OpenIfRegular(const std::string& rel) const {
  auto f = OpenBeneath(rel, O_RDWR | O_NOATIME);
  return f ? std::move(*f) : UniqueFd();
}

int Backend::Read(const std::string& rel, off_t off, size_t size, std::string* out) const {
  auto fd = OpenBeneath(rel, O_RDONLY | O_NOATIME);
  if (!fd) return fd.error();
  return ReadFd(fd->get(), off, size, out);
}

int Backend::Write(const std::string& rel, off_t off, const std::string& data,
                   const timespec& t) const {
  auto fd = OpenBeneath(rel, O_WRONLY);
  if (!fd) return fd.error();
  return WriteFd(fd->get(), off, data, t);
}

// Gives a new entry its owner, puts back the set-id bits chown cleared,
// stamps t on it and its parent, and stats it. `fd` is the entry itself: the
// fd the create returned, or one opened on the new name right after (O_PATH
// with `path_only`, for what must not be opened: devices, FIFOs, symlinks).
// Every call acts on that fd, never on the name again: a symlink renamed over
// the new name on the NAS meanwhile must not turn a chmod of ours (as root)
// into a chmod of whatever it points to.
int Backend::FinishNew(int pfd, const std::string& name, int fd, bool path_only, const Caller& who, mode_t mode,
                       const timespec& t, struct stat* st) const {
  struct stat cur;
  if (fstat(fd, &cur) != 0) return Errno();
  // Not what we made (another type under the name by the time we opened it).
  if ((cur.st_mode & S_IFMT) != (mode & S_IFMT)) return EIO;
  // The daemon creates as root:root; a root caller's entry is already
  // right (and keeps a set-group-ID directory's group), so skip the calls.
  if (who.uid != 0 || who.gid != 0) {
    // Something an unprivileged user put there in our place is not given
    // to the caller: only what we created is ours (root's) to hand over.
    if (cur.st_uid != geteuid()) return EIO;
    struct stat parent;
    if (fstat(pfd, &parent) != 0) return Errno();
    // In a set-group-ID directory the new entry already has the directory's group.
    gid_t gid = (parent.st_mode & S_ISGID) ? static_cast<gid_t>(-1) : who.gid;
    if (fchownat(fd, "", who.uid, gid, AT_EMPTY_PATH) != 0) return Errno();
    // chown cleared the set-id bits the mode asked for: put them back.
    if (S_ISREG(mode) && (mode & (S_ISUID | S_ISGID))) {
      int r = path_only ? chmod(ProcPath(fd).c_str(), mode & 07777) : fchmod(fd, mode & 07777);
      if (r != 0) return Errno();
    }
  }
  const timespec times[2] = {t, t};
  int r;
  if (S_ISLNK(cur.st_mode))
    // No call sets a symlink's times through an fd; by name, never followed,
    // the worst a swap can do is stamp the swapped-in link.
    r = utimensat(pfd, name.c_str(), times, AT_SYMLINK_NOFOLLOW);
  else if (path_only)
    r = utimensat(AT_FDCWD, ProcPath(fd).c_str(), times, 0);  // the inode itself, through /proc
  else
    r = futimens(fd, times);
  if (r != 0) return Errno();
  if (int e = StampMtimeAt(pfd, ".", t, 0)) return e;
  return fstat(fd, st) == 0 ? 0 : Errno();
}

int Backend::Create(const std::string& rel, int flags, mode_t mode, const Caller& who,
                    const timespec& t, struct stat* st) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  int fd = openat(pfd->get(), name.c_str(), O_CREAT | O_EXCL | O_WRONLY | O_NOFOLLOW | O_CLOEXEC,
                  mode & 07777);
  if (fd >= 0) {
    UniqueFd f(fd);
    return FinishNew(pfd->get(), name, f.get(), /*path_only=*/false, who, S_IFREG | mode, t, st);
  }
  if (errno != EEXIST || (flags & O_EXCL)) return Errno();
  // Another web server created it between our lookup and now: open it as
  // open(2) without O_EXCL would (a regular file only).
  auto f = OpenBeneathAt(pfd->get(), name, O_WRONLY);
  if (!f) return f.error();
  if (flags & O_TRUNC) {
    if (ftruncate(f->get(), 0) != 0) return Errno();
    if (int e = StampMtimeFd(f->get(), t)) return e;
  }
  return fstat(f->get(), st) == 0 ? 0 : Errno();
}

int Backend::Mknod(const std::string& rel, mode_t mode, dev_t rdev, const Caller& who,
                   const timespec& t, struct stat* st) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  if (mknodat(pfd->get(), name.c_str(), mode, rdev) != 0) return Errno();
  UniqueFd f(openat(pfd->get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!f) return Errno();
  return FinishNew(pfd->get(), name, f.get(), /*path_only=*/true, who, mode, t, st);
}

int Backend::Mkdir(const std::string& rel, mode_t mode, const Caller& who, const timespec& t,
                   struct stat* st) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  if (mkdirat(pfd->get(), name.c_str(), mode & 07777) != 0) return Errno();
  UniqueFd f(openat(pfd->get(), name.c_str(), O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC));
  if (!f) return Errno();
  return FinishNew(pfd->get(), name, f.get(), /*path_only=*/false, who, S_IFDIR | mode, t, st);
}

int Backend::Symlink(const std::string& target, const std::string& rel, const Caller& who,
                     const timespec& t, struct stat* st) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  if (symlinkat(target.c_str(), pfd->get(), name.c_str()) != 0) return Errno();
  UniqueFd f(openat(pfd->get(), name.c_str(), O_PATH | O_NOFOLLOW | O_CLOEXEC));
  if (!f) return Errno();
  return FinishNew(pfd->get(), name, f.get(), /*path_only=*/true, who, S_IFLNK | 0777, t, st);
}

int Backend::Link(const std::string& old_rel, const std::string& new_rel, const timespec& t,
                  struct stat* st) const {
  auto ofd = OpenBeneath(old_rel, O_PATH | O_NOFOLLOW);
  if (!ofd) return ofd.error();
  std::string name;
  auto pfd = OpenParent(new_rel, &name);
  if (!pfd) return pfd.error();
  if (linkat(ofd->get(), "", pfd->get(), name.c_str(), AT_EMPTY_PATH) != 0) return Errno();
  if (int e = StampMtimeAt(pfd->get(), ".", t, 0)) return e;
  return fstat(ofd->get(), st) == 0 ? 0 : Errno();
}

int Backend::TouchParent(const std::string& rel, const timespec& t) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  return StampMtimeAt(pfd->get(), ".", t, 0);
}

int Backend::Unlink(const std::string& rel, const timespec& t) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  if (unlinkat(pfd->get(), name.c_str(), 0) != 0) return Errno();
  return StampMtimeAt(pfd->get(), ".", t, 0);
}

int Backend::Rmdir(const std::string& rel, const timespec& t) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  if (unlinkat(pfd->get(), name.c_str(), AT_REMOVEDIR) != 0) return Errno();
  dirs_.Forget(rel);
  return StampMtimeAt(pfd->get(), ".", t, 0);
}

int Backend::SyncParentDir(const std::string& rel) const {
  auto dir = OpenBeneath(ParentOf(rel), O_RDONLY | O_DIRECTORY);
  if (!dir) return dir.error();
  return fsync(dir->get()) == 0 ? 0 : errno;
}

int Backend::ReplaceFile(const std::string& rel, const std::string& content) const {
  char host[64] = {};
  gethostname(host, sizeof host - 1);
  std::string tmp = fmt::format("{}.{}.{}.tmp", rel, host, getpid());
  auto f = OpenBeneath(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (!f) return f.error();
  if (int e = WriteAll(f->get(), content.data(), content.size(), 0)) return e;
  if (fsync(f->get()) != 0) return errno;
  std::string tname, name;
  auto tp = OpenParent(tmp, &tname);
  if (!tp) return tp.error();
  auto np = OpenParent(rel, &name);
  if (!np) return np.error();
  if (renameat(tp->get(), tname.c_str(), np->get(), name.c_str()) != 0) return errno;
  return SyncParentDir(rel);
}

int RenameAt(int olddirfd, const char* oldname, int newdirfd, const char* newname, unsigned flags) {
  if (renameat2(olddirfd, oldname, newdirfd, newname, flags) == 0) return 0;
  int e = errno;
  // NFS, and FUSE servers built on libfuse 2 (bindfs), refuse renameat2's
  // flags with EINVAL. RENAME_NOREPLACE is then checked by hand: only
  // another client creating the name in between can defeat it.
  if ((e != EINVAL && e != ENOSYS) || flags != RENAME_NOREPLACE) return e;
  struct stat st;
  if (fstatat(newdirfd, newname, &st, AT_SYMLINK_NOFOLLOW) == 0) return EEXIST;
  if (errno != ENOENT) return errno;
  return renameat(olddirfd, oldname, newdirfd, newname) == 0 ? 0 : errno;
}

int Backend::Rename(const std::string& old_rel, const std::string& new_rel, unsigned flags,
                    const timespec& t) const {
  std::string oname, nname;
  auto opfd = OpenParent(old_rel, &oname);
  if (!opfd) return opfd.error();
  auto npfd = OpenParent(new_rel, &nname);
  if (!npfd) return npfd.error();
  if (int e = RenameAt(opfd->get(), oname.c_str(), npfd->get(), nname.c_str(), flags)) return e;
  // What was at either name (an exchange moves both) is elsewhere now.
  dirs_.Forget(old_rel);
  dirs_.Forget(new_rel);
  if (int e = StampMtimeAt(opfd->get(), ".", t, 0)) return e;
  return StampMtimeAt(npfd->get(), ".", t, 0);
}

int Backend::SetAttr(const std::string& rel, const SetAttrArgs& a, struct stat* st) const {
  auto fd = OpenBeneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  struct stat cur;
  if (fstat(fd->get(), &cur) != 0) return Errno();
  bool is_link = S_ISLNK(cur.st_mode);
  // chown before chmod: chown clears set-id bits, an explicit mode wins.
  if ((a.set_uid || a.set_gid) &&
      fchownat(fd->get(), "", a.set_uid ? a.uid : static_cast<uid_t>(-1),
               a.set_gid ? a.gid : static_cast<gid_t>(-1), AT_EMPTY_PATH) != 0)
    return Errno();
  // chmod and truncate through the O_PATH fd's /proc link: it names exactly
  // the inode we resolved beneath the root, never a path that could be
  // swapped for a symlink meanwhile.
  if (a.set_mode) {
    if (is_link) return EOPNOTSUPP;
    if (chmod(ProcPath(fd->get()).c_str(), a.mode & 07777) != 0) return Errno();
  }
  if (a.set_size) {
    if (!S_ISREG(cur.st_mode)) return S_ISDIR(cur.st_mode) ? EISDIR : EINVAL;
    if (truncate(ProcPath(fd->get()).c_str(), a.size) != 0) return Errno();
  }
  if (a.set_atime || a.set_mtime) {
    timespec times[2];
    ExplicitTimes(a, cur, times);
    if (!is_link) {
      if (utimensat(AT_FDCWD, ProcPath(fd->get()).c_str(), times, 0) != 0) return Errno();
    } else {
      // A symlink's times can only be set by name; never followed, the worst
      // a swap can do is stamp the swapped-in entry.
      std::string name;
      auto pfd = OpenParent(rel, &name);
      if (!pfd) return pfd.error();
      if (utimensat(pfd->get(), name.c_str(), times, AT_SYMLINK_NOFOLLOW) != 0) return Errno();
    }
  }
  return fstat(fd->get(), st) == 0 ? 0 : Errno();
}

namespace {

// Removes dirfd/name recursively; name is one component, never followed.
int RemoveAt(int dirfd, const char* name) {
  if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT) return 0;
  if (errno != EISDIR) return Errno();
  int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0) return Errno();
  DIR* d = fdopendir(fd);
  if (!d) {
    int e = Errno();
    close(fd);
    return e;
  }
  int err = 0;
  while (struct dirent* e = readdir(d)) {
    if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
    if ((err = RemoveAt(::dirfd(d), e->d_name))) break;
  }
  closedir(d);
  if (err) return err;
  return unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT ? 0 : Errno();
}

}  // namespace

int Backend::RemoveTree(const std::string& rel) const {
  std::string name;
  auto pfd = OpenParent(rel, &name);
  if (!pfd) return pfd.error();
  dirs_.Forget(rel);
  return RemoveAt(pfd->get(), name.c_str());
}

int Backend::Fallocate(const std::string& rel, int mode, off_t off, off_t len,
                       const timespec& t) const {
  auto fd = OpenBeneath(rel, O_WRONLY);
  if (!fd) return fd.error();
  if (fallocate(fd->get(), mode, off, len) != 0) return Errno();
  return StampMtimeFd(fd->get(), t);
}

int Backend::Fsync(const std::string& rel, bool datasync) const {
  // A directory (fsyncdir) or a regular file; nothing else is opened.
  auto fd = OpenBeneath(rel, O_RDONLY);
  if (!fd && fd.error() == EISDIR) fd = OpenBeneath(rel, O_RDONLY | O_DIRECTORY | O_NOFOLLOW);
  if (!fd) return fd.error();
  int r = datasync ? fdatasync(fd->get()) : fsync(fd->get());
  return r == 0 ? 0 : Errno();
}

int Backend::Hash(const std::string& rel, uint64_t* out) const {
  auto fd = OpenBeneath(rel, O_RDONLY | O_NOATIME);
  if (!fd) return fd.error();
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> st(XXH3_createState(), XXH3_freeState);
  XXH3_64bits_reset(st.get());
  std::string buf(1 << 20, '\0');
  for (;;) {
    ssize_t n = read(fd->get(), buf.data(), buf.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return Errno();
    }
    if (n == 0) break;
    XXH3_64bits_update(st.get(), buf.data(), static_cast<size_t>(n));
  }
  *out = XXH3_64bits_digest(st.get());
  return 0;
}

int Backend::StatFs(struct statvfs* out) const {
  return fstatvfs(Root()->get(), out) == 0 ? 0 : Errno();
}

int Backend::GetXattr(const std::string& rel, const std::string& name, size_t size,
                      std::string* out) const {
  auto fd = OpenBeneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  struct stat st;
  if (fstat(fd->get(), &st) != 0) return Errno();
  if (S_ISLNK(st.st_mode)) return ENODATA;
  out->resize(size);
  ssize_t n = getxattr(ProcPath(fd->get()).c_str(), name.c_str(), size ? out->data() : nullptr, size);
  if (n < 0) return Errno();
  out->resize(size ? static_cast<size_t>(n) : 0);
  if (!size) out->assign(std::to_string(n));  // the size query's answer
  return 0;
}

int Backend::ListXattr(const std::string& rel, size_t size, std::string* out) const {
  auto fd = OpenBeneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  struct stat st;
  if (fstat(fd->get(), &st) != 0) return Errno();
  if (S_ISLNK(st.st_mode)) {
    out->assign(size ? "" : "0");
    return 0;
  }
  out->resize(size);
  ssize_t n = listxattr(ProcPath(fd->get()).c_str(), size ? out->data() : nullptr, size);
  if (n < 0) return Errno();
  out->resize(size ? static_cast<size_t>(n) : 0);
  if (!size) out->assign(std::to_string(n));
  return 0;
}

int Backend::SetXattr(const std::string& rel, const std::string& name, const std::string& value,
                      int flags) const {
  auto fd = OpenBeneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  struct stat st;
  if (fstat(fd->get(), &st) != 0) return Errno();
  if (S_ISLNK(st.st_mode)) return EPERM;
  return setxattr(ProcPath(fd->get()).c_str(), name.c_str(), value.data(), value.size(), flags) == 0
             ? 0
             : Errno();
}

int Backend::RemoveXattr(const std::string& rel, const std::string& name) const {
  auto fd = OpenBeneath(rel, O_PATH | O_NOFOLLOW);
  if (!fd) return fd.error();
  struct stat st;
  if (fstat(fd->get(), &st) != 0) return Errno();
  if (S_ISLNK(st.st_mode)) return EPERM;
  return removexattr(ProcPath(fd->get()).c_str(), name.c_str()) == 0 ? 0 : Errno();
}

}  // namespace nasfs
