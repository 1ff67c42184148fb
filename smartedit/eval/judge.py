"""A local vision-language model as the judge of VLM-scored benchmarks, and the parsing of its replies.

The published protocols of GEdit-Bench, ImgEdit-Bench, KRIS-Bench and RISEBench ask a hosted GPT model to rate
each edit. Here the judge is any transformers image-text-to-text model in a local folder (e.g. a copy of
``Qwen/Qwen2.5-VL-7B-Instruct``; ``LAYOUTS['judge']``), loaded with ``AutoModelForImageTextToText`` and its own
processor and chat template, never downloaded, never with ``trust_remote_code``. A question is a list of parts
(text and PIL images, in the order the protocol shows them), sent as one user turn; the reply is decoded
greedily, so a judge gives the same reply to the same question on every run and every rank.

Scores from a local judge are **not comparable with the GPT-judged numbers the benchmarks publish** (another
judge, and prompts that follow each protocol's rubric in our own words); reports name the judge (folder name and
weight sha256) and say so (:data:`NOT_COMPARABLE`).

Replies are parsed by the helpers below; a reply that cannot be parsed raises :class:`JudgeParseError`, and the
benchmark records the metric as NaN (left out of the means, counted in ``n_nan``) with the reply kept in the
sample's ``meta["judge"]``: never a guessed score.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Union

import torch
from PIL import Image

from .backbones import BackboneError, BackboneInfo, hf_info, read_hf_config, require_dir

logger = logging.getLogger(__name__)

__all__ = ["Part", "Judge", "VLMJudge", "JudgeParseError", "NOT_COMPARABLE", "load_judge", "parse_score_list",
           "parse_labeled_scores", "parse_final_scores", "parse_json_field", "parse_yes_no", "ask_and_parse"]

Part = Union[str, Image.Image]
NOT_COMPARABLE = ("judged by the local VLM {name} (sha256 {sha}); the published numbers of this benchmark are "
                  "judged by a hosted GPT model, so these scores are not comparable with them")


class JudgeParseError(ValueError):
    """The judge's reply does not contain the scores the protocol asks for."""


class Judge:
    """What the benchmarks need from a judge: an identity and ``ask(parts) -> reply``."""

    info: BackboneInfo

    def ask(self, parts: Sequence[Part]) -> str:
        raise NotImplementedError

    def note(self) -> str:
        return NOT_COMPARABLE.format(name=self.info.name, sha=self.info.sha256)


class VLMJudge(Judge):
    """A transformers image-text-to-text model + processor from a local folder, greedy decoding."""

    def __init__(self, model, processor, info: BackboneInfo, device: str | torch.device = "cpu",
                 max_new_tokens: int = 512, max_image_side: int | None = 1024):
        self.model = model.to(device).eval()
        self.processor = processor
        self.info = info
        self.device = torch.device(device)
        self.max_new_tokens = int(max_new_tokens)
        self.max_image_side = max_image_side

    def _image(self, image: Image.Image) -> Image.Image:
        image = image.convert("RGB")
        side = self.max_image_side
        if side and max(image.size) > side:  # keeps the visual token count bounded for large benchmark images
            scale = side / max(image.size)
            image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                                 Image.Resampling.BICUBIC)
        return image

    @torch.no_grad()
    def ask(self, parts: Sequence[Part]) -> str:
        content: list[dict[str, Any]] = []
        for part in parts:
            if isinstance(part, Image.Image):
                content.append({"type": "image", "image": self._image(part)})
            else:
                content.append({"type": "text", "text": str(part)})
        messages = [{"role": "user", "content": content}]
        inputs = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                    return_dict=True, return_tensors="pt")
        inputs = {k: v.to(self.device) if hasattr(v, "to") else v for k, v in inputs.items()}
        dtype = next(self.model.parameters()).dtype
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        new = out[0, inputs["input_ids"].shape[1]:]
        return self.processor.decode(new, skip_special_tokens=True).strip()


