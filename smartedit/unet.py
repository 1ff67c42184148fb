"""InstructPix2Pix UNet: diffusers' ``UNet2DConditionModel`` with a widened ``conv_in`` and the BIM's spatial
feature added to the ``conv_in`` output through a forward hook (composition, no copy of diffusers' UNet file).

``conv_in`` input channels: noisy target latent (4) ‖ source-image latent (4) ‖ optional region-mask latent (4,
UltraEdit-style). When widening a pretrained UNet, the old weights AND bias are copied into the first channels and
the new channels start at zero, so the widened UNet computes exactly what the old one did.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
from diffusers import AutoencoderKL, DDPMScheduler, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel

from .config import SchedulerConfig, UNetConfig, VAEConfig


def build_unet(cfg: UNetConfig) -> UNet2DConditionModel:
    return UNet2DConditionModel(
        sample_size=cfg.sample_size, in_channels=cfg.in_channels, out_channels=cfg.latent_channels,
        down_block_types=tuple(cfg.down_block_types), up_block_types=tuple(cfg.up_block_types),
        block_out_channels=tuple(cfg.block_out_channels), layers_per_block=cfg.layers_per_block,
        cross_attention_dim=cfg.cross_attention_dim, attention_head_dim=cfg.attention_head_dim,
        norm_num_groups=cfg.norm_num_groups,
    )


def unet_config_from_diffusers(config) -> dict:
    """Our ``UNetConfig`` fields read off a diffusers UNet config (SD-1.5 / InstructPix2Pix folders)."""
    head_dim = config.attention_head_dim
    if isinstance(head_dim, (list, tuple)):
        head_dim = head_dim[0]
    return dict(sample_size=config.sample_size, latent_channels=config.out_channels,
                block_out_channels=tuple(config.block_out_channels),
                down_block_types=tuple(config.down_block_types), up_block_types=tuple(config.up_block_types),
                layers_per_block=config.layers_per_block, cross_attention_dim=config.cross_attention_dim,
                attention_head_dim=head_dim, norm_num_groups=config.norm_num_groups)


def build_vae(cfg: VAEConfig) -> AutoencoderKL:
    n = len(cfg.block_out_channels)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(cfg.block_out_channels),
        layers_per_block=cfg.layers_per_block, latent_channels=cfg.latent_channels,
        norm_num_groups=cfg.norm_num_groups, scaling_factor=cfg.scaling_factor,
        **({"shift_factor": cfg.shift_factor} if cfg.shift_factor else {}),
        **({} if cfg.use_quant_conv else {"use_quant_conv": False}),
        **({} if cfg.use_post_quant_conv else {"use_post_quant_conv": False}),
    )


def build_noise_scheduler(cfg: SchedulerConfig) -> DDPMScheduler | FlowMatchEulerDiscreteScheduler:
    """The training noise schedule (and, through :func:`smartedit.pipeline.inference_scheduler`, every sampler's).
    ``clip_sample=False`` as in Stable Diffusion's scheduler config: latents are not images in [-1, 1] (scaled
    SD-style latents and latent changes reach ±5–8), and DDIM / DDPM's default x0 clipping to ±1 would flatten
    every edit towards the source. Flow matching (``prediction_type = "flow"``): SD3's schedule with its shift."""
    if cfg.prediction_type == "flow":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=cfg.num_train_timesteps, shift=cfg.shift)
    return DDPMScheduler(num_train_timesteps=cfg.num_train_timesteps, beta_start=cfg.beta_start,
                         beta_end=cfg.beta_end, beta_schedule=cfg.beta_schedule,
                         prediction_type=cfg.prediction_type, clip_sample=False)


@torch.no_grad()
def widen_conv_in(unet: UNet2DConditionModel, in_channels: int) -> UNet2DConditionModel:
    """Give ``unet.conv_in`` ``in_channels`` inputs: old weights and bias copied, new input channels zeroed."""
    old = unet.conv_in
    if in_channels == old.in_channels:
        return unet
    if in_channels < old.in_channels:
        raise ValueError(f"cannot narrow conv_in from {old.in_channels} to {in_channels} channels")
    new = nn.Conv2d(in_channels, old.out_channels, kernel_size=old.kernel_size, stride=old.stride,
                    padding=old.padding, device=old.weight.device, dtype=old.weight.dtype)
    new.weight.zero_()
    new.weight[:, :old.in_channels] = old.weight
    new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=in_channels)
    return unet


class ConvInResidual:
    """Adds a residual [B, C0, h, w] to ``unet.conv_in``'s output while active (a forward hook).

    Used for the BIM's spatial feature::

        with residual.active(feature):
            eps = unet(x, t, encoder_hidden_states=ctx).sample
    """

    def __init__(self, unet: UNet2DConditionModel):
        self._residual: torch.Tensor | None = None
        self._handle = unet.conv_in.register_forward_hook(self._hook)

    def _hook(self, module, inputs, output):
        if self._residual is None:
            return output
        if self._residual.shape != output.shape:
            raise ValueError(f"BIM spatial feature {tuple(self._residual.shape)} does not match the UNet conv_in "
                             f"output {tuple(output.shape)}")
        return output + self._residual.to(output.dtype)

    @contextmanager
    def active(self, residual: torch.Tensor | None):
        previous, self._residual = self._residual, residual
        try:
            yield
        finally:
            self._residual = previous

    def reattach(self, unet: UNet2DConditionModel) -> None:
        """Move the hook to ``unet.conv_in`` (after ``conv_in`` was replaced, e.g. by :func:`widen_conv_in`)."""
        self._handle.remove()
        self._handle = unet.conv_in.register_forward_hook(self._hook)
