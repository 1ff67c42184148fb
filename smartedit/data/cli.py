"""The ``smartedit data`` command: ``convert NAME …``, ``stats DIR``, ``validate DIR``, ``preview DATA``.

Wire it into a top-level parser with :func:`register`::

    sub = parser.add_subparsers(dest="command", required=True)
    register(sub)                 # adds "data"; handlers are set as ``func`` (call ``args.func(args)`` → int)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

logger = logging.getLogger(__name__)

__all__ = ["register", "cmd_stats", "cmd_validate", "cmd_preview", "cmd_convert"]


def _ratio(text: str) -> tuple[str, float]:
    name, sep, value = text.partition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT, got {text!r}") from None


def cmd_stats(args: argparse.Namespace) -> int:
    from .stats import dataset_stats, format_stats
    from .validate import LayoutError

    try:
        stats = dataset_stats(args.path, examples=args.examples)
    except LayoutError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    sys.stdout.write((json.dumps(stats, indent=2) if args.json else format_stats(stats)) + "\n")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .check import check_shards
    from .validate import LayoutError

    try:
        report = check_shards(args.path, decode=not args.no_decode)
    except LayoutError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    if args.report:
        report.write(args.report)
    sys.stdout.write((json.dumps(report.to_dict(), indent=1) if args.json else report.summary()) + "\n")
    return 1 if report.skipped else 0


def _preview_source(args: argparse.Namespace):
    from .io import ParquetSampleDataset, list_shards
    from .mixture_config import DEFAULT_STAGE2_RATIOS, DataConfig
    from .sources import open_sources, source_folders

    path = args.data
    direct = os.path.isdir(path) and any(f.endswith(".parquet") for f in os.listdir(path))
    if os.path.isfile(path) or direct:
        sources = {os.path.basename(os.path.normpath(path)) or "data": ParquetSampleDataset(list_shards(path))}
    else:
        sources = open_sources(DataConfig(ratios={name: 1.0 for name in source_folders(path)}, root=path))
    ratios = {n: DEFAULT_STAGE2_RATIOS.get(n, 0.0) for n in sources}
    if not any(ratios.values()):
        ratios = {n: 1.0 for n in sources}
    for name, weight in args.ratio or []:
        if name not in sources:
            raise SystemExit(f"error: --ratio names {name!r}, which is not among the sources {sorted(sources)}")
        ratios[name] = weight
    return DataConfig(ratios=ratios).build({n: s for n, s in sources.items() if ratios[n] > 0}, seed=args.seed)


def cmd_preview(args: argparse.Namespace) -> int:
    from .preview import write_preview
    from .validate import LayoutError

    try:
        mixture = _preview_source(args)
    except (LayoutError, ValueError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    out = write_preview(mixture, args.out, n=args.n, columns=args.columns, cell=args.cell, epoch=args.epoch,
                        start=args.start)
    sys.stdout.write(json.dumps({"preview": out, "samples": args.n, "seed": args.seed, "epoch": args.epoch,
                                 "ratios": dict(zip(mixture.names, [round(float(p), 4) for p in mixture.probs]))})
                     + "\n")
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from .recipes import run_recipe

    if args.recipe is None:  # `smartedit data convert` or `... convert --help`: the list of recipes
        args.convert_parser.print_help()
        return 0 if args.convert_help else 2
    return run_recipe(args.recipe, list(args.recipe_args), prog=f"smartedit data convert {args.recipe}")


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``data`` command (with its sub-commands) to ``subparsers``; returns its parser."""
    from .recipes import RECIPES

    data = subparsers.add_parser("data", help="dataset recipes: convert, stats, validate, preview",
                                 description="Convert public datasets to the uniform schema and inspect the result.")
    sub = data.add_subparsers(dest="data_command", required=True)

    convert = sub.add_parser("convert", help="convert one dataset from its public layout (see docs/data.md)",
                             add_help=False)
    convert.add_argument("-h", "--help", dest="convert_help", action="store_true", help="show this help")
    convert.add_argument("recipe", nargs="?", choices=sorted(RECIPES), help="which recipe")
    convert.add_argument("recipe_args", nargs=argparse.REMAINDER,
                         help="the recipe's options (smartedit data convert RECIPE --help lists them)")
    convert.set_defaults(func=cmd_convert, convert_parser=convert)

    stats = sub.add_parser("stats", help="counts, sizes and examples of converted shards")
    stats.add_argument("path", help="folder of shards (searched recursively) or one shard")
    stats.add_argument("--examples", type=int, default=3, help="examples per dataset")
    stats.add_argument("--json", action="store_true")
    stats.set_defaults(func=cmd_stats)

    validate = sub.add_parser("validate", help="decode and check every row of converted shards")
    validate.add_argument("path")
    validate.add_argument("--no-decode", action="store_true", help="check fields only, not the images")
    validate.add_argument("--report", default=None, help="also write the report as JSON here")
    validate.add_argument("--json", action="store_true")
    validate.set_defaults(func=cmd_validate)

    preview = sub.add_parser("preview", help="write an image grid of mixed samples with their instructions")
    preview.add_argument("data", help="data root (one sub-folder of shards per source) or one shard folder")
    preview.add_argument("--out", default="data_preview.png")
    preview.add_argument("--n", type=int, default=12, help="how many draws")
    preview.add_argument("--columns", type=int, default=2)
    preview.add_argument("--cell", type=int, default=160, help="panel size in pixels")
    preview.add_argument("--seed", type=int, default=0)
    preview.add_argument("--epoch", type=int, default=0)
    preview.add_argument("--start", type=int, default=0, help="first draw index")
    preview.add_argument("--ratio", type=_ratio, action="append", metavar="NAME=WEIGHT",
                         help="override a source's weight (repeatable; default: the stage-2 mixture)")
    preview.set_defaults(func=cmd_preview)
    return data
