"""InstructPix2Pix (CLIP-filtered) from its Hugging Face parquet shards → ``edit`` samples.

Layout (``timbrooks/instructpix2pix-clip-filtered``): ``data/train-NNNNN-of-MMMMM.parquet`` with columns
``original_image`` and ``edited_image`` (HF image structs) and ``edit_prompt`` (also ``original_prompt`` /
``edited_prompt``, unused). Images are stored as shipped (no re-encoding).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from ..schema import Sample
from ..validate import Report
from .hfparquet import edit_pair, find_parquet_files, iter_parquet_rows

NAME = "ip2p"
HELP = "InstructPix2Pix CLIP-filtered (HF parquet: original_image, edited_image, edit_prompt) → edit samples"
LAYOUT = "InstructPix2Pix HF parquet"
REQUIRED = ("original_image", "edited_image", "edit_prompt")


def ip2p_samples(data: str, report: Report, split: str | None = "train", name: str = NAME) -> Iterator[Sample]:
    files = find_parquet_files(data, split, LAYOUT)
    for path, row, rec in iter_parquet_rows(files, REQUIRED, (), LAYOUT, report):
        sample = None
        with report.guard(path, row):
            instruction, source, target, _ = edit_pair(rec, os.path.dirname(path), "edit_prompt", "original_image",
                                                       "edited_image")
            sample = Sample(id=f"{name}/{os.path.splitext(os.path.basename(path))[0]}/{row}", dataset=name,
                            task="edit", instruction=instruction, source_image=source, target_image=target)
        if sample is not None:
            yield sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="dataset folder (or one parquet file) as downloaded from HF")
    parser.add_argument("--split", default="train", help="split prefix of the shards (default: train)")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{NAME}-{args.split}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    return ip2p_samples(args.data, report, args.split)
