// Peers: the files the web servers sharing a pair of NAS leave for each other
// under .nasfs/ (issue 5). Two real temporary directories play the master and
// the backup; each test calls Peers and then looks at the files with plain
// syscalls (or plants them by hand before a Scan / ReadLog / Claim).
#include "fs/peers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "journal/peer_log.h"
#include "nas_dirs.h"

namespace nasfs {
namespace {

using journal::kBackup;
using journal::kMaster;
using journal::Op;
using journal::Scope;
using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::StartsWith;
using ::testing::UnorderedElementsAre;
using testutil::Exists;
using testutil::MakeTemp;
using testutil::ReadFile;
using testutil::StartPair;

journal::Change Ch(const std::string& path, Op op = Op::kMeta, Scope scope = Scope::kEntry) {
  journal::Change c;
  c.path = path;
  c.op = op;
  c.scope = scope;
  if (op == Op::kWrite) c.length = 10;
  return c;
}

std::vector<std::string> Paths(const journal::PeerLogContents& c) {
  std::vector<std::string> out;
  for (const auto& e : c.entries) out.push_back(e.path);
  return out;
}

std::set<std::string> PathSet(const journal::PeerLogContents& c) {
  std::set<std::string> out;
  for (const auto& e : c.entries) out.insert(e.path);
  return out;
}

off_t SizeOf(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 ? st.st_size : -1;
}

void PutFile(const std::string& path, const std::string& content) {
  std::filesystem::create_directories(std::filesystem::path(path).parent_path());
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << content;
  f.close();
  ASSERT_FALSE(f.fail()) << path;
}

// Every file under dir, relative to it ("" if dir is missing).
std::set<std::string> FilesUnder(const std::string& dir) {
  std::set<std::string> out;
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec))
    out.insert(std::filesystem::relative(it->path(), dir).string());
  return out;
}

class PeersTest : public ::testing::Test {
 protected:
  void SetUp() override {
    master_dir_ = MakeTemp("/tmp/nasfs-peers-master-XXXXXX");
    backup_dir_ = MakeTemp("/tmp/nasfs-peers-backup-XXXXXX");
    for (const auto& d : {master_dir_, backup_dir_}) ASSERT_EQ(::mkdir((d + "/.nasfs").c_str(), 0700), 0);
    ASSERT_TRUE(StartPair(master_dir_, backup_dir_, &master_, &backup_));
    peers_ = std::make_unique<Peers>(master_.get(), backup_.get(), "web1");
  }
  void TearDown() override {
    peers_.reset();
    master_.reset();
    backup_.reset();
    std::error_code ec;
    std::filesystem::remove_all(master_dir_, ec);
    std::filesystem::remove_all(backup_dir_, ec);
  }

  std::string M(const std::string& rel) const { return master_dir_ + "/" + rel; }
  std::string B(const std::string& rel) const { return backup_dir_ + "/" + rel; }
  // Where web1's log of what `t` lacks lives: on the other NAS.
  std::string Log(journal::Target t, const std::string& node = "web1") const {
    return t == kMaster ? B(Peers::LogPath(node, t)) : M(Peers::LogPath(node, t));
  }
  static journal::PeerLogContents Decode(const std::string& file, journal::Target t) {
    return journal::DecodePeerLog(ReadFile(file), t);
  }
  // Plants generation names by hand, as a server would have left them.
  static void PutGen(const std::string& root, uint64_t gen, uint64_t in_step) {
    std::filesystem::create_directories(root + "/.nasfs/generation");
    if (gen) PutFile(root + "/.nasfs/generation/g-" + std::to_string(gen), "");
    if (in_step) PutFile(root + "/.nasfs/generation/s-" + std::to_string(in_step), "");
  }
  Generation Gen(Backend& nas) {
    Generation g{99, 99};
    EXPECT_EQ(peers_->ReadGeneration(nas, &g), 0);
    return g;
  }
  // What the claim directory's highest step holds.
  static std::string ClaimHolder(const std::string& dir) {
    uint64_t top = 0;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      auto name = e.path().filename().string();
      if (!name.empty() && std::isdigit(static_cast<unsigned char>(name[0]))) top = std::max<uint64_t>(top, std::stoull(name));
    }
    if (top == 0) return "";
    std::string text = ReadFile(dir + "/" + std::to_string(top));
    return text.substr(0, text.find(' '));
  }

  std::string master_dir_, backup_dir_;
  std::unique_ptr<Backend> master_, backup_;
  std::unique_ptr<Peers> peers_;
};

