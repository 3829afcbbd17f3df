// Issue 10's hostile NAS: whatever other machines and users leave on a NAS
// (junk in nasfs's own .nasfs/ files, a FIFO where a file should be, a
// symlink renamed over a name the daemon just created), nasfs reports it
// and goes on: no crash, no hang, no write outside the NAS.
//
// The NAS are plain directories here (the attacks are on their content, not
// on their servers); every scenario ends with both NAS compared.

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <xxhash.h>

#include "tests/e2e/mount_fixture.h"
#include "tests/e2e/tree_compare.h"

namespace nasfs::e2e {
namespace {

namespace fsys = std::filesystem;
using nlohmann::json;

// One record of a pending log (journal/FORMAT.md): a Missed create of
// `path` for the master.
std::string PeerLogRecord(uint64_t seq, const std::string& path) {
  auto put = [](std::string* s, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; ++i) s->push_back(static_cast<char>(v >> (8 * i)));
  };
  std::string payload;
  put(&payload, 1, 1);  // Missed
  put(&payload, 1, 1);  // target master
  put(&payload, 0, 1);  // scope entry
  put(&payload, 4, 1);  // op create
  put(&payload, 0, 1);  // flags
  for (int i = 0; i < 4; ++i) put(&payload, 0, 8);  // time, entry seq, offset, length
  put(&payload, path.size(), 4);
  payload += path;
  std::string rec;
  put(&rec, 0x314c4a4e, 4);
  put(&rec, payload.size(), 4);
  put(&rec, seq, 8);
  rec += payload;
  put(&rec, XXH3_64bits(rec.data() + 4, 12 + payload.size()), 8);
  return rec;
}

class HostileTest : public WorkspaceTest {
 protected:
  void SetUp() override {
    WorkspaceTest::SetUp();
    if (IsSkipped() || HasFatalFailure()) return;
    spec_.log_file = ws_.Path("nasfs.log");
    spec_.extra_options = "node=web1,probe_interval=100,peer_timeout=2";
  }
  void TearDown() override {
    if (mount_ && HasFailure()) {
      std::printf("---- nasfs log ----\n%s\n---- end ----\n", Tail(mount_->Log(), 80).c_str());
    }
    if (mount_) {
      EXPECT_EQ(mount_->Unmount(), "");
    }
    mount_.reset();
  }
  void Mount() {
    mount_ = std::make_unique<MountedNasfs>(ws_, spec_);
    ASSERT_TRUE(mount_->mounted()) << mount_->error();
  }
  std::string M(const std::string& rel) const { return ws_.mnt() + "/" + rel; }
  static void Put(const std::string& path, const std::string& data) {
    fsys::create_directories(fsys::path(path).parent_path());
    ASSERT_TRUE(WriteFile(path, data)) << path;
  }
  // The daemon is alive, answers status, and both NAS are healthy with reads
  // on the master within `within`.
  json Settled(std::chrono::milliseconds within) {
    json last;
    WaitFor(
        [&] {
          auto s = mount_->Status();
          last = s.ok() ? s.json : json{{"error", s.error}};
          return s.ok() && ReadFrom(last) == "master" && StateOf(last, "master") == "healthy" &&
                 StateOf(last, "backup") == "healthy";
        },
        within, 100ms);
    return last;
  }
  void ExpectAlive() { EXPECT_EQ(mount_->DaemonEnded(), "") << "nasfs died"; }

  MountSpec spec_;
  std::unique_ptr<MountedNasfs> mount_;
};

// The reproduced crash (a generation.json of the wrong types ended every
// daemon within one probe) and its kin: every file nasfs reads from a NAS
// is damaged or planted at once.
TEST_F(HostileTest, JunkInEveryNasfsFileNeverEndsTheDaemon) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_TRUE(WriteFile(M("index.html"), "site"));
  ASSERT_EQ(mkdir(M("dir").c_str(), 0755), 0);
  ASSERT_TRUE(WriteFile(M("dir/page.html"), "page"));
  json s = Settled(10s);
  ASSERT_EQ(ReadFrom(s), "master") << s.dump(2);

