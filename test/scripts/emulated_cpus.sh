#!/bin/sh
# The library's own kernel choice on CPUs this machine is not, emulated by
# qemu-user (Debian's qemu-user, QEMU 7.2 or newer: its TCG runs AVX2 and
# FMA but no AVX-512, and reports only the named model's CPUID bits):
#   emulated_cpus.sh BUILD_DIR
# - Haswell (Intel, AVX2 + FMA) and EPYC (AMD Zen 1, AVX2 + FMA): with no
#   TB_KERNEL the library picks avx2; asked for avx2 or portable it grants
#   them; asked for avx512 it refuses (exit 77 from the tool).
# - Nehalem (SSE4.2, no AVX): the library picks portable; avx2 is refused.
# - attention_scaling at head size 64 with 2 threads and more than 60 keys
#   (the run that once corrupted the heap on AVX2-only machines, issue 11),
#   with no TB_KERNEL: on the emulated Haswell it names the avx2 kernels
#   and prints what the same binary prints on this machine with
#   TB_KERNEL=avx2, on the emulated Nehalem the portable kernels and what
#   TB_KERNEL=portable prints here, but for its timings (every printed
#   number that is not a time: the bytes per token and memory ratios, the
#   streaming-vs-full difference, the heat maps). Nehalem also catches AVX
#   code reaching the portable path: the emulator has no AVX there, so such
#   an instruction stops the run.
# make check forces each family on the real CPU (per_family.sh); this test
# covers the automatic choice on CPUs without AVX-512 or without AVX. It
# needs an x86_64 host (the emulator runs x86_64 programs only) and QEMU
# 7.2 or newer (older TCG has no AVX2); without them it says NOT RUN and
# passes, and the comparison with this machine's own run needs this machine
# to run the family (NOT RUN otherwise). Emulation is ~100x slower, so only
# these small runs go here.
set -u
B=${1:-build}
tool=$B/test/kernel_family
prog=$B/bin/attention_scaling
LIMIT=600 # seconds for any one emulated run (a hang must not stall make check)
if [ "$(uname -m)" != x86_64 ]; then
    echo "emulated CPUs: NOT RUN (host is $(uname -m), not x86_64)"
    exit 0
fi
command -v qemu-x86_64 >/dev/null 2>&1 || {
    echo "qemu-x86_64 is not installed (make deps installs qemu-user)"; exit 1; }
ver=$(qemu-x86_64 --version | sed -n 's/.*version \([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p;q')
set -- $ver
if [ $# -ne 2 ] || [ "$1" -lt 7 ] || { [ "$1" -eq 7 ] && [ "$2" -lt 2 ]; }; then
    echo "emulated CPUs: NOT RUN (qemu-x86_64 '${ver:-?}' is older than 7.2: its TCG has no AVX2)"
    exit 0
fi
for f in "$tool" "$prog"; do
    [ -x "$f" ] || { echo "$f is not built"; exit 1; }
done
TMPF=$(mktemp) || exit 1
trap 'rm -f "$TMPF" "$TMPF".*' EXIT
trap 'exit 1' INT TERM
fail=0
# emu CPU KERNEL COMMAND...: run under the emulated CPU with TB_KERNEL set
# (empty: the automatic choice); stderr, but qemu's notes on CPUID bits its
# TCG lacks, goes to $TMPF.err.
emu() {
    cpu=$1 k=$2
    shift 2
    env TB_KERNEL="$k" timeout "$LIMIT" qemu-x86_64 -cpu "$cpu" "$@" 2> "$TMPF.raw"
    rc=$?
    grep -v "TCG doesn't support requested feature" "$TMPF.raw" > "$TMPF.err"
    return $rc
}
expect() { # expect CPU TB_KERNEL WANT_RC WANT_OUTPUT
    got=$(emu "$1" "$2" "$tool")
    rc=$?
    if [ "$rc" -eq "$3" ] && [ "$got" = "$4" ]; then
        echo "ok: -cpu $1, TB_KERNEL='$2': exit $rc${4:+, $4}"
    else
        echo "FAIL: -cpu $1, TB_KERNEL='$2': exit $rc '$got', want exit $3 '$4'"
        sed 's/^/    /' "$TMPF.err"
        fail=1
    fi
}
for cpu in Haswell EPYC; do
    expect "$cpu" "" 0 avx2
    expect "$cpu" avx2 0 avx2
    expect "$cpu" portable 0 portable
    expect "$cpu" avx512 77 ""
done
expect Nehalem "" 0 portable
expect Nehalem avx2 77 ""

# Times differ; nothing else may. Part 1's table rows keep their T and
# bytes/tok columns with each "ms (xN)" pair blanked; its growth lines keep
# the memory and bytes-per-token ratios; "done: N s" is the whole run's time.
untimed() {
    sed -E -e 's/\| +[0-9.]+ +(x[0-9.]+|-) +/| ms /g' \
           -e 's/time x[0-9.]+/time x?/' -e 's/^done: .*/done/'
}
same_as_native() { # same_as_native CPU FAMILY
    if ! TB_KERNEL=$2 "$tool" >/dev/null 2>&1; then
        echo "NOT RUN: attention_scaling -cpu $1 vs this machine's $2 run (this CPU lacks $2)"
        return
    fi
    emu_out=$(emu "$1" "" "$prog" --tmax 128 --threads 2)
    rc=$?
    nat_out=$(TB_KERNEL=$2 "$prog" --tmax 128 --threads 2 2>&1) || {
        echo "FAIL: attention_scaling with TB_KERNEL=$2 on this machine:"
        echo "$nat_out" | tail -5
        fail=1
        return
    }
    if [ "$rc" -ne 0 ]; then
        echo "FAIL: attention_scaling on the emulated $1 exited $rc:"
        tail -5 "$TMPF.err"
        fail=1
    elif ! echo "$emu_out" | head -1 | grep -q "kernels $2\$"; then
        echo "FAIL: attention_scaling on the emulated $1 did not pick $2: $(echo "$emu_out" | head -1)"
        fail=1
    elif [ "$(echo "$emu_out" | untimed)" != "$(echo "$nat_out" | untimed)" ]; then
        echo "FAIL: attention_scaling on the emulated $1 differs from TB_KERNEL=$2 here:"
        echo "$emu_out" | untimed > "$TMPF.a"
        echo "$nat_out" | untimed > "$TMPF.b"
        diff "$TMPF.a" "$TMPF.b"
        fail=1
    else
        echo "ok: attention_scaling --tmax 128 --threads 2 on the emulated $1 picks $2 and prints" \
             "what TB_KERNEL=$2 prints here ($(echo "$emu_out" | untimed | wc -l) lines, times blanked)"
    fi
}
same_as_native Haswell avx2
same_as_native Nehalem portable
exit $fail
