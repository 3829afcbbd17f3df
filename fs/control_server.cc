#include "fs/control_server.h"

#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cassert>
#include <cerrno>
#include <cstring>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fs/control_protocol.h"

namespace nasfs::control {
namespace {

using Clock = std::chrono::steady_clock;

// The daemon registers the "control" logger with its sinks at start-up; until
// it has (or in tests) we log through an unregistered copy of the default
// logger, so the daemon can still register the name later.
std::shared_ptr<spdlog::logger> Log() {
  if (auto l = spdlog::get("control")) return l;
  static const std::shared_ptr<spdlog::logger> fallback =
      spdlog::default_logger()->clone("control");
  return fallback;
}

// The server whose long request this thread runs, if any: Stop() called
// there must not wait for the server thread, which waits for this one.
thread_local const ControlServer* tls_long_request_of = nullptr;

nlohmann::json Failure(std::string error) {
  return {{"ok", false}, {"error", std::move(error)}};
}

// mkdir -p; directories it creates get `mode`.
tl::expected<void, std::string> MakeParentDirs(const std::string& path, mode_t mode) {
  size_t last = path.rfind('/');
  if (last == std::string::npos || last == 0) return {};
  std::string dir = path.substr(0, last);
  for (size_t pos = 1;; ++pos) {
    pos = dir.find('/', pos);
    std::string prefix = dir.substr(0, pos);
    if (::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      return tl::unexpected(
          fmt::format("cannot create directory {}: {}", prefix, std::strerror(errno)));
    }
    if (pos == std::string::npos) break;
  }
  return {};
}

// The groups of `uid` in the user database, its primary group included.
// Empty when the user is unknown.
std::vector<gid_t> GroupsOf(uid_t uid) {
  long hint = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(hint > 0 ? static_cast<size_t>(hint) : 16384);
  passwd pw{};
  passwd* found = nullptr;
  for (;;) {
    int rc = ::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found);
    if (rc == ERANGE && buf.size() < (1u << 20)) {
      buf.resize(buf.size() * 2);
      continue;
    }
    if (rc != 0 || found == nullptr) return {};
    break;
  }
  std::vector<gid_t> groups(64);
  for (;;) {
    int n = static_cast<int>(groups.size());
    if (::getgrouplist(pw.pw_name, pw.pw_gid, groups.data(), &n) >= 0) {
      groups.resize(static_cast<size_t>(n));
      return groups;
    }
    // n now holds the number needed.
    if (n <= static_cast<int>(groups.size()) || n > 65536) return {};
    groups.resize(static_cast<size_t>(n));
  }
}

}  // namespace

ControlServer::ControlServer(std::string socket_path, gid_t allowed_gid, Handler handler)
    : path_(std::move(socket_path)), allowed_gid_(allowed_gid), handler_(std::move(handler)) {}

ControlServer::~ControlServer() {
  Stop();
  listen_fd_.reset();
  if (bound_) {
    struct stat st;
    if (::lstat(path_.c_str(), &st) == 0 && st.st_dev == bound_dev_ && st.st_ino == bound_ino_) {
      (void)::unlink(path_.c_str());  // nothing to do if it fails at shutdown
    }
  }
}

