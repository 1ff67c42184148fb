"""Stable Diffusion from a local diffusers folder (SD-1.5 or InstructPix2Pix).

The folder holds ``unet/``, ``vae/``, ``scheduler/``, ``text_encoder/`` and ``tokenizer/``; :func:`load_sd` reads
the UNet (``conv_in`` widened to the InstructPix2Pix input: old weight and bias copied, new channels zero), the VAE,
the noise schedule and the null text embedding (CLIP text encoder output of ``""`` padded to 77 tokens, computed
once), and checks that smartedit can rebuild the UNet and VAE from their configs.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..config import SchedulerConfig, UNetConfig, VAEConfig
from .files import (check_lfs, diffusers_weight_files, raise_problems, read_json, read_tokenizer, require_dir,
                    tokenizer_files, weight_files)

logger = logging.getLogger(__name__)

__all__ = ["SD_LAYOUT", "SD_PARTS", "CLIP_TEXT_LENGTH", "LoadedSD", "load_sd"]

CLIP_TEXT_LENGTH = 77
"""Length of the CLIP text context (SD-1.5): the null text embedding is ``""`` padded to this many tokens."""
SD_PARTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")
SD_LAYOUT = ("a diffusers Stable Diffusion folder (SD-1.5 or InstructPix2Pix) holds model_index.json and the "
             "subfolders unet/ (config.json + diffusion_pytorch_model.safetensors), vae/ (config.json + "
             "diffusion_pytorch_model.safetensors), scheduler/ (scheduler_config.json), text_encoder/ (config.json "
             "+ model.safetensors) and tokenizer/ (vocab.json + merges.txt, or tokenizer.json)")
_CONFIG_FILES = {"unet": "config.json", "vae": "config.json", "scheduler": "scheduler_config.json",
                 "text_encoder": "config.json", "tokenizer": None}
_VAE_IGNORED = {"sample_size", "force_upcast", "shift_factor", "latents_mean", "latents_std"}


@dataclass
class LoadedSD:
    """What :func:`load_sd` read. ``unet`` already has the widened ``conv_in``."""

    path: str
    unet: nn.Module
    vae: nn.Module
    unet_config: dict[str, Any]
    """``UNetConfig`` fields (``mask_channels`` excluded: it comes from the preset or an override)."""
    vae_config: dict[str, Any]
    scheduler: dict[str, Any]
    """``SchedulerConfig`` fields."""
    null_text_embedding: torch.Tensor
    """[1, 77, D] CLIP text encoder last hidden state of ``""`` (float32)."""
    original_in_channels: int
    """``conv_in`` input channels in the folder (4 for SD-1.5, 8 for InstructPix2Pix)."""


def _norm_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_norm_value(v) for v in value)
    return value


def _config_mismatches(loaded: Mapping[str, Any], reference: Mapping[str, Any], ignore: set[str]) -> list[str]:
    """diffusers config entries where the folder's model differs from what smartedit's builder makes."""
    out = []
    for key in sorted(set(loaded) & set(reference)):
        if key.startswith("_") or key in ignore:
            continue
        a, b = _norm_value(loaded[key]), _norm_value(reference[key])
        if key == "attention_head_dim" and isinstance(a, tuple) and len(set(a)) == 1:
            a = a[0]
        if a != b:
            out.append(f"{key}: folder {a!r}, smartedit builds {b!r}")
    return out


def _diffusers_load(cls, path: str, subfolder: str):
    folder = os.path.join(path, subfolder)
    names = os.listdir(folder)
    variant = None
    if not any(n.startswith("diffusion_pytorch_model") and n.count(".") == 1 for n in names) \
            and any(n.startswith("diffusion_pytorch_model.fp16.") for n in names):
        variant = "fp16"
    try:
        return cls.from_pretrained(path, subfolder=subfolder, local_files_only=True, variant=variant)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot load {cls.__name__} from {folder} ({exc}); {SD_LAYOUT}") from None


def _null_text_embedding(path: str, max_length: int) -> torch.Tensor:
    """CLIP text encoder last hidden state of ``""`` padded to ``max_length`` tokens, as diffusers' SD pipelines
    encode an empty negative prompt (attention mask only if the encoder's config asks for it)."""
    from transformers import CLIPTextModel

    tokenizer = read_tokenizer(os.path.join(path, "tokenizer"), "Stable Diffusion text")
    folder = os.path.join(path, "text_encoder")
    try:
        encoder, info = CLIPTextModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                      output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot load the CLIP text encoder from {folder} ({exc}); {SD_LAYOUT}") from None
    bad = [f"missing: {k}" for k in info.get("missing_keys", [])] + \
          [f"wrong shape: {k}" for k in info.get("mismatched_keys", [])]
    raise_problems(bad, f"the CLIP text encoder weights in {folder} do not fit its config", SD_LAYOUT)
    if encoder.config.max_position_embeddings < max_length:
        raise ValueError(f"the text encoder in {folder} takes at most {encoder.config.max_position_embeddings} "
                         f"tokens, fewer than the {max_length} of the UNet context")
    tokens = tokenizer("", padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    mask = tokens["attention_mask"] if getattr(encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        out = encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state  # [1, 77, D]
    return out.float().contiguous()


def _check_folder(path: str) -> None:
    """Every subfolder and config present, and no Git LFS pointer among the files that will be read."""
    missing = []
    for part, config_file in _CONFIG_FILES.items():
        folder = os.path.join(path, part)
        if not os.path.isdir(folder):
            missing.append(f"{part}/")
        elif config_file and not os.path.isfile(os.path.join(folder, config_file)):
            missing.append(f"{part}/{config_file}")
    if missing:
        raise FileNotFoundError(f"Stable Diffusion folder {path} lacks {', '.join(missing)}; {SD_LAYOUT}")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        logger.warning("%s has no model_index.json; reading its subfolders anyway", path)
    in_use = [os.path.join(path, part, name) for part, name in _CONFIG_FILES.items() if name]
    in_use += tokenizer_files(os.path.join(path, "tokenizer"))
    in_use += diffusers_weight_files(os.path.join(path, "unet")) + diffusers_weight_files(os.path.join(path, "vae"))
    try:
        in_use += weight_files(os.path.join(path, "text_encoder"), SD_LAYOUT)
    except FileNotFoundError:
        pass  # reported by transformers with the layout below
    check_lfs(in_use)


def _load_unet(path: str, in_channels: int | None) -> tuple[nn.Module, dict[str, Any], int]:
    """The UNet (checked against smartedit's builder), its ``UNetConfig`` fields and original input channels;
    ``conv_in`` widened to ``in_channels`` (default: the InstructPix2Pix input for an SD-1.5 UNet)."""
    from diffusers import UNet2DConditionModel

    from ..unet import build_unet, unet_config_from_diffusers, widen_conv_in

    unet = _diffusers_load(UNet2DConditionModel, path, "unet")
    unet_fields = unet_config_from_diffusers(unet.config)
    with torch.device("meta"):
        reference_unet = build_unet(UNetConfig(**unet_fields))
    problems = _config_mismatches(unet.config, reference_unet.config, {"in_channels"})
    if problems:
        raise ValueError(f"the UNet in {os.path.join(path, 'unet')} is not an SD-1.5-style UNet that smartedit can "
                         f"rebuild ({len(problems)} difference(s)):\n  " + "\n  ".join(problems))
    original = unet.conv_in.in_channels
    latent = unet_fields["latent_channels"]
    target = in_channels if in_channels is not None else (2 * latent if original == latent else original)
    if target != original:
        widen_conv_in(unet, target)
        logger.info("widened the UNet conv_in of %s from %d to %d input channels (old weights and bias copied, "
                    "new channels zero)", path, original, target)
    return unet, unet_fields, original


def _load_vae(path: str) -> tuple[nn.Module, dict[str, Any]]:
    from diffusers import AutoencoderKL

    from ..unet import build_vae

    vae = _diffusers_load(AutoencoderKL, path, "vae")
    vae_fields = dict(block_out_channels=tuple(vae.config.block_out_channels),
                      layers_per_block=vae.config.layers_per_block, latent_channels=vae.config.latent_channels,
                      norm_num_groups=vae.config.norm_num_groups,
                      scaling_factor=float(vae.config.scaling_factor or VAEConfig.scaling_factor))
    with torch.device("meta"):
        reference_vae = build_vae(VAEConfig(**vae_fields))
    problems = _config_mismatches(vae.config, reference_vae.config, _VAE_IGNORED)
    if problems:
        raise ValueError(f"the VAE in {os.path.join(path, 'vae')} is not an SD-1.5-style AutoencoderKL that "
                         f"smartedit can rebuild ({len(problems)} difference(s)):\n  " + "\n  ".join(problems))
    return vae, vae_fields


def _read_scheduler(path: str) -> tuple[dict[str, Any], str]:
    """``SchedulerConfig`` fields from ``scheduler/`` (and a ShapesWorld folder's ``smartedit.json``), and the
    scheduler's class name."""
    sched_raw = read_json(os.path.join(path, "scheduler", "scheduler_config.json"), "scheduler config", SD_LAYOUT)
    if sched_raw.get("trained_betas") is not None:
        raise ValueError(f"{path}/scheduler uses trained_betas, which smartedit's SchedulerConfig cannot express")
    defaults = SchedulerConfig()
    scheduler = {name: sched_raw.get(name, getattr(defaults, name))
                 for name in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")}
    info = os.path.join(path, "smartedit.json")  # written by ShapesWorld's IP2P pretraining
    if os.path.isfile(info):
        meta = read_json(info, "smartedit.json", SD_LAYOUT)
        scheduler["diffuse"] = meta.get("diffuse", "target")
        scheduler["decode"] = meta.get("decode", "latent")
    name = sched_raw.get("_class_name", "?")
    if scheduler["prediction_type"] == "sample" and name in SchedulerConfig.SAMPLERS:
        scheduler["sampler"] = name  # x0-predicting folders (ShapesWorld): EulerAncestral cannot sample them
    return scheduler, name


def load_sd(path: str | os.PathLike, in_channels: int | None = None,
            max_length: int = CLIP_TEXT_LENGTH) -> LoadedSD:
    """Read a diffusers Stable Diffusion / InstructPix2Pix folder (see :data:`SD_LAYOUT`).

    The UNet's ``conv_in`` is widened to ``in_channels`` (default: 2 × latent channels, the InstructPix2Pix input,
    when the folder's UNet takes only the noisy latent; an InstructPix2Pix UNet is kept as it is).
    """
    path = require_dir(path, "Stable Diffusion", SD_LAYOUT)
    _check_folder(path)
    unet, unet_fields, original = _load_unet(path, in_channels)
    vae, vae_fields = _load_vae(path)
    scheduler, scheduler_class = _read_scheduler(path)
    null = _null_text_embedding(path, max_length)
    logger.info("loaded Stable Diffusion from %s: UNet %s (conv_in %d → %d ch), VAE %s, scheduler %s",
                path, tuple(unet_fields["block_out_channels"]), original, unet.conv_in.in_channels,
                vae_fields["block_out_channels"], scheduler_class)
    return LoadedSD(path=path, unet=unet, vae=vae, unet_config=unet_fields, vae_config=vae_fields,
                    scheduler=scheduler, null_text_embedding=null, original_in_channels=original)
