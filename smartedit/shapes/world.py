"""ShapesWorld: a procedural world of flat shapes with EXACT ground-truth edits, SmartEdit's laptop-scale stand-in
for real photographs.

A scene is a background (plain or textured) and 2–5 non-overlapping shapes, each with a kind, a colour, a size and
a position. Every edit is a change of that symbolic scene, re-rendered, so the target image and the edit mask are
exact. Edit families mirror SmartEdit's data:

* simple edits (recolour / remove / replace a shape named unambiguously) — the InstructPix2Pix / MagicBrush analogue;
* perception edits ("mark the pixels of the triangle in red": 0.5·pixel + 0.5·colour inside the shape) — the
  segmentation-as-editing analogue;
* understanding edits in Reason-Edit's categories: left/right, relative size, colour, multiple objects, and a
  mirror analogue (a shape and its reflection across a vertical mirror line; edit "the reflection");
* reasoning edits whose target can only be found with knowledge the LLM must hold ("remove the shape with three
  corners", "paint the shape that can roll the colour of grass"); the knowledge itself is taught as chat Q&A.

Plus captions (stage 1) and VQA chat (the LLaVA-Instruct analogue). Every random choice derives from
``(seed, index)`` through :func:`smartedit.data.collate.sample_rng`, so any item can be regenerated alone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from PIL import Image, ImageDraw

from ..data.collate import sample_rng
from ..data.schema import Sample, encode_png
from ..eval.reason_edit import CATEGORIES, UNDERSTANDING

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 190), "orange": (245, 140, 30), "white": (250, 250, 250), "black": (20, 20, 20),
}
KINDS = ("circle", "square", "triangle", "star", "hexagon", "cross")
SIZES = {"small": 0.085, "medium": 0.12, "large": 0.16}  # radius as a fraction of the canvas side

# World knowledge the LLM must hold for the reasoning edits (taught through chat Q&A, never by the edit data).
KIND_FACTS: dict[str, list[str]] = {
    "circle": ["the shape that can roll", "the shape with no corners", "the shape of a wheel"],
    "square": ["the shape with four equal sides", "the shape of a chessboard cell"],
    "triangle": ["the shape with three corners", "the shape of a slice of pizza"],
    "star": ["the shape that twinkles in the night sky", "the shape with five points"],
    "hexagon": ["the shape of a honeycomb cell", "the shape with six sides"],
    "cross": ["the shape of a plus sign", "the shape on a first-aid kit"],
}
COLOUR_FACTS: dict[str, list[str]] = {
    "red": ["the colour of blood", "the colour of a ripe tomato"],
    "green": ["the colour of grass", "the colour of a frog"],
    "blue": ["the colour of the clear sky", "the colour of the deep sea"],
    "yellow": ["the colour of a banana", "the colour of the sun"],
    "purple": ["the colour of an aubergine", "the colour of lavender"],
    "orange": ["the colour of a carrot", "the colour of a pumpkin"],
    "white": ["the colour of snow", "the colour of milk"],
    "black": ["the colour of coal", "the colour of the night"],
}


@dataclass(frozen=True)
class Shape:
    kind: str
    colour: str
    size: str
    x: float
    """centre, as a fraction of the canvas width"""
    y: float

    def radius(self, side: int) -> float:
        return SIZES[self.size] * side

    def phrase(self, with_size: bool = False) -> str:
        return f"{self.size + ' ' if with_size else ''}{self.colour} {self.kind}"


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]
    background: tuple[int, int, int] = (235, 230, 220)
    texture: str = "plain"
    """``plain``, ``stripes`` or ``checker`` (a faint pattern over the background colour)."""
    mirror: bool = False
    """Draw a vertical mirror line at the centre (the reflection scenes of the 3-Mirror category)."""


def _polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if kind == "square":
        a = r * 0.85
        return [(cx - a, cy - a), (cx + a, cy - a), (cx + a, cy + a), (cx - a, cy + a)]
    if kind == "triangle":
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in (-90, 30, 150)]
    if kind == "hexagon":
        return [(cx + r * math.cos(math.radians(a)), cy + r * math.sin(math.radians(a))) for a in range(0, 360, 60)]
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r if i % 2 == 0 else r * 0.45
            ang = math.radians(-90 + 36 * i)
            pts.append((cx + rad * math.cos(ang), cy + rad * math.sin(ang)))
        return pts
    if kind == "cross":
        a, b = r, r * 0.35
        return [(cx - b, cy - a), (cx + b, cy - a), (cx + b, cy - b), (cx + a, cy - b), (cx + a, cy + b),
                (cx + b, cy + b), (cx + b, cy + a), (cx - b, cy + a), (cx - b, cy + b), (cx - a, cy + b),
                (cx - a, cy - b), (cx - b, cy - b)]
    raise ValueError(f"unknown shape kind {kind!r}")


def shape_mask(shape: Shape, side: int) -> np.ndarray:
    """Boolean [side, side] pixels of ``shape`` (no antialiasing, so masks are exact)."""
    mask = Image.new("1", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    cx, cy, r = shape.x * side, shape.y * side, shape.radius(side)
    if shape.kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=1)
    else:
        draw.polygon(_polygon(shape.kind, cx, cy, r), fill=1)
    return np.asarray(mask, dtype=bool)


def render(scene: Scene, side: int = 64) -> np.ndarray:
    """The scene as uint8 [side, side, 3]; later shapes are drawn over earlier ones."""
    img = np.empty((side, side, 3), dtype=np.uint8)
    img[:] = scene.background
    if scene.texture != "plain":
        yy, xx = np.mgrid[0:side, 0:side]
        period = max(4, side // 8)
        pattern = ((xx // period) % 2 == 0) if scene.texture == "stripes" else (((xx // period) + (yy // period)) % 2 == 0)
        img[pattern] = np.clip(np.asarray(scene.background, dtype=int) - 18, 0, 255)
    if scene.mirror:
        c = side // 2
        img[:, c - 1:c + 1] = (120, 120, 130)
    for shape in scene.shapes:
        img[shape_mask(shape, side)] = COLOURS[shape.colour]
    return img


PATCH_LABELS = {"kind": len(KINDS) + 1, "colour": len(COLOURS) + 1, "size": len(SIZES) + 1, "rank": 8}
"""What :func:`patch_labels` tells about each patch, with its number of classes (0: no shape)."""


def patch_labels(scene: Scene, side: int, grid: int, cover: float = 0.25) -> np.ndarray:
    """int64 [len(PATCH_LABELS), grid²]: per patch of a ``grid``×``grid`` split of the ``side``-px render, the kind,
    colour, size and rank from the left (1-based) of the shape covering at least ``cover`` of it (a later shape over
    an earlier one, as :func:`render` draws them), 0 for none: what a vision tower that sees the scene can tell."""
    if side % grid:
        raise ValueError(f"side {side} is not a multiple of the patch grid {grid}")
    cell = side // grid
    order = sorted(range(len(scene.shapes)), key=lambda k: scene.shapes[k].x)
    labels = np.zeros((len(PATCH_LABELS), grid, grid), dtype=np.int64)
    for k, shape in enumerate(scene.shapes):
        covered = shape_mask(shape, side).reshape(grid, cell, grid, cell).mean(axis=(1, 3)) >= cover  # [g, g]
        labels[:, covered] = np.array([KINDS.index(shape.kind) + 1, list(COLOURS).index(shape.colour) + 1,
                                       list(SIZES).index(shape.size) + 1, order.index(k) + 1])[:, None]
    return labels.reshape(len(PATCH_LABELS), grid * grid)


# ---- scene sampling ------------------------------------------------------------------------------------------

def _place(rng, shapes: list[Shape], kind: str, colour: str, size: str, x_range=(0.12, 0.88),
           tries: int = 200) -> Shape | None:
    r = SIZES[size]
    for _ in range(tries):
        x = float(rng.uniform(max(x_range[0], r + 0.02), min(x_range[1], 1 - r - 0.02)))
        y = float(rng.uniform(r + 0.02, 1 - r - 0.02))
        if all(math.hypot(x - s.x, y - s.y) > r + SIZES[s.size] + 0.03 for s in shapes):
            return Shape(kind, colour, size, x, y)
    return None


def random_scene(rng, n_min: int = 2, n_max: int = 5, kinds=KINDS, colours=tuple(COLOURS)) -> Scene:
    """2–5 non-overlapping shapes with distinct (kind, colour) pairs on a plain or textured background."""
    n = int(rng.integers(n_min, n_max + 1))
    shapes: list[Shape] = []
    used: set[tuple[str, str]] = set()
    while len(shapes) < n:
        kind, colour = str(rng.choice(kinds)), str(rng.choice(colours))
        if (kind, colour) in used:
            continue
        s = _place(rng, shapes, kind, colour, str(rng.choice(list(SIZES))))
        if s is None:
            break
        shapes.append(s)
        used.add((kind, colour))
    bg = tuple(int(v) for v in rng.integers(200, 246, size=3))
    texture = str(rng.choice(["plain", "plain", "stripes", "checker"]))
    return Scene(tuple(shapes), bg, texture)


# ---- edits ------------------------------------------------------------------------------------------------

@dataclass
class Edit:
    """One editing example with exact ground truth."""

    instruction: str
    source: Scene
    target: Scene | None
    """None for perception edits (the target is a blend, not a scene)."""
    changed: tuple[int, ...]
    """Indices (into ``source.shapes``) of the shapes the edit touches."""
    family: str
    """``simple``, ``perception``, ``understanding`` or ``reasoning``."""
    category: str | None = None
    """Reason-Edit category for understanding / reasoning edits."""
    phrase: str = ""
    """What the edited region should show (the ``CLIP:`` phrase of Reason-Edit)."""
    mark_colour: str | None = None

    @property
    def explicit(self) -> str:
        """The instruction said plainly, as a simple edit says it: the one shape it changes named by its colour and
        kind ("make the circle on the left blue" in a scene whose left circle is red → "make the red circle blue",
        "paint the shape that can roll the colour of grass" → "make the red circle green"), which
        :func:`example_edit` reads back to the same target; by size, colour and kind where two shapes share colour
        and kind ("remove the smaller star" → "remove the small red star"). Edits of several shapes, of a shape
        only its reflection tells apart, and perception edits keep their instruction."""
        if self.target is None or len(self.changed) != 1:
            return self.instruction
        (i,) = self.changed
        shape, words = self.source.shapes[i], plain_words(self.source, i)
        if words is None:
            return self.instruction
        name = f"the {words} {shape.kind}"
        if len(self.target.shapes) < len(self.source.shapes):
            return f"remove {name}"
        new = self.target.shapes[i]
        if new.kind != shape.kind:
            return f"replace {name} with a {new.kind}"
        return f"make {name} {new.colour}"

    def images(self, side: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(source uint8 HxWx3, target uint8 HxWx3, edit mask bool HxW)."""
        src = render(self.source, side)
        mask = np.zeros((side, side), dtype=bool)
        for i in self.changed:
            mask |= shape_mask(self.source.shapes[i], side)
        if self.target is None:  # perception: 0.5·pixel + 0.5·colour inside the mask (halves rounded up, as
            colour = np.asarray(COLOURS[self.mark_colour], dtype=np.int32)  # smartedit.data.datasets.perception does)
            tgt = src.astype(np.int32)
            tgt[mask] = (tgt[mask] + colour + 1) // 2
            return src, tgt.astype(np.uint8), mask
        tgt = render(self.target, side)
        for shape in self.target.shapes:  # new or recoloured shapes also belong to the edit region
            if shape not in self.source.shapes:
                mask |= shape_mask(shape, side)
        return src, tgt, mask


