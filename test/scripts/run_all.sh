#!/bin/sh
# Build-level tests that are not C unit tests:
#   headers   every public header compiles alone as C11 (gcc and clang) and
#             as C++ (g++), twice included, with warnings as errors
#   install   make install into a temporary DESTDIR, build an outside program
#             with pkg-config only, run it, make uninstall removes everything
#   readme    the README's C example equals docs/readme_example.c, builds, runs
#   docs      make docs (Doxygen) finishes with no warnings
#   clang     the library, examples, unit tests and benchmarks build with clang
#             and -Werror
#   deps      incremental build: a header or flag change rebuilds dependents
#   guide     every docs/guide/ page's program runs at a small size and prints
#             the shape its page shows (test/scripts/guide.py --fast)
#   emulated  the library's automatic kernel choice on CPUs emulated by
#             qemu-user: AVX2-only Intel and AMD models pick avx2 and refuse
#             avx512, a CPU without AVX picks portable, and an example run
#             there prints what TB_KERNEL=avx2 prints here
#             (test/scripts/emulated_cpus.sh; it sets TB_KERNEL itself)
#   mpi       tblocks_mpi.h compiles as C11 and C++ with the MPI wrapper's
#             flags; data-parallel gpt over MPI (test/scripts/mpi_gpt.sh):
#             P = 1, 2, 3 bitwise, resume across P, a killed rank; data-
#             parallel BERT fine-tuning (test/scripts/mpi_bert.sh): P = 1,
#             2, 3 bitwise for every method, MiniLM's real weights
#   runners   test/scripts/per_family.sh (families not run are named; jobs
#             and shards) and the unit test binary's shards (TB_TEST_SHARD)
# Usage: run_all.sh CC CXX [all|build|run]
#   (prints "N passed, M failed"; exits 1 on failure)
# PART picks the tests: `run` the five that run library code (install,
# readme, guide, mpi's gpt and BERT runs: they take the kernel family from TB_KERNEL,
# and make check runs them once per family), `build` the rest (they
# compile, link or generate and run no library code, so TB_KERNEL, which
# only selects kernels at run time, cannot change them: make check runs
# them once; the one exception, emulated, runs library code but chooses
# the family itself, by the CPU it emulates), `all` (default) both.
set -u
cd "$(dirname "$0")/../.."
CC=${1:-cc}
CXX=${2:-c++}
PART=${3:-all}
case "$PART" in
all | build | run) ;;
*) echo "run_all.sh: unknown part '$PART' (all, build or run)" >&2; exit 2 ;;
esac
want() { [ "$PART" = all ] || [ "$PART" = "$1" ]; }
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT INT TERM
pass=0
fail=0
ok() { pass=$((pass + 1)); echo "ok - $1"; }
bad() { fail=$((fail + 1)); echo "not ok - $1"; [ -f "$TMP/log" ] && sed 's/^/    /' "$TMP/log" | tail -40; }
run() { # run NAME COMMAND...: record pass/fail of a command, log on failure
    name=$1; shift
    if "$@" >"$TMP/log" 2>&1; then ok "$name"; else bad "$name"; fi
}

CWARN="-Wall -Wextra -Wpedantic -Werror"
# ---- headers ----------------------------------------------------------------
headers="tblocks.h $(cd include && ls tblocks/*.h)"
want build || headers=""
for h in $headers; do
    printf '#include "%s"\n#include "%s"\nint main(void) { return 0; }\n' "$h" "$h" > "$TMP/h.c"
    cp "$TMP/h.c" "$TMP/h.cpp"
    run "header $h compiles as C11 ($CC)" $CC -std=c11 $CWARN -Iinclude -c "$TMP/h.c" -o "$TMP/h.o"
    if command -v clang >/dev/null 2>&1 && [ "$CC" != clang ]; then
        run "header $h compiles as C11 (clang)" clang -std=c11 $CWARN -Iinclude -c "$TMP/h.c" -o "$TMP/h.o"
    fi
    run "header $h compiles as C++ ($CXX)" $CXX -std=c++11 $CWARN -Iinclude -c "$TMP/h.cpp" -o "$TMP/h.o"
