// Nasfs and the other web servers sharing its pair of NAS (issue 5): the
// pending logs each server keeps on the shared NAS, the switch-back gate
// that waits for every server, the takeover of a dead server's replay, and
// the merge of a split brain. fs/peers.h has the files; docs/ARCHITECTURE.md
// the protocol.
#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <map>
#include <optional>
#include <thread>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fs/log.h"
#include "fs/nasfs.h"
#include "fs/split_brain.h"

namespace nasfs {
namespace {

constexpr const char* kSplitBrainClaim = ".nasfs/split-brain.claim";

bool Has(uint32_t ops, journal::Op op) { return (ops & (1u << static_cast<unsigned>(op))) != 0; }

// A directory entry recorded only because names inside it changed: its
// times, not its content.
bool DirTimesOnly(const journal::PeerEntry& e) { return e.ops == (1u << static_cast<unsigned>(journal::Op::kDirTimes)); }

// Whether the data of a listed path must be copied even when size and
// mtime match (see TreeSync::Reconcile).
bool ForceData(uint32_t ops) {
  using journal::Op;
  return Has(ops, Op::kWrite) || Has(ops, Op::kTruncate) || Has(ops, Op::kCreate) || Has(ops, Op::kRename);
}

// Whether p, a directory above it or a path beneath it is listed in
// `lacked` for a change other than directory times.
bool TouchesAny(const std::string& p, const std::map<std::string, journal::PeerEntry>& lacked) {
  if (auto it = lacked.find(p); it != lacked.end() && !DirTimesOnly(it->second)) return true;
  for (std::string a = p; !a.empty();) {
    a = ParentOf(a);
    if (auto it = lacked.find(a); it != lacked.end() && !DirTimesOnly(it->second)) return true;
  }
  std::string prefix = p.empty() ? "" : p + "/";
  for (auto it = lacked.lower_bound(prefix); it != lacked.end() && it->first.compare(0, prefix.size(), prefix) == 0;
       ++it)
    if (!DirTimesOnly(it->second)) return true;
  return false;
}

}  // namespace

namespace {

// Merges e into the entry for its path in *into: ops, widest scope, inodes.
void MergeEntry(const journal::PeerEntry& e, std::map<std::string, journal::PeerEntry>* into) {
  auto [it, fresh] = into->try_emplace(e.path, e);
  if (fresh) return;
  it->second.ops |= e.ops;
  it->second.scope = std::max(it->second.scope, e.scope);
  for (uint64_t ino : e.inodes) journal::AddInode(&it->second.inodes, ino);
}

}  // namespace

int Nasfs::ReadLacksLogs(journal::Target t, std::map<std::string, journal::PeerEntry>* out) {
  // Every server's log of what t lacks is on the other NAS.
  Backend& holder = t == journal::kMaster ? *backup_ : *master_;
  NasView view;
  if (int e = peers_->Scan(holder, &view)) return e;
  for (const auto& [node, seen] : view.peers) {
    if (!seen.lacks[journal::TargetIndex(t)]) continue;
    journal::PeerLogContents c;
    uint64_t bytes = 0;
    if (int e = peers_->ReadLog(holder, node, t, &c, &bytes)) return e;
    Logger("replay")->debug("{}'s log on the {}: {} paths the {} lacks", node, holder.name(), c.entries.size(),
                            journal::TargetName(t));
    for (const auto& e : c.entries) MergeEntry(e, out);
  }
  return 0;
}

int Nasfs::LackedBy(Backend& nas, std::map<std::string, journal::PeerEntry>* out) {
  out->clear();
  const journal::Target t = Tgt(nas);
  for (const auto& e : journal_->PendingFor(t)) MergeEntry(journal::PeerEntry{e.path, e.scope, e.ops, e.inodes}, out);
  return ReadLacksLogs(t, out);
}

int Nasfs::ReconcileNamesOf(TreeSync& rs, Backend& source, const std::string& written,
                            const std::vector<uint64_t>& inodes, LinkedRound* round) {
  if (inodes.empty()) return 0;
  // A name the source itself lacks a change to (another web server wrote
  // it on the target alone, and its own replay brings that over) holds no
  // bytes the target lacks: copied, it would undo that server's change.
  // Read once per round; a write on the target alone since then leaves the
  // target's file newer, which TreeSync leaves alone.
  if (!round->have_lacked) {
    if (int e = LackedBy(source, &round->lacked)) return e;
    round->have_lacked = true;
  }
  const auto& lacked = round->lacked;
  return rs.ReconcileNamesOf(
      inodes, [&](const std::string& n) { return n == written || TouchesAny(n, lacked); }, /*exclusive=*/false);
}

int Nasfs::NotePeers(journal::Target t, const std::vector<journal::Change>& changes) {
  if (changes.empty()) return 0;
  int e = peers_->Note(t, changes);
  if (e == 0) return 0;
  // The NAS that holds the log is the one taking the write: it failed.
  Backend& holder = t == journal::kMaster ? *backup_ : *master_;
  OnFault(holder, fmt::format("listing what the {} lacks: {}", Other(holder).name(), std::strerror(e)));
  return EIO;
}

int Nasfs::NoteAllPending(journal::Target t) {
  std::vector<journal::Change> changes;
  for (const auto& e : journal_->PendingFor(t)) {
    // Every op recorded: how a takeover or a split-brain merge treats the
    // path depends on each (a chmod is not a directory's times). An entry
    // with none known is listed all the same.
    const uint32_t meta = 1u << static_cast<unsigned>(journal::Op::kMeta);
    journal::AppendChanges(e.path, e.scope, e.ops ? e.ops : meta, e.inodes, &changes);
  }
  return changes.empty() ? 0 : peers_->Note(t, changes);
}

int Nasfs::ObservePeers(Backend& nas, NasView* view) {
  if (int e = peers_->Scan(nas, view)) return e;
  for (const auto& d : view->damaged) ReportDamage(nas, d);
  int i = &nas == master_.get() ? 0 : 1;
  auto now = Clock::now();
  MutexLock lk(&peers_mu_);
  gens_[i] = view->gen;
  for (auto& [node, st] : peer_states_) {
    st.on[i] = false;
    st.seen[i] = {};
  }
  for (const auto& [node, seen] : view->peers) {
    if (node == opts_.node) continue;
    auto [it, fresh] = peer_states_.try_emplace(node);
    PeerState& st = it->second;
    if (fresh || seen.beat != st.beat[i]) st.changed = now;  // first sight counts as alive
    st.beat[i] = seen.beat;
    st.seen[i] = seen;
    st.on[i] = true;
  }
  return 0;
}

void Nasfs::WatchPeers(Backend& nas, const NasView& view) {
  Backend& y = Other(nas);
  if (nas.state() != BackendState::kHealthy || y.state() != BackendState::kHealthy) return;
  int yi = journal::TargetIndex(Tgt(y));
  // Our own log, left by a run that stopped before removing it (the journal
  // holds nothing for y): the other servers would wait for it forever.
  if (auto me = view.peers.find(opts_.node); me != view.peers.end() && me->second.lacks[yi]) {
    WriterLock lk(&sync_mu_);  // no write in flight could be listing a path meanwhile
    if (y.state() == BackendState::kHealthy && !journal_->HasPending(Tgt(y)))
      if (int e = peers_->Clear(Tgt(y), /*present=*/true))
        Logger("replay")->warn("cannot remove this server's old log of what the {} lacked: {}", y.name(),
                                    std::strerror(e));
  }
  std::string who = OthersLacking(view, Tgt(y));
  if (who.empty()) return;
  MutexLock rlk(&recover_mu_);
  if (replay_running_ || y.state() != BackendState::kHealthy) return;
  Logger("replay")->warn("web servers {} hold writes the {} lacks: reads stay off it until they are replayed", who,
                              y.name());
  y.SetState(BackendState::kRecovering, fmt::format("web servers {} hold writes it lacks", who));
  StartReplayLocked(y);
}

std::string Nasfs::OthersLacking(const NasView& view, journal::Target target) const {
  std::string who;
  for (const auto& [node, seen] : view.peers)
    if (node != opts_.node && seen.lacks[journal::TargetIndex(target)]) who += (who.empty() ? "" : ", ") + node;
  return who;
}

bool Nasfs::PeerSilent(const std::string& node, std::chrono::milliseconds silence) const {
  MutexLock lk(&peers_mu_);
  auto it = peer_states_.find(node);
  return it == peer_states_.end() || Clock::now() - it->second.changed >= silence;
}

bool Nasfs::PeersDone(Backend& b, Backend& o, TreeSync& rs, bool takeover, std::vector<std::string>* waiting) {
  waiting->clear();
  NasView view;
  if (int e = ObservePeers(o, &view)) {
    waiting->push_back(fmt::format("(the {} cannot be read: {})", o.name(), std::strerror(e)));
    return false;
  }
  int ti = journal::TargetIndex(Tgt(b));
  // Left by an earlier run of this server: our journal is the truth.
  if (auto me = view.peers.find(opts_.node); me != view.peers.end() && me->second.lacks[ti] &&
                                             !journal_->HasPending(Tgt(b)) && takeover)
    peers_->Clear(Tgt(b), /*present=*/true);
  for (const auto& [node, seen] : view.peers) {
    if (node == opts_.node || !seen.lacks[ti]) continue;
    bool named;
    {
      MutexLock lk(&peers_mu_);
      named = takeover_now_.count(node) > 0;
    }
    if (takeover && (named || PeerSilent(node, std::chrono::seconds(opts_.peer_timeout_s)))) {
      int r = TakeOver(node, b, o, rs);
      if (r == 0) continue;
      if (r != EBUSY)
        Logger("replay")->warn("taking over {}'s replay onto the {}: {}", node, b.name(), std::strerror(r));
    }
    waiting->push_back(node);
  }
  return waiting->empty();
}

int Nasfs::TakeOver(const std::string& node, Backend& b, Backend& o, TreeSync& rs) {
  journal::Target t = Tgt(b);
  bool got = false;
  if (int e = peers_->Claim(o, Peers::ClaimPath(node), std::chrono::seconds(opts_.peer_timeout_s), &got)) return e;
  if (!got) return EBUSY;  // another server is at it
  struct Unclaim {
    Peers* p;
    Backend& nas;
    std::string rel;
    ~Unclaim() { p->Unclaim(nas, rel); }
  } unclaim{peers_.get(), o, Peers::ClaimPath(node)};
  journal::PeerLogContents contents;
  uint64_t bytes = 0;
  if (int e = ReadTakenLog(node, b, o, &contents, &bytes)) return e;
  Logger("replay")->warn("web server {} is silent with {} paths the {} lacks: this server replays them", node,
                         contents.entries.size(), b.name());
  auto entries = contents.entries;
  {
    MutexLock lk(&replay_mu_);
    replay_.total += entries.size();
  }
  std::sort(entries.begin(), entries.end(),
            [](const journal::PeerEntry& x, const journal::PeerEntry& y) { return ComparePaths(x.path, y.path) < 0; });
  if (int r = ReplayTakenEntries(entries, b, o, rs)) return r;
  // Only the log we replayed: one that grew has a live owner after all.
  if (int e = peers_->RemoveLog(o, node, t, bytes)) return e;
  {
    MutexLock lk(&peers_mu_);
    takeover_now_.erase(node);
  }
  replayed_paths_.fetch_add(entries.size(), std::memory_order_relaxed);
  Logger("replay")->info("replayed web server {}'s {} paths onto the {}", node, entries.size(), b.name());
  return 0;
}

int Nasfs::ReadTakenLog(const std::string& node, Backend& b, Backend& o, journal::PeerLogContents* contents,
                        uint64_t* bytes) {
  journal::Target t = Tgt(b);
  int read = peers_->ReadLog(o, node, t, contents, bytes);
  // Something that is no log at its name (a FIFO, a directory, a symlink).
  bool junk = read == EINVAL || read == EISDIR || read == ELOOP;
  if (read && !junk) return read;
  if (!junk && contents->damaged == 0) return 0;
  // What the unreadable records named is unknown: only a whole-tree copy
  // (which displaces nothing it need not) brings b back. The log goes
  // once that is recorded; the copy starts on b's next good probes.
  ReportDamage(o, fmt::format("{}: {}; the {} is copied afresh from the {}", Peers::LogPath(node, t),
                              junk ? std::string("not a log: ") + std::strerror(read)
                                   : fmt::format("{} unreadable records", contents->damaged),
                              b.name(), o.name()));
  SetFullSync(b, true);
  b.SetState(BackendState::kDown, fmt::format("web server {}'s log of what it lacks is damaged", node));
  // Whatever it holds now: the whole-tree copy carries every path anyway.
  (void)peers_->RemoveLog(o, node, t, Peers::kAnyLog);  // failing, the next takeover finds it again
  return ECANCELED;
}

int Nasfs::ReplayTakenEntries(const std::vector<journal::PeerEntry>& entries, Backend& b, Backend& o,
                              TreeSync& rs) {
  std::set<std::string> dirs;
  LinkedRound linked;
  if (int r = rs.IndexInodesOf(entries)) return r;
  for (const auto& e : entries) {
    if (stopping_ || b.state() != BackendState::kRecovering || o.state() != BackendState::kHealthy) return ECANCELED;
    if (DirTimesOnly(e)) {
      dirs.insert(e.path);
      continue;
    }
    // Per entry, like a copy: no write of ours races it (its data copied
    // before the lock).
    Logger("replay")->debug("takeover onto the {}: '{}' ops {:#x} scope {}", b.name(), ShownPath(e.path), e.ops,
                            static_cast<int>(e.scope));
    if (int r = rs.ReconcileExclusive(e.path, e.scope, ForceData(e.ops))) return r;
    if (int r = ReconcileNamesOf(rs, o, e.path, e.inodes, &linked)) return r;
    if (!e.path.empty()) {
      dirs.insert(ParentOf(e.path));
      settle_.insert(e.path);
    }
    for (auto& p : rs.TakeRelinked()) settle_.insert(std::move(p));
    for (auto& p : rs.TakeCopied()) settle_.insert(std::move(p));
    {
      MutexLock lk(&replay_mu_);
      ++replay_.done;
    }
  }
  for (const auto& d : dirs) {
    StepLock x(&sync_mu_, io_timeout());
    if (int r = rs.ReconcileDirTimes(d); r && r != ENOENT) return r;
  }
  return 0;
}

void Nasfs::Settle(Backend& b, Backend& o, TreeSync& rs) {
  // Whether p differs between the two NAS; an errno when one cannot say.
  auto differs = [&](const std::string& p, bool* d) {
    struct stat sb{}, so{};
    int rb = b.RunStat(p, &sb);
    int ro = o.RunStat(p, &so);
    if ((rb && rb != ENOENT) || (ro && ro != ENOENT)) return rb && rb != ENOENT ? rb : ro;
    if (rb || ro) {
      *d = rb != ro;
      return 0;
    }
    bool dirs = S_ISDIR(sb.st_mode) && S_ISDIR(so.st_mode);
    // Mode and owner too: a chmod moves no mtime, and one that lands
    // between a copy's stat and its chmod (through another name of a
    // linked file, or by another server) leaves the copy's older mode.
    *d = sb.st_mode != so.st_mode || sb.st_uid != so.st_uid || sb.st_gid != so.st_gid ||
         (!dirs && (sb.st_size != so.st_size || sb.st_mtim.tv_sec != so.st_mtim.tv_sec ||
                    sb.st_mtim.tv_nsec != so.st_mtim.tv_nsec));
    return 0;
  };
  if (settle_.empty()) return;  // called each turn of a replay waiting for other servers
  // A path pending again (our own write went to o alone) is the replay's.
  std::set<std::string> pending;
  for (auto& e : journal_->PendingFor(Tgt(b))) pending.insert(std::move(e.path));
  std::vector<std::string> suspects;
  for (const auto& p : settle_) {
    if (stopping_) return;
    if (pending.count(p)) continue;
    bool d = false;
    if (differs(p, &d)) return;  // a NAS failed: the replay loop sees it
    if (d) suspects.push_back(p);
  }
  settle_.clear();
  // A write in flight lands on both NAS (or fails) within io_timeout: look
  // again until then, dropping what has become equal.
  const auto deadline = Clock::now() + b.io_timeout();
  while (!suspects.empty() && Clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    std::vector<std::string> still;
    for (const auto& p : suspects) {
      bool d = false;
      if (stopping_ || differs(p, &d)) return;
      if (d) still.push_back(p);
    }
    suspects = std::move(still);
  }
  for (const auto& p : suspects) {
    bool d = false;
    if (stopping_ || differs(p, &d)) return;
    if (!d) continue;
    // The copy goes through a new name: its directory's times follow.
    int r = rs.ReconcileExclusive(p, journal::Scope::kEntry, /*force_data=*/true);
    if (r == 0) {
      StepLock x(&sync_mu_, io_timeout());
      r = rs.ReconcileDirTimes(ParentOf(p));
    }
    if (r) {
      Logger("replay")->warn("'{}' differs on the {} after its replay and cannot be copied again: {}", ShownPath(p),
                                  b.name(), std::strerror(r));
      return;
    }
    settled_.fetch_add(1, std::memory_order_relaxed);
    Logger("replay")->warn("'{}' was written by another web server while it was replayed: copied again onto the {}",
                                ShownPath(p), b.name());
  }
}

bool Nasfs::SplitBrainDetected(Backend& b, Backend& o) {
  Generation gb, go;
  if (peers_->ReadGeneration(b, &gb) || peers_->ReadGeneration(o, &go)) return false;
  {
    MutexLock lk(&peers_mu_);
    gens_[&b == master_.get() ? 0 : 1] = gb;
    gens_[&o == master_.get() ? 0 : 1] = go;
  }
  return gb.ahead() && go.ahead();
}

void Nasfs::MarkInStep(Backend& nas) {
  // Scan reads the generation before the logs: a server that starts a log
  // after that read bumps the generation past what we record here.
  NasView view;
  if (peers_->Scan(nas, &view)) return;
  for (const auto& [node, seen] : view.peers)
    if (seen.lacks[0] || seen.lacks[1]) return;  // some server still holds writes the other NAS lacks
  if (!view.gen.ahead()) return;
  if (int e = peers_->MarkInStep(nas, view.gen.generation))
    Logger("replay")->warn("cannot record that the {} is in step again: {}", nas.name(), std::strerror(e));
}

int Nasfs::HandleSplitBrain() {
  auto log = Logger("replay");
  {
    MutexLock lk(&peers_mu_);
    if (split_.state != "detected" && split_.state != "resolving") {
      split_.state = "detected";
      ++split_.count;
      split_.detected = NowIso8601();
      split_.resolved.clear();
      split_.error.clear();
      split_.by.clear();
      split_.paths = split_.conflicts = 0;
    }
  }
  log->error("split brain: the master and the backup both took writes the other lacks (web servers disagreed "
             "about which NAS was alive); merging: the newest version of each path wins, the other is kept "
             "under .nasfs/conflicts/");
  const auto ttl = std::chrono::seconds(opts_.peer_timeout_s);
  while (!stopping_) {
    if (master_->state() == BackendState::kDown || backup_->state() == BackendState::kDown) return ECANCELED;
    bool got = false;
    if (int e = peers_->Claim(*master_, kSplitBrainClaim, ttl, &got)) return e;
    if (got) {
      {
        MutexLock lk(&peers_mu_);
        split_.state = "resolving";
      }
      int r = ResolveSplitBrain();
      peers_->Unclaim(*master_, kSplitBrainClaim);
      EndSplitBrain(r, opts_.node);
      return r;
    }
    // Another server merges: wait until the pair is in step.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    if (!SplitBrainDetected(*backup_, *master_)) {
      EndSplitBrain(0, "another web server");
      return 0;
    }
  }
  return ECANCELED;
}