def _with(scene: Scene, index: int, shape: Shape | None) -> Scene:
    shapes = list(scene.shapes)
    if shape is None:
        shapes.pop(index)
    else:
        shapes[index] = shape
    return replace(scene, shapes=tuple(shapes))


def _op(rng, scene: Scene, index: int, ref: str) -> tuple[str, Scene, str]:
    """A recolour / remove / replace operation on shape ``index`` named by ``ref``: (instruction, target, phrase)."""
    shape = scene.shapes[index]
    op = str(rng.choice(["recolour", "remove", "replace"]))
    if op == "remove":
        return f"remove {ref}", _with(scene, index, None), "background"
    if op == "recolour":
        colour = str(rng.choice([c for c in COLOURS if c != shape.colour]))
        return (f"make {ref} {colour}", _with(scene, index, replace(shape, colour=colour)),
                f"{colour} {shape.kind}")
    kind = str(rng.choice([k for k in KINDS if k != shape.kind]))
    return (f"replace {ref} with a {kind}", _with(scene, index, replace(shape, kind=kind)),
            f"{shape.colour} {kind}")


def simple_edit(rng) -> Edit:
    scene = random_scene(rng)
    i = int(rng.integers(len(scene.shapes)))
    instruction, target, phrase = _op(rng, scene, i, f"the {scene.shapes[i].phrase()}")
    return Edit(instruction, scene, target, (i,), "simple", phrase=phrase)


