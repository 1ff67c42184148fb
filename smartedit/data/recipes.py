"""The registry of data recipes and the shared conversion runner.

A recipe module (``smartedit.data.datasets.ip2p``, ``smartedit.data.datasets.refcoco`` …) defines

* ``NAME``, ``HELP`` and ``add_arguments(parser)`` (its own command-line options);
* ``samples_from_args(args, report) -> Iterator[Sample]`` (the conversion, streaming, skip-and-report);
* ``prefix_from_args(args) -> str`` (the shard prefix, ``{dataset}-{split}``).

:func:`convert` runs one: it writes the shards and ``{prefix}.report.json``, and turns "every item was skipped"
into one clear :class:`LayoutError` (a layout that is wrong everywhere). The thin scripts in ``data_recipes/``
and ``smartedit data convert NAME`` both call :func:`run_recipe`.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType

from .io import DEFAULT_ROW_GROUP_SIZE, DEFAULT_SHARD_SIZE, REPORT_SUFFIX, ShardWriter
from .validate import LayoutError, Report

logger = logging.getLogger(__name__)

__all__ = ["RECIPES", "recipe_module", "build_parser", "convert", "run_recipe"]

RECIPES = {
    "ip2p": "smartedit.data.datasets.ip2p",
    "magicbrush": "smartedit.data.datasets.magicbrush",
    "ultraedit": "smartedit.data.datasets.ultraedit",
    "refcoco": "smartedit.data.datasets.refcoco",
    "grefcoco": "smartedit.data.datasets.grefcoco",
    "cocostuff": "smartedit.data.datasets.cocostuff",
    "reasonseg": "smartedit.data.datasets.reasonseg",
    "synthetic_reasoning": "smartedit.data.datasets.synthetic",
    "llava_instruct": "smartedit.data.datasets.llava_instruct",
    "cc12m": "smartedit.data.datasets.cc12m",
}
"""Recipe name → module. The name is also the default mixture source name of its output."""


def recipe_module(name: str) -> ModuleType:
    if name not in RECIPES:
        raise KeyError(f"unknown data recipe {name!r}; choose one of {sorted(RECIPES)}")
    return importlib.import_module(RECIPES[name])


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, help="output folder for the parquet shards and the report")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random choice (template, colour, …)")
    parser.add_argument("--shard-size", type=int, default=DEFAULT_SHARD_SIZE, help="rows per parquet shard")
    parser.add_argument("--row-group-size", type=int, default=DEFAULT_ROW_GROUP_SIZE,
                        help="rows per parquet row group (the unit of a random read)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing shards with the same prefix")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many samples (quick tries)")
    parser.add_argument("-v", "--verbose", action="store_true")


def build_parser(name: str, prog: str | None = None) -> argparse.ArgumentParser:
    module = recipe_module(name)
    parser = argparse.ArgumentParser(prog=prog or f"smartedit data convert {name}", description=module.HELP)
    add_common_arguments(parser)
    module.add_arguments(parser)
    return parser


def convert(name: str, args: argparse.Namespace) -> Report:
    """Run recipe ``name`` with parsed ``args``; returns the report (also written next to the shards)."""
    from tqdm import tqdm

    module = recipe_module(name)
    prefix = module.prefix_from_args(args)
    report = Report(dataset=prefix)
    writer = ShardWriter(args.out, prefix, shard_size=args.shard_size, row_group_size=args.row_group_size,
                         overwrite=args.overwrite)
    try:
        with tqdm(desc=f"convert {prefix}", unit="sample", disable=None, file=sys.stderr) as bar:
            for sample in module.samples_from_args(args, report):
                problems = sample.problems()
                if problems:
                    report.skip(sample.id, None, "invalid sample", "; ".join(problems))
                    continue
                writer.write(sample)
                report.written += 1
                bar.update()
                if args.limit is not None and report.written >= args.limit:
                    break
    except BaseException:  # a layout error or an interruption: leave no output that looks complete
        writer.abort(remove_completed=True)
        raise
    writer.close()
    report_path = os.path.join(args.out, prefix + REPORT_SUFFIX)
    report.write(report_path)
    if report.written == 0 and report.skipped:
        top = next(iter(report.counts().items()))
        first = next(s for s in report.skips if s.reason == top[0])
        raise LayoutError(f"nothing converted for {prefix}: all {report.skipped} item(s) were skipped; most often "
                          f"'{top[0]}' ({top[1]}x, e.g. {first.file} row {first.row}: {first.detail}). Check the "
                          f"paths given against the layout in docs/data.md; full report: {report_path}")
    logger.info("%s\nshards in %s; report: %s", report.summary(), args.out, report_path)
    return report


def run_recipe(name: str, argv: list[str] | None = None, prog: str | None = None) -> int:
    """Command-line entry of recipe ``name``: 0 on success, 2 on a layout error (message on stderr)."""
    parser = build_parser(name, prog)
    args = parser.parse_args(argv)
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        report = convert(name, args)
    except (LayoutError, FileExistsError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write(report.summary() + "\n")
    return 0
