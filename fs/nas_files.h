// The small files nasfs keeps under .nasfs/ on each NAS, and the parsers
// that read them back.
//
// Everything read from a NAS is untrusted: other machines and users write
// there, and a file may be damaged, truncated, of the wrong type in every
// field, or planted. Each parser here takes any bytes and returns a value or
// a one-line description of what is wrong; none throws, none reads past its
// input, and numbers out of range are refused rather than converted. The
// caller then applies the safe rule written beside each format (and reports
// the damage in status and the log). tests/fuzz/nas_files_fuzz.cc runs them
// on arbitrary input.
//
//   .nasfs/identity.json          Marker: which pair and role this NAS is
//   .nasfs/sync.json              SyncPending: a copy onto this NAS is unfinished
//   .nasfs/heartbeat.<node>       Heartbeat: one web server's last probe
//   .nasfs/generation/g-<n>, s-<n> generation names (see ParseGenerationName)
//   <claim>.d/<n>                 ClaimRecord: one step of a lease (fs/peers.h)
//   .nasfs/conflicts/<id>/meta.json ConflictRecord: a version a split brain kept
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>
#include <tl/expected.hpp>

#include "fs/backend.h"

namespace nasfs {

template <typename T>
using Parsed = tl::expected<T, std::string>;

// ---- identity.json --------------------------------------------------------
// {"format":1,"pair_id":"<hex>","role":"master"|"backup","created":"<UTC>"}
// Safe rule: a damaged marker is no marker of ours: the NAS is not written
// (refused at mount, down when a probe finds it).
struct Marker {
  std::string pair_id;
  Role role = Role::kMaster;
  std::string created;
};
Parsed<Marker> ParseMarker(std::string_view text);
std::string FormatMarker(const Marker& m);

// ---- sync.json --------------------------------------------------------------
// {"source":"master"|"backup","verify_content":bool,"started":"<UTC>"}
// Safe rule: its presence is what matters (the NAS is an unfinished copy and
// serves no reads); when damaged, the resumed copy compares content
// (verify_content true) and the source is left to the markers.
struct SyncPending {
  std::optional<Role> source;
  bool verify_content = true;
};
Parsed<SyncPending> ParseSyncPending(std::string_view text);
std::string FormatSyncPending(Role source, bool verify_content);

// ---- heartbeat.<node> -------------------------------------------------------
// One line of JSON. Liveness is judged by the bytes changing (fs/peers.h),
// never by these fields, so a damaged heartbeat of a live server still counts
// as alive; the fields only feed status.
struct Heartbeat {
  uint64_t seq = 0;
  std::string time;
  std::string node;
  int64_t pid = 0;
  std::string mountpoint;
  std::string read_from;
  uint64_t pending_master = 0, pending_backup = 0;
};
Parsed<Heartbeat> ParseHeartbeat(std::string_view text);
std::string FormatHeartbeat(const Heartbeat& h);

// ---- generation names ---------------------------------------------------------
// .nasfs/generation/ holds empty files: "g-<n>" (the NAS's generation is the
// highest n) and "s-<n>" (the generation it was last in step with the other
// NAS: the highest n). Each change creates a new name with O_EXCL, so two
// servers never overwrite each other's change (fs/peers.h). n is decimal,
// no leading zeros, at most UINT64_MAX. Safe rule: any other name is junk:
// ignored and reported.
struct GenerationName {
  bool in_step = false;  // "s-" rather than "g-"
  uint64_t n = 0;
};
std::optional<GenerationName> ParseGenerationName(std::string_view name);
std::string FormatGenerationName(const GenerationName& g);

// ---- claims -------------------------------------------------------------------
// A claim is a directory <rel>.d/ of files named by a decimal step number,
// each holding "<node> <unix ms>\n" ("- <unix ms>\n" for a release); the
// highest step is the claim's state (fs/peers.h). Safe rule: a step whose
// content does not parse is held by nobody known: it is taken over like a
// stale one once its step number has not changed for the lease's time.
struct ClaimRecord {
  std::string holder;  // "" for a release
  int64_t unix_ms = 0;
};
Parsed<ClaimRecord> ParseClaimRecord(std::string_view text);
std::string FormatClaimRecord(const ClaimRecord& c);
std::optional<uint64_t> ParseClaimStep(std::string_view name);

// ---- conflicts/<id>/meta.json -------------------------------------------------
// One version a split-brain merge (or a restore) kept aside.
struct ConflictRecord {
  std::string id;         // directory name under .nasfs/conflicts/: "<UTC time>-<node>-<counter>", unique
  std::string path;       // the website path it was at (never "": the root is never kept)
  std::string kept_from;  // the NAS whose version lost: "master", "backup"; "both" for a restore
  std::string winner;     // "master", "backup"; "both" for a restore (the restored version)
  std::string kind;       // what was kept: "file", "dir", "symlink", "other"; "unknown" without meta.json
  std::string reason;     // "split brain" or "restore"
  int64_t kept_mtime_ns = 0, winner_mtime_ns = 0;  // winner 0 when the winner is a deletion
  uint64_t size = 0;      // of the kept entry (regular files; 0 otherwise)
  std::string detected;   // ISO 8601 UTC when kept
  std::string node;       // the server that kept it
};
// Every field; the mtimes also as ISO 8601 UTC "kept_mtime" / "winner_mtime"
// (null for a 0 mtime); a path that is not UTF-8 also as "path_hex" (its
// exact bytes). Dump it with error_handler_t::replace (ToMetaText does).
nlohmann::json ToJson(const ConflictRecord& r);
// meta.json's content.
std::string ToMetaText(const ConflictRecord& r);
// `id` is the directory's name: it wins over whatever the file says. Safe
// rule: a record that does not parse is listed with kind "unknown" and is
// never restored (its path is not trusted).
Parsed<ConflictRecord> ParseConflictMeta(std::string_view text, const std::string& id);

// ---- JSON fields, for other readers of untrusted JSON -------------------------
// The value at `key` when it has exactly the expected type and range; an
// error naming the key otherwise. Absent keys take `fallback` when one is
// given.
namespace json_field {
Parsed<std::string> String(const nlohmann::json& obj, const char* key,
                           std::optional<std::string> fallback = std::nullopt);
Parsed<uint64_t> Unsigned(const nlohmann::json& obj, const char* key, std::optional<uint64_t> fallback = std::nullopt);
Parsed<int64_t> Signed(const nlohmann::json& obj, const char* key, std::optional<int64_t> fallback = std::nullopt);
Parsed<bool> Bool(const nlohmann::json& obj, const char* key, std::optional<bool> fallback = std::nullopt);
}  // namespace json_field

}  // namespace nasfs
