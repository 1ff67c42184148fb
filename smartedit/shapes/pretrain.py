"""Pretraining ShapesWorld's tiny components from scratch: the parts that SmartEdit-7B borrows from public
checkpoints (SD-1.5's VAE, InstructPix2Pix's CLIP text encoder + UNet, LLaVA) do not exist for ShapesWorld, so
the recipe trains laptop-scale stand-ins first:

* :func:`pretrain_vae` — the ``AutoencoderKL`` (reconstruction L1 + MSE + a tiny KL term, SD's recipe without the
  GAN/LPIPS terms); its ``scaling_factor`` is set to 1 / std of the latents afterwards, as SD's was;
* :func:`pretrain_ip2p` — a CLIP text encoder + InstructPix2Pix UNet trained jointly on simple edits with the
  frozen VAE (the "Stable Diffusion / InstructPix2Pix" of this world and the IP2P-tiny baseline), saved as a
  diffusers ``StableDiffusionInstructPix2PixPipeline`` folder that :func:`smartedit.weights.load_sd` reads; with
  ``objective="regression"`` the same UNet is trained as a one-step regressor (noise-free input, x0 target), the
  non-diffusion control that tells what the data allows;
* :func:`pretrain_llava` — the vision tower + projector + LLaMA of the tiny LLaVA, trained on captions, VQA chat and
  the knowledge Q&A (LLaVA's pretraining + instruction tuning in one), saved as a SmartEdit MLLM state.

Every loop is resumable exactly: all data derive from ``(seed, step, index)``, the noise of a step from
``(seed, step)``, the learning rate from the step; checkpoints (weights + optimizer + step) are written atomically
with the stage trainer's checkpoint module (:mod:`smartedit.train.checkpoint`; why the loop itself is separate:
``_Loop``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ConfigError, ConfigSection, SmartEditConfig, check_numbers
from ..data.collate import sample_rng
from ..train.checkpoint import (checkpoint_name, finalize, list_checkpoints, prune, read_json, staging_dir,
                               write_json, write_manifest)
from ..train.metrics import MetricsLogger
from ..train.rng import derive_seed
from ..train.schedule import lr_factor
from . import world

logger = logging.getLogger(__name__)

PIPELINE_INFO = "smartedit.json"
"""Written into the InstructPix2Pix folders made here: objective, ``diffuse`` (``target`` or ``change``) and ``decode``
(``latent`` or ``residual``, see :class:`smartedit.config.SchedulerConfig`) — read by :func:`smartedit.weights.load_sd` and the IP2P editors."""

__all__ = ["PretrainSettings", "pretrain_vae", "pretrain_ip2p", "pretrain_llava", "vae_psnr", "vae_edit_ceiling",
           "edit_batch", "build_text_encoder"]


@dataclass
class PretrainSettings(ConfigSection):
    """One pretraining loop: steps, batch, AdamW learning rate with linear warm-up + cosine decay, checkpoints."""

    steps: int = 1000
    batch_size: int = 16
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    seed: int = 0
    checkpoint_every: int = 250
    keep_last: int = 2
    log_every: int = 25
    schedule_steps: int = 0
    """Length of the warm-up + cosine learning-rate schedule; 0: ``steps``. Larger than ``steps`` trains the first
    ``steps`` steps of a longer schedule (the result equals that longer run's checkpoint at ``steps``)."""

    def problems(self, prefix: str = "") -> list[str]:
        p = check_numbers(self, prefix, positive_int=("steps", "batch_size", "checkpoint_every", "keep_last",
                                                       "log_every"),
                           nonneg_int=("warmup_steps", "schedule_steps"), positive=("lr",),
                           nonneg=("grad_clip", "weight_decay"))
        if not p and 0 < self.schedule_steps < self.steps:
            p.append(f"{prefix}schedule_steps ({self.schedule_steps}) must be 0 or at least steps ({self.steps})")
        return p

    def validate(self) -> "PretrainSettings":
        problems = self.problems()
        if problems:
            raise ConfigError(problems, "pretraining settings")
        return self


def _trajectory(settings: dict) -> dict:
    """The settings that decide the training trajectory (data, noise, learning rate at every step): a checkpoint
    may be resumed by settings that agree on these, e.g. a shorter run on the same ``schedule_steps``."""
    full = {**PretrainSettings().to_dict(), **settings}
    full["schedule_steps"] = full["schedule_steps"] or full["steps"]
    return {k: v for k, v in full.items() if k not in ("steps", "checkpoint_every", "keep_last", "log_every")}


# ---- the resumable loop ----------------------------------------------------------------------------------------

class _Loop:
    """The pretraining loop: AdamW over ``modules`` in one process, atomic checkpoints (weights + optimizer + step)
    under ``output/checkpoints``, metrics.jsonl.

    Why not the stage trainer (:class:`smartedit.train.trainer.Trainer`): that loop trains a SmartEdit model's
    stage (:mod:`smartedit.train.stage_model`, its losses, DeepSpeed ZeRO and its checkpoint shards, a data mixture
    of ``Sample`` sources); these loops train other networks (a VAE, a CLIP text encoder + UNet, a bare MLLM) on
    batches generated from ``(seed, step)`` with their own losses, and the shipped tiny models were trained by this
    exact arithmetic (torch AdamW, clip-by-norm, the learning rate set per step), which DeepSpeed's optimizer
    wrapper would not reproduce bit for bit. What they share is the checkpoint scheme of
    :mod:`smartedit.train.checkpoint`: staging folder, manifest written last with every file's size and SHA-256 and
    the files a resume reads, one rename, keep-last-N, and a resume that skips checkpoints whose contents do not
    verify."""

    def __init__(self, output: str, modules: dict[str, nn.Module], settings: PretrainSettings, what: str):
        self.output, self.modules, self.s, self.what = output, modules, settings.validate(), what
        self.root = os.path.join(output, "checkpoints")
        params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.seconds_before = 0.0  # training seconds before the resumed checkpoint (counted across resumes)
        self.t0 = time.time()

    def resume(self) -> int:
        found = [(step, path) for step, path in list_checkpoints(self.root, contents=True) if step <= self.s.steps]
        if not found:  # (checkpoints past ``steps`` belong to a longer run on the same schedule)
            return 0
        step, path = found[-1]
        from safetensors.torch import load_file

        info = read_json(os.path.join(path, "state.json"))
        saved = info.get("settings") or {}
        if _trajectory(saved) != _trajectory(self.s.to_dict()):
            raise ValueError(f"{path} was written with different {self.what} settings ({saved}); resume with the "
                             f"same settings (only steps, checkpointing and logging may differ, if the learning-rate "
                             f"schedule keeps its length: see schedule_steps) or start in a new output folder")
        for name, module in self.modules.items():
            module.load_state_dict(load_file(os.path.join(path, f"{name}.safetensors")), strict=True)
        self.optimizer.load_state_dict(torch.load(os.path.join(path, "optimizer.pt"), weights_only=True))
        self.seconds_before = float(info.get("seconds", 0.0))
        logger.info("%s: resumed from %s (step %d)", self.what, path, step)
        return step

    def save(self, step: int) -> None:
        from safetensors.torch import save_file

        os.makedirs(self.root, exist_ok=True)
        stage = staging_dir(self.root, step)
        if os.path.isdir(stage):
            shutil.rmtree(stage)
        os.makedirs(stage)
        for name, module in self.modules.items():
            state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
            save_file(state, os.path.join(stage, f"{name}.safetensors"))
        torch.save(self.optimizer.state_dict(), os.path.join(stage, "optimizer.pt"))
        seconds = self.seconds_before + time.time() - self.t0
        write_json(os.path.join(stage, "state.json"), {"step": step, "settings": self.s.to_dict(), "seconds": seconds})
        write_json(os.path.join(self.output, "train_time.json"), {"step": step, "seconds": round(seconds, 1)})
        write_manifest(stage, {"step": step, "what": self.what},
                       required=("state.json", "optimizer.pt", *(f"{name}.safetensors" for name in self.modules)))
        finalize(stage, os.path.join(self.root, checkpoint_name(step)))
        prune(self.root, self.s.keep_last)

    def run(self, step_fn: Callable[[int, torch.Generator], dict[str, torch.Tensor]], resume: bool = True) -> int:
        """Run ``step_fn(step, generator) -> {"loss": ..., other scalars}`` from the resumed step to the end."""
        from tqdm.auto import tqdm

        start = self.resume() if resume else 0
        metrics = MetricsLogger(self.output, tensorboard=False, resume_step=start if start else None)
        s = self.s
        t0 = self.t0 = time.time()
        for m in self.modules.values():
            m.train()
        with tqdm(total=s.steps, initial=start, desc=self.what, disable=None) as bar:
            for step in range(start, s.steps):
                lr = s.lr * lr_factor(step, s.schedule_steps or s.steps, s.warmup_steps)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                generator = torch.Generator().manual_seed(derive_seed(s.seed, 2, step))
                losses = step_fn(step, generator)
                loss = losses["loss"]
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"{self.what}: non-finite loss {loss.item()} at step {step}")
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = (torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip) if s.grad_clip
                             else torch.tensor(0.0))
                self.optimizer.step()
                bar.update(1)
                if (step + 1) % s.log_every == 0 or step + 1 == s.steps:
                    record = {"step": step + 1, "lr": lr, "grad_norm": float(grad_norm),
                              **{k: float(v.detach()) for k, v in losses.items()}, "elapsed_s": round(time.time() - t0, 1)}
                    metrics.log(record)
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                if (step + 1) % s.checkpoint_every == 0 or step + 1 == s.steps:
                    self.save(step + 1)
        metrics.close()
        for m in self.modules.values():
            m.eval()
        return s.steps


