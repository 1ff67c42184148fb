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


def _pipeline(args):
    from .pipeline import SmartEditPipeline

    pipe = SmartEditPipeline(load_model(args.model, args.device))
    if getattr(args, "scheduler", None):
        import diffusers

        cls = getattr(diffusers, args.scheduler, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise SystemExit(f"error: unknown scheduler {args.scheduler!r} (e.g. EulerAncestralDiscreteScheduler, "
                             f"DDIMScheduler, DPMSolverMultistepScheduler)")
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    return pipe


def _edit_kwargs(args) -> dict:
    return dict(num_inference_steps=args.steps, text_guidance_scale=args.text_guidance,
                image_guidance_scale=args.image_guidance, resolution=args.resolution)


def cmd_edit(args) -> int:
    from .image_io import ImageInputError, load_image, load_mask

    if args.batch:
        return _cmd_batch(args)
    if not args.image or not args.instruction:
        raise SystemExit("error: give --image and --instruction (or --batch FILE.jsonl)")
    try:
        source = load_image(args.image, f"input image {args.image!r}")
        mask = load_mask(args.mask, source.size, f"mask {args.mask!r}") if args.mask else None
    except ImageInputError as exc:
        raise SystemExit(f"error: {exc}") from None
    pipe = _pipeline(args)
    try:
        out = pipe(source, args.instruction, mask=mask, seed=args.seed, **_edit_kwargs(args))
    except ValueError as exc:
        raise SystemExit(f"error: {exc}") from None
    edited = out.images[0]
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    edited.save(args.output)
    root, ext = os.path.splitext(args.output)
    pair = f"{root}_side_by_side{ext or '.png'}"
    side_by_side(source, edited).save(pair)
    sys.stdout.write(json.dumps({"output": args.output, "side_by_side": pair, "seed": out.seeds[0],
                                 "instruction": args.instruction, "steps": args.steps}) + "\n")
    return 0


def _cmd_batch(args) -> int:
    from .batch import read_jobs, run_batch

    if not os.path.isfile(args.batch):
        raise SystemExit(f"error: batch file {args.batch!r} does not exist")
    out_dir = args.output_dir
    rows, failures = read_jobs(args.batch, out_dir, base_seed=args.seed or 0)
    done = []
    if rows:
        done, run_failures = run_batch(_pipeline(args), rows, batch_size=args.batch_size, **_edit_kwargs(args))
        failures += run_failures
    failures.sort(key=lambda f: f["line"])
    summary = {"output_dir": out_dir, "done": done, "failed": failures}
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "batch_report.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    sys.stdout.write(json.dumps(summary) + "\n")
    for fail in failures:
        logger.error("line %d: %s", fail["line"], fail["error"])
    return 1 if failures else 0


def cmd_assemble(args) -> int:
    from .loading import from_components

    overrides = {}
    if args.mask_channels:
        overrides["unet.mask_channels"] = 4
    model = from_components(llm=args.llm, clip=args.clip, sd=args.sd, preset=args.preset, **overrides)
    model.save_pretrained(args.out)
    sys.stdout.write(json.dumps({"out": args.out, "preset": args.preset}) + "\n")
    return 0


def cmd_demo(args) -> int:
    from .demo import build_app

    app = build_app(_pipeline(args))
    app.launch(server_name=args.host, server_port=args.port)
    return 0


def cmd_info(args) -> int:
    from .config import preset
    from .info import format_report, report

    info = report(preset(args.preset))
    sys.stdout.write((json.dumps(info, indent=2) if args.json else format_report(info)) + "\n")
    return 0


def _add_edit_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--text-guidance", type=float, default=7.5)
    parser.add_argument("--image-guidance", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=0, help="seed (batch: default seed = this + line number)")
    parser.add_argument("--resolution", type=int, default=None, help="model resolution (default: the model's)")
    parser.add_argument("--scheduler", default=None,
                        help="diffusers scheduler class (default: the model config's scheduler.sampler, e.g. "
                             "EulerAncestralDiscreteScheduler for the 7b/13b presets, DDIMScheduler for SmartEdit-tiny)")
    parser.add_argument("--device", default="cpu")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="smartedit", description="SmartEdit: reasoning image editing")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)

    edit = sub.add_parser("edit", help="edit an image following an instruction (or many, with --batch)")
    edit.add_argument("--model", required=True, help="model folder (save_pretrained layout) or random:tiny")
    edit.add_argument("--image", help="input image (PNG, JPEG, ...)")
    edit.add_argument("--instruction")
    edit.add_argument("--mask", help="region mask, white = edit here (models with mask channels)")
    edit.add_argument("--output", default="edited.png")
    edit.add_argument("--batch", help="JSONL file, one edit per line: image, instruction[, mask, seed, output]")
    edit.add_argument("--output-dir", default="edits", help="where --batch writes its images and report")
    edit.add_argument("--batch-size", type=int, default=4)
    _add_edit_options(edit)
    edit.set_defaults(func=cmd_edit)

    assemble = sub.add_parser("assemble", help="build a SmartEdit model folder from local LLaVA, CLIP and SD "
                                               "folders (new parts randomly initialised, for training)")
    assemble.add_argument("--llm", required=True, help="LLaMA / Vicuna / LLaVA-1.1 / llava-hf folder")
    assemble.add_argument("--clip", help="CLIP ViT-L/14 folder (not needed for llava-hf)")
    assemble.add_argument("--sd", required=True, help="SD-1.5 or InstructPix2Pix folder (diffusers layout)")
    assemble.add_argument("--preset", default="7b", choices=["tiny", "7b", "13b"])
    assemble.add_argument("--mask-channels", action="store_true", help="add 4 region-mask UNet input channels")
    assemble.add_argument("--out", required=True)
    assemble.set_defaults(func=cmd_assemble)

    demo = sub.add_parser("demo", help="web demo (needs pip install -e '.[demo]')")
    demo.add_argument("--model", required=True)
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--device", default="cpu")
    demo.set_defaults(func=cmd_demo)

    from .convert_cli import register as register_convert
    from .data.cli import register as register_data

    register_data(sub)
    register_convert(sub)

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