// ---- 1. Note writes the log on the holder only ----

TEST_F(PeersTest, NoteWritesLogOnTheBackupForMaster) {
  EXPECT_EQ(Peers::LogPath("web1", kMaster), ".nasfs/peers/web1/lacks-master.log");
  std::set<std::string> master_before = FilesUnder(master_dir_);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a", Op::kWrite), Ch("d/b", Op::kCreate), Ch("a", Op::kMeta),
                                   Ch("d", Op::kRename, Scope::kTree)}),
            0);
  ASSERT_TRUE(Exists(B(".nasfs/peers/web1/lacks-master.log")));
  auto c = Decode(B(".nasfs/peers/web1/lacks-master.log"), kMaster);
  EXPECT_THAT(Paths(c), ElementsAre("a", "d/b", "d"));
  EXPECT_EQ(c.records, 4u) << "each op of a path is recorded";
  EXPECT_EQ(c.torn_bytes, 0u);
  EXPECT_EQ(c.damaged, 0u);
  ASSERT_EQ(c.entries.size(), 3u);
  EXPECT_EQ(c.entries[0].ops, (1u << static_cast<unsigned>(Op::kWrite)) | (1u << static_cast<unsigned>(Op::kMeta)));
  EXPECT_EQ(c.entries[1].ops, 1u << static_cast<unsigned>(Op::kCreate));
  EXPECT_EQ(c.entries[2].scope, Scope::kTree);
  // Nothing for the other target in it.
  EXPECT_THAT(Decode(B(".nasfs/peers/web1/lacks-master.log"), kBackup).entries, IsEmpty());
  // The master (the NAS that lacks them) is untouched.
  EXPECT_EQ(FilesUnder(master_dir_), master_before);
  EXPECT_FALSE(Exists(M(".nasfs/peers")));
}

TEST_F(PeersTest, NoteWritesLogOnTheMasterForBackup) {
  std::set<std::string> backup_before = FilesUnder(backup_dir_);
  ASSERT_EQ(peers_->Note(kBackup, {Ch("x"), Ch("y/z")}), 0);
  EXPECT_THAT(Paths(Decode(M(".nasfs/peers/web1/lacks-backup.log"), kBackup)), ElementsAre("x", "y/z"));
  EXPECT_EQ(FilesUnder(backup_dir_), backup_before);
  EXPECT_FALSE(Exists(B(".nasfs/peers")));
}

// ---- 2. A listed path costs nothing ----

TEST_F(PeersTest, NoteOfListedPathsAppendsNothing) {
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a"), Ch("b")}), 0);
  off_t size = SizeOf(Log(kMaster));
  ASSERT_GT(size, 0);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("b"), Ch("a")}), 0);
  EXPECT_EQ(SizeOf(Log(kMaster)), size);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a"), Ch("c"), Ch("b"), Ch("e")}), 0);
  auto c = Decode(Log(kMaster), kMaster);
  EXPECT_THAT(Paths(c), ElementsAre("a", "b", "c", "e"));
  EXPECT_EQ(c.records, 4u) << "only c and e appended";
  EXPECT_GT(SizeOf(Log(kMaster)), size);
  // The other target's index is its own: "a" is not listed there.
  ASSERT_EQ(peers_->Note(kBackup, {Ch("a")}), 0);
  EXPECT_THAT(Paths(Decode(Log(kBackup), kBackup)), ElementsAre("a"));
}

// A listed path is listed again for another op or a wider scope: a
// split-brain merge and a takeover act on the ops (a directory listed for
// its times alone is merged by its times; a chmod after that must show).
TEST_F(PeersTest, ALaterOpOfAListedPathIsListedToo) {
  ASSERT_EQ(peers_->Note(kMaster, {Ch("d", Op::kDirTimes)}), 0);
  off_t size = SizeOf(Log(kMaster));
  ASSERT_EQ(peers_->Note(kMaster, {Ch("d", Op::kDirTimes)}), 0);
  EXPECT_EQ(SizeOf(Log(kMaster)), size) << "the same op again costs nothing";
  ASSERT_EQ(peers_->Note(kMaster, {Ch("d", Op::kMeta)}), 0);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("d", Op::kMeta, Scope::kTree)}), 0);
  auto c = Decode(Log(kMaster), kMaster);
  ASSERT_EQ(c.entries.size(), 1u);
  EXPECT_EQ(c.entries[0].ops,
            (1u << static_cast<unsigned>(Op::kDirTimes)) | (1u << static_cast<unsigned>(Op::kMeta)));
  EXPECT_EQ(c.entries[0].scope, Scope::kTree);
  EXPECT_EQ(c.records, 3u);
}

