"""`ntt-batch publish`: register a run output's committed part files in an Iceberg and/or Delta Lake table."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .app import main
from .options import key_values, storage_flags, storage_options_from_flags

_DELTA_AT_OUT = "\0out"  # --delta without a value


@main.command()
@click.argument("out")
@click.option(
    "--iceberg",
    default=None,
    is_flag=False,
    flag_value="embedded",
    metavar="[CATALOG]",
    help="Iceberg catalog: sqlite:///path/catalog.db (a SQL catalog in a SQLite file, no service), "
    "http(s)://... (REST catalog), glue or glue://REGION (AWS Glue), or a catalog name from ~/.pyiceberg.yaml. "
    "Without a value (or with --table alone): the embedded catalog OUT/_ntt/iceberg/catalog.db (local outputs).",
)
@click.option("--table", default=None, metavar="NAMESPACE.NAME", help="Iceberg table (created when missing).")
@click.option(
    "--warehouse",
    default=None,
    metavar="URI",
    help="Where a new Iceberg table keeps its metadata (default for a SQLite catalog: 'warehouse' beside its file).",
)
@click.option(
    "--catalog-property",
    "catalog_property",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra pyiceberg catalog property (repeatable), e.g. token=... or credential=... for a REST catalog.",
)
@click.option(
    "--delta",
    default=None,
    is_flag=False,
    flag_value=_DELTA_AT_OUT,
    metavar="[PATH]",
    help="Delta Lake table (delta-rs): without a value at OUT itself (its log in OUT/_delta_log/); a PATH must be "
    "OUT or a folder above it (the part files must lie under the table's root).",
)
@click.option("--json", "json_out", default=None, type=click.Path(dir_okay=False), help="Also write the result here.")
@storage_flags
def publish(out, iceberg, table, warehouse, catalog_property, delta, json_out, **kw):
    """Register OUT's committed part files in an Iceberg and/or Delta Lake table, without rewriting them.

    Idempotent and in step with the output: new part files are added, files that `compact`,
    `run --retry-errors`, `verify --repair` or quarantine replaced are removed, in ONE table commit
    (one Iceberg snapshot, one Delta version), so the table's rows are exactly `verify`'s rows. With
    nothing to do, no commit is made ("up to date"). Takes OUT's lock while it runs (exit 4 if a run
    holds it). `run --publish KEY=VALUE` does the same at the end of each completed attempt.

    \b
    Examples:
      ntt-batch publish out/ --table labels.masks     # embedded SQLite catalog: out/_ntt/iceberg/
      ntt-batch publish s3://b/run1/ --table labels.masks --iceberg sqlite:///$PWD/catalog.db
      ntt-batch publish s3://b/run1/ --table labels.masks --iceberg https://catalog:8181 --catalog-property token=T
      ntt-batch publish s3://b/run1/ --delta          # a Delta table at s3://b/run1/ (log in _delta_log/)
    """
    from ..output.publish import publish as publish_output

    result = publish_output(
        out,
        iceberg=iceberg,
        table=table,
        warehouse=warehouse,
        delta=True if delta == _DELTA_AT_OUT else delta,
        catalog_properties=key_values(catalog_property, "--catalog-property"),
        storage_options=storage_options_from_flags(kw),
        echo=click.echo,
    )
    if json_out:
        Path(json_out).write_text(json.dumps(result.to_dict(), indent=2))
