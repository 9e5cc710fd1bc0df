"""ntt-batch: training-free, reference-based instance segmentation at data-lake scale.

Implements "No Time to Train!" (arXiv 2507.02798) — SAM2 proposes masks from a point grid,
DINOv2 mask-pooled features are matched to class prototypes from a few reference instances.
See ``docs/`` and the shared ``method.md`` for the specification.

The Python API (see the README's "Python API" section and :mod:`ntt_batch.api`)::

    import ntt_batch
    seg = ntt_batch.load_segmenter("bank/", sam2="sam2_hiera_large")
    instances = seg("photo.jpg")        # [ntt_batch.Instance(mask, bbox, score, category_id, category_name)]

Names are imported on first use, so ``import ntt_batch`` stays cheap (no torch, no Ray).
"""

from ._public import PUBLIC_NAMES
from ._version import __version__ as __version__

__all__ = list(PUBLIC_NAMES)


def __getattr__(name: str):
    if name in __all__:
        from . import api

        value = getattr(api, name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
