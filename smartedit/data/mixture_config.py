"""The training data mixture: source ratios (defaults from DESIGN.md §1) and the rule that derives them from sizes.

Stage 2 (DESIGN.md "Data mixture"): 15 % synthetic reasoning editing; 8.5 % ReasonSeg; LLaVA-Instruct chat in
proportion to its size (≈ 15–19 %); the rest split between editing (InstructPix2Pix : MagicBrush = 1 : 1) and
segmentation-as-editing (RefCOCO, gRefCOCO, COCO-Stuff) by size. :data:`DEFAULT_STAGE2_RATIOS` is that rule
applied to the public training-set sizes with the default recipes (one sample per ref / image); use
:meth:`MixtureConfig.from_sizes` to apply it to the sizes you converted. Stage 1 trains on captions only.

Source names are the recipe names (``smartedit.data.recipes.RECIPES``) and the sub-folders of a data root.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MixtureConfig", "DEFAULT_STAGE2_RATIOS", "STAGE1_RATIOS", "EDITING_SOURCES", "SEGMENTATION_SOURCES"]

DEFAULT_STAGE2_RATIOS: dict[str, float] = {
    "synthetic_reasoning": 0.15,
    "reasonseg": 0.085,
    "llava_instruct": 0.17,
    "ip2p": 0.15,          # editing: IP2P : MagicBrush = 1 : 1
    "magicbrush": 0.15,
    "refcoco": 0.12,       # segmentation as editing, by size (RefCOCO family ≈ 41 %, gRefCOCO ≈ 27 %,
    "grefcoco": 0.08,      # COCO-Stuff ≈ 32 % of the perception share)
    "cocostuff": 0.095,
}
"""Stage-2 defaults (sum 1). ``ultraedit`` may be added (e.g. for mask-channel models); it is 0 by default."""

STAGE1_RATIOS: dict[str, float] = {"cc12m": 1.0}
EDITING_SOURCES = ("ip2p", "magicbrush")
SEGMENTATION_SOURCES = ("refcoco", "grefcoco", "cocostuff")
REASONING_SHARE = 0.15
REASONSEG_SHARE = 0.085
CHAT_RANGE = (0.15, 0.19)


@dataclass
class MixtureConfig:
    """Ratios of the mixture's sources (any non-negative weights; normalised when used), its seed and length."""

    ratios: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_STAGE2_RATIOS))
    seed: int = 0
    samples_per_epoch: int | None = None
    """Draws per epoch (default: the total size of the active sources)."""

    def problems(self) -> list[str]:
        p = []
        if not isinstance(self.ratios, Mapping) or not self.ratios:
            return ["ratios must map source names to weights"]
        for name, r in self.ratios.items():
            if not isinstance(r, (int, float)) or isinstance(r, bool) or not math.isfinite(r) or r < 0:
                p.append(f"ratio of {name!r} must be a finite number >= 0, got {r!r}")
        if not p and sum(self.ratios.values()) <= 0:
            p.append("at least one ratio must be positive")
        if not isinstance(self.seed, int):
            p.append(f"seed must be an integer, got {self.seed!r}")
        if self.samples_per_epoch is not None and (not isinstance(self.samples_per_epoch, int)
                                                   or self.samples_per_epoch <= 0):
            p.append(f"samples_per_epoch must be a positive integer or null, got {self.samples_per_epoch!r}")
        return p

    def validate(self) -> "MixtureConfig":
        p = self.problems()
        if p:
            raise ValueError("invalid mixture config:\n  " + "\n  ".join(p))
        return self

    def normalized(self) -> dict[str, float]:
        """Positive ratios scaled to sum 1 (the probability of drawing from each source)."""
        self.validate()
        total = sum(r for r in self.ratios.values() if r > 0)
        return {n: r / total for n, r in self.ratios.items() if r > 0}

    def restricted(self, available: Sequence[str], allow_missing: bool = False) -> "MixtureConfig":
        """The config limited to ``available`` sources. A positive-ratio source that is not available is an error
        naming it, unless ``allow_missing`` (then it is dropped and the rest renormalise)."""
        missing = sorted(n for n, r in self.ratios.items() if r > 0 and n not in available)
        if missing and not allow_missing:
            raise ValueError(f"the mixture needs source(s) {missing} but only {sorted(available)} are available; "
                             f"convert them (docs/data.md) or set their ratio to 0")
        kept = {n: r for n, r in self.ratios.items() if n in available}
        return MixtureConfig(kept, self.seed, self.samples_per_epoch).validate()

    @classmethod
    def from_sizes(cls, sizes: Mapping[str, int], seed: int = 0, samples_per_epoch: int | None = None,
                   reasoning: float = REASONING_SHARE, reasonseg: float = REASONSEG_SHARE,
                   chat_range: tuple[float, float] = CHAT_RANGE) -> "MixtureConfig":
        """DESIGN.md's rule applied to the converted ``sizes`` (source name → number of samples).

        synthetic_reasoning and reasonseg get their fixed shares; llava_instruct gets its share of all samples,
        clipped to ``chat_range``; the rest is split between the editing group (equal shares) and the segmentation
        group (by size) in proportion to the groups' sizes. Sources not in ``sizes`` (or of size 0) get nothing
        and their share goes to the rest; sources outside these groups are ignored."""
        n = {k: int(v) for k, v in sizes.items() if int(v) > 0}
        ratios: dict[str, float] = {}
        if "synthetic_reasoning" in n:
            ratios["synthetic_reasoning"] = reasoning
        if "reasonseg" in n:
            ratios["reasonseg"] = reasonseg
        if "llava_instruct" in n:
            share = n["llava_instruct"] / sum(n.values())
            ratios["llava_instruct"] = min(max(share, chat_range[0]), chat_range[1])
        rest = 1.0 - sum(ratios.values())
        editing = [s for s in EDITING_SOURCES if s in n]
        segmentation = [s for s in SEGMENTATION_SOURCES if s in n]
        e_size = sum(n[s] for s in editing)
        s_size = sum(n[s] for s in segmentation)
        if e_size + s_size == 0:
            if not ratios:
                raise ValueError(f"no known source among {sorted(sizes)}")
        else:
            for s in editing:
                ratios[s] = rest * e_size / (e_size + s_size) / len(editing)
            for s in segmentation:
                ratios[s] = rest * n[s] / (e_size + s_size)
        return cls(ratios, seed, samples_per_epoch).validate()

    def to_dict(self) -> dict[str, Any]:
        return {"ratios": dict(self.ratios), "seed": self.seed, "samples_per_epoch": self.samples_per_epoch}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MixtureConfig":
        unknown = sorted(set(data) - {"ratios", "seed", "samples_per_epoch"})
        if unknown:
            raise ValueError(f"unknown mixture config key(s) {unknown}; known: ratios, seed, samples_per_epoch")
        return cls(dict(data.get("ratios", DEFAULT_STAGE2_RATIOS)), data.get("seed", 0),
                   data.get("samples_per_epoch")).validate()

    @classmethod
    def stage1(cls, seed: int = 0, samples_per_epoch: int | None = None) -> "MixtureConfig":
        return cls(dict(STAGE1_RATIOS), seed, samples_per_epoch)

    def build(self, sources: Mapping[str, Sequence]):
        """The :class:`~smartedit.data.mixture.MixtureDataset` over ``sources`` with these ratios."""
        from .mixture import MixtureDataset

        self.validate()
        ratios = {n: r for n, r in self.ratios.items() if r > 0}
        return MixtureDataset(sources, ratios, seed=self.seed, samples_per_epoch=self.samples_per_epoch)
