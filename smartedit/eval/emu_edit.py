"""Emu Edit test set: reading it, dropping bad captions, scoring without ground truth, running a model.

Layouts (``--data``):

* the Hugging Face parquet files (``facebook/emu_edit_test_set``; one file or a folder searched recursively)
  with columns ``instruction``, ``image`` (a {"bytes", "path"} struct), ``input_caption``, ``output_caption`` and
  optionally ``idx``, ``task``, ``split``, ``hash``;
* a folder with ``metadata.jsonl`` (one JSON object per line with the same keys; ``image`` a path relative to the
  folder).

``--split`` keeps rows whose ``split`` column equals it (or, without that column, parquet files whose name
starts with it). Edited outputs: ``OUTPUTS/<idx>.png``.

Bad captions are dropped before anything runs and reported (status ``bad_caption``, counted in the summary):
a caption that is missing, empty, has no letter or digit, is a known placeholder (:data:`PLACEHOLDER_CAPTIONS`,
case-insensitive, extendable) or is a bracketed template such as ``<output caption>``; or an input caption equal
to the output caption (after lower-casing, collapsing white space and dropping trailing punctuation).

Metrics (no ground truth): L1 input vs output on [0, 1] (output resized to the input size, bicubic), CLIP-I and
DINO input vs output, CLIP-out = cos(E_I(output), E_T(output caption)), CLIP-dir = cos(E_I(output) − E_I(input),
E_T(output caption) − E_T(input caption)). Summary rows: ``all`` and every task.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .benchmark import Benchmark, Sample, run_benchmark
from .clip_score import cosine, direction_similarity
from .generate import Editor, GenerationSettings
from .images import ImageSource, check_size, image_cell, load_rgb, resize
from .pixel import l1
from .report import slug
from .results import (BAD_ANNOTATION, BAD_CAPTION, MISSING_INPUT, MISSING_OUTPUT, Aggregate, BenchmarkError,
                      MetricInfo, read_parquet_table)
from .runner import Backbones, EvalRun

logger = logging.getLogger(__name__)

__all__ = ["PLACEHOLDER_CAPTIONS", "EmuSample", "normalize_caption", "caption_problem", "read_emu_edit",
           "metric_infos", "score_sample", "EmuEdit", "evaluate"]

PLACEHOLDER_CAPTIONS = frozenset({
    "", "n/a", "na", "none", "null", "nan", "nil", "caption", "input caption", "output caption", "source caption",
    "target caption", "placeholder", "todo", "tbd", "tba", "-", "--", "...", "empty", "no caption", "unknown",
})
_BRACKETED = re.compile(r"^[<\[{(].*[>\]})]$")


@dataclass
class EmuSample:
    id: str
    idx: Any
    task: str
    split: str | None
    instruction: str
    input: ImageSource | None
    input_caption: Any
    output_caption: Any
    problem: tuple[str, str] | None = None


def normalize_caption(text: str) -> str:
    """Lower case, white space collapsed, trailing punctuation dropped."""
    return re.sub(r"\s+", " ", text.strip().lower()).rstrip(" .!,;:")


def caption_problem(input_caption: Any, output_caption: Any,
                    placeholders: frozenset[str] | set[str] = PLACEHOLDER_CAPTIONS) -> str | None:
    """Why a sample's captions are unusable (see the module docstring), or None."""
    marks = {normalize_caption(p) for p in placeholders}
    for name, cap in (("input_caption", input_caption), ("output_caption", output_caption)):
        if not isinstance(cap, str):
            return f"{name} is missing"
        n = normalize_caption(cap)
        if n in marks or not any(ch.isalnum() for ch in n) or _BRACKETED.match(n):
            return f"{name} is a placeholder: {cap!r}"
    if normalize_caption(input_caption) == normalize_caption(output_caption):
        return f"input_caption == output_caption: {input_caption!r}"
    return None


