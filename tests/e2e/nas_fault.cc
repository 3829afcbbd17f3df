#include "tests/e2e/nas_fault.h"

#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

#include <fmt/format.h>

namespace nasfs::e2e {
namespace {

// ---- the safety net ---------------------------------------------------------
//
// Server pids and their mount points live in fixed arrays so the fatal-signal
// handler can undo them without allocating. A slot is written under
// g_registry_mu by the main thread; the handler only reads.

constexpr int kMaxServers = 16;
volatile pid_t g_server_pid[kMaxServers];
char g_server_path[kMaxServers][PATH_MAX];
std::mutex g_registry_mu;

int Register(pid_t pid, const std::string& path) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  for (int i = 0; i < kMaxServers; ++i) {
    if (g_server_pid[i] == 0) {
      std::snprintf(g_server_path[i], sizeof g_server_path[i], "%s", path.c_str());
      g_server_pid[i] = pid;
      return i;
    }
  }
  return -1;
}

void Unregister(pid_t pid) {
  std::lock_guard<std::mutex> lock(g_registry_mu);
  for (auto& p : g_server_pid) {
    if (p == pid) p = 0;
  }
}

// Wakes every server, then detaches its mount, then kills it. SIGCONT comes
// first: a stopped server would hang whoever touches its mount next.
// Async-signal-safe.
void UndoAllServers() {
  for (int i = 0; i < kMaxServers; ++i) {
    if (pid_t pid = g_server_pid[i]; pid > 0) kill(pid, SIGCONT);
  }
  for (int i = 0; i < kMaxServers; ++i) {
    if (g_server_pid[i] > 0) (void)umount2(g_server_path[i], MNT_DETACH);
  }
  for (int i = 0; i < kMaxServers; ++i) {
    if (pid_t pid = g_server_pid[i]; pid > 0) kill(pid, SIGKILL);
  }
}

constexpr int kFatalSignals[] = {SIGTERM, SIGINT, SIGHUP, SIGABRT, SIGSEGV, SIGBUS};
struct sigaction g_previous[NSIG];

// Undoes the servers, then hands the signal to whoever had it before us
// (mount_fixture's handler, which detaches the nasfs mounts and re-raises).
void OnFatalSignal(int sig) {
  UndoAllServers();
  const struct sigaction& prev = g_previous[sig];
  sigaction(sig, &prev, nullptr);
  if ((prev.sa_flags & SA_SIGINFO) == 0 && prev.sa_handler != SIG_DFL && prev.sa_handler != SIG_IGN) {
    prev.sa_handler(sig);
  } else {
    raise(sig);  // blocked until we return, then the default action
  }
}

void InstallSignalHandlersOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = OnFatalSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    for (int sig : kFatalSignals) sigaction(sig, &sa, &g_previous[sig]);
  });
}

// At the end of the test binary: whatever server a test left behind.
class NasFaultEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    std::vector<pid_t> left;
    {
      std::lock_guard<std::mutex> lock(g_registry_mu);
      for (pid_t p : g_server_pid) {
        if (p > 0) left.push_back(p);
      }
    }
    if (left.empty()) return;
    std::fprintf(stderr, "nasfs e2e: %zu NAS server(s) left running; killing them\n", left.size());
    UndoAllServers();
    for (pid_t p : left) {
      while (waitpid(p, nullptr, 0) < 0 && errno == EINTR) {
      }
      Unregister(p);
    }
  }
};

::testing::Environment* const g_environment =
    ::testing::AddGlobalTestEnvironment(new NasFaultEnvironment);

// 'T' when stopped, 'Z' a zombie, '?' when unknown.
char ProcessState(pid_t pid) {
  auto stat = ReadFile(fmt::format("/proc/{}/stat", pid));
  if (!stat) return '?';
  auto paren = stat->rfind(')');
  return paren != std::string::npos && paren + 2 < stat->size() ? (*stat)[paren + 2] : '?';
}

// Reaps our child pid, waiting up to `timeout`; true once reaped.
bool Reap(pid_t pid, std::chrono::milliseconds timeout) {
  return WaitFor(
      [pid] {
        pid_t r = waitpid(pid, nullptr, WNOHANG);
        return r == pid || (r < 0 && errno == ECHILD);
      },
      timeout, 5ms);
}

}  // namespace

std::string FaultfsBin() {
  const char* v = std::getenv("FAULTFS_BIN");
  return v != nullptr && *v != '\0' ? v : BuildDirBinary("tests/faultfs");
}

// ---- FuseNas ----------------------------------------------------------------

FuseNas::FuseNas(const Workspace& ws, const std::string& name) : FuseNas(ws, name, name) {}

FuseNas::FuseNas(const Workspace& ws, const std::string& store, const std::string& path)
    : name_(path),
      path_(ws.MakeDir(path)),
      store_(ws.MakeDir("store_" + store)),
      log_(ws.Path(path + ".server.log")) {
  InstallSignalHandlersOnce();
  mounts_before_ = CountMountsAt(path_);
}

FuseNas::~FuseNas() {
  if (pid_ > 0) kill(pid_, SIGCONT);
  stopped_ = false;
  DetachOwnMounts();
  KillAndReap();
}

std::string FuseNas::Log() const { return ReadFile(log_).value_or("(no log)"); }

