"""Metric backbones from local folders: layout checks with clear errors, names and sha256 file hashes.

Nothing here downloads: every backbone is a folder the user gives. A missing folder or file is a
:class:`BackboneError` whose message shows the expected layout. Every metric number in a report carries the
backbone's :class:`BackboneInfo` (name, architecture summary, weight files and their sha256).

For a single weight file, ``sha256`` is that file's hash (the same number the Hugging Face Hub shows for LFS
files); for several files it is the sha256 of the sorted ``"<file name> <sha256>\\n"`` lines.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..weights.files import weight_files

logger = logging.getLogger(__name__)

__all__ = [
    "BackboneError",
    "BackboneInfo",
    "LAYOUTS",
    "sha256_file",
    "combined_sha256",
    "require_dir",
    "read_hf_config",
    "hf_info",
    "describe_clip",
    "describe_vit",
]

LAYOUTS: dict[str, str] = {
    "clip": (
        "CLIP_DIR/                    a local copy of a Hugging Face CLIP repo, e.g. openai/clip-vit-large-patch14\n"
        "  config.json                model_type \"clip\" (transformers CLIPModel)\n"
        "  model.safetensors          or pytorch_model.bin (loaded with weights_only=True), or shards + index\n"
        "  preprocessor_config.json   CLIPImageProcessor settings\n"
        "  tokenizer.json / vocab.json + merges.txt, tokenizer_config.json"
    ),
    "dino": (
        "DINO_DIR/                    a local copy of facebook/dino-vits16 (transformers ViTModel)\n"
        "  config.json                model_type \"vit\"\n"
        "  model.safetensors          or pytorch_model.bin (loaded with weights_only=True)"
    ),
    "lpips": (
        "LPIPS_DIR/\n"
        "  squeezenet1_1.safetensors  or squeezenet1_1*.pth: torchvision SqueezeNet 1.1 state dict (features.*;\n"
        "                             classifier.* is ignored), e.g. squeezenet1_1-b8a52dc0.pth\n"
        "  squeeze.safetensors        or squeeze.pth: the lpips v0.1 linear heads lin0.model.1.weight ...\n"
        "                             lin6.model.1.weight (a copy ships with torchmetrics as\n"
        "                             torchmetrics/functional/image/lpips_models/squeeze.pth)"
    ),
    "judge": (
        "JUDGE_DIR/                   a local copy of a transformers image-text-to-text model with a chat template,\n"
        "                             e.g. Qwen/Qwen2.5-VL-7B-Instruct, Qwen/Qwen2-VL-7B-Instruct or a llava-hf model\n"
        "  config.json                any model_type AutoModelForImageTextToText knows (no trust_remote_code)\n"
        "  model.safetensors          or shards + model.safetensors.index.json (or pytorch_model.bin, weights only)\n"
        "  processor / tokenizer files (preprocessor_config.json or processor_config.json, tokenizer.json, ...)\n"
        "  chat_template.jinja        or a chat_template inside the tokenizer / processor config"
    ),
}


class BackboneError(FileNotFoundError):
    """A metric backbone folder is missing or does not have the expected layout."""

    def __init__(self, kind: str, path: str | os.PathLike | None, problem: str):
        self.kind = kind
        layout = LAYOUTS.get(kind, "")
        where = "" if path is None else f" at {os.fspath(path)!r}"
        super().__init__(f"{kind} backbone{where}: {problem}\nexpected layout:\n{layout}")


@dataclass(frozen=True)
class BackboneInfo:
    """Identity of a metric backbone: ``name`` (folder / repo name), ``arch`` summary, weight files with hashes."""

    kind: str
    name: str
    arch: str
    path: str
    files: dict[str, str] = field(default_factory=dict)
    sha256: str = ""

    def tag(self) -> str:
        """Short label for tables: ``name sha256:<first 12 hex>``."""
        return f"{self.name} sha256:{self.sha256[:12]}"

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "arch": self.arch, "path": self.path,
                "files": dict(self.files), "sha256": self.sha256}


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def sha256_file(path: str | os.PathLike, chunk_size: int = 1 << 20) -> str:
    """sha256 hex digest of a file (cached per real path, size and modification time)."""
    real = os.path.realpath(path)
    stat = os.stat(real)
    key = (real, stat.st_size, stat.st_mtime_ns)
    if key not in _HASH_CACHE:
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            for block in iter(lambda: f.read(chunk_size), b""):
                digest.update(block)
        _HASH_CACHE[key] = digest.hexdigest()
    return _HASH_CACHE[key]


def combined_sha256(files: dict[str, str]) -> str:
    """One file → its hash; several → sha256 of the sorted ``"name hash\\n"`` lines."""
    if len(files) == 1:
        return next(iter(files.values()))
    lines = "".join(f"{name} {digest}\n" for name, digest in sorted(files.items()))
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def require_dir(path: str | os.PathLike | None, kind: str) -> Path:
    if path is None or not os.fspath(path):
        raise BackboneError(kind, None, "no folder given")
    p = Path(path)
    if not p.is_dir():
        raise BackboneError(kind, path, "folder does not exist" if not p.exists() else "is not a folder")
    return p


def read_hf_config(directory: Path, kind: str, model_types: tuple[str, ...]) -> dict[str, Any]:
    cfg_path = directory / "config.json"
    if not cfg_path.is_file():
        raise BackboneError(kind, directory, "config.json is missing")
    try:
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    except (OSError, ValueError) as e:
        raise BackboneError(kind, directory, f"config.json cannot be read ({e})") from e
    if config.get("model_type") not in model_types:
        raise BackboneError(kind, directory, f"config.json has model_type {config.get('model_type')!r}, "
                                             f"expected one of {list(model_types)}")
    return config


def hf_info(directory: Path, kind: str, arch: str) -> BackboneInfo:
    """Hash the weight files of a transformers folder; the name is the folder's name (the hub id the config
    records, if any, is added to ``arch``; the hash is what identifies the weights)."""
    try:
        files = weight_files(directory)
    except (FileNotFoundError, ValueError) as exc:  # none, or shards missing / an unreadable index
        raise BackboneError(kind, directory, f"no weights found: {exc}") from None
    logger.info("hashing %s weights in %s", kind, directory)
    hashes = {os.path.basename(f): sha256_file(f) for f in files}
    try:
        with open(directory / "config.json", encoding="utf-8") as f:
            source = json.load(f).get("_name_or_path", "")
    except (OSError, ValueError):
        source = ""
    if isinstance(source, str) and source.count("/") == 1 and not os.path.isabs(source) and not source.startswith("."):
        arch = f"{arch}; config says it came from {source}"
    return BackboneInfo(kind=kind, name=directory.resolve().name, arch=arch, path=os.fspath(directory),
                        files=hashes, sha256=combined_sha256(hashes))


def describe_clip(config: dict[str, Any]) -> str:
    v = config.get("vision_config", {}) or {}
    t = config.get("text_config", {}) or {}
    return (f"CLIPModel vision(hidden={v.get('hidden_size')}, layers={v.get('num_hidden_layers')}, "
            f"patch={v.get('patch_size')}, image={v.get('image_size')}) text(hidden={t.get('hidden_size')}, "
            f"layers={t.get('num_hidden_layers')}) projection={config.get('projection_dim')}")


def describe_vit(config: dict[str, Any]) -> str:
    return (f"ViTModel(hidden={config.get('hidden_size')}, layers={config.get('num_hidden_layers')}, "
            f"heads={config.get('num_attention_heads')}, patch={config.get('patch_size')}, "
            f"image={config.get('image_size')})")
