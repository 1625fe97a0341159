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
#
# TB_FAMILY_SHARDS=S (default 1; only with TB_FAMILY_JOBS > 1) runs each
# family as S jobs, job i with TB_TEST_SHARD=i/S (test/unit/main.c splits
# its suites into S fixed shards by weight), so that the cores stay busy
# to the end instead of waiting for one family's long run; the jobs are
# queued family by family, shard by shard. Only for a command that
# understands TB_TEST_SHARD: any other would run S times over.
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
shards=${TB_FAMILY_SHARDS:-1}
case $shards in
    ''|*[!0-9]*|0) echo "== $label: TB_FAMILY_SHARDS must be a positive integer, not '$shards'" >&2
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
    # The jobs: a family (k), or with shards a family's shard (k.i).
    pending=""
    for k in $to_run; do
        if [ "$shards" -eq 1 ]; then
            pending="$pending $k"
        else
            i=1
            while [ "$i" -le "$shards" ]; do pending="$pending $k.$i"; i=$((i + 1)); done
        fi
    done
    n_jobs=$(echo $pending | wc -w)
    : "${CK_TIMEOUT_MULTIPLIER:=$((jobs < n_jobs ? jobs : n_jobs))}"
    export CK_TIMEOUT_MULTIPLIER
    # "kernel family avx2" or "kernel family avx2, shard 1/2" for job $1.
    job_name() {
        case $1 in
            *.*) echo "kernel family ${1%.*}, shard ${1#*.}/$shards" ;;
            *) echo "kernel family $1" ;;
        esac
    }
    start_all=$(date +%s)
    running=""
    failed=""
    while [ -n "$pending" ] || [ -n "$running" ]; do
        # Start jobs while there is a free slot.
        nrun=$(echo $running | wc -w)
        while [ -n "$pending" ] && [ "$nrun" -lt "$jobs" ]; do
            j=${pending# }; j=${j%% *}
            pending=$(echo "$pending" | sed "s/^ *$j//")
            k=${j%.*}
            shard_env=""
            [ "$j" != "$k" ] && shard_env="TB_TEST_SHARD=${j#*.}/$shards"
            echo "== $label, $(job_name "$j"): started ($jobs at once; output follows when it ends)"
            date +%s > "$out/$j.start"
            # shellcheck disable=SC2016,SC2086
            env TB_KERNEL=$k $shard_env $own_group sh -c '"$@" > "$0.log" 2>&1; echo $? > "$0.rc.new"; mv "$0.rc.new" "$0.rc"' \
                "$out/$j" "$@" &
            pids="$pids $!"
            running="$running $j"
            nrun=$((nrun + 1))
        done
        sleep 1
        # Report the jobs that ended, in the order they end.
        still=""
        for j in $running; do
            if [ -f "$out/$j.rc" ]; then
                rc=$(cat "$out/$j.rc")
                secs=$(( $(date +%s) - $(cat "$out/$j.start") ))
                echo "== $label, $(job_name "$j") (output of the concurrent run)"
                cat "$out/$j.log"
                if [ "$rc" -eq 0 ]; then
                    echo "== $label, $(job_name "$j"): passed in $secs s (sharing the cores)"
                else
                    echo "== $label, $(job_name "$j"): FAILED (exit $rc)" >&2
                    case " $failed " in *" ${j%.*} "*) ;; *) failed="$failed ${j%.*}" ;; esac
                fi
            else
                still="$still $j"
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
    # Nothing failed and nothing was left pending: every job of every family passed.
    ran=$to_run
    echo "== $label: all families in $(( $(date +%s) - start_all )) s"
fi
echo "== $label: kernel families run:$ran; not run on this CPU:${not_run:- none}"