// ---- 3. The holder's generation moves ahead once per outage ----

TEST_F(PeersTest, FirstNoteMovesHolderGenerationAhead) {
  PutGen(backup_dir_, 5, 5);
  PutGen(master_dir_, 5, 5);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a")}), 0);
  Generation g = Gen(*backup_);
  EXPECT_EQ(g.generation, 6u);
  EXPECT_EQ(g.in_step, 5u);
  EXPECT_TRUE(Exists(B(".nasfs/generation/g-6")));
  EXPECT_FALSE(Exists(B(".nasfs/generation/g-5"))) << "older names are tidied away";
  // The master's (the NAS that lacks) is unchanged.
  EXPECT_EQ(Gen(*master_).generation, 5u);

  // Marked in step meanwhile: a later Note of the same outage does not bump.
  ASSERT_EQ(peers_->MarkInStep(*backup_, 6), 0);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("b")}), 0);
  EXPECT_EQ(Gen(*backup_).generation, 6u);
  EXPECT_EQ(Gen(*backup_).in_step, 6u);

  // A new outage (after Clear) bumps again, even when the NAS is still
  // ahead: the bump is what marking in step must not miss.
  ASSERT_EQ(peers_->Clear(kMaster), 0);
  PutGen(backup_dir_, 7, 0);  // ahead (7 > 6)
  ASSERT_EQ(peers_->Note(kMaster, {Ch("c")}), 0);
  g = Gen(*backup_);
  EXPECT_EQ(g.generation, 8u);
  EXPECT_EQ(g.in_step, 6u);
  EXPECT_TRUE(g.ahead());
}

TEST_F(PeersTest, FirstNoteWithNoGenerationWritesOne) {
  ASSERT_FALSE(Exists(B(".nasfs/generation")));
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a")}), 0);
  Generation g = Gen(*backup_);
  EXPECT_EQ(g.generation, 1u);
  EXPECT_EQ(g.in_step, 0u);
  EXPECT_FALSE(Exists(M(".nasfs/generation")));
}

TEST_F(PeersTest, GenerationReadsNamesAndTheOldFileAsAFloor) {
  Generation g = Gen(*master_);
  EXPECT_EQ(g.generation, 0u) << "missing reads as 0";
  EXPECT_EQ(g.in_step, 0u);
  PutFile(M(".nasfs/generation.json"), R"({"generation":42,"in_step":17})");
  g = Gen(*master_);
  EXPECT_EQ(g.generation, 42u);
  EXPECT_EQ(g.in_step, 17u);
  ASSERT_EQ(peers_->MarkInStep(*master_, 42), 0);
  g = Gen(*master_);
  EXPECT_EQ(g.in_step, 42u);
  EXPECT_FALSE(g.ahead());
  // Marking in step never moves it back.
  ASSERT_EQ(peers_->MarkInStep(*master_, 30), 0);
  EXPECT_EQ(Gen(*master_).in_step, 42u);
}

// The reproduced crash of issue 10: a generation file of the wrong types
// made the probe thread throw and ended the daemon. Every kind of junk is
// read as "no information", reported, and never thrown.
TEST_F(PeersTest, DamagedGenerationIsReportedNeverThrown) {
  for (const char* junk : {R"({"generation":"oops","in_step":null})", "{not json", "[1,2,3]",
                           R"({"generation":-5,"in_step":1e400})", R"({"generation":1.5})",
                           "\xff\xfe\x00", ""}) {
    SCOPED_TRACE(junk);
    PutFile(B(".nasfs/generation.json"), junk);
    Generation g{7, 7};
    ASSERT_EQ(peers_->ReadGeneration(*backup_, &g), 0);
    EXPECT_EQ(g.generation, 0u);
    NasView v;
    ASSERT_EQ(peers_->Scan(*backup_, &v), 0);
    if (std::string(junk) != R"({"generation":1.5})") {
      EXPECT_FALSE(v.damaged.empty());
    }
    // A Note still works and moves the generation ahead.
    ASSERT_EQ(peers_->Clear(kMaster), 0);
    ASSERT_EQ(peers_->Note(kMaster, {Ch("x")}), 0);
    EXPECT_TRUE(Gen(*backup_).ahead());
    std::filesystem::remove_all(B(".nasfs/generation"));
  }
  // Junk names in the directory: ignored and reported.
  std::filesystem::create_directories(B(".nasfs/generation"));
  for (const char* name : {"g-", "g-01", "g-abc", "x-5", "g-99999999999999999999999", "s--1"})
    PutFile(B(".nasfs/generation/") + name, "");
  PutFile(B(".nasfs/generation/g-3"), "");
  std::filesystem::remove(B(".nasfs/generation.json"));
  NasView v;
  ASSERT_EQ(peers_->Scan(*backup_, &v), 0);
  EXPECT_EQ(v.gen.generation, 3u);
  EXPECT_EQ(v.damaged.size(), 6u);
  // A FIFO where the old file was: never opened (it would block), reported.
  ASSERT_EQ(::mkfifo(B(".nasfs/generation.json").c_str(), 0600), 0);
  auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(peers_->Scan(*backup_, &v), 0);
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::milliseconds(900));
}

