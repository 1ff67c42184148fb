"""What each training stage trains (docs/design.md, "Training"), as one table used by the trainer, the tests and
``smartedit info``.

| stage    | trains                                                       | frozen                                    |
|----------|--------------------------------------------------------------|-------------------------------------------|
| stage1   | Q-Former + queries, new token rows (embedding + LM head)      | LLM, vision tower, projector, UNet, VAE   |
| stage2a  | + LoRA on the LLM (q/v), the whole UNet                       | vision tower, projector, VAE, LLM base    |
| stage2b  | as 2a + BIM (zero-init heads)                                 | as 2a                                     |

"New token rows": the embedding and LM-head matrices require grad, but a gradient mask zeroes every base row,
so only the 35 new rows change.

An experiment may train more than its stage's parts (``ExperimentConfig.also_train``, e.g. ``["llm"]``: every
decoder layer of the LLM, outside the paper's recipe). The ShapesWorld recipe does so in stage 1: its tiny LLM,
pretrained on a few thousand chats instead of a web corpus, does not carry the instruction into its ``<img_i>``
states when frozen (top-1 instruction retrieval from the Q-Former output at chance), and does when trained.
"""

from __future__ import annotations

import torch.nn as nn

STAGES = ("stage1", "stage2a", "stage2b")

PARTS = ("qformer", "new_token_rows", "lora", "unet", "bim", "llm", "token_rows")
"""Every trainable part: ``llm`` is the LLM's decoder layers (its embeddings stay under the new-token-row mask);
``token_rows`` every row of the embedding and LM-head matrices, the base vocabulary's too (for an LLM taught to
write words it was never trained to say)."""

_PARTS = {
    "stage1": ("qformer", "new_token_rows"),
    "stage2a": ("qformer", "new_token_rows", "lora", "unet"),
    "stage2b": ("qformer", "new_token_rows", "lora", "unet", "bim"),
}


def unknown_parts_problem(also_train) -> str | None:
    """What is wrong with an ``also_train`` list (not a list of names from :data:`PARTS`), or None."""
    if not (isinstance(also_train, (list, tuple)) and all(isinstance(x, str) for x in also_train)):
        return f"also_train must be a list of part names from {list(PARTS)}, got {also_train!r}"
    unknown = [p for p in also_train if p not in PARTS]
    return f"also_train names unknown parts {unknown}; choose from {list(PARTS)}" if unknown else None


def stage_parts(stage: str, also_train: tuple[str, ...] | list[str] = ()) -> tuple[str, ...]:
    """The parts ``stage`` trains, plus ``also_train`` (names from :data:`PARTS`)."""
    if stage not in _PARTS:
        raise ValueError(f"unknown stage {stage!r}; choose one of {list(STAGES)}")
    problem = unknown_parts_problem(also_train)
    if problem:
        raise ValueError(problem)
    return _PARTS[stage] + tuple(p for p in also_train if p not in _PARTS[stage])


def configure_stage(model, stage: str, also_train: tuple[str, ...] | list[str] = ()) -> list[nn.Parameter]:
    """Freeze everything, then unfreeze what ``stage`` (+ ``also_train``) trains. Adds LoRA (r=8) for stage 2 if
    the model has none and requires a BIM for stage 2b. Returns the trainable parameters."""
    parts = stage_parts(stage, also_train)
    if "bim" in parts and model.bim is None:
        raise ValueError("stage2b trains the BIM but this model was built without one (bim.enabled = false)")
    if "lora" in parts and model.mllm.lora_config is None:
        model.add_lora()
    model.requires_grad_(False)
    model.mllm.disable_new_token_grad_mask()
    if "qformer" in parts:
        model.qformer.requires_grad_(True)
    if "new_token_rows" in parts:
        for weight in model.mllm._token_matrices():
            weight.requires_grad_(True)
        model.mllm.enable_new_token_grad_mask()
    if "lora" in parts:
        for p in model.mllm.lora_parameters():
            p.requires_grad_(True)
    if "unet" in parts:
        model.unet.requires_grad_(True)
    if "bim" in parts:
        model.bim.requires_grad_(True)
    if "llm" in parts:
        model.mllm.llm.model.layers.requires_grad_(True)
    if "token_rows" in parts:
        for weight in model.mllm._token_matrices():
            weight.requires_grad_(True)
        model.mllm.disable_new_token_grad_mask()
    return [p for p in model.parameters() if p.requires_grad]


def trainable_counts(model, stage: str, also_train: tuple[str, ...] | list[str] = ()) -> dict[str, int]:
    """Trainable parameters per part for ``stage``, computed from the module shapes (works on the meta device
    and on models without LoRA: LoRA is counted as r·(in+out) per adapted linear)."""
    cfg = model.config
    parts = stage_parts(stage, also_train)
    counts: dict[str, int] = {}
    if "qformer" in parts:
        counts["qformer"] = sum(p.numel() for p in model.qformer.parameters())
    if "new_token_rows" in parts:
        counts["new_token_rows"] = 2 * cfg.mllm.num_new_tokens * cfg.mllm.hidden_size
    if "lora" in parts:
        r = cfg.lora.r or cfg.lora.STAGE2_R
        targets = set(cfg.lora.target_modules)
        counts["lora"] = sum(r * (m.in_features + m.out_features) for name, m in model.mllm.llm.named_modules()
                             if name.rsplit(".", 1)[-1] in targets and hasattr(m, "in_features"))
    if "unet" in parts:
        counts["unet"] = sum(p.numel() for p in model.unet.parameters())
    if "bim" in parts and model.bim is not None:
        counts["bim"] = sum(p.numel() for p in model.bim.parameters())
    if "llm" in parts:
        counts["llm"] = sum(p.numel() for n, p in model.mllm.llm.model.layers.named_parameters()
                            if "lora_" not in n)
    if "token_rows" in parts:  # the rows not already counted as new token rows
        counts["token_rows"] = (sum(w.numel() for w in model.mllm._token_matrices())
                                - counts.get("new_token_rows", 0))
    return counts


def optimizer_param_groups(model, stage: str, weight_decay: float = 0.0,
                           also_train: tuple[str, ...] | list[str] = ()) -> list[dict]:
    """Parameter groups for ``stage``: the embedding / LM-head matrices (whose base rows must stay frozen) go in a
    group WITHOUT weight decay, since decoupled decay would shrink the frozen base rows despite their zero grads."""
    params = configure_stage(model, stage, also_train)
    token_ids = {id(w) for w in model.mllm._token_matrices()}
    tokens = [p for p in params if id(p) in token_ids]
    rest = [p for p in params if id(p) not in token_ids]
    groups = [{"params": rest, "weight_decay": weight_decay}]
    if tokens:
        groups.append({"params": tokens, "weight_decay": 0.0})
    return groups
