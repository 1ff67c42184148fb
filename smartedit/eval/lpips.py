"""LPIPS (squeeze, v0.1) from local weight files, with a background-only variant.

torchmetrics' LPIPS builds its backbone through torchvision and downloads the weights, neither of which is
available here, so the network is written out: SqueezeNet 1.1's ``features`` (module indices identical to
torchvision's, so its state dict loads 1:1) tapped after features 1, 4, 7, 9, 10, 11, 12 (64, 128, 256, 384,
384, 512, 512 channels), and lpips' seven linear heads ``lin{k}.model.1.weight`` (1×1 convs, no bias).

    d(x, y) = Σ_k mean_{h,w} lin_k( (n(f_k(x')) − n(f_k(y')))² ),   x' = (2x − 1 − shift) / scale,

with n(·) the unit-normalisation over channels (eps 1e-10, as lpips), shift = (−.030, −.088, −.188) and
scale = (.458, .448, .450); images are in [0, 1].

Background-only LPIPS (:meth:`LPIPS.masked`): the mean over (h, w) of each layer's distance map is replaced
by a weighted mean with weights = the fraction of each feature cell that is background (the pixel mask
area-resampled to that layer's grid). With an all-background mask it is exactly LPIPS.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .backbones import BackboneError, BackboneInfo, combined_sha256, require_dir, sha256_file

logger = logging.getLogger(__name__)

__all__ = ["Fire", "SqueezeNetFeatures", "LPIPS", "CHANNELS", "TAPS", "load_lpips", "load_state_file",
           "normalize_lin_keys", "normalize_backbone_keys", "find_lpips_files"]

CHANNELS = (64, 128, 256, 384, 384, 512, 512)
TAPS = (1, 4, 7, 9, 10, 11, 12)  # indices into SqueezeNet 1.1 features whose outputs are compared
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


class Fire(nn.Module):
    """SqueezeNet fire module: 1×1 squeeze, then 1×1 and 3×3 expands concatenated (ReLU after each conv)."""

    def __init__(self, inplanes: int, squeeze: int, expand1x1: int, expand3x3: int):
        super().__init__()
        self.squeeze = nn.Conv2d(inplanes, squeeze, kernel_size=1)
        self.squeeze_activation = nn.ReLU()
        self.expand1x1 = nn.Conv2d(squeeze, expand1x1, kernel_size=1)
        self.expand1x1_activation = nn.ReLU()
        self.expand3x3 = nn.Conv2d(squeeze, expand3x3, kernel_size=3, padding=1)
        self.expand3x3_activation = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.squeeze_activation(self.squeeze(x))
        return torch.cat([self.expand1x1_activation(self.expand1x1(x)),
                          self.expand3x3_activation(self.expand3x3(x))], dim=1)


class SqueezeNetFeatures(nn.Module):
    """SqueezeNet 1.1 ``features`` with torchvision's module indices; returns the seven tapped activations."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=2),   # 0
            nn.ReLU(),                                   # 1  → tap 1 (64)
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(64, 16, 64, 64),                        # 3
            Fire(128, 16, 64, 64),                       # 4  → tap 2 (128)
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(128, 32, 128, 128),                     # 6
            Fire(256, 32, 128, 128),                     # 7  → tap 3 (256)
            nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
            Fire(256, 48, 192, 192),                     # 9  → tap 4 (384)
            Fire(384, 48, 192, 192),                     # 10 → tap 5 (384)
            Fire(384, 64, 256, 256),                     # 11 → tap 6 (512)
            Fire(512, 64, 256, 256),                     # 12 → tap 7 (512)
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in TAPS:
                taps.append(x)
        return taps


class _Lin(nn.Module):
    """lpips' NetLinLayer: ``model = Sequential(Dropout, Conv1x1(C→1, no bias))`` (key ``model.1.weight``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS-squeeze distance between images in [0, 1] ([B,3,H,W] or [3,H,W]); always in eval mode."""

    def __init__(self):
        super().__init__()
        self.net = SqueezeNetFeatures()
        for k, c in enumerate(CHANNELS):
            self.add_module(f"lin{k}", _Lin(c))
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.info: BackboneInfo | None = None
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "LPIPS":  # dropout must never be active
        return super().train(False)

    @property
    def lins(self) -> list[_Lin]:
        return [getattr(self, f"lin{k}") for k in range(len(CHANNELS))]

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim == 3:
            x = x[None]
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected [B,3,H,W] or [3,H,W] images in [0,1], got {tuple(x.shape)}")
        x = x.to(device=self.shift.device, dtype=self.shift.dtype)
        return (2 * x - 1 - self.shift) / self.scale

    def layer_distances(self, a: torch.Tensor, b: torch.Tensor) -> list[torch.Tensor]:
        """Per-layer distance maps lin_k((n(f_k(a)) − n(f_k(b)))²), each [B, 1, h_k, w_k]."""
        a, b = self._prepare(a), self._prepare(b)
        if a.shape != b.shape:
            raise ValueError(f"images differ in size: {tuple(a.shape)} vs {tuple(b.shape)}")
        feats = self.net(torch.cat([a, b]))  # one pass for both images
        n = a.shape[0]
        fa, fb = [f[:n] for f in feats], [f[n:] for f in feats]
        out = []
        for lin, x, y in zip(self.lins, fa, fb):
            x = x / (torch.linalg.vector_norm(x, dim=1, keepdim=True) + NORM_EPS)
            y = y / (torch.linalg.vector_norm(y, dim=1, keepdim=True) + NORM_EPS)
            out.append(lin((x - y) ** 2))
        return out

    @torch.no_grad()
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """LPIPS distance per image pair, [B]."""
        return sum(d.mean(dim=(2, 3)) for d in self.layer_distances(a, b))[:, 0]

    @torch.no_grad()
    def masked(self, a: torch.Tensor, b: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Background-only LPIPS, [B]: each layer's map averaged with ``weight`` ([H,W] or [B,H,W], 1 =
        background) area-resampled to the layer's grid. NaN where a layer has no background weight."""
        if weight.ndim == 2:
            weight = weight[None]
        w = weight[:, None].to(device=self.shift.device, dtype=self.shift.dtype)
        total = 0
        for d in self.layer_distances(a, b):
            wk = F.interpolate(w, size=d.shape[-2:], mode="area")
            denom = wk.sum(dim=(1, 2, 3))
            value = (d * wk).sum(dim=(1, 2, 3)) / denom
            total = total + torch.where(denom > 0, value, torch.full_like(value, float("nan")))
        return total

    def distance(self, a, b) -> float:
        """LPIPS of one pair of [3,H,W] images as a float."""
        return float(self(a, b)[0])

    def masked_distance(self, a, b, weight) -> float:
        """Background-only LPIPS of one pair of [3,H,W] images with an [H,W] background weight, as a float."""
        return float(self.masked(a, b, weight)[0])


