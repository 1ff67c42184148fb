"""The uniform training-sample schema every dataset recipe writes and every training stage reads.

One row per sample, stored as sharded parquet (``datasets`` / ``pyarrow``); images are stored ONCE as encoded
PNG/JPEG bytes and decoded on the fly, never re-encoded per epoch.

| column         | type            | meaning                                                                     |
|----------------|-----------------|-----------------------------------------------------------------------------|
| ``id``         | string          | unique within its dataset (e.g. ``magicbrush/327726-2``)                     |
| ``dataset``    | string          | recipe name (``ip2p``, ``magicbrush``, ``refcoco``, ``llava_instruct`` …)    |
| ``task``       | string          | one of :data:`TASKS`                                                         |
| ``instruction``| string or null  | the editing instruction (edit / perception / reasoning tasks)               |
| ``caption``    | string or null  | the caption (``caption`` task, stage 1)                                      |
| ``conversation``| string or null | JSON list of ``[question, answer]`` turns (``chat`` task)                    |
| ``source_image``| binary or null | encoded source image (``caption``: null, or the image an edit instruction is |
|                | ``caption`` = instruction: aligned in the edit prompt with that image)      |
| ``target_image``| binary or null | encoded target image (edit-like tasks only)                                 |
| ``mask_image`` | binary or null  | encoded edit/region mask, single channel, 255 = edit region (optional)       |
| ``reply``      | string or null  | optional column: what the assistant writes before its ``<img_i>`` tokens     |
|                |                 | (e.g. the instruction worked out); null: one of the stock edit answers       |

Tasks: ``edit`` (InstructPix2Pix / MagicBrush / UltraEdit pairs), ``perception`` (segmentation-as-editing),
``reasoning`` (synthetic reasoning edits, ReasonSeg), ``chat`` (LLaVA-Instruct: LM loss only),
``caption`` (stage-1 alignment: text only; with a ``source_image`` the caption is an edit instruction and the
sample is laid out as an edit prompt with that image, so the ``<img_i>`` states are aligned in the context the
editor uses them in; ShapesWorld's tiny LLM needs that, see ``smartedit.shapes.world``. With an ``instruction``
too, the edit prompt shows the instruction and the states are aligned to the caption, e.g. the instruction said
plainly: "remove the red circle" for "remove the circle on the left").
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

TASKS = ("edit", "perception", "reasoning", "chat", "caption")
EDIT_TASKS = ("edit", "perception", "reasoning")
COLUMNS = ("id", "dataset", "task", "instruction", "caption", "conversation", "source_image", "target_image",
           "mask_image")
"""The columns every shard holds."""
OPTIONAL_COLUMNS = ("reply",)
"""Columns written since the schema began; a shard without them reads them as null."""


def arrow_schema():
    import pyarrow as pa

    return pa.schema([
        ("id", pa.string()), ("dataset", pa.string()), ("task", pa.string()), ("instruction", pa.string()),
        ("caption", pa.string()), ("conversation", pa.string()), ("source_image", pa.binary()),
        ("target_image", pa.binary()), ("mask_image", pa.binary()), ("reply", pa.string()),
    ])


@dataclass
class Sample:
    """One training sample in the uniform schema (images as encoded bytes)."""

    id: str
    dataset: str
    task: str
    instruction: str | None = None
    caption: str | None = None
    conversation: list[list[str]] | None = None
    source_image: bytes | None = None
    target_image: bytes | None = None
    mask_image: bytes | None = None
    reply: str | None = None
    """What the assistant writes before its ``<img_i>`` tokens (e.g. "remove the red circle" for "remove the circle
    on the left"): learned with the LM loss, and the ``<img_i>`` states read it. None: a stock edit answer."""
    extra: dict = field(default_factory=dict, repr=False)

    def problems(self) -> list[str]:
        """What is wrong with this sample (empty when it is valid)."""
        p = []
        if self.task not in TASKS:
            p.append(f"task must be one of {list(TASKS)}, got {self.task!r}")
            return p
        if self.task in EDIT_TASKS:
            if not (self.instruction and self.instruction.strip()):
                p.append("missing instruction")
            if self.source_image is None:
                p.append("missing source_image")
            if self.target_image is None:
                p.append("missing target_image")
        elif self.task == "chat":
            if not self.conversation:
                p.append("missing conversation")
        elif self.task == "caption":
            if not (self.caption and self.caption.strip()):
                p.append("missing caption")
            if self.instruction is not None and self.source_image is None:
                p.append("a caption sample with an instruction needs the source_image the instruction is about")
        if self.reply is not None:
            if not (isinstance(self.reply, str) and self.reply.strip()):
                p.append("reply must be null or a non-empty string")
            elif "<img" in self.reply or "<im_" in self.reply:
                p.append("reply must not hold image tokens (the <img_i> tokens are added after it)")
            if self.task == "chat" or (self.task == "caption" and self.source_image is None):
                p.append("only edit prompts have a reply before their <img_i> tokens (an edit task, or a caption "
                         "with its source_image)")
        return p

    def to_row(self) -> dict:
        row = {k: getattr(self, k) for k in COLUMNS + OPTIONAL_COLUMNS}
        row["conversation"] = None if self.conversation is None else json.dumps(self.conversation)
        return row

    @classmethod
    def from_row(cls, row: dict) -> "Sample":
        conv = row.get("conversation")
        return cls(**{k: row.get(k) for k in COLUMNS + OPTIONAL_COLUMNS if k != "conversation"},
                   conversation=None if conv is None else json.loads(conv))


def encode_png(image) -> bytes:
    """PIL image → PNG bytes."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def decode_image(data: bytes, mode: str = "RGB", max_pixels: int | None = None):
    """Encoded bytes → PIL image in ``mode`` (RGBA composited on white for RGB). The size is checked against the
    pixel budget (:func:`smartedit.image_io.pixel_budget`) from the header, before decoding; a bad image raises
    :class:`smartedit.image_io.ImageInputError` (its ``reason``: empty file, not an image, truncated, too large)."""
    from PIL import Image

    from ..image_io import open_image

    image = open_image(data, "image", max_pixels)
    if mode == "RGB" and image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(canvas, rgba)
    return image.convert(mode)
