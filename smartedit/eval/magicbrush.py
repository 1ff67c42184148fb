"""MagicBrush test set: reading both layouts, single-turn and multi-turn scoring, running a model.

Layouts (``--data``):

* the released test zip: ``DATA/edit_sessions.json`` (``{img_id: [{"input", "mask", "instruction", "output"},
  ...]}``, file names inside ``DATA/images/<img_id>/``: ``<id>-input.png``, ``<id>-output<t>.png``,
  ``<id>-mask<t>.png``) and, for CLIP-T, ``DATA/local_descriptions.json`` (``{img_id: {"<id>-output<t>.png":
  caption}}``); ``DATA`` may also be the folder that contains ``test/``;
* the Hugging Face parquet layout: ``*.parquet`` files (or one file) with columns ``img_id``, ``turn_index``,
  ``source_img``, ``mask_img``, ``instruction``, ``target_img`` (no captions: give ``--captions``).

Edited outputs (``OUTPUTS/<img_id>/``, MagicBrush's own evaluation layout): ``<id>_1.png`` (turn 1),
``<id>_inde_<t>.png`` (turn t edited independently from the ground-truth output of turn t−1) and
``<id>_iter_<t>.png`` (turn t edited from our own turn t−1 output).

Settings: **single-turn** = every turn, edited independently (``_1``, ``_inde_t``) vs that turn's ground
truth; **multi-turn** = the final turn of every session, edited iteratively (``_1`` for one-turn sessions, else
``_iter_T``) vs the final ground truth.

Metrics (output vs ground truth): L1 and L2 (= MSE) on [0, 1] after resizing the output to the ground truth's
size (bicubic), CLIP-I and DINO (each image preprocessed by the backbone's own transform), CLIP-T (output vs the
ground truth's local caption) and CLIP-T of the ground truth itself (oracle). MagicBrush reports these with
CLIP ViT-B/32 and DINO ViT-S/16. Masks are not used (mask-free editing).
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .benchmark import Benchmark, Sample, run_benchmark
from .clip_score import cosine
from .generate import EditJob, Editor, GenerationSettings
from .images import ImageSource, check_size, image_cell, describe_source, find_image, load_rgb, resize
from .pixel import l1, l2
from .results import (BAD_ANNOTATION, MISSING_OUTPUT, MISSING_TARGET, Aggregate, BenchmarkError, MetricInfo,
                      SampleResult, read_parquet_table)
from .runner import Backbones, EvalRun

logger = logging.getLogger(__name__)

__all__ = ["SINGLE", "MULTI", "Turn", "Session", "read_magicbrush", "output_stem", "metric_infos", "score_pair",
           "MagicBrush", "evaluate"]

SINGLE = "single-turn"
MULTI = "multi-turn"


@dataclass
class Turn:
    """One turn: ``input`` is the turn's source (the session's input for turn 1, the ground truth of turn t−1
    afterwards), ``target`` its ground-truth output."""

    session: str
    turn: int
    instruction: str
    input: ImageSource | None
    target: ImageSource | None
    mask: ImageSource | None
    target_name: str
    caption: str | None = None
    problem: tuple[str, str] | None = None


@dataclass
class Session:
    id: str
    turns: list[Turn] = field(default_factory=list)


def _session_key(sid: str) -> tuple[int, str]:
    return (int(sid), sid) if sid.isdigit() else (1 << 62, sid)


def output_stem(session: str, turn: int, mode: str) -> str:
    """MagicBrush's output names: ``<id>_1`` for turn 1, else ``<id>_inde_<t>`` / ``<id>_iter_<t>``."""
    if turn == 1:
        return f"{session}_1"
    if mode not in ("inde", "iter"):
        raise ValueError(f"mode must be 'inde' or 'iter', got {mode!r}")
    return f"{session}_{mode}_{turn}"


def _load_captions(path: Path | None) -> dict[str, Any] | None:
    if path is None:
        return None
    if not path.is_file():
        raise BenchmarkError(f"captions file {os.fspath(path)!r} does not exist (expected local_descriptions.json: "
                             f"{{img_id: {{'<id>-output<t>.png': caption}}}})")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"cannot read captions file {os.fspath(path)!r}: {e}") from e
    if not isinstance(data, dict):
        raise BenchmarkError(f"captions file {os.fspath(path)!r} must hold a JSON object")
    return data


def _caption(captions: dict[str, Any] | None, session: str, name: str) -> str | None:
    if captions is None:
        return None
    entry = captions.get(session)
    value = entry.get(name) if isinstance(entry, dict) else captions.get(name)
    return value if isinstance(value, str) and value.strip() else None


