// The control plane: mount ids, the registry, the mount table, Call() and
// ControlServer, over real unix sockets in a temporary directory.
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

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
  static json StatusHandler(const json& req) {
    if (req.value("cmd", "") == "status") return {{"read_from", "master"}, {"pid", 1}};
    if (req.value("cmd", "") == "throw") throw std::runtime_error("boom");
    if (req.value("cmd", "") == "array") return json::array({1, 2});
    if (req.value("cmd", "") == "refuse") return {{"ok", false}, {"error", "unknown command"}};
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

}  // namespace
}  // namespace nasfs::control
