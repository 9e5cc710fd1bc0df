"""Third-party plug-ins through entry points, used from the real ``ntt-batch`` command.

``tests/plugin_demo`` is a plug-in package as a third party would write it: one module per
extension point (an encoder family, an export format, a kind of input source, a merger) and one
entry point each in its ``pyproject.toml``. The ``demo_site`` fixture installs it the way pip lays
a distribution out (the package next to ``ntt_plugin_demo-0.1.dist-info/{METADATA,
entry_points.txt}``, the entry points copied from the pyproject) in a folder that the commands
below get on their ``PYTHONPATH``; nothing in ``ntt_batch`` names the plug-in.

The registry mechanics (lazy loading, broken plug-ins, name clashes) are checked in-process on
registries of their own with throw-away distributions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_merge_eval_viz import _instance, _row, write_shards

from ntt_batch.plugins import PluginWarning, Registry, UnknownEntryError
from ntt_batch.storage.masks import encode_rle

REPO = Path(__file__).resolve().parents[1]
PLUGIN = Path(__file__).resolve().parent / "plugin_demo"


def write_distribution(site: Path, name: str, version: str, entry_points: dict[str, dict[str, str]]) -> Path:
    """A ``<name>-<version>.dist-info`` folder in ``site``: what ``importlib.metadata`` reads (as pip writes it)."""
    dist = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    text = "".join(
        f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in eps.items()) + "\n" for group, eps in entry_points.items()
    )
    (dist / "entry_points.txt").write_text(text)
    return dist


def read_pyproject(path: Path) -> tuple[str, str, dict[str, dict[str, str]]]:
    """Name, version and entry points of a plug-in's pyproject.toml (the plain subset it uses:
    ``key = "value"`` lines; ``tomllib`` is Python 3.11+)."""
    project: dict[str, str] = {}
    groups: dict[str, dict[str, str]] = {}
    table = None
    for line in path.read_text().splitlines():
        if header := re.fullmatch(r"\[(.+)\]", line.strip()):
            table = header.group(1)
            if group := re.fullmatch(r'project\.entry-points\."(.+)"', table):
                table = groups.setdefault(group.group(1), {})
        elif item := re.fullmatch(r'([\w.-]+)\s*=\s*"(.*)"', line.strip()):
            if isinstance(table, dict):
                table[item.group(1)] = item.group(2)
            elif table == "project":
                project[item.group(1)] = item.group(2)
    return project["name"], project["version"], groups


@pytest.fixture(scope="module")
def demo_site(tmp_path_factory) -> Path:
    """The demo plug-in installed into a fresh folder (package + dist-info from its pyproject.toml)."""
    site = tmp_path_factory.mktemp("site")
    shutil.copytree(PLUGIN / "ntt_plugin_demo", site / "ntt_plugin_demo")
    name, version, entry_points = read_pyproject(PLUGIN / "pyproject.toml")
    assert set(entry_points) == {f"ntt_batch.{g}" for g in ("encoders", "writers", "sources", "mergers")}
    write_distribution(site, name, version, entry_points)
    return site


def _env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "NTT_CHECKPOINT_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(site), str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return {**env, **extra}


def ntt_batch(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """The installed ``ntt-batch`` command (this checkout's code, the plug-in on the path)."""
    exe = shutil.which("ntt-batch")
    cmd = [exe] if exe else [sys.executable, "-c", "import sys; from ntt_batch.cli import main; sys.exit(main())"]
    return subprocess.run(
        [*cmd, *args], env=_env(site, **env), capture_output=True, text=True, timeout=300, cwd=str(REPO)
    )


def python(site: Path, code: str) -> str:
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=_env(site),
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(REPO),
    )
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    """Three image URIs (local files named like COCO's, so ids come from the names)."""
    d = tmp_path_factory.mktemp("imgs")
    uris = []
    for n in (139, 285, 632):
        p = d / f"{n:012d}.jpg"
        p.write_bytes(b"not decoded by these tests")
        uris.append(str(p))
    return uris


