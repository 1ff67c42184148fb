"""Stage 2b (SmartEdit): as 2a + the zero-initialised BIM.

    python train/stage2_smartedit.py --preset tiny --init runs/stage2a --output runs/stage2b
    deepspeed --num_gpus 8 train/stage2_smartedit.py --preset 7b --init ... --output ...
    torchrun --nproc_per_node 8 train/stage2_smartedit.py --preset 7b --init ... --output ...

See docs/training.md; ``--help`` lists the options. The work is done by :mod:`smartedit.train`.
"""

from __future__ import annotations

import os
import sys

from smartedit.train.cli import run_stage

DS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ds")


def main(argv: list[str] | None = None) -> int:
    return run_stage("stage2b", argv, ds_dir=DS_DIR)


if __name__ == "__main__":
    sys.exit(main())
