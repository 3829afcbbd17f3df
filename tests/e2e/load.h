// Load for the mounted tests that put a NAS through a fault (failover_test,
// journal_test, peers_test): a background reader that reads files nobody
// changes through the mount, as a web server would, checks every answer
// against what the test wrote, and records failures and per-request latency;
// writes through a mount that return an errno; and OwnedWorker, a thread
// that may be abandoned on a dead mount.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <memory>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "tests/e2e/mount_fixture.h"

namespace nasfs::e2e {

// ---- syscalls through the mount, returning 0 or an errno --------------------

// 0 if rc is 0, else errno.
int Errno(int rc);

// Which call of a multi-call operation (PutFile, or a test's own) failed
// last, on this thread: "open", "write", "close".
extern thread_local const char* t_failed_call;

// Writes data to path (opened with flags | O_WRONLY, created with mode),
// all of it, and closes it: 0 or the errno of the call that failed.
int PutFile(const std::string& path, std::string_view data, int flags, mode_t mode = 0644);

// ---- a worker thread that may be abandoned ----------------------------------

// A worker thread whose state (a stop flag, whether it finished, its result
// R) it shares rather than borrows from this handle, so a thread stuck in a
// call on a dead mount can be abandoned safely: the destructor joins it only
// if it finished, and otherwise asks it to stop and detaches it; a late
// finish then touches only the shared state.
template <class R>
class OwnedWorker {
 public:
  using Result = R;
  struct State {
    std::atomic<bool> stop{false}, finished{false};
    mutable std::mutex mu;
    Result result;  // guarded by mu
  };

  OwnedWorker() = default;
  OwnedWorker(const OwnedWorker&) = delete;
  OwnedWorker& operator=(const OwnedWorker&) = delete;
  ~OwnedWorker() {
    if (!thread_.joinable()) return;
    if (state_->finished) {
      thread_.join();
    } else {
      state_->stop = true;
      thread_.detach();
    }
  }

  // Runs fn(const State&) -> Result on the thread (fn must own what it
  // uses; it may watch `stop`) and publishes what it returns.
  template <class F>
  void Start(F fn) {
    Launch([fn = std::move(fn)](State& st) mutable {
      Result r = fn(std::as_const(st));
      std::lock_guard<std::mutex> lock(st.mu);
      st.result = std::move(r);
    });
  }
  // Asks the thread to stop after its current call.
  void RequestStop() { state_->stop = true; }
  // Waits for the thread to end; false on timeout (it is then left running).
  bool Join(std::chrono::milliseconds timeout) {
    if (!thread_.joinable()) return true;
    if (!WaitFor([&] { return state_->finished.load(); }, timeout)) return false;
    thread_.join();
    return true;
  }
  Result result() const {
    std::lock_guard<std::mutex> lock(state_->mu);
    return state_->result;
  }

 protected:
  // Runs body(State&) on the thread (body must own what it uses and publish
  // into State::result under State::mu); the state is marked finished when
  // it returns.
  template <class Body>
  void Launch(Body body) {
    thread_ = std::thread([st = state_, body = std::move(body)]() mutable {
      body(*st);
      st->finished = true;
    });
  }

  const std::shared_ptr<State> state_ = std::make_shared<State>();

 private:
  std::thread thread_;
};

struct LoadStats {
  int ops = 0;
  int failures = 0;
  double max_ms = 0;     // the longest request
  std::string max_what;  // which one, and when
  double p50_ms = 0, p99_ms = 0;
  std::vector<std::string> failure_lines;  // the first few

  // failure_lines, one per indented line, or "(none)".
  std::string Failures() const;
};

// How often the reader makes a request.
struct ReaderPace {
  std::chrono::milliseconds period;
  // true: one request every `period`, and after a stall on at that rate
  // rather than in a burst; false: a pause of `period` after each request.
  bool fixed_rate;

  static ReaderPace Every(std::chrono::milliseconds p) { return {p, true}; }
  static ReaderPace PauseAfterEach(std::chrono::milliseconds p) { return {p, false}; }
};

// Each tick one request through the mount: mostly whole-file reads
// (O_DIRECT, so they reach nasfs), and of every ten ticks one directory
// listing, one readlink and one stat. Every answer is checked against what
// the test wrote; latency and failures are recorded per request.
class ReaderLoad {
 public:
  // files: path relative to mnt -> content; links: path -> target; dirs:
  // directory -> the names it must list.
  ReaderLoad(std::string mnt, std::map<std::string, std::string> files, std::map<std::string, std::string> links,
             std::map<std::string, std::set<std::string>> dirs, uint64_t seed, ReaderPace pace);
  ~ReaderLoad();
  ReaderLoad(const ReaderLoad&) = delete;
  ReaderLoad& operator=(const ReaderLoad&) = delete;

  void Start();

  // Stops the reader and returns its figures. A correct nasfs bounds every
  // request; if the reader is stuck in one for 20 s anyway, that is a
  // failure, and killing `daemon` (nasfs; -1: none) releases it (its
  // requests then fail with ENOTCONN) so the test can end.
  LoadStats Stop(pid_t daemon);

 private:
  using Clock = std::chrono::steady_clock;

  LoadStats Stats();
  void Loop();
  // One request; "" when it succeeded with the right answer.
  std::string OneRequest(int tick, std::string* what);

  const std::string mnt_;
  const std::map<std::string, std::string> files_, links_;
  const std::map<std::string, std::set<std::string>> dirs_;
  const ReaderPace pace_;
  std::vector<std::string> file_names_, link_names_, dir_names_;
  std::mt19937_64 rng_;  // the reader thread's only
  Clock::time_point started_;
  std::atomic<bool> stop_{false}, done_{false};
  std::thread thread_;
  std::mutex mu_;
  LoadStats stats_;                // guarded by mu_
  std::vector<double> latencies_;  // guarded by mu_
  std::string current_;            // guarded by mu_
};

}  // namespace nasfs::e2e
