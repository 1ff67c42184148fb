"""SmartEditModel: LLaVA → Q-Former → BIM → InstructPix2Pix UNet, one module.

    image ─ CLIP ViT (penultimate layer, patches) ─┬─ projector ─ LLaMA ◄─ conversation with the instruction
                                                   │                │ states at the 32 <img_i> tokens
                                                   │             Q-Former (77 queries) ─► f [B,77,768]
                                                   └──────────► BIM ─► f' = f + 0.5·Δf (UNet context)
                                                                   └─► spatial [B,320,h,w] added after conv_in
    source ─ VAE ─► latent ┐
    noisy target latent ───┴─► UNet (conv_in 8 [+4 mask] channels) ─► ε

``encode_condition`` computes everything that is fixed for one edit (context, spatial feature, source and mask
latents) once; ``forward(batch)`` computes the training losses (LM cross-entropy + diffusion MSE with CFG dropout).
"""

from __future__ import annotations

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .bim import BidirectionalInteraction
from .cfg import apply_dropout, sample_dropout
from .config import CONFIG_NAME, SmartEditConfig
from .prompt import IGNORE_INDEX, add_smartedit_tokens, edit_conversation, pad_batch, tokenize_conversation
from .qformer import SmartEditQFormer
from .backbones import build_generator, build_mllm, chat_format
from .unet import ConvInResidual, build_noise_scheduler, build_vae
from .weights.files import read_safetensors, safetensors_shapes, weight_files as find_weight_files

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
TOKENIZER_DIR = "tokenizer"
MODEL_LAYOUT = (f"a SmartEdit model folder holds {CONFIG_NAME}, the weights and {TOKENIZER_DIR}/ (written by "
                "SmartEditModel.save_pretrained)")
TINY_TOKENIZER = os.path.join(os.path.dirname(__file__), "assets", "tiny_tokenizer")
TINY_VOCAB_SIZE = 1024
"""Base vocabulary of the shipped tiny tokenizer (``data_recipes/build_tiny_tokenizer.py``), the tiny preset's."""
FLOAT32_BUFFERS = ("null_text_embedding", "mllm.clip_mean", "mllm.clip_std", "rotary_emb.inv_freq",
                   "rotary_emb.original_inv_freq", "pos_encoding.positional_embedding")
"""Buffers (name suffixes) that stay float32 when the model is cast to half precision: the null text embedding,
CLIP's normalisation, LLaMA's RoPE frequencies and the BIM's Fourier matrix."""


def check_instructions(instructions: list[str], n_images: int | None = None) -> None:
    """Every instruction a non-empty string, one per image (when ``n_images`` is given)."""
    if n_images is not None and len(instructions) != n_images:
        raise ValueError(f"got {n_images} images but {len(instructions)} instructions (prompts)")
    for text in instructions:
        if not isinstance(text, str) or not text.strip():
            raise ValueError("instruction (prompt) must be a non-empty string, e.g. 'remove the smaller cup'")


def check_mask_support(config: SmartEditConfig, mask) -> None:
    """A region mask needs a model with mask channels."""
    if mask is not None and config.unet.mask_channels == 0:
        raise ValueError("this model has no region-mask channels (unet.mask_channels = 0); edit without a mask "
                         "or use a model trained with mask channels")


@dataclass
class Condition:
    """Everything fixed for one edit, computed once and reused at every denoising step."""

    context: torch.Tensor
    """[B, Q, D] UNet cross-attention context f' (f if the model has no BIM)."""
    spatial: torch.Tensor | None
    """[B, C0, h, w] BIM feature added after ``conv_in`` (None without BIM)."""
    source_latent: torch.Tensor
    """[B, 4, h, w] VAE latent (mode, unscaled) of the source image."""
    mask_latent: torch.Tensor | None = None
    """[B, 4, h, w] VAE latent of the region mask (models with mask channels only)."""
    replies: list[str] | None = None
    """The assistant's decoded replies when the condition was computed with ``generate=True``."""


