"""Assemble a :class:`~smartedit.model.SmartEditModel` from pretrained component folders (LLM, CLIP, SD).

:func:`from_components` reads the config off the folders (Q-Former and BIM sizes come from a preset), builds the
model on the meta device, *assigns* the loaded tensors (no random init of what is loaded), and gives only the new
parts (Q-Former, BIM, the 35 new token rows, and the projector of a plain LLaMA folder) a real initialisation.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping

import torch
import torch.nn as nn

from ..config import ConfigError, SmartEditConfig, preset as make_preset
from .clip import CLIP_LAYOUT, LoadedCLIP, load_clip
from .files import key_problems, raise_problems
from .llama import LoadedLLM, load_llm, projector_kind
from .sd import SD_LAYOUT, LoadedSD, load_sd

logger = logging.getLogger(__name__)

__all__ = ["from_components", "config_from_components", "apply_overrides"]


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    """Set dotted config keys (``"bim.enabled"``) in a config dict, in place."""
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value


def config_from_components(base: SmartEditConfig, llm: LoadedLLM, vision: Mapping[str, Any], sd: LoadedSD, *,
                           mask_channels: int, overrides: Mapping[str, Any] = {}) -> SmartEditConfig:
    """The SmartEdit config of loaded components: vision (``VisionConfig`` fields), MLLM, UNet, VAE and scheduler
    from the folders, everything else (Q-Former, BIM, resolution, training) from ``base``; then ``overrides``."""
    data = base.to_dict()
    data["preset"] = "custom"
    data["vision"] = dict(vision, select_layer=llm.select_layer if llm.select_layer is not None
                          else base.vision.select_layer)
    data["mllm"] = dict(data["mllm"], **llm.mllm)
    if llm.projector_state is None:
        data["mllm"]["projector"] = base.mllm.projector
    data["unet"] = dict(sd.unet_config, mask_channels=mask_channels)
    data["vae"] = dict(sd.vae_config)
    data["scheduler"] = dict(sd.scheduler)
    apply_overrides(data, overrides)
    return SmartEditConfig.from_dict(data)


def _assign(module: nn.Module, state: Mapping[str, torch.Tensor], part: str, where: Mapping[str, str],
            origin: str, dtype: torch.dtype) -> None:
    """Strictly assign ``state`` to a (meta) module, each tensor cast to ``dtype``; one error for every problem."""
    problems = key_problems(state, module.state_dict(), part, where, origin)
    raise_problems(problems, f"the {part} weights from {origin} do not fit the assembled model")
    module.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                           strict=True, assign=True)


def _with_new_rows(weight: torch.Tensor, full: int, dtype: torch.dtype) -> torch.Tensor:
    """[base, H] → [full, H]: base rows copied, new rows zero (set to the mean by ``init_new_token_rows``)."""
    out = torch.zeros(full, weight.shape[1], dtype=dtype)
    out[:weight.shape[0]] = weight.to(dtype)
    return out


def _vision_source(llm: LoadedLLM, clip: LoadedCLIP | None) -> tuple[dict, dict, dict, str]:
    """(config fields, state dict, key → file, origin) of the vision tower: the CLIP folder's, else llava-hf's."""
    if clip is not None:
        if llm.vision_state is not None:
            logger.warning("using the vision tower of %s, not the one in %s", clip.path, llm.path)
        if llm.vision_tower_name:
            logger.info("LLaVA folder names vision tower %r; using %s", llm.vision_tower_name, clip.path)
        return clip.vision, clip.vision_state, clip.sources, clip.path
    if llm.vision_state is not None:
        return llm.vision, llm.vision_state, llm.sources, llm.path
    hint = f" (LLaVA was trained with {llm.vision_tower_name})" if llm.vision_tower_name else ""
    raise ValueError(f"no vision tower: the {llm.layout} folder {llm.path} holds none; pass clip=<CLIP ViT "
                     f"folder>{hint}; {CLIP_LAYOUT}")


def _fit_problems(config: SmartEditConfig, llm: LoadedLLM, sd: LoadedSD, vision_origin: str) -> list[str]:
    """Where the components do not fit each other (projector vs vision width, null embedding vs Q-Former, vocab)."""
    problems = []
    if llm.projector_state is not None:
        first = llm.projector_state.get("0.weight", llm.projector_state.get("weight"))
        if first is not None and first.shape[1] != config.vision.hidden_size:
            problems.append(f"the projector of {llm.path} reads {first.shape[1]}-dim vision features but the vision "
                            f"tower from {vision_origin} outputs {config.vision.hidden_size}")
        if projector_kind(llm.projector_state) != config.mllm.projector:
            problems.append(f"mllm.projector is {config.mllm.projector!r} but {llm.path} holds a "
                            f"{projector_kind(llm.projector_state)!r} projector")
    want = (1, config.qformer.num_queries, config.qformer.hidden_size)
    if tuple(sd.null_text_embedding.shape) != want:
        problems.append(f"the null text embedding of {sd.path} is {tuple(sd.null_text_embedding.shape)}, but the "
                        f"Q-Former emits {want[1:]} (qformer.num_queries × qformer.hidden_size)")
    if config.mllm.vocab_size != len(llm.tokenizer) and len(llm.tokenizer) != config.mllm.full_vocab_size:
        problems.append(f"mllm.vocab_size {config.mllm.vocab_size} differs from the tokenizer's base vocabulary "
                        f"{len(llm.tokenizer)}")
    return problems


def _init_new_parts(model, config: SmartEditConfig, llm: LoadedLLM, seed: int | None, dtype: torch.dtype) -> None:
    """Q-Former, BIM and (for a plain LLaMA folder) the projector: a real, seeded initialisation; a loaded
    projector is assigned."""
    from ..bim import BidirectionalInteraction
    from ..mllm import build_projector
    from ..qformer import SmartEditQFormer

    if seed is not None:
        torch.manual_seed(seed)
    model.qformer = SmartEditQFormer(config.qformer, config.mllm.hidden_size, config.attn_implementation)
    if config.bim.enabled:
        model.bim = BidirectionalInteraction(config.bim, config.qformer.hidden_size, config.vision.grid_size,
                                             config.unet.block_out_channels[0], config.attn_implementation)
    if llm.projector_state is None:
        logger.warning("%s holds no vision projector: it is randomly initialised (train it, LLaVA stage 1, before "
                       "editing)", llm.path)
        model.mllm.projector = build_projector(config.mllm.projector, config.vision.hidden_size,
                                               config.mllm.hidden_size)
    else:
        _assign(model.mllm.projector, llm.projector_state, "projector", llm.sources, llm.path, dtype)


def _assign_loaded(model, config: SmartEditConfig, llm: LoadedLLM, vision: tuple, sd: LoadedSD,
                   dtype: torch.dtype) -> None:
    """The LLM (with zero rows for the new tokens), vision tower, UNet, VAE and null text embedding: assigned."""
    from ..unet import widen_conv_in

    _, vision_state, vision_where, vision_origin = vision
    full = config.mllm.full_vocab_size
    llm_state = dict(llm.llm_state)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key in llm_state and llm_state[key].shape[0] == config.mllm.vocab_size:
            llm_state[key] = _with_new_rows(llm_state[key], full, dtype)
    _assign(model.mllm.llm, llm_state, "llm", llm.sources, llm.path, dtype)
    _assign(model.mllm.vision_tower, vision_state, "vision", vision_where, vision_origin, dtype)
    if sd.unet.conv_in.in_channels != config.unet.in_channels:
        widen_conv_in(sd.unet, config.unet.in_channels)
    unet_where = {f"unet.{k}": f"{sd.path}/unet" for k in sd.unet.state_dict()}
    vae_where = {f"vae.{k}": f"{sd.path}/vae" for k in sd.vae.state_dict()}
    _assign(model.unet, sd.unet.state_dict(), "unet", unet_where, f"{sd.path}/unet", dtype)
    _assign(model.vae, sd.vae.state_dict(), "vae", vae_where, f"{sd.path}/vae", dtype)
    model.conv_in_residual.reattach(model.unet)
    with torch.no_grad():
        model.null_text_embedding.copy_(sd.null_text_embedding)


def from_components(llm: str | os.PathLike | LoadedLLM, clip: str | os.PathLike | LoadedCLIP | None = None,
                    sd: str | os.PathLike | LoadedSD | None = None, preset: str | SmartEditConfig | None = None,
                    *, dtype: torch.dtype | str = torch.float32, seed: int | None = 0, **overrides: Any):
    """Assemble a :class:`~smartedit.model.SmartEditModel` from pretrained parts (folders or ``load_*`` results).

    * ``llm``: LLaMA/Vicuna, LLaVA-1.1 or llava-hf folder (:func:`~smartedit.weights.load_llm`);
    * ``clip``: CLIP folder for the vision tower (:func:`~smartedit.weights.load_clip`); optional for llava-hf,
      whose own tower is used when no ``clip`` is given;
    * ``sd``: Stable Diffusion / InstructPix2Pix diffusers folder (:func:`~smartedit.weights.load_sd`);
    * ``preset``: where the Q-Former, BIM, resolution and training settings come from (default ``7b``);
    * ``overrides``: dotted config keys, e.g. ``**{"bim.enabled": False}``.

    Vision, MLLM, UNet, VAE and scheduler configs come from the folders. Loaded weights are assigned (cast to
    ``dtype``: a torch dtype or its name, ``auto`` = :func:`smartedit.model.save_dtype`); the Q-Former, BIM and
    (for a plain LLaMA folder) the projector are freshly initialised with
    ``seed``, and the 35 new token rows are the mean of the base rows. A ``LoadedSD`` passed in shares its
    tensors with the returned model.
    """
    from accelerate import init_empty_weights

    from ..model import SmartEditModel, save_dtype

    if sd is None:
        raise ValueError(f"from_components needs sd=<Stable Diffusion / InstructPix2Pix folder>; {SD_LAYOUT}")
    llm = llm if isinstance(llm, LoadedLLM) else load_llm(llm)
    clip = clip if clip is None or isinstance(clip, LoadedCLIP) else load_clip(clip)
    sd = sd if isinstance(sd, LoadedSD) else load_sd(sd)
    vision = _vision_source(llm, clip)

    base = preset if isinstance(preset, SmartEditConfig) else make_preset(preset or "7b")
    origin = f"llm={llm.path}, clip={clip.path if clip else None}, sd={sd.path}, preset={base.preset}"
    try:
        config = config_from_components(base, llm, vision[0], sd, mask_channels=base.unet.mask_channels,
                                        overrides=overrides)
    except ConfigError as exc:
        raise ConfigError(exc.problems, f"SmartEdit config assembled from {origin}") from None
    raise_problems(_fit_problems(config, llm, sd, vision[3]), f"the components do not fit together ({origin})")

    if isinstance(dtype, str):
        dtype = save_dtype(config, dtype)
    with init_empty_weights(include_buffers=False):
        model = SmartEditModel(config, llm.tokenizer)
    _init_new_parts(model, config, llm, seed, dtype)
    _assign_loaded(model, config, llm, vision, sd, dtype)
    empty = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if empty:
        raise RuntimeError(f"internal error: {len(empty)} tensor(s) were neither loaded nor initialised: "
                           + ", ".join(empty[:20]))
    model.mllm.init_new_token_rows()
    model.to(dtype)
    logger.info("assembled SmartEdit from %s (%.1f M parameters, %s)", origin,
                sum(p.numel() for p in model.parameters()) / 1e6, dtype)
    return model.eval()
