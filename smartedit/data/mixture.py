"""Deterministic mixture of datasets, sampled with replacement.

Draw ``index`` of ``epoch`` picks a source with probability proportional to its ratio and then one of that
source's samples uniformly, both from ``sample_rng(seed, epoch, index, stream=0)`` (``numpy.random.default_rng([seed, epoch, index, 0])``): the sequence is a pure
function of (seed, epoch, index), so a run resumed at draw k continues with exactly the same samples.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .collate import sample_rng
from .schema import Sample

logger = logging.getLogger(__name__)


class MixtureDataset(torch.utils.data.Dataset):
    """``dataset[i]`` → ``(Sample, key)`` for draw ``i`` of ``epoch`` (set with :meth:`set_epoch`);
    ``key = (seed, epoch, i)`` is what the collator uses for its own random choices."""

    def __init__(self, sources: Mapping[str, Sequence[Sample]], ratios: Mapping[str, float], seed: int = 0,
                 samples_per_epoch: int | None = None):
        problems = []
        unknown = sorted(set(ratios) - set(sources))
        if unknown:
            problems.append(f"ratios name sources that were not given: {unknown}")
        for name, r in ratios.items():
            if not isinstance(r, (int, float)) or r < 0:
                problems.append(f"ratio of {name!r} must be a number >= 0, got {r!r}")
        active = [n for n in sources if ratios.get(n, 0) > 0]
        for n in active:
            if len(sources[n]) == 0:
                problems.append(f"source {n!r} has a positive ratio but no samples")
        if not active and not problems:
            problems.append("no source has a positive ratio")
        if problems:
            raise ValueError("invalid data mixture:\n  " + "\n  ".join(problems))
        self.sources = {n: sources[n] for n in active}
        self.names = active
        weights = np.array([float(ratios[n]) for n in active])
        self.probs = weights / weights.sum()
        self.cumulative = np.cumsum(self.probs)
        self.seed = int(seed)
        self.epoch = 0
        self.samples_per_epoch = samples_per_epoch or sum(len(s) for s in self.sources.values())

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.samples_per_epoch

    def choose(self, epoch: int, index: int, attempt: int = 0) -> tuple[str, int]:
        """(source name, sample index within it) of draw ``index`` in ``epoch``. ``attempt`` > 0: the replacement
        draw taken when the sample of attempt ``attempt - 1`` is unreadable (a pure function of the same key)."""
        rng = sample_rng(self.seed, epoch, index) if attempt == 0 else \
            np.random.default_rng([self.seed, int(epoch), int(index), 0, int(attempt)])
        u = rng.random()
        k = min(int(np.searchsorted(self.cumulative, u, side="right")), len(self.names) - 1)
        name = self.names[k]
        return name, int(rng.integers(len(self.sources[name])))

    def draw(self, epoch: int, index: int) -> tuple[Sample, tuple[int, int, int]]:
        name, i = self.choose(epoch, index)
        return self.sources[name][i], (self.seed, epoch, index)

    def __getitem__(self, index: int) -> tuple[Sample, tuple[int, int, int]]:
        return self.draw(self.epoch, index)
