#include "tools/nasfsctl_render.h"

#include <algorithm>
#include <cmath>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "fs/control_protocol.h"
#include "tools/quote.h"

namespace nasfs::ctl {
namespace {

using nlohmann::json;

const json* Field(const json& obj, const char* key) {
  if (!obj.is_object()) return nullptr;
  auto it = obj.find(key);
  if (it == obj.end() || it->is_null()) return nullptr;
  return &*it;
}

// Structured values for people: JSON, ASCII only (\uXXXX for the rest), so
// no byte of it can reach the terminal raw.
std::string DumpText(const json& j) {
  return j.dump(-1, ' ', /*ensure_ascii=*/true, json::error_handler_t::replace);
}

// A value as it is, unquoted: only for comparing and cutting, never printed.
std::string Raw(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "-";
  return DumpText(v);
}

// A value for printing: strings quoted, other scalars as JSON, null as "-".
std::string Text(const json& v, Bare bare = Bare::kWord) {
  if (v.is_string()) return Quote(v.get_ref<const std::string&>(), bare);
  if (v.is_null()) return "-";
  return DumpText(v);
}

// obj[key] for printing, or `fallback` (nasfsctl's own words) without it.
std::string Text(const json& obj, const char* key, const char* fallback = "-",
                 Bare bare = Bare::kWord) {
  const json* v = Field(obj, key);
  return v ? Text(*v, bare) : fallback;
}

// A message or the daemon's words: spaces stay bare.
std::string Prose(const json& obj, const char* key, const char* fallback = "-") {
  return Text(obj, key, fallback, Bare::kText);
}

// A path the daemon gives relative to the NAS root, shown absolute.
std::string RootedPath(const json& obj, const char* key) {
  const json* v = Field(obj, key);
  if (v == nullptr) return "?";
  if (!v->is_string()) return Text(*v);
  return Quote("/" + v->get<std::string>());
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

// A key of the answer as a label: "mirrored_ops" -> "mirrored ops". Keys are
// the daemon's, but a newer daemon's unknown ones are printed too, so they
// are quoted like any other string first.
std::string Words(const std::string& key) {
  std::string out = Quote(key);
  std::replace(out.begin(), out.end(), '_', ' ');
  return out;
}

// A field nasfsctl has no layout for, compactly: scalars as they are, an
// object as "key value, ...", anything else as JSON.
std::string Generic(const json& v) {
  if (v.is_object()) {
    std::string out;
    for (const auto& [k, item] : v.items()) {
      if (!out.empty()) out += ", ";
      out += Words(k) + " " + (item.is_structured() ? DumpText(item) : Text(item, Bare::kText));
    }
    return out.empty() ? "-" : out;
  }
  return v.is_structured() ? DumpText(v) : Text(v, Bare::kText);
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
                                                  "missed",  "probe_latency_ms", "read_p99_ms", "hedge_delay_ms"};
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
    if (auto ms = Number(b, "read_p99_ms")) row += fmt::format("  reads p99 {:.1f} ms", *ms);
    if (auto ms = Number(b, "hedge_delay_ms")) row += fmt::format("  hedged after {:.0f} ms", *ms);
    if (const json* m = Field(b, "missed"); m && m->is_object()) {
      if (Flag(*m, "full_copy_needed"))
        row += "  missed: unknown (full copy on return)";
      else if (Number(*m, "count").value_or(0) > 0)
        row += fmt::format("  missed {} paths", Text(*m, "count"));
    }
    if (b.is_object()) {
      for (const auto& [k, v] : b.items()) {
        if (v.is_null() || std::find(kKnown.begin(), kKnown.end(), k) != kKnown.end()) continue;
        row += fmt::format("  {} {}", Words(k), v.is_structured() ? DumpText(v) : Text(v, Bare::kText));
      }
    }
    if (Field(b, "last_error")) row += "  last error: " + Prose(b, "last_error");
    out.Raw(row);
  }
}

std::string RenderSync(const json& sync) {
  if (!sync.is_object()) return Generic(sync);
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
  if (Field(sync, "error")) s += "  error: " + Prose(sync, "error");
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
    out += fmt::format(", {} {}", Words(k), Text(v, Bare::kText));
  }
  return out;
}

