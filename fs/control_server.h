// The daemon's control socket: accepts connections on a unix socket, checks the
// caller, and hands each one-line JSON request to a handler.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <string>
#include <thread>

#include <nlohmann/json.hpp>

#include "fs/common.h"

namespace nasfs::control {

class ControlServer {
 public:
  // Returns the answer object; the server adds "ok":true unless the handler
  // set "ok" itself. Called on the server thread, one request at a time, with
  // a JSON object (anything else is refused as a bad request before it). An
  // exception, or an answer that is not an object, becomes
  // {"ok":false,"error":"internal error: ..."}; the server keeps serving.
  using Handler = std::function<nlohmann::json(const nlohmann::json& request)>;

  // Only root, or members of allowed_gid (primary or supplementary) when it is
  // not (gid_t)-1, may talk to the socket: the file is 0600 root:root, or 0660
  // root:allowed_gid, and SO_PEERCRED is checked on every connection as well.
  ControlServer(std::string socket_path, gid_t allowed_gid, Handler handler);
  // Stops the thread, closes and unlinks the socket (only if the file is still
  // the one Listen() created). Start/Stop/destruction come from one owner thread.
  ~ControlServer();
  ControlServer(const ControlServer&) = delete;
  ControlServer& operator=(const ControlServer&) = delete;

  // Binds and listens. Fails (with a message) when the path is held by a live
  // server; a stale socket file left by a dead daemon is replaced. Creates the
  // parent directory (0755) when missing.
  [[nodiscard]] tl::expected<void, std::string> Listen();
  // Serves on its own thread until Stop() or destruction. Listen() must have
  // succeeded. Each connection is handled inline, one at a time, and is cut
  // off after kIoTimeout, so a client that stalls delays others by at most
  // that much and never wedges the server.
  void Start();
  // Idempotent. Waits for the request being handled, if any, to finish
  // (a stalled read is abandoned at once). Safe to call from the handler.
  void Stop();

  const std::string& path() const { return path_; }

 private:
  // How long one connection may take to send its request, and to take the
  // answer.
  static constexpr std::chrono::milliseconds kIoTimeout{2000};

  void Serve();
  void HandleConnection(int fd);
  // Empty when allowed; otherwise why not, for the refusal answer.
  std::string PeerRefusal(int fd) const;
  nlohmann::json Answer(const std::string& line);

  std::string path_;
  gid_t allowed_gid_;
  Handler handler_;
  UniqueFd listen_fd_;
  UniqueFd stop_event_;  // eventfd that wakes Serve() for shutdown
  std::thread thread_;
  std::atomic<bool> running_{false};
  // The socket file this server created: the destructor unlinks path_ only
  // while it is still that file, never a successor's socket.
  bool bound_ = false;
  dev_t bound_dev_ = 0;
  ino_t bound_ino_ = 0;
};

}  // namespace nasfs::control
