"""SmartEditPipeline: instruction-based editing with a SmartEditModel, on diffusers' pipeline base.

The condition (MLLM → Q-Former → BIM, plus the source latent) is computed ONCE per edit; the denoising loop then
runs the UNet on the three classifier-free-guidance branches batched together
([text+image, null-text+image, null-text+null-image], see :mod:`smartedit.cfg`), exactly like diffusers'
``StableDiffusionInstructPix2PixPipeline`` does with CLIP-text prompt embeddings.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline, EulerAncestralDiscreteScheduler
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .cfg import combine_guidance, guidance_branches
from .model import Condition, SmartEditModel

logger = logging.getLogger(__name__)


@dataclass
class SmartEditOutput(BaseOutput):
    images: list[Image.Image] | np.ndarray | torch.Tensor
    replies: list[str] | None = None


def default_scheduler(model: SmartEditModel) -> EulerAncestralDiscreteScheduler:
    """EulerAncestral (the reference's inference sampler) on the model's training noise schedule."""
    return EulerAncestralDiscreteScheduler.from_config(model.noise_scheduler.config)


def to_tensor(image) -> torch.Tensor:
    """PIL / numpy HWC uint8 or float / tensor CHW in [0,1] → float tensor [3,H,W] in [0,1] (RGB)."""
    if isinstance(image, Image.Image):
        image = np.array(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=-1)
        if image.ndim != 3 or image.shape[-1] not in (3, 4):
            raise ValueError(f"numpy image must be HxWx3 (or HxWx4), got shape {image.shape}")
        image = image[..., :3]
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / scale
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"tensor image must be [3,H,W] in [0,1], got shape {tuple(image.shape)}")
        return image.float()
    raise TypeError(f"unsupported image type {type(image).__name__}; give a PIL image, numpy array or tensor")


class SmartEditPipeline(DiffusionPipeline):
    """``pipe(image, instruction)`` → edited image(s)."""

    def __init__(self, model: SmartEditModel, scheduler=None):
        super().__init__()
        scheduler = scheduler if scheduler is not None else default_scheduler(model)
        self.register_modules(model=model, scheduler=scheduler)

    @classmethod
    def from_model_dir(cls, directory: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       scheduler=None) -> "SmartEditPipeline":
        model = SmartEditModel.from_pretrained(directory, device=device, dtype=dtype)
        return cls(model, scheduler)

    @property
    def _execution_device(self) -> torch.device:  # the model may not be a diffusers ModelMixin
        return self.model.null_text_embedding.device

    def check_inputs(self, images, instructions, num_inference_steps, text_guidance_scale, image_guidance_scale):
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions")
        for text in instructions:
            if not isinstance(text, str) or not text.strip():
                raise ValueError("instruction must be a non-empty string, e.g. 'make the sky blue'")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        for name, value in (("text_guidance_scale", text_guidance_scale),
                            ("image_guidance_scale", image_guidance_scale)):
            if not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")

    @torch.no_grad()
    def __call__(self, image, instruction: str | list[str], mask=None, num_inference_steps: int = 100,
                 text_guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
                 generator: torch.Generator | list[torch.Generator] | None = None, seed: int | list[int] | None = None,
                 resolution: int | None = None, output_type: str = "pil", keep_model_size: bool = False,
                 generate_reply: bool = False) -> SmartEditOutput:
        """Edit ``image`` (one or a list) following ``instruction`` (one per image).

        One seed per sample (``seed`` int → seed+i, or a list) so a batch gives the same images as single edits.
        ``output_type``: ``pil``, ``np`` (float HWC in [0,1]) or ``latent``.
        """
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        instructions = [instruction] * len(images) if isinstance(instruction, str) else list(instruction)
        self.check_inputs(images, instructions, num_inference_steps, text_guidance_scale, image_guidance_scale)
        model = self.model
        device = self._execution_device
        res = resolution or model.config.resolution
        factor = model.config.vae.downsample_factor * 2 ** (len(model.config.unet.block_out_channels) - 1)
        if res % factor:
            raise ValueError(f"resolution must be a multiple of {factor}, got {res}")
        tensors = [to_tensor(im) for im in images]
        sizes = [t.shape[-2:] for t in tensors]
        batch = torch.stack([F.interpolate(t[None], size=(res, res), mode="bicubic", align_corners=False,
                                           antialias=True)[0].clamp(0, 1) for t in tensors]).to(device)
        mask_batch = None
        if mask is not None:
            masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
            mask_batch = torch.stack([F.interpolate(to_tensor(m)[None, :1], size=(res, res), mode="nearest")[0]
                                      for m in masks]).to(device)

        generators = self._generators(len(images), generator, seed, device)
        cond = model.encode_condition(batch, instructions, mask=mask_batch, generate=generate_reply)
        latents = self.denoise(cond, num_inference_steps, text_guidance_scale, image_guidance_scale, generators)
        if output_type == "latent":
            return SmartEditOutput(images=latents, replies=cond.replies)
        vae = model.vae
        decoded = vae.decode(latents.to(vae.dtype) / model.config.vae.scaling_factor).sample
        decoded = (decoded.float() / 2 + 0.5).clamp(0, 1)  # [B, 3, res, res]
        if not keep_model_size:
            decoded = [F.interpolate(d[None], size=tuple(s), mode="bicubic", align_corners=False,
                                     antialias=True)[0].clamp(0, 1) for d, s in zip(decoded, sizes)]
        arrays = [d.permute(1, 2, 0).cpu().numpy() for d in decoded]
        if output_type == "np":
            return SmartEditOutput(images=np.stack(arrays) if keep_model_size else arrays, replies=cond.replies)
        pil = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]
        return SmartEditOutput(images=pil, replies=cond.replies)

    @staticmethod
    def _generators(n: int, generator, seed, device) -> list[torch.Generator] | torch.Generator | None:
        if seed is not None:
            seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed + i for i in range(n)]
            if len(seeds) != n:
                raise ValueError(f"got {len(seeds)} seeds for {n} images")
            return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        return generator

    def denoise(self, cond: Condition, num_inference_steps: int, text_guidance_scale: float,
                image_guidance_scale: float, generator=None) -> torch.Tensor:
        """The guided denoising loop from pure noise to the edited latent (scaled), [B, 4, h, w]."""
        model = self.model
        device = cond.context.device
        batch, channels, h, w = cond.source_latent.shape
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = randn_tensor((batch, channels, h, w), generator=generator, device=device,
                               dtype=cond.source_latent.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        contexts, sources = guidance_branches(cond.context, model.null_text_embedding, cond.source_latent)
        spatial = None if cond.spatial is None else torch.cat([cond.spatial] * 3, dim=0)
        masks = None if cond.mask_latent is None else torch.cat([cond.mask_latent] * 3, dim=0)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        for t in self.progress_bar(self.scheduler.timesteps):
            x = self.scheduler.scale_model_input(torch.cat([latents] * 3), t)  # [3B, 4, h, w]
            pred = model.predict(model.unet_input(x, sources, masks), t, contexts, spatial)  # [3B, 4, h, w]
            guided = combine_guidance(pred, text_guidance_scale, image_guidance_scale)  # [B, 4, h, w]
            latents = self.scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
        return latents
