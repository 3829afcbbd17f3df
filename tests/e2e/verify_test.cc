// `nasfsctl verify`, `journal` and `replay`: verify finds every kind of
// difference made on a NAS behind nasfs's back (and nothing on a pair in
// step), refuses while a NAS is down, never holds up `status`, and stops when
// its client gives up; journal and replay on an idle mount.

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <set>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/e2e/mount_fixture.h"
#include "tests/e2e/nas_fault.h"

namespace nasfs::e2e {
namespace {

using nlohmann::json;
using Clock = std::chrono::steady_clock;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

// `nasfsctl ARGS...`, bounded.
CommandResult Ctl(std::vector<std::string> args, std::chrono::milliseconds timeout = 120s) {
  args.insert(args.begin(), NasfsctlBin());
  return RunCommand(args, Within(timeout));
}

// The command's stdout as JSON (discarded when it is not).
json Parsed(const CommandResult& r) { return json::parse(r.out, nullptr, false); }

// (path, what) of each difference a verify listed.
std::set<std::pair<std::string, std::string>> Listed(const json& answer) {
  std::set<std::pair<std::string, std::string>> out;
  if (!answer.is_object() || !answer.contains("differences")) return out;
  for (const auto& d : answer["differences"]) {
    out.emplace(d.value("path", "?"), d.value("what", "?"));
  }
  return out;
}

// The difference listed for (path, what), or null.
json Difference(const json& answer, const std::string& path, const std::string& what) {
  if (!answer.is_object() || !answer.contains("differences")) return nullptr;
  for (const auto& d : answer["differences"]) {
    if (d.value("path", "") == path && d.value("what", "") == what) return d;
  }
  return nullptr;
}

class VerifyTest : public WorkspaceTest {
 protected:
  // Faults undone first: a stopped or slow NAS would hang or slow the unmount.
  void TearDown() override {
    if (backup_nas_) backup_nas_->Cont();
    if (faultfs_) (void)faultfs_->SetFaults("");
    mount_.reset();
    backup_nas_.reset();
  }

  // nasfs over two local directories, or over a local master and a faultfs
  // backup; returns once status shows both NAS healthy.
  void Mount(bool faultfs_backup = false, MountSpec spec = {}) {
    if (faultfs_backup) {
      auto nas = std::make_unique<FaultfsNas>(ws_, "backup");
      ASSERT_TRUE(nas->ok()) << nas->error();
      faultfs_ = nas.get();
      backup_nas_ = std::move(nas);
    }
    mount_ = std::make_unique<MountedNasfs>(ws_, std::move(spec));
    ASSERT_TRUE(mount_->mounted()) << mount_->error();
    ASSERT_TRUE(WaitForStates("healthy", "healthy", 15s)) << last_status_.dump(2);
  }

  // Polls status until master and backup are in these states.
  bool WaitForStates(const std::string& master, const std::string& backup,
                     std::chrono::milliseconds within) {
    return WaitFor(
        [&] {
          auto s = Status(mount_->mountpoint(), Within(5s));
          last_status_ = s.ok() ? s.json : json{{"nasfsctl_error", s.error}};
          return s.ok() && StateOf(s.json, "master") == master &&
                 StateOf(s.json, "backup") == backup;
        },
        within, 50ms);
  }

  std::string M(const std::string& rel) const { return ws_.mnt() + "/" + rel; }
  std::string B(const std::string& rel) const { return ws_.backup() + "/" + rel; }

  // A small site, written through the mount: every kind of entry verify
  // compares, and a file larger than one hash chunk.
  void PopulateSite() {
    ASSERT_EQ(mkdir(M("site").c_str(), 0755), 0) << std::strerror(errno);
    ASSERT_EQ(mkdir(M("site/sub").c_str(), 0750), 0) << std::strerror(errno);
    for (const char* name : {"content.txt", "mode.txt", "deleted.txt", "xattr.txt", "sub/deep.txt"}) {
      ASSERT_TRUE(WriteFile(M(std::string("site/") + name), RandomBytes(rng_, 100 + rng_() % 4000)))
          << name << ": " << std::strerror(errno);
    }
    ASSERT_TRUE(WriteFile(M("site/big.bin"), RandomBytes(rng_, 9u << 20))) << std::strerror(errno);
    ASSERT_TRUE(WriteFile(M("empty.txt"), "")) << std::strerror(errno);
    ASSERT_EQ(symlink("content.txt", M("site/link").c_str()), 0) << std::strerror(errno);
    ASSERT_EQ(mkfifo(M("site/fifo").c_str(), 0640), 0) << std::strerror(errno);
    xattrs_ = setxattr(M("site/xattr.txt").c_str(), "user.verify", "master", 6, 0) == 0;
    if (!xattrs_) std::printf("no user xattrs here (%s): that case is left out\n", std::strerror(errno));
  }

