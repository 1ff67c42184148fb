"""Validation of dataset items: skip-and-report, never crash mid-run, never drop silently.

Two kinds of failure:

* a **bad item** (a corrupt or unreadable image, a missing field, a mask of the wrong size, a path that escapes
  the dataset root …) is skipped and recorded in a :class:`Report` with its file and row;
* a **wholly wrong layout** (a missing annotation file, a parquet file without the expected columns, a folder with
  nothing of the expected kind) is one :class:`LayoutError` naming what was expected.

Converters wrap the work on each item in :meth:`Report.guard`::

    for row, item in enumerate(items):
        sample = None
        with report.guard(path, row):
            sample = build(item)          # may raise ItemError, OSError, KeyError …
        if sample is not None:
            yield sample
"""

from __future__ import annotations

import io
import json
import logging
import os
import struct
import zlib
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from .schema import Sample

logger = logging.getLogger(__name__)

__all__ = ["LayoutError", "ItemError", "Skip", "Report", "safe_path", "read_file_bytes", "find_image", "check_image",
           "image_size", "check_mask_size", "require", "require_columns", "sample_problems", "ITEM_ERRORS"]


class LayoutError(ValueError):
    """The input is not in the expected layout at all (one clear error naming what was expected)."""


class ItemError(ValueError):
    """One item is bad; it is skipped and reported (``reason`` is the report's category). ``file``: the broken file
    itself when it is not the annotation file being read (an image the item names); the skip record then names it,
    and the item's place in the annotation file goes into the detail."""

    def __init__(self, reason: str, detail: str = "", file: str | None = None):
        self.reason = reason
        self.detail = detail
        self.file = file
        super().__init__(f"{reason}: {detail}" if detail else reason)


class FileBytes(bytes):
    """The bytes of a file, remembering its path (so a decode error later names the file)."""

    path: str = ""


def _item_errors() -> tuple[type[BaseException], ...]:
    from PIL import Image

    # PIL raises OSError (UnidentifiedImageError), SyntaxError ("broken PNG file"), EOFError, zlib/struct errors
    # or DecompressionBombError for bad image bytes; JSON/field problems raise ValueError/KeyError/TypeError, a
    # hostile nesting RecursionError, absurd numbers OverflowError.
    return (ItemError, OSError, ValueError, KeyError, TypeError, IndexError, SyntaxError, EOFError, zlib.error,
            struct.error, Image.DecompressionBombError, RecursionError, OverflowError)


ITEM_ERRORS = _item_errors()


@dataclass
class Skip:
    """One skipped item: where it is and why it was skipped."""

    file: str
    row: int | str | None
    reason: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"file": self.file, "row": self.row, "reason": self.reason, "detail": self.detail}


@dataclass
class Report:
    """What a conversion (or a check of converted data) kept and skipped."""

    dataset: str
    written: int = 0
    skips: list[Skip] = field(default_factory=list)
    notes: Counter = field(default_factory=Counter)
    """Counted events that are not problems (e.g. ``absent-class no-op edits``)."""

    # ---- recording ---------------------------------------------------------------------------------------
    def skip(self, file: str | os.PathLike, row: int | str | None, reason: str, detail: str = "") -> None:
        s = Skip(str(file), row, reason, detail)
        self.skips.append(s)
        logger.debug("skip %s row %s: %s %s", s.file, s.row, reason, detail)

    def note(self, what: str, n: int = 1) -> None:
        self.notes[what] += n

    @contextmanager
    def guard(self, file: str | os.PathLike, row: int | str | None) -> Iterator[None]:
        """Run the body for one item; a bad-item exception is recorded as a skip and suppressed."""
        try:
            yield
        except ITEM_ERRORS as exc:
            if isinstance(exc, LayoutError):
                raise
            if isinstance(exc, ItemError) and exc.file:
                self.skip(exc.file, None, exc.reason, f"{exc.detail} (item {row} of {file})")
            elif isinstance(exc, ItemError):
                self.skip(file, row, exc.reason, exc.detail)
            else:
                self.skip(file, row, f"unreadable item ({type(exc).__name__})", str(exc)[:500])

    # ---- summaries --------------------------------------------------------------------------------------
    @property
    def skipped(self) -> int:
        return len(self.skips)

    def counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skips).most_common())

    def to_dict(self) -> dict:
        return {"dataset": self.dataset, "written": self.written, "skipped": self.skipped,
                "skipped_by_reason": self.counts(), "notes": dict(self.notes),
                "skips": [s.to_dict() for s in self.skips]}

    def write(self, path: str | os.PathLike) -> str:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=1)
            f.write("\n")
        return str(path)

    def summary(self, examples: int = 3) -> str:
        lines = [f"{self.dataset}: {self.written} written, {self.skipped} skipped"]
        for reason, n in self.counts().items():
            first = [s for s in self.skips if s.reason == reason][:examples]
            where = "; ".join(f"{os.path.basename(s.file)} row {s.row}" for s in first)
            lines.append(f"  {n} x {reason} (e.g. {where})")
        for what, n in self.notes.items():
            lines.append(f"  note: {n} x {what}")
        return "\n".join(lines)

    def merge(self, other: "Report") -> None:
        self.written += other.written
        self.skips += other.skips
        self.notes.update(other.notes)


