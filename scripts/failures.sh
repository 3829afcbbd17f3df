#!/bin/bash
# Prints why a test log failed, briefly: each GoogleTest failure with the
# lines that explain it, and each sanitizer or soak verdict, at most
# $2 lines (default 40). CI shows only the end of a run's output; test.sh
# and nets.sh print this there, so a failure seen once can be read.
#
#   bash scripts/failures.sh LOG [MAX_LINES]
log=$1
max=${2:-40}
[ -f "$log" ] || exit 0
grep -a -E -A8 ': Failure$|^\[  FAILED  \] [A-Za-z_]|ERROR: (Address|Leak|Thread)Sanitizer|runtime error:|^SUMMARY: |VIOLATION|^soak: ' "$log" |
  grep -a -v -E '^\[ *(RUN|OK) *\]' | cut -c1-800 | head -n "$max"
