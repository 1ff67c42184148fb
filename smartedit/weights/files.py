"""Finding and reading weight files of any layout: the one place that knows how weights lie on disk.

* :func:`weight_files` — the weight files of a transformers-style folder (a SmartEdit model folder, an LLM, a CLIP
  or a text encoder): safetensors (one file, shards with their index, or complete shards without one) before
  ``.bin`` (the same), in transformers' order of preference; missing shards are one error naming them;
* :func:`diffusers_weight_files` — the file(s) diffusers picks in a ``unet/`` or ``vae/`` folder;
* :func:`read_safetensors`, :func:`read_bin` (``torch.load(weights_only=True)``, memory-mapped), :func:`read_state_dict`
  (every tensor of a folder, with the file each came from), :func:`safetensors_shapes` (header only);
* Git LFS pointers instead of weights (:func:`is_lfs_pointer`, :func:`check_lfs`): one error naming every pointer
  and how to fetch the content;
* :func:`read_json`, :func:`require_dir`, :func:`read_tokenizer`: a config, a folder and a tokenizer of a
  component folder, each with an error that shows the expected layout;
* :func:`key_problems` / :func:`raise_problems`: missing / unexpected / wrongly shaped tensors, all in one error.

Nothing here runs code from a file: ``.bin`` files are read with ``weights_only=True`` only.
"""

from __future__ import annotations

import glob
import json
import os
import pickle
import re
from typing import Any, Callable, Mapping

import torch

__all__ = [
    "LFS_HEADER",
    "CONFIG_NAME",
    "SAFE_WEIGHTS",
    "SAFE_INDEX",
    "BIN_WEIGHTS",
    "BIN_INDEX",
    "WEIGHTS_HELP",
    "require_dir",
    "is_lfs_pointer",
    "lfs_error",
    "check_lfs",
    "read_json",
    "tokenizer_files",
    "read_tokenizer",
    "diffusers_weight_files",
    "weight_files",
    "describe_weight_files",
    "read_safetensors",
    "safetensors_shapes",
    "read_bin",
    "read_state_dict",
    "key_problems",
    "raise_problems",
]

LFS_HEADER = b"version https://git-lfs"
CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
SAFE_HELP = f"{SAFE_WEIGHTS}, or shards model-0000i-of-0000n.safetensors with {SAFE_INDEX}"
WEIGHTS_HELP = (f"the weights as {SAFE_HELP}, or {BIN_WEIGHTS}, or shards pytorch_model-0000i-of-0000n.bin with "
                f"{BIN_INDEX}")
"""The weight layouts :func:`weight_files` accepts, for error messages."""

_FORMATS = {"safetensors": (SAFE_INDEX, SAFE_WEIGHTS, "model"), "bin": (BIN_INDEX, BIN_WEIGHTS, "pytorch_model")}
_SHARD = re.compile(r"^(model|pytorch_model)-(\d+)-of-(\d+)\.(safetensors|bin)$")
_UNREADABLE_SAFETENSORS = ("the file is truncated or not safetensors; download or copy it again (or re-run "
                           "save_pretrained)")


# ---- folders, configs, LFS pointers -----------------------------------------------------------------------

def require_dir(path: str | os.PathLike, what: str, layout: str) -> str:
    """``path`` as a string; not a path or not a folder is one error that shows ``layout``."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} folder must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder {path!r} does not exist (or is not a folder); {layout}")
    return path


def is_lfs_pointer(path: str | os.PathLike) -> bool:
    """True for a (small) Git LFS pointer file standing where the real content should be."""
    try:
        if os.path.getsize(path) > 1024:
            return False
        with open(path, "rb") as f:
            return f.read(len(LFS_HEADER)) == LFS_HEADER
    except OSError:
        return False


def lfs_error(paths: list[str]) -> ValueError:
    """The error for Git LFS pointers found instead of weights: every file and how to fetch the content."""
    names = "\n  ".join(paths)
    return ValueError(f"{len(paths)} file(s) are Git LFS pointer files, not the real content:\n  {names}\n"
                      f"Fetch the content (run `git lfs install && git lfs pull` inside the cloned folder, or "
                      f"download these files again).")


def check_lfs(paths: list[str]) -> None:
    """One error naming every Git LFS pointer among ``paths`` (the files that will be read; other pointer files in
    a partly fetched clone do not matter)."""
    found = [p for p in paths if os.path.isfile(p) and is_lfs_pointer(p)]
    if found:
        raise lfs_error(found)


def read_json(path: str, what: str, layout: str) -> dict[str, Any]:
    """A JSON object file; missing, a Git LFS pointer, invalid JSON or not an object is one clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} is missing; {layout}")
    if is_lfs_pointer(path):
        raise lfs_error([path])
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object")
    return data


