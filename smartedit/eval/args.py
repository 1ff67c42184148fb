"""Command-line pieces shared by the thin benchmark scripts in ``eval/``.

Every script takes either ``--model DIR`` (run a SmartEdit model; sampling settings recorded) or
``--outputs DIR`` (score edits made elsewhere), the metric backbones as local folders, and ``--out DIR``.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from .backbones import BackboneError
from .generate import GenerationSettings
from .results import BenchmarkError

__all__ = ["add_source_arguments", "add_backbone_arguments", "add_judge_arguments", "add_common_arguments",
           "settings_from_args", "load_judge_from_args", "resolve_device", "resolve_dtype", "setup_logging",
           "describe_incomplete", "run_main", "judged_main"]

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


def add_source_arguments(parser: argparse.ArgumentParser, several_outputs: bool = False) -> None:
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", metavar="DIR", help="SmartEdit model folder (save_pretrained layout): run it on the "
                                                    "benchmark, write the edits under OUT/outputs, then score them")
    src.add_argument("--outputs", metavar="DIR", nargs="+" if several_outputs else None,
                     help="score existing edited images from this folder" + (" (or several, e.g. the reference's "
                          "Understand-<steps>/ and Reason-<steps>/)" if several_outputs else "")
                          + " (layout: see docs/eval.md)")
    gen = parser.add_argument_group("generation (with --model; unset values use the model folder's sampling "
                                    "defaults, recorded in the report)")
    gen.add_argument("--steps", type=_positive_int, default=None, help="denoising steps")
    gen.add_argument("--text-guidance", type=_non_negative, default=None, help="text guidance scale s_T")
    gen.add_argument("--image-guidance", type=_non_negative, default=None, help="image guidance scale s_I")
    gen.add_argument("--resolution", type=_positive_int, default=None,
                     help="generation resolution (default: the model's)")
    gen.add_argument("--seed", type=int, default=0, help="base seed; sample seed = (seed + crc32(id)) mod 2^31")
    gen.add_argument("--batch-size", type=_positive_int, default=1,
                     help="samples per pipeline call (seeds stay per sample)")
    gen.add_argument("--dtype", choices=sorted(_DTYPES), default=None, help="model dtype (default: as saved)")
    gen.add_argument("--skip-existing", action="store_true", help="do not re-generate outputs that already exist")


def add_judge_arguments(parser: argparse.ArgumentParser, required: bool = False, what: str = "") -> None:
    j = parser.add_argument_group("VLM judge (a local folder; scores are not comparable with GPT-judged numbers)")
    j.add_argument("--judge", metavar="DIR", required=required,
                   help="transformers image-text-to-text model folder with a chat template, e.g. a copy of "
                        "Qwen/Qwen2.5-VL-7B-Instruct" + (f" ({what})" if what else ""))
    j.add_argument("--judge-dtype", choices=sorted(_DTYPES), default=None, help="judge dtype (default: as saved)")
    j.add_argument("--judge-max-new-tokens", type=_positive_int, default=512, help="longest judge reply (tokens)")


def load_judge_from_args(args: argparse.Namespace, device: str):
    if not getattr(args, "judge", None):
        return None
    from .judge import load_judge

    return load_judge(args.judge, device=device, dtype=resolve_dtype(args.judge_dtype),
                      max_new_tokens=args.judge_max_new_tokens)


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
    parser.add_argument("--allow-partial", action="store_true",
                        help="exit 0 even when some samples could not be scored (they are listed in the report)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging and full tracebacks")


def settings_from_args(args: argparse.Namespace) -> GenerationSettings:
    return GenerationSettings(num_inference_steps=args.steps, text_guidance_scale=args.text_guidance,
                              image_guidance_scale=args.image_guidance, resolution=args.resolution, seed=args.seed,
                              batch_size=args.batch_size)


def resolve_device(name: str | None) -> str:
    """``--device`` (default: cuda when available, else cpu); under torchrun / accelerate launch ``cuda`` becomes
    this process's GPU (``cuda:<LOCAL_RANK>``)."""
    from ..devices import resolve_device as _resolve
    from ..shard import Shard

    return Shard.from_env().device(str(_resolve(name or "auto")))


def resolve_dtype(name: str | None) -> torch.dtype | None:
    return None if name is None else _DTYPES[name]


def setup_logging(level: str = "INFO", verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else getattr(logging, level),
                        format="%(levelname)s %(name)s: %(message)s")


def _error(message: str) -> None:
    sys.stderr.write(f"error: {message}\n")


def describe_incomplete(run) -> str:
    """One line: how many rows were not scored, per status, the first few ids, and how to go on."""
    bad = run.incomplete
    counts = Counter(r.status for r in bad)
    first = "; ".join(f"{r.id}: {r.message}" for r in bad[:3])
    per_status = ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))
    return (f"{len(bad)} of {len(run.results)} samples were not scored ({per_status}); e.g. {first}; all are "
            f"listed in {run.out_dir / 'summary.md'}; fix them, or pass --allow-partial to accept a partial score")


def run_main(fn: Callable[[], Any], args: argparse.Namespace | None = None) -> int:
    """Run a benchmark. Setup problems (missing data / model / backbone folders, a wrong layout, an impossible
    device) → one ``error:`` line, exit 2. Samples not scored (missing outputs, ...) → exit 1 with one ``error:``
    line unless ``--allow-partial``; problems with single samples are in the report, never a traceback."""
    from ..devices import CLIError

    verbose = bool(getattr(args, "verbose", False))
    try:
        run = fn()
    except (BackboneError, BenchmarkError, FileNotFoundError, CLIError, TimeoutError) as e:
        if verbose:
            raise
        _error(str(e))
        return 2
    except Exception as e:  # an unexpected failure: one line, the traceback with -v
        if verbose:
            raise
        _error(f"{type(e).__name__}: {e} (run with -v for the traceback)")
        return 1
    if run is None or not getattr(run, "merged", True):
        return 0
    if run.incomplete and not getattr(args, "allow_partial", False):
        _error(describe_incomplete(run))
        return 1
    return 0


def judged_main(argv: list[str] | None, *, prog: str, doc: str, data_help: str,
                make_benchmark: Callable[[argparse.Namespace], Any],
                add_arguments: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """The whole ``main(argv)`` of a VLM-judged benchmark script (``eval/gedit.py`` …): ``--data``, ``--model`` or
    ``--outputs``, ``--judge`` (required), the common options, plus ``add_arguments``; ``make_benchmark(args)``
    builds the :class:`~smartedit.eval.benchmark.Benchmark`."""
    parser = argparse.ArgumentParser(prog=prog, description=doc.strip().splitlines()[0])
    parser.add_argument("--data", required=True, metavar="PATH", help=data_help)
    add_source_arguments(parser)
    add_judge_arguments(parser, required=True)
    if add_arguments is not None:
        add_arguments(parser)
    add_common_arguments(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_level, args.verbose)

    def run():
        from .benchmark import run_benchmark
        from .generate import Editor

        device = resolve_device(args.device)
        bench = make_benchmark(args)
        judge = load_judge_from_args(args, device)
        editor = None
        if args.model is not None:
            editor = Editor(args.model, settings_from_args(args), device=device, dtype=resolve_dtype(args.dtype),
                            skip_existing=args.skip_existing)
        return run_benchmark(bench, out=args.out, outputs=args.outputs, editor=editor, judge=judge, limit=args.limit,
                             max_visual=args.max_visual, allow_size_mismatch=args.allow_size_mismatch)

    return run_main(run, args)
