// The pending index a web server keeps on the shared NAS (issue 5): while
// one NAS is out for this server, every path it changes there is also
// recorded, durably and before the write is acknowledged, in
// .nasfs/peers/<node>/lacks-<target>.log on the NAS that took the write.
// Every server sharing the pair can read it:
//  - no server sends reads back to a NAS while any server's log says it
//    lacks something (coordinated switch-back);
//  - a server that died with writes pending left its list behind, and
//    another server replays it (takeover);
//  - logs on both NAS, each lacking what the other has, is a split brain.
// The local journal stays the write-ahead record; this index only lists
// paths (the first change to each per outage), so it costs one record per
// path, not per write. Records use the journal's framing and its Missed
// payload (journal/FORMAT.md): a torn tail (a server killed mid-append) is
// dropped on reading. No I/O here: fs/peers.cc moves the bytes, bounded
// by the NAS deadline.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "journal/journal.h"

namespace nasfs::journal {

// "lacks-master.log" / "lacks-backup.log".
std::string PeerLogName(Target target);

// Framed Missed records for `changes`, numbered from *next_seq (advanced).
std::string EncodePeerRecords(Target target, const std::vector<Change>& changes, uint64_t* next_seq);

// One path a peer log lists, its changes merged.
struct PeerEntry {
  std::string path;
  Scope scope = Scope::kEntry;  // the widest recorded
  uint32_t ops = 0;             // bit (1 << Op) per Op recorded
  std::vector<uint64_t> inodes;  // kLinked: as in Pending
};
struct PeerLogContents {
  std::vector<PeerEntry> entries;  // one per path, in first-recorded order
  uint64_t records = 0;
  uint64_t last_seq = 0;
  uint64_t torn_bytes = 0;  // an append cut off
  uint64_t damaged = 0;     // unreadable records followed by readable ones
};
// Reads a peer log's bytes; records for another target are ignored.
PeerLogContents DecodePeerLog(std::string_view data, Target target);

}  // namespace nasfs::journal
