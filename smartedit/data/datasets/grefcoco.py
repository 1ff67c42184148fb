"""gRefCOCO (generalised referring expressions) → ``perception`` samples.

Layout (as published with ReLA)::

    ROOT/grefs(unc).json    # list of refs {ref_id, image_id, ann_id: [ids] ([-1] or no_target = no object),
                            #               split, sentences: [{sent, raw, …}]}
    ROOT/instances.json     # COCO instances
    IMAGES/COCO_train2014_000000xxxxxx.jpg

An expression may name several objects (the mask is their union) or none (a no-op edit: the target is the
source, unchanged — the same lesson as COCO-Stuff's absent classes).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from ..schema import Sample
from ..validate import LayoutError, Report
from .coco import load_instances, load_json
from .refcoco import dataset_name, find_refs_file, referring_samples

NAME = "grefcoco"
HELP = "gRefCOCO (grefs(unc).json + instances.json + COCO images) → perception samples (multi / no-target refs)"


def load_grefs(path: str) -> list[dict]:
    refs = load_json(path, "gRefCOCO's grefs(unc).json: a list of refs with ann_id lists and sentences")
    if not isinstance(refs, list) or (refs and not isinstance(refs[0], dict)):
        raise LayoutError(f"{path}: expected a list of refs (objects with image_id, ann_id, sentences), found "
                          f"{type(refs).__name__}")
    return refs


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--root", required=True, help="folder holding grefs(unc).json and instances.json")
    parser.add_argument("--images", required=True, help="COCO image folder (train2014)")
    parser.add_argument("--name", default=NAME, help="dataset name (default: grefcoco)")
    parser.add_argument("--split", default="train", help="refs split to convert (default: train; 'all' for every one)")
    parser.add_argument("--split-by", default=None, help="which grefs(X).json (default: the only one)")
    parser.add_argument("--all-sentences", action="store_true", help="one sample per expression (default: per ref)")
    parser.add_argument("--max-side", type=int, default=None, help="downscale images whose longer side exceeds this")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{dataset_name(args, NAME)}-{args.split}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    path = find_refs_file(args.root, "grefs({}).json", args.split_by)
    coco = load_instances(os.path.join(args.root, "instances.json"))
    refs = load_grefs(path)
    return referring_samples(refs, coco, args.images, dataset_name(args, NAME), report, path, args.seed,
                             None if args.split == "all" else args.split, args.all_sentences, args.max_side,
                             multi_target=True)
