"""Convert the released SmartEdit checkpoints (``TencentARC/SmartEdit-7B`` / ``-13B``) to our format, and back.

The reference training code saves four plain ``torch.save`` dicts per checkpoint step ``N`` (see
``docs/released_weights.md`` for where to download what)::

    <smartedit>/LLM-N/adapter_model.bin                                LLaMA + LoRA (model.base_model.model.*)
    <smartedit>/LLM-N/adapter_config.json                              LoRA r / alpha / targets (optional here)
    <smartedit>/embeddings_qformer/checkpoint-N_embeddings_qformer.bin Q-Former, queries, lm_head, mm_projector
    <smartedit>/modulate-N/adapter_model.bin                           BIM (modulate_*, pe_layer, dimension_reduction_*)
    <smartedit>/unet-N/adapter_model.bin                               UNet (unet.*)

:func:`convert_released` reads them together with the parts the reference loads from elsewhere (the LLaVA-1.1
merge, optionally Vicuna's config and tokenizer, CLIP ViT-L/14, an SD-1.5 / InstructPix2Pix diffusers folder) and
builds ONE :class:`~smartedit.model.SmartEditModel`, written with ``save_pretrained``. Where each tensor comes from
(exactly as the reference's inference loader):

* LLM: rows ``0..base-1`` of ``embed_tokens`` and ``lm_head`` from LLaVA; rows ``base..base+34`` (SmartEdit's 35
  new tokens, ids 32000..32034) of ``embed_tokens`` from ``LLM-N`` and of ``lm_head`` from ``embeddings_qformer``;
  every other LLaMA matrix and the LoRA adapters from ``LLM-N`` (``rotary_emb.inv_freq`` is dropped). LoRA is
  merged (``W + alpha/r · B @ A``) or kept as a peft adapter (``keep_lora``);
* projector: ``mm_projector`` of ``embeddings_qformer`` (LLaVA's when a stage-1 file has none);
* Q-Former: ``sd_query_tokens`` / ``sd_qformer.*`` renamed to transformers' BLIP-2 names
  (``attention.self`` → ``attention.attention``, ``embeddings.LayerNorm`` → ``layernorm``; ``position_ids``
  dropped);
* BIM: ``modulate_head`` → ``text_in``, ``modulate_transformer`` (SAM names) → ``transformer`` (transformers'
  ``SamTwoWayTransformer``: ``norm1..4`` → ``layer_norm1..4``, ``norm_final_attn`` → ``layer_norm_final_attn``),
  the Gaussian matrix of ``pe_layer`` → ``pos_encoding.positional_embedding`` (taken from the file, never
  regenerated), ``dimension_reduction_head_qformer_out`` → ``text_out``, ``dimension_reduction_head_zeroconv`` →
  ``image_out``;
* UNet: ``unet-N`` with the ``unet.`` prefix stripped; vision tower from CLIP; VAE, noise schedule and the null text
  embedding from the Stable Diffusion folder.

The reference's intermediate checkpoints convert too, so that training can continue with our stage scripts:
**stage 1** (only the embeddings/Q-Former file; ``TrainStage1.py`` names ``qformer.*`` / ``query_tokens`` and its 33
new rows ``<img>``, ``<img_0..31>`` are understood; a missing ``mm_projector`` comes from LLaVA, the LLM and UNet
from LLaVA and the SD folder) and **stage 2a** (MLLM-SD: LLM + embeddings + UNet, no BIM → ``bim.enabled = false``).
The stage is detected from the folders present (``stage="auto"``) or forced.

:func:`export_released` is the inverse: our model folder → the published layout (the four files with exactly the
reference key names and, as far as lossless, the reference dtypes), so that ``convert_released(export_released(m))``
gives ``m`` back bit for bit (given the same LLaVA / CLIP / SD folders).

Every ``.bin`` is read with ``torch.load(map_location="cpu", weights_only=True, mmap=True)``, one file at a time
(the released files are views into one ~5 GB buffer: memory-mapping keeps them cheap, and tensors are copied before
saving since safetensors refuses shared storage). Any mismatch (missing, unexpected or wrongly shaped tensors, a
wrong vocabulary size, a Git LFS pointer instead of a file) is ONE :class:`ReleasedCheckpointError` listing every
offending key and the file it came from.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from ..config import LoRAConfig, SmartEditConfig, preset as make_preset
from ..model import SmartEditModel, save_dtype
from .assemble import config_from_components
from .clip import LoadedCLIP, load_clip
from .files import is_lfs_pointer, read_bin, read_json
from .llama import LLM_LAYOUT, LoadedLLM, llama_fields, load_llm
from .sd import LoadedSD, load_sd

logger = logging.getLogger(__name__)

__all__ = [
    "ReleasedCheckpointError",
    "ReleasedLayout",
    "find_released",
    "convert_released",
    "export_released",
    "published_name",
    "our_name",
    "published_spec",
    "STAGES",
    "FILE_KINDS",
    "REFERENCE_KEY_COUNTS",
    "RELEASED_LAYOUT",
]

# ---- the published layout ---------------------------------------------------------------------------------

LLM, EMBEDDINGS, BIM, UNET = "llm", "embeddings", "bim", "unet"
FILE_KINDS = (LLM, EMBEDDINGS, BIM, UNET)
"""The four files of a reference checkpoint step."""
STAGES = ("stage1", "stage2a", "smartedit")
"""Reference checkpoints that convert: text-alignment stage 1, MLLM-SD stage 2a, the full SmartEdit model."""
STAGE_FILES = {"stage1": (EMBEDDINGS,), "stage2a": (LLM, EMBEDDINGS, UNET), "smartedit": (LLM, EMBEDDINGS, BIM, UNET)}
LLM_PREFIX = "model.base_model.model."
"""Prefix of the LLaMA keys in ``LLM-N`` (SmartEdit_model.model → PeftModelForCausalLM.base_model.model)."""
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_FILE = "adapter_model.bin"
EMBEDDINGS_DIR = "embeddings_qformer"
QFORMER_MAX_POSITIONS = 512
"""Length of the reference Q-Former's (unused) ``embeddings.position_ids`` buffer (BERT's max positions)."""
REFERENCE_LORA = {"r": 8, "lora_alpha": 16, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"]}
"""LoRA of the released weights (``data/adapter_config.json`` of the reference), used when no config is found."""
REFERENCE_KEY_COUNTS = {"7b": {LLM: 450, EMBEDDINGS: 133, BIM: 89, UNET: 686},
                        "13b": {LLM: 562, EMBEDDINGS: 133, BIM: 89, UNET: 686}}
"""Keys per file of the released checkpoints (with the optional ``rotary_emb.inv_freq`` / ``position_ids``)."""
STEP_PATTERN = r"(\d+|last)"
RELEASED_LAYOUT = (
    "a SmartEdit checkpoint folder (TencentARC/SmartEdit-7B or -13B, or a reference training output) holds, for "
    "one step N: embeddings_qformer/checkpoint-N_embeddings_qformer.bin (stage 1 of the reference: "
    "embeddings_qformer/checkpoint-N.bin), LLM-N/adapter_model.bin (+ optional LLM-N/adapter_config.json), "
    "unet-N/adapter_model.bin and modulate-N/adapter_model.bin (stage 2a has no modulate-N, stage 1 only the "
    "embeddings file)")

_FLOAT_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def published_paths(step: str | int) -> dict[str, str]:
    """Relative path of each file of checkpoint step ``step`` in the published layout."""
    return {LLM: f"LLM-{step}/{ADAPTER_FILE}",
            EMBEDDINGS: f"{EMBEDDINGS_DIR}/checkpoint-{step}_embeddings_qformer.bin",
            BIM: f"modulate-{step}/{ADAPTER_FILE}",
            UNET: f"unet-{step}/{ADAPTER_FILE}"}


class ReleasedCheckpointError(ValueError):
    """A released checkpoint does not fit the expected layout; ``problems`` lists every offending key and file."""

    def __init__(self, problems: list[str], what: str, hint: str = ""):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{what} ({len(self.problems)} problem(s)):\n{lines}" + (f"\n{hint}" if hint else ""))


# ---- key mapping ------------------------------------------------------------------------------------------

# (our prefix, file, published prefix); a prefix without a trailing dot is a whole key.
_PREFIXES: tuple[tuple[str, str, str], ...] = (
    ("mllm.llm.model.", LLM, LLM_PREFIX),
    ("mllm.llm.lm_head.weight", EMBEDDINGS, "lm_head.weight"),
    ("mllm.projector.", EMBEDDINGS, "mm_projector."),
    ("qformer.query_tokens", EMBEDDINGS, "sd_query_tokens"),
    ("qformer.qformer.layernorm.", EMBEDDINGS, "sd_qformer.embeddings.LayerNorm."),
    ("qformer.qformer.encoder.", EMBEDDINGS, "sd_qformer.encoder."),
    ("bim.text_in.", BIM, "modulate_head."),
    ("bim.transformer.", BIM, "modulate_transformer."),
    ("bim.pos_encoding.positional_embedding", BIM, "pe_layer.positional_encoding_gaussian_matrix"),
    ("bim.text_out.", BIM, "dimension_reduction_head_qformer_out."),
    ("bim.image_out.", BIM, "dimension_reduction_head_zeroconv."),
    ("unet.", UNET, "unet."),
)
# Tensors of the published files that carry no information for us (recomputed constants).
_DROPPED = (re.compile(r"^model\.base_model\.model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$"),
            re.compile(r"^sd_qformer\.embeddings\.position_ids$"))
# Copies of the embedding matrix that some embeddings files hold (used by stage 1 only).
_EMBED_COPIES = ("model.base_model.model.embed_tokens.weight", "model.embed_tokens.weight")
_LORA = re.compile(r"^(?P<module>.+)\.lora_(?P<ab>[AB])\.default\.weight$")


def _match_prefix(key: str, prefix: str) -> bool:
    return key.startswith(prefix) if prefix.endswith(".") else key == prefix


def published_name(key: str) -> tuple[str, str] | None:
    """Our state-dict key → (file kind, key in the published file); None for what the published files do not hold
    (vision tower, VAE, null text embedding: they come from the CLIP / SD folders)."""
    for ours, kind, pub in _PREFIXES:
        if _match_prefix(key, ours):
            rest = key[len(ours):]
            if kind == LLM:
                rest = rest.replace(".base_layer.weight", ".weight")  # peft ≥ 0.5 → peft 0.4 base weight name
            elif kind == EMBEDDINGS and pub == "sd_qformer.encoder.":
                rest = re.sub(r"\.(attention|crossattention)\.attention\.", r".\1.self.", rest)
            elif kind == BIM and pub == "modulate_transformer.":
                rest = re.sub(r"^(layers\.\d+)\.layer_norm(\d)\.", r"\1.norm\2.", rest)
                rest = re.sub(r"^layer_norm_final_attn\.", "norm_final_attn.", rest)
            return kind, pub + rest
    return None


def our_name(kind: str, key: str, lora_targets: tuple[str, ...] = ()) -> str | None:
    """Published key of file ``kind`` → our state-dict key (None if unknown). Base weights of the ``lora_targets``
    modules get peft's ``base_layer`` (for a model that keeps LoRA as an adapter)."""
    for ours, k, pub in _PREFIXES:
        if k != kind or not _match_prefix(key, pub):
            continue
        rest = key[len(pub):]
        if kind == LLM and lora_targets:
            rest = re.sub(rf"\.({'|'.join(map(re.escape, lora_targets))})\.weight$", r".\1.base_layer.weight", rest)
        elif kind == EMBEDDINGS and pub == "sd_qformer.encoder.":
            rest = re.sub(r"\.(attention|crossattention)\.self\.", r".\1.attention.", rest)
        elif kind == BIM and pub == "modulate_transformer.":
            rest = re.sub(r"^(layers\.\d+)\.norm(\d)\.", r"\1.layer_norm\2.", rest)
            rest = re.sub(r"^norm_final_attn\.", "layer_norm_final_attn.", rest)
        return ours + rest
    return None


