"""Registries of the extension points, and third-party plug-ins through Python entry points.

Each extension point has one :class:`Registry`, next to the interface its entries implement:

=======================================  ==============================  =============================
registry                                 entry point group               an entry is
=======================================  ==============================  =============================
``ntt_batch.models.registry.ENCODERS``   ``ntt_batch.encoders``          an ``EncoderFamily``
``ntt_batch.models.registry.PROPOSERS``  ``ntt_batch.proposers``         a ``ProposerFamily``
``ntt_batch.method.mergers.MERGERS``     ``ntt_batch.mergers``           a factory ``config → Merger``
``ntt_batch.exports.WRITERS``            ``ntt_batch.writers``           a ``Writer`` class
``ntt_batch.sources.SOURCES``            ``ntt_batch.sources``           a ``Source`` class
=======================================  ==============================  =============================

A registry is the single list its extension point has: the command line's choices and help, the
settings' validation and the code that builds the chosen implementation all read it. It holds
objects (classes, factories, family records), never import strings; the built-in entries are
registered in the module that defines the registry, each with one ``register`` call.

Third-party packages add entries without touching this package, the way pytest or Ray Data do:
an entry point in the group above whose name is the entry's name and whose object is the entry,
e.g. in the plug-in's ``pyproject.toml``::

    [project.entry-points."ntt_batch.writers"]
    my-format = "my_package.writer:MyWriter"

A registry reads its group once, on its first lookup or listing (never at import), and loads every
plug-in of the group then. A plug-in that fails to load, or that reuses a built-in name, is skipped
with a :class:`PluginWarning` naming its distribution; the rest keep working.

This module imports only the standard library, so every layer may import it.
"""

from __future__ import annotations

import importlib.metadata
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

__all__ = ["PluginWarning", "Registry", "UnknownEntryError"]


class PluginWarning(UserWarning):
    """A third-party plug-in was skipped (it failed to load, or it reuses a taken name)."""


class UnknownEntryError(KeyError, ValueError):
    """A name no entry of a registry has; the message lists the known names.

    A ``KeyError`` (a registry is a mapping) and a ``ValueError`` (a bad value from the user)."""

    def __str__(self) -> str:  # KeyError would show the message quoted
        return str(self.args[0]) if self.args else ""


def _distribution_name(ep: importlib.metadata.EntryPoint) -> str:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "an unknown distribution"
    return f"{dist.metadata['Name'] or '?'} {dist.version}"


class Registry(Generic[T]):
    """Names → entries of one extension point: the built-ins, then the plug-ins of ``group``.

    Args:
        group: the entry point group plug-ins register under (``ntt_batch.writers``).
        what: what an entry is, for messages ("export format", "merger").
        check: called as ``check(name, entry)`` for every entry, built-in or plug-in; raises
            (TypeError/ValueError) when the entry does not implement the interface. A plug-in
            that fails it is skipped with a warning.
    """

    def __init__(self, group: str, what: str, *, check: Callable[[str, T], None] | None = None) -> None:
        self.group = group
        self.what = what
        self._check = check
        self._entries: dict[str, T] = {}
        self._origin: dict[str, str] = {}  # name -> "built-in" or the plug-in's distribution
        self._plugins_loaded = False
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ registering

    def register(self, name: str, entry: T, *, origin: str = "built-in") -> T:
        """Add ``entry`` under ``name`` and return it. A name can be registered once."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.what} name must be a non-empty string, got {name!r}")
        with self._lock:
            if name in self._entries:
                raise ValueError(
                    f"{self.what} {name!r} is already registered (by {self._origin[name]}); pick another name"
                )
            if self._check is not None:
                self._check(name, entry)
            self._entries[name] = entry
            self._origin[name] = origin
        return entry

    def load_plugins(self) -> None:
        """Load the plug-ins of :attr:`group` (once; later calls do nothing)."""
        with self._lock:
            if self._plugins_loaded:
                return
            self._plugins_loaded = True
            for ep in _entry_points(self.group):
                dist = _distribution_name(ep)
                if ep.name in self._entries:
                    warnings.warn(
                        f"ntt-batch plug-in {ep.name!r} ({self.group}) from {dist} is skipped: the name is taken "
                        f"({self._origin[ep.name]})",
                        PluginWarning,
                        stacklevel=2,
                    )
                    continue
                try:
                    self.register(ep.name, ep.load(), origin=f"the plug-in distribution {dist}")
                except Exception as e:  # noqa: BLE001 - a broken plug-in must not take the others down
                    warnings.warn(
                        f"ntt-batch plug-in {ep.name!r} ({self.group}, {ep.value}) from {dist} is skipped: "
                        f"{type(e).__name__}: {e}",
                        PluginWarning,
                        stacklevel=2,
                    )

    # ------------------------------------------------------------------ reading

    def get(self, name: str) -> T:
        """The entry ``name``; an unknown name is an :class:`UnknownEntryError` listing the known ones."""
        self.load_plugins()
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(map(repr, self._entries)) or "none"
            raise UnknownEntryError(f"unknown {self.what} {name!r}; known: {known}") from None

    __getitem__ = get

    def names(self) -> tuple[str, ...]:
        """Every entry's name: the built-ins in registration order, then the plug-ins."""
        self.load_plugins()
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        self.load_plugins()
        return list(self._entries.items())

    def values(self) -> list[T]:
        self.load_plugins()
        return list(self._entries.values())

    def origin(self, name: str) -> str:
        """Who registered ``name``: "built-in" or "the plug-in distribution <name> <version>"."""
        self.get(name)
        return self._origin[name]

    def __contains__(self, name: object) -> bool:
        self.load_plugins()
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def __repr__(self) -> str:
        state = ", ".join(self._entries) if self._plugins_loaded else ", ".join(self._entries) + ", plug-ins not read"
        return f"<Registry {self.group}: {state}>"


def _entry_points(group: str) -> list[importlib.metadata.EntryPoint]:
    """The installed entry points of ``group``, in ``sys.path`` order (a name taken twice: the first
    one is registered, the other skipped with a warning)."""
    return list(importlib.metadata.entry_points(group=group))
