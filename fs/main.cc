// nasfs: wires options, the two NAS, the FUSE session and the control socket.
//
// Everything that can fail (options, NAS checks, identity, the control
// socket, the mount itself) happens before fuse_daemonize(), so `nasfs`
// (and mount(8) through it) exits non-zero with a reason instead of leaving
// a half-made mount. Threads start only after daemonizing: fork keeps none.
#include <fuse_lowlevel.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>

#include "fs/commands.h"
#include "fs/control_protocol.h"
#include "fs/control_server.h"
#include "fs/log.h"
#include "fs/nasfs.h"

namespace {

void SetUpLogging(bool foreground, bool debug) {
  std::vector<spdlog::sink_ptr> sinks;
  sinks.push_back(std::make_shared<spdlog::sinks::syslog_sink_mt>("nasfs", LOG_PID, LOG_DAEMON, false));
  if (foreground) sinks.push_back(std::make_shared<spdlog::sinks::stderr_color_sink_mt>());
  for (const char* name : {"fuse", "health", "journal", "replay", "control", "sync"}) {
    auto l = std::make_shared<spdlog::logger>(name, sinks.begin(), sinks.end());
    l->set_level(debug ? spdlog::level::debug : spdlog::level::info);
    spdlog::register_logger(l);
  }
  // SPDLOG_LEVEL (e.g. "sync=debug,replay=debug") traces what the replay,
  // the copies and the split-brain merge do, without FUSE's own -d output.
  spdlog::cfg::load_env_levels();
}

// The mount at `path`, if any, as "type" from /proc/self/mountinfo.
std::string MountedTypeAt(const std::string& path) {
  std::string found;
  for (const auto& m : nasfs::ReadMountInfo())
    if (m.mountpoint == path) found = m.type;  // the last one wins: it is the one on top
  return found;
}

std::string EscapeOptValue(const std::string& v) {
  std::string out;
  for (char c : v) {
    if (c == ',' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

int Fail(const std::string& msg) {
  std::fprintf(stderr, "nasfs: %s\n", msg.c_str());
  return 1;
}

// Each NAS keeps up to 256 directory fds (DirCache), beside the workers',
// the orphans' and the journal's: the soft limit (often 1024) goes up to
// the hard one, as passthrough_hp does.
void RaiseOpenFileLimit() {
  if (struct rlimit lim; getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0)
      spdlog::warn("cannot raise the open-file limit to {}: {}", lim.rlim_max, std::strerror(errno));
  }
}

// The FUSE session: made, its signal handlers installed, mounted, and
// undone in the reverse order (unmount, handlers, session) by whichever
// step failed, or at the end.
class FuseSession {
 public:
  FuseSession() = default;
  FuseSession(const FuseSession&) = delete;
  FuseSession& operator=(const FuseSession&) = delete;
  ~FuseSession() {
    if (mounted_) fuse_session_unmount(se_);
    if (handlers_) fuse_remove_signal_handlers(se_);
    if (se_) fuse_session_destroy(se_);
  }

  // "" once mounted on opts.mountpoint, else why not.
  std::string Mount(const nasfs::Options& opts, const char* argv0, nasfs::Nasfs* fs) {
    std::string mount_opts =
        "allow_other,default_permissions,subtype=nasfs,fsname=" + EscapeOptValue(opts.source_spec);
    for (const auto& o : opts.fuse_mount_opts) mount_opts += "," + o;
    args_s_ = {argv0, "-o", mount_opts};
    if (opts.debug) args_s_.push_back("-d");
    for (auto& s : args_s_) args_v_.push_back(s.data());
    fuse_args args = FUSE_ARGS_INIT(static_cast<int>(args_v_.size()), args_v_.data());

    const fuse_lowlevel_ops& ops = nasfs::Operations();
    se_ = fuse_session_new(&args, &ops, sizeof ops, fs);
    if (!se_) return "bad FUSE mount option in '" + mount_opts + "' (see nasfs --help)";
    if (fuse_set_signal_handlers(se_) != 0) return "cannot install signal handlers";
    handlers_ = true;
    if (fuse_session_mount(se_, opts.mountpoint.c_str()) != 0) return "cannot mount on " + opts.mountpoint;
    mounted_ = true;
    return "";
  }

  // Serves until unmounted or signalled; 0 on a clean end.
  int Loop(int threads) {
    fuse_loop_config* cfg = fuse_loop_cfg_create();
    fuse_loop_cfg_set_max_threads(cfg, static_cast<unsigned>(threads));
    fuse_loop_cfg_set_idle_threads(cfg, 8);
    int ret = fuse_session_loop_mt(se_, cfg);
    fuse_loop_cfg_destroy(cfg);
    return ret;
  }

 private:
  // The arguments live as long as the session, as they did in main.
  std::vector<std::string> args_s_;
  std::vector<char*> args_v_;
  fuse_session* se_ = nullptr;
  bool handlers_ = false, mounted_ = false;
};

// The registry entry for the mount, with this process's pid.
tl::expected<void, int> Register(const nasfs::Options& opts) {
  return nasfs::control::WriteRegistry({opts.mountpoint, opts.control_socket, static_cast<long>(getpid())});
}

// From a prepared Nasfs to the end of the mount: the control socket, the
// mount, daemonizing, then serving. 0, or 1 with the reason on stderr.
int Serve(const nasfs::Options& opts, const char* argv0, nasfs::Nasfs& fs) {
  std::unique_ptr<nasfs::control::ControlServer> control = nasfs::NewControlServer(opts, fs);
  if (auto r = control->Listen(); !r) return Fail(r.error());
  FuseSession session;
  if (std::string error = session.Mount(opts, argv0, &fs); !error.empty()) return Fail(error);
  // The registry entry must exist when `nasfs` returns (an operator's
  // `nasfsctl status` right after the mount must find the socket), and
  // fuse_daemonize lets the parent return before the child runs on: write
  // it now, and again with the daemon's pid once it runs.
  (void)Register(opts);
  // From here the mount exists: the parent returns only after this point.
  if (fuse_daemonize(opts.foreground) != 0) {
    nasfs::control::RemoveRegistry(opts.mountpoint);
    return Fail("cannot daemonize");
  }
  if (auto r = Register(opts); !r)
    nasfs::Logger("control")->warn("cannot write the registry entry for {}: nasfsctl finds the socket only at its default path",
                                 opts.mountpoint);
  control->Start();
  fs.StartBackground();
  nasfs::Logger("fuse")->info("mounted {} on {} (node {}, io_timeout {} ms)", opts.source_spec,
                            opts.mountpoint, opts.node, opts.io_timeout_ms);
  int ret = session.Loop(opts.fuse_threads);
  nasfs::Logger("fuse")->info("unmounting {}", opts.mountpoint);
  control->Stop();
  nasfs::control::RemoveRegistry(opts.mountpoint);
  return ret == 0 ? 0 : 1;  // the session unmounts on its way out
}

}  // namespace

int main(int argc, char** argv) {
  auto parsed = nasfs::ParseOptions(argc, argv);
  if (!parsed) {
    std::fprintf(stderr, "nasfs: %s\n", parsed.error().c_str());
    return 2;
  }
  nasfs::Options opts = *parsed;
  if (opts.show_help) {
    std::fputs(nasfs::UsageText().c_str(), stdout);
    return 0;
  }
  if (opts.show_version) {
    std::printf("nasfs %s (libfuse %d)\n", NASFS_VERSION, fuse_version());
    return 0;
  }
  if (geteuid() != 0)
    return Fail("must run as root: it writes files on both NAS as the callers who own them");

  SetUpLogging(opts.foreground, opts.debug);
  umask(0);  // the kernel already applied the caller's umask to every mode
  RaiseOpenFileLimit();
  if (std::string t = MountedTypeAt(opts.mountpoint); !t.empty() && t.starts_with("fuse"))
    return Fail("mount point " + opts.mountpoint + " is already mounted (" + t + ")");

  nasfs::Nasfs fs(opts);
  if (auto r = fs.Prepare(); !r) return Fail(r.error());
  return Serve(opts, argv[0], fs);
}
