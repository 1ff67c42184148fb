"""The model of each stage and the module DeepSpeed trains.

Stages chain through ``save_pretrained`` folders (``SmartEditModel.from_pretrained``):

* stage 1 and stage 2a train the MLLM-SD model, which has **no BIM**: a BIM in the initial weights (e.g. released
  SmartEdit weights used to start stage 2a) is dropped, with a warning;
* stage 2b adds a BIM whose output heads are zero-initialised, so its first forward computes exactly what the
  stage-2a model computed (a BIM already present is kept and trained);
* stage 2 adds LoRA (r 8, α 16, dropout 0.05, q/v) when the model has none (:func:`smartedit.stages.configure_stage`).

:class:`StageModule` wraps the model for DeepSpeed; its ``forward`` returns every loss term:
stage 1 ``{"lm_loss", "align_mse", "loss"}``, stage 2 ``{"lm_loss", "diffusion_loss", "loss"}``.
"""

from __future__ import annotations

import logging
import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..bim import BidirectionalInteraction
from ..config import CONFIG_NAME, preset, random_preset
from ..model import SmartEditModel
from ..stages import configure_stage, optimizer_param_groups

logger = logging.getLogger(__name__)

__all__ = ["EXPORT_DIR", "resolve_init", "load_init_model", "set_bim", "prepare_stage_model", "StageModule",
           "enable_gradient_checkpointing"]

EXPORT_DIR = "model"
"""Sub-folder of a run's output folder that holds the exported model (``save_pretrained`` format)."""


def resolve_init(path: str) -> str:
    """A model folder from ``path``: the folder itself when it has ``config.json``, else a previous stage's run
    folder's ``model/``."""
    if os.path.isfile(os.path.join(path, CONFIG_NAME)):
        return path
    exported = os.path.join(path, EXPORT_DIR)
    if os.path.isfile(os.path.join(exported, CONFIG_NAME)):
        return exported
    raise FileNotFoundError(f"--init {path!r} is neither a model folder (config.json + model*.safetensors + "
                            f"tokenizer/, written by save_pretrained or the released-weight converter) nor a finished "
                            f"training run (whose model is in {EXPORT_DIR}/)")


def load_init_model(spec: str, seed: int = 0, dtype: torch.dtype | None = None) -> SmartEditModel:
    """``random:PRESET`` (only ``tiny``: a random model for tests and smoke runs) or a model / run folder, read with
    :meth:`SmartEditModel.from_pretrained`'s low-memory loading in ``dtype`` (None: the files' dtype): each process
    holds the model once, in its training precision, never a float32 copy next to it."""
    name = random_preset(spec)
    if name is not None:
        if name != "tiny":
            raise ValueError(f"only random:tiny can be trained from scratch here (got {spec!r}); 7b/13b start from "
                             f"real weights assembled with smartedit.weights (see docs/training.md)")
        logger.warning("starting from a RANDOMLY INITIALISED tiny model")
        return SmartEditModel.from_config(preset(name, **{"bim.enabled": False}), seed=seed)
    return SmartEditModel.from_pretrained(resolve_init(spec), dtype=dtype)


def set_bim(model: SmartEditModel, enabled: bool, seed: int = 0) -> SmartEditModel:
    """Add a fresh BIM (zero-init output heads: the model's outputs do not change) or drop the BIM, in place."""
    if enabled == (model.bim is not None):
        return model
    model.config = model.config.replace(**{"bim.enabled": enabled})
    if not enabled:
        model.bim = None
        return model
    cfg = model.config
    ref = model.null_text_embedding
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bim = BidirectionalInteraction(cfg.bim, cfg.qformer.hidden_size, cfg.vision.grid_size,
                                       cfg.unet.block_out_channels[0], attn_implementation=cfg.attn_implementation)
    model.bim = bim.to(device=ref.device, dtype=next(model.qformer.parameters()).dtype)
    return model


def prepare_stage_model(model: SmartEditModel, stage: str, seed: int = 0,
                        also_train: tuple[str, ...] | list[str] = ()) -> SmartEditModel:
    """Give ``model`` the architecture of ``stage`` (BIM, LoRA) and freeze / unfreeze what it trains (plus the parts
    in ``also_train``)."""
    if stage in ("stage1", "stage2a") and model.bim is not None:
        logger.warning("%s trains the MLLM-SD model, which has no BIM: dropping the BIM of the initial weights",
                       stage)
        set_bim(model, False)
    if stage == "stage2b" and model.bim is None:
        logger.info("stage2b: adding a BIM with zero-initialised output heads")
        set_bim(model, True, seed=seed)
    configure_stage(model, stage, also_train)
    return model


