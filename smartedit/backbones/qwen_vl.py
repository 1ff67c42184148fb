"""Qwen2.5-VL as SmartEdit's MLLM (``backbone.mllm = "qwen2_5_vl"``).

transformers' own modules, in the published weight layout: the vision transformer with its 2×2 patch merger
(``Qwen2_5_VisionTransformerPretrainedModel``) and the text decoder with multimodal RoPE (``Qwen2_5_VLTextModel``)
plus its LM head. SmartEdit's 35 new tokens follow the tokenizer's vocabulary (mean-initialised rows, gradient mask:
the :class:`~smartedit.mllm.SmartEditMLLM` machinery), the conversation is the model's own chat template
(:class:`~smartedit.backbones.chat.ChatTemplateFormat`) and the image is the model's ``<|image_pad|>`` placeholder,
repeated once per merged visual token.

Images are edited at one fixed square size (``vision.image_size``, a multiple of patch × merge size), patchified as
the Qwen2-VL image processor does. The vision tower's last hidden states (before the merger, back in row-major
order) are the patch features the BIM reads ([B, (S/14)², 1280] for 7B); the merger is the projector into the LLM.

    image ─ patchify ─ vision blocks ─► patches [B, P, Dv] ─┬─ merger (2×2 → 1) ─► <|image_pad|> × P/4 ─ LLM
                                                            └─► BIM
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from transformers import Qwen2_5_VLConfig
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import (Qwen2_5_VisionTransformerPretrainedModel,
                                                                Qwen2_5_VLModel, Qwen2_5_VLPreTrainedModel,
                                                                Qwen2_5_VLTextModel)
from transformers.vision_utils import get_vision_window_index

from ..config import LoRAConfig, MLLMConfig, VisionConfig
from ..mllm import CLIP_MEAN, CLIP_STD, MLLMOutput, SmartEditMLLM, check_attn_implementation
from ..prompt import IGNORE_INDEX, TokenIds

__all__ = ["QwenVLMLLM", "QwenTextLM", "PlaceholderTokenIds", "qwen_vl_config", "patchify", "unpatchify_order"]


class PlaceholderTokenIds(TokenIds):
    """SmartEdit's token ids with the model's own image placeholder (``<|image_pad|>``) in place of ``<img>``."""

    def __init__(self, base_vocab_size: int, num_image_tokens: int, placeholder: int):
        super().__init__(base_vocab_size, num_image_tokens)
        object.__setattr__(self, "placeholder", placeholder)

    @property
    def image(self) -> int:
        return self.placeholder


def qwen_vl_config(mllm_config: dict, mllm: MLLMConfig, attn_implementation: str = "sdpa") -> Qwen2_5_VLConfig:
    """The transformers config of the model, its text vocabulary set to base + SmartEdit's new tokens."""
    cfg = Qwen2_5_VLConfig.from_dict(dict(mllm_config))
    cfg.text_config.vocab_size = mllm.full_vocab_size
    cfg.tie_word_embeddings = False  # (tied checkpoints are untied on loading: the new rows differ per matrix)
    cfg.text_config.tie_word_embeddings = False
    for sub in (cfg, cfg.text_config, cfg.vision_config):
        sub._attn_implementation = attn_implementation
    return cfg


def patchify(pixels: torch.Tensor, patch: int, merge: int, temporal: int) -> torch.Tensor:
    """[B, C, H, W] normalised pixels → [B, (H/p)·(W/p), C·T·p·p] patches in the Qwen2-VL image processor's order
    (2×2 merge units row by row, each unit row by row; the still image repeated ``temporal`` times)."""
    b, c, h, w = pixels.shape
    x = pixels.unsqueeze(1).expand(b, temporal, c, h, w)  # [B, T, C, H, W]
    # (gy, gx): merge unit; (my, mx): patch within the unit; (py, px): pixel within the patch
    return rearrange(x, "b t c (gy my py) (gx mx px) -> b (gy gx my mx) (c t py px)",
                     my=merge, mx=merge, py=patch, px=patch)  # [B, (H/p)·(W/p), C·T·p·p]


