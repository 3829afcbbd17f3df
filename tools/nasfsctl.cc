// nasfsctl: the operator's view of the nasfs mounts on this machine.
//
// Each subcommand is a small class that registers itself on the CLI11 app and
// runs when chosen; a later subcommand (conflicts) adds a class and one line
// in Main(). Exit codes are shared by all of them: kExitOk, kExitFailed (a
// daemon unreachable or answering ok:false), kExitUsage (bad command line,
// or a path that is not a nasfs mount). verify alone reads them as diff(1)
// does: 0 match, 1 differ, 2 could not verify.
//
// How answers are shown to people, and how every string a daemon or a NAS
// supplied is quoted for the terminal, is tools/nasfsctl_render.h and
// tools/quote.h; this file is the command line.
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <future>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "fs/control_protocol.h"
#include "tools/nasfsctl_render.h"
#include "tools/quote.h"

namespace nasfs::ctl {
namespace {

using nlohmann::json;

constexpr int kExitOk = 0;
constexpr int kExitFailed = 1;
constexpr int kExitUsage = 2;

constexpr const char* kExitCodesHelp =
    "Exit status: 0 when every mount asked about answered ok; 1 when a mount's daemon could not be "
    "reached or answered with an error; 2 on a usage error (including a MOUNTPOINT that is not a "
    "nasfs mount).";

// Reported to the caller as a usage error (exit 2).
struct UsageError {
  std::string message;
};

// --- finding mounts and their daemons -------------------------------------

// Lexical normalization: absolute (against the working directory), no "."
// or "..", no repeated or trailing slash. Lexical on purpose: resolving the
// mount point itself would stat() into the FUSE mount, and a hung daemon
// would hang nasfsctl.
std::string NormalizePath(const std::string& path) {
  std::string full = path;
  if (full.empty() || full[0] != '/') {
    char cwd[PATH_MAX];
    if (::getcwd(cwd, sizeof cwd) != nullptr) full = std::string(cwd) + "/" + full;
  }
  std::vector<std::string> parts;
  size_t pos = 0;
  while (pos <= full.size()) {
    size_t slash = full.find('/', pos);
    if (slash == std::string::npos) slash = full.size();
    std::string part = full.substr(pos, slash - pos);
    if (part == "..") {
      if (!parts.empty()) parts.pop_back();
    } else if (!part.empty() && part != ".") {
      parts.push_back(part);
    }
    pos = slash + 1;
  }
  std::string out;
  for (const auto& p : parts) out += "/" + p;
  return out.empty() ? "/" : out;
}

// The nasfs mount `arg` names, as /proc/self/mounts spells it. Tries the path
// as given, then with its parent's symlinks resolved (/var/www -> /srv/www);
// never resolves the last component, which is the mount itself.
std::optional<std::string> FindMount(const std::string& arg, const std::vector<std::string>& mounts) {
  const std::string norm = NormalizePath(arg);
  for (const auto& m : mounts) {
    if (NormalizePath(m) == norm) return m;
  }
  if (norm == "/") return std::nullopt;
  size_t slash = norm.rfind('/');
  std::string parent = slash == 0 ? "/" : norm.substr(0, slash);
  char resolved[PATH_MAX];
  if (::realpath(parent.c_str(), resolved) == nullptr) return std::nullopt;
  std::string real = NormalizePath(std::string(resolved) + "/" + norm.substr(slash + 1));
  for (const auto& m : mounts) {
    if (NormalizePath(m) == real) return m;
  }
  return std::nullopt;
}

// Mount points in mount order, each once (a mount point stacked twice shares
// one control socket path, so asking twice would only repeat the answer).
std::vector<std::string> NasfsMounts() {
  std::vector<std::string> out;
  for (auto& m : control::ListNasfsMounts()) {
    if (std::find(out.begin(), out.end(), m) == out.end()) out.push_back(std::move(m));
  }
  return out;
}

// The registry names the socket of a daemon started with -o control=PATH;
// without an entry the daemon uses the default path.
std::string SocketFor(const std::string& mountpoint) {
  if (auto entry = control::ReadRegistry(mountpoint)) return entry->control;
  return control::DefaultControlSocket(mountpoint);
}

MountAnswer Ask(const std::string& mountpoint, const json& request, int timeout_ms) {
  return AskSocket(mountpoint, SocketFor(mountpoint), request, timeout_ms);
}

// Asks every mount at once, so N hung daemons cost one timeout, not N.
std::vector<MountAnswer> AskAll(const std::vector<std::string>& mounts, const json& request,
                                int timeout_ms) {
  std::vector<std::future<MountAnswer>> pending;
  pending.reserve(mounts.size());
  for (const auto& m : mounts) {
    pending.push_back(std::async(std::launch::async, Ask, m, request, timeout_ms));
  }
  std::vector<MountAnswer> out;
  out.reserve(mounts.size());
  for (auto& f : pending) out.push_back(f.get());
  return out;
}

// --- subcommands -------------------------------------------------------------

// What the subcommands share: the MOUNTPOINT argument, --json, --timeout, and
// printing the answers as JSON.
class MountCommand {
 public:
  bool chosen() const { return cmd_->parsed(); }

