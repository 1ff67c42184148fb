"""Training data: the machinery here, the dataset readers in :mod:`smartedit.data.datasets`.

This package holds what every dataset shares: the sample schema (:mod:`~smartedit.data.schema`), validation
and skip-and-report (:mod:`~smartedit.data.validate`, :mod:`~smartedit.data.check`), sharded parquet I/O
(:mod:`~smartedit.data.io`), the recipe registry and conversion runner (:mod:`~smartedit.data.recipes`), the
mixture, loader and collator (:mod:`~smartedit.data.mixture`, :mod:`~smartedit.data.mixture_config`,
:mod:`~smartedit.data.loader`, :mod:`~smartedit.data.collate`) and the ``smartedit data`` command
(:mod:`~smartedit.data.cli`, :mod:`~smartedit.data.stats`, :mod:`~smartedit.data.preview`).
:mod:`smartedit.data.datasets` holds one reader per public dataset (and the helpers only readers use).
"""
