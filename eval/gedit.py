"""GEdit-Bench (Step1X-Edit), VIEScore protocol with a local VLM judge: score existing edits or run a model.

    python eval/gedit.py --data GEdit-Bench/ --outputs results/my_method --judge Qwen2.5-VL-7B-Instruct/ --out report/
    python eval/gedit.py --data GEdit-Bench/ --model MODEL_DIR --judge Qwen2.5-VL-7B-Instruct/ --language cn \
        --out report/

Layout, protocol and report files: docs/eval.md.
"""

from __future__ import annotations

from smartedit.eval.args import judged_main
from smartedit.eval.gedit import GEditBench


def main(argv: list[str] | None = None) -> int:
    return judged_main(
        argv, prog="eval/gedit.py", doc=__doc__, data_help="stepfun-ai/GEdit-Bench as downloaded (arrow / parquet "
                                                          "files) or saved with save_to_disk",
        make_benchmark=lambda a: GEditBench(a.data, language=a.language),
        add_arguments=lambda p: p.add_argument("--language", choices=["en", "cn", "all"], default="en",
                                               help="instruction language to score (default en)"))


if __name__ == "__main__":
    raise SystemExit(main())
