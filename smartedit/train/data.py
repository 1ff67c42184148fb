"""The training data stream: which samples make micro-batch ``k`` of process ``r``, as a pure function of position.

With ``B`` = micro batch size and ``W`` = processes, micro-batch ``k`` of process ``r`` holds the global draws
``(k·W + r)·B + j`` for ``j < B``; draw ``g`` is draw ``g mod E`` of epoch ``g div E`` of the
:class:`~smartedit.data.mixture.MixtureDataset` (``E`` = samples per epoch), and the collator's own random choices
use the key ``(seed, epoch, index)``. Optimizer step ``s`` consumes micro-batches ``s·A … s·A + A − 1``
(``A`` = accumulation steps), so the data position of a checkpoint is just its step: a resumed run rebuilds the
loader from ``k = s·A`` and sees exactly the samples, in exactly the order, that the uninterrupted run saw.
Processes never share a draw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..data.collate import SampleCollator
from ..data.mixture import MixtureDataset
from ..data.schema import Sample

__all__ = ["StepBatches", "build_loader"]


class StepBatches(torch.utils.data.Dataset):
    """``batches[k]`` → the collated micro-batch ``k`` of one process (with ``micro_index`` = k)."""

    def __init__(self, sources: Mapping[str, Sequence[Sample]], ratios: Mapping[str, float], collator: SampleCollator,
                 micro_batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 samples_per_epoch: int | None = None):
        self.mixture = MixtureDataset(sources, ratios, seed=seed, samples_per_epoch=samples_per_epoch)
        self.collator = collator
        self.micro_batch_size = int(micro_batch_size)
        self.rank = int(rank)
        self.world_size = int(world_size)

    @property
    def samples_per_epoch(self) -> int:
        return len(self.mixture)

    def draw_indices(self, k: int) -> list[int]:
        """Global draw numbers of micro-batch ``k`` of this process."""
        first = (k * self.world_size + self.rank) * self.micro_batch_size
        return list(range(first, first + self.micro_batch_size))

    def draw(self, k: int) -> tuple[list[Sample], list[tuple[int, int, int]]]:
        spe = self.samples_per_epoch
        samples, keys = [], []
        for g in self.draw_indices(k):
            sample, key = self.mixture.draw(g // spe, g % spe)
            samples.append(sample)
            keys.append(key)
        return samples, keys

    def __len__(self) -> int:
        return 1 << 62

    def __getitem__(self, k: int) -> dict:
        samples, keys = self.draw(k)
        batch = self.collator(samples, keys)
        batch["micro_index"] = k
        batch["epoch"] = (self.draw_indices(k)[0]) // self.samples_per_epoch
        return batch


def build_loader(batches: StepBatches, start: int, stop: int, num_workers: int = 0, prefetch_factor: int = 2,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A loader over micro-batches ``start … stop − 1`` (in order). It has its own generator, so creating it does
    not consume the global torch random state (which is part of the checkpoint)."""
    kwargs = {}
    if num_workers > 0:
        kwargs.update(prefetch_factor=prefetch_factor, persistent_workers=False)
    return torch.utils.data.DataLoader(batches, batch_size=None, sampler=range(start, stop), num_workers=num_workers,
                                       pin_memory=pin_memory, generator=torch.Generator().manual_seed(0), **kwargs)
