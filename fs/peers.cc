#include "fs/peers.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <optional>
#include <cstring>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include "fs/identity.h"
#include "fs/log.h"
#include "fs/nas_files.h"
#include "fs/options.h"

namespace nasfs {
namespace {

constexpr const char* kPeersDir = ".nasfs/peers";
constexpr size_t kMaxLogBytes = 256u << 20;
constexpr const char* kGenerationFile = "generation.json";  // the old format, read as a floor

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

constexpr const char* kGenerationDir = ".nasfs/generation";

std::string GenPath(const GenerationName& g) { return fmt::format("{}/{}", kGenerationDir, FormatGenerationName(g)); }

// This NAS's generation: the highest g-<n> and s-<n> names, with the old
// generation.json as a floor. Junk is reported in *damaged and ignored.
// Worker thread.
int ReadGenerationAt(const Backend& nas, Generation* out, std::vector<std::string>* damaged) {
  *out = Generation{};
  std::vector<DirEntry> names;
  int e = nas.ReadDir(kGenerationDir, &names);
  if (e && e != ENOENT) return e;
  for (const auto& d : names) {
    if (d.name == "." || d.name == "..") continue;
    auto g = ParseGenerationName(d.name);
    if (!g) {
      if (damaged) damaged->push_back(fmt::format("{}/{}: not a generation name", kGenerationDir, d.name));
      continue;
    }
    uint64_t& v = g->in_step ? out->in_step : out->generation;
    v = std::max(v, g->n);
  }
  auto legacy = ReadSmallFileAt(nas.Root()->get(), std::string(kMetaDir) + "/" + kGenerationFile);
  if (!legacy) {
    if (legacy.error() == ENOENT) return 0;
    if (IsFaultErrno(legacy.error())) return legacy.error();  // the NAS is sick, not the file
    if (damaged)
      damaged->push_back(fmt::format("{}/{}: {}; ignored", kMetaDir, kGenerationFile, std::strerror(legacy.error())));
    return 0;
  }
  auto j = nlohmann::json::parse(*legacy, nullptr, /*allow_exceptions=*/false);
  Parsed<uint64_t> gen = tl::unexpected(std::string("not a JSON object")), in_step = gen;
  if (j.is_object()) {
    gen = json_field::Unsigned(j, "generation", 0);
    in_step = json_field::Unsigned(j, "in_step", 0);
  }
  if (!gen || !in_step) {
    if (damaged)
      damaged->push_back(fmt::format("{}/{}: damaged ({}); ignored", kMetaDir, kGenerationFile,
                                     !gen ? gen.error() : in_step.error()));
    return 0;
  }
  out->generation = std::max(out->generation, *gen);
  out->in_step = std::max(out->in_step, *in_step);
  return 0;
}

// Creates the name g (O_EXCL: a change nobody else made) and drops the
// older names of its kind. EEXIST when another server made it first.
// Worker thread.
int CreateGenerationName(const Backend& nas, const GenerationName& g) {
  if (int e = EnsureDir(nas, kGenerationDir)) return e;
  auto f = nas.OpenBeneath(GenPath(g), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW, 0600);
  if (!f) return f.error();
  if (fsync(f->get()) != 0) return errno;
  if (int e = nas.SyncParentDir(GenPath(g))) return e;
  std::vector<DirEntry> names;
  if (nas.ReadDir(kGenerationDir, &names) == 0)
    for (const auto& d : names)
      if (auto old = ParseGenerationName(d.name); old && old->in_step == g.in_step && old->n < g.n) {
        auto dir = nas.OpenBeneath(kGenerationDir, O_PATH | O_DIRECTORY);
        if (dir) (void)unlinkat(dir->get(), d.name.c_str(), 0);  // tidying: a leftover name is harmless
      }
  return 0;
}

// Moves this NAS's generation ahead: a new g-<n> above every name seen.
// Worker thread.
int BumpGenerationAt(const Backend& nas) {
  for (int attempt = 0; attempt < 16; ++attempt) {
    Generation g;
    if (int e = ReadGenerationAt(nas, &g, nullptr)) return e;
    uint64_t top = std::max(g.generation, g.in_step);
    if (top == UINT64_MAX) return EOVERFLOW;  // a planted name; reported by Scan
    int e = CreateGenerationName(nas, {false, top + 1});
    if (e != EEXIST) return e;  // EEXIST: another server bumped at once; go above it
  }
  return EAGAIN;
}

// The highest step of the claim directory `dir`, and its record (nullopt if
// none or damaged; *damaged says which). 0: no step. Worker thread.
int ReadClaimAt(const Backend& nas, const std::string& dir, uint64_t* step, std::optional<ClaimRecord>* rec,
                std::string* damaged) {
  *step = 0;
  rec->reset();
  std::vector<DirEntry> names;
  int e = nas.ReadDir(dir, &names);
  if (e == ENOENT) return 0;
  if (e) return e;
  for (const auto& d : names)
    if (auto n = ParseClaimStep(d.name)) *step = std::max(*step, *n);
  if (*step == 0) return 0;
  std::string rel = fmt::format("{}/{}", dir, *step);
  auto text = ReadSmallFileAt(nas.Root()->get(), rel);
  if (!text) {
    if (text.error() == ENOENT) return EAGAIN;  // replaced meanwhile: read again
    *damaged = fmt::format("{}: {}", rel, std::strerror(text.error()));
    return 0;
  }
  auto r = ParseClaimRecord(*text);
  if (!r) *damaged = fmt::format("{}: damaged ({})", rel, r.error());
  else *rec = *r;
  return 0;
}

// Makes `step` of the claim directory hold `rec`, if nobody made that step
// first: the content goes into a temp file, which link(2) then names (link
// never replaces, and is atomic on NFS). *made: we made it. Worker thread.
int LinkClaimStep(const Backend& nas, const std::string& dir, uint64_t step, const ClaimRecord& rec,
                  const std::string& me, bool* made) {
  *made = false;
  if (int e = EnsureDir(nas, dir)) return e;
  char host[64] = {};
  gethostname(host, sizeof host - 1);
  std::string tmp = fmt::format("{}/.tmp.{}.{}.{}.{}", dir, me, host, getpid(), step);
  std::string name = fmt::format("{}", step);
  {
    auto f = nas.OpenBeneath(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW, 0600);
    if (!f) return f.error();
    if (int e = WriteAll(f->get(), FormatClaimRecord(rec))) return e;
    if (fsync(f->get()) != 0) return errno;
  }
  auto d = nas.OpenBeneath(dir, O_RDONLY | O_DIRECTORY);
  if (!d) return d.error();
  std::string tname = tmp.substr(dir.size() + 1);
  int r = linkat(d->get(), tname.c_str(), d->get(), name.c_str(), 0) == 0 ? 0 : errno;
  (void)unlinkat(d->get(), tname.c_str(), 0);
  if (r == EEXIST) return 0;
  if (r) return r;
  *made = true;
  if (fsync(d->get()) != 0) return errno;
  // The steps below ours are history.
  std::vector<DirEntry> names;
  if (nas.ReadDir(dir, &names) == 0)
    for (const auto& e : names)
      if (auto n = ParseClaimStep(e.name); n && *n < step) (void)unlinkat(d->get(), e.name.c_str(), 0);
  return 0;
}

}  // namespace

Peers::Peers(Backend* master, Backend* backup, std::string node)
    : master_(master), backup_(backup), node_(std::move(node)) {}

std::string Peers::LogPath(const std::string& node, journal::Target target) {
  return fmt::format("{}/{}/{}", kPeersDir, node, journal::PeerLogName(target));
}

std::string Peers::ClaimPath(const std::string& node) { return fmt::format("{}/{}/claim", kPeersDir, node); }

int Peers::Note(journal::Target target, const std::vector<journal::Change>& changes) {
  MutexLock lk(&mu_);
  Index& ix = index_[journal::TargetIndex(target)];
  // The batches carrying our unlisted changes: ours, or another caller's.
  std::vector<uint64_t> mine;
  for (const auto& c : changes) {
    if (ix.listed.count(Index::KeyOf(c))) continue;
    if (auto q = ix.queued.find(Index::KeyOf(c)); q != ix.queued.end()) {
      mine.push_back(q->second);  // another caller's batch carries it
      continue;
    }
    ix.queued.emplace(Index::KeyOf(c), ix.next_ticket);
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
      cv_.Wait(&mu_);
      continue;
    }
    // Leader: write everything queued in one append and one fdatasync.
    ix.busy = true;
    uint64_t upto = ix.next_ticket++;
    std::vector<journal::Change> batch = std::move(ix.batch);
    ix.batch.clear();
    std::string bytes = journal::EncodePeerRecords(target, batch, &ix.seq);
    bool create = !ix.created, bump = !ix.bumped;
    lk.Unlock();
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
      // lacks, so it moves a generation ahead of what they had in step,
      // always with a new name, after the log is durable (see peers.h). A
      // failure here does not fail the write (the log holds it); the next
      // batch tries again.
      if (BumpGenerationAt(*h) == 0) *bumped = true;
      return 0;
    });
    lk.Lock();
    if (r == 0 && *bumped) ix.bumped = true;
    ix.busy = false;
    for (const auto& c : batch) {
      ix.queued.erase(Index::KeyOf(c));
      if (r == 0) ix.listed.insert(Index::KeyOf(c));
    }
    if (r == 0) {
      ix.created = true;
      ix.durable_ticket = upto;
    } else {
      ix.failed[upto] = r;
      if (ix.failed.size() > 64) ix.failed.erase(ix.failed.begin());  // long answered
    }
    cv_.SignalAll();
  }
}

