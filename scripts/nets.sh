#!/bin/bash
# The nets: the unit suites under sanitizers, and the fuzz targets for a
# short fixed time. scripts/test.sh runs this after the normal suite
# (NASFS_SKIP_NETS=1 skips it); it can also run alone, as any user.
#
#   bash scripts/nets.sh                  # asan, tsan, fuzz
#   bash scripts/nets.sh fuzz             # some of them: asan, tsan, fuzz
#
# asan  build-asan/ (gcc, -Db_sanitize=address,undefined, unoptimized with
#       line tables only: a quarter of -O2 -g's build time, the same
#       checks): every unit suite, leaks detected, any ASan or UBSan report
#       fails it.
# tsan  build-tsan/ (gcc, -Db_sanitize=thread): the concurrency-heavy unit
#       tests (worker pool, peers, the whole journal suite with its group
#       commit).
# fuzz  build-fuzz/ (clang-16, -Dfuzz=true): replays every seed and saved
#       regression (meson test --suite fuzz), then fuzzes each target for
#       NETS_FUZZ_SECONDS over a copy of its seed corpus in a temporary
#       directory (nothing is written into the repository). A crash, leak or
#       timeout is kept under build-fuzz/fuzz-findings/<target>/; to make it
#       a regression, copy it into tests/fuzz/regressions/<target>/ (see
#       tests/fuzz/README.md). Being a clang build of the whole tree, it
#       also checks the lock annotations (-Wthread-safety as errors).
#
# Environment:
#   NETS_FUZZ_SECONDS=20   fuzzing time per target
#   NETS_JOBS=2            ninja's parallelism
#   TIMEOUT_MULTIPLIER=2   scales the unit tests' timeouts (sanitizers are slow)
#
# Prints one line per net and exits non-zero if any net failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
FUZZ_SECONDS=${NETS_FUZZ_SECONDS:-20}
JOBS=${NETS_JOBS:-2}
TMULT=${TIMEOUT_MULTIPLIER:-2}
FUZZ_TARGETS=(journal_record journal_open peer_log options control nas_files)
# Symbolized stacks in sanitizer reports (clang's runtime looks for a
# symbolizer of its own version; any recent one does).
if [ -z "${ASAN_SYMBOLIZER_PATH:-}" ]; then
  for s in llvm-symbolizer-16 /usr/lib/llvm-16/bin/llvm-symbolizer llvm-symbolizer; do
    if command -v "$s" >/dev/null; then
      ASAN_SYMBOLIZER_PATH=$(command -v "$s")
      export ASAN_SYMBOLIZER_PATH
      break
    fi
  done
fi

NETS=("$@")
[ ${#NETS[@]} -gt 0 ] || NETS=(asan tsan fuzz)
for n in "${NETS[@]}"; do
  case "$n" in asan|tsan|fuzz) ;; *) echo "nets.sh: unknown net '$n' (asan, tsan, fuzz)" >&2; exit 2 ;; esac
done

say() { printf '\n==> nets: %s\n' "$*"; }
SUMMARY=()
WHY=()  # for each failed net, its log's failures (scripts/failures.sh)
FAILED=0
note() {  # net status seconds detail
  SUMMARY+=("$(printf '%-5s %-7s %5ss  %s' "$1" "$2" "$3" "$4")")
  [ "$2" = PASSED ] || FAILED=1
}

# Configures dir with the given meson options: a fresh setup, or a
# reconfigure (a wipe when the meson version changed) of an existing one.
configure() {
  local dir=$1
  shift
  mkdir -p "$dir"
  local log="$dir/nets-setup.log"
  if [ -f "$dir/meson-private/coredata.dat" ]; then
    meson setup --reconfigure "$dir" "$@" >"$log" 2>&1 || meson setup --wipe "$dir" "$@" >"$log" 2>&1
  else
    meson setup "$dir" "$@" >"$log" 2>&1
  fi || { cat "$log" >&2; return 1; }
}

