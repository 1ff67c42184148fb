"""Reading benchmark images robustly, checking sizes, resizing for metrics.

An image source is a path or the encoded bytes of an image (parquet layouts). A missing file raises
:class:`~smartedit.eval.results.SampleProblem` with the caller's "missing" status; a file that cannot be
decoded raises it with ``unreadable``. Nothing here raises anything else for bad files.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .results import SIZE_MISMATCH, UNREADABLE, SampleProblem

__all__ = [
    "ImageSource",
    "IMAGE_EXTENSIONS",
    "ASPECT_TOLERANCE",
    "describe_source",
    "open_image",
    "load_rgb",
    "load_gray",
    "check_size",
    "find_image",
    "resize",
    "to_float_array",
    "image_cell",
]

ImageSource = Union[str, os.PathLike, bytes, Image.Image]
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
ASPECT_TOLERANCE = 0.01  # relative difference of width/height above which two images "do not match"


def describe_source(src: ImageSource | None) -> str | None:
    """A JSON-friendly description of an image source (its path, or ``<bytes>`` / ``<image>``)."""
    if src is None:
        return None
    if isinstance(src, (bytes, bytearray)):
        return f"<{len(src)} bytes>"
    if isinstance(src, Image.Image):
        return "<in-memory image>"
    return os.fspath(src)


def open_image(src: ImageSource | None, missing_status: str, what: str) -> Image.Image:
    """Decode ``src`` fully; raise SampleProblem(missing_status) if absent, (unreadable) if it cannot be decoded."""
    if src is None:
        raise SampleProblem(missing_status, f"{what}: no file")
    if isinstance(src, Image.Image):
        return src
    if isinstance(src, (bytes, bytearray)):
        if len(src) == 0:
            raise SampleProblem(UNREADABLE, f"{what}: empty image bytes")
        handle = io.BytesIO(src)
        label = f"{what} (<bytes>)"
    else:
        path = Path(src)
        if not path.is_file():
            raise SampleProblem(missing_status, f"{what}: {os.fspath(path)} does not exist")
        handle = path
        label = f"{what} ({os.fspath(path)})"
    try:
        with Image.open(handle) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise SampleProblem(UNREADABLE, f"{label} cannot be decoded: {e}") from e


def load_rgb(src: ImageSource | None, missing_status: str, what: str) -> Image.Image:
    """An RGB image (alpha dropped, palette / gray expanded)."""
    return open_image(src, missing_status, what).convert("RGB")


def load_gray(src: ImageSource | None, missing_status: str, what: str) -> Image.Image:
    """A single-channel 8-bit image ("L"), as PIL's ``convert("L")`` gives it."""
    return open_image(src, missing_status, what).convert("L")


def check_size(reference: tuple[int, int], other: tuple[int, int], what: str,
               tolerance: float = ASPECT_TOLERANCE, allow: bool = False) -> str | None:
    """Raise SampleProblem(size_mismatch) if ``other``'s aspect ratio differs from ``reference``'s by more than
    ``tolerance`` (relative). Same aspect at another resolution is fine (images are resized for the metrics).
    With ``allow`` the mismatch is returned as a note instead of raised."""
    if tuple(reference) == tuple(other):
        return None
    ra = reference[0] / reference[1]
    oa = other[0] / other[1]
    if abs(oa - ra) / ra > tolerance:
        msg = f"{what} is {other[0]}x{other[1]} but the reference is {reference[0]}x{reference[1]}"
        if allow:
            return msg + " (resized anyway: --allow-size-mismatch)"
        raise SampleProblem(SIZE_MISMATCH, msg)
    return None


def find_image(folder: str | os.PathLike, stem: str) -> Path | None:
    """``folder/stem.<ext>`` for the first existing image extension (png first), or None."""
    base = Path(folder)
    for ext in IMAGE_EXTENSIONS:
        p = base / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def resize(image: Image.Image, size: tuple[int, int], resample: Image.Resampling) -> Image.Image:
    """PIL resize (no-op when the size already matches)."""
    if image.size == tuple(size):
        return image
    return image.resize(tuple(size), resample=resample)


def to_float_array(image: Image.Image) -> np.ndarray:
    """HxWx3 (or HxW) float64 array in [0, 1]."""
    return np.asarray(image, dtype=np.float64) / 255.0


def image_cell(value, base: Path) -> ImageSource | None:
    """A datasets / parquet image cell (``{"bytes", "path"}`` struct, raw bytes or a path relative to ``base``) as
    an image source; None when the cell holds neither."""
    if isinstance(value, dict):
        if value.get("bytes"):
            return value["bytes"]
        return base / value["path"] if value.get("path") else None
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str) and value:
        return base / value
    return None