done

# ---- install / pkg-config / uninstall ---------------------------------------
DEST="$TMP/dest"
PREFIX=/opt/tblocks-test
cat > "$TMP/app.c" <<'APP'
#include <stdio.h>
#include <string.h>
#include <tblocks.h>
int main(void)
{
    tb_ctx ctx;
    tb_rng rng;
    tb_linear lin;
    float x[3] = {1, 2, 3}, y[2];
    tb_ctx_init(&ctx);
    tb_rng_init(&rng, 1);
    if (tb_linear_init(&ctx, &lin, 3, 2, 1, &rng) != TB_OK) return 1;
    tb_tensor xt = tb_tensor_2d(x, 1, 3), yt = tb_tensor_2d(y, 1, 2);
    if (tb_linear_forward(&ctx, &lin, &xt, &yt) != TB_OK) return 1;
    tb_linear_free(&lin);
    printf("%s\n", tb_version_string());
    return 0;
}
APP
install_test() {
    make -s install DESTDIR="$DEST" PREFIX="$PREFIX" || return 1
    test -f "$DEST$PREFIX/lib/libtblocks.a" || return 1
    test -f "$DEST$PREFIX/include/tblocks/linear.h" || return 1
    pc="$DEST$PREFIX/lib/pkgconfig"
    want=$(sed -n 's/^#define TB_VERSION_MAJOR \([0-9]*\)/\1/p;s/^#define TB_VERSION_MINOR \([0-9]*\)/\1/p;s/^#define TB_VERSION_PATCH \([0-9]*\)/\1/p' include/tblocks/version.h | paste -sd.)
    got=$(PKG_CONFIG_PATH="$pc" pkg-config --modversion tblocks) || return 1
    [ "$got" = "$want" ] || { echo "pc version $got, header $want"; return 1; }
    flags=$(PKG_CONFIG_PATH="$pc" PKG_CONFIG_SYSROOT_DIR="$DEST" pkg-config --cflags --libs tblocks) || return 1
    echo "flags: $flags"
    # shellcheck disable=SC2086
    $CC -std=c11 -o "$TMP/app" "$TMP/app.c" $flags || return 1
    out=$("$TMP/app") || return 1
    [ "$out" = "$want" ] || { echo "app printed '$out', want '$want'"; return 1; }
    make -s uninstall DESTDIR="$DEST" PREFIX="$PREFIX" || return 1
    left=$(find "$DEST" -type f | wc -l)
    [ "$left" -eq 0 ] || { echo "uninstall left files:"; find "$DEST" -type f; return 1; }
}
want run && run "install to DESTDIR, link with pkg-config only, run, uninstall" install_test

# ---- README example ------------------------------------------------------------
readme_test() {
    awk '/^```c$/{on=1;next} /^```$/{if(on){exit}} on' README.md > "$TMP/readme.c"
    test -s "$TMP/readme.c" || { echo "README has no \`\`\`c block"; return 1; }
    diff -u docs/readme_example.c "$TMP/readme.c" || return 1
    $CC -std=c11 $CWARN -Iinclude -o "$TMP/readme" "$TMP/readme.c" lib/libtblocks.a -fopenmp -lm || return 1
    "$TMP/readme"
}
want run && run "README example equals docs/readme_example.c, builds and runs" readme_test

# ---- docs ---------------------------------------------------------------------
if ! want build; then
    :
elif command -v doxygen >/dev/null 2>&1; then
    run "make docs has no warnings" make -s docs BUILD="$TMP/docbuild"
else
    bad "make docs: doxygen is not installed"
fi

