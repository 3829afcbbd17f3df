// The replay onto a returning NAS, in named steps: prepare (a split brain
// merged, the shared log complete), rounds over the journal's pending
// entries (each perhaps a drain round), settle, switch back, finish. See
// docs/ARCHITECTURE.md, "Replay".

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "fs/log.h"
#include "fs/nasfs.h"

namespace nasfs {

class Nasfs::Replayer {
 public:
  Replayer(Nasfs& fs, Backend& b)
      : fs_(fs),
        b_(b),
        o_(fs.Other(b)),
        t_(Tgt(b)),
        log_(Logger("replay")),
        rs_(&o_, &b_, &fs.sync_mu_, /*verify_content=*/false, /*displace=*/false, nullptr),
        t0_(Clock::now()),
        share_(fs.opts_.replay_share / 100.0) {
    rs_.SetWriteTracker(&fs_.writes_);  // Settle and takeovers copy data before their lock
    for (int i = 0; i < fs.opts_.replay_threads && fs.opts_.replay_threads > 1; ++i) {
      lanes_.push_back(std::make_unique<TreeSync>(&o_, &b_, &fs.sync_mu_, false, false, nullptr));
      lanes_.back()->SetWriteTracker(&fs_.writes_);
      lanes_.back()->SetPlainOnly(true);
    }
    fs_.settle_.clear();
    MutexLock lk(&fs_.replay_mu_);
    fs_.replay_ = ReplayProgress{};
    fs_.replay_.target = b_.name();
    fs_.replay_.started = NowIso8601();
    fs_.replay_.t0 = t0_;
  }

