// One NAS: its root, its role, its state, and the syscalls nasfs makes on it.
//
// Confinement: every access starts from root_fd_, or (a read through the
// mount) from the fd of a directory opened that way a moment ago
// (DirCache: a deep path costs a lookup or two, not one per level), and
// resolves with openat2
// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS |
// RESOLVE_NO_XDEV. The kernel resolves symlinks seen through the mount
// itself, so the daemon never needs to follow one on a NAS: a path that meets
// a symlink in the middle (a directory swapped for a link on the NAS behind
// our back) fails with ELOOP instead of escaping. The last component is then
// acted on relative to its confined parent with *at() calls that do not
// follow it.
//
// The syscall methods (Stat, Write, Mkdir, ...) block; they are meant to run
// on this backend's WorkerPool, through Run(). They return 0 or a positive
// errno. Paths are relative to the NAS root, without a leading '/', and ""
// is the root itself.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "fs/common.h"
#include "fs/dir_cache.h"
#include "fs/worker_pool.h"
#include "util/mutex.h"

namespace nasfs {

enum class Role { kMaster, kBackup };
const char* RoleName(Role r);
// 0 for the master, 1 for the backup.
inline int RoleIndex(Role r) { return r == Role::kMaster ? 0 : 1; }
inline Role OtherRole(Role r) { return r == Role::kMaster ? Role::kBackup : Role::kMaster; }

enum class BackendState {
  kHealthy,     // serves reads and takes writes
  kSyncing,     // target of a background copy: takes covered writes, serves no reads
  kDown,        // failed in band or by probe: no reads, no writes; what it misses is recorded
  kRecovering,  // probes good again; its journaled changes are being replayed onto it;
                // takes the writes that touch nothing still pending, serves no reads
};
const char* StateName(BackendState s);

// nasfs's own directory at the top of each NAS, invisible through the mount.
inline constexpr const char* kMetaDir = ".nasfs";

struct DirEntry {
  std::string name;
  unsigned char type;  // DT_*
};

// What SETATTR changes, resolved (UTIME_NOW already replaced by the mirror's
// timestamp so both NAS get the same value).
struct SetAttrArgs {
  bool set_mode = false, set_uid = false, set_gid = false, set_size = false;
  bool set_atime = false, set_mtime = false;
  mode_t mode = 0;
  uid_t uid = static_cast<uid_t>(-1);
  gid_t gid = static_cast<gid_t>(-1);
  off_t size = 0;
  timespec atime{}, mtime{};
};

// Who asks: new files get this owner.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
};

// One deadline for every call a thread runs through Backend::Run in a
// scope. A step that holds Nasfs::sync_mu_ exclusively (one entry of a
// copy, a replay or a split brain's merge) makes several NAS calls, and
// every write through the mount waits for the step: one io_timeout for
// them all keeps that wait within the promise that no request waits on a
// sick NAS past io_timeout. With one each, a deep path on a NAS 20 ms late
// per lookup held the soak's writes 1.2 s. A step that misses it fails
// with ETIMEDOUT, as a call does, and is tried again later.
// Scopes nest (the earlier deadline holds); not shared across threads.
class StepDeadline {
 public:
  explicit StepDeadline(std::chrono::milliseconds budget);
  ~StepDeadline();
  StepDeadline(const StepDeadline&) = delete;
  StepDeadline& operator=(const StepDeadline&) = delete;
  // This thread's deadline; Clock::time_point::max() outside any scope.
  static Clock::time_point Current();

  // Lifts it for a scope: a file's bytes move chunk by chunk at the NAS's
  // pace, each chunk under its own io_timeout. A large file copied under
  // the lock (its copy before the lock was undone by a write) is slow,
  // not sick; cut off, it would fail the same way on every try.
  class Lift {
   public:
    Lift();
    ~Lift();
    Lift(const Lift&) = delete;
    Lift& operator=(const Lift&) = delete;

