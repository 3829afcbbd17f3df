// The control plane: mount ids, the registry, the mount table, Call() and
// ControlServer, over real unix sockets in a temporary directory; and how
// nasfsctl quotes and renders what daemons answer (tools/quote.h,
// tools/nasfsctl_render.h), against faked daemons.
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "fs/control_protocol.h"
#include "fs/control_server.h"
#include "tools/nasfsctl_render.h"
#include "tools/quote.h"

namespace nasfs::control {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;
namespace fs = std::filesystem;

long long MsSince(Clock::time_point start) {
  return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
}

// A fresh directory, removed with whatever is left in it.
class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/nasfs-control-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    // The peer-credential tests connect as nobody, who must reach the socket.
    ASSERT_EQ(::chmod(dir_.c_str(), 0755), 0);
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  std::string Path(const std::string& name) const { return dir_ + "/" + name; }

  std::string dir_;
};

// --- MountId -------------------------------------------------------------------

class MountIdTest : public ::testing::Test {};

TEST_F(MountIdTest, SlashesBecomeDashes) {
  EXPECT_EQ(MountId("/var/www/shared"), "var-www-shared");
  EXPECT_EQ(MountId("/mnt"), "mnt");
}

TEST_F(MountIdTest, RootIsASingleDash) { EXPECT_EQ(MountId("/"), "-"); }

TEST_F(MountIdTest, DashInANameIsEscapedSoItCannotPassForASlash) {
  EXPECT_EQ(MountId("/a-b"), "a\\x2db");
  EXPECT_EQ(MountId("/a/b"), "a-b");
  EXPECT_NE(MountId("/a-b"), MountId("/a/b"));
}

TEST_F(MountIdTest, RepeatedAndTrailingSlashesNameTheSameDirectory) {
  EXPECT_EQ(MountId("//var//www/shared/"), MountId("/var/www/shared"));
  EXPECT_EQ(MountId("///"), "-");
}

TEST_F(MountIdTest, SpacesBackslashesAndNonAsciiBytesAreHexEscaped) {
  EXPECT_EQ(MountId("/a b"), "a\\x20b");
  EXPECT_EQ(MountId("/a\\b"), "a\\x5cb");
  EXPECT_EQ(MountId("/\xc3\xa4"), "\\xc3\\xa4");
  EXPECT_EQ(MountId("/x\ny"), "x\\x0ay");
}

TEST_F(MountIdTest, LeadingDotIsEscapedLikeSystemdDoes) {
  EXPECT_EQ(MountId("/.foo"), "\\x2efoo");
  EXPECT_EQ(MountId("/a.b/.c"), "a.b-.c");
}

TEST_F(MountIdTest, DistinctMountpointsNeverCollide) {
  const unsigned seed = std::random_device{}();
  std::printf("MountIdTest seed: %u\n", seed);
  std::mt19937 rng(seed);
  // Few symbols, short names: collisions would show quickly if possible.
  const std::string alphabet = "/-.a_\\x2 \xc3:";
  std::uniform_int_distribution<size_t> len(0, 8), pick(0, alphabet.size() - 1);
  std::map<std::string, std::string> by_id;  // id -> canonical path
  for (int i = 0; i < 50000; ++i) {
    std::string path = "/";
    for (size_t n = len(rng); n > 0; --n) path.push_back(alphabet[pick(rng)]);
    // The canonical spelling: no repeated or trailing slash.
    std::string canon;
    for (char c : path) {
      if (c == '/' && !canon.empty() && canon.back() == '/') continue;
      canon.push_back(c);
    }
    if (canon.size() > 1 && canon.back() == '/') canon.pop_back();
    auto [it, inserted] = by_id.emplace(MountId(path), canon);
    ASSERT_EQ(it->second, canon) << "seed " << seed << ": '" << it->second << "' and '" << canon
                                 << "' share the id '" << it->first << "'";
  }
}

TEST_F(MountIdTest, SocketAndRegistryPathsAreNamedByTheId) {
  EXPECT_EQ(DefaultControlSocket("/var/www/shared"), "/run/nasfs/var-www-shared.sock");
  EXPECT_EQ(RegistryPath("/var/www/shared"), "/run/nasfs/mounts/var-www-shared.json");
  EXPECT_EQ(RegistryPath("/a-b", "/tmp/x"), "/tmp/x/a\\x2db.json");
}

// --- registry --------------------------------------------------------------------

class RegistryTest : public TempDirTest {
 protected:
  std::string RegDir() const { return Path("run/nasfs/mounts"); }
};

TEST_F(RegistryTest, WrittenEntryReadsBack) {
  RegistryEntry e{"/var/www/shared", "/srv/ctl/shared.sock", 4242};
  ASSERT_TRUE(WriteRegistry(e, RegDir()));
  auto back = ReadRegistry("/var/www/shared", RegDir());
  ASSERT_TRUE(back) << std::strerror(back.error());
  EXPECT_EQ(back->mountpoint, e.mountpoint);
  EXPECT_EQ(back->control, e.control);
  EXPECT_EQ(back->pid, e.pid);
}

TEST_F(RegistryTest, WriteCreatesTheDirectoryAndAWorldReadableFile) {
  ASSERT_TRUE(WriteRegistry({"/m", "/s.sock", 1}, RegDir()));
  struct stat st;
  ASSERT_EQ(::stat(RegDir().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
  ASSERT_EQ(::stat(RegistryPath("/m", RegDir()).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0644u);
}

TEST_F(RegistryTest, RewriteReplacesTheEntryAndLeavesNoTemporaryFiles) {
  ASSERT_TRUE(WriteRegistry({"/m", "/old.sock", 1}, RegDir()));
  ASSERT_TRUE(WriteRegistry({"/m", "/new.sock", 2}, RegDir()));
  auto back = ReadRegistry("/m", RegDir());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->control, "/new.sock");
  EXPECT_EQ(back->pid, 2);
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(RegDir())) {
    names.push_back(entry.path().filename());
  }
  EXPECT_EQ(names, std::vector<std::string>{"m.json"});
}

TEST_F(RegistryTest, MissingEntryIsENOENT) {
  auto back = ReadRegistry("/nothing/here", RegDir());
  ASSERT_FALSE(back);
  EXPECT_EQ(back.error(), ENOENT);
}

TEST_F(RegistryTest, MalformedEntryIsEBADMSG) {
  ASSERT_TRUE(WriteRegistry({"/m", "/s.sock", 1}, RegDir()));
  for (const char* bad : {"", "{", "[]", "{\"mountpoint\":\"/m\"}",
                          "{\"mountpoint\":\"/m\",\"control\":7,\"pid\":1}",
                          "{\"mountpoint\":\"/m\",\"control\":\"\",\"pid\":1}"}) {
    std::ofstream(RegistryPath("/m", RegDir()), std::ios::trunc) << bad;
    auto back = ReadRegistry("/m", RegDir());
    ASSERT_FALSE(back) << bad;
    EXPECT_EQ(back.error(), EBADMSG) << bad;
  }
}

TEST_F(RegistryTest, EntryWrittenForAnotherMountpointIsRejected) {
  ASSERT_TRUE(WriteRegistry({"/a/b", "/s.sock", 1}, RegDir()));
  fs::rename(RegistryPath("/a/b", RegDir()), RegistryPath("/c", RegDir()));
  auto back = ReadRegistry("/c", RegDir());
  ASSERT_FALSE(back);
  EXPECT_EQ(back.error(), EBADMSG);
}

TEST_F(RegistryTest, RemoveDeletesTheEntryAndToleratesAMissingOne) {
  ASSERT_TRUE(WriteRegistry({"/m", "/s.sock", 1}, RegDir()));
  RemoveRegistry("/m", RegDir());
  EXPECT_FALSE(fs::exists(RegistryPath("/m", RegDir())));
  RemoveRegistry("/m", RegDir());  // no crash, no error
}

// --- mount table ----------------------------------------------------------------

class ListMountsTest : public TempDirTest {};

TEST_F(ListMountsTest, OnlyFuseNasfsMountsAreListedInMountOrder) {
  std::ofstream(Path("mounts"))
      << "proc /proc proc rw,nosuid 0 0\n"
      << "/nas_a:/nas_b /var/www/shared fuse.nasfs rw,user_id=0 0 0\n"
      << "bindfs /nas_master fuse.bindfs rw 0 0\n"
      << "/x:/y /srv/two fuse.nasfs rw 0 0\n"
      << "nasfs /srv/not fuse.nasfsx rw 0 0\n"
      << "garbage\n"
      << "\n";
  EXPECT_EQ(ListNasfsMounts(Path("mounts")),
            (std::vector<std::string>{"/var/www/shared", "/srv/two"}));
}

TEST_F(ListMountsTest, OctalEscapesOfTheMountTableAreDecoded) {
  std::ofstream(Path("mounts")) << "a:b /srv/my\\040site fuse.nasfs rw 0 0\n"
                                << "a:b /srv/tab\\011back\\134slash\\012nl fuse.nasfs rw 0 0\n"
                                << "a:b /srv/short\\04 fuse.nasfs rw 0 0\n";
  EXPECT_EQ(ListNasfsMounts(Path("mounts")),
            (std::vector<std::string>{"/srv/my site", "/srv/tab\tback\\slash\nnl",
                                      "/srv/short\\04"}));
}

TEST_F(ListMountsTest, UnreadableTableGivesAnEmptyList) {
  EXPECT_TRUE(ListNasfsMounts(Path("missing")).empty());
}

// --- raw socket helpers -------------------------------------------------------------

UniqueFd ListenRaw(const std::string& path, int backlog = 16) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::bind(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
  if (::listen(fd.get(), backlog) != 0) return {};
  return fd;
}

UniqueFd ConnectRaw(const std::string& path) {
  UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0));
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) return {};
  timeval tv{10, 0};  // a broken server fails the test instead of hanging it
  ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
  return fd;
}

