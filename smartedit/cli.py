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


def _offline() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def load_model(spec: str, device: str = "cpu", dtype=None):
    """``DIR`` (a save_pretrained folder) or ``random:PRESET`` (a randomly initialised model, seed 0)."""
    from .config import preset, random_preset
    from .devices import CLIError
    from .model import SmartEditModel

    name = random_preset(spec)
    if name is not None:
        if name != "tiny":
            raise CLIError(f"only random:tiny can be built without weights here (got {spec!r}); "
                           f"7b/13b need real weights: see README 'Real weights'")
        logger.warning("using a RANDOMLY INITIALISED tiny model: the output is not a meaningful edit")
        return SmartEditModel.from_config(preset(name)).to(device=device, dtype=dtype).eval()
    return SmartEditModel.from_pretrained(spec, device=device, dtype=dtype)


def side_by_side(left, right):
    from PIL import Image

    right = right.resize(left.size) if right.size != left.size else right
    canvas = Image.new("RGB", (left.width + right.width, left.height), "white")
    canvas.paste(left.convert("RGB"), (0, 0))
    canvas.paste(right.convert("RGB"), (left.width, 0))
    return canvas


def scheduler_class(name: str):
    """The diffusers scheduler class called ``name``; anything else is a CLIError listing some choices."""
    import diffusers

    from .config import SchedulerConfig
    from .devices import CLIError

    cls = getattr(diffusers, name, None)
    if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
        raise CLIError(f"--scheduler {name}: not a diffusers scheduler class; use one of "
                       f"{', '.join(SchedulerConfig.SAMPLERS)}")
    return cls


def _pipeline(args):
    """The pipeline the edit / demo / batch options ask for: model, device, dtype, scheduler, offload, quantization."""
    from .config import random_preset
    from .devices import CLIError, resolve_device, resolve_dtype
    from .pipeline import SmartEditPipeline

    device = resolve_device(getattr(args, "device", "auto"))
    dtype = resolve_dtype(getattr(args, "dtype", "auto"), device)
    offload = getattr(args, "offload", "none") or "none"
    quant = getattr(args, "quantize_llm", None)
    scheduler = scheduler_class(args.scheduler) if getattr(args, "scheduler", None) else None
    random = random_preset(args.model) is not None
    if quant and random:
        raise CLIError("--quantize-llm needs a model folder, not random:tiny")
    load_device = "cpu" if offload == "model" else device
    if random:
        pipe = SmartEditPipeline(load_model(args.model, load_device, dtype))
    else:
        pipe = SmartEditPipeline.from_pretrained(args.model, torch_dtype=dtype, device=load_device,
                                                 llm_quantization=quant,
                                                 attn_implementation=getattr(args, "attn_implementation", None))
    if scheduler is not None:
        pipe.scheduler = scheduler.from_config(pipe.scheduler.config)
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "llm":
        pipe.enable_llm_offload("cpu")
    return pipe


def _edit_kwargs(args) -> dict:
    """Sampling flags the user gave (None: the model folder's own defaults)."""
    return dict(num_inference_steps=args.steps, guidance_scale=args.text_guidance,
                image_guidance_scale=args.image_guidance, resolution=args.resolution)


def check_writable(path: str, what: str = "output") -> None:
    """Fail before the edit, not after it: ``path`` must be an image name PIL can write in a writable folder."""
    import tempfile

    from PIL import Image

    from .devices import CLIError

    ext = os.path.splitext(path)[1].lower()
    if ext not in Image.registered_extensions():
        raise CLIError(f"{what} {path!r}: {ext or 'no extension'} is not an image format; end it in .png, .jpg "
                       f"or .webp")
    if os.path.isdir(path):
        raise CLIError(f"{what} {path!r} is a folder; give a file name such as {os.path.join(path, 'edited.png')}")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".smartedit-write-test-"):
            pass
    except OSError as exc:
        raise CLIError(f"cannot write the {what} {path!r} ({exc.strerror or exc}): choose a writable folder") from None
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise CLIError(f"{what} {path!r} exists and is not writable: remove it or choose another name")


