"""The ShapesWorld recipe: every step from nothing to a trained SmartEdit-tiny, its baselines and the ablation.

Steps (each resumable; a finished step leaves ``OUTPUT/done/<step>.json`` and is skipped on re-runs):

1. ``vae`` — pretrain the tiny VAE (:func:`smartedit.shapes.pretrain.pretrain_vae`);
2. ``llava`` — pretrain the tiny LLaVA on captions, VQA chat and the knowledge Q&A;
3. ``control`` — CLIP text + the InstructPix2Pix UNet trained as a one-step regressor on simple edits (the
   non-diffusion control, and where the text grounding is learnt); ``ip2p`` — the same network fine-tuned from it
   as an InstructPix2Pix diffusion model (the SD/IP2P of this world, and the IP2P-tiny baseline);
4. ``assemble`` — LLaVA-tiny + IP2P-tiny (read back with :func:`smartedit.weights.load_sd`) → the initial model;
5. ``stage1`` → ``stage2a`` (MLLM-SD-tiny, no BIM) → ``stage2b`` (SmartEdit-tiny): the project's training
   scripts (:func:`smartedit.train.cli.run_stage`, DeepSpeed ZeRO-2, ``--resume latest``) on the docs/design.md mixture
   with ShapesWorld families in each dataset's slot;
6. ``testset`` — the held-out Reason-Edit-layout test set with exact targets (+ ``7-Simple`` plain edits);
7. ``evaluate`` — every model (identity, both IP2P-tiny, regression control, MLLM-SD-tiny, SmartEdit-tiny, and the
   fair IP2P-tiny told each instruction plainly) through ``smartedit.eval.reason_edit.evaluate`` with the same
   seeds / steps / guidance;
8. ``report`` — ``ablation.json`` + ``ablation.md`` + ``ablation_grid.png``.

``python train/shapes_recipe.py --output runs/shapes`` runs everything; ``--steps vae,llava`` runs a subset (two
processes may run disjoint steps at once, e.g. ``llava`` beside ``vae``); ``--ship checkpoints`` copies the
results into the shipped folders.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..config import ConfigError, ConfigSection, RootConfig, SmartEditConfig, check_numbers, is_number, preset
from ..train.checkpoint import write_json
from .pretrain import PretrainSettings

logger = logging.getLogger(__name__)

__all__ = ["shapes_config", "RecipeConfig", "STEPS", "run_recipe", "ship", "compare_runs"]

STEPS = ("vae", "decoder", "vision", "llava", "control", "ip2p", "ip2p_mix", "assemble", "stage1", "stage2a", "stage2b",
         "testset", "evaluate", "report")
MODELS = ("identity", "ip2p", "ip2p_mix", "control", "mllmsd", "smartedit", "plainly")
MODEL_STEPS = {"identity": None, "ip2p": "ip2p", "ip2p_mix": "ip2p_mix", "control": "control", "mllmsd": "stage2a",
               "smartedit": "stage2b", "plainly": "ip2p_mix"}
"""The step that trains each evaluated model (the identity needs none)."""
COMPARED = ("ip2p", "ip2p_mix", "mllmsd", "smartedit")
"""The trained editors whose per-sample scores a re-run is compared with (and that :func:`ship` keeps)."""
MODEL_NAMES = {"identity": "identity (input copied)", "ip2p": "IP2P-tiny (CLIP text, simple edits)",
               "ip2p_mix": "IP2P-tiny fair (CLIP text, stage-2 edits)",
               "control": "regression control (IP2P-tiny net, one step)", "mllmsd": "MLLM-SD-tiny (no BIM, stage 2a)",
               "smartedit": "SmartEdit-tiny (stage 2b)",
               "plainly": "IP2P-tiny fair told plainly (the ceiling: each instruction said plainly)"}
"""``plainly`` is the fair IP2P-tiny given each test instruction said plainly ("remove the red circle" for "remove
the circle on the left", ``testset/reason_edit_plain``): what the editor does when told which shape is meant, the
most an MLLM that hands it that wording can reach."""


def shapes_config(**overrides) -> SmartEditConfig:
    """The model trained on ShapesWorld: the ``tiny`` preset with a 64-px vision input (an 8×8 patch grid, so small
    shapes stay recognisable), 8 latent channels (a 4-channel ×4 VAE learns sharp shape edges far slower: 22.9 dB
    after 400 steps vs the 28 dB the background must keep), UNet attention at the 8×8 level only (self-attention over 16×16 latents with 8-dim
    heads costs half the step on a CPU), x0-prediction (``sample``) on the cosine schedule (made for 32–64 px images:
    the linear schedule leaves too much signal at t = T on 16×16 latents; v-prediction's loss weighs an x0 error by
    1/σ_t², so the network spends itself on the near-clean steps where an edit is a copy and under-trains the noisy ones
    where the shape to edit is chosen: IP2P-tiny fine-tuned from the same control scored 0.54 median IoU on
    validation recolour / remove with v, 0.80 with x0), diffusion of the latent CHANGE from the source
    (with the target latent, IP2P-tiny still painted washed-out noise after 500 steps: every background pixel had to
    be regenerated; with the change, the background is a predicted zero), the change applied in pixel space
    (``scheduler.decode = "residual"``: the tiny VAE's edge errors cap plain decoding at 0.60 edit-region IoU even for
    the exact target, ``bench/vae_ceiling.py``) and deterministic DDIM sampling."""
    base = {
        "vision.image_size": 64,
        "vae.latent_channels": 8,
        "unet.latent_channels": 8,
        "unet.down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D"],
        "unet.up_block_types": ["CrossAttnUpBlock2D", "UpBlock2D"],
        "unet.attention_head_dim": 2,
        "scheduler.prediction_type": "sample",
        "scheduler.beta_schedule": "squaredcos_cap_v2",
        "scheduler.sampler": "DDIMScheduler",
        "scheduler.diffuse": "change",
        "scheduler.decode": "residual",
    }
    base.update(overrides)
    return preset("tiny", **base)


@dataclass
class StageSettings(ConfigSection):
    """One project training stage inside the recipe."""

    steps: int = 500
    batch_size: int = 16
    lr: float = 3e-4
    warmup_steps: int = 50
    samples_per_source: int = 3000
    """ShapesWorld samples generated for each data source of the mixture."""

    def problems(self, prefix: str = "") -> list[str]:
        return check_numbers(self, prefix, positive_int=("steps", "batch_size", "samples_per_source"),
                              nonneg_int=("warmup_steps",), positive=("lr",))


@dataclass
class EvalSettings(ConfigSection):
    """The held-out test set and how every model is sampled on it."""

    per_category: int = 30
    """Held-out scenes per Reason-Edit category. 30 leave a 90 % paired interval of about ±0.12 IoU per category;
    the shipped run scores 100 (and 100 ``simple``), ≈ ±0.06, about 16 min more on 2 cores."""
    simple: int = 40
    steps: int = 20
    text_guidance: float = 1.5
    """Text and image guidance, chosen on a validation stream of 40 recolour / remove edits (another seed stream
    than the test set): IP2P-tiny median IoU 0.54 at (1.5, 1.0) vs 0.46 at (2.0, 1.0) and 0.20 at (5.0, 1.5);
    SmartEdit-tiny 0.49 at (1.5, 1.0) vs 0.44 at (2.0, 1.5). Higher guidance over-saturates these small models."""
    image_guidance: float = 1.0
    seed: int = 0

    def problems(self, prefix: str = "") -> list[str]:
        return check_numbers(self, prefix, positive_int=("per_category", "simple", "steps"),
                              nonneg=("text_guidance", "image_guidance"))


def _pre(**kw) -> Any:
    return field(default_factory=lambda: PretrainSettings(**kw))


def _stage(**kw) -> Any:
    return field(default_factory=lambda: StageSettings(**kw))


@dataclass
class RecipeConfig(RootConfig):
    """Every budget of the ShapesWorld recipe (defaults: about 2 hours on 2 CPU cores)."""

    FILE_NAME = "recipe.json"
    WHAT = "ShapesWorld recipe config"
    LOAD_HINT = "write one with `python train/shapes_recipe.py --print-config`"

    seed: int = 0
    vae: PretrainSettings = _pre(steps=1200, lr=1e-3, warmup_steps=50, checkpoint_every=100)
    decoder: PretrainSettings = _pre(steps=1500, lr=5e-4, warmup_steps=50)
    vision: PretrainSettings = _pre(steps=6000, lr=1e-3, warmup_steps=200, weight_decay=0.05, checkpoint_every=500)
    """LLaVA-tiny's CLIP ViT pretrained on per-patch shape labels (``llava_vision``; skipped otherwise)."""
    llava: PretrainSettings = _pre(steps=1500, lr=1e-3, warmup_steps=100)
    control: PretrainSettings = _pre(steps=4000, schedule_steps=5000, lr=1e-3, warmup_steps=100)
    ip2p: PretrainSettings = _pre(steps=1500, lr=5e-4, warmup_steps=50)
    ip2p_mix: PretrainSettings = _pre(steps=2000, lr=3e-4, warmup_steps=50)
    """The fair baseline: IP2P-tiny fine-tuned on the edits of SmartEdit-tiny's stage-2 mixture in its ratios
    (:func:`smartedit.shapes.pretrain.stage2_family_weights`; reasoning facts held out as for SmartEdit-tiny) with
    the UNet steps, batch and learning rate of stages 2a + 2b together."""
    stage1: StageSettings = _stage(steps=3000, lr=1e-3, samples_per_source=6000)
    stage2a: StageSettings = _stage(steps=1000, lr=3e-4)
    stage2b: StageSettings = _stage(steps=1000, lr=3e-4)
    eval: EvalSettings = field(default_factory=EvalSettings)
    stage1_grounded: bool = True
    """Stage 1 aligns the ``<img_i>`` states to IP2P-tiny's CLIP text of each instruction inside the EDIT prompt with
    its scene (``shapes:grounded_instruction``); false: the paper's text-only caption prompt. With the tiny frozen LLM
    the text-only alignment does not carry over to edit prompts (on held-out edit prompts its Q-Former output is
    further from the CLIP text than the mean embedding, top-1 instruction retrieval 3 %, edit-region IoU 0.04)."""
    stage1_explicit: bool = False
    """With ``stage1_grounded``: align each edit prompt to the CLIP text of its instruction said plainly
    (:attr:`smartedit.shapes.world.Edit.explicit`: "remove the circle on the left" → "remove the red circle", "the
    smaller star" → "the small red star"), the wording IP2P-tiny's UNet already edits by, instead of the instruction
    itself. Stage 1 then asks the MLLM to work out which shape is meant, from the image, and hand the UNet a
    condition it grounds; the CLIP-text baseline reads the instruction as given. Mirror, Multiple-Objects, Color
    and perception edits keep their instruction (already plain, or no plainer wording exists). Off by default; on in
    the shipped run, with ``stage1.steps`` 6000."""
    stage1_focus: dict[str, float] = field(default_factory=dict)
    """Shares of stage-1 prompts drawn from one kind of edit alone, an edit family or an understanding category (e.g.
    ``{"1-Left-Right": 0.25, "2-Relative-Size": 0.25}``: half of stage 1 asks which shape a side or size picks out,
    where the uniform mix gives each category 5 %); the rest draws the family uniformly. Empty in the shipped run."""
    stage1_chat: float = 0.0
    """Share of stage-1 samples that are LLaVA-tiny's own chat (``shapes:chat``: descriptions, VQA and the knowledge
    Q&A, every fact included), trained with the LM loss alone (no caption to align to), so that stage 1, which
    trains the LLM on edit prompts, does not overwrite what the LLM knows. Without it, after the shipped stage 1
    LLaVA-tiny answers "Which shape is the shape with no corners?" with an edit, and the reply is right for only
    25-52 % of reasoning instructions whose fact it saw only in chat (three seeds). With 0.2, the shipped run's
    value: chat facts kept, those replies right 55-75 %, Reasoning +0.27 ± 0.03 IoU over the fair baseline over three
    seeds (+0.18 ± 0.13 without). 0 (off) by default."""
    edit_reply: bool = False
    """With ``stage1_grounded``: every edit prompt of stages 1 and 2 is answered with the instruction said plainly
    (:attr:`smartedit.shapes.world.Edit.explicit`) before the ``<img_i>`` tokens, learned with the LM loss
    (``shapes:FAMILY:N:SEED:reply``); the model is saved with ``mllm.writes_reply``, so it decodes that reply at
    inference and its ``<img_i>`` states read the words it wrote ("remove the circle on the left" → "remove the red
    circle" → the condition), as a text encoder reads a prompt. Stage 1 then also trains every token row
    (``also_train`` ``token_rows``): LLaVA-tiny never said "remove", "replace" or "with", and with their LM-head
    rows frozen at their initial values stage 1 wrote the plain wording exactly for 28 % of edit prompts. Off by
    default; on in the shipped run."""
    stage1_train_llm: bool = True
    """Stage 1 also trains the LLM's decoder layers (``also_train = ["llm"]``; the paper keeps the LLM frozen). The
    tiny LLM, pretrained on a few thousand chats, hardly varies its ``<img_i>`` states with the instruction (0.6 %
    of their power across 32 instructions on one scene): frozen (or with LoRA), stage 1 learns only the mean CLIP
    text (top-1 instruction retrieval at chance, 0.03, after 800-2400 steps); trained, 3000 steps reach retrieval
    0.88 and the stage-1 model already edits like IP2P-tiny."""
    llava_skills: bool = False
    """LLaVA-tiny also learns a question of every understanding skill (where is the shape an instruction names, how
    many of a kind, a named shape's colour: :data:`smartedit.shapes.world.SKILLS`); its probe then reports each
    skill on held-out scenes. Off by default; on in the shipped run (``checkpoints/smartedit-tiny/recipe.json``)."""
    llava_skill_share: float = 0.45
    """With ``llava_skills``: the share of LLaVA-tiny's chat samples that are skill questions (the rest: descriptions,
    VQA and knowledge Q&A in the ratio 4 : 2 : 5). One skill needs tens of thousands of questions before the LLM binds
    a named shape to what the tower sees (docs/training.md)."""
    llava_turns: int = 1
    """With ``llava_skills``: questions per skill scene (:func:`smartedit.shapes.world.skill_chat`); more than one asks
    about several shapes of one image, so the answers differ only by what the question names."""
    llava_vision: bool = False
    """Pretrain LLaVA-tiny's vision tower first (the ``vision`` step: every patch's shape kind, colour, size and rank
    from the left, :func:`smartedit.shapes.pretrain.pretrain_vision`, ShapesWorld's stand-in for CLIP's
    pretraining) and keep it frozen in the ``llava`` step, as LLaVA keeps CLIP. Trained only through the chat loss,
    the tower tells a patch's colour (99 %) but hardly its shape kind (26 % after 600 steps of direct supervision of
    the default 64-wide, 3-layer tower; 59 % after 8000). Off by default; on in the shipped run."""
    mllm_config: dict[str, Any] = field(default_factory=dict)
    """Dotted overrides of :func:`shapes_config` for LLaVA-tiny and what follows its widths, applied wherever the
    recipe builds the SmartEdit model (``vision``, ``llava``, ``assemble``), e.g. ``{"vision.hidden_size": 128,
    "vision.intermediate_size": 512, "vision.num_hidden_layers": 4, "bim.hidden_size": 128,
    "mllm.num_hidden_layers": 4}`` (the shipped run's). Empty by default."""
    ip2p_from_control: bool = True
    """Start IP2P-tiny's text encoder and UNet from the regression control (which learns the grounding, which
    words pick which pixels, far faster: every sample is an edit to infer, not a denoising step that the noisy
    latent half reveals); false: from scratch."""

    def problems(self, prefix: str = "") -> list[str]:
        p = []
        if not isinstance(self.seed, int):
            p.append(f"{prefix}seed must be an integer, got {self.seed!r}")
        for name in ("stage1_grounded", "stage1_explicit", "edit_reply", "ip2p_from_control", "stage1_train_llm",
                     "llava_skills", "llava_vision"):
            if not isinstance(getattr(self, name), bool):
                p.append(f"{prefix}{name} must be true or false, got {getattr(self, name)!r}")
        for name in ("vae", "decoder", "vision", "llava", "control", "ip2p", "ip2p_mix", "stage1", "stage2a",
                     "stage2b", "eval"):
            p += getattr(self, name).problems(f"{prefix}{name}.")
        if not isinstance(self.llava_turns, int) or isinstance(self.llava_turns, bool) or self.llava_turns < 1:
            p.append(f"{prefix}llava_turns must be a whole number of at least 1, got {self.llava_turns!r}")
        if not (is_number(self.llava_skill_share) and 0 < self.llava_skill_share < 1):
            p.append(f"{prefix}llava_skill_share must be a number between 0 and 1 (exclusive), got "
                     f"{self.llava_skill_share!r}")
        if self.stage1_explicit is True and self.stage1_grounded is False:
            p.append(f"{prefix}stage1_explicit needs stage1_grounded: the plain wording is worked out from the scene "
                     f"in the edit prompt (set stage1_grounded to true, or stage1_explicit to false)")
        if self.edit_reply is True and self.stage1_grounded is False:
            p.append(f"{prefix}edit_reply needs stage1_grounded: the reply is worked out from the scene in the edit "
                     f"prompt (set stage1_grounded to true, or edit_reply to false)")
        p += self._focus_problems(prefix)
        if not isinstance(self.mllm_config, dict):
            p.append(f"{prefix}mllm_config must be a JSON object of dotted model-config keys, got {self.mllm_config!r}")
        elif self.mllm_config:
            try:
                shapes_config(**self.mllm_config)
            except ConfigError as exc:
                p += [f"{prefix}mllm_config: {problem}" for problem in exc.problems]
        return p

    def _focus_problems(self, prefix: str) -> list[str]:
        from .world import EDIT_KINDS

        if not isinstance(self.stage1_focus, dict):
            return [f"{prefix}stage1_focus must be a JSON object of edit kinds and shares, got {self.stage1_focus!r}"]
        p = [f"{prefix}stage1_focus.{k}: unknown edit kind; choose from {', '.join(EDIT_KINDS)}"
             for k in self.stage1_focus if k not in EDIT_KINDS]
        p += [f"{prefix}stage1_focus.{k} must be a share between 0 and 1, got {v!r}"
              for k, v in self.stage1_focus.items() if not (is_number(v) and 0 <= v < 1)]
        if not p and sum(self.stage1_focus.values()) >= 1:
            p.append(f"{prefix}stage1_focus: the shares add up to {sum(self.stage1_focus.values()):g}; keep them below 1 "
                     f"(the rest of stage 1 draws every family)")
        if not (is_number(self.stage1_chat) and 0 <= self.stage1_chat < 1):
            p.append(f"{prefix}stage1_chat must be a share between 0 and 1, got {self.stage1_chat!r}")
        elif not p and sum(self.stage1_focus.values()) + self.stage1_chat >= 1:
            p.append(f"{prefix}stage1_chat + stage1_focus add up to "
                     f"{sum(self.stage1_focus.values()) + self.stage1_chat:g}; keep them below 1 (the rest of stage 1 "
                     f"draws every edit family)")
        return p

    def model_config(self, **overrides: Any) -> SmartEditConfig:
        """The recipe's SmartEdit config: :func:`shapes_config` with ``mllm_config`` and then ``overrides``."""
        return shapes_config(**{**self.mllm_config, **overrides})


# ---- steps ---------------------------------------------------------------------------------------------------

class _Paths:
    def __init__(self, root: str):
        self.root = root
        self.vae = os.path.join(root, "vae")
        self.decoder = os.path.join(root, "decoder")
        self.vision = os.path.join(root, "vision")
        self.llava = os.path.join(root, "llava")
        self.ip2p = os.path.join(root, "ip2p")
        self.ip2p_mix = os.path.join(root, "ip2p_mix")
        self.control = os.path.join(root, "control")
        self.init = os.path.join(root, "init")
        self.stage = {s: os.path.join(root, s) for s in ("stage1", "stage2a", "stage2b")}
        self.testset = os.path.join(root, "testset")
        self.eval = os.path.join(root, "eval")
        self.done = os.path.join(root, "done")

    def model(self, name: str) -> str:
        return {"ip2p": os.path.join(self.ip2p, "pipeline"), "ip2p_mix": os.path.join(self.ip2p_mix, "pipeline"),
                "control": os.path.join(self.control, "pipeline"),
                "mllmsd": os.path.join(self.stage["stage2a"], "model"),
                "smartedit": os.path.join(self.stage["stage2b"], "model"),
                "plainly": os.path.join(self.ip2p_mix, "pipeline")}[name]


def _settings(base: PretrainSettings, seed: int) -> PretrainSettings:
    return PretrainSettings(**{**base.to_dict(), "seed": seed})


def _vae_scaling(paths: _Paths) -> float:
    with open(os.path.join(paths.vae, "vae", "config.json"), encoding="utf-8") as f:
        return float(json.load(f)["scaling_factor"])


def _step_vae(cfg: RecipeConfig, paths: _Paths) -> dict:
    from .pretrain import pretrain_vae

    pretrain_vae(shapes_config(), paths.vae, _settings(cfg.vae, cfg.seed))
    with open(os.path.join(paths.vae, "vae_quality.json"), encoding="utf-8") as f:
        return json.load(f)


def _step_decoder(cfg: RecipeConfig, paths: _Paths) -> dict:
    from .pretrain import pretrain_vae

    pretrain_vae(shapes_config(), paths.decoder, _settings(cfg.decoder, cfg.seed), init=os.path.join(paths.vae, "vae"))
    with open(os.path.join(paths.decoder, "vae_quality.json"), encoding="utf-8") as f:
        return json.load(f)


def _step_vision(cfg: RecipeConfig, paths: _Paths) -> dict:
    from .pretrain import pretrain_vision

    if not cfg.llava_vision:
        return {"skipped": "llava_vision is false: the tower trains inside the llava step"}
    pretrain_vision(cfg.model_config(**{"bim.enabled": False}), paths.vision, _settings(cfg.vision, cfg.seed))
    with open(os.path.join(paths.vision, "vision_quality.json"), encoding="utf-8") as f:
        probe = json.load(f)
    logger.info("vision tower probe (accuracy on shape patches): %s", probe)
    return {"probe": probe}


def _step_llava(cfg: RecipeConfig, paths: _Paths) -> dict:
    from safetensors.torch import load_file

    from ..model import SmartEditModel
    from .pretrain import pretrain_llava, probe_llava, probe_llava_skills

    vision = None
    if cfg.llava_vision:
        vision = paths.vision
        if not os.path.isfile(os.path.join(vision, "vision.safetensors")):
            raise FileNotFoundError(f"{vision}/vision.safetensors does not exist: run the recipe's vision step "
                                    f"before llava (or set llava_vision=false)")
    pretrain_llava(cfg.model_config(), paths.llava, _settings(cfg.llava, cfg.seed), skills=cfg.llava_skills,
                   vision=vision, skill_share=cfg.llava_skill_share, turns=cfg.llava_turns)
    model = SmartEditModel.from_config(cfg.model_config(**{"bim.enabled": False}), seed=cfg.seed)
    model.mllm.load_state_dict(load_file(os.path.join(paths.llava, "mllm.safetensors")), strict=True)
    probe = probe_llava(model.eval(), seed=cfg.seed)
    if cfg.llava_skills:
        probe["skills"] = probe_llava_skills(model, seed=cfg.seed)
    logger.info("LLaVA-tiny probe: %s", probe)
    return probe


def _step_ip2p(cfg: RecipeConfig, paths: _Paths, which: str = "ip2p") -> dict:
    """Train one CLIP-text editor: ``control`` (the one-step regressor on simple edits), ``ip2p`` (IP2P-tiny, from
    the control when ``ip2p_from_control``) or ``ip2p_mix`` (the fair baseline: IP2P-tiny fine-tuned on the stage-2
    edit mixture, ``RecipeConfig.ip2p_mix``)."""
    from .pretrain import pretrain_ip2p, stage2_family_weights

    objective = "regression" if which == "control" else "diffusion"
    init = {"control": None, "ip2p": paths.model("control") if cfg.ip2p_from_control else None,
            "ip2p_mix": paths.model("ip2p")}[which]
    if init is not None and not os.path.isdir(init):
        before = "control" if which == "ip2p" else "ip2p"
        raise FileNotFoundError(f"{init} does not exist: run the recipe's {before} step before {which}"
                                + (" (or set ip2p_from_control=false)" if which == "ip2p" else ""))
    config = shapes_config(**{"vae.scaling_factor": _vae_scaling(paths)})
    pretrain_ip2p(config, os.path.join(paths.vae, "vae"), getattr(paths, which),
                  _settings(getattr(cfg, which), cfg.seed), objective=objective, family="stage2" if which == "ip2p_mix" else "simple", init=init)
    return {"init": init, **({"families": stage2_family_weights()} if which == "ip2p_mix" else {})}


def _step_assemble(cfg: RecipeConfig, paths: _Paths) -> dict:
    """The stage-1 initial model: the tiny LLaVA's MLLM + IP2P-tiny's UNet, VAE and null text embedding."""
    from safetensors.torch import load_file

    from ..weights import load_sd
    from ..model import SmartEditModel

    from diffusers import AutoencoderKL

    # the final VAE: the pretrained encoder + the decoder fine-tuned on its (unchanged) latents, written into both
    # InstructPix2Pix folders too, so every model decodes with the same decoder
    base = AutoencoderKL.from_pretrained(os.path.join(paths.vae, "vae"), local_files_only=True)
    final = AutoencoderKL.from_pretrained(os.path.join(paths.decoder, "vae"), local_files_only=True)
    def encoder_state(vae) -> dict[str, torch.Tensor]:
        return {k: v for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}

    mine, theirs = encoder_state(base), encoder_state(final)
    changed = [k for k in mine if k not in theirs or not torch.equal(mine[k], theirs[k])]
    if changed:
        raise RuntimeError(f"{paths.decoder} holds another VAE encoder than {paths.vae} ({len(changed)} tensors "
                           f"differ, e.g. {changed[0]}); re-run the decoder step (--steps decoder --force)")
    for name in ("ip2p", "ip2p_mix", "control"):
        if os.path.isdir(paths.model(name)):
            final.save_pretrained(os.path.join(paths.model(name), "vae"))
    sd = load_sd(paths.model("ip2p"))
    config = cfg.model_config(**{"vae.scaling_factor": sd.vae_config["scaling_factor"], "bim.enabled": False,
                                 "mllm.writes_reply": cfg.edit_reply})
    model = SmartEditModel.from_config(config, seed=cfg.seed)
    model.mllm.load_state_dict(load_file(os.path.join(paths.llava, "mllm.safetensors")), strict=True)
    model.unet.load_state_dict(sd.unet.state_dict(), strict=True)
    model.vae.load_state_dict(sd.vae.state_dict(), strict=True)
    with torch.no_grad():
        model.null_text_embedding.copy_(sd.null_text_embedding)
    model.save_pretrained(paths.init)
    return {"parameters": sum(p.numel() for p in model.parameters())}


def stage_experiment(cfg: RecipeConfig, stage: str, paths: _Paths):
    """The experiment config of one project stage inside the recipe (written next to the run)."""
    from ..data.mixture_config import DEFAULT_STAGE2_RATIOS
    from ..train.presets import TINY_STAGE2_SOURCES, experiment_preset
    from .world import TRAIN_FAMILIES

    s: StageSettings = getattr(cfg, stage)
    n = s.samples_per_source
    reply = ":reply" if cfg.edit_reply else ""  # edit prompts answered with the instruction said plainly
    if stage == "stage1":
        family = ("explicit_instruction" if cfg.stage1_explicit else "grounded_instruction") if cfg.stage1_grounded \
            else "instruction"
        sources = {"cc12m": f"shapes:{family}:{n}:{cfg.seed}{reply}"}
        ratios = {"cc12m": 1.0 - sum(cfg.stage1_focus.values()) - cfg.stage1_chat}
        if cfg.stage1_chat:  # LLaVA-tiny's chat, LM loss only: what the LLM knows is kept while it learns edits
            sources["llava_instruct"], ratios["llava_instruct"] = f"shapes:chat:{n}:{cfg.seed}", cfg.stage1_chat
        for k, (kind, share) in enumerate(cfg.stage1_focus.items(), start=1):  # its own sample stream per kind
            name = kind.split("-", 1)[-1].lower().replace("-", "_")
            sources[name], ratios[name] = f"shapes:{family}/{kind}:{n}:{cfg.seed + 10 * k}{reply}", share
        data = {"data.sources": sources, "data.ratios": ratios,
                "align.clip_text": paths.model("ip2p"),
                "also_train": (["llm"] if cfg.stage1_train_llm else []) + (["token_rows"] if cfg.edit_reply else [])}
    else:
        sources = {}
        for name, spec in TINY_STAGE2_SOURCES.items():  # shapes:FAMILY:N[:SEED] in each dataset's slot
            parts = spec.split(":")
            offset = int(parts[3]) if len(parts) > 3 else 0
            edits = parts[1] in TRAIN_FAMILIES
            sources[name] = f"shapes:{parts[1]}:{n}:{cfg.seed + offset}{reply if edits else ''}"
        data = {"data.sources": sources, "data.ratios": dict(DEFAULT_STAGE2_RATIOS)}
    init = paths.init if stage == "stage1" else paths.stage["stage1" if stage == "stage2a" else "stage2a"]
    return experiment_preset("tiny", stage, **{
        "seed": cfg.seed, "init": init, "output_dir": paths.stage[stage], "max_steps": s.steps,
        "micro_batch_size": s.batch_size, "optim.lr": s.lr, "optim.warmup_steps": s.warmup_steps,
        "checkpoint.every": max(1, s.steps // 4), "checkpoint.keep_last": 1, "log.every": 25,
        "log.tensorboard": False, **data})


def _step_stage(cfg: RecipeConfig, paths: _Paths, stage: str) -> dict:
    from ..train.cli import run_stage

    experiment = stage_experiment(cfg, stage, paths)
    os.makedirs(os.path.join(paths.root, "configs"), exist_ok=True)
    config_path = experiment.save(os.path.join(paths.root, "configs", f"{stage}.json"))
    status = run_stage(stage, ["--config", config_path, "--resume", "latest"])
    if status:
        raise RuntimeError(f"{stage} failed with status {status} (its log above says why); re-run the recipe to "
                           f"resume from the last checkpoint")
    result = {"config": config_path}
    if stage == "stage1":
        result["alignment"] = stage1_alignment(paths, cfg.seed, explicit=cfg.stage1_explicit)
        if "reply_accuracy" in result["alignment"]:
            logger.info("stage 1 writes the instruction said plainly: %.2f of edit prompts exactly (%s)",
                        result["alignment"]["reply_accuracy"],
                        {c: round(p["reply_accuracy"], 2) for c, p in result["alignment"]["per_category"].items()})
    return result


def stage1_alignment(paths: _Paths, seed: int, count: int = 32, explicit: bool = False, rounds: int = 4) -> dict:
    """:func:`smartedit.eval.alignment.alignment_probe` of the stage-1 model on ``count`` fresh edit prompts of every
    family (does its context carry the instruction the way IP2P-tiny's CLIP text does?), and ``per_family`` /
    ``per_category``: the same probe on prompts of each edit family / understanding category alone, where retrieval
    must tell apart instructions of one kind (e.g. "the star on the left" from "the star on the right"), averaged over
    ``rounds`` sets of ``count`` (one set's retrieval varies by about ±0.1 from set to set).
    ``explicit``: against the CLIP text of each instruction said plainly, the stage-1 target of ``stage1_explicit``.
    A model that writes its reply (``edit_reply``) is probed on the reply it decodes, and ``reply_accuracy`` says how
    often that is the instruction said plainly."""
    from ..eval.alignment import alignment_probe
    from ..model import SmartEditModel
    from ..train.clip_text import ClipTextTarget
    from .pretrain import EDIT_FAMILIES, edit_batch
    from .world import UNDERSTANDING

    model = SmartEditModel.from_pretrained(os.path.join(paths.stage["stage1"], "model"))
    target = ClipTextTarget(paths.model("ip2p"))

    def probe_on(family: str, step: int) -> dict:
        src, _, texts = edit_batch(family, seed + 5, step, count, model.config.resolution, stream=48)
        plain = None  # the same edits said plainly: the alignment target, or the reply the model should write
        if explicit or model.config.mllm.writes_reply:
            plain = edit_batch(family, seed + 5, step, count, model.config.resolution, stream=48, explicit=True)[2]
        return alignment_probe(model, target, (src + 1) / 2, texts, targets=plain if explicit else None,
                               replies=plain)

    probe = probe_on("any", 0)
    logger.info("stage-1 alignment on edit prompts: MSE %.3f (mean-answer MSE %.3f), context variance %.3f, "
                "top-1 instruction retrieval %.2f (chance %.2f)", probe["mse"], probe["mse_of_mean"],
                probe["context_variance"], probe["top1_retrieval"], probe["chance"])
    def pooled(family: str) -> dict:  # retrieval among `count` prompts, averaged over `rounds` sets of them
        runs = [probe_on(family, 1 + r) for r in range(rounds)]
        out = {key: sum(run[key] for run in runs) / rounds for key in runs[0]}
        return {**out, "edits": count * rounds}

    probe["per_family"] = {family: pooled(family) for family in EDIT_FAMILIES}
    logger.info("stage-1 top-1 retrieval within each family: %s", {f: round(p["top1_retrieval"], 2)
                                                                   for f, p in probe["per_family"].items()})
    probe["per_category"] = {category: pooled(category) for category in UNDERSTANDING}
    logger.info("stage-1 top-1 retrieval within each understanding category: %s",
                {c: round(p["top1_retrieval"], 2) for c, p in probe["per_category"].items()})
    return probe


def _step_testset(cfg: RecipeConfig, paths: _Paths) -> dict:
    from .world import write_reason_edit_testset

    if os.path.isdir(paths.testset):  # written again (e.g. a larger eval.per_category): no sample of the old one stays
        shutil.rmtree(paths.testset)
    return write_reason_edit_testset(paths.testset, per_category=cfg.eval.per_category, seed=cfg.seed,
                                     simple=cfg.eval.simple)


def _step_evaluate(cfg: RecipeConfig, paths: _Paths, models: tuple[str, ...] = MODELS) -> dict:
    from ..eval.generate import GenerationSettings
    from ..eval.reason_edit import evaluate
    from .editors import IP2PEditor, RegressionEditor

    e = cfg.eval
    settings = GenerationSettings(num_inference_steps=e.steps, text_guidance_scale=e.text_guidance,
                                  image_guidance_scale=e.image_guidance, seed=e.seed, batch_size=8)
    data = os.path.join(paths.testset, "reason_edit")
    targets = os.path.join(paths.testset, "targets")
    out = {}
    for name in models:
        where = os.path.join(paths.eval, name)
        skipped = _skipped(paths, MODEL_STEPS[name])
        if skipped:  # the control, when IP2P-tiny was taken from a shipped folder
            logger.info("evaluate: %s not scored (its step was skipped: %s)", name, skipped)
            out[name] = {"skipped": skipped}
            continue
        if _fresh(os.path.join(where, "summary.json"), paths.testset,
                  *(() if name == "identity" else (paths.model(name),))):
            logger.info("evaluate: %s already scored after its weights and the test set were written (%s)", name,
                        where)
            continue
        t0 = time.time()
        if name == "identity":
            run = evaluate(data, out=where, outputs=data, targets=targets)
        elif name in ("ip2p", "ip2p_mix", "control"):
            editor_cls = RegressionEditor if name == "control" else IP2PEditor
            run = evaluate(data, out=where, editor=editor_cls(paths.model(name), settings), targets=targets)
        elif name == "plainly":
            plain = os.path.join(paths.testset, "reason_edit_plain")
            if not os.path.isdir(plain):  # a test set written before the plain instructions were
                _step_testset(cfg, paths)
            run = evaluate(plain, out=where, editor=IP2PEditor(paths.model(name), settings), targets=targets)
        else:
            run = evaluate(data, out=where, model=paths.model(name), settings=settings, targets=targets)
        out[name] = {"seconds": round(time.time() - t0, 1), "samples": len(run.results)}
    return out


def _skipped(paths: _Paths, step: str | None) -> str | None:
    """Why ``step`` was skipped (its done marker's ``skipped``), or None when it ran, has not run yet or is None."""
    marker = os.path.join(paths.done, f"{step}.json")
    if step is None or not os.path.isfile(marker):
        return None
    with open(marker, encoding="utf-8") as f:
        return json.load(f).get("skipped")


def _fresh(summary: str, *inputs: str) -> bool:
    """True when ``summary`` exists and is newer than every file of each folder of ``inputs`` (the test set, the
    model), so a model evaluated in an earlier, interrupted run of the evaluate step is not scored again, and one
    scored before its weights or the test set were rewritten is."""
    if not os.path.isfile(summary):
        return False
    newest = max((max((os.path.getmtime(os.path.join(base, f)) for base, _, files in os.walk(folder) for f in files),
                      default=float("inf")) for folder in inputs), default=0.0)
    return os.path.getmtime(summary) > newest


METRICS = ("edit_iou", "psnr_fg_target", "psnr_bg")
GROUPS = ("1-Left-Right", "2-Relative-Size", "3-Mirror", "4-Color", "5-Multiple-Objects", "6-Reasoning", "7-Simple",
          "7-Simple-RR")
"""Reported groups: the six Reason-Edit categories, the plain edits, and ``7-Simple-RR``, the plain recolour and
remove edits alone (a replace edit must also draw a new shape, a harder task than recolouring or removing one)."""


def _in_group(sample: dict, group: str) -> bool:
    if group == "7-Simple-RR":
        return sample["group"] == "7-Simple" and not sample["meta"]["instruction"].startswith("replace")
    return sample["group"] == group


def ablation(paths: _Paths, models: tuple[str, ...] = MODELS) -> dict:
    """Per model × category: mean and median of edit-region IoU, foreground PSNR vs target and background PSNR,
    read from each model's ``samples.json``."""
    table: dict[str, Any] = {}
    for name in models:
        path = os.path.join(paths.eval, name, "samples.json")
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            samples = json.load(f)["samples"]
        rows = {}
        for group in GROUPS:
            ok = [s["metrics"] for s in samples if _in_group(s, group) and s["status"] == "ok"]
            if not ok:
                continue
            cell = {"n": len(ok)}
            for metric in METRICS:
                values = [m[metric] for m in ok if m.get(metric) is not None]
                values = [min(v, 100.0) for v in values]  # identical images: PSNR capped at 100 dB
                if values:
                    cell[metric] = {"mean": statistics.fmean(values), "median": statistics.median(values)}
            rows[group] = cell
        table[name] = rows
    return table


GROUP_LABELS = {"7-Simple": "Simple (all)", "7-Simple-RR": "Simple (recolour, remove)"}
PAIRS = (("smartedit", "ip2p_mix"), ("smartedit", "ip2p"), ("smartedit", "mllmsd"))
"""The paper's two comparisons: the MLLM editor vs the CLIP-text editor (the fair one, trained on the same edits,
and the one trained on simple edits only), and the BIM vs none."""


def paired_differences(paths: _Paths, a: str, b: str, metric: str = "edit_iou", resamples: int = 4000,
                       seed: int = 0) -> dict:
    """Per category, ``a`` minus ``b`` on the SAME held-out samples (matched by id): the mean difference of
    ``metric``, its 90 % bootstrap interval (``resamples`` resamples of the samples, fixed ``seed``), and how many
    samples ``a`` wins / loses by more than 0.05. With 30 samples a category, mean differences below about 0.05-0.1
    are within noise; the interval says which are not."""
    return paired_between(os.path.join(paths.eval, a, "samples.json"), os.path.join(paths.eval, b, "samples.json"),
                          metric, resamples, seed)


def paired_between(file_a: str, file_b: str, metric: str = "edit_iou", resamples: int = 4000, seed: int = 0) -> dict:
    """:func:`paired_differences` of two evaluation ``samples.json`` files (scored samples matched by id)."""
    import numpy as np

    per_model = []
    for path in (file_a, file_b):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} does not exist: run the recipe's evaluate step for that model first")
        with open(path, encoding="utf-8") as f:
            per_model.append({s["id"]: s for s in json.load(f)["samples"] if s["status"] == "ok"
                              and (s.get("metrics") or {}).get(metric) is not None})
    rng = np.random.default_rng(seed)
    out = {}
    for group in GROUPS:
        ids = sorted(i for i, s in per_model[0].items() if _in_group(s, group) and i in per_model[1])
        if not ids:
            continue
        diff = np.array([per_model[0][i]["metrics"][metric] - per_model[1][i]["metrics"][metric] for i in ids])
        means = diff[rng.integers(0, len(diff), size=(resamples, len(diff)))].mean(axis=1)
        out[group] = {"n": len(ids), "mean_difference": float(diff.mean()), "ci90": [float(np.percentile(means, 5)),
                      float(np.percentile(means, 95))], "wins": int((diff > 0.05).sum()),
                      "losses": int((diff < -0.05).sum())}
    return out


def compare_runs(run: str, reference: str, models: tuple[str, ...] = COMPARED,
                 tolerance: float = 0.05) -> dict:
    """Does ``run`` reproduce ``reference`` (e.g. a from-scratch re-run against the run that was shipped)? Per model
    and category: ``run`` − ``reference`` edit-region IoU on the same held-out samples (:func:`paired_between`), and
    ``reproduced`` — the 90 % interval contains 0 or the mean difference is within ``tolerance``. The two runs must
    have scored the same test set (same recipe seed and eval budgets: checked by sample ids). ``reference`` may also
    be a shipped SmartEdit-tiny folder (:func:`ship` keeps the per-sample scores). Writes ``run/reproduction.json``
    and ``run/reproduction.md``.

    The interval covers which held-out samples were drawn, not training noise: for the MLLM-conditioned models a
    change of stage seed alone has moved a category by 0.13 (docs/training.md), so read a failed cell against that."""
    rows, problems, skipped = {}, [], {}
    for name in models:
        files = [os.path.join(_Paths(r).eval, name, "samples.json") for r in (run, reference)]
        missing = [f for f in files if not os.path.isfile(f)]
        if missing:  # e.g. a model the reference run predates: the models both runs scored are compared
            skipped[name] = f"{', '.join(missing)} missing"
            logger.warning("compare: %s not compared (%s)", name, skipped[name])
            continue
        rows[name] = paired_between(*files)
        if not rows[name]:
            problems.append(f"{name}: no held-out sample id is shared by {run} and {reference}; compare runs "
                            f"evaluated on the same test set (same seed and eval budgets)")
    if not rows and not problems:
        problems.append(f"no model was scored in both {run} and {reference}: run the evaluate step of both first")
    if problems:
        raise FileNotFoundError("; ".join(problems))
    for per_group in rows.values():
        for r in per_group.values():
            r["reproduced"] = bool(r["ci90"][0] <= 0 <= r["ci90"][1] or abs(r["mean_difference"]) <= tolerance)
    verdict = all(r["reproduced"] for per_group in rows.values() for r in per_group.values())
    result = {"run": run, "reference": reference, "tolerance": tolerance, "reproduced": verdict, "models": rows,
              "skipped": skipped}
    write_json(os.path.join(run, "reproduction.json"), result)
    lines = [f"**{run} − {reference}**, edit-region IoU on the same held-out samples: mean difference [90 % bootstrap "
             f"interval]; ✗ marks a difference beyond both noise and ±{tolerance}. Reproduced: "
             f"{'yes' if verdict else 'no'}.\n",
             *_table_head("model")]
    for name, per_group in rows.items():
        cells = ["–" if (r := per_group.get(g)) is None else _diff_cell(r) + ("" if r["reproduced"] else " ✗")
                 for g in GROUPS]
        lines.append(f"| {MODEL_NAMES[name]} | " + " | ".join(cells) + " |")
    with open(os.path.join(run, "reproduction.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return result


CLAIM_GROUPS = ("1-Left-Right", "2-Relative-Size", "3-Mirror", "5-Multiple-Objects", "6-Reasoning")
"""Where the paper claims the MLLM editor wins (understanding and reasoning instructions)."""
PARITY_GROUPS = ("4-Color", "7-Simple")
"""Where it should merely keep up with the CLIP-text editor."""


def seed_summary(runs: list[str], out: str, margin: float = 0.10, parity: float = 0.05, min_median: float = 0.5,
                 min_background_db: float = 28.0) -> dict:
    """The ablation over recipe runs that differ in ``seed`` only (each with its own training noise and its own
    held-out test set): per model × category the mean over seeds of the mean edit-region IoU, its spread (min, max,
    standard deviation over seeds) and the per-seed medians; per comparison of :data:`PAIRS` every seed's paired
    difference with its 90 % interval; and the paper's claim checked seed by seed (SmartEdit-tiny − the fair
    IP2P-tiny ≥ ``margin`` on :data:`CLAIM_GROUPS` with every seed's interval above 0, within ``parity`` on
    :data:`PARITY_GROUPS`, median IoU ≥ ``min_median`` in every category, background ≥ ``min_background_db``).
    Writes ``out/seeds.json`` and ``out/seeds.md``."""
    if len(runs) < 2:
        raise ValueError(f"give at least two recipe runs to summarise over seeds, got {len(runs)}")
    seeds, tables, paired = [], [], []
    for run in runs:
        saved = os.path.join(run, RecipeConfig.FILE_NAME)
        if not os.path.isfile(os.path.join(run, "ablation.json")) or not os.path.isfile(saved):
            raise FileNotFoundError(f"{run} has no finished recipe (ablation.json and {RecipeConfig.FILE_NAME}): run "
                                    f"`python train/shapes_recipe.py --output {run}` to the end first")
        seeds.append(RecipeConfig.load(saved).seed)
        paths = _Paths(run)
        models = tuple(m for m in MODELS if os.path.isdir(os.path.join(paths.eval, m)))
        tables.append(ablation(paths, models))
        paired.append({f"{a}-{b}": paired_differences(paths, a, b) for a, b in PAIRS if a in models and b in models})
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs share seeds ({seeds}): give runs of different seeds (--set seed=N)")
    table: dict[str, dict] = {}
    for name in MODELS:
        for group in GROUPS:
            cells = [t[name][group] for t in tables if group in t.get(name, {})]
            if len(cells) != len(runs) or "edit_iou" not in cells[0]:
                continue
            means = [c["edit_iou"]["mean"] for c in cells]
            background = [c["psnr_bg"]["mean"] for c in cells if "psnr_bg" in c]
            table.setdefault(name, {})[group] = {
                "mean": statistics.fmean(means), "min": min(means), "max": max(means),
                "std": statistics.stdev(means), "per_seed": means,
                "medians": [c["edit_iou"]["median"] for c in cells],
                "background_db": statistics.fmean(background) if background else None}
    pairs: dict[str, dict] = {}
    for key in paired[0]:
        for group in GROUPS:
            rows = [p[key][group] for p in paired if group in p.get(key, {})]
            if len(rows) == len(runs):
                diffs = [r["mean_difference"] for r in rows]
                pairs.setdefault(key, {})[group] = {"mean": statistics.fmean(diffs), "std": statistics.stdev(diffs),
                                                    "per_seed": diffs, "ci90": [r["ci90"] for r in rows]}
    claim = _claim_checks(table, pairs, margin, parity, min_median, min_background_db)
    result = {"runs": runs, "seeds": seeds, "pretrained": {run: _pretrained_source(run) for run in runs},
              "table": table, "paired": pairs, "claim": claim}
    os.makedirs(out, exist_ok=True)
    write_json(os.path.join(out, "seeds.json"), result)
    with open(os.path.join(out, "seeds.md"), "w", encoding="utf-8") as f:
        f.write(_seeds_markdown(result))
    return result


def _pretrained_source(run: str) -> str:
    """Where ``run``'s pretrained parts come from: ``run`` itself, or the run :func:`reuse_pretrained` took them from."""
    sources = {info["reused_from"] for step, info in _done(_Paths(run)).items()
               if step in PRETRAINED_STEPS and "reused_from" in info}
    return ", ".join(sorted(sources)) or run


def _claim_checks(table: dict, pairs: dict, margin: float, parity: float, min_median: float,
                  min_background_db: float) -> dict[str, dict]:
    """Each check of the paper's claim over the seeds: what was measured and whether it holds."""
    checks: dict[str, dict] = {}
    versus = pairs.get("smartedit-ip2p_mix", {})
    for group in CLAIM_GROUPS:
        r = versus.get(group)
        if r is not None:
            lowest = min(c[0] for c in r["ci90"])
            checks[f"wins {group}"] = {"mean_difference": r["mean"], "lowest_interval_bound": lowest,
                                       "holds": r["mean"] >= margin and lowest > 0}
    for group in PARITY_GROUPS:
        r = versus.get(group)
        if r is not None:
            checks[f"keeps up {group}"] = {"mean_difference": r["mean"], "holds": r["mean"] >= -parity}
    mine = table.get("smartedit", {})
    medians = {g: min(c["medians"]) for g, c in mine.items() if g in GROUPS[:7]}
    if medians:
        checks["median in every category"] = {"lowest": min(medians.values()), "where": min(medians, key=medians.get),
                                             "holds": min(medians.values()) >= min_median}
    background = [c["background_db"] for c in mine.values() if c["background_db"] is not None]
    if background:
        checks["background"] = {"lowest_db": min(background), "holds": min(background) >= min_background_db}
    return checks


def _seeds_markdown(result: dict) -> str:
    n = len(result["runs"])
    lines = [f"**Edit-region IoU over {n} seeds** ({', '.join(map(str, result['seeds']))}): mean over seeds of each "
             "run's mean ± standard deviation over seeds [min, max]\n"]
    reused = {run: source for run, source in result.get("pretrained", {}).items() if source != run}
    if reused:
        lines.append(f"{', '.join(reused)} took the pretrained parts (VAE, ViT, LLaVA-tiny, both IP2P-tiny) of "
                     f"{', '.join(sorted(set(reused.values())))} (`--pretrained-from`) instead of training their own: "
                     f"their spread is that of stages 1 → 2b and of the test sets, not of pretraining.\n")
    lines += _table_head("model")
    for name, rows in result["table"].items():
        cells = ["–" if (c := rows.get(g)) is None else f"{c['mean']:.2f} ± {c['std']:.2f} [{c['min']:.2f}, "
                 f"{c['max']:.2f}]" for g in GROUPS]
        lines.append(f"| {MODEL_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
    lines += ["", "**Paired differences** on each seed's own held-out samples: mean over seeds ± standard deviation; "
              "then every seed's difference [its 90 % bootstrap interval]\n", *_table_head("comparison")]
    for key, rows in result["paired"].items():
        a, b = key.split("-", 1)
        cells = []
        for g in GROUPS:
            r = rows.get(g)
            cells.append("–" if r is None else f"{r['mean']:+.2f} ± {r['std']:.2f}<br>" + "<br>".join(
                f"{d:+.2f} [{c[0]:+.2f}, {c[1]:+.2f}]" for d, c in zip(r["per_seed"], r["ci90"])))
        lines.append(f"| {MODEL_NAMES[a].split(' (')[0]} − {MODEL_NAMES[b].split(' (')[0]} | " + " | ".join(cells)
                     + " |")
    lines += ["", "**The paper's claim, seed by seed**\n", "| check | measured | holds |", "|---|---|---|"]
    for name, c in result["claim"].items():
        measured = ", ".join(f"{k} {v:+.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in c.items()
                             if k != "holds")
        lines.append(f"| {name} | {measured} | {'yes' if c['holds'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _table_head(first: str) -> list[str]:
    """The header and rule of a markdown table with one column per category of :data:`GROUPS`."""
    return ["| " + first + " | " + " | ".join(GROUP_LABELS.get(g, g.split("-", 1)[1]) for g in GROUPS) + " |",
            "|---" * (len(GROUPS) + 1) + "|"]


def _diff_cell(r: dict) -> str:
    """One paired-difference table cell: mean difference [90 % interval]."""
    return f"{r['mean_difference']:+.2f} [{r['ci90'][0]:+.2f}, {r['ci90'][1]:+.2f}]"


def _paired_markdown(paired: dict) -> str:
    lines = ["**Paired edit-region IoU differences** on the same held-out samples: mean difference [90 % bootstrap "
             "interval], samples won / lost by more than 0.05. An interval that excludes 0 is a difference beyond "
             "sampling noise.\n",
             *_table_head("comparison")]
    for key, rows in paired.items():
        a, b = key.split("-")
        cells = []
        for g in GROUPS:
            r = rows.get(g)
            cells.append("–" if r is None else f"{_diff_cell(r)} {r['wins']}/{r['losses']}")
        lines.append(f"| {MODEL_NAMES[a].split(' (')[0]} − {MODEL_NAMES[b].split(' (')[0]} | " + " | ".join(cells)
                     + " |")
    return "\n".join(lines) + "\n"


def _markdown(table: dict) -> str:
    lines = []
    for metric, label in (("edit_iou", "edit-region IoU ↑"), ("psnr_fg_target", "foreground PSNR vs target (dB) ↑"),
                          ("psnr_bg", "background PSNR (dB) ↑")):
        lines.append(f"**{label}** (mean / median over the held-out samples of each category)\n")
        lines += _table_head("model")
        for name, rows in table.items():
            cells = []
            for g in GROUPS:
                v = rows.get(g, {}).get(metric)
                cells.append("–" if v is None else f"{v['mean']:.2f} / {v['median']:.2f}" if metric == "edit_iou"
                             else f"{v['mean']:.1f} / {v['median']:.1f}")
            lines.append(f"| {MODEL_NAMES.get(name, name)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def _grid(paths: _Paths, models: tuple[str, ...], per_group: int = 2, scale: int = 2) -> str:
    """Input | target | each model's output, ``per_group`` samples per category."""
    from PIL import Image, ImageDraw

    rows = []
    for group in GROUPS:
        folder = os.path.join(paths.testset, "reason_edit", group)
        if not os.path.isdir(folder):
            continue
        with open(os.path.join(folder, "instructions.txt"), encoding="utf-8") as f:
            texts = [ln.split(" CLIP:")[0] for ln in f.read().splitlines() if ln.strip()]
        for i in range(min(per_group, len(texts))):
            stem = f"{i:03d}"
            cells = [os.path.join(folder, f"{stem}.png"), os.path.join(paths.testset, "targets", group, f"{stem}.png")]
            cells += [os.path.join(folder if m == "identity" else os.path.join(paths.eval, m, "outputs", group),
                                   f"{stem}.png") for m in models if m != "identity"]
            rows.append((f"{group}: {texts[i]}", cells))
    if not rows:
        return ""
    side = 64 * scale
    header, label_h = 14, 12
    cols = 2 + len([m for m in models if m != "identity"])
    canvas = Image.new("RGB", (cols * side, header + len(rows) * (side + label_h)), "white")
    draw = ImageDraw.Draw(canvas)
    names = ["input", "target"] + [m for m in models if m != "identity"]
    for c, n in enumerate(names):
        draw.text((c * side + 2, 1), n, fill="black")
    for r, (label, cells) in enumerate(rows):
        y = header + r * (side + label_h)
        draw.text((2, y), label[:cols * side // 6], fill="black")
        for c, path in enumerate(cells):
            if os.path.isfile(path):
                canvas.paste(Image.open(path).convert("RGB").resize((side, side), Image.Resampling.NEAREST),
                             (c * side, y + label_h))
    out = os.path.join(paths.root, "ablation_grid.png")
    canvas.save(out)
    return out


def reply_accuracy(samples_json: str, plain_testset: str) -> dict[str, float]:
    """Per category, the share of held-out test samples whose recorded reply (``meta.reply``, written by a model
    with ``mllm.writes_reply``) is exactly the instruction said plainly (``plain_testset/<category>/instructions.txt``,
    :attr:`smartedit.shapes.world.Edit.explicit`); empty when the samples carry no reply."""
    from ..eval.reason_edit import read_reason_edit

    with open(samples_json, encoding="utf-8") as f:
        replied = [x for x in json.load(f)["samples"] if (x.get("meta") or {}).get("reply") is not None]
    if not replied:
        return {}
    plain = {s.id: s.instruction for s in read_reason_edit(plain_testset)[0]}  # the same ids, said plainly
    hits: dict[str, list[bool]] = {}
    for x in replied:
        hits.setdefault(x["group"], []).append(x["meta"]["reply"] == plain.get(x["id"]))
    return {group: sum(h) / len(h) for group, h in hits.items()}


def _replies_markdown(replies: dict[str, dict[str, float]]) -> str:
    groups = [g for g in GROUPS if any(g in r for r in replies.values())]
    lines = ["**Replies said plainly** (share of held-out samples whose reply is exactly the instruction said plainly)",
             "", "| model | " + " | ".join(GROUP_LABELS.get(g, g.split("-", 1)[1]) for g in groups) + " |",
             "|---|" + "---|" * len(groups)]
    lines += [f"| {MODEL_NAMES[m]} | " + " | ".join(f"{r[g]:.0%}" if g in r else "" for g in groups) + " |"
              for m, r in replies.items()]
    return "\n".join(lines) + "\n"


def _step_report(cfg: RecipeConfig, paths: _Paths) -> dict:
    models = tuple(m for m in MODELS if os.path.isdir(os.path.join(paths.eval, m)))
    table = ablation(paths, models)
    timings = {step: d.get("train_seconds", d.get("seconds")) for step, d in _done(paths).items()}
    paired = {f"{a}-{b}": paired_differences(paths, a, b) for a, b in PAIRS if a in models and b in models}
    replies = {m: r for m in models if os.path.isfile(os.path.join(paths.eval, m, "samples.json"))
               and (r := reply_accuracy(os.path.join(paths.eval, m, "samples.json"),
                                        os.path.join(paths.testset, "reason_edit_plain")))}
    report = {"models": {m: MODEL_NAMES[m] for m in models}, "table": table, "paired": paired,
              **({"replies": replies} if replies else {}),
              "step_seconds": timings, "eval": cfg.eval.to_dict(), "recipe": cfg.to_dict()}
    write_json(os.path.join(paths.root, "ablation.json"), report)
    with open(os.path.join(paths.root, "ablation.md"), "w", encoding="utf-8") as f:
        f.write(_markdown(table) + ("\n" + _paired_markdown(paired) if paired else "")
                + ("\n" + _replies_markdown(replies) if replies else ""))
    return {"grid": _grid(paths, models)}


# ---- driver ------------------------------------------------------------------------------------------------------

PRETRAINED_STEPS = ("vae", "decoder", "vision", "llava", "control", "ip2p", "ip2p_mix")
"""The steps that build the pretrained parts (this world's SD, CLIP ViT, LLaVA and the two IP2P-tiny baselines):
what a seed study over stages 1 → 2b shares, as the paper's runs share the released LLaVA and Stable Diffusion."""
STEP_INPUTS = {
    "vae": ("vae",),
    "decoder": ("vae", "decoder"),
    "vision": ("vision", "llava_vision", "mllm_config"),
    "llava": ("vision", "llava_vision", "mllm_config", "llava", "llava_skills", "llava_skill_share", "llava_turns"),
    "control": ("vae", "control"),
    "ip2p": ("vae", "control", "ip2p", "ip2p_from_control"),
    "ip2p_mix": ("vae", "control", "ip2p", "ip2p_from_control", "ip2p_mix"),
}
"""The recipe fields that decide each pretrained step's output (those of the steps it starts from included): a step
is reused only from a run that agrees on all of them. The seed is not among them, so a seed study shares them."""
SHIPPED_PARTS = {"vae": "ip2p-tiny/vae", "decoder": "ip2p-tiny/vae", "ip2p": "ip2p-tiny", "ip2p_mix": "ip2p-tiny-fair",
                 "vision": "llava-tiny/mllm.safetensors", "llava": "llava-tiny/mllm.safetensors"}
"""What a shipped folder (``--ship DIR``, e.g. ``checkpoints``) holds of the pretrained steps, relative to it. Its VAE
is the final one (the vae step's encoder, the decoder step's decoder), so it stands for both steps; LLaVA-tiny
(:func:`ship_llava`) holds the ViT too and carries the recipe config it was trained with."""


def _differences(ours: dict, theirs: dict, keys) -> list[tuple[str, Any, Any]]:
    """(dotted key, their value, our value) for every field of ``keys`` the two config dicts disagree on."""
    out = []
    for key in keys:
        if ours[key] == theirs.get(key):
            continue
        if isinstance(ours[key], dict) and isinstance(theirs.get(key), dict):
            out += [(f"{key}.{k}", theirs[key].get(k), ours[key].get(k)) for k in sorted({*ours[key], *theirs[key]})
                    if ours[key].get(k) != theirs[key].get(k)]
        else:
            out.append((key, theirs.get(key), ours[key]))
    return out


def _take_shipped_llava(folder: str, dst: _Paths, step: str, config: dict) -> dict:
    """A shipped LLaVA-tiny into a run: the ``llava`` step's weights and config, or the ``vision`` step's tower (the
    ``vision_tower.*`` weights inside them; nothing when that run did not pretrain its tower). Returns the step's
    probe as shipped."""
    from safetensors.torch import load_file, save_file

    with open(os.path.join(folder, "probe.json"), encoding="utf-8") as f:
        probe = json.load(f).get(step, {})
    os.makedirs(getattr(dst, step), exist_ok=True)
    if step == "llava":
        for name in ("mllm.safetensors", "config.json"):
            shutil.copy2(os.path.join(folder, name), os.path.join(dst.llava, name))
    elif config.get("llava_vision"):
        prefix = "vision_tower."
        tower = {k[len(prefix):]: v for k, v in load_file(os.path.join(folder, "mllm.safetensors")).items()
                 if k.startswith(prefix)}
        save_file(tower, os.path.join(dst.vision, "vision.safetensors"), metadata={"format": "pt"})
    return {k: v for k, v in probe.items() if k not in ("reused_from", "reused_seed")}


def reuse_pretrained(cfg: RecipeConfig, output: str, source: str) -> dict[str, list[str]]:
    """Take the :data:`PRETRAINED_STEPS` that ``source`` finished into ``output`` instead of training them again, for
    every step whose inputs (:data:`STEP_INPUTS`) the two recipe configs agree on; the others train here. ``source``
    is a recipe run (its step folders are copied without training checkpoints) or a shipped folder (``--ship DIR``:
    :data:`SHIPPED_PARTS`; the control, which only starts IP2P-tiny, is then not needed). Reused steps are marked
    done with where they came from. Returns ``{"reused": [...], "trained here": ["step (why)", ...]}``."""
    llava_saved = os.path.join(source, LLAVA_FOLDER, RecipeConfig.FILE_NAME)
    shipped = next((f for f in (os.path.join(source, "smartedit-tiny", RecipeConfig.FILE_NAME), llava_saved)
                    if os.path.isfile(f)), None)
    saved = shipped or os.path.join(source, RecipeConfig.FILE_NAME)
    if not os.path.isfile(saved):
        raise FileNotFoundError(f"{source} is neither a recipe run (no {RecipeConfig.FILE_NAME}) nor a shipped folder "
                                f"(no smartedit-tiny/ or {LLAVA_FOLDER}/{RecipeConfig.FILE_NAME}); give the --output "
                                f"folder of a run whose pretraining steps finished, or a --ship folder such as "
                                f"checkpoints")
    theirs, ours = RecipeConfig.load(saved).to_dict(), cfg.to_dict()
    llava_theirs = RecipeConfig.load(llava_saved).to_dict() if shipped and os.path.isfile(llava_saved) else theirs
    src, dst = _Paths(source), _Paths(output)
    os.makedirs(dst.done, exist_ok=True)
    report: dict[str, list[str]] = {"reused": [], "trained here": []}
    for step in PRETRAINED_STEPS:
        if os.path.isfile(os.path.join(dst.done, f"{step}.json")):
            continue
        config = llava_theirs if step in ("vision", "llava") else theirs
        differ = _differences(ours, config, STEP_INPUTS[step])
        has = (step in SHIPPED_PARTS and os.path.exists(os.path.join(source, SHIPPED_PARTS[step]))) if shipped \
            else os.path.isfile(os.path.join(src.done, f"{step}.json"))
        if differ or not has:
            why = ", ".join(f"{key} is {here!r} here but {there!r} there" for key, there, here in differ) or \
                f"{source} has no finished {step}"
            report["trained here"].append(f"{step} ({why})")
            continue
        info: dict[str, Any] = {}
        if shipped and step in ("vision", "llava"):
            info = _take_shipped_llava(os.path.join(source, LLAVA_FOLDER), dst, step, config)
        elif shipped:
            where = os.path.join(source, SHIPPED_PARTS[step])
            into = os.path.join(getattr(dst, step), "vae" if step in ("vae", "decoder") else "pipeline")
            shutil.copytree(where, into, dirs_exist_ok=True)
        else:
            folder = getattr(src, step)
            if os.path.isdir(folder):
                shutil.copytree(folder, getattr(dst, step), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("checkpoints"))
            with open(os.path.join(src.done, f"{step}.json"), encoding="utf-8") as f:
                info = json.load(f)
        write_json(os.path.join(dst.done, f"{step}.json"),
                   {**info, "reused_from": source, "reused_seed": config["seed"]})
        report["reused"].append(step)
    if shipped and "ip2p" in report["reused"] and not os.path.isfile(os.path.join(dst.done, "control.json")):
        report["trained here"] = [s for s in report["trained here"] if not s.startswith("control ")]
        write_json(os.path.join(dst.done, "control.json"),
                   {"skipped": f"not needed: IP2P-tiny, which it starts, was taken from {source}",
                    "reused_from": source, "reused_seed": theirs["seed"]})
    logger.info("reused the pretrained steps %s of %s (seed %s)", ", ".join(report["reused"]) or "(none)", source,
                theirs["seed"])
    for line in report["trained here"]:
        logger.info("trained here: %s", line)
    return report


def run_recipe(cfg: RecipeConfig, output: str, steps: tuple[str, ...] | None = None, force: bool = False,
               threads: int | None = None, eval_models: tuple[str, ...] | None = None) -> dict:
    """Run ``steps`` (default all) of the recipe into ``output``; finished steps are skipped unless ``force``.
    ``threads``: torch intra-op threads of this process (default: leave torch's setting). ``eval_models``: score
    only these models in the ``evaluate`` step (e.g. the baselines while stage 2 still trains, in a second
    process); the step is then not marked done, and a later full ``evaluate`` skips the models scored since their
    weights were written."""
    cfg.validate()
    unknown = [f"unknown recipe step {s!r}; choose from {', '.join(STEPS)}" for s in steps or () if s not in STEPS]
    unknown += [f"unknown model {m!r} to evaluate; choose from {', '.join(MODELS)}" for m in eval_models or ()
                if m not in MODELS]
    if unknown:
        raise ConfigError(unknown)
    paths = _Paths(output)
    os.makedirs(paths.done, exist_ok=True)
    saved = os.path.join(output, RecipeConfig.FILE_NAME)
    if os.path.isfile(saved):
        previous = RecipeConfig.load(saved)
        if previous.to_dict() != cfg.to_dict() and not force:
            raise ConfigError([f"{output} was started with a different recipe config ({saved}); re-run with the "
                               f"same config (--config {saved}), a new --output, or --force"])
    cfg.save(saved)
    if threads:
        torch.set_num_threads(threads)
    actions = {"vae": _step_vae, "decoder": _step_decoder, "vision": _step_vision, "llava": _step_llava,
               "control": lambda c, p: _step_ip2p(c, p, "control"), "ip2p": _step_ip2p,
               "ip2p_mix": lambda c, p: _step_ip2p(c, p, "ip2p_mix"), "assemble": _step_assemble,
               "stage1": lambda c, p: _step_stage(c, p, "stage1"), "stage2a": lambda c, p: _step_stage(c, p, "stage2a"),
               "stage2b": lambda c, p: _step_stage(c, p, "stage2b"), "testset": _step_testset,
               "evaluate": _step_evaluate, "report": _step_report}
    results = {}
    for step in steps or STEPS:
        marker = os.path.join(paths.done, f"{step}.json")
        if os.path.isfile(marker) and not force:
            logger.info("recipe step %s: already done (%s)", step, marker)
            continue
        logger.info("recipe step %s: starting", step)
        t0 = time.time()
        if step == "evaluate" and eval_models and set(eval_models) != set(MODELS):
            _step_evaluate(cfg, paths, tuple(eval_models))
            logger.info("recipe step evaluate: scored %s only; not marked done", ", ".join(eval_models))
            continue
        info = actions[step](cfg, paths)
        results[step] = {"seconds": round(time.time() - t0, 1), **(info or {})}
        trained = os.path.join(output, step, "train_time.json")
        if os.path.isfile(trained):  # pretraining loops count their time across resumes
            with open(trained, encoding="utf-8") as f:
                results[step]["train_seconds"] = json.load(f)["seconds"]
        write_json(marker, results[step])
        logger.info("recipe step %s: done in %.0f s", step, results[step]["seconds"])
    return results


KEPT_ON_RESHIP = ("examples.json",)
"""Files of a shipped model folder that shipping a new run into it keeps (the web demo's examples); everything else,
the seed summary included, is the new run's."""


def ship(output: str, destination: str) -> dict[str, str]:
    """Copy SmartEdit-tiny, IP2P-tiny and (when the run has it) the fair IP2P-tiny (weights, configs, tokenizer) plus
    the ablation into ``destination``, and LLaVA-tiny (:func:`ship_llava`) when this run trained it (one taken with
    ``--pretrained-from`` keeps the folder and card it came with). A run whose stages have not been trained ships its
    LLaVA-tiny alone."""
    paths = _Paths(output)
    shipped = {}
    has_llava = os.path.isfile(os.path.join(paths.llava, "mllm.safetensors"))
    if has_llava and not os.path.isdir(paths.model("smartedit")):
        return {"llava-tiny": ship_llava(output, destination)}
    for name, folder in (("smartedit-tiny", paths.model("smartedit")), ("ip2p-tiny", paths.model("ip2p")),
                         ("ip2p-tiny-fair", paths.model("ip2p_mix"))):
        if name == "ip2p-tiny-fair" and not os.path.isdir(folder):
            continue  # a run made before the fair baseline existed
        if not os.path.isdir(folder):
            raise FileNotFoundError(f"{folder} does not exist: run the recipe's training steps first")
        target = os.path.join(destination, name)
        kept = {}
        for keep in KEPT_ON_RESHIP:  # what the folder's users wrote, not the run
            if os.path.isfile(os.path.join(target, keep)):
                with open(os.path.join(target, keep), "rb") as f:
                    kept[keep] = f.read()
        if os.path.isdir(target):
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        for keep, data in kept.items():
            with open(os.path.join(target, keep), "wb") as f:
                f.write(data)
        shipped[name] = target
    cfg = RecipeConfig.load(os.path.join(output, RecipeConfig.FILE_NAME))
    folder = shipped["smartedit-tiny"]  # it samples as it was evaluated, whoever loads it
    SmartEditConfig.load(folder).replace(**{"sampling.num_inference_steps": cfg.eval.steps,
                                            "sampling.guidance_scale": cfg.eval.text_guidance,
                                            "sampling.image_guidance_scale": cfg.eval.image_guidance}).save(folder)
    for extra in ("ablation.json", "ablation.md", "ablation_grid.png", RecipeConfig.FILE_NAME):
        src = os.path.join(output, extra)
        if os.path.isfile(src):
            shutil.copy2(src, os.path.join(destination, "smartedit-tiny", extra))
    _ship_scores(paths, os.path.join(destination, "smartedit-tiny"))
    with open(os.path.join(destination, "smartedit-tiny", "README.md"), "w", encoding="utf-8") as f:
        f.write(model_card(output))
    reused = _done(paths).get("llava", {}).get("reused_from")
    if has_llava and reused:
        logger.info("ship: LLaVA-tiny was taken from %s, not trained in %s: not shipped again", reused, output)
    elif has_llava:
        shipped["llava-tiny"] = ship_llava(output, destination)
    return shipped


LLAVA_FOLDER = "llava-tiny"
"""The shipped LLaVA-tiny (:func:`ship_llava`): ``mllm.safetensors`` (ViT + projector + LLaMA), ``config.json``,
the recipe config it was trained with, its probes (``probe.json``) and a card (``README.md``)."""


def ship_llava(output: str, destination: str) -> str:
    """Copy the run's pretrained LLaVA-tiny (the ``llava`` step, with the ``vision`` step's tower inside) into
    ``destination/llava-tiny`` with its recipe config and probes, so that ``--pretrained-from destination`` can start
    a new run from it. Returns the folder."""
    paths = _Paths(output)
    done = _done(paths)
    target = os.path.join(destination, LLAVA_FOLDER)
    if os.path.isdir(target):
        shutil.rmtree(target)
    os.makedirs(target)
    for name in ("mllm.safetensors", "config.json"):
        shutil.copy2(os.path.join(paths.llava, name), os.path.join(target, name))
    shutil.copy2(os.path.join(output, RecipeConfig.FILE_NAME), os.path.join(target, RecipeConfig.FILE_NAME))
    write_json(os.path.join(target, "probe.json"), {"llava": done.get("llava", {}), "vision": done.get("vision", {})})
    with open(os.path.join(target, "README.md"), "w", encoding="utf-8") as f:
        f.write(llava_card(output))
    return target


def llava_card(output: str) -> str:
    """The card of a shipped LLaVA-tiny: what it was trained on, for how long, and its probes."""
    cfg = RecipeConfig.load(os.path.join(output, RecipeConfig.FILE_NAME))
    done = _done(_Paths(output))
    what = _step_descriptions(cfg)
    lines = ["# LLaVA-tiny (ShapesWorld)", "",
             "The pretrained multimodal LLM of a ShapesWorld recipe run (`python train/shapes_recipe.py`): CLIP ViT + "
             "projector + LLaMA, from scratch. `mllm.safetensors` holds all three (the keys of "
             "`smartedit.mllm.SmartEditMLLM`), `config.json` the SmartEdit config it belongs to, `recipe.json` the "
             "recipe config that trained it. A new run starts from it (and from the editors shipped beside it) with "
             "`python train/shapes_recipe.py --config RECIPE --pretrained-from checkpoints`, when RECIPE agrees with "
             "`recipe.json` on the LLaVA-tiny budgets.", "", "| step | what | budget | seconds |", "|---|---|---|---|"]
    for step in ("vision", "llava"):
        lines.append(_training_row(step, what[step], getattr(cfg, step), done.get(step, {})))
    return "\n".join(lines + [""] + _probe_lines({k: v for k, v in done.items() if k in ("vision", "llava")})) + "\n"


SHIPPED_METRICS = ("edit_iou", "psnr_fg_target", "psnr_bg")


def _ship_scores(paths: _Paths, folder: str, models: tuple[str, ...] = (*COMPARED, "plainly")) -> None:
    """Per-sample held-out scores of the compared models and the ceiling, in the run layout
    (``folder/eval/<model>/samples.json``, trimmed to id, category, instruction, seed, reply and
    :data:`SHIPPED_METRICS`),
    so that a re-run on a fresh clone can ``--compare`` against the shipped folder itself (``runs/`` is not in git)."""
    for name in models:
        src = os.path.join(paths.eval, name, "samples.json")
        if not os.path.isfile(src):
            logger.warning("ship: %s has no per-sample scores (%s); a re-run cannot --compare against it", name, src)
            continue
        with open(src, encoding="utf-8") as f:
            samples = json.load(f)["samples"]
        trimmed = [{"id": x["id"], "group": x["group"], "status": x["status"],
                    "metrics": {k: v for k, v in (x.get("metrics") or {}).items() if k in SHIPPED_METRICS},
                    "meta": {k: v for k, v in (x.get("meta") or {}).items()
                             if k in ("instruction", "seed", "reply")}}
                   for x in samples]
        os.makedirs(os.path.join(folder, "eval", name), exist_ok=True)
        write_json(os.path.join(folder, "eval", name, "samples.json"), {"samples": trimmed})


def _done(paths: _Paths) -> dict[str, dict]:
    out = {}
    for step in STEPS:
        marker = os.path.join(paths.done, f"{step}.json")
        if os.path.isfile(marker):
            with open(marker, encoding="utf-8") as f:
                out[step] = json.load(f)
    return out


def model_card(output: str) -> str:
    """The model card of SmartEdit-tiny: data, budgets, time per step, probes and the ablation table."""
    paths = _Paths(output)
    cfg = RecipeConfig.load(os.path.join(output, RecipeConfig.FILE_NAME))
    done = _done(paths)
    total = sum(d.get("train_seconds", d.get("seconds", 0)) for d in done.values() if "reused_from" not in d)
    reused = sorted({d["reused_from"] for d in done.values() if "reused_from" in d})
    lines = ["# SmartEdit-tiny (ShapesWorld)", "",
             "A laptop-scale SmartEdit trained from scratch with this repository's recipe "
             "(`python train/shapes_recipe.py`) on ShapesWorld (`smartedit/shapes/world.py`): procedural 64×64 scenes "
             "of flat shapes with exact targets. Not a photo editor: it knows six shape kinds, eight colours, "
             "left/right, relative size, mirror reflections, counting and a handful of facts.", "",
             "Files: `config.json`, `model.safetensors`, `tokenizer/` (load with `SmartEditModel.from_pretrained` or "
             "`smartedit edit --model checkpoints/smartedit-tiny`). The InstructPix2Pix-tiny baseline is in "
             "`../ip2p-tiny` (a diffusers `StableDiffusionInstructPix2PixPipeline` folder).", "",
             *(["Before its `<img_i>` tokens the LLM writes the instruction said plainly (\"remove the circle on the "
                "left\" → \"remove the red circle\"; `mllm.writes_reply` in "
                "`config.json`), and the condition reads what it wrote: a pipeline's output carries it as "
                "`.replies`, `smartedit edit` as `\"reply\"` in its JSON line.", ""] if cfg.edit_reply else []),
             "## Training", "",
             "| step | what | budget | seconds |", "|---|---|---|---|"]
    budgets = {"vae": cfg.vae, "decoder": cfg.decoder, "llava": cfg.llava,
               **({"vision": cfg.vision} if cfg.llava_vision else {}), "control": cfg.control, "ip2p": cfg.ip2p,
               "ip2p_mix": cfg.ip2p_mix,
               "stage1": cfg.stage1, "stage2a": cfg.stage2a, "stage2b": cfg.stage2b}
    what = _step_descriptions(cfg)
    for step in STEPS:
        info = done.get(step, {})
        source = f" (taken from `{info['reused_from']}`)" if "reused_from" in info else ""
        lines.append(_training_row(step, what[step], budgets.get(step), info, source))
    lines += ["", f"Total {total / 60:.0f} min of step time on a 2-core CPU (some steps ran in two processes at once, "
                  "so the wall-clock time was shorter)" + (f", not counting the steps taken from "
                  f"{', '.join(f'`{r}`' for r in reused)}" if reused else "") + ".", ""]
    lines += _probe_lines(done)
    e = cfg.eval
    lines += ["", "## Scores", "",
              f"Held-out test set: {e.per_category} scenes per Reason-Edit category + {e.simple} simple edits; "
              f"reasoning instructions use facts never seen in edit form (taught only through chat). Sampling: "
              f"DDIM {e.steps} steps, text guidance {e.text_guidance}, image guidance {e.image_guidance}, "
              f"per-sample seeds. Edit-region IoU: changed pixels (max-channel difference > the eval threshold) "
              f"vs the true edit mask.", ""]
    md = os.path.join(output, "ablation.md")
    if os.path.isfile(md):
        with open(md, encoding="utf-8") as f:
            lines.append(f.read())
    lines += ["Per-sample held-out scores of IP2P-tiny, MLLM-SD-tiny and SmartEdit-tiny are in "
              "`eval/<model>/samples.json`: a re-run of the recipe compares itself with them by "
              "`python train/shapes_recipe.py --output RUN --compare checkpoints/smartedit-tiny` (with what "
              "each model said before each edit, `meta.reply`, where it writes one). A change of stage seed alone "
              "moves the MLLM-conditioned models by up to about ±0.1 IoU in a category (training noise, which "
              "that interval does not cover): `--summarize` gives the spread over seeds (`seeds.md` beside this "
              "card when it was run; see docs/training.md)."]
    return "\n".join(lines) + "\n"


def _training_row(step: str, what: str, budget: PretrainSettings | StageSettings | None, info: dict,
                  note: str = "") -> str:
    """One row of a card's training table: step, what it trains, its budget and its seconds (``info``: its done
    marker), then ``note``."""
    shown = "" if budget is None else f"{budget.steps} steps × batch {budget.batch_size}, lr {budget.lr:g}"
    secs = info.get("train_seconds", info.get("seconds"))
    seconds = (("" if secs is None else f"{secs:.0f}") + note).strip()
    return f"| {step} | {what} | {shown} | {seconds} |"


def _step_descriptions(cfg: RecipeConfig) -> dict[str, str]:
    """What each recipe step trains or does, for the model card's table."""
    return {"vae": "AutoencoderKL (16-32-32, 8 latent ch, ×4) on sources + targets of every edit family",
            "decoder": "the VAE decoder alone on the frozen encoder's latents (SD's fine-tuned decoder)",
            "vision": ("CLIP ViT from scratch on every patch's shape kind, colour, size and rank from the left"
                       if cfg.llava_vision else "skipped (the ViT trains inside the llava step)"),
            "llava": ("projector + LLaMA on the frozen pretrained ViT" if cfg.llava_vision else
                      "CLIP ViT + projector + LLaMA from scratch") + " on descriptions, VQA chat and knowledge Q&A"
                     + (" and every understanding skill's questions" if cfg.llava_skills else "")
                     + (f" ({cfg.llava_turns} per scene)" if cfg.llava_skills and cfg.llava_turns > 1 else ""),
            "control": "CLIP text + InstructPix2Pix UNet from scratch as a one-step regressor on simple edits (the "
                       "non-diffusion control; learns the text grounding)",
            "ip2p": "the same network fine-tuned from the control as an InstructPix2Pix diffusion model "
                    "(x0-prediction, cosine schedule, CFG dropout)",
            "ip2p_mix": "the fair baseline: IP2P-tiny fine-tuned on the stage-2 mixture's edits in its ratios (the "
                        "chat share left out; reasoning facts held out as for SmartEdit-tiny), the UNet steps of "
                        "stages 2a + 2b",
            "assemble": "LLaVA-tiny + IP2P-tiny (via smartedit.weights.load_sd) → initial model",
            "stage1": ("Q-Former + " + ("every token row" if cfg.edit_reply else "new token rows")
                       + (" + the LLM's decoder layers" if cfg.stage1_train_llm else "")
                       + ": LM CE" + (" (the reply: the instruction said plainly)" if cfg.edit_reply else "")
                       + " + MSE to IP2P-tiny's text encoder on instructions"
                       + (" inside the edit prompt with their scene" if cfg.stage1_grounded else "")
                       + (", said plainly (the shape named by colour and kind)" if cfg.stage1_explicit else "")
                       + (f"; {cfg.stage1_chat:.0%} LLaVA-tiny's chat, LM CE only" if cfg.stage1_chat else "")),
            "stage2a": "MLLM-SD: + LoRA + UNet on the docs/design.md mixture (ShapesWorld family in each slot"
                       + ("; edit prompts answered with the plain wording, then the `<img_i>` tokens" if cfg.edit_reply
                          else "") + ")",
            "stage2b": "SmartEdit: as 2a + BIM (zero-init heads)",
            "testset": "held-out test set (Reason-Edit layout + targets + 7-Simple)",
            "evaluate": "every model through eval/reason_edit's evaluate()", "report": "ablation table + grid"}


def _probe_lines(done: dict[str, dict]) -> list[str]:
    """The model card's sentences on the VAE quality, the LLaVA-tiny probe and the stage-1 alignment."""
    out = []
    for step, label in (("vae", "VAE"), ("decoder", "VAE after the decoder fine-tune")):
        if step in done and "psnr_mean" in done[step]:
            v = done[step]
            out.append(f"{label}: held-out reconstruction PSNR {v.get('psnr_mean', float('nan')):.2f} dB "
                       f"(min {v.get('psnr_min', float('nan')):.2f}), scaling factor "
                       f"{v.get('scaling_factor', 0):.4f}.")
    if "llava" in done and "knowledge_accuracy" in done["llava"]:
        p = done["llava"]
        out.append(f"LLaVA-tiny probe (greedy replies): knowledge facts {p['knowledge_accuracy']:.0%} of "
                   f"{p['facts']}, colour of a named shape {p['colour_accuracy']:.0%}, leftmost shape "
                   f"{p['leftmost_accuracy']:.0%}.")
    if "skills" in done.get("llava", {}):
        out.append("LLaVA-tiny per skill on held-out scenes: " + ", ".join(
            f"{skill} {score:.0%}" for skill, score in done["llava"]["skills"].items()) + ".")
    if "probe" in done.get("vision", {}):
        out.append("Pretrained vision tower, accuracy on shape patches: " + ", ".join(
            f"{label} {score:.0%}" for label, score in done["vision"]["probe"].items()) + ".")
    if "alignment" in done.get("stage1", {}):
        a = done["stage1"]["alignment"]
        out.append(f"Stage-1 alignment on {a['edits']} held-out edit prompts: context MSE to the CLIP text "
                   f"{a['mse']:.3f} (the mean answer: {a['mse_of_mean']:.3f}), top-1 instruction retrieval "
                   f"{a['top1_retrieval']:.2f} (chance {a['chance']:.2f})" + ("; within one family: " + ", ".join(
                       f"{family} {p['top1_retrieval']:.2f}" for family, p in a["per_family"].items())
                       if a.get("per_family") else "") + ("; within one understanding category: " + ", ".join(
                           f"{c.split('-', 1)[1]} {p['top1_retrieval']:.2f}" for c, p in a["per_category"].items())
                           if a.get("per_category") else "") + ".")
        if "reply_accuracy" in a:
            out.append(f"Stage-1 replies written exactly as the plain wording: {a['reply_accuracy']:.0%} of the "
                       f"held-out edit prompts" + ("; " + ", ".join(
                           f"{c.split('-', 1)[1]} {p['reply_accuracy']:.0%}" for c, p in a["per_category"].items()
                           if "reply_accuracy" in p) if a.get("per_category") else "") + ".")
    return out
