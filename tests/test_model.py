"""The SmartEdit model at the tiny preset: forward/backward, what trains, zero-init BIM, persistence, parity."""

import copy

import pytest
import torch
from transformers import CLIPVisionModel, LlamaForCausalLM

from smartedit.config import ConfigError, preset
from smartedit.model import SmartEditModel
from smartedit.prompt import IGNORE_INDEX
from smartedit.stages import STAGES, configure_stage, optimizer_param_groups, trainable_counts


def test_forward_backward_tiny(tiny_model, make_batch):
    model = tiny_model.train()
    out = model(make_batch(model), generator=torch.Generator().manual_seed(0))
    assert set(out) == {"lm_loss", "diffusion_loss", "loss"}
    for v in out.values():
        assert v.ndim == 0 and torch.isfinite(v)
    torch.testing.assert_close(out["loss"], out["lm_loss"] + out["diffusion_loss"])
    assert out["lm_loss"] > 0 and out["diffusion_loss"] > 0
    out["loss"].backward()
    assert model.qformer.query_tokens.grad is not None
    assert model.unet.conv_in.weight.grad is not None


def test_chat_rows_have_no_diffusion_loss(tiny_model, make_batch):
    batch = make_batch(tiny_model, edit=False)
    out = tiny_model(batch)
    assert out["diffusion_loss"].item() == 0.0 and out["lm_loss"] > 0


def test_condition_shapes(tiny_model):
    cfg = tiny_model.config
    cond = tiny_model.encode_condition(torch.rand(2, 3, 64, 64), ["make it red", "remove the star"])
    assert cond.context.shape == (2, 77, cfg.qformer.hidden_size)
    assert cond.spatial.shape == (2, cfg.unet.block_out_channels[0], 16, 16)
    assert cond.source_latent.shape == (2, 4, 16, 16)
    assert cond.mask_latent is None


def _nonzero_grads(model):
    return {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}


@pytest.mark.parametrize("stage", STAGES)
def test_only_stage_parameters_get_gradients(stage, tiny_config, make_batch):
    model = SmartEditModel.from_config(tiny_config).train()
    trainable_ids = {id(p) for p in configure_stage(model, stage)}
    trainable = {n for n, p in model.named_parameters() if id(p) in trainable_ids}
    out = model(make_batch(model), generator=torch.Generator().manual_seed(1))
    # (at init only the BIM's zero heads get gradients: everything behind them is multiplied by zero)
    out["loss"].backward()
    got = _nonzero_grads(model)
    assert got <= trainable, f"unexpected gradients: {sorted(got - trainable)[:5]}"
    frozen_with_grad = [n for n, p in model.named_parameters() if id(p) not in trainable_ids and p.grad is not None]
    assert not frozen_with_grad
    prefixes = {"stage1": ("qformer.", "mllm.llm.model.embed_tokens", "mllm.llm.lm_head"),
                "stage2a": ("unet.", "lora_"), "stage2b": ("bim.text_out", "bim.image_out")}[stage]
    for prefix in prefixes:
        assert any(prefix in n for n in got), f"{prefix} got no gradient in {stage}"
    assert not any(n.startswith(("mllm.vision_tower", "mllm.projector", "vae.")) for n in trainable)
    if stage != "stage2b":
        assert not any(n.startswith("bim.") for n in trainable)
    base = model.config.mllm.vocab_size
    emb = model.mllm.llm.get_input_embeddings().weight
    assert emb.grad[:base].abs().sum() == 0 and emb.grad[base:].abs().sum() > 0


def test_new_token_rows_train_and_base_rows_do_not(tiny_config, make_batch):
    model = SmartEditModel.from_config(tiny_config).train()
    opt = torch.optim.AdamW(optimizer_param_groups(model, "stage2a", weight_decay=0.1), lr=1e-2)
    emb, head = model.mllm._token_matrices()
    before = [emb.detach().clone(), head.detach().clone()]
    base = model.config.mllm.vocab_size
    torch.testing.assert_close(before[0][base:], before[0][:base].mean(0, keepdim=True).expand(35, -1))
    for step in range(2):
        opt.zero_grad()
        model(make_batch(model, seed=step))["loss"].backward()
        opt.step()
    for old, new in zip(before, (emb, head)):
        assert torch.equal(old[:base], new[:base])
        assert not torch.equal(old[base:], new[base:])