def _read_folder(root: Path, captions: dict[str, Any] | None) -> list[Session]:
    try:
        with open(root / "edit_sessions.json", encoding="utf-8") as f:
            raw = json.load(f)
    except (OSError, ValueError) as e:
        raise BenchmarkError(f"cannot read {os.fspath(root / 'edit_sessions.json')}: {e}") from e
    if not isinstance(raw, dict):
        raise BenchmarkError("edit_sessions.json must map img_id → list of turns")
    images = root / "images" if (root / "images").is_dir() else root
    sessions = []
    for sid in sorted(raw, key=_session_key):
        entries = raw[sid] if isinstance(raw[sid], list) else []
        session = Session(str(sid))
        folder = images / str(sid)
        for t, entry in enumerate(entries, start=1):
            entry = entry if isinstance(entry, dict) else {}
            missing = [k for k in ("input", "output", "instruction") if not isinstance(entry.get(k), str)]
            name = entry.get("output") if isinstance(entry.get("output"), str) else f"{sid}-output{t}.png"
            session.turns.append(Turn(
                session=str(sid), turn=t, instruction=str(entry.get("instruction") or ""),
                input=folder / entry["input"] if "input" not in missing else None,
                target=folder / name if "output" not in missing else None,
                mask=folder / entry["mask"] if isinstance(entry.get("mask"), str) else None,
                target_name=name, caption=_caption(captions, str(sid), name),
                problem=(BAD_ANNOTATION, f"edit_sessions.json turn {t} lacks {missing}") if missing else None))
        if not session.turns:
            logger.warning("MagicBrush session %s has no turns", sid)
        sessions.append(session)
    return sessions


def _read_parquet(files: list[Path], captions: dict[str, Any] | None) -> list[Session]:
    needed = {"img_id", "turn_index", "source_img", "instruction", "target_img"}
    rows: list[tuple[dict[str, Any], Path]] = []
    for file in files:
        table = read_parquet_table(file, needed, "MagicBrush", " (+ optional mask_img)")
        rows += [(r, file.parent) for r in table.to_pylist()]
    grouped: dict[str, list[tuple[dict[str, Any], Path]]] = {}
    for row, base in rows:
        grouped.setdefault(str(row["img_id"]), []).append((row, base))
    sessions = []
    for sid in sorted(grouped, key=_session_key):
        entries = sorted(grouped[sid], key=lambda rb: int(rb[0]["turn_index"]))
        indices = [int(r["turn_index"]) for r, _ in entries]
        duplicate = len(set(indices)) != len(indices)
        session = Session(sid)
        for t, (row, base) in enumerate(entries, start=1):
            name = f"{sid}-output{t}.png"
            session.turns.append(Turn(
                session=sid, turn=t, instruction=str(row.get("instruction") or ""),
                input=image_cell(row.get("source_img"), base), target=image_cell(row.get("target_img"), base),
                mask=image_cell(row.get("mask_img"), base), target_name=name, caption=_caption(captions, sid, name),
                problem=(BAD_ANNOTATION, f"duplicate turn_index values {indices}") if duplicate else None))
        sessions.append(session)
    return sessions


def read_magicbrush(data: str | os.PathLike, captions: str | os.PathLike | None = None
                    ) -> tuple[list[Session], bool]:
    """Sessions (sorted by id) and whether captions are available (for CLIP-T)."""
    p = Path(data)
    if p.is_dir() and not (p / "edit_sessions.json").is_file() and (p / "test" / "edit_sessions.json").is_file():
        p = p / "test"
    if p.is_dir() and (p / "edit_sessions.json").is_file():
        cap_path = Path(captions) if captions is not None else (
            p / "local_descriptions.json" if (p / "local_descriptions.json").is_file() else None)
        caps = _load_captions(cap_path)
        return _read_folder(p, caps), caps is not None
    files = [p] if p.is_file() and p.suffix == ".parquet" else sorted(p.rglob("*.parquet")) if p.is_dir() else []
    if not files:
        raise BenchmarkError(f"MagicBrush data {os.fspath(p)!r}: expected a folder with edit_sessions.json + "
                             f"images/<img_id>/ (the test zip) or parquet files with columns img_id, turn_index, "
                             f"source_img, mask_img, instruction, target_img")
    caps = _load_captions(Path(captions) if captions is not None else None)
    return _read_parquet(files, caps), caps is not None


