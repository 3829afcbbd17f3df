// POSIX behaviour through a nasfs mount, compared with the native filesystem.
//
// Most tests run one operation sequence twice: on a reference directory on
// the local disk, and through the mount. Every call's result and errno, and
// what the sequence reads back (stat fields other than ino/dev/ctime/atime,
// contents, directory listings, xattrs), is logged; the two logs must be
// identical. After each scenario the master must equal the backup (content,
// mode, owner, size, mtime to the nanosecond, symlink targets, user xattrs)
// and the master must equal the reference (all that but mtime, whose clock
// readings differ).
//
// The remaining tests check what has no native twin: both NAS stamped with
// the same mtime, .nasfs invisible, nothing escaping the NAS through
// symlinks planted on the NAS, permissions for an unprivileged caller.

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/xattr.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <thread>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <xxhash.h>

#include "tests/e2e/mount_fixture.h"
#include "tests/e2e/tree_compare.h"

namespace nasfs::e2e {
namespace {

std::string ErrName(int e) {
  const char* n = strerrorname_np(e);
  return n != nullptr ? n : fmt::format("errno{}", e);
}

std::string FlagsName(int flags) {
  std::string s;
  switch (flags & O_ACCMODE) {
    case O_RDONLY: s = "O_RDONLY"; break;
    case O_WRONLY: s = "O_WRONLY"; break;
    default: s = "O_RDWR"; break;
  }
  const std::pair<int, const char*> names[] = {
      {O_CREAT, "O_CREAT"},         {O_EXCL, "O_EXCL"},         {O_TRUNC, "O_TRUNC"},
      {O_APPEND, "O_APPEND"},       {O_DIRECTORY, "O_DIRECTORY"}, {O_NOFOLLOW, "O_NOFOLLOW"},
  };
  for (auto [bit, name] : names) {
    if ((flags & bit) != 0) s += std::string("|") + name;
  }
  return s;
}

std::string Escaped(std::string_view data, size_t max = 48) {
  std::string s;
  for (size_t i = 0; i < data.size() && i < max; ++i) {
    unsigned char c = static_cast<unsigned char>(data[i]);
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      s.push_back(static_cast<char>(c));
    } else {
      s += fmt::format("\\x{:02x}", c);
    }
  }
  if (data.size() > max) s += "...";
  return s;
}

std::string DescribeData(std::string_view data) {
  return fmt::format("{} bytes '{}' xxh3={:016x}", data.size(), Escaped(data),
                     XXH3_64bits(data.data(), data.size()));
}

std::string TypeOf(mode_t m) {
  if (S_ISREG(m)) return "reg";
  if (S_ISDIR(m)) return "dir";
  if (S_ISLNK(m)) return "lnk";
  if (S_ISFIFO(m)) return "fifo";
  return "other";
}

std::string DtypeName(unsigned char t) {
  switch (t) {
    case DT_REG: return "reg";
    case DT_DIR: return "dir";
    case DT_LNK: return "lnk";
    case DT_FIFO: return "fifo";
    case DT_UNKNOWN: return "unknown";
    default: return fmt::format("dtype{}", t);
  }
}

timespec Ts(time_t sec, long nsec) { return timespec{sec, nsec}; }

timespec RealNow() {
  timespec t{};
  clock_gettime(CLOCK_REALTIME, &t);
  return t;
}

bool TsLess(const timespec& a, const timespec& b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec < b.tv_nsec);
}

timespec TsMinusMs(timespec t, long ms) {
  long ns = t.tv_nsec - ms * 1000000L;
  while (ns < 0) {
    ns += 1000000000L;
    t.tv_sec -= 1;
  }
  t.tv_nsec = ns;
  return t;
}

// What Ops::Stat logs beyond type, mode, owner, nlink and size.
constexpr int kWantMtime = 1;
constexpr int kWantBlocks = 2;

// One operation sequence against one tree, each call logged with its result.
// Every method returns what the syscall returned, or -errno. Paths are
// relative to the root and logged relative, so the reference's log and the
// mount's log can be compared line by line.
class Ops {
 public:
  Ops(std::string root, std::string name) : root_(std::move(root)), name_(std::move(name)) {}
  ~Ops() {
    for (auto& [fd, slot] : fds_) ::close(fd);
  }
  Ops(const Ops&) = delete;
  Ops& operator=(const Ops&) = delete;

  const std::string& name() const { return name_; }
  const std::vector<std::string>& log() const { return log_; }
  std::string P(const std::string& rel) const { return rel.empty() ? root_ : root_ + "/" + rel; }
  void Note(const std::string& s) { log_.push_back("note: " + s); }

  int Open(const std::string& rel, int flags, mode_t mode = 0644) {
    int fd = ::open(P(rel).c_str(), flags | O_CLOEXEC, mode);
    int e = errno;
    std::string call = fmt::format("open({}, {}, {:04o})", rel, FlagsName(flags), mode);
    if (fd < 0) return Fail(call, e);
    int slot = ++next_slot_;
    fds_[fd] = slot;
    log_.push_back(fmt::format("{} = fd{}", call, slot));
    return fd;
  }
  int Close(int fd) {
    if (fd < 0) return -EBADF;
    std::string call = fmt::format("close({})", Fd(fd));
    fds_.erase(fd);
    return Result(call, ::close(fd));
  }
  ssize_t Write(int fd, std::string_view data) {
    return Result(fmt::format("write({}, {})", Fd(fd), DescribeData(data)),
                  ::write(fd, data.data(), data.size()));
  }
  ssize_t Pwrite(int fd, std::string_view data, off_t off) {
    return Result(fmt::format("pwrite({}, {}, @{})", Fd(fd), DescribeData(data), off),
                  ::pwrite(fd, data.data(), data.size(), off));
  }
  std::string Read(int fd, size_t n) {
    std::string buf(n, '\0');
    ssize_t r = ::read(fd, buf.data(), n);
    return DataResult(fmt::format("read({}, {})", Fd(fd), n), r, buf);
  }
  std::string Pread(int fd, size_t n, off_t off) {
    std::string buf(n, '\0');
    ssize_t r = ::pread(fd, buf.data(), n, off);
    return DataResult(fmt::format("pread({}, {}, @{})", Fd(fd), n, off), r, buf);
  }
  off_t Lseek(int fd, off_t off, int whence) {
    return Result(fmt::format("lseek({}, {}, {})", Fd(fd), off, whence), ::lseek(fd, off, whence));
  }
  // The whole content of a file, opened by path.
  std::string ReadAll(const std::string& rel) {
    int fd = ::open(P(rel).c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      Fail(fmt::format("read_all({})", rel), errno);
      return "";
    }
    std::string out;
    char buf[65536];
    ssize_t n;
    while ((n = ::read(fd, buf, sizeof buf)) > 0) out.append(buf, static_cast<size_t>(n));
    int e = errno;
    ::close(fd);
    if (n < 0) {
      Fail(fmt::format("read_all({})", rel), e);
      return "";
    }
    log_.push_back(fmt::format("read_all({}) = {}", rel, DescribeData(out)));
    return out;
  }
  // Drops the page cache of fd, so the next read reaches the filesystem
  // (through FUSE: the daemon) instead of pages cached by the kernel.
  void DropCache(int fd) { (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED); }

  int Truncate(const std::string& rel, off_t len) {
    return Result(fmt::format("truncate({}, {})", rel, len), ::truncate(P(rel).c_str(), len));
  }
  int Ftruncate(int fd, off_t len) {
    return Result(fmt::format("ftruncate({}, {})", Fd(fd), len), ::ftruncate(fd, len));
  }
  int Fallocate(int fd, int mode, off_t off, off_t len) {
    return Result(fmt::format("fallocate({}, mode={}, @{}, {})", Fd(fd), mode, off, len),
                  ::fallocate(fd, mode, off, len));
  }
  int Fsync(int fd) { return Result(fmt::format("fsync({})", Fd(fd)), ::fsync(fd)); }
  int Fdatasync(int fd) { return Result(fmt::format("fdatasync({})", Fd(fd)), ::fdatasync(fd)); }

