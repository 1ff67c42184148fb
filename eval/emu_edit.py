"""Emu Edit test set: score existing edits or run a SmartEdit model; bad captions are dropped and counted.

    python eval/emu_edit.py --data emu_edit_test_set/ --split test --outputs EDITS --clip CLIP --dino DINO --out rep/
    python eval/emu_edit.py --data emu_edit_test_set/ --split test --model MODEL --clip CLIP --dino DINO --out rep/

Layouts, metric definitions and report files: docs/eval.md.
"""

from __future__ import annotations

import argparse

from smartedit.eval import args as eval_args
from smartedit.eval.emu_edit import evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval/emu_edit.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="Emu Edit parquet file / folder of parquet files, or a folder with metadata.jsonl")
    parser.add_argument("--split", default=None, help="keep only this split (e.g. test, validation)")
    parser.add_argument("--placeholder", action="append", default=[], metavar="TEXT",
                        help="extra caption text to treat as a placeholder (repeatable)")
    eval_args.add_source_arguments(parser)
    eval_args.add_backbone_arguments(parser, clip="CLIP folder for CLIP-I / CLIP-out / CLIP-dir", dino=True)
    eval_args.add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    eval_args.setup_logging(args.log_level, args.verbose)
    return eval_args.run_main(lambda: evaluate(
        args.data, out=args.out, outputs=args.outputs, model=args.model, clip=args.clip, dino=args.dino,
        split=args.split, extra_placeholders=args.placeholder, settings=eval_args.settings_from_args(args),
        device=eval_args.resolve_device(args.device), dtype=eval_args.resolve_dtype(args.dtype),
        skip_existing=args.skip_existing, allow_size_mismatch=args.allow_size_mismatch, limit=args.limit,
        max_visual=args.max_visual), args)


if __name__ == "__main__":
    raise SystemExit(main())
