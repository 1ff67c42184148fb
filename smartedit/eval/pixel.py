"""Pixel metrics on images in [0, 1]: MSE, L1, L2, PSNR, SSIM, change masks and IoU.

All computations run in float64. Images are ``[3, H, W]`` tensors, ``HxWx3`` arrays (uint8 → /255, float as
is) or PIL images; masks / weights are ``HxW``.

Two conventions for "background preservation" (the region outside the edit mask):

* **background-only** (``*_bg``, the true measure): statistics over background pixels only.
  MSE_bg = Σ_bg (a−b)² / (3·|bg|); PSNR_bg = 10·log10(1 / MSE_bg); SSIM_bg = mean of the SSIM map over
  background pixels (the SSIM map is torchmetrics': 11×11 Gaussian window, σ = 1.5, reflect padding at the
  border, K1 = 0.01, K2 = 0.03, data range 1; computed here with a separable window, equal to torchmetrics'
  ``structural_similarity_index_measure`` to ~1e-15). With an empty mask every ``*_bg`` equals the whole-image
  metric.
* **reference convention** (``*_ref``, what SmartEdit's released script computes): both images are multiplied
  by the keep weight (1 − mask/255; the edit region becomes black in both) and the metric is taken over the
  whole image. The zeroed pixels are identical, so this inflates PSNR / SSIM and deflates MSE / LPIPS in
  proportion to the edit area.

PSNR is capped at :data:`PSNR_MAX_DB` (identical images would otherwise give +inf and an infinite mean) and is
computed from the float64 MSE (torchmetrics' PSNR takes its logarithm in float32, ~1e-6 dB off).
L2 is the mean squared error (MagicBrush's convention, ``torch.nn.MSELoss``), not its square root.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

__all__ = [
    "PSNR_MAX_DB",
    "SSIM_SIGMA",
    "SSIM_KERNEL",
    "as_chw",
    "as_weight",
    "mse",
    "l1",
    "l2",
    "psnr",
    "psnr_from_mse",
    "psnr_torchmetrics",
    "ssim_map",
    "ssim_torchmetrics",
    "ssim",
    "background_metrics",
    "reference_metrics",
    "change_mask",
    "iou",
]

PSNR_MAX_DB = 100.0
SSIM_SIGMA = 1.5
SSIM_KERNEL = 11


def as_chw(image: Any) -> torch.Tensor:
    """PIL / HxWx3 array (uint8 → /255, float as is) / [3,H,W] tensor → float64 tensor [3, H, W]."""
    if isinstance(image, Image.Image):
        image = np.asarray(image.convert("RGB"))
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[-1] != 3:
            raise ValueError(f"expected an HxWx3 array, got shape {image.shape}")
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        return torch.from_numpy(np.ascontiguousarray(image, dtype=np.float64) / scale).permute(2, 0, 1)
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"expected a [3,H,W] tensor, got shape {tuple(image.shape)}")
        return image.to(torch.float64)
    raise TypeError(f"unsupported image type {type(image).__name__}")


def as_weight(mask: Any) -> torch.Tensor:
    """HxW bool / float mask (array or tensor) → float64 tensor [H, W]."""
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, torch.Tensor) or mask.ndim != 2:
        raise ValueError("a mask must be a 2-D array or tensor (HxW)")
    return mask.to(torch.float64)


def _pair(a: Any, b: Any, weight: Any | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    a, b = as_chw(a), as_chw(b)
    if a.shape != b.shape:
        raise ValueError(f"images differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
    w = None
    if weight is not None:
        w = as_weight(weight)
        if tuple(w.shape) != tuple(a.shape[-2:]):
            raise ValueError(f"mask is {tuple(w.shape)} but the images are {tuple(a.shape[-2:])}")
    return a, b, w


def _weighted_mean(values: torch.Tensor, w: torch.Tensor | None) -> float:
    """Mean of [C,H,W] values over all elements, or weighted per pixel by w [H,W] (same weight for every
    channel). NaN if the weights sum to zero."""
    if w is None:
        return float(values.mean())
    total = float(w.sum()) * values.shape[0]
    if total <= 0:
        return math.nan
    return float((values * w[None]).sum()) / total


def mse(a: Any, b: Any, weight: Any | None = None) -> float:
    """Mean squared error over all pixels and channels (or over the weighted pixels)."""
    a, b, w = _pair(a, b, weight)
    return _weighted_mean((a - b) ** 2, w)


def l1(a: Any, b: Any, weight: Any | None = None) -> float:
    """Mean absolute error over all pixels and channels (or over the weighted pixels)."""
    a, b, w = _pair(a, b, weight)
    return _weighted_mean((a - b).abs(), w)


def l2(a: Any, b: Any, weight: Any | None = None) -> float:
    """MagicBrush's "L2": the mean squared error (not its root)."""
    return mse(a, b, weight)


def psnr_from_mse(value: float, data_range: float = 1.0) -> float:
    """10·log10(range² / MSE), capped at PSNR_MAX_DB; NaN stays NaN."""
    if math.isnan(value):
        return math.nan
    if value <= 0:
        return PSNR_MAX_DB
    return min(10.0 * math.log10(data_range ** 2 / value), PSNR_MAX_DB)


