// Directory fds of one NAS, by path, kept for a short time (issue 10,
// item 9: cost grew with path depth).
//
// Every NAS call resolves its path beneath the NAS root (openat2
// RESOLVE_BENEATH), one lookup per directory on the way. On a NAS whose
// client caches few names, or while the kernel revalidates each directory
// of a deep path in turn (one LOOKUP per level, each resolving its whole
// path again), that is depth, or depth squared, round trips per request.
// With this cache a call opens its last component beneath the fd of its
// parent directory, found here or opened beneath the grandparent's cached
// fd, so a request costs a couple of lookups at any depth.
//
// Only the calls that serve reads through the mount use it (a Scope is
// alive on the worker thread: Nasfs::ReadInto). Changes, the replay, the
// copy and verify resolve every path from the root: a stale fd there could
// write a change into a directory another server moved, on one NAS and not
// the other, or copy a path that no longer exists.
//
// A cached fd names a directory, not a path: if another web server renames
// or removes the directory, the fd follows the directory for up to `ttl`.
// The kernel's own cache of nasfs's names (cache_timeout) allows the same
// staleness, and an NFS client's name cache longer still, so the ttl is
// nasfs's cache_timeout. This server's own renames and removals forget
// what they moved at once (Forget). An entry is only ever reached through
// a confined openat2, so what it names lay beneath the NAS root when it was
// opened.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>
#include <unordered_map>

#include "fs/common.h"
#include "util/mutex.h"

namespace nasfs {

class DirCache {
 public:
  using Clock = std::chrono::steady_clock;
  using Fd = std::shared_ptr<const UniqueFd>;

  // While one is alive, this thread's calls may use the cache.
  class Scope {
   public:
    Scope();
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    bool prev_;
  };
  static bool InScope();

  // ttl 0: nothing is kept. At most `capacity` fds are held.
  explicit DirCache(std::chrono::milliseconds ttl = std::chrono::milliseconds(0), size_t capacity = 256);

  void SetTtl(std::chrono::milliseconds ttl);
  bool enabled() const;

  // The fd cached for dir under the NAS root `root` (an fd of a replaced
  // root is never handed out: the cache empties when the root changes), or
  // null when none is, or it has expired.
  Fd Find(const Fd& root, const std::string& dir);
  // Keeps fd for dir (which the caller opened beneath `root`).
  void Put(const Fd& root, const std::string& dir, Fd fd);
  // Forgets dir and everything beneath it.
  void Forget(const std::string& dir);
  void Clear();

  size_t size() const;
  uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  uint64_t misses() const { return misses_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    Fd fd;
    Clock::time_point until;
  };
  // Empties the cache if root is not the root its fds were opened beneath.
  void UseRootLocked(const Fd& root) REQUIRES(mu_);

  const size_t capacity_;
  mutable Mutex mu_;
  std::chrono::milliseconds ttl_ GUARDED_BY(mu_);
  Fd root_ GUARDED_BY(mu_);  // held, so a new root never reuses its address
  std::unordered_map<std::string, Entry> dirs_ GUARDED_BY(mu_);
  std::atomic<uint64_t> hits_{0}, misses_{0};
};

}  // namespace nasfs
