"""Assemble a SmartEdit model from published folders of any supported pair (local; nothing downloaded).

:func:`assemble` (``smartedit assemble``) reads the MLLM folder (LLaVA-1.1 / LLaMA / llava-hf: :mod:`smartedit.weights`;
Qwen2.5-VL: :func:`from_qwen_vl`) and the generator folder (SD-1.5 / InstructPix2Pix: :func:`smartedit.weights.load_sd`;
SDXL / SDXL InstructPix2Pix: :func:`load_sdxl`; SD3 / SD3 InstructPix2Pix (UltraEdit): :func:`load_sd3`), telling them
apart by their configs.

A Qwen2.5-VL folder (transformers layout) holds config.json (``model_type: qwen2_5_vl``), the weights (model.safetensors or shards + index; keys
``model.visual.*``, ``model.language_model.*``, ``lm_head.weight``, or the older ``visual.*`` / ``model.*``), the
tokenizer (tokenizer.json + tokenizer_config.json), the chat template (in tokenizer_config.json,
chat_template.jinja or chat_template.json) and preprocessor_config.json (the Qwen2-VL image processor). The MLLM
config comes from the folder, everything else (Q-Former, BIM, generator, training settings) from ``preset``. The
vocabulary keeps the tokenizer's tokens (rows beyond ``len(tokenizer)`` padding the checkpoint's matrices are
dropped) and SmartEdit's 35 tokens follow, mean-initialised.
"""

from __future__ import annotations

import logging
import os

import torch

from ..config import SmartEditConfig, preset as make_preset
from ..weights.files import read_json, read_state_dict
from ..mllm import CLIP_MEAN, CLIP_STD
from .presets import compose_preset, qwen_vl_sections

logger = logging.getLogger(__name__)

__all__ = ["QWEN_LAYOUT", "SDXL_LAYOUT", "SD3_LAYOUT", "from_qwen_vl", "load_sdxl", "load_sd3", "sdxl_generator_config",
           "sd3_generator_config", "is_qwen_vl_folder", "is_sdxl_folder", "is_sd3_folder", "generator_kind",
           "assemble"]

QWEN_LAYOUT = ("a Qwen2.5-VL folder holds config.json (model_type 'qwen2_5_vl'), model.safetensors (or shards with "
               "model.safetensors.index.json), tokenizer.json + tokenizer_config.json, the chat template "
               "(chat_template.jinja / chat_template.json / tokenizer_config.json) and preprocessor_config.json")
SDXL_LAYOUT = ("an SDXL (InstructPix2Pix) diffusers folder holds model_index.json and the subfolders unet/ (config.json "
               "with addition_embed_type 'text_time' + diffusion_pytorch_model.safetensors), vae/ (config.json + "
               "diffusion_pytorch_model.safetensors) and scheduler/ (scheduler_config.json); text_encoder/ and "
               "text_encoder_2/ are not read (the Q-Former replaces them)")
SD3_LAYOUT = ("an SD3 (InstructPix2Pix) diffusers folder holds model_index.json and the subfolders transformer/ "
              "(config.json of an SD3Transformer2DModel + diffusion_pytorch_model.safetensors), vae/ (config.json + "
              "diffusion_pytorch_model.safetensors) and scheduler/ (scheduler_config.json of a "
              "FlowMatchEulerDiscreteScheduler); the text encoders are not read (the Q-Former replaces them)")
_RULES = (("model.visual.", "vision_tower."), ("visual.", "vision_tower."), ("model.language_model.", "llm.model."),
          ("lm_head.", "llm.lm_head."), ("model.", "llm.model."))


def _json(path: str) -> dict:
    return read_json(path, "Qwen2.5-VL", QWEN_LAYOUT)


def _tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if not tok.chat_template and os.path.isfile(os.path.join(path, "chat_template.json")):
        tok.chat_template = _json(os.path.join(path, "chat_template.json"))["chat_template"]
    if not tok.chat_template:
        raise ValueError(f"{path} has no chat template; {QWEN_LAYOUT}")
    return tok


