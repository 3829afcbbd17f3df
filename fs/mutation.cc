#include "fs/mutation.h"

namespace nasfs {

const char* MutationName(Mutation m) {
  switch (m) {
    case Mutation::kWrite: return "write";
    case Mutation::kTruncate: return "truncate";
    case Mutation::kFallocate: return "fallocate";
    case Mutation::kSetAttr: return "setattr";
    case Mutation::kSetXattr: return "setxattr";
    case Mutation::kRemoveXattr: return "removexattr";
    case Mutation::kCreate: return "create";
    case Mutation::kMknod: return "mknod";
    case Mutation::kMkdir: return "mkdir";
    case Mutation::kSymlink: return "symlink";
    case Mutation::kLink: return "link";
    case Mutation::kUnlink: return "unlink";
    case Mutation::kRmdir: return "rmdir";
    case Mutation::kRename: return "rename";
    case Mutation::kFsync: return "fsync";
    case Mutation::kFsyncDir: return "fsyncdir";
  }
  return "unknown";
}

std::optional<journal::Op> JournalOpOf(Mutation m) {
  using journal::Op;
  switch (m) {
    case Mutation::kWrite: return Op::kWrite;
    case Mutation::kTruncate:
    case Mutation::kFallocate: return Op::kTruncate;
    case Mutation::kSetAttr:
    case Mutation::kSetXattr:
    case Mutation::kRemoveXattr: return Op::kMeta;
    case Mutation::kCreate:
    case Mutation::kMknod:
    case Mutation::kMkdir:
    case Mutation::kSymlink:
    case Mutation::kLink: return Op::kCreate;
    case Mutation::kUnlink:
    case Mutation::kRmdir: return Op::kRemove;
    case Mutation::kRename: return Op::kRename;
    case Mutation::kFsync:
    case Mutation::kFsyncDir: return std::nullopt;
  }
  // Not reached for a valid Mutation. A value out of range is treated as
  // the widest change, so it can never be lost from the journal.
  return Op::kRename;
}

bool ChangesNames(Mutation m) {
  auto op = JournalOpOf(m);
  return op && (*op == journal::Op::kCreate || *op == journal::Op::kRemove || *op == journal::Op::kRename);
}

bool ChangesData(Mutation m) {
  auto op = JournalOpOf(m);
  return op && (*op == journal::Op::kWrite || *op == journal::Op::kTruncate);
}

}  // namespace nasfs
