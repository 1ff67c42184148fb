"""Reason-Edit (SmartEdit's benchmark): reading the layout, scoring, running a model.

Layout (``DATA/``): category folders ``1-Left-Right``, ``2-Relative-Size``, ``3-Mirror``, ``4-Color``,
``5-Multiple-Objects`` (understanding) and ``6-Reasoning`` (a folder whose name starts or ends with the
category's words, e.g. ``Reasoning-231115``, is accepted too), at most two levels below ``DATA``. Each holds
``<stem>.png`` inputs, ``<stem>_mask.jpg`` edit masks (white = edit region) and one ``*.txt`` file whose i-th
non-empty line ``<instruction> CLIP: <target phrase>`` belongs to the i-th input in sorted file-name order
(the order SmartEdit's released script pairs them in). Masks are paired by stem, not by sorted position (the
reference's positional pairing misaligns ``10_mask.jpg`` / ``1_mask.jpg`` when names are unpadded numbers).

Edited outputs: ``OUTPUTS/<category>/<stem>.png`` (``.jpg``/``.jpeg``/``.webp``/``.bmp`` also found). Optional
ground truth (synthetic test sets that have it): ``TARGETS/<category>/<stem>.png``.

Metrics at 256 × 256 (inputs and outputs bicubic-resized, masks nearest-resized; edit region = mask > 127):
background-only PSNR / SSIM / LPIPS / MSE and the same four in the reference convention (see
:mod:`smartedit.eval.pixel`), and the CLIP score of the output cropped to the edit mask's bounding box against
the ``CLIP:`` phrase. With targets: edit-region IoU (changed pixels = max-channel |output − input| >
``change_threshold`` vs the edit mask), PSNR vs the target inside the edit mask and over the whole image.
Summary rows: every category, ``understanding`` (categories 1–5 pooled) and ``reasoning``.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .generate import EditJob, Editor, GenerationSettings
from .images import check_size, describe_source, find_image, load_gray, load_rgb, resize
from .pixel import as_chw, background_metrics, change_mask, iou, psnr, reference_metrics
from .report import write_report
from .results import (BAD_ANNOTATION, EMPTY_MASK, FULL_MASK, GENERATION_FAILED, MISSING_INPUT, MISSING_MASK,
                      MISSING_OUTPUT, MISSING_TARGET, Aggregate, BenchmarkError, MetricInfo, SampleProblem,
                      SampleResult)
from .runner import Backbones, EvalRun, score_samples

logger = logging.getLogger(__name__)

__all__ = ["CATEGORIES", "UNDERSTANDING", "REASONING", "METRIC_SIZE", "MASK_THRESHOLD", "DEFAULT_CHANGE_THRESHOLD",
           "ReasonEditSample", "match_category", "find_category_dirs", "parse_line", "read_reason_edit",
           "metric_infos", "score_sample", "evaluate"]

CATEGORIES = ("1-Left-Right", "2-Relative-Size", "3-Mirror", "4-Color", "5-Multiple-Objects", "6-Reasoning")
UNDERSTANDING = CATEGORIES[:5]
REASONING = CATEGORIES[5:]
EXTRA_CATEGORIES = ("7-Simple",)
"""Optional categories outside the benchmark, scored when present: ``7-Simple`` holds plain edits (recolour /
remove / replace a shape named outright) in synthetic sets such as ShapesWorld's; never in the totals."""
METRIC_SIZE = 256
MASK_THRESHOLD = 127
DEFAULT_CHANGE_THRESHOLD = 0.1
_CLIP_SPLIT = re.compile(r"\s*CLIP:\s*")


@dataclass
class ReasonEditSample:
    """One benchmark entry; ``problem`` (status, message) when the benchmark data for it is incomplete."""

    id: str
    category: str
    stem: str
    input_path: Path
    mask_path: Path | None
    instruction: str | None
    clip_text: str | None
    line: int | None
    problem: tuple[str, str] | None = None