def _qwen_hf_config(path: str) -> tuple[dict, dict]:
    """The folder's Qwen2.5-VL config (as a dict) and image processor settings, checked against each other."""
    from transformers import Qwen2_5_VLConfig

    raw = _json(os.path.join(path, "config.json"))
    if raw.get("model_type") != "qwen2_5_vl":
        raise ValueError(f"{path}/config.json has model_type {raw.get('model_type')!r}, not 'qwen2_5_vl'; "
                         f"{QWEN_LAYOUT}")
    hf = Qwen2_5_VLConfig.from_dict(raw).to_dict()
    for key in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        hf.pop(key, None)
    proc = _json(os.path.join(path, "preprocessor_config.json"))
    v = hf["vision_config"]
    problems = [f"preprocessor {k} {proc.get(k)} != vision_config {name} {v[name]}"
                for k, name in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                                ("temporal_patch_size", "temporal_patch_size")) if proc.get(k, v[name]) != v[name]]
    for k, ref in (("image_mean", CLIP_MEAN), ("image_std", CLIP_STD)):
        if k in proc and any(abs(a - b) > 1e-6 for a, b in zip(proc[k], ref)):
            problems.append(f"preprocessor {k} {proc[k]} is not OpenAI CLIP's {list(ref)}")
    if problems:
        raise ValueError(f"unsupported image processor in {path}: " + "; ".join(problems))
    return hf, proc


def _qwen_state(path: str, target: dict, base: int) -> tuple[dict, dict]:
    """The folder's tensors under ``SmartEditMLLM`` names, the token matrices widened to ``target``'s rows (the
    new rows as ``target`` holds them); every missing / unexpected / wrongly shaped tensor in one error."""
    state, sources = read_state_dict(path, layout=QWEN_LAYOUT)
    mapped, unexpected = {}, []
    for key, value in state.items():
        for old, new in _RULES:
            if key.startswith(old):
                mapped[new + key[len(old):]] = value
                break
        else:
            unexpected.append(key)
    if "llm.lm_head.weight" not in mapped and "llm.model.embed_tokens.weight" in mapped:
        mapped["llm.lm_head.weight"] = mapped["llm.model.embed_tokens.weight"]  # tied checkpoints (3B)
    for key in ("llm.model.embed_tokens.weight", "llm.lm_head.weight"):
        if key in mapped:
            rows = mapped[key]
            if rows.shape[0] < base:
                raise ValueError(f"{key} of {path} has {rows.shape[0]} rows, fewer than the tokenizer's {base}")
            full = target[key].clone()
            full[:base] = rows[:base]
            mapped[key] = full
    missing = sorted(set(target) - set(mapped))
    wrong = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(target[k].shape)}" for k in set(mapped) & set(target)
             if mapped[k].shape != target[k].shape]
    extra = sorted(set(mapped) - set(target)) + unexpected
    if missing or wrong or extra:
        lines = [f"missing: {k}" for k in missing] + [f"wrong shape: {k}" for k in wrong] + \
                [f"unexpected: {k}" for k in extra]
        raise ValueError(f"the weights of {path} do not fit its config ({len(lines)} problem(s)):\n  "
                         + "\n  ".join(lines[:30]))
    return mapped, sources


