"""Per-sample results, sample statuses and how means are formed.

Every benchmark sample ends as one :class:`SampleResult` with a ``status``. Only samples with status ``ok``
enter the means; every other sample is kept in the per-sample outputs with its status and a message, and the
summary counts them per status (nothing is silently dropped). A metric value that is NaN for a scored sample
(e.g. a caption metric for a sample without a caption) is left out of that metric's mean and counted in its
``n_nan``.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from .backbones import BackboneInfo

__all__ = [
    "OK",
    "MISSING_INPUT",
    "MISSING_MASK",
    "MISSING_OUTPUT",
    "MISSING_TARGET",
    "UNREADABLE",
    "SIZE_MISMATCH",
    "EMPTY_MASK",
    "FULL_MASK",
    "BAD_CAPTION",
    "BAD_ANNOTATION",
    "GENERATION_FAILED",
    "ERROR",
    "STATUS_HELP",
    "SampleProblem",
    "BenchmarkError",
    "UNSUPPORTED",
    "MetricInfo",
    "SampleResult",
    "Aggregate",
    "summarize",
    "finite_or_none",
]

OK = "ok"
MISSING_INPUT = "missing_input"
MISSING_MASK = "missing_mask"
MISSING_OUTPUT = "missing_output"
MISSING_TARGET = "missing_target"
UNREADABLE = "unreadable"
SIZE_MISMATCH = "size_mismatch"
EMPTY_MASK = "empty_mask"
FULL_MASK = "full_mask"
BAD_CAPTION = "bad_caption"
BAD_ANNOTATION = "bad_annotation"
GENERATION_FAILED = "generation_failed"
UNSUPPORTED = "unsupported"
ERROR = "error"

STATUS_HELP: dict[str, str] = {
    OK: "scored",
    MISSING_INPUT: "the benchmark's input image is missing",
    MISSING_MASK: "the benchmark's edit mask is missing",
    MISSING_OUTPUT: "no edited output was found for the sample",
    MISSING_TARGET: "the ground-truth target image is missing",
    UNREADABLE: "an image file exists but cannot be decoded",
    SIZE_MISMATCH: "an image's aspect ratio differs from the input's (more than 1 %)",
    EMPTY_MASK: "the edit mask has no edit pixels at the metric size",
    FULL_MASK: "the edit mask covers the whole image, so there is no background to score",
    BAD_CAPTION: "placeholder caption, or source caption == target caption (dropped by the benchmark rules)",
    BAD_ANNOTATION: "the benchmark annotation for the sample is malformed or missing",
    GENERATION_FAILED: "the model raised an error while editing this sample",
    UNSUPPORTED: "the sample needs an input this editor cannot take (e.g. several input images)",
    ERROR: "an unexpected error while scoring (see the message)",
}


class SampleProblem(Exception):
    """Raised while scoring one sample: the sample is reported with ``status`` and excluded from the means."""

    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


class BenchmarkError(ValueError):
    """The benchmark folder / file as a whole cannot be read (wrong path or layout); the message says what to fix."""


def read_parquet_table(file, needed: set[str], what: str, hint: str = ""):
    """A benchmark parquet file as a pyarrow table; an unreadable file or missing columns is a BenchmarkError
    naming the file, the columns ``what`` needs (``hint`` adds optional ones) and the missing ones."""
    import os

    import pyarrow.parquet as pq

    path = os.fspath(file)
    try:
        table = pq.read_table(path)
    except Exception as e:
        raise BenchmarkError(f"cannot read parquet file {path!r}: {e}") from e
    missing = needed - set(table.column_names)
    if missing:
        raise BenchmarkError(f"{path}: {what} parquet needs columns {sorted(needed)}{hint}; missing {sorted(missing)}")
    return table


@dataclass
class MetricInfo:
    """What a metric is and which backbone (name + sha256) produced it; ``backbone`` is None for pixel metrics."""

    name: str
    label: str
    description: str
    higher_is_better: bool | None = None
    backbone: BackboneInfo | None = None
    cap: float | None = None
    """The largest value the metric can take by construction (PSNR of identical images): summaries count the
    samples at the cap and give the mean over the others too, so a few capped samples cannot hide in a mean."""
    count: bool = False
    """A 0/1 flag per sample (e.g. "output unchanged"): summaries report how many samples have it."""

    def tag(self) -> str:
        return self.backbone.tag() if self.backbone is not None else "—"

    def to_dict(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "description": self.description,
            "higher_is_better": self.higher_is_better,
            "backbone": None if self.backbone is None else self.backbone.name,
            "sha256": None if self.backbone is None else self.backbone.sha256,
            **({"cap": self.cap} if self.cap is not None else {}),
            **({"count": True} if self.count else {}),
        }


@dataclass
class SampleResult:
    """One sample's outcome. ``visuals`` (label, image source or None) feed the grids and are not serialised."""

    id: str
    group: str
    status: str = OK
    message: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    visuals: list[tuple[str, Any]] = field(default_factory=list)
    payload: Any = field(default=None, repr=False, compare=False)
    """What the benchmark needs to score this result (its sample, output path, ...); not serialised."""

    @property
    def ok(self) -> bool:
        return self.status == OK

    def fail(self, status: str, message: str) -> None:
        self.status, self.message, self.metrics = status, message, {}

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "group": self.group,
            "status": self.status,
            "message": self.message,
            "metrics": {k: finite_or_none(v) for k, v in self.metrics.items()},
            "meta": self.meta,
        }


