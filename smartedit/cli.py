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
    from .batch import (REPORT_NAME, SUMMARY_NAME, finished_rows, read_jobs, record_failures, run_batch,
                        summarize)
    from .image_io import ImageInputError, pixel_budget

    problems = []
    if args.batch_size < 1:
        problems.append(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.max_pixels is not None and args.max_pixels < 1:
        problems.append(f"--max-pixels must be a positive integer, got {args.max_pixels}")
    if args.seed is not None and args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if not os.path.isfile(args.batch):
        problems.append(f"batch file {args.batch!r} does not exist" if not os.path.isdir(args.batch) else
                        f"batch file {args.batch!r} is a folder; give a .jsonl file")
    if problems:
        raise SystemExit("error: " + "; ".join(problems))
    try:
        max_pixels = pixel_budget(args.max_pixels)
    except ImageInputError as exc:
        raise SystemExit(f"error: {exc}") from None
    out_dir = args.output_dir
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"error: cannot create --output-dir {out_dir!r}: {exc.strerror or exc}") from None
    report = os.path.join(out_dir, REPORT_NAME)
    try:
        rows, failures = read_jobs(args.batch, out_dir, base_seed=args.seed or 0,
                                   allow_outside=args.allow_outside_paths, max_pixels=max_pixels)
    except OSError as exc:
        raise SystemExit(f"error: cannot read batch file {args.batch!r}: {exc.strerror or exc}") from None
    previous = finished_rows(report, rows)
    if previous:
        logger.warning("%d row(s) already done by an earlier run of this batch (%s): skipped", len(previous), report)
    record_failures(report, failures)
    todo = [r for r in rows if r.line not in previous]
    if todo:
        run_batch(_pipeline(args), todo, batch_size=args.batch_size, report=report, max_pixels=max_pixels,
                  **_edit_kwargs(args))
    done, failed = summarize(report)
    lines = {r.line for r in rows} | {f["line"] for f in failures}
    done = [d for d in done if d["line"] in lines]
    failed = [f for f in failed if f["line"] in lines]
    summary = {"output_dir": out_dir, "report": report, "done": done, "failed": failed,
               "skipped_already_done": sorted(previous)}
    with open(os.path.join(out_dir, SUMMARY_NAME), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=2)
    sys.stdout.write(json.dumps(summary) + "\n")
    for fail in failed:
        logger.error("line %d: %s", fail["line"], fail["error"])
    return 1 if failed else 0


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
    edit.add_argument("--batch-size", type=int, default=4, help="rows edited together (and decoded at once)")
    edit.add_argument("--allow-outside-paths", action="store_true",
                      help="let --batch rows name images outside the JSONL file's folder")
    edit.add_argument("--max-pixels", type=int, default=None,
                      help="pixel budget of a --batch input image (default $SMARTEDIT_MAX_PIXELS or 40000000)")
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
