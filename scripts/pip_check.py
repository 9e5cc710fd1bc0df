"""`pip check`, limited to ntt-batch's own dependency tree.

A machine can hold unrelated tools whose pins conflict (e.g. a system awscli pinning an older
botocore than s3fs needs); those are not ours to fix and must not fail the install. Any broken
requirement of a package that ntt-batch (with its extras) depends on, directly or not, does.
Exit 0 when clean, 1 with the offending `pip check` lines otherwise.
"""

from __future__ import annotations

import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, distribution


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(root: str = "ntt-batch") -> set[str]:
    seen, todo = set(), [root]
    while todo:
        name = _norm(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for r in reqs:
            if name != "ntt-batch" and "extra ==" in r:  # only ntt-batch's own extras are installed on purpose
                continue
            m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", r)
            if m:
                todo.append(m.group(1))
    return seen


def main() -> int:
    ours = closure()
    out = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True)
    bad = [line for line in out.stdout.splitlines() if line.strip() and _norm(line.split()[0]) in ours]
    ignored = [line for line in out.stdout.splitlines() if line.strip() and line not in bad and "No broken" not in line]
    for line in ignored:
        print(f"pip check (not ntt-batch's dependency tree, ignored): {line}", file=sys.stderr)
    for line in bad:
        print(f"pip check: {line}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
