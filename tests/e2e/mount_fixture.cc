#include "tests/e2e/mount_fixture.h"

#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include <fmt/format.h>

namespace nasfs::e2e {
namespace {

namespace fsys = std::filesystem;
using Clock = std::chrono::steady_clock;

// ---- the scratch root and the registry of mount points ----------------------
//
// Mount points are kept in a fixed array of C strings so the fatal-signal
// handler can detach them without allocating.

constexpr int kMaxTracked = 64;
char g_tracked[kMaxTracked][PATH_MAX];
std::mutex g_tracked_mu;

std::mutex g_root_mu;
std::string g_root;  // guarded by g_root_mu; "" until the first Workspace

void TrackMountpoint(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_tracked_mu);
  for (auto& slot : g_tracked) {
    if (slot[0] == '\0') {
      std::snprintf(slot, sizeof slot, "%s", path.c_str());
      return;
    }
  }
}

void UntrackMountpoint(const std::string& path) {
  std::lock_guard<std::mutex> lock(g_tracked_mu);
  for (auto& slot : g_tracked) {
    if (path == slot) {
      slot[0] = '\0';
      return;
    }
  }
}

// A meson timeout (SIGTERM), ^C, or a crash: detach what we mounted, then die
// of the same signal. Only async-signal-safe calls here.
void OnFatalSignal(int sig) {
  for (auto& slot : g_tracked) {
    if (slot[0] != '\0') (void)umount2(slot, MNT_DETACH);
  }
  signal(sig, SIG_DFL);
  raise(sig);
}

std::string ScratchRoot() {
  std::lock_guard<std::mutex> lock(g_root_mu);
  if (g_root.empty()) {
    char tmpl[] = "/tmp/nasfs-e2e-XXXXXX";
    if (mkdtemp(tmpl) == nullptr) return "";
    chmod(tmpl, 0755);  // an unprivileged child must reach what lies beneath
    g_root = tmpl;
  }
  return g_root;
}

std::string DecodeMountField(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    // /proc/mounts writes space, tab, newline and backslash as \ooo.
    if (s[i] == '\\' && i + 3 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 3), nullptr, 8)));
      i += 3;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

std::string ReadFd(int fd) {
  std::string out;
  char buf[65536];
  off_t off = 0;
  for (;;) {
    ssize_t n = pread(fd, buf, sizeof buf, off);
    if (n <= 0) break;
    out.append(buf, static_cast<size_t>(n));
    off += n;
  }
  return out;
}

void DropPrivileges(const Credentials& c) {
  if (setgroups(0, nullptr) != 0 || setgid(c.gid) != 0 || setuid(c.uid) != 0) _exit(126);
}

int WaitStatusToCode(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

// Waits for pid until deadline; on timeout kills its process group and the
// pid itself and reaps it. Returns the exit code (128+sig if killed) and
// whether it timed out.
std::pair<int, bool> WaitChild(pid_t pid, Clock::time_point deadline) {
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return {WaitStatusToCode(status), false};
    if (r < 0 && errno != EINTR) return {-1, false};
    if (Clock::now() >= deadline) break;
    std::this_thread::sleep_for(5ms);
  }
  kill(-pid, SIGKILL);
  kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return {WaitStatusToCode(status), true};
}

std::string RealPathOr(const std::string& p) {
  char buf[PATH_MAX];
  if (realpath(p.c_str(), buf) != nullptr) return buf;
  return p;
}

std::vector<std::string> CmdlineOf(pid_t pid) {
  std::vector<std::string> args;
  auto raw = ReadFile(fmt::format("/proc/{}/cmdline", pid));
  if (!raw) return args;
  size_t start = 0;
  for (size_t i = 0; i < raw->size(); ++i) {
    if ((*raw)[i] == '\0') {
      args.push_back(raw->substr(start, i - start));
      start = i + 1;
    }
  }
  return args;
}