def from_qwen_vl(path: str | os.PathLike, preset: str | SmartEditConfig = "tiny", image_size: int | None = None,
                 seed: int | None = 0, **overrides) -> "SmartEditModel":  # noqa: F821
    """A SmartEdit model whose MLLM is the Qwen2.5-VL in ``path`` (weights loaded, SmartEdit's tokens added) and
    whose Q-Former, BIM and generator follow ``preset`` (random: train them with the stage scripts). ``image_size``:
    the fixed edit size the vision tower sees (default: the preprocessor's ``max_pixels`` side, else 448)."""
    from ..model import SmartEditModel

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"Qwen2.5-VL folder {path!r} does not exist; {QWEN_LAYOUT}")
    hf, proc = _qwen_hf_config(path)
    v = hf["vision_config"]
    if image_size is None:
        side = int((proc.get("max_pixels") or (proc.get("size") or {}).get("longest_edge") or 448 * 448) ** 0.5)
        unit = v["patch_size"] * v["spatial_merge_size"]
        image_size = min(448, side - side % unit)
    tok = _tokenizer(path)
    base = len(tok)
    t = hf["text_config"]
    eos = tok.eos_token_id if tok.eos_token_id is not None else t["eos_token_id"]
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    bos = tok.bos_token_id if tok.bos_token_id is not None else t.get("bos_token_id") or pad
    base_cfg = preset if isinstance(preset, SmartEditConfig) else make_preset(preset)
    config = compose_preset(base_cfg, "custom", mllm=qwen_vl_sections(hf, base, image_size, pad, bos, eos),
                            bim={"hidden_size": v["hidden_size"]})
    if overrides:
        config = config.replace(**overrides)
    model = SmartEditModel.from_config(config, tokenizer=tok, seed=seed)

    target = model.mllm.state_dict()
    mapped, sources = _qwen_state(path, target, base)
    model.mllm.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()}, strict=True)
    model.mllm.init_new_token_rows()
    logger.info("assembled SmartEdit on Qwen2.5-VL from %s (%s; base vocabulary %d, edit size %d px)", path,
                ", ".join(sorted({os.path.basename(s) for s in sources.values()})), base, image_size)
    return model.eval()


# ---- SDXL (InstructPix2Pix) diffusers folders ------------------------------------------------------------------

def is_qwen_vl_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a transformers Qwen2.5-VL model (config.json ``model_type: qwen2_5_vl``)."""
    config = os.path.join(os.fspath(path), "config.json")
    return os.path.isfile(config) and \
        read_json(config, "Qwen2.5-VL", QWEN_LAYOUT).get("model_type") == "qwen2_5_vl"


def is_sdxl_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an SDXL-family diffusers pipeline (its UNet takes SDXL's text_time conditions)."""
    config = os.path.join(os.fspath(path), "unet", "config.json")
    return os.path.isfile(config) and \
        read_json(config, "SDXL", SDXL_LAYOUT).get("addition_embed_type") == "text_time"


