"""``smartedit convert-released`` and ``smartedit export-released``: the released SmartEdit-7B/13B checkpoints ↔ our
``save_pretrained`` folders (see :mod:`smartedit.weights.released` and ``docs/released_weights.md``).

Wire into a parser with :func:`register`::

    sub = parser.add_subparsers(dest="command")
    register(sub)
    args = parser.parse_args(argv)
    args.func(args)  # 0 on success; a layout problem exits with the full list of offending keys
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

logger = logging.getLogger(__name__)

__all__ = ["register", "cmd_convert_released", "cmd_export_released"]

DTYPES = ("float32", "bfloat16", "float16")


def cmd_convert_released(args: argparse.Namespace) -> int:
    from .weights.released import convert_released

    try:
        model = convert_released(args.smartedit, args.llava, args.clip, args.sd, args.out, vicuna=args.vicuna,
                                 keep_lora=args.keep_lora, stage=args.stage, step=args.step, dtype=args.dtype,
                                 preset=args.preset)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        raise SystemExit(f"error: {exc}") from None
    cfg = model.config
    sys.stdout.write(json.dumps({"out": args.out, "bim": cfg.bim.enabled, "lora_r": cfg.lora.r,
                                 "lora": "adapter" if cfg.lora.r else "merged",
                                 "dtype": str(model.dtype).removeprefix("torch."),
                                 "vocab": cfg.mllm.full_vocab_size}) + "\n")
    return 0


def cmd_export_released(args: argparse.Namespace) -> int:
    from .weights.released import export_released

    try:
        paths = export_released(args.model, args.out, step=args.step)
    except (ValueError, FileNotFoundError) as exc:
        raise SystemExit(f"error: {exc}") from None
    sys.stdout.write(json.dumps({"out": args.out, "files": paths}) + "\n")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``convert-released`` and ``export-released`` to ``subparsers`` (``parser.add_subparsers()``)."""
    convert = subparsers.add_parser(
        "convert-released", help="convert the released SmartEdit-7B/13B weights (or a reference stage-1 / 2a "
                                 "checkpoint) into one model folder",
        description="Read the published SmartEdit layout (LLM-N/, embeddings_qformer/, modulate-N/, unet-N/) with "
                    "the LLaVA-1.1, CLIP and Stable Diffusion folders, and write one save_pretrained folder. "
                    "Every .bin is read with weights_only=True. See docs/released_weights.md.")
    convert.add_argument("--smartedit", required=True, help="SmartEdit-7B / -13B folder (or a reference training "
                                                           "output folder)")
    convert.add_argument("--llava", required=True, help="LLaVA-1.1 merge (LLaVA-7B-v1 / LLaVA-13B-v1)")
    convert.add_argument("--vicuna", help="Vicuna-v1.1 folder: tokenizer and LLaMA config, as the reference "
                                          "(default: the LLaVA folder's)")
    convert.add_argument("--clip", required=True, help="CLIP ViT-L/14 folder (openai/clip-vit-large-patch14)")
    convert.add_argument("--sd", required=True, help="SD-1.5 or InstructPix2Pix folder (diffusers layout): VAE, "
                                                     "noise schedule, null text embedding")
    convert.add_argument("--out", required=True, help="model folder to write")
    convert.add_argument("--keep-lora", action="store_true", help="keep LoRA as a peft adapter (r 8) instead of "
                                                                  "merging it (to continue stage-2 training)")
    convert.add_argument("--stage", default="auto", choices=["auto", "stage1", "stage2a", "smartedit"],
                         help="which reference checkpoint (default: from the folders present)")
    convert.add_argument("--step", default=None, help="checkpoint step N (default: the last one in the folder)")
    convert.add_argument("--dtype", default="auto", choices=("auto",) + DTYPES,
                         help="dtype of the written model (auto: bfloat16 for 7B / 13B, float32 below)")
    convert.add_argument("--preset", default="auto", choices=["auto", "7b", "13b", "tiny"],
                         help="Q-Former / BIM sizes (default: from the LLM's hidden size)")
    convert.set_defaults(func=cmd_convert_released)

    export = subparsers.add_parser(
        "export-released", help="write a model folder in the published SmartEdit layout (the inverse)",
        description="Write LLM-N/, embeddings_qformer/, unet-N/ and (with BIM) modulate-N/ with the reference key "
                    "names, e.g. to run the reference code on weights trained here.")
    export.add_argument("--model", required=True, help="model folder (save_pretrained layout)")
    export.add_argument("--out", required=True, help="folder to write the published layout into")
    export.add_argument("--step", default="15000", help="step N in the file names (default 15000, as released)")
    export.set_defaults(func=cmd_export_released)
