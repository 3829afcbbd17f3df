#include "fs/control_protocol.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <thread>

#include <fmt/format.h>

namespace nasfs::control {
namespace {

using Clock = std::chrono::steady_clock;

// A registry entry is three short fields; anything larger is not one.
constexpr size_t kMaxRegistryBytes = 64 * 1024;

// Milliseconds left until `deadline`, rounded up so poll() never spins on a
// sub-millisecond remainder; 0 once it has passed.
int RemainingMs(wire::Deadline deadline) {
  auto left = std::chrono::ceil<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return 0;
  return static_cast<int>(std::min<long long>(left, 24LL * 3600 * 1000));
}

bool IsPlain(unsigned char c) {
  return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
         c == '.';
}

// mkdir -p with `mode` for every directory it creates.
Result<void> MakeDirs(const std::string& dir, mode_t mode) {
  if (dir.empty()) return {};
  for (size_t pos = 1;; ++pos) {
    pos = dir.find('/', pos);
    std::string prefix = dir.substr(0, pos);
    if (!prefix.empty() && ::mkdir(prefix.c_str(), mode) != 0 && errno != EEXIST) {
      return ErrFromErrno();
    }
    if (pos == std::string::npos) break;
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return ErrFromErrno();
  if (!S_ISDIR(st.st_mode)) return Err(ENOTDIR);
  return {};
}

// Decodes the \NNN octal escapes /proc/mounts uses for space, tab, newline
// and backslash in a field.
std::string DecodeMountField(std::string_view field) {
  auto is_oct = [](char c) { return c >= '0' && c <= '7'; };
  std::string out;
  out.reserve(field.size());
  for (size_t i = 0; i < field.size(); ++i) {
    if (field[i] == '\\' && i + 3 < field.size() && is_oct(field[i + 1]) &&
        is_oct(field[i + 2]) && is_oct(field[i + 3])) {
      int v = (field[i + 1] - '0') * 64 + (field[i + 2] - '0') * 8 + (field[i + 3] - '0');
      if (v <= 0xff) {
        out.push_back(static_cast<char>(v));
        i += 3;
        continue;
      }
    }
    out.push_back(field[i]);
  }
  return out;
}

std::string ErrnoText(int e) { return std::strerror(e); }

}  // namespace

std::string MountId(const std::string& mountpoint) {
  // Split on '/', dropping empty components: "//a/b/" and "/a/b" are one
  // directory and get one id. What remains joins with '-', and since '-' in a
  // name is escaped, the join is reversible: distinct paths, distinct ids.
  std::vector<std::string_view> parts;
  std::string_view rest(mountpoint);
  while (!rest.empty()) {
    size_t slash = rest.find('/');
    std::string_view part = rest.substr(0, slash);
    if (!part.empty()) parts.push_back(part);
    if (slash == std::string_view::npos) break;
    rest.remove_prefix(slash + 1);
  }
  if (parts.empty()) return "-";

  std::string id;
  for (size_t p = 0; p < parts.size(); ++p) {
    if (p > 0) id.push_back('-');
    for (size_t i = 0; i < parts[p].size(); ++i) {
      auto c = static_cast<unsigned char>(parts[p][i]);
      // A leading '.' would make a hidden file; systemd-escape escapes it too.
      bool leading_dot = (c == '.' && id.empty());
      if (IsPlain(c) && !leading_dot) {
        id.push_back(static_cast<char>(c));
      } else {
        id += fmt::format("\\x{:02x}", c);
      }
    }
  }
  return id;
}

std::string DefaultControlSocket(const std::string& mountpoint) {
  return fmt::format("{}/{}.sock", kRunDir, MountId(mountpoint));
}

std::string RegistryPath(const std::string& mountpoint, const std::string& dir) {
  return fmt::format("{}/{}.json", dir, MountId(mountpoint));
}

Result<void> WriteRegistry(const RegistryEntry& e, const std::string& dir) {
  if (auto made = MakeDirs(dir, 0755); !made) return made;
  const std::string path = RegistryPath(e.mountpoint, dir);
  // The temporary lives in the same directory so rename() is atomic; the
  // leading '.' keeps half-written files out of anyone's glob of *.json.
  std::string tmp = fmt::format("{}/.{}.json.XXXXXX", dir, MountId(e.mountpoint));
  UniqueFd fd(::mkostemp(tmp.data(), O_CLOEXEC));
  if (!fd) return ErrFromErrno();

  auto fail = [&tmp](int err) -> Result<void> {
    ::unlink(tmp.c_str());
    return Err(err);
  };
  // nasfsctl run by a member of the control group must be able to read it.
  if (::fchmod(fd.get(), 0644) != 0) return fail(errno);
  nlohmann::json j = {{"mountpoint", e.mountpoint}, {"control", e.control}, {"pid", e.pid}};
  std::string text = j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
  std::string_view left(text);
  while (!left.empty()) {
    ssize_t n = ::write(fd.get(), left.data(), left.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return fail(errno);
    }
    left.remove_prefix(static_cast<size_t>(n));
  }
  if (::fsync(fd.get()) != 0) return fail(errno);
  if (::close(fd.release()) != 0) return fail(errno);
  if (::rename(tmp.c_str(), path.c_str()) != 0) return fail(errno);
  return {};
}

Result<RegistryEntry> ReadRegistry(const std::string& mountpoint, const std::string& dir) {
  const std::string path = RegistryPath(mountpoint, dir);
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) return ErrFromErrno();
  std::string text;
  char buf[4096];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrFromErrno();
    }
    if (n == 0) break;
    text.append(buf, static_cast<size_t>(n));
    if (text.size() > kMaxRegistryBytes) return Err(EBADMSG);
  }
  auto j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (!j.is_object()) return Err(EBADMSG);
  auto mp = j.find("mountpoint");
  auto ctl = j.find("control");
  auto pid = j.find("pid");
  if (mp == j.end() || !mp->is_string() || ctl == j.end() || !ctl->is_string() ||
      ctl->get_ref<const std::string&>().empty() || pid == j.end() || !pid->is_number_integer()) {
    return Err(EBADMSG);
  }
  RegistryEntry e;
  e.mountpoint = mp->get<std::string>();
  e.control = ctl->get<std::string>();
  e.pid = pid->get<long>();
  // Ids are injective, so a mismatch means the file was not written for this
  // mount point (copied or hand-edited); trusting it could aim nasfsctl at the
  // wrong daemon.
  if (MountId(e.mountpoint) != MountId(mountpoint)) return Err(EBADMSG);
  return e;
}

