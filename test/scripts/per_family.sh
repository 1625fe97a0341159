#!/bin/sh
# Run one test command once per kernel family, with TB_KERNEL set to it:
#   per_family.sh "FAMILIES" KERNEL_FAMILY_TOOL LABEL COMMAND...
# The tool (test/tools/kernel_family.c) answers, through the library's own
# TB_KERNEL parsing, whether this CPU runs a family: exit 0 and the family's
# name when it does, 77 when it does not. A family the CPU lacks is reported
# by name as NOT RUN, never skipped silently; anything else from the tool
# (an unknown name, a crash), the portable family (which runs everywhere)
# reported as not run, a failing run, or no family run at all, fails. Ends
# with a line naming the families run and not run; each family's run
# reports its wall time.
#
# TB_FAMILY_JOBS=N (default 1) runs up to N families at once, in the order
# given (put the slowest first). Why: one family's test run keeps only about
# one core busy (most tests are small and single-threaded, and each forked
# test's exit-time leak check is serial), so on 2 cores two families at
# once take little longer than one. Each concurrent run's output goes to a
# file and is printed whole when it ends, so runs never interleave; Check's
# per-test timeouts are multiplied by the number running at once
# (CK_TIMEOUT_MULTIPLIER, unless set) since the runs share the cores. An
# interrupt (INT, TERM) stops every family's whole process tree. Results cannot depend on it: the tests
# demand the same bits for any thread count and any scheduling.
set -u
families=$1
tool=$2
label=$3
shift 3
jobs=${TB_FAMILY_JOBS:-1}
case $jobs in
    ''|*[!0-9]*|0) echo "== $label: TB_FAMILY_JOBS must be a positive integer, not '$jobs'" >&2
                   exit 1 ;;
esac
ran=""
not_run=""
to_run=""
for k in $families; do
    got=$(TB_KERNEL=$k "$tool" 2>&1)
    rc=$?
    if [ "$rc" -eq 77 ] && [ "$k" = portable ]; then
        echo "== $label: the portable family reported as unsupported" >&2
        exit 1
    elif [ "$rc" -eq 77 ]; then
        echo "== $label, kernel family $k: NOT RUN (this CPU or build cannot run it)"
        not_run="$not_run $k"
        continue
    elif [ "$rc" -ne 0 ] || [ "$got" != "$k" ]; then
        echo "== $label: cannot tell whether family $k runs here (kernel_family exit $rc: $got)" >&2
        exit 1
    fi
    to_run="$to_run $k"
done
if [ -z "$to_run" ]; then
    echo "== $label: no kernel family ran (asked for: '$families')" >&2
    exit 1
fi

# One family (or one job): run in the foreground, the output streamed.
if [ "$jobs" -eq 1 ] || [ "$(echo $to_run | wc -w)" -eq 1 ]; then
    for k in $to_run; do
        echo "== $label, kernel family $k"
        start=$(date +%s)
        TB_KERNEL=$k "$@" || { echo "== $label, kernel family $k: FAILED" >&2; exit 1; }
        echo "== $label, kernel family $k: passed in $(( $(date +%s) - start )) s"
        ran="$ran $k"
    done
else
    out=$(mktemp -d "${TMPDIR:-/tmp}/tb-families-XXXXXX") || exit 1
    # Each family runs in a process group of its own (setsid, from
    # util-linux; without it, only the family's top process is stopped), so
    # that an interrupt ends every family's whole process tree before the
    # output directory goes.
    pids=""
    own_group=$(command -v setsid || true)
    stop_all() {
        for p in $pids; do kill -TERM -"$p" 2>/dev/null || kill -TERM "$p" 2>/dev/null; done
        wait
    }
    trap 'rm -rf "$out"' EXIT
    trap 'stop_all; exit 130' INT TERM
    n_fam=$(echo $to_run | wc -w)
    : "${CK_TIMEOUT_MULTIPLIER:=$((jobs < n_fam ? jobs : n_fam))}"
    export CK_TIMEOUT_MULTIPLIER
    start_all=$(date +%s)
    pending=$to_run
    running=""
    failed=""
    while [ -n "$pending" ] || [ -n "$running" ]; do
        # Start families while there is a free slot.
        nrun=$(echo $running | wc -w)
        while [ -n "$pending" ] && [ "$nrun" -lt "$jobs" ]; do
            k=${pending# }; k=${k%% *}
            pending=$(echo "$pending" | sed "s/^ *$k//")
            echo "== $label, kernel family $k: started ($jobs at once; output follows when it ends)"
            date +%s > "$out/$k.start"
            # shellcheck disable=SC2016
            TB_KERNEL=$k $own_group sh -c '"$@" > "$0.log" 2>&1; echo $? > "$0.rc.new"; mv "$0.rc.new" "$0.rc"' \
                "$out/$k" "$@" &
            pids="$pids $!"
            running="$running $k"
            nrun=$((nrun + 1))
        done
        sleep 1
        # Report the families that ended, in the order they end.
        still=""
        for k in $running; do
            if [ -f "$out/$k.rc" ]; then
                rc=$(cat "$out/$k.rc")
                secs=$(( $(date +%s) - $(cat "$out/$k.start") ))
                echo "== $label, kernel family $k (output of the concurrent run)"
                cat "$out/$k.log"
                if [ "$rc" -eq 0 ]; then
                    echo "== $label, kernel family $k: passed in $secs s (sharing the cores)"
                    ran="$ran $k"
                else
                    echo "== $label, kernel family $k: FAILED (exit $rc)" >&2
                    failed="$failed $k"
                fi
            else
                still="$still $k"
            fi
        done
        running=$still
        # After a failure, start nothing more; let the running ones end.
        [ -n "$failed" ] && pending=""
    done
    wait
    if [ -n "$failed" ]; then
        echo "== $label: FAILED for kernel families:$failed" >&2
        exit 1
    fi
    echo "== $label: all families in $(( $(date +%s) - start_all )) s"
fi
echo "== $label: kernel families run:$ran; not run on this CPU:${not_run:- none}"
