// Helpers for the mounted end-to-end tests: a scratch workspace holding two
// NAS directories and a mount point, a nasfs mount that is always undone, a
// command runner in which every wait is bounded, and `nasfsctl status`.
//
// Cleanup contract: a mount made here never outlives the test binary. Each
// MountedNasfs unmounts in its destructor (fusermount3 -u, then umount -l)
// and waits, bounded, for its daemon; each Workspace lazily unmounts whatever
// is still mounted beneath it before removing itself; a global test
// environment (and a handler for SIGTERM/SIGINT/SIGABRT/SIGSEGV, so a meson
// timeout or a crash is covered too) lazily unmounts anything left under the
// process's scratch root.
//
// Environment: NASFS_BIN and NASFSCTL_BIN name the binaries under test
// (tests/meson.build sets them); run by hand, they default to fs/nasfs and
// tools/nasfsctl of the build directory holding the test binary. Without root
// or /dev/fuse the binary exits 77 (meson's skip).
#pragma once

#include <sys/types.h>
#include <time.h>

#include <chrono>
#include <functional>
#include <optional>
#include <random>
#include <string>
#include <string_view>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace nasfs::e2e {

using namespace std::chrono_literals;

// ---- environment ------------------------------------------------------------

std::string NasfsBin();
std::string NasfsctlBin();
// <build dir>/rel, the build directory being the one holding this test binary
// (<build>/tests/e2e_x): the default for a binary whose env variable is unset.
std::string BuildDirBinary(const char* rel);

// "" when mounted tests can run here (root, /dev/fuse, fusermount3), else why not.
std::string WhyMountedTestsCannotRun();

// In a test body or SetUp(): skips the test when mounted tests cannot run.
// (The global environment already exits 77 in that case; this is the belt.)
#define NASFS_E2E_REQUIRE_MOUNTS()                                             \
  do {                                                                        \
    std::string nasfs_e2e_why_ = ::nasfs::e2e::WhyMountedTestsCannotRun();     \
    if (!nasfs_e2e_why_.empty()) GTEST_SKIP() << nasfs_e2e_why_;              \
  } while (0)

// ---- running things ---------------------------------------------------------

struct Credentials {
  uid_t uid;
  gid_t gid;
};
// The unprivileged caller of the permission tests.
inline constexpr Credentials kNobody{65534, 65534};

struct RunOptions {
  std::chrono::milliseconds timeout = 20s;
  // Run as this user (setgroups({}), setgid, setuid in the child).
  std::optional<Credentials> as;
};
inline RunOptions Within(std::chrono::milliseconds timeout, std::optional<Credentials> as = std::nullopt) {
  RunOptions o;
  o.timeout = timeout;
  o.as = as;
  return o;
}

struct CommandResult {
  std::vector<std::string> argv;
  int exit_code = -1;  // the exit status; 128+N when killed by signal N; -1 when it never ran
  bool timed_out = false;
  std::string out;
  std::string err;

  bool ok() const { return !timed_out && exit_code == 0; }
  // One line fit for a failure message: the command, how it ended, its output.
  std::string Describe() const;
};

// Runs argv (argv[0] looked up in PATH) with stdin from /dev/null, capturing
// stdout and stderr. Output goes to anonymous files, not pipes, so a daemon
// that keeps the descriptors open cannot make this wait. On timeout the
// child's process group is killed with SIGKILL.
CommandResult RunCommand(const std::vector<std::string>& argv, const RunOptions& opts = {});

// Forks; the child (with opts.as credentials, if any) runs fn and sends back
// the string it returns. nullopt if the child crashed, timed out (it is then
// killed) or could not drop privileges. fn must not use gtest assertions.
std::optional<std::string> RunInChild(const std::function<std::string()>& fn,
                                      const RunOptions& opts = {});

// Polls cond every `poll` until it is true or `timeout` passed; returns cond's last value.
bool WaitFor(const std::function<bool()>& cond, std::chrono::milliseconds timeout,
             std::chrono::milliseconds poll = 20ms);

// ---- mounts -----------------------------------------------------------------

struct MountEntry {
  std::string source;
  std::string target;
  std::string type;
  std::string options;
};
// /proc/self/mounts with the octal escapes decoded.
std::vector<MountEntry> ReadMounts();
// The topmost mount at exactly `target`, if any.
std::optional<MountEntry> FindMount(const std::string& target);
// How many mounts are stacked at exactly `target`.
int CountMountsAt(const std::string& target);
// Lazily unmounts (umount2 MNT_DETACH) every mount at or beneath `prefix`,
// deepest first. Returns how many it detached.
int DetachMountsUnder(const std::string& prefix);

