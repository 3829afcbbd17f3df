// nasfs status and the journal's control commands: what `nasfsctl status`,
// `nasfsctl journal` and `nasfsctl replay` read from a running Nasfs
// (fs/commands.cc routes the requests here). Members of Nasfs, apart from
// its operations so that nasfs.cc keeps the wiring and the write path.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <ctime>

#include <fmt/format.h>

#include "fs/nasfs.h"

namespace nasfs {

namespace {

nlohmann::json IsoFromNs(int64_t ns) {
  if (ns == 0) return nullptr;
  time_t secs = static_cast<time_t>(ns / 1000000000);
  struct tm tm;
  gmtime_r(&secs, &tm);
  char buf[40];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

}  // namespace

nlohmann::json Nasfs::JournalStatus() const {
  auto st = journal_->stats();
  nlohmann::json j;
  j["dir"] = journal_->dir();
  j["state"] = st.ok ? "ok" : "failed";
  j["error"] = st.error_text;
  j["pending"] = st.pending[0] + st.pending[1];
  j["pending_master"] = st.pending[0];
  j["pending_backup"] = st.pending[1];
  j["bytes"] = st.data_bytes[0] + st.data_bytes[1];
  int64_t oldest = st.oldest_ns[0] && st.oldest_ns[1] ? std::min(st.oldest_ns[0], st.oldest_ns[1])
                                                      : std::max(st.oldest_ns[0], st.oldest_ns[1]);
  j["oldest"] = IsoFromNs(oldest);
  j["log_bytes"] = st.log_bytes;
  j["segments"] = st.segments;
  j["active_dirs"] = st.active_dirs;
  j["syncs"] = st.syncs;
  j["records"] = st.records;
  j["at_start"] = {{"torn_bytes", recovered_.torn_bytes},
                   {"damaged_records", recovered_.damaged_records},
                   {"damage", recovered_.damage},
                   {"unfinished_dirs", recovered_.unfinished_dirs.size()},
                   {"fresh", recovered_.fresh},
                   {"vouched", vouched_},
                   {"adopted_from_own_logs", {{"master", adopted_[0]}, {"backup", adopted_[1]}}}};
  MutexLock lk(&replay_mu_);
  nlohmann::json r;
  r["state"] = replay_running_ ? "running" : "idle";
  r["target"] = replay_.target;
  r["done"] = replay_.done;
  r["total"] = replay_.total;
  r["rounds"] = replay_.rounds;
  r["bytes_copied"] = replay_.bytes;  // file data copied, set when the replay ends
  r["started"] = replay_.started;
  r["finished"] = replay_.finished;
  r["result"] = replay_.result;
  double secs = replay_running_ ? std::chrono::duration<double>(Clock::now() - replay_.t0).count() : replay_.seconds;
  r["seconds"] = secs;
  r["rate_per_s"] = secs > 0 ? static_cast<double>(replay_.done) / secs : 0.0;
  j["replay"] = r;
  return j;
}

nlohmann::json Nasfs::JournalList(size_t limit) const {
  std::vector<journal::Pending> all = journal_->PendingFor(journal::kMaster);
  for (auto& e : journal_->PendingFor(journal::kBackup)) all.push_back(std::move(e));
  std::sort(all.begin(), all.end(), [](const journal::Pending& a, const journal::Pending& b) {
    return a.first_ns != b.first_ns ? a.first_ns < b.first_ns : a.seq < b.seq;
  });
  nlohmann::json out;
  out["total"] = all.size();
  out["entries"] = nlohmann::json::array();
  for (size_t i = 0; i < all.size() && i < limit; ++i) {
    const auto& e = all[i];
    nlohmann::json ops = nlohmann::json::array();
    journal::ForEachOp(e.ops, [&](journal::Op op) { ops.push_back(journal::OpName(op)); });
    nlohmann::json ranges = nlohmann::json::array();
    for (const auto& r : e.ranges) ranges.push_back({r.offset, r.length});
    static const char* kScopes[] = {"entry", "shallow", "tree"};
    out["entries"].push_back({{"path", e.path},
                              {"target", journal::TargetName(e.target)},
                              {"ops", ops},
                              {"scope", kScopes[static_cast<int>(e.scope)]},
                              {"whole_file", !e.data_only},
                              {"ranges", ranges},
                              {"data_bytes", e.data_bytes},
                              {"seq", e.seq},
                              {"since", IsoFromNs(e.first_ns)}});
  }
  return out;
}

nlohmann::json Nasfs::ReplayNow() {
  for (Backend* b : {master_.get(), backup_.get()})
    if (b->state() == BackendState::kRecovering || (b->state() == BackendState::kSyncing))
      return {{"started", false}, {"message", fmt::format("already running onto the {}", b->name())}};
  std::string why = "nothing to replay: both NAS are in step";
  for (Backend* b : {master_.get(), backup_.get()}) {
    if (b->state() != BackendState::kDown) continue;
    Backend& o = Other(*b);
    if (o.state() != BackendState::kHealthy)
      return {{"ok", false}, {"error", fmt::format("cannot replay onto the {}: the {} is {}", b->name(), o.name(), StateName(o.state()))}};
    if (b->probe_streak() == 0)
      return {{"ok", false}, {"error", fmt::format("the {} {} does not answer probes yet", b->name(), b->path())}};
    MaybeRecover(*b, /*forced=*/true);
    auto st = b->state();
    if (st == BackendState::kDown)
      return {{"ok", false}, {"error", fmt::format("the {} still has calls in flight from its outage; try again", b->name())}};
    return {{"started", true}, {"target", b->name()}, {"state", StateName(st)}};
  }
  return {{"ok", false}, {"error", why}};
}

// sync_ is written holding sync_mu_ and sync_ptr_mu_ both, so holding
// either reads it safely; the analysis knows one guard per field only.
std::shared_ptr<TreeSync> Nasfs::SyncForStatus() const NO_THREAD_SAFETY_ANALYSIS {
  MutexLock p(&sync_ptr_mu_);  // not sync_mu_: a replay holds that for seconds
  return sync_;
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
  std::shared_ptr<TreeSync> s = SyncForStatus();
  j["sync"] = s ? s->Status() : nlohmann::json{{"state", "none"}};
  j["journal"] = JournalStatus();
  j["peers"] = PeersStatus();
  {
    MutexLock lk(&peers_mu_);
    j["split_brain"] = {{"state", split_.state},
                        {"count", split_.count},
                        {"last", split_.count ? SplitBrainJson() : nlohmann::json(nullptr)},
                        {"history", split_.history}};
    j["coordination"] = {{"waiting_for", waiting_for_},
                         {"generation", {{"master", {{"generation", gens_[0].generation}, {"in_step", gens_[0].in_step}}},
                                         {"backup", {{"generation", gens_[1].generation}, {"in_step", gens_[1].in_step}}}}}};
  }
  for (int i = 0; i < 2; ++i) {
    j["backends"][i]["missed"]["count"] = j["journal"][i == 0 ? "pending_master" : "pending_backup"];
    const auto p99 = read_latency_[i]->P99();
    j["backends"][i]["read_p99_ms"] = p99.count() ? nlohmann::json(p99.count() / 1000.0) : nlohmann::json(nullptr);
    j["backends"][i]["hedge_delay_ms"] = opts_.hedge_delay_ms ? nlohmann::json(read_latency_[i]->HedgeDelay().count() / 1000.0) : nlohmann::json(nullptr);
  }
  {
    MutexLock lk(&damage_mu_);
    j["damage"] = nlohmann::json::array();
    for (const auto& [key, d] : damage_)
      j["damage"].push_back({{"nas", key.first}, {"what", key.second}, {"first_seen", d.first_seen},
                             {"last_seen", d.last_seen}, {"count", d.count}});
  }
  size_t orphans;
  {
    MutexLock lk(&orphans_mu_);
    orphans = orphans_.size();
  }
  j["counters"] = {{"mirrored_ops", mirror_.mirrored_ops()}, {"divergences", mirror_.divergences()},
                   {"failovers", failovers_.load()},     {"retried_ops", retried_ops_.load()},
                   {"hedged_reads", hedged_reads_.load()}, {"hedge_wins", hedge_wins_.load()},
                   {"replayed_paths", replayed_paths_.load()}, {"settled_paths", settled_.load()},
                   {"internal_errors", internal_errors_.load()},
                   {"inodes", inodes_.size()},
                   {"open_unlinked", orphans}};
  return j;
}

}  // namespace nasfs
