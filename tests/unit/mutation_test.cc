#include "fs/mutation.h"

#include <set>
#include <string>

#include <gtest/gtest.h>

namespace nasfs {
namespace {

// Every change but an fsync leaves something for the journal to replay onto
// a NAS that missed it.
TEST(MutationTest, EveryChangeButAnFsyncIsJournaled) {
  for (Mutation m : kAllMutations) {
    bool fsync = m == Mutation::kFsync || m == Mutation::kFsyncDir;
    EXPECT_EQ(JournalOpOf(m).has_value(), !fsync) << MutationName(m);
  }
}

TEST(MutationTest, EachKindHasItsOwnName) {
  std::set<std::string> names;
  for (Mutation m : kAllMutations) EXPECT_TRUE(names.insert(MutationName(m)).second) << MutationName(m);
  EXPECT_EQ(names.size(), std::size(kAllMutations));
  EXPECT_EQ(names.count("unknown"), 0u);
}

TEST(MutationTest, NameChangesAreTheOnesThatMoveTheirDirectory) {
  std::set<std::string> names;
  for (Mutation m : kAllMutations)
    if (ChangesNames(m)) names.insert(MutationName(m));
  EXPECT_EQ(names, (std::set<std::string>{"create", "mknod", "mkdir", "symlink", "link", "unlink", "rmdir", "rename"}));
  EXPECT_EQ(JournalOpOf(Mutation::kRename), journal::Op::kRename);
  EXPECT_EQ(JournalOpOf(Mutation::kFallocate), journal::Op::kTruncate);
  EXPECT_EQ(JournalOpOf(Mutation::kSetXattr), journal::Op::kMeta);
}

// A value outside the enum (memory damage, a bad cast) journals the widest
// change rather than nothing.
TEST(MutationTest, AValueOutOfRangeIsJournaledAsTheWidestChange) {
  auto bad = static_cast<Mutation>(200);
  EXPECT_EQ(JournalOpOf(bad), journal::Op::kRename);
  EXPECT_STREQ(MutationName(bad), "unknown");
}

}  // namespace
}  // namespace nasfs
