// An in-memory journal::Env for the fuzz targets: no disk, nothing left
// behind, fast enough for thousands of Opens a second. Optionally fails one
// writing call (the Nth create, append, sync, remove, rename, syncdir or
// mkdir) with an errno, an append then writing only half its bytes (a full
// disk mid-write), so the journal's error paths run too.
//
// An open WritableFile shares its bytes with the directory entry, so a file
// removed or renamed while open behaves as on POSIX. Each file remembers how
// much of it a Sync() made durable: DurableFiles() is what a power cut would
// leave (names are taken as durable at once, as ext4 commits them within
// seconds; data only once synced). Thread-safe.
#pragma once

#include <cerrno>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "journal/journal.h"

namespace nasfs::fuzz {

class MemEnv : public journal::Env {
 public:
  // The nth writing call from now on (1 = the next) fails with err; 0: none.
  void FailNth(int n, int err, bool partial_append) {
    std::lock_guard l(mu_);
    countdown_ = n;
    err_ = err;
    partial_ = partial_append;
  }
  bool fault_fired() const {
    std::lock_guard l(mu_);
    return fired_;
  }
  // Puts a file in place as if it had been there, durable (no fault counted).
  void PutFile(const std::string& path, std::string data) {
    std::lock_guard l(mu_);
    auto f = std::make_shared<FileData>();
    f->data = std::move(data);
    f->synced = f->data.size();
    files_[path] = f;
  }
  void AddDir(const std::string& dir) {
    std::lock_guard l(mu_);
    dirs_.insert(dir);
  }
  // Every file cut to what was synced.
  std::map<std::string, std::string> DurableFiles() const {
    std::lock_guard l(mu_);
    std::map<std::string, std::string> out;
    for (const auto& [p, f] : files_) out[p] = f->data.substr(0, f->synced);
    return out;
  }

  tl::expected<std::unique_ptr<WritableFile>, int> NewWritableFile(const std::string& path) override {
    std::lock_guard l(mu_);
    if (int e = FaultLocked()) return tl::unexpected(e);
    if (!dirs_.count(DirOf(path))) return tl::unexpected(ENOENT);
    if (files_.count(path) || dirs_.count(path)) return tl::unexpected(EEXIST);
    auto data = std::make_shared<FileData>();
    files_[path] = data;
    return std::make_unique<File>(this, data);
  }
  tl::expected<std::string, int> ReadFile(const std::string& path) override {
    std::lock_guard l(mu_);
    if (dirs_.count(path)) return tl::unexpected(EISDIR);
    auto it = files_.find(path);
    if (it == files_.end()) return tl::unexpected(ENOENT);
    return it->second->data;
  }
  tl::expected<std::vector<std::string>, int> ListDir(const std::string& dir) override {
    std::lock_guard l(mu_);
    if (!dirs_.count(dir)) return tl::unexpected(files_.count(dir) ? ENOTDIR : ENOENT);
    std::vector<std::string> out;
    for (const auto& [p, d] : files_)
      if (DirOf(p) == dir) out.push_back(p.substr(dir.size() + 1));
    for (const auto& p : dirs_)
      if (p != dir && DirOf(p) == dir) out.push_back(p.substr(dir.size() + 1));
    return out;
  }
  int Remove(const std::string& path) override {
    std::lock_guard l(mu_);
    if (int e = FaultLocked()) return e;
    return files_.erase(path) ? 0 : ENOENT;
  }
  int Rename(const std::string& from, const std::string& to) override {
    std::lock_guard l(mu_);
    if (int e = FaultLocked()) return e;
    auto it = files_.find(from);
    if (it == files_.end()) return ENOENT;
    if (dirs_.count(to)) return EISDIR;
    auto data = it->second;
    files_.erase(it);
    files_[to] = data;
    return 0;
  }
  int SyncDir(const std::string& dir) override {
    std::lock_guard l(mu_);
    if (int e = FaultLocked()) return e;
    return dirs_.count(dir) ? 0 : ENOENT;
  }
  int CreateDir(const std::string& dir) override {
    std::lock_guard l(mu_);
    if (int e = FaultLocked()) return e;
    if (files_.count(dir)) return ENOTDIR;
    for (std::string d = dir; !d.empty() && d != "/"; d = DirOf(d)) dirs_.insert(d);
    return 0;
  }
  int LockFile(const std::string& path, int* handle) override {
    std::lock_guard l(mu_);
    if (!dirs_.count(DirOf(path))) return ENOENT;
    if (locked_.count(path)) return EWOULDBLOCK;
    if (!files_.count(path)) files_[path] = std::make_shared<FileData>();
    locked_.insert(path);
    *handle = next_handle_;
    handles_[next_handle_++] = path;
    return 0;
  }
  void UnlockFile(int handle) override {
    std::lock_guard l(mu_);
    auto it = handles_.find(handle);
    if (it == handles_.end()) return;
    locked_.erase(it->second);
    handles_.erase(it);
  }
  bool AnyLockHeld() const {
    std::lock_guard l(mu_);
    return !locked_.empty();
  }

 private:
  struct FileData {
    std::string data;
    size_t synced = 0;  // bytes a Sync() made durable
  };
  class File : public WritableFile {
   public:
    File(MemEnv* env, std::shared_ptr<FileData> f) : env_(env), f_(std::move(f)) {}
    int Append(std::string_view data) override {
      std::lock_guard l(env_->mu_);
      if (int e = env_->FaultLocked()) {
        if (env_->partial_) f_->data.append(data.substr(0, data.size() / 2));
        return e;
      }
      f_->data.append(data);
      return 0;
    }
    int Sync() override {
      std::lock_guard l(env_->mu_);
      if (int e = env_->FaultLocked()) return e;  // nothing more is durable
      f_->synced = f_->data.size();
      return 0;
    }

   private:
    MemEnv* env_;
    std::shared_ptr<FileData> f_;
  };

  static std::string DirOf(const std::string& path) {
    auto slash = path.rfind('/');
    if (slash == std::string::npos) return ".";
    return slash == 0 ? "/" : path.substr(0, slash);
  }
  int FaultLocked() {
    if (countdown_ <= 0) return 0;
    if (--countdown_ > 0) return 0;
    fired_ = true;
    return err_;
  }

  mutable std::mutex mu_;
  std::map<std::string, std::shared_ptr<FileData>> files_;  // guarded by mu_
  std::set<std::string> dirs_{"/"};                            // guarded by mu_
  std::set<std::string> locked_;                               // guarded by mu_
  std::map<int, std::string> handles_;                         // guarded by mu_
  int next_handle_ = 1;                                        // guarded by mu_
  int countdown_ = 0, err_ = 0;                                // guarded by mu_
  bool partial_ = false, fired_ = false;                       // guarded by mu_
};

}  // namespace nasfs::fuzz
