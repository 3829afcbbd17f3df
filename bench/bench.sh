#!/bin/bash
# nasfs benchmarks, direct vs through nasfs, all on this machine (loopback):
#   (a) nginx requests/s over a tree of small files (wrk, random paths)
#   (b) sequential write (with fdatasync) and cold sequential read
#   (c) a burst of small-file creations
# Every figure is the median of --rounds rounds; the table gives
# direct, nasfs and nasfs/direct.
#
#   sudo bash bench/bench.sh [--rounds N] [--nasfs PATH] [options]
#
# Options:
#   --rounds N        rounds per measurement, median reported (default 5)
#   --nasfs PATH      the nasfs binary (default build/fs/nasfs)
#   --dir DIR         scratch directory, on the disk to measure; it must not be
#                     a tmpfs (default /var/tmp/nasfs-bench, removed afterwards)
#   --files N         files in the nginx tree (default 1000, 1-16 KiB each)
#   --size-mib N      sequential file size (default 256)
#   --creates N       files per creation burst (default 2000)
#   --duration S      wrk seconds per run (default 5)
#   --threads T --connections C   wrk -t/-c (default 2 / 32)
#   --port P          nginx ports P (direct) and P+1 (nasfs) on 127.0.0.1 (default 18080)
#   --keep            keep the scratch directory
#
# "direct" is the plain directory the master NAS stands for; "nasfs" is the
# nasfs mount over that master and a backup directory on the same disk. nasfs
# writes every byte and creates every file TWICE (master and backup), so on
# one disk the write figures compare one copy with two.
#
# Cleanup is a trap: nginx (started here, stopped by its pid) and the nasfs
# mount never outlive the script.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
ROUNDS=5 NASFS="$REPO/build/fs/nasfs" DIR=/var/tmp/nasfs-bench FILES=1000 SIZE_MIB=256
CREATES=2000 DURATION=5 WRK_T=2 WRK_C=32 PORT=18080 KEEP=0

usage() { sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --rounds) ROUNDS=$2; shift ;;
    --nasfs) NASFS=$2; shift ;;
    --dir) DIR=$2; shift ;;
    --files) FILES=$2; shift ;;
    --size-mib) SIZE_MIB=$2; shift ;;
    --creates) CREATES=$2; shift ;;
    --duration) DURATION=$2; shift ;;
    --threads) WRK_T=$2; shift ;;
    --connections) WRK_C=$2; shift ;;
    --port) PORT=$2; shift ;;
    --keep) KEEP=1 ;;
    -h|--help) usage 0 ;;
    *) echo "bench.sh: unknown argument '$1'" >&2; usage 2 >&2 ;;
  esac
  shift
done

die() { echo "bench.sh: $*" >&2; exit 1; }
log() { printf '[%s] %s\n' "$(date +%T)" "$*" >&2; }
for n in "$ROUNDS" "$FILES" "$SIZE_MIB" "$CREATES" "$DURATION" "$WRK_T" "$WRK_C" "$PORT"; do
  [[ $n =~ ^[1-9][0-9]*$ ]] || die "'$n' is not a positive integer"
done
[ "$(id -u)" = 0 ] || die "must run as root (mount, drop_caches)"
[ -c /dev/fuse ] || die "no /dev/fuse"
[ -x "$NASFS" ] || die "no nasfs binary at $NASFS (build it: sudo bash scripts/setup.sh, or pass --nasfs)"
NASFS=$(readlink -f "$NASFS")
for tool in nginx wrk dd findmnt python3; do command -v "$tool" >/dev/null || die "$tool is missing (sudo bash scripts/setup.sh)"; done
case $DIR in /|/tmp|/var/tmp|"") die "--dir must be a dedicated directory, not '$DIR'" ;; esac
umask 022

MASTER=$DIR/master BACKUP=$DIR/backup MNT=$DIR/mnt DIRECT=$DIR/direct NGX=$DIR/nginx
NGINX_PID=

