"""Planning and reading sharded inputs (WebDataset tars, Parquet/Arrow tables): cost grows with shards.

Per-shard records live under ``<out>/_ntt/shards/``::

    census/<run_id>/<digest>.json   what one read of a shard found: its sample count (the shard error
                                    row included), rows handed on, samples skipped, where it broke;
                                    written by the reading task when it reaches the shard's end
    records-<run_id>-<n>.parquet    the census of every shard read so far (one row per shard, the
                                    newest read wins), consolidated by the driver under the lease

A shard is **complete** when its committed rows number its census count. Rows are unique per URI
and a shard's rows can only come from reading it, so the count is exact, and it is checked against
the committed parts at every plan: a shard whose rows were withdrawn (``--retry-errors``) or lost
with a quarantined part is not complete any more, whatever was recorded. The plan then is:

* complete shard → skipped, never opened;
* partly done shard (rows but not all, or rows and no census yet: a run died) → read once, its
  done samples skipped (their keys travel with the task; a Parquet row group all done is not read);
* shard without rows → read.

The census is a fact about the *input* (what the shard holds), not about the output's state, so
a census written late by a dying attempt is as true as any, and a merge only ever deletes records
and census files whose content its new records file holds: neither needs the lease's fence
(``output.fencing``); completion is recounted from the committed parts at every plan anyway.

Why a reading task of our own rather than ``ray.data.read_webdataset`` / ``read_parquet``: a
broken shard must give its readable samples *plus* an error row (Ray's readers fail the dataset,
or with ``ignore_missing_paths`` drop the file silently); done samples of a partly done shard must
be skipped by key while streaming; and the task must report the shard's census when it ends.
The reading itself is the same as theirs: Python ``tarfile`` over a stream, pyarrow's Parquet and
IPC readers with column projection.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..output.folder import SHARDS, OutputFolder, new_run_id, utc_now_iso
from ..output.shards import STATUS_ERROR
from ..sources import InputSpec
from ..sources.ids import HashAccumulator, stable_image_id, uri_digests
from ..sources.shards import ShardCensus, ShardedSource, is_sharded, split_sample_uris
from .plan import OutputScan, Plan

log = logging.getLogger(__name__)

CENSUS = f"{SHARDS}/census"
RECORDS_SCHEMA = pa.schema(
    [
        ("shard", pa.string()),
        ("samples", pa.int64()),
        ("broken", pa.string()),
        ("duplicates", pa.int64()),
        ("bytes", pa.int64()),
        ("run_id", pa.string()),
        ("read_at", pa.string()),
    ]
)


def _digest(shard: str) -> str:
    return hashlib.blake2b(shard.encode(), digest_size=16).hexdigest()


# ----------------------------------------------------------------------------- census and records


def write_census(folder: OutputFolder, run_id: str, census: ShardCensus) -> None:
    """The reading task's census of one shard (``_ntt/shards/census/<run_id>/<digest>.json``)."""
    rec = asdict(census) | {"run_id": run_id, "read_at": utc_now_iso()}
    folder.write_bytes(folder.path(f"{CENSUS}/{run_id}/{_digest(census.shard)}.json"), json.dumps(rec).encode())


def read_census_files(folder: OutputFolder, under: str = CENSUS) -> tuple[list[dict], list[str]]:
    """The census files under ``under`` (read concurrently) and their paths."""
    from ..storage.reads import read_many

    files = folder.files_under(under, ".json")
    paths = [f.path for f in files]
    uris = [folder.fs.unstrip_protocol(p) if not folder.is_local else p for p in paths]
    out: list[dict | None] = [None] * len(paths)
    for i, data in read_many(uris, folder.options, concurrency=32):
        if isinstance(data, BaseException):
            log.warning("could not read the shard census %s (%s); that shard will be read again", paths[i], data)
            continue
        try:
            out[i] = json.loads(data)
        except ValueError:
            log.warning("shard census %s is not JSON; that shard will be read again", paths[i])
    return [r for r in out if r is not None], paths


