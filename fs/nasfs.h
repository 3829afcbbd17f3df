// The filesystem's state, reached from every FUSE handler through
// fuse_req_userdata (never a global), so tests can run several instances.
#pragma once

#include <fuse_lowlevel.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <vector>
#include <string>
#include <thread>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "fs/backend.h"
#include "fs/health.h"
#include "fs/identity.h"
#include "fs/inode_table.h"
#include "fs/mirror.h"
#include "fs/options.h"
#include "fs/peers.h"
#include "fs/router.h"
#include "fs/tree_sync.h"
#include "journal/journal.h"
#include "util/mutex.h"

namespace nasfs {

class SplitBrainResolver;  // fs/split_brain.h

// A regular file whose name went away (unlink, or a rename over it) while
// the kernel still knew its inode, so it may be open: one fd per NAS,
// opened just before the name went, keeps it readable and writable until
// the kernel forgets the inode, as on a local filesystem. nginx sending a
// file that a deploy replaces by rename keeps sending the old one.
class Orphan {
 public:
  void Set(Role r, UniqueFd fd) {
    MutexLock lk(&mu_);
    fd_[RoleIndex(r)] = std::move(fd);
  }
  // -1 when this NAS had no such file, or missed one of its writes.
  int Fd(Role r) const {
    MutexLock lk(&mu_);
    const int i = RoleIndex(r);
    return stale_[i] ? -1 : fd_[i].get();
  }
  // NAS r missed a write the other took (it was out, or failed or timed
  // out on it): nothing replays a file without a name, so its copy holds
  // old bytes for good, and neither reads nor writes use it again. Its fd
  // stays open until the orphan goes: a call abandoned on that NAS may
  // still be using the number.
  void MarkStale(Role r) {
    MutexLock lk(&mu_);
    stale_[RoleIndex(r)] = true;
  }

 private:
  mutable Mutex mu_;
  UniqueFd fd_[2] GUARDED_BY(mu_);
  bool stale_[2] GUARDED_BY(mu_) = {false, false};
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

  // Runs a read-only call on the NAS the router picks, hedged to the other
  // (see ReadHedged); on a fault or a missed deadline that NAS goes down and
  // the call is retried once on the other. EIO when neither can serve. Each
  // attempt writes into its own T: an abandoned attempt may still finish
  // later, so *result is filled only from the attempt whose answer is used.
  // `hedge` false: never sent to both NAS (a read through an unlinked
  // file's fds: the fd of a NAS that was out while the file was written
  // holds old bytes, and no replay reaches a file without a name).
  template <typename T>
  int ReadInto(std::function<int(const Backend&, T*)> fn, T* result, bool hedge = true) {
    std::shared_ptr<T> out[2];
    int from = -1;
    int r = ReadHedged(
        [&](const Backend& b) -> WorkerPool::Fn {
          auto o = out[RoleIndex(b)] = std::make_shared<T>();
          return [fn, o, nas = &b] {
            DirCache::Scope cached;  // a read through the mount: see DirCache
            return fn(*nas, o.get());
          };
        },
        &from, hedge);
    if (r == 0) *result = std::move(*out[from]);
    return r;
  }
  // Applies a mutation touching `paths` (1 or 2) to both NAS (see Mirror),
  // honouring a running copy (see TreeSync) and a running replay (the
  // journal routes it), after marking its directories in the journal's
  // activity log. `what` says which operation it is (and so what the
  // journal records); `range` is a write's [offset, offset+length).
  // `link_from`: link(2)'s existing name, so a replay links rather than copies.
  // `aliases`: the file's other names (hard links), journaled with the same
  // change though the op acts on paths only: a replay must reach the data
  // by a name that still exists, whichever one the application used.
  int Mutate(Mutation what, std::initializer_list<std::string> paths, const Mirror::Op& op,
             journal::Range range = {}, const std::string& link_from = {},
             const std::vector<std::string>& aliases = {});
  // Mutate's rule for a NAS being replayed onto: it takes the change only
  // if the change touches nothing still pending there; otherwise the
  // change is journaled for it (its side cleared in *targets, set in
  // *journaled, *writing = it, for EndWrites) and told to the other web
  // servers, and is replayed after what came before (never an older copy
  // over a newer). 0, or the errno to answer.
  int RouteAroundReplays(const std::vector<journal::Change>& changes, Mirror::Targets* targets,
                         Mirror::Targets* journaled, std::optional<journal::Target>* writing)
      REQUIRES_SHARED(sync_mu_);
  // After a write or truncate of `path` that the `missed` sides did not
  // take: if the file has other names, journals its inode (Op::kLinked).
  int NoteLinkedFile(const std::string& path, const Mirror::Targets& missed);
  // The other names of ino (hard links) that `path` is not.
  std::vector<std::string> AliasesOf(fuse_ino_t ino, const std::string& path) const;

