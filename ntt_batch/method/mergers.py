"""The registry of mergers: the names the ``merger`` setting takes, and how each is built.

A merger (interface: :class:`ntt_batch.method.merging.Merger`) lowers the scores of overlapping
candidates of one class (method.md §4.7). :data:`MERGERS` maps each name to a *factory*: a callable
taking the ``SegmenterConfig`` (or any object with its fields) and returning the merger, e.g. a
merger class's ``from_config``. The built-ins import their torch code when built, so this module
(and the settings' validation and the command line's ``--merger`` choices, which read it) stays
torch-free.

Adding a merger: a class in its own module implementing ``Merger`` and one ``MERGERS.register``
line below; from a third-party package, an entry point in the group ``ntt_batch.mergers`` naming
the factory (``my-merger = "my_package.merger:MyMerger.from_config"``; ``docs/extending.md``).
Settings a new merger needs beyond ``merge_exponent`` are read from the config with ``getattr``
and a default (``SegmenterConfig`` has no free-form block).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..plugins import Registry

if TYPE_CHECKING:
    from .merging import Merger


def _check(name: str, factory: Any) -> None:
    if not callable(factory):
        raise TypeError(f"merger {name!r}: expected a callable config -> Merger, got {type(factory).__name__}")


#: Merger factories by name: the built-ins, then the ``ntt_batch.mergers`` plug-ins.
MERGERS: Registry[Callable[[Any], Merger]] = Registry("ntt_batch.mergers", "merger", check=_check)


def _soft(config: Any) -> Merger:
    from .merging import SoftMerger

    return SoftMerger.from_config(config)


def _graph_diffusion(config: Any) -> Merger:
    from .merging import GraphDiffusionMerger

    return GraphDiffusionMerger.from_config(config)


MERGERS.register("soft", _soft)  # the method's semantic-aware soft merging (§4.7), the default
MERGERS.register("graph-diffusion", _graph_diffusion)  # FSOD-VFM's graph-diffusion rescoring


def build_merger(config: Any) -> Merger:
    """The merger a ``SegmenterConfig``-like object asks for.

    Reads ``merger`` (a :data:`MERGERS` name; "soft" when the object has no such field); the
    factory reads the merger's own fields (``merge_exponent``; for graph diffusion
    ``graph_diffusion_alpha``, ``graph_diffusion_steps``, ``graph_diffusion_transition``), each
    defaulting to the merger's own default when absent.

    Raises:
        ValueError: unknown merger name (the message lists the known ones), or a bad parameter.
    """
    return MERGERS.get(getattr(config, "merger", "soft"))(config)


__all__ = ["MERGERS", "build_merger"]
