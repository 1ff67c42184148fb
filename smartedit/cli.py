"""The ``smartedit`` command: ``smartedit edit``, ``smartedit info``.

Everything loads from local paths; the hub is never contacted (HF_HUB_OFFLINE=1 is set by default).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

logger = logging.getLogger("smartedit")

RANDOM_PREFIX = "random:"


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_model(spec: str, device: str = "cpu"):
    """``DIR`` (a save_pretrained folder) or ``random:PRESET`` (a randomly initialised model, seed 0)."""
    from .config import preset
    from .model import SmartEditModel

    if spec.startswith(RANDOM_PREFIX):
        name = spec[len(RANDOM_PREFIX):]
        if name != "tiny":
            raise SystemExit(f"error: only random:tiny can be built without weights here (got {spec!r}); "
                             f"7b/13b need real weights: see README 'Real weights'")
        logger.warning("using a RANDOMLY INITIALISED tiny model: the output is not a meaningful edit")
        return SmartEditModel.from_config(preset(name)).to(device).eval()
    return SmartEditModel.from_pretrained(spec, device=device)


def side_by_side(left, right):
    from PIL import Image

    right = right.resize(left.size) if right.size != left.size else right
    canvas = Image.new("RGB", (left.width + right.width, left.height), "white")
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width, 0))
    return canvas


def cmd_edit(args) -> int:
    from PIL import Image

    from .pipeline import SmartEditPipeline

    if not os.path.isfile(args.image):
        raise SystemExit(f"error: input image {args.image!r} does not exist")
    try:
        source = Image.open(args.image)
        source.load()
    except OSError as exc:
        raise SystemExit(f"error: cannot read image {args.image!r}: {exc}") from None
    source = source.convert("RGB")
    pipe = SmartEditPipeline(load_model(args.model, args.device))
    try:
        out = pipe(source, args.instruction, num_inference_steps=args.steps,
                   text_guidance_scale=args.text_guidance, image_guidance_scale=args.image_guidance,
                   seed=args.seed, resolution=args.resolution)
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    edited = out.images[0]
    out_dir = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(out_dir, exist_ok=True)
    edited.save(args.output)
    root, ext = os.path.splitext(args.output)
    pair = f"{root}_side_by_side{ext or '.png'}"
    side_by_side(source, edited).save(pair)
    sys.stdout.write(json.dumps({"output": args.output, "side_by_side": pair, "seed": args.seed,
                                 "instruction": args.instruction, "steps": args.steps}) + "\n")
    return 0


def cmd_info(args) -> int:
    from .config import preset
    from .info import format_report, report

    info = report(preset(args.preset))
    sys.stdout.write((json.dumps(info, indent=2) if args.json else format_report(info)) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartedit", description="SmartEdit: reasoning image editing")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit one image following an instruction")
    edit.add_argument("--model", required=True, help="model folder (save_pretrained layout) or random:tiny")
    edit.add_argument("--image", required=True)
    edit.add_argument("--instruction", required=True)
    edit.add_argument("--output", default="edited.png")
    edit.add_argument("--steps", type=int, default=100)
    edit.add_argument("--text-guidance", type=float, default=7.5)
    edit.add_argument("--image-guidance", type=float, default=1.5)
    edit.add_argument("--seed", type=int, default=0)
    edit.add_argument("--resolution", type=int, default=None, help="model resolution (default: the model's)")
    edit.add_argument("--device", default="cpu")
    edit.set_defaults(func=cmd_edit)

    info = sub.add_parser("info", help="parameter counts of a preset (built on the meta device)")
    info.add_argument("--preset", default="7b", choices=["tiny", "7b", "13b"])
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    _offline()
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