def cmd_edit(args) -> int:
    from .devices import CLIError
    from .image_io import load_image, load_mask

    if args.batch:
        return _cmd_batch(args)
    if not args.image or not args.instruction:
        raise CLIError("give --image and --instruction (or --batch FILE.jsonl)")
    root, ext = os.path.splitext(args.output)
    pair = f"{root}_side_by_side{ext}"
    check_writable(args.output)
    check_writable(pair, "side-by-side output")
    max_pixels = getattr(args, "max_pixels", None)
    source = load_image(args.image, f"input image {args.image!r}", max_pixels=max_pixels)
    mask = load_mask(args.mask, source.size, f"mask {args.mask!r}", max_pixels=max_pixels) if args.mask else None
    pipe = _pipeline(args)
    settings = {k: v for k, v in _edit_kwargs(args).items() if k != "resolution"}
    settings = {k: pipe.sampling_defaults[k] if v is None else v for k, v in settings.items()}
    out = pipe(prompt=args.instruction, image=source, mask=mask, seed=args.seed, resolution=args.resolution,
               **settings)
    edited = out.images[0]
    edited.save(args.output)
    side_by_side(source, edited).save(pair)
    sys.stdout.write(json.dumps({"output": args.output, "side_by_side": pair, "seed": out.seeds[0],
                                 "instruction": args.instruction, **settings,
                                 "scheduler": type(pipe.scheduler).__name__, "device": str(pipe._execution_device),
                                 "dtype": str(pipe.dtype).removeprefix("torch."),
                                 **({"reply": out.replies[0]} if out.replies else {})}) + "\n")
    return 0


def _batch_problems(args) -> list[str]:
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
    return problems


def _gather_ranks(args, shard, count: int) -> str | None:
    """Mark this rank done; rank 0 waits for the others and merges their reports (returns the merged report)."""
    from .batch import merge_reports
    from .shard import ProgressLog, Shard, fingerprint, wait_for_ranks

    out_dir = args.output_dir
    ranks_dir = os.path.join(out_dir, "ranks")
    fp = fingerprint({"batch": os.path.abspath(args.batch), "output_dir": os.path.abspath(out_dir),
                      "world_size": shard.world_size})
    ProgressLog(ranks_dir, shard, fp).mark_done(count)
    if not shard.is_main:
        return None
    wait_for_ranks(ranks_dir, shard, fp)
    return merge_reports(out_dir, [os.path.join(out_dir, f"batch_report.{Shard(r, shard.world_size).tag}.jsonl")
                                   for r in range(shard.world_size)])


def _cmd_batch(args) -> int:
    from .batch import REPORT_NAME, SUMMARY_NAME, finished_rows, read_jobs, record_failures, run_batch, summarize
    from .shard import Shard
    from .image_io import ImageInputError, pixel_budget

    problems = _batch_problems(args)
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
    # torchrun / accelerate launch: row i belongs to rank i mod world size (its seed and output do not change);
    # each rank appends to its own report, rank 0 waits for all of them and merges
    shard = Shard.from_env()
    report = os.path.join(out_dir, REPORT_NAME if not shard.distributed else f"batch_report.{shard.tag}.jsonl")
    if shard.distributed:
        from .devices import resolve_device

        device = resolve_device(getattr(args, "device", "auto"))
        args.device = shard.device(device.type) if device.type == "cuda" and device.index is None else str(device)
    try:
        rows, failures = read_jobs(args.batch, out_dir, base_seed=args.seed or 0,
                                   allow_outside=args.allow_outside_paths, max_pixels=max_pixels)
    except OSError as exc:
        raise SystemExit(f"error: cannot read batch file {args.batch!r}: {exc.strerror or exc}") from None
    previous = finished_rows(report, rows)
    if previous:
        logger.warning("%d row(s) already done by an earlier run of this batch (%s): skipped", len(previous), report)
    if shard.is_main:
        record_failures(report, failures)
    todo = [r for i, r in enumerate(rows) if shard.owns(i) and r.line not in previous]
    if todo:
        run_batch(_pipeline(args), todo, batch_size=args.batch_size, report=report, max_pixels=max_pixels,
                  **_edit_kwargs(args))
    if shard.distributed:
        report = _gather_ranks(args, shard, len(todo))
        if report is None:
            return 0
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
    from .backbones.assemble import assemble

    overrides = {}
    if args.mask_channels:
        overrides["unet.mask_channels"] = 4
    model = assemble(llm=args.llm, clip=args.clip, sd=args.sd, preset=args.preset, dtype=args.dtype, **overrides)
    model.save_pretrained(args.out)
    sys.stdout.write(json.dumps({"out": args.out, "preset": args.preset, "backbone": [
                                     model.config.backbone.mllm, model.config.backbone.generator],
                                 "dtype": str(model.dtype).removeprefix("torch.")}) + "\n")
    return 0