def metric_infos(backbones: Backbones, with_captions: bool) -> dict[str, MetricInfo]:
    m = {
        "l1": MetricInfo("l1", "L1", "mean |output − ground truth| on [0,1] (output resized to the ground truth "
                                     "size, bicubic)", False),
        "l2": MetricInfo("l2", "L2 (MSE)", "mean (output − ground truth)² on [0,1] (MagicBrush's L2 = MSELoss)",
                         False),
    }
    if backbones.clip is not None:
        m["clip_i"] = MetricInfo("clip_i", "CLIP-I", "cosine of CLIP image embeddings, output vs ground truth",
                                 True, backbones.clip.info)
    if backbones.dino is not None:
        m["dino"] = MetricInfo("dino", "DINO", "cosine of DINO CLS features (resize 256, center crop 224), output "
                                               "vs ground truth", True, backbones.dino.info)
    if backbones.clip is not None and with_captions:
        m["clip_t"] = MetricInfo("clip_t", "CLIP-T", "cosine of the output's CLIP image embedding and the ground "
                                                     "truth's local caption embedding", True, backbones.clip.info)
        m["clip_t_gt"] = MetricInfo("clip_t_gt", "CLIP-T of ground truth (oracle)", "the same for the ground "
                                    "truth image itself", True, backbones.clip.info)
    return m


def score_pair(output: ImageSource | None, target: ImageSource | None, caption: str | None, backbones: Backbones,
               *, with_captions: bool, allow_size_mismatch: bool = False) -> tuple[dict[str, float], str | None]:
    """Metrics of one output against its ground truth (and a size note when a mismatch was allowed)."""
    out = load_rgb(output, MISSING_OUTPUT, "output")
    gt = load_rgb(target, MISSING_TARGET, "ground truth")
    note = check_size(gt.size, out.size, "output", allow=allow_size_mismatch)
    out_r = resize(out, gt.size, Image.Resampling.BICUBIC)
    m: dict[str, float] = {"l1": l1(out_r, gt), "l2": l2(out_r, gt)}
    emb = None
    if backbones.clip is not None:
        emb = backbones.clip.image_embeds([out, gt])
        m["clip_i"] = cosine(emb[0], emb[1])
    if backbones.dino is not None:
        m["dino"] = backbones.dino.similarity(out, gt)
    if emb is not None and with_captions:
        if caption:
            text = backbones.clip.text_embeds([caption])[0]
            m["clip_t"], m["clip_t_gt"] = cosine(emb[0], text), cosine(emb[1], text)
        else:
            m["clip_t"] = m["clip_t_gt"] = math.nan
    return m, note


def _generate(sessions: list[Session], editor: Editor, outputs: Path) -> dict[str, list[str]]:
    """Run turn 1, the independent turns, then the iterative chains level by level. Returns, per result id,
    the generation job ids it depends on."""
    def path(sid: str, turn: int, mode: str) -> Path:
        return outputs / sid / f"{output_stem(sid, turn, mode)}.png"

    usable = [s for s in sessions if s.turns and not any(t.problem for t in s.turns)]
    first = [EditJob(f"{s.id}/1", s.turns[0].input, s.turns[0].instruction, path(s.id, 1, "inde")) for s in usable]
    inde = [EditJob(f"{s.id}/inde{t.turn}", t.input, t.instruction, path(s.id, t.turn, "inde"))
            for s in usable for t in s.turns[1:]]
    editor.run(first + inde, desc="MagicBrush: turn 1 + independent turns")
    depth = max((len(s.turns) for s in usable), default=0)
    for level in range(2, depth + 1):
        jobs = []
        for s in usable:
            if len(s.turns) < level:
                continue
            prev = f"{s.id}/1" if level == 2 else f"{s.id}/iter{level - 1}"
            job_id = f"{s.id}/iter{level}"
            if prev in editor.failures:
                editor.failures[job_id] = f"previous turn failed ({prev})"
                continue
            turn = s.turns[level - 1]
            jobs.append(EditJob(job_id, path(s.id, level - 1, "iter"), turn.instruction, path(s.id, level, "iter")))
        editor.run(jobs, desc=f"MagicBrush: iterative turn {level}")
    deps = {}
    for s in usable:
        for t in s.turns:
            deps[f"{s.id}/turn{t.turn}"] = [f"{s.id}/1" if t.turn == 1 else f"{s.id}/inde{t.turn}"]
        deps[f"{s.id}/final"] = [f"{s.id}/1"] + [f"{s.id}/iter{k}" for k in range(2, len(s.turns) + 1)]
    return deps