def load_records(folder: OutputFolder | None, *, consolidate: bool, run_id: str = "") -> dict[str, dict]:
    """Every shard's newest census (records files + loose census files), by shard URI.

    ``consolidate`` (the lease holder only): write them as one records file and remove the older
    records files and the census files it took in. A crash in between leaves both: harmless,
    the newest read wins when they are merged again.
    """
    if folder is None or not folder.exists():
        return {}
    records: dict[str, dict] = {}

    def take(rec: dict) -> None:
        old = records.get(rec["shard"])
        if old is None or str(rec.get("read_at") or "") >= str(old.get("read_at") or ""):
            records[rec["shard"]] = rec

    record_files = [f for f in folder.files_under(SHARDS, ".parquet") if "/census/" not in f.path]
    for f in record_files:
        with folder.fs.open(f.path, "rb") as fh:
            for rec in pq.read_table(fh).to_pylist():
                take(rec)
    loose, census_paths = read_census_files(folder)
    for rec in loose:
        take({k: rec.get(k) for k in RECORDS_SCHEMA.names})
    if consolidate and (loose or len(record_files) > 1):
        table = pa.Table.from_pylist(
            [{k: r.get(k) for k in RECORDS_SCHEMA.names} for r in records.values()], schema=RECORDS_SCHEMA
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        new_path = folder.path(f"{SHARDS}/records-{new_run_id()}.parquet")
        folder.write_bytes(new_path, sink.getvalue().to_pybytes())
        for f in record_files:
            folder.remove(f.path)
        for p in census_paths:
            folder.remove(p)
        if not folder.files_under(CENSUS, ".json"):
            folder.rmdir_tree(CENSUS)
    return records


# ----------------------------------------------------------------------------- committed rows per shard


def _shard_rows(folder: OutputFolder, parts, shard_set: pa.Array, want_keys: pa.Array | None = None):
    """One pass over the committed parts' ``image_uri``/``status``: per listed shard its rows and
    error rows ({shard: (rows, errors)}); with ``want_keys`` (shards) also their rows' keys and
    whether each is an error ({shard: [(key, is_error)]})."""
    counts: dict[str, list[int]] = {}
    keys: dict[str, list[tuple[str, bool]]] = {}
    for part in parts:
        with folder.fs.open(part.path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=262144, columns=["image_uri", "status"]):
                shard, key = split_sample_uris(batch.column("image_uri"))
                mine = pc.is_in(shard, value_set=shard_set)
                if not pc.any(mine).as_py():
                    continue
                is_err = pc.equal(batch.column("status"), STATUS_ERROR)
                t = pa.table({"shard": shard, "err": pc.cast(is_err, pa.int64()), "key": key}).filter(mine)
                agg = t.group_by("shard").aggregate([("err", "count"), ("err", "sum")])
                for s, n, e in zip(*(agg.column(c).to_pylist() for c in ("shard", "err_count", "err_sum"))):
                    c = counts.setdefault(s, [0, 0])
                    c[0] += n
                    c[1] += e
                if want_keys is not None and len(want_keys):
                    sel = t.filter(pc.is_in(t.column("shard"), value_set=want_keys))
                    for s, k, e in zip(*(sel.column(c).to_pylist() for c in ("shard", "key", "err"))):
                        keys.setdefault(s, []).append((k, bool(e)))
    return {s: (c[0], c[1]) for s, c in counts.items()}, keys


# ----------------------------------------------------------------------------- the plan


@dataclass
class ShardPlan(Plan):
    """A plan over shards: which to read (with the keys already done), which are complete."""

    kind: str = ""
    source_settings: dict = field(default_factory=dict)  # the input kind's settings (the reading tasks build it)
    shards: int = 0
    complete: int = 0  # skipped without being opened
    partial: int = 0  # read, their done samples skipped
    retry_shards: int = 0  # read again for --retry-errors
    to_read: list[dict] = field(default_factory=list)  # {"shard": uri, "done_keys": [escaped keys]}
    estimated: bool = False  # to_process is an estimate (shards never read: their sample counts are unknown)
    known_samples: int = 0  # samples of the listed shards whose census is known

    def to_record(self) -> dict:
        return super().to_record() | {
            "input_kind": self.kind,
            "shards": self.shards,
            "shards_complete": self.complete,
            "shards_partly_done": self.partial,
            "shards_to_read": len(self.to_read),
            "to_process_estimated": self.estimated,
        }

    def describe(self) -> str:
        retry = (
            f" ({self.retry_errors} error rows to redo, in {self.retry_shards} shard(s))" if self.retry_errors else ""
        )
        est = "about " if self.estimated else ""
        return (
            f"inputs: {self.shards} {self.kind} shard(s); complete (not opened): {self.complete}; partly done: "
            f"{self.partial}; to read: {len(self.to_read)}; samples already done: {self.already_done}; "
            f"to process: {est}{self.to_process}{retry}"
        )


def plan_shards(
    spec: InputSpec,
    options: dict | None,
    scan: OutputScan,
    *,
    folder: OutputFolder | None,
    output: OutputFolder | None = None,
    run_id: str,
    limit: int | None = None,
    retry_errors: bool = False,
    echo: Callable[[str], None] | None = None,
    **_unused,
) -> ShardPlan:
    """The shards to read (module docstring). ``folder=None``: a dry run (nothing written);
    ``output``: the output to read the records from (default ``folder``; a dry run passes it).

    ``limit`` counts shards. The cost: one listing of the shards (none for a brace pattern), the
    records file, and one pass over the committed parts' ``image_uri`` column; no shard is opened
    except, when some must be read, the first one's schema for a table (bad column names fail here,
    before any work starts).
    """
    source = spec.source()
    plan = ShardPlan(kind=spec.kind, ids_from="uri hashes", source_settings=dict(spec.settings))
    shards = source.shards(options)
    if limit is not None:
        shards = shards[:limit]
    plan.shards = plan.listed = len(shards)
    output = output if output is not None else folder
    records = load_records(output, consolidate=folder is not None, run_id=run_id)
    shard_set = pa.array([s.uri for s in shards], pa.string())
    counts, _ = _shard_rows(output, scan.parts, shard_set) if scan.parts else ({}, {})

    need_keys, read_plain, retry = _sort_shards(plan, shards, counts, records, retry_errors)
    keys: dict[str, list[tuple[str, bool]]] = {}
    if need_keys:
        _, keys = _shard_rows(output, scan.parts, shard_set, want_keys=pa.array(need_keys, pa.string()))
    retry_uris: list[str] = []
    todo = {s: [] for s in read_plain}
    for s in need_keys:
        entries = keys.get(s, [])
        if s in retry:
            plan.retry_shards += 1
            done = [k for k, e in entries if not e]
            retry_uris += [f"{s}#{k}" for k, e in entries if e]
        else:
            plan.partial += 1
            done = [k for k, _ in entries]
        plan.already_done += len(done)
        todo[s] = done
    _list_to_read(plan, shards, todo, records)
    plan.inputs = plan.already_done + plan.to_process
    if retry_uris:
        hi, lo = uri_digests(retry_uris)
        acc = HashAccumulator()
        acc.add(hi, lo)
        plan.retry = acc.freeze()
        plan.retry_errors = len(plan.retry)
    plan.sample = [(0, t["shard"]) for t in plan.to_read[:50]]
    if plan.to_read:
        source.check(plan.to_read[0]["shard"], options)  # e.g. a table without the image column: fail now
    if echo and plan.complete:
        echo(f"  {plan.complete} complete shard(s) skipped without being opened (records in {SHARDS}/)")
    return plan


def _sort_shards(
    plan: ShardPlan, shards: list, counts: dict, records: dict, retry_errors: bool
) -> tuple[list[str], list[str], set[str]]:
    """Each shard by what the output holds of it: complete (counted in ``plan``, skipped), partly done
    or with errors to redo (its done keys are needed), or not started. Returns (shards needing their
    done keys, shards to read whole, shards with errors to redo)."""
    need_keys, read_plain = [], []
    retry = set()
    for s in shards:
        rows, errors = counts.get(s.uri, (0, 0))
        rec = records.get(s.uri)
        if rec is not None:
            plan.known_samples += int(rec["samples"])
        if retry_errors and errors:
            retry.add(s.uri)
            need_keys.append(s.uri)
        elif rec is not None and rows >= int(rec["samples"]):
            plan.complete += 1
            plan.already_done += rows
        elif rows:
            need_keys.append(s.uri)
        else:
            read_plain.append(s.uri)
    return need_keys, read_plain, retry


def _list_to_read(plan: ShardPlan, shards: list, todo: dict[str, list], records: dict) -> None:
    """``plan.to_read`` in listing order, and the rows to process (from the census; estimated for
    shards never read)."""
    unknown = 0
    for s in shards:  # in listing order
        if s.uri not in todo:
            continue
        done = todo[s.uri]
        plan.to_read.append({"shard": s.uri, "done_keys": done})
        rec = records.get(s.uri)
        if rec is not None:
            plan.to_process += max(0, int(rec["samples"]) - len(done))
        else:
            unknown += 1
    if unknown:  # never read: estimate from the shards whose census is known (1 each when none is)
        known = [int(r["samples"]) for r in records.values()]
        per = int(round(sum(known) / len(known))) if known else 1
        plan.to_process += unknown * max(per, 1)
        plan.estimated = True


# ----------------------------------------------------------------------------- the reading stage


def read_shard_batch(
    batch: dict,
    *,
    kind: str,
    settings: dict,
    out: str,
    storage_options: dict,
    run_id: str,
    chunk_rows: int = 32,
    chunk_bytes: int = 32 << 20,
) -> Iterator[dict]:
    """Ray Data stage (a generator): shards → batches of samples (image_id, image_uri, data, error).

    Rows carry the encoded bytes (the decode stage decodes them); a sample that failed here comes
    with its ``error`` set. When a shard has been read to its end (or its break), its census is
    written under ``_ntt/shards/census/<run_id>/``.
    """
    folder = OutputFolder(out, storage_options)
    source = InputSpec(kind, settings).source()
    for shard, done_keys in zip(batch["shard"], batch["done_keys"]):
        shard = str(shard)
        done = frozenset(str(k) for k in (done_keys if done_keys is not None else ()))
        census = ShardCensus(shard)
        rows: dict[str, list] = {"image_id": [], "image_uri": [], "data": [], "error": []}
        held = 0
        for sample in source.samples(shard, storage_options, done=done, census=census):
            uri = f"{shard}#{sample.key}"
            rows["image_id"].append(stable_image_id(uri))
            rows["image_uri"].append(uri)
            rows["data"].append(sample.data)
            rows["error"].append(sample.error or "")
            held += len(sample.data or b"")
            if len(rows["image_uri"]) >= chunk_rows or held >= chunk_bytes:
                yield _sample_batch(rows)
                rows = {k: [] for k in rows}
                held = 0
        if rows["image_uri"]:
            yield _sample_batch(rows)
        write_census(folder, run_id, census)


def _sample_batch(rows: dict[str, list]) -> dict:
    return {
        "image_id": np.array(rows["image_id"], dtype=np.int64),
        "image_uri": np.array(rows["image_uri"], dtype=object),
        "data": np.array(rows["data"] + [None], dtype=object)[:-1],  # keep bytes objects as they are
        "error": np.array(rows["error"], dtype=object),
    }


def shard_dataset(cfg, plan: ShardPlan, run_id: str):
    """The Ray dataset of the plan's samples: one block (and reading task) per shard to read."""
    import ray.data

    items = [{"shard": t["shard"], "done_keys": list(t["done_keys"])} for t in plan.to_read]
    ds = ray.data.from_items(items, override_num_blocks=max(1, len(items)))
    return ds.map_batches(
        read_shard_batch,
        batch_size=1,
        batch_format="numpy",
        num_cpus=0.25,
        fn_kwargs={
            "kind": plan.kind,
            "settings": plan.source_settings,
            "out": cfg.out,
            "storage_options": cfg.storage_options,
            "run_id": run_id,
        },
    )


# ----------------------------------------------------------------------------- after an attempt


@dataclass
class ShardAttempt:
    shards_read: int = 0
    rows_expected: int = 0  # rows the reading tasks handed on
    broken: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    unread: list[str] = field(default_factory=list)  # planned shards without a census: never read to the end


def finish_attempt(folder: OutputFolder, run_id: str, plan: ShardPlan) -> ShardAttempt:
    """This attempt's census files → how many rows it should have committed, what broke; then the
    census is consolidated into the records (under the lease)."""
    got, _ = read_census_files(folder, f"{CENSUS}/{run_id}")
    res = ShardAttempt(shards_read=len(got))
    seen = set()
    for rec in got:
        seen.add(rec["shard"])
        res.rows_expected += int(rec.get("emitted") or 0)
        if rec.get("broken"):
            res.broken.append(rec["broken"])
        if rec.get("duplicates"):
            res.duplicates.append(
                f"{rec['shard']}: {rec['duplicates']} repeated key(s), e.g. {', '.join(rec['duplicate_examples'][:3])} "
                "(a key has one row: the repeats were not read)"
            )
    res.unread = [t["shard"] for t in plan.to_read if t["shard"] not in seen]
    load_records(folder, consolidate=True, run_id=run_id)
    return res


# ----------------------------------------------------------------------------- verify


def check_sharded_inputs(
    folder: OutputFolder, spec: InputSpec, all_rows, parts, options: dict | None
) -> tuple[int, int, list[str]]:
    """``verify``'s inputs check for sharded inputs: (samples, samples without a row, examples).

    A shard with a census: its committed rows must number its census count (the keys it gave, the
    shard error row included). A shard never read to its end: its samples are enumerated by reading
    it (keys only; nothing is decoded) and looked up in ``all_rows`` (URI digests).
    """
    source = spec.source()
    shards = source.shards(options)
    records = load_records(folder, consolidate=False)
    counts, _ = _shard_rows(folder, parts, pa.array([s.uri for s in shards], pa.string()))
    total = missing = 0
    examples: list[str] = []
    for s in shards:
        rec = records.get(s.uri)
        rows = counts.get(s.uri, (0, 0))[0]
        if rec is not None:
            total += int(rec["samples"])
            gap = max(0, int(rec["samples"]) - rows)
            missing += gap
            if gap and len(examples) < 5:
                examples.append(f"{s.uri} ({gap} sample(s) without a row)")
            continue
        census = ShardCensus(s.uri)
        uris = [f"{s.uri}#{x.key}" for x in source.samples(s.uri, options, done=frozenset(), census=census)]
        total += len(uris)
        if uris:
            hi, lo = uri_digests(uris)
            absent = ~all_rows.contains(hi, lo)
            missing += int(absent.sum())
            examples += [u for u, a in zip(uris, absent) if a][: 5 - len(examples)]
    return total, missing, examples


__all__ = [
    "is_sharded",
    "check_shard_settings",
    "ShardPlan",
    "check_sharded_inputs",
    "finish_attempt",
    "load_records",
    "plan_shards",
    "read_shard_batch",
    "shard_dataset",
]


def check_shard_settings(cfg, spec: InputSpec) -> None:
    """Refuse shard-only settings on other inputs (``JobConfig.validate``; an input kind keeps but
    ignores another kind's settings, which would hide a mistake here)."""
    from ..method.config import ConfigError

    sharded = isinstance(spec.source(), ShardedSource)
    if cfg.id_column and spec.kind != "table":
        raise ConfigError("id_column: only with a table input (--table); WebDataset samples are keyed by member names")
    if cfg.image_column and not sharded:
        raise ConfigError(
            "image_column: only with a table input (--table) or WebDataset shards (--images naming .tar files)"
        )
    if sharded and cfg.extensions:
        raise ConfigError(
            "extensions: filters listings of image objects; with shards or tables pick the image with image_column"
        )
