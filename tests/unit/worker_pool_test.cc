// WorkerPool: deadlines, parallelism, the bounded queue, and shutdown with a
// thread stuck in a call (a hung NAS). Calls block on a Gate (a condition
// variable) that the test opens, never on sleeps; every wait is bounded so a
// broken pool fails the test instead of hanging it.
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "fs/worker_pool.h"

namespace nasfs {
namespace {

using std::chrono::milliseconds;

// Long enough that a correct pool never trips it; a hung one fails the test.
constexpr auto kBound = std::chrono::seconds(5);

// InFlight() drops only after the worker finished a call and retook its lock,
// a moment after the waiter saw the result: poll it, bounded.
bool InFlightReaches(const WorkerPool& pool, size_t n) {
  const auto until = Clock::now() + kBound;
  while (pool.InFlight() != n) {
    if (Clock::now() > until) return false;
    std::this_thread::yield();
  }
  return true;
}

long long MsSince(Clock::time_point start) {
  return std::chrono::duration_cast<milliseconds>(Clock::now() - start).count();
}

// A one-shot gate plus a count of callers that reached it. Shared-owned by
// the calls so a call still running after its test ended touches live memory.
class Gate {
 public:
  // Called by a worker: records the arrival, then blocks until Open() or the
  // bound. Returns 0 when opened, ETIMEDOUT when the bound passed.
  int Pass() {
    std::unique_lock lk(mu_);
    ++arrived_;
    cv_.notify_all();
    return cv_.wait_for(lk, kBound, [&] { return open_; }) ? 0 : ETIMEDOUT;
  }
  void Open() {
    {
      std::lock_guard lk(mu_);
      open_ = true;
    }
    cv_.notify_all();
  }
  // Waits until n callers arrived; false if they did not within the bound.
  bool WaitArrived(int n) {
    std::unique_lock lk(mu_);
    return cv_.wait_for(lk, kBound, [&] { return arrived_ >= n; });
  }
  int arrived() {
    std::lock_guard lk(mu_);
    return arrived_;
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  int arrived_ = 0;
  bool open_ = false;
};

// Signals completion of a call that outlived its waiter.
struct Done {
  std::mutex mu;
  std::condition_variable cv;
  bool done = false;
  void Set() {
    {
      std::lock_guard lk(mu);
      done = true;
    }
    cv.notify_all();
  }
  bool Wait() {
    std::unique_lock lk(mu);
    return cv.wait_for(lk, kBound, [&] { return done; });
  }
};

class WorkerPoolTest : public ::testing::Test {
 protected:
  // Opens every gate the test made, so no worker stays blocked after it.
  void TearDown() override {
    for (auto& g : gates_) g->Open();
  }
  std::shared_ptr<Gate> NewGate() {
    gates_.push_back(std::make_shared<Gate>());
    return gates_.back();
  }
  static Clock::time_point Far() { return Clock::now() + kBound; }