class MagicBrush(Benchmark):
    """MagicBrush single- and multi-turn through the shared benchmark loop; a sample is a session (so a sharded
    run keeps each iterative chain in one process), its rows are every turn (single-turn) and the final turn
    (multi-turn)."""

    name = "magicbrush"
    title = "MagicBrush test"
    backbone_kinds = ("clip", "dino")
    seed_lists = True
    outputs_layout = "OUTPUTS/<img_id>/<id>_1.png, <id>_inde_<t>.png, <id>_iter_<t>.png"

    def __init__(self, data, *, captions: str | os.PathLike | None = None):
        super().__init__(data)
        self.captions = captions
        self.with_captions = False

    def read(self):
        sessions, self.with_captions = read_magicbrush(self.data, self.captions)
        self.sessions = sessions
        return [Sample(id=s.id, group=SINGLE, instruction=s.turns[0].instruction if s.turns else "",
                       input=s.turns[0].input if s.turns else None, data=s) for s in sessions], []

    def run_info(self):
        return {"data": os.fspath(self.data), "sessions": len(self.sessions),
                "turns": sum(len(s.turns) for s in self.sessions)}

    def output_path(self, sample, outputs):
        return outputs / sample.id / f"{output_stem(sample.id, 1, 'inde')}.png"

    def find_outputs(self, samples, outputs):
        found = {}
        for s in samples:
            for t in s.data.turns:
                for mode in ("inde", "iter"):
                    stem = output_stem(s.id, t.turn, mode)
                    for root in outputs:
                        p = find_image(root / s.id, stem)
                        if p is not None:
                            found[f"{s.id}/{stem}"] = p
                            break
        return found

    def generate(self, samples, editor, outputs):
        _generate([s.data for s in samples], editor, outputs)

    def job_ids(self, result):
        session, usable = result.payload[3], result.payload[4]
        if not usable:
            return []
        sid = session.id
        if result.id.endswith("/final"):
            return [f"{sid}/1"] + [f"{sid}/iter{k}" for k in range(2, len(session.turns) + 1)]
        turn = int(result.id.rsplit("/turn", 1)[1])
        return [f"{sid}/1" if turn == 1 else f"{sid}/inde{turn}"]

    def build_results(self, samples, found, outputs):
        results: list[SampleResult] = []
        root = outputs[0]

        def add(rid, group, turn, stem, problem, source, session):
            output = found.get(f"{turn.session}/{stem}") or root / turn.session / f"{stem}.png"
            r = SampleResult(id=rid, group=group, meta={
                "instruction": turn.instruction, "turn": turn.turn, "caption": turn.caption,
                "output": describe_source(output), "target": describe_source(turn.target)})
            r.visuals = [("input", source), ("output", output), ("ground truth", turn.target), ("mask", turn.mask)]
            usable = bool(session.turns) and not any(t.problem for t in session.turns)
            r.payload = (output, turn.target, turn.caption, session, usable)
            if problem is not None:
                r.fail(*problem)
            results.append(r)

        for sample in samples:
            s = sample.data
            for t in s.turns:
                add(f"{s.id}/turn{t.turn}", SINGLE, t, output_stem(s.id, t.turn, "inde"), t.problem, t.input, s)
        for sample in samples:
            s = sample.data
            if not s.turns:
                continue
            bad = next((t.problem for t in s.turns if t.problem), None)
            add(f"{s.id}/final", MULTI, s.turns[-1], output_stem(s.id, len(s.turns), "iter"), bad,
                s.turns[0].input, s)
        return results

    def metric_infos(self, ctx):
        return metric_infos(ctx.backbones, self.with_captions)

    def score(self, result, ctx):
        output, target, caption = result.payload[:3]
        metrics, note = score_pair(output, target, caption, ctx.backbones, with_captions=self.with_captions,
                                   allow_size_mismatch=ctx.allow_size_mismatch)
        if note:
            result.meta["note"] = note
        return metrics

    def aggregates(self, samples):
        return [Aggregate(SINGLE, (SINGLE,)), Aggregate(MULTI, (MULTI,))]

    def notes(self, ctx):
        from .clip_score import variant_note

        notes = []
        if ctx.backbones.clip is not None and not self.with_captions:
            notes.append("CLIP-T not computed: no local captions (local_descriptions.json or --captions)")
        return notes + variant_note(ctx.backbones.clip, "ViT-B/32", "MagicBrush")


def evaluate(data: str | os.PathLike, *, out: str | os.PathLike, outputs: str | os.PathLike | None = None,
             model: str | os.PathLike | None = None, clip: str | os.PathLike | None = None,
             dino: str | os.PathLike | None = None, captions: str | os.PathLike | None = None,
             settings: GenerationSettings | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
             skip_existing: bool = False, allow_size_mismatch: bool = False, limit: int | None = None,
             max_visual: int = 16, shard=None) -> EvalRun:
    """Score MagicBrush single- and multi-turn (running ``model`` first, or reading ``outputs``)."""
    if (outputs is None) == (model is None):
        raise ValueError("give exactly one of outputs= (score existing edits) or model= (run a model)")
    bench = MagicBrush(data, captions=captions)
    backbones = Backbones.load(clip=clip, dino=dino, device=device, wanted=("clip", "dino"))
    editor = None
    if model is not None:
        editor = Editor(model, settings or GenerationSettings(), device=device, dtype=dtype,
                        skip_existing=skip_existing)
    return run_benchmark(bench, out=out, outputs=outputs, editor=editor, backbones=backbones, limit=limit,
                         max_visual=max_visual, allow_size_mismatch=allow_size_mismatch, shard=shard)