   private:
    Clock::time_point saved_;
  };

 private:
  Clock::time_point saved_;
};

// Holds a gate exclusively for one step (Nasfs::sync_mu_, for one entry of
// a copy, a replay or a merge), and gives the step's NAS calls one budget
// (StepDeadline), counted from when the lock is held.
class SCOPED_CAPABILITY StepLock {
 public:
  StepLock(SharedGate* mu, std::chrono::milliseconds budget) ACQUIRE(mu) : mu_(mu) {
    mu_->lock();
    deadline_.emplace(budget);
  }
  ~StepLock() RELEASE() {
    if (!held_) return;
    deadline_.reset();
    mu_->unlock();
  }
  StepLock(const StepLock&) = delete;
  StepLock& operator=(const StepLock&) = delete;

  void Unlock() RELEASE() {
    deadline_.reset();
    mu_->unlock();
    held_ = false;
  }

 private:
  SharedGate* const mu_;
  std::optional<StepDeadline> deadline_;
  bool held_ = true;
};

class Backend {
 public:
  Backend(Role role, std::string path, int threads, std::chrono::milliseconds io_timeout);
  Backend(const Backend&) = delete;
  Backend& operator=(const Backend&) = delete;

  // Starts the worker threads (after daemonizing).
  void Start() { pool_.Start(); }

  // Opens the root. Fails if it is not a directory.
  [[nodiscard]] Result<void> OpenRoot();
  // The root in use. A call holds its snapshot, so a remount picked up
  // meanwhile (SwapRoot) never closes an fd under it.
  std::shared_ptr<const UniqueFd> Root() const;
  // Opens path() afresh (blocking: run it on the pool). It may be a new
  // mount, or the bare directory of an unmounted NAS: the caller checks the
  // identity marker through CheckMarkerAt before SwapRoot.
  Result<UniqueFd> OpenPathAfresh() const;
  void SwapRoot(UniqueFd fd);
  // How long a directory's fd serves the calls beneath it (see DirCache);
  // 0 resolves every call from the root.
  void SetDirCacheTtl(std::chrono::milliseconds ttl) { dirs_.SetTtl(ttl); }
  const DirCache& dir_cache() const { return dirs_; }
  // Forgets the cached fds of rel and beneath it (rel moved or went by a
  // call that is not Rename, Rmdir or RemoveTree).
  void ForgetDirs(const std::string& rel) const { dirs_.Forget(rel); }

  Role role() const { return role_; }
  const char* name() const { return RoleName(role_); }
  const std::string& path() const { return path_; }

  BackendState state() const { return state_.load(std::memory_order_acquire); }
  void SetState(BackendState s, const std::string& why);
  // SetState only if the state is `from` now (atomically): whether it did.
  // Of two threads deciding the same change, one makes it.
  bool SetStateIf(BackendState from, BackendState to, const std::string& why);
  // Records the error that made a state change (shown as last_error).
  void SetLastError(const std::string& e);

  // What this NAS missed while out is in the journal (journal/journal.h).
  // This flag says it missed an unknown set (down at start-up with no
  // journal to tell, or a copy cut off): only a whole-tree copy brings it
  // back. The journal keeps it across restarts.
  void SetNeedsFullSync(bool v) { needs_full_sync_ = v; }
  bool needs_full_sync() const { return needs_full_sync_; }

  // Probe bookkeeping (health monitor thread).
  void RecordProbe(bool ok, double latency_ms);
  int probe_streak() const { return probe_streak_.load(); }