EXAMPLE_SCENE = Scene((Shape("circle", "red", "large", 0.27, 0.42), Shape("square", "blue", "large", 0.73, 0.33),
                       Shape("triangle", "green", "medium", 0.62, 0.76)))
"""The scene of ``checkpoints/examples/shapes.png`` (``render(EXAMPLE_SCENE, 128)``), the README's example input."""


def example_edit(instruction: str, scene: Scene = EXAMPLE_SCENE) -> Edit:
    """The exact ground truth of a simple edit (``remove the red circle``, ``make the blue square yellow``,
    ``replace the green triangle with a star``) of ``scene``: what the shipped model's example output is checked
    against."""
    words = instruction.strip().lower().split()
    found = [i for i, sh in enumerate(scene.shapes) if f"the {sh.colour} {sh.kind}" in " ".join(words)]
    if len(found) != 1:
        raise ValueError(f"{instruction!r} must name exactly one shape of the scene as 'the <colour> <kind>' "
                         f"(shapes: {', '.join(sh.phrase() for sh in scene.shapes)})")
    i = found[0]
    shape = scene.shapes[i]
    if words[0] == "remove":
        return Edit(instruction, scene, _with(scene, i, None), (i,), "simple", phrase="background")
    if words[0] == "make" and words[-1] in COLOURS:
        return Edit(instruction, scene, _with(scene, i, replace(shape, colour=words[-1])), (i,), "simple",
                    phrase=f"{words[-1]} {shape.kind}")
    if words[0] == "replace" and words[-1] in KINDS:
        return Edit(instruction, scene, _with(scene, i, replace(shape, kind=words[-1])), (i,), "simple",
                    phrase=f"{shape.colour} {words[-1]}")
    raise ValueError(f"{instruction!r} is not a simple edit: use 'remove the <colour> <kind>', "
                     f"'make the <colour> <kind> <colour>' or 'replace the <colour> <kind> with a <kind>'")


MARK_TEMPLATES = ("mark the pixels of the {obj} in {colour}", "highlight the {obj} with {colour}",
                  "paint a {colour} overlay on the {obj} and leave the rest unchanged")


