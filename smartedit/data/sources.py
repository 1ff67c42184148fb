"""The one place that opens data sources: the sources of a :class:`~smartedit.data.mixture_config.DataConfig` as
``Sequence[Sample]`` (:func:`open_sources`), and the sources a data root holds (:func:`source_folders`).

A source spec is one of

* a folder of parquet shards in the uniform schema (what ``data_recipes`` writes; read with
  :class:`smartedit.data.io.ParquetSampleDataset`), a shard file, or a glob of shards;
* ``python:MODULE:FUNCTION`` — a function of no arguments returning a ``Sequence[Sample]`` (plug in any reader);
* ``KIND:...`` for any other registered source kind: :func:`register_source_kind` registers one in this process,
  and an installed package declares one through the ``smartedit.data_sources`` entry-point group (name = the kind,
  value = ``module:opener``), found the first time a spec of that kind is opened. This package declares ``shapes``
  (``shapes:FAMILY:N[:SEED]``, generated ShapesWorld samples, :mod:`smartedit.shapes.sources`): the tiny presets'
  data, for smoke runs, tests and benchmarks.

A source with a positive ratio and no spec of its own is read from ``data.root/<name>`` (the data-root layout of
docs/data.md); :func:`source_folders` lists the sub-folders of a root that hold shards. Relative paths are resolved
against ``base_dir``. The trainer also accepts ready
``Sequence[Sample]`` objects directly (``Trainer(config, sources={...})``).
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
from collections.abc import Callable, Sequence
from importlib.metadata import EntryPoint, distributions

from .schema import Sample
from .validate import LayoutError

logger = logging.getLogger(__name__)

__all__ = ["ENTRY_POINT_GROUP", "SourceOpener", "register_source_kind", "source_kinds", "open_source", "open_sources",
           "source_specs", "source_folders"]

ENTRY_POINT_GROUP = "smartedit.data_sources"
"""Entry-point group through which installed packages declare source kinds (name = kind, value = opener)."""

SourceOpener = Callable[[str, str], Sequence[Sample]]
"""``opener(spec, base_dir)`` → the samples of a ``KIND:...`` spec (the whole spec, kind included)."""

_KINDS: dict[str, SourceOpener] = {}


def register_source_kind(kind: str, opener: SourceOpener) -> None:
    """Make ``KIND:...`` specs open with ``opener(spec, base_dir)`` in this process (replaces an earlier opener)."""
    if not kind.isidentifier():
        raise ValueError(f"a source kind must be a plain name (letters, digits, _), got {kind!r}")
    _KINDS[kind] = opener


def _open_python(spec: str, base_dir: str) -> Sequence[Sample]:
    try:
        _, module, function = spec.split(":")
    except ValueError:
        raise ValueError(f"python source {spec!r} must look like python:MODULE:FUNCTION") from None
    return getattr(importlib.import_module(module), function)()


register_source_kind("python", _open_python)


@functools.cache
def _declared_kinds() -> dict[str, EntryPoint]:
    """The source kinds installed packages declare (entry points, not loaded yet). Every metadata copy on the path is
    read: ``entry_points()`` keeps only the first copy of each distribution, and a stale ``*.egg-info`` left in the
    working directory by an older build would hide the installed package's declarations."""
    found: dict[str, EntryPoint] = {}
    for dist in distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                found.setdefault(ep.name, ep)
    return found


def source_kinds() -> list[str]:
    """Every source kind a spec may use: registered in this process or declared by an installed package."""
    return sorted(set(_KINDS) | set(_declared_kinds()))


def _opener(kind: str) -> SourceOpener | None:
    if kind not in _KINDS:
        declared = _declared_kinds().get(kind)
        if declared is None:
            return None
        _KINDS[kind] = declared.load()
    return _KINDS[kind]


def open_source(spec: str, base_dir: str = ".") -> Sequence[Sample]:
    """One source spec (see the module docstring) → a sequence of samples."""
    kind, sep, _ = spec.partition(":")
    opener = _opener(kind) if sep and kind.isidentifier() else None
    if opener is not None:
        return opener(spec, base_dir)
    from .io import ParquetSampleDataset

    path = spec if os.path.isabs(spec) else os.path.join(base_dir, spec)
    if not os.path.exists(path) and not any(c in path for c in "*?["):
        kinds = ", ".join(f"{k}:..." for k in source_kinds())
        raise FileNotFoundError(f"data source {spec!r} not found (looked at {path!r}): give a folder of parquet "
                                f"shards written by data_recipes (docs/data.md) or a spec of a known source kind "
                                f"({kinds})")
    return ParquetSampleDataset(path)


def source_specs(data) -> dict[str, str]:
    """Spec of every source with a positive ratio in a :class:`~smartedit.data.mixture_config.DataConfig`."""
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


def source_folders(root: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, str]:
    """``{name: folder}`` for the sub-folders of a data root that hold shards (only ``names`` if given; a named
    source without shards is a :class:`~smartedit.data.validate.LayoutError`)."""
    root = str(root)
    if not os.path.isdir(root):
        raise LayoutError(f"{root} is not a folder: expected a data root with one sub-folder of *.parquet shards "
                          f"per source (ip2p/, magicbrush/, …)")
    found = {}
    for entry in sorted(os.listdir(root)):
        path = os.path.join(root, entry)
        if os.path.isdir(path) and any(f.endswith(".parquet") for _, _, fs in os.walk(path) for f in fs):
            found[entry] = path
    if names is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise LayoutError(f"{root} has no shards for source(s) {missing}: expected {root}/<source>/*.parquet "
                              f"(found sources: {sorted(found)})")
        found = {n: found[n] for n in names}
    if not found:
        raise LayoutError(f"no source folders with *.parquet shards in {root}: expected {root}/<source>/*.parquet")
    return found