  for (const std::string& nas : {ws_.master(), ws_.backup()}) {
    const std::string m = nas + "/.nasfs/";
    Put(m + "generation.json", R"({"generation":"oops","in_step":null})");
    Put(m + "generation/g-abc", "");
    Put(m + "generation/g-99999999999999999999999", "");
    Put(m + "heartbeat.evil", std::string("\xff\xfe\x00junk", 7));
    Put(m + "heartbeat.other", R"({"seq":"x","time":5,"pending_master":-1,"pid":1e400})");
    Put(m + "heartbeat." + std::string(300, 'h').substr(0, 200), "{}");
    Put(m + "peers/evil/claim.d/3", "\x1b[31m garbage");
    Put(m + "peers/evil/claim.d/99999999999999999999999", "x");
    Put(m + "conflicts/junk-id/meta.json", R"({"path":5,"kept_mtime_ns":1e400,"size":-1})");
    fsys::create_directories(m + "conflicts/no-meta");
    ASSERT_EQ(mkfifo((m + "heartbeat.fifo").c_str(), 0600), 0);
    fsys::create_directories(m + "peers/fifo");
    ASSERT_EQ(mkfifo((m + "peers/fifo/lacks-master.log").c_str(), 0600), 0);
  }
  // A damaged log of another (silent) server on the backup, listing what
  // the master lacks: its records cannot be read, so the master is copied
  // afresh from the backup once the server is taken for dead.
  Put(ws_.backup() + "/.nasfs/peers/ghost/lacks-master.log",
      PeerLogRecord(1, "index.html") + std::string(64, '\x42') + PeerLogRecord(3, "dir/page.html"));
  std::this_thread::sleep_for(2s);  // 20 probes of each NAS
  ExpectAlive();
  auto st = mount_->Status();
  ASSERT_TRUE(st.ok()) << st.error;
  EXPECT_FALSE(Get(st.json, "/damage").empty()) << "no damage reported: " << st.json.dump(2);
  // Through the mount, the site works: reads, writes.
  EXPECT_EQ(ReadFile(M("index.html")).value_or("?"), "site");
  EXPECT_TRUE(WriteFile(M("new.html"), "written amid the junk"));
  auto conflicts = RunCommand({NasfsctlBin(), "conflicts", ws_.mnt(), "--json"}, Within(20s));
  EXPECT_FALSE(conflicts.timed_out) << conflicts.Describe();
  EXPECT_LE(conflicts.exit_code, 1) << conflicts.Describe();
  // The ghost's damaged log costs the master a whole-tree copy, then all
  // is back in step.
  s = Settled(40s);
  EXPECT_EQ(ReadFrom(s), "master") << s.dump(2);
  EXPECT_EQ(StateOf(s, "master"), "healthy") << s.dump(2);
  EXPECT_TRUE(WaitFor([&] { return Get(mount_->Status().json, "/sync/state") == "done"; }, 30s))
      << "no whole-tree copy followed the ghost's damaged log: " << mount_->Status().json.dump(2);
  bool reported = false;
  for (const auto& d : Get(mount_->Status().json, "/damage"))
    reported = reported || Str(Get(d, "/what")).find("ghost") != std::string::npos;
  EXPECT_TRUE(reported) << "the ghost's damaged log is not in status.damage";
  s = Settled(20s);
  ExpectAlive();
  EXPECT_EQ(ReadFile(M("new.html")).value_or("?"), "written amid the junk");
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

// A damaged identity marker is no marker of ours: the NAS is not written
// until it carries this pair's marker again, then it catches up.
TEST_F(HostileTest, ADamagedIdentityTakesTheNasOutUntilItIsRepaired) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_TRUE(WriteFile(M("a.html"), "a"));
  json s = Settled(10s);
  ASSERT_EQ(StateOf(s, "backup"), "healthy") << s.dump(2);
  const std::string id = ws_.backup() + "/.nasfs/identity.json";
  const std::string good = ReadFile(id).value_or("");
  ASSERT_FALSE(good.empty());
  Put(id, R"({"pair_id":7,"role":["backup"]})");
  EXPECT_TRUE(WaitFor([&] { return StateOf(mount_->Status().json, "backup") == "down"; }, 5s))
      << mount_->Status().json.dump(2);
  ASSERT_TRUE(WriteFile(M("b.html"), "written while the backup's marker was damaged"));
  EXPECT_FALSE(fsys::exists(ws_.backup() + "/b.html")) << "a NAS with a damaged marker was written";
  Put(id, good);
  s = Settled(20s);
  EXPECT_EQ(StateOf(s, "backup"), "healthy") << s.dump(2);
  ExpectAlive();
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

// A FIFO planted where nasfs writes its heartbeat used to block a worker
// forever: the NAS never came back. It is replaced, never opened.
TEST_F(HostileTest, AFifoPlantedAtTheHeartbeatNeverKeepsTheNasOut) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_TRUE(WriteFile(M("a.html"), "a"));
  json s = Settled(10s);
  ASSERT_EQ(ReadFrom(s), "master") << s.dump(2);
  const std::string beat = ws_.master() + "/.nasfs/heartbeat.web1";
  fsys::remove(beat);
  ASSERT_EQ(mkfifo(beat.c_str(), 0600), 0);
  // And a FIFO in the site, on the master only: verify compares it without
  // opening it.
  ASSERT_EQ(mkfifo((ws_.master() + "/pipe").c_str(), 0600), 0);
  std::this_thread::sleep_for(1s);
  s = Settled(10s);
  EXPECT_EQ(ReadFrom(s), "master") << s.dump(2);
  struct stat st;
  ASSERT_EQ(lstat(beat.c_str(), &st), 0);
  EXPECT_TRUE(S_ISREG(st.st_mode)) << "the heartbeat is still a FIFO";
  auto v = RunCommand({NasfsctlBin(), "verify", ws_.mnt()}, Within(20s));
  EXPECT_FALSE(v.timed_out) << v.Describe();
  EXPECT_EQ(v.exit_code, 1) << "verify should report the FIFO on the master only: " << v.Describe();
  ExpectAlive();
  fsys::remove(ws_.master() + "/pipe");
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

// The reproduced escape: an unprivileged user who can write a NAS directory
// creates set-id files through the mount (O_CREAT|O_EXCL, 06777, umask 0)
// while renaming a symlink to a root-owned 0600 file outside over each new
// name on the NAS. That file became 6777 in every run.
TEST_F(HostileTest, ASymlinkRacedOverNewNamesNeverChangesAFileOutsideTheNas) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  const std::string outside = ws_.Path("outside-secret");
  ASSERT_TRUE(WriteFile(outside, "secret"));
  ASSERT_EQ(chmod(outside.c_str(), 0600), 0);
  ASSERT_EQ(mkdir(M("pub").c_str(), 0777), 0);
  ASSERT_EQ(chmod(M("pub").c_str(), 0777), 0);
  constexpr int kCreates = 400;
  // The attacker, on the master NAS directly: a symlink ready for each name,
  // renamed over it the moment the name appears.
  for (int i = 0; i < kCreates; ++i)
    ASSERT_EQ(symlink(outside.c_str(), (ws_.master() + "/pub/.swap" + std::to_string(i)).c_str()), 0);
  std::atomic<bool> stop{false};
  std::atomic<long> swaps{0};
  std::thread racer([&] {
    for (int i = 0; i < kCreates && !stop; ++i) {
      const std::string name = ws_.master() + "/pub/f" + std::to_string(i);
      struct stat st;
      while (!stop && lstat(name.c_str(), &st) != 0) {
      }
      if (rename((ws_.master() + "/pub/.swap" + std::to_string(i)).c_str(), name.c_str()) == 0) ++swaps;
    }
  });
  auto out = RunInChild(
      [&] {
        umask(0);
        int made = 0;
        for (int i = 0; i < kCreates; ++i) {
          int fd = open((ws_.mnt() + "/pub/f" + std::to_string(i)).c_str(), O_CREAT | O_EXCL | O_WRONLY, 06777);
          if (fd >= 0) {
            ++made;
            close(fd);
          }
        }
        return std::to_string(made);
      },
      Within(60s, kNobody));
  stop = true;
  racer.join();
  ASSERT_TRUE(out.has_value()) << "the unprivileged child failed or timed out";
  struct stat st;
  ASSERT_EQ(stat(outside.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u) << "the file outside the NAS was chmodded through a swapped symlink";
  EXPECT_EQ(st.st_uid, 0u);
  EXPECT_EQ(ReadFile(outside).value_or(""), "secret");
  EXPECT_GT(swaps.load(), 0) << "the racer never swapped a name: the test proves nothing";
  ExpectAlive();
  std::printf("%s creates by uid 65534, %ld symlink swaps on the master\n", out->c_str(), swaps.load());
}

}  // namespace
}  // namespace nasfs::e2e
