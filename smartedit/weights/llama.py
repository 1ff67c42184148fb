"""The LLM of SmartEdit from a local folder: LLaMA / Vicuna, an original LLaVA-1.1 merge, or llava-hf.

* a plain Hugging Face LLaMA / Vicuna folder (``config.json`` with ``model_type: llama``);
* an original LLaVA-1.1 folder (``model_type: llava`` with LLaMA fields at the top level, ``mm_hidden_size``,
  ``mm_vision_tower``; keys ``model.*``, ``lm_head.weight`` and ``model.mm_projector.*``). As in the reference,
  LLaVA's extra vocabulary rows (``<im_patch>``, ``<im_start>``, ``<im_end>``, ids 32000..32002) are dropped;
* a llava-hf folder (transformers ``LlavaForConditionalGeneration``: ``text_config`` / ``vision_config``; keys
  ``model.language_model.*`` … or the older ``language_model.model.*`` …). It carries its own vision tower and
  an ``mlp2x_gelu`` projector (``linear_1`` / ``linear_2`` become ``0`` / ``2``).

Vocabulary: the LLM keeps exactly the tokenizer's *base* vocabulary (32,000 rows for LLaMA); SmartEdit's 35 new
tokens follow it. Rows a LLaVA checkpoint added beyond the base vocabulary (LLaVA-1.1's three image tokens,
llava-hf's ``<image>`` / ``<pad>`` tokens and the padding rows up to a multiple of 64) are dropped together with
the matching added tokens of the tokenizer, because SmartEdit's new tokens must sit right after the base
vocabulary (ids 32000..32034) and LLaVA's ``<image>`` placeholder is replaced by SmartEdit's own ``<img>``.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from ..config import MLLMConfig
from .clip import expected_vision, normalise_vision_keys, vision_fields
from .files import (CONFIG_NAME, WEIGHTS_HELP, describe_weight_files, key_problems, raise_problems, read_json,
                    read_state_dict, read_tokenizer, require_dir)

logger = logging.getLogger(__name__)

__all__ = ["LLM_LAYOUT", "LoadedLLM", "load_llm", "llama_fields", "projector_kind", "strip_added_tokens"]

LLM_LAYOUT = (f"an LLM folder holds {CONFIG_NAME} (model_type 'llama' for LLaMA/Vicuna; 'llava' with "
              f"mm_hidden_size/mm_vision_tower for an original LLaVA-1.1 merge; 'llava' with text_config and "
              f"vision_config for a llava-hf LlavaForConditionalGeneration), {WEIGHTS_HELP}, and the tokenizer "
              f"(tokenizer.json or tokenizer.model, with tokenizer_config.json)")

# (old key prefix, part, new prefix), first match wins
_LLAVA_HF_RULES = [("model.language_model.", "llm", "model."), ("language_model.model.", "llm", "model."),
                   ("language_model.lm_head.", "llm", "lm_head."), ("lm_head.", "llm", "lm_head."),
                   ("model.vision_tower.", "vision", ""), ("vision_tower.", "vision", ""),
                   ("model.multi_modal_projector.linear_1.", "projector", "0."),
                   ("multi_modal_projector.linear_1.", "projector", "0."),
                   ("model.multi_modal_projector.linear_2.", "projector", "2."),
                   ("multi_modal_projector.linear_2.", "projector", "2.")]
_LLAVA_RULES = [("model.mm_projector.", "projector", ""), ("model.vision_tower.vision_tower.", "vision", ""),
                ("model.", "llm", "model."), ("lm_head.", "llm", "lm_head.")]


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
class _Plan:
    """How to read one LLM folder: its configs and how its keys map onto SmartEdit's parts."""

    layout: str
    raw: dict[str, Any]
    llama_cfg: Any
    fields: dict[str, Any]
    rules: list[tuple[str, str, str]]
    vision: dict[str, Any] | None = None
    select_layer: Any = None