  std::vector<std::shared_ptr<Gate>> gates_;
};

TEST_F(WorkerPoolTest, RunReturnsTheCallsResult) {
  WorkerPool pool("test", 2, 8);
  pool.Start();
  EXPECT_EQ(pool.Run([] { return 0; }, Far()), 0);
  EXPECT_EQ(pool.Run([] { return EACCES; }, Far()), EACCES);
  int side = 0;
  EXPECT_EQ(pool.Run([&side] { side = 42; return 0; }, Far()), 0);
  EXPECT_EQ(side, 42);
}

TEST_F(WorkerPoolTest, CallsRunOnAWorkerThreadNotTheCaller) {
  WorkerPool pool("test", 1, 8);
  pool.Start();
  std::thread::id ran_on;
  ASSERT_EQ(pool.Run([&ran_on] { ran_on = std::this_thread::get_id(); return 0; }, Far()), 0);
  EXPECT_NE(ran_on, std::this_thread::get_id());
}

TEST_F(WorkerPoolTest, NThreadsRunNBlockingCallsAtOnce) {
  constexpr int kThreads = 4;
  WorkerPool pool("test", kThreads, 16);
  pool.Start();
  auto gate = NewGate();
  std::vector<std::shared_ptr<Call>> calls;
  for (int i = 0; i < kThreads; ++i) calls.push_back(pool.Submit([gate] { return gate->Pass(); }, Far()));
  // All four are inside their call at the same time, none finished.
  ASSERT_TRUE(gate->WaitArrived(kThreads)) << "only " << gate->arrived() << " of " << kThreads
                                           << " calls ran concurrently";
  EXPECT_EQ(pool.InFlight(), static_cast<size_t>(kThreads));
  for (auto& c : calls) EXPECT_FALSE(c->done());
  gate->Open();
  for (auto& c : calls) EXPECT_EQ(c->Wait(Far()), 0);
  EXPECT_TRUE(InFlightReaches(pool, 0)) << pool.InFlight() << " still in flight";
}

TEST_F(WorkerPoolTest, ACallPastItsDeadlineReturnsEtimedoutInTime) {
  WorkerPool pool("test", 1, 8);
  pool.Start();
  auto gate = NewGate();
  auto done = std::make_shared<Done>();
  const auto start = Clock::now();
  int r = pool.Run(
      [gate, done] {
        int g = gate->Pass();
        done->Set();
        return g == 0 ? 7 : g;
      },
      start + milliseconds(100));
  const long long took = MsSince(start);
  EXPECT_EQ(r, ETIMEDOUT);
  EXPECT_GE(took, 100);
  EXPECT_LT(took, 100 + 400) << "the waiter was not released at its deadline";
  // The abandoned call completes later without touching anything freed: the
  // waiter's Call is gone, the worker still finishes and takes new work.
  gate->Open();
  ASSERT_TRUE(done->Wait());
  EXPECT_EQ(pool.Run([] { return 0; }, Far()), 0);
}

TEST_F(WorkerPoolTest, ALateCompletionStillReachesAWaiterThatKeptTheCall) {
  WorkerPool pool("test", 1, 8);
  pool.Start();
  auto gate = NewGate();
  auto call = pool.Submit([gate] { return gate->Pass() == 0 ? 7 : -1; }, Far());
  EXPECT_EQ(call->Wait(Clock::now() + milliseconds(50)), ETIMEDOUT);
  EXPECT_FALSE(call->done());
  gate->Open();
  EXPECT_EQ(call->Wait(Far()), 7);
  EXPECT_TRUE(call->done());
}

TEST_F(WorkerPoolTest, AQueuedCallWhoseDeadlinePassedNeverRuns) {
  WorkerPool pool("test", 1, 8);
  pool.Start();
  auto gate = NewGate();
  auto blocker = pool.Submit([gate] { return gate->Pass(); }, Far());
  ASSERT_TRUE(gate->WaitArrived(1));
  auto ran = std::make_shared<std::atomic<bool>>(false);
  auto late = pool.Submit([ran] { ran->store(true); return 0; }, Clock::now() + milliseconds(30));
  EXPECT_EQ(late->Wait(Clock::now() + milliseconds(30)), ETIMEDOUT);
  // Let the worker reach the stale call; a call queued after it in the one
  // thread's FIFO finishes only once the stale one was dealt with.
  gate->Open();
  ASSERT_EQ(blocker->Wait(Far()), 0);
  ASSERT_EQ(pool.Run([] { return 0; }, Far()), 0);
  EXPECT_TRUE(late->done());
  EXPECT_EQ(late->Wait(Far()), ETIMEDOUT);
  EXPECT_FALSE(ran->load()) << "a call whose waiter had given up was run anyway";
}

TEST_F(WorkerPoolTest, AFullQueueFailsFastWithEtimedout) {
  WorkerPool pool("test", 1, 2);
  pool.Start();
  auto gate = NewGate();
  auto running = pool.Submit([gate] { return gate->Pass(); }, Far());
  ASSERT_TRUE(gate->WaitArrived(1));
  auto q1 = pool.Submit([] { return 0; }, Far());
  auto q2 = pool.Submit([] { return 0; }, Far());
  EXPECT_EQ(pool.InFlight(), 3u);
  const auto start = Clock::now();
  auto ran = std::make_shared<std::atomic<bool>>(false);
  auto overflow = pool.Submit([ran] { ran->store(true); return 0; }, Far());
  EXPECT_TRUE(overflow->done()) << "a submit beyond the queue bound was queued";
  EXPECT_EQ(overflow->Wait(Far()), ETIMEDOUT);
  EXPECT_LT(MsSince(start), 100);
  EXPECT_EQ(pool.InFlight(), 3u);
  gate->Open();
  EXPECT_EQ(running->Wait(Far()), 0);
  EXPECT_EQ(q1->Wait(Far()), 0);
  EXPECT_EQ(q2->Wait(Far()), 0);
  EXPECT_FALSE(ran->load());
}

TEST_F(WorkerPoolTest, DestroyingThePoolWithAStuckThreadReturnsPromptly) {
  auto pool = std::make_unique<WorkerPool>("test", 2, 8);
  pool->Start();
  auto gate = NewGate();
  auto done = std::make_shared<Done>();
  auto stuck = pool->Submit(
      [gate, done] {
        int r = gate->Pass();
        done->Set();
        return r;
      },
      Far());
  ASSERT_TRUE(gate->WaitArrived(1));
  const auto start = Clock::now();
  pool.reset();
  EXPECT_LT(MsSince(start), 500) << "the destructor waited for a thread stuck in a call";
  // The detached thread finishes on shared state once the "NAS" answers.
  gate->Open();
  EXPECT_TRUE(done->Wait());
  EXPECT_EQ(stuck->Wait(Far()), 0);
}

TEST_F(WorkerPoolTest, DestroyingThePoolCancelsQueuedCalls) {
  auto pool = std::make_unique<WorkerPool>("test", 1, 8);
  pool->Start();
  auto gate = NewGate();
  auto stuck = pool->Submit([gate] { return gate->Pass(); }, Far());
  ASSERT_TRUE(gate->WaitArrived(1));
  auto ran = std::make_shared<std::atomic<bool>>(false);
  auto queued = pool->Submit([ran] { ran->store(true); return 0; }, Far());
  pool.reset();
  EXPECT_EQ(queued->Wait(Far()), ECANCELED);
  gate->Open();
  EXPECT_EQ(stuck->Wait(Far()), 0);
  EXPECT_FALSE(ran->load());
}

TEST_F(WorkerPoolTest, NothingRunsBeforeStart) {
  WorkerPool pool("test", 1, 8);
  auto ran = std::make_shared<std::atomic<bool>>(false);
  auto call = pool.Submit([ran] { ran->store(true); return 0; }, Clock::now() + milliseconds(50));
  EXPECT_EQ(call->Wait(Clock::now() + milliseconds(50)), ETIMEDOUT);
  EXPECT_FALSE(ran->load());
  EXPECT_EQ(pool.InFlight(), 1u);
}

TEST_F(WorkerPoolTest, ManyShortCallsFromManyThreadsAllComplete) {
  WorkerPool pool("test", 4, 1024);
  pool.Start();
  std::atomic<int> sum{0};
  std::vector<std::thread> submitters;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t)
    submitters.emplace_back([&] {
      for (int i = 0; i < 200; ++i)
        if (pool.Run([&sum] { sum.fetch_add(1); return 0; }, Far()) != 0) failures.fetch_add(1);
    });
  for (auto& t : submitters) t.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(sum.load(), 8 * 200);
  EXPECT_TRUE(InFlightReaches(pool, 0)) << pool.InFlight() << " still in flight";
}

// A hedged read waits on two calls at once: whichever finishes first wakes
// it, a finish before the waker was attached counts, and a finish between
// the waiter's look and its wait is not lost.
TEST_F(WorkerPoolTest, AWakerWakesOnTheFirstOfTwoCallsToFinish) {
  WorkerPool a("a", 1, 8), b("b", 1, 8);
  a.Start();
  b.Start();
  auto slow = NewGate(), quick = NewGate();
  auto first = a.Submit([slow] { return slow->Pass() == 0 ? 1 : -1; }, Far());
  auto second = b.Submit([quick] { return quick->Pass() == 0 ? 2 : -1; }, Far());
  ASSERT_TRUE(slow->WaitArrived(1));
  ASSERT_TRUE(quick->WaitArrived(1));
  auto waker = std::make_shared<Waker>();
  const uint64_t seen = waker->fired();
  first->WakeOnFinish(waker);
  second->WakeOnFinish(waker);
  EXPECT_EQ(waker->fired(), seen) << "fired before either call finished";
  quick->Open();  // may finish before WaitPast starts: the count keeps it
  const auto start = Clock::now();
  waker->WaitPast(seen, Far());
  EXPECT_LT(MsSince(start), 2000) << "the waiter was not woken by the call that finished";
  EXPECT_TRUE(second->done());
  EXPECT_EQ(second->result(), 2);
  EXPECT_FALSE(first->done());
  EXPECT_EQ(first->result(), ETIMEDOUT) << "an unfinished call's result must read as not there";
  // A waker attached to a call that finished already fires at once.
  auto late = std::make_shared<Waker>();
  second->WakeOnFinish(late);
  EXPECT_EQ(late->fired(), 1u);
  slow->Open();
  EXPECT_EQ(first->Wait(Far()), 1);
  // Finish wakes the call's own waiter before it fires the wakers: wait
  // (bounded) for the second fire rather than expect it at once.
  waker->WaitPast(seen + 1, Far());
  EXPECT_EQ(waker->fired(), seen + 2);
}

TEST_F(WorkerPoolTest, WaitPastReturnsAtItsDeadlineWhenNothingFinishes) {
  Waker w;
  const auto start = Clock::now();
  w.WaitPast(w.fired(), Clock::now() + milliseconds(50));
  const auto took = MsSince(start);
  EXPECT_GE(took, 50);
  EXPECT_LT(took, 50 + 400);
}

}  // namespace
}  // namespace nasfs
