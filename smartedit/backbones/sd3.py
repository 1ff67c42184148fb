"""SD3's MMDiT as SmartEdit's generator (``backbone.generator = "sd3"``): the DiT editor of UltraEdit's route.

diffusers' ``SD3Transformer2DModel`` built from the published ``transformer/config.json``
(``backbone.generator_config``), with the source latent concatenated to the noisy latent on channels (its patch
embedding takes ``2 × 16`` channels, InstructPix2Pix's widening applied to the patch convolution), sampled with
flow matching (``FlowMatchEulerDiscreteScheduler``) as UltraEdit's SD3 InstructPix2Pix pipeline does. Chosen over a
FLUX.1-Kontext-style transformer because it keeps SmartEdit's channel-concatenated source latent, its three-branch
classifier-free guidance and its BIM residual (added to the patch embedding's output, the DiT's ``conv_in``)
unchanged, and because its 2B-parameter MMDiT trains where a 12B FLUX does not.

The transformer is conditioned on two things; both come from the Q-Former / BIM side, so the rest of SmartEdit
passes one context tensor as for SD-1.5:

* context [B, Q, 4096]: the Q-Former output f' (``qformer.hidden_size`` = the transformer's ``joint_attention_dim``);
* pooled text embedding [B, 2048] = ``pooled_proj``(mean of the context over its Q tokens), zero-initialised.

Latents follow the SD3 pipelines: ``z = (vae_mode_or_sample − shift_factor) · scaling_factor`` for the edited image
and for the source image alike (``VAEConfig.shift_factor``; the SD-1.5 InstructPix2Pix source latent is unscaled).
"""

from __future__ import annotations

import torch
import torch.nn as nn
from diffusers import SD3Transformer2DModel

__all__ = ["SD3EditTransformer", "SD3_TRANSFORMER_CONFIG", "SD3_VAE", "sd3_unet_fields"]

SD3_TRANSFORMER_CONFIG = {
    "sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
    "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
    "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192,
}
"""``transformer/config.json`` of stabilityai/stable-diffusion-3-medium-diffusers."""

SD3_VAE = {"block_out_channels": (128, 256, 512, 512), "layers_per_block": 2, "latent_channels": 16,
           "norm_num_groups": 32, "scaling_factor": 1.5305, "shift_factor": 0.0609, "use_quant_conv": False,
           "use_post_quant_conv": False}
"""``vae/config.json`` of SD3-medium (the fields SmartEdit's ``VAEConfig`` holds)."""


def sd3_unet_fields(config: dict) -> dict:
    """``UNetConfig`` fields read off an SD3 transformer config (what the rest of SmartEdit uses): the context width
    (``cross_attention_dim``), the latent channels, the patch size, and the width of the patch embedding's output
    (``block_out_channels[0]``, where the BIM's spatial feature is added)."""
    inner = config["num_attention_heads"] * config["attention_head_dim"]
    return dict(sample_size=config.get("sample_size", 128), latent_channels=config.get("out_channels", 16),
                block_out_channels=(inner,), down_block_types=("JointTransformerBlock",),
                up_block_types=("JointTransformerBlock",), layers_per_block=config["num_layers"],
                cross_attention_dim=config["joint_attention_dim"], attention_head_dim=config["attention_head_dim"],
                norm_num_groups=1, patch_size=config.get("patch_size", 2))


class SD3EditTransformer(SD3Transformer2DModel):
    """SD3's MMDiT called like SmartEdit's UNets: ``(sample, timestep, encoder_hidden_states)`` → ``.sample``, its
    pooled text embedding derived from the context, and its patch convolution reachable as ``conv_in`` (widened by
    :func:`smartedit.unet.widen_conv_in`, hooked by :class:`smartedit.unet.ConvInResidual`)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = self.config
        self.pooled_proj = nn.Linear(cfg.joint_attention_dim, cfg.pooled_projection_dim)
        self.reset_pooled_proj()

    @torch.no_grad()
    def reset_pooled_proj(self) -> None:
        """Zero weight and bias: the pooled embedding starts at zero (the context alone conditions the model)."""
        nn.init.zeros_(self.pooled_proj.weight)
        nn.init.zeros_(self.pooled_proj.bias)

    @property
    def conv_in(self) -> nn.Conv2d:
        """The patch embedding's convolution [B, C_in, h, w] → [B, inner, h/p, w/p]."""
        return self.pos_embed.proj

    def __setattr__(self, name, value):
        if name == "conv_in":  # (widen_conv_in replaces the input convolution)
            self.pos_embed.proj = value
            return
        super().__setattr__(name, value)

    def forward(self, sample, timestep, encoder_hidden_states, *args, pooled_projections=None, **kwargs):
        timestep = torch.as_tensor(timestep, device=sample.device)
        if timestep.ndim == 0:
            timestep = timestep.expand(sample.shape[0])  # [B]
        if pooled_projections is None:
            pooled_projections = self.pooled_proj(encoder_hidden_states.mean(dim=1))  # [B, 2048]
        return super().forward(hidden_states=sample, encoder_hidden_states=encoder_hidden_states,
                               pooled_projections=pooled_projections, timestep=timestep, **kwargs)
