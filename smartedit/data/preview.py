"""``smartedit data preview``: an image grid of mixed samples with their instructions.

Each tile shows source | target | mask (blank when absent; text-only samples show a grey box) and, below, the
source name, task, id and the instruction (or caption, or the first chat turn), wrapped.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from .schema import Sample, decode_image

__all__ = ["render_tile", "preview_grid", "draw_samples", "write_preview"]

BACKGROUND = (255, 255, 255)
TEXT = (20, 20, 20)
EMPTY = (225, 225, 225)


def _font(size: int = 11):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size)
    except TypeError:  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    words, lines, line = text.split(), [], ""
    for word in words:
        trial = f"{line} {word}".strip()
        if draw.textlength(trial, font=font) <= width or not line:
            line = trial
        else:
            lines.append(line)
            line = word
        if len(lines) == max_lines:
            break
    if line and len(lines) < max_lines:
        lines.append(line)
    if len(lines) == max_lines and " ".join(lines) != " ".join(words):
        lines[-1] = lines[-1].rstrip(".") + " …"
    return lines


def _describe(sample: Sample) -> str:
    if sample.instruction:
        return sample.instruction
    if sample.caption:
        return f"caption: {sample.caption}"
    if sample.conversation:
        q, a = sample.conversation[0]
        return f"Q: {q} A: {a}"
    return ""


def render_tile(sample: Sample, cell: int = 160, label: str | None = None, text_lines: int = 5):
    """One sample as a PIL image: three ``cell``-sized panels and wrapped text below."""
    from PIL import Image, ImageDraw

    font = _font()
    line_h = 13
    header = label or f"{sample.dataset} · {sample.task} · {sample.id}"
    tile = Image.new("RGB", (3 * cell, cell + line_h * (text_lines + 1) + 6), BACKGROUND)
    panels = []
    for name, mode in (("source_image", "RGB"), ("target_image", "RGB"), ("mask_image", "L")):
        data = getattr(sample, name)
        if data is None:
            panels.append(None)
            continue
        try:
            im = decode_image(data, mode).convert("RGB")
        except (OSError, ValueError, SyntaxError):
            im = None
        panels.append(im)
    for k, im in enumerate(panels):
        box = (k * cell, 0)
        if im is None:
            tile.paste(Image.new("RGB", (cell - 2, cell - 2), EMPTY), (box[0] + 1, 1))
            continue
        im = im.copy()
        im.thumbnail((cell - 4, cell - 4))
        x, y = box[0] + 2 + (cell - 4 - im.width) // 2, 2 + (cell - 4 - im.height) // 2
        tile.paste(im, (x, y))
        ImageDraw.Draw(tile).rectangle((x - 1, y - 1, x + im.width, y + im.height), outline=(150, 150, 150))
    draw = ImageDraw.Draw(tile)
    y = cell + 3
    draw.text((4, y), _wrap(draw, header, font, 3 * cell - 8, 1)[0] if header else "", fill=(90, 90, 160), font=font)
    for line in _wrap(draw, _describe(sample), font, 3 * cell - 8, text_lines):
        y += line_h
        draw.text((4, y), line, fill=TEXT, font=font)
    return tile


def preview_grid(samples: Sequence[Sample], columns: int = 2, cell: int = 160,
                 labels: Sequence[str] | None = None):
    """Tiles of ``samples`` in a grid with ``columns`` columns."""
    from PIL import Image

    if not samples:
        raise ValueError("nothing to preview")
    tiles = [render_tile(s, cell, labels[i] if labels else None) for i, s in enumerate(samples)]
    tw, th = tiles[0].size
    rows = (len(tiles) + columns - 1) // columns
    pad = 6
    grid = Image.new("RGB", (columns * (tw + pad) + pad, rows * (th + pad) + pad), (200, 200, 200))
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid.paste(tile, (pad + c * (tw + pad), pad + r * (th + pad)))
    return grid


def draw_samples(mixture, n: int, epoch: int = 0, start: int = 0) -> tuple[list[Sample], list[str]]:
    """Draws ``start … start+n-1`` of ``epoch`` from a mixture (or the first ``n`` rows of a plain dataset)."""
    samples, labels = [], []
    for i in range(start, start + n):
        if hasattr(mixture, "choose"):
            name, j = mixture.choose(epoch, i)
            sample, _key = mixture.draw(epoch, i)
            labels.append(f"draw {i}: {name}[{j}] · {sample.task} · {sample.id}")
        else:
            if i >= len(mixture):
                break
            sample = mixture[i]
            labels.append(f"{sample.dataset} · {sample.task} · {sample.id}")
        samples.append(sample)
    return samples, labels


def write_preview(mixture, out: str | os.PathLike, n: int = 12, columns: int = 2, cell: int = 160, epoch: int = 0,
                  start: int = 0) -> str:
    """Render draws of ``mixture`` to the PNG ``out``; returns its path."""
    samples, labels = draw_samples(mixture, n, epoch, start)
    grid = preview_grid(samples, columns, cell, labels)
    out = str(out)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    grid.save(out)
    return out
