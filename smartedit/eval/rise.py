"""RISEBench (reasoning-informed visual editing): temporal, causal, spatial and logical reasoning edits, each
rated 1–5 by a VLM judge on Instruction Reasoning, Appearance Consistency and Visual Plausibility; an edit is
*accurate* only when every dimension it is judged on scores 5.

Data (``--data``): RISEBench's ``data/`` folder with its JSON list (``data_total.json``, or the one ``*.json``
there, or the file itself): entries ``{"index", "category", "instruction", "image", "reference"}`` plus optional
``reference_img`` / ``reference_txt`` (the answer as an image or text), ``consistency_free`` and ``subtask``;
image paths are relative to the JSON's folder.

Edited outputs: ``OUTPUTS/images/<category>/<index>.png`` (RISEBench's ``outputs/<model>/images/...``;
``.jpg`` / ``.jpeg`` too).

Protocol (as RISEBench's ``gpt_eval.py``): reasoning is judged against the reference (text, or the reference image
shown beside the output), consistency from input + output (skipped for ``consistency_free`` entries), plausibility
from the output alone (not for logical puzzles); each reply ends in ``Final Score: n``. Sample score: temporal /
causal / spatial 0.3·consistency + 0.5·reasoning + 0.2·plausibility (0.2·plausibility + 0.8·reasoning when
consistency-free), logical 0.3·consistency + 0.7·reasoning; halved (at least 1) when reasoning is 1. Summary:
per category and ``overall`` pooled over samples; ``accuracy`` is the share of accurate edits.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .benchmark import Sample
from .images import load_rgb
from .judge import ask_and_parse, parse_final_scores
from .judged import JudgedBenchmark
from .report import slug
from .results import BAD_ANNOTATION, MISSING_INPUT, MISSING_TARGET, Aggregate, BenchmarkError

__all__ = ["CATEGORIES", "REASONING_PROMPT", "REASONING_IMAGE_PROMPT", "CONSISTENCY_PROMPT", "PLAUSIBILITY_PROMPT",
           "read_rise", "sample_score", "is_accurate", "RISEBench"]

CATEGORIES = ("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")
_FINAL = "Explain briefly, then end your reply with the line 'Final Score: <1-5>'."
REASONING_PROMPT = ("You judge whether an image edit got the reasoning right. You see the edited image. The "
                    "instruction was: \"{instruction}\". The correct result looks like: {reference}.\n"
                    "Score 5 when the image shows the correct result, 1 when it shows something unrelated or wrong, "
                    f"in between for partly correct results. {_FINAL}")
REASONING_IMAGE_PROMPT = ("You judge whether an image edit got the reasoning right. The first image is the correct "
                          "answer, the second image is the edited result. The instruction was: \"{instruction}\".\n"
                          "Score 5 when the result matches the correct answer, 1 when it does not at all. "
                          f"{_FINAL}")
CONSISTENCY_PROMPT = ("You judge appearance consistency of an image edit. The first image is the original, the "
                      "second the edited result; the instruction was: \"{instruction}\".\nScore 5 when everything "
                      "the instruction does not ask to change is preserved, 1 when the image was changed "
                      f"everywhere. {_FINAL}")
PLAUSIBILITY_PROMPT = ("You judge visual plausibility. Score 5 when the image is realistic, sharp and free of "
                       f"distortions and artifacts, 1 when it is badly distorted or implausible. {_FINAL}")


def sample_score(category: str, consistency: float | None, reasoning: float, plausibility: float | None,
                 consistency_free: bool = False) -> float:
    """RISEBench's weighted 1–5 score of one sample."""
    if category == "logical_reasoning":
        score = 0.3 * (consistency if consistency is not None else reasoning) + 0.7 * reasoning
    elif consistency_free:
        score = 0.2 * plausibility + 0.8 * reasoning
    else:
        score = 0.3 * consistency + 0.5 * reasoning + 0.2 * plausibility
    if reasoning == 1:
        score = max(1.0, score * 0.5)
    return score


def is_accurate(category: str, consistency: float | None, reasoning: float, plausibility: float | None,
                consistency_free: bool = False) -> bool:
    """Every dimension the sample is judged on is 5."""
    dims = [reasoning]
    if not consistency_free or category == "logical_reasoning":
        dims.append(consistency)
    if category != "logical_reasoning":
        dims.append(plausibility)
    return all(d == 5 for d in dims)


