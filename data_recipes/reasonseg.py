"""LISA ReasonSeg (json polygons + images) → reasoning samples with the question prepended.

Thin wrapper over ``smartedit.data.recipes`` (recipe ``reasonseg``; the logic lives in the library).
Usage::

    python -m data_recipes.reasonseg --root ReasonSeg/train --out data/reasonseg

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("reasonseg", argv, prog="python -m data_recipes.reasonseg")


if __name__ == "__main__":
    raise SystemExit(main())
