"""Classifier-free guidance: training-time condition dropout and the three-branch inference combination
(InstructPix2Pix, as used by SmartEdit).

Training (per sample, u ~ U(0,1), p = 0.05):
    u < p        → drop text and image
    p ≤ u < 2p   → drop text only
    2p ≤ u < 3p  → drop image only
Dropped text = the stored null text embedding (CLIP text encoder output of ""); dropped image = zero latent.

Inference: branches [text+image, null-text+image, null-text+null-image] →
    ε = ε_u + s_T (ε_ti − ε_i) + s_I (ε_i − ε_u)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class DropoutMasks:
    drop_text: torch.Tensor
    """[B] bool"""
    drop_image: torch.Tensor
    """[B] bool"""


def sample_dropout(batch_size: int, p: float, device=None, generator: torch.Generator | None = None
                   ) -> DropoutMasks:
    u = torch.rand(batch_size, generator=generator, device=device if generator is None else generator.device)
    u = u.to(device) if device is not None else u
    drop_text = u < 2 * p
    drop_image = (u < p) | ((u >= 2 * p) & (u < 3 * p))
    return DropoutMasks(drop_text=drop_text, drop_image=drop_image)


def apply_dropout(context: torch.Tensor, null_context: torch.Tensor, source_latent: torch.Tensor,
                  masks: DropoutMasks) -> tuple[torch.Tensor, torch.Tensor]:
    """context [B,Q,D] → null where text dropped; source latent [B,C,h,w] → 0 where image dropped."""
    text_keep = (~masks.drop_text).view(-1, 1, 1)
    context = torch.where(text_keep, context, null_context.to(context.dtype).expand_as(context))
    image_keep = (~masks.drop_image).view(-1, 1, 1, 1).to(source_latent.dtype)
    return context, source_latent * image_keep


def guidance_branches(context: torch.Tensor, null_context: torch.Tensor, source_latent: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the three CFG branches along the batch: contexts [3B,Q,D] and source latents [3B,C,h,w]."""
    null = null_context.to(context.dtype).expand_as(context)
    contexts = torch.cat([context, null, null], dim=0)
    sources = torch.cat([source_latent, source_latent, torch.zeros_like(source_latent)], dim=0)
    return contexts, sources


def combine_guidance(prediction: torch.Tensor, text_scale: float, image_scale: float) -> torch.Tensor:
    """[3B, ...] predictions of (text+image, image, none) → guided [B, ...] prediction."""
    eps_ti, eps_i, eps_u = prediction.chunk(3, dim=0)
    return eps_u + text_scale * (eps_ti - eps_i) + image_scale * (eps_i - eps_u)
