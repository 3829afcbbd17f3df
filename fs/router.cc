#include "fs/router.h"

#include <algorithm>
#include <bit>

namespace nasfs {

Backend* ReadRouter::Pick() const {
  if (master_->state() == BackendState::kHealthy) return master_;
  if (backup_->state() == BackendState::kHealthy) return backup_;
  return nullptr;
}

const char* ReadRouter::ReadFromName() const {
  Backend* b = Pick();
  return b ? b->name() : "none";
}

ReadLatency::ReadLatency(std::chrono::microseconds floor, std::chrono::microseconds cap)
    : floor_us_(std::min(floor.count(), cap.count())), cap_us_(cap.count()), delay_us_(cap.count()) {}

void ReadLatency::Record(std::chrono::steady_clock::duration d) {
  const auto us = std::max<int64_t>(0, std::chrono::duration_cast<std::chrono::microseconds>(d).count());
  const int bucket = std::min(kBuckets - 1, static_cast<int>(std::bit_width(static_cast<uint64_t>(us))) - 1);
  counts_[std::max(0, bucket)].fetch_add(1, std::memory_order_relaxed);
  const uint64_t n = seen_.fetch_add(1, std::memory_order_relaxed) + 1;
  if (n % kHalveEvery == 0) {
    // Racing records may lose a count here or there: an estimate.
    for (auto& c : counts_) c.store(c.load(std::memory_order_relaxed) / 2, std::memory_order_relaxed);
  }
  if (n % 64 == 0 && n >= kMinSamples) Recompute();
}

std::chrono::microseconds ReadLatency::P99() const {
  uint64_t snapshot[kBuckets], total = 0;
  for (int i = 0; i < kBuckets; ++i) total += snapshot[i] = counts_[i].load(std::memory_order_relaxed);
  if (seen_.load(std::memory_order_relaxed) < kMinSamples || total == 0) return std::chrono::microseconds(0);
  // The smallest bucket with at least 99% of the reads at or below it.
  const uint64_t want = total - total / 100;
  uint64_t below = 0;
  for (int i = 0; i < kBuckets; ++i) {
    below += snapshot[i];
    if (below >= want) return std::chrono::microseconds(int64_t{1} << (i + 1));
  }
  return std::chrono::microseconds(int64_t{1} << kBuckets);
}

void ReadLatency::Recompute() {
  const int64_t p99 = P99().count();
  if (p99 == 0) return;
  delay_us_.store(std::clamp<int64_t>(2 * p99, floor_us_, cap_us_), std::memory_order_relaxed);
}

}  // namespace nasfs