  int Unlink(const std::string& rel) { return Result(fmt::format("unlink({})", rel), ::unlink(P(rel).c_str())); }
  int Mkdir(const std::string& rel, mode_t mode = 0755) {
    return Result(fmt::format("mkdir({}, {:04o})", rel, mode), ::mkdir(P(rel).c_str(), mode));
  }
  int Rmdir(const std::string& rel) { return Result(fmt::format("rmdir({})", rel), ::rmdir(P(rel).c_str())); }
  int Rename(const std::string& a, const std::string& b, unsigned flags = 0) {
    return Result(fmt::format("renameat2({}, {}, flags={})", a, b, flags),
                  ::renameat2(AT_FDCWD, P(a).c_str(), AT_FDCWD, P(b).c_str(), flags));
  }
  int Symlink(const std::string& target, const std::string& rel) {
    return Result(fmt::format("symlink('{}', {})", Escaped(target, 64), rel), ::symlink(target.c_str(), P(rel).c_str()));
  }
  std::string Readlink(const std::string& rel) {
    char buf[PATH_MAX + 1];
    ssize_t n = ::readlink(P(rel).c_str(), buf, sizeof buf);
    std::string call = fmt::format("readlink({})", rel);
    if (n < 0) {
      Fail(call, errno);
      return "";
    }
    std::string target(buf, static_cast<size_t>(n));
    log_.push_back(fmt::format("{} = '{}' ({} bytes)", call, Escaped(target, 64), n));
    return target;
  }
  int Link(const std::string& a, const std::string& b) {
    return Result(fmt::format("link({}, {})", a, b), ::link(P(a).c_str(), P(b).c_str()));
  }
  int Chmod(const std::string& rel, mode_t mode) {
    return Result(fmt::format("chmod({}, {:04o})", rel, mode), ::chmod(P(rel).c_str(), mode));
  }
  int Fchmod(int fd, mode_t mode) {
    return Result(fmt::format("fchmod({}, {:04o})", Fd(fd), mode), ::fchmod(fd, mode));
  }
  int Chown(const std::string& rel, uid_t uid, gid_t gid) {
    return Result(fmt::format("chown({}, {}, {})", rel, static_cast<int>(uid), static_cast<int>(gid)),
                  ::chown(P(rel).c_str(), uid, gid));
  }
  int Lchown(const std::string& rel, uid_t uid, gid_t gid) {
    return Result(fmt::format("lchown({}, {}, {})", rel, static_cast<int>(uid), static_cast<int>(gid)),
                  ::lchown(P(rel).c_str(), uid, gid));
  }
  int Utimens(const std::string& rel, timespec atime, timespec mtime, int flags = 0) {
    timespec ts[2] = {atime, mtime};
    return Result(fmt::format("utimensat({}, {}, {}, flags={})", rel, TsName(atime), TsName(mtime), flags),
                  ::utimensat(AT_FDCWD, P(rel).c_str(), ts, flags));
  }
  int Futimens(int fd, timespec atime, timespec mtime) {
    timespec ts[2] = {atime, mtime};
    return Result(fmt::format("futimens({}, {}, {})", Fd(fd), TsName(atime), TsName(mtime)), ::futimens(fd, ts));
  }
  int Access(const std::string& rel, int mode) {
    return Result(fmt::format("access({}, {})", rel, mode), ::access(P(rel).c_str(), mode));
  }

  // stat (follow) / lstat (no follow) / fstat, logging type, mode, nlink
  // (not for the root: .nasfs is a hidden subdirectory there), uid, gid,
  // size (not for directories), and optionally mtime and st_blocks.
  int Stat(const std::string& rel, int w = 0, struct stat* out = nullptr) {
    struct stat st {};
    int r = ::stat(P(rel).c_str(), &st);
    return StatResult(fmt::format("stat({})", rel), r, st, w, rel.empty(), out);
  }
  int Lstat(const std::string& rel, int w = 0, struct stat* out = nullptr) {
    struct stat st {};
    int r = ::lstat(P(rel).c_str(), &st);
    return StatResult(fmt::format("lstat({})", rel), r, st, w, rel.empty(), out);
  }
  int Fstat(int fd, int w = 0, struct stat* out = nullptr) {
    struct stat st {};
    int r = ::fstat(fd, &st);
    return StatResult(fmt::format("fstat({})", Fd(fd)), r, st, w, false, out);
  }

  int SetXattr(const std::string& rel, const std::string& name, std::string_view value, int flags = 0) {
    return Result(fmt::format("setxattr({}, {}, {}, flags={})", rel, name, DescribeData(value), flags),
                  ::setxattr(P(rel).c_str(), name.c_str(), value.data(), value.size(), flags));
  }
  // size < 0: a buffer large enough; otherwise exactly `size` bytes (0 asks the length).
  std::string GetXattr(const std::string& rel, const std::string& name, ssize_t size = -1) {
    std::string buf(size < 0 ? 65536 : static_cast<size_t>(size), '\0');
    ssize_t n = ::getxattr(P(rel).c_str(), name.c_str(), size == 0 ? nullptr : buf.data(), buf.size());
    std::string call = fmt::format("getxattr({}, {}, size={})", rel, name, size);
    if (n < 0) {
      Fail(call, errno);
      return "";
    }
    if (size == 0) {
      log_.push_back(fmt::format("{} = length {}", call, n));
      return "";
    }
    buf.resize(static_cast<size_t>(n));
    log_.push_back(fmt::format("{} = {}", call, DescribeData(buf)));
    return buf;
  }
  // user.* names, sorted.
  std::vector<std::string> ListXattr(const std::string& rel) {
    std::string buf(65536, '\0');
    ssize_t n = ::listxattr(P(rel).c_str(), buf.data(), buf.size());
    std::string call = fmt::format("listxattr({})", rel);
    if (n < 0) {
      Fail(call, errno);
      return {};
    }
    std::set<std::string> names;
    for (size_t pos = 0; pos < static_cast<size_t>(n);) {
      std::string name(buf.c_str() + pos);
      pos += name.size() + 1;
      if (name.rfind("user.", 0) == 0) names.insert(name);
    }
    std::string joined;
    for (const auto& s : names) joined += s + " ";
    log_.push_back(fmt::format("{} = [{}]", call, joined));
    return {names.begin(), names.end()};
  }
  int RemoveXattr(const std::string& rel, const std::string& name) {
    return Result(fmt::format("removexattr({}, {})", rel, name), ::removexattr(P(rel).c_str(), name.c_str()));
  }

  // Sorted "name:type" entries; "." and ".." only when dots.
  std::vector<std::string> Readdir(const std::string& rel, bool dots = false) {
    DIR* d = ::opendir(P(rel).c_str());
    std::string call = fmt::format("readdir({}{})", rel, dots ? ", with dots" : "");
    if (d == nullptr) {
      Fail(call, errno);
      return {};
    }
    std::vector<std::string> entries;
    errno = 0;
    while (dirent* e = ::readdir(d)) {
      std::string n = e->d_name;
      if (!dots && (n == "." || n == "..")) continue;
      entries.push_back(n + ":" + DtypeName(e->d_type));
    }
    int e = errno;
    ::closedir(d);
    if (e != 0) {
      Fail(call, e);
      return {};
    }
    std::sort(entries.begin(), entries.end());
    std::string joined;
    for (const auto& s : entries) joined += s + " ";
    log_.push_back(fmt::format("{} = {} entries [{}]", call, entries.size(), joined));
    return entries;
  }

 private:
  std::string Fd(int fd) const {
    auto it = fds_.find(fd);
    return it == fds_.end() ? fmt::format("badfd") : fmt::format("fd{}", it->second);
  }
  static std::string TsName(timespec t) {
    if (t.tv_nsec == UTIME_NOW) return "UTIME_NOW";
    if (t.tv_nsec == UTIME_OMIT) return "UTIME_OMIT";
    return FormatTimespec(t);
  }
  long Fail(const std::string& call, int e) {
    log_.push_back(fmt::format("{} = {}", call, ErrName(e)));
    return -e;
  }
  template <typename T>
  T Result(const std::string& call, T r) {
    if (r < 0) return static_cast<T>(Fail(call, errno));
    log_.push_back(fmt::format("{} = {}", call, r));
    return r;
  }
  std::string DataResult(const std::string& call, ssize_t r, std::string& buf) {
    if (r < 0) {
      Fail(call, errno);
      return "";
    }
    buf.resize(static_cast<size_t>(r));
    log_.push_back(fmt::format("{} = {}", call, DescribeData(buf)));
    return buf;
  }
  int StatResult(const std::string& call, int r, const struct stat& st, int w, bool is_root,
                 struct stat* out) {
    if (r < 0) return static_cast<int>(Fail(call, errno));
    if (out != nullptr) *out = st;
    std::string s = fmt::format("{} = type={} mode={:04o} uid={} gid={}", call, TypeOf(st.st_mode),
                                st.st_mode & 07777, st.st_uid, st.st_gid);
    if (!is_root) s += fmt::format(" nlink={}", st.st_nlink);
    if (!S_ISDIR(st.st_mode)) s += fmt::format(" size={}", st.st_size);
    if ((w & kWantMtime) != 0) s += " mtime=" + FormatTimespec(st.st_mtim);
    if ((w & kWantBlocks) != 0) s += fmt::format(" blocks={}", st.st_blocks);
    log_.push_back(s);
    return 0;
  }

  std::string root_;
  std::string name_;
  std::vector<std::string> log_;
  std::map<int, int> fds_;  // fd -> slot number in the log
  int next_slot_ = 0;
};

std::string JoinLog(const std::vector<std::string>& log) {
  std::string s;
  for (const auto& l : log) s += l + "\n";
  return s;
}

