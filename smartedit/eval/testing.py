"""Tiny random metric backbones and tiny benchmark fixtures, saved in the real layouts.

For tests and smoke runs without real weights or data (nothing is downloaded): a tiny CLIP folder
(``CLIPModel.save_pretrained`` + the shipped tiny tokenizer + a ``CLIPImageProcessor``), a tiny DINO folder
(``ViTModel.save_pretrained``), a randomly initialised LPIPS folder in the torchvision / lpips key layout, and a
few samples in the Reason-Edit, MagicBrush (folder and parquet) and Emu Edit (parquet and JSONL) layouts.
Numbers computed with these backbones are meaningless; only the plumbing is real.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = ["TINY_TOKENIZER", "save_tiny_clip", "save_tiny_dino", "save_random_lpips", "shapes_image",
           "make_reason_edit_fixture", "make_reason_edit_outputs", "make_magicbrush_fixture",
           "make_magicbrush_parquet", "make_emu_edit_parquet", "make_emu_edit_jsonl", "png_bytes"]

TINY_TOKENIZER = Path(__file__).resolve().parent.parent / "assets" / "tiny_tokenizer"


def save_tiny_clip(directory: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """A random tiny ``CLIPModel`` + tokenizer + image processor, as ``from_pretrained`` expects them."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPImageProcessor, CLIPModel

    directory = Path(directory)
    tok = AutoTokenizer.from_pretrained(os.fspath(TINY_TOKENIZER), local_files_only=True)
    config = CLIPConfig(
        text_config=dict(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, eos_token_id=tok.eos_token_id,
                         bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=8),
        projection_dim=16)
    torch.manual_seed(seed)
    CLIPModel(config).eval().save_pretrained(os.fspath(directory))
    tok.save_pretrained(os.fspath(directory))
    CLIPImageProcessor(size={"shortest_edge": image_size},
                       crop_size={"height": image_size, "width": image_size}).save_pretrained(os.fspath(directory))
    return directory


def save_tiny_dino(directory: str | os.PathLike, seed: int = 0) -> Path:
    """A random tiny ``ViTModel`` (224 px, patch 32) saved like facebook/dino-vits16."""
    from transformers import ViTConfig, ViTModel

    directory = Path(directory)
    config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       image_size=224, patch_size=32)
    torch.manual_seed(seed)
    ViTModel(config, add_pooling_layer=False).eval().save_pretrained(os.fspath(directory))
    return directory


def save_random_lpips(directory: str | os.PathLike, seed: int = 0, fmt: str = "safetensors") -> Path:
    """Random SqueezeNet 1.1 weights (torchvision keys, incl. a classifier) and random non-negative lpips heads
    (``lin{k}.model.1.weight``) in ``fmt`` = "safetensors" or "pth"."""
    from .lpips import CHANNELS, SqueezeNetFeatures

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = {k: v.contiguous() for k, v in SqueezeNetFeatures().state_dict().items()}  # torchvision's features.*
    net["classifier.1.weight"] = torch.randn(1000, 512, 1, 1) * 0.01
    net["classifier.1.bias"] = torch.zeros(1000)
    heads = {f"lin{k}.model.1.weight": torch.rand(1, c, 1, 1) * 0.1 for k, c in enumerate(CHANNELS)}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(net, os.fspath(directory / "squeezenet1_1.safetensors"))
        save_file(heads, os.fspath(directory / "squeeze.safetensors"))
    elif fmt == "pth":
        torch.save(net, directory / "squeezenet1_1-random.pth")
        torch.save(heads, directory / "squeeze.pth")
    else:
        raise ValueError(f"fmt must be 'safetensors' or 'pth', got {fmt!r}")
    return directory


def shapes_image(size: tuple[int, int], box: tuple[int, int, int, int], color: tuple[int, int, int],
                 seed: int = 0) -> Image.Image:
    """A noisy background (``size`` = (w, h)) with one filled rectangle ``box`` = (left, top, right, bottom)."""
    rng = np.random.default_rng(seed)
    w, h = size
    arr = (rng.random((h, w, 3)) * 60 + 100).astype(np.uint8)
    left, top, right, bottom = box
    arr[top:bottom, left:right] = color
    return Image.fromarray(arr)


