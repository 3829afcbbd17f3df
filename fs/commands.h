// The control socket's commands over a running Nasfs: the request each
// `nasfsctl` command sends, checked, and the Nasfs call that answers it.
#pragma once

#include <memory>

#include "fs/control_server.h"
#include "fs/nasfs.h"
#include "fs/options.h"

namespace nasfs {

// A control server on opts.control_socket (for opts.control_gid) answering
// status, journal, replay, conflicts and verify from fs, which must outlive
// it. status is answered on the control thread from snapshots; journal,
// replay, conflicts and verify may wait on locks or on the NAS (verify for
// minutes), so each runs on a thread of its own and never holds up a
// status. Not listening yet: Listen() and Start() are the caller's.
std::unique_ptr<control::ControlServer> NewControlServer(const Options& opts, Nasfs& fs);

}  // namespace nasfs
