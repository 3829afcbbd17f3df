// libFuzzer target: the parsers of the files nasfs keeps under .nasfs/ on
// each NAS (fs/nas_files.h), which any machine or user can write. Every
// parser gets the whole input (and the names parsers the input as a name).
//
// Invariants checked: a value or a non-empty one-line error, never a crash
// or an exception; and what parses survives being written back: Format*
// (ToJson for a conflict record) of the parsed value parses again to the
// same value, and a generation or claim step name is written back to the
// very same bytes (one spelling per number).
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include <fmt/format.h>

#include "fs/nas_files.h"
#include "tests/fuzz/fuzz_check.h"

namespace nasfs {
namespace {

const std::string kConflictId = "2024-12-06T00:00:00Z-web1-1";

template <typename T>
void CheckError(const Parsed<T>& p, const char* what) {
  if (p) return;
  FUZZ_CHECK(!p.error().empty(), "%s: an error with no message", what);
  FUZZ_CHECK(p.error().find('\n') == std::string::npos, "%s: an error of more than one line", what);
}

void CheckMarker(std::string_view text) {
  auto m = ParseMarker(text);
  CheckError(m, "ParseMarker");
  if (!m) return;
  FUZZ_CHECK(!m->pair_id.empty(), "a marker with no pair id");
  auto again = ParseMarker(FormatMarker(*m));
  FUZZ_CHECK(again.has_value(), "a formatted marker does not parse: %s", again ? "" : again.error().c_str());
  FUZZ_CHECK(again->pair_id == m->pair_id && again->role == m->role, "a marker changes when written back");
  if (!m->created.empty()) FUZZ_CHECK(again->created == m->created, "a marker's creation time changes");
}

void CheckSyncPending(std::string_view text) {
  auto s = ParseSyncPending(text);
  CheckError(s, "ParseSyncPending");
  if (!s || !s->source) return;
  auto again = ParseSyncPending(FormatSyncPending(*s->source, s->verify_content));
  FUZZ_CHECK(again.has_value(), "a formatted sync.json does not parse: %s", again ? "" : again.error().c_str());
  FUZZ_CHECK(again->source == s->source && again->verify_content == s->verify_content,
             "sync.json changes when written back");
}

void CheckHeartbeat(std::string_view text) {
  auto h = ParseHeartbeat(text);
  CheckError(h, "ParseHeartbeat");
  if (!h) return;
  auto again = ParseHeartbeat(FormatHeartbeat(*h));
  FUZZ_CHECK(again.has_value(), "a formatted heartbeat does not parse: %s", again ? "" : again.error().c_str());
  FUZZ_CHECK(again->seq == h->seq && again->time == h->time && again->node == h->node && again->pid == h->pid &&
                 again->mountpoint == h->mountpoint && again->read_from == h->read_from &&
                 again->pending_master == h->pending_master && again->pending_backup == h->pending_backup,
             "a heartbeat changes when written back");
}

void CheckNames(std::string_view name) {
  if (auto g = ParseGenerationName(name))
    FUZZ_CHECK(FormatGenerationName(*g) == name, "generation name '%.*s' is not written back the same",
               static_cast<int>(name.size()), name.data());
  if (auto step = ParseClaimStep(name))
    FUZZ_CHECK(fmt::format("{}", *step) == name, "claim step '%.*s' is not its number's spelling",
               static_cast<int>(name.size()), name.data());
}

void CheckClaim(std::string_view text) {
  auto c = ParseClaimRecord(text);
  CheckError(c, "ParseClaimRecord");
  if (!c) return;
  FUZZ_CHECK(c->unix_ms >= 0, "a negative claim time");
  for (char ch : c->holder)
    FUZZ_CHECK(static_cast<unsigned char>(ch) > ' ' && ch != 0x7f, "a claim holder with byte 0x%02x",
               static_cast<unsigned char>(ch));
  auto again = ParseClaimRecord(FormatClaimRecord(*c));
  FUZZ_CHECK(again.has_value(), "a formatted claim does not parse: %s", again ? "" : again.error().c_str());
  FUZZ_CHECK(again->holder == c->holder && again->unix_ms == c->unix_ms, "a claim changes when written back");
}

void CheckConflict(std::string_view text) {
  auto r = ParseConflictMeta(text, kConflictId);
  CheckError(r, "ParseConflictMeta");
  if (!r) return;
  FUZZ_CHECK(r->id == kConflictId, "the record's id is not its directory's name");
  // What split_brain.cc writes as meta.json.
  std::string written = ToJson(*r).dump(2) + "\n";
  auto again = ParseConflictMeta(written, kConflictId);
  FUZZ_CHECK(again.has_value(), "a written meta.json does not parse: %s", again ? "" : again.error().c_str());
  FUZZ_CHECK(again->path == r->path && again->kept_from == r->kept_from && again->winner == r->winner &&
                 again->kind == r->kind && again->reason == r->reason && again->kept_mtime_ns == r->kept_mtime_ns &&
                 again->winner_mtime_ns == r->winner_mtime_ns && again->size == r->size &&
                 again->detected == r->detected && again->node == r->node,
             "a conflict record changes when written back");
}

}  // namespace
}  // namespace nasfs

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  std::string_view data(reinterpret_cast<const char*>(bytes), size);
  nasfs::CheckMarker(data);
  nasfs::CheckSyncPending(data);
  nasfs::CheckHeartbeat(data);
  nasfs::CheckNames(data);
  nasfs::CheckClaim(data);
  nasfs::CheckConflict(data);
  return 0;
}
