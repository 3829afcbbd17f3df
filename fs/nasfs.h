// The filesystem's state, reached from every FUSE handler through
// fuse_req_userdata (never a global), so tests can run several instances.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <mutex>
#include <vector>
#include <shared_mutex>
#include <string>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "fs/backend.h"
#include "fs/health.h"
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

  // Start-up checks that can fail, run before daemonizing: open both NAS
  // (each bounded by io_timeout: a hung NAS cannot hang the mount), read
  // their markers, decide the pairing, write markers. One NAS may be out
  // (dead, hung, or unmounted: no marker) when the other carries this
  // pair's marker: nasfs then starts with it down. Errors are one line for
  // the operator.
  [[nodiscard]] tl::expected<void, std::string> Prepare();
  // After daemonizing (threads do not survive fork): starts the NAS worker
  // pools, the health monitors, and the background copy if one is due.
  void StartBackground();

  const Options& opts() const { return opts_; }
  Backend& master() { return *master_; }
  Backend& backup() { return *backup_; }
  InodeTable& inodes() { return inodes_; }
  ReadRouter& router() { return router_; }

  // Runs a read-only call on the NAS the router picks; on a fault or a
  // missed deadline that NAS goes down and the call is retried once on the
  // other. EIO when neither can serve. Each attempt writes into its own T:
  // an abandoned attempt may still finish later, so *result is filled only
  // from an attempt that completed.
  template <typename T>
  int ReadInto(std::function<int(const Backend&, T*)> fn, T* result) {
    return ReadWithFailover([&](Backend& b) {
      auto out = std::make_shared<T>();
      Backend* nas = &b;
      int r = nas->Run([fn, out, nas] { return fn(*nas, out.get()); });
      if (r == 0) *result = std::move(*out);
      return r;
    });
  }
  // Applies a mutation touching `paths` (1 or 2) to both NAS (see Mirror),
  // honouring a running copy (see TreeSync).
  int Mutate(const char* what, std::initializer_list<std::string> paths, const Mirror::Op& op);

  // Orphans, by nasfs inode number.
  std::shared_ptr<Orphan> FindOrphan(fuse_ino_t ino) const;
  void AdoptOrphan(fuse_ino_t ino, std::shared_ptr<Orphan> o);
  void DropOrphan(fuse_ino_t ino);
  // Applies a change to an orphan on both NAS (no path, so no copy
  // coverage to honour and nothing to replay: a file without a name is
  // never copied).
  int MutateOrphan(const char* what, const Mirror::Op& op);

  double cache_timeout() const { return opts_.cache_timeout_s; }
  nlohmann::json Status() const;

 private:
  Backend& Other(const Backend& b) { return &b == master_.get() ? *backup_ : *master_; }
  int ReadWithFailover(const std::function<int(Backend&)>& attempt);
  // A NAS failed (in band or by probe): it goes down.
  void OnFault(Backend& b, const std::string& why);
  void OnProbe(Backend& b, bool ok, const std::string& error, double latency_ms);
  // Called after each good probe of a down NAS: once it has had enough good
  // probes in a row and no call of the outage is still in flight, replays
  // what it missed (or starts a whole-tree copy) and brings it back.
  void MaybeRecover(Backend& b);
  // Starts a background copy of source onto target. Caller holds sync_mu_
  // exclusively.
  void StartSyncLocked(Backend& source, Backend& target, bool verify_content);
  void OnSyncDone(Backend& target, bool ok);

  Options opts_;
  std::unique_ptr<Backend> master_, backup_;
  InodeTable inodes_;
  ReadRouter router_;
  Mirror mirror_;
  std::string pair_id_;
  PairingPlan plan_;
  std::chrono::steady_clock::time_point started_;
  std::unique_ptr<HealthMonitor> monitors_[2];

  // Lock order: sync_mu_ before Backend and InodeTable locks. Every
  // mutation holds it shared; a copy's per-entry work and a replay hold it
  // exclusively, so no write races them.
  mutable std::shared_mutex sync_mu_;
  std::shared_ptr<TreeSync> sync_;  // written under sync_mu_ and sync_ptr_mu_; the running or last copy
  mutable std::mutex sync_ptr_mu_;  // lets Status() read sync_ without waiting on sync_mu_
  std::vector<std::shared_ptr<TreeSync>> old_syncs_;  // guarded by sync_ptr_mu_; joined at exit
  std::mutex recover_mu_;  // one recovery at a time

  std::atomic<uint64_t> failovers_{0}, retried_ops_{0}, replayed_paths_{0};

  mutable std::mutex orphans_mu_;
  std::unordered_map<fuse_ino_t, std::shared_ptr<Orphan>> orphans_;  // guarded by orphans_mu_
};

// Low-level operations table (fs/ops_*.cc).
const fuse_lowlevel_ops& Operations();

}  // namespace nasfs
