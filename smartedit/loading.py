"""Load real pretrained weights from local folders and assemble a :class:`~smartedit.model.SmartEditModel`.

Three kinds of folder are read (nothing is downloaded; every path is a local folder):

* **LLM** (:func:`load_llm`), one of
    - a plain Hugging Face LLaMA / Vicuna folder (``config.json`` with ``model_type: llama``);
    - an original LLaVA-1.1 folder (``model_type: llava`` with LLaMA fields at the top level, ``mm_hidden_size``,
      ``mm_vision_tower``; keys ``model.*``, ``lm_head.weight`` and ``model.mm_projector.*``). As in the reference,
      LLaVA's extra vocabulary rows (``<im_patch>``, ``<im_start>``, ``<im_end>``, ids 32000..32002) are dropped;
    - a llava-hf folder (transformers ``LlavaForConditionalGeneration``: ``text_config`` / ``vision_config``; keys
      ``model.language_model.*`` … or the older ``language_model.model.*`` …). It carries its own vision tower and
      an ``mlp2x_gelu`` projector (``linear_1`` / ``linear_2`` become ``0`` / ``2``).
* **CLIP** (:func:`load_clip`): a ``CLIPModel`` folder such as ``openai/clip-vit-large-patch14`` (or a
  ``CLIPVisionModel``-only folder); only the vision tower is kept.
* **Stable Diffusion** (:func:`load_sd`): a diffusers folder (SD-1.5 or InstructPix2Pix) with ``unet/``, ``vae/``,
  ``scheduler/``, ``text_encoder/`` and ``tokenizer/``; the UNet's ``conv_in`` is widened to the InstructPix2Pix
  input (old weight and bias copied, new channels zero) and the null text embedding (CLIP text encoder output of
  ``""`` padded to 77 tokens) is computed once.

:func:`from_components` turns the three into a ``SmartEditModel``: the config is read off the folders (Q-Former and
BIM sizes come from a preset), the model is built on the meta device, the loaded tensors are *assigned* (no random
init of what is loaded), and only the new parts (Q-Former, BIM, the 35 new token rows) get a real initialisation.

Vocabulary: the LLM keeps exactly the tokenizer's *base* vocabulary (32,000 rows for LLaMA); SmartEdit's 35 new
tokens follow it. Rows a LLaVA checkpoint added beyond the base vocabulary (LLaVA-1.1's three image tokens,
llava-hf's ``<image>`` / ``<pad>`` tokens and the padding rows up to a multiple of 64) are dropped together with
the matching added tokens of the tokenizer, because SmartEdit's new tokens must sit right after the base
vocabulary (ids 32000..32034) and LLaVA's ``<image>`` placeholder is replaced by SmartEdit's own ``<img>``.

Every ``.bin`` file is read with ``torch.load(..., weights_only=True)``. A missing folder or file is one
``FileNotFoundError`` that says what the folder should hold; a Git LFS pointer instead of weights, or weights that
do not fit (missing, unexpected or wrongly shaped tensors) are one ``ValueError`` listing every problem and the file
it came from.
"""

from __future__ import annotations

import functools
import glob
import json
import logging
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
import torch.nn as nn

from .config import (ConfigError, MLLMConfig, SchedulerConfig, SmartEditConfig, UNetConfig, VAEConfig,
                     VisionConfig, preset as make_preset)

logger = logging.getLogger(__name__)

__all__ = [
    "LoadedLLM",
    "LoadedCLIP",
    "LoadedSD",
    "load_llm",
    "load_clip",
    "load_sd",
    "from_components",
    "read_state_dict",
    "weight_files",
    "LLM_LAYOUT",
    "CLIP_LAYOUT",
    "SD_LAYOUT",
]

LFS_HEADER = b"version https://git-lfs"
CONFIG_NAME = "config.json"
SAFE_WEIGHTS = "model.safetensors"
SAFE_INDEX = "model.safetensors.index.json"
BIN_WEIGHTS = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"
CLIP_TEXT_LENGTH = 77
"""Length of the CLIP text context (SD-1.5): the null text embedding is ``""`` padded to this many tokens."""
SD_PARTS = ("unet", "vae", "scheduler", "text_encoder", "tokenizer")

_WEIGHTS_HELP = (f"the weights as {SAFE_WEIGHTS}, or shards model-0000i-of-0000n.safetensors with {SAFE_INDEX}, "
                 f"or {BIN_WEIGHTS}, or shards pytorch_model-0000i-of-0000n.bin with {BIN_INDEX}")
LLM_LAYOUT = (f"an LLM folder holds {CONFIG_NAME} (model_type 'llama' for LLaMA/Vicuna; 'llava' with "
              f"mm_hidden_size/mm_vision_tower for an original LLaVA-1.1 merge; 'llava' with text_config and "
              f"vision_config for a llava-hf LlavaForConditionalGeneration), {_WEIGHTS_HELP}, and the tokenizer "
              f"(tokenizer.json or tokenizer.model, with tokenizer_config.json)")
CLIP_LAYOUT = (f"a CLIP folder (like openai/clip-vit-large-patch14) holds {CONFIG_NAME} (model_type 'clip' with "
               f"vision_config, or 'clip_vision_model') and {_WEIGHTS_HELP} (keys vision_model.*)")
SD_LAYOUT = ("a diffusers Stable Diffusion folder (SD-1.5 or InstructPix2Pix) holds model_index.json and the "
             "subfolders unet/ (config.json + diffusion_pytorch_model.safetensors), vae/ (config.json + "
             "diffusion_pytorch_model.safetensors), scheduler/ (scheduler_config.json), text_encoder/ (config.json "
             "+ model.safetensors) and tokenizer/ (vocab.json + merges.txt, or tokenizer.json)")


# ---- results ----------------------------------------------------------------------------------------------

