"""Batch editing from a JSONL file: every row succeeds or fails alone, and nothing done is lost.

Each line: ``{"image": PATH, "instruction": TEXT, "mask": PATH?, "seed": INT?, "output": NAME?}``; relative paths
are resolved against the JSONL file's folder and must stay inside it (``allow_outside=True`` /
``--allow-outside-paths`` lifts that). Rows without a seed get ``base_seed + line_number``; every row's seed is
reported, so any edit can be reproduced alone (a batch gives the same images as single edits).

* Reading the jobs checks each row from its text and the image headers only (existence, pixel budget, mask size):
  no image is decoded before its chunk is edited, so memory is bounded by the batch size, not by the file.
* A row fails alone whatever goes wrong (a non-UTF-8 line, bad JSON, an unreadable or over-budget image, an output
  name the file system refuses, an exception inside the model): a chunk that fails is retried row by row.
* The report ``OUTPUT_DIR/batch_report.jsonl`` gets one line per row as soon as it finishes (``status`` ``done`` or
  ``failed``), and every output image is written under a temporary name and renamed, so a run killed at any moment
  keeps every finished edit. Running the same batch again skips the rows already done (same image, instruction,
  mask, seed and output, and the output file still there) and retries the rest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from .image_io import ImageInputError, load_image, load_mask, probe_image

logger = logging.getLogger(__name__)

__all__ = ["BatchRow", "REPORT_NAME", "SUMMARY_NAME", "read_jobs", "edit_chunk", "run_batch", "finished_rows",
           "record_failures", "merge_reports", "summarize"]

REPORT_NAME = "batch_report.jsonl"
"""One JSON line per finished row, appended as rows finish."""
SUMMARY_NAME = "batch_report.json"
"""The whole batch (done and failed rows), written at the end."""
MAX_NAME_BYTES = 255
T = TypeVar("T")
R = TypeVar("R")


@dataclass
class BatchRow:
    line: int
    image: str
    """The image file (decoded only when the row's chunk is edited)."""
    instruction: str
    seed: int
    output: str
    mask: str | None = None
    size: tuple[int, int] | None = None

    def key(self) -> dict:
        """What makes a finished row the same edit on a later run."""
        return {"image": self.image, "instruction": self.instruction, "mask": self.mask, "seed": self.seed,
                "output": self.output}


def _inside(path: str, root: str) -> bool:
    real, base = os.path.realpath(path), os.path.realpath(root)
    return real == base or real.startswith(base.rstrip(os.sep) + os.sep)


def _resolve(value, field: str, root: str, allow_outside: bool) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{field} must be a non-empty path string, got {value!r}")
    if "\x00" in value:
        raise ValueError(f"{field} path contains a NUL byte")
    path = os.path.join(root, value)
    if not allow_outside and not _inside(path, root):
        raise ValueError(f"{field} path {value!r} leaves the JSONL file's folder {root} (absolute, '..' or a "
                         f"symlink): move the file there, or pass --allow-outside-paths")
    return path


def read_jobs(path: str, output_dir: str, base_seed: int = 0, allow_outside: bool = False,
              max_pixels: int | None = None) -> tuple[list[BatchRow], list[dict]]:
    """Parse and check every row (images and masks by their headers); returns (good rows, failures)."""
    root = os.path.dirname(os.path.abspath(path))
    rows: list[BatchRow] = []
    failures: list[dict] = []
    with open(path, "rb") as f:
        raw_lines = f.read().split(b"\n")
    for number, raw in enumerate(raw_lines, start=1):
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            failures.append({"line": number, "error": f"not UTF-8 text (byte {exc.start}: {raw[exc.start:exc.start + 1]!r})"})
            logger.info("batch line %d skipped: not UTF-8 text", number)
            continue
        if not text.strip():
            continue
        try:
            rows.append(_parse_row(number, text, root, output_dir, base_seed, allow_outside, max_pixels))
        except (ValueError, TypeError, OverflowError, RecursionError, OSError) as exc:
            failures.append({"line": number, "error": str(exc)})
            logger.info("batch line %d skipped: %s", number, exc)
    names: dict[str, int] = {}
    for row in rows:
        if row.output in names:
            failures.append({"line": row.line, "error": f"output name {os.path.basename(row.output)!r} already used "
                                                         f"by line {names[row.output]}"})
        names.setdefault(row.output, row.line)
    bad = {f["line"] for f in failures}
    return [r for r in rows if r.line not in bad], failures


def _parse_row(number: int, text: str, root: str, output_dir: str, base_seed: int, allow_outside: bool,
               max_pixels: int | None) -> BatchRow:
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
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ValueError(f"seed must be an integer in [0, 2^63), got {seed!r}")
    image_path = _resolve(data["image"], "image", root, allow_outside)
    size = probe_image(image_path, f"image {data['image']!r}", max_pixels)
    mask_path = None
    if data.get("mask") is not None:
        mask_path = _resolve(data["mask"], "mask", root, allow_outside)
        mask_size = probe_image(mask_path, f"mask {data['mask']!r}", max_pixels)
        if mask_size != size:
            raise ImageInputError(f"mask {data['mask']!r} is {mask_size[0]}x{mask_size[1]} but the image is "
                                  f"{size[0]}x{size[1]}; give a mask with the image's size", "mask of the wrong size")
    stem = os.path.splitext(os.path.basename(data["image"]))[0]
    output = data.get("output") or f"{number:05d}_{stem}.png"
    if not isinstance(output, str) or os.path.basename(output) != output or output in (".", ".."):
        raise ValueError(f"output must be a file name, not a path: {output!r}")
    if "\x00" in output or len(output.encode("utf-8", "surrogatepass")) > MAX_NAME_BYTES - 16:
        raise ValueError(f"output name {output[:40]!r}... is too long or not a valid file name (at most "
                         f"{MAX_NAME_BYTES - 16} bytes)")
    return BatchRow(number, image_path, data["instruction"], seed, os.path.join(output_dir, output), mask_path, size)


# ---- the report --------------------------------------------------------------------------------------------------
def _append(report: str | None, record: dict) -> None:
    if report is None:
        return
    with open(report, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def record_failures(report: str, failures: list[dict]) -> None:
    """Append rows that failed before editing (``read_jobs``'s failures) to the report."""
    for failure in failures:
        _append(report, {**failure, "status": "failed"})


def _read_report(report: str) -> list[dict]:
    """The records of a (possibly killed) run's report; a torn last line or a bad one is ignored."""
    records = []
    if not os.path.isfile(report):
        return records
    with open(report, "rb") as f:
        for raw in f.read().split(b"\n"):
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                continue
            if isinstance(record, dict) and isinstance(record.get("line"), int):
                records.append(record)
    return records


def finished_rows(report: str, rows: list[BatchRow]) -> dict[int, dict]:
    """Line → its ``done`` record, for the rows of ``rows`` that an earlier run of the same batch finished (same
    edit, output file present)."""
    done = {}
    for record in _read_report(report):
        if record.get("status") == "done":
            done[record["line"]] = record
        else:
            done.pop(record["line"], None)
    out = {}
    for row in rows:
        record = done.get(row.line)
        if record is not None and record.get("key") == row.key() and os.path.isfile(row.output):
            out[row.line] = record
    return out


def merge_reports(output_dir: str, reports: list[str]) -> str:
    """Append the records of several ranks' reports to ``output_dir``'s one report (in line order); returns it."""
    merged = os.path.join(output_dir, REPORT_NAME)
    records = sorted((r for path in reports for r in _read_report(path)), key=lambda r: r["line"])
    for record in records:
        _append(merged, record)
    return merged


def summarize(report: str) -> tuple[list[dict], list[dict]]:
    """(done, failed) rows of a report, the latest record of each line, sorted by line."""
    latest: dict[int, dict] = {}
    for record in _read_report(report):
        latest[record["line"]] = record
    done = [_public(r) for _, r in sorted(latest.items()) if r.get("status") == "done"]
    failed = [_public(r) for _, r in sorted(latest.items()) if r.get("status") != "done"]
    return done, failed


def _public(record: dict) -> dict:
    return {k: v for k, v in record.items() if k not in ("status", "key")}


# ---- editing -----------------------------------------------------------------------------------------------------
def edit_chunk(items: Sequence[T], edit: Callable[[list[T]], Sequence[R]], finish: Callable[[T, R], None],
               fail: Callable[[T, Exception], None]) -> None:
    """Edit ``items`` in one call, ``edit(items)`` (one result per item, in order), then ``finish(item, result)``
    each. When that call raises, each item is retried alone (``edit([item])`` then ``finish``) so one bad item fails
    alone, with ``fail(item, exception)``; a chunk of one item is not retried. The one home of chunk-then-retry
    editing (``smartedit edit --batch`` and the benchmark editor)."""
    try:
        results = edit(list(items))
    except Exception as exc:  # noqa: BLE001 - isolate the failing item(s), whatever the exception
        if len(items) == 1:
            fail(items[0], exc)
            return
        for item in items:
            try:
                finish(item, edit([item])[0])
            except Exception as item_exc:  # noqa: BLE001
                fail(item, item_exc)
        return
    for item, result in zip(items, results):
        finish(item, result)


def run_batch(pipe, rows: list[BatchRow], batch_size: int = 4, report: str | None = None,
              max_pixels: int | None = None, **edit_kwargs) -> tuple[list[dict], list[dict]]:
    """Edit ``rows`` in chunks of ``batch_size`` (rows with and without masks are never mixed); returns
    (done, failures). A chunk that fails is retried row by row, so one bad row cannot take the others down.
    ``report``: the JSONL file every finished row is appended to (see the module docstring)."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    done: list[dict] = []
    failures: list[dict] = []

    def fail(row: BatchRow, exc: BaseException) -> None:
        message = str(exc) or type(exc).__name__
        if not isinstance(exc, (ValueError, OSError)):
            message = f"{type(exc).__name__}: {message}"
        record = {"line": row.line, "error": message[:500]}
        failures.append(record)
        _append(report, {**record, "status": "failed", "key": row.key()})
        logger.info("batch line %d failed: %s", row.line, message[:500])

    def finish(item: tuple, record: dict) -> None:
        done.append(record)
        _append(report, {**record, "status": "done", "key": item[0].key()})

    groups = [[r for r in rows if r.mask is None], [r for r in rows if r.mask is not None]]
    for group in groups:
        for start in range(0, len(group), batch_size):
            loaded = []
            for row in group[start:start + batch_size]:  # decoded here, one chunk at a time
                try:
                    loaded.append(_load(row, max_pixels))
                except Exception as exc:  # noqa: BLE001 - a row fails alone, whatever the exception
                    fail(row, exc)
            if loaded:
                edit_chunk(loaded, lambda chunk: _edit(pipe, chunk, edit_kwargs), finish,
                           lambda item, exc: fail(item[0], exc))
            del loaded
    return sorted(done, key=lambda d: d["line"]), failures


def _load(row: BatchRow, max_pixels: int | None):
    image = load_image(row.image, f"image {row.image!r}", max_pixels)
    mask = load_mask(row.mask, image.size, f"mask {row.mask!r}", max_pixels) if row.mask else None
    return row, image, mask


def _edit(pipe, chunk: list, edit_kwargs: dict) -> list[dict]:
    """Edit a chunk of loaded rows in one pipeline call and write each output; one ``done`` record per row."""
    rows = [item[0] for item in chunk]
    masks = [item[2] for item in chunk] if chunk[0][2] is not None else None
    out = pipe([item[1] for item in chunk], [r.instruction for r in rows], mask=masks,
               seed=[r.seed for r in rows], **edit_kwargs)
    records = []
    replies = out.replies or [None] * len(rows)
    for row, image, reply in zip(rows, out.images, replies):
        folder = os.path.dirname(os.path.abspath(row.output))
        os.makedirs(folder, exist_ok=True)
        root, ext = os.path.splitext(row.output)
        tmp = f"{root}.partial{ext or '.png'}"
        try:
            image.save(tmp)
            os.replace(tmp, row.output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        records.append({"line": row.line, "output": row.output, "seed": row.seed, "instruction": row.instruction,
                        **({"reply": reply} if reply is not None else {})})
    return records