def perception_edit(rng) -> Edit:
    scene = random_scene(rng)
    i = int(rng.integers(len(scene.shapes)))
    colour = str(rng.choice([c for c in COLOURS if c != scene.shapes[i].colour]))
    text = str(rng.choice(MARK_TEMPLATES)).format(obj=scene.shapes[i].phrase(), colour=colour)
    return Edit(text, scene, None, (i,), "perception", phrase=f"{colour} {scene.shapes[i].kind}", mark_colour=colour)


def _with_twin(rng, scene: Scene) -> Scene | None:
    """The scene plus a shape of its first shape's kind and size in a colour no shape of that kind has (None: no room
    for it), so that "the <colour> <kind>" names one shape."""
    shapes = scene.shapes
    taken = {s.colour for s in shapes if s.kind == shapes[0].kind}
    other = _place(rng, list(shapes), shapes[0].kind, str(rng.choice([c for c in COLOURS if c not in taken])),
                   shapes[0].size)
    return None if other is None else replace(scene, shapes=shapes + (other,))


def _left_right(rng, scene: Scene):
    """Two shapes of the same kind; refer to one by its side."""
    kind = scene.shapes[0].kind
    scene = _with_twin(rng, scene)
    if scene is None:
        return None
    same = [k for k, s in enumerate(scene.shapes) if s.kind == kind]
    side = str(rng.choice(["left", "right"]))
    pick = min(same, key=lambda k: scene.shapes[k].x) if side == "left" else max(
        same, key=lambda k: scene.shapes[k].x)
    return scene, pick, f"the {kind} on the {side}"


def _relative_size(rng, scene: Scene):
    """Two or more shapes of one kind and different sizes; refer to the smaller or larger one."""
    shapes = scene.shapes
    kind = shapes[0].kind
    sizes = [s for s in SIZES if s != shapes[0].size]
    other = _place(rng, list(shapes), kind, shapes[0].colour, str(rng.choice(sizes)))
    if other is None:
        return None
    scene = replace(scene, shapes=shapes + (other,))
    same = [k for k, s in enumerate(scene.shapes) if s.kind == kind]
    word = str(rng.choice(["smaller", "larger"]))
    ranked = sorted(SIZES[scene.shapes[k].size] for k in same)
    if (word == "smaller" and ranked[0] == ranked[1]) or (word == "larger" and ranked[-1] == ranked[-2]):
        return None  # ambiguous: two shapes share the extreme size
    key = lambda k: SIZES[scene.shapes[k].size]  # noqa: E731
    pick = min(same, key=key) if word == "smaller" else max(same, key=key)
    return scene, pick, f"the {word} {kind}"


def _mirror(rng, scene: Scene):
    """A shape on the left and its reflection on the right of the mirror line; refer to one of the two."""
    base = _place(rng, [], str(rng.choice(KINDS)), str(rng.choice(list(COLOURS))), "medium",
                  x_range=(0.08, 0.47 - SIZES["medium"]))  # wholly left of the mirror line
    if base is None:
        return None
    mirrored = replace(base, x=1.0 - base.x)
    extra = _place(rng, [base, mirrored], str(rng.choice(KINDS)), str(rng.choice(list(COLOURS))), "small")
    items = (base, mirrored) + ((extra,) if extra is not None and (extra.kind, extra.colour) !=
                                (base.kind, base.colour) else ())
    scene = replace(scene, shapes=items, mirror=True)
    pick = int(rng.integers(2))
    return scene, pick, f"the {base.kind} in the mirror" if pick == 1 else f"the {base.kind} in front of the mirror"


def _colour(rng, scene: Scene):
    """Two shapes of one kind and different colours; refer to one by its colour."""
    kind = scene.shapes[0].kind
    scene = _with_twin(rng, scene)
    if scene is None:
        return None
    pick = int(rng.choice([0, len(scene.shapes) - 1]))
    return scene, pick, f"the {scene.shapes[pick].colour} {kind}"


def _multiple_objects(rng, scene: Scene):
    """Every shape of one kind (two or three of them) is removed or recoloured: a whole :class:`Edit`."""
    shapes = scene.shapes
    kind = shapes[0].kind
    added = []
    for _ in range(int(rng.integers(1, 3))):
        s = _place(rng, list(shapes) + added, kind,
                   str(rng.choice([c for c in COLOURS if c != shapes[0].colour])), str(rng.choice(list(SIZES))))
        if s is not None:
            added.append(s)
    if not added:
        return None
    category = "5-Multiple-Objects"
    scene = replace(scene, shapes=shapes + tuple(added))
    picks = tuple(k for k, s in enumerate(scene.shapes) if s.kind == kind)
    if str(rng.choice(["remove", "recolour"])) == "remove":
        target = replace(scene, shapes=tuple(s for k, s in enumerate(scene.shapes) if k not in picks))
        return Edit(f"remove all the {kind}s", scene, target, picks, "understanding", category, "background")
    colour = str(rng.choice([c for c in COLOURS if all(scene.shapes[k].colour != c for k in picks)]))
    target = replace(scene, shapes=tuple(replace(s, colour=colour) if k in picks else s
                                         for k, s in enumerate(scene.shapes)))
    return Edit(f"make every {kind} {colour}", scene, target, picks, "understanding", category, f"{colour} {kind}s")