@dataclass
class LoadedLLM:
    """What :func:`load_llm` read. Tensors keep the file's dtype; vocabulary rows are cut to the base vocab."""

    path: str
    layout: str
    """``llama``, ``llava-1.1`` or ``llava-hf``."""
    mllm: dict[str, Any]
    """``MLLMConfig`` fields (``vocab_size`` is the base vocabulary of the tokenizer)."""
    llm_state: dict[str, torch.Tensor]
    """``LlamaForCausalLM`` state dict (``model.*``, ``lm_head.weight``) with ``vocab_size`` rows."""
    projector_state: dict[str, torch.Tensor] | None
    """Projector state dict (``weight``/``bias`` or ``0.*``/``2.*``); None for a plain LLaMA folder."""
    vision: dict[str, Any] | None
    """``VisionConfig`` fields when the folder carries its vision tower (llava-hf), else None."""
    vision_state: dict[str, torch.Tensor] | None
    tokenizer: Any
    """The base tokenizer (LLaVA's added tokens removed); SmartEdit's tokens are added by ``SmartEditModel``."""
    select_layer: int | None = None
    """Vision layer LLaVA was trained on (``mm_vision_select_layer`` / ``vision_feature_layer``), if given."""
    vision_tower_name: str | None = None
    """``mm_vision_tower`` of an original LLaVA config (the CLIP the projector was trained with)."""
    sources: dict[str, str] = field(default_factory=dict)
    """``"<part>.<key>"`` → the file (and original key) each tensor came from, for error messages."""


@dataclass
class LoadedCLIP:
    """What :func:`load_clip` read: the CLIP vision tower."""

    path: str
    vision: dict[str, Any]
    """``VisionConfig`` fields."""
    vision_state: dict[str, torch.Tensor]
    """State dict matching ``SmartEditMLLM.vision_tower`` (a transformers ``CLIPVisionModel``)."""
    sources: dict[str, str] = field(default_factory=dict)


@dataclass
class LoadedSD:
    """What :func:`load_sd` read. ``unet`` already has the widened ``conv_in``."""

    path: str
    unet: nn.Module
    vae: nn.Module
    unet_config: dict[str, Any]
    """``UNetConfig`` fields (``mask_channels`` excluded: it comes from the preset or an override)."""
    vae_config: dict[str, Any]
    scheduler: dict[str, Any]
    """``SchedulerConfig`` fields."""
    null_text_embedding: torch.Tensor
    """[1, 77, D] CLIP text encoder last hidden state of ``""`` (float32)."""
    original_in_channels: int
    """``conv_in`` input channels in the folder (4 for SD-1.5, 8 for InstructPix2Pix)."""


# ---- files ------------------------------------------------------------------------------------------------

def _require_dir(path: str | os.PathLike, what: str, layout: str) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} folder must be a path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{what} folder {path!r} does not exist (or is not a folder); {layout}")
    return path


def _is_lfs_pointer(path: str) -> bool:
    try:
        if os.path.getsize(path) > 1024:
            return False
        with open(path, "rb") as f:
            return f.read(len(LFS_HEADER)) == LFS_HEADER
    except OSError:
        return False


def _lfs_error(paths: list[str]) -> ValueError:
    names = "\n  ".join(paths)
    return ValueError(f"{len(paths)} file(s) are Git LFS pointer files, not the real content:\n  {names}\n"
                      f"Fetch the content (run `git lfs install && git lfs pull` inside the cloned folder, or "
                      f"download these files again).")


def _check_lfs(paths: list[str]) -> None:
    """One error naming every Git LFS pointer among ``paths`` (the files that will be read; other pointer files in
    a partly fetched clone do not matter)."""
    found = [p for p in paths if os.path.isfile(p) and _is_lfs_pointer(p)]
    if found:
        raise _lfs_error(found)


_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
                    "merges.txt")


def _tokenizer_files(folder: str) -> list[str]:
    """Tokenizer files transformers reads (``tokenizer.json``, else the SentencePiece ``tokenizer.model``)."""
    main = "tokenizer.json" if os.path.isfile(os.path.join(folder, "tokenizer.json")) else "tokenizer.model"
    return [os.path.join(folder, n) for n in (main,) + _TOKENIZER_FILES]


def _diffusers_files(folder: str) -> list[str]:
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


def _read_json(path: str, what: str, layout: str) -> dict[str, Any]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what}: {path} is missing; {layout}")
    if _is_lfs_pointer(path):
        raise _lfs_error([path])
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{what}: {path} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{what}: {path} must hold a JSON object")
    return data


_SHARD = re.compile(r"^(model|pytorch_model)-(\d+)-of-(\d+)\.(safetensors|bin)$")


def _index_shards(folder: str, index: str, layout: str) -> list[str]:
    data = _read_json(index, "weight index", layout)
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


def weight_files(folder: str, layout: str = LLM_LAYOUT) -> list[str]:
    """The weight files of a transformers-style folder, in transformers' order of preference: safetensors (index +
    shards, or one file) before ``.bin`` (index + shards, or one file); shards without an index are accepted when
    complete. Missing shards are an error naming them."""
    for index_name, single, prefix, ext in ((SAFE_INDEX, SAFE_WEIGHTS, "model", "safetensors"),
                                            (BIN_INDEX, BIN_WEIGHTS, "pytorch_model", "bin")):
        index = os.path.join(folder, index_name)
        if os.path.isfile(index):
            return _index_shards(folder, index, layout)
        if os.path.isfile(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
        shards = _unindexed_shards(folder, prefix, ext)
        if shards:
            return shards
    raise FileNotFoundError(f"no weights in {folder}: expected {_WEIGHTS_HELP}; {layout}")


def _torch_load(path: str) -> dict[str, torch.Tensor]:
    """A ``.bin`` state dict, read safely (``weights_only=True``, memory-mapped when the format allows)."""
    if _is_lfs_pointer(path):
        raise _lfs_error([path])
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


def read_state_dict(folder: str, keep: Callable[[str], bool] | None = None, layout: str = LLM_LAYOUT
                    ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """All tensors of a folder's weight files (only the keys ``keep`` accepts) and, per key, its file name.
    A key found in two files is an error."""
    from safetensors import safe_open

    files = weight_files(folder, layout)
    lfs = [f for f in files if _is_lfs_pointer(f)]
    if lfs:
        raise _lfs_error(lfs)
    state: dict[str, torch.Tensor] = {}
    sources: dict[str, str] = {}
    duplicates = []
    for path in files:
        name = os.path.basename(path)
        if path.endswith(".safetensors"):
            try:
                with safe_open(path, framework="pt", device="cpu") as f:
                    part = {k: f.get_tensor(k) for k in f.keys() if keep is None or keep(k)}
            except Exception as exc:  # safetensors raises its own error types
                raise ValueError(f"{path} is not a readable safetensors file ({exc})") from None
        else:
            part = {k: v for k, v in _torch_load(path).items() if keep is None or keep(k)}
        for key, value in part.items():
            if key in state:
                duplicates.append(f"{key} (in {sources[key]} and {name})")
            state[key] = value
            sources[key] = name
    if duplicates:
        raise ValueError(f"{len(duplicates)} tensor(s) appear in more than one weight file of {folder}:\n  "
                         + "\n  ".join(duplicates))
    return state, sources


def _route(state: dict[str, torch.Tensor], sources: dict[str, str], rules: list[tuple[str, str, str]],
           drop: Callable[[str], bool]) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, str], list[str]]:
    """Split a checkpoint into parts by key prefix: rule (old prefix, part, new prefix), first match wins.
    Returns (part → state dict, "<part>.<new key>" → source description, unexpected-key problems)."""
    parts: dict[str, dict[str, torch.Tensor]] = {}
    where: dict[str, str] = {}
    unexpected = []
    for key, value in state.items():
        if drop(key):
            continue
        for old, part, new in rules:
            if key.startswith(old):
                new_key = new + key[len(old):]
                parts.setdefault(part, {})[new_key] = value
                where[f"{part}.{new_key}"] = sources[key] + (f" (as {key})" if new_key != key else "")
                break
        else:
            unexpected.append(f"unexpected: {key} (from {sources[key]})")
    return parts, where, unexpected


