"""Training of the three SmartEdit stages under DeepSpeed ZeRO (library side; ``train/*.py`` are thin scripts).

| module | concept |
|---|---|
| :mod:`~smartedit.train.config` | :class:`ExperimentConfig`: one run of one stage, validated, JSON, dotted overrides |
| :mod:`~smartedit.train.presets` | per-stage presets for tiny / 7b / 13b (paper hyper-parameters, data mixture) |
| :mod:`~smartedit.train.schedule` | warm-up + cosine learning rate as a client scheduler |
| :mod:`~smartedit.train.engine` | DeepSpeed configs (ZeRO-2/3, bf16 block), ``"auto"`` filling, client optimizer |
| :mod:`~smartedit.train.distributed` | process group for deepspeed / torchrun / python launches (gloo on CPU) |
| :mod:`~smartedit.train.stage_model` | the model of each stage (BIM dropped / added, LoRA) and the stage losses |
| :mod:`~smartedit.train.clip_text` | frozen CLIP text encoder: stage-1 targets and the null text embedding |
| :mod:`~smartedit.train.rng` | random-state capture and restore (JSON), position-derived generators |
| :mod:`~smartedit.train.checkpoint` | atomic checkpoints (staging folder, manifest last, rename), keep-last-N |
| :mod:`~smartedit.train.metrics` | metrics.jsonl, optional TensorBoard and W&B |
| :mod:`~smartedit.train.export` | final export to the ``save_pretrained`` format |
| :mod:`~smartedit.train.consolidate` | ``python -m smartedit.train.consolidate CKPT OUT``: ZeRO → safetensors |
| :mod:`~smartedit.train.trainer` | the training loop (:class:`Trainer`) |
| :mod:`~smartedit.train.cli` | the stage scripts' command line |
"""

from .config import ExperimentConfig
from .presets import experiment_preset

__all__ = ["ExperimentConfig", "experiment_preset"]
