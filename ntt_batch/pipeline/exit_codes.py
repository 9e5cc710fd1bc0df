"""The exit codes of `ntt-batch`, one table for every command (README, "The batch job").

====  =======================================================================================
code  meaning
====  =======================================================================================
0     done: every input has a row and none has status error (or ``--allow-errors``);
      ``verify``: consistent; other commands: done
1     done, but some images have status error (``verify OUT`` lists them, ``run --retry-errors``
      redoes them); ``config check``: the file is valid but the checks on this machine found
      errors (or warnings, with ``--strict``)
2     usage or configuration error: a bad flag or job-file value, a path that is missing or of
      the wrong kind, a damaged input file (memory bank, checkpoint, references), missing
      storage credentials; one line naming the key or path and the fix
3     integrity problem: an input of this run got no row, or ``verify`` found corrupt files,
      duplicates, inputs without a row or a run record out of step
4     another run holds the output (its lease), or this run lost it
5     environment failure: disk full, permission denied, read-only file system, storage
      unreachable or timing out; one line naming the path or endpoint; rerun when fixed
      (committed rows are kept)
70    internal error: a bug (the traceback is printed; please report it)
130   interrupted (Ctrl-C): committed rows are kept, run the same command again to continue
====  =======================================================================================

Every expected failure (2-5, 130) prints one line, ``Error: ...`` on stderr, and no traceback;
``--debug`` prints the traceback too. Which exception gives which code: ``ntt_batch.cli.errors``.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_IMAGE_ERRORS = 1
EXIT_USAGE = 2
EXIT_INTEGRITY = 3
EXIT_LOCKED = 4
EXIT_ENVIRONMENT = 5
EXIT_INTERNAL = 70  # BSD sysexits EX_SOFTWARE: never 1, which automation reads as "some images errored"
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention

__all__ = [
    "EXIT_ENVIRONMENT",
    "EXIT_IMAGE_ERRORS",
    "EXIT_INTEGRITY",
    "EXIT_INTERNAL",
    "EXIT_INTERRUPTED",
    "EXIT_LOCKED",
    "EXIT_OK",
    "EXIT_USAGE",
]
