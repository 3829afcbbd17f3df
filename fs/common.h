// Small shared pieces: the Result type of the daemon layer and an owning fd.
#pragma once

#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <exception>
#include <string>
#include <utility>

#include <tl/expected.hpp>

namespace nasfs {

// The daemon layer returns Result<T>: a value or a positive errno.
// The FUSE/syscall layer returns int: 0 or a positive errno.
template <typename T>
using Result = tl::expected<T, int>;

inline tl::unexpected<int> Err(int e) { return tl::unexpected<int>(e); }
inline tl::unexpected<int> ErrFromErrno() { return tl::unexpected<int>(errno ? errno : EIO); }

// What an exception said, in a fixed buffer: copying it must not allocate
// (the exception may be std::bad_alloc).
struct ExceptionText {
  std::array<char, 256> text{};
  const char* c_str() const { return text.data(); }
};

// Runs fn(), catching whatever it throws: true when it returned, false
// (and *what says what it threw) when it threw. The daemon's threads (NAS workers, probes, the
// replay, the copy, FUSE handlers) run their work through this, so no
// exception ends the daemon, whatever a NAS or a request holds.
template <typename F>
bool CatchAll(F&& fn, ExceptionText* what) noexcept {
  auto keep = [what](const char* w) { std::strncpy(what->text.data(), w, what->text.size() - 1); };
  try {
    fn();
    return true;
  } catch (const std::exception& e) {
    keep(e.what());
  } catch (...) {
    keep("unknown exception");
  }
  return false;
}

// Owns one file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) reset(std::exchange(o.fd_, -1));
    return *this;
  }
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  explicit operator bool() const { return valid(); }
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

}  // namespace nasfs
