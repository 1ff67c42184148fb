"""Command line of the stage scripts (``train/stage1_align.py``, ``train/stage2_mllmsd.py``,
``train/stage2_smartedit.py``): each is ``main(argv) = run_stage(STAGE, argv, ds_dir)``.

The experiment config comes from ``--preset`` (tiny / 7b / 13b, default tiny) or ``--config FILE``; the flags
below override it, then every ``--set key=value`` (any field, dotted, e.g. ``--set optim.lr=1e-4``).
Exit status: 0 done, 2 bad configuration, missing files, a checkpoint that does not fit the run or does not verify,
an output folder another run is using, or too many corrupt data rows; 3 aborted on non-finite losses.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from ..config import ConfigError
from .config import parse_override

logger = logging.getLogger("smartedit.train")

__all__ = ["build_parser", "experiment_from_args", "run_stage"]

_DESCRIPTIONS = {
    "stage1": "Stage 1 (alignment): trains the Q-Former, its queries and the 35 new token rows on captions; loss = "
              "LM cross-entropy + MSE to the CLIP text encoder's hidden states.",
    "stage2a": "Stage 2a (MLLM-SD): adds LoRA to the LLM and trains it with the new token rows, the Q-Former and the "
               "whole UNet on the editing mixture; loss = LM cross-entropy + diffusion MSE (CFG dropout).",
    "stage2b": "Stage 2b (SmartEdit): as stage 2a plus the BIM (zero-initialised, so training starts exactly where "
               "stage 2a ended).",
}


def build_parser(stage: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=_DESCRIPTIONS[stage])
    p.add_argument("--preset", default=None, choices=["tiny", "7b", "13b"],
                   help="experiment preset for this stage (default tiny, unless --config is given)")
    p.add_argument("--config", help="experiment config JSON (e.g. train/configs/7b/...json)")
    p.add_argument("--init", help="initial weights: a model folder, the previous stage's --output folder, or "
                                  "random:tiny")
    p.add_argument("--output", help="run folder: checkpoints/, metrics.jsonl, model/ (the exported model)")
    p.add_argument("--deepspeed", help="zero2, zero3, zero3_offload (train/ds/NAME.json) or a DeepSpeed JSON path")
    p.add_argument("--resume", help="'latest' (the newest checkpoint in --output whose contents verify; starts "
                                    "fresh if there is none, refuses if there are some and none verifies) or a "
                                    "checkpoint folder")
    p.add_argument("--restart", action="store_true",
                   help="train from step 0 in an --output that holds checkpoints (they are deleted)")
    p.add_argument("--max-steps", type=int)
    if stage == "stage1":
        p.add_argument("--clip-text", help="CLIP text encoder: a Stable Diffusion folder (text_encoder/ + "
                                           "tokenizer/) or a CLIPTextModel folder")
    p.add_argument("--source", action="append", default=[], metavar="NAME=SPEC",
                   help="data source (parquet folder, shapes:FAMILY:N, python:MODULE:FUNC); repeatable")
    p.add_argument("--data-root", help="data root with one folder of parquet shards per source (docs/data.md)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any experiment field, e.g. optim.lr=1e-4 or data.num_workers=4; repeatable")
    p.add_argument("--log-level", default="INFO")
    p.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)
    return p


def experiment_from_args(stage: str, args: argparse.Namespace):
    from .config import ExperimentConfig
    from .presets import experiment_preset

    if args.config:
        cfg = ExperimentConfig.load(args.config)
        if args.preset:
            raise ConfigError(["give --preset or --config, not both"])
    else:
        cfg = experiment_preset(args.preset or "tiny", stage)
    if cfg.stage != stage:
        raise ConfigError([f"the config is for {cfg.stage}, but this script runs {stage}"])
    overrides = {}
    for flag, key in (("init", "init"), ("output", "output_dir"), ("deepspeed", "deepspeed"),
                      ("max_steps", "max_steps"), ("clip_text", "align.clip_text"), ("data_root", "data.root")):
        value = getattr(args, flag, None)
        if value is not None:
            overrides[key] = value
    for item in args.source:
        name, spec = parse_override(item)
        overrides[f"data.sources.{name}"] = str(spec)
    for item in args.set:
        key, value = parse_override(item)
        overrides[key] = value
    return cfg.replace(**overrides) if overrides else cfg


def run_stage(stage: str, argv: list[str] | None = None, ds_dir: str | None = None) -> int:
    """Parse ``argv``, train ``stage``, export the model; returns the exit status."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    args = build_parser(stage).parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    level = getattr(logging, str(args.log_level).upper(), logging.INFO) if rank == 0 else logging.WARNING
    logging.basicConfig(level=level, format=f"[rank{rank}] %(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("DeepSpeed", "deepspeed", "torch.distributed", "urllib3"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))

    from .checkpoint import RunLockedError
    from .trainer import BadDataError, NonFiniteLossError, Trainer

    try:
        cfg = experiment_from_args(stage, args)
        trainer = Trainer(cfg, ds_search_dirs=(ds_dir,) if ds_dir else ())
        result = trainer.run(resume=args.resume, restart=args.restart)
    except NonFiniteLossError as exc:
        logger.error("%s", exc)
        return 3
    except BadDataError as exc:
        logger.error("%s", exc)
        return 2
    except (ConfigError, FileNotFoundError, FileExistsError, ValueError, ImportError, RunLockedError) as exc:
        logger.error("%s", exc)
        return 2
    logger.info("%s done: %d steps (%d skipped); model in %s", stage, result.steps, result.skipped_steps,
                result.model_dir)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_stage(sys.argv[1], sys.argv[2:]))
