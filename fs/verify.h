// nasfsctl verify: compares the master's tree with the backup's, entry by
// entry, through the NAS worker pools.
//
// What is compared, for every path on either NAS (nasfs's top-level .nasfs
// and lost+found left out on both):
//   - presence ("only on master" / "only on backup"; a directory on one side
//     only is reported once, not entry by entry below it);
//   - type, permission bits (07777), uid, gid, mtime to the nanosecond;
//   - size (not for directories: a directory's size is its filesystem's
//     business), rdev (devices), symlink target;
//   - content, by xxh3-64, when the sizes match (a size difference already
//     says the content differs);
//   - extended attributes, every name and value listxattr shows (none on
//     symlinks: nasfs keeps none there).
// The root's own mtime is not compared: each NAS creates its .nasfs at its
// own instant, outside any mirrored operation. The root's other attributes
// are.
//
// Every NAS call runs on that NAS's WorkerPool under its io_timeout deadline
// (master and backup in parallel), so a hung NAS fails the verify with a
// clear error after one deadline instead of hanging it; a NAS that answers
// with a fault errno (EIO, ENOTCONN, ...) fails it too. Files are hashed a
// chunk per call (kHashChunk), so a file of any size is checked without one
// call outlasting the deadline. Verify never changes a NAS's state: the
// health monitor notices a sick NAS on its own.
//
// Writes made through the mount while a verify runs can make an entry differ
// for an instant (the two sides of a mirrored write land a few milliseconds
// apart). So an entry found different is compared again once the walk is
// done, and only what still differs then is reported.
#pragma once

#include <cstddef>
#include <stop_token>

#include <nlohmann/json.hpp>

#include "fs/backend.h"

namespace nasfs {

// Bytes of a file hashed by one NAS call.
inline constexpr size_t kVerifyHashChunk = 4u << 20;
// Reported differences above this many estimated bytes of JSON are dropped
// (truncated:true), so an answer always fits the control plane's 1 MiB.
inline constexpr size_t kVerifyAnswerBudget = 768u << 10;

// Walks both trees. Answers
//   {"match":bool, "entries_compared":N, "elapsed_s":S, "truncated":bool,
//    "unreported":N,
//    "differences":[{"path":"/a/b","what":W,"master":V|null,"backup":V|null}...]}
// with differences sorted by path. W is one of: "only on master",
// "only on backup", "type", "mode", "uid", "gid", "size", "rdev", "mtime",
// "symlink target", "content", "xattr <name>", "unreadable"; V is that
// side's value as text (null: the side has none). At most max_reported
// differences are listed (and no more than kVerifyAnswerBudget's worth);
// "truncated" says some were left out, "unreported" is how many at least
// (a differing path the walk found beyond the limit counts as one, and is
// not compared again). "match" is true only when nothing differs at all.
//
// Or {"ok":false,"error":...}: a NAS not healthy (before or after the walk:
// comparing against a NAS being replayed or copied would only report
// noise), a NAS call that timed out or faulted, or `stop` requested.
//
// Blocking (minutes on a large tree): call it from a thread of its own.
// The backends must outlive the call.
nlohmann::json VerifyTrees(Backend& master, Backend& backup, size_t max_reported,
                           std::stop_token stop = {});

}  // namespace nasfs
