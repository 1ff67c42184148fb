"""Parameter counts of a preset, built on the meta device (no memory is allocated, runs in seconds)."""

from __future__ import annotations

import torch

from .config import SmartEditConfig
from .stages import STAGES, trainable_counts


def build_meta(config: SmartEditConfig):
    """The model with every tensor on the meta device (no tokenizer)."""
    from .model import SmartEditModel

    with torch.device("meta"):
        return SmartEditModel(config, tokenizer=None)


def parameter_counts(model) -> dict[str, int]:
    """Parameters per component: LLM, vision tower, projector, Q-Former (incl. queries), BIM, UNet, VAE."""
    def count(module) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    return {
        "llm": count(model.mllm.llm),
        "vision": count(model.mllm.vision_tower),
        "projector": count(model.mllm.projector),
        "qformer": count(model.qformer),
        "bim": count(model.bim),
        "unet": count(model.unet),
        "vae": count(model.vae),
    }


def report(config: SmartEditConfig) -> dict:
    model = build_meta(config)
    components = parameter_counts(model)
    stages = {stage: trainable_counts(model, stage) for stage in STAGES}
    return {"preset": config.preset, "components": components, "total": sum(components.values()),
            "trainable": {s: {"parts": c, "total": sum(c.values())} for s, c in stages.items()}}


def format_report(info: dict) -> str:
    def fmt(n: int) -> str:
        return f"{n / 1e9:.3f} B" if n >= 1e9 else f"{n / 1e6:.2f} M" if n >= 1e6 else f"{n / 1e3:.1f} K"

    lines = [f"SmartEdit preset {info['preset']!r}: {fmt(info['total'])} parameters", "",
             f"{'component':<12}{'parameters':>16}{'exact':>16}"]
    for name, n in info["components"].items():
        lines.append(f"{name:<12}{fmt(n):>16}{n:>16,}")
    lines += ["", "trainable per stage:"]
    for stage, t in info["trainable"].items():
        parts = ", ".join(f"{k} {fmt(v)}" for k, v in t["parts"].items())
        lines.append(f"  {stage:<9}{fmt(t['total']):>12}   ({parts})")
    return "\n".join(lines)
