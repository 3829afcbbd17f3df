#include "fs/router.h"

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

}  // namespace nasfs
