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
from .model import Condition, SmartEditModel, check_instructions, check_mask_support
from .prompt import reply_words

logger = logging.getLogger(__name__)

LLM_OFFLOAD_MODES = ("none", "cpu", "free")


@dataclass
class SmartEditOutput(BaseOutput):
    images: list[Image.Image] | list[np.ndarray] | np.ndarray | torch.Tensor
    seeds: list[int] | None = None
    replies: list[str] | None = None
    """What the MLLM wrote before its ``<img_i>`` tokens, one per output image (its words, the tokens cut off), for
    a model that writes a reply; else None."""


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


def resize_image(t: torch.Tensor, size: tuple[int, int], mode: str = "bicubic", clamp: bool = True) -> torch.Tensor:
    """[C, H, W] → [C, *size] (antialiased bicubic, or ``nearest`` for masks); ``clamp``: to [0, 1] after."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if mode == "nearest":
        return F.interpolate(t[None], size=size, mode="nearest")[0]
    out = F.interpolate(t[None], size=size, mode=mode, align_corners=False, antialias=True)[0]
    return out.clamp(0, 1) if clamp else out


def decode_latents(decode, latents: torch.Tensor, scaling_factor: float,
                   source_latent: torch.Tensor | None = None, shift_factor: float = 0.0) -> torch.Tensor:
    """Scaled latents → images [B, 3, H, W] in [0, 1]. ``source_latent`` (unscaled; for a model that diffuses the
    latent change, ``scheduler.diffuse = "change"``) is added back first. ``decode``: unscaled latents → pixels in
    about [-1, 1] (:meth:`SmartEditModel.decode_latent`, or ``lambda z: vae.decode(z).sample`` of a diffusers VAE)."""
    latents = latents / scaling_factor
    if shift_factor:
        latents = latents + shift_factor  # (SD3's VAE: z = (latent − shift) · scale)
    if source_latent is not None:
        latents = latents + source_latent.to(latents.device, latents.dtype)  # [B, C, h, w]
    return (decode(latents).float() / 2 + 0.5).clamp(0, 1)  # [B, 3, H, W]


def decode_latent_change(decode, latents: torch.Tensor, source_latent: torch.Tensor,
                         scaling_factor: float) -> torch.Tensor:
    """Sampled latent changes (scaled; ``scheduler.diffuse = "change"``) → the pixel change [B, 3, H, W] (in units of
    [0, 1] images) they make: D(source latent + change) − D(source latent), so the VAE's reconstruction error
    cancels where nothing changes (``scheduler.decode = "residual"``; apply it with :func:`apply_pixel_change`).
    ``decode`` as for :func:`decode_latents`."""
    latents = latents / scaling_factor
    source_latent = source_latent.to(latents.device, latents.dtype)  # [B, C, h, w]
    pair = decode(torch.cat([source_latent + latents, source_latent])).float()  # [2B, 3, H, W]
    edited, rebuilt = pair.chunk(2)
    return (edited.clamp(-1, 1) - rebuilt.clamp(-1, 1)) / 2  # [B, 3, H, W]


def apply_pixel_change(image: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """An image [3, H, W] in [0, 1] + a pixel change [3, h, w] (:func:`decode_latent_change`, resized to H × W) → the
    edited image [3, H, W] in [0, 1]: the change applied to the input itself, at the input's own size."""
    return (image.to(delta.device, delta.dtype) + resize_image(delta, tuple(image.shape[-2:]), clamp=False)).clamp(0, 1)


class NonFiniteOutputError(RuntimeError):
    """The model produced NaN or infinite values (corrupt weights, or float16 overflow)."""


MODEL_INDEX = "model_index.json"
SCHEDULER_DIR = "scheduler"


def load_scheduler(directory: str):
    """A diffusers scheduler saved by ``save_pretrained`` (``scheduler_config.json``; JSON only, no code)."""
    import diffusers

    path = os.path.join(directory, "scheduler_config.json")
    with open(path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); fix it or delete the folder") from None
    name = config.get("_class_name") if isinstance(config, dict) else None
    cls = getattr(diffusers, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise ValueError(f"{path} names {name!r}, which is not a diffusers scheduler "
                         f"(e.g. DDIMScheduler, EulerAncestralDiscreteScheduler); fix _class_name or delete the "
                         f"folder to use the model's default sampler")
    return cls.from_config(config)


def _is_text(value) -> bool:
    return isinstance(value, str) or (isinstance(value, (list, tuple)) and bool(value)
                                      and all(isinstance(v, str) for v in value))


def _looks_like_file(value) -> bool:
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_looks_like_file(v) for v in value)
    return isinstance(value, (str, os.PathLike)) and os.path.isfile(value)