// nasfs processes (by /proc/<pid>/exe) with `mountpoint` among their
// arguments, not yet exited.
std::vector<pid_t> FindDaemonPids(const std::string& mountpoint) {
  std::vector<pid_t> pids;
  const std::string exe = RealPathOr(NasfsBin());
  DIR* d = opendir("/proc");
  if (d == nullptr) return pids;
  while (dirent* e = readdir(d)) {
    char* end = nullptr;
    long pid = std::strtol(e->d_name, &end, 10);
    if (end == e->d_name || *end != '\0' || pid == getpid()) continue;
    char link[PATH_MAX];
    ssize_t n = readlink(fmt::format("/proc/{}/exe", pid).c_str(), link, sizeof link - 1);
    if (n <= 0) continue;
    std::string target(link, static_cast<size_t>(n));
    // A binary rebuilt while its daemon runs shows as "<path> (deleted)".
    if (target != exe && target != exe + " (deleted)") continue;
    auto args = CmdlineOf(static_cast<pid_t>(pid));
    if (std::find(args.begin(), args.end(), mountpoint) == args.end()) continue;
    if (ProcessGone(static_cast<pid_t>(pid))) continue;
    pids.push_back(static_cast<pid_t>(pid));
  }
  closedir(d);
  return pids;
}

class E2eEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    std::string why = WhyMountedTestsCannotRun();
    if (!why.empty()) {
      std::fprintf(stderr, "SKIP: mounted tests cannot run here: %s\n", why.c_str());
      std::fflush(stderr);
      std::_Exit(77);  // meson's "skipped"
    }
    umask(022);  // modes in the tests are then deterministic
    struct sigaction sa {};
    sa.sa_handler = OnFatalSignal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;
    for (int sig : {SIGTERM, SIGINT, SIGHUP, SIGABRT, SIGSEGV, SIGBUS}) sigaction(sig, &sa, nullptr);
    std::printf("nasfs e2e: NASFS_BIN=%s NASFSCTL_BIN=%s\n", NasfsBin().c_str(), NasfsctlBin().c_str());
  }

  void TearDown() override {
    std::string root;
    {
      std::lock_guard<std::mutex> lock(g_root_mu);
      root = g_root;
    }
    if (root.empty()) return;
    int n = DetachMountsUnder(root);
    if (n > 0) std::fprintf(stderr, "nasfs e2e: detached %d mount(s) left under %s\n", n, root.c_str());
    std::error_code ec;
    if (DetachMountsUnder(root) == 0) fsys::remove_all(root, ec);
  }
};

::testing::Environment* const g_environment =
    ::testing::AddGlobalTestEnvironment(new E2eEnvironment);

}  // namespace

// ---- environment ------------------------------------------------------------

std::string BuildDirBinary(const char* rel) {
  char exe[PATH_MAX];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) return rel;
  exe[n] = '\0';
  // <build>/tests/e2e_x -> <build>/<rel>
  fsys::path p(exe);
  return (p.parent_path().parent_path() / rel).string();
}

std::string NasfsBin() {
  const char* v = std::getenv("NASFS_BIN");
  return v != nullptr && *v != '\0' ? v : BuildDirBinary("fs/nasfs");
}

std::string NasfsctlBin() {
  const char* v = std::getenv("NASFSCTL_BIN");
  return v != nullptr && *v != '\0' ? v : BuildDirBinary("tools/nasfsctl");
}

std::string WhyMountedTestsCannotRun() {
  if (geteuid() != 0) return "not root";
  int fd = open("/dev/fuse", O_RDWR | O_CLOEXEC);
  if (fd < 0) return fmt::format("cannot open /dev/fuse: {}", std::strerror(errno));
  close(fd);
  if (RunCommand({"fusermount3", "-V"}, Within(5s)).exit_code != 0) return "no fusermount3";
  return "";
}

// ---- running things ---------------------------------------------------------

std::string CommandResult::Describe() const {
  std::string cmd;
  for (const auto& a : argv) cmd += (cmd.empty() ? "" : " ") + a;
  std::string how = timed_out ? "timed out" : fmt::format("exit {}", exit_code);
  return fmt::format("`{}`: {}; stdout: [{}] stderr: [{}]", cmd, how, out, err);
}