# ---- tokenizers -------------------------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                    "merges.txt")


def tokenizer_files(folder: str) -> list[str]:
    """Tokenizer files transformers reads (``tokenizer.json``, else the SentencePiece ``tokenizer.model``)."""
    main = "tokenizer.json" if os.path.isfile(os.path.join(folder, "tokenizer.json")) else "tokenizer.model"
    return [os.path.join(folder, n) for n in (main,) + _TOKENIZER_FILES]


def read_tokenizer(path: str, what: str):
    """The tokenizer of a component folder (``AutoTokenizer``, local files only, Git LFS pointers refused). A
    LLaMA-1.1 / Vicuna folder with only ``tokenizer.model`` gets the reference slow tokenizer's spacing."""
    from transformers import AutoTokenizer

    expected = ("expected tokenizer.json (or a LLaMA tokenizer.model, or CLIP's vocab.json + merges.txt) with "
                "tokenizer_config.json")
    files = tokenizer_files(path)
    if not any(os.path.isfile(f) for f in files):
        raise FileNotFoundError(f"no {what} tokenizer in {path!r}: {expected}")
    check_lfs(files)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):  # LLaVA-1.1 / Vicuna: tokenizer.model only
            from ..backbones.llama_tokenizer import use_reference_spacing

            tok = use_reference_spacing(tok)
        return tok
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise ValueError(f"cannot load the {what} tokenizer from {path!r} ({exc}); {expected} (a SentencePiece "
                         f"tokenizer.model without tokenizer.json needs the sentencepiece package)") from None


# ---- finding weight files ---------------------------------------------------------------------------------

def diffusers_weight_files(folder: str) -> list[str]:
    """The weight file(s) diffusers will pick in a unet/ or vae/ folder (safetensors first, fp16 variant last)."""
    stem = "diffusion_pytorch_model"
    for variant in ("", ".fp16"):
        for ext in (".safetensors", ".bin"):
            index = os.path.join(folder, f"{stem}{variant}{ext}.index.json")
            if os.path.isfile(index):
                return [index] + sorted(glob.glob(os.path.join(glob.escape(folder), f"{stem}*{ext}")))
            single = os.path.join(folder, f"{stem}{variant}{ext}")
            if os.path.isfile(single):
                return [single]
    return []


def _index_shards(folder: str, index: str, layout: str) -> list[str]:
    data = read_json(index, "weight index", layout)
    weight_map = data.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index} has no 'weight_map' (key → shard file); {layout}")
    names = sorted(set(weight_map.values()))
    missing = [n for n in names if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"{index} lists shard(s) missing from {folder}: {', '.join(missing)}")
    return [os.path.join(folder, n) for n in names]


def _unindexed_shards(folder: str, prefix: str, ext: str) -> list[str]:
    shards = sorted(glob.glob(os.path.join(glob.escape(folder), f"{prefix}-*-of-*.{ext}")))
    shards = [s for s in shards if _SHARD.match(os.path.basename(s))]
    if shards:
        total = int(_SHARD.match(os.path.basename(shards[0])).group(3))
        have = {int(_SHARD.match(os.path.basename(s)).group(2)) for s in shards}
        lacking = [f"{prefix}-{i:05d}-of-{total:05d}.{ext}" for i in range(1, total + 1) if i not in have]
        if lacking:
            raise FileNotFoundError(f"{folder} lacks shard(s) {', '.join(lacking)} (and has no index file)")
    return shards


