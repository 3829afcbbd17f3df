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
  // a JSON object (anything else is refused as a bad request before it): it
  // must be quick (status answers from snapshots), since every other
  // connection waits while it runs. An exception, or an answer that is not an
  // object, becomes {"ok":false,"error":"internal error: ..."}; the server
  // keeps serving.
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
  // Connections open at once, beside the long requests' (at most
  // kMaxLongRequests more). When one more arrives, the oldest that has not
  // yet sent a complete request is closed to make room (else the oldest
  // still taking its answer): nasfsctl sends its request as soon as it is
  // connected, so a flood of idle connections cannot lock it out. It also
  // bounds what the server buffers: kMaxMessageBytes per connection.
  static constexpr size_t kMaxConnections = 64;
  // How long a connection may take to send its complete request, counted
  // from its accept, and then to take its whole answer, counted from when
  // the answer is ready. A request cut off gets a "bad request" answer; an
  // answer not taken in time is dropped with its connection.
  static constexpr std::chrono::milliseconds kIoTimeout{2000};

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
  // succeeded. One event loop serves every connection at once, each with its
  // own buffers and deadlines (kIoTimeout), and never blocks on a client: a
  // client that stalls, sends half a line or never reads its answer costs
  // only itself. A complete request for a long command is then answered on
  // its own thread; any other, inline on the server thread. Nothing thrown
  // on the server thread ends it: a failure costs the connection it concerns
  // (logged), and the loop goes on.
  void Start();
  // Idempotent. Waits for the inline request being handled, if any, to
  // finish, and for the long requests, which are told to stop. Answers not yet
  // delivered get one attempt that does not wait (a client reading gets them,
  // as they fit in its socket buffer), and connections still sending are
  // closed. Safe to call from a handler or a long handler.
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
  using Clock = std::chrono::steady_clock;

  // One client connection, from accept to its answer's last byte. Server
  // thread only.
  struct Connection {
    enum class Phase {
      kReading,  // taking the request line, until `deadline`
      kWriting,  // sending `out`, until `deadline`
      kDone,     // closed, or handed to a long request: erased at the end of the round
    };
    UniqueFd fd;
    Phase phase = Phase::kReading;
    std::string in;    // the request line so far (kReading)
    std::string out;   // the encoded answer (kWriting)
    size_t sent = 0;   // bytes of `out` already sent
    Clock::time_point deadline;
  };

  // One long request in flight. The server thread owns the connection (it
  // polls it for the client hanging up) and closes it once the thread is
  // joined, so the fd number is never reused under the poll; once joined,
  // the connection and the answer become a Connection the loop writes.
  struct LongRequest {
    UniqueFd conn;
    std::stop_source stop;
    std::thread thread;
    // The encoded answer, empty when there is none to send. Written by the
    // thread before it sets `done`; read by the server thread after seeing it.
    std::string answer;
    std::atomic<bool> answering{false};  // the handler has returned
    std::atomic<bool> done{false};       // the thread is about to end: join it
  };

  void Serve();
  // Rounds of ServeOnce() until it says stop. What a round throws is logged,
  // and the next round comes after a short pause (it may be out of memory).
  void ServeLoop();
  // One poll and what it found ready or overdue. False once Stop() was called.
  bool ServeOnce();
  // A connection past its deadline: a request cut off is answered "bad
  // request"; an answer not taken is dropped with its connection.
  void ExpireConnections(Clock::time_point now);
  // Takes the connections waiting on the listener, making room for them.
  void AcceptConnections(Clock::time_point now);
  // Closes the oldest connection that has not sent a complete request (read
  // first: one that has is answered instead), with a "busy" answer if it can
  // go out at once; else the oldest still being answered.
  void MakeRoom();
  // Reads what `c` sent; a complete line (or end of file) is dispatched.
  void OnReadable(Connection& c);
  // Sends what the socket takes of c's answer; closes `c` once all is sent.
  void OnWritable(Connection& c);
  // Parses the request line and answers it, inline or on a long request's
  // thread (which takes c's fd).
  void Dispatch(Connection& c, const std::string& line);
  // Queues the answer on `c` and starts sending it.
  void Answer(Connection& c, const nlohmann::json& answer);
  void Close(Connection& c);
  // The one-line answer, or an error object's when it cannot be encoded or is
  // larger than kMaxMessageBytes. Throws only std::bad_alloc.
  std::string EncodeAnswer(const nlohmann::json& answer) const;
  // Empty when allowed; otherwise why not, for the refusal answer.
  std::string PeerRefusal(int fd) const;
  // Runs a handler, turning exceptions and non-objects into failures and
  // adding "ok":true when the handler did not set "ok". Throws only
  // std::bad_alloc (when even the failure cannot be built).
  nlohmann::json Complete(const nlohmann::json& request,
                          const std::function<nlohmann::json()>& handler) const;
  // Joins the long requests that finished and queues their answers (server
  // thread only).
  void ReapLongRequests();
  // Tells every long request to stop, joins them, and gives each answer and
  // every queued one a last attempt that does not wait (server thread only).
  void StopAll();

  std::string path_;
  gid_t allowed_gid_;
  Handler handler_;
  UniqueFd listen_fd_;
  UniqueFd stop_event_;  // eventfd that wakes Serve() for shutdown
  UniqueFd reap_event_;  // eventfd a long request's thread signals when it is done
  std::map<std::string, LongHandler> long_handlers_;  // set before Start()
  // The rest is the server thread's alone while it runs.
  std::list<std::unique_ptr<LongRequest>> long_requests_;
  std::list<Connection> connections_;  // in accept order: the front is the oldest
  // accept() ran out of descriptors: the listener rests until then instead of
  // waking the loop at once again.
  Clock::time_point accept_paused_until_{};
  // Connections closed to make room, not yet logged; logged at most every
  // few seconds, since a flood would otherwise flood the log too.
  size_t evicted_unlogged_ = 0;
  Clock::time_point evictions_logged_{};
  std::thread thread_;
  std::atomic<bool> running_{false};
  // The socket file this server created: the destructor unlinks path_ only
  // while it is still that file, never a successor's socket.
  bool bound_ = false;
  dev_t bound_dev_ = 0;
  ino_t bound_ino_ = 0;
};

}  // namespace nasfs::control
