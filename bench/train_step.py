"""Training-step throughput per SmartEdit stage vs a plain InstructPix2Pix step with the same UNet, and data-loader
throughput vs what training consumes — side by side in one run, at the tiny preset (CPU by default).

    python bench/train_step.py                          # table on stdout, JSON in bench/results/train_step.json
    python bench/train_step.py --steps 20 --rounds 3 --batch-size 8 --workers 0 2 --output out.json

Variants (each a full forward + backward + AdamW step on pre-collated batches of generated data):

* ``ip2p``    — InstructPix2Pix: frozen CLIP text encoder on the instruction → UNet (same config as SmartEdit's),
  VAE latents, DDPM noise, the same CFG dropout, MSE; trains the UNet.
* ``stage1``  — LLaVA (frozen) + Q-Former + new token rows on captions; LM CE + MSE to CLIP-text states.
* ``stage2a`` — MLLM-SD: + LoRA + the whole UNet on edit pairs; LM CE + diffusion MSE.
* ``stage2b`` — SmartEdit: stage 2a + BIM.

Variants are measured in interleaved rounds (ip2p, stage1, stage2a, stage2b, ip2p, …) so that machine-load drift
hits all of them alike; the median round is reported. The data loader (:mod:`smartedit.data.loader`: mixture draw,
PNG decode, resize, tokenisation, collation) is timed alone for each ``--workers`` value.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F

logger = logging.getLogger("bench.train_step")


def _shapes_sources(families: dict[str, str], n: int) -> dict:
    """Generated ShapesWorld samples (smartedit.shapes.world) per source name."""
    from smartedit.data.sources import open_source

    return {name: open_source(f"shapes:{family}:{n}") for name, family in families.items()}


class IP2PStep:
    """A plain InstructPix2Pix training step with SmartEdit's UNet config and CLIP-text conditioning."""

    def __init__(self, config, clip, lr: float):
        from smartedit.unet import build_noise_scheduler, build_unet, build_vae

        torch.manual_seed(0)
        self.config = config
        self.unet = build_unet(config.unet).train()
        self.vae = build_vae(config.vae).requires_grad_(False).eval()
        self.scheduler = build_noise_scheduler(config.scheduler)
        self.clip = clip
        self.null = clip.null_embedding()
        self.opt = torch.optim.AdamW(self.unet.parameters(), lr=lr)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.unet.parameters())

    def step(self, batch: dict, generator: torch.Generator) -> float:
        from smartedit.cfg import apply_dropout, sample_dropout

        context = self.clip(batch["instructions"])  # [B, 77, D]
        with torch.no_grad():
            latents = self.vae.encode(batch["target_images"]).latent_dist.sample(generator)
            latents = latents * self.config.vae.scaling_factor
            source = self.vae.encode(batch["source_images"]).latent_dist.mode()
        noise = torch.randn(latents.shape, generator=generator)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator)
        noisy = self.scheduler.add_noise(latents, noise, t)
        drops = sample_dropout(latents.shape[0], self.config.cfg_dropout_prob, generator=generator)
        context, source = apply_dropout(context, self.null, source, drops)
        pred = self.unet(torch.cat([noisy, source], dim=1), t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, noise)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return float(loss.detach())


class StageStep:
    """One SmartEdit stage: StageModule + AdamW over the stage's parameter groups (what the trainer optimises)."""

    def __init__(self, stage: str, clip, lr: float):
        from smartedit.config import preset
        from smartedit.model import SmartEditModel
        from smartedit.train.stage_model import StageModule, prepare_stage_model

        model = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0)
        prepare_stage_model(model, stage, seed=0)
        if stage == "stage1":
            with torch.no_grad():
                model.null_text_embedding.copy_(clip.null_embedding())
        self.module = StageModule(model, stage).train()
        self.clip = clip if stage == "stage1" else None
        groups = self.module.param_groups(0.0)
        self.params = [p for g in groups for p in g["params"]]
        self.opt = torch.optim.AdamW(groups, lr=lr)

    def trainable(self) -> int:
        return sum(p.numel() for p in self.params)

    def step(self, batch: dict, generator: torch.Generator) -> float:
        kwargs = {"text_target": self.clip(batch["captions"])} if self.clip is not None else {}
        out = self.module(batch, generator=generator, **kwargs)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.opt.step()
        return float(out["loss"].detach())


def _batches(config, tokenizer, stage_data: dict, batch_size: int, count: int) -> list[dict]:
    from smartedit.data.collate import SampleCollator
    from smartedit.data.loader import StepBatches

    ratios = {k: 1.0 for k in stage_data}
    sb = StepBatches(stage_data, ratios, SampleCollator(config, tokenizer), batch_size, seed=0)
    out = []
    for k in range(count):
        batch = sb[k]
        samples, _ = sb.draw(k)
        batch["instructions"] = [s.instruction or s.caption or "edit" for s in samples]
        out.append(batch)
    return out


