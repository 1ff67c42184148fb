"""Stage 1 (alignment): Q-Former, queries and new token rows on captions; LM CE + MSE to CLIP-text hidden states.

    python train/stage1_align.py --preset tiny --init random:tiny --clip-text CLIP_DIR --output runs/stage1
    deepspeed --num_gpus 8 train/stage1_align.py --preset 7b --init ... --output ...
    torchrun --nproc_per_node 8 train/stage1_align.py --preset 7b --init ... --output ...

See docs/training.md; ``--help`` lists the options. The work is done by :mod:`smartedit.train`.
"""

from __future__ import annotations

import os
import sys

from smartedit.train.cli import run_stage

DS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ds")


def main(argv: list[str] | None = None) -> int:
    return run_stage("stage1", argv, ds_dir=DS_DIR)


if __name__ == "__main__":
    sys.exit(main())
