// A background reader for the mounted tests that put a NAS through a fault
// (failover_test, journal_test): it reads files nobody changes through the
// mount, as a web server would, checks every answer against what the test
// wrote, and records failures and per-request latency.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace nasfs::e2e {

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
