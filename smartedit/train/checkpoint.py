"""Atomic training checkpoints: a staging folder, a manifest written last, one rename.

Layout under ``OUTPUT/checkpoints/``::

    step-00001000/                 a complete checkpoint (it has a valid manifest.json)
        deepspeed/ds/...           DeepSpeed's model states and ZeRO optimizer shards (one per process)
        rng/rank-00000.json ...    python / numpy / torch random state of each process
        trainer_state.json         step, data position, skipped-step counters, world size, batch layout
        experiment.json            the experiment config of the run
        model/config.json          the model config (after the stage's changes: LoRA, BIM) + model/tokenizer/
        manifest.json              written LAST: every file with its size and SHA-256
    .staging-step-00002000/        a checkpoint being written (ignored; removed by the next save)

Every process writes its own files into the staging folder; after a barrier the main process writes the manifest,
fsyncs it and renames the folder to ``step-N``. A run killed at any moment therefore leaves either a complete
checkpoint or a staging folder that is never read. Multi-node runs need ``OUTPUT`` on a shared file system.

The manifest lists every file with its size and SHA-256, and names the files a resume reads (``required``: the
trainer state, one random state per process, DeepSpeed's model states), which its list must hold. :func:`find_checkpoint`
(``--resume latest``) verifies the newest checkpoint's contents and falls back to the newest one that verifies;
when checkpoints exist but none verifies it raises :class:`NoValidCheckpointError` instead of starting over
(``--restart`` starts over on purpose). :func:`prune` keeps the newest ``keep_last`` (a cheap size check).
:class:`RunLock` keeps a second run out of an output folder that a live run is using.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import time
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["CHECKPOINTS_DIR", "MANIFEST_NAME", "TRAINER_STATE_NAME", "NoValidCheckpointError",
           "RunLock", "RunLockedError", "checkpoint_name", "staging_dir", "file_sha256", "write_manifest",
           "read_manifest", "verify_checkpoint", "list_checkpoints", "step_folders", "find_checkpoint", "finalize",
           "prune", "write_json", "read_json"]

CHECKPOINTS_DIR = "checkpoints"
MANIFEST_NAME = "manifest.json"
TRAINER_STATE_NAME = "trainer_state.json"
FORMAT = "smartedit-train-checkpoint"
VERSION = 2
"""Manifest version: 2 = size and SHA-256 per file (version-1 manifests, sizes only, are still read)."""
LOCK_NAME = ".run.lock"
_STEP_RE = re.compile(r"^step-(\d+)$")
_HASH_CHUNK = 1 << 20


class NoValidCheckpointError(ValueError):
    """``--resume`` found checkpoints, but none of them verifies."""


class RunLockedError(RuntimeError):
    """Another live run holds the output folder."""


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


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _files(directory: str) -> dict[str, dict[str, Any]]:
    out = {}
    for base, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(base, name)
            rel = os.path.relpath(path, directory).replace(os.sep, "/")
            if rel != MANIFEST_NAME:
                out[rel] = {"size": os.path.getsize(path), "sha256": file_sha256(path)}
    return dict(sorted(out.items()))


def write_manifest(directory: str, info: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """List every file of ``directory`` with its size and SHA-256, plus ``info``; written last, atomically (call it
    only once every process has finished writing: the manifest is what makes the folder a checkpoint).
    ``required``: names or glob patterns the file list must match (what a resume reads), checked by
    :func:`verify_checkpoint`, so a manifest written before those files never makes a checkpoint."""
    manifest = {"format": FORMAT, "version": VERSION, "created": time.time(), **info, "required": list(required),
                "files": _files(directory)}
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


def verify_checkpoint(directory: str, contents: bool = True) -> list[str]:
    """Problems with a checkpoint folder (empty when it is complete). ``contents``: also compare every file's
    SHA-256 with the manifest (reads every byte); otherwise sizes only."""
    manifest = read_manifest(directory)
    if manifest is None:
        return [f"{directory} has no valid {MANIFEST_NAME} (incomplete or not a checkpoint)"]
    files = manifest.get("files")
    if not isinstance(files, dict):
        return [f"{MANIFEST_NAME} lists no files"]
    problems = [f"the manifest lists no {pattern} (it was written before that file)"
                for pattern in manifest.get("required") or () if not fnmatch.filter(files, pattern)]
    for rel, entry in files.items():
        size, sha = (entry.get("size"), entry.get("sha256")) if isinstance(entry, dict) else (entry, None)
        path = os.path.join(directory, rel)
        if not os.path.isfile(path):
            problems.append(f"missing file {rel}")
        elif os.path.getsize(path) != size:
            problems.append(f"{rel} has {os.path.getsize(path)} bytes, the manifest says {size}")
        elif contents and sha is not None and file_sha256(path) != sha:
            problems.append(f"{rel} is corrupt: its SHA-256 differs from the manifest's")
    return problems


def step_folders(root: str) -> list[tuple[int, str]]:
    """Every ``step-N`` folder under ``root`` (complete or not) as (step, path), oldest first."""
    if not os.path.isdir(root):
        return []
    out = []
    for name in os.listdir(root):
        m = _STEP_RE.match(name)
        path = os.path.join(root, name)
        if m and os.path.isdir(path):
            out.append((int(m.group(1)), path))
    return sorted(out)


def list_checkpoints(root: str, contents: bool = False) -> list[tuple[int, str]]:
    """Complete checkpoints under ``root`` as (step, path), oldest first (``contents``: hashes checked too)."""
    out = []
    for step, path in step_folders(root):
        problems = verify_checkpoint(path, contents=contents)
        if problems:
            logger.warning("ignoring incomplete checkpoint %s: %s", path, "; ".join(problems[:3]))
        else:
            out.append((step, path))
    return out


def find_checkpoint(root: str, spec: str) -> str | None:
    """``latest`` → the newest checkpoint under ``root`` whose contents verify (None if there is no checkpoint
    folder at all; :class:`NoValidCheckpointError` if there are some and none verifies); otherwise ``spec`` is a
    checkpoint folder, which must verify."""
    if spec == "latest":
        folders = step_folders(root)
        rejected = []
        for step, path in reversed(folders):
            problems = verify_checkpoint(path)
            if not problems:
                if rejected:
                    logger.warning("resuming from %s, the newest checkpoint that verifies (skipped: %s)", path,
                                   "; ".join(rejected))
                return path
            rejected.append(f"{os.path.basename(path)}: {problems[0]}")
            logger.warning("checkpoint %s does not verify: %s", path, "; ".join(problems[:3]))
        if folders:
            raise NoValidCheckpointError(
                f"--resume latest: none of the {len(folders)} checkpoint(s) under {root} verifies "
                f"({'; '.join(rejected[:3])}). Refusing to start over on top of them: pass --restart to train "
                f"from step 0 and replace them, or --resume a checkpoint folder you trust")
        return None
    path = spec
    if not os.path.isdir(path) and os.path.isdir(os.path.join(root, spec)):
        path = os.path.join(root, spec)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"checkpoint {spec!r} does not exist; use --resume latest or a folder like "
                                f"{os.path.join(root, checkpoint_name(1000))}")
    problems = verify_checkpoint(path)
    if problems:
        raise NoValidCheckpointError(f"checkpoint {path} is incomplete or corrupt: " + "; ".join(problems[:5]))
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


_HELD_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker): close the inherited descriptors of the parent's run locks. A child
    that kept one would hold the ``flock`` after the parent was killed, until it noticed and exited, and a run
    resumed right after ``kill -9`` would find its own folder locked."""
    for fd in list(_HELD_LOCK_FDS):
        try:
            os.close(fd)
        except OSError:
            pass
    _HELD_LOCK_FDS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_inherited_locks)


