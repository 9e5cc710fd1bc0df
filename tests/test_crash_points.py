"""A SIGKILL at every step of every commit: readers never see an image twice, a rerun restores exactly one row each.

For every name in :data:`ntt_batch.output.crashpoints.CRASH_POINTS` the real operation (``run``,
``compact``, ``verify --repair``) starts in a child process with ``NTT_CRASH_AT`` naming the step;
the child kills itself there with SIGKILL (no ``finally``, no ``atexit``). The test then reads the
output as a user would — ``pyarrow.dataset.dataset(out)`` over ``<out>/*.parquet`` — and checks that
every visible file reads completely and no image has two rows; then it runs the operation again
(recovery first) and checks that every input has exactly one row and ``verify`` is consistent.

Cheap by construction: six inputs (four tiny PNGs, two missing files that give error rows), the
no-op model stage (:class:`NoopModelActor`), children forked from a forkserver that imported the
package once (so a child costs no interpreter start), one local Ray instance shared by the test and
the children that need one. Starting states come from real crashed runs, made once per module.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import forked
import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from conftest import job_config
from PIL import Image

from ntt_batch.output.crashpoints import CRASH_POINTS
from ntt_batch.output.shards import SHARD_SCHEMA
from ntt_batch.pipeline.config import JobConfig
from ntt_batch.pipeline.job import run_job
from ntt_batch.pipeline.stages import NoopModelActor
from ntt_batch.pipeline.verify import compact_output, verify_output


def _crash(op: str, out: Path, cfg: JobConfig | None, crash_at: str) -> None:
    forked.crash(op, out, cfg, crash_at)


# ----------------------------------------------------------------------------- what a reader sees


def _visible(
    out: Path, known_corrupt: frozenset[str] = frozenset(), planted: frozenset[str] = frozenset()
) -> list[str]:
    """The image URIs a reader of ``<out>/*.parquet`` sees, reading every visible file completely.

    Asserts that every visible file reads (except ``known_corrupt``: files the test broke on purpose)
    and that no image has two rows (except the ``planted`` duplicates ``verify --repair`` is removing,
    which may keep their two rows until the repair's commit retires the losers — never three)."""
    uris: list[str] = []
    for f in ds.dataset(str(out), format="parquet").files:
        if Path(f).name in known_corrupt:
            continue
        t = pq.read_table(f)  # every page
        assert t.schema.names == SHARD_SCHEMA.names, f
        uris += t.column("image_uri").to_pylist()
    twice = sorted({u for u in uris if uris.count(u) > 1})
    assert set(twice) <= planted and all(uris.count(u) <= 2 for u in twice), f"an image is visible twice: {twice}"
    return uris


def _exactly_once(out: Path, inputs: list[str]) -> None:
    """After recovery: one row per input, nothing else, and ``verify`` consistent with nothing left behind."""
    assert sorted(_visible(out)) == sorted(inputs)
    report = verify_output(str(out))
    assert report.integrity_ok, report.format()
    assert report.rows == len(inputs) and report.missing_inputs == 0 and not report.leftovers, report.format()
    meta = out / "_ntt"
    assert not list(meta.glob("commits/*.json")) and not list(meta.glob("tmp/*")) and not list(meta.glob("replaced/*"))


# ----------------------------------------------------------------------------- inputs and starting states


@pytest.fixture(scope="module")
def ray_address(ray_local) -> str:
    import ray

    return ray.get_runtime_context().gcs_address


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, list[str]]:
    """A manifest of six inputs: four tiny PNGs and two files that do not exist (error rows)."""
    d = tmp_path_factory.mktemp("crash_inputs")
    rng = np.random.default_rng(0)
    uris = []
    for i, name in enumerate(["a.png", "b.png", "gone-1.png", "c.png", "d.png", "gone-2.png"]):
        if not name.startswith("gone"):
            Image.fromarray(rng.integers(0, 255, (8 + i, 12, 3), dtype=np.uint8)).save(d / name)
        uris.append(str(d / name))
    manifest = d / "manifest.csv"
    manifest.write_text("image_uri\n" + "".join(f"{u}\n" for u in uris))
    return manifest, uris


@pytest.fixture(scope="module")
def make_cfg(random_checkpoints, small_bank, inputs, ray_address):
    def make(out: Path, **kw) -> JobConfig:
        return job_config(
            random_checkpoints, small_bank, manifest=str(inputs[0]), out=str(out), ray_address=ray_address, **kw
        )

    return make


def _noop(cfg: JobConfig):
    return run_job(cfg, echo=lambda s: None, model_stage=NoopModelActor, verbose=False)


@pytest.fixture(scope="module")
def staged(tmp_path_factory, make_cfg) -> Path:
    """A first run killed in its final staging commit: all six rows staged, nothing committed."""
    out = tmp_path_factory.mktemp("staged") / "out"
    _crash("run", out, make_cfg(out), "staging.assembled")
    assert not list(out.glob("*.parquet")) and len(list(out.glob("_ntt/staging/g1-*/*.parquet"))) >= 1
    return out