 protected:
  MountCommand(CLI::App& app, const char* name, const std::string& description,
               const std::string& mountpoint_help, const std::string& footer) {
    cmd_ = app.add_subcommand(name, description);
    cmd_->add_option("MOUNTPOINT", mountpoint_, mountpoint_help);
    cmd_->footer(footer);
  }

  void AddJsonFlag(const std::string& help) { cmd_->add_flag("--json", json_, help); }
  void AddTimeout(int default_ms) {
    timeout_ms_ = default_ms;
    cmd_->add_option("--timeout", timeout_ms_,
                     "Give up on a daemon that has not answered after this many milliseconds")
        ->check(CLI::Range(1, 3600 * 1000))
        ->type_name("MS")
        ->capture_default_str();
  }

  // MOUNTPOINT's mount, or every nasfs mount without it.
  std::vector<std::string> AllTargets() const {
    const std::vector<std::string> mounts = NasfsMounts();
    if (mountpoint_.empty()) return mounts;
    auto found = FindMount(mountpoint_, mounts);
    if (!found) throw UsageError{fmt::format("{} is not a nasfs mount", Quote(mountpoint_))};
    return {*found};
  }
  // MOUNTPOINT's mount, or the only nasfs mount without it: for commands
  // that act, which must not act on several mounts by accident.
  std::string OneTarget() const {
    std::vector<std::string> targets = AllTargets();
    if (targets.empty()) throw UsageError{"there is no nasfs mount on this machine"};
    if (targets.size() > 1) {
      std::vector<std::string> names;
      for (const auto& t : targets) names.push_back(Quote(t));
      throw UsageError{fmt::format("there are {} nasfs mounts ({}); name one", targets.size(),
                                   fmt::join(names, ", "))};
    }
    return targets.front();
  }

  // One object with MOUNTPOINT, else an array with one object per mount.
  void PrintJson(const std::vector<MountAnswer>& answers) const {
    if (!mountpoint_.empty() && answers.size() == 1) {
      std::cout << Dump(answers.front().answer, 2) << "\n";
    } else {
      json list = json::array();
      for (const auto& a : answers) list.push_back(a.answer);
      std::cout << Dump(list, 2) << "\n";
    }
    std::cout.flush();
  }
  // --json for a command that acts on one mount: its answer, and the exit status.
  int PrintOne(const MountAnswer& a) const {
    PrintJson({a});
    ReportFailures({a});
    return a.ok() ? kExitOk : kExitFailed;
  }
  // Why each mount that failed failed, on stderr (in JSON it is also in the
  // mount's object), so scripts see failures either way.
  static void ReportFailures(const std::vector<MountAnswer>& answers) {
    for (const auto& a : answers) {
      if (!a.ok()) std::cerr << "nasfsctl: " << Problem(a) << "\n";
    }
  }

