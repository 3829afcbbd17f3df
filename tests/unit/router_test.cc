// ReadLatency: the hedge delay follows a NAS's recent read latency, within
// its floor and cap.
#include <chrono>

#include <gtest/gtest.h>

#include "fs/router.h"

namespace nasfs {
namespace {

using std::chrono::microseconds;
using std::chrono::milliseconds;

constexpr milliseconds kFloor{10}, kCap{100};

void RecordMany(ReadLatency& l, milliseconds each, int n) {
  for (int i = 0; i < n; ++i) l.Record(each);
}

TEST(ReadLatencyTest, UntilEnoughReadsAreSeenTheDelayIsTheCap) {
  ReadLatency l(kFloor, kCap);
  EXPECT_EQ(l.HedgeDelay(), kCap);
  EXPECT_EQ(l.P99().count(), 0);
  RecordMany(l, milliseconds(1), ReadLatency::kMinSamples - 1);
  EXPECT_EQ(l.HedgeDelay(), kCap);
}

TEST(ReadLatencyTest, AQuickNasIsHedgedAfterTheFloor) {
  ReadLatency l(kFloor, kCap);
  RecordMany(l, milliseconds(1), 1000);
  EXPECT_EQ(l.P99(), microseconds(1024));  // 1 ms falls in [512, 1024) us
  EXPECT_EQ(l.HedgeDelay(), kFloor);
}

TEST(ReadLatencyTest, TheDelayIsTwiceTheP99BucketBetweenFloorAndCap) {
  ReadLatency l(kFloor, kCap);
  RecordMany(l, milliseconds(20), 1000);  // [16384, 32768) us
  EXPECT_EQ(l.P99(), microseconds(32768));
  EXPECT_EQ(l.HedgeDelay(), microseconds(65536));
}

TEST(ReadLatencyTest, OneSlowReadInAHundredSetsThePercentileButFewerDoNot) {
  ReadLatency quick(kFloor, kCap), tail(kFloor, kCap);
  for (int i = 0; i < 2000; ++i) {
    quick.Record(i % 500 == 0 ? milliseconds(40) : milliseconds(1));  // 0.2% slow
    tail.Record(i % 50 == 0 ? milliseconds(40) : milliseconds(1));    // 2% slow
  }
  EXPECT_EQ(quick.HedgeDelay(), kFloor);
  EXPECT_EQ(tail.HedgeDelay(), kCap) << "p99 in [32, 64) ms: twice its edge is over the cap";
}

TEST(ReadLatencyTest, ASlowNasIsHedgedAfterTheCapAndTheDelayComesBackWhenItRecovers) {
  ReadLatency l(kFloor, kCap);
  RecordMany(l, milliseconds(300), 2000);
  EXPECT_EQ(l.HedgeDelay(), kCap);
  // Old reads fade (counts halve every kHalveEvery reads).
  RecordMany(l, milliseconds(1), 6 * ReadLatency::kHalveEvery);
  EXPECT_EQ(l.HedgeDelay(), kFloor);
}

TEST(ReadLatencyTest, AFloorAboveTheCapGivesTheCap) {
  ReadLatency l(milliseconds(50), milliseconds(20));
  RecordMany(l, milliseconds(1), 1000);
  EXPECT_EQ(l.HedgeDelay(), milliseconds(20));
}

TEST(ReadLatencyTest, ZeroAndHugeDurationsStayInRange) {
  ReadLatency l(kFloor, kCap);
  RecordMany(l, milliseconds(0), 500);
  l.Record(std::chrono::hours(24 * 365));
  l.Record(std::chrono::steady_clock::duration(-5));
  EXPECT_EQ(l.HedgeDelay(), kFloor);
}

}  // namespace
}  // namespace nasfs