def load_judge(path: str | os.PathLike, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
               max_new_tokens: int = 512) -> VLMJudge:
    """A :class:`VLMJudge` from a local folder (``LAYOUTS['judge']``); a wrong folder is a BackboneError."""
    directory = require_dir(path, "judge")
    if not (directory / "config.json").is_file():
        raise BackboneError("judge", directory, "config.json is missing")
    config = read_hf_config(directory, "judge", (_model_type(directory),))
    arch = f"{config.get('model_type')} ({', '.join(config.get('architectures') or []) or 'no architectures'})"
    info = hf_info(directory, "judge", arch)
    from transformers import AutoModelForImageTextToText, AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(os.fspath(directory), local_files_only=True)
    except Exception as e:
        raise BackboneError("judge", directory, f"transformers cannot load its processor: {e}") from e
    if getattr(processor, "chat_template", None) is None and getattr(getattr(processor, "tokenizer", None),
                                                                     "chat_template", None) is None:
        raise BackboneError("judge", directory, "no chat template (chat_template.jinja or chat_template in the "
                                                "processor / tokenizer config): the judge needs an instruct model")
    files = [p.suffix for p in directory.iterdir()]
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": ".safetensors" in files}
    if dtype is not None:
        kwargs["dtype"] = dtype
    try:
        model = AutoModelForImageTextToText.from_pretrained(os.fspath(directory), **kwargs)
    except Exception as e:
        raise BackboneError("judge", directory, f"AutoModelForImageTextToText cannot load it: {e}") from e
    logger.info("judge %s (%s)", info.tag(), info.arch)
    return VLMJudge(model, processor, info, device=device, max_new_tokens=max_new_tokens)


def _model_type(directory: Path) -> str:
    try:
        with open(directory / "config.json", encoding="utf-8") as f:
            return str(json.load(f).get("model_type"))
    except (OSError, ValueError) as e:
        raise BackboneError("judge", directory, f"config.json cannot be read ({e})") from e


# ---- reply parsing -----------------------------------------------------------------------------------------
_NUMBER = r"-?\d+(?:\.\d+)?"


def _in_range(values: list[float], low: float, high: float, reply: str) -> list[float]:
    bad = [v for v in values if not (low <= v <= high) or not math.isfinite(v)]
    if bad:
        raise JudgeParseError(f"scores {bad} outside [{low:g}, {high:g}] in reply {reply[:200]!r}")
    return values


def _json_objects(reply: str) -> list[dict[str, Any]]:
    """Every flat ``{...}`` object in the reply that parses as JSON (single quotes tolerated)."""
    found = []
    for m in re.finditer(r"\{[^{}]*\}", reply, re.DOTALL):
        text = m.group(0)
        for candidate in (text, text.replace("'", '"')):
            try:
                value = json.loads(candidate)
            except ValueError:
                continue
            if isinstance(value, dict):
                found.append(value)
                break
    return found


def parse_score_list(reply: str, count: int, low: float = 0, high: float = 10, key: str = "score") -> list[float]:
    """VIEScore's reply ``{"score": [a, b, ...], "reasoning": "..."}`` → ``count`` numbers in [low, high].

    Accepted, in this order: a JSON object with ``key`` (a list, or one number when ``count`` is 1); a bare
    ``[a, b]`` list; a reply that is just one number (``count`` 1)."""
    for obj in _json_objects(reply):
        if key in obj:
            value = obj[key]
            values = value if isinstance(value, list) else [value]
            try:
                numbers = [float(v) for v in values]
            except (TypeError, ValueError):
                continue
            if len(numbers) == count:
                return _in_range(numbers, low, high, reply)
    m = re.search(rf'"?{re.escape(key)}"?\s*[:=]\s*\[([^\]]*)\]', reply)
    lists = [m.group(1)] if m else []
    lists += re.findall(r"\[([^\[\]]*)\]", reply)
    for inner in lists:
        numbers = re.findall(_NUMBER, inner)
        if len(numbers) == count and re.fullmatch(rf"\s*{_NUMBER}(\s*,\s*{_NUMBER})*\s*", inner):
            return _in_range([float(n) for n in numbers], low, high, reply)
    if count == 1 and re.fullmatch(rf"\s*{_NUMBER}\s*", reply):
        return _in_range([float(reply)], low, high, reply)
    raise JudgeParseError(f"no {count} score(s) in reply {reply[:200]!r}")


