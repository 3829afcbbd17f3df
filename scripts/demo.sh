#!/bin/bash
# The demo: sets up (scripts/setup.sh), mounts nasfs over two scratch "NAS"
# directories, writes a file through the mount, shows it landed on both NAS
# with the same size, mtime and mode, prints `nasfsctl status`; then kills the
# master "NAS" (a bindfs mount of a scratch directory), writes during the
# outage, brings the master back and shows the journal replayed onto it
# before reads return to it; and unmounts.
#
#   sudo bash scripts/demo.sh            # fresh machine: install, build, demo
#   SKIP_SETUP=1 sudo bash scripts/demo.sh   # already set up
#
# It never leaves a mount behind, even when a step fails. The scratch tree
# (/tmp/nasfs-demo) stays for you to look at; the next run starts it afresh.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEMO=/tmp/nasfs-demo
MASTER=$DEMO/master BACKUP=$DEMO/backup MNT=$DEMO/mnt

if [ -t 1 ]; then B=$'\033[1m' N=$'\033[0m'; else B='' N=''; fi
step() { printf '\n%s==> %s%s\n' "$B" "$*" "$N"; }
# Shows a command the way you would type it, then runs it.
show() {
  local a out=
  for a in "$@"; do
    if [[ $a =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=" $a"; else out+=" '${a//"'"/"'\\''"}'"; fi
  done
  printf '$%s\n' "$out"
}
run() { show "$@"; "$@"; }
die() { printf 'demo.sh: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "must run as root: sudo bash scripts/demo.sh"

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  step "Setting up: Debian packages, build, install (scripts/setup.sh)"
  bash "$REPO/scripts/setup.sh"
fi

# The installed binaries, as an administrator would use them; without an
# install (SKIP_SETUP=1 on a machine never set up), the ones in build/.
NASFS=$(command -v nasfs || echo "$REPO/build/fs/nasfs")
NASFSCTL=$(command -v nasfsctl || echo "$REPO/build/tools/nasfsctl")
[ -x "$NASFS" ] && [ -x "$NASFSCTL" ] || die "nasfs is not built: run sudo bash scripts/setup.sh"
[ -c /dev/fuse ] || die "no /dev/fuse: FUSE is not available on this machine"

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }
cleanup() {
  local rc=$?
  if is_mounted "$MNT"; then
    echo "demo.sh: cleaning up: unmounting $MNT" >&2
    umount "$MNT" 2>/dev/null || umount -l "$MNT"
  fi
  if is_mounted "$MASTER"; then umount "$MASTER" 2>/dev/null || umount -l "$MASTER"; fi
  [ "$rc" = 0 ] || echo "demo.sh: FAILED (exit $rc)" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

step "Creating two empty directories standing in for the NAS, and a mount point"
if is_mounted "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi  # left by a killed run
if is_mounted "$MASTER"; then umount "$MASTER" 2>/dev/null || umount -l "$MASTER"; fi
rm -rf --one-file-system "$DEMO"
run mkdir -p "$MASTER" "$BACKUP" "$MNT"
# The master "NAS" is a FUSE mount (bindfs) of a scratch directory, so the
# demo can kill it the way a NAS dies, and mount it again.
BINDFS=$(command -v bindfs || true)
if [ -n "$BINDFS" ]; then
  run mkdir -p "$DEMO/master-store"
  run "$BINDFS" "$DEMO/master-store" "$MASTER"
fi

step "Mounting nasfs: reads from the master, every write to both"
# journal= keeps everything of the demo under $DEMO (the default is
# /var/lib/nasfs/<mount id>); the control socket keeps its default place in
# /run/nasfs, where nasfsctl finds it.
run "$NASFS" "$MASTER:$BACKUP" "$MNT" -o journal="$DEMO/journal"
echo "nasfs returned: the mount is ready."
run findmnt -t fuse.nasfs --mountpoint "$MNT"

step "Writing a file and a directory through the mount"
msg="Hello from nasfs, written at $(date -u +%FT%TZ)"
printf '$ echo "%s" > %s/hello.txt\n' "$msg" "$MNT"
echo "$msg" > "$MNT/hello.txt"
run mkdir "$MNT/images"
printf '$ head -c 64K /dev/urandom > %s/images/logo.bin\n' "$MNT"
head -c 64K /dev/urandom > "$MNT/images/logo.bin"
run ls -l "$MNT" "$MNT/images"

step "The file is on both NAS: same content, same size, mtime and mode"
for nas in "$MASTER" "$BACKUP"; do
  run cat "$nas/hello.txt"
  run stat -c '%n %s %y %a %U' "$nas/hello.txt" "$nas/images/logo.bin"
done
if cmp -s "$MASTER/hello.txt" "$BACKUP/hello.txt" && cmp -s "$MASTER/images/logo.bin" "$BACKUP/images/logo.bin" &&
   [ "$(stat -c '%s %Y %a' "$MASTER/hello.txt")" = "$(stat -c '%s %Y %a' "$BACKUP/hello.txt")" ]; then
  echo "OK: master and backup hold identical files."
else
  die "master and backup differ"
fi
echo "(Each NAS also holds .nasfs/, nasfs's identity marker; it is invisible through the mount:)"
run ls -A "$MASTER" "$MNT"

step "nasfsctl status (for people)"
run "$NASFSCTL" status "$MNT"

step "nasfsctl status --json (for scripts and monitoring)"
run "$NASFSCTL" status "$MNT" --json

step "nasfsctl journal and verify: nothing pending, both NAS identical"
run "$NASFSCTL" journal "$MNT"
run "$NASFSCTL" verify "$MNT" || die "nasfsctl verify found differences"

# Polls nasfsctl status --json until the Python expression on j holds.
wait_status() {
  local expr=$1 secs=$2 i
  for ((i = 0; i < secs * 10; i++)); do
    if "$NASFSCTL" status "$MNT" --json 2>/dev/null |
      python3 -c "import json,sys; j=json.load(sys.stdin); j=j[0] if isinstance(j, list) else j; sys.exit(0 if ($expr) else 1)"; then
      return 0
    fi
    sleep 0.1
  done
  return 1
}

if [ -n "$BINDFS" ]; then
  step "A master outage: its server killed (a dead mount, like a NAS gone)"
  run pkill -KILL -f "bindfs $DEMO/master-store"
  wait_status 'j["read_from"] == "backup"' 10 || die "reads did not move to the backup"
  echo "Reads moved to the backup; the site keeps serving:"
  run cat "$MNT/hello.txt"
  echo "written during the master outage" > "$MNT/outage.txt"
  show echo "written during the master outage" '>' "$MNT/outage.txt"
  run mv "$MNT/images" "$MNT/media"
  echo "What the master lacks is in the journal (durable before each write was acknowledged):"
  run "$NASFSCTL" journal "$MNT"

  step "The master comes back: its journal is replayed onto it before reads return"
  run umount -l "$MASTER"
  run "$BINDFS" "$DEMO/master-store" "$MASTER"
  wait_status 'j["read_from"] == "master" and j["journal"]["pending"] == 0' 30 ||
    die "the master did not come back within 30 s"
  "$NASFSCTL" status "$MNT" --json | python3 -c '
import json, sys
j = json.load(sys.stdin)
r = j["journal"]["replay"]
print("read_from %s, journal pending %d; replay onto the %s: %d changes in %.2f s" % (
    j["read_from"], j["journal"]["pending"], r["target"], r["done"], r["seconds"]))'
  run ls "$MASTER"
  run "$NASFSCTL" verify "$MNT" || die "nasfsctl verify found differences after the replay"
fi

step "Unmounting"
run umount "$MNT"
is_mounted "$MNT" && die "$MNT is still mounted"
echo "Unmounted. The NAS directories keep the files:"
run ls -l "$MASTER" "$BACKUP"

step "Demo done. Next: sudo bash scripts/test.sh (the test suite), README.md (fstab, nginx)"