def enable_gradient_checkpointing(model: SmartEditModel) -> None:
    """Recompute activations in backward for the LLM, the Q-Former and the UNet (non-reentrant checkpoints)."""
    from transformers.utils import logging as hf_logging

    kwargs = {"use_reentrant": False}
    model.mllm.llm.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # (it warns that the Q-Former has no token embeddings: it needs none)
    try:
        model.qformer.qformer.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    model.unet.enable_gradient_checkpointing()


class StageModule(nn.Module):
    """What DeepSpeed wraps: the model plus the stage's loss. Only ``model`` holds parameters."""

    def __init__(self, model: SmartEditModel, stage: str, lm_weight: float = 1.0, mse_weight: float = 1.0,
                 also_train: tuple[str, ...] | list[str] = ()):
        super().__init__()
        self.model = model
        self.stage = stage
        self.also_train = tuple(also_train)
        self.lm_weight = lm_weight
        self.mse_weight = mse_weight

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups of the stage (re-applies the freezing; the token matrices go in a no-decay group)."""
        return optimizer_param_groups(self.model, self.stage, weight_decay, self.also_train)

    def forward(self, batch: dict, generator: torch.Generator | None = None,
                text_target: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if self.stage != "stage1":
            return self.model(batch, generator=generator)
        # rows with a caption are aligned; the others (chat kept in stage 1) train the LM loss alone
        aligned = batch.get("align_rows")
        none_aligned = aligned is not None and not bool(aligned.any())
        if text_target is None and not none_aligned:
            raise ValueError("stage 1 needs the CLIP text encoder's hidden states of the captions (text_target)")
        mllm = self.model.mllm
        # samples with an image (edit-prompt alignment) splice its patches into their prompt. A micro-batch without
        # any still runs the vision tower (on one blank image) and the projector (on no row), in the same order, so
        # that every process runs the same modules each step (ZeRO-3 gathers the same parameters on every process)
        rows = batch.get("image_rows")
        if rows is None:
            rows = (batch["input_ids"] == mllm.token_ids.image).any(dim=1)
        input_ids = batch["input_ids"]
        if bool(rows.any()):  # (a host tensor from the trainer: no device sync)
            pixel_values = batch.get("pixel_values")
            if pixel_values is None:
                pixel_values = mllm.preprocess_images((batch["source_images"] + 1) / 2)
            features = mllm.encode_images(pixel_values)  # [B, P, Dv]
        else:
            size = mllm.vision_config.image_size
            blank = torch.zeros(1, 3, size, size, device=input_ids.device)
            features = mllm.encode_images(mllm.preprocess_images(blank)).expand(input_ids.shape[0], -1, -1)
        out = mllm(input_ids, batch.get("attention_mask"), labels=batch.get("labels"), image_features=features)
        if none_aligned:  # the Q-Former still runs (on one blank row), as on every other process
            n, width = self.model.config.mllm.num_image_tokens, out.hidden_states.shape[-1]
            img_hidden = out.hidden_states.new_zeros(1, n, width)
        elif aligned is None or bool(aligned.all()):
            img_hidden = out.img_hidden  # [B, N, H]
        else:
            keep = aligned.to(input_ids.device)
            img_hidden = mllm.gather_image_token_states(input_ids[keep], out.hidden_states[keep])  # [b, N, H]
        if img_hidden is None:
            raise ValueError(f"every stage-1 sample with a caption must end in the "
                             f"{self.model.config.mllm.num_image_tokens} <img_i> tokens (caption samples do)")
        context = self.model.qformer(img_hidden)  # [b, Q, D]
        align = context.sum() * 0.0 if none_aligned else F.mse_loss(context.float(), text_target.float())
        lm = out.lm_loss if out.lm_loss is not None else context.sum() * 0.0
        return {"lm_loss": lm, "align_mse": align, "loss": self.lm_weight * lm + self.mse_weight * align}

    def host_inputs(self, batch: dict) -> dict[str, torch.Tensor]:
        """The batch entries :meth:`forward` reads on the host (computed from the collated CPU batch, kept off the
        device so that choosing rows never waits for the device): ``is_edit``, ``image_rows`` (the rows whose
        prompt holds the image) and, in stage 1, ``align_rows`` (the rows with a caption to align to)."""
        out = {"image_rows": (batch["input_ids"] == self.model.mllm.token_ids.image).any(dim=1)}
        if self.stage == "stage1" and "captions" in batch:
            out["align_rows"] = torch.tensor([isinstance(c, str) and bool(c) for c in batch["captions"]])
        if isinstance(batch.get("is_edit"), torch.Tensor):
            out["is_edit"] = batch["is_edit"]
        return out
