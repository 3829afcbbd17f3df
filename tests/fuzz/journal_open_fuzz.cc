// libFuzzer target: Journal::Open over a journal directory whose segment
// files come from the fuzz input, in memory (mem_env.h), then a little use
// of the opened journal, a checkpoint and a reopen.
//
// Input:
//   byte 0     a fault: bits 0-5 n (0: none): the nth writing call through
//              the env fails; bit 6: with ENOSPC (else EIO); bit 7: a failed
//              append writes half its bytes first
//   then up to 8 chunks, each one segment file (0000000000000001.log, ...):
//     u8 kind, u32 length (little endian), then that many bytes (fewer at
//     the end of the input):
//     'F'  framed by the harness, so the checksums hold and the fuzzer
//          reaches the record meanings: u64 seq of the first record, then
//          records as u16 length + payload (journal/FORMAT.md "Payloads")
//     else the raw bytes of the file
//
// Invariants checked: Open returns a journal or an error line, never
// crashes; a failed Open leaves the directory unlocked; the pending state is
// well formed (journal.h: data_only entries hold merged, sorted ranges, at
// most 64, whose sum is data_bytes; others none); on a healthy env every call
// succeeds; what a call acknowledged is durable (FORMAT.md "Durability
// rules"): a power cut right after Intend or AddMissed returned 0 (the env's
// files cut to what was synced, opened as another journal) keeps the marks
// and the missed paths; once a Checkpoint() returned 0, a reopen finds no
// damage and the same state (FORMAT.md "Checkpoints and compaction"); no
// leak, no UB.
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>
#include <vector>

#include "journal/journal.h"
#include "journal/record.h"
#include "tests/fuzz/fuzz_check.h"
#include "tests/fuzz/mem_env.h"

namespace nasfs::journal {
namespace {

constexpr const char* kDir = "/j";
constexpr uint32_t kDataOps = (1u << static_cast<unsigned>(Op::kWrite)) | (1u << static_cast<unsigned>(Op::kMeta));
constexpr size_t kMaxSegments = 8;

class Input {
 public:
  explicit Input(std::string_view s) : s_(s) {}
  bool empty() const { return s_.empty(); }
  uint8_t U8() {
    std::string_view b = Take(1);
    return b.empty() ? 0 : static_cast<uint8_t>(b[0]);
  }
  uint64_t Le(size_t n) {
    std::string_view b = Take(n);
    uint64_t v = 0;
    for (size_t i = b.size(); i-- > 0;) v = (v << 8) | static_cast<unsigned char>(b[i]);
    return v;
  }
  std::string_view Take(size_t n) {
    n = std::min(n, s_.size());
    std::string_view out = s_.substr(0, n);
    s_.remove_prefix(n);
    return out;
  }

