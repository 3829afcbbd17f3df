// Fault injection for the failover tests: a NAS that is a FUSE mount of a
// local directory, whose server the test can hang, kill, unmount and mount
// again (DESIGN.md's fault model), and one whose operations fail on demand.
//
//   Workspace ws;
//   auto master = MakeNas(ws, "master", DefaultNasServer());  // <ws>/store_master at <ws>/master
//   FaultfsNas backup(ws, "backup");  // <ws>/store_backup shown at <ws>/backup
//   MountedNasfs m(ws);               // nasfs over <ws>/master:<ws>/backup
//   master->Stop();  ...  master->Cont();
//   backup.SetFaults("eio_writes");  ...  backup.SetFaults("");
//
// Either server will do for hanging, killing and unmounting (BindfsNas is
// Debian's bindfs, FaultfsNas our tests/faultfs); DefaultNasServer() says
// why the failover tests use faultfs for both.
//
// What each fault looks like to nasfs:
//   Stop()      SIGSTOP the server: every request on the NAS hangs (a frozen
//               NFS server with `hard` semantics).
//   Kill()      SIGKILL the server: the mount stays, dead: ENOTCONN.
//   Unmount()   the NAS goes away: its mount is lazily detached and its server
//               killed, so descriptors nasfs still holds fail (ENOTCONN) and
//               the path is the bare, empty mount point on the local disk.
//   Remount()   after Kill() or Unmount(): whatever is left at the path is
//               detached and a new server mounts the same store there again.
//
// Cleanup contract (a stopped FUSE server hangs everything that touches its
// mount, `ls` of the workspace included, so order matters): the destructor
// always sends SIGCONT first, then detaches the mount (umount2 MNT_DETACH,
// which sends the server nothing), then SIGKILLs and reaps the server. A
// global safety net does the same for every server still alive when the
// test binary ends, and a handler for SIGTERM/SIGINT/SIGHUP/SIGABRT/SIGSEGV/
// SIGBUS (a meson timeout, a crash) does it before chaining to
// mount_fixture's own. Servers run with PR_SET_PDEATHSIG=SIGKILL, so even a
// SIGKILLed test binary leaves no stopped server behind (only a dead mount,
// which fails fast and scripts/test.sh detaches).
//
// Objects of these classes belong to the test's main thread (they fork, and
// a server's death signal follows the thread that forked it); destroy them
// before the Workspace, and after any nasfs mount stacked on them.
//
// Environment: FAULTFS_BIN names faultfs (tests/meson.build sets it); run by
// hand it defaults to tests/faultfs of the build directory.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <memory>
#include <string>
#include <vector>

#include "tests/e2e/mount_fixture.h"

namespace nasfs::e2e {

std::string FaultfsBin();

// A FUSE server exposing <ws>/store_<name> at <ws>/<name>. The constructor
// mounts it (ok() says whether that worked). The (store, path) constructors
// of the servers expose <ws>/store_<store> at <ws>/<path> instead, so several
// servers can show one store at several paths (each web server's own view of
// one NAS, which can fail alone: a partition).
class FuseNas {
 public:
  virtual ~FuseNas();
  FuseNas(const FuseNas&) = delete;
  FuseNas& operator=(const FuseNas&) = delete;

  bool ok() const { return error_.empty(); }
  // Why the last Start() failed, or "".
  const std::string& error() const { return error_; }

  // What nasfs is given as the NAS: <ws>/<name> (<ws>/<path>).
  const std::string& path() const { return path_; }
  // The name it goes by in messages: <name> (<path>).
  const std::string& name() const { return name_; }
  // The directory the server exposes: <ws>/store_<name> (<ws>/store_<store>). Never behind a FUSE
  // server, so it can be read whatever state the server is in.
  const std::string& store() const { return store_; }
  // The server's pid, or -1 when none runs (after Kill() or Unmount()).
  pid_t pid() const { return pid_; }
  bool stopped() const { return stopped_; }
  // The server's output so far (its log file).
  std::string Log() const;

