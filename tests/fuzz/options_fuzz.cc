// libFuzzer target: nasfs's command line (fs/options.h), argv split from the
// input at NUL bytes (argv[0] is "nasfs"). ParseOptions runs realpath on the
// NAS and mount point paths and getgrnam_r on control_group=, so the target
// makes three directories it can name: /tmp/nasfs-fuzz-options/{m,b,mnt}
// (the seeds use them, so mutations reach the checks after the paths).
//
// Invariants checked: a value or a one-line error, never a crash; on
// success every field holds what `nasfs --help` promises (absolute, distinct
// NAS paths, numbers within their bounds, a well-formed node name, absolute
// journal and control paths, only passed-on kernel options).
#include <sys/stat.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "fs/options.h"
#include "tests/fuzz/fuzz_check.h"

namespace {

constexpr size_t kMaxArgs = 64;

bool InRange(long v, long lo, long hi) { return v >= lo && v <= hi; }

void CheckParsed(const nasfs::Options& o) {
  if (o.show_help || o.show_version) return;
  for (const std::string* p : {&o.master, &o.backup, &o.mountpoint, &o.journal_dir, &o.control_socket})
    FUZZ_CHECK(!p->empty() && p->front() == '/', "a path that is not absolute: '%s'", p->c_str());
  FUZZ_CHECK(o.master != o.backup, "master and backup are one directory");
  FUZZ_CHECK(InRange(o.io_timeout_ms, 10, 600000), "io_timeout %d", o.io_timeout_ms);
  FUZZ_CHECK(InRange(o.probe_interval_ms, 50, 60000), "probe_interval %d", o.probe_interval_ms);
  FUZZ_CHECK(InRange(o.probe_successes, 1, 100), "probe_successes %d", o.probe_successes);
  FUZZ_CHECK(InRange(o.fuse_threads, 2, 1024), "threads %d", o.fuse_threads);
  FUZZ_CHECK(InRange(o.backend_threads, 1, 256), "backend_threads %d", o.backend_threads);
  FUZZ_CHECK(InRange(o.replay_share, 1, 100), "replay_share %d", o.replay_share);
  FUZZ_CHECK(InRange(o.peer_timeout_s, 1, 86400), "peer_timeout %d", o.peer_timeout_s);
  FUZZ_CHECK(o.cache_timeout_s >= 0 && o.cache_timeout_s <= 3600, "cache_timeout %f", o.cache_timeout_s);
  FUZZ_CHECK(o.source.empty() || o.source == "master" || o.source == "backup", "source '%s'", o.source.c_str());
  FUZZ_CHECK(!o.node.empty(), "an empty node name");
  for (const auto& opt : o.fuse_mount_opts)
    FUZZ_CHECK(!opt.empty() && opt.find(',') == std::string::npos, "kernel option '%s'", opt.c_str());
}

// The node name is a file name on the shared NAS (.nasfs/heartbeat.<node>,
// .nasfs/peers/<node>/): -o node= takes letters, digits, '-', '_', '.', and
// no leading '.'. Checked when the input says node= anywhere (the host
// name, the default, passes too; an ignored "x-node=" does no harm).
void CheckNode(const nasfs::Options& o, bool node_given) {
  if (!node_given || o.show_help || o.show_version) return;
  FUZZ_CHECK(o.node.front() != '.', "node '%s' starts with '.'", o.node.c_str());
  for (char c : o.node) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
              c == '.';
    FUZZ_CHECK(ok, "node '%s' holds byte 0x%02x", o.node.c_str(), static_cast<unsigned char>(c));
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (const char* d : {"/tmp/nasfs-fuzz-options", "/tmp/nasfs-fuzz-options/m", "/tmp/nasfs-fuzz-options/b",
                        "/tmp/nasfs-fuzz-options/mnt"})
    (void)::mkdir(d, 0755);  // EEXIST from an earlier run is fine; a failure only narrows the search
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  std::string_view data(reinterpret_cast<const char*>(bytes), size);
  std::vector<std::string> args = {"nasfs"};
  while (args.size() < kMaxArgs) {
    size_t nul = data.find('\0');
    args.emplace_back(data.substr(0, nul));
    if (nul == std::string_view::npos) break;
    data.remove_prefix(nul + 1);
  }
  std::vector<char*> argv;
  bool node_given = false;
  for (auto& a : args) {
    argv.push_back(a.data());
    node_given = node_given || a.find("node=") != std::string::npos;
  }
  argv.push_back(nullptr);

  auto parsed = nasfs::ParseOptions(static_cast<int>(args.size()), argv.data());
  if (!parsed) {
    FUZZ_CHECK(!parsed.error().empty(), "an error with no message");
    return 0;
  }
  CheckParsed(*parsed);
  CheckNode(*parsed, node_given);
  return 0;
}
