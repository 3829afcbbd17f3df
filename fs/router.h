// Decides which NAS serves a read, and when a read is also sent to the
// other NAS (hedged).
//
// The master serves while it is healthy, otherwise the backup if it is
// healthy. A syncing backup (the target of a first copy) never serves reads.
// A read the chosen NAS has not answered within its hedge delay is sent to
// the other NAS too, if that one is healthy (in step: nothing journaled for
// it, no copy or replay onto it); the first answer wins (Nasfs::ReadHedged).
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <cstdint>

#include "fs/backend.h"

namespace nasfs {

class ReadRouter {
 public:
  // *master and *backup must outlive the router.
  ReadRouter(Backend* master, Backend* backup) : master_(master), backup_(backup) {}

  // The NAS a read should go to, or nullptr when none can serve.
  Backend* Pick() const;
  // "master", "backup" or "none", for status.
  const char* ReadFromName() const;

 private:
  Backend* master_;
  Backend* backup_;
};

// How long reads on one NAS take, and from that its hedge delay: twice the
// upper edge of the histogram bucket holding the 99th percentile of recent
// reads (so two to four times the p99), within [floor, cap]. A healthy NAS
// then hedges about one read in several hundred; a NAS that turns slow is
// hedged after at most `cap`. Until enough reads are seen, the delay is the
// cap. Recent: counts are halved every kHalveEvery reads.
//
// Lock-free and thread-safe: any worker records, any FUSE thread reads.
class ReadLatency {
 public:
  static constexpr uint64_t kHalveEvery = 4096;
  static constexpr uint64_t kMinSamples = 128;

  ReadLatency(std::chrono::microseconds floor, std::chrono::microseconds cap);

  void Record(std::chrono::steady_clock::duration d);
  std::chrono::microseconds HedgeDelay() const { return std::chrono::microseconds(delay_us_.load(std::memory_order_relaxed)); }
  // The p99 estimate (the bucket's upper edge), 0 before kMinSamples.
  std::chrono::microseconds P99() const;

 private:
  // Bucket i counts reads of [2^i, 2^(i+1)) microseconds (bucket 0 from 0).
  static constexpr int kBuckets = 32;
  void Recompute();

  const int64_t floor_us_, cap_us_;
  std::array<std::atomic<uint64_t>, kBuckets> counts_{};
  std::atomic<uint64_t> seen_{0};
  std::atomic<int64_t> delay_us_;
};

}  // namespace nasfs