  // Runs fn on this NAS's workers under the io_timeout deadline (or the
  // thread's StepDeadline, if sooner), and counts it.
  int Run(WorkerPool::Fn fn);
  // Stat(rel) run that way: *out is filled only on success (a call that
  // misses its deadline writes into its own copy, never into *out).
  int RunStat(const std::string& rel, struct stat* out);
  std::shared_ptr<Call> Submit(WorkerPool::Fn fn, Clock::time_point deadline);
  Clock::time_point Deadline() const { return Clock::now() + io_timeout_; }
  std::chrono::milliseconds io_timeout() const { return io_timeout_; }
  // Calls queued or running on this NAS (some may be stuck on it).
  size_t InFlight() const { return pool_.InFlight(); }
  // Records the outcome of a call made through Submit.
  void Account(int result);
  // The root in use answers a stat (blocking: on the worker).
  bool RootAnswers() const;

  nlohmann::json Status() const;

  // ---- confined path resolution ----
  // Opens rel beneath the root, never through a symlink. With O_PATH or
  // O_DIRECTORY, as asked. Otherwise (data) only a regular file: a FIFO,
  // device, socket or symlink there is never opened (EINVAL; ELOOP for a
  // symlink, EISDIR for a directory), so nothing planted on a NAS can block a worker or reach this
  // machine's devices; with O_CREAT a missing file is created exclusively.
  [[nodiscard]] Result<UniqueFd> OpenBeneath(const std::string& rel, int flags, mode_t mode = 0) const;
  // The same beneath any directory fd (a root not yet swapped in).
  [[nodiscard]] static Result<UniqueFd> OpenBeneathAt(int dirfd, const std::string& rel, int flags,
                                                      mode_t mode = 0);
  // O_PATH fd of rel's parent directory; *name gets the last component.
  [[nodiscard]] Result<UniqueFd> OpenParent(const std::string& rel, std::string* name) const;

  // ---- syscalls (blocking; run them on the pool) ----
  int Stat(const std::string& rel, struct stat* st) const;
  int ReadLink(const std::string& rel, std::string* target) const;
  int ReadDir(const std::string& rel, std::vector<DirEntry>* out) const;
  // stats each of names inside directory rel; missing ones get st_ino 0.
  int StatChildren(const std::string& rel, const std::vector<std::string>& names,
                   std::vector<struct stat>* out) const;
  // Reads up to size bytes; short only at end of file.
  int Read(const std::string& rel, off_t off, size_t size, std::string* out) const;
  int Write(const std::string& rel, off_t off, const std::string& data, const timespec& t) const;
  int Create(const std::string& rel, int flags, mode_t mode, const Caller& who, const timespec& t,
             struct stat* st) const;
  int Mknod(const std::string& rel, mode_t mode, dev_t rdev, const Caller& who, const timespec& t,
            struct stat* st) const;
  int Mkdir(const std::string& rel, mode_t mode, const Caller& who, const timespec& t,
            struct stat* st) const;
  int Symlink(const std::string& target, const std::string& rel, const Caller& who,
              const timespec& t, struct stat* st) const;
  int Link(const std::string& old_rel, const std::string& new_rel, const timespec& t,
           struct stat* st) const;
  int Unlink(const std::string& rel, const timespec& t) const;
  int Rmdir(const std::string& rel, const timespec& t) const;
  int Rename(const std::string& old_rel, const std::string& new_rel, unsigned flags,
             const timespec& t) const;
  int SetAttr(const std::string& rel, const SetAttrArgs& a, struct stat* st) const;
  int Fallocate(const std::string& rel, int mode, off_t off, off_t len, const timespec& t) const;
  int Fsync(const std::string& rel, bool datasync) const;
  // xxh3-64 of the file's content.
  int Hash(const std::string& rel, uint64_t* out) const;
  int StatFs(struct statvfs* out) const;
  int GetXattr(const std::string& rel, const std::string& name, size_t size, std::string* out) const;
  int ListXattr(const std::string& rel, size_t size, std::string* out) const;
  int SetXattr(const std::string& rel, const std::string& name, const std::string& value,
               int flags) const;
  int RemoveXattr(const std::string& rel, const std::string& name) const;
  // For a name about to go away: an O_RDWR fd on it if it is a regular
  // file (never opens a device or fifo), else an invalid fd.
  UniqueFd OpenIfRegular(const std::string& rel) const;
  // The same calls on an fd (an orphan's), for files that have no name.
  static int ReadFd(int fd, off_t off, size_t size, std::string* out);
  static int WriteFd(int fd, off_t off, const std::string& data, const timespec& t);
  static int SetAttrFd(int fd, const SetAttrArgs& a, struct stat* st);