tl::expected<void, std::string> ControlServer::Listen() {
  using Unexpected = tl::unexpected<std::string>;
  if (listen_fd_) return Unexpected(fmt::format("control socket {} is already listening", path_));

  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path_.empty() || path_.size() >= sizeof addr.sun_path) {
    return Unexpected(fmt::format("control socket path '{}' is empty or longer than {} bytes",
                                  path_, sizeof addr.sun_path - 1));
  }
  std::memcpy(addr.sun_path, path_.data(), path_.size());
  if (auto made = MakeParentDirs(path_, 0755); !made) return Unexpected(made.error());

  struct stat st;
  if (::lstat(path_.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) {
      return Unexpected(
          fmt::format("control socket path {} exists and is not a socket; not replacing it", path_));
    }
    // A socket file outlives its daemon. Whether someone still listens on it
    // is only known by trying: refused means stale; accepted, or a full
    // backlog (EAGAIN), means a live daemon.
    UniqueFd probe(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (!probe) return Unexpected(fmt::format("cannot create a unix socket: {}", std::strerror(errno)));
    int rc;
    do {
      rc = ::connect(probe.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr);
    } while (rc != 0 && errno == EINTR);
    if (rc == 0 || errno == EAGAIN) {
      return Unexpected(fmt::format("control socket {} is in use by a running nasfs", path_));
    }
    if (errno != ECONNREFUSED && errno != ENOENT) {
      return Unexpected(fmt::format("cannot check control socket {}: {}", path_, std::strerror(errno)));
    }
    Log()->info("replacing stale control socket {}", path_);
    if (::unlink(path_.c_str()) != 0 && errno != ENOENT) {
      return Unexpected(
          fmt::format("cannot remove stale control socket {}: {}", path_, std::strerror(errno)));
    }
  }

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Unexpected(fmt::format("cannot create a unix socket: {}", std::strerror(errno)));
  if (::bind(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0) {
    return Unexpected(fmt::format("cannot bind control socket {}: {}", path_, std::strerror(errno)));
  }
  if (::lstat(path_.c_str(), &st) != 0) {
    return Unexpected(fmt::format("cannot stat control socket {}: {}", path_, std::strerror(errno)));
  }
  bound_ = true;
  bound_dev_ = st.st_dev;
  bound_ino_ = st.st_ino;
  // Modes are set before listen(): until then every connect() is refused, so
  // there is no window in which the umask's looser mode lets anyone in.
  const bool group = allowed_gid_ != static_cast<gid_t>(-1);
  if (group && ::chown(path_.c_str(), static_cast<uid_t>(-1), allowed_gid_) != 0) {
    return Unexpected(fmt::format("cannot give control socket {} to group {}: {}", path_,
                                  allowed_gid_, std::strerror(errno)));
  }
  if (::chmod(path_.c_str(), group ? 0660 : 0600) != 0) {
    return Unexpected(fmt::format("cannot chmod control socket {}: {}", path_, std::strerror(errno)));
  }
  if (::listen(fd.get(), 64) != 0) {
    return Unexpected(fmt::format("cannot listen on control socket {}: {}", path_, std::strerror(errno)));
  }
  UniqueFd ev(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  UniqueFd reap(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!ev || !reap) return Unexpected(fmt::format("cannot create an eventfd: {}", std::strerror(errno)));
  listen_fd_ = std::move(fd);
  stop_event_ = std::move(ev);
  reap_event_ = std::move(reap);
  Log()->info("control socket listening on {} (mode {})", path_, group ? "0660" : "0600");
  return {};
}

tl::expected<size_t, std::string> ControlServer::CountArgument(const nlohmann::json& request,
                                                                const char* key, size_t fallback,
                                                                size_t max) {
  auto it = request.find(key);
  if (it == request.end() || it->is_null()) return fallback;
  if (it->is_number_unsigned() && it->get<uint64_t>() <= max) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0 &&
      static_cast<uint64_t>(it->get<int64_t>()) <= max) {
    return static_cast<size_t>(it->get<int64_t>());
  }
  return tl::unexpected(
      fmt::format("bad request: \"{}\" must be an integer from 0 to {}", key, max));
}

void ControlServer::TrimToFit(nlohmann::json& answer, const char* list_key) {
  // Leave room for what Complete() and the framing may add.
  constexpr size_t kRoom = 256;
  auto it = answer.find(list_key);
  if (it == answer.end() || !it->is_array() || it->empty()) return;
  const size_t limit = kMaxMessageBytes - kRoom;
  if (wire::Encode(answer).size() <= limit) return;
  nlohmann::json list = std::move(*it);
  *it = nlohmann::json::array();
  answer["truncated"] = true;
  size_t total = wire::Encode(answer).size();
  size_t keep = 0;
  for (; keep < list.size(); ++keep) {
    total += wire::Encode(list[keep]).size();  // its text, and the newline stands for a comma
    if (total > limit) break;
  }
  list.erase(list.begin() + static_cast<std::ptrdiff_t>(keep), list.end());
  answer[list_key] = std::move(list);
}

void ControlServer::AddLongCommand(std::string cmd, LongHandler handler) {
  assert(!thread_.joinable() && "ControlServer::AddLongCommand() after Start()");
  long_handlers_[std::move(cmd)] = std::move(handler);
}

void ControlServer::Start() {
  assert(listen_fd_ && stop_event_ && "ControlServer::Start() before a successful Listen()");
  if (thread_.joinable()) return;
  running_ = true;
  thread_ = std::thread([this] { Serve(); });
}

void ControlServer::Stop() {
  if (!thread_.joinable()) return;
  uint64_t one = 1;
  // The counter cannot overflow from a handful of Stop()s; a failed write
  // would only mean it is already signalled.
  (void)::write(stop_event_.get(), &one, sizeof one);
  if (std::this_thread::get_id() == thread_.get_id()) return;  // Serve() sees it on return
  // From a long request: Serve() stops and joins this thread once it returns.
  if (tls_long_request_of == this) return;
  thread_.join();
  running_ = false;
  uint64_t drained;
  (void)::read(stop_event_.get(), &drained, sizeof drained);  // ready for another Start()
  (void)::read(reap_event_.get(), &drained, sizeof drained);
}

void ControlServer::Serve() {
  ServeLoop();
  StopAll();
}

void ControlServer::ServeLoop() {
  for (;;) {
    // Every connection's work is guarded on its own (a failure closes that
    // connection); what reaches here is the loop's own bookkeeping failing,
    // which can only be memory running out. The thread must not end on it:
    // status is how an operator sees what is wrong.
    try {
      if (!ServeOnce()) return;
      continue;
    } catch (const std::exception& ex) {
      Log()->error("control socket {}: the server loop failed: {}; going on", path_, ex.what());
    } catch (...) {
      Log()->error("control socket {}: the server loop failed; going on", path_);
    }
    pollfd stop = {stop_event_.get(), POLLIN, 0};
    if (::poll(&stop, 1, 100) > 0) return;
  }
}

namespace {

// Milliseconds from now until `t` for poll(), rounded up so the loop never
// spins on a sub-millisecond remainder; 0 once it has passed.
int PollTimeoutUntil(std::chrono::steady_clock::time_point t,
                     std::chrono::steady_clock::time_point now) {
  if (t <= now) return 0;
  auto ms = std::chrono::ceil<std::chrono::milliseconds>(t - now).count();
  return static_cast<int>(std::min<long long>(ms, 24LL * 3600 * 1000));
}

// Runs `work` on one connection; whatever it throws is logged and costs that
// connection alone.
template <typename Work, typename Drop>
void Guarded(const std::string& path, Work&& work, Drop&& drop) {
  try {
    work();
    return;
  } catch (const std::exception& ex) {
    Log()->error("control socket {}: dropping a connection: {}", path, ex.what());
  } catch (...) {
    Log()->error("control socket {}: dropping a connection: unknown exception", path);
  }
  drop();  // closes an fd: cannot throw
}

}  // namespace

bool ControlServer::ServeOnce() {
  // Rebuilt each round: connections come and go.
  std::vector<pollfd> pfds;
  std::vector<LongRequest*> watched;
  std::vector<Connection*> polled;
  pfds.reserve(3 + long_requests_.size() + connections_.size());

  Clock::time_point now = Clock::now();
  const bool accepting = now >= accept_paused_until_;
  // A negative fd is skipped by poll(): the listener rests while paused.
  pfds.push_back({accepting ? listen_fd_.get() : -1, POLLIN, 0});
  pfds.push_back({stop_event_.get(), POLLIN, 0});
  pfds.push_back({reap_event_.get(), POLLIN, 0});
  // Each long request's connection, for its client hanging up (POLLHUP is
  // reported whatever the events asked; a client only done sending has
  // shut down its side for writing, which is not a hang-up).
  for (auto& lr : long_requests_) {
    if (lr->stop.stop_requested() || lr->answering) continue;
    pfds.push_back({lr->conn.get(), 0, 0});
    watched.push_back(lr.get());
  }
  const size_t first_conn = pfds.size();
  Clock::time_point wake = accepting ? Clock::time_point::max() : accept_paused_until_;
  for (auto& c : connections_) {
    if (c.phase == Connection::Phase::kDone) continue;
    pfds.push_back(
        {c.fd.get(), static_cast<short>(c.phase == Connection::Phase::kReading ? POLLIN : POLLOUT), 0});
    polled.push_back(&c);
    wake = std::min(wake, c.deadline);
  }

  int n = ::poll(pfds.data(), pfds.size(),
                 wake == Clock::time_point::max() ? -1 : PollTimeoutUntil(wake, now));
  if (n < 0) {
    if (errno == EINTR) return true;
    // EFAULT/EINVAL/ENOMEM: nothing a retry right away would change.
    throw std::system_error(errno, std::generic_category(), "poll");
  }
  if (pfds[1].revents & POLLIN) return false;
  // Before reaping: `watched` points into long_requests_.
  for (size_t k = 0; k < watched.size(); ++k) {
    if ((pfds[3 + k].revents & (POLLHUP | POLLERR)) && !watched[k]->answering) {
      Log()->info("control socket {}: a client hung up on its long request; stopping it", path_);
      watched[k]->stop.request_stop();
    }
  }
  if (pfds[2].revents & POLLIN) ReapLongRequests();

  // `polled` points into connections_, which only grows (at the back) until
  // the sweep at the end of the round.
  for (size_t k = 0; k < polled.size(); ++k) {
    Connection& c = *polled[k];
    const short rev = pfds[first_conn + k].revents;
    if (rev == 0 || c.phase == Connection::Phase::kDone) continue;
    Guarded(path_, [&] {
      // POLLHUP/POLLERR: the read or the send says what happened.
      if (c.phase == Connection::Phase::kReading) {
        OnReadable(c);
      } else {
        OnWritable(c);
      }
    }, [&] { Close(c); });
  }

  now = Clock::now();
  ExpireConnections(now);
  if (pfds[0].revents & POLLIN) AcceptConnections(now);

  connections_.remove_if([](const Connection& c) { return c.phase == Connection::Phase::kDone; });
  return true;
}

void ControlServer::ExpireConnections(Clock::time_point now) {
  for (auto& c : connections_) {
    if (c.phase == Connection::Phase::kDone || c.deadline > now) continue;
    Guarded(path_, [&] {
      if (c.phase == Connection::Phase::kReading) {
        Answer(c, Failure(fmt::format("bad request: no complete request line within {} ms",
                                      kIoTimeout.count())));
      } else {
        // A client that stopped reading only loses its own answer.
        SPDLOG_LOGGER_DEBUG(Log(), "control socket {}: answer not delivered within {} ms", path_,
                            kIoTimeout.count());
        Close(c);
      }
    }, [&] { Close(c); });
  }
}

void ControlServer::AcceptConnections(Clock::time_point now) {
  // Bounded per round, so a flood cannot keep the loop from the
  // connections it already has.
  for (size_t i = 0; i < kMaxConnections; ++i) {
    UniqueFd conn(::accept4(listen_fd_.get(), nullptr, nullptr, SOCK_CLOEXEC | SOCK_NONBLOCK));
    if (!conn) {
      int e = errno;
      if (e == EINTR || e == ECONNABORTED) continue;
      if (e == EAGAIN || e == EWOULDBLOCK) return;
      Log()->warn("control socket {}: accept failed: {}", path_, std::strerror(e));
      // Out of descriptors: rest the listener instead of spinning on it.
      accept_paused_until_ = now + std::chrono::milliseconds(100);
      return;
    }
    size_t open = 0;
    for (const auto& c : connections_) open += c.phase != Connection::Phase::kDone;
    if (open >= kMaxConnections) MakeRoom();

    Connection* added = nullptr;
    Guarded(path_, [&] {
      Connection& c = connections_.emplace_back();
      added = &c;
      c.fd = std::move(conn);
      c.deadline = now + kIoTimeout;
      if (std::string refusal = PeerRefusal(c.fd.get()); !refusal.empty()) {
        Log()->warn("control socket {}: refused a caller: {}", path_, refusal);
        Answer(c, Failure("permission denied: " + refusal));
      }
    }, [&] {
      if (added != nullptr) Close(*added);  // else `conn` closes itself
    });
  }
}

void ControlServer::MakeRoom() {
  auto evict = [this](Connection& c) {
    if (c.phase == Connection::Phase::kReading) {
      // One try, not waiting: the client learns why if it is listening.
      static constexpr std::string_view kBusy =
          "{\"ok\":false,\"error\":\"busy: too many open control connections; this one had "
          "sent no complete request\"}\n";
      (void)::send(c.fd.get(), kBusy.data(), kBusy.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    }
    Close(c);
    ++evicted_unlogged_;
    const auto now = Clock::now();
    if (now - evictions_logged_ >= std::chrono::seconds(10)) {
      Log()->warn("control socket {}: more than {} connections open; closed {} of the oldest "
                  "(idle ones first) since the last report",
                  path_, kMaxConnections, evicted_unlogged_);
      evicted_unlogged_ = 0;
      evictions_logged_ = now;
    }
  };
  // The oldest connection still reading may have its request waiting unread
  // (a flood accepted in the same round as a real client): read it first, so
  // only a connection that truly has not sent its request is taken for idle.
  for (auto& c : connections_) {
    if (c.phase != Connection::Phase::kReading) continue;
    Guarded(path_, [&] { OnReadable(c); }, [&] { Close(c); });
    if (c.phase == Connection::Phase::kDone) return;  // it went (or went long): room made
    if (c.phase == Connection::Phase::kReading) {
      evict(c);
      return;
    }
    // Its request was there and is being answered: look further.
  }
  for (auto& c : connections_) {
    if (c.phase == Connection::Phase::kWriting) {
      evict(c);
      return;
    }
  }
}

void ControlServer::OnReadable(Connection& c) {
  char buf[64 * 1024];
  // A few reads per round at most: a fast sender shares the loop.
  for (int reads = 0; reads < 16; ++reads) {
    // Read no further than one byte past the limit: enough to know it is over.
    const size_t want = std::min(sizeof buf, kMaxMessageBytes + 1 - c.in.size());
    ssize_t got = ::recv(c.fd.get(), buf, want, 0);
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return;
      if (errno != ECONNRESET) {
        Close(c);  // the caller vanished; nobody to answer
        return;
      }
      // A unix peer that closes with our bytes unread resets the connection
      // instead of ending it; either way it has said all it will.
      got = 0;
    }
    if (got == 0) {  // the peer closed without a newline: what came is the request
      Dispatch(c, std::exchange(c.in, {}));
      return;
    }
    std::string_view chunk(buf, static_cast<size_t>(got));
    const size_t nl = chunk.find('\n');
    c.in.append(chunk.substr(0, nl));
    if (c.in.size() > kMaxMessageBytes) {
      Answer(c, Failure(fmt::format("bad request: larger than {} bytes", kMaxMessageBytes)));
      return;
    }
    // Bytes after the newline are left unread: one message per connection.
    if (nl != std::string_view::npos) {
      Dispatch(c, std::exchange(c.in, {}));
      return;
    }
  }
}

void ControlServer::OnWritable(Connection& c) {
  while (c.sent < c.out.size()) {
    ssize_t n = ::send(c.fd.get(), c.out.data() + c.sent, c.out.size() - c.sent,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n >= 0) {
      c.sent += static_cast<size_t>(n);
      continue;
    }
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) return;  // the loop polls for POLLOUT
    SPDLOG_LOGGER_DEBUG(Log(), "control socket {}: answer not delivered: {}", path_,
                        std::strerror(errno));
    break;
  }
  Close(c);
}

