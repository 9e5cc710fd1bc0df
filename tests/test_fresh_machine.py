"""A fresh machine gets everything the package and the tests import, and a second install is a no-op.

The missing-dependency failure (a test importing a package that only happened to be installed on
the CI machine) is caught here statically: every top-level import of every module under
``ntt_batch/`` and ``tests/`` is mapped to the distribution that provides it
(``importlib.metadata.packages_distributions``), and that distribution must be declared in
``pyproject.toml`` (``dependencies`` for the package, plus the ``test`` extra for the tests).
Imports guarded by ``try: ... except ImportError`` and ``pytest.importorskip`` are optional and
not counted. ``scripts/install.sh`` runs ``pip check`` on every call (CI's path).
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import importlib.util
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(req: str) -> str:
    return _normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req).group(1))


def _pyproject() -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _declared() -> tuple[list[str], list[str]]:
    project = _pyproject()["project"]
    return list(project["dependencies"]), list(project["optional-dependencies"]["test"])


def _optional_import_nodes(tree: ast.AST) -> set[int]:
    """ids of import nodes inside ``try:`` blocks that catch ImportError / ModuleNotFoundError."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if not isinstance(node, ast.Try):
            continue
        caught = set()
        for h in node.handlers:
            types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
            caught |= {t.id for t in types if isinstance(t, ast.Name)}
        if caught & {"ImportError", "ModuleNotFoundError"}:
            for stmt in node.body:
                out |= {id(n) for n in ast.walk(stmt) if isinstance(n, (ast.Import, ast.ImportFrom))}
    return out


def third_party_imports(folder: Path, first_party: set[str]) -> dict[str, list[str]]:
    """Top-level module → ["file:line", ...] for every required (non-optional) third-party import."""
    found: dict[str, list[str]] = {}
    for path in sorted(folder.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        optional = _optional_import_nodes(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top in first_party or top == "__future__":
                    continue
                shown = path.relative_to(REPO) if path.is_relative_to(REPO) else path
                found.setdefault(top, []).append(f"{shown}:{node.lineno}")
    return found


def _first_party() -> set[str]:
    return {"ntt_batch", "conftest"} | {p.stem for p in (REPO / "tests").glob("*.py")}


# Imported by the tests but deliberately not declared: the declared distribution named here brings
# them (see pyproject.toml: a direct boto3 requirement sends pip's resolver backtracking).
# test_transitive_allowances_hold checks that it really requires them.
VIA = {"boto3": "moto", "botocore": "moto"}


@pytest.mark.parametrize("folder, scope", [("ntt_batch", "dependencies"), ("tests", "dependencies + test extra")])
def test_every_imported_package_is_declared(folder, scope):
    deps, test_deps = _declared()
    declared = {_requirement_name(r) for r in deps + (test_deps if folder == "tests" else [])}
    if folder == "tests":
        declared |= {dist for dist, via in VIA.items() if via in declared}
    providers = md.packages_distributions()
    problems = []
    for module, where in sorted(third_party_imports(REPO / folder, _first_party()).items()):
        dists = {_normalize(d) for d in providers.get(module, [])}
        if not dists:
            problems.append(
                f"{module} (imported at {where[0]}) is not installed, so no declared distribution provides it"
            )
        elif not dists & declared:
            problems.append(
                f"{module} (imported at {where[0]}) comes from {', '.join(sorted(dists))}, "
                f"which pyproject.toml does not declare in {scope}"
            )
    assert not problems, "undeclared imports:\n  " + "\n  ".join(problems)


def test_transitive_allowances_hold():
    """Each distribution in VIA is a requirement of the declared one that is said to bring it."""
    for dist, via in VIA.items():
        requires = {_requirement_name(r) for r in md.requires(via) or []}
        assert dist in requires, f"{via} no longer requires {dist}: declare {dist} in pyproject.toml's test extra"


def test_the_guard_sees_an_undeclared_import(tmp_path):
    """The check is real: required imports are reported; optional, relative and standard-library ones are not."""
    (tmp_path / "m.py").write_text(
        "import yaml\nfrom scipy import ndimage\ntry:\n    import boto3\nexcept ImportError:\n"
        "    boto3 = None\nfrom . import sibling\nimport json\n"
    )
    assert set(third_party_imports(tmp_path, set())) == {"yaml", "scipy"}


def test_declared_dependencies_are_installed_in_matching_versions():
    """What `pip check` cannot see: the test extra's requirements (extras are not checked by pip)."""
    requirements = pytest.importorskip("packaging.requirements")
    deps, test_deps = _declared()
    problems = []
    for text in deps + test_deps:
        req = requirements.Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = md.version(req.name)
        except md.PackageNotFoundError:
            problems.append(f"{text}: not installed")
            continue
        if req.specifier and not req.specifier.contains(version, prereleases=True):
            problems.append(f"{text}: {version} installed")
    assert not problems, "run `bash scripts/install.sh --test`:\n  " + "\n  ".join(problems)


def test_every_test_module_imports(tmp_path):
    """Each third-party module the tests import can be found (no collection error on a fresh machine)."""
    missing = [m for m in third_party_imports(REPO / "tests", _first_party()) if importlib.util.find_spec(m) is None]
    assert not missing, f"not installed: {missing}"


def test_second_install_is_a_quick_no_op(tmp_path):
    """`scripts/install.sh` after an install: stamp + imports + pip check, nothing installed, seconds not minutes.

    Runs only where this environment was installed by the script (its stamp is there and current); a
    python shim refuses any `pip install`, so this test never changes the environment.
    """
    stamp = Path(sys.prefix) / ".ntt-batch-install.stamp"
    if not stamp.is_file():
        pytest.skip("this environment was not installed by scripts/install.sh (no stamp in sys.prefix)")
    key = (
        __import__("hashlib")
        .sha256((REPO / "scripts/install.sh").read_bytes() + (REPO / "pyproject.toml").read_bytes())
        .hexdigest()
    )
    stamped = stamp.read_text().split()
    if not stamped or stamped[0] != key:
        pytest.skip(
            "the install stamp predates the current pyproject.toml/install.sh (the next install.sh call reinstalls)"
        )
    shim = tmp_path / "python"
    shim.write_text(
        f'#!/bin/sh\nif [ "$1" = -m ] && [ "$2" = pip ] && [ "$3" = install ]; then\n'
        f"  echo 'SHIM: pip install attempted' >&2; exit 97\nfi\nexec {sys.executable} \"$@\"\n"
    )
    shim.chmod(0o755)
    extras = ["--test"] if stamped[1:] == ["[test]"] else []
    t0 = time.perf_counter()
    res = subprocess.run(
        ["bash", "scripts/install.sh", *extras],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": str(shim)},
        timeout=300,
    )
    seconds = time.perf_counter() - t0
    assert res.returncode == 0 and "SHIM" not in res.stderr, res.stdout + res.stderr
    assert "already installed" in res.stdout and "ntt-batch" in res.stdout, res.stdout
    assert seconds < 120, f"no-op install took {seconds:.0f} s"
