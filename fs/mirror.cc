#include "fs/mirror.h"

#include <cstring>
#include <ctime>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fs/log.h"

namespace nasfs {

timespec Mirror::Now() {
  // The coarse clock is the one the kernel stamps ctime with: a finer one
  // could give an mtime later than the ctime the same change sets, which no
  // real filesystem shows (pjdfstest checks it).
  timespec t;
  clock_gettime(CLOCK_REALTIME_COARSE, &t);
  return t;
}

bool Mirror::Writable(const Backend& b) {
  // A NAS being replayed onto takes the writes its caller let through
  // (those touching nothing still pending: see Nasfs::Mutate).
  auto s = b.state();
  return s == BackendState::kHealthy || s == BackendState::kSyncing || s == BackendState::kRecovering;
}

bool Mirror::IsWriteFault(int e) { return IsFaultErrno(e) || e == ENOSPC || e == EDQUOT || e == EROFS; }

int Mirror::JournalFor(int i, const std::vector<journal::Change>& changes, Targets* journaled) {
  if (changes.empty()) return 0;
  (i == 0 ? journaled->master : journaled->backup) = true;
  return on_missed_(i == 0 ? *master_ : *backup_, changes);
}

int Mirror::Apply(Mutation kind, const std::vector<journal::Change>& changes, Targets targets, const Op& op,
                  Targets* journaled) {
  Backend* side[2] = {master_, backup_};
  Targets none{false, false};
  if (!journaled) journaled = &none;
  *journaled = none;
  bool want[2] = {targets.master, targets.backup};
  bool run[2] = {false, false};
  for (int i = 0; i < 2; ++i) run[i] = want[i] && Writable(*side[i]);
  // Nothing applied anywhere: nothing to record. (Recording it on both
  // would leave two returning NAS each waiting to be replayed from the
  // other.)
  if (!run[0] && !run[1]) return EIO;
  // A change is journaled for a side only when the other side may apply
  // it, and before the first byte reaches that other side.
  for (int i = 0; i < 2; ++i)
    if (want[i] && !run[i])
      if (int e = JournalFor(i, changes, journaled)) return e;

  // Both sides are submitted before either is waited on: they run in parallel.
  auto deadline = master_->Deadline();
  std::shared_ptr<Call> call[2];
  for (int i = 0; i < 2; ++i)
    if (run[i]) call[i] = side[i]->Submit([op, be = side[i]] { return op(*be); }, deadline);
  int r[2] = {0, 0};
  for (int i = 0; i < 2; ++i)
    if (run[i]) {
      r[i] = call[i]->Wait(deadline);
      side[i]->Account(r[i]);
    }
  mirrored_.fetch_add(1, std::memory_order_relaxed);
  return Judge(MutationName(kind), changes, run, r, journaled);
}

int Mirror::Judge(const char* what, const std::vector<journal::Change>& changes, const bool run[2], const int r[2],
                  Targets* journaled) {
  Backend* side[2] = {master_, backup_};
  // 1. Agreement.
  if (run[0] && run[1] && r[0] == r[1] && !IsFaultErrno(r[0])) return r[0];
  if (!run[0] || !run[1]) {
    int i = run[0] ? 0 : 1;
    if (IsFaultErrno(r[i])) {
      // The other side already has the path recorded; this one failed, so
      // it is not recorded here (see above).
      on_fault_(*side[i], r[i], what);
      return EIO;
    }
    return r[i];
  }
  // 2. Faults.
  bool fault[2] = {IsWriteFault(r[0]), IsWriteFault(r[1])};
  if (fault[0] && fault[1]) {
    // Neither took it, and the application is told so. A side that
    // faulted may hold part of it; no side is a sound source for the
    // other, so nothing is journaled (see docs/ARCHITECTURE.md).
    for (int i = 0; i < 2; ++i)
      if (IsFaultErrno(r[i])) on_fault_(*side[i], r[i], what);
    // Both full is an answer the application can act on; both broken is EIO.
    return IsFaultErrno(r[0]) ? EIO : r[0];
  }
  divergences_.fetch_add(1, std::memory_order_relaxed);
  for (int i = 0; i < 2; ++i)
    if (fault[i]) {
      int e = JournalFor(i, changes, journaled);
      on_fault_(*side[i], r[i], what);
      // Not journaled: the other NAS holds a change nothing will carry
      // over, so the application must not be told it succeeded.
      return e ? e : r[1 - i];
    }
  // 3. Ordinary disagreement: the master is right and the backup missed
  // it, unless the master is being replayed onto and the backup is
  // healthy: then the master may lack what the change builds on (a link's
  // source not replayed yet), and the backup is right. A side being
  // replayed onto is behind by definition: the change is journaled for it
  // and the replay brings it in line, with no fault (taking a healthy
  // backup down for a recovering master's ENOENT left no NAS at all).
  const int right = side[0]->state() == BackendState::kRecovering &&
                            side[1]->state() == BackendState::kHealthy
                        ? 1
                        : 0;
  const int wrong = 1 - right;
  std::string p = changes.empty() ? "" : changes.front().path;
  Logger("fuse")->warn("{} '{}': master {}, backup {}; the {} will be brought in line", what, ShownPath(p),
                       r[0] ? std::strerror(r[0]) : "ok", r[1] ? std::strerror(r[1]) : "ok", side[wrong]->name());
  int e = JournalFor(wrong, changes, journaled);
  if (changes.empty() || side[wrong]->state() != BackendState::kRecovering)
    on_fault_(*side[wrong], r[wrong] ? r[wrong] : EIO,
              fmt::format("{} disagreed with the {}", what, side[right]->name()));
  return e ? e : r[right];
}

}  // namespace nasfs