int Peers::Clear(journal::Target target, bool present) {
  MutexLock lk(&mu_);
  Index& ix = index_[journal::TargetIndex(target)];
  while (ix.busy) cv_.Wait(&mu_);
  if (!ix.created && ix.listed.empty() && !present) return 0;
  ix.busy = true;
  lk.Unlock();
  Backend* h = &Holder(target);
  std::string rel = LogPath(node_, target);
  int r = h->Run([h, rel] {
    std::string name;
    auto parent = h->OpenParent(rel, &name);
    if (!parent) return parent.error() == ENOENT ? 0 : parent.error();
    if (unlinkat(parent->get(), name.c_str(), 0) != 0 && errno != ENOENT) return errno;
    return h->SyncParentDir(rel);
  });
  lk.Lock();
  ix.busy = false;
  if (r == 0) {
    ix.listed.clear();
    ix.created = false;
    ix.bumped = false;
  }
  cv_.SignalAll();
  return r;
}

int Peers::Scan(Backend& nas, NasView* out) {
  auto view = std::make_shared<NasView>();
  const Backend* n = &nas;
  int r = nas.Run([n, view] { return ScanAt(*n, view.get()); });
  if (r == 0) *out = *view;
  return r;
}

int Peers::ScanAt(const Backend& nas, NasView* view) {
  *view = {};
  const Backend* n = &nas;
  int root = n->Root()->get();
  // The generation first: see peers.h.
  if (int e = ReadGenerationAt(*n, &view->gen, &view->damaged)) return e;
  std::vector<DirEntry> names;
  if (int e = n->ReadDir(kMetaDir, &names)) return e;
  for (const auto& d : names) {
    if (d.name.rfind("heartbeat.", 0) != 0 || d.name.size() <= 10 || d.name.find(".tmp") != std::string::npos ||
        d.name.find(".junk.") != std::string::npos)
      continue;  // temp files, and what a probe moved off its heartbeat's name
    if (d.name.size() > 10 + kMaxNodeName) {
      view->damaged.push_back(fmt::format("{}/{}: not a web server's heartbeat", kMetaDir, d.name.substr(0, 80)));
      continue;
    }
    auto beat = ReadSmallFileAt(root, std::string(kMetaDir) + "/" + d.name);
    if (!beat && beat.error() != ENOENT)
      view->damaged.push_back(fmt::format("{}/{}: {}", kMetaDir, d.name, std::strerror(beat.error())));
    view->peers[d.name.substr(10)].beat = beat ? *beat : "";
  }
  std::vector<DirEntry> nodes;
  int e = n->ReadDir(kPeersDir, &nodes);
  if (e && e != ENOENT) return e;
  for (const auto& d : nodes) {
    if (d.name == "." || d.name == "..") continue;
    if (d.name.empty() || d.name[0] == '.' || d.name.size() > kMaxNodeName) {
      view->damaged.push_back(fmt::format("{}/{}: not a web server's name", kPeersDir, d.name.substr(0, 80)));
      continue;
    }
    PeerSeen& p = view->peers[d.name];
    for (journal::Target t : {journal::kMaster, journal::kBackup}) {
      // open + fstat, not stat: an NFS client revalidates a file's size
      // on open (close-to-open), while a stat may answer from its cache.
      struct stat st{};
      auto f = n->OpenBeneath(LogPath(d.name, t), O_RDONLY);
      if (f && fstat(f->get(), &st) == 0 && st.st_size > 0) {
        p.lacks[journal::TargetIndex(t)] = true;
        p.lacks_bytes[journal::TargetIndex(t)] = static_cast<uint64_t>(st.st_size);
      } else if (!f && f.error() != ENOENT) {
        // Something that is not a log sits at its name: whatever it held
        // is unknown, so it counts as listing something (nothing switches
        // back past it) until an operator looks.
        p.lacks[journal::TargetIndex(t)] = true;
        view->damaged.push_back(fmt::format("{}: {}", LogPath(d.name, t), std::strerror(f.error())));
      }
    }
    uint64_t step = 0;
    std::optional<ClaimRecord> rec;
    std::string damaged;
    if (ReadClaimAt(*n, ClaimPath(d.name) + ".d", &step, &rec, &damaged) == 0 && rec) p.claimed_by = rec->holder;
    if (!damaged.empty()) view->damaged.push_back(damaged);
  }
  return 0;
}

