#!/bin/sh
# Run one test command once per kernel family, with TB_KERNEL set to it:
#   per_family.sh "FAMILIES" KERNEL_FAMILY_TOOL LABEL COMMAND...
# A family this CPU or build cannot run is reported by name as NOT RUN
# (never skipped silently); an unknown name, or a failing run, fails.
# Prints a summary line naming the families run and not run.
set -u
families=$1
tool=$2
label=$3
shift 3
ran=""
not_run=""
for k in $families; do
    TB_KERNEL=$k "$tool" >/dev/null 2>&1
    rc=$?
    if [ "$rc" -eq 1 ]; then
        echo "== $label, kernel family $k: NOT RUN (this CPU or build cannot run it)"
        not_run="$not_run $k"
        continue
    elif [ "$rc" -ne 0 ]; then
        echo "== $label: TB_KERNEL=$k names no kernel family" >&2
        exit 1
    fi
    echo "== $label, kernel family $k"
    TB_KERNEL=$k "$@" || { echo "== $label, kernel family $k: FAILED" >&2; exit 1; }
    ran="$ran $k"
done
echo "== $label: kernel families run:${ran:- none}; not run on this CPU:${not_run:- none}"
