// nasfsctl: the operator's view of the nasfs mounts on this machine.
//
// Each subcommand is a small class that registers itself on the CLI11 app and
// runs when chosen; a later subcommand (conflicts) adds a class and one line
// in Main(). Exit codes are shared by all of them: kExitOk, kExitFailed (a
// daemon unreachable or answering ok:false), kExitUsage (bad command line,
// or a path that is not a nasfs mount). verify alone reads them as diff(1)
// does: 0 match, 1 differ, 2 could not verify.
#include <limits.h>
#include <stdlib.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
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

std::string Dump(const json& j, int indent = -1) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

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

// One mount's answer to a request, or the reason there is none, shaped like a
// daemon answer so JSON output is uniform: {"mountpoint","ok":false,"error"}.
struct MountAnswer {
  std::string mountpoint;
  json answer;
  bool reached = false;  // false: answer is our own error object

  bool ok() const {
    auto it = answer.find("ok");
    return it != answer.end() && it->is_boolean() && it->get<bool>();
  }
};

MountAnswer Ask(const std::string& mountpoint, const json& request, int timeout_ms) {
  MountAnswer out{mountpoint, json::object(), false};
  auto answer = control::Call(SocketFor(mountpoint), request, timeout_ms);
  if (!answer) {
    out.answer = {{"mountpoint", mountpoint}, {"ok", false}, {"error", answer.error()}};
    return out;
  }
  out.reached = true;
  out.answer = std::move(*answer);
  if (!out.answer.contains("mountpoint")) out.answer["mountpoint"] = mountpoint;
  return out;
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

// --- rendering status for people --------------------------------------------
// Every accessor tolerates a missing field or one of an unexpected type: the
// daemon may be newer or older than nasfsctl.

const json* Field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string Text(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "-";
  return Dump(v);
}

std::string Text(const json& obj, const char* key, const char* fallback = "-") {
  const json* v = Field(obj, key);
  return v ? Text(*v) : fallback;
}

// True only for a boolean true.
bool Flag(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  return v != nullptr && v->is_boolean() && v->get<bool>();
}

std::optional<double> Number(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  if (v == nullptr || !v->is_number()) return std::nullopt;
  return v->get<double>();
}

std::string Duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  auto s = static_cast<long long>(seconds);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  if (s < 86400) return fmt::format("{}h{:02}m", s / 3600, s % 3600 / 60);
  return fmt::format("{}d{:02}h", s / 86400, s % 86400 / 3600);
}

std::string Bytes(double n) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  if (!std::isfinite(n) || n < 0) return "?";
  if (n < 1024) return fmt::format("{} B", static_cast<long long>(n));
  size_t u = 0;
  while (n >= 1024 && u + 1 < std::size(kUnits)) {
    n /= 1024;
    ++u;
  }
  return fmt::format("{:.1f} {}", n, kUnits[u]);
}

// "mirrored_ops" -> "mirrored ops"
std::string Words(std::string key) {
  std::replace(key.begin(), key.end(), '_', ' ');
  return key;
}

// A field nasfsctl has no layout for, compactly: scalars as they are, an
// object as "key value, ...", anything else as JSON.
std::string Generic(const json& v) {
  if (v.is_object()) {
    std::string out;
    for (const auto& [k, item] : v.items()) {
      if (!out.empty()) out += ", ";
      out += Words(k) + " " + (item.is_structured() ? Dump(item) : Text(item));
    }
    return out.empty() ? "-" : out;
  }
  return Text(v);
}

// The lines under a mount's header: labelled ones share one value column,
// whatever labels a newer daemon brings.
class Block {
 public:
  void Labelled(const std::string& label, const std::string& value) {
    rows_.push_back({label + ":", value, true});
    width_ = std::max(width_, label.size() + 1);
  }
  void Raw(const std::string& text) { rows_.push_back({{}, text, false}); }

  std::string str() const {
    std::string out;
    for (const auto& r : rows_) {
      out += r.labelled ? fmt::format("  {:<{}}  {}\n", r.label, width_, r.text) : r.text + "\n";
    }
    return out;
  }

 private:
  struct Row {
    std::string label, text;
    bool labelled;
  };
  std::vector<Row> rows_;
  size_t width_ = 0;
};