std::vector<std::string> SplitLog(const std::string& s) {
  std::vector<std::string> out;
  size_t start = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\n') {
      out.push_back(s.substr(start, i - start));
      start = i + 1;
    }
  }
  return out;
}

// Line-by-line differences between the reference's log and the mount's.
std::string LogDiff(const std::vector<std::string>& ref, const std::vector<std::string>& mnt) {
  std::string s;
  size_t n = std::max(ref.size(), mnt.size());
  for (size_t i = 0; i < n; ++i) {
    const std::string r = i < ref.size() ? ref[i] : "(nothing)";
    const std::string m = i < mnt.size() ? mnt[i] : "(nothing)";
    if (r != m) s += fmt::format("  step {}:\n    native: {}\n    nasfs:  {}\n", i + 1, r, m);
  }
  return s;
}

bool LogHas(const std::vector<std::string>& log, const std::string& line) {
  return std::find(log.begin(), log.end(), line) != log.end();
}

class PosixTest : public ::testing::Test {
 protected:
  void SetUp() override {
    NASFS_E2E_REQUIRE_MOUNTS();
    ASSERT_TRUE(ws_.ok()) << ws_.error();
    ref_ = ws_.MakeDir("ref");
    // The mount point sits one level deeper than the NAS directories, so a
    // relative symlink resolves to different places for the kernel (from the
    // mount) and for a daemon that wrongly follows it on the NAS.
    mnt_ = ws_.MakeDir("m/mnt");
    mount_ = std::make_unique<MountedNasfs>(ws_, MountAt(mnt_));
    ASSERT_TRUE(mount_->mounted()) << mount_->error();
  }
  void TearDown() override { mount_.reset(); }

  std::string M(const std::string& rel) const { return mnt_ + "/" + rel; }
  std::string Master(const std::string& rel) const { return ws_.master() + "/" + rel; }
  std::string Backup(const std::string& rel) const { return ws_.backup() + "/" + rel; }

  // The same scenario on the reference and through the mount; the logs must
  // match and the NAS must agree with each other and with the reference.
  void RunBoth(const std::function<void(Ops&)>& scenario) {
    Ops ref(ref_, "native");
    {
      SCOPED_TRACE("on the native reference directory");
      scenario(ref);
    }
    Ops mnt(mnt_, "nasfs");
    {
      SCOPED_TRACE("through the nasfs mount");
      scenario(mnt);
    }
    EXPECT_EQ(ref.log(), mnt.log()) << "nasfs differs from the native filesystem:\n"
                                    << LogDiff(ref.log(), mnt.log()) << "full native log:\n"
                                    << JoinLog(ref.log());
    ExpectNasConsistent();
  }

  // The same scenario, run by an unprivileged child (uid/gid 65534) on each side.
  // Returns {native log, nasfs log}.
  std::pair<std::vector<std::string>, std::vector<std::string>> RunBothAsNobody(
      const std::function<void(Ops&)>& scenario) {
    auto run = [&](const std::string& root) {
      auto out = RunInChild(
          [&] {
            Ops o(root, "child");
            scenario(o);
            return JoinLog(o.log());
          },
          Within(20s, kNobody));
      return out ? SplitLog(*out) : std::vector<std::string>{"(the child failed or timed out)"};
    };
    auto ref_log = run(ref_);
    auto mnt_log = run(mnt_);
    EXPECT_EQ(ref_log, mnt_log) << "nasfs differs from the native filesystem for uid 65534:\n"
                                << LogDiff(ref_log, mnt_log);
    return {ref_log, mnt_log};
  }

  void ExpectNasConsistent() {
    EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
    EXPECT_NO_TREE_DIFFS(CompareWithReference(ws_.master(), ref_));
  }

  Workspace ws_;
  std::string ref_;
  std::string mnt_;
  std::unique_ptr<MountedNasfs> mount_;
};

// ---- create / open ----------------------------------------------------------

TEST_F(PosixTest, CreateWithExclOnAnExistingNameFailsWithEexist) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_EXCL | O_WRONLY, 0640);
    EXPECT_GE(fd, 0);
    o.Write(fd, "hello");
    o.Close(fd);
    EXPECT_EQ(o.Open("f", O_CREAT | O_EXCL | O_WRONLY, 0644), -EEXIST);
    // O_CREAT alone opens the existing file: mode and content unchanged.
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0600));
    o.Stat("f");
    o.ReadAll("f");
    o.Mkdir("d");
    EXPECT_EQ(o.Open("d", O_CREAT | O_EXCL | O_WRONLY, 0644), -EEXIST);
    o.Symlink("target", "dangling");
    EXPECT_EQ(o.Open("dangling", O_CREAT | O_EXCL | O_WRONLY, 0644), -EEXIST);
    // Without O_EXCL a dangling symlink creates its target.
    o.Close(o.Open("dangling", O_CREAT | O_WRONLY, 0644));
    o.Lstat("target");
  });
}

TEST_F(PosixTest, OpenWithTruncEmptiesAnExistingFile) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "0123456789");
    o.Close(fd);
    fd = o.Open("f", O_WRONLY | O_TRUNC);
    o.Fstat(fd);
    o.Write(fd, "ab");
    o.Close(fd);
    o.Stat("f");
    o.ReadAll("f");
    o.Close(o.Open("f", O_CREAT | O_TRUNC | O_RDWR, 0600));
    o.Stat("f");
  });
}

TEST_F(PosixTest, OpeningAMissingOrMistypedPathFailsLikeNative) {
  RunBoth([](Ops& o) {
    EXPECT_EQ(o.Open("missing", O_RDONLY), -ENOENT);
    EXPECT_EQ(o.Open("missing/x", O_CREAT | O_WRONLY, 0644), -ENOENT);
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Open("f/x", O_RDONLY), -ENOTDIR);
    EXPECT_EQ(o.Open("f", O_RDONLY | O_DIRECTORY), -ENOTDIR);
    o.Mkdir("d");
    EXPECT_EQ(o.Open("d", O_WRONLY), -EISDIR);
    o.Close(o.Open("d", O_RDONLY | O_DIRECTORY));
  });
}

// ---- read / write -----------------------------------------------------------

TEST_F(PosixTest, WritesAndPwritesAtOffsetsReadBackLikeNative) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_RDWR, 0644);
    o.Write(fd, "hello world");
    o.Pwrite(fd, "HELLO", 0);
    o.Pwrite(fd, "tail", 20);  // beyond EOF: a gap of zeros
    o.Lseek(fd, 6, SEEK_SET);
    o.Write(fd, "W");
    o.Lseek(fd, 0, SEEK_CUR);
    o.Lseek(fd, -2, SEEK_END);
    o.Read(fd, 10);
    o.Pread(fd, 100, 0);
    o.Pread(fd, 10, 5);
    o.Pread(fd, 10, 1000);  // past EOF: 0 bytes
    o.Fstat(fd);
    o.Pwrite(fd, std::string(70000, 'z'), 4090);  // across page boundaries
    o.DropCache(fd);
    o.Pread(fd, 70010, 4085);
    o.Close(fd);
    o.Stat("f");
    o.ReadAll("f");
  });
}

TEST_F(PosixTest, AppendModeWritesAlwaysGoToTheEnd) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_WRONLY | O_APPEND, 0644);
    o.Write(fd, "a");
    o.Pwrite(fd, "b", 0);  // Linux appends even for pwrite on O_APPEND
    o.Lseek(fd, 0, SEEK_SET);
    o.Write(fd, "c");
    int plain = o.Open("f", O_WRONLY);
    o.Write(plain, "Z");
    o.Pwrite(plain, "0123456789", 2);
    o.Write(fd, "d");  // appends after what the other fd made the end
    o.Fstat(fd);
    o.Close(plain);
    o.Close(fd);
    o.ReadAll("f");
  });
}

TEST_F(PosixTest, SparseWritesLeaveHolesThatReadAsZeros) {
  RunBoth([](Ops& o) {
    int fd = o.Open("sparse", O_CREAT | O_RDWR, 0644);
    o.Pwrite(fd, "x", (1 << 20) + 3);
    o.Pwrite(fd, "y", 10 << 20);
    o.Fstat(fd);
    o.DropCache(fd);
    o.Pread(fd, 4096, 4096);
    o.Pread(fd, 8, (1 << 20));
    o.Close(fd);
    o.ReadAll("sparse");
  });
  // The holes stay holes on both NAS: a daemon writing zeros would fill them.
  for (const auto& nas : {Master("sparse"), Backup("sparse")}) {
    struct stat st {};
    ASSERT_EQ(lstat(nas.c_str(), &st), 0) << nas;
    EXPECT_LT(st.st_blocks * 512, 1 << 20) << nas << " has " << st.st_blocks << " blocks for "
                                           << st.st_size << " bytes: holes were filled";
  }
}

