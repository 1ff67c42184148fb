"""COCO-Stuff (label PNGs + COCO images) → perception samples, 20 % absent-class no-op edits.

Thin wrapper over ``smartedit.data.recipes`` (recipe ``cocostuff``; the logic lives in the library).
Usage::

    python -m data_recipes.cocostuff --images coco/train2017 --labels stuffthingmaps/train2017 --out data/cocostuff

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("cocostuff", argv, prog="python -m data_recipes.cocostuff")


if __name__ == "__main__":
    raise SystemExit(main())
