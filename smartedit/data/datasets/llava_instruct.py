"""LLaVA-Instruct-150K → ``chat`` samples (LM loss only, no diffusion loss).

Layout::

    llava_instruct_150k.json   # [{"id": "000000033471", "image": "000000033471.jpg",
                               #   "conversations": [{"from": "human", "value": "<image>\\nWhat …?"},
                               #                     {"from": "gpt", "value": "…"}, …]}, …]
    IMAGES/000000033471.jpg    # COCO train2017

Turns are paired human → gpt; the ``<image>`` placeholder is removed (the collator puts the image tokens in the
first question). A conversation that does not alternate human/gpt is skipped and reported.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from ..schema import Sample
from ..validate import ItemError, LayoutError, Report, check_image, read_file_bytes, require
from .coco import load_json

NAME = "llava_instruct"
HELP = "LLaVA-Instruct-150K (conversations json + COCO images) → chat samples (no diffusion loss)"
IMAGE_PLACEHOLDER = "<image>"
HUMAN, GPT = ("human", "user"), ("gpt", "assistant")


def conversation_turns(conversations: list) -> list[list[str]]:
    """LLaVA ``conversations`` → [[question, answer], …]."""
    if not isinstance(conversations, list) or len(conversations) < 2:
        raise ItemError("malformed conversation", "needs at least one human/gpt pair")
    if len(conversations) % 2:
        raise ItemError("malformed conversation", f"{len(conversations)} turns: the last question has no answer")
    turns = []
    for k in range(0, len(conversations) - 1, 2):
        q, a = conversations[k], conversations[k + 1]
        if not (isinstance(q, dict) and isinstance(a, dict)):
            raise ItemError("malformed conversation", f"turn {k} is not an object")
        if q.get("from") not in HUMAN or a.get("from") not in GPT:
            raise ItemError("malformed conversation", f"turns {k}/{k + 1} are {q.get('from')}/{a.get('from')}, "
                                                      f"expected human/gpt")
        question = " ".join(str(q.get("value") or "").replace(IMAGE_PLACEHOLDER, " ").split())
        answer = str(a.get("value") or "").strip()
        if not question or not answer:
            raise ItemError("missing field", f"empty question or answer in turn {k // 2}")
        turns.append([question, answer])
    return turns


def llava_samples(json_path: str, images: str, report: Report, name: str = NAME) -> Iterator[Sample]:
    data = load_json(json_path, "LLaVA-Instruct's list of {id, image, conversations}")
    if not isinstance(data, list):
        raise LayoutError(f"{json_path}: expected a list of {{id, image, conversations}}, found {type(data).__name__}")
    if data and not any(isinstance(d, dict) and "conversations" in d for d in data[:100]):
        raise LayoutError(f"{json_path}: no item has 'conversations'; expected LLaVA-Instruct's "
                          f"{{id, image, conversations}} items")
    for index, item in enumerate(data):
        sample = None
        with report.guard(json_path, index):
            require(item, ("image", "conversations"), "item")
            turns = conversation_turns(item["conversations"])
            image = read_file_bytes(images, item["image"])
            check_image(image, "image")
            sample = Sample(id=f"{name}/{item.get('id', index)}-{index}", dataset=name, task="chat",
                            conversation=turns, source_image=image)
        if sample is not None:
            yield sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", required=True, help="llava_instruct_150k.json (or another LLaVA-format file)")
    parser.add_argument("--images", required=True, help="COCO image folder (train2017)")
    parser.add_argument("--split", default="train", help="split name for the shard prefix")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{NAME}-{args.split}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    return llava_samples(args.json, args.images, report)
