#!/bin/sh
# Data-parallel training benchmark (docs/data_parallel.md), run by
# `make bench` (and `make bench-dp`) when MPI is installed:
#   step time  the GPT example on one process with 1 thread, one process
#              with 2 threads, and `mpirun -np 2` processes of 1 thread
#              (plain and ZeRO-1), the same model, data and global batch;
#              the four checkpoints must be byte-identical (it fails if not)
#   bytes      what each step communicates (gpt_mpi's own count of the
#              collectives' payload, rank 0)
#   bandwidth  MPI_Allreduce and libtblocks_mpi's all-gather on 2 processes
#              (test/bench/mpi/bench_comm.c), against the triad bandwidth
# One run, figures compared only within it. Usage: dp.sh BUILD_DIR.
# DP_STEPS (default 30) sets the training runs' length.
set -u
cd "$(dirname "$0")/../.."
B=${1:-build}
STEPS=${DP_STEPS:-30}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for f in "$B/bin/gpt" "$B/bin/gpt_mpi" "$B/bench/mpi/bench_comm"; do
    [ -x "$f" ] || { echo "dp.sh: $f is missing (make all and make bench-dp build it)" >&2; exit 1; }
done
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
echo "== data-parallel GPT training on ${cpu:-an unknown CPU}, $(getconf _NPROCESSORS_ONLN) CPUs," \
     "kernels $(TB_KERNEL=${TB_KERNEL:-auto} "$B/test/kernel_family" 2>/dev/null || echo '?')"
MODEL="--layers 4 --width 128 --heads 4 --context 64 --batch 8 --accum 4 --corpus-kb 256 \
--steps $STEPS --eval-every $STEPS --max-seconds 0 --dropout 0.1"
echo "model and batch: $MODEL"

# run NAME COMMAND...: one training run (COMMAND ends with "train" and its
# options; the model's are added); ms_of NAME: its milliseconds per step.
run() {
    n=$1; shift
    if ! "$@" $MODEL --ckpt "$TMP/$n.st" >"$TMP/$n.out" 2>&1; then
        echo "dp.sh: run $n failed:" >&2; tail -20 "$TMP/$n.out" >&2; exit 1
    fi
}
ms_of() {
    sed -n 's/^done: .*; \([0-9]*\) steps.* in \([0-9.]*\) s,.*/\1 \2/p' "$TMP/$1.out" |
        awk '{ if ($1 > 0) printf "%.1f", 1000 * $2 / $1 }'
}
run one1 "$B/bin/gpt" train --threads 1
run one2 "$B/bin/gpt" train --threads 2
run mpi2 mpirun --oversubscribe -np 2 "$B/bin/gpt_mpi" train --threads 1
run zero2 mpirun --oversubscribe -np 2 "$B/bin/gpt_mpi" train --threads 1 --zero 1
one1=$(ms_of one1) one2=$(ms_of one2) mpi2=$(ms_of mpi2) zero2=$(ms_of zero2)
for n in one2 mpi2 zero2; do
    cmp -s "$TMP/one1.st" "$TMP/$n.st" || { echo "dp.sh: checkpoint of $n differs from one1's" >&2; exit 1; }
done
params=$(sed -n 's/.*(bytes): \([0-9]*\) parameters/\1/p' "$TMP/one1.out")
comm_of() { sed -n 's/^communication: \([0-9.]*\) MiB sent, \([0-9.]*\) MiB received.*/\1 \2/p' "$TMP/$1.out"; }
printf '%-34s %10s %10s %18s\n' "run (same global batch)" "ms/step" "vs 1x1" "MiB/step sent+recv"
printf '%-34s %10s %10s %18s\n' "1 process, 1 thread" "$one1" "1.00x" "-"
printf '%-34s %10s %10s %18s\n' "1 process, 2 threads" "$one2" \
    "$(awk -v a="$one1" -v b="$one2" 'BEGIN { printf "%.2fx", a / b }')" "-"
for n in mpi2 zero2; do
    label="2 processes x 1 thread"; [ "$n" = zero2 ] && label="2 processes x 1 thread, ZeRO-1"
    eval "ms=\$$n"
    printf '%-34s %10s %10s %18s\n' "$label" "$ms" \
        "$(awk -v a="$one1" -v b="$ms" 'BEGIN { printf "%.2fx", a / b }')" \
        "$(comm_of $n | awk '{ printf "%.3f + %.3f", $1, $2 }')"
done
echo "checkpoints of the four runs: byte-identical; $params parameters"
echo "tsv	#dp	run	processes	threads	ms_per_step	sent_MiB_per_step	recv_MiB_per_step"
echo "tsv	dp	one	1	1	$one1	0	0"
echo "tsv	dp	one	1	2	$one2	0	0"
echo "tsv	dp	mpi	2	1	$mpi2	$(comm_of mpi2 | tr ' ' '\t')"
echo "tsv	dp	zero1	2	1	$zero2	$(comm_of zero2 | tr ' ' '\t')"
echo "== collectives on 2 processes"
mpirun --oversubscribe -np 2 "$B/bench/mpi/bench_comm" || { echo "dp.sh: bench_comm failed" >&2; exit 1; }
