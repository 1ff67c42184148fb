"""UltraEdit (free-form and region-based) from its parquet shards → ``edit`` samples; region masks feed the optional
mask channels (a sample without a mask is free-form: the collator gives it a blank mask).

Layout (``BleachNick/UltraEdit``, ``BleachNick/UltraEdit_Region_Based_100k``): ``*.parquet`` with columns
``edit_prompt``, ``source_image``, ``edited_image`` (HF image structs) and, for region-based data, ``mask_image``
(white = edit region; soft edges kept as grey levels); ``idx`` names the sample when present. Other columns
(captions, CLIP / DINOv2 / SSIM scores) are ignored.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from ..schema import Sample
from ..validate import ItemError, Report
from .hfparquet import edit_pair, find_parquet_files, image_cell_bytes, iter_parquet_rows
from .masks import mask_bytes_for

NAME = "ultraedit"
HELP = ("UltraEdit free-form / region-based (parquet: edit_prompt, source_image, edited_image[, mask_image]) → edit "
        "samples (region masks kept)")
LAYOUT = "UltraEdit parquet"
REQUIRED = ("edit_prompt", "source_image", "edited_image")
OPTIONAL = ("mask_image", "idx")


def ultraedit_samples(data: str, report: Report, split: str | None = None, require_mask: bool = False
                      ) -> Iterator[Sample]:
    files = find_parquet_files(data, split, LAYOUT)
    for path, row, rec in iter_parquet_rows(files, REQUIRED, OPTIONAL, LAYOUT, report):
        sample = None
        with report.guard(path, row):
            base = os.path.dirname(path)
            instruction, source, target, size = edit_pair(rec, base, "edit_prompt", "source_image", "edited_image")
            mask = None
            if rec.get("mask_image") is not None:
                mask = mask_bytes_for(image_cell_bytes(rec["mask_image"], base, "'mask_image'"), size, "mask_image",
                                      soft=True)
            if mask is None and require_mask:
                raise ItemError("missing field", "'mask_image' (region-based data requires a mask)")
            report.note("region-based (with mask)" if mask is not None else "free-form (no mask)")
            key = rec.get("idx")
            stem = os.path.splitext(os.path.basename(path))[0]
            sample = Sample(id=f"{NAME}/{key}" if key is not None else f"{NAME}/{stem}/{row}", dataset=NAME,
                            task="edit", instruction=instruction, source_image=source, target_image=target,
                            mask_image=mask)
        if sample is not None:
            yield sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder (or parquet file) of UltraEdit shards")
    parser.add_argument("--split", default=None,
                        help="only shards of this split prefix, as published (e.g. FreeForm_0, RegionBase, train); "
                             "default: all")
    parser.add_argument("--kind", choices=["auto", "region"], default="auto",
                        help="'region' skips (and reports) rows without a mask; 'auto' keeps both kinds")


def prefix_from_args(args: argparse.Namespace) -> str:
    """``ultraedit-{split}`` (``--kind auto``) or ``ultraedit-region-{split}`` (``--kind region``), ``split`` =
    ``all`` by default: free-form and region-based conversions can share an output folder."""
    kind = "region-" if args.kind == "region" else ""
    return f"{NAME}-{kind}{args.split or 'all'}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    return ultraedit_samples(args.data, report, args.split, args.kind == "region")