  // Asks every target; prints the answers as JSON, or each as render() has
  // it (`separator` between two), a mount without an answer on stderr.
  // kExitOk when every mount answered ok, else kExitFailed.
  int AskAndPrint(const json& request, std::string (*render)(const MountAnswer&),
                  const char* separator = "") const {
    const auto answers = AskAll(AllTargets(), request, timeout_ms_);
    bool all_ok = true;
    for (const auto& a : answers) all_ok = all_ok && a.ok();
    // Answers go to stdout; why a mount has none goes to stderr as well (in
    // JSON it is also in the mount's object), so scripts see failures either way.
    if (json_) {
      PrintJson(answers);
      ReportFailures(answers);
    } else if (answers.empty()) {
      std::cout << "no nasfs mounts\n";
    } else {
      bool first = true;
      for (const auto& a : answers) {
        if (!a.ok()) {
          std::cout.flush();  // keep the mount order when both go to a terminal
          std::cerr << "nasfsctl: " << Problem(a) << "\n";
          continue;
        }
        std::cout << (first ? "" : separator) << render(a);
        first = false;
      }
    }
    std::cout.flush();
    return all_ok ? kExitOk : kExitFailed;
  }

  CLI::App* cmd_ = nullptr;
  std::string mountpoint_;
  bool json_ = false;
  int timeout_ms_ = 3000;
};

class StatusCommand : public MountCommand {
 public:
  explicit StatusCommand(CLI::App& app)
      : MountCommand(app, "status",
                     "Show, for one nasfs mount or for every one on this machine, which NAS "
                     "serves reads, the state of each NAS, background sync progress, the journal "
                     "and its replay. A mount whose daemon cannot be reached, or answers with an "
                     "error, is reported on stderr.",
                     "A nasfs mount point; without it, every nasfs mount in /proc/self/mounts",
                     kExitCodesHelp) {
    AddJsonFlag(
        "Print the daemon's answer as JSON: one object with MOUNTPOINT, otherwise an array with "
        "one object per mount (an unreachable mount appears as "
        "{\"mountpoint\",\"ok\":false,\"error\"})");
    AddTimeout(3000);
  }

  int Run() {
    return AskAndPrint({{"cmd", "status"}}, RenderStatus, /*separator=*/"\n");
  }
};

// --- journal -----------------------------------------------------------------

class JournalCommand : public MountCommand {
 public:
  explicit JournalCommand(CLI::App& app)
      : MountCommand(app, "journal",
                     "List what the journal holds for a NAS that missed it (changes made while "
                     "that NAS was out, waiting to be replayed onto it), oldest first: for each "
                     "entry its target NAS, since when, the operations, the path and the byte "
                     "ranges written.",
                     "A nasfs mount point; without it, every nasfs mount in /proc/self/mounts",
                     kExitCodesHelp) {
    AddJsonFlag(
        "Print the daemon's answer as JSON ({\"total\",\"entries\":[{\"path\",\"target\",\"ops\","
        "\"scope\",\"ranges\",\"data_bytes\",\"seq\",\"since\"}...]}): one object with "
        "MOUNTPOINT, otherwise an array with one object per mount");
    cmd_->add_option("--limit", limit_,
                     "List at most this many entries (the oldest); the total is always shown")
        ->check(CLI::Range(0, 1000000))
        ->type_name("N")
        ->capture_default_str();
    AddTimeout(10000);
  }

  int Run() { return AskAndPrint({{"cmd", "journal"}, {"limit", limit_}}, RenderJournal, "\n"); }

 private:
  int limit_ = 100;
};

// --- replay ------------------------------------------------------------------

class ReplayCommand : public MountCommand {
 public:
  explicit ReplayCommand(CLI::App& app)
      : MountCommand(app, "replay",
                     "Replay the journal now onto a NAS that is back (answering probes), without "
                     "waiting for its run of good probes. Prints what the daemon started, or why "
                     "there is nothing to replay (nothing pending, or the other NAS is out).",
                     "A nasfs mount point; without it, the only nasfs mount on this machine (a "
                     "usage error when there are several)",
                     "With --node NAME: finish the replay another web server NAME left on the "
                     "shared NAS (it died during an outage and is not coming back). The daemon "
                     "does this by itself once NAME's heartbeat has been silent for the mount's "
                     "peer_timeout; --node does it now. Refused while NAME's heartbeat still "
                     "changes: a live server replays its own changes.\n\n"
                     "Exit status: 0 when the daemon started a replay; 1 when it did not (nothing "
                     "to replay, the NAS not back yet, NAME alive or unknown) or could not be "
                     "reached; 2 on a usage error (including a MOUNTPOINT that is not a nasfs "
                     "mount).") {
    AddJsonFlag("Print the daemon's answer as a JSON object");
    cmd_->add_option("--node", node_, "Replay what web server NAME left on the shared NAS")
        ->type_name("NAME");
    AddTimeout(30000);
  }

