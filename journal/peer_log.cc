#include "journal/peer_log.h"

#include <algorithm>
#include <chrono>
#include <unordered_map>

#include "journal/record.h"

namespace nasfs::journal {

std::string PeerLogName(Target target) { return std::string("lacks-") + TargetName(target) + ".log"; }

std::string EncodePeerRecords(Target target, const std::vector<Change>& changes, uint64_t* next_seq) {
  int64_t ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                   std::chrono::system_clock::now().time_since_epoch())
                   .count();
  std::string out;
  for (const auto& c : changes) Frame(&out, (*next_seq)++, EncodeMissed(MissedRecord{target, c, 0, ns, 0}));
  return out;
}

PeerLogContents DecodePeerLog(std::string_view data, Target target) {
  PeerLogContents out;
  ScanResult scan = Scan(data, /*last=*/true);
  out.torn_bytes = scan.torn_bytes;
  out.damaged = scan.damaged;
  std::unordered_map<std::string, size_t> index;
  for (const auto& rec : scan.records) {
    MissedRecord m;
    if (!DecodeMissed(rec.payload, &m)) {
      ++out.damaged;
      continue;
    }
    ++out.records;
    out.last_seq = std::max(out.last_seq, rec.seq);
    if (m.target != target) continue;
    auto [it, fresh] = index.try_emplace(m.change.path, out.entries.size());
    if (fresh) out.entries.push_back(PeerEntry{m.change.path, m.change.scope, 0, {}});
    PeerEntry& e = out.entries[it->second];
    e.scope = std::max(e.scope, m.change.scope);
    e.ops |= 1u << static_cast<unsigned>(m.change.op);
    if (m.change.op == Op::kLinked) AddInode(&e.inodes, m.change.offset);
  }
  return out;
}

}  // namespace nasfs::journal
