"""Typed experiment configuration of one training stage (what to train on, how long, how fast, where to write).

The *model* is described by :class:`smartedit.config.SmartEditConfig` (saved with the weights); an
:class:`ExperimentConfig` describes a *run*: the stage, the initial weights, the batch sizes, the optimiser and its
learning-rate schedule, the data mixture, checkpointing and logging. It is a tree of dataclasses with validation
that reports every problem at once (:class:`smartedit.config.ConfigError`), a JSON round trip and dotted overrides
(``cfg.replace(**{"optim.lr": 1e-4})``), so ``train/configs/*.json`` and ``--set key=value`` on the command line
use the same names.

Batch size: ``micro_batch_size`` samples per process and forward; either ``gradient_accumulation_steps`` is given,
or ``global_batch_size`` is and the accumulation is derived from the world size (the paper presets fix the global
batch at 128, so 8 GPUs × 16 × 1 and 4 GPUs × 16 × 2 train the same thing).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..config import ConfigError, ConfigSection, RootConfig, is_int, is_number
from ..data.mixture_config import DataConfig
from ..stages import STAGES, unknown_parts_problem

__all__ = ["OptimConfig", "DataConfig", "CheckpointConfig", "LogConfig", "AlignConfig", "ExperimentConfig",
           "parse_override", "EXPERIMENT_NAME"]

EXPERIMENT_NAME = "experiment.json"



@dataclass
class OptimConfig(ConfigSection):
    """AdamW and its learning-rate schedule (linear warm-up, then cosine decay to ``min_lr_ratio · lr``)."""

    lr: float = 1e-5
    weight_decay: float = 0.0
    """Decoupled weight decay; never applied to the embedding / LM-head matrices (their base rows are frozen)."""
    betas: tuple[float, ...] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float = 1.0
    """Global gradient-norm clipping (DeepSpeed ``gradient_clipping``); 0 disables it."""
    schedule: str = "cosine"
    warmup_ratio: float = 0.0
    """Warm-up length as a fraction of ``max_steps`` (rounded up), used when ``warmup_steps`` is null."""
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.0
    impl: str = "auto"
    """``torch`` (torch.optim.AdamW: builds nothing), ``deepspeed_cpu_adam`` (for optimizer offload on GPUs; JIT
    compiled on first use) or ``auto`` (the CPU Adam when the DeepSpeed config offloads the optimizer on a GPU
    machine, torch otherwise)."""

    SCHEDULES: ClassVar[tuple[str, ...]] = ("cosine", "constant")
    IMPLS: ClassVar[tuple[str, ...]] = ("auto", "torch", "deepspeed_cpu_adam")

    def problems(self, prefix: str = "optim.") -> list[str]:
        p: list[str] = []
        if not (is_number(self.lr) and self.lr > 0):
            p.append(f"{prefix}lr must be a number > 0, got {self.lr!r}")
        if not (is_number(self.weight_decay) and self.weight_decay >= 0):
            p.append(f"{prefix}weight_decay must be >= 0")
        if not (isinstance(self.betas, (tuple, list)) and len(self.betas) == 2
                and all(is_number(b) and 0 <= b < 1 for b in self.betas)):
            p.append(f"{prefix}betas must be two numbers in [0, 1), got {self.betas!r}")
        if not (is_number(self.eps) and self.eps > 0):
            p.append(f"{prefix}eps must be > 0")
        if not (is_number(self.grad_clip) and self.grad_clip >= 0):
            p.append(f"{prefix}grad_clip must be >= 0 (0 = no clipping)")
        if self.schedule not in self.SCHEDULES:
            p.append(f"{prefix}schedule must be one of {list(self.SCHEDULES)}, got {self.schedule!r}")
        if not (is_number(self.warmup_ratio) and 0 <= self.warmup_ratio < 1):
            p.append(f"{prefix}warmup_ratio must lie in [0, 1)")
        if self.warmup_steps is not None and not is_int(self.warmup_steps, 0):
            p.append(f"{prefix}warmup_steps must be null or an integer >= 0, got {self.warmup_steps!r}")
        if not (is_number(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1):
            p.append(f"{prefix}min_lr_ratio must lie in [0, 1]")
        if self.impl not in self.IMPLS:
            p.append(f"{prefix}impl must be one of {list(self.IMPLS)}, got {self.impl!r}")
        return p


@dataclass
class CheckpointConfig(ConfigSection):
    """Training checkpoints (atomic; model, optimizer, scheduler, RNG and data position) and the final export."""

    every: int = 1000
    """Save every N optimizer steps (and always after the last step)."""
    keep_last: int = 3
    export_dtype: str = "auto"
    """dtype of the exported model: ``auto`` (the training precision), ``float32`` or ``bfloat16``."""

    DTYPES: ClassVar[tuple[str, ...]] = ("auto", "float32", "bfloat16")

    def problems(self, prefix: str = "checkpoint.") -> list[str]:
        p: list[str] = []
        if not is_int(self.every, 1):
            p.append(f"{prefix}every must be a positive integer")
        if not is_int(self.keep_last, 1):
            p.append(f"{prefix}keep_last must be a positive integer")
        if self.export_dtype not in self.DTYPES:
            p.append(f"{prefix}export_dtype must be one of {list(self.DTYPES)}")
        return p


@dataclass
class LogConfig(ConfigSection):
    """Every loss term is written to ``metrics.jsonl`` (always), TensorBoard and W&B (optional)."""

    every: int = 1
    tensorboard: str | bool = "auto"
    """``auto``: use TensorBoard when it is installed; true: require it; false: off."""
    wandb: bool = False
    wandb_project: str = "smartedit"
    sample_ids: bool = False
    """Also write the ids of every micro-batch, per process, to ``samples-rank{R}.jsonl``."""
    progress: bool = True

    def problems(self, prefix: str = "log.") -> list[str]:
        p: list[str] = []
        if not is_int(self.every, 1):
            p.append(f"{prefix}every must be a positive integer")
        if self.tensorboard not in ("auto", True, False):
            p.append(f"{prefix}tensorboard must be 'auto', true or false")
        for name in ("wandb", "sample_ids", "progress"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{prefix}{name} must be true or false")
        return p


@dataclass
class AlignConfig(ConfigSection):
    """Stage 1: LM cross-entropy + MSE(Q-Former output, CLIP-text last hidden state of the caption)."""

    clip_text: str | None = None
    """Folder with a transformers ``CLIPTextModel`` and its tokenizer, or a Stable Diffusion folder holding
    ``text_encoder/`` and ``tokenizer/`` (SD-1.5 for the paper)."""
    lm_weight: float = 1.0
    mse_weight: float = 1.0

    def problems(self, prefix: str = "align.") -> list[str]:
        p: list[str] = []
        if self.clip_text is not None and not (isinstance(self.clip_text, str) and self.clip_text):
            p.append(f"{prefix}clip_text must be null or a folder path")
        for name in ("lm_weight", "mse_weight"):
            if not (is_number(getattr(self, name)) and getattr(self, name) >= 0):
                p.append(f"{prefix}{name} must be a number >= 0")
        return p


@dataclass
class ExperimentConfig(RootConfig):
    """One training run of one stage."""

    FILE_NAME: ClassVar[str] = EXPERIMENT_NAME
    WHAT: ClassVar[str] = "experiment config"
    LOAD_HINT: ClassVar[str] = "give a JSON file such as train/configs/tiny/stage1_align.json"

    stage: str = "stage1"
    preset: str = "custom"
    """Which model preset this experiment was written for (informational)."""
    init: str | None = None
    """Initial weights: a ``save_pretrained`` folder, the previous stage's output folder, or ``random:tiny``."""
    output_dir: str | None = None
    seed: int = 0
    max_steps: int = 1000
    micro_batch_size: int = 1
    gradient_accumulation_steps: int | None = None
    global_batch_size: int | None = None
    precision: str = "auto"
    """``auto`` (bf16 on GPUs that support it, fp32 otherwise), ``fp32`` or ``bf16``. fp16 is not supported."""
    tf32: bool = True
    gradient_checkpointing: bool = False
    deepspeed: str = "zero2"
    """``zero2``, ``zero3``, ``zero3_offload`` or a path to a DeepSpeed JSON (without scheduler/optimizer)."""
    max_nonfinite_in_a_row: int = 3
    also_train: list[str] = field(default_factory=list)
    """Parts trained on top of the stage's own (:data:`smartedit.stages.PARTS`), e.g. ``["llm"]``: the LLM's
    decoder layers. Outside the paper's recipe (which keeps the LLM frozen in stage 1 and LoRA-only in stage 2);
    the ShapesWorld recipe uses it in stage 1, where its tiny LLM never saw a web corpus."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    align: AlignConfig = field(default_factory=AlignConfig)

    PRECISIONS: ClassVar[tuple[str, ...]] = ("auto", "fp32", "bf16")

    # ---- derived values ----------------------------------------------------------------------------------
    def accumulation_steps(self, world_size: int) -> int:
        """Micro-batches per optimizer step and process."""
        if self.global_batch_size is None:
            return self.gradient_accumulation_steps or 1
        per_step = self.micro_batch_size * world_size
        accum, rest = divmod(self.global_batch_size, per_step)
        if rest or accum < 1:
            raise ConfigError([f"global_batch_size ({self.global_batch_size}) must be a multiple of "
                               f"micro_batch_size × processes ({self.micro_batch_size} × {world_size})"])
        if self.gradient_accumulation_steps is not None and self.gradient_accumulation_steps != accum:
            raise ConfigError([f"gradient_accumulation_steps ({self.gradient_accumulation_steps}) contradicts "
                               f"global_batch_size {self.global_batch_size} with {world_size} process(es) × "
                               f"micro batch {self.micro_batch_size} (= {accum}); set one of them to null"])
        return accum

    @property
    def warmup_steps(self) -> int:
        if self.optim.warmup_steps is not None:
            return self.optim.warmup_steps
        return math.ceil(self.optim.warmup_ratio * self.max_steps)

    # ---- validation --------------------------------------------------------------------------------------
    def problems(self, prefix: str = "") -> list[str]:
        p: list[str] = []
        if self.stage not in STAGES:
            p.append(f"{prefix}stage must be one of {list(STAGES)}, got {self.stage!r}")
        for name in ("init", "output_dir"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, str) and value):
                p.append(f"{prefix}{name} must be null or a path")
        if not is_int(self.seed, 0):
            p.append(f"{prefix}seed must be an integer >= 0")
        for name in ("max_steps", "micro_batch_size", "max_nonfinite_in_a_row"):
            if not is_int(getattr(self, name), 1):
                p.append(f"{prefix}{name} must be a positive integer, got {getattr(self, name)!r}")
        for name in ("gradient_accumulation_steps", "global_batch_size"):
            value = getattr(self, name)
            if value is not None and not is_int(value, 1):
                p.append(f"{prefix}{name} must be null or a positive integer, got {value!r}")
        if self.precision not in self.PRECISIONS:
            hint = " (fp16 is not supported: use bf16)" if self.precision == "fp16" else ""
            p.append(f"{prefix}precision must be one of {list(self.PRECISIONS)}, got {self.precision!r}{hint}")
        for name in ("tf32", "gradient_checkpointing"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{prefix}{name} must be true or false")
        if not (isinstance(self.deepspeed, str) and self.deepspeed):
            p.append(f"{prefix}deepspeed must name a config (zero2, zero3, zero3_offload) or a JSON path")
        problem = unknown_parts_problem(self.also_train)
        if problem:
            p.append(f"{prefix}{problem}")
        for name in ("optim", "data", "checkpoint", "log", "align"):
            p += getattr(self, name).problems(f"{prefix}{name}.")
        if not p and self.warmup_steps > self.max_steps:
            p.append(f"{prefix}optim.warmup_steps ({self.warmup_steps}) exceeds max_steps ({self.max_steps}): give "
                     f"more steps or a shorter warm-up (--set optim.warmup_steps={self.max_steps // 2})")
        return p


def parse_override(text: str) -> tuple[str, Any]:
    """``key=value`` from the command line; the value is read as JSON when it parses (numbers, true/false, null,
    lists, objects), as a plain string otherwise."""
    if "=" not in text:
        raise ConfigError([f"override {text!r} must look like key=value, e.g. optim.lr=1e-4"])
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError([f"override {text!r} has an empty key"])
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key, value
