#include "fs/nasfs.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <future>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace nasfs {
namespace {

// What start-up could learn about one NAS.
struct Side {
  bool ok = false;
  SideFacts facts;
  std::string error;
};

// Opens a NAS and reads its facts on a thread of its own, waiting at most
// `timeout`: this runs before daemonizing, when no pool exists yet, and a
// hung NAS must not hang the mount. A thread left stuck dies with the
// parent process at daemonizing.
Side ReadSide(Backend& nas, std::chrono::milliseconds timeout) {
  auto p = std::make_shared<std::promise<Side>>();
  auto f = p->get_future();
  std::thread([p, &nas] {
    Side s;
    if (auto r = nas.OpenRoot(); !r) {
      s.error = std::strerror(r.error());
    } else if (auto facts = ReadSideFacts(nas); !facts) {
      s.error = facts.error();
    } else {
      s.ok = true;
      s.facts = *facts;
    }
    p->set_value(std::move(s));
  }).detach();
  if (f.wait_for(timeout) != std::future_status::ready)
    return Side{false, {}, fmt::format("no answer within {} ms (hung?)", timeout.count())};
  return f.get();
}

}  // namespace

Nasfs::Nasfs(Options opts)
    : opts_(std::move(opts)),
      master_(std::make_unique<Backend>(Role::kMaster, opts_.master, opts_.backend_threads,
                                        std::chrono::milliseconds(opts_.io_timeout_ms))),
      backup_(std::make_unique<Backend>(Role::kBackup, opts_.backup, opts_.backend_threads,
                                        std::chrono::milliseconds(opts_.io_timeout_ms))),
      router_(master_.get(), backup_.get()),
      mirror_(master_.get(), backup_.get(),
              [this](Backend& b, int err, const std::string& what) {
                OnFault(b, fmt::format("{}: {}", what, std::strerror(err)));
              }),
      started_(std::chrono::steady_clock::now()) {}

Nasfs::~Nasfs() {
  for (auto& m : monitors_)
    if (m) m->Stop();
  std::vector<std::shared_ptr<TreeSync>> syncs;
  {
    std::lock_guard p(sync_ptr_mu_);
    syncs = old_syncs_;
    if (sync_) syncs.push_back(sync_);
  }
  for (auto& s : syncs) s->Stop();
}

