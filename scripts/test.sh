#!/bin/bash
# The whole test suite: unit tests and the mounted end-to-end tests.
#
#   sudo bash scripts/test.sh                     # setup (install + build), then every test
#   SKIP_SETUP=1 sudo bash scripts/test.sh        # already set up: build and test
#   SKIP_SETUP=1 bash scripts/test.sh --suite unit     # extra args go to `meson test`
#
# Environment:
#   SKIP_SETUP=1               skip scripts/setup.sh (apt, build, install);
#                              build/ is still brought up to date by meson test
#   BUILD_DIR=build            meson build directory
#   TIMEOUT_MULTIPLIER=2       scales every test's timeout (slow CI machines)
#   NASFS_SKIP_NETS=1          skip the nets (scripts/nets.sh: the unit suites
#                              under ASan+UBSan and TSan, and each fuzz target
#                              for NETS_FUZZ_SECONDS=20), for quick local runs
#   NASFS_NETS="asan fuzz"     run only these nets (default: asan tsan fuzz)
#
# The exit code is meson's, or the nets' when meson's is 0: 0 when every test
# passed or was skipped and every net held. The
# mounted tests need root and /dev/fuse; without them they are skipped (exit
# 77), so run this with sudo. Afterwards any nasfs or bindfs mount under /tmp
# that appeared during the run (a test killed before its own cleanup) is
# unmounted; mounts that were there before the run are left alone. (So do not
# run two suites at once on one machine: one would clean up after the other.)
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD_DIR=${BUILD_DIR:-build}
cd "$REPO" || exit 1

# "ID MOUNTPOINT" for every nasfs or bindfs mount under /tmp: type fuse.nasfs,
# or fuse.bindfs / plain fuse with a directory as source (bindfs 1.14 on fuse3
# shows as plain "fuse"), i.e. what the tests mount as NAS and as nasfs.
test_mounts() {
  awk '{ for (i = 7; $i != "-"; i++) {}
         type = $(i + 1); src = $(i + 2)
         if ($5 !~ /^\/tmp\//) next
         if (type == "fuse.nasfs" || ((type == "fuse.bindfs" || type == "fuse") && src ~ /^\//)) print $1, $5 }' \
    /proc/self/mountinfo
}
BEFORE=$(test_mounts)

cleanup() {
  local id mp path left=0
  # Newest first: a nasfs mount stacked on a bindfs "NAS" goes before it.
  while read -r id mp; do
    [ -n "$id" ] || continue
    grep -qx "$id $mp" <<<"$BEFORE" && continue
    path=$(printf '%b' "$mp")  # mountinfo escapes space etc. as \040
    echo "test.sh: unmounting leftover $path" >&2
    # A hung (SIGSTOPped) FUSE server would block a plain umount: bound it.
    timeout 10 umount "$path" 2>/dev/null || umount -l "$path" 2>/dev/null || left=1
  done < <(test_mounts | sort -rn)
  [ "$left" = 0 ] || echo "test.sh: warning: some mounts under /tmp could not be unmounted" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

if [ "${SKIP_SETUP:-0}" != 1 ]; then
  BUILD_DIR=$BUILD_DIR bash "$REPO/scripts/setup.sh" || { echo "test.sh: setup failed" >&2; exit 1; }
fi
[ -f "$BUILD_DIR/build.ninja" ] || { echo "test.sh: no $BUILD_DIR/: run sudo bash scripts/setup.sh" >&2; exit 1; }
if [ "$(id -u)" != 0 ] || [ ! -c /dev/fuse ]; then
  echo "test.sh: warning: not root or no /dev/fuse: the mounted tests will be SKIPPED" >&2
fi

printf '\n==> meson test -C %s\n' "$BUILD_DIR"
# meson test rebuilds what changed first, and ends with its summary
# (Ok: / Expected Fail: / Fail: / Unexpected Pass: / Skipped: / Timeout:).
meson test -C "$BUILD_DIR" --print-errorlogs --timeout-multiplier "${TIMEOUT_MULTIPLIER:-2}" "$@"
rc=$?

# The nets, after the normal suite: sanitizer builds of the unit suites and
# a short run of every fuzz target, each in its own build directory
# (build-asan, build-tsan, build-fuzz). They mount nothing.
nets_rc=0
if [ "${NASFS_SKIP_NETS:-0}" = 1 ]; then
  printf '\n==> nets skipped (NASFS_SKIP_NETS=1)\n'
else
  printf '\n==> nets: scripts/nets.sh (NASFS_SKIP_NETS=1 skips them)\n'
  # shellcheck disable=SC2086  # a list of net names
  TIMEOUT_MULTIPLIER="${TIMEOUT_MULTIPLIER:-2}" bash "$REPO/scripts/nets.sh" ${NASFS_NETS:-}
  nets_rc=$?
fi

# One plain closing line of GoogleTest cases across every test binary, for
# readers that do not know meson's summary.
log="$BUILD_DIR/meson-logs/testlog.txt"
if [ -f "$log" ]; then
  passed=$(grep -Eo '^\[  PASSED  \] [0-9]+ tests?' "$log" | awk '{s+=$4} END {print s+0}')
  failed=$(grep -Eo '^\[  FAILED  \] [0-9]+ tests?, listed below' "$log" | awk '{s+=$4} END {print s+0}')
  skipped=$(grep -Eo '^\[  SKIPPED \] [0-9]+ tests?,' "$log" | awk '{s+=$4} END {print s+0}')
  [ "$rc" = 0 ] || [ "$failed" -gt 0 ] || failed=1  # a crashed binary counts
  printf '\ntests: %d passed, %d failed, %d skipped\n' "$passed" "$failed" "$skipped"
fi
if [ "$rc" != 0 ] && [ -f "$log" ]; then
  printf '\n==> why the suite failed (first lines; the full log has the rest)\n'
  bash "$REPO/scripts/failures.sh" "$log" 60
fi
[ "$rc" != 0 ] || rc=$nets_rc
printf '\n==> test suite: %s (exit %d); full log: %s/meson-logs/testlog.txt%s\n' \
  "$([ $rc = 0 ] && echo PASSED || echo FAILED)" "$rc" "$BUILD_DIR" \
  "$([ "$nets_rc" = 0 ] || echo '; the nets FAILED (see "nets summary" above)')"
exit "$rc"
