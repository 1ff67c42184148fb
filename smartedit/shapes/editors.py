"""Editors for the InstructPix2Pix folders that ShapesWorld pretraining writes
(:func:`smartedit.shapes.pretrain.pretrain_ip2p`): IP2P-tiny, a CLIP-text InstructPix2Pix diffusion model, and the
one-step regression control.

Both are :class:`smartedit.eval.generate.Editor` subclasses, so every benchmark runs them like a SmartEdit model (same
per-sample seeds, steps and guidance, failures isolated). The latents are decoded as the SmartEdit pipeline decodes
them (:func:`smartedit.pipeline.decode_latent_change` + :func:`smartedit.pipeline.apply_pixel_change` for a model that
diffuses the latent change and applies it in pixel space, :func:`smartedit.pipeline.decode_latents` otherwise), as
the folder's ``smartedit.json`` says (:data:`smartedit.shapes.pretrain.PIPELINE_INFO`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ..config import SchedulerConfig
from ..eval.backbones import combined_sha256, sha256_file
from ..eval.generate import EditJob, Editor, GenerationSettings
from ..image_io import to_unit_tensor
from ..pipeline import apply_pixel_change, decode_latent_change, decode_latents, resize_image
from .pretrain import PIPELINE_INFO

__all__ = ["IP2PEditor", "RegressionEditor"]


class IP2PEditor(Editor):
    """A CLIP-text InstructPix2Pix editor (diffusers' ``StableDiffusionInstructPix2PixPipeline`` folder, e.g. the
    ShapesWorld IP2P-tiny baseline) run with the same per-sample seeds, steps and guidance as :class:`Editor`."""

    def __init__(self, pipeline_dir: str | os.PathLike, settings: GenerationSettings,
                 device: str | torch.device = "cpu", skip_existing: bool = False):
        from diffusers import StableDiffusionInstructPix2PixPipeline

        self.model_dir = os.fspath(pipeline_dir)
        self.requested = settings
        self.settings = settings.resolved({})
        self.skip_existing = skip_existing
        self.pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained(
            self.model_dir, local_files_only=True, safety_checker=None, requires_safety_checker=False).to(device)
        self.pipe.set_progress_bar_config(disable=True)
        info = Path(self.model_dir) / PIPELINE_INFO  # what the UNet diffuses and how its latents are decoded
        meta = json.loads(info.read_text(encoding="utf-8")) if info.is_file() else {}
        self.diffuse = meta.get("diffuse", "target")
        self.decode_mode = meta.get("decode", "latent")  # see smartedit.config.SchedulerConfig.decode
        problems = SchedulerConfig(diffuse=self.diffuse, decode=self.decode_mode).problems(prefix="")
        if problems:
            raise ValueError(f"{info}: " + "; ".join(problems) + "; fix the file")
        self.info = self._describe(device)
        self.failures: dict[str, str] = {}
        self.seeds: dict[str, int] = {}

    def _describe(self, device) -> dict[str, Any]:
        weights = sorted(Path(self.model_dir).glob("*/*.safetensors"))
        hashes = {os.path.relpath(w, self.model_dir): sha256_file(w) for w in weights}
        return {"model_dir": self.model_dir, "kind": type(self).__name__, "weights": hashes,
                "sha256": combined_sha256(hashes) if hashes else None, "device": str(device),
                "scheduler": type(self.pipe.scheduler).__name__, "diffuse": self.diffuse,
                "decode": self.decode_mode,
                **self.settings.to_dict(), "defaulted": self.requested.defaulted()}

    def _resize(self, images: list[Image.Image]) -> list[Image.Image]:
        r = self.settings.resolution
        return [im.convert("RGB").resize((r, r), Image.Resampling.BICUBIC) if r else im.convert("RGB")
                for im in images]

    def _tensor(self, images: list[Image.Image]) -> torch.Tensor:
        x = torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2).float() / 127.5 - 1
        return x.to(self.pipe.device)  # [B, 3, H, W] in [-1, 1]

    @torch.no_grad()
    def _decode(self, latents: torch.Tensor, images: list[Image.Image], ims: list[Image.Image]) -> list[Image.Image]:
        """Scaled latents (of the target, or of the change from the source latent of ``ims``, the model-size inputs)
        → PIL images at the sizes of ``images``."""
        vae = self.pipe.vae
        scale = float(vae.config.scaling_factor)

        def decode(z: torch.Tensor) -> torch.Tensor:
            return vae.decode(z).sample  # [B, 3, H, W] in about [-1, 1]

        latents = latents.to(vae.device, vae.dtype)
        source = vae.encode(self._tensor(ims)).latent_dist.mode() if self.diffuse == "change" else None  # [B, C, h, w]
        if self.decode_mode == "residual":  # output = input + D(source + change) − D(source), at the input's size
            delta = decode_latent_change(decode, latents, source, scale)  # [B, 3, h, w]
            out = [apply_pixel_change(to_unit_tensor(im), d) for im, d in zip(images, delta)]
        else:
            decoded = decode_latents(decode, latents, scale, source)  # [B, 3, h, w] in [0, 1]
            out = [resize_image(d, (im.size[1], im.size[0])) for d, im in zip(decoded, images)]
        return [Image.fromarray((o.permute(1, 2, 0).float().cpu().numpy() * 255).round().astype(np.uint8))
                for o in out]

    def _edit(self, images: list[Image.Image], jobs: list[EditJob]) -> list[Image.Image]:
        s = self.settings
        gens = [torch.Generator().manual_seed(self.seeds[j.sample_id]) for j in jobs]
        ims = self._resize(images)
        latents = self.pipe(prompt=[j.instruction for j in jobs], image=ims,
                            num_inference_steps=s.num_inference_steps, guidance_scale=s.text_guidance_scale,
                            image_guidance_scale=s.image_guidance_scale, generator=gens, output_type="latent").images
        return self._decode(latents, images, ims)


class RegressionEditor(IP2PEditor):
    """The one-step regression control (:func:`smartedit.shapes.pretrain.pretrain_ip2p` with
    ``objective="regression"``): the UNet maps (zero latent, source latent, instruction) at the last timestep straight
    to the target latent; no sampling, no guidance, no seed."""

    @torch.no_grad()
    def _edit(self, images: list[Image.Image], jobs: list[EditJob]) -> list[Image.Image]:
        pipe = self.pipe
        ims = self._resize(images)
        source = pipe.vae.encode(self._tensor(ims)).latent_dist.mode()  # [B, C, h, w]
        ids = pipe.tokenizer([j.instruction for j in jobs], padding="max_length", max_length=77, truncation=True,
                             return_tensors="pt")["input_ids"].to(pipe.device)
        context = pipe.text_encoder(ids).last_hidden_state  # [B, 77, D]
        last = torch.full((len(jobs),), pipe.scheduler.config.num_train_timesteps - 1, device=pipe.device)
        latent = pipe.unet(torch.cat([torch.zeros_like(source), source], 1), last, encoder_hidden_states=context).sample
        return self._decode(latent, images, ims)
