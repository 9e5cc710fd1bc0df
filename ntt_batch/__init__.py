"""ntt-batch: training-free, reference-based instance segmentation at data-lake scale.

Implements "No Time to Train!" (arXiv 2507.02798) — SAM2 proposes masks from a point grid,
DINOv2 mask-pooled features are matched to class prototypes from a few reference instances.
See ``docs/`` and the shared ``method.md`` for the specification.
"""

__version__ = "0.1.0"