class SmartEditModel(nn.Module):
    """The complete SmartEdit model. Build with ``SmartEditModel(config, tokenizer)`` or ``from_pretrained``."""

    def __init__(self, config: SmartEditConfig, tokenizer=None):
        super().__init__()
        self.config = config.validate()
        attn = config.attn_implementation
        self.mllm = build_mllm(config, attn)  # (SmartEditMLLM for the paper's LLaVA; smartedit.backbones)
        self.qformer = SmartEditQFormer(config.qformer, config.mllm.hidden_size, attn_implementation=attn)
        self.bim = (BidirectionalInteraction(config.bim, config.qformer.hidden_size, config.vision.grid_size,
                                             config.unet.block_out_channels[0], attn_implementation=attn)
                    if config.bim.enabled else None)
        self.unet = build_generator(config)
        self.vae = build_vae(config.vae)
        self.noise_scheduler = build_noise_scheduler(config.scheduler)
        self.register_buffer("null_text_embedding",
                             torch.zeros(1, config.qformer.num_queries, config.qformer.hidden_size,
                                         dtype=torch.float32))
        self.conv_in_residual = ConvInResidual(self.unet)
        self.vae_upcast = "auto"
        """float16 VAE overflow guard: ``auto``, ``always`` or ``never`` (see :meth:`decode_latent`)."""
        self.tokenizer = tokenizer
        if tokenizer is not None:
            add_smartedit_tokens(tokenizer, config.mllm.num_image_tokens, config.mllm.vocab_size)

    # ---- construction --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: SmartEditConfig, tokenizer=None, seed: int | None = 0,
                    dtype: torch.dtype | None = None, device: str | torch.device | None = None) -> "SmartEditModel":
        """A randomly initialised model (new token rows mean-initialised). The ``tiny`` preset gets the shipped
        tiny tokenizer when none is given. ``dtype`` / ``device``: the weights are created there in that dtype
        (no float32 copy first: a 7B model in bfloat16 takes 16 GB, not 32 GB and then 16 GB more); the
        :data:`FLOAT32_BUFFERS` stay float32."""
        if tokenizer is None:
            tokenizer = load_tokenizer(TINY_TOKENIZER) if config.mllm.vocab_size == TINY_VOCAB_SIZE else None
        if seed is not None:
            torch.manual_seed(seed)
        previous = torch.get_default_dtype()
        try:
            with torch.device(device or "cpu"):
                torch.set_default_dtype(dtype or previous)
                model = cls(config, tokenizer)
        finally:
            torch.set_default_dtype(previous)
        model.mllm.init_new_token_rows()
        return model

    @property
    def device(self) -> torch.device:
        """Where the UNet's weights are (the denoising device)."""
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        """The UNet's weight dtype (buffers kept in float32 for precision do not count)."""
        return self.unet.dtype

    def _apply(self, fn, recurse: bool = True):
        """``to`` / ``half`` / ``bfloat16`` / ``cuda`` … keep the float32 buffers (:data:`FLOAT32_BUFFERS`) in float32:
        they were float32 in training and lose what they encode in half precision (LLaMA's RoPE ``inv_freq`` in
        bfloat16 puts the phase of positions 300–350 off by about 0.4 rad at the 7B head size). Device moves apply."""
        keep = {name: buf for name, buf in self.named_buffers()
                if buf.dtype == torch.float32 and name.endswith(FLOAT32_BUFFERS)}
        super()._apply(fn, recurse)
        for name, old in keep.items():
            owner, _, attr = name.rpartition(".")
            module = self.get_submodule(owner)
            new = module._buffers.get(attr)
            if new is not None and new.dtype in (torch.float16, torch.bfloat16):
                module._buffers[attr] = old.to(new.device)
        return self

    def set_attn_implementation(self, name: str) -> None:
        """Switch the attention kernels (see ``SmartEditConfig.attn_implementation``) and record the choice in the
        config (saved with the model)."""
        config = self.config.replace(attn_implementation=name)  # (an unknown name is a ConfigError)
        self.mllm.set_attn_implementation(name)  # (flash_attention_2 where it cannot run: a ValueError)
        self.qformer.set_attn_implementation(name)
        if self.bim is not None:
            self.bim.set_attn_implementation(name)
        self.config = config

    def add_lora(self, r: int | None = None) -> None:
        """Add LoRA adapters to the LLM (stage 2) and record them in the config so they are saved and reloaded."""
        self.config = self.config.replace(**{"lora.r": r or self.config.lora.STAGE2_R})
        self.mllm.add_lora(self.config.lora)

    # ---- conditioning --------------------------------------------------------------------------------
    def chat_format(self):
        """How this model's MLLM family writes conversations (:func:`smartedit.backbones.chat_format`)."""
        return chat_format(self.config, self.tokenizer)

    def tokenize_edit(self, instructions: list[str], num_patches: int | None = None) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError("this model has no tokenizer; pass one to SmartEditModel(config, tokenizer)")
        num_patches = self.config.vision.num_patches if num_patches is None else num_patches
        check_instructions(instructions)
        items = []
        for text in instructions:
            segments = (self.chat_format().edit(text) if self.config.backbone.mllm != "llava" else
                        [edit_conversation(text, num_patches, self.config.mllm.num_image_tokens)])
            items.append(tokenize_conversation(self.tokenizer, segments,
                                               max_length=self.config.mllm.max_position_embeddings))
        return pad_batch(items, self.config.mllm.pad_token_id)

    def context_from_states(self, img_hidden: torch.Tensor, image_features: torch.Tensor | None,
                            latent_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """LLM ``<img_i>`` states [B,N,H] (+ patches [B,P,Dv]) → (context [B,Q,D], spatial [B,C0,h,w] | None)."""
        context = self.qformer(img_hidden)  # [B, Q, D]
        if self.bim is None:
            return context, None
        if image_features is None:
            raise ValueError("the BIM needs the image's patch features")
        return self.bim(context, image_features, latent_size)  # [B, Q, D], [B, C0, h, w]

    def encode_latent(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] → VAE latent mode, unscaled (InstructPix2Pix convention for the source). A float16
        VAE that overflows is run again in float32 (see :meth:`decode_latent`)."""
        vae = self.vae
        latent = vae.encode(images.to(vae.dtype)).latent_dist.mode()  # [B, 4, h, w]
        if vae.dtype == torch.float16 and self.vae_upcast != "never" and (
                self.vae_upcast == "always" or not torch.isfinite(latent).all()):
            with self._vae_float32():
                latent = vae.encode(images.float()).latent_dist.mode().to(torch.float16)  # [B, 4, h, w]
        return latent

    def condition_latent(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,H,W] in [-1,1] → the source (or mask) latent the generator reads: the VAE's mode, unscaled
        (InstructPix2Pix), or scaled like the diffused latent, (mode − shift) · scale, where
        ``config.scaled_source_latent`` (SD3)."""
        latent = self.encode_latent(images)  # [B, C, h, w]
        if not self.config.scaled_source_latent:
            return latent
        vae = self.config.vae
        return (latent - vae.shift_factor) * vae.scaling_factor  # [B, C, h, w]

    def feature_grid(self, height: int, width: int) -> tuple[int, int]:
        """The generator's input grid for an image of ``height`` × ``width`` pixels: the latent size, divided by a
        transformer's patch size (where the BIM's spatial feature is added)."""
        grid = self.config.vae.downsample_factor * self.config.unet.patch_size
        return height // grid, width // grid

    def decode_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """Unscaled VAE latents [B,4,h,w] → images [B,3,H,W] in about [-1, 1], float32.

        The Stable Diffusion VAE overflows in float16 on some inputs (inf/NaN pixels: black or speckled images).
        With a float16 VAE, ``vae_upcast`` decides: ``auto`` (default) decodes in float16 and, when the output is not
        finite, decodes again with the VAE in float32; ``always`` decodes in float32; ``never`` keeps float16.
        Other dtypes decode as they are."""
        vae = self.vae
        if vae.dtype == torch.float16 and self.vae_upcast == "always":
            with self._vae_float32():
                return vae.decode(latents.float()).sample.float()  # [B, 3, H, W]
        image = vae.decode(latents.to(vae.dtype)).sample  # [B, 3, H, W]
        if vae.dtype == torch.float16 and self.vae_upcast == "auto" and not torch.isfinite(image).all():
            logger.info("the float16 VAE overflowed: decoding again in float32")
            with self._vae_float32():
                image = vae.decode(latents.float()).sample
        return image.float()

    @contextmanager
    def _vae_float32(self):
        """The VAE in float32 for the block (back to its dtype after)."""
        dtype = self.vae.dtype
        nn.Module.to(self.vae, torch.float32)  # (diffusers' ModelMixin.to warns about casts it did not make)
        try:
            yield
        finally:
            nn.Module.to(self.vae, dtype)

    def mask_to_image(self, mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
        """Region mask [B,1|3,H,W] in [0,1] (1 = edit here) → 3-channel image in [-1,1]; None → blank (white)."""
        if mask is None:
            return torch.ones_like(like)
        if mask.ndim == 3:
            mask = mask.unsqueeze(1)
        if mask.shape[-2:] != like.shape[-2:] or mask.shape[0] != like.shape[0]:
            raise ValueError(f"mask size {tuple(mask.shape)} does not match the image {tuple(like.shape)}; "
                             f"give one mask per image with the image's height and width")
        mask = mask.float()
        if mask.shape[1] == 1:
            mask = mask.expand(-1, 3, -1, -1)
        return (mask * 2 - 1).to(like.dtype)

    def encode_condition(self, image: torch.Tensor, instruction: str | list[str], mask: torch.Tensor | None = None,
                         generate: bool | None = None, max_new_tokens: int = 64) -> Condition:
        """Condition for editing ``image`` [B,3,H,W] in [0,1] with ``instruction`` (one per image).

        ``generate=True`` lets the LLM decode its reply greedily (returned in ``Condition.replies``) instead of
        teacher-forcing the stock answer; the 32 ``<img_i>`` tokens are always appended. None (the default): generate
        when the model was trained to write its reply (``config.mllm.writes_reply``).
        """
        instructions = [instruction] if isinstance(instruction, str) else list(instruction)
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be a [B,3,H,W] tensor in [0,1], got shape {tuple(image.shape)}")
        check_instructions(instructions, image.shape[0])
        check_mask_support(self.config, mask)
        device = image.device  # the caller places the image where the MLLM runs
        factor = self.config.vae.downsample_factor
        if image.shape[-1] % factor or image.shape[-2] % factor:
            raise ValueError(f"image height and width must be multiples of {factor}, got {tuple(image.shape[-2:])}")
        latent_size = self.feature_grid(image.shape[-2], image.shape[-1])
        features = self.mllm.encode_images(self.mllm.preprocess_images(image))  # [B, P, Dv]
        states, replies = self.condition_states(instructions, features, generate, max_new_tokens)  # [B, N, H]
        context, spatial = self.context_from_states(states, features, latent_size)
        source = image * 2 - 1
        mask_latent = None
        if self.config.unet.mask_channels:
            mask_latent = self.condition_latent(self.mask_to_image(mask.to(device) if mask is not None else None,
                                                                   source))
        return Condition(context=context, spatial=spatial, source_latent=self.condition_latent(source),
                         mask_latent=mask_latent, replies=replies)

    def condition_states(self, instructions: list[str], features: torch.Tensor, generate: bool | None = None,
                         max_new_tokens: int = 64) -> tuple[torch.Tensor, list[str] | None]:
        """The LLM's ``<img_i>`` states [B,N,H] for edit prompts with the image patches ``features`` [B,P,Dv], and
        the decoded replies when ``generate`` (None: ``config.mllm.writes_reply``), else None."""
        if generate is None:
            generate = self.config.mllm.writes_reply
        device = features.device
        if not generate:
            batch = self.tokenize_edit(instructions)
            out = self.mllm(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                            image_features=features)
            return out.img_hidden, None
        states, replies = [], []
        num_patches = features.shape[1]
        for b, text in enumerate(instructions):
            prompt = (self.chat_format().edit(text)[0][0] if self.config.backbone.mllm != "llava" else
                      edit_conversation(text, num_patches, self.config.mllm.num_image_tokens)[0])
            prompt_ids = self.tokenizer(prompt, return_tensors="pt")["input_ids"].to(device)
            reply_ids = self.mllm.generate_reply(prompt_ids, features[b:b + 1], max_new_tokens=max_new_tokens)
            ids = torch.cat([prompt_ids, reply_ids], dim=1)
            out = self.mllm(ids, image_features=features[b:b + 1])
            states.append(out.img_hidden)  # [1, N, H]
            replies.append(self.tokenizer.decode(reply_ids[0], skip_special_tokens=False))
        return torch.cat(states, dim=0), replies

    # ---- UNet ------------------------------------------------------------------------------------------
    def unet_input(self, noisy_latent: torch.Tensor, source_latent: torch.Tensor,
                   mask_latent: torch.Tensor | None) -> torch.Tensor:
        parts = [noisy_latent, source_latent]
        if self.config.unet.mask_channels:
            if mask_latent is None:
                raise ValueError("this model has region-mask channels: a mask latent is required")
            parts.append(mask_latent)
        return torch.cat(parts, dim=1)  # [B, 8|12, h, w]

    def predict(self, unet_input: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                spatial: torch.Tensor | None) -> torch.Tensor:
        """One UNet evaluation with the BIM feature added after ``conv_in``."""
        dtype = self.unet.dtype
        with self.conv_in_residual.active(spatial):
            return self.unet(unet_input.to(dtype), timesteps, encoder_hidden_states=context.to(dtype)).sample

    # ---- training ----------------------------------------------------------------------------------------
    def forward(self, batch: dict[str, torch.Tensor], generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        """Training losses for a batch.

        Keys: ``input_ids``, ``attention_mask``, ``labels`` [B,L] (conversation with the ``<img_i>`` answer);
        ``source_images`` and ``target_images`` [B,3,H,W] in [-1,1]; optional ``pixel_values`` (CLIP-normalised,
        else derived from the source), ``is_edit`` [B] (0 = chat sample: no diffusion loss), ``masks`` [B,1,H,W].
        Returns ``{"lm_loss", "diffusion_loss", "loss"}`` (loss = weighted sum, weights from the config).
        """
        cfg = self.config
        input_ids = batch["input_ids"]
        source = batch.get("source_images")
        pixel_values = batch.get("pixel_values")
        if pixel_values is None and source is not None:
            pixel_values = self.mllm.preprocess_images((source + 1) / 2)
        out = self.mllm(input_ids, batch.get("attention_mask"), pixel_values=pixel_values,
                        labels=batch.get("labels"))
        lm_loss = out.lm_loss if out.lm_loss is not None else out.hidden_states.sum() * 0.0

        target = batch.get("target_images")
        if target is None:
            diffusion_loss = lm_loss * 0.0
        else:
            # Which rows are edits is read on the host (the trainer keeps ``is_edit`` there: no device sync). A
            # micro-batch without an edit row runs the diffusion path on its first row with weight 0, so that every
            # process runs the same modules on the same parameters each step (ZeRO reduces the same gradient
            # buckets and gathers the same parameters on every process); its diffusion loss is exactly 0.
            is_edit = batch.get("is_edit")
            idx = (torch.arange(input_ids.shape[0]) if is_edit is None
                   else is_edit.detach().cpu().bool().nonzero().squeeze(1))
            if len(idx):
                diffusion_loss = self._diffusion_loss(out, input_ids, idx, source, target, batch.get("masks"),
                                                      generator)
            else:
                diffusion_loss = self._diffusion_loss(out, input_ids, torch.zeros(1, dtype=torch.long), source,
                                                      target, batch.get("masks"), generator, dummy=True) * 0.0
        loss = cfg.lm_loss_weight * lm_loss + cfg.diffusion_loss_weight * diffusion_loss
        return {"lm_loss": lm_loss, "diffusion_loss": diffusion_loss, "loss": loss}

    def _diffusion_loss(self, out, input_ids, idx, source, target, masks, generator, dummy: bool = False
                        ) -> torch.Tensor:
        """Diffusion MSE of the rows ``idx`` (a host index tensor). ``dummy``: ``idx`` is a chat row, which has no
        ``<img_i>`` answer; its first hidden states stand in for them (the caller zeroes the loss)."""
        idx = idx.to(input_ids.device, non_blocking=True)
        n = self.config.mllm.num_image_tokens
        if dummy:
            hidden = out.hidden_states[idx]  # [1, L, H]
            states = hidden[:, :n] if hidden.shape[1] >= n else hidden[:, :1].expand(-1, n, -1)  # [1, N, H]
        else:
            states = self.mllm.gather_image_token_states(input_ids[idx], out.hidden_states[idx])
        if states is None:
            raise ValueError(f"every editing sample must hold exactly {n} <img_i> tokens in its answer")
        source, target = source[idx], target[idx]
        features = out.image_features[idx] if out.image_features is not None else None
        latent_size = self.feature_grid(target.shape[-2], target.shape[-1])
        context, spatial = self.context_from_states(states, features, latent_size)  # [b,Q,D], [b,C0,h,w]

        with torch.no_grad():
            source_latent = self.condition_latent(source)  # [b, 4, h, w]
            vae = self.config.vae
            if self.config.scheduler.diffuse == "change":
                latents = (self.encode_latent(target) - source_latent) * vae.scaling_factor
            else:
                latents = self.vae.encode(target.to(self.vae.dtype)).latent_dist.sample(generator)
                if vae.shift_factor:
                    latents = latents - vae.shift_factor
                latents = latents * vae.scaling_factor  # [b, 4, h, w]
            mask_latent = None
            if self.config.unet.mask_channels:
                m = masks[idx] if masks is not None else None
                mask_latent = self.condition_latent(self.mask_to_image(m, source))
        b = latents.shape[0]
        device = latents.device
        noise = torch.randn(latents.shape, generator=generator, device=device, dtype=torch.float32)
        timesteps = torch.randint(0, self.noise_scheduler.config.num_train_timesteps, (b,), generator=generator,
                                  device=device).long()
        noisy = self.add_noise(latents, noise, timesteps)  # [b, 4, h, w] float32

        drops = sample_dropout(b, self.config.cfg_dropout_prob, device=device, generator=generator)
        context, source_latent = apply_dropout(context, self.null_text_embedding, source_latent, drops)

        pred = self.predict(self.unet_input(noisy, source_latent, mask_latent), self.model_timesteps(timesteps),
                            context, spatial)
        return F.mse_loss(pred.float(), self.diffusion_target(latents, noise, timesteps))

    # ---- noise schedule (float32) -------------------------------------------------------------------------
    def flow_sigmas(self, timesteps: torch.Tensor) -> torch.Tensor:
        """Flow matching: the noise level σ [B, 1, 1, 1] (float32) of training step indices ``timesteps`` — the
        schedule's shifted σ, drawn uniformly over its ``num_train_timesteps`` levels."""
        sigmas = self.noise_scheduler.sigmas.to(timesteps.device, torch.float32)
        return sigmas[timesteps].view(-1, 1, 1, 1)  # [B, 1, 1, 1]

    def model_timesteps(self, timesteps: torch.Tensor) -> torch.Tensor:
        """What the generator is told of the noise level: the DDPM step, or flow matching's t = 1000 σ."""
        if self.config.scheduler.prediction_type != "flow":
            return timesteps
        return self.flow_sigmas(timesteps).flatten() * self.noise_scheduler.config.num_train_timesteps  # [B]

    def add_noise(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """The forward process x_t = √ᾱ_t·x_0 + √(1−ᾱ_t)·ε (flow matching: x_t = (1 − σ)·x_0 + σ·ε), in float32
        whatever the latents' dtype: diffusers casts ᾱ to the samples' dtype, and in bfloat16 ᾱ_0 and ᾱ_1 round to
        1 (no noise at all while the target is that noise) and the noise scale is off by up to 100 % below t = 50."""
        if self.config.scheduler.prediction_type == "flow":
            sigma = self.flow_sigmas(timesteps)
            return (1 - sigma) * latents.float() + sigma * noise.float()  # [B, C, h, w] float32
        return self.noise_scheduler.add_noise(latents.float(), noise.float(), timesteps)  # [B, C, h, w] float32

    def diffusion_target(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """What the generator is trained to predict (ε, v, x_0 or flow matching's velocity ε − x_0, by
        ``scheduler.prediction_type``), in float32."""
        kind = self.config.scheduler.prediction_type
        if kind == "flow":
            return noise.float() - latents.float()
        if kind == "epsilon":
            return noise.float()
        if kind == "v_prediction":
            return self.noise_scheduler.get_velocity(latents.float(), noise.float(), timesteps)
        return latents.float()  # "sample"

    # ---- persistence -----------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | os.PathLike, max_shard_size: str | int = "5GB") -> None:
        """Write ``config.json``, safetensors weights (sharded above ``max_shard_size``, with an index) and the
        tokenizer (``tokenizer/``). The null text embedding is one of the weights."""
        from huggingface_hub import split_torch_state_dict_into_shards
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        self.config.save(directory)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        split = split_torch_state_dict_into_shards(state, filename_pattern="model{suffix}.safetensors",
                                                   max_shard_size=max_shard_size)
        for old in os.listdir(directory):
            if old.startswith("model") and (old.endswith(".safetensors") or old == WEIGHTS_INDEX_NAME):
                os.remove(os.path.join(directory, old))
        for filename, names in split.filename_to_tensors.items():
            save_file({n: state[n] for n in names}, os.path.join(directory, filename), metadata={"format": "pt"})
        if split.is_sharded:
            with open(os.path.join(directory, WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
                json.dump({"metadata": split.metadata, "weight_map": split.tensor_to_filename}, f, indent=2)
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(os.path.join(directory, TOKENIZER_DIR))

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike, device: str | torch.device = "cpu",
                        dtype: torch.dtype | None = None, attn_implementation: str | None = None
                        ) -> "SmartEditModel":
        """Load a folder written by :meth:`save_pretrained`.

        Low memory: the model is built on the meta device (no random init), then the safetensors files are read
        one tensor at a time straight onto ``device`` and cast to ``dtype`` there (None: the file's dtype), so the
        peak is the model in its target dtype plus one tensor, never a float32 copy of the whole model. The
        :data:`FLOAT32_BUFFERS` stay float32. A missing, unexpected or wrongly shaped tensor is an error (all
        listed at once). ``attn_implementation`` overrides the folder's config."""
        from accelerate import init_empty_weights
        from safetensors import SafetensorError, safe_open

        directory = os.fspath(directory)
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"model folder {directory!r} does not exist; expected a folder with "
                                    f"{CONFIG_NAME}, {WEIGHTS_NAME} (or sharded model-*.safetensors + "
                                    f"{WEIGHTS_INDEX_NAME}) and {TOKENIZER_DIR}/")
        config = SmartEditConfig.load(directory)
        if attn_implementation is not None:
            config = config.replace(attn_implementation=attn_implementation)
        files = weight_files(directory)
        shapes = {}
        for path in files:
            shapes.update({k: tuple(v) for k, v in safetensors_shapes(path).items()})
        tok_dir = os.path.join(directory, TOKENIZER_DIR)
        tokenizer = load_tokenizer(tok_dir) if os.path.isdir(tok_dir) else None
        with init_empty_weights(include_buffers=False):
            model = cls(config, tokenizer)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        missing = sorted(set(expected) - set(shapes))
        unexpected = sorted(set(shapes) - set(expected))
        wrong = sorted(f"{k}: file {shapes[k]} vs model {expected[k]}"
                       for k in set(expected) & set(shapes) if shapes[k] != expected[k])
        if missing or unexpected or wrong:
            problems = ([f"missing: {k}" for k in missing] + [f"unexpected: {k}" for k in unexpected]
                        + [f"wrong shape: {k}" for k in wrong])
            raise ValueError(f"weights in {directory} do not fit its config ({len(problems)} problem(s)):\n  "
                             + "\n  ".join(problems))
        device = torch.device(device)
        target = "cpu" if device.type == "meta" else (str(device) if device.type != "cuda" or device.index is not None
                                                      else f"cuda:{torch.cuda.current_device()}")
        for path in files:
            try:
                with safe_open(path, framework="pt", device=target) as f:
                    for name in f.keys():
                        tensor = f.get_tensor(name)
                        if dtype is not None and tensor.is_floating_point() and not name.endswith(FLOAT32_BUFFERS):
                            tensor = tensor.to(dtype)
                        model._assign_tensor(name, tensor)
            except (SafetensorError, OSError) as exc:
                raise ValueError(f"cannot read weights file {path} ({exc}): the file is truncated or not "
                                 f"safetensors; download or copy it again (or re-run save_pretrained)") from None
        model.conv_in_residual.reattach(model.unet)
        return model.to(device).eval()

    def _assign_tensor(self, name: str, tensor: torch.Tensor) -> None:
        """Put ``tensor`` in place of the parameter or buffer ``name`` (its ``requires_grad`` kept)."""
        owner, _, attr = name.rpartition(".")
        module = self.get_submodule(owner)
        if attr in module._parameters:
            module._parameters[attr] = nn.Parameter(tensor, requires_grad=module._parameters[attr].requires_grad)
        else:
            module._buffers[attr] = tensor


SAVE_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def save_dtype(config: SmartEditConfig, name: str = "auto") -> torch.dtype:
    """The dtype a model folder is written in: ``name`` (``float32``, ``bfloat16``, ``float16``), or for ``auto``
    bfloat16 when the LLM has a billion parameters or more (7B / 13B: half the disk and no float32 copy when
    loading) and float32 below (the tiny models, whose tests compare exactly)."""
    if name != "auto":
        if name not in SAVE_DTYPES:
            raise ValueError(f"dtype must be auto or one of {sorted(SAVE_DTYPES)}, got {name!r}")
        return SAVE_DTYPES[name]
    m = config.mllm
    llm_parameters = m.num_hidden_layers * (4 * m.hidden_size ** 2 + 3 * m.hidden_size * m.intermediate_size)
    return torch.bfloat16 if llm_parameters >= 1e9 else torch.float32


def weight_files(directory: str) -> list[str]:
    """The safetensors files of a model folder: the single file, or every shard its index lists."""
    return find_weight_files(directory, MODEL_LAYOUT, formats=("safetensors",))


def load_weights(directory: str) -> dict[str, torch.Tensor]:
    """All tensors of a model folder (single file or sharded with an index)."""
    state: dict[str, torch.Tensor] = {}
    for path in weight_files(directory):
        state.update(read_safetensors(path))
    return state


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load a tokenizer from {path!r} ({exc}); expected tokenizer.json (or a "
                                f"LLaMA tokenizer.model) with tokenizer_config.json") from None


__all__ = ["SmartEditModel", "Condition", "check_instructions", "check_mask_support", "FLOAT32_BUFFERS",
           "SAVE_DTYPES", "save_dtype", "load_weights", "weight_files", "MODEL_LAYOUT",
           "load_tokenizer", "IGNORE_INDEX"]
