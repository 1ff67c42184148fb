"""Command-line pieces shared by the thin benchmark scripts in ``eval/``.

Every script takes either ``--model DIR`` (run a SmartEdit model; sampling settings recorded) or
``--outputs DIR`` (score edits made elsewhere), the metric backbones as local folders, and ``--out DIR``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable
from typing import Any

import torch

from .backbones import BackboneError
from .generate import GenerationSettings
from .results import BenchmarkError

__all__ = ["add_source_arguments", "add_backbone_arguments", "add_common_arguments", "settings_from_args",
           "resolve_device", "resolve_dtype", "setup_logging", "run_main"]

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text}")
    return value


def _non_negative(text: str) -> float:
    value = float(text)
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be a number >= 0, got {text}")
    return value


def add_source_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="SmartEdit model folder (save_pretrained layout): run it on the "
                                                    "benchmark, write the edits under OUT/outputs, then score them")
    src.add_argument("--outputs", metavar="DIR", help="score existing edited images from this folder (layout: see "
                                                      "docs/eval.md)")
    gen = parser.add_argument_group("generation (with --model)")
    gen.add_argument("--steps", type=_positive_int, default=100, help="denoising steps (default 100, as the reference)")
    gen.add_argument("--text-guidance", type=_non_negative, default=7.5, help="text guidance scale s_T (default 7.5)")
    gen.add_argument("--image-guidance", type=_non_negative, default=1.5, help="image guidance scale s_I (default 1.5)")
    gen.add_argument("--resolution", type=_positive_int, default=None,
                     help="generation resolution (default: the model's)")
    gen.add_argument("--seed", type=int, default=0, help="base seed; sample seed = (seed + crc32(id)) mod 2^31")
    gen.add_argument("--batch-size", type=_positive_int, default=1,
                     help="samples per pipeline call (seeds stay per sample)")
    gen.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="model dtype (default: as saved)")
    gen.add_argument("--skip-existing", action="store_true", help="do not re-generate outputs that already exist")


def add_backbone_arguments(parser: argparse.ArgumentParser, *, clip: str | None = None, dino: bool = False,
                           lpips: bool = False) -> None:
    """``clip``: help text naming the CLIP variant the benchmark uses (None: no --clip)."""
    bb = parser.add_argument_group("metric backbones (local folders; a metric whose backbone is not given is "
                                   "skipped and the report says so)")
    if clip is not None:
        bb.add_argument("--clip", metavar="DIR", help=clip)
    if dino:
        bb.add_argument("--dino", metavar="DIR", help="DINO ViT-S/16 folder (transformers ViTModel, e.g. a copy of "
                                                     "facebook/dino-vits16)")
    if lpips:
        bb.add_argument("--lpips", metavar="DIR", help="LPIPS-squeeze folder: squeezenet1_1 weights + lpips v0.1 "
                                                      "squeeze heads (see docs/eval.md)")


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", metavar="DIR", required=True, help="report folder (created)")
    parser.add_argument("--device", default=None, help="torch device for model and backbones (default: cuda if "
                                                       "available, else cpu)")
    parser.add_argument("--limit", type=_positive_int, default=None, help="only the first N samples (quick checks)")
    parser.add_argument("--max-visual", type=int, default=16, help="samples per group shown in grids / HTML thumbs")
    parser.add_argument("--allow-size-mismatch", action="store_true",
                        help="score outputs whose aspect ratio differs from the reference (resized) instead of "
                             "excluding them as size_mismatch")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(num_inference_steps=args.steps, text_guidance_scale=args.text_guidance,
                              image_guidance_scale=args.image_guidance, resolution=args.resolution, seed=args.seed,
                              batch_size=args.batch_size)


def resolve_device(name: str | None) -> str:
    if name:
        return name
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else _DTYPES[name]


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(level=getattr(logging, level), format="%(levelname)s %(name)s: %(message)s")


def run_main(fn: Callable[[], Any]) -> int:
    """Run a benchmark; setup problems (missing data / model / backbone folders, bad layout) → logged, exit 2.
    Problems with single samples never get here: they are reported per sample."""
    try:
        fn()
    except (BackboneError, BenchmarkError, FileNotFoundError) as e:
        logging.getLogger("smartedit.eval").error("%s", e)
        return 2
    return 0
