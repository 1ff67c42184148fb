"""Reading user images robustly: every odd input becomes a correct RGB image or one clear error.

Handled: paths, bytes, PIL images, numpy arrays and tensors; EXIF orientation (applied); RGBA / LA / palette with
transparency (composited on white); grayscale (replicated to RGB); 16-bit and 32-bit integer / float images
(rescaled to 8 bit from their real range); CMYK and other modes (converted). Rejected with a message: missing,
zero-byte, truncated or non-image files, and images over the pixel budget.

The pixel budget (:func:`pixel_budget`: :data:`DEFAULT_MAX_PIXELS` = 40 MP, enough for real photos; the
``SMARTEDIT_MAX_PIXELS`` environment variable or a ``max_pixels=`` argument changes it) is checked from the image
header, before a single pixel is decoded: a tiny file that declares a huge image costs nothing. This module is the
one home of that check; training data (:func:`smartedit.data.schema.decode_image`), batch editing and the
converters use it too (:func:`probe_image` reads the size alone, :func:`open_image` decodes).
"""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps

DEFAULT_MAX_PIXELS = 40_000_000
"""Largest accepted image by default (40 megapixels, e.g. 7300×5475); larger inputs are an error, not an OOM."""
MAX_PIXELS = DEFAULT_MAX_PIXELS
"""The default budget (kept under its old name)."""
MAX_PIXELS_ENV = "SMARTEDIT_MAX_PIXELS"


class ImageInputError(ValueError):
    """An input image cannot be used; the message says why and what to do. ``reason`` is a short category for
    skip records: ``missing``, ``empty file``, ``not an image``, ``truncated``, ``too large``, ``bad input``."""

    def __init__(self, message: str, reason: str = "bad input"):
        super().__init__(message)
        self.reason = reason


def pixel_budget(max_pixels: int | None = None) -> int:
    """``max_pixels`` if given, else ``$SMARTEDIT_MAX_PIXELS``, else :data:`DEFAULT_MAX_PIXELS`."""
    value = max_pixels
    if value is None:
        env = os.environ.get(MAX_PIXELS_ENV, "").strip()
        if not env:
            return DEFAULT_MAX_PIXELS
        try:
            value = int(float(env))
        except ValueError:
            raise ImageInputError(f"{MAX_PIXELS_ENV}={env!r} is not a number of pixels (e.g. 40000000)") from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ImageInputError(f"the pixel budget must be a positive integer, got {value!r}")
    return value


def _read_source(source, name: str) -> tuple[bytes, str]:
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if not os.path.exists(path):
            raise ImageInputError(f"image {path!r} does not exist", "missing")
        if os.path.isdir(path):
            raise ImageInputError(f"image {path!r} is a folder, not an image file", "not an image")
        if os.path.getsize(path) == 0:
            raise ImageInputError(f"image {path!r} is an empty (zero-byte) file", "empty file")
        try:
            with open(path, "rb") as f:
                return f.read(), path
        except OSError as exc:
            raise ImageInputError(f"cannot read image {path!r}: {exc.strerror or exc}", "unreadable") from None
    if isinstance(source, (bytes, bytearray, memoryview)):
        if not len(source):
            raise ImageInputError(f"{name} is empty (zero bytes)", "empty file")
        return bytes(source), name
    raise TypeError(f"cannot read an image from {type(source).__name__}")


def _why(exc: BaseException) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not a format PIL recognises"
    return str(exc) or type(exc).__name__


def _oriented_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF rotation :func:`load_image` applies (read from the header)."""
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block: the decode reports it, the size stays as stored
        orientation = 1
    w, h = image.size
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def probe_image(source, name: str = "image", max_pixels: int | None = None) -> tuple[int, int]:
    """(width, height) of an image file or encoded bytes, as :func:`load_image` would return it, from the header
    alone, after checking it against the pixel budget; no pixel is decoded."""
    data, name = _read_source(source, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(io.BytesIO(data)) as image:
                _check_size(image.size, name, max_pixels)
                return _oriented_size(image)
        except Image.DecompressionBombError:
            raise ImageInputError(f"{name} declares more pixels than the {pixel_budget(max_pixels):,} accepted; "
                                  f"downscale it first", "too large") from None
        except ImageInputError:
            raise
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(f"cannot read {name}: it is not an image ({_why(exc)})", "not an image") from None


def open_image(source, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Decode an image file or encoded bytes (its size checked against the pixel budget first); the PIL image as
    stored (no mode conversion)."""
    return _open(source, name, max_pixels)


def _open(source, name: str, max_pixels: int | None = None) -> Image.Image:
    data, name = _read_source(source, name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the pixel budget below decides
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            raise ImageInputError(f"{name} declares more pixels than the {pixel_budget(max_pixels):,} accepted; "
                                  f"downscale it first", "too large") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise ImageInputError(f"cannot read {name}: it is not an image ({_why(exc)})", "not an image") from None
        _check_size(image.size, name, max_pixels)
        try:
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise ImageInputError(f"cannot read {name}: it is truncated or corrupt ({_why(exc)})", "truncated") from None
    return image


def _check_size(size: tuple[int, int], name: str, max_pixels: int | None = None) -> None:
    w, h = size
    budget = pixel_budget(max_pixels)
    if w < 1 or h < 1:
        raise ImageInputError(f"{name} has no pixels ({w}x{h})", "not an image")
    if w * h > budget:
        raise ImageInputError(f"{name} is {w}x{h} = {w * h:,} pixels, more than the {budget:,} accepted; downscale "
                              f"it first (or raise the budget: {MAX_PIXELS_ENV} / --max-pixels)", "too large")


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


def load_image(source, name: str = "image", max_pixels: int | None = None) -> Image.Image:
    """Any supported input → PIL RGB image (orientation applied, transparency on white)."""
    if isinstance(source, Image.Image):
        _check_size(source.size, name, max_pixels)
        return _to_rgb(source)
    if isinstance(source, np.ndarray):
        return Image.fromarray(_array_to_uint8(source, name))
    if isinstance(source, torch.Tensor):
        t = source.detach().cpu()
        if t.ndim != 3 or t.shape[0] not in (1, 3, 4):
            raise ImageInputError(f"{name} tensor must be [C,H,W] with C in (1,3,4) and values in [0,1], got "
                                  f"{tuple(t.shape)}")
        return load_image(t.permute(1, 2, 0).float().numpy(), name, max_pixels)
    return _to_rgb(_open(source, name, max_pixels))


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


def load_mask(source, size: tuple[int, int] | None = None, name: str = "mask",
              max_pixels: int | None = None) -> torch.Tensor:
    """A region mask (any image input; white / > 0.5 = edit here) → [1, H, W] float tensor in {0, 1}.

    ``size`` (width, height) is the image it belongs to: a mask of another size is an error, not a silent resize.
    """
    if isinstance(source, torch.Tensor) and source.ndim in (2, 3):
        t = source.detach().cpu().float()
        t = t[None] if t.ndim == 2 else t[:1]
    else:
        if isinstance(source, (str, os.PathLike, bytes, bytearray)):
            image = ImageOps.exif_transpose(_open(source, name, max_pixels))
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
                              f"give a mask with the image's size", "mask of the wrong size")
    return (t > 0.5).float()


def to_unit_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB → [3, H, W] float in [0, 1] (uint8 / 255, the same arithmetic as diffusers' image processor)."""
    arr = np.array(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()