_UNDERSTANDING = {"1-Left-Right": _left_right, "2-Relative-Size": _relative_size, "3-Mirror": _mirror,
                  "4-Color": _colour, "5-Multiple-Objects": _multiple_objects}
"""Per category: (rng, a random scene) → None (draw another scene), (scene, target index, reference) or an Edit."""


def understanding_edit(rng, category: str) -> Edit:
    """An edit whose target is identified by position, relative size, colour, count or reflection."""
    if category not in _UNDERSTANDING:
        raise ValueError(f"unknown understanding category {category!r}")
    for _ in range(100):
        scene = random_scene(rng, 2, 4)
        found = _UNDERSTANDING[category](rng, scene)
        if found is None:
            continue
        if isinstance(found, Edit):
            return found
        scene, pick, ref = found
        instruction, target, phrase = _op(rng, scene, pick, ref)
        return Edit(instruction, scene, target, (pick,), "understanding", category, phrase)
    raise RuntimeError(f"could not place a {category} scene")


def reasoning_edit(rng, facts: dict[str, list[str]] | None = None) -> Edit:
    """The target shape is named only through a fact about its kind; a recolour may name the colour by a fact."""
    facts = facts or KIND_FACTS
    for _ in range(100):
        scene = random_scene(rng, 2, 4)
        kinds = [s.kind for s in scene.shapes]
        unique = [k for k, s in enumerate(scene.shapes) if kinds.count(s.kind) == 1 and facts.get(s.kind)]
        if unique:
            break
    else:
        raise RuntimeError("could not sample a scene with a uniquely identifiable shape")
    i = int(rng.choice(unique))
    shape = scene.shapes[i]
    ref = str(rng.choice(facts[shape.kind]))
    op = str(rng.choice(["remove", "recolour"]))
    if op == "remove":
        return Edit(f"remove {ref}", scene, _with(scene, i, None), (i,), "reasoning", "6-Reasoning", "background")
    colour = str(rng.choice([c for c in COLOURS if c != shape.colour]))
    colour_ref = str(rng.choice(COLOUR_FACTS[colour])) if rng.random() < 0.5 else colour
    return Edit(f"paint {ref} {colour_ref}", scene, _with(scene, i, replace(shape, colour=colour)), (i,),
                "reasoning", "6-Reasoning", f"{colour} {shape.kind}")


FACT_SPLIT_SEED = 0
"""The seed of the world's one train / held-out split of the reasoning facts. It is NOT a sample stream's seed: a
source such as ``shapes:reasoning:3000:7`` draws other samples, never held-out facts."""


def held_out_facts(split_seed: int = FACT_SPLIT_SEED,
                   fraction: float = 0.25) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Split (kind, fact) pairs into train and held-out sets: held-out reasoning edits use facts whose
    edit-instruction form was never trained on (the fact itself is still taught through chat). Every training
    family and the test set use the default split, whatever their sample seeds."""
    rng = sample_rng(split_seed, 0, 0, stream=7)
    train: dict[str, list[str]] = {}
    test: dict[str, list[str]] = {}
    for kind, phrases in KIND_FACTS.items():
        order = list(rng.permutation(len(phrases)))
        n_test = max(1, int(round(fraction * len(phrases))))
        test[kind] = [phrases[j] for j in order[:n_test]]
        train[kind] = [phrases[j] for j in order[n_test:]] or test[kind]
    return train, test


def caption(scene: Scene) -> str:
    """A caption of the scene, left to right."""
    ordered = sorted(scene.shapes, key=lambda s: s.x)
    parts = [f"a {s.size} {s.colour} {s.kind}" for s in ordered]
    text = ", ".join(parts[:-1]) + f" and {parts[-1]}" if len(parts) > 1 else parts[0]
    return f"{text} on a {scene.texture if scene.texture != 'plain' else 'plain'} background"


def knowledge_chat(rng) -> list[list[str]]:
    """A Q&A turn teaching one fact (kind or colour) — the knowledge the reasoning edits need."""
    if rng.random() < 0.6:
        kind = str(rng.choice(KINDS))
        fact = str(rng.choice(KIND_FACTS[kind]))
        return [[f"Which shape is {fact}?", f"It is the {kind}."]]
    colour = str(rng.choice(list(COLOURS)))
    fact = str(rng.choice(COLOUR_FACTS[colour]))
    return [[f"What is {fact}?", f"It is {colour}."]]


def vqa_chat(rng, scene: Scene) -> list[list[str]]:
    """Questions about the scene (the LLaVA-Instruct analogue)."""
    shapes = sorted(scene.shapes, key=lambda s: s.x)
    q = int(rng.integers(3))
    if q == 0:
        return [["How many shapes are in the image?", f"There are {len(shapes)} shapes."]]
    if q == 1:
        return [["Which shape is on the far left?", f"The {shapes[0].colour} {shapes[0].kind}."]]
    s = shapes[int(rng.integers(len(shapes)))]
    return [_named_colour(s)] if sum(t.kind == s.kind for t in shapes) == 1 else \
        [["Describe the image.", caption(scene).capitalize() + "."]]


SKILLS = ("left-right", "relative-size", "mirror", "colour-reference", "count", "named-colour")
"""What the understanding edits ask of the MLLM, one question each (:func:`skill_chat`): locate the shape a
Left-Right / Relative-Size / Mirror / Color reference names, count a kind (Multiple-Objects), and say a named
shape's colour. The knowledge the reasoning edits need is :func:`knowledge_chat`.