# ---- clang build ------------------------------------------------------------------
if want build && [ "$CC" != clang ]; then
    if command -v clang >/dev/null 2>&1; then
        run "library, examples, unit tests and benchmarks build with clang -Werror" \
            make -s -j"$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)" CC=clang \
            BUILD="$TMP/clang" LIBOUT="$TMP/clang/lib" all \
            "$TMP/clang/test/unit_tests" $(for b in test/bench/bench_*.c; do
                n=${b##*/}; printf '%s ' "$TMP/clang/bench/${n%.c}"; done) \
            $(command -v mpicc >/dev/null 2>&1 && echo "$TMP/clang/bench/mpi/bench_comm")
    else
        bad "clang build: clang is not installed"
    fi
fi

# ---- incremental build and make -j ------------------------------------------
deps_test() {
    B="$TMP/inc"
    # A clean make (no inherited -s) so that compile commands are printed.
    M="env MAKEFLAGS= MAKELEVEL= make BUILD=$B LIBOUT=$B/lib"
    compiles() { grep -c -- '-c .*\.c -o' "$1" || true; }
    $M -j4 lib > "$TMP/b1" 2>&1 || { cat "$TMP/b1"; return 1; }
    $M lib > "$TMP/b2" 2>&1 || return 1
    [ "$(compiles "$TMP/b2")" -eq 0 ] || { echo "a second build recompiled:"; cat "$TMP/b2"; return 1; }
    sleep 1
    touch include/tblocks/tensor.h
    $M lib > "$TMP/b3" 2>&1 || return 1
    [ "$(compiles "$TMP/b3")" -gt 0 ] || { echo "touching tensor.h rebuilt nothing"; return 1; }
    $M WERROR= lib > "$TMP/b4" 2>&1 || return 1
    [ "$(compiles "$TMP/b4")" -gt 0 ] || { echo "changing flags rebuilt nothing"; return 1; }
}
want build && run "make -j builds; a header or flag change rebuilds, nothing else does" deps_test

# ---- oracle manifests ------------------------------------------------------------
# The generators run in parallel into one directory: two writing the same
# <name>_cases.txt would leave whichever finished last (gen_grad.py's and
# gen_clip.py's clip_cases.txt once did).
manifest_test() {
    for f in test/oracle/gen_*.py; do
        grep -o '"[A-Za-z0-9_]*_cases\.txt"' "$f" | sort -u
    done | sort | uniq -d > "$TMP/dup"
    [ ! -s "$TMP/dup" ] || { echo "manifests written by two generators:"; cat "$TMP/dup"; return 1; }
}
want build && run "no two oracle generators write the same case manifest" manifest_test

# ---- the guide ------------------------------------------------------------------
want run && run "guide: every page's demonstration runs (fast mode) and has its page's shape" \
    python3 test/scripts/guide.py --fast

# ---- per-family runner ----------------------------------------------------------
# per_family.sh names a family the CPU lacks as NOT RUN and goes on, but fails
# on a tool that cannot answer (a crash must never read as "unsupported"), on
# an unsupported portable family, and when nothing ran. A fake tool stands in
# for a CPU without AVX-512.
per_family_test() {
    cat > "$TMP/fake_tool" <<'TOOL'
#!/bin/sh
case "$TB_KERNEL" in avx512) exit 77 ;; *) echo "$TB_KERNEL" ;; esac
TOOL
    chmod +x "$TMP/fake_tool"
    out=$(sh test/scripts/per_family.sh "portable avx2 avx512" "$TMP/fake_tool" t true) || return 1
    echo "$out"
    echo "$out" | grep -q "kernel family avx512: NOT RUN" || return 1
    echo "$out" | grep -q "kernel families run: portable avx2; not run on this CPU: avx512" || return 1
    echo "$out" | grep -q "kernel family avx2: passed in [0-9]* s" || return 1
    if sh test/scripts/per_family.sh "portable avx2" /bin/false t true; then return 1; fi
    if sh test/scripts/per_family.sh "avx512" "$TMP/fake_tool" t true; then return 1; fi
    if sh test/scripts/per_family.sh "portable" "$TMP/fake_tool" t false; then return 1; fi
    printf '#!/bin/sh\nexit 77\n' > "$TMP/none_tool"
    chmod +x "$TMP/none_tool"
    if sh test/scripts/per_family.sh "portable" "$TMP/none_tool" t true; then return 1; fi
    # Two at once: every family runs once with its own TB_KERNEL and its whole
    # output is printed (not interleaved), the NOT RUN report is the same, a
    # failure in any one family fails, and a bad job count is refused.
    out=$(env -u CK_TIMEOUT_MULTIPLIER TB_FAMILY_JOBS=2 sh test/scripts/per_family.sh "portable avx2 avx512" "$TMP/fake_tool" t \
          sh -c 'echo "begin $TB_KERNEL x$CK_TIMEOUT_MULTIPLIER"; sleep 1; echo "end $TB_KERNEL"') || return 1
    echo "$out"
    echo "$out" | grep -q "kernel families run: portable avx2; not run on this CPU: avx512" || return 1
    for k in portable avx2; do
        echo "$out" | grep -A1 "^begin $k x2\$" | grep -q "^end $k\$" || return 1
        echo "$out" | grep -q "kernel family $k: passed in [0-9]* s" || return 1
    done
    [ "$(echo "$out" | grep -c '^begin ')" -eq 2 ] || return 1
    if TB_FAMILY_JOBS=2 sh test/scripts/per_family.sh "portable avx2" "$TMP/fake_tool" t \
        sh -c '[ "$TB_KERNEL" != avx2 ]'; then return 1; fi
    if TB_FAMILY_JOBS=0 sh test/scripts/per_family.sh "portable" "$TMP/fake_tool" t true; then return 1; fi
    # Shards: each family runs once per shard, with TB_TEST_SHARD=i/S and its
    # own TB_KERNEL; a failing shard fails its family; a bad count is refused.
    out=$(TB_FAMILY_JOBS=2 TB_FAMILY_SHARDS=3 sh test/scripts/per_family.sh "portable avx2 avx512" \
          "$TMP/fake_tool" t sh -c 'echo "ran $TB_KERNEL $TB_TEST_SHARD"') || return 1
    echo "$out"
    for k in portable avx2; do
        for i in 1 2 3; do
            [ "$(echo "$out" | grep -c "^ran $k $i/3\$")" -eq 1 ] || return 1
            echo "$out" | grep -q "kernel family $k, shard $i/3: passed in [0-9]* s" || return 1
        done
    done
    [ "$(echo "$out" | grep -c '^ran ')" -eq 6 ] || return 1
    echo "$out" | grep -q "kernel families run: portable avx2; not run on this CPU: avx512" || return 1
    out=$(TB_FAMILY_JOBS=2 TB_FAMILY_SHARDS=2 sh test/scripts/per_family.sh "portable avx2" "$TMP/fake_tool" t \
          sh -c '[ "$TB_KERNEL$TB_TEST_SHARD" != avx22/2 ]' 2>&1) && return 1
    echo "$out" | grep -q "FAILED for kernel families: avx2\$" || return 1
    if TB_FAMILY_JOBS=2 TB_FAMILY_SHARDS=x sh test/scripts/per_family.sh "portable" "$TMP/fake_tool" t true; then
        return 1
    fi
    # TERM while two families run stops both process trees (the families'
    # grandchildren included) and leaves no output directory behind.
    mkdir "$TMP/pftmp"
    TMPDIR="$TMP/pftmp" TB_FAMILY_JOBS=2 sh test/scripts/per_family.sh "portable avx2" "$TMP/fake_tool" t \
        sh -c 'sleep 41.37 & wait' >/dev/null 2>&1 &
    pf=$!
    sleep 1
    [ "$(pgrep -fc '^sleep 41[.]37')" -eq 2 ] || { echo "the families did not start"; kill "$pf"; return 1; }
    kill -TERM "$pf"
    wait "$pf"
    sleep 0.5
    [ "$(pgrep -fc '^sleep 41[.]37')" -eq 0 ] || { echo "TERM left a family running"; return 1; }
    [ -z "$(ls -A "$TMP/pftmp")" ] || { echo "TERM left $(ls "$TMP/pftmp")"; return 1; }
    return 0
}
want build && run "per-family runner: NOT RUN named, unanswerable tool / nothing run / failure fail, also 2 at once" per_family_test