def match_category(name: str) -> str | None:
    """The canonical category of a folder name (exact, or starting / ending with the category's words)."""
    if name in CATEGORIES + EXTRA_CATEGORIES:
        return name
    low = name.lower()
    for cat in CATEGORIES:
        words = cat.split("-", 1)[1].lower()
        if low.endswith(words) or low.startswith(words):
            return cat
    return None


def find_category_dirs(root: Path, max_depth: int = 2) -> dict[str, Path]:
    """Category → folder, searching ``root`` and up to ``max_depth`` levels below, shallowest first (category
    folders are not searched further); two folders for one category at the same depth is an error."""
    found: dict[str, Path] = {}
    level = [root]
    for _ in range(max_depth):
        matched: dict[str, list[Path]] = {}
        next_level = []
        for folder in level:
            for child in sorted(p for p in folder.iterdir() if p.is_dir()):
                cat = match_category(child.name)
                if cat is None:
                    next_level.append(child)
                elif cat not in found:
                    matched.setdefault(cat, []).append(child)
        ambiguous = {c: [os.fspath(p) for p in ps] for c, ps in matched.items() if len(ps) > 1}
        if ambiguous:
            raise BenchmarkError(f"Reason-Edit data {os.fspath(root)!r}: several folders for one category: "
                                 f"{ambiguous}")
        found.update({c: ps[0] for c, ps in matched.items()})
        level = next_level
    return {c: found[c] for c in CATEGORIES + EXTRA_CATEGORIES if c in found}


def parse_line(line: str) -> tuple[str, str] | None:
    """``"<instruction> CLIP: <phrase>"`` → (instruction, phrase); None if malformed."""
    parts = _CLIP_SPLIT.split(line.strip(), maxsplit=1)
    if len(parts) != 2 or not parts[0].strip() or not parts[1].strip():
        return None
    return parts[0].strip(), parts[1].strip()


def read_reason_edit(root: str | os.PathLike) -> tuple[list[ReasonEditSample], list[str]]:
    """Every sample of every category found (in category order), and notes about the data (missing folders,
    line-count mismatches). Raises BenchmarkError if ``root`` is not a Reason-Edit folder at all."""
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkError(f"Reason-Edit data folder {os.fspath(root)!r} does not exist; expected category "
                             f"folders {', '.join(CATEGORIES)} inside it")
    dirs = find_category_dirs(root)
    if not dirs:
        raise BenchmarkError(f"no Reason-Edit category folders in {os.fspath(root)!r}; expected "
                             f"{', '.join(CATEGORIES)}, each with <stem>.png, <stem>_mask.jpg and one .txt file")
    notes = [f"category folder {c} not found under the data folder" for c in CATEGORIES if c not in dirs]
    samples: list[ReasonEditSample] = []
    for cat, folder in dirs.items():
        inputs = sorted(p for p in folder.glob("*.png") if not p.stem.endswith("_mask"))
        texts = sorted(folder.glob("*.txt"))
        lines: list[str] = []
        text_problem = None
        if len(texts) != 1:
            text_problem = (BAD_ANNOTATION, f"expected one .txt file in {os.fspath(folder)}, found "
                                            f"{[t.name for t in texts]}")
        else:
            try:
                lines = [ln for ln in texts[0].read_text(encoding="utf-8").splitlines() if ln.strip()]
            except (OSError, UnicodeDecodeError) as e:
                text_problem = (BAD_ANNOTATION, f"cannot read {os.fspath(texts[0])}: {e}")
        if text_problem is None and len(lines) != len(inputs):
            notes.append(f"{cat}: {len(lines)} instruction lines for {len(inputs)} input images")
            logger.warning(notes[-1])
        for i, path in enumerate(inputs):
            mask = find_image(folder, f"{path.stem}_mask")
            instruction = clip_text = None
            problem = text_problem
            if problem is None:
                if i >= len(lines):
                    problem = (BAD_ANNOTATION, f"no instruction line {i + 1} in {texts[0].name}")
                else:
                    parsed = parse_line(lines[i])
                    if parsed is None:
                        problem = (BAD_ANNOTATION, f"line {i + 1} of {texts[0].name} is not "
                                                   f"'<instruction> CLIP: <phrase>': {lines[i]!r}")
                    else:
                        instruction, clip_text = parsed
            if problem is None and mask is None:
                problem = (MISSING_MASK, f"{path.stem}_mask.jpg not found in {os.fspath(folder)}")
            samples.append(ReasonEditSample(id=f"{cat}/{path.stem}", category=cat, stem=path.stem,
                                            input_path=path, mask_path=mask, instruction=instruction,
                                            clip_text=clip_text, line=i + 1 if i < len(lines) else None,
                                            problem=problem))
    return samples, notes


