#include "fs/options.h"

#include <grp.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <string_view>

#include <fmt/format.h>

#include "fs/control_protocol.h"

namespace nasfs {
namespace {

// Options mount(8), mount.fuse3 or fstab may hand us that mean nothing to a
// FUSE session: accepted and dropped.
// Kernel mount options nasfs passes on. Anything else is refused here,
// with one clear line, rather than by libfuse with its own message.
bool IsKernelMountOption(std::string_view o) {
  static constexpr std::string_view kPassed[] = {
      "ro", "nosuid", "suid", "nodev", "dev", "noexec", "exec", "async", "sync", "dirsync",
      "noatime", "atime", "relatime", "norelatime", "strictatime", "nostrictatime", "nodiratime",
      "diratime", "lazytime", "nolazytime"};
  for (auto p : kPassed)
    if (o == p) return true;
  return o.starts_with("max_read=");
}

bool IsIgnoredMountOption(std::string_view o) {
  static constexpr std::string_view kIgnored[] = {
      "defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
      "allow_other", "default_permissions", "rw"};
  for (auto i : kIgnored)
    if (o == i) return true;
  return o.starts_with("x-") || o.starts_with("comment=");
}

tl::expected<long, std::string> ParseInt(std::string_view name, std::string_view v, long lo,
                                         long hi) {
  std::string s(v);
  char* end = nullptr;
  errno = 0;
  long n = std::strtol(s.c_str(), &end, 10);
  if (s.empty() || errno != 0 || *end != '\0' || n < lo || n > hi)
    return tl::unexpected(
        fmt::format("bad value for {}: '{}' (expected an integer from {} to {})", name, s, lo, hi));
  return n;
}

tl::expected<std::string, std::string> AbsoluteDir(std::string_view what, const std::string& p) {
  if (p.empty()) return tl::unexpected(fmt::format("{} path is empty", what));
  char buf[PATH_MAX];
  if (!realpath(p.c_str(), buf))
    return tl::unexpected(fmt::format("{} '{}': {}", what, p, std::strerror(errno)));
  return std::string(buf);
}

std::vector<std::string_view> SplitOn(std::string_view s, char sep) {
  std::vector<std::string_view> out;
  while (!s.empty()) {
    auto c = s.find(sep);
    auto part = s.substr(0, c);
    if (!part.empty()) out.push_back(part);
    if (c == std::string_view::npos) break;
    s.remove_prefix(c + 1);
  }
  return out;
}

tl::expected<void, std::string> SetControlGroup(Options& o, std::string_view val) {
  std::string name(val);
  struct group gr, *res = nullptr;
  char buf[4096];
  if (getgrnam_r(name.c_str(), &gr, buf, sizeof buf, &res) != 0 || !res)
    return tl::unexpected(fmt::format("control_group: no such group '{}'", name));
  o.control_gid = gr.gr_gid;
  return {};
}

tl::expected<void, std::string> SetNode(Options& o, std::string_view val) {
  for (char c : val)
    if (!(isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.'))
      return tl::unexpected(fmt::format("node name '{}' may hold only letters, digits, '-', '_', '.'", val));
  if (val.front() == '.')
    return tl::unexpected(fmt::format("node name '{}' may not start with '.'", val));
  if (val.size() > kMaxNodeName)
    return tl::unexpected(fmt::format("node name '{}' is longer than {} characters", val, kMaxNodeName));
  o.node = val;
  return {};
}

tl::expected<void, std::string> SetCacheTimeout(Options& o, std::string_view val) {
  std::string s(val);
  char* end = nullptr;
  double d = std::strtod(s.c_str(), &end);
  if (*end != '\0' || !(d >= 0 && d <= 3600))
    return tl::unexpected(fmt::format("bad value for cache_timeout: '{}' (seconds, 0 to 3600)", s));
  o.cache_timeout_s = d;
  return {};
}

tl::expected<void, std::string> ApplyOption(Options& o, std::string_view opt) {
  auto eq = opt.find('=');
  std::string_view key = opt.substr(0, eq);
  std::string_view val = eq == std::string_view::npos ? std::string_view() : opt.substr(eq + 1);
  bool has_val = eq != std::string_view::npos;
  auto need_val = [&]() -> tl::expected<void, std::string> {
    if (!has_val || val.empty())
      return tl::unexpected(fmt::format("option {} needs a value ({}=...)", key, key));
    return {};
  };
  // The integer options: name, where it goes, and its bounds.
  struct IntOption {
    std::string_view name;
    int Options::*field;
    long lo, hi;
  };
  static constexpr IntOption kIntOptions[] = {
      {"io_timeout", &Options::io_timeout_ms, 10, 600000},
      {"hedge_delay", &Options::hedge_delay_ms, 0, 600000},
      {"probe_interval", &Options::probe_interval_ms, 50, 60000},
      {"probe_successes", &Options::probe_successes, 1, 100},
      {"threads", &Options::fuse_threads, 2, 1024},
      {"backend_threads", &Options::backend_threads, 1, 256},
      {"replay_share", &Options::replay_share, 1, 100},
      {"replay_threads", &Options::replay_threads, 1, 16},
      {"peer_timeout", &Options::peer_timeout_s, 1, 86400},
  };
  for (const auto& io : kIntOptions) {
    if (key != io.name) continue;
    if (auto r = need_val(); !r) return r;
    auto n = ParseInt(key, val, io.lo, io.hi);
    if (!n) return tl::unexpected(n.error());
    o.*io.field = static_cast<int>(*n);
    return {};
  }
  if (key == "journal") {
    if (auto r = need_val(); !r) return r;
    if (val.front() != '/') return tl::unexpected(std::string("journal= needs an absolute path"));
    o.journal_dir = val;
  } else if (key == "control") {
    if (auto r = need_val(); !r) return r;
    if (val.front() != '/') return tl::unexpected(std::string("control= needs an absolute path"));
    o.control_socket = val;
  } else if (key == "control_group") {
    if (auto r = need_val(); !r) return r;
    return SetControlGroup(o, val);
  } else if (key == "node") {
    if (auto r = need_val(); !r) return r;
    return SetNode(o, val);
  } else if (key == "cache_timeout") {
    if (auto r = need_val(); !r) return r;
    return SetCacheTimeout(o, val);
  } else if (key == "source") {
    if (val != "master" && val != "backup")
      return tl::unexpected(std::string("source= must be 'master' or 'backup'"));
    o.source = val;
  } else if (key == "debug") {
    o.debug = true;
  } else if (IsIgnoredMountOption(opt)) {
    // nothing
  } else if (key == "fsname" || key == "subtype") {
    return tl::unexpected(fmt::format("option {} is set by nasfs itself", key));
  } else if (IsKernelMountOption(opt)) {
    o.fuse_mount_opts.emplace_back(opt);
  } else {
    return tl::unexpected(fmt::format("unknown mount option '{}' (see nasfs --help)", opt));
  }
  return {};
}

// The command line's flags and -o lists into o; the rest into *positional.
tl::expected<void, std::string> ParseArgv(int argc, char** argv, Options& o, std::vector<std::string>* positional) {
  for (int i = 1; i < argc; ++i) {
    std::string_view a = argv[i];
    if (a == "-h" || a == "--help") {
      o.show_help = true;
    } else if (a == "-V" || a == "--version") {
      o.show_version = true;
    } else if (a == "-f") {
      o.foreground = true;
    } else if (a == "-d") {
      o.debug = true;
      o.foreground = true;
    } else if (a == "-s") {
      // single-threaded: not supported, but harmless to accept from helpers
    } else if (a == "-o" || a.starts_with("-o")) {
      std::string_view list;
      if (a == "-o") {
        if (i + 1 >= argc) return tl::unexpected(std::string("-o needs an option list"));
        list = argv[++i];
      } else {
        list = a.substr(2);
      }
      for (auto opt : SplitOn(list, ','))
        if (auto r = ApplyOption(o, opt); !r) return tl::unexpected(r.error());
    } else if (a.starts_with("-")) {
      return tl::unexpected(fmt::format("unknown argument '{}' (see nasfs --help)", a));
    } else {
      positional->emplace_back(a);
    }
  }
  return {};
}

// MASTER:BACKUP and MOUNTPOINT: absolute directories, none inside another.
tl::expected<void, std::string> SetPlaces(Options& o, const std::string& sources, const std::string& mountpoint) {
  o.source_spec = sources;
  auto colon = o.source_spec.find(':');
  if (colon == std::string::npos || o.source_spec.find(':', colon + 1) != std::string::npos)
    return tl::unexpected(fmt::format("'{}' is not MASTER:BACKUP (two directories joined by one ':')",
                                      o.source_spec));
  auto m = AbsoluteDir("master", o.source_spec.substr(0, colon));
  if (!m) return tl::unexpected(m.error());
  auto b = AbsoluteDir("backup", o.source_spec.substr(colon + 1));
  if (!b) return tl::unexpected(b.error());
  auto mp = AbsoluteDir("mount point", mountpoint);
  if (!mp) return tl::unexpected(mp.error());
  o.master = *m;
  o.backup = *b;
  o.mountpoint = *mp;
  // A regular file mounts, and then answers every request with EIO.
  struct stat st;
  if (stat(o.mountpoint.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return tl::unexpected(fmt::format("mount point {} is not a directory", o.mountpoint));
  if (o.master == o.backup) return tl::unexpected(std::string("master and backup are the same directory"));
  // One NAS inside the other: a copy of one onto the other would recurse
  // into itself, and a source=master pairing would move the master's root
  // aside. Compared as paths, and as places in their filesystems (a bind
  // mount shows one directory at a second path).
  if (Nested(o.backup, o.master) || Nested(o.master, o.backup))
    return tl::unexpected(fmt::format("master {} and backup {} must not contain each other", o.master, o.backup));
  for (const auto* nas : {&o.master, &o.backup})
    if (Nested(o.mountpoint, *nas) || Nested(*nas, o.mountpoint))
      return tl::unexpected(fmt::format("mount point {} and NAS {} must not contain each other",
                                        o.mountpoint, *nas));
  return {};
}

// The node name, the journal and the control socket, by default where not
// given. The journal and the socket belong on this web server's own disk:
// inside the mount, nasfs would wait on itself; on a NAS, the journal
// would be lost with the NAS it is meant to outlive (and be seen through
// the mount).
tl::expected<void, std::string> SetLocalPlaces(Options& o) {
  if (o.node.empty()) {
    char host[HOST_NAME_MAX + 1] = {};
    gethostname(host, sizeof host - 1);
    o.node = host[0] ? host : "node";
  }
  std::string id = control::MountId(o.mountpoint);
  if (o.journal_dir.empty()) o.journal_dir = "/var/lib/nasfs/" + id;
  if (o.control_socket.empty()) o.control_socket = control::DefaultControlSocket(o.mountpoint);
  struct Local {
    const char* what;
    std::string* path;
  };
  for (const Local& l : {Local{"journal directory", &o.journal_dir}, Local{"control socket", &o.control_socket}}) {
    *l.path = ResolvePath(*l.path);
    for (const auto& [where, dir] : {std::pair<const char*, const std::string*>{"the mount point", &o.mountpoint},
                                     {"the master NAS", &o.master},
                                     {"the backup NAS", &o.backup}})
      if (Nested(*l.path, *dir))
        return tl::unexpected(fmt::format("{} {} is inside {} {}: it must be on this web server's own disk", l.what,
                                          *l.path, where, *dir));
  }
  return {};
}

}  // namespace

tl::expected<Options, std::string> ParseOptions(int argc, char** argv) {
  Options o;
  std::vector<std::string> positional;
  if (auto r = ParseArgv(argc, argv, o, &positional); !r) return tl::unexpected(r.error());
  if (o.show_help || o.show_version) return o;
  if (positional.size() != 2)
    return tl::unexpected(std::string("usage: nasfs MASTER:BACKUP MOUNTPOINT [-f] [-o OPTIONS] (see nasfs --help)"));
  if (auto r = SetPlaces(o, positional[0], positional[1]); !r) return tl::unexpected(r.error());
  if (auto r = SetLocalPlaces(o); !r) return tl::unexpected(r.error());
  return o;
}

std::vector<MountInfo> ReadMountInfo(const std::string& file) {
  std::vector<MountInfo> out;
  std::ifstream in(file);
  std::string line;
  // Fields are octal-escaped: \040 for a space, and so on.
  auto unescape = [](const std::string& f) {
    std::string s;
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] == '\\' && i + 3 < f.size() && std::isdigit(static_cast<unsigned char>(f[i + 1]))) {
        s += static_cast<char>(std::strtol(f.substr(i + 1, 3).c_str(), nullptr, 8));
        i += 3;
      } else {
        s += f[i];
      }
    }
    return s;
  };
  while (std::getline(in, line)) {
    std::istringstream ss(line);
    MountInfo m;
    std::string id, parent, tok;
    if (!(ss >> id >> parent >> m.dev >> m.root >> m.mountpoint)) continue;
    while (ss >> tok && tok != "-") {
    }
    ss >> m.type;
    m.root = unescape(m.root);
    m.mountpoint = unescape(m.mountpoint);
    out.push_back(std::move(m));
  }
  return out;
}

FsLocation LocationOf(const std::string& path, const std::string& mountinfo) {
  FsLocation best{"", path};
  size_t best_len = 0;
  for (const auto& m : ReadMountInfo(mountinfo)) {
    // The last mount with the longest mount point above path is the one on top.
    if (!PathInside(path, m.mountpoint) || m.mountpoint.size() < best_len) continue;
    best_len = m.mountpoint.size();
    std::string rest = path.substr(m.mountpoint == "/" ? 0 : m.mountpoint.size());
    best = FsLocation{m.dev, m.root == "/" ? (rest.empty() ? "/" : rest) : m.root + rest};
  }
  return best;
}

bool Nested(const std::string& a, const std::string& b, const std::string& mountinfo) {
  if (PathInside(a, b)) return true;
  FsLocation la = LocationOf(a, mountinfo), lb = LocationOf(b, mountinfo);
  return !la.dev.empty() && la.dev == lb.dev && PathInside(la.path, lb.path);
}

bool PathInside(const std::string& a, const std::string& b) {
  return a == b || (a.starts_with(b) && (b == "/" || a[b.size()] == '/'));
}

std::string ResolvePath(const std::string& path) {
  // Lexically first: "." and ".." and repeated slashes.
  std::vector<std::string> parts;
  for (auto part : SplitOn(path, '/')) {
    if (part.empty() || part == ".") continue;
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else {
      parts.emplace_back(part);
    }
  }
  // Then the longest prefix that exists, with its symlinks resolved; the
  // rest (not made yet) is appended as written.
  for (size_t n = parts.size();; --n) {
    std::string prefix;
    for (size_t i = 0; i < n; ++i) prefix += "/" + parts[i];
    char buf[PATH_MAX];
    if (realpath(prefix.empty() ? "/" : prefix.c_str(), buf)) {
      std::string out = buf;
      for (size_t i = n; i < parts.size(); ++i) out += (out == "/" ? "" : "/") + parts[i];
      return out;
    }
    if (n == 0) break;
  }
  return path;
}

std::string UsageText() {
  return R"(usage: nasfs MASTER:BACKUP MOUNTPOINT [-f] [-d] [-o OPTION[,OPTION...]]

Mounts a mirrored view of two NAS directories at MOUNTPOINT. Reads come from
the master; every change is applied to both NAS before it is acknowledged.
nasfs returns once the mount is usable (or exits non-zero saying why).

fstab:  /nas_master:/nas_backup /var/www/shared fuse.nasfs allow_other,_netdev 0 0

nasfs options (-o):
  journal=DIR            local write-ahead journal: what a NAS missed while
                         out, and which directories are being written
                         (default /var/lib/nasfs/<mount id>). If it cannot
                         be written, changes fail with ENOSPC or EIO rather
                         than be acknowledged unrecorded
  control=SOCKET         control socket for nasfsctl
                         (default /run/nasfs/<mount id>.sock)
  control_group=GROUP    members of GROUP may use the control socket too
                         (default: root only)
  node=NAME              this web server's name (default: the host name)
  io_timeout=MS          deadline for every NAS call, in milliseconds
                         (default 1000, 10 to 600000); a NAS that misses
                         it is taken out and the call retried on the other
  hedge_delay=MS         a read the serving NAS has not answered within
                         twice its recent 99th percentile (at least 10 ms,
                         at most MS) is sent to the other NAS too, if that
                         one is healthy; the first answer is used
                         (default 100; 0 turns hedging off)
  probe_interval=MS      how often each NAS is probed (default 500)
  probe_successes=N      good probes in a row before a NAS that failed is
                         trusted again (default 3)
  cache_timeout=SECONDS  how long the kernel caches names, attributes and
                         missing names, and nasfs the directories that
                         reads resolve beneath (default 1; another web
                         server's changes show within this time)
  source=master|backup   first pairing of two NAS that both hold data: copy
                         this side onto the other; what would be overwritten
                         or deleted is kept under .nasfs/displaced/
  threads=N              most FUSE worker threads (default 64)
  backend_threads=N      worker threads per NAS (default 16)
  replay_share=PERCENT   most of its time a replay onto a returning NAS may
                         spend working; it sleeps the rest (default 75;
                         each of its threads)
  replay_threads=N       files a replay copies at once (default 4; 1: one
                         at a time)
  peer_timeout=SECONDS   another web server whose heartbeat on the NAS has
                         not changed for this long is taken for dead: its
                         unfinished replay is finished by this one (default
                         10; nasfsctl replay --node NAME does it at once)
  debug                  same as -d

Always on: allow_other, default_permissions. Passed to the kernel: ro,
nosuid/suid, nodev/dev, noexec/exec, async/sync, dirsync, the atime family
(noatime, relatime, strictatime, nodiratime, lazytime), max_read=N.
Ignored: defaults, auto, noauto, user, users, nouser, _netdev, nofail, x-*.

general options:
  -f                     stay in the foreground
  -d                     debug logging (implies -f)
  -h, --help             this text
  -V, --version          the version

See nasfsctl(8): `nasfsctl status [MOUNTPOINT] [--json]`.
)";
}

}  // namespace nasfs
