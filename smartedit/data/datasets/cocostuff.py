"""COCO-Stuff → ``perception`` samples, with 20 % absent-class no-op edits.

Layout (``stuffthingmaps_trainval2017.zip`` + COCO 2017 images)::

    LABELS/000000xxxxxx.png   # single-channel label map: value = class id - 1 (0..181), 255 = unlabeled / ignore
    IMAGES/000000xxxxxx.jpg   # the matching COCO image (same stem)

Per image and sample (``--samples-per-image``, default 1), from ``recipe_rng(seed, index, k)``: with probability
``absent_ratio`` (0.2) a class that is annotated in COCO-Stuff but absent from this image is named and the target
is the unchanged source (teaching the model that naming something not there changes nothing); otherwise one of
the classes present is marked (pixels labelled 255 are never part of a mask).
"""

from __future__ import annotations

import argparse
import glob
import io
import os
from collections.abc import Iterator, Sequence

import numpy as np

from ..choices import pick, recipe_rng
from ..schema import Sample
from ..validate import ITEM_ERRORS, ItemError, LayoutError, Report, find_image, read_file_bytes
from .perception import segmentation_sample

NAME = "cocostuff"
HELP = "COCO-Stuff (label PNGs, 182 classes, 255 = ignore, + COCO images) → perception samples (20 % absent classes)"
IGNORE = 255
ABSENT_RATIO = 0.2

# COCO-Stuff's 182 class names by label value (= class id - 1): 91 thing ids, then 91 stuff ids.
_THINGS = ("person bicycle car motorcycle airplane bus train truck boat|traffic light|fire hydrant|street sign|"
           "stop sign|parking meter|bench bird cat dog horse sheep cow elephant bear zebra giraffe hat backpack "
           "umbrella shoe|eye glasses|handbag tie suitcase frisbee skis snowboard|sports ball|kite|baseball bat|"
           "baseball glove|skateboard surfboard|tennis racket|bottle plate|wine glass|cup fork knife spoon bowl "
           "banana apple sandwich orange broccoli carrot|hot dog|pizza donut cake chair couch|potted plant|bed mirror"
           "|dining table|window desk toilet door tv laptop mouse remote keyboard|cell phone|microwave oven toaster "
           "sink refrigerator blender book clock vase scissors|teddy bear|hair drier|toothbrush|hair brush")
_STUFF = ("banner blanket branch bridge building-other bush cabinet cage cardboard carpet ceiling-other ceiling-tile "
          "cloth clothes clouds counter cupboard curtain desk-stuff dirt door-stuff fence floor-marble floor-other "
          "floor-stone floor-tile floor-wood flower fog food-other fruit furniture-other grass gravel ground-other "
          "hill house leaves light mat metal mirror-stuff moss mountain mud napkin net paper pavement pillow "
          "plant-other plastic platform playingfield railing railroad river road rock roof rug salad sand sea shelf "
          "sky-other skyscraper snow solid-other stairs stone straw structural-other table tent textile-other towel "
          "tree vegetable wall-brick wall-concrete wall-other wall-panel wall-stone wall-tile wall-wood water-other "
          "waterdrops window-blind window-other wood")


MULTIWORD = {"traffic light", "fire hydrant", "street sign", "stop sign", "parking meter", "eye glasses",
             "sports ball", "baseball bat", "baseball glove", "tennis racket", "wine glass", "hot dog",
             "potted plant", "dining table", "cell phone", "teddy bear", "hair drier", "hair brush"}


def _things() -> list[str]:
    names: list[str] = []
    for part in _THINGS.split("|"):
        part = part.strip()
        if part in MULTIWORD:
            names.append(part)
        else:
            names += part.split()
    return names


CLASS_NAMES: tuple[str, ...] = tuple(_things() + _STUFF.split())
"""Label value (0..181) → COCO-Stuff class name."""

UNUSED = frozenset(v - 1 for v in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91))
"""Label values of the 11 COCO thing ids that were never annotated (never "absent" for sure)."""

if len(CLASS_NAMES) != 182:  # pragma: no cover - guards the table above
    raise RuntimeError(f"COCO-Stuff class table has {len(CLASS_NAMES)} names, expected 182")


