#include "fs/nas_files.h"

#include <time.h>

#include <charconv>
#include <limits>

#include <fmt/format.h>

namespace nasfs {
namespace {

using nlohmann::json;

// These files are a few hundred bytes; anything far larger is not ours.
constexpr size_t kMaxText = 64 * 1024;
// None of our formats nests; deeper values are dropped while parsing, so a
// hostile file cannot make the parser build deep trees.
constexpr int kMaxDepth = 4;

tl::unexpected<std::string> Bad(std::string why) { return tl::unexpected(std::move(why)); }

Parsed<json> ParseObject(std::string_view text) {
  if (text.size() > kMaxText) return Bad(fmt::format("larger than {} bytes", kMaxText));
  json j;
  try {
    j = json::parse(
        text.begin(), text.end(),
        [](int depth, json::parse_event_t, json&) { return depth <= kMaxDepth; },
        /*allow_exceptions=*/false);
  } catch (const std::exception& e) {  // allow_exceptions=false leaves only allocation failures
    return Bad(std::string("cannot be parsed: ") + e.what());
  }
  if (j.is_discarded()) return Bad("not JSON");
  if (!j.is_object()) return Bad("not a JSON object");
  return j;
}

// Decimal, no sign, no leading zero (but "0"), fits uint64_t.
std::optional<uint64_t> ParseDecimal(std::string_view s) {
  if (s.empty() || s.size() > 20 || (s.size() > 1 && s[0] == '0')) return std::nullopt;
  uint64_t v = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return v;
}

Parsed<Role> RoleField(const json& j, const char* key) {
  auto r = json_field::String(j, key);
  if (!r) return tl::unexpected(r.error());
  if (*r == "master") return Role::kMaster;
  if (*r == "backup") return Role::kBackup;
  return Bad(fmt::format("\"{}\" is neither \"master\" nor \"backup\"", key));
}

json IsoTime(int64_t ns) {
  if (ns == 0) return nullptr;
  time_t sec = static_cast<time_t>(ns / 1000000000);
  long nsec = static_cast<long>(ns % 1000000000);
  if (nsec < 0) {
    --sec;
    nsec += 1000000000;
  }
  struct tm tm {};
  if (!gmtime_r(&sec, &tm)) return nullptr;  // a year no calendar holds (a damaged record)
  char buf[64];
  if (strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm) == 0) return nullptr;
  return fmt::format("{}.{:09d}Z", buf, nsec);
}

}  // namespace

namespace json_field {

namespace {
template <typename T>
Parsed<T> Missing(const char* key, const std::optional<T>& fallback) {
  if (fallback) return *fallback;
  return Bad(fmt::format("no \"{}\"", key));
}
}  // namespace

Parsed<std::string> String(const json& obj, const char* key, std::optional<std::string> fallback) {
  auto it = obj.find(key);
  if (it == obj.end()) return Missing(key, fallback);
  if (!it->is_string()) return Bad(fmt::format("\"{}\" is not a string", key));
  return it->get_ref<const std::string&>();
}

Parsed<uint64_t> Unsigned(const json& obj, const char* key, std::optional<uint64_t> fallback) {
  auto it = obj.find(key);
  if (it == obj.end()) return Missing(key, fallback);
  if (it->is_number_unsigned()) return it->get<uint64_t>();
  if (it->is_number_integer() && it->get<int64_t>() >= 0) return static_cast<uint64_t>(it->get<int64_t>());
  return Bad(fmt::format("\"{}\" is not an unsigned integer", key));
}

Parsed<int64_t> Signed(const json& obj, const char* key, std::optional<int64_t> fallback) {
  auto it = obj.find(key);
  if (it == obj.end()) return Missing(key, fallback);
  if (it->is_number_unsigned()) {
    uint64_t v = it->get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()))
      return Bad(fmt::format("\"{}\" is out of range", key));
    return static_cast<int64_t>(v);
  }
  if (it->is_number_integer()) return it->get<int64_t>();
  return Bad(fmt::format("\"{}\" is not an integer", key));
}

Parsed<bool> Bool(const json& obj, const char* key, std::optional<bool> fallback) {
  auto it = obj.find(key);
  if (it == obj.end()) return Missing(key, fallback);
  if (!it->is_boolean()) return Bad(fmt::format("\"{}\" is not true or false", key));
  return it->get<bool>();
}

}  // namespace json_field

// ---- identity.json --------------------------------------------------------