# ---- unit test shards -----------------------------------------------------------
# The shards of the unit test binary (TB_TEST_SHARD=i/n) split its suites:
# for every n, each suite in exactly one shard, none left out; a malformed
# or out-of-range shard is refused.
unit_shards_test() {
    bin=build/test/unit_tests
    all=$("$bin" --list | sort) || return 1
    [ -n "$all" ] || return 1
    n_all=$(echo "$all" | wc -l)
    for n in 1 2 3 5 "$n_all"; do
        i=1
        : > "$TMP/shards"
        while [ "$i" -le "$n" ]; do
            TB_TEST_SHARD=$i/$n "$bin" --list >> "$TMP/shards" || return 1
            i=$((i + 1))
        done
        [ "$(sort "$TMP/shards")" = "$all" ] || { echo "shards of $n do not partition the suites"; return 1; }
    done
    echo "$n_all suites; shards of 1, 2, 3, 5 and $n_all partition them"
    for bad in 0/2 3/2 1/0 x 1/ /2 "1/$((n_all + 1))" 1/2x; do
        if TB_TEST_SHARD=$bad "$bin" --list >/dev/null 2>&1; then echo "accepted TB_TEST_SHARD=$bad"; return 1; fi
    done
    return 0
}
want build && run "unit test shards partition the suites, bad shards refused" unit_shards_test