def class_phrase(name: str) -> str:
    """``building-other`` → ``the building``; ``wall-brick`` → ``the wall brick``; ``tv`` → ``the tv``."""
    base = name
    for suffix in ("-other", "-stuff", "-merged"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return "the " + base.replace("-", " ")


def load_label_names(path: str) -> dict[int, str]:
    """A COCO-Stuff ``labels.txt`` (``id: name`` per line, 0 = unlabeled) → {label value: name}."""
    names: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            if ":" not in line:
                continue
            key, name = line.split(":", 1)
            if key.strip().isdigit() and int(key) > 0:
                names[int(key) - 1] = name.strip()
    if not names:
        raise LayoutError(f"{path}: expected COCO-Stuff labels.txt lines like '1: person'")
    return names


def _label_map(path: str) -> np.ndarray:
    from PIL import Image

    try:
        with open(path, "rb") as f:
            im = Image.open(io.BytesIO(f.read()))
            im.load()
    except ITEM_ERRORS as exc:
        raise ItemError("corrupt or unreadable image", f"label map: {type(exc).__name__}: {exc}"[:300]) from None
    if im.mode not in ("L", "P"):
        raise ItemError("malformed label map", f"mode {im.mode}, expected a single-channel (L or P) PNG")
    return np.array(im)


def cocostuff_samples(images: str, labels: str, report: Report, seed: int = 0, absent_ratio: float = ABSENT_RATIO,
                      samples_per_image: int = 1, max_side: int | None = None,
                      names: dict[int, str] | None = None, unused: Sequence[int] = UNUSED) -> Iterator[Sample]:
    if not os.path.isdir(labels):
        raise LayoutError(f"{labels} is not a folder: expected COCO-Stuff label maps (stuffthingmaps_trainval2017/"
                          f"train2017/*.png)")
    if not os.path.isdir(images):
        raise LayoutError(f"{images} is not a folder: expected the COCO 2017 images matching the label maps")
    if not 0.0 <= absent_ratio <= 1.0:
        raise ValueError(f"absent_ratio must lie in [0, 1], got {absent_ratio}")
    files = sorted(glob.glob(os.path.join(glob.escape(labels), "*.png")))
    if not files:
        raise LayoutError(f"no *.png label maps in {labels}: expected COCO-Stuff stuffthingmaps (value = class id - 1, "
                          f"255 = unlabeled)")
    names = dict(enumerate(CLASS_NAMES)) if names is None else names
    annotated = sorted(set(names) - set(unused))
    for index, path in enumerate(files):
        out: list[Sample] = []
        with report.guard(path, index):
            stem = os.path.splitext(os.path.basename(path))[0]
            label = _label_map(path)
            values = set(np.unique(label).tolist())
            bad = sorted(v for v in values if v != IGNORE and v not in names)
            if bad:
                raise ItemError("invalid label value", f"values {bad[:5]} are not COCO-Stuff classes (0..181, 255)")
            present = sorted(v for v in values if v != IGNORE)
            data = read_file_bytes(images, find_image(images, stem))
            for k in range(samples_per_image):
                rng = recipe_rng(seed, index, k)
                absent = bool(rng.random() < absent_ratio) or not present
                if absent:
                    candidates = [c for c in annotated if c not in values]
                    cls = pick(rng, candidates)
                    mask = np.zeros(label.shape, dtype=bool)
                    report.note("absent-class no-op edit")
                else:
                    cls = pick(rng, present)
                    mask = label == cls
                sample_id = f"{NAME}/{stem}" if samples_per_image == 1 else f"{NAME}/{stem}-{k}"
                out.append(segmentation_sample(sample_id, NAME, data, mask, class_phrase(names[cls]), rng,
                                               max_side=max_side))
        yield from out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--images", required=True, help="COCO 2017 image folder (e.g. train2017)")
    parser.add_argument("--labels", required=True, help="COCO-Stuff label-map folder (stuffthingmaps .../train2017)")
    parser.add_argument("--split", default="train2017", help="name of the split, used in the shard prefix")
    parser.add_argument("--absent-ratio", type=float, default=ABSENT_RATIO, help="share of absent-class no-op edits")
    parser.add_argument("--samples-per-image", type=int, default=1)
    parser.add_argument("--label-names", default=None, help="optional labels.txt ('1: person' …) to rename classes")
    parser.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds this")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{NAME}-{args.split}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    names = load_label_names(args.label_names) if args.label_names else None
    return cocostuff_samples(args.images, args.labels, report, args.seed, args.absent_ratio, args.samples_per_image,
                             args.max_side, names)