# The unit test executables (ninja targets).
UNIT_TARGETS=(tests/unit_core tests/unit_journal tests/unit_control)

net_asan() {
  local t0=$SECONDS dir=build-asan
  say "asan: $dir/ (gcc, ASan+UBSan), unit suites"
  if ! configure "$dir" -Dtests=true -Db_sanitize=address,undefined -Db_lundef=false --buildtype=plain \
         -Dcpp_args=-g1 ||
     ! ninja -C "$dir" -j "$JOBS" "${UNIT_TARGETS[@]}"; then
    note asan FAILED $((SECONDS - t0)) "build failed"
    return
  fi
  local built=$((SECONDS - t0))
  # meson would set its own *SAN_OPTIONS only where none are set.
  if ASAN_OPTIONS=detect_leaks=1:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1 \
     UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
     meson test -C "$dir" --no-rebuild --suite unit --print-errorlogs --timeout-multiplier "$TMULT"; then
    note asan PASSED $((SECONDS - t0)) "build ${built}s; unit suites clean (log: $dir/meson-logs/testlog.txt)"
  else
    note asan FAILED $((SECONDS - t0)) "build ${built}s; a unit suite failed or a sanitizer reported (log: $dir/meson-logs/testlog.txt)"
    WHY+=("--- asan: $(bash "$REPO/scripts/failures.sh" "$dir/meson-logs/testlog.txt")")
  fi
}

# The concurrency-heavy unit tests, by gtest filter: the worker pool and
# the peers in unit_core; all of unit_journal (group commit, and the rest
# costs ~20 s more).
TSAN_RUNS=(
  "unit_core:WorkerPoolTest.*:PeersTest.*"
  "unit_journal:*"
)