  // SIGSTOP; returns once the kernel shows the server stopped (bounded).
  void Stop();
  // SIGCONT. Harmless when not stopped.
  void Cont();
  // SIGKILL and reap; the mount stays, dead.
  void Kill();
  // Lazily detaches the mount and kills the server: the path is left bare.
  void Unmount();
  // Detaches whatever this object left at the path (a dead mount) and starts
  // a new server there. "" when mounted, else why not. A running server is
  // killed first.
  [[nodiscard]] std::string Remount();

 protected:
  FuseNas(const Workspace& ws, const std::string& name);
  // <ws>/store_<store> at <ws>/<path>; its log is <ws>/<path>.server.log.
  FuseNas(const Workspace& ws, const std::string& store, const std::string& path);
  // The server's command line; it must stay in the foreground (-f).
  virtual std::vector<std::string> ServerArgv() const = 0;
  // Starts the server and waits (bounded) for its mount. Sets error_.
  void Start();

 private:
  // Detaches every mount this object stacked on path_.
  void DetachOwnMounts();
  // SIGKILL and reap the server, if any.
  void KillAndReap();

  std::string name_, path_, store_, log_;
  int mounts_before_ = 0;  // mounts at path_ that are not ours
  pid_t pid_ = -1;
  bool stopped_ = false;
  std::string error_;
};

// bindfs (Debian's, no code of ours): a plain passthrough. Drops mtime-only
// SETATTRs (see DefaultNasServer).
class BindfsNas : public FuseNas {
 public:
  BindfsNas(const Workspace& ws, const std::string& name);
  // <ws>/store_<store> at <ws>/<path>.
  BindfsNas(const Workspace& ws, const std::string& store, const std::string& path);

 protected:
  std::vector<std::string> ServerArgv() const override;
};

// faultfs (tests/faultfs): a passthrough whose operations fail on demand.
class FaultfsNas : public FuseNas {
 public:
  FaultfsNas(const Workspace& ws, const std::string& name);
  // <ws>/store_<store> at <ws>/<path>; its control file is <ws>/<path>.faults.
  FaultfsNas(const Workspace& ws, const std::string& store, const std::string& path);

  // Replaces the faults in force ("" for none): whitespace-separated words of
  // eio_writes, enospc_writes, eio_all, delay_ms=N (see faultfs.cc). Takes
  // effect at faultfs's next operation. false if the control file could not
  // be written.
  [[nodiscard]] bool SetFaults(const std::string& faults);
  const std::string& ctl_path() const { return ctl_; }

 protected:
  std::vector<std::string> ServerArgv() const override;

 private:
  std::string ctl_;
};

// Which server plays a NAS that needs no injected errors.
//
// faultfs by default. Debian's bindfs (1.14) is built on libfuse 2, whose
// high-level API calls utimens only when both atime and mtime are set: a
// SETATTR setting mtime alone (futimens with atime UTIME_OMIT, what nasfs
// does after every write to stamp the mirror's timestamp) is answered
// success and dropped, so each NAS keeps its own write time and two NAS
// behind bindfs never compare identical. NFS and faultfs (libfuse 3) honour
// it. NASFS_E2E_NAS_SERVER=bindfs picks bindfs anyway (to compare).
enum class NasServer { kFaultfs, kBindfs };
NasServer DefaultNasServer();
const char* NasServerName(NasServer s);
// A started NAS of that kind at <ws>/<name> (check ok()).
std::unique_ptr<FuseNas> MakeNas(const Workspace& ws, const std::string& name, NasServer server);
// A started NAS of that kind showing <ws>/store_<store> at <ws>/<path> (check
// ok()): MakeNas(ws, "master", "a_master", s) and MakeNas(ws, "master",
// "b_master", s) are two servers of one store, each failing on its own.
std::unique_ptr<FuseNas> MakeNas(const Workspace& ws, const std::string& store, const std::string& path,
                                 NasServer server);

}  // namespace nasfs::e2e