// Marking a NAS in step races a server starting a new outage on it. Whatever
// the interleaving, the bump of a server whose log was not seen survives:
// here marking in step read the generation before the bump (the order
// Nasfs::MarkInStep uses), so it records the older generation.
TEST_F(PeersTest, MarkingInStepNeverLosesAConcurrentBump) {
  PutGen(backup_dir_, 4, 3);
  Generation seen = Gen(*backup_);  // read first...
  Peers web2(master_.get(), backup_.get(), "web2");
  ASSERT_EQ(web2.Note(kMaster, {Ch("new")}), 0);  // ...another server's outage starts
  ASSERT_EQ(peers_->MarkInStep(*backup_, seen.generation), 0);  // ...then in step as of what was read
  Generation g = Gen(*backup_);
  EXPECT_EQ(g.generation, 5u);
  EXPECT_EQ(g.in_step, 4u);
  EXPECT_TRUE(g.ahead()) << "the bump of web2's outage was lost";

  // Two servers bumping at once both land: each creates its own name.
  constexpr int kServers = 6;
  std::vector<std::unique_ptr<Peers>> servers;
  for (int i = 0; i < kServers; ++i)
    servers.push_back(std::make_unique<Peers>(master_.get(), backup_.get(), "s" + std::to_string(i)));
  std::vector<std::thread> threads;
  std::atomic<int> errors{0};
  for (auto& p : servers)
    threads.emplace_back([&, pp = p.get()] { errors += pp->Note(kMaster, {Ch("p")}) != 0; });
  for (auto& t : threads) t.join();
  EXPECT_EQ(errors.load(), 0);
  EXPECT_GE(Gen(*backup_).generation, 5u + kServers);
}

// ---- 4. Concurrent Notes ----

TEST_F(PeersTest, ConcurrentNotesListEveryPathOnce) {
  constexpr int kThreads = 8, kEach = 200;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i)
        if (peers_->Note(kMaster, {Ch("t" + std::to_string(t) + "/f" + std::to_string(i), Op::kWrite)}) != 0)
          ++errors;
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  auto c = Decode(Log(kMaster), kMaster);
  std::set<std::string> unique = PathSet(c);
  EXPECT_EQ(c.entries.size(), size_t{kThreads * kEach});
  EXPECT_EQ(unique.size(), size_t{kThreads * kEach});
  EXPECT_EQ(c.records, uint64_t{kThreads * kEach});
  EXPECT_EQ(c.torn_bytes, 0u);
  EXPECT_EQ(c.damaged, 0u);
  for (int t = 0; t < kThreads; ++t)
    for (int i = 0; i < kEach; i += 37)
      EXPECT_TRUE(unique.count("t" + std::to_string(t) + "/f" + std::to_string(i)));
}

TEST_F(PeersTest, ConcurrentNotesOfTheSamePathsRecordEachOnce) {
  constexpr int kThreads = 8, kPaths = 200;
  std::atomic<int> errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t)
    threads.emplace_back([&, t] {
      for (int i = 0; i < kPaths; ++i) {
        int k = (i + t * 25) % kPaths;  // each thread starts elsewhere
        if (peers_->Note(kMaster, {Ch("p" + std::to_string(k)), Ch("p" + std::to_string((k + 1) % kPaths))}) != 0)
          ++errors;
      }
    });
  for (auto& th : threads) th.join();
  EXPECT_EQ(errors.load(), 0);
  auto c = Decode(Log(kMaster), kMaster);
  EXPECT_EQ(c.entries.size(), size_t{kPaths});
  EXPECT_EQ(c.records, uint64_t{kPaths});
}