# ---- ShapesWorld batches -----------------------------------------------------------------------------------

def _to_tensor(images: list[np.ndarray]) -> torch.Tensor:
    """uint8 HxWx3 arrays → [B,3,H,W] in [-1, 1]."""
    x = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float()  # [B, 3, H, W]
    return x / 127.5 - 1.0


EDIT_FAMILIES = ("simple", "perception", "understanding", "reasoning")


def stage2_family_weights() -> dict[str, float]:
    """Each edit family's share of the tiny stage-2 mixture (:data:`smartedit.train.presets.TINY_STAGE2_SOURCES`
    at :data:`smartedit.data.mixture_config.DEFAULT_STAGE2_RATIOS`), the chat share left out and the rest
    renormalised: the edits a CLIP-text editor can learn from SmartEdit-tiny's stage-2 data, in the same ratios."""
    from ..data.mixture_config import DEFAULT_STAGE2_RATIOS
    from ..train.presets import TINY_STAGE2_SOURCES

    weights = dict.fromkeys(EDIT_FAMILIES, 0.0)
    for name, spec in TINY_STAGE2_SOURCES.items():
        family = spec.split(":")[1]
        if family in weights:
            weights[family] += DEFAULT_STAGE2_RATIOS[name]
    total = sum(weights.values())
    return {family: w / total for family, w in weights.items()}


