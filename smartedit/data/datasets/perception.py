"""Segmentation as editing (the InstructDiffusion recipe used by SmartEdit's perception data).

A segmentation example (image, binary mask, object phrase) becomes an editing pair:

* instruction: one of :data:`TEMPLATES` filled with the object phrase and one of the 8 :data:`COLOURS`
  (for ReasonSeg the reasoning question is put in front and the object is referred to as "the answer");
* target: ``0.5 · source + 0.5 · colour`` inside the mask, the source pixel **exactly** outside it. With 8-bit
  pixels the half-sum is rounded half up: ``(s + c + 1) // 2``;
* an empty mask (a COCO-Stuff class that is absent from the image, a gRefCOCO expression with no target) gives a
  no-op edit: the target is the source, unchanged.

Template and colour are drawn from the generator the caller passes, which recipes build with
``sample_rng(seed, 0, index, stream)`` so the choice is a pure function of (seed, item index).
"""

from __future__ import annotations

import numpy as np

from ..schema import Sample, encode_png
from ..validate import ItemError, check_image

__all__ = ["TEMPLATES", "COLOURS", "QUESTION_OBJECT", "choose_template_and_colour", "perception_instruction",
           "blend", "segmentation_sample", "fit_max_side"]

TEMPLATES = (
    "Mark the pixels of {object} in {color} and keep everything else the same.",
    "Paint {object} with a see-through {color} layer, leaving the rest of the picture untouched.",
    "Highlight {object} using a translucent {color} overlay.",
    "Cover {object} with semi-transparent {color} and change nothing else.",
    "Tint {object} {color} while the rest of the image stays exactly as it is.",
    "Shade the region of {object} in {color}; do not alter any other pixel.",
    "Color the area occupied by {object} {color} and leave all other areas unchanged.",
    "Lay a half-transparent {color} mask over {object} only.",
    "Show where {object} is by filling it with translucent {color}.",
    "Find {object} and mark it in {color}, keeping the background intact.",
    "Overlay {color} on {object} so it stands out; everything else remains the same.",
)
"""~11 segmentation-as-editing instructions (own wording), ``{object}`` and ``{color}`` placeholders."""

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0),
    "purple": (128, 0, 128),
    "blue": (0, 0, 255),
    "green": (0, 255, 0),
    "yellow": (255, 255, 0),
    "white": (255, 255, 255),
    "black": (0, 0, 0),
    "gray": (128, 128, 128),
}
"""The 8 marking colours (name → RGB)."""

QUESTION_OBJECT = "the answer"
"""How the object is named when a reasoning question is prepended (ReasonSeg)."""


def choose_template_and_colour(rng: np.random.Generator) -> tuple[int, str]:
    """(template index, colour name), drawn from ``rng`` in that order."""
    template = int(rng.integers(len(TEMPLATES)))
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    return template, colour


def perception_instruction(object_phrase: str, template: int, colour: str, question: str | None = None) -> str:
    """The editing instruction; with ``question`` the question comes first and the object is "the answer"."""
    object_phrase = " ".join(str(object_phrase).split())
    if not object_phrase:
        raise ItemError("missing field", "empty object phrase")
    if question is not None:
        question = " ".join(str(question).split())
        body = TEMPLATES[template].format(object=QUESTION_OBJECT, color=colour)
        return f"{question} {body}"
    return TEMPLATES[template].format(object=object_phrase, color=colour)


def blend(source: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] | str) -> np.ndarray:
    """``0.5·source + 0.5·colour`` inside ``mask`` (rounded half up), ``source`` outside; uint8 [H, W, 3]."""
    src = np.asarray(source)
    m = np.asarray(mask, dtype=bool)
    if src.dtype != np.uint8 or src.ndim != 3 or src.shape[2] != 3:
        raise ValueError(f"source must be uint8 [H, W, 3], got {src.dtype} {src.shape}")
    if m.shape != src.shape[:2]:
        raise ItemError("mask of the wrong size", f"mask is {m.shape[1]}x{m.shape[0]}, "
                                                  f"image is {src.shape[1]}x{src.shape[0]}")
    rgb = np.asarray(COLOURS[colour] if isinstance(colour, str) else colour, dtype=np.uint16)
    out = src.copy()
    out[m] = ((src[m].astype(np.uint16) + rgb + 1) // 2).astype(np.uint8)
    return out


def fit_max_side(image, mask: np.ndarray | None, max_side: int | None):
    """Downscale (image: Lanczos, mask: nearest) so the longer side is at most ``max_side``; unchanged if smaller."""
    from PIL import Image

    if not max_side or max(image.size) <= max_side:
        return image, mask, False
    scale = max_side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    if mask is not None:
        scaled = Image.fromarray(np.asarray(mask, dtype=np.uint8) * 255).resize(size, Image.Resampling.NEAREST)
        mask = np.array(scaled) > 127
    return image, mask, True


def segmentation_sample(sample_id: str, dataset: str, image_bytes: bytes, mask: np.ndarray | None,
                        object_phrase: str, rng: np.random.Generator, task: str = "perception",
                        question: str | None = None, max_side: int | None = None) -> Sample:
    """One segmentation example → an editing :class:`Sample`.

    ``mask`` is bool [H, W] at the image's size (None or all False → no-op edit, target = source). The source is
    stored as the original encoded bytes unless ``max_side`` shrinks it (then both are PNG)."""
    image = check_image(image_bytes, "image")
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (image.height, image.width):
            raise ItemError("mask of the wrong size", f"mask is {mask.shape[1]}x{mask.shape[0]}, "
                                                      f"image is {image.width}x{image.height}")
    template, colour = choose_template_and_colour(rng)
    instruction = perception_instruction(object_phrase, template, colour, question)
    image, mask, resized = fit_max_side(image, mask, max_side)
    source_bytes = encode_png(image) if resized else image_bytes
    if mask is None or not mask.any():
        target_bytes = source_bytes  # no-op edit: the target is the source, unchanged
    else:
        target = blend(np.array(image, dtype=np.uint8), mask, colour)
        from PIL import Image

        target_bytes = encode_png(Image.fromarray(target, "RGB"))
    return Sample(id=sample_id, dataset=dataset, task=task, instruction=instruction, source_image=source_bytes,
                  target_image=target_bytes)