@dataclass(frozen=True)
class Aggregate:
    """A row of the summary: the samples whose ``group`` is one of ``groups`` (pooled, one mean over samples), or
    with ``macro`` the mean of the groups' own means (each group counts once, as GEdit-Bench and ImgEdit-Bench
    average their task types)."""

    name: str
    groups: tuple[str, ...]
    macro: bool = False


def finite_or_none(value: Any) -> Any:
    """NaN / inf → None (JSON has no NaN); other values unchanged."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def summarize(results: list[SampleResult], metrics: dict[str, MetricInfo],
              aggregates: list[Aggregate]) -> dict[str, dict[str, Any]]:
    """Per aggregate: sample counts, excluded counts per status and, per metric, mean / n / n_nan + backbone."""
    out: dict[str, dict[str, Any]] = {}
    for agg in aggregates:
        members = [r for r in results if r.group in agg.groups]
        scored = [r for r in members if r.ok]
        excluded = Counter(r.status for r in members if not r.ok)
        entry: dict[str, Any] = {
            "groups": list(agg.groups),
            "n_samples": len(members),
            "n_scored": len(scored),
            "excluded": dict(sorted(excluded.items())),
            "metrics": {},
        }
        for name, info in metrics.items():
            values = [r.metrics.get(name, math.nan) for r in scored]
            finite = [float(v) for v in values if v is not None and math.isfinite(v)]
            mean = (sum(finite) / len(finite)) if finite else None
            if agg.macro:
                means = []
                for g in agg.groups:
                    vals = [float(r.metrics[name]) for r in scored if r.group == g and r.metrics.get(name) is not
                            None and math.isfinite(r.metrics[name])]
                    if vals:
                        means.append(sum(vals) / len(vals))
                mean = sum(means) / len(means) if means else None
            m: dict[str, Any] = {
                "mean": mean,
                "n": len(finite),
                "n_nan": len(values) - len(finite),
                "backbone": None if info.backbone is None else info.backbone.name,
                "sha256": None if info.backbone is None else info.backbone.sha256,
            }
            if agg.macro:
                m["macro_over_groups"] = True
            if info.count:
                m["count"] = int(sum(1 for v in finite if v))
            if info.cap is not None:
                below = [v for v in finite if v < info.cap]
                m["n_at_cap"] = len(finite) - len(below)
                m["mean_below_cap"] = (sum(below) / len(below)) if below else None
            entry["metrics"][name] = m
        out[agg.name] = entry
    return out
