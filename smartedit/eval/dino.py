"""DINO similarity: cosine of the CLS tokens of a transformers ``ViTModel`` (facebook/dino-vits16) loaded locally.

Preprocessing follows MagicBrush's evaluation exactly (torchvision's ``Resize(256, bicubic)``,
``CenterCrop(224)``, ``ToTensor``, ImageNet ``Normalize``), written with PIL so torchvision is not needed:
the shorter side becomes 256 (longer side ``int(256 · long / short)``), bicubic; the central 224 × 224 crop
(offsets ``round((size − 224) / 2)``); scaled to [0, 1]; mean (0.485, 0.456, 0.406), std (0.229, 0.224, 0.225).
The feature is ``last_hidden_state[:, 0]`` (the CLS token after the final LayerNorm, as DINO's own model returns).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..weights.files import weight_files
from .backbones import BackboneError, BackboneInfo, describe_vit, hf_info, read_hf_config, require_dir
from .clip_score import cosine

logger = logging.getLogger(__name__)

__all__ = ["DinoScorer", "load_dino", "resize_shorter", "center_crop", "IMAGENET_MEAN", "IMAGENET_STD"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
    """Shorter side → ``size`` (bicubic), longer side ``int(size · long / short)`` (torchvision's rule)."""
    w, h = image.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    if (new_w, new_h) == (w, h):
        return image
    return image.resize((new_w, new_h), resample=Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
    """Central ``size × size`` crop (torchvision's offsets; the image must be at least that large)."""
    w, h = image.size
    if w < size or h < size:
        raise ValueError(f"image {w}x{h} is smaller than the {size} crop")
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


class DinoScorer:
    """DINO CLS embeddings and their cosine similarity."""

    def __init__(self, model, info: BackboneInfo | None = None, device: str | torch.device = "cpu",
                 resize: int = 256, crop: int = 224):
        self.model = model.to(device).eval()
        self.info = info
        self.device = torch.device(device)
        self.resize, self.crop = resize, crop

    def preprocess(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, 3, crop, crop] normalised pixel values."""
        mean = np.asarray(IMAGENET_MEAN).reshape(3, 1, 1)
        std = np.asarray(IMAGENET_STD).reshape(3, 1, 1)
        batch = []
        for im in images:
            im = center_crop(resize_shorter(im.convert("RGB"), self.resize), self.crop)
            arr = np.asarray(im, dtype=np.float64).transpose(2, 0, 1) / 255.0
            batch.append((arr - mean) / std)
        return torch.from_numpy(np.stack(batch)).float()

    @torch.no_grad()
    def embeds(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, D] L2-normalised CLS features (float32, CPU)."""
        pixels = self.preprocess(images).to(self.device, dtype=self.model.dtype)
        cls = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return F.normalize(cls.float(), dim=-1).cpu()

    def similarity(self, a: Image.Image, b: Image.Image) -> float:
        """DINO score: cosine of the two CLS features."""
        e = self.embeds([a, b])
        return cosine(e[0], e[1])


def load_dino(path: str | os.PathLike, device: str | torch.device = "cpu") -> DinoScorer:
    """A :class:`DinoScorer` from a local ViT folder (``LAYOUTS['dino']``); never downloads."""
    directory = require_dir(path, "dino")
    config = read_hf_config(directory, "dino", ("vit",))
    info = hf_info(directory, "dino", describe_vit(config))
    files = weight_files(directory)
    from transformers import ViTModel

    try:
        model = ViTModel.from_pretrained(os.fspath(directory), local_files_only=True, add_pooling_layer=False,
                                         use_safetensors=files[0].endswith(".safetensors"))
    except Exception as e:
        raise BackboneError("dino", directory, f"transformers cannot load the ViTModel: {e}") from e
    logger.info("DINO backbone %s (%s)", info.tag(), info.arch)
    return DinoScorer(model, info, device)
