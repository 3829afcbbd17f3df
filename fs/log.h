// The daemon's named loggers, one per subsystem: "fuse", "health",
// "journal", "replay", "control", "sync" (fs/main.cc registers them with
// their sinks).
#pragma once

#include <memory>
#include <string>
#include <string_view>

#include <spdlog/spdlog.h>

namespace nasfs {

// The logger registered under `name`; before main has registered it (and in
// unit tests) an unregistered copy of the default logger. Never null: a
// log call must not be what ends the daemon.
std::shared_ptr<spdlog::logger> Logger(const char* name);

// A path from a NAS (any bytes a user chose, any length) as shown in a log
// line or a status message: control bytes and backslashes as \xNN, and a
// path longer than kShownPathBytes cut to its two ends and its length.
// Only ever shown, never used to find anything.
inline constexpr size_t kShownPathBytes = 256;
std::string ShownPath(std::string_view path);

}  // namespace nasfs
