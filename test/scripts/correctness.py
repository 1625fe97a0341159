#!/usr/bin/env python3
"""Summarise one unit-test run into docs/correctness.md.

Reads the log of test/scripts/correctness_run.sh (every suite of
test/unit/suites.h run once, in one kernel family, one process per suite) and
rewrites the section of docs/correctness.md between
    <!-- correctness-table -->  and  <!-- correctness-table end -->
with one row per suite: how it verifies (PyTorch/transformers/PEFT oracle
files, finite differences, thread determinism, fuzz seeds it replays), how
many Check assertions ran, and the worst figures its comparisons printed:

  compare <label> n=.. max_abs=.. max_rel=.. (rtol=.. atol=..) of_tol=..       (testutil.c)
  gradcheck <label> checked=.. max|num|=.. max_err=.. (rtol=.. atol=..) of_tol=..
  units <label>: max |err| / unit = X (f32), Y (f64)              (test_lstm.c, test_ptuning.c)
The worst of a suite is the line with the largest of_tol, the share of its
tolerance the worst element used.

Which methods a suite uses is read from its source, test/unit/test_<suite>.c
(the calls that load oracle files, the finite-difference helper, the names
of thread-determinism tests) and from the Makefile's fuzz targets; the
figures come from the log only. Fails if the log is incomplete or a suite
failed.

Usage: correctness.py --log LOG --family FAMILY [--doc docs/correctness.md]
"""
import argparse
import os
import platform
import re
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BEGIN, END = "<!-- correctness-table -->", "<!-- correctness-table end -->"

NUM = r"([-+0-9.eE]+|inf|nan)"
RX_SUITE = re.compile(r"^== suite (\w+)$")
RX_END = re.compile(r"^== end (\w+) rc=(\d+) seconds=(\d+)$")
RX_COMPARE = re.compile(r"^\s+compare (.+?)\s+n=(\d+)\s+max_abs=" + NUM + r" max_rel=" + NUM
                        + r" \(rtol=" + NUM + r" atol=" + NUM + r"\) of_tol=" + NUM)
RX_GRAD = re.compile(r"^\s+gradcheck (.+?)\s+checked=(\d+)\s+max\|num\|=" + NUM + r" max_err="
                     + NUM + r" \(rtol=" + NUM + r" atol=" + NUM + r"\) of_tol=" + NUM)
RX_UNITS = re.compile(r"^\s+units (.+?): max \|err\| / unit = " + NUM + r" \(f32\), " + NUM
                      + r" \(f64\)")
RX_CHECKS = re.compile(r"^\d+%: Checks: (\d+), Failures: (\d+), Errors: (\d+)")
RX_FAMILY = re.compile(r"^kernel family: (\w+)")

# What a test source does, by the calls it makes.
SRC_ORACLE = re.compile(r"tbt_ref_load|tbt_check_manifest|_verify\.py")
SRC_FD = re.compile(r"tbt_gradcheck|finite[- ]difference")
SRC_DET = re.compile(r"tcase_add_test\(\s*\w+\s*,\s*\w*(thread|determin|bitwise|reproduc)\w*")


def parse_log(path):
    suites, cur = {}, None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            m = RX_SUITE.match(line)
            if m:
                cur = suites.setdefault(m.group(1), {"compare": [], "grad": [], "units": [],
                                                     "checks": None, "rc": None,
                                                     "family": None})
                continue
            m = RX_END.match(line)
            if m:
                suites[m.group(1)]["rc"] = int(m.group(2))
                suites[m.group(1)]["seconds"] = int(m.group(3))
                cur = None
                continue
            if cur is None:
                continue
            m = RX_COMPARE.match(line)
            if m:
                err, frac = float(m.group(3)), float(m.group(7))
                # An exact comparison (rtol = atol = 0) that found no difference
                # used none of its tolerance (older lines printed 0/0 as inf).
                if err == 0.0:
                    frac = 0.0
                cur["compare"].append((m.group(1), int(m.group(2)), err,
                                       float(m.group(4)), float(m.group(5)), float(m.group(6)),
                                       frac))
                continue
            m = RX_GRAD.match(line)
            if m:
                cur["grad"].append((m.group(1), float(m.group(7)), float(m.group(4))))
                continue
            m = RX_UNITS.match(line)
            if m:
                cur["units"].append((m.group(1), float(m.group(2))))
                continue
            m = RX_CHECKS.match(line)
            if m:
                cur["checks"] = tuple(int(g) for g in m.groups())
                continue
            m = RX_FAMILY.match(line)
            if m:
                cur["family"] = m.group(1)
    return suites


def suite_names():
    text = open(os.path.join(ROOT, "test/unit/suites.h"), encoding="utf-8").read()
    return re.findall(r"^\s*X\((\w+)\)", text, re.M)


