#!/bin/bash
# How long writes wait while a replay runs (issue 10: "bound every pause of
# writes, one second is the goal"). The master (a bindfs mount, so it dies
# the way a NAS does) is killed; during the outage a SIZE_MIB file (default
# 512) and 2,000 small files are written, so the replay has a large copy
# and many entries; the master is mounted again. Two writers run at a
# steady pace the whole time, each timing every call:
#   other  create+write+close of 4 KiB files in a directory the replay
#          does not touch (what a site's uploads do)
#   same   4 KiB pwrite into the big file itself, a pending path (the
#          hardest case: the replay must copy what this write changes)
# Prints, per writer, the median, p99 and max of its calls before the
# outage (baseline) and from the master's return until reads are back on
# it (during the replay), over ROUNDS rounds (default 3), each a fresh
# mount. --old PATH runs another nasfs build in the same rounds (each round
# runs both, one after the other), so the two compare on one machine state.
#
#   sudo bash bench/write_pause.sh [--rounds N] [--size-mib N] [--old PATH/TO/nasfs]
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NASFS=$REPO/build/fs/nasfs NASFSCTL=$REPO/build/tools/nasfsctl
ROUNDS=3 SIZE_MIB=512 OLD=
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --size-mib) SIZE_MIB=$2; shift 2 ;;
    --old) OLD=${2:-}; shift 2 ;;
    -h|--help) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "write_pause.sh: unknown argument '$1' (--rounds N, --size-mib N, --old PATH)" >&2; exit 2 ;;
  esac
done
[ -x "$NASFS" ] || { echo "write_pause.sh: build first ($NASFS missing)" >&2; exit 1; }
[ -z "$OLD" ] || [ -x "$OLD" ] || { echo "write_pause.sh: --old $OLD is not an executable" >&2; exit 2; }
BUILDS=new
[ -z "$OLD" ] || BUILDS="new old"
command -v bindfs >/dev/null || { echo "write_pause.sh: needs bindfs" >&2; exit 1; }
source "$REPO/bench/lib.sh"
ALL=$(mktemp -d /var/tmp/nasfs-pause-bench.XXXXXX)
W=
cleanup() {
  [ -n "${WRITERS:-}" ] && kill $WRITERS 2>/dev/null
  [ -n "$W" ] && bench_cleanup
  wait 2>/dev/null
  rm -rf "$ALL"
}
trap cleanup EXIT

# A writer: one call every 10 ms, each timed; "t_start t_seconds" per line.
writer() {  # kind dir file out
  exec python3 - "$@" <<'EOF'
import os, sys, time
kind, d, big, out = sys.argv[1:5]
buf = os.urandom(4096)
n = 0
with open(out, "w", buffering=1) as log:
    while True:
        t0 = time.monotonic()
        try:
            if kind == "other":
                fd = os.open(f"{d}/w{n % 500}", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                os.write(fd, buf)
                os.close(fd)
            else:
                fd = os.open(big, os.O_WRONLY)
                os.pwrite(fd, buf, (n % 1000) * 65536)
                os.close(fd)
            ok = 1
        except OSError:
            ok = 0
        t1 = time.monotonic()
        log.write(f"{t0:.6f} {t1 - t0:.6f} {ok}\n")
        n += 1
        time.sleep(max(0.0, 0.01 - (t1 - t0)))
EOF
}

# Median, p99, max (ms) and failures of the calls that began in [from, to).
stats() {  # file from to
  awk -v a="$2" -v b="$3" '$1 >= a && $1 < b { print $2 * 1000, $3 }' "$1" | sort -n |
    awk '{ v[++n] = $1; f += ($2 == 0) }
      END { if (n == 0) { print "no calls"; exit }
            printf "%d calls, median %.2f ms, p99 %.2f ms, max %.1f ms, %d failed", n, v[int(n * 0.5) + 1], v[int(n * 0.99) + 1], v[n], f }'
}
now() { python3 -c 'import time; print(f"{time.monotonic():.6f}")'; }

for round in $(seq "$ROUNDS"); do
  for build in $BUILDS; do
    bin=$NASFS; [ "$build" = old ] && bin=$OLD
    W=$ALL/r$round-$build
    mkdir -p "$W/store" "$W/master" "$W/backup" "$W/mnt"
    bindfs "$W/store" "$W/master"
    "$bin" "$W/master:$W/backup" "$W/mnt" -f -o "control=$W/ctl.sock,journal=$W/journal" 2>"$ALL/nasfs-r$round-$build.log" &
    for _ in $(seq 100); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
    mountpoint -q "$W/mnt" || { cat "$ALL/nasfs-r$round-$build.log" >&2; exit 1; }
    mkdir "$W/mnt/uploads" "$W/mnt/site"
    head -c "${SIZE_MIB}M" /dev/zero > "$W/mnt/site/big.bin"
    writer other "$W/mnt/uploads" "$W/mnt/site/big.bin" "$W/other.log" &
    WRITERS=$!
    writer same "$W/mnt/uploads" "$W/mnt/site/big.bin" "$W/same.log" &
    WRITERS="$WRITERS $!"
    b0=$(now); sleep 3; b1=$(now)
    pkill -KILL -f "bindfs $W/store"
    wait_for 'j["read_from"]' backup
    # The outage's changes: the big file rewritten whole, 2,000 small files.
    head -c "${SIZE_MIB}M" /dev/urandom > "$W/mnt/site/big.bin"
    mkdir "$W/mnt/site/many"
    for i in $(seq 2000); do echo "$i" > "$W/mnt/site/many/f$i"; done
    umount -l "$W/master"
    r0=$(now)
    bindfs "$W/store" "$W/master"
    for _ in $(seq 1200); do [ "$(st 'j["read_from"]')" = master ] && break; sleep 0.1; done
    r1=$(now)
    if [ "$(st 'j["read_from"]')" != master ]; then
      echo "round $round ($build): not back on the master within 120 s; status and the daemon's log:" >&2
      "$NASFSCTL" status "$W/mnt" >&2 || true
      tail -n 20 "$ALL/nasfs-r$round-$build.log" >&2
      exit 1
    fi
    kill $WRITERS; wait $WRITERS 2>/dev/null || true
    WRITERS=
    replayed=$(st 'j["journal"]["replay"]["bytes_copied"]')
    printf 'round %d (%s build): replay copied %d MiB; reads back on the master %.1f s after it returned\n' "$round" "$build" \
      $((replayed / 1048576)) "$(awk -v a="$r0" -v b="$r1" 'BEGIN { print b - a }')"
    for k in other same; do
      printf '  %-5s before the outage: %s\n' "$k" "$(stats "$W/$k.log" "$b0" "$b1")"
      printf '  %-5s during the replay: %s\n' "$k" "$(stats "$W/$k.log" "$r0" "$r1")"
      stats "$W/$k.log" "$r0" "$r1" | grep -Eo 'max [0-9.]+' | grep -Eo '[0-9.]+' >> "$ALL/max_${k}_$build"
    done
    cmp -s "$W/store/site/big.bin" "$W/backup/site/big.bin" || { echo "round $round ($build): the NAS differ after the replay" >&2; exit 1; }
    bench_cleanup
    W=
  done
done
for build in $BUILDS; do
  for k in other same; do
    printf 'median over %d rounds of the longest %s write during a replay (%s build): %s ms\n' "$ROUNDS" "$k" "$build" \
      "$(sort -n "$ALL/max_${k}_$build" | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }')"
  done
done
