"""CLIP metrics with a transformers ``CLIPModel`` and its processor loaded from a local folder.

Embeddings are the model's projected image / text features (``get_image_features`` / ``get_text_features``),
L2-normalised. Preprocessing is the folder's own image processor (CLIP: shortest side → 224 bicubic, center
crop 224, CLIP mean/std) and tokenizer (truncated to the text model's 77 positions).

* CLIP-I (image–image)          cos(E_I(a), E_I(b))                       (MagicBrush: output vs ground truth;
                                                                           Emu Edit: input vs output)
* CLIP-T / CLIP-out (image–text) cos(E_I(image), E_T(caption))
* CLIP-dir                       cos(E_I(out) − E_I(in), E_T(out caption) − E_T(in caption))
* CLIP score                     100 · max(cos(E_I(image), E_T(text)), 0)  (torchmetrics' CLIPScore definition,
                                                                           used by SmartEdit's Reason-Edit script)
* crop CLIP score                CLIP score of the image cropped to the edit mask's bounding box

torchmetrics' ``CLIPScore`` itself cannot be used with transformers 5 (``get_image_features`` now returns a
model output, which torchmetrics tries to ``.norm()``), so the same formula is computed here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..weights.clip import load_clip
from .backbones import BackboneError, BackboneInfo, describe_clip, hf_info, read_hf_config, require_dir

logger = logging.getLogger(__name__)

__all__ = ["ClipScorer", "load_clip_scorer", "clip_variant", "variant_note", "cosine", "direction_similarity",
           "mask_bbox", "crop_to_mask_bbox", "model_features"]


def model_features(output: Any) -> torch.Tensor:
    """The embedding tensor from ``get_*_features`` (a tensor in transformers 4, a model output with the
    projected embedding in ``pooler_output`` in transformers 5)."""
    if isinstance(output, torch.Tensor):
        return output
    pooled = getattr(output, "pooler_output", None)
    if isinstance(pooled, torch.Tensor):
        return pooled
    raise TypeError(f"cannot find embeddings in {type(output).__name__}")


def cosine(u: torch.Tensor, v: torch.Tensor) -> float:
    """Cosine similarity of two vectors (any norm)."""
    return float(F.cosine_similarity(u.double().flatten()[None], v.double().flatten()[None], eps=1e-12)[0])


def direction_similarity(img_in: torch.Tensor, img_out: torch.Tensor, txt_in: torch.Tensor,
                         txt_out: torch.Tensor) -> float:
    """CLIP-dir from normalised embeddings: cos(img_out − img_in, txt_out − txt_in)."""
    return cosine(img_out - img_in, txt_out - txt_in)


def mask_bbox(edit_mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the True pixels, right/bottom exclusive (PIL crop box); None if empty."""
    mask = np.asarray(edit_mask, dtype=bool)
    ys, xs = np.nonzero(mask)
    if ys.size == 0:
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def crop_to_mask_bbox(image: Image.Image, edit_mask: np.ndarray) -> Image.Image:
    """``image`` cropped to the bounding box of ``edit_mask`` (same size as the image); ValueError if empty."""
    if image.size != (edit_mask.shape[1], edit_mask.shape[0]):
        raise ValueError(f"mask {edit_mask.shape[::-1]} and image {image.size} differ in size")
    box = mask_bbox(edit_mask)
    if box is None:
        raise ValueError("empty mask has no bounding box")
    return image.crop(box)


_VARIANTS = {(1024, 24, 14): "ViT-L/14", (768, 12, 32): "ViT-B/32", (768, 12, 16): "ViT-B/16"}


def clip_variant(scorer: "ClipScorer") -> str:
    """"ViT-L/14", "ViT-B/32", "ViT-B/16" from the vision config, else "custom"."""
    v = scorer.model.config.vision_config
    return _VARIANTS.get((v.hidden_size, v.num_hidden_layers, v.patch_size), "custom")


def variant_note(scorer: "ClipScorer | None", expected: str, benchmark: str) -> list[str]:
    """A report note (and a log warning) when the CLIP backbone is not the one the benchmark's paper used."""
    if scorer is None:
        return []
    got = clip_variant(scorer)
    if got == expected:
        return []
    msg = (f"CLIP backbone looks like {got}, but {benchmark} numbers are normally computed with CLIP {expected}: "
           f"CLIP metrics are not comparable with published ones")
    logger.warning(msg)
    return [msg]


class ClipScorer:
    """CLIP embeddings and similarities. ``info`` names the backbone and its weight hash."""

    def __init__(self, model, tokenizer, image_processor, info: BackboneInfo | None = None,
                 device: str | torch.device = "cpu"):
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.info = info
        self.device = torch.device(device)
        self.max_length = int(getattr(model.config.text_config, "max_position_embeddings", 77))

    @torch.no_grad()
    def image_embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D] L2-normalised image embeddings (float32, CPU)."""
        pixels = self.image_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = pixels["pixel_values"].to(self.device, dtype=self.model.dtype)
        feats = model_features(self.model.get_image_features(pixel_values=pixels))
        return F.normalize(feats.float(), dim=-1).cpu()

    @torch.no_grad()
    def text_embeds(self, texts: Sequence[str]) -> torch.Tensor:
        """[N, D] L2-normalised text embeddings (float32, CPU)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        feats = model_features(self.model.get_text_features(
            input_ids=tokens["input_ids"].to(self.device), attention_mask=tokens["attention_mask"].to(self.device)))
        return F.normalize(feats.float(), dim=-1).cpu()

    def image_similarity(self, a: Image.Image, b: Image.Image) -> float:
        """CLIP-I: cosine of the two images' embeddings."""
        e = self.image_embeds([a, b])
        return cosine(e[0], e[1])

    def text_similarity(self, image: Image.Image, text: str) -> float:
        """CLIP-T / CLIP-out: cosine of image and text embeddings."""
        return cosine(self.image_embeds([image])[0], self.text_embeds([text])[0])

    def clip_score(self, image: Image.Image, text: str) -> float:
        """100 · max(cos, 0) (torchmetrics' CLIPScore)."""
        return 100.0 * max(self.text_similarity(image, text), 0.0)

    def crop_clip_score(self, image: Image.Image, edit_mask: np.ndarray, text: str) -> float:
        """CLIP score of ``image`` cropped to the bounding box of ``edit_mask``."""
        return self.clip_score(crop_to_mask_bbox(image, edit_mask), text)

    def direction(self, img_in: Image.Image, img_out: Image.Image, txt_in: str, txt_out: str) -> float:
        """CLIP-dir."""
        e = self.image_embeds([img_in, img_out])
        t = self.text_embeds([txt_in, txt_out])
        return direction_similarity(e[0], e[1], t[0], t[1])


def load_clip_scorer(path: str | os.PathLike, device: str | torch.device = "cpu") -> ClipScorer:
    """A :class:`ClipScorer` from a local CLIP folder (``LAYOUTS['clip']``, read by
    :func:`smartedit.weights.load_clip`); never downloads."""
    directory = require_dir(path, "clip")
    config = read_hf_config(directory, "clip", ("clip",))
    info = hf_info(directory, "clip", describe_clip(config))
    try:
        clip = load_clip(directory, text=True)
    except (OSError, ValueError) as e:
        raise BackboneError("clip", directory, str(e)) from e
    logger.info("CLIP backbone %s (%s)", info.tag(), info.arch)
    return ClipScorer(clip.model, clip.tokenizer, clip.image_processor, info, device)