TEST_F(PosixTest, TruncateAndFtruncateGrowAndShrinkLikeNative) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, std::string(100, 'a'));
    o.Close(fd);
    o.Truncate("f", 10);
    o.Stat("f");
    o.ReadAll("f");
    o.Truncate("f", 5000);
    o.Stat("f");
    o.ReadAll("f");
    fd = o.Open("f", O_RDWR);
    o.Ftruncate(fd, 3);
    o.Fstat(fd);
    o.Ftruncate(fd, 70000);
    o.Fstat(fd);
    o.Write(fd, "head");
    o.DropCache(fd);
    o.Pread(fd, 16, 69990);
    o.Close(fd);
    o.ReadAll("f");
    EXPECT_EQ(o.Truncate("missing", 1), -ENOENT);
    o.Mkdir("d");
    EXPECT_EQ(o.Truncate("d", 1), -EISDIR);
    EXPECT_EQ(o.Truncate("f", -1), -EINVAL);
  });
}

TEST_F(PosixTest, FallocateExtendsTheFileOrKeepsItsSize) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_RDWR, 0644);
    o.Write(fd, "abc");
    EXPECT_EQ(o.Fallocate(fd, 0, 0, 65536), 0);
    o.Fstat(fd);
    EXPECT_EQ(o.Fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20), 0);
    o.Fstat(fd);
    o.DropCache(fd);
    o.Pread(fd, 16, 0);
    o.Close(fd);
    o.ReadAll("f");
  });
  for (const auto& nas : {Master("f"), Backup("f")}) {
    struct stat st {};
    ASSERT_EQ(lstat(nas.c_str(), &st), 0) << nas;
    EXPECT_GE(st.st_blocks * 512, 1 << 20) << nas << ": the KEEP_SIZE allocation did not reach this NAS";
  }
}

TEST_F(PosixTest, FsyncAndFdatasyncSucceed) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_RDWR, 0644);
    o.Write(fd, "durable");
    EXPECT_EQ(o.Fsync(fd), 0);
    o.Pwrite(fd, "D", 0);
    EXPECT_EQ(o.Fdatasync(fd), 0);
    o.Close(fd);
    o.Mkdir("d");
    int dfd = o.Open("d", O_RDONLY | O_DIRECTORY);
    EXPECT_EQ(o.Fsync(dfd), 0);
    o.Close(dfd);
    o.ReadAll("f");
  });
}

