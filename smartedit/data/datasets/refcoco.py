"""RefCOCO / RefCOCO+ / RefCOCOg → ``perception`` samples (segmentation as editing, see :mod:`.perception`).

Layout (as published with the ``refer`` toolkit)::

    ROOT/refs(unc).p        # pickle: list of refs {ref_id, ann_id, image_id, split, sentences: [{sent, raw, …}]}
    ROOT/instances.json     # COCO instances (images with file_name/height/width, annotations with segmentation)
    IMAGES/COCO_train2014_000000xxxxxx.jpg

RefCOCOg ships ``refs(umd).p`` and ``refs(google).p``; pick one with ``--split-by``. The refs pickle is loaded with
a restricted unpickler (plain containers and numbers only). One sample per ref with one of its expressions
chosen from (seed, index), or one per expression with ``--all-sentences``.
"""

from __future__ import annotations

import argparse
import glob
import os
import pickle
import re
from collections.abc import Iterator, Sequence

import numpy as np

from ..choices import pick, recipe_rng
from ..safe_pickle import UnsafePickleError, load_plain_pickle
from ..schema import Sample
from ..validate import ItemError, LayoutError, Report, read_file_bytes, require
from .coco import CocoIndex, annotation_mask, load_instances
from .perception import segmentation_sample

NAME = "refcoco"
HELP = ("RefCOCO / RefCOCO+ / RefCOCOg (refs(unc).p + instances.json + COCO images) → perception samples "
        "(InstructDiffusion segmentation-as-editing)")
REF_FIELDS = ("ann_id", "image_id", "sentences")


def find_refs_file(root: str, pattern: str = "refs({}).p", split_by: str | None = None) -> str:
    """``ROOT/refs(SPLIT_BY).p``; without ``split_by`` the only one present."""
    if not os.path.isdir(root):
        raise LayoutError(f"{root} is not a folder: expected the RefCOCO folder holding {pattern.format('unc')} and "
                          f"instances.json")
    if split_by:
        path = os.path.join(root, pattern.format(split_by))
        if not os.path.isfile(path):
            raise LayoutError(f"{path} not found: expected {pattern.format(split_by)} in {root}")
        return path
    found = sorted(glob.glob(os.path.join(glob.escape(root), pattern.format("*"))))
    if not found:
        raise LayoutError(f"no {pattern.format('*')} in {root}: expected e.g. {pattern.format('unc')} (RefCOCO, "
                          f"RefCOCO+), {pattern.format('umd')} (RefCOCOg) next to instances.json")
    if len(found) > 1:
        names = [os.path.basename(f) for f in found]
        raise LayoutError(f"{root} holds several refs files {names}: choose one with --split-by")
    return found[0]


def load_refs(path: str) -> list[dict]:
    """The refs pickle, via the restricted unpickler; anything but a list of ref dicts is a :class:`LayoutError`."""
    try:
        refs = load_plain_pickle(path)
    except UnsafePickleError as exc:
        raise LayoutError(f"{path} is not a plain refs pickle: {exc}") from None
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, IndexError, KeyError, TypeError,
            AttributeError) as exc:
        raise LayoutError(f"{path} is not a readable pickle ({type(exc).__name__}: {exc}): expected the refer "
                          f"toolkit's list of refs") from None
    if not isinstance(refs, list) or (refs and not isinstance(refs[0], dict)):
        raise LayoutError(f"{path}: expected a list of refs (dicts with {list(REF_FIELDS)}), found "
                          f"{type(refs).__name__}")
    return refs


def ref_sentences(ref: dict) -> list[tuple[int | str, str]]:
    """[(sent_id, expression)] of a ref, empty expressions dropped."""
    out = []
    for k, s in enumerate(ref.get("sentences") or []):
        if isinstance(s, dict):
            text = s.get("sent") or s.get("raw") or ""
            sid = s.get("sent_id", k)
        else:
            text, sid = str(s), k
        text = " ".join(str(text).split())
        if text:
            out.append((sid, text))
    return out


