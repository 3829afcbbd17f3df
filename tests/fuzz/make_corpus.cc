// Writes the seed corpora of the fuzz targets: small valid inputs of every
// kind and a few edge cases (torn, damaged, empty, a fault), deterministic
// (fixed times and seqs), so regenerating changes nothing unless this file
// changed.
//
//   build-fuzz/tests/fuzz/fuzz_make_corpus tests/fuzz/corpus
//
// Journal bytes are built with the journal's own framing (journal/record.h)
// and the payloads of journal/FORMAT.md; each journal_open seed is checked
// to open as intended before it is written.
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "journal/journal.h"
#include "journal/peer_log.h"
#include "journal/record.h"

namespace {

using namespace nasfs::journal;
namespace fs = std::filesystem;

constexpr int64_t kNs = 1733486400000000000;  // 2024-12-06, fixed

std::string g_out;
int g_written = 0;

void Write(const std::string& target, const std::string& name, const std::string& data) {
  fs::create_directories(g_out + "/" + target);
  std::ofstream f(g_out + "/" + target + "/" + name, std::ios::binary | std::ios::trunc);
  f.write(data.data(), static_cast<std::streamsize>(data.size()));
  if (!f) {
    std::fprintf(stderr, "fuzz_make_corpus: cannot write %s/%s/%s\n", g_out.c_str(), target.c_str(), name.c_str());
    std::exit(1);
  }
  ++g_written;
}

// ---- payloads (journal/FORMAT.md) ----
std::string Missed(Target t, Scope scope, Op op, uint64_t off, uint64_t len, const std::string& path,
                   const std::string& link_from = "", uint8_t flags = 0, uint64_t entry_seq = 0) {
  return EncodeMissed(MissedRecord{t, Change{path, scope, op, off, len, link_from}, flags, kNs, entry_seq});
}
std::string Done(Target t, uint64_t seq, const std::string& path) {
  std::string p;
  Put8(&p, 2);
  Put8(&p, t);
  Put64(&p, seq);
  PutStr(&p, path);
  return p;
}
std::string Dirs(uint8_t kind, const std::vector<std::string>& dirs) {  // 3 Intent, 4 Retire
  std::string p;
  Put8(&p, kind);
  Put32(&p, static_cast<uint32_t>(dirs.size()));
  for (const auto& d : dirs) PutStr(&p, d);
  return p;
}
std::string FullSync(Target t, bool on) {
  std::string p;
  Put8(&p, 5);
  Put8(&p, t);
  Put8(&p, on ? 1 : 0);
  return p;
}
std::string Pair(const std::string& id) {
  std::string p;
  Put8(&p, 6);
  PutStr(&p, id);
  return p;
}
std::string CheckpointBegin(uint64_t next) {
  std::string p;
  Put8(&p, 7);
  Put64(&p, next);
  return p;
}
std::string CheckpointEnd(uint32_t count) {
  std::string p;
  Put8(&p, 8);
  Put32(&p, count);
  return p;
}

std::string Segment(const std::vector<std::string>& payloads, uint64_t first_seq) {
  std::string out;
  for (const auto& p : payloads) Frame(&out, first_seq++, p);
  return out;
}

// ---- the records every journal seed is made of ----
std::vector<std::string> Outage() {  // a backup outage: writes, a create by link, a rename, a crash mark
  return {Dirs(3, {"", "www", "www/img"}),
          Missed(kBackup, Scope::kEntry, Op::kWrite, 0, 4096, "www/index.html"),
          Missed(kBackup, Scope::kEntry, Op::kWrite, 8192, 100, "www/index.html"),
          Missed(kBackup, Scope::kEntry, Op::kMeta, 0, 0, "www/index.html"),
          Missed(kBackup, Scope::kEntry, Op::kCreate, 0, 0, "www/img/b.png", "www/img/a.png"),
          Missed(kBackup, Scope::kTree, Op::kRename, 0, 0, "www/old"),
          Missed(kBackup, Scope::kEntry, Op::kRemove, 0, 0, "www/gone.txt", "", kFlagWhole),
          Missed(kMaster, Scope::kShallow, Op::kCrash, 0, 0, "www/img"),
          Missed(kMaster, Scope::kEntry, Op::kTruncate, 0, 0, "www/log.txt"),
          Missed(kMaster, Scope::kEntry, Op::kDirTimes, 0, 0, "www"),
          Dirs(4, {"www/img"}),
          Done(kMaster, 10, "www"),
          // a write reached a file with other names: kLinked holds its inode number
          Missed(kBackup, Scope::kEntry, Op::kLinked, 7340033, 0, "www/index.html"),
          FullSync(kBackup, true),
          Pair("3f2a9c1e-pair")};
}
std::vector<std::string> Checkpoint(uint64_t next) {
  std::vector<std::string> p = {CheckpointBegin(next), Pair("3f2a9c1e-pair"), FullSync(kMaster, true),
                                Missed(kBackup, Scope::kEntry, Op::kWrite, 0, 512, "a/f", "", 0, 3),
                                Missed(kBackup, Scope::kEntry, Op::kCreate, 0, 0, "a/l", "a/f", kFlagWhole, 4),
                                Missed(kMaster, Scope::kTree, Op::kRename, 0, 0, "b", "", kFlagWhole, 5),
                                Dirs(3, {"a"})};
  p.push_back(CheckpointEnd(static_cast<uint32_t>(p.size() + 1)));
  return p;
}

// ---- journal_open's input format (journal_open_fuzz.cc) ----
std::string Le(uint64_t v, int n) {
  std::string s;
  for (int i = 0; i < n; ++i) s.push_back(static_cast<char>(v >> (8 * i)));
  return s;
}
std::string RawChunk(const std::string& file) { return "R" + Le(file.size(), 4) + file; }
std::string FramedChunk(const std::vector<std::string>& payloads, uint64_t first_seq) {
  std::string body = Le(first_seq, 8);
  for (const auto& p : payloads) body += Le(p.size(), 2) + p;
  return "F" + Le(body.size(), 4) + body;
}

// Opens `files` (name -> bytes) as a journal and says whether that went as
// the seed intends: fails loudly if a seed meant to be clean has damage.
void CheckOpens(const std::string& name, const std::vector<std::string>& files, bool expect_clean) {
  fs::path dir = fs::temp_directory_path() / ("nasfs-make-corpus-" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  for (size_t i = 0; i < files.size(); ++i) {
    char seg[32];
    std::snprintf(seg, sizeof seg, "%016zx.log", i + 1);
    std::ofstream(dir / seg, std::ios::binary) << files[i];
  }
  Options o;
  o.dir = dir.string();
  o.background = false;
  Recovered rec;
  auto j = Journal::Open(o, &rec);
  if (!j) {
    std::fprintf(stderr, "fuzz_make_corpus: journal_open seed %s does not open: %s\n", name.c_str(),
                 j.error().c_str());
    std::exit(1);
  }
  j->reset();
  fs::remove_all(dir);
  bool clean = rec.damaged_records == 0 && rec.torn_bytes == 0;
  if (clean != expect_clean) {
    std::fprintf(stderr, "fuzz_make_corpus: journal_open seed %s opens %s, meant %s\n", name.c_str(),
                 clean ? "clean" : "with damage", expect_clean ? "clean" : "damaged");
    std::exit(1);
  }
}

void JournalSeeds() {
  const std::string outage = Segment(Outage(), 1);
  const std::string checkpoint = Segment(Checkpoint(20), 20);
  std::string torn = outage.substr(0, outage.size() - 7);
  std::string damaged = outage;
  damaged[damaged.size() / 2] ^= 0x40;
  std::string zeros = outage + std::string(64, '\0');

  // journal_record: single files.
  Write("journal_record", "outage.log", outage);
  Write("journal_record", "checkpoint.log", checkpoint);
  Write("journal_record", "torn_tail.log", torn);
  Write("journal_record", "damaged_middle.log", damaged);
  Write("journal_record", "zeros_tail.log", zeros);
  Write("journal_record", "one_missed_payload", Missed(kBackup, Scope::kEntry, Op::kWrite, 1, 2, "p"));
  Write("journal_record", "empty", "");
  Write("journal_record", "seq_max.log", Segment({Missed(kMaster, Scope::kEntry, Op::kMeta, 0, 0, "x")}, UINT64_MAX));

  // journal_open: fault byte, then segments.
  struct OpenSeed {
    const char* name;
    std::vector<std::string> files;
    std::string input;
    bool clean;
  };
  std::string ck2 = Segment(Checkpoint(40), 40);
  std::string partial_ck = ck2.substr(0, ck2.size() / 2);
  std::string after = Segment({Missed(kBackup, Scope::kEntry, Op::kWrite, 0, 10, "a/f"), Done(kBackup, 3, "a/f")}, 30);
  std::vector<OpenSeed> seeds = {
      {"fresh", {}, std::string(1, '\0'), true},
      {"outage_raw", {outage}, std::string(1, '\0') + RawChunk(outage), true},
      {"outage_framed", {outage}, std::string(1, '\0') + FramedChunk(Outage(), 1), true},
      {"checkpoint_then_log", {checkpoint, after},
       std::string(1, '\0') + RawChunk(checkpoint) + RawChunk(after), true},
      {"old_log_checkpoint_partial_checkpoint", {outage, checkpoint, after, partial_ck},
       std::string(1, '\0') + RawChunk(outage) + RawChunk(checkpoint) + RawChunk(after) + RawChunk(partial_ck), true},
      {"torn_tail_then_empty", {torn, ""}, std::string(1, '\0') + RawChunk(torn) + RawChunk(""), false},
      {"damaged_then_good", {damaged, after}, std::string(1, '\0') + RawChunk(damaged) + RawChunk(after), false},
      {"zeros_tail", {zeros}, std::string(1, '\0') + RawChunk(zeros), false},
  };
  for (const auto& s : seeds) {
    CheckOpens(s.name, s.files, s.clean);
    Write("journal_open", s.name, s.input);
  }
  // Faults: the nth writing call fails (EIO; ENOSPC; a short append).
  std::string body = RawChunk(checkpoint) + RawChunk(after);
  Write("journal_open", "fault_3_eio", std::string(1, '\x03') + body);
  Write("journal_open", "fault_9_enospc", std::string(1, '\x49') + body);
  Write("journal_open", "fault_12_short_append", std::string(1, '\x8c') + body);
  Write("journal_open", "fault_1_framed", std::string(1, '\x01') + FramedChunk(Outage(), 1));
}

void PeerLogSeeds() {
  auto log = [](Target t, const std::vector<Change>& changes, uint64_t first) {
    std::string out;
    for (const auto& c : changes) Frame(&out, first++, EncodeMissed(MissedRecord{t, c, 0, kNs, 0}));
    return out;
  };
  std::vector<Change> changes = {Change{"www/index.html", Scope::kEntry, Op::kWrite, 0, 0, {}},
                                 Change{"www/img", Scope::kTree, Op::kRename, 0, 0, {}},
                                 Change{"www/a", Scope::kEntry, Op::kCreate, 0, 0, "www/b"},
                                 Change{"www/index.html", Scope::kShallow, Op::kMeta, 0, 0, {}}};
  std::string master = log(kMaster, changes, 1);
  Write("peer_log", "lacks-master.log", master);
  Write("peer_log", "lacks-backup.log", log(kBackup, changes, 1));
  Write("peer_log", "mixed_targets.log", log(kMaster, {changes[0]}, 1) + log(kBackup, {changes[1]}, 2));
  Write("peer_log", "torn_append.log", master.substr(0, master.size() - 5));
  std::string damaged = master;
  damaged[30] ^= 1;
  Write("peer_log", "damaged_first.log", damaged);
  Write("peer_log", "not_missed.log", Segment({Done(kMaster, 1, "x"), FullSync(kMaster, true)}, 1) + master);
  Write("peer_log", "empty", "");
}

void OptionsSeeds() {
  auto argv = [](const std::vector<std::string>& args) {
    std::string out;
    for (size_t i = 0; i < args.size(); ++i) out += (i ? std::string(1, '\0') : "") + args[i];
    return out;
  };
  const std::string nas = "/tmp/nasfs-fuzz-options/m:/tmp/nasfs-fuzz-options/b";
  const std::string mnt = "/tmp/nasfs-fuzz-options/mnt";
  Write("options", "minimal", argv({nas, mnt}));
  Write("options", "every_option",
        argv({nas, mnt, "-f", "-o",
              "journal=/var/lib/nasfs/x,control=/run/nasfs/x.sock,control_group=root,node=web-1,io_timeout=500,"
              "probe_interval=250,probe_successes=2,cache_timeout=0.5,source=master,threads=8,backend_threads=4,"
              "replay_share=50,peer_timeout=30,debug"}));
  Write("options", "fstab", argv({nas, mnt, "-o", "allow_other,_netdev,defaults,nofail,x-systemd.requires=/nas"}));
  Write("options", "kernel_options", argv({nas, mnt, "-oro,noatime,nosuid,nodev,max_read=131072", "-d"}));
  Write("options", "help", argv({"--help"}));
  Write("options", "version", argv({"-V"}));
  Write("options", "bad_number", argv({nas, mnt, "-o", "io_timeout=9"}));
  Write("options", "bad_node", argv({nas, mnt, "-o", "node=.hidden/x"}));
  Write("options", "three_colons", argv({"/a:/b:/c", mnt}));
  Write("options", "o_without_list", argv({nas, mnt, "-o"}));
  Write("options", "same_nas", argv({"/tmp/nasfs-fuzz-options/m:/tmp/nasfs-fuzz-options/m/", mnt}));
  Write("options", "unknown_option", argv({nas, mnt, "-o", "fsname=x,bogus"}));
}

void ControlSeeds() {
  Write("control", "status", "{\"cmd\":\"status\"}\n");
  Write("control", "journal_limit", "{\"cmd\":\"journal\",\"limit\":5000}\n");
  Write("control", "bad_limit", "{\"cmd\":\"journal\",\"limit\":-1}\n");
  Write("control", "long", "{\"cmd\":\"long\",\"node\":\"web2\"}\n");
  Write("control", "throw", "{\"cmd\":\"throw\"}\n");
  Write("control", "array", "{\"cmd\":\"array\"}\n");
  Write("control", "refuse", "{\"cmd\":\"refuse\"}");
  Write("control", "big", "{\"cmd\":\"big\"}\n");
  Write("control", "not_an_object", "[1,2,3]\n");
  Write("control", "not_json", "status please\n");
  Write("control", "cut_off", "{\"cmd\":");
  Write("control", "bad_utf8", "{\"cmd\":\"\xff\xfe\"}\n");
  Write("control", "two_lines", "{\"cmd\":\"status\"}\n{\"cmd\":\"throw\"}\n");
  Write("control", "empty_line", "\n");
  Write("control", "registry", "{\"mountpoint\":\"/var/www/shared\",\"control\":\"/run/nasfs/x.sock\",\"pid\":12}\n");
  Write("control", "registry_other_mount", "{\"mountpoint\":\"/var/www\",\"control\":\"/run/x.sock\",\"pid\":1}");
  Write("control", "mount_table",
        "/nas_master:/nas_backup /var/www/shared fuse.nasfs rw,nosuid,nodev 0 0\n"
        "/a:/b /srv/with\\040space fuse.nasfs rw 0 0\nproc /proc proc rw 0 0\n");
  Write("control", "mountpoint_escapes", "//var//www/sh-ared/.hidden/\\x2d");
}

void NasFilesSeeds() {
  Write("nas_files", "identity.json",
        "{\"format\":1,\"pair_id\":\"3f2a9c1e0b7d4e55\",\"role\":\"master\",\"created\":\"2024-12-06T10:00:00Z\"}\n");
  Write("nas_files", "identity_wrong_types.json", "{\"format\":\"1\",\"pair_id\":7,\"role\":\"primary\"}");
  Write("nas_files", "sync.json",
        "{\"source\":\"backup\",\"verify_content\":false,\"started\":\"2024-12-06T10:00:00Z\"}\n");
  Write("nas_files", "sync_no_source.json", "{\"verify_content\":true}");
  Write("nas_files", "heartbeat.web1",
        "{\"seq\":42,\"time\":\"2024-12-06T10:00:00Z\",\"node\":\"web1\",\"pid\":1234,"
        "\"mountpoint\":\"/var/www/shared\",\"read_from\":\"master\",\"pending_master\":0,"
        "\"pending_backup\":17}");
  Write("nas_files", "heartbeat_out_of_range",
        "{\"seq\":-1,\"pid\":9223372036854775808,\"pending_master\":18446744073709551616}");
  Write("nas_files", "generation_name", "g-12");
  Write("nas_files", "in_step_name", "s-18446744073709551615");
  Write("nas_files", "leading_zero_name", "g-007");
  Write("nas_files", "claim", "web1 1733486400000\n");
  Write("nas_files", "claim_release", "- 1733486400000\n");
  Write("nas_files", "claim_bad_time", "web1 -5\n");
  Write("nas_files", "conflict_meta.json",
        "{\n  \"id\": \"x\",\n  \"path\": \"www/index.html\",\n  \"kept_from\": \"backup\",\n"
        "  \"winner\": \"master\",\n  \"kind\": \"file\",\n  \"reason\": \"split brain\",\n"
        "  \"kept_mtime_ns\": 1733486400000000000,\n  \"winner_mtime_ns\": 1733486401000000000,\n"
        "  \"size\": 5120,\n  \"detected\": \"2024-12-06T10:00:02Z\",\n  \"node\": \"web1\"\n}\n");
  Write("nas_files", "conflict_negative_mtime.json",
        "{\"path\":\"a\",\"kept_mtime_ns\":-9223372036854775808,\"winner_mtime_ns\":-1}");
  Write("nas_files", "deep_nesting.json", "{\"pair_id\":\"p\",\"role\":\"backup\",\"x\":[[[[[[[[[[1]]]]]]]]]]}");
  Write("nas_files", "not_an_object", "[\"master\"]");
  Write("nas_files", "empty", "");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_make_corpus OUTDIR   (e.g. tests/fuzz/corpus)\n");
    return 2;
  }
  g_out = argv[1];
  JournalSeeds();
  PeerLogSeeds();
  OptionsSeeds();
  ControlSeeds();
  NasFilesSeeds();
  std::printf("fuzz_make_corpus: %d seeds written under %s\n", g_written, g_out.c_str());
  return 0;
}
