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

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include <spdlog/cfg/env.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/sinks/syslog_sink.h>
#include <spdlog/spdlog.h>

#include "fs/control_protocol.h"
#include "fs/control_server.h"
#include "fs/log.h"
#include "fs/nasfs.h"
#include "fs/verify.h"

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
  // Each NAS keeps up to 256 directory fds (DirCache), beside the workers',
  // the orphans' and the journal's: the soft limit (often 1024) goes up to
  // the hard one, as passthrough_hp does.
  if (struct rlimit lim; getrlimit(RLIMIT_NOFILE, &lim) == 0 && lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &lim) != 0)
      spdlog::warn("cannot raise the open-file limit to {}: {}", lim.rlim_max, std::strerror(errno));
  }

  if (std::string t = MountedTypeAt(opts.mountpoint); !t.empty() && t.starts_with("fuse"))
    return Fail("mount point " + opts.mountpoint + " is already mounted (" + t + ")");

  nasfs::Nasfs fs(opts);
  if (auto r = fs.Prepare(); !r) return Fail(r.error());

  // status is answered on the control thread from snapshots; journal, replay
  // and verify may wait on locks or on the NAS (verify for minutes), so each
  // runs on a thread of its own and never holds up a status.
  using ControlServer = nasfs::control::ControlServer;
  auto control_failure = [](std::string error) {
    return nlohmann::json{{"ok", false}, {"error", std::move(error)}};
  };
  ControlServer control(opts.control_socket, opts.control_gid, [&fs, control_failure](const nlohmann::json& req) {
    const auto cmd = req.find("cmd");
    if (cmd == req.end() || !cmd->is_string()) return control_failure("bad request: no \"cmd\" string");
    if (*cmd == "status") return fs.Status();
    return control_failure("unknown command '" + cmd->get<std::string>() + "'");
  });
  control.AddLongCommand("journal", [&fs, control_failure](const nlohmann::json& req, std::stop_token) {
    auto limit = ControlServer::CountArgument(req, "limit", 100, 1000000);
    if (!limit) return control_failure(limit.error());
    nlohmann::json answer = fs.JournalList(*limit);
    ControlServer::TrimToFit(answer, "entries");
    return answer;
  });
  control.AddLongCommand("replay", [&fs, control_failure](const nlohmann::json& req, std::stop_token) {
    auto node = req.find("node");
    if (node == req.end()) return fs.ReplayNow();
    if (!node->is_string() || node->get<std::string>().empty()) return control_failure("\"node\" must be a name");
    return fs.ReplayNode(node->get<std::string>());
  });
  control.AddLongCommand("conflicts", [&fs, control_failure](const nlohmann::json& req, std::stop_token) {
    auto id = req.find("restore");
    if (id == req.end()) {
      nlohmann::json answer = fs.Conflicts();
      ControlServer::TrimToFit(answer, "conflicts");
      return answer;
    }
    if (!id->is_string()) return control_failure("\"restore\" must be a conflict id");
    return fs.RestoreConflict(id->get<std::string>());
  });
  control.AddLongCommand("verify", [&fs, control_failure, running = std::make_shared<std::atomic<bool>>(false)](
                                       const nlohmann::json& req, std::stop_token stop) {
    auto max = ControlServer::CountArgument(req, "max", 1000, 100000);
    if (!max) return control_failure(max.error());
    // Two walks at once would only double the load on both NAS.
    if (running->exchange(true)) return control_failure("a verify is already running on this mount; try again once it has finished");
    struct Release {
      std::atomic<bool>& flag;
      ~Release() { flag = false; }
    } release{*running};
    return nasfs::VerifyTrees(fs.master(), fs.backup(), *max, std::move(stop));
  });
  if (auto r = control.Listen(); !r) return Fail(r.error());

  std::string mount_opts = "allow_other,default_permissions,subtype=nasfs,fsname=" +
                           EscapeOptValue(opts.source_spec);
  for (const auto& o : opts.fuse_mount_opts) mount_opts += "," + o;
  std::vector<std::string> args_s = {argv[0], "-o", mount_opts};
  if (opts.debug) args_s.push_back("-d");
  std::vector<char*> args_v;
  for (auto& s : args_s) args_v.push_back(s.data());
  fuse_args args = FUSE_ARGS_INIT(static_cast<int>(args_v.size()), args_v.data());

  const fuse_lowlevel_ops& ops = nasfs::Operations();
  fuse_session* se = fuse_session_new(&args, &ops, sizeof ops, &fs);
  if (!se) return Fail("bad FUSE mount option in '" + mount_opts + "' (see nasfs --help)");
  if (fuse_set_signal_handlers(se) != 0) {
    fuse_session_destroy(se);
    return Fail("cannot install signal handlers");
  }
  if (fuse_session_mount(se, opts.mountpoint.c_str()) != 0) {
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return Fail("cannot mount on " + opts.mountpoint);
  }
  // The registry entry must exist when `nasfs` returns (an operator's
  // `nasfsctl status` right after the mount must find the socket), and
  // fuse_daemonize lets the parent return before the child runs on: write
  // it now, and again with the daemon's pid once it runs.
  (void)nasfs::control::WriteRegistry({opts.mountpoint, opts.control_socket, static_cast<long>(getpid())});
  // From here the mount exists: the parent returns only after this point.
  if (fuse_daemonize(opts.foreground) != 0) {
    nasfs::control::RemoveRegistry(opts.mountpoint);
    fuse_session_unmount(se);
    fuse_remove_signal_handlers(se);
    fuse_session_destroy(se);
    return Fail("cannot daemonize");
  }

  if (auto r = nasfs::control::WriteRegistry({opts.mountpoint, opts.control_socket, static_cast<long>(getpid())}); !r)
    nasfs::Logger("control")->warn("cannot write the registry entry for {}: nasfsctl finds the socket only at its default path",
                                 opts.mountpoint);
  control.Start();
  fs.StartBackground();
  nasfs::Logger("fuse")->info("mounted {} on {} (node {}, io_timeout {} ms)", opts.source_spec,
                            opts.mountpoint, opts.node, opts.io_timeout_ms);

  fuse_loop_config* cfg = fuse_loop_cfg_create();
  fuse_loop_cfg_set_max_threads(cfg, static_cast<unsigned>(opts.fuse_threads));
  fuse_loop_cfg_set_idle_threads(cfg, 8);
  int ret = fuse_session_loop_mt(se, cfg);
  fuse_loop_cfg_destroy(cfg);

  nasfs::Logger("fuse")->info("unmounting {}", opts.mountpoint);
  control.Stop();
  nasfs::control::RemoveRegistry(opts.mountpoint);
  fuse_session_unmount(se);
  fuse_remove_signal_handlers(se);
  fuse_session_destroy(se);
  return ret == 0 ? 0 : 1;
}
