"""Released-weight conversion (smartedit.weights.released, smartedit.convert_cli) on tiny checkpoints in the published layout.

The tiny reference files are written here key by key from the published layout (docs/released_weights.md and
the facts below), NOT through the converter's own mapping: ``LLM-15000/adapter_model.bin``
(``model.base_model.model.*``, bf16 frozen LLaMA, fp32 LoRA / embeddings, ``rotary_emb.inv_freq``),
``embeddings_qformer/checkpoint-15000_embeddings_qformer.bin`` (``sd_qformer.*`` BERT names, ``sd_query_tokens``,
``lm_head``, ``mm_projector``, int64 ``position_ids``), ``modulate-15000/adapter_model.bin`` (SAM names) and
``unet-15000/adapter_model.bin`` (``unet.*``). As in the real files, every trainable tensor is a view into ONE
shared fp32 buffer (DeepSpeed ZeRO-2), so each file holds the whole buffer. The LLaVA-1.1 / CLIP / SD folders are
built like tests/test_loading.py builds them, at the sizes of the ``tiny`` preset (base vocabulary 1024 instead of
32000).
"""

import argparse
import json
import os
import shutil

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from PIL import Image  # noqa: E402
from transformers import (AutoTokenizer, CLIPTextConfig, CLIPTextModel, CLIPVisionConfig,  # noqa: E402
                          CLIPVisionModel, LlamaConfig, LlamaForCausalLM)

from smartedit.config import preset  # noqa: E402
from smartedit.weights.released import (REFERENCE_KEY_COUNTS, ReleasedCheckpointError, convert_released,  # noqa: E402
                               export_released, find_released, our_name, published_name, published_spec)
from smartedit.convert_cli import register  # noqa: E402
from smartedit.weights import load_clip, load_llm, load_sd  # noqa: E402
from smartedit.model import TINY_TOKENIZER, SmartEditModel  # noqa: E402

H, INTER, LAYERS, HEADS = 64, 176, 2, 4  # tiny LLaMA
BASE = 1024  # tiny tokenizer (32000 for LLaMA)
NEW = 35  # <img>, <im_start>, <im_end>, <img_0..31>
FULL = BASE + NEW
DV = 64  # CLIP vision width
DQ, IQ, QLAYERS = 64, 128, 2  # Q-Former (768, 3072, 6 at paper scale)
D, MLP = 64, 128  # BIM width and MLP (1024, 2048)
C0 = 32  # UNet's first block (320)
R = 8  # LoRA rank
P = "model.base_model.model."
STEP = 15000
LLAMA = dict(hidden_size=H, intermediate_size=INTER, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
             num_key_value_heads=HEADS, max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0,
             tie_word_embeddings=False)
UNET = dict(sample_size=16, out_channels=4, down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(C0, 64), layers_per_block=1,
            cross_attention_dim=DQ, attention_head_dim=8, norm_num_groups=8)
LLAVA_SHARD_2 = "pytorch_model-00002-of-00002.bin"


def _tokenizer(extra=(), special=()):
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    if extra:
        tok.add_tokens(list(extra))
    if special:
        tok.add_tokens(list(special), special_tokens=True)
    return tok


# ---- component folders (LLaVA-1.1 merge, CLIP, SD) ----------------------------------------------------------

def _write_llava11(path):
    """LLaVA-1.1 merge: two pytorch_model-*.bin shards + index, 3 extra vocabulary rows, model.mm_projector.*."""
    torch.manual_seed(2)
    state = {k: v.detach().clone() for k, v in
             LlamaForCausalLM(LlamaConfig(vocab_size=BASE + 3, **LLAMA)).state_dict().items()}
    state["model.mm_projector.weight"] = torch.randn(H, DV) * 0.05
    state["model.mm_projector.bias"] = torch.randn(H) * 0.05
    first = [k for k in state if k.startswith(("model.embed_tokens", "model.layers.0."))]
    shards = {"pytorch_model-00001-of-00002.bin": {k: state[k] for k in first},
              LLAVA_SHARD_2: {k: v for k, v in state.items() if k not in first}}
    for name, part in shards.items():
        torch.save(part, path / name)
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(
        {"metadata": {}, "weight_map": {k: n for n, part in shards.items() for k in part}}))
    (path / "config.json").write_text(json.dumps(dict(
        LLAMA, architectures=["LlavaLlamaForCausalLM"], model_type="llava", vocab_size=BASE + 3, hidden_act="silu",
        rms_norm_eps=1e-6, mm_hidden_size=DV, mm_vision_tower="openai/clip-vit-large-patch14",
        mm_vision_select_layer=-2, mm_use_im_start_end=True, use_mm_proj=True)))
    _tokenizer(extra=["<im_patch>"], special=["<im_start>", "<im_end>"]).save_pretrained(path)
    return state


