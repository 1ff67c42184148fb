"""gRefCOCO (grefs(unc).json + instances.json + COCO images) → perception samples.

Thin wrapper over ``smartedit.data.recipes`` (recipe ``grefcoco``; the logic lives in the library).
Usage::

    python -m data_recipes.grefcoco --root grefcoco --images coco/train2014 --out data/grefcoco

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("grefcoco", argv, prog="python -m data_recipes.grefcoco")


if __name__ == "__main__":
    raise SystemExit(main())
