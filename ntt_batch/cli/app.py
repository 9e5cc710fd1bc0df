"""The root command group of `ntt-batch`: global flags, aliases, failures turned into exit codes.

Expected failures print one line, ``Error: <message>`` on stderr, and exit with their code
(:mod:`.errors`; the table in ``ntt_batch.pipeline.exit_codes``). ``--debug`` lets the
exception propagate: its traceback is printed (URL credentials hidden) and the process still
exits with the failure's code. When run as the ``ntt-batch`` program (:meth:`NttGroup.__call__`)
the process ends after an explicit cleanup: buffers flushed, readers collected, so no Arrow
thread outlives the interpreter.
"""

from __future__ import annotations

import gc
import logging
import sys
import traceback

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
        _shut_down()
        sys.exit(EXIT_OK if code is None else code)


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


def _shut_down() -> None:
    """Close what the command left open before the interpreter finalizes: unreferenced readers are
    collected now, on this thread (a pyarrow reader of a Python file destroyed on an Arrow I/O
    thread during interpreter shutdown aborts the process), and the output streams flushed."""
    gc.collect()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`ntt-batch ... | head`)
            pass


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
