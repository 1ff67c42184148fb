"""LLaVA-Instruct-150K (conversations json + COCO images) → chat samples.

Thin wrapper over ``smartedit.data.recipes`` (recipe ``llava_instruct``; the logic lives in the library).
Usage::

    python -m data_recipes.llava_instruct --json llava_instruct_150k.json --images train2017 --out data/llava_instruct

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("llava_instruct", argv, prog="python -m data_recipes.llava_instruct")


if __name__ == "__main__":
    raise SystemExit(main())