# ---- tokenizer --------------------------------------------------------------------------------------------

_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_TOKENIZER_JSONS = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _content(token: Any) -> Any:
    return token.get("content") if isinstance(token, dict) else token


def _strip_tokenizer_json(path: str, base: int) -> None:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    data["added_tokens"] = [t for t in data.get("added_tokens", []) if t["id"] < base]
    vocab = (data.get("model") or {}).get("vocab")
    if isinstance(vocab, dict):
        data["model"]["vocab"] = {k: v for k, v in vocab.items() if v < base}
    elif isinstance(vocab, list):
        data["model"]["vocab"] = vocab[:base]
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f)


def _strip_tokenizer_config(path: str, base: int, removed: set[str]) -> None:
    """tokenizer_config.json / special_tokens_map.json without the removed tokens (special tokens unset)."""
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    if isinstance(cfg.get("added_tokens_decoder"), dict):
        cfg["added_tokens_decoder"] = {k: v for k, v in cfg["added_tokens_decoder"].items() if int(k) < base}
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


def strip_added_tokens(tokenizer, base: int, source: str):
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
        _strip_tokenizer_json(tj, base)
        for name in _TOKENIZER_JSONS[1:]:
            if os.path.isfile(os.path.join(tmp, name)):
                _strip_tokenizer_config(os.path.join(tmp, name), base, removed)
        for name in os.listdir(tmp):  # only the JSON files define the tokenizer now
            if name not in _TOKENIZER_JSONS:
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


def _base_tokenizer(path: str, tokenizer: str | os.PathLike | None, layout: str) -> tuple[Any, int]:
    """The tokenizer (of ``tokenizer`` or ``path``) cut to its base vocabulary, and that vocabulary's size."""
    tok_path = require_dir(tokenizer, "tokenizer", LLM_LAYOUT) if tokenizer is not None else path
    tok = read_tokenizer(tok_path, "LLM")
    base = len(tok)
    if layout != "llama" and len(tok) > tok.vocab_size:
        base = tok.vocab_size
        tok = strip_added_tokens(tok, base, tok_path)
    return tok, base


# ---- configs ----------------------------------------------------------------------------------------------

def llama_fields(cfg, where: str) -> dict[str, Any]:
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


def _detect_layout(raw: dict[str, Any]) -> str:
    if "text_config" in raw:
        return "llava-hf"
    if raw.get("model_type") in ("llava", "llava_llama") or "mm_hidden_size" in raw or "mm_vision_tower" in raw:
        return "llava-1.1"
    if raw.get("model_type") == "llama":
        return "llama"
    return "unknown"


def _llava_hf_plan(path: str, raw: dict[str, Any]) -> _Plan:
    from transformers import LlavaConfig

    cfg = LlavaConfig.from_dict(raw)
    select_layer = cfg.vision_feature_layer
    problems = []
    if not isinstance(select_layer, int):
        problems.append(f"vision_feature_layer {select_layer!r} (SmartEdit reads one layer)")
    if cfg.vision_feature_select_strategy != "default":
        problems.append(f"vision_feature_select_strategy {cfg.vision_feature_select_strategy!r} (SmartEdit "
                        f"drops the CLS token: 'default')")
    if cfg.projector_hidden_act != "gelu" or not getattr(cfg, "multimodal_projector_bias", True):
        problems.append("projector must be Linear(bias) → GELU → Linear(bias) (mlp2x_gelu)")
    vision = vision_fields(cfg.vision_config, f"{path} vision_config")
    if problems:
        raise ValueError(f"unsupported llava-hf config in {path}: " + "; ".join(problems))
    return _Plan("llava-hf", raw, cfg.text_config, llama_fields(cfg.text_config, os.path.join(path, CONFIG_NAME)),
                 _LLAVA_HF_RULES, vision, select_layer)


