"""ImgEdit-Bench, basic suite (PKU-YuanGroup/ImgEdit): 9 edit types (add, remove, replace, adjust, style,
action, extract, background, compose), each edit rated 1–5 on three criteria by a VLM judge.

Data (``--data``): the folder holding ``basic_edit.json`` (``{key: {"id": "<category>/<file>.jpg", "prompt":
"...", "edit_type": "..."}}``, as in ImgEdit's ``Benchmark/Basic/``) or that file itself; the original images are
found at ``IMAGES/<id>`` where ``IMAGES`` is ``--images`` (default: the data folder, then its ``singleturn/``
sub-folder, where the published ``Benchmark.tar`` keeps them). ImgEdit's per-type judge prompts
(``prompts.json``: ``{edit_type: prompt with <edit_prompt>}``) are used when the file is next to
``basic_edit.json`` (or given with ``--prompts``); without it a built-in rubric in our words with the same three
criteria and reply format is used, and the report says which.

Edited outputs: ``OUTPUTS/<key>.png``. Score of an edit: the mean of the ``<criterion>: <n>`` numbers in the
reply (ImgEdit's ``step1_get_avgscore.py``); summary per edit type and ``overall`` = the mean of the type means.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .benchmark import Sample
from .judge import JudgeParseError, ask_and_parse
from .judged import JudgedBenchmark
from .report import slug
from .results import BAD_ANNOTATION, MISSING_INPUT, BenchmarkError

__all__ = ["EDIT_TYPES", "BUILTIN_PROMPT", "CRITERIA", "read_imgedit", "parse_imgedit_reply", "ImgEditBench"]

EDIT_TYPES = ("add", "remove", "replace", "adjust", "style", "action", "extract", "background", "compose")
CRITERIA = ("Prompt Compliance", "Visual Seamlessness", "Physical & Detail Fidelity")
BUILTIN_PROMPT = ("You rate image edits. You are given the image before editing and the image after editing, and "
                  "the editing instruction. Rate the edit from 1 (worst) to 5 (best) on three criteria:\n"
                  "Prompt Compliance: the requested change is made to the right object, completely, and nothing "
                  "else is changed.\n"
                  "Visual Seamlessness: the edited region blends in; no smears, seams, colour spill or noise.\n"
                  "Physical & Detail Fidelity: lighting, shadows, perspective and contact are believable and the "
                  "untouched regions keep their details.\n"
                  "The second and third scores must not be higher than the first.\n"
                  "Reply in exactly this format:\n"
                  "Brief reasoning: <at most 20 words>\n"
                  "Prompt Compliance: <1-5>\n"
                  "Visual Seamlessness: <1-5>\n"
                  "Physical & Detail Fidelity: <1-5>\n"
                  "Editing instruction: <edit_prompt>\n"
                  "The images before and after editing follow.")
_SCORE_LINE = re.compile(r"^\s*\**\s*([^:\n]*?[A-Za-z][^:\n]*?)\s*\**\s*[:：]\s*\**\s*(\d+(?:\.\d+)?)"
                         r"\s*\**\s*(?:/\s*5)?\s*$", re.MULTILINE)


def parse_imgedit_reply(reply: str) -> float:
    """The mean of every ``<criterion>: <number>`` line (ImgEdit's averaging); none, or a number outside 1–5, is
    a JudgeParseError."""
    scores = [float(m.group(2)) for m in _SCORE_LINE.finditer(reply) if "reason" not in m.group(1).lower()]
    if not scores:
        raise JudgeParseError(f"no '<criterion>: <1-5>' lines in reply {reply[:200]!r}")
    if any(not 1 <= s <= 5 for s in scores):
        raise JudgeParseError(f"scores {scores} outside 1–5 in reply {reply[:200]!r}")
    return sum(scores) / len(scores)


def _load_json(path: Path, what: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"cannot read {what} {os.fspath(path)!r}: {e}") from e


def read_imgedit(data: str | os.PathLike, images: str | os.PathLike | None = None) -> tuple[list[Sample], Path]:
    """The samples of ``basic_edit.json`` (sorted by key, numerically when keys are numbers) and the file's path."""
    p = Path(data)
    meta = p if p.is_file() else p / "basic_edit.json"
    if not meta.is_file():
        raise BenchmarkError(f"ImgEdit-Bench data {os.fspath(p)!r}: expected basic_edit.json ({{key: {{\"id\": "
                             f"\"<category>/<file>.jpg\", \"prompt\": ..., \"edit_type\": ...}}}}) in it")
    raw = _load_json(meta, "ImgEdit-Bench annotations")
    if not isinstance(raw, dict):
        raise BenchmarkError(f"{os.fspath(meta)} must map key → {{id, prompt, edit_type}}")
    roots = [Path(images)] if images is not None else [meta.parent, meta.parent / "singleturn"]
    samples = []
    for key in sorted(raw, key=lambda k: (0, int(k), k) if str(k).isdigit() else (1, 0, str(k))):
        entry = raw[key] if isinstance(raw[key], dict) else {}
        missing = [k for k in ("id", "prompt", "edit_type") if not isinstance(entry.get(k), str)]
        source = None
        if "id" not in missing:
            source = next((r / entry["id"] for r in roots if (r / entry["id"]).is_file()), roots[0] / entry["id"])
        problem = (BAD_ANNOTATION, f"basic_edit.json entry lacks {missing}") if missing else None
        if problem is None and not Path(source).is_file():
            problem = (MISSING_INPUT, f"original image {entry['id']} not found under "
                                      f"{', '.join(map(os.fspath, roots))}")
        samples.append(Sample(id=slug(str(key)), group=str(entry.get("edit_type") or "unknown"),
                              instruction=str(entry.get("prompt") or ""), input=source, problem=problem,
                              data={"key": str(key), "image_id": entry.get("id")}))
    return samples, meta


class ImgEditBench(JudgedBenchmark):
    name = "imgedit-bench"
    title = "ImgEdit-Bench (basic)"
    outputs_layout = "OUTPUTS/<key>.png"
    judge_metrics = {"score": ("ImgEdit score", "mean of the judge's three 1–5 criterion scores for the edit "
                                                "type (input + output shown)", 1, 5)}

    def __init__(self, data, *, images: str | os.PathLike | None = None, prompts: str | os.PathLike | None = None):
        super().__init__(data)
        self.images = images
        self.prompts_path = prompts
        self.prompts: dict[str, str] = {}

    def read(self):
        samples, meta = read_imgedit(self.data, self.images)
        path = Path(self.prompts_path) if self.prompts_path is not None else meta.parent / "prompts.json"
        if self.prompts_path is not None or path.is_file():
            prompts = _load_json(path, "ImgEdit judge prompts")
            if not isinstance(prompts, dict) or not all(isinstance(v, str) for v in prompts.values()):
                raise BenchmarkError(f"{os.fspath(path)} must map edit_type → prompt text")
            self.prompts, self.prompts_source = prompts, os.fspath(path)
        else:
            self.prompts_source = None
        return samples, []

    def run_info(self):
        return {"data": os.fspath(self.data), "judge_prompts": self.prompts_source or "built-in rubric"}

    def notes(self, ctx):
        if self.prompts_source:
            return [f"judge prompts: ImgEdit's per-type prompts from {self.prompts_source}"]
        return ["judge prompts: the built-in rubric (ImgEdit's prompts.json not found next to basic_edit.json; "
                "put it there, or give --prompts, to use the published per-type prompts)"]

    def output_path(self, sample, outputs):
        return outputs / f"{sample.data['key']}.png"

    def judge(self, sample, inputs, output, record, judge):
        template = self.prompts.get(sample.group, BUILTIN_PROMPT)
        prompt = template.replace("<edit_prompt>", sample.instruction)
        score = ask_and_parse(judge, record, sample.group, [prompt, inputs[0], output], parse_imgedit_reply)
        return {"score": float("nan") if score is None else score}