def _rows(data: Path, split: str | None) -> list[tuple[dict[str, Any], Path]]:
    if data.is_dir() and (data / "metadata.jsonl").is_file():
        rows = []
        with open(data / "metadata.jsonl", encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                if not line.strip():
                    continue
                try:
                    rows.append((json.loads(line), data))
                except ValueError as e:
                    raise BenchmarkError(f"metadata.jsonl line {n} is not JSON: {e}") from e
        return [(r, b) for r, b in rows if split is None or r.get("split") == split]
    files = [data] if data.is_file() and data.suffix == ".parquet" else (
        sorted(data.rglob("*.parquet")) if data.is_dir() else [])
    if not files:
        raise BenchmarkError(f"Emu Edit data {os.fspath(data)!r}: expected parquet files (facebook/emu_edit_test_set) "
                             f"or a folder with metadata.jsonl")
    needed = {"instruction", "image", "input_caption", "output_caption"}
    rows = []
    for file in files:
        table = read_parquet_table(file, needed, "Emu Edit")
        if split is not None and "split" not in table.column_names and not file.name.startswith(split):
            continue
        rows += [(r, file.parent) for r in table.to_pylist() if split is None or r.get("split", split) == split]
    return rows


def read_emu_edit(data: str | os.PathLike, split: str | None = None,
                  placeholders: frozenset[str] | set[str] = PLACEHOLDER_CAPTIONS) -> list[EmuSample]:
    """Every row as an :class:`EmuSample`; rows with bad captions carry ``problem = (bad_caption, why)``."""
    rows = _rows(Path(data), split)
    idxs = [r.get("idx", n) for n, (r, _) in enumerate(rows)]
    counts = Counter(map(str, idxs))
    samples, seen = [], set()
    for n, ((row, base), idx) in enumerate(zip(rows, idxs)):
        sid = slug(str(idx)) if counts[str(idx)] == 1 else slug(f"{row.get('split') or 'row'}_{idx}")
        problem = None
        if sid in seen:
            problem = (BAD_ANNOTATION, f"duplicate sample id {sid!r} (row {n})")
            sid = f"{sid}__row{n}"
        seen.add(sid)
        instruction = row.get("instruction")
        if problem is None and (not isinstance(instruction, str) or not instruction.strip()):
            problem = (BAD_ANNOTATION, "empty instruction")
        if problem is None:
            why = caption_problem(row.get("input_caption"), row.get("output_caption"), placeholders)
            if why is not None:
                problem = (BAD_CAPTION, why)
        samples.append(EmuSample(id=sid, idx=idx, task=str(row.get("task") or "unknown"), split=row.get("split"),
                                 instruction=str(instruction or ""), input=image_cell(row.get("image"), base),
                                 input_caption=row.get("input_caption"), output_caption=row.get("output_caption"),
                                 problem=problem))
    return samples


def metric_infos(backbones: Backbones) -> dict[str, MetricInfo]:
    m = {"l1": MetricInfo("l1", "L1", "mean |output − input| on [0,1] (output resized to the input size, bicubic)",
                          False)}
    if backbones.clip is not None:
        info = backbones.clip.info
        m["clip_i"] = MetricInfo("clip_i", "CLIP-I", "cosine of CLIP image embeddings, input vs output", True, info)
    if backbones.dino is not None:
        m["dino"] = MetricInfo("dino", "DINO", "cosine of DINO CLS features (resize 256, center crop 224), input vs "
                                               "output", True, backbones.dino.info)
    if backbones.clip is not None:
        m["clip_out"] = MetricInfo("clip_out", "CLIP-out", "cosine of the output's image embedding and the output "
                                                           "caption's text embedding", True, info)
        m["clip_dir"] = MetricInfo("clip_dir", "CLIP-dir", "cosine of (E_I(output) − E_I(input)) and "
                                   "(E_T(output caption) − E_T(input caption)), normalised embeddings", True, info)
    return m


def score_sample(sample: EmuSample, output: ImageSource | None, backbones: Backbones, *,
                 allow_size_mismatch: bool = False) -> tuple[dict[str, float], str | None]:
    inp = load_rgb(sample.input, MISSING_INPUT, "input")
    out = load_rgb(output, MISSING_OUTPUT, "output")
    note = check_size(inp.size, out.size, "output", allow=allow_size_mismatch)
    m: dict[str, float] = {"l1": l1(resize(out, inp.size, Image.Resampling.BICUBIC), inp)}
    if backbones.clip is not None:
        e = backbones.clip.image_embeds([inp, out])
        t = backbones.clip.text_embeds([sample.input_caption, sample.output_caption])
        m["clip_i"] = cosine(e[0], e[1])
        m["clip_out"] = cosine(e[1], t[1])
        m["clip_dir"] = direction_similarity(e[0], e[1], t[0], t[1])
    if backbones.dino is not None:
        m["dino"] = backbones.dino.similarity(inp, out)
    order = [k for k in metric_infos(backbones) if k in m]
    return {k: m[k] for k in order}, note


class EmuEdit(Benchmark):
    """The Emu Edit test set through the shared benchmark loop (bad captions: :func:`caption_problem`)."""

    name = "emu-edit"
    title = "Emu Edit test"
    backbone_kinds = ("clip", "dino")
    rule_exclusions = frozenset({BAD_CAPTION})
    outputs_layout = "OUTPUTS/<idx>.png"

    def __init__(self, data, *, split: str | None = None, extra_placeholders: list[str] | None = None):
        super().__init__(data)
        self.split = split
        self.placeholders = PLACEHOLDER_CAPTIONS | set(extra_placeholders or [])
        self.dropped = 0

    def read(self):
        raw = read_emu_edit(self.data, self.split, self.placeholders)
        if not raw:
            raise BenchmarkError(f"no Emu Edit samples in {os.fspath(self.data)!r}"
                                 + (f" for split {self.split!r}" if self.split else ""))
        self.dropped = sum(1 for s in raw if s.problem and s.problem[0] == BAD_CAPTION)
        logger.info("Emu Edit: %d samples, %d dropped for bad captions", len(raw), self.dropped)
        self.total = len(raw)
        return [Sample(id=s.id, group=s.task, instruction=s.instruction, input=s.input, problem=s.problem, data=s)
                for s in raw], []

    def run_info(self):
        return {"data": os.fspath(self.data), "split": self.split, "samples": self.total,
                "bad_captions_dropped": self.dropped}

    def output_path(self, sample, outputs):
        return outputs / f"{sample.id}.png"

    def build_results(self, samples, found, outputs):
        results = super().build_results(samples, found, outputs)
        for r, s in zip(results, samples):
            e = s.data
            r.meta = {"instruction": e.instruction, "input_caption": e.input_caption,
                      "output_caption": e.output_caption, "split": e.split, "idx": e.idx, **{
                          k: r.meta[k] for k in ("input", "output")}}
        return results

    def metric_infos(self, ctx):
        return metric_infos(ctx.backbones)

    def score(self, result, ctx):
        sample, output = result.payload
        metrics, note = score_sample(sample.data, output, ctx.backbones, allow_size_mismatch=ctx.allow_size_mismatch)
        if note:
            result.meta["note"] = note
        return metrics

    def aggregates(self, samples):
        tasks = sorted({s.group for s in samples})
        return [Aggregate("all", tuple(tasks))] + [Aggregate(t, (t,)) for t in tasks]

    def notes(self, ctx):
        return [f"{self.dropped} of {self.total} samples dropped for bad captions (placeholder or input caption == "
                f"output caption); listed under excluded samples"]


def evaluate(data: str | os.PathLike, *, out: str | os.PathLike, outputs: str | os.PathLike | None = None,
             model: str | os.PathLike | None = None, clip: str | os.PathLike | None = None,
             dino: str | os.PathLike | None = None, split: str | None = None,
             extra_placeholders: list[str] | None = None, settings: GenerationSettings | None = None,
             device: str = "cpu", dtype: torch.dtype | None = None, skip_existing: bool = False,
             allow_size_mismatch: bool = False, limit: int | None = None, max_visual: int = 16,
             shard=None) -> EvalRun:
    """Score the Emu Edit test set (running ``model`` first, or reading ``outputs``)."""
    if (outputs is None) == (model is None):
        raise ValueError("give exactly one of outputs= (score existing edits) or model= (run a model)")
    bench = EmuEdit(data, split=split, extra_placeholders=extra_placeholders)
    backbones = Backbones.load(clip=clip, dino=dino, device=device, wanted=("clip", "dino"))
    editor = None
    if model is not None:
        editor = Editor(model, settings or GenerationSettings(), device=device, dtype=dtype,
                        skip_existing=skip_existing)
    return run_benchmark(bench, out=out, outputs=outputs, editor=editor, backbones=backbones, limit=limit,
                         max_visual=max_visual, allow_size_mismatch=allow_size_mismatch, shard=shard)