  // `verify MNT --json ARGS...`: its result and its answer.
  std::pair<CommandResult, json> VerifyJson(std::vector<std::string> args = {}) {
    std::vector<std::string> argv = {"verify", mount_->mountpoint(), "--json"};
    argv.insert(argv.end(), args.begin(), args.end());
    CommandResult r = Ctl(argv);
    json j = Parsed(r);
    return {std::move(r), std::move(j)};
  }

  std::unique_ptr<FuseNas> backup_nas_;  // destroyed after the nasfs mount stacked on it
  FaultfsNas* faultfs_ = nullptr;        // backup_nas_, when it is faultfs
  std::unique_ptr<MountedNasfs> mount_;
  json last_status_;
  bool xattrs_ = false;
};

// Rewrites `path` in place with other bytes at `offset`, keeping its size,
// atime and mtime (so only its content tells).
::testing::AssertionResult ChangeContentKeepingTimes(const std::string& path, off_t offset) {
  struct stat st {};
  if (lstat(path.c_str(), &st) != 0) return ::testing::AssertionFailure() << path << ": " << std::strerror(errno);
  int fd = open(path.c_str(), O_RDWR | O_CLOEXEC);
  if (fd < 0) return ::testing::AssertionFailure() << path << ": " << std::strerror(errno);
  unsigned char c = 0;
  bool ok = pread(fd, &c, 1, offset) == 1;
  c = static_cast<unsigned char>(c ^ 0x5a);
  ok = ok && pwrite(fd, &c, 1, offset) == 1;
  close(fd);
  const timespec times[2] = {st.st_atim, st.st_mtim};
  ok = ok && utimensat(AT_FDCWD, path.c_str(), times, AT_SYMLINK_NOFOLLOW) == 0;
  if (!ok) return ::testing::AssertionFailure() << path << ": " << std::strerror(errno);
  return ::testing::AssertionSuccess();
}

TEST_F(VerifyTest, APairInStepMatches) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_NO_FATAL_FAILURE(PopulateSite());

  auto [r, answer] = VerifyJson();
  EXPECT_EQ(r.exit_code, 0) << r.Describe();
  ASSERT_TRUE(answer.is_object()) << "not a JSON object: " << r.Describe();
  EXPECT_EQ(answer.value("ok", false), true) << answer.dump(2);
  EXPECT_EQ(answer.value("match", false), true) << answer.dump(2);
  EXPECT_TRUE(answer["differences"].empty()) << answer.dump(2);
  // The root, empty.txt, site, its 5 files, link, fifo, sub and deep.txt.
  EXPECT_EQ(answer.value("entries_compared", 0), 12) << answer.dump(2);

  auto human = Ctl({"verify", mount_->mountpoint()});
  EXPECT_EQ(human.exit_code, 0) << human.Describe();
  EXPECT_TRUE(Contains(human.out, "match")) << human.Describe();
}

TEST_F(VerifyTest, EveryChangeMadeBehindNasfsIsReportedWithWhatDiffers) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  ASSERT_NO_FATAL_FAILURE(PopulateSite());
  {
    auto [r, answer] = VerifyJson();
    ASSERT_EQ(r.exit_code, 0) << "not in step before the changes: " << r.Describe();
  }