Parsed<Marker> ParseMarker(std::string_view text) {
  auto j = ParseObject(text);
  if (!j) return tl::unexpected(j.error());
  Marker m;
  auto id = json_field::String(*j, "pair_id");
  if (!id) return tl::unexpected(id.error());
  if (id->empty()) return Bad("\"pair_id\" is empty");
  m.pair_id = *id;
  auto role = RoleField(*j, "role");
  if (!role) return tl::unexpected(role.error());
  m.role = *role;
  auto created = json_field::String(*j, "created", "");
  if (!created) return tl::unexpected(created.error());
  m.created = *created;
  return m;
}

std::string FormatMarker(const Marker& m) {
  json j = {{"format", 1}, {"pair_id", m.pair_id}, {"role", RoleName(m.role)},
            {"created", m.created.empty() ? NowIso8601() : m.created}};
  return j.dump() + "\n";
}

// ---- sync.json --------------------------------------------------------------

Parsed<SyncPending> ParseSyncPending(std::string_view text) {
  auto j = ParseObject(text);
  if (!j) return tl::unexpected(j.error());
  SyncPending s;
  if (j->contains("source")) {
    auto role = RoleField(*j, "source");
    if (!role) return tl::unexpected(role.error());
    s.source = *role;
  }
  auto verify = json_field::Bool(*j, "verify_content", true);
  if (!verify) return tl::unexpected(verify.error());
  s.verify_content = *verify;
  return s;
}

std::string FormatSyncPending(Role source, bool verify_content) {
  json j = {{"source", RoleName(source)}, {"verify_content", verify_content}, {"started", NowIso8601()}};
  return j.dump() + "\n";
}

// ---- heartbeat ----------------------------------------------------------------

Parsed<Heartbeat> ParseHeartbeat(std::string_view text) {
  auto j = ParseObject(text);
  if (!j) return tl::unexpected(j.error());
  Heartbeat h;
  auto seq = json_field::Unsigned(*j, "seq", 0);
  auto time = json_field::String(*j, "time", "");
  auto node = json_field::String(*j, "node", "");
  auto pid = json_field::Signed(*j, "pid", 0);
  auto mp = json_field::String(*j, "mountpoint", "");
  auto rf = json_field::String(*j, "read_from", "");
  auto pm = json_field::Unsigned(*j, "pending_master", 0);
  auto pb = json_field::Unsigned(*j, "pending_backup", 0);
  for (const std::string* e : {seq ? nullptr : &seq.error(), time ? nullptr : &time.error(),
                               node ? nullptr : &node.error(), pid ? nullptr : &pid.error(),
                               mp ? nullptr : &mp.error(), rf ? nullptr : &rf.error(),
                               pm ? nullptr : &pm.error(), pb ? nullptr : &pb.error()})
    if (e) return Bad(*e);
  h.seq = *seq;
  h.time = *time;
  h.node = *node;
  h.pid = *pid;
  h.mountpoint = *mp;
  h.read_from = *rf;
  h.pending_master = *pm;
  h.pending_backup = *pb;
  return h;
}

