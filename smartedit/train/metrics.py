"""Training logs: every loss term of every step in ``metrics.jsonl`` (always), TensorBoard and W&B (optional).

TensorBoard (``torch.utils.tensorboard``) needs the ``tensorboard`` package and W&B the ``wandb`` package; neither
is a dependency of smartedit. ``log.tensorboard = "auto"`` uses TensorBoard when it is installed and says once that
it is not; ``true`` (or ``log.wandb = true``) without the package is an error naming the ``pip install``.

On resume, records after the resumed step (written by the interrupted run after its last checkpoint) are dropped,
so ``metrics.jsonl`` always reads as one uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["MetricsLogger", "read_jsonl", "truncate_jsonl", "METRICS_NAME"]

METRICS_NAME = "metrics.jsonl"


def read_jsonl(path: str) -> list[dict[str, Any]]:
    if not os.path.isfile(path):
        return []
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by a kill
                    break
    return out


def truncate_jsonl(path: str, last_step: int) -> None:
    """Keep only the records with ``step <= last_step`` (and drop a torn last line)."""
    if not os.path.isfile(path):
        return
    kept = [r for r in read_jsonl(path) if r.get("step", 0) <= last_step]
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        for r in kept:
            f.write(json.dumps(r) + "\n")
    os.replace(tmp, path)


class MetricsLogger:
    """Main-process logger of scalar records ``{"step": s, name: value, ...}``."""

    def __init__(self, output_dir: str, tensorboard: str | bool = "auto", wandb: bool = False,
                 wandb_project: str = "smartedit", run_config: dict | None = None, resume_step: int | None = None,
                 enabled: bool = True):
        self.enabled = enabled
        self.path = os.path.join(output_dir, METRICS_NAME)
        self._tb = None
        self._wandb = None
        if not enabled:
            return
        os.makedirs(output_dir, exist_ok=True)
        if resume_step is not None:
            truncate_jsonl(self.path, resume_step)
        elif os.path.exists(self.path):
            os.remove(self.path)
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                if tensorboard is True:
                    raise ImportError("log.tensorboard is true but TensorBoard is not installed: "
                                      "pip install tensorboard (or set log.tensorboard to false)") from None
                logger.info("TensorBoard is not installed (pip install tensorboard): logging to %s only", self.path)
            else:
                self._tb = SummaryWriter(os.path.join(output_dir, "tensorboard"),
                                         purge_step=None if resume_step is None else resume_step + 1)
        if wandb:
            try:
                import wandb as wandb_module
            except ImportError:
                raise ImportError("log.wandb is true but W&B is not installed: pip install wandb "
                                  "(or set log.wandb to false)") from None
            self._wandb = wandb_module.init(project=wandb_project, config=run_config or {}, dir=output_dir,
                                            resume="allow")
        self._file = open(self.path, "a", encoding="utf-8")

    def log(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record["step"]
        scalars = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))
                   and not isinstance(v, bool)}
        if self._tb is not None:
            for name, value in scalars.items():
                self._tb.add_scalar(f"train/{name}", value, step)
        if self._wandb is not None:
            self._wandb.log({f"train/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