  void Run() {
    if (!Prepare()) return;
    while (!fs_.stopping_) {
      if (!SidesStillUp()) return;
      auto entries = PendingSorted();
      if (entries.empty()) {
        fs_.Settle(b_, o_, rs_);
        if (SwitchBack(/*takeover=*/true)) return;
        // Other servers still replay what they hold (or a write re-pended):
        // look again shortly.
        for (int i = 0; i < 4 && !fs_.stopping_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
        continue;
      }
      if (!Round(std::move(entries))) return;
    }
    Finish("stopped: nasfs is stopping");
  }

 private:
  // Ends a drain round, releasing the writes it held back.
  struct Drain {
    Nasfs& fs;
    int ti;
    bool on = false;
    // Returns when its copies must stop (kDrainBudget from now).
    Clock::time_point Start() {
      const auto now = Clock::now();
      MutexLock lk(&fs.drain_mu_);
      fs.draining_[ti] = on = true;
      return now + kDrainBudget;
    }
    void End() {
      if (!on) return;
      {
        MutexLock lk(&fs.drain_mu_);
        fs.draining_[ti] = on = false;
      }
      fs.drain_cv_.SignalAll();
    }
    ~Drain() { End(); }
  };

  // The progress status shows, once the replay ends.
  void Finish(const std::string& result) {
    uint64_t bytes = rs_.Status().value("bytes_copied", uint64_t{0});
    for (const auto& l : lanes_) bytes += l->Status().value("bytes_copied", uint64_t{0});
    MutexLock lk(&fs_.replay_mu_);
    fs_.replay_.bytes = bytes;
    fs_.replay_.result = result;
    fs_.replay_.finished = NowIso8601();
    fs_.replay_.seconds = std::chrono::duration<double>(Clock::now() - t0_).count();
  }

  std::string DoneMessage() {
    uint64_t done;
    {
      MutexLock lk(&fs_.replay_mu_);
      done = fs_.replay_.done;
    }
    return fmt::format("replayed {} changes from {} in {:.2f} s", done, o_.name(),
                       std::chrono::duration<double>(Clock::now() - t0_).count());
  }

  // A split brain is merged before anything is replayed (a plain replay
  // would copy one side's versions over the other's), and the log on the
  // shared NAS lists everything the journal holds for b. False: stopped.
  bool Prepare() {
    if (fs_.SplitBrainDetected(b_, o_)) {
      if (int e = fs_.HandleSplitBrain()) {
        b_.SetState(BackendState::kDown, fmt::format("split brain not resolved: {}", std::strerror(e)));
        Finish(fmt::format("stopped: split brain: {}", std::strerror(e)));
        return false;
      }
    } else {
      fs_.SplitBrainMergedElsewhere(b_, o_);
    }
    if (int e = fs_.NoteAllPending(t_)) {
      b_.SetState(BackendState::kDown,
                  fmt::format("cannot list what it lacks on the {}: {}", o_.name(), std::strerror(e)));
      Finish(fmt::format("stopped: listing what it lacks: {}", std::strerror(e)));
      return false;
    }
    return true;
  }

  // b is still being replayed onto, from a healthy o. False: stopped.
  bool SidesStillUp() {
    if (b_.state() != BackendState::kRecovering) {
      Finish(fmt::format("stopped: {} is {}", b_.name(), StateName(b_.state())));
      return false;
    }
    if (o_.state() == BackendState::kHealthy) return true;
    // b holds every write of this server (nothing of ours is pending for
    // it) and lacks only what other web servers wrote to o alone: it is
    // what this server would read had o failed a moment earlier, so it
    // serves rather than leave no NAS at all. The other servers' writes
    // come back by their replays, or the split-brain merge if this server
    // writes b alone meanwhile.
    if (fs_.ServeAloneIfOnlyPeersPending(b_)) {
      Finish("stopped: the source went out; serving alone");
      return false;
    }
    b_.SetState(BackendState::kDown, fmt::format("replay stopped: {} is {}", o_.name(), StateName(o_.state())));
    Finish("stopped: the source went out");
    return false;
  }

  // Parents before what they hold.
  std::vector<journal::Pending> PendingSorted() {
    auto entries = fs_.journal_->PendingFor(t_);
    std::sort(entries.begin(), entries.end(),
              [](const journal::Pending& x, const journal::Pending& y) { return ComparePaths(x.path, y.path) < 0; });
    return entries;
  }

  // b serves again if nothing is pending for it, here or in any other web
  // server's log, atomically with every write's routing (FinishIfEmpty runs
  // under the journal's lock, where RecordIfTouching decides): nothing it
  // lacks is then pending or in flight. `takeover`: dead servers' logs may
  // be replayed now (not while draining: that takes time).
  bool SwitchBack(bool takeover) {
    std::vector<std::string> waiting;
    bool done = fs_.PeersDone(b_, o_, rs_, takeover, &waiting);
    {
      MutexLock lk(&fs_.peers_mu_);
      fs_.waiting_for_ = waiting;
    }
    if (!done) return false;
    if (fs_.journal_->HasPending(t_)) return false;
    // Our own log goes first. A write missing b meanwhile lists its path
    // in a log that this removes; but it pends the path here too, so the
    // switch-back below fails, and everything pending is listed again.
    if (int e = fs_.peers_->Clear(t_)) {
      log_->warn("cannot remove this server's log of what the {} lacks: {}", b_.name(), std::strerror(e));
      return false;
    }
    if (!fs_.journal_->FinishIfEmpty(t_, [&] { b_.SetState(BackendState::kHealthy, DoneMessage()); })) {
      if (int e = fs_.NoteAllPending(t_))
        log_->warn("cannot list again what the {} lacks: {}", b_.name(), std::strerror(e));
      return false;
    }
    Finish("done");
    if (&b_ == fs_.master_.get()) log_->info("reads return to the master {}", b_.path());
    fs_.MarkInStep(o_);
    return true;
  }

  // One round over the pending entries. False: the replay stopped (b
  // serves again, or it failed).
  bool Round(std::vector<journal::Pending> entries) {
    uint64_t round;
    {
      MutexLock lk(&fs_.replay_mu_);
      fs_.replay_.total += entries.size();
      round = ++fs_.replay_.rounds;
    }
    // A steady stream of writes keeps re-pending what it touches (a
    // directory taking new files): once little is left, or after many
    // rounds, a drain round holds back the writes to pending paths (only
    // those, each for at most kDrainHold), so the set can empty and the
    // switch-back comes. What its kDrainBudget leaves is the next round's.
    // Past kMaxRounds with much left, a pass that holds nothing back comes
    // first, with the lanes: a drain does little a round (its budget, one
    // at a time), and its round's fixed costs (Settle, the walk for linked
    // files, the switch-back's reading of the logs) would then be most of
    // the replay's time.
    const bool many = entries.size() > kDrainEntries;
    if (round >= kMaxRounds && many) {
      IndexLinked(entries);
      if (auto r = Pass(entries, /*draining=*/false, {}); r != PassResult::kDone) return r == PassResult::kAgain;
      entries = PendingSorted();
    }
    const bool draining = !many || round >= kMaxRounds;
    Drain drain{fs_, journal::TargetIndex(t_)};
    Clock::time_point drain_end{};
    if (draining) {
      // What takes time but changes nothing on b comes before the hold.
      fs_.Settle(b_, o_, rs_);
      IndexLinked(PendingSorted());
      drain_end = drain.Start();
      entries = PendingSorted();
    } else {
      IndexLinked(entries);
    }
    if (auto r = Pass(entries, draining, drain_end); r != PassResult::kDone) return r == PassResult::kAgain;
    if (draining && SwitchBack(/*takeover=*/false)) return false;
    drain.End();
    return true;
  }

  // The names of the inodes the entries' kLinked entries wrote: one walk
  // of the source for all of them (a walk each cost the soak's settle).
  // An entry whose inodes it lacks walks again.
  void IndexLinked(const std::vector<journal::Pending>& entries) {
    if (int r = rs_.IndexInodesOf(entries))
      log_->warn("replay onto the {}: cannot walk the {} for linked files' names: {}", b_.name(), o_.name(),
                 std::strerror(r));
  }

  enum class PassResult {
    kDone,     // every entry taken was replayed and marked done
    kAgain,    // the round ends; the next one takes what is left
    kStopped,  // the replay stopped (Finish said why)
  };
  // Replays the entries once (ReplayEntries) and marks what it did done.
  PassResult Pass(const std::vector<journal::Pending>& entries, bool draining, Clock::time_point drain_end) {
    std::vector<journal::Pending> replayed;  // each as BeginReplay found it
    std::string failed;
    rs_.BeginRound();
    for (const auto& l : lanes_) l->BeginRound();
    int err = ReplayEntries(entries, draining, drain_end, &replayed, &failed);
    rs_.EndRound();
    for (const auto& l : lanes_) l->EndRound();
    if (err == ECANCELED) return PassResult::kAgain;
    // The source changed under the copy (EAGAIN), or a path or its parent
    // went away on the source meanwhile (a write of this or another web
    // server): the next round takes it again. Not the NAS's fault.
    if (err == EAGAIN || err == ENOENT || err == ENOTDIR) return PassResult::kAgain;
    if (err) {
      fs_.OnFault(b_, fmt::format("replay of '{}': {}", ShownPath(failed), std::strerror(err)));
      Finish(fmt::format("stopped: replay of '{}': {}", ShownPath(failed), std::strerror(err)));
      return PassResult::kStopped;
    }
    for (const auto& e : replayed) {
      fs_.journal_->Done(t_, e.path, e.seq);
      if (!e.path.empty()) fs_.settle_.insert(e.path);
    }
    // Names outside the entries that the replay linked to keep a hard link:
    // a write through the mount does not wait for those.
    for (auto& p : rs_.TakeRelinked()) fs_.settle_.insert(std::move(p));
    for (auto& p : rs_.TakeCopied()) fs_.settle_.insert(std::move(p));
    for (const auto& l : lanes_)
      for (auto& p : l->TakeCopied()) fs_.settle_.insert(std::move(p));
    fs_.replayed_paths_.fetch_add(replayed.size(), std::memory_order_relaxed);
    return PassResult::kDone;
  }

  // Whether the replay goes on: false once nasfs stops or either side
  // leaves its state (the round ends; SidesStillUp says why).
  bool Going() const {
    return !fs_.stopping_ && b_.state() == BackendState::kRecovering && o_.state() == BackendState::kHealthy;
  }

  // Throttle: work at most `share` of the time, so the website keeps the
  // NAS it reads from (not while writes wait on the drain).
  void Throttle(Clock::time_point w0, bool draining) const {
    if (share_ < 1.0 && !draining) std::this_thread::sleep_for((Clock::now() - w0) * ((1.0 - share_) / share_));
  }

  void CountDone() {
    MutexLock lk(&fs_.replay_mu_);
    ++fs_.replay_.done;
  }

  // An entry of one path alone: no subtree, no link to make and no other
  // names to bring over.
  static bool LoneEntry(const journal::Pending& e) {
    return e.scope == journal::Scope::kEntry && e.link_from.empty() && e.inodes.empty();
  }

  // An entry a lane may take: a lone one, not a directory's times. (A lane
  // still refuses it, TreeSync::kNotPlain, if it finds a directory or a
  // linked file.)
  static bool LaneEntry(const journal::Pending& e) {
    using journal::Op;
    constexpr uint32_t kSerialOps = (1u << static_cast<unsigned>(Op::kDirTimes)) |
                                    (1u << static_cast<unsigned>(Op::kCrash));
    return LoneEntry(e) && !(e.ops & kSerialOps);
  }

  // The lanes of one round: entries of single files replayed several at
  // once, each lane with a plain-only TreeSync of its own (lanes_). The
  // replay thread hands them out in order, and replays every other entry
  // itself once the lanes are idle (Quiesce), so a directory's work never
  // runs beside work beneath it; lane entries are files on both sides, so
  // no two running ones lie one under the other.
  class LaneRun {
   public:
    LaneRun(Replayer& r, bool draining) : r_(r), draining_(draining) {
      try {
        for (size_t i = 0; i < r.lanes_.size(); ++i) threads_.emplace_back([this, i] { Lane(*r_.lanes_[i]); });
      } catch (const std::system_error& e) {  // no thread to be had: the lanes started so far do
        r_.log_->warn("replay onto the {}: {} of {} lanes started: {}", r_.b_.name(), threads_.size(),
                      r.lanes_.size(), e.what());
      }
    }
    ~LaneRun() { Close(); }
    size_t size() const { return threads_.size(); }

    // Queues e for a lane; false (not queued) once a lane failed.
    bool Push(journal::Pending e) {
      MutexLock lk(&mu_);
      while (err_ == 0 && queue_.size() >= threads_.size()) cv_.Wait(&mu_);
      if (err_) return false;
      queue_.push_back(std::move(e));
      cv_.SignalAll();
      return true;
    }
    // Waits until the lanes hold nothing.
    void Quiesce() {
      MutexLock lk(&mu_);
      while (!queue_.empty() || busy_ > 0) cv_.Wait(&mu_);
    }
    // Ends the lanes (what is queued is dropped); then what they did.
    void Close() {
      {
        MutexLock lk(&mu_);
        closed_ = true;
        queue_.clear();
      }
      cv_.SignalAll();
      for (auto& t : threads_) t.join();
      threads_.clear();
    }
    int Result(std::vector<journal::Pending>* replayed, std::vector<journal::Pending>* deferred, std::string* failed) {
      MutexLock lk(&mu_);
      for (auto& e : replayed_) replayed->push_back(std::move(e));
      for (auto& e : deferred_) deferred->push_back(std::move(e));
      replayed_.clear();
      deferred_.clear();
      *failed = failed_;
      return err_;
    }

   private:
    void Lane(TreeSync& rs) {
      for (;;) {
        journal::Pending e;
        {
          MutexLock lk(&mu_);
          while (queue_.empty() && !closed_) cv_.Wait(&mu_);
          if (queue_.empty()) return;
          e = std::move(queue_.front());
          queue_.pop_front();
          ++busy_;
        }
        cv_.SignalAll();  // room in the queue
        const auto w0 = Clock::now();
        int r = ECANCELED;
        ExceptionText what;
        if (r_.Going() && !CatchAll(
                              [&] {
                                LinkedRound linked;  // unused: lane entries name no inodes
                                r = r_.fs_.ReplayEntry(rs, e, &linked);
                              },
                              &what)) {
          r_.fs_.CountInternalError();
          r_.log_->error("replay of '{}' onto the {} failed with an internal error: {}", ShownPath(e.path),
                         r_.b_.name(), what.c_str());
          r = EIO;
        }
        if (r == 0) r_.CountDone();
        {
          MutexLock lk(&mu_);
          --busy_;
          if (r == 0)
            replayed_.push_back(std::move(e));
          else if (r == TreeSync::kNotPlain)
            deferred_.push_back(std::move(e));
          else if (err_ == 0) {
            err_ = r;
            failed_ = e.path;
          }
        }
        cv_.SignalAll();
        if (r == 0) r_.Throttle(w0, draining_);
      }
    }

    Replayer& r_;
    const bool draining_;
    std::vector<std::thread> threads_;
    Mutex mu_;
    CondVar cv_;
    std::deque<journal::Pending> queue_ GUARDED_BY(mu_);
    int busy_ GUARDED_BY(mu_) = 0;
    bool closed_ GUARDED_BY(mu_) = false;
    int err_ GUARDED_BY(mu_) = 0;
    std::string failed_ GUARDED_BY(mu_);
    std::vector<journal::Pending> replayed_ GUARDED_BY(mu_), deferred_ GUARDED_BY(mu_);
  };

  // Copies each entry as the journal has it now onto b, then the times of
  // the directories they changed; *replayed gets what was copied. 0, or
  // the errno that stopped it (*failed: the path). Single files go to the
  // lanes, outside a drain round (whose entries are few).
  int ReplayEntries(const std::vector<journal::Pending>& entries, bool draining, Clock::time_point drain_end,
                    std::vector<journal::Pending>* replayed, std::string* failed) {
    LinkedRound linked;
    std::optional<LaneRun> lanes;
    if (!draining && !lanes_.empty()) lanes.emplace(*this, draining);
    if (lanes && lanes->size() == 0) lanes.reset();  // one at a time, here
    std::vector<journal::Pending> deferred;
    size_t taken = 0;
    // One entry the full way, here. 0, or the errno that stopped it.
    auto serial = [&](journal::Pending cur) {
      if (lanes) lanes->Quiesce();
      auto w0 = Clock::now();
      if (int r = fs_.ReplayEntry(rs_, cur, &linked)) {
        *failed = cur.path;
        return r;
      }
      // What it did to directories (made, removed) the lanes look up again.
      if (lanes)
        for (const auto& l : lanes_) l->BeginRound();
      replayed->push_back(std::move(cur));
      CountDone();
      Throttle(w0, draining);
      return 0;
    };
    for (const auto& e : entries) {
      if (!Going()) return ECANCELED;
      // The rest is the next round's; one entry at least, so that a round
      // whose budget went elsewhere still moves.
      if (draining && taken > 0 && Clock::now() >= drain_end) break;
      // The entry as of now (the snapshot may be older); none if a write
      // journaled for b has not landed on o yet: take it next round.
      journal::Pending cur;
      if (!fs_.journal_->BeginReplay(t_, e.path, &cur)) continue;
      ++taken;
      // A path this round already copied whole (in a directory the target
      // lacked), untouched since: nothing of it is left to copy. Not a
      // subtree (writes beneath it are not counted on its path) and not
      // a link (its other names are the entry's work too).
      const bool copied = LoneEntry(cur) && rs_.CopiedSince(cur.path);
      const bool lane = lanes && !copied && LaneEntry(cur);
      log_->debug("replay onto the {}: '{}' ops {:#x} scope {} seq {}{}{}{}", b_.name(), ShownPath(cur.path), cur.ops,
                  static_cast<int>(cur.scope), cur.seq,
                  cur.link_from.empty() ? "" : " link from " + ShownPath(cur.link_from),
                  cur.data_only ? fmt::format(" ranges {}", cur.ranges.size()) : "",
                  copied ? ": copied whole already this round" : lane ? ": to a lane" : "");
      if (copied) {
        replayed->push_back(std::move(cur));
        CountDone();
      } else if (lane) {
        if (!lanes->Push(std::move(cur))) break;  // a lane failed: its error below
      } else if (int r = serial(std::move(cur))) {
        return r;
      }
    }
    if (lanes) {
      lanes->Quiesce();
      lanes->Close();
      if (int r = lanes->Result(replayed, &deferred, failed)) return r;
    }
    // What a lane found to need directory or link work, the full way.
    std::sort(deferred.begin(), deferred.end(),
              [](const journal::Pending& x, const journal::Pending& y) { return ComparePaths(x.path, y.path) < 0; });
    lanes.reset();
    for (auto& cur : deferred) {
      if (!Going()) return ECANCELED;
      log_->debug("replay onto the {}: '{}': not a lone file: the full way", b_.name(), ShownPath(cur.path));
      if (int r = serial(std::move(cur))) return r;
    }
    // Entries created or removed by the replay moved their directories' times.
    std::set<std::string> parents;
    for (const auto& cur : *replayed)
      if (!cur.path.empty()) parents.insert(ParentOf(cur.path));
    for (const auto& p : parents)
      if (int r = rs_.ReconcileDirTimes(p)) {
        *failed = p;
        return r;
      }
    return 0;
  }

  Nasfs& fs_;
  Backend& b_;  // replayed onto
  Backend& o_;  // the source
  const journal::Target t_;
  std::shared_ptr<spdlog::logger> log_;
  TreeSync rs_;
  // Plain-only TreeSyncs, one per lane (replay_threads; none when 1).
  std::vector<std::unique_ptr<TreeSync>> lanes_;
  const Clock::time_point t0_;
  const double share_;
};

void Nasfs::ReplayLoop(Backend& b) { Replayer(*this, b).Run(); }

}  // namespace nasfs
