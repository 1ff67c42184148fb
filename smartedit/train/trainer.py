"""The training loop shared by the three stages (``train/stage1_align.py``, ``stage2_mllmsd.py``,
``stage2_smartedit.py`` are thin wrappers around :class:`Trainer`).

One optimizer step = ``A`` micro-batches per process (gradient accumulation inside DeepSpeed), each
``engine(batch) → engine.backward(loss) → engine.step()``. Per step, every loss term is averaged over micro-batches
and processes and logged with the learning rate, gradient norm, throughput and data-loader wait.

Non-finite loss: when any process sees a non-finite loss term in any micro-batch of a step, that micro-batch is
back-propagated as NaN, so ZeRO's invalid-gradient-norm check drops the whole accumulated step (no parameter,
optimizer-state or learning-rate-schedule change) on every process; the step is counted as skipped and training
continues. ``max_nonfinite_in_a_row`` (3) consecutive skipped steps abort the run with :class:`NonFiniteLossError`,
whose message names the step and its loss terms. A step DeepSpeed skipped for a non-finite *gradient* (with a finite
loss) counts the same way.

Exact resume: the data of micro-batch ``k`` and the diffusion noise / CFG dropout of micro-batch ``k`` are pure
functions of (seed, process, k) (:mod:`smartedit.data.loader`, :func:`smartedit.train.rng.step_generator`); the global
random state (dropout) is saved per process with each checkpoint and restored after everything is built; model,
optimizer and scheduler come from DeepSpeed's checkpoint.

Bad data: an unreadable row is replaced by a deterministic draw (:mod:`smartedit.data.loader`), logged with its
source, shard, row and sample id, appended to ``skipped-rank{R}.jsonl`` and counted (``skipped_rows`` in
``metrics.jsonl`` and the checkpoints); when more than ``data.max_skipped_fraction`` of the rows drawn so far (over
at least 200 draws) were skipped, the run stops with :class:`~smartedit.data.loader.BadDataError` on every process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from ..config import ConfigError
from ..data.collate import SampleCollator
from ..data.loader import BadDataError, StepBatches, build_loader
from ..data.schema import Sample
from ..data.sources import open_sources, source_specs
from ..model import SmartEditModel
from .checkpoint import (CHECKPOINTS_DIR, TRAINER_STATE_NAME, NoValidCheckpointError, RunLock, RunLockedError,
                         checkpoint_name, finalize, find_checkpoint, prune, read_json, staging_dir, step_folders,
                         write_json, write_manifest)
from .clip_text import ClipTextTarget
from .config import ExperimentConfig
from .distributed import DistInfo, all_reduce, barrier, init_distributed
from .engine import (build_optimizer, initialize_engine, load_ds_config, prepare_ds_config, resolve_optimizer_impl,
                     resolve_precision)
from .export import export_dtype, export_from_engine
from .metrics import MetricsLogger, truncate_jsonl
from .rng import derive_seed, load_rng, restore_rng, save_rng, seed_everything, step_generator
from .safe_load import safe_torch_load
from .schedule import build_scheduler
from .stage_model import EXPORT_DIR, StageModule, enable_gradient_checkpointing, load_init_model, \
    prepare_stage_model

logger = logging.getLogger(__name__)

__all__ = ["Trainer", "TrainResult", "NonFiniteLossError", "BadDataError", "LOSS_TERMS"]

LOSS_TERMS = {"stage1": ("lm_loss", "align_mse", "loss"),
              "stage2a": ("lm_loss", "diffusion_loss", "loss"),
              "stage2b": ("lm_loss", "diffusion_loss", "loss")}
_RESUME_KEYS = ("stage", "seed", "world_size", "micro_batch_size", "accumulation_steps", "data")
_MIN_DRAWS_FOR_BUDGET = 200


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a non-finite loss (or gradient)."""