  int Run() {
    json request = {{"cmd", "replay"}};
    if (!node_.empty()) request["node"] = node_;
    const MountAnswer a = Ask(OneTarget(), request, timeout_ms_);
    if (json_) return PrintOne(a);
    if (!a.ok()) {
      std::cerr << "nasfsctl: " << RenderNoReplay(a) << "\n";
      return kExitFailed;
    }
    std::cout << RenderReplayStarted(a);
    return kExitOk;
  }

 private:
  std::string node_;
};

// --- conflicts ---------------------------------------------------------------

class ConflictsCommand : public MountCommand {
 public:
  explicit ConflictsCommand(CLI::App& app)
      : MountCommand(app, "conflicts",
                     "List the versions a split brain kept aside (web servers that disagreed "
                     "about which NAS was alive wrote different versions of a path: the newest "
                     "stayed at the path, the other is kept under .nasfs/conflicts/<id>/ on both "
                     "NAS, invisible to the website). With --restore ID, put that version back "
                     "at its path; the version it replaces is kept in its turn, so nothing is "
                     "lost.",
                     "A nasfs mount point; without it, the only nasfs mount on this machine (a "
                     "usage error when there are several)",
                     "Exit status: 0 when listed or restored; 1 when the daemon could not list or "
                     "restore (an unknown id, a NAS not healthy) or could not be reached; 2 on a "
                     "usage error.") {
    AddJsonFlag(
        "Print the daemon's answer as JSON ({\"conflicts\":[{\"id\",\"path\",\"kept_from\","
        "\"winner\",\"kind\",\"reason\",\"kept_mtime\",\"winner_mtime\",\"size\",\"detected\","
        "\"node\"}...]})");
    cmd_->add_option("--restore", restore_, "Put the kept version ID back at its path")->type_name("ID");
    AddTimeout(30000);
  }

  int Run() {
    json request = {{"cmd", "conflicts"}};
    if (!restore_.empty()) request["restore"] = restore_;
    const MountAnswer a = Ask(OneTarget(), request, timeout_ms_);
    if (json_) return PrintOne(a);
    if (!a.ok()) {
      std::cerr << "nasfsctl: " << Problem(a) << "\n";
      return kExitFailed;
    }
    std::cout << (restore_.empty() ? RenderConflicts(a) : RenderRestored(a, restore_));
    return kExitOk;
  }

 private:
  std::string restore_;
};

// --- verify ------------------------------------------------------------------

class VerifyCommand : public MountCommand {
 public:
  explicit VerifyCommand(CLI::App& app)
      : MountCommand(
            app, "verify",
            "Compare the master NAS with the backup, content and metadata, and list every "
            "difference.",
            "A nasfs mount point; without it, every nasfs mount in /proc/self/mounts",
            "What is compared: every path on either NAS (a path only on one NAS is listed as "
            "such; a directory there is listed once, not what it holds), and for a path on both "
            "its type, permission bits, uid, gid, size, mtime (to the nanosecond), symlink "
            "target, device numbers, extended attributes (names and values) and content (xxh3, "
            "compared when the sizes match). The daemon walks both NAS, leaving out the "
            "top-level .nasfs and lost+found, and the root's own mtime. Writes made meanwhile "
            "may make an entry differ for an instant, so an entry found different is compared "
            "again after the walk before it is listed. Both NAS must be healthy (see nasfsctl "
            "status). On a large tree this takes minutes; the mount keeps serving meanwhile.\n\n"
            "Exit status: 0 when master and backup match (on every mount asked about); 1 when "
            "they differ; 2 when the verify could not be done: a usage error (including a "
            "MOUNTPOINT that is not a nasfs mount), a daemon that cannot be reached or does not "
            "answer within --timeout, or one that answers with an error (a NAS not healthy, a NAS "
            "call that timed out or failed).") {
    AddJsonFlag(
        "Print the daemon's answer as JSON ({\"match\",\"entries_compared\",\"elapsed_s\","
        "\"truncated\",\"unreported\",\"differences\":[{\"path\",\"what\",\"master\","
        "\"backup\"}...]}): one object with MOUNTPOINT, otherwise an array with one object per "
        "mount");
    cmd_->add_option("--max", max_,
                     "List at most this many differences (sorted by path); the verdict counts them "
                     "all")
        ->check(CLI::Range(1, 100000))
        ->type_name("N")
        ->capture_default_str();
    cmd_->add_option("--timeout", timeout_s_,
                     "Give up on a daemon that has not answered after this many seconds (the "
                     "daemon then stops its walk)")
        ->check(CLI::Range(1, 86400))
        ->type_name("SECONDS")
        ->capture_default_str();
  }

