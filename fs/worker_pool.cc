#include "fs/worker_pool.h"

#include <pthread.h>

#include <cerrno>
#include <exception>

#include <spdlog/spdlog.h>

#include "fs/common.h"
#include "fs/log.h"

namespace nasfs {
namespace {

// A call that throws (a NAS file that does not parse as expected, memory
// exhausted) fails with EIO; the worker, and with it the daemon, goes on.
// An exception leaving a worker thread would std::terminate the daemon and
// take the document root down on every request.
int RunGuarded(const WorkerPool::Fn& fn) {
  int r = EIO;
  ExceptionText what;
  if (CatchAll([&] { r = fn(); }, &what)) return r;
  (void)CatchAll(
      [&] { Logger("fuse")->error("a NAS call failed with an exception: {}", what.c_str()); },
      &what);  // logging failed too: the EIO still reports it
  return EIO;
}

}  // namespace

int Call::Wait(Clock::time_point deadline) {
  MutexLock lk(&mu_);
  while (!done_)
    if (!cv_.WaitUntil(&mu_, deadline) && !done_) return ETIMEDOUT;
  return result_;
}

bool Call::done() const {
  MutexLock lk(&mu_);
  return done_;
}

int Call::result() const {
  MutexLock lk(&mu_);
  return done_ ? result_ : ETIMEDOUT;
}

void Call::WakeOnFinish(std::shared_ptr<Waker> w) {
  {
    MutexLock lk(&mu_);
    if (!done_) {
      wakers_.push_back(std::move(w));
      return;
    }
  }
  w->Fire();
}

void Call::Finish(int result) {
  std::vector<std::shared_ptr<Waker>> wakers;
  {
    MutexLock lk(&mu_);
    done_ = true;
    result_ = result;
    wakers.swap(wakers_);
  }
  cv_.SignalAll();
  for (auto& w : wakers) w->Fire();
}

uint64_t Waker::fired() const {
  MutexLock lk(&mu_);
  return fired_;
}

void Waker::Fire() {
  {
    MutexLock lk(&mu_);
    ++fired_;
  }
  cv_.SignalAll();
}

void Waker::WaitPast(uint64_t seen, Clock::time_point deadline) {
  MutexLock lk(&mu_);
  while (fired_ <= seen)
    if (!cv_.WaitUntil(&mu_, deadline)) return;
}

WorkerPool::WorkerPool(std::string name, int threads, size_t max_queue)
    : name_(std::move(name)), nthreads_(threads), max_queue_(max_queue), shared_(std::make_shared<Shared>()) {}

void WorkerPool::Start() {
  if (!threads_.empty()) return;
  for (int i = 0; i < nthreads_; ++i) {
    threads_.emplace_back(Work, shared_);
    pthread_setname_np(threads_.back().native_handle(), (name_.substr(0, 11) + "-w").c_str());
  }
}

WorkerPool::~WorkerPool() {
  {
    MutexLock lk(&shared_->mu);
    shared_->stopping = true;
    for (auto& it : shared_->queue) it.call->Finish(ECANCELED);
    shared_->queue.clear();
  }
  shared_->cv.SignalAll();
  // A worker blocked in a syscall on a hung NAS would block join() forever;
  // the threads own a reference to Shared, so detaching them is safe.
  for (auto& t : threads_) t.detach();
}

std::shared_ptr<Call> WorkerPool::Submit(Fn fn, Clock::time_point deadline) {
  auto call = std::make_shared<Call>();
  {
    MutexLock lk(&shared_->mu);
    if (shared_->stopping) {
      call->Finish(ECANCELED);
      return call;
    }
    // While every worker is stuck on a hung NAS nothing dequeues: drop the
    // calls whose waiters already gave up, so what they hold (a write's
    // bytes) is freed now rather than when the NAS answers, maybe hours on.
    auto now = Clock::now();
    while (!shared_->queue.empty() && shared_->queue.front().deadline <= now) {
      shared_->queue.front().call->Finish(ETIMEDOUT);
      shared_->queue.pop_front();
    }
    if (shared_->queue.size() >= max_queue_) {
      call->Finish(ETIMEDOUT);
      return call;
    }
    shared_->queue.push_back(Item{std::move(fn), deadline, call});
  }
  shared_->cv.Signal();
  return call;
}

size_t WorkerPool::InFlight() const {
  MutexLock lk(&shared_->mu);
  return shared_->queue.size() + shared_->running;
}

void WorkerPool::Work(std::shared_ptr<Shared> s) {
  MutexLock lk(&s->mu);
  for (;;) {
    while (!s->stopping && s->queue.empty()) s->cv.Wait(&s->mu);
    if (s->stopping) return;
    Item it = std::move(s->queue.front());
    s->queue.pop_front();
    if (Clock::now() >= it.deadline) {
      // Its waiter has given up; running it now could apply a change the
      // caller already reported as failed.
      it.call->Finish(ETIMEDOUT);
      continue;
    }
    ++s->running;
    lk.Unlock();
    int r = RunGuarded(it.fn);
    it.call->Finish(r);
    it = Item{};  // drop captured state outside the lock
    lk.Lock();
    --s->running;
  }
}

}  // namespace nasfs
