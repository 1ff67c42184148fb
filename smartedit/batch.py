"""Batch editing from a JSONL file: bad rows are reported (line and reason) and skipped, the rest are edited.

Each line: ``{"image": PATH, "instruction": TEXT, "mask": PATH?, "seed": INT?, "output": NAME?}``; relative paths
are resolved against the JSONL file's folder. Rows without a seed get ``base_seed + line_number``; every row's seed
is reported, so any edit can be reproduced alone (a batch gives the same images as single edits).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass

from .image_io import ImageInputError, load_image, load_mask

logger = logging.getLogger(__name__)


@dataclass
class BatchRow:
    line: int
    image: object
    instruction: str
    seed: int
    output: str
    mask: object | None = None


def read_jobs(path: str, output_dir: str, base_seed: int = 0) -> tuple[list[BatchRow], list[dict]]:
    """Parse and validate every row (images and masks are opened here); returns (good rows, failures)."""
    root = os.path.dirname(os.path.abspath(path))
    rows: list[BatchRow] = []
    failures: list[dict] = []
    with open(path, encoding="utf-8") as f:
        lines = f.read().splitlines()
    for number, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        try:
            rows.append(_parse_row(number, text, root, output_dir, base_seed))
        except (ValueError, TypeError, ImageInputError) as exc:
            failures.append({"line": number, "error": str(exc)})
            logger.warning("batch line %d skipped: %s", number, exc)
    names = {}
    for row in rows:
        if row.output in names:
            failures.append({"line": row.line, "error": f"output name {row.output!r} already used by line "
                                                         f"{names[row.output]}"})
        names.setdefault(row.output, row.line)
    bad = {f["line"] for f in failures}
    return [r for r in rows if r.line not in bad], failures


def _parse_row(number: int, text: str, root: str, output_dir: str, base_seed: int) -> BatchRow:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError("each line must be a JSON object with 'image' and 'instruction'")
    missing = [k for k in ("image", "instruction") if not data.get(k)]
    if missing:
        raise ValueError(f"missing field(s) {missing}")
    unknown = sorted(set(data) - {"image", "instruction", "mask", "seed", "output"})
    if unknown:
        raise ValueError(f"unknown field(s) {unknown}; allowed: image, instruction, mask, seed, output")
    if not isinstance(data["instruction"], str) or not data["instruction"].strip():
        raise ValueError("instruction must be a non-empty string")
    seed = data.get("seed", base_seed + number)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    image_path = os.path.join(root, data["image"])
    image = load_image(image_path, f"image {data['image']!r}")
    mask = None
    if data.get("mask"):
        mask = load_mask(os.path.join(root, data["mask"]), image.size, f"mask {data['mask']!r}")
    stem = os.path.splitext(os.path.basename(data["image"]))[0]
    output = data.get("output") or f"{number:05d}_{stem}.png"
    if os.path.basename(output) != output:
        raise ValueError(f"output must be a file name, not a path: {output!r}")
    return BatchRow(number, image, data["instruction"], seed, os.path.join(output_dir, output), mask)


def run_batch(pipe, rows: list[BatchRow], batch_size: int = 4, **edit_kwargs) -> tuple[list[dict], list[dict]]:
    """Edit ``rows`` in chunks of ``batch_size`` (rows with and without masks are never mixed). A chunk that
    fails is retried row by row so one bad row cannot take the others down."""
    done: list[dict] = []
    failures: list[dict] = []
    groups = [[r for r in rows if r.mask is None], [r for r in rows if r.mask is not None]]
    for group in groups:
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            try:
                outs = _edit(pipe, chunk, edit_kwargs)
            except (ValueError, RuntimeError) as exc:
                if len(chunk) == 1:
                    failures.append({"line": chunk[0].line, "error": str(exc)})
                    continue
                outs = []
                for row in chunk:
                    try:
                        outs += _edit(pipe, [row], edit_kwargs)
                    except (ValueError, RuntimeError) as row_exc:
                        failures.append({"line": row.line, "error": str(row_exc)})
            done += outs
    return sorted(done, key=lambda d: d["line"]), failures


def _edit(pipe, chunk: list[BatchRow], edit_kwargs: dict) -> list[dict]:
    masks = [r.mask for r in chunk] if chunk[0].mask is not None else None
    out = pipe([r.image for r in chunk], [r.instruction for r in chunk], mask=masks,
               seed=[r.seed for r in chunk], **edit_kwargs)
    results = []
    for row, image in zip(chunk, out.images):
        os.makedirs(os.path.dirname(os.path.abspath(row.output)), exist_ok=True)
        image.save(row.output)
        results.append({"line": row.line, "output": row.output, "seed": row.seed, "instruction": row.instruction})
    return results
