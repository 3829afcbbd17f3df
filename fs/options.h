// Command line of the nasfs daemon: nasfs MASTER:BACKUP MOUNTPOINT [-f] [-d] [-o OPTS].
//
// nasfs's own -o options are consumed here; the rest are FUSE mount options,
// passed on to libfuse, which rejects what it does not know.
#pragma once

#include <sys/types.h>

#include <string>
#include <vector>

#include "fs/common.h"

namespace nasfs {

// The longest node= name: it names files on the NAS (heartbeat.<node>,
// peers/<node>/...), and is the host name by default (HOST_NAME_MAX 64).
inline constexpr size_t kMaxNodeName = 64;

struct Options {
  std::string master;       // absolute path of the master NAS root
  std::string backup;       // absolute path of the backup NAS root
  std::string source_spec;  // "MASTER:BACKUP" as given (shown as fsname)
  std::string mountpoint;   // absolute

  std::string journal_dir;     // default /var/lib/nasfs/<mount id>
  std::string control_socket;  // default /run/nasfs/<mount id>.sock
  gid_t control_gid = static_cast<gid_t>(-1);  // control_group=, resolved
  std::string node;            // default: host name
  int io_timeout_ms = 1000;
  int hedge_delay_ms = 100;  // longest wait before a read also goes to the other NAS; 0: never
  int probe_interval_ms = 500;
  int probe_successes = 3;  // good probes in a row before a NAS is trusted again
  double cache_timeout_s = 1.0;
  std::string source;  // "", "master" or "backup": first pairing of two non-empty NAS
  int fuse_threads = 64;
  int backend_threads = 16;
  int replay_share = 75;  // percent of its time a replay may work (the rest it sleeps)
  int replay_threads = 4;  // files a replay copies at once
  int peer_timeout_s = 10;  // a web server silent this long is dead: its replay is taken over

  bool foreground = false;
  bool debug = false;
  bool show_help = false;
  bool show_version = false;

  // FUSE mount options to pass on (allow_other and default_permissions are
  // always added), without the leading "-o".
  std::vector<std::string> fuse_mount_opts;
};

// Parses argv. Errors are one line fit for an operator, without "nasfs: ".
[[nodiscard]] tl::expected<Options, std::string> ParseOptions(int argc, char** argv);

// The text of `nasfs --help`.
std::string UsageText();

// Whether path a is b or lies beneath it (both absolute and normalized).
bool PathInside(const std::string& a, const std::string& b);
// One line of /proc/self/mountinfo, its escapes decoded.
struct MountInfo {
  std::string dev;         // major:minor
  std::string root;        // what of its filesystem the mount shows
  std::string mountpoint;
  std::string type;        // "fuse.nasfs", "ext4", ...
};
std::vector<MountInfo> ReadMountInfo(const std::string& file = "/proc/self/mountinfo");
// Where an absolute, resolved path lies: its filesystem (the mount's
// major:minor in `mountinfo`) and its path from that filesystem's root. A
// bind mount shows one directory at a second path; both paths have one
// location. dev is "" when the table cannot be read.
struct FsLocation {
  std::string dev;
  std::string path;
};
FsLocation LocationOf(const std::string& path, const std::string& mountinfo = "/proc/self/mountinfo");
// PathInside(a, b), by path or by location.
bool Nested(const std::string& a, const std::string& b, const std::string& mountinfo = "/proc/self/mountinfo");
// An absolute path with "." and ".." gone and the symlinks of its longest
// existing prefix resolved; the part that does not exist yet is kept as
// written. So a journal directory nasfs has still to create compares
// against the mount point and the NAS as it will be.
std::string ResolvePath(const std::string& path);

}  // namespace nasfs
