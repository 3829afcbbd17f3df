// libFuzzer target: the pending logs web servers leave on the shared NAS
// (.nasfs/peers/<node>/lacks-<target>.log, journal/peer_log.h). Any machine
// can write there, so DecodePeerLog sees arbitrary bytes.
//
// Invariants checked (journal/FORMAT.md, "Pending logs on the shared NAS"):
//  - what a log lists survives being written again: encoding the decoded
//    entries (EncodePeerRecords) and decoding that gives the same paths, in
//    the same order, with the same scope and ops;
//  - appending records to a log (what a server restarted after a torn
//    append does) loses nothing the log listed before, and adds the new
//    paths after it;
//  - one entry per path, sane scopes and op bits.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>
#include <vector>

#include "journal/peer_log.h"
#include "tests/fuzz/fuzz_check.h"

namespace nasfs::journal {
namespace {


// The changes that make `entries` again: one per op (per inode for a
// linked one), at the entry's scope.
std::vector<Change> ChangesOf(const std::vector<PeerEntry>& entries) {
  std::vector<Change> out;
  for (const auto& e : entries) AppendChanges(e.path, e.scope, e.ops, e.inodes, &out);
  return out;
}

void CheckEntries(const PeerLogContents& log) {
  std::unordered_set<std::string> paths;
  for (const auto& e : log.entries) {
    FUZZ_CHECK(paths.insert(e.path).second, "path listed twice");
    FUZZ_CHECK(static_cast<uint8_t>(e.scope) <= 2, "scope %d", static_cast<int>(e.scope));
    FUZZ_CHECK(e.ops != 0 && (e.ops & ~kAllOps) == 0, "ops 0x%x", e.ops);
  }
  FUZZ_CHECK(log.entries.size() <= log.records, "%zu entries from %llu records", log.entries.size(),
             static_cast<unsigned long long>(log.records));
}

bool SameEntry(const PeerEntry& a, const PeerEntry& b) {
  return a.path == b.path && a.scope == b.scope && a.ops == b.ops && a.inodes == b.inodes;
}

void CheckTarget(std::string_view data, Target target) {
  PeerLogContents log = DecodePeerLog(data, target);
  CheckEntries(log);

  // Written again, the list reads back the same.
  uint64_t seq = 1;
  std::string again = EncodePeerRecords(target, ChangesOf(log.entries), &seq);
  PeerLogContents back = DecodePeerLog(again, target);
  FUZZ_CHECK(back.damaged == 0 && back.torn_bytes == 0, "a freshly encoded log has damage");
  FUZZ_CHECK(back.entries.size() == log.entries.size(), "%zu entries re-read as %zu", log.entries.size(),
             back.entries.size());
  for (size_t i = 0; i < log.entries.size(); ++i)
    FUZZ_CHECK(SameEntry(back.entries[i], log.entries[i]), "entry %zu changes when written again", i);

  // An append after whatever the file holds (a torn tail included) keeps
  // every entry already listed and adds the new path last.
  const std::string fresh_path = "fuzz/appended/path";
  bool listed = false;
  for (const auto& e : log.entries) listed = listed || e.path == fresh_path;
  std::string appended(data);
  uint64_t next = log.last_seq + 1;
  appended += EncodePeerRecords(target, {Change{fresh_path, Scope::kTree, Op::kCreate, 0, 0, {}}}, &next);
  PeerLogContents more = DecodePeerLog(appended, target);
  CheckEntries(more);
  FUZZ_CHECK(more.torn_bytes == 0, "a whole record appended still leaves a torn tail");
  FUZZ_CHECK(more.entries.size() == log.entries.size() + (listed ? 0 : 1), "%zu entries, then %zu after an append",
             log.entries.size(), more.entries.size());
  for (size_t i = 0; i < log.entries.size(); ++i) {
    FUZZ_CHECK(more.entries[i].path == log.entries[i].path, "entry %zu lost or moved by an append", i);
    FUZZ_CHECK((more.entries[i].ops & log.entries[i].ops) == log.entries[i].ops &&
                   more.entries[i].scope >= log.entries[i].scope,
               "entry %zu lost ops or scope by an append", i);
  }
  if (!listed) FUZZ_CHECK(more.entries.back().path == fresh_path, "the appended path is not last");
}

}  // namespace
}  // namespace nasfs::journal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  std::string_view data(reinterpret_cast<const char*>(bytes), size);
  nasfs::journal::CheckTarget(data, nasfs::journal::kMaster);
  nasfs::journal::CheckTarget(data, nasfs::journal::kBackup);
  return 0;
}
