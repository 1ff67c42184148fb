"""Shared test helpers (importable from tests: pytest puts this folder on sys.path)."""

import importlib.util
import os

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath: str, name: str | None = None):
    """Import a repo script that is not part of the installed package (``eval/reason_edit.py``,
    ``train/stage1_align.py``, ``bench/…``, ``data_recipes/…``) from its file."""
    path = relpath if os.path.isabs(relpath) else os.path.join(REPO, relpath)
    name = name or "script_" + os.path.relpath(path, REPO).replace(os.sep, "_")[:-3]
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- what each training stage changes --------------------------------------------------------------------

STAGE_TOKEN_MATRICES = ("mllm.llm.model.embed_tokens.weight", "mllm.llm.lm_head.weight")
STAGE_TRAINS = {"stage1": ("qformer.",), "stage2a": ("qformer.", "unet.", "lora_"),
                "stage2b": ("qformer.", "unet.", "lora_", "bim.")}


def assert_only_stage_parameters_changed(before: dict, after: dict, stage: str, base_vocab: int) -> None:
    """Frozen tensors bit-identical; the new token rows change and the base rows do not; every trained part moves.
    (LoRA layers rename ``q_proj.weight`` to ``q_proj.base_layer.weight``; the BIM of stage 2b is new.)"""
    import torch

    moved = set()
    for key, new in after.items():
        if key in STAGE_TOKEN_MATRICES:
            assert torch.equal(before[key][:base_vocab], new[:base_vocab]), f"{stage}: base rows of {key} changed"
            assert not torch.equal(before[key][base_vocab:], new[base_vocab:]), f"{stage}: new rows of {key} frozen"
            continue
        trained = any(part in key for part in STAGE_TRAINS[stage]) and "base_layer" not in key \
            and "pos_encoding" not in key
        old = before.get(key, before.get(key.replace("base_layer.", "")))
        if old is None:  # created by this stage: LoRA (2a) or the BIM (2b)
            assert "lora_" in key or (stage == "stage2b" and key.startswith("bim.")), f"{stage}: new tensor {key}"
        elif trained:
            if not torch.equal(old, new):
                moved.add(next(p for p in STAGE_TRAINS[stage] if p in key))
        else:
            assert torch.equal(old, new), f"{stage}: frozen tensor {key} changed"
    expected = set(STAGE_TRAINS[stage]) - {"bim."} - ({"lora_"} if stage == "stage2a" else set())
    assert moved == expected, (stage, moved)
    if stage == "stage2b":  # the zero-initialised BIM heads trained away from zero
        assert after["bim.text_out.weight"].abs().sum() > 0 and after["bim.image_out.weight"].abs().sum() > 0
    if stage == "stage2a":  # LoRA B starts at zero and trained
        assert all(v.abs().sum() > 0 for k, v in after.items() if "lora_B" in k)
