// A readers-writer lock that prefers its writer: once a thread waits for it
// exclusively, new shared lockers wait behind it. std::shared_mutex (glibc's
// default rwlock) prefers readers, so a steady stream of writes through the
// mount, each holding the lock shared, could keep an exclusive holder (the
// replay's switch-back, a takeover, the copy) waiting forever.
//
// Not recursive: a thread holding it shared must not take it shared again
// (with a writer waiting in between, that deadlocks). Satisfies the
// standard's SharedMutex requirements, for std::shared_lock and
// std::unique_lock.
#pragma once

#include <pthread.h>

#include <cerrno>
#include <cstdlib>

namespace nasfs {

class SharedGate {
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

  void lock() { Check(pthread_rwlock_wrlock(&lock_)); }
  bool try_lock() { return pthread_rwlock_trywrlock(&lock_) == 0; }
  void unlock() { Check(pthread_rwlock_unlock(&lock_)); }
  void lock_shared() {
    for (;;) {
      int r = pthread_rwlock_rdlock(&lock_);
      if (r != EAGAIN) return Check(r);  // EAGAIN: the reader count's limit, momentarily
    }
  }
  bool try_lock_shared() { return pthread_rwlock_tryrdlock(&lock_) == 0; }
  void unlock_shared() { unlock(); }

 private:
  // EDEADLK (this thread holds it already) is a broken lock rule: fail loudly.
  static void Check(int r) {
    if (r != 0) abort();
  }
  pthread_rwlock_t lock_;
};

}  // namespace nasfs