// ---- 5. Clear ----

TEST_F(PeersTest, ClearRemovesLogAndNoteRecreatesIt) {
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a"), Ch("b")}), 0);
  ASSERT_TRUE(Exists(Log(kMaster)));
  ASSERT_EQ(peers_->Clear(kMaster), 0);
  EXPECT_FALSE(Exists(Log(kMaster)));
  // "a" was listed before the Clear: it is new again.
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a")}), 0);
  auto c = Decode(Log(kMaster), kMaster);
  EXPECT_THAT(Paths(c), ElementsAre("a"));
  EXPECT_EQ(c.records, 1u);
}

TEST_F(PeersTest, ClearWithNothingListedMakesNoCallUnlessPresent) {
  // Left by an earlier run of web1.
  PutFile(Log(kMaster), "left over");
  ASSERT_EQ(peers_->Clear(kMaster), 0);
  EXPECT_TRUE(Exists(Log(kMaster))) << "Clear with nothing listed touched the NAS";
  ASSERT_EQ(peers_->Clear(kMaster, /*present=*/true), 0);
  EXPECT_FALSE(Exists(Log(kMaster)));
  // Clear of a missing log, present or not: fine.
  EXPECT_EQ(peers_->Clear(kMaster, /*present=*/true), 0);
  EXPECT_EQ(peers_->Clear(kBackup, /*present=*/true), 0);
}

TEST_F(PeersTest, ClearOfOneTargetLeavesTheOther) {
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a")}), 0);
  ASSERT_EQ(peers_->Note(kBackup, {Ch("b")}), 0);
  ASSERT_EQ(peers_->Clear(kBackup), 0);
  EXPECT_FALSE(Exists(Log(kBackup)));
  EXPECT_THAT(Paths(Decode(Log(kMaster), kMaster)), ElementsAre("a"));
}

// ---- 6. Scan ----

TEST_F(PeersTest, ScanFindsWhatEveryServerLeft) {
  auto nas = [&](const std::string& rel) { return B(rel); };
  PutFile(nas(".nasfs/heartbeat.web1"), R"({"seq":3,"node":"web1"})");
  PutFile(nas(".nasfs/heartbeat.web2"), R"({"seq":9,"node":"web2"})");
  PutFile(nas(".nasfs/heartbeat.web9.host.123.tmp"), "temp");
  PutFile(nas(".nasfs/heartbeat.x.tmp"), "temp");
  uint64_t seq = 1;
  std::string rec2 = journal::EncodePeerRecords(kMaster, {Ch("a"), Ch("b")}, &seq);
  std::string rec1 = journal::EncodePeerRecords(kBackup, {Ch("c")}, &seq);
  PutFile(nas(".nasfs/peers/web1/lacks-master.log"), rec2);
  PutFile(nas(".nasfs/peers/web2/lacks-master.log"), rec2 + rec2);
  PutFile(nas(".nasfs/peers/web2/lacks-backup.log"), rec1);
  PutFile(nas(".nasfs/peers/web3/lacks-master.log"), "");  // empty: lacks nothing
  PutFile(nas(".nasfs/peers/web3/claim.d/4"), "web2 1700000000000\n");
  PutFile(nas(".nasfs/peers/web1/claim.d/2"), "- 1700000000000\n");
  PutGen(backup_dir_, 8, 3);

  NasView v;
  ASSERT_EQ(peers_->Scan(*backup_, &v), 0);
  std::set<std::string> nodes;
  for (const auto& [k, _] : v.peers) nodes.insert(k);
  EXPECT_THAT(nodes, UnorderedElementsAre("web1", "web2", "web3"));
  EXPECT_EQ(v.peers["web1"].beat, R"({"seq":3,"node":"web1"})");
  EXPECT_EQ(v.peers["web2"].beat, R"({"seq":9,"node":"web2"})");
  EXPECT_EQ(v.peers["web3"].beat, "");

  EXPECT_TRUE(v.peers["web1"].lacks[0]);
  EXPECT_FALSE(v.peers["web1"].lacks[1]);
  EXPECT_EQ(v.peers["web1"].lacks_bytes[0], rec2.size());
  EXPECT_EQ(v.peers["web1"].lacks_bytes[1], 0u);
  EXPECT_TRUE(v.peers["web2"].lacks[0]);
  EXPECT_TRUE(v.peers["web2"].lacks[1]);
  EXPECT_EQ(v.peers["web2"].lacks_bytes[0], 2 * rec2.size());
  EXPECT_EQ(v.peers["web2"].lacks_bytes[1], rec1.size());
  EXPECT_FALSE(v.peers["web3"].lacks[0]);
  EXPECT_FALSE(v.peers["web3"].lacks[1]);

  EXPECT_EQ(v.peers["web3"].claimed_by, "web2");
  EXPECT_EQ(v.peers["web1"].claimed_by, "") << "released";
  EXPECT_EQ(v.gen.generation, 8u);
  EXPECT_EQ(v.gen.in_step, 3u);
  EXPECT_TRUE(v.gen.ahead());

  // The master shows none of it.
  NasView m;
  ASSERT_EQ(peers_->Scan(*master_, &m), 0);
  EXPECT_TRUE(m.peers.empty());
  EXPECT_EQ(m.gen.generation, 0u);
}

