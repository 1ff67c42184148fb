"""COCO annotation helpers without pycocotools: ``instances.json`` indexing and segmentation → binary mask.

Segmentations come in three public forms (all handled):

* polygons: ``[[x1, y1, x2, y2, …], …]`` in pixel coordinates (rasterised with PIL; the union of the parts);
* uncompressed RLE: ``{"size": [h, w], "counts": [n0, n1, …]}`` (crowd annotations);
* compressed RLE: ``{"size": [h, w], "counts": "<ascii>"}`` (COCO's 6-bit variable-length string).

RLE runs alternate background/foreground starting with background, over the image in column-major order.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..validate import ItemError, LayoutError

__all__ = ["CocoIndex", "load_instances", "annotation_mask", "polygons_to_mask", "rle_decode", "rle_encode",
           "counts_to_string", "string_to_counts", "load_json"]


MAX_JSON_BYTES = 8 << 30
"""Largest annotation JSON read (COCO's instances files are a few hundred MB)."""


def load_json(path: str | os.PathLike, what: str, max_bytes: int = MAX_JSON_BYTES):
    """JSON from ``path`` (UTF-8, falling back to cp1252 as some annotation tools write); a missing, malformed,
    too large or absurdly deeply nested file is a :class:`LayoutError` naming ``what`` was expected."""
    if not os.path.isfile(path):
        raise LayoutError(f"{path} not found: expected {what}")
    size = os.path.getsize(path)
    if size > max_bytes:
        raise LayoutError(f"{path} is {size:,} bytes, more than the {max_bytes:,} an annotation file may have: "
                          f"expected {what}")
    with open(path, "rb") as f:
        raw = f.read()
    for encoding in ("utf-8", "cp1252"):
        try:
            return json.loads(raw.decode(encoding))
        except UnicodeDecodeError:
            continue
        except json.JSONDecodeError as exc:
            raise LayoutError(f"{path} is not valid JSON ({exc}): expected {what}") from None
        except RecursionError:
            raise LayoutError(f"{path} nests too deeply to be an annotation file: expected {what}") from None
    raise LayoutError(f"{path} is neither UTF-8 nor cp1252 text: expected {what}")


@dataclass
class CocoIndex:
    """``images`` (id → image record) and ``annotations`` (id → annotation record) of an ``instances.json``."""

    images: dict[int, dict]
    annotations: dict[int, dict]
    categories: dict[int, str]

    def image_record(self, image_id: int) -> dict:
        rec = self.images.get(image_id)
        if rec is None:
            raise ItemError("missing field", f"image id {image_id} is not in instances.json")
        return rec

    def annotation(self, ann_id: int) -> dict:
        ann = self.annotations.get(ann_id)
        if ann is None:
            raise ItemError("missing field", f"annotation id {ann_id} is not in instances.json")
        return ann


def load_instances(path: str | os.PathLike) -> CocoIndex:
    """Index a COCO ``instances.json`` (``images``, ``annotations``, ``categories``)."""
    what = "a COCO instances.json with 'images', 'annotations' and 'categories' lists"
    data = load_json(path, what)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise LayoutError(f"{path} is not a COCO instances file: expected {what}, found {found}")
    images = {int(im["id"]): im for im in data["images"] if isinstance(im, dict) and "id" in im}
    anns = {int(a["id"]): a for a in data["annotations"] if isinstance(a, dict) and "id" in a}
    cats = {int(c["id"]): str(c.get("name", c["id"])) for c in data.get("categories") or []
            if isinstance(c, dict) and "id" in c}
    return CocoIndex(images, anns, cats)


def polygons_to_mask(polygons: Sequence[Sequence[float]], height: int, width: int) -> np.ndarray:
    """Union of the filled polygons as a bool [H, W] array."""
    from PIL import Image, ImageDraw

    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for poly in polygons:
        pts = [float(v) for v in poly]
        if len(pts) < 6 or len(pts) % 2:
            raise ItemError("malformed segmentation", f"polygon with {len(pts)} coordinates")
        draw.polygon(list(zip(pts[0::2], pts[1::2])), fill=1, outline=1)
    return np.array(canvas, dtype=bool)


def string_to_counts(s: str) -> list[int]:
    """COCO's compressed RLE string → run lengths."""
    counts: list[int] = []
    p = 0
    while p < len(s):
        x, k, more = 0, 0, True
        while more:
            if p >= len(s):
                raise ItemError("malformed segmentation", "truncated compressed RLE string")
            c = ord(s[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and (c & 0x10):
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


def counts_to_string(counts: Sequence[int]) -> str:
    """Run lengths → COCO's compressed RLE string (inverse of :func:`string_to_counts`)."""
    out = []
    for i, c in enumerate(counts):
        x = int(c) - (int(counts[i - 2]) if i > 2 else 0)
        more = True
        while more:
            ch = x & 0x1F
            x >>= 5
            more = (x != -1) if (ch & 0x10) else (x != 0)
            if more:
                ch |= 0x20
            out.append(chr(ch + 48))
    return "".join(out)


def rle_decode(rle: Mapping, height: int | None = None, width: int | None = None) -> np.ndarray:
    """RLE dict (``counts`` list or string, ``size`` [h, w]) → bool [H, W]."""
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2):
        raise ItemError("malformed segmentation", "RLE without a [height, width] size")
    h, w = int(size[0]), int(size[1])
    if (height is not None and h != height) or (width is not None and w != width):
        raise ItemError("mask of the wrong size", f"RLE is {w}x{h}, image is {width}x{height}")
    counts = rle.get("counts")
    if isinstance(counts, bytes):
        counts = counts.decode("ascii")
    if isinstance(counts, str):
        counts = string_to_counts(counts)
    if not isinstance(counts, (list, tuple)) or any(int(c) < 0 for c in counts):
        raise ItemError("malformed segmentation", "RLE counts must be a list of non-negative run lengths or a string")
    if sum(int(c) for c in counts) != h * w:
        raise ItemError("malformed segmentation", f"RLE covers {sum(counts)} pixels, image has {h * w}")
    values = (np.arange(len(counts)) % 2).astype(bool)
    flat = np.repeat(values, np.asarray(counts, dtype=np.int64))
    return flat.reshape(w, h).T.copy()


def rle_encode(mask: np.ndarray) -> dict:
    """bool [H, W] → uncompressed RLE dict ``{"size": [h, w], "counts": [...]}``."""
    m = np.asarray(mask, dtype=bool)
    flat = m.T.reshape(-1)
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    runs = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        runs = [0] + runs
    return {"size": [int(m.shape[0]), int(m.shape[1])], "counts": [int(r) for r in runs]}


def annotation_mask(segmentation, height: int, width: int) -> np.ndarray:
    """Any COCO segmentation form → bool [H, W]."""
    if isinstance(segmentation, Mapping):
        return rle_decode(segmentation, height, width)
    if isinstance(segmentation, (list, tuple)) and segmentation:
        if all(isinstance(v, (int, float)) for v in segmentation):  # a single flat polygon
            segmentation = [segmentation]
        return polygons_to_mask(segmentation, height, width)
    raise ItemError("malformed segmentation", f"unsupported segmentation {type(segmentation).__name__}")
