"""SmartEdit's synthetic reasoning-editing pairs → ``reasoning`` samples.

Layout: one JSON file, a list of items (or an object mapping ids to items)::

    [{"origin_img_path": "images/0001_src.png", "target_img_path": "images/0001_tgt.png",
      "instruction": ["Remove the object used to cut fruit", "Take away the thing for slicing"]}, …]

Image paths are relative to ``--root`` (default: the JSON file's folder) and must stay inside it.
``instruction`` is a list of paraphrases (a single string is accepted): one is chosen per item from
(seed, index), or every one becomes a sample with ``--all-instructions``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from ..choices import pick, recipe_rng
from ..schema import Sample
from ..validate import ItemError, LayoutError, Report, check_image, read_file_bytes, require
from .coco import load_json

NAME = "synthetic_reasoning"
HELP = "synthetic reasoning editing (json: origin_img_path, target_img_path, instruction list) → reasoning samples"
FIELDS = ("origin_img_path", "target_img_path", "instruction")


def load_items(path: str) -> list[tuple[str, object]]:
    data = load_json(path, f"a list of items with {list(FIELDS)}")
    if isinstance(data, dict):
        items = [(str(k), v) for k, v in data.items()]
    elif isinstance(data, list):
        items = [(str(i), v) for i, v in enumerate(data)]
    else:
        raise LayoutError(f"{path}: expected a list of items with {list(FIELDS)}, found {type(data).__name__}")
    if items and not any(isinstance(v, dict) and "origin_img_path" in v for _, v in items):
        first = items[0][1]
        raise LayoutError(f"{path}: no item has {list(FIELDS)}; the first item has "
                          f"{sorted(first) if isinstance(first, dict) else type(first).__name__}")
    return items


def synthetic_samples(json_path: str, report: Report, root: str | None = None, seed: int = 0,
                      all_instructions: bool = False, name: str = NAME) -> Iterator[Sample]:
    items = load_items(json_path)
    root = root or os.path.dirname(os.path.abspath(json_path))
    for index, (key, item) in enumerate(items):
        out: list[Sample] = []
        with report.guard(json_path, index):
            require(item, FIELDS, "item")
            instructions = item["instruction"]
            if isinstance(instructions, str):
                instructions = [instructions]
            instructions = [" ".join(str(t).split()) for t in instructions if str(t).strip()]
            if not instructions:
                raise ItemError("missing field", "'instruction' holds no text")
            source = read_file_bytes(root, item["origin_img_path"])
            target = read_file_bytes(root, item["target_img_path"])
            check_image(source, "origin image")
            check_image(target, "target image")
            chosen = list(enumerate(instructions)) if all_instructions else [
                (0, pick(recipe_rng(seed, index), instructions))]
            for j, text in chosen:
                sample_id = f"{name}/{key}" if not all_instructions else f"{name}/{key}-{j}"
                out.append(Sample(id=sample_id, dataset=name, task="reasoning", instruction=text,
                                  source_image=source, target_image=target))
        yield from out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="the synthetic-data JSON file")
    parser.add_argument("--root", default=None, help="folder the image paths are relative to (default: the json's)")
    parser.add_argument("--split", default="train", help="split name for the shard prefix")
    parser.add_argument("--all-instructions", action="store_true", help="one sample per paraphrase")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{NAME}-{args.split}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    return synthetic_samples(args.json, report, args.root, args.seed, args.all_instructions)
