"""Devices, dtypes and the errors a user can fix: one home for the choices the CLI, demo and scripts offer.

``resolve_device("auto")`` is CUDA when present, else CPU; ``resolve_dtype("auto", device)`` is bfloat16 on a CUDA
card that supports it, float16 on an older one, float32 on CPU. Both raise :class:`CLIError` with the fix when the
choice cannot work here (``--device cuda`` on a machine without CUDA, float16 on CPU).
"""

from __future__ import annotations

import torch

__all__ = ["CLIError", "DEVICE_CHOICES", "DTYPES", "resolve_device", "resolve_dtype", "dtype_name"]


class CLIError(Exception):
    """A mistake the user can fix; the command line prints ``error: <message>`` and exits 2, no traceback."""


DEVICE_CHOICES = "auto, cpu, cuda, cuda:N, mps"
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def resolve_device(name: str | torch.device | None) -> torch.device:
    """``auto`` (or None) → ``cuda`` when available, else ``cpu``; anything else must exist on this machine."""
    if isinstance(name, torch.device):
        name = str(name)
    name = (name or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise CLIError(f"unknown device {name!r}; choose one of {DEVICE_CHOICES}") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise CLIError(f"--device {name}: CUDA is not available on this machine (torch {torch.__version__} "
                           f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}); use "
                           f"--device cpu, or --device auto to pick CUDA only when present")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CLIError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s) "
                           f"(cuda:0..cuda:{torch.cuda.device_count() - 1})")
    elif device.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise CLIError(f"--device {name}: Apple MPS is not available here; use --device cpu or auto")
    elif device.type != "cpu":
        raise CLIError(f"unsupported device {name!r}; choose one of {DEVICE_CHOICES}")
    return device


def resolve_dtype(name: str | torch.dtype | None, device: torch.device | str = "cpu") -> torch.dtype:
    """``auto`` (or None) → bf16 on CUDA with bf16 support, fp16 on older CUDA, fp32 elsewhere."""
    device = torch.device(device)
    if isinstance(name, torch.dtype):
        dtype = name
    else:
        name = (name or "auto").strip().lower()
        if name == "auto":
            if device.type == "cuda":
                return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.float32
        if name not in DTYPES:
            raise CLIError(f"unknown dtype {name!r}; choose one of auto, float32, bfloat16, float16")
        dtype = DTYPES[name]
    if dtype == torch.float16 and device.type == "cpu":
        raise CLIError("float16 is not supported for editing on CPU (many CPU kernels lack it); use --dtype "
                       "float32 or bfloat16 on CPU, float16 on a GPU")
    return dtype


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
