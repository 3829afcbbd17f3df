#include "fs/log.h"

#include <map>
#include <mutex>
#include <string>

namespace nasfs {

std::shared_ptr<spdlog::logger> Logger(const char* name) {
  if (auto l = spdlog::get(name)) return l;
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<spdlog::logger>> fallback;
  std::lock_guard lk(mu);
  auto& l = fallback[name];
  if (!l) l = spdlog::default_logger()->clone(name);
  return l;
}

}  // namespace nasfs