def _key_problems(state: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor], part: str,
                  where: Mapping[str, str], files: str) -> list[str]:
    """Missing / unexpected / wrong-shape keys of ``state`` against a module's ``state_dict()``."""
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


def _raise_problems(problems: list[str], what: str, hint: str = "") -> None:
    if problems:
        raise ValueError(f"{what} ({len(problems)} problem(s)):\n  " + "\n  ".join(problems)
                         + (f"\n{hint}" if hint else ""))


def _files_of(folder: str) -> str:
    try:
        return ", ".join(os.path.basename(f) for f in weight_files(folder))
    except (OSError, ValueError):
        return folder


# ---- tokenizer --------------------------------------------------------------------------------------------

def _load_tokenizer(path: str, what: str):
    from transformers import AutoTokenizer

    expected = ("expected tokenizer.json (or a LLaMA tokenizer.model, or CLIP's vocab.json + merges.txt) with "
                "tokenizer_config.json")
    files = _tokenizer_files(path)
    if not any(os.path.isfile(f) for f in files):
        raise FileNotFoundError(f"no {what} tokenizer in {path!r}: {expected}")
    _check_lfs(files)
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        if not os.path.isfile(os.path.join(path, "tokenizer.json")):  # LLaVA-1.1 / Vicuna: tokenizer.model only
            from .backbones.llama_tokenizer import use_reference_spacing

            tok = use_reference_spacing(tok)
        return tok
    except (OSError, ValueError, TypeError, ImportError) as exc:
        raise ValueError(f"cannot load the {what} tokenizer from {path!r} ({exc}); {expected} (a SentencePiece "
                         f"tokenizer.model without tokenizer.json needs the sentencepiece package)") from None


_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def _content(token: Any) -> Any:
    return token.get("content") if isinstance(token, dict) else token


def _strip_added_tokens(tokenizer, base: int, source: str):
    """The same tokenizer without the added tokens whose id is ≥ ``base`` (LLaVA's image / pad tokens).

    Done on the saved files (tokenizer.json, tokenizer_config.json, special_tokens_map.json) so that it works for
    any fast tokenizer; a special token that pointed at a removed token (llava-hf's ``<pad>``) is unset.
    """
    from transformers import AutoTokenizer

    removed = {tok.content if hasattr(tok, "content") else str(tok)
               for i, tok in tokenizer.added_tokens_decoder.items() if i >= base}
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        tj = os.path.join(tmp, "tokenizer.json")
        if not os.path.isfile(tj):
            raise ValueError(f"the tokenizer of {source} holds {len(tokenizer) - base} added token(s) beyond its "
                             f"base vocabulary ({sorted(removed)}) which cannot be removed automatically; pass "
                             f"tokenizer=<folder of the base LLaMA/Vicuna tokenizer>")
        with open(tj, encoding="utf-8") as f:
            data = json.load(f)
        data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["id"] < base]
        vocab = (data.get("model") or {}).get("vocab")
        if isinstance(vocab, dict):
            data["model"]["vocab"] = {k: v for k, v in vocab.items() if v < base}
        elif isinstance(vocab, list):
            data["model"]["vocab"] = vocab[:base]
        with open(tj, "w", encoding="utf-8") as f:
            json.dump(data, f)
        for name in ("tokenizer_config.json", "special_tokens_map.json"):
            path = os.path.join(tmp, name)
            if not os.path.isfile(path):
                continue
            with open(path, encoding="utf-8") as f:
                cfg = json.load(f)
            if isinstance(cfg.get("added_tokens_decoder"), dict):
                cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items()
                                               if int(k) < base}
            for key in ("additional_special_tokens", "extra_special_tokens"):
                value = cfg.get(key)
                if isinstance(value, list):
                    cfg[key] = [t for t in value if _content(t) not in removed]
                elif isinstance(value, dict):
                    cfg[key] = {k: t for k, t in value.items() if _content(t) not in removed}
            for key in _SPECIAL_ATTRS:
                if _content(cfg.get(key)) in removed:
                    del cfg[key]
            with open(path, "w", encoding="utf-8") as f:
                json.dump(cfg, f, indent=2)
        for name in os.listdir(tmp):  # only the JSON files define the tokenizer now
            if name not in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
                os.remove(os.path.join(tmp, name))
        stripped = AutoTokenizer.from_pretrained(tmp, local_files_only=True)
    if len(stripped) != base:
        raise ValueError(f"removing the added tokens {sorted(removed)} from the tokenizer of {source} left "
                         f"{len(stripped)} tokens instead of {base}; pass tokenizer=<base LLaMA/Vicuna tokenizer>")
    try:
        stripped.name_or_path = source
    except AttributeError:  # pragma: no cover - read-only in some versions
        pass
    logger.info("tokenizer of %s: removed %d LLaVA token(s) beyond the base vocabulary of %d: %s", source,
                len(removed), base, sorted(removed))
    return stripped


def _token_ids(tokenizer, llama_cfg) -> dict[str, int]:
    """pad / bos / eos ids for ``MLLMConfig``; a missing pad token becomes ``<unk>`` (as the reference)."""
    if tokenizer.pad_token_id is None or tokenizer.pad_token_id >= len(tokenizer):
        fallback = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token
        logger.info("tokenizer has no pad token: using %r (as the reference, pad = unk)", fallback)
        tokenizer.pad_token = fallback
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else llama_cfg.bos_token_id
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else llama_cfg.eos_token_id
    return dict(pad_token_id=int(tokenizer.pad_token_id), bos_token_id=int(bos), eos_token_id=int(eos))


