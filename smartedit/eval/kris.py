"""KRIS-Bench (knowledge-based reasoning in image editing): 22 tasks over factual, conceptual and procedural
knowledge, each edit rated 1–5 by a VLM judge on Visual Consistency, Visual Quality, Instruction Following and,
for knowledge tasks, Knowledge Plausibility (judged with the annotated explanation as a hint).

Data (``--data``): the published ``KRIS_Bench/`` folder, one folder per task with ``annotation.json``
(``{id: {"ori_img": "1.jpg" or ["1-1.jpg", ...], "gt_img": "1_gt.jpg" (optional), "ins_en": "...",
"explain_en": "..."}}``; the older ``instruction`` / ``explain`` keys are read too) next to its images.
Samples with several input images (multi-element composition) are judged with all of them; a one-image editor
cannot make them, so with ``--model`` they are ``unsupported``.

Edited outputs: ``OUTPUTS/<task>/<id>.jpg`` (KRIS-Bench's ``results/<model>/<task>/``; any image extension).
Summary: per task and ``overall`` = the mean of the task means, per dimension on the 1–5 scale.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .benchmark import Sample
from .judge import ask_and_parse, parse_json_field
from .judged import JudgedBenchmark
from .report import slug
from .results import BAD_ANNOTATION, MISSING_INPUT, UNSUPPORTED, BenchmarkError

__all__ = ["KNOWLEDGE_TASKS", "CONSISTENCY_PROMPT", "INSTRUCTION_PROMPT", "KNOWLEDGE_PROMPT", "QUALITY_PROMPT",
           "read_kris", "KrisBench"]

KNOWLEDGE_TASKS = frozenset({"abstract_reasoning", "mathematics", "practical_knowledge", "medicine",
                             "rule-based_reasoning", "biology", "geography", "chemistry", "humanities", "physics"})
"""Tasks scored for Knowledge Plausibility too (the knowledge-hint protocol of KRIS-Bench)."""
_SCALE = "Use an integer from 1 (very poor) to 5 (excellent)."
CONSISTENCY_PROMPT = ("You judge image edits. You see the original image and the edited image. The instruction was: "
                      "\"{instruction}\".\nRate visual consistency: are the parts of the image that the "
                      f"instruction does not ask to change kept as they were? {_SCALE}\n"
                      'Reply as JSON: {{"consistency_score": <1-5>, "reasoning": "<one sentence>"}}')
INSTRUCTION_PROMPT = ("You judge image edits. You see the original image and the edited image. The instruction "
                      "was: \"{instruction}\".{reference}\nRate instruction following: does the edited image do "
                      f"what the instruction asks? {_SCALE}\n"
                      'Reply as JSON: {{"instruction_score": <1-5>, "reasoning": "<one sentence>"}}')
KNOWLEDGE_PROMPT = ("You judge image edits that need knowledge or reasoning. You see the original image and the "
                    "edited image. The instruction was: \"{instruction}\".\nThe expected result, as a hint: "
                    "{explanation}\nGive two scores. instruction_score: does the edited image do what the "
                    "instruction asks? knowledge_score: is the result consistent with the facts and reasoning the "
                    f"task needs (the hint)? {_SCALE}\n"
                    'Reply as JSON: {{"instruction_score": <1-5>, "knowledge_score": <1-5>, '
                    '"reasoning": "<one sentence>"}}')
QUALITY_PROMPT = ("You judge image quality. Rate the image: is it sharp, natural and free of artifacts, "
                  f"distortions and broken structures? {_SCALE}\n"
                  'Reply as JSON: {"quality_score": <1-5>, "reasoning": "<one sentence>"}')


def read_kris(data: str | os.PathLike) -> list[Sample]:
    root = Path(data)
    if root.is_dir() and not any(root.glob("*/annotation.json")) and (root / "KRIS_Bench").is_dir():
        root = root / "KRIS_Bench"
    tasks = sorted(p.parent for p in root.glob("*/annotation.json")) if root.is_dir() else []
    if not tasks:
        raise BenchmarkError(f"KRIS-Bench data {os.fspath(data)!r}: expected KRIS_Bench/<task>/annotation.json "
                             f"({{id: {{ori_img, ins_en, explain_en, gt_img?}}}}) next to the task's images")
    samples = []
    for folder in tasks:
        try:
            raw = json.loads((folder / "annotation.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise BenchmarkError(f"cannot read {os.fspath(folder / 'annotation.json')}: {e}") from e
        if not isinstance(raw, dict):
            raise BenchmarkError(f"{os.fspath(folder / 'annotation.json')} must map id → entry")
        task = folder.name
        for key in sorted(raw, key=lambda k: (0, int(k), k) if str(k).isdigit() else (1, 0, str(k))):
            e = raw[key] if isinstance(raw[key], dict) else {}
            ori = e.get("ori_img")
            images = [ori] if isinstance(ori, str) else list(ori) if isinstance(ori, list) else []
            instruction = e.get("ins_en", e.get("instruction"))
            problem = None
            if not images or not all(isinstance(x, str) and x for x in images):
                problem = (BAD_ANNOTATION, "annotation has no ori_img")
            elif not isinstance(instruction, str) or not instruction.strip():
                problem = (BAD_ANNOTATION, "annotation has no ins_en / instruction")
            else:
                absent = [x for x in images if not (folder / x).is_file()]
                if absent:
                    problem = (MISSING_INPUT, f"input image(s) {absent} not in {os.fspath(folder)}")
            gt = e.get("gt_img")
            samples.append(Sample(
                id=f"{slug(task)}/{slug(str(key))}", group=task, instruction=str(instruction or ""),
                input=folder / images[0] if images else None, problem=problem,
                data={"key": str(key), "task": task, "inputs": [folder / x for x in images],
                      "explanation": str(e.get("explain_en", e.get("explain")) or ""),
                      "gt": folder / gt if isinstance(gt, str) and gt else None}))
    return samples


class KrisBench(JudgedBenchmark):
    name = "kris-bench"
    title = "KRIS-Bench"
    outputs_layout = "OUTPUTS/<task>/<id>.jpg (or .png)"
    judge_metrics = {
        "consistency": ("VC (visual consistency)", "unchanged where the instruction asks for no change", 1, 5),
        "quality": ("VQ (visual quality)", "output alone: sharp, natural, no artifacts", 1, 5),
        "instruction": ("IF (instruction following)", "the edit does what the instruction asks", 1, 5),
        "knowledge": ("KP (knowledge plausibility)", "knowledge tasks only: consistent with the annotated "
                      "explanation", 1, 5),
    }

    def read(self):
        return read_kris(self.data), []

    def output_path(self, sample, outputs):
        return outputs / sample.data["task"] / f"{sample.data['key']}.jpg"

    def inputs(self, sample):
        return list(sample.data["inputs"]) or [sample.input]

    def generate(self, samples, editor, outputs):
        super().generate([s for s in samples if len(s.data["inputs"]) <= 1], editor, outputs)

    def build_results(self, samples, found, outputs):
        results = super().build_results(samples, found, outputs)
        for r, s in zip(results, samples):
            if r.ok and len(s.data["inputs"]) > 1 and s.id not in found:
                r.fail(UNSUPPORTED, f"{len(s.data['inputs'])} input images; the editor takes one")
        return results

    def judge(self, sample, inputs, output, record, judge):
        d = sample.data
        parts_in = inputs + [output]
        out = {"consistency": ask_and_parse(
            judge, record, "consistency", parts_in + [CONSISTENCY_PROMPT.format(instruction=sample.instruction)],
            lambda r: parse_json_field(r, "consistency_score"))}
        if d["task"] in KNOWLEDGE_TASKS:
            both = ask_and_parse(
                judge, record, "instruction+knowledge",
                parts_in + [KNOWLEDGE_PROMPT.format(instruction=sample.instruction,
                                                    explanation=d["explanation"] or "(none given)")],
                lambda r: (parse_json_field(r, "instruction_score"), parse_json_field(r, "knowledge_score")))
            out["instruction"], out["knowledge"] = both if both is not None else (None, None)
        else:
            reference = ""
            extra = []
            if d["gt"] is not None and Path(d["gt"]).is_file():
                from .images import load_rgb
                from .results import MISSING_TARGET

                extra = [load_rgb(d["gt"], MISSING_TARGET, "reference")]
                reference = " The last image is a reference of the expected result."
            out["instruction"] = ask_and_parse(
                judge, record, "instruction", parts_in + extra + [INSTRUCTION_PROMPT.format(
                    instruction=sample.instruction, reference=reference)],
                lambda r: parse_json_field(r, "instruction_score"))
        out["quality"] = ask_and_parse(judge, record, "quality", [output, QUALITY_PROMPT],
                                       lambda r: parse_json_field(r, "quality_score"))
        return {k: math.nan if v is None else float(v) for k, v in out.items()}
