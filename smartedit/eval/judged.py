"""What the VLM-judged benchmarks (GEdit-Bench, ImgEdit-Bench, KRIS-Bench, RISEBench) share on top of
:class:`~smartedit.eval.benchmark.Benchmark`: a required judge, metrics declared as (label, description,
range), each row scored by :meth:`JudgedBenchmark.judge` with the judge's questions and replies kept in
``meta["judge"]``, and image cells from parquet / arrow tables.

A benchmark module declares its :attr:`~JudgedBenchmark.judge_metrics`, reads its layout and implements
``judge(sample, inputs, output, record)``: the protocol's questions (its rubric, in our words) and the parsing of
each reply; a reply that cannot be parsed leaves that metric NaN (see :mod:`smartedit.eval.judge`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, ClassVar

from PIL import Image

from .benchmark import Benchmark, Context, Sample
from .images import ImageSource, check_size, describe_source, load_rgb
from .judge import Judge
from .results import MISSING_INPUT, MISSING_OUTPUT, Aggregate, BenchmarkError, MetricInfo, SampleResult

logger = logging.getLogger(__name__)

__all__ = ["JudgedBenchmark", "read_table_rows"]


def read_table_rows(data: Path, needed: set[str], what: str) -> list[tuple[dict[str, Any], Path]]:
    """Rows of a Hugging Face dataset as published: ``*.parquet`` files, ``*.arrow`` files (the datasets cache /
    hub arrow format) or a ``save_to_disk`` folder (``dataset_info.json`` + ``state.json``), searched
    recursively; one file is fine too. Each row comes with the folder its relative paths start from."""
    from .results import read_parquet_table

    files = [data] if data.is_file() else sorted(p for p in data.rglob("*") if p.suffix in (".parquet", ".arrow"))
    if not files:
        raise BenchmarkError(f"{what} data {os.fspath(data)!r}: no .parquet or .arrow files (the Hugging Face "
                             f"dataset as downloaded, or saved with save_to_disk)")
    rows: list[tuple[dict[str, Any], Path]] = []
    for file in files:
        if file.suffix == ".parquet":
            table = read_parquet_table(file, needed, what)
            rows += [(r, file.parent) for r in table.to_pylist()]
            continue
        try:
            from datasets import Dataset

            ds = Dataset.from_file(os.fspath(file))
        except Exception as e:
            raise BenchmarkError(f"cannot read arrow file {os.fspath(file)!r}: {e}") from e
        missing = needed - set(ds.column_names)
        if missing:
            raise BenchmarkError(f"{file}: {what} needs columns {sorted(needed)}; missing {sorted(missing)}")
        table = ds.data.table if hasattr(ds.data, "table") else ds.data
        rows += [(r, file.parent) for r in table.to_pylist()]
    return rows


class JudgedBenchmark(Benchmark):
    """A benchmark scored by a VLM judge. ``judge_metrics``: name → (label, description, low, high)."""

    uses_judge = True
    judge_metrics: ClassVar[dict[str, tuple[str, str, float, float]]] = {}
    macro_overall: ClassVar[bool] = True
    """The overall row is the mean of the per-group means (the published statistics average task types)."""

    def metric_infos(self, ctx: Context) -> dict[str, MetricInfo]:
        if ctx.judge is None:
            raise BenchmarkError(f"{self.title} is scored by a VLM judge: give --judge DIR (a local "
                                 f"image-text-to-text model folder, e.g. a copy of Qwen/Qwen2.5-VL-7B-Instruct)")
        return {name: MetricInfo(name, label, f"{desc} (range {low:g}–{high:g}; local VLM judge)", True,
                                 ctx.judge.info)
                for name, (label, desc, low, high) in self.judge_metrics.items()}

    def inputs(self, sample: Sample) -> list[ImageSource | None]:
        """The benchmark's input images of a sample (first = the one that is edited)."""
        return [sample.input]

    def build_results(self, samples, found, outputs):
        results = super().build_results(samples, found, outputs)
        for r, s in zip(results, samples):
            extra = self.inputs(s)[1:]
            if extra:
                r.meta["extra_inputs"] = [describe_source(x) for x in extra]
        return results

    def score(self, result: SampleResult, ctx: Context) -> dict[str, float]:
        sample, output = result.payload
        inputs = [load_rgb(src, MISSING_INPUT, "input") for src in self.inputs(sample)]
        out = load_rgb(output, MISSING_OUTPUT, "output")
        note = check_size(inputs[0].size, out.size, "output", allow=True)
        if note and not ctx.allow_size_mismatch:
            out = out.resize(inputs[0].size, Image.Resampling.BICUBIC)  # as the protocols do before judging
            result.meta["note"] = note.replace("(resized anyway: --allow-size-mismatch)", "(resized to the input)")
        record: list[dict[str, Any]] = []
        metrics = self.judge(sample, inputs, out, record, ctx.judge)
        result.meta["judge"] = record
        return {k: metrics.get(k, float("nan")) for k in self.judge_metrics}

    def judge(self, sample: Sample, inputs: list[Image.Image], output: Image.Image, record: list,
              judge: Judge) -> dict[str, float]:
        raise NotImplementedError

    def aggregates(self, samples):
        groups = list(dict.fromkeys(s.group for s in samples))
        return [Aggregate("overall", tuple(groups), macro=self.macro_overall)] + [Aggregate(g, (g,)) for g in groups]