def edit_batch(family: str, seed: int, step: int, batch_size: int, side: int, stream: int = 40,
               explicit: bool = False):
    """(sources [B,3,H,W], targets [B,3,H,W] in [-1,1], instructions) of fresh ShapesWorld edits of ``family``
    (one of :data:`EDIT_FAMILIES` or an understanding category such as ``1-Left-Right``; ``any``: a family drawn
    uniformly per sample; ``stage2``: drawn at :func:`stage2_family_weights`), a pure function of the arguments.
    Reasoning edits use the training facts only. ``explicit``: the same edits' instructions said plainly
    (:attr:`smartedit.shapes.world.Edit.explicit`)."""
    if family not in (*world.EDIT_KINDS, "any", "stage2"):
        raise ValueError(f"unknown edit family {family!r}; choose one of {', '.join(EDIT_FAMILIES)}, an understanding "
                         f"category ({', '.join(world.UNDERSTANDING)}), any or stage2")
    train_facts, _ = world.held_out_facts()
    shares = list(stage2_family_weights().values()) if family == "stage2" else None
    srcs, tgts, texts = [], [], []
    for i in range(batch_size):
        rng = sample_rng(seed, step, i, stream=stream)
        fam = (EDIT_FAMILIES[int(rng.integers(len(EDIT_FAMILIES)))] if family == "any" else
               str(rng.choice(EDIT_FAMILIES, p=shares)) if family == "stage2" else family)
        edit = world.edit_for(fam, rng, train_facts)
        src, tgt, _ = edit.images(side)
        srcs.append(src)
        tgts.append(tgt)
        texts.append(edit.explicit if explicit else edit.instruction)
    return _to_tensor(srcs), _to_tensor(tgts), texts


# ---- VAE -----------------------------------------------------------------------------------------------------

