"""Child processes for the crash and fencing tests: the real operations, forked from a forkserver that
imported the package once (a child costs no interpreter start and no torch import).

``start(op, out, ...)`` runs ``op`` — ``run`` (the batch job with the no-op model stage),
``compact`` or ``repair`` (``verify --repair``) — in a child with ``NTT_CRASH_AT`` set to a step
of ``output.crashpoints`` (and ``NTT_CRASH_SIGNAL=SIGSTOP`` to freeze there instead of dying). The
child writes the message of a lease error to ``result_file`` and exits 4 (lost or held), so a test
can read what a stale holder said.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import time
from pathlib import Path

CTX = multiprocessing.get_context("forkserver")
CTX.set_forkserver_preload(
    [
        "ntt_batch.pipeline.job",
        "ntt_batch.pipeline.verify",
        "ntt_batch.method.memory_bank",
        "ntt_batch.models.checkpoints",
        "ray.data",
    ]
)
EXIT_LEASE = 4


def _child(op: str, out: str, cfg, crash_at: str | None, signal_name: str | None, options, result_file) -> None:
    from ntt_batch.output.crashpoints import ENV, ENV_SIGNAL
    from ntt_batch.output.fencing import LeaseLostError
    from ntt_batch.output.lease import LeaseHeldError

    if crash_at:
        os.environ[ENV] = crash_at
    if signal_name:
        os.environ[ENV_SIGNAL] = signal_name
    try:
        if op == "run":
            from ntt_batch.pipeline.job import run_job
            from ntt_batch.pipeline.stages import NoopModelActor

            run_job(cfg, echo=lambda s: None, model_stage=NoopModelActor, verbose=False)
        elif op == "compact":
            from ntt_batch.pipeline.verify import compact_output

            compact_output(out, options, target_file_mb=1, echo=lambda s: None)
        elif op == "repair":
            from ntt_batch.pipeline.verify import verify_output

            verify_output(out, options, repair=True)
        else:
            raise ValueError(op)
    except (LeaseLostError, LeaseHeldError) as e:
        if result_file:
            Path(result_file).write_text(f"{type(e).__name__}: {e}")
        os._exit(EXIT_LEASE)


def start(op: str, out, cfg=None, crash_at: str | None = None, *, signal_name=None, options=None, result_file=None):
    """Start ``op`` in a child process; returns the ``multiprocessing.Process``."""
    p = CTX.Process(target=_child, args=(op, str(out), cfg, crash_at, signal_name, options, result_file))
    p.start()
    return p


def crash(op: str, out, cfg=None, crash_at: str = "", *, options=None, timeout_s: float = 240) -> None:
    """Run ``op`` in a child that must die by SIGKILL at ``crash_at`` (proof the step was reached)."""
    p = start(op, out, cfg, crash_at, options=options)
    p.join(timeout=timeout_s)
    if p.is_alive():
        p.kill()
        raise AssertionError(f"{op} did not reach {crash_at} within {timeout_s} s")
    assert p.exitcode == -signal.SIGKILL, f"{op} exited with {p.exitcode} instead of dying at {crash_at}"


def wait_stopped(p, timeout_s: float = 240) -> None:
    """Wait until the child has stopped itself (state T in /proc), failing if it exits instead."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not p.is_alive():
            raise AssertionError(f"the child exited ({p.exitcode}) instead of stopping")
        try:
            state = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            state = ""
        if state in ("T", "t"):
            return
        time.sleep(0.05)
    p.kill()
    raise AssertionError(f"the child did not stop within {timeout_s} s")
