"""MagicBrush (HF parquet, train + dev) → edit samples with masks.

Thin wrapper over ``smartedit.data.recipes`` (recipe ``magicbrush``; the logic lives in the library).
Usage::

    python -m data_recipes.magicbrush --data MagicBrush/ --out data/magicbrush

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("magicbrush", argv, prog="python -m data_recipes.magicbrush")


if __name__ == "__main__":
    raise SystemExit(main())
