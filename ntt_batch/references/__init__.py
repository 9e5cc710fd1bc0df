"""Reference sets (method.md §1): which annotated instances describe each class.

One module per concern; import from the module that holds the name (no re-exports here):

* :mod:`.files` — the ``references.json`` format: ``REFERENCES_FILE``, ``REFERENCES_FORMAT``,
  ``REFERENCES_VERSION``, :func:`~.files.validate_references`, :func:`~.files.save_references`,
  :func:`~.files.load_references`, :func:`~.files.merge_references`, and where a reference's image
  lives (:func:`~.files.reference_image_root`, :func:`~.files.resolve_image_root`).
* :mod:`.coco` — COCO annotation files: :func:`~.coco.load_coco`, class splits
  (:data:`~.coco.FEW_SHOT_CLASS_NAMES`, :func:`~.coco.resolve_categories`), annotation → reference
  entry, :func:`~.coco.coco_annotation_problem`.
* :mod:`.preferences` — :class:`~.preferences.ReferencePreference`, the optional preference for
  large, centred references (off by default), and its per-class filter.
* :mod:`.sampler` — the authors' K-shot sampler, reproduced exactly:
  :func:`~.sampler.sample_references`, :func:`~.sampler.sample_references_from_file`,
  :func:`~.sampler.is_valid_reference`.
* :mod:`.importers` — custom reference sets: :func:`~.importers.references_from_coco_annotations`
  (every annotation of a user's COCO file) and :func:`~.importers.references_from_csv` (CSV rows of
  PNG masks and/or boxes).

Imports flow ``files`` → ``coco`` → ``preferences`` → ``sampler`` → ``importers`` (each only from
those before it); no torch anywhere in the package.
"""
