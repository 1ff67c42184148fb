"""Writing an evaluation report: per-sample JSON + CSV, summary JSON + markdown table, HTML page, PNG grids.

Files written into the report folder:

- ``samples.json`` / ``samples.csv`` — one entry per sample, excluded ones included with status and message;
  the JSON's ``metrics`` names each metric's backbone and sha256, CSV metric columns are named
  ``metric [backbone sha256:<12 hex>]`` for backbone metrics.
- ``summary.json`` — run settings, backbones (name, architecture, files, sha256), metric definitions, and per
  aggregate: counts, excluded counts per status, and per metric mean / n / n_nan / backbone / sha256.
- ``summary.md`` — the same as a markdown table (one row per metric with its backbone tag).
- ``report.html`` + ``grids/<group>.png`` + ``thumbs/`` — input | output | mask (| target) per group.
"""

from __future__ import annotations

import csv
import datetime as _dt
import html
import json
import logging
import math
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont, ImageOps

from .backbones import BackboneInfo
from .results import STATUS_HELP, Aggregate, MetricInfo, SampleResult, finite_or_none, summarize

logger = logging.getLogger(__name__)

__all__ = ["write_report", "format_value", "markdown_table", "make_grid", "slug"]

THUMB = 128
LABEL_WIDTH = 220


def slug(text: str) -> str:
    """A file-name-safe version of ``text``."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) >= 10 else f"{value:.4f}"
    return str(value)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float):
        return finite_or_none(value)
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return str(value)


def _metric_column(name: str, info: MetricInfo) -> str:
    return name if info.backbone is None else f"{name} [{info.tag()}]"


def markdown_table(summary: dict[str, Any], metrics: dict[str, MetricInfo]) -> str:
    """Rows = metrics (with backbone tag), columns = aggregates; then scored and excluded counts."""
    aggs = list(summary.keys())
    head = "| metric | backbone | " + " | ".join(aggs) + " |"
    sep = "|---|---|" + "---:|" * len(aggs)
    lines = [head, sep]
    for name, info in metrics.items():
        arrow = {True: " ↑", False: " ↓"}.get(info.higher_is_better, "")
        cells = []
        for a in aggs:
            m = summary[a]["metrics"][name]
            cell = f"{m['count']} of {m['n']}" if info.count else format_value(m["mean"])
            if m.get("n_at_cap"):
                cell += (f" ({m['n_at_cap']} of {m['n']} at the {format_value(info.cap)} cap; "
                         f"{format_value(m['mean_below_cap'])} over the others)")
            if m["n_nan"]:
                cell += f" (n={m['n']}, {m['n_nan']} n/a)"
            cells.append(cell)
        lines.append(f"| {info.label}{arrow} | {info.tag()} | " + " | ".join(cells) + " |")
    lines.append("| scored / samples | | " + " | ".join(
        f"{summary[a]['n_scored']} / {summary[a]['n_samples']}" for a in aggs) + " |")
    lines.append("| excluded | | " + " | ".join(
        ", ".join(f"{k}: {v}" for k, v in summary[a]["excluded"].items()) or "0" for a in aggs) + " |")
    return "\n".join(lines)


def _load_visual(src: Any) -> Image.Image | None:
    if src is None:
        return None
    try:
        if isinstance(src, Image.Image):
            return src.convert("RGB")
        from .images import open_image

        return open_image(src, "missing", "visual").convert("RGB")
    except Exception:  # a visual that cannot be shown must never stop a report
        return None


def _fit(image: Image.Image | None, size: int, note: str = "missing") -> Image.Image:
    cell = Image.new("RGB", (size, size), (200, 200, 200))
    if image is None:
        ImageDraw.Draw(cell).text((8, size // 2 - 6), note, fill=(90, 0, 0), font=ImageFont.load_default())
        return cell
    im = ImageOps.contain(image, (size, size), Image.Resampling.BICUBIC)  # shrinks or enlarges, keeps aspect
    cell.paste(im, ((size - im.width) // 2, (size - im.height) // 2))
    return cell


def _wrap(text: str, width: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for w in words:
        if len(line) + len(w) + 1 > width and line:
            lines.append(line)
            line = w
        else:
            line = f"{line} {w}".strip()
    if line:
        lines.append(line)
    return lines


def make_grid(results: list[SampleResult], thumb: int = THUMB) -> Image.Image | None:
    """One PNG: a header with the column labels, then per sample its label (id, status, instruction) and the
    visuals (input | output | mask | …). None when there is nothing to show."""
    if not results:
        return None
    labels: list[str] = []
    for r in results:
        for label, _ in r.visuals:
            if label not in labels:
                labels.append(label)
    font = ImageFont.load_default()
    header = 18
    width = LABEL_WIDTH + thumb * len(labels) + 4 * (len(labels) + 1)
    height = header + len(results) * (thumb + 4) + 4
    grid = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    for j, label in enumerate(labels):
        draw.text((LABEL_WIDTH + 4 + j * (thumb + 4), 3), label, fill=(0, 0, 0), font=font)
    for i, r in enumerate(results):
        y = header + i * (thumb + 4)
        text = [r.id, r.status if r.ok else f"EXCLUDED: {r.status}"]
        text += _wrap(str(r.meta.get("instruction", "")), 34)[:6]
        for k, line in enumerate(text[:9]):
            draw.text((4, y + 2 + 13 * k), line, fill=(0, 0, 0) if k != 1 or r.ok else (170, 0, 0), font=font)
        sources = dict(r.visuals)
        for j, label in enumerate(labels):
            cell = _fit(_load_visual(sources.get(label)), thumb)
            grid.paste(cell, (LABEL_WIDTH + 4 + j * (thumb + 4), y))
    return grid


def _html_page(title: str, header_html: str, table_md: str, sections: list[str]) -> str:
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em 0; }}
td, th {{ border: 1px solid #bbb; padding: 3px 6px; font-size: 13px; vertical-align: top; }}
th {{ background: #eee; }} .bad {{ color: #a00; }} img {{ max-width: 128px; max-height: 128px; }}
pre {{ background: #f6f6f6; padding: 0.5em; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
{header_html}
{table_md}
{''.join(sections)}
</body></html>
"""


