#!/bin/bash
# pjdfstest.sh: run the POSIX filesystem suite pjdfstest inside a nasfs mount
# and check that the two NAS trees are identical afterwards.
#
#   tests/posix/pjdfstest.sh PJDFSTEST_DIR [NASFS_BIN]
#
# PJDFSTEST_DIR is a pjdfstest checkout (https://github.com/pjd/pjdfstest)
# with its test binary built: PJDFSTEST_DIR/pjdfstest and PJDFSTEST_DIR/tests.
# The suite is not part of this repository and is not fetched by this script;
# an operator or CI that has a checkout points the script at it.
# NASFS_BIN defaults to $NASFS_BIN, then build/fs/nasfs of this repository.
#
# What it does:
#   1. makes a scratch dir (under $TMPDIR or /tmp) with master/, backup/,
#      mnt/, the control socket and the journal dir;
#   2. mounts nasfs master:backup on mnt (nasfs daemonizes once usable);
#   3. runs `prove -rv PJDFSTEST_DIR/tests` as root from mnt/pjdfstest-run,
#      saving the verbose TAP to $PJDFSTEST_LOG (default:
#      ${TMPDIR:-/tmp}/nasfs-pjdfstest-last.log, overwritten each run);
#   4. prints prove's summary and every failing check ("not ok", TODOs
#      excluded), each prefixed with its .t file;
#   5. unmounts, then compares master and backup: every path except .nasfs/
#      (and the root directory itself) must exist on both with the same type,
#      permission bits, uid, gid, size, mtime (ns), symlink target, device
#      numbers and file content (a directory's size is left out: it is the
#      underlying file system's block accounting, not data);
#   6. always unmounts (trap on EXIT/INT/TERM), falling back to umount -l.
#
# Environment:
#   PJDFSTEST_TIMEOUT   seconds for the whole prove run (default 3600)
#   PJDFSTEST_TESTS     space-separated subset relative to tests/, e.g.
#                       "chmod rename/09.t" (default: all of tests/)
#   PJDFSTEST_IGNORE_FAILURES=1  exit 0 even if pjdfstest checks fail (the
#                       tree comparison still decides)
#   PJDFSTEST_LOG       where to write the verbose prove output
#   PJDFSTEST_KEEP=1    keep the scratch dir (master/backup) for inspection
#
# The file-system type pjdfstest sees comes from its own tests/conf
# (`df -PT .`, i.e. FUSE.NASFS here); a few checks are gated on it (for
# example rename/22.t runs only on EXT4/UFS/ZFS).
#
# Exit: 0 all checks passed and the trees match; 1 the NAS trees differ, the
# mount failed, or prove timed out/crashed; 2 pjdfstest checks failed (trees
# match); 77 skipped (not root, no checkout, no /dev/fuse, no prove).
set -uo pipefail

skip() { echo "SKIP: $*"; exit 77; }
die() { echo "FAIL: $*" >&2; exit 1; }

