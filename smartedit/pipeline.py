"""SmartEditPipeline: instruction-based editing with a SmartEditModel, on diffusers' pipeline base.

The condition (MLLM → Q-Former → BIM, plus the source latent) is computed ONCE per edit; the denoising loop then
runs the UNet on the three classifier-free-guidance branches batched together
([text+image, null-text+image, null-text+null-image], see :mod:`smartedit.cfg`), exactly like diffusers'
``StableDiffusionInstructPix2PixPipeline`` does with CLIP-text prompt embeddings. Given ``prompt_embeds`` the
Q-Former/BIM path is bypassed and the loop is step-for-step that pipeline's.

Also here: per-sample seeds (a batch gives the same images as single edits), multi-turn sessions
(:class:`EditSession`), region masks for models with mask channels, any input size (edited at the model's
resolution, returned at the input's size), swappable schedulers, and memory modes for 7B/13B on one GPU.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DiffusionPipeline
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image

from .cfg import combine_guidance, guidance_branches
from .config import SchedulerConfig
from .image_io import ImageInputError, load_image, load_mask, to_unit_tensor
from .model import Condition, SmartEditModel

logger = logging.getLogger(__name__)

LLM_OFFLOAD_MODES = ("none", "cpu", "free")


@dataclass
class SmartEditOutput(BaseOutput):
    images: list[Image.Image] | list[np.ndarray] | np.ndarray | torch.Tensor
    seeds: list[int] | None = None
    replies: list[str] | None = None


def inference_scheduler(cfg: SchedulerConfig):
    """The sampler named by ``cfg.sampler`` (EulerAncestral, the reference's, unless the model says otherwise) on
    the training noise schedule of ``cfg``."""
    import diffusers

    from .unet import build_noise_scheduler

    return getattr(diffusers, cfg.sampler).from_config(build_noise_scheduler(cfg).config)


def default_scheduler(model: SmartEditModel):
    """The model's default sampler (:func:`inference_scheduler` of its scheduler config)."""
    return inference_scheduler(model.config.scheduler)


def prepare_image(image, name: str = "image") -> torch.Tensor:
    """Any supported image input → [3, H, W] float in [0, 1]. A [3,H,W] tensor in [0, 1] is used as is."""
    if isinstance(image, torch.Tensor) and image.ndim == 3 and image.shape[0] == 3 and image.is_floating_point():
        if not torch.isfinite(image).all() or image.min() < 0 or image.max() > 1:
            raise ImageInputError(f"{name} tensor values must be finite and lie in [0, 1]")
        return image.detach().float()
    return to_unit_tensor(load_image(image, name))


class SmartEditPipeline(DiffusionPipeline):
    """``pipe(image, instruction)`` → edited image(s). ``pipe.session(image)`` for multi-turn editing."""

    def __init__(self, model: SmartEditModel, scheduler=None):
        super().__init__()
        scheduler = scheduler if scheduler is not None else default_scheduler(model)
        self.register_modules(model=model, scheduler=scheduler)
        self._llm_offload = "none"
        self._offload_device: torch.device | None = None

    @classmethod
    def from_model_dir(cls, directory: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       scheduler=None) -> "SmartEditPipeline":
        model = SmartEditModel.from_pretrained(directory, device=device, dtype=dtype)
        return cls(model, scheduler)

    # ---- memory modes --------------------------------------------------------------------------------
    def enable_llm_offload(self, mode: str = "cpu") -> None:
        """After each condition is encoded: ``cpu`` moves the MLLM to CPU (back to the device for the next edit),
        ``free`` deletes it (the pipeline can then only denoise given ``prompt_embeds``), ``none`` keeps it."""
        if mode not in LLM_OFFLOAD_MODES:
            raise ValueError(f"LLM offload mode must be one of {list(LLM_OFFLOAD_MODES)}, got {mode!r}")
        self._llm_offload = mode

    def enable_model_cpu_offload(self, device: str | torch.device = "cuda") -> None:
        """Keep every component on CPU and move each one to ``device`` only while it runs (MLLM, Q-Former+BIM,
        VAE, UNet): the smallest GPU footprint, at the cost of transfers."""
        self._offload_device = torch.device(device)
        self.model.to("cpu")

    @property
    def _execution_device(self) -> torch.device:  # the model is not a diffusers ModelMixin
        if self._offload_device is not None:
            return self._offload_device
        return self.model.null_text_embedding.device

    @contextmanager
    def _running(self, *modules):
        """Move ``modules`` to the execution device for the block when model CPU offload is on."""
        if self._offload_device is None:
            yield
            return
        for m in modules:
            if m is not None:
                m.to(self._offload_device)
        try:
            yield
        finally:
            for m in modules:
                if m is not None:
                    m.to("cpu")

    # ---- inputs --------------------------------------------------------------------------------------
    def check_inputs(self, n_images, instructions, num_inference_steps, text_guidance_scale, image_guidance_scale,
                     prompt_embeds, mask) -> None:
        if prompt_embeds is None:
            if instructions is None:
                raise ValueError("give an instruction (or prompt_embeds)")
            if len(instructions) != n_images:
                raise ValueError(f"got {n_images} images but {len(instructions)} instructions")
            for text in instructions:
                if not isinstance(text, str) or not text.strip():
                    raise ValueError("instruction must be a non-empty string, e.g. 'make the sky blue'")
        elif prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != n_images:
            raise ValueError(f"prompt_embeds must be [num_images, tokens, dim], got {tuple(prompt_embeds.shape)}")
        if isinstance(num_inference_steps, bool) or not isinstance(num_inference_steps, int) \
                or num_inference_steps < 1:
            raise ValueError(f"num_inference_steps must be an integer >= 1, got {num_inference_steps!r}")
        for name, value in (("text_guidance_scale", text_guidance_scale),
                            ("image_guidance_scale", image_guidance_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if mask is not None and self.model.config.unet.mask_channels == 0:
            raise ValueError("this model has no region-mask channels (unet.mask_channels = 0); edit without a mask "
                             "or use a model trained with mask channels")

    def _resolution(self, resolution: int | None) -> int:
        cfg = self.model.config
        res = resolution or cfg.resolution
        factor = cfg.vae.downsample_factor * 2 ** (len(cfg.unet.block_out_channels) - 1)
        if isinstance(res, bool) or not isinstance(res, int) or res < factor or res % factor:
            raise ValueError(f"resolution must be a positive multiple of {factor}, got {res!r}")
        return res

    @staticmethod
    def _resize(t: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", clamp: bool = True) -> torch.Tensor:
        if tuple(t.shape[-2:]) == tuple(size):
            return t
        if mode == "nearest":
            return F.interpolate(t[None], size=size, mode="nearest")[0]
        out = F.interpolate(t[None], size=size, mode=mode, align_corners=False, antialias=True)[0]
        return out.clamp(0, 1) if clamp else out

    @staticmethod
    def _seeds_and_generators(n: int, generator, seed) -> tuple[list[int] | None, object]:
        if generator is not None:
            if seed is not None:
                raise ValueError("give either seed or generator, not both")
            return None, generator
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} images")
        return seeds, [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    # ---- the edit ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, image, instruction: str | list[str] | None = None, mask=None, num_inference_steps: int = 100,
                 text_guidance_scale: float = 7.5, image_guidance_scale: float = 1.5,
                 generator: torch.Generator | list[torch.Generator] | None = None, seed: int | list[int] | None = None,
                 resolution: int | None = None, output_type: str = "pil", keep_model_size: bool = False,
                 generate_reply: bool = False, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None) -> SmartEditOutput:
        """Edit ``image`` (one or a list) following ``instruction`` (one per image, or one for all).

        ``seed``: an int gives sample i the seed ``seed + i``; a list gives one seed per sample (so a batch equals
        the same edits made one by one); neither → a random seed, returned in ``output.seeds``.
        ``mask``: region mask(s) (white = edit here) with each image's size, for models with mask channels.
        ``prompt_embeds`` [B, 77, D]: bypass the MLLM/Q-Former/BIM and condition the UNet directly
        (``negative_prompt_embeds`` default: the model's null text embedding).
        ``output_type``: ``pil``, ``np`` (float HWC in [0, 1]) or ``latent``.
        """
        if output_type not in ("pil", "np", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np' or 'latent', got {output_type!r}")
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("no image given")
        instructions = None
        if instruction is not None:
            instructions = [instruction] * len(images) if isinstance(instruction, str) else list(instruction)
        self.check_inputs(len(images), instructions, num_inference_steps, text_guidance_scale, image_guidance_scale,
                          prompt_embeds, mask)
        res = self._resolution(resolution)
        tensors = [prepare_image(im, f"image {i}") for i, im in enumerate(images)]
        sizes = [tuple(t.shape[-2:]) for t in tensors]
        device = self._execution_device
        batch = torch.stack([self._resize(t, (res, res)) for t in tensors]).to(device)  # [B, 3, R, R]
        mask_batch = None
        if mask is not None:
            masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
            if len(masks) != len(images):
                raise ValueError(f"got {len(masks)} masks for {len(images)} images")
            mask_batch = torch.stack([self._resize(load_mask(m, (s[1], s[0]), f"mask {i}"), (res, res), "nearest")
                                      for i, (m, s) in enumerate(zip(masks, sizes))]).to(device)

        seeds, generators = self._seeds_and_generators(len(images), generator, seed)
        cond = self.encode(batch, instructions, mask_batch, generate_reply, prompt_embeds)
        latents = self.denoise(cond, num_inference_steps, text_guidance_scale, image_guidance_scale, generators,
                               negative_prompt_embeds)
        if output_type == "latent":
            return SmartEditOutput(images=latents, seeds=seeds, replies=cond.replies)
        if self.model.config.scheduler.decode == "residual":
            # the change applied in pixel space, to the input itself (at its own size unless keep_model_size)
            delta = self.decode_change(latents, cond.source_latent)  # [B, 3, R, R] in [-1, 1] units of [0, 1]
            sources = [batch[i] for i in range(len(images))] if keep_model_size else tensors
            decoded = [(src.to(d.device, d.dtype) + self._resize(d, tuple(src.shape[-2:]), clamp=False)).clamp(0, 1)
                       for src, d in zip(sources, delta)]
        else:
            decoded = self.decode(latents, cond.source_latent)  # [B, 3, R, R] in [0, 1]
            if not keep_model_size:
                decoded = [self._resize(d, s) for d, s in zip(decoded, sizes)]
        arrays = [d.permute(1, 2, 0).float().cpu().numpy() for d in decoded]
        if output_type == "np":
            same = len({a.shape for a in arrays}) == 1
            return SmartEditOutput(images=np.stack(arrays) if same else arrays, seeds=seeds, replies=cond.replies)
        pil = [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]
        return SmartEditOutput(images=pil, seeds=seeds, replies=cond.replies)

    def encode(self, batch: torch.Tensor, instructions: list[str] | None, mask: torch.Tensor | None = None,
               generate_reply: bool = False, prompt_embeds: torch.Tensor | None = None) -> Condition:
        """The edit's condition, computed once: MLLM → Q-Former → BIM (or the given ``prompt_embeds``)."""
        model = self.model
        if prompt_embeds is not None:
            source = batch * 2 - 1
            mask_latent = None
            with self._running(model.vae):
                source_latent = model.encode_latent(source)
                if model.config.unet.mask_channels:
                    mask_latent = model.encode_latent(model.mask_to_image(mask, source))
            return Condition(context=prompt_embeds.to(batch.device), spatial=None, source_latent=source_latent,
                             mask_latent=mask_latent)
        if model.mllm is None:
            raise RuntimeError("the MLLM was freed after encoding (enable_llm_offload('free')); reload the model "
                               "or pass prompt_embeds")
        if self._llm_offload == "cpu" and self._offload_device is None:
            model.mllm.to(batch.device)
        with self._running(model.mllm, model.qformer, model.bim, model.vae):
            cond = model.encode_condition(batch, instructions, mask=mask, generate=generate_reply)
        if self._llm_offload == "cpu":
            model.mllm.to("cpu")
        elif self._llm_offload == "free":
            model.mllm = None
            logger.info("freed the MLLM after encoding")
        return cond

    def denoise(self, cond: Condition, num_inference_steps: int, text_guidance_scale: float,
                image_guidance_scale: float, generator=None,
                negative_prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
        """The guided denoising loop from pure noise to the edited latent (scaled), [B, 4, h, w]."""
        model = self.model
        device = cond.context.device
        batch, channels, h, w = cond.source_latent.shape
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = randn_tensor((batch, channels, h, w), generator=generator, device=device,
                               dtype=cond.context.dtype)
        latents = latents * self.scheduler.init_noise_sigma
        null = model.null_text_embedding if negative_prompt_embeds is None else negative_prompt_embeds
        contexts, sources = guidance_branches(cond.context, null.to(device), cond.source_latent)
        spatial = None if cond.spatial is None else torch.cat([cond.spatial] * 3, dim=0)
        masks = None if cond.mask_latent is None else torch.cat([cond.mask_latent] * 3, dim=0)
        step_kwargs = {}
        if "generator" in inspect.signature(self.scheduler.step).parameters:
            step_kwargs["generator"] = generator
        with self._running(model.unet):
            for t in self.progress_bar(self.scheduler.timesteps):
                x = self.scheduler.scale_model_input(torch.cat([latents] * 3), t)  # [3B, 4, h, w]
                pred = model.predict(model.unet_input(x, sources, masks), t, contexts, spatial)  # [3B, 4, h, w]
                guided = combine_guidance(pred.to(latents.dtype), text_guidance_scale, image_guidance_scale)
                latents = self.scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
        return latents

    def decode(self, latents: torch.Tensor, source_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents → images [B, 3, H, W] in [0, 1]. For a model that diffuses the latent change
        (``scheduler.diffuse = "change"``) the (unscaled) source latent is added back first."""
        vae = self.model.vae
        latents = latents.to(vae.device, vae.dtype) / self.model.config.vae.scaling_factor  # [B, 4, h, w]
        if self.model.config.scheduler.diffuse == "change":
            if source_latent is None:
                raise ValueError("this model diffuses the latent change from the source: decode needs source_latent")
            latents = latents + source_latent.to(latents.device, latents.dtype)
        with self._running(vae):
            image = vae.decode(latents).sample
        return (image.float() / 2 + 0.5).clamp(0, 1)

    def decode_change(self, latents: torch.Tensor, source_latent: torch.Tensor) -> torch.Tensor:
        """Sampled latent changes (``scheduler.diffuse = "change"``) → the pixel change [B, 3, H, W] (in units of
        [0, 1] images) they make: D(source latent + change) − D(source latent), so the VAE's reconstruction error
        cancels where nothing changes (``scheduler.decode = "residual"``)."""
        if self.model.config.scheduler.diffuse != "change":
            raise ValueError("decode_change needs a model that diffuses the latent change (scheduler.diffuse = "
                             f"'change'), this one diffuses {self.model.config.scheduler.diffuse!r}")
        vae = self.model.vae
        latents = latents.to(vae.device, vae.dtype) / self.model.config.vae.scaling_factor  # [B, C, h, w]
        source_latent = source_latent.to(latents.device, latents.dtype)  # [B, C, h, w]
        with self._running(vae):
            pair = vae.decode(torch.cat([source_latent + latents, source_latent])).sample.float()  # [2B, 3, H, W]
        edited, rebuilt = pair.chunk(2)
        return (edited.clamp(-1, 1) - rebuilt.clamp(-1, 1)) / 2  # [B, 3, H, W]

    # ---- multi-turn ----------------------------------------------------------------------------------
    def session(self, image, seed: int = 0, **defaults) -> "EditSession":
        """A multi-turn editing session starting from ``image`` (MagicBrush's iterative setting)."""
        return EditSession(self, image, seed=seed, **defaults)


@dataclass
class Turn:
    instruction: str | None
    image: Image.Image
    seed: int | None = None
    settings: dict = field(default_factory=dict)


class EditSession:
    """Each turn edits the previous turn's output; the whole history is kept (and can be undone or saved).

    Turn k (1-based) uses seed ``seed + k - 1`` unless a seed is given, so a session replays identically."""

    def __init__(self, pipe: SmartEditPipeline, image, seed: int = 0, **defaults):
        self.pipe = pipe
        self.seed = int(seed)
        self.defaults = defaults
        self.history: list[Turn] = [Turn(None, load_image(image))]

    @property
    def current(self) -> Image.Image:
        return self.history[-1].image

    def edit(self, instruction: str, mask=None, seed: int | None = None, **settings) -> Image.Image:
        seed = self.seed + len(self.history) - 1 if seed is None else int(seed)
        kwargs = {**self.defaults, **settings}
        out = self.pipe(self.current, instruction, mask=mask, seed=seed, **kwargs)
        self.history.append(Turn(instruction, out.images[0], seed, kwargs))
        return out.images[0]

    def undo(self) -> Image.Image:
        if len(self.history) == 1:
            raise ValueError("nothing to undo: the session holds only the input image")
        self.history.pop()
        return self.current

    def save(self, directory: str) -> str:
        """Write ``turn_00.png`` (input) … ``turn_NN.png`` and ``history.json``; returns the JSON path."""
        os.makedirs(directory, exist_ok=True)
        records = []
        for k, turn in enumerate(self.history):
            name = f"turn_{k:02d}.png"
            turn.image.save(os.path.join(directory, name))
            records.append({"turn": k, "instruction": turn.instruction, "seed": turn.seed, "image": name,
                            "settings": turn.settings})
        path = os.path.join(directory, "history.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=2)
        return path
