"""Weights I/O: pretrained component folders in, SmartEdit models out (nothing downloaded; every path is local).

==============================  =====================================================================================
:mod:`~smartedit.weights.files`     finding and reading weight files of any layout (safetensors single / sharded /
                                    indexed, ``.bin`` with ``weights_only=True``), Git LFS pointers, configs,
                                    tokenizers, missing / unexpected / wrongly shaped tensors
:mod:`~smartedit.weights.llama`     LLaMA / Vicuna, original LLaVA-1.1 and llava-hf LLM folders (:func:`load_llm`)
:mod:`~smartedit.weights.clip`      CLIP folders: the vision tower, or the whole model for metrics (:func:`load_clip`)
:mod:`~smartedit.weights.sd`        SD-1.5 / InstructPix2Pix diffusers folders (:func:`load_sd`)
:mod:`~smartedit.weights.assemble`  a ``SmartEditModel`` from the three (:func:`from_components`)
:mod:`~smartedit.weights.released`  the released SmartEdit-7B / 13B checkpoints to our format and back
                                    (``convert_released`` / ``export_released``; import it from there)
==============================  =====================================================================================

A missing folder or file is one ``FileNotFoundError`` that says what the folder should hold; a Git LFS pointer
instead of weights, or weights that do not fit (missing, unexpected or wrongly shaped tensors) are one
``ValueError`` listing every problem and the file it came from.
"""

from .assemble import apply_overrides, config_from_components, from_components
from .clip import CLIP_LAYOUT, LoadedCLIP, load_clip
from .files import read_state_dict, weight_files
from .llama import LLM_LAYOUT, LoadedLLM, load_llm
from .sd import CLIP_TEXT_LENGTH, SD_LAYOUT, LoadedSD, load_sd

__all__ = [
    "LoadedLLM",
    "LoadedCLIP",
    "LoadedSD",
    "load_llm",
    "load_clip",
    "load_sd",
    "from_components",
    "config_from_components",
    "apply_overrides",
    "read_state_dict",
    "weight_files",
    "LLM_LAYOUT",
    "CLIP_LAYOUT",
    "SD_LAYOUT",
    "CLIP_TEXT_LENGTH",
]