void Nasfs::EndSplitBrain(int r, const std::string& by) {
  MutexLock lk(&peers_mu_);
  split_.state = r ? "failed" : "resolved";
  split_.error = r ? std::strerror(r) : "";
  split_.resolved = NowIso8601();
  split_.by = by;
  split_.history.push_back(SplitBrainJson());
  if (split_.history.size() > 10) split_.history.erase(split_.history.begin());
}

void Nasfs::SplitBrainMergedElsewhere(Backend& b, Backend& o) {
  {
    MutexLock lk(&peers_mu_);
    if (split_.state != "detected" && split_.state != "resolving") return;
  }
  // Read again: SplitBrainDetected also says no when a NAS did not answer.
  Generation gb, go;
  if (peers_->ReadGeneration(b, &gb) || peers_->ReadGeneration(o, &go)) return;
  if (gb.ahead() && go.ahead()) return;
  EndSplitBrain(0, "another web server");
}

int Nasfs::ResolveSplitBrain() {
  auto log = Logger("replay");
  MergePlan plan;
  if (int e = PlanMerge(&plan)) return e;
  SplitBrainResolver resolver(master_.get(), backup_.get(), opts_.node);
  WireResolver(plan, &resolver);
  TreeSync to_master(backup_.get(), master_.get(), &sync_mu_, false, false, nullptr);
  TreeSync to_backup(master_.get(), backup_.get(), &sync_mu_, false, false, nullptr);
  to_master.SetWriteTracker(&writes_);
  to_backup.SetWriteTracker(&writes_);
  // The names of the files written through a name: one walk of each NAS.
  auto entry = [](const auto& path_entry) -> const journal::PeerEntry& { return path_entry.second; };
  for (int i = 0; i < 2; ++i)
    if (int r = (i == 0 ? to_master : to_backup).IndexInodesOf(plan.lacks[i], entry)) return r;
  std::set<std::string> dirs;
  uint64_t conflicted = 0;
  auto renewed = Clock::now();
  for (const auto& p : plan.paths) {
    if (stopping_) return ECANCELED;
    if (Clock::now() - renewed > std::chrono::seconds(1)) {  // keep the claim while the merge runs
      bool got = false;
      peers_->Claim(*master_, kSplitBrainClaim, std::chrono::seconds(opts_.peer_timeout_s), &got);
      if (!got) return EBUSY;
      renewed = Clock::now();
    }
    if (int r = MergePath(plan, p, resolver, to_master, to_backup, &dirs, &conflicted)) {
      log->error("split brain: merging '{}': {}", ShownPath(p), std::strerror(r));
      return r;
    }
  }
  if (int r = MergeDirTimes(dirs, to_master, to_backup)) return r;
  // In step again: every later one-sided write moves a generation ahead anew.
  for (Backend* nas : {master_.get(), backup_.get()}) {
    Generation g;
    if (int e = peers_->ReadGeneration(*nas, &g)) return e;
    if (int e = peers_->MarkInStep(*nas, g.generation)) return e;
  }
  {
    MutexLock lk(&peers_mu_);
    split_.paths = plan.paths.size();
    split_.conflicts = resolver.kept().size();
  }
  log->warn("split brain merged: {} paths, {} with two versions, {} versions kept under .nasfs/conflicts/ "
            "(nasfsctl conflicts lists them)",
            plan.paths.size(), conflicted, resolver.kept().size());
  return 0;
}

