"""Input sources: one reader class per kind of input behind one interface (:mod:`.base`).

=================  ==============================================  =============================
kind (``SOURCES``)  settings (job-file keys; CLI flags)            module
=================  ==============================================  =============================
``listing``        ``images``: a prefix/folder/glob or one file     :mod:`.listing`
``manifest``       ``manifest``: Parquet/CSV/JSONL of image URIs    :mod:`.manifest`
``coco``           ``annotations`` + ``image_root``: a COCO file    :mod:`.coco`
``webdataset``     ``images`` naming ``.tar`` shards (+              :mod:`.webdataset`
                   ``image_column``): each sample an input
``table``          ``table`` (+ ``image_column``, ``id_column``):    :mod:`.table`
                   Parquet/Arrow files, each row an input
=================  ==============================================  =============================

``webdataset`` and ``table`` are sharded kinds (:class:`.shards.ShardedSource`): the job plans
them shard by shard (``pipeline.shard_plan``), not input by input.

:data:`SOURCES` is the one list of kinds. A job gives its input either with a kind's keys at the
top level (``images: s3://bucket/photos/``: the kind whose first key is given) or, for any kind,
plug-ins included, as a block ``source: {kind: NAME, <its settings>}``. :class:`InputSpec` holds
the kind and its settings as data; the job, the planner and ``verify`` only ever handle an
``InputSpec``, so a new kind touches none of them.

Adding a kind: one module with a :class:`~.base.Source` subclass and one ``SOURCES.register`` line
below; from a third-party package, an entry point in the group ``ntt_batch.sources`` naming the
class (``docs/extending.md``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa

from ..plugins import Registry
from ..storage.fs import absolute_uri
from .base import Source, SourceStats
from .coco import CocoSource
from .listing import ListingSource
from .manifest import ManifestSource
from .table import TableSource
from .webdataset import WebDatasetSource


def _check_source(name: str, cls: Any) -> None:
    if not (isinstance(cls, type) and issubclass(cls, Source)):
        raise TypeError(f"input source {name!r}: expected a subclass of ntt_batch.sources.base.Source, got {cls!r}")
    if not cls.keys or not set(cls.required_keys()) <= set(cls.keys) or not set(cls.uri_keys) <= set(cls.keys):
        raise ValueError(f"input source {name!r}: needs keys, with its required and uri keys among them")
    if "kind" in cls.keys or "source" in cls.keys:
        raise ValueError(f"input source {name!r}: 'kind' and 'source' are reserved, not setting names")


#: Input source kinds by name: the built-ins, then the ``ntt_batch.sources`` plug-ins.
SOURCES: Registry[type[Source]] = Registry("ntt_batch.sources", "input source", check=_check_source)
SOURCES.register("listing", ListingSource)
SOURCES.register("manifest", ManifestSource)
SOURCES.register("coco", CocoSource)
SOURCES.register("webdataset", WebDatasetSource)
SOURCES.register("table", TableSource)


def _usage(cls: type[Source]) -> str:
    others = [k for k in cls.required_keys() if k != cls.main_key()]
    return cls.main_key() + (f" (+ {', '.join(others)})" if others else "")


def _all_keys() -> set[str]:
    return {k for cls in SOURCES.values() for k in cls.keys}


def _top_level_keys() -> list[str]:
    """The keys a job may give at its top level: the built-in kinds' (plug-in kinds use a ``source:`` block)."""
    return [k for name, cls in SOURCES.items() if SOURCES.origin(name) == "built-in" for k in cls.keys]