void FuseNas::Start() {
  error_.clear();
  const std::vector<std::string> argv = ServerArgv();
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const int log_fd = open(log_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) {
    error_ = fmt::format("cannot open {} or /dev/null: {}", log_, std::strerror(errno));
    if (log_fd >= 0) close(log_fd);
    if (null_fd >= 0) close(null_fd);
    return;
  }
  const pid_t parent = getpid();
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the test has other threads.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    // Die with the test binary, even if it is SIGKILLed (a stopped server
    // left behind would hang whatever touches its mount).
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(126);
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  close(log_fd);
  close(null_fd);
  if (pid < 0) {
    error_ = fmt::format("fork: {}", std::strerror(errno));
    return;
  }
  pid_ = pid;
  stopped_ = false;
  Register(pid, path_);

  bool exited = false;
  const bool mounted = WaitFor(
      [&] {
        if (CountMountsAt(path_) > mounts_before_) return true;
        int status = 0;
        if (waitpid(pid, &status, WNOHANG) == pid) exited = true;
        return exited;
      },
      10s, 10ms);
  if (exited) {
    Unregister(pid);
    pid_ = -1;
    error_ = fmt::format("`{}` exited before mounting {}: {}", argv[0], path_, Log());
  } else if (!mounted || CountMountsAt(path_) <= mounts_before_) {
    error_ = fmt::format("`{}` did not mount {} within 10 s: {}", argv[0], path_, Log());
    KillAndReap();
  }
}

void FuseNas::Stop() {
  if (pid_ <= 0) return;
  kill(pid_, SIGSTOP);
  stopped_ = true;
  const pid_t pid = pid_;
  if (!WaitFor([pid] { return ProcessState(pid) == 'T'; }, 2s, 2ms)) {
    ADD_FAILURE() << name_ << " server " << pid << " not stopped 2 s after SIGSTOP (state "
                  << ProcessState(pid) << ")";
  }
}

void FuseNas::Cont() {
  if (pid_ > 0) kill(pid_, SIGCONT);
  stopped_ = false;
}

void FuseNas::Kill() { KillAndReap(); }

void FuseNas::Unmount() {
  DetachOwnMounts();
  KillAndReap();
}

std::string FuseNas::Remount() {
  KillAndReap();
  DetachOwnMounts();
  Start();
  return error_;
}

void FuseNas::DetachOwnMounts() {
  for (int round = 0; round < 8 && CountMountsAt(path_) > mounts_before_; ++round) {
    // MNT_DETACH sends the server nothing, so it cannot hang on a stopped one.
    if (umount2(path_.c_str(), MNT_DETACH) != 0) {
      ADD_FAILURE() << "umount2(" << path_ << ", MNT_DETACH): " << std::strerror(errno);
      break;
    }
  }
}

void FuseNas::KillAndReap() {
  if (pid_ <= 0) return;
  const pid_t pid = pid_;
  kill(pid, SIGKILL);  // also ends a stopped process
  if (!Reap(pid, 10s)) ADD_FAILURE() << name_ << " server " << pid << " not reaped 10 s after SIGKILL";
  Unregister(pid);
  pid_ = -1;
  stopped_ = false;
}

// ---- the servers --------------------------------------------------------------

BindfsNas::BindfsNas(const Workspace& ws, const std::string& name) : FuseNas(ws, name) { Start(); }

BindfsNas::BindfsNas(const Workspace& ws, const std::string& store, const std::string& path)
    : FuseNas(ws, store, path) {
  Start();
}

std::vector<std::string> BindfsNas::ServerArgv() const {
  // Single-threaded (bindfs's default): one SIGSTOP freezes every request.
  // --no-allow-other: only root (nasfs, the test) uses the NAS.
  return {"bindfs", "-f", "--no-allow-other", store(), path()};
}

FaultfsNas::FaultfsNas(const Workspace& ws, const std::string& name) : FaultfsNas(ws, name, name) {}

FaultfsNas::FaultfsNas(const Workspace& ws, const std::string& store, const std::string& path)
    : FuseNas(ws, store, path), ctl_(ws.Path(path + ".faults")) {
  // A failure is reported; faultfs then starts without faults, as wanted anyway.
  (void)SetFaults("");
  Start();
}

bool FaultfsNas::SetFaults(const std::string& faults) {
  // Written aside and renamed: faultfs sees a new inode, never a half file.
  const std::string tmp = ctl_ + ".tmp";
  if (!WriteFile(tmp, faults + "\n") || rename(tmp.c_str(), ctl_.c_str()) != 0) {
    ADD_FAILURE() << "cannot write " << ctl_ << ": " << std::strerror(errno);
    return false;
  }
  return true;
}

std::vector<std::string> FaultfsNas::ServerArgv() const {
  return {FaultfsBin(), "-f", "-o", "ctl=" + ctl_, store(), path()};
}

NasServer DefaultNasServer() {
  const char* v = std::getenv("NASFS_E2E_NAS_SERVER");
  return v != nullptr && std::string(v) == "bindfs" ? NasServer::kBindfs : NasServer::kFaultfs;
}

const char* NasServerName(NasServer s) { return s == NasServer::kBindfs ? "bindfs" : "faultfs"; }

std::unique_ptr<FuseNas> MakeNas(const Workspace& ws, const std::string& name, NasServer server) {
  if (server == NasServer::kBindfs) return std::make_unique<BindfsNas>(ws, name);
  return std::make_unique<FaultfsNas>(ws, name);
}

std::unique_ptr<FuseNas> MakeNas(const Workspace& ws, const std::string& store, const std::string& path,
                                 NasServer server) {
  if (server == NasServer::kBindfs) return std::make_unique<BindfsNas>(ws, store, path);
  return std::make_unique<FaultfsNas>(ws, store, path);
}

}  // namespace nasfs::e2e
