"""Experiment presets: one per (model preset, stage), with the paper's hyper-parameters and data mixture.

| stage | steps | global batch (micro × accumulation × 8 GPUs) | lr, schedule | warm-up | weight decay |
|---|---|---|---|---|---|
| stage1 (alignment) | 150,000 | 128 (16 × 1 × 8) | 2e-4, cosine | 4 % | 0 |
| stage2a (MLLM-SD)  | 5,000   | 128 (4 × 4 × 8)  | 1e-5, cosine | 0.1 % | 0 |
| stage2b (SmartEdit)| 15,000  | 128 (2 × 8 × 8)  | 1e-5, cosine | 0 | 0 |

(docs/design.md and the reference's launch scripts: AdamW β = (0.9, 0.999), ε = 1e-8, gradient clipping 1.0 (the
Hugging Face default they ran with), bf16, gradient checkpointing, ZeRO-2.) The global batch is fixed, so the
accumulation adapts to the number of GPUs. Checkpoint frequency is ours (the reference saved every 5,000–10,000
steps). 7b and 13b share the hyper-parameters, as in the reference.

Data: stage 1 reads captions (``cc12m``) from the data root ``data_stage1/``; stage 2 reads the mixture from
``data/`` with :data:`smartedit.data.mixture_config.DEFAULT_STAGE2_RATIOS` (the design's rule applied to the public
dataset sizes; ``DataConfig.from_sizes`` recomputes it for the sizes you converted). Point ``--data-root`` (or
``--source NAME=DIR``) at your converted shards (docs/data.md).

``tiny`` presets run in seconds on a CPU on generated ShapesWorld samples (``shapes:FAMILY:N`` sources, a source kind
that :mod:`smartedit.shapes.sources` registers) standing in for the real sources under the same names and ratios.
"""

from __future__ import annotations

from typing import Any

from ..data.mixture_config import DEFAULT_STAGE2_RATIOS, STAGE1_RATIOS
from ..stages import STAGES
from .config import ExperimentConfig

__all__ = ["experiment_preset", "EXPERIMENT_PRESETS", "CONFIG_FILES", "TINY_STAGE2_SOURCES"]

EXPERIMENT_PRESETS = ("tiny", "7b", "13b")

CONFIG_FILES = {"stage1": "stage1_align.json", "stage2a": "stage2_mllmsd.json", "stage2b": "stage2_smartedit.json"}
"""File names of the experiment configs under ``train/configs/{tiny,7b,13b}/``."""

TINY_STAGE2_SOURCES = {
    "synthetic_reasoning": "shapes:reasoning:32", "reasonseg": "shapes:understanding:32",
    "llava_instruct": "shapes:chat:32", "ip2p": "shapes:simple:32", "magicbrush": "shapes:simple:32:1",
    "refcoco": "shapes:perception:32", "grefcoco": "shapes:perception:32:1", "cocostuff": "shapes:perception:32:2",
}
"""The tiny presets' stand-ins (generated ShapesWorld samples) for the stage-2 sources: same names and ratios."""

_PAPER = {
    "stage1": dict(max_steps=150_000, global_batch_size=128, micro_batch_size=16, lr=2e-4, warmup_ratio=0.04,
                   every=10_000),
    "stage2a": dict(max_steps=5_000, global_batch_size=128, micro_batch_size=4, lr=1e-5, warmup_ratio=0.001,
                    every=1_000),
    "stage2b": dict(max_steps=15_000, global_batch_size=128, micro_batch_size=2, lr=1e-5, warmup_ratio=0.0,
                    every=1_000),
}


def _paper(size: str, stage: str) -> dict[str, Any]:
    p = _PAPER[stage]
    out: dict[str, Any] = {
        "stage": stage, "preset": size, "seed": 0, "max_steps": p["max_steps"],
        "micro_batch_size": p["micro_batch_size"], "global_batch_size": p["global_batch_size"],
        "precision": "auto", "gradient_checkpointing": True, "deepspeed": "zero2",
        "optim": {"lr": p["lr"], "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8, "grad_clip": 1.0,
                  "schedule": "cosine", "warmup_ratio": p["warmup_ratio"], "min_lr_ratio": 0.0},
        "checkpoint": {"every": p["every"], "keep_last": 3},
        "log": {"every": 10},
    }
    if stage == "stage1":
        out["data"] = {"root": "data_stage1", "ratios": dict(STAGE1_RATIOS), "num_workers": 8}
        out["align"] = {"clip_text": "checkpoints/stable-diffusion-v1-5"}
    else:
        out["data"] = {"root": "data", "ratios": dict(DEFAULT_STAGE2_RATIOS), "num_workers": 8}
    return out


def _tiny(stage: str) -> dict[str, Any]:
    out: dict[str, Any] = {
        "stage": stage, "preset": "tiny", "seed": 0, "max_steps": 20, "micro_batch_size": 2,
        "gradient_accumulation_steps": 1, "precision": "auto", "gradient_checkpointing": False,
        "deepspeed": "zero2",
        "optim": {"lr": 1e-3 if stage == "stage1" else 3e-4, "weight_decay": 0.0, "grad_clip": 1.0,
                  "schedule": "cosine", "warmup_steps": 2},
        "checkpoint": {"every": 10, "keep_last": 2},
        "log": {"every": 1},
    }
    if stage == "stage1":
        out["data"] = {"sources": {"cc12m": "shapes:caption:64"}, "ratios": dict(STAGE1_RATIOS)}
    else:
        out["data"] = {"sources": dict(TINY_STAGE2_SOURCES), "ratios": dict(DEFAULT_STAGE2_RATIOS)}
    return out


def experiment_preset(size: str, stage: str, **overrides: Any) -> ExperimentConfig:
    """The experiment config of ``stage`` for model preset ``size`` (``tiny``, ``7b``, ``13b``), with dotted
    overrides."""
    if size not in EXPERIMENT_PRESETS:
        raise ValueError(f"unknown preset {size!r}; choose one of {list(EXPERIMENT_PRESETS)}")
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    data = _tiny(stage) if size == "tiny" else _paper(size, stage)
    cfg = ExperimentConfig.from_dict(data)
    return cfg.replace(**overrides) if overrides else cfg