def test_also_train_token_rows_trains_the_base_vocabulary_too(tiny_config, make_batch):
    """``also_train: ["token_rows"]`` (a recipe that teaches the LLM words it never said): every row of both token
    matrices trains, without weight decay; the next stage's configuration masks the base rows again."""
    model = SmartEditModel.from_config(tiny_config).train()
    opt = torch.optim.AdamW(optimizer_param_groups(model, "stage2a", weight_decay=0.1, also_train=["token_rows"]),
                            lr=1e-2)
    emb, head = model.mllm._token_matrices()
    before = [emb.detach().clone(), head.detach().clone()]
    base = model.config.mllm.vocab_size
    opt.zero_grad()
    model(make_batch(model, seed=0))["loss"].backward()
    opt.step()
    assert not torch.equal(before[1][:base], head[:base]) and not torch.equal(before[1][base:], head[base:])
    counts = trainable_counts(model, "stage2a", also_train=["token_rows"])
    assert counts["token_rows"] + counts["new_token_rows"] == emb.numel() + head.numel()
    configure_stage(model, "stage2a")
    opt = torch.optim.AdamW(optimizer_param_groups(model, "stage2a"), lr=1e-2)
    moved = head.detach().clone()
    opt.zero_grad()
    model(make_batch(model, seed=1))["loss"].backward()
    opt.step()
    assert torch.equal(moved[:base], head[:base])


def test_zero_init_bim_equals_no_bim_model(tiny_config, make_batch):
    with_bim = SmartEditModel.from_config(tiny_config).eval()
    no_bim = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False})).eval()
    state = {k: v for k, v in with_bim.state_dict().items() if not k.startswith("bim.")}
    no_bim.load_state_dict(state, strict=True)
    image = torch.rand(2, 3, 64, 64)
    a = with_bim.encode_condition(image, ["make the circle blue", "remove the square"])
    b = no_bim.encode_condition(image, ["make the circle blue", "remove the square"])
    assert torch.equal(a.context, b.context)
    assert a.spatial is not None and torch.count_nonzero(a.spatial) == 0 and b.spatial is None
    x = torch.randn(2, 8, 16, 16)
    t = torch.tensor([10, 500])
    assert torch.equal(with_bim.predict(x, t, a.context, a.spatial), no_bim.predict(x, t, b.context, None))
    batch = make_batch(with_bim)
    la = with_bim(batch, generator=torch.Generator().manual_seed(3))
    lb = no_bim(batch, generator=torch.Generator().manual_seed(3))
    assert torch.equal(la["loss"], lb["loss"])


def test_bim_becomes_active_once_heads_train(tiny_model):
    with torch.no_grad():
        tiny_model.bim.text_out.weight.normal_()
        tiny_model.bim.image_out.weight.normal_()
    cond = tiny_model.encode_condition(torch.rand(1, 3, 64, 64), ["make it red"])
    assert torch.count_nonzero(cond.spatial) > 0
    base = tiny_model.qformer(tiny_model.mllm(**{k: v for k, v in tiny_model.tokenize_edit(["make it red"]).items()
                                                 if k != "labels"},
                                              pixel_values=tiny_model.mllm.preprocess_images(
                                                  torch.rand(1, 3, 64, 64))).img_hidden)
    assert not torch.allclose(cond.context, base)


@pytest.mark.parametrize("shard", [None, "200KB"])
def test_save_load_round_trip_bit_exact(tiny_model, tmp_path, shard):
    tiny_model.add_lora()
    with torch.no_grad():
        tiny_model.null_text_embedding.normal_()
        tiny_model.bim.image_out.weight.normal_()
    kwargs = {} if shard is None else {"max_shard_size": shard}
    tiny_model.save_pretrained(tmp_path, **kwargs)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert "config.json" in files and "tokenizer" in files
    assert ("model.safetensors.index.json" in files) == (shard is not None)
    loaded = SmartEditModel.from_pretrained(tmp_path)
    assert loaded.config == tiny_model.config and loaded.config.lora.r == 8
    a, b = tiny_model.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k
    image = torch.rand(1, 3, 64, 64)
    tiny_model.eval()
    ca = tiny_model.encode_condition(image, ["remove the star"])
    cb = loaded.encode_condition(image, ["remove the star"])
    assert torch.equal(ca.context, cb.context) and torch.equal(ca.spatial, cb.spatial)
    assert loaded.tokenizer.convert_tokens_to_ids("<img_0>") == tiny_model.config.mllm.vocab_size + 3