// True once pid has exited (it is gone or a zombie).
bool ProcessGone(pid_t pid);

// ---- workspace --------------------------------------------------------------

// <scratch root>/ws-XXXXXX holding master/, backup/, mnt/ (all 0755, so an
// unprivileged child can reach them). The scratch root is one mkdtemp per
// test process under /tmp. Destruction detaches any mount left beneath the
// workspace and removes it (without following symlinks).
class Workspace {
 public:
  Workspace();
  ~Workspace();
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;

  bool ok() const { return error_.empty(); }
  const std::string& error() const { return error_; }

  const std::string& root() const { return root_; }
  const std::string& master() const { return master_; }
  const std::string& backup() const { return backup_; }
  const std::string& mnt() const { return mnt_; }
  std::string control_socket() const { return root_ + "/ctl.sock"; }
  std::string journal_dir() const { return root_ + "/journal"; }
  // root/rel
  std::string Path(std::string_view rel) const;
  // mkdir -p root/rel (0755); returns the path.
  std::string MakeDir(std::string_view rel) const;

 private:
  std::string root_, master_, backup_, mnt_, error_;
};

// ---- nasfsctl status --------------------------------------------------------

struct StatusResult {
  CommandResult cmd;
  nlohmann::json json;  // null unless the output parsed
  std::string error;    // "" when the command succeeded and its output parsed

  bool ok() const { return error.empty(); }
};
// `$NASFSCTL_BIN status <mountpoint> --json`, parsed.
StatusResult Status(const std::string& mountpoint, const RunOptions& opts = {});

// Reading the status JSON (or any JSON) without exceptions.
// The value at a JSON pointer ("/journal/pending"), or null when absent.
nlohmann::json Get(const nlohmann::json& j, const std::string& pointer);
// The entry of "backends" with this role ("master"/"backup"), or null.
nlohmann::json BackendOf(const nlohmann::json& status, const std::string& role);
// A string as itself, anything else (null included) as its JSON text.
std::string Str(const nlohmann::json& j);
// backends[role].state and read_from, as Str() gives them.
std::string StateOf(const nlohmann::json& status, const std::string& role);
std::string ReadFrom(const nlohmann::json& status);

// ---- the mount --------------------------------------------------------------

struct MountSpec {
  // MASTER:BACKUP; empty means "<ws.master>:<ws.backup>".
  std::string source;
  // Empty means ws.mnt().
  std::string mountpoint;
  // Appended after control=<ws>/ctl.sock,journal=<ws>/journal (comma-joined).
  std::string extra_options;
  // false: pass no -o control=,journal= at all (extra_options still used).
  bool default_options = true;
  // Extra raw arguments after everything else.
  std::vector<std::string> extra_args;
  std::chrono::milliseconds timeout = 30s;
  // Non-empty: run nasfs in the foreground (-f, added last) as a child of the
  // test, its stdout and stderr appended to this file, so the daemon's log
  // (otherwise only in syslog) can be shown when a test fails. The
  // constructor waits up to `timeout` for the mount to be listed; command()
  // then holds the argv, exit_code 0 (or the child's exit code if it ended
  // first) and, on failure, the log as `err`. Empty: daemon mode, as users
  // run it.
  std::string log_file;
};
inline MountSpec MountAt(std::string mountpoint) {
  MountSpec s;
  s.mountpoint = std::move(mountpoint);
  return s;
}
inline MountSpec WithOptions(std::string extra_options) {
  MountSpec s;
  s.extra_options = std::move(extra_options);
  return s;
}

// Runs `$NASFS_BIN MASTER:BACKUP MNT -o control=..,journal=..[,extra]` in
// daemon mode (the command returns once mounted) and owns the result: the
// destructor unmounts and waits for the daemon, whatever the test did.
// A failed mount attempt is not an error of this class: mount_test and
// pairing_test construct one to see the refusal (command().exit_code != 0).
class MountedNasfs {
 public:
  explicit MountedNasfs(const Workspace& ws, MountSpec spec = {});
  ~MountedNasfs();
  MountedNasfs(const MountedNasfs&) = delete;
  MountedNasfs& operator=(const MountedNasfs&) = delete;

