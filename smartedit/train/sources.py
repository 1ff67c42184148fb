"""Open the data sources of an experiment config as ``Sequence[Sample]``.

A source spec is one of

* a folder of parquet shards in the uniform schema (what ``data_recipes`` writes; read with
  :class:`smartedit.data.io.ParquetSampleDataset`), a shard file, or a glob of shards;
* ``shapes:FAMILY:N[:SEED]`` — N generated ShapesWorld samples (:func:`smartedit.data.shapes.training_samples`;
  families ``simple``, ``perception``, ``understanding``, ``reasoning``, ``caption``, ``chat``): the tiny presets'
  data, for smoke runs, tests and benchmarks;
* ``python:MODULE:FUNCTION`` — a function of no arguments returning a ``Sequence[Sample]`` (plug in any reader).

A source with a positive ratio and no spec of its own is read from ``data.root/<name>`` (the data-root layout of
docs/data.md). Relative paths are resolved against ``base_dir``. The trainer also accepts ready
``Sequence[Sample]`` objects directly (``Trainer(config, sources={...})``).
"""

from __future__ import annotations

import importlib
import logging
import os
from collections.abc import Sequence

from ..data.schema import Sample

logger = logging.getLogger(__name__)

__all__ = ["open_source", "open_sources", "source_specs"]


def open_source(spec: str, base_dir: str = ".") -> Sequence[Sample]:
    """One source spec (see the module docstring) → a sequence of samples."""
    if spec.startswith("shapes:"):
        from ..data.shapes import training_samples

        parts = spec.split(":")
        if len(parts) not in (3, 4):
            raise ValueError(f"ShapesWorld source {spec!r} must look like shapes:FAMILY:N or shapes:FAMILY:N:SEED")
        seed = int(parts[3]) if len(parts) == 4 else 0
        return list(training_samples(parts[1], int(parts[2]), seed=seed))
    if spec.startswith("python:"):
        try:
            _, module, function = spec.split(":")
        except ValueError:
            raise ValueError(f"python source {spec!r} must look like python:MODULE:FUNCTION") from None
        return getattr(importlib.import_module(module), function)()
    from ..data.io import ParquetSampleDataset

    path = spec if os.path.isabs(spec) else os.path.join(base_dir, spec)
    if not os.path.exists(path) and not any(c in path for c in "*?["):
        raise FileNotFoundError(f"data source {spec!r} not found (looked at {path!r}): give a folder of parquet "
                                f"shards written by data_recipes (docs/data.md), shapes:FAMILY:N, or "
                                f"python:MODULE:FUNCTION")
    return ParquetSampleDataset(path)


def source_specs(data) -> dict[str, str]:
    """Spec of every source with a positive ratio in a :class:`~smartedit.train.config.DataConfig`."""
    specs = {}
    for name, ratio in data.ratios.items():
        if ratio > 0:
            spec = data.sources.get(name) or (os.path.join(data.root, name) if data.root else None)
            if spec is None:
                raise FileNotFoundError(f"data source {name!r} has ratio {ratio} but no path: set "
                                        f"data.sources.{name} or data.root (--data-root DIR)")
            specs[name] = spec
    return specs


def open_sources(data, base_dir: str = ".") -> dict[str, Sequence[Sample]]:
    """Open every source with a positive ratio (sources switched off are not even opened)."""
    out = {}
    for name, spec in source_specs(data).items():
        out[name] = open_source(spec, base_dir)
        logger.info("data source %s: %s (%d samples)", name, spec, len(out[name]))
    return out