def _is_dropped(key: str) -> bool:
    return any(p.match(key) for p in _DROPPED)


def _reference_dtype(kind: str, key: str) -> torch.dtype:
    """dtype of a tensor in the released files (fact sheet §1): frozen LLaMA weights bf16, everything else fp32."""
    if key == "sd_qformer.embeddings.position_ids":
        return torch.int64
    if kind == LLM and ".lora_" not in key and not key.endswith("embed_tokens.weight"):
        return torch.bfloat16
    return torch.float32


def _head_dim(config: SmartEditConfig) -> int:
    return config.mllm.hidden_size // config.mllm.num_attention_heads


def _inv_freq(config: SmartEditConfig) -> torch.Tensor:
    """LLaMA's rotary ``inv_freq`` buffer as transformers 4.28 saved it (bf16)."""
    dim = _head_dim(config)
    exponent = torch.arange(0, dim, 2, dtype=torch.int64).float() / dim
    return (1.0 / (config.mllm.rope_theta ** exponent)).to(torch.bfloat16)


def published_spec(config: SmartEditConfig) -> dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]]:
    """Every tensor of the published files for a model of ``config``: file kind → key → (shape, reference dtype).

    LoRA keys are listed when ``config.lora.r > 0``; ``rotary_emb.inv_freq`` and ``embeddings.position_ids`` are
    included (they are optional when reading). The BIM file is empty for a model without BIM. Built on the meta
    device (no memory).
    """
    with torch.device("meta"):
        model = SmartEditModel(config)
    spec: dict[str, dict[str, tuple[tuple[int, ...], torch.dtype]]] = {kind: {} for kind in FILE_KINDS}
    for key, tensor in model.state_dict().items():
        target = published_name(key)
        if target is not None:
            kind, pub = target
            spec[kind][pub] = (tuple(tensor.shape), _reference_dtype(kind, pub))
    for i in range(config.mllm.num_hidden_layers):
        spec[LLM][f"{LLM_PREFIX}layers.{i}.self_attn.rotary_emb.inv_freq"] = ((_head_dim(config) // 2,),
                                                                             torch.bfloat16)
    spec[EMBEDDINGS]["sd_qformer.embeddings.position_ids"] = ((1, QFORMER_MAX_POSITIONS), torch.int64)
    return spec


# ---- locating the files -----------------------------------------------------------------------------------

@dataclass
class ReleasedLayout:
    """The files of one checkpoint step of a reference checkpoint folder."""

    root: str
    stage: str
    """``stage1``, ``stage2a`` or ``smartedit``."""
    step: str | None
    files: dict[str, str]
    """File kind → path, only the files the stage uses."""
    adapter_config: str | None = None
    ignored: list[str] = field(default_factory=list)
    """Files present for this step that the (forced) stage does not use."""

    def rel(self, kind_or_path: str) -> str:
        path = self.files.get(kind_or_path, kind_or_path)
        return os.path.relpath(path, self.root)


def _sort_steps(steps: set[str]) -> list[str]:
    """Steps in training order (``last``, the reference's final save, after every numbered step)."""
    return sorted(steps, key=lambda s: (s == "last", int(s) if s.isdigit() else 0))


def _scan(root: str) -> tuple[dict[str, dict[str, str]], str | None]:
    """step → {kind: path} for every file found, and a stage-1 ``embeddings_qformer.bin`` without a step."""
    found: dict[str, dict[str, str]] = {}
    folders = {"LLM": LLM, "modulate": BIM, "unet": UNET}
    for name in os.listdir(root):
        path = os.path.join(root, name)
        m = re.fullmatch(rf"(LLM|modulate|unet)-{STEP_PATTERN}", name)
        if m and os.path.isfile(os.path.join(path, ADAPTER_FILE)):
            found.setdefault(m.group(2), {})[folders[m.group(1)]] = os.path.join(path, ADAPTER_FILE)
    emb_dir = os.path.join(root, EMBEDDINGS_DIR)
    if os.path.isdir(emb_dir):
        for name in os.listdir(emb_dir):
            m = re.fullmatch(rf"checkpoint-{STEP_PATTERN}(_embeddings_qformer)?\.bin", name)
            if m:
                step = found.setdefault(m.group(1), {})
                # the SmartEdit name wins over the stage-1 name when both exist
                if m.group(2) or EMBEDDINGS not in step:
                    step[EMBEDDINGS] = os.path.join(emb_dir, name)
    bare = os.path.join(root, "embeddings_qformer.bin")
    return found, bare if os.path.isfile(bare) else None


def _stage_of(kinds: set[str]) -> str | None:
    for stage in ("smartedit", "stage2a", "stage1"):
        if set(STAGE_FILES[stage]) == kinds:
            return stage
    return None


def _choose_step(root: str, found: dict[str, dict[str, str]], bare: str | None, step: str | int | None
                 ) -> str | None:
    """The checkpoint step to convert (``step``, else the last with an embeddings file); None for a folder that
    holds only a stage-1 ``embeddings_qformer.bin``."""
    with_embeddings = [s for s in _sort_steps(set(found)) if EMBEDDINGS in found[s]]
    if step is not None:
        step = str(step)
        if step not in with_embeddings:
            have = ", ".join(with_embeddings) or "none"
            raise FileNotFoundError(f"{root} has no checkpoint step {step} (no "
                                    f"{published_paths(step)[EMBEDDINGS]}; steps with an embeddings file: {have}); "
                                    f"{RELEASED_LAYOUT}")
        return step
    if with_embeddings:
        step = with_embeddings[-1]
        if len(with_embeddings) > 1:
            logger.info("%s holds checkpoint steps %s: converting step %s (choose another with step=)", root,
                        ", ".join(with_embeddings), step)
        return step
    if bare is not None:
        return None
    present = sorted(n for n in os.listdir(root))
    raise FileNotFoundError(f"{root} holds no SmartEdit checkpoint (found: {', '.join(present) or 'nothing'}); "
                            f"{RELEASED_LAYOUT}")


def _detect_stage(root: str, files: dict[str, str], step: str) -> str:
    """The stage the files of ``step`` make up (warning when a SmartEdit checkpoint seems to lack its BIM)."""
    stage = _stage_of(set(files))
    if stage is None:
        have = ", ".join(os.path.relpath(files[k], root) for k in FILE_KINDS if k in files)
        lacking = [published_paths(step)[k] for k in (LLM, UNET) if k not in files]
        raise FileNotFoundError(f"{root}: step {step} holds {have} but lacks {', '.join(lacking)}; a stage-2a "
                                f"checkpoint needs LLM-{step}, unet-{step} and the embeddings file, a SmartEdit "
                                f"one also modulate-{step} (or force the stage with stage=)")
    if stage == "stage2a":
        logger.warning("%s: step %s has no modulate-%s/ (BIM): converting it as a stage-2a (MLLM-SD) checkpoint "
                       "without BIM. For the released SmartEdit-7B/13B this means modulate-%s/ is missing: "
                       "download it (or pass stage='stage2a' to silence this)", root, step, step, step)
    return stage


def find_released(root: str | os.PathLike, stage: str = "auto", step: str | int | None = None) -> ReleasedLayout:
    """Locate the files of a reference checkpoint folder (see :data:`RELEASED_LAYOUT`).

    ``step``: which checkpoint step (default: the last one that has an embeddings file). ``stage``: ``auto``
    (from the files present) or one of :data:`STAGES` (files of the step that the stage does not use are ignored,
    e.g. ``stage2a`` on a SmartEdit folder drops the BIM).
    """
    root = os.fspath(root)
    if stage != "auto" and stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; choose auto or one of {list(STAGES)}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"SmartEdit checkpoint folder {root!r} does not exist (or is not a folder); "
                                f"{RELEASED_LAYOUT}")
    found, bare = _scan(root)
    step = _choose_step(root, found, bare, step)
    if step is None:
        if stage not in ("auto", "stage1"):
            raise FileNotFoundError(f"{root} holds only a stage-1 embeddings_qformer.bin; {stage} needs "
                                    f"{', '.join(STAGE_FILES[stage])} files; {RELEASED_LAYOUT}")
        return ReleasedLayout(root=root, stage="stage1", step=None, files={EMBEDDINGS: bare})

    files = found[step]
    if stage == "auto":
        stage = _detect_stage(root, files, step)
    lacking = [published_paths(step)[k] for k in STAGE_FILES[stage] if k not in files]
    if lacking:
        raise FileNotFoundError(f"{root}: {stage} needs {', '.join(lacking)} (missing); {RELEASED_LAYOUT}")
    used = {k: files[k] for k in STAGE_FILES[stage]}
    ignored = [files[k] for k in files if k not in used]
    for path in ignored:
        logger.warning("stage %s: ignoring %s", stage, os.path.relpath(path, root))
    adapter = None
    if LLM in used:
        for candidate in (os.path.join(os.path.dirname(used[LLM]), ADAPTER_CONFIG), os.path.join(root, ADAPTER_CONFIG)):
            if os.path.isfile(candidate):
                adapter = candidate
                break
    return ReleasedLayout(root=root, stage=stage, step=step, files=used, adapter_config=adapter, ignored=ignored)


