"""Tiny random metric backbones, a tiny random VLM judge and tiny benchmark fixtures, saved in the real layouts.

For tests and smoke runs without real weights or data (nothing is downloaded): a tiny CLIP folder
(``CLIPModel.save_pretrained`` + the shipped tiny tokenizer + a ``CLIPImageProcessor``), a tiny DINO folder
(``ViTModel.save_pretrained``), a randomly initialised LPIPS folder in the torchvision / lpips key layout, a tiny
llava-hf judge folder (``LlavaForConditionalGeneration`` + ``LlavaProcessor`` with a chat template), a scripted
judge for exact protocol checks, and a few samples in the Reason-Edit (and the reference's output layout),
MagicBrush (folder and parquet), Emu Edit (parquet and JSONL), GEdit-Bench (parquet), ImgEdit-Bench,
KRIS-Bench and RISEBench layouts.
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

__all__ = ["TINY_TOKENIZER", "save_tiny_clip", "save_tiny_dino", "save_random_lpips", "save_tiny_vlm",
           "ScriptedJudge", "shapes_image", "make_reason_edit_fixture", "make_reason_edit_outputs",
           "make_reference_outputs", "make_magicbrush_fixture", "make_magicbrush_parquet", "make_emu_edit_parquet",
           "make_emu_edit_jsonl", "make_gedit_fixture", "make_imgedit_fixture", "make_kris_fixture",
           "make_rise_fixture", "write_outputs", "png_bytes"]

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


# ---- judges ------------------------------------------------------------------------------------------------
_CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'].upper() }}: {% if m['content'] is string %}{{ m['content'] }}"
                  "{% else %}{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n"
                  "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}\n{% endfor %}"
                  "{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def save_tiny_vlm(directory: str | os.PathLike, seed: int = 0, image_size: int = 32) -> Path:
    """A random tiny llava-hf judge (CLIP vision tower + LLaMA, the shipped tiny tokenizer with an ``<image>``
    token, a ``CLIPImageProcessor`` and a chat template) as ``AutoModelForImageTextToText`` /
    ``AutoProcessor.from_pretrained`` load it. Its replies are random text."""
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    directory = Path(directory)
    tok = AutoTokenizer.from_pretrained(os.fspath(TINY_TOKENIZER), local_files_only=True)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size},
                                           crop_size={"height": image_size, "width": image_size}),
        tokenizer=tok, patch_size=8, vision_feature_select_strategy="default", num_additional_image_tokens=1,
        chat_template=_CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=image_size, patch_size=8),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                pad_token_id=tok.pad_token_id),
        image_token_index=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default",
        vision_feature_layer=-2)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).eval().save_pretrained(os.fspath(directory))
    processor.save_pretrained(os.fspath(directory))
    return directory


class ScriptedJudge:
    """A judge whose reply to each question is ``reply(parts)`` (parts: the texts and PIL images asked); records
    every question in :attr:`asked`. For checking a benchmark's protocol and arithmetic exactly."""

    def __init__(self, reply, name: str = "scripted-judge"):
        from .backbones import BackboneInfo

        self.reply = reply
        self.asked: list[list] = []
        self.info = BackboneInfo(kind="judge", name=name, arch="scripted replies (tests)", path="", files={},
                                 sha256="0" * 64)

    def ask(self, parts):
        self.asked.append(list(parts))
        return self.reply(list(parts))

    def note(self) -> str:
        from .judge import NOT_COMPARABLE

        return NOT_COMPARABLE.format(name=self.info.name, sha=self.info.sha256)


# ---- more benchmark fixtures ---------------------------------------------------------------------------------
def make_reference_outputs(data_root: str | os.PathLike, save_dir: str | os.PathLike,
                           guidance: tuple[tuple[float, float], ...] = ((7.5, 1.5),), metrics_only: bool = True,
                           color: tuple[int, int, int] = (40, 160, 40)) -> Path:
    """Fake edits in the layout SmartEdit's ``test/DS_SmartEdit_test.py`` writes: ``save_dir/Understand-15000/
    <Name>_metrics_<k>/<NNNN>_T<t>_I<i>.png`` and ``save_dir/Reason-15000/Reasoning_metrics_1/...`` (with
    ``metrics_only=False`` the sweep folders ``<Name>_<k>/`` with one file per guidance pair instead)."""
    from .reason_edit import REFERENCE_NAMES, read_reason_edit

    save_dir = Path(save_dir)
    numbers = {"LeftRight": 1, "RelativeSize": 2, "Mirror": 3, "Color": 4, "MultipleObjects": 5, "Reasoning": 1}
    by_cat = {cat: name for name, cat in REFERENCE_NAMES.items()}
    samples, _ = read_reason_edit(data_root)
    for s in samples:
        name = by_cat[s.category]
        run = "Reason-15000" if name == "Reasoning" else "Understand-15000"
        if metrics_only:
            folder = save_dir / run / f"{name}_metrics_{numbers[name]}"
        else:
            folder = save_dir / run / (name if name == "Reasoning" else f"{name}_{numbers[name]}")
        folder.mkdir(parents=True, exist_ok=True)
        arr = np.asarray(Image.open(s.input_path).convert("RGB")).copy()
        arr[np.asarray(Image.open(s.mask_path).convert("L")) > 127] = color
        for t, i in guidance:
            Image.fromarray(arr).save(folder / f"{s.position:04d}_T{t}_I{i}.png")
    return save_dir


