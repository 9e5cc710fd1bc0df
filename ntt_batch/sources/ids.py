"""Input identities at any size: 128-bit URI hashes, image ids from file names, the extension filter.

The inputs themselves come from the sources (:data:`ntt_batch.sources.SOURCES`: a folder/prefix
listing, a manifest, a COCO file, plug-ins), streamed as Arrow record batches so the driver's
memory does not grow with the number of inputs (only the 16-byte hash of each URI is kept).

:class:`UriHashes` is the compact set used for duplicate detection and resume: two uint64 halves
of a BLAKE2b-128 digest per URI (16 bytes per image), sorted; membership is exact up to a 2^-128
collision chance.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

# The number a file name ends with, before its extension: 000000000139.jpg → 139 (at most 18 digits: int64).
NAME_NUMBER = r"(?P<n>\d{1,18})(?:\.[^./]*)?$"
_NAME_NUMBER = re.compile(NAME_NUMBER)


# ----------------------------------------------------------------------------- hashing


def uri_digests(uris: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """BLAKE2b-128 of each URI's UTF-8 bytes as two uint64 arrays (high, low), [N] each."""
    raw = b"".join(hashlib.blake2b(u.encode("utf-8"), digest_size=16).digest() for u in uris)
    pairs = np.frombuffer(raw, dtype=">u8").reshape(-1, 2)
    return pairs[:, 0].astype(np.uint64), pairs[:, 1].astype(np.uint64)


@dataclass
class UriHashes:
    """A set of URI digests (:func:`uri_digests`), sorted by (high, low); 16 bytes per URI."""

    hi: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    lo: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))

    @classmethod
    def from_chunks(cls, chunks: Iterable[tuple[np.ndarray, np.ndarray]]) -> UriHashes:
        chunks = list(chunks)
        if not chunks:
            return cls()
        hi = np.concatenate([c[0] for c in chunks])
        lo = np.concatenate([c[1] for c in chunks])
        order = np.lexsort((lo, hi))
        return cls(hi[order], lo[order])

    def __len__(self) -> int:
        return int(self.hi.size)

    def contains(self, hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
        """Boolean [N]: which of the queried digests are in the set (vectorised; exact)."""
        if not len(self) or not hi.size:
            return np.zeros(hi.shape, dtype=bool)
        left = np.searchsorted(self.hi, hi, side="left")
        right = np.searchsorted(self.hi, hi, side="right")
        span = right - left
        found = np.zeros(hi.shape, dtype=bool)
        one = span == 1
        found[one] = self.lo[left[one]] == lo[one]
        for i in np.nonzero(span > 1)[0]:  # equal high halves: rare (2^-64 per pair)
            found[i] = bool(np.any(self.lo[left[i] : right[i]] == lo[i]))
        return found

    def duplicated(self) -> tuple[np.ndarray, np.ndarray]:
        """Digests present more than once (each reported once)."""
        if len(self) < 2:
            return np.zeros(0, np.uint64), np.zeros(0, np.uint64)
        same = (self.hi[1:] == self.hi[:-1]) & (self.lo[1:] == self.lo[:-1])
        hi, lo = self.hi[1:][same], self.lo[1:][same]
        if hi.size:
            keep = np.ones(hi.size, dtype=bool)
            keep[1:] = (hi[1:] != hi[:-1]) | (lo[1:] != lo[:-1])
            hi, lo = hi[keep], lo[keep]
        return hi, lo

    def union(self, other: UriHashes) -> UriHashes:
        return UriHashes.from_chunks([(self.hi, self.lo), (other.hi, other.lo)])


class HashAccumulator:
    """Collects digests chunk by chunk; :meth:`freeze` sorts them into a :class:`UriHashes`."""

    def __init__(self) -> None:
        self._chunks: list[tuple[np.ndarray, np.ndarray]] = []
        self.count = 0

    def add(self, hi: np.ndarray, lo: np.ndarray) -> None:
        if hi.size:
            self._chunks.append((hi, lo))
            self.count += int(hi.size)

    def freeze(self) -> UriHashes:
        out = UriHashes.from_chunks(self._chunks)
        self._chunks = [(out.hi, out.lo)] if len(out) else []
        return out


# ----------------------------------------------------------------------------- ids


def stable_image_id(uri: str) -> int:
    """A 63-bit id from the URI (for inputs without ids whose names carry no unique number)."""
    return int.from_bytes(hashlib.sha256(uri.encode()).digest()[:8], "big") >> 1


def name_number(uri: str) -> int | None:
    """The number a COCO-style file name ends with, before its extension (``000000000139.jpg`` → 139), else None."""
    m = _NAME_NUMBER.search(uri)
    return int(m.group(1)) if m else None


def name_numbers(uris: pa.Array) -> pa.Array:
    """:func:`name_number` of every URI, vectorised: int64 array, null where a name has no number."""
    import pyarrow.compute as pc

    found = pc.extract_regex(uris, NAME_NUMBER)
    return pc.cast(pc.struct_field(found, "n"), pa.int64())


# ----------------------------------------------------------------------------- extension filter


def normalise_extensions(values: Iterable[str] | str | None) -> tuple[str, ...] | None:
    """``"jpg, .PNG"`` / ``["jpg", "png"]`` → ``(".jpg", ".png")``; None or empty → None (no filter)."""
    if values is None:
        return None
    if isinstance(values, str):
        values = values.replace(",", " ").split()
    out = tuple(sorted({("." + v.strip().lower().lstrip(".")) for v in values if v.strip().strip(".")}))
    return out or None