  // An inode's name, guarded while an operation acts on the file by that
  // name: READ, WRITE, GETATTR, SETATTR, FALLOCATE and FSYNC hold it shared;
  // a rename or unlink that moves, replaces or removes the name holds it
  // exclusively until the inode table follows. Without it, a read that
  // resolved a path before a rename over it could open the new file at that
  // path and hand out its bytes as the old file's (a torn read), and a
  // write could land in the wrong file. Striped by inode number; a rename
  // takes its two stripes in order.
  std::shared_lock<SharedGate> ShareName(fuse_ino_t ino) {
    return std::shared_lock<SharedGate>(name_locks_[ino % kNameStripes]);
  }
  class NameLock {
   public:
    NameLock() = default;
    NameLock(NameLock&&) = default;
    NameLock& operator=(NameLock&&) = default;

   private:
    friend class Nasfs;
    std::unique_lock<SharedGate> first_, second_;
  };
  // 0 for an inode the kernel does not know (nothing to guard).
  NameLock LockNames(fuse_ino_t a, fuse_ino_t b = 0);
  // Renames through the mount, begun and finished (the inode table
  // updated). An operation takes RenameSnapshot() before it resolves a
  // path; one that then found nothing there asks RenamedSince(snapshot):
  // whether a rename was under way then or began since, after waiting
  // (bounded by io_timeout) until none is under way, so the path it
  // resolves again is current.
  // The snapshot is the count of renames finished: one under way when it
  // was taken has begun but not finished, so the count begun differs from
  // it even once that rename is over. (It was the count begun, which
  // missed a rename under way at the start and over by the end; the hour
  // soak's lookup of a file in a directory renamed 4 ms before tried the
  // old path with that count the same at its start and end, and answered
  // ENOENT for a file both NAS held.)
  uint64_t RenameSnapshot() const { return renames_done_.load(std::memory_order_acquire); }
  bool RenamedSince(uint64_t snapshot);
  // Whether a rename was under way at RenameSnapshot(), began since, or is
  // under way now (no waiting).
  bool RenameRacing(uint64_t snapshot) const {
    return renames_begun_.load(std::memory_order_acquire) != snapshot ||
           renames_done_.load(std::memory_order_acquire) != snapshot;
  }
  // Marks one rename, from its start to the inode table's update.
  class RenameMark {
   public:
    explicit RenameMark(Nasfs& fs) : fs_(fs) { fs_.renames_begun_.fetch_add(1, std::memory_order_acq_rel); }
    ~RenameMark();
    RenameMark(const RenameMark&) = delete;
    RenameMark& operator=(const RenameMark&) = delete;

   private:
    Nasfs& fs_;
  };

  // Orphans, by nasfs inode number.
  std::shared_ptr<Orphan> FindOrphan(fuse_ino_t ino) const;
  void AdoptOrphan(fuse_ino_t ino, std::shared_ptr<Orphan> o);
  void DropOrphan(fuse_ino_t ino);
  // Applies a change to an orphan on each NAS that holds it in step (no
  // path, so no copy coverage to honour and nothing to replay: a file
  // without a name is never copied). A NAS that misses it while the other
  // takes it is marked stale in the orphan. op(b, fd) acts on b's fd.
  int MutateOrphan(Mutation what, const std::shared_ptr<Orphan>& o,
                   const std::function<int(const Backend&, int fd)>& op);