def _write_sd(path):
    """InstructPix2Pix-style diffusers folder (8-channel UNet)."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(6)
    UNet2DConditionModel(in_channels=8, **UNET).save_pretrained(path / "unet")
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64)
    vae.save_pretrained(path / "vae")
    EulerAncestralDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear"
                                    ).save_pretrained(path / "scheduler")
    CLIPTextModel(CLIPTextConfig(vocab_size=BASE, hidden_size=DQ, intermediate_size=128, num_hidden_layers=1,
                                 num_attention_heads=4, max_position_embeddings=77, bos_token_id=1, eos_token_id=2,
                                 pad_token_id=0)).save_pretrained(path / "text_encoder")
    _tokenizer().save_pretrained(path / "tokenizer")
    (path / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionInstructPix2PixPipeline"}))
    return {k: v.detach().clone() for k, v in vae.state_dict().items()}


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    root = tmp_path_factory.mktemp("components")
    for name in ("llava", "clip", "sd"):
        (root / name).mkdir()
    llava_state = _write_llava11(root / "llava")
    torch.manual_seed(4)
    clip = CLIPVisionModel(CLIPVisionConfig(hidden_size=DV, intermediate_size=128, num_hidden_layers=3,
                                            num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32))
    clip.save_pretrained(root / "clip")
    vae_state = _write_sd(root / "sd")
    return dict(root=root, llava=root / "llava", clip=root / "clip", sd=root / "sd", llava_state=llava_state,
                clip_state={k: v.detach().clone() for k, v in clip.state_dict().items()}, vae_state=vae_state,
                llm=load_llm(root / "llava"), clip_loaded=load_clip(root / "clip"), sd_loaded=load_sd(root / "sd"))


# ---- the reference files, key by key ------------------------------------------------------------------------

def _ref_llm(vocab=FULL, lora=True):
    """(shape, role) of LLM-N/adapter_model.bin. role: frozen (bf16), train (fp32 shared buffer), inv_freq."""
    keys = {f"{P}embed_tokens.weight": ((vocab, H), "train"), f"{P}norm.weight": ((H,), "frozen")}
    for i in range(LAYERS):
        p = f"{P}layers.{i}."
        for n in "qkvo":
            keys[f"{p}self_attn.{n}_proj.weight"] = ((H, H), "frozen")
        if lora:
            for n in "qv":
                keys[f"{p}self_attn.{n}_proj.lora_A.default.weight"] = ((R, H), "train")
                keys[f"{p}self_attn.{n}_proj.lora_B.default.weight"] = ((H, R), "train")
        keys[f"{p}self_attn.rotary_emb.inv_freq"] = ((H // HEADS // 2,), "inv_freq")
        keys[f"{p}mlp.gate_proj.weight"] = ((INTER, H), "frozen")
        keys[f"{p}mlp.up_proj.weight"] = ((INTER, H), "frozen")
        keys[f"{p}mlp.down_proj.weight"] = ((H, INTER), "frozen")
        keys[f"{p}input_layernorm.weight"] = ((H,), "frozen")
        keys[f"{p}post_attention_layernorm.weight"] = ((H,), "frozen")
    return keys


def _linear(keys, name, out_dim, in_dim, role="train"):
    keys[f"{name}.weight"] = ((out_dim, in_dim), role)
    keys[f"{name}.bias"] = ((out_dim,), role)


def _norm(keys, name, dim):
    keys[f"{name}.weight"] = ((dim,), "train")
    keys[f"{name}.bias"] = ((dim,), "train")


def _ref_embeddings(lm_rows=FULL, projector=True, prefix="sd_", query="sd_query_tokens"):
    keys = {query: ((1, 77, DQ), "train"), f"{prefix}qformer.embeddings.position_ids": ((1, 512), "position_ids")}
    if lm_rows:
        keys["lm_head.weight"] = ((lm_rows, H), "train")
    if projector:
        _linear(keys, "mm_projector", H, DV, role="fp32")
    _norm(keys, f"{prefix}qformer.embeddings.LayerNorm", DQ)
    for i in range(QLAYERS):
        q = f"{prefix}qformer.encoder.layer.{i}."
        for n in ("query", "key", "value"):
            _linear(keys, f"{q}attention.self.{n}", DQ, DQ)
        _linear(keys, f"{q}attention.output.dense", DQ, DQ)
        _norm(keys, f"{q}attention.output.LayerNorm", DQ)
        if i % 2 == 0:
            _linear(keys, f"{q}crossattention.self.query", DQ, DQ)
            _linear(keys, f"{q}crossattention.self.key", DQ, H)
            _linear(keys, f"{q}crossattention.self.value", DQ, H)
            _linear(keys, f"{q}crossattention.output.dense", DQ, DQ)
            _norm(keys, f"{q}crossattention.output.LayerNorm", DQ)
        _linear(keys, f"{q}intermediate_query.dense", IQ, DQ)
        _linear(keys, f"{q}output_query.dense", DQ, IQ)
        _norm(keys, f"{q}output_query.LayerNorm", DQ)
    return keys


def _attention(keys, name, dim, inner):
    for n in "qkv":
        _linear(keys, f"{name}.{n}_proj", inner, dim)
    _linear(keys, f"{name}.out_proj", dim, inner)


def _ref_bim():
    keys = {"pe_layer.positional_encoding_gaussian_matrix": ((2, D // 2), "fp32")}
    _linear(keys, "modulate_head", D, DQ)
    for i in range(2):
        t = f"modulate_transformer.layers.{i}."
        _attention(keys, f"{t}self_attn", D, D)
        _attention(keys, f"{t}cross_attn_token_to_image", D, D // 2)
        _attention(keys, f"{t}cross_attn_image_to_token", D, D // 2)
        _linear(keys, f"{t}mlp.lin1", MLP, D)
        _linear(keys, f"{t}mlp.lin2", D, MLP)
        for k in range(1, 5):
            _norm(keys, f"{t}norm{k}", D)
    _attention(keys, "modulate_transformer.final_attn_token_to_image", D, D // 2)
    _norm(keys, "modulate_transformer.norm_final_attn", D)
    keys["dimension_reduction_head_zeroconv.weight"] = ((C0, D, 1, 1), "train")
    keys["dimension_reduction_head_zeroconv.bias"] = ((C0,), "train")
    _linear(keys, "dimension_reduction_head_qformer_out", DQ, D)
    return keys


def _ref_unet():
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(in_channels=8, **UNET)
    return {f"unet.{k}": (tuple(v.shape), "train") for k, v in unet.state_dict().items()}


def _fill(specs, seed):
    """Tensors for {file: {key: (shape, role)}}: every "train" tensor a view into one shared fp32 buffer."""
    g = torch.Generator().manual_seed(seed)
    total = sum(int(np.prod(s)) for keys in specs.values() for s, role in keys.values() if role == "train")
    flat = torch.empty(total)
    offset = 0
    files = {}
    for kind, keys in specs.items():
        state = {}
        for key, (shape, role) in keys.items():
            if role == "position_ids":
                state[key] = torch.arange(512).unsqueeze(0)
                continue
            if role == "inv_freq":
                state[key] = (1.0 / 10000 ** (torch.arange(0, H // HEADS, 2).float() / (H // HEADS))).bfloat16()
                continue
            value = torch.randn(shape, generator=g) * 0.05
            if "norm" in key.lower() and key.endswith("weight"):
                value += 1.0
            if role == "train":
                n = value.numel()
                view = flat[offset:offset + n].view(shape)
                view.copy_(value)
                state[key] = view
                offset += n
            else:
                state[key] = value.bfloat16() if role == "frozen" else value
        files[kind] = state
    return files


def _write_released(root, seed=10, kinds=("llm", "embeddings", "bim", "unet"), step=STEP, adapter_alpha=32,
                    mutate=None, embeddings=None):
    """A checkpoint folder in the published layout; returns {kind: state} as written."""
    specs = {"llm": _ref_llm(), "embeddings": embeddings or _ref_embeddings(), "bim": _ref_bim(), "unet": _ref_unet()}
    files = _fill({k: specs[k] for k in kinds}, seed)
    if mutate:
        mutate(files)
    names = {"llm": f"LLM-{step}/adapter_model.bin",
             "embeddings": f"embeddings_qformer/checkpoint-{step}_embeddings_qformer.bin",
             "bim": f"modulate-{step}/adapter_model.bin", "unet": f"unet-{step}/adapter_model.bin"}
    for kind, state in files.items():
        path = root / names[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(state, path)
    if "llm" in kinds and adapter_alpha:
        (root / f"LLM-{step}" / "adapter_config.json").write_text(json.dumps(
            {"r": R, "lora_alpha": adapter_alpha, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"],
             "bias": "none", "fan_in_fan_out": False, "task_type": "CAUSAL_LM", "peft_type": "LORA"}))
    return files


@pytest.fixture(scope="module")
def released(tmp_path_factory):
    root = tmp_path_factory.mktemp("SmartEdit-tiny")
    return root, _write_released(root)


def _convert(parts, root, **kw):
    return convert_released(root, parts["llm"], parts["clip_loaded"], parts["sd_loaded"], preset="tiny", **kw)


@pytest.fixture(scope="module")
def merged(parts, released):
    return _convert(parts, released[0])


@pytest.fixture(scope="module")
def adapter(parts, released):
    return _convert(parts, released[0], keep_lora=True)


def _eq(actual, expected):
    torch.testing.assert_close(actual.detach(), expected.detach().to(actual.dtype), rtol=0, atol=0)


# ---- where every tensor lands -------------------------------------------------------------------------------

_QFORMER = (("attention.self.", "attention.attention."), ("crossattention.self.", "crossattention.attention."))
_BIM = tuple((f"norm{k}.", f"layer_norm{k}.") for k in range(1, 5)) + (("norm_final_attn.", "layer_norm_final_attn."),)


def _target(state, kind, key):
    """(our state-dict key, tensor) where the reference tensor ``key`` of file ``kind`` belongs (test oracle)."""
    if kind == "llm":
        ours = "mllm.llm.model." + key[len(P):]
    elif kind == "unet":
        ours = key
    elif kind == "bim":
        rest = key
        for old, new in _BIM:
            rest = rest.replace(old, new)
        ours = {"modulate_head": "bim.text_in", "modulate_transformer": "bim.transformer",
                "dimension_reduction_head_qformer_out": "bim.text_out",
                "dimension_reduction_head_zeroconv": "bim.image_out",
                "pe_layer": "bim.pos_encoding"}[rest.split(".")[0]] + rest[rest.index("."):]
        ours = ours.replace("positional_encoding_gaussian_matrix", "positional_embedding")
    else:
        if key == "sd_query_tokens":
            ours = "qformer.query_tokens"
        elif key == "lm_head.weight":
            ours = "mllm.llm.lm_head.weight"
        elif key.startswith("mm_projector."):
            ours = "mllm.projector." + key.split(".")[-1]
        else:
            rest = key[len("sd_qformer."):].replace("embeddings.LayerNorm.", "layernorm.")
            for old, new in _QFORMER:
                rest = rest.replace(old, new)
            ours = "qformer.qformer." + rest
    return ours, state[ours]


def test_every_tensor_lands_where_it_belongs(merged, released, parts):
    files = released[1]
    model = merged
    visited = set()
    ours_state = model.state_dict()
    scale = 32 / R  # lora_alpha from adapter_config.json
    for kind, state in files.items():
        for key, value in state.items():
            if key.endswith(("inv_freq", "position_ids")) or ".lora_" in key:
                continue
            ours, tensor = _target(ours_state, kind, key)
            visited.add(ours)
            if key.endswith("embed_tokens.weight") or key == "lm_head.weight":
                llava = parts["llava_state"]["model.embed_tokens.weight" if "embed" in key else "lm_head.weight"]
                assert tensor.shape == (FULL, H)
                _eq(tensor[:BASE], llava[:BASE])  # base rows: LLaVA (the file's are stale)
                _eq(tensor[BASE:], value[BASE:])  # SmartEdit's 35 new rows: this file
                assert not torch.equal(tensor[:BASE], value[:BASE].float())
            elif kind == "llm" and key.endswith(("q_proj.weight", "v_proj.weight")):  # W + alpha/r · B @ A
                stem = key[:-len("weight")]
                delta = state[stem + "lora_B.default.weight"] @ state[stem + "lora_A.default.weight"]
                torch.testing.assert_close(tensor, value.float() + scale * delta, rtol=0, atol=1e-6)
                assert not torch.allclose(tensor, value.float())
            else:
                _eq(tensor, value)
    # spot checks written out attribute by attribute
    emb, bim = files["embeddings"], files["bim"]
    _eq(model.qformer.qformer.encoder.layer[0].crossattention.attention.key.weight,
        emb["sd_qformer.encoder.layer.0.crossattention.self.key.weight"])
    assert model.qformer.qformer.encoder.layer[0].crossattention.attention.key.weight.shape == (DQ, H)
    _eq(model.qformer.qformer.layernorm.bias, emb["sd_qformer.embeddings.LayerNorm.bias"])
    _eq(model.qformer.query_tokens, emb["sd_query_tokens"])
    _eq(model.bim.transformer.layers[1].layer_norm3.bias, bim["modulate_transformer.layers.1.norm3.bias"])
    _eq(model.bim.transformer.layer_norm_final_attn.weight, bim["modulate_transformer.norm_final_attn.weight"])
    _eq(model.bim.pos_encoding.positional_embedding, bim["pe_layer.positional_encoding_gaussian_matrix"])
    _eq(model.bim.image_out.weight, bim["dimension_reduction_head_zeroconv.weight"])
    _eq(model.bim.text_in.weight, bim["modulate_head.weight"])
    _eq(model.mllm.projector.weight, emb["mm_projector.weight"])  # not LLaVA's copy
    assert not torch.equal(model.mllm.projector.weight, parts["llava_state"]["model.mm_projector.weight"])
    _eq(model.unet.conv_in.weight, files["unet"]["unet.conv_in.weight"])
    # everything else from the component folders
    tower = model.mllm.vision_tower.state_dict()
    for key, value in parts["clip_state"].items():
        _eq(tower[key.removeprefix("vision_model.") if key.removeprefix("vision_model.") in tower else key], value)
    vae = model.vae.state_dict()
    for key, value in parts["vae_state"].items():
        _eq(vae[key], value)
    _eq(model.null_text_embedding, parts["sd_loaded"].null_text_embedding)
    # no tensor left unconverted: every model tensor came from a released file or a component folder
    components = {k for k in model.state_dict() if k.startswith(("mllm.vision_tower.", "vae."))}
    assert set(model.state_dict()) == visited | components | {"null_text_embedding"}
    cfg = model.config
    assert cfg.lora.r == 0 and cfg.bim.enabled and cfg.mllm.vocab_size == BASE and cfg.mllm.projector == "linear"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    tok = model.tokenizer
    assert tok.convert_tokens_to_ids("<img>") == BASE and tok.convert_tokens_to_ids("<img_31>") == FULL - 1


def test_lora_kept_as_adapter_and_merge_is_exact(adapter, merged, released):
    llm_file = released[1]["llm"]
    assert adapter.config.lora.r == R and adapter.config.lora.alpha == 32
    layer = adapter.mllm.llm.model.layers[1].self_attn
    _eq(layer.q_proj.base_layer.weight, llm_file[f"{P}layers.1.self_attn.q_proj.weight"])
    _eq(layer.v_proj.lora_A.default.weight, llm_file[f"{P}layers.1.self_attn.v_proj.lora_A.default.weight"])
    _eq(layer.v_proj.lora_B.default.weight, llm_file[f"{P}layers.1.self_attn.v_proj.lora_B.default.weight"])
    # the merged LLM computes what the LLM with its (unmerged) adapter computes
    ids = torch.randint(0, FULL, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = adapter.mllm.llm(input_ids=ids).logits
        b = merged.mllm.llm(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        base = adapter.mllm.llm.model.embed_tokens(ids)
    assert not torch.allclose(adapter.mllm.llm.model.layers[0].self_attn.q_proj.base_layer(base),
                              adapter.mllm.llm.model.layers[0].self_attn.q_proj(base))


def test_converted_model_edits(merged):
    from smartedit.pipeline import SmartEditPipeline

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = SmartEditPipeline(merged)(image, "make it red", num_inference_steps=2, seed=0)
    edited = np.asarray(out.images[0], dtype=np.float32)
    assert out.images[0].size == (64, 64) and edited.std() > 0
    with torch.no_grad():
        cond = merged.encode_condition(torch.rand(1, 3, 64, 64), "make it red")
    assert torch.isfinite(cond.context).all() and cond.spatial.shape == (1, C0, 16, 16)
    assert cond.spatial.abs().sum() > 0  # trained (non-zero) BIM heads


# ---- the inverse --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["merged", "adapter", "stage2a"])
def test_round_trip_is_exact(mode, merged, adapter, parts, released, tmp_path):
    model = {"merged": merged, "adapter": adapter}.get(mode)
    if model is None:
        model = _convert(parts, released[0], stage="stage2a", keep_lora=True)
    paths = export_released(model, tmp_path / "published")
    names = {os.path.relpath(p, tmp_path / "published") for p in paths.values()}
    expected = {f"LLM-{STEP}/adapter_model.bin", f"LLM-{STEP}/adapter_config.json",
                f"embeddings_qformer/checkpoint-{STEP}_embeddings_qformer.bin", f"unet-{STEP}/adapter_model.bin"}
    assert names == expected | ({f"modulate-{STEP}/adapter_model.bin"} if mode != "stage2a" else set())
    # exactly the reference key names (as written by the fixture from the fact sheet) and dtypes
    for kind, path in paths.items():
        if kind == "adapter_config":
            continue
        state = torch.load(path, map_location="cpu", weights_only=True)
        assert set(state) == set(released[1][kind]), kind
        for key, value in state.items():
            ref = released[1][kind][key]
            assert value.shape == ref.shape, key
            if mode != "merged" or not key.endswith(("q_proj.weight", "v_proj.weight")):
                assert value.dtype == ref.dtype, key
    back = _convert(parts, tmp_path / "published", keep_lora=mode != "merged")
    assert back.config == model.config
    expected_state = model.state_dict()
    assert set(back.state_dict()) == set(expected_state)
    for key, value in back.state_dict().items():
        assert torch.equal(value, expected_state[key]), key


def test_export_from_a_model_folder_via_cli(merged, parts, tmp_path):
    parser = argparse.ArgumentParser(prog="smartedit")
    register(parser.add_subparsers(dest="command", required=True))
    merged.save_pretrained(tmp_path / "ours")
    args = parser.parse_args(["export-released", "--model", str(tmp_path / "ours"), "--out", str(tmp_path / "pub"),
                              "--step", "7"])
    assert args.func(args) == 0
    assert (tmp_path / "pub" / "modulate-7" / "adapter_model.bin").is_file()
    args = parser.parse_args(["convert-released", "--smartedit", str(tmp_path / "pub"), "--llava",
                              str(parts["llava"]), "--clip", str(parts["clip"]), "--sd", str(parts["sd"]),
                              "--out", str(tmp_path / "back"), "--preset", "tiny", "--dtype", "bfloat16"])
    assert args.func(args) == 0
    back = SmartEditModel.from_pretrained(tmp_path / "back")
    assert back.config == merged.config and back.tokenizer is not None
    info = json.loads((tmp_path / "back" / "released_conversion.json").read_text())
    assert info["stage"] == "smartedit" and info["step"] == "7" and info["lora"] == "merged"
    assert info["dtype"] == "bfloat16" and back.mllm.llm.lm_head.weight.dtype == torch.bfloat16
    expected = merged.state_dict()
    for key, value in back.state_dict().items():
        assert torch.equal(value, expected[key].to(torch.bfloat16)), key


# ---- stage 1 / stage 2a -------------------------------------------------------------------------------------

def test_stage2a_is_detected(parts, tmp_path):
    for step in (5000, 10000):  # two steps saved: the last is converted
        files = _write_released(tmp_path, seed=step, kinds=("llm", "embeddings", "unet"), step=step,
                                adapter_alpha=None)
    layout = find_released(tmp_path)
    assert layout.stage == "stage2a" and layout.step == "10000" and layout.adapter_config is None
    model = _convert(parts, tmp_path)
    assert model.bim is None and not model.config.bim.enabled and model.config.lora.r == 0
    _eq(model.unet.conv_in.bias, files["unet"]["unet.conv_in.bias"])
    llm = files["llm"]
    stem = f"{P}layers.0.self_attn.v_proj."
    merged = llm[stem + "weight"].float() + 2.0 * (llm[stem + "lora_B.default.weight"]  # default alpha/r = 16/8
                                                  @ llm[stem + "lora_A.default.weight"])
    torch.testing.assert_close(model.mllm.llm.model.layers[0].self_attn.v_proj.weight, merged, rtol=0, atol=1e-6)
    with torch.no_grad():
        cond = model.encode_condition(torch.rand(1, 3, 64, 64), "make it red")
    assert cond.spatial is None and cond.context.shape == (1, 77, DQ)
    earlier = _convert(parts, tmp_path, step=5000)
    assert not torch.equal(earlier.qformer.query_tokens, model.qformer.query_tokens)


def test_stage_override_drops_the_bim(parts, released, merged):
    model = _convert(parts, released[0], stage="stage2a")
    assert model.bim is None
    _eq(model.qformer.query_tokens, merged.qformer.query_tokens)
    model = _convert(parts, released[0], stage="stage1")
    assert model.bim is None and model.config.lora.r == 0
    _eq(model.unet.conv_in.weight, parts["sd_loaded"].unet.conv_in.weight)  # stage 1: the SD folder's UNet
    _eq(model.mllm.llm.model.layers[0].mlp.up_proj.weight, parts["llava_state"]["model.layers.0.mlp.up_proj.weight"])
    _eq(model.mllm.llm.lm_head.weight, merged.mllm.llm.lm_head.weight)
    # stage 1 without an embedding copy: the new embedding rows are the mean of the base rows
    llava_embed = parts["llava_state"]["model.embed_tokens.weight"][:BASE]
    torch.testing.assert_close(model.mllm.llm.model.embed_tokens.weight[BASE:],
                               llava_embed.mean(0, keepdim=True).expand(NEW, -1))


def test_stage1_of_the_reference_trainer(parts, tmp_path):
    """TrainStage1.py: qformer.* / query_tokens, 33 new rows (<img>, <img_0..31>) of both matrices, no projector,
    file embeddings_qformer/checkpoint-N.bin."""
    emb = _ref_embeddings(lm_rows=33, projector=False, prefix="", query="query_tokens")
    emb["model.embed_tokens.weight"] = ((33, H), "train")
    files = _fill({"embeddings": emb}, seed=3)
    (tmp_path / "embeddings_qformer").mkdir()
    torch.save(files["embeddings"], tmp_path / "embeddings_qformer" / "checkpoint-150000.bin")
    layout = find_released(tmp_path)
    assert layout.stage == "stage1" and layout.step == "150000"
    model = _convert(parts, tmp_path)
    state = files["embeddings"]
    _eq(model.qformer.query_tokens, state["query_tokens"])
    _eq(model.qformer.qformer.encoder.layer[1].attention.attention.value.bias,
        state["qformer.encoder.layer.1.attention.self.value.bias"])
    _eq(model.mllm.projector.weight, parts["llava_state"]["model.mm_projector.weight"])  # from LLaVA
    for name, matrix in (("model.embed_tokens.weight", model.mllm.llm.model.embed_tokens.weight),
                         ("lm_head.weight", model.mllm.llm.lm_head.weight)):
        rows = state[name]
        _eq(matrix[BASE], rows[0])  # <img>
        _eq(matrix[BASE + 3:], rows[1:])  # <img_0..31>
        mean = parts["llava_state"][name][:BASE].float().mean(0)
        torch.testing.assert_close(matrix[BASE + 1], mean)  # <im_start>, <im_end>: not trained in stage 1
        torch.testing.assert_close(matrix[BASE + 2], mean)
    assert model.bim is None and model.config.lora.r == 0


def test_vicuna_gives_config_and_tokenizer(parts, released, tmp_path):
    vicuna = tmp_path / "vicuna"
    vicuna.mkdir()
    config = dict(LLAMA, model_type="llama", architectures=["LlamaForCausalLM"], vocab_size=BASE, hidden_act="silu",
                  rms_norm_eps=1e-6, max_position_embeddings=1024)
    (vicuna / "config.json").write_text(json.dumps(config))
    _tokenizer().save_pretrained(vicuna)
    model = convert_released(released[0], parts["llava"], parts["clip_loaded"], parts["sd_loaded"], vicuna=vicuna,
                             preset="tiny")
    assert model.config.mllm.max_position_embeddings == 1024  # Vicuna's, as the reference
    assert len(model.tokenizer) == FULL and "<im_patch>" not in model.tokenizer.get_vocab()
    (vicuna / "config.json").write_text(json.dumps(dict(config, hidden_size=2 * H, vocab_size=BASE + 1)))
    with pytest.raises(ReleasedCheckpointError) as info:
        convert_released(released[0], parts["llm"], parts["clip_loaded"], parts["sd_loaded"], vicuna=vicuna,
                         preset="tiny")
    assert any(p.startswith("mismatch: hidden_size is 128 in") for p in info.value.problems)
    assert any(p.startswith("mismatch: vocab_size is 1025 in") for p in info.value.problems)


# ---- errors -------------------------------------------------------------------------------------------------

def test_every_mismatch_is_listed_in_one_error(parts, tmp_path):
    def mutate(files):
        del files["embeddings"]["sd_qformer.encoder.layer.1.output_query.dense.bias"]
        files["bim"]["modulate_transformer.layers.0.norm5.weight"] = torch.zeros(D)
        files["unet"]["unet.conv_in.weight"] = torch.zeros(C0, 4, 3, 3)
        # LLaVA's 32003 rows: an LLM-15000 fetched before its re-upload (issue TencentARC/SmartEdit#10)
        files["llm"][f"{P}embed_tokens.weight"] = torch.zeros(BASE + 3, H)
        files["embeddings"]["lm_head.weight"] = torch.zeros(BASE, H)

    _write_released(tmp_path, mutate=mutate)
    with pytest.raises(ReleasedCheckpointError) as info:
        _convert(parts, tmp_path)
    msg = str(info.value)
    assert "5 problem(s)" in msg and len(info.value.problems) == 5
    emb = f"embeddings_qformer/checkpoint-{STEP}_embeddings_qformer.bin"
    assert f"missing: sd_qformer.encoder.layer.1.output_query.dense.bias (expected in {emb})" in msg
    assert f"unexpected: modulate_transformer.layers.0.norm5.weight (in modulate-{STEP}/adapter_model.bin)" in msg
    assert (f"wrong shape: unet.conv_in.weight in unet-{STEP}/adapter_model.bin is (32, 4, 3, 3), "
            f"expected (32, 8, 3, 3)") in msg
    assert (f"wrong vocabulary size: {P}embed_tokens.weight in LLM-{STEP}/adapter_model.bin has 1027 rows, "
            f"expected 1059") in msg and "download it again" in msg
    assert f"wrong vocabulary size: lm_head.weight in {emb} has 1024 rows, expected 1059" in msg


def test_lfs_pointers_and_bad_files(parts, released, tmp_path):
    broken = tmp_path / "lfs"
    shutil.copytree(released[0], broken)
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 4880000000\n"
    (broken / f"modulate-{STEP}" / "adapter_model.bin").write_text(pointer)
    (broken / f"LLM-{STEP}" / "adapter_model.bin").write_text(pointer)
    with pytest.raises(ReleasedCheckpointError) as info:
        _convert(parts, broken)
    assert len(info.value.problems) == 2 and "git lfs pull" in str(info.value)
    assert f"Git LFS pointer instead of the file: LLM-{STEP}/adapter_model.bin" in str(info.value)
    assert f"Git LFS pointer instead of the file: modulate-{STEP}/adapter_model.bin" in str(info.value)
    # a pickle holding more than tensors is refused (weights_only=True), next to the other problems
    shutil.rmtree(broken)
    shutil.copytree(released[0], broken)
    torch.save({"sd_query_tokens": torch.zeros(1)}, broken / "embeddings_qformer" /
               f"checkpoint-{STEP}_embeddings_qformer.bin")
    bim = torch.load(broken / f"modulate-{STEP}" / "adapter_model.bin", weights_only=True)
    bim["evil"] = argparse.Namespace()
    torch.save(bim, broken / f"modulate-{STEP}" / "adapter_model.bin")
    with pytest.raises(ReleasedCheckpointError) as info:
        _convert(parts, broken)
    msg = str(info.value)
    assert f"unreadable: modulate-{STEP}/adapter_model.bin" in msg and "holds more than tensors" in msg
    assert "wrong shape: sd_query_tokens" in msg and "missing: lm_head.weight" in msg


def test_layout_errors(parts, released, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_released(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"holds no SmartEdit checkpoint(.|\n)*LLM-N/adapter_model\.bin"):
        find_released(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"no checkpoint step 5000(.|\n)*steps with an embeddings file: 15000"):
        find_released(released[0], step=5000)
    partial = tmp_path / "partial"
    _write_released(partial, kinds=("llm", "embeddings"))
    with pytest.raises(FileNotFoundError, match=rf"lacks unet-{STEP}/adapter_model\.bin"):
        find_released(partial)
    with pytest.raises(FileNotFoundError, match=rf"smartedit needs .*modulate-{STEP}"):
        find_released(partial, stage="smartedit")
    with pytest.raises(ValueError, match="unknown stage"):
        find_released(released[0], stage="stage3")
    parser = argparse.ArgumentParser(prog="smartedit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["convert-released", "--smartedit", str(tmp_path / "nope"), "--llava", "x", "--clip",
                              "x", "--sd", "x", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit, match=r"^error: SmartEdit checkpoint folder .*nope.* does not exist"):
        args.func(args)


def test_checkpoint_of_another_size_is_named_first(parts, tmp_path):
    emb = _ref_embeddings()
    emb["lm_head.weight"] = ((FULL, 2 * H), "train")
    files = _fill({"embeddings": emb}, seed=5)
    (tmp_path / "embeddings_qformer").mkdir()
    torch.save(files["embeddings"], tmp_path / "embeddings_qformer" / "checkpoint-9_embeddings_qformer.bin")
    with pytest.raises(ReleasedCheckpointError) as info:
        _convert(parts, tmp_path)
    first = info.value.problems[0]
    assert first.startswith("mismatch: embeddings_qformer/checkpoint-9_embeddings_qformer.bin is for an LLM of "
                            "hidden size 128") and "LLaVA-13B-v1" in first
    assert "wrong shape: lm_head.weight" in str(info.value)


# ---- the mapping itself -------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["7b", "13b"])
def test_published_key_counts_match_the_released_files(name):
    spec = published_spec(preset(name, **{"lora.r": 8}))
    assert {kind: len(keys) for kind, keys in spec.items()} == REFERENCE_KEY_COUNTS[name]
    hidden = 4096 if name == "7b" else 5120
    assert spec["llm"][f"{P}embed_tokens.weight"] == ((32035, hidden), torch.float32)
    assert spec["llm"][f"{P}layers.0.self_attn.q_proj.weight"] == ((hidden, hidden), torch.bfloat16)
    assert spec["embeddings"]["sd_qformer.encoder.layer.4.crossattention.self.key.weight"][0] == (768, hidden)
    assert spec["bim"]["pe_layer.positional_encoding_gaussian_matrix"][0] == (2, 512)
    assert spec["bim"]["dimension_reduction_head_zeroconv.weight"][0] == (320, 1024, 1, 1)
    assert spec["unet"]["unet.conv_in.weight"][0] == (320, 8, 3, 3)


def test_every_model_key_maps_both_ways():
    config = preset("tiny", **{"lora.r": 8})
    with torch.device("meta"):
        keys = SmartEditModel(config).state_dict()
    components = ("mllm.vision_tower.", "vae.", "null_text_embedding")
    seen = set()
    for key in keys:
        target = published_name(key)
        assert (target is None) == key.startswith(components), key
        if target is not None:
            kind, pub = target
            assert (kind, pub) not in seen
            seen.add((kind, pub))
            assert our_name(kind, pub, config.lora.target_modules) == key
