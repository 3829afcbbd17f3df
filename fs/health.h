// Probes one NAS on its own thread: every probe_interval it checks, under
// the io_timeout deadline, that the NAS answers, is still this pair's NAS,
// and takes a write.
//
// A probe runs as one call on the NAS's worker pool, so a pool full of
// calls stuck on a hung NAS makes the probe fail by its deadline too.
// The probe:
//  1. opens the NAS path afresh; when it now names another directory than
//     the root in use (the NAS was unmounted and mounted again), that new
//     root is taken, but only once its identity marker names this pair and
//     role. A bare mount point (an unmounted NAS) has no marker and is never
//     taken, so nothing is ever written to the local disk beneath it;
//  2. reads the identity marker of the root in use;
//  3. writes .nasfs/heartbeat.<node> and reads it back (other web servers
//     read it too: a heartbeat that stops changing is a server that died).
//
// Results go to the callback, on the monitor's thread.
#pragma once

#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include "fs/backend.h"
#include "util/mutex.h"

namespace nasfs {

class HealthMonitor {
 public:
  using ResultFn = std::function<void(Backend& nas, bool ok, const std::string& error, double latency_ms)>;
  // The heartbeat's content for probe number `seq` (one line; other web
  // servers read it, see fs/peers.h). Runs on the monitor's thread.
  using BeatFn = std::function<std::string(uint64_t seq)>;

  // *nas must outlive the monitor.
  HealthMonitor(Backend* nas, std::string node, std::string pair_id, std::chrono::milliseconds interval,
                ResultFn on_result, BeatFn beat = nullptr);
  ~HealthMonitor();  // stops and joins

  void Start();
  void Stop();

  // One probe, blocking up to the NAS's io_timeout. Returns "" when good,
  // else what failed.
  std::string ProbeOnce();

 private:
  void Loop();

  Backend* nas_;
  const std::string node_;
  const std::string pair_id_;
  const std::chrono::milliseconds interval_;
  ResultFn on_result_;
  BeatFn beat_;
  uint64_t seq_ = 0;  // monitor thread only

  Mutex mu_;
  CondVar cv_;
  bool stop_ GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace nasfs
