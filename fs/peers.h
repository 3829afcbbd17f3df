// What the web servers sharing a pair of NAS tell each other through the NAS
// themselves (issue 5). There is no network between them: each server's
// nasfs writes small files under .nasfs/ on each NAS, and reads the others'.
//
//   .nasfs/heartbeat.<node>            rewritten by every good probe (health.h):
//                                      {"seq","time","node","pid","pending_master","pending_backup"}
//   .nasfs/peers/<node>/lacks-<t>.log  on the NAS that took writes NAS t
//                                      missed: the paths (journal/peer_log.h),
//                                      durable before the write's reply
//   .nasfs/peers/<node>/claim          a takeover of that node's logs under way
//   .nasfs/generation.json             {"generation","in_step"}: this NAS's
//                                      generation, bumped when a server starts
//                                      writing it alone; in_step is the
//                                      generation it last had in step with
//                                      the other NAS
//   .nasfs/split-brain.claim           (on the master) who resolves a split brain
//
// Every access runs on the NAS's worker pool under the io_timeout deadline
// (Backend::Run): a hung NAS makes a call fail with ETIMEDOUT, never hang.
//
// Thread-safe.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <vector>

#include "fs/backend.h"
#include "journal/journal.h"
#include "journal/peer_log.h"

namespace nasfs {

// A NAS's generation (DRBD's data generation, simplified to a counter).
// Two NAS that have both moved past the generation they last had in step
// each took writes the other lacks: a split brain.
struct Generation {
  uint64_t generation = 0;
  uint64_t in_step = 0;
  bool ahead() const { return generation > in_step; }
};

// What one NAS shows of one server.
struct PeerSeen {
  std::string beat;                     // its heartbeat file, "" if none
  bool lacks[2] = {false, false};       // a non-empty lacks-<master|backup>.log here
  uint64_t lacks_bytes[2] = {0, 0};
  std::string claim;                    // its claim file ("<node> <unix ms>"), "" if none
};

// What one scan of one NAS found.
struct NasView {
  std::map<std::string, PeerSeen> peers;  // by node name, this server included
  Generation gen;
};

class Peers {
 public:
  // *master and *backup outlive this.
  Peers(Backend* master, Backend* backup, std::string node);

  const std::string& node() const { return node_; }

  // ---- this server's pending index ----
  // Records, durably, in this server's lacks-<target>.log on the other NAS,
  // that `target` lacks `changes`. A path already listed since the last
  // Clear costs nothing, and concurrent callers share one append and one
  // fdatasync. The first record of an outage also moves the holder's
  // generation ahead. 0 or an errno (the holder's fault, or ETIMEDOUT).
  int Note(journal::Target target, const std::vector<journal::Change>& changes);
  // Removes this server's lacks-<target>.log: it holds nothing the target
  // lacks any more. No NAS call when nothing was listed since the last
  // Clear, unless `present` (a scan found one left by an earlier run).
  int Clear(journal::Target target, bool present = false);

  // ---- reading what every server left (blocking, bounded) ----
  int Scan(Backend& nas, NasView* out);
  int ReadLog(Backend& nas, const std::string& node, journal::Target target, journal::PeerLogContents* out,
              uint64_t* bytes);
  // Removes node's lacks-<target>.log on nas if it still holds `bytes`
  // bytes (EAGAIN if it grew: its owner is alive and wrote more).
  int RemoveLog(Backend& nas, const std::string& node, journal::Target target, uint64_t bytes);

  // ---- leases ----
  // Claims the file `rel` (under .nasfs) for this server: created if absent,
  // taken over if its holder's claim is older than `ttl`. *got: it is ours.
  int Claim(Backend& nas, const std::string& rel, std::chrono::milliseconds ttl, bool* got);
  int Unclaim(Backend& nas, const std::string& rel);

  // ---- generations ----
  int ReadGeneration(Backend& nas, Generation* out);
  int WriteGeneration(Backend& nas, const Generation& g);

  static std::string LogPath(const std::string& node, journal::Target target);
  static std::string ClaimPath(const std::string& node);

 private:
  Backend& Holder(journal::Target t) { return t == journal::kMaster ? *backup_ : *master_; }

  Backend* master_;
  Backend* backup_;
  const std::string node_;

  // Group commit of Note (per target).
  struct Index {
    std::set<std::string> listed;   // durable in the log since the last Clear
    std::map<std::string, uint64_t> queued;  // in `batch` or being written: the ticket of the batch carrying it
    std::vector<journal::Change> batch;
    bool busy = false;              // a leader is writing
    uint64_t next_ticket = 1;
    uint64_t durable_ticket = 0;     // the last batch written; every earlier one was written or failed
    std::map<uint64_t, int> failed;  // batches that failed, by ticket: their errno
    uint64_t seq = 1;               // record numbers within the log
    bool created = false;           // the log exists since the last Clear
    bool bumped = false;            // the holder's generation is ahead since the last Clear
  };
  std::mutex mu_;
  std::condition_variable cv_;
  Index index_[2];  // guarded by mu_
};

}  // namespace nasfs
