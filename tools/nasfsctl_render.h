// How nasfsctl asks a daemon and shows its answers to people. Apart from the
// command line (tools/nasfsctl.cc) so unit tests can render faked answers
// without a mount.
//
// Every string in an answer may come from the NAS (paths, names, symlink
// targets, xattr values, errors naming paths) and is printed through
// Quote() (tools/quote.h); structured values are shown as ASCII-only JSON.
// Every accessor tolerates a missing field or one of an unexpected type: the
// daemon may be newer or older than nasfsctl.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace nasfs::ctl {

// One mount's answer to a request, or the reason there is none, shaped like a
// daemon answer so JSON output is uniform: {"mountpoint","ok":false,"error"}.
struct MountAnswer {
  std::string mountpoint;  // as /proc/self/mounts spells it
  nlohmann::json answer;
  bool reached = false;  // false: answer is our own error object

  // "ok" is the boolean true.
  bool ok() const;
};

// Asks the daemon listening on `socket` (Call()'s contract); the answer gets
// "mountpoint" when the daemon did not set it.
MountAnswer AskSocket(const std::string& mountpoint, const std::string& socket,
                      const nlohmann::json& request, int timeout_ms);

// JSON for --json output (invalid UTF-8 replaced, never thrown on).
std::string Dump(const nlohmann::json& j, int indent = -1);

// Why a mount has no answer to show, for stderr: "MOUNTPOINT: why".
std::string Problem(const MountAnswer& m);

// `nasfsctl status`: the block of a mount that answered ok.
std::string RenderStatus(const MountAnswer& m);

// `nasfsctl journal`: a count line and one line per pending entry.
std::string RenderJournal(const MountAnswer& m);
// One pending entry: target, since, ops, path, then the rest.
std::string RenderJournalEntry(const nlohmann::json& entry);

// `nasfsctl replay`: what the daemon started, or (RenderNoReplay) why not.
std::string RenderReplayStarted(const MountAnswer& m);
std::string RenderNoReplay(const MountAnswer& m);

// `nasfsctl conflicts`: one line per version kept aside; and the line for
// `--restore restored_id`.
std::string RenderConflicts(const MountAnswer& m);
std::string RenderRestored(const MountAnswer& m, const std::string& restored_id);

// `nasfsctl verify`: the verdict and one line per difference; NoVerdict says
// why a mount has none (unreachable, an error, no "match" in the answer).
std::string RenderVerify(const MountAnswer& m);
std::string RenderDifference(const nlohmann::json& difference);
std::string NoVerdict(const MountAnswer& m);

}  // namespace nasfs::ctl