TEST_F(PosixTest, AnEightMibRandomFileWrittenInOddChunksReadsBackEqual) {
  const uint64_t seed = TestSeed();
  std::printf("seed=%llu (NASFS_E2E_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  RecordProperty("seed", std::to_string(seed));
  std::mt19937_64 rng(seed);
  const std::string data = RandomBytes(rng, 8 << 20);
  std::vector<size_t> chunks;
  for (size_t off = 0; off < data.size();) {
    size_t n = std::min<size_t>(data.size() - off, 1 + rng() % 300000);
    chunks.push_back(n);
    off += n;
  }
  RunBoth([&](Ops& o) {
    int fd = o.Open("big", O_CREAT | O_WRONLY, 0644);
    size_t off = 0;
    for (size_t n : chunks) {
      ssize_t w = ::write(fd, data.data() + off, n);  // not logged one by one
      if (w != static_cast<ssize_t>(n)) {
        ADD_FAILURE() << o.name() << ": write of " << n << " at " << off << " returned " << w << ": "
                      << std::strerror(errno);
        break;
      }
      off += n;
    }
    o.Fsync(fd);
    o.Close(fd);
    fd = o.Open("big", O_RDONLY);
    o.DropCache(fd);
    o.Close(fd);
    std::string back = o.ReadAll("big");
    EXPECT_TRUE(back == data) << o.name() << ": read back " << back.size() << " bytes differing from what was written";
  });
  const uint64_t want = XXH3_64bits(data.data(), data.size());
  EXPECT_EQ(HashFile(Master("big")), want) << "master";
  EXPECT_EQ(HashFile(Backup("big")), want) << "backup";
}

TEST_F(PosixTest, AWriteThroughASharedMappingReachesBothNasAfterMsync) {
  RunBoth([](Ops& o) {
    int fd = o.Open("mapped", O_CREAT | O_RDWR, 0644);
    o.Ftruncate(fd, 8192);
    void* p = mmap(nullptr, 8192, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    o.Note(p == MAP_FAILED ? "mmap = " + ErrName(errno) : "mmap = ok");
    if (p != MAP_FAILED) {
      std::memcpy(static_cast<char*>(p) + 4090, "across the page boundary", 24);
      o.Note(msync(p, 8192, MS_SYNC) == 0 ? "msync = 0" : "msync = " + ErrName(errno));
      munmap(p, 8192);
    }
    o.Close(fd);
    fd = o.Open("mapped", O_RDONLY);
    o.DropCache(fd);
    o.Pread(fd, 40, 4080);
    o.Close(fd);
  });
}

TEST_F(PosixTest, NamesWithSpacesUnicodeAndTheMaximumLengthWorkLikeNative) {
  RunBoth([](Ops& o) {
    const std::vector<std::string> names = {"with space", "ünïcödé-文字",
                                            "new\nline", "-dash", "a'quote\"", "back\\slash", "%41%2F",
                                            std::string(255, 'n')};
    for (const auto& n : names) {
      int fd = o.Open(n, O_CREAT | O_WRONLY, 0644);
      o.Write(fd, n);
      o.Close(fd);
    }
    EXPECT_EQ(o.Open(std::string(256, 'n'), O_CREAT | O_WRONLY, 0644), -ENAMETOOLONG);
    EXPECT_EQ(o.Mkdir(std::string(256, 'd')), -ENAMETOOLONG);
    o.Mkdir(std::string(255, 'd'));
    o.Readdir("");
    o.Rename(std::string(255, 'n'), std::string(255, 'd') + "/" + std::string(255, 'm'));
    o.ReadAll(std::string(255, 'd') + "/" + std::string(255, 'm'));
    o.ReadAll("new\nline");
    o.Readdir(std::string(255, 'd'));
  });
}

// ---- unlink / open files ----------------------------------------------------

TEST_F(PosixTest, UnlinkRemovesTheNameAndAMissingNameGivesEnoent) {
  RunBoth([](Ops& o) {
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Unlink("f"), 0);
    EXPECT_EQ(o.Stat("f"), -ENOENT);
    EXPECT_EQ(o.Unlink("f"), -ENOENT);
    EXPECT_EQ(o.Unlink("missing/f"), -ENOENT);
    o.Mkdir("d");
    EXPECT_EQ(o.Unlink("d"), -EISDIR);
    o.Symlink("d", "l");
    EXPECT_EQ(o.Unlink("l"), 0);  // removes the link, not its target
    o.Stat("d");
    o.Readdir("");
  });
}

TEST_F(PosixTest, AnOpenFileStaysReadableAfterItIsUnlinked) {
  RunBoth([](Ops& o) {
    int fd = o.Open("f", O_CREAT | O_RDWR, 0644);
    o.Write(fd, "still here after unlink");
    o.Unlink("f");
    o.DropCache(fd);
    o.Pread(fd, 100, 0);
    o.Fstat(fd);
    o.Close(fd);
    o.Readdir("");
  });
}

TEST_F(PosixTest, AnOpenFileReplacedByRenameKeepsItsOwnContent) {
  RunBoth([](Ops& o) {
    int fd = o.Open("old", O_CREAT | O_RDWR, 0644);
    o.Write(fd, "old content");
    int nfd = o.Open("new", O_CREAT | O_WRONLY, 0644);
    o.Write(nfd, "the replacement");
    o.Close(nfd);
    o.Rename("new", "old");
    o.DropCache(fd);
    o.Pread(fd, 100, 0);  // the open file, not whatever "old" names now
    o.Close(fd);
    o.ReadAll("old");
  });
}

TEST_F(PosixTest, AnOpenFileStaysReadableAfterItIsRenamed) {
  RunBoth([](Ops& o) {
    o.Mkdir("a");
    o.Mkdir("b");
    int fd = o.Open("a/f", O_CREAT | O_RDWR, 0644);
    o.Write(fd, "follows its file");
    o.Rename("a/f", "b/g");
    o.DropCache(fd);
    o.Pread(fd, 100, 0);
    o.Pwrite(fd, "F", 0);
    o.Close(fd);
    o.ReadAll("b/g");
  });
}

// ---- directories ------------------------------------------------------------

TEST_F(PosixTest, MkdirAndRmdirReportEexistEnoentAndEnotempty) {
  RunBoth([](Ops& o) {
    EXPECT_EQ(o.Mkdir("d", 0750), 0);
    o.Stat("d");
    EXPECT_EQ(o.Mkdir("d"), -EEXIST);
    EXPECT_EQ(o.Mkdir("missing/x"), -ENOENT);
    EXPECT_EQ(o.Rmdir("missing"), -ENOENT);
    o.Mkdir("d/sub", 0700);
    EXPECT_EQ(o.Rmdir("d"), -ENOTEMPTY);
    o.Close(o.Open("d/sub/f", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Rmdir("d/sub"), -ENOTEMPTY);
    EXPECT_EQ(o.Rmdir("d/sub/f"), -ENOTDIR);
    EXPECT_EQ(o.Mkdir("d/sub/f"), -EEXIST);
    EXPECT_EQ(o.Rmdir("d/."), -EINVAL);
    o.Unlink("d/sub/f");
    EXPECT_EQ(o.Rmdir("d/sub"), 0);
    o.Stat("d");
    EXPECT_EQ(o.Rmdir("d"), 0);
    EXPECT_EQ(o.Stat("d"), -ENOENT);
    o.Readdir("");
  });
}

TEST_F(PosixTest, ReaddirListsTheSameNamesAndTypesAsNative) {
  RunBoth([](Ops& o) {
    o.Mkdir("big");
    for (int i = 0; i < 300; ++i) {
      o.Close(o.Open(fmt::format("big/file-with-a-longish-name-{:04d}", i), O_CREAT | O_WRONLY, 0644));
    }
    for (int i = 0; i < 20; ++i) o.Mkdir(fmt::format("big/dir{:02d}", i));
    for (int i = 0; i < 10; ++i) o.Symlink("file-with-a-longish-name-0000", fmt::format("big/link{}", i));
    o.Mkdir("empty");
    o.Readdir("");
    o.Readdir("big");
    o.Readdir("empty");
    for (int i = 0; i < 300; i += 3) o.Unlink(fmt::format("big/file-with-a-longish-name-{:04d}", i));
    o.Readdir("big");
  });
}

TEST_F(PosixTest, ReaddirReturnsDotAndDotDotLikeNative) {
  RunBoth([](Ops& o) {
    o.Mkdir("d");
    o.Close(o.Open("d/f", O_CREAT | O_WRONLY, 0644));
    o.Readdir("d", /*dots=*/true);
    o.Readdir("", /*dots=*/true);
  });
}

// ---- rename -----------------------------------------------------------------

TEST_F(PosixTest, RenameOfAFileOverAFileReplacesIt) {
  RunBoth([](Ops& o) {
    int fd = o.Open("a", O_CREAT | O_WRONLY, 0600);
    o.Write(fd, "content of a");
    o.Close(fd);
    fd = o.Open("b", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "b");
    o.Close(fd);
    EXPECT_EQ(o.Rename("a", "b"), 0);
    EXPECT_EQ(o.Stat("a"), -ENOENT);
    o.Stat("b");
    o.ReadAll("b");
    o.Mkdir("d");
    EXPECT_EQ(o.Rename("b", "d/c"), 0);
    o.ReadAll("d/c");
    EXPECT_EQ(o.Rename("d/c", "d/c"), 0);  // onto itself: nothing happens
    EXPECT_EQ(o.Rename("missing", "x"), -ENOENT);
    o.Readdir("");
    o.Readdir("d");
  });
}

TEST_F(PosixTest, RenameOfADirectoryOverAnEmptyDirectoryReplacesIt) {
  RunBoth([](Ops& o) {
    o.Mkdir("src");
    o.Mkdir("src/inner");
    int fd = o.Open("src/inner/f", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "moved along");
    o.Close(fd);
    o.Mkdir("dst", 0700);
    EXPECT_EQ(o.Rename("src", "dst"), 0);
    EXPECT_EQ(o.Stat("src"), -ENOENT);
    o.Stat("dst");
    o.Readdir("dst");
    o.ReadAll("dst/inner/f");
    o.Readdir("");
  });
}

TEST_F(PosixTest, RenameOfADirectoryOverANonEmptyDirectoryFailsWithEnotempty) {
  RunBoth([](Ops& o) {
    o.Mkdir("src");
    o.Mkdir("dst");
    o.Close(o.Open("dst/keep", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Rename("src", "dst"), -ENOTEMPTY);
    o.Close(o.Open("file", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Rename("file", "src"), -EISDIR);
    EXPECT_EQ(o.Rename("src", "file"), -ENOTDIR);
    EXPECT_EQ(o.Rename("src", "src/sub"), -EINVAL);
    o.Readdir("");
    o.Readdir("dst");
  });
}

TEST_F(PosixTest, RenameNoreplaceOntoAnExistingNameFailsWithEexist) {
  RunBoth([](Ops& o) {
    int fd = o.Open("a", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "a");
    o.Close(fd);
    fd = o.Open("b", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "b");
    o.Close(fd);
    EXPECT_EQ(o.Rename("a", "b", RENAME_NOREPLACE), -EEXIST);
    o.ReadAll("a");
    o.ReadAll("b");
    EXPECT_EQ(o.Rename("a", "c", RENAME_NOREPLACE), 0);
    o.Readdir("");
  });
}

TEST_F(PosixTest, RenameExchangeSwapsTwoNames) {
  RunBoth([](Ops& o) {
    int fd = o.Open("a", O_CREAT | O_WRONLY, 0600);
    o.Write(fd, "was a");
    o.Close(fd);
    fd = o.Open("b", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "was b");
    o.Close(fd);
    EXPECT_EQ(o.Rename("a", "b", RENAME_EXCHANGE), 0);
    o.ReadAll("a");
    o.ReadAll("b");
    o.Stat("a");
    o.Stat("b");
    o.Mkdir("d");
    o.Close(o.Open("d/inside", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Rename("a", "d", RENAME_EXCHANGE), 0);  // a file and a directory
    o.Stat("a");
    o.Readdir("a");
    o.ReadAll("d");
    EXPECT_EQ(o.Rename("b", "missing", RENAME_EXCHANGE), -ENOENT);
    o.Readdir("");
  });
}

// ---- links ------------------------------------------------------------------

TEST_F(PosixTest, SymlinkAndReadlinkRoundTrip) {
  RunBoth([](Ops& o) {
    EXPECT_EQ(o.Symlink("dir/file", "l"), 0);
    EXPECT_EQ(o.Readlink("l"), "dir/file");
    o.Lstat("l");
    EXPECT_EQ(o.Stat("l"), -ENOENT);  // dangling
    o.Mkdir("dir");
    int fd = o.Open("dir/file", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "through the link");
    o.Close(fd);
    o.Stat("l");
    o.ReadAll("l");
    EXPECT_EQ(o.Symlink("x", "l"), -EEXIST);
    EXPECT_EQ(o.Readlink("dir/file"), "");  // EINVAL: not a link
    const std::string long_target = std::string(1000, 'a') + "/" + std::string(1000, 'b');
    o.Symlink(long_target, "long");
    EXPECT_EQ(o.Readlink("long"), long_target);
    o.Symlink("/absolute/elsewhere", "abs");
    o.Readlink("abs");
    o.Readdir("");
  });
}

TEST_F(PosixTest, AHardLinkSharesContentAndCountsBothNames) {
  RunBoth([](Ops& o) {
    int fd = o.Open("a", O_CREAT | O_WRONLY, 0640);
    o.Write(fd, "shared");
    o.Close(fd);
    EXPECT_EQ(o.Link("a", "b"), 0);
    o.Stat("a");
    o.Stat("b");
    fd = o.Open("b", O_WRONLY | O_APPEND);
    o.Write(fd, " by both names");
    o.Close(fd);
    o.ReadAll("a");
    o.Chmod("b", 0604);
    o.Stat("a");
    EXPECT_EQ(o.Link("a", "b"), -EEXIST);
    EXPECT_EQ(o.Link("missing", "c"), -ENOENT);
    o.Mkdir("d");
    EXPECT_EQ(o.Link("d", "dlink"), -EPERM);
    o.Mkdir("sub");
    o.Link("a", "sub/c");
    o.Stat("a");
    o.Unlink("a");
    o.Stat("b");
    o.ReadAll("sub/c");
  });
  // On both NAS the two names are one inode.
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    struct stat b {}, c {};
    ASSERT_EQ(lstat((nas + "/b").c_str(), &b), 0) << nas;
    ASSERT_EQ(lstat((nas + "/sub/c").c_str(), &c), 0) << nas;
    EXPECT_EQ(b.st_ino, c.st_ino) << nas << ": b and sub/c are not one inode";
    EXPECT_EQ(b.st_nlink, 2u) << nas;
  }
}

// ---- attributes -------------------------------------------------------------

TEST_F(PosixTest, ChmodSetsPermissionBitsIncludingSetuidAndSetgid) {
  RunBoth([](Ops& o) {
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0644));
    o.Mkdir("d");
    for (mode_t m : {04755, 02755, 06711, 0000, 0600, 04000, 0777}) {
      EXPECT_EQ(o.Chmod("f", m), 0);
      o.Stat("f");
    }
    for (mode_t m : {01777, 02775, 0700}) {
      EXPECT_EQ(o.Chmod("d", m), 0);
      o.Stat("d");
    }
    int fd = o.Open("f", O_RDONLY);
    o.Fchmod(fd, 02740);
    o.Fstat(fd);
    o.Close(fd);
    EXPECT_EQ(o.Chmod("missing", 0644), -ENOENT);
  });
}

TEST_F(PosixTest, ChownAsRootChangesOwnerAndGroup) {
  RunBoth([](Ops& o) {
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Chown("f", 1234, 5678), 0);
    o.Stat("f");
    EXPECT_EQ(o.Chown("f", static_cast<uid_t>(-1), 42), 0);
    o.Stat("f");
    o.Mkdir("d");
    o.Chown("d", 65534, 65534);
    o.Stat("d");
    o.Symlink("f", "l");
    EXPECT_EQ(o.Lchown("l", 77, 88), 0);
    o.Lstat("l");
    o.Stat("f");
    // A chown clears setuid/setgid on an executable, for root too.
    o.Close(o.Open("suid", O_CREAT | O_WRONLY, 0644));
    o.Chmod("suid", 06755);
    o.Chown("suid", 1000, 1000);
    o.Stat("suid");
  });
}

TEST_F(PosixTest, UtimensatSetsExplicitTimesToTheNanosecond) {
  RunBoth([](Ops& o) {
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.Utimens("f", Ts(1000000000, 123456789), Ts(1234567890, 987654321)), 0);
    o.Stat("f", kWantMtime);
    o.Mkdir("d");
    o.Utimens("d", Ts(1500000000, 1), Ts(1600000000, 999999999));
    o.Stat("d", kWantMtime);
    o.Symlink("f", "l");
    EXPECT_EQ(o.Utimens("l", Ts(1, 2), Ts(3, 4), AT_SYMLINK_NOFOLLOW), 0);
    o.Lstat("l", kWantMtime);
    o.Stat("f", kWantMtime);
    int fd = o.Open("f", O_WRONLY);
    o.Futimens(fd, Ts(2000000000, 5), Ts(2000000001, 6));
    o.Fstat(fd, kWantMtime);
    o.Close(fd);
    o.Stat("f", kWantMtime);
  });
  // With explicit times the reference's mtimes are comparable too.
  EXPECT_NO_TREE_DIFFS(CompareSnapshots(SnapshotTree(ws_.master()), SnapshotTree(ref_, false), "master", "native",
                                        CompareOptions::All()));
}