def parse_labeled_scores(reply: str, labels: Sequence[str], low: float = 1, high: float = 5) -> dict[str, float]:
    """``"<label>: <n>"`` lines (ImgEdit's format; case-insensitive, ``**bold**`` and ``n/5`` tolerated) → one
    number per label; every label must be present."""
    out: dict[str, float] = {}
    for label in labels:
        pattern = rf"{re.escape(label)}\W*?[:：]\s*\**\s*({_NUMBER})"
        m = re.search(pattern, reply, re.IGNORECASE)
        if not m:
            raise JudgeParseError(f"no '{label}: <score>' in reply {reply[:200]!r}")
        out[label] = float(m.group(1))
    _in_range(list(out.values()), low, high, reply)
    return out


def parse_json_field(reply: str, key: str, low: float = 1, high: float = 5) -> float:
    """One score named ``key`` (KRIS-Bench's ``{"consistency_score": 4, "reasoning": ...}``): from a JSON object,
    else a ``key: n`` / ``key = n`` text line (underscores and spaces interchangeable)."""
    for obj in _json_objects(reply):
        if key in obj:
            try:
                return _in_range([float(obj[key])], low, high, reply)[0]
            except (TypeError, ValueError):
                break
    words = r"[_\s]*".join(re.escape(w) for w in key.split("_"))
    m = re.search(rf'"?{words}"?\s*[:：=]\s*\**\s*({_NUMBER})', reply, re.IGNORECASE)
    if m:
        return _in_range([float(m.group(1))], low, high, reply)[0]
    raise JudgeParseError(f"no {key} in reply {reply[:200]!r}")


def parse_final_scores(reply: str, count: int = 1, low: float = 1, high: float = 5) -> list[float]:
    """RISEBench's ``Final Score: n`` (or ``Final Scores: a, b``; markdown bold tolerated) → ``count`` numbers."""
    m = re.search(r"final\s+scores?\**\s*[:：]?\**\s*((?:\s*[-\d.]+\s*[,;/]?)+)", reply, re.IGNORECASE)
    if not m:
        raise JudgeParseError(f"no 'Final Score:' in reply {reply[:200]!r}")
    numbers = [float(n) for n in re.findall(_NUMBER, m.group(1))][:count]
    if len(numbers) != count:
        raise JudgeParseError(f"'Final Score' needs {count} number(s) in reply {reply[:200]!r}")
    return _in_range(numbers, low, high, reply)


def ask_and_parse(judge: Judge, record: list[dict[str, Any]], question: str, parts: Sequence[Part], parse):
    """Ask ``judge``, keep ``{"question", "reply"}`` in ``record`` (the sample's ``meta["judge"]``) and return
    ``parse(reply)``, or None when the reply cannot be parsed (the entry then carries ``"unparsed": true``)."""
    reply = judge.ask(parts)
    entry: dict[str, Any] = {"question": question, "reply": reply}
    record.append(entry)
    try:
        return parse(reply)
    except JudgeParseError as e:
        entry["unparsed"] = str(e)
        logger.debug("judge reply not parsed (%s): %s", question, e)
        return None


def parse_yes_no(reply: str) -> float:
    """A yes / no answer → 1.0 / 0.0 (the first of the two words in the reply; ``**Yes**`` and "Answer: no"
    tolerated); neither word is a JudgeParseError."""
    m = re.search(r"\b(yes|no)\b", reply, re.IGNORECASE)
    if not m:
        raise JudgeParseError(f"no yes / no in reply {reply[:200]!r}")
    return 1.0 if m.group(1).lower() == "yes" else 0.0
