"""Loading the mixture for training: converted sources, an exactly resumable sampler and the batch collate.

The sampler yields ``(epoch, index)`` draw keys and :class:`DrawDataset` passes them to
:meth:`MixtureDataset.draw`, so every DataLoader worker computes draw ``index`` of ``epoch`` from (seed, epoch,
index) alone: no epoch state has to reach the workers, and a run resumed at draw ``k`` (``start=k``) yields
exactly the batches the uninterrupted run would have yielded from there.

A data root holds one sub-folder of shards per source, named like the mixture's sources::

    DATA/ip2p/*.parquet  DATA/magicbrush/*.parquet  DATA/refcoco/*.parquet …
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence

import torch

from .io import ParquetSampleDataset
from .mixture import MixtureDataset
from .mixture_config import MixtureConfig
from .validate import LayoutError

logger = logging.getLogger(__name__)

__all__ = ["open_sources", "DrawSampler", "DrawDataset", "PairCollate", "mixture_loader", "open_mixture"]


def open_sources(root: str | os.PathLike, names: Sequence[str] | None = None) -> dict[str, ParquetSampleDataset]:
    """``{name: ParquetSampleDataset}`` for the sub-folders of ``root`` that hold shards (only ``names`` if given;
    a named source without shards is a :class:`LayoutError`)."""
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
    return {name: ParquetSampleDataset(path) for name, path in found.items()}


def open_mixture(root: str | os.PathLike, config: MixtureConfig | None = None,
                 allow_missing: bool = False) -> MixtureDataset:
    """The mixture of the sources under ``root`` with ``config`` (default: stage-2 defaults)."""
    config = config or MixtureConfig()
    sources = open_sources(root)
    config = config.restricted(list(sources), allow_missing=allow_missing)
    return config.build({n: s for n, s in sources.items() if config.ratios.get(n, 0) > 0})


class DrawSampler(torch.utils.data.Sampler):
    """Yields the draw keys ``(epoch, index)`` for ``index`` in ``[start, num_samples)``."""

    def __init__(self, num_samples: int, epoch: int = 0, start: int = 0):
        if not 0 <= start <= num_samples:
            raise ValueError(f"start ({start}) must lie in [0, num_samples={num_samples}]")
        self.num_samples, self.epoch, self.start = int(num_samples), int(epoch), int(start)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in range(self.start, self.num_samples))

    def __len__(self) -> int:
        return self.num_samples - self.start


class DrawDataset(torch.utils.data.Dataset):
    """``ds[(epoch, index)]`` → ``mixture.draw(epoch, index)`` (``ds[index]`` uses epoch 0)."""

    def __init__(self, mixture: MixtureDataset):
        self.mixture = mixture

    def __len__(self) -> int:
        return len(self.mixture)

    def __getitem__(self, key):
        epoch, index = key if isinstance(key, tuple) else (0, key)
        return self.mixture.draw(int(epoch), int(index))


class PairCollate:
    """DataLoader ``collate_fn``: ``[(Sample, key), …]`` → ``collator(samples, keys)`` (picklable for workers)."""

    def __init__(self, collator):
        self.collator = collator

    def __call__(self, pairs):
        samples, keys = zip(*pairs)
        return self.collator(list(samples), list(keys))


def mixture_loader(mixture: MixtureDataset, collator, batch_size: int, epoch: int = 0, start: int = 0,
                   num_workers: int = 0, drop_last: bool = False, **kwargs) -> torch.utils.data.DataLoader:
    """DataLoader over draws ``start …`` of ``epoch``; resume after ``b`` batches with ``start = b * batch_size``."""
    if num_workers > 0:
        kwargs.setdefault("persistent_workers", False)
    return torch.utils.data.DataLoader(DrawDataset(mixture), batch_size=batch_size,
                                       sampler=DrawSampler(len(mixture), epoch, start),
                                       collate_fn=PairCollate(collator), num_workers=num_workers,
                                       drop_last=drop_last, **kwargs)


def source_sizes(sources: Mapping[str, Sequence]) -> dict[str, int]:
    return {n: len(s) for n, s in sources.items()}