void RenderBackends(Block& out, const json& backends) {
  static const std::vector<std::string> kKnown = {"role",     "path",   "state",    "state_since",
                                                  "last_error", "ops", "errors",   "timeouts",
                                                  "missed",  "probe_latency_ms"};
  size_t w_role = 0, w_path = 0, w_state = 0;
  for (const auto& b : backends) {
    w_role = std::max(w_role, Text(b, "role").size());
    w_path = std::max(w_path, Text(b, "path").size());
    w_state = std::max(w_state, Text(b, "state").size());
  }
  for (const auto& b : backends) {
    std::string row = fmt::format("  {:<{}}  {:<{}}  {:<{}}", Text(b, "role"), w_role,
                                  Text(b, "path"), w_path, Text(b, "state"), w_state);
    if (Field(b, "state_since")) row += "  since " + Text(b, "state_since");
    std::string counts;
    for (const char* c : {"ops", "errors", "timeouts"}) {
      if (Field(b, c)) counts += fmt::format("{}{} {}", counts.empty() ? "" : " ", c, Text(b, c));
    }
    if (!counts.empty()) row += "  " + counts;
    if (auto ms = Number(b, "probe_latency_ms")) row += fmt::format("  probe {:.1f} ms", *ms);
    if (const json* m = Field(b, "missed"); m && m->is_object()) {
      if (m->value("full_copy_needed", false))
        row += "  missed: unknown (full copy on return)";
      else if (m->value("count", 0) > 0)
        row += fmt::format("  missed {} paths", m->value("count", 0));
    }
    if (b.is_object()) {
      for (const auto& [k, v] : b.items()) {
        if (v.is_null() || std::find(kKnown.begin(), kKnown.end(), k) != kKnown.end()) continue;
        row += fmt::format("  {} {}", Words(k), v.is_structured() ? Dump(v) : Text(v));
      }
    }
    if (Field(b, "last_error")) row += "  last error: " + Text(b, "last_error");
    out.Raw(row);
  }
}

std::string RenderSync(const json& sync) {
  if (!sync.is_object()) return Text(sync);
  std::string s = Text(sync, "state", "?");
  if (Field(sync, "source") || Field(sync, "target")) {
    s += fmt::format(" {} -> {}", Text(sync, "source", "?"), Text(sync, "target", "?"));
  }
  std::vector<std::string> facts;
  if (Number(sync, "entries_done")) facts.push_back(Text(sync, "entries_done") + " entries");
  if (auto n = Number(sync, "bytes_copied")) facts.push_back(Bytes(*n) + " copied");
  if (Number(sync, "displaced")) facts.push_back(Text(sync, "displaced") + " displaced");
  if (Field(sync, "finished")) {
    facts.push_back("finished " + Text(sync, "finished"));
  } else if (Field(sync, "started")) {
    facts.push_back("started " + Text(sync, "started"));
  }
  for (const auto& f : facts) s += ", " + f;
  if (Field(sync, "error")) s += "  error: " + Text(sync, "error");
  return s;
}

// A field worth showing: present, not null, not an empty string.
const json* Shown(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  if (v == nullptr || (v->is_string() && v->get_ref<const std::string&>().empty())) return nullptr;
  return v;
}

// The scalar fields of obj not in `known` and worth showing, as ", key value"
// each (nested objects are left to --json).
std::string OtherFields(const json& obj, const std::vector<std::string>& known) {
  std::string out;
  if (!obj.is_object()) return out;
  for (const auto& [k, v] : obj.items()) {
    if (v.is_structured() || !Shown(obj, k.c_str())) continue;
    if (std::find(known.begin(), known.end(), k) != known.end()) continue;
    out += fmt::format(", {} {}", Words(k), Text(v));
  }
  return out;
}

// The journal block of a status: a "journal" line (state, what is pending
// for which NAS, its size and age), its error, and a "replay" line.
void RenderJournal(Block& out, const json& j) {
  if (!j.is_object()) {
    out.Labelled("journal", Text(j));
    return;
  }
  std::string line;
  if (Shown(j, "state")) line = Text(j, "state") + ", ";
  line += Text(j, "pending", "?") + " pending";
  std::vector<std::string> per_nas;
  for (const char* role : {"master", "backup"}) {
    const std::string key = std::string("pending_") + role;
    if (Shown(j, key.c_str())) per_nas.push_back(fmt::format("{} {}", role, Text(j, key.c_str())));
  }
  if (!per_nas.empty()) line += fmt::format(" ({})", fmt::join(per_nas, ", "));
  if (auto bytes = Number(j, "bytes")) line += ", " + Bytes(*bytes);
  if (Shown(j, "oldest")) line += ", oldest " + Text(j, "oldest");
  line += OtherFields(j, {"state", "pending", "pending_master", "pending_backup", "bytes", "oldest",
                          "dir", "error", "replay"});
  if (Shown(j, "dir")) line += "  (" + Text(j, "dir") + ")";
  out.Labelled("journal", line);
  if (Shown(j, "error")) out.Labelled("journal error", Text(j, "error"));

  const json* r = Field(j, "replay");
  if (r == nullptr) return;
  if (!r->is_object()) {
    out.Labelled("replay", Text(*r));
    return;
  }
  std::string rl = Text(*r, "state", "?");
  if (Shown(*r, "target")) rl += " onto " + Text(*r, "target");
  if (Number(*r, "total").value_or(0) > 0 || Number(*r, "done").value_or(0) > 0) {
    rl += fmt::format(": {}/{}", Text(*r, "done", "?"), Text(*r, "total", "?"));
  }
  if (auto rate = Number(*r, "rate_per_s"); rate && *rate > 0) rl += fmt::format(", {:.1f}/s", *rate);
  rl += OtherFields(*r, {"state", "target", "done", "total", "rate_per_s"});
  out.Labelled("replay", rl);
}

