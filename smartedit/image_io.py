"""Reading user images robustly: every odd input becomes a correct RGB image or one clear error.

Handled: paths, bytes, PIL images, numpy arrays and tensors; EXIF orientation (applied); RGBA / LA / palette with
transparency (composited on white); grayscale (replicated to RGB); 16-bit and 32-bit integer / float images
(rescaled to 8 bit from their real range); CMYK and other modes (converted). Rejected with a message: missing,
zero-byte, truncated or non-image files, and absurdly large images (more than :data:`MAX_PIXELS`).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

MAX_PIXELS = 64 * 1024 * 1024
"""Largest accepted image (64 megapixels, e.g. 8192×8192); larger inputs are an error, not a silent OOM."""


class ImageInputError(ValueError):
    """An input image cannot be used; the message says why and what to do."""


def _open(source, name: str) -> Image.Image:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageInputError(f"image {path!r} does not exist")
        if os.path.isdir(path):
            raise ImageInputError(f"image {path!r} is a folder, not an image file")
        if os.path.getsize(path) == 0:
            raise ImageInputError(f"image {path!r} is an empty (zero-byte) file")
        with open(path, "rb") as f:
            data = f.read()
        name = path
    elif isinstance(source, (bytes, bytearray)):
        if not source:
            raise ImageInputError(f"{name} is empty (zero bytes)")
        data = bytes(source)
    else:
        raise TypeError(f"cannot read an image from {type(source).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
            _check_size(image.size, name)
            image.load()
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageInputError(f"{name} is too large to edit safely (over {MAX_PIXELS:,} pixels); "
                                  f"downscale it first") from None
        except ImageInputError:
            raise
        except OSError as exc:
            raise ImageInputError(f"cannot read {name}: it is truncated, corrupt or not an image ({exc})") from None
    return image


def _check_size(size: tuple[int, int], name: str) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageInputError(f"{name} has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageInputError(f"{name} is {w}x{h} = {w * h:,} pixels, more than the {MAX_PIXELS:,} accepted; "
                              f"downscale it first")


def _to_rgb(image: Image.Image) -> Image.Image:
    image = ImageOps.exif_transpose(image)
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I", "F") or mode.startswith("I;16"):
        arr = np.asarray(image).astype(np.float64)
        if mode == "F":
            lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
            scale = (arr - lo) / (hi - lo) if hi > lo else np.zeros_like(arr)
        else:
            hi = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
            scale = arr / hi
        arr8 = np.clip(np.round(scale * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(arr8, mode="L").convert("RGB")
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(canvas, rgba).convert("RGB")
    return image.convert("RGB")


def load_image(source, name: str = "image") -> Image.Image:
    """Any supported input → PIL RGB image (orientation applied, transparency on white)."""
    if isinstance(source, Image.Image):
        _check_size(source.size, name)
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_uint8(source, name))
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ImageInputError(f"{name} tensor must be [C,H,W] with C in (1,3,4) and values in [0,1], got "
                                  f"{tuple(t.shape)}")
        return load_image(t.permute(1, 2, 0).float().numpy(), name)
    return _to_rgb(_open(source, name))


def _array_to_uint8(arr: np.ndarray, name: str) -> np.ndarray:
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3, 4):
        raise ImageInputError(f"{name} array must be HxW, HxWx1, HxWx3 or HxWx4, got shape {arr.shape}")
    _check_size((arr.shape[1], arr.shape[0]), name)
    if arr.dtype == np.uint8:
        out = arr.astype(np.float64) / 255.0
    elif arr.dtype == np.uint16:
        out = arr.astype(np.float64) / 65535.0
    elif np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise ImageInputError(f"{name} contains NaN or infinite values")
        if arr.min() < 0 or arr.max() > 1:
            raise ImageInputError(f"{name} float values must lie in [0, 1], got [{arr.min():.3g}, {arr.max():.3g}]")
        out = arr.astype(np.float64)
    else:
        raise ImageInputError(f"{name} has unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    if out.shape[-1] == 4:
        alpha = out[..., 3:]
        out = out[..., :3] * alpha + (1 - alpha)
    if out.shape[-1] == 1:
        out = np.repeat(out, 3, axis=-1)
    return np.clip(np.round(out * 255.0), 0, 255).astype(np.uint8)


def load_mask(source, size: tuple[int, int] | None = None, name: str = "mask") -> torch.Tensor:
    """A region mask (any image input; white / > 0.5 = edit here) → [1, H, W] float tensor in {0, 1}.

    ``size`` (width, height) is the image it belongs to: a mask of another size is an error, not a silent resize.
    """
    if isinstance(source, torch.Tensor) and source.ndim in (2, 3):
        t = source.detach().cpu().float()
        t = t[None] if t.ndim == 2 else t[:1]
    else:
        if isinstance(source, (str, os.PathLike, bytes, bytearray)):
            image = ImageOps.exif_transpose(_open(source, name))
        elif isinstance(source, Image.Image):
            image = source
        elif isinstance(source, np.ndarray):
            image = Image.fromarray(_array_to_uint8(source, name))
        else:
            raise TypeError(f"cannot read a mask from {type(source).__name__}")
        if image.mode in ("RGBA", "LA"):
            image = image.getchannel("A") if image.mode == "LA" else image.convert("L")
        gray = np.asarray(_to_rgb(image).convert("L"), dtype=np.float32) / 255.0
        t = torch.from_numpy(gray)[None]
    if size is not None and (t.shape[-1], t.shape[-2]) != tuple(size):
        raise ImageInputError(f"{name} is {t.shape[-1]}x{t.shape[-2]} but the image is {size[0]}x{size[1]}; "
                              f"give a mask with the image's size")
    return (t > 0.5).float()


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → [3, H, W] float in [0, 1] (uint8 / 255, the same arithmetic as diffusers' image processor)."""
    arr = np.array(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
