"""The frozen CLIP text encoder of stage 1: targets for the Q-Former and the model's null text embedding.

Stage 1 aligns the Q-Former output with the CLIP text encoder's last hidden state of the caption
(77 tokens × 768 for SD-1.5), which is what the UNet was trained to read. The same encoder's output for ``""``
(padded to 77 tokens) is the null text embedding used by classifier-free guidance; stage 1 stores it in the model.

Prompts are encoded as diffusers' Stable Diffusion pipelines do: padded to the encoder's maximum length, without an
attention mask unless the encoder's config asks for one (``use_attention_mask``).
"""

from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger(__name__)

__all__ = ["ClipTextTarget", "resolve_clip_text_dirs", "build_tiny_clip_text"]


def resolve_clip_text_dirs(path: str) -> tuple[str, str]:
    """(encoder folder, tokenizer folder) of a CLIP text encoder folder or a Stable Diffusion folder."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"CLIP text encoder folder {path!r} does not exist: give a Stable Diffusion folder "
                                f"(with text_encoder/ and tokenizer/, e.g. SD-1.5) or a folder holding a "
                                f"CLIPTextModel (config.json + weights) and its tokenizer files")
    enc, tok = os.path.join(path, "text_encoder"), os.path.join(path, "tokenizer")
    if os.path.isdir(enc):
        return enc, tok if os.path.isdir(tok) else path
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path!r} holds neither text_encoder/ nor a CLIPTextModel config.json")
    return path, path


class ClipTextTarget:
    """``target(captions)`` → [B, L, D] last hidden states (no grad); ``null_embedding()`` → [1, L, D]."""

    def __init__(self, path: str, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoTokenizer, CLIPTextModel

        enc_dir, tok_dir = resolve_clip_text_dirs(path)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"cannot load the CLIP tokenizer from {tok_dir!r}: {exc}") from None
        self.model = CLIPTextModel.from_pretrained(enc_dir, local_files_only=True, dtype=dtype).to(device)
        self.model.eval().requires_grad_(False)
        self.max_length = self.model.config.max_position_embeddings
        self.hidden_size = self.model.config.hidden_size
        self.device = torch.device(device)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token

    def check_model(self, config) -> None:
        """The encoder must produce exactly the Q-Former's output shape."""
        problems = []
        if self.hidden_size != config.qformer.hidden_size:
            problems.append(f"CLIP text hidden size {self.hidden_size} != qformer.hidden_size "
                            f"{config.qformer.hidden_size}")
        if self.max_length != config.qformer.num_queries:
            problems.append(f"CLIP text length {self.max_length} != qformer.num_queries {config.qformer.num_queries}")
        if problems:
            raise ValueError("the CLIP text encoder does not fit the model: " + "; ".join(problems))

    @torch.no_grad()
    def prepare_model(self, model) -> None:
        """Stage 1's change to the model: checked against this encoder, its null text embedding (the CFG
        unconditional context) set to the encoder's output for the empty caption."""
        self.check_model(model.config)
        model.null_text_embedding.copy_(self.null_embedding().to(model.null_text_embedding.dtype))

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> torch.Tensor:
        tok = self.tokenizer(list(texts), padding="max_length", max_length=self.max_length, truncation=True,
                             return_tensors="pt")
        mask = tok["attention_mask"].to(self.device) if getattr(self.model.config, "use_attention_mask", False) \
            else None
        out = self.model(tok["input_ids"].to(self.device), attention_mask=mask)
        return out.last_hidden_state.float()  # [B, L, D]

    def null_embedding(self) -> torch.Tensor:
        return self([""])  # [1, L, D]


def build_tiny_clip_text(directory: str, hidden_size: int = 64, tokenizer_dir: str | None = None,
                         seed: int = 0) -> str:
    """Write a tiny random ``CLIPTextModel`` (77 positions) with the shipped tiny tokenizer to ``directory``
    (for the ``tiny`` preset: tests, benchmarks, smoke runs). Returns ``directory``."""
    from transformers import AutoTokenizer, CLIPTextConfig, CLIPTextModel

    from ..model import TINY_TOKENIZER

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir or TINY_TOKENIZER, local_files_only=True)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIPTextModel(config)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
