"""The root command group of `ntt-batch`: global flags, aliases, failures turned into exit codes.

Expected failures print one line, ``Error: <message>`` on stderr, and exit with their code
(:mod:`.errors`; the table in ``ntt_batch.pipeline.exit_codes``). ``--debug`` lets the
exception propagate: its traceback is printed (URL credentials hidden) and the process still
exits with the failure's code. Run as the ``ntt-batch`` program (:meth:`NttGroup.__call__`), the
process ends through :func:`exit_now`: an explicit cleanup, then an exit that no Arrow thread can
abort.
"""

from __future__ import annotations

import atexit
import gc
import logging
import os
import sys
import threading
import traceback
from typing import NoReturn

import click

from ..pipeline.exit_codes import EXIT_INTERNAL, EXIT_OK
from ..storage.fs import redact_urls
from .errors import failure_of

# Old command names that keep working, with a one-line notice on stderr.
ALIASES = {"merge": "export"}
# What `interrupted` adds, per command.
INTERRUPTED_HINTS = {"run": "finished rows are committed; run the same command again to continue"}


class NttGroup(click.Group):
    """The root group: aliases, and every expected failure as one line and its exit code."""

    def get_command(self, ctx: click.Context, cmd_name: str):
        if cmd_name in ALIASES and cmd_name not in self.commands:
            new = ALIASES[cmd_name]
            click.echo(f"notice: `{cmd_name}` is now `{new}` (same flags); the old name keeps working", err=True)
            cmd_name = new
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.ClickException, click.exceptions.Abort):
            raise
        except BaseException as e:  # noqa: BLE001 - sorted below: expected failures exit with their code
            failure = failure_of(e, interrupted_hint=INTERRUPTED_HINTS.get(ctx.invoked_subcommand or "", ""))
            debug = bool(ctx.obj and ctx.obj.get("debug"))
            if failure is None or (debug and not isinstance(e, KeyboardInterrupt)):
                raise
            click.echo(f"Error: {failure.message}", err=True)
            ctx.exit(failure.code)

    def __call__(self, *args, **kwargs):
        """The ``ntt-batch`` program: run the command, clean up, exit with the documented code."""
        try:
            code = self.main(*args, **kwargs)
        except SystemExit as e:
            code = e.code
        except BaseException as e:  # noqa: BLE001 - --debug or a bug: the traceback, then the code
            code = _report_uncaught(e)
        exit_now(EXIT_OK if code is None else code)


def _report_uncaught(e: BaseException) -> int:
    """Print the traceback of an exception that reached the top (URL credentials hidden); its exit code."""
    text = "".join(traceback.format_exception(e))
    print(redact_urls(text), file=sys.stderr, end="")
    failure = failure_of(e, interrupted_hint="")
    if failure is None:
        print("Error: internal error (a bug: please report it with the traceback above)", file=sys.stderr)
        return EXIT_INTERNAL
    print(f"Error: {failure.message}", file=sys.stderr)
    return failure.code


def exit_now(code: int | str) -> NoReturn:
    """End the process with ``code`` after an explicit, ordered cleanup, skipping interpreter finalization.

    What the interpreter would do at exit, in order: unreferenced objects are collected, running
    non-daemon threads joined, the ``atexit`` handlers run (``ray.shutdown``, logging's flush,
    finalizers), the output streams flushed. Then ``os._exit``: no module teardown, no C++ static
    destructors. During interpreter finalization an Arrow I/O thread that still holds a pyarrow
    reader of a Python file object (a pre-buffered read of an fsspec file) must take the GIL to
    release it, and ``terminate called without an active exception`` aborted about one `verify`
    in 25 with exit 134 (issue 19, item 3); here nothing runs after the last handler.
    """
    if not isinstance(code, int):  # sys.exit("message"): printed, exit 1 (Python's own rule)
        print(code, file=sys.stderr)
        code = 1
    # CPython's own steps of Py_FinalizeEx, in its order (private names: checked, else a normal exit)
    join_threads = getattr(threading, "_shutdown", None)  # stops idle executors, joins non-daemon threads
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if join_threads is None or run_exit_handlers is None:
        sys.exit(code)
    gc.collect()
    join_threads()
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`ntt-batch ... | head`)
            pass
    os._exit(code)


class _RedactingFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return redact_urls(super().format(record))


@click.group(cls=NttGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--debug", is_flag=True, help="Show full tracebacks and debug logs.")
@click.version_option(package_name="ntt-batch")
@click.pass_context
def main(ctx, debug):
    """Training-free reference-based instance segmentation (No Time to Train!) at data-lake scale.

    A few annotated reference instances per class become a memory bank of DINOv2 (or DINOv3)
    prototypes; SAM2 proposes masks on every target image and each is matched to the prototypes.

    \b
    Exit codes (every command; failures print one line, --debug the traceback too):
      0  done          1  some images have status error     2  usage or configuration error
      3  integrity problem (an input without a row, `verify` findings)
      4  another run holds the output     5  environment (disk full, permission, storage unreachable)
      70 internal error (a bug)           130 interrupted
    """
    ctx.obj = {"debug": debug}
    handler = logging.StreamHandler()
    handler.setFormatter(_RedactingFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, handlers=[handler])


def progress(label: str):
    """A stderr progress callback (n, total) -> None that prints at most ~20 lines."""
    state = {"last": -1}

    def cb(n: int, total: int) -> None:
        step = max(1, total // 20)
        if n == total or n // step != state["last"]:
            state["last"] = n // step
            click.echo(f"{label}: {n}/{total}", err=True)

    return cb
