#!/bin/sh
# Data-parallel GPT training over MPI (docs/data_parallel.md), on this
# machine with Open MPI's mpirun:
#   bitwise   `gpt train` (one process) and `mpirun -np P gpt_mpi train` for
#             P = 1, 2, 3 write byte-identical loss curves (CSV) and
#             checkpoints, with dropout, for an --accum that P divides and
#             one it does not (5 micro-batches over 2 and 3 processes); and
#             gpt_mpi started without mpirun (one process, MPI not started)
#   zero      --zero 1 (ZeRO-1: AdamW's moments sharded) on 2 and 3
#             processes: the same bits again, and each process reports
#             about 1/P of the unsharded optimizer state
#   resume    a run saved by 2 processes (ZeRO-1) and resumed by 3 (ZeRO-1),
#             or by 1 (plain gpt), ends with the checkpoint of the
#             uninterrupted run
#   tcp       two hosts made of network namespaces joined by a veth pair,
#             TCP the only transport, mpirun's hostfile and a launcher agent
#             (test/scripts/netns_agent.sh): the same bits (root only; else
#             reported NOT RUN)
#   fault     a rank killed (SIGKILL) mid-run stops the job with mpirun's
#             message naming the signal, within a timeout (no hang); the
#             last checkpoint is intact and resumes
#   comm      libtblocks_mpi's collectives and the reduction on 3 processes
#             (test/tools/mpi_comm_check.c, built here with mpicc)
# Every process runs one thread (2 cores: --oversubscribe for 3).
# Usage: mpi_gpt.sh BUILD_DIR   (prints "ok - ..." lines; exits 1 on failure)
set -u
cd "$(dirname "$0")/../.."
B=${1:-build}
GPT=$B/bin/gpt
GPT_MPI=$B/bin/gpt_mpi
TMP=$(mktemp -d)
cleanup() { rm -rf "$TMP"; ip netns del "tbh$$a" 2>/dev/null; ip netns del "tbh$$b" 2>/dev/null; }
trap cleanup EXIT
trap 'cleanup; exit 130' INT TERM
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() { fail=$((fail + 1)); echo "not ok - $1"; shift; for f; do [ -f "$f" ] && sed 's/^/    /' "$f" | tail -30; done; }

if ! command -v mpirun >/dev/null 2>&1 || [ ! -x "$GPT_MPI" ]; then
    bad "MPI: mpirun or $GPT_MPI missing (make deps installs openmpi-bin and libopenmpi-dev; make all then builds gpt_mpi)"
    echo "$pass passed, $fail failed"
    exit 1
fi
# Open MPI refuses root without these; one thread per process.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN="mpirun --oversubscribe"

# ---- the communicator itself ----------------------------------------------------------
if mpicc -std=c11 -Wall -Wextra -Werror -Iinclude -fopenmp -o "$TMP/commcheck" test/tools/mpi_comm_check.c \
    lib/libtblocks_mpi.a lib/libtblocks.a -lm >"$TMP/cc.log" 2>&1 &&
    timeout 60 $MPIRUN -np 3 "$TMP/commcheck" >"$TMP/comm.out" 2>&1 &&
    [ "$(grep -c '^ok rank' "$TMP/comm.out")" = 3 ]; then
    ok "libtblocks_mpi on 3 processes: variable all-gather (an empty block), broadcast, barrier, both split into calls of at most 5 bytes, the in-order reduction (split into 64-byte calls)"
else
    bad "libtblocks_mpi on 3 processes" "$TMP/cc.log" "$TMP/comm.out"
fi

COMMON="--layers 1 --width 32 --heads 2 --context 16 --batch 4 --corpus-kb 16 --max-seconds 0 \
--threads 1 --warmup 2 --dropout 0.1 --eval-every 3"

