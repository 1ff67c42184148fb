"""Bidirectional Interaction Module (BIM).

The Q-Former's text context f and the vision tower's patch features attend to each other in a SAM-style two-way
transformer (transformers' ``SamTwoWayTransformer``: token self-attention, token→image cross-attention, MLP,
image→token cross-attention; depth 2 at paper scale). Outputs, both through zero-initialised heads so that a fresh
BIM leaves the model unchanged:

* text:  f' = f + text_scale · Δf,  Δf = Linear(dim → 768)(tokens)           (text_scale = 0.5)
* image: 16×16 image tokens → bilinear to the latent size → 1×1 conv(dim → 320), added to the UNet's
  ``conv_in`` output (see :mod:`smartedit.unet`).

Random-Fourier positional encoding of the patch grid (SAM's ``PositionEmbeddingRandom``): a fixed Gaussian
matrix [2, dim/2] stored as a buffer with the weights (it must be loaded, never regenerated).
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from transformers.models.sam.configuration_sam import SamMaskDecoderConfig
from transformers.models.sam.modeling_sam import SamPositionalEmbedding, SamTwoWayTransformer

from .config import BIMConfig


class GridPositionalEncoding(SamPositionalEmbedding):
    """SAM's random-Fourier encoding with the Gaussian matrix as a (persistent, frozen) buffer."""

    def __init__(self, num_pos_feats: int, scale: float):
        super().__init__(SimpleNamespace(scale=scale, num_pos_feats=num_pos_feats))
        matrix = self.positional_embedding.detach().clone().float()  # float32 whatever the default dtype
        del self.positional_embedding
        self.register_buffer("positional_embedding", matrix)

    def grid(self, size: int) -> torch.Tensor:
        """Encoding of a size×size grid of cell centres in [0,1]²: [2·num_pos_feats, size, size]."""
        ones = torch.ones((size, size), device=self.positional_embedding.device,
                          dtype=self.positional_embedding.dtype)
        y = (ones.cumsum(dim=0) - 0.5) / size
        x = (ones.cumsum(dim=1) - 0.5) / size
        pe = self(torch.stack([x, y], dim=-1))  # [S, S, C]
        return rearrange(pe, "h w c -> c h w")  # [C, S, S]


class BidirectionalInteraction(nn.Module):
    """(f [B,Q,Dt], patches [B,P,Dv]) → (f' [B,Q,Dt], spatial feature [B,C0,h,w])."""

    def __init__(self, cfg: BIMConfig, text_dim: int, grid_size: int, unet_channels: int,
                 attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = cfg
        self.grid_size = grid_size
        dim = cfg.hidden_size
        self.text_in = nn.Linear(text_dim, dim)
        sam_cfg = SamMaskDecoderConfig(hidden_size=dim, num_hidden_layers=cfg.depth, num_attention_heads=cfg.num_heads,
                                       mlp_dim=cfg.mlp_dim, attention_downsample_rate=cfg.attention_downsample_rate,
                                       hidden_act=cfg.hidden_act, layer_norm_eps=cfg.layer_norm_eps)
        self._sam_config = sam_cfg  # (every attention layer reads its kernel from this one object at each call)
        self.set_attn_implementation(attn_implementation)
        self.transformer = SamTwoWayTransformer(sam_cfg)
        self.pos_encoding = GridPositionalEncoding(dim // 2, cfg.pe_scale)
        self.text_out = nn.Linear(dim, text_dim)
        self.image_out = nn.Conv2d(dim, unet_channels, kernel_size=1)
        self.init_weights()

    def set_attn_implementation(self, name: str) -> None:
        """``sdpa``, ``eager`` or ``flash_attention_2`` (transformers' attention functions)."""
        self._sam_config._attn_implementation = name

    @torch.no_grad()
    def init_weights(self) -> None:
        """Zero-init of both output heads (``text_out``, ``image_out``: weight and bias), so a fresh BIM is an
        identity on f and adds nothing to the UNet. The rest keeps PyTorch's default Linear/LayerNorm init; the
        Fourier matrix is N(0, pe_scale²)."""
        for head in (self.text_out, self.image_out):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    def forward(self, text: torch.Tensor, patches: torch.Tensor, latent_size: tuple[int, int]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        batch, num_patches, _ = patches.shape
        g = self.grid_size
        if num_patches != g * g:
            raise ValueError(f"BIM expects {g}x{g}={g * g} patches, got {num_patches}")
        dtype = self.text_in.weight.dtype
        tokens = self.text_in(text.to(dtype)).unsqueeze(1)  # [B, 1, Q, D]
        image = rearrange(patches.to(dtype), "b (h w) d -> b d h w", h=g)  # [B, D, g, g]
        pe = self.pos_encoding.grid(g).to(dtype).unsqueeze(0).expand(batch, -1, -1, -1)  # [B, D, g, g]
        tokens, keys = self.transformer(point_embeddings=tokens, image_embeddings=image,
                                        image_positional_embeddings=pe, attention_similarity=None)
        # tokens: [B, 1, Q, D]; keys: [B, 1, P, D]
        delta = self.text_out(tokens.squeeze(1))  # [B, Q, Dt]
        text_out = text + self.config.text_scale * delta.to(text.dtype)  # [B, Q, Dt]
        grid = rearrange(keys, "b 1 (h w) d -> b d h w", h=g)  # [B, D, g, g]
        grid = F.interpolate(grid, size=tuple(latent_size), mode="bilinear", align_corners=False)  # [B, D, h, w]
        spatial = self.image_out(grid)  # [B, C0, h, w]
        return text_out, spatial