int Peers::ReadLogAt(const Backend& nas, const std::string& node, journal::Target target,
                     journal::PeerLogContents* out, uint64_t* bytes) {
  *out = {};
  *bytes = 0;
  // Logs list paths, one record each: read whole (ReadSmallFileAt stops at
  // 1 MiB, which a long outage passes).
  auto f = nas.OpenBeneath(LogPath(node, target), O_RDONLY);
  if (!f) return f.error() == ENOENT ? 0 : f.error();
  std::string data;
  char buf[65536];
  for (;;) {
    ssize_t k = read(f->get(), buf, sizeof buf);
    if (k < 0 && errno == EINTR) continue;
    if (k < 0) return errno;
    if (k == 0) break;
    data.append(buf, static_cast<size_t>(k));
    // A log lists each path once per outage: this is millions of paths.
    // Anything larger was not written by nasfs: damage.
    if (data.size() > kMaxLogBytes) {
      *out = {};
      out->damaged = 1;
      *bytes = data.size();
      return 0;
    }
  }
  *out = journal::DecodePeerLog(data, target);
  *bytes = data.size();
  return 0;
}

int Peers::ReadLog(Backend& nas, const std::string& node, journal::Target target, journal::PeerLogContents* out,
                   uint64_t* bytes) {
  struct Read {
    journal::PeerLogContents contents;
    uint64_t bytes = 0;
  };
  auto got = std::make_shared<Read>();
  Backend* n = &nas;
  int r = nas.Run([n, node, target, got] { return ReadLogAt(*n, node, target, &got->contents, &got->bytes); });
  if (r) return r;
  *out = std::move(got->contents);
  *bytes = got->bytes;
  return 0;
}

