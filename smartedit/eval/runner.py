"""What the three benchmarks share: loading the requested backbones, the scoring loop, the run record.

The scoring loop turns every problem with one sample into that sample's status (a
:class:`~smartedit.eval.results.SampleProblem` keeps its status, anything unexpected becomes ``error`` with the
exception text) and goes on; it never stops the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .results import ERROR, SampleProblem, SampleResult

logger = logging.getLogger(__name__)

__all__ = ["Backbones", "EvalRun", "score_samples"]


@dataclass
class Backbones:
    """The metric backbones of one run; any of them may be None (its metrics are then skipped)."""

    clip: Any = None
    dino: Any = None
    lpips: Any = None
    skipped: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, *, clip: str | os.PathLike | None = None, dino: str | os.PathLike | None = None,
             lpips: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             wanted: tuple[str, ...] = ("clip", "dino", "lpips")) -> "Backbones":
        out = cls()
        if "clip" in wanted:
            if clip:
                from .clip_score import load_clip_scorer

                out.clip = load_clip_scorer(clip, device)
            else:
                out.skipped.append("clip")
        if "dino" in wanted:
            if dino:
                from .dino import load_dino

                out.dino = load_dino(dino, device)
            else:
                out.skipped.append("dino")
        if "lpips" in wanted:
            if lpips:
                from .lpips import load_lpips

                out.lpips = load_lpips(lpips, device)
            else:
                out.skipped.append("lpips")
        for kind in out.skipped:
            logger.warning("no --%s folder given: %s metrics are skipped", kind, kind.upper())
        return out

    def notes(self) -> list[str]:
        return [f"{k.upper()} metrics not computed: no --{k} backbone folder given" for k in self.skipped]


@dataclass
class EvalRun:
    """What a benchmark run returns: the summary (as in summary.json), every sample result, the report folder.

    ``incomplete``: the rows not scored for a reason outside the benchmark's own rules (missing or unreadable
    outputs, failed edits, ...). ``merged`` is False on the ranks > 0 of a sharded run: they hold only their own
    rows and write no report (rank 0 does)."""

    summary: dict[str, Any]
    results: list[SampleResult]
    out_dir: Path
    merged: bool = True
    incomplete: list[SampleResult] = field(default_factory=list)


def score_samples(results: list[SampleResult], fn: Callable[[SampleResult], dict[str, float]],
                  desc: str = "scoring") -> None:
    """``r.metrics = fn(r)`` for every sample still ``ok``; problems become the sample's status."""
    for r in tqdm(results, desc=desc, unit="sample", disable=not results):
        if not r.ok:
            continue
        try:
            r.metrics = fn(r)
        except SampleProblem as e:
            r.fail(e.status, e.message)
        except Exception as e:  # never stop the run for one sample; the message is in the report
            logger.exception("unexpected error while scoring %s", r.id)
            r.fail(ERROR, f"{type(e).__name__}: {e}")
