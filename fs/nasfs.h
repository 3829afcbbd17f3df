// The filesystem's state, reached from every FUSE handler through
// fuse_req_userdata (never a global), so tests can run several instances.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <set>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "fs/backend.h"
#include "fs/identity.h"
#include "fs/inode_table.h"
#include "fs/mirror.h"
#include "fs/options.h"
#include "fs/router.h"
#include "fs/tree_sync.h"

namespace nasfs {

// A regular file whose name went away (unlink, or a rename over it) while
// the kernel still knew its inode, so it may be open: one fd per NAS,
// opened just before the name went, keeps it readable and writable until
// the kernel forgets the inode, as on a local filesystem. nginx sending a
// file that a deploy replaces by rename keeps sending the old one.
class Orphan {
 public:
  void Set(Role r, UniqueFd fd) {
    std::lock_guard lk(mu_);
    fd_[r == Role::kMaster ? 0 : 1] = std::move(fd);
  }
  // -1 when this NAS had no such file.
  int Fd(Role r) const {
    std::lock_guard lk(mu_);
    return fd_[r == Role::kMaster ? 0 : 1].get();
  }

 private:
  mutable std::mutex mu_;
  UniqueFd fd_[2];  // guarded by mu_
};

class Nasfs {
 public:
  explicit Nasfs(Options opts);
  ~Nasfs();

  // Start-up checks that can fail, run before daemonizing: open both NAS,
  // read their markers, decide the pairing, write markers. Errors are one
  // line for the operator.
  [[nodiscard]] tl::expected<void, std::string> Prepare();
  // After daemonizing (threads do not survive fork): starts the NAS worker
  // pools, and the background copy if the pairing asked for one.
  void StartBackground();

  const Options& opts() const { return opts_; }
  Backend& master() { return *master_; }
  Backend& backup() { return *backup_; }
  InodeTable& inodes() { return inodes_; }
  ReadRouter& router() { return router_; }

  // Runs a read-only call on the NAS the router picks. Returns EIO when none
  // can serve.
  int ReadCall(const std::function<int(const Backend&)>& fn);
  // Applies a mutation touching `paths` (1 or 2) to both NAS, honouring a
  // running copy (see TreeSync).
  int Mutate(const char* what, std::initializer_list<std::string> paths, const Mirror::Op& op);

  // Orphans, by nasfs inode number.
  std::shared_ptr<Orphan> FindOrphan(fuse_ino_t ino) const;
  void AdoptOrphan(fuse_ino_t ino, std::shared_ptr<Orphan> o);
  void DropOrphan(fuse_ino_t ino);
  // Applies a change to an orphan on both NAS (no path, so no copy
  // coverage to honour: a file without a name is never copied).
  int MutateOrphan(const char* what, const Mirror::Op& op);

  double cache_timeout() const { return opts_.cache_timeout_s; }
  nlohmann::json Status() const;

 private:
  void OnDivergence(const std::string& path);
  void OnSyncDone(bool ok);

  Options opts_;
  std::unique_ptr<Backend> master_, backup_;
  InodeTable inodes_;
  ReadRouter router_;
  Mirror mirror_;
  std::string pair_id_;
  PairingPlan plan_;
  std::chrono::steady_clock::time_point started_;

  // Lock order: sync_mu_ before InodeTable's lock. Shared for mutations
  // while a copy runs, exclusive for the copier's per-entry work.
  std::shared_mutex sync_mu_;
  std::unique_ptr<TreeSync> sync_;
  Backend* sync_target_ = nullptr;  // set before the copy starts, then const

  mutable std::mutex orphans_mu_;
  std::unordered_map<fuse_ino_t, std::shared_ptr<Orphan>> orphans_;  // guarded by orphans_mu_

  mutable std::mutex diverged_mu_;
  std::set<std::string> diverged_;  // guarded by diverged_mu_
};

// Low-level operations table (fs/ops_*.cc).
const fuse_lowlevel_ops& Operations();

}  // namespace nasfs
