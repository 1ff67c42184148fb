"""The multimodal LLM (LLaVA-1.1 style): CLIP ViT vision tower + projector + LLaMA.

Built from transformers' ``CLIPVisionModel`` and ``LlamaForCausalLM``; the projector is ``linear``
(LLaVA-1.1, used by the released SmartEdit weights) or ``mlp2x_gelu`` (LLaVA-1.5). The MLLM reads the image and
the editing conversation (see :mod:`smartedit.prompt`) and returns the last-layer hidden states at the 32
``<img_i>`` positions, which the Q-Former turns into the UNet's text context.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from transformers import CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM

from .config import LoRAConfig, MLLMConfig, VisionConfig
from .prompt import IGNORE_INDEX, TokenIds

logger = logging.getLogger(__name__)

# CLIP's image normalisation (OpenAI CLIP, used by LLaVA's vision tower).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def build_projector(kind: str, vision_dim: int, llm_dim: int) -> nn.Module:
    """``linear``: Linear(vision→llm). ``mlp2x_gelu``: Linear, GELU, Linear (keys ``0.*`` and ``2.*``)."""
    if kind == "linear":
        return nn.Linear(vision_dim, llm_dim)
    if kind == "mlp2x_gelu":
        return nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))
    raise ValueError(f"unknown projector {kind!r}; use 'linear' or 'mlp2x_gelu'")


def check_attn_implementation(name: str) -> str:
    """``name`` if this machine can run it (``flash_attention_2`` needs the flash-attn package and CUDA), else a
    ValueError saying what is missing."""
    if name != "flash_attention_2":
        return name
    missing = []
    if importlib.util.find_spec("flash_attn") is None:
        missing.append("the flash-attn package is not installed (pip install -e .[gpu], on a CUDA machine)")
    if not torch.cuda.is_available():
        missing.append("there is no CUDA device")
    if missing:
        raise ValueError(f"attn_implementation 'flash_attention_2' cannot run here: {'; '.join(missing)}. Use "
                         f"'sdpa' (the default; PyTorch picks its own flash kernels on CUDA)")
    return name


def llama_config(cfg: MLLMConfig, attn_implementation: str = "sdpa") -> LlamaConfig:
    """transformers ``LlamaConfig`` for the MLLM, vocabulary already extended by the new tokens."""
    return LlamaConfig(
        vocab_size=cfg.full_vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=cfg.max_position_embeddings,
        rms_norm_eps=cfg.rms_norm_eps, rope_theta=cfg.rope_theta, tie_word_embeddings=False,
        pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id, eos_token_id=cfg.eos_token_id,
        attn_implementation=attn_implementation,
    )


def clip_vision_config(cfg: VisionConfig, attn_implementation: str = "sdpa") -> CLIPVisionConfig:
    return CLIPVisionConfig(
        hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.projection_dim,
        layer_norm_eps=cfg.layer_norm_eps, hidden_act=cfg.hidden_act, attn_implementation=attn_implementation,
    )


@dataclass
class MLLMOutput:
    img_hidden: torch.Tensor | None
    """[B, num_image_tokens, H] last-layer states at the ``<img_i>`` positions (None if a row has none)."""
    lm_loss: torch.Tensor | None
    image_features: torch.Tensor | None
    """[B, P, Dv] vision-tower patch features (before the projector), reused by the BIM."""
    hidden_states: torch.Tensor
    """[B, L, H] last-layer hidden states of the whole sequence."""


class SmartEditMLLM(nn.Module):
    """CLIP ViT + projector + LLaMA with SmartEdit's new tokens."""

    def __init__(self, vision: VisionConfig, mllm: MLLMConfig, lora: LoRAConfig | None = None,
                 attn_implementation: str = "sdpa"):
        super().__init__()
        self.vision_config = vision
        self.config = mllm
        self.token_ids = TokenIds(mllm.vocab_size, mllm.num_image_tokens)
        attn = check_attn_implementation(attn_implementation)
        self.vision_tower = CLIPVisionModel(clip_vision_config(vision, attn))
        self.projector = build_projector(mllm.projector, vision.hidden_size, mllm.hidden_size)
        self.llm = LlamaForCausalLM(llama_config(mllm, attn))
        self._grad_mask_handles: list = []
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.lora_config = None
        if lora is not None and lora.r > 0:
            self.add_lora(lora)

    def set_attn_implementation(self, name: str) -> None:
        """Switch the vision tower's and the LLM's attention (``sdpa``, ``eager``, ``flash_attention_2``)."""
        check_attn_implementation(name)
        self.vision_tower.set_attn_implementation(name)
        self.llm.set_attn_implementation(name)

    # ---- LoRA ------------------------------------------------------------------------------------------
    def add_lora(self, lora: LoRAConfig) -> None:
        """Inject peft LoRA layers (in place, module tree unchanged apart from the adapted linears).

        Adapted layers hold ``base_layer.weight`` plus ``lora_A.default`` / ``lora_B.default``; ``lora_B`` starts
        at zero (peft's init), so adding LoRA does not change the model's output."""
        from peft import LoraConfig, inject_adapter_in_model

        if self.lora_config is not None:
            raise ValueError("the LLM already has LoRA adapters")
        peft_cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                              target_modules=list(lora.target_modules), bias="none")
        inject_adapter_in_model(peft_cfg, self.llm)
        self.lora_config = lora

    def lora_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.llm.named_parameters() if "lora_" in n]

    # ---- new token rows ------------------------------------------------------------------------------
    def _token_matrices(self) -> list[torch.Tensor]:
        return [self.llm.get_input_embeddings().weight, self.llm.get_output_embeddings().weight]

    @torch.no_grad()
    def init_new_token_rows(self) -> None:
        """Initialise the rows of the new tokens (embedding and LM head) to the mean of the base rows."""
        base = self.config.vocab_size
        for weight in self._token_matrices():
            weight[base:] = weight[:base].float().mean(dim=0, keepdim=True).to(weight.dtype)

    def enable_new_token_grad_mask(self) -> None:
        """Zero the gradient of the base-vocabulary rows so that only the new token rows train (idempotent)."""
        if self._grad_mask_handles:
            return
        base = self.config.vocab_size

        def mask(grad: torch.Tensor) -> torch.Tensor:
            grad = grad.clone()
            grad[:base] = 0
            return grad

        self._grad_mask_handles = [w.register_hook(mask) for w in self._token_matrices()]

    def disable_new_token_grad_mask(self) -> None:
        for h in self._grad_mask_handles:
            h.remove()
        self._grad_mask_handles = []

    # ---- vision ----------------------------------------------------------------------------------------
    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] → CLIP pixel values at the tower's resolution (bicubic resize, CLIP normalisation)."""
        size = self.vision_config.image_size
        if images.shape[-2:] != (size, size):
            images = F.interpolate(images.float(), size=(size, size), mode="bicubic", align_corners=False,
                                   antialias=True).clamp(0, 1)
        return (images.to(self.clip_mean.dtype) - self.clip_mean) / self.clip_std

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """CLIP pixel values [B,3,S,S] → patch features of the selected layer, CLS dropped: [B, P, Dv]."""
        dtype = self.vision_tower.get_input_embeddings().weight.dtype
        out = self.vision_tower(pixel_values.to(dtype), output_hidden_states=True)
        return out.hidden_states[self.vision_config.select_layer][:, 1:]  # [B, P, Dv]

    # ---- language ----------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the projected patch features written over the ``<img>`` placeholders."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # [B, L, H]
        is_image = input_ids == self.token_ids.image  # [B, L]
        n_placeholders = is_image.sum(dim=1)
        if image_features is None:
            if n_placeholders.any():
                raise ValueError("the prompt holds <img> placeholders but no image was given")
            return embeds
        num_patches = image_features.shape[1]
        if not torch.all((n_placeholders == num_patches) | (n_placeholders == 0)):
            raise ValueError(f"each prompt must hold exactly {num_patches} <img> placeholders (one per vision "
                             f"patch) or none (text-only rows), got {n_placeholders.tolist()}")
        has_image = n_placeholders > 0  # [B]
        projected = self.projector(image_features[has_image].to(self.projector_dtype)).to(embeds.dtype)  # [b, P, H]
        return embeds.masked_scatter(is_image.unsqueeze(-1), projected)

    @property
    def projector_dtype(self) -> torch.dtype:
        return next(self.projector.parameters()).dtype

    def gather_image_token_states(self, input_ids: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor | None:
        """Hidden states at the ``<img_0..N-1>`` positions, [B, N, H]; None if some row lacks them."""
        n = self.config.num_image_tokens
        is_img = self.token_ids.is_output_image_token(input_ids)  # [B, L]
        counts = is_img.sum(dim=1)
        if not torch.all(counts == n):
            return None
        return rearrange(hidden[is_img], "(b n) h -> b n h", n=n)  # [B, N, H]

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> MLLMOutput:
        """Teacher-forced forward: one pass over the whole conversation.

        ``pixel_values`` are CLIP-normalised [B,3,S,S] (or pass precomputed ``image_features`` [B,P,Dv]).
        ``labels`` (``IGNORE_INDEX`` on prompt tokens) gives the LM cross-entropy ``lm_loss``.
        """
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        inputs_embeds = self.embed(input_ids, image_features)  # [B, L, H]
        out = self.llm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, use_cache=False)
        hidden = out.last_hidden_state  # [B, L, H]
        lm_loss = None
        if labels is not None:
            logits = self.llm.lm_head(hidden[:, :-1]).float()  # [B, L-1, V]
            target = labels[:, 1:]
            # the mean over supervised tokens, 0 when there are none (no host sync to find out)
            total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                    ignore_index=IGNORE_INDEX, reduction="sum")
            lm_loss = total / (target != IGNORE_INDEX).sum().clamp(min=1)
        return MLLMOutput(img_hidden=self.gather_image_token_states(input_ids, hidden), lm_loss=lm_loss,
                          image_features=image_features, hidden_states=hidden)

    @torch.no_grad()
    def generate_reply(self, prompt_ids: torch.Tensor, image_features: torch.Tensor | None,
                       max_new_tokens: int = 64) -> torch.Tensor:
        """Greedy decoding of the assistant's reply for ONE prompt ([1, L] ids, no padding).

        Decoding stops at ``<img_0>``, ``</s>`` or ``max_new_tokens``; the reply is then completed with all
        ``<img_i>`` tokens (forced, as SmartEdit needs exactly those 32 states). Returns the reply ids [1, R].
        """
        if prompt_ids.shape[0] != 1:
            raise ValueError("generate_reply decodes one prompt at a time")
        embeds = self.embed(prompt_ids, image_features)
        out = self.llm.generate(inputs_embeds=embeds, attention_mask=torch.ones_like(prompt_ids),
                                max_new_tokens=max_new_tokens, do_sample=False,
                                eos_token_id=[self.config.eos_token_id, self.token_ids.img0],
                                pad_token_id=self.config.pad_token_id)
        reply = out[0].tolist()
        text_part = [t for t in reply if t not in (self.config.eos_token_id, self.config.pad_token_id)
                     and not (self.token_ids.img0 <= t < self.token_ids.full_vocab_size)]
        forced = list(range(self.token_ids.img0, self.token_ids.full_vocab_size))
        return torch.tensor([text_part + forced], dtype=torch.long, device=prompt_ids.device)