def weight_files(folder: str | os.PathLike, layout: str = "",
                 formats: tuple[str, ...] = ("safetensors", "bin")) -> list[str]:
    """The weight files of a transformers-style folder, in transformers' order of preference: safetensors (one
    file, or the shards its index lists) before ``.bin`` (the same); of ``formats`` only. Shards without an index
    are accepted when complete. No weights or missing shards are one error naming them (and ``layout``)."""
    folder = os.fspath(folder)
    for fmt in formats:
        index_name, single, prefix = _FORMATS[fmt]
        if os.path.isfile(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            return _index_shards(folder, index, layout)
        shards = _unindexed_shards(folder, prefix, fmt)
        if shards:
            return shards
    expected = WEIGHTS_HELP if formats == ("safetensors", "bin") else \
        f"the weights as {SAFE_HELP}" if formats == ("safetensors",) else f"{'/'.join(formats)} weights"
    raise FileNotFoundError(f"no weights in {folder}: expected {expected}" + (f"; {layout}" if layout else ""))


def describe_weight_files(folder: str) -> str:
    """The weight file names of ``folder`` for messages (the folder itself when it has none)."""
    try:
        return ", ".join(os.path.basename(f) for f in weight_files(folder))
    except (OSError, ValueError):
        return folder


# ---- reading them -----------------------------------------------------------------------------------------

def read_safetensors(path: str) -> dict[str, torch.Tensor]:
    """One safetensors file; a truncated, empty or foreign file is a ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(path)
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot read weights file {path} ({exc}): {_UNREADABLE_SAFETENSORS}") from None


def safetensors_shapes(path: str) -> dict[str, list[int]]:
    """Tensor name → shape of one safetensors file, read from its header alone (no tensor data)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as f:
            return {name: f.get_slice(name).get_shape() for name in f.keys()}
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"cannot read weights file {path} ({exc}): {_UNREADABLE_SAFETENSORS}") from None


def read_bin(path: str) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, read safely (``weights_only=True``, memory-mapped when the format allows)."""
    if is_lfs_pointer(path):
        raise lfs_error([path])
    try:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:  # legacy (non-zip) format cannot be memory-mapped
            if "mmap" not in str(exc) and "zip" not in str(exc):
                raise
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ValueError(f"{path} holds more than tensors and is refused (it is only ever read with "
                         f"weights_only=True; convert it to safetensors from a trusted source): {exc}") from None
    except (RuntimeError, EOFError) as exc:
        raise ValueError(f"{path} is not a readable torch state dict ({exc}); the file may be truncated") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} does not hold a flat state dict of tensors (name → tensor)")
    return state


def _read_one(path: str, keep: Callable[[str], bool] | None) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    if not path.endswith(".safetensors"):
        return {k: v for k, v in read_bin(path).items() if keep is None or keep(k)}
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}
    except Exception as exc:  # safetensors raises its own error types
        raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None


def read_state_dict(folder: str, keep: Callable[[str], bool] | None = None, layout: str = "",
                    formats: tuple[str, ...] = ("safetensors", "bin")
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a folder's weight files (only the keys ``keep`` accepts) and, per key, its file name.
    Git LFS pointers are one error naming them all; a key found in two files is an error."""
    files = weight_files(folder, layout, formats)
    lfs = [f for f in files if is_lfs_pointer(f)]
    if lfs:
        raise lfs_error(lfs)
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    duplicates = []
    for path in files:
        name = os.path.basename(path)
        for key, value in _read_one(path, keep).items():
            if key in state:
                duplicates.append(f"{key} (in {sources[key]} and {name})")
            state[key] = value
            sources[key] = name
    if duplicates:
        raise ValueError(f"{len(duplicates)} tensor(s) appear in more than one weight file of {folder}:\n  "
                         + "\n  ".join(duplicates))
    return state, sources


# ---- checking them ----------------------------------------------------------------------------------------

def key_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], part: str,
                 where: Mapping[str, str], files: str) -> list[str]:
    """Missing / unexpected / wrong-shape keys of ``state`` against a module's ``state_dict()``; ``where`` maps
    ``"<part>.<key>"`` to the file each tensor came from, ``files`` names the files read."""
    problems = []
    for key in sorted(set(expected) - set(state)):
        problems.append(f"missing: {part}: {key} (not in {files})")
    for key in sorted(set(state) - set(expected)):
        problems.append(f"unexpected: {part}: {key} (from {where.get(f'{part}.{key}', '?')})")
    for key in sorted(set(state) & set(expected)):
        if tuple(state[key].shape) != tuple(expected[key].shape):
            problems.append(f"wrong shape: {part}: {key} from {where.get(f'{part}.{key}', '?')} is "
                            f"{tuple(state[key].shape)}, expected {tuple(expected[key].shape)}")
    return problems


def raise_problems(problems: list[str], what: str, hint: str = "") -> None:
    """One ValueError listing every problem (nothing when there are none)."""
    if problems:
        raise ValueError(f"{what} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
                         + (f"\n{hint}" if hint else ""))