void ControlServer::Close(Connection& c) {
  c.fd.reset();
  c.phase = Connection::Phase::kDone;
  // Its buffers may be a megabyte each; the sweep frees them at the end of
  // the round anyway, but an exception thrown before it must not keep them.
  c.in = std::string();
  c.out = std::string();
}

std::string ControlServer::EncodeAnswer(const nlohmann::json& answer) const {
  std::string out;
  try {
    out = wire::Encode(answer);
  } catch (const nlohmann::json::exception& ex) {
    out = wire::Encode(Failure(fmt::format("internal error: {}", ex.what())));
  }
  if (out.size() > kMaxMessageBytes) {
    out = wire::Encode(Failure(
        fmt::format("internal error: the answer is larger than {} bytes", kMaxMessageBytes)));
  }
  return out;
}

void ControlServer::Answer(Connection& c, const nlohmann::json& answer) {
  c.out = EncodeAnswer(answer);
  c.sent = 0;
  c.in = std::string();
  c.phase = Connection::Phase::kWriting;
  c.deadline = Clock::now() + kIoTimeout;
  OnWritable(c);  // most answers fit the socket buffer and leave at once
}

void ControlServer::Dispatch(Connection& c, const std::string& line) {
  if (line.empty()) {
    Answer(c, Failure("bad request: empty request"));
    return;
  }
  nlohmann::json request;
  try {
    request = nlohmann::json::parse(line);
  } catch (const nlohmann::json::exception& ex) {
    Answer(c, Failure(fmt::format("bad request: {}", ex.what())));
    return;
  }
  if (!request.is_object()) {
    Answer(c, Failure("bad request: not a JSON object"));
    return;
  }

  auto cmd = request.find("cmd");
  auto long_handler =
      cmd != request.end() && cmd->is_string() ? long_handlers_.find(cmd->get<std::string>())
                                               : long_handlers_.end();
  if (long_handler == long_handlers_.end()) {
    Answer(c, Complete(request, [&] { return handler_(request); }));
    return;
  }
  ReapLongRequests();  // the finished ones, whose reap signal may still be unread
  if (long_requests_.size() >= kMaxLongRequests) {
    Answer(c, Failure(fmt::format("busy: {} long requests (verify, replay, ...) are running; "
                                  "try again once one has finished",
                                  long_requests_.size())));
    return;
  }
  // Listed before its thread starts: a list that failed to grow must not
  // leave a joinable thread behind (std::terminate).
  long_requests_.push_back(std::make_unique<LongRequest>());
  LongRequest* raw = long_requests_.back().get();
  try {
    raw->thread = std::thread([this, raw, request, handler = long_handler->second] {
      tls_long_request_of = this;
      // Nothing may leave the thread; what can still throw here is only
      // memory running out, and then the client gets no answer (its
      // connection closes, which tells it as much).
      try {
        const std::stop_token stop = raw->stop.get_token();
        // Answered even when stopped: a client still waiting learns why; one
        // that hung up costs a failed send.
        const nlohmann::json answer = Complete(request, [&] { return handler(request, stop); });
        raw->answering = true;  // a client hanging up from now on has its answer
        raw->answer = EncodeAnswer(answer);
      } catch (...) {
        try {
          Log()->error("control socket {}: a long request's answer is lost: out of memory", path_);
        } catch (...) {  // nothing left to report it with
        }
      }
      raw->answering = true;
      raw->done = true;
      uint64_t one = 1;
      (void)::write(reap_event_.get(), &one, sizeof one);  // fails only when already signalled
    });
  } catch (const std::exception& ex) {
    long_requests_.pop_back();
    Answer(c, Failure(fmt::format("internal error: cannot start a thread: {}", ex.what())));
    return;
  }
  raw->conn = std::move(c.fd);
  c.phase = Connection::Phase::kDone;
}