def _read_generator(path: str, subfolder: str, diffusers_cls, edit_cls, family: str, layout: str,
                    in_channels: int | None):
    """The denoiser in ``path/subfolder`` as ``edit_cls`` (its ``pooled_proj``, not in the folder, zero) with its
    input convolution widened to ``in_channels`` (default: 2 × latent channels when it takes only the noisy latent),
    and the folder's VAE. Returns (denoiser, vae, the folder's input channels, the widened ones)."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL

    from ..unet import widen_conv_in

    try:
        loaded = diffusers_cls.from_pretrained(path, subfolder=subfolder, local_files_only=True)
        vae = AutoencoderKL.from_pretrained(path, subfolder="vae", local_files_only=True)
    except (OSError, ValueError, EnvironmentError) as exc:
        raise ValueError(f"cannot read the {family} weights in {path} ({exc}); {layout}") from None
    with init_empty_weights():
        model = edit_cls(**{k: v for k, v in dict(loaded.config).items() if not k.startswith("_")})
    state = loaded.state_dict()
    state.update({f"pooled_proj.{k}": torch.zeros(v.shape) for k, v in model.pooled_proj.state_dict().items()})
    model.load_state_dict(state, strict=True, assign=True)
    del loaded, state
    original = model.conv_in.in_channels
    latent = model.config.out_channels
    target = in_channels if in_channels is not None else (2 * latent if original == latent else original)
    widen_conv_in(model, target)
    return model, vae, original, target


def load_sdxl(path: str | os.PathLike, in_channels: int | None = None):
    """Read an SDXL or SDXL InstructPix2Pix diffusers folder (:data:`SDXL_LAYOUT`) into a
    :class:`smartedit.weights.LoadedSD`: the UNet as an :class:`~smartedit.backbones.sdxl.SDXLEditUNet` (its
    ``pooled_proj`` zero, ``conv_in`` widened to ``in_channels``, default 2 × latent channels when the folder's UNet
    takes only the noisy latent), the VAE, the scheduler's noise schedule, and the null text embedding: zeros
    [1, 77, 2048], which is what the SDXL pipelines use for an empty negative prompt
    (``force_zeros_for_empty_prompt``, true in the published folders)."""
    from diffusers import UNet2DConditionModel

    from ..config import SchedulerConfig
    from ..weights import LoadedSD
    from .sdxl import SDXLEditUNet, sdxl_unet_fields

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"SDXL folder {path!r} does not exist; {SDXL_LAYOUT}")
    index = read_json(os.path.join(path, "model_index.json"), "SDXL", SDXL_LAYOUT)
    if not index.get("force_zeros_for_empty_prompt", True):
        raise ValueError(f"{path}/model_index.json sets force_zeros_for_empty_prompt false: its empty-prompt "
                         f"embedding comes from its two text encoders, which smartedit does not run; use a folder "
                         f"with the published default (true)")
    unet_raw = read_json(os.path.join(path, "unet", "config.json"), "SDXL", SDXL_LAYOUT)
    if unet_raw.get("addition_embed_type") != "text_time":
        raise ValueError(f"{path}/unet is not an SDXL UNet (addition_embed_type "
                         f"{unet_raw.get('addition_embed_type')!r}, not 'text_time'); {SDXL_LAYOUT}")
    for part, name in (("vae", "config.json"), ("scheduler", "scheduler_config.json")):
        if not os.path.isfile(os.path.join(path, part, name)):
            raise FileNotFoundError(f"{path}/{part}/{name} is missing; {SDXL_LAYOUT}")
    unet, vae, original, target = _read_generator(path, "unet", UNet2DConditionModel, SDXLEditUNet, "SDXL",
                                                  SDXL_LAYOUT, in_channels)  # (pooled_proj zero: SDXL's empty prompt)
    fields = dict(sdxl_unet_fields(sdxl_generator_config(unet)))
    vae_fields = dict(block_out_channels=tuple(vae.config.block_out_channels),
                      layers_per_block=vae.config.layers_per_block, latent_channels=vae.config.latent_channels,
                      norm_num_groups=vae.config.norm_num_groups, scaling_factor=float(vae.config.scaling_factor))
    sched = read_json(os.path.join(path, "scheduler", "scheduler_config.json"), "SDXL", SDXL_LAYOUT)
    defaults = SchedulerConfig()
    scheduler = {name: sched.get(name, getattr(defaults, name))
                 for name in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "prediction_type")}
    null = torch.zeros(1, 77, unet.config.cross_attention_dim)
    logger.info("loaded SDXL from %s: UNet %s (conv_in %d → %d ch), VAE scaling %.5f", path,
                tuple(fields["block_out_channels"]), original, target, vae_fields["scaling_factor"])
    return LoadedSD(path=path, unet=unet, vae=vae, unet_config=fields, vae_config=vae_fields, scheduler=scheduler,
                    null_text_embedding=null, original_in_channels=original)


def sdxl_generator_config(unet) -> dict:
    """``backbone.generator_config`` of an SDXL UNet: its diffusers config (``in_channels`` as the SDXL folder's
    noisy latent only; :func:`smartedit.backbones.build_generator` sets ``conv_in`` from ``unet.in_channels``)."""
    config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
    config["in_channels"] = config["out_channels"]
    return config


# ---- SD3 (InstructPix2Pix) diffusers folders ---------------------------------------------------------------------

def is_sd3_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds an SD3-family diffusers pipeline (transformer/config.json of an SD3 MMDiT)."""
    config = os.path.join(os.fspath(path), "transformer", "config.json")
    return os.path.isfile(config) and \
        read_json(config, "SD3", SD3_LAYOUT).get("_class_name") == "SD3Transformer2DModel"


def generator_kind(path: str | os.PathLike) -> str:
    """``sd3``, ``sdxl`` or ``sd15``: the generator family of a diffusers folder, read off its configs."""
    return "sd3" if is_sd3_folder(path) else "sdxl" if is_sdxl_folder(path) else "sd15"


