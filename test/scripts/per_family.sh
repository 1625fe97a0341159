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
set -u
families=$1
tool=$2
label=$3
shift 3
ran=""
not_run=""
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
    echo "== $label, kernel family $k"
    start=$(date +%s)
    TB_KERNEL=$k "$@" || { echo "== $label, kernel family $k: FAILED" >&2; exit 1; }
    echo "== $label, kernel family $k: passed in $(( $(date +%s) - start )) s"
    ran="$ran $k"
done
if [ -z "$ran" ]; then
    echo "== $label: no kernel family ran (asked for: '$families')" >&2
    exit 1
fi
echo "== $label: kernel families run:$ran; not run on this CPU:${not_run:- none}"
