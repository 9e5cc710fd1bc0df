"""Crash-point injection for tests: the process kills itself at a named step of a commit.

``NTT_CRASH_AT=<name>`` (read only by :func:`crash_point`, set only by tests) makes the process
SIGKILL itself when it reaches the step ``<name>``: no ``finally`` block, no ``atexit``, no
flush runs, exactly like a power cut or the OOM killer. ``NTT_CRASH_SIGNAL=SIGSTOP`` stops it
there instead (once; a test resumes it with SIGCONT), which is how a frozen lease holder is made
on purpose. Unset (always, outside tests) the check is one dictionary lookup.

:data:`CRASH_POINTS` names every step the code can stop at, so a test can walk them all. Names are
``<kind>.<step>``; the steps of a commit, in order (see ``output.parts`` for the protocol):

``assembled``  new part files are complete under ``_ntt/tmp/``; no intent yet
``intent``     the intent ``_ntt/commits/<id>.json`` is written; nothing moved yet
``retiring``   the first replaced part has left the dataset (moved to ``_ntt/replaced/<id>/``)
``retired``    every replaced part has left the dataset
``publishing`` the first new part is under its final name
``published``  every new part is under its final name
``recorded``   run.json lists the new parts (replaced files and the intent not yet removed)

Staging commits replace nothing a reader sees (staged files are under ``_ntt/``), so they have no
``retiring``/``retired`` steps. ``recovery.*`` are the same steps taken by
:func:`~ntt_batch.output.intents.recover_commits`
finishing a dead run's intent, plus the two of undoing one (``unpublished``: the intent's new parts
have left the dataset; ``restoring``: the first replaced part is back). ``quarantine.moving`` /
``quarantine.moved`` bracket moving an unreadable part out of the dataset.
"""

from __future__ import annotations

import os
import signal

ENV = "NTT_CRASH_AT"
ENV_SIGNAL = "NTT_CRASH_SIGNAL"

COMMIT_STEPS = ("assembled", "intent", "retiring", "retired", "publishing", "published", "recorded")
_STAGING_STEPS = tuple(s for s in COMMIT_STEPS if s not in ("retiring", "retired"))

CRASH_POINTS: tuple[str, ...] = (
    *(f"staging.{s}" for s in _STAGING_STEPS),
    *(f"{kind}.{s}" for kind in ("compaction", "retry-errors", "repair") for s in COMMIT_STEPS),
    "quarantine.moving",
    "quarantine.moved",
    *(f"recovery.{s}" for s in COMMIT_STEPS if s not in ("assembled", "intent")),
    "recovery.unpublished",
    "recovery.restoring",
)
_KNOWN = frozenset(CRASH_POINTS)
_stopped: set[str] = set()


def crash_point(name: str) -> None:
    """Die here (SIGKILL; or stop once, with ``NTT_CRASH_SIGNAL=SIGSTOP``) when ``NTT_CRASH_AT`` names this step."""
    if name not in _KNOWN:
        raise ValueError(f"crash point {name!r} is not in CRASH_POINTS (ntt_batch/io/crashpoints.py): add it there")
    if os.environ.get(ENV) != name:
        return
    if os.environ.get(ENV_SIGNAL, "SIGKILL").upper() == "SIGSTOP":
        if name not in _stopped:
            _stopped.add(name)
            os.kill(os.getpid(), signal.SIGSTOP)
        return
    os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["CRASH_POINTS", "COMMIT_STEPS", "ENV", "ENV_SIGNAL", "crash_point"]