# ---- weights ---------------------------------------------------------------------------------------------
_LIN_PATTERNS = (re.compile(r"^(?:module\.)?lin(\d)\.model\.(?:0|1)\.weight$"),
                 re.compile(r"^(?:module\.)?lins\.(\d)\.model\.(?:0|1)\.weight$"))
_NET_PATTERNS = (re.compile(r"^(?:module\.)?features\.(\d+)\.(.+)$"),                 # torchvision
                 re.compile(r"^(?:module\.)?net\.slice\d\.(\d+)\.(.+)$"),              # lpips package
                 re.compile(r"^(?:module\.)?net\.slices\.\d\.(\d+)\.(.+)$"))           # torchmetrics


def load_state_file(path: Path) -> dict[str, torch.Tensor]:
    """A state dict from ``.safetensors`` or a torch pickle (``weights_only=True``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(os.fspath(path))
    state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict")
    return state


def normalize_lin_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """lpips heads in any of the public spellings → ``lin{k}.model.1.weight``."""
    out = {}
    for key, value in state.items():
        for pattern in _LIN_PATTERNS:
            m = pattern.match(key)
            if m:
                out[f"lin{m.group(1)}.model.1.weight"] = value
                break
    return out


def normalize_backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SqueezeNet weights (torchvision ``features.*``, lpips ``net.sliceN.*``, torchmetrics ``net.slices.N.*``)
    → ``features.<i>.*``; ``classifier.*`` and anything else is dropped."""
    out = {}
    for key, value in state.items():
        for pattern in _NET_PATTERNS:
            m = pattern.match(key)
            if m:
                out[f"features.{m.group(1)}.{m.group(2)}"] = value
                break
    return out


def find_lpips_files(directory: Path) -> tuple[Path, Path]:
    """(backbone file, heads file) in an LPIPS folder, or BackboneError naming the layout."""
    def pick(names: list[str], globs: list[str]) -> Path | None:
        for n in names:
            if (directory / n).is_file():
                return directory / n
        for g in globs:
            found = sorted(directory.glob(g))
            if found:
                return found[0]
        return None

    backbone = pick(["squeezenet1_1.safetensors", "squeezenet1_1.pth"],
                    ["squeezenet1_1*.safetensors", "squeezenet1_1*.pth"])
    heads = pick(["squeeze.safetensors", "squeeze.pth"], [])
    missing = [n for n, p in (("squeezenet1_1 backbone", backbone), ("squeeze heads", heads)) if p is None]
    if missing:
        raise BackboneError("lpips", directory, f"missing {', '.join(missing)}")
    return backbone, heads  # type: ignore[return-value]


def load_lpips(path: str | os.PathLike, device: str | torch.device = "cpu") -> LPIPS:
    """Build :class:`LPIPS` from a local folder (see ``LAYOUTS['lpips']``); every weight must be present."""
    directory = require_dir(path, "lpips")
    backbone_file, heads_file = find_lpips_files(directory)
    model = LPIPS()
    try:
        net_state = normalize_backbone_keys(load_state_file(backbone_file))
        lin_state = normalize_lin_keys(load_state_file(heads_file))
    except Exception as e:  # corrupt file, wrong pickle, ...
        raise BackboneError("lpips", directory, f"cannot read weights: {e}") from e
    expected_net = model.net.state_dict()
    expected_lin = {k: v for k, v in model.state_dict().items() if k.startswith("lin")}
    problems = []
    for expected, state, label in ((expected_net, net_state, backbone_file.name),
                                   (expected_lin, lin_state, heads_file.name)):
        missing = sorted(set(expected) - set(state))
        wrong = sorted(k for k in set(expected) & set(state) if tuple(state[k].shape) != tuple(expected[k].shape))
        if missing:
            problems.append(f"{label}: missing {missing[:4]}{' …' if len(missing) > 4 else ''}")
        if wrong:
            problems.append(f"{label}: wrong shapes for {wrong[:4]}")
    if problems:
        raise BackboneError("lpips", directory, "; ".join(problems))
    model.net.load_state_dict(net_state, strict=True)
    model.load_state_dict(lin_state, strict=False)
    hashes = {backbone_file.name: sha256_file(backbone_file), heads_file.name: sha256_file(heads_file)}
    model.info = BackboneInfo(kind="lpips", name="lpips-squeeze-v0.1", arch="SqueezeNet 1.1 features + 7 lpips "
                              "v0.1 linear heads", path=os.fspath(directory), files=hashes,
                              sha256=combined_sha256(hashes))
    return model.to(device)