TEST_F(PeersTest, ScanSeesWhatNoteWrote) {
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a")}), 0);
  NasView v;
  ASSERT_EQ(peers_->Scan(*backup_, &v), 0);
  ASSERT_TRUE(v.peers.count("web1"));
  EXPECT_TRUE(v.peers["web1"].lacks[0]);
  EXPECT_EQ(v.peers["web1"].lacks_bytes[0], static_cast<uint64_t>(SizeOf(Log(kMaster))));
  EXPECT_TRUE(v.gen.ahead());
}

// ---- 7. ReadLog / RemoveLog ----

TEST_F(PeersTest, ReadLogAndRemoveLog) {
  journal::PeerLogContents c;
  c.records = 99;
  uint64_t bytes = 77;
  ASSERT_EQ(peers_->ReadLog(*backup_, "web2", kMaster, &c, &bytes), 0);
  EXPECT_EQ(bytes, 0u);
  EXPECT_THAT(c.entries, IsEmpty());
  EXPECT_EQ(c.records, 0u);

  // Another server's log, read from this one.
  Peers web2(master_.get(), backup_.get(), "web2");
  ASSERT_EQ(web2.Note(kMaster, {Ch("a"), Ch("b")}), 0);
  ASSERT_EQ(peers_->ReadLog(*backup_, "web2", kMaster, &c, &bytes), 0);
  EXPECT_THAT(Paths(c), ElementsAre("a", "b"));
  EXPECT_EQ(bytes, static_cast<uint64_t>(SizeOf(Log(kMaster, "web2"))));

  EXPECT_EQ(peers_->RemoveLog(*backup_, "web2", kMaster, bytes - 1), EAGAIN);
  EXPECT_TRUE(Exists(Log(kMaster, "web2")));
  EXPECT_EQ(peers_->RemoveLog(*backup_, "web2", kMaster, bytes + 1), EAGAIN);
  EXPECT_TRUE(Exists(Log(kMaster, "web2")));
  EXPECT_EQ(peers_->RemoveLog(*backup_, "web2", kMaster, bytes), 0);
  EXPECT_FALSE(Exists(Log(kMaster, "web2")));
  // Gone already: fine.
  EXPECT_EQ(peers_->RemoveLog(*backup_, "web2", kMaster, bytes), 0);
}

// ---- 8. Claims ----

