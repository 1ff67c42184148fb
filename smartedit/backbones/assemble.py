"""Assemble a SmartEdit model from a published Qwen2.5-VL folder (transformers layout, local; nothing downloaded).

The folder holds config.json (``model_type: qwen2_5_vl``), the weights (model.safetensors or shards + index; keys
``model.visual.*``, ``model.language_model.*``, ``lm_head.weight``, or the older ``visual.*`` / ``model.*``), the
tokenizer (tokenizer.json + tokenizer_config.json), the chat template (in tokenizer_config.json,
chat_template.jinja or chat_template.json) and preprocessor_config.json (the Qwen2-VL image processor). The MLLM
config comes from the folder, everything else (Q-Former, BIM, generator, training settings) from ``preset``. The
vocabulary keeps the tokenizer's tokens (rows beyond ``len(tokenizer)`` padding the checkpoint's matrices are
dropped) and SmartEdit's 35 tokens follow, mean-initialised.
"""

from __future__ import annotations

import json
import logging
import os

import torch

from ..config import SmartEditConfig, preset as make_preset
from ..loading import read_state_dict
from ..mllm import CLIP_MEAN, CLIP_STD
from .presets import _compose, qwen_vl_sections

logger = logging.getLogger(__name__)

__all__ = ["QWEN_LAYOUT", "from_qwen_vl"]

QWEN_LAYOUT = ("a Qwen2.5-VL folder holds config.json (model_type 'qwen2_5_vl'), model.safetensors (or shards with "
               "model.safetensors.index.json), tokenizer.json + tokenizer_config.json, the chat template "
               "(chat_template.jinja / chat_template.json / tokenizer_config.json) and preprocessor_config.json")
_RULES = (("model.visual.", "vision_tower."), ("visual.", "vision_tower."), ("model.language_model.", "llm.model."),
          ("lm_head.", "llm.lm_head."), ("model.", "llm.model."))


def _json(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing; {QWEN_LAYOUT}")
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tok.chat_template and os.path.isfile(os.path.join(path, "chat_template.json")):
        tok.chat_template = _json(os.path.join(path, "chat_template.json"))["chat_template"]
    if not tok.chat_template:
        raise ValueError(f"{path} has no chat template; {QWEN_LAYOUT}")
    return tok


def from_qwen_vl(path: str | os.PathLike, preset: str | SmartEditConfig = "tiny", image_size: int | None = None,
                 seed: int | None = 0, **overrides) -> "SmartEditModel":  # noqa: F821
    """A SmartEdit model whose MLLM is the Qwen2.5-VL in ``path`` (weights loaded, SmartEdit's tokens added) and
    whose Q-Former, BIM and generator follow ``preset`` (random: train them with the stage scripts). ``image_size``:
    the fixed edit size the vision tower sees (default: the preprocessor's ``max_pixels`` side, else 448)."""
    from transformers import Qwen2_5_VLConfig

    from ..model import SmartEditModel

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Qwen2.5-VL folder {path!r} does not exist; {QWEN_LAYOUT}")
    raw = _json(os.path.join(path, "config.json"))
    if raw.get("model_type") != "qwen2_5_vl":
        raise ValueError(f"{path}/config.json has model_type {raw.get('model_type')!r}, not 'qwen2_5_vl'; "
                         f"{QWEN_LAYOUT}")
    hf = Qwen2_5_VLConfig.from_dict(raw).to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        hf.pop(key, None)
    proc = _json(os.path.join(path, "preprocessor_config.json"))
    v = hf["vision_config"]
    problems = [f"preprocessor {k} {proc.get(k)} != vision_config {name} {v[name]}"
                for k, name in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                                ("temporal_patch_size", "temporal_patch_size")) if proc.get(k, v[name]) != v[name]]
    for k, ref in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
        if k in proc and any(abs(a - b) > 1e-6 for a, b in zip(proc[k], ref)):
            problems.append(f"preprocessor {k} {proc[k]} is not OpenAI CLIP's {list(ref)}")
    if problems:
        raise ValueError(f"unsupported image processor in {path}: " + "; ".join(problems))
    if image_size is None:
        side = int((proc.get("max_pixels") or (proc.get("size") or {}).get("longest_edge") or 448 * 448) ** 0.5)
        unit = v["patch_size"] * v["spatial_merge_size"]
        image_size = min(448, side - side % unit)
    tok = _tokenizer(path)
    base = len(tok)
    t = hf["text_config"]
    eos = tok.eos_token_id if tok.eos_token_id is not None else t["eos_token_id"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    bos = tok.bos_token_id if tok.bos_token_id is not None else t.get("bos_token_id") or pad
    base_cfg = preset if isinstance(preset, SmartEditConfig) else make_preset(preset)
    config = _compose(base_cfg, "custom", mllm=qwen_vl_sections(hf, base, image_size, pad, bos, eos),
                      bim={"hidden_size": v["hidden_size"]})
    if overrides:
        config = config.replace(**overrides)
    model = SmartEditModel.from_config(config, tokenizer=tok, seed=seed)

    state, sources = read_state_dict(path, layout=QWEN_LAYOUT)
    mapped, unexpected = {}, []
    for key, value in state.items():
        for old, new in _RULES:
            if key.startswith(old):
                mapped[new + key[len(old):]] = value
                break
        else:
            unexpected.append(key)
    if "llm.lm_head.weight" not in mapped and "llm.model.embed_tokens.weight" in mapped:
        mapped["llm.lm_head.weight"] = mapped["llm.model.embed_tokens.weight"]  # tied checkpoints (3B)
    target = model.mllm.state_dict()
    for key in ("llm.model.embed_tokens.weight", "llm.lm_head.weight"):
        if key in mapped:
            rows = mapped[key]
            if rows.shape[0] < base:
                raise ValueError(f"{key} of {path} has {rows.shape[0]} rows, fewer than the tokenizer's {base}")
            full = target[key].clone()
            full[:base] = rows[:base]
            mapped[key] = full
    missing = sorted(set(target) - set(mapped))
    wrong = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}" for k in set(mapped) & set(target)
             if mapped[k].shape != target[k].shape]
    extra = sorted(set(mapped) - set(target)) + unexpected
    if missing or wrong or extra:
        lines = [f"missing: {k}" for k in missing] + [f"wrong shape: {k}" for k in wrong] + \
                [f"unexpected: {k}" for k in extra]
        raise ValueError(f"the weights of {path} do not fit its config ({len(lines)} problem(s)):\n  "
                         + "\n  ".join(lines[:30]))
    model.mllm.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True)
    model.mllm.init_new_token_rows()
    logger.info("assembled SmartEdit on Qwen2.5-VL from %s (%s; base vocabulary %d, edit size %d px)", path,
                ", ".join(sorted({os.path.basename(s) for s in sources.values()})), base, image_size)
    return model.eval()
