"""Evaluation harness: Reason-Edit, MagicBrush and Emu Edit with exactly defined metrics.

One concept per module (nothing heavy is imported here):

- :mod:`~smartedit.eval.results`   — sample statuses, per-sample results, means over scored samples with counts
- :mod:`~smartedit.eval.images`    — reading images and masks robustly, size checks, resizing
- :mod:`~smartedit.eval.backbones` — locating metric backbones in local folders, sha256 file hashes
- :mod:`~smartedit.eval.pixel`     — MSE / L1 / L2 / PSNR / SSIM, background-only and reference convention, IoU
- :mod:`~smartedit.eval.lpips`     — LPIPS (SqueezeNet 1.1 + lpips v0.1 heads) from local weights
- :mod:`~smartedit.eval.clip_score`— CLIP-I, CLIP-T, CLIP-out, CLIP-dir, CLIP score of a mask-bbox crop
- :mod:`~smartedit.eval.dino`      — DINO ViT CLS-token cosine similarity
- :mod:`~smartedit.eval.generate`  — running a SmartEdit model over a benchmark (fixed seed per sample)
- :mod:`~smartedit.eval.runner`    — what the benchmarks share: backbone loading, the never-stopping scoring loop
- :mod:`~smartedit.eval.report`    — JSON / CSV per sample, markdown table, HTML page and PNG grids
- :mod:`~smartedit.eval.reason_edit`, :mod:`~smartedit.eval.magicbrush`, :mod:`~smartedit.eval.emu_edit` —
  benchmark readers and runners
- :mod:`~smartedit.eval.args`      — command-line pieces shared by the thin scripts in ``eval/``
- :mod:`~smartedit.eval.testing`   — tiny random backbones and benchmark fixtures in the real layouts

See ``docs/eval.md`` for layouts, commands and metric definitions.
"""

__all__ = [
    "args",
    "backbones",
    "clip_score",
    "dino",
    "emu_edit",
    "generate",
    "images",
    "lpips",
    "magicbrush",
    "pixel",
    "reason_edit",
    "report",
    "results",
    "runner",
    "testing",
]
