"""The first GPU run, in one script (a few minutes on one GPU): what the CPU suite cannot see.

1. the shipped SmartEdit-tiny edits in bfloat16 and float16 (finite, close to its float32 edit);
2. both offload modes (model CPU offload, LLM offload) give the edit made without offload;
3. a 3-step tiny stage 2b trains under ZeRO-2 and under ZeRO-3 on one device (precision ``auto``: bf16 on GPUs);
4. a 7B-shaped random model, built on the device in bfloat16, edits at 256 px: latency and peak memory side by side
   with diffusers' StableDiffusionInstructPix2PixPipeline running the same UNet (``--preset tiny``: the tiny model).

Every check is reported (ok / FAILED with its error) and written to ``--out`` as JSON; exit 1 if one failed.
On CPU (what CI runs): ``python bench/gpu_check.py --device cpu --preset tiny``.

    python bench/gpu_check.py                      # CUDA, the 7B-shaped edit included
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
import traceback

import numpy as np
import torch

logger = logging.getLogger("bench.gpu_check")
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
SHIPPED = os.path.join(REPO, "checkpoints", "smartedit-tiny")
EXAMPLE = os.path.join(REPO, "checkpoints", "examples", "shapes.png")
INSTRUCTION = "remove the red circle"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gb(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def _edit(pipe, steps: int, **kwargs) -> np.ndarray:
    from PIL import Image

    image = Image.open(EXAMPLE).convert("RGB")
    return pipe(prompt=INSTRUCTION, image=image, num_inference_steps=steps, seed=0, output_type="np",
                **kwargs).images[0]


def _pipeline(device: torch.device, dtype: torch.dtype):
    from smartedit.model import SmartEditModel
    from smartedit.pipeline import SmartEditPipeline

    pipe = SmartEditPipeline(SmartEditModel.from_pretrained(SHIPPED, device=device, dtype=dtype))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def check_half_precision_edits(device: torch.device, steps: int) -> dict:
    reference = _edit(_pipeline(device, torch.float32), steps)
    out = {}
    for name, dtype in (("bfloat16", torch.bfloat16), ("float16", torch.float16)):
        start = time.perf_counter()
        edited = _edit(_pipeline(device, dtype), steps)
        out[name] = {"finite": bool(np.isfinite(edited).all()), "s": time.perf_counter() - start,
                     "max_abs_diff_vs_fp32": float(np.abs(edited - reference).max()),
                     "mean_abs_diff_vs_fp32": float(np.abs(edited - reference).mean())}
        if not out[name]["finite"] or out[name]["mean_abs_diff_vs_fp32"] > 0.05:
            raise AssertionError(f"{name} edit differs from the float32 one: {out[name]}")
    return out


def check_offload(device: torch.device, steps: int) -> dict:
    reference = _edit(_pipeline(device, torch.float32), steps)
    out = {}
    for mode in ("model_cpu_offload", "llm_offload_cpu"):
        pipe = _pipeline(device, torch.float32)
        if mode == "model_cpu_offload":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_llm_offload("cpu")
        _peak_reset(device)
        edited = _edit(pipe, steps)
        diff = float(np.abs(edited - reference).max())
        out[mode] = {"max_abs_diff_vs_no_offload": diff, "peak_device_gb": _peak_gb(device)}
        if diff > 1e-3:
            raise AssertionError(f"{mode}: the edit differs from the one without offload (max |diff| {diff})")
    return out


def check_stage2b(device: torch.device, zero: str, work: str) -> dict:
    from smartedit.train.metrics import read_jsonl
    from smartedit.train.presets import experiment_preset
    from smartedit.train.trainer import Trainer

    ds = zero
    if zero == "zero3":  # (the tiny model is smaller than ZeRO-3's reuse window: see tests/test_train_stages.py)
        cfg = json.loads(open(os.path.join(REPO, "train", "ds", "zero3.json")).read())
        cfg["zero_optimization"]["stage3_max_reuse_distance"] = 0
        ds = os.path.join(work, "zero3.json")
        with open(ds, "w", encoding="utf-8") as f:
            json.dump(cfg, f)
    out_dir = os.path.join(work, f"stage2b_{zero}")
    cfg = experiment_preset("tiny", "stage2b", init="random:tiny", output_dir=out_dir, max_steps=3, deepspeed=ds,
                            **{"log.progress": False, "checkpoint.every": 3})
    start = time.perf_counter()
    _peak_reset(device)
    trainer = Trainer(cfg)
    try:
        result = trainer.setup().train()
    finally:
        trainer.close()
    metrics = read_jsonl(result.metrics_path)
    if [m["step"] for m in metrics] != [1, 2, 3] or any(m["skipped"] for m in metrics):
        raise AssertionError(f"stage 2b under {zero}: {metrics}")
    return {"s": time.perf_counter() - start, "loss": [m["loss"] for m in metrics], "precision": trainer.precision,
            "peak_device_gb": _peak_gb(device)}


def _edit_latency_module():
    spec = importlib.util.spec_from_file_location("bench_edit_latency", os.path.join(HERE, "edit_latency.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_large_edit(device: torch.device, preset_name: str, steps: int, repeats: int) -> dict:
    from PIL import Image

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    _peak_reset(device)
    start = time.perf_counter()
    model, ours, ref = _edit_latency_module().build(preset_name, str(device), dtype)
    build_s = time.perf_counter() - start
    weights_gb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30
    res = 256 if preset_name != "tiny" else model.config.resolution
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (res, res, 3), dtype=np.uint8))
    with torch.no_grad():
        embeds = model.encode_condition(torch.rand(1, 3, res, res, device=device), [INSTRUCTION]).context
    null = model.null_text_embedding.to(embeds.dtype)

    def ours_edit():
        ours(prompt=INSTRUCTION, image=image, num_inference_steps=steps, seed=0, resolution=res, output_type="np")

    def ref_edit():
        ref(image=image, prompt_embeds=embeds, negative_prompt_embeds=null, num_inference_steps=steps,
            generator=torch.Generator().manual_seed(0), output_type="np")

    peaks, times = {}, {"ours": [], "ref": []}
    for name, fn in (("ours", ours_edit), ("ref", ref_edit)):  # warm-up, and each one's peak memory
        _peak_reset(device)
        fn()
        _sync(device)
        peaks[name] = _peak_gb(device)
    for _ in range(repeats):  # interleaved
        for name, fn in (("ref", ref_edit), ("ours", ours_edit)):
            _sync(device)
            t = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - t)
    ours_s, ref_s = float(np.median(times["ours"])), float(np.median(times["ref"]))
    return {"preset": preset_name, "dtype": str(dtype).removeprefix("torch."), "resolution": res, "steps": steps,
            "parameters_b": sum(p.numel() for p in model.parameters()) / 1e9, "weights_gb": weights_gb,
            "build_s": build_s, "ours_s": ours_s, "diffusers_ip2p_s": ref_s, "latency_ratio": ours_s / ref_s,
            "peak_device_gb_ours": peaks["ours"], "peak_device_gb_diffusers_ip2p": peaks["ref"]}


def run(args) -> dict:
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but no CUDA device is visible; run with --device cpu --preset tiny")
    torch.manual_seed(0)
    results: dict = {"device": str(device), "gpu": torch.cuda.get_device_name(device) if device.type == "cuda"
                     else None, "torch": torch.__version__, "checks": {}}
    with tempfile.TemporaryDirectory() as work:
        checks = [("half_precision_edits", lambda: check_half_precision_edits(device, args.steps)),
                  ("offload", lambda: check_offload(device, args.steps)),
                  ("stage2b_zero2", lambda: check_stage2b(device, "zero2", work)),
                  ("stage2b_zero3", lambda: check_stage2b(device, "zero3", work)),
                  (f"edit_{args.preset}", lambda: check_large_edit(device, args.preset, args.large_steps,
                                                                   args.repeats))]
        for name, fn in checks:
            if args.only and name not in args.only:
                continue
            start = time.perf_counter()
            try:
                results["checks"][name] = {"ok": True, **fn()}
            except Exception as exc:  # every check is reported, the others still run
                logger.error("%s failed:\n%s", name, traceback.format_exc())
                results["checks"][name] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            results["checks"][name]["wall_s"] = time.perf_counter() - start
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return results


def table(r: dict) -> str:
    lines = [f"gpu_check on {r['device']}{' (' + r['gpu'] + ')' if r['gpu'] else ''}, torch {r['torch']}"]
    for name, c in r["checks"].items():
        status = "ok" if c["ok"] else "FAILED"
        lines.append(f"  {name:<22} {status:<7} {c['wall_s']:7.1f} s")
        if not c["ok"]:
            lines.append(f"      {c['error']}")
            continue
        if name == "half_precision_edits":
            for dt in ("bfloat16", "float16"):
                lines.append(f"      {dt}: mean |diff| vs fp32 {c[dt]['mean_abs_diff_vs_fp32']:.4f}, max "
                             f"{c[dt]['max_abs_diff_vs_fp32']:.3f}")
        elif name == "offload":
            for mode in ("model_cpu_offload", "llm_offload_cpu"):
                peak = c[mode]["peak_device_gb"]
                lines.append(f"      {mode}: max |diff| vs no offload {c[mode]['max_abs_diff_vs_no_offload']:.2e}"
                             + (f", peak device {peak:.3f} GB" if peak is not None else ""))
        elif name.startswith("stage2b"):
            lines.append(f"      precision {c['precision']}, losses " + ", ".join(f"{x:.4f}" for x in c["loss"]))
        elif name.startswith("edit_"):
            lines.append(f"      {c['parameters_b']:.2f} B parameters ({c['weights_gb']:.1f} GB {c['dtype']}, built in "
                         f"{c['build_s']:.1f} s), {c['steps']} steps at {c['resolution']} px")
            lines.append(f"      SmartEditPipeline {c['ours_s'] * 1e3:8.1f} ms   diffusers IP2P (same UNet) "
                         f"{c['diffusers_ip2p_s'] * 1e3:8.1f} ms   ratio {c['latency_ratio']:.3f}")
            if c["peak_device_gb_ours"] is not None:
                lines.append(f"      peak device memory: SmartEdit {c['peak_device_gb_ours']:.2f} GB, diffusers IP2P "
                             f"{c['peak_device_gb_diffusers_ip2p']:.2f} GB")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--preset", default="7b", choices=["tiny", "7b", "13b"],
                        help="model of the large edit (tiny on CPU)")
    parser.add_argument("--steps", type=int, default=10, help="denoising steps of the tiny edits")
    parser.add_argument("--large-steps", type=int, default=20, help="denoising steps of the large edit")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="run only these checks")
    parser.add_argument("--out", default=os.path.join("bench", "results", "gpu_check.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    results = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    sys.stdout.write(table(results) + f"\n\nwrote {args.out}\n")
    return 0 if all(c["ok"] for c in results["checks"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