def psnr(a: Any, b: Any, weight: Any | None = None, data_range: float = 1.0) -> float:
    """PSNR in dB from the (weighted) float64 MSE. Same definition as torchmetrics' ``peak_signal_noise_ratio``,
    which computes its logarithm in float32 (about 1e-6 dB off); see :func:`psnr_torchmetrics`."""
    return psnr_from_mse(mse(a, b, weight), data_range)


def psnr_torchmetrics(a: Any, b: Any, data_range: float = 1.0) -> float:
    """Whole-image PSNR exactly as torchmetrics computes it (what SmartEdit's reference script called)."""
    a, b, _ = _pair(a, b, None)
    return min(float(peak_signal_noise_ratio(a[None], b[None], data_range=data_range)), PSNR_MAX_DB)


def _gaussian_1d(size: int, sigma: float) -> torch.Tensor:
    dist = torch.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=torch.float64)
    g = torch.exp(-((dist / sigma) ** 2) / 2)
    return g / g.sum()


def ssim_map(a: Any, b: Any) -> torch.Tensor:
    """SSIM map [3, H, W] with torchmetrics' definition (Gaussian 11×11 window, σ 1.5, reflect padding, K1 0.01,
    K2 0.03, data range 1, variances clamped at 0), in float64. The Gaussian window is applied as two 1-D passes
    (it is separable), much faster on CPU than torchmetrics' 2-D float64 convolution; the two
    agree to ~1e-15 (tested)."""
    a, b, _ = _pair(a, b, None)
    pad = SSIM_KERNEL // 2
    if min(a.shape[-2:]) <= pad:
        raise ValueError(f"images must be larger than {pad} pixels for SSIM, got {tuple(a.shape[-2:])}")
    stack = F.pad(torch.stack([a, b, a * a, b * b, a * b]), (pad, pad, pad, pad), mode="reflect")  # [5, 3, H+, W+]
    g = _gaussian_1d(SSIM_KERNEL, SSIM_SIGMA)
    rows = stack.unfold(2, SSIM_KERNEL, 1) @ g                         # vertical pass   [5, 3, H, W+2p]
    mu_a, mu_b, aa, bb, ab = rows.unfold(3, SSIM_KERNEL, 1) @ g        # horizontal pass [5, 3, H, W]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    var_a = (aa - mu_a ** 2).clamp(min=0)
    var_b = (bb - mu_b ** 2).clamp(min=0)
    cov = ab - mu_a * mu_b
    return ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2))


def ssim_torchmetrics(a: Any, b: Any) -> float:
    """Whole-image SSIM exactly as torchmetrics computes it (what SmartEdit's reference script called)."""
    a, b, _ = _pair(a, b, None)
    return float(structural_similarity_index_measure(a[None], b[None], gaussian_kernel=True, sigma=SSIM_SIGMA,
                                                     kernel_size=SSIM_KERNEL, data_range=1.0))


def ssim(a: Any, b: Any, weight: Any | None = None) -> float:
    """Mean SSIM (the mean of :func:`ssim_map`, or its weighted mean over pixels)."""
    a, b, w = _pair(a, b, weight)
    return _weighted_mean(ssim_map(a, b), w)


def background_metrics(inp: Any, out: Any, edit_mask: Any) -> dict[str, float]:
    """True background-only metrics: ``mse_bg``, ``psnr_bg``, ``ssim_bg`` over pixels where ``edit_mask`` is 0."""
    edit = as_weight(edit_mask) > 0.5
    keep = (~edit).to(torch.float64)
    m = mse(inp, out, keep)
    return {"mse_bg": m, "psnr_bg": psnr_from_mse(m), "ssim_bg": ssim(inp, out, keep)}


def reference_metrics(inp: Any, out: Any, keep_weight: Any) -> dict[str, float]:
    """SmartEdit reference convention: multiply both images by ``keep_weight`` (1 − mask/255), then whole-image
    ``mse_ref``, ``psnr_ref`` (data range 1) and ``ssim_ref`` (torchmetrics' SSIM definition)."""
    a, b, w = _pair(inp, out, keep_weight)
    a, b = a * w[None], b * w[None]
    return {"mse_ref": mse(a, b), "psnr_ref": psnr(a, b), "ssim_ref": ssim(a, b)}


def change_mask(a: Any, b: Any, threshold: float) -> torch.Tensor:
    """Pixels that changed: max over channels of |a − b| > ``threshold`` (images in [0, 1]) → bool [H, W]."""
    a, b, _ = _pair(a, b, None)
    return (a - b).abs().amax(dim=0) > threshold


def iou(pred: Any, true: Any) -> float:
    """|pred ∧ true| / |pred ∨ true| for boolean masks; 1.0 when both are empty."""
    p, t = as_weight(pred) > 0.5, as_weight(true) > 0.5
    if p.shape != t.shape:
        raise ValueError(f"masks differ in size: {tuple(p.shape)} vs {tuple(t.shape)}")
    union = int((p | t).sum())
    if union == 0:
        return 1.0
    return int((p & t).sum()) / union