void RemoveRegistry(const std::string& mountpoint, const std::string& dir) {
  // Best effort by contract: nothing useful to do when it is already gone.
  (void)::unlink(RegistryPath(mountpoint, dir).c_str());
}

std::vector<std::string> ListNasfsMounts(const std::string& mounts_file) {
  std::vector<std::string> out;
  std::ifstream in(mounts_file);
  std::string line;
  while (std::getline(in, line)) {
    // device mountpoint type options freq passno; fields never contain a raw
    // space (the kernel escapes it), so splitting on spaces is exact.
    std::vector<std::string_view> fields;
    std::string_view rest(line);
    while (!rest.empty() && fields.size() < 3) {
      size_t sp = rest.find(' ');
      if (sp != 0) fields.push_back(rest.substr(0, sp));
      if (sp == std::string_view::npos) break;
      rest.remove_prefix(sp + 1);
    }
    if (fields.size() < 3 || fields[2] != "fuse.nasfs") continue;
    out.push_back(DecodeMountField(fields[1]));
  }
  return out;
}

namespace wire {

Result<std::string> ReadLine(int fd, Deadline deadline, size_t max_bytes, int wake_fd) {
  std::string line;
  char buf[64 * 1024];
  for (;;) {
    pollfd pfds[2] = {{fd, POLLIN, 0}, {wake_fd, POLLIN, 0}};
    int n = ::poll(pfds, wake_fd >= 0 ? 2 : 1, RemainingMs(deadline));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrFromErrno();
    }
    if (wake_fd >= 0 && (pfds[1].revents & POLLIN)) return Err(ECANCELED);
    if (n == 0) return Err(ETIMEDOUT);
    if (pfds[0].revents == 0) continue;
    // Read no further than one byte past the limit: enough to know it is over.
    size_t want = std::min(sizeof buf, max_bytes + 1 - line.size());
    ssize_t got = ::recv(fd, buf, want, 0);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      // A unix peer that closes with our bytes unread resets the connection
      // instead of ending it; either way it has said all it will.
      if (errno == ECONNRESET) return line;
      return ErrFromErrno();
    }
    if (got == 0) return line;  // the peer closed without a newline
    std::string_view chunk(buf, static_cast<size_t>(got));
    size_t nl = chunk.find('\n');
    line.append(chunk.substr(0, nl));
    if (line.size() > max_bytes) return Err(EMSGSIZE);
    if (nl != std::string_view::npos) return line;
  }
}

Result<void> WriteAll(int fd, std::string_view data, Deadline deadline) {
  while (!data.empty()) {
    ssize_t n = ::send(fd, data.data(), data.size(), MSG_NOSIGNAL);
    if (n >= 0) {
      data.remove_prefix(static_cast<size_t>(n));
      continue;
    }
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return ErrFromErrno();
    pollfd pfd = {fd, POLLOUT, 0};
    int ready = ::poll(&pfd, 1, RemainingMs(deadline));
    if (ready < 0 && errno != EINTR) return ErrFromErrno();
    if (ready == 0) return Err(ETIMEDOUT);
  }
  return {};
}

