"""Exit 0 if every `name==version` pin in the given requirements file is
installed (a local version label such as +cpu is accepted), else list the
missing or mismatched ones and exit 1."""
import sys
from importlib import metadata

bad = []
for line in open(sys.argv[1], encoding="utf-8"):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    name, _, want = line.partition("==")
    try:
        have = metadata.version(name.strip())
    except metadata.PackageNotFoundError:
        bad.append(f"{name.strip()} (not installed)")
        continue
    if want and have.split("+", 1)[0] != want.strip():
        bad.append(f"{name.strip()} {have} (want {want.strip()})")
for b in bad:
    print("missing:", b)
sys.exit(1 if bad else 0)
