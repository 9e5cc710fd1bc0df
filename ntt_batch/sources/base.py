"""The interface every kind of input source implements, and what the sources share.

A source reads one kind of input description (a folder listing, a manifest file, a COCO file, or a
plug-in's) and yields the inputs as Arrow record batches of :data:`INPUT_SCHEMA`: ``image_id``
(int64, null when the source has none: the planner then numbers the inputs) and ``image_uri``
(string, a full URI), at most ``chunk_rows`` rows each, in the source's order, without holding the
whole list in memory. A source is a :class:`Source` subclass registered in
:data:`ntt_batch.sources.SOURCES`::

    class MySource(Source):
        keys = {"my_list": "URI of my list file"}   # its settings; the first names where the inputs are
        uri_keys = ("my_list",)                      # settings that are URIs (made absolute, checked)

        def batches(self, options, *, chunk_rows, stats, extensions=None, exclude_prefix=None):
            for chunk in ...:                         # read self.settings["my_list"] in bounded chunks
                stats.listed += len(chunk)
                yield input_batch(chunk)              # or input_batch(uris, ids)

``options`` are the job's fsspec storage options (open files with :func:`ntt_batch.storage.fs.filesystem`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import pyarrow as pa

INPUT_SCHEMA = pa.schema([("image_id", pa.int64()), ("image_uri", pa.string())])


@dataclass
class SourceStats:
    listed: int = 0  # objects seen
    skipped_by_extension: int = 0
    ids_from: str = ""  # "column", "coco", "file names", "uri hashes" (decided by the planner)


def input_batch(uris: list[str], ids: list[int | None] | None = None) -> pa.RecordBatch:
    """A record batch of :data:`INPUT_SCHEMA` from URIs and their ids (None: no ids)."""
    ids_arr = pa.array(ids if ids is not None else [None] * len(uris), type=pa.int64())
    return pa.RecordBatch.from_arrays([ids_arr, pa.array(uris, type=pa.string())], schema=INPUT_SCHEMA)


class Source(ABC):
    """One kind of input (see the module docstring). Built with its settings as keyword arguments.

    Class attributes:
        keys: its settings (job-file keys) → a short description for messages; the first one
            names where the inputs are (``images``, ``manifest``, ``annotations``).
        required: the settings that must be given (default: the first key).
        uri_keys: the settings that are URIs: the job makes them absolute and checks them (local
            ones must exist, storage options must suit them).
    """

    keys: ClassVar[dict[str, str]] = {}
    required: ClassVar[tuple[str, ...]] = ()
    uri_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, **settings: Any) -> None:
        self.settings = settings

    @classmethod
    def main_key(cls) -> str:
        return next(iter(cls.keys))

    @classmethod
    def required_keys(cls) -> tuple[str, ...]:
        return cls.required or (cls.main_key(),)

    @classmethod
    def claims(cls, settings) -> bool | None:
        """Whether this kind takes ``settings`` when another kind shares its main key: None (no
        opinion, the default), True (it does: it wins), False (it does not). E.g. the WebDataset
        kind claims ``images`` naming ``.tar`` files, which the listing kind would take otherwise."""
        return None

    @property
    def location(self) -> str:
        """Where the inputs are (the main setting's value), for messages."""
        return str(self.settings.get(self.main_key(), ""))

    @abstractmethod
    def batches(
        self,
        options: dict | None,
        *,
        chunk_rows: int,
        stats: SourceStats,
        extensions: tuple[str, ...] | None = None,
        exclude_prefix: str | None = None,
    ) -> Iterator[pa.RecordBatch]:
        """The inputs as record batches of :data:`INPUT_SCHEMA` (at most ``chunk_rows`` rows each),
        counting what was seen in ``stats.listed``.

        ``extensions`` (lower-case, with the dot) and ``exclude_prefix`` (the job's own output) are
        for sources that list a store; a source given explicit inputs (a manifest) ignores them."""


__all__ = ["INPUT_SCHEMA", "Source", "SourceStats", "input_batch"]