void ControlServer::ReapLongRequests() {
  uint64_t drained;
  (void)::read(reap_event_.get(), &drained, sizeof drained);  // EAGAIN: nothing signalled
  for (auto it = long_requests_.begin(); it != long_requests_.end();) {
    if (!(*it)->done) {
      ++it;
      continue;
    }
    LongRequest& lr = **it;
    lr.thread.join();
    // Its answer is written by the loop like any other; a request the
    // thread could not answer (out of memory) is closed unanswered.
    if (!lr.answer.empty()) {
      Connection* added = nullptr;
      Guarded(path_, [&] {
        Connection& c = connections_.emplace_back();
        added = &c;
        c.fd = std::move(lr.conn);
        c.out = std::move(lr.answer);
        c.phase = Connection::Phase::kWriting;
        c.deadline = Clock::now() + kIoTimeout;
        OnWritable(c);
      }, [&] {
        if (added != nullptr) Close(*added);
      });
    }
    it = long_requests_.erase(it);
  }
}

void ControlServer::StopAll() {
  // Prompt by contract: one attempt each that does not wait.
  auto last_try = [](int fd, std::string_view data) {
    if (fd >= 0 && !data.empty()) (void)::send(fd, data.data(), data.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  };
  for (auto& c : connections_) {
    if (c.phase == Connection::Phase::kWriting) {
      last_try(c.fd.get(), std::string_view(c.out).substr(c.sent));
    }
  }
  connections_.clear();
  for (auto& lr : long_requests_) lr->stop.request_stop();
  for (auto& lr : long_requests_) {
    lr->thread.join();
    last_try(lr->conn.get(), lr->answer);
  }
  long_requests_.clear();
  accept_paused_until_ = {};
}

std::string ControlServer::PeerRefusal(int fd) const {
  ucred cred{};
  socklen_t len = sizeof cred;
  if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0) {
    return fmt::format("cannot identify the caller: {}", std::strerror(errno));
  }
  if (cred.uid == 0) return {};
  if (allowed_gid_ == static_cast<gid_t>(-1)) {
    return fmt::format("uid {} is not root, and only root may use this control socket", cred.uid);
  }
  if (cred.gid == allowed_gid_) return {};
  auto groups = GroupsOf(cred.uid);
  if (std::find(groups.begin(), groups.end(), allowed_gid_) != groups.end()) return {};
  return fmt::format("uid {} is neither root nor a member of the control group (gid {})",
                     cred.uid, allowed_gid_);
}

nlohmann::json ControlServer::Complete(const nlohmann::json& request,
                                       const std::function<nlohmann::json()>& handler) const {
  nlohmann::json answer;
  try {
    answer = handler();
  } catch (const std::exception& ex) {
    Log()->error("control request {} failed: {}", wire::Encode(request).substr(0, 200), ex.what());
    return Failure(fmt::format("internal error: {}", ex.what()));
  } catch (...) {
    Log()->error("control request {} failed with an unknown exception",
                 wire::Encode(request).substr(0, 200));
    return Failure("internal error: unknown exception");
  }
  if (!answer.is_object()) return Failure("internal error: the answer is not a JSON object");
  if (!answer.contains("ok")) answer["ok"] = true;
  return answer;
}

}  // namespace nasfs::control
