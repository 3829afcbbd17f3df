// What a change made through the mount is.
//
// Each FUSE operation that changes a NAS names one Mutation. The kind fixes
// what the journal records for a NAS that misses the change, so an
// operation cannot journal nothing by a misspelt name: the switch in
// mutation.cc has no default, and the compiler (-Wswitch) names any kind it
// does not map.
#pragma once

#include <cstdint>
#include <optional>

#include "journal/journal.h"

namespace nasfs {

enum class Mutation : uint8_t {
  kWrite,
  kTruncate,
  kFallocate,
  kSetAttr,
  kSetXattr,
  kRemoveXattr,
  kCreate,
  kMknod,
  kMkdir,
  kSymlink,
  kLink,
  kUnlink,
  kRmdir,
  kRename,
  kFsync,
  kFsyncDir,
};
inline constexpr Mutation kAllMutations[] = {
    Mutation::kWrite,  Mutation::kTruncate, Mutation::kFallocate, Mutation::kSetAttr,
    Mutation::kSetXattr, Mutation::kRemoveXattr, Mutation::kCreate, Mutation::kMknod,
    Mutation::kMkdir,  Mutation::kSymlink,  Mutation::kLink,      Mutation::kUnlink,
    Mutation::kRmdir,  Mutation::kRename,   Mutation::kFsync,     Mutation::kFsyncDir,
};

// The operation's name, for logs ("write", "rename", ...).
const char* MutationName(Mutation m);
// What the journal records for a NAS that misses it; nullopt for a change
// that leaves nothing to replay (an fsync: the other NAS's copy is made
// durable by the replay itself).
std::optional<journal::Op> JournalOpOf(Mutation m);
// Whether it changes names in a directory (the directory's times move too).
bool ChangesNames(Mutation m);
// Whether it changes a file's bytes or size (every name of the file sees it).
bool ChangesData(Mutation m);

}  // namespace nasfs