def _time_steps(runner, batches: list[dict], steps: int, warmup: int) -> float:
    """Seconds per step (after ``warmup`` untimed steps)."""
    for i in range(warmup):
        runner.step(batches[i % len(batches)], torch.Generator().manual_seed(i))
    start = time.perf_counter()
    for i in range(steps):
        runner.step(batches[(warmup + i) % len(batches)], torch.Generator().manual_seed(warmup + i))
    return (time.perf_counter() - start) / steps


def loader_throughput(config, tokenizer, sources: dict, batch_size: int, workers: int, batches: int) -> float:
    """Samples per second the training data loader delivers (stage-2 mixture), excluding worker start-up."""
    from smartedit.data.collate import SampleCollator
    from smartedit.data.loader import StepBatches, build_loader

    sb = StepBatches(sources, {k: 1.0 for k in sources}, SampleCollator(config, tokenizer), batch_size, seed=0)
    it = iter(build_loader(sb, 0, batches + 2, num_workers=workers))
    next(it)
    next(it)  # workers started, first batches ready
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch_size / (time.perf_counter() - start)


def run(args) -> dict:
    from smartedit.config import preset
    from smartedit.model import TINY_TOKENIZER, load_tokenizer
    from smartedit.prompt import add_smartedit_tokens
    from smartedit.train.clip_text import ClipTextTarget, build_tiny_clip_text

    torch.set_num_threads(args.threads)
    config = preset("tiny", **{"bim.enabled": False})
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    add_smartedit_tokens(tokenizer, config.mllm.num_image_tokens, config.mllm.vocab_size)
    with tempfile.TemporaryDirectory() as tmp:
        clip = ClipTextTarget(build_tiny_clip_text(os.path.join(tmp, "clip"), config.qformer.hidden_size))
    edit_sources = _shapes_sources({"ip2p": "simple", "reason": "reasoning", "seg": "perception"}, 64)
    caption_sources = _shapes_sources({"cc12m": "caption"}, 64)
    n = args.warmup + args.steps
    edit_batches = _batches(config, tokenizer, edit_sources, args.batch_size, n)
    caption_batches = _batches(config, tokenizer, caption_sources, args.batch_size, n)

    runners = {"ip2p": (IP2PStep(config, clip, args.lr), edit_batches),
               "stage1": (StageStep("stage1", clip, args.lr), caption_batches),
               "stage2a": (StageStep("stage2a", clip, args.lr), edit_batches),
               "stage2b": (StageStep("stage2b", clip, args.lr), edit_batches)}
    times: dict[str, list[float]] = {k: [] for k in runners}
    for r in range(args.rounds):
        for name, (runner, batches) in runners.items():
            times[name].append(_time_steps(runner, batches, args.steps, args.warmup if r == 0 else 1))
            logger.info("round %d %s: %.1f ms/step", r, name, 1000 * times[name][-1])
    base = statistics.median(times["ip2p"])
    results = {}
    for name, (runner, _) in runners.items():
        sec = statistics.median(times[name])
        results[name] = {"ms_per_step": 1000 * sec, "samples_per_s": args.batch_size / sec,
                         "relative_to_ip2p": (args.batch_size / sec) / (args.batch_size / base),
                         "trainable_params": runner.trainable(), "rounds_ms": [1000 * t for t in times[name]]}
    mixture = _shapes_sources({"ip2p": "simple", "reason": "reasoning", "seg": "perception", "chat": "chat"}, 64)
    loader = {str(w): loader_throughput(config, tokenizer, mixture, args.batch_size, w, args.loader_batches)
              for w in args.workers}
    slowest = min(r["samples_per_s"] for k, r in results.items() if k != "ip2p")
    return {"device": "cpu", "threads": args.threads, "batch_size": args.batch_size, "steps": args.steps,
            "rounds": args.rounds, "resolution": config.resolution, "torch": torch.__version__,
            "results": results,
            "loader_samples_per_s": loader,
            "loader_vs_slowest_stage": {w: v / slowest for w, v in loader.items()}}


def format_table(report: dict) -> str:
    lines = [f"training step, tiny preset, batch {report['batch_size']}, {report['resolution']} px, "
             f"{report['threads']} thread(s), median of {report['rounds']} round(s) × {report['steps']} steps",
             "", f"{'variant':<10}{'ms/step':>10}{'samples/s':>12}{'vs ip2p':>10}{'trainable':>14}"]
    for name, r in report["results"].items():
        lines.append(f"{name:<10}{r['ms_per_step']:>10.1f}{r['samples_per_s']:>12.2f}{r['relative_to_ip2p']:>9.2f}x"
                     f"{r['trainable_params']:>14,}")
    lines += ["", f"{'data loader':<22}{'samples/s':>12}{'vs slowest stage':>18}"]
    for w, v in report["loader_samples_per_s"].items():
        lines.append(f"{'workers=' + w:<22}{v:>12.1f}{report['loader_vs_slowest_stage'][w]:>17.1f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=10, help="timed steps per variant and round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", type=int, default=max(1, min(4, os.cpu_count() or 1)))
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--loader-batches", type=int, default=20)
    p.add_argument("--output", default=os.path.join("bench", "results", "train_step.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    report = run(args)
    print(format_table(report))
    os.makedirs(os.path.dirname(args.output) or ".", exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
    print(f"\nwrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
