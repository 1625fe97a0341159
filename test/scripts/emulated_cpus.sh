#!/bin/sh
# The library's own kernel choice on CPUs this machine is not, emulated by
# qemu-user (Debian's qemu-user, QEMU 7.2 or newer: its TCG runs AVX2 and
# FMA but no AVX-512, and reports only the named model's CPUID bits):
#   emulated_cpus.sh BUILD_DIR
# - Haswell (Intel, AVX2 + FMA) and EPYC (AMD Zen 1, AVX2 + FMA): with no
#   TB_KERNEL the library picks avx2; TB_KERNEL=avx2 and portable run;
#   TB_KERNEL=avx512 is refused as unsupported (exit 77 from the tool).
# - Nehalem (SSE4.2, no AVX): the library picks portable; avx2 is refused.
# - On the emulated Haswell, with no TB_KERNEL: attention_scaling at head
#   size 64 with 2 threads and more than 60 keys (the run that once corrupted
#   the heap on AVX2-only machines, issue 11) names the avx2 kernels and
#   prints, but for its timings, exactly what the same binary prints on this
#   machine with TB_KERNEL=avx2 (same kernels, same bits).
# make check forces each family on the real CPU (per_family.sh); this test
# is what covers the automatic choice on a CPU without AVX-512. It needs an
# x86_64 host (the emulator runs x86_64 programs only); elsewhere it says so
# and passes. Emulation is ~100x slower, so only these small runs go here.
set -u
B=${1:-build}
tool=$B/test/kernel_family
prog=$B/bin/attention_scaling
if [ "$(uname -m)" != x86_64 ]; then
    echo "emulated CPUs: NOT RUN (host is $(uname -m), not x86_64)"
    exit 0
fi
command -v qemu-x86_64 >/dev/null 2>&1 || {
    echo "qemu-x86_64 is not installed (make deps installs qemu-user)"; exit 1; }
for f in "$tool" "$prog"; do
    [ -x "$f" ] || { echo "$f is not built"; exit 1; }
done
fail=0
emu() { # emu CPU COMMAND...: run under the emulated CPU, qemu's notes dropped
    cpu=$1; shift
    qemu-x86_64 -cpu "$cpu" "$@" 2> "$TMPF.err"
    rc=$?
    grep -v "TCG doesn't support requested feature" "$TMPF.err" >&2
    return $rc
}
TMPF=$(mktemp) || exit 1
trap 'rm -f "$TMPF" "$TMPF".*' EXIT INT TERM
expect() { # expect CPU TB_KERNEL WANT_RC WANT_OUTPUT
    got=$(TB_KERNEL=$2 emu "$1" "$tool" 2>/dev/null)
    rc=$?
    if [ "$rc" -eq "$3" ] && [ "$got" = "$4" ]; then
        echo "ok: -cpu $1, TB_KERNEL='$2': exit $rc${4:+, $4}"
    else
        echo "FAIL: -cpu $1, TB_KERNEL='$2': exit $rc '$got', want exit $3 '$4'"
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

# Timings differ; everything else must not (part 1's table rows and growth
# lines and the closing "done: N s" are timings).
untimed() { grep -v -E '^ +[0-9]+ \| | time x[0-9]|^done: '; }
emu_out=$(env -u TB_KERNEL qemu-x86_64 -cpu Haswell "$prog" --tmax 128 --threads 2 2>"$TMPF.err")
rc=$?
grep -v "TCG doesn't support requested feature" "$TMPF.err"
nat_out=$(TB_KERNEL=avx2 "$prog" --tmax 128 --threads 2) || { echo "FAIL: native avx2 run"; exit 1; }
if [ "$rc" -ne 0 ]; then
    echo "FAIL: attention_scaling on the emulated Haswell exited $rc"
    fail=1
elif ! echo "$emu_out" | head -1 | grep -q 'kernels avx2$'; then
    echo "FAIL: attention_scaling on the emulated Haswell did not pick avx2: $(echo "$emu_out" | head -1)"
    fail=1
elif [ "$(echo "$emu_out" | untimed)" != "$(echo "$nat_out" | untimed)" ]; then
    echo "FAIL: attention_scaling on the emulated Haswell differs from TB_KERNEL=avx2 here:"
    echo "$emu_out" | untimed > "$TMPF.a"
    echo "$nat_out" | untimed > "$TMPF.b"
    diff "$TMPF.a" "$TMPF.b"
    fail=1
else
    echo "ok: attention_scaling --tmax 128 --threads 2 on the emulated Haswell picks avx2 and prints" \
         "what TB_KERNEL=avx2 prints here ($(echo "$emu_out" | untimed | wc -l) untimed lines)"
fi
exit $fail
