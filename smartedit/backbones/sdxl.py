"""The SDXL InstructPix2Pix UNet as SmartEdit's generator (``backbone.generator = "sdxl"``).

diffusers' ``UNet2DConditionModel`` in its SDXL configuration (``addition_embed_type = "text_time"``), built from
the published ``unet/config.json`` (``backbone.generator_config``) with InstructPix2Pix's widened ``conv_in``
(:func:`smartedit.unet.widen_conv_in`). SDXL is conditioned on three things; all come from the Q-Former / BIM
side, so the rest of SmartEdit (CFG dropout, guidance branches, the pipeline) passes one context tensor as for
SD-1.5:

* context [B, Q, 2048]: the Q-Former output f' (``qformer.hidden_size`` = the UNet's ``cross_attention_dim``);
* pooled text embedding [B, 1280] = ``pooled_proj``(mean of the context over its Q tokens), zero-initialised, so a
  fresh head gives SDXL's empty-prompt pooled embedding (zeros, ``force_zeros_for_empty_prompt``);
* time ids (original size, crop top-left, target size) = (H, W, 0, 0, H, W) in pixels of the edited image, as
  diffusers' ``StableDiffusionXLInstructPix2PixPipeline`` sets them by default.

Given these, a denoising step equals that pipeline's (``tests/test_backbones.py`` checks it within 1e-5).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import UNet2DConditionModel

__all__ = ["SDXLEditUNet", "SDXL_UNET_CONFIG", "sdxl_time_ids", "sdxl_unet_fields"]

SDXL_UNET_CONFIG = {
    "act_fn": "silu", "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
    "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20], "block_out_channels": [320, 640, 1280],
    "center_input_sample": False, "cross_attention_dim": 2048,
    "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"], "downsample_padding": 1,
    "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4, "layers_per_block": 2, "mid_block_scale_factor": 1,
    "norm_eps": 1e-05, "norm_num_groups": 32, "out_channels": 4, "projection_class_embeddings_input_dim": 2816,
    "sample_size": 128, "transformer_layers_per_block": [1, 2, 10],
    "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"], "use_linear_projection": True,
}
"""``unet/config.json`` of stabilityai/stable-diffusion-xl-base-1.0 (the fields that are not diffusers' defaults)."""

TIME_IDS = 6
"""original (h, w), crop top-left (y, x), target (h, w)."""


def sdxl_time_ids(height: int, width: int, batch: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[B, 6] = (H, W, 0, 0, H, W): full-size original, no crop, full-size target (the pipeline's defaults)."""
    ids = torch.tensor([height, width, 0, 0, height, width], device=device, dtype=dtype)
    return ids.unsqueeze(0).expand(batch, -1)


def sdxl_unet_fields(config: dict) -> dict:
    """``UNetConfig`` fields read off an SDXL UNet config (what the rest of SmartEdit uses)."""
    head = config.get("attention_head_dim", 8)
    return dict(sample_size=config.get("sample_size", 128), latent_channels=config.get("out_channels", 4),
                block_out_channels=tuple(config["block_out_channels"]),
                down_block_types=tuple(config["down_block_types"]), up_block_types=tuple(config["up_block_types"]),
                layers_per_block=config.get("layers_per_block", 2),
                cross_attention_dim=config["cross_attention_dim"],
                attention_head_dim=head[0] if isinstance(head, (list, tuple)) else head,
                norm_num_groups=config.get("norm_num_groups", 32))


class SDXLEditUNet(UNet2DConditionModel):
    """SDXL UNet whose pooled embedding and time ids are derived from the context when the caller gives none.

    ``vae_scale_factor`` (pixels per latent cell, 8 for SDXL's VAE) turns the latent size into the time ids' pixel
    size; it is set by :func:`smartedit.backbones.build_generator` from the VAE config."""

    vae_scale_factor = 8

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.config
        if cfg.addition_embed_type != "text_time":
            raise ValueError(f"an SDXL UNet has addition_embed_type 'text_time', got {cfg.addition_embed_type!r}")
        pooled_dim = cfg.projection_class_embeddings_input_dim - TIME_IDS * cfg.addition_time_embed_dim
        self.pooled_proj = nn.Linear(cfg.cross_attention_dim, pooled_dim)
        self.reset_pooled_proj()

    @torch.no_grad()
    def reset_pooled_proj(self) -> None:
        """Zero weight and bias: the pooled embedding starts as SDXL's empty-prompt one (zeros)."""
        nn.init.zeros_(self.pooled_proj.weight)
        nn.init.zeros_(self.pooled_proj.bias)

    def added_conditions(self, sample: torch.Tensor, context: torch.Tensor) -> dict[str, torch.Tensor]:
        """SDXL's added conditions for a latent ``sample`` [B, C, h, w] and context [B, Q, D]."""
        pooled = self.pooled_proj(context.mean(dim=1))  # [B, 1280]
        h, w = sample.shape[-2] * self.vae_scale_factor, sample.shape[-1] * self.vae_scale_factor
        return {"text_embeds": pooled, "time_ids": sdxl_time_ids(h, w, sample.shape[0], sample.device, pooled.dtype)}

    def forward(self, sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=None, **kwargs):
        if added_cond_kwargs is None:
            added_cond_kwargs = self.added_conditions(sample, encoder_hidden_states)
        return super().forward(sample, timestep, encoder_hidden_states, *args, added_cond_kwargs=added_cond_kwargs,
                               **kwargs)