  double cache_timeout() const { return opts_.cache_timeout_s; }
  // How long one NAS call, or one step under the exclusive lock, may take.
  std::chrono::milliseconds io_timeout() const { return std::chrono::milliseconds(opts_.io_timeout_ms); }
  // A request or a thread of the daemon failed with an exception (it was
  // answered EIO or stopped cleanly): counted for status.
  void CountInternalError() { internal_errors_.fetch_add(1, std::memory_order_relaxed); }
  // Something on a NAS (or in the journal) could not be read as it should:
  // logged the first time it is seen, listed in status under "damage" (the
  // last kMaxDamage distinct reports) until it has not been seen for a
  // minute.
  void ReportDamage(const Backend& nas, const std::string& what);
  static constexpr size_t kMaxDamage = 32;
  nlohmann::json Status() const;

  // nasfsctl journal: up to `limit` pending entries, oldest first:
  // {"total":N,"entries":[{"path","target","ops":[...],"scope","ranges":[[off,len]...],
  //   "data_bytes","seq","since"}...]}
  nlohmann::json JournalList(size_t limit) const;
  // nasfsctl replay: replays now what a NAS that answers probes lacks,
  // without waiting for probe_successes. {"ok":false,"error":...} when no
  // NAS can be replayed onto (nothing pending, or the other NAS is out).
  nlohmann::json ReplayNow();
  nlohmann::json JournalStatus() const;

  // ---- other web servers on the same pair (fs/peers.h) ----
  // nasfsctl replay --node NAME: finishes now the replay a dead server
  // left on the shared NAS. Refused while NAME's heartbeat still changes.
  nlohmann::json ReplayNode(const std::string& node);
  // nasfsctl conflicts: the versions a split brain kept aside; restoring one
  // puts it back at its path (keeping the version it replaces).
  nlohmann::json Conflicts();
  nlohmann::json RestoreConflict(const std::string& id);