def test_from_pretrained_errors(tiny_model, tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        SmartEditModel.from_pretrained(tmp_path / "nope")
    tiny_model.save_pretrained(tmp_path)
    cfg = (tmp_path / "config.json").read_text().replace('"num_queries": 77', '"num_queries": 70')
    (tmp_path / "config.json").write_text(cfg)
    with pytest.raises(ValueError, match="wrong shape: qformer.query_tokens"):
        SmartEditModel.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no weights"):
        SmartEditModel.from_pretrained(tmp_path)


def test_llm_hidden_states_match_transformers_llama(tiny_model):
    """The states fed to the Q-Former are exactly what transformers' LLaMA gives for the same sequence."""
    model = tiny_model.eval()
    mllm = model.mllm
    image = torch.rand(2, 3, 64, 64)
    batch = model.tokenize_edit(["remove the smaller cup", "make the sky blue please"])
    out = mllm(batch["input_ids"], batch["attention_mask"], pixel_values=mllm.preprocess_images(image))

    llama = LlamaForCausalLM(mllm.llm.config).eval()
    llama.load_state_dict(mllm.llm.state_dict())
    vision = CLIPVisionModel(mllm.vision_tower.config).eval()
    vision.load_state_dict(mllm.vision_tower.state_dict())
    pixel = mllm.preprocess_images(image)
    patches = vision(pixel, output_hidden_states=True).hidden_states[-2][:, 1:]
    embeds = llama.get_input_embeddings()(batch["input_ids"]).clone()
    ids = mllm.token_ids
    for b in range(2):
        pos = (batch["input_ids"][b] == ids.image).nonzero().squeeze(1)
        embeds[b, pos] = mllm.projector(patches[b])
    hidden = llama(inputs_embeds=embeds, attention_mask=batch["attention_mask"],
                   output_hidden_states=True).hidden_states[-1]
    expected = torch.stack([hidden[b][(batch["input_ids"][b] >= ids.img0)] for b in range(2)])
    assert expected.shape == (2, 32, mllm.config.hidden_size)
    torch.testing.assert_close(out.img_hidden, expected, rtol=0, atol=1e-6)
    # the LM loss is the CE over the answer tokens only
    logits = llama(inputs_embeds=embeds, attention_mask=batch["attention_mask"]).logits
    labels = batch["labels"]
    ce = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                           ignore_index=IGNORE_INDEX)
    out2 = mllm(batch["input_ids"], batch["attention_mask"], pixel_values=pixel, labels=labels)
    torch.testing.assert_close(out2.lm_loss, ce, rtol=1e-5, atol=1e-6)


def test_prompt_labels_mask_the_prompt(tiny_model):
    batch = tiny_model.tokenize_edit(["remove the star"])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    first_answer = (labels != IGNORE_INDEX).nonzero()[0].item()
    assert (ids[:first_answer] == tiny_model.mllm.token_ids.image).sum() == tiny_model.config.vision.num_patches
    img_tokens = ids[first_answer:]
    assert (img_tokens >= tiny_model.mllm.token_ids.img0).sum() == 32
    assert labels[-1] == tiny_model.tokenizer.eos_token_id


def test_generation_returns_reply_and_states(tiny_model):
    cond = tiny_model.encode_condition(torch.rand(1, 3, 64, 64), ["remove the star"], generate=True)
    assert cond.replies is not None and cond.replies[0].endswith("<img_31>")
    assert cond.context.shape == (1, 77, 64)


def test_a_model_that_writes_its_reply_decodes_it_by_default(tiny_config, tmp_path):
    """``mllm.writes_reply``: the condition decodes the reply unless told not to, and the setting is saved with the
    weights; a model without it teacher-forces the stock answer unless asked to generate."""
    from smartedit.config import SmartEditConfig

    data = tiny_config.to_dict()
    data["mllm"] = {**data["mllm"], "writes_reply": True}
    model = SmartEditModel.from_config(SmartEditConfig.from_dict(data), seed=0).eval()
    image = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        cond = model.encode_condition(image, ["remove the star"], max_new_tokens=4)
        assert cond.replies is not None and cond.replies[0].endswith("<img_31>")
        assert model.encode_condition(image, ["remove the star"], generate=False).replies is None
    model.save_pretrained(tmp_path / "m")
    assert SmartEditModel.from_pretrained(tmp_path / "m").config.mllm.writes_reply is True
    with pytest.raises(ConfigError, match="writes_reply must be true or false"):
        SmartEditConfig.from_dict({**data, "mllm": {**data["mllm"], "writes_reply": "yes"}})