# same NAME A B: the loss curves and checkpoints of runs A and B are identical.
same() {
    cmp "$TMP/$2.csv" "$TMP/$3.csv" >"$TMP/cmp" 2>&1 && cmp "$TMP/$2.st" "$TMP/$3.st" >>"$TMP/cmp" 2>&1
}
# one NAME ARGS...: plain gpt, one process.
one() { n=$1; shift; "$GPT" train $COMMON "$@" --ckpt "$TMP/$n.st" --csv "$TMP/$n.csv" >"$TMP/$n.out" 2>&1; }
# par P NAME ARGS...: gpt_mpi on P processes.
par() {
    p=$1 n=$2; shift 2
    timeout 120 $MPIRUN -np "$p" "$GPT_MPI" train $COMMON "$@" --ckpt "$TMP/$n.st" \
        --csv "$TMP/$n.csv" >"$TMP/$n.out" 2>&1
}

# ---- bitwise for P = 1, 2, 3 --------------------------------------------------------
for K in 6 5; do
    if ! one "s$K" --steps 6 --accum "$K"; then
        bad "gpt train --accum $K (one process)" "$TMP/s$K.out"
        continue
    fi
    for P in 1 2 3; do
        [ "$K" = 5 ] && [ "$P" = 1 ] && continue
        if ! par "$P" "p$K-$P" --steps 6 --accum "$K"; then
            bad "mpirun -np $P gpt_mpi train --accum $K" "$TMP/p$K-$P.out"
        elif ! grep -q "^processes: $P " "$TMP/p$K-$P.out"; then
            bad "mpirun -np $P: the run does not report $P processes" "$TMP/p$K-$P.out"
        elif same x "s$K" "p$K-$P"; then
            ok "--accum $K over $P process(es): loss curve and checkpoint bitwise those of one process"
        else
            bad "--accum $K over $P process(es) differs from one process" "$TMP/cmp" "$TMP/s$K.csv" "$TMP/p$K-$P.csv"
        fi
    done
done
# Started without a launcher, gpt_mpi is one process (MPI not started).
if "$GPT_MPI" train $COMMON --steps 6 --accum 6 --ckpt "$TMP/alone.st" --csv "$TMP/alone.csv" \
    >"$TMP/alone.out" 2>&1 && same x s6 alone; then
    ok "gpt_mpi started alone: one process, the same bits"
else
    bad "gpt_mpi started alone" "$TMP/alone.out"
fi
# Only rank 0 writes and prints: one progress table, not P.
if [ -f "$TMP/p6-3.out" ] && [ "$(grep -c '^final:' "$TMP/p6-3.out")" = 1 ]; then
    ok "3 processes print one report (rank 0)"
else
    bad "3 processes: not exactly one report" "$TMP/p6-3.out"
fi

# What a step communicates: with --accum 6 over 2 processes, rank 0 sends
# its 3 micro-batches' gradients (parameters + 2 floats each) to the other
# rank and receives the other 3 (comm.h's cost), as gpt_mpi counts it.
if awk '/\(bytes\): [0-9]+ parameters/ { for (i = 1; i <= NF; i++) if ($i == "parameters") n = $(i-1) }
        /^communication:/ { s = $2; r = $5 }
        END { want = 3 * (n + 2) * 4 / 1048576; d1 = s - want; d2 = r - want;
              exit !(n > 0 && d1 * d1 < 1e-6 && d2 * d2 < 1e-6) }' "$TMP/p6-2.out" 2>/dev/null; then
    ok "2 processes: $(sed -n 's/^communication: \([^(]*\).*/\1/p' "$TMP/p6-2.out")= 3 micro-batches of gradients each way"
else
    bad "2 processes: the communication reported is not 3 micro-batches of gradients each way" "$TMP/p6-2.out"
fi

# ---- ZeRO-1 ---------------------------------------------------------------------------------
for P in 2 3; do
    if ! par "$P" "z$P" --steps 6 --accum 6 --zero 1; then
        bad "mpirun -np $P gpt_mpi train --zero 1" "$TMP/z$P.out"
    elif same x s6 "z$P"; then
        ok "ZeRO-1 over $P processes: loss curve and checkpoint bitwise those of one unsharded process"
    else
        bad "ZeRO-1 over $P processes differs from one process" "$TMP/cmp" "$TMP/z$P.out"
    fi
