"""SmartEdit's recipe on other MLLMs and generators: one module per MLLM family and per generator, chosen by the
config's ``backbone`` section (:class:`~smartedit.config.BackboneConfig`).

| ``backbone.mllm`` | module | model | conversation |
|---|---|---|---|
| ``llava`` | :mod:`smartedit.mllm` | CLIP ViT + projector + LLaMA (LLaVA-1.1, LLaVA-1.5 / llava-hf) | Vicuna-v1 |
| ``qwen2_5_vl`` | :mod:`.qwen_vl` | Qwen2.5-VL (vision transformer + merger + text model) | its chat template |

| ``backbone.generator`` | module | model |
|---|---|---|
| ``sd15`` | :mod:`smartedit.unet` | SD-1.5 InstructPix2Pix UNet (context [B, 77, 768]) |
| ``sdxl`` | :mod:`.sdxl` | SDXL InstructPix2Pix UNet (context [B, 77, 2048] + pooled + time ids) |
| ``sd3`` | :mod:`.sd3` | SD3 MMDiT with the source latent on channels (UltraEdit's route; context [B, 77, 4096] + pooled; flow matching) |

Every pair works: the Q-Former reads the MLLM's ``<img_i>`` states (width ``mllm.hidden_size``) and emits the
generator's context (``qformer.hidden_size`` = ``unet.cross_attention_dim``); the BIM reads the MLLM's patch grid
(``vision.hidden_size``, ``vision.grid_size``) and adds to the generator's ``conv_in`` output (SD3: its patch
embedding's convolution). To add a family:
a module here with an :class:`~smartedit.mllm.SmartEditMLLM`-like class (or a UNet class), a name in
``BackboneConfig.MLLMS`` / ``GENERATORS``, a branch in :func:`build_mllm` / :func:`build_generator` /
:func:`chat_format`, a preset in :mod:`.presets` and a loader in :mod:`.assemble` (docs/design.md).
"""

from __future__ import annotations

from ..config import SmartEditConfig

__all__ = ["build_mllm", "build_generator", "chat_format"]


def build_mllm(config: SmartEditConfig, attn_implementation: str | None = None):
    """The MLLM module of ``config.backbone.mllm`` (random weights)."""
    attn = attn_implementation or config.attn_implementation
    family = config.backbone.mllm
    if family == "llava":
        from ..mllm import SmartEditMLLM

        return SmartEditMLLM(config.vision, config.mllm, config.lora, attn_implementation=attn)
    if family == "qwen2_5_vl":
        from .qwen_vl import QwenVLMLLM

        return QwenVLMLLM(config.backbone.mllm_config, config.vision, config.mllm, config.lora,
                          attn_implementation=attn)
    raise ValueError(f"unknown backbone.mllm {family!r}")


def build_generator(config: SmartEditConfig):
    """The denoising network of ``config.backbone.generator`` (random weights), ``conv_in`` taking
    ``unet.in_channels`` (noisy latent ‖ source latent ‖ optional mask latent)."""
    kind = config.backbone.generator
    if kind == "sd15":
        from ..unet import build_unet

        return build_unet(config.unet)
    if kind == "sdxl":
        from .sdxl import SDXLEditUNet, sdxl_unet_fields

        _check_unet_section(config, sdxl_unet_fields(config.backbone.generator_config))
        kwargs = {k: v for k, v in config.backbone.generator_config.items() if not k.startswith("_")}
        unet = SDXLEditUNet(**dict(kwargs, in_channels=config.unet.in_channels))
        unet.vae_scale_factor = config.vae.downsample_factor
        return unet
    if kind == "sd3":
        from .sd3 import SD3EditTransformer, sd3_unet_fields

        _check_unet_section(config, sd3_unet_fields(config.backbone.generator_config))
        kwargs = {k: v for k, v in config.backbone.generator_config.items() if not k.startswith("_")}
        return SD3EditTransformer(**dict(kwargs, in_channels=config.unet.in_channels))
    raise ValueError(f"unknown backbone.generator {kind!r}")


def _check_unet_section(config: SmartEditConfig, fields: dict) -> None:
    """The ``unet`` section must describe the generator that ``backbone.generator_config`` builds."""
    wrong = [f"unet.{k} is {getattr(config.unet, k)!r} but backbone.generator_config gives {v!r}"
             for k, v in fields.items() if getattr(config.unet, k) != v]
    if wrong:
        raise ValueError("the unet section does not describe backbone.generator_config: " + "; ".join(wrong))


def chat_format(config: SmartEditConfig, tokenizer):
    """How the model's MLLM family writes conversations (:mod:`.chat`)."""
    from .chat import ChatTemplateFormat, VicunaFormat

    n = config.mllm.num_image_tokens
    if config.backbone.mllm == "llava":
        return VicunaFormat(config.vision.num_patches, n)
    if config.backbone.mllm == "qwen2_5_vl":
        merge = config.backbone.mllm_config.get("vision_config", {}).get("spatial_merge_size", 2)
        image_id = config.backbone.mllm_config.get("image_token_id", 151655)
        return ChatTemplateFormat(tokenizer, config.vision.num_patches // merge**2, n,
                                  tokenizer.convert_ids_to_tokens(image_id))
    raise ValueError(f"unknown backbone.mllm {config.backbone.mllm!r}")
