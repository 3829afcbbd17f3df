# Shared by the bench scripts that watch one mount at $W/mnt (source it).
# Needs NASFSCTL and W.

# A Python expression over the mount's status JSON `j`, printed.
st() { "$NASFSCTL" status "$W/mnt" --json | python3 -c 'import json,sys; j=json.load(sys.stdin); print(eval(sys.argv[1]))' "$1"; }
# Waits (30 s at most) until st "$1" prints "$2".
wait_for() { for _ in $(seq 300); do [ "$(st "$1")" = "$2" ] && return 0; sleep 0.1; done; echo "timed out waiting for $1 == $2" >&2; exit 1; }
# Unmounts the mount and the bindfs master at $W/master, removes $W.
bench_cleanup() {
  umount "$W/mnt" 2>/dev/null || umount -l "$W/mnt" 2>/dev/null || true
  umount "$W/master" 2>/dev/null || umount -l "$W/master" 2>/dev/null || true
  rm -rf --one-file-system "$W"
}
