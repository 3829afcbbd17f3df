// libFuzzer target: the control plane (fs/control_protocol.h,
// fs/control_server.h), through its public API only. Each input goes to:
//  - MountId, as a mount point: the id names no directory ('/'), and
//    decoding it gives back the path's components (distinct mount points,
//    distinct ids);
//  - the registry: the input as the registry file of /var/www/shared, read
//    with ReadRegistry; and a WriteRegistry/ReadRegistry round trip with the
//    input's first bytes as the mount point;
//  - ListNasfsMounts over the input as a mount table;
//  - wire::ReadLine over a socketpair the input was written into: exactly
//    the first line, or EMSGSIZE past the limit, never a timeout;
//  - a live ControlServer on a socket in a temporary directory (handlers
//    that echo, throw, answer a non-object, answer too much, and a long
//    command): the raw input is sent as a request and the server must answer
//    with one well-formed JSON line, or close, within 10 s, never crash or
//    hang; when the input is a JSON object it is also sent with Call(),
//    which must get an answer.
#include <fcntl.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "fs/control_protocol.h"
#include "fs/control_server.h"
#include "tests/fuzz/fuzz_check.h"

namespace nasfs::control {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr auto kAnswerDeadline = std::chrono::seconds(10);
const std::string kMountpoint = "/var/www/shared";

std::string g_dir;                        // temporary directory of this process
ControlServer* g_server = nullptr;        // lives until exit
int g_wake = -1;                          // an eventfd never signalled

json Handle(const json& request) {
  std::string cmd = request.contains("cmd") && request["cmd"].is_string() ? request["cmd"].get<std::string>() : "";
  if (cmd == "throw") throw std::runtime_error("asked to throw");
  if (cmd == "array") return json::array({1, 2});
  if (cmd == "refuse") return json{{"ok", false}, {"error", "refused"}};
  if (cmd == "big") return json{{"blob", std::string(kMaxMessageBytes + 1, 'x')}};
  json answer = json::object();
  auto count = ControlServer::CountArgument(request, "limit", 3, 20000);
  if (!count) return json{{"ok", false}, {"error", count.error()}};
  answer["items"] = json::array();
  for (size_t i = 0; i < *count; ++i) answer["items"].push_back(std::string(64, 'i'));
  ControlServer::TrimToFit(answer, "items");
  answer["echo"] = request;
  return answer;
}

void Cleanup() {
  delete g_server;  // stops the thread, unlinks the socket
  g_server = nullptr;
  std::error_code ec;
  std::filesystem::remove_all(g_dir, ec);
}

// ---- MountId ----
std::vector<std::string> Components(std::string_view path) {
  std::vector<std::string> out;
  while (!path.empty()) {
    size_t slash = path.find('/');
    if (slash != 0) out.emplace_back(path.substr(0, slash));
    if (slash == std::string_view::npos) break;
    path.remove_prefix(slash + 1);
  }
  return out;
}

int Hex(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

void CheckMountId(const std::string& mp) {
  std::string id = MountId(mp);
  FUZZ_CHECK(!id.empty() && id.find('/') == std::string::npos && id.find('\0') == std::string::npos,
             "id '%s' is not a file name", id.c_str());
  FUZZ_CHECK(id.front() != '.', "id '%s' is a hidden file", id.c_str());
  FUZZ_CHECK(MountId("//" + mp + "/") == id, "extra slashes change the id");
  std::vector<std::string> want = Components(mp);
  std::vector<std::string> got;
  if (id != "-") {
    got.emplace_back();
    for (size_t i = 0; i < id.size(); ++i) {
      char c = id[i];
      if (c == '-') {
        got.emplace_back();
      } else if (c == '\\') {
        FUZZ_CHECK(i + 3 < id.size() && id[i + 1] == 'x' && Hex(id[i + 2]) >= 0 && Hex(id[i + 3]) >= 0,
                   "a bad escape in id '%s'", id.c_str());
        got.back().push_back(static_cast<char>(Hex(id[i + 2]) * 16 + Hex(id[i + 3])));
        i += 3;
      } else {
        got.back().push_back(c);
      }
    }
  }
  FUZZ_CHECK(got == want, "id '%s' does not decode to the mount point's components", id.c_str());
}

// ---- registry ----
bool ValidUtf8(const std::string& s) {
  try {
    (void)json(s).dump();
    return true;
  } catch (const json::exception&) {
    return false;
  }
}

void CheckRegistry(std::string_view data) {
  const std::string path = RegistryPath(kMountpoint, g_dir);
  {
    FILE* f = std::fopen(path.c_str(), "wb");
    FUZZ_CHECK(f != nullptr, "cannot write %s", path.c_str());
    std::fwrite(data.data(), 1, data.size(), f);
    std::fclose(f);
  }
  auto e = ReadRegistry(kMountpoint, g_dir);
  if (e) {
    FUZZ_CHECK(MountId(e->mountpoint) == MountId(kMountpoint), "an entry for another mount point was accepted");
    FUZZ_CHECK(!e->control.empty(), "an entry with no control socket was accepted");
  } else {
    FUZZ_CHECK(e.error() > 0, "errno %d", e.error());
  }
  RemoveRegistry(kMountpoint, g_dir);

  // Round trip, with the input's first bytes as the mount point.
  std::string mp(data.substr(0, 48));
  RegistryEntry w{mp, "/run/nasfs/fuzz.sock", 4242};
  if (auto written = WriteRegistry(w, g_dir); !written) {
    FUZZ_CHECK(written.error() > 0, "errno %d", written.error());
    return;
  }
  auto r = ReadRegistry(mp, g_dir);
  if (ValidUtf8(mp)) {
    FUZZ_CHECK(r.has_value(), "an entry just written does not read back (errno %d)", r ? 0 : r.error());
    FUZZ_CHECK(r->mountpoint == mp && r->control == w.control && r->pid == w.pid, "an entry reads back changed");
  }
  RemoveRegistry(mp, g_dir);
}

void CheckMountTable(std::string_view data) {
  const std::string path = g_dir + "/mounts";
  FILE* f = std::fopen(path.c_str(), "wb");
  FUZZ_CHECK(f != nullptr, "cannot write %s", path.c_str());
  std::fwrite(data.data(), 1, data.size(), f);
  std::fclose(f);
  (void)ListNasfsMounts(path);
}

// ---- wire::ReadLine ----
void CheckReadLine(std::string_view data, size_t max_bytes) {
  int sv[2];
  FUZZ_CHECK(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) == 0, "socketpair");
  UniqueFd reader(sv[0]), writer(sv[1]);
  ssize_t n = ::send(writer.get(), data.data(), data.size(), MSG_NOSIGNAL);
  std::string_view sent = data.substr(0, n > 0 ? static_cast<size_t>(n) : 0);
  ::shutdown(writer.get(), SHUT_WR);
  std::string_view want = sent.substr(0, sent.find('\n'));
  auto line = wire::ReadLine(reader.get(), Clock::now() + std::chrono::seconds(5), max_bytes, g_wake);
  if (want.size() > max_bytes) {
    FUZZ_CHECK(!line && line.error() == EMSGSIZE, "a line of %zu bytes past a limit of %zu is not EMSGSIZE",
               want.size(), max_bytes);
  } else {
    FUZZ_CHECK(line.has_value(), "ReadLine failed (errno %d) on a line of %zu bytes", line ? 0 : line.error(),
               want.size());
    FUZZ_CHECK(*line == want, "ReadLine returned %zu bytes, not the first line's %zu", line->size(), want.size());
  }
}

// ---- the live server ----
void CheckAnswer(const std::string& text, const char* how) {
  if (text.empty()) return;  // closed without answering: allowed
  FUZZ_CHECK(text.back() == '\n' && text.find('\n') == text.size() - 1, "%s: the answer is not one line", how);
  json answer = json::parse(text, nullptr, /*allow_exceptions=*/false);
  FUZZ_CHECK(answer.is_object(), "%s: the answer is not a JSON object: %.200s", how, text.c_str());
  FUZZ_CHECK(answer.contains("ok") && answer["ok"].is_boolean(), "%s: the answer has no ok: %.200s", how,
             text.c_str());
  if (!answer["ok"].get<bool>())
    FUZZ_CHECK(answer.contains("error") && answer["error"].is_string() &&
                   !answer["error"].get_ref<const std::string&>().empty(),
               "%s: a failure with no error: %.200s", how, text.c_str());
}

void SendRaw(std::string_view data) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  FUZZ_CHECK(fd.valid(), "socket");
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::snprintf(addr.sun_path, sizeof addr.sun_path, "%s", g_server->path().c_str());
  FUZZ_CHECK(::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0, "connect: %s",
             std::strerror(errno));
  ::fcntl(fd.get(), F_SETFL, O_NONBLOCK);
  const auto deadline = Clock::now() + kAnswerDeadline;
  // The server may answer (a refusal) and close before it read everything.
  (void)wire::WriteAll(fd.get(), data, deadline);
  ::shutdown(fd.get(), SHUT_WR);
  std::string answer;
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    FUZZ_CHECK(left > 0, "the control server neither answered nor closed within %lld s",
               static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kAnswerDeadline).count()));
    pollfd p = {fd.get(), POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    char buf[65536];
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n < 0 && (errno == EINTR || errno == EAGAIN)) continue;
    if (n <= 0) break;  // closed (or reset): the answer is complete
    answer.append(buf, static_cast<size_t>(n));
    FUZZ_CHECK(answer.size() <= kMaxMessageBytes + 1, "an answer past the message limit");
  }
  CheckAnswer(answer, "raw request");
}

