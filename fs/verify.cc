#include "fs/verify.h"

#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>

#include <algorithm>
#include <array>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <map>
#include <new>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <xxhash.h>

#include "fs/log.h"

namespace nasfs {
namespace {

using nlohmann::json;

constexpr const char* kSideName[2] = {"master", "backup"};
// Names stat'ed by one NAS call: a huge directory must not make one call
// outlast the deadline.
constexpr size_t kStatBatch = 64;
// An xattr value longer than this, or not printable, is shown as hex (cut).
constexpr size_t kValuePreview = 64;
// Before comparing the suspects again: time for a mirrored write caught
// half-applied to land on both NAS.
constexpr auto kRecheckDelay = std::chrono::milliseconds(200);

// Unwinds the walk: a NAS timed out or faulted, or the caller asked to stop.
struct Abort {
  std::string message;
};

// What one NAS says about one path.
struct Side {
  int err = 0;  // 0; ENOENT: absent; else why it could not be stat'ed
  struct stat st {};
};
using Sides = std::array<Side, 2>;

struct Difference {
  std::string path;  // "/a/b"
  std::string what;
  std::array<std::optional<std::string>, 2> value;  // per side; nullopt: none
};

using Xattrs = std::map<std::string, std::string>;

std::string Display(const std::string& rel) { return "/" + rel; }
// In an error message: cut and escaped.
std::string Shown(const std::string& rel) { return "/" + ShownPath(rel); }

const char* TypeName(mode_t m) {
  switch (m & S_IFMT) {
    case S_IFREG: return "file";
    case S_IFDIR: return "directory";
    case S_IFLNK: return "symlink";
    case S_IFIFO: return "fifo";
    case S_IFSOCK: return "socket";
    case S_IFCHR: return "character device";
    case S_IFBLK: return "block device";
  }
  return "unknown type";
}

std::string TimeText(const timespec& t) {
  struct tm tm {};
  gmtime_r(&t.tv_sec, &tm);
  char buf[32];
  strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%S", &tm);
  return fmt::format("{}.{:09d}Z", buf, t.tv_nsec);
}

std::string ValueText(const std::string& v) {
  const bool printable =
      std::all_of(v.begin(), v.end(), [](unsigned char c) { return c >= 0x20 && c < 0x7f; });
  if (printable && v.size() <= kValuePreview) return "'" + v + "'";
  const size_t shown = std::min(v.size(), kValuePreview / 2);
  std::string hex;
  for (size_t i = 0; i < shown; ++i) hex += fmt::format("{:02x}", static_cast<unsigned char>(v[i]));
  return fmt::format("0x{}{} ({} bytes)", hex, shown < v.size() ? "..." : "", v.size());
}

// The size-query protocol of Backend::ListXattr/GetXattr, retried while the
// attribute grows between the query and the read (ERANGE).
template <typename Get>
int FetchSized(Get get, std::string* out) {
  for (int attempt = 0; attempt < 4; ++attempt) {
    std::string size_text;
    if (int r = get(0, &size_text)) return r;
    const size_t size = std::stoul(size_text);
    if (size == 0) {
      out->clear();
      return 0;
    }
    int r = get(size, out);
    if (r != ERANGE) return r;
  }
  return ERANGE;
}

// Every extended attribute of rel: one NAS call's worth of syscalls.
int ReadXattrs(const Backend& b, const std::string& rel, Xattrs* out) {
  out->clear();
  std::string names;
  int r = FetchSized([&](size_t size, std::string* o) { return b.ListXattr(rel, size, o); }, &names);
  if (r == ENOTSUP) return 0;  // a filesystem without xattrs has none to differ
  if (r) return r;
  for (size_t pos = 0; pos < names.size();) {
    const size_t end = std::min(names.find('\0', pos), names.size());
    std::string name = names.substr(pos, end - pos);
    pos = end + 1;
    if (name.empty()) continue;
    std::string value;
    r = FetchSized([&](size_t size, std::string* o) { return b.GetXattr(rel, name, size, o); }, &value);
    if (r == ENODATA) continue;  // removed since the listing
    if (r) return r;
    (*out)[name] = std::move(value);
  }
  return 0;
}

class Verifier {
 public:
  Verifier(Backend& master, Backend& backup, size_t max_reported, std::stop_token stop)
      : nas_{&master, &backup}, max_(max_reported), stop_(std::move(stop)) {}

