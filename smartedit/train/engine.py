"""DeepSpeed engine set-up: the ZeRO configs, ``"auto"`` values filled in from the experiment, the client optimizer.

Three configs ship (``train/ds/*.json`` holds the same JSON, for editing): ``zero2`` (what the paper trained
with), ``zero3`` (parameters partitioned too) and ``zero3_offload`` (optimizer state and parameters in CPU
memory). Each has a ``bf16`` block whose ``enabled`` is ``"auto"``: bf16 on GPUs that support it, fp32 on CPU.

Rules (checked by :func:`prepare_ds_config`, every problem reported at once):

* no ``scheduler`` block — the learning-rate schedule lives in the experiment config and is passed to DeepSpeed as
  a client scheduler (:mod:`smartedit.train.schedule`); a JSON scheduler would silently replace it;
* no ``optimizer`` block — the trainer builds AdamW itself, with the parameter groups of
  :func:`smartedit.stages.optimizer_param_groups` (no weight decay on the embedding / LM-head matrices);
* no fp16 — use bf16 (fp16 is not supported on CPU, and the paper's bf16 runs need no loss scaling);
* ZeRO stage 1, 2 or 3 — a non-finite step is skipped through ZeRO's invalid-gradient-norm check, which stage 0
  lacks; ``bf16.check_grad_overflow`` must stay true for the same reason;
* batch sizes and gradient clipping: ``"auto"`` (or absent) takes the experiment's values; an explicit value that
  differs from them is an error, never a silent override.
"""

from __future__ import annotations

import copy
import json
import logging
import os
from typing import Any

import torch

from ..config import ConfigError

logger = logging.getLogger(__name__)

__all__ = ["DS_CONFIGS", "resolve_precision", "load_ds_config", "prepare_ds_config", "build_optimizer",
           "resolve_optimizer_impl", "offloads_optimizer", "initialize_engine"]

_COMMON: dict[str, Any] = {
    "train_micro_batch_size_per_gpu": "auto",
    "gradient_accumulation_steps": "auto",
    "train_batch_size": "auto",
    "gradient_clipping": "auto",
    "bf16": {"enabled": "auto", "check_grad_overflow": True},
    "steps_per_print": 1000000000,
    "wall_clock_breakdown": False,
}

DS_CONFIGS: dict[str, dict[str, Any]] = {
    "zero2": {**_COMMON, "zero_optimization": {
        "stage": 2, "allgather_partitions": True, "allgather_bucket_size": 200000000, "overlap_comm": True,
        "reduce_scatter": True, "reduce_bucket_size": 200000000, "contiguous_gradients": True}},
    "zero3": {**_COMMON, "zero_optimization": {
        "stage": 3, "overlap_comm": True, "contiguous_gradients": True, "reduce_bucket_size": 50000000,
        "stage3_prefetch_bucket_size": 50000000, "stage3_param_persistence_threshold": 100000,
        "stage3_max_live_parameters": 1000000000, "stage3_max_reuse_distance": 1000000000,
        "stage3_gather_16bit_weights_on_model_save": False}},
    "zero3_offload": {**_COMMON, "zero_optimization": {
        "stage": 3, "offload_optimizer": {"device": "cpu", "pin_memory": True},
        "offload_param": {"device": "cpu", "pin_memory": True}, "overlap_comm": True, "contiguous_gradients": True,
        "reduce_bucket_size": 50000000, "stage3_prefetch_bucket_size": 50000000,
        "stage3_param_persistence_threshold": 100000, "stage3_max_live_parameters": 1000000000,
        "stage3_max_reuse_distance": 1000000000, "stage3_gather_16bit_weights_on_model_save": False}},
}


def resolve_precision(requested: str, device: torch.device) -> str:
    """``auto`` → ``bf16`` on a CUDA device that supports it, ``fp32`` otherwise."""
    if requested == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return "bf16"
        return "fp32"
    if requested not in ("fp32", "bf16"):
        raise ConfigError([f"precision must be auto, fp32 or bf16, got {requested!r}"])
    return requested


def load_ds_config(spec: str | dict, search_dirs: tuple[str, ...] = ()) -> dict[str, Any]:
    """A DeepSpeed config from a dict, a JSON path, or a name: ``NAME.json`` in ``search_dirs`` (the scripts pass
    ``train/ds``) or else the built-in :data:`DS_CONFIGS` entry."""
    if isinstance(spec, dict):
        return copy.deepcopy(spec)
    candidates = [spec] if spec.endswith(".json") else []
    candidates += [os.path.join(d, f"{spec}.json") for d in search_dirs]
    for path in candidates:
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                try:
                    return json.load(f)
                except json.JSONDecodeError as exc:
                    raise ConfigError([f"DeepSpeed config {path} is not valid JSON: {exc}"]) from None
    if spec in DS_CONFIGS:
        return copy.deepcopy(DS_CONFIGS[spec])
    raise FileNotFoundError(f"DeepSpeed config {spec!r} not found: use one of {sorted(DS_CONFIGS)} or a path to "
                            f"a JSON file such as train/ds/zero2.json")