def metric_infos(backbones: Backbones, with_targets: bool = False,
                 change_threshold: float = DEFAULT_CHANGE_THRESHOLD) -> dict[str, MetricInfo]:
    bg = "over background pixels only (outside the edit mask), input vs output at 256²"
    ref = ("reference convention: both images × (1 − mask/255), i.e. edit region zeroed, whole-image value "
           "(inflated; for comparison with published numbers)")
    lp = None if backbones.lpips is None else backbones.lpips.info
    m = {
        "psnr_bg": MetricInfo("psnr_bg", "PSNR bg (dB)", f"PSNR {bg}", True),
        "ssim_bg": MetricInfo("ssim_bg", "SSIM bg", f"mean SSIM map {bg}", True),
        "lpips_bg": MetricInfo("lpips_bg", "LPIPS bg", f"LPIPS-squeeze, layer maps weighted by background "
                                                      f"fraction, {bg}", False, lp),
        "mse_bg": MetricInfo("mse_bg", "MSE bg", f"MSE on [0,1] {bg}", False),
        "psnr_ref": MetricInfo("psnr_ref", "PSNR ref (dB)", f"PSNR, {ref}", True),
        "ssim_ref": MetricInfo("ssim_ref", "SSIM ref", f"SSIM, {ref}", True),
        "lpips_ref": MetricInfo("lpips_ref", "LPIPS ref", f"LPIPS-squeeze, {ref}", False, lp),
        "mse_ref": MetricInfo("mse_ref", "MSE ref", f"MSE, {ref}", False),
    }
    if backbones.lpips is None:
        del m["lpips_bg"], m["lpips_ref"]
    if backbones.clip is not None:
        m["clip_crop"] = MetricInfo("clip_crop", "CLIP score (mask bbox)", "100·max(cos, 0) between the CLIP "
                                    "embeddings of the output cropped to the edit mask's bounding box (at 256²) "
                                    "and the CLIP: phrase", True, backbones.clip.info)
    if with_targets:
        m["edit_iou"] = MetricInfo("edit_iou", "edit-region IoU", f"IoU of changed pixels (max-channel |output − "
                                   f"input| > {change_threshold} on [0,1], at 256²) with the edit mask", True)
        m["psnr_fg_target"] = MetricInfo("psnr_fg_target", "PSNR fg vs target (dB)", "PSNR between output and "
                                         "ground-truth target inside the edit mask, at 256²", True)
        m["psnr_target"] = MetricInfo("psnr_target", "PSNR vs target (dB)", "PSNR between output and "
                                      "ground-truth target over the whole image, at 256²", True)
    return m