  // Removes rel and, for a directory, everything under it.
  int RemoveTree(const std::string& rel) const;

  // fsyncs the directory holding rel (after creating, renaming or removing
  // a name in it).
  int SyncParentDir(const std::string& rel) const;
  // Writes rel durably: a temp file named for this host and process (several
  // web servers may replace the same file at once), fsync, rename over rel,
  // fsync of its directory. For nasfs's own files under .nasfs.
  int ReplaceFile(const std::string& rel, const std::string& content) const;

  // Sets the mtime of rel's parent directory (namespace changes move it).
  int TouchParent(const std::string& rel, const timespec& t) const;

 private:
  int FinishNew(int parent_fd, const std::string& name, int fd, bool path_only, const Caller& who, mode_t mode,
                const timespec& t, struct stat* st) const;
  // An O_PATH fd of directory `dir` beneath root: cached, or opened beneath
  // its parent's cached fd, or beneath root (and then cached).
  Result<DirCache::Fd> DirFd(const DirCache::Fd& root, const std::string& dir) const;
  // Counts and logs a change of state made.
  void StateChanged(BackendState old, BackendState s, const std::string& why);

  const Role role_;
  const std::string path_;
  const std::chrono::milliseconds io_timeout_;
  mutable Mutex root_mu_;
  std::shared_ptr<const UniqueFd> root_ GUARDED_BY(root_mu_);
  WorkerPool pool_;
  mutable DirCache dirs_;

  std::atomic<BackendState> state_{BackendState::kHealthy};
  mutable Mutex status_mu_;
  std::string state_since_ GUARDED_BY(status_mu_);
  std::string last_error_ GUARDED_BY(status_mu_);
  double probe_latency_ms_ GUARDED_BY(status_mu_) = -1;  // -1: no probe yet
  std::atomic<bool> needs_full_sync_{false};
  std::atomic<int> probe_streak_{0};
  std::atomic<uint64_t> ops_{0}, errors_{0}, timeouts_{0}, state_changes_{0}, probes_failed_{0};
};

// renameat2 (0 or an errno), with RENAME_NOREPLACE emulated where the NAS
// refuses the flag (NFS, libfuse 2 servers such as bindfs).
int RenameAt(int olddirfd, const char* oldname, int newdirfd, const char* newname, unsigned flags);
// Whether the directory open as `fd` is the directory `ancestor` or lies
// beneath it: walks ".." up to the filesystem's root (at most 4096 levels),
// comparing device and inode, so a bind mount or symlink that hides the
// nesting from the paths does not hide it from this.
bool IsBeneath(int fd, const struct stat& ancestor);
// "a/b/c" -> "a/b"; "a" -> "" (the root).
std::string ParentOf(const std::string& path);
// "a/b" + "c" -> "a/b/c"; "" + "c" -> "c".
std::string JoinPath(const std::string& dir, const std::string& name);
// Whether an errno means the NAS itself is sick rather than the request wrong.
bool IsFaultErrno(int e);
// A read's answer (never an errno, never sent to the kernel) for "this NAS
// holds no copy to read": an unlinked file's fd it never had, or a copy
// that missed a write. The read goes to the other NAS; not a fault.
inline constexpr int kNotOnThisNas = -1;
inline int RoleIndex(const Backend& b) { return RoleIndex(b.role()); }
// UTC now as ISO 8601.
std::string NowIso8601();

}  // namespace nasfs