# ---- LoRA settings ----------------------------------------------------------------------------------------

def _lora_settings(layout: ReleasedLayout) -> tuple[LoRAConfig, list[str]]:
    """LoRA r / alpha / dropout / targets from ``adapter_config.json`` (reference defaults when absent)."""
    problems: list[str] = []
    raw: dict[str, Any] = dict(REFERENCE_LORA)
    if layout.adapter_config is not None:
        data = read_json(layout.adapter_config, "LoRA adapter config", RELEASED_LAYOUT)
        raw.update({k: data[k] for k in REFERENCE_LORA if data.get(k) is not None})
        rel = layout.rel(layout.adapter_config)
        if data.get("fan_in_fan_out"):
            problems.append(f"unsupported: {rel} sets fan_in_fan_out = true (the reference trains with false)")
        if data.get("bias", "none") != "none":
            problems.append(f"unsupported: {rel} sets bias = {data.get('bias')!r} (the reference trains with 'none')")
        if data.get("use_rslora") or data.get("use_dora"):
            problems.append(f"unsupported: {rel} uses rsLoRA / DoRA (the reference uses plain LoRA)")
    elif LLM in layout.files:
        logger.info("no %s next to %s: using the reference LoRA settings r=%d, alpha=%d, targets %s",
                    ADAPTER_CONFIG, layout.rel(LLM), REFERENCE_LORA["r"], REFERENCE_LORA["lora_alpha"],
                    REFERENCE_LORA["target_modules"])
    targets = raw["target_modules"]
    targets = [targets] if isinstance(targets, str) else list(targets) if isinstance(targets, (list, tuple)) else []
    lora = LoRAConfig(r=raw["r"], alpha=raw["lora_alpha"], dropout=raw["lora_dropout"],
                      target_modules=tuple(targets))
    try:
        bad = lora.problems() + ([] if lora.r else ["lora.r must be > 0"])
    except TypeError as exc:  # a value of the wrong type broke a comparison
        bad = [str(exc)]
    if bad:
        where = layout.rel(layout.adapter_config) if layout.adapter_config else ADAPTER_CONFIG
        problems += [f"invalid LoRA settings in {where}: {p}" for p in bad]
        lora = LoRAConfig(r=REFERENCE_LORA["r"], alpha=REFERENCE_LORA["lora_alpha"],
                          dropout=REFERENCE_LORA["lora_dropout"],
                          target_modules=tuple(REFERENCE_LORA["target_modules"]))
    return lora, problems


