"""The driver's background loops while Ray runs: the staging committer and the progress line."""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable

import pyarrow.parquet as pq

from ..output.folder import (
    STAGING,
    OutputFolder,
)
from ..output.parts import (
    PartStats,
    RunRecord,
    commit_staging,
)
from ..sources.ids import HashAccumulator

log = logging.getLogger(__name__)


class BackgroundLoop:
    """A daemon thread calling :meth:`tick` every ``interval_s`` seconds while the ``with`` block runs.

    ``tick`` returning False ends the loop early; ``__exit__`` stops the thread and waits for it.
    """

    thread_name = "ntt-background"

    def __init__(self, interval_s: float):
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def tick(self) -> bool | None:
        raise NotImplementedError

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            if self.tick() is False:
                return

    def __enter__(self):
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()


class StagingCommitter(BackgroundLoop):
    """Commits the attempt's staging files into large parts: in the background whenever a part's
    worth (``target_bytes``) has accumulated, and once more at the end (see ``output.parts``)."""

    thread_name = "ntt-committer"

    def __init__(
        self,
        folder: OutputFolder,
        run_id: str,
        seen: HashAccumulator,
        record: RunRecord,
        *,
        target_bytes: int,
        lease,
        staging: str | None = None,
        interval_s: float = 20.0,
    ):
        super().__init__(interval_s)
        self.folder, self.run_id, self.seen, self.record = folder, run_id, seen, record
        self.target_bytes, self.lease = target_bytes, lease
        self.staging = staging or f"{STAGING}/{run_id}"  # this attempt's staging folder (relative to the output)
        self.broken = False  # a commit failed after its intent may have been written: no more commits here
        self.stats = PartStats()
        self.error_examples: list[tuple[str, str]] = []
        self.duplicates_dropped = 0
        self.quarantined: list[str] = []
        self.error: BaseException | None = None
        self._lock = threading.Lock()

    def _files(self) -> list:
        return self.folder.files_under(self.staging, ".parquet")

    def commit(self, *, final: bool, min_bytes: int = 0) -> None:
        """Commit the staged files. After a failed commit this refuses (raises): that commit's intent may
        name the same staged files, and only the next run's recovery may decide whether it happened."""
        with self._lock:
            if self.broken:
                raise RuntimeError("an earlier commit of this attempt failed; the next run recovers it")
            files = self._files()
            if not files or sum(f.size for f in files) < min_bytes:
                return
            try:
                res = commit_staging(
                    self.folder,
                    files,
                    run_id=self.run_id,
                    seen=self.seen,
                    update_run=self.record.update,
                    final=final,
                    target_bytes=self.target_bytes,
                    before_publish=self.lease.check,
                )
            except BaseException:
                self.broken = True
                raise
            self.stats.add(res.stats)
            self.error_examples = (self.error_examples + res.error_examples)[:5]
            self.duplicates_dropped += res.duplicates_dropped
            self.quarantined += res.quarantined

    def tick(self) -> bool:
        try:
            self.commit(final=False, min_bytes=self.target_bytes)
        except BaseException as e:  # surfaced by the driver after the dataset finishes
            log.exception("background commit failed")
            self.error = e
            return False
        return True

    def rows_in_flight(self, cache: dict[str, int]) -> int:
        """Rows staged but not committed yet (footers only; ``cache`` remembers files already read)."""
        total = 0
        for f in self._files():
            if f.path not in cache:
                try:
                    with self.folder.fs.open(f.path, "rb") as fh:
                        cache[f.path] = pq.ParquetFile(fh).metadata.num_rows
                except Exception:  # still being written, or just committed
                    continue
            total += cache[f.path]
        return total


class ProgressLine(BackgroundLoop):
    """Images done, images/s and ETA while the dataset runs: one line redrawn every 2 s on a terminal,
    a plain line every 30 s otherwise (``ray job logs``, CI), and a last one when the dataset ends.

    "Done" is the larger of the rows the model stage has produced (a :class:`ProgressCounter` actor
    that :func:`execute` attaches as ``counter``) and the rows staged or committed: staging files
    appear only when a whole block is written, which in a small job is at its very end.
    """

    thread_name = "ntt-progress"
    intervals_s = (2.0, 30.0)  # (terminal, plain lines)

    def __init__(
        self, committer: StagingCommitter, total: int, echo: Callable[[str], None], *, tty: bool | None = None
    ):
        self.tty = sys.stderr.isatty() if tty is None else tty
        super().__init__(self.intervals_s[0] if self.tty else self.intervals_s[1])
        self.committer, self.total, self.echo = committer, total, echo
        self.counter = None  # a ProgressCounter actor handle, set by execute once Ray is up
        self._produced = 0
        self._cache: dict[str, int] = {}
        self._t0 = time.perf_counter()

    def produced(self) -> int:
        """Rows the model stage reported (the last value read when the counter does not answer)."""
        if self.counter is not None:
            try:
                import ray

                self._produced = max(self._produced, int(ray.get(self.counter.count.remote(), timeout=10)))
            except Exception:  # progress is best-effort
                pass
        return self._produced

    def line(self) -> str:
        staged = self.committer.stats.rows + self.committer.rows_in_flight(self._cache)
        done = min(self.total, max(staged, self.produced()))
        elapsed = time.perf_counter() - self._t0
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate > 0 else None
        eta_text = (
            "?"
            if eta is None
            else (f"{eta / 3600:.1f} h" if eta > 5400 else f"{eta / 60:.1f} min" if eta > 90 else f"{eta:.0f} s")
        )
        pct = 100.0 * done / self.total if self.total else 100.0
        return f"progress: {done:,}/{self.total:,} images ({pct:.1f}%), {rate:.2f} images/s, ETA {eta_text}"

    def tick(self) -> None:
        try:
            text = self.line()
        except Exception:  # progress is best-effort
            return
        if self.tty:
            sys.stderr.write("\r" + text.ljust(100)[:100])
            sys.stderr.flush()
        else:
            self.echo(text)

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self.tick()  # the final count, also for a job shorter than one interval
        self.counter = None
        if self.tty:
            sys.stderr.write("\n")
