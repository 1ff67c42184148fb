"""Turn uniform-schema samples (:mod:`smartedit.data.schema`) into the batch ``SmartEditModel.forward`` takes.

Every random choice (prompt template, answer phrasing) is a function of ``(seed, epoch, index)`` only, so a resumed
run builds bit-identical batches.

Batch keys: ``input_ids``, ``attention_mask``, ``labels`` [B, L]; ``source_images``, ``target_images``
[B, 3, R, R] in [-1, 1] (zeros for text-only rows); ``is_edit`` [B] (1 = diffusion loss); ``masks`` [B, 1, R, R]
in {0, 1} (1 = edit region; all ones = free-form) when any sample has a mask; ``captions`` (list, stage 1);
``ids`` (list of sample ids).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..config import SmartEditConfig
from ..backbones import chat_format
from ..prompt import EDIT_ANSWERS, EDIT_TEMPLATES, pad_batch, tokenize_conversation
from .schema import EDIT_TASKS, Sample, decode_image


def sample_rng(seed: int, epoch: int, index: int, stream: int = 0) -> np.random.Generator:
    """The random generator of one sample draw: a pure function of (seed, epoch, index). ``stream`` separates
    independent uses (0: mixture choice, 1: prompt templates, 2+: augmentations)."""
    return np.random.default_rng([int(seed), int(epoch), int(index), int(stream)])


def image_tensor(data: bytes, resolution: int) -> torch.Tensor:
    """Encoded RGB image → [3, R, R] in [-1, 1] (bicubic, antialiased)."""
    image = decode_image(data, "RGB")
    t = torch.from_numpy(np.array(image)).permute(2, 0, 1).float().div(255)[None]
    t = F.interpolate(t, size=(resolution, resolution), mode="bicubic", align_corners=False, antialias=True)
    return t[0].clamp(0, 1) * 2 - 1


def mask_tensor(data: bytes, resolution: int) -> torch.Tensor:
    """Encoded mask (any mode; > 127 = edit region) → [1, R, R] in {0, 1} (nearest)."""
    m = torch.from_numpy(np.array(decode_image(data, "L"))).float()[None, None]
    m = F.interpolate(m, size=(resolution, resolution), mode="nearest")
    return (m[0] > 127).float()


class SampleCollator:
    """``collator(samples, keys)`` where ``keys`` are the (seed, epoch, index) of each sample draw."""

    def __init__(self, config: SmartEditConfig, tokenizer, resolution: int | None = None):
        self.config = config
        self.tokenizer = tokenizer
        self.resolution = resolution or config.resolution
        self.format = chat_format(config, tokenizer)

    def encode(self, sample: Sample, key: tuple[int, int, int]) -> dict:
        problems = sample.problems()
        if problems:
            raise ValueError(f"sample {sample.id!r}: " + "; ".join(problems))
        rng = sample_rng(*key, stream=1)
        cfg = self.config
        fmt = self.format  # the MLLM family's conversation (Vicuna-v1 for LLaVA)
        if sample.task in EDIT_TASKS:
            segments = fmt.edit(sample.instruction, template=int(rng.integers(len(EDIT_TEMPLATES))),
                                answer=int(rng.integers(len(EDIT_ANSWERS))), reply=sample.reply)
        elif sample.task == "chat":
            segments = fmt.chat([tuple(t) for t in sample.conversation])
        elif sample.source_image is not None:  # an edit prompt (its instruction, else the caption) aligned to the caption
            segments = fmt.edit(sample.instruction or sample.caption, template=int(rng.integers(len(EDIT_TEMPLATES))),
                                answer=int(rng.integers(len(EDIT_ANSWERS))), reply=sample.reply)
        else:  # caption (text only)
            segments = fmt.caption(sample.caption)
        limit = cfg.mllm.max_position_embeddings
        if sample.task == "chat":
            item = self._fit_chat(segments, limit)
        else:
            item = tokenize_conversation(self.tokenizer, segments, max_length=limit)
        r = self.resolution
        zeros = torch.zeros(3, r, r)
        item["source"] = image_tensor(sample.source_image, r) if sample.source_image is not None else zeros
        item["target"] = image_tensor(sample.target_image, r) if sample.target_image is not None else item["source"]
        item["mask"] = mask_tensor(sample.mask_image, r) if sample.mask_image is not None else None
        item["is_edit"] = float(sample.task in EDIT_TASKS)
        item["caption"] = sample.caption
        item["id"] = sample.id
        return item

    def _fit_chat(self, segments: list[tuple[str, str]], limit: int) -> dict:
        """Long chats keep as many whole turns as fit; a first turn that alone is too long is cut at the limit
        (its answer truncated, the image placeholders always kept, as they precede the question)."""
        while len(segments) > 1:
            item = tokenize_conversation(self.tokenizer, segments)
            if len(item["input_ids"]) <= limit:
                return item
            segments = segments[:-1]
        item = tokenize_conversation(self.tokenizer, segments)
        if len(item["input_ids"]) > limit:
            item = {k: v[:limit] for k, v in item.items()}
        return item

    def __call__(self, samples: list[Sample], keys: list[tuple[int, int, int]]) -> dict:
        return self.collate([self.encode(s, k) for s, k in zip(samples, keys)])

    def collate(self, items: list[dict]) -> dict:
        """Encoded items (:meth:`encode`) → the batch."""
        batch = pad_batch(items, self.config.mllm.pad_token_id)
        batch["source_images"] = torch.stack([it["source"] for it in items])
        batch["target_images"] = torch.stack([it["target"] for it in items])
        batch["is_edit"] = torch.tensor([it["is_edit"] for it in items])
        if any(it["mask"] is not None for it in items):
            ones = torch.ones(1, self.resolution, self.resolution)
            batch["masks"] = torch.stack([it["mask"] if it["mask"] is not None else ones for it in items])
        batch["captions"] = [it["caption"] for it in items]
        batch["ids"] = [it["id"] for it in items]
        return batch