# ---- emulated CPUs ------------------------------------------------------------
# In the build part (run once): it chooses the family itself, by emulating
# CPUs, so make check's per-family TB_KERNEL must not reach it.
if want build; then
    if env -u TB_KERNEL sh test/scripts/emulated_cpus.sh build >"$TMP/log" 2>&1; then
        ok "emulated CPUs (qemu-user): automatic kernel choice without AVX-512 or AVX:"
        sed 's/^/    /' "$TMP/log"
    else
        bad "emulated CPUs (qemu-user, test/scripts/emulated_cpus.sh)"
    fi
fi

# ---- MPI ------------------------------------------------------------------------
if ! want build; then
    :
elif command -v mpicc >/dev/null 2>&1; then
    MPIFLAGS=$(mpicc --showme:compile | sed 's/-I/-isystem /g')
    printf '#include "tblocks_mpi.h"\n#include "tblocks_mpi.h"\nint main(void) { return 0; }\n' > "$TMP/m.c"
    cp "$TMP/m.c" "$TMP/m.cpp"
    # shellcheck disable=SC2086
    run "header tblocks_mpi.h compiles as C11 ($CC)" $CC -std=c11 $CWARN -Iinclude $MPIFLAGS -c "$TMP/m.c" -o "$TMP/m.o"
    # shellcheck disable=SC2086
    run "header tblocks_mpi.h compiles as C++ ($CXX)" $CXX -std=c++11 $CWARN -Iinclude $MPIFLAGS -c "$TMP/m.cpp" -o "$TMP/m.o"
else
    bad "MPI: mpicc is not installed (make deps installs openmpi-bin and libopenmpi-dev)"
fi
if ! want run; then
    :
elif sh test/scripts/mpi_gpt.sh build >"$TMP/log" 2>&1; then
    ok "data-parallel gpt over MPI (test/scripts/mpi_gpt.sh):"
    sed 's/^/    /' "$TMP/log"
else
    bad "data-parallel gpt over MPI (test/scripts/mpi_gpt.sh)"
fi
if ! want run; then
    :
elif sh test/scripts/mpi_bert.sh build >"$TMP/log" 2>&1; then
    ok "data-parallel BERT fine-tuning over MPI (test/scripts/mpi_bert.sh):"
    sed 's/^/    /' "$TMP/log"
else
    bad "data-parallel BERT fine-tuning over MPI (test/scripts/mpi_bert.sh)"
    sed 's/^/    /' "$TMP/log"
fi

echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
