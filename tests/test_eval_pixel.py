"""Pixel metrics (smartedit.eval.pixel) against an independent numpy implementation, to 1e-6."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from smartedit.eval import pixel


# ---- independent numpy reference ---------------------------------------------------------------------------
def np_gauss(size=11, sigma=1.5):
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2
    g = np.exp(-(x ** 2) / (2 * sigma ** 2))
    g /= g.sum()
    return np.outer(g, g)


def np_filter(img, kernel):
    """Correlation of an HxW image with ``kernel`` after reflect padding (output HxW)."""
    p = kernel.shape[0] // 2
    h, w = img.shape
    padded = np.pad(img, p, mode="reflect")
    out = np.zeros_like(img)
    for i in range(kernel.shape[0]):
        for j in range(kernel.shape[1]):
            out += kernel[i, j] * padded[i:i + h, j:j + w]
    return out


def np_ssim_map(a, b):
    """SSIM map HxWx3 (Gaussian 11, sigma 1.5, K1 .01, K2 .03, data range 1, reflect padding)."""
    k = np_gauss()
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    maps = []
    for c in range(3):
        x, y = a[..., c], b[..., c]
        mx, my = np_filter(x, k), np_filter(y, k)
        sxx = np.maximum(np_filter(x * x, k) - mx * mx, 0)
        syy = np.maximum(np_filter(y * y, k) - my * my, 0)
        sxy = np_filter(x * y, k) - mx * my
        maps.append(((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2)))
    return np.stack(maps, axis=-1)


def np_masked_mean(values, weight):
    w = weight[..., None] * np.ones(values.shape[-1])
    return (values * w).sum() / w.sum()


def np_psnr(m):
    return 10 * np.log10(1.0 / m)


# ---- fixtures --------------------------------------------------------------------------------------------
def random_pair(seed, h=64, w=80):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    noise = rng.integers(-40, 41, (h, w, 3))
    b = np.clip(a.astype(int) + noise, 0, 255).astype(np.uint8)
    return a, b


def random_mask(seed, h=64, w=80):
    rng = np.random.default_rng(seed + 100)
    mask = np.zeros((h, w), dtype=bool)
    for _ in range(3):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        mask[y:y + rng.integers(5, 25), x:x + rng.integers(5, 30)] = True
    return mask


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_image_metrics_match_numpy(seed):
    a8, b8 = random_pair(seed)
    a, b = a8 / 255.0, b8 / 255.0
    mse = ((a - b) ** 2).mean()
    assert pixel.mse(a8, b8) == pytest.approx(mse, abs=1e-12)
    assert pixel.l2(a8, b8) == pytest.approx(mse, abs=1e-12)
    assert pixel.l1(a8, b8) == pytest.approx(np.abs(a - b).mean(), abs=1e-12)
    assert pixel.psnr(a8, b8) == pytest.approx(np_psnr(mse), abs=1e-6)
    assert pixel.ssim(a8, b8) == pytest.approx(np_ssim_map(a, b).mean(), abs=1e-6)
    # every input type gives the same numbers
    assert pixel.ssim(Image.fromarray(a8), torch.from_numpy(b).permute(2, 0, 1)) == pytest.approx(
        np_ssim_map(a, b).mean(), abs=1e-6)


@pytest.mark.parametrize("seed", [0, 3])
def test_background_only_metrics_match_numpy(seed):
    a8, b8 = random_pair(seed)
    a, b = a8 / 255.0, b8 / 255.0
    edit = random_mask(seed)
    keep = (~edit).astype(np.float64)
    out = pixel.background_metrics(a8, b8, edit)
    mse_bg = np_masked_mean((a - b) ** 2, keep)
    assert out["mse_bg"] == pytest.approx(mse_bg, abs=1e-12)
    assert out["psnr_bg"] == pytest.approx(np_psnr(mse_bg), abs=1e-6)
    assert out["ssim_bg"] == pytest.approx(np_masked_mean(np_ssim_map(a, b), keep), abs=1e-6)
    # explicit background pixels only: the same as indexing
    assert out["mse_bg"] == pytest.approx(((a - b) ** 2)[~edit].mean(), abs=1e-12)
    assert pixel.l1(a8, b8, keep) == pytest.approx(np.abs(a - b)[~edit].mean(), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 4])
def test_reference_convention_matches_numpy(seed):
    """SmartEdit's script: both images × (1 − mask/255) (soft, JPEG mask values), whole-image metrics."""
    a8, b8 = random_pair(seed)
    a, b = a8 / 255.0, b8 / 255.0
    gray = np.where(random_mask(seed), 255, 0).astype(np.float64)
    gray = np.clip(gray + np.random.default_rng(seed).integers(-6, 7, gray.shape), 0, 255)  # JPEG-like noise
    keep = 1 - gray / 255.0
    out = pixel.reference_metrics(a8, b8, keep)
    az, bz = a * keep[..., None], b * keep[..., None]
    mse = ((az - bz) ** 2).mean()
    assert out["mse_ref"] == pytest.approx(mse, abs=1e-12)
    assert out["psnr_ref"] == pytest.approx(np_psnr(mse), abs=1e-6)
    assert out["ssim_ref"] == pytest.approx(np_ssim_map(az, bz).mean(), abs=1e-6)


