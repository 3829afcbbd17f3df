#!/bin/bash
# e2e_fstab: the way web servers mount nasfs, through an fstab line:
#   mount(8) --fstab F MNT  ->  /sbin/mount.fuse (no mount.fuse.nasfs exists)
#   -> mount.fuse3 -> /bin/sh -c 'nasfs M:B MNT -o ...'  (PATH-less shell)
# It checks that the mount comes up as fuse.nasfs, that a write lands on both
# NAS with equal content and mtime, that a bad option fails mount(8) with
# nasfs's message and leaves nothing mounted, and that umount(8) ends the
# daemon.
#
# Which nasfs runs: the one under test ($NASFS_BIN, set by tests/meson.build),
# not whatever is installed. The test re-executes itself in a private mount
# namespace and there mounts a tmpfs over /usr/local/sbin holding one symlink,
# nasfs -> $NASFS_BIN. /usr/local/sbin is the first directory a PATH-less
# shell searches, so mount.fuse3 runs exactly the built binary through the
# real lookup, while the host's installed files are never touched: no
# symlink to restore, nothing left behind even if this script is SIGKILLed
# (the namespace and its tmpfs die with it). The fstab line, mount(8) and
# umount(8) are the real ones; /etc/fstab is never read or edited.
# (That an *installed* nasfs is found is checked by scripts/setup.sh.)
#
# Exit: 0 pass, 1 fail, 77 skip (not root, no /dev/fuse, no unshare, no
# mount.fuse3).
set -uo pipefail

skip() { echo "SKIP: $*"; exit 77; }
[ "$(id -u)" = 0 ] || skip "needs root"
[ -c /dev/fuse ] || skip "no /dev/fuse"
[ -x /sbin/mount.fuse ] || skip "no /sbin/mount.fuse (package fuse3)"
command -v unshare >/dev/null || skip "no unshare(1)"

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
NASFS_BIN=${NASFS_BIN:-$HERE/../../build/fs/nasfs}
NASFSCTL_BIN=${NASFSCTL_BIN:-$HERE/../../build/tools/nasfsctl}
[ -x "$NASFS_BIN" ] || { echo "FAIL: NASFS_BIN=$NASFS_BIN is not executable"; exit 1; }
NASFS_BIN=$(readlink -f "$NASFS_BIN")

if [ -z "${NASFS_FSTAB_TEST_IN_NS:-}" ]; then
  unshare --mount --propagation private true 2>/dev/null || skip "cannot create a mount namespace"
  export NASFS_BIN NASFSCTL_BIN NASFS_FSTAB_TEST_IN_NS=1
  exec unshare --mount --propagation private "$BASH" "${BASH_SOURCE[0]}" "$@"
fi

# ---- inside the private mount namespace --------------------------------------