CommandResult RunCommand(const std::vector<std::string>& argv, const RunOptions& opts) {
  CommandResult r;
  r.argv = argv;
  if (argv.empty()) return r;
  int out_fd = memfd_create("nasfs-e2e-out", MFD_CLOEXEC);
  int err_fd = memfd_create("nasfs-e2e-err", MFD_CLOEXEC);
  if (out_fd < 0 || err_fd < 0) {
    r.err = fmt::format("memfd_create: {}", std::strerror(errno));
    return r;
  }
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const auto deadline = Clock::now() + opts.timeout;
  pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);
    int devnull = open("/dev/null", O_RDONLY);
    dup2(devnull, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    if (opts.as) DropPrivileges(*opts.as);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  if (pid < 0) {
    r.err = fmt::format("fork: {}", std::strerror(errno));
  } else {
    setpgid(pid, pid);  // either side may win the race; both ask the same
    auto [code, timed_out] = WaitChild(pid, deadline);
    r.exit_code = code;
    r.timed_out = timed_out;
    r.out = ReadFd(out_fd);
    r.err = ReadFd(err_fd);
  }
  close(out_fd);
  close(err_fd);
  return r;
}

std::optional<std::string> RunInChild(const std::function<std::string()>& fn, const RunOptions& opts) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) != 0) return std::nullopt;
  const auto deadline = Clock::now() + opts.timeout;
  std::fflush(nullptr);
  pid_t pid = fork();
  if (pid == 0) {
    close(p[0]);
    setpgid(0, 0);
    if (opts.as) DropPrivileges(*opts.as);
    std::string s = fn();
    size_t off = 0;
    while (off < s.size()) {
      ssize_t n = write(p[1], s.data() + off, s.size() - off);
      if (n <= 0) _exit(125);
      off += static_cast<size_t>(n);
    }
    _exit(0);
  }
  close(p[1]);
  if (pid < 0) {
    close(p[0]);
    return std::nullopt;
  }
  std::string out;
  char buf[4096];
  bool eof = false;
  while (!eof && Clock::now() < deadline) {
    pollfd pfd{p[0], POLLIN, 0};
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    int pr = poll(&pfd, 1, static_cast<int>(std::max<long>(1, left.count())));
    if (pr < 0 && errno == EINTR) continue;
    if (pr <= 0) continue;
    ssize_t n = read(p[0], buf, sizeof buf);
    if (n > 0) {
      out.append(buf, static_cast<size_t>(n));
    } else if (n == 0 || errno != EINTR) {
      eof = true;
    }
  }
  close(p[0]);
  auto [code, timed_out] = WaitChild(pid, eof ? Clock::now() + 5s : Clock::now());
  if (timed_out || code != 0) return std::nullopt;
  return out;
}

bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout,
             std::chrono::milliseconds poll) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (cond()) return true;
    if (Clock::now() >= deadline) return cond();
    std::this_thread::sleep_for(poll);
  }
}

// ---- mounts -----------------------------------------------------------------

std::vector<MountEntry> ReadMounts() {
  std::vector<MountEntry> mounts;
  std::ifstream in("/proc/self/mounts");
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream ls(line);
    MountEntry m;
    if (ls >> m.source >> m.target >> m.type >> m.options) {
      m.source = DecodeMountField(m.source);
      m.target = DecodeMountField(m.target);
      mounts.push_back(std::move(m));
    }
  }
  return mounts;
}

std::optional<MountEntry> FindMount(const std::string& target) {
  std::optional<MountEntry> found;
  for (auto& m : ReadMounts()) {
    if (m.target == target) found = m;  // the last one listed is on top
  }
  return found;
}

