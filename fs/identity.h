// The identity marker on each NAS, and the first-pairing decision.
//
// `.nasfs/identity.json` says which pair a NAS belongs to and its role. It is
// how nasfs tells its NAS from an empty mount point on the local disk (an
// unmounted NAS) or from another pair's volume: it never writes to a NAS
// whose marker is missing or foreign unless the operator said which side is
// the source (docs/ARCHITECTURE.md has the whole table).
#pragma once

#include <optional>
#include <string>

#include <tl/expected.hpp>

#include "fs/backend.h"
#include "fs/nas_files.h"

namespace nasfs {

inline constexpr const char* kIdentityFile = "identity.json";
inline constexpr const char* kSyncFile = "sync.json";  // present while a copy onto this NAS runs

// What start-up found on one NAS.
struct SideFacts {
  std::optional<Marker> marker;
  bool empty = true;         // nothing but .nasfs and lost+found
  bool sync_pending = false;  // .nasfs/sync.json: an unfinished copy onto it
  bool sync_verify = false;   // that copy must compare content (foreign data)
};

// What to do at mount.
struct PairingPlan {
  std::string pair_id;
  bool write_master_marker = false;
  bool write_backup_marker = false;
  // Copy this side onto the other in the background (nullopt: none).
  std::optional<Role> copy_from;
  // Displace what the copy would overwrite or delete (the target held data
  // nasfs never saw).
  bool displace = false;
};

// Pure decision, testable without a NAS. `source` is "", "master" or "backup".
// Errors are one line for the operator.
[[nodiscard]] tl::expected<PairingPlan, std::string> DecidePairing(const SideFacts& master,
                                                                   const SideFacts& backup,
                                                                   const std::string& source,
                                                                   const std::string& master_path,
                                                                   const std::string& backup_path);

// Reads dirfd/rel (confined beneath dirfd), at most 1 MiB; errors are errnos.
[[nodiscard]] tl::expected<std::string, int> ReadSmallFileAt(int dirfd, const std::string& rel);
// Reads and validates the identity marker beneath dirfd (a NAS root):
// nullopt when there is none, an error when it cannot be read or is
// damaged. `where` names the NAS in messages.
[[nodiscard]] tl::expected<std::optional<Marker>, std::string> ReadMarkerAt(int dirfd, const std::string& where);

// Reads the facts from a NAS (blocking; start-up only).
[[nodiscard]] tl::expected<SideFacts, std::string> ReadSideFacts(const Backend& nas);
// Creates .nasfs/ and durably writes the marker (temp file, fsync, rename).
[[nodiscard]] tl::expected<void, std::string> WriteMarker(const Backend& nas, const Marker& m);
// Durably writes or removes .nasfs/sync.json on the copy's target.
// `verify_content` is kept so a resumed copy still checks content.
[[nodiscard]] tl::expected<void, std::string> WriteSyncPending(const Backend& target, Role source,
                                                               bool verify_content);
[[nodiscard]] tl::expected<void, std::string> ClearSyncPending(const Backend& target);

std::string NewPairId();

}  // namespace nasfs
