#include "fs/peers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "fs/identity.h"

namespace nasfs {
namespace {

constexpr const char* kPeersDir = ".nasfs/peers";
constexpr const char* kGenerationFile = "generation.json";

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

// mkdir -p of rel (components under the NAS root), 0700. Worker thread.
int EnsureDir(const Backend& nas, const std::string& rel) {
  for (size_t pos = 0; pos <= rel.size(); ++pos) {
    if (pos != rel.size() && rel[pos] != '/') continue;
    std::string name;
    auto parent = nas.OpenParent(rel.substr(0, pos), &name);
    if (!parent) return parent.error();
    if (mkdirat(parent->get(), name.c_str(), 0700) != 0 && errno != EEXIST) return errno;
  }
  return 0;
}

int WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    off += static_cast<size_t>(n);
  }
  return 0;
}

int ReadGenerationAt(const Backend& nas, Generation* out) {
  *out = Generation{};
  auto text = ReadSmallFileAt(nas.Root()->get(), std::string(kMetaDir) + "/" + kGenerationFile);
  if (!text) return text.error() == ENOENT ? 0 : text.error();
  auto j = nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return 0;  // damaged: read as generation 0, rewritten on the next bump
  out->generation = j.value("generation", uint64_t{0});
  out->in_step = j.value("in_step", uint64_t{0});
  return 0;
}

int WriteGenerationAt(const Backend& nas, const Generation& g) {
  nlohmann::json j = {{"generation", g.generation}, {"in_step", g.in_step}, {"time", NowIso8601()}};
  return nas.ReplaceFile(std::string(kMetaDir) + "/" + kGenerationFile, j.dump() + "\n");
}

}  // namespace

Peers::Peers(Backend* master, Backend* backup, std::string node)
    : master_(master), backup_(backup), node_(std::move(node)) {}

std::string Peers::LogPath(const std::string& node, journal::Target target) {
  return fmt::format("{}/{}/{}", kPeersDir, node, journal::PeerLogName(target));
}

std::string Peers::ClaimPath(const std::string& node) { return fmt::format("{}/{}/claim", kPeersDir, node); }

int Peers::Note(journal::Target target, const std::vector<journal::Change>& changes) {
  Index& ix = index_[journal::TargetIndex(target)];
  std::unique_lock lk(mu_);
  // The batches carrying our unlisted paths: ours, or another caller's.
  std::vector<uint64_t> mine;
  for (const auto& c : changes) {
    if (ix.listed.count(c.path)) continue;
    if (auto q = ix.queued.find(c.path); q != ix.queued.end()) {
      mine.push_back(q->second);  // another caller's batch carries it
      continue;
    }
    ix.queued.emplace(c.path, ix.next_ticket);
    ix.batch.push_back(c);
    mine.push_back(ix.next_ticket);
  }
  if (mine.empty()) return 0;
  uint64_t ticket = *std::max_element(mine.begin(), mine.end());
  for (;;) {
    // Batches are written one at a time, in ticket order; each succeeds or
    // fails on its own, so a later success says nothing of ours.
    for (uint64_t t : mine)
      if (auto f = ix.failed.find(t); f != ix.failed.end()) return f->second;
    if (ix.durable_ticket >= ticket) return 0;
    if (ix.busy) {
      cv_.wait(lk);
      continue;
    }
    // Leader: write everything queued in one append and one fdatasync.
    ix.busy = true;
    uint64_t upto = ix.next_ticket++;
    std::vector<journal::Change> batch = std::move(ix.batch);
    ix.batch.clear();
    std::string bytes = journal::EncodePeerRecords(target, batch, &ix.seq);
    bool create = !ix.created, bump = !ix.bumped;
    lk.unlock();
    Backend& holder = Holder(target);
    Backend* h = &holder;
    std::string rel = LogPath(node_, target);
    auto bumped = std::make_shared<bool>(false);
    int r = holder.Run([h, rel, bytes, create, bump, bumped] {
      if (create)
        if (int e = EnsureDir(*h, rel.substr(0, rel.rfind('/')))) return e;
      auto f = h->OpenBeneath(rel, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0600);
      if (!f) return f.error();
      if (int e = WriteAll(f->get(), bytes)) return e;
      if (fdatasync(f->get()) != 0) return errno;
      if (create)
        if (int e = h->SyncParentDir(rel)) return e;
      if (!bump) return 0;
      // The first record of an outage: this NAS now holds writes the other
      // lacks, so it moves a generation ahead of what they had in step. A
      // failure here does not fail the write (the log holds it); the next
      // batch tries again.
      Generation g;
      if (ReadGenerationAt(*h, &g) == 0 &&
          (g.ahead() || WriteGenerationAt(*h, {std::max(g.generation, g.in_step) + 1, g.in_step}) == 0))
        *bumped = true;
      return 0;
    });
    lk.lock();
    if (r == 0 && *bumped) ix.bumped = true;
    ix.busy = false;
    for (const auto& c : batch) {
      ix.queued.erase(c.path);
      if (r == 0) ix.listed.insert(c.path);
    }
    if (r == 0) {
      ix.created = true;
      ix.durable_ticket = upto;
    } else {
      ix.failed[upto] = r;
      if (ix.failed.size() > 64) ix.failed.erase(ix.failed.begin());  // long answered
    }
    cv_.notify_all();
  }
}