int Nasfs::PlanMerge(MergePlan* plan) {
  // What each NAS lacks, by every server's log on the other.
  for (journal::Target t : {journal::kMaster, journal::kBackup})
    if (int e = ReadLacksLogs(t, &plan->lacks[journal::TargetIndex(t)])) return e;
  for (int i = 0; i < 2; ++i)
    for (const auto& [p, e] : plan->lacks[i]) plan->paths.push_back(p);
  auto& paths = plan->paths;
  std::sort(paths.begin(), paths.end(), [](const std::string& x, const std::string& y) { return ComparePaths(x, y) < 0; });
  paths.erase(std::unique(paths.begin(), paths.end()), paths.end());
  return 0;
}

void Nasfs::WireResolver(const MergePlan& plan, SplitBrainResolver* resolver) {
  const auto& lacks = plan.lacks;
  // A server writing one NAS alone logged a removal there as something the
  // other NAS lacks: whatever else one side lacks is new on the other.
  resolver->SetRemovedFn([&lacks](const std::string& p, Role side) {
    const auto& log = lacks[side == Role::kMaster ? 1 : 0];
    for (std::string a = p;; a = ParentOf(a)) {
      if (auto it = log.find(a);
          it != log.end() && (Has(it->second.ops, journal::Op::kRemove) || Has(it->second.ops, journal::Op::kRename)))
        return true;
      if (a.empty()) return false;
    }
  });
  // A side changed a path's owner, mode or xattrs: its log lists the path
  // with a meta change among what the other side lacks.
  resolver->SetMetaChangedFn([&lacks](const std::string& p, Role side) {
    const auto& log = lacks[side == Role::kMaster ? 1 : 0];
    auto it = log.find(p);
    return it != log.end() && Has(it->second.ops, journal::Op::kMeta);
  });
}

