"""Turn training state into a model folder in ``SmartEditModel.save_pretrained`` format.

* :func:`export_from_engine` — at the end of a run, from the live DeepSpeed engine (all processes call it; under
  ZeRO-3 the partitioned parameters are gathered layer by layer onto the main process). With bf16 training and an
  fp32 export, trainable weights come from the fp32 master copies, not the bf16 working copies.
* :func:`write_model` — a state dict + model config + tokenizer → an atomically written model folder (built on the
  meta device and filled with ``load_state_dict(strict=True)``, so a missing or extra tensor is an error).

The ZeRO → safetensors command for a training checkpoint is :mod:`smartedit.train.consolidate`.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch

from ..config import SmartEditConfig
from ..model import SmartEditModel
from .checkpoint import finalize, write_json
from .distributed import barrier

logger = logging.getLogger(__name__)

__all__ = ["MODULE_PREFIX", "strip_prefix", "write_model", "export_from_engine", "export_dtype"]

MODULE_PREFIX = "model."
"""Prefix of the model's tensors inside the DeepSpeed module (:class:`~smartedit.train.stage_model.StageModule`)."""

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def export_dtype(requested: str, precision: str) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if precision == "bf16" else torch.float32
    return _DTYPES[requested]


def strip_prefix(state: dict[str, torch.Tensor], prefix: str = MODULE_PREFIX) -> dict[str, torch.Tensor]:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in state.items()}


def write_model(state: dict[str, torch.Tensor], config: SmartEditConfig, tokenizer, directory: str,
                dtype: torch.dtype | None = None, info: dict | None = None) -> str:
    """Write ``state`` (keys of ``SmartEditModel.state_dict()``) as a model folder, atomically (staging + rename)."""
    from accelerate import init_empty_weights

    if dtype is not None:
        state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
    with init_empty_weights(include_buffers=False):
        model = SmartEditModel(config, tokenizer)
    model.load_state_dict(state, strict=True, assign=True)
    model.conv_in_residual.reattach(model.unet)
    staging = directory.rstrip("/\\") + ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    if info is not None:
        write_json(os.path.join(staging, "training.json"), info)
    finalize(staging, directory)
    logger.info("model written to %s", directory)
    return directory


def export_from_engine(engine, module, directory: str, precision: str, dtype: torch.dtype, is_main: bool,
                       info: dict | None = None) -> str | None:
    """Export the model inside ``engine`` (``module`` = the wrapped StageModule) to ``directory``. Collective."""
    from deepspeed.utils import safe_get_full_fp32_param

    if engine.zero_optimization_stage() == 3:
        state = engine._zero3_consolidated_16bit_state_dict()  # full on the main process, None elsewhere
    else:
        state = {k: v.detach().cpu() for k, v in module.state_dict().items()} if is_main else None
    if precision == "bf16" and dtype == torch.float32:
        for name, param in module.named_parameters():
            if param.requires_grad:
                full = safe_get_full_fp32_param(param)  # collective
                if is_main and full is not None:
                    state[name] = full.detach().float().cpu()
    out = None
    if is_main:
        out = write_model(strip_prefix(state), module.model.config, module.model.tokenizer, directory, dtype=dtype,
                          info=info)
    barrier()
    return out
