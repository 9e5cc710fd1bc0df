"""Missing object-store credentials as one clear line (not botocore's traceback).

s3fs/botocore raise ``NoCredentialsError`` ("Unable to locate credentials") or
``PartialCredentialsError`` at the first S3 request, possibly deep inside a Ray task (then wrapped
in a ``RayTaskError`` that subclasses it). :func:`credentials_problem` recognises them by class name
along the exception's MRO and cause chain, so botocore is not imported to check, and says how to
provide credentials.
"""

from __future__ import annotations

CREDENTIAL_ERRORS = frozenset(
    {"NoCredentialsError", "PartialCredentialsError", "ProfileNotFound", "CredentialRetrievalError"}
)

HOW_TO = (
    "provide them with the environment variables AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
    "(+ AWS_SESSION_TOKEN for temporary ones), a profile (AWS_PROFILE, --profile NAME, or storage_options: "
    "{profile: NAME} in a job file), or storage_options: {key: ..., secret: ...}; on a cluster, the nodes' "
    "instance role; a public bucket: --anon (storage_options: {anon: true})"
)


def _chain(e: BaseException | None):
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        yield e
        e = e.__cause__ or e.__context__ or getattr(e, "cause", None)


def credentials_error(e: BaseException) -> BaseException | None:
    """The botocore credentials error in ``e`` or its causes, the innermost one (a ``RayTaskError``
    subclassing it holds the original as its cause); None when there is none."""
    found = None
    for err in _chain(e):
        if any(t.__name__ in CREDENTIAL_ERRORS for t in type(err).__mro__):
            found = err
    return found


def credentials_problem(e: BaseException) -> str | None:
    """One line for a credentials failure (what botocore said, how to fix it); None for other errors."""
    err = credentials_error(e)
    if err is None:
        return None
    kind = next(t.__name__ for t in type(err).__mro__ if t.__name__ in CREDENTIAL_ERRORS)
    fmt, kwargs = getattr(err, "fmt", None), getattr(err, "kwargs", None)
    try:  # botocore's own words, without a wrapper's traceback text
        said = fmt.format(**kwargs) if isinstance(fmt, str) and isinstance(kwargs, dict) else ""
    except (KeyError, IndexError, ValueError):
        said = ""
    said = " ".join(said.split()) or kind
    return f"storage credentials: {kind}: {said}; {HOW_TO}"