std::string Encode(const nlohmann::json& message) {
  return message.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

}  // namespace wire

namespace {

// A connection to the control socket, by deadline. A non-blocking unix
// connect either completes at once (the connection waits in the
// listener's backlog until accepted) or fails with EAGAIN when that
// backlog is full; there is no EINPROGRESS to poll for, so it retries
// briefly.
tl::expected<UniqueFd, std::string> Connect(const std::string& socket_path, Clock::time_point deadline,
                                            int timeout_ms) {
  using Unexpected = tl::unexpected<std::string>;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (socket_path.empty() || socket_path.size() >= sizeof addr.sun_path) {
    return Unexpected(fmt::format("control socket path '{}' is empty or longer than {} bytes",
                                  socket_path, sizeof addr.sun_path - 1));
  }
  std::memcpy(addr.sun_path, socket_path.data(), socket_path.size());

  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!fd) return Unexpected(fmt::format("cannot create a unix socket: {}", ErrnoText(errno)));

  for (;;) {
    if (::connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof addr) == 0) break;
    int e = errno;
    if (e == EINTR) continue;
    if (e == EAGAIN || e == EINPROGRESS) {
      if (RemainingMs(deadline) == 0) {
        return Unexpected(fmt::format(
            "timed out after {} ms connecting to {} (the daemon is not accepting connections)",
            timeout_ms, socket_path));
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(10, RemainingMs(deadline))));
      continue;
    }
    std::string hint;
    if (e == ENOENT || e == ECONNREFUSED) hint = " (is nasfs running for this mount?)";
    if (e == EACCES || e == EPERM) hint = " (run as root or as a member of the control group)";
    return Unexpected(fmt::format("cannot connect to {}: {}{}", socket_path, ErrnoText(e), hint));
  }
  return fd;
}

}  // namespace

tl::expected<nlohmann::json, std::string> Call(const std::string& socket_path,
                                               const nlohmann::json& request, int timeout_ms) {
  using Unexpected = tl::unexpected<std::string>;
  timeout_ms = std::max(timeout_ms, 1);
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);

  auto connected = Connect(socket_path, deadline, timeout_ms);
  if (!connected) return Unexpected(connected.error());
  UniqueFd fd = std::move(*connected);

  std::string out = wire::Encode(request);
  if (out.size() > kMaxMessageBytes) {
    return Unexpected(fmt::format("request is larger than {} bytes", kMaxMessageBytes));
  }
  auto sent = wire::WriteAll(fd.get(), out, deadline);
  if (!sent && sent.error() == ETIMEDOUT) {
    return Unexpected(fmt::format("timed out after {} ms sending to {} (the daemon may be hung)",
                                  timeout_ms, socket_path));
  }
  // A server that refuses a caller (or an oversized request) answers and
  // closes without reading it all, so the send may fail with EPIPE while the
  // answer that says why is already waiting to be read.
  const bool peer_closed = !sent && (sent.error() == EPIPE || sent.error() == ECONNRESET);
  if (!sent && !peer_closed) {
    return Unexpected(
        fmt::format("cannot send to {}: {}", socket_path, ErrnoText(sent.error())));
  }
  // Nothing more will be sent: a server reading to end of file sees one.
  (void)::shutdown(fd.get(), SHUT_WR);  // failure only means the peer is gone; the read says so

  auto line = wire::ReadLine(fd.get(), deadline, kMaxMessageBytes);
  if (peer_closed && (!line || line->empty())) {
    return Unexpected(fmt::format("{} closed the connection without answering", socket_path));
  }
  if (!line) {
    switch (line.error()) {
      case ETIMEDOUT:
        return Unexpected(fmt::format(
            "timed out after {} ms waiting for an answer from {} (the daemon may be hung)",
            timeout_ms, socket_path));
      case EMSGSIZE:
        return Unexpected(fmt::format("answer from {} is larger than {} bytes", socket_path,
                                      kMaxMessageBytes));
      default:
        return Unexpected(
            fmt::format("cannot read from {}: {}", socket_path, ErrnoText(line.error())));
    }
  }
  if (line->empty()) {
    return Unexpected(fmt::format("{} closed the connection without answering", socket_path));
  }
  try {
    auto answer = nlohmann::json::parse(*line);
    if (!answer.is_object()) {
      return Unexpected(fmt::format("malformed answer from {}: not a JSON object", socket_path));
    }
    return answer;
  } catch (const nlohmann::json::exception& ex) {
    return Unexpected(fmt::format("malformed answer from {}: {}", socket_path, ex.what()));
  }
}

}  // namespace nasfs::control