// Why a mount has no status, for stderr.
std::string Problem(const MountAnswer& m) {
  if (!m.reached) return fmt::format("{}: {}", m.mountpoint, Text(m.answer, "error", "?"));
  return fmt::format("{}: the daemon answered with an error: {}", m.mountpoint,
                     Text(m.answer, "error", "(no message)"));
}

// The status block of a mount that answered ok.
std::string RenderStatus(const MountAnswer& m) {
  const json& a = m.answer;

  std::string head = Text(a, "mountpoint", m.mountpoint.c_str());
  if (Field(a, "node")) head += "  node " + Text(a, "node");
  if (Field(a, "pair_id")) head += "  pair " + Text(a, "pair_id").substr(0, 8);
  if (Field(a, "pid")) head += "  pid " + Text(a, "pid");
  if (auto up = Number(a, "uptime_s")) head += "  up " + Duration(*up);
  if (Field(a, "version")) head += "  nasfs " + Text(a, "version");

  Block out;
  std::string reads = a.contains("read_from") ? Text(a, "read_from", "none (no NAS usable)") : "?";
  if (Field(a, "io_timeout_ms")) reads += fmt::format("   (io timeout {} ms)", Text(a, "io_timeout_ms"));
  out.Labelled("reads from", reads);
  if (const json* b = Field(a, "backends"); b && b->is_array()) RenderBackends(out, *b);
  if (a.contains("sync")) out.Labelled("sync", Field(a, "sync") ? RenderSync(a["sync"]) : "none");
  if (const json* j = Field(a, "journal")) RenderJournal(out, *j);
  if (const json* p = Field(a, "peers"); p && p->is_array()) {
    if (p->empty()) out.Labelled("peers", "none seen on the NAS");
    for (const auto& peer : *p) {
      std::string line = fmt::format("{}: {}, heartbeat {} ago", Text(peer, "node", "?"),
                                     Flag(peer, "alive") ? "alive" : "SILENT",
                                     Duration(Number(peer, "heartbeat_age_s").value_or(0)));
      line += fmt::format(", pending master {} backup {}", Text(peer, "pending_master", "?"),
                          Text(peer, "pending_backup", "?"));
      if (Field(peer, "read_from")) line += ", reads from " + Text(peer, "read_from");
      if (Field(peer, "taken_over_by")) line += ", its replay taken over by " + Text(peer, "taken_over_by");
      out.Labelled("peer", line);
    }
  }
  if (const json* c = Field(a, "coordination")) {
    const json* w = Field(*c, "waiting_for");
    if (w && w->is_array() && !w->empty()) {
      std::vector<std::string> names;
      for (const auto& n : *w) names.push_back(n.is_string() ? n.get<std::string>() : n.dump());
      out.Labelled("switch-back", "waits for web servers " + fmt::format("{}", fmt::join(names, ", ")));
    }
  }
  if (const json* sb = Field(a, "split_brain")) {
    std::string line = Text(*sb, "state", "?");
    if (Number(*sb, "count").value_or(0) > 0) {
      const json* last = Field(*sb, "last");
      line += fmt::format(" ({} seen since start", Text(*sb, "count"));
      if (last) {
        line += fmt::format("; last detected {}", Text(*last, "detected", "?"));
        if (Field(*last, "resolved")) line += fmt::format(", resolved {}", Text(*last, "resolved"));
        if (Field(*last, "by")) line += " by " + Text(*last, "by");
        if (Field(*last, "paths"))
          line += fmt::format(": {} paths merged, {} versions kept (nasfsctl conflicts)", Text(*last, "paths"),
                              Text(*last, "conflicts", "?"));
        if (Field(*last, "error")) line += ", error: " + Text(*last, "error");
      }
      line += ")";
    }
    out.Labelled("split brain", line);
  }
  if (const json* c = Field(a, "counters")) out.Labelled("counters", Generic(*c));

  static const std::vector<std::string> kKnown = {
      "ok",       "version",       "mountpoint", "node", "pair_id", "pid",     "uptime_s",
      "read_from", "io_timeout_ms", "backends",   "sync", "journal", "counters",
      "peers",    "split_brain",   "coordination"};
  for (const auto& [k, v] : a.items()) {
    if (v.is_null() || std::find(kKnown.begin(), kKnown.end(), k) != kKnown.end()) continue;
    out.Labelled(Words(k), Generic(v));
  }
  return head + "\n" + out.str();
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
    if (!found) throw UsageError{fmt::format("{} is not a nasfs mount", mountpoint_)};
    return {*found};
  }
  // MOUNTPOINT's mount, or the only nasfs mount without it: for commands
  // that act, which must not act on several mounts by accident.
  std::string OneTarget() const {
    std::vector<std::string> targets = AllTargets();
    if (targets.empty()) throw UsageError{"there is no nasfs mount on this machine"};
    if (targets.size() > 1) {
      throw UsageError{fmt::format("there are {} nasfs mounts ({}); name one", targets.size(),
                                   fmt::join(targets, ", "))};
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

// [[off,len],...] as "[0+4096, 8192+100]", or a count and the span when long.
std::string RangesSummary(const json& ranges) {
  if (!ranges.is_array() || ranges.empty()) return "";
  auto one = [](const json& r) {
    if (r.is_array() && r.size() == 2) return fmt::format("{}+{}", Text(r[0]), Text(r[1]));
    return Text(r);
  };
  constexpr size_t kListed = 3;
  if (ranges.size() <= kListed) {
    std::vector<std::string> parts;
    for (const auto& r : ranges) parts.push_back(one(r));
    return fmt::format("ranges [{}]", fmt::join(parts, ", "));
  }
  return fmt::format("{} ranges [{}, ... {}]", ranges.size(), one(ranges.front()), one(ranges.back()));
}

// One pending entry on one line: target, since, ops, path, then the rest.
std::string RenderJournalEntry(const json& e) {
  std::string ops = "?";
  if (const json* o = Field(e, "ops"); o && o->is_array()) {
    std::vector<std::string> names;
    for (const auto& op : *o) names.push_back(Text(op));
    ops = names.empty() ? "-" : fmt::format("{}", fmt::join(names, ","));
  } else if (o) {
    ops = Text(*o);
  }
  std::string line = fmt::format("  {:<6}  {}  {}  {}", Text(e, "target", "?"), Text(e, "since", "?"),
                                 ops, Text(e, "path", "?"));
  std::vector<std::string> facts;
  if (Field(e, "scope")) facts.push_back("scope " + Text(e, "scope"));
  if (const json* r = Field(e, "ranges")) {
    if (std::string rs = RangesSummary(*r); !rs.empty()) facts.push_back(rs);
  }
  if (auto n = Number(e, "data_bytes"); n && *n > 0) facts.push_back(Bytes(*n) + " of data");
  if (Field(e, "seq")) facts.push_back("seq " + Text(e, "seq"));
  if (!facts.empty()) line += fmt::format("  ({})", fmt::join(facts, ", "));
  line += OtherFields(e, {"path", "target", "ops", "scope", "ranges", "data_bytes", "seq", "since"});
  return line;
}

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

  int Run() { return AskAndPrint({{"cmd", "journal"}, {"limit", limit_}}, Render, "\n"); }

 private:
  static std::string Render(const MountAnswer& m) {
    const json& a = m.answer;
    const json* entries = Field(a, "entries");
    const size_t shown = entries && entries->is_array() ? entries->size() : 0;
    const std::string total = Text(a, "total", "?");
    std::string out = fmt::format("{}: {} {} pending in the journal", m.mountpoint, total,
                                  total == "1" ? "entry" : "entries");
    if (Number(a, "total").value_or(0) > static_cast<double>(shown) ||
        Flag(a, "truncated")) {
      out += fmt::format(" (the oldest {} listed; see --limit)", shown);
    }
    out += "\n";
    if (shown > 0) {
      for (const auto& e : *entries) out += RenderJournalEntry(e) + "\n";
    }
    return out;
  }

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
      if (a.reached) {
        std::cerr << "nasfsctl: " << a.mountpoint << ": no replay: " << Text(a.answer, "error", "?")
                  << "\n";
      } else {
        std::cerr << "nasfsctl: " << Problem(a) << "\n";
      }
      return kExitFailed;
    }
    json rest = a.answer;
    rest.erase("ok");
    rest.erase("mountpoint");
    std::cout << a.mountpoint << ": replay started" << (rest.empty() ? "" : ": " + Generic(rest))
              << "\n";
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
    if (!restore_.empty()) {
      const json* r = Field(a.answer, "restored");
      const json* k = Field(a.answer, "kept");
      std::cout << fmt::format("{}: restored {} from {}", a.mountpoint, r ? Text(*r, "path", "?") : "?", restore_);
      if (k) std::cout << fmt::format("; the version it replaced is kept as {}", Text(*k, "id", "?"));
      std::cout << "\n";
      return kExitOk;
    }
    const json* list = Field(a.answer, "conflicts");
    const size_t n = list && list->is_array() ? list->size() : 0;
    std::cout << fmt::format("{}: {} kept {}\n", a.mountpoint, n, n == 1 ? "version" : "versions");
    for (size_t i = 0; i < n; ++i) {
      const json& c = (*list)[i];
      std::cout << fmt::format("  {}  /{}  {} from the {} (mtime {}), {} won (mtime {}), {} by {}\n",
                               Text(c, "id", "?"), Text(c, "path", "?"), Text(c, "kind", "?"),
                               Text(c, "kept_from", "?"), Text(c, "kept_mtime", "?"), Text(c, "winner", "?"),
                               Text(c, "winner_mtime", "?"), Text(c, "reason", "?"), Text(c, "node", "?"));
    }
    return kExitOk;
  }

 private:
  std::string restore_;
};

