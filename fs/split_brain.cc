#include "fs/split_brain.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <atomic>
#include <cctype>
#include <cstdio>
#include <set>
#include <string_view>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include "fs/identity.h"
#include "fs/log.h"
#include "fs/tree_sync.h"

namespace nasfs {
namespace {

constexpr const char* kDataName = "data";
constexpr const char* kMetaName = "meta.json";
// Bytes compared per NAS call: well within any io_timeout, whatever the
// file's size.
constexpr size_t kCompareChunk = 1 << 20;

// Conflict ids made by this process (both functions below make them).
std::atomic<unsigned> g_id_counter{0};

int64_t Ns(const timespec& t) { return static_cast<int64_t>(t.tv_sec) * 1000000000 + t.tv_nsec; }

bool Newer(const timespec& a, const timespec& b) { return Ns(a) > Ns(b); }

const char* KindOf(mode_t m) {
  if (S_ISREG(m)) return "file";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "symlink";
  return "other";
}

std::string ConflictPath(const std::string& id) { return fmt::format("{}/{}", kConflictsDir, id); }
std::string DataPath(const std::string& id) { return fmt::format("{}/{}/{}", kConflictsDir, id, kDataName); }

// A website path: relative, no empty, "." or ".." component, not nasfs's own.
bool ValidPath(const std::string& path) {
  if (path.empty()) return true;
  size_t i = 0;
  for (;;) {
    size_t e = path.find('/', i);
    std::string_view c(path.data() + i, (e == std::string::npos ? path.size() : e) - i);
    if (c.empty() || c == "." || c == ".." || (i == 0 && c == kMetaDir)) return false;
    if (e == std::string::npos) return true;
    i = e + 1;
  }
}

bool ValidId(const std::string& id) {
  return !id.empty() && id != "." && id != ".." && id.find('/') == std::string::npos &&
         id.find('\0') == std::string::npos;
}

// "<UTC time>-<node>-<counter>", e.g. 20261124T013005.123Z-web1-0007; the
// node is reduced to characters that are safe in a file name (meta.json
// keeps it whole).
std::string MakeId(const std::string& node) {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  struct tm tm {};
  gmtime_r(&ts.tv_sec, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y%m%dT%H%M%S", &tm);
  std::string tag;
  for (char c : node)
    tag += std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-' ? c : '_';
  if (tag.empty()) tag = "_";
  return fmt::format("{}.{:03d}Z-{}-{:04d}", buf, ts.tv_nsec / 1000000, tag, ++g_id_counter);
}

int StatOn(Backend* b, const std::string& path, struct stat* st) {
  auto s = std::make_shared<struct stat>();
  int r = b->Run([b, path, s] { return b->Stat(path, s.get()); });
  if (r == 0) *st = *s;
  return r;
}

int SetTimes(Backend* b, const std::string& path, const timespec& atime, const timespec& mtime) {
  return b->Run([b, path, atime, mtime] {
    SetAttrArgs a;
    a.set_atime = a.set_mtime = true;
    a.atime = atime;
    a.mtime = mtime;
    struct stat out;
    return b->SetAttr(path, a, &out);
  });
}

// Adds the names directory `dir` holds on b (none if it is gone).
int AddNames(Backend* b, const std::string& dir, std::set<std::string>* names) {
  auto out = std::make_shared<std::vector<DirEntry>>();
  int r = b->Run([b, dir, out] { return b->ReadDir(dir, out.get()); });
  if (r == ENOENT) return 0;
  if (r) return r;
  for (const auto& e : *out) {
    if (e.name == "." || e.name == "..") continue;
    if (dir.empty() && (e.name == kMetaDir || e.name == "lost+found")) continue;
    names->insert(e.name);
  }
  return 0;
}

// An id no NAS holds yet. A collision needs the same node, millisecond and
// counter, so one look is all it takes.
int NewId(std::initializer_list<Backend*> nas, const std::string& node, std::string* id) {
  for (;;) {
    *id = MakeId(node);
    bool taken = false;
    for (Backend* b : nas) {
      struct stat st;
      int r = StatOn(b, ConflictPath(*id), &st);
      if (r == 0) taken = true;
      else if (r != ENOENT) return r;
    }
    if (!taken) return 0;
  }
}

// mkdir -p .nasfs/conflicts/<id>; nasfs's own directories are 0700.
int MakeConflictDir(Backend* b, const std::string& id) {
  return b->Run([b, id] {
    std::string dir;
    for (const std::string& name : {std::string(kMetaDir), std::string("conflicts"), id}) {
      auto parent = b->OpenBeneath(dir, O_PATH | O_DIRECTORY);
      if (!parent) return parent.error();
      if (mkdirat(parent->get(), name.c_str(), 0700) != 0 && (errno != EEXIST || name == id)) return errno;
      dir = JoinPath(dir, name);
    }
    return 0;
  });
}

// Durably writes .nasfs/conflicts/<id>/meta.json.
int WriteMeta(Backend* b, const ConflictRecord& rec) {
  auto content = std::make_shared<std::string>(ToMetaText(rec));
  std::string rel = JoinPath(ConflictPath(rec.id), kMetaName);
  return b->Run([b, rel, content] { return b->ReplaceFile(rel, *content); });
}

// Reads conflict id's meta.json from b: 0, its read errno, or EBADMSG when it
// is not a record.
int ReadMeta(Backend* b, const std::string& id, ConflictRecord* rec) {
  auto text = std::make_shared<std::string>();
  std::string rel = fmt::format("{}/{}", ConflictPath(id), kMetaName);
  if (int r = b->Run([b, rel, text] {
        auto t = ReadSmallFileAt(b->Root()->get(), rel);
        if (!t) return t.error();
        *text = std::move(*t);
        return 0;
      }))
    return r;
  auto r = ParseConflictMeta(*text, id);
  if (!r) return EBADMSG;
  *rec = std::move(*r);
  return 0;
}

void LogKept(const ConflictRecord& rec) {
  if (auto log = Logger("sync"))
    log->warn("{} at /{}: kept the {}'s {} as {}/{}", rec.reason, ShownPath(rec.path), rec.kept_from, rec.kind,
              kConflictsDir, rec.id);
}

}  // namespace


SplitBrainResolver::SplitBrainResolver(Backend* master, Backend* backup, std::string node)
    : master_(master),
      backup_(backup),
      node_(std::move(node)),
      to_backup_(std::make_unique<TreeSync>(master, backup, &copy_mu_, /*verify_content=*/false,
                                            /*displace=*/false, nullptr)),
      to_master_(std::make_unique<TreeSync>(backup, master, &copy_mu_, /*verify_content=*/false,
                                            /*displace=*/false, nullptr)) {}

SplitBrainResolver::~SplitBrainResolver() = default;

TreeSync& SplitBrainResolver::From(const Backend* source) {
  return source == master_ ? *to_backup_ : *to_master_;
}

uint64_t SplitBrainResolver::bytes_copied() const {
  return to_backup_->Status()["bytes_copied"].get<uint64_t>() +
         to_master_->Status()["bytes_copied"].get<uint64_t>();
}

int SplitBrainResolver::Resolve(const std::string& path) {
  if (!ValidPath(path)) return EINVAL;
  struct stat m, b;
  if (path.empty()) {
    if (int r = StatOn(master_, "", &m)) return r;
    if (int r = StatOn(backup_, "", &b)) return r;
    return ResolveDir("", m, b);
  }
  std::string target = path;
  for (size_t pos = path.find('/'); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    std::string anc = path.substr(0, pos);
    int rm = StatOn(master_, anc, &m);
    int rb = StatOn(backup_, anc, &b);
    if (rm && rm != ENOENT) return rm;
    if (rb && rb != ENOENT) return rb;
    if (rm && rb) return 0;  // path is on neither NAS
    if (rm || rb || !S_ISDIR(m.st_mode) || !S_ISDIR(b.st_mode)) {
      target = anc;
      break;
    }
  }
  std::string parent = ParentOf(target);
  struct stat pm, pb;
  if (int r = StatOn(master_, parent, &pm)) return r;
  if (int r = StatOn(backup_, parent, &pb)) return r;
  int r = ResolveEntry(target, pm.st_mtim, pb.st_mtim);
  // Even after a failure: a parent stamped by our renames would make the
  // next sibling's deletion look newer than it was.
  int rm = SetTimes(master_, parent, pm.st_atim, pm.st_mtim);
  int rb = SetTimes(backup_, parent, pb.st_atim, pb.st_mtim);
  return r ? r : rm ? rm : rb;
}

int SplitBrainResolver::ResolveEntry(const std::string& path, const timespec& master_parent,
                                     const timespec& backup_parent) {
  struct stat m, b;
  int rm = StatOn(master_, path, &m);
  int rb = StatOn(backup_, path, &b);
  if (rm && rm != ENOENT) return rm;
  if (rb && rb != ENOENT) return rb;
  const bool hm = rm == 0, hb = rb == 0;
  if (!hm && !hb) return 0;
  if (hm && hb && (m.st_mode & S_IFMT) == (b.st_mode & S_IFMT)) {
    bool equal = false;
    switch (m.st_mode & S_IFMT) {
      case S_IFDIR:
        return ResolveDir(path, m, b);
      case S_IFREG:
        if (m.st_size == b.st_size)
          if (int r = SameContent(path, m.st_size, &equal)) return r;
        break;
      case S_IFLNK: {
        auto tm = std::make_shared<std::string>();
        auto tb = std::make_shared<std::string>();
        Backend* ma = master_;
        Backend* ba = backup_;
        if (int r = ma->Run([ma, path, tm] { return ma->ReadLink(path, tm.get()); })) return r;
        if (int r = ba->Run([ba, path, tb] { return ba->ReadLink(path, tb.get()); })) return r;
        equal = *tm == *tb;
        break;
      }
      default:
        equal = m.st_rdev == b.st_rdev;
        break;
    }
    if (equal) return AlignAttributes(path, m, b);
  }
  // One side lacks it without having removed it: it is new on the other.
  if (hm != hb && removed_ && !removed_(path, hm ? Role::kBackup : Role::kMaster))
    return From(hm ? master_ : backup_).Reconcile(path, journal::Scope::kTree, /*force_data=*/true);
  const timespec when_m = hm ? m.st_mtim : master_parent;
  const timespec when_b = hb ? b.st_mtim : backup_parent;
  const bool master_loses = Newer(when_b, when_m);
  Logger("sync")->debug("split brain: '{}': the {}'s version wins (master {}, backup {})", ShownPath(path),
                        master_loses ? "backup" : "master", hm ? KindOf(m.st_mode) : "none",
                        hb ? KindOf(b.st_mode) : "none");
  const bool winner_has = master_loses ? hb : hm;
  const bool loser_has = master_loses ? hm : hb;
  Backend* winner = master_loses ? backup_ : master_;
  if (loser_has)
    if (int r = Keep(path, master_loses, master_loses ? m : b, winner_has ? (master_loses ? &b : &m) : nullptr,
                     master_loses ? master_parent : backup_parent))
      return r;
  if (!winner_has) return 0;  // keeping the loser's version removed it
  return From(winner).Reconcile(path, journal::Scope::kTree, /*force_data=*/true);
}

int SplitBrainResolver::ResolveDir(const std::string& path, const struct stat& m, const struct stat& b) {
  std::set<std::string> names;
  if (int r = AddNames(master_, path, &names)) return r;
  if (int r = AddNames(backup_, path, &names)) return r;
  for (const auto& name : names)
    if (int r = ResolveEntry(JoinPath(path, name), m.st_mtim, b.st_mtim)) return r;
  // Merging the children moved both directories' times: the newer side gets
  // its own back, then its owner, mode, xattrs and times go onto the other.
  const bool backup_newer = Newer(b.st_mtim, m.st_mtim);
  Backend* newer = backup_newer ? backup_ : master_;
  const struct stat& n = backup_newer ? b : m;
  if (int r = SetTimes(newer, path, n.st_atim, n.st_mtim)) return r;
  Backend* source = AttributesFrom(path, newer);
  Logger("sync")->debug("split brain: dir '{}': attributes from the {} (mode {:o}/{:o}), times from the {}",
                        ShownPath(path), source->name(), m.st_mode & 07777, b.st_mode & 07777, newer->name());
  return CopyAttributes(path, source, n.st_atim, n.st_mtim);
}

Backend* SplitBrainResolver::AttributesFrom(const std::string& path, Backend* newer) const {
  if (!meta_changed_) return newer;
  bool m = meta_changed_(path, Role::kMaster), b = meta_changed_(path, Role::kBackup);
  return m == b ? newer : m ? master_ : backup_;
}

int SplitBrainResolver::CopyAttributes(const std::string& path, Backend* source, const timespec& atime,
                                       const timespec& mtime) {
  if (int r = From(source).Reconcile(path, journal::Scope::kEntry, /*force_data=*/false)) return r;
  for (Backend* nas : {master_, backup_})
    if (int r = SetTimes(nas, path, atime, mtime)) return r;
  return 0;
}

int SplitBrainResolver::SameContent(const std::string& path, off_t size, bool* same) {
  *same = false;
  StepDeadline::Lift bulk;  // bytes at the NAS's pace, each chunk under its own deadline
  Backend* ma = master_;
  Backend* ba = backup_;
  for (off_t off = 0; off < size; off += static_cast<off_t>(kCompareChunk)) {
    auto dm = std::make_shared<std::string>();
    auto db = std::make_shared<std::string>();
    if (int r = ma->Run([ma, path, off, dm] { return ma->Read(path, off, kCompareChunk, dm.get()); })) return r;
    if (int r = ba->Run([ba, path, off, db] { return ba->Read(path, off, kCompareChunk, db.get()); })) return r;
    if (*dm != *db) return 0;
  }
  *same = true;
  return 0;
}

int SplitBrainResolver::AlignAttributes(const std::string& path, const struct stat& m, const struct stat& b) {
  const bool backup_newer = Newer(b.st_mtim, m.st_mtim);
  Backend* newer = backup_newer ? backup_ : master_;
  Backend* older = backup_newer ? master_ : backup_;
  const struct stat& n = backup_newer ? b : m;
  const struct stat& o = backup_newer ? m : b;
  // TreeSync copies a file whose mtime differs whole; the bytes are known
  // equal, so the older side takes the newer mtime first and the copy below
  // moves only attributes.
  if (S_ISREG(n.st_mode) && Ns(n.st_mtim) != Ns(o.st_mtim))
    if (int r = SetTimes(older, path, o.st_atim, n.st_mtim)) return r;
  Backend* source = AttributesFrom(path, newer);
  Logger("sync")->debug("split brain: '{}' alike on both: attributes from the {}", ShownPath(path), source->name());
  if (source == newer) return From(newer).Reconcile(path, journal::Scope::kEntry, /*force_data=*/false);
  return CopyAttributes(path, source, n.st_atim, n.st_mtim);
}

int SplitBrainResolver::Keep(const std::string& path, bool master_loses, const struct stat& lost,
                             const struct stat* won, const timespec& loser_parent) {
  Backend* loser = master_loses ? master_ : backup_;
  ConflictRecord rec;
  rec.path = path;
  rec.kept_from = master_loses ? "master" : "backup";
  rec.winner = master_loses ? "backup" : "master";
  rec.kind = KindOf(lost.st_mode);
  rec.reason = "split brain";
  rec.kept_mtime_ns = Ns(lost.st_mtim);
  rec.winner_mtime_ns = won ? Ns(won->st_mtim) : 0;
  rec.size = S_ISREG(lost.st_mode) ? static_cast<uint64_t>(lost.st_size) : 0;
  rec.detected = NowIso8601();
  rec.node = node_;
  if (int r = NewId({master_, backup_}, node_, &rec.id)) return r;
  if (int r = MakeConflictDir(loser, rec.id)) return r;
  if (int r = WriteMeta(loser, rec)) return r;
  // The rename stamps the parent with its own mtime: if we stop before
  // Resolve puts the parent's times back, a new run still reads the same
  // deletion time from it.
  std::string data = DataPath(rec.id);
  if (int r = loser->Run([loser, path, data, loser_parent] {
        return loser->Rename(path, data, RENAME_NOREPLACE, loser_parent);
      }))
    return r;
  kept_.push_back(rec);
  LogKept(rec);
  return From(loser).Reconcile(ConflictPath(rec.id), journal::Scope::kTree, /*force_data=*/true);
}

int ListConflicts(Backend& nas, std::vector<ConflictRecord>* out) {
  out->clear();
  Backend* b = &nas;
  std::set<std::string> ids;
  auto entries = std::make_shared<std::vector<DirEntry>>();
  int r = b->Run([b, entries] { return b->ReadDir(kConflictsDir, entries.get()); });
  if (r == ENOENT) return 0;
  if (r) return r;
  for (const auto& e : *entries)
    if (e.name != "." && e.name != "..") ids.insert(e.name);
  for (const auto& id : ids) {
    ConflictRecord rec;
    if (int e = ReadMeta(b, id, &rec)) {
      if (IsFaultErrno(e)) return e;
      rec = ConflictRecord{};
      rec.id = id;
      rec.kind = "unknown";
    }
    out->push_back(std::move(rec));
  }
  return 0;
}

namespace {

// Creates the ancestors of path b lacks: mode 0755, owner `who`, times t.
int MakeAncestors(Backend* b, const std::string& path, const Caller& who, const timespec& t) {
  for (size_t pos = path.find('/'); pos != std::string::npos; pos = path.find('/', pos + 1)) {
    std::string anc = path.substr(0, pos);
    struct stat st;
    int r = StatOn(b, anc, &st);
    if (r == 0) continue;  // a directory: checked before anything changed
    if (r != ENOENT) return r;
    auto scratch = std::make_shared<struct stat>();
    if (int e = b->Run([b, anc, who, t, scratch] { return b->Mkdir(anc, 0755, who, t, scratch.get()); }))
      return e;
  }
  return 0;
}

}  // namespace

int RestoreConflict(Backend* master, Backend* backup, SharedGate* sync_mu, const std::string& node,
                    const std::string& id, ConflictRecord* restored, ConflictRecord* displaced) {
  *restored = ConflictRecord{};
  *displaced = ConflictRecord{};
  if (!ValidId(id)) return EINVAL;
  const std::string data = DataPath(id);
  struct stat dm, db;
  int rm = StatOn(master, data, &dm);
  int rb = StatOn(backup, data, &db);
  if (rm && rm != ENOENT) return rm;
  if (rb && rb != ENOENT) return rb;
  if (rm && rb) return ENOENT;
  if (int em = ReadMeta(master, id, restored))
    if (int eb = ReadMeta(backup, id, restored)) return IsFaultErrno(em) ? em : IsFaultErrno(eb) ? eb : EBADMSG;
  if (restored->path.empty() || !ValidPath(restored->path)) return EBADMSG;
  const std::string path = restored->path;

  // Nothing changes until every ancestor is known to be a directory (or
  // missing) on both NAS.
  for (Backend* b : {master, backup})
    for (size_t pos = path.find('/'); pos != std::string::npos; pos = path.find('/', pos + 1)) {
      struct stat st;
      int r = StatOn(b, path.substr(0, pos), &st);
      if (r == ENOENT) break;
      if (r) return r;
      if (!S_ISDIR(st.st_mode)) return ENOTDIR;
    }

  // Both NAS hold every kept version; one that lost its copy gets the other's.
  TreeSync to_backup(master, backup, sync_mu, /*verify_content=*/false, /*displace=*/false, nullptr);
  TreeSync to_master(backup, master, sync_mu, /*verify_content=*/false, /*displace=*/false, nullptr);
  if (rm || rb) {
    TreeSync& copy = rm ? to_master : to_backup;
    if (int r = copy.Reconcile(ConflictPath(id), journal::Scope::kTree, /*force_data=*/true)) return r;
    if (int r = StatOn(rm ? master : backup, data, rm ? &dm : &db)) return r;
  }
  const struct stat& version = rm ? db : dm;

  // What is at the path now becomes a conflict of its own.
  struct stat pm, pb;
  int hm = StatOn(master, path, &pm);
  int hb = StatOn(backup, path, &pb);
  if (hm && hm != ENOENT) return hm;
  if (hb && hb != ENOENT) return hb;
  timespec now;
  clock_gettime(CLOCK_REALTIME, &now);  // one stamp for both NAS, as the mirror does
  if (hm == 0 || hb == 0) {
    const struct stat& cur = hm == 0 ? pm : pb;
    ConflictRecord rec;
    rec.path = path;
    rec.kept_from = rec.winner = "both";
    rec.kind = KindOf(cur.st_mode);
    rec.reason = "restore";
    rec.kept_mtime_ns = Ns(cur.st_mtim);
    rec.winner_mtime_ns = Ns(version.st_mtim);
    rec.size = S_ISREG(cur.st_mode) ? static_cast<uint64_t>(cur.st_size) : 0;
    rec.detected = NowIso8601();
    rec.node = node;
    if (int r = NewId({master, backup}, node, &rec.id)) return r;
    const std::string kept = DataPath(rec.id);
    for (Backend* b : {master, backup}) {
      if (int r = MakeConflictDir(b, rec.id)) return r;
      if (int r = WriteMeta(b, rec)) return r;
      if ((b == master ? hm : hb) != 0) continue;
      if (int r = b->Run([b, path, kept, now] { return b->Rename(path, kept, RENAME_NOREPLACE, now); }))
        return r;
    }
    if (hm || hb)
      if (int r = (hm ? to_master : to_backup).Reconcile(kept, journal::Scope::kTree, /*force_data=*/true))
        return r;
    LogKept(rec);
    *displaced = rec;
  }

  const Caller owner{version.st_uid, version.st_gid};
  for (Backend* b : {master, backup}) {
    if (int r = MakeAncestors(b, path, owner, now)) return r;
    if (int r = b->Run([b, data, path, now] { return b->Rename(data, path, RENAME_NOREPLACE, now); })) return r;
  }
  for (Backend* b : {master, backup}) {
    std::string dir = ConflictPath(id);
    if (int r = b->Run([b, dir] { return b->RemoveTree(dir); })) return r;
  }
  if (auto log = Logger("sync")) log->warn("restored /{} from {}/{}", ShownPath(path), kConflictsDir, id);
  return 0;
}

}  // namespace nasfs
