"""Reading training checkpoints without running code from them: ``torch.load(weights_only=True)`` plus an explicit
allow-list of the few non-tensor types DeepSpeed's checkpoints hold.

A ``.pt`` file is a pickle, and a pickle can name any Python callable to run while it is read. DeepSpeed reads its
checkpoints (``mp_rank_00_model_states.pt``, the ZeRO optimizer shards) with ``weights_only=False`` in its checkpoint
engine and in ``zero_to_fp32``; :func:`safe_torch_load` makes every ``torch.load`` inside it use the weights-only
unpickler with :data:`CHECKPOINT_GLOBALS` allowed, so ``--resume`` and :mod:`smartedit.train.consolidate` go through
DeepSpeed's own code and still only ever build tensors, containers, numbers, strings and these types. A file that
needs anything else is refused with :class:`UnsafeCheckpointError`, naming the file and the global it asked for.
"""

from __future__ import annotations

import contextlib
import pickle
import re
import threading

import torch

__all__ = ["CHECKPOINT_GLOBALS", "UnsafeCheckpointError", "load_checkpoint_file", "safe_torch_load"]


def _checkpoint_globals() -> list:
    """The types a ZeRO-1/2/3 checkpoint (fp32 or bf16, with or without offload) holds besides tensors and
    containers: the optimizer's static loss scaler, the ZeRO stage enum and bf16's fragment addresses."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


CHECKPOINT_GLOBALS: list = []
"""Filled on first use (importing DeepSpeed is slow): the allow-list of :func:`_checkpoint_globals`."""


class UnsafeCheckpointError(ValueError):
    """A checkpoint file asks the unpickler for something outside the allow-list (or is not a torch file)."""


_REAL_LOAD = torch.load
_LOCK = threading.RLock()
_DEPTH = 0


def load_checkpoint_file(path, map_location=None, mmap: bool | None = None, **_ignored):
    """``torch.load(path, weights_only=True)`` with :data:`CHECKPOINT_GLOBALS` allowed; the caller's
    ``weights_only`` / ``pickle_module`` arguments are ignored (this is the point)."""
    if not CHECKPOINT_GLOBALS:
        CHECKPOINT_GLOBALS.extend(_checkpoint_globals())
    kwargs = {"map_location": map_location, "weights_only": True}
    if mmap is not None:
        kwargs["mmap"] = mmap
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            return _REAL_LOAD(path, **kwargs)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        detail = f"it names {found.group(1)}" if found else str(exc).strip().splitlines()[-1][:200]
        raise UnsafeCheckpointError(
            f"refusing to load {path}: it asks for code or types that a training checkpoint does not hold "
            f"({detail}). Only tensors, plain containers and DeepSpeed's loss scaler / ZeRO stage / fragment "
            f"records are read; a checkpoint that needs more was not written by this trainer (or was tampered "
            f"with) and is not loaded") from None
    except (RuntimeError, EOFError) as exc:
        raise UnsafeCheckpointError(f"cannot read {path}: it is truncated or not a torch checkpoint "
                                    f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None


def _load(f, map_location=None, pickle_module=None, *, weights_only=None, mmap=None, **kwargs):
    return load_checkpoint_file(f, map_location=map_location, mmap=mmap)


@contextlib.contextmanager
def safe_torch_load():
    """Within the block, every ``torch.load`` call (DeepSpeed's included) reads weights only, through
    :func:`load_checkpoint_file`. Re-entrant; the original ``torch.load`` is back afterwards."""
    global _DEPTH
    with _LOCK:
        if _DEPTH == 0:
            torch.load = _load
        _DEPTH += 1
    try:
        yield
    finally:
        with _LOCK:
            _DEPTH -= 1
            if _DEPTH == 0:
                torch.load = _REAL_LOAD
