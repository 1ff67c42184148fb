"""Presets for each supported (MLLM, generator) pair, named ``<mllm>+<generator>``.

7B-class pairs carry the published configs (LLaVA-1.5-7B: Vicuna-7B-v1.5 + CLIP ViT-L/14-336 + MLP projector;
Qwen2.5-VL-7B-Instruct; SD-1.5; SDXL base 1.0); ``smartedit info --preset qwen2.5vl-7b+sdxl`` counts them on the
meta device. ``tiny-sdxl`` is the tiny LLaVA with a tiny SDXL-layout UNet (tests, CPU). Qwen2.5-VL models of any size
are assembled from their published folders (:mod:`.assemble`), which carry their own config and tokenizer.
"""

from __future__ import annotations

import copy

from ..config import (BackboneConfig, BIMConfig, ConfigError, MLLMConfig, QFormerConfig, SmartEditConfig,
                      UNetConfig, VAEConfig, VisionConfig, preset as make_preset)
from .sd3 import SD3_TRANSFORMER_CONFIG, SD3_VAE, sd3_unet_fields
from .sdxl import SDXL_UNET_CONFIG, sdxl_unet_fields

__all__ = ["backbone_preset", "compose_preset", "QWEN2_5_VL_7B", "qwen_vl_sections", "sdxl_sections", "sd3_sections",
           "TINY_SDXL_UNET", "TINY_SD3_TRANSFORMER", "FLOW_SCHEDULER"]

QWEN2_5_VL_7B = {
    "model_type": "qwen2_5_vl", "image_token_id": 151655, "video_token_id": 151656,
    "vision_start_token_id": 151652, "vision_end_token_id": 151653, "tie_word_embeddings": False,
    "text_config": {"model_type": "qwen2_5_vl_text", "vocab_size": 152064, "hidden_size": 3584,
                    "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
                    "num_key_value_heads": 4, "max_position_embeddings": 128000, "rms_norm_eps": 1e-06,
                    "hidden_act": "silu", "bos_token_id": 151643, "eos_token_id": 151645,
                    "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "type": "mrope",
                                        "mrope_section": [16, 24, 24]}},
    "vision_config": {"model_type": "qwen2_5_vl", "depth": 32, "hidden_size": 1280, "intermediate_size": 3420,
                      "num_heads": 16, "out_hidden_size": 3584, "patch_size": 14, "spatial_merge_size": 2,
                      "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [7, 15, 23, 31],
                      "hidden_act": "silu", "in_channels": 3, "tokens_per_second": 2},
}
"""config.json of Qwen/Qwen2.5-VL-7B-Instruct (as transformers reads it)."""
QWEN_TOKENIZER_SIZE = 151665
"""len() of the Qwen2.5-VL tokenizer: 151643 BPE tokens + 22 special tokens; SmartEdit's tokens follow."""


def qwen_vl_sections(hf: dict, base_vocab: int, image_size: int, pad: int, bos: int, eos: int) -> dict:
    """``vision`` / ``mllm`` / ``backbone`` sections (as dicts) of a Qwen2.5-VL model: ``vision`` describes the
    patch grid the BIM reads (the vision blocks' width, ``image_size // patch_size`` patches a side)."""
    t, v = hf["text_config"], hf["vision_config"]
    rope = t.get("rope_parameters") or t.get("rope_scaling") or {}
    vision = dict(hidden_size=v["hidden_size"], intermediate_size=v["intermediate_size"],
                  num_hidden_layers=v["depth"], num_attention_heads=v["num_heads"], image_size=image_size,
                  patch_size=v["patch_size"], projection_dim=v["out_hidden_size"], hidden_act=v["hidden_act"],
                  select_layer=-1)
    mllm = dict(vocab_size=base_vocab, hidden_size=t["hidden_size"], intermediate_size=t["intermediate_size"],
                num_hidden_layers=t["num_hidden_layers"], num_attention_heads=t["num_attention_heads"],
                num_key_value_heads=t["num_key_value_heads"], max_position_embeddings=t["max_position_embeddings"],
                rms_norm_eps=float(t["rms_norm_eps"]),
                rope_theta=float(rope.get("rope_theta", t.get("rope_theta", 1e6))),
                pad_token_id=pad, bos_token_id=bos, eos_token_id=eos)
    return {"vision": vision, "mllm": mllm, "backbone_mllm": ("qwen2_5_vl", copy.deepcopy(hf))}


def sdxl_sections(unet_config: dict) -> dict:
    return {"unet": sdxl_unet_fields(unet_config), "backbone_generator": ("sdxl", copy.deepcopy(unet_config))}


def sd3_sections(transformer_config: dict) -> dict:
    return {"unet": sd3_unet_fields(transformer_config), "backbone_generator": ("sd3", copy.deepcopy(transformer_config))}


FLOW_SCHEDULER = {"prediction_type": "flow", "shift": 3.0, "sampler": "FlowMatchEulerDiscreteScheduler"}
"""SD3's flow-matching schedule (scheduler/scheduler_config.json of SD3-medium: shift 3)."""