// --- verify ------------------------------------------------------------------

// One difference on one line: "/a/b: mode differs (master 0644, backup 0600)".
std::string RenderDifference(const json& d) {
  const std::string path = Text(d, "path", "?");
  const std::string what = Text(d, "what", "?");
  const json* side[2] = {Field(d, "master"), Field(d, "backup")};
  if (what.rfind("only on ", 0) == 0) {
    const json* present = side[0] ? side[0] : side[1];
    return fmt::format("{}: {}{}", path, what, present ? " (" + Text(*present) + ")" : "");
  }
  if (what == "unreadable") {
    return fmt::format("{}: unreadable (master: {}; backup: {})", path,
                       side[0] ? Text(*side[0]) : "ok", side[1] ? Text(*side[1]) : "ok");
  }
  return fmt::format("{}: {} differs (master {}, backup {})", path, what,
                     side[0] ? Text(*side[0]) : "absent", side[1] ? Text(*side[1]) : "absent");
}

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
        if (Verdict(a) != kExitUsage) std::cout << Render(a);
      }
    }
    std::cout.flush();
    for (const auto& a : answers) {
      if (Verdict(a) == kExitUsage) std::cerr << "nasfsctl: " << NoVerdict(a) << "\n";
    }
    return rc;
  }

 private:
  // Why a mount has no verdict.
  static std::string NoVerdict(const MountAnswer& a) {
    if (!a.reached) return Problem(a);
    if (!a.ok()) {
      return fmt::format("{}: verify failed: {}", a.mountpoint, Text(a.answer, "error", "(no message)"));
    }
    return fmt::format("{}: the daemon's answer has no \"match\" verdict", a.mountpoint);
  }

  // kExitOk, kExitFailed (they differ) or kExitUsage (no verdict).
  static int Verdict(const MountAnswer& a) {
    if (!a.ok()) return kExitUsage;
    const json* match = Field(a.answer, "match");
    if (match == nullptr || !match->is_boolean()) return kExitUsage;
    return match->get<bool>() ? kExitOk : kExitFailed;
  }

  static std::string Render(const MountAnswer& m) {
    const json& a = m.answer;
    std::string stats = fmt::format("{} entries compared", Text(a, "entries_compared", "?"));
    if (auto s = Number(a, "elapsed_s")) stats += fmt::format(" in {:.1f} s", *s);
    if (Flag(a, "match")) {
      return fmt::format("{}: master and backup match ({})\n", m.mountpoint, stats);
    }
    const json* list = Field(a, "differences");
    const size_t listed = list && list->is_array() ? list->size() : 0;
    std::string out = fmt::format("{}: master and backup differ: {} {} listed ({})\n",
                                  m.mountpoint, listed, listed == 1 ? "difference" : "differences",
                                  stats);
    for (size_t i = 0; i < listed; ++i) out += "  " + RenderDifference((*list)[i]) + "\n";
    if (Flag(a, "truncated")) {
      const double more = Number(a, "unreported").value_or(0);
      out += more > 0 ? fmt::format("  ... and at least {} more not listed (see --max)\n",
                                    static_cast<long long>(more))
                      : "  ... and more not listed (see --max)\n";
    }
    return out;
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
