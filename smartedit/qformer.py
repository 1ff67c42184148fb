"""Q-Former: 77 learned queries that read the LLM's ``<img_i>`` hidden states and emit CLIP-text-like context.

transformers' BLIP-2 ``Blip2QFormerModel`` with ``use_qformer_text_input=False`` is exactly the module the
reference builds from BERT (no word/position embeddings, a LayerNorm on the queries, self-attention in every layer,
cross-attention to the LLM states every ``cross_attention_frequency``-th layer, query FFNs only). Key names differ
from the reference's (``attention.attention`` vs ``attention.self``, ``layernorm`` vs ``embeddings.LayerNorm``);
the released-weight converter maps them.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from .config import QFormerConfig


def blip2_qformer_config(cfg: QFormerConfig, encoder_hidden_size: int, attn_implementation: str = "sdpa"
                         ) -> Blip2QFormerConfig:
    """(transformers has no FlashAttention-2 path for the Q-Former: ``flash_attention_2`` gives ``sdpa``.)"""
    return Blip2QFormerConfig(
        hidden_size=cfg.hidden_size, num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads, intermediate_size=cfg.intermediate_size,
        cross_attention_frequency=cfg.cross_attention_frequency, encoder_hidden_size=encoder_hidden_size,
        layer_norm_eps=cfg.layer_norm_eps, hidden_dropout_prob=cfg.hidden_dropout_prob,
        attention_probs_dropout_prob=cfg.attention_probs_dropout_prob, hidden_act="gelu",
        use_qformer_text_input=False,
        attn_implementation="eager" if attn_implementation == "eager" else "sdpa",
    )


class SmartEditQFormer(nn.Module):
    """LLM states [B, N, H_llm] → context [B, num_queries, hidden] (77 × 768 at paper scale)."""

    def __init__(self, cfg: QFormerConfig, llm_hidden_size: int, attn_implementation: str = "sdpa"):
        super().__init__()
        self.config = cfg
        self.query_tokens = nn.Parameter(torch.zeros(1, cfg.num_queries, cfg.hidden_size))
        self.qformer = Blip2QFormerModel(blip2_qformer_config(cfg, llm_hidden_size, attn_implementation))
        self.reset_queries()

    def set_attn_implementation(self, name: str) -> None:
        """``eager`` or ``sdpa`` (``flash_attention_2`` gives ``sdpa``, see :func:`blip2_qformer_config`)."""
        self.qformer.set_attn_implementation("eager" if name == "eager" else "sdpa")

    @torch.no_grad()
    def reset_queries(self) -> None:
        """Queries ~ N(0, query_init_std) (0.02, as BLIP-2). The Q-Former body keeps transformers' init."""
        self.query_tokens.normal_(0.0, self.config.query_init_std)

    def forward(self, llm_states: torch.Tensor, llm_mask: torch.Tensor | None = None) -> torch.Tensor:
        batch = llm_states.shape[0]
        queries = self.query_tokens.expand(batch, -1, -1)  # [B, Q, D]
        out = self.qformer(query_embeds=queries, encoder_hidden_states=llm_states,
                           encoder_attention_mask=llm_mask)
        return out.last_hidden_state  # [B, Q, D]