int Peers::Clear(journal::Target target, bool present) {
  Index& ix = index_[journal::TargetIndex(target)];
  std::unique_lock lk(mu_);
  cv_.wait(lk, [&] { return !ix.busy; });
  if (!ix.created && ix.listed.empty() && !present) return 0;
  ix.busy = true;
  lk.unlock();
  Backend* h = &Holder(target);
  std::string rel = LogPath(node_, target);
  int r = h->Run([h, rel] {
    std::string name;
    auto parent = h->OpenParent(rel, &name);
    if (!parent) return parent.error() == ENOENT ? 0 : parent.error();
    if (unlinkat(parent->get(), name.c_str(), 0) != 0 && errno != ENOENT) return errno;
    return h->SyncParentDir(rel);
  });
  lk.lock();
  ix.busy = false;
  if (r == 0) {
    ix.listed.clear();
    ix.created = false;
    ix.bumped = false;
  }
  cv_.notify_all();
  return r;
}

int Peers::Scan(Backend& nas, NasView* out) {
  auto view = std::make_shared<NasView>();
  Backend* n = &nas;
  int r = nas.Run([n, view] {
    int root = n->Root()->get();
    std::vector<DirEntry> names;
    if (int e = n->ReadDir(kMetaDir, &names)) return e;
    for (const auto& d : names) {
      if (d.name.rfind("heartbeat.", 0) != 0 || d.name.size() <= 10 || d.name.find(".tmp") != std::string::npos)
        continue;
      auto beat = ReadSmallFileAt(root, std::string(kMetaDir) + "/" + d.name);
      view->peers[d.name.substr(10)].beat = beat ? *beat : "";
    }
    std::vector<DirEntry> nodes;
    int e = n->ReadDir(kPeersDir, &nodes);
    if (e && e != ENOENT) return e;
    for (const auto& d : nodes) {
      if (d.name == "." || d.name == "..") continue;
      PeerSeen& p = view->peers[d.name];
      for (journal::Target t : {journal::kMaster, journal::kBackup}) {
        // open + fstat, not stat: an NFS client revalidates a file's size
        // on open (close-to-open), while a stat may answer from its cache.
        struct stat st{};
        auto f = n->OpenBeneath(LogPath(d.name, t), O_RDONLY | O_NOFOLLOW);
        if (f && fstat(f->get(), &st) == 0 && st.st_size > 0) {
          p.lacks[journal::TargetIndex(t)] = true;
          p.lacks_bytes[journal::TargetIndex(t)] = static_cast<uint64_t>(st.st_size);
        }
      }
      if (auto c = ReadSmallFileAt(root, ClaimPath(d.name))) p.claim = *c;
    }
    return ReadGenerationAt(*n, &view->gen);
  });
  if (r == 0) *out = *view;
  return r;
}

