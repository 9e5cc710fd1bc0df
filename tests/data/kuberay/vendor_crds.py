"""Vendor the `openAPIV3Schema` of KubeRay's RayJob and RayCluster CRDs (served version v1) as one JSON file.

Usage (from the repository root, with a KubeRay checkout at the release tag):

    python3 tests/data/kuberay/vendor_crds.py --kuberay ../kuberay --tag v1.7.0

It reads `ray-operator/config/crd/bases/ray.io_rayjobs.yaml` and `ray.io_rayclusters.yaml` at
the tag (`git show TAG:PATH`, so the checkout may be on any branch), takes the v1 version's
`openAPIV3Schema` of each, unchanged, and writes `crd-schemas.json` beside this script.

The schemas are large (about 370 KB of compact JSON together: every Kubernetes pod template is
written out in full, five times per CRD) and highly repetitive, so repeated subtrees are factored
out losslessly: each is stored once under `$defs` and replaced by `{"$ref": "#/$defs/NAME"}`.
Inlining the references gives back the upstream schema exactly; the file records the SHA-256 of
each upstream schema (canonical JSON: sorted keys, no spaces) and tests/test_kuberay.py checks
that the inlined schemas hash to it. Nothing else is changed (the upstream CRDs carry no
`description` fields at this release, so there is nothing to strip).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
from collections import Counter
from pathlib import Path

import yaml

CRDS = {  # key in the vendored file -> CRD file in the KubeRay repository
    "RayJob": "ray-operator/config/crd/bases/ray.io_rayjobs.yaml",
    "RayCluster": "ray-operator/config/crd/bases/ray.io_rayclusters.yaml",
}
VERSION = "v1"
MIN_FACTORED_CHARS = 400  # subtrees shorter than this (canonical JSON) stay inline


def canonical(obj) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def sha256(obj) -> str:
    return hashlib.sha256(canonical(obj).encode()).hexdigest()


def _walk_keys(obj, found: set) -> None:
    if isinstance(obj, dict):
        found.update(obj)
        for v in obj.values():
            _walk_keys(v, found)
    elif isinstance(obj, list):
        for v in obj:
            _walk_keys(v, found)


def factor(doc: dict) -> dict:
    """Replace repeated subtrees (largest first) by `$ref`s into `$defs`; lossless, see `inline`."""
    keys: set = set()
    _walk_keys(doc, keys)
    assert "$ref" not in keys and "$defs" not in keys, "the schema already uses $ref/$defs: cannot factor"
    defs: dict[str, object] = {}
    by_text: dict[str, str] = {}  # canonical text of a factored subtree -> its name
    hints: dict[str, str] = {}

    def count(obj, counter: Counter, hint: str) -> None:
        if isinstance(obj, dict):
            text = canonical(obj)
            if len(text) >= MIN_FACTORED_CHARS:
                counter[text] += 1
                hints.setdefault(text, hint)
            for k, v in obj.items():
                count(v, counter, k if k not in ("properties", "items", "additionalProperties") else hint)
        elif isinstance(obj, list):
            for v in obj:
                count(v, counter, hint)

    def replace(obj, text: str, ref: dict):
        if isinstance(obj, dict):
            if canonical(obj) == text:
                return ref
            return {k: replace(v, text, ref) for k, v in obj.items()}
        if isinstance(obj, list):
            return [replace(v, text, ref) for v in obj]
        return obj

    while True:
        counter: Counter = Counter()
        count(doc, counter, "root")
        for d in defs.values():
            count(d, counter, "def")
        repeated = [t for t, n in counter.items() if n >= 2 and t not in by_text]
        if not repeated:
            break
        text = max(repeated, key=len)
        base = hints[text].replace("/", "-")
        name = f"{base}-{hashlib.sha256(text.encode()).hexdigest()[:8]}"
        ref = {"$ref": f"#/$defs/{name}"}
        by_text[text] = name
        doc = replace(doc, text, ref)
        defs = {k: (v if k == name else replace(v, text, ref)) for k, v in defs.items()}
        defs[name] = json.loads(text)
    return {**doc, "$defs": dict(sorted(defs.items()))}


def inline(node, defs: dict):
    """The inverse of `factor`: every `{"$ref": "#/$defs/NAME"}` replaced by its (inlined) definition."""
    if isinstance(node, dict):
        if set(node) == {"$ref"}:
            return inline(defs[node["$ref"].removeprefix("#/$defs/")], defs)
        return {k: inline(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [inline(v, defs) for v in node]
    return node


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kuberay", required=True, help="a git checkout (or bare clone) of ray-project/kuberay")
    ap.add_argument("--tag", required=True, help="release tag, e.g. v1.7.0")
    ap.add_argument("--out", default=str(Path(__file__).with_name("crd-schemas.json")))
    args = ap.parse_args()

    def git(*cmd: str) -> str:
        return subprocess.run(["git", "-C", args.kuberay, *cmd], check=True, capture_output=True, text=True).stdout

    commit = git("rev-list", "-n1", args.tag).strip()
    schemas, sources = {}, {}
    for kind, path in CRDS.items():
        crd = yaml.safe_load(git("show", f"{commit}:{path}"))
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == VERSION]
        assert crd["spec"]["names"]["kind"] == kind and version["served"] and version["storage"], path
        schema = version["schema"]["openAPIV3Schema"]
        schemas[kind] = schema
        sources[kind] = {
            "path": path,
            "git_blob": git("rev-parse", f"{commit}:{path}").strip(),
            "crd": crd["metadata"]["name"],
            "group": crd["spec"]["group"],
            "version": VERSION,
            "kind": kind,
            "openAPIV3Schema_sha256": sha256(schema),
        }
    factored = factor({"schemas": schemas})
    assert {k: inline(v, factored["$defs"]) for k, v in factored["schemas"].items()} == schemas
    out = {
        "source": {
            "repository": "https://github.com/ray-project/kuberay",
            "release": args.tag,
            "commit": commit,
            "license": "Apache-2.0",
            "crds": sources,
            "transform": "repeated subtrees stored once in $defs (lossless): inline the $refs",
        },
        **factored,
    }
    Path(args.out).write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {args.out}: {Path(args.out).stat().st_size} bytes, {len(factored['$defs'])} shared subtrees")


if __name__ == "__main__":
    main()
