"""Atomic training checkpoints: a staging folder, a manifest written last, one rename.

Layout under ``OUTPUT/checkpoints/``::

    step-00001000/                 a complete checkpoint (it has a valid manifest.json)
        deepspeed/ds/...           DeepSpeed's model states and ZeRO optimizer shards (one per process)
        rng/rank-00000.json ...    python / numpy / torch random state of each process
        trainer_state.json         step, data position, skipped-step counters, world size, batch layout
        experiment.json            the experiment config of the run
        model/config.json          the model config (after the stage's changes: LoRA, BIM) + model/tokenizer/
        manifest.json              written LAST: every file with its size
    .staging-step-00002000/        a checkpoint being written (ignored; removed by the next save)

Every process writes its own files into the staging folder; after a barrier the main process writes the manifest,
fsyncs it and renames the folder to ``step-N``. A run killed at any moment therefore leaves either a complete
checkpoint or a staging folder that is never read. Multi-node runs need ``OUTPUT`` on a shared file system.
:func:`find_checkpoint` (``--resume latest``) picks the newest folder whose manifest lists files that all exist with
the recorded sizes; :func:`prune` keeps the newest ``keep_last``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS_DIR", "MANIFEST_NAME", "TRAINER_STATE_NAME", "checkpoint_name", "staging_dir",
           "write_manifest", "read_manifest", "verify_checkpoint", "list_checkpoints", "find_checkpoint",
           "finalize", "prune", "write_json", "read_json"]

CHECKPOINTS_DIR = "checkpoints"
MANIFEST_NAME = "manifest.json"
TRAINER_STATE_NAME = "trainer_state.json"
FORMAT = "smartedit-train-checkpoint"
_STEP_RE = re.compile(r"^step-(\d+)$")


def checkpoint_name(step: int) -> str:
    return f"step-{step:08d}"


def staging_dir(root: str, step: int) -> str:
    return os.path.join(root, f".staging-{checkpoint_name(step)}")


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str, data: Any) -> None:
    """Write JSON through a temporary file and an atomic replace."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: str) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _files(directory: str) -> dict[str, int]:
    out = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            if rel != MANIFEST_NAME:
                out[rel] = os.path.getsize(path)
    return dict(sorted(out.items()))


def write_manifest(directory: str, info: dict[str, Any]) -> dict[str, Any]:
    """List every file of ``directory`` with its size, plus ``info``; written last, atomically."""
    manifest = {"format": FORMAT, "version": 1, "created": time.time(), **info, "files": _files(directory)}
    write_json(os.path.join(directory, MANIFEST_NAME), manifest)
    return manifest


def read_manifest(directory: str) -> dict[str, Any] | None:
    path = os.path.join(directory, MANIFEST_NAME)
    if not os.path.isfile(path):
        return None
    try:
        data = read_json(path)
    except (OSError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and data.get("format") == FORMAT else None


def verify_checkpoint(directory: str) -> list[str]:
    """Problems with a checkpoint folder (empty when it is complete)."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"{directory} has no valid {MANIFEST_NAME} (incomplete or not a checkpoint)"]
    problems = []
    for rel, size in manifest.get("files", {}).items():
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            problems.append(f"missing file {rel}")
        elif os.path.getsize(path) != size:
            problems.append(f"{rel} has {os.path.getsize(path)} bytes, the manifest says {size}")
    return problems


def list_checkpoints(root: str) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first."""
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _STEP_RE.match(name)
        path = os.path.join(root, name)
        if m and os.path.isdir(path):
            problems = verify_checkpoint(path)
            if problems:
                logger.warning("ignoring incomplete checkpoint %s: %s", path, "; ".join(problems[:3]))
            else:
                out.append((int(m.group(1)), path))
    return sorted(out)


def find_checkpoint(root: str, spec: str) -> str | None:
    """``latest`` → the newest complete checkpoint under ``root`` (None if there is none); otherwise ``spec`` is a
    checkpoint folder, which must be complete."""
    if spec == "latest":
        found = list_checkpoints(root)
        return found[-1][1] if found else None
    path = spec
    if not os.path.isdir(path) and os.path.isdir(os.path.join(root, spec)):
        path = os.path.join(root, spec)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {spec!r} does not exist; use --resume latest or a folder like "
                                f"{os.path.join(root, checkpoint_name(1000))}")
    problems = verify_checkpoint(path)
    if problems:
        raise ValueError(f"checkpoint {path} is incomplete: " + "; ".join(problems))
    return path


def finalize(staging: str, final: str) -> None:
    """Rename a staging folder (its manifest already written) to its final name, replacing an older copy."""
    _fsync_dir(staging)
    if os.path.exists(final):
        trash = f"{final}.old-{os.getpid()}"
        os.replace(final, trash)
        os.replace(staging, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(staging, final)
    _fsync_dir(os.path.dirname(final) or ".")


def prune(root: str, keep_last: int, keep: tuple[str, ...] = ()) -> list[str]:
    """Delete all but the newest ``keep_last`` complete checkpoints and every stale staging folder; returns the
    deleted paths."""
    removed = []
    complete = list_checkpoints(root)
    for _, path in complete[:-keep_last] if keep_last > 0 else complete:
        if os.path.abspath(path) not in {os.path.abspath(k) for k in keep}:
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if os.path.isdir(root):
        for name in os.listdir(root):
            if name.startswith(".staging-") or ".old-" in name:
                path = os.path.join(root, name)
                if os.path.abspath(path) not in {os.path.abspath(k) for k in keep}:
                    shutil.rmtree(path, ignore_errors=True)
                    removed.append(path)
    return removed