# ---- LLM --------------------------------------------------------------------------------------------------

def _llama_fields(cfg, where: str) -> dict[str, Any]:
    """``MLLMConfig`` architecture fields from a transformers ``LlamaConfig``; unsupported variants are errors."""
    problems = []
    if getattr(cfg, "model_type", "llama") not in ("llama", "llava", "llava_llama"):
        problems.append(f"model_type {cfg.model_type!r} is not LLaMA (only LLaMA/Vicuna-based LLMs are supported)")
    if getattr(cfg, "hidden_act", "silu") != "silu":
        problems.append(f"hidden_act {cfg.hidden_act!r} (LLaMA uses 'silu')")
    for name in ("attention_bias", "mlp_bias"):
        if getattr(cfg, name, False):
            problems.append(f"{name} = true is not supported")
    head_dim = getattr(cfg, "head_dim", None)
    if head_dim is not None and head_dim * cfg.num_attention_heads != cfg.hidden_size:
        problems.append(f"head_dim {head_dim} × {cfg.num_attention_heads} heads != hidden_size {cfg.hidden_size}")
    rope = getattr(cfg, "rope_parameters", None) or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        problems.append(f"rope scaling {rope_type!r} is not supported (only plain RoPE)")
    if problems:
        raise ValueError(f"unsupported LLM config in {where}: " + "; ".join(problems))
    theta = rope.get("rope_theta", getattr(cfg, "rope_theta", None))
    return dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                num_key_value_heads=cfg.num_key_value_heads or cfg.num_attention_heads,
                max_position_embeddings=cfg.max_position_embeddings, rms_norm_eps=float(cfg.rms_norm_eps),
                rope_theta=float(theta if theta is not None else 10000.0))


def _vision_fields(cfg, where: str) -> dict[str, Any]:
    """``VisionConfig`` fields from a transformers ``CLIPVisionConfig``."""
    if getattr(cfg, "model_type", None) != "clip_vision_model":
        raise ValueError(f"{where}: the vision tower is {getattr(cfg, 'model_type', None)!r}, but SmartEdit uses a "
                         f"CLIP ViT (model_type 'clip_vision_model'); {CLIP_LAYOUT}")
    if getattr(cfg, "num_channels", 3) != 3:
        raise ValueError(f"{where}: the CLIP vision tower must read 3-channel images, not {cfg.num_channels}")
    return dict(hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
                image_size=cfg.image_size, patch_size=cfg.patch_size, projection_dim=cfg.projection_dim,
                layer_norm_eps=float(cfg.layer_norm_eps), hidden_act=cfg.hidden_act)


@functools.lru_cache(maxsize=None)
def _vision_key_prefix() -> str:
    """How the installed transformers names ``CLIPVisionModel`` keys: ``vision_model.`` or nothing (v5)."""
    from transformers import CLIPVisionConfig, CLIPVisionModel

    with torch.device("meta"):
        keys = CLIPVisionModel(CLIPVisionConfig(hidden_size=8, intermediate_size=8, num_hidden_layers=1,
                                                num_attention_heads=1, image_size=4, patch_size=2)).state_dict()
    return "vision_model." if any(k.startswith("vision_model.") for k in keys) else ""


def _normalise_vision_keys(part: dict[str, torch.Tensor], where: dict[str, str], part_name: str = "vision"
                           ) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """CLIP vision keys with or without ``vision_model.`` → the installed ``CLIPVisionModel``'s names; the
    ``position_ids`` buffer some older files hold is dropped."""
    prefix = _vision_key_prefix()
    out, out_where = {}, {}
    for key, value in part.items():
        bare = key[len("vision_model."):] if key.startswith("vision_model.") else key
        if bare == "embeddings.position_ids":
            continue
        out[prefix + bare] = value
        out_where[f"{part_name}.{prefix + bare}"] = where.get(f"{part_name}.{key}", "?")
    return out, out_where


def _expected_llama(fields: dict[str, Any], vocab: int) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **{k: v for k, v in fields.items()
                                                                       if k != "rope_theta"})
    with torch.device("meta"):
        return LlamaForCausalLM(cfg).state_dict()


def _expected_projector(kind: str, vision_dim: int, llm_dim: int) -> dict[str, torch.Tensor]:
    from .mllm import build_projector

    with torch.device("meta"):
        return build_projector(kind, vision_dim, llm_dim).state_dict()


def _expected_vision(fields: dict[str, Any]) -> dict[str, torch.Tensor]:
    from transformers import CLIPVisionModel

    from .mllm import clip_vision_config

    with torch.device("meta"):
        return CLIPVisionModel(clip_vision_config(VisionConfig(**fields))).state_dict()


def _projector_kind(state: Mapping[str, torch.Tensor] | None) -> str | None:
    if not state:
        return None
    return "mlp2x_gelu" if any(k.startswith(("0.", "2.")) for k in state) else "linear"


def _detect_llm_layout(raw: dict[str, Any]) -> str:
    if "text_config" in raw:
        return "llava-hf"
    if raw.get("model_type") in ("llava", "llava_llama") or "mm_hidden_size" in raw or "mm_vision_tower" in raw:
        return "llava-1.1"
    if raw.get("model_type") == "llama":
        return "llama"
    return "unknown"


def _drop_key(key: str) -> bool:
    return key.endswith("rotary_emb.inv_freq")