def compose_preset(base: SmartEditConfig, name: str, mllm: dict | None = None, generator: dict | None = None,
                   qformer: dict | None = None, bim: dict | None = None, vae: dict | None = None,
                   scheduler: dict | None = None) -> SmartEditConfig:
    """``base`` with the given sections replaced (``backbone_*`` entries set the ``backbone`` section), named
    ``name``."""
    data = base.to_dict()
    data["preset"] = name
    backbone = dict(data.get("backbone") or BackboneConfig().to_dict())
    for sections in (mllm, generator):
        for key, value in (sections or {}).items():
            if key.startswith("backbone_"):
                kind = key[len("backbone_"):]
                backbone[kind], backbone[f"{kind}_config"] = value
            else:
                data[key] = dict(data[key], **value)
    data["backbone"] = backbone
    for key, value in (("qformer", qformer), ("bim", bim), ("vae", vae), ("scheduler", scheduler)):
        if value:
            data[key] = dict(data[key], **value)
    return SmartEditConfig.from_dict(data)


_LLAVA15_7B = {"vision": dict(VisionConfig(image_size=336).to_dict()),
               "mllm": dict(MLLMConfig(max_position_embeddings=4096, projector="mlp2x_gelu").to_dict())}
_QWEN_7B = qwen_vl_sections(QWEN2_5_VL_7B, QWEN_TOKENIZER_SIZE, 448, pad=151643, bos=151643, eos=151645)
_SDXL = sdxl_sections(SDXL_UNET_CONFIG)
_SDXL_QFORMER = dict(QFormerConfig(hidden_size=2048, num_attention_heads=16, intermediate_size=8192).to_dict())
_SDXL_VAE = dict(VAEConfig(scaling_factor=0.13025).to_dict())
_QWEN_BIM = dict(BIMConfig(hidden_size=1280).to_dict())  # (the BIM reads the 1280-wide vision patches)
_SD3 = sd3_sections(SD3_TRANSFORMER_CONFIG)
_SD3_QFORMER = dict(QFormerConfig(hidden_size=4096, num_attention_heads=32, intermediate_size=16384).to_dict())
_SD3_VAE = dict(VAEConfig(**SD3_VAE).to_dict())

TINY_SD3_TRANSFORMER = {
    "sample_size": 16, "patch_size": 2, "in_channels": 16, "num_layers": 2, "attention_head_dim": 8,
    "num_attention_heads": 4, "joint_attention_dim": 64, "caption_projection_dim": 32, "pooled_projection_dim": 32,
    "out_channels": 16, "pos_embed_max_size": 16,
}
"""A tiny SD3-layout MMDiT (2 joint blocks, patch 2, context width 64 = the tiny Q-Former's)."""
TINY_SD3_VAE = dict(block_out_channels=(16, 32, 32), layers_per_block=1, latent_channels=16, norm_num_groups=8,
                    scaling_factor=SD3_VAE["scaling_factor"], shift_factor=SD3_VAE["shift_factor"],
                    use_quant_conv=False, use_post_quant_conv=False)
"""The tiny VAE in SD3's layout: 16 latent channels, SD3's scaling and shift, no quant convolutions."""

TINY_SDXL_UNET = {
    "addition_embed_type": "text_time", "addition_time_embed_dim": 8, "attention_head_dim": [2, 4],
    "block_out_channels": [32, 64], "cross_attention_dim": 64, "down_block_types": ["DownBlock2D",
                                                                                    "CrossAttnDownBlock2D"],
    "up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"], "in_channels": 4, "out_channels": 4,
    "layers_per_block": 1, "norm_num_groups": 8, "projection_class_embeddings_input_dim": 6 * 8 + 32,
    "sample_size": 16, "transformer_layers_per_block": [1, 2], "use_linear_projection": True,
}
"""A tiny SDXL-layout UNet (text_time added embeddings, linear projections, per-block transformer depth)."""


def backbone_preset(name: str) -> SmartEditConfig:
    """The config of preset ``name`` (see :data:`smartedit.config.PRESETS`)."""
    sd15_7b = make_preset("7b")
    if name == "llava1.5-7b+sd15":
        return compose_preset(sd15_7b, name, mllm=_LLAVA15_7B)
    if name == "llava1.5-7b+sdxl":
        return compose_preset(sd15_7b, name, mllm=_LLAVA15_7B, generator=_SDXL, qformer=_SDXL_QFORMER, vae=_SDXL_VAE)
    if name == "qwen2.5vl-7b+sd15":
        return compose_preset(sd15_7b, name, mllm=_QWEN_7B, bim=_QWEN_BIM)
    if name == "qwen2.5vl-7b+sdxl":
        return compose_preset(sd15_7b, name, mllm=_QWEN_7B, generator=_SDXL, qformer=_SDXL_QFORMER, bim=_QWEN_BIM,
                        vae=_SDXL_VAE)
    if name == "llava1.5-7b+sd3":
        return compose_preset(sd15_7b, name, mllm=_LLAVA15_7B, generator=_SD3, qformer=_SD3_QFORMER, vae=_SD3_VAE,
                              scheduler=FLOW_SCHEDULER)
    if name == "qwen2.5vl-7b+sd3":
        return compose_preset(sd15_7b, name, mllm=_QWEN_7B, generator=_SD3, qformer=_SD3_QFORMER, bim=_QWEN_BIM,
                              vae=_SD3_VAE, scheduler=FLOW_SCHEDULER)
    if name == "tiny-sdxl":
        return compose_preset(make_preset("tiny"), name, generator=sdxl_sections(TINY_SDXL_UNET))
    if name == "tiny-sd3":
        return compose_preset(make_preset("tiny"), name, generator=sd3_sections(TINY_SD3_TRANSFORMER),
                              vae=TINY_SD3_VAE, scheduler=FLOW_SCHEDULER)
    raise ConfigError([f"unknown backbone preset {name!r}"])