def load_sd3(path: str | os.PathLike, in_channels: int | None = None):
    """Read an SD3 or SD3 InstructPix2Pix diffusers folder (:data:`SD3_LAYOUT`) into a
    :class:`smartedit.weights.LoadedSD`: the transformer as an :class:`~smartedit.backbones.sd3.SD3EditTransformer`
    (its ``pooled_proj`` zero, its patch convolution widened to ``in_channels``, default 2 × latent channels when
    the folder's transformer takes only the noisy latent), the VAE (with its shift factor), the flow-matching
    schedule, and a zero null text embedding [1, 77, joint_attention_dim] (stage 1 sets the CLIP text one)."""
    from diffusers import SD3Transformer2DModel

    from ..weights import LoadedSD
    from .sd3 import SD3EditTransformer, sd3_unet_fields

    path = os.fspath(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"SD3 folder {path!r} does not exist; {SD3_LAYOUT}")
    read_json(os.path.join(path, "model_index.json"), "SD3", SD3_LAYOUT)
    for part, name in (("transformer", "config.json"), ("vae", "config.json"), ("scheduler", "scheduler_config.json")):
        if not os.path.isfile(os.path.join(path, part, name)):
            raise FileNotFoundError(f"{path}/{part}/{name} is missing; {SD3_LAYOUT}")
    sched = read_json(os.path.join(path, "scheduler", "scheduler_config.json"), "SD3", SD3_LAYOUT)
    if sched.get("use_dynamic_shifting"):
        raise ValueError(f"{path}/scheduler uses dynamic shifting (a resolution-dependent shift, SD3.5 / FLUX "
                         f"style), which smartedit's flow-matching schedule does not model; use a fixed-shift "
                         f"scheduler config (SD3: shift 3.0)")
    transformer, vae, original, target = _read_generator(path, "transformer", SD3Transformer2DModel,
                                                         SD3EditTransformer, "SD3", SD3_LAYOUT, in_channels)
    config = sd3_generator_config(transformer)
    vae_fields = dict(block_out_channels=tuple(vae.config.block_out_channels),
                      layers_per_block=vae.config.layers_per_block, latent_channels=vae.config.latent_channels,
                      norm_num_groups=vae.config.norm_num_groups, scaling_factor=float(vae.config.scaling_factor),
                      shift_factor=float(vae.config.shift_factor or 0.0),
                      use_quant_conv=bool(vae.config.use_quant_conv),
                      use_post_quant_conv=bool(vae.config.use_post_quant_conv))
    scheduler = {"num_train_timesteps": sched.get("num_train_timesteps", 1000), "shift": float(sched.get("shift", 1.0)),
                 "prediction_type": "flow", "sampler": "FlowMatchEulerDiscreteScheduler"}
    null = torch.zeros(1, 77, transformer.config.joint_attention_dim)
    logger.info("loaded SD3 from %s: MMDiT %d layers (patch conv %d → %d ch), VAE scaling %.4f shift %.4f", path,
                transformer.config.num_layers, original, target, vae_fields["scaling_factor"],
                vae_fields["shift_factor"])
    return LoadedSD(path=path, unet=transformer, vae=vae, unet_config=dict(sd3_unet_fields(config)),
                    vae_config=vae_fields, scheduler=scheduler, null_text_embedding=null,
                    original_in_channels=original)


def sd3_generator_config(transformer) -> dict:
    """``backbone.generator_config`` of an SD3 transformer: its diffusers config (``in_channels`` as the folder's
    noisy latent only; :func:`smartedit.backbones.build_generator` sets the patch convolution from
    ``unet.in_channels``)."""
    config = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    config["in_channels"] = config["out_channels"]
    return config


# ---- any pair ------------------------------------------------------------------------------------------------------