def fuzz_map(names):
    """Fuzz target -> the suites that replay its seeds (or share its name)."""
    mk = open(os.path.join(ROOT, "Makefile"), encoding="utf-8").read()
    targets = []
    for m in re.finditer(r"^FUZZ_TARGETS\s*[:+]?=\s*(.+)$", mk, re.M):
        targets += m.group(1).split()
    out = {}
    for t in targets:
        seeds = re.search(r"^FUZZ_SEEDS_" + t + r"\s*:?=\s*(.+)$", mk, re.M)
        dirs = [os.path.basename(d) for d in seeds.group(1).split()] if seeds else []
        for s in names:
            src = os.path.join(ROOT, "test/unit", f"test_{s}.c")
            text = open(src, encoding="utf-8").read() if os.path.exists(src) else ""
            # corpus and regressions are the safetensors target's
            # directories, and common words in other tests.
            if s == t or s == t.split("_")[0] or any(
                    d not in ("corpus", "regressions")
                    and re.search(r"\b" + re.escape(d) + r"\b", text) for d in dirs):
                out.setdefault(s, []).append(t)
    return out


def methods(suite, log, fuzz):
    src = os.path.join(ROOT, "test/unit", f"test_{suite}.c")
    text = open(src, encoding="utf-8").read() if os.path.exists(src) else ""
    got = []
    if SRC_ORACLE.search(text):
        got.append("oracle")
    if SRC_FD.search(text) or log["grad"]:
        got.append("finite differences")
    if SRC_DET.search(text):
        got.append("threads")
    if suite in fuzz:
        got.append("fuzz seeds (" + ", ".join(fuzz[suite]) + ")")
    return got


def g(x):
    return "0" if x == 0 else f"{x:.1e}"


def cell_compare(c):
    """Count; the comparison that used the largest share of its tolerance."""
    if not c:
        return "-"
    w = max(c, key=lambda r: r[6])
    return (f"{len(c)}: {w[6]:.2g} of tol. (`{w[0]}`: max_abs {g(w[2])}, "
            f"rtol {g(w[4])}, atol {g(w[5])})")


def cell_grad(gr):
    if not gr:
        return "-"
    w = max(gr, key=lambda r: r[1])
    return f"{len(gr)}: {w[1]:.2g} of tol. (`{w[0]}`: max_err {g(w[2])})"


def cell_units(u):
    if not u:
        return ""
    w = max(u, key=lambda r: r[1])
    return f"; largest error / scale vs float32 PyTorch {g(w[1])} (`{w[0]}`)"


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--log", required=True)
    ap.add_argument("--family", required=True)
    ap.add_argument("--doc", default=os.path.join(ROOT, "docs", "correctness.md"))
    args = ap.parse_args()
    logs = parse_log(args.log)
    names = suite_names()
    problems = [f"suite {s}: not in the log" for s in names if s not in logs]
    problems += [f"suite {s}: no end line (the run was cut short)" for s in names
                 if s in logs and logs[s]["rc"] is None]
    problems += [f"suite {s}: failed (exit {logs[s]['rc']})" for s in names
                 if s in logs and logs[s]["rc"] not in (None, 0)]
    problems += [f"suite {s}: ran in family {logs[s]['family']}, not {args.family}" for s in names
                 if s in logs and logs[s]["family"] not in (None, args.family)]
    if problems:
        for p in problems:
            print(f"correctness: {p}", file=sys.stderr)
        return 1

    fuzz = fuzz_map(names)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.path.getmtime(args.log)))
    n_cmp = sum(len(logs[s]["compare"]) for s in names)
    n_grad = sum(len(logs[s]["grad"]) for s in names)
    n_checks = sum((logs[s]["checks"] or (0,))[0] for s in names)
    secs = sum(logs[s].get("seconds", 0) for s in names)
    rows = [f"Generated by `make correctness` (test/scripts/correctness.py) from the run of "
            f"{when}: every suite of `test/unit/suites.h`, kernel family **{args.family}**, "
            f"on {cpu_model()} ({os.cpu_count()} logical CPUs), "
            f"{platform.system()} {platform.release()}; {len(names)} suites, {n_checks} "
            f"checks, no failure; {n_cmp} comparisons and {n_grad} finite-difference "
            f"checks printed; {secs} s.",
            "",
            "| suite | verified by | checks | comparisons: count, worst | finite differences: count, worst | s |",
            "| --- | --- | ---: | --- | --- | ---: |"]
    for s in names:
        L = logs[s]
        checks = L["checks"][0] if L["checks"] else "-"
        how = ", ".join(methods(s, L, fuzz)) or "unit checks"
        rows.append(f"| {s} | {how} | {checks} | {cell_compare(L['compare'])}"
                    f"{cell_units(L['units'])} | {cell_grad(L['grad'])} | {L.get('seconds', '-')} |")
    body = "\n".join(rows)
    with open(args.doc, encoding="utf-8") as f:
        text = f.read()
    i, j = text.find(BEGIN), text.find(END)
    if i < 0 or j < i:
        print(f"correctness: {args.doc} lacks the markers {BEGIN} / {END}", file=sys.stderr)
        return 1
    with open(args.doc, "w", encoding="utf-8") as f:
        f.write(text[:i + len(BEGIN)] + "\n" + body + "\n" + text[j:])
    print(f"correctness: {args.doc}: {len(names)} suites from {args.log} ({args.family})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
