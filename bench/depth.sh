#!/bin/bash
# Cost against path depth (issue 10, item 9): how long one create takes at
# the bottom of a chain of directories (on the plain directory, through
# nasfs with both NAS up, and through nasfs with the backup down, when every
# write is also recorded in the journal), and how long `nasfsctl verify`
# takes over a chain of 2,000. Rounds are interleaved; medians are printed.
# Linear growth is the goal: depth 1,500 costs a few times depth 10, not
# hundreds.
#
#   sudo bash bench/depth.sh [--rounds N] [--nasfs PATH] [--nasfsctl PATH]
#
# Two mounts in a scratch workspace: mnt over two plain directories, and
# out over a plain master and a bindfs backup that is killed before any
# chain is made (bindfs itself refuses paths longer than PATH_MAX, so it
# must never see one). Prints one line per depth:
#   depth=D create_ms: direct=.. nasfs=.. outage=.. ratio=..  (nasfs/direct)
# and one line for verify.
set -euo pipefail

ROUNDS=3
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NASFS=${NASFS:-$REPO/build/fs/nasfs}
NASFSCTL=${NASFSCTL:-$REPO/build/tools/nasfsctl}
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --nasfs) NASFS=$2; shift 2 ;;
    --nasfsctl) NASFSCTL=$2; shift 2 ;;
    -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "depth.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "depth.sh: must run as root (it mounts)" >&2; exit 2; }

W=$(mktemp -d /tmp/nasfs-depth.XXXXXX)
cleanup() {
  umount "$W/mnt" 2>/dev/null || umount -l "$W/mnt" 2>/dev/null || true
  umount "$W/out" 2>/dev/null || umount -l "$W/out" 2>/dev/null || true
  umount "$W/backup2" 2>/dev/null || umount -l "$W/backup2" 2>/dev/null || true
  rm -rf --one-file-system "$W"
}
trap cleanup EXIT
mkdir -p "$W/master" "$W/backup" "$W/mnt" "$W/direct" "$W/master2" "$W/backup2" "$W/backup2.raw" "$W/out"
bindfs "$W/backup2.raw" "$W/backup2"
"$NASFS" "$W/master:$W/backup" "$W/mnt" -o "control=$W/ctl.sock,journal=$W/journal"
"$NASFS" "$W/master2:$W/backup2" "$W/out" -o "control=$W/ctl2.sock,journal=$W/journal2"

# Makes a chain of `depth` directories under root (names d0000...), then
# times `reps` creates of new files at its bottom; prints the median ms.
python3 - "$W" "$ROUNDS" "$NASFSCTL" <<'EOF'
import json, os, signal, sys, time, statistics, subprocess
w, rounds, nasfsctl = sys.argv[1], int(sys.argv[2]), sys.argv[3]
DEPTHS = (10, 500, 1500)

def chain(root, depth):
    fd = os.open(root, os.O_DIRECTORY)
    for i in range(depth):
        name = "d%04d" % i
        try:
            os.mkdir(name, dir_fd=fd)
        except FileExistsError:
            pass
        nfd = os.open(name, os.O_DIRECTORY, dir_fd=fd)
        os.close(fd)
        fd = nfd
    return fd

def create_ms(root, depth, tag):
    fd = chain(root, depth)
    times = []
    for k in range(20):
        t0 = time.perf_counter()
        f = os.open("f-%s-%d" % (tag, k), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644, dir_fd=fd)
        times.append((time.perf_counter() - t0) * 1000)
        os.close(f)
    os.close(fd)
    return statistics.median(times)

results = {d: {"direct": [], "nasfs": []} for d in DEPTHS}
for depth in DEPTHS:
    for r in range(rounds):
        results[depth]["direct"].append(create_ms(w + "/direct", depth, "r%d" % r))
        results[depth]["nasfs"].append(create_ms(w + "/mnt", depth, "r%d" % r))

# verify over a chain of 2,000 directories (each holds the next).
os.makedirs(w + "/mnt/v", exist_ok=True)
fd = chain(w + "/mnt/v", 2000)
os.close(fd)
times = []
for r in range(rounds):
    t0 = time.perf_counter()
    p = subprocess.run([nasfsctl, "verify", w + "/mnt"], capture_output=True, text=True)
    times.append(time.perf_counter() - t0)
    if p.returncode != 0:
        print("verify failed:", p.stdout[-500:], p.stderr[-500:])
verify_s = statistics.median(times)

# The backup down: every create is also recorded in the journal.
def backup_state():
    p = subprocess.run([nasfsctl, "status", w + "/out", "--json"], capture_output=True, text=True)
    return [b["state"] for b in json.loads(p.stdout)["backends"] if b["role"] == "backup"][0]
pid = int(subprocess.check_output(["pgrep", "-f", "^bindfs " + w + "/backup2.raw"]).split()[0])
os.kill(pid, signal.SIGKILL)
for _ in range(300):
    if backup_state() != "healthy":
        break
    time.sleep(0.1)
else:
    sys.exit("depth.sh: the backup of %s/out never left healthy" % w)
for depth in DEPTHS:
    results[depth]["outage"] = [create_ms(w + "/out", depth, "o%d" % r) for r in range(rounds)]
if backup_state() == "healthy":
    sys.exit("depth.sh: the backup of %s/out came back during the outage phase" % w)

med = lambda xs: statistics.median(xs)
for depth in DEPTHS:
    r = results[depth]
    d, n, o = med(r["direct"]), med(r["nasfs"]), med(r["outage"])
    print("depth=%d create_ms: direct=%.3f nasfs=%.3f outage=%.3f ratio=%.1f  (rounds: nasfs %s; outage %s)" % (
        depth, d, n, o, n / d if d else 0, " ".join("%.3f" % x for x in r["nasfs"]),
        " ".join("%.3f" % x for x in r["outage"])))
print("verify of 2000 nested directories (plus the chains above): median %.2f s (rounds: %s)" % (
    verify_s, " ".join("%.2f" % x for x in times)))
EOF