  // Behind nasfs's back, on the backup's directory. site/'s own mtime is put
  // back afterwards, so only the entries changed differ.
  struct stat site {};
  ASSERT_EQ(lstat(B("site").c_str(), &site), 0) << std::strerror(errno);
  ASSERT_TRUE(ChangeContentKeepingTimes(B("site/content.txt"), 10));
  ASSERT_TRUE(ChangeContentKeepingTimes(B("site/big.bin"), (6 << 20) + 3));  // past the first hash chunk
  ASSERT_EQ(chmod(B("site/mode.txt").c_str(), 0600), 0) << std::strerror(errno);
  ASSERT_EQ(unlink(B("site/deleted.txt").c_str()), 0) << std::strerror(errno);
  ASSERT_TRUE(WriteFile(B("site/added.txt"), "only here\n")) << std::strerror(errno);
  struct stat link {};
  ASSERT_EQ(lstat(B("site/link").c_str(), &link), 0) << std::strerror(errno);
  ASSERT_EQ(unlink(B("site/link").c_str()), 0) << std::strerror(errno);
  ASSERT_EQ(symlink("missing.txt", B("site/link").c_str()), 0) << std::strerror(errno);  // same length
  const timespec link_times[2] = {link.st_atim, link.st_mtim};
  ASSERT_EQ(utimensat(AT_FDCWD, B("site/link").c_str(), link_times, AT_SYMLINK_NOFOLLOW), 0)
      << std::strerror(errno);
  if (xattrs_) {
    ASSERT_EQ(setxattr(B("site/xattr.txt").c_str(), "user.verify", "backup", 6, 0), 0)
        << std::strerror(errno);
  }
  const timespec site_times[2] = {site.st_atim, site.st_mtim};
  ASSERT_EQ(utimensat(AT_FDCWD, B("site").c_str(), site_times, 0), 0) << std::strerror(errno);
  // Left out on both NAS: lost+found at the top (and .nasfs, whose identity
  // files differ by role anyway).
  ASSERT_EQ(mkdir(B("lost+found").c_str(), 0700), 0) << std::strerror(errno);

  auto [r, answer] = VerifyJson();
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  ASSERT_TRUE(answer.is_object()) << "not a JSON object: " << r.Describe();
  EXPECT_EQ(answer.value("match", true), false) << answer.dump(2);
  EXPECT_EQ(answer.value("truncated", true), false) << answer.dump(2);
  std::set<std::pair<std::string, std::string>> expected = {
      {"/site/content.txt", "content"},      {"/site/big.bin", "content"},
      {"/site/mode.txt", "mode"},            {"/site/deleted.txt", "only on master"},
      {"/site/added.txt", "only on backup"}, {"/site/link", "symlink target"},
  };
  if (xattrs_) expected.emplace("/site/xattr.txt", "xattr user.verify");
  EXPECT_EQ(Listed(answer), expected) << answer.dump(2);

  // Each side's value, as text.
  const json mode = Difference(answer, "/site/mode.txt", "mode");
  EXPECT_EQ(mode.value("master", ""), "0644") << mode.dump();
  EXPECT_EQ(mode.value("backup", ""), "0600") << mode.dump();
  const json link_diff = Difference(answer, "/site/link", "symlink target");
  EXPECT_EQ(link_diff.value("master", ""), "content.txt") << link_diff.dump();
  EXPECT_EQ(link_diff.value("backup", ""), "missing.txt") << link_diff.dump();
  const json added = Difference(answer, "/site/added.txt", "only on backup");
  EXPECT_TRUE(added.is_object() && added["master"].is_null()) << added.dump();
  EXPECT_EQ(added.value("backup", ""), "file") << added.dump();
  if (xattrs_) {
    const json x = Difference(answer, "/site/xattr.txt", "xattr user.verify");
    EXPECT_EQ(x.value("master", ""), "'master'") << x.dump();
    EXPECT_EQ(x.value("backup", ""), "'backup'") << x.dump();
  }

  // The same for people: one line per difference.
  auto human = Ctl({"verify", mount_->mountpoint()});
  EXPECT_EQ(human.exit_code, 1) << human.Describe();
  for (const auto& [path, what] : expected) {
    EXPECT_TRUE(Contains(human.out, path + ": " + what)) << path << " " << what << ": " << human.Describe();
  }

  // --max cuts the list, not the verdict.
  auto [cut, cut_answer] = VerifyJson({"--max", "2"});
  EXPECT_EQ(cut.exit_code, 1) << cut.Describe();
  EXPECT_EQ(cut_answer.value("match", true), false) << cut_answer.dump(2);
  EXPECT_EQ(cut_answer.value("truncated", false), true) << cut_answer.dump(2);
  EXPECT_EQ(cut_answer["differences"].size(), 2u) << cut_answer.dump(2);
  EXPECT_GE(cut_answer.value("unreported", 0), static_cast<int>(expected.size()) - 2) << cut_answer.dump(2);
}

