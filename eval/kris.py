"""KRIS-Bench, four judged dimensions with a local VLM judge: score existing edits or run a model.

    python eval/kris.py --data KRIS_Bench/ --outputs results/my_model --judge Qwen2.5-VL-7B-Instruct/ --out report/

Layout, protocol and report files: docs/eval.md.
"""

from __future__ import annotations

from smartedit.eval.args import judged_main
from smartedit.eval.kris import KrisBench


def main(argv: list[str] | None = None) -> int:
    return judged_main(argv, prog="eval/kris.py", doc=__doc__,
                       data_help="KRIS_Bench/ folder (<task>/annotation.json + images)",
                       make_benchmark=lambda a: KrisBench(a.data))


if __name__ == "__main__":
    raise SystemExit(main())
