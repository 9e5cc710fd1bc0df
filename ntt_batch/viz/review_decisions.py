"""The review page's decisions file (``decisions.json``): constants and a validator.

The format is specified in ``docs/review_decisions.md``; the page writes it (download, or POST to
``ntt-batch review --serve``), and :func:`validate_decisions` checks a parsed file against it (the
server runs it before saving; readers such as ``ntt-batch corrections`` may run it too).
"""

from __future__ import annotations

import math
from typing import Any

DECISIONS_FORMAT = "ntt-batch/review-decisions"
DECISIONS_VERSION = 1
ACTIONS = ("accept", "reject", "relabel")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _check_decision(d: Any, where: str) -> None:
    if not isinstance(d, dict):
        raise ValueError(f"{where} must be an object, got {type(d).__name__}")
    for key, ok, what in (
        ("image_id", _is_int, "an integer"),
        ("image_uri", lambda v: isinstance(v, str) and v != "", "a non-empty string"),
        ("instance", lambda v: _is_int(v) and v >= 0, "an integer >= 0 (index in the row's instances)"),
        ("action", lambda v: v in ACTIONS, f"one of {', '.join(ACTIONS)}"),
        ("category_id", _is_int, "an integer"),
        ("decided_at", lambda v: isinstance(v, str) and v.endswith("Z"), "an ISO 8601 UTC time (...Z)"),
        ("original", lambda v: isinstance(v, dict), "an object"),
    ):
        if key not in d or not ok(d[key]):
            raise ValueError(f"{where}.{key} must be {what}, got {d.get(key)!r}")
    if d.get("reviewer") is not None and not isinstance(d["reviewer"], str):
        raise ValueError(f"{where}.reviewer must be a string or null, got {d['reviewer']!r}")
    o = d["original"]
    if not _is_int(o.get("category_id")) or not _is_num(o.get("score")):
        raise ValueError(f"{where}.original needs an integer category_id and a number score, got {o!r}")
    box = o.get("bbox")
    if not (isinstance(box, list) and len(box) == 4 and all(_is_num(v) for v in box)):
        raise ValueError(f"{where}.original.bbox must be [x, y, w, h] (numbers), got {box!r}")
    if d["action"] != "relabel" and d["category_id"] != o["category_id"]:
        raise ValueError(f"{where}: an {d['action']} keeps the class: category_id must equal original.category_id")


def validate_decisions(doc: Any) -> dict:
    """Check a parsed ``decisions.json`` (ValueError naming the first bad field); returns ``doc``.

    Also refused: two decisions for one instance (same ``image_uri`` and ``instance``).
    """
    if not isinstance(doc, dict):
        raise ValueError(f"a decisions file is a JSON object, got {type(doc).__name__}")
    if doc.get("format") != DECISIONS_FORMAT:
        raise ValueError(f"format must be {DECISIONS_FORMAT!r}, got {doc.get('format')!r}: not a review decisions file")
    if doc.get("version") != DECISIONS_VERSION:
        raise ValueError(
            f"version {doc.get('version')!r} is not supported (this ntt-batch reads version {DECISIONS_VERSION})"
        )
    if not isinstance(doc.get("output"), str) or not doc["output"]:
        raise ValueError(f"output must be the shards folder/URI the review was made of, got {doc.get('output')!r}")
    if not isinstance(doc.get("decisions"), list):
        raise ValueError("decisions must be a list")
    seen = set()
    for n, d in enumerate(doc["decisions"]):
        _check_decision(d, f"decisions[{n}]")
        key = (d["image_uri"], d["instance"])
        if key in seen:
            raise ValueError(f"decisions[{n}]: a second decision for instance {d['instance']} of {d['image_uri']}")
        seen.add(key)
    return doc