def _llama_plan(path: str, raw: dict[str, Any], layout: str) -> _Plan:
    from transformers import LlamaConfig

    llama_cfg = LlamaConfig.from_dict(raw)
    select_layer = None
    if layout == "llava-1.1":
        select_layer = raw.get("mm_vision_select_layer")
        kind = raw.get("mm_projector_type", "linear")
        if kind not in MLLMConfig.PROJECTORS:
            raise ValueError(f"{path}: mm_projector_type {kind!r} is not supported; use one of "
                             f"{list(MLLMConfig.PROJECTORS)}")
    return _Plan(layout, raw, llama_cfg, llama_fields(llama_cfg, os.path.join(path, CONFIG_NAME)), _LLAVA_RULES,
                 None, select_layer)


def _plan(path: str) -> _Plan:
    raw = read_json(os.path.join(path, CONFIG_NAME), "LLM config", LLM_LAYOUT)
    layout = _detect_layout(raw)
    if layout == "unknown":
        raise ValueError(f"{os.path.join(path, CONFIG_NAME)} has model_type {raw.get('model_type')!r}, which is "
                         f"not a LLaMA/LLaVA model; {LLM_LAYOUT}")
    return _llava_hf_plan(path, raw) if layout == "llava-hf" else _llama_plan(path, raw, layout)


# ---- weights ----------------------------------------------------------------------------------------------

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


def _drop_key(key: str) -> bool:
    """Stale RoPE buffers, and LLaVA-NeXT's ``image_newline`` (the row separator of its any-resolution tiles;
    SmartEdit reads the base tile only)."""
    return key.endswith("rotary_emb.inv_freq") or key.split(".")[-1] == "image_newline"


def _fit_vocabulary(llm_state: dict[str, torch.Tensor], where: dict[str, str], plan: _Plan, base: int,
                    path: str) -> list[str]:
    """Untie tied embeddings (the file has no lm_head) and keep only the base vocabulary rows, in place."""
    if "lm_head.weight" not in llm_state and getattr(plan.llama_cfg, "tie_word_embeddings", False) \
            and "model.embed_tokens.weight" in llm_state:
        llm_state["lm_head.weight"] = llm_state["model.embed_tokens.weight"]
        where["llm.lm_head.weight"] = where["llm.model.embed_tokens.weight"] + " (tied embeddings)"
    problems = []
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
                        "LLaVA's image tokens, as the reference" if plan.layout == "llava-1.1"
                        else "image/pad tokens and padding rows" if plan.layout == "llava-hf" else "padding rows")
            llm_state[key] = weight[:base]
    return problems


def projector_kind(state: Mapping[str, torch.Tensor] | None) -> str | None:
    """``mlp2x_gelu`` or ``linear`` from a projector state dict's keys (None for no projector)."""
    if not state:
        return None
    return "mlp2x_gelu" if any(k.startswith(("0.", "2.")) for k in state) else "linear"


def _expected_llama(fields: dict[str, Any], vocab: int) -> dict[str, torch.Tensor]:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, tie_word_embeddings=False, **{k: v for k, v in fields.items()
                                                                       if k != "rope_theta"})
    with torch.device("meta"):
        return LlamaForCausalLM(cfg).state_dict()


def _expected_projector(kind: str, vision_dim: int, llm_dim: int) -> dict[str, torch.Tensor]:
    from ..mllm import build_projector

    with torch.device("meta"):
        return build_projector(kind, vision_dim, llm_dim).state_dict()


