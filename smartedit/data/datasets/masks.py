"""Edit-region masks as published (RGBA cut-outs, black/white PNGs, soft masks) → the schema's mask convention:
a single-channel PNG, 255 = edit region, 0 = keep (the collator thresholds at 127)."""

from __future__ import annotations

import numpy as np

from ..schema import encode_png
from ..validate import ItemError, check_image, check_mask_size

__all__ = ["edit_region_mask", "encode_mask", "mask_bytes_for"]


def edit_region_mask(mask_image) -> np.ndarray:
    """bool [H, W] edit region of a published mask image.

    * with real transparency (DALL-E style cut-outs): the transparent pixels;
    * a (nearly) black-and-white image: the white pixels (> 127);
    * otherwise (white strokes painted over the photo): the pure-white pixels (every channel >= 250).
    """
    im = mask_image
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        alpha = np.array(im.convert("RGBA"))[..., 3]
        if (alpha < 255).any():
            return alpha < 128
    rgb = np.array(im.convert("RGB"))
    grey = np.array(im.convert("L"))
    mid = ((grey > 15) & (grey < 240)).mean() if grey.size else 0.0
    if mid < 0.01:
        return grey > 127
    return (rgb >= 250).all(axis=-1)


def encode_mask(mask: np.ndarray) -> bytes:
    from PIL import Image

    return encode_png(Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255, "L"))


def mask_bytes_for(mask_data: bytes, image_size: tuple[int, int], what: str = "mask",
                   soft: bool = False) -> bytes | None:
    """Published mask bytes → schema mask PNG, checked to be the image's size; None when it marks no pixel
    (the sample is then free-form editing).

    ``soft`` keeps grey levels (UltraEdit's soft region masks) instead of binarising."""
    from PIL import Image

    if soft:
        grey = check_image(mask_data, what, "L")
        check_mask_size(grey.size, image_size, what)
        if not (np.array(grey) > 127).any():
            return None
        return encode_png(grey)
    raw = _open(mask_data, what)
    check_mask_size(raw.size, image_size, what)
    region = edit_region_mask(raw)
    if not region.any():
        return None
    return encode_png(Image.fromarray(region.astype(np.uint8) * 255, "L"))


def _open(data: bytes, what: str):
    import io

    from PIL import Image

    from ..validate import ITEM_ERRORS

    if not data:
        raise ItemError("missing field", what)
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
        return im
    except ITEM_ERRORS as exc:
        raise ItemError("corrupt or unreadable image", f"{what}: {type(exc).__name__}: {exc}"[:300]) from None