  // The command exited 0 and the mount point is listed as fuse.nasfs.
  bool mounted() const { return mounted_; }
  // The new mount was listed in /proc/self/mounts the moment the command
  // returned (mounted() allows up to 5 s more, so one early return does not
  // fail every test; mount_test checks this one).
  bool listed_when_command_returned() const { return listed_at_return_; }
  // Why mounted() is false (the command's description included), or "".
  const std::string& error() const { return error_; }
  const CommandResult& command() const { return command_; }
  const std::string& mountpoint() const { return mountpoint_; }
  // The daemon's pid (found in /proc by exe and argv; the child itself with
  // MountSpec::log_file), or -1.
  pid_t daemon_pid() const { return daemon_pid_; }
  // What the daemon logged so far (MountSpec::log_file), or "".
  std::string Log() const;
  // With MountSpec::log_file (the daemon is our child): "" while it runs,
  // else how it ended ("killed by signal 11 (Segmentation fault)", "exited
  // with status 1"); it is reaped here. Always "" in daemon mode.
  std::string DaemonEnded();

  StatusResult Status() const { return e2e::Status(mountpoint_); }

  // Unmounts (fusermount3 -u, else umount -l) if still mounted and waits up
  // to `wait` for the daemon to exit (SIGKILL after that). Returns "" on a
  // clean unmount and exit, else what went wrong. Idempotent.
  std::string Unmount(std::chrono::milliseconds wait = 10s);
  // Waits for the daemon to exit (after an unmount done by the test).
  bool WaitForDaemonExit(std::chrono::milliseconds timeout = 10s) const;

 private:
  // MountSpec::log_file set: starts `argv -f` as our child and waits for its mount.
  void StartInForeground(std::vector<std::string> argv, const MountSpec& spec);

  std::string mountpoint_;
  CommandResult command_;
  bool mounted_ = false;
  bool cleaned_ = false;
  bool listed_at_return_ = false;
  int mounts_before_ = 0;  // mounts stacked on mountpoint_ before the command
  std::string error_;
  pid_t daemon_pid_ = -1;
  std::string log_file_;   // MountSpec::log_file
  bool own_child_ = false;  // daemon_pid_ is our child (foreground), not yet reaped
  std::string ended_;       // how our child ended, once reaped
};

// ---- small file helpers (on the local disk or a NAS directory) --------------

// Whole content, or nullopt (errno kept) if it cannot be read.
std::optional<std::string> ReadFile(const std::string& path);
// Whole content read with O_DIRECT, so every read through a FUSE mount
// reaches the daemon instead of the page cache; nullopt (errno kept) on error.
std::optional<std::string> ReadDirect(const std::string& path);
// Creates/truncates path (mode 0644) with data. false on error (errno kept).
bool WriteFile(const std::string& path, std::string_view data, mode_t mode = 0644);
// Deterministic pseudo-random bytes.
std::string RandomBytes(std::mt19937_64& rng, size_t n);
// A seed for this test: NASFS_E2E_SEED if set, else from the clock. Print it.
uint64_t TestSeed();

// mtime of path (lstat), or {-1,-1}.
timespec MtimeOf(const std::string& path);
inline bool SameTime(const timespec& a, const timespec& b) {
  return a.tv_sec == b.tv_sec && a.tv_nsec == b.tv_nsec;
}
std::string FormatTimespec(const timespec& t);

// ---- small helpers for failure messages and figures -------------------------

double SecondsSince(std::chrono::steady_clock::time_point t);
double MsSince(std::chrono::steady_clock::time_point t);
// An integer field, or -1 when absent or not a number.
int64_t Num(const nlohmann::json& j);
// "success", or the errno's text and number.
std::string Errstr(int err);
// At most `max` lines of a long list, and how many were left out.
std::string FirstLines(const std::vector<std::string>& lines, size_t max = 40);
// The last `n` lines of a text.
std::string Tail(const std::string& text, size_t n);

// ---- a fixture base ---------------------------------------------------------

// The base of a fixture that mounts things in its own workspace and draws
// from a seeded rng. SetUp() skips the test when mounted tests cannot run,
// checks the workspace, and seeds rng_ with TestSeed(), printed ("seed=N
// (NASFS_E2E_SEED to repeat)") and recorded as the test's "seed" property.
// A derived SetUp() calls it first, then returns if IsSkipped() or
// HasFatalFailure().
class WorkspaceTest : public ::testing::Test {
 protected:
  void SetUp() override;

  // The first member: it outlives whatever a derived fixture mounts in it.
  Workspace ws_;
  uint64_t seed_ = 0;
  std::mt19937_64 rng_;
};

}  // namespace nasfs::e2e
