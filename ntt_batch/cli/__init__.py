"""`ntt-batch` command line: one module per command group; each command parses its flags and calls
one function of the library (the entry point ``ntt-batch = "ntt_batch.cli:main"``).

Typical flow (see README):

    ntt-batch checkpoints random --model sam2.1_hiera_tiny dinov2_vits14 --out ckpt/   # smoke runs only
    ntt-batch references sample --annotations instances_train2017.json --split few_shot --shots 10 \\
        --seed 33 --out refs.json
    ntt-batch memory build --references refs.json --image-root train2017/ --encoder dinov2_vitl14 --out bank/
    ntt-batch segment --memory bank/ --annotations instances_val2017.json --image-root val2017/ --out results.json

Modules: ``app`` (the root group, aliases, failures → exit codes via ``errors``), ``options``
(shared flags) and ``settings_options`` (flags generated from the settings dataclasses), then the
command groups: ``checkpoints``, ``references``, ``memory``, ``segment``, ``run`` (run, verify,
compact, config check), ``export`` (formerly ``merge``), ``publish``, ``evaluate`` (eval, thresholds),
``review`` (review, visualize), ``corrections``, ``demo``, ``bench``.
"""

from __future__ import annotations

import sys

from . import (  # noqa: F401  (each module registers its commands)
    bench,
    checkpoints,
    corrections,
    demo,
    evaluate,
    export,
    memory,
    publish,
    references,
    review,
    run,
    segment,
)
from .app import main
from .options import SEGMENTER_FLAGS, segmenter_config_from_flags

__all__ = ["SEGMENTER_FLAGS", "main", "segmenter_config_from_flags"]

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
