"""A kind of input: a text file with one image URI per line (blank lines and '#' comments skipped)."""

from __future__ import annotations

from ntt_batch.sources.base import Source, input_batch
from ntt_batch.storage.fs import filesystem


class DemoListSource(Source):
    keys = {"list_file": "a text file with one image URI per line"}
    uri_keys = ("list_file",)

    def batches(self, options, *, chunk_rows, stats, extensions=None, exclude_prefix=None):
        fs, path = filesystem(self.settings["list_file"], options)
        chunk: list[str] = []
        with fs.open(path, "rt", encoding="utf-8") as f:
            for line in f:
                uri = line.strip()
                if not uri or uri.startswith("#"):
                    continue
                stats.listed += 1
                chunk.append(uri)
                if len(chunk) >= chunk_rows:
                    yield input_batch(chunk)
                    chunk = []
        if chunk:
            yield input_batch(chunk)