# ---- reading and checking ---------------------------------------------------------------------------------

def _read_files(layout: ReleasedLayout) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """Each file of the layout, memory-mapped, one at a time; unreadable files become problems."""
    states: dict[str, dict[str, torch.Tensor]] = {}
    problems: list[str] = []
    for kind, path in layout.files.items():
        try:
            states[kind] = read_bin(path)
        except ValueError as exc:
            problems.append(f"unreadable: {layout.rel(kind)}: {exc}")
        logger.info("read %s: %d tensors", layout.rel(kind), len(states.get(kind, {})))
    if EMBEDDINGS in states and layout.stage == "stage1":
        states[EMBEDDINGS] = _stage1_names(states[EMBEDDINGS])
    return states, problems


def _stage1_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``TrainStage1.py`` names its Q-Former ``qformer.*`` / ``query_tokens``: → ``sd_qformer.*`` /
    ``sd_query_tokens`` (the names of the later stages)."""
    if any(k.startswith("sd_qformer.") or k == "sd_query_tokens" for k in state):
        return state
    out = {}
    for key, value in state.items():
        if key.startswith("qformer."):
            key = "sd_" + key
        elif key == "query_tokens":
            key = "sd_query_tokens"
        out[key] = value
    return out


def _new_row_layouts(base: int, num_image_tokens: int) -> dict[int, list[int]]:
    """Accepted row counts of an embedding / LM-head matrix → offsets (from ``base``) of SmartEdit's new tokens
    that its last rows hold. Full vocabulary and new rows only (SmartEdit order ``<img>``, ``<im_start>``,
    ``<im_end>``, ``<img_i>``), and stage 1's ``<img>``, ``<img_i>`` (no ``<im_start>`` / ``<im_end>``)."""
    smartedit = list(range(3 + num_image_tokens))
    stage1 = [0] + list(range(3, 3 + num_image_tokens))
    return {base + len(smartedit): smartedit, len(smartedit): smartedit,
            base + len(stage1): stage1, len(stage1): stage1}


def _check_files(layout: ReleasedLayout, states: Mapping[str, Mapping[str, torch.Tensor]],
                 spec: Mapping[str, Mapping[str, tuple[tuple[int, ...], torch.dtype]]], base: int,
                 num_image_tokens: int) -> list[str]:
    """Missing / unexpected / wrongly shaped tensors and wrong vocabulary sizes, each naming its file."""
    problems: list[str] = []
    full = base + 3 + num_image_tokens
    stage1 = layout.stage == "stage1"
    for kind, state in states.items():
        rel = layout.rel(kind)
        expected = spec[kind]
        optional = {k for k in expected if _is_dropped(k)}
        extra_ok: set[str] = set()
        if kind == EMBEDDINGS:
            # copies of embed_tokens: the new rows of stage 1; stale duplicates (ignored) in later stages
            extra_ok = set(_EMBED_COPIES) & set(state)
            if stage1:  # stage 1 may lack lm_head and (all of) mm_projector
                optional.add("lm_head.weight")
                if not any(k.startswith("mm_projector.") for k in state):
                    optional |= {k for k in expected if k.startswith("mm_projector.")}
        for key in sorted(set(expected) - set(state) - optional):
            problems.append(f"missing: {key} (expected in {rel})")
        for key in sorted(set(state) - set(expected) - extra_ok):
            problems.append(f"unexpected: {key} (in {rel})")
        checked = set(state) & set(expected) | (extra_ok if stage1 else set())
        for key in sorted(checked):
            value = state[key]
            if key in expected:
                shape, ref_dtype = expected[key]
            else:  # an embedding copy in the embeddings file
                shape, ref_dtype = spec[LLM][f"{LLM_PREFIX}embed_tokens.weight"]
            if ref_dtype.is_floating_point and not value.is_floating_point():
                problems.append(f"wrong dtype: {key} in {rel} is {value.dtype}, expected a floating-point tensor")
                continue
            if not ref_dtype.is_floating_point and value.is_floating_point():
                problems.append(f"wrong dtype: {key} in {rel} is {value.dtype}, expected {ref_dtype}")
                continue
            got = tuple(value.shape)
            is_vocab = key.endswith(("embed_tokens.weight", "lm_head.weight"))
            if is_vocab and len(got) == 2 and got[1] == shape[1]:
                allowed = _new_row_layouts(base, num_image_tokens) if (stage1 and kind == EMBEDDINGS) else {full: []}
                if got[0] not in allowed:
                    problems.append(
                        f"wrong vocabulary size: {key} in {rel} has {got[0]} rows, expected {full} (the "
                        f"tokenizer's {base} base tokens + SmartEdit's {3 + num_image_tokens} new tokens)"
                        + (f"; {got[0]} = LLaVA's vocabulary: an LLM-N/adapter_model.bin downloaded before "
                           f"2024-04-28 is outdated, download it again" if got[0] == base + 3 and kind == LLM
                           else ""))
            elif got != shape:
                problems.append(f"wrong shape: {key} in {rel} is {got}, expected {shape}")
    return problems


