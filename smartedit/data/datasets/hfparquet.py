"""Reading datasets published as Hugging Face parquet shards (InstructPix2Pix, MagicBrush, UltraEdit).

HF writes ``image`` features as a struct ``{bytes: binary, path: string}``; older exports use raw binary. Shards
are named ``{split}-NNNNN-of-MMMMM.parquet`` (often under ``data/``); a split may also be a folder.

Rows are streamed with pyarrow (row batches of the named columns only), not ``datasets.load_dataset``: a conversion
must skip and report a shard that cannot be read and go on with the next (``load_dataset`` fails the whole split), and
must not write an Arrow cache copy of a dataset of hundreds of thousands of images (``datasets`` does unless
streaming, and its streaming mode stops at the first broken shard). The shards a conversion writes are plain
parquet that ``datasets`` reads as they are (``tests/test_data_layouts.py``).
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence

from ..validate import ItemError, LayoutError, Report, check_image, read_file_bytes, require_columns

logger = logging.getLogger(__name__)

__all__ = ["find_parquet_files", "iter_parquet_rows", "image_cell_bytes", "edit_pair"]


def _matches_split(path: str, root: str, split: str) -> bool:
    name = os.path.basename(path)
    if name.startswith((f"{split}-", f"{split}_", f"{split}.")):
        return True
    rel = os.path.relpath(path, root)
    return split in rel.split(os.sep)[:-1]


def find_parquet_files(root: str | os.PathLike, split: str | None = None, layout: str = "Hugging Face parquet"
                       ) -> list[str]:
    """Sorted parquet files of ``split`` under ``root`` (a file, a folder searched recursively, or a glob)."""
    root = str(root)
    if os.path.isfile(root):
        return [root]
    if os.path.isdir(root):
        files = sorted(glob.glob(os.path.join(glob.escape(root), "**", "*.parquet"), recursive=True))
    else:
        files = sorted(glob.glob(root))
        root = os.path.dirname(root) or "."
    if split is not None:
        files = [f for f in files if _matches_split(f, root, split)]
    if not files:
        which = f"{split}-*.parquet (or a {split}/ folder of *.parquet)" if split else "*.parquet files"
        raise LayoutError(f"no {layout} shards found under {root}: expected {which}")
    return files


def iter_parquet_rows(files: Sequence[str], required: Sequence[str], optional: Sequence[str], layout: str,
                      report: Report, batch_size: int = 16) -> Iterator[tuple[str, int, dict]]:
    """Yield ``(file, row, record)`` for every row, reading only the named columns.

    A file missing a required column is a :class:`LayoutError`; an unreadable file is skipped and reported."""
    import pyarrow.parquet as pq

    for path in files:
        try:
            pf = pq.ParquetFile(path)
            names = list(pf.schema_arrow.names)
        except (OSError, ValueError) as exc:
            report.skip(path, None, "unreadable parquet file", str(exc)[:300])
            continue
        require_columns(names, required, path, layout)
        columns = list(required) + [c for c in optional if c in names]
        row = 0
        try:
            for batch in pf.iter_batches(batch_size=batch_size, columns=columns):
                for record in batch.to_pylist():
                    yield path, row, record
                    row += 1
        except (OSError, ValueError) as exc:
            report.skip(path, row, "unreadable parquet file", f"stopped reading at row {row}: {exc}"[:300])


def image_cell_bytes(cell, base_dir: str, what: str) -> bytes:
    """Encoded image bytes from an HF image cell (struct with bytes/path, raw bytes); missing → :class:`ItemError`."""
    if cell is None:
        raise ItemError("missing field", what)
    if isinstance(cell, (bytes, bytearray)):
        data = bytes(cell)
    elif isinstance(cell, dict):
        data = cell.get("bytes")
        if not data and cell.get("path"):
            data = read_file_bytes(base_dir, cell["path"])
    else:
        raise ItemError("malformed item", f"{what} is a {type(cell).__name__}, expected image bytes")
    if data is None:
        raise ItemError("missing field", what)
    if not data:
        raise ItemError("empty file", f"{what} is an empty (zero-byte) image")
    return data if isinstance(data, bytes) else bytes(data)


def edit_pair(rec: dict, base_dir: str, instruction: str, source: str, target: str) -> tuple[str, bytes, bytes, tuple]:
    """An editing row's (instruction, source image bytes, target image bytes, source (width, height)) read from the
    named columns, every part checked: a missing or empty field or a broken image is an :class:`ItemError`."""
    text = (rec.get(instruction) or "").strip()
    if not text:
        raise ItemError("missing field", f"'{instruction}'")
    source_bytes = image_cell_bytes(rec.get(source), base_dir, f"'{source}'")
    target_bytes = image_cell_bytes(rec.get(target), base_dir, f"'{target}'")
    size = check_image(source_bytes, source).size
    check_image(target_bytes, target)
    return text, source_bytes, target_bytes, size