@pytest.fixture(scope="module")
def two_parts(tmp_path_factory, make_cfg) -> Path:
    """Two small committed parts of three rows each (one error row in each): a run over the first three
    inputs, then a run over all six killed just before its closing compaction."""
    out = tmp_path_factory.mktemp("two_parts") / "out"
    _noop(make_cfg(out, limit=3))
    _crash("run", out, make_cfg(out), "compaction.assembled")
    parts = sorted(out.glob("part-*.parquet"))
    assert len(parts) == 2 and [pq.read_metadata(p).num_rows for p in parts] == [3, 3]
    return out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _add_winning_duplicates(out: Path) -> list[str]:
    """A copy (made by another tool) of one row of each part, newer than the originals: ``verify --repair``
    keeps these and rewrites both original parts without their row, in one commit. Returns the URIs."""
    uris = []
    for k, part in enumerate(sorted(out.glob("part-*.parquet"))):
        t = pq.read_table(part).slice(0, 1)
        t = t.set_column(t.schema.get_field_index("run_id"), "run_id", pa.array(["zzz-newer"]))
        pq.write_table(t.cast(SHARD_SCHEMA), out / f"part-foreign-{k}.parquet")
        uris += t.column("image_uri").to_pylist()
    return uris


def _corrupt_a_data_page(path: Path) -> None:
    """Flip bytes inside the image_uri dictionary page, keeping size and footer: only decoding tells."""
    col = pq.read_metadata(path).row_group(0).column(1)
    start = col.dictionary_page_offset + (col.data_page_offset - col.dictionary_page_offset) * 2 // 3
    data = bytearray(path.read_bytes())
    for i in range(start, start + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


# ----------------------------------------------------------------------------- the walk


def _kind(point: str) -> str:
    return point.split(".", 1)[0]


def test_every_crash_point_is_walked():
    """The parametrisation below covers CRASH_POINTS exactly (a new step gets a case or this fails)."""
    assert sorted(CASES) == sorted(CRASH_POINTS)
    assert {_kind(p) for p in CRASH_POINTS} == {
        "staging",
        "compaction",
        "retry-errors",
        "repair",
        "quarantine",
        "recovery",
    }


CASES = list(CRASH_POINTS)


@pytest.mark.parametrize("point", CASES)
def test_crash_at_every_step_never_shows_an_image_twice(point, tmp_path, inputs, make_cfg, staged, two_parts):
    _, uris = inputs
    out = tmp_path / "out"
    kind = _kind(point)
    corrupt: frozenset[str] = frozenset()
    planted: frozenset[str] = frozenset()
    if kind == "staging":  # a dead attempt's staged rows, committed by the next run
        _copy(staged, out)
        _crash("run", out, make_cfg(out), point)
        rerun = lambda: _noop(make_cfg(out))  # noqa: E731
    elif kind == "compaction":
        _copy(two_parts, out)
        _crash("compact", out, None, point)
        rerun = lambda: compact_output(str(out), target_file_mb=1, echo=lambda s: None)  # noqa: E731
    elif kind == "retry-errors":  # both parts rewritten without their error row, in one commit
        _copy(two_parts, out)
        _crash("run", out, make_cfg(out, retry_errors=True), point)
        rerun = lambda: _noop(make_cfg(out, retry_errors=True))  # noqa: E731
    elif kind == "repair":
        _copy(two_parts, out)
        planted = frozenset(_add_winning_duplicates(out))
        _crash("repair", out, None, point)
        rerun = lambda: verify_output(str(out), repair=True)  # noqa: E731
    elif kind == "quarantine":
        _copy(two_parts, out)
        broken = sorted(out.glob("part-*.parquet"))[0]
        _corrupt_a_data_page(broken)
        corrupt = frozenset({broken.name})
        _crash("run", out, make_cfg(out), point)
        rerun = lambda: _noop(make_cfg(out))  # noqa: E731
    else:  # recovery: a retry-errors commit killed half-way, recovered by `compact`, killed again
        _copy(two_parts, out)
        undo = point in ("recovery.unpublished", "recovery.restoring")
        _crash(
            "run", out, make_cfg(out, retry_errors=True), "retry-errors.publishing" if undo else "retry-errors.intent"
        )
        if undo:  # one new part is lost (e.g. removed by hand): the commit cannot finish and is undone
            (lost,) = list(out.glob("_ntt/tmp/part-*.parquet"))
            lost.unlink()
        _visible(out)
        _crash("compact", out, None, point)
        rerun = lambda: compact_output(str(out), target_file_mb=1, echo=lambda s: None)  # noqa: E731

    seen = _visible(out, corrupt, planted)  # right after the kill: at most once, every file readable
    assert set(seen) <= set(uris)
    rerun()
    if kind == "recovery":  # rows withdrawn for --retry-errors are redone by the next run
        _noop(make_cfg(out, retry_errors=True))
    _exactly_once(out, uris)