# ----------------------------------------------------------------------------- encoder


def test_plugin_encoder_random_checkpoint_load_and_forward(demo_site, tmp_path):
    res = ntt_batch(demo_site, "checkpoints", "random", "--model", "demo_tiny", "--out", str(tmp_path / "ckpt"))
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "ckpt" / "demo_tiny.pth").is_file() and "random weights" in res.stdout

    out = python(
        demo_site,
        f"""
        import torch
        from ntt_batch.models.encoders import ENCODERS, encoder_embed_dim, encoder_family, encoder_models
        from ntt_batch.models.checkpoints import all_checkpoints
        from ntt_batch.models.loading import load_encoder
        assert encoder_models()[-1] == "demo_tiny" and "dinov2_vitl14" in encoder_models()
        assert "demo_tiny" in [s.name for s in all_checkpoints()]
        fam = encoder_family("demo_tiny")
        assert (fam.patch_size, fam.native_image_size) == (8, 64)
        assert ENCODERS.origin("demo").startswith("the plug-in distribution ntt-plugin-demo 0.1")
        enc, ckpt = load_encoder("demo_tiny", checkpoint_dir={str(tmp_path / "ckpt")!r}, download=False)
        feats = enc(torch.rand(2, 3, 64, 48))
        assert tuple(feats.shape) == (2, 8, 6, encoder_embed_dim("demo_tiny")) == (2, 8, 6, 16)
        print("official", ckpt.official)
        """,
    )
    assert "official False" in out  # no published digest: recorded as not the official file

    missing = ntt_batch(demo_site, "checkpoints", "download", "--model", "demo_tiny", NTT_CACHE_DIR=str(tmp_path / "c"))
    assert missing.returncode == 2 and "https://example.invalid/ntt-plugin-demo" in missing.stderr


def test_cli_lists_the_plugin_encoder(demo_site):
    listed = ntt_batch(demo_site, "checkpoints", "list")
    assert listed.returncode == 0 and "demo_tiny" in listed.stdout and "MIT (demo)" in listed.stdout
    assert "demo_tiny" in ntt_batch(demo_site, "memory", "build", "--help").stdout


# ----------------------------------------------------------------------------- merger and source