def score_sample(sample: ReasonEditSample, output: Path | None, backbones: Backbones, *,
                 target: Path | None = None, with_targets: bool = False,
                 change_threshold: float = DEFAULT_CHANGE_THRESHOLD, allow_size_mismatch: bool = False,
                 size: int = METRIC_SIZE) -> tuple[dict[str, float], list[str]]:
    """All metrics of one sample (and notes); raises SampleProblem for anything that prevents scoring."""
    notes: list[str] = []
    inp = load_rgb(sample.input_path, MISSING_INPUT, "input")
    mask = load_gray(sample.mask_path, MISSING_MASK, "mask")
    out = load_rgb(output, MISSING_OUTPUT, "output")
    check_size(inp.size, mask.size, "mask")
    note = check_size(inp.size, out.size, "output", allow=allow_size_mismatch)
    notes += [note] if note else []
    tgt = None
    if with_targets:
        tgt = load_rgb(target, MISSING_TARGET, "target")
        note = check_size(inp.size, tgt.size, "target", allow=allow_size_mismatch)
        notes += [note] if note else []

    square = (size, size)
    inp_s = resize(inp, square, Image.Resampling.BICUBIC)
    out_s = resize(out, square, Image.Resampling.BICUBIC)
    gray = np.asarray(resize(mask, square, Image.Resampling.NEAREST), dtype=np.float64)
    edit = gray > MASK_THRESHOLD
    if not edit.any():
        raise SampleProblem(EMPTY_MASK, f"mask has no pixel > {MASK_THRESHOLD} at {size}x{size}")
    if edit.all():
        raise SampleProblem(FULL_MASK, f"mask covers the whole image at {size}x{size}")
    a, b = as_chw(inp_s), as_chw(out_s)
    keep_soft = torch.from_numpy(1.0 - gray / 255.0)
    metrics = background_metrics(a, b, edit)
    metrics.update(reference_metrics(a, b, keep_soft))
    if backbones.lpips is not None:  # one batched pass: [background-only, reference convention (plain mean)]
        w = keep_soft[None]
        weights = torch.stack([torch.from_numpy(~edit).double(), torch.ones_like(keep_soft)])
        both = backbones.lpips.masked(torch.stack([a, a * w]).float(), torch.stack([b, b * w]).float(), weights)
        metrics["lpips_bg"], metrics["lpips_ref"] = float(both[0]), float(both[1])
    if backbones.clip is not None:
        metrics["clip_crop"] = backbones.clip.crop_clip_score(out_s, edit, sample.clip_text or "")
    if tgt is not None:
        t = as_chw(resize(tgt, square, Image.Resampling.BICUBIC))
        metrics["edit_iou"] = iou(change_mask(a, b, change_threshold), torch.from_numpy(edit))
        metrics["psnr_fg_target"] = psnr(b, t, torch.from_numpy(edit).double())
        metrics["psnr_target"] = psnr(b, t)
    ordered = [k for k in metric_infos(backbones, with_targets, change_threshold) if k in metrics]
    return {k: metrics[k] for k in ordered}, notes


