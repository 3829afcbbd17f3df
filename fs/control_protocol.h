// The control plane shared by the daemon (fs/control_server) and nasfsctl.
//
// Transport: a SOCK_STREAM unix socket. The client sends one JSON object on
// one line ({"cmd":"status"}\n); the server answers with one JSON object on one
// line and closes. Answers are {"ok":true, ...} or {"ok":false,"error":"..."}.
//
// Discovery: nasfsctl finds nasfs mounts in /proc/self/mounts (type
// fuse.nasfs). For each mount point the daemon writes a registry file,
// RegistryPath(mountpoint), holding {"mountpoint","control","pid"}, so a
// socket moved with -o control=PATH is still found. Without a registry file
// nasfsctl falls back to DefaultControlSocket(mountpoint).
#pragma once

#include <chrono>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "fs/common.h"

namespace nasfs::control {

inline constexpr const char* kRunDir = "/run/nasfs";
inline constexpr const char* kRegistryDir = "/run/nasfs/mounts";
// A request or answer larger than this is refused: the control plane carries
// status, not data.
inline constexpr size_t kMaxMessageBytes = 1 << 20;

// "/var/www/shared" -> "var-www-shared"; "/" -> "-". Bytes outside
// [A-Za-z0-9_.] and '-' itself are written \xNN, as systemd-escape --path does,
// so distinct mount points never share an id. Like systemd-escape --path,
// repeated and trailing slashes are dropped first ("//a/b/" names the same
// directory as "/a/b") and a leading '.' is escaped (no hidden file names).
std::string MountId(const std::string& mountpoint);
std::string DefaultControlSocket(const std::string& mountpoint);  // kRunDir/<id>.sock
// <dir>/<id>.json. `dir` is kRegistryDir everywhere but in tests.
std::string RegistryPath(const std::string& mountpoint, const std::string& dir = kRegistryDir);

struct RegistryEntry {
  std::string mountpoint;
  std::string control;  // socket path
  long pid = 0;
};
// Writes atomically (temp file + rename, so a reader sees the old entry or the
// new one, never a torn one), creating `dir` and its parents (0755).
// Errors are errnos.
[[nodiscard]] Result<void> WriteRegistry(const RegistryEntry& e,
                                         const std::string& dir = kRegistryDir);
// ENOENT when there is no entry; EBADMSG when the file is not a registry entry
// for `mountpoint` (malformed, or written for another mount point).
[[nodiscard]] Result<RegistryEntry> ReadRegistry(const std::string& mountpoint,
                                                 const std::string& dir = kRegistryDir);
// Best effort: a missing entry is not an error.
void RemoveRegistry(const std::string& mountpoint, const std::string& dir = kRegistryDir);

// Mount points of type fuse.nasfs in `mounts_file` (a /proc/mounts-format
// table; /proc/self/mounts but in tests), in mount order, with the octal
// escapes of /proc/mounts (\040 for a space, ...) decoded. An unreadable
// table gives an empty list. A mount point stacked twice appears twice.
std::vector<std::string> ListNasfsMounts(const std::string& mounts_file = "/proc/self/mounts");

// Connects, sends `request`, reads the one-line answer. Every step is bounded
// by timeout_ms, and so is the whole call: one deadline covers connect, send
// and receive (a daemon that hangs never hangs nasfsctl). The answer object is
// returned whatever its "ok" says; errors are only transport and framing
// failures (no daemon, permission, timeout, oversized or malformed answer),
// as a message fit for an operator that names the socket.
[[nodiscard]] tl::expected<nlohmann::json, std::string> Call(const std::string& socket_path,
                                                             const nlohmann::json& request,
                                                             int timeout_ms);

// The framing both ends use, on a non-blocking stream socket. Shared so the
// client and the server cannot drift apart.
namespace wire {
using Deadline = std::chrono::steady_clock::time_point;

// Reads one line: the bytes before the first '\n', or before end of file (or
// a reset) when the peer closes without one (empty if it sent nothing). Bytes
// after the '\n' are discarded: one message per connection. Errors: ETIMEDOUT at the deadline,
// EMSGSIZE once the line exceeds max_bytes, ECANCELED when wake_fd (if >= 0)
// becomes readable, or the errno of a failed read.
[[nodiscard]] Result<std::string> ReadLine(int fd, Deadline deadline, size_t max_bytes,
                                           int wake_fd = -1);
// Writes all of `data` (MSG_NOSIGNAL: a vanished peer is EPIPE, not SIGPIPE).
// ETIMEDOUT at the deadline.
[[nodiscard]] Result<void> WriteAll(int fd, std::string_view data, Deadline deadline);
// One JSON line. Strings that are not valid UTF-8 are replaced, not thrown on.
std::string Encode(const nlohmann::json& message);
}  // namespace wire

}  // namespace nasfs::control