  json Run();

 private:
  // fn(nas, side, out): runs on that NAS's worker, fills *out.
  template <typename T>
  using SideFn = std::function<int(const Backend&, int, T*)>;

  // Runs fn on both NAS at once (on those `want` names), each under its
  // io_timeout deadline; (*out)[i] is filled when side i answered 0.
  // Returns each side's errno. Throws Abort on a timeout, a fault errno or
  // a stop request.
  template <typename T>
  std::array<int, 2> OnBoth(const char* what, const std::string& rel, SideFn<T> fn,
                            std::array<T, 2>* out, std::array<bool, 2> want = {true, true});

  void CheckHealthy(bool after_walk) const;
  Sides StatBoth(const std::string& rel);
  void VisitDir(const std::string& dir, std::vector<std::string>* dirs);
  // Appends what differs between the two sides of rel; true when both are
  // directories (to be walked).
  bool Compare(const std::string& rel, const Sides& s, std::vector<Difference>* out);
  // Both sides' xattrs of rel, each name that differs (or one side could
  // not list them).
  void CompareXattrs(const std::string& rel, std::vector<Difference>* out);
  std::array<int, 2> HashBoth(const std::string& rel, off_t size, std::array<uint64_t, 2>* digest);
  // Hard links: on each NAS, the first name (in walk order) of rel's inode
  // when it has several; two NAS whose names are grouped differently into
  // files differ even when every count matches. Reported as found.
  void CompareLinks(const std::string& rel, const Sides& s);
  // A path to compare again after the walk.
  void Suspect(const std::string& rel);
  // A difference reported as found (not compared again).
  void Report(Difference d);
  bool Full() const { return direct_.size() + suspects_.size() >= max_; }
  std::vector<Difference> Recheck();

