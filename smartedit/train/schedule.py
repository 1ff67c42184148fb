"""Learning-rate schedule: linear warm-up, then cosine decay (or constant), as a ``LambdaLR`` on the client optimizer.

The schedule is handed to ``deepspeed.initialize(lr_scheduler=...)``, so DeepSpeed steps it after every *applied*
optimizer step (a skipped non-finite step does not advance it) and saves / restores it with the checkpoint. The
DeepSpeed JSON must not hold its own ``scheduler`` block (the reference's ``WarmupLR`` block silently replaced the
cosine schedule it asked for); :func:`smartedit.train.engine.prepare_ds_config` rejects one.

Factor after ``s`` applied steps (warm-up ``w``, total ``T``, floor ``m``)::

    s < w:  (s + 1) / w                                  (the first step already trains, at lr / w)
    else:   m + (1 - m) · ½ · (1 + cos(π · (s - w) / max(1, T - w)))     (cosine; ``constant``: 1)
"""

from __future__ import annotations

import math

import torch

__all__ = ["lr_factor", "build_scheduler"]


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str = "cosine",
              min_lr_ratio: float = 0.0) -> float:
    """Multiplier of the base learning rate after ``step`` applied optimizer steps."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int,
                    schedule: str = "cosine", min_lr_ratio: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` applying :func:`lr_factor` to every parameter group of ``optimizer``."""
    def factor(step: int) -> float:
        return lr_factor(step, total_steps, warmup_steps, schedule, min_lr_ratio)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
