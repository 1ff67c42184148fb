"""Peak memory of loading a model folder: SmartEditModel.from_pretrained (meta build, tensors streamed one at a time
onto the device in the target dtype) vs reading every file into host memory and then casting (what it did before),
side by side.

A fake sharded checkpoint of a 7B-shaped model is written first (random tensors, shard by shard, never the whole
model in memory); ``--set`` scales it down (default: the 7B preset with 2 of its 32 LLM layers and 2 of its 24 vision
layers, every tensor at its 7B size). Each load runs in a fresh process; the figures are the peak resident set
(VmHWM) above the process's size before loading, and on CUDA the peak device memory. The full 7B is also built on
the meta device, and its size in each dtype reported. "peak host" is the private (anonymous) memory, sampled; the
resident set including the memory-mapped files is reported too (that part is page cache, shared between processes).

    python bench/load_memory.py                                        # CPU, 7B-shaped (2 LLM layers), fp32 files
    python bench/load_memory.py --device cuda --dtype bfloat16
    python bench/load_memory.py --set mllm.num_hidden_layers=1 --set unet.block_out_channels=[32,64] ...
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

import torch

DEFAULT_SET = ["mllm.num_hidden_layers=2", "vision.num_hidden_layers=2"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _rss_kb(field: str) -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _config(preset_name: str, overrides: list[str]):
    from smartedit.config import preset
    from smartedit.train.config import parse_override

    return preset(preset_name, **dict(parse_override(o) for o in overrides))


def _meta_model(config):
    from accelerate import init_empty_weights

    from smartedit.model import SmartEditModel

    with init_empty_weights(include_buffers=False):
        return SmartEditModel(config)


def write_checkpoint(config, directory: str, file_dtype: torch.dtype, shard_bytes: int) -> int:
    """A sharded save_pretrained folder of random tensors (one shard in memory at a time); returns the bytes."""
    from safetensors.torch import save_file

    from smartedit.model import FLOAT32_BUFFERS, WEIGHTS_INDEX_NAME

    os.makedirs(directory, exist_ok=True)
    config.save(directory)
    model = _meta_model(config)
    g = torch.Generator().manual_seed(0)
    shard, size, total, index, n = {}, 0, 0, {}, 0

    def flush():
        nonlocal shard, size, n
        if shard:
            n += 1
            name = f"model-{n:05d}.safetensors"
            save_file(shard, os.path.join(directory, name), metadata={"format": "pt"})
            index.update({k: name for k in shard})
            shard, size = {}, 0

    for key, ref in model.state_dict().items():
        dtype = torch.float32 if key.endswith(FLOAT32_BUFFERS) else file_dtype
        tensor = (torch.randn(ref.shape, generator=g) * 0.02).to(dtype) if ref.is_floating_point() \
            else torch.zeros(ref.shape, dtype=ref.dtype)
        nbytes = tensor.numel() * tensor.element_size()
        if size and size + nbytes > shard_bytes:
            flush()
        shard[key] = tensor
        size += nbytes
        total += nbytes
    flush()
    with open(os.path.join(directory, WEIGHTS_INDEX_NAME), "w", encoding="utf-8") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": index}, f)
    return total


class _AnonPeak:
    """Samples the private (anonymous) resident memory every few ms: the memory a load really needs. (VmHWM also
    counts the mapped safetensors files, page cache shared by every process and reclaimable.)"""

    def __init__(self):
        import threading

        self.peak = _rss_kb("RssAnon")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_kb("RssAnon"))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _rss_kb("RssAnon"))


def child(mode: str, directory: str, dtype: torch.dtype, device: str) -> dict:
    """One load in this (fresh) process: ``stream`` (from_pretrained) or ``eager`` (read everything, then cast)."""
    from smartedit.model import SmartEditModel, load_weights

    base, base_anon = _rss_kb("VmRSS"), _rss_kb("RssAnon")
    sampler = _AnonPeak()
    if device.startswith("cuda"):
        torch.cuda.init()
        torch.cuda.reset_peak_memory_stats()
    if mode == "stream":
        model = SmartEditModel.from_pretrained(directory, device=device, dtype=dtype)
    else:
        from smartedit.config import SmartEditConfig

        state = load_weights(directory)
        model = _meta_model(SmartEditConfig.load(directory))
        model.load_state_dict(state, strict=True, assign=True)
        del state
        model = model.to(dtype).to(device)
    out = {"mode": mode, "peak_host_gb": (sampler.stop() - base_anon) / 2**20,
           "peak_rss_with_mapped_files_gb": (_rss_kb("VmHWM") - base) / 2**20,
           "model_gb": sum(p.numel() * p.element_size() for p in model.parameters()) / 2**30,
           "dtype": str(next(model.unet.parameters()).dtype).removeprefix("torch.")}
    if device.startswith("cuda"):
        out["peak_device_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def run(args) -> dict:
    full = _meta_model(_config(args.preset, []))
    n_full = sum(p.numel() for p in full.parameters())
    del full
    config = _config(args.preset, args.set)
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        folder = os.path.join(tmp, "model")
        written = write_checkpoint(config, folder, DTYPES[args.file_dtype], int(args.shard_gb * 2**30))
        loads = []
        for mode in ("stream", "eager"):
            cmd = [sys.executable, os.path.abspath(__file__), "--child", mode, "--dir", folder, "--dtype", args.dtype,
                   "--device", args.device]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"{mode} load failed:\n{proc.stderr[-3000:]}")
            loads.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    bytes_per = DTYPES[args.dtype].itemsize
    return {"preset": args.preset, "scaled_by": args.set, "file_dtype": args.file_dtype, "dtype": args.dtype,
            "device": args.device, "checkpoint_gb": written / 2**30, "loads": loads,
            "full_preset_parameters": n_full, "full_preset_gb": {k: n_full * v.itemsize / 2**30
                                                                 for k, v in DTYPES.items()},
            "full_preset_in_dtype_gb": n_full * bytes_per / 2**30}


def table(r: dict) -> str:
    lines = [f"loading a {r['preset']}-shaped folder scaled by {r['scaled_by']} ({r['checkpoint_gb']:.2f} GB of "
             f"{r['file_dtype']} files) into {r['dtype']} on {r['device']}",
             f"  {'loader':<34} {'peak host GB':>12} {'+ mapped files':>14} {'peak device GB':>15} {'model GB':>9} "
             f"{'host/model':>10}"]
    names = {"stream": "from_pretrained (streamed)", "eager": "read all files, then cast (before)"}
    for x in r["loads"]:
        dev = f"{x['peak_device_gb']:.2f}" if "peak_device_gb" in x else "-"
        lines.append(f"  {names[x['mode']]:<34} {x['peak_host_gb']:>12.2f} {x['peak_rss_with_mapped_files_gb']:>14.2f} "
                     f"{dev:>15} {x['model_gb']:>9.2f} "
                     f"{x['peak_host_gb'] / x['model_gb']:>10.2f}")
    s, e = r["loads"]
    lines += ["", f"  full {r['preset']} preset: {r['full_preset_parameters'] / 1e9:.2f} B parameters (built on the meta "
                  f"device), {r['full_preset_in_dtype_gb']:.1f} GB in {r['dtype']}; at the ratios above its load "
                  f"peaks at ~{s['peak_host_gb'] / s['model_gb'] * r['full_preset_in_dtype_gb']:.1f} GB host "
                  f"(streamed) vs ~{e['peak_host_gb'] / e['model_gb'] * r['full_preset_in_dtype_gb']:.1f} GB "
                  f"(before)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="7b", choices=["tiny", "7b", "13b"])
    parser.add_argument("--set", action="append", default=None, metavar="KEY=VALUE",
                        help=f"config overrides that scale the model down (default: {' '.join(DEFAULT_SET)})")
    parser.add_argument("--file-dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--dtype", default="bfloat16", choices=sorted(DTYPES))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shard-gb", type=float, default=1.0)
    parser.add_argument("--tmp", default=None, help="folder for the temporary checkpoint (default: the system's)")
    parser.add_argument("--out", default=os.path.join("bench", "results", "load_memory.json"))
    parser.add_argument("--child", choices=["stream", "eager"], help=argparse.SUPPRESS)
    parser.add_argument("--dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        sys.stdout.write(json.dumps(child(args.child, args.dir, DTYPES[args.dtype], args.device)) + "\n")
        return 0
    if args.set is None:
        args.set = list(DEFAULT_SET)
    results = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    sys.stdout.write(table(results) + f"\n\nwrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
