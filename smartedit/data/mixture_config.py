"""The training data mixture (:class:`DataConfig`): named sources, their sampling ratios and the rule that derives
the ratios from the sources' sizes. It is the ``data`` section of a training run's experiment config and what
``smartedit data preview`` and :func:`smartedit.data.loader.open_mixture` take.

Stage 2 of the paper's recipe (docs/design.md): 15 % synthetic reasoning editing; 8.5 % ReasonSeg; LLaVA-Instruct
chat in proportion to its size (≈ 15–19 %); the rest split between editing (InstructPix2Pix : MagicBrush = 1 : 1) and
segmentation-as-editing (RefCOCO, gRefCOCO, COCO-Stuff) by size. :data:`DEFAULT_STAGE2_RATIOS` is that rule
applied to the public training-set sizes with the default recipes (one sample per ref / image); use
:meth:`DataConfig.from_sizes` to apply it to the sizes you converted. Stage 1 trains on captions only.

Source names are the recipe names (``smartedit.data.recipes.RECIPES``) and the sub-folders of a data root.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..config import ConfigError, ConfigSection, is_int, is_number

__all__ = ["DataConfig", "stage2_ratios", "DEFAULT_STAGE2_RATIOS", "STAGE1_RATIOS", "EDITING_SOURCES", "SEGMENTATION_SOURCES"]

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
class DataConfig(ConfigSection):
    """The data mixture: named sources and their sampling ratios (normalised; 0 switches a source off).

    A source is a folder of parquet shards in the uniform sample schema (:mod:`smartedit.data.schema`), a shard
    file or glob, ``python:MODULE:FUNCTION`` (a function of no arguments returning a sequence of ``Sample``) or a
    spec of another registered source kind, e.g. ``shapes:FAMILY:N`` (N generated ShapesWorld samples); see
    :mod:`smartedit.data.sources`. The mixture draws with replacement; its seed is the run's (``build(sources, seed)``).
    """

    ratios: dict[str, float] = field(default_factory=dict)
    """Sampling weight of each source (normalised); :data:`DEFAULT_STAGE2_RATIOS` / :meth:`from_sizes` give the
    recipe's."""
    root: str | None = None
    """Data root with one folder of shards per source (``root/<name>/*.parquet``, docs/data.md)."""
    sources: dict[str, str] = field(default_factory=dict)
    """Explicit spec per source name; overrides ``root/<name>``."""
    samples_per_epoch: int | None = None
    """Draws per epoch (only names epochs in the logs and the collator keys); null = the sources' total size."""
    num_workers: int = 0
    prefetch_factor: int = 2
    resolution: int | None = None
    """Diffusion image size; null = the model's ``resolution``."""
    max_skipped_fraction: float = 0.05
    """Unreadable rows (corrupt or over-budget images, malformed samples) are skipped, replaced by a deterministic
    draw, counted and logged; the run stops when more than this fraction of the rows drawn so far were skipped
    (counted over at least 200 draws, so a few bad rows early on do not stop it; 0 = stop at the first one)."""

    def problems(self, prefix: str = "data.") -> list[str]:
        """Every problem of the section: its ratios, where its sources are, the loader settings."""
        p = self.ratio_problems(prefix)
        if p and not isinstance(self.ratios, dict):
            return p
        p += self._where_problems(prefix)
        if self.samples_per_epoch is not None and not is_int(self.samples_per_epoch, 1):
            p.append(f"{prefix}samples_per_epoch must be null or a positive integer")
        if not is_int(self.num_workers, 0):
            p.append(f"{prefix}num_workers must be an integer >= 0")
        if not is_int(self.prefetch_factor, 1):
            p.append(f"{prefix}prefetch_factor must be a positive integer")
        if self.resolution is not None and not is_int(self.resolution, 1):
            p.append(f"{prefix}resolution must be null or a positive integer")
        if not (is_number(self.max_skipped_fraction) and 0 <= self.max_skipped_fraction <= 1):
            p.append(f"{prefix}max_skipped_fraction must lie in [0, 1], got {self.max_skipped_fraction!r}")
        return p

    def ratio_problems(self, prefix: str = "data.") -> list[str]:
        """Problems of the ratios alone (what drawing from given sources needs)."""
        if not isinstance(self.ratios, dict):
            return [f"{prefix}ratios must map source names to numbers"]
        return [f"{prefix}ratios.{name} must be a number >= 0, got {r!r}" for name, r in self.ratios.items()
                if not (is_number(r) and r >= 0)]

    def _where_problems(self, prefix: str) -> list[str]:
        """Problems of where the sources are read from (root, per-source specs) against the ratios."""
        p: list[str] = []
        if not isinstance(self.sources, dict) or not all(isinstance(k, str) and isinstance(v, str) and v
                                                          for k, v in self.sources.items()):
            return [f"{prefix}sources must map names to paths (non-empty strings)"]
        if self.root is not None and not (isinstance(self.root, str) and self.root):
            p.append(f"{prefix}root must be null or a folder path")
        weighted = [n for n, r in self.ratios.items() if is_number(r) and r > 0]
        unknown = sorted(n for n in weighted if n not in self.sources)
        if unknown and not self.root:
            p.append(f"{prefix}ratios name sources without a path: {unknown} (set {prefix}root, the data root "
                     f"with one folder per source, or {prefix}sources.NAME)")
        unweighted = sorted(n for n in self.sources if n not in self.ratios)
        if unweighted:
            p.append(f"{prefix}sources name {unweighted} but {prefix}ratios gives them no ratio, so they would never "
                     f"be drawn: add --set {prefix}ratios.{unweighted[0]}=R (a weight beside the others, "
                     f"{dict(self.ratios)}; 0 switches a source off on purpose), or leave them out of "
                     f"{prefix}sources")
        if self.root and self.ratios and all(n in self.sources for n in weighted):
            p.append(f"{prefix}root is {self.root!r} but every source with a ratio has its own path in "
                     f"{prefix}sources, so the root would be ignored: drop the sources' own paths to read "
                     f"root/<name> (--set {prefix}sources={{}}), or drop --data-root")
        if (self.sources or self.root) and not weighted:
            p.append(f"{prefix}ratios must give at least one source a ratio > 0")
        return p

    def validate(self) -> "DataConfig":
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "data config")
        return self

    def _check_ratios(self) -> None:
        problems = self.ratio_problems()
        if not problems and not any(r > 0 for r in self.ratios.values()):
            problems = ["data.ratios must give at least one source a ratio > 0"]
        if problems:
            raise ConfigError(problems, "data config")

    def normalized(self) -> dict[str, float]:
        """Positive ratios scaled to sum 1 (the probability of drawing from each source)."""
        self._check_ratios()
        total = sum(r for r in self.ratios.values() if r > 0)
        return {n: r / total for n, r in self.ratios.items() if r > 0}

    def restricted(self, available: Sequence[str], allow_missing: bool = False) -> "DataConfig":
        """The config limited to ``available`` sources. A positive-ratio source that is not available is an error
        naming it, unless ``allow_missing`` (then it is dropped and the rest renormalise)."""
        missing = sorted(n for n, r in self.ratios.items() if r > 0 and n not in available)
        if missing and not allow_missing:
            raise ValueError(f"the mixture needs source(s) {missing} but only {sorted(available)} are available; "
                             f"convert them (docs/data.md) or set their ratio to 0")
        kept = {n: r for n, r in self.ratios.items() if n in available}
        return dataclasses.replace(self, ratios=kept, sources={n: s for n, s in self.sources.items() if n in kept})

    @classmethod
    def from_sizes(cls, sizes: Mapping[str, int], reasoning: float = REASONING_SHARE,
                   reasonseg: float = REASONSEG_SHARE, chat_range: tuple[float, float] = CHAT_RANGE,
                   **fields: Any) -> "DataConfig":
        """The recipe's rule applied to the converted ``sizes`` (source name → number of samples).

        synthetic_reasoning and reasonseg get their fixed shares; llava_instruct gets its share of all samples,
        clipped to ``chat_range``; the rest is split between the editing group (equal shares) and the segmentation
        group (by size) in proportion to the groups' sizes. Sources not in ``sizes`` (or of size 0) get nothing
        and their share goes to the rest; sources outside these groups are ignored. ``fields``: the other fields
        (``root``, ``sources``, ...)."""
        config = cls(ratios=stage2_ratios(sizes, reasoning, reasonseg, chat_range), **fields)
        config._check_ratios()
        return config

    @classmethod
    def stage1(cls, **fields: Any) -> "DataConfig":
        """Stage 1 trains on captions only."""
        return cls(ratios=dict(STAGE1_RATIOS), **fields)

    def build(self, sources: Mapping[str, Sequence], seed: int = 0):
        """The :class:`~smartedit.data.mixture.MixtureDataset` over ``sources`` with these ratios."""
        from .mixture import MixtureDataset

        self._check_ratios()
        ratios = {n: r for n, r in self.ratios.items() if r > 0}
        return MixtureDataset(sources, ratios, seed=seed, samples_per_epoch=self.samples_per_epoch)


def stage2_ratios(sizes: Mapping[str, int], reasoning: float = REASONING_SHARE, reasonseg: float = REASONSEG_SHARE,
                  chat_range: tuple[float, float] = CHAT_RANGE) -> dict[str, float]:
    """The stage-2 ratio rule of :meth:`DataConfig.from_sizes`."""
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
    return ratios
