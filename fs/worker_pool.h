// A bounded pool of threads that runs calls against one NAS, each with a
// deadline, so that no FUSE thread ever blocks on a NAS without one.
//
// A call that misses its deadline is abandoned by its waiter, not cancelled:
// a syscall stuck on a hung NAS cannot be interrupted. The call's state is
// shared-owned by the waiter and the worker, so a late completion touches
// nothing freed. A call still queued when its deadline passes never runs.
// The queue is bounded: when every thread is stuck and the queue is full,
// Submit fails at once with ETIMEDOUT rather than growing without bound.
//
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "util/mutex.h"

namespace nasfs {

using Clock = std::chrono::steady_clock;

// Wakes one waiter when any of the calls it watches finishes: a hedged
// read waits on two calls at once (Nasfs::ReadHedged). A counter, not a
// flag, so that no finish between a look at the calls and the wait is lost:
// the waiter notes fired(), looks, then waits for fired() to move past it.
class Waker {
 public:
  uint64_t fired() const;
  void Fire();
  // Waits until fired() > seen or deadline passed.
  void WaitPast(uint64_t seen, Clock::time_point deadline);

 private:
  mutable Mutex mu_;
  CondVar cv_;
  uint64_t fired_ GUARDED_BY(mu_) = 0;
};

// The outcome of one submitted call.
class Call {
 public:
  // Waits until the call finished or `deadline` passed. Returns the call's
  // result (0 or a positive errno), or ETIMEDOUT.
  int Wait(Clock::time_point deadline);
  // True once the worker finished it (result is then final).
  bool done() const;
  // The result once done() (0 or a positive errno); ETIMEDOUT before.
  int result() const;
  // Fires w when the call finishes (at once if it has).
  void WakeOnFinish(std::shared_ptr<Waker> w);

 private:
  friend class WorkerPool;
  void Finish(int result);

  mutable Mutex mu_;  // taken after WorkerPool's Shared::mu when both are held
  CondVar cv_;
  bool done_ GUARDED_BY(mu_) = false;
  int result_ GUARDED_BY(mu_) = 0;
  std::vector<std::shared_ptr<Waker>> wakers_ GUARDED_BY(mu_);
};

class WorkerPool {
 public:
  // fn returns 0 or a positive errno.
  using Fn = std::function<int()>;

  // Threads start in Start(), not here: a daemon forks after building its
  // pools, and fork keeps no threads.
  WorkerPool(std::string name, int threads, size_t max_queue);
  // Stops idle workers and joins them; workers stuck in a syscall are
  // detached (they hold only shared state).
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Start();

  // Queues fn. The returned call finishes with fn's result, or with
  // ETIMEDOUT when the deadline passed before a worker took it, or at once
  // when the queue is full.
  std::shared_ptr<Call> Submit(Fn fn, Clock::time_point deadline);

  // Submit and wait. fn must own (capture by value) whatever it touches after
  // the deadline.
  int Run(Fn fn, Clock::time_point deadline) { return Submit(std::move(fn), deadline)->Wait(deadline); }

  // Calls queued or running now.
  size_t InFlight() const;

 private:
  struct Item {
    Fn fn;
    Clock::time_point deadline;
    std::shared_ptr<Call> call;
  };
  struct Shared {
    Mutex mu;
    CondVar cv;
    std::deque<Item> queue GUARDED_BY(mu);
    size_t running GUARDED_BY(mu) = 0;
    bool stopping GUARDED_BY(mu) = false;
  };
  static void Work(std::shared_ptr<Shared> s);

  // Constant after construction.
  const std::string name_;
  const int nthreads_;
  const size_t max_queue_;
  const std::shared_ptr<Shared> shared_;
  std::vector<std::thread> threads_;  // Start() and the destructor only
};

}  // namespace nasfs
