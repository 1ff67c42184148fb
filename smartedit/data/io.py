"""Sharded parquet I/O for uniform-schema samples (:mod:`smartedit.data.schema`).

A converted dataset is a folder of parquet shards plus the conversion report::

    OUT/{prefix}-00000.parquet      # rows in the uniform schema (``arrow_schema()``), images as encoded bytes
    OUT/{prefix}-00001.parquet
    OUT/{prefix}.report.json        # what was written and what was skipped (file / row / reason)

``prefix`` is ``{dataset}-{split}`` (e.g. ``magicbrush-train``), so several recipes or splits may share a folder.
Shards are plain parquet: ``datasets.load_dataset("parquet", data_files="OUT/*.parquet")`` reads them too.

Images are stored once, as the encoded bytes the publisher shipped wherever possible (no re-encoding); the image
columns are written uncompressed (they already are) and rows go in small row groups so that
:class:`ParquetSampleDataset` reads little more than the row it is asked for.
"""

from __future__ import annotations

import glob
import logging
import os
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence

import numpy as np

from .schema import COLUMNS, OPTIONAL_COLUMNS, Sample, arrow_schema
from .validate import LayoutError

logger = logging.getLogger(__name__)

__all__ = ["ShardWriter", "write_samples", "ParquetSampleDataset", "list_shards", "shard_name", "REPORT_SUFFIX"]

REPORT_SUFFIX = ".report.json"
IMAGE_COLUMNS = ("source_image", "target_image", "mask_image")
DEFAULT_SHARD_SIZE = 2000
DEFAULT_ROW_GROUP_SIZE = 16


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}.parquet"


class ShardWriter:
    """Writes samples to ``out_dir/{prefix}-NNNNN.parquet``, ``shard_size`` rows per file.

    A shard is written under a temporary name and renamed when complete, so an interrupted conversion never
    leaves a truncated shard that looks finished. Existing shards with the same prefix are an error unless
    ``overwrite`` (then they are removed first).
    """

    def __init__(self, out_dir: str | os.PathLike, prefix: str, shard_size: int = DEFAULT_SHARD_SIZE,
                 row_group_size: int = DEFAULT_ROW_GROUP_SIZE, overwrite: bool = False):
        if not prefix or os.sep in prefix or (os.altsep and os.altsep in prefix):
            raise ValueError(f"shard prefix must be a plain name, got {prefix!r}")
        if shard_size <= 0 or row_group_size <= 0:
            raise ValueError("shard_size and row_group_size must be positive")
        self.out_dir = str(out_dir)
        self.prefix = prefix
        self.shard_size = int(shard_size)
        self.row_group_size = int(row_group_size)
        os.makedirs(self.out_dir, exist_ok=True)
        existing = sorted(glob.glob(os.path.join(glob.escape(self.out_dir), f"{glob.escape(prefix)}-*.parquet")))
        if existing and not overwrite:
            raise FileExistsError(f"{self.out_dir} already holds {len(existing)} shard(s) named {prefix}-*.parquet; "
                                  f"pass overwrite=True (--overwrite) to replace them")
        for path in existing:
            os.remove(path)
        self.files: list[str] = []
        self.count = 0
        self._writer = None
        self._tmp: str | None = None
        self._in_shard = 0
        self._buffer: list[dict] = []

    def _open(self) -> None:
        import pyarrow.parquet as pq

        final = os.path.join(self.out_dir, shard_name(self.prefix, len(self.files)))
        self._tmp = final + ".partial"
        compression = {c: ("none" if c in IMAGE_COLUMNS else "zstd") for c in COLUMNS + OPTIONAL_COLUMNS}
        self._writer = pq.ParquetWriter(self._tmp, arrow_schema(), compression=compression,
                                        use_dictionary=["dataset", "task"], write_statistics=["id", "dataset", "task"])

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer:
            return
        if self._writer is None:
            self._open()
        table = pa.Table.from_pylist(self._buffer, schema=arrow_schema())
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self._buffer = []

    def _finish_shard(self) -> None:
        self._flush()
        if self._writer is None:
            return
        self._writer.close()
        final = self._tmp[: -len(".partial")]
        os.replace(self._tmp, final)
        self.files.append(final)
        self._writer, self._tmp, self._in_shard = None, None, 0

    def write(self, sample: Sample) -> None:
        self._buffer.append(sample.to_row())
        self._in_shard += 1
        self.count += 1
        if len(self._buffer) >= self.row_group_size:
            self._flush()
        if self._in_shard >= self.shard_size:
            self._finish_shard()

    def close(self) -> list[str]:
        self._finish_shard()
        return self.files

    def abort(self, remove_completed: bool = False) -> None:
        """Drop the shard in progress (and, with ``remove_completed``, the shards this writer finished)."""
        if self._writer is not None:
            self._writer.close()
            if self._tmp and os.path.exists(self._tmp):
                os.remove(self._tmp)
        self._writer, self._tmp, self._buffer = None, None, []
        if remove_completed:
            for path in self.files:
                if os.path.exists(path):
                    os.remove(path)
            self.files = []

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_samples(samples: Iterable[Sample], out_dir: str | os.PathLike, prefix: str, **writer_kwargs) -> list[str]:
    """Write ``samples`` as shards; returns the shard paths."""
    with ShardWriter(out_dir, prefix, **writer_kwargs) as writer:
        for sample in samples:
            writer.write(sample)
    return writer.files