def _check_projector(projector_state: dict[str, torch.Tensor] | None, plan: _Plan, vision_dim: int | None,
                     where: dict[str, str], files: str) -> tuple[str | None, list[str]]:
    """The projector's kind and its missing / unexpected / wrongly shaped tensors (none for a plain LLaMA)."""
    kind = projector_kind(projector_state)
    if plan.layout == "llama" and projector_state is None:
        return kind, []
    kind = kind or ("mlp2x_gelu" if plan.layout == "llava-hf" else plan.raw.get("mm_projector_type", "linear"))
    if vision_dim is None:  # read it off the projector itself
        first = (projector_state or {}).get("0.weight" if kind == "mlp2x_gelu" else "weight")
        vision_dim = int(first.shape[1]) if first is not None and first.ndim == 2 else 0
    if not vision_dim:
        return kind, [f"missing: projector: cannot tell the vision width (no mm_hidden_size in {CONFIG_NAME} and no "
                      f"projector weight in {files})"]
    expected = _expected_projector(kind, int(vision_dim), plan.fields["hidden_size"])
    return kind, key_problems(projector_state or {}, expected, "projector", where, files)


def _read_parts(path: str, plan: _Plan) -> tuple[dict[str, dict[str, torch.Tensor] | None], dict[str, str],
                                                 list[str]]:
    """The folder's tensors split into ``llm`` / ``projector`` / ``vision`` (vision keys normalised)."""
    state, sources = read_state_dict(path, layout=LLM_LAYOUT)
    parts, where, problems = _route(state, sources, plan.rules, _drop_key)
    vision_state = parts.get("vision")
    if vision_state is not None:
        vision_state, vision_where = normalise_vision_keys(vision_state, where)
        where.update(vision_where)
    return {"llm": parts.get("llm", {}), "projector": parts.get("projector"), "vision": vision_state}, where, problems


def load_llm(path: str | os.PathLike, tokenizer: str | os.PathLike | None = None) -> LoadedLLM:
    """Read an LLM folder (plain LLaMA/Vicuna, original LLaVA-1.1, or llava-hf; see :data:`LLM_LAYOUT`).

    ``tokenizer``: a folder to take the tokenizer from instead of ``path`` (e.g. Vicuna's, as the reference did).
    Returns the LLaMA weights cut to the tokenizer's base vocabulary, the projector and (llava-hf) vision tower.
    """
    path = require_dir(path, "LLM", LLM_LAYOUT)
    plan = _plan(path)
    tok, base = _base_tokenizer(path, tokenizer, plan.layout)
    parts, where, problems = _read_parts(path, plan)
    llm_state, vision_state = parts["llm"], parts["vision"]
    problems += _fit_vocabulary(llm_state, where, plan, base, path)

    files = describe_weight_files(path)
    problems += key_problems(llm_state, _expected_llama(plan.fields, base), "llm", where, files)
    if plan.layout == "llava-hf":
        vision_dim = plan.vision["hidden_size"]
        problems += key_problems(vision_state or {}, expected_vision(plan.vision), "vision", where, files)
    else:
        vision_dim = plan.raw.get("mm_hidden_size")
        if vision_state is not None:
            problems.append("unexpected: vision: model.vision_tower.vision_tower.* (the vision tower comes from "
                            "the CLIP folder; its config is not in an original LLaVA folder)")
            vision_state = None
    kind, projector_problems = _check_projector(parts["projector"], plan, vision_dim, where, files)
    raise_problems(problems + projector_problems,
                   f"the weights in {path} (read as a {plan.layout} folder) do not fit its config", LLM_LAYOUT)

    mllm = dict(plan.fields, vocab_size=base, **_token_ids(tok, plan.llama_cfg))
    if kind is not None:
        mllm["projector"] = kind
    logger.info("loaded %s LLM from %s: %d layers, hidden %d, base vocabulary %d, projector %s", plan.layout, path,
                plan.fields["num_hidden_layers"], plan.fields["hidden_size"], base, kind or "none")
    return LoadedLLM(path=path, layout=plan.layout, mllm=mllm, llm_state=llm_state,
                     projector_state=parts["projector"], vision=plan.vision, vision_state=vision_state,
                     tokenizer=tok, select_layer=plan.select_layer if isinstance(plan.select_layer, int) else None,
                     vision_tower_name=plan.raw.get("mm_vision_tower"), sources=where)
