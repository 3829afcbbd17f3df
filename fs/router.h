// Decides which NAS serves a read.
//
// Today: the master while it is healthy, otherwise the backup if it is
// healthy. A syncing backup (the target of a first copy) never serves reads.
// Issue 3 adds health probes and in-band failover behind the same Pick().
#pragma once

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

}  // namespace nasfs
