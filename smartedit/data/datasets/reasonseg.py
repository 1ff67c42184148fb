"""LISA ReasonSeg → ``reasoning`` samples (segmentation as editing with the reasoning question prepended).

Layout (``ReasonSeg/{train,val,test}``)::

    SPLIT/<name>.jpg
    SPLIT/<name>.json   # {"text": [query, …], "is_sentence": bool,
                        #  "shapes": [{"label": "target" | "ignore" | "flag", "points": [[x, y], …]}, …]}

Polygons are filled largest first (so a smaller one drawn later wins where they overlap); "target" pixels form the
mask, "ignore" pixels and "flag" shapes are left out. A sentence query (``is_sentence``) is a question: it is put
in front of the perception instruction, which names the object "the answer"; a short phrase is used as the object
itself. One query per image is chosen from (seed, index), or all with ``--all-questions``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
from collections.abc import Iterator

import numpy as np

from ..choices import pick, recipe_rng
from ..schema import Sample
from ..validate import ItemError, LayoutError, Report, check_image, find_image, read_file_bytes, require
from .perception import segmentation_sample

NAME = "reasonseg"
HELP = "LISA ReasonSeg (json polygons + images) → reasoning samples (question prepended to the perception edit)"


def read_annotation(path: str) -> dict:
    with open(path, "rb") as f:
        raw = f.read()
    for encoding in ("utf-8", "cp1252"):
        try:
            anno = json.loads(raw.decode(encoding))
            break
        except UnicodeDecodeError:
            continue
    else:
        raise ItemError("malformed item", "annotation is neither UTF-8 nor cp1252 text")
    if not isinstance(anno, dict):
        raise ItemError("malformed item", f"annotation is a {type(anno).__name__}, expected an object")
    return anno


def shapes_mask(shapes: list, height: int, width: int) -> np.ndarray:
    """bool [H, W] of the "target" polygons, drawn largest first; "ignore" polygons cut them out."""
    from PIL import Image, ImageDraw

    drawn = []
    for shape in shapes:
        if not isinstance(shape, dict):
            raise ItemError("malformed item", "a shape is not an object")
        label = str(shape.get("label", "target")).lower()
        if label == "flag":
            continue
        points = shape.get("points")
        if not isinstance(points, list) or len(points) < 3:
            raise ItemError("malformed segmentation", f"polygon with {len(points or [])} points")
        pts = [(float(p[0]), float(p[1])) for p in points]
        canvas = Image.new("L", (width, height), 0)
        ImageDraw.Draw(canvas).polygon(pts, fill=1, outline=1)
        area = int(np.array(canvas).sum())
        drawn.append((area, label, pts))
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    for _area, label, pts in sorted(drawn, key=lambda t: -t[0]):
        draw.polygon(pts, fill=255 if label == "ignore" else 1, outline=255 if label == "ignore" else 1)
    return np.array(canvas) == 1


def reasonseg_samples(root: str, report: Report, seed: int = 0, all_questions: bool = False,
                      max_side: int | None = None, name: str = NAME) -> Iterator[Sample]:
    if not os.path.isdir(root):
        raise LayoutError(f"{root} is not a folder: expected a ReasonSeg split folder with <name>.jpg + <name>.json")
    files = sorted(glob.glob(os.path.join(glob.escape(root), "*.json")))
    if not files:
        raise LayoutError(f"no *.json annotations in {root}: expected ReasonSeg/<split>/<name>.json next to "
                          f"<name>.jpg")
    for index, path in enumerate(files):
        out: list[Sample] = []
        with report.guard(path, index):
            anno = read_annotation(path)
            require(anno, ("shapes", "text"), "annotation")
            texts = anno["text"] if isinstance(anno["text"], list) else [anno["text"]]
            texts = [" ".join(str(t).split()) for t in texts if str(t).strip()]
            if not texts:
                raise ItemError("missing field", "'text' holds no query")
            is_sentence = bool(anno.get("is_sentence", True))
            stem = os.path.splitext(os.path.basename(path))[0]
            data = read_file_bytes(root, find_image(root, stem))
            w, h = check_image(data, "image").size
            mask = shapes_mask(anno["shapes"], h, w)
            if not mask.any():
                raise ItemError("empty mask", "no 'target' polygon covers any pixel")
            if all_questions:
                todo = list(enumerate(texts))
            else:
                todo = [(0, pick(recipe_rng(seed, index, 0), texts))]
            for j, text in todo:
                rng = recipe_rng(seed, index, 1 + j)
                sample_id = f"{name}/{stem}" if not all_questions else f"{name}/{stem}-{j}"
                if is_sentence:
                    sample = segmentation_sample(sample_id, name, data, mask, text, rng, task="reasoning",
                                                 question=text, max_side=max_side)
                else:
                    sample = segmentation_sample(sample_id, name, data, mask, text, rng, task="reasoning",
                                                 max_side=max_side)
                out.append(sample)
        yield from out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="ReasonSeg split folder (e.g. ReasonSeg/train)")
    parser.add_argument("--split", default=None, help="split name for the shard prefix (default: the folder's name)")
    parser.add_argument("--all-questions", action="store_true", help="one sample per query (default: one per image)")
    parser.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds this")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{NAME}-{args.split or os.path.basename(os.path.normpath(args.root))}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    return reasonseg_samples(args.root, report, args.seed, args.all_questions, args.max_side)
