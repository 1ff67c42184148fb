"""Reason-Edit benchmark (SmartEdit): score existing edits or run a SmartEdit model, then write the report.

    python eval/reason_edit.py --data REASON_EDIT --outputs EDITS --clip CLIP_L14 --lpips LPIPS --out report/
    python eval/reason_edit.py --data REASON_EDIT --outputs SmartEdit-7B/Understand-15000 SmartEdit-7B/Reason-15000 \\
        --clip CLIP_L14 --lpips LPIPS --judge QWEN25_VL --out report/      # the reference's output layout + Ins-align
    python eval/reason_edit.py --data REASON_EDIT --model MODEL_DIR --clip CLIP_L14 --lpips LPIPS --out report/

Layouts, metric definitions and report files: docs/eval.md.
"""

from __future__ import annotations

import argparse

from smartedit.eval import args as eval_args
from smartedit.eval.reason_edit import DEFAULT_CHANGE_THRESHOLD, evaluate


def _guidance(text: str) -> tuple[float, float]:
    try:
        t, i = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected T,I (text and image guidance, e.g. 7.5,1.5), got {text!r}")
    return t, i


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="eval/reason_edit.py", description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, metavar="DIR",
                        help="Reason-Edit folder (1-Left-Right … 5-Multiple-Objects, 6-Reasoning)")
    eval_args.add_source_arguments(parser, several_outputs=True)
    parser.add_argument("--layout", choices=["auto", "ours", "reference"], default="auto",
                        help="layout of --outputs: ours (OUTPUTS/<category>/<stem>.png), reference (SmartEdit's "
                             "test script: <Name>_metrics_<k>/<NNNN>_T<t>_I<i>.png) or auto (default)")
    parser.add_argument("--output-guidance", type=_guidance, metavar="T,I", default=None,
                        help="reference layout with several guidance values per sample: score the files with "
                             "these (e.g. 7.5,1.5)")
    eval_args.add_backbone_arguments(parser, clip="CLIP folder for the mask-crop CLIP score (the paper uses CLIP "
                                                  "ViT-L/14, e.g. a copy of openai/clip-vit-large-patch14)",
                                     lpips=True)
    eval_args.add_judge_arguments(parser, what="adds Ins-align, the share of edits it says follow the instruction")
    parser.add_argument("--targets", metavar="DIR", help="optional ground truth TARGETS/<category>/<stem>.png: adds "
                                                         "edit-region IoU and PSNR vs target")
    parser.add_argument("--change-threshold", type=float, default=DEFAULT_CHANGE_THRESHOLD,
                        help="a pixel counts as changed when max-channel |output − input| exceeds this (on [0,1]; "
                             f"default {DEFAULT_CHANGE_THRESHOLD})")
    eval_args.add_common_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    eval_args.setup_logging(args.log_level, args.verbose)

    def run():
        device = eval_args.resolve_device(args.device)
        return evaluate(
            args.data, out=args.out, outputs=args.outputs, model=args.model, clip=args.clip, lpips=args.lpips,
            targets=args.targets, settings=eval_args.settings_from_args(args), device=device,
            dtype=eval_args.resolve_dtype(args.dtype), skip_existing=args.skip_existing,
            change_threshold=args.change_threshold, allow_size_mismatch=args.allow_size_mismatch, limit=args.limit,
            max_visual=args.max_visual, judge=eval_args.load_judge_from_args(args, device), layout=args.layout,
            output_guidance=args.output_guidance)

    return eval_args.run_main(run, args)


if __name__ == "__main__":
    raise SystemExit(main())
