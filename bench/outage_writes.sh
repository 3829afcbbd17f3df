#!/bin/bash
# What writing during an outage costs, and what issue 5's shared pending log
# adds to it. Each round mounts a fresh pair (the master a bindfs mount, so
# it dies the way a NAS does), kills the master, and times FILES creates of
# 4 KiB files through nasfs, with the master out. With --old BINARY it runs
# the same rounds, interleaved, on another nasfs build (e.g. one from before
# the shared log) and prints the ratio of the medians. Every round also
# times the same creates with both NAS healthy, for scale.
#
#   sudo bash bench/outage_writes.sh [--rounds N] [--files N] [--old PATH/TO/nasfs]
#   (run from the repo, after a build)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NEW=$REPO/build/fs/nasfs NASFSCTL=$REPO/build/tools/nasfsctl
OLD="" ROUNDS=3 FILES=1000
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --files) FILES=$2; shift 2 ;;
    --old) OLD=$2; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "outage_writes.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$NEW" ] || { echo "outage_writes.sh: no $NEW: build first" >&2; exit 2; }
[ -z "$OLD" ] || [ -x "$OLD" ] || { echo "outage_writes.sh: --old $OLD is not an executable" >&2; exit 2; }

W=$(mktemp -d /var/tmp/nasfs-outage-bench.XXXXXX)
source "$REPO/bench/lib.sh"
trap bench_cleanup EXIT

# files/s for FILES creates into a new directory of the mount.
creates() {
  local d=$W/mnt/$1 t0 t1
  mkdir "$d"
  t0=$(date +%s.%N)
  for i in $(seq "$FILES"); do head -c 4096 /dev/zero > "$d/f$i"; done
  t1=$(date +%s.%N)
  awk -v n="$FILES" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", n / (b - a) }'
}
# One round on binary $1: prints "healthy_files_per_s outage_files_per_s".
round() {
  bench_cleanup
  mkdir -p "$W/store" "$W/master" "$W/backup" "$W/mnt"
  bindfs "$W/store" "$W/master"
  "$1" "$W/master:$W/backup" "$W/mnt" -o "control=$W/ctl.sock,journal=$W/journal,node=bench"
  local healthy outage
  healthy=$(creates healthy)
  pkill -KILL -f "bindfs $W/store"
  wait_for 'j["read_from"]' backup
  outage=$(creates outage)
  [ "$(ls "$W/backup/outage" | wc -l)" = "$FILES" ] || { echo "the backup lacks files written during the outage" >&2; exit 1; }
  umount "$W/mnt"
  echo "$healthy $outage"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

new_h=() new_o=() old_h=() old_o=()
for r in $(seq "$ROUNDS"); do
  read -r h o < <(round "$NEW")
  new_h+=("$h") new_o+=("$o")
  line="round $r: this build: $h files/s healthy, $o files/s with the master out"
  if [ -n "$OLD" ]; then
    read -r h o < <(round "$OLD")
    old_h+=("$h") old_o+=("$o")
    line+="; --old: $h healthy, $o with the master out"
  fi
  echo "$line"
done
nh=$(printf '%s\n' "${new_h[@]}" | median) no=$(printf '%s\n' "${new_o[@]}" | median)
echo "median, this build: $nh files/s healthy, $no files/s with the master out (outage/healthy $(awk -v a="$no" -v b="$nh" 'BEGIN { printf "%.2f", a / b }'))"
if [ -n "$OLD" ]; then
  oh=$(printf '%s\n' "${old_h[@]}" | median) oo=$(printf '%s\n' "${old_o[@]}" | median)
  echo "median, --old:      $oh files/s healthy, $oo files/s with the master out"
  awk -v a="$no" -v b="$oo" -v c="$nh" -v d="$oh" 'BEGIN { printf "this build / --old: %.2f with the master out, %.2f healthy\n", a / b, c / d }'
fi
