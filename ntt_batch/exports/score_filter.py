"""Per-class score thresholds: one global value, or a map ``{class name or id: threshold}``.

A thresholds map is a YAML or JSON file (or a dict) such as::

    default: 0.5        # classes not listed; leave out (or null) to keep all of them
    dog: 0.62           # by class name (case-sensitive first, then case-insensitive)
    cat: 0.41
    3: 0.7              # by category id (an int key, or a string of digits)

``ntt-batch thresholds`` writes such a file (tuned on a small labelled set); ``export`` (every
format), ``visualize`` and ``review`` read it through ``--thresholds`` (a number or a path;
``--score-threshold`` is its old name).

An instance is kept when ``score >= threshold``. A class whose threshold is ``None`` (no entry
and no ``default``) keeps everything. Lookup order for one instance: its class name exactly,
then its name case-insensitively, then its id, then ``default``. Map keys that match none of the
classes seen are reported once each (a warning), since a typo there silently keeps everything.

Usage::

    from .score_filter import ScoreThresholds

    th = ScoreThresholds.load("thresholds.yaml")      # or a dict, a float, or None
    th.keep(category_id=1, category_name="dog", score=0.7)   # -> bool
    th.threshold(1, "dog")                                    # -> float | None
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_KEY = "default"

__all__ = ["DEFAULT_KEY", "ScoreThresholds"]


def _check_value(key: Any, value: Any, where: str) -> float | None:
    """A threshold value as float in [0, 1] (or None); ValueError naming the class and the value."""
    if value is None:
        return None
    label = "default" if key == DEFAULT_KEY else f"class {key!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(
            f"{where}: threshold for {label} must be a number in [0, 1], got {value!r} ({type(value).__name__})"
        )
    v = float(value)
    if math.isnan(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{where}: threshold for {label} must be a number in [0, 1], got {value!r}")
    return v


class ScoreThresholds:
    """Per-class score thresholds with a default. Immutable once built; cheap to query.

    Build with :meth:`load` (file, dict, float or None). ``by_name``/``by_id`` hold the per-class
    entries; ``default`` applies to classes without one (None = keep all).
    """

    def __init__(
        self,
        by_name: Mapping[str, float | None] | None = None,
        by_id: Mapping[int, float | None] | None = None,
        default: float | None = None,
        source: str | None = None,
    ) -> None:
        where = source or "score thresholds"
        self.source = source
        self.default = _check_value(DEFAULT_KEY, default, where)
        self.by_name: dict[str, float | None] = {str(k): _check_value(k, v, where) for k, v in (by_name or {}).items()}
        self.by_id: dict[int, float | None] = {int(k): _check_value(k, v, where) for k, v in (by_id or {}).items()}
        lowered: dict[str, str] = {}
        for name in self.by_name:
            low = name.casefold()
            if low in lowered and self.by_name[lowered[low]] != self.by_name[name]:
                log.warning(
                    "%s: class names %r and %r differ only in case and have different thresholds; "
                    "each matches its exact spelling, other spellings use %r",
                    where,
                    lowered[low],
                    name,
                    lowered[low],
                )
            lowered.setdefault(low, name)
        self._lower = lowered
        self._used: set[Any] = set()
        self._warned = False

    # ------------------------------------------------------------------ construction

    @classmethod
    def load(cls, source: str | os.PathLike | Mapping | float | ScoreThresholds | None) -> ScoreThresholds:
        """Thresholds from a YAML/JSON file path, a dict, one number (global), or None (keep all).

        A string that parses as a number is taken as a global threshold (so a CLI flag can take
        ``0.5`` or ``thresholds.yaml``). Files may be local paths or fsspec URIs.
        Raises ValueError for invalid values (NaN, outside [0, 1], non-numbers), naming the class.
        """
        if source is None:
            return cls()
        if isinstance(source, ScoreThresholds):
            return source
        if isinstance(source, bool):
            raise ValueError(f"score threshold must be a number in [0, 1] or a thresholds file, got {source!r}")
        if isinstance(source, (int, float)):
            return cls(default=_check_value(DEFAULT_KEY, source, "score threshold"), source=repr(source))
        if isinstance(source, Mapping):
            return cls._from_mapping(source, "score thresholds map")
        if isinstance(source, (str, os.PathLike)):
            text = os.fspath(source).strip()
            try:
                number = float(text)
            except ValueError:
                number = None
            if number is not None:
                return cls(default=_check_value(DEFAULT_KEY, number, "score threshold"), source=text)
            return cls._from_file(text)
        raise ValueError(
            f"score thresholds: expected a number, a YAML/JSON file or a mapping, got {type(source).__name__}"
        )

    @classmethod
    def _from_file(cls, path: str) -> ScoreThresholds:
        from ..storage.fs import (
            filesystem,  # local import: keeps this module importable on its own
        )

        fs, p = filesystem(path)
        if not fs.isfile(p):
            raise FileNotFoundError(
                f"score thresholds file {path!r} does not exist (give a number in [0, 1] "
                "or a YAML/JSON file of {class: threshold, default: t})"
            )
        with fs.open(p, "rb") as f:
            text = f.read().decode("utf-8")
        if path.lower().endswith(".json"):
            try:
                data = json.loads(text)
            except ValueError as e:
                raise ValueError(f"score thresholds file {path!r} is not valid JSON: {e}") from None
        else:
            import yaml

            try:
                data = yaml.safe_load(text)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                at = f" (line {mark.line + 1})" if mark is not None else ""
                raise ValueError(f"score thresholds file {path!r} is not valid YAML/JSON{at}") from None
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ValueError(
                f"score thresholds file {path!r} must hold a mapping {{class: threshold, default: t}}, "
                f"got {type(data).__name__}"
            )
        return cls._from_mapping(data, f"score thresholds file {path!r}")

    @classmethod
    def _from_mapping(cls, data: Mapping, where: str) -> ScoreThresholds:
        by_name: dict[str, Any] = {}
        by_id: dict[int, Any] = {}
        default = None
        for key, value in data.items():
            if key == DEFAULT_KEY:
                default = _check_value(key, value, where)
            elif isinstance(key, bool):
                raise ValueError(f"{where}: class key {key!r} is neither a class name nor an id")
            elif isinstance(key, int):
                by_id[key] = _check_value(key, value, where)
            elif isinstance(key, str) and key.strip().lstrip("-").isdigit():
                by_id[int(key)] = _check_value(key, value, where)
            elif isinstance(key, str) and key:
                by_name[key] = _check_value(key, value, where)
            else:
                raise ValueError(f"{where}: class key {key!r} is neither a class name nor an id")
        return cls(by_name, by_id, default, source=where)

    # ------------------------------------------------------------------ queries

    def threshold(self, category_id: int, category_name: str | None = None) -> float | None:
        """The threshold applying to this class (None = keep every score)."""
        if category_name is not None:
            name = str(category_name)
            if name in self.by_name:
                self._used.add(("n", name))
                return self.by_name[name]
            low = self._lower.get(name.casefold())
            if low is not None:
                self._used.add(("n", low))
                return self.by_name[low]
        if category_id is not None and int(category_id) in self.by_id:
            self._used.add(("i", int(category_id)))
            return self.by_id[int(category_id)]
        return self.default

    def keep(self, category_id: int, category_name: str | None, score: float) -> bool:
        """True when ``score >= threshold`` for this class (always True without a threshold)."""
        t = self.threshold(category_id, category_name)
        return t is None or float(score) >= t

    @property
    def is_empty(self) -> bool:
        """True when nothing is filtered (no default, no per-class entry)."""
        return self.default is None and not any(v is not None for v in (*self.by_name.values(), *self.by_id.values()))

    @property
    def is_global(self) -> bool:
        """True when one value applies to every class (no per-class entries)."""
        return not self.by_name and not self.by_id

    def warn_unknown(self, categories: Iterable[tuple[int, str | None]] | None = None) -> list[str]:
        """Warn (once per object) about map keys that match no known class; returns those keys.

        ``categories``: the (id, name) pairs of the data (e.g. the bank's categories). Without it,
        keys never used by :meth:`threshold`/:meth:`keep` so far are reported.
        """
        if categories is not None:
            ids = {int(c) for c, _ in categories}
            names = {str(n) for _, n in categories if n is not None}
            lows = {n.casefold() for n in names}
            unknown = [k for k in self.by_name if k not in names and k.casefold() not in lows]
            unknown += [str(k) for k in self.by_id if k not in ids]
        else:
            unknown = [k for k in self.by_name if ("n", k) not in self._used]
            unknown += [str(k) for k in self.by_id if ("i", k) not in self._used]
        if unknown and not self._warned:
            self._warned = True
            log.warning(
                "%s: %d class(es) match no class in the data and are ignored: %s",
                self.source or "score thresholds",
                len(unknown),
                ", ".join(unknown),
            )
        return unknown

    # ------------------------------------------------------------------ output

    def to_dict(self) -> dict:
        """The map as written to YAML/JSON (``default`` first when set; names, then ids)."""
        out: dict[Any, float | None] = {}
        if self.default is not None:
            out[DEFAULT_KEY] = self.default
        out.update(self.by_name)
        out.update({k: v for k, v in sorted(self.by_id.items())})
        return out

    def describe(self) -> str:
        """Short human-readable summary (for logs and the dataset's ``info``)."""
        if self.is_global:
            return "none" if self.default is None else f"{self.default:g}"
        parts = [f"{k}={v:g}" if v is not None else f"{k}=keep all" for k, v in self.to_dict().items()]
        return ", ".join(parts)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ScoreThresholds) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"ScoreThresholds({self.to_dict()!r})"