tl::expected<void, std::string> Nasfs::Prepare() {
  auto timeout = std::chrono::milliseconds(opts_.io_timeout_ms);
  Side side[2] = {ReadSide(*master_, timeout), ReadSide(*backup_, timeout)};
  Backend* nas[2] = {master_.get(), backup_.get()};
  if (!side[0].ok && !side[1].ok)
    return tl::unexpected(fmt::format("neither NAS is usable: master {}: {}; backup {}: {}", master_->path(),
                                      side[0].error, backup_->path(), side[1].error));
  if (side[0].ok && side[1].ok) {
    struct stat ms, bs;
    if (fstat(master_->Root()->get(), &ms) == 0 && fstat(backup_->Root()->get(), &bs) == 0 &&
        ms.st_dev == bs.st_dev && ms.st_ino == bs.st_ino)
      return tl::unexpected(fmt::format("{} and {} are the same directory", master_->path(), backup_->path()));
    // A NAS without a marker beside one that has this pair's marker looks
    // unmounted (a bare mount point): start without it, never write to it.
    // source= is how an operator adopts a genuinely new NAS instead.
    bool marked[2] = {side[0].facts.marker.has_value(), side[1].facts.marker.has_value()};
    if (opts_.source.empty() && marked[0] != marked[1]) {
      int i = marked[0] ? 1 : 0;
      side[i].ok = false;
      side[i].error = fmt::format(
          "no nasfs marker (not mounted?); to adopt it as a new {} mount once with -o source={}",
          nas[i]->name(), nas[1 - i]->name());
    }
  }

  if (!side[0].ok || !side[1].ok) {
    int up = side[0].ok ? 0 : 1;
    Backend& u = *nas[up];
    Backend& d = *nas[1 - up];
    const SideFacts& f = side[up].facts;
    if (!f.marker)
      return tl::unexpected(fmt::format("{} {} is not usable ({}) and {} {} carries no nasfs marker: refusing to start on a NAS that was never paired",
                                        d.name(), d.path(), side[1 - up].error, u.name(), u.path()));
    if (f.marker->role != u.role())
      return tl::unexpected(fmt::format("{} is marked {}, not {}: MASTER:BACKUP given in the wrong order?", u.path(),
                                        RoleName(f.marker->role), u.name()));
    if (f.sync_pending)
      return tl::unexpected(fmt::format("{} {} is an unfinished copy of {} {}, which is not usable ({}): refusing to serve a partial tree",
                                        u.name(), u.path(), d.name(), d.path(), side[1 - up].error));
    pair_id_ = f.marker->pair_id;
    // What it missed while out is unknown: only a whole-tree copy brings it back.
    d.SetNeedsFullSync(true);
    d.SetLastError(side[1 - up].error);
    d.SetState(BackendState::kDown, side[1 - up].error);
    spdlog::get("health")->warn("starting without {} {}: {}", d.name(), d.path(), side[1 - up].error);
    return {};
  }

  auto plan = DecidePairing(side[0].facts, side[1].facts, opts_.source, master_->path(), backup_->path());
  if (!plan) return tl::unexpected(plan.error());
  plan_ = *plan;
  pair_id_ = plan_.pair_id;
  if (plan_.copy_from) {
    Backend& source = *plan_.copy_from == Role::kMaster ? *master_ : *backup_;
    Backend& target = Other(source);
    // sync.json before the marker: a crash in between leaves a target that
    // is refused (no marker), never one that looks finished.
    if (auto r = WriteSyncPending(target, source.role(), plan_.displace); !r) return tl::unexpected(r.error());
    target.SetNeedsFullSync(true);
    target.SetState(BackendState::kSyncing, fmt::format("copy from {} pending", source.name()));
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
  for (Backend* b : {master_.get(), backup_.get()}) {
    auto& m = monitors_[b == master_.get() ? 0 : 1];
    m = std::make_unique<HealthMonitor>(
        b, opts_.node, pair_id_, std::chrono::milliseconds(opts_.probe_interval_ms),
        [this](Backend& nas, bool ok, const std::string& err, double ms) { OnProbe(nas, ok, err, ms); });
    m->Start();
  }
  if (!plan_.copy_from) return;
  Backend& source = *plan_.copy_from == Role::kMaster ? *master_ : *backup_;
  if (plan_.displace)
    spdlog::get("sync")->warn("{} {} holds data nasfs never saw: what the copy replaces is kept under {}/{}/displaced/",
                              Other(source).name(), Other(source).path(), Other(source).path(), kMetaDir);
  std::unique_lock lk(sync_mu_);
  StartSyncLocked(source, Other(source), plan_.displace);
}

void Nasfs::StartSyncLocked(Backend& source, Backend& target, bool verify_content) {
  // The whole-tree copy carries whatever was recorded as missed; if it is
  // cut off, needs_full_sync stays set and another copy follows.
  (void)target.TakeMissed();
  target.SetState(BackendState::kSyncing, fmt::format("copying from {}", source.name()));
  Backend* t = &target;
  auto next = std::make_shared<TreeSync>(&source, &target, &sync_mu_, verify_content, /*displace=*/true,
                                         [this, t](bool ok) { OnSyncDone(*t, ok); });
  {
    std::lock_guard p(sync_ptr_mu_);
    if (sync_) old_syncs_.push_back(std::move(sync_));
    sync_ = next;
  }
  next->Start();
}

void Nasfs::OnSyncDone(Backend& target, bool ok) {
  if (ok) {
    Backend* t = &target;
    auto err = std::make_shared<std::string>();
    int r = t->Run([t, err] {
      auto c = ClearSyncPending(*t);
      if (!c) *err = c.error();
      return c ? 0 : EIO;
    });
    if (r == 0) {
      target.SetNeedsFullSync(false);
      target.SetState(BackendState::kHealthy, "copy finished");
      return;
    }
    OnFault(target, r == ETIMEDOUT ? "clearing sync.json timed out" : *err);
    return;
  }
  // The copy gives up when a NAS fails; it runs again once probes are good.
  OnFault(target, "copy stopped before the end");
}

void Nasfs::OnFault(Backend& b, const std::string& why) {
  b.SetLastError(why);
  auto s = b.state();
  if (s == BackendState::kDown) return;
  if (s == BackendState::kSyncing) b.SetNeedsFullSync(true);
  if (&b == master_.get() && s == BackendState::kHealthy && backup_->state() == BackendState::kHealthy) {
    failovers_.fetch_add(1, std::memory_order_relaxed);
    spdlog::get("health")->warn("reads move to the backup {}: master {} failed ({})", backup_->path(),
                                master_->path(), why);
  }
  b.SetState(BackendState::kDown, why);
}

void Nasfs::OnProbe(Backend& b, bool ok, const std::string& error, double latency_ms) {
  b.RecordProbe(ok, latency_ms);
  if (!ok) {
    OnFault(b, "probe: " + error);
    return;
  }
  if (b.state() == BackendState::kDown) MaybeRecover(b);
}

void Nasfs::MaybeRecover(Backend& b) {
  std::lock_guard rlk(recover_mu_);
  if (b.state() != BackendState::kDown || b.probe_streak() < opts_.probe_successes) return;
  // A call of the outage still in flight could land after the replay and
  // undo it: wait until the NAS has answered or dropped all of them.
  if (b.InFlight() > 0) return;
  Backend& o = Other(b);
  auto log = spdlog::get("replay");

  if (b.needs_full_sync()) {
    if (o.state() != BackendState::kHealthy) return;  // nothing to copy from yet
    Backend* t = &b;
    Role src = o.role();
    int r = t->Run([t, src] { return WriteSyncPending(*t, src, /*verify_content=*/true) ? 0 : EIO; });
    if (r) return;
    log->info("{} {} is back; what it missed is unknown, so it is copied afresh from {}", b.name(), b.path(), o.name());
    std::unique_lock lk(sync_mu_);
    StartSyncLocked(o, b, /*verify_content=*/true);
    return;
  }

  // Quiesce writes: no mutation runs while the missed paths are replayed,
  // so none can race the replay or slip past it.
  std::unique_lock lk(sync_mu_);
  auto paths = b.TakeMissed();
  if (paths.empty()) {
    b.SetState(BackendState::kHealthy, fmt::format("{} good probes, nothing missed", b.probe_streak()));
    return;
  }
  if (o.state() != BackendState::kHealthy) {
    b.RestoreMissed(paths);
    return;
  }
  std::sort(paths.begin(), paths.end(), [](const std::string& x, const std::string& y) { return ComparePaths(x, y) < 0; });
  b.SetState(BackendState::kRecovering, fmt::format("replaying {} missed paths from {}", paths.size(), o.name()));
  auto t0 = Clock::now();
  TreeSync replay(&o, &b, &sync_mu_, /*verify_content=*/false, /*displace=*/false, nullptr);
  std::set<std::string> parents;
  for (size_t i = 0; i < paths.size(); ++i) {
    int r = replay.ReconcileTree(paths[i]);
    if (r == 0 && !paths[i].empty()) {
      auto slash = paths[i].rfind('/');
      parents.insert(slash == std::string::npos ? "" : paths[i].substr(0, slash));
    }
    if (r) {
      b.RestoreMissed(std::vector<std::string>(paths.begin() + static_cast<long>(i), paths.end()));
      OnFault(b, fmt::format("replay of '{}': {}", paths[i], std::strerror(r)));
      return;
    }
  }
  // Entries created or removed by the replay moved their directories' mtimes.
  for (const auto& p : parents) (void)replay.ReconcileDirTimes(p);
  replayed_paths_.fetch_add(paths.size(), std::memory_order_relaxed);
  double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  b.SetState(BackendState::kHealthy, fmt::format("replayed {} missed paths from {} in {:.2f} s", paths.size(), o.name(), secs));
  if (&b == master_.get()) log->info("reads return to the master {}", b.path());
}

int Nasfs::ReadWithFailover(const std::function<int(Backend&)>& attempt) {
  Backend* b = router_.Pick();
  if (!b) return EIO;
  int r = attempt(*b);
  if (!IsFaultErrno(r)) return r;
  OnFault(*b, fmt::format("read: {}", std::strerror(r)));
  Backend& o = Other(*b);
  if (o.state() != BackendState::kHealthy) return EIO;
  retried_ops_.fetch_add(1, std::memory_order_relaxed);
  r = attempt(o);
  if (!IsFaultErrno(r)) return r;
  OnFault(o, fmt::format("read: {}", std::strerror(r)));
  return EIO;
}

int Nasfs::Mutate(const char* what, std::initializer_list<std::string> paths, const Mirror::Op& op) {
  std::shared_lock lk(sync_mu_);
  std::shared_ptr<TreeSync> s = sync_ && sync_->target()->state() == BackendState::kSyncing ? sync_ : nullptr;
  if (!s) return mirror_.Apply(what, paths, {}, op);

  bool all = true, any = false;
  for (const auto& p : paths) {
    bool c = s->Covers(p);
    all = all && c;
    any = any || c;
  }
  Mirror::Targets t;
  (s->target() == backup_.get() ? t.backup : t.master) = all;
  int r = mirror_.Apply(what, paths, t, op);
  if (r != 0 || all || !any) return r;
  // A rename across the copy's position: the target got nothing, so bring
  // the covered side in line with the source now.
  lk.unlock();
  std::unique_lock x(sync_mu_);
  for (const auto& p : paths)
    if (s->Covers(p))
      if (int e = s->ReconcileTree(p))
        spdlog::get("fuse")->warn("could not reconcile '{}' onto {}: {}", p, s->target()->name(), std::strerror(e));
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
  std::shared_lock lk(sync_mu_);
  return mirror_.Apply(what, {}, {}, op);
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
  j["probe_interval_ms"] = opts_.probe_interval_ms;
  j["cache_timeout_s"] = opts_.cache_timeout_s;
  j["backends"] = nlohmann::json::array({master_->Status(), backup_->Status()});
  std::shared_ptr<TreeSync> s;
  {
    std::lock_guard p(sync_ptr_mu_);  // not sync_mu_: a replay holds that for seconds
    s = sync_;
  }
  j["sync"] = s ? s->Status() : nlohmann::json{{"state", "none"}};
  j["journal"] = {{"pending", 0}, {"dir", opts_.journal_dir}};
  size_t orphans;
  {
    std::lock_guard lk(orphans_mu_);
    orphans = orphans_.size();
  }
  j["counters"] = {{"mirrored_ops", mirror_.mirrored_ops()}, {"divergences", mirror_.divergences()},
                   {"failovers", failovers_.load()},     {"retried_ops", retried_ops_.load()},
                   {"replayed_paths", replayed_paths_.load()}, {"inodes", inodes_.size()},
                   {"open_unlinked", orphans}};
  return j;
}

}  // namespace nasfs
