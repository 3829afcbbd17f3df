// fs/nas_files: the parsers of what nasfs reads from a NAS. Each takes any
// bytes: valid files round-trip, and damaged ones (wrong types, numbers out
// of range, truncated, binary) are refused with a reason, never thrown on.
// tests/fuzz/nas_files_fuzz.cc runs them on arbitrary input; these are the
// cases a reader can check by eye.
#include "fs/nas_files.h"

#include "fs/log.h"

#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace nasfs {
namespace {

using ::testing::HasSubstr;

// Paths from a NAS in log lines and status messages: a newline cannot
// forge a line, an escape cannot reach a terminal, and a chain thousands of
// directories deep does not fill the status with kilobytes of one path.
TEST(ShownPathTest, EscapesControlBytesAndCutsLongPaths) {
  EXPECT_EQ(ShownPath("a/b c/d.html"), "a/b c/d.html");
  EXPECT_EQ(ShownPath("x\nERROR forged\x1b[2J\\"), "x\\x0aERROR forged\\x1b[2J\\x5c");
  EXPECT_EQ(ShownPath("caf\xc3\xa9"), "caf\xc3\xa9");  // UTF-8 kept
  std::string deep;
  for (int i = 0; i < 2000; ++i) deep += "d" + std::to_string(i) + "/";
  deep += "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9";
  const std::string shown = ShownPath(deep);
  EXPECT_LT(shown.size(), kShownPathBytes + 40);
  EXPECT_THAT(shown, HasSubstr("(" + std::to_string(deep.size()) + " bytes)"));
  EXPECT_EQ(shown.substr(0, 6), "d0/d1/");
  EXPECT_EQ(shown.substr(shown.size() - 8), "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9");
  // Never a cut inside a UTF-8 sequence.
  std::string wide;
  for (int i = 0; i < 400; ++i) wide += "\xe2\x82\xac";  // the euro sign, 3 bytes
  const std::string w = ShownPath(wide);
  const size_t mark = w.find("...(");
  ASSERT_NE(mark, std::string::npos);
  EXPECT_EQ(mark % 3, 0u);
  EXPECT_EQ((w.size() - w.find(")...") - 4) % 3, 0u);
}

TEST(NasFilesTest, MarkerRoundTripsAndRefusesDamage) {
  Marker m{"0123abcd", Role::kBackup, "2026-01-01T00:00:00.000Z"};
  auto back = ParseMarker(FormatMarker(m));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->pair_id, m.pair_id);
  EXPECT_EQ(back->role, Role::kBackup);
  EXPECT_EQ(back->created, m.created);
  for (const char* bad : {"", "{", "[]", "null", R"({"pair_id":5,"role":"master"})",
                          R"({"pair_id":"x","role":"primary"})", R"({"pair_id":"","role":"master"})",
                          R"({"role":"master"})", R"({"pair_id":"x","role":"master","created":7})"}) {
    auto r = ParseMarker(bad);
    EXPECT_FALSE(r) << "accepted: " << bad;
  }
}

TEST(NasFilesTest, SyncPendingAssumesTheWorstWhenDamaged) {
  auto s = ParseSyncPending(FormatSyncPending(Role::kMaster, false));
  ASSERT_TRUE(s) << s.error();
  EXPECT_EQ(s->source, Role::kMaster);
  EXPECT_FALSE(s->verify_content);
  EXPECT_TRUE(ParseSyncPending("{}")->verify_content) << "absent: compare content";
  EXPECT_FALSE(ParseSyncPending(R"({"verify_content":"no"})"));
}

TEST(NasFilesTest, HeartbeatFieldsAreTypedAndBounded) {
  Heartbeat h{7, "2026-01-01T00:00:00.000Z", "web1", 123, "/var/www", "master", 4, 5};
  auto back = ParseHeartbeat(FormatHeartbeat(h));
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->seq, 7u);
  EXPECT_EQ(back->node, "web1");
  EXPECT_EQ(back->pending_backup, 5u);
  // The reproduced crash's kin: wrong types and out-of-range numbers.
  for (const char* bad : {R"({"seq":"x"})", R"({"pending_master":-1})", R"({"pid":1e400})",
                          R"({"pid":18446744073709551615})", R"({"time":5})", "\xff\xfe"}) {
    EXPECT_FALSE(ParseHeartbeat(bad)) << "accepted: " << bad;
  }
  // Deep nesting is not built.
  std::string deep(100000, '[');
  EXPECT_FALSE(ParseHeartbeat(deep));
  EXPECT_THAT(ParseHeartbeat(std::string(70000, ' ') + "{}").error(), HasSubstr("larger"));
}

TEST(NasFilesTest, GenerationNamesAreStrict) {
  EXPECT_EQ(ParseGenerationName("g-0")->n, 0u);
  EXPECT_EQ(ParseGenerationName("s-18446744073709551615")->n, UINT64_MAX);
  EXPECT_TRUE(ParseGenerationName("s-12")->in_step);
  for (const char* bad : {"g-", "g-01", "g--1", "g-1x", "x-1", "g-18446744073709551616", "g1", "", "g-+1"})
    EXPECT_FALSE(ParseGenerationName(bad)) << bad;
  EXPECT_EQ(FormatGenerationName({true, 42}), "s-42");
}

TEST(NasFilesTest, ClaimRecordsAndSteps) {
  auto c = ParseClaimRecord(FormatClaimRecord({"web2", 1700000000000}));
  ASSERT_TRUE(c) << c.error();
  EXPECT_EQ(c->holder, "web2");
  EXPECT_EQ(c->unix_ms, 1700000000000);
  auto released = ParseClaimRecord(FormatClaimRecord({"", 5}));
  ASSERT_TRUE(released);
  EXPECT_EQ(released->holder, "");
  for (const char* bad : {"", "web2", "web2 x", " 5", "web2 99999999999999999999", "a\x1b[31m 5"})
    EXPECT_FALSE(ParseClaimRecord(bad)) << bad;
  EXPECT_EQ(ParseClaimStep("17"), 17u);
  EXPECT_FALSE(ParseClaimStep(".tmp.web1"));
}

// F3 of the nets: a split brain over a name that is not UTF-8 could not be
// merged (dumping its meta.json threw). The exact bytes are kept.
TEST(NasFilesTest, AConflictPathThatIsNotUtf8IsKeptExactly) {
  ConflictRecord r;
  r.id = "2026-x";
  r.path = "site/caf\xe9.html";
  r.kept_from = "backup";
  r.kind = "file";
  r.kept_mtime_ns = 123;
  std::string text = ToMetaText(r);  // must not throw
  auto back = ParseConflictMeta(text, "2026-x");
  ASSERT_TRUE(back) << back.error();
  EXPECT_EQ(back->path, r.path);
  EXPECT_EQ(back->kept_mtime_ns, 123);
  EXPECT_FALSE(ParseConflictMeta(R"({"path":"a","path_hex":"zz"})", "id"));
  EXPECT_FALSE(ParseConflictMeta(R"({"path":5})", "id"));
  EXPECT_FALSE(ParseConflictMeta(R"({"kept_mtime_ns":1e400})", "id"));
  EXPECT_FALSE(ParseConflictMeta(R"({"size":-1})", "id"));
  auto ok = ParseConflictMeta("{}", "id");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->kind, "unknown");
}

}  // namespace
}  // namespace nasfs
