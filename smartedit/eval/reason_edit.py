"""Reason-Edit (SmartEdit's benchmark): reading the layout, scoring, running a model.

Layout (``DATA/``): category folders ``1-Left-Right``, ``2-Relative-Size``, ``3-Mirror``, ``4-Color``,
``5-Multiple-Objects`` (understanding) and ``6-Reasoning`` (a folder whose name starts or ends with the
category's words, e.g. ``Reasoning-231115``, is accepted too), at most two levels below ``DATA``. Each holds
``<stem>.png`` inputs, ``<stem>_mask.jpg`` edit masks (white = edit region) and one ``*.txt`` file whose i-th
non-empty line ``<instruction> CLIP: <target phrase>`` belongs to the i-th input in sorted file-name order
(the order SmartEdit's released script pairs them in). Masks are paired by stem, not by sorted position (the
reference's positional pairing misaligns ``10_mask.jpg`` / ``1_mask.jpg`` when names are unpadded numbers).

Edited outputs, in either layout (auto-detected, or named with ``layout=``):

* ``ours``: ``OUTPUTS/<category>/<stem>.png`` (``.jpg``/``.jpeg``/``.webp``/``.bmp`` also found);
* ``reference``: what SmartEdit's ``test/DS_SmartEdit_test.py`` writes, ``<save_dir>/<Name>_metrics_<k>/
  <NNNN>_T<text guidance>_I<image guidance>.png`` (``Name`` = ``LeftRight``, ``RelativeSize``, ``Mirror``,
  ``Color``, ``MultipleObjects``, ``Reasoning``; ``NNNN`` = the sample's 1-based position in sorted input order),
  or its guidance-sweep folders ``<Name>_<k>/`` / ``Reasoning/`` holding one file per guidance pair (pick one with
  ``output_guidance=(T, I)``). The understanding and reasoning runs may live in two folders (give both) or under
  one parent; the guidance values are read from each file name.

Optional ground truth (synthetic test sets that have it): ``TARGETS/<category>/<stem>.png``.

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

from .benchmark import Benchmark, Context, Sample, run_benchmark
from .generate import Editor, GenerationSettings
from .images import IMAGE_EXTENSIONS, check_size, describe_source, find_image, load_gray, load_rgb, resize
from .judge import ask_and_parse, parse_yes_no
from .pixel import PSNR_MAX_DB, as_chw, background_metrics, change_mask, iou, psnr, reference_metrics
from .results import (BAD_ANNOTATION, EMPTY_MASK, FULL_MASK, MISSING_INPUT, MISSING_MASK, MISSING_OUTPUT,
                      MISSING_TARGET, Aggregate, BenchmarkError, MetricInfo, SampleProblem, SampleResult)
from .runner import Backbones, EvalRun

logger = logging.getLogger(__name__)

__all__ = ["CATEGORIES", "UNDERSTANDING", "REASONING", "METRIC_SIZE", "MASK_THRESHOLD", "DEFAULT_CHANGE_THRESHOLD",
           "LAYOUTS", "REFERENCE_NAMES", "INS_ALIGN_PROMPT", "ReasonEditSample", "OutputFile", "match_category",
           "find_category_dirs", "parse_line", "parse_reference_name", "read_reason_edit", "discover_outputs",
           "metric_infos", "score_sample", "ReasonEdit", "evaluate"]

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
    position: int = 0
    """1-based position among the category's inputs in sorted file-name order (the reference's NNNN)."""


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
                                            problem=problem, position=i + 1))
    return samples, notes



# ---- where the edited outputs are ---------------------------------------------------------------------------
OURS, REFERENCE = "ours", "reference"
LAYOUTS = {
    OURS: "OUTPUTS/<category>/<stem>.png (category = 1-Left-Right ... 6-Reasoning)",
    REFERENCE: "SmartEdit's test/DS_SmartEdit_test.py output: <save_dir>/<Name>_metrics_<k>/<NNNN>_T<t>_I<i>.png "
               "(Name = LeftRight, RelativeSize, Mirror, Color, MultipleObjects, Reasoning; NNNN = 1-based "
               "position in sorted input order), or the sweep folders <Name>_<k>/, Reasoning/",
}
REFERENCE_NAMES = {"LeftRight": "1-Left-Right", "RelativeSize": "2-Relative-Size", "Mirror": "3-Mirror",
                   "Color": "4-Color", "MultipleObjects": "5-Multiple-Objects", "Reasoning": "6-Reasoning"}
_REF_DIR = re.compile(r"^(" + "|".join(REFERENCE_NAMES) + r")(_metrics)?(?:_(\d+))?$")
_REF_FILE = re.compile(r"^(\d+)_T(-?\d+(?:\.\d+)?)_I(-?\d+(?:\.\d+)?)$")
_SEARCH_DEPTH = 3


@dataclass(frozen=True)
class OutputFile:
    """An edited output found for a sample, with the guidance values its file name records (reference layout)."""

    path: Path
    layout: str
    text_guidance: float | None = None
    image_guidance: float | None = None


def parse_reference_name(stem: str) -> tuple[int, float, float] | None:
    """``"0007_T7.5_I1.5"`` → (7, 7.5, 1.5); None for any other name."""
    m = _REF_FILE.match(stem)
    return (int(m.group(1)), float(m.group(2)), float(m.group(3))) if m else None


def _walk_dirs(root: Path, depth: int = _SEARCH_DEPTH) -> list[Path]:
    out, level = [], [root]
    for _ in range(depth + 1):
        out += level
        level = [c for d in level for c in sorted(p for p in d.iterdir() if p.is_dir())]
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def _find_ours(roots: list[Path]) -> dict[str, Path]:
    """Category folders with images directly in a root, else one level below it (several runs there: error)."""
    found: dict[str, list[Path]] = {}
    for root in roots:
        here: dict[str, list[Path]] = {}
        for level in ([root], sorted(p for p in root.iterdir() if p.is_dir())):
            for folder in level:
                for child in sorted(p for p in folder.iterdir() if p.is_dir()):
                    cat = None if _REF_DIR.match(child.name) else match_category(child.name)
                    if cat is not None and _images(child):
                        here.setdefault(cat, []).append(child)
            if here:
                break
        for cat, folders in here.items():
            found.setdefault(cat, []).extend(folders)
    ambiguous = {c: [os.fspath(p) for p in ps] for c, ps in found.items() if len(ps) > 1}
    if ambiguous:
        raise BenchmarkError(f"several output folders for one category: {ambiguous}; give --outputs the one to "
                             f"score")
    return {c: ps[0] for c, ps in found.items()}


def _find_reference(roots: list[Path]) -> dict[str, list[Path]]:
    """Category → its reference-layout folders: the ``_metrics_`` folders if any, else the sweep folders."""
    metrics: dict[str, list[Path]] = {}
    sweep: dict[str, list[Path]] = {}
    for root in roots:
        for folder in _walk_dirs(root):
            m = _REF_DIR.match(folder.name)
            if m is None:
                continue
            if not any(parse_reference_name(p.stem) for p in _images(folder)):
                continue
            cat = REFERENCE_NAMES[m.group(1)]
            (metrics if m.group(2) else sweep).setdefault(cat, []).append(folder)
    out = {}
    for cat in CATEGORIES:
        chosen = metrics.get(cat) or sweep.get(cat)
        if chosen:
            if len(chosen) > 1:
                raise BenchmarkError(f"{cat}: several reference-layout output folders "
                                     f"{[os.fspath(p) for p in chosen]}; give --outputs the run to score (e.g. "
                                     f"its Understand-<steps>/ and Reason-<steps>/ folders)")
            out[cat] = chosen
    return out


def discover_outputs(samples: list[ReasonEditSample], roots: list[Path], layout: str = "auto",
                     output_guidance: tuple[float, float] | None = None
                     ) -> tuple[str, dict[str, OutputFile], dict[str, str]]:
    """(layout used, sample id → output found, sample id → why its output is ambiguous or absent).

    ``auto`` picks the layout whose folders exist (nothing found: an empty mapping, which the benchmark loop
    reports as an error naming both layouts). In the reference layout the NNNN of a file is the sample's
    position; several guidance pairs for one sample need ``output_guidance`` (else that is an error listing the
    pairs found)."""
    if layout not in ("auto", OURS, REFERENCE):
        raise ValueError(f"layout must be 'auto', 'ours' or 'reference', got {layout!r}")
    ours = _find_ours(roots) if layout in ("auto", OURS) else {}
    ref = _find_reference(roots) if layout in ("auto", REFERENCE) else {}
    if layout == "auto":
        if ours and ref:
            raise BenchmarkError(f"{', '.join(map(os.fspath, roots))} holds outputs in both layouts ({sorted(ours)} "
                                 f"as {OURS}, {sorted(ref)} as {REFERENCE}); choose one with --layout")
        layout = REFERENCE if ref else OURS
    found: dict[str, OutputFile] = {}
    problems: dict[str, str] = {}
    if layout == OURS:
        for s in samples:
            folder = ours.get(s.category)
            p = find_image(folder, s.stem) if folder is not None else None
            if p is not None:
                found[s.id] = OutputFile(p, OURS)
        return layout, found, problems
    by_cat: dict[str, dict[int, list[OutputFile]]] = {}
    for cat, folders in ref.items():
        table = by_cat.setdefault(cat, {})
        for folder in folders:
            for p in _images(folder):
                parsed = parse_reference_name(p.stem)
                if parsed is not None:
                    table.setdefault(parsed[0], []).append(OutputFile(p, REFERENCE, parsed[1], parsed[2]))
    for s in samples:
        candidates = by_cat.get(s.category, {}).get(s.position, [])
        if output_guidance is not None:
            t, i = output_guidance
            candidates = [c for c in candidates if (c.text_guidance, c.image_guidance) == (float(t), float(i))]
        if len(candidates) == 1:
            found[s.id] = candidates[0]
        elif candidates:
            pairs = sorted({(c.text_guidance, c.image_guidance) for c in candidates})
            raise BenchmarkError(f"{s.id}: {len(candidates)} outputs with guidance (T, I) {pairs} in "
                                 f"{os.fspath(candidates[0].path.parent)}; choose one with --output-guidance T,I")
        else:
            folder = ref.get(s.category)
            problems[s.id] = (f"no {s.position:04d}_T*_I*.png in {os.fspath(folder[0])}" if folder else
                              f"no reference-layout folder for {s.category} "
                              f"({[k for k, v in REFERENCE_NAMES.items() if v == s.category][0]}_metrics_<k>/)")
    return layout, found, problems


# ---- metrics -----------------------------------------------------------------------------------------------
INS_ALIGN_PROMPT = ("The first image is an original photo and the second image is an edited version of it. "
                    "The editing instruction was: \"{instruction}\"\n"
                    "Did the edit carry out the instruction on the right object or region, as the instruction "
                    "asks? Answer with one word: yes or no.")
"""The instruction-alignment question put to the judge (SmartEdit's Ins-align: the share of edits that follow
the instruction, judged there by people; here by the local VLM)."""


def metric_infos(backbones: Backbones, with_targets: bool = False,
                 change_threshold: float = DEFAULT_CHANGE_THRESHOLD, judge=None) -> dict[str, MetricInfo]:
    bg = "over background pixels only (outside the edit mask), input vs output at 256²"
    ref = ("reference convention: both images × (1 − mask/255), i.e. edit region zeroed, whole-image value "
           "(inflated; for comparison with published numbers)")
    lp = None if backbones.lpips is None else backbones.lpips.info
    cap = f"; identical pixels give the {PSNR_MAX_DB:g} dB cap"
    m = {
        "psnr_bg": MetricInfo("psnr_bg", "PSNR bg (dB)", f"PSNR {bg}{cap}", True, cap=PSNR_MAX_DB),
        "ssim_bg": MetricInfo("ssim_bg", "SSIM bg", f"mean SSIM map {bg}", True),
        "lpips_bg": MetricInfo("lpips_bg", "LPIPS bg", f"LPIPS-squeeze, layer maps weighted by background "
                                                      f"fraction, {bg}", False, lp),
        "mse_bg": MetricInfo("mse_bg", "MSE bg", f"MSE on [0,1] {bg}", False),
        "psnr_ref": MetricInfo("psnr_ref", "PSNR ref (dB)", f"PSNR, {ref}{cap}", True, cap=PSNR_MAX_DB),
        "ssim_ref": MetricInfo("ssim_ref", "SSIM ref", f"SSIM, {ref}", True),
        "lpips_ref": MetricInfo("lpips_ref", "LPIPS ref", f"LPIPS-squeeze, {ref}", False, lp),
        "mse_ref": MetricInfo("mse_ref", "MSE ref", f"MSE, {ref}", False),
        "unchanged": MetricInfo("unchanged", "unchanged outputs", "output identical to the input at 256² (no "
                                "edit; its PSNRs sit at the cap)", None, count=True),
    }
    if backbones.lpips is None:
        del m["lpips_bg"], m["lpips_ref"]
    if backbones.clip is not None:
        m["clip_crop"] = MetricInfo("clip_crop", "CLIP score (mask bbox)", "100·max(cos, 0) between the CLIP "
                                    "embeddings of the output cropped to the edit mask's bounding box (at 256²) "
                                    "and the CLIP: phrase", True, backbones.clip.info)
    if judge is not None:
        m["ins_align"] = MetricInfo("ins_align", "Ins-align (VLM judge)", "share of edits the local VLM judge "
                                    "says follow the instruction (yes = 1, no = 0), input and output shown",
                                    True, judge.info)
    if with_targets:
        m["edit_iou"] = MetricInfo("edit_iou", "edit-region IoU", f"IoU of changed pixels (max-channel |output − "
                                   f"input| > {change_threshold} on [0,1], at 256²) with the edit mask", True)
        m["psnr_fg_target"] = MetricInfo("psnr_fg_target", "PSNR fg vs target (dB)", "PSNR between output and "
                                         "ground-truth target inside the edit mask, at 256²", True, cap=PSNR_MAX_DB)
        m["psnr_target"] = MetricInfo("psnr_target", "PSNR vs target (dB)", "PSNR between output and "
                                      "ground-truth target over the whole image, at 256²", True, cap=PSNR_MAX_DB)
    return m


def score_sample(sample: ReasonEditSample, output: Path | None, backbones: Backbones, *,
                 target: Path | None = None, with_targets: bool = False,
                 change_threshold: float = DEFAULT_CHANGE_THRESHOLD, allow_size_mismatch: bool = False,
                 size: int = METRIC_SIZE, judge=None, judge_record: list | None = None
                 ) -> tuple[dict[str, float], list[str]]:
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
    metrics["unchanged"] = float(bool(torch.equal(a, b)))
    if backbones.lpips is not None:  # one batched pass: [background-only, reference convention (plain mean)]
        w = keep_soft[None]
        weights = torch.stack([torch.from_numpy(~edit).double(), torch.ones_like(keep_soft)])
        both = backbones.lpips.masked(torch.stack([a, a * w]).float(), torch.stack([b, b * w]).float(), weights)
        metrics["lpips_bg"], metrics["lpips_ref"] = float(both[0]), float(both[1])
    if backbones.clip is not None:
        metrics["clip_crop"] = backbones.clip.crop_clip_score(out_s, edit, sample.clip_text or "")
    if judge is not None:
        record = judge_record if judge_record is not None else []
        answer = ask_and_parse(judge, record, "ins_align", [inp, out, INS_ALIGN_PROMPT.format(
            instruction=sample.instruction or "")], parse_yes_no)
        metrics["ins_align"] = float("nan") if answer is None else answer
    if tgt is not None:
        t = as_chw(resize(tgt, square, Image.Resampling.BICUBIC))
        metrics["edit_iou"] = iou(change_mask(a, b, change_threshold), torch.from_numpy(edit))
        metrics["psnr_fg_target"] = psnr(b, t, torch.from_numpy(edit).double())
        metrics["psnr_target"] = psnr(b, t)
    ordered = [k for k in metric_infos(backbones, with_targets, change_threshold, judge) if k in metrics]
    return {k: metrics[k] for k in ordered}, notes


class ReasonEdit(Benchmark):
    """Reason-Edit through the shared benchmark loop (``layout`` / ``output_guidance``: see the module doc)."""

    name = "reason-edit"
    title = "Reason-Edit"
    backbone_kinds = ("clip", "lpips")
    uses_judge = True
    outputs_layout = f"one of the layouts {OURS}: {LAYOUTS[OURS]}; {REFERENCE}: {LAYOUTS[REFERENCE]}"

    def __init__(self, data, *, targets: str | os.PathLike | None = None,
                 change_threshold: float = DEFAULT_CHANGE_THRESHOLD, layout: str = "auto",
                 output_guidance: tuple[float, float] | None = None):
        super().__init__(data)
        if targets is not None and not Path(targets).is_dir():
            raise BenchmarkError(f"targets folder {os.fspath(targets)!r} does not exist; expected "
                                 f"TARGETS/<category>/<stem>.png")
        self.targets = None if targets is None else Path(targets)
        self.change_threshold = change_threshold
        self.layout = layout
        self.output_guidance = output_guidance
        self.layout_used: str | None = None

    def read(self):
        raw, notes = read_reason_edit(self.data)
        return [Sample(id=r.id, group=r.category, instruction=r.instruction or "", input=r.input_path,
                       problem=r.problem, data=r) for r in raw], notes

    def run_info(self):
        info = {"data": os.fspath(self.data), "metric_size": METRIC_SIZE, "mask_threshold": MASK_THRESHOLD}
        if self.targets is not None:
            info.update(targets=os.fspath(self.targets), change_threshold=self.change_threshold)
        return info

    def output_path(self, sample, outputs):
        return outputs / sample.group / f"{sample.data.stem}.png"

    def find_outputs(self, samples, outputs):
        self.layout_used, found, self._absent = discover_outputs(
            [s.data for s in samples], list(outputs), self.layout, self.output_guidance)
        self._found = found
        return {k: v.path for k, v in found.items()}

    def expected_output(self, sample, outputs):
        return outputs[0] / sample.group / f"{sample.data.stem}.png"

    def build_results(self, samples, found, outputs):
        results = []
        for s in samples:
            r_ = s.data
            file = getattr(self, "_found", {}).get(s.id)
            output = found.get(s.id) or self.expected_output(s, outputs)
            target = None
            if self.targets is not None:
                target = find_image(self.targets / s.group, r_.stem) or self.targets / s.group / f"{r_.stem}.png"
            r = SampleResult(id=s.id, group=s.group, meta={
                "instruction": r_.instruction, "clip_text": r_.clip_text, "input": describe_source(r_.input_path),
                "mask": describe_source(r_.mask_path), "output": describe_source(output)})
            if file is not None and file.layout == REFERENCE:
                r.meta["text_guidance"], r.meta["image_guidance"] = file.text_guidance, file.image_guidance
            if target is not None:
                r.meta["target"] = describe_source(target)
            r.visuals = [("input", r_.input_path), ("output", output), ("mask", r_.mask_path)]
            if target is not None:
                r.visuals.append(("target", target))
            r.payload = (r_, output, target)
            if s.problem is not None:
                r.fail(*s.problem)
            elif s.id not in found and s.id in getattr(self, "_absent", {}):
                r.fail(MISSING_OUTPUT, self._absent[s.id])
            results.append(r)
        return results

    def metric_infos(self, ctx: Context):
        return metric_infos(ctx.backbones, self.targets is not None, self.change_threshold, ctx.judge)

    def score(self, result, ctx: Context):
        sample, output, target = result.payload
        record: list = []
        metrics, notes = score_sample(sample, Path(output), ctx.backbones, target=target,
                                      with_targets=self.targets is not None, change_threshold=self.change_threshold,
                                      allow_size_mismatch=ctx.allow_size_mismatch, judge=ctx.judge,
                                      judge_record=record)
        if notes:
            result.meta["note"] = "; ".join(notes)
        if record:
            result.meta["judge"] = record
        return metrics

    def aggregates(self, samples):
        present = {s.group for s in samples}
        aggs = [Aggregate(c, (c,)) for c in CATEGORIES + tuple(c for c in EXTRA_CATEGORIES if c in present)]
        return aggs + [Aggregate("understanding", UNDERSTANDING), Aggregate("reasoning", REASONING)]

    def notes(self, ctx):
        from .clip_score import variant_note

        notes = variant_note(ctx.backbones.clip, "ViT-L/14", "Reason-Edit")
        if self.layout_used is not None:
            notes.append(f"outputs read in the {self.layout_used} layout: {LAYOUTS[self.layout_used]}")
        return notes


def evaluate(data: str | os.PathLike, *, out: str | os.PathLike,
             outputs: str | os.PathLike | list | None = None, model: str | os.PathLike | None = None,
             clip: str | os.PathLike | None = None, lpips: str | os.PathLike | None = None,
             targets: str | os.PathLike | None = None, settings: GenerationSettings | None = None,
             device: str = "cpu", dtype: torch.dtype | None = None, skip_existing: bool = False,
             change_threshold: float = DEFAULT_CHANGE_THRESHOLD, allow_size_mismatch: bool = False,
             limit: int | None = None, max_visual: int = 16, editor: Editor | None = None, judge=None,
             layout: str = "auto", output_guidance: tuple[float, float] | None = None, shard=None) -> EvalRun:
    """Score Reason-Edit (running ``model`` or a ready ``editor`` first, or reading ``outputs``: one folder or
    several) and write the report into ``out``. ``judge``: a :class:`~smartedit.eval.judge.Judge` for Ins-align."""
    if sum(x is not None for x in (outputs, model, editor)) != 1:
        raise ValueError("give exactly one of outputs= (score existing edits), model= (run a SmartEdit model) or "
                         "editor= (run any Editor, e.g. smartedit.shapes.editors.IP2PEditor)")
    bench = ReasonEdit(data, targets=targets, change_threshold=change_threshold, layout=layout,
                       output_guidance=output_guidance)
    if editor is not None or model is not None:
        bench.layout = OURS
    backbones = Backbones.load(clip=clip, lpips=lpips, device=device, wanted=("clip", "lpips"))
    if model is not None:
        editor = Editor(model, settings or GenerationSettings(), device=device, dtype=dtype,
                        skip_existing=skip_existing)
    return run_benchmark(bench, out=out, outputs=outputs, editor=editor, backbones=backbones, judge=judge,
                         limit=limit, max_visual=max_visual, allow_size_mismatch=allow_size_mismatch, shard=shard)