// The journal block of a status: a "journal" line (state, what is pending
// for which NAS, its size and age), its error, and a "replay" line.
void RenderJournalBlock(Block& out, const json& j) {
  if (!j.is_object()) {
    out.Labelled("journal", Generic(j));
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
  if (Shown(j, "error")) out.Labelled("journal error", Prose(j, "error"));

  const json* r = Field(j, "replay");
  if (r == nullptr) return;
  if (!r->is_object()) {
    out.Labelled("replay", Generic(*r));
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

// What differs, for a difference line: the daemon's words ("mode", "only on
// master"), except an xattr's name, which comes from the NAS.
std::string WhatText(const std::string& what) {
  static constexpr std::string_view kXattr = "xattr ";
  if (what.rfind(kXattr, 0) == 0) return std::string(kXattr) + Quote(what.substr(kXattr.size()));
  return Quote(what, Bare::kText);
}

}  // namespace

bool MountAnswer::ok() const {
  auto it = answer.find("ok");
  return it != answer.end() && it->is_boolean() && it->get<bool>();
}

MountAnswer AskSocket(const std::string& mountpoint, const std::string& socket,
                      const nlohmann::json& request, int timeout_ms) {
  MountAnswer out{mountpoint, json::object(), false};
  auto answer = control::Call(socket, request, timeout_ms);
  if (!answer) {
    out.answer = {{"mountpoint", mountpoint}, {"ok", false}, {"error", answer.error()}};
    return out;
  }
  out.reached = true;
  out.answer = std::move(*answer);
  if (!out.answer.contains("mountpoint")) out.answer["mountpoint"] = mountpoint;
  return out;
}

std::string Dump(const json& j, int indent) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

std::string Problem(const MountAnswer& m) {
  // Even nasfsctl's own messages quote what they carry from elsewhere (a
  // socket path, bytes of a malformed answer): kText leaves them as they are
  // unless something in them needs it.
  if (!m.reached) return fmt::format("{}: {}", Quote(m.mountpoint), Prose(m.answer, "error", "?"));
  return fmt::format("{}: the daemon answered with an error: {}", Quote(m.mountpoint),
                     Prose(m.answer, "error", "(no message)"));
}

std::string RenderStatus(const MountAnswer& m) {
  const json& a = m.answer;

  std::string head = Field(a, "mountpoint") ? Text(a, "mountpoint") : Quote(m.mountpoint);
  if (Field(a, "node")) head += "  node " + Text(a, "node");
  // Cut before quoting: a cut quoted string could lose its closing quote.
  if (const json* p = Field(a, "pair_id")) head += "  pair " + Quote(Raw(*p).substr(0, 8));
  if (Field(a, "pid")) head += "  pid " + Text(a, "pid");
  if (auto up = Number(a, "uptime_s")) head += "  up " + Duration(*up);
  if (Field(a, "version")) head += "  nasfs " + Text(a, "version");

  Block out;
  std::string reads = a.contains("read_from") ? Text(a, "read_from", "none (no NAS usable)") : "?";
  if (Field(a, "io_timeout_ms")) reads += fmt::format("   (io timeout {} ms)", Text(a, "io_timeout_ms"));
  out.Labelled("reads from", reads);
  if (const json* b = Field(a, "backends"); b && b->is_array()) RenderBackends(out, *b);
  if (a.contains("sync")) out.Labelled("sync", Field(a, "sync") ? RenderSync(a["sync"]) : "none");
  if (const json* j = Field(a, "journal")) RenderJournalBlock(out, *j);
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
      for (const auto& n : *w) names.push_back(Text(n));
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
        if (Field(*last, "error")) line += ", error: " + Prose(*last, "error");
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

std::string RenderJournal(const MountAnswer& m) {
  const json& a = m.answer;
  const json* entries = Field(a, "entries");
  const size_t shown = entries && entries->is_array() ? entries->size() : 0;
  const std::string total = Text(a, "total", "?");
  std::string out = fmt::format("{}: {} {} pending in the journal", Quote(m.mountpoint), total,
                                total == "1" ? "entry" : "entries");
  if (Number(a, "total").value_or(0) > static_cast<double>(shown) || Flag(a, "truncated")) {
    out += fmt::format(" (the oldest {} listed; see --limit)", shown);
  }
  out += "\n";
  if (shown > 0) {
    for (const auto& e : *entries) out += RenderJournalEntry(e) + "\n";
  }
  return out;
}

std::string RenderReplayStarted(const MountAnswer& m) {
  json rest = m.answer;
  if (rest.is_object()) {
    rest.erase("ok");
    rest.erase("mountpoint");
  }
  return fmt::format("{}: replay started{}\n", Quote(m.mountpoint),
                     rest.empty() ? "" : ": " + Generic(rest));
}

std::string RenderNoReplay(const MountAnswer& m) {
  if (!m.reached) return Problem(m);
  return fmt::format("{}: no replay: {}", Quote(m.mountpoint), Prose(m.answer, "error", "?"));
}

std::string RenderConflicts(const MountAnswer& m) {
  const json* list = Field(m.answer, "conflicts");
  const size_t n = list && list->is_array() ? list->size() : 0;
  std::string out =
      fmt::format("{}: {} kept {}\n", Quote(m.mountpoint), n, n == 1 ? "version" : "versions");
  for (size_t i = 0; i < n; ++i) {
    const json& c = (*list)[i];
    out += fmt::format("  {}  {}  {} from the {} (mtime {}), {} won (mtime {}), {} by {}\n",
                       Text(c, "id", "?"), RootedPath(c, "path"), Text(c, "kind", "?"),
                       Text(c, "kept_from", "?"), Text(c, "kept_mtime", "?"), Text(c, "winner", "?"),
                       Text(c, "winner_mtime", "?"), Prose(c, "reason", "?"), Text(c, "node", "?"));
  }
  return out;
}

std::string RenderRestored(const MountAnswer& m, const std::string& restored_id) {
  const json* r = Field(m.answer, "restored");
  const json* k = Field(m.answer, "kept");
  std::string out = fmt::format("{}: restored {} from {}", Quote(m.mountpoint),
                                r ? RootedPath(*r, "path") : "?", Quote(restored_id));
  if (k) out += fmt::format("; the version it replaced is kept as {}", Text(*k, "id", "?"));
  return out + "\n";
}

std::string RenderDifference(const json& d) {
  const std::string path = Text(d, "path", "?");
  const json* what_field = Field(d, "what");
  const std::string what = what_field ? Raw(*what_field) : "?";
  const json* side[2] = {Field(d, "master"), Field(d, "backup")};
  if (what.rfind("only on ", 0) == 0) {
    const json* present = side[0] ? side[0] : side[1];
    return fmt::format("{}: {}{}", path, WhatText(what), present ? " (" + Text(*present) + ")" : "");
  }
  if (what == "unreadable") {
    // Each side's value is a message ("readdir: Permission denied").
    return fmt::format("{}: unreadable (master: {}; backup: {})", path,
                       side[0] ? Text(*side[0], Bare::kText) : "ok",
                       side[1] ? Text(*side[1], Bare::kText) : "ok");
  }
  return fmt::format("{}: {} differs (master {}, backup {})", path, WhatText(what),
                     side[0] ? Text(*side[0]) : "absent", side[1] ? Text(*side[1]) : "absent");
}

std::string RenderVerify(const MountAnswer& m) {
  const json& a = m.answer;
  std::string stats = fmt::format("{} entries compared", Text(a, "entries_compared", "?"));
  if (auto s = Number(a, "elapsed_s")) stats += fmt::format(" in {:.1f} s", *s);
  if (Flag(a, "match")) {
    return fmt::format("{}: master and backup match ({})\n", Quote(m.mountpoint), stats);
  }
  const json* list = Field(a, "differences");
  const size_t listed = list && list->is_array() ? list->size() : 0;
  std::string out = fmt::format("{}: master and backup differ: {} {} listed ({})\n",
                                Quote(m.mountpoint), listed,
                                listed == 1 ? "difference" : "differences", stats);
  for (size_t i = 0; i < listed; ++i) out += "  " + RenderDifference((*list)[i]) + "\n";
  if (Flag(a, "truncated")) {
    const double more = Number(a, "unreported").value_or(0);
    out += more > 0 ? fmt::format("  ... and at least {} more not listed (see --max)\n",
                                  static_cast<long long>(more))
                    : "  ... and more not listed (see --max)\n";
  }
  return out;
}

std::string NoVerdict(const MountAnswer& m) {
  if (!m.reached) return Problem(m);
  if (!m.ok()) {
    return fmt::format("{}: verify failed: {}", Quote(m.mountpoint),
                       Prose(m.answer, "error", "(no message)"));
  }
  return fmt::format("{}: the daemon's answer has no \"match\" verdict", Quote(m.mountpoint));
}

}  // namespace nasfs::ctl