FAILS=0
ok() { echo "ok - $*"; }
notok() { echo "not ok - $*"; FAILS=$((FAILS + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else notok "$what"; fi; }
fatal() { echo "not ok - $*"; exit 1; }

TMP=$(mktemp -d /tmp/nasfs-fstab.XXXXXX)
M=$TMP/master B=$TMP/backup MNT=$TMP/mnt MNT_BAD=$TMP/mnt-bad
mkdir -p "$M" "$B" "$MNT" "$MNT_BAD"
DAEMON_PID=

fstype_at() { findmnt -rn -o FSTYPE --mountpoint "$1" 2>/dev/null | tail -n1; }
cleanup() {
  local rc=$? mp
  for mp in "$MNT" "$MNT_BAD"; do
    if [ -n "$(fstype_at "$mp")" ]; then
      echo "# cleanup: unmounting $mp"
      timeout 10 umount "$mp" 2>/dev/null || umount -l "$mp"
    fi
  done
  [ -z "$(fstype_at "$MNT")$(fstype_at "$MNT_BAD")" ] && rm -rf --one-file-system "$TMP"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 1' INT TERM HUP

# nasfs where mount.fuse3's shell looks first (see the top of this file).
[ -d /usr/local/sbin ] || skip "no /usr/local/sbin"
mount -t tmpfs -o mode=0755,size=1m nasfs-fstab-test /usr/local/sbin || fatal "tmpfs over /usr/local/sbin"
ln -s "$NASFS_BIN" /usr/local/sbin/nasfs
found=$(env -i /bin/sh -c 'command -v nasfs')
check "a PATH-less /bin/sh finds nasfs at /usr/local/sbin/nasfs (got '$found')" \
  test "$found" = /usr/local/sbin/nasfs

# The documented fstab line (packaging/fstab.example), pointed at scratch
# dirs, plus control= and journal= so nothing is written outside $TMP.
OPTS="allow_other,_netdev,noatime,x-systemd.requires-mounts-for=$M,x-systemd.requires-mounts-for=$B"
OPTS+=",cache_timeout=1,io_timeout=1000,control=$TMP/ctl.sock,journal=$TMP/journal"
cat >"$TMP/fstab" <<EOF
# scratch fstab of tests/e2e/fstab_test.sh
$M:$B $MNT fuse.nasfs $OPTS 0 0
$M:$B $MNT_BAD fuse.nasfs allow_other,io_timeout=soon,control=$TMP/bad.sock,journal=$TMP/journal-bad 0 0
EOF
echo "# fstab:"; sed 's/^/#   /' "$TMP/fstab"

# ---- mount through mount(8) --------------------------------------------------
out=$(timeout 30 mount --fstab "$TMP/fstab" "$MNT" 2>&1); rc=$?
[ -n "$out" ] && echo "$out" | sed 's/^/# mount: /'
[ "$rc" = 0 ] || fatal "mount --fstab $TMP/fstab $MNT exited $rc"
ok "mount --fstab ... $MNT"
check "/proc/mounts shows $MNT as fuse.nasfs" \
  grep -qE "^[^ ]+ $MNT fuse\.nasfs " /proc/mounts
check "the mount's source is $M:$B" \
  test "$(findmnt -rn -o SOURCE --mountpoint "$MNT")" = "$M:$B"
check "noatime reached the kernel" \
  grep -qE "^[^ ]+ $MNT fuse\.nasfs [^ ]*noatime" /proc/mounts

if [ -x "$NASFSCTL_BIN" ]; then
  json=$("$NASFSCTL_BIN" status "$MNT" --json 2>&1)
  DAEMON_PID=$(sed -n 's/.*"pid": *\([0-9][0-9]*\).*/\1/p' <<<"$json" | head -n1)
  check "nasfsctl status answers through control=$TMP/ctl.sock" \
    grep -q '"read_from": *"master"' <<<"$json"
fi
if [ -z "$DAEMON_PID" ]; then  # no nasfsctl: the daemon is the process mounted on our unique path
  DAEMON_PID=$(pgrep -f -- "$MNT( |\$)" | head -n1)
fi
check "found the daemon's pid ($DAEMON_PID)" test -n "$DAEMON_PID"

# ---- a write lands on both NAS -----------------------------------------------
mkdir "$MNT/site" || notok "mkdir through the mount"
payload="written through fstab at $(date -u +%FT%T.%NZ) $RANDOM"
printf '%s\n' "$payload" >"$MNT/site/index.html" || notok "write through the mount"
check "the mount reads the file back" test "$(cat "$MNT/site/index.html")" = "$payload"
check "master holds the file" test "$(cat "$M/site/index.html" 2>&1)" = "$payload"
check "backup holds the same bytes" cmp -s "$M/site/index.html" "$B/site/index.html"
sm=$(stat -c '%s %y %a' "$M/site/index.html"); sb=$(stat -c '%s %y %a' "$B/site/index.html" 2>&1)
check "size, mtime (ns) and mode are equal on both NAS ($sm | $sb)" test "$sm" = "$sb"
check "the mount shows the same mtime" \
  test "$(stat -c %y "$MNT/site/index.html")" = "$(stat -c %y "$M/site/index.html")"

# ---- a bad option fails mount(8) clearly and mounts nothing -------------------
out=$(timeout 30 mount --fstab "$TMP/fstab" "$MNT_BAD" 2>&1); rc=$?
echo "$out" | sed 's/^/# mount (bad option): /'
check "mount with io_timeout=soon exits non-zero ($rc)" test "$rc" != 0
check "the error names the bad option" grep -q 'io_timeout' <<<"$out"
check "nothing is mounted at $MNT_BAD" test -z "$(fstype_at "$MNT_BAD")"

# ---- umount(8) ends the daemon -------------------------------------------------
out=$(timeout 30 umount "$MNT" 2>&1); rc=$?
check "umount $MNT exits 0${out:+ ($out)}" test "$rc" = 0
check "$MNT is no longer mounted" test -z "$(fstype_at "$MNT")"
gone=0
if [ -n "$DAEMON_PID" ]; then
  for _ in $(seq 100); do
    # Gone, or a zombie waiting for its reaper: either way it has exited.
    st=$(awk '{print $3}' "/proc/$DAEMON_PID/stat" 2>/dev/null)
    if [ -z "$st" ] || [ "$st" = Z ]; then gone=1; break; fi
    sleep 0.1
  done
fi
check "the daemon ($DAEMON_PID) exited within 10 s of umount" test "$gone" = 1
check "the files stay on both NAS after umount" cmp -s "$M/site/index.html" "$B/site/index.html"

if [ "$FAILS" = 0 ]; then echo "PASS: fstab mount path"; exit 0; fi
echo "FAIL: $FAILS check(s) failed"
exit 1
