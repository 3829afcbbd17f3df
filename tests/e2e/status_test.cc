// `nasfsctl status`: the JSON contract (read_from, backends with role, path
// and state, journal.pending), discovery of every nasfs mount, the human
// output, and that only root may ask.

#include <unistd.h>

#include <memory>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "tests/e2e/mount_fixture.h"

namespace nasfs::e2e {
namespace {

using nlohmann::json;

bool Contains(const std::string& haystack, const std::string& needle) {
  return haystack.find(needle) != std::string::npos;
}

class StatusTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NASFS_E2E_REQUIRE_MOUNTS();
    ASSERT_TRUE(ws_.ok()) << ws_.error();
  }
  void Mount(MountSpec spec = {}) {
    mount_ = std::make_unique<MountedNasfs>(ws_, std::move(spec));
    ASSERT_TRUE(mount_->mounted()) << mount_->error();
  }
  void TearDown() override { mount_.reset(); }

  Workspace ws_;
  std::unique_ptr<MountedNasfs> mount_;
};

TEST_F(StatusTest, JsonReportsReadFromMasterBothBackendsAndNoPendingJournal) {
  Mount();
  // Two empty NAS: the first-pairing copy has nothing to do; give it a moment.
  json s;
  std::string err;
  WaitFor(
      [&] {
        auto r = mount_->Status();
        err = r.error;
        s = r.json;
        return r.ok() && Get(BackendOf(s, "backup"), "/state") == "healthy";
      },
      5s, 50ms);
  ASSERT_TRUE(s.is_object()) << err;
  EXPECT_EQ(Get(s, "/ok"), true) << s.dump(2);
  EXPECT_EQ(Get(s, "/read_from"), "master") << s.dump(2);
  EXPECT_EQ(Get(s, "/mountpoint"), ws_.mnt()) << s.dump(2);
  EXPECT_EQ(Get(s, "/journal/pending"), 0) << s.dump(2);
  EXPECT_EQ(Get(s, "/journal/dir"), ws_.journal_dir()) << s.dump(2);
  EXPECT_EQ(Get(s, "/io_timeout_ms"), 1000) << s.dump(2);
  EXPECT_EQ(Get(s, "/pid"), mount_->daemon_pid()) << s.dump(2);
  ASSERT_TRUE(Get(s, "/backends").is_array()) << s.dump(2);
  EXPECT_EQ(Get(s, "/backends").size(), 2u) << s.dump(2);
  const json master = BackendOf(s, "master");
  const json backup = BackendOf(s, "backup");
  EXPECT_EQ(Get(master, "/path"), ws_.master()) << s.dump(2);
  EXPECT_EQ(Get(master, "/state"), "healthy") << s.dump(2);
  EXPECT_EQ(Get(backup, "/path"), ws_.backup()) << s.dump(2);
  EXPECT_EQ(Get(backup, "/state"), "healthy") << s.dump(2);
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  EXPECT_EQ(Get(s, "/node"), host) << "node defaults to the host name: " << s.dump(2);
  EXPECT_TRUE(Get(s, "/pair_id").is_string()) << s.dump(2);
}

TEST_F(StatusTest, OptionsGivenAtMountShowInStatus) {
  Mount(WithOptions("io_timeout=250,node=web-e2e"));
  auto r = mount_->Status();
  ASSERT_TRUE(r.ok()) << r.error;
  EXPECT_EQ(Get(r.json, "/io_timeout_ms"), 250) << r.json.dump(2);
  EXPECT_EQ(Get(r.json, "/node"), "web-e2e") << r.json.dump(2);
}

TEST_F(StatusTest, WritesThroughTheMountAreCountedAsMirroredWithoutDivergence) {
  Mount();
  auto before = mount_->Status();
  ASSERT_TRUE(before.ok()) << before.error;
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(WriteFile(ws_.mnt() + fmt::format("/f{}", i), "x"));
  auto after = mount_->Status();
  ASSERT_TRUE(after.ok()) << after.error;
  const json b = Get(before.json, "/counters/mirrored_ops");
  const json a = Get(after.json, "/counters/mirrored_ops");
  ASSERT_TRUE(a.is_number() && b.is_number()) << after.json.dump(2);
  EXPECT_GE(a.get<long>() - b.get<long>(), 5) << "5 creations + writes, counter went " << b << " -> " << a;
  EXPECT_EQ(Get(after.json, "/counters/divergences"), 0) << after.json.dump(2);
}

TEST_F(StatusTest, StatusWithoutAMountpointListsTheMount) {
  Mount();
  // Other nasfs mounts on this machine (other tests, other engineers) may be
  // unreachable and make the exit status 1; ours must be listed and fine.
  auto r = RunCommand({NasfsctlBin(), "status"}, Within(10s));
  EXPECT_FALSE(r.timed_out) << r.Describe();
  EXPECT_TRUE(r.exit_code == 0 || (r.exit_code == 1 && !Contains(r.err, ws_.mnt()))) << r.Describe();
  EXPECT_TRUE(Contains(r.out, ws_.mnt())) << "the mount is not listed: " << r.Describe();
  auto j = RunCommand({NasfsctlBin(), "status", "--json"}, Within(10s));
  EXPECT_TRUE(j.exit_code == 0 || (j.exit_code == 1 && !Contains(j.err, ws_.mnt()))) << j.Describe();
  EXPECT_TRUE(Contains(j.out, ws_.mnt())) << "the mount is not listed: " << j.Describe();
  EXPECT_FALSE(json::parse(j.out, nullptr, false).is_discarded()) << "not JSON: " << j.out;
}

TEST_F(StatusTest, HumanOutputMentionsBothNasPaths) {
  Mount();
  auto r = RunCommand({NasfsctlBin(), "status", ws_.mnt()}, Within(10s));
  EXPECT_TRUE(r.ok()) << r.Describe();
  EXPECT_TRUE(Contains(r.out, ws_.master())) << r.out;
  EXPECT_TRUE(Contains(r.out, ws_.backup())) << r.out;
  EXPECT_TRUE(Contains(r.out, "master")) << r.out;
}

TEST_F(StatusTest, ANonRootCallerIsRefused) {
  Mount();
  for (const auto& argv : std::vector<std::vector<std::string>>{
           {NasfsctlBin(), "status", ws_.mnt(), "--json"}, {NasfsctlBin(), "status", ws_.mnt()}}) {
    auto r = RunCommand(argv, Within(10s, kNobody));
    EXPECT_FALSE(r.timed_out) << r.Describe();
    EXPECT_NE(r.exit_code, 0) << "uid 65534 got a status: " << r.Describe();
    EXPECT_NE(r.exit_code, 126) << "the test could not drop privileges: " << r.Describe();
    EXPECT_FALSE(Contains(r.out, "read_from")) << r.Describe();
    EXPECT_FALSE(r.err.empty()) << "refused without a message: " << r.Describe();
  }
}

TEST_F(StatusTest, StatusOfAPathThatIsNotANasfsMountFails) {
  auto r = RunCommand({NasfsctlBin(), "status", ws_.mnt(), "--json"}, Within(10s));
  EXPECT_FALSE(r.timed_out) << r.Describe();
  EXPECT_NE(r.exit_code, 0) << r.Describe();
  EXPECT_FALSE(r.err.empty()) << r.Describe();
}

}  // namespace
}  // namespace nasfs::e2e