done
# "optimizer state X MiB per process (ZeRO-1: 1/3 of Y MiB)": X <= Y / 3 (+ rounding).
if awk '/^memory:.*ZeRO-1: 1\/3 of/ { for (i = 1; i <= NF; i++) { if ($i == "state") x = $(i+1);
        if ($i == "of") y = $(i+1) } found = 1 }
        END { exit !(found && x > 0 && x <= y / 3 + 0.001) }' "$TMP/z3.out" 2>/dev/null; then
    ok "ZeRO-1 over 3 processes: $(sed -n 's/.*optimizer state \([^+]*\) +.*/\1/p' "$TMP/z3.out")"
else
    bad "ZeRO-1 over 3 processes does not report 1/3 of the optimizer state" "$TMP/z3.out"
fi

# ---- resume across process counts ---------------------------------------------------------
if par 2 r2 --steps 6 --accum 6 --stop-at 3 --zero 1; then
    cp "$TMP/r2.st" "$TMP/r1.st"
    if par 3 r3 --steps 6 --accum 6 --resume "$TMP/r2.st" --zero 1 && cmp -s "$TMP/r3.st" "$TMP/s6.st"; then
        ok "saved by 2 processes (ZeRO-1) at step 3, resumed by 3 (ZeRO-1): the checkpoint of the straight run"
    else
        bad "resume 2 -> 3 processes" "$TMP/r3.out"
    fi
    if "$GPT" train $COMMON --steps 6 --accum 6 --resume "$TMP/r1.st" --ckpt "$TMP/r1.st" \
        >"$TMP/r1.out" 2>&1 && cmp -s "$TMP/r1.st" "$TMP/s6.st"; then
        ok "saved by 2 processes (ZeRO-1) at step 3, resumed by 1: the checkpoint of the straight run"
    else
        bad "resume 2 -> 1 process" "$TMP/r1.out"
    fi
else
    bad "mpirun -np 2 --stop-at 3" "$TMP/r2.out"
fi

# ---- two hosts over a real network: TCP between network namespaces ---------------------
# Two "hosts" made on this machine: network namespaces joined by a veth
# pair, 10.231.77.1 and .2. mpirun starts in the first with a hostfile of the
# two addresses, one slot each; Open MPI's rsh launcher reaches the second
# through test/scripts/netns_agent.sh (what ssh is on a cluster). Only TCP
# moves data (BTL self,tcp: no shared memory; PML ob1: no UCX), and both
# Open MPI's control channel and the data stay on the veth subnet. The
# veth's byte counters show the traffic went over it.
netns_test() {
    a=tbh$$a b=tbh$$b
    ip netns add "$a" && ip netns add "$b" || return 1
    ip link add "v$$a" netns "$a" type veth peer name "v$$b" netns "$b" || return 1
    ip -n "$a" addr add 10.231.77.1/24 dev "v$$a" && ip -n "$b" addr add 10.231.77.2/24 dev "v$$b" || return 1
    for n in "$a" "$b"; do ip -n "$n" link set lo up || return 1; done
    ip -n "$a" link set "v$$a" up && ip -n "$b" link set "v$$b" up || return 1
    printf '10.231.77.1 slots=1\n10.231.77.2 slots=1\n' > "$TMP/hosts"
    timeout 180 env TB_NETNS_PREFIX="tbh$$" ip netns exec "$a" mpirun --hostfile "$TMP/hosts" -np 2 \
        --mca plm_rsh_agent "$PWD/test/scripts/netns_agent.sh" --mca pml ob1 --mca btl self,tcp \
        --mca btl_tcp_if_include 10.231.77.0/24 --mca oob_tcp_if_include 10.231.77.0/24 \
        -x OMP_NUM_THREADS "$PWD/$GPT_MPI" train $COMMON --steps 6 --accum 6 \
        --ckpt "$TMP/tcp.st" --csv "$TMP/tcp.csv" >"$TMP/tcp.out" 2>&1 || { echo "mpirun failed"; return 1; }
    grep -q "^processes: 2 " "$TMP/tcp.out" || { echo "the run does not report 2 processes"; return 1; }
    same x s6 tcp || { cat "$TMP/cmp"; return 1; }
    rx=$(ip netns exec "$a" cat "/sys/class/net/v$$a/statistics/rx_bytes")
    tx=$(ip netns exec "$a" cat "/sys/class/net/v$$a/statistics/tx_bytes")
    echo "veth of host 10.231.77.1: $rx bytes in, $tx bytes out"
    [ "${rx:-0}" -gt 100000 ] && [ "${tx:-0}" -gt 100000 ] || { echo "too little traffic on the veth"; return 1; }
}
netns_cleanup() { ip netns del "tbh$$a" 2>/dev/null; ip netns del "tbh$$b" 2>/dev/null; }
if [ "$(id -u)" != 0 ]; then
    echo "NOT RUN - two hosts over TCP (network namespaces need root; CI runs as root)"