# ---- item checks ---------------------------------------------------------------------------------------

def safe_path(root: str | os.PathLike, relative: str) -> str:
    """``root/relative``, refusing absolute paths and paths that leave ``root`` (``..``, symlinks)."""
    if not isinstance(relative, str) or not relative.strip():
        raise ItemError("missing field", "empty file path")
    if os.path.isabs(relative) or relative.startswith(("/", "\\")) or ":" in os.path.splitdrive(relative)[0]:
        raise ItemError("path escapes the dataset root", f"{relative!r} is absolute")
    root_real = os.path.realpath(root)
    full = os.path.realpath(os.path.join(root_real, relative))
    if os.path.commonpath([root_real, full]) != root_real:
        raise ItemError("path escapes the dataset root", f"{relative!r} resolves outside {root}")
    return full


def read_file_bytes(root: str | os.PathLike, relative: str, image: bool = True) -> bytes:
    """Bytes of ``root/relative`` (checked with :func:`safe_path`); a missing file is an :class:`ItemError`. For an
    ``image`` the header is checked too (empty file, not an image, over the pixel budget), before any decoding; the
    errors name the file itself."""
    from ..image_io import ImageInputError, probe_image

    path = safe_path(root, relative)
    if not os.path.isfile(path):
        raise ItemError("file not found", relative)
    with open(path, "rb") as f:
        data = FileBytes(f.read())
    data.path = path
    if image:
        if not data:
            raise ItemError("empty file", f"{relative} is an empty (zero-byte) file", file=path)
        try:
            probe_image(data, relative)
        except ImageInputError as exc:
            raise ItemError(exc.reason, str(exc), file=path) from None
    return data


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".webp")


def find_image(folder: str | os.PathLike, stem: str) -> str:
    """The file name of the image ``stem`` (any usual extension) in ``folder``; missing → :class:`ItemError`."""
    for ext in IMAGE_EXTENSIONS:
        if os.path.isfile(os.path.join(folder, stem + ext)):
            return stem + ext
    raise ItemError("file not found", f"no image {stem}.jpg (or .png) in {folder}")


def check_image(data: bytes | None, what: str = "image", mode: str = "RGB"):
    """Decode ``data`` fully (catching truncated files); returns the PIL image in ``mode``."""
    from .schema import decode_image

    from ..image_io import ImageInputError

    if data is None:
        raise ItemError("missing field", f"{what} is missing")
    if len(data) == 0:
        raise ItemError("empty file", f"{what} is an empty (zero-byte) file")
    try:
        return decode_image(data, mode)
    except ImageInputError as exc:
        raise ItemError(exc.reason, f"{what}: {exc}"[:300], file=getattr(data, "path", None)) from None
    except ITEM_ERRORS as exc:
        raise ItemError("corrupt or unreadable image", f"{what}: {type(exc).__name__}: {exc}"[:300],
                        file=getattr(data, "path", None)) from None


def image_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the image header, without decoding the pixels."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return im.size


def check_mask_size(mask_size: tuple[int, int], image_size_: tuple[int, int], what: str = "mask") -> None:
    if tuple(mask_size) != tuple(image_size_):
        raise ItemError("mask of the wrong size",
                        f"{what} is {mask_size[0]}x{mask_size[1]}, image is {image_size_[0]}x{image_size_[1]}")


def require(record: Mapping, fields: Sequence[str], what: str = "item") -> None:
    """Every name in ``fields`` is present and not None/empty in ``record``."""
    if not isinstance(record, Mapping):
        raise ItemError("malformed item", f"{what} is a {type(record).__name__}, expected an object")
    missing = [f for f in fields if record.get(f) is None or (isinstance(record.get(f), (str, list)) and
                                                              len(record.get(f)) == 0)]
    if missing:
        raise ItemError("missing field", ", ".join(repr(m) for m in missing))


def require_columns(found: Sequence[str], expected: Sequence[str], where: str, layout: str) -> None:
    missing = [c for c in expected if c not in found]
    if missing:
        raise LayoutError(f"{where} is not in the {layout} layout: missing column(s) {missing}; expected columns "
                          f"{list(expected)}, found {list(found)}")


def sample_problems(sample: Sample, decode: bool = True) -> list[str]:
    """Everything wrong with a converted sample: :meth:`Sample.problems` plus undecodable images and masks whose
    size differs from the source image."""
    problems = list(sample.problems())
    if problems or not decode:
        return problems
    sizes = {}
    for name in ("source_image", "target_image", "mask_image"):
        data = getattr(sample, name)
        if data is None:
            continue
        try:
            im = check_image(data, name, "L" if name == "mask_image" else "RGB")
            sizes[name] = im.size
        except ItemError as exc:
            problems.append(str(exc))
    if "mask_image" in sizes and "source_image" in sizes and sizes["mask_image"] != sizes["source_image"]:
        problems.append(f"mask of the wrong size: mask {sizes['mask_image']}, source {sizes['source_image']}")
    return problems
