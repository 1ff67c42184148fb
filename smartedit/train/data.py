"""The training data stream: which samples make micro-batch ``k`` of process ``r``, as a pure function of position.

With ``B`` = micro batch size and ``W`` = processes, micro-batch ``k`` of process ``r`` holds the global draws
``(k·W + r)·B + j`` for ``j < B``; draw ``g`` is draw ``g mod E`` of epoch ``g div E`` of the
:class:`~smartedit.data.mixture.MixtureDataset` (``E`` = samples per epoch), and the collator's own random choices
use the key ``(seed, epoch, index)``. Optimizer step ``s`` consumes micro-batches ``s·A … s·A + A − 1``
(``A`` = accumulation steps), so the data position of a checkpoint is just its step: a resumed run rebuilds the
loader from ``k = s·A`` and sees exactly the samples, in exactly the order, that the uninterrupted run saw.
Processes never share a draw.

A row that cannot be read or encoded (a corrupt or over-budget image, a malformed sample, an unreadable shard) is
skipped: draw ``g`` then takes replacement attempt 1, 2, … of the same key
(:meth:`~smartedit.data.mixture.MixtureDataset.choose`), so the replacement, too, is a pure function of the position
and resume stays exact. Each skip travels with its batch (``batch["skipped"]``: source, shard, row, sample id,
reason) for the trainer to count, log and hold against ``data.max_skipped_fraction``; :class:`BadDataError` ends
the run when :data:`MAX_ATTEMPTS` draws in a row are bad.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from ..data.collate import SampleCollator
from ..data.mixture import MixtureDataset
from ..data.schema import Sample

__all__ = ["StepBatches", "build_loader", "BadDataError", "MAX_ATTEMPTS"]

MAX_ATTEMPTS = 16
"""Bad draws in a row (the draw and its replacements) that end the run: the data is broken, not a row."""


class BadDataError(ValueError):
    """The training data is too broken to go on (too many bad rows); the message names examples."""


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
        skipped: list[dict] = []
        batch = self.collator.collate([self.encode_draw(g, skipped) for g in self.draw_indices(k)])
        batch["micro_index"] = k
        batch["epoch"] = (self.draw_indices(k)[0]) // self.samples_per_epoch
        batch["skipped"] = skipped
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