def evaluate(data: str | os.PathLike, *, out: str | os.PathLike, outputs: str | os.PathLike | None = None,
             model: str | os.PathLike | None = None, clip: str | os.PathLike | None = None,
             lpips: str | os.PathLike | None = None, targets: str | os.PathLike | None = None,
             settings: GenerationSettings | None = None, device: str = "cpu", dtype: torch.dtype | None = None,
             skip_existing: bool = False, change_threshold: float = DEFAULT_CHANGE_THRESHOLD,
             allow_size_mismatch: bool = False, limit: int | None = None, max_visual: int = 16,
             editor: Editor | None = None) -> EvalRun:
    """Score Reason-Edit (running ``model`` or a ready ``editor`` first, or reading ``outputs``) and write the
    report into ``out``."""
    if sum(x is not None for x in (outputs, model, editor)) != 1:
        raise ValueError("give exactly one of outputs= (score existing edits), model= (run a SmartEdit model) or "
                         "editor= (run any Editor, e.g. smartedit.eval.generate.IP2PEditor)")
    if outputs is not None and not Path(outputs).is_dir():
        raise BenchmarkError(f"outputs folder {os.fspath(outputs)!r} does not exist; expected "
                             f"OUTPUTS/<category>/<stem>.png")
    if targets is not None and not Path(targets).is_dir():
        raise BenchmarkError(f"targets folder {os.fspath(targets)!r} does not exist; expected "
                             f"TARGETS/<category>/<stem>.png")
    samples, notes = read_reason_edit(data)
    if limit is not None:
        samples = samples[:limit]
    backbones = Backbones.load(clip=clip, lpips=lpips, device=device, wanted=("clip", "lpips"))
    notes += backbones.notes()
    from .clip_score import variant_note

    notes += variant_note(backbones.clip, "ViT-L/14", "Reason-Edit")
    out = Path(out)
    run_info: dict = {"data": os.fspath(data), "metric_size": METRIC_SIZE, "mask_threshold": MASK_THRESHOLD}
    if model is not None:
        editor = Editor(model, settings or GenerationSettings(), device=device, dtype=dtype,
                        skip_existing=skip_existing)
    if editor is not None:
        outputs = out / "outputs"
        jobs = [EditJob(s.id, s.input_path, s.instruction or "", Path(outputs) / s.category / f"{s.stem}.png")
                for s in samples if s.problem is None]
        editor.run(jobs, desc="Reason-Edit: editing")
        run_info["generation"] = editor.info
    run_info["outputs"] = os.fspath(outputs)
    if targets is not None:
        run_info["targets"] = os.fspath(targets)
        run_info["change_threshold"] = change_threshold

    results = []
    for s in samples:
        # not found → the expected .png path, so the "missing" message names it
        output = find_image(Path(outputs) / s.category, s.stem) or Path(outputs) / s.category / f"{s.stem}.png"
        target = None
        if targets is not None:
            target = find_image(Path(targets) / s.category, s.stem) or Path(targets) / s.category / f"{s.stem}.png"
        r = SampleResult(id=s.id, group=s.category, meta={
            "instruction": s.instruction, "clip_text": s.clip_text, "input": describe_source(s.input_path),
            "mask": describe_source(s.mask_path), "output": describe_source(output)})
        if targets is not None:
            r.meta["target"] = describe_source(target)
        if editor is not None:
            r.meta["seed"] = editor.seeds.get(s.id)
        r.visuals = [("input", s.input_path), ("output", output), ("mask", s.mask_path)]
        if targets is not None:
            r.visuals.append(("target", target))
        if s.problem is not None:
            r.fail(*s.problem)
        elif editor is not None and s.id in editor.failures:
            r.fail(GENERATION_FAILED, editor.failures[s.id])
        results.append(r)

    by_id = {s.id: s for s in samples}
    paths = {r.id: (r.meta["output"], r.meta.get("target")) for r in results}

    def fn(r: SampleResult) -> dict[str, float]:
        output, target = paths[r.id]
        metrics, sample_notes = score_sample(
            by_id[r.id], Path(output) if output else None, backbones, target=Path(target) if target else None,
            with_targets=targets is not None, change_threshold=change_threshold,
            allow_size_mismatch=allow_size_mismatch)
        if sample_notes:
            r.meta["note"] = "; ".join(sample_notes)
        return metrics

    score_samples(results, fn, desc="Reason-Edit: scoring")
    present = {s.category for s in samples}
    aggregates = [Aggregate(c, (c,)) for c in CATEGORIES + tuple(c for c in EXTRA_CATEGORIES if c in present)]
    aggregates += [Aggregate("understanding", UNDERSTANDING), Aggregate("reasoning", REASONING)]
    summary = write_report(out, benchmark="reason-edit", title="Reason-Edit", results=results,
                           metrics=metric_infos(backbones, targets is not None, change_threshold),
                           aggregates=aggregates, run_info=run_info, notes=notes, max_visual=max_visual)
    return EvalRun(summary=summary, results=results, out_dir=out)
