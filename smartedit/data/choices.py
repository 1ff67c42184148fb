"""Random choices of the data recipes: every one is a pure function of (seed, item index, sub-item).

Recipes draw from ``sample_rng(seed, 0, index, RECIPE_STREAM + sub)`` (see :func:`smartedit.data.collate.sample_rng`):
the streams are disjoint from the ones the mixture and the collator use at training time, and the same seed and
item give the same template, colour, sentence or absent class on every run, on every machine.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import numpy as np

from .collate import sample_rng

__all__ = ["RECIPE_STREAM", "recipe_rng", "pick"]

RECIPE_STREAM = 1000
T = TypeVar("T")


def recipe_rng(seed: int, index: int, sub: int = 0) -> np.random.Generator:
    """The generator of item ``index`` (``sub`` separates several samples made from one item)."""
    return sample_rng(seed, 0, index, RECIPE_STREAM + int(sub))


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    if not items:
        raise ValueError("nothing to pick from")
    return items[int(rng.integers(len(items)))]
