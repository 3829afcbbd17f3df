// Locks that clang's thread-safety analysis understands (see
// thread_annotations.h), in the manner of LevelDB's port::Mutex: a field
// is declared GUARDED_BY its lock, and the compiler checks every access.
// std::mutex and std::lock_guard carry no annotations, so nasfs uses these
// for any lock that guards a field.
//
//   Mutex / MutexLock      an exclusive lock and its scope
//   CondVar                waits on a Mutex the caller holds
//   SharedGate             a readers-writer lock that prefers its writer
//   SharedMutex            a readers-writer lock that prefers readers
//   ReaderLock/WriterLock  a scope holding either shared or exclusively
//
// Each scope can Unlock() early and Lock() again.
#pragma once

#include <pthread.h>

#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <shared_mutex>

#include "util/thread_annotations.h"

namespace nasfs {

class CAPABILITY("mutex") Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ACQUIRE() { mu_.lock(); }
  void Unlock() RELEASE() { mu_.unlock(); }
  // Tells the analysis the caller holds it (a callback run under it).
  void AssertHeld() ASSERT_CAPABILITY(this) {}

 private:
  friend class CondVar;
  std::mutex mu_;
};

class SCOPED_CAPABILITY MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ACQUIRE(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() RELEASE() {
    if (held_) mu_->Unlock();
  }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

  void Unlock() RELEASE() {
    mu_->Unlock();
    held_ = false;
  }
  void Lock() ACQUIRE() {
    mu_->Lock();
    held_ = true;
  }

 private:
  Mutex* const mu_;
  bool held_ = true;
};

// A condition variable over a Mutex. Waits may wake spuriously: callers
// loop on their condition, which the analysis then checks under the lock.
class CondVar {
 public:
  void Wait(Mutex* mu) REQUIRES(mu) {
    std::unique_lock<std::mutex> lk(mu->mu_, std::adopt_lock);
    cv_.wait(lk);
    lk.release();
  }
  // false once `until` has passed.
  template <typename Clock, typename Duration>
  bool WaitUntil(Mutex* mu, std::chrono::time_point<Clock, Duration> until) REQUIRES(mu) {
    std::unique_lock<std::mutex> lk(mu->mu_, std::adopt_lock);
    bool woken = cv_.wait_until(lk, until) == std::cv_status::no_timeout;
    lk.release();
    return woken;
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  std::condition_variable cv_;
};

// A readers-writer lock that prefers its writer: once a thread waits for it
// exclusively, new shared lockers wait behind it. std::shared_mutex (glibc's
// default rwlock) prefers readers, so a steady stream of writes through the
// mount, each holding the lock shared, could keep an exclusive holder (the
// replay's switch-back, a takeover, the copy) waiting forever.
//
// Not recursive: a thread holding it shared must not take it shared again
// (with a writer waiting in between, that deadlocks). Also satisfies the
// standard's SharedMutex requirements (std::shared_lock), for locks that
// guard no field and are handed to a caller (Nasfs::ShareName).
class CAPABILITY("gate") SharedGate {
 public:
  SharedGate() {
    pthread_rwlockattr_t attr;
    pthread_rwlockattr_init(&attr);
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    if (pthread_rwlock_init(&lock_, &attr) != 0) abort();  // only out of resources, at start-up
    pthread_rwlockattr_destroy(&attr);
  }
  ~SharedGate() { pthread_rwlock_destroy(&lock_); }
  SharedGate(const SharedGate&) = delete;
  SharedGate& operator=(const SharedGate&) = delete;

  void lock() ACQUIRE() { Check(pthread_rwlock_wrlock(&lock_)); }
  bool try_lock() TRY_ACQUIRE(true) { return pthread_rwlock_trywrlock(&lock_) == 0; }
  void unlock() RELEASE() { Check(pthread_rwlock_unlock(&lock_)); }
  void lock_shared() ACQUIRE_SHARED() {
    for (;;) {
      int r = pthread_rwlock_rdlock(&lock_);
      if (r != EAGAIN) return Check(r);  // EAGAIN: the reader count's limit, momentarily
    }
  }
  bool try_lock_shared() TRY_ACQUIRE_SHARED(true) { return pthread_rwlock_tryrdlock(&lock_) == 0; }
  void unlock_shared() RELEASE_SHARED() { Check(pthread_rwlock_unlock(&lock_)); }
  // Tells the analysis the caller holds it (a callback run under it).
  void AssertHeld() ASSERT_CAPABILITY(this) {}
  void AssertReaderHeld() NASFS_TSA(assert_shared_capability(this)) {}

 private:
  // EDEADLK (this thread holds it already) is a broken lock rule: fail loudly.
  static void Check(int r) {
    if (r != 0) abort();
  }
  pthread_rwlock_t lock_;
};

// std::shared_mutex with annotations: for a lock read far more than
// written, where readers may go first (the inode table).
class CAPABILITY("shared mutex") SharedMutex {
 public:
  void lock() ACQUIRE() { mu_.lock(); }
  void unlock() RELEASE() { mu_.unlock(); }
  void lock_shared() ACQUIRE_SHARED() { mu_.lock_shared(); }
  void unlock_shared() RELEASE_SHARED() { mu_.unlock_shared(); }

 private:
  std::shared_mutex mu_;
};

// Holds a SharedGate or SharedMutex shared for its scope.
template <typename M>
class SCOPED_CAPABILITY ReaderLock {
 public:
  explicit ReaderLock(M* mu) ACQUIRE_SHARED(mu) : mu_(mu) { mu_->lock_shared(); }
  ~ReaderLock() RELEASE() {
    if (held_) mu_->unlock_shared();
  }
  ReaderLock(const ReaderLock&) = delete;
  ReaderLock& operator=(const ReaderLock&) = delete;

  void Unlock() RELEASE() {
    mu_->unlock_shared();
    held_ = false;
  }

 private:
  M* const mu_;
  bool held_ = true;
};

// Holds a SharedGate or SharedMutex exclusively for its scope.
template <typename M>
class SCOPED_CAPABILITY WriterLock {
 public:
  explicit WriterLock(M* mu) ACQUIRE(mu) : mu_(mu) { mu_->lock(); }
  ~WriterLock() RELEASE() {
    if (held_) mu_->unlock();
  }
  WriterLock(const WriterLock&) = delete;
  WriterLock& operator=(const WriterLock&) = delete;

  void Unlock() RELEASE() {
    mu_->unlock();
    held_ = false;
  }
  void Lock() ACQUIRE() {
    mu_->lock();
    held_ = true;
  }

 private:
  M* const mu_;
  bool held_ = true;
};

}  // namespace nasfs