def _check_context(base: SmartEditConfig, sd: str | os.PathLike) -> None:
    """The Q-Former of ``base`` emits the context the generator in ``sd`` reads ([77, cross_attention_dim])."""
    from ..config import PRESETS
    from ..weights.sd import CLIP_TEXT_LENGTH

    sd3 = is_sd3_folder(sd)
    config = os.path.join(os.fspath(sd), "transformer" if sd3 else "unet", "config.json")
    if not os.path.isfile(config):
        return  # (the loader says what the folder lacks)
    raw = read_json(config, "SD3" if sd3 else "UNet", SD3_LAYOUT if sd3 else SDXL_LAYOUT)
    want = (CLIP_TEXT_LENGTH, raw.get("joint_attention_dim" if sd3 else "cross_attention_dim"))
    if (base.qformer.num_queries, base.qformer.hidden_size) == want:
        return
    fits = [n for n in sorted(PRESETS) if (make_preset(n).qformer.num_queries, make_preset(n).qformer.hidden_size)
            == want]
    raise ValueError(f"preset {base.preset!r} has a Q-Former emitting ({base.qformer.num_queries}, "
                     f"{base.qformer.hidden_size}) but the generator in {sd} reads a {want} context; choose a "
                     f"preset made for this generator ({', '.join(fits) or 'none ships: pass a config'})")


def assemble(llm: str | os.PathLike, sd: str | os.PathLike, clip: str | os.PathLike | None = None,
             preset: str | SmartEditConfig | None = None, dtype: torch.dtype | str = "auto", seed: int | None = 0,
             **overrides) -> "SmartEditModel":  # noqa: F821
    """A SmartEdit model from an MLLM folder ``llm`` (LLaMA / LLaVA-1.1 / llava-hf, or Qwen2.5-VL) and a generator
    folder ``sd`` (SD-1.5 / InstructPix2Pix, SDXL / SDXL InstructPix2Pix, or SD3 / SD3 InstructPix2Pix), whichever
    pair they are. ``preset`` gives the Q-Former, BIM and training settings (default: the 7B-class preset of the
    pair); its ``qformer.hidden_size`` must equal the generator's context width."""
    from ..weights import from_components, load_sd
    from ..model import save_dtype
    from ..unet import widen_conv_in

    qwen, kind = is_qwen_vl_folder(llm), generator_kind(sd)
    name = preset if preset is not None else {"sd15": "qwen2.5vl-7b+sd15" if qwen else "7b",
                                              "sdxl": "qwen2.5vl-7b+sdxl" if qwen else "llava1.5-7b+sdxl",
                                              "sd3": "qwen2.5vl-7b+sd3" if qwen else "llava1.5-7b+sd3"}[kind]
    base = name if isinstance(name, SmartEditConfig) else make_preset(name)
    if not qwen and kind == "sd15":
        return from_components(llm=llm, clip=clip, sd=sd, preset=base, dtype=dtype, seed=seed, **overrides)
    if qwen and clip is not None:
        raise ValueError(f"{llm} is a Qwen2.5-VL folder, which brings its own vision transformer: drop --clip")
    _check_context(base, sd)  # (before any weights are read)
    generator = {"sd3": load_sd3, "sdxl": load_sdxl, "sd15": load_sd}[kind](sd)
    data = base.to_dict()
    data["unet"] = dict(generator.unet_config, mask_channels=overrides.pop("unet.mask_channels",
                                                                           base.unet.mask_channels))
    data["vae"] = dict(generator.vae_config)
    data["scheduler"] = dict(data["scheduler"], **generator.scheduler)
    generator_config = {"sd3": sd3_generator_config, "sdxl": sdxl_generator_config}.get(kind, lambda unet: {})
    data["backbone"] = dict(data["backbone"], generator=kind, generator_config=generator_config(generator.unet))
    if not qwen:
        data["preset"] = "custom"
        return from_components(llm=llm, clip=clip, sd=generator, preset=SmartEditConfig.from_dict(data), dtype=dtype,
                               seed=seed, **overrides)
    model = from_qwen_vl(llm, preset=SmartEditConfig.from_dict(data), seed=seed, **overrides)
    unet = generator.unet
    widen_conv_in(unet, model.config.unet.in_channels)
    model.unet.load_state_dict(unet.state_dict(), strict=True)
    model.vae.load_state_dict(generator.vae.state_dict(), strict=True)
    with torch.no_grad():
        model.null_text_embedding.copy_(generator.null_text_embedding)
    model.conv_in_residual.reattach(model.unet)
    return model.to(save_dtype(model.config, dtype) if isinstance(dtype, str) else dtype).eval()
