"""The one resumable training-data loader: converted sources, the mixture's draws as a pure function of position,
and the batch collate.

Every batch is a pure function of its position. With ``B`` = batch size and ``W`` = processes, batch ``k`` of
process ``r`` holds the global draws ``first + (k·W + r)·B + j`` for ``j < B``; draw ``g`` is draw ``g mod E`` of
epoch ``g div E`` of the :class:`~smartedit.data.mixture.MixtureDataset` (``E`` = samples per epoch), and the
collator's own random choices use the key ``(seed, epoch, index)``. No epoch state has to reach the DataLoader
workers, and a run resumed at batch ``k`` yields exactly the batches the uninterrupted run would have yielded from
there. The trainer (:class:`StepBatches`, :func:`build_loader`): optimizer step ``s`` consumes micro-batches
``s·A … s·A + A − 1`` (``A`` = accumulation steps), so the data position of a checkpoint is just its step.
Processes never share a draw. One epoch, one process (:func:`mixture_loader`): the draws ``start …`` of ``epoch``.

A row that cannot be read or encoded (a corrupt or over-budget image, a malformed sample, an unreadable shard) is
skipped when the collator is a :class:`~smartedit.data.collate.SampleCollator` (it has ``encode`` and ``collate``):
draw ``g`` then takes replacement attempt 1, 2, … of the same key
(:meth:`~smartedit.data.mixture.MixtureDataset.choose`), so the replacement, too, is a pure function of the position
and resume stays exact. Each skip travels with its batch (``batch["skipped"]``: source, shard, row, sample id,
reason) for the trainer to count, log and hold against ``data.max_skipped_fraction``; :class:`BadDataError` ends
the run when :data:`MAX_ATTEMPTS` draws in a row are bad. A plain callable collator ``collator(samples, keys)``
gets the first attempt of each draw, unchecked.

A data root holds one sub-folder of shards per source, named like the mixture's sources::

    DATA/ip2p/*.parquet  DATA/magicbrush/*.parquet  DATA/refcoco/*.parquet …
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Mapping, Sequence

import torch

from .mixture import MixtureDataset
from .mixture_config import DEFAULT_STAGE2_RATIOS, DataConfig
from .schema import Sample
from .sources import open_sources, source_folders

logger = logging.getLogger(__name__)

__all__ = ["open_mixture", "StepBatches", "build_loader", "mixture_loader", "BadDataError",
           "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 16
"""Bad draws in a row (the draw and its replacements) that end the run: the data is broken, not a row."""


class BadDataError(ValueError):
    """The training data is too broken to go on (too many bad rows); the message names examples."""


def open_mixture(root: str | os.PathLike, config: DataConfig | None = None, seed: int = 0,
                 allow_missing: bool = False) -> MixtureDataset:
    """The mixture of the sources under the data root ``root`` with ``config``'s ratios (default: the stage-2
    defaults) and ``seed``."""
    config = config or DataConfig(ratios=dict(DEFAULT_STAGE2_RATIOS))
    config = config.restricted(list(source_folders(root)), allow_missing=allow_missing)
    config = dataclasses.replace(config, root=os.fspath(root))
    return config.build(open_sources(config), seed=seed)


def _where(source: Sequence[Sample], index: int) -> tuple[str | None, int]:
    """(shard, row in shard) of a source's sample (parquet sources), else (None, index)."""
    locate = getattr(source, "locate", None)
    if locate is not None:
        try:
            return locate(index)
        except Exception:  # noqa: BLE001 - only for the report
            pass
    return None, int(index)


