"""MagicBrush from its Hugging Face parquet shards → ``edit`` samples with edit masks.

Layout (``osunlp/MagicBrush``): ``data/train-*.parquet`` and ``data/dev-*.parquet`` with columns ``img_id``
(COCO id as a string), ``turn_index`` (1, 2, 3 … within the editing session), ``source_img``, ``mask_img``,
``instruction``, ``target_img``. Sessions and turns are kept: the sample id is
``magicbrush/{split}/{img_id}-{turn_index}`` (turn k's source is turn k-1's target). The mask (the region the
annotator painted) becomes the schema mask (255 = edit region); a mask whose size differs from the source image is
skipped and reported.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from ..schema import Sample
from ..validate import ItemError, Report
from .hfparquet import edit_pair, find_parquet_files, image_cell_bytes, iter_parquet_rows
from .masks import mask_bytes_for

NAME = "magicbrush"
HELP = ("MagicBrush (HF parquet: img_id, turn_index, source_img, mask_img, instruction, target_img; train and dev) "
        "→ edit samples with masks")
LAYOUT = "MagicBrush HF parquet"
REQUIRED = ("img_id", "turn_index", "source_img", "mask_img", "instruction", "target_img")


def magicbrush_samples(data: str, report: Report, splits: tuple[str, ...] = ("train", "dev"),
                       use_masks: bool = True) -> Iterator[Sample]:
    for split in splits:
        files = find_parquet_files(data, split, LAYOUT)
        for path, row, rec in iter_parquet_rows(files, REQUIRED, (), LAYOUT, report):
            sample = None
            with report.guard(path, row):
                base = os.path.dirname(path)
                img_id, turn = rec.get("img_id"), rec.get("turn_index")
                if img_id is None or turn is None:
                    raise ItemError("missing field", "'img_id'" if img_id is None else "'turn_index'")
                instruction, source, target, size = edit_pair(rec, base, "instruction", "source_img", "target_img")
                mask = None
                if use_masks and rec.get("mask_img") is not None:
                    mask = mask_bytes_for(image_cell_bytes(rec["mask_img"], base, "'mask_img'"), size, "mask_img")
                    if mask is None:
                        report.note("empty mask (kept as free-form edit)")
                sample = Sample(id=f"{NAME}/{split}/{img_id}-{int(turn)}", dataset=NAME, task="edit",
                                instruction=instruction, source_image=source, target_image=target, mask_image=mask)
            if sample is not None:
                yield sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder as downloaded from HF (holds data/*.parquet)")
    parser.add_argument("--splits", nargs="+", default=["train", "dev"], help="splits to convert (default: train dev)")
    parser.add_argument("--no-masks", action="store_true", help="do not store the edit masks")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{NAME}-{'-'.join(args.splits)}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    return magicbrush_samples(args.data, report, tuple(args.splits), not args.no_masks)
