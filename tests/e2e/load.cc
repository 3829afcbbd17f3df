#include "tests/e2e/load.h"

#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "tests/e2e/mount_fixture.h"

namespace nasfs::e2e {
namespace {

using Clock = std::chrono::steady_clock;

double MsBetween(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

int Errno(int rc) { return rc == 0 ? 0 : errno; }

thread_local const char* t_failed_call = "";

int PutFile(const std::string& path, std::string_view data, int flags, mode_t mode) {
  t_failed_call = "open";
  const int fd = open(path.c_str(), flags | O_WRONLY | O_CLOEXEC, mode);
  if (fd < 0) return errno;
  size_t off = 0;
  t_failed_call = "write";
  while (off < data.size()) {
    const ssize_t n = write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = n < 0 ? errno : EIO;
      close(fd);
      return e;
    }
    off += static_cast<size_t>(n);
  }
  t_failed_call = "close";
  return close(fd) == 0 ? 0 : errno;
}

std::string LoadStats::Failures() const {
  std::string s;
  for (const auto& l : failure_lines) s += "\n  " + l;
  return s.empty() ? "(none)" : s;
}

ReaderLoad::ReaderLoad(std::string mnt, std::map<std::string, std::string> files,
                       std::map<std::string, std::string> links, std::map<std::string, std::set<std::string>> dirs,
                       uint64_t seed, ReaderPace pace)
    : mnt_(std::move(mnt)),
      files_(std::move(files)),
      links_(std::move(links)),
      dirs_(std::move(dirs)),
      pace_(pace),
      rng_(seed) {
  for (const auto& [rel, data] : files_) file_names_.push_back(rel);
  for (const auto& [rel, target] : links_) link_names_.push_back(rel);
  for (const auto& [rel, names] : dirs_) dir_names_.push_back(rel);
}

ReaderLoad::~ReaderLoad() { (void)Stop(-1); }

void ReaderLoad::Start() {
  started_ = Clock::now();
  thread_ = std::thread([this] { Loop(); });
}

LoadStats ReaderLoad::Stop(pid_t daemon) {
  if (!thread_.joinable()) return Stats();
  stop_ = true;
  if (!WaitFor([this] { return done_.load(); }, 20s)) {
    std::string what;
    {
      std::lock_guard<std::mutex> lock(mu_);
      what = current_;
    }
    ADD_FAILURE() << "the reader is stuck for over 20 s in: " << what
                  << (daemon > 0 ? "; killing nasfs to release it" : "");
    if (daemon > 0) kill(daemon, SIGKILL);
    if (!WaitFor([this] { return done_.load(); }, 10s)) {
      ADD_FAILURE() << "the reader is still stuck; abandoning its thread";
      thread_.detach();
      return Stats();
    }
  }
  thread_.join();
  return Stats();
}

LoadStats ReaderLoad::Stats() {
  std::lock_guard<std::mutex> lock(mu_);
  LoadStats s = stats_;
  std::vector<double> sorted = latencies_;
  std::sort(sorted.begin(), sorted.end());
  if (!sorted.empty()) {
    s.p50_ms = sorted[sorted.size() / 2];
    s.p99_ms = sorted[std::min(sorted.size() - 1, sorted.size() * 99 / 100)];
  }
  return s;
}

void ReaderLoad::Loop() {
  auto next = Clock::now();
  for (int tick = 0; !stop_; ++tick) {
    std::string what;
    const auto t0 = Clock::now();
    const std::string failure = OneRequest(tick, &what);
    const double ms = MsSince(t0);
    {
      std::lock_guard<std::mutex> lock(mu_);
      latencies_.push_back(ms);
      ++stats_.ops;
      if (ms > stats_.max_ms) {
        stats_.max_ms = ms;
        stats_.max_what = fmt::format("{} at t={:.0f} ms", what, MsBetween(started_, t0));
      }
      if (!failure.empty()) {
        ++stats_.failures;
        if (stats_.failure_lines.size() < 10) {
          stats_.failure_lines.push_back(
              fmt::format("t={:.0f} ms {} ({:.0f} ms): {}", MsBetween(started_, t0), what, ms, failure));
        }
      }
      current_ = "(between requests)";
    }
    if (!pace_.fixed_rate) {
      std::this_thread::sleep_for(pace_.period);
      continue;
    }
    next += pace_.period;
    const auto now = Clock::now();
    if (next > now) {
      std::this_thread::sleep_until(next);
    } else {
      next = now;  // after a stall, go on at the set rate rather than in a burst
    }
  }
  done_ = true;
}

std::string ReaderLoad::OneRequest(int tick, std::string* what) {
  const int kind = tick % 10;
  auto begin = [&](std::string w) {
    *what = std::move(w);
    std::lock_guard<std::mutex> lock(mu_);
    current_ = fmt::format("{} (since t={:.0f} ms)", *what, MsSince(started_));
  };
  if (kind == 7 && !dir_names_.empty()) {
    const std::string& rel = dir_names_[rng_() % dir_names_.size()];
    begin("readdir " + rel);
    DIR* d = opendir((mnt_ + "/" + rel).c_str());
    if (d == nullptr) return fmt::format("opendir: {}", std::strerror(errno));
    std::set<std::string> seen;
    errno = 0;
    while (dirent* e = readdir(d)) seen.insert(e->d_name);
    const int err = errno;
    closedir(d);
    if (err != 0) return fmt::format("readdir: {}", std::strerror(err));
    for (const auto& name : dirs_.at(rel)) {
      if (!seen.count(name)) return fmt::format("{} missing from the listing ({} entries)", name, seen.size());
    }
    return "";
  }
  if (kind == 8 && !link_names_.empty()) {
    const std::string& rel = link_names_[rng_() % link_names_.size()];
    begin("readlink " + rel);
    char buf[PATH_MAX];
    const ssize_t n = readlink((mnt_ + "/" + rel).c_str(), buf, sizeof buf);
    if (n < 0) return fmt::format("readlink: {}", std::strerror(errno));
    if (std::string(buf, static_cast<size_t>(n)) != links_.at(rel)) return "wrong link target";
    return "";
  }
  const std::string& rel = file_names_[rng_() % file_names_.size()];
  if (kind == 9) {
    begin("stat " + rel);
    struct stat st {};
    if (lstat((mnt_ + "/" + rel).c_str(), &st) != 0) return fmt::format("lstat: {}", std::strerror(errno));
    if (st.st_size != static_cast<off_t>(files_.at(rel).size())) {
      return fmt::format("size {} instead of {}", st.st_size, files_.at(rel).size());
    }
    return "";
  }
  begin("read " + rel);
  const auto data = ReadDirect(mnt_ + "/" + rel);
  if (!data) return fmt::format("read: {}", std::strerror(errno));
  if (*data != files_.at(rel)) {
    return fmt::format("wrong content ({} bytes instead of {})", data->size(), files_.at(rel).size());
  }
  return "";
}

}  // namespace nasfs::e2e