class RunLock:
    """An exclusive lock on a run folder (``OUTPUT/.run.lock``, ``fcntl.flock``): held while a run uses the folder,
    released by the kernel when the process ends however it ends (``kill -9`` included), so a stale file never
    blocks the next run. Forked children (DataLoader workers) close their copy of the descriptor at once, so only
    the run's own process holds it. The file names the holder (pid, host, start time) for the error a second run
    gets."""

    def __init__(self, directory: str):
        self.directory = directory
        self.path = os.path.join(directory, LOCK_NAME)
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        import fcntl

        os.makedirs(self.directory, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                holder = json.loads(os.read(fd, 4096).decode("utf-8", "replace") or "{}")
            except ValueError:
                holder = {}
            os.close(fd)
            since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if isinstance(
                holder.get("since"), (int, float)) else "an unknown time"
            raise RunLockedError(
                f"{self.directory} is in use by another training run (pid {holder.get('pid', '?')} on host "
                f"{holder.get('host', '?')}, since {since}): wait for it to finish, stop it, or choose another "
                f"--output") from None
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}).encode())
        os.fsync(fd)
        self._fd = fd
        _HELD_LOCK_FDS.add(fd)
        return self

    def release(self) -> None:
        if self._fd is not None:
            import fcntl

            _HELD_LOCK_FDS.discard(self._fd)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
