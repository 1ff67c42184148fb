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

    mllm = getattr(model.mllm, "parameter_counts", None)  # (an MLLM whose projector sits in its vision tower)
    return {
        **(mllm() if mllm else {"llm": count(model.mllm.llm), "vision": count(model.mllm.vision_tower),
                                "projector": count(model.mllm.projector)}),
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


# ---- memory an edit needs ------------------------------------------------------------------------------------

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
OFFLOAD_MODES = {
    "none": "every component on the GPU",
    "llm": "the MLLM on the GPU while it encodes, the UNet while it denoises (--offload llm)",
    "model": "each component on the GPU only while it runs (--offload model)",
}


def _numel(module) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters()) + sum(
        b.numel() for b in module.buffers())


def memory_parts(model) -> dict[str, int]:
    """Element counts (parameters and buffers) of the parts an edit moves: the LLM's quantizable decoder linears
    and the rest of it, vision + projector, Q-Former + BIM (+ null text embedding), UNet, VAE encoder, decoder."""
    import torch.nn as nn

    llm = model.mllm.llm
    linears = sum(m.weight.numel() + (0 if m.bias is None else m.bias.numel())
                  for m in llm.get_decoder().modules() if isinstance(m, nn.Linear))
    vae = model.vae
    return {"llm_linear": linears, "llm_rest": _numel(llm) - linears,
            "vision": _numel(model.mllm.vision_tower) + (0 if any(m is model.mllm.projector for m in
                                                                  model.mllm.vision_tower.modules())
                                                         else _numel(model.mllm.projector)),
            "qformer_bim": _numel(model.qformer) + _numel(model.bim) + model.null_text_embedding.numel(),
            "unet": _numel(model.unet),
            "vae_encoder": _numel(vae.encoder) + _numel(getattr(vae, "quant_conv", None)),
            "vae_decoder": _numel(vae.decoder) + _numel(getattr(vae, "post_quant_conv", None))}


def edit_memory(parts: dict[str, int], dtype: str, quantization: str = "none", offload: str = "none") -> int:
    """Peak GPU bytes of model weights during one edit (activations not included)."""
    from .quantize import quantized_bytes_per_param

    b = DTYPE_BYTES[dtype]
    linear = quantized_bytes_per_param(quantization) if quantization != "none" else b
    mllm = parts["llm_linear"] * linear + (parts["llm_rest"] + parts["vision"]) * b
    small = parts["qformer_bim"] * b
    unet, enc, dec = parts["unet"] * b, parts["vae_encoder"] * b, parts["vae_decoder"] * b
    if offload == "none":
        return int(mllm + small + unet + enc + dec)
    if offload == "llm":  # encode: MLLM + Q-Former/BIM + VAE; denoise and decode: UNet + Q-Former/BIM + VAE
        return int(max(mllm, unet) + small + enc + dec)
    return int(max(mllm + small + enc, unet, dec))  # model offload: one phase's components at a time


def memory_report(config: SmartEditConfig) -> dict:
    parts = memory_parts(build_meta(config))
    table = [{"dtype": d, "llm_quantization": q, "offload": o, "bytes": edit_memory(parts, d, q, o)}
             for d in DTYPE_BYTES for q in ("none", "int8", "int4") for o in OFFLOAD_MODES]
    return {"parts": parts, "resolution": config.resolution, "edit_memory": table}


def format_memory(mem: dict) -> str:
    lines = ["", f"GPU memory of the weights during one edit (GB; activations at {mem['resolution']} px come on top):",
             f"{'dtype':<10}{'LLM weights':<13}" + "".join(f"{'offload ' + o:>15}" for o in OFFLOAD_MODES)]
    rows: dict[tuple[str, str], dict[str, int]] = {}
    for r in mem["edit_memory"]:
        rows.setdefault((r["dtype"], r["llm_quantization"]), {})[r["offload"]] = r["bytes"]
    for (dtype, quant), by_mode in rows.items():
        lines.append(f"{dtype:<10}{quant:<13}" + "".join(f"{by_mode[o] / 1e9:>15.2f}" for o in OFFLOAD_MODES))
    lines += [f"  offload {name}: {what}" for name, what in OFFLOAD_MODES.items()]
    lines.append("  int8 / int4: bitsandbytes LLM decoder weights (--quantize-llm); float16 is for GPUs only")
    return "\n".join(lines)
