"""Loading real weights from local folders (smartedit.weights), on tiny random models saved in the public layouts.

Folders are written once per module with the libraries' own save functions (transformers ``save_pretrained``,
diffusers ``save_pretrained``, ``torch.save`` for the hand-written LLaVA-1.1 ``.bin`` shards) at sizes that fit the
``tiny`` preset, then read back through :func:`smartedit.weights.from_components`.
"""

import json
import os
import shutil

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from transformers import (AutoTokenizer, CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel,  # noqa: E402
                          CLIPVisionConfig, CLIPVisionModel, LlamaConfig, LlamaForCausalLM, LlavaConfig,
                          LlavaForConditionalGeneration)

from smartedit.config import ConfigError  # noqa: E402
from smartedit.weights import from_components, load_clip, load_llm, load_sd  # noqa: E402
from smartedit.model import TINY_TOKENIZER  # noqa: E402

H = 64  # LLM hidden size of the tiny preset
BASE = 1024  # tiny tokenizer vocabulary
VISION = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4, image_size=32,
              patch_size=8, projection_dim=32)
LLAMA = dict(hidden_size=H, intermediate_size=176, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
             max_position_embeddings=512, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
LLAVA11_ROWS = BASE + 3  # <im_patch>, <im_start>, <im_end>
LLAVA_HF_ROWS = BASE + 64  # <image>, <pad> and padding rows to a multiple of 64 (like llava-1.5-hf's 32064)


def _tokenizer(extra=(), special=()):
    tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
    if extra:
        tok.add_tokens(list(extra))
    if special:
        tok.add_tokens(list(special), special_tokens=True)
    return tok


def _state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- folders ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    """Plain HF LLaMA folder: sharded safetensors + index, tokenizer."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("vicuna")
    model = LlamaForCausalLM(LlamaConfig(vocab_size=BASE, **LLAMA))
    model.save_pretrained(path, max_shard_size="200KB")
    _tokenizer().save_pretrained(path)
    assert (path / "model.safetensors.index.json").is_file()
    return path, _state(model)


def _write_llava11(path, projector="linear", seed=2):
    """Original LLaVA-1.1 merge: LLaMA fields in config.json, two pytorch_model-*.bin shards with an index,
    vocabulary 32003-style (3 extra rows), model.mm_projector.*, a stale rotary inv_freq key."""
    torch.manual_seed(seed)
    llama = LlamaForCausalLM(LlamaConfig(vocab_size=LLAVA11_ROWS, **LLAMA))
    state = _state(llama)
    state["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.rand(8)
    dv = VISION["hidden_size"]
    if projector == "linear":
        state["model.mm_projector.weight"] = torch.randn(H, dv)
        state["model.mm_projector.bias"] = torch.randn(H)
    else:
        state.update({"model.mm_projector.0.weight": torch.randn(H, dv), "model.mm_projector.0.bias": torch.randn(H),
                      "model.mm_projector.2.weight": torch.randn(H, H), "model.mm_projector.2.bias": torch.randn(H)})
    keys = sorted(state)
    first = [k for k in keys if k.startswith(("model.embed_tokens", "model.layers.0."))]
    shards = {"pytorch_model-00001-of-00002.bin": {k: state[k] for k in first},
              "pytorch_model-00002-of-00002.bin": {k: state[k] for k in keys if k not in first}}
    for name, part in shards.items():
        torch.save(part, path / name)
    index = {"metadata": {"total_size": sum(v.numel() * v.element_size() for v in state.values())},
             "weight_map": {k: n for n, part in shards.items() for k in part}}
    (path / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    config = dict(LLAMA, architectures=["LlavaLlamaForCausalLM"], model_type="llava", vocab_size=LLAVA11_ROWS,
                  hidden_act="silu", rms_norm_eps=1e-6, initializer_range=0.02, use_cache=True,
                  torch_dtype="float32", transformers_version="4.28.0.dev0", mm_hidden_size=dv,
                  mm_vision_tower="openai/clip-vit-large-patch14", mm_vision_select_layer=-2,
                  mm_use_im_start_end=True, use_mm_proj=True, tune_mm_mlp_adapter=False)
    if projector != "linear":
        config["mm_projector_type"] = projector
    (path / "config.json").write_text(json.dumps(config, indent=2))
    _tokenizer(extra=["<im_patch>"], special=["<im_start>", "<im_end>"]).save_pretrained(path)
    return state


@pytest.fixture(scope="module")
def llava11_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("llava11")
    return path, _write_llava11(path)


def _llava_hf_model(seed=3):
    torch.manual_seed(seed)
    config = LlavaConfig(text_config=LlamaConfig(vocab_size=LLAVA_HF_ROWS, **LLAMA),
                         vision_config=CLIPVisionConfig(**VISION), image_token_index=BASE, vision_feature_layer=-2)
    return LlavaForConditionalGeneration(config)


@pytest.fixture(scope="module", params=["save_pretrained", "transformers5_keys"])
def llava_hf_dir(request, tmp_path_factory):
    """llava-hf folder. ``save_pretrained`` (transformers 5.23) writes the older key names (language_model.model.*,
    vision_tower.*); the second variant stores the in-memory transformers-5 names (model.language_model.*, …)."""
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("llava_hf")
    model = _llava_hf_model()
    model.save_pretrained(path)
    if request.param == "transformers5_keys":
        os.remove(path / "model.safetensors")
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path / "model.safetensors",
                  metadata={"format": "pt"})
    tok = _tokenizer(special=["<image>", "<pad>"])
    tok.pad_token = "<pad>"
    tok.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    torch.manual_seed(4)
    path = tmp_path_factory.mktemp("clip")
    text = dict(vocab_size=BASE, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                max_position_embeddings=77, projection_dim=32, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=VISION, projection_dim=32))
    model.save_pretrained(path)
    return path, model


@pytest.fixture(scope="module")
def clip_vision_dir(tmp_path_factory):
    torch.manual_seed(5)
    path = tmp_path_factory.mktemp("clip_vision")
    model = CLIPVisionModel(CLIPVisionConfig(**VISION))
    model.save_pretrained(path)
    return path, model


def _write_sd(path, in_channels=4, seed=6):
    """diffusers SD-1.5-style folder: unet/ vae/ scheduler/ text_encoder/ tokenizer/ model_index.json."""
    from diffusers import AutoencoderKL, EulerAncestralDiscreteScheduler, UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=16, in_channels=in_channels, out_channels=4,
                                down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), block_out_channels=(32, 64),
                                layers_per_block=1, cross_attention_dim=64, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(16, 32, 32),
                        layers_per_block=1, latent_channels=4, norm_num_groups=8, sample_size=64)
    scheduler = EulerAncestralDiscreteScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                                                beta_schedule="scaled_linear", prediction_type="epsilon")
    text_encoder = CLIPTextModel(CLIPTextConfig(vocab_size=BASE, hidden_size=64, intermediate_size=128,
                                                num_hidden_layers=1, num_attention_heads=4,
                                                max_position_embeddings=77, bos_token_id=1, eos_token_id=2,
                                                pad_token_id=0))
    unet.save_pretrained(path / "unet")
    vae.save_pretrained(path / "vae")
    scheduler.save_pretrained(path / "scheduler")
    text_encoder.save_pretrained(path / "text_encoder")
    _tokenizer().save_pretrained(path / "tokenizer")
    (path / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionInstructPix2PixPipeline", "_diffusers_version": "0.42.1",
        "scheduler": ["diffusers", "EulerAncestralDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"], "safety_checker": [None, None], "feature_extractor": [None, None]}))
    return dict(unet=_state(unet), vae=_state(vae), text_encoder=text_encoder.eval())


@pytest.fixture(scope="module")
def sd_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd15")
    return path, _write_sd(path)


@pytest.fixture(scope="module")
def llava11_model(llava11_dir, clip_dir, sd_dir):
    return from_components(llm=llava11_dir[0], clip=clip_dir[0], sd=sd_dir[0], preset="tiny")


def _null_text(text_encoder):
    tok = _tokenizer()
    ids = tok("", padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return text_encoder(input_ids=ids).last_hidden_state


# ---- assembled models ------------------------------------------------------------------------------------

def test_llava11_weights_land_in_place(llava11_model, llava11_dir, clip_dir, sd_dir):
    model, state = llava11_model, llava11_dir[1]
    cfg = model.config
    assert cfg.mllm.vocab_size == BASE and cfg.mllm.projector == "linear" and cfg.vision.select_layer == -2
    assert cfg.qformer.hidden_size == cfg.unet.cross_attention_dim == 64
    llm = model.mllm.llm.state_dict()
    for key in ("model.layers.1.mlp.up_proj.weight", "model.layers.0.self_attn.q_proj.weight", "model.norm.weight"):
        torch.testing.assert_close(llm[key], state[key], rtol=0, atol=0)
    # LLaVA's rows 1024..1026 (32000..32002 at full size) are dropped; SmartEdit's 35 rows follow the base rows
    for key in ("model.embed_tokens.weight", "lm_head.weight"):
        assert llm[key].shape == (BASE + 35, H)
        torch.testing.assert_close(llm[key][:BASE], state[key][:BASE], rtol=0, atol=0)
        mean = state[key][:BASE].mean(dim=0, keepdim=True).expand(35, -1)
        torch.testing.assert_close(llm[key][BASE:], mean)
        assert not torch.allclose(llm[key][BASE:BASE + 3], state[key][BASE:])
    torch.testing.assert_close(model.mllm.projector.weight, state["model.mm_projector.weight"], rtol=0, atol=0)
    torch.testing.assert_close(model.mllm.projector.bias, state["model.mm_projector.bias"], rtol=0, atol=0)
    clip_vision = clip_dir[1].vision_model.state_dict()
    tower = model.mllm.vision_tower.state_dict()
    assert len(tower) == len(clip_vision)
    for key, value in clip_vision.items():
        torch.testing.assert_close(tower[key.removeprefix("vision_model.")], value, rtol=0, atol=0)
    # tokenizer: LLaVA's added tokens removed, SmartEdit's appended at 1024..1058
    tok = model.tokenizer
    assert len(tok) == BASE + 35 and tok.convert_tokens_to_ids("<img>") == BASE
    assert tok.convert_tokens_to_ids("<img_31>") == BASE + 34 and "<im_patch>" not in tok.get_vocab()


def test_unet_widened_vae_and_null_text(llava11_model, sd_dir):
    model, original = llava11_model, sd_dir[1]
    conv = model.unet.conv_in
    assert conv.in_channels == 8 and model.unet.config.in_channels == 8
    torch.testing.assert_close(conv.weight[:, :4], original["unet"]["conv_in.weight"], rtol=0, atol=0)
    assert torch.count_nonzero(conv.weight[:, 4:]) == 0
    torch.testing.assert_close(conv.bias, original["unet"]["conv_in.bias"], rtol=0, atol=0)
    unet = model.unet.state_dict()
    for key, value in original["unet"].items():
        if not key.startswith("conv_in."):
            torch.testing.assert_close(unet[key], value, rtol=0, atol=0)
    vae = model.vae.state_dict()
    assert set(vae) == set(original["vae"])
    for key, value in original["vae"].items():
        torch.testing.assert_close(vae[key], value, rtol=0, atol=0)
    assert model.null_text_embedding.shape == (1, 77, 64)
    torch.testing.assert_close(model.null_text_embedding, _null_text(original["text_encoder"]))
    assert model.config.scheduler.beta_schedule == "scaled_linear" and model.config.scheduler.beta_end == 0.012


def test_assembled_model_encodes_condition(llava11_model):
    model = llava11_model
    with torch.no_grad():
        cond = model.encode_condition(torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
                                      "remove the smaller cup")
    assert cond.context.shape == (1, 77, 64) and torch.isfinite(cond.context).all()
    assert cond.spatial.shape == (1, 32, 16, 16) and cond.source_latent.shape == (1, 4, 16, 16)
    assert all(p.dtype == torch.float32 and not p.is_meta for p in model.parameters())


def test_assembled_model_round_trips(llava11_model, tmp_path):
    from smartedit.model import SmartEditModel

    llava11_model.save_pretrained(tmp_path / "smartedit")
    back = SmartEditModel.from_pretrained(tmp_path / "smartedit")
    assert back.config == llava11_model.config and len(back.tokenizer) == len(llava11_model.tokenizer)
    expected = llava11_model.state_dict()
    for key, value in back.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0)


def test_llava11_mlp_projector(tmp_path):
    state = _write_llava11(tmp_path, projector="mlp2x_gelu", seed=7)
    loaded = load_llm(tmp_path)
    assert loaded.layout == "llava-1.1" and loaded.mllm["projector"] == "mlp2x_gelu"
    assert set(loaded.projector_state) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    torch.testing.assert_close(loaded.projector_state["2.weight"], state["model.mm_projector.2.weight"])
    assert loaded.llm_state["lm_head.weight"].shape == (BASE, H)
    assert not any("inv_freq" in k for k in loaded.llm_state)


def test_llava_hf_brings_its_vision_tower(llava_hf_dir, sd_dir):
    path, original = llava_hf_dir
    loaded = load_llm(path)
    assert loaded.layout == "llava-hf" and loaded.mllm["projector"] == "mlp2x_gelu"
    assert len(loaded.tokenizer) == BASE and loaded.mllm["pad_token_id"] == 0  # <pad> (id 1025) dropped → <unk>
    model = from_components(loaded, sd=sd_dir[0], preset="tiny")
    src = original.state_dict()
    proj = model.mllm.projector
    torch.testing.assert_close(proj[0].weight, src["model.multi_modal_projector.linear_1.weight"], rtol=0, atol=0)
    torch.testing.assert_close(proj[2].bias, src["model.multi_modal_projector.linear_2.bias"], rtol=0, atol=0)
    tower = model.mllm.vision_tower.state_dict()
    for key, value in src.items():
        if key.startswith("model.vision_tower."):
            bare = key.removeprefix("model.vision_tower.").removeprefix("vision_model.")
            torch.testing.assert_close(tower[bare], value, rtol=0, atol=0)
    llm = model.mllm.llm.state_dict()
    torch.testing.assert_close(llm["model.layers.1.self_attn.o_proj.weight"],
                               src["model.language_model.layers.1.self_attn.o_proj.weight"], rtol=0, atol=0)
    # 1088 rows in the file (image/pad tokens + padding): the first 1024 are kept
    torch.testing.assert_close(llm["model.embed_tokens.weight"][:BASE],
                               src["model.language_model.embed_tokens.weight"][:BASE], rtol=0, atol=0)
    torch.testing.assert_close(llm["lm_head.weight"][:BASE], src["lm_head.weight"][:BASE], rtol=0, atol=0)
    assert model.config.vision.hidden_size == 64 and model.tokenizer.convert_tokens_to_ids("<img>") == BASE


def test_plain_llama_with_clip_vision_only_folder(llama_dir, clip_vision_dir, sd_dir):
    path, state = llama_dir
    loaded = load_llm(path)
    assert loaded.layout == "llama" and loaded.projector_state is None and loaded.vision_state is None
    clip = load_clip(clip_vision_dir[0])
    model = from_components(loaded, clip=clip, sd=sd_dir[0], preset="tiny")
    llm = model.mllm.llm.state_dict()
    for key, value in state.items():
        got = llm[key][:BASE] if key in ("model.embed_tokens.weight", "lm_head.weight") else llm[key]
        torch.testing.assert_close(got, value, rtol=0, atol=0)
    tower = model.mllm.vision_tower.state_dict()
    for key, value in clip_vision_dir[1].state_dict().items():
        torch.testing.assert_close(tower[key], value, rtol=0, atol=0)
    assert model.mllm.projector.weight.shape == (H, 64)  # freshly initialised (no projector in a plain folder)


def test_instructpix2pix_unet_is_kept(tmp_path):
    original = _write_sd(tmp_path, in_channels=8, seed=8)
    sd = load_sd(tmp_path)
    assert sd.original_in_channels == 8 and sd.unet.conv_in.in_channels == 8
    torch.testing.assert_close(sd.unet.conv_in.weight, original["unet"]["conv_in.weight"], rtol=0, atol=0)


# ---- errors ----------------------------------------------------------------------------------------------

def test_missing_folders_name_the_layout(tmp_path, sd_dir):
    with pytest.raises(FileNotFoundError, match=r"does not exist.*config\.json"):
        load_llm(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match=r"CLIP.*vision_model"):
        load_clip(tmp_path / "nope")
    broken = tmp_path / "sd"
    shutil.copytree(sd_dir[0], broken)
    shutil.rmtree(broken / "vae")
    os.remove(broken / "scheduler" / "scheduler_config.json")
    with pytest.raises(FileNotFoundError, match=r"lacks vae/, scheduler/scheduler_config\.json.*unet/"):
        load_sd(broken)
    empty = tmp_path / "empty_llm"
    empty.mkdir()
    (empty / "config.json").write_text(json.dumps(dict(LLAMA, model_type="llama", vocab_size=BASE)))
    _tokenizer().save_pretrained(empty)
    with pytest.raises(FileNotFoundError, match=r"no weights in .*pytorch_model\.bin"):
        load_llm(empty)


def test_lfs_pointer_is_named(tmp_path, llava11_dir):
    broken = tmp_path / "llava"
    shutil.copytree(llava11_dir[0], broken)
    (broken / "pytorch_model-00002-of-00002.bin").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 13476839424\n")
    with pytest.raises(ValueError, match=r"Git LFS pointer(.|\n)*pytorch_model-00002-of-00002\.bin(.|\n)*git lfs"):
        load_llm(broken)


def test_lfs_pointers_only_matter_when_read(tmp_path, clip_dir, sd_dir):
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1710671599\n"
    clip = tmp_path / "clip"
    shutil.copytree(clip_dir[0], clip)
    (clip / "tf_model.h5").write_text(pointer)  # not fetched, not needed
    assert load_clip(clip).vision["hidden_size"] == 64
    sd = tmp_path / "sd"
    shutil.copytree(sd_dir[0], sd)
    (sd / "unet" / "diffusion_pytorch_model.safetensors").write_text(pointer)
    with pytest.raises(ValueError, match=r"Git LFS pointer(.|\n)*unet/diffusion_pytorch_model\.safetensors"):
        load_sd(sd)


def test_bad_keys_are_listed_with_their_file(tmp_path, llava11_dir):
    broken = tmp_path / "llava"
    shutil.copytree(llava11_dir[0], broken)
    shard = broken / "pytorch_model-00001-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["model.layers.0.mlp.up_proj.weight"] = state["model.layers.0.mlp.up_proj.weight"].T.contiguous()
    del state["model.layers.0.input_layernorm.weight"]
    state["model.layers.0.extra.weight"] = torch.zeros(3)
    torch.save(state, shard)
    with pytest.raises(ValueError) as info:
        load_llm(broken)
    msg = str(info.value)
    assert "3 problem(s)" in msg
    assert "wrong shape: llm: model.layers.0.mlp.up_proj.weight from pytorch_model-00001-of-00002.bin" in msg
    assert "(64, 176), expected (176, 64)" in msg
    assert "missing: llm: model.layers.0.input_layernorm.weight" in msg
    assert "unexpected: llm: model.layers.0.extra.weight (from pytorch_model-00001-of-00002.bin)" in msg


class _NotATensor:
    pass


def test_pickles_beyond_tensors_are_refused(tmp_path, llava11_dir):
    broken = tmp_path / "llava"
    shutil.copytree(llava11_dir[0], broken)
    shard = broken / "pytorch_model-00002-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    state["evil"] = _NotATensor()
    torch.save(state, shard)
    with pytest.raises(ValueError, match=r"pytorch_model-00002-of-00002\.bin holds more than tensors"):
        load_llm(broken)


def test_components_that_do_not_fit(llava11_dir, clip_dir, sd_dir):
    llm = load_llm(llava11_dir[0])
    sd = load_sd(sd_dir[0])
    with pytest.raises(ValueError, match=r"no vision tower(.|\n)*clip=(.|\n)*openai/clip-vit-large-patch14"):
        from_components(llm, sd=sd, preset="tiny")
    with pytest.raises(ConfigError, match=r"qformer\.hidden_size \(768\) must equal unet\.cross_attention_dim"):
        from_components(llm, clip=clip_dir[0], sd=sd)  # 7b Q-Former on a tiny UNet
    with pytest.raises(ValueError, match=r"model_type 'llava'.*not a CLIP model"):
        load_clip(llava11_dir[0])


def test_assemble_command_writes_a_loadable_model(llava11_dir, clip_dir, sd_dir, tmp_path, capsys):
    from smartedit.cli import main
    from smartedit.model import SmartEditModel

    out = tmp_path / "assembled"
    assert main(["assemble", "--llm", str(llava11_dir[0]), "--clip", str(clip_dir[0]), "--sd", str(sd_dir[0]),
                 "--preset", "tiny", "--out", str(out)]) == 0
    model = SmartEditModel.from_pretrained(out)
    assert model.config.mllm.vocab_size == 1024 and (out / "tokenizer").is_dir()
    assert str(out) in capsys.readouterr().out