// Connects without blocking on a full backlog: a refused attempt (EAGAIN) is
// retried until `give_up`. Invalid when it never got through.
UniqueFd ConnectPatiently(const std::string& path, Clock::time_point give_up) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
  for (;;) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) return fd;
    if (errno != EAGAIN || Clock::now() >= give_up) return {};
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
}

bool SendAll(int fd, const std::string& bytes) {
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) return false;
    off += static_cast<size_t>(n);
  }
  return true;
}

// What the peer sends until it closes (or resets), or until timeout_ms.
std::string ReadAll(int fd, int timeout_ms) {
  const auto deadline = Clock::now() + std::chrono::milliseconds(timeout_ms);
  std::string in;
  char buf[64 * 1024];
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0) return in;
    pollfd pfd = {fd, POLLIN, 0};
    if (::poll(&pfd, 1, static_cast<int>(left.count())) <= 0) return in;
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) continue;
    if (n <= 0) return in;
    in.append(buf, static_cast<size_t>(n));
  }
}

// Sends raw bytes (as much as the peer takes) and returns the parsed answer.
json RawExchange(const std::string& path, const std::string& bytes) {
  UniqueFd fd = ConnectRaw(path);
  if (!fd) throw std::runtime_error("connect failed");
  size_t off = 0;
  while (off < bytes.size()) {
    ssize_t n = ::send(fd.get(), bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n <= 0) break;  // the server stopped reading: its answer tells why
    off += static_cast<size_t>(n);
  }
  std::string in;
  char buf[4096];
  for (;;) {
    ssize_t n = ::recv(fd.get(), buf, sizeof buf, 0);
    if (n <= 0) break;
    in.append(buf, static_cast<size_t>(n));
  }
  if (in.empty() || in.back() != '\n') throw std::runtime_error("no answer line: " + in);
  return json::parse(in);
}

// --- ControlServer --------------------------------------------------------------

class ControlServerTest : public TempDirTest {
 protected:
  static constexpr size_t kBigPad = 900 * 1024;
  // The bound on an answer that waits on nothing. The server takes about a
  // millisecond; the margin is for a machine busy with other builds. Far
  // below ControlServer::kIoTimeout, which a starved server costs per client.
  static constexpr long long kPromptMs = 200;

  // Calls status and checks it answers ok within kPromptMs.
  void ExpectPromptStatus(const std::string& path) {
    const auto start = Clock::now();
    auto answer = Call(path, {{"cmd", "status"}}, 1000);
    const auto took = MsSince(start);
    ASSERT_TRUE(answer) << answer.error();
    EXPECT_EQ((*answer)["ok"], true);
    EXPECT_LT(took, kPromptMs) << "status took " << took << " ms";
  }

  static json StatusHandler(const json& req) {
    if (req.value("cmd", "") == "status") return {{"read_from", "master"}, {"pid", 1}};
    if (req.value("cmd", "") == "throw") throw std::runtime_error("boom");
    if (req.value("cmd", "") == "array") return json::array({1, 2});
    if (req.value("cmd", "") == "refuse") return {{"ok", false}, {"error", "unknown command"}};
    if (req.value("cmd", "") == "throw_int") throw 42;
    // Holds the server thread, so connections queue up unread meanwhile.
    if (req.value("cmd", "") == "slow") {
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      return json::object();
    }
    // More than a unix socket's buffer takes at once, less than a message's limit.
    if (req.value("cmd", "") == "big") return {{"pad", std::string(kBigPad, 'x')}};
    return {{"ok", false}, {"error", "unknown command"}};
  }

  // Root-only, as the daemon runs; run unprivileged, the test's own group is
  // let in, since the server admits no other uid.
  static gid_t CallerGroup() {
    return ::geteuid() == 0 ? static_cast<gid_t>(-1) : ::getegid();
  }

  std::unique_ptr<ControlServer> StartServer(gid_t gid = CallerGroup()) {
    auto server = std::make_unique<ControlServer>(Path("ctl.sock"), gid, StatusHandler);
    auto listening = server->Listen();
    EXPECT_TRUE(listening) << listening.error();
    if (!listening) return nullptr;
    server->Start();
    return server;
  }

  // Runs Call() as uid nobody with primary group `gid` in a child process;
  // the exit code says what it saw.
  enum ChildSaw { kAllowed = 0, kRefusedByServer = 1, kRefusedByFile = 2, kOther = 3 };
  int CallAsNobody(gid_t gid) {
    pid_t pid = ::fork();
    if (pid == 0) {
      if (::setgroups(0, nullptr) != 0 || ::setgid(gid) != 0 || ::setuid(65534) != 0) _exit(10);
      auto answer = Call(Path("ctl.sock"), {{"cmd", "status"}}, 3000);
      if (!answer) _exit(answer.error().find("Permission denied") != std::string::npos
                             ? kRefusedByFile
                             : kOther);
      if (answer->value("ok", false)) _exit(kAllowed);
      _exit(answer->value("error", "").rfind("permission denied: ", 0) == 0 ? kRefusedByServer
                                                                             : kOther);
    }
    int status = 0;
    ::waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 100;
  }
};

TEST_F(ControlServerTest, ServerAnswersStatusWithOkAdded) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  auto answer = Call(server->path(), {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], true);
  EXPECT_EQ((*answer)["read_from"], "master");
}