def union_mask(coco: CocoIndex, ann_ids: Sequence[int], height: int, width: int) -> np.ndarray:
    from ...image_io import pixel_budget

    if height < 1 or width < 1:
        raise ItemError("malformed item", f"image record declares {width}x{height} pixels")
    if height * width > pixel_budget():
        raise ItemError("too large", f"image record declares {width}x{height} = {width * height:,} pixels, more "
                                     f"than the {pixel_budget():,} accepted (SMARTEDIT_MAX_PIXELS)")
    mask = np.zeros((height, width), dtype=bool)
    for ann_id in ann_ids:
        ann = coco.annotation(int(ann_id))
        if ann.get("segmentation") is None:
            raise ItemError("missing field", f"annotation {ann_id} has no 'segmentation'")
        mask |= annotation_mask(ann["segmentation"], height, width)
    return mask


def referring_samples(refs: list[dict], coco: CocoIndex, images: str, name: str, report: Report, refs_path: str,
                      seed: int = 0, split: str | None = "train", all_sentences: bool = False,
                      max_side: int | None = None, multi_target: bool = False) -> Iterator[Sample]:
    """Referring expressions → perception samples. ``multi_target`` (gRefCOCO): ``ann_id`` is a list and may be
    empty / ``[-1]`` (no target → no-op edit)."""
    chosen = [r for r in refs if split is None or (isinstance(r, dict) and r.get("split") == split)]
    if refs and not chosen:
        splits = sorted({str(r.get("split")) for r in refs if isinstance(r, dict)})
        raise LayoutError(f"{refs_path}: no ref has split {split!r}; splits present: {splits}")
    for index, ref in enumerate(chosen):
        out: list[Sample] = []
        with report.guard(refs_path, f"ref {ref.get('ref_id', index) if isinstance(ref, dict) else index}"):
            require(ref, ("image_id", "sentences"), "ref")
            if not multi_target:
                require(ref, ("ann_id",), "ref")
            info = coco.image_record(int(ref["image_id"]))
            require(info, ("file_name", "height", "width"), "image record")
            h, w = int(info["height"]), int(info["width"])
            ann_ids = ref.get("ann_id")
            if multi_target:
                ann_ids = ann_ids if isinstance(ann_ids, list) else [ann_ids]
                ann_ids = [a for a in ann_ids if a is not None and int(a) >= 0]
                if ref.get("no_target"):
                    ann_ids = []
            else:
                ann_ids = [ann_ids]
            mask = union_mask(coco, ann_ids, h, w)
            if not mask.any():
                report.note("no-target expression (no-op edit)")
            sentences = ref_sentences(ref)
            if not sentences:
                raise ItemError("missing field", "ref has no non-empty expression")
            data = read_file_bytes(images, info["file_name"])
            ref_id = ref.get("ref_id", index)
            if all_sentences:
                todo = [(j, sid, text, f"{name}/{ref_id}-{sid}") for j, (sid, text) in enumerate(sentences)]
            else:
                rng = recipe_rng(seed, index, 0)
                sid, text = pick(rng, sentences)
                todo = [(0, sid, text, f"{name}/{ref_id}")]
            for j, _sid, text, sample_id in todo:
                rng = recipe_rng(seed, index, 1 + j)
                out.append(segmentation_sample(sample_id, name, data, mask, text, rng, max_side=max_side))
        yield from out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True,
                        help="folder holding refs(unc).p (or refs(umd).p …) and instances.json")
    parser.add_argument("--images", required=True, help="COCO image folder (train2014)")
    parser.add_argument("--name", default=None,
                        help="dataset name (refcoco, refcoco+, refcocog); default: the root folder's name")
    parser.add_argument("--split", default="train", help="refs split to convert (default: train; 'all' for every one)")
    parser.add_argument("--split-by", default=None, help="which refs(X).p: unc, umd, google (default: the only one)")
    parser.add_argument("--all-sentences", action="store_true", help="one sample per expression (default: per ref)")
    parser.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds this")


def dataset_name(args: argparse.Namespace, default: str = NAME) -> str:
    name = args.name or os.path.basename(os.path.normpath(args.root)).lower() or default
    if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
        raise LayoutError(f"dataset name {name!r} may only hold letters, digits and _ . + -; pass --name")
    return name


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{dataset_name(args)}-{args.split}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    refs_path = find_refs_file(args.root, split_by=args.split_by)
    coco = load_instances(os.path.join(args.root, "instances.json"))
    refs = load_refs(refs_path)
    return referring_samples(refs, coco, args.images, dataset_name(args), report, refs_path, args.seed,
                             None if args.split == "all" else args.split, args.all_sentences, args.max_side)