void SendCall(const json& request) {
  auto answer = Call(g_server->path(), request, static_cast<int>(kAnswerDeadline.count() * 1000));
  if (wire::Encode(request).size() > kMaxMessageBytes) return;
  FUZZ_CHECK(answer.has_value(), "Call got no answer: %s", answer ? "" : answer.error().c_str());
  CheckAnswer(wire::Encode(*answer), "Call()");
}

}  // namespace
}  // namespace nasfs::control

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  using namespace nasfs::control;
  spdlog::set_level(spdlog::level::off);  // the server logs every bad request
  char tmpl[] = "/dev/shm/nasfs-fuzz-control-XXXXXX";
  char tmpl_tmp[] = "/tmp/nasfs-fuzz-control-XXXXXX";
  const char* dir = ::mkdtemp(tmpl);
  if (!dir) dir = ::mkdtemp(tmpl_tmp);
  FUZZ_CHECK(dir != nullptr, "mkdtemp: %s", std::strerror(errno));
  g_dir = dir;
  g_wake = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  g_server = new ControlServer(g_dir + "/ctl.sock", ::getgid(), Handle);
  auto listening = g_server->Listen();
  FUZZ_CHECK(listening.has_value(), "Listen: %s", listening ? "" : listening.error().c_str());
  g_server->AddLongCommand("long", [](const json& request, std::stop_token stop) {
    return json{{"long", true}, {"stopped", stop.stop_requested()}, {"echo", request}};
  });
  g_server->Start();
  std::atexit(Cleanup);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  using namespace nasfs::control;
  std::string_view data(reinterpret_cast<const char*>(bytes), size);
  CheckMountId(std::string(data));
  CheckRegistry(data);
  CheckMountTable(data);
  CheckReadLine(data, 16);
  CheckReadLine(data, kMaxMessageBytes);
  SendRaw(data);
  json request = json::parse(data.substr(0, data.find('\n')), nullptr, /*allow_exceptions=*/false);
  if (request.is_object()) SendCall(request);
  return 0;
}