TEST_F(PosixTest, UtimeOmitLeavesTheMtimeUnchanged) {
  RunBoth([](Ops& o) {
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0644));
    o.Utimens("f", Ts(1000000000, 1), Ts(1100000000, 2));
    o.Stat("f", kWantMtime);
    EXPECT_EQ(o.Utimens("f", Ts(1200000000, 3), Ts(0, UTIME_OMIT)), 0);
    o.Stat("f", kWantMtime);
    EXPECT_EQ(o.Utimens("f", Ts(0, UTIME_OMIT), Ts(0, UTIME_OMIT)), 0);
    o.Stat("f", kWantMtime);
  });
}

TEST_F(PosixTest, UtimeNowSetsTheCurrentTimeAndTheSameOnBothNas) {
  ASSERT_TRUE(WriteFile(M("f"), "x"));
  timespec old[2] = {Ts(1000000000, 0), Ts(1000000000, 0)};
  ASSERT_EQ(utimensat(AT_FDCWD, M("f").c_str(), old, 0), 0) << std::strerror(errno);
  // Kernel timestamps come from a coarse clock that may trail CLOCK_REALTIME by a tick.
  const timespec before = TsMinusMs(RealNow(), 20);
  timespec now[2] = {Ts(0, UTIME_NOW), Ts(0, UTIME_NOW)};
  ASSERT_EQ(utimensat(AT_FDCWD, M("f").c_str(), now, 0), 0) << std::strerror(errno);
  const timespec after = RealNow();
  const timespec on_master = MtimeOf(Master("f"));
  const timespec on_backup = MtimeOf(Backup("f"));
  EXPECT_TRUE(SameTime(on_master, on_backup))
      << "master " << FormatTimespec(on_master) << " backup " << FormatTimespec(on_backup);
  EXPECT_FALSE(TsLess(on_master, before)) << FormatTimespec(on_master) << " < " << FormatTimespec(before);
  EXPECT_FALSE(TsLess(after, on_master)) << FormatTimespec(on_master) << " > " << FormatTimespec(after);
  struct stat st {};
  ASSERT_EQ(stat(M("f").c_str(), &st), 0);
  EXPECT_TRUE(SameTime(st.st_mtim, on_master))
      << "mount " << FormatTimespec(st.st_mtim) << " master " << FormatTimespec(on_master);
}

TEST_F(PosixTest, StatfsReportsTheMasterVolume) {
  ASSERT_TRUE(WriteFile(M("f"), "x"));
  struct statfs via_mount {}, via_file {}, master {};
  ASSERT_EQ(statfs(mnt_.c_str(), &via_mount), 0) << std::strerror(errno);
  ASSERT_EQ(statfs(M("f").c_str(), &via_file), 0) << std::strerror(errno);
  ASSERT_EQ(statfs(ws_.master().c_str(), &master), 0);
  EXPECT_GT(via_mount.f_bsize, 0);
  EXPECT_GT(via_mount.f_blocks, 0u);
  EXPECT_GE(via_mount.f_namelen, 255);
  EXPECT_EQ(via_mount.f_blocks * via_mount.f_bsize, master.f_blocks * master.f_bsize);
  EXPECT_EQ(via_file.f_blocks, via_mount.f_blocks);
}

TEST_F(PosixTest, UserXattrsRoundTripAndAMissingOneGivesEnodata) {
  RunBoth([](Ops& o) {
    o.Close(o.Open("f", O_CREAT | O_WRONLY, 0644));
    EXPECT_EQ(o.SetXattr("f", "user.a", "1"), 0);
    EXPECT_EQ(o.GetXattr("f", "user.a"), "1");
    EXPECT_EQ(o.SetXattr("f", "user.a", "2", XATTR_CREATE), -EEXIST);
    EXPECT_EQ(o.SetXattr("f", "user.b", "2", XATTR_REPLACE), -ENODATA);
    EXPECT_EQ(o.SetXattr("f", "user.a", "replaced", XATTR_REPLACE), 0);
    o.SetXattr("f", "user.empty", "");
    o.GetXattr("f", "user.empty");
    o.SetXattr("f", "user.big", std::string(2000, 'v'));
    o.GetXattr("f", "user.big", 0);     // the length
    o.GetXattr("f", "user.big", 10);    // ERANGE
    o.ListXattr("f");
    EXPECT_EQ(o.RemoveXattr("f", "user.a"), 0);
    o.GetXattr("f", "user.a");          // ENODATA
    EXPECT_EQ(o.RemoveXattr("f", "user.a"), -ENODATA);
    o.GetXattr("f", "user.never");      // ENODATA
    o.ListXattr("f");
    o.Mkdir("d");
    o.SetXattr("d", "user.on_dir", "yes");
    o.GetXattr("d", "user.on_dir");
    o.SetXattr("f", "bogusns.x", "1");  // EOPNOTSUPP
    o.GetXattr("missing", "user.a");    // ENOENT
  });
}

// ---- permissions ------------------------------------------------------------

TEST_F(PosixTest, ANonRootCallerGetsEaccesOnARootOnlyFile) {
  RunBoth([](Ops& o) {
    int fd = o.Open("secret", O_CREAT | O_WRONLY, 0600);
    o.Write(fd, "root only");
    o.Close(fd);
    o.Mkdir("private", 0700);
    o.Close(o.Open("private/f", O_CREAT | O_WRONLY, 0644));
  });
  auto [ref_log, mnt_log] = RunBothAsNobody([](Ops& o) {
    o.Open("secret", O_RDONLY);
    o.Open("secret", O_WRONLY);
    o.Truncate("secret", 0);
    o.Open("private/f", O_RDONLY);
    o.Stat("private/f");
    o.Readdir("private");
    o.Unlink("secret");
    o.Mkdir("mine");
    o.Open("new", O_CREAT | O_WRONLY, 0644);
    o.Chmod("secret", 0666);
    o.Chown("secret", 65534, 65534);
    o.Utimens("secret", Ts(1, 1), Ts(1, 1));
    o.Utimens("secret", Ts(0, UTIME_NOW), Ts(0, UTIME_NOW));
    o.SetXattr("secret", "user.x", "1");
    o.Stat("secret");  // stat needs no permission on the file itself
  });
  EXPECT_TRUE(LogHas(mnt_log, "open(secret, O_RDONLY, 0644) = EACCES")) << JoinLog(mnt_log);
  EXPECT_TRUE(LogHas(mnt_log, "open(private/f, O_RDONLY, 0644) = EACCES")) << JoinLog(mnt_log);
  ExpectNasConsistent();
  EXPECT_EQ(ReadFile(Master("secret")).value_or("?"), "root only");
}