 private:
  std::string_view s_;
};

std::string SegmentFile(uint64_t n) {
  char b[64];
  std::snprintf(b, sizeof b, "%s/%016llx.log", kDir, static_cast<unsigned long long>(n));
  return b;
}

std::string FramedSegment(std::string_view body) {
  Input in(body);
  uint64_t seq = in.Le(8);
  std::string out;
  while (!in.empty()) {
    size_t len = in.Le(2);
    Frame(&out, seq++, std::string(in.Take(len)));
  }
  return out;
}

using State = std::map<std::string, Pending>;

State StateOf(const Journal& j, Target t) {
  State out;
  for (auto& p : j.PendingFor(t)) {
    std::string path = p.path;
    FUZZ_CHECK(out.emplace(path, std::move(p)).second, "PendingFor lists a path twice");
  }
  return out;
}

bool RangeEndOverflows(const Range& r) { return r.length > UINT64_MAX - r.offset; }

void CheckWellFormed(const Journal& j) {
  Stats s = j.stats();
  for (Target t : {kMaster, kBackup}) {
    State st = StateOf(j, t);
    FUZZ_CHECK(st.size() == s.pending[TargetIndex(t)], "stats say %llu pending, PendingFor %zu",
               static_cast<unsigned long long>(s.pending[TargetIndex(t)]), st.size());
    uint64_t bytes = 0;
    for (const auto& [path, p] : st) {
      FUZZ_CHECK(p.path == path && p.target == t, "entry keyed wrong");
      FUZZ_CHECK(static_cast<uint8_t>(p.scope) <= 2, "scope %d", static_cast<int>(p.scope));
      FUZZ_CHECK(p.ops != 0 && (p.ops & ~kAllOps) == 0, "ops 0x%x", p.ops);
      FUZZ_CHECK(p.writers == 0, "writers left over");
      uint64_t sum = 0;
      for (const auto& r : p.ranges) sum += r.length;
      FUZZ_CHECK(sum == p.data_bytes, "data_bytes %llu, ranges sum to %llu",
                 static_cast<unsigned long long>(p.data_bytes), static_cast<unsigned long long>(sum));
      bytes += p.data_bytes;
      if (!p.data_only) {
        FUZZ_CHECK(p.ranges.empty(), "ranges on a whole-file entry");
        continue;
      }
      FUZZ_CHECK((p.ops & ~kDataOps) == 0, "a data-only entry with ops 0x%x", p.ops);
      FUZZ_CHECK(p.ranges.size() <= 64, "%zu ranges", p.ranges.size());
      for (size_t i = 0; i < p.ranges.size(); ++i) {
        FUZZ_CHECK(p.ranges[i].length > 0, "an empty range");
        if (i == 0 || RangeEndOverflows(p.ranges[i - 1])) continue;
        const Range& a = p.ranges[i - 1];
        FUZZ_CHECK(p.ranges[i].offset > a.offset + a.length, "ranges unsorted, overlapping or touching");
      }
    }
    FUZZ_CHECK(bytes == s.data_bytes[TargetIndex(t)], "stats data_bytes differ");
  }
}

// After a checkpoint and a reopen, the same state (an entry that took a
// write with no byte range may come back whole-file: a checkpoint writes
// such a write as a whole-file one, the cautious side).
void CheckSameState(const State& before, const State& after, const char* target) {
  FUZZ_CHECK(before.size() == after.size(), "%s: %zu pending entries before a reopen, %zu after", target,
             before.size(), after.size());
  for (const auto& [path, b] : before) {
    auto it = after.find(path);
    FUZZ_CHECK(it != after.end(), "%s: pending entry lost by a checkpoint and reopen", target);
    const Pending& a = it->second;
    FUZZ_CHECK(a.scope == b.scope && a.ops == b.ops && a.first_ns == b.first_ns && a.link_from == b.link_from,
               "%s: entry changed by a checkpoint and reopen (scope %d->%d ops 0x%x->0x%x)", target,
               static_cast<int>(b.scope), static_cast<int>(a.scope), b.ops, a.ops);
    // seq 0 in a record means "this record's seq", so an entry at 0 (only
    // a hand-made journal has one) comes back at its checkpoint record's.
    if (b.seq != 0) FUZZ_CHECK(a.seq == b.seq, "%s: entry seq changed by a checkpoint and reopen", target);
    bool write_without_range = (b.ops & (1u << static_cast<unsigned>(Op::kWrite))) && b.ranges.empty();
    if (b.data_only && write_without_range) continue;  // either way is right
    bool overflow = std::any_of(b.ranges.begin(), b.ranges.end(), RangeEndOverflows);
    if (overflow) continue;  // checked by CheckWellFormed as far as it can be
    FUZZ_CHECK(a.data_only == b.data_only, "%s: data_only changed by a checkpoint and reopen", target);
    FUZZ_CHECK(a.ranges.size() == b.ranges.size(), "%s: ranges changed by a checkpoint and reopen", target);
    for (size_t i = 0; i < a.ranges.size(); ++i)
      FUZZ_CHECK(a.ranges[i].offset == b.ranges[i].offset && a.ranges[i].length == b.ranges[i].length,
                 "%s: range %zu changed by a checkpoint and reopen", target, i);
  }
}

// A power cut now: what env has synced, opened as another journal.
struct AfterPowerCut {
  AfterPowerCut(const fuzz::MemEnv& live, const char* after) {
    env.AddDir(kDir);
    for (const auto& [path, data] : live.DurableFiles()) env.PutFile(path, data);
    Options o;
    o.dir = kDir;
    o.env = &env;
    o.background = false;
    auto opened = Journal::Open(o, &rec);
    FUZZ_CHECK(opened.has_value(), "after %s, a power cut leaves a journal that does not open: %s", after,
               opened ? "" : opened.error().c_str());
    j = std::move(*opened);
  }
  fuzz::MemEnv env;  // outlives j
  Recovered rec;
  std::unique_ptr<Journal> j;
};

void CheckIntendIsDurable(const fuzz::MemEnv& env, const std::vector<std::string>& dirs) {
  AfterPowerCut cut(env, "Intend returned 0");
  const auto& marked = cut.rec.unfinished_dirs;
  for (const auto& d : dirs)
    FUZZ_CHECK(std::find(marked.begin(), marked.end(), d) != marked.end(),
               "Intend returned 0 but a power cut loses the mark on '%s'", d.c_str());
}

void CheckMissedIsDurable(const fuzz::MemEnv& env, Target t, const std::vector<Change>& changes) {
  AfterPowerCut cut(env, "AddMissed returned 0");
  std::vector<Pending> pending = cut.j->PendingFor(t);
  for (const auto& c : changes) {
    auto it = std::find_if(pending.begin(), pending.end(), [&](const Pending& p) { return p.path == c.path; });
    FUZZ_CHECK(it != pending.end(), "AddMissed returned 0 but a power cut loses '%s'", c.path.c_str());
    FUZZ_CHECK(it->ops & (1u << static_cast<unsigned>(c.op)),
               "AddMissed returned 0 but a power cut loses op %d of '%s'", static_cast<int>(c.op), c.path.c_str());
  }
}

Options OptionsFor(fuzz::MemEnv* env) {
  Options o;
  o.dir = kDir;
  o.env = env;
  o.segment_bytes = 512;  // roll often
  o.background = false;
  return o;
}

}  // namespace
}  // namespace nasfs::journal

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* bytes, size_t size) {
  using namespace nasfs::journal;
  Input in(std::string_view(reinterpret_cast<const char*>(bytes), size));
  nasfs::fuzz::MemEnv env;
  env.AddDir(kDir);
  uint8_t fault = in.U8();
  for (uint64_t n = 1; n <= kMaxSegments && !in.empty(); ++n) {
    uint8_t kind = in.U8();
    std::string_view body = in.Take(in.Le(4));
    env.PutFile(SegmentFile(n), kind == 'F' ? FramedSegment(body) : std::string(body));
  }
  const bool faulty = (fault & 0x3f) != 0;
  if (faulty) env.FailNth(fault & 0x3f, (fault & 0x40) ? ENOSPC : EIO, (fault & 0x80) != 0);

  Recovered rec;
  auto opened = Journal::Open(OptionsFor(&env), &rec);
  if (!opened) {
    FUZZ_CHECK(!opened.error().empty(), "Open failed with no message");
    FUZZ_CHECK(faulty, "Open failed on a healthy env: %s", opened.error().c_str());
    FUZZ_CHECK(!env.AnyLockHeld(), "a failed Open left the journal locked");
    return 0;
  }
  std::unique_ptr<Journal> j = std::move(*opened);
  FUZZ_CHECK(rec.damaged_records == 0 || !rec.damage.empty(), "damage found but not described");
  CheckWellFormed(*j);

  // A little of what the daemon does.
  std::vector<int> errors;
  j->RetireRecovered(rec.unfinished_dirs);
  const std::vector<std::string> dirs = {"a", "a/b", ""};
  int intend = j->Intend(dirs);
  errors.push_back(intend);
  if (intend == 0) CheckIntendIsDurable(env, dirs);
  const std::vector<Change> to_backup = {Change{"a/b/f", Scope::kEntry, Op::kWrite, 4096, 100, {}},
                                         Change{"a/b/f", Scope::kEntry, Op::kWrite, 0, 4096, {}},
                                         Change{"a/b/f", Scope::kEntry, Op::kMeta, 0, 0, {}},
                                         Change{"a/b/f", Scope::kEntry, Op::kLinked, 7340033, 0, {}},
                                         Change{"a/c", Scope::kTree, Op::kRename, 0, 0, {}}};
  errors.push_back(j->AddMissed(kBackup, to_backup));
  if (errors.back() == 0) CheckMissedIsDurable(env, kBackup, to_backup);
  const std::vector<Change> to_master = {Change{"a/b/l", Scope::kEntry, Op::kCreate, 0, 0, "a/b/f"},
                                         Change{"", Scope::kShallow, Op::kCrash, 0, 0, {}}};
  errors.push_back(j->AddMissed(kMaster, to_master));
  if (errors.back() == 0) CheckMissedIsDurable(env, kMaster, to_master);
  std::vector<Change> touching = {Change{"a/b/f/x", Scope::kEntry, Op::kCreate, 0, 0, {}}};
  bool recorded = false;
  errors.push_back(j->RecordIfTouching(kBackup, touching, &recorded));
  if (recorded) j->EndWrites(kBackup, touching);
  std::vector<Pending> master = j->PendingFor(kMaster);
  for (size_t i = 0; i < master.size(); i += 2) j->Done(kMaster, master[i].path, master[i].seq);
  for (size_t i = 1; i < master.size(); i += 2) {
    if (master[i].seq == 0) continue;
    j->Done(kMaster, master[i].path, master[i].seq - 1);  // older than the entry: keeps it
    std::vector<Pending> now = j->PendingFor(kMaster);
    FUZZ_CHECK(std::any_of(now.begin(), now.end(), [&](const Pending& p) { return p.path == master[i].path; }),
               "a Done older than the entry retired it");
  }
  (void)j->FinishIfEmpty(kMaster, [] {});
  errors.push_back(j->SetFullSync(kBackup, true));
  errors.push_back(j->SetPairId("fuzz-pair"));
  if (intend == 0) j->Release(dirs);
  j->Tick();
  errors.push_back(j->Flush());
  j->Tick();  // repairs a journal the fault failed
  for (int e : errors) {
    FUZZ_CHECK(e >= 0, "a negative errno %d", e);
    if (!env.fault_fired()) FUZZ_CHECK(e == 0, "a call failed (%d) on a healthy env", e);
  }
  CheckWellFormed(*j);

  int cp = j->Checkpoint();
  if (!env.fault_fired()) FUZZ_CHECK(cp == 0, "Checkpoint failed (%d) on a healthy env", cp);
  if (cp != 0) return 0;
  // Everything is in the checkpoint now: a reopen must find exactly it.
  State before_m = StateOf(*j, kMaster), before_b = StateOf(*j, kBackup);
  bool fs_m = j->full_sync(kMaster), fs_b = j->full_sync(kBackup);
  std::string pair = j->pair_id();
  j.reset();
  FUZZ_CHECK(!env.AnyLockHeld(), "a closed journal is still locked");
  env.FailNth(0, 0, false);

  Recovered again;
  auto reopened = Journal::Open(OptionsFor(&env), &again);
  FUZZ_CHECK(reopened.has_value(), "a journal that checkpointed does not reopen: %s",
             reopened ? "" : reopened.error().c_str());
  FUZZ_CHECK(again.damaged_records == 0 && again.torn_bytes == 0 && again.damage.empty() && !again.fresh,
             "a checkpointed journal reopens with damage (%llu records, %llu torn bytes)",
             static_cast<unsigned long long>(again.damaged_records),
             static_cast<unsigned long long>(again.torn_bytes));
  Journal& j2 = **reopened;
  CheckWellFormed(j2);
  CheckSameState(before_m, StateOf(j2, kMaster), "master");
  CheckSameState(before_b, StateOf(j2, kBackup), "backup");
  FUZZ_CHECK(j2.full_sync(kMaster) == fs_m && j2.full_sync(kBackup) == fs_b, "full_sync changed by a reopen");
  FUZZ_CHECK(j2.pair_id() == pair, "pair id changed by a reopen");
  return 0;
}