is_mounted() { findmnt -rn --mountpoint "$1" >/dev/null 2>&1; }
stop_nginx() {
  local pid=${NGINX_PID:-}
  [ -n "$pid" ] || { [ -f "$NGX/nginx.pid" ] && pid=$(cat "$NGX/nginx.pid" 2>/dev/null); } || true
  [ -n "$pid" ] || return 0
  # Only the nginx this script started (its command line names our config).
  grep -qF "$NGX/nginx.conf" "/proc/$pid/cmdline" 2>/dev/null || { NGINX_PID=; return 0; }
  kill -QUIT "$pid" 2>/dev/null || true
  for _ in $(seq 50); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ -d "/proc/$pid" ] && kill -TERM "$pid" 2>/dev/null
  for _ in $(seq 30); do [ -d "/proc/$pid" ] || break; sleep 0.1; done
  [ -d "/proc/$pid" ] && kill -KILL "$pid" 2>/dev/null
  NGINX_PID=
}
cleanup() {
  local rc=$?
  stop_nginx || true
  if is_mounted "$MNT"; then timeout 20 umount "$MNT" 2>/dev/null || umount -l "$MNT" || true; fi
  if [ "$KEEP" = 0 ] && [ -d "$DIR" ] && ! is_mounted "$MNT"; then rm -rf --one-file-system "$DIR"; fi
  [ "$rc" = 0 ] || echo "bench.sh: FAILED (exit $rc); cleaned up" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

# ---- helpers ---------------------------------------------------------------

now() { echo "$EPOCHREALTIME"; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.6f", b - a }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ v[NR] = $1 } END { if (NR == 0) print "nan"; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
DROP_CACHES=1
drop_caches() {
  sync
  if [ "$DROP_CACHES" = 1 ] && ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
    DROP_CACHES=0
    log "warning: cannot write /proc/sys/vm/drop_caches: reads may come from the page cache"
  fi
}
# status code of GET http://127.0.0.1:PORT/PATH (bash's /dev/tcp; no curl needed)
http_status() {
  local line
  exec 9<>"/dev/tcp/127.0.0.1/$1" || return 1
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&9
  IFS= read -r -t 5 line <&9 || line=
  exec 9<&- 9>&-
  line=${line%$'\r'}; echo "${line#* }" | cut -d' ' -f1
}

declare -A R  # R[metric/target] = "v1 v2 ..."
add() { R[$1/$2]+="$3 "; }

# ---- setup -------------------------------------------------------------------

log "scratch dir $DIR; nasfs $NASFS"
if is_mounted "$MNT"; then umount "$MNT" 2>/dev/null || umount -l "$MNT"; fi  # a killed earlier run
stop_nginx
rm -rf --one-file-system "$DIR"
mkdir -p "$(dirname "$DIR")"
# 0755 all the way: nginx's workers (www-data) must reach the files.
mkdir -m 0755 "$DIR" "$MASTER" "$BACKUP" "$MNT" "$DIRECT" "$NGX" "$NGX/tmp"
FSTYPE=$(findmnt -rn -o FSTYPE -T "$DIR")
[ "$FSTYPE" != tmpfs ] || die "$DIR is on tmpfs; pass --dir on a real disk"

log "mounting nasfs $MASTER:$BACKUP on $MNT"
"$NASFS" "$MASTER:$BACKUP" "$MNT" -o "journal=$DIR/journal,control=$DIR/control.sock"
is_mounted "$MNT" || die "nasfs returned but nothing is mounted at $MNT"

log "writing $FILES files of 1-16 KiB through nasfs (so master and backup both hold them)"
python3 - "$MNT/www" "$FILES" "$DIR/urls.txt" <<'EOF'
import os, random, sys
root, n, urls = sys.argv[1], int(sys.argv[2]), sys.argv[3]
rng = random.Random(42)
blob = os.urandom(16384)
ndirs = max(1, n // 50)
paths = []
for i in range(n):
    rel = f"d{i % ndirs:03d}/f{i:05d}.html"
    os.makedirs(os.path.join(root, os.path.dirname(rel)), exist_ok=True)
    with open(os.path.join(root, rel), "wb") as f:
        f.write(blob[: rng.randint(1024, 16384)])
    paths.append("/" + rel)
with open(urls, "w") as f:
    f.write("\n".join(paths) + "\n")
EOF
cmp -s "$MASTER/www/d000/f00000.html" "$BACKUP/www/d000/f00000.html" || die "the tree did not reach both NAS"

cat > "$NGX/nginx.conf" <<EOF
# generated by bench/bench.sh
user www-data;
worker_processes auto;
pid $NGX/nginx.pid;
error_log $NGX/error.log warn;
events { worker_connections 1024; }
http {
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    client_body_temp_path $NGX/tmp/body;
    proxy_temp_path $NGX/tmp/proxy;
    fastcgi_temp_path $NGX/tmp/fastcgi;
    uwsgi_temp_path $NGX/tmp/uwsgi;
    scgi_temp_path $NGX/tmp/scgi;
    # open_file_cache stays off: every request reaches the file system.
    server { listen 127.0.0.1:$PORT;       root $MASTER/www; }   # direct
    server { listen 127.0.0.1:$((PORT + 1)); root $MNT/www; }      # nasfs
}
EOF
nginx -t -q -c "$NGX/nginx.conf" || die "nginx config test failed"
nginx -c "$NGX/nginx.conf" || die "nginx did not start (ports $PORT/$((PORT + 1)) busy?)"
for _ in $(seq 50); do [ -s "$NGX/nginx.pid" ] && break; sleep 0.1; done
NGINX_PID=$(cat "$NGX/nginx.pid")
log "nginx $NGINX_PID on 127.0.0.1:$PORT (direct) and :$((PORT + 1)) (nasfs)"
for p in "$PORT" "$((PORT + 1))"; do
  s=$(http_status "$p" /d000/f00000.html)
  [ "$s" = 200 ] || die "GET http://127.0.0.1:$p/d000/f00000.html gave '${s:-nothing}' (see $NGX/error.log)"
done

cat > "$DIR/random-paths.lua" <<EOF
-- wrk: GET a random path of the tree on every request
local paths = {}
for line in io.lines("$DIR/urls.txt") do paths[#paths + 1] = line end
math.randomseed(os.time())
request = function()
  return wrk.format("GET", paths[math.random(#paths)])
end
EOF

# ---- the measurements ----------------------------------------------------------

WRK_ERRORS=0 WRK_RPS=
run_wrk() {  # port seconds -> WRK_RPS (requests/s); not in a subshell, so die() and WRK_ERRORS work
  local out
  out=$(wrk -t"$WRK_T" -c"$WRK_C" -d"$2"s -s "$DIR/random-paths.lua" "http://127.0.0.1:$1/" 2>&1) \
    || { echo "$out" >&2; die "wrk failed"; }
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    WRK_ERRORS=1
    log "warning: wrk on port $1 saw errors: $(grep -E 'Non-2xx|Socket errors' <<<"$out" | tr -s ' ' | tr '\n' ' ')"
  fi
  WRK_RPS=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  [ -n "$WRK_RPS" ] || { echo "$out" >&2; die "no Requests/sec in wrk's output"; }
}
bench_nginx() {  # target
  local port=$PORT; [ "$1" = nasfs ] && port=$((PORT + 1))
  run_wrk "$port" "$DURATION"
  add nginx "$1" "$WRK_RPS"
}
bench_seq() {  # target dir
  local f=$2/seq.bin t0 t1
  rm -f "$f"; drop_caches
  t0=$(now); dd if=/dev/zero of="$f" bs=1M count="$SIZE_MIB" conv=fdatasync status=none; t1=$(now)
  add seqwrite "$1" "$(awk -v s="$SIZE_MIB" -v t="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", s / t }')"
  drop_caches
  t0=$(now); dd if="$f" of=/dev/null bs=1M status=none; t1=$(now)
  add seqread "$1" "$(awk -v s="$SIZE_MIB" -v t="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.1f", s / t }')"
  rm -f "$f"
}
bench_creates() {  # target dir round
  local d=$2/creates.$3 i t0 t1
  mkdir "$d"; sync
  t0=$(now)
  for ((i = 0; i < CREATES; i++)); do printf 'file %d\n' "$i" > "$d/f$i"; done
  t1=$(now)
  add creates "$1" "$(awk -v n="$CREATES" -v t="$(elapsed "$t0" "$t1")" 'BEGIN { printf "%.0f", n / t }')"
  rm -rf "$d"
}

log "warming up (nginx 2 s each side, not counted)"
run_wrk "$PORT" 2; run_wrk "$((PORT + 1))" 2

for ((r = 1; r <= ROUNDS; r++)); do
  # Alternate which side goes first, so neither always gets the warmer machine.
  if ((r % 2)); then order="direct nasfs"; else order="nasfs direct"; fi
  log "round $r/$ROUNDS ($order)"
  for t in $order; do bench_nginx "$t"; done
  for t in $order; do if [ "$t" = direct ]; then bench_seq direct "$DIRECT"; else bench_seq nasfs "$MNT"; fi; done
  for t in $order; do if [ "$t" = direct ]; then bench_creates direct "$DIRECT" "$r"; else bench_creates nasfs "$MNT" "$r"; fi; done
done

# ---- report ----------------------------------------------------------------------

label() {
  case $1 in
    nginx) echo "nginx GET, $FILES files 1-16 KiB (wrk -t$WRK_T -c$WRK_C -d${DURATION}s)|req/s" ;;
    seqwrite) echo "sequential write $SIZE_MIB MiB (dd bs=1M, fdatasync)|MiB/s" ;;
    seqread) echo "sequential read $SIZE_MIB MiB, cold cache (dd bs=1M)|MiB/s" ;;
    creates) echo "file creation burst, $CREATES small files|files/s" ;;
  esac
}
echo
echo "nasfs benchmark: $(date -u +%FT%TZ), $(uname -r), $(nproc) CPUs, $DIR on $FSTYPE ($(findmnt -rn -o SOURCE -T "$DIR"))"
echo "nasfs binary: $NASFS ($("$NASFS" --version 2>/dev/null | head -n1))"
echo "medians of $ROUNDS rounds; ratio = nasfs / direct (higher is better for every row)"
echo
printf '%-58s %-8s %10s %10s %7s\n' metric unit direct nasfs ratio
printf '%-58s %-8s %10s %10s %7s\n' "$(printf '%.0s-' {1..58})" -------- ---------- ---------- -------
for m in nginx seqwrite seqread creates; do
  IFS='|' read -r name unit <<<"$(label "$m")"
  d=$(median <<<"${R[$m/direct]}"); n=$(median <<<"${R[$m/nasfs]}")
  ratio=$(awk -v d="$d" -v n="$n" 'BEGIN { if (d > 0) printf "%.2f", n / d; else print "n/a" }')
  printf '%-58s %-8s %10s %10s %7s\n' "$name" "$unit" "$d" "$n" "$ratio"
done
echo
echo "per round:"
for m in nginx seqwrite seqread creates; do
  printf '  %-9s direct: %s\n  %-9s nasfs:  %s\n' "$m" "${R[$m/direct]}" "" "${R[$m/nasfs]}"
done
echo
echo "Notes:"
echo "  - direct writes ONE copy into one directory; nasfs writes EVERY byte and creates every"
echo "    file TWICE (master and backup) before it answers. Here both copies land on the same"
echo "    disk ($FSTYPE), so the write and creation rows compare one copy with two."
echo "  - Everything runs on this machine: wrk, nginx, nasfs and the disk share $(nproc) CPUs."
echo "  - nginx runs with sendfile on and open_file_cache off; nasfs with its defaults"
echo "    (cache_timeout=1: names and attributes are re-checked with the daemon every second)."
[ "$DROP_CACHES" = 1 ] || echo "  - The page cache could NOT be dropped: the read row is cached reads."
[ "$WRK_ERRORS" = 0 ] || echo "  - wrk reported errors or non-2xx answers (see the warnings above)."
