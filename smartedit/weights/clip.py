"""CLIP from a local folder (``CLIPModel`` like ``openai/clip-vit-large-patch14``, or ``CLIPVisionModel`` only).

:func:`load_clip` is the one CLIP reader: by default the vision tower as a state dict with its ``VisionConfig``
fields (what SmartEdit's MLLM needs; the text tower and projections are not read); with ``text=True`` the whole
transformers ``CLIPModel`` (vision and text towers, projections) with its tokenizer and image processor (what the
CLIP metrics need). Nothing is downloaded.
"""

from __future__ import annotations

import functools
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import VisionConfig
from .files import (CONFIG_NAME, WEIGHTS_HELP, describe_weight_files, key_problems, raise_problems, read_json,
                    read_state_dict, require_dir, weight_files)

logger = logging.getLogger(__name__)

__all__ = ["CLIP_LAYOUT", "LoadedCLIP", "load_clip", "vision_fields", "normalise_vision_keys", "expected_vision"]

CLIP_LAYOUT = (f"a CLIP folder (like openai/clip-vit-large-patch14) holds {CONFIG_NAME} (model_type 'clip' with "
               f"vision_config, or 'clip_vision_model') and {WEIGHTS_HELP} (keys vision_model.*)")


@dataclass
class LoadedCLIP:
    """What :func:`load_clip` read: the CLIP vision tower (and, with ``text=True``, the whole model)."""

    path: str
    vision: dict[str, Any]
    """``VisionConfig`` fields."""
    vision_state: dict[str, torch.Tensor] | None
    """State dict matching ``SmartEditMLLM.vision_tower`` (a transformers ``CLIPVisionModel``); None with
    ``text=True`` (the tower is inside ``model``)."""
    sources: dict[str, str] = field(default_factory=dict)
    model: Any = None
    """``text=True``: the transformers ``CLIPModel`` (float32, eval mode)."""
    tokenizer: Any = None
    """``text=True``: the folder's tokenizer."""
    image_processor: Any = None
    """``text=True``: the folder's image processor (``preprocessor_config.json``)."""


def vision_fields(cfg, where: str) -> dict[str, Any]:
    """``VisionConfig`` fields from a transformers ``CLIPVisionConfig``."""
    if getattr(cfg, "model_type", None) != "clip_vision_model":
        raise ValueError(f"{where}: the vision tower is {getattr(cfg, 'model_type', None)!r}, but SmartEdit uses a "
                         f"CLIP ViT (model_type 'clip_vision_model'); {CLIP_LAYOUT}")
    if getattr(cfg, "num_channels", 3) != 3:
        raise ValueError(f"{where}: the CLIP vision tower must read 3-channel images, not {cfg.num_channels}")
    return dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.projection_dim,
                layer_norm_eps=float(cfg.layer_norm_eps), hidden_act=cfg.hidden_act)


@functools.lru_cache(maxsize=None)
def _vision_key_prefix() -> str:
    """How the installed transformers names ``CLIPVisionModel`` keys: ``vision_model.`` or nothing (v5)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        keys = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                                num_attention_heads=1, image_size=4, patch_size=2)).state_dict()
    return "vision_model." if any(k.startswith("vision_model.") for k in keys) else ""


def normalise_vision_keys(part: dict[str, torch.Tensor], where: dict[str, str], part_name: str = "vision"
                          ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CLIP vision keys with or without ``vision_model.`` → the installed ``CLIPVisionModel``'s names; the
    ``position_ids`` buffer some older files hold is dropped."""
    prefix = _vision_key_prefix()
    out, out_where = {}, {}
    for key, value in part.items():
        bare = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if bare == "embeddings.position_ids":
            continue
        out[prefix + bare] = value
        out_where[f"{part_name}.{prefix + bare}"] = where.get(f"{part_name}.{key}", "?")
    return out, out_where


def expected_vision(fields: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The (meta) state dict of a ``CLIPVisionModel`` with ``VisionConfig`` ``fields``."""
    from transformers import CLIPVisionModel

    from ..mllm import clip_vision_config

    with torch.device("meta"):
        return CLIPVisionModel(clip_vision_config(VisionConfig(**fields))).state_dict()


def _read_vision_config(path: str) -> tuple[dict[str, Any], str]:
    from transformers import CLIPConfig, CLIPVisionConfig

    raw = read_json(os.path.join(path, CONFIG_NAME), "CLIP config", CLIP_LAYOUT)
    model_type = raw.get("model_type")
    if model_type == "clip":
        vision_cfg = CLIPConfig.from_dict(raw).vision_config
    elif model_type == "clip_vision_model":
        vision_cfg = CLIPVisionConfig.from_dict(raw)
    else:
        raise ValueError(f"{os.path.join(path, CONFIG_NAME)} has model_type {model_type!r}, not a CLIP model; "
                         f"{CLIP_LAYOUT}")
    return vision_fields(vision_cfg, path), model_type


def _load_full(path: str, fields: dict[str, Any], model_type: str) -> LoadedCLIP:
    """The whole ``CLIPModel`` with its tokenizer and image processor (transformers, local files only)."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    if model_type != "clip":
        raise ValueError(f"{path} holds only a CLIP vision tower (model_type {model_type!r}); the text tower needs "
                         f"a CLIPModel folder (model_type 'clip'); {CLIP_LAYOUT}")
    files = weight_files(path, CLIP_LAYOUT)
    try:
        model = CLIPModel.from_pretrained(path, local_files_only=True,
                                          use_safetensors=files[0].endswith(".safetensors"))
    except Exception as e:  # transformers raises many kinds
        raise ValueError(f"transformers cannot load the CLIPModel: {e}") from e
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ValueError(f"no usable tokenizer files: {e}") from e
    try:
        image_processor = AutoImageProcessor.from_pretrained(path, local_files_only=True)
    except Exception as e:
        raise ValueError(f"no usable preprocessor_config.json: {e}") from e
    return LoadedCLIP(path=path, vision=fields, vision_state=None, model=model.eval(), tokenizer=tokenizer,
                      image_processor=image_processor)


def load_clip(path: str | os.PathLike, *, text: bool = False) -> LoadedCLIP:
    """Read a CLIP folder (``CLIPModel`` or ``CLIPVisionModel`` layout, see :data:`CLIP_LAYOUT`).

    Default: the vision tower's state dict and config (the text tower and projections are not read). ``text=True``:
    also the whole ``CLIPModel`` with its tokenizer and image processor (``model``, ``tokenizer``,
    ``image_processor``), as the CLIP metrics use it."""
    path = require_dir(path, "CLIP", CLIP_LAYOUT)
    fields, model_type = _read_vision_config(path)
    if text:
        return _load_full(path, fields, model_type)

    def keep(key: str) -> bool:  # skip the text tower and the projection heads
        return not key.startswith(("text_model.", "text_projection.", "visual_projection.", "logit_scale"))

    state, sources = read_state_dict(path, keep=keep, layout=CLIP_LAYOUT)
    where = {f"vision.{k}": v for k, v in sources.items()}
    vision_state, where = normalise_vision_keys(state, where)
    problems = key_problems(vision_state, expected_vision(fields), "vision", where, describe_weight_files(path))
    raise_problems(problems, f"the CLIP vision weights in {path} do not fit its config", CLIP_LAYOUT)
    logger.info("loaded CLIP vision tower from %s: %d layers, hidden %d, %d px / patch %d", path,
                fields["num_hidden_layers"], fields["hidden_size"], fields["image_size"], fields["patch_size"])
    return LoadedCLIP(path=path, vision=fields, vision_state=vision_state, sources=where)
