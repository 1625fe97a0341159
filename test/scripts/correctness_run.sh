#!/bin/sh
# Runs every unit-test suite (test/unit/suites.h) once, one process per
# suite, in one kernel family, and writes their output to one log with a
# header line per suite, for test/scripts/correctness.py to summarise:
#   == suite NAME
#   ...the suite's own output (compare / gradcheck / harness lines)...
#   == end NAME rc=N seconds=S
# Usage: correctness_run.sh UNIT_TESTS ORACLE_DIR EXAMPLE_DIR LOG
# The family is TB_KERNEL's (the caller's environment); exits 1 if any suite
# failed (the log is still complete).
set -u
cd "$(dirname "$0")/../.."
BIN=$1 ORACLE=$2 EXDIR=$3 LOG=$4
suites=$(sed -n 's/^ *X(\([a-z_0-9]*\)).*/\1/p' test/unit/suites.h)
[ -n "$suites" ] || { echo "correctness_run.sh: no suites in test/unit/suites.h" >&2; exit 1; }
mkdir -p "$(dirname "$LOG")"
: > "$LOG"
failed=0
for s in $suites; do
    echo "== suite $s" >> "$LOG"
    t0=$(date +%s)
    CK_RUN_SUITE=$s TB_ORACLE_DIR=$ORACLE TB_EXAMPLE_DIR=$EXDIR "$BIN" >> "$LOG" 2>&1
    rc=$?
    t1=$(date +%s)
    echo "== end $s rc=$rc seconds=$((t1 - t0))" >> "$LOG"
    echo "correctness: suite $s rc=$rc $((t1 - t0)) s"
    [ "$rc" -eq 0 ] || failed=1
done
exit $failed
