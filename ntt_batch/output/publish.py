"""`ntt-batch publish`: register an output's committed part files in an Iceberg or Delta Lake table.

The part files are never copied or rewritten: the table points at the Parquet files the job
committed (``<out>/part-*.parquet``, see ``output.folder``). Publishing is a diff between the
files the table holds now and the parts run.json records as committed:

* parts the table does not hold yet are added;
* table files of this output that are no longer committed (merged by ``compact``, rewritten by
  ``--retry-errors`` or ``verify --repair``, moved to quarantine) are removed;
* both in ONE table commit: one Iceberg snapshot, one Delta version. Nothing to do: no commit
  (the table says "up to date").

So after every publish the table's rows are exactly the output's rows (``ntt-batch verify``'s),
with no duplicate and no gap. The output's lease is held while publishing, so no run, compaction
or repair changes the files meanwhile; ``run --publish`` publishes at the end of each completed
attempt, under the run's own lease.

Iceberg (pyiceberg): ``iceberg`` is a catalog — ``sqlite:///path/catalog.db`` (a SQL catalog in a
SQLite file: no service; warehouse ``<its folder>/warehouse`` unless ``warehouse`` is given;
``postgresql://...`` works the same with a ``warehouse``), ``http(s)://...`` (REST catalog),
``glue`` / ``glue://REGION`` (AWS Glue), or the name of a catalog configured in ``~/.pyiceberg.yaml``
or ``PYICEBERG_CATALOG__<NAME>__*`` variables. Omitted (``table`` alone), the embedded catalog is
``<out>/_ntt/iceberg/catalog.db`` with its warehouse ``<out>/_ntt/iceberg/warehouse``: local outputs
only, since SQLite needs a local file (an s3:// output names a local ``sqlite:///`` file or a
service). The table (created when missing, schema = ``SHARD_SCHEMA`` with Iceberg field ids) maps
the part files' columns by name (``schema.name-mapping.default``): the job's files carry no field ids.

Delta Lake (delta-rs ``deltalake``): the table's root must be the output folder itself (``delta=True``)
or a folder above it: delta-rs (1.6) resolves every file path relative to the table root and does
not read absolute paths, so the part files must lie under it. The log goes to ``<root>/_delta_log/``,
which Parquet readers of the output skip like ``_ntt/``.

Object-store credentials: the output's fsspec storage options (``key``/``secret``/``token``,
``client_kwargs.endpoint_url``/``region_name``, ``anon``, ``profile``) are passed to pyiceberg's
and delta-rs's S3 clients; anything else comes from their usual environment variables.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from .delta_table import publish_delta
from .folder import OutputFolder, new_run_id
from .iceberg_table import publish_iceberg
from .lease import Lease
from .table_common import PublishSpec, TablePublish, committed_parts


@dataclass
class PublishResult:
    output: str
    parts: int  # committed part files of the output
    rows: int  # their rows (run.json's per-part record)
    tables: list[TablePublish] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def publish(
    out: str,
    *,
    iceberg: str | None = None,
    table: str | None = None,
    warehouse: str | None = None,
    delta: bool | str | None = None,
    catalog_properties: dict | None = None,
    storage_options: dict | None = None,
    echo: Callable[[str], None] = print,
) -> PublishResult:
    """Publish output ``out`` to an Iceberg table and/or a Delta table (module docstring), holding its lease.

    Raises :class:`PublishError` (output inconsistent, bad target), ``FileNotFoundError`` (no output),
    :class:`~ntt_batch.output.lease.LeaseHeldError` (a run is writing the output).
    """
    spec = PublishSpec(
        iceberg=iceberg,
        table=table,
        warehouse=warehouse,
        delta=delta,
        catalog_properties=dict(catalog_properties or {}),
    ).check()
    folder = OutputFolder(out, storage_options)
    if not folder.exists() or not folder.read_run():
        raise FileNotFoundError(f"{out!r} holds no ntt-batch output (no _ntt/run.json): pass the --out of a run")
    with Lease(folder, {"run_id": f"publish-{new_run_id()}"}):
        return publish_folder(folder, spec, echo=echo)


def publish_folder(folder: OutputFolder, spec: PublishSpec, *, echo: Callable[[str], None] = print) -> PublishResult:
    """Publish ``folder`` as described by ``spec``; the caller holds the output's lease."""
    spec.check()
    parts = committed_parts(folder)
    result = PublishResult(folder.uri, len(parts), sum(p.rows for p in parts))
    if spec.wants_iceberg:
        result.tables.append(publish_iceberg(folder, parts, spec))
        echo(result.tables[-1].line())
    if spec.wants_delta:
        result.tables.append(publish_delta(folder, parts, spec))
        echo(result.tables[-1].line())
    return result
