// The daemon's named loggers, one per subsystem: "fuse", "health",
// "journal", "replay", "control", "sync" (fs/main.cc registers them with
// their sinks).
#pragma once

#include <memory>

#include <spdlog/spdlog.h>

namespace nasfs {

// The logger registered under `name`; before main has registered it (and in
// unit tests) an unregistered copy of the default logger. Never null: a
// log call must not be what ends the daemon.
std::shared_ptr<spdlog::logger> Logger(const char* name);

}  // namespace nasfs
