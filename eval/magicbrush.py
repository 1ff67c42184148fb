"""MagicBrush test set, single-turn and multi-turn: score existing edits or run a SmartEdit model.

    python eval/magicbrush.py --data MagicBrush/test --outputs EDITS --clip CLIP_B32 --dino DINO --out report/
    python eval/magicbrush.py --data MagicBrush/test --model MODEL_DIR --clip CLIP_B32 --dino DINO --out report/

Layouts, metric definitions and report files: docs/eval.md.
"""

from __future__ import annotations

import argparse

from smartedit.eval import args as eval_args
from smartedit.eval.magicbrush import evaluate


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval/magicbrush.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="PATH",
                        help="MagicBrush test folder (edit_sessions.json + images/) or parquet file(s)")
    parser.add_argument("--captions", metavar="JSON", help="local captions for CLIP-T (default: "
                                                           "DATA/local_descriptions.json when present)")
    eval_args.add_source_arguments(parser)
    eval_args.add_backbone_arguments(parser, clip="CLIP folder for CLIP-I / CLIP-T (MagicBrush uses CLIP ViT-B/32, "
                                                  "e.g. a copy of openai/clip-vit-base-patch32)", dino=True)
    eval_args.add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    eval_args.setup_logging(args.log_level, args.verbose)
    return eval_args.run_main(lambda: evaluate(
        args.data, out=args.out, outputs=args.outputs, model=args.model, clip=args.clip, dino=args.dino,
        captions=args.captions, settings=eval_args.settings_from_args(args),
        device=eval_args.resolve_device(args.device), dtype=eval_args.resolve_dtype(args.dtype),
        skip_existing=args.skip_existing, allow_size_mismatch=args.allow_size_mismatch, limit=args.limit,
        max_visual=args.max_visual), args)


if __name__ == "__main__":
    raise SystemExit(main())