int Nasfs::MergePath(const MergePlan& plan, const std::string& p, SplitBrainResolver& resolver, TreeSync& to_master,
                     TreeSync& to_backup, std::set<std::string>* dirs, uint64_t* conflicted) {
  const auto& lacks = plan.lacks;
  auto in_m = lacks[0].find(p), in_b = lacks[1].find(p);
  bool m = in_m != lacks[0].end(), bk = in_b != lacks[1].end();
  Logger("replay")->debug(
      "split brain: '{}': master lacks {}, backup lacks {}", ShownPath(p),
      m ? fmt::format("ops {:#x} scope {}", in_m->second.ops, static_cast<int>(in_m->second.scope)) : "nothing",
      bk ? fmt::format("ops {:#x} scope {}", in_b->second.ops, static_cast<int>(in_b->second.scope)) : "nothing");
  // Directory times alone are settled last (MergeDirTimes).
  if ((!m || DirTimesOnly(in_m->second)) && (!bk || DirTimesOnly(in_b->second))) {
    dirs->insert(p);
    return 0;
  }
  if (!p.empty()) dirs->insert(ParentOf(p));
  // A path both sides changed, or one inside (or holding) a path the other
  // side changed, has two versions: the resolver picks the newest and keeps
  // the other.
  if ((m && !DirTimesOnly(in_m->second) && TouchesAny(p, lacks[1])) ||
      (bk && !DirTimesOnly(in_b->second) && TouchesAny(p, lacks[0]))) {
    ++*conflicted;
    StepLock x(&sync_mu_, io_timeout());
    return resolver.Resolve(p);
  }
  // One side changed it: copied onto the side that lacks it, with the
  // file's other names, but none the other side changed: those have two
  // versions, and the resolver takes them path by path.
  const bool onto_master = m && !DirTimesOnly(in_m->second);
  TreeSync& rs = onto_master ? to_master : to_backup;
  const journal::PeerEntry& e = onto_master ? in_m->second : in_b->second;
  const auto& other_changed = lacks[onto_master ? 1 : 0];
  if (int r = rs.ReconcileExclusive(p, e.scope, ForceData(e.ops))) return r;
  return rs.ReconcileNamesOf(
      e.inodes, [&](const std::string& n) { return n == p || TouchesAny(n, other_changed); }, /*exclusive=*/true);
}

