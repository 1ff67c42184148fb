"""RISEBench, reasoning / consistency / plausibility with a local VLM judge: score existing edits or run a model.

    python eval/rise.py --data RISEBench/data --outputs outputs/my_model --judge Qwen2.5-VL-7B-Instruct/ --out report/

Layout, protocol and report files: docs/eval.md.
"""

from __future__ import annotations

from smartedit.eval.args import judged_main
from smartedit.eval.rise import RISEBench


def main(argv: list[str] | None = None) -> int:
    return judged_main(argv, prog="eval/rise.py", doc=__doc__,
                       data_help="RISEBench data/ folder with data_total.json (or the JSON file)",
                       make_benchmark=lambda a: RISEBench(a.data))


if __name__ == "__main__":
    raise SystemExit(main())
