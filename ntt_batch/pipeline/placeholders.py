"""Template placeholders left in a job's URIs and paths (``s3://YOUR-BUCKET/...``, ``<bucket>``, ``CHANGE-ME``).

A shipped job file (``jobs/autolabel-s3.yaml``) names its bucket ``YOUR-BUCKET``; run as it is, the
job used to get as far as the first S3 request and die there with a credentials traceback. A
placeholder is a configuration error naming the keys that hold it, raised by
``JobConfig.validate`` (so ``config check`` exits 2, and ``run`` refuses before writing anything).

What counts as a placeholder (in any URI/path setting, ``storage_options`` string values and the
``publish:`` locations):

* an upper-case ``YOUR-`` / ``YOUR_`` word: ``YOUR-BUCKET``, ``YOUR_PREFIX`` (real S3 bucket names
  are lower case);
* ``your-bucket`` / ``your_bucket`` in any case;
* ``CHANGE-ME``, ``CHANGEME``, ``REPLACE_ME`` ... in any case;
* anything in angle brackets: ``<bucket>``, ``<your-endpoint>``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from ..method.config import ConfigError

PLACEHOLDER = re.compile(
    r"(?<![A-Za-z0-9])YOUR[-_][A-Z0-9][A-Z0-9_-]*"
    r"|(?i:(?<![a-z0-9])your[-_]bucket(?![a-z0-9]))"
    r"|(?i:(?<![a-z0-9])(?:change|replace)[-_]?me(?![a-z0-9]))"
    r"|<[^<>\s]+>"
)


def find_placeholders(values: Iterable[tuple[str, object]]) -> dict[str, list[str]]:
    """``{placeholder: [keys holding it]}`` over ``(key, value)`` pairs (non-strings are skipped)."""
    found: dict[str, list[str]] = {}
    for key, value in values:
        if not isinstance(value, str):
            continue
        for m in dict.fromkeys(PLACEHOLDER.findall(value)):
            found.setdefault(m, []).append(key)
    return found


def job_values(cfg) -> list[tuple[str, object]]:
    """The settings of a ``JobConfig`` that hold locations: its URIs, ``storage_options`` (nested
    one level, e.g. ``client_kwargs.endpoint_url``) and the ``publish:`` block's strings."""
    pairs: list[tuple[str, object]] = list(cfg.uris().items())
    for k, v in (cfg.storage_options or {}).items():
        if isinstance(v, dict):
            pairs += [(f"storage_options.{k}.{k2}", v2) for k2, v2 in v.items()]
        else:
            pairs.append((f"storage_options.{k}", v))
    publish = getattr(cfg, "publish", None)
    if publish is not None:
        pairs += [(f"publish.{k}", getattr(publish, k, None)) for k in ("iceberg", "table", "warehouse", "delta")]
    return pairs


def placeholder_message(found: dict[str, list[str]]) -> str:
    """One line: every placeholder with the keys holding it, and what to do."""
    parts = [f"{', '.join(keys)}: {token!r}" for token, keys in found.items()]
    return (
        f"{'; '.join(parts)} {'looks like a placeholder' if len(found) == 1 else 'look like placeholders'} "
        "(as in the shipped job files): replace with your own bucket, prefix or path"
    )


def refuse_placeholders(cfg, where: str | None = None) -> None:
    """Raise :class:`ConfigError` naming every key of the ``JobConfig`` that holds a placeholder
    (``where``: a job file's name to start the message with)."""
    found = find_placeholders(job_values(cfg))
    if found:
        message = placeholder_message(found)
        raise ConfigError(f"{where}: {message}" if where else message)