def unpatchify_order(tokens: torch.Tensor, grid: int, merge: int, to_row_major: bool = True) -> torch.Tensor:
    """[B, g², D] tokens between merge-unit order (the processor's) and row-major grid order."""
    units, rows = "b (gy gx my mx) d", "b (gy my gx mx) d"  # (gy, gx): merge unit; (my, mx): token within it
    pattern = f"{units} -> {rows}" if to_row_major else f"{rows} -> {units}"
    return rearrange(tokens, pattern, gx=grid // merge, my=merge, mx=merge)  # [B, g², D]


class QwenTextLM(Qwen2_5_VLPreTrainedModel):
    """The text decoder and LM head of Qwen2.5-VL, laid out like ``LlamaForCausalLM`` (``model.layers``,
    ``lm_head``), which is what SmartEdit's stages, LoRA, quantization and memory report walk."""

    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = Qwen2_5_VLTextModel._from_config(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def get_decoder(self) -> nn.Module:
        return self.model


class QwenVLMLLM(SmartEditMLLM):
    """Qwen2.5-VL vision tower (+ merger) and text model with SmartEdit's new tokens; the interface of
    :class:`~smartedit.mllm.SmartEditMLLM` (its token-row, LoRA and gradient-mask methods are reused as they are)."""

    def __init__(self, mllm_config: dict, vision: VisionConfig, mllm: MLLMConfig, lora: LoRAConfig | None = None,
                 attn_implementation: str = "sdpa"):
        nn.Module.__init__(self)  # (the LLaVA modules of SmartEditMLLM.__init__ are not built)
        self.vision_config = vision
        self.config = mllm
        attn = check_attn_implementation(attn_implementation)
        self.hf_config = qwen_vl_config(mllm_config, mllm, attn)
        v = self.hf_config.vision_config
        self.patch_size, self.merge_size, self.temporal_patch_size = v.patch_size, v.spatial_merge_size, \
            v.temporal_patch_size
        self.token_ids = PlaceholderTokenIds(mllm.vocab_size, mllm.num_image_tokens, self.hf_config.image_token_id)
        self.vision_tower = Qwen2_5_VisionTransformerPretrainedModel._from_config(v)
        self.llm = QwenTextLM(self.hf_config.text_config)
        self._grad_mask_handles: list = []
        self.register_buffer("clip_mean", torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)  # (Qwen2-VL's processor normalises with OpenAI CLIP's mean / std)
        self.register_buffer("clip_std", torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.lora_config = None
        if lora is not None and lora.r > 0:
            self.add_lora(lora)

    @property
    def projector(self) -> nn.Module:
        """The patch merger (2×2 patches → one LLM token), part of the vision tower's weights."""
        return self.vision_tower.merger

    @property
    def num_placeholders(self) -> int:
        """``<|image_pad|>`` tokens per image (merged visual tokens)."""
        return self.vision_config.num_patches // self.merge_size**2

    def parameter_counts(self) -> dict[str, int]:
        """LLM, vision tower (without the merger) and projector (the merger)."""
        def count(module) -> int:
            return sum(p.numel() for p in module.parameters())
        merger = count(self.projector)
        return {"llm": count(self.llm), "vision": count(self.vision_tower) - merger, "projector": merger}

    def set_attn_implementation(self, name: str) -> None:
        check_attn_implementation(name)
        self.vision_tower.set_attn_implementation(name)
        self.llm.set_attn_implementation(name)

    # ---- vision ----------------------------------------------------------------------------------------
    def preprocess_images(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [0,1] → patches [B, P, 3·T·p·p] at the fixed edit size (bicubic resize, CLIP
        normalisation, the image processor's patch order)."""
        pixels = super().preprocess_images(images)  # [B, 3, S, S]
        return patchify(pixels, self.patch_size, self.merge_size, self.temporal_patch_size)

    def _grid_thw(self, batch: int, device) -> torch.Tensor:
        g = self.vision_config.grid_size
        return torch.tensor([[1, g, g]] * batch, dtype=torch.long, device=device)

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Patches [B, P, 3·T·p·p] → the vision blocks' last hidden states in row-major grid order [B, P, Dv]
        (the merger runs in :meth:`embed`)."""
        b, n, _ = pixel_values.shape
        tower = self.vision_tower
        dtype = tower.patch_embed.proj.weight.dtype
        grid = self._grid_thw(b, pixel_values.device)
        hidden = tower(pixel_values.reshape(b * n, -1).to(dtype), grid_thw=grid).last_hidden_state  # [B·P, Dv]
        window, _ = get_vision_window_index(grid, spatial_merge_size=tower.spatial_merge_size,
                                            window_size=tower.window_size, patch_size=tower.patch_size, kwargs={})
        unit = self.merge_size**2
        hidden = rearrange(hidden, "(u k) d -> u k d", k=unit)[torch.argsort(window)]  # [B·P/4, 4, Dv] processor order
        hidden = rearrange(hidden, "(b u) k d -> b (u k) d", b=b)  # [B, P, Dv] merge-unit order
        return unpatchify_order(hidden, self.vision_config.grid_size, self.merge_size)  # [B, P, Dv] row-major

    # ---- language ----------------------------------------------------------------------------------------
    def embed(self, input_ids: torch.Tensor, image_features: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with the merged visual tokens written over the ``<|image_pad|>`` placeholders."""
        embeds = self.llm.get_input_embeddings()(input_ids)  # [B, L, H]
        is_image = input_ids == self.token_ids.image  # [B, L]
        n_placeholders = is_image.sum(dim=1)
        if image_features is None:
            if n_placeholders.any():
                raise ValueError("the prompt holds image placeholders but no image was given")
            return embeds
        n = self.num_placeholders
        if not torch.all((n_placeholders == n) | (n_placeholders == 0)):
            raise ValueError(f"each prompt must hold exactly {n} image placeholders (one per merged visual token) "
                             f"or none (text-only rows), got {n_placeholders.tolist()}")
        has_image = n_placeholders > 0  # [B]
        units = unpatchify_order(image_features[has_image], self.vision_config.grid_size, self.merge_size,
                                 to_row_major=False)  # [b, P, Dv] merge-unit order
        merged = self.projector(units.reshape(-1, units.shape[-1]).to(self.projector_dtype))  # [b·P/4, H]
        return embeds.masked_scatter(is_image.unsqueeze(-1), merged.to(embeds.dtype))

    def position_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        """Multimodal RoPE positions [3, B, L], computed by transformers' ``Qwen2_5_VLModel.get_rope_index``."""
        is_image = input_ids == self.token_ids.image
        rows = int(is_image.any(dim=1).sum())
        shim = SimpleNamespace(config=self.hf_config,
                               get_vision_position_ids=lambda *a, **k: Qwen2_5_VLModel.get_vision_position_ids(
                                   None, *a, **k))
        positions, _ = Qwen2_5_VLModel.get_rope_index(
            shim, input_ids, is_image.int(), image_grid_thw=self._grid_thw(rows, input_ids.device) if rows else None,
            attention_mask=attention_mask)
        return positions

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                pixel_values: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                image_features: torch.Tensor | None = None) -> MLLMOutput:
        if image_features is None and pixel_values is not None:
            image_features = self.encode_images(pixel_values)
        inputs_embeds = self.embed(input_ids, image_features)  # [B, L, H]
        out = self.llm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                             position_ids=self.position_ids(input_ids, attention_mask), use_cache=False)
        hidden = out.last_hidden_state  # [B, L, H]
        lm_loss = None
        if labels is not None:
            logits = self.llm.lm_head(hidden[:, :-1]).float()  # [B, L-1, V]
            target = labels[:, 1:]
            total = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1),
                                    ignore_index=IGNORE_INDEX, reduction="sum")
            lm_loss = total / (target != IGNORE_INDEX).sum().clamp(min=1)
        return MLLMOutput(img_hidden=self.gather_image_token_states(input_ids, hidden), lm_loss=lm_loss,
                          image_features=image_features, hidden_states=hidden)

    @torch.no_grad()
    def generate_reply(self, prompt_ids: torch.Tensor, image_features: torch.Tensor | None,
                       max_new_tokens: int = 64) -> torch.Tensor:
        """Greedy decoding of ONE prompt (full forward per token: the multimodal positions are recomputed from the
        ids each time); stops at the end-of-turn token, ``<img_0>`` or ``max_new_tokens``, then appends all
        ``<img_i>`` tokens. Returns the reply ids [1, R]."""
        if prompt_ids.shape[0] != 1:
            raise ValueError("generate_reply decodes one prompt at a time")
        ids = prompt_ids
        stop = {self.config.eos_token_id, self.token_ids.img0}
        text: list[int] = []
        for _ in range(max_new_tokens):
            hidden = self(ids, image_features=image_features).hidden_states[:, -1:]  # [1, 1, H]
            token = int(self.llm.lm_head(hidden).argmax(-1))
            if token in stop:
                break
            if not (self.token_ids.img0 <= token < self.token_ids.full_vocab_size):
                text.append(token)
            ids = torch.cat([ids, ids.new_tensor([[token]])], dim=1)
        forced = list(range(self.token_ids.img0, self.token_ids.full_vocab_size))
        return torch.tensor([text + forced], dtype=torch.long, device=prompt_ids.device)