 private:
  Backend& Other(const Backend& b) { return &b == master_.get() ? *backup_ : *master_; }
  // A read: make(b) builds the call for NAS b. The router's NAS gets it
  // first; if it has not answered within its hedge delay and the other NAS
  // is healthy, the other gets it too and the first answer that is not a
  // fault wins (a fault sends that NAS down, and the other's answer is
  // awaited). Unhedged, a fault or a missed deadline sends the NAS down and
  // the read is tried once on the other. *from: the role index answering.
  int ReadHedged(const std::function<WorkerPool::Fn(const Backend&)>& make, int* from, bool hedge);
  // The router's NAS for a read; when neither serves, rules on serving
  // alone first (ServeAloneIfOnlyPeersPending). nullptr: none can.
  Backend* PickForRead();
  static constexpr std::chrono::milliseconds kHedgeFloor{10};
  // Waits for the first of a read's two calls (first on b, hedge on Other(b))
  // to answer without a fault; each call's fault or missed deadline sends its
  // NAS down. EIO when both fail.
  int AwaitFirstAnswer(Backend& b, const std::shared_ptr<Call> calls[2], const Clock::time_point deadlines[2],
                       int* from);
  // Submits a read to b, recording its latency when it finishes.
  std::shared_ptr<Call> SubmitRead(Backend& b, WorkerPool::Fn fn, Clock::time_point deadline);
  // A NAS failed (in band or by probe): it goes down.
  void OnFault(Backend& b, const std::string& why);
  void OnProbe(Backend& b, bool ok, const std::string& error, double latency_ms);
  // Called after each good probe of a down NAS: once it has had enough good
  // probes in a row (or `forced`, by nasfsctl replay) and no call of the
  // outage is still in flight, starts the replay of what it missed (or a
  // whole-tree copy).
  void MaybeRecover(Backend& b, bool forced = false);
  // The replay thread: rounds over the journal's pending entries for b
  // until none is left, then b serves again (see docs/ARCHITECTURE.md).
  // Its steps are Replayer's (fs/replayer.cc).
  void ReplayLoop(Backend& b);
  class Replayer;
  // The replay's drain round (see ReplayLoop) comes once at most this many
  // entries are left, or from this round on. It copies for at most
  // kDrainBudget, then sets directory times and tries the switch-back.
  static constexpr size_t kDrainEntries = 64;
  static constexpr uint64_t kMaxRounds = 8;
  static constexpr std::chrono::milliseconds kDrainBudget{200};
  // A write to a path pending for t, while the replay onto t drains, waits
  // for the drain instead of pending the path again: the drain (its budget
  // and its switch-back fit in this) can then empty the set and switch
  // back, while every other write goes on. Writes never wait otherwise.
  // Each such write waits at most kDrainHold, whatever the drain does (a
  // NAS call in it hangs, a large copy): it then goes on and pends its
  // path again, and the journal keeps just what it changed (Journal::Done),
  // so the next drain has little to copy. The hold also paces a steady
  // writer to a file the drain copies (one write per kDrainHold), so its
  // new ranges stay few. Held, plus its own NAS call, a write stays within
  // io_timeout + kDrainHold.
  static constexpr std::chrono::milliseconds kDrainHold{400};
  void WaitForDrain(journal::Target t, const std::vector<journal::Change>& changes);
  // b is being replayed onto only because other web servers' logs list
  // writes it lacks (nothing of this server's is pending for it), and the
  // other NAS is down: b serves rather than leave no NAS at all, as it
  // would had the other failed a moment before b was taken out of reads.
  // Returns whether it did.
  bool ServeAloneIfOnlyPeersPending(Backend& b);
  // What a replay round (or a takeover) knows for its journal::Op::kLinked
  // entries: what the source lacks, read once, when the first needs it.
  struct LinkedRound {
    bool have_lacked = false;
    std::map<std::string, journal::PeerEntry> lacked;
  };
  int ReplayEntry(TreeSync& rs, const journal::Pending& e, LinkedRound* round);
  // What nas lacks by any web server's account: this server's journal and
  // every server's log of it on the other NAS, merged by path.
  int LackedBy(Backend& nas, std::map<std::string, journal::PeerEntry>* out);
  // Every server's log of what t lacks (on the other NAS), merged by path
  // into *out (the split-brain merge, LackedBy).
  int ReadLacksLogs(journal::Target t, std::map<std::string, journal::PeerEntry>* out);
  // rs.ReconcileNamesOf (source: the NAS rs copies from) for an entry
  // written through `written`, leaving out that name (the entry copied it)
  // and the names the source itself lacks a change to.
  int ReconcileNamesOf(TreeSync& rs, Backend& source, const std::string& written,
                       const std::vector<uint64_t>& inodes, LinkedRound* round);
  // Starts ReplayLoop(b) (b is recovering).
  void StartReplayLocked(Backend& b) REQUIRES(recover_mu_);