def pretrain_vae(config: SmartEditConfig, output: str, settings: PretrainSettings, kl_weight: float = 1e-6,
                 resume: bool = True, init: str | None = None):
    """Train the config's VAE on ShapesWorld sources and targets of every edit family; write ``output/vae``
    (diffusers folder, ``scaling_factor`` = 1 / latent std) and return it.

    ``init``: a trained VAE folder whose ENCODER is kept frozen while the decoder goes on training (SD's
    fine-tuned-decoder recipe): the latents, hence the scaling factor and everything trained on them, do not change,
    so the decoder can improve while the UNets train."""
    from diffusers import AutoencoderKL

    from ..unet import build_vae

    torch.manual_seed(settings.seed)
    side = config.resolution
    if init is None:
        vae = build_vae(config.vae)
    else:
        vae = AutoencoderKL.from_pretrained(init, local_files_only=True)
        vae.encoder.requires_grad_(False)
        vae.quant_conv.requires_grad_(False)

    def step_fn(step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        src, tgt, _ = edit_batch("any", settings.seed, step, settings.batch_size, side,
                                 stream=41 if init is None else 47)
        pick = torch.rand(src.shape[0], generator=g) < 0.5
        images = torch.where(pick.view(-1, 1, 1, 1), src, tgt)  # [B, 3, H, W]
        with torch.set_grad_enabled(init is None):
            posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(g)).sample  # [B, 3, H, W]
        rec = F.l1_loss(recon, images) + F.mse_loss(recon, images)
        kl = posterior.kl().mean()
        loss = rec + kl_weight * kl if init is None else rec
        return {"loss": loss, "recon": rec.detach(), "kl": kl.detach()}

    _Loop(output, {"vae": vae}, settings, "vae" if init is None else "vae-decoder").run(step_fn, resume=resume)
    if init is None:
        with torch.no_grad():
            src, tgt, _ = edit_batch("any", settings.seed + 1, 0, 128, side, stream=42)
            latents = torch.cat([vae.encode(x).latent_dist.mode() for x in (src, tgt)])
        vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    scale = float(vae.config.scaling_factor)
    out = os.path.join(output, "vae")
    vae.save_pretrained(out)
    quality = vae_psnr(vae, settings.seed + 2, side)
    ceiling = vae_edit_ceiling(vae.eval(), settings.seed + 3, side)
    write_json(os.path.join(output, "vae_quality.json"), {"scaling_factor": scale, **quality, "ceiling": ceiling})
    logger.info("VAE: scaling factor %.4f, held-out reconstruction PSNR %.2f dB (min %.2f); edit ceiling (exact "
                "targets): IoU %.2f / background %.1f dB decoded, %.2f / %.1f dB residual", scale,
                quality["psnr_mean"], quality["psnr_min"], ceiling["latent_iou"], ceiling["latent_bg"],
                ceiling["residual_iou"], ceiling["residual_bg"])
    return out


@torch.no_grad()
def vae_psnr(vae, seed: int, side: int, count: int = 64) -> dict[str, float]:
    """Reconstruction PSNR (dB, uint8 round trip) of ``count`` held-out ShapesWorld images."""
    src, _, _ = edit_batch("any", seed, 0, count, side, stream=43)
    recon = vae.decode(vae.encode(src).latent_dist.mode()).sample
    a = ((src + 1) * 127.5).round().clamp(0, 255)
    b = ((recon + 1) * 127.5).round().clamp(0, 255)
    mse = ((a - b) ** 2).flatten(1).mean(1).clamp_min(1e-10)
    psnr = 10 * torch.log10(255.0 ** 2 / mse)
    return {"psnr_mean": float(psnr.mean()), "psnr_min": float(psnr.min()), "images": count}


@torch.no_grad()
def vae_edit_ceiling(vae, seed: int, side: int, count: int = 48, threshold: float = 0.1) -> dict[str, float]:
    """The best edit-region IoU / background PSNR any latent editor can reach through ``vae``: the EXACT target of
    ``count`` held-out simple recolour / remove edits, encoded and decoded, scored against the source with the
    evaluation's own metric (:func:`smartedit.eval.pixel.change_mask` at ``threshold``, IoU with the true edit mask;
    PSNR outside it). ``latent``: the VAE decodes the target latent; ``residual``: the change is applied in pixel
    space, source + D(E(target)) − D(E(source)) (``SchedulerConfig.decode``). Medians; the raw targets score 1.0."""
    from ..eval.pixel import change_mask, iou, psnr

    scores: dict[str, list[float]] = {"latent_iou": [], "latent_bg": [], "residual_iou": [], "residual_bg": []}
    index = 0
    while len(scores["latent_iou"]) < count:
        edit = world.simple_edit(sample_rng(seed, 0, index, stream=44))
        index += 1
        if edit.instruction.startswith("replace"):
            continue
        src, tgt, mask = edit.images(side)
        x = _to_tensor([src, tgt])  # [2, 3, H, W] in [-1, 1]
        rebuilt = vae.decode(vae.encode(x).latent_dist.mode()).sample.clamp(-1, 1)  # [2, 3, H, W]
        source = (x[0] + 1) / 2  # [3, H, W] in [0, 1]
        outputs = {"latent": (rebuilt[1] + 1) / 2, "residual": source + (rebuilt[1] - rebuilt[0]) / 2}
        truth = torch.from_numpy(mask)
        for name, out in outputs.items():
            out = (out.clamp(0, 1) * 255).round().double() / 255  # the uint8 round trip of a saved PNG
            scores[f"{name}_iou"].append(iou(change_mask(source.double(), out, threshold), truth))
            scores[f"{name}_bg"].append(psnr(source.double(), out, ~truth))
    result = {k: float(np.median(v)) for k, v in scores.items()}
    result.update(edits=count, threshold=threshold)
    return result