def test_plugin_merger_and_source_in_a_job_file(demo_site, images, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text("# my inputs\n" + "\n".join(images) + "\n\n")
    job = tmp_path / "job.yaml"
    job.write_text(
        f"memory: {tmp_path / 'bank'}\nout: {tmp_path / 'out'}\n"
        f"source:\n  kind: demo-list\n  list_file: {listing}\n"
        "segmenter:\n  merger: demo-merger\n  points_per_side: 2\n"
    )
    check = ntt_batch(demo_site, "config", "check", str(job))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "merger: demo-merger" in check.stdout and "kind: demo-list" in check.stdout

    dry = ntt_batch(demo_site, "run", "--config", str(job), "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "inputs: 3 images" in dry.stdout
    for n, uri in zip((139, 285, 632), images, strict=True):
        assert f"would process image_id={n} {uri}" in dry.stdout  # ids from the file names, as for any source

    helped = " ".join(ntt_batch(demo_site, "segment", "--help").stdout.split())
    assert "demo-merger" in helped and "graph-diffusion" in helped  # --merger choices read MERGERS

    job.write_text(job.read_text().replace("demo-merger", "demo-mergr"))
    bad = ntt_batch(demo_site, "config", "check", str(job))
    assert bad.returncode == 2 and "'demo-merger'" in bad.stderr and "'soft'" in bad.stderr


def test_plugin_merger_source_and_writer_through_the_python_api(demo_site, images, tmp_path):
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(images))
    rows = [
        _row(139, images[0], 20, 10, [_instance(1, "person", 0.9, [0, 0, 4, 4], _rle(10, 20))]),
        _row(285, images[1], 20, 10, []),
        _row(
            632,
            images[2],
            20,
            10,
            [
                _instance(3, "car", 0.8, [1, 1, 2, 2], _rle(10, 20)),
                _instance(1, "person", 0.2, [0, 0, 1, 1], _rle(10, 20)),
            ],
        ),
    ]
    shards = write_shards(
        tmp_path / "shards",
        rows,
        per_file=2,
        run_json={"memory_bank": {"categories": [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}]}},
    )
    out = tmp_path / "export.tsv"
    printed = python(
        demo_site,
        f"""
        import json, torch
        from ntt_batch.exports import WRITERS, export
        from ntt_batch.method.config import SegmenterConfig
        from ntt_batch.method.mergers import build_merger
        from ntt_batch.sources import SOURCES, InputSpec
        from ntt_batch.workflows import resolve_targets

        assert WRITERS.names()[-1] == "demo-writer" and SOURCES.names()[-1] == "demo-list"
        stats = export({str(shards)!r}, {str(out)!r}, format="demo-writer", score_threshold=0.5)
        print("written", stats.images_written, stats.instances_written, stats.format)

        merger = build_merger(SegmenterConfig(merger="demo-merger").validate())
        scores = torch.tensor([0.9, 0.4])
        zeros = torch.zeros(2, dtype=torch.int64)
        kept = merger.merge_scores(torch.zeros(2, 2, dtype=torch.int64), zeros + 1, None, zeros, scores)
        assert type(merger).__name__ == "KeepScoresMerger" and torch.equal(kept, scores)

        targets = resolve_targets(None, None, None, None, source={{"kind": "demo-list", "list_file": {str(listing)!r}}})
        print("targets", json.dumps([[t.image_id, t.image_uri] for t in targets]))
        spec = InputSpec("demo-list", {{"list_file": {str(listing)!r}}})
        described = spec.describe()
        assert described == {{"source": "demo-list", "list_file": {str(listing)!r}}}, described
        assert InputSpec.from_description(described) == spec  # what verify rebuilds from run.json
        assert InputSpec(images="x").describe() == {{"images": "x"}}  # built-in kinds: fingerprints as before
        """,
    )
    assert "written 3 2 demo-writer" in printed  # at threshold 0.5: the 0.9 person and the 0.8 car, not the 0.2 person
    assert out.read_text().splitlines() == ["image_id\tinstances\tclasses", "139\t1\tperson", "285\t0\t", "632\t1\tcar"]
    targets = json.loads(printed.split("targets ", 1)[1].splitlines()[0])
    assert targets == [[139, images[0]], [285, images[1]], [632, images[2]]]


