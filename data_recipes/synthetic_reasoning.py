"""SmartEdit-style synthetic reasoning editing pairs (json + images) → reasoning samples.

Thin wrapper over ``smartedit.data.recipes`` (recipe ``synthetic_reasoning``; the logic lives in the library).
Usage::

    python -m data_recipes.synthetic_reasoning --json synthetic/data.json --out data/synthetic_reasoning

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("synthetic_reasoning", argv, prog="python -m data_recipes.synthetic_reasoning")


if __name__ == "__main__":
    raise SystemExit(main())