[ $# -ge 1 ] || skip "usage: $0 PJDFSTEST_DIR [NASFS_BIN]"
PJD=$1
[ "$(id -u)" = 0 ] || skip "pjdfstest must run as root"
[ -d "$PJD/tests" ] || skip "no pjdfstest checkout at $PJD (missing tests/)"
if [ ! -x "$PJD/pjdfstest" ]; then
  if [ -f "$PJD/Makefile" ]; then
    make -C "$PJD" pjdfstest >/dev/null 2>&1 || true
  fi
  [ -x "$PJD/pjdfstest" ] || skip "$PJD/pjdfstest is not built (autoreconf -ifs && ./configure && make pjdfstest)"
fi
[ -c /dev/fuse ] || skip "no /dev/fuse"
command -v prove >/dev/null || skip "no prove(1) (package perl)"
PJD=$(cd "$PJD" && pwd)

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NASFS_BIN=${2:-${NASFS_BIN:-$HERE/../../build/fs/nasfs}}
[ -x "$NASFS_BIN" ] || die "NASFS_BIN=$NASFS_BIN is not executable"
NASFS_BIN=$(readlink -f "$NASFS_BIN")

TIMEOUT=${PJDFSTEST_TIMEOUT:-3600}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nasfs-pjdfstest.XXXXXX")
M=$TMP/master B=$TMP/backup MNT=$TMP/mnt
LOG=${PJDFSTEST_LOG:-${TMPDIR:-/tmp}/nasfs-pjdfstest-last.log}
mkdir -p "$M" "$B" "$MNT" "$TMP/journal"

mounted() { findmnt -rn --mountpoint "$MNT" >/dev/null 2>&1; }
unmount() {
  mounted || return 0
  fusermount3 -u "$MNT" 2>/dev/null || timeout 10 umount "$MNT" 2>/dev/null || umount -l "$MNT"
  local i
  for i in $(seq 50); do mounted || break; sleep 0.1; done
  ! mounted
}
PROVE_PID=
cleanup() {
  local rc=$? i
  if [ -n "$PROVE_PID" ] && kill -0 "$PROVE_PID" 2>/dev/null; then
    echo "# cleanup: stopping prove (pid $PROVE_PID)"
    kill -TERM "$PROVE_PID" 2>/dev/null
    for i in $(seq 100); do kill -0 "$PROVE_PID" 2>/dev/null || break; sleep 0.1; done
  fi
  if mounted; then
    echo "# cleanup: unmounting $MNT"
    unmount || echo "# cleanup: $MNT is still mounted"
  fi
  if [ -n "${PJDFSTEST_KEEP:-}" ] || mounted; then
    echo "# scratch dir kept: $TMP"
  else
    rm -rf --one-file-system "$TMP"
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

echo "# nasfs: $NASFS_BIN"
echo "# pjdfstest: $PJD"
"$NASFS_BIN" "$M:$B" "$MNT" -o "control=$TMP/control.sock,journal=$TMP/journal" \
  || die "nasfs did not mount $M:$B on $MNT"
mounted || die "nasfs returned but $MNT is not a mount point"
echo "# mounted: $(findmnt -rn -o SOURCE,FSTYPE --mountpoint "$MNT")"

# ---- run the suite -----------------------------------------------------------
targets=()
if [ -n "${PJDFSTEST_TESTS:-}" ]; then
  for t in $PJDFSTEST_TESTS; do targets+=("$PJD/tests/$t"); done
else
  targets=("$PJD/tests")
fi
mkdir "$MNT/pjdfstest-run" || die "mkdir in the mount failed"
start=$(date +%s)
# In the background so a signal reaches our trap at once (bash defers traps
# while a foreground child runs); the trap stops prove through timeout(1).
( cd "$MNT/pjdfstest-run" && exec timeout --kill-after=30 "$TIMEOUT" prove -rv "${targets[@]}" ) >"$LOG" 2>&1 &
PROVE_PID=$!
wait "$PROVE_PID"
prove_rc=$?
PROVE_PID=
elapsed=$(( $(date +%s) - start ))
rmdir "$MNT/pjdfstest-run" 2>/dev/null || echo "# note: tests left entries under pjdfstest-run/"

echo "# prove exit code $prove_rc after ${elapsed}s; verbose log: $LOG"
[ "$prove_rc" = 124 ] || [ "$prove_rc" = 137 ] && echo "# prove TIMED OUT after ${TIMEOUT}s (last file: $(grep -E '^/.*\.t \.+' "$LOG" | tail -n1 | cut -d' ' -f1))"
echo "# ---- prove summary"
sed -n '/^Test Summary Report/,$p' "$LOG"
grep -E '^(All tests successful|Files=|Result:)' "$LOG" | sort -u
echo "# ---- failing checks (file: tap line)"
failures=$(awk '
  /^\/.*\.t \.+/ { file = $1; sub(".*/tests/", "", file); next }
  /^not ok/ && !/# TODO/ { print file ": " $0 }
  /^Dubious|^Failed [0-9]+\/[0-9]+ subtests|No plan found|Parse errors/ { print file ": " $0 }
' "$LOG")
if [ -n "$failures" ]; then echo "$failures"; else echo "(none)"; fi

# ---- unmount, then compare the two NAS trees ---------------------------------
unmount || die "could not unmount $MNT"

snapshot() { # one line per path below $1 (not .nasfs, not the root itself)
  ( cd "$1" && find . -mindepth 1 -path ./.nasfs -prune -o -printf '%P\0' ) |
    sort -z | while IFS= read -r -d '' p; do
      local f="$1/$p" extra="" fmt='type=%F mode=%a uid=%u gid=%g size=%s mtime=%.9Y'
      case "$(stat -c %F "$f")" in
        directory) fmt='type=%F mode=%a uid=%u gid=%g mtime=%.9Y' ;;
        "regular file"|"regular empty file") extra="sha256=$(sha256sum <"$f" | cut -d' ' -f1)" ;;
        "symbolic link") extra="target=$(readlink "$f")" ;;
        "block special file"|"character special file") extra="rdev=$(stat -c '%t:%T' "$f")" ;;
      esac
      printf '%s\t%s\t%s\n' "$p" "$(stat -c "$fmt" "$f")" "$extra"
    done
}
snapshot "$M" >"$TMP/master.lst"
snapshot "$B" >"$TMP/backup.lst"
echo "# ---- NAS trees: master $(wc -l <"$TMP/master.lst") paths, backup $(wc -l <"$TMP/backup.lst") paths"
tree_rc=0
if ! diff -u --label master "$TMP/master.lst" --label backup "$TMP/backup.lst" >"$TMP/tree.diff"; then
  echo "NAS trees DIFFER (- master, + backup):"
  cat "$TMP/tree.diff"
  tree_rc=1
else
  echo "NAS trees identical"
fi

nfail=$(printf '%s' "$failures" | grep -c . || true)
echo "pjdfstest: ${nfail} failing checks/files, prove rc ${prove_rc}, ${elapsed}s; NAS trees $([ $tree_rc = 0 ] && echo identical || echo DIFFER)"
[ $tree_rc = 0 ] || exit 1
case "$prove_rc" in 124|137) exit 1 ;; esac
if [ "$prove_rc" != 0 ] || [ "$nfail" != 0 ]; then
  [ -n "${PJDFSTEST_IGNORE_FAILURES:-}" ] && exit 0
  exit 2
fi
exit 0
