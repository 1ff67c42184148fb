"""Typed configuration of the SmartEdit model.

One dataclass per component (vision tower, MLLM, Q-Former, BIM, UNet, VAE, noise scheduler) and one for the
whole model. Every config validates itself; :func:`SmartEditConfig.from_dict` rejects unknown keys and reports
*all* problems (unknown keys and invalid values, at every nesting level) in one :class:`ConfigError`.

Presets: ``tiny`` (CPU, tests, the shipped default), ``7b`` and ``13b`` (the paper's models:
LLaVA-1.1 + CLIP ViT-L/14 + SD-1.5), see :func:`preset`.

The config is saved as ``config.json`` next to the weights by ``SmartEditModel.save_pretrained``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

__all__ = [
    "ConfigError",
    "ConfigSection",
    "RootConfig",
    "check_numbers",
    "is_number",
    "is_int",
    "VisionConfig",
    "MLLMConfig",
    "LoRAConfig",
    "QFormerConfig",
    "BIMConfig",
    "UNetConfig",
    "VAEConfig",
    "SchedulerConfig",
    "SamplingConfig",
    "BackboneConfig",
    "SmartEditConfig",
    "preset",
    "PRESETS",
    "RANDOM_PREFIX",
    "random_preset",
    "CONFIG_NAME",
]

CONFIG_NAME = "config.json"


class ConfigError(ValueError):
    """A configuration is invalid; the message lists every problem found."""

    def __init__(self, problems: list[str], where: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"invalid {where} ({len(self.problems)} problem(s)):\n{lines}")


def _positive(obj: Any, names: list[str], problems: list[str], prefix: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            problems.append(f"{prefix}{name} must be a positive integer, got {value!r}")


def is_number(value: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_int(value: Any, minimum: int) -> bool:
    """An int (not a bool) >= ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def check_numbers(obj: Any, prefix: str, *, positive_int: tuple[str, ...] = (), nonneg_int: tuple[str, ...] = (),
                   positive: tuple[str, ...] = (), nonneg: tuple[str, ...] = ()) -> list[str]:
    """Problems with numeric fields of ``obj``: positive / non-negative integers, positive / non-negative numbers."""
    p: list[str] = []
    _positive(obj, list(positive_int), p, prefix)
    for name in nonneg_int:
        value = getattr(obj, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            p.append(f"{prefix}{name} must be an integer >= 0, got {value!r}")
    for names, ok, what in ((positive, lambda v: v > 0, "> 0"), (nonneg, lambda v: v >= 0, ">= 0")):
        for name in names:
            value = getattr(obj, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not ok(value):
                p.append(f"{prefix}{name} must be a number {what}, got {value!r}")
    return p


class ConfigSection:
    """Mixin for config sections: dict round trip and validation."""

    def problems(self, prefix: str = "") -> list[str]:  # pragma: no cover - overridden
        return []

    def to_dict(self) -> dict[str, Any]:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ConfigSection):
                value = value.to_dict()
            elif isinstance(value, tuple):
                value = list(value)
            out[f.name] = value
        return out

    @classmethod
    def _from_dict(cls, data: Any, prefix: str, problems: list[str]):
        if not isinstance(data, dict):
            problems.append(f"{prefix or 'config'} must be a JSON object, got {type(data).__name__}")
            return cls()
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs = {}
        for key, value in data.items():
            if key not in fields:
                problems.append(f"unknown key '{prefix}{key}' (known there: {', '.join(sorted(fields))})")
                continue
            default = fields[key].default_factory() if fields[key].default_factory is not dataclasses.MISSING else fields[key].default
            if isinstance(default, ConfigSection):
                value = type(default)._from_dict(value, f"{prefix}{key}.", problems)
            elif isinstance(default, tuple) and isinstance(value, list):
                value = tuple(value)
            kwargs[key] = value
        return cls(**kwargs)


class RootConfig(ConfigSection):
    """A top-level config saved as its own JSON file: validation, dict/JSON round trip and dotted overrides.

    Subclasses set ``FILE_NAME`` (the JSON name inside a folder), ``WHAT`` (for error messages) and ``LOAD_HINT``
    (what to give when the file is missing)."""

    FILE_NAME: ClassVar[str] = "config.json"
    WHAT: ClassVar[str] = "config"
    LOAD_HINT: ClassVar[str] = ""

    def validate(self):
        problems = self.problems()
        if problems:
            raise ConfigError(problems, self.WHAT)
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]):
        """Build and validate; unknown keys and invalid values are reported together in one ConfigError."""
        problems: list[str] = []
        cfg = cls._from_dict(data, "", problems)
        try:
            problems += cfg.problems()
        except TypeError as exc:  # a value of the wrong type broke a comparison
            problems.append(f"a value has the wrong type: {exc}")
        if problems:
            raise ConfigError(problems, cls.WHAT)
        return cfg

    def save(self, path: str | os.PathLike) -> str:
        """Write the JSON to ``path`` (a folder: ``path/FILE_NAME``); returns the file written."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, self.FILE_NAME)
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)
            f.write("\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike):
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, cls.FILE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"no {cls.WHAT} at {path!r}: {cls.LOAD_HINT}")
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as exc:
                raise ConfigError([f"{path} is not valid JSON: {exc}"]) from None
        return cls.from_dict(data)

    def replace(self, **overrides: Any):
        """A validated copy with dotted-key overrides, e.g. ``replace(**{"bim.enabled": False})``."""
        data = self.to_dict()
        for key, value in overrides.items():
            node = data
            *parents, leaf = key.split(".")
            for part in parents:
                child = node.get(part)
                if not isinstance(child, dict):
                    child = node[part] = {}
                node = child
            node[leaf] = value
        return type(self).from_dict(data)


@dataclass
class VisionConfig(ConfigSection):
    """CLIP ViT vision tower (LLaVA's image encoder). Its penultimate layer's patch tokens are used."""

    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    image_size: int = 224
    patch_size: int = 14
    projection_dim: int = 768
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"
    select_layer: int = -2
    """Which hidden state feeds the MLLM (-2: penultimate layer, as LLaVA). CLS token is dropped."""

    @property
    def grid_size(self) -> int:
        """Patches per side (16 for ViT-L/14 at 224 px)."""
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def problems(self, prefix: str = "vision.") -> list[str]:
        p: list[str] = []
        _positive(self, ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                         "image_size", "patch_size", "projection_dim"], p, prefix)
        if not p:
            if self.hidden_size % self.num_attention_heads:
                p.append(f"{prefix}hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                         f"({self.num_attention_heads})")
            if self.image_size % self.patch_size:
                p.append(f"{prefix}image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})")
            if not (-self.num_hidden_layers - 1 <= self.select_layer <= self.num_hidden_layers):
                p.append(f"{prefix}select_layer ({self.select_layer}) out of range for {self.num_hidden_layers} layers")
        return p


@dataclass
class MLLMConfig(ConfigSection):
    """The language model (LLaMA / Vicuna) and the vision→LLM projector of LLaVA."""

    vocab_size: int = 32000
    """Size of the *base* vocabulary, before SmartEdit's 35 new tokens are added (32000 for LLaMA)."""
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int = 32
    max_position_embeddings: int = 2048
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    projector: str = "linear"
    """``linear`` (LLaVA-1.1, what the released SmartEdit weights use) or ``mlp2x_gelu`` (LLaVA-1.5)."""
    num_image_tokens: int = 32
    """How many ``<img_i>`` tokens the assistant emits; their hidden states feed the Q-Former."""
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    writes_reply: bool = False
    """The assistant was trained to write its own words before the ``<img_i>`` tokens (e.g. the instruction worked
    out: "remove the red circle" for "remove the circle on the left"), which those tokens' states read: conditioning
    then decodes the reply greedily by default (``encode_condition(generate=None)``). False, as the paper: a stock
    answer is teacher-forced."""

    PROJECTORS: ClassVar[tuple[str, ...]] = ("linear", "mlp2x_gelu")

    @property
    def num_new_tokens(self) -> int:
        """``<img>``, ``<im_start>``, ``<im_end>`` and the ``<img_i>`` tokens (35 for the paper)."""
        return 3 + self.num_image_tokens

    @property
    def full_vocab_size(self) -> int:
        return self.vocab_size + self.num_new_tokens

    def problems(self, prefix: str = "mllm.") -> list[str]:
        p: list[str] = []
        _positive(self, ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                         "num_attention_heads", "num_key_value_heads", "max_position_embeddings",
                         "num_image_tokens"], p, prefix)
        if self.projector not in self.PROJECTORS:
            p.append(f"{prefix}projector must be one of {list(self.PROJECTORS)}, got {self.projector!r}")
        if not isinstance(self.writes_reply, bool):
            p.append(f"{prefix}writes_reply must be true or false, got {self.writes_reply!r}")
        if not p:
            if self.hidden_size % self.num_attention_heads:
                p.append(f"{prefix}hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                         f"({self.num_attention_heads})")
            if self.num_attention_heads % self.num_key_value_heads:
                p.append(f"{prefix}num_attention_heads must be a multiple of num_key_value_heads")
            for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
                if not 0 <= getattr(self, name) < self.vocab_size:
                    p.append(f"{prefix}{name} must lie in [0, vocab_size)")
        return p


@dataclass
class LoRAConfig(ConfigSection):
    """LoRA on the LLM (peft), trained in stage 2. ``r = 0`` means no adapter in the model."""

    r: int = 0
    alpha: int = 16
    dropout: float = 0.05
    target_modules: tuple[str, ...] = ("q_proj", "v_proj")

    STAGE2_R: ClassVar[int] = 8
    """The paper's rank, used when stage 2 adds LoRA to a model that has none."""

    def problems(self, prefix: str = "lora.") -> list[str]:
        p: list[str] = []
        if not isinstance(self.r, int) or self.r < 0:
            p.append(f"{prefix}r must be an integer >= 0 (0 = no LoRA), got {self.r!r}")
        if not (isinstance(self.alpha, (int, float)) and self.alpha > 0):
            p.append(f"{prefix}alpha must be > 0")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            p.append(f"{prefix}dropout must lie in [0, 1)")
        if not self.target_modules:
            p.append(f"{prefix}target_modules must name at least one LLaMA linear layer (e.g. q_proj)")
        return p


@dataclass
class QFormerConfig(ConfigSection):
    """BLIP-2 style Q-Former turning the LLM's ``<img_i>`` states into CLIP-text-like embeddings."""

    hidden_size: int = 768
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    cross_attention_frequency: int = 2
    """Cross-attention to the LLM states in every n-th layer (layers 0, 2, 4 for the paper)."""
    num_queries: int = 77
    """Learned queries = output length = CLIP text length (77)."""
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    query_init_std: float = 0.02

    def problems(self, prefix: str = "qformer.") -> list[str]:
        p: list[str] = []
        _positive(self, ["hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                         "cross_attention_frequency", "num_queries"], p, prefix)
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            if not 0.0 <= getattr(self, name) < 1.0:
                p.append(f"{prefix}{name} must lie in [0, 1)")
        if not p and self.hidden_size % self.num_attention_heads:
            p.append(f"{prefix}hidden_size ({self.hidden_size}) must be divisible by num_attention_heads "
                     f"({self.num_attention_heads})")
        return p


@dataclass
class BIMConfig(ConfigSection):
    """Bidirectional Interaction Module: SAM-style two-way transformer between text tokens and image patches."""

    enabled: bool = True
    """False builds the MLLM-SD model of stage 2a (no BIM)."""
    hidden_size: int = 1024
    depth: int = 2
    mlp_dim: int = 2048
    num_heads: int = 8
    attention_downsample_rate: int = 2
    layer_norm_eps: float = 1e-5
    hidden_act: str = "relu"
    pe_scale: float = 1.0
    """Std of the random-Fourier positional encoding matrix (a fixed buffer, saved with the weights)."""
    text_scale: float = 0.5
    """f' = f + text_scale * Δf."""

    def problems(self, prefix: str = "bim.") -> list[str]:
        p: list[str] = []
        _positive(self, ["hidden_size", "depth", "mlp_dim", "num_heads", "attention_downsample_rate"], p, prefix)
        if not isinstance(self.enabled, bool):
            p.append(f"{prefix}enabled must be true or false")
        if not p:
            if self.hidden_size % 2:
                p.append(f"{prefix}hidden_size must be even (Fourier features are sin/cos pairs)")
            if (self.hidden_size // self.attention_downsample_rate) % self.num_heads:
                p.append(f"{prefix}hidden_size / attention_downsample_rate must be divisible by num_heads")
        return p


@dataclass
class UNetConfig(ConfigSection):
    """diffusers ``UNet2DConditionModel`` (SD-1.5 layout) with InstructPix2Pix's widened ``conv_in``."""

    sample_size: int = 32
    latent_channels: int = 4
    mask_channels: int = 0
    """0, or 4 for UltraEdit-style region-mask channels (a blank mask means free-form editing)."""
    block_out_channels: tuple[int, ...] = (320, 640, 1280, 1280)
    down_block_types: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                         "DownBlock2D")
    up_block_types: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                                       "CrossAttnUpBlock2D")
    layers_per_block: int = 2
    cross_attention_dim: int = 768
    attention_head_dim: int = 8
    norm_num_groups: int = 32
    patch_size: int = 1
    """Latent cells per token side of a transformer generator (SD3: 2); 1 for a UNet."""

    @property
    def in_channels(self) -> int:
        """Channels of ``conv_in``: noisy latent ‖ source latent (‖ mask latent)."""
        return 2 * self.latent_channels + self.mask_channels

    def problems(self, prefix: str = "unet.") -> list[str]:
        p: list[str] = []
        _positive(self, ["sample_size", "latent_channels", "layers_per_block", "cross_attention_dim",
                         "attention_head_dim", "norm_num_groups", "patch_size"], p, prefix)
        if self.mask_channels not in (0, self.latent_channels):
            p.append(f"{prefix}mask_channels must be 0 or latent_channels ({self.latent_channels}), "
                     f"got {self.mask_channels!r}")
        n = len(self.block_out_channels)
        if n == 0 or len(self.down_block_types) != n or len(self.up_block_types) != n:
            p.append(f"{prefix}block_out_channels, down_block_types and up_block_types must have the same "
                     f"non-zero length")
        elif isinstance(self.norm_num_groups, int) and self.norm_num_groups > 0:
            for c in self.block_out_channels:
                if not isinstance(c, int) or c <= 0 or c % self.norm_num_groups:
                    p.append(f"{prefix}block_out_channels entry {c!r} must be a positive multiple of "
                             f"norm_num_groups ({self.norm_num_groups})")
        return p


@dataclass
class VAEConfig(ConfigSection):
    """diffusers ``AutoencoderKL`` (frozen)."""

    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    latent_channels: int = 4
    norm_num_groups: int = 32
    scaling_factor: float = 0.18215
    shift_factor: float = 0.0
    """Subtracted from a latent before scaling (SD3: 0.0609): z = (latent − shift_factor) · scaling_factor."""
    use_quant_conv: bool = True
    use_post_quant_conv: bool = True
    """diffusers' 1×1 convolutions around the latent (SD3's VAE has neither)."""

    @property
    def downsample_factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def problems(self, prefix: str = "vae.") -> list[str]:
        p: list[str] = []
        _positive(self, ["layers_per_block", "latent_channels", "norm_num_groups"], p, prefix)
        if not self.block_out_channels:
            p.append(f"{prefix}block_out_channels must not be empty")
        elif isinstance(self.norm_num_groups, int) and self.norm_num_groups > 0:
            for c in self.block_out_channels:
                if not isinstance(c, int) or c <= 0 or c % self.norm_num_groups:
                    p.append(f"{prefix}block_out_channels entry {c!r} must be a positive multiple of "
                             f"norm_num_groups ({self.norm_num_groups})")
        if not (isinstance(self.scaling_factor, (int, float)) and self.scaling_factor > 0):
            p.append(f"{prefix}scaling_factor must be > 0")
        if not is_number(self.shift_factor):
            p.append(f"{prefix}shift_factor must be a number, got {self.shift_factor!r}")
        for name in ("use_quant_conv", "use_post_quant_conv"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{prefix}{name} must be true or false")
        return p


@dataclass
class SchedulerConfig(ConfigSection):
    """Training noise schedule: diffusers' ``DDPMScheduler``, or flow matching (``prediction_type = "flow"``,
    ``FlowMatchEulerDiscreteScheduler``: x_t = (1 − σ) x_0 + σ ε, the model predicts ε − x_0; SD3)."""

    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    prediction_type: str = "epsilon"
    shift: float = 1.0
    """Flow matching's timestep shift σ → shift·σ / (1 + (shift − 1)·σ) (SD3: 3.0); unused by DDPM schedules."""
    sampler: str = "EulerAncestralDiscreteScheduler"
    """diffusers scheduler class the pipeline samples with by default (the reference uses EulerAncestral; the
    ShapesWorld models use deterministic DDIM)."""
    diffuse: str = "target"
    """What the diffusion process generates: ``target`` — the edited image's latent (InstructPix2Pix, the
    reference); ``change`` — the latent change from the source, (target − source latent) · scaling factor, added back
    to the source latent before decoding: where nothing is edited the model only has to predict zero (the ShapesWorld
    models use it)."""
    decode: str = "latent"
    """How a sampled latent becomes the output image: ``latent`` — the VAE decodes it (SD / InstructPix2Pix);
    ``residual`` (needs ``diffuse = "change"``) — the change is applied in pixel space: output = source image +
    D(source latent + change) − D(source latent), so the VAE's reconstruction error cancels wherever the change is
    zero and the unedited pixels are the input's own (at the input's full size). With the tiny ShapesWorld VAE
    (28.6 dB reconstructions) plain decoding of the exact ground-truth target already "changes" shape edges all over
    the image: edit-region IoU 0.60 at best; residual decoding raises that ceiling to 0.84 (``bench/vae_ceiling.py``)."""

    SCHEDULES: ClassVar[tuple[str, ...]] = ("linear", "scaled_linear", "squaredcos_cap_v2")
    PREDICTIONS: ClassVar[tuple[str, ...]] = ("epsilon", "v_prediction", "sample", "flow")
    DIFFUSE: ClassVar[tuple[str, ...]] = ("target", "change")
    DECODES: ClassVar[tuple[str, ...]] = ("latent", "residual")
    SAMPLERS: ClassVar[tuple[str, ...]] = ("EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler",
                                           "DDIMScheduler", "DDPMScheduler", "DPMSolverMultistepScheduler",
                                           "UniPCMultistepScheduler", "PNDMScheduler", "LMSDiscreteScheduler",
                                           "FlowMatchEulerDiscreteScheduler")

    def problems(self, prefix: str = "scheduler.") -> list[str]:
        p: list[str] = []
        _positive(self, ["num_train_timesteps"], p, prefix)
        if self.beta_schedule not in self.SCHEDULES:
            p.append(f"{prefix}beta_schedule must be one of {list(self.SCHEDULES)}, got {self.beta_schedule!r}")
        if self.prediction_type not in self.PREDICTIONS:
            p.append(f"{prefix}prediction_type must be one of {list(self.PREDICTIONS)}, got {self.prediction_type!r}")
        if self.diffuse not in self.DIFFUSE:
            p.append(f"{prefix}diffuse must be one of {list(self.DIFFUSE)}, got {self.diffuse!r}")
        if self.decode not in self.DECODES:
            p.append(f"{prefix}decode must be one of {list(self.DECODES)}, got {self.decode!r}")
        elif self.decode == "residual" and self.diffuse != "change":
            p.append(f"{prefix}decode 'residual' applies a latent CHANGE in pixel space: it needs diffuse 'change' "
                     f"(got {self.diffuse!r}); use decode 'latent'")
        if self.sampler not in self.SAMPLERS:
            p.append(f"{prefix}sampler must be one of {list(self.SAMPLERS)}, got {self.sampler!r}")
        if not (0 < self.beta_start < self.beta_end < 1):
            p.append(f"{prefix}need 0 < beta_start < beta_end < 1")
        if (self.prediction_type == "flow") != (self.sampler == "FlowMatchEulerDiscreteScheduler"):
            p.append(f"{prefix}prediction_type 'flow' and sampler 'FlowMatchEulerDiscreteScheduler' go together "
                     f"(got {self.prediction_type!r} with {self.sampler!r})")
        if self.prediction_type == "flow" and self.diffuse != "target":
            p.append(f"{prefix}flow matching diffuses the target latent: diffuse must be 'target'")
        if not (is_number(self.shift) and self.shift > 0):
            p.append(f"{prefix}shift must be > 0, got {self.shift!r}")
        return p


@dataclass
class SamplingConfig(ConfigSection):
    """Sampling settings a model folder was tuned for; the pipeline, CLI, demo and evaluation use them whenever the
    caller gives none (the scheduler class is :attr:`SchedulerConfig.sampler`)."""

    num_inference_steps: int = 100
    guidance_scale: float = 7.5
    """Text guidance s_T (diffusers' ``guidance_scale``)."""
    image_guidance_scale: float = 1.5
    """Image guidance s_I."""

    def problems(self, prefix: str = "sampling.") -> list[str]:
        return check_numbers(self, prefix, positive_int=("num_inference_steps",),
                              nonneg=("guidance_scale", "image_guidance_scale"))


@dataclass
class BackboneConfig(ConfigSection):
    """Which MLLM family and which diffusers generator the model is built from (:mod:`smartedit.backbones`).

    ``llava`` + ``sd15`` is the paper's model, built from the ``vision`` / ``mllm`` / ``unet`` sections alone. Other
    families carry the config of the published model itself (``mllm_config``: a transformers ``config.to_dict()``;
    ``generator_config``: a diffusers UNet config), and ``vision`` / ``mllm`` / ``unet`` then describe what the rest
    of SmartEdit reads off them (feature width and grid for the BIM, LLM width for the Q-Former, context width)."""

    mllm: str = "llava"
    generator: str = "sd15"
    mllm_config: dict = field(default_factory=dict)
    generator_config: dict = field(default_factory=dict)

    MLLMS: ClassVar[tuple[str, ...]] = ("llava", "qwen2_5_vl")
    GENERATORS: ClassVar[tuple[str, ...]] = ("sd15", "sdxl", "sd3")

    def problems(self, prefix: str = "backbone.") -> list[str]:
        p: list[str] = []
        if self.mllm not in self.MLLMS:
            p.append(f"{prefix}mllm must be one of {list(self.MLLMS)}, got {self.mllm!r}")
        if self.generator not in self.GENERATORS:
            p.append(f"{prefix}generator must be one of {list(self.GENERATORS)}, got {self.generator!r}")
        for name in ("mllm_config", "generator_config"):
            if not isinstance(getattr(self, name), dict):
                p.append(f"{prefix}{name} must be a JSON object")
        if not p and (self.mllm == "llava") != (not self.mllm_config):
            p.append(f"{prefix}mllm_config must be empty for 'llava' (built from vision/mllm) and hold the "
                     f"transformers config for {self.mllm!r}")
        if not p and (self.generator == "sd15") != (not self.generator_config):
            p.append(f"{prefix}generator_config must be empty for 'sd15' (built from unet) and hold the diffusers "
                     f"UNet / transformer config for {self.generator!r}")
        return p


@dataclass
class SmartEditConfig(RootConfig):
    """The whole SmartEdit model: MLLM → Q-Former → BIM → InstructPix2Pix UNet."""

    FILE_NAME: ClassVar[str] = CONFIG_NAME
    WHAT: ClassVar[str] = "SmartEdit config"
    LOAD_HINT: ClassVar[str] = (f"a model folder holds {CONFIG_NAME} (written by SmartEditModel.save_pretrained) "
                                f"next to its weights")

    preset: str = "custom"
    resolution: int = 256
    """Diffusion image size (the paper trains and edits at 256 px)."""
    vision: VisionConfig = field(default_factory=VisionConfig)
    mllm: MLLMConfig = field(default_factory=MLLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    qformer: QFormerConfig = field(default_factory=QFormerConfig)
    bim: BIMConfig = field(default_factory=BIMConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    cfg_dropout_prob: float = 0.05
    """Per sample u~U(0,1): u<p drops text and image; p≤u<2p drops text; 2p≤u<3p drops image."""
    lm_loss_weight: float = 1.0
    diffusion_loss_weight: float = 1.0
    attn_implementation: str = "sdpa"
    """Attention of the LLM, the vision tower and the BIM (transformers' ``attn_implementation``): ``sdpa`` (PyTorch's
    fused attention, which picks its own flash / memory-efficient kernels on CUDA), ``eager``, or
    ``flash_attention_2`` (the flash-attn package: CUDA and half precision, ``pip install -e .[gpu]``). The Q-Former
    (transformers has no FlashAttention-2 path for it) and the UNet (diffusers' SDPA processor) use ``sdpa`` with
    ``flash_attention_2``."""

    ATTN_IMPLEMENTATIONS: ClassVar[tuple[str, ...]] = ("sdpa", "eager", "flash_attention_2")

    @property
    def latent_size(self) -> int:
        return self.resolution // self.vae.downsample_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's factor × the generator's own downsampling (a UNet's
        2^(levels − 1), a transformer's patch size)."""
        return self.vae.downsample_factor * 2 ** (len(self.unet.block_out_channels) - 1) * self.unet.patch_size

    @property
    def scaled_source_latent(self) -> bool:
        """Whether the source latent the generator reads is scaled like the diffused one, (z − shift) · scale (the
        SD3 pipelines), rather than the VAE's raw mode (InstructPix2Pix on SD-1.5 / SDXL)."""
        return self.backbone.generator == "sd3"

    def problems(self, prefix: str = "") -> list[str]:
        p: list[str] = []
        for name in ("vision", "mllm", "lora", "qformer", "bim", "unet", "vae", "scheduler", "sampling", "backbone"):
            p += getattr(self, name).problems(f"{prefix}{name}.")
        _positive(self, ["resolution"], p, prefix)
        if not 0.0 <= self.cfg_dropout_prob <= 1.0 / 3.0:
            p.append(f"{prefix}cfg_dropout_prob must lie in [0, 1/3], got {self.cfg_dropout_prob!r}")
        for name in ("lm_loss_weight", "diffusion_loss_weight"):
            if not (isinstance(getattr(self, name), (int, float)) and getattr(self, name) >= 0):
                p.append(f"{prefix}{name} must be >= 0")
        if self.attn_implementation not in self.ATTN_IMPLEMENTATIONS:
            p.append(f"{prefix}attn_implementation must be one of {list(self.ATTN_IMPLEMENTATIONS)}, got "
                     f"{self.attn_implementation!r}")
        if p:
            return p
        # cross-component consistency
        if self.qformer.hidden_size != self.unet.cross_attention_dim:
            p.append(f"qformer.hidden_size ({self.qformer.hidden_size}) must equal unet.cross_attention_dim "
                     f"({self.unet.cross_attention_dim}): the Q-Former output is the UNet's text context")
        if self.bim.enabled and self.bim.hidden_size != self.vision.hidden_size:
            p.append(f"bim.hidden_size ({self.bim.hidden_size}) must equal vision.hidden_size "
                     f"({self.vision.hidden_size}): BIM attends over the vision tower's patch features directly")
        if self.vae.latent_channels != self.unet.latent_channels:
            p.append(f"vae.latent_channels ({self.vae.latent_channels}) must equal unet.latent_channels "
                     f"({self.unet.latent_channels})")
        if self.resolution % self.size_multiple:
            p.append(f"resolution ({self.resolution}) must be divisible by the VAE factor "
                     f"({self.vae.downsample_factor}) times the generator's downsampling "
                     f"({self.size_multiple // self.vae.downsample_factor})")
        if (self.backbone.generator == "sd3") != (self.scheduler.prediction_type == "flow"):
            p.append(f"the sd3 generator is trained and sampled with flow matching: scheduler.prediction_type must "
                     f"be 'flow' exactly when backbone.generator is 'sd3' (got {self.scheduler.prediction_type!r} "
                     f"with {self.backbone.generator!r})")
        return p


# ---- presets ---------------------------------------------------------------------------------------------

def _tiny() -> SmartEditConfig:
    return SmartEditConfig(
        preset="tiny",
        resolution=64,
        vision=VisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                            image_size=32, patch_size=8, projection_dim=32),
        mllm=MLLMConfig(vocab_size=1024, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512),
        qformer=QFormerConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
                              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
        bim=BIMConfig(hidden_size=64, depth=2, mlp_dim=128, num_heads=4, attention_downsample_rate=2),
        unet=UNetConfig(sample_size=16, block_out_channels=(32, 64),
                        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), layers_per_block=1,
                        cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8),
        vae=VAEConfig(block_out_channels=(16, 32, 32), layers_per_block=1, norm_num_groups=8),
    )


def _llava_sd15(preset_name: str, hidden: int, intermediate: int, layers: int, heads: int) -> SmartEditConfig:
    return SmartEditConfig(
        preset=preset_name,
        resolution=256,
        vision=VisionConfig(),  # CLIP ViT-L/14 at 224 px
        mllm=MLLMConfig(hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
                        num_attention_heads=heads, num_key_value_heads=heads),
        qformer=QFormerConfig(),
        bim=BIMConfig(),
        unet=UNetConfig(),  # SD-1.5
        vae=VAEConfig(),
        scheduler=SchedulerConfig(),
    )


PRESETS = {
    "tiny": _tiny,
    "7b": lambda: _llava_sd15("7b", 4096, 11008, 32, 32),
    "13b": lambda: _llava_sd15("13b", 5120, 13824, 40, 40),
}


def _backbone_preset(name: str):
    def build() -> SmartEditConfig:
        from .backbones.presets import backbone_preset

        return backbone_preset(name)
    return build


PRESETS |= {name: _backbone_preset(name) for name in (
    "llava1.5-7b+sd15", "llava1.5-7b+sdxl", "llava1.5-7b+sd3", "qwen2.5vl-7b+sd15", "qwen2.5vl-7b+sdxl",
    "qwen2.5vl-7b+sd3", "tiny-sdxl", "tiny-sd3")
}


def preset(name: str, **overrides: Any) -> SmartEditConfig:
    """A validated preset config (``tiny``, ``7b`` or ``13b``), with optional dotted-key overrides."""
    if name not in PRESETS:
        raise ConfigError([f"unknown preset {name!r}; choose one of {sorted(PRESETS)}"])
    cfg = PRESETS[name]().validate()
    return cfg.replace(**overrides) if overrides else cfg


RANDOM_PREFIX = "random:"
"""A model spec ``random:PRESET`` names a randomly initialised model of a preset instead of a model folder."""


def random_preset(spec: str) -> str | None:
    """The preset a ``random:PRESET`` model spec names; None when ``spec`` is not one (e.g. a model folder)."""
    return spec[len(RANDOM_PREFIX):] if spec.startswith(RANDOM_PREFIX) else None
