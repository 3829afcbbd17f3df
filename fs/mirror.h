// Applies one mutation to both NAS, in parallel, before the reply.
//
// Each side runs the same operation on its own worker pool under the
// io_timeout deadline, and stamps the mirror's one timestamp on what it
// changed, so both NAS carry identical mtimes (nginx builds ETag and
// Last-Modified from them). The caller gets the master's result, or the
// backup's when the master is not taking writes.
//
// A side that is not taking writes is skipped: a syncing backup takes only
// the writes its copy has already passed (Nasfs decides, through `targets`).
// When the two sides disagree (one applied it, the other failed), the
// mirror counts a divergence, logs it once with the path, and reports it to
// the divergence callback, which reconciles the path. Issue 3 will journal
// it instead.
//
// Thread-safe.
#pragma once

#include <atomic>
#include <functional>
#include <string>

#include "fs/backend.h"

namespace nasfs {

class Mirror {
 public:
  // One side's work: runs on that NAS's worker thread.
  using Op = std::function<int(const Backend&)>;
  // Told about a path left different on the two NAS.
  using DivergenceFn = std::function<void(const std::string& path)>;

  // *master and *backup must outlive the mirror.
  Mirror(Backend* master, Backend* backup) : master_(master), backup_(backup) {}
  void SetDivergenceCallback(DivergenceFn fn) { on_divergence_ = std::move(fn); }

  struct Targets {
    bool master = true;
    bool backup = true;
  };
  // Runs op on the targeted NAS in parallel; `op` must capture by value what
  // it uses (it may outlive the call when a NAS misses its deadline).
  // `path` names what the op changes, for logs and reconciliation.
  int Apply(const char* what, const std::string& path, Targets targets, const Op& op);

  // The timestamp a mutation stamps on both NAS.
  static timespec Now();

  uint64_t mirrored_ops() const { return mirrored_.load(); }
  uint64_t divergences() const { return divergences_.load(); }

 private:
  Backend* master_;
  Backend* backup_;
  DivergenceFn on_divergence_;
  std::atomic<uint64_t> mirrored_{0}, divergences_{0};
};

}  // namespace nasfs