Every answer puts the word that answers right after the words that name the shape ("The left circle red.",
"The circle red third.", "The square orange.", "The number of star 1."): at that position the LLM's own token says
which shape to look up. One token
further ("The square is orange.") the 4-layer LLaVA-tiny must first learn to carry the kind along, and stays at
chance between the two shapes of a two-shape scene for 1500 steps; right after the kind it answers 93 % after 1000
(docs/training.md)."""
ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh")


def plain_words(scene: Scene, index: int) -> str | None:
    """The words that name shape ``index`` of ``scene`` before its kind when said plainly: its colour ("red") if no
    other shape of its kind has it, else its size and colour ("small red") if those tell it apart; None if neither
    does (:meth:`Edit.explicit`, :func:`skill_chat`)."""
    shape = scene.shapes[index]
    twins = [s for s in scene.shapes if (s.kind, s.colour) == (shape.kind, shape.colour)]
    if len(twins) == 1:
        return shape.colour
    if sum(s.size == shape.size for s in twins) == 1:
        return f"{shape.size} {shape.colour}"
    return None


def _short(reference: str) -> str:
    """``reference`` in two words, the one that tells the shape apart best last ("the circle on the left" → "left
    circle", "the circle in the mirror" → "mirrored circle", "the smaller star" → "smaller star", but "the red
    circle" → "circle red": of two circles only one is red, and often no other shape is)."""
    words = reference.split()
    kind = next(w for w in words if w in KINDS)
    for ending, modifier in ((" in the mirror", "mirrored"), (" in front of the mirror", "front"),
                             (" on the left", "left"), (" on the right", "right")):
        if reference.endswith(ending):
            return f"{modifier} {kind}"
    return f"{kind} {words[1]}" if words[1] in COLOURS else f"{words[1]} {kind}"


def _where(scene: Scene, index: int, reference: str) -> list[str]:
    """"Where is <reference>?" and which shape ``index`` is, right after the shape's kind (see :data:`SKILLS` for
    why): for a reference by side or size, the words the plain wording of an edit (:meth:`Edit.explicit`) names it by
    beyond its kind ("The left circle red.", "The smaller star small red."), so that the LLM learns to say what an
    edit's Q-Former target needs; for a reference by colour or by the mirror, which the plain wording keeps, or a
    shape no colour and size tell apart, its rank from the left among all shapes ("The mirrored circle second.")."""
    words = plain_words(scene, index)
    if words is not None and "mirror" not in reference and reference.split()[1] not in COLOURS:
        return [f"Where is {reference}?", f"The {_short(reference)} {words}."]
    rank = sorted(range(len(scene.shapes)), key=lambda k: scene.shapes[k].x).index(index)
    return [f"Where is {reference}?", f"The {_short(reference)} {ORDINALS[rank]}."]


def _count(scene: Scene, kind: str) -> list[str]:
    return [f"How many {kind}s are there?", f"The number of {kind} {sum(s.kind == kind for s in scene.shapes)}."]


def _named_colour(shape: Shape) -> list[str]:
    return [f"What colour is the {shape.kind}?", f"The {shape.kind} {shape.colour}."]


def scene_questions(scene: Scene) -> list[list[str]]:
    """Every skill question (:data:`SKILLS`) that ``scene`` answers unambiguously, with its answer: where the shape
    in / in front of the mirror is, where the shape of a kind on the left / right, of a colour, or the smaller /
    larger one is, how many there are of each kind, and the colour of each kind seen once."""
    shapes = scene.shapes
    out = []
    if scene.mirror:
        kind = shapes[0].kind
        out += [_where(scene, 1, f"the {kind} in the mirror"), _where(scene, 0, f"the {kind} in front of the mirror")]
    for kind in sorted({s.kind for s in shapes}):
        same = [k for k, s in enumerate(shapes) if s.kind == kind]
        out.append(_count(scene, kind))
        if len(same) == 1:
            out.append(_named_colour(shapes[same[0]]))
            continue
        if scene.mirror:
            continue
        by_x = sorted(same, key=lambda k: shapes[k].x)
        out += [_where(scene, by_x[0], f"the {kind} on the left"), _where(scene, by_x[-1], f"the {kind} on the right")]
        out += [_where(scene, k, f"the {shapes[k].colour} {kind}") for k in same
                if sum(shapes[j].colour == shapes[k].colour for j in same) == 1]
        by_size = sorted(same, key=lambda k: SIZES[shapes[k].size])
        radii = [SIZES[shapes[k].size] for k in by_size]
        if radii[0] < radii[1]:
            out.append(_where(scene, by_size[0], f"the smaller {kind}"))
        if radii[-1] > radii[-2]:
            out.append(_where(scene, by_size[-1], f"the larger {kind}"))
    return out


def skill_chat(rng, skill: str, turns: int = 1) -> tuple[Scene, list[list[str]]] | None:
    """A scene and a question-answer turn exercising ``skill`` (one of :data:`SKILLS`); None: draw again. The
    scenes are built by the understanding edits' own constructors, so a question names a shape exactly as an edit
    instruction of that category does, and the answer says where it is. ``turns`` > 1: up to ``turns`` - 1 more
    questions about the same scene (:func:`scene_questions`), as a LLaVA-Instruct conversation asks several, so that
    one image is asked about different shapes and only reading the question tells the answers apart."""
    built = _skill_turn(rng, skill)
    if built is None or turns <= 1:
        return built
    scene, first = built
    others = [q for q in scene_questions(scene) if q[0] != first[0][0]]
    return scene, first + [others[j] for j in rng.permutation(len(others))[:turns - 1]]


def _skill_turn(rng, skill: str) -> tuple[Scene, list[list[str]]] | None:
    scene = random_scene(rng, n_max=4)
    if skill in ("left-right", "relative-size", "mirror", "colour-reference"):
        built = _UNDERSTANDING[{"left-right": "1-Left-Right", "relative-size": "2-Relative-Size",
                                "mirror": "3-Mirror", "colour-reference": "4-Color"}[skill]](rng, scene)
        if built is None:
            return None
        scene, pick, reference = built
        return scene, [_where(scene, pick, reference)]
    if skill == "count":
        return scene, [_count(scene, str(rng.choice(sorted({s.kind for s in scene.shapes}))))]
    if skill == "named-colour":
        unique = [s for s in scene.shapes if sum(t.kind == s.kind for t in scene.shapes) == 1]
        if not unique:
            return None
        return scene, [_named_colour(unique[int(rng.integers(len(unique)))])]
    raise ValueError(f"unknown skill {skill!r}; choose one of {SKILLS}")


# ---- datasets ----------------------------------------------------------------------------------------------

def png_bytes(array: np.ndarray) -> bytes:
    """A uint8 [H, W, 3] (or [H, W]) array as encoded PNG bytes, the schema's image encoding."""
    return encode_png(Image.fromarray(array))


def edit_for(family: str, rng, facts: dict[str, list[str]]) -> Edit:
    """One edit of ``family`` (``simple``, ``perception``, ``understanding`` or ``reasoning``, or one understanding
    category alone such as ``1-Left-Right``) drawn from ``rng``; reasoning edits use ``facts`` (see
    :func:`held_out_facts`)."""
    if family in UNDERSTANDING:
        return understanding_edit(rng, family)
    if family == "simple":
        return simple_edit(rng)
    if family == "perception":
        return perception_edit(rng)
    if family == "reasoning":
        return reasoning_edit(rng, facts)
    if family == "understanding":
        return understanding_edit(rng, str(rng.choice(UNDERSTANDING)))
    raise ValueError(f"unknown edit family {family!r}")


TRAIN_FAMILIES = {
    # family → (dataset name, sample task)
    "simple": ("shapes_simple", "edit"),
    "perception": ("shapes_perception", "perception"),
    "understanding": ("shapes_understanding", "reasoning"),
    "reasoning": ("shapes_reasoning", "reasoning"),
}
EDIT_KINDS = (*TRAIN_FAMILIES, *UNDERSTANDING)
"""What :func:`edit_for` draws: an edit family, or one understanding category alone."""


def training_samples(family: str, count: int, seed: int = 0, side: int = 64, reply: bool = False):
    """``count`` uniform-schema samples of one ShapesWorld family (``simple``, ``perception``, ``understanding``,
    ``reasoning``, ``caption``, ``chat``, ``instruction`` — an edit instruction of any family as a stage-1 caption;
    ``grounded_instruction`` — the same with its scene, laid out as an edit prompt; ``explicit_instruction`` — that
    prompt aligned to the instruction said plainly, :attr:`Edit.explicit`). The three stage-1 families draw the edit
    family uniformly; ``FAMILY/KIND`` (e.g. ``explicit_instruction/1-Left-Right``) draws edits of one kind alone, an
    edit family or an understanding category (:func:`edit_for`).
    ``reply``: every edit prompt's reply writes the instruction said plainly before the ``<img_i>`` tokens
    (:attr:`smartedit.data.schema.Sample.reply`), so the MLLM learns to work it out in words the ``<img_i>`` states
    then read. Sample i is generated from ``(seed, 0, i)`` alone; reasoning uses only
    the training facts (see :func:`held_out_facts`)."""
    train_facts, _ = held_out_facts()
    family, _, only = family.partition("/")
    stage1 = ("instruction", "grounded_instruction", "explicit_instruction")
    if only and (family not in stage1 or only not in EDIT_KINDS):
        raise ValueError(f"ShapesWorld family {family}/{only}: only {', '.join(stage1)} take an edit kind after '/', "
                         f"one of {', '.join(EDIT_KINDS)}")
    if reply and family not in (*TRAIN_FAMILIES, *stage1[1:]):
        raise ValueError(f"ShapesWorld family {family}: only edit prompts with their scene write a reply "
                         f"({', '.join((*TRAIN_FAMILIES, *stage1[1:]))})")
    for i in range(count):
        rng = sample_rng(seed, 0, i, stream=10)
        if family in TRAIN_FAMILIES:
            name, task = TRAIN_FAMILIES[family]
            edit = edit_for(family, rng, train_facts)
            src, tgt, mask = edit.images(side)
            yield Sample(f"{name}/{i}", name, task, instruction=edit.instruction, source_image=png_bytes(src),
                         target_image=png_bytes(tgt), mask_image=png_bytes((mask * 255).astype(np.uint8)),
                         reply=edit.explicit if reply else None)
        elif family in ("instruction", "grounded_instruction", "explicit_instruction"):
            # stage 1 of ShapesWorld: align to the CLIP text encoder of IP2P-tiny, which reads instructions;
            # grounded: in the edit prompt with the scene (the tiny frozen LLM's <img_i> states aligned on text-only
            # caption prompts do not carry over to edit prompts: top-1 retrieval of the instruction 3 %);
            # explicit: the same prompt, aligned to the CLIP text of the instruction said plainly (Edit.explicit)
            edit = edit_for(only or str(rng.choice(list(TRAIN_FAMILIES))), rng, train_facts)
            image = png_bytes(edit.images(side)[0]) if family != "instruction" else None
            explicit = family == "explicit_instruction"
            yield Sample(f"shapes_instructions/{i}", "shapes_instructions", "caption",
                         caption=edit.explicit if explicit else edit.instruction,
                         instruction=edit.instruction if explicit else None, source_image=image,
                         reply=edit.explicit if reply else None)
        elif family == "caption":
            scene = random_scene(rng)
            yield Sample(f"shapes_captions/{i}", "shapes_captions", "caption", caption=caption(scene))
        elif family == "chat":
            scene = random_scene(rng)
            turns = knowledge_chat(rng) if rng.random() < 0.5 else vqa_chat(rng, scene)
            yield Sample(f"shapes_chat/{i}", "shapes_chat", "chat", conversation=turns,
                         source_image=png_bytes(render(scene, side)))
        else:
            raise ValueError(f"unknown ShapesWorld family {family!r}")


def write_reason_edit_testset(out_dir: str, per_category: int = 20, seed: int = 0, side: int = 64,
                              simple: int = 0) -> dict[str, int]:
    """A held-out test set in the Reason-Edit layout (``out_dir/reason_edit/<category>/NNN.png``,
    ``NNN_mask.jpg``, ``instructions.txt``) plus exact targets (``out_dir/targets/<category>/NNN.png``), scored by
    ``eval/reason_edit.py`` unchanged. Test scenes come from a different seed stream than training, and reasoning
    instructions use the held-out facts only. ``simple`` > 0 adds a ``7-Simple`` folder of plain edits.
    ``out_dir/reason_edit_plain/`` holds the same samples with each instruction said plainly (:attr:`Edit.explicit`,
    "remove the circle on the left" → "remove the red circle"): what an editor scores when it is told which shape
    is meant, the ceiling of an MLLM that hands the editor that wording."""
    import os
    import shutil

    _, test_facts = held_out_facts()
    counts = {}
    folders = list(CATEGORIES) + (["7-Simple"] if simple else [])
    for category in folders:
        n = simple if category == "7-Simple" else per_category
        inputs = os.path.join(out_dir, "reason_edit", category)
        plain_inputs = os.path.join(out_dir, "reason_edit_plain", category)
        targets = os.path.join(out_dir, "targets", category)
        for folder in (inputs, plain_inputs, targets):
            os.makedirs(folder, exist_ok=True)
        lines, plain = [], []
        for i in range(n):
            rng = sample_rng(seed, 1, i, stream=20 + folders.index(category))
            if category == "6-Reasoning":
                edit = reasoning_edit(rng, test_facts)
            elif category == "7-Simple":
                edit = simple_edit(rng)
            else:
                edit = understanding_edit(rng, category)
            src, tgt, mask = edit.images(side)
            stem = f"{i:03d}"
            Image.fromarray(src).save(os.path.join(inputs, f"{stem}.png"))
            Image.fromarray((mask * 255).astype(np.uint8)).save(os.path.join(inputs, f"{stem}_mask.jpg"), quality=100)
            for name in (f"{stem}.png", f"{stem}_mask.jpg"):  # the same files, told plainly beside them
                shutil.copyfile(os.path.join(inputs, name), os.path.join(plain_inputs, name))
            Image.fromarray(tgt).save(os.path.join(targets, f"{stem}.png"))
            lines.append(f"{edit.instruction} CLIP: {edit.phrase}")
            plain.append(f"{edit.explicit} CLIP: {edit.phrase}")
        for folder, text in ((inputs, lines), (plain_inputs, plain)):
            with open(os.path.join(folder, "instructions.txt"), "w", encoding="utf-8") as f:
                f.write("\n".join(text) + "\n")
        counts[category] = n
    return counts