TEST_F(ControlServerTest, OkSetByTheHandlerIsKept) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  auto answer = Call(server->path(), {{"cmd", "refuse"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], false);
  EXPECT_EQ((*answer)["error"], "unknown command");
}

TEST_F(ControlServerTest, SocketIsOwnerOnlyWithoutAControlGroup) {
  auto server = StartServer(static_cast<gid_t>(-1));
  ASSERT_TRUE(server);
  struct stat st;
  ASSERT_EQ(::stat(server->path().c_str(), &st), 0);
  EXPECT_TRUE(S_ISSOCK(st.st_mode));
  EXPECT_EQ(st.st_mode & 07777, 0600u);
}

TEST_F(ControlServerTest, SocketIsGroupAccessibleWithAControlGroup) {
  if (::geteuid() != 0) GTEST_SKIP() << "chown to another group needs root";
  auto server = StartServer(4242);
  ASSERT_TRUE(server);
  struct stat st;
  ASSERT_EQ(::stat(server->path().c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0660u);
  EXPECT_EQ(st.st_gid, 4242u);
}

TEST_F(ControlServerTest, ListenCreatesAMissingParentDirectory) {
  ControlServer server(Path("run/nasfs/x.sock"), static_cast<gid_t>(-1), StatusHandler);
  auto listening = server.Listen();
  ASSERT_TRUE(listening) << listening.error();
  struct stat st;
  ASSERT_EQ(::stat(Path("run/nasfs").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0755u);
}

TEST_F(ControlServerTest, MalformedJsonIsABadRequestAndTheServerKeepsServing) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  const std::vector<std::string> bads = {"{not json\n", "\n", "[1,2]\n", "\"status\"\n",
                                         "{\"cmd\":\"\xff\"}\n", std::string("\x00\x01\x02\n", 4),
                                         "{\"cmd\":\"status\"} trailing\n"};
  for (const std::string& bad : bads) {
    json answer = RawExchange(server->path(), bad);
    EXPECT_EQ(answer["ok"], false) << bad;
    EXPECT_EQ(answer["error"].get<std::string>().rfind("bad request: ", 0), 0u) << answer.dump();
  }
  auto answer = Call(server->path(), {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], true);
}

TEST_F(ControlServerTest, RequestWithoutNewlineIsAnsweredAtEndOfFile) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  UniqueFd fd = ConnectRaw(server->path());
  ASSERT_TRUE(fd);
  std::string req = "{\"cmd\":\"status\"}";
  ASSERT_EQ(::send(fd.get(), req.data(), req.size(), MSG_NOSIGNAL), (ssize_t)req.size());
  ::shutdown(fd.get(), SHUT_WR);
  char buf[4096];
  ssize_t n = ::recv(fd.get(), buf, sizeof buf, MSG_WAITALL);
  ASSERT_GT(n, 0);
  EXPECT_EQ(json::parse(std::string(buf, n))["ok"], true);
}

TEST_F(ControlServerTest, HandlerFailuresBecomeOkFalseAndTheServerKeepsServing) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  auto thrown = Call(server->path(), {{"cmd", "throw"}}, 2000);
  ASSERT_TRUE(thrown) << thrown.error();
  EXPECT_EQ((*thrown)["ok"], false);
  EXPECT_EQ((*thrown)["error"], "internal error: boom");
  auto array = Call(server->path(), {{"cmd", "array"}}, 2000);
  ASSERT_TRUE(array) << array.error();
  EXPECT_EQ((*array)["ok"], false);
  auto answer = Call(server->path(), {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], true);
}

TEST_F(ControlServerTest, OversizedRequestIsRefused) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  std::string huge = "{\"cmd\":\"status\",\"pad\":\"" + std::string(kMaxMessageBytes, 'x') + "\"}\n";
  json answer = RawExchange(server->path(), huge);
  EXPECT_EQ(answer["ok"], false);
  EXPECT_NE(answer["error"].get<std::string>().find("larger than"), std::string::npos);
  // Call() refuses to send one at all.
  auto refused = Call(server->path(), {{"cmd", "status"}, {"pad", std::string(kMaxMessageBytes, 'x')}}, 2000);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.error().find("larger than"), std::string::npos);
  // And the server is still there.
  auto answer2 = Call(server->path(), {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(answer2) << answer2.error();
}

TEST_F(ControlServerTest, StalledClientDoesNotWedgeTheServer) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  UniqueFd stalled = ConnectRaw(server->path());  // connects, never sends
  ASSERT_TRUE(stalled);
  auto start = Clock::now();
  auto answer = Call(server->path(), {{"cmd", "status"}}, 5000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], true);
  EXPECT_LT(MsSince(start), 3500);
}

TEST_F(ControlServerTest, StopIsPromptWhileAClientStalls) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  UniqueFd stalled = ConnectRaw(server->path());
  ASSERT_TRUE(stalled);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // let the server take it
  auto start = Clock::now();
  server->Stop();
  EXPECT_LT(MsSince(start), 500);
}

TEST_F(ControlServerTest, StaleSocketIsReplaced) {
  {
    UniqueFd dead = ListenRaw(Path("ctl.sock"));  // a daemon that died without cleaning up
    ASSERT_TRUE(dead);
  }
  ASSERT_TRUE(fs::is_socket(Path("ctl.sock")));
  auto server = StartServer();
  ASSERT_TRUE(server);
  auto answer = Call(server->path(), {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], true);
}

TEST_F(ControlServerTest, LiveSocketIsRefusedAndLeftWorking) {
  auto first = StartServer();
  ASSERT_TRUE(first);
  {
    ControlServer second(Path("ctl.sock"), static_cast<gid_t>(-1), StatusHandler);
    auto listening = second.Listen();
    ASSERT_FALSE(listening);
    EXPECT_NE(listening.error().find("is in use by a running nasfs"), std::string::npos)
        << listening.error();
  }  // the refused server's destructor must not unlink the live socket
  ASSERT_TRUE(fs::is_socket(Path("ctl.sock")));
  auto answer = Call(first->path(), {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
}

TEST_F(ControlServerTest, NonSocketFileAtThePathIsNotReplaced) {
  std::ofstream(Path("ctl.sock")) << "precious";
  ControlServer server(Path("ctl.sock"), static_cast<gid_t>(-1), StatusHandler);
  auto listening = server.Listen();
  ASSERT_FALSE(listening);
  EXPECT_NE(listening.error().find("not a socket"), std::string::npos) << listening.error();
  std::string content;
  std::ifstream(Path("ctl.sock")) >> content;
  EXPECT_EQ(content, "precious");
}

TEST_F(ControlServerTest, DestructionRemovesTheSocketFile) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  server.reset();
  EXPECT_FALSE(fs::exists(Path("ctl.sock")));
}

TEST_F(ControlServerTest, NonRootPeerCannotOpenTheOwnerOnlySocket) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  auto server = StartServer();
  ASSERT_TRUE(server);
  EXPECT_EQ(CallAsNobody(65534), kRefusedByFile);
}

TEST_F(ControlServerTest, NonRootPeerIsRefusedByPeerCredentials) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  auto server = StartServer();
  ASSERT_TRUE(server);
  // Open the file to everyone, so only SO_PEERCRED stands in the way.
  ASSERT_EQ(::chmod(server->path().c_str(), 0666), 0);
  EXPECT_EQ(CallAsNobody(65534), kRefusedByServer);
  auto answer = Call(server->path(), {{"cmd", "status"}}, 2000);  // root still is
  ASSERT_TRUE(answer) << answer.error();
}