def offloads_optimizer(ds_config: dict[str, Any]) -> bool:
    offload = (ds_config.get("zero_optimization") or {}).get("offload_optimizer") or {}
    return offload.get("device", "none") not in ("none", None)


def _fill(config: dict, key: str, ours: Any, problems: list[str], where: str = "") -> None:
    value = config.get(key, "auto")
    if value == "auto":
        config[key] = ours
    elif value != ours:
        problems.append(f"DeepSpeed config {where}{key} = {value!r} but the experiment gives {ours!r}: set it to "
                        f"\"auto\" (the experiment config is the one place for it)")


def prepare_ds_config(raw: dict[str, Any], *, micro_batch_size: int, accumulation_steps: int, world_size: int,
                      grad_clip: float, precision: str, torch_optimizer: bool = True) -> dict[str, Any]:
    """Validate ``raw`` against the rules in the module docstring and fill its ``"auto"`` values."""
    cfg = copy.deepcopy(raw)
    problems: list[str] = []
    if "scheduler" in cfg:
        problems.append("DeepSpeed config has a 'scheduler' block: remove it. The learning-rate schedule is set in "
                        "the experiment config (optim.schedule / warmup_* / min_lr_ratio) and would be silently "
                        "replaced by the JSON one")
    if "optimizer" in cfg:
        problems.append("DeepSpeed config has an 'optimizer' block: remove it. The trainer builds AdamW with the "
                        "stage's parameter groups (optim.* in the experiment config)")
    fp16 = cfg.get("fp16") or {}
    if fp16.get("enabled") not in (None, False):
        problems.append("DeepSpeed config enables fp16: not supported (use bf16, the 'bf16' block with "
                        "enabled \"auto\")")
    zero = cfg.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (1, 2, 3):
        problems.append(f"zero_optimization.stage must be 1, 2 or 3 (got {stage!r}): skipping non-finite steps "
                        f"relies on ZeRO's gradient-norm check")
    _fill(cfg, "train_micro_batch_size_per_gpu", micro_batch_size, problems)
    _fill(cfg, "gradient_accumulation_steps", accumulation_steps, problems)
    _fill(cfg, "train_batch_size", micro_batch_size * accumulation_steps * world_size, problems)
    _fill(cfg, "gradient_clipping", float(grad_clip), problems)
    bf16 = cfg.setdefault("bf16", {})
    want = precision == "bf16"
    enabled = bf16.get("enabled", "auto")
    if enabled == "auto":
        bf16["enabled"] = want
    elif bool(enabled) != want:
        problems.append(f"DeepSpeed config bf16.enabled = {enabled!r} but the run's precision is {precision}: set "
                        f"it to \"auto\" and choose precision in the experiment config")
    if bf16.get("check_grad_overflow", True) is not True:
        problems.append("bf16.check_grad_overflow must be true: non-finite steps are skipped through it")
    bf16["check_grad_overflow"] = True
    if offloads_optimizer(cfg) and torch_optimizer:
        cfg["zero_force_ds_cpu_optimizer"] = False
    if problems:
        raise ConfigError(problems, "DeepSpeed config")
    return cfg


def resolve_optimizer_impl(impl: str, ds_config: dict[str, Any], device: torch.device) -> str:
    """``auto`` → DeepSpeed's CPU Adam when the optimizer state is offloaded on a GPU machine, torch otherwise."""
    if impl == "auto":
        return "deepspeed_cpu_adam" if offloads_optimizer(ds_config) and device.type == "cuda" else "torch"
    return impl


def build_optimizer(param_groups: list[dict], optim, impl: str):
    """AdamW over ``param_groups``: ``torch`` (torch.optim.AdamW) or ``deepspeed_cpu_adam``."""
    kwargs = dict(lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay)
    if impl == "deepspeed_cpu_adam":
        from deepspeed.ops.adam import DeepSpeedCPUAdam

        logger.info("optimizer: DeepSpeedCPUAdam (JIT-compiled on first use)")
        return DeepSpeedCPUAdam(param_groups, adamw_mode=True, **kwargs)
    return torch.optim.AdamW(param_groups, **kwargs)


def initialize_engine(module: torch.nn.Module, optimizer, scheduler, ds_config: dict[str, Any]):
    """``deepspeed.initialize`` with a client optimizer and client scheduler; returns the engine."""
    import deepspeed

    engine, _, _, _ = deepspeed.initialize(model=module, optimizer=optimizer, lr_scheduler=scheduler,
                                           config=ds_config)
    if engine.lr_scheduler is not scheduler:
        raise RuntimeError("DeepSpeed replaced the client learning-rate scheduler: the DeepSpeed config must not "
                           "define a scheduler")
    return engine
