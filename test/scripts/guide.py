#!/usr/bin/env python3
"""The guide's demonstrations: run them, check them, write their output.

docs/guide/guide.manifest lists every demonstration: the page it belongs to,
the command a reader runs (full mode) and a smaller command of the same
program (fast mode), which part of the output the page shows, and lines that
output must contain (its shape: table headers and the like).

  guide.py            full mode (`make guide`): runs every full command (a
                      command shared by several demonstrations runs once),
                      checks its shape, and rewrites the demonstration's
                      output section in its page, between
                        <!-- guide-output NAME -->  and  <!-- guide-output NAME end -->
                      with the command, the run's date, CPU, Linux release,
                      kernel family and wall time. Nothing else in a page changes.
  guide.py --fast     fast mode (`make guide-fast`, and the script tests of
                      `make check`): runs every fast command and fails if one
                      exits nonzero or its output lacks a line of the shape,
                      or if the full command names an option its program's
                      --help no longer lists;
                      checks that every page has its markers, that the
                      committed output shows the same shape, and that the
                      index links every page. Writes nothing.
  guide.py --only NAME[,NAME]   restrict either mode to some demonstrations.

Commands run with sh from the repository root, with the caller's TB_KERNEL.
Exit status: 0 when every demonstration passed, 1 otherwise.
"""
import argparse
import os
import platform
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GUIDE = os.path.join("docs", "guide")
MANIFEST = os.path.join(GUIDE, "guide.manifest")
KEYS = ("demo", "page", "full", "fast", "from", "until", "expect", "note")


def parse_manifest(path):
    """Blocks of `key value` lines, separated by blank lines; # starts a comment line."""
    demos, cur = [], None
    with open(path, encoding="utf-8") as f:
        for lineno, raw in enumerate(f, 1):
            line = raw.rstrip("\n")
            if line.startswith("#"):
                continue
            if not line.strip():
                cur = None
                continue
            key, _, value = line.partition(" ")
            value = value.strip()
            if key not in KEYS or not value:
                sys.exit(f"{path}:{lineno}: expected one of {', '.join(KEYS)} and a value")
            if key == "demo":
                cur = {"demo": value, "expect": [], "line": lineno}
                demos.append(cur)
                continue
            if cur is None:
                sys.exit(f"{path}:{lineno}: '{key}' outside a demo block")
            if key == "expect":
                cur["expect"].append(value)
            elif key in cur:
                sys.exit(f"{path}:{lineno}: '{key}' twice in demo {cur['demo']}")
            else:
                cur[key] = value
    names = set()
    for d in demos:
        for key in ("page", "full", "fast"):
            if key not in d:
                sys.exit(f"{path}:{d['line']}: demo {d['demo']} has no '{key}'")
        if not d["expect"]:
            sys.exit(f"{path}:{d['line']}: demo {d['demo']} has no 'expect' line")
        if d["demo"] in names:
            sys.exit(f"{path}:{d['line']}: demo {d['demo']} twice")
        names.add(d["demo"])
    return demos


def excerpt(demo, text):
    """The lines the page shows: from the first line matching `from` (inclusive)
    to the next line matching `until` (exclusive); all of it without them."""
    lines = [l.rstrip() for l in text.splitlines()]
    if "from" in demo:
        rx = re.compile(demo["from"])
        start = next((i for i, l in enumerate(lines) if rx.search(l)), None)
        if start is None:
            return None
        lines = lines[start:]
    if "until" in demo:
        rx = re.compile(demo["until"])
        end = next((i for i, l in enumerate(lines) if i > 0 and rx.search(l)), None)
        if end is not None:
            lines = lines[:end]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def missing_shape(demo, shown):
    return [e for e in demo["expect"] if shown is None or e not in shown]


class Runner:
    """Runs each distinct command once and remembers its result."""

    def __init__(self, timeout):
        self.timeout = timeout
        self.done = {}

    def run(self, cmd):
        if cmd not in self.done:
            t0 = time.monotonic()
            try:
                p = subprocess.run(["sh", "-c", cmd], cwd=ROOT, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, timeout=self.timeout)
                rc, out = p.returncode, p.stdout.decode("utf-8", errors="replace")
            except subprocess.TimeoutExpired as e:
                rc = "timeout"
                out = (e.stdout or b"").decode("utf-8", errors="replace")
            self.done[cmd] = (rc, out, time.monotonic() - t0)
        return self.done[cmd]


def programs(cmd):
    """[(program, subcommand or None, [--options])] of each `&&` part of cmd."""
    out = []
    for part in cmd.split("&&"):
        tok = shlex.split(part)
        if not tok:
            continue
        sub = tok[1] if len(tok) > 1 and not tok[1].startswith("-") else None
        out.append((tok[0], sub, [t.split("=")[0] for t in tok if t.startswith("--")]))
    return out


def full_command_problems(demo, runner):
    """Fast mode runs the small command; this checks that the full one would
    still parse: the same programs and subcommands, and every option it
    passes listed by that program's --help."""
    full, fast = programs(demo["full"]), programs(demo["fast"])
    if [(p, s) for p, s, _ in full] != [(p, s) for p, s, _ in fast]:
        return [f"{demo['demo']}: the fast command runs other programs than the full one"]
    problems = []
    for prog, sub, opts in full:
        helpcmd = " ".join(shlex.quote(x) for x in [prog] + ([sub] if sub else []) + ["--help"])
        rc, out, _ = runner.run(helpcmd)
        if rc != 0:
            problems.append(f"{demo['demo']}: `{helpcmd}` exited with {rc}")
            continue
        lost = [o for o in opts if not re.search(re.escape(o) + r"\b", out)]
        if lost:
            problems.append(f"{demo['demo']}: `{helpcmd}` does not list {', '.join(lost)}, "
                            f"which the page's command `{demo['full']}` passes")
    return problems


