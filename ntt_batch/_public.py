"""The public Python API's names, listed once: ``ntt_batch`` (lazily) and ``ntt_batch.api`` export these."""

PUBLIC_NAMES = (
    "Instance",
    "Segmenter",
    "sample_references",
    "references_from_coco",
    "references_from_csv",
    "load_references",
    "save_references",
    "build_bank",
    "mine_negatives",
    "load_bank",
    "load_segmenter",
    "show_references",
    "run",
    "review",
    "evaluate",
)
