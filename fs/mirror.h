// Applies one mutation to both NAS, in parallel, before the reply.
//
// Each side runs the same operation on its own worker pool under the
// io_timeout deadline, and stamps the mirror's one timestamp on what it
// changed, so both NAS carry identical mtimes (nginx builds ETag and
// Last-Modified from them).
//
// Outcome rules, in order:
//  1. Both sides ran and agree (success, or the same ordinary errno such as
//     EEXIST or ENOSPC on both): that is the answer.
//  2. A side that faulted (EIO, ENOTCONN, a missed deadline, ...) or cannot
//     take writes (ENOSPC, EDQUOT, EROFS) while the other did not is
//     reported to the hooks (it goes down) and what it missed is journaled;
//     the other side's result is the answer, so the application sees
//     success when one NAS took the change and the journal holds it.
//  3. Otherwise the master's result is the answer, and a backup whose
//     result differs is treated as having missed the change (it goes down
//     and is brought back in line from the master).
// A side that is not taking writes (down) is skipped, and what it misses is
// journaled before the other side runs. A side the caller leaves out (a
// copy has not reached the path, or the caller journaled it already) is
// skipped without a record.
// Both sides out: EIO at once. A change the journal cannot record is never
// acknowledged: the journal's errno (ENOSPC, EIO) is the answer.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <initializer_list>
#include <string>

#include "fs/backend.h"
#include "fs/mutation.h"
#include "journal/journal.h"

namespace nasfs {

class Mirror {
 public:
  // One side's work: runs on that NAS's worker thread.
  using Op = std::function<int(const Backend&)>;
  // Told that a NAS failed: it should go down. Called on the FUSE thread.
  using FaultFn = std::function<void(Backend& nas, int err, const std::string& what)>;
  // Journals that nas lacks `changes`, durably: 0 or an errno.
  using MissedFn = std::function<int(Backend& nas, const std::vector<journal::Change>& changes)>;

  // *master and *backup must outlive the mirror.
  Mirror(Backend* master, Backend* backup, FaultFn on_fault, MissedFn on_missed)
      : master_(master), backup_(backup), on_fault_(std::move(on_fault)), on_missed_(std::move(on_missed)) {}

  struct Targets {
    bool master = true;
    bool backup = true;
  };
  // Runs op on the targeted NAS in parallel; `op` must capture by value what
  // it uses (it may outlive the call when a NAS misses its deadline).
  // `changes` says what the op changes (journaled for a side that misses it).
  // *journaled, if given, says for which sides `changes` were journaled.
  int Apply(Mutation what, const std::vector<journal::Change>& changes, Targets targets, const Op& op,
            Targets* journaled = nullptr);

  // The timestamp a mutation stamps on both NAS.
  static timespec Now();
  // A NAS taking writes: healthy, or the target of a running copy.
  static bool Writable(const Backend& b);
  // An errno that means a NAS cannot take this write, whatever it is.
  static bool IsWriteFault(int e);

  uint64_t mirrored_ops() const { return mirrored_.load(); }
  uint64_t divergences() const { return divergences_.load(); }

 private:
  // Journals changes for side i (0 master, 1 backup), noted in *journaled;
  // nothing for an empty list. 0 or the journal's errno.
  int JournalFor(int i, const std::vector<journal::Change>& changes, Targets* journaled);
  // Apply's verdict on the two sides' results r (run[i]: side i was
  // sent the op): agreement, faults, or a disagreement whose wrong side
  // is journaled and faulted. The errno for the application.
  int Judge(const char* what, const std::vector<journal::Change>& changes, const bool run[2], const int r[2],
            Targets* journaled);

  Backend* master_;
  Backend* backup_;
  FaultFn on_fault_;
  MissedFn on_missed_;
  std::atomic<uint64_t> mirrored_{0}, divergences_{0};
};

}  // namespace nasfs
