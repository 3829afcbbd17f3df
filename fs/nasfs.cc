#include "fs/nasfs.h"

#include <sys/stat.h>

#include <cstring>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace nasfs {

Nasfs::Nasfs(Options opts)
    : opts_(std::move(opts)),
      master_(std::make_unique<Backend>(Role::kMaster, opts_.master, opts_.backend_threads,
                                        std::chrono::milliseconds(opts_.io_timeout_ms))),
      backup_(std::make_unique<Backend>(Role::kBackup, opts_.backup, opts_.backend_threads,
                                        std::chrono::milliseconds(opts_.io_timeout_ms))),
      router_(master_.get(), backup_.get()),
      mirror_(master_.get(), backup_.get()),
      started_(std::chrono::steady_clock::now()) {
  mirror_.SetDivergenceCallback([this](const std::string& p) { OnDivergence(p); });
}

Nasfs::~Nasfs() {
  if (sync_) sync_->Stop();
}

tl::expected<void, std::string> Nasfs::Prepare() {
  for (Backend* b : {master_.get(), backup_.get()}) {
    if (auto r = b->OpenRoot(); !r)
      return tl::unexpected(fmt::format("{} {}: {}", b->name(), b->path(), std::strerror(r.error())));
  }
  struct stat ms, bs;
  if (fstat(master_->root_fd(), &ms) != 0 || fstat(backup_->root_fd(), &bs) != 0)
    return tl::unexpected(std::string("cannot stat the NAS roots"));
  if (ms.st_dev == bs.st_dev && ms.st_ino == bs.st_ino)
    return tl::unexpected(fmt::format("{} and {} are the same directory", master_->path(), backup_->path()));

  auto mf = ReadSideFacts(*master_);
  if (!mf) return tl::unexpected(mf.error());
  auto bf = ReadSideFacts(*backup_);
  if (!bf) return tl::unexpected(bf.error());
  auto plan = DecidePairing(*mf, *bf, opts_.source, master_->path(), backup_->path());
  if (!plan) return tl::unexpected(plan.error());
  plan_ = *plan;
  pair_id_ = plan_.pair_id;

  if (plan_.copy_from) {
    Backend* source = *plan_.copy_from == Role::kMaster ? master_.get() : backup_.get();
    sync_target_ = source == master_.get() ? backup_.get() : master_.get();
    // sync.json before the marker: a crash in between leaves a target that
    // is refused (no marker), never one that looks finished.
    if (auto r = WriteSyncPending(*sync_target_, source->role(), plan_.displace); !r)
      return tl::unexpected(r.error());
    sync_target_->SetState(BackendState::kSyncing, fmt::format("copy from {} pending", source->name()));
  }
  if (plan_.write_master_marker)
    if (auto r = WriteMarker(*master_, Marker{pair_id_, Role::kMaster, ""}); !r) return r;
  if (plan_.write_backup_marker)
    if (auto r = WriteMarker(*backup_, Marker{pair_id_, Role::kBackup, ""}); !r) return r;
  if (plan_.write_master_marker && plan_.write_backup_marker)
    spdlog::get("health")->info("paired {} (master) and {} (backup) as pair {}", master_->path(),
                                backup_->path(), pair_id_);
  return {};
}

void Nasfs::StartBackground() {
  master_->Start();
  backup_->Start();
  if (!plan_.copy_from) return;
  Backend* source = sync_target_ == backup_.get() ? master_.get() : backup_.get();
  if (plan_.displace)
    spdlog::get("sync")->warn("{} {} holds data nasfs never saw: what the copy replaces is kept under {}/{}/displaced/",
                              sync_target_->name(), sync_target_->path(), sync_target_->path(), kMetaDir);
  sync_ = std::make_unique<TreeSync>(source, sync_target_, &sync_mu_, plan_.displace,
                                     [this](bool ok) { OnSyncDone(ok); });
  sync_->Start();
}

void Nasfs::OnSyncDone(bool ok) {
  if (!ok) {
    spdlog::get("health")->error(
        "copy onto {} {} stopped; it resumes at the next mount. Reads stay on the source.",
        sync_target_->name(), sync_target_->path());
    return;
  }
  if (auto r = ClearSyncPending(*sync_target_); !r) {
    spdlog::get("health")->error("{}", r.error());
    return;
  }
  sync_target_->SetState(BackendState::kHealthy, "copy finished");
}