TEST_F(PosixTest, AFileCreatedByANonRootCallerIsOwnedByThemOnBothNas) {
  RunBoth([](Ops& o) {
    o.Mkdir("pub");
    o.Chmod("pub", 0777);
    o.Mkdir("sgid");
    o.Chown("sgid", 0, 42);
    o.Chmod("sgid", 02777);
  });
  auto [ref_log, mnt_log] = RunBothAsNobody([](Ops& o) {
    int fd = o.Open("pub/mine", O_CREAT | O_WRONLY, 0640);
    o.Write(fd, "by nobody");
    o.Close(fd);
    o.Stat("pub/mine");
    o.Mkdir("pub/mydir", 0750);
    o.Stat("pub/mydir");
    o.Symlink("mine", "pub/mylink");
    o.Lstat("pub/mylink");
    o.Close(o.Open("sgid/inherits", O_CREAT | O_WRONLY, 0644));
    o.Stat("sgid/inherits");  // the directory's group, not the caller's
    o.Mkdir("sgid/subdir");
    o.Stat("sgid/subdir");    // and the setgid bit
    o.Rename("pub/mine", "pub/renamed");
    o.Chmod("pub/renamed", 0604);
    o.Stat("pub/renamed");
  });
  (void)ref_log;
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    for (const char* rel : {"pub/renamed", "pub/mydir", "pub/mylink"}) {
      struct stat st {};
      ASSERT_EQ(lstat((nas + "/" + rel).c_str(), &st), 0) << nas << "/" << rel;
      EXPECT_EQ(st.st_uid, 65534u) << nas << "/" << rel;
      EXPECT_EQ(st.st_gid, 65534u) << nas << "/" << rel;
    }
    struct stat st {};
    ASSERT_EQ(lstat((nas + "/sgid/inherits").c_str(), &st), 0);
    EXPECT_EQ(st.st_uid, 65534u) << nas << "/sgid/inherits";
    EXPECT_EQ(st.st_gid, 42u) << nas << "/sgid/inherits";
  }
  ExpectNasConsistent();
}

// ---- .nasfs -----------------------------------------------------------------