@dataclass
class TrainResult:
    output_dir: str
    model_dir: str
    steps: int
    skipped_steps: int
    metrics_path: str
    resumed_from: str | None = None
    skipped_rows: int = 0


class Trainer:
    """``Trainer(config, sources=None).run(resume=None)``.

    ``sources`` (name → ``Sequence[Sample]``) replaces the config's data paths (its ratios still apply);
    ``ds_search_dirs`` are folders where a DeepSpeed config name (``zero2``) is looked up as ``NAME.json`` before
    the built-in copy; ``base_dir`` resolves relative data paths.
    """

    def __init__(self, config: ExperimentConfig, sources: Mapping[str, Sequence[Sample]] | None = None,
                 ds_search_dirs: tuple[str, ...] = (), base_dir: str = "."):
        self.config = config.validate()
        if config.output_dir is None:
            raise ConfigError(["output_dir is required (--output DIR)"], "experiment config")
        if config.init is None:
            raise ConfigError(["init is required: the initial weights (--init DIR, the previous stage's output, "
                               "or random:tiny)"], "experiment config")
        if config.stage == "stage1" and not config.align.clip_text:
            raise ConfigError(["stage 1 needs the CLIP text encoder (align.clip_text / --clip-text DIR): a Stable "
                               "Diffusion folder with text_encoder/ and tokenizer/, or a CLIPTextModel folder"],
                              "experiment config")
        self.sources = sources
        self.ds_search_dirs = ds_search_dirs
        self.base_dir = base_dir
        self.output_dir = config.output_dir
        self.ckpt_root = os.path.join(self.output_dir, CHECKPOINTS_DIR)
        self.model_dir = os.path.join(self.output_dir, EXPORT_DIR)
        self.engine = None
        self.lock: RunLock | None = None

    # ---- set-up ------------------------------------------------------------------------------------------
    def _find_resume(self, resume: str | None, restart: bool, dist: DistInfo) -> str | None:
        """On the main process: lock the output folder, then pick the checkpoint to resume from (None = step 0);
        any refusal is raised on every process."""
        import torch.distributed as tdist

        found: list = [None, None]
        if dist.is_main:
            try:
                self.lock = RunLock(self.output_dir).acquire()
                if resume and restart:
                    raise ValueError("give --resume or --restart, not both")
                existing = step_folders(self.ckpt_root)
                if restart:
                    for _, path in existing:
                        shutil.rmtree(path)
                    if existing:
                        logger.warning("--restart: removed %d checkpoint(s) of the previous run in %s", len(existing),
                                       self.ckpt_root)
                elif resume:
                    found[0] = find_checkpoint(self.ckpt_root, resume)
                    if found[0] is None:
                        logger.info("--resume %s: no checkpoint under %s yet, starting from step 0", resume,
                                    self.ckpt_root)
                elif existing:
                    raise FileExistsError(f"{self.output_dir} already holds checkpoints: pass --resume latest to "
                                          f"continue that run, --restart to start it over (the checkpoints are "
                                          f"deleted), or choose another --output")
            except (FileNotFoundError, FileExistsError, ValueError, RunLockedError) as exc:
                found[1] = (type(exc).__name__, str(exc))
        if dist.world_size > 1:
            tdist.broadcast_object_list(found, src=0)
        if found[1]:
            kind, message = found[1]
            raise {"FileNotFoundError": FileNotFoundError, "FileExistsError": FileExistsError,
                   "RunLockedError": RunLockedError, "NoValidCheckpointError": NoValidCheckpointError}.get(
                kind, ValueError)(message)
        return found[0]

    def _layout(self) -> dict:
        cfg = self.config
        return {"stage": cfg.stage, "seed": cfg.seed, "world_size": self.dist.world_size,
                "micro_batch_size": cfg.micro_batch_size, "accumulation_steps": self.accum,
                "data": {"sources": source_specs(cfg.data) if self.sources is None else sorted(self.sources),
                         "ratios": dict(cfg.data.ratios), "samples_per_epoch": cfg.data.samples_per_epoch}}

    def setup(self, resume: str | None = None, restart: bool = False) -> "Trainer":
        """Build everything a run needs, in an order that keeps resume exact: processes, the checkpoint to resume,
        the sources, the stage's model (same seed on every process), the DeepSpeed engine, the trainer state of the
        checkpoint, the data stream, the logs and, last, the global random state."""
        cfg = self.config
        self.dist = dist = init_distributed()
        self.device = dist.device
        self.precision = resolve_precision(cfg.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = cfg.tf32
            torch.backends.cudnn.allow_tf32 = cfg.tf32
        self.accum = cfg.accumulation_steps(dist.world_size)
        self.global_batch = cfg.micro_batch_size * self.accum * dist.world_size
        if dist.is_main:
            os.makedirs(self.ckpt_root, exist_ok=True)
        barrier()
        self.resumed_from = self._find_resume(resume, restart, dist)
        sources = self.sources if self.sources is not None else open_sources(cfg.data, self.base_dir)
        model = self._setup_model()
        self._setup_engine(model)
        self.step = 0
        self.skipped_total = 0
        self.consecutive_bad = 0
        self.skipped_rows = 0
        if self.resumed_from is not None:
            self._load_checkpoint(self.resumed_from)
        ratios = {n: cfg.data.ratios.get(n, 0) for n in sources}
        collator = SampleCollator(model.config, model.tokenizer, resolution=cfg.data.resolution)
        self.batches = StepBatches(sources, ratios, collator, cfg.micro_batch_size, rank=dist.rank,
                                   world_size=dist.world_size, seed=cfg.seed,
                                   samples_per_epoch=cfg.data.samples_per_epoch)
        self._setup_logs()
        # the global random state last: nothing after this point draws from it before the first step
        if self.resumed_from is not None:
            self._restore_rng(self.resumed_from)
        else:
            seed_everything(derive_seed(cfg.seed, 2, dist.rank))
        return self

    def _setup_model(self) -> SmartEditModel:
        """The initial weights in the run's precision, identical on every process (same seed), made into the
        stage's model (architecture, freezing; stage 1: its CLIP text target) and wrapped as the trained module."""
        cfg = self.config
        seed_everything(cfg.seed)
        # (in the run's precision: DeepSpeed casts to it anyway, and its float32 master weights start from that cast)
        model = load_init_model(cfg.init, seed=cfg.seed,
                                dtype=torch.bfloat16 if self.precision == "bf16" else torch.float32)
        prepare_stage_model(model, cfg.stage, seed=cfg.seed, also_train=cfg.also_train)
        self.clip = None
        if cfg.stage == "stage1":
            self.clip = ClipTextTarget(cfg.align.clip_text, device=self.device)
            self.clip.prepare_model(model)
        if cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)
        self.module = StageModule(model, cfg.stage, lm_weight=cfg.align.lm_weight, mse_weight=cfg.align.mse_weight,
                                  also_train=cfg.also_train)
        return model

    def _setup_engine(self, model: SmartEditModel) -> None:
        """The optimizer over the stage's trainable parameters, its schedule and the DeepSpeed engine."""
        cfg = self.config
        groups = self.module.param_groups(cfg.optim.weight_decay)
        n_train = sum(p.numel() for g in groups for p in g["params"])
        logger.info("%s: %s trainable parameters of %s", cfg.stage, f"{n_train:,}",
                    f"{sum(p.numel() for p in model.parameters()):,}")
        raw = load_ds_config(cfg.deepspeed, self.ds_search_dirs)
        impl = resolve_optimizer_impl(cfg.optim.impl, raw, self.device)
        self.ds_config = prepare_ds_config(raw, micro_batch_size=cfg.micro_batch_size,
                                           accumulation_steps=self.accum, world_size=self.dist.world_size,
                                           grad_clip=cfg.optim.grad_clip, precision=self.precision,
                                           torch_optimizer=impl == "torch")
        optimizer = build_optimizer(groups, cfg.optim, impl)
        self.scheduler = build_scheduler(optimizer, cfg.max_steps, cfg.warmup_steps, cfg.optim.schedule,
                                         cfg.optim.min_lr_ratio)
        self.engine = initialize_engine(self.module, optimizer, self.scheduler, self.ds_config)

    def _setup_logs(self) -> None:
        """Metrics, per-rank sample-id and skipped-row logs (cut back to the resumed step) and experiment.json."""
        cfg, dist = self.config, self.dist
        resume_step = self.step if self.resumed_from is not None else None
        self.metrics = MetricsLogger(self.output_dir, cfg.log.tensorboard, cfg.log.wandb, cfg.log.wandb_project,
                                     run_config=cfg.to_dict(), resume_step=resume_step, enabled=dist.is_main)
        self.ids_path = os.path.join(self.output_dir, f"samples-rank{dist.rank:05d}.jsonl")
        self.skips_path = os.path.join(self.output_dir, f"skipped-rank{dist.rank:05d}.jsonl")
        for path, kept in ((self.skips_path, True), (self.ids_path, cfg.log.sample_ids)):
            if not kept:
                continue
            if resume_step is not None:
                truncate_jsonl(path, resume_step)
            elif os.path.exists(path):
                os.remove(path)
        if dist.is_main:
            cfg.save(os.path.join(self.output_dir, "experiment.json"))

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _load_checkpoint(self, path: str) -> None:
        try:
            state = read_json(os.path.join(path, TRAINER_STATE_NAME))
            layout = state["layout"]
            step, skipped, bad = int(state["step"]), int(state["skipped_total"]), int(state["consecutive_bad"])
            skipped_rows = int(state.get("skipped_rows", 0))
            if not isinstance(layout, dict):
                raise TypeError("layout is not an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot resume from {path}: {TRAINER_STATE_NAME} is malformed ({exc!r}); resume from "
                             f"another checkpoint") from None
        expected = self._layout()
        wrong = [f"{k}: checkpoint {layout.get(k)!r} vs now {expected[k]!r}" for k in _RESUME_KEYS
                 if layout.get(k) != expected[k]]
        if wrong:
            raise ValueError(f"cannot resume exactly from {path}: the run layout changed ({'; '.join(wrong)}). "
                             f"Resume with the same number of processes, batch sizes, seed and data")
        with safe_torch_load():  # DeepSpeed's torch.load calls read weights only (no code runs from the files)
            load_path, _ = self.engine.load_checkpoint(os.path.join(path, "deepspeed"), tag="ds",
                                                       load_optimizer_states=True, load_lr_scheduler_states=True)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load the checkpoint in {path}")
        self.step, self.skipped_total, self.consecutive_bad, self.skipped_rows = step, skipped, bad, skipped_rows
        logger.info("resumed from %s at step %d", path, self.step)

    def _restore_rng(self, path: str) -> None:
        """The global random state this process saved in checkpoint ``path`` (its own rank's file, labelled with
        this rank and the checkpoint's step)."""
        rank = self.dist.rank
        restore_rng(load_rng(os.path.join(path, "rng", f"rank-{rank:05d}.json"), rank=rank, step=self.step))

    def save_checkpoint(self) -> str:
        """Write the checkpoint of the current step atomically (collective)."""
        dist, step = self.dist, self.step
        staging = staging_dir(self.ckpt_root, step)
        final = os.path.join(self.ckpt_root, checkpoint_name(step))
        if dist.is_main:
            shutil.rmtree(staging, ignore_errors=True)
            os.makedirs(os.path.join(staging, "rng"))
        barrier()
        self.engine.save_checkpoint(os.path.join(staging, "deepspeed"), tag="ds", client_state={},
                                    save_latest=False)
        save_rng(os.path.join(staging, "rng", f"rank-{dist.rank:05d}.json"), rank=dist.rank, step=step)
        if dist.is_main:
            model = self.module.model
            write_json(os.path.join(staging, TRAINER_STATE_NAME),
                       {"step": step, "skipped_total": self.skipped_total, "consecutive_bad": self.consecutive_bad,
                        "skipped_rows": self.skipped_rows, "next_micro_batch": step * self.accum, "layout": self._layout()})
            self.config.save(os.path.join(staging, "experiment.json"))
            os.makedirs(os.path.join(staging, "model"))
            model.config.save(os.path.join(staging, "model"))
            if model.tokenizer is not None:
                model.tokenizer.save_pretrained(os.path.join(staging, "model", "tokenizer"))
        barrier()
        if dist.is_main:
            required = (TRAINER_STATE_NAME, "experiment.json", "model/config.json", "deepspeed/ds/*model_states.pt",
                        *(f"rng/rank-{r:05d}.json" for r in range(dist.world_size)))
            write_manifest(staging, {"step": step, "stage": self.config.stage, "world_size": dist.world_size},
                           required=required)
            finalize(staging, final)
            prune(self.ckpt_root, self.config.checkpoint.keep_last, keep=(final,))
            logger.info("checkpoint %s", final)
        barrier()
        return final

    # ---- training ----------------------------------------------------------------------------------------
    def _micro_step(self, batch: dict, names: tuple[str, ...]) -> tuple[torch.Tensor, bool]:
        tensors = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        tensors.update(self.module.host_inputs(batch))  # (row choices stay on the host: no device sync)
        kwargs = {}
        if self.clip is not None:
            aligned = tensors["align_rows"]  # (StageModule.host_inputs: the rows with a caption)
            writes = self.module.model.mllm.token_ids.is_output_image_token(batch["input_ids"]).any(dim=1)
            if bool((writes & ~aligned).any()):
                raise ValueError(f"stage 1 aligns every sample that ends in <img_i> tokens to its caption; batch "
                                 f"{batch['ids']} holds such samples without one (only chat samples may have none)")
            captions = [c for c, keep in zip(batch["captions"], aligned.tolist()) if keep]
            kwargs["text_target"] = self.clip(captions) if captions else None
        generator = step_generator(self.config.seed, self.dist.rank, int(batch["micro_index"]), self.device)
        out = self.engine(tensors, generator=generator, **kwargs)
        terms = torch.stack([out[n].detach().float() for n in names])
        finite = bool(torch.isfinite(terms).all())
        # a NaN factor makes every gradient of this step NaN, so ZeRO drops the whole accumulated step
        self.engine.backward(out["loss"] if finite else out["loss"] * float("nan"))
        self.engine.step()
        return terms, finite

    def _accumulate(self, it, names: tuple[str, ...]) -> tuple[list[float], bool, list, int, float, list, int]:
        """The micro-batches of one optimizer step: (loss terms averaged over micro-batches and processes, whether
        any process saw a non-finite term, this process's sample ids, epoch, seconds spent waiting for data, this
        process's skipped rows, the number of rows skipped by all processes)."""
        sums = torch.zeros(len(names), dtype=torch.float64)
        bad, wait, ids, epoch, skips = 0.0, 0.0, [], 0, []
        for m in range(self.accum):
            t = time.perf_counter()
            try:
                batch = next(it)
            except BadDataError as exc:  # (from a loader worker, the message carries the worker's traceback)
                raise BadDataError(str(exc).strip().splitlines()[-1].split("BadDataError: ")[-1]) from None
            wait += time.perf_counter() - t
            expected = self.step * self.accum + m
            if int(batch["micro_index"]) != expected:
                raise RuntimeError(f"data loader out of order: got micro-batch {batch['micro_index']}, "
                                   f"expected {expected}")
            ids.append(list(batch["ids"]))
            skips += batch.get("skipped") or []
            epoch = int(batch["epoch"])
            terms, finite = self._micro_step(batch, names)
            sums += terms.double().cpu()
            bad = max(bad, 0.0 if finite else 1.0)
        packed = torch.cat([sums / self.accum, torch.tensor([bad, len(skips)], dtype=torch.float64)]).to(self.device)
        reduced = all_reduce(packed, "sum").cpu()
        values = (reduced[:-2] / self.dist.world_size).tolist()
        return values, bool(reduced[-2].item() > 0), ids, epoch, wait, skips, int(reduced[-1].item())

    def _count_skips(self, skips: list[dict], skipped_now: int, skips_file) -> None:
        """Log and record this process's skipped rows of the step just taken; stop when the budget is spent."""
        for s in skips:
            logger.warning("step %d: skipped unreadable row %s row %s (sample %s, source %s): %s; replaced by a "
                           "deterministic draw", self.step, s["shard"] or s["source"], s["row"], s["id"],
                           s["source"], s["detail"])
            skips_file.write(json.dumps({"step": self.step, **s}) + "\n")
        if skips:
            skips_file.flush()
        self.skipped_rows += skipped_now
        budget = self.config.data.max_skipped_fraction
        drawn = self.step * self.global_batch
        if self.skipped_rows > budget * max(drawn, _MIN_DRAWS_FOR_BUDGET):
            raise BadDataError(
                f"step {self.step}: {self.skipped_rows} of the {drawn} rows drawn so far were unreadable and skipped, "
                f"more than data.max_skipped_fraction = {budget:g} allows (see {os.path.basename(self.skips_path)} "
                f"in {self.output_dir}). Fix or remove the bad rows (smartedit data validate DIR), or raise "
                f"data.max_skipped_fraction")

    def train(self) -> TrainResult:
        """Optimizer steps from the resumed one to ``max_steps`` (a checkpoint every ``checkpoint.every``), then the
        export of the trained model."""
        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        cfg, dist = self.config, self.dist
        names = LOSS_TERMS[cfg.stage]
        loader = build_loader(self.batches, self.step * self.accum, cfg.max_steps * self.accum,
                              num_workers=cfg.data.num_workers, prefetch_factor=cfg.data.prefetch_factor,
                              pin_memory=self.device.type == "cuda")
        it = iter(loader)
        self.engine.train()
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=not (dist.is_main and cfg.log.progress),
                   desc=cfg.stage, dynamic_ncols=True)
        stack = contextlib.ExitStack()
        ids_file = stack.enter_context(open(self.ids_path, "a", encoding="utf-8")) if cfg.log.sample_ids else None
        skips_file = stack.enter_context(open(self.skips_path, "a", encoding="utf-8"))
        try:
            if not bar.disable:  # log lines above the progress bar instead of through it
                stack.enter_context(logging_redirect_tqdm())
            while self.step < cfg.max_steps:
                values, lr = self._train_step(it, names, skips_file, ids_file)
                bar.update(1)
                bar.set_postfix({n: f"{v:.4g}" for n, v in zip(names, values)} | {"lr": f"{lr:.3g}"})
                if self.step % cfg.checkpoint.every == 0 or self.step == cfg.max_steps:
                    self.save_checkpoint()
        finally:
            stack.close()
            bar.close()
            self.metrics.close()
            del it
        return self._finish()

    def _train_step(self, it, names: tuple[str, ...], skips_file, ids_file) -> tuple[list[float], float]:
        """One optimizer step (its micro-batches), counted, checked and logged; returns its loss terms and lr."""
        cfg, engine = self.config, self.engine
        start = time.perf_counter()
        lr = float(self.scheduler.get_last_lr()[0])
        values, nonfinite_loss, ids, epoch, wait, skips, skipped_now = self._accumulate(it, names)
        applied = engine.was_step_applied()
        self.step += 1
        self._count_skips(skips, skipped_now, skips_file)
        terms_text = ", ".join(f"{n}={v:.6g}" for n, v in zip(names, values))
        self._count_nonfinite(nonfinite_loss, applied, terms_text)
        elapsed = time.perf_counter() - start
        grad_norm = engine.get_global_grad_norm()
        record = {"step": self.step, **dict(zip(names, values)), "lr": lr,
                  "grad_norm": None if grad_norm is None else float(grad_norm), "skipped": not applied,
                  "skipped_total": self.skipped_total, "skipped_rows": self.skipped_rows, "epoch": epoch,
                  "samples": self.step * self.global_batch,
                  "samples_per_s": self.global_batch / elapsed, "data_wait_s": wait, "step_s": elapsed}
        if self.step % cfg.log.every == 0 or self.step == cfg.max_steps or not applied or skipped_now:
            self.metrics.log(record)
        if ids_file is not None:
            ids_file.write(json.dumps({"step": self.step, "ids": ids}) + "\n")
            ids_file.flush()
        if self.consecutive_bad >= cfg.max_nonfinite_in_a_row:
            what = "loss" if nonfinite_loss else "gradient norm"
            raise NonFiniteLossError(
                f"step {self.step}: non-finite {what} in {self.consecutive_bad} consecutive steps "
                f"(steps {self.step - self.consecutive_bad + 1}..{self.step}); loss terms at step "
                f"{self.step}: {terms_text}; samples of this process's first micro-batch: {ids[0]}. "
                f"Lower optim.lr, check the data and the initial weights.")
        return values, lr

    def _count_nonfinite(self, nonfinite_loss: bool, applied: bool, terms_text: str) -> None:
        """Count a step DeepSpeed skipped (non-finite loss or gradient norm); a non-finite loss it applied is a
        configuration error."""
        if nonfinite_loss and applied:
            raise RuntimeError(f"step {self.step}: the loss was not finite ({terms_text}) but DeepSpeed "
                               f"applied the step: use ZeRO stage 1-3 with bf16.check_grad_overflow true")
        if nonfinite_loss or not applied:
            self.skipped_total += 1
            self.consecutive_bad += 1
            what = "loss" if nonfinite_loss else "gradient norm"
            logger.warning("step %d: non-finite %s (%s): step skipped (%d in a row, %d in total)",
                           self.step, what, terms_text, self.consecutive_bad, self.skipped_total)
        else:
            self.consecutive_bad = 0

    def _finish(self) -> TrainResult:
        """Export the trained model and report the run."""
        cfg, dist = self.config, self.dist
        info = {"stage": cfg.stage, "steps": self.step, "skipped_steps": self.skipped_total,
                "experiment": cfg.to_dict()}
        export_from_engine(self.engine, self.module, self.model_dir, self.precision,
                           export_dtype(cfg.checkpoint.export_dtype, self.precision), dist.is_main, info=info)
        if self.skipped_rows:
            logger.warning("%d unreadable row(s) were skipped and replaced (listed in %s)", self.skipped_rows,
                           self.skips_path if dist.world_size == 1 else os.path.join(self.output_dir,
                                                                                    "skipped-rank*.jsonl"))
        return TrainResult(output_dir=self.output_dir, model_dir=self.model_dir, steps=self.step,
                           skipped_steps=self.skipped_total, metrics_path=self.metrics.path,
                           resumed_from=self.resumed_from, skipped_rows=self.skipped_rows)

    def close(self) -> None:
        """Release DeepSpeed's hooks and buffers (lets one process run several trainings, e.g. in tests) and the
        output folder's lock."""
        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()
        self.engine = None
        if self.lock is not None:
            self.lock.release()
            self.lock = None

    def run(self, resume: str | None = None, restart: bool = False) -> TrainResult:
        """Train (``resume``: ``latest`` or a checkpoint folder; ``restart``: delete the folder's checkpoints and
        start at step 0)."""
        try:
            return self.setup(resume, restart).train()
        finally:
            self.close()
