"""Running a SmartEdit model over benchmark samples: fixed seed per sample, settings recorded, failures isolated.

Each sample's seed is ``(base_seed + crc32(sample_id)) mod 2**31``, so it depends only on the sample's id (not
on its position, the batch size or which other samples run). Outputs are written as PNG at the input's size
(the pipeline resizes back). A batch that raises is retried one sample at a time, so one bad sample cannot take
its neighbours down; the failing sample is recorded and later reported as ``generation_failed``.
"""

from __future__ import annotations

import logging
import os
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from tqdm.auto import tqdm

from ..batch import edit_chunk
from .backbones import combined_sha256, sha256_file
from .images import ImageSource, load_rgb
from .results import MISSING_INPUT, SampleProblem

logger = logging.getLogger(__name__)

__all__ = ["FALLBACK_SAMPLING", "GenerationSettings", "model_sampling_defaults", "EditJob", "Editor", "sample_seed"]


def sample_seed(base_seed: int, sample_id: str) -> int:
    """The fixed seed of one sample: ``(base_seed + crc32(sample_id)) mod 2**31``."""
    return (int(base_seed) + zlib.crc32(sample_id.encode("utf-8"))) % (2 ** 31)


FALLBACK_SAMPLING = {"num_inference_steps": 100, "text_guidance_scale": 7.5, "image_guidance_scale": 1.5}
"""What a model without sampling defaults (a diffusers InstructPix2Pix folder) is run with when none are given."""


@dataclass
class GenerationSettings:
    """Sampling settings recorded with every report produced from a model. ``None`` = the model folder's
    sampling defaults (``config.sampling``; :data:`FALLBACK_SAMPLING` for folders without them)."""

    num_inference_steps: int | None = None
    text_guidance_scale: float | None = None
    image_guidance_scale: float | None = None
    resolution: int | None = None
    seed: int = 0
    batch_size: int = 1

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def resolved(self, defaults: dict[str, Any]) -> "GenerationSettings":
        """A copy with every None sampling value taken from ``defaults`` (then :data:`FALLBACK_SAMPLING`)."""
        values = asdict(self)
        for k, fallback in FALLBACK_SAMPLING.items():
            if values[k] is None:
                values[k] = defaults.get(k, fallback) if defaults.get(k) is not None else fallback
        return GenerationSettings(**values)

    def defaulted(self) -> list[str]:
        """The sampling settings left to the model folder's defaults (None here)."""
        return [k for k in FALLBACK_SAMPLING if getattr(self, k) is None]


def model_sampling_defaults(config) -> dict[str, Any]:
    """A SmartEdit config's ``sampling`` section in :class:`GenerationSettings` names (empty when it has none)."""
    sampling = getattr(config, "sampling", None)
    if sampling is None:
        return {}
    return {"num_inference_steps": sampling.num_inference_steps, "text_guidance_scale": sampling.guidance_scale,
            "image_guidance_scale": sampling.image_guidance_scale}


@dataclass
class EditJob:
    """One edit: ``image`` (path / bytes / PIL) + ``instruction`` → PNG at ``output_path``."""

    sample_id: str
    image: ImageSource | None
    instruction: str
    output_path: Path


class Editor:
    """Wraps :class:`~smartedit.pipeline.SmartEditPipeline` for benchmark runs."""

    def __init__(self, model_dir: str | os.PathLike, settings: GenerationSettings,
                 device: str | torch.device = "cpu", dtype: torch.dtype | None = None, skip_existing: bool = False):
        from ..pipeline import SmartEditPipeline

        self.model_dir = os.fspath(model_dir)
        self.skip_existing = skip_existing
        self.pipe = SmartEditPipeline.from_model_dir(self.model_dir, device=device, dtype=dtype)
        self.pipe.set_progress_bar_config(disable=True)
        self.requested = settings
        self.settings = settings = settings.resolved(model_sampling_defaults(self.pipe.model.config))
        weights = sorted(Path(self.model_dir).glob("*.safetensors"))
        hashes = {w.name: sha256_file(w) for w in weights}
        self.info: dict[str, Any] = {
            "model_dir": self.model_dir,
            "weights": hashes,
            "sha256": combined_sha256(hashes) if hashes else None,
            "resolution_used": settings.resolution or self.pipe.model.config.resolution,
            "device": str(device),
            "dtype": str(dtype or self.pipe.model.null_text_embedding.dtype),
            **settings.to_dict(),
            "defaulted": self.requested.defaulted(),
        }
        self.failures: dict[str, str] = {}
        self.seeds: dict[str, int] = {}
        self.replies: dict[str, str] = {}
        """What a model that writes a reply (``mllm.writes_reply``) said before editing each job."""

    def run(self, jobs: list[EditJob], desc: str = "editing") -> None:
        """Edit every job (batched); failures go to :attr:`failures`, seeds to :attr:`seeds`."""
        todo = []
        for job in jobs:
            self.seeds[job.sample_id] = sample_seed(self.settings.seed, job.sample_id)
            if self.skip_existing and job.output_path.is_file():
                continue
            todo.append(job)
        size = max(1, int(self.settings.batch_size))
        for start in tqdm(range(0, len(todo), size), desc=desc, unit="batch", disable=not todo):
            self._run_batch(todo[start:start + size])

    def _run_batch(self, batch: list[EditJob]) -> None:
        """Edit one batch with :func:`smartedit.batch.edit_chunk`: a batch that raises is retried job by job."""
        ready: list[tuple[EditJob, Image.Image]] = []
        for job in batch:
            try:
                ready.append((job, load_rgb(job.image, MISSING_INPUT, "input")))
            except SampleProblem as e:
                self.failures[job.sample_id] = f"input not readable: {e.message}"
        if ready:
            edit_chunk(ready, lambda pairs: self._edit([image for _, image in pairs], [job for job, _ in pairs]),
                       lambda pair, edited: self._save(pair[0], edited), self._fail)

    def _fail(self, pair: tuple[EditJob, Image.Image], e: Exception) -> None:
        job = pair[0]
        logger.warning("edit failed for %s: %s", job.sample_id, e)
        self.failures[job.sample_id] = f"{type(e).__name__}: {e}"

    def _edit(self, images: list[Image.Image], jobs: list[EditJob]) -> list[Image.Image]:
        s = self.settings
        out = self.pipe(images, [j.instruction for j in jobs], num_inference_steps=s.num_inference_steps,
                        text_guidance_scale=s.text_guidance_scale, image_guidance_scale=s.image_guidance_scale,
                        seed=[self.seeds[j.sample_id] for j in jobs], resolution=s.resolution)
        for job, reply in zip(jobs, out.replies or ()):
            self.replies[job.sample_id] = reply
        return list(out.images)

    def _save(self, job: EditJob, image: Image.Image) -> None:
        job.output_path.parent.mkdir(parents=True, exist_ok=True)
        image.save(job.output_path)
        self.failures.pop(job.sample_id, None)