def test_lora_injection_keeps_outputs(tiny_model):
    model = tiny_model.eval()
    image = torch.rand(1, 3, 64, 64)
    before = model.encode_condition(image, ["make it green"]).context
    model.add_lora()
    assert model.config.lora.r == 8 and len(model.mllm.lora_parameters()) == 2 * 2 * 2
    after = model.encode_condition(image, ["make it green"]).context
    assert torch.equal(before, after)


def test_mask_channels(tiny_config):
    masked = SmartEditModel.from_config(preset("tiny", **{"unet.mask_channels": 4})).eval()
    assert masked.unet.conv_in.in_channels == 12
    image = torch.rand(1, 3, 64, 64)
    mask = torch.zeros(1, 1, 64, 64)
    mask[..., 10:30, 10:30] = 1
    cond = masked.encode_condition(image, ["make it red"], mask=mask)
    assert cond.mask_latent.shape == (1, 4, 16, 16)
    blank = masked.encode_condition(image, ["make it red"]).mask_latent
    assert not torch.equal(blank, cond.mask_latent)
    with pytest.raises(ValueError, match="does not match"):
        masked.encode_condition(image, ["make it red"], mask=torch.zeros(1, 1, 32, 32))
    plain = SmartEditModel.from_config(tiny_config)
    with pytest.raises(ValueError, match="no region-mask channels"):
        plain.encode_condition(image, ["make it red"], mask=mask)


def test_bad_condition_inputs(tiny_model):
    with pytest.raises(ValueError, match="non-empty"):
        tiny_model.encode_condition(torch.rand(1, 3, 64, 64), ["  "])
    with pytest.raises(ValueError, match="2 images but 1"):
        tiny_model.encode_condition(torch.rand(2, 3, 64, 64), ["x"])
    with pytest.raises(ValueError, match=r"\[B,3,H,W\]"):
        tiny_model.encode_condition(torch.rand(1, 64, 64), ["x"])


def test_trainable_counts_match_real_parameters(tiny_config):
    for stage in STAGES:
        model = SmartEditModel.from_config(tiny_config)
        counts = trainable_counts(model, stage)
        params = configure_stage(model, stage)
        token_ids = {id(w) for w in model.mllm._token_matrices()}
        real = sum(p.numel() for p in params if id(p) not in token_ids)
        assert sum(v for k, v in counts.items() if k != "new_token_rows") == real
        assert counts["new_token_rows"] == 2 * 35 * model.config.mllm.hidden_size


def test_also_train_adds_the_llm_layers_to_a_stage(tiny_config):
    model = SmartEditModel.from_config(tiny_config)
    plain = {id(p) for p in configure_stage(model, "stage1")}
    params = configure_stage(model, "stage1", also_train=["llm"])
    layers = {id(p) for p in model.mllm.llm.model.layers.parameters()}
    assert layers <= {id(p) for p in params} and not layers & plain
    assert {id(p) for p in params} == plain | layers
    counts = trainable_counts(model, "stage1", also_train=["llm"])
    assert counts["llm"] == sum(p.numel() for p in model.mllm.llm.model.layers.parameters())
    assert "llm" not in trainable_counts(model, "stage1")
    with pytest.raises(ValueError, match="unknown parts"):
        configure_stage(model, "stage1", also_train=["vision"])


def test_model_deepcopy_and_device_move(tiny_model):
    clone = copy.deepcopy(tiny_model)
    assert torch.equal(clone.null_text_embedding, tiny_model.null_text_embedding)


def test_mlp2x_gelu_projector_variant():
    model = SmartEditModel.from_config(preset("tiny", **{"mllm.projector": "mlp2x_gelu"})).eval()
    assert set(model.mllm.projector.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}
    cond = model.encode_condition(torch.rand(1, 3, 64, 64), ["make it red"])
    assert cond.context.shape == (1, 77, 64)
