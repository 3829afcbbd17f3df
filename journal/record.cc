#include "journal/record.h"

#include <string.h>

#include <algorithm>

#include <xxhash.h>

namespace nasfs::journal {

void Put8(std::string* s, uint8_t v) { s->push_back(static_cast<char>(v)); }
void Put32(std::string* s, uint32_t v) {
  for (int i = 0; i < 4; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
void Put64(std::string* s, uint64_t v) {
  for (int i = 0; i < 8; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
}
void PutStr(std::string* s, std::string_view v) {
  Put32(s, static_cast<uint32_t>(v.size()));
  s->append(v);
}

uint64_t Load64(const char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint32_t Load32(const char* p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}

void Frame(std::string* out, uint64_t seq, const std::string& payload) {
  size_t start = out->size();
  Put32(out, kMagic);
  Put32(out, static_cast<uint32_t>(payload.size()));
  Put64(out, seq);
  out->append(payload);
  Put64(out, XXH3_64bits(out->data() + start + 4, 12 + payload.size()));
}

bool ParseAt(std::string_view s, size_t off, uint64_t* seq, std::string_view* payload, size_t* size) {
  if (s.size() - off < kHeader + kTrailer) return false;
  const char* p = s.data() + off;
  if (Load32(p) != kMagic) return false;
  uint32_t len = Load32(p + 4);
  if (len > kMaxPayload || s.size() - off < kHeader + len + kTrailer) return false;
  if (XXH3_64bits(p + 4, 12 + len) != Load64(p + kHeader + len)) return false;
  *seq = Load64(p + 8);
  *payload = s.substr(off + kHeader, len);
  *size = kHeader + len + kTrailer;
  return true;
}


ScanResult Scan(std::string_view data, bool last) {
  ScanResult out;
  size_t off = 0;
  // Looking for the next record after damage checks every offset whose
  // bytes read as a header, hashing up to its length: bytes made to look
  // like headers could make that quadratic. The bytes hashed while
  // resynchronizing are bounded; past the bound, the rest counts as damage.
  uint64_t budget = 8 * static_cast<uint64_t>(data.size()) + (16u << 20);
  while (off < data.size()) {
    uint64_t seq;
    std::string_view payload;
    size_t size;
    if (ParseAt(data, off, &seq, &payload, &size)) {
      out.records.push_back({off, seq, std::string(payload)});
      off += size;
      continue;
    }
    size_t next = off + 1;
    bool gave_up = false;
    while (next < data.size()) {
      // Only an offset holding the magic can start a record.
      const void* m = memmem(data.data() + next, data.size() - next, "NJL1", 4);
      if (!m) {
        next = data.size();
        break;
      }
      next = static_cast<size_t>(static_cast<const char*>(m) - data.data());
      if (ParseAt(data, next, &seq, &payload, &size)) break;
      uint32_t len = data.size() - next >= 8 ? Load32(data.data() + next + 4) : 0;
      uint64_t cost = std::min<uint64_t>(len, data.size() - next);
      if (cost > budget) {
        gave_up = true;
        break;
      }
      budget -= cost;
      ++next;
    }
    if (gave_up) {
      ++out.damaged;
      break;
    }
    if (next >= data.size()) {
      if (last) out.torn_bytes = data.size() - off;
      else ++out.damaged;  // sealed segments were synced whole
      break;
    }
    ++out.damaged;
    off = next;
  }
  return out;
}

std::string EncodeMissed(const MissedRecord& m) {
  std::string p;
  Put8(&p, kKindMissed);
  Put8(&p, m.target);
  Put8(&p, static_cast<uint8_t>(m.change.scope));
  Put8(&p, static_cast<uint8_t>(m.change.op));
  Put8(&p, m.flags);
  Put64(&p, static_cast<uint64_t>(m.ns));
  Put64(&p, m.entry_seq);
  Put64(&p, m.change.offset);
  Put64(&p, m.change.length);
  PutStr(&p, m.change.path);
  if (!m.change.link_from.empty()) PutStr(&p, m.change.link_from);
  return p;
}

bool DecodeMissed(std::string_view payload, MissedRecord* out) {
  Reader r(payload);
  if (r.U8() != kKindMissed) return false;
  uint8_t target = r.U8(), scope = r.U8(), op = r.U8();
  out->flags = r.U8();
  out->ns = static_cast<int64_t>(r.U64());
  out->entry_seq = r.U64();
  out->change.offset = r.U64();
  out->change.length = r.U64();
  out->change.path = r.Str();
  out->change.link_from.clear();
  if (r.ok() && !r.done()) out->change.link_from = r.Str();  // optional: a link's existing name
  if (!r.done() || (target != kMaster && target != kBackup) || scope > 2 || op < 1 || op > kLastOp) return false;
  out->target = static_cast<Target>(target);
  out->change.scope = static_cast<Scope>(scope);
  out->change.op = static_cast<Op>(op);
  return true;
}

}  // namespace nasfs::journal