int Nasfs::MergeDirTimes(const std::set<std::string>& dirs, TreeSync& to_master, TreeSync& to_backup) {
  // The newer side's.
  for (const auto& d : dirs) {
    struct stat sm{}, sb{};
    int rm = master_->RunStat(d, &sm);
    int rb = backup_->RunStat(d, &sb);
    if (rm || rb) continue;  // gone on a side: its parent's times were settled with it
    bool backup_newer = sb.st_mtim.tv_sec > sm.st_mtim.tv_sec ||
                        (sb.st_mtim.tv_sec == sm.st_mtim.tv_sec && sb.st_mtim.tv_nsec > sm.st_mtim.tv_nsec);
    StepLock x(&sync_mu_, io_timeout());
    int r = backup_newer ? to_master.ReconcileDirTimes(d) : to_backup.ReconcileDirTimes(d);
    if (r && r != ENOENT) return r;
  }
  return 0;
}

nlohmann::json Nasfs::SplitBrainJson() const {
  auto text = [](const std::string& v) { return v.empty() ? nlohmann::json(nullptr) : nlohmann::json(v); };
  nlohmann::json j = {{"detected", text(split_.detected)}, {"resolved", text(split_.resolved)},
                      {"by", text(split_.by)}, {"error", text(split_.error)}};
  if (split_.by == opts_.node) {  // what the merge did is known only where it ran
    j["paths"] = split_.paths;
    j["conflicts"] = split_.conflicts;
  }
  return j;
}