def load_llm(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> LoadedLLM:
    """Read an LLM folder (plain LLaMA/Vicuna, original LLaVA-1.1, or llava-hf; see :data:`LLM_LAYOUT`).

    ``tokenizer``: a folder to take the tokenizer from instead of ``path`` (e.g. Vicuna's, as the reference did).
    Returns the LLaMA weights cut to the tokenizer's base vocabulary, the projector and (llava-hf) vision tower.
    """
    from transformers import LlamaConfig, LlavaConfig

    path = _require_dir(path, "LLM", LLM_LAYOUT)
    raw = _read_json(os.path.join(path, CONFIG_NAME), "LLM config", LLM_LAYOUT)
    layout = _detect_llm_layout(raw)
    if layout == "unknown":
        raise ValueError(f"{os.path.join(path, CONFIG_NAME)} has model_type {raw.get('model_type')!r}, which is "
                         f"not a LLaMA/LLaVA model; {LLM_LAYOUT}")

    vision_fields = None
    select_layer = None
    if layout == "llava-hf":
        cfg = LlavaConfig.from_dict(raw)
        llama_cfg = cfg.text_config
        vision_fields = _vision_fields(cfg.vision_config, f"{path} vision_config")
        select_layer = cfg.vision_feature_layer
        problems = []
        if not isinstance(select_layer, int):
            problems.append(f"vision_feature_layer {select_layer!r} (SmartEdit reads one layer)")
        if cfg.vision_feature_select_strategy != "default":
            problems.append(f"vision_feature_select_strategy {cfg.vision_feature_select_strategy!r} (SmartEdit "
                            f"drops the CLS token: 'default')")
        if cfg.projector_hidden_act != "gelu" or not getattr(cfg, "multimodal_projector_bias", True):
            problems.append("projector must be Linear(bias) → GELU → Linear(bias) (mlp2x_gelu)")
        if problems:
            raise ValueError(f"unsupported llava-hf config in {path}: " + "; ".join(problems))
        rules = [("model.language_model.", "llm", "model."), ("language_model.model.", "llm", "model."),
                 ("language_model.lm_head.", "llm", "lm_head."), ("lm_head.", "llm", "lm_head."),
                 ("model.vision_tower.", "vision", ""), ("vision_tower.", "vision", ""),
                 ("model.multi_modal_projector.linear_1.", "projector", "0."),
                 ("multi_modal_projector.linear_1.", "projector", "0."),
                 ("model.multi_modal_projector.linear_2.", "projector", "2."),
                 ("multi_modal_projector.linear_2.", "projector", "2.")]
    else:
        llama_cfg = LlamaConfig.from_dict(raw)
        rules = [("model.mm_projector.", "projector", ""), ("model.vision_tower.vision_tower.", "vision", ""),
                 ("model.", "llm", "model."), ("lm_head.", "llm", "lm_head.")]
        if layout == "llava-1.1":
            select_layer = raw.get("mm_vision_select_layer")
            kind = raw.get("mm_projector_type", "linear")
            if kind not in MLLMConfig.PROJECTORS:
                raise ValueError(f"{path}: mm_projector_type {kind!r} is not supported; use one of "
                                 f"{list(MLLMConfig.PROJECTORS)}")
    fields = _llama_fields(llama_cfg, os.path.join(path, CONFIG_NAME))

    tok_path = _require_dir(tokenizer, "tokenizer", LLM_LAYOUT) if tokenizer is not None else path
    tok = _load_tokenizer(tok_path, "LLM")
    base = len(tok)
    if layout != "llama" and len(tok) > tok.vocab_size:
        base = tok.vocab_size
        tok = _strip_added_tokens(tok, base, tok_path)

    state, sources = read_state_dict(path, layout=LLM_LAYOUT)
    parts, where, problems = _route(state, sources, rules, _drop_key)
    llm_state = parts.get("llm", {})
    projector_state = parts.get("projector")
    vision_state = parts.get("vision")
    if vision_state is not None:
        vision_state, vision_where = _normalise_vision_keys(vision_state, where)
        where.update(vision_where)

    # tied embeddings: the file has no lm_head
    if "lm_head.weight" not in llm_state and getattr(llama_cfg, "tie_word_embeddings", False) \
            and "model.embed_tokens.weight" in llm_state:
        llm_state["lm_head.weight"] = llm_state["model.embed_tokens.weight"]
        where["llm.lm_head.weight"] = where["llm.model.embed_tokens.weight"] + " (tied embeddings)"
    # keep the base vocabulary rows only
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        weight = llm_state.get(key)
        if weight is None or weight.ndim != 2:
            continue
        rows = weight.shape[0]
        if rows < base:
            problems.append(f"wrong shape: llm: {key} from {where[f'llm.{key}']} has {rows} rows, fewer than the "
                            f"tokenizer's {base} tokens")
        elif rows > base:
            logger.info("%s: dropping rows %d..%d of %s (%s; SmartEdit's tokens follow the base vocabulary)",
                        path, base, rows - 1, key,
                        "LLaVA's image tokens, as the reference" if layout == "llava-1.1"
                        else "image/pad tokens and padding rows" if layout == "llava-hf" else "padding rows")
            llm_state[key] = weight[:base]

    files = _files_of(path)
    problems += _key_problems(llm_state, _expected_llama(fields, base), "llm", where, files)
    vision_dim = None
    if layout == "llava-hf":
        vision_dim = vision_fields["hidden_size"]
        problems += _key_problems(vision_state or {}, _expected_vision(vision_fields), "vision", where, files)
    else:
        vision_dim = raw.get("mm_hidden_size")
        if vision_state is not None:
            problems.append("unexpected: vision: model.vision_tower.vision_tower.* (the vision tower comes from "
                            "the CLIP folder; its config is not in an original LLaVA folder)")
            vision_state = None
    kind = _projector_kind(projector_state)
    if layout != "llama" or projector_state is not None:
        kind = kind or ("mlp2x_gelu" if layout == "llava-hf" else raw.get("mm_projector_type", "linear"))
        if vision_dim is None:  # read it off the projector itself
            first = (projector_state or {}).get("0.weight" if kind == "mlp2x_gelu" else "weight")
            vision_dim = int(first.shape[1]) if first is not None and first.ndim == 2 else 0
        if vision_dim:
            problems += _key_problems(projector_state or {}, _expected_projector(kind, int(vision_dim),
                                                                                 fields["hidden_size"]),
                                      "projector", where, files)
        else:
            problems.append(f"missing: projector: cannot tell the vision width (no mm_hidden_size in "
                            f"{CONFIG_NAME} and no projector weight in {files})")
    _raise_problems(problems, f"the weights in {path} (read as a {layout} folder) do not fit its config",
                    LLM_LAYOUT)

    mllm = dict(fields, vocab_size=base, **_token_ids(tok, llama_cfg))
    if kind is not None:
        mllm["projector"] = kind
    logger.info("loaded %s LLM from %s: %d layers, hidden %d, base vocabulary %d, projector %s", layout, path,
                fields["num_hidden_layers"], fields["hidden_size"], base, kind or "none")
    return LoadedLLM(path=path, layout=layout, mllm=mllm, llm_state=llm_state, projector_state=projector_state,
                     vision=vision_fields, vision_state=vision_state, tokenizer=tok,
                     select_layer=select_layer if isinstance(select_layer, int) else None,
                     vision_tower_name=raw.get("mm_vision_tower"), sources=where)


# ---- CLIP -------------------------------------------------------------------------------------------------

def load_clip(path: str | os.PathLike) -> LoadedCLIP:
    """Read the vision tower of a CLIP folder (``CLIPModel`` or ``CLIPVisionModel`` layout, see
    :data:`CLIP_LAYOUT`); the text tower and projections are not read."""
    from transformers import CLIPConfig, CLIPVisionConfig

    path = _require_dir(path, "CLIP", CLIP_LAYOUT)
    raw = _read_json(os.path.join(path, CONFIG_NAME), "CLIP config", CLIP_LAYOUT)
    model_type = raw.get("model_type")
    if model_type == "clip":
        vision_cfg = CLIPConfig.from_dict(raw).vision_config
    elif model_type == "clip_vision_model":
        vision_cfg = CLIPVisionConfig.from_dict(raw)
    else:
        raise ValueError(f"{os.path.join(path, CONFIG_NAME)} has model_type {model_type!r}, not a CLIP model; "
                         f"{CLIP_LAYOUT}")
    fields = _vision_fields(vision_cfg, path)

    def keep(key: str) -> bool:  # skip the text tower and the projection heads
        return not key.startswith(("text_model.", "text_projection.", "visual_projection.", "logit_scale"))

    state, sources = read_state_dict(path, keep=keep, layout=CLIP_LAYOUT)
    where = {f"vision.{k}": v for k, v in sources.items()}
    vision_state, where = _normalise_vision_keys(state, where)
    problems = _key_problems(vision_state, _expected_vision(fields), "vision", where, _files_of(path))
    _raise_problems(problems, f"the CLIP vision weights in {path} do not fit its config", CLIP_LAYOUT)
    logger.info("loaded CLIP vision tower from %s: %d layers, hidden %d, %d px / patch %d", path,
                fields["num_hidden_layers"], fields["hidden_size"], fields["image_size"], fields["patch_size"])
    return LoadedCLIP(path=path, vision=fields, vision_state=vision_state, sources=where)


# ---- Stable Diffusion -------------------------------------------------------------------------------------

def _norm_value(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return tuple(_norm_value(v) for v in value)
    return value


def _config_mismatches(loaded: Mapping[str, Any], reference: Mapping[str, Any], ignore: set[str]) -> list[str]:
    """diffusers config entries where the folder's model differs from what smartedit's builder makes."""
    out = []
    for key in sorted(set(loaded) & set(reference)):
        if key.startswith("_") or key in ignore:
            continue
        a, b = _norm_value(loaded[key]), _norm_value(reference[key])
        if key == "attention_head_dim" and isinstance(a, tuple) and len(set(a)) == 1:
            a = a[0]
        if a != b:
            out.append(f"{key}: folder {a!r}, smartedit builds {b!r}")
    return out


def _diffusers_load(cls, path: str, subfolder: str):
    folder = os.path.join(path, subfolder)
    names = os.listdir(folder)
    variant = None
    if not any(n.startswith("diffusion_pytorch_model") and n.count(".") == 1 for n in names) \
            and any(n.startswith("diffusion_pytorch_model.fp16.") for n in names):
        variant = "fp16"
    try:
        return cls.from_pretrained(path, subfolder=subfolder, local_files_only=True, variant=variant)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot load {cls.__name__} from {folder} ({exc}); {SD_LAYOUT}") from None


def _null_text_embedding(path: str, max_length: int) -> torch.Tensor:
    """CLIP text encoder last hidden state of ``""`` padded to ``max_length`` tokens, as diffusers' SD pipelines
    encode an empty negative prompt (attention mask only if the encoder's config asks for it)."""
    from transformers import CLIPTextModel

    tokenizer = _load_tokenizer(os.path.join(path, "tokenizer"), "Stable Diffusion text")
    folder = os.path.join(path, "text_encoder")
    try:
        encoder, info = CLIPTextModel.from_pretrained(folder, local_files_only=True, dtype=torch.float32,
                                                      output_loading_info=True)
    except (OSError, ValueError, RuntimeError) as exc:
        raise ValueError(f"cannot load the CLIP text encoder from {folder} ({exc}); {SD_LAYOUT}") from None
    bad = [f"missing: {k}" for k in info.get("missing_keys", [])] + \
          [f"wrong shape: {k}" for k in info.get("mismatched_keys", [])]
    _raise_problems(bad, f"the CLIP text encoder weights in {folder} do not fit its config", SD_LAYOUT)
    if encoder.config.max_position_embeddings < max_length:
        raise ValueError(f"the text encoder in {folder} takes at most {encoder.config.max_position_embeddings} "
                         f"tokens, fewer than the {max_length} of the UNet context")
    tokens = tokenizer("", padding="max_length", max_length=max_length, truncation=True, return_tensors="pt")
    mask = tokens["attention_mask"] if getattr(encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        out = encoder(input_ids=tokens["input_ids"], attention_mask=mask).last_hidden_state  # [1, 77, D]
    return out.float().contiguous()


def load_sd(path: str | os.PathLike, in_channels: int | None = None,
            max_length: int = CLIP_TEXT_LENGTH) -> LoadedSD:
    """Read a diffusers Stable Diffusion / InstructPix2Pix folder (see :data:`SD_LAYOUT`).

    The UNet's ``conv_in`` is widened to ``in_channels`` (default: 2 × latent channels, the InstructPix2Pix input,
    when the folder's UNet takes only the noisy latent; an InstructPix2Pix UNet is kept as it is).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .unet import build_unet, build_vae, unet_config_from_diffusers, widen_conv_in

    path = _require_dir(path, "Stable Diffusion", SD_LAYOUT)
    needed = {"unet": "config.json", "vae": "config.json", "scheduler": "scheduler_config.json",
              "text_encoder": "config.json", "tokenizer": None}
    missing = []
    for part, config_file in needed.items():
        folder = os.path.join(path, part)
        if not os.path.isdir(folder):
            missing.append(f"{part}/")
        elif config_file and not os.path.isfile(os.path.join(folder, config_file)):
            missing.append(f"{part}/{config_file}")
    if missing:
        raise FileNotFoundError(f"Stable Diffusion folder {path} lacks {', '.join(missing)}; {SD_LAYOUT}")
    if not os.path.isfile(os.path.join(path, "model_index.json")):
        logger.warning("%s has no model_index.json; reading its subfolders anyway", path)
    in_use = [os.path.join(path, part, name) for part, name in needed.items() if name]
    in_use += _tokenizer_files(os.path.join(path, "tokenizer"))
    in_use += _diffusers_files(os.path.join(path, "unet")) + _diffusers_files(os.path.join(path, "vae"))
    try:
        in_use += weight_files(os.path.join(path, "text_encoder"), SD_LAYOUT)
    except FileNotFoundError:
        pass  # reported by transformers with the layout below
    _check_lfs(in_use)

    unet = _diffusers_load(UNet2DConditionModel, path, "unet")
    unet_fields = unet_config_from_diffusers(unet.config)
    with torch.device("meta"):
        reference_unet = build_unet(UNetConfig(**unet_fields))
    problems = _config_mismatches(unet.config, reference_unet.config, {"in_channels"})
    if problems:
        raise ValueError(f"the UNet in {os.path.join(path, 'unet')} is not an SD-1.5-style UNet that smartedit can "
                         f"rebuild ({len(problems)} difference(s)):\n  " + "\n  ".join(problems))
    original = unet.conv_in.in_channels
    latent = unet_fields["latent_channels"]
    target = in_channels if in_channels is not None else (2 * latent if original == latent else original)
    if target != original:
        widen_conv_in(unet, target)
        logger.info("widened the UNet conv_in of %s from %d to %d input channels (old weights and bias copied, "
                    "new channels zero)", path, original, target)

    vae = _diffusers_load(AutoencoderKL, path, "vae")
    vae_fields = dict(block_out_channels=tuple(vae.config.block_out_channels),
                      layers_per_block=vae.config.layers_per_block, latent_channels=vae.config.latent_channels,
                      norm_num_groups=vae.config.norm_num_groups,
                      scaling_factor=float(vae.config.scaling_factor or VAEConfig.scaling_factor))
    with torch.device("meta"):
        reference_vae = build_vae(VAEConfig(**vae_fields))
    problems = _config_mismatches(vae.config, reference_vae.config,
                                  {"sample_size", "force_upcast", "shift_factor", "latents_mean", "latents_std"})
    if problems:
        raise ValueError(f"the VAE in {os.path.join(path, 'vae')} is not an SD-1.5-style AutoencoderKL that "
                         f"smartedit can rebuild ({len(problems)} difference(s)):\n  " + "\n  ".join(problems))

    sched_raw = _read_json(os.path.join(path, "scheduler", "scheduler_config.json"), "scheduler config", SD_LAYOUT)
    if sched_raw.get("trained_betas") is not None:
        raise ValueError(f"{path}/scheduler uses trained_betas, which smartedit's SchedulerConfig cannot express")
    defaults = SchedulerConfig()
    scheduler = {name: sched_raw.get(name, getattr(defaults, name))
                 for name in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")}

    info = os.path.join(path, "smartedit.json")  # written by smartedit.train.pretrain for ShapesWorld folders
    if os.path.isfile(info):
        meta = _read_json(info, "smartedit.json", SD_LAYOUT)
        scheduler["diffuse"] = meta.get("diffuse", "target")
        scheduler["decode"] = meta.get("decode", "latent")
    null = _null_text_embedding(path, max_length)
    logger.info("loaded Stable Diffusion from %s: UNet %s (conv_in %d → %d ch), VAE %s, scheduler %s",
                path, tuple(unet_fields["block_out_channels"]), original, unet.conv_in.in_channels,
                vae_fields["block_out_channels"], sched_raw.get("_class_name", "?"))
    return LoadedSD(path=path, unet=unet, vae=vae, unet_config=unet_fields, vae_config=vae_fields,
                    scheduler=scheduler, null_text_embedding=null, original_in_channels=original)


# ---- assembly ---------------------------------------------------------------------------------------------

def _apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> None:
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value


def _assign(module: nn.Module, state: Mapping[str, torch.Tensor], part: str, where: Mapping[str, str],
            origin: str, dtype: torch.dtype) -> None:
    """Strictly assign ``state`` to a (meta) module, each tensor cast to ``dtype``; one error for every problem."""
    problems = _key_problems(state, module.state_dict(), part, where, origin)
    _raise_problems(problems, f"the {part} weights from {origin} do not fit the assembled model")
    module.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()},
                           strict=True, assign=True)


def _with_new_rows(weight: torch.Tensor, full: int, dtype: torch.dtype) -> torch.Tensor:
    """[base, H] → [full, H]: base rows copied, new rows zero (set to the mean by ``init_new_token_rows``)."""
    out = torch.zeros(full, weight.shape[1], dtype=dtype)
    out[:weight.shape[0]] = weight.to(dtype)
    return out


def from_components(llm: str | os.PathLike | LoadedLLM, clip: str | os.PathLike | LoadedCLIP | None = None,
                    sd: str | os.PathLike | LoadedSD | None = None, preset: str | SmartEditConfig | None = None,
                    *, dtype: torch.dtype | str = torch.float32, seed: int | None = 0, **overrides: Any):
    """Assemble a :class:`~smartedit.model.SmartEditModel` from pretrained parts (folders or ``load_*`` results).

    * ``llm``: LLaMA/Vicuna, LLaVA-1.1 or llava-hf folder (:func:`load_llm`);
    * ``clip``: CLIP folder for the vision tower (:func:`load_clip`); optional for llava-hf, whose own tower is
      used when no ``clip`` is given;
    * ``sd``: Stable Diffusion / InstructPix2Pix diffusers folder (:func:`load_sd`);
    * ``preset``: where the Q-Former, BIM, resolution and training settings come from (default ``7b``);
    * ``overrides``: dotted config keys, e.g. ``**{"bim.enabled": False}``.

    Vision, MLLM, UNet, VAE and scheduler configs come from the folders. Loaded weights are assigned (cast to
    ``dtype``: a torch dtype or its name, ``auto`` = :func:`smartedit.model.save_dtype`); the Q-Former, BIM and
    (for a plain LLaMA folder) the projector are freshly initialised with
    ``seed``, and the 35 new token rows are the mean of the base rows. A ``LoadedSD`` passed in shares its
    tensors with the returned model.
    """
    from accelerate import init_empty_weights

    from .bim import BidirectionalInteraction
    from .mllm import build_projector
    from .model import SmartEditModel, save_dtype
    from .qformer import SmartEditQFormer
    from .unet import widen_conv_in

    if sd is None:
        raise ValueError(f"from_components needs sd=<Stable Diffusion / InstructPix2Pix folder>; {SD_LAYOUT}")
    llm = llm if isinstance(llm, LoadedLLM) else load_llm(llm)
    clip = clip if clip is None or isinstance(clip, LoadedCLIP) else load_clip(clip)
    sd = sd if isinstance(sd, LoadedSD) else load_sd(sd)

    if clip is not None:
        vision, vision_state, vision_where, vision_origin = clip.vision, clip.vision_state, clip.sources, clip.path
        if llm.vision_state is not None:
            logger.warning("using the vision tower of %s, not the one in %s", clip.path, llm.path)
    elif llm.vision_state is not None:
        vision, vision_state, vision_where, vision_origin = llm.vision, llm.vision_state, llm.sources, llm.path
    else:
        hint = f" (LLaVA was trained with {llm.vision_tower_name})" if llm.vision_tower_name else ""
        raise ValueError(f"no vision tower: the {llm.layout} folder {llm.path} holds none; pass clip=<CLIP ViT "
                         f"folder>{hint}; {CLIP_LAYOUT}")
    if llm.vision_tower_name and clip is not None:
        logger.info("LLaVA folder names vision tower %r; using %s", llm.vision_tower_name, clip.path)

    base = preset if isinstance(preset, SmartEditConfig) else make_preset(preset or "7b")
    data = base.to_dict()
    data["preset"] = "custom"
    data["vision"] = dict(vision, select_layer=llm.select_layer if llm.select_layer is not None
                          else base.vision.select_layer)
    data["mllm"] = dict(data["mllm"], **llm.mllm)
    if llm.projector_state is None:
        data["mllm"]["projector"] = base.mllm.projector
    data["unet"] = dict(sd.unet_config, mask_channels=base.unet.mask_channels)
    data["vae"] = dict(sd.vae_config)
    data["scheduler"] = dict(sd.scheduler)
    _apply_overrides(data, overrides)
    origin = f"llm={llm.path}, clip={clip.path if clip else None}, sd={sd.path}, preset={base.preset}"
    try:
        config = SmartEditConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.problems, f"SmartEdit config assembled from {origin}") from None

    problems = []
    if llm.projector_state is not None:
        first = llm.projector_state.get("0.weight", llm.projector_state.get("weight"))
        if first is not None and first.shape[1] != config.vision.hidden_size:
            problems.append(f"the projector of {llm.path} reads {first.shape[1]}-dim vision features but the vision "
                            f"tower from {vision_origin} outputs {config.vision.hidden_size}")
        if _projector_kind(llm.projector_state) != config.mllm.projector:
            problems.append(f"mllm.projector is {config.mllm.projector!r} but {llm.path} holds a "
                            f"{_projector_kind(llm.projector_state)!r} projector")
    want = (1, config.qformer.num_queries, config.qformer.hidden_size)
    if tuple(sd.null_text_embedding.shape) != want:
        problems.append(f"the null text embedding of {sd.path} is {tuple(sd.null_text_embedding.shape)}, but the "
                        f"Q-Former emits {want[1:]} (qformer.num_queries × qformer.hidden_size)")
    if config.mllm.vocab_size != len(llm.tokenizer) and len(llm.tokenizer) != config.mllm.full_vocab_size:
        problems.append(f"mllm.vocab_size {config.mllm.vocab_size} differs from the tokenizer's base vocabulary "
                        f"{len(llm.tokenizer)}")
    _raise_problems(problems, f"the components do not fit together ({origin})")

    if isinstance(dtype, str):
        dtype = save_dtype(config, dtype)
    with init_empty_weights(include_buffers=False):
        model = SmartEditModel(config, llm.tokenizer)
    # new parts: a real initialisation
    if seed is not None:
        torch.manual_seed(seed)
    model.qformer = SmartEditQFormer(config.qformer, config.mllm.hidden_size, config.attn_implementation)
    if config.bim.enabled:
        model.bim = BidirectionalInteraction(config.bim, config.qformer.hidden_size, config.vision.grid_size,
                                             config.unet.block_out_channels[0], config.attn_implementation)
    if llm.projector_state is None:
        logger.warning("%s holds no vision projector: it is randomly initialised (train it, LLaVA stage 1, before "
                       "editing)", llm.path)
        model.mllm.projector = build_projector(config.mllm.projector, config.vision.hidden_size,
                                               config.mllm.hidden_size)
    else:
        _assign(model.mllm.projector, llm.projector_state, "projector", llm.sources, llm.path, dtype)

    # loaded parts: assigned
    full = config.mllm.full_vocab_size
    llm_state = dict(llm.llm_state)
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        if key in llm_state and llm_state[key].shape[0] == config.mllm.vocab_size:
            llm_state[key] = _with_new_rows(llm_state[key], full, dtype)
    _assign(model.mllm.llm, llm_state, "llm", llm.sources, llm.path, dtype)
    _assign(model.mllm.vision_tower, vision_state, "vision", vision_where, vision_origin, dtype)
    if sd.unet.conv_in.in_channels != config.unet.in_channels:
        widen_conv_in(sd.unet, config.unet.in_channels)
    unet_where = {f"unet.{k}": f"{sd.path}/unet" for k in sd.unet.state_dict()}
    vae_where = {f"vae.{k}": f"{sd.path}/vae" for k in sd.vae.state_dict()}
    _assign(model.unet, sd.unet.state_dict(), "unet", unet_where, f"{sd.path}/unet", dtype)
    _assign(model.vae, sd.vae.state_dict(), "vae", vae_where, f"{sd.path}/vae", dtype)
    model.conv_in_residual.reattach(model.unet)
    with torch.no_grad():
        model.null_text_embedding.copy_(sd.null_text_embedding)

    empty = [n for n, t in list(model.named_parameters()) + list(model.named_buffers()) if t.is_meta]
    if empty:
        raise RuntimeError(f"internal error: {len(empty)} tensor(s) were neither loaded nor initialised: "
                           + ", ".join(empty[:20]))
    model.mllm.init_new_token_rows()
    model.to(dtype)
    logger.info("assembled SmartEdit from %s (%.1f M parameters, %s)", origin,
                sum(p.numel() for p in model.parameters()) / 1e6, dtype)
    return model.eval()