  // ---- other web servers ----
  // Lists, durably, in this server's log on the other NAS that t lacks
  // `changes` (Mirror's and Mutate's journaling); a holder NAS that cannot
  // take it goes down. 0 or EIO.
  int NotePeers(journal::Target t, const std::vector<journal::Change>& changes);
  // Lists everything the journal holds for t (a replay's start, a restart).
  int NoteAllPending(journal::Target t);
  // One scan of nas: heartbeats, logs, generation. Updates peer_states_.
  int ObservePeers(Backend& nas, NasView* view);
  // After a good probe of nas: when another server's log on it says the
  // other NAS lacks writes, that NAS must not serve our reads until the
  // log is gone (a partition only that server saw): it turns recovering.
  void WatchPeers(Backend& nas, const NasView& view);
  // The other web servers whose logs in view list writes the NAS that is
  // target lacks, as "a, b" ("": none).
  std::string OthersLacking(const NasView& view, journal::Target target) const;
  // Whether no other server's log on o says b lacks something, taking over
  // (TakeOver) the logs of servers that are dead or named by nasfsctl
  // replay --node when `takeover`. *waiting: the servers still holding some.
  bool PeersDone(Backend& b, Backend& o, TreeSync& rs, bool takeover, std::vector<std::string>* waiting);
  int TakeOver(const std::string& node, Backend& b, Backend& o, TreeSync& rs);
  // TakeOver's steps: node's log of what b lacks, read from o (ECANCELED,
  // with b down for a whole-tree copy, when it is damaged or no log); its
  // entries replayed onto b, each under the lock, then their directories'
  // times.
  int ReadTakenLog(const std::string& node, Backend& b, Backend& o, journal::PeerLogContents* contents,
                   uint64_t* bytes);
  int ReplayTakenEntries(const std::vector<journal::PeerEntry>& entries, Backend& b, Backend& o, TreeSync& rs);
  // Another web server may write a path while this replay copies it (its
  // writes go to both NAS; nothing orders them against our copy), and the
  // copy can then leave b with an older version. Every path replayed since
  // the last call is compared on both NAS (type, size, mtime); one that
  // still differs an io_timeout later (when any write in flight has landed
  // or failed) is copied again from o.
  void Settle(Backend& b, Backend& o, TreeSync& rs);
  // A server whose heartbeat has not changed for `silence` (by this
  // server's clock, on either NAS).
  bool PeerSilent(const std::string& node, std::chrono::milliseconds silence) const;
  // Both NAS ahead of the generation they last had in step: each took
  // writes the other lacks.
  bool SplitBrainDetected(Backend& b, Backend& o);
  // Waits for, or (holding the claim) runs, the merge of a split brain.
  // 0 once the pair is back in step; an errno if it failed.
  int HandleSplitBrain();
  // The merge, in steps: plan (what each side lacks, the paths in walk
  // order), wire the resolver's view of the logs, merge each path, then
  // the directories' times, then mark both NAS in step.
  int ResolveSplitBrain();
  struct MergePlan {
    std::map<std::string, journal::PeerEntry> lacks[2];  // [0]: the master lacks (logs on the backup)
    std::vector<std::string> paths;                      // both sides' paths, ComparePaths order, once each
  };
  int PlanMerge(MergePlan* plan);
  static void WireResolver(const MergePlan& plan, SplitBrainResolver* resolver);
  // One path: its two versions to the resolver, or the one side's change
  // copied onto the other; *dirs gets the directories whose times follow.
  int MergePath(const MergePlan& plan, const std::string& p, SplitBrainResolver& resolver, TreeSync& to_master,
                TreeSync& to_backup, std::set<std::string>* dirs, uint64_t* conflicted);
  int MergeDirTimes(const std::set<std::string>& dirs, TreeSync& to_master, TreeSync& to_backup);
  // The merge is over (r: 0 or the errno it failed with; by: who merged):
  // status and its history say so.
  void EndSplitBrain(int r, const std::string& by);
  // A replay finds the pair in step: a split brain this server saw and
  // stopped waiting for (a NAS went down meanwhile) was merged by another.
  void SplitBrainMergedElsewhere(Backend& b, Backend& o);
  // No log on nas lists anything: its generation is in step again.
  void MarkInStep(Backend& nas);
  nlohmann::json PeersStatus() const;
  // The last split brain, for status.
  nlohmann::json SplitBrainJson() const REQUIRES(peers_mu_);
  // Start-up: checks the journal belongs to this pair and sets each NAS's
  // state from it (pending changes, an unfinished whole copy, directories
  // written when nasfs stopped).
  tl::expected<void, std::string> AdoptJournal();
  // AdoptJournal's steps. A journal of another NAS pair is refused unless
  // it holds nothing.
  tl::expected<void, std::string> CheckJournalPair(const std::string& owner);
  // b's state and whole-copy mark from what the journal lists for it.
  void SetStateFromJournal(Backend& b, bool continuous);
  // The directories being written when nasfs stopped, journaled for the NAS
  // that may lack their changes, which reconciles them before it serves.
  tl::expected<void, std::string> ReconcileUnfinishedDirs(const std::string behind[2]);
  // A NAS other servers' logs list behind serves no read while the other
  // NAS serves and is not itself behind.
  void KeepBehindOutOfReads(const std::string behind[2]);
  // The journal cannot vouch for what each NAS lacks (it was lost, replaced
  // or damaged): this server's own pending log on each NAS lists, durably,
  // every path the other NAS missed while this server wrote without it
  // (fs/peers.h). Its entries become pending again, so they are replayed
  // before that NAS serves reads. A log that cannot be read leaves its NAS
  // down for a whole-tree copy.
  tl::expected<void, std::string> AdoptOwnLogs();
  // At start (blocking, bounded): behind[i] lists the other web servers
  // whose logs on the other NAS say NAS i (master, backup) lacks writes.
  void PeersBehindAtStart(std::string behind[2]);
  tl::expected<void, std::string> PrepareSides();
  // Refuses nested NAS, and a mount point or journal inside a NAS (or the
  // journal inside the mount point), by inode. `*_open`: that NAS's root
  // was opened.
  tl::expected<void, std::string> CheckLayout(bool master_open, bool backup_open);
  void SetFullSync(Backend& b, bool on);
  // A journal errno as the application sees it (ENOSPC, else EIO), logged
  // once per failure.
  int JournalResult(int e);
  static journal::Target Tgt(const Backend& b) {
    return b.role() == Role::kMaster ? journal::kMaster : journal::kBackup;
  }
  // Starts a background copy of source onto target.
  void StartSyncLocked(Backend& source, Backend& target, bool verify_content) REQUIRES(sync_mu_);
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

