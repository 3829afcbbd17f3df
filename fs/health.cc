#include "fs/health.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "fs/identity.h"
#include "fs/log.h"

namespace nasfs {
namespace {

// What a probe found, filled on the worker thread.
struct ProbeResult {
  std::string error;
  UniqueFd new_root;  // a remounted NAS whose marker checked out
};

// "" if dirfd's marker names this pair and nas's role.
std::string CheckMarker(int dirfd, const Backend& nas, const std::string& pair_id) {
  auto m = ReadMarkerAt(dirfd, nas.path());
  if (!m) return m.error();
  if (!*m) return "no nasfs identity marker (not mounted?)";
  if ((*m)->pair_id != pair_id) return fmt::format("the identity marker names pair {}, not {}", (*m)->pair_id, pair_id);
  if ((*m)->role != nas.role())
    return fmt::format("the identity marker says {}, not {}", RoleName((*m)->role), nas.name());
  return "";
}

int Probe(const Backend& nas, const std::string& node, const std::string& pair_id, const std::string& beat,
          ProbeResult* out) {
  auto root = nas.Root();
  struct stat rs{}, ps{};
  bool root_ok = root->valid() && fstat(root->get(), &rs) == 0;
  int root_err = root_ok ? 0 : errno;
  // 1. Is the path still the root we use?
  auto fresh = nas.OpenPathAfresh();
  int dirfd = root->get();
  if (fresh && fstat(fresh->get(), &ps) == 0 && (!root_ok || ps.st_dev != rs.st_dev || ps.st_ino != rs.st_ino)) {
    std::string why = CheckMarker(fresh->get(), nas, pair_id);
    if (!why.empty()) {
      out->error = root_ok ? fmt::format("{} is no longer the NAS root: {}", nas.path(), why) : why;
      return EIO;
    }
    out->new_root = std::move(*fresh);
    dirfd = out->new_root.get();
  } else if (!root_ok) {
    out->error = fmt::format("root: {}", std::strerror(root_err ? root_err : EIO));
    return root_err ? root_err : EIO;
  } else {
    // 2. The marker of the root in use.
    std::string why = CheckMarker(dirfd, nas, pair_id);
    if (!why.empty()) {
      out->error = why;
      return EIO;
    }
  }
  // 3. A write, read back. Into a new file renamed over the heartbeat: an
  // entry of another kind planted at our name (a FIFO, a directory) is
  // replaced rather than opened, so it cannot block or fail every probe,
  // and a reader sees the old heartbeat or the new, never half of one.
  std::string name = fmt::format("{}/heartbeat.{}", kMetaDir, node);
  {
    auto meta = Backend::OpenBeneathAt(dirfd, kMetaDir, O_PATH | O_DIRECTORY);
    if (!meta) {
      out->error = fmt::format("heartbeat write: {}", std::strerror(meta.error()));
      return meta.error();
    }
    std::string tmp = fmt::format("heartbeat.{}.tmp", node);
    (void)unlinkat(meta->get(), tmp.c_str(), 0);  // a leftover, or something planted there
    auto f = Backend::OpenBeneathAt(meta->get(), tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
    int e = f ? 0 : f.error();
    if (!e && write(f->get(), beat.data(), beat.size()) != static_cast<ssize_t>(beat.size())) e = errno ? errno : EIO;
    if (!e && renameat(meta->get(), tmp.c_str(), meta->get(), name.c_str() + strlen(kMetaDir) + 1) != 0) {
      e = errno;
      // A directory planted at our name: move it out of the way (it is ours
      // to keep tidy, never to follow).
      if (e == EISDIR || e == ENOTEMPTY || e == EEXIST) {
        std::string aside = fmt::format("heartbeat.{}.junk.{}", node, getpid());
        if (renameat(meta->get(), name.c_str() + strlen(kMetaDir) + 1, meta->get(), aside.c_str()) == 0 &&
            renameat(meta->get(), tmp.c_str(), meta->get(), name.c_str() + strlen(kMetaDir) + 1) == 0)
          e = 0;
      }
    }
    if (e) {
      out->error = fmt::format("heartbeat write: {}", std::strerror(e));
      return e;
    }
  }
  auto back = ReadSmallFileAt(dirfd, name);
  if (!back || *back != beat) {
    out->error = "heartbeat read back differs";
    return EIO;
  }
  return 0;
}

}  // namespace

HealthMonitor::HealthMonitor(Backend* nas, std::string node, std::string pair_id,
                             std::chrono::milliseconds interval, ResultFn on_result, BeatFn beat)
    : nas_(nas),
      node_(std::move(node)),
      pair_id_(std::move(pair_id)),
      interval_(interval),
      on_result_(std::move(on_result)),
      beat_(std::move(beat)) {}

HealthMonitor::~HealthMonitor() { Stop(); }

void HealthMonitor::Start() {
  thread_ = std::thread([this] { Loop(); });
}

void HealthMonitor::Stop() {
  {
    MutexLock lk(&mu_);
    stop_ = true;
  }
  cv_.SignalAll();
  if (thread_.joinable()) thread_.join();
}

std::string HealthMonitor::ProbeOnce() {
  auto out = std::make_shared<ProbeResult>();
  Backend* nas = nas_;
  auto deadline = nas->Deadline();
  uint64_t seq = ++seq_;
  std::string beat = beat_ ? beat_(seq) : fmt::format("{} {}", seq, NowIso8601());
  beat += "\n";
  auto call = nas->Submit(
      [nas, node = node_, pair = pair_id_, beat, out] { return Probe(*nas, node, pair, beat, out.get()); }, deadline);
  int r = call->Wait(deadline);
  // The worker owns *out until the call is done: read it only then.
  if (!call->done()) return fmt::format("probe missed its {} ms deadline", nas->io_timeout().count());
  if (r != 0) return out->error.empty() ? std::strerror(r) : out->error;
  if (out->new_root.valid()) {
    nas->SwapRoot(std::move(out->new_root));
    Logger("health")->info("{} {}: picked up the NAS mounted again at its path", nas->name(), nas->path());
  }
  return "";
}

void HealthMonitor::Loop() {
  MutexLock lk(&mu_);
  while (!stop_) {
    lk.Unlock();
    // A probe, or what the daemon does with its result (reading the other
    // servers' files), that throws counts as a failed probe: the monitor
    // goes on probing.
    ExceptionText what;
    if (!CatchAll(
            [&] {
              auto t0 = Clock::now();
              std::string err = ProbeOnce();
              double ms = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
              on_result_(*nas_, err.empty(), err, ms);
            },
            &what)) {
      ExceptionText again;
      (void)CatchAll([&] { on_result_(*nas_, false, std::string("internal error: ") + what.c_str(), -1); },
                     &again);
    }
    lk.Lock();
    for (auto next = Clock::now() + interval_; !stop_;)
      if (!cv_.WaitUntil(&mu_, next)) break;
  }
}

}  // namespace nasfs
