"""ImgEdit-Bench basic suite, per-type 1–5 rubric with a local VLM judge: score existing edits or run a model.

    python eval/imgedit.py --data ImgEdit/Benchmark/Basic --images Benchmark/singleturn --outputs edits/ \
        --judge Qwen2.5-VL-7B-Instruct/ --out report/

Layout, protocol and report files: docs/eval.md.
"""

from __future__ import annotations

from smartedit.eval.args import judged_main
from smartedit.eval.imgedit import ImgEditBench


def _arguments(parser):
    parser.add_argument("--images", metavar="DIR", help="root of the original images (default: the data folder, "
                                                        "then its singleturn/)")
    parser.add_argument("--prompts", metavar="JSON", help="ImgEdit's per-type judge prompts (default: prompts.json "
                                                          "next to basic_edit.json, else a built-in rubric)")


def main(argv: list[str] | None = None) -> int:
    return judged_main(argv, prog="eval/imgedit.py", doc=__doc__,
                       data_help="folder with basic_edit.json (or the file itself)",
                       make_benchmark=lambda a: ImgEditBench(a.data, images=a.images, prompts=a.prompts),
                       add_arguments=_arguments)


if __name__ == "__main__":
    raise SystemExit(main())
