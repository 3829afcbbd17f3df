#!/bin/bash
# How fast a replay brings a returning master back. Each round mounts a fresh
# pair (the master a bindfs mount, so it dies the way a NAS does), writes a
# tree of FILES 4 KiB files in DIRS directories through nasfs, kills the
# master, and during the outage writes FILES/2 new files into those
# directories (uploads), a new tree of FILES/2 files (a deploy) and rewrites
# FILES/4 old files; then it mounts the master again. It times the replay
# (the status's journal.replay.seconds: the copy alone, probes not counted)
# and, for scale, `cp -a` of the same new files between two plain
# directories on this disk. Rounds alternate between the replay_threads
# values given (and --old, another nasfs build run with its defaults), so
# their figures come from one run; it prints each round and, per setting,
# the medians: entries replayed, seconds, entries/s, and replay/cp (the
# replay also compares, journals and keeps links).
#
#   sudo bash bench/replay_rate.sh [--rounds N] [--files N] [--dirs N]
#              [--share PCT] [--threads "1 4"] [--old PATH/TO/nasfs]
#   (run from the repo, after a build; --share sets replay_share, default
#   100 so the figure is the replay's own speed)
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NASFS=$REPO/build/fs/nasfs NASFSCTL=$REPO/build/tools/nasfsctl
ROUNDS=3 FILES=2000 DIRS=20 SHARE=100 THREADS="1 4" OLD=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds|--files|--dirs|--share)
      [[ "${2:-}" =~ ^[1-9][0-9]*$ ]] || { echo "replay_rate.sh: $1 needs a positive number, not '${2:-}'" >&2; exit 2; }
      case "$1" in --rounds) ROUNDS=$2 ;; --files) FILES=$2 ;; --dirs) DIRS=$2 ;; --share) SHARE=$2 ;; esac
      shift 2 ;;
    --threads)
      [[ "${2:-}" =~ ^[0-9\ ]+$ ]] || { echo "replay_rate.sh: --threads needs numbers (\"1 4\"), not '${2:-}'" >&2; exit 2; }
      THREADS=$2; shift 2 ;;
    --old) OLD=${2:-}; shift 2 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "replay_rate.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ -x "$NASFS" ] || { echo "replay_rate.sh: no $NASFS: build first" >&2; exit 2; }
[ "$SHARE" -le 100 ] || { echo "replay_rate.sh: --share is a percent (1-100)" >&2; exit 2; }
[ -z "$OLD" ] || [ -x "$OLD" ] || { echo "replay_rate.sh: --old $OLD is not an executable" >&2; exit 2; }
SETTINGS=$THREADS
[ -z "$OLD" ] || SETTINGS="$SETTINGS old"

W=$(mktemp -d /var/tmp/nasfs-replay-rate.XXXXXX)
source "$REPO/bench/lib.sh"
trap bench_cleanup EXIT

# N files named $3I in $1/dK, over DIRS directories, 4 KiB each.
make_tree() {
  local root=$1 n=$2 name=$3 d i
  for d in $(seq "$DIRS"); do
    mkdir -p "$root/d$d"
    for i in $(seq $((n / DIRS))); do head -c 4096 /dev/urandom > "$root/d$d/$name$i"; done
  done
}

# One round with replay_threads=$1 (or "old": the --old build): prints
# "entries replay_seconds cp_seconds".
round() {
  bench_cleanup
  mkdir -p "$W/store" "$W/master" "$W/backup" "$W/mnt" "$W/cp"
  bindfs "$W/store" "$W/master"
  local bin=$NASFS opts="control=$W/ctl.sock,journal=$W/journal,node=bench,replay_share=$SHARE,probe_successes=1"
  if [ "$1" = old ]; then bin=$OLD; else opts="$opts,replay_threads=$1"; fi
  "$bin" "$W/master:$W/backup" "$W/mnt" -o "$opts"
  make_tree "$W/mnt/old" "$FILES" f
  pkill -KILL -f "bindfs $W/store"
  wait_for 'j["read_from"]' backup
  make_tree "$W/mnt/old" $((FILES / 2)) u
  make_tree "$W/mnt/new" $((FILES / 2)) f
  local i d
  for i in $(seq $((FILES / 4))); do
    d=$(( (i % DIRS) + 1 ))
    head -c 4096 /dev/urandom > "$W/mnt/old/d$d/f$(( (i / DIRS) + 1 ))"
  done
  umount -l "$W/master"
  bindfs "$W/store" "$W/master"
  for _ in $(seq 1200); do [ "$(st 'j["read_from"]')" = master ] && break; sleep 0.1; done
  [ "$(st 'j["read_from"]')" = master ] || { echo "replay_rate.sh: no switch-back within 120 s" >&2; exit 1; }
  local n secs
  n=$(st 'j["journal"]["replay"]["done"]')
  secs=$(st 'j["journal"]["replay"]["seconds"]')
  diff -r "$W/store/new" "$W/backup/new" >/dev/null && diff -r "$W/store/old" "$W/backup/old" >/dev/null ||
    { echo "replay_rate.sh: master and backup differ after the replay" >&2; exit 1; }
  sync
  local t0 t1
  t0=$(date +%s.%N)
  cp -a "$W/backup/new" "$W/cp/new"
  mkdir "$W/cp/old"
  for d in $(seq "$DIRS"); do cp -a "$W/backup/old/d$d"/u* "$W/cp/old/"; done
  t1=$(date +%s.%N)
  umount "$W/mnt"
  echo "$n $secs $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')"
}
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

declare -A rates ratios secs_all
printf '%-6s %7s %8s %9s %10s %8s %9s\n' round setting entries replay_s entries/s cp_s replay/cp
for r in $(seq "$ROUNDS"); do
  for t in $SETTINGS; do
    read -r n s c < <(round "$t")
    rate=$(awk -v n="$n" -v s="$s" 'BEGIN { printf "%.0f", n / s }')
    ratio=$(awk -v s="$s" -v c="$c" 'BEGIN { printf "%.1f", s / c }')
    printf '%-6s %7s %8s %9.2f %10s %8s %9s\n' "$r" "$t" "$n" "$s" "$rate" "$c" "$ratio"
    rates[$t]+="$rate " ratios[$t]+="$ratio " secs_all[$t]+="$s "
  done
done
for t in $SETTINGS; do
  printf 'median, %s: replay %.2f s, %s entries/s, replay/cp %s (entries/s from %s to %s)\n' "$([ "$t" = old ] && echo "the --old build" || echo "replay_threads=$t")" \
    "$(printf '%s\n' ${secs_all[$t]} | median)" "$(printf '%s\n' ${rates[$t]} | median)" \
    "$(printf '%s\n' ${ratios[$t]} | median)" \
    "$(printf '%s\n' ${rates[$t]} | sort -n | head -1)" "$(printf '%s\n' ${rates[$t]} | sort -n | tail -1)"
done