def read_rise(data: str | os.PathLike) -> list[Sample]:
    p = Path(data)
    if p.is_dir():
        files = [p / "data_total.json"] if (p / "data_total.json").is_file() else sorted(p.glob("*.json"))
        if len(files) != 1:
            raise BenchmarkError(f"RISEBench data {os.fspath(p)!r}: expected data_total.json (or one .json list of "
                                 f"{{index, category, instruction, image, reference}}), found "
                                 f"{[f.name for f in files]}")
        p = files[0]
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"cannot read RISEBench annotations {os.fspath(p)!r}: {e}") from e
    if not isinstance(raw, list):
        raise BenchmarkError(f"{os.fspath(p)} must hold a JSON list of samples")
    base = p.parent
    samples, seen = [], set()
    for n, e in enumerate(raw):
        e = e if isinstance(e, dict) else {}
        index, category = str(e.get("index") or f"row{n}"), str(e.get("category") or "unknown")
        problem = None
        missing = [k for k in ("index", "category", "instruction", "image") if not e.get(k)]
        if missing:
            problem = (BAD_ANNOTATION, f"entry {n} lacks {missing}")
        elif index in seen:
            problem = (BAD_ANNOTATION, f"duplicate index {index!r}")
            index = f"{index}__{n}"
        seen.add(index)
        image = base / e["image"] if isinstance(e.get("image"), str) and e.get("image") else None
        if problem is None and not image.is_file():
            problem = (MISSING_INPUT, f"input image {e['image']} not in {os.fspath(base)}")
        ref_img = e.get("reference_img")
        samples.append(Sample(
            id=f"{slug(category)}/{slug(index)}", group=category, instruction=str(e.get("instruction") or ""),
            input=image, problem=problem,
            data={"index": index, "category": category,
                  "reference": e.get("reference_txt") or e.get("reference") or "",
                  "reference_img": base / ref_img if isinstance(ref_img, str) and ref_img else None,
                  "consistency_free": bool(e.get("consistency_free")), "subtask": e.get("subtask")}))
    return samples


class RISEBench(JudgedBenchmark):
    name = "risebench"
    title = "RISEBench"
    macro_overall = False
    outputs_layout = "OUTPUTS/images/<category>/<index>.png"
    judge_metrics = {
        "reasoning": ("Instruction Reasoning", "the edit shows the correct result (reference text or image)", 1, 5),
        "consistency": ("Appearance Consistency", "what the instruction does not change is preserved", 1, 5),
        "plausibility": ("Visual Plausibility", "realistic, undistorted output (not for logical puzzles)", 1, 5),
        "score": ("Score", "RISEBench's weighted 1–5 sample score", 1, 5),
        "accuracy": ("Accuracy", "share of edits with 5 on every judged dimension", 0, 1),
    }

    def read(self):
        return read_rise(self.data), []

    def output_path(self, sample, outputs):
        return outputs / "images" / sample.data["category"] / f"{sample.data['index']}.png"

    def judge(self, sample, inputs, output, record, judge):
        d = sample.data
        cat, free = d["category"], d["consistency_free"]
        parse = lambda r: parse_final_scores(r, 1)[0]  # noqa: E731
        if d["reference_img"] is not None:
            ref = load_rgb(d["reference_img"], MISSING_TARGET, "reference image")
            reasoning = ask_and_parse(judge, record, "reasoning", [ref, output, REASONING_IMAGE_PROMPT.format(
                instruction=sample.instruction)], parse)
        else:
            reasoning = ask_and_parse(judge, record, "reasoning", [output, REASONING_PROMPT.format(
                instruction=sample.instruction, reference=d["reference"] or "(no reference given)")], parse)
        consistency = None
        if not free or cat == "logical_reasoning":
            consistency = ask_and_parse(judge, record, "consistency", [inputs[0], output, CONSISTENCY_PROMPT.format(
                instruction=sample.instruction)], parse)
        plausibility = None
        if cat != "logical_reasoning":
            plausibility = ask_and_parse(judge, record, "plausibility", [output, PLAUSIBILITY_PROMPT], parse)
        out = {"reasoning": reasoning, "consistency": consistency, "plausibility": plausibility}
        needed = [reasoning] + ([consistency] if not free or cat == "logical_reasoning" else []) + \
                 ([plausibility] if cat != "logical_reasoning" else [])
        if all(v is not None for v in needed):
            out["score"] = sample_score(cat, consistency, reasoning, plausibility, free)
            out["accuracy"] = float(is_accurate(cat, consistency, reasoning, plausibility, free))
        return {k: math.nan if v is None else float(v) for k, v in out.items()}

    def aggregates(self, samples):
        groups = [c for c in CATEGORIES if any(s.group == c for s in samples)]
        groups += [g for g in dict.fromkeys(s.group for s in samples) if g not in groups]
        return [Aggregate("overall", tuple(groups))] + [Aggregate(g, (g,)) for g in groups]
