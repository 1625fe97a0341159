#!/bin/sh
# Data-parallel BERT fine-tuning over MPI (docs/data_parallel.md), on this
# machine with Open MPI's mpirun:
#   bitwise   `bert_classify` (one process) and `mpirun -np P
#             bert_classify_mpi` for P = 2, 3 print the same loss lines,
#             evaluation and final line (its `trained=` checksum covers every
#             trained value) for full fine-tuning, LoRA and P-tuning (an LSTM
#             prompt encoder), with dropout, for an --accum that P divides and
#             one it does not (5 over 2 and 3); and bert_classify_mpi started
#             without mpirun (one process, MPI not started)
#   minilm    LoRA on the real all-MiniLM-L6-v2 weights (--model-dir, the
#             folder test/oracle/gen_minilm.py found) over 2 processes: the
#             same bits as one
#   refused   what would make the result depend on the process count
#             (--norm batch, --compare) exits 2 with its message on 2
#             processes, and runs on one
# Every process runs one thread (2 cores: --oversubscribe for 3).
# Usage: mpi_bert.sh BUILD_DIR   (prints "ok - ..." lines; exits 1 on failure)
set -u
cd "$(dirname "$0")/../.."
B=${1:-build}
BC=$B/bin/bert_classify
BC_MPI=$B/bin/bert_classify_mpi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
trap 'rm -rf "$TMP"; exit 130' INT TERM
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() { fail=$((fail + 1)); echo "not ok - $1"; shift; for f; do [ -f "$f" ] && sed 's/^/    /' "$f" | tail -30; done; }

if ! command -v mpirun >/dev/null 2>&1 || [ ! -x "$BC_MPI" ]; then
    bad "MPI: mpirun or $BC_MPI missing (make deps installs openmpi-bin and libopenmpi-dev; make all then builds bert_classify_mpi)"
    echo "$pass passed, $fail failed"
    exit 1
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
MPIRUN="mpirun --oversubscribe"

TINY="--examples 200 --width 16 --ff 32 --heads 2 --layers 2 --max-len 12 --batch 8 \
--log-every 2 --steps 6 --dropout 0.1 --threads 1"

# What must not depend on the process count: everything but the banner (it
# names the threads), the step times, the total time and the processes line.
strip() {
    grep -v '^bert_classify:\|^done:\|median step\|^processes:' "$1" > "$1.s"
}
# one NAME ARGS...: plain bert_classify, one process.
one() { n=$1; shift; "$BC" "$@" >"$TMP/$n.out" 2>&1 && strip "$TMP/$n.out"; }
# par P NAME ARGS...: bert_classify_mpi on P processes.
par() {
    p=$1 n=$2; shift 2
    timeout 300 $MPIRUN -np "$p" "$BC_MPI" "$@" >"$TMP/$n.out" 2>&1 && strip "$TMP/$n.out"
}
# same A B: the two runs' outputs agree (and have a final line).
same() {
    grep -q '^final:' "$TMP/$1.out.s" && cmp "$TMP/$1.out.s" "$TMP/$2.out.s" >"$TMP/cmp" 2>&1
}

# ---- bitwise for P = 2, 3, every method ---------------------------------------------------
for M in "full" "lora --lora-dropout 0.1" "ptuning --encoder lstm"; do
    name=${M%% *}
    for K in 6 5; do
        if ! one "s-$name-$K" $TINY --accum "$K" --method $M; then
            bad "bert_classify --method $name --accum $K (one process)" "$TMP/s-$name-$K.out"
            continue
        fi
        for P in 2 3; do
            n="p-$name-$K-$P"
            if ! par "$P" "$n" $TINY --accum "$K" --method $M; then
                bad "mpirun -np $P bert_classify_mpi --method $name --accum $K" "$TMP/$n.out"
            elif ! grep -q "^processes: $P " "$TMP/$n.out"; then
                bad "mpirun -np $P: the run does not report $P processes" "$TMP/$n.out"
            elif same "s-$name-$K" "$n"; then
                ok "--method $name --accum $K over $P processes: loss lines, evaluation and trained values bitwise those of one process"
            else
                bad "--method $name --accum $K over $P processes differs from one process" "$TMP/cmp" "$TMP/s-$name-$K.out.s" "$TMP/$n.out.s"
            fi
        done
    done
done
if "$BC_MPI" $TINY --accum 6 >"$TMP/alone.out" 2>&1 && strip "$TMP/alone.out" && same s-full-6 alone; then
    ok "bert_classify_mpi started alone: one process, the same bits"
else
    bad "bert_classify_mpi started alone" "$TMP/alone.out"
fi
if [ -f "$TMP/p-full-6-3.out" ] && [ "$(grep -c '^final:' "$TMP/p-full-6-3.out")" = 1 ]; then
    ok "3 processes print one report (rank 0)"
else
    bad "3 processes: not exactly one report" "$TMP/p-full-6-3.out"
fi

# ---- the real MiniLM weights, LoRA, over 2 processes ----------------------------------------
MD=$(cat "$B/oracle/minilm/model_dir.txt" 2>/dev/null)
if [ -z "$MD" ] || [ ! -f "$MD/model.safetensors" ]; then
    bad "MiniLM: no model folder in $B/oracle/minilm/model_dir.txt (make check runs test/oracle/gen_minilm.py)"
else
    D=$TMP/texts
    mkdir -p "$D/cats" "$D/dogs"
    i=0
    while [ $i -lt 12 ]; do
        echo "The cat number $i purrs on the warm windowsill and sleeps." > "$D/cats/$i.txt"
        echo "Dog $i barks at the postman and fetches the ball; woof." > "$D/dogs/$i.txt"
        i=$((i + 1))
    done
    REAL="--model-dir $MD --data-dir $D --method lora --batch 4 --accum 4 --steps 3 --log-every 1 --threads 1"
    if ! one m1 $REAL; then
        bad "bert_classify --model-dir MiniLM --method lora (one process)" "$TMP/m1.out"
    elif ! par 2 m2 $REAL; then
        bad "mpirun -np 2 bert_classify_mpi --model-dir MiniLM" "$TMP/m2.out"
    elif same m1 m2; then
        ok "LoRA on all-MiniLM-L6-v2's weights over 2 processes: the bits of one process ($(sed -n 's/.*\(trained=[0-9a-f]*\).*/\1/p' "$TMP/m1.out"))"
    else
        bad "LoRA on MiniLM over 2 processes differs from one process" "$TMP/cmp" "$TMP/m1.out.s" "$TMP/m2.out.s"
    fi
fi

# ---- refused on several processes --------------------------------------------------------
for F in "--norm batch:BatchNorm" "--compare:--compare"; do
    opt=${F%%:*} word=${F#*:}
    timeout 60 $MPIRUN -np 2 "$BC_MPI" $TINY $opt >"$TMP/r.out" 2>&1
    rc=$?
    if [ "$rc" = 2 ] && grep -q -- "$word" "$TMP/r.out" && ! grep -q '^final:' "$TMP/r.out"; then
        ok "$opt on 2 processes: refused (exit 2: $(grep -m1 -o 'bert_classify: [^:]*' "$TMP/r.out"))"
    else
        bad "$opt on 2 processes: exit $rc, not refused with exit 2" "$TMP/r.out"
    fi
done
if one bn1 $TINY --norm batch --accum 2; then
    ok "--norm batch --accum 2 on one process runs"
else
    bad "--norm batch --accum 2 on one process" "$TMP/bn1.out"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