  int Run() {
    const auto answers =
        AskAll(AllTargets(), {{"cmd", "verify"}, {"max", max_}}, timeout_s_ * 1000);
    int rc = kExitOk;
    for (const auto& a : answers) rc = std::max(rc, Verdict(a));
    if (json_) {
      PrintJson(answers);
    } else if (answers.empty()) {
      std::cout << "no nasfs mounts\n";
    } else {
      for (const auto& a : answers) {
        if (Verdict(a) != kExitUsage) std::cout << RenderVerify(a);
      }
    }
    std::cout.flush();
    for (const auto& a : answers) {
      if (Verdict(a) == kExitUsage) std::cerr << "nasfsctl: " << NoVerdict(a) << "\n";
    }
    return rc;
  }

 private:
  // kExitOk, kExitFailed (they differ) or kExitUsage (no verdict).
  static int Verdict(const MountAnswer& a) {
    if (!a.ok()) return kExitUsage;
    auto match = a.answer.find("match");  // ok() holds: an object
    if (match == a.answer.end() || !match->is_boolean()) return kExitUsage;
    return match->get<bool>() ? kExitOk : kExitFailed;
  }

  int max_ = 1000;
  int timeout_s_ = 600;
};

int Main(int argc, char** argv) {
  CLI::App app{
      "nasfsctl: inspect and steer the nasfs mounts of this machine through each daemon's "
      "control socket (found via /run/nasfs/mounts/, else /run/nasfs/<mount id>.sock). Talking "
      "to a daemon needs root, or membership in the group given by the mount's -o control_group.",
      "nasfsctl"};
  app.require_subcommand(1);
  app.footer(
      "Exit status: 0 on success; 1 when a mount's daemon could not be reached or answered with "
      "an error, or (verify) when the NAS differ; 2 on a usage error (including a MOUNTPOINT that "
      "is not a nasfs mount), and (verify) when the verify could not be done. Each subcommand's "
      "--help says which applies.");
  StatusCommand status(app);
  JournalCommand journal(app);
  ReplayCommand replay(app);
  VerifyCommand verify(app);
  ConflictsCommand conflicts(app);

  // CLI11 would call an unknown word "a missing subcommand"; name it instead.
  if (argc > 1 && argv[1][0] != '-') {
    try {
      (void)app.get_subcommand(argv[1]);  // only asked whether it exists
    } catch (const CLI::OptionNotFound&) {
      std::cerr << "nasfsctl: unknown subcommand '" << argv[1] << "'\n"
                << "Run with --help for more information.\n";
      return kExitUsage;
    }
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    // --help is a ParseError with exit code 0; everything else is misuse.
    int rc = app.exit(e);
    return rc == 0 ? kExitOk : kExitUsage;
  }
  try {
    if (status.chosen()) return status.Run();
    if (journal.chosen()) return journal.Run();
    if (replay.chosen()) return replay.Run();
    if (verify.chosen()) return verify.Run();
    if (conflicts.chosen()) return conflicts.Run();
  } catch (const UsageError& e) {
    std::cerr << "nasfsctl: " << e.message << "\n";
    return kExitUsage;
  }
  std::cerr << app.help();
  return kExitUsage;
}

}  // namespace
}  // namespace nasfs::ctl

int main(int argc, char** argv) {
  try {
    return nasfs::ctl::Main(argc, argv);
  } catch (const std::exception& e) {
    std::cerr << "nasfsctl: " << e.what() << "\n";
    return nasfs::ctl::kExitFailed;
  }
}