def test_cli_exports_in_the_plugin_format(demo_site, tmp_path):
    shards = write_shards(tmp_path / "shards", [_row(7, "/x/000000000007.jpg", 4, 4, [])])
    res = ntt_batch(
        demo_site, "export", "--shards", str(shards), "--out", str(tmp_path / "o.tsv"), "--format", "demo-writer"
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert (tmp_path / "o.tsv").read_text().splitlines() == ["image_id\tinstances\tclasses", "7\t0\t"]


def _rle(h: int, w: int) -> dict:
    m = np.zeros((h, w), dtype=bool)
    m[1:4, 2:6] = True
    return encode_rle(m)


# ----------------------------------------------------------------------------- the registry itself


def _plugin_module(site: Path, name: str, body: str) -> None:
    (site / f"{name}.py").write_text(textwrap.dedent(body))


def test_registry_loads_plugins_lazily_once_and_skips_broken_ones(tmp_path, monkeypatch):
    group = "ntt_batch.test_registry_group"
    _plugin_module(tmp_path, "ntt_probe_good", "LOADS = []\ndef thing(x):\n    return x * 2\nLOADS.append(1)\n")
    _plugin_module(tmp_path, "ntt_probe_bad", "raise ImportError('needs a library that is not installed')\n")
    write_distribution(
        tmp_path,
        "ntt-probe-good",
        "1.0",
        {group: {"double": "ntt_probe_good:thing", "builtin": "ntt_probe_good:thing"}},
    )
    write_distribution(tmp_path, "ntt-probe-bad", "0.2", {group: {"broken": "ntt_probe_bad:thing"}})
    write_distribution(tmp_path, "ntt-probe-typed", "3.0", {group: {"not-callable": "ntt_probe_good:LOADS"}})
    monkeypatch.syspath_prepend(str(tmp_path))

    def check(name, entry):
        if not callable(entry):
            raise TypeError(f"{name}: not callable")

    reg: Registry = Registry(group, "test thing", check=check)
    reg.register("builtin", len)
    assert "ntt_probe_good" not in sys.modules  # nothing read at construction or registration
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        names = reg.names()
    assert names == ("builtin", "double")
    messages = [str(w.message) for w in caught if issubclass(w.category, PluginWarning)]
    assert len(messages) == 3, messages
    assert any("'broken'" in m and "ntt-probe-bad 0.2" in m and "needs a library" in m for m in messages)
    assert any("'builtin'" in m and "ntt-probe-good 1.0" in m and "taken (built-in)" in m for m in messages)
    assert any("'not-callable'" in m and "ntt-probe-typed 3.0" in m and "not callable" in m for m in messages)
    assert reg["double"](21) == 42 and reg["builtin"] is len  # the built-in keeps its name
    assert reg.origin("double") == "the plug-in distribution ntt-probe-good 1.0"

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # loaded once: no second round of warnings, no second import
        assert list(reg) == ["builtin", "double"] and len(reg) == 2 and "double" in reg
    assert sys.modules["ntt_probe_good"].LOADS == [1]

    with pytest.raises(UnknownEntryError, match=r"unknown test thing 'tripple'; known: 'builtin', 'double'") as e:
        reg.get("tripple")
    assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
    with pytest.raises(ValueError, match=r"test thing 'double' is already registered \(by the plug-in distribution"):
        reg.register("double", len)
    with pytest.raises(TypeError, match="not callable"):
        reg.register("three", 3)


def test_registries_hold_objects_and_check_their_entries():
    from ntt_batch.exports import WRITERS, CocoResultsWriter
    from ntt_batch.method.mergers import MERGERS
    from ntt_batch.models.encoders import ENCODERS, EncoderFamily
    from ntt_batch.models.proposers import PROPOSERS
    from ntt_batch.sources import SOURCES
    from ntt_batch.sources.listing import ListingSource

    assert WRITERS["results"] is CocoResultsWriter and SOURCES["listing"] is ListingSource
    assert isinstance(ENCODERS["dinov2"], EncoderFamily) and callable(MERGERS["soft"])
    assert PROPOSERS["sam2"].checkpoints[0].name == "sam2_hiera_tiny"
    for registry in (WRITERS, MERGERS, ENCODERS, PROPOSERS, SOURCES):
        assert all(not isinstance(v, str) for v in registry.values())  # objects, never import strings
    with pytest.raises(ValueError, match="registered as 'csv' but its writer's format is 'results'"):
        WRITERS.register("csv", CocoResultsWriter)
    with pytest.raises(TypeError, match="expected a subclass of ntt_batch.sources.base.Source"):
        SOURCES.register("text", str)
    with pytest.raises(ValueError, match="'dinov2_vits14' is taken by a built-in model"):
        fam = ENCODERS["dinov2"]
        ENCODERS.register(
            "dinov2-copy",
            EncoderFamily(
                "dinov2-copy",
                14,
                518,
                tuple(type(s)(**{**s.__dict__, "family": "dinov2-copy"}) for s in fam.checkpoints),
                fam.implementation,
            ),
        )
