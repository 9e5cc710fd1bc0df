"""WebDataset tar shards, read in one forward pass, with every break reported (never a silent gap).

Python's ``tarfile`` reads the headers (ustar, GNU and PAX names), but in its own iteration a
shard cut at a member boundary, cut inside a header, or with a corrupt header after the first
member simply *ends*: the samples after the break would vanish without a word. :func:`_next_member`
walks the archive with the same header parser and tells those cases apart from a proper end
(a zero block): each becomes the shard's error row, naming the byte offset and the last sample
read. Truncated member data ("unexpected end of data") and decompression errors are caught the
same way.

Only image members are read into memory; the other members (``.json``, ``.txt``, ...) and the
members of samples that already have a row are skipped over in the stream.
"""

from __future__ import annotations

import tarfile
from collections.abc import Iterator

from ..storage.reads import open_stream
from .shards import (
    IMAGE_EXTENSIONS,
    TAR_SUFFIXES,
    KeyTracker,
    Sample,
    ShardCensus,
    ShardedSource,
    escape_key,
    is_tar_uri,
)


class WebDatasetSource(ShardedSource):
    """``images`` naming ``.tar`` shards (a brace pattern, a glob or one file): each sample one input."""

    keys = {
        "images": "WebDataset tar shards: shards/{00000..00999}.tar, shards/*.tar or one .tar",
        "image_column": "the image member's extension (jpg, png, ...; default the first image member)",
    }
    uri_keys = ("images",)
    suffixes = TAR_SUFFIXES

    @classmethod
    def claims(cls, settings) -> bool:
        return is_tar_uri(str(settings.get("images") or ""))

    def samples(self, shard, options, *, done, census):
        return iter_tar_samples(shard, options, image_ext=self.settings.get("image_column"), done=done, census=census)


class _TarBreak(Exception):
    """The archive cannot be read past this point (message: where and why)."""


def split_member(name: str) -> tuple[str, str]:
    """WebDataset's split of a member path into (key, extension): the extension starts at the first
    dot of the base name (``a/b/000123.seg.png`` → ``("a/b/000123", "seg.png")``)."""
    name = name[2:] if name.startswith("./") else name
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    key = f"{folder}/{stem}" if folder else stem
    return key, ext.lower() if dot else ""


def _next_member(tf: tarfile.TarFile) -> tarfile.TarInfo | None:
    """The next member, None at a proper end of archive; :class:`_TarBreak` for every other end.

    Mirrors ``TarFile.next`` (3.8-3.13) without its silent endings; members are not kept in
    ``tf.members`` (memory stays flat over a long shard).
    """
    if tf.firstmember is not None:  # read by tarfile.open itself
        first, tf.firstmember = tf.firstmember, None
        tf.members.clear()
        return first
    if tf.offset != tf.fileobj.tell():  # skip the rest of the previous member's data
        tf.fileobj.seek(tf.offset - 1)
        if not tf.fileobj.read(1):
            raise _TarBreak(f"truncated: the data of the last member ends early (archive cut before byte {tf.offset})")
    at = tf.offset
    try:
        return tf.tarinfo.fromtarfile(tf)
    except tarfile.EOFHeaderError:
        return None  # a zero block: the end-of-archive marker
    except tarfile.EmptyHeaderError:
        raise _TarBreak(f"truncated: the archive ends at byte {at} without its end-of-archive marker") from None
    except tarfile.TruncatedHeaderError:
        raise _TarBreak(f"truncated: the archive ends inside the member header at byte {at}") from None
    except tarfile.InvalidHeaderError as e:
        raise _TarBreak(f"corrupt member header at byte {at} ({e})") from None
    except tarfile.SubsequentHeaderError as e:
        raise _TarBreak(f"corrupt extended header at byte {at} ({e})") from None


# 101 lines: one streaming loop over a tar; truncation reporting (offset, last complete sample) is its state.


def iter_tar_samples(
    shard: str,
    options: dict | None,
    *,
    image_ext: str | None,
    done: frozenset[str] | set[str],
    census: ShardCensus,
) -> Iterator[Sample]:
    """The samples of one tar shard (``sources.shards`` describes keys, images and breaks)."""
    tracker = KeyTracker(census, done)
    wanted = (image_ext.lower().lstrip("."),) if image_ext else IMAGE_EXTENSIONS
    key: str | None = None
    state = ""  # the current key's verdict from the tracker
    members: dict[str, bytes] = {}
    others: list[str] = []
    last_done = "(none)"

    def finish() -> Sample | None:
        if key is None or state != "emit":
            return None
        for ext in wanted:
            if ext in members:
                return Sample(key, data=members[ext])
        found = ", ".join(sorted(set(others) | set(members))) or "no members"
        what = (
            f".{image_ext}" if image_ext else "an image (" + ", ".join(f".{e}" for e in IMAGE_EXTENSIONS[:4]) + ", ...)"
        )
        return Sample(key, error=f"sample has no {what} member; it has: {found}")

    try:
        with open_stream(shard, options) as raw:
            try:
                tf = tarfile.open(fileobj=raw, mode="r|*")
            except (tarfile.ReadError, EOFError, OSError) as e:
                raise _TarBreak(f"not a readable tar archive ({type(e).__name__}: {e})") from None
            while True:
                try:
                    info = _next_member(tf)
                except (tarfile.ReadError, EOFError, OSError) as e:  # data cut short, bad compression, network
                    raise _TarBreak(f"unreadable at byte {tf.offset} ({type(e).__name__}: {e})") from None
                if info is None:
                    break
                if not info.isfile():
                    continue
                k, ext = split_member(info.name)
                if not k or k.rsplit("/", 1)[-1] == "":  # hidden files (".DS_Store", "._x.jpg"): not samples
                    continue
                k = escape_key(k)
                if k != key:
                    sample = finish()
                    if sample is not None:
                        yield sample
                    if key is not None:
                        last_done = key
                    key, members, others = k, {}, []
                    state = tracker.admit(k)
                if state != "emit":
                    continue
                if ext in wanted and ext not in members:
                    try:
                        f = tf.extractfile(info)
                        data = f.read() if f is not None else b""
                    except (tarfile.ReadError, EOFError, OSError) as e:
                        raise _TarBreak(
                            f"truncated inside member {info.name!r} at byte {info.offset_data} "
                            f"({type(e).__name__}: {e})"
                        ) from None
                    if len(data) != info.size:
                        raise _TarBreak(
                            f"truncated inside member {info.name!r}: {len(data)} of its {info.size} bytes "
                            f"(archive ends at byte {info.offset_data + len(data)})"
                        )
                    members[ext] = data
                else:
                    others.append(ext or "(no extension)")
            census.bytes = tf.offset
    except _TarBreak as e:
        sample = finish()  # the sample being read when it broke: kept if its image was read whole
        if sample is not None and sample.data is not None:
            yield sample
            last_done = key or last_done
        elif key is not None and state == "emit":
            census.emitted -= 1  # it gives no row of its own: the shard error row names it
            census.samples -= 1
        err = tracker.broken(f"shard {shard}: {e}; last complete sample: {last_done}")
        if err is not None:
            yield err
        return
    except FileNotFoundError as e:
        err = tracker.broken(f"shard {shard} does not exist ({e})")
        if err is not None:
            yield err
        return
    except Exception as e:  # noqa: BLE001 - permissions, network: the shard's error row, never a crash
        err = tracker.broken(f"shard {shard} is unreadable ({type(e).__name__}: {e})")
        if err is not None:
            yield err
        return
    sample = finish()
    if sample is not None:
        yield sample
