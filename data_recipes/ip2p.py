"""InstructPix2Pix CLIP-filtered (HF parquet) → edit samples.

Thin wrapper over ``smartedit.data.recipes`` (recipe ``ip2p``; the logic lives in the library).
Usage::

    python -m data_recipes.ip2p --data instructpix2pix-clip-filtered/ --out data/ip2p

``--help`` lists every option; the input layout is described in docs/data.md.
"""

from __future__ import annotations

from smartedit.data.recipes import run_recipe


def main(argv: list[str] | None = None) -> int:
    return run_recipe("ip2p", argv, prog="python -m data_recipes.ip2p")


if __name__ == "__main__":
    raise SystemExit(main())
