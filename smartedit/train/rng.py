"""Capture and restore the global random generators (python, numpy, torch CPU and CUDA) as plain JSON.

Saved per process with every checkpoint, so a resumed run draws exactly the random numbers the uninterrupted run
would have drawn (dropout, LoRA dropout). JSON instead of a pickle: a checkpoint never needs unpickling.
The randomness of the training *data* and of the diffusion noise / CFG dropout does not come from these generators:
it is a pure function of (seed, position), see :mod:`smartedit.data.loader` and :func:`step_generator`.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Any

import numpy as np
import torch

__all__ = ["capture_rng", "restore_rng", "seed_everything", "derive_seed", "step_generator", "save_rng", "load_rng"]


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (stable across processes and Python versions)."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
    torch.manual_seed(seed)


def step_generator(seed: int, rank: int, micro_index: int, device: torch.device) -> torch.Generator:
    """The generator of one micro-batch's diffusion noise, timesteps and CFG dropout: a function of the position."""
    return torch.Generator(device=device).manual_seed(derive_seed(seed, 1, rank, micro_index))


def capture_rng() -> dict[str, Any]:
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    out: dict[str, Any] = {
        "python": [version, list(state), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        out["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return out


def restore_rng(state: dict[str, Any]) -> None:
    version, py_state, gauss = state["python"]
    random.setstate((version, tuple(py_state), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_rng(path: str, rank: int | None = None, step: int | None = None) -> None:
    """Write this process's random state, labelled with the process ``rank`` and optimizer ``step`` it belongs to."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump({"rank": rank, "step": step, "state": capture_rng()}, f)
        f.flush()
        os.fsync(f.fileno())


def load_rng(path: str, rank: int | None = None, step: int | None = None) -> dict[str, Any]:
    """The random state saved in ``path``; when ``rank`` / ``step`` are given, the file must carry the same labels
    (a state from another process or another step would silently break exact resume)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint lacks the random state {path!r}: it was written by a different number "
                                f"of processes, or is incomplete")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"random state {path} is not valid JSON ({exc.msg})") from None
    if not isinstance(data, dict):
        raise ValueError(f"random state {path} is not a JSON object")
    if "state" not in data:  # written before the files were labelled
        return data
    for name, want in (("rank", rank), ("step", step)):
        if want is not None and data.get(name) != want:
            raise ValueError(f"random state {path} belongs to {name} {data.get(name)!r}, not {want}: the checkpoint "
                             f"is mixed up; resume from another one")
    return data["state"]
