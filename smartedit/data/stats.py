"""``smartedit data stats DIR``: counts, sizes and examples of converted shards (and what their reports skipped)."""

from __future__ import annotations

import glob
import json
import os
from collections import Counter, defaultdict

import numpy as np

from .io import IMAGE_COLUMNS, REPORT_SUFFIX, ParquetSampleDataset, list_shards
from .validate import image_size

__all__ = ["dataset_stats", "format_stats"]


def _text(row: dict, limit: int = 100) -> str:
    if row.get("instruction"):
        text = row["instruction"]
    elif row.get("caption"):
        text = row["caption"]
    elif row.get("conversation"):
        turns = json.loads(row["conversation"])
        text = f"Q: {turns[0][0]} A: {turns[0][1]}" if turns else ""
    else:
        text = ""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def dataset_stats(path: str | os.PathLike, examples: int = 3, probe_images: int = 32) -> dict:
    """Statistics of the shards under ``path``: rows per dataset and task, bytes on disk and per image column,
    masks, image sizes of a few evenly spaced rows, example instructions and the conversion reports' skips."""
    import pyarrow.parquet as pq

    files = list_shards(path)
    ds = ParquetSampleDataset(files)
    per = defaultdict(lambda: {"rows": 0, "tasks": Counter(), "with_mask": 0, "examples": []})
    column_bytes: Counter = Counter()
    for f in files:
        meta = pq.ParquetFile(f).metadata
        for rg in range(meta.num_row_groups):
            group = meta.row_group(rg)
            for c in range(group.num_columns):
                col = group.column(c)
                column_bytes[col.path_in_schema] += col.total_compressed_size
        table = pq.read_table(f, columns=["id", "dataset", "task", "instruction", "caption", "conversation",
                                          "mask_image"])
        has_mask = table.column("mask_image").is_valid().to_pylist()
        rows = table.drop_columns(["mask_image"]).to_pylist()
        for row, m in zip(rows, has_mask):
            d = per[row["dataset"]]
            d["rows"] += 1
            d["tasks"][row["task"]] += 1
            d["with_mask"] += int(bool(m))
            if len(d["examples"]) < examples:
                d["examples"].append({"id": row["id"], "task": row["task"], "text": _text(row)})
    sizes = []
    if len(ds):
        for i in np.linspace(0, len(ds) - 1, num=min(probe_images, len(ds))).astype(int):
            data = ds.row(int(i))["source_image"]
            if data:
                sizes.append(image_size(data))
    reports = {}
    root = str(path) if os.path.isdir(str(path)) else os.path.dirname(str(path))
    for rpath in sorted(glob.glob(os.path.join(glob.escape(root), "**", "*" + REPORT_SUFFIX), recursive=True)):
        try:
            with open(rpath, encoding="utf-8") as f:
                r = json.load(f)
            reports[os.path.basename(rpath)[: -len(REPORT_SUFFIX)]] = {
                "written": r.get("written"), "skipped": r.get("skipped"),
                "skipped_by_reason": r.get("skipped_by_reason", {}), "notes": r.get("notes", {})}
        except (OSError, ValueError):
            reports[os.path.basename(rpath)] = {"error": "unreadable report"}
    disk = sum(os.path.getsize(f) for f in files)
    out = {
        "path": str(path), "shards": len(files), "rows": len(ds), "bytes_on_disk": disk,
        "image_bytes": {c: int(column_bytes.get(c, 0)) for c in IMAGE_COLUMNS},
        "datasets": {name: {"rows": d["rows"], "tasks": dict(d["tasks"]), "with_mask": d["with_mask"],
                            "examples": d["examples"]} for name, d in sorted(per.items())},
        "image_size_probe": {},
        "reports": reports,
    }
    if sizes:
        w = np.array([s[0] for s in sizes])
        h = np.array([s[1] for s in sizes])
        out["image_size_probe"] = {"probed": len(sizes), "width_min": int(w.min()), "width_max": int(w.max()),
                                   "height_min": int(h.min()), "height_max": int(h.max()),
                                   "width_median": float(np.median(w)), "height_median": float(np.median(h))}
    return out


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def format_stats(stats: dict) -> str:
    """Human-readable table of :func:`dataset_stats`."""
    lines = [f"{stats['path']}: {stats['rows']} samples in {stats['shards']} shard(s), {_mb(stats['bytes_on_disk'])}",
             "  images: " + ", ".join(f"{c} {_mb(b)}" for c, b in stats["image_bytes"].items())]
    probe = stats.get("image_size_probe") or {}
    if probe:
        lines.append(f"  source image sizes ({probe['probed']} probed): {probe['width_min']}-{probe['width_max']} x "
                     f"{probe['height_min']}-{probe['height_max']} (median {probe['width_median']:.0f} x "
                     f"{probe['height_median']:.0f})")
    lines.append(f"  {'dataset':<22}{'rows':>10}  {'with mask':>9}  tasks")
    for name, d in stats["datasets"].items():
        tasks = ", ".join(f"{t} {n}" for t, n in d["tasks"].items())
        lines.append(f"  {name:<22}{d['rows']:>10}  {d['with_mask']:>9}  {tasks}")
    for name, d in stats["datasets"].items():
        for ex in d["examples"]:
            lines.append(f"    e.g. [{ex['task']}] {ex['id']}: {ex['text']}")
    for prefix, r in stats.get("reports", {}).items():
        if "error" in r:
            lines.append(f"  report {prefix}: {r['error']}")
            continue
        reasons = ", ".join(f"{k} {v}" for k, v in (r.get("skipped_by_reason") or {}).items()) or "none"
        notes = ", ".join(f"{k} {v}" for k, v in (r.get("notes") or {}).items())
        lines.append(f"  report {prefix}: {r.get('written')} written, {r.get('skipped')} skipped ({reasons})"
                     + (f"; {notes}" if notes else ""))
    return "\n".join(lines)