# ---- InstructPix2Pix-tiny --------------------------------------------------------------------------------------

def build_text_encoder(tokenizer, hidden_size: int, layers: int = 2, seed: int = 0):
    """A fresh ``CLIPTextModel`` (77 positions) for ``tokenizer``: the CLIP text encoder of ShapesWorld."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                            num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=77,
                            pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CLIPTextModel(config)


def _encode_text(text_encoder, tokenizer, texts: list[str]) -> torch.Tensor:
    ids = tokenizer(list(texts), padding="max_length", max_length=77, truncation=True,
                    return_tensors="pt")["input_ids"]
    return text_encoder(ids).last_hidden_state  # [B, 77, D]


def pretrain_ip2p(config: SmartEditConfig, vae_dir: str, output: str, settings: PretrainSettings,
                  objective: str = "diffusion", family: str = "simple", resume: bool = True,
                  init: str | None = None) -> str:
    """Train a CLIP text encoder + the config's InstructPix2Pix UNet on ShapesWorld ``family`` edits with the
    frozen VAE from ``vae_dir``; write a diffusers InstructPix2Pix folder ``output/pipeline`` and return it.

    ``objective="diffusion"``: the config's noise schedule, prediction type and diffused latent (``target``, or
    the ``change`` from the source), with InstructPix2Pix's CFG dropout. ``objective="regression"``: the UNet sees
    a zero latent at the last timestep and regresses the target latent in one step (the non-diffusion control).

    ``init``: an InstructPix2Pix folder written by this function (e.g. the regression control) whose text encoder
    and UNet start the training: the diffusion model then begins with the control's grounding (which words pick
    which shape) and only learns to denoise, as SD's UNet had text grounding from text-to-image pretraining before
    InstructPix2Pix fine-tuned it."""
    from diffusers import AutoencoderKL, StableDiffusionInstructPix2PixPipeline

    from ..model import TINY_TOKENIZER, load_tokenizer
    from ..pipeline import inference_scheduler
    from ..unet import build_unet, widen_conv_in

    if objective not in ("diffusion", "regression"):
        raise ValueError(f"objective must be 'diffusion' or 'regression', got {objective!r}")
    tokenizer = load_tokenizer(TINY_TOKENIZER)
    tokenizer.model_max_length = 77
    vae = AutoencoderKL.from_pretrained(vae_dir, local_files_only=True).eval().requires_grad_(False)
    torch.manual_seed(settings.seed)
    text_encoder = build_text_encoder(tokenizer, config.unet.cross_attention_dim, seed=settings.seed)
    unet = widen_conv_in(build_unet(config.unet), config.unet.in_channels)
    if init is not None:
        _start_from(init, text_encoder, unet)
        logger.info("ip2p-%s: text encoder and UNet start from %s", objective, init)
    step_fn = _ip2p_step(config, settings, objective, family, vae, tokenizer, text_encoder, unet)
    _Loop(output, {"text_encoder": text_encoder, "unet": unet}, settings,
          f"ip2p-{objective}").run(step_fn, resume=resume)
    pipe = StableDiffusionInstructPix2PixPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                                  scheduler=inference_scheduler(config.scheduler), safety_checker=None,
                                                  feature_extractor=None, requires_safety_checker=False)
    out = os.path.join(output, "pipeline")
    pipe.save_pretrained(out)
    write_json(os.path.join(out, PIPELINE_INFO), {"objective": objective, "family": family, "init": init,
                                                  "diffuse": config.scheduler.diffuse, "decode": config.scheduler.decode,
                                                  "settings": settings.to_dict()})
    return out


def _ip2p_step(config: SmartEditConfig, settings: PretrainSettings, objective: str, family: str, vae, tokenizer,
               text_encoder, unet) -> Callable[[int, torch.Generator], dict[str, torch.Tensor]]:
    """The loss of one :func:`pretrain_ip2p` step as a function of (step, generator)."""
    from ..cfg import apply_dropout, sample_dropout
    from ..unet import build_noise_scheduler

    scale = float(vae.config.scaling_factor)
    noise_scheduler = build_noise_scheduler(config.scheduler)
    side = config.resolution
    last = noise_scheduler.config.num_train_timesteps - 1

    def step_fn(step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        src, tgt, texts = edit_batch(family, settings.seed, step, settings.batch_size, side, stream=44)
        b = src.shape[0]
        with torch.no_grad():
            source_latent = vae.encode(src).latent_dist.mode()  # [B, C, h, w]
            if config.scheduler.diffuse == "change":
                latents = (vae.encode(tgt).latent_dist.mode() - source_latent) * scale  # [B, C, h, w]
            else:
                latents = vae.encode(tgt).latent_dist.sample(g) * scale  # [B, C, h, w]
        encoded = _encode_text(text_encoder, tokenizer, texts + [""])  # [B+1, 77, D]
        context, null = encoded[:b], encoded[b:]
        if objective == "regression":
            x = torch.cat([torch.zeros_like(latents), source_latent], dim=1)  # [B, 8, h, w]
            pred = unet(x, torch.full((b,), last), encoder_hidden_states=context).sample
            return {"loss": F.mse_loss(pred, latents)}
        drops = sample_dropout(b, config.cfg_dropout_prob, generator=g)
        context, source_latent = apply_dropout(context, null, source_latent, drops)
        noise = torch.randn(latents.shape, generator=g)
        timesteps = torch.randint(0, last + 1, (b,), generator=g)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)  # [B, 4, h, w]
        pred = unet(torch.cat([noisy, source_latent], dim=1), timesteps, encoder_hidden_states=context).sample
        kind = noise_scheduler.config.prediction_type
        goal = noise if kind == "epsilon" else (noise_scheduler.get_velocity(latents, noise, timesteps)
                                                if kind == "v_prediction" else latents)
        return {"loss": F.mse_loss(pred, goal)}

    return step_fn


def _start_from(init: str, text_encoder, unet) -> None:
    """Load the text encoder and UNet weights of an InstructPix2Pix folder written by :func:`pretrain_ip2p`."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    if not os.path.isfile(os.path.join(init, "unet", "config.json")):
        raise FileNotFoundError(f"init {init!r} has no unet/: give an InstructPix2Pix folder written by "
                                f"pretrain_ip2p (OUTPUT/pipeline)")
    text_encoder.load_state_dict(CLIPTextModel.from_pretrained(os.path.join(init, "text_encoder")).state_dict())
    unet.load_state_dict(UNet2DConditionModel.from_pretrained(os.path.join(init, "unet")).state_dict())