  // ---- locks ----
  // The order, outermost first (a thread holding one takes only later ones):
  //   1. name_locks_ (a FUSE operation's file names; a rename takes two, in
  //      stripe order)
  //   2. recover_mu_ (one recovery at a time)
  //   3. sync_mu_ (every mutation shared; a copy's or a replay's step, a
  //      split-brain merge, a switch-back exclusively)
  //   4. the leaves, never held while taking another of Nasfs's locks:
  //      sync_ptr_mu_, replay_mu_, drain_mu_, peers_mu_, damage_mu_,
  //      renames_mu_, orphans_mu_
  //   5. other objects' locks, taken from under any of these: the
  //      journal's, Peers', TreeSync's, Backend's, the inode table's, the
  //      worker pools' (each a leaf of its own).
  // Constant after Prepare() (start-up is single-threaded): opts_, master_,
  // backup_, pair_id_, plan_, started_, journal_, recovered_, vouched_,
  // adopted_, peers_, monitors_.
  Mutex recover_mu_ ACQUIRED_BEFORE(sync_mu_);
  mutable SharedGate sync_mu_ ACQUIRED_BEFORE(sync_ptr_mu_, replay_mu_, drain_mu_, peers_mu_, damage_mu_,
                                              renames_mu_, orphans_mu_);
  WriteTracker writes_;  // every mutation's paths, for the copy's work done without sync_mu_
  // The running or last copy: written holding both sync_mu_ (exclusively)
  // and sync_ptr_mu_, so either lets one read it (SyncForStatus).
  std::shared_ptr<TreeSync> sync_ GUARDED_BY(sync_mu_);
  std::shared_ptr<TreeSync> SyncForStatus() const EXCLUDES(sync_ptr_mu_);
  mutable Mutex sync_ptr_mu_;  // lets Status() read sync_ without waiting on sync_mu_
  std::vector<std::shared_ptr<TreeSync>> old_syncs_ GUARDED_BY(sync_ptr_mu_);  // joined at exit