def make_gedit_fixture(root: str | os.PathLike, per_task: int = 1, tasks: tuple[str, ...] = ("color_alter",
                       "subject-remove"), size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """stepfun-ai/GEdit-Bench as a parquet file ``root/data/train-00000-of-00001.parquet`` (task_type, key,
    instruction, instruction_language, input_image, input_image_raw, Intersection_exist), en and cn rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = Path(root)
    (root / "data").mkdir(parents=True, exist_ok=True)
    rows = []
    for t, task in enumerate(tasks):
        for i in range(per_task):
            img = png_bytes(shapes_image(size, (8, 8, 24, 24), (200, 30, 30), seed=seed + 10 * t + i))
            for lang, text in (("en", f"make the red square number {i} blue"), ("cn", f"把第{i}个红色方块变成蓝色")):
                rows.append({"task_type": task, "key": f"k{t}{i:03d}", "instruction": text,
                             "instruction_language": lang, "input_image": {"bytes": img, "path": None},
                             "input_image_raw": {"bytes": img, "path": None}, "Intersection_exist": i % 2 == 0})
    pq.write_table(pa.Table.from_pylist(rows), os.fspath(root / "data" / "train-00000-of-00001.parquet"))
    return root


def make_imgedit_fixture(root: str | os.PathLike, types: tuple[str, ...] = ("add", "remove", "style"),
                         size: tuple[int, int] = (48, 40), seed: int = 0, prompts: bool = False) -> Path:
    """ImgEdit-Bench basic: ``root/basic_edit.json`` and the originals under ``root/singleturn/<category>/``
    (with ``prompts``: a ``prompts.json`` of per-type prompts with ``<edit_prompt>`` too)."""
    root = Path(root)
    edits = {}
    for n, t in enumerate(types):
        image_id = f"animal/{n:09d}.jpg"
        (root / "singleturn" / "animal").mkdir(parents=True, exist_ok=True)
        shapes_image(size, (8, 8, 24, 24), (30, 160, 30), seed=seed + n).save(root / "singleturn" / image_id)
        edits[str(100 + n)] = {"id": image_id, "prompt": f"{t} something number {n}", "edit_type": t}
    (root / "basic_edit.json").write_text(json.dumps(edits, indent=1), encoding="utf-8")
    if prompts:
        (root / "prompts.json").write_text(json.dumps({t: f"Rate this {t} edit. Instruction: <edit_prompt>. "
                                                          f"Give Prompt Compliance: n" for t in types}),
                                           encoding="utf-8")
    return root


def make_kris_fixture(root: str | os.PathLike, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """KRIS-Bench: ``root/KRIS_Bench/<task>/annotation.json`` + images for a plain task (color_change), a knowledge
    task (chemistry), a task with a ground-truth image (viewpoint_change) and a multi-image one
    (multi-element_composition). Returns the ``KRIS_Bench`` folder."""
    bench = Path(root) / "KRIS_Bench"
    tasks = {"color_change": {}, "chemistry": {"explain": "the copper turns green"},
             "viewpoint_change": {"gt": True}, "multi-element_composition": {"multi": True}}
    for t, (task, how) in enumerate(tasks.items()):
        folder = bench / task
        folder.mkdir(parents=True, exist_ok=True)
        shapes_image(size, (8, 8, 24, 24), (200, 120, 30), seed=seed + t).save(folder / "1.jpg")
        entry: dict[str, Any] = {"ori_img": "1.jpg", "ins_en": f"edit for {task}",
                                 "explain_en": how.get("explain", "")}
        if how.get("gt"):
            shapes_image(size, (20, 8, 36, 24), (200, 120, 30), seed=seed + t).save(folder / "1_gt.jpg")
            entry["gt_img"] = "1_gt.jpg"
        if how.get("multi"):
            shapes_image(size, (4, 4, 12, 12), (30, 30, 200), seed=seed + 9).save(folder / "1-2.jpg")
            entry["ori_img"] = ["1.jpg", "1-2.jpg"]
        (folder / "annotation.json").write_text(json.dumps({"1": entry}, indent=1), encoding="utf-8")
    return bench


def make_rise_fixture(root: str | os.PathLike, size: tuple[int, int] = (48, 40), seed: int = 0) -> Path:
    """RISEBench: ``root/data/data_total.json`` + images, one sample per category (the logical one with a
    reference image, one temporal sample consistency-free). Returns the ``data`` folder."""
    data = Path(root) / "data"
    rows = []
    for c, cat in enumerate(("temporal_reasoning", "causal_reasoning", "spatial_reasoning", "logical_reasoning")):
        (data / f"{cat}_images").mkdir(parents=True, exist_ok=True)
        shapes_image(size, (8, 8, 24, 24), (120, 60, 30), seed=seed + c).save(data / f"{cat}_images" / "1.png")
        row = {"index": f"{cat}_1", "category": cat, "instruction": f"what happens next ({cat})",
               "image": f"{cat}_images/1.png", "reference": "a brown square"}
        if cat == "logical_reasoning":
            shapes_image(size, (20, 20, 40, 36), (0, 0, 0), seed=seed).save(data / f"{cat}_images" / "1_ref.png")
            row["reference_img"] = f"{cat}_images/1_ref.png"
        if cat == "temporal_reasoning":
            row["consistency_free"] = True
        rows.append(row)
    (data / "data_total.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return data


def write_outputs(bench, outputs: str | os.PathLike, skip: tuple[str, ...] = ()) -> Path:
    """Fake edits for any :class:`~smartedit.eval.benchmark.Benchmark`: each readable sample's input, colour-
    inverted, at ``bench.output_path`` (sample ids in ``skip`` get none)."""
    from .images import load_rgb

    outputs = Path(outputs)
    samples, _ = bench.read()
    for s in samples:
        if s.id in skip or s.input is None:
            continue
        try:
            image = load_rgb(s.input, "missing_input", "input")
        except Exception:
            continue
        path = bench.output_path(s, outputs)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(image)).save(path)
    return outputs