def cpu_model():
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def kernel_family(tool):
    fam = os.environ.get("TB_KERNEL", "")
    if fam and fam != "auto":
        return f"{fam} (TB_KERNEL)"
    try:
        best = subprocess.run([tool], env=dict(os.environ, TB_KERNEL="auto"), cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                              check=True).stdout.decode().strip()
        return f"{best} (the best this CPU runs)"
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def markers(name):
    return (f"<!-- guide-output {name} -->", f"<!-- guide-output {name} end -->")


def section_of(page_text, name):
    begin, end = markers(name)
    i, j = page_text.find(begin), page_text.find(end)
    if i < 0 or j < i:
        return None
    return page_text[i + len(begin):j]


def write_section(path, name, body):
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin, end = markers(name)
    i, j = text.find(begin), text.find(end)
    if i < 0 or j < i:
        return False
    new = text[:i + len(begin)] + "\n" + body + "\n" + text[j:]
    if new != text:
        with open(path, "w", encoding="utf-8") as f:
            f.write(new)
    return True


def run_info(tool):
    load = ""
    try:
        with open("/proc/loadavg", encoding="utf-8") as f:
            load = f", load average {f.read().split()[0]} when it started"
    except OSError:
        pass
    return (time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            f"{cpu_model()} ({os.cpu_count()} logical CPUs{load})",
            f"{platform.system()} {platform.release()}", kernel_family(tool))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--fast", action="store_true", help="fast mode: run and check, write nothing")
    ap.add_argument("--only", default="", help="comma-separated demonstration names")
    ap.add_argument("--manifest", default=MANIFEST, help="the list (default %(default)s)")
    ap.add_argument("--family-tool", default="build/test/kernel_family",
                    help="prints the best kernel family (full mode's run line)")
    ap.add_argument("--timeout", type=float, default=0,
                    help="seconds per command (default: 120 fast, 1800 full)")
    args = ap.parse_args()
    os.chdir(ROOT)
    # The commands write their files (checkpoints, adapters) under build/guide.
    os.makedirs(os.path.join("build", "guide"), exist_ok=True)
    demos = parse_manifest(args.manifest)
    if args.only:
        want = set(args.only.split(","))
        unknown = want - {d["demo"] for d in demos}
        if unknown:
            sys.exit(f"guide: no demonstration named {', '.join(sorted(unknown))}")
        demos = [d for d in demos if d["demo"] in want]
    runner = Runner(args.timeout or (120 if args.fast else 1800))
    mode = "fast" if args.fast else "full"
    failures = []
    t_all = time.monotonic()

    # Static checks: pages, markers, index (both modes; cheap).
    index_path = os.path.join(GUIDE, "index.md")
    index = open(index_path, encoding="utf-8").read() if os.path.exists(index_path) else ""
    if not index:
        failures.append(f"{index_path} is missing")
    for d in demos:
        page = os.path.join(GUIDE, d["page"])
        if not os.path.exists(page):
            failures.append(f"{d['demo']}: page {page} does not exist")
            continue
        if f"]({d['page']})" not in index:
            failures.append(f"{d['demo']}: {index_path} does not link {d['page']}")
        shown = section_of(open(page, encoding="utf-8").read(), d["demo"])
        if shown is None:
            failures.append(f"{d['demo']}: {page} lacks the markers {' / '.join(markers(d['demo']))}")
        elif args.fast and shown.strip():
            # What the page shows must have the shape the check looks for
            # (an empty section is a page whose first `make guide` is to come).
            miss = missing_shape(d, shown)
            if miss:
                failures.append(f"{d['demo']}: the output in {page} lacks {miss!r}")

    info = None if args.fast else run_info(args.family_tool)
    for d in demos:
        cmd = d[mode]
        again = cmd in runner.done
        rc, out, secs = runner.run(cmd)
        shown = excerpt(d, out)
        miss = missing_shape(d, shown)
        status = "ok" if rc == 0 and not miss else "FAILED"
        when = "(same run)" if again else f"{secs:7.1f} s"
        print(f"guide {mode}: {d['demo']:<24} {status:<6} {when:>10}  {cmd}", flush=True)
        if rc != 0:
            failures.append(f"{d['demo']}: `{cmd}` exited with {rc}; its last lines:\n"
                            + "\n".join("    " + l for l in out.splitlines()[-15:]))
            continue
        if miss:
            failures.append(f"{d['demo']}: the output of `{cmd}` lacks {miss!r}"
                            + ("" if shown is not None else f" (no line matches from {d['from']!r})"))
            continue
        if args.fast:
            failures += full_command_problems(d, runner)
            continue
        date, cpu, system, fam = info
        part = ("Part of the output" if "from" in d or "until" in d else "The output")
        note = f" {d['note']}" if "note" in d else ""
        body = (f"{part} of a real run, {date}: CPU {cpu}; {system}; kernel family {fam}; "
                f"{secs:.1f} s wall.{note}\n\n```\n$ {cmd}\n{shown}\n```")
        if not write_section(os.path.join(GUIDE, d["page"]), d["demo"], body):
            failures.append(f"{d['demo']}: could not write {d['page']}")

    total = time.monotonic() - t_all
    print(f"guide {mode}: {len(demos)} demonstrations, {len(runner.done)} commands, "
          f"{total:.1f} s; {len(failures)} problem(s)")
    for f in failures:
        print(f"guide {mode}: {f}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