elif ! command -v ip >/dev/null 2>&1 || ! ip netns add "tbh$$probe" 2>"$TMP/probe.err" ||
    ! ip netns del "tbh$$probe" 2>>"$TMP/probe.err"; then
    echo "NOT RUN - two hosts over TCP: this root cannot make network namespaces" \
         "($(command -v ip >/dev/null 2>&1 && head -1 "$TMP/probe.err" || echo "no ip command: iproute2"))"
elif netns_test >"$TMP/netns.log" 2>&1; then
    ok "2 hosts (network namespaces, veth, TCP only): loss curve and checkpoint bitwise those of one process ($(tail -1 "$TMP/netns.log"))"
else
    bad "2 hosts over TCP (network namespaces)" "$TMP/netns.log" "$TMP/tcp.out"
fi
netns_cleanup

# ---- a killed rank stops the job -----------------------------------------------------------
fault_test() {
    # A long run (checkpoint every 3 steps); once a checkpoint exists,
    # rank 1 is killed.
    timeout 60 $MPIRUN -np 2 "$GPT_MPI" train $COMMON --steps 1000000 --accum 2 --patience 0 \
        --ckpt "$TMP/f.st" >"$TMP/f.out" 2>&1 &
    job=$!
    i=0
    while [ ! -f "$TMP/f.st" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -f "$TMP/f.st" ] || { echo "no checkpoint after 30 s"; kill "$job"; return 1; }
    # The ranks are the gpt_mpi processes whose ancestor is this mpirun.
    victim=""
    for pid in $(ps -eo pid=,comm= | awk '$2 == "gpt_mpi" {print $1}'); do
        a=$pid
        while [ "$a" -gt 1 ]; do
            a=$(ps -o ppid= -p "$a" | tr -d ' ')
            [ -n "$a" ] || break
            [ "$a" = "$job" ] && { victim=$pid; break; }
        done
    done
    [ -n "$victim" ] || { echo "no rank of job $job found"; kill "$job"; return 1; }
    kill -9 "$victim"
    t0=$(date +%s)
    wait "$job"
    rc=$?
    t=$(($(date +%s) - t0))
    echo "mpirun exit $rc after $t s"
    [ "$rc" -ne 0 ] && [ "$rc" -ne 124 ] || { echo "exit $rc (124: timed out, a hang)"; return 1; }
    grep -qi "signal 9\|killed" "$TMP/f.out" || { echo "no message naming the kill"; return 1; }
    # The last checkpoint survives and resumes (one process).
    cp "$TMP/f.st" "$TMP/f2.st"
    step=$("$GPT" generate --ckpt "$TMP/f2.st" --max-new 5 >/dev/null 2>&1 && echo loadable)
    [ "$step" = loadable ] || { echo "the last checkpoint does not load"; return 1; }
}
if fault_test >"$TMP/fault.log" 2>&1; then
    ok "a killed rank stops the job with a message, no hang; the last checkpoint loads ($(tail -1 "$TMP/fault.log"))"
else
    bad "a killed rank" "$TMP/fault.log" "$TMP/f.out"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