def list_shards(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str]:
    """Parquet shards under ``paths`` (folders are searched recursively; files are taken as they are), sorted."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    files: list[str] = []
    for p in paths:
        p = str(p)
        if os.path.isdir(p):
            files += sorted(glob.glob(os.path.join(glob.escape(p), "**", "*.parquet"), recursive=True))
        elif os.path.isfile(p):
            files.append(p)
        else:
            matched = sorted(glob.glob(p))
            if not matched:
                raise LayoutError(f"{p} does not exist: expected a folder of converted *.parquet shards "
                                  f"(written by a data recipe) or a shard file")
            files += matched
    return files


class ParquetSampleDataset:
    """Random access over converted shards: ``ds[i]`` → :class:`Sample`, ``len(ds)``.

    Shards are opened lazily in each process (safe to hand to DataLoader workers); the last
    ``cache_row_groups`` row groups read are kept, so neighbouring rows cost one read.
    """

    max_open_files = 64
    """Shards kept open at once per process (least recently used ones are closed)."""

    def __init__(self, paths: str | os.PathLike | Sequence[str | os.PathLike], cache_row_groups: int = 4):
        import pyarrow.parquet as pq

        self.files = list_shards(paths)
        if not self.files:
            raise LayoutError(f"no *.parquet shards under {paths}: expected the output folder of a data recipe")
        starts, locs = [], []
        total = 0
        self._columns: list[list[str]] = []  # per shard: the columns it holds (older shards lack the optional ones)
        for f_idx, path in enumerate(self.files):
            try:
                meta = pq.ParquetFile(path).metadata
            except (OSError, ValueError) as exc:
                raise LayoutError(f"{path} is not a readable parquet file ({exc})") from None
            names = [meta.schema.column(i).name for i in range(meta.num_columns)]
            missing = [c for c in COLUMNS if c not in names]
            if missing:
                raise LayoutError(f"{path} is not a converted SmartEdit shard: missing column(s) {missing}; "
                                  f"expected the uniform schema {list(COLUMNS)}")
            self._columns.append(list(COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in names])
            for rg in range(meta.num_row_groups):
                n = meta.row_group(rg).num_rows
                if n:
                    starts.append(total)
                    locs.append((f_idx, rg, n))
                    total += n
        self._file_starts = {}
        for start, (f_idx, _, _) in zip(starts, locs):
            self._file_starts.setdefault(f_idx, start)
        self._starts = np.asarray(starts, dtype=np.int64)
        self._locs = locs
        self._len = total
        self.cache_row_groups = max(1, int(cache_row_groups))
        self._handles: OrderedDict = OrderedDict()
        self._cache: OrderedDict = OrderedDict()
        self._pid = os.getpid()

    def __len__(self) -> int:
        return self._len

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_handles"], state["_cache"] = OrderedDict(), OrderedDict()
        return state

    def _file(self, f_idx: int):
        import pyarrow.parquet as pq

        if self._pid != os.getpid():  # forked into a worker: do not share file handles
            self._handles, self._cache, self._pid = OrderedDict(), OrderedDict(), os.getpid()
        handle = self._handles.get(f_idx)
        if handle is None:
            handle = self._handles[f_idx] = pq.ParquetFile(self.files[f_idx], memory_map=True)
            while len(self._handles) > self.max_open_files:
                _, old = self._handles.popitem(last=False)
                old.close()
        else:
            self._handles.move_to_end(f_idx)
        return handle

    def _row_group(self, k: int) -> list[dict]:
        rows = self._cache.get(k)
        if rows is not None:
            self._cache.move_to_end(k)
            return rows
        f_idx, rg, _ = self._locs[k]
        rows = self._file(f_idx).read_row_group(rg, columns=self._columns[f_idx]).to_pylist()
        self._cache[k] = rows
        while len(self._cache) > self.cache_row_groups:
            self._cache.popitem(last=False)
        return rows

    def locate(self, index: int) -> tuple[str, int]:
        """(shard path, row number within that shard) of sample ``index``."""
        i = int(index) % self._len
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        f_idx = self._locs[k][0]
        return self.files[f_idx], i - int(self._file_starts[f_idx])

    def row(self, index: int) -> dict:
        i = int(index)
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(f"index {index} out of range for {self._len} samples")
        k = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._row_group(k)[i - int(self._starts[k])]

    def __getitem__(self, index: int) -> Sample:
        return Sample.from_row(self.row(index))

    def __iter__(self) -> Iterator[Sample]:
        for k in range(len(self._locs)):
            for row in self._row_group(k):
                yield Sample.from_row(row)

    def column(self, name: str) -> list:
        """All values of one column (read column-wise: cheap for text columns)."""
        import pyarrow.parquet as pq

        if name not in COLUMNS + OPTIONAL_COLUMNS:
            raise KeyError(f"unknown column {name!r}; columns: {list(COLUMNS + OPTIONAL_COLUMNS)}")
        out: list = []
        for path, held in zip(self.files, self._columns):
            if name in held:
                out += pq.read_table(path, columns=[name]).column(name).to_pylist()
            else:
                out += [None] * pq.ParquetFile(path).metadata.num_rows
        return out

    def __repr__(self) -> str:
        return f"ParquetSampleDataset({len(self.files)} shard(s), {self._len} samples)"