# ---- the vision tower (ShapesWorld's stand-in for CLIP's pretraining) ------------------------------------------

def vision_batch(seed: int, step: int, batch_size: int, side: int, grid: int, stream: int = 49):
    """(images [B,3,side,side] in [0,1], labels [B, len(PATCH_LABELS), grid²]) of fresh scenes, a pure function of
    the arguments (:func:`smartedit.shapes.world.patch_labels`)."""
    images, labels = [], []
    for i in range(batch_size):
        scene = world.random_scene(sample_rng(seed, step, i, stream=stream))
        images.append(world.render(scene, side))
        labels.append(world.patch_labels(scene, side, grid))
    return (_to_tensor(images) + 1) / 2, torch.from_numpy(np.stack(labels))


def vision_heads(config: SmartEditConfig) -> nn.ModuleDict:
    """One linear classifier per :data:`world.PATCH_LABELS` on the vision tower's selected-layer patch features."""
    return nn.ModuleDict({name: nn.Linear(config.vision.hidden_size, n) for name, n in world.PATCH_LABELS.items()})


def pretrain_vision(config: SmartEditConfig, output: str, settings: PretrainSettings, resume: bool = True) -> str:
    """Pretrain the config's CLIP ViT from scratch to tell, for every patch, the kind, colour, size and rank from the
    left of the shape on it (:func:`smartedit.shapes.world.patch_labels`; cross-entropy of linear heads on the
    features the MLLM reads), the ShapesWorld stand-in for CLIP's pretraining: trained only through LLaVA-tiny's
    chat loss, the tower tells colours but hardly shape kinds. Writes ``output/vision.safetensors`` (the tower),
    ``output/vision_heads.safetensors`` and ``output/vision_quality.json`` (:func:`probe_vision`); returns
    ``output``."""
    from safetensors.torch import save_file

    from ..model import SmartEditModel

    torch.manual_seed(settings.seed)
    mllm = SmartEditModel.from_config(config.replace(**{"bim.enabled": False}), seed=settings.seed).mllm
    tower, heads = mllm.vision_tower.requires_grad_(True), vision_heads(config)
    side, grid = config.resolution, config.vision.grid_size

    def step_fn(step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        images, labels = vision_batch(settings.seed, step, settings.batch_size, side, grid)
        features = mllm.encode_images(mllm.preprocess_images(images))  # [B, P, Dv]
        losses = {name: F.cross_entropy(head(features).flatten(0, 1), labels[:, j].flatten())
                  for j, (name, head) in enumerate(heads.items())}
        return {"loss": sum(losses.values()), **losses}

    _Loop(output, {"vision": tower, "heads": heads}, settings, "vision").run(step_fn, resume=resume)
    for name, module in (("vision", tower), ("vision_heads", heads)):
        save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
                  os.path.join(output, f"{name}.safetensors"), metadata={"format": "pt"})
    write_json(os.path.join(output, "vision_quality.json"), probe_vision(mllm.eval(), heads.eval(), seed=settings.seed))
    return output


