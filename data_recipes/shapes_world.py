"""Generate ShapesWorld: training shards in the uniform schema and a held-out Reason-Edit-layout test set.

    python -m data_recipes.shapes_world --out data/shapes_world [--side 64] [--seed 0] \
        [--simple 4000 --perception 2000 --understanding 3000 --reasoning 2000 --caption 4000 --chat 3000] \
        [--test-per-category 20 --test-simple 40]

Writes ``OUT/train/shapes_<family>-train-NNNNN.parquet`` (one prefix per family, so mixture ratios can weigh
them) and ``OUT/test/reason_edit`` + ``OUT/test/targets``. Every item is a pure function of (seed, index).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from smartedit.data.io import write_samples
from smartedit.shapes.world import training_samples, write_reason_edit_testset

logger = logging.getLogger(__name__)

FAMILIES = ("simple", "perception", "understanding", "reasoning", "caption", "chat")
DEFAULTS = {"simple": 4000, "perception": 2000, "understanding": 3000, "reasoning": 2000, "caption": 4000,
            "chat": 3000}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--side", type=int, default=64, help="image size in pixels")
    parser.add_argument("--seed", type=int, default=0)
    for family in FAMILIES:
        parser.add_argument(f"--{family}", type=int, default=DEFAULTS[family], help=f"{family} samples")
    parser.add_argument("--test-per-category", type=int, default=20)
    parser.add_argument("--test-simple", type=int, default=40)
    parser.add_argument("--overwrite", action="store_true")
    args = parser.parse_args(argv)
    if args.side < 16:
        parser.error("--side must be at least 16")
    written = {}
    for family in FAMILIES:
        count = getattr(args, family)
        if count <= 0:
            continue
        name = "shapes_captions" if family == "caption" else f"shapes_{family}"
        shards = write_samples(training_samples(family, count, args.seed, args.side),
                               os.path.join(args.out, "train"), f"{name}-train", overwrite=args.overwrite)
        written[family] = {"samples": count, "shards": len(shards)}
        logger.info("%s: %d samples in %d shard(s)", family, count, len(shards))
    written["test"] = write_reason_edit_testset(os.path.join(args.out, "test"), args.test_per_category, args.seed,
                                                args.side, args.test_simple)
    sys.stdout.write(json.dumps(written, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    raise SystemExit(main())