int DetachMountsUnder(const std::string& prefix) {
  int detached = 0;
  for (int round = 0; round < 8; ++round) {
    std::vector<std::string> targets;
    for (auto& m : ReadMounts()) {
      if (m.target == prefix || m.target.rfind(prefix + "/", 0) == 0) targets.push_back(m.target);
    }
    if (targets.empty()) break;
    std::sort(targets.begin(), targets.end(),
              [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
    for (auto& t : targets) {
      if (umount2(t.c_str(), MNT_DETACH) == 0) ++detached;
    }
  }
  return detached;
}

bool ProcessGone(pid_t pid) {
  if (pid <= 0) return true;
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  // Reparented daemons may linger as zombies where nothing reaps them.
  auto stat = ReadFile(fmt::format("/proc/{}/stat", pid));
  if (!stat) return true;
  auto paren = stat->rfind(')');
  return paren != std::string::npos && paren + 2 < stat->size() && (*stat)[paren + 2] == 'Z';
}

// ---- workspace --------------------------------------------------------------

Workspace::Workspace() {
  std::string scratch = ScratchRoot();
  if (scratch.empty()) {
    error_ = fmt::format("cannot create the scratch root under /tmp: {}", std::strerror(errno));
    return;
  }
  std::string tmpl = scratch + "/ws-XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    error_ = fmt::format("mkdtemp {}: {}", tmpl, std::strerror(errno));
    return;
  }
  root_ = tmpl;
  chmod(root_.c_str(), 0755);
  master_ = MakeDir("master");
  backup_ = MakeDir("backup");
  mnt_ = MakeDir("mnt");
}

Workspace::~Workspace() {
  if (root_.empty()) return;
  int n = DetachMountsUnder(root_);
  if (n > 0) {
    ADD_FAILURE() << "a mount was left under " << root_ << " (detached " << n << ")";
  }
  for (const auto& m : ReadMounts()) {
    if (m.target.rfind(root_ + "/", 0) == 0) {
      // Still mounted: never recurse into a live mount.
      ADD_FAILURE() << "cannot detach " << m.target << "; leaving " << root_ << " in place";
      return;
    }
  }
  std::error_code ec;
  fsys::remove_all(root_, ec);  // does not follow symlinks (the escape tests plant some)
}

std::string Workspace::Path(std::string_view rel) const {
  return root_ + "/" + std::string(rel);
}

std::string Workspace::MakeDir(std::string_view rel) const {
  std::string p = Path(rel);
  std::error_code ec;
  fsys::create_directories(p, ec);
  chmod(p.c_str(), 0755);
  return p;
}

// ---- status -----------------------------------------------------------------

StatusResult Status(const std::string& mountpoint, const RunOptions& opts) {
  StatusResult s;
  s.cmd = RunCommand({NasfsctlBin(), "status", mountpoint, "--json"}, opts);
  if (!s.cmd.ok()) {
    s.error = "nasfsctl failed: " + s.cmd.Describe();
    return s;
  }
  s.json = nlohmann::json::parse(s.cmd.out, nullptr, /*allow_exceptions=*/false);
  if (s.json.is_discarded()) {
    s.json = nullptr;
    s.error = "nasfsctl output is not JSON: " + s.cmd.Describe();
  }
  return s;
}

nlohmann::json Get(const nlohmann::json& j, const std::string& pointer) {
  try {
    return j.at(nlohmann::json::json_pointer(pointer));
  } catch (const std::exception&) {
    return nullptr;
  }
}

nlohmann::json BackendOf(const nlohmann::json& status, const std::string& role) {
  for (const auto& b : Get(status, "/backends")) {
    if (Get(b, "/role") == role) return b;
  }
  return nullptr;
}

std::string Str(const nlohmann::json& j) { return j.is_string() ? j.get<std::string>() : j.dump(); }

std::string StateOf(const nlohmann::json& status, const std::string& role) {
  return Str(Get(BackendOf(status, role), "/state"));
}

std::string ReadFrom(const nlohmann::json& status) { return Str(Get(status, "/read_from")); }

// ---- the mount --------------------------------------------------------------

namespace {

// Starts argv as a child whose stdout and stderr are appended to log_file;
// -1 (errno kept) if it could not.
pid_t SpawnLogged(const std::vector<std::string>& argv, const std::string& log_file) {
  std::vector<char*> cargv;
  for (const auto& a : argv) cargv.push_back(const_cast<char*>(a.c_str()));
  cargv.push_back(nullptr);
  const int log_fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (log_fd < 0 || null_fd < 0) {
    const int e = errno;
    if (log_fd >= 0) close(log_fd);
    if (null_fd >= 0) close(null_fd);
    errno = e;
    return -1;
  }
  std::fflush(nullptr);
  const pid_t pid = fork();
  if (pid == 0) {
    // Only async-signal-safe calls until exec: the test has other threads.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    setpgid(0, 0);  // a ^C to the test is the test's to handle, not nasfs's
    dup2(null_fd, 0);
    dup2(log_fd, 1);
    dup2(log_fd, 2);
    execvp(cargv[0], cargv.data());
    _exit(127);
  }
  const int e = errno;
  close(log_fd);
  close(null_fd);
  errno = e;
  return pid;
}

}  // namespace

int CountMountsAt(const std::string& target) {
  int n = 0;
  for (const auto& m : ReadMounts()) n += m.target == target ? 1 : 0;
  return n;
}

MountedNasfs::MountedNasfs(const Workspace& ws, MountSpec spec) {
  mountpoint_ = spec.mountpoint.empty() ? ws.mnt() : spec.mountpoint;
  std::string source = spec.source.empty() ? ws.master() + ":" + ws.backup() : spec.source;
  std::vector<std::string> argv = {NasfsBin(), source, mountpoint_};
  std::string opts;
  if (spec.default_options) {
    mkdir(ws.journal_dir().c_str(), 0700);
    opts = fmt::format("control={},journal={}", ws.control_socket(), ws.journal_dir());
  }
  if (!spec.extra_options.empty()) opts += (opts.empty() ? "" : ",") + spec.extra_options;
  if (!opts.empty()) {
    argv.push_back("-o");
    argv.push_back(opts);
  }
  for (auto& a : spec.extra_args) argv.push_back(a);

  // What is already there is not ours: mount_test mounts twice on one point.
  mounts_before_ = CountMountsAt(mountpoint_);
  const auto pids_before = FindDaemonPids(mountpoint_);
  TrackMountpoint(mountpoint_);
  if (!spec.log_file.empty()) {
    StartInForeground(std::move(argv), spec);
    return;
  }
  command_ = RunCommand(argv, Within(spec.timeout));

  std::optional<MountEntry> m = FindMount(mountpoint_);
  listed_at_return_ = CountMountsAt(mountpoint_) > mounts_before_;
  if (command_.ok() && !listed_at_return_) {
    // The contract is "returns once usable"; mount_test checks that without
    // waiting. Here, be lenient so one early return does not fail every test.
    WaitFor([&] { return CountMountsAt(mountpoint_) > mounts_before_; }, 5s);
    m = FindMount(mountpoint_);
  }
  for (pid_t pid : FindDaemonPids(mountpoint_)) {
    if (std::find(pids_before.begin(), pids_before.end(), pid) == pids_before.end()) daemon_pid_ = pid;
  }
  const bool new_mount = CountMountsAt(mountpoint_) > mounts_before_;

  if (!command_.ok()) {
    error_ = "nasfs did not mount: " + command_.Describe();
  } else if (!new_mount || !m) {
    error_ = "nasfs exited 0 but no new mount of " + mountpoint_ +
             " is in /proc/self/mounts: " + command_.Describe();
  } else if (m->type != "fuse.nasfs") {
    error_ = fmt::format("{} is mounted with type {}, not fuse.nasfs", mountpoint_, m->type);
  } else {
    mounted_ = true;
  }
}

void MountedNasfs::StartInForeground(std::vector<std::string> argv, const MountSpec& spec) {
  log_file_ = spec.log_file;
  argv.push_back("-f");
  command_.argv = argv;
  const pid_t pid = SpawnLogged(argv, log_file_);
  if (pid < 0) {
    command_.err = fmt::format("cannot start nasfs with its output in {}: {}", log_file_, std::strerror(errno));
    error_ = "nasfs did not mount: " + command_.Describe();
    return;
  }
  own_child_ = true;
  daemon_pid_ = pid;
  int status = 0;
  bool exited = false;
  const bool listed = WaitFor(
      [&] {
        if (CountMountsAt(mountpoint_) > mounts_before_) return true;
        if (waitpid(pid, &status, WNOHANG) == pid) exited = true;
        return exited;
      },
      spec.timeout, 10ms);
  if (exited) {
    command_.exit_code = WaitStatusToCode(status);
    ended_ = fmt::format("exit code {} (128+N: signal N)", command_.exit_code);
    daemon_pid_ = -1;
    own_child_ = false;
  } else if (!listed) {
    command_.timed_out = true;
  } else {
    command_.exit_code = 0;
  }
  listed_at_return_ = !exited && CountMountsAt(mountpoint_) > mounts_before_;
  const std::optional<MountEntry> m = FindMount(mountpoint_);
  if (!listed_at_return_) {
    command_.err = Log();
    error_ = "nasfs did not mount: " + command_.Describe();
  } else if (!m || m->type != "fuse.nasfs") {
    error_ = fmt::format("{} is mounted with type {}, not fuse.nasfs", mountpoint_, m ? m->type : "(none)");
  } else {
    mounted_ = true;
  }
}

std::string MountedNasfs::DaemonEnded() {
  if (!own_child_) return ended_;
  int status = 0;
  if (waitpid(daemon_pid_, &status, WNOHANG) == daemon_pid_) {
    own_child_ = false;
    ended_ = WIFSIGNALED(status)
                 ? fmt::format("killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)))
                 : fmt::format("exited with status {}", WEXITSTATUS(status));
  }
  return ended_;
}

std::string MountedNasfs::Log() const {
  if (log_file_.empty()) return "";
  return ReadFile(log_file_).value_or("(cannot read " + log_file_ + ")");
}

MountedNasfs::~MountedNasfs() {
  std::string problem = Unmount();
  if (!problem.empty()) ADD_FAILURE() << "cleanup of " << mountpoint_ << ": " << problem;
}

bool MountedNasfs::WaitForDaemonExit(std::chrono::milliseconds timeout) const {
  if (daemon_pid_ <= 0) return true;
  return WaitFor([&] { return ProcessGone(daemon_pid_); }, timeout);
}

std::string MountedNasfs::Unmount(std::chrono::milliseconds wait) {
  if (cleaned_) return "";
  cleaned_ = true;
  std::string problems;
  // Undo only mounts added since construction (a test may have unmounted
  // already; a mount that was there before belongs to someone else).
  for (int round = 0; round < 4 && CountMountsAt(mountpoint_) > mounts_before_; ++round) {
    auto r = RunCommand({"fusermount3", "-u", mountpoint_}, Within(10s));
    if (!r.ok()) {
      std::fprintf(stderr, "nasfs e2e: %s; falling back to umount -l\n", r.Describe().c_str());
      auto l = RunCommand({"umount", "-l", mountpoint_}, Within(10s));
      if (!l.ok() && umount2(mountpoint_.c_str(), MNT_DETACH) != 0) {
        problems += "cannot unmount: " + l.Describe() + "; ";
        break;
      }
    }
  }
  if (daemon_pid_ > 0 && !WaitFor([&] { return ProcessGone(daemon_pid_); }, wait)) {
    problems += fmt::format("daemon pid {} still running {} ms after the unmount; killed it; ",
                            daemon_pid_, wait.count());
    kill(daemon_pid_, SIGKILL);
    WaitFor([&] { return ProcessGone(daemon_pid_); }, 5s);
    if (CountMountsAt(mountpoint_) > mounts_before_) umount2(mountpoint_.c_str(), MNT_DETACH);
  }
  if (own_child_) {
    // Gone (a zombie at most) by now, or SIGKILLed above: reap it.
    WaitFor([&] { return !DaemonEnded().empty(); }, 5s);
    own_child_ = false;
  }
  UntrackMountpoint(mountpoint_);
  return problems;
}

// ---- small file helpers -----------------------------------------------------

std::optional<std::string> ReadFile(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      int e = errno;
      close(fd);
      errno = e;
      return std::nullopt;
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  return out;
}

std::optional<std::string> ReadDirect(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC);
  if (fd < 0) return std::nullopt;
  constexpr size_t kChunk = 64 * 1024;
  void* buf = nullptr;
  if (posix_memalign(&buf, 4096, kChunk) != 0) {
    close(fd);
    errno = ENOMEM;
    return std::nullopt;
  }
  std::string out;
  int err = 0;
  for (;;) {
    ssize_t n = read(fd, buf, kChunk);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      err = errno;
      break;
    }
    if (n == 0) break;
    out.append(static_cast<char*>(buf), static_cast<size_t>(n));
  }
  free(buf);
  close(fd);
  if (err != 0) {
    errno = err;
    return std::nullopt;
  }
  return out;
}