  std::atomic<uint64_t> failovers_{0}, retried_ops_{0}, replayed_paths_{0}, internal_errors_{0};
  std::atomic<uint64_t> hedged_reads_{0}, hedge_wins_{0};
  // Each NAS's read latency (by role index), shared with the calls that
  // record into it: a call abandoned on a hung NAS may finish after we go.
  std::shared_ptr<ReadLatency> read_latency_[2];

  std::unique_ptr<journal::Journal> journal_;
  journal::Recovered recovered_;  // what the journal's Open found
  bool vouched_ = true;           // the journal was found whole (set by Prepare)
  uint64_t adopted_[2] = {0, 0};  // paths taken from this server's own logs at start (master, backup)
  std::atomic<bool> journal_failing_{false};  // logged once per failure

  // The replay. At most one runs; recover_mu_ starts it.
  std::atomic<bool> stopping_{false};
  std::atomic<bool> replay_running_{false};
  std::thread replay_thread_ GUARDED_BY(recover_mu_);
  struct ReplayProgress {
    std::string target, started, finished, result;
    uint64_t done = 0, total = 0, rounds = 0, bytes = 0;
    double seconds = 0;
    Clock::time_point t0;
  };
  mutable Mutex replay_mu_;
  ReplayProgress replay_ GUARDED_BY(replay_mu_);
  std::set<std::string> settle_;  // replay thread only: see Settle
  Mutex drain_mu_;
  CondVar drain_cv_;
  bool draining_[2] GUARDED_BY(drain_mu_) = {false, false};  // by target (master, backup)
  std::atomic<uint64_t> settled_{0};  // paths Settle copied again

  // Other web servers, as seen through the NAS.
  std::unique_ptr<Peers> peers_;
  struct PeerState {
    std::string beat[2];          // last heartbeat read on each NAS
    Clock::time_point changed;    // when a heartbeat last changed (or first seen)
    PeerSeen seen[2];             // on master, on backup
    bool on[2] = {false, false};  // seen on that NAS
  };
  mutable Mutex peers_mu_;
  std::map<std::string, PeerState> peer_states_ GUARDED_BY(peers_mu_);  // other servers only
  Generation gens_[2] GUARDED_BY(peers_mu_);                            // last read
  std::set<std::string> takeover_now_ GUARDED_BY(peers_mu_);            // nasfsctl replay --node
  std::vector<std::string> waiting_for_ GUARDED_BY(peers_mu_);          // the replay waits on them
  struct SplitBrainInfo {
    std::string state = "none";  // none, detected, resolving, resolved, failed
    uint64_t count = 0;
    std::string detected, resolved, error;
    std::string by;  // the server that merged it ("" while none has)
    uint64_t paths = 0, conflicts = 0;
    nlohmann::json history = nlohmann::json::array();  // the last 10
  };
  SplitBrainInfo split_ GUARDED_BY(peers_mu_);

  struct Damage {
    std::string first_seen, last_seen;
    uint64_t count = 0;
    Clock::time_point seen;
  };
  mutable Mutex damage_mu_;
  std::map<std::pair<std::string, std::string>, Damage> damage_ GUARDED_BY(damage_mu_);  // by (NAS, what)

  std::atomic<uint64_t> renames_begun_{0}, renames_done_{0};
  Mutex renames_mu_;
  CondVar renames_cv_;  // signalled (under renames_mu_) as renames finish

  static constexpr size_t kNameStripes = 256;
  SharedGate name_locks_[kNameStripes];  // see ShareName; taken before recover_mu_ and sync_mu_

  mutable Mutex orphans_mu_;
  std::unordered_map<fuse_ino_t, std::shared_ptr<Orphan>> orphans_ GUARDED_BY(orphans_mu_);
};

// Low-level operations table (fs/ops_*.cc).
const fuse_lowlevel_ops& Operations();

}  // namespace nasfs