TEST_F(PeersTest, ClaimAndUnclaim) {
  const std::string rel = Peers::ClaimPath("web3");
  EXPECT_EQ(rel, ".nasfs/peers/web3/claim");
  const std::string dir = B(rel + ".d");
  bool got = false;
  ASSERT_EQ(peers_->Claim(*backup_, rel, std::chrono::seconds(60), &got), 0);
  EXPECT_TRUE(got);
  EXPECT_EQ(ClaimHolder(dir), "web1");
  EXPECT_FALSE(Exists(M(rel + ".d"))) << "claimed on the other NAS";

  Peers web2(master_.get(), backup_.get(), "web2");
  got = true;
  ASSERT_EQ(web2.Claim(*backup_, rel, std::chrono::seconds(60), &got), 0);
  EXPECT_FALSE(got) << "took a fresh claim";
  EXPECT_EQ(ClaimHolder(dir), "web1");

  // Stale (ttl 0: its step has stood still as long as asked): taken over.
  ASSERT_EQ(web2.Claim(*backup_, rel, std::chrono::milliseconds(0), &got), 0);
  EXPECT_TRUE(got);
  EXPECT_EQ(ClaimHolder(dir), "web2");

  // web1 no longer holds it.
  ASSERT_EQ(peers_->Claim(*backup_, rel, std::chrono::seconds(60), &got), 0);
  EXPECT_FALSE(got);
  EXPECT_EQ(ClaimHolder(dir), "web2");

  // The holder renews: a new step, still web2's.
  ASSERT_EQ(web2.Claim(*backup_, rel, std::chrono::seconds(60), &got), 0);
  EXPECT_TRUE(got);
  EXPECT_EQ(ClaimHolder(dir), "web2");
  size_t files = 0;
  for (const auto& f : FilesUnder(dir)) {
    ++files;
    EXPECT_EQ(f.find(".tmp"), std::string::npos) << "temp file left: " << f;
  }
  EXPECT_EQ(files, 1u) << "older steps are tidied away";

  // Unclaim by a non-holder: left.
  ASSERT_EQ(peers_->Unclaim(*backup_, rel), 0);
  EXPECT_EQ(ClaimHolder(dir), "web2");
  // By the holder: released.
  ASSERT_EQ(web2.Unclaim(*backup_, rel), 0);
  EXPECT_EQ(ClaimHolder(dir), "-");
  EXPECT_EQ(web2.Unclaim(*backup_, rel), 0);
  // Free again: anyone gets it at once.
  ASSERT_EQ(peers_->Claim(*backup_, rel, std::chrono::seconds(60), &got), 0);
  EXPECT_TRUE(got);
  EXPECT_EQ(ClaimHolder(dir), "web1");
}

TEST_F(PeersTest, ClaimDirectlyUnderMetaDir) {
  bool got = false;
  ASSERT_EQ(peers_->Claim(*master_, ".nasfs/split-brain.claim", std::chrono::seconds(60), &got), 0);
  EXPECT_TRUE(got);
  EXPECT_EQ(ClaimHolder(M(".nasfs/split-brain.claim.d")), "web1");
}

// Design hole of issue 10: two servers both believed they held a stale
// claim (replace, then read back). Now a takeover is the exclusive link of
// the next step: of any number of servers racing for a free or a stale
// claim, exactly one gets it, every time.
TEST_F(PeersTest, RacingServersNeverBothHoldAClaim) {
  constexpr int kServers = 8, kRounds = 40;
  std::vector<std::unique_ptr<Peers>> servers;
  for (int i = 0; i < kServers; ++i)
    servers.push_back(std::make_unique<Peers>(master_.get(), backup_.get(), "s" + std::to_string(i)));
  const std::string rel = ".nasfs/race.claim";
  Peers dead(master_.get(), backup_.get(), "dead");
  const auto ttl = std::chrono::milliseconds(40);
  for (int round = 0; round < kRounds; ++round) {
    SCOPED_TRACE(round);
    bool stale = round % 2 == 1;
    std::filesystem::remove_all(B(rel + ".d"));
    if (stale) {
      // A holder that died: every server has watched its step stand still
      // for longer than the lease, so each may take it over.
      bool got = false;
      ASSERT_EQ(dead.Claim(*backup_, rel, std::chrono::seconds(60), &got), 0);
      ASSERT_TRUE(got);
      for (auto& p : servers) {
        ASSERT_EQ(p->Claim(*backup_, rel, std::chrono::seconds(60), &got), 0);
        ASSERT_FALSE(got);
      }
      std::this_thread::sleep_for(2 * ttl);
    }
    std::atomic<int> winners{0}, errors{0};
    std::vector<std::thread> threads;
    for (auto& p : servers)
      threads.emplace_back([&, pp = p.get()] {
        bool got = false;
        if (pp->Claim(*backup_, rel, ttl, &got) != 0) ++errors;
        if (got) ++winners;
      });
    for (auto& t : threads) t.join();
    EXPECT_EQ(errors.load(), 0);
    EXPECT_EQ(winners.load(), 1) << (stale ? "stale" : "free") << " claim: not exactly one holder";
  }
}

// A claim record that does not parse, or names a time far in the future,
// blocks nothing for longer than the lease: staleness is this server's own
// observation of the step not moving.
TEST_F(PeersTest, DamagedOrFutureClaimIsTakenOverAfterTheLease) {
  const std::string rel = Peers::ClaimPath("web3");
  for (const char* junk : {"web2 99999999999999\n", "garbage", "", "\x1b[31m 5\n"}) {
    SCOPED_TRACE(junk);
    std::filesystem::remove_all(B(rel + ".d"));
    PutFile(B(rel + ".d/7"), junk);
    bool got = true;
    ASSERT_EQ(peers_->Claim(*backup_, rel, std::chrono::milliseconds(150), &got), 0);
    EXPECT_FALSE(got) << "taken before the lease ran out";
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ASSERT_EQ(peers_->Claim(*backup_, rel, std::chrono::milliseconds(150), &got), 0);
    EXPECT_TRUE(got);
    EXPECT_EQ(ClaimHolder(B(rel + ".d")), "web1");
  }
}