def _repeat(t: torch.Tensor | None, n: int) -> torch.Tensor | None:
    return None if t is None or n == 1 else t.repeat_interleave(n, dim=0)


class SmartEditPipeline(DiffusionPipeline):
    """``pipe(prompt, image=image)`` → edited image(s), with the argument names of diffusers'
    ``StableDiffusionInstructPix2PixPipeline``; ``pipe.session(image)`` for multi-turn editing.

    Sampling arguments left as None take the model folder's own settings (:attr:`sampling_defaults`, saved in its
    ``config.json``). Load with :meth:`from_pretrained` (a local folder written by :meth:`save_pretrained`,
    ``SmartEditModel.save_pretrained``, ``smartedit assemble`` or ``convert-released``)."""

    _callback_tensor_inputs = ["latents", "prompt_embeds", "image_latents"]

    def __init__(self, model: SmartEditModel, scheduler=None):
        super().__init__()
        scheduler = scheduler if scheduler is not None else default_scheduler(model)
        self.register_modules(model=model, scheduler=scheduler)
        self._llm_offload = "none"
        self._offload_device: torch.device | None = None
        self._home_device: torch.device = model.device
        self._interrupt = False
        self._num_timesteps = 0
        self._guidance_scale = self._image_guidance_scale = None

    # ---- loading and saving --------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike, torch_dtype: torch.dtype | None = None,
                        device: str | torch.device | None = None, scheduler=None,
                        llm_quantization: str | None = None, attn_implementation: str | None = None,
                        **kwargs) -> "SmartEditPipeline":
        """Load a local model folder. ``torch_dtype``: weights in this dtype (default: as saved); ``device``
        (default CPU); ``scheduler``: a diffusers scheduler instance (default: the folder's ``scheduler/`` if
        present, else the model config's sampler); ``llm_quantization``: ``int8`` / ``int4`` LLM weights (see
        :func:`smartedit.quantize.quantize_llm`); ``attn_implementation``: ``sdpa`` (default), ``eager`` or
        ``flash_attention_2`` (CUDA with flash-attn installed). Hub ids are never downloaded."""
        if kwargs:
            raise TypeError(f"SmartEditPipeline.from_pretrained got unsupported argument(s) {sorted(kwargs)}; it "
                            f"takes torch_dtype, device, scheduler, llm_quantization and attn_implementation")
        path = os.fspath(pretrained_model_name_or_path)
        if not os.path.isdir(path):
            raise FileNotFoundError(f"model folder {path!r} does not exist: give a local folder written by "
                                    f"save_pretrained (nothing is downloaded; e.g. checkpoints/smartedit-tiny)")
        model = SmartEditModel.from_pretrained(path, device=device or "cpu", dtype=torch_dtype,
                                               attn_implementation=attn_implementation)
        if scheduler is None and os.path.isfile(os.path.join(path, SCHEDULER_DIR, "scheduler_config.json")):
            scheduler = load_scheduler(os.path.join(path, SCHEDULER_DIR))
        pipe = cls(model, scheduler)
        if llm_quantization:
            from .quantize import quantize_llm

            quantize_llm(model, llm_quantization)
        return pipe

    @classmethod
    def from_model_dir(cls, directory: str, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                       scheduler=None) -> "SmartEditPipeline":
        """Older name of :meth:`from_pretrained`."""
        return cls.from_pretrained(directory, torch_dtype=dtype, device=device, scheduler=scheduler)

    def save_pretrained(self, save_directory: str | os.PathLike, max_shard_size: str | int = "5GB",
                        **kwargs) -> None:
        """Write the model folder (``config.json`` with the sampling defaults, safetensors weights, ``tokenizer/``),
        the scheduler (``scheduler/``) and a diffusers-style ``model_index.json``; :meth:`from_pretrained` reloads
        it bit-exactly."""
        if kwargs:
            raise TypeError(f"SmartEditPipeline.save_pretrained got unsupported argument(s) {sorted(kwargs)}")
        if self.model.mllm is None:
            raise RuntimeError("the MLLM was freed (enable_llm_offload('free')): reload the model before saving")
        if getattr(self.model, "llm_quantization", None):
            raise RuntimeError(f"the LLM is quantized ({self.model.llm_quantization}) for inference only: save the "
                               f"unquantized model and quantize again at load (llm_quantization=...)")
        import diffusers

        directory = os.fspath(save_directory)
        self.model.save_pretrained(directory, max_shard_size=max_shard_size)
        self.scheduler.save_pretrained(os.path.join(directory, SCHEDULER_DIR))
        index = {"_class_name": type(self).__name__, "_diffusers_version": diffusers.__version__,
                 "_smartedit_loader": "smartedit.pipeline.SmartEditPipeline.from_pretrained",
                 "model": ["smartedit", type(self.model).__name__],
                 "scheduler": ["diffusers", type(self.scheduler).__name__]}
        with open(os.path.join(directory, MODEL_INDEX), "w", encoding="utf-8") as f:
            json.dump(index, f, indent=2)
            f.write("\n")

    # ---- device, dtype, defaults -------------------------------------------------------------------------
    def to(self, *args, **kwargs) -> "SmartEditPipeline":
        """``pipe.to("cuda")``, ``pipe.to(torch.bfloat16)``, ``pipe.to("cuda", torch.float16)`` or keywords; returns
        the pipeline (moved in place, as diffusers does)."""
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        kwargs.pop("silence_dtype_warnings", None)
        if kwargs:
            raise TypeError(f"to() got unexpected argument(s) {sorted(kwargs)}")
        for arg in args:
            if isinstance(arg, torch.dtype):
                dtype = arg
            elif arg is not None:
                device = arg
        if device is not None and self._offload_device is not None:
            raise ValueError("model CPU offload is on (enable_model_cpu_offload): it places each component itself; "
                             "do not also move the pipeline with .to(device)")
        if device is not None:
            device = torch.device(device)
            self._home_device = device
        self.model.to(device=device, dtype=dtype)
        if self._llm_offload == "cpu" and self.model.mllm is not None:  # the MLLM stays on the CPU between edits
            self.model.mllm.to("cpu")
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def vae(self):
        return self.model.vae

    @property
    def unet(self):
        return self.model.unet

    @property
    def sampling_defaults(self) -> dict:
        """The model folder's sampling settings: ``num_inference_steps``, ``guidance_scale``,
        ``image_guidance_scale`` (used whenever a call leaves them as None)."""
        return self.model.config.sampling.to_dict()

    @property
    def guidance_scale(self):
        return self._guidance_scale

    @property
    def image_guidance_scale(self):
        return self._image_guidance_scale

    @property
    def num_timesteps(self) -> int:
        return self._num_timesteps

    @property
    def interrupt(self) -> bool:
        return self._interrupt

    # ---- memory modes --------------------------------------------------------------------------------
    def enable_llm_offload(self, mode: str = "cpu") -> None:
        """After each condition is encoded: ``cpu`` moves the MLLM to CPU (back to the device for the next edit),
        ``free`` deletes it (the pipeline can then only denoise given ``prompt_embeds``), ``none`` keeps it."""
        if mode not in LLM_OFFLOAD_MODES:
            raise ValueError(f"LLM offload mode must be one of {list(LLM_OFFLOAD_MODES)}, got {mode!r}")
        self._home_device = self.model.device
        self._llm_offload = mode
        if mode == "cpu" and self._offload_device is None and self.model.mllm is not None:
            self.model.mllm.to("cpu")  # back on the device only while it encodes

    def enable_model_cpu_offload(self, gpu_id: int | str | torch.device | None = None,
                                 device: str | torch.device | None = None) -> None:
        """Keep every component on CPU and move each one to the GPU only while it runs (MLLM + Q-Former + BIM +
        VAE encoder, then UNet, then VAE decoder): the smallest GPU footprint, at the cost of transfers.
        ``enable_model_cpu_offload()`` (CUDA), ``(gpu_id=1)`` or ``(device="cuda:1")`` as in diffusers."""
        if isinstance(gpu_id, (str, torch.device)):  # enable_model_cpu_offload("cuda")
            gpu_id, device = None, gpu_id
        device = torch.device(device if device is not None else "cuda")
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        self._offload_device = device
        self.model.to("cpu")

    def disable_model_cpu_offload(self) -> None:
        device = self._offload_device
        self._offload_device = None
        if device is not None:
            self.model.to(device)

    def enable_vae_slicing(self) -> None:
        """Decode a batch one image at a time (diffusers' ``AutoencoderKL.enable_slicing``)."""
        self.model.vae.enable_slicing()

    def disable_vae_slicing(self) -> None:
        self.model.vae.disable_slicing()

    def enable_vae_tiling(self) -> None:
        """Encode / decode large images in overlapping tiles (diffusers' ``AutoencoderKL.enable_tiling``)."""
        self.model.vae.enable_tiling()

    def disable_vae_tiling(self) -> None:
        self.model.vae.disable_tiling()

    @property
    def _execution_device(self) -> torch.device:  # the model is not a diffusers ModelMixin
        if self._offload_device is not None:
            return self._offload_device
        if self._llm_offload != "none":
            return self._home_device
        return self.model.device

    @contextmanager
    def _running(self, *modules):
        """Move ``modules`` to the execution device for the block when model CPU offload is on. Inputs must be
        moved to :attr:`_execution_device` INSIDE the block (never to a module's current device)."""
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
                     prompt_embeds, mask, num_images_per_prompt=1, callback_on_step_end_tensor_inputs=()) -> None:
        if prompt_embeds is None:
            if instructions is None:
                raise ValueError("give a prompt (the edit instruction, e.g. 'make the sky blue') or prompt_embeds")
            check_instructions(instructions, n_images)
        elif prompt_embeds.ndim != 3 or prompt_embeds.shape[0] != n_images:
            raise ValueError(f"prompt_embeds must be [num_images, tokens, dim], got {tuple(prompt_embeds.shape)}")
        for name, value in (("num_inference_steps", num_inference_steps),
                            ("num_images_per_prompt", num_images_per_prompt)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name, value in (("guidance_scale", text_guidance_scale), ("image_guidance_scale", image_guidance_scale)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        unknown = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if unknown:
            raise ValueError(f"callback_on_step_end_tensor_inputs {unknown} are not available; choose from "
                             f"{self._callback_tensor_inputs}")
        check_mask_support(self.model.config, mask)

    def _resolution(self, resolution: int | None) -> int:
        cfg = self.model.config
        res = resolution or cfg.resolution
        factor = cfg.size_multiple
        if isinstance(res, bool) or not isinstance(res, int) or res < factor or res % factor:
            raise ValueError(f"resolution must be a positive multiple of {factor}, got {res!r}")
        return res

    _resize = staticmethod(resize_image)

    @staticmethod
    def _seeds_and_generators(n: int, generator, seed) -> tuple[list[int] | None, object]:
        if generator is not None:
            if seed is not None:
                raise ValueError("give either seed or generator, not both")
            if isinstance(generator, (list, tuple)) and len(generator) != n:
                raise ValueError(f"got {len(generator)} generators for {n} images")
            return None, generator
        if seed is None:
            seed = int.from_bytes(os.urandom(4), "little") & 0x7FFFFFFF
        seeds = list(seed) if isinstance(seed, (list, tuple)) else [int(seed) + i for i in range(n)]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} images")
        return seeds, [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]

    @staticmethod
    def _prompt_and_image(prompt, image):
        """diffusers' order is ``pipe(prompt, image=...)``; the older ``pipe(image, instruction)`` still works: an
        instruction is text and an image is not (for two strings, the one naming an existing file is the image)."""
        if image is None:  # pipe(image, prompt_embeds=...)
            return (None, prompt) if prompt is not None and not _is_text(prompt) else (prompt, image)
        if _is_text(prompt) and not _is_text(image):
            return prompt, image
        if _is_text(image) and (not _is_text(prompt) or (_looks_like_file(prompt) and not _looks_like_file(image))):
            return image, prompt
        return prompt, image

    def _nonfinite_error(self, what: str) -> NonFiniteOutputError:
        bad = sorted({name.split(".")[0] + "." + name.split(".")[1] if name.count(".") else name
                      for name, p in self.model.named_parameters() if not torch.isfinite(p).all()})
        if bad:
            cause = (f"the model's weights hold NaN/inf values (in {', '.join(bad[:6])}"
                     f"{', ...' if len(bad) > 6 else ''}): the weights file is corrupt or training diverged; "
                     f"re-download / re-export the model folder")
        elif self.dtype == torch.float16:
            cause = "float16 overflowed: edit in bfloat16 or float32 (--dtype bfloat16)"
        else:
            cause = "the weights are finite, so the inputs or the sampler settings produced it"
        return NonFiniteOutputError(f"the model produced non-finite {what} (NaN/inf) instead of an image: {cause}")

    # ---- the edit ------------------------------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, image=None, num_inference_steps: int | None = None,
                 guidance_scale: float | None = None, image_guidance_scale: float | None = None,
                 num_images_per_prompt: int = 1, eta: float = 0.0,
                 generator: torch.Generator | list[torch.Generator] | None = None, latents: torch.Tensor | None = None,
                 prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
                 output_type: str = "pil", return_dict: bool = True, callback_on_step_end=None,
                 callback_on_step_end_tensor_inputs: list[str] | tuple[str, ...] = ("latents",), *,
                 mask=None, seed: int | list[int] | None = None, resolution: int | None = None,
                 keep_model_size: bool = False, generate_reply: bool | None = None,
                 instruction: str | list[str] | None = None,
                 text_guidance_scale: float | None = None) -> SmartEditOutput | tuple:
        """Edit ``image`` (one or a list) following ``prompt`` (one per image, or one for all).

        ``num_inference_steps`` / ``guidance_scale`` (text) / ``image_guidance_scale``: None → the model folder's
        :attr:`sampling_defaults`. ``num_images_per_prompt``: samples per image (consecutive in the output).
        ``seed``: an int gives sample i the seed ``seed + i``; a list gives one seed per sample (so a batch equals
        the same edits made one by one; with ``num_images_per_prompt`` > 1, one seed per image gives its sample k
        the seed + k); neither seed nor generator → a random seed, returned in ``output.seeds``.
        ``mask``: region mask(s) (white = edit here) with each image's size, for models with mask channels.
        ``prompt_embeds`` [B, 77, D]: bypass the MLLM/Q-Former/BIM and condition the UNet directly
        (``negative_prompt_embeds`` default: the model's null text embedding).
        ``output_type``: ``pil``, ``np`` (float HWC in [0, 1]), ``pt`` (float CHW in [0, 1]) or ``latent``.
        ``callback_on_step_end(pipe, step, timestep, tensors) -> dict`` after every step, with the tensors named in
        ``callback_on_step_end_tensor_inputs`` (``latents``, ``prompt_embeds``, ``image_latents``); returned
        ``latents`` replace the current ones; ``pipe._interrupt = True`` stops the loop.
        ``generate_reply``: let the MLLM decode its reply before the ``<img_i>`` tokens (None: when the model was
        trained to write one, ``config.mllm.writes_reply``).
        ``instruction`` / ``text_guidance_scale``: older names of ``prompt`` / ``guidance_scale``.
        (Over 60 lines with this argument list and its documentation; the body reads in ~45 lines of steps.)
        """
        prompt, image, guidance_scale = self._older_names(prompt, image, guidance_scale, instruction,
                                                          text_guidance_scale)
        defaults = self.model.config.sampling
        num_inference_steps = defaults.num_inference_steps if num_inference_steps is None else num_inference_steps
        guidance_scale = defaults.guidance_scale if guidance_scale is None else guidance_scale
        image_guidance_scale = defaults.image_guidance_scale if image_guidance_scale is None else image_guidance_scale
        if hasattr(callback_on_step_end, "tensor_inputs"):  # diffusers' PipelineCallback / MultiPipelineCallbacks
            callback_on_step_end_tensor_inputs = callback_on_step_end.tensor_inputs
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"output_type must be 'pil', 'np', 'pt' or 'latent', got {output_type!r}")
        if image is None:
            raise ValueError("no image given: pipe(prompt, image=...)")
        images = list(image) if isinstance(image, (list, tuple)) else [image]
        if not images:
            raise ValueError("no image given")
        instructions = None
        if prompt is not None:
            instructions = [prompt] * len(images) if isinstance(prompt, str) else list(prompt)
        self.check_inputs(len(images), instructions, num_inference_steps, guidance_scale, image_guidance_scale,
                          prompt_embeds, mask, num_images_per_prompt, callback_on_step_end_tensor_inputs)
        self._guidance_scale, self._image_guidance_scale = guidance_scale, image_guidance_scale
        self._interrupt = False
        n = num_images_per_prompt
        tensors, batch, mask_batch = self._prepare_images(images, mask, self._resolution(resolution))
        if isinstance(seed, (list, tuple)) and n > 1 and len(seed) == len(images):  # sample k of image i: seed_i + k
            seed = [int(s) + k for s in seed for k in range(n)]
        seeds, generators = self._seeds_and_generators(len(images) * n, generator, seed)

        cond = self.encode(batch, instructions, mask_batch, generate_reply, prompt_embeds)
        if not torch.isfinite(cond.context).all():
            raise self._nonfinite_error("condition (MLLM → Q-Former → BIM context)")
        if n > 1:  # the condition is deterministic: computed once per image, shared by its samples
            cond = Condition(context=_repeat(cond.context, n), spatial=_repeat(cond.spatial, n),
                             source_latent=_repeat(cond.source_latent, n), mask_latent=_repeat(cond.mask_latent, n),
                             replies=None if cond.replies is None else [r for r in cond.replies for _ in range(n)])
            batch, tensors = _repeat(batch, n), [t for t in tensors for _ in range(n)]
            if negative_prompt_embeds is not None and negative_prompt_embeds.shape[0] == len(images):
                negative_prompt_embeds = _repeat(negative_prompt_embeds, n)
        latents = self.denoise(cond, num_inference_steps, guidance_scale, image_guidance_scale, generators,
                               negative_prompt_embeds, latents=latents, eta=eta,
                               callback_on_step_end=callback_on_step_end,
                               callback_on_step_end_tensor_inputs=callback_on_step_end_tensor_inputs)
        if not torch.isfinite(latents).all():
            raise self._nonfinite_error("latents")
        images_out = latents if output_type == "latent" else self._postprocess(latents, cond, batch, tensors,
                                                                               keep_model_size, output_type)
        if not return_dict:
            return (images_out,)
        replies = None if cond.replies is None else [reply_words(r) for r in cond.replies]
        return SmartEditOutput(images=images_out, seeds=seeds, replies=replies)

    def _older_names(self, prompt, image, guidance_scale, instruction, text_guidance_scale):
        """``instruction=`` / ``text_guidance_scale=`` and the ``pipe(image, instruction)`` order → diffusers' names."""
        if instruction is not None:
            if prompt is not None and image is not None:
                raise ValueError("give prompt or instruction, not both")
            if prompt is not None and image is None:  # pipe(image, instruction=...)
                prompt, image = None, prompt
            prompt = instruction
        if text_guidance_scale is not None:
            if guidance_scale is not None:
                raise ValueError("give guidance_scale or text_guidance_scale, not both")
            guidance_scale = text_guidance_scale
        prompt, image = self._prompt_and_image(prompt, image)
        return prompt, image, guidance_scale

    def _prepare_images(self, images: list, mask, res: int):
        """Inputs → (each image as [3, H, W] in [0, 1] at its own size, the batch [B, 3, R, R] on the execution
        device, the mask batch [B, 1, R, R] or None)."""
        tensors = [prepare_image(im, f"image {i}") for i, im in enumerate(images)]
        device = self._execution_device
        batch = torch.stack([self._resize(t, (res, res)) for t in tensors]).to(device)  # [B, 3, R, R]
        if mask is None:
            return tensors, batch, None
        masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
        if len(masks) != len(images):
            raise ValueError(f"got {len(masks)} masks for {len(images)} images")
        mask_batch = torch.stack([self._resize(load_mask(m, (t.shape[-1], t.shape[-2]), f"mask {i}"), (res, res),
                                               "nearest") for i, (m, t) in enumerate(zip(masks, tensors))])
        return tensors, batch, mask_batch.to(device)  # [B, 1, R, R]

    def _postprocess(self, latents, cond, batch, tensors, keep_model_size, output_type):
        if self.model.config.scheduler.decode == "residual":
            # the change applied in pixel space, to the input itself (at its own size unless keep_model_size)
            delta = self.decode_change(latents, cond.source_latent)  # [B, 3, R, R] in [-1, 1] units of [0, 1]
            sources = [batch[i] for i in range(len(tensors))] if keep_model_size else tensors
            decoded = [apply_pixel_change(src, d) for src, d in zip(sources, delta)]
        else:
            decoded = self.decode(latents, cond.source_latent)  # [B, 3, R, R] in [0, 1]
            if not keep_model_size:
                decoded = [self._resize(d, tuple(t.shape[-2:])) for d, t in zip(decoded, tensors)]
        if any(not torch.isfinite(d).all() for d in decoded):
            raise self._nonfinite_error("pixels from the VAE decoder")
        same = len({tuple(d.shape) for d in decoded}) == 1
        if output_type == "pt":
            outs = [d.float().cpu() for d in decoded]
            return torch.stack(outs) if same else outs
        arrays = [d.permute(1, 2, 0).float().cpu().numpy() for d in decoded]
        if output_type == "np":
            return np.stack(arrays) if same else arrays
        return [Image.fromarray((a * 255).round().astype(np.uint8)) for a in arrays]

    def encode(self, batch: torch.Tensor, instructions: list[str] | None, mask: torch.Tensor | None = None,
               generate_reply: bool | None = None, prompt_embeds: torch.Tensor | None = None) -> Condition:
        """The edit's condition, computed once: MLLM → Q-Former → BIM (or the given ``prompt_embeds``)."""
        model = self.model
        if prompt_embeds is not None:
            source = batch * 2 - 1
            mask_latent = None
            with self._running(model.vae):
                source_latent = model.condition_latent(source)
                if model.config.unet.mask_channels:
                    mask_latent = model.condition_latent(model.mask_to_image(mask, source))
            return Condition(context=prompt_embeds.to(batch.device), spatial=None, source_latent=source_latent,
                             mask_latent=mask_latent)
        if model.mllm is None:
            raise RuntimeError("the MLLM was freed after encoding (enable_llm_offload('free')); reload the model "
                               "or pass prompt_embeds")
        swap = self._llm_offload == "cpu" and self._offload_device is None
        if swap:  # the UNet waits on the CPU while the MLLM encodes, then they change places
            model.unet.to("cpu")
            model.mllm.to(batch.device)
        with self._running(model.mllm, model.qformer, model.bim, model.vae):
            cond = model.encode_condition(batch, instructions, mask=mask, generate=generate_reply)
        if self._llm_offload == "cpu":
            model.mllm.to("cpu")
            if swap:
                model.unet.to(batch.device)
        elif self._llm_offload == "free":
            model.mllm = None
            logger.info("freed the MLLM after encoding")
        return cond

    def denoise(self, cond: Condition, num_inference_steps: int, text_guidance_scale: float,
                image_guidance_scale: float, generator=None, negative_prompt_embeds: torch.Tensor | None = None,
                latents: torch.Tensor | None = None, eta: float = 0.0, callback_on_step_end=None,
                callback_on_step_end_tensor_inputs=("latents",)) -> torch.Tensor:
        """The guided denoising loop from pure noise (or the given initial ``latents``) to the edited latent
        (scaled), [B, 4, h, w]."""
        model = self.model
        device = cond.context.device
        batch, channels, h, w = cond.source_latent.shape
        self.scheduler.set_timesteps(num_inference_steps, device=device)
        timesteps = self.scheduler.timesteps
        self._num_timesteps = len(timesteps)
        if latents is None:  # drawn in the model's dtype (a float32 model: exactly diffusers' draw)
            latents = randn_tensor((batch, channels, h, w), generator=generator, device=device,
                                   dtype=cond.context.dtype)
        elif tuple(latents.shape) != (batch, channels, h, w):
            raise ValueError(f"latents must have shape {(batch, channels, h, w)}, got {tuple(latents.shape)}")
        # the sampler's arithmetic in float32 whatever the model's dtype (as in training); the UNet gets its own
        # (flow matching starts from unit noise: its scheduler has no init_noise_sigma and no scale_model_input)
        latents = latents.to(device, torch.float32) * getattr(self.scheduler, "init_noise_sigma", 1.0)  # [B, 4, h, w]
        scale_input = getattr(self.scheduler, "scale_model_input", lambda x, t: x)
        null = model.null_text_embedding if negative_prompt_embeds is None else negative_prompt_embeds
        contexts, sources = guidance_branches(cond.context, null.to(device, cond.context.dtype), cond.source_latent)
        spatial = None if cond.spatial is None else torch.cat([cond.spatial] * 3, dim=0)
        masks = None if cond.mask_latent is None else torch.cat([cond.mask_latent] * 3, dim=0)
        params = inspect.signature(self.scheduler.step).parameters
        step_kwargs = {}
        if "generator" in params:
            step_kwargs["generator"] = generator
        if "eta" in params:
            step_kwargs["eta"] = eta
        with self._running(model.unet):
            for i, t in enumerate(self.progress_bar(timesteps)):
                if self.interrupt:
                    continue
                x = scale_input(torch.cat([latents] * 3), t).to(contexts.dtype)  # [3B, 4, h, w]
                pred = model.predict(model.unet_input(x, sources, masks), t, contexts, spatial)  # [3B, 4, h, w]
                guided = combine_guidance(pred.to(latents.dtype), text_guidance_scale, image_guidance_scale)
                latents = self.scheduler.step(guided, t, latents, **step_kwargs, return_dict=False)[0]
                if callback_on_step_end is not None:
                    named = {"latents": latents, "prompt_embeds": contexts, "image_latents": sources}
                    out = callback_on_step_end(self, i, t, {k: named[k] for k in callback_on_step_end_tensor_inputs})
                    latents = (out or {}).get("latents", latents)
        return latents

    def decode(self, latents: torch.Tensor, source_latent: torch.Tensor | None = None) -> torch.Tensor:
        """Scaled latents → images [B, 3, H, W] in [0, 1]. For a model that diffuses the latent change
        (``scheduler.diffuse = "change"``) the (unscaled) source latent is added back first."""
        vae = self.model.vae
        if self.model.config.scheduler.diffuse == "change" and source_latent is None:
            raise ValueError("this model diffuses the latent change from the source: decode needs source_latent")
        change = self.model.config.scheduler.diffuse == "change"
        with self._running(vae):  # the VAE first, then its inputs to the execution device
            latents = latents.to(self._execution_device, vae.dtype)  # (float16 overflow guarded by decode_latent)
            return decode_latents(self.model.decode_latent, latents, self.model.config.vae.scaling_factor,
                                  source_latent if change else None, self.model.config.vae.shift_factor)

    def decode_change(self, latents: torch.Tensor, source_latent: torch.Tensor) -> torch.Tensor:
        """Sampled latent changes (``scheduler.diffuse = "change"``) → the pixel change [B, 3, H, W] (in units of
        [0, 1] images) they make: D(source latent + change) − D(source latent), so the VAE's reconstruction error
        cancels where nothing changes (``scheduler.decode = "residual"``)."""
        if self.model.config.scheduler.diffuse != "change":
            raise ValueError("decode_change needs a model that diffuses the latent change (scheduler.diffuse = "
                             f"'change'), this one diffuses {self.model.config.scheduler.diffuse!r}")
        vae = self.model.vae
        with self._running(vae):  # the VAE first, then its inputs to the execution device
            latents = latents.to(self._execution_device, vae.dtype)
            return decode_latent_change(self.model.decode_latent, latents, source_latent,
                                        self.model.config.vae.scaling_factor)

    # ---- multi-turn ----------------------------------------------------------------------------------
    def session(self, image, seed: int = 0, **defaults) -> "EditSession":
        """A multi-turn editing session starting from ``image`` (MagicBrush's iterative setting)."""
        return EditSession(self, image, seed=seed, **defaults)


def _plain_settings(settings: dict) -> dict:
    """The settings of a turn that a JSON file can hold (numbers, words, lists of them); callbacks, generators and
    tensors passed through ``edit`` are left out."""
    def plain(v):
        return v is None or isinstance(v, (bool, int, float, str)) or (
            isinstance(v, (list, tuple)) and all(plain(x) for x in v))
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in settings.items() if plain(v)}


@dataclass
class Turn:
    instruction: str | None
    image: Image.Image
    seed: int | None = None
    settings: dict = field(default_factory=dict)
    reply: str | None = None
    """What the MLLM wrote before its ``<img_i>`` tokens, for a model that writes a reply (else None)."""


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
        out = self.pipe(prompt=instruction, image=self.current, mask=mask, seed=seed, **kwargs)
        self.history.append(Turn(instruction, out.images[0], seed, kwargs, out.replies[0] if out.replies else None))
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
                            "settings": _plain_settings(turn.settings),
                            **({"reply": turn.reply} if turn.reply is not None else {})})
        path = os.path.join(directory, "history.json")
        with open(path, "w", encoding="utf-8") as f:
            json.dump(records, f, indent=2)
        return path