def _mask(size: tuple[int, int], box: tuple[int, int, int, int]) -> Image.Image:
    w, h = size
    arr = np.zeros((h, w), dtype=np.uint8)
    left, top, right, bottom = box
    arr[top:bottom, left:right] = 255
    return Image.fromarray(arr)


def png_bytes(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def make_reason_edit_fixture(root: str | os.PathLike, per_category: int = 2, size: tuple[int, int] = (48, 40),
                             seed: int = 0) -> Path:
    """Every category folder with ``per_category`` inputs (``<i>.png``), JPEG masks (``<i>_mask.jpg``) and one
    instruction file. Returns ``root``."""
    from .reason_edit import CATEGORIES

    root = Path(root)
    text_names = ["Left_Right_text.txt", "Size_text.txt", "Mirror_text.txt", "Color_text.txt",
                  "MultipleObjects_text.txt", "Reason_test.txt"]
    for c, (cat, text_name) in enumerate(zip(CATEGORIES, text_names)):
        folder = root / cat
        folder.mkdir(parents=True, exist_ok=True)
        lines = []
        for i in range(per_category):
            box = (8 + 4 * i, 6, 28 + 4 * i, 24)
            shapes_image(size, box, (200, 30, 30), seed=seed + 17 * c + i).save(folder / f"{i}.png")
            _mask(size, box).save(folder / f"{i}_mask.jpg", quality=95)
            lines.append(f"remove the red square number {i} CLIP: a gray background")
        (folder / text_name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def make_reason_edit_outputs(data_root: str | os.PathLike, out_root: str | os.PathLike,
                             color: tuple[int, int, int] = (40, 160, 40)) -> Path:
    """Fake edits for a Reason-Edit fixture: the input with its edit region repainted (background untouched),
    written as ``out_root/<category>/<stem>.png``; also usable as ground-truth targets."""
    from .reason_edit import read_reason_edit

    out_root = Path(out_root)
    samples, _ = read_reason_edit(data_root)
    for s in samples:
        inp = np.asarray(Image.open(s.input_path).convert("RGB")).copy()
        mask = np.asarray(Image.open(s.mask_path).convert("L")) > 127
        inp[mask] = color
        (out_root / s.category).mkdir(parents=True, exist_ok=True)
        Image.fromarray(inp).save(out_root / s.category / f"{s.stem}.png")
    return out_root


def make_magicbrush_fixture(root: str | os.PathLike, turns: dict[str, int] | None = None,
                            size: tuple[int, int] = (48, 48), seed: int = 0) -> Path:
    """The MagicBrush test layout: ``root/edit_sessions.json``, ``root/local_descriptions.json`` and
    ``root/images/<id>/<id>-input.png``, ``<id>-output<t>.png``, ``<id>-mask<t>.png``."""
    root = Path(root)
    turns = turns or {"101": 1, "202": 3}
    sessions: dict[str, list[dict[str, str]]] = {}
    captions: dict[str, dict[str, str]] = {}
    for s, (sid, n) in enumerate(turns.items()):
        folder = root / "images" / sid
        folder.mkdir(parents=True, exist_ok=True)
        current = shapes_image(size, (10, 10, 30, 30), (200, 30, 30), seed=seed + s)
        current.save(folder / f"{sid}-input.png")
        sessions[sid], captions[sid] = [], {}
        prev_name = f"{sid}-input.png"
        for t in range(1, n + 1):
            arr = np.asarray(current).copy()
            arr[5 + 3 * t:15 + 3 * t, 5:20] = (30 * t, 200, 60)
            current = Image.fromarray(arr)
            current.save(folder / f"{sid}-output{t}.png")
            _mask(size, (5, 5 + 3 * t, 20, 15 + 3 * t)).save(folder / f"{sid}-mask{t}.png")
            sessions[sid].append({"input": prev_name, "mask": f"{sid}-mask{t}.png",
                                  "instruction": f"add a green bar number {t}", "output": f"{sid}-output{t}.png"})
            captions[sid][f"{sid}-output{t}.png"] = f"a red square and {t} green bars"
            prev_name = f"{sid}-output{t}.png"
    (root / "edit_sessions.json").write_text(json.dumps(sessions, indent=1), encoding="utf-8")
    (root / "local_descriptions.json").write_text(json.dumps(captions, indent=1), encoding="utf-8")
    return root


def make_magicbrush_parquet(path: str | os.PathLike, turns: dict[str, int] | None = None,
                            size: tuple[int, int] = (48, 48), seed: int = 0) -> Path:
    """The Hugging Face MagicBrush parquet layout (columns img_id, turn_index, source_img, mask_img, instruction,
    target_img; images as {"bytes", "path"} structs)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    turns = turns or {"101": 1, "202": 3}
    rows: list[dict[str, Any]] = []
    for s, (sid, n) in enumerate(turns.items()):
        current = shapes_image(size, (10, 10, 30, 30), (200, 30, 30), seed=seed + s)
        for t in range(1, n + 1):
            arr = np.asarray(current).copy()
            arr[5 + 3 * t:15 + 3 * t, 5:20] = (30 * t, 200, 60)
            target = Image.fromarray(arr)
            rows.append({"img_id": sid, "turn_index": t,
                         "source_img": {"bytes": png_bytes(current), "path": None},
                         "mask_img": {"bytes": png_bytes(_mask(size, (5, 5 + 3 * t, 20, 15 + 3 * t))), "path": None},
                         "instruction": f"add a green bar number {t}",
                         "target_img": {"bytes": png_bytes(target), "path": None}})
            current = target
    pq.write_table(pa.Table.from_pylist(rows), os.fspath(path))
    return path


def _emu_rows(n: int, size: tuple[int, int], seed: int) -> list[dict[str, Any]]:
    rows = []
    for i in range(n):
        img = shapes_image(size, (8, 8, 24, 24), (30, 30, 200), seed=seed + i)
        rows.append({"idx": i, "task": "color" if i % 2 else "remove", "split": "test",
                     "instruction": f"make the blue square number {i} red", "image": img,
                     "input_caption": f"a blue square number {i}", "output_caption": f"a red square number {i}",
                     "hash": f"h{i}"})
    if n >= 4:
        rows[-1]["output_caption"] = rows[-1]["input_caption"]     # source == target
        rows[-2]["output_caption"] = "<output caption>"            # placeholder
    return rows


def make_emu_edit_parquet(path: str | os.PathLike, n: int = 5, size: tuple[int, int] = (48, 40),
                          seed: int = 0) -> Path:
    """Emu Edit test-set parquet (columns idx, task, split, instruction, image struct, input_caption,
    output_caption, hash); with n >= 4 the last two rows have bad captions (source == target, placeholder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = _emu_rows(n, size, seed)
    for r in rows:
        r["image"] = {"bytes": png_bytes(r["image"]), "path": None}
    pq.write_table(pa.Table.from_pylist(rows), os.fspath(path))
    return path


def make_emu_edit_jsonl(root: str | os.PathLike, n: int = 5, size: tuple[int, int] = (48, 40),
                        seed: int = 0) -> Path:
    """The same samples as :func:`make_emu_edit_parquet` as ``root/metadata.jsonl`` + ``root/images/<idx>.png``."""
    root = Path(root)
    (root / "images").mkdir(parents=True, exist_ok=True)
    with open(root / "metadata.jsonl", "w", encoding="utf-8") as f:
        for r in _emu_rows(n, size, seed):
            r["image"].save(root / "images" / f"{r['idx']}.png")
            r["image"] = f"images/{r['idx']}.png"
            f.write(json.dumps(r) + "\n")
    return root