TEST_F(ControlServerTest, PeerOutsideTheControlGroupIsRefused) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  passwd* nobody = ::getpwuid(65534);
  gid_t outsider = 4243;
  if (nobody != nullptr && nobody->pw_gid == outsider) outsider = 4244;
  auto server = StartServer(4242);
  ASSERT_TRUE(server);
  ASSERT_EQ(::chmod(server->path().c_str(), 0666), 0);
  EXPECT_EQ(CallAsNobody(outsider), kRefusedByServer);
}

TEST_F(ControlServerTest, PeerWhosePrimaryGroupIsTheControlGroupIsAllowed) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  auto server = StartServer(4242);
  ASSERT_TRUE(server);
  EXPECT_EQ(CallAsNobody(4242), kAllowed);
}

TEST_F(ControlServerTest, PeerWithTheControlGroupAsASupplementaryGroupIsAllowed) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root to run a child as nobody";
  passwd* nobody = ::getpwuid(65534);
  if (nobody == nullptr) GTEST_SKIP() << "no user with uid 65534";
  // The user database lists nobody's own group among its groups; the child
  // runs with another primary group, so only the group-list lookup can allow it.
  const gid_t control_group = nobody->pw_gid;
  const gid_t running_gid = control_group == 4243 ? 4244 : 4243;
  auto server = StartServer(control_group);
  ASSERT_TRUE(server);
  ASSERT_EQ(::chmod(server->path().c_str(), 0666), 0);  // the file is not under test here
  EXPECT_EQ(CallAsNobody(running_gid), kAllowed);
}

TEST_F(ControlServerTest, HandlerThrowingANonExceptionBecomesOkFalse) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  auto answer = Call(server->path(), {{"cmd", "throw_int"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], false);
  EXPECT_EQ((*answer)["error"], "internal error: unknown exception");
  ExpectPromptStatus(server->path());
}

// --- ControlServer: many clients at once -----------------------------------------

TEST_F(ControlServerTest, StatusIsPromptWhileFiftyClientsSendNothing) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 50; ++i) {
    idle.push_back(ConnectRaw(server->path()));
    ASSERT_TRUE(idle.back()) << i;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the server take them
  ExpectPromptStatus(server->path());
}

TEST_F(ControlServerTest, FloodOfIdleConnectionsCannotLockOutAClient) {
  constexpr size_t kFlood = 3 * ControlServer::kMaxConnections;
  auto server = StartServer();
  ASSERT_TRUE(server);
  std::vector<UniqueFd> idle;
  const auto give_up = Clock::now() + std::chrono::seconds(3);
  for (size_t i = 0; i < kFlood; ++i) {
    UniqueFd fd = ConnectPatiently(server->path(), give_up);
    if (!fd) break;
    idle.push_back(std::move(fd));
  }
  EXPECT_EQ(idle.size(), kFlood) << "the server stopped taking connections";
  ExpectPromptStatus(server->path());
  // The oldest idle connection was closed to make room, and told why.
  ASSERT_FALSE(idle.empty());
  const std::string said = ReadAll(idle.front().get(), 2000);
  EXPECT_NE(said.find("busy: too many open control connections"), std::string::npos) << said;
}

TEST_F(ControlServerTest, ClientWhoseRequestWaitsUnreadIsNotTakenForIdle) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  // Every slot but one held by a client that does not read its answer, so
  // the next connection to arrive is the oldest one still reading.
  std::vector<UniqueFd> mute;
  for (size_t i = 0; i + 1 < ControlServer::kMaxConnections; ++i) {
    mute.push_back(ConnectRaw(server->path()));
    ASSERT_TRUE(mute.back());
    ASSERT_TRUE(SendAll(mute.back().get(), "{\"cmd\":\"big\"}\n"));
  }
  UniqueFd slow = ConnectRaw(server->path());
  ASSERT_TRUE(slow);
  ASSERT_TRUE(SendAll(slow.get(), "{\"cmd\":\"slow\"}\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));  // the server is in the handler
  // A real client, then a few more, all queued before the server accepts
  // again: then it must make room while the real request waits unread.
  UniqueFd real = ConnectRaw(server->path());
  ASSERT_TRUE(real);
  ASSERT_TRUE(SendAll(real.get(), "{\"cmd\":\"status\"}\n"));
  std::vector<UniqueFd> idle;
  for (int i = 0; i < 3; ++i) idle.push_back(ConnectRaw(server->path()));
  // Not a promptness check (ExpectPromptStatus is): the server first builds
  // 63 answers of 900 KiB, seconds in an unoptimized sanitizer build.
  const std::string said = ReadAll(real.get(), 20000);
  ASSERT_FALSE(said.empty());
  json answer = json::parse(said);
  EXPECT_EQ(answer["ok"], true) << said;
  EXPECT_EQ(answer["read_from"], "master") << said;
}

TEST_F(ControlServerTest, ClientThatNeverReadsItsAnswerDoesNotDelayOthers) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  UniqueFd mute = ConnectRaw(server->path());
  ASSERT_TRUE(mute);
  ASSERT_TRUE(SendAll(mute.get(), "{\"cmd\":\"big\"}\n"));
  // By now the server has filled mute's socket buffer with part of the answer.
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ExpectPromptStatus(server->path());
  ExpectPromptStatus(server->path());
}

