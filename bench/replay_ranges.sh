#!/bin/bash
# What a replay copies for a large file with a small change: a SIZE_MIB file
# (default 256) written through nasfs, the master killed (a bindfs mount, so
# it dies the way a NAS does), a 4 KiB write into the file during the outage,
# the master mounted again. Prints the journal entry, the time to switch
# back, the bytes the replay copied and the file's size: the ratio
# copied/size is what the ranged replay saves over a whole-file copy.
#
#   sudo bash bench/replay_ranges.sh [SIZE_MIB]   (run from the repo, after a build)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NASFS=$REPO/build/fs/nasfs NASFSCTL=$REPO/build/tools/nasfsctl
case "${1:-}" in
  -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  ''|*[!0-9]*) [ -z "${1:-}" ] || { echo "replay_ranges.sh: SIZE_MIB must be a number of MiB, not '$1'" >&2; exit 2; } ;;
esac
SIZE_MIB=${1:-256}
W=$(mktemp -d /var/tmp/nasfs-replay-bench.XXXXXX)
source "$REPO/bench/lib.sh"
trap bench_cleanup EXIT
mkdir -p "$W/store" "$W/master" "$W/backup" "$W/mnt"
bindfs "$W/store" "$W/master"
"$NASFS" "$W/master:$W/backup" "$W/mnt" -o "control=$W/ctl.sock,journal=$W/journal"

head -c "${SIZE_MIB}M" /dev/urandom > "$W/mnt/big.bin"
pkill -KILL -f "bindfs $W/store"
wait_for 'j["read_from"]' backup
dd if=/dev/urandom of="$W/mnt/big.bin" bs=4k count=1 seek=12345 conv=notrunc status=none
"$NASFSCTL" journal "$W/mnt"
umount -l "$W/master"
t0=$(date +%s.%N)
bindfs "$W/store" "$W/master"
wait_for 'j["read_from"]' master
t1=$(date +%s.%N)
copied=$(st 'j["journal"]["replay"]["bytes_copied"]')
secs=$(st 'j["journal"]["replay"]["seconds"]')
cmp -s "$W/store/big.bin" "$W/backup/big.bin" || { echo "master and backup differ after the replay" >&2; exit 1; }
awk -v c="$copied" -v s="$SIZE_MIB" -v r="$secs" -v a="$t0" -v b="$t1" 'BEGIN {
  printf "file %d MiB, 4 KiB changed during the outage: replay copied %d bytes (%.6f of the file) in %.3f s; reads back on the master %.2f s after it returned (probes included)\n", s, c, c / (s * 1048576), r, b - a }'