int Peers::RemoveLog(Backend& nas, const std::string& node, journal::Target target, uint64_t bytes) {
  Backend* n = &nas;
  std::string rel = LogPath(node, target);
  return nas.Run([n, rel, bytes] {
    if (bytes == kAnyLog) {
      // Not a log at all (junk planted at its name): removed whatever it is.
      int e = n->RemoveTree(rel);
      return e ? e : n->SyncParentDir(rel);
    }
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
  Backend* n = &nas;
  const std::string dir = rel + ".d";
  for (int attempt = 0; attempt < 4; ++attempt) {
    struct State {
      uint64_t step = 0;
      std::optional<ClaimRecord> rec;
      std::string damaged;
    };
    auto st = std::make_shared<State>();
    int r = nas.Run([n, dir, st] { return ReadClaimAt(*n, dir, &st->step, &st->rec, &st->damaged); });
    if (r == EAGAIN) continue;
    if (r) return r;
    bool take;
    if (st->step == 0 || (st->rec && (st->rec->holder.empty() || st->rec->holder == node_))) {
      take = true;  // free, released, or ours to renew
    } else {
      // Held by another (or unreadable): stale once its step has stood
      // still for ttl by our clock.
      MutexLock lk(&claims_mu_);
      auto [it, fresh] = watched_.try_emplace({nas.role(), rel}, Watched{st->step, Clock::now()});
      if (!fresh && it->second.step != st->step) it->second = Watched{st->step, Clock::now()};
      take = Clock::now() - it->second.since >= ttl;
      if (take && !st->damaged.empty())
        Logger("replay")->warn("taking over a claim whose record is damaged: {}", st->damaged);
    }
    if (!take) return 0;
    auto made = std::make_shared<bool>(false);
    ClaimRecord mine{node_, UnixMs()};
    uint64_t next = st->step + 1;
    if (next == 0) return EOVERFLOW;  // a planted step number
    std::string me = node_;
    r = nas.Run([n, dir, next, mine, me, made] { return LinkClaimStep(*n, dir, next, mine, me, made.get()); });
    if (r) return r;
    if (*made) {
      *got = true;
      MutexLock lk(&claims_mu_);
      watched_.erase({nas.role(), rel});
      return 0;
    }
    // Another server made that step first: look again.
  }
  return 0;
}

int Peers::Unclaim(Backend& nas, const std::string& rel) {
  Backend* n = &nas;
  const std::string dir = rel + ".d";
  std::string me = node_;
  return nas.Run([n, dir, me] {
    uint64_t step = 0;
    std::optional<ClaimRecord> rec;
    std::string damaged;
    if (int e = ReadClaimAt(*n, dir, &step, &rec, &damaged)) return e == EAGAIN ? 0 : e;
    if (!rec || rec->holder != me) return 0;  // not ours (any more)
    bool made = false;
    return LinkClaimStep(*n, dir, step + 1, ClaimRecord{"", UnixMs()}, me, &made);
  });
}

int Peers::ReadGeneration(Backend& nas, Generation* out) {
  auto g = std::make_shared<Generation>();
  Backend* n = &nas;
  int r = nas.Run([n, g] { return ReadGenerationAt(*n, g.get(), nullptr); });
  if (r == 0) *out = *g;
  return r;
}

int Peers::MarkInStep(Backend& nas, uint64_t generation) {
  Backend* n = &nas;
  return nas.Run([n, generation] {
    Generation g;
    if (int e = ReadGenerationAt(*n, &g, nullptr)) return e;
    if (g.in_step >= generation) return 0;
    int e = CreateGenerationName(*n, {true, generation});
    return e == EEXIST ? 0 : e;  // another server marked the same
  });
}

}  // namespace nasfs