nlohmann::json Nasfs::PeersStatus() const {
  nlohmann::json out = nlohmann::json::array();
  auto now = Clock::now();
  MutexLock lk(&peers_mu_);
  for (const auto& [node, st] : peer_states_) {
    if (!st.on[0] && !st.on[1]) continue;
    // The newer of its two heartbeats (one NAS may be out for it). A
    // damaged one says nothing but that the server wrote it.
    std::optional<Heartbeat> beat;
    std::string damaged;
    for (int i = 0; i < 2; ++i)
      if (st.on[i] && !st.beat[i].empty()) {
        auto h = ParseHeartbeat(st.beat[i]);
        if (!h) damaged = fmt::format("heartbeat on the {} is damaged: {}", i == 0 ? "master" : "backup", h.error());
        else if (!beat || h->time > beat->time) beat = *h;
      }
    double age = std::chrono::duration<double>(now - st.changed).count();
    bool alive = age < opts_.peer_timeout_s;
    // A dead server's last heartbeat still names what it held; once its
    // logs are gone (replayed by a taker), nothing of it is pending.
    auto pending = [&](uint64_t Heartbeat::*field, uint64_t logged) -> uint64_t {
      if (!beat || (!alive && logged == 0)) return 0;
      return (*beat).*field;
    };
    nlohmann::json p = {{"node", node},
                        {"last_heartbeat", beat ? beat->time : ""},
                        {"heartbeat_age_s", age},
                        {"alive", alive},
                        {"pending_master", pending(&Heartbeat::pending_master, st.seen[1].lacks_bytes[0])},
                        {"pending_backup", pending(&Heartbeat::pending_backup, st.seen[0].lacks_bytes[1])},
                        {"read_from", beat ? beat->read_from : ""},
                        // Bytes of its log on each NAS of what the other lacks.
                        {"logged_master_lacks", st.seen[1].lacks_bytes[0]},
                        {"logged_backup_lacks", st.seen[0].lacks_bytes[1]}};
    const std::string& claim = !st.seen[0].claimed_by.empty() ? st.seen[0].claimed_by : st.seen[1].claimed_by;
    p["taken_over_by"] = claim.empty() ? nlohmann::json(nullptr) : nlohmann::json(claim);
    if (!damaged.empty()) p["damaged"] = damaged;
    out.push_back(std::move(p));
  }
  return out;
}