TEST_F(PosixTest, TheNasfsDirectoryIsInvisibleThroughTheMount) {
  ASSERT_EQ(access((ws_.master() + "/.nasfs/identity.json").c_str(), F_OK), 0)
      << "no identity marker on the master";
  struct stat st {};
  EXPECT_EQ(lstat(M(".nasfs").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(stat(M(".nasfs/identity.json").c_str(), &st), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(open(M(".nasfs/identity.json").c_str(), O_RDONLY), -1);
  EXPECT_EQ(errno, ENOENT);
  EXPECT_EQ(opendir(M(".nasfs").c_str()), nullptr);
  EXPECT_EQ(errno, ENOENT);
  Ops o(mnt_, "nasfs");
  for (int i = 0; i < 200; ++i) o.Close(o.Open(fmt::format("f{:03d}", i), O_CREAT | O_WRONLY, 0644));
  auto entries = o.Readdir("", /*dots=*/true);
  for (const auto& e : entries) EXPECT_NE(e.rfind(".nasfs:", 0), 0u) << "readdir of the root shows " << e;
  EXPECT_EQ(getxattr(M(".nasfs").c_str(), "user.x", nullptr, 0), -1);
  EXPECT_EQ(errno, ENOENT);
}

TEST_F(PosixTest, CreatingOrRenamingOntoNasfsIsRefusedWithEperm) {
  const auto master_marker = ReadFile(ws_.master() + "/.nasfs/identity.json");
  const auto backup_marker = ReadFile(ws_.backup() + "/.nasfs/identity.json");
  ASSERT_TRUE(master_marker && backup_marker) << "no identity markers";
  ASSERT_TRUE(WriteFile(M("f"), "user data"));
  ASSERT_EQ(mkdir(M("d").c_str(), 0755), 0);
  auto expect_eperm = [](int r, const char* what) {
    int e = errno;
    EXPECT_EQ(r, -1) << what << " succeeded";
    EXPECT_EQ(e, EPERM) << what << ": " << ErrName(e);
  };
  expect_eperm(mkdir(M(".nasfs").c_str(), 0755), "mkdir .nasfs");
  expect_eperm(open(M(".nasfs").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644), "create .nasfs");
  expect_eperm(symlink("f", M(".nasfs").c_str()), "symlink .nasfs");
  expect_eperm(link(M("f").c_str(), M(".nasfs").c_str()), "link f .nasfs");
  expect_eperm(rename(M("f").c_str(), M(".nasfs").c_str()), "rename f .nasfs");
  expect_eperm(rename(M("d").c_str(), M(".nasfs").c_str()), "rename d .nasfs");
  expect_eperm(mknod(M(".nasfs").c_str(), S_IFIFO | 0644, 0), "mknod .nasfs");
  // The existing .nasfs cannot be reached to be moved or removed either.
  auto expect_enoent = [](int r, const char* what) {
    int e = errno;
    EXPECT_EQ(r, -1) << what << " succeeded";
    EXPECT_EQ(e, ENOENT) << what << ": " << ErrName(e);
  };
  expect_enoent(rename(M(".nasfs").c_str(), M("stolen").c_str()), "rename .nasfs away");
  expect_enoent(rmdir(M(".nasfs").c_str()), "rmdir .nasfs");
  expect_enoent(unlink(M(".nasfs/identity.json").c_str()), "unlink .nasfs/identity.json");
  expect_enoent(chmod(M(".nasfs").c_str(), 0777), "chmod .nasfs");
  EXPECT_EQ(ReadFile(ws_.master() + "/.nasfs/identity.json"), master_marker);
  EXPECT_EQ(ReadFile(ws_.backup() + "/.nasfs/identity.json"), backup_marker);
  EXPECT_EQ(ReadFile(Master("f")).value_or("?"), "user data");
  EXPECT_EQ(ReadFile(Backup("f")).value_or("?"), "user data");
  struct stat st {};
  EXPECT_EQ(lstat(Master("d").c_str(), &st), 0);
  EXPECT_EQ(lstat(Backup("d").c_str(), &st), 0);
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

TEST_F(PosixTest, ANasfsNameBelowTheRootIsAnOrdinaryName) {
  RunBoth([](Ops& o) {
    o.Mkdir("sub");
    EXPECT_EQ(o.Mkdir("sub/.nasfs"), 0);
    int fd = o.Open("sub/.nasfs/f", O_CREAT | O_WRONLY, 0644);
    o.Write(fd, "just a name");
    o.Close(fd);
    o.Readdir("sub");
    o.ReadAll("sub/.nasfs/f");
  });
}

// ---- confinement ------------------------------------------------------------

TEST_F(PosixTest, ASymlinkOnTheNasPointingOutsideIsResolvedByTheKernelNotTheDaemon) {
  // As a sync from another tool would leave them: the same links on both NAS.
  const std::string backend_side = ws_.MakeDir("outside");  // where NAS/up leads
  const std::string kernel_side = ws_.MakeDir("m/outside");  // where mnt/up leads
  for (const auto& nas : {ws_.master(), ws_.backup()}) {
    ASSERT_EQ(symlink("/etc", (nas + "/escape").c_str()), 0);
    ASSERT_EQ(symlink("../outside", (nas + "/up").c_str()), 0);
    // Same mtimes on both, as a copy that preserves metadata leaves them.
    const timespec t[2] = {Ts(1500000000, 7), Ts(1500000000, 7)};
    for (const char* name : {"/escape", "/up"}) {
      ASSERT_EQ(utimensat(AT_FDCWD, (nas + name).c_str(), t, AT_SYMLINK_NOFOLLOW), 0);
    }
  }
  char target[64] = {};
  ASSERT_EQ(readlink(M("escape").c_str(), target, sizeof target - 1), 4) << std::strerror(errno);
  EXPECT_STREQ(target, "/etc");
  // Following it is the kernel's business and reads the local /etc.
  EXPECT_EQ(ReadFile(M("escape/passwd")), ReadFile("/etc/passwd"));

  // Through the mount the kernel resolves up -> m/outside; whatever it does,
  // the daemon must never act on <ws>/outside.
  const int fd = open(M("up/newfile").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  if (fd >= 0) close(fd);
  (void)mkdir(M("up/newdir").c_str(), 0755);
  EXPECT_EQ(Ops(backend_side, "x").Readdir(""), std::vector<std::string>{})
      << "something appeared in " << backend_side << ", outside the NAS";
  std::printf("kernel-side directory now holds %zu entries\n", Ops(kernel_side, "x").Readdir("").size());
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

// The attack the kernel cannot see: a directory that nasfs knows (the kernel
// holds it open) is replaced on the NAS itself by a symlink leading out.
// Operations on the held directory reach the daemon by inode; the daemon must
// not follow the planted link.
TEST_F(PosixTest, ADirectoryReplacedByASymlinkOnTheNasCannotBeUsedToWriteOutside) {
  const std::string out_abs = ws_.MakeDir("outside_abs");
  const std::string out_rel = ws_.MakeDir("outside_rel");
  const timespec pinned[2] = {Ts(1111111111, 0), Ts(1111111111, 0)};
  for (const auto& out : {out_abs, out_rel}) ASSERT_EQ(utimensat(AT_FDCWD, out.c_str(), pinned, 0), 0);

  struct Case {
    std::string name;
    std::string link_target;
    std::string outside;
  };
  const std::vector<Case> cases = {{"dabs", out_abs, out_abs}, {"drel", "../outside_rel", out_rel}};
  std::vector<int> dirfds;
  for (const auto& c : cases) {
    ASSERT_EQ(mkdir(M(c.name).c_str(), 0755), 0) << std::strerror(errno);
    int dfd = open(M(c.name).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    ASSERT_GE(dfd, 0) << std::strerror(errno);
    dirfds.push_back(dfd);
    struct stat st {};
    ASSERT_EQ(fstat(dfd, &st), 0);
  }
  // Swap on both NAS behind nasfs's back.
  for (const auto& c : cases) {
    for (const auto& nas : {ws_.master(), ws_.backup()}) {
      const std::string p = nas + "/" + c.name;
      ASSERT_EQ(rename(p.c_str(), (p + ".moved").c_str()), 0);
      ASSERT_EQ(symlink(c.link_target.c_str(), p.c_str()), 0);
    }
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const int dfd = dirfds[i];
    std::string results;
    int fd = openat(dfd, "newfile", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
    results += fmt::format("create={} ", fd >= 0 ? "ok" : ErrName(errno));
    if (fd >= 0) {
      results += fmt::format("write={} ", write(fd, "escaped", 7) >= 0 ? "ok" : ErrName(errno));
      close(fd);
    }
    results += fmt::format("mkdir={} ", mkdirat(dfd, "newdir", 0755) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("symlink={} ", symlinkat("x", dfd, "newlink") == 0 ? "ok" : ErrName(errno));
    results += fmt::format("mknod={} ", mknodat(dfd, "newfifo", S_IFIFO | 0644, 0) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fchmod={} ", fchmod(dfd, 0777) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fchown={} ", fchown(dfd, 1, 1) == 0 ? "ok" : ErrName(errno));
    const timespec t[2] = {Ts(2000000000, 0), Ts(2000000000, 0)};
    results += fmt::format("futimens={} ", futimens(dfd, t) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fsetxattr={} ", fsetxattr(dfd, "user.evil", "1", 1, 0) == 0 ? "ok" : ErrName(errno));
    std::printf("%s (-> %s): %s\n", cases[i].name.c_str(), cases[i].link_target.c_str(), results.c_str());

    const std::string& out = cases[i].outside;
    EXPECT_EQ(Ops(out, "outside").Readdir(""), std::vector<std::string>{})
        << "entries appeared in " << out << " (outside the NAS) through " << cases[i].name;
    struct stat st {};
    ASSERT_EQ(lstat(out.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0755u) << out << " mode changed through the planted link";
    EXPECT_EQ(st.st_uid, 0u) << out << " owner changed through the planted link";
    EXPECT_TRUE(SameTime(st.st_mtim, pinned[1])) << out << " mtime changed: " << FormatTimespec(st.st_mtim);
    EXPECT_EQ(getxattr(out.c_str(), "user.evil", nullptr, 0), -1) << out << " got an xattr";
    close(dfd);
  }
}

TEST_F(PosixTest, AFileReplacedByASymlinkOnTheNasCannotBeUsedToTouchAnOutsideFile) {
  const std::string out_abs = ws_.Path("outside_file");
  const std::string out_rel = ws_.Path("outside_file_rel");
  const timespec pinned[2] = {Ts(1111111111, 0), Ts(1111111111, 0)};
  for (const auto& out : {out_abs, out_rel}) {
    ASSERT_TRUE(WriteFile(out, "precious outside data"));
    ASSERT_EQ(utimensat(AT_FDCWD, out.c_str(), pinned, 0), 0);
  }
  struct Case {
    std::string name;
    std::string link_target;
    std::string outside;
  };
  const std::vector<Case> cases = {{"fabs", out_abs, out_abs}, {"frel", "../outside_file_rel", out_rel}};
  std::vector<int> fds;
  for (const auto& c : cases) {
    ASSERT_TRUE(WriteFile(M(c.name), "inside"));
    int fd = open(M(c.name).c_str(), O_RDWR | O_CLOEXEC);
    ASSERT_GE(fd, 0) << std::strerror(errno);
    fds.push_back(fd);
  }
  for (const auto& c : cases) {
    for (const auto& nas : {ws_.master(), ws_.backup()}) {
      const std::string p = nas + "/" + c.name;
      ASSERT_EQ(rename(p.c_str(), (p + ".moved").c_str()), 0);
      ASSERT_EQ(symlink(c.link_target.c_str(), p.c_str()), 0);
    }
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const int fd = fds[i];
    std::string results;
    (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    char buf[64] = {};
    ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
    results += fmt::format("read={} ", n >= 0 ? fmt::format("'{}'", std::string(buf, n)) : ErrName(errno));
    EXPECT_EQ(std::string(buf, n > 0 ? n : 0).find("precious"), std::string::npos)
        << "the outside file's content was read through " << cases[i].name;
    results += fmt::format("write={} ", pwrite(fd, "EVIL", 4, 0) >= 0 ? "ok" : ErrName(errno));
    results += fmt::format("ftruncate={} ", ftruncate(fd, 3) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fallocate={} ", fallocate(fd, 0, 0, 1 << 16) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fchmod={} ", fchmod(fd, 0777) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fchown={} ", fchown(fd, 1, 1) == 0 ? "ok" : ErrName(errno));
    const timespec t[2] = {Ts(2000000000, 0), Ts(2000000000, 0)};
    results += fmt::format("futimens={} ", futimens(fd, t) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fsetxattr={} ", fsetxattr(fd, "user.evil", "1", 1, 0) == 0 ? "ok" : ErrName(errno));
    results += fmt::format("fsync={} ", fsync(fd) == 0 ? "ok" : ErrName(errno));
    close(fd);
    std::printf("%s (-> %s): %s\n", cases[i].name.c_str(), cases[i].link_target.c_str(), results.c_str());

    const std::string& out = cases[i].outside;
    EXPECT_EQ(ReadFile(out).value_or("?"), "precious outside data") << out << " was modified through the planted link";
    struct stat st {};
    ASSERT_EQ(lstat(out.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, 0644u) << out << " mode changed";
    EXPECT_EQ(st.st_uid, 0u) << out << " owner changed";
    EXPECT_TRUE(SameTime(st.st_mtim, pinned[1])) << out << " mtime changed: " << FormatTimespec(st.st_mtim);
    EXPECT_EQ(getxattr(out.c_str(), "user.evil", nullptr, 0), -1) << out << " got an xattr";
  }
}

// ---- identical mtimes (nginx ETag / Last-Modified) --------------------------

TEST_F(PosixTest, MtimeAfterEachWriteIsIdenticalOnMasterAndBackupToTheNanosecond) {
  ASSERT_EQ(mkdir(M("site").c_str(), 0755), 0);
  const int fd = open(M("site/page.html").c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
  ASSERT_GE(fd, 0) << std::strerror(errno);
  EXPECT_TRUE(SameTime(MtimeOf(Master("site")), MtimeOf(Backup("site"))))
      << "parent mtime after create: master " << FormatTimespec(MtimeOf(Master("site"))) << " backup "
      << FormatTimespec(MtimeOf(Backup("site")));
  timespec last{0, 0};
  for (int i = 0; i < 15; ++i) {
    const std::string chunk = fmt::format("<p>revision {}</p>\n", i);
    ASSERT_EQ(pwrite(fd, chunk.data(), chunk.size(), i * 7), static_cast<ssize_t>(chunk.size()));
    const timespec m = MtimeOf(Master("site/page.html"));
    const timespec b = MtimeOf(Backup("site/page.html"));
    EXPECT_TRUE(SameTime(m, b)) << "after write " << i << ": master " << FormatTimespec(m) << " backup "
                                << FormatTimespec(b);
    EXPECT_FALSE(TsLess(m, last)) << "mtime went backwards after write " << i;
    if (i > 0) {
      EXPECT_TRUE(TsLess(last, m)) << "mtime unchanged by write " << i << " 15 ms after the previous";
    }
    last = m;
    std::this_thread::sleep_for(15ms);
  }
  close(fd);
  struct stat st {};
  // What the web server stats (within the attribute cache timeout) is the NAS's mtime.
  EXPECT_TRUE(WaitFor([&] { return stat(M("site/page.html").c_str(), &st) == 0 && SameTime(st.st_mtim, last); }, 2500ms))
      << "mount shows " << FormatTimespec(st.st_mtim) << ", the NAS " << FormatTimespec(last);
  EXPECT_NO_TREE_DIFFS(CompareTrees(ws_.master(), ws_.backup()));
}

}  // namespace
}  // namespace nasfs::e2e