int Peers::ReadLog(Backend& nas, const std::string& node, journal::Target target, journal::PeerLogContents* out,
                   uint64_t* bytes) {
  auto data = std::make_shared<std::string>();
  Backend* n = &nas;
  std::string rel = LogPath(node, target);
  int r = nas.Run([n, rel, data] {
    // Logs list paths, one record each: far below ReadSmallFileAt's 1 MiB
    // only for small outages, so read it whole here.
    auto f = n->OpenBeneath(rel, O_RDONLY | O_NOFOLLOW);
    if (!f) return f.error();
    char buf[65536];
    for (;;) {
      ssize_t k = read(f->get(), buf, sizeof buf);
      if (k < 0 && errno == EINTR) continue;
      if (k < 0) return errno;
      if (k == 0) return 0;
      data->append(buf, static_cast<size_t>(k));
    }
  });
  if (r == ENOENT) {
    *out = {};
    *bytes = 0;
    return 0;
  }
  if (r) return r;
  *out = journal::DecodePeerLog(*data, target);
  *bytes = data->size();
  return 0;
}

int Peers::RemoveLog(Backend& nas, const std::string& node, journal::Target target, uint64_t bytes) {
  Backend* n = &nas;
  std::string rel = LogPath(node, target);
  return nas.Run([n, rel, bytes] {
    struct stat st{};
    auto f = n->OpenBeneath(rel, O_RDONLY | O_NOFOLLOW);  // revalidated on open (NFS close-to-open)
    if (!f) return f.error() == ENOENT ? 0 : f.error();
    if (fstat(f->get(), &st) != 0) return errno;
    if (static_cast<uint64_t>(st.st_size) != bytes) return EAGAIN;
    std::string name;
    auto parent = n->OpenParent(rel, &name);
    if (!parent) return parent.error();
    if (unlinkat(parent->get(), name.c_str(), 0) != 0 && errno != ENOENT) return errno;
    return n->SyncParentDir(rel);
  });
}

int Peers::Claim(Backend& nas, const std::string& rel, std::chrono::milliseconds ttl, bool* got) {
  *got = false;
  auto ours = std::make_shared<bool>(false);
  Backend* n = &nas;
  std::string me = node_;
  int r = nas.Run([n, rel, me, ttl, ours] {
    if (int e = EnsureDir(*n, rel.substr(0, rel.rfind('/')))) return e;
    std::string mine = fmt::format("{} {}\n", me, UnixMs());
    // O_EXCL: of two servers creating it at once, one wins (NFSv3+ too).
    if (auto f = n->OpenBeneath(rel, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600)) {
      if (int e = WriteAll(f->get(), mine)) return e;
      if (fsync(f->get()) != 0) return errno;
      *ours = true;
      return n->SyncParentDir(rel);
    } else if (f.error() != EEXIST) {
      return f.error();
    }
    auto held = ReadSmallFileAt(n->Root()->get(), rel);
    if (!held) return held.error() == ENOENT ? EAGAIN : held.error();
    std::string holder;
    long long at = 0;
    {
      auto sp = held->find(' ');
      holder = held->substr(0, sp);
      if (sp != std::string::npos) at = std::atoll(held->c_str() + sp + 1);
    }
    // Ours already, or left by a holder that stopped renewing it: renew / take it.
    if (holder != me && UnixMs() - at < ttl.count()) return 0;
    if (int e = n->ReplaceFile(rel, mine)) return e;
    auto check = ReadSmallFileAt(n->Root()->get(), rel);
    *ours = check && *check == mine;
    return 0;
  });
  if (r == 0) *got = *ours;
  return r;
}

int Peers::Unclaim(Backend& nas, const std::string& rel) {
  Backend* n = &nas;
  std::string me = node_;
  return nas.Run([n, rel, me] {
    auto held = ReadSmallFileAt(n->Root()->get(), rel);
    if (!held) return held.error() == ENOENT ? 0 : held.error();
    if (held->substr(0, held->find(' ')) != me) return 0;  // someone took it over meanwhile
    std::string name;
    auto parent = n->OpenParent(rel, &name);
    if (!parent) return parent.error();
    if (unlinkat(parent->get(), name.c_str(), 0) != 0 && errno != ENOENT) return errno;
    return 0;
  });
}

int Peers::ReadGeneration(Backend& nas, Generation* out) {
  auto g = std::make_shared<Generation>();
  Backend* n = &nas;
  int r = nas.Run([n, g] { return ReadGenerationAt(*n, g.get()); });
  if (r == 0) *out = *g;
  return r;
}

int Peers::WriteGeneration(Backend& nas, const Generation& g) {
  Backend* n = &nas;
  return nas.Run([n, g] { return WriteGenerationAt(*n, g); });
}

}  // namespace nasfs
