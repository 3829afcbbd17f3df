#include "fs/mirror.h"

#include <cstring>
#include <ctime>

#include <spdlog/spdlog.h>

namespace nasfs {

timespec Mirror::Now() {
  timespec t;
  clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

int Mirror::Apply(const char* what, const std::string& path, Targets targets, const Op& op) {
  targets.master = targets.master && master_->state() != BackendState::kDown;
  targets.backup = targets.backup && backup_->state() != BackendState::kDown;
  if (!targets.master && !targets.backup) return EIO;

  // Both sides are submitted before either is waited on: they run in parallel.
  auto deadline = master_->Deadline();
  std::shared_ptr<Call> m, b;
  if (targets.master) m = master_->Submit([op, be = master_] { return op(*be); }, deadline);
  if (targets.backup) b = backup_->Submit([op, be = backup_] { return op(*be); }, deadline);
  int rm = m ? m->Wait(deadline) : 0;
  int rb = b ? b->Wait(deadline) : 0;
  if (m) master_->Account(rm);
  if (b) backup_->Account(rb);
  mirrored_.fetch_add(1, std::memory_order_relaxed);

  if (m && b && (rm == 0) != (rb == 0)) {
    divergences_.fetch_add(1, std::memory_order_relaxed);
    spdlog::get("fuse")->warn("{} '{}' diverged: master {}, backup {}", what, path,
                              rm ? std::strerror(rm) : "ok", rb ? std::strerror(rb) : "ok");
    if (on_divergence_) on_divergence_(path);
  }
  return m ? rm : rb;
}

}  // namespace nasfs
