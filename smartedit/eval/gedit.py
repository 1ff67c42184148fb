"""GEdit-Bench (Step1X-Edit): 11 editing task types, real-world instructions in English and Chinese, scored with
VIEScore by a VLM judge.

Data (``--data``): the Hugging Face dataset ``stepfun-ai/GEdit-Bench`` as downloaded (arrow or parquet files,
searched recursively) or saved with ``save_to_disk``; columns ``task_type``, ``key``, ``instruction``,
``instruction_language`` (``en`` / ``cn``), ``input_image`` (image struct) and optionally ``input_image_raw``,
``Intersection_exist``. ``language`` keeps one instruction language (default ``en``; ``all`` keeps both).

Edited outputs: the layout of GEdit-Bench's ``generate_image_example.py``,
``OUTPUTS/fullset/<task_type>/<language>/<key>.png`` (``OUTPUTS`` = ``results/<method>/``).

Protocol (VIEScore, task "tie"): a semantic-consistency question shows the input and the edited image with the
instruction and asks for two 0–10 scores (editing success, and how little was over-edited); a perceptual-quality
question shows the edited image alone and asks for two 0–10 scores (naturalness, absence of artifacts). SC and
PQ are the minimum of their two scores, O = sqrt(SC · PQ). Summary: per task type, and ``overall`` = the mean of
the 11 task-type means (as GEdit-Bench's ``calculate_statistics.py``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from .benchmark import Sample
from .judge import ask_and_parse, parse_score_list
from .images import image_cell
from .judged import JudgedBenchmark, read_table_rows
from .report import slug
from .results import BAD_ANNOTATION, BenchmarkError

__all__ = ["TASK_TYPES", "SC_PROMPT", "PQ_PROMPT", "read_gedit", "sc_pq_overall", "GEditBench"]

TASK_TYPES = ("background_change", "color_alter", "material_alter", "motion_change", "ps_human", "style_change",
              "subject-add", "subject-remove", "subject-replace", "text_change", "tone_transfer")
_ANSWER = ('Reply in this JSON format only, with your reasoning kept to one short sentence:\n'
           '{"score": [score1, score2], "reasoning": "..."}')
SC_PROMPT = ("You are an expert judge of AI image editing. The first image is the original, the second image is "
             "the result of editing it with the instruction below (the edit may have failed and left the image "
             "unchanged).\n"
             "Give two integer scores from 0 to 10:\n"
             "score1 = how well the edited image carries out the instruction (0: not at all, 10: perfectly);\n"
             "score2 = how little the edit over-does it (0: the image became something entirely different, 10: "
             "only what the instruction asks for changed, the rest is the original).\n"
             f"{_ANSWER}\n"
             "Editing instruction: {instruction}")
PQ_PROMPT = ("You are an expert judge of AI-generated images. Rate the image on two integer scores from 0 to 10:\n"
             "score1 = naturalness (0: looks unnatural, e.g. wrong lighting, shadows or sense of distance; 10: looks "
             "natural);\n"
             "score2 = absence of artifacts (0: heavy distortion, blur, broken bodies or faces, watermarks or "
             "pasted-in subjects; 10: no artifacts).\n"
             f"{_ANSWER}")


def sc_pq_overall(sc_scores: list[float] | None, pq_scores: list[float] | None) -> dict[str, float]:
    """VIEScore's numbers from the two replies' score pairs: SC = min, PQ = min, O = sqrt(SC · PQ)."""
    sc = min(sc_scores) if sc_scores else math.nan
    pq = min(pq_scores) if pq_scores else math.nan
    return {"semantics": sc, "quality": pq, "overall": math.sqrt(sc * pq) if sc_scores and pq_scores else math.nan}


def read_gedit(data: str | os.PathLike, language: str = "en") -> list[Sample]:
    rows = read_table_rows(Path(data), {"task_type", "key", "instruction", "instruction_language", "input_image"},
                           "GEdit-Bench")
    samples, seen = [], set()
    for row, base in rows:
        lang = str(row.get("instruction_language") or "")
        if language != "all" and lang != language:
            continue
        task, key = str(row.get("task_type") or "unknown"), str(row.get("key"))
        sid = f"{slug(task)}/{slug(lang)}/{slug(key)}"
        problem = None
        if sid in seen:
            problem = (BAD_ANNOTATION, f"duplicate key {key!r} in task {task!r} ({lang})")
            sid = f"{sid}__{len(samples)}"
        seen.add(sid)
        instruction = row.get("instruction")
        if problem is None and (not isinstance(instruction, str) or not instruction.strip()):
            problem = (BAD_ANNOTATION, "empty instruction")
        samples.append(Sample(id=sid, group=task, instruction=str(instruction or ""),
                              input=image_cell(row.get("input_image"), base), problem=problem,
                              data={"key": key, "language": lang, "task_type": task,
                                    "intersection": bool(row.get("Intersection_exist"))}))
    if not samples:
        raise BenchmarkError(f"GEdit-Bench data {os.fspath(data)!r}: no rows with instruction_language "
                             f"{language!r} (use --language all, en or cn)")
    return samples


class GEditBench(JudgedBenchmark):
    name = "gedit-bench"
    title = "GEdit-Bench"
    outputs_layout = "OUTPUTS/fullset/<task_type>/<language>/<key>.png"
    judge_metrics = {
        "semantics": ("G_SC (semantic consistency)", "min of the judge's editing-success and over-editing "
                      "scores, input + output shown", 0, 10),
        "quality": ("G_PQ (perceptual quality)", "min of the judge's naturalness and artifact scores, output "
                    "shown", 0, 10),
        "overall": ("G_O (overall)", "sqrt(G_SC · G_PQ)", 0, 10),
    }

    def __init__(self, data, *, language: str = "en"):
        super().__init__(data)
        self.language = language

    def read(self):
        return read_gedit(self.data, self.language), []

    def run_info(self):
        return {"data": os.fspath(self.data), "language": self.language}

    def output_path(self, sample, outputs):
        d = sample.data
        return outputs / "fullset" / d["task_type"] / d["language"] / f"{d['key']}.png"

    def judge(self, sample, inputs, output, record, judge):
        sc = ask_and_parse(judge, record, "semantic_consistency",
                           [inputs[0], output, SC_PROMPT.replace("{instruction}", sample.instruction)],
                           lambda r: parse_score_list(r, 2, 0, 10))
        pq = ask_and_parse(judge, record, "perceptual_quality", [output, PQ_PROMPT],
                           lambda r: parse_score_list(r, 2, 0, 10))
        return sc_pq_overall(sc, pq)