  Backend* nas_[2];
  const size_t max_;
  std::stop_token stop_;
  uint64_t entries_ = 0;
  std::vector<std::string> suspects_;
  std::vector<Difference> direct_;
  uint64_t unreported_ = 0;  // differing paths beyond max_
  std::map<ino_t, std::string> first_name_[2];  // per NAS: inodes with several names, their first name
};

void Verifier::CompareLinks(const std::string& rel, const Sides& s) {
  std::array<std::string, 2> group;
  for (int i : {0, 1}) {
    if (s[i].err || S_ISDIR(s[i].st.st_mode) || s[i].st.st_nlink < 2) continue;
    group[i] = first_name_[i].try_emplace(s[i].st.st_ino, rel).first->second;
  }
  if (s[0].err || s[1].err || group[0] == group[1]) return;
  auto text = [&](int i) -> std::optional<std::string> {
    return group[i].empty() ? std::string("a file of its own")
                            : group[i] == rel ? std::string("the first name of a linked file")
                                              : "the same file as " + Display(group[i]);
  };
  Report(Difference{Display(rel), "hard link", {text(0), text(1)}});
}

template <typename T>
std::array<int, 2> Verifier::OnBoth(const char* what, const std::string& rel, SideFn<T> fn,
                                    std::array<T, 2>* out, std::array<bool, 2> want) {
  if (stop_.stop_requested()) throw Abort{"verify cancelled (the client went away or nasfs is stopping)"};
  std::array<std::shared_ptr<T>, 2> result;
  std::array<std::shared_ptr<Call>, 2> call;
  std::array<Clock::time_point, 2> deadline;
  for (int i : {0, 1}) {
    if (!want[i]) continue;
    result[i] = std::make_shared<T>();
    deadline[i] = nas_[i]->Deadline();
    // A call we stop waiting for may still finish later: it owns all it
    // touches (fn, rel and its result are captured by value). An exception
    // must not escape onto the worker thread.
    Backend* nas = nas_[i];
    call[i] = nas->Submit(
        [fn, i, nas, res = result[i]] {
          try {
            return fn(*nas, i, res.get());
          } catch (const std::bad_alloc&) {
            return ENOMEM;
          } catch (...) {
            return EPROTO;
          }
        },
        deadline[i]);
  }
  std::array<int, 2> r{0, 0};
  for (int i : {0, 1}) {
    if (!want[i]) continue;
    r[i] = call[i]->Wait(deadline[i]);
    nas_[i]->Account(r[i]);
  }
  for (int i : {0, 1}) {
    if (!want[i]) continue;
    if (r[i] == ETIMEDOUT) {
      throw Abort{fmt::format("{} ({}): {} {} timed out (io_timeout {} ms): the NAS is hung or "
                              "overloaded; verify stopped",
                              kSideName[i], nas_[i]->path(), what, Shown(rel),
                              nas_[i]->io_timeout().count())};
    }
    if (IsFaultErrno(r[i])) {
      throw Abort{fmt::format("{} ({}): {} {}: {}; verify stopped", kSideName[i], nas_[i]->path(),
                              what, Shown(rel), std::strerror(r[i]))};
    }
    if (r[i] == 0) (*out)[i] = std::move(*result[i]);
  }
  return r;
}

void Verifier::CheckHealthy(bool after_walk) const {
  for (int i : {0, 1}) {
    const BackendState s = nas_[i]->state();
    if (s == BackendState::kHealthy) continue;
    std::string last_error;
    if (auto e = nas_[i]->Status().value("last_error", json()); e.is_string())
      last_error = fmt::format(" (last error: {})", e.get<std::string>());
    throw Abort{fmt::format(
        "{} {} {}{}: verify compares two healthy NAS (one being replayed, copied or out would "
        "only show noise){}; try again once nasfsctl status shows both healthy",
        kSideName[i], after_walk ? "became" : "is", StateName(s), last_error,
        after_walk ? ", so the walk's result is dropped" : "")};
  }
}

Sides Verifier::StatBoth(const std::string& rel) {
  std::array<struct stat, 2> st{};
  auto r = OnBoth<struct stat>(
      "stat", rel, [rel](const Backend& b, int, struct stat* o) { return b.Stat(rel, o); }, &st);
  Sides s;
  for (int i : {0, 1}) {
    s[i].err = r[i];
    s[i].st = st[i];
  }
  return s;
}

void Verifier::Suspect(const std::string& rel) {
  if (Full()) {
    ++unreported_;
    return;
  }
  suspects_.push_back(rel);
}

void Verifier::Report(Difference d) {
  if (Full()) {
    ++unreported_;
    return;
  }
  direct_.push_back(std::move(d));
}

void Verifier::VisitDir(const std::string& dir, std::vector<std::string>* dirs) {
  std::array<std::vector<DirEntry>, 2> lists;
  auto r = OnBoth<std::vector<DirEntry>>(
      "readdir", dir,
      [dir](const Backend& b, int, std::vector<DirEntry>* o) { return b.ReadDir(dir, o); }, &lists);
  if (r[0] == ENOENT || r[1] == ENOENT) {
    // Removed or renamed since its stat (a write through the mount): the
    // recheck tells whether it is gone from both.
    Suspect(dir);
    return;
  }
  if (r[0] || r[1]) {
    Difference d{Display(dir), "unreadable", {}};
    for (int i : {0, 1}) {
      if (r[i]) d.value[i] = fmt::format("readdir: {}", std::strerror(r[i]));
    }
    Report(std::move(d));
    return;
  }

  std::vector<std::string> names;
  for (const auto& list : lists) {
    for (const auto& e : list) {
      if (e.name == "." || e.name == "..") continue;
      if (dir.empty() && (e.name == kMetaDir || e.name == "lost+found")) continue;
      names.push_back(e.name);
    }
  }
  std::sort(names.begin(), names.end());
  names.erase(std::unique(names.begin(), names.end()), names.end());

  for (size_t start = 0; start < names.size(); start += kStatBatch) {
    const std::vector<std::string> batch(
        names.begin() + static_cast<std::ptrdiff_t>(start),
        names.begin() + static_cast<std::ptrdiff_t>(std::min(names.size(), start + kStatBatch)));
    std::array<std::vector<struct stat>, 2> st;
    auto rs = OnBoth<std::vector<struct stat>>(
        "stat entries of", dir,
        [dir, batch](const Backend& b, int, std::vector<struct stat>* o) {
          return b.StatChildren(dir, batch, o);
        },
        &st);
    if (rs[0] || rs[1]) {
      Suspect(dir);  // the directory went away meanwhile
      return;
    }
    for (size_t k = 0; k < batch.size(); ++k) {
      const std::string rel = JoinPath(dir, batch[k]);
      Sides s;
      for (int i : {0, 1}) {
        s[i].st = st[i][k];
        s[i].err = st[i][k].st_ino == 0 ? ENOENT : 0;  // StatChildren's "missing"
      }
      ++entries_;
      std::vector<Difference> found;
      const bool both_dirs = Compare(rel, s, &found);
      if (!found.empty()) Suspect(rel);
      if (both_dirs) dirs->push_back(rel);
      CompareLinks(rel, s);
    }
  }
}

std::array<int, 2> Verifier::HashBoth(const std::string& rel, off_t size,
                                      std::array<uint64_t, 2>* digest) {
  using State = std::shared_ptr<XXH3_state_t>;
  std::array<State, 2> state;
  for (auto& s : state) {
    s = State(XXH3_createState(), XXH3_freeState);
    if (!s) throw std::bad_alloc();
    XXH3_64bits_reset(s.get());
  }
  std::array<off_t, 2> off{0, 0};
  std::array<bool, 2> done{false, false};
  std::array<int, 2> err{0, 0};
  while (!done[0] || !done[1]) {
    // Up to the expected end plus one byte, so a file of the size stat gave
    // ends with one short read; a file that grew meanwhile is read on.
    std::array<size_t, 2> want{};
    for (int i : {0, 1}) {
      want[i] = off[i] < size ? static_cast<size_t>(std::min<off_t>(
                                    static_cast<off_t>(kVerifyHashChunk), size - off[i] + 1))
                              : kVerifyHashChunk;
    }
    std::array<size_t, 2> got{};
    auto r = OnBoth<size_t>(
        "read", rel,
        [rel, state, off, want](const Backend& b, int i, size_t* n) {
          std::string buf;
          if (int e = b.Read(rel, off[i], want[i], &buf)) return e;
          XXH3_64bits_update(state[i].get(), buf.data(), buf.size());
          *n = buf.size();
          return 0;
        },
        &got, {!done[0], !done[1]});
    for (int i : {0, 1}) {
      if (done[i]) continue;
      if (r[i]) {
        err[i] = r[i];
        done = {true, true};  // the content cannot be compared: stop both
        break;
      }
      off[i] += static_cast<off_t>(got[i]);
      if (got[i] < want[i]) done[i] = true;
    }
  }
  for (int i : {0, 1}) (*digest)[i] = XXH3_64bits_digest(state[i].get());
  return err;
}

// What differs, as one Difference per field: master's value, backup's.
void AddDifference(std::vector<Difference>* out, const std::string& path, std::string what,
                   std::optional<std::string> m, std::optional<std::string> b) {
  out->push_back(Difference{path, std::move(what), {std::move(m), std::move(b)}});
}

// Side i could not give `what`: an "unreadable" difference naming why.
void AddUnreadable(std::vector<Difference>* out, const std::string& path, const char* what,
                   const std::array<int, 2>& r) {
  Difference d{path, "unreadable", {}};
  for (int i : {0, 1}) {
    if (r[i]) d.value[i] = fmt::format("{}: {}", what, std::strerror(r[i]));
  }
  out->push_back(std::move(d));
}

// The attributes a stat shows of two entries of one type: mode, owner,
// link count and size (not of directories), device, mtime (not the root's).
void CompareAttrs(const std::string& rel, const struct stat& m, const struct stat& b, std::vector<Difference>* out) {
  const std::string path = Display(rel);
  auto add = [&](std::string what, std::optional<std::string> mv, std::optional<std::string> bv) {
    AddDifference(out, path, std::move(what), std::move(mv), std::move(bv));
  };
  if ((m.st_mode & 07777) != (b.st_mode & 07777)) {
    add("mode", fmt::format("{:04o}", m.st_mode & 07777), fmt::format("{:04o}", b.st_mode & 07777));
  }
  if (m.st_uid != b.st_uid) add("uid", std::to_string(m.st_uid), std::to_string(b.st_uid));
  if (m.st_gid != b.st_gid) add("gid", std::to_string(m.st_gid), std::to_string(b.st_gid));
  const bool dir = S_ISDIR(m.st_mode);
  if (!dir && m.st_nlink != b.st_nlink) {
    add("link count", std::to_string(m.st_nlink), std::to_string(b.st_nlink));
  }
  if (!dir && m.st_size != b.st_size) {
    add("size", std::to_string(m.st_size), std::to_string(b.st_size));
  }
  if ((S_ISCHR(m.st_mode) || S_ISBLK(m.st_mode)) && m.st_rdev != b.st_rdev) {
    add("rdev", fmt::format("{}:{}", major(m.st_rdev), minor(m.st_rdev)),
        fmt::format("{}:{}", major(b.st_rdev), minor(b.st_rdev)));
  }
  if (!rel.empty() &&
      (m.st_mtim.tv_sec != b.st_mtim.tv_sec || m.st_mtim.tv_nsec != b.st_mtim.tv_nsec)) {
    add("mtime", TimeText(m.st_mtim), TimeText(b.st_mtim));
  }
}

bool Verifier::Compare(const std::string& rel, const Sides& s, std::vector<Difference>* out) {
  const std::string path = Display(rel);
  if ((s[0].err && s[0].err != ENOENT) || (s[1].err && s[1].err != ENOENT)) {
    AddUnreadable(out, path, "stat", {s[0].err == ENOENT ? 0 : s[0].err, s[1].err == ENOENT ? 0 : s[1].err});
    return false;
  }
  if (s[0].err && s[1].err) return false;  // gone from both
  for (int i : {0, 1}) {
    if (s[1 - i].err) {
      std::array<std::optional<std::string>, 2> v;
      v[i] = TypeName(s[i].st.st_mode);
      out->push_back(Difference{path, fmt::format("only on {}", kSideName[i]), std::move(v)});
      return false;
    }
  }
  const struct stat& m = s[0].st;
  const struct stat& b = s[1].st;
  if ((m.st_mode & S_IFMT) != (b.st_mode & S_IFMT)) {
    AddDifference(out, path, "type", TypeName(m.st_mode), TypeName(b.st_mode));
    return false;
  }
  CompareAttrs(rel, m, b, out);
  if (S_ISLNK(m.st_mode)) {
    std::array<std::string, 2> target;
    auto r = OnBoth<std::string>(
        "readlink", rel, [rel](const Backend& nas, int, std::string* o) { return nas.ReadLink(rel, o); },
        &target);
    if (r[0] || r[1]) {
      AddUnreadable(out, path, "readlink", r);
    } else if (target[0] != target[1]) {
      AddDifference(out, path, "symlink target", target[0], target[1]);
    }
    return false;  // nasfs keeps no xattrs on symlinks
  }
  if (S_ISREG(m.st_mode) && m.st_size == b.st_size) {
    std::array<uint64_t, 2> digest{};
    auto r = HashBoth(rel, m.st_size, &digest);
    if (r[0] || r[1]) {
      AddUnreadable(out, path, "read", r);
    } else if (digest[0] != digest[1]) {
      AddDifference(out, path, "content", fmt::format("xxh3:{:016x}", digest[0]),
                    fmt::format("xxh3:{:016x}", digest[1]));
    }
  }
  CompareXattrs(rel, out);
  return S_ISDIR(m.st_mode);
}

void Verifier::CompareXattrs(const std::string& rel, std::vector<Difference>* out) {
  const std::string path = Display(rel);
  std::array<Xattrs, 2> x;
  auto r = OnBoth<Xattrs>(
      "read the xattrs of", rel,
      [rel](const Backend& nas, int, Xattrs* o) { return ReadXattrs(nas, rel, o); }, &x);
  if (r[0] || r[1]) {
    AddUnreadable(out, path, "xattrs", r);
    return;
  }
  if (x[0] == x[1]) return;
  std::map<std::string, std::array<std::optional<std::string>, 2>> by_name;
  for (int i : {0, 1}) {
    for (const auto& [name, value] : x[i]) by_name[name][i] = value;
  }
  for (const auto& [name, v] : by_name) {
    if (v[0] == v[1]) continue;
    AddDifference(out, path, "xattr " + name, v[0] ? std::optional(ValueText(*v[0])) : std::nullopt,
                  v[1] ? std::optional(ValueText(*v[1])) : std::nullopt);
  }
}

std::vector<Difference> Verifier::Recheck() {
  std::vector<Difference> out = std::move(direct_);
  if (suspects_.empty()) return out;
  {
    std::mutex mu;
    std::condition_variable_any cv;
    std::unique_lock lk(mu);
    (void)cv.wait_for(lk, stop_, kRecheckDelay, [] { return false; });  // a stop shows at the next call
  }
  for (const auto& rel : suspects_) (void)Compare(rel, StatBoth(rel), &out);
  return out;
}

json Verifier::Run() {
  const auto t0 = Clock::now();
  std::vector<Difference> diffs;
  try {
    CheckHealthy(false);
    const Sides root = StatBoth("");
    ++entries_;
    std::vector<Difference> found;
    const bool walk = Compare("", root, &found);
    if (!found.empty()) Suspect("");
    std::vector<std::string> dirs;
    if (walk) dirs.push_back("");
    while (!dirs.empty()) {
      std::string dir = std::move(dirs.back());
      dirs.pop_back();
      VisitDir(dir, &dirs);
    }
    diffs = Recheck();
    CheckHealthy(true);
  } catch (const Abort& a) {
    return {{"ok", false}, {"error", a.message}};
  }

  std::stable_sort(diffs.begin(), diffs.end(),
                   [](const Difference& a, const Difference& b) { return a.path < b.path; });
  json list = json::array();
  size_t bytes = 0;
  bool truncated = unreported_ > 0;
  for (auto& d : diffs) {
    if (list.size() >= max_ || bytes >= kVerifyAnswerBudget) {
      truncated = true;
      break;
    }
    json item = {{"path", std::move(d.path)}, {"what", std::move(d.what)}};
    for (int i : {0, 1}) {
      item[kSideName[i]] = d.value[i] ? json(*d.value[i]) : json(nullptr);
    }
    bytes += item.dump(-1, ' ', false, json::error_handler_t::replace).size() + 1;
    list.push_back(std::move(item));
  }
  // Each path beyond the limit counts as one difference: at least that many.
  const uint64_t not_listed = (diffs.size() - list.size()) + unreported_;
  const bool match = diffs.empty() && unreported_ == 0;
  const double elapsed = std::chrono::duration<double>(Clock::now() - t0).count();
  if (auto log = Logger("control")) {
    log->info("verify: {} entries compared in {:.1f} s: {}", entries_, elapsed,
              match ? "both NAS match"
                    : fmt::format("{}{} differences", truncated ? "at least " : "",
                                  diffs.size() + unreported_));
  }
  return {{"match", match},
          {"entries_compared", entries_},
          {"elapsed_s", elapsed},
          {"truncated", truncated},
          {"unreported", not_listed},
          {"differences", std::move(list)}};
}

}  // namespace

json VerifyTrees(Backend& master, Backend& backup, size_t max_reported, std::stop_token stop) {
  return Verifier(master, backup, max_reported, std::move(stop)).Run();
}

}  // namespace nasfs
