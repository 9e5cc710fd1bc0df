"""One score-threshold flag for every command: ``--thresholds T|FILE`` (issue 18).

``merge`` (and every export) and ``visualize`` called it ``--score-threshold``, ``review``
``--thresholds``. Each of them now takes ``--thresholds``: one number for every class, or a
YAML/JSON map ``{class name or id: T, default: T}`` such as ``ntt-batch thresholds`` writes
(``exports.score_filter.ScoreThresholds``). The old name ``--score-threshold`` still works on all
of them, hidden from ``--help``, with a one-line notice on stderr.

Only click is imported: ``ntt-batch --help`` stays fast.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

FLAG = "--thresholds"
OLD_FLAGS = ("--score-threshold",)
_OLD_DEST = "old_score_threshold"


def thresholds_option(help_text: str) -> Callable:
    """Decorator: ``--thresholds`` (the command receives ``thresholds``, None when not given) plus the
    hidden old names, which print a notice and fill ``thresholds``; both at once is a usage error."""

    def decorate(f: Callable) -> Callable:
        @functools.wraps(f)
        def wrapper(*args, **kw):
            old = kw.pop(_OLD_DEST, None)
            if old is not None:
                if kw.get("thresholds") is not None:
                    raise click.UsageError(f"give {FLAG} only ({OLD_FLAGS[0]} is its old name)")
                click.echo(f"note: {OLD_FLAGS[0]} is now {FLAG} (the old name still works)", err=True)
                kw["thresholds"] = old
            return f(*args, **kw)

        wrapper = click.option(*OLD_FLAGS, _OLD_DEST, default=None, hidden=True, metavar="T|FILE")(wrapper)
        return click.option(FLAG, "thresholds", default=None, metavar="T|FILE", help=help_text)(wrapper)

    return decorate