bool WriteFile(const std::string& path, std::string_view data, mode_t mode) {
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
  if (fd < 0) return false;
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = errno;
      close(fd);
      errno = e;
      return false;
    }
    off += static_cast<size_t>(n);
  }
  return close(fd) == 0;
}

std::string RandomBytes(std::mt19937_64& rng, size_t n) {
  std::string s(n, '\0');
  size_t i = 0;
  while (i < n) {
    uint64_t v = rng();
    for (int b = 0; b < 8 && i < n; ++b, ++i) s[i] = static_cast<char>(v >> (8 * b));
  }
  return s;
}

uint64_t TestSeed() {
  if (const char* v = std::getenv("NASFS_E2E_SEED"); v != nullptr && *v != '\0') {
    return std::strtoull(v, nullptr, 0);
  }
  std::random_device rd;
  return (static_cast<uint64_t>(rd()) << 32) ^ rd() ^
         static_cast<uint64_t>(Clock::now().time_since_epoch().count());
}

timespec MtimeOf(const std::string& path) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return {-1, -1};
  return st.st_mtim;
}

std::string FormatTimespec(const timespec& t) {
  return fmt::format("{}.{:09d}", static_cast<long long>(t.tv_sec), static_cast<long>(t.tv_nsec));
}

void WorkspaceTest::SetUp() {
  NASFS_E2E_REQUIRE_MOUNTS();
  ASSERT_TRUE(ws_.ok()) << ws_.error();
  seed_ = TestSeed();
  std::printf("seed=%llu (NASFS_E2E_SEED to repeat)\n", static_cast<unsigned long long>(seed_));
  RecordProperty("seed", std::to_string(seed_));
  rng_.seed(seed_);
}

double SecondsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t).count();
}
double MsSince(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

int64_t Num(const nlohmann::json& j) { return j.is_number() ? j.get<int64_t>() : -1; }

std::string Errstr(int err) { return err == 0 ? "success" : std::string(std::strerror(err)) + " (" + std::to_string(err) + ")"; }

std::string FirstLines(const std::vector<std::string>& lines, size_t max) {
  if (lines.empty()) return "(none)";
  std::string s;
  for (size_t i = 0; i < lines.size() && i < max; ++i) s += "\n  " + lines[i];
  if (lines.size() > max) s += "\n  ... and " + std::to_string(lines.size() - max) + " more";
  return s;
}

std::string Tail(const std::string& text, size_t n) {
  size_t pos = text.size();
  for (size_t i = 0; i < n && pos > 0; ++i) {
    pos = text.rfind('\n', pos - 1);
    if (pos == std::string::npos) return text;
  }
  return text.substr(pos + 1);
}

}  // namespace nasfs::e2e