std::string FormatHeartbeat(const Heartbeat& h) {
  json j = {{"seq", h.seq},
            {"time", h.time},
            {"node", h.node},
            {"pid", h.pid},
            {"mountpoint", h.mountpoint},
            {"read_from", h.read_from},
            {"pending_master", h.pending_master},
            {"pending_backup", h.pending_backup}};
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

// ---- generation names -----------------------------------------------------------

std::optional<GenerationName> ParseGenerationName(std::string_view name) {
  if (name.size() < 3 || name[1] != '-' || (name[0] != 'g' && name[0] != 's')) return std::nullopt;
  auto n = ParseDecimal(name.substr(2));
  if (!n) return std::nullopt;
  return GenerationName{name[0] == 's', *n};
}

std::string FormatGenerationName(const GenerationName& g) {
  return fmt::format("{}-{}", g.in_step ? 's' : 'g', g.n);
}

// ---- claims -------------------------------------------------------------------

Parsed<ClaimRecord> ParseClaimRecord(std::string_view text) {
  if (text.size() > 1024) return Bad("larger than 1024 bytes");
  if (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  auto sp = text.find(' ');
  if (sp == std::string_view::npos || sp == 0) return Bad("not \"<node> <unix ms>\"");
  std::string_view who = text.substr(0, sp), at = text.substr(sp + 1);
  auto ms = ParseDecimal(at);
  if (!ms || *ms > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return Bad("bad time");
  for (char c : who)
    if (static_cast<unsigned char>(c) <= ' ' || c == 0x7f) return Bad("bad node name");
  ClaimRecord r;
  r.holder = who == "-" ? "" : std::string(who);
  r.unix_ms = static_cast<int64_t>(*ms);
  return r;
}

std::string FormatClaimRecord(const ClaimRecord& c) {
  return fmt::format("{} {}\n", c.holder.empty() ? "-" : c.holder, c.unix_ms);
}

std::optional<uint64_t> ParseClaimStep(std::string_view name) { return ParseDecimal(name); }

// ---- conflicts ------------------------------------------------------------------

namespace {

bool ValidUtf8(std::string_view s) {
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    size_t n = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xe ? 3 : (c >> 3) == 0x1e ? 4 : 0;
    if (n == 0 || i + n > s.size()) return false;
    for (size_t k = 1; k < n; ++k)
      if ((static_cast<unsigned char>(s[i + k]) & 0xc0) != 0x80) return false;
    i += n;
  }
  return true;
}

std::string Hex(std::string_view s) {
  std::string out;
  for (unsigned char c : s) out += fmt::format("{:02x}", c);
  return out;
}

std::optional<std::string> Unhex(std::string_view h) {
  if (h.size() % 2) return std::nullopt;
  std::string out;
  for (size_t i = 0; i < h.size(); i += 2) {
    unsigned v = 0;
    auto [end, ec] = std::from_chars(h.data() + i, h.data() + i + 2, v, 16);
    if (ec != std::errc() || end != h.data() + i + 2) return std::nullopt;
    out.push_back(static_cast<char>(v));
  }
  return out;
}

// Every field as JSON text (a path that is not UTF-8 is then lossy).
json ToJsonText(const ConflictRecord& r) {
  return {{"id", r.id},
          {"path", r.path},
          {"kept_from", r.kept_from},
          {"winner", r.winner},
          {"kind", r.kind},
          {"reason", r.reason},
          {"kept_mtime_ns", r.kept_mtime_ns},
          {"winner_mtime_ns", r.winner_mtime_ns},
          {"kept_mtime", IsoTime(r.kept_mtime_ns)},
          {"winner_mtime", IsoTime(r.winner_mtime_ns)},
          {"size", r.size},
          {"detected", r.detected},
          {"node", r.node}};
}

}  // namespace

json ToJson(const ConflictRecord& r) {
  // JSON strings hold UTF-8 only; a NAS name may be any bytes. Such a path
  // is shown with its bad bytes replaced and kept exactly in path_hex.
  json j = ToJsonText(r);
  if (!ValidUtf8(r.path)) j["path_hex"] = Hex(r.path);
  return j;
}

std::string ToMetaText(const ConflictRecord& r) {
  return ToJson(r).dump(2, ' ', false, json::error_handler_t::replace) + "\n";
}


Parsed<ConflictRecord> ParseConflictMeta(std::string_view text, const std::string& id) {
  auto j = ParseObject(text);
  if (!j) return tl::unexpected(j.error());
  ConflictRecord r;
  r.id = id;  // the directory's name is the id, whatever the file says
  struct Text {
    const char* key;
    std::string* field;
    const char* fallback;
  };
  for (const Text& t : {Text{"path", &r.path, ""}, Text{"kept_from", &r.kept_from, ""},
                        Text{"winner", &r.winner, ""}, Text{"kind", &r.kind, "unknown"},
                        Text{"reason", &r.reason, ""}, Text{"detected", &r.detected, ""},
                        Text{"node", &r.node, ""}}) {
    auto v = json_field::String(*j, t.key, t.fallback);
    if (!v) return tl::unexpected(v.error());
    *t.field = *v;
  }
  if (auto hex = json_field::String(*j, "path_hex", ""); hex && !hex->empty()) {
    auto raw = Unhex(*hex);
    if (!raw) return Bad("\"path_hex\" is not hexadecimal");
    r.path = *raw;
  }
  auto kept = json_field::Signed(*j, "kept_mtime_ns", 0);
  if (!kept) return tl::unexpected(kept.error());
  auto winner = json_field::Signed(*j, "winner_mtime_ns", 0);
  if (!winner) return tl::unexpected(winner.error());
  auto size = json_field::Unsigned(*j, "size", 0);
  if (!size) return tl::unexpected(size.error());
  r.kept_mtime_ns = *kept;
  r.winner_mtime_ns = *winner;
  r.size = *size;
  return r;
}

}  // namespace nasfs