def cmd_demo(args) -> int:
    from .config import random_preset
    from .demo import EXAMPLES_FILE, build_app, import_gradio, launch, load_examples
    from .devices import CLIError

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    import_gradio()  # before the model loads: a missing or broken gradio is reported at once, as it is
    examples_file = args.examples
    if examples_file is None and random_preset(args.model) is None:
        examples_file = os.path.join(args.model, EXAMPLES_FILE)
    elif examples_file is not None and not os.path.isfile(examples_file):
        raise CLIError(f"examples file {examples_file!r} does not exist")
    pipe = _pipeline(args)
    app = build_app(pipe, model_name=os.path.normpath(args.model), examples=load_examples(examples_file))
    launch(app, host=args.host, port=args.port, share=args.share)
    return 0


def cmd_info(args) -> int:
    from .config import preset
    from .info import format_memory, format_report, memory_report, report

    cfg = preset(args.preset)
    info = {**report(cfg), "memory": memory_report(cfg)}
    text = json.dumps(info, indent=2) if args.json else format_report(info) + "\n" + format_memory(info["memory"])
    sys.stdout.write(text + "\n")
    return 0


def _add_edit_options(parser: argparse.ArgumentParser) -> None:
    from .quantize import QUANTIZATION_CHOICES

    parser.add_argument("--steps", type=int, default=None, help="denoising steps (default: the model folder's)")
    parser.add_argument("--text-guidance", type=float, default=None,
                        help="text guidance s_T (default: the model folder's; 7.5 for the 7b/13b presets)")
    parser.add_argument("--image-guidance", type=float, default=None,
                        help="image guidance s_I (default: the model folder's; 1.5 for the 7b/13b presets)")
    parser.add_argument("--seed", type=int, default=0, help="seed (batch: default seed = this + line number)")
    parser.add_argument("--resolution", type=int, default=None, help="model resolution (default: the model's)")
    parser.add_argument("--scheduler", default=None,
                        help="diffusers scheduler class (default: the model config's scheduler.sampler, e.g. "
                             "EulerAncestralDiscreteScheduler for the 7b/13b presets, DDIMScheduler for SmartEdit-tiny)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    parser.add_argument("--dtype", default="auto",
                        help="auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16 (GPU only)")
    parser.add_argument("--offload", default="none", choices=["none", "llm", "model"],
                        help="GPU memory: llm = the MLLM on the GPU only while it encodes; model = every component "
                             "only while it runs (smartedit info --preset 7b prints what each needs)")
    parser.add_argument("--attn-implementation", default=None, choices=["sdpa", "eager", "flash_attention_2"],
                        help="attention kernels of the LLM, vision tower and BIM (default: the model folder's, sdpa; "
                             "flash_attention_2 needs CUDA and pip install -e '.[gpu]')")
    parser.add_argument("--quantize-llm", default=None, choices=list(QUANTIZATION_CHOICES),
                        help="8-bit or 4-bit (NF4) LLM weights through bitsandbytes (CUDA or CPU; needs "
                             "pip install -e '.[quant]')")


