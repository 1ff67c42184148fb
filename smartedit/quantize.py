"""Quantized LLM weights for inference: 8-bit or 4-bit (NF4) linear layers from bitsandbytes, on CUDA and on CPU.

The LLM is about 85 % of a 7B SmartEdit's weights (6.7 B of 7.9 B parameters), so quantizing only its decoder
layers takes an edit from ~16 GB (bf16) to ~9 GB (int8) or ~6 GB (nf4), see ``smartedit info --preset 7b``. The
vision tower, projector, Q-Former, BIM, UNet and VAE keep their dtype; the LM head and embeddings stay unquantized
(the 32 ``<img_i>`` states the Q-Former reads come from the last decoder layer, not the head).

The specification is transformers' own :class:`~transformers.BitsAndBytesConfig` (``load_in_8bit`` /
``load_in_4bit``, ``bnb_4bit_quant_type``, ``bnb_4bit_compute_dtype``, ``llm_int8_skip_modules``) or one of the
shorthands ``int8`` / ``int4`` (= NF4). The layers are bitsandbytes' ``Linear8bitLt`` / ``Linear4bit``, filled from
the loaded weights; the model then runs as before (inference only: a quantized model is not saved or trained).
"""

from __future__ import annotations

import logging

import torch
import torch.nn as nn

logger = logging.getLogger(__name__)

__all__ = ["QUANTIZATION_CHOICES", "quantization_config", "quantize_llm", "quantized_bytes_per_param"]

QUANTIZATION_CHOICES = ("int8", "int4")


def quantization_config(spec, compute_dtype: torch.dtype = torch.float32):
    """``int8`` / ``int4`` (or a ``BitsAndBytesConfig``, returned as is) → a transformers ``BitsAndBytesConfig``."""
    from transformers import BitsAndBytesConfig

    if isinstance(spec, BitsAndBytesConfig):
        return spec
    if spec == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    if spec == "int4":
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype)
    raise ValueError(f"unknown LLM quantization {spec!r}: choose one of {list(QUANTIZATION_CHOICES)} or pass a "
                     f"transformers BitsAndBytesConfig")


def quantized_bytes_per_param(spec: str) -> float:
    """Weight bytes per parameter of a quantized linear layer (NF4 keeps one fp32 scale per 64 weights)."""
    return {"int8": 1.0 + 4 / 4096, "int4": 0.5 + 4 / 64}[spec]


def _bnb():
    try:
        import bitsandbytes as bnb
    except ImportError as exc:
        raise ImportError(f"LLM quantization needs bitsandbytes ({exc}): pip install -e '.[quant]'") from None
    return bnb


def _quantized_linear(bnb, linear: nn.Linear, config, device: torch.device) -> nn.Module:
    weight = linear.weight.detach()
    bias = None if linear.bias is None else linear.bias.detach()
    if config.load_in_8bit:
        layer = bnb.nn.Linear8bitLt(linear.in_features, linear.out_features, bias=bias is not None,
                                    has_fp16_weights=False, threshold=config.llm_int8_threshold, device="meta")
        layer.weight = bnb.nn.Int8Params(weight.float().cpu(), requires_grad=False, has_fp16_weights=False)
    else:
        compute = config.bnb_4bit_compute_dtype or weight.dtype
        layer = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=bias is not None,
                                  compute_dtype=compute, quant_type=config.bnb_4bit_quant_type,
                                  compress_statistics=config.bnb_4bit_use_double_quant, device="meta")
        layer.weight = bnb.nn.Params4bit(weight.cpu(), requires_grad=False, quant_type=config.bnb_4bit_quant_type,
                                         compress_statistics=config.bnb_4bit_use_double_quant)
    if bias is not None:
        layer.bias = nn.Parameter(bias.cpu(), requires_grad=False)
    return layer.to(device)  # bitsandbytes quantizes the weight as it moves to the device


def _merge_lora(llm: nn.Module) -> int:
    """Fold peft LoRA adapters into their base linears (peft's ``merge``), replacing each adapted layer by its
    base layer; returns how many were merged."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return 0
    adapted = [(name, m) for name, m in llm.named_modules() if isinstance(m, LoraLayer)]
    for name, module in adapted:
        module.merge()
        parent_name, _, child = name.rpartition(".")
        setattr(llm.get_submodule(parent_name) if parent_name else llm, child, module.get_base_layer())
    return len(adapted)


def quantize_llm(model, spec) -> int:
    """Replace the ``nn.Linear`` layers of the LLM's decoder (``model.mllm.llm``) by bitsandbytes 8-bit / 4-bit
    layers, in place; returns how many were replaced. ``model.llm_quantization`` records the mode."""
    bnb = _bnb()
    llm = model.mllm.llm
    device = next(llm.parameters()).device
    config = quantization_config(spec, compute_dtype=next(llm.parameters()).dtype)
    if not (config.load_in_8bit or config.load_in_4bit):
        raise ValueError("the BitsAndBytesConfig must set load_in_8bit or load_in_4bit")
    merged = _merge_lora(llm)
    if merged:
        logger.info("merged %d LoRA-adapted layers into their base weights before quantizing", merged)
    skip = set(config.llm_int8_skip_modules or []) | {"lm_head"}
    decoder = llm.get_decoder()
    targets = [(name, module) for name, module in decoder.named_modules()
               if isinstance(module, nn.Linear) and not (set(name.split(".")) & skip)]
    for name, linear in targets:
        parent_name, _, child = name.rpartition(".")
        parent = decoder.get_submodule(parent_name) if parent_name else decoder
        setattr(parent, child, _quantized_linear(bnb, linear, config, device))
    mode = "int8" if config.load_in_8bit else f"4bit-{config.bnb_4bit_quant_type}"
    model.llm_quantization = mode
    logger.info("quantized %d LLM linear layers to %s (bitsandbytes, %s)", len(targets), mode, device)
    return len(targets)
