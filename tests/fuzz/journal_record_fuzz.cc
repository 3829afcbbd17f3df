// libFuzzer target: the journal's record layer (journal/record.h) and the
// peer log decoder (journal/peer_log.h) over arbitrary bytes, as a segment
// read back from disk or a lacks-*.log planted on a NAS would be.
//
// Invariants checked (journal/FORMAT.md):
//  - Scan: every record lies within the input, at increasing offsets, never
//    overlapping the one before; each re-parses (ParseAt) to the same seq
//    and payload; a torn tail only in the last segment, and it is the end of
//    the input; the same records whether the segment is the last or not.
//  - DecodeMissed: what decodes re-encodes to something that decodes the
//    same, and to the very same bytes when the record has a link name.
//  - Frame: any payload up to kMaxPayload framed alone scans back whole.
//  - DecodePeerLog: one entry per path, only the asked target's records,
//    sane scopes and op bits, counts within what Scan found.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_set>

#include "journal/peer_log.h"
#include "journal/record.h"
#include "tests/fuzz/fuzz_check.h"

namespace nasfs::journal {
namespace {


bool SameMissed(const MissedRecord& a, const MissedRecord& b) {
  return a.target == b.target && a.flags == b.flags && a.ns == b.ns && a.entry_seq == b.entry_seq &&
         a.change.path == b.change.path && a.change.scope == b.change.scope && a.change.op == b.change.op &&
         a.change.offset == b.change.offset && a.change.length == b.change.length &&
         a.change.link_from == b.change.link_from;
}

void CheckMissed(std::string_view payload) {
  MissedRecord m;
  if (!DecodeMissed(payload, &m)) return;
  FUZZ_CHECK(m.target == kMaster || m.target == kBackup, "target %d", m.target);
  FUZZ_CHECK(static_cast<uint8_t>(m.change.scope) <= 2, "scope %d", static_cast<int>(m.change.scope));
  FUZZ_CHECK(static_cast<uint8_t>(m.change.op) >= 1 && static_cast<uint8_t>(m.change.op) <= kLastOp, "op %d",
             static_cast<int>(m.change.op));
  std::string again = EncodeMissed(m);
  MissedRecord m2;
  FUZZ_CHECK(DecodeMissed(again, &m2), "a decoded Missed record does not decode once re-encoded");
  FUZZ_CHECK(SameMissed(m, m2), "a Missed record changes when re-encoded");
  // An empty link name is written as no link name at all: only then may the
  // bytes differ (by that empty trailing string).
  if (!m.change.link_from.empty())
    FUZZ_CHECK(again == payload, "re-encoding a Missed record with a link name changes its bytes");
  else
    FUZZ_CHECK(again == payload || again.size() + 4 == payload.size(), "re-encoded size %zu vs %zu",
               again.size(), payload.size());
}

void CheckScan(std::string_view data, const ScanResult& scan, bool last) {
  size_t end_of_previous = 0;
  for (const auto& r : scan.records) {
    FUZZ_CHECK(r.offset >= end_of_previous, "record at %zu overlaps the one ending at %zu", r.offset,
               end_of_previous);
    FUZZ_CHECK(r.payload.size() <= kMaxPayload, "payload of %zu bytes", r.payload.size());
    size_t size = kHeader + r.payload.size() + kTrailer;
    FUZZ_CHECK(r.offset <= data.size() && size <= data.size() - r.offset,
               "record at %zu of %zu bytes runs past the input (%zu bytes)", r.offset, size, data.size());
    uint64_t seq = 0;
    std::string_view payload;
    size_t parsed = 0;
    FUZZ_CHECK(ParseAt(data, r.offset, &seq, &payload, &parsed), "record at %zu does not re-parse", r.offset);
    FUZZ_CHECK(seq == r.seq && payload == r.payload && parsed == size, "record at %zu re-parses differently",
               r.offset);
    end_of_previous = r.offset + size;
  }
  FUZZ_CHECK(scan.torn_bytes <= data.size() - std::min(data.size(), end_of_previous),
             "torn tail of %llu bytes after the last record ending at %zu of %zu",
             static_cast<unsigned long long>(scan.torn_bytes), end_of_previous, data.size());
  if (!last) FUZZ_CHECK(scan.torn_bytes == 0, "a torn tail in a sealed segment");
  if (scan.records.empty() && scan.damaged == 0 && !data.empty() && last)
    FUZZ_CHECK(scan.torn_bytes == data.size(), "unreadable bytes neither torn nor damaged");
}

void CheckPeerLog(std::string_view data, const ScanResult& scan, Target target) {
  PeerLogContents log = DecodePeerLog(data, target);
  FUZZ_CHECK(log.records <= scan.records.size(), "%llu records decoded of %zu scanned",
             static_cast<unsigned long long>(log.records), scan.records.size());
  FUZZ_CHECK(log.entries.size() <= log.records, "more entries than records");
  FUZZ_CHECK(log.torn_bytes == scan.torn_bytes, "torn bytes differ from Scan's");
  FUZZ_CHECK(log.damaged == scan.damaged + (scan.records.size() - log.records),
             "damage count: every scanned record that is not a Missed one is damage");
  uint64_t max_seq = 0;
  for (const auto& r : scan.records) max_seq = std::max(max_seq, r.seq);
  FUZZ_CHECK(log.last_seq <= max_seq, "last_seq past every record's");
  std::unordered_set<std::string> paths;
  for (const auto& e : log.entries) {
    FUZZ_CHECK(paths.insert(e.path).second, "path listed twice");
    FUZZ_CHECK(static_cast<uint8_t>(e.scope) <= 2, "scope %d", static_cast<int>(e.scope));
    FUZZ_CHECK(e.ops != 0 && (e.ops & ~kAllOps) == 0, "ops 0x%x", e.ops);
  }
}

}  // namespace
}  // namespace nasfs::journal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  using namespace nasfs::journal;
  std::string_view data(reinterpret_cast<const char*>(bytes), size);

  ScanResult last = Scan(data, /*last=*/true);
  CheckScan(data, last, true);
  ScanResult sealed = Scan(data, /*last=*/false);
  CheckScan(data, sealed, false);
  FUZZ_CHECK(last.records.size() == sealed.records.size(), "the records depend on whether the segment is last");
  for (size_t i = 0; i < last.records.size(); ++i)
    FUZZ_CHECK(last.records[i].offset == sealed.records[i].offset, "record %zu moved", i);
  // A sealed segment's unreadable tail is one more damaged stretch.
  FUZZ_CHECK(sealed.damaged == last.damaged + (last.torn_bytes ? 1 : 0), "damage counts %llu vs %llu",
             static_cast<unsigned long long>(sealed.damaged), static_cast<unsigned long long>(last.damaged));

  for (const auto& r : last.records) CheckMissed(r.payload);
  CheckMissed(data);  // the input itself as a payload

  CheckPeerLog(data, last, kMaster);
  CheckPeerLog(data, last, kBackup);

  if (size <= kMaxPayload) {
    std::string framed;
    Frame(&framed, 7, std::string(data));
    ScanResult one = Scan(framed, true);
    FUZZ_CHECK(one.records.size() == 1 && one.records[0].offset == 0 && one.records[0].seq == 7 &&
                   one.records[0].payload == data && one.damaged == 0 && one.torn_bytes == 0,
               "a framed payload does not scan back whole");
  }
  return 0;
}
