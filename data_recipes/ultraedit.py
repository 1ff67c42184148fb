"""UltraEdit free-form / region-based (parquet) → edit samples (region masks kept).

Thin wrapper over ``smartedit.data.recipes`` (recipe ``ultraedit``; the logic lives in the library).
Usage::

    python -m data_recipes.ultraedit --data UltraEdit_Region_Based_100k/ --out data/ultraedit

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("ultraedit", argv, prog="python -m data_recipes.ultraedit")


if __name__ == "__main__":
    raise SystemExit(main())