# ---- assembling -------------------------------------------------------------------------------------------

def _copy(tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A fresh tensor (never a view of the memory-mapped buffer: safetensors refuses shared storage)."""
    if tensor.is_floating_point():
        return tensor.to(dtype=dtype, copy=True).contiguous()
    return tensor.clone().contiguous()


def _choose_preset(preset: str | SmartEditConfig | None, hidden: int) -> SmartEditConfig:
    if isinstance(preset, SmartEditConfig):
        return preset
    if preset in (None, "auto"):
        by_hidden = {4096: "7b", 5120: "13b"}
        if hidden not in by_hidden:
            raise ValueError(f"cannot tell the SmartEdit preset from the LLM's hidden size {hidden} (4096 → 7b, "
                             f"5120 → 13b); pass preset=")
        preset = by_hidden[hidden]
    return make_preset(preset)


def _vicuna_fields(path: str, llm: LoadedLLM) -> tuple[dict[str, Any], list[str]]:
    """Vicuna's LLaMA config (the reference builds the model from it): architecture fields must equal LLaVA's;
    the others (context length, RMSNorm eps, RoPE theta) are taken from Vicuna."""
    from transformers import LlamaConfig

    config_path = os.path.join(path, "config.json")
    raw = read_json(config_path, "Vicuna config", LLM_LAYOUT)
    fields = llama_fields(LlamaConfig.from_dict(raw), config_path)
    problems = []
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                 "num_key_value_heads"):
        if fields[name] != llm.mllm[name]:
            problems.append(f"mismatch: {name} is {fields[name]} in {config_path} but {llm.mllm[name]} in the "
                            f"LLaVA folder {llm.path}")
    if raw.get("vocab_size") not in (None, llm.mllm["vocab_size"]):
        problems.append(f"mismatch: vocab_size is {raw.get('vocab_size')} in {config_path} but the tokenizer has "
                        f"{llm.mllm['vocab_size']} base tokens")
    taken = {k: fields[k] for k in ("max_position_embeddings", "rms_norm_eps", "rope_theta")}
    for key, value in taken.items():
        if llm.mllm.get(key) != value:
            logger.info("%s: %s from Vicuna (%s), not LLaVA (%s)", path, key, value, llm.mllm.get(key))
    return taken, problems


def _size_hints(layout: ReleasedLayout, states: Mapping[str, Mapping[str, torch.Tensor]],
                config: SmartEditConfig) -> list[str]:
    """One line up front when the checkpoint and the LLaVA folder are of different sizes (7B vs 13B), which would
    otherwise only show as hundreds of wrong shapes."""
    sizes = {4096: "7B", 5120: "13B"}
    want = config.mllm.hidden_size
    for kind, key in ((LLM, f"{LLM_PREFIX}embed_tokens.weight"), (EMBEDDINGS, "lm_head.weight")):
        value = states.get(kind, {}).get(key)
        if value is not None and value.ndim == 2 and value.shape[1] != want:
            got = value.shape[1]
            return [f"mismatch: {layout.rel(kind)} is for an LLM of hidden size {got} ({sizes.get(got, '?')}) but "
                    f"the LLaVA folder's LLM has {want} ({sizes.get(want, '?')}): use the LLaVA-1.1 merge of the "
                    f"same size (SmartEdit-7B ↔ LLaVA-7B-v1, SmartEdit-13B ↔ LLaVA-13B-v1)"]
    return []


def _new_rows(matrix: torch.Tensor, base: int, num_image_tokens: int) -> dict[int, torch.Tensor]:
    """Rows of SmartEdit's new tokens held by ``matrix`` (checked by :func:`_check_files`): offset → row."""
    offsets = _new_row_layouts(base, num_image_tokens)[matrix.shape[0]]
    tail = matrix[matrix.shape[0] - len(offsets):]
    return {offset: tail[i] for i, offset in enumerate(offsets)}


def _token_matrix(llava: torch.Tensor, new: dict[int, torch.Tensor], base: int, num_new: int,
                  dtype: torch.dtype, what: str) -> torch.Tensor:
    """[base + num_new, H]: LLaVA's rows, then the new tokens' rows (mean of the base rows where not given)."""
    out = torch.empty(base + num_new, llava.shape[1], dtype=dtype)
    out[:base] = llava[:base].to(dtype)
    missing = [o for o in range(num_new) if o not in new]
    if missing:
        mean = llava[:base].float().mean(dim=0).to(dtype)
        out[base + torch.tensor(missing)] = mean
        logger.warning("%s: %d new token row(s) not in the checkpoint (ids %s): set to the mean of the base rows",
                       what, len(missing), ", ".join(str(base + o) for o in missing))
    for offset, row in new.items():
        out[base + offset] = row.to(dtype)
    return out


def _llm_state(file_state: Mapping[str, torch.Tensor], lora: LoRAConfig, keep_lora: bool,
               dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``LLM-N`` → our ``mllm.llm.*`` tensors except the two token matrices; LoRA merged unless ``keep_lora``."""
    targets = lora.target_modules if keep_lora else ()
    out: dict[str, torch.Tensor] = {}
    adapters: dict[str, dict[str, torch.Tensor]] = {}
    for key, value in file_state.items():
        if _is_dropped(key) or key.endswith("embed_tokens.weight"):
            continue
        m = _LORA.match(key)
        if m and not keep_lora:
            adapters.setdefault(m.group("module"), {})[m.group("ab")] = value
            continue
        out[our_name(LLM, key, targets)] = value
    scale = lora.alpha / lora.r
    merged = set()
    for module, ab in adapters.items():
        key = our_name(LLM, f"{module}.weight")
        # W + alpha/r · B @ A, computed in float32 whatever the file's dtypes
        out[key] = (out[key].float() + scale * (ab["B"].float() @ ab["A"].float())).to(dtype)
        merged.add(key)
    if adapters:
        logger.info("merged %d LoRA adapters into the LLM (W + %g · B @ A)", len(adapters), scale)
    return {k: v if k in merged else _copy(v, dtype) for k, v in out.items()}


def _build_model(config: SmartEditConfig, tokenizer, state: dict[str, torch.Tensor]) -> SmartEditModel:
    """A model of ``config`` holding exactly ``state`` (built on the meta device, tensors assigned)."""
    from accelerate import init_empty_weights

    with init_empty_weights(include_buffers=False):
        model = SmartEditModel(config, tokenizer)
    expected = model.state_dict()
    problems = ([f"not converted: {k}" for k in sorted(set(expected) - set(state))]
                + [f"no place for: {k}" for k in sorted(set(state) - set(expected))]
                + [f"shape: {k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}"
                   for k in sorted(set(state) & set(expected)) if state[k].shape != expected[k].shape])
    if problems:  # the checks above make this unreachable; kept as a guard for future layout changes
        raise RuntimeError(f"internal error: the converted tensors do not fit the model ({len(problems)}):\n  "
                           + "\n  ".join(problems[:50]))
    model.load_state_dict(state, strict=True, assign=True)
    model.conv_in_residual.reattach(model.unet)
    return model.eval()


def _write_model(model: SmartEditModel, out: str, info: dict[str, Any]) -> None:
    """``save_pretrained`` into a staging folder, then move it to ``out`` (never a half-written model)."""
    out = os.path.normpath(out)
    if os.path.isdir(out) and os.listdir(out) and not os.path.isfile(os.path.join(out, "config.json")):
        raise FileExistsError(f"--out {out} exists and is not a model folder; choose an empty or new folder")
    staging = out + ".partial"
    shutil.rmtree(staging, ignore_errors=True)
    model.save_pretrained(staging)
    with open(os.path.join(staging, "released_conversion.json"), "w", encoding="utf-8") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    if os.path.exists(out):
        shutil.rmtree(out)
    os.replace(staging, out)
    logger.info("wrote %s", out)


def _check_pointers(layout: ReleasedLayout, what: str) -> None:
    to_read = list(layout.files.values()) + ([layout.adapter_config] if layout.adapter_config else [])
    pointers = [f"Git LFS pointer instead of the file: {layout.rel(p)}" for p in to_read if is_lfs_pointer(p)]
    if pointers:
        raise ReleasedCheckpointError(pointers, what, "Fetch the content (`git lfs pull` inside the cloned folder, "
                                                      "or download these files again with huggingface-cli).")


def _load_components(llava: str | os.PathLike | LoadedLLM, clip: str | os.PathLike | LoadedCLIP,
                     sd: str | os.PathLike | LoadedSD, vicuna: str | os.PathLike | None
                     ) -> tuple[LoadedLLM, LoadedCLIP, LoadedSD]:
    if isinstance(llava, LoadedLLM):
        llm = llava
        if vicuna is not None:
            logger.warning("llava is already loaded: its tokenizer is kept (vicuna=%s only sets the config)", vicuna)
    else:
        llm = load_llm(llava, tokenizer=vicuna)
    clip = clip if isinstance(clip, LoadedCLIP) else load_clip(clip)
    sd = sd if isinstance(sd, LoadedSD) else load_sd(sd)
    return llm, clip, sd


def _config_overrides(layout: ReleasedLayout, emb: Mapping[str, torch.Tensor], llm: LoadedLLM,
                      lora: LoRAConfig | None, keep_lora: bool) -> tuple[dict[str, Any], list[str]]:
    """What the checkpoint sets in the config (BIM, projector, LoRA), and problems."""
    problems: list[str] = []
    overrides: dict[str, Any] = {"bim.enabled": layout.stage == "smartedit"}
    if any(k.startswith("mm_projector.") for k in emb) or layout.stage != "stage1":
        overrides["mllm.projector"] = "linear"
    elif llm.projector_state is None:
        problems.append(f"missing: mm_projector.weight, mm_projector.bias (not in {layout.rel(EMBEDDINGS)}, and "
                        f"the LLM folder {llm.path} holds no projector either)")
    if keep_lora and lora is not None:
        overrides.update({"lora.r": lora.r, "lora.alpha": lora.alpha, "lora.dropout": lora.dropout,
                          "lora.target_modules": list(lora.target_modules)})
    else:
        overrides["lora.r"] = 0
    return overrides, problems


def _checkpoint_problems(layout: ReleasedLayout, states: Mapping[str, Mapping[str, torch.Tensor]],
                         config: SmartEditConfig, lora: LoRAConfig | None, sd: LoadedSD) -> list[str]:
    """Every way the checkpoint's files do not fit ``config`` (against the published spec) and the SD folder."""
    spec_lora = lora or LoRAConfig(r=REFERENCE_LORA["r"])
    spec = published_spec(config.replace(**{"lora.r": spec_lora.r, "lora.alpha": spec_lora.alpha,
                                            "lora.target_modules": list(spec_lora.target_modules),
                                            "bim.enabled": True}))
    vocab, num_images = config.mllm.vocab_size, config.mllm.num_image_tokens
    problems = _size_hints(layout, states, config) + _check_files(layout, states, spec, vocab, num_images)
    want = (1, config.qformer.num_queries, config.qformer.hidden_size)
    if tuple(sd.null_text_embedding.shape) != want:
        problems.append(f"mismatch: the null text embedding of {sd.path} is {tuple(sd.null_text_embedding.shape)}, "
                        f"but the Q-Former emits {want[1:]}")
    return problems


def _token_state(states: Mapping[str, Mapping[str, torch.Tensor]], llm: LoadedLLM, config: SmartEditConfig,
                 dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """``embed_tokens`` and ``lm_head``: LLaVA's base rows, then SmartEdit's new rows from the checkpoint."""
    vocab, num_images = config.mllm.vocab_size, config.mllm.num_image_tokens
    emb = states.get(EMBEDDINGS, {})
    if LLM in states:
        embed_new = _new_rows(states[LLM][f"{LLM_PREFIX}embed_tokens.weight"], vocab, num_images)
    else:  # stage 1: the new embedding rows come with the Q-Former (when saved)
        copy = next((emb[k] for k in _EMBED_COPIES if k in emb), None)
        embed_new = _new_rows(copy, vocab, num_images) if copy is not None else {}
    lm_new = _new_rows(emb["lm_head.weight"], vocab, num_images) if "lm_head.weight" in emb else {}
    num_new = 3 + num_images
    return {"mllm.llm.model.embed_tokens.weight": _token_matrix(
                llm.llm_state["model.embed_tokens.weight"], embed_new, vocab, num_new, dtype, "embed_tokens"),
            "mllm.llm.lm_head.weight": _token_matrix(llm.llm_state["lm_head.weight"], lm_new, vocab, num_new,
                                                     dtype, "lm_head")}


def _converted_state(layout: ReleasedLayout, states: Mapping[str, Mapping[str, torch.Tensor]], config,
                     parts: tuple[LoadedLLM, LoadedCLIP, LoadedSD], lora: LoRAConfig | None, keep_lora: bool,
                     dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Our state dict, each tensor from where the reference's inference loader takes it (module docstring)."""
    llm, clip, sd = parts
    emb = states.get(EMBEDDINGS, {})
    state: dict[str, torch.Tensor] = {f"mllm.vision_tower.{k}": _copy(v, dtype) for k, v in clip.vision_state.items()}
    projector_in_file = any(k.startswith("mm_projector.") for k in emb)
    projector = ({k[len("mm_projector."):]: v for k, v in emb.items() if k.startswith("mm_projector.")}
                 if projector_in_file else llm.projector_state)
    if not projector_in_file:
        logger.info("%s holds no mm_projector: using LLaVA's (%s)", layout.rel(EMBEDDINGS), llm.path)
    state.update({f"mllm.projector.{k}": _copy(v, dtype) for k, v in projector.items()})
    if LLM in states:
        state.update(_llm_state(states[LLM], lora, keep_lora, dtype))
    else:  # stage 1: the LLM is LLaVA's
        state.update({f"mllm.llm.{k}": _copy(v, dtype) for k, v in llm.llm_state.items()
                      if k not in ("model.embed_tokens.weight", "lm_head.weight")})
    state.update(_token_state(states, llm, config, dtype))
    state.update({our_name(EMBEDDINGS, k): _copy(v, dtype) for k, v in emb.items()
                  if k.startswith(("sd_qformer.", "sd_query_tokens")) and not _is_dropped(k)})
    state.update({our_name(BIM, k): _copy(v, dtype) for k, v in states.get(BIM, {}).items()})
    if UNET in states:
        state.update({our_name(UNET, k): _copy(v, dtype) for k, v in states[UNET].items()})
    else:
        logger.info("stage 1: the UNet is the one of %s (conv_in widened to %d channels)", sd.path,
                    config.unet.in_channels)
        state.update({f"unet.{k}": _copy(v, dtype) for k, v in sd.unet.state_dict().items()})
    state.update({f"vae.{k}": _copy(v, dtype) for k, v in sd.vae.state_dict().items()})
    state["null_text_embedding"] = _copy(sd.null_text_embedding, dtype)
    return state


def _conversion_info(layout: ReleasedLayout, parts: tuple[LoadedLLM, LoadedCLIP, LoadedSD],
                     vicuna: str | os.PathLike | None, lora: LoRAConfig | None, lora_mode: str,
                     dtype: torch.dtype) -> dict[str, Any]:
    """``released_conversion.json``: where the model came from."""
    llm, clip, sd = parts
    return {"source": os.path.abspath(layout.root), "stage": layout.stage, "step": layout.step,
            "files": {k: layout.rel(k) for k in layout.files},
            "adapter_config": layout.rel(layout.adapter_config) if layout.adapter_config else None,
            "llava": llm.path, "vicuna": os.fspath(vicuna) if vicuna is not None else None, "clip": clip.path,
            "sd": sd.path, "lora": lora_mode, "lora_r": lora.r if lora else 0,
            "lora_alpha": lora.alpha if lora else None, "dtype": str(dtype).replace("torch.", "")}


def convert_released(smartedit: str | os.PathLike, llava: str | os.PathLike | LoadedLLM,
                     clip: str | os.PathLike | LoadedCLIP, sd: str | os.PathLike | LoadedSD,
                     out: str | os.PathLike | None = None, *, vicuna: str | os.PathLike | None = None,
                     keep_lora: bool = False, stage: str = "auto", step: str | int | None = None,
                     dtype: torch.dtype | str = "auto", preset: str | SmartEditConfig | None = None
                     ) -> SmartEditModel:
    """Convert a reference checkpoint folder (released SmartEdit-7B/13B, or a stage-1 / stage-2a training output)
    into a :class:`~smartedit.model.SmartEditModel`, written to ``out`` with ``save_pretrained`` when given.

    * ``llava``: the LLaVA-1.1 merge (LLaVA-7B-v1 / LLaVA-13B-v1; :func:`smartedit.weights.load_llm`);
    * ``clip``: CLIP ViT-L/14 (``openai/clip-vit-large-patch14``); ``sd``: SD-1.5 or InstructPix2Pix (diffusers);
    * ``vicuna``: Vicuna-v1.1 folder for the tokenizer and LLaMA config, as the reference (default: LLaVA's own);
    * ``keep_lora``: keep LoRA as a peft adapter (``config.lora.r`` = the file's r) instead of merging it;
    * ``stage``: ``auto`` (from the files present), ``stage1``, ``stage2a`` or ``smartedit``;
    * ``step``: checkpoint step (default: the last); ``dtype``: dtype of the model (``auto``: bfloat16 for 7B /
      13B, float32 for smaller LLMs, :func:`smartedit.model.save_dtype`);
    * ``preset``: Q-Former / BIM sizes (default from the LLM's hidden size: 7b or 13b).

    Raises :class:`ReleasedCheckpointError` listing every missing / unexpected / wrongly shaped tensor, wrong
    vocabulary size or Git LFS pointer (with its file), ``FileNotFoundError`` for a folder that is not a checkpoint.
    """
    dtype = None if dtype == "auto" else _FLOAT_DTYPES[dtype] if isinstance(dtype, str) else dtype
    layout = find_released(smartedit, stage, step)
    what = (f"the {layout.stage} checkpoint in {layout.root}" + (f" (step {layout.step})" if layout.step else "")
            + " does not fit the published SmartEdit layout")
    _check_pointers(layout, what)
    logger.info("converting the %s checkpoint %s (step %s): %s", layout.stage, layout.root, layout.step,
                ", ".join(layout.rel(k) for k in layout.files))
    problems: list[str] = []
    lora = None
    if LLM in layout.files:
        lora, problems = _lora_settings(layout)
    elif keep_lora:
        logger.warning("keep_lora: the %s checkpoint has no LLM file, so there is no LoRA to keep", layout.stage)
    parts = llm, clip, sd = _load_components(llava, clip, sd, vicuna)
    taken, vicuna_problems = _vicuna_fields(os.fspath(vicuna), llm) if vicuna is not None else ({}, [])
    states, read_problems = _read_files(layout)
    overrides, config_problems = _config_overrides(layout, states.get(EMBEDDINGS, {}), llm, lora, keep_lora)
    overrides.update({f"mllm.{k}": v for k, v in taken.items()})
    problems += vicuna_problems + read_problems + config_problems
    base = _choose_preset(preset, llm.mllm["hidden_size"])
    config = config_from_components(base, llm, clip.vision, sd, mask_channels=0, overrides=overrides)
    dtype = save_dtype(config) if dtype is None else dtype
    problems += _checkpoint_problems(layout, states, config, lora, sd)
    if problems:
        raise ReleasedCheckpointError(problems, what)

    state = _converted_state(layout, states, config, parts, lora, keep_lora, dtype)
    del states  # release the memory maps
    model = _build_model(config, llm.tokenizer, state)
    lora_mode = "none" if lora is None else ("adapter" if keep_lora else "merged")
    logger.info("converted %s: %s, LoRA %s, BIM %s, %.1f M parameters (%s)", layout.root, layout.stage, lora_mode,
                "yes" if model.bim is not None else "no", sum(p.numel() for p in model.parameters()) / 1e6, dtype)
    if out is not None:
        _write_model(model, os.fspath(out), _conversion_info(layout, parts, vicuna, lora, lora_mode, dtype))
    return model


# ---- export -----------------------------------------------------------------------------------------------

def _export_tensor(kind: str, key: str, tensor: torch.Tensor, lossy: list[str]) -> torch.Tensor:
    """The reference dtype when the cast is exact (so the round trip stays exact), else float32."""
    tensor = tensor.detach()
    if not tensor.is_floating_point():
        return tensor.contiguous()
    target = _reference_dtype(kind, key)
    if target != torch.float32:
        cast = tensor.to(target)
        if torch.equal(cast.to(tensor.dtype), tensor):
            return cast.contiguous()
        lossy.append(key)
    return tensor.to(torch.float32).contiguous()


def _adapter_config(lora: LoRAConfig) -> dict[str, Any]:
    return {"base_model_name_or_path": None, "bias": "none", "fan_in_fan_out": False, "inference_mode": True,
            "init_lora_weights": True, "lora_alpha": lora.alpha, "lora_dropout": lora.dropout,
            "modules_to_save": None, "peft_type": "LORA", "r": lora.r, "target_modules": list(lora.target_modules),
            "task_type": "CAUSAL_LM"}


def _published_tensors(model: SmartEditModel) -> tuple[dict[str, dict[str, torch.Tensor]], list[str]]:
    """File kind → published key → tensor (reference dtypes where exact), with the recomputed constants
    (``inv_freq``, ``position_ids``); and the keys kept float32 because the reference dtype would lose bits."""
    cfg = model.config
    files: dict[str, dict[str, torch.Tensor]] = {kind: {} for kind in FILE_KINDS}
    lossy: list[str] = []
    for key, tensor in model.state_dict().items():
        target = published_name(key)
        if target is not None:
            kind, pub = target
            files[kind][pub] = _export_tensor(kind, pub, tensor, lossy)
    inv_freq = _inv_freq(cfg)
    for i in range(cfg.mllm.num_hidden_layers):
        files[LLM][f"{LLM_PREFIX}layers.{i}.self_attn.rotary_emb.inv_freq"] = inv_freq.clone()
    files[EMBEDDINGS]["sd_qformer.embeddings.position_ids"] = torch.arange(QFORMER_MAX_POSITIONS).unsqueeze(0)
    return files, lossy


def _add_noop_lora(llm_file: dict[str, torch.Tensor], lora: LoRAConfig, seed: int) -> LoRAConfig:
    """A no-op adapter in ``llm_file``: B = 0 (so W + alpha/r · B @ A = W exactly), A random (seeded)."""
    lora = LoRAConfig(r=LoRAConfig.STAGE2_R, alpha=lora.alpha, dropout=lora.dropout,
                      target_modules=lora.target_modules)
    generator = torch.Generator().manual_seed(seed)
    pattern = re.compile(rf"^(.+\.({'|'.join(map(re.escape, lora.target_modules))}))\.weight$")
    for key in list(llm_file):
        m = pattern.match(key)
        if m and key.startswith(f"{LLM_PREFIX}layers."):
            out_features, in_features = llm_file[key].shape
            a = torch.empty(lora.r, in_features)
            torch.nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            llm_file[f"{m.group(1)}.lora_A.default.weight"] = a
            llm_file[f"{m.group(1)}.lora_B.default.weight"] = torch.zeros(out_features, lora.r)
    logger.info("the model has no LoRA adapter (merged): writing a zero one (r=%d) so the file has the "
                "reference layout", lora.r)
    return lora


def export_released(model: SmartEditModel | str | os.PathLike, out: str | os.PathLike, *, step: str | int = 15000,
                    seed: int = 0) -> dict[str, str]:
    """Write a model (a :class:`~smartedit.model.SmartEditModel` or its ``save_pretrained`` folder) in the
    published layout under ``out``: ``LLM-{step}/adapter_model.bin`` (+ ``adapter_config.json``),
    ``embeddings_qformer/checkpoint-{step}_embeddings_qformer.bin``, ``unet-{step}/adapter_model.bin`` and, for a
    model with BIM, ``modulate-{step}/adapter_model.bin``, with exactly the reference key names.

    dtypes follow the released files (frozen LLaMA weights bf16, the rest float32) wherever that is exact; a merged
    LoRA weight that bf16 cannot hold stays float32. A model without LoRA gets an adapter whose ``lora_B`` is zero
    (``lora_A`` random, seeded: training it as an adapter works), so merging it changes nothing. The vision tower,
    VAE and null text embedding are not written: like the reference, a conversion takes them from the CLIP and SD
    folders. Returns file kind → path written.
    """
    if not isinstance(model, SmartEditModel):
        model = SmartEditModel.from_pretrained(os.fspath(model))
    cfg = model.config
    problems = []
    if cfg.unet.mask_channels:
        problems.append(f"the UNet has {cfg.unet.mask_channels} region-mask input channels (conv_in "
                        f"{cfg.unet.in_channels} channels); the reference UNet takes 8")
    if cfg.mllm.projector != "linear":
        problems.append(f"the projector is {cfg.mllm.projector!r}; the reference mm_projector is linear (LLaVA-1.1)")
    if problems:
        raise ValueError("this model cannot be written in the published SmartEdit layout: " + "; ".join(problems))

    files, lossy = _published_tensors(model)
    lora = cfg.lora
    if lora.r == 0:
        lora = _add_noop_lora(files[LLM], lora, seed)
    if lossy:
        logger.info("%d LLaMA weight(s) kept float32 (bf16 cannot hold them exactly, e.g. merged LoRA): %s",
                    len(lossy), ", ".join(lossy[:4]) + (" …" if len(lossy) > 4 else ""))
    if model.bim is None:
        del files[BIM]

    out = os.fspath(out)
    paths = {kind: os.path.join(out, rel) for kind, rel in published_paths(step).items() if kind in files}
    for kind, path in paths.items():
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(files[kind], path)
        logger.info("wrote %s (%d tensors)", path, len(files[kind]))
    adapter = os.path.join(out, f"LLM-{step}", ADAPTER_CONFIG)
    with open(adapter, "w", encoding="utf-8") as f:
        json.dump(_adapter_config(lora), f, indent=2)
        f.write("\n")
    paths["adapter_config"] = adapter
    return paths
