#include "fs/nasfs.h"

#include <fcntl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <functional>
#include <future>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fs/log.h"

namespace nasfs {
namespace {

// What start-up could learn about one NAS.
struct Side {
  bool ok = false;
  SideFacts facts;
  std::string error;
};

// Runs fn on a thread of its own and waits at most `timeout`: start-up runs
// before daemonizing, when no pool exists yet, and a hung NAS must not hang
// the mount. nullopt when fn did not answer in time (a thread left stuck
// dies with the parent process at daemonizing) or threw. fn must own (or
// outlive the daemon in) whatever it touches.
template <typename T>
std::optional<T> RunBounded(std::chrono::milliseconds timeout, std::function<T()> fn) {
  auto p = std::make_shared<std::promise<std::optional<T>>>();
  auto f = p->get_future();
  std::thread([p, fn = std::move(fn)] {
    std::optional<T> out;
    ExceptionText what;
    (void)CatchAll([&] { out = fn(); }, &what);  // an exception: nullopt
    p->set_value(std::move(out));
  }).detach();
  if (f.wait_for(timeout) != std::future_status::ready) return std::nullopt;
  return f.get();
}

// Opens a NAS and reads its facts, bounded (see RunBounded).
Side ReadSide(Backend& nas, std::chrono::milliseconds timeout) {
  auto s = RunBounded<Side>(timeout, [&nas] {
    Side s;
    if (auto r = nas.OpenRoot(); !r) {
      s.error = std::strerror(r.error());
    } else if (auto facts = ReadSideFacts(nas); !facts) {
      s.error = facts.error();
    } else {
      s.ok = true;
      s.facts = *facts;
    }
    return s;
  });
  if (!s) return Side{false, {}, fmt::format("no answer within {} ms (hung?)", timeout.count())};
  return *s;
}

}  // namespace

Nasfs::Nasfs(Options opts)
    : opts_(std::move(opts)),
      master_(std::make_unique<Backend>(Role::kMaster, opts_.master, opts_.backend_threads, io_timeout())),
      backup_(std::make_unique<Backend>(Role::kBackup, opts_.backup, opts_.backend_threads, io_timeout())),
      router_(master_.get(), backup_.get()),
      mirror_(
          master_.get(), backup_.get(),
          [this](Backend& b, int err, const std::string& what) {
            OnFault(b, fmt::format("{}: {}", what, std::strerror(err)));
          },
          [this](Backend& b, const std::vector<journal::Change>& changes) {
            if (int e = journal_->AddMissed(Tgt(b), changes)) return JournalResult(e);
            return NotePeers(Tgt(b), changes);
          }),
      started_(std::chrono::steady_clock::now()),
      peers_(std::make_unique<Peers>(master_.get(), backup_.get(), opts_.node)) {
  // A directory's fd serves for as long as the kernel trusts our names.
  const auto ttl = std::chrono::milliseconds(static_cast<int64_t>(opts_.cache_timeout_s * 1000));
  for (Backend* b : {master_.get(), backup_.get()}) b->SetDirCacheTtl(ttl);
  // Hedged after twice the p99 but never sooner than kHedgeFloor (a
  // healthy NAS on a busy host jitters by milliseconds) nor later than
  // hedge_delay.
  const auto cap = std::chrono::milliseconds(std::max(opts_.hedge_delay_ms, 1));
  for (auto& l : read_latency_) l = std::make_shared<ReadLatency>(kHedgeFloor, cap);
}

Nasfs::~Nasfs() {
  stopping_ = true;
  for (auto& m : monitors_)
    if (m) m->Stop();
  {
    MutexLock lk(&recover_mu_);
    if (replay_thread_.joinable()) replay_thread_.join();
  }
  std::vector<std::shared_ptr<TreeSync>> syncs;
  {
    MutexLock p(&sync_ptr_mu_);
    syncs = old_syncs_;
    if (sync_) syncs.push_back(sync_);
  }
  for (auto& s : syncs) s->Stop();
}

tl::expected<void, std::string> Nasfs::Prepare() {
  journal::Options jo;
  jo.dir = opts_.journal_dir;
  jo.background = false;  // its thread starts after daemonizing
  auto j = journal::Journal::Open(jo, &recovered_);
  if (!j) return tl::unexpected(j.error());
  journal_ = std::move(*j);
  auto log = Logger("journal");
  if (recovered_.torn_bytes)
    log->info("journal {}: dropped a torn tail of {} bytes (a write cut off when nasfs stopped)", jo.dir,
              recovered_.torn_bytes);
  if (!recovered_.damage.empty()) log->error("journal {}: {}", jo.dir, recovered_.damage);
  if (auto r = PrepareSides(); !r) return r;
  return AdoptJournal();
}

tl::expected<void, std::string> Nasfs::PrepareSides() {
  auto timeout = io_timeout();
  Side side[2] = {ReadSide(*master_, timeout), ReadSide(*backup_, timeout)};
  Backend* nas[2] = {master_.get(), backup_.get()};
  if (!side[0].ok && !side[1].ok)
    return tl::unexpected(fmt::format("neither NAS is usable: master {}: {}; backup {}: {}", master_->path(),
                                      side[0].error, backup_->path(), side[1].error));
  if (auto r = CheckLayout(side[0].ok, side[1].ok); !r) return r;
  if (side[0].ok && side[1].ok) {
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
    Logger("health")->warn("starting without {} {}: {}", d.name(), d.path(), side[1 - up].error);
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
    Logger("health")->info("paired {} (master) and {} (backup) as pair {}", master_->path(),
                                backup_->path(), pair_id_);
  return {};
}

tl::expected<void, std::string> Nasfs::CheckLayout(bool master_open, bool backup_open) {
  // ParseOptions compared the paths; here the inodes, which bind mounts and
  // symlinks cannot disguise. A NAS inside the other, or the mount point or
  // the journal inside a NAS (or the journal inside the mount point), is an
  // impossible layout: refused before anything is written.
  struct Dir {
    std::string what, path;
    UniqueFd fd;
  };
  std::vector<Dir> dirs;
  if (master_open) dirs.push_back({"master", master_->path(), UniqueFd(dup(master_->Root()->get()))});
  if (backup_open) dirs.push_back({"backup", backup_->path(), UniqueFd(dup(backup_->Root()->get()))});
  dirs.push_back({"mount point", opts_.mountpoint,
                  UniqueFd(open(opts_.mountpoint.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC))});
  dirs.push_back({"journal directory", opts_.journal_dir,
                  UniqueFd(open(opts_.journal_dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC))});
  for (const auto& d : dirs)
    if (!d.fd) return tl::unexpected(fmt::format("cannot open {} {}: {}", d.what, d.path, std::strerror(errno)));
  for (const auto& inner : dirs)
    for (const auto& outer : dirs) {
      if (&inner == &outer) continue;
      // The mount point may hold the journal's parents, and anything may
      // sit above the journal; every other nesting is refused.
      bool allowed = inner.what == "mount point" && outer.what == "journal directory";
      struct stat ost;
      if (allowed || fstat(outer.fd.get(), &ost) != 0) continue;
      if (IsBeneath(inner.fd.get(), ost))
        return tl::unexpected(fmt::format("{} {} is the same as, or inside, the {} {}: refusing an impossible layout",
                                          inner.what, inner.path, outer.what, outer.path));
    }
  return {};
}

void Nasfs::SetFullSync(Backend& b, bool on) {
  b.SetNeedsFullSync(on);
  if (int e = journal_->SetFullSync(Tgt(b), on))
    Logger("journal")->error("cannot record that {} {} a whole-tree copy: {}", b.name(),
                                  on ? "needs" : "no longer needs", std::strerror(e));
}

tl::expected<void, std::string> Nasfs::AdoptOwnLogs() {
  auto log = Logger("journal");
  const char* why = recovered_.fresh ? "was empty (lost, or replaced with its disk?)" : "is damaged";
  for (Backend* b : {master_.get(), backup_.get()}) {
    Backend& holder = Other(*b);
    journal::Target t = Tgt(*b);
    if (holder.state() == BackendState::kDown) continue;  // b is then the one serving; its own losses are the holder's
    struct Read {
      int err = 0;
      journal::PeerLogContents contents;
      uint64_t bytes = 0;
    };
    Backend* h = &holder;
    std::string node = opts_.node;
    auto r = RunBounded<Read>(io_timeout(), [h, node, t] {
      Read x;
      x.err = Peers::ReadLogAt(*h, node, t, &x.contents, &x.bytes);
      return x;
    });
    if (!r || r->err) {
      // What b lacks cannot be told: only a whole-tree copy brings it back.
      std::string err = r ? std::strerror(r->err) : "no answer in time";
      log->error("journal {} {} and this server's pending log on the {} cannot be read ({}): the {} is copied "
                 "afresh from it",
                 journal_->dir(), why, holder.name(), err, b->name());
      SetFullSync(*b, true);
      b->SetState(BackendState::kDown, "what it lacks is unknown (journal " + std::string(why) + ")");
      continue;
    }
    if (r->contents.damaged > 0) {
      log->error("journal {} {} and this server's pending log on the {} holds {} unreadable records: the {} is "
                 "copied afresh from it",
                 journal_->dir(), why, holder.name(), r->contents.damaged, b->name());
      SetFullSync(*b, true);
      b->SetState(BackendState::kDown, "what it lacks is unknown (journal and pending log damaged)");
      continue;
    }
    if (r->contents.entries.empty()) continue;
    std::vector<journal::Change> changes;
    for (const auto& e : r->contents.entries) journal::AppendChanges(e.path, e.scope, e.ops, e.inodes, &changes);
    if (int e = journal_->AddMissed(t, changes))
      return tl::unexpected(fmt::format("journal {}: cannot write: {}", journal_->dir(), std::strerror(e)));
    adopted_[journal::TargetIndex(t)] = r->contents.entries.size();
    log->warn("journal {} {}: this server's pending log on the {} lists {} paths the {} lacks; they are replayed "
              "onto it before it serves reads",
              journal_->dir(), why, holder.name(), r->contents.entries.size(), b->name());
  }
  return {};
}

void Nasfs::PeersBehindAtStart(std::string behind[2]) {
  for (Backend* holder : {master_.get(), backup_.get()}) {
    // The logs of what a NAS lacks are on the other one.
    Backend& nas = Other(*holder);
    auto root = holder->Root();
    if (!root || !root->valid()) continue;  // not open: nothing to read (it is out)
    Backend* h = holder;
    auto view = RunBounded<std::pair<int, NasView>>(io_timeout(), [h] {
      std::pair<int, NasView> r;
      r.first = Peers::ScanAt(*h, &r.second);
      return r;
    });
    if (!view || view->first) {
      // Unknown: the probes read them again once the mount serves.
      Logger("replay")->warn("cannot read the other web servers' logs on the {} at start: {}", holder->name(),
                             view ? std::strerror(view->first) : "no answer in time");
      continue;
    }
    for (const auto& d : view->second.damaged) ReportDamage(*holder, d);
    behind[journal::TargetIndex(Tgt(nas))] = OthersLacking(view->second, Tgt(nas));
  }
}

tl::expected<void, std::string> Nasfs::AdoptJournal() {
  std::string owner = journal_->pair_id();
  if (auto r = CheckJournalPair(owner); !r) return r;
  // A journal that saw every change since this pair was last in step: a NAS
  // that is out now lacks exactly what it lists.
  bool continuous = !recovered_.fresh && recovered_.damage.empty() && owner == pair_id_;
  if (int e = journal_->SetPairId(pair_id_))
    return tl::unexpected(fmt::format("journal {}: cannot write: {}", journal_->dir(), std::strerror(e)));
  // One that cannot vouch (none was found: lost, or replaced with its disk;
  // or damaged) is completed from this server's own pending logs on the NAS.
  vouched_ = !recovered_.fresh && recovered_.damage.empty();
  if (!vouched_)
    if (auto r = AdoptOwnLogs(); !r) return r;
  for (Backend* b : {master_.get(), backup_.get()}) SetStateFromJournal(*b, continuous);
  // What the other web servers' logs say each NAS lacks (their writes to
  // the other NAS alone): such a NAS serves no read until they are
  // replayed, from the first request on. The probes would find the logs
  // too, but only after the mount serves: the hour soak's b, restarted,
  // read from a master that a's log listed 1,146 paths behind.
  std::string behind[2];
  PeersBehindAtStart(behind);
  if (auto r = ReconcileUnfinishedDirs(behind); !r) return r;
  KeepBehindOutOfReads(behind);
  if (master_->state() != BackendState::kHealthy && backup_->state() != BackendState::kHealthy)
    return tl::unexpected(fmt::format("neither NAS can serve: master {}, backup {}", StateName(master_->state()),
                                      StateName(backup_->state())));
  return {};
}

tl::expected<void, std::string> Nasfs::CheckJournalPair(const std::string& owner) {
  if (owner.empty() || owner == pair_id_) return {};
  auto st = journal_->stats();
  if (st.pending[0] + st.pending[1] > 0 || st.full_sync[0] || st.full_sync[1])
    return tl::unexpected(fmt::format(
        "journal {} holds {} changes for NAS pair {}, not for this pair {}: it belongs to other NAS; move it "
        "away (or give -o journal=) to start",
        journal_->dir(), st.pending[0] + st.pending[1], owner, pair_id_));
  Logger("journal")->warn("journal {} belonged to NAS pair {} and holds nothing: it now serves pair {}",
                          journal_->dir(), owner, pair_id_);
  return {};
}

void Nasfs::SetStateFromJournal(Backend& b, bool continuous) {
  journal::Target t = Tgt(b);
  if (b.state() == BackendState::kDown) {
    bool full = !continuous || journal_->full_sync(t);
    SetFullSync(b, full);
    if (!full)
      Logger("journal")->info("{} is out; the journal lists the {} changes it lacks", b.name(),
                              journal_->stats().pending[journal::TargetIndex(t)]);
  } else if (b.state() == BackendState::kSyncing) {
    SetFullSync(b, true);
  } else if ((continuous && journal_->full_sync(t)) || (!recovered_.damage.empty() && journal_->HasPending(t))) {
    // An unfinished copy, or a damaged journal that may have lost more of
    // what this NAS lacks than it still lists.
    SetFullSync(b, true);
    b.SetState(BackendState::kDown, journal_->full_sync(t) && recovered_.damage.empty()
                                        ? "a whole-tree copy onto it never finished"
                                        : "the journal of what it lacks is damaged: it is copied afresh");
  } else if ((continuous || adopted_[journal::TargetIndex(t)] > 0) && journal_->HasPending(t)) {
    b.SetState(BackendState::kDown,
               fmt::format("{} journaled changes to replay first", journal_->stats().pending[journal::TargetIndex(t)]));
  }
}

tl::expected<void, std::string> Nasfs::ReconcileUnfinishedDirs(const std::string behind[2]) {
  // Directories being written when nasfs stopped may differ between the NAS.
  // The side that carried writes alone (if any) is the source; otherwise the
  // master is, unless other servers' writes are missing on it.
  if (recovered_.unfinished_dirs.empty()) return {};
  bool master_behind = master_->state() != BackendState::kHealthy || master_->needs_full_sync() ||
                       journal_->HasPending(journal::kMaster) || !behind[0].empty();
  Backend& target = master_behind ? *master_ : *backup_;
  if (!target.needs_full_sync()) {
    std::vector<journal::Change> changes;
    for (const auto& d : recovered_.unfinished_dirs)
      changes.push_back({d, journal::Scope::kShallow, journal::Op::kCrash, 0, 0, {}});
    if (int e = journal_->AddMissed(Tgt(target), changes))
      return tl::unexpected(fmt::format("journal {}: cannot write: {}", journal_->dir(), std::strerror(e)));
    if (target.state() == BackendState::kHealthy)
      target.SetState(BackendState::kDown,
                      fmt::format("{} directories written when nasfs stopped are reconciled first", changes.size()));
    Logger("journal")->warn("nasfs stopped while {} directories were being written: {} is reconciled to {} there",
                            changes.size(), target.name(), Other(target).name());
  }
  journal_->RetireRecovered(recovered_.unfinished_dirs);
  return {};
}

void Nasfs::KeepBehindOutOfReads(const std::string behind[2]) {
  // Only while the other NAS serves, and is not itself behind (a split
  // brain: the probes find it and merge); a NAS that alone can serve
  // does, as ServeAloneIfOnlyPeersPending rules later.
  for (Backend* b : {master_.get(), backup_.get()}) {
    int i = journal::TargetIndex(Tgt(*b)), o = 1 - i;
    if (b->state() != BackendState::kHealthy || behind[i].empty() || !behind[o].empty() ||
        Other(*b).state() != BackendState::kHealthy)
      continue;
    Logger("journal")->warn("web servers {} hold writes the {} lacks: reads stay off it until they are replayed",
                            behind[i], b->name());
    b->SetState(BackendState::kDown, fmt::format("web servers {} hold writes it lacks: replayed first", behind[i]));
  }
}

void Nasfs::StartBackground() {
  journal_->StartBackground();
  master_->Start();
  backup_->Start();
  for (Backend* b : {master_.get(), backup_.get()}) {
    auto& m = monitors_[b == master_.get() ? 0 : 1];
    m = std::make_unique<HealthMonitor>(
        b, opts_.node, pair_id_, std::chrono::milliseconds(opts_.probe_interval_ms),
        [this](Backend& nas, bool ok, const std::string& err, double ms) { OnProbe(nas, ok, err, ms); },
        [this](uint64_t seq) {
          auto st = journal_->stats();
          return FormatHeartbeat(Heartbeat{seq, NowIso8601(), opts_.node, static_cast<int64_t>(getpid()),
                                           opts_.mountpoint, router_.ReadFromName(), st.pending[0],
                                           st.pending[1]});
        });
  }
  // A restart during an outage: the logs on the shared NAS list what the
  // journal holds (a crash between the two records is healed here).
  for (Backend* b : {master_.get(), backup_.get()})
    if (journal_->HasPending(Tgt(*b)) && Other(*b).state() == BackendState::kHealthy)
      if (int e = NoteAllPending(Tgt(*b)))
        Logger("replay")->warn("cannot list what the {} lacks on the {} for the other web servers: {}",
                                    b->name(), Other(*b).name(), std::strerror(e));
  for (auto& m : monitors_) m->Start();
  if (!plan_.copy_from) return;
  Backend& source = *plan_.copy_from == Role::kMaster ? *master_ : *backup_;
  if (plan_.displace)
    Logger("sync")->warn("{} {} holds data nasfs never saw: what the copy replaces is kept under {}/{}/displaced/",
                              Other(source).name(), Other(source).path(), Other(source).path(), kMetaDir);
  WriterLock lk(&sync_mu_);
  StartSyncLocked(source, Other(source), plan_.displace);
}

void Nasfs::StartSyncLocked(Backend& source, Backend& target, bool verify_content) {
  // The whole-tree copy carries whatever the journal lists; if it is cut
  // off, needs_full_sync stays set and another copy follows.
  for (const auto& e : journal_->PendingFor(Tgt(target))) journal_->Done(Tgt(target), e.path, e.seq);
  target.SetState(BackendState::kSyncing, fmt::format("copying from {}", source.name()));
  Backend* t = &target;
  auto next = std::make_shared<TreeSync>(&source, &target, &sync_mu_, verify_content, /*displace=*/true,
                                         [this, t](bool ok) { OnSyncDone(*t, ok); });
  next->SetWriteTracker(&writes_);
  {
    MutexLock p(&sync_ptr_mu_);
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
      // Healthy first: a crash before the flag is cleared only costs
      // another copy.
      target.SetState(BackendState::kHealthy, "copy finished");
      SetFullSync(target, false);
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
  if (s != BackendState::kDown) {
    if (s == BackendState::kSyncing) SetFullSync(b, true);
    if (&b == master_.get() && s == BackendState::kHealthy && backup_->state() == BackendState::kHealthy) {
      failovers_.fetch_add(1, std::memory_order_relaxed);
      Logger("health")->warn("reads move to the backup {}: master {} failed ({})", backup_->path(),
                             master_->path(), why);
    }
    b.SetState(BackendState::kDown, why);
  }
  // Also when b was down already: another thread may have taken it down a
  // moment ago and not yet ruled on the other NAS, and this caller (a read
  // failing over) looks at the other NAS next.
  (void)ServeAloneIfOnlyPeersPending(Other(b));
}

bool Nasfs::ServeAloneIfOnlyPeersPending(Backend& b) {
  Backend& o = Other(b);
  if (b.state() != BackendState::kRecovering || o.state() != BackendState::kDown || journal_->HasPending(Tgt(b)))
    return false;
  if (!b.SetStateIf(BackendState::kRecovering, BackendState::kHealthy,
                    fmt::format("serves alone: the {} is down", o.name())))
    return b.state() == BackendState::kHealthy;  // another thread's ruling, the same
  Logger("health")->warn("the {} went out while the {} waited only for other web servers' replays: the {} serves "
                         "alone (it holds every write of this server; the others' newest writes reach it when they "
                         "replay)",
                         o.name(), b.name(), b.name());
  return true;
}

void Nasfs::OnProbe(Backend& b, bool ok, const std::string& error, double latency_ms) {
  b.RecordProbe(ok, latency_ms);
  if (!ok) {
    OnFault(b, "probe: " + error);
    return;
  }
  NasView view;
  if (ObservePeers(b, &view) == 0) WatchPeers(b, view);
  if (b.state() == BackendState::kDown) MaybeRecover(b);
}

void Nasfs::MaybeRecover(Backend& b, bool forced) {
  MutexLock rlk(&recover_mu_);
  if (b.state() != BackendState::kDown || (!forced && b.probe_streak() < opts_.probe_successes)) return;
  // A call of the outage still in flight could land after the replay and
  // undo it: wait until the NAS has answered or dropped all of them.
  if (b.InFlight() > 0) return;
  Backend& o = Other(b);
  auto log = Logger("replay");

  if (b.needs_full_sync()) {
    if (o.state() != BackendState::kHealthy) return;  // nothing to copy from yet
    Backend* t = &b;
    Role src = o.role();
    int r = t->Run([t, src] { return WriteSyncPending(*t, src, /*verify_content=*/true) ? 0 : EIO; });
    if (r) return;
    log->info("{} {} is back; what it missed is unknown, so it is copied afresh from {}", b.name(), b.path(), o.name());
    WriterLock lk(&sync_mu_);
    StartSyncLocked(o, b, /*verify_content=*/true);
    return;
  }
  if (replay_running_) return;
  // What other web servers' logs on o say b lacks, and a split brain, are
  // the replay thread's to wait for, take over or merge.
  bool others = false, split = false;
  if (o.state() == BackendState::kHealthy) {
    NasView v;
    if (ObservePeers(o, &v) != 0) return;  // the probe of o will tell
    for (const auto& [node, seen] : v.peers)
      others = others || (node != opts_.node && seen.lacks[journal::TargetIndex(Tgt(b))]);
    split = SplitBrainDetected(b, o);
  }
  {
    // No mutation holds sync_mu_ now, so none is between seeing this NAS
    // down and journaling what it skips: from here every write either
    // reaches it or is journaled for it.
    WriterLock lk(&sync_mu_);
    if (!journal_->HasPending(Tgt(b)) && !others && !split) {
      if (int e = peers_->Clear(Tgt(b))) {
        log->warn("cannot remove this server's log of what the {} lacked: {}", b.name(), std::strerror(e));
        return;
      }
      b.SetState(BackendState::kHealthy, fmt::format("{} good probes, nothing missed", b.probe_streak()));
      if (&b == master_.get()) log->info("reads return to the master {}", b.path());
      return;
    }
    if (o.state() != BackendState::kHealthy) return;  // nothing to replay from yet
    b.SetState(BackendState::kRecovering,
               split ? std::string("split brain: both NAS took writes the other lacks")
               : others ? std::string("other web servers hold writes it lacks")
                        : fmt::format("replaying {} journaled changes from {}",
                                      journal_->stats().pending[journal::TargetIndex(Tgt(b))], o.name()));
  }
  StartReplayLocked(b);
}

void Nasfs::StartReplayLocked(Backend& b) {
  if (replay_thread_.joinable()) replay_thread_.join();  // the last replay, finished
  replay_running_ = true;
  replay_thread_ = std::thread([this, &b] {
    ExceptionText what;
    if (!CatchAll([&] { ReplayLoop(b); }, &what)) {
      // b stays out of reads; its probes start another replay.
      (void)CatchAll(
          [&] {
            CountInternalError();
            Logger("replay")->error("the replay onto the {} failed with an internal error: {}", b.name(),
                                         what.c_str());
            b.SetState(BackendState::kDown, std::string("replay failed: internal error: ") + what.c_str());
            MutexLock lk(&replay_mu_);
            replay_.result = std::string("stopped: internal error: ") + what.c_str();
            replay_.finished = NowIso8601();
          },
          &what);
    }
    replay_running_ = false;
  });
}

int Nasfs::ReplayEntry(TreeSync& rs, const journal::Pending& e, LinkedRound* round) {
  using journal::Op;
  auto has = [&e](Op op) { return (e.ops & (1u << static_cast<unsigned>(op))) != 0; };
  auto path = [&] {
    if (e.data_only && !e.ranges.empty()) {
      // Only byte ranges of a file both sides hold: copy just those.
      int r = rs.CopyRanges(e.path, e.ranges);
      if (r != ENOENT && r != EINVAL) return r;
    }
    if (has(Op::kCreate) && !e.link_from.empty()) {
      // A hard link: link the target's copy of the existing name (brought
      // up to date first) rather than copy the data under a second inode.
      int r = rs.ReplayLink(e.path, e.link_from);
      if (r != ENOENT && r != EINVAL) return r;
    }
    bool force = has(Op::kWrite) || has(Op::kTruncate) || has(Op::kCreate) || has(Op::kRename);
    return rs.Reconcile(e.path, e.scope, force);
  };
  if (int r = path()) return r;
  // Bytes written through this name live on under the file's other names.
  return ReconcileNamesOf(rs, *rs.source(), e.path, e.inodes, round);
}

std::shared_ptr<Call> Nasfs::SubmitRead(Backend& b, WorkerPool::Fn fn, Clock::time_point deadline) {
  return b.Submit(
      [fn = std::move(fn), latency = read_latency_[RoleIndex(b)], start = Clock::now()] {
        int r = fn();
        if (!IsFaultErrno(r)) latency->Record(Clock::now() - start);
        return r;
      },
      deadline);
}

Backend* Nasfs::PickForRead() {
  if (Backend* b = router_.Pick()) return b;
  // Neither serves. Between one NAS going down and the ruling on the other
  // (OnFault, perhaps on another thread just now), this request rules too.
  for (Backend* x : {master_.get(), backup_.get()})
    if (ServeAloneIfOnlyPeersPending(*x)) break;
  return router_.Pick();
}

int Nasfs::ReadHedged(const std::function<WorkerPool::Fn(const Backend&)>& make, int* from, bool hedge) {
  Backend* b = PickForRead();
  if (!b) return EIO;
  Backend& o = Other(*b);
  const auto start = Clock::now();
  const auto step = StepDeadline::Current();
  Clock::time_point deadlines[2] = {std::min(start + b->io_timeout(), step), {}};
  std::shared_ptr<Call> calls[2] = {SubmitRead(*b, make(*b), deadlines[0]), nullptr};
  const auto hedge_at = start + read_latency_[RoleIndex(*b)]->HedgeDelay();
  if (hedge && opts_.hedge_delay_ms > 0 && hedge_at < deadlines[0]) {
    (void)calls[0]->Wait(hedge_at);
    if (!calls[0]->done() && o.state() == BackendState::kHealthy) {
      hedged_reads_.fetch_add(1, std::memory_order_relaxed);
      deadlines[1] = std::min(Clock::now() + o.io_timeout(), step);
      calls[1] = SubmitRead(o, make(o), deadlines[1]);
      return AwaitFirstAnswer(*b, calls, deadlines, from);
    }
  }
  int r = calls[0]->Wait(deadlines[0]);
  b->Account(r);
  *from = RoleIndex(*b);
  const bool not_here = r == kNotOnThisNas;
  if (!IsFaultErrno(r) && !not_here) return r;
  if (!not_here) OnFault(*b, fmt::format("read: {}", std::strerror(r)));
  // No copy here, and the one that has it cannot serve: EIO, not ENOENT
  // (the file exists) and not old bytes.
  if (o.state() != BackendState::kHealthy) return EIO;
  retried_ops_.fetch_add(1, std::memory_order_relaxed);
  const auto deadline = std::min(Clock::now() + o.io_timeout(), step);
  r = SubmitRead(o, make(o), deadline)->Wait(deadline);
  o.Account(r);
  *from = RoleIndex(o);
  if (r == kNotOnThisNas) return not_here ? ENOENT : EIO;  // neither holds it
  if (!IsFaultErrno(r)) return r;
  OnFault(o, fmt::format("read: {}", std::strerror(r)));
  return EIO;
}

int Nasfs::AwaitFirstAnswer(Backend& b, const std::shared_ptr<Call> calls[2], const Clock::time_point deadlines[2],
                            int* from) {
  Backend* nas[2] = {&b, &Other(b)};
  auto waker = std::make_shared<Waker>();
  for (int i = 0; i < 2; ++i) calls[i]->WakeOnFinish(waker);
  bool failed[2] = {false, false};
  for (;;) {
    const uint64_t seen = waker->fired();  // before looking: no finish is missed
    const auto now = Clock::now();
    auto until = Clock::time_point::max();
    for (int i = 0; i < 2; ++i) {
      if (failed[i]) continue;
      int r = ETIMEDOUT;
      if (calls[i]->done()) {
        r = calls[i]->result();
      } else if (now < deadlines[i]) {
        until = std::min(until, deadlines[i]);
        continue;
      }
      nas[i]->Account(r);
      if (r == kNotOnThisNas) {  // never hedged (orphans are not): not a fault, not an answer
        failed[i] = true;
        continue;
      }
      if (!IsFaultErrno(r)) {
        *from = RoleIndex(*nas[i]);
        if (i == 1) hedge_wins_.fetch_add(1, std::memory_order_relaxed);
        return r;
      }
      failed[i] = true;
      OnFault(*nas[i], fmt::format("read: {}", std::strerror(r)));
    }
    if (failed[0] && failed[1]) return EIO;
    waker->WaitPast(seen, until);
  }
}

int Nasfs::JournalResult(int e) {
  if (e == 0) return 0;
  if (!journal_failing_.exchange(true))
    Logger("journal")->error("journal {} cannot be written ({}): changes are refused until it can",
                                  journal_->dir(), journal_->stats().error_text);
  return e == ENOSPC || e == EDQUOT ? ENOSPC : EIO;
}

void Nasfs::WaitForDrain(journal::Target t, const std::vector<journal::Change>& changes) {
  const int ti = journal::TargetIndex(t);
  MutexLock lk(&drain_mu_);
  if (!draining_[ti] || !journal_->Touches(t, changes)) return;
  // Bounded whatever the replay does.
  const auto until = Clock::now() + kDrainHold;
  while (draining_[ti])
    if (!drain_cv_.WaitUntil(&drain_mu_, until)) break;
}

std::vector<std::string> Nasfs::AliasesOf(fuse_ino_t ino, const std::string& path) const {
  auto names = inodes_.OtherPaths(ino);
  if (names.empty()) return names;  // one name: the common case, no path built
  if (auto first = inodes_.Path(ino)) names.push_back(std::move(*first));
  names.erase(std::remove(names.begin(), names.end(), path), names.end());
  return names;
}

namespace {

// What the journal must know of a mutation: each path, and for a change of
// names the directory holding it (its times move; *dirs gets each once). A
// rename moves a whole subtree.
std::vector<journal::Change> ChangesOf(Mutation what, std::initializer_list<std::string> paths, journal::Range range,
                                       const std::string& link_from, const std::vector<std::string>& aliases,
                                       std::vector<std::string>* dirs) {
  std::vector<journal::Change> changes;
  auto kind = JournalOpOf(what);
  if (!kind) return changes;
  bool names = ChangesNames(what);
  auto scope = *kind == journal::Op::kRename ? journal::Scope::kTree : journal::Scope::kEntry;
  if (!names)
    for (const auto& a : aliases) changes.push_back({a, scope, *kind, range.offset, range.length, {}});
  for (const auto& p : paths) {
    changes.push_back({p, scope, *kind, range.offset, range.length, link_from});
    std::string parent = ParentOf(p);
    if (p.empty() || std::find(dirs->begin(), dirs->end(), parent) != dirs->end()) continue;
    dirs->push_back(parent);
    if (names) changes.push_back({parent, journal::Scope::kEntry, journal::Op::kDirTimes, 0, 0, {}});
  }
  return changes;
}

// Marks a change's paths and aliases as being written, for its life: a
// copy made without the lock (TreeSync::Precopy) then knows to copy again.
class TrackedWrite {
 public:
  TrackedWrite(WriteTracker& t, std::initializer_list<std::string> paths, const std::vector<std::string>& aliases)
      : t_(t), paths_(paths) {
    paths_.insert(paths_.end(), aliases.begin(), aliases.end());
    for (const auto& x : paths_) t_.Begin(x);
  }
  ~TrackedWrite() {
    for (const auto& x : paths_) t_.End(x);
  }
  TrackedWrite(const TrackedWrite&) = delete;
  TrackedWrite& operator=(const TrackedWrite&) = delete;

 private:
  WriteTracker& t_;
  std::vector<std::string> paths_;
};

}  // namespace

int Nasfs::RouteAroundReplays(const std::vector<journal::Change>& changes, Mirror::Targets* targets,
                              Mirror::Targets* journaled, std::optional<journal::Target>* writing) {
  for (Backend* b : {master_.get(), backup_.get()}) {
    if (b->state() != BackendState::kRecovering || changes.empty()) continue;
    WaitForDrain(Tgt(*b), changes);
    if (b->state() != BackendState::kRecovering) continue;  // the drain ended in the switch-back
    bool recorded = false;
    int e = journal_->RecordIfTouching(Tgt(*b), changes, &recorded);
    if (recorded) {
      *writing = Tgt(*b);
      (b == master_.get() ? targets->master : targets->backup) = false;
      (b == master_.get() ? journaled->master : journaled->backup) = true;
    }
    if (e) return JournalResult(e);
    // The other web servers must see it too before the write lands.
    if (recorded)
      if (int n = NotePeers(Tgt(*b), changes)) return n;
  }
  return 0;
}

int Nasfs::Mutate(Mutation what, std::initializer_list<std::string> paths, const Mirror::Op& op,
                  journal::Range range, const std::string& link_from, const std::vector<std::string>& aliases) {
  std::vector<std::string> dirs;
  const std::vector<journal::Change> changes = ChangesOf(what, paths, range, link_from, aliases, &dirs);

  ReaderLock lk(&sync_mu_);
  // A copy made without the lock (TreeSync::Precopy) sees this write.
  TrackedWrite tracked(writes_, paths, aliases);
  // Activity log: durable before the first byte reaches a NAS, so a crash
  // of nasfs leaves no directory silently different on the two NAS.
  if (!dirs.empty())
    if (int e = journal_->Intend(dirs)) return JournalResult(e);
  struct Release {
    journal::Journal* j;
    const std::vector<std::string>& d;
    ~Release() {
      if (!d.empty()) j->Release(d);
    }
  } release{journal_.get(), dirs};
  journal_failing_ = false;

  Mirror::Targets targets;
  // A NAS being replayed onto takes the write only if it touches nothing
  // still pending there; otherwise the write is journaled for it and
  // replayed after what came before (never an older copy over a newer).
  // Until the write has landed on the other NAS, the replay leaves those
  // entries alone (EndWrites).
  struct EndWrites {
    journal::Journal* j;
    const std::vector<journal::Change>& c;
    std::optional<journal::Target> t;
    ~EndWrites() {
      if (t) j->EndWrites(*t, c);
    }
  } end_writes{journal_.get(), changes, std::nullopt};
  Mirror::Targets journaled{false, false};  // the sides that miss the change
  if (int e = RouteAroundReplays(changes, &targets, &journaled, &end_writes.t)) return e;
  // A side that missed new bytes of a file with other names.
  auto applied = [&](int r, const Mirror::Targets& by_mirror) {
    if (r != 0 || !ChangesData(what) || paths.size() != 1) return r;
    journaled.master = journaled.master || by_mirror.master;
    journaled.backup = journaled.backup || by_mirror.backup;
    return NoteLinkedFile(*paths.begin(), journaled);
  };

  std::shared_ptr<TreeSync> s = sync_ && sync_->target()->state() == BackendState::kSyncing ? sync_ : nullptr;
  Mirror::Targets by_mirror;
  if (!s) return applied(mirror_.Apply(what, changes, targets, op, &by_mirror), by_mirror);

  bool all = true, any = false;
  for (const auto& p : paths) {
    bool c = s->Covers(p);
    all = all && c;
    any = any || c;
  }
  (s->target() == backup_.get() ? targets.backup : targets.master) = all;
  int r = applied(mirror_.Apply(what, changes, targets, op, &by_mirror), by_mirror);
  if (r != 0 || all || !any) return r;
  // A rename across the copy's position: the target got nothing, so bring
  // the covered side in line with the source now.
  lk.Unlock();
  WriterLock x(&sync_mu_);
  for (const auto& p : paths)
    if (s->Covers(p))
      if (int e = s->ReconcileTree(p))
        Logger("fuse")->warn("could not reconcile '{}' onto {}: {}", ShownPath(p), s->target()->name(), std::strerror(e));
  return 0;
}

int Nasfs::NoteLinkedFile(const std::string& path, const Mirror::Targets& missed) {
  for (Backend* t : {master_.get(), backup_.get()}) {
    if (!(t == master_.get() ? missed.master : missed.backup)) continue;
    // The journal names the change by the path written through. A file
    // with other names (links older than this mount are not known as one
    // node, see InodeTable) has them all changed, and that path may be gone
    // before the replay: its inode on the NAS that took the write lets the
    // replay find the rest (journal::Op::kLinked).
    struct stat st{};
    if (Other(*t).RunStat(path, &st) != 0) continue;  // gone already, or unreachable: nothing more to say
    if (!S_ISREG(st.st_mode) || st.st_nlink < 2) continue;
    std::vector<journal::Change> c{{path, journal::Scope::kEntry, journal::Op::kLinked, st.st_ino, 0, {}}};
    if (int e = journal_->AddMissed(Tgt(*t), c)) return JournalResult(e);
    if (int e = NotePeers(Tgt(*t), c)) return e;
  }
  return 0;
}

Nasfs::RenameMark::~RenameMark() {
  {
    MutexLock lk(&fs_.renames_mu_);
    fs_.renames_done_.fetch_add(1, std::memory_order_acq_rel);
  }
  fs_.renames_cv_.SignalAll();
}

bool Nasfs::RenamedSince(uint64_t snapshot) {
  MutexLock lk(&renames_mu_);
  if (!RenameRacing(snapshot)) return false;
  const auto until = Clock::now() + io_timeout();
  while (renames_done_.load() != renames_begun_.load())
    if (!renames_cv_.WaitUntil(&renames_mu_, until)) break;
  return true;
}

Nasfs::NameLock Nasfs::LockNames(fuse_ino_t a, fuse_ino_t b) {
  NameLock l;
  size_t sa = a ? a % kNameStripes : kNameStripes, sb = b ? b % kNameStripes : kNameStripes;
  if (sb < sa) std::swap(sa, sb);  // always in stripe order: two renames never wait on each other
  if (sa < kNameStripes) l.first_ = std::unique_lock<SharedGate>(name_locks_[sa]);
  if (sb < kNameStripes && sb != sa) l.second_ = std::unique_lock<SharedGate>(name_locks_[sb]);
  return l;
}

std::shared_ptr<Orphan> Nasfs::FindOrphan(fuse_ino_t ino) const {
  MutexLock lk(&orphans_mu_);
  auto it = orphans_.find(ino);
  return it == orphans_.end() ? nullptr : it->second;
}

void Nasfs::AdoptOrphan(fuse_ino_t ino, std::shared_ptr<Orphan> o) {
  MutexLock lk(&orphans_mu_);
  orphans_[ino] = std::move(o);
}

void Nasfs::DropOrphan(fuse_ino_t ino) {
  MutexLock lk(&orphans_mu_);
  orphans_.erase(ino);
}

int Nasfs::MutateOrphan(Mutation what, const std::shared_ptr<Orphan>& o,
                         const std::function<int(const Backend&, int fd)>& op) {
  // Only the NAS whose copy is in step: one without the file, or stale,
  // is left out rather than asked (its ENOENT would be a disagreement that
  // takes a NAS down).
  const Mirror::Targets targets{o->Fd(Role::kMaster) >= 0, o->Fd(Role::kBackup) >= 0};
  if (!targets.master && !targets.backup) return ENOENT;
  auto took = std::make_shared<std::array<std::atomic<bool>, 2>>();
  int r;
  {
    ReaderLock lk(&sync_mu_);
    r = mirror_.Apply(what, {}, targets, [o, op, took](const Backend& b) {
      const int fd = o->Fd(b.role());
      const int e = fd < 0 ? ENOENT : op(b, fd);
      if (e == 0) (*took)[RoleIndex(b)].store(true);
      return e;
    });
  }
  // A call still running on a NAS past its deadline counts as missed.
  for (Role role : {Role::kMaster, Role::kBackup}) {
    const int i = RoleIndex(role);
    if ((*took)[1 - i].load() && !(*took)[i].load() && o->Fd(role) >= 0) {
      Logger("fuse")->warn("an unlinked file still open missed a {} on the {}: reads use the {}'s copy from now on",
                           MutationName(what), RoleName(role), RoleName(OtherRole(role)));
      o->MarkStale(role);
    }
  }
  return r;
}

void Nasfs::ReportDamage(const Backend& nas, const std::string& what) {
  auto now = Clock::now();
  std::string iso = NowIso8601();
  bool fresh;
  {
    MutexLock lk(&damage_mu_);
    std::erase_if(damage_, [&](const auto& kv) { return now - kv.second.seen > std::chrono::minutes(1); });
    auto [it, inserted] = damage_.try_emplace({nas.name(), what});
    fresh = inserted;
    if (inserted) it->second.first_seen = iso;
    it->second.last_seen = iso;
    it->second.seen = now;
    ++it->second.count;
    while (damage_.size() > kMaxDamage) {
      auto oldest = std::min_element(damage_.begin(), damage_.end(),
                                     [](const auto& a, const auto& b) { return a.second.seen < b.second.seen; });
      damage_.erase(oldest);
    }
  }
  if (fresh) Logger("health")->warn("{} {}: {}", nas.name(), nas.path(), what);
}

}  // namespace nasfs

