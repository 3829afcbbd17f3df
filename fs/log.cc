#include "fs/log.h"

#include <map>
#include <string>

#include <fmt/format.h>

#include "util/mutex.h"

namespace nasfs {

std::shared_ptr<spdlog::logger> Logger(const char* name) {
  if (auto l = spdlog::get(name)) return l;
  static Mutex mu;
  static std::map<std::string, std::shared_ptr<spdlog::logger>> fallback;  // guarded by mu
  MutexLock lk(&mu);
  auto& l = fallback[name];
  if (!l) l = spdlog::default_logger()->clone(name);
  return l;
}

namespace {

void AppendShown(std::string* out, std::string_view s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7f || c == '\\')
      *out += fmt::format("\\x{:02x}", c);
    else
      *out += static_cast<char>(c);
  }
}

// Moves a cut at i off the middle of a UTF-8 sequence (to its first byte).
size_t CharStart(std::string_view s, size_t i) {
  while (i > 0 && i < s.size() && (static_cast<unsigned char>(s[i]) & 0xc0) == 0x80) --i;
  return i;
}

}  // namespace

std::string ShownPath(std::string_view path) {
  std::string out;
  if (path.size() <= kShownPathBytes) {
    AppendShown(&out, path);
    return out;
  }
  const size_t head = CharStart(path, kShownPathBytes * 5 / 8);
  const size_t tail = CharStart(path, path.size() - kShownPathBytes / 4);
  AppendShown(&out, path.substr(0, head));
  out += fmt::format("...({} bytes)...", path.size());
  AppendShown(&out, path.substr(tail));
  return out;
}

}  // namespace nasfs