net_tsan() {
  local t0=$SECONDS dir=build-tsan
  say "tsan: $dir/ (gcc, ThreadSanitizer), worker pool, peers, group commit"
  if ! configure "$dir" -Dtests=true -Db_sanitize=thread -Db_lundef=false ||
     ! ninja -C "$dir" -j "$JOBS" tests/unit_core tests/unit_journal; then
    note tsan FAILED $((SECONDS - t0)) "build failed"
    return
  fi
  local built=$((SECONDS - t0)) run exe filter rc=0 log="$dir/tsan.log"
  # TSan needs the address layout it was built for; the kernel's mmap
  # randomization can break it (vm.mmap_rnd_bits > 28): setarch -R turns
  # randomization off for the test only.
  local norand=()
  setarch "$(uname -m)" -R true 2>/dev/null && norand=(setarch "$(uname -m)" -R)
  : >"$log"
  for run in "${TSAN_RUNS[@]}"; do
    exe=${run%%:*}
    filter=${run#*:}
    echo "--- $exe --gtest_filter=$filter" | tee -a "$log"
    TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1:history_size=4 \
      timeout $((600 * TMULT)) "${norand[@]}" "$dir/tests/$exe" --gtest_filter="$filter" >>"$log" 2>&1 || rc=1
    tail -n 3 "$log"
  done
  if [ "$rc" = 0 ]; then
    note tsan PASSED $((SECONDS - t0)) "build ${built}s; no race reported (log: $log)"
  else
    grep -m 5 -E 'WARNING: ThreadSanitizer|FAILED|SUMMARY' "$log" >&2
    note tsan FAILED $((SECONDS - t0)) "build ${built}s; a test failed or TSan reported (log: $log)"
    WHY+=("--- tsan: $(bash "$REPO/scripts/failures.sh" "$log")")
  fi
}

# libFuzzer's closing stats: "execs, cov" for the summary.
fuzz_stats() {
  local log=$1 execs cov
  execs=$(grep -Eo 'stat::number_of_executed_units: *[0-9]+' "$log" | grep -Eo '[0-9]+$' | tail -1)
  cov=$(grep -Eo 'cov: [0-9]+' "$log" | tail -1 | grep -Eo '[0-9]+')
  echo "${execs:-?} execs, cov ${cov:-?}"
}

net_fuzz() {
  local t0=$SECONDS dir=build-fuzz t
  say "fuzz: $dir/ (clang-16, libFuzzer, ASan+UBSan), ${FUZZ_SECONDS}s per target"
  if ! command -v clang++-16 >/dev/null; then
    note fuzz FAILED 0 "clang++-16 not found (scripts/setup.sh installs clang-16 libclang-rt-16-dev)"
    return
  fi
  # Everything, not just the targets: under clang the build also checks
  # the lock annotations (-Werror=thread-safety, see meson.build) over the
  # daemon, nasfsctl and the libraries.
  if ! (export CC=clang-16 CXX=clang++-16; configure "$dir" -Dfuzz=true -Dtests=false) ||
     ! ninja -C "$dir" -j "$JOBS"; then
    note fuzz FAILED $((SECONDS - t0)) "build failed"
    return
  fi
  local built=$((SECONDS - t0))
  rm -rf "$dir/fuzz-findings"  # this run's only
  # Every seed and every saved regression, once.
  local replay=ok
  meson test -C "$dir" --no-rebuild --suite fuzz --print-errorlogs || replay=FAILED
  local work log rc findings=() results=()
  work=$(mktemp -d /tmp/nasfs-nets-fuzz.XXXXXX) || return
  for t in "${FUZZ_TARGETS[@]}"; do
    mkdir -p "$work/$t/corpus" "$work/$t/artifacts"
    cp -r "tests/fuzz/corpus/$t/." "$work/$t/corpus/"
    log="$work/$t/log"
    echo "--- ${t}_fuzz, ${FUZZ_SECONDS}s"
    # From the seeds only: the regressions were replayed above, and one
    # not fixed yet would stop the run before it starts. -timeout: one
    # input taking this long is a finding (a hang); -rss_limit_mb: so is
    # this much memory.
    "$dir/tests/fuzz/${t}_fuzz" -max_total_time="$FUZZ_SECONDS" -timeout=25 -rss_limit_mb=2048 \
      -print_final_stats=1 -artifact_prefix="$work/$t/artifacts/" "$work/$t/corpus" >"$log" 2>&1
    rc=$?
    if [ "$rc" = 0 ]; then
      results+=("$t: $(fuzz_stats "$log")")
      echo "    ok: $(fuzz_stats "$log")"
    else
      mkdir -p "$dir/fuzz-findings/$t"
      cp "$work/$t/artifacts/"* "$log" "$dir/fuzz-findings/$t/" 2>/dev/null
      findings+=("$t")
      echo "    FAILED (exit $rc): kept in $dir/fuzz-findings/$t/"
      grep -E -m 12 'ERROR: |invariant broken|SUMMARY|#[0-9]+ 0x' "$log" | sed 's/^/    /'
    fi
  done
  rm -rf "$work"
  local what="build ${built}s; seeds and regressions replayed: $replay"
  if [ ${#findings[@]} = 0 ]; then
    what+="; fuzzed ${FUZZ_SECONDS}s each, no finding: $(IFS=';'; echo "${results[*]}")"
  else
    what+="; findings in ${findings[*]} ($dir/fuzz-findings/)"
  fi
  if [ "$replay" = ok ] && [ ${#findings[@]} = 0 ]; then
    note fuzz PASSED $((SECONDS - t0)) "$what"
  else
    note fuzz FAILED $((SECONDS - t0)) "$what"
  fi
}

for n in "${NETS[@]}"; do "net_$n"; done

printf '\n==> nets summary\n'
printf '%s\n' "${SUMMARY[@]}"
[ ${#WHY[@]} = 0 ] || printf '%s\n' "${WHY[@]}"
printf '==> nets: %s\n' "$([ $FAILED = 0 ] && echo PASSED || echo FAILED)"
exit $FAILED