def _verbose_flag() -> argparse.ArgumentParser:
    """``-v`` accepted after the sub-command too (``smartedit edit ... -v``)."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="show the traceback of an error")
    return parent


def build_parser() -> argparse.ArgumentParser:
    from .config import PRESETS
    from .convert_cli import register as register_convert
    from .data.cli import register as register_data

    presets = sorted(PRESETS)  # tiny, 7b, 13b and each backbone pair's
    parser = argparse.ArgumentParser(prog="smartedit", description="SmartEdit: reasoning image editing")
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_edit_parser(sub)
    _add_assemble_parser(sub, presets)
    _add_demo_parser(sub)
    register_data(sub)
    register_convert(sub)
    _add_info_parser(sub, presets)
    return parser


def _add_edit_parser(sub) -> None:
    edit = sub.add_parser("edit", help="edit an image following an instruction (or many, with --batch)",
                          parents=[_verbose_flag()])
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
                      help="pixel budget of an input image or mask, checked from its header "
                           "(default $SMARTEDIT_MAX_PIXELS or 40000000)")
    _add_edit_options(edit)
    edit.set_defaults(func=cmd_edit)


def _add_assemble_parser(sub, presets: list[str]) -> None:
    assemble = sub.add_parser("assemble", help="build a SmartEdit model folder from local MLLM, (CLIP) and "
                                               "diffusers folders (new parts randomly initialised, for training)")
    assemble.add_argument("--llm", required=True, help="MLLM folder: LLaMA / Vicuna / LLaVA-1.1 / llava-hf, or "
                                                       "Qwen2.5-VL (transformers layout)")
    assemble.add_argument("--clip", help="CLIP ViT-L/14 folder (not needed for llava-hf or Qwen2.5-VL)")
    assemble.add_argument("--sd", required=True, help="generator folder (diffusers layout): SD-1.5 / InstructPix2Pix, "
                                                      "or SDXL / SDXL InstructPix2Pix")
    assemble.add_argument("--preset", default=None, choices=presets,
                          help="Q-Former / BIM / training settings (default: the pair's 7B-class preset: 7b, "
                               "llava1.5-7b+sdxl, qwen2.5vl-7b+sd15 or qwen2.5vl-7b+sdxl)")
    assemble.add_argument("--mask-channels", action="store_true", help="add 4 region-mask UNet input channels")
    assemble.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                          help="dtype of the written model (auto: bfloat16 for 7B / 13B, float32 below)")
    assemble.add_argument("--out", required=True)
    assemble.set_defaults(func=cmd_assemble)


def _add_demo_parser(sub) -> None:
    demo = sub.add_parser("demo", help="web demo in the browser (needs pip install -e '.[demo]')")
    demo.add_argument("--model", required=True, help="model folder (save_pretrained layout) or random:tiny")
    demo.add_argument("--host", default="127.0.0.1", help="address to serve on (default: this machine only)")
    demo.add_argument("--port", type=int, default=7860)
    demo.add_argument("--share", action="store_true", help="also serve through a public gradio share link")
    demo.add_argument("--device", default="auto", help="auto (CUDA when present, else CPU), cpu, cuda, cuda:N, mps")
    demo.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    demo.add_argument("--examples", default=None,
                      help="examples JSON ([{image, instruction}, ...], paths relative to it; default: the "
                           "model folder's examples.json)")
    demo.add_argument("--scheduler", default=None, help="diffusers scheduler class (default: the model's)")
    demo.set_defaults(func=cmd_demo)


def _add_info_parser(sub, presets: list[str]) -> None:
    info = sub.add_parser("info", help="parameter counts of a preset and the GPU memory an edit needs (built on "
                                       "the meta device)", parents=[_verbose_flag()])
    info.add_argument("--preset", default="7b", choices=presets)
    info.add_argument("--json", action="store_true")
    info.set_defaults(func=cmd_info)


USER_ERRORS = (OSError, ValueError, ImportError, RuntimeError, LookupError)
"""Exceptions a user's input or machine can cause (missing or broken files, bad values, missing packages,
non-finite outputs): shown as one ``error:`` line. Anything else is a bug and keeps its traceback."""


def main(argv: list[str] | None = None) -> int:
    from .devices import CLIError

    _offline()
    args = build_parser().parse_args(argv)
    verbose = getattr(args, "verbose", False)
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted\n")
        return 130
    except (CLIError, *USER_ERRORS) as exc:
        if verbose:
            raise
        message = str(exc) or type(exc).__name__
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message = f"{exc.filename}: {message}"
        plain = (CLIError, ValueError, FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
        sys.stderr.write(f"error: {message}" + ("" if isinstance(exc, plain) else " (-v shows the traceback)")
                         + "\n")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