class StepBatches(torch.utils.data.Dataset):
    """``batches[k]`` → the collated micro-batch ``k`` of one process (with ``micro_index`` = k).

    ``first_draw`` is the global draw of batch 0's first sample; ``end_draw`` (exclusive), when given, cuts the
    last batches short there."""

    def __init__(self, sources: Mapping[str, Sequence[Sample]], ratios: Mapping[str, float], collator,
                 micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 samples_per_epoch: int | None = None):
        self.mixture = MixtureDataset(sources, ratios, seed=seed, samples_per_epoch=samples_per_epoch)
        self._setup(collator, micro_batch_size, rank, world_size)

    @classmethod
    def from_mixture(cls, mixture: MixtureDataset, collator, micro_batch_size: int, rank: int = 0,
                     world_size: int = 1, first_draw: int = 0, end_draw: int | None = None) -> "StepBatches":
        """The batches over an existing mixture (its seed, ratios and samples per epoch)."""
        self = cls.__new__(cls)
        self.mixture = mixture
        self._setup(collator, micro_batch_size, rank, world_size, first_draw, end_draw)
        return self

    def _setup(self, collator, micro_batch_size: int, rank: int, world_size: int, first_draw: int = 0,
               end_draw: int | None = None) -> None:
        self.collator = collator
        self.micro_batch_size = int(micro_batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.first_draw = int(first_draw)
        self.end_draw = None if end_draw is None else int(end_draw)

    @property
    def samples_per_epoch(self) -> int:
        return len(self.mixture)

    def draw_indices(self, k: int) -> list[int]:
        """Global draw numbers of micro-batch ``k`` of this process."""
        first = self.first_draw + (k * self.world_size + self.rank) * self.micro_batch_size
        stop = first + self.micro_batch_size
        if self.end_draw is not None:
            stop = min(stop, self.end_draw)
        return list(range(first, stop))

    def draw(self, k: int) -> tuple[list[Sample], list[tuple[int, int, int]]]:
        """The samples (first attempt of each draw, unchecked) and keys of micro-batch ``k``."""
        spe = self.samples_per_epoch
        samples, keys = [], []
        for g in self.draw_indices(k):
            sample, key = self.mixture.draw(g // spe, g % spe)
            samples.append(sample)
            keys.append(key)
        return samples, keys

    def encode_draw(self, g: int, skipped: list[dict]) -> dict:
        """Draw ``g`` encoded by the collator; unreadable samples are replaced (and appended to ``skipped``)."""
        epoch, index = divmod(g, self.samples_per_epoch)
        key = (self.mixture.seed, epoch, index)
        for attempt in range(MAX_ATTEMPTS):
            name, i = self.mixture.choose(epoch, index, attempt)
            source = self.mixture.sources[name]
            sample = None
            try:
                sample = source[i]
                return self.collator.encode(sample, key)
            except Exception as exc:  # noqa: BLE001 - any unreadable row is skipped, counted and reported
                shard, row = _where(source, i)
                reason = getattr(exc, "reason", None) or type(exc).__name__
                skipped.append({"draw": g, "attempt": attempt, "source": name, "index": int(i), "shard": shard,
                                "row": row, "id": getattr(sample, "id", None), "reason": reason,
                                "detail": str(exc)[:300]})
        examples = "; ".join(f"{s['shard'] or s['source']} row {s['row']} ({s['id']}): {s['detail']}"
                             for s in skipped[-3:])
        raise BadDataError(f"draw {g}: {MAX_ATTEMPTS} samples in a row were unreadable, the data is broken "
                           f"(e.g. {examples}); check it with `smartedit data validate`")

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, k: int) -> dict:
        if not hasattr(self.collator, "encode"):
            return self.collator(*self.draw(k))
        skipped: list[dict] = []
        batch = self.collator.collate([self.encode_draw(g, skipped) for g in self.draw_indices(k)])
        batch["micro_index"] = k
        batch["epoch"] = (self.draw_indices(k)[0]) // self.samples_per_epoch
        batch["skipped"] = skipped
        return batch


def build_loader(batches: StepBatches, start: int, stop: int, num_workers: int = 0, prefetch_factor: int | None = 2,
                 pin_memory: bool = False, **kwargs) -> torch.utils.data.DataLoader:
    """A loader over micro-batches ``start … stop − 1`` (in order). It has its own generator, so creating it does
    not consume the global torch random state (which is part of the checkpoint)."""
    if num_workers > 0:
        kwargs.setdefault("persistent_workers", False)
        kwargs["prefetch_factor"] = prefetch_factor
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                                       pin_memory=pin_memory, generator=torch.Generator().manual_seed(0), **kwargs)


def mixture_loader(mixture: MixtureDataset, collator, batch_size: int, epoch: int = 0, start: int = 0,
                   num_workers: int = 0, drop_last: bool = False, **kwargs) -> torch.utils.data.DataLoader:
    """The loader over draws ``start …`` of ``epoch`` in batches of ``batch_size`` (:class:`StepBatches` on one
    process); resume after ``b`` batches with ``start = b * batch_size``."""
    n = len(mixture)
    if not 0 <= start <= n:
        raise ValueError(f"start ({start}) must lie in [0, samples per epoch = {n}]")
    first = int(epoch) * n + int(start)
    batches = StepBatches.from_mixture(mixture, collator, batch_size, first_draw=first, end_draw=(int(epoch) + 1) * n)
    count = (n - start) // batch_size if drop_last else -(-(n - start) // batch_size)
    kwargs.setdefault("collate_fn", _as_is)
    return build_loader(batches, 0, count, num_workers=num_workers, **kwargs)


def _as_is(batch):
    """``collate_fn`` that hands the collator's batch over untouched (picklable for workers)."""
    return batch