@torch.no_grad()
def probe_vision(mllm, heads: nn.ModuleDict, seed: int = 0, count: int = 128) -> dict[str, float]:
    """Accuracy of the pretrained tower's heads on ``count`` fresh scenes (a stream no training step draws from):
    per label over the patches a shape covers, and ``shape_kind``: each shape's kind from its patches' summed
    kind logits, what an LLM reading the patch tokens could tell."""
    side, grid = mllm.vision_config.image_size, mllm.vision_config.grid_size
    images, labels = vision_batch(seed, 0, count, side, grid, stream=50)
    features = mllm.encode_images(mllm.preprocess_images(images))  # [B, P, Dv]
    on_shape = labels[:, 0] > 0  # [B, P]
    out = {name: float((head(features).argmax(-1) == labels[:, j])[on_shape].float().mean())
           for j, (name, head) in enumerate(heads.items())}
    kind_logits = heads["kind"](features)  # [B, P, K]
    kinds, ranks = labels[:, list(world.PATCH_LABELS).index("kind")], labels[:, list(world.PATCH_LABELS).index("rank")]
    hits = total = 0
    for b in range(count):
        for rank in ranks[b].unique().tolist():
            if rank == 0:
                continue
            mine = ranks[b] == rank  # the patches of one shape
            hits += int(kind_logits[b, mine].sum(0)[1:].argmax() + 1 == kinds[b, mine][0])
            total += 1
    out["shape_kind"] = hits / max(1, total)
    return out


# ---- LLaVA-tiny --------------------------------------------------------------------------------------------------

def llava_samples(seed: int, step: int, batch_size: int, side: int, skills: bool = False, skill_share: float = 0.45,
                  turns: int = 1):
    """Chat samples of one LLaVA step: image descriptions, VQA and knowledge Q&A (fresh every step). ``skills``:
    ``skill_share`` of them are instead questions of every understanding skill
    (:func:`smartedit.shapes.world.skill_chat`, ``turns`` questions about one scene), the rest descriptions, VQA and
    knowledge in the ratio 4 : 2 : 5."""
    from ..data.schema import Sample

    scale = (1.0 - skill_share) / 0.55  # descriptions 0.2, VQA 0.1, knowledge 0.25 of the non-skill share
    descriptions, vqa = (0.2 * scale, 0.3 * scale) if skills else (0.3, 0.65)
    out = []
    for i in range(batch_size):
        rng = sample_rng(seed, step, i, stream=45)
        scene = world.random_scene(rng)
        u = rng.random()
        if skills and vqa <= u < vqa + skill_share:
            scene, chat = _skill_turns(rng, turns=turns)
        elif u < descriptions:
            chat = [["Describe the image.", world.caption(scene).capitalize() + "."]]
        elif u < vqa:
            chat = world.vqa_chat(rng, scene)
        else:
            chat = world.knowledge_chat(rng)
        out.append(Sample(f"llava/{step}/{i}", "shapes_llava", "chat", conversation=chat,
                          source_image=world.png_bytes(world.render(scene, side))))
    return out


def _skill_turns(rng, skill: str | None = None, turns: int = 1):
    """A scene and ``turns`` questions about it, the first of ``skill`` (default: one drawn uniformly from
    :data:`world.SKILLS`)."""
    while True:
        built = world.skill_chat(rng, skill or str(rng.choice(world.SKILLS)), turns=turns)
        if built is not None:
            return built


