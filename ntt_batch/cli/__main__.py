"""``python -m ntt_batch.cli``: the same as the ``ntt-batch`` program."""

from . import main

main()
