"""CC12M-style caption TSV → ``caption`` samples for stage-1 alignment (text only: no image is read or stored).

Layout: ``cc12m.tsv``, one ``url<TAB>caption`` per line, no header (a first line ``url<TAB>caption`` is skipped).
CC12M writes people's names as ``<PERSON>``; that placeholder becomes "a person" (``--keep-person-token`` keeps it).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator

from ..schema import Sample
from ..validate import ItemError, LayoutError, Report

NAME = "cc12m"
HELP = "CC12M-style caption TSV (url<TAB>caption) → caption samples (stage 1, text only)"
PERSON_TOKEN = "<PERSON>"


def cc12m_samples(tsv: str, report: Report, keep_person_token: bool = False, name: str = NAME) -> Iterator[Sample]:
    if not os.path.isfile(tsv):
        raise LayoutError(f"{tsv} not found: expected a CC12M-style TSV (url<TAB>caption per line)")
    with open(tsv, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, start=1):
            line = line.rstrip("\n").rstrip("\r")
            if line_no == 1 and line.lower().split("\t")[:2] == ["url", "caption"]:
                continue
            if not line.strip():
                continue
            sample = None
            with report.guard(tsv, line_no):
                parts = line.split("\t")
                if len(parts) != 2:
                    raise ItemError("malformed line", f"{len(parts)} tab-separated fields, expected 2 (url, caption)")
                caption = " ".join(parts[1].split())
                if not keep_person_token:
                    caption = caption.replace(PERSON_TOKEN, "a person")
                if not caption:
                    raise ItemError("missing field", "empty caption")
                sample = Sample(id=f"{name}/{line_no}", dataset=name, task="caption", caption=caption)
            if sample is not None:
                yield sample


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tsv", required=True, help="the caption TSV (url<TAB>caption)")
    parser.add_argument("--split", default="train", help="split name for the shard prefix")
    parser.add_argument("--keep-person-token", action="store_true", help="keep CC12M's <PERSON> placeholder")


def prefix_from_args(args: argparse.Namespace) -> str:
    return f"{NAME}-{args.split}"


def samples_from_args(args: argparse.Namespace, report: Report) -> Iterator[Sample]:
    return cc12m_samples(args.tsv, report, args.keep_person_token)
