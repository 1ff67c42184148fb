"""Edit latency of SmartEditPipeline vs diffusers' StableDiffusionInstructPix2PixPipeline, side by side.

Both pipelines share the same UNet, VAE, scheduler configuration, steps and resolution; diffusers' pipeline gets
precomputed prompt embeddings (no text encoder), ours computes its whole condition (MLLM → Q-Former → BIM) once per
edit and adds the BIM feature through its conv_in hook. Runs are interleaved and the median of ``--repeats`` is
reported. Also: latency vs steps and vs resolution, and batch-8 throughput vs 8 single edits.

    python bench/edit_latency.py                      # tiny preset on CPU
    python bench/edit_latency.py --preset 7b --device cuda --dtype bfloat16   # 7B-shaped random model on a GPU
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time

import numpy as np
import torch

logger = logging.getLogger("bench.edit_latency")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(fn, device: str) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def build(preset_name: str, device: str, dtype: torch.dtype):
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    from smartedit.config import preset
    from smartedit.model import SmartEditModel
    from smartedit.pipeline import SmartEditPipeline

    cfg = preset(preset_name)
    if preset_name == "tiny":
        model = SmartEditModel.from_config(cfg, dtype=dtype, device=device)
    else:  # random weights of the real shapes, created on the device in the target dtype (no float32 copy first;
        # no tokenizer shipped: use tiny's)
        from smartedit.model import TINY_TOKENIZER, load_tokenizer

        model = SmartEditModel.from_config(cfg.replace(**{"mllm.vocab_size": 1024}), load_tokenizer(TINY_TOKENIZER),
                                           dtype=dtype, device=device)
    model = model.eval()
    ours = SmartEditPipeline(model)
    ref = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(model.noise_scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    for p in (ours, ref):
        p.set_progress_bar_config(disable=True)
    return model, ours, ref


def run(args) -> dict:
    dtype = getattr(torch, args.dtype)
    model, ours, ref = build(args.preset, args.device, dtype)
    from PIL import Image

    res = args.resolution or model.config.resolution
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (res, res, 3), dtype=np.uint8))
    instruction = "remove the smaller cup"
    embeds = model.encode_condition(torch.rand(1, 3, res, res, device=args.device, dtype=torch.float32),
                                    [instruction]).context.detach()

    def ours_edit(steps=args.steps, resolution=res, n=1):
        ours([image] * n, instruction, num_inference_steps=steps, seed=0, resolution=resolution,
             output_type="np")

    def ref_edit(steps=args.steps, resolution=res, n=1):
        img = image if resolution == res else image.resize((resolution, resolution))
        ref(image=[img] * n, prompt_embeds=embeds.expand(n, -1, -1), negative_prompt_embeds=model.null_text_embedding.expand(n, -1, -1),
            num_inference_steps=steps, generator=torch.Generator().manual_seed(0), output_type="np")

    results: dict = {"preset": args.preset, "device": args.device, "dtype": args.dtype, "steps": args.steps,
                     "resolution": res, "threads": torch.get_num_threads(), "repeats": args.repeats}
    ours_edit(steps=2), ref_edit(steps=2)  # warm-up
    t_ours, t_ref = [], []
    for _ in range(args.repeats):  # interleaved, so drift hits both alike
        t_ref.append(_timed(ref_edit, args.device))
        t_ours.append(_timed(ours_edit, args.device))
    med_ours, med_ref = statistics.median(t_ours), statistics.median(t_ref)
    results["edit"] = {"ours_s": med_ours, "diffusers_ip2p_s": med_ref, "overhead_ratio": med_ours / med_ref,
                       "ours_all_s": t_ours, "diffusers_all_s": t_ref}

    results["vs_steps"] = []
    for steps in args.steps_list:
        o = statistics.median(_timed(lambda: ours_edit(steps=steps), args.device) for _ in range(args.repeats))
        r = statistics.median(_timed(lambda: ref_edit(steps=steps), args.device) for _ in range(args.repeats))
        results["vs_steps"].append({"steps": steps, "ours_s": o, "diffusers_ip2p_s": r, "ratio": o / r})
    results["vs_resolution"] = []
    for r_ in args.resolutions:
        o = statistics.median(_timed(lambda: ours_edit(resolution=r_), args.device) for _ in range(args.repeats))
        r = statistics.median(_timed(lambda: ref_edit(resolution=r_), args.device) for _ in range(args.repeats))
        results["vs_resolution"].append({"resolution": r_, "ours_s": o, "diffusers_ip2p_s": r, "ratio": o / r})

    single = statistics.median(_timed(lambda: [ours_edit() for _ in range(8)], args.device)
                               for _ in range(max(1, args.repeats // 2)))
    batch8 = statistics.median(_timed(lambda: ours_edit(n=8), args.device) for _ in range(max(1, args.repeats // 2)))
    results["batch8"] = {"eight_single_edits_s": single, "one_batch_of_8_s": batch8, "speedup": single / batch8,
                         "images_per_s_single": 8 / single, "images_per_s_batch": 8 / batch8}
    return results


def table(r: dict) -> str:
    e = r["edit"]
    lines = [f"edit latency, preset {r['preset']} on {r['device']} ({r['dtype']}, {r['threads']} threads), "
             f"{r['steps']} steps at {r['resolution']} px, median of {r['repeats']}",
             f"  SmartEditPipeline          {e['ours_s'] * 1000:9.1f} ms",
             f"  diffusers IP2P (same UNet) {e['diffusers_ip2p_s'] * 1000:9.1f} ms",
             f"  overhead ratio             {e['overhead_ratio']:9.3f}", "",
             f"  {'steps':>8} {'ours ms':>10} {'ip2p ms':>10} {'ratio':>7}"]
    lines += [f"  {x['steps']:>8} {x['ours_s'] * 1e3:>10.1f} {x['diffusers_ip2p_s'] * 1e3:>10.1f} {x['ratio']:>7.3f}"
              for x in r["vs_steps"]]
    lines += ["", f"  {'res':>8} {'ours ms':>10} {'ip2p ms':>10} {'ratio':>7}"]
    lines += [f"  {x['resolution']:>8} {x['ours_s'] * 1e3:>10.1f} {x['diffusers_ip2p_s'] * 1e3:>10.1f} "
              f"{x['ratio']:>7.3f}" for x in r["vs_resolution"]]
    b = r["batch8"]
    lines += ["", f"  8 single edits {b['eight_single_edits_s']:.2f} s, one batch of 8 {b['one_batch_of_8_s']:.2f} s: "
                  f"speed-up {b['speedup']:.2f}x ({b['images_per_s_batch']:.1f} vs {b['images_per_s_single']:.1f} "
                  f"images/s)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=["tiny", "7b", "13b"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps-list", type=int, nargs="*", default=[10, 25, 50])
    parser.add_argument("--resolutions", type=int, nargs="*", default=[64, 128])
    parser.add_argument("--out", default=os.path.join("bench", "results", "edit_latency.json"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    results = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    sys.stdout.write(table(results) + f"\n\nwrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