def test_reference_convention_inflates_and_empty_mask_is_whole_image():
    a8, b8 = random_pair(5)
    edit = random_mask(5)
    bg = pixel.background_metrics(a8, b8, edit)
    ref = pixel.reference_metrics(a8, b8, (~edit).astype(float))
    assert ref["psnr_ref"] > bg["psnr_bg"] and ref["mse_ref"] < bg["mse_bg"]
    none = np.zeros_like(edit)
    empty = pixel.background_metrics(a8, b8, none)
    assert empty["psnr_bg"] == pytest.approx(pixel.psnr(a8, b8), abs=1e-9)
    assert empty["ssim_bg"] == pytest.approx(pixel.ssim(a8, b8), abs=1e-12)


def test_psnr_capped_and_nan_for_empty_weight():
    a8, _ = random_pair(6)
    assert pixel.psnr(a8, a8) == pixel.PSNR_MAX_DB
    assert pixel.psnr(a8, a8, np.ones(a8.shape[:2])) == pixel.PSNR_MAX_DB
    assert math.isnan(pixel.mse(a8, a8, np.zeros(a8.shape[:2])))


def test_change_mask_and_iou_match_numpy():
    a8, b8 = random_pair(7)
    a, b = a8 / 255.0, b8 / 255.0
    changed = pixel.change_mask(a8, b8, 0.1).numpy()
    ref = np.abs(a - b).max(axis=-1) > 0.1
    assert np.array_equal(changed, ref)
    true = random_mask(7)
    expected = (ref & true).sum() / (ref | true).sum()
    assert pixel.iou(changed, true) == pytest.approx(expected, abs=1e-12)
    assert pixel.iou(np.zeros((3, 3), bool), np.zeros((3, 3), bool)) == 1.0


def test_size_mismatch_is_an_error():
    a8, _ = random_pair(0, 32, 32)
    b8, _ = random_pair(0, 32, 40)
    with pytest.raises(ValueError, match="differ in size"):
        pixel.mse(a8, b8)
    with pytest.raises(ValueError, match="mask"):
        pixel.mse(a8, a8, np.ones((10, 10)))


def test_psnr_agrees_with_torchmetrics():
    a8, b8 = random_pair(8)
    assert pixel.psnr(a8, b8) == pytest.approx(pixel.psnr_torchmetrics(a8, b8), abs=1e-4)


def test_ssim_equals_torchmetrics():
    a8, b8 = random_pair(9)
    edit = random_mask(9)
    keep = (~edit).astype(np.float64)
    assert pixel.ssim(a8, b8) == pytest.approx(pixel.ssim_torchmetrics(a8, b8), abs=1e-12)
    az, bz = a8 * keep[..., None] / 255.0, b8 * keep[..., None] / 255.0
    assert pixel.reference_metrics(a8, b8, keep)["ssim_ref"] == pytest.approx(pixel.ssim_torchmetrics(az, bz),
                                                                              abs=1e-12)