TEST_F(ControlServerTest, SlowReaderStillGetsItsWholeAnswer) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  UniqueFd slow = ConnectRaw(server->path());
  ASSERT_TRUE(slow);
  ASSERT_TRUE(SendAll(slow.get(), "{\"cmd\":\"big\"}\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  ExpectPromptStatus(server->path());  // served while slow's answer waits
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  const std::string said = ReadAll(slow.get(), 5000);
  ASSERT_FALSE(said.empty());
  ASSERT_EQ(said.back(), '\n');
  json answer = json::parse(said);
  EXPECT_EQ(answer["ok"], true);
  EXPECT_EQ(answer["pad"].get<std::string>().size(), kBigPad);
}

TEST_F(ControlServerTest, FloodDoesNotDropAnAnswerBeingWritten) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  UniqueFd slow = ConnectRaw(server->path());
  ASSERT_TRUE(slow);
  ASSERT_TRUE(SendAll(slow.get(), "{\"cmd\":\"big\"}\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  std::vector<UniqueFd> idle;
  const auto give_up = Clock::now() + std::chrono::seconds(1);
  for (size_t i = 0; i < 3 * ControlServer::kMaxConnections; ++i) {
    UniqueFd fd = ConnectPatiently(server->path(), give_up);
    if (!fd) break;
    idle.push_back(std::move(fd));
  }
  const std::string said = ReadAll(slow.get(), 5000);
  ASSERT_FALSE(said.empty());
  json answer = json::parse(said);
  EXPECT_EQ(answer["pad"].get<std::string>().size(), kBigPad);
}

TEST_F(ControlServerTest, PartialLineThenSilenceIsAnsweredAtTheDeadlineWhileOthersAreServed) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  const auto start = Clock::now();
  UniqueFd partial = ConnectRaw(server->path());
  ASSERT_TRUE(partial);
  ASSERT_TRUE(SendAll(partial.get(), "{\"cmd\":\"sta"));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ExpectPromptStatus(server->path());
  const std::string said = ReadAll(partial.get(), 5000);
  const auto took = MsSince(start);
  ASSERT_FALSE(said.empty()) << "no answer within 5 s";
  json answer = json::parse(said);
  EXPECT_EQ(answer["ok"], false);
  EXPECT_EQ(answer["error"], "bad request: no complete request line within 2000 ms");
  EXPECT_GE(took, 1900);
  EXPECT_LT(took, 3500);
}

TEST_F(ControlServerTest, RequestsArrivingInPiecesOnTwoConnectionsAreEachAssembled) {
  auto server = StartServer();
  ASSERT_TRUE(server);
  UniqueFd a = ConnectRaw(server->path());
  UniqueFd b = ConnectRaw(server->path());
  ASSERT_TRUE(a && b);
  ASSERT_TRUE(SendAll(a.get(), "{\"cmd\":"));
  ASSERT_TRUE(SendAll(b.get(), "{\"cmd\":\"re"));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(SendAll(b.get(), "fuse\"}\n"));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_TRUE(SendAll(a.get(), "\"status\"}\n"));
  json from_b = json::parse(ReadAll(b.get(), 3000));
  json from_a = json::parse(ReadAll(a.get(), 3000));
  EXPECT_EQ(from_a["read_from"], "master");
  EXPECT_EQ(from_b["error"], "unknown command");
}

// --- ControlServer: long requests ---------------------------------------------------

class LongRequestTest : public ControlServerTest {
 protected:
  // "wait" runs until released or stopped; "fail" throws.
  std::unique_ptr<ControlServer> StartWithLongCommands() {
    auto server = std::make_unique<ControlServer>(Path("ctl.sock"), CallerGroup(), StatusHandler);
    server->AddLongCommand("wait", [this](const json&, std::stop_token stop) -> json {
      ++started_;
      while (!stop.stop_requested() && !release_) {
        std::this_thread::sleep_for(std::chrono::milliseconds(2));
      }
      if (stop.stop_requested()) {
        ++stopped_;
        return {{"ok", false}, {"error", "stopped"}};
      }
      return {{"waited", true}};
    });
    server->AddLongCommand("fail", [](const json&, std::stop_token) -> json {
      throw std::runtime_error("long boom");
    });
    auto listening = server->Listen();
    EXPECT_TRUE(listening) << listening.error();
    if (!listening) return nullptr;
    server->Start();
    return server;
  }

  // A client that sends a "wait" request and says it is done sending.
  UniqueFd StartWait(const std::string& path) {
    UniqueFd fd = ConnectRaw(path);
    if (!fd || !SendAll(fd.get(), "{\"cmd\":\"wait\"}\n")) return {};
    ::shutdown(fd.get(), SHUT_WR);
    return fd;
  }

  // Polls `done` for up to two seconds.
  static bool Eventually(const std::function<bool()>& done) {
    const auto give_up = Clock::now() + std::chrono::seconds(2);
    while (!done()) {
      if (Clock::now() >= give_up) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
    }
    return true;
  }

  std::atomic<int> started_{0};
  std::atomic<int> stopped_{0};
  std::atomic<bool> release_{false};
};

TEST_F(LongRequestTest, LongRequestDoesNotHoldUpStatusAndIsAnsweredWhenDone) {
  auto server = StartWithLongCommands();
  ASSERT_TRUE(server);
  UniqueFd waiting = StartWait(server->path());
  ASSERT_TRUE(waiting);
  ASSERT_TRUE(Eventually([&] { return started_ == 1; }));
  ExpectPromptStatus(server->path());
  // A client done sending (SHUT_WR) has not hung up.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(stopped_, 0);
  release_ = true;
  json answer = json::parse(ReadAll(waiting.get(), 3000));
  EXPECT_EQ(answer["ok"], true);
  EXPECT_EQ(answer["waited"], true);
}

TEST_F(LongRequestTest, LongRequestIsStoppedWhenItsClientHangsUp) {
  auto server = StartWithLongCommands();
  ASSERT_TRUE(server);
  UniqueFd waiting = StartWait(server->path());
  ASSERT_TRUE(waiting);
  ASSERT_TRUE(Eventually([&] { return started_ == 1; }));
  waiting.reset();
  EXPECT_TRUE(Eventually([&] { return stopped_ == 1; }));
  ExpectPromptStatus(server->path());
}

TEST_F(LongRequestTest, LongRequestsBeyondTheLimitAreRefusedAsBusy) {
  auto server = StartWithLongCommands();
  ASSERT_TRUE(server);
  std::vector<UniqueFd> waiting;
  for (size_t i = 0; i < ControlServer::kMaxLongRequests; ++i) {
    waiting.push_back(StartWait(server->path()));
    ASSERT_TRUE(waiting.back());
  }
  ASSERT_TRUE(Eventually([&] { return started_ == static_cast<int>(ControlServer::kMaxLongRequests); }));
  auto refused = Call(server->path(), {{"cmd", "wait"}}, 2000);
  ASSERT_TRUE(refused) << refused.error();
  EXPECT_EQ((*refused)["ok"], false);
  EXPECT_EQ((*refused)["error"].get<std::string>().rfind("busy: ", 0), 0u) << refused->dump();
  release_ = true;
  for (auto& fd : waiting) EXPECT_EQ(json::parse(ReadAll(fd.get(), 3000))["waited"], true);
  // Once they are done, there is room again.
  auto again = Call(server->path(), {{"cmd", "wait"}}, 2000);
  ASSERT_TRUE(again) << again.error();
  EXPECT_EQ((*again)["waited"], true);
}

TEST_F(LongRequestTest, LongHandlerFailureBecomesOkFalse) {
  auto server = StartWithLongCommands();
  ASSERT_TRUE(server);
  auto answer = Call(server->path(), {{"cmd", "fail"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  EXPECT_EQ((*answer)["ok"], false);
  EXPECT_EQ((*answer)["error"], "internal error: long boom");
}

TEST_F(LongRequestTest, StopStopsLongRequestsPromptlyAndTheirClientsLearnWhy) {
  auto server = StartWithLongCommands();
  ASSERT_TRUE(server);
  UniqueFd waiting = StartWait(server->path());
  ASSERT_TRUE(waiting);
  ASSERT_TRUE(Eventually([&] { return started_ == 1; }));
  const auto start = Clock::now();
  server->Stop();
  EXPECT_LT(MsSince(start), 500);
  EXPECT_EQ(stopped_, 1);
  json answer = json::parse(ReadAll(waiting.get(), 1000));
  EXPECT_EQ(answer["error"], "stopped");
}

// --- Call -------------------------------------------------------------------------

class CallTest : public TempDirTest {
 protected:
  // Accepts one connection on a thread and lets `serve` do anything with it.
  void ServeOnce(std::function<void(int fd)> serve) {
    listener_ = ListenRaw(Path("raw.sock"));
    ASSERT_TRUE(listener_);
    thread_ = std::thread([this, serve] {
      UniqueFd conn(::accept4(listener_.get(), nullptr, nullptr, SOCK_CLOEXEC));
      if (conn) serve(conn.get());
    });
  }
  void TearDown() override {
    if (thread_.joinable()) thread_.join();
    TempDirTest::TearDown();
  }

  UniqueFd listener_;
  std::thread thread_;
};

TEST_F(CallTest, CallTimesOutAgainstAServerThatNeverAnswers) {
  UniqueFd mute = ListenRaw(Path("mute.sock"));  // listens, never accepts or reads
  ASSERT_TRUE(mute);
  auto start = Clock::now();
  auto answer = Call(Path("mute.sock"), {{"cmd", "status"}}, 300);
  auto took = MsSince(start);
  ASSERT_FALSE(answer);
  EXPECT_NE(answer.error().find("timed out after 300 ms"), std::string::npos) << answer.error();
  EXPECT_GE(took, 290);
  EXPECT_LT(took, 1000);
}

TEST_F(CallTest, CallTimesOutWhenTheServerBacklogIsFull) {
  UniqueFd mute = ListenRaw(Path("mute.sock"), 0);
  ASSERT_TRUE(mute);
  // Fill the backlog with connections nobody accepts.
  std::vector<UniqueFd> queued;
  for (int i = 0; i < 64; ++i) {
    UniqueFd fd(::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, Path("mute.sock").c_str(), sizeof addr.sun_path - 1);
    if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) break;
    queued.push_back(std::move(fd));
  }
  auto start = Clock::now();
  auto answer = Call(Path("mute.sock"), {{"cmd", "status"}}, 300);
  auto took = MsSince(start);
  ASSERT_FALSE(answer);
  EXPECT_NE(answer.error().find("timed out"), std::string::npos) << answer.error();
  EXPECT_LT(took, 1000);
}

TEST_F(CallTest, MissingSocketSaysSoAndNamesIt) {
  auto answer = Call(Path("none.sock"), {{"cmd", "status"}}, 300);
  ASSERT_FALSE(answer);
  EXPECT_NE(answer.error().find(Path("none.sock")), std::string::npos) << answer.error();
  EXPECT_NE(answer.error().find("No such file"), std::string::npos) << answer.error();
}

TEST_F(CallTest, OverlongSocketPathIsAnError) {
  auto answer = Call("/" + std::string(200, 'x'), {{"cmd", "status"}}, 300);
  ASSERT_FALSE(answer);
  EXPECT_NE(answer.error().find("longer than"), std::string::npos) << answer.error();
}

TEST_F(CallTest, OversizedAnswerIsRefused) {
  ServeOnce([](int fd) {
    std::string flood(kMaxMessageBytes + 4096, 'x');
    size_t off = 0;
    while (off < flood.size()) {
      ssize_t n = ::send(fd, flood.data() + off, flood.size() - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += static_cast<size_t>(n);
    }
  });
  auto answer = Call(Path("raw.sock"), {{"cmd", "status"}}, 5000);
  ASSERT_FALSE(answer);
  EXPECT_NE(answer.error().find("larger than"), std::string::npos) << answer.error();
}

TEST_F(CallTest, MalformedAnswerIsRefused) {
  ServeOnce([](int fd) { (void)!::send(fd, "hello\n", 6, MSG_NOSIGNAL); });
  auto answer = Call(Path("raw.sock"), {{"cmd", "status"}}, 2000);
  ASSERT_FALSE(answer);
  EXPECT_NE(answer.error().find("malformed answer"), std::string::npos) << answer.error();
}

TEST_F(CallTest, ConnectionClosedWithoutAnswerIsReported) {
  ServeOnce([](int) {});
  auto answer = Call(Path("raw.sock"), {{"cmd", "status"}}, 2000);
  ASSERT_FALSE(answer);
  EXPECT_NE(answer.error().find("without answering"), std::string::npos) << answer.error();
}

TEST_F(CallTest, RequestArrivesAsOneJsonLine) {
  std::string seen;
  ServeOnce([&seen](int fd) {
    char buf[4096];
    ssize_t n = ::recv(fd, buf, sizeof buf, MSG_WAITALL);
    if (n > 0) seen.assign(buf, static_cast<size_t>(n));
    (void)!::send(fd, "{\"ok\":true}\n", 12, MSG_NOSIGNAL);
  });
  auto answer = Call(Path("raw.sock"), {{"cmd", "status"}}, 2000);
  ASSERT_TRUE(answer) << answer.error();
  thread_.join();
  EXPECT_EQ(seen, "{\"cmd\":\"status\"}\n");
}

// --- nasfsctl: quoting ------------------------------------------------------------

using ctl::Bare;
using ctl::Quote;

// Reads back the bytes a quoted string stands for (the escapes Quote writes).
std::string Unquote(const std::string& q) {
  if (q.empty() || q[0] != '"') return q;
  std::string out;
  for (size_t i = 1; i + 1 < q.size(); ++i) {
    if (q[i] != '\\') {
      out.push_back(q[i]);
      continue;
    }
    const char e = q[++i];
    if (e == 'n') out.push_back('\n');
    if (e == 't') out.push_back('\t');
    if (e == '\\' || e == '"') out.push_back(e);
    if (e == 'x') {
      out.push_back(static_cast<char>(std::stoi(q.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    }
  }
  return out;
}

// Empty when `text` is safe to print on a terminal: valid UTF-8, no control
// character (C0, DEL, C1) but the newlines that end its lines, and no
// invisible character that reorders text; otherwise what is wrong, and where.
std::string TerminalHazard(const std::string& text) {
  for (size_t i = 0; i < text.size();) {
    const auto b = static_cast<unsigned char>(text[i]);
    size_t n = b < 0x80 ? 1 : (b & 0xE0) == 0xC0 ? 2 : (b & 0xF0) == 0xE0 ? 3 : (b & 0xF8) == 0xF0 ? 4 : 0;
    if (n == 0 || i + n > text.size()) return "invalid UTF-8 at byte " + std::to_string(i);
    char32_t c = n == 1 ? b : b & (0xFF >> (n + 1));
    for (size_t k = 1; k < n; ++k) {
      const auto cb = static_cast<unsigned char>(text[i + k]);
      if ((cb & 0xC0) != 0x80) return "invalid UTF-8 at byte " + std::to_string(i);
      c = (c << 6) | (cb & 0x3F);
    }
    if ((c < 0x20 && c != '\n') || (c >= 0x7F && c <= 0x9F) || (c >= 0x202A && c <= 0x202E)) {
      return "control character " + std::to_string(static_cast<unsigned>(c)) + " at byte " +
             std::to_string(i);
    }
    i += n;
  }
  return "";
}

size_t Lines(const std::string& text) { return static_cast<size_t>(std::count(text.begin(), text.end(), '\n')); }

class QuoteTest : public ::testing::Test {};

TEST_F(QuoteTest, PlainNamesPassUnchanged) {
  for (const char* s : {"/var/www/shared/index.html", "a-b_c.d+e=f@g:h", "0644", "xxh3:00ff",
                        "'master'", "caf\xc3\xa9/\xe6\x96\x87\xe4\xbb\xb6", "\xf0\x9f\x98\x80.png",
                        "2026-01-01T00:00:00.123456789Z"}) {
    EXPECT_EQ(Quote(s), s);
    EXPECT_EQ(Quote(s, Bare::kText), s);
  }
}

TEST_F(QuoteTest, SpacesQuoteAWordButNotText) {
  EXPECT_EQ(Quote("my file.txt"), "\"my file.txt\"");
  EXPECT_EQ(Quote("backup is down", Bare::kText), "backup is down");
  // A no-break space looks like a space: a word holding one is quoted too
  // (and the character kept: it is printable).
  EXPECT_EQ(Quote("a\xc2\xa0" "b"), "\"a\xc2\xa0" "b\"");
  EXPECT_EQ(Quote("a\xc2\xa0" "b", Bare::kText), "a\xc2\xa0" "b");
}

TEST_F(QuoteTest, EmptyStringIsShownAsEmptyQuotes) {
  EXPECT_EQ(Quote(""), "\"\"");
  EXPECT_EQ(Quote("", Bare::kText), "\"\"");
}

TEST_F(QuoteTest, NewlineTabQuoteAndBackslashGetCEscapes) {
  EXPECT_EQ(Quote("evil\nforged line"), "\"evil\\nforged line\"");
  EXPECT_EQ(Quote("a\tb", Bare::kText), "\"a\\tb\"");
  EXPECT_EQ(Quote("say \"hi\"", Bare::kText), "\"say \\\"hi\\\"\"");
  EXPECT_EQ(Quote("C:\\dir"), "\"C:\\\\dir\"");
  EXPECT_EQ(Quote("\"quoted\""), "\"\\\"quoted\\\"\"");  // never passes for a quoted string
}

TEST_F(QuoteTest, ControlBytesAreHexEscaped) {
  EXPECT_EQ(Quote("\x1b[31mred"), "\"\\x1b[31mred\"");
  EXPECT_EQ(Quote("bell\x07"), "\"bell\\x07\"");
  EXPECT_EQ(Quote("cr\rlf"), "\"cr\\x0dlf\"");
  EXPECT_EQ(Quote(std::string("nul\0x", 5)), "\"nul\\x00x\"");
  EXPECT_EQ(Quote("del\x7f"), "\"del\\x7f\"");
  // C1 controls (U+0080-U+009F) are valid UTF-8, and some terminals obey
  // them: U+009B is a one-character CSI.
  EXPECT_EQ(Quote("csi\xc2\x9b" "2J"), "\"csi\\xc2\\x9b2J\"");
  EXPECT_EQ(Quote("nel\xc2\x85"), "\"nel\\xc2\\x85\"");
}

TEST_F(QuoteTest, InvisibleCharactersThatReorderOrHideTextAreHexEscaped) {
  EXPECT_EQ(Quote("abc\xe2\x80\xaetxt.exe"), "\"abc\\xe2\\x80\\xaetxt.exe\"");  // U+202E RLO
  EXPECT_EQ(Quote("a\xe2\x80\x8b" "b"), "\"a\\xe2\\x80\\x8bb\"");            // U+200B ZWSP
  EXPECT_EQ(Quote("a\xe2\x80\xa8" "b"), "\"a\\xe2\\x80\\xa8" "b\"");          // U+2028 LS
  EXPECT_EQ(Quote("a\xe2\x81\xa6" "b"), "\"a\\xe2\\x81\\xa6" "b\"");          // U+2066 LRI
}

TEST_F(QuoteTest, InvalidUtf8IsHexEscapedByteByByte) {
  EXPECT_EQ(Quote("bad\xff"), "\"bad\\xff\"");
  EXPECT_EQ(Quote("\x80"), "\"\\x80\"");                        // stray continuation
  EXPECT_EQ(Quote("trunc\xc3"), "\"trunc\\xc3\"");              // cut sequence
  EXPECT_EQ(Quote("\xc3(x"), "\"\\xc3(x\"");                    // resynchronizes
  EXPECT_EQ(Quote("\xc0\xaf"), "\"\\xc0\\xaf\"");               // overlong '/'
  EXPECT_EQ(Quote("\xed\xa0\x80"), "\"\\xed\\xa0\\x80\"");      // surrogate
  EXPECT_EQ(Quote("\xf4\x90\x80\x80"), "\"\\xf4\\x90\\x80\\x80\"");  // beyond U+10FFFF
  EXPECT_EQ(Quote("\x9b" "2J"), "\"\\x9b2J\"");                 // a raw C1 byte
  // Printable UTF-8 beside them is kept as it is.
  EXPECT_EQ(Quote("caf\xc3\xa9\xff"), "\"caf\xc3\xa9\\xff\"");
}

TEST_F(QuoteTest, AnyBytesComeOutAsOneSafeLineThatReadsBackExactly) {
  const unsigned seed = std::random_device{}();
  std::printf("QuoteTest seed: %u\n", seed);
  std::mt19937 rng(seed);
  // Bytes that matter most, often; any byte, sometimes.
  const std::string favourites = std::string("a /\\\"\n\t\x1b\x7f", 10) + "\xc2\x9b\xc3\xa9\xe2\x80\xae\xff\x80";
  std::uniform_int_distribution<int> len(0, 12), pick(0, static_cast<int>(favourites.size()) - 1),
      any(0, 255), coin(0, 3);
  for (int i = 0; i < 20000; ++i) {
    std::string s;
    for (int n = len(rng); n > 0; --n) {
      s.push_back(coin(rng) == 0 ? static_cast<char>(any(rng)) : favourites[static_cast<size_t>(pick(rng))]);
    }
    for (Bare bare : {Bare::kWord, Bare::kText}) {
      const std::string q = Quote(s, bare);
      ASSERT_EQ(TerminalHazard(q), "") << "seed " << seed << ": " << ::testing::PrintToString(s);
      ASSERT_EQ(Lines(q), 0u) << "seed " << seed << ": " << ::testing::PrintToString(s);
      ASSERT_EQ(Unquote(q), s) << "seed " << seed << ": " << ::testing::PrintToString(q);
      if (bare == Bare::kWord) {
        ASSERT_EQ(q.find(' ') != std::string::npos, q.front() == '"' && s.find(' ') != std::string::npos)
            << "seed " << seed << ": a bare word holds a space: " << ::testing::PrintToString(q);
      }
    }
  }
}

// --- nasfsctl: rendering answers from a faked daemon -------------------------------

// Paths as another machine may have planted them on a NAS.
const std::string kForging = "site/evil\n  master  2026-01-01T00:00:00Z  write  site/forged";
const std::string kEscapes = "site/\x1b[31mred\x1b[0m";
const std::string kInvalid = "site/bad\xff\xfe.txt";

class RenderTest : public TempDirTest {
 protected:
  // A daemon that answers every request with `answer` (the daemon's own
  // encoder: invalid UTF-8 arrives replaced by U+FFFD, as from nasfs).
  ctl::MountAnswer AskFaked(const json& request, json answer) {
    ControlServer daemon(Path("fake.sock"), CallerGroup(), [&answer](const json&) { return answer; });
    EXPECT_TRUE(daemon.Listen());
    daemon.Start();
    return ctl::AskSocket("/srv/site", Path("fake.sock"), request, 3000);
  }
  static gid_t CallerGroup() { return ::geteuid() == 0 ? static_cast<gid_t>(-1) : ::getegid(); }

  static json JournalAnswer() {
    json entries = json::array();
    for (const auto& p : {kForging, kEscapes, kInvalid}) {
      entries.push_back({{"path", "/" + p}, {"target", "master"}, {"ops", {"write"}},
                         {"since", "2026-01-01T00:00:00Z"}, {"seq", 7}});
    }
    return {{"total", 3}, {"entries", entries}};
  }
  static json VerifyAnswer() {
    json diffs = json::array();
    for (const auto& p : {kForging, kEscapes, kInvalid}) {
      diffs.push_back({{"path", "/" + p}, {"what", "symlink target"}, {"master", p}, {"backup", "ok"}});
    }
    diffs.push_back({{"path", "/site/x"}, {"what", "xattr user.\x1b]0;owned\x07"}, {"master", "'a'"}, {"backup", nullptr}});
    diffs.push_back({{"path", "/site/y"}, {"what", "unreadable"}, {"master", "readdir: " + kForging}});
    return {{"match", false}, {"entries_compared", 9}, {"differences", diffs}};
  }
  static json ConflictsAnswer() {
    json list = json::array();
    for (const auto& p : {kForging, kEscapes, kInvalid}) {
      list.push_back({{"id", "c1"}, {"path", p}, {"kind", "file"}, {"kept_from", "backup"},
                      {"kept_mtime", "t1"}, {"winner", "master"}, {"winner_mtime", "t2"},
                      {"reason", "split brain"}, {"node", "web\x1b[2J1"}});
    }
    return {{"conflicts", list}};
  }
};

TEST_F(RenderTest, JournalQuotesHostilePathsOnOneLineEach) {
  const ctl::MountAnswer m = AskFaked({{"cmd", "journal"}}, JournalAnswer());
  ASSERT_TRUE(m.ok()) << m.answer.dump();
  const std::string text = ctl::RenderJournal(m);
  EXPECT_EQ(TerminalHazard(text), "") << text;
  EXPECT_EQ(Lines(text), 4u) << text;  // the count line and three entries
  EXPECT_NE(text.find("  master  2026-01-01T00:00:00Z  write  "
                      "\"/site/evil\\n  master  2026-01-01T00:00:00Z  write  site/forged\"  (seq 7)\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("  \"/site/\\x1b[31mred\\x1b[0m\"  (seq 7)\n"), std::string::npos) << text;
  // The daemon's encoder replaced the bad bytes with U+FFFD, which prints.
  EXPECT_NE(text.find("  /site/bad\xef\xbf\xbd\xef\xbf\xbd.txt  (seq 7)\n"), std::string::npos) << text;
}

TEST_F(RenderTest, VerifyQuotesHostilePathsValuesAndXattrNames) {
  const ctl::MountAnswer m = AskFaked({{"cmd", "verify"}}, VerifyAnswer());
  ASSERT_TRUE(m.ok()) << m.answer.dump();
  const std::string text = ctl::RenderVerify(m);
  EXPECT_EQ(TerminalHazard(text), "") << text;
  EXPECT_EQ(Lines(text), 6u) << text;  // the verdict and five differences
  EXPECT_NE(text.find("  \"/site/evil\\n  master  2026-01-01T00:00:00Z  write  site/forged\": "
                      "symlink target differs (master \"site/evil\\n  master  "),
            std::string::npos) << text;
  EXPECT_NE(text.find("  \"/site/\\x1b[31mred\\x1b[0m\": symlink target differs (master "
                      "\"site/\\x1b[31mred\\x1b[0m\", backup ok)\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("  /site/x: xattr \"user.\\x1b]0;owned\\x07\" differs (master 'a', backup absent)\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("  /site/y: unreadable (master: \"readdir: site/evil\\n  master  "), std::string::npos)
      << text;
}

TEST_F(RenderTest, ConflictsQuoteHostilePathsAndNodeNames) {
  const ctl::MountAnswer m = AskFaked({{"cmd", "conflicts"}}, ConflictsAnswer());
  ASSERT_TRUE(m.ok()) << m.answer.dump();
  const std::string text = ctl::RenderConflicts(m);
  EXPECT_EQ(TerminalHazard(text), "") << text;
  EXPECT_EQ(Lines(text), 4u) << text;
  EXPECT_NE(text.find("  c1  \"/site/\\x1b[31mred\\x1b[0m\"  file from the backup (mtime t1), master won "
                      "(mtime t2), split brain by \"web\\x1b[2J1\"\n"),
            std::string::npos) << text;
  EXPECT_NE(text.find("  c1  \"/site/evil\\n  master"), std::string::npos) << text;
}

// What a daemon could not send (JSON carries only UTF-8), rendered all the
// same: the renderers take any bytes.
TEST_F(RenderTest, InvalidUtf8IsHexEscapedByEveryRenderer) {
  auto answer = [](json a) { return ctl::MountAnswer{"/srv/site", std::move(a), true}; };
  json journal = JournalAnswer(), verify = VerifyAnswer(), conflicts = ConflictsAnswer();
  for (const auto& [text, lines] : std::vector<std::pair<std::string, size_t>>{
           {ctl::RenderJournal(answer(journal)), 4}, {ctl::RenderVerify(answer(verify)), 6},
           {ctl::RenderConflicts(answer(conflicts)), 4}}) {
    EXPECT_EQ(TerminalHazard(text), "") << text;
    EXPECT_EQ(Lines(text), lines) << text;
    EXPECT_NE(text.find("\"/site/bad\\xff\\xfe.txt\""), std::string::npos) << text;
  }
}

TEST_F(RenderTest, StatusQuotesPeerNamesAndErrors) {
  json status = {{"mountpoint", "/srv/site"},
                 {"node", "web1"},
                 {"pair_id", "\x1b[2J\x1b[2J\x1b[2J"},
                 {"read_from", "master"},
                 {"backends", {{{"role", "master"}, {"path", "/nas_master"}, {"state", "down"},
                                {"last_error", "open /nas_master/" + kForging + ": Input/output error"}}}},
                 {"peers", {{{"node", "web2\n  peer:  web3: alive"}, {"alive", true}, {"heartbeat_age_s", 1}}}},
                 {"coordination", {{"waiting_for", {"web\x1b[31m4"}}}},
                 {"journal", {{"pending", 0}, {"error", "cannot sync " + kEscapes}}},
                 {"new_\x1b[5mfield", "x\ny"}};
  const ctl::MountAnswer m = AskFaked({{"cmd", "status"}}, status);
  ASSERT_TRUE(m.ok()) << m.answer.dump();
  const std::string text = ctl::RenderStatus(m);
  EXPECT_EQ(TerminalHazard(text), "") << text;
  EXPECT_EQ(Lines(text), 8u) << text;
  EXPECT_NE(text.find("pair \"\\x1b[2J\\x1b[2J\"\n"), std::string::npos) << text;  // cut, then quoted
  EXPECT_NE(text.find("last error: \"open /nas_master/site/evil\\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\"web2\\n  peer:  web3: alive\": alive"), std::string::npos) << text;
  EXPECT_NE(text.find("waits for web servers \"web\\x1b[31m4\""), std::string::npos) << text;
  EXPECT_NE(text.find("\"cannot sync site/\\x1b[31mred\\x1b[0m\""), std::string::npos) << text;
}

TEST_F(RenderTest, UsualAnswersReadAsBefore) {
  json verify = {{"match", false}, {"entries_compared", 12},
                 {"differences", {{{"path", "/site/deleted.txt"}, {"what", "only on master"}, {"master", "file"}},
                                  {{"path", "/site/mode.txt"}, {"what", "mode"}, {"master", "0644"}, {"backup", "0600"}},
                                  {{"path", "/site/x.txt"}, {"what", "xattr user.verify"}, {"master", "'master'"},
                                   {"backup", "'backup'"}}}}};
  EXPECT_EQ(ctl::RenderVerify({"/srv/site", verify, true}),
            "/srv/site: master and backup differ: 3 differences listed (12 entries compared)\n"
            "  /site/deleted.txt: only on master (file)\n"
            "  /site/mode.txt: mode differs (master 0644, backup 0600)\n"
            "  /site/x.txt: xattr user.verify differs (master 'master', backup 'backup')\n");
  json failed = {{"ok", false}, {"error", "backup is down; verify needs both NAS"}};
  EXPECT_EQ(ctl::NoVerdict({"/srv/site", failed, true}),
            "/srv/site: verify failed: backup is down; verify needs both NAS");
}

// A daemon sending bytes JSON cannot carry: the answer is refused as
// malformed, and the message quoting it is itself safe to print.
TEST_F(RenderTest, MalformedAnswerWithRawBytesGivesASafeMessage) {
  UniqueFd listener = ListenRaw(Path("raw.sock"));
  ASSERT_TRUE(listener);
  std::thread daemon([&] {
    UniqueFd conn(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
    if (!conn) return;
    const std::string bytes = "{\"ok\":true,\"total\":1,\"entries\":[{\"path\":\"a\xff\x9b" "2J\"}]}\n";
    (void)!::send(conn.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
  });
  const ctl::MountAnswer m = ctl::AskSocket("/srv/site", Path("raw.sock"), {{"cmd", "journal"}}, 3000);
  daemon.join();
  ASSERT_FALSE(m.ok());
  const std::string text = ctl::Problem(m);
  EXPECT_EQ(TerminalHazard(text), "") << text;
  EXPECT_NE(text.find("malformed answer"), std::string::npos) << text;
}

}  // namespace
}  // namespace nasfs::control