class InputSpec:
    """Where a job's inputs come from, as data: a :data:`SOURCES` kind, its settings, and the listing filter.

    ``InputSpec(images="s3://b/photos/")`` gives a built-in kind by its settings (the one whose first
    key is given); ``InputSpec("my-kind", {"my_list": ...})`` names the kind (plug-ins' always are).
    Settings no kind takes are errors; settings of another kind are kept (they are part of
    :meth:`describe`, as they always were) but not given to the source.

    Args:
        extensions: opt-in filter for listings, lower-case with the dot (``(".jpg", ".png")``).
        exclude_prefix: never list files under this URI (the job's own output).

    Raises:
        ValueError: no kind given or found, several found, an unknown kind (the message lists
            the known ones), an unknown setting, or a required one missing.
    """

    def __init__(
        self,
        kind: str | None = None,
        settings: Mapping[str, Any] | None = None,
        *,
        extensions: Iterable[str] | None = None,
        exclude_prefix: str | None = None,
        **named: Any,
    ) -> None:
        given = {k: v for k, v in {**(settings or {}), **named}.items() if v is not None and v != ""}
        self.kind = kind or _kind_of(given)
        cls = SOURCES.get(self.kind)
        unknown = sorted(set(given) - _all_keys())
        if unknown:
            raise ValueError(
                f"input source {self.kind!r}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                f"it takes {', '.join(map(repr, cls.keys))}"
            )
        for key in cls.required_keys():
            if key not in given:
                raise ValueError(f"{key}: required with {cls.main_key()} ({cls.keys[key]})")
        self.settings = given
        self.extensions = tuple(extensions) if extensions else None
        self.exclude_prefix = exclude_prefix

    @classmethod
    def from_job(cls, job: Any, *, extensions: Iterable[str] | None = None, exclude_prefix: str | None = None):
        """The input of a job's settings: its ``source`` block ``{kind: NAME, ...}`` if set, else the
        kinds' keys among its fields (``images``, ``manifest``, ``annotations``, ``image_root``)."""
        block = getattr(job, "source", None)
        top = {k: getattr(job, k) for k in _top_level_keys() if getattr(job, k, None) not in (None, "")}
        if block:
            if not isinstance(block, Mapping) or not block.get("kind"):
                raise ValueError(f"source: needs kind: one of {', '.join(map(repr, SOURCES.names()))}")
            if top:
                raise ValueError(f"give exactly one input: the source: block or {', '.join(top)}, not both")
            settings = {k: v for k, v in block.items() if k != "kind"}
            return cls(block["kind"], settings, extensions=extensions, exclude_prefix=exclude_prefix)
        return cls(None, top, extensions=extensions, exclude_prefix=exclude_prefix)

    @classmethod
    def from_description(cls, described: Mapping[str, Any], *, exclude_prefix: str | None = None) -> InputSpec:
        """The spec a run recorded (:meth:`describe`, in ``run.json``'s fingerprint)."""
        settings = {k: v for k, v in described.items() if k not in ("source", "extensions")}
        ext = described.get("extensions")
        return cls(
            described.get("source"), settings, extensions=tuple(ext) if ext else None, exclude_prefix=exclude_prefix
        )

    def source(self) -> Source:
        """The kind's reader, built with the settings it takes."""
        src = SOURCES.get(self.kind)
        return src(**{k: v for k, v in self.settings.items() if k in src.keys})

    @property
    def location(self) -> str:
        """Where the inputs are (the kind's first setting), for messages."""
        return self.source().location

    def uris(self) -> dict[str, str]:
        """The settings that are URIs, by key."""
        keys = SOURCES.get(self.kind).uri_keys
        return {k: str(v) for k, v in self.settings.items() if k in keys}

    def absolute(self) -> InputSpec:
        """A copy with its URI settings absolute (local paths resolved against the working directory)."""
        settings = {k: absolute_uri(v) if k in self.uris() else v for k, v in self.settings.items()}
        return InputSpec(self.kind, settings, extensions=self.extensions, exclude_prefix=self.exclude_prefix)

    def describe(self) -> dict[str, Any]:
        """What the job's fingerprint records: the settings (plus ``source: <kind>`` unless they name a
        built-in kind, whose records stay as they always were) and the extension filter."""
        d: dict[str, Any] = {}
        try:
            named = _kind_of(self.settings) == self.kind
        except ValueError:
            named = False
        if not named:
            d["source"] = self.kind
        d.update(self.settings)
        if self.extensions:
            d["extensions"] = list(self.extensions)
        return d

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, InputSpec):
            return NotImplemented
        return (self.kind, self.settings, self.extensions, self.exclude_prefix) == (
            other.kind,
            other.settings,
            other.extensions,
            other.exclude_prefix,
        )

    def __repr__(self) -> str:
        return (
            f"InputSpec({self.kind!r}, {self.settings!r}, extensions={self.extensions!r}, "
            f"exclude_prefix={self.exclude_prefix!r})"
        )


def _kind_of(settings: Mapping[str, Any]) -> str:
    """The built-in kind whose first key is among ``settings``; exactly one must be (a plug-in's kind is
    always named: ``source: {kind: NAME, ...}``)."""
    builtin = [(name, cls) for name, cls in SOURCES.items() if SOURCES.origin(name) == "built-in"]
    found = [name for name, cls in builtin if cls.main_key() in settings and cls.claims(settings) is not False]
    if len(found) > 1:  # kinds sharing a main key (images: listing, webdataset): the one that claims the settings
        claimed = [name for name in found if SOURCES.get(name).claims(settings)]
        found = claimed if len(claimed) == 1 else found
    if len(found) == 1:
        return found[0]
    kinds = list(dict.fromkeys(_usage(cls) for _, cls in builtin))
    options = ", ".join(kinds[:-1]) + f" or {kinds[-1]}" if len(kinds) > 1 else kinds[0]
    got = ", ".join(SOURCES.get(k).main_key() for k in found) if found else "none"
    raise ValueError(f"give exactly one input: {options}, or a source: block; got {got}")


def iter_inputs(
    spec: InputSpec, options: dict | None = None, *, chunk_rows: int = 65536, stats: SourceStats | None = None
) -> Iterator[pa.RecordBatch]:
    """Record batches with columns ``image_uri`` (string) and ``image_id`` (int64, null when the
    source has none), at most ``chunk_rows`` rows each, in the source's order."""
    stats = stats if stats is not None else SourceStats()
    yield from spec.source().batches(
        options,
        chunk_rows=chunk_rows,
        stats=stats,
        extensions=spec.extensions,
        exclude_prefix=spec.exclude_prefix,
    )


__all__ = ["SOURCES", "InputSpec", "Source", "SourceStats", "iter_inputs"]
