// Record framing shared by the local journal (journal.h) and the pending
// logs web servers keep on the shared NAS (peer_log.h): the byte layout is
// journal/FORMAT.md's. Internal to journal/.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "journal/journal.h"

namespace nasfs::journal {

// ---- record framing (journal/FORMAT.md) ----
constexpr uint32_t kMagic = 0x314c4a4e;  // "NJL1" little endian
constexpr size_t kHeader = 16;           // magic, length, seq
constexpr size_t kTrailer = 8;           // xxh3-64
constexpr uint32_t kMaxPayload = 1 << 20;

void Put8(std::string* s, uint8_t v);
void Put32(std::string* s, uint32_t v);
void Put64(std::string* s, uint64_t v);
void PutStr(std::string* s, std::string_view v);
uint64_t Load64(const char* p);
uint32_t Load32(const char* p);

// Reads a payload field by field; any overrun makes ok() false.
class Reader {
 public:
  explicit Reader(std::string_view s) : s_(s) {}
  uint8_t U8() { return Need(1) ? static_cast<uint8_t>(s_[pos_++]) : 0; }
  uint32_t U32() {
    if (!Need(4)) return 0;
    uint32_t v = Load32(s_.data() + pos_);
    pos_ += 4;
    return v;
  }
  uint64_t U64() {
    if (!Need(8)) return 0;
    uint64_t v = Load64(s_.data() + pos_);
    pos_ += 8;
    return v;
  }
  std::string Str() {
    uint32_t n = U32();
    if (!Need(n)) return {};
    std::string v(s_.substr(pos_, n));
    pos_ += n;
    return v;
  }
  bool ok() const { return ok_; }
  bool done() const { return ok_ && pos_ == s_.size(); }

 private:
  bool Need(size_t n) {
    if (!ok_ || s_.size() - pos_ < n) ok_ = false;
    return ok_;
  }
  std::string_view s_;
  size_t pos_ = 0;
  bool ok_ = true;
};

// Appends one framed record to *out.
void Frame(std::string* out, uint64_t seq, const std::string& payload);
// The record at s[off], if it is whole and its checksum holds.
bool ParseAt(std::string_view s, size_t off, uint64_t* seq, std::string_view* payload, size_t* size);

// One file's records, found by framing and checksum. Bytes that do not
// frame are skipped to the next record that does: damage when one follows,
// a torn tail (a write cut off by a crash, or zeros a power cut left) when
// none does and the file is the last one written (`last`).
struct ScannedRecord {
  size_t offset;
  uint64_t seq;
  std::string payload;
};
struct ScanResult {
  std::vector<ScannedRecord> records;
  uint64_t damaged = 0;     // unreadable stretches followed by readable records
  uint64_t torn_bytes = 0;  // unreadable tail of the last segment
};
ScanResult Scan(std::string_view data, bool last);

// ---- the Missed record (kind 1) ----
constexpr uint8_t kKindMissed = 1;
constexpr uint8_t kFlagWhole = 1;  // the whole file, even for a write

struct MissedRecord {
  Target target = kMaster;
  Change change;
  uint8_t flags = 0;
  int64_t ns = 0;          // wall clock of the change
  uint64_t entry_seq = 0;  // 0: the record's own seq
};
std::string EncodeMissed(const MissedRecord& m);
// Parses a payload that starts with kKindMissed; false if malformed.
bool DecodeMissed(std::string_view payload, MissedRecord* out);

}  // namespace nasfs::journal
