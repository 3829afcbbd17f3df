#include "fs/dir_cache.h"

#include <algorithm>

namespace nasfs {

namespace {
thread_local bool t_in_scope = false;
}  // namespace

DirCache::Scope::Scope() : prev_(t_in_scope) { t_in_scope = true; }
DirCache::Scope::~Scope() { t_in_scope = prev_; }
bool DirCache::InScope() { return t_in_scope; }

DirCache::DirCache(std::chrono::milliseconds ttl, size_t capacity) : capacity_(capacity), ttl_(ttl) {}

void DirCache::SetTtl(std::chrono::milliseconds ttl) {
  MutexLock lk(&mu_);
  ttl_ = ttl;
  if (ttl_.count() <= 0) dirs_.clear();
}

bool DirCache::enabled() const {
  MutexLock lk(&mu_);
  return ttl_.count() > 0;
}

void DirCache::UseRootLocked(const Fd& root) {
  if (root_ == root) return;
  dirs_.clear();
  root_ = root;
}

DirCache::Fd DirCache::Find(const Fd& root, const std::string& dir) {
  MutexLock lk(&mu_);
  UseRootLocked(root);
  auto it = dirs_.find(dir);
  if (it == dirs_.end() || Clock::now() >= it->second.until) {
    misses_.fetch_add(1, std::memory_order_relaxed);
    return nullptr;
  }
  hits_.fetch_add(1, std::memory_order_relaxed);
  return it->second.fd;
}

void DirCache::Put(const Fd& root, const std::string& dir, Fd fd) {
  MutexLock lk(&mu_);
  if (ttl_.count() <= 0 || !fd || !fd->valid()) return;
  UseRootLocked(root);
  const auto now = Clock::now();
  if (dirs_.size() >= capacity_ && !dirs_.count(dir)) {
    // Full: the expired go; if none has, everything does (a walk deeper
    // than the capacity keeps only its last stretch, which is what the
    // next call needs).
    for (auto it = dirs_.begin(); it != dirs_.end();) it = now >= it->second.until ? dirs_.erase(it) : std::next(it);
    if (dirs_.size() >= capacity_) dirs_.clear();
  }
  dirs_[dir] = Entry{std::move(fd), now + ttl_};
}

void DirCache::Forget(const std::string& dir) {
  MutexLock lk(&mu_);
  if (dirs_.empty()) return;
  if (dir.empty()) {
    dirs_.clear();
    return;
  }
  for (auto it = dirs_.begin(); it != dirs_.end();) {
    const std::string& p = it->first;
    bool under = p.size() >= dir.size() && p.compare(0, dir.size(), dir) == 0 &&
                 (p.size() == dir.size() || p[dir.size()] == '/');
    it = under ? dirs_.erase(it) : std::next(it);
  }
}

void DirCache::Clear() {
  MutexLock lk(&mu_);
  dirs_.clear();
}

size_t DirCache::size() const {
  MutexLock lk(&mu_);
  return dirs_.size();
}

}  // namespace nasfs
