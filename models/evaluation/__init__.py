"""Labelled evaluation sets and the figures computed on them: what ``kefu eval`` prints and ``bench/`` reuses.

- :mod:`models.evaluation.datasets`: reads a labelled set (JSONL, the hand-off/intent TSV, the FAQ JSON of
  ``tests/data/faq/``) and FAQ files; a bad file is a :class:`~models.evaluation.datasets.DatasetError` naming
  the file, the line (or item) and the field.
- :mod:`models.evaluation.metrics`: pure arithmetic over decisions and labels (FAQ answered right / wrong /
  abstained at a threshold, hand-off precision and recall, percentiles).
"""
