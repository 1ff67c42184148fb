"""Throughput of the training data path: mixture loader + SampleCollator at 256 px with DataLoader workers.

Measures samples/s of the whole path a training step waits on: mixture draw → parquet row read → image decode →
resize to 256 px → prompt tokenisation → batch. By default it builds a synthetic data root with one source per
stage-2 mixture entry (random 512 px JPEG/PNG images, as the converted datasets store them); ``--data DIR`` runs
it on real converted data instead.

Usage::

    python bench/data_throughput.py                       # 2 workers, 256 px, synthetic data
    python bench/data_throughput.py --data data/ --workers 2 4 --batches 50 --json-out throughput.json

Prints a table and writes the numbers as JSON (``--json-out``).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

logger = logging.getLogger("bench.data_throughput")


def _png(image, compress_level: int = 1) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=compress_level)  # fast to write; decodes like any PNG
    return buf.getvalue()


def _jpeg(rng: np.random.Generator, size: int) -> bytes:
    from PIL import Image

    # smooth random image (compresses like a photo rather than like noise)
    small = rng.integers(0, 256, (size // 16, size // 16, 3), dtype=np.uint8)
    image = Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def build_synthetic_root(root: str, per_source: int = 64, image_size: int = 512, seed: int = 0) -> dict[str, int]:
    """One shard folder per stage-2 source, filled with synthetic samples of that source's task."""
    from PIL import Image

    from smartedit.data.io import write_samples
    from smartedit.data.mixture_config import DEFAULT_STAGE2_RATIOS
    from smartedit.data.datasets.perception import blend
    from smartedit.data.schema import Sample, decode_image

    rng = np.random.default_rng(seed)
    tasks = {"synthetic_reasoning": "reasoning", "reasonseg": "reasoning", "llava_instruct": "chat",
             "ip2p": "edit", "magicbrush": "edit", "refcoco": "perception", "grefcoco": "perception",
             "cocostuff": "perception"}
    sizes = {}
    for name in DEFAULT_STAGE2_RATIOS:
        task = tasks.get(name, "edit")
        samples = []
        for i in range(per_source):
            source = _jpeg(rng, image_size)
            common = {"id": f"{name}/{i}", "dataset": name, "task": task}
            if task == "chat":
                samples.append(Sample(**common, source_image=source, conversation=[
                    ["What is in the picture?", "A blurry pattern of colours."], ["Is it red?", "Partly."]]))
                continue
            if task == "perception" or name == "reasonseg":
                mask = np.zeros((image_size, image_size), bool)
                mask[image_size // 4: image_size // 2, image_size // 3: 2 * image_size // 3] = True
                target = _png(Image.fromarray(blend(np.array(decode_image(source)), mask, "red")))
            else:
                target = _jpeg(rng, image_size)
            mask_image = None
            if name == "magicbrush":
                m = np.zeros((image_size, image_size), np.uint8)
                m[: image_size // 2] = 255
                mask_image = _png(Image.fromarray(m, "L"))
            samples.append(Sample(**common, instruction=f"make the left object number {i} red and leave the rest",
                                  source_image=source, target_image=target, mask_image=mask_image))
        write_samples(samples, os.path.join(root, name), f"{name}-bench", overwrite=True)
        sizes[name] = per_source
    return sizes


def make_collator(resolution: int):
    from smartedit.config import preset
    from smartedit.data.collate import SampleCollator
    from smartedit.model import TINY_TOKENIZER, load_tokenizer
    from smartedit.prompt import add_smartedit_tokens

    config = preset("tiny", resolution=resolution)
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    add_smartedit_tokens(tokenizer, config.mllm.num_image_tokens, config.mllm.vocab_size)
    return SampleCollator(config, tokenizer, resolution=resolution)


def measure(mixture, collator, workers: int, batch_size: int, batches: int, warmup: int, seed: int) -> dict:
    import torch

    from smartedit.data.loader import mixture_loader

    torch.manual_seed(seed)
    needed = (warmup + batches) * batch_size
    if needed > len(mixture):
        mixture.samples_per_epoch = needed
    loader = mixture_loader(mixture, collator, batch_size=batch_size, num_workers=workers,
                            prefetch_factor=4 if workers else None)
    it = iter(loader)
    start = time.perf_counter()
    for _ in range(warmup):
        next(it)
    t0 = time.perf_counter()
    n = 0
    for _ in range(batches):
        batch = next(it)
        n += batch["input_ids"].shape[0]
    elapsed = time.perf_counter() - t0
    del it
    return {"workers": workers, "batch_size": batch_size, "batches": batches, "samples": n,
            "seconds": round(elapsed, 3), "samples_per_s": round(n / elapsed, 2),
            "startup_and_warmup_s": round(t0 - start, 3),
            "image_shape": list(batch["source_images"].shape[1:])}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/data_throughput.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="converted data root (default: a synthetic one)")
    parser.add_argument("--resolution", type=int, default=256)
    parser.add_argument("--workers", type=int, nargs="+", default=[2], help="DataLoader worker counts to measure")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--batches", type=int, default=25, help="timed batches per setting")
    parser.add_argument("--warmup", type=int, default=3, help="untimed batches first (worker start-up)")
    parser.add_argument("--per-source", type=int, default=24, help="synthetic samples per source")
    parser.add_argument("--image-size", type=int, default=512, help="synthetic image side")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--torch-threads", type=int, default=1,
                        help="torch threads of this process (the 0-worker row decodes here; workers use 1)")
    parser.add_argument("--json-out", default="bench_data_throughput.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(args.torch_threads)
    try:
        result = _run(args)
    finally:
        torch.set_num_threads(threads)
    rows = result["results"]
    lines = [f"data throughput at {args.resolution} px ({result['data']}), {result['cpu_count']} CPUs",
             f"{'workers':>8} {'batch':>6} {'samples':>8} {'seconds':>8} {'samples/s':>10} {'startup s':>10}"]
    for r in rows:
        lines.append(f"{r['workers']:>8} {r['batch_size']:>6} {r['samples']:>8} {r['seconds']:>8.2f} "
                     f"{r['samples_per_s']:>10.1f} {r['startup_and_warmup_s']:>10.2f}")
    sys.stdout.write("\n".join(lines) + "\n")
    if args.json_out:
        with open(args.json_out, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
    return 0


def _run(args: argparse.Namespace) -> dict:
    from smartedit.data.loader import open_mixture

    with tempfile.TemporaryDirectory(prefix="smartedit_bench_") as tmp:
        root = args.data
        if root is None:
            root = tmp
            t = time.perf_counter()
            build_synthetic_root(root, args.per_source, args.image_size, args.seed)
            logger.info("built a synthetic data root (%d samples per source, %d px) in %.1f s", args.per_source,
                        args.image_size, time.perf_counter() - t)
        mixture = open_mixture(root, seed=args.seed, allow_missing=True)
        collator = make_collator(args.resolution)
        rows = [measure(mixture, collator, w, args.batch_size, args.batches, args.warmup, args.seed)
                for w in args.workers]
    return {"benchmark": "data_throughput", "resolution": args.resolution,
            "data": args.data or f"synthetic ({args.per_source}/source, {args.image_size}px)",
            "sources": dict(zip(mixture.names, [round(float(p), 4) for p in mixture.probs])),
            "cpu_count": os.cpu_count(), "torch_threads": args.torch_threads,
            "python": platform.python_version(), "results": rows}


if __name__ == "__main__":
    raise SystemExit(main())