TEST_F(VerifyTest, JournalOfAnIdleMountHasNothingPending) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  auto human = Ctl({"journal", mount_->mountpoint()}, 20s);
  EXPECT_EQ(human.exit_code, 0) << human.Describe();
  EXPECT_TRUE(Contains(human.out, "0 entries pending")) << human.Describe();

  auto j = Ctl({"journal", mount_->mountpoint(), "--json", "--limit", "5"}, 20s);
  EXPECT_EQ(j.exit_code, 0) << j.Describe();
  const json answer = Parsed(j);
  ASSERT_TRUE(answer.is_object()) << "not a JSON object: " << j.Describe();
  EXPECT_EQ(answer.value("total", -1), 0) << answer.dump(2);
  EXPECT_TRUE(answer["entries"].is_array() && answer["entries"].empty()) << answer.dump(2);

  auto status = Ctl({"status", mount_->mountpoint()}, 20s);
  EXPECT_EQ(status.exit_code, 0) << status.Describe();
  EXPECT_TRUE(Contains(status.out, "0 pending")) << status.Describe();
}

TEST_F(VerifyTest, ReplayWithNothingToReplayFailsWithAMessage) {
  ASSERT_NO_FATAL_FAILURE(Mount());
  auto r = Ctl({"replay", mount_->mountpoint()}, 40s);
  EXPECT_EQ(r.exit_code, 1) << r.Describe();
  EXPECT_TRUE(Contains(r.err, mount_->mountpoint())) << r.Describe();
  EXPECT_TRUE(r.out.empty()) << r.Describe();

  auto j = Ctl({"replay", mount_->mountpoint(), "--json"}, 40s);
  EXPECT_EQ(j.exit_code, 1) << j.Describe();
  const json answer = Parsed(j);
  ASSERT_TRUE(answer.is_object()) << "not a JSON object: " << j.Describe();
  EXPECT_EQ(answer.value("ok", true), false) << answer.dump(2);
  EXPECT_FALSE(answer.value("error", "").empty()) << answer.dump(2);
}

TEST_F(VerifyTest, VerifyRefusesWhileTheBackupIsDown) {
  ASSERT_NO_FATAL_FAILURE(Mount(/*faultfs_backup=*/true));
  ASSERT_TRUE(WriteFile(M("a.txt"), "a\n")) << std::strerror(errno);
  backup_nas_->Kill();  // a dead mount: ENOTCONN
  ASSERT_TRUE(WaitForStates("healthy", "down", 15s)) << last_status_.dump(2);

  auto [r, answer] = VerifyJson();
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  ASSERT_TRUE(answer.is_object()) << "not a JSON object: " << r.Describe();
  EXPECT_EQ(answer.value("ok", true), false) << answer.dump(2);
  EXPECT_EQ(answer.value("error", "").rfind("backup is down", 0), 0u) << answer.dump(2);

  auto human = Ctl({"verify", mount_->mountpoint()});
  EXPECT_EQ(human.exit_code, 2) << human.Describe();
  EXPECT_TRUE(Contains(human.err, "backup is down")) << human.Describe();
  EXPECT_TRUE(human.out.empty()) << human.Describe();
}

TEST_F(VerifyTest, AHungBackupFailsTheVerifyInsteadOfHangingIt) {
  ASSERT_NO_FATAL_FAILURE(Mount(/*faultfs_backup=*/true));
  ASSERT_TRUE(WriteFile(M("a.txt"), "a\n")) << std::strerror(errno);
  backup_nas_->Stop();  // every request on it hangs

  const auto t0 = Clock::now();
  auto r = Ctl({"verify", mount_->mountpoint(), "--timeout", "60"}, 30s);
  const double took_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("verify on a hung backup, after %.1f s: %s", took_s, r.err.c_str());
  EXPECT_FALSE(r.timed_out) << r.Describe();
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  // Either its first call on the backup missed the deadline, or the health
  // monitor took the backup down first.
  EXPECT_TRUE(Contains(r.err, "backup") &&
              (Contains(r.err, "timed out (io_timeout 1000 ms)") || Contains(r.err, "backup is down")))
      << r.Describe();
  EXPECT_LT(took_s, 5.0) << r.Describe();
  backup_nas_->Cont();
}

