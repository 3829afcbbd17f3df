// nasfsctl: the operator's view of the nasfs mounts on this machine.
//
// Each subcommand is a small class that registers itself on the CLI11 app and
// runs when chosen; later subcommands (journal, replay, verify, conflicts) add
// a class and one line in Main(). Exit codes are shared by all of them:
// kExitOk, kExitFailed (a daemon unreachable or answering ok:false),
// kExitUsage (bad command line, or a path that is not a nasfs mount).
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
  if (const json* j = Field(a, "journal")) {
    std::string jl = j->is_object() ? Text(*j, "pending", "?") + " pending" : Text(*j);
    if (j->is_object() && Field(*j, "dir")) jl += "  (" + Text(*j, "dir") + ")";
    if (j->is_object()) {
      for (const auto& [k, v] : j->items()) {
        if (k == "pending" || k == "dir" || v.is_null()) continue;
        jl += fmt::format(", {} {}", Words(k), v.is_structured() ? Dump(v) : Text(v));
      }
    }
    out.Labelled("journal", jl);
  }
  if (const json* c = Field(a, "counters")) out.Labelled("counters", Generic(*c));

  static const std::vector<std::string> kKnown = {
      "ok",       "version",       "mountpoint", "node", "pair_id", "pid",     "uptime_s",
      "read_from", "io_timeout_ms", "backends",   "sync", "journal", "counters"};
  for (const auto& [k, v] : a.items()) {
    if (v.is_null() || std::find(kKnown.begin(), kKnown.end(), k) != kKnown.end()) continue;
    out.Labelled(Words(k), Generic(v));
  }
  return head + "\n" + out.str();
}

// --- subcommands -------------------------------------------------------------

class StatusCommand {
 public:
  explicit StatusCommand(CLI::App& app) {
    cmd_ = app.add_subcommand(
        "status",
        "Show, for one nasfs mount or for every one on this machine, which NAS serves reads, "
        "the state of each NAS, background sync progress and the journal. A mount whose daemon "
        "cannot be reached, or answers with an error, is reported on stderr.");
    cmd_->add_option("MOUNTPOINT", mountpoint_,
                     "A nasfs mount point; without it, every nasfs mount in /proc/self/mounts");
    cmd_->add_flag("--json", json_,
                   "Print the daemon's answer as JSON: one object with MOUNTPOINT, otherwise an "
                   "array with one object per mount (an unreachable mount appears as "
                   "{\"mountpoint\",\"ok\":false,\"error\"})");
    cmd_->add_option("--timeout", timeout_ms_,
                     "Give up on a daemon that has not answered after this many milliseconds")
        ->check(CLI::Range(1, 3600 * 1000))
        ->type_name("MS")
        ->capture_default_str();
    cmd_->footer(kExitCodesHelp);
  }

  bool chosen() const { return cmd_->parsed(); }

  int Run() {
    const std::vector<std::string> mounts = NasfsMounts();
    std::vector<std::string> targets;
    if (!mountpoint_.empty()) {
      auto found = FindMount(mountpoint_, mounts);
      if (!found) throw UsageError{fmt::format("{} is not a nasfs mount", mountpoint_)};
      targets.push_back(*found);
    } else {
      targets = mounts;
    }

    const auto answers = AskAll(targets, {{"cmd", "status"}}, timeout_ms_);
    bool all_ok = true;
    for (const auto& a : answers) all_ok = all_ok && a.ok();

    // Status goes to stdout; why a mount has none goes to stderr as well (in
    // JSON it is also in the mount's object), so scripts see failures either way.
    if (json_) {
      if (!mountpoint_.empty()) {
        std::cout << Dump(answers.front().answer, 2) << "\n";
      } else {
        json list = json::array();
        for (const auto& a : answers) list.push_back(a.answer);
        std::cout << Dump(list, 2) << "\n";
      }
      std::cout.flush();
      for (const auto& a : answers) {
        if (!a.ok()) std::cerr << "nasfsctl: " << Problem(a) << "\n";
      }
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
        std::cout << (first ? "" : "\n") << RenderStatus(a);
        first = false;
      }
    }
    std::cout.flush();
    return all_ok ? kExitOk : kExitFailed;
  }

 private:
  CLI::App* cmd_ = nullptr;
  std::string mountpoint_;
  bool json_ = false;
  int timeout_ms_ = 3000;
};

int Main(int argc, char** argv) {
  CLI::App app{
      "nasfsctl: inspect the nasfs mounts of this machine through each daemon's control "
      "socket (found via /run/nasfs/mounts/, else /run/nasfs/<mount id>.sock). Talking to a "
      "daemon needs root, or membership in the group given by the mount's -o control_group.",
      "nasfsctl"};
  app.require_subcommand(1);
  app.footer(kExitCodesHelp);
  StatusCommand status(app);

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