def pretrain_llava(config: SmartEditConfig, output: str, settings: PretrainSettings, resume: bool = True,
                   skills: bool = False, vision: str | None = None, skill_share: float = 0.45, turns: int = 1) -> str:
    """Train the tiny LLaVA (vision tower + projector + LLaMA, all from scratch) on ShapesWorld chat (``skills``:
    with every understanding skill's questions as ``skill_share`` of it, ``turns`` per scene, :func:`llava_samples`);
    ``vision``: a :func:`pretrain_vision` folder whose tower is loaded and kept frozen, as LLaVA keeps its CLIP ViT.
    Writes ``output/mllm.safetensors`` + ``output/config.json`` and returns ``output``."""
    from safetensors.torch import load_file, save_file

    from ..data.collate import SampleCollator
    from ..model import SmartEditModel

    torch.manual_seed(settings.seed)
    model = SmartEditModel.from_config(config.replace(**{"bim.enabled": False}), seed=settings.seed)
    mllm = model.mllm
    mllm.requires_grad_(True)
    if vision is not None:
        mllm.vision_tower.load_state_dict(load_file(os.path.join(vision, "vision.safetensors")), strict=True)
        mllm.vision_tower.requires_grad_(False)
    collator = SampleCollator(model.config, model.tokenizer)

    def step_fn(step: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        samples = llava_samples(settings.seed, step, settings.batch_size, config.resolution, skills=skills,
                                skill_share=skill_share, turns=turns)
        batch = collator(samples, [(settings.seed, step, i) for i in range(len(samples))])
        pixels = mllm.preprocess_images((batch["source_images"] + 1) / 2)
        out = mllm(batch["input_ids"], batch["attention_mask"], pixel_values=pixels, labels=batch["labels"])
        return {"loss": out.lm_loss}

    _Loop(output, {"mllm": mllm}, settings, "llava").run(step_fn, resume=resume)
    mllm.init_new_token_rows()  # the new rows start from the trained base rows' mean, as for a real LLaVA
    state = {k: v.detach().contiguous() for k, v in mllm.state_dict().items()}
    save_file(state, os.path.join(output, "mllm.safetensors"), metadata={"format": "pt"})
    model.config.save(output)
    return output


@torch.no_grad()
def probe_llava_skills(model, seed: int = 0, per_skill: int = 40) -> dict[str, float]:
    """Greedy-reply accuracy of the tiny LLaVA per understanding skill (:data:`world.SKILLS`) on ``per_skill``
    fresh scenes each (a stream no training step draws from), and on every knowledge fact: does it know where the
    shape an instruction names is, how many there are, what colour it is, and the facts behind the reasoning
    edits?"""
    rng = sample_rng(seed, 0, 0, stream=47)
    out = {}
    for skill in world.SKILLS:
        hits = 0
        for _ in range(per_skill):
            scene, [[question, answer]] = _skill_turns(rng, skill)
            hits += answer.rstrip(".") in _ask_llava(model, question, scene)  # the shape named, then the answer
        out[skill] = hits / per_skill
    facts = [(f"Which shape is {fact}?", kind) for kind, fs in world.KIND_FACTS.items() for fact in fs]
    facts += [(f"What is {fact}?", colour) for colour, fs in world.COLOUR_FACTS.items() for fact in fs]
    out["knowledge"] = sum(answer in _ask_llava(model, q, world.random_scene(rng)) for q, answer in facts) / len(facts)
    return out


def _ask_llava(model, question: str, scene) -> str:
    """The tiny LLaVA's greedy reply (up to 16 tokens) to ``question`` about ``scene``."""
    from ..prompt import chat_conversation

    mllm, tok = model.mllm, model.tokenizer
    image = _to_tensor([world.render(scene, model.config.resolution)])
    features = mllm.encode_images(mllm.preprocess_images((image + 1) / 2))
    prompt = chat_conversation([(question, "")], model.config.vision.num_patches)[0][0]
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    reply = mllm.generate_reply(ids, features, max_new_tokens=16)[0]
    return tok.decode([t for t in reply.tolist() if t < model.config.mllm.vocab_size], skip_special_tokens=True)


@torch.no_grad()
def probe_llava(model, seed: int = 0, scenes: int = 24) -> dict[str, float]:
    """Greedy-reply accuracy of the tiny LLaVA on every knowledge fact (including the facts held out of the edit
    data) and on colour / leftmost-shape questions about fresh scenes: did pretraining teach what the reasoning
    and understanding edits need?"""
    rng = sample_rng(seed, 0, 0, stream=46)
    facts = [(f"Which shape is {fact}?", kind) for kind, fs in world.KIND_FACTS.items() for fact in fs]
    facts += [(f"What is {fact}?", colour) for colour, fs in world.COLOUR_FACTS.items() for fact in fs]
    knowledge = sum(answer in _ask_llava(model, q, world.random_scene(rng)) for q, answer in facts) / len(facts)
    colour_hits = colour_n = left_hits = 0
    for _ in range(scenes):
        scene = world.random_scene(rng)
        ordered = sorted(scene.shapes, key=lambda s: s.x)
        leftmost = f"{ordered[0].colour} {ordered[0].kind}"
        left_hits += leftmost in _ask_llava(model, "Which shape is on the far left?", scene)
        unique = [s for s in scene.shapes if sum(t.kind == s.kind for t in scene.shapes) == 1]
        if unique:
            colour_n += 1
            colour_hits += unique[0].colour in _ask_llava(model, f"What colour is the {unique[0].kind}?", scene)
    return {"knowledge_accuracy": knowledge, "facts": len(facts), "leftmost_accuracy": left_hits / scenes,
            "colour_accuracy": colour_hits / max(1, colour_n)}