nlohmann::json Nasfs::ReplayNode(const std::string& node) {
  if (node == opts_.node)
    return {{"ok", false}, {"error", fmt::format("{} is this web server: use nasfsctl replay without --node", node)}};
  // A server still writing its heartbeat replays its own logs.
  auto silence = std::chrono::milliseconds(std::max(2000, 3 * opts_.probe_interval_ms + opts_.io_timeout_ms));
  std::vector<std::string> targets;
  bool known = false;
  for (Backend* holder : {master_.get(), backup_.get()}) {
    if (holder->state() != BackendState::kHealthy) continue;
    NasView view;
    if (int e = ObservePeers(*holder, &view))
      return {{"ok", false}, {"error", fmt::format("cannot read the {}: {}", holder->name(), std::strerror(e))}};
    auto it = view.peers.find(node);
    if (it == view.peers.end()) continue;
    known = true;
    Backend& b = Other(*holder);
    if (it->second.lacks[journal::TargetIndex(Tgt(b))]) targets.push_back(b.name());
  }
  if (!known) return {{"ok", false}, {"error", fmt::format("no web server named '{}' is seen on the NAS", node)}};
  if (targets.empty())
    return {{"ok", false}, {"error", fmt::format("web server {} left nothing to replay on the NAS", node)}};
  if (!PeerSilent(node, silence)) {
    double age;
    {
      MutexLock lk(&peers_mu_);
      age = std::chrono::duration<double>(Clock::now() - peer_states_[node].changed).count();
    }
    return {{"ok", false},
            {"error", fmt::format("web server {} is alive (its heartbeat changed {:.1f} s ago): it replays its own "
                                  "changes",
                                  node, age)}};
  }
  {
    MutexLock lk(&peers_mu_);
    takeover_now_.insert(node);
  }
  for (const auto& name : targets) {
    Backend& b = name == std::string(master_->name()) ? *master_ : *backup_;
    if (b.state() == BackendState::kDown)
      return {{"ok", false},
              {"error", fmt::format("the {} is out for this server too: its replay starts when it is back", b.name())}};
    MutexLock rlk(&recover_mu_);
    if (b.state() == BackendState::kHealthy && !replay_running_) {
      b.SetState(BackendState::kRecovering, fmt::format("replaying web server {}'s changes", node));
      StartReplayLocked(b);
    }
  }
  return {{"started", true}, {"node", node}, {"targets", targets}};
}