def _md_to_html_table(md: str) -> str:
    rows = [line.strip().strip("|").split("|") for line in md.splitlines()]
    out = ["<table>"]
    for i, row in enumerate(rows):
        if i == 1:
            continue
        tag = "th" if i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{html.escape(c.strip())}</{tag}>" for c in row) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def write_report(out_dir: str | os.PathLike, *, benchmark: str, title: str, results: list[SampleResult],
                 metrics: dict[str, MetricInfo], aggregates: list[Aggregate], run_info: dict[str, Any],
                 notes: list[str] | None = None, max_visual: int = 16) -> dict[str, Any]:
    """Write every report file into ``out_dir`` and return the summary (what ``summary.json`` holds)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    aggregates_summary = summarize(results, metrics, aggregates)
    backbones: dict[str, BackboneInfo] = OrderedDict()
    for info in metrics.values():
        if info.backbone is not None:
            backbones[info.backbone.kind] = info.backbone
    summary = {
        "benchmark": benchmark,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "run": _jsonable(run_info),
        "backbones": {k: b.to_dict() for k, b in backbones.items()},
        "metrics": {k: m.to_dict() for k, m in metrics.items()},
        "aggregates": _jsonable(aggregates_summary),
        "excluded_samples": [{"id": r.id, "group": r.group, "status": r.status, "message": r.message}
                             for r in results if not r.ok],
        "status_help": STATUS_HELP,
        "notes": list(notes or []),
    }
    with open(out / "summary.json", "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    with open(out / "samples.json", "w", encoding="utf-8") as f:
        json.dump({"benchmark": benchmark, "metrics": summary["metrics"],
                   "samples": [_jsonable(r.to_dict()) for r in results]}, f, indent=2, ensure_ascii=False)
    _write_csv(out / "samples.csv", results, metrics)

    table = markdown_table(aggregates_summary, metrics)
    md = [f"# {title}", ""]
    md += [f"- {k}: `{json.dumps(_jsonable(v), ensure_ascii=False)}`" for k, v in run_info.items()]
    md += ["", table, "", "## Backbones", ""]
    md += [f"- **{b.kind}**: {b.name} — {b.arch} — sha256 `{b.sha256}` (files: "
           + ", ".join(f"{n} `{h}`" for n, h in b.files.items()) + ")" for b in backbones.values()]
    if not backbones:
        md.append("- none (pixel metrics only)")
    md += ["", "## Metrics", ""]
    md += [f"- `{k}` — {m.label}: {m.description}" for k, m in metrics.items()]
    excluded = [r for r in results if not r.ok]
    md += ["", f"## Excluded samples ({len(excluded)})", ""]
    md += [f"- `{r.id}` — {r.status}: {r.message}" for r in excluded]
    if notes:
        md += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    (out / "summary.md").write_text("\n".join(md) + "\n", encoding="utf-8")

    sections = _write_visuals(out, results, metrics, max_visual)
    header = "<pre>" + html.escape("\n".join(f"{k}: {json.dumps(_jsonable(v), ensure_ascii=False)}"
                                              for k, v in run_info.items())) + "</pre>"
    header += "<ul>" + "".join(f"<li><b>{html.escape(b.kind)}</b>: {html.escape(b.name)} — {html.escape(b.arch)}"
                               f" — sha256 <code>{b.sha256}</code></li>" for b in backbones.values()) + "</ul>"
    page = _html_page(title, header, _md_to_html_table(table), sections)
    (out / "report.html").write_text(page, encoding="utf-8")
    logger.info("report written to %s", out)
    return summary


def _write_csv(path: Path, results: list[SampleResult], metrics: dict[str, MetricInfo]) -> None:
    meta_keys: list[str] = []
    for r in results:
        for k in r.meta:
            if k not in meta_keys:
                meta_keys.append(k)
    columns = ["id", "group", "status", "message"] + meta_keys + [_metric_column(n, m) for n, m in metrics.items()]
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(columns)
        for r in results:
            row = [r.id, r.group, r.status, r.message]
            for k in meta_keys:
                v = r.meta.get(k)
                row.append(json.dumps(_jsonable(v), ensure_ascii=False) if isinstance(v, (dict, list)) else
                           ("" if v is None else v))
            for n in metrics:
                v = finite_or_none(r.metrics.get(n)) if r.ok else None
                row.append("" if v is None else repr(float(v)))
            writer.writerow(row)


def _write_visuals(out: Path, results: list[SampleResult], metrics: dict[str, MetricInfo],
                   max_visual: int) -> list[str]:
    groups: dict[str, list[SampleResult]] = OrderedDict()
    for r in results:
        groups.setdefault(r.group, []).append(r)
    (out / "grids").mkdir(exist_ok=True)
    sections = []
    for group, members in groups.items():
        # excluded samples first, so problems are visible in the first rows
        shown = ([r for r in members if not r.ok] + [r for r in members if r.ok])[:max(0, max_visual)]
        grid_html = ""
        grid = make_grid(shown)
        if grid is not None:
            grid_name = f"grids/{slug(group)}.png"
            grid.save(out / grid_name)
            grid_html = f'<p><a href="{grid_name}">PNG grid ({len(shown)} of {len(members)})</a></p>'
        shown_ids = {id(r) for r in shown}
        rows = []
        thumbs_dir = out / "thumbs" / slug(group)
        for i, r in enumerate(members):
            cells = []
            if id(r) in shown_ids:
                thumbs_dir.mkdir(parents=True, exist_ok=True)
                for label, src in r.visuals:
                    name = f"thumbs/{slug(group)}/{i:05d}_{slug(label)}.png"
                    _fit(_load_visual(src), THUMB).save(out / name)
                    cells.append(f'<img src="{name}" title="{html.escape(label)}">')
            metric_text = ", ".join(f"{k}={format_value(r.metrics.get(k))}" for k in metrics if k in r.metrics)
            status = html.escape(r.status) if r.ok else f'<span class="bad">{html.escape(r.status)}: ' \
                                                         f'{html.escape(r.message)}</span>'
            rows.append(f"<tr><td>{html.escape(r.id)}</td><td>{html.escape(str(r.meta.get('instruction', '')))}"
                        f"</td><td>{status}</td><td>{metric_text}</td><td>{''.join(cells)}</td></tr>")
        labels = " | ".join(dict.fromkeys(label for r in shown for label, _ in r.visuals))
        sections.append(f"<h2>{html.escape(group)}</h2>{grid_html}<table><tr><th>id</th><th>instruction</th>"
                        f"<th>status</th><th>metrics</th><th>{html.escape(labels)}</th></tr>{''.join(rows)}</table>")
    return sections
