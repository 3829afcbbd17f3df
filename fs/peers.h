// What the web servers sharing a pair of NAS tell each other through the NAS
// themselves (issue 5). There is no network between them: each server's
// nasfs writes small files under .nasfs/ on each NAS, and reads the others'.
//
//   .nasfs/heartbeat.<node>            rewritten by every good probe (health.h):
//                                      {"seq","time","node","pid","pending_master","pending_backup"}
//   .nasfs/peers/<node>/lacks-<t>.log  on the NAS that took writes NAS t
//                                      missed: the paths (journal/peer_log.h),
//                                      durable before the write's reply
//   .nasfs/peers/<node>/claim.d/       a takeover of that node's logs under way (a claim)
//   .nasfs/generation/g-<n>, s-<n>     this NAS's generation (the highest g-),
//                                      moved ahead when a server starts
//                                      writing it alone, and the generation
//                                      it was last in step with the other
//                                      NAS (the highest s-)
//   .nasfs/split-brain.claim.d/        (on the master) who resolves a split brain
//
// Several servers change the shared state at once, over NFS: every change is
// the exclusive creation of a new name (O_EXCL, or link(2) of a temp file,
// both atomic on NFSv3+), never a read-modify-write of a file, so no server
// overwrites another's change.
//  - Generations: a bump creates g-<max+1>; marking in step creates s-<g>
//    with the g read *before* the logs were found empty (Nasfs::MarkInStep).
//    A server bumps only after its log is durable, so a bump that marking in
//    step did not see comes with a log it would have seen: the NAS stays
//    ahead.
//  - Claims (leases): <claim>.d/ holds files named by a step number; the
//    highest step says who holds it ("<node> <unix ms>", or "- <unix ms>"
//    once released). Claiming, renewing, releasing and taking over all
//    link(2) the next step: of two servers trying, exactly one succeeds.
//    A claim is stale when its step has not moved for the lease's time by
//    this server's own monotonic clock (no wall clocks compared).
// Files of the old format (generation.json) are still read, as a floor.
//
// Every access runs on the NAS's worker pool under the io_timeout deadline
// (Backend::Run): a hung NAS makes a call fail with ETIMEDOUT, never hang.
//
// Thread-safe.
#pragma once

#include <chrono>
#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "fs/backend.h"
#include "journal/journal.h"
#include "journal/peer_log.h"
#include "util/mutex.h"

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
  std::string claimed_by;               // who holds the takeover claim on its logs, "" if nobody
};

// What one scan of one NAS found.
struct NasView {
  std::map<std::string, PeerSeen> peers;  // by node name, this server included
  Generation gen;
  // What could not be read as it should (junk names, damaged files), one
  // line each: reported in status and the log, otherwise ignored.
  std::vector<std::string> damaged;
};

class Peers {
 public:
  // *master and *backup outlive this.
  Peers(Backend* master, Backend* backup, std::string node);

  const std::string& node() const { return node_; }

  // ---- this server's pending index ----
  // Records, durably, in this server's lacks-<target>.log on the other NAS,
  // that `target` lacks `changes`. A change already listed since the last
  // Clear (the same path, op and scope) costs nothing, and concurrent
  // callers share one append and one fdatasync. The first record of an
  // outage also moves the holder's generation ahead. 0 or an errno (the
  // holder's fault, or ETIMEDOUT).
  int Note(journal::Target target, const std::vector<journal::Change>& changes);
  // Removes this server's lacks-<target>.log: it holds nothing the target
  // lacks any more. No NAS call when nothing was listed since the last
  // Clear, unless `present` (a scan found one left by an earlier run).
  int Clear(journal::Target target, bool present = false);

  // ---- reading what every server left (blocking, bounded) ----
  // Reads the generation first, then heartbeats, logs and claims: marking a
  // NAS in step depends on that order (see above).
  int Scan(Backend& nas, NasView* out);
  // The same, blocking on the caller's thread (start-up, before the pools
  // run).
  static int ScanAt(const Backend& nas, NasView* out);
  int ReadLog(Backend& nas, const std::string& node, journal::Target target, journal::PeerLogContents* out,
              uint64_t* bytes);
  // The same, blocking on the caller's thread (start-up, before the pools
  // run): node's lacks-<target>.log on nas, empty when there is none.
  static int ReadLogAt(const Backend& nas, const std::string& node, journal::Target target,
                       journal::PeerLogContents* out, uint64_t* bytes);
  // Removes node's lacks-<target>.log on nas if it still holds `bytes`
  // bytes (EAGAIN if it grew: its owner is alive and wrote more), or
  // whatever is at its name with kAnyLog (junk that is no log).
  static constexpr uint64_t kAnyLog = UINT64_MAX;
  int RemoveLog(Backend& nas, const std::string& node, journal::Target target, uint64_t bytes);

  // ---- leases ----
  // Claims `rel` (a claim directory <rel>.d under .nasfs) for this server:
  // takes it when free or released, renews it when ours, takes it over when
  // its step has not moved for `ttl` as this server saw it (the first call
  // that sees a step only starts watching it). *got: it is ours now.
  int Claim(Backend& nas, const std::string& rel, std::chrono::milliseconds ttl, bool* got);
  // Releases it if ours.
  int Unclaim(Backend& nas, const std::string& rel);

  // ---- generations ----
  int ReadGeneration(Backend& nas, Generation* out);
  // Records that nas is in step with the other NAS as of `generation`
  // (read before its logs were found empty).
  int MarkInStep(Backend& nas, uint64_t generation);

  static std::string LogPath(const std::string& node, journal::Target target);
  static std::string ClaimPath(const std::string& node);

 private:
  Backend& Holder(journal::Target t) { return t == journal::kMaster ? *backup_ : *master_; }

  Backend* master_;
  Backend* backup_;
  const std::string node_;

  // Group commit of Note (per target).
  struct Index {
    // A change as the log tells it: path, op and scope. A path listed for
    // one op is listed again for another (a chmod after a directory's
    // times moved): a split-brain merge and a takeover act on the ops.
    // A kLinked change is one per inode (its offset); others, one per op.
    using Key = std::tuple<std::string, journal::Op, journal::Scope, uint64_t>;
    static Key KeyOf(const journal::Change& c) {
      return {c.path, c.op, c.scope, c.op == journal::Op::kLinked ? c.offset : 0};
    }
    std::set<Key> listed;             // durable in the log since the last Clear
    std::map<Key, uint64_t> queued;   // in `batch` or being written: the ticket of the batch carrying it
    std::vector<journal::Change> batch;
    bool busy = false;              // a leader is writing
    uint64_t next_ticket = 1;
    uint64_t durable_ticket = 0;     // the last batch written; every earlier one was written or failed
    std::map<uint64_t, int> failed;  // batches that failed, by ticket: their errno
    uint64_t seq = 1;               // record numbers within the log
    bool created = false;           // the log exists since the last Clear
    bool bumped = false;            // the holder's generation is ahead since the last Clear
  };
  Mutex mu_;
  CondVar cv_;
  Index index_[2] GUARDED_BY(mu_);

  // The step each claim had when this server first saw it there (Claim's
  // staleness), by NAS role and claim.
  struct Watched {
    uint64_t step = 0;
    Clock::time_point since;
  };
  Mutex claims_mu_;
  std::map<std::pair<Role, std::string>, Watched> watched_ GUARDED_BY(claims_mu_);
};

}  // namespace nasfs
