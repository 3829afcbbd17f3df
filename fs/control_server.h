// The daemon's control socket: accepts connections on a unix socket, checks the
// caller, and hands each one-line JSON request to a handler.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <stop_token>
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
  // A long request (a verify walking both trees for minutes) gets a thread
  // of its own, so it never holds up the requests of other clients. Its
  // handler is told to stop, through `stop`, when the server stops or its
  // client hangs up (nobody is left to read the answer); it should then
  // return soon: Stop() waits for it. Its answer is completed as a
  // Handler's and sent if the client is still there.
  using LongHandler =
      std::function<nlohmann::json(const nlohmann::json& request, std::stop_token stop)>;
  // Long requests running at once; one more is refused as busy.
  static constexpr size_t kMaxLongRequests = 4;

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
  // Before Start(): requests whose "cmd" is `cmd` go to `handler`, on a
  // thread of their own, instead of to the Handler.
  void AddLongCommand(std::string cmd, LongHandler handler);
  // Serves on its own thread until Stop() or destruction. Listen() must have
  // succeeded. Each connection's request is read inline, one at a time, and
  // is cut off after kIoTimeout, so a client that stalls delays others by at
  // most that much and never wedges the server. A request for a long command
  // is then answered on its own thread; any other, inline.
  void Start();
  // Idempotent. Waits for the request being handled, if any, to finish
  // (a stalled read is abandoned at once), and for the long requests, which
  // are told to stop. Safe to call from a handler or a long handler.
  void Stop();

  const std::string& path() const { return path_; }

  // Helpers for handlers.
  // request[key] as a count: `fallback` when absent or null; an error
  // message (for a bad request answer) when it is not an integer in [0, max].
  static tl::expected<size_t, std::string> CountArgument(const nlohmann::json& request,
                                                         const char* key, size_t fallback,
                                                         size_t max);
  // Drops elements from the end of answer[list_key] (an array) until the
  // answer fits one control message, and then sets answer["truncated"] to
  // true. An answer that fits, or has no such array, is left alone.
  static void TrimToFit(nlohmann::json& answer, const char* list_key);

 private:
  // How long one connection may take to send its request, and to take the
  // answer.
  static constexpr std::chrono::milliseconds kIoTimeout{2000};

  // One long request in flight. The server thread owns the connection (it
  // polls it for the client hanging up) and closes it once the thread is
  // joined, so the fd number is never reused under the poll.
  struct LongRequest {
    UniqueFd conn;
    std::stop_source stop;
    std::thread thread;
    std::atomic<bool> answering{false};  // the handler has returned
    std::atomic<bool> done{false};       // the thread is about to end: join it
  };

  void Serve();
  void ServeLoop();
  // Reads the request on `conn` and answers it, or hands it to a long
  // request (taking conn).
  void HandleConnection(UniqueFd& conn);
  // Writes the one-line answer (an error object when it cannot be encoded).
  void Reply(int fd, const nlohmann::json& answer) const;
  // Empty when allowed; otherwise why not, for the refusal answer.
  std::string PeerRefusal(int fd) const;
  // Runs a handler, turning exceptions and non-objects into failures and
  // adding "ok":true when the handler did not set "ok".
  nlohmann::json Complete(const nlohmann::json& request,
                          const std::function<nlohmann::json()>& handler) const;
  // Joins the long requests that finished (server thread only).
  void ReapLongRequests();
  // Tells every long request to stop and joins them (server thread only).
  void StopLongRequests();

  std::string path_;
  gid_t allowed_gid_;
  Handler handler_;
  UniqueFd listen_fd_;
  UniqueFd stop_event_;  // eventfd that wakes Serve() for shutdown
  UniqueFd reap_event_;  // eventfd a long request's thread signals when it is done
  std::map<std::string, LongHandler> long_handlers_;  // set before Start()
  std::list<std::unique_ptr<LongRequest>> long_requests_;  // server thread only
  std::thread thread_;
  std::atomic<bool> running_{false};
  // The socket file this server created: the destructor unlinks path_ only
  // while it is still that file, never a successor's socket.
  bool bound_ = false;
  dev_t bound_dev_ = 0;
  ino_t bound_ino_ = 0;
};

}  // namespace nasfs::control
