#!/bin/bash
# Cost against path depth on a slow NAS (issue 10, item 9; the hour soak's
# latency class): one stat of a file D directories deep, by its full path,
# once nasfs's names have expired from the kernel's cache, so the kernel
# looks up every directory on the way again. The master is faultfs with
# every call 5 ms late and no name cached (like an NFS server answering
# slowly to a client that revalidates); the backup is a plain directory.
#
#   sudo bash bench/slow_depth.sh [--rounds N] [--delay-ms MS] [--nasfs PATH] [--faultfs PATH]
#
# For each depth it prints the median stat time through nasfs and directly
# through the slow NAS's mount, and their ratio. The NAS itself pays one
# slow lookup per directory; nasfs used to resolve each directory's whole
# path from the NAS root for each of those lookups (depth squared); with its
# directory fd cache each lookup costs one or two.
set -euo pipefail

ROUNDS=5
DELAY=5
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NASFS=${NASFS:-$REPO/build/fs/nasfs}
FAULTFS=${FAULTFS:-$REPO/build/tests/faultfs}
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --delay-ms) DELAY=$2; shift 2 ;;
    --nasfs) NASFS=$2; shift 2 ;;
    --faultfs) FAULTFS=$2; shift 2 ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "slow_depth.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "slow_depth.sh: must run as root (it mounts)" >&2; exit 2; }
for b in "$NASFS" "$FAULTFS"; do [ -x "$b" ] || { echo "slow_depth.sh: $b is not built" >&2; exit 2; }; done

W=$(mktemp -d /tmp/nasfs-slowdepth.XXXXXX)
cleanup() {
  umount "$W/mnt" 2>/dev/null || umount -l "$W/mnt" 2>/dev/null || true
  umount "$W/master" 2>/dev/null || umount -l "$W/master" 2>/dev/null || true
  rm -rf --one-file-system "$W"
}
trap cleanup EXIT
mkdir -p "$W/master.raw" "$W/master" "$W/backup" "$W/mnt"
: > "$W/faults"
"$FAULTFS" -o "ctl=$W/faults" "$W/master.raw" "$W/master"
# cache_timeout 0.2 s: the kernel's names (and nasfs's directory fds, which
# live as long) expire between the timed stats, as they do between a web
# server's requests a second apart.
"$NASFS" "$W/master:$W/backup" "$W/mnt" -o "control=$W/ctl.sock,journal=$W/journal,cache_timeout=0.2,io_timeout=5000"

python3 - "$W" "$ROUNDS" "$DELAY" <<'EOF'
import os, statistics, sys, time
w, rounds, delay = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
DEPTHS = (1, 10, 25)
paths = {}
for d in DEPTHS:
    rel = "/".join("d%d_%02d" % (d, i) for i in range(d))
    os.makedirs(w + "/mnt/" + rel, exist_ok=True)
    with open(w + "/mnt/" + rel + "/f", "w") as f:
        f.write("x")
    paths[d] = rel + "/f"
# Every NAS call 5 ms late from here on (written by rename: faultfs rereads it).
with open(w + "/faults.tmp", "w") as f:
    f.write("delay_ms=%d\n" % delay)
os.rename(w + "/faults.tmp", w + "/faults")

def stat_ms(path):
    time.sleep(0.25)  # the names expire
    t0 = time.perf_counter()
    os.stat(path)
    return (time.perf_counter() - t0) * 1000

res = {d: {"nasfs": [], "nas": []} for d in DEPTHS}
for r in range(rounds):
    for d in DEPTHS:
        res[d]["nasfs"].append(stat_ms(w + "/mnt/" + paths[d]))
        res[d]["nas"].append(stat_ms(w + "/master/" + paths[d]))
for d in DEPTHS:
    n, m = statistics.median(res[d]["nasfs"]), statistics.median(res[d]["nas"])
    print("depth=%d stat_ms (names expired, NAS %d ms late per call): nasfs=%.1f nas=%.1f ratio=%.2f  (rounds: nasfs %s)" % (
        d, delay, n, m, n / m if m else 0, " ".join("%.1f" % x for x in res[d]["nasfs"])))
EOF