int Nasfs::ReadCall(const std::function<int(const Backend&)>& fn) {
  Backend* b = router_.Pick();
  if (!b) return EIO;
  return b->Run([fn, b] { return fn(*b); });
}

int Nasfs::Mutate(const char* what, std::initializer_list<std::string> paths, const Mirror::Op& op) {
  const std::string& first = *paths.begin();
  if (!sync_target_ || sync_target_->state() != BackendState::kSyncing)
    return mirror_.Apply(what, first, {}, op);

  std::shared_lock lk(sync_mu_);
  // sync_ is null until the walk starts after daemonizing: nothing covered.
  bool all = true, any = false;
  for (const auto& p : paths) {
    bool c = sync_ && sync_->Covers(p);
    all = all && c;
    any = any || c;
  }
  Mirror::Targets t;
  (sync_target_ == backup_.get() ? t.backup : t.master) = all;
  int r = mirror_.Apply(what, first, t, op);
  if (r != 0 || all || !any) return r;
  // A rename across the walk's position: the target got nothing, so bring
  // the covered side in line with the source now.
  lk.unlock();
  std::unique_lock x(sync_mu_);
  for (const auto& p : paths)
    if (sync_->Covers(p))
      if (int e = sync_->ReconcileTree(p))
        spdlog::get("fuse")->warn("could not reconcile '{}' onto {}: {}", p, sync_target_->name(),
                                  std::strerror(e));
  return 0;
}

std::shared_ptr<Orphan> Nasfs::FindOrphan(fuse_ino_t ino) const {
  std::lock_guard lk(orphans_mu_);
  auto it = orphans_.find(ino);
  return it == orphans_.end() ? nullptr : it->second;
}

void Nasfs::AdoptOrphan(fuse_ino_t ino, std::shared_ptr<Orphan> o) {
  std::lock_guard lk(orphans_mu_);
  orphans_[ino] = std::move(o);
}

void Nasfs::DropOrphan(fuse_ino_t ino) {
  std::lock_guard lk(orphans_mu_);
  orphans_.erase(ino);
}

int Nasfs::MutateOrphan(const char* what, const Mirror::Op& op) {
  return mirror_.Apply(what, "(unlinked file)", {}, op);
}

void Nasfs::OnDivergence(const std::string& path) {
  std::lock_guard lk(diverged_mu_);
  if (diverged_.size() < 10000) diverged_.insert(path);
}

nlohmann::json Nasfs::Status() const {
  nlohmann::json j;
  j["version"] = NASFS_VERSION;
  j["mountpoint"] = opts_.mountpoint;
  j["node"] = opts_.node;
  j["pair_id"] = pair_id_;
  j["pid"] = static_cast<long>(getpid());
  j["uptime_s"] = std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count();
  j["read_from"] = router_.ReadFromName();
  j["io_timeout_ms"] = opts_.io_timeout_ms;
  j["cache_timeout_s"] = opts_.cache_timeout_s;
  j["backends"] = nlohmann::json::array({master_->Status(), backup_->Status()});
  if (sync_)
    j["sync"] = sync_->Status();
  else
    j["sync"] = {{"state", "none"}};
  j["journal"] = {{"pending", 0}, {"dir", opts_.journal_dir}};
  {
    std::lock_guard lk(diverged_mu_);
    nlohmann::json d = nlohmann::json::array();
    for (const auto& p : diverged_) {
      if (d.size() >= 20) break;
      d.push_back(p);
    }
    j["diverged"] = {{"count", diverged_.size()}, {"paths", d}};
  }
  size_t orphans;
  {
    std::lock_guard lk(orphans_mu_);
    orphans = orphans_.size();
  }
  j["counters"] = {{"mirrored_ops", mirror_.mirrored_ops()}, {"divergences", mirror_.divergences()},
                   {"inodes", inodes_.size()}, {"open_unlinked", orphans}};
  return j;
}

}  // namespace nasfs