// A backup whose every operation takes a while, under a tree of `files`
// files: a verify then takes seconds.
class SlowVerifyTest : public VerifyTest {
 protected:
  void MountSlow(int files, int delay_ms) {
    ASSERT_NO_FATAL_FAILURE(Mount(/*faultfs_backup=*/true, WithOptions("io_timeout=5000")));
    for (int d = 0; d < 4; ++d) {
      ASSERT_EQ(mkdir(M(fmt::format("d{}", d)).c_str(), 0755), 0) << std::strerror(errno);
    }
    for (int i = 0; i < files; ++i) {
      ASSERT_TRUE(WriteFile(M(fmt::format("d{}/f{:03d}", i % 4, i)), RandomBytes(rng_, 200)))
          << std::strerror(errno);
    }
    ASSERT_TRUE(faultfs_->SetFaults(fmt::format("delay_ms={}", delay_ms)));
  }
};

TEST_F(SlowVerifyTest, StatusIsAnsweredWhileAVerifyRunsAndASecondVerifyIsRefused) {
  ASSERT_NO_FATAL_FAILURE(MountSlow(40, 20));
  const auto t0 = Clock::now();
  auto verify = std::async(std::launch::async, [&] { return Ctl({"verify", mount_->mountpoint(), "--json"}); });
  std::this_thread::sleep_for(300ms);

  int answered_during = 0;
  for (int i = 0; i < 3; ++i) {
    const auto s0 = Clock::now();
    auto s = Status(mount_->mountpoint(), Within(5s));
    const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - s0).count();
    EXPECT_TRUE(s.ok()) << s.error;
    EXPECT_LT(ms, 1000) << "status took " << ms << " ms while a verify ran";
    if (verify.wait_for(0s) != std::future_status::ready) ++answered_during;
  }
  auto second = Ctl({"verify", mount_->mountpoint()}, 30s);
  const bool first_still_running = verify.wait_for(0s) != std::future_status::ready;

  ASSERT_EQ(verify.wait_for(120s), std::future_status::ready);
  const CommandResult first = verify.get();
  const double took_s = std::chrono::duration<double>(Clock::now() - t0).count();
  std::printf("verify with a %d ms backup took %.1f s\n", 20, took_s);
  EXPECT_EQ(first.exit_code, 0) << first.Describe();
  EXPECT_EQ(Parsed(first).value("match", false), true) << first.Describe();
  EXPECT_GT(answered_during, 0) << "the verify ended before status was asked (" << took_s
                                << " s): make the tree larger";
  if (first_still_running) {
    EXPECT_EQ(second.exit_code, 2) << second.Describe();
    EXPECT_TRUE(Contains(second.err, "already running")) << second.Describe();
  }
}

TEST_F(SlowVerifyTest, AVerifyWhoseClientGaveUpIsStopped) {
  // About 15 s of walking if nothing stopped it.
  ASSERT_NO_FATAL_FAILURE(MountSlow(100, 30));
  auto gave_up = Ctl({"verify", mount_->mountpoint(), "--timeout", "1"}, 30s);
  EXPECT_EQ(gave_up.exit_code, 2) << gave_up.Describe();
  EXPECT_TRUE(Contains(gave_up.err, "timed out")) << gave_up.Describe();

  // The daemon stops that walk within a NAS call or two: a new verify is
  // soon taken (and given up on in turn) instead of refused as running.
  std::string last;
  const bool taken = WaitFor(
      [&] {
        auto r = Ctl({"verify", mount_->mountpoint(), "--timeout", "1"}, 30s);
        last = r.Describe();
        return r.exit_code == 2 && Contains(r.err, "timed out");
      },
      6s, 200ms);
  EXPECT_TRUE(taken) << "a verify whose client gave up still runs: " << last;
}

TEST_F(SlowVerifyTest, UnmountingDuringAVerifyStopsItAndTheDaemonExits) {
  ASSERT_NO_FATAL_FAILURE(MountSlow(100, 30));
  auto verify = std::async(std::launch::async, [&] { return Ctl({"verify", mount_->mountpoint()}, 60s); });
  std::this_thread::sleep_for(500ms);
  ASSERT_NE(verify.wait_for(0s), std::future_status::ready) << "the verify ended before the unmount";

  const auto t0 = Clock::now();
  EXPECT_EQ(mount_->Unmount(10s), "");
  const double took_s = std::chrono::duration<double>(Clock::now() - t0).count();
  EXPECT_LT(took_s, 5.0) << "the daemon waited for the verify to finish";
  ASSERT_EQ(verify.wait_for(30s), std::future_status::ready);
  const CommandResult r = verify.get();
  EXPECT_EQ(r.exit_code, 2) << r.Describe();
  EXPECT_FALSE(r.err.empty()) << r.Describe();
}

}  // namespace
}  // namespace nasfs::e2e