// ---- 9. A failing holder ----

TEST_F(PeersTest, FailedNoteDoesNotMarkPathsListed) {
  // The log's name taken by a directory: the append fails (as root, a
  // chmod 000 would not stop it).
  ASSERT_TRUE(std::filesystem::create_directories(Log(kMaster)));
  EXPECT_NE(peers_->Note(kMaster, {Ch("a"), Ch("b")}), 0);
  // Still failing: the same paths are tried again, and fail again.
  EXPECT_NE(peers_->Note(kMaster, {Ch("a")}), 0);
  // Repaired.
  ASSERT_EQ(::rmdir(Log(kMaster).c_str()), 0);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a"), Ch("b")}), 0);
  auto c = Decode(Log(kMaster), kMaster);
  EXPECT_THAT(Paths(c), ElementsAre("a", "b"));
  EXPECT_EQ(c.records, 2u);
}

TEST_F(PeersTest, FailedNoteOnNodeDirThatIsAFile) {
  PutFile(B(".nasfs/peers/web1"), "not a directory");
  EXPECT_NE(peers_->Note(kMaster, {Ch("a")}), 0);
  ASSERT_EQ(::unlink(B(".nasfs/peers/web1").c_str()), 0);
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a")}), 0);
  EXPECT_THAT(Paths(Decode(Log(kMaster), kMaster)), ElementsAre("a"));
}

// A Note whose path rides in a batch that fails must not succeed because a
// later batch (carrying its other paths) did: batch 1 {a} times out queued
// behind a stuck worker; meanwhile Note({a, r}) waits on batch 2 {r}, which
// succeeds. That second Note may return 0 only if "a" is in the log.
TEST_F(PeersTest, NoteSharingAFailedBatchDoesNotSucceed) {
  peers_.reset();
  master_.reset();
  backup_.reset();
  master_ = std::make_unique<Backend>(Role::kMaster, master_dir_, 1, std::chrono::milliseconds(600));
  backup_ = std::make_unique<Backend>(Role::kBackup, backup_dir_, 1, std::chrono::milliseconds(600));
  ASSERT_TRUE(master_->OpenRoot());
  ASSERT_TRUE(backup_->OpenRoot());
  master_->Start();
  backup_->Start();
  peers_ = std::make_unique<Peers>(master_.get(), backup_.get(), "web1");

  // The backup's only worker, stuck.
  std::atomic<bool> release{false};
  auto stuck = backup_->Submit(
      [&release] {
        while (!release.load()) std::this_thread::sleep_for(std::chrono::milliseconds(1));
        return 0;
      },
      Clock::now() + std::chrono::seconds(30));
  while (backup_->InFlight() < 1) std::this_thread::sleep_for(std::chrono::milliseconds(1));

  int first = -1, second = -1;
  std::thread a([&] { first = peers_->Note(kMaster, {Ch("a")}); });  // leader of batch 1, queued
  auto until = Clock::now() + std::chrono::seconds(5);
  while (backup_->InFlight() < 2 && Clock::now() < until) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  EXPECT_EQ(backup_->InFlight(), 2u);
  std::thread b([&] { second = peers_->Note(kMaster, {Ch("a"), Ch("r")}); });  // "a" queued; "r" -> batch 2
  a.join();  // batch 1 missed its deadline
  release = true;  // batch 2 runs
  b.join();
  stuck->Wait(Clock::now() + std::chrono::seconds(5));
  EXPECT_EQ(first, ETIMEDOUT);
  auto c = Decode(Log(kMaster), kMaster);
  std::set<std::string> listed = PathSet(c);
  if (second == 0) {
    EXPECT_TRUE(listed.count("a")) << "Note({a, r}) returned 0 but \"a\" is not in the log (its batch failed)";
  }
  // Either way, a Note of "a" now must get it into the log.
  ASSERT_EQ(peers_->Note(kMaster, {Ch("a")}), 0);
  auto c2 = Decode(Log(kMaster), kMaster);
  std::set<std::string> listed2 = PathSet(c2);
  EXPECT_TRUE(listed2.count("a"));
}

}  // namespace
}  // namespace nasfs
