"""CC12M-style caption TSV → caption samples for stage 1 (text only).

Thin wrapper over ``smartedit.data.recipes`` (recipe ``cc12m``; the logic lives in the library).
Usage::

    python -m data_recipes.cc12m --tsv cc12m.tsv --out data_stage1/cc12m

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("cc12m", argv, prog="python -m data_recipes.cc12m")


if __name__ == "__main__":
    raise SystemExit(main())
