"""Corrections back in (``ntt-batch corrections``): a review of a job output → gold labels,
negative and positive references, and thresholds refit on the reviewed images.

See :mod:`ntt_batch.corrections.core` for the outputs and what each input means, and
``docs/labeling_loop.md`` for the loop run → review → corrections → rerun.
"""

from .core import apply_corrections
from .report import CorrectionsReport, format_report, format_summary, format_table

__all__ = ["CorrectionsReport", "apply_corrections", "format_report", "format_summary", "format_table"]
