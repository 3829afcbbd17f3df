#include "fs/identity.h"

#include <fcntl.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace nasfs {
namespace {

std::string Short(const std::string& id) { return id.substr(0, 8); }

// Writes .nasfs/<name> durably: temp file, fsync, rename, fsync of .nasfs.
tl::expected<void, std::string> WriteMetaFile(const Backend& nas, const std::string& name,
                                              const std::string& content) {
  if (mkdirat(nas.Root()->get(), kMetaDir, 0700) != 0 && errno != EEXIST)
    return tl::unexpected(fmt::format("cannot create {}/{}: {}", nas.path(), kMetaDir, std::strerror(errno)));
  auto dir = nas.OpenBeneath(kMetaDir, O_RDONLY | O_DIRECTORY);
  if (!dir)
    return tl::unexpected(fmt::format("cannot open {}/{}: {}", nas.path(), kMetaDir, std::strerror(dir.error())));
  std::string tmp = name + ".tmp";
  auto fail = [&](const char* what) {
    return tl::unexpected(fmt::format("cannot {} {}/{}/{}: {}", what, nas.path(), kMetaDir, name, std::strerror(errno)));
  };
  auto opened = Backend::OpenBeneathAt(dir->get(), tmp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (!opened) {
    errno = opened.error();
    return fail("create");
  }
  UniqueFd f = std::move(*opened);
  if (write(f.get(), content.data(), content.size()) != static_cast<ssize_t>(content.size())) return fail("write");
  if (fsync(f.get()) != 0) return fail("fsync");
  if (renameat(dir->get(), tmp.c_str(), dir->get(), name.c_str()) != 0) return fail("rename");
  if (fsync(dir->get()) != 0) return fail("fsync directory of");
  return {};
}

}  // namespace

tl::expected<std::string, int> ReadSmallFileAt(int dirfd, const std::string& rel) {
  auto fd = Backend::OpenBeneathAt(dirfd, rel, O_RDONLY | O_NOFOLLOW);
  if (!fd) return tl::unexpected(fd.error());
  std::string out;
  char buf[4096];
  for (;;) {
    ssize_t n = read(fd->get(), buf, sizeof buf);
    if (n < 0) return tl::unexpected(errno);
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
    if (out.size() > (1 << 20)) return tl::unexpected(EFBIG);
  }
  return out;
}

tl::expected<std::optional<Marker>, std::string> ReadMarkerAt(int dirfd, const std::string& where) {
  auto id = ReadSmallFileAt(dirfd, std::string(kMetaDir) + "/" + kIdentityFile);
  if (!id) {
    if (id.error() == ENOENT) return std::nullopt;
    return tl::unexpected(fmt::format("cannot read the identity marker of {}: {}", where, std::strerror(id.error())));
  }
  auto m = ParseMarker(*id);
  if (!m)
    return tl::unexpected(fmt::format("{}/{}/{} is damaged ({}); refusing to guess which pair {} belongs to", where,
                                      kMetaDir, kIdentityFile, m.error(), where));
  return *m;
}

std::string NewPairId() {
  unsigned char b[16];
  if (getrandom(b, sizeof b, 0) != sizeof b) abort();  // no entropy: nothing sane to do
  std::string s;
  for (unsigned char c : b) s += fmt::format("{:02x}", c);
  return s;
}

tl::expected<SideFacts, std::string> ReadSideFacts(const Backend& nas) {
  SideFacts f;
  auto root = nas.Root();
  auto marker = ReadMarkerAt(root->get(), nas.path());
  if (!marker) return tl::unexpected(marker.error());
  f.marker = *marker;
  if (auto sync = ReadSmallFileAt(root->get(), std::string(kMetaDir) + "/" + kSyncFile)) {
    f.sync_pending = true;
    // Damaged: assume the worst, that the target held foreign data.
    auto s = ParseSyncPending(*sync);
    f.sync_verify = !s || s->verify_content;
  } else if (sync.error() != ENOENT) {
    // Unreadable (a FIFO planted there, a dead NAS): never take it for a
    // finished copy.
    return tl::unexpected(fmt::format("cannot read {}/{}/{}: {}", nas.path(), kMetaDir, kSyncFile,
                                      std::strerror(sync.error())));
  }
  std::vector<DirEntry> entries;
  if (int e = nas.ReadDir("", &entries))
    return tl::unexpected(fmt::format("cannot list {}: {}", nas.path(), std::strerror(e)));
  for (const auto& e : entries)
    if (e.name != "." && e.name != ".." && e.name != kMetaDir && e.name != "lost+found") {
      f.empty = false;
      break;
    }
  return f;
}

namespace {

// One NAS carries the pair's marker (as `role`), the other none: it looks
// unmounted or new, and is adopted (marked and copied onto from the marked
// one) only with -o source=<role>.
tl::expected<PairingPlan, std::string> AdoptUnmarked(const SideFacts& marked, const SideFacts& unmarked, Role role,
                                                     const std::string& source, const std::string& marked_path,
                                                     const std::string& unmarked_path) {
  const Role other = OtherRole(role);
  if (marked.marker->role != role)
    return tl::unexpected(fmt::format("{} is marked {}, not {}", marked_path, RoleName(other), RoleName(role)));
  if (source != RoleName(role))
    return tl::unexpected(fmt::format(
        "{} has no nasfs marker but {} belongs to pair {}: the {} looks unmounted or new. "
        "Mount the NAS there, or to adopt it as a new {} mount once with -o source={}",
        unmarked_path, marked_path, Short(marked.marker->pair_id), RoleName(other), RoleName(other),
        RoleName(role)));
  PairingPlan p;
  p.pair_id = marked.marker->pair_id;
  (other == Role::kBackup ? p.write_backup_marker : p.write_master_marker) = true;
  p.copy_from = role;
  p.displace = !unmarked.empty;
  return p;
}

}  // namespace

tl::expected<PairingPlan, std::string> DecidePairing(const SideFacts& m, const SideFacts& b,
                                                     const std::string& source,
                                                     const std::string& mp, const std::string& bp) {
  PairingPlan p;
  // A resumed copy continues in its direction whatever else holds.
  if (m.marker && b.marker) {
    if (m.marker->pair_id != b.marker->pair_id)
      return tl::unexpected(fmt::format(
          "{} (pair {}) and {} (pair {}) belong to different nasfs pairs; refusing to mix them", mp,
          Short(m.marker->pair_id), bp, Short(b.marker->pair_id)));
    if (m.marker->role != Role::kMaster || b.marker->role != Role::kBackup)
      return tl::unexpected(fmt::format(
          "{} is marked {} and {} is marked {}: MASTER:BACKUP given in the wrong order?", mp,
          RoleName(m.marker->role), bp, RoleName(b.marker->role)));
    p.pair_id = m.marker->pair_id;
    if (b.sync_pending) {
      p.copy_from = Role::kMaster;
      p.displace = b.sync_verify;
    } else if (m.sync_pending) {
      p.copy_from = Role::kBackup;
      p.displace = m.sync_verify;
    }
    return p;
  }
  // One side marked: it is the source of a copy onto the other, if the
  // operator said so.
  if (m.marker && !b.marker) return AdoptUnmarked(m, b, Role::kMaster, source, mp, bp);
  if (!m.marker && b.marker) return AdoptUnmarked(b, m, Role::kBackup, source, bp, mp);
  // Never paired.
  p.pair_id = NewPairId();
  p.write_master_marker = p.write_backup_marker = true;
  // An empty side is what an unmounted NAS looks like: it is never the
  // source that moves the other side's data aside.
  if (!source.empty() && (source == "master" ? m.empty : b.empty) &&
      !(source == "master" ? b.empty : m.empty))
    return tl::unexpected(fmt::format(
        "source={} but {} is empty (not mounted?) while {} holds data: refusing to move that data "
        "aside",
        source, source == "master" ? mp : bp, source == "master" ? bp : mp));
  if (source == "master" || (source.empty() && b.empty)) {
    if (m.empty) return p;  // nothing to copy
    p.copy_from = Role::kMaster;
    p.displace = !b.empty;
    return p;
  }
  if (source == "backup") {
    if (b.empty) return p;  // both empty
    p.copy_from = Role::kBackup;
    p.displace = !m.empty;
    return p;
  }
  if (m.empty)
    return tl::unexpected(fmt::format(
        "{} is empty but {} holds data, and they were never paired: mount with -o source=backup to "
        "copy the backup onto the master",
        mp, bp));
  return tl::unexpected(fmt::format(
      "{} and {} both hold data and were never paired: mount with -o source=master or "
      "-o source=backup to say which to copy onto the other (what it would overwrite or delete is "
      "kept under .nasfs/displaced/)",
      mp, bp));
}

tl::expected<void, std::string> WriteMarker(const Backend& nas, const Marker& m) {
  return WriteMetaFile(nas, kIdentityFile, FormatMarker(m));
}

tl::expected<void, std::string> WriteSyncPending(const Backend& target, Role source,
                                                 bool verify_content) {
  return WriteMetaFile(target, kSyncFile, FormatSyncPending(source, verify_content));
}

tl::expected<void, std::string> ClearSyncPending(const Backend& target) {
  auto dir = target.OpenBeneath(kMetaDir, O_RDONLY | O_DIRECTORY);
  if (!dir) return tl::unexpected(fmt::format("cannot open {}/{}", target.path(), kMetaDir));
  if (unlinkat(dir->get(), kSyncFile, 0) != 0 && errno != ENOENT)
    return tl::unexpected(fmt::format("cannot remove {}/{}/{}: {}", target.path(), kMetaDir, kSyncFile,
                                      std::strerror(errno)));
  if (fsync(dir->get()) != 0)
    return tl::unexpected(fmt::format("cannot fsync {}/{}", target.path(), kMetaDir));
  return {};
}

}  // namespace nasfs
