"""Checking converted shards row by row (``smartedit data validate DIR``): every image decodes, masks have the
source's size, every row satisfies the schema. Bad rows are reported with shard file and row, never raised."""

from __future__ import annotations

import os

from .io import list_shards
from .schema import Sample
from .validate import Report, sample_problems

__all__ = ["check_shards"]


def check_shards(path: str | os.PathLike, decode: bool = True) -> Report:
    """A :class:`Report` of the shards under ``path`` (``written`` counts the good rows)."""
    import pyarrow.parquet as pq
    from tqdm import tqdm

    report = Report(dataset=str(path))
    for f in tqdm(list_shards(path), desc="check", unit="shard", disable=None):
        try:
            pf = pq.ParquetFile(f)
        except (OSError, ValueError) as exc:
            report.skip(f, None, "unreadable parquet file", str(exc)[:300])
            continue
        row = 0
        for batch in pf.iter_batches(batch_size=64):
            for rec in batch.to_pylist():
                with report.guard(f, row):
                    problems = sample_problems(Sample.from_row(rec), decode=decode)
                    if problems:
                        report.skip(f, row, problems[0].split(":")[0], "; ".join(problems))
                    else:
                        report.written += 1
                row += 1
    return report