nlohmann::json Nasfs::Conflicts() {
  Backend* nas = router_.Pick();
  if (!nas) return {{"ok", false}, {"error", "neither NAS can be read"}};
  std::vector<ConflictRecord> list;
  if (int e = ListConflicts(*nas, &list))
    return {{"ok", false}, {"error", fmt::format("cannot list the conflicts on the {}: {}", nas->name(), std::strerror(e))}};
  nlohmann::json out = {{"ok", true}, {"read_from", nas->name()}, {"conflicts", nlohmann::json::array()}};
  for (const auto& c : list) out["conflicts"].push_back(ToJson(c));
  return out;
}

nlohmann::json Nasfs::RestoreConflict(const std::string& id) {
  if (master_->state() != BackendState::kHealthy || backup_->state() != BackendState::kHealthy)
    return {{"ok", false},
            {"error", fmt::format("both NAS must be healthy to restore (master {}, backup {})",
                                  StateName(master_->state()), StateName(backup_->state()))}};
  ConflictRecord restored, displaced;
  int e;
  {
    WriterLock x(&sync_mu_);
    e = nasfs::RestoreConflict(master_.get(), backup_.get(), &sync_mu_, opts_.node, id, &restored, &displaced);
  }
  if (e == ENOENT) return {{"ok", false}, {"error", fmt::format("no kept version with id '{}'", id)}};
  if (e == EINVAL) return {{"ok", false}, {"error", fmt::format("'{}' is not a conflict id", id)}};
  if (e) return {{"ok", false}, {"error", fmt::format("restoring {}: {}", id, std::strerror(e))}};
  Logger("replay")->info("restored the version of '{}' kept as {}; the one it replaced is kept as {}",
                              ShownPath(restored.path), id, displaced.id.empty() ? "(nothing was there)" : displaced.id);
  return {{"ok", true},
          {"restored", ToJson(restored)},
          {"kept", displaced.id.empty() ? nlohmann::json(nullptr) : ToJson(displaced)}};
}

}  // namespace nasfs
