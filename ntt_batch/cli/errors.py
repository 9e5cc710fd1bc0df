"""Which failure exits with which code, and the one line it prints (the table: ``pipeline.exit_codes``).

:func:`failure_of` maps an exception to a :class:`Failure` (exit code + one line), or to None for
an unexpected one (a bug: its traceback is shown, exit 70). The rules, first match wins:

* ``KeyboardInterrupt`` → 130;
* an environment failure anywhere in the exception's cause chain → 5: ``OSError`` with errno
  ENOSPC, EDQUOT, EACCES, EPERM, EROFS or a network errno, ``PermissionError``, ``TimeoutError``,
  ``ConnectionError``, and the object-store clients' connection and timeout errors (botocore
  ``EndpointConnectionError``, ``ConnectTimeoutError``, ``ReadTimeoutError``, ``HTTPClientError``;
  aiohttp ``ClientConnectorError``, ``ServerTimeoutError``);
* missing or unusable storage credentials (botocore ``NoCredentialsError``,
  ``PartialCredentialsError``, ``ProfileNotFound``) → 2: the fix is in the job's settings or the
  environment variables, like any configuration error (issue 18: "missing credentials → one
  clear line, exit 2");
* ``LeaseHeldError`` / ``LeaseLostError`` → 4;
* usage and configuration errors → 2: ``ValueError`` (``ConfigError``, ``StorageOptionsError``,
  damaged input files), ``KeyError``, ``RuntimeError``, ``FileNotFoundError``,
  ``NotADirectoryError``, ``IsADirectoryError``, ``FileExistsError``.

Every message is put on one line and has the userinfo of any URL in it hidden
(``http://user:SECRET@host`` → ``http://***@host``).
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from dataclasses import dataclass

from ..pipeline.exit_codes import EXIT_ENVIRONMENT, EXIT_INTERRUPTED, EXIT_LOCKED, EXIT_USAGE
from ..storage.credentials import credentials_problem
from ..storage.fs import redact_urls

# errno → (what happened, what to do); the path (OSError.filename) goes between them.
_ENVIRONMENT_ERRNOS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free space (or write elsewhere) and rerun: committed rows are kept"),
    errno.EDQUOT: ("disk quota exceeded", "free space or raise the quota and rerun: committed rows are kept"),
    errno.EACCES: ("permission denied", "give this user access (or use another path) and rerun"),
    errno.EPERM: ("operation not permitted", "give this user access (or use another path) and rerun"),
    errno.EROFS: ("read-only file system", "write to a writable location and rerun"),
    errno.EIO: ("input/output error", "check the device or mount and rerun"),
}
_NETWORK_ERRNOS = {
    errno.ECONNREFUSED,
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    errno.ETIMEDOUT,
}
# Object-store client errors (matched by class name: botocore and aiohttp are optional imports).
_UNREACHABLE = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ReadTimeoutError",
    "ConnectionClosedError",
    "HTTPClientError",
    "ClientConnectorError",
    "ClientOSError",
    "ServerTimeoutError",
    "ServerDisconnectedError",
}
_LEASE = {"LeaseHeldError", "LeaseLostError"}
_USAGE = (ValueError, KeyError, RuntimeError, FileNotFoundError, NotADirectoryError, IsADirectoryError, FileExistsError)
_USAGE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST}
# Errors whose message names the key or path by itself: printed without the exception's type.
_SELF_EXPLAINED = {"ConfigError", "JobMismatchError", "StorageOptionsError", "NotAJobOutputError"}
_UNREACHABLE_FIX = (
    "check the endpoint (--endpoint-url, storage_options: {client_kwargs: {endpoint_url: ...}}) and the "
    "network, then rerun: committed rows are kept"
)


@dataclass(frozen=True)
class Failure:
    """An expected failure: the exit code and the one line printed (``Error: <message>``)."""

    code: int
    message: str


def one_line(text: str) -> str:
    """``text`` on one line, URL credentials hidden."""
    return redact_urls(" ".join(part.strip() for part in str(text).splitlines() if part.strip()))


def failure_of(exc: BaseException, *, interrupted_hint: str = "") -> Failure | None:
    """The exit code and message of an expected failure; None for an unexpected exception (a bug).

    ``interrupted_hint``: what the command says after "interrupted" (e.g. that rows are committed).
    """
    if isinstance(exc, KeyboardInterrupt):
        return Failure(EXIT_INTERRUPTED, "interrupted" + (f": {interrupted_hint}" if interrupted_hint else ""))
    for e in causes(exc):
        code = environment_code(e)
        if code is not None:
            return Failure(code, environment_message(e))
    credentials = credentials_problem(exc)  # botocore's words, not a Ray task's traceback around them
    if credentials is not None:
        return Failure(EXIT_USAGE, one_line(credentials))
    names = _class_names(exc)
    if names & _LEASE:
        return Failure(EXIT_LOCKED, one_line(str(exc)))
    if isinstance(exc, _USAGE) or (isinstance(exc, OSError) and exc.errno in _USAGE_ERRNOS):
        return Failure(EXIT_USAGE, one_line(str(exc) if names & _SELF_EXPLAINED else _describe(exc)))
    return None


def environment_code(exc: BaseException) -> int | None:
    """5 (``EXIT_ENVIRONMENT``) when ``exc`` itself is an environment failure (disk full, permission
    denied, read-only file system, storage unreachable or timing out), else None."""
    if isinstance(exc, OSError) and exc.errno in _ENVIRONMENT_ERRNOS:
        return EXIT_ENVIRONMENT
    if isinstance(exc, (PermissionError, TimeoutError, ConnectionError)):
        return EXIT_ENVIRONMENT
    if isinstance(exc, OSError) and exc.errno in _NETWORK_ERRNOS:
        return EXIT_ENVIRONMENT
    if _class_names(exc) & _UNREACHABLE:
        return EXIT_ENVIRONMENT
    return None


def environment_message(exc: BaseException) -> str:
    """One line for an environment failure: what happened, where (path or endpoint), what to do."""
    known = _ENVIRONMENT_ERRNOS.get(exc.errno) if isinstance(exc, OSError) else None
    if known is None and isinstance(exc, PermissionError):
        known = _ENVIRONMENT_ERRNOS[errno.EACCES]
    if known is not None:
        what, fix = known
        where = getattr(exc, "filename", None)
        return one_line(f"{what}: {where if where else _describe(exc)}; {fix}")
    return one_line(f"storage unreachable: {_describe(exc)}; {_UNREACHABLE_FIX}")


def causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, then what caused it (``raise ... from``, or the exception being handled unless
    suppressed with ``from None``), without looping."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ if e.__cause__ is not None else (None if e.__suppress_context__ else e.__context__)


def _class_names(exc: BaseException) -> set[str]:
    return {c.__name__ for c in type(exc).__mro__}


def _describe(exc: BaseException) -> str:
    message = str(exc).strip() or repr(exc)
    return f"{type(exc).__name__}: {message}"
