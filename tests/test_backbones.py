"""Other MLLMs and generators (smartedit.backbones): tokenizers as published, Qwen2.5-VL hidden states against
transformers, the SDXL InstructPix2Pix UNet against diffusers' pipeline, preset sizes, and stage 1 → 2a → 2b → edit
on tiny random models saved in the published layouts."""

import json
import os
import re

import pytest
import torch

from smartedit.prompt import (EDIT_ANSWERS, EDIT_TEMPLATES, SYSTEM_PROMPT, add_smartedit_tokens, edit_conversation,
                              new_tokens, tokenize_conversation)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    pass


# ---- LLaVA-1.1 / Vicuna: SentencePiece tokenizer.model only -------------------------------------------------

def _llama_sentencepiece_folder(folder):
    """A small SentencePiece BPE model trained with LLaMA's settings, saved as LLaVA-1.1 / Vicuna ship theirs."""
    import sentencepiece as spm

    corpus = os.path.join(folder, "corpus.txt")
    lines = [SYSTEM_PROMPT, "USER: Please edit the image following this instruction: remove the red circle "
             "ASSISTANT: Sure, here is the edited image"] * 50 + ["the quick brown fox jumps over 1234 dogs."] * 20
    with open(corpus, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    spm.SentencePieceTrainer.train(
        input=corpus, model_prefix=os.path.join(folder, "tokenizer"), vocab_size=400, model_type="bpe",
        byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, split_digits=True, add_dummy_prefix=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False, allow_whitespace_only_pieces=True,
        character_coverage=0.99995, minloglevel=2)
    os.remove(corpus)
    os.remove(os.path.join(folder, "tokenizer.vocab"))

    def token(content):
        return {"__type": "AddedToken", "content": content, "lstrip": False, "normalized": True, "rstrip": False,
                "single_word": False}
    with open(os.path.join(folder, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": token("<s>"),
                   "clean_up_tokenization_spaces": False, "eos_token": token("</s>"), "model_max_length": 2048,
                   "pad_token": None, "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
                   "unk_token": token("<unk>")}, f)
    with open(os.path.join(folder, "special_tokens_map.json"), "w") as f:
        json.dump({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, f)
    return spm.SentencePieceProcessor(model_file=os.path.join(folder, "tokenizer.model"))


def _slow_llama_ids(sp, text, added, bos):
    """What transformers 4.28's slow LlamaTokenizer (the reference's) gives: split at added tokens, whitespace next
    to them stripped, each text piece SentencePiece-encoded on its own."""
    pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
    pieces, pos = [], 0
    for m in pattern.finditer(text):
        pieces += [text[pos:m.start()], m.group()]
        pos = m.end()
    pieces.append(text[pos:])
    for i, piece in enumerate(pieces):
        if piece in added:
            if i > 0 and pieces[i - 1] not in added:
                pieces[i - 1] = pieces[i - 1].rstrip()
            if i + 1 < len(pieces) and pieces[i + 1] not in added:
                pieces[i + 1] = pieces[i + 1].lstrip()
    ids = [sp.bos_id()] if bos else []
    for piece in pieces:
        ids += [added[piece]] if piece in added else (sp.encode(piece) if piece else [])
    return ids


def test_llama_sentencepiece_tokenizer_gives_the_reference_ids(tmp_path):
    from smartedit.weights.files import read_tokenizer

    sp = _llama_sentencepiece_folder(str(tmp_path))
    assert sorted(os.listdir(tmp_path)) == ["special_tokens_map.json", "tokenizer.model", "tokenizer_config.json"]
    assert [sp.id_to_piece(i) for i in range(3)] == ["<unk>", "<s>", "</s>"]
    tok = read_tokenizer(str(tmp_path), "LLM")  # what load_llm / smartedit assemble use
    base = sp.get_piece_size()
    ids = add_smartedit_tokens(tok, 32, base)
    names = new_tokens(32)
    assert [tok.convert_tokens_to_ids(n) for n in names] == list(range(base, base + 35))  # 32000..32034 at 7B
    assert (ids.image, ids.im_start, ids.im_end, ids.img0) == (base, base + 1, base + 2, base + 3)
    added = {n: base + i for i, n in enumerate(names)}
    for k, instruction in enumerate(["remove the red circle", "make the sky blue, please!", "add 3 cats  here"]):
        prompt, reply = edit_conversation(instruction, 4, 32, template=k % len(EDIT_TEMPLATES),
                                          answer=k % len(EDIT_ANSWERS))
        got = tokenize_conversation(tok, [(prompt, reply)])["input_ids"].tolist()
        want = _slow_llama_ids(sp, prompt, added, True) + _slow_llama_ids(sp, reply, added, False) + [sp.eos_id()]
        assert got == want, instruction
    # plain text (no added tokens) is SentencePiece's own encoding
    text = "the quick brown fox jumps over 1234 dogs. Ünï ☃"
    assert tok(text)["input_ids"] == [1] + sp.encode(text)
    # saved with a model and loaded again: the same ids
    tok.save_pretrained(str(tmp_path / "saved"))
    from smartedit.model import load_tokenizer

    again = load_tokenizer(str(tmp_path / "saved"))
    prompt, reply = edit_conversation("remove the red circle", 4, 32)
    assert tokenize_conversation(again, [(prompt, reply)])["input_ids"].tolist() == \
        tokenize_conversation(tok, [(prompt, reply)])["input_ids"].tolist()


# ---- Qwen2.5-VL -------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    from smartedit.backbones.testing import build_tiny_qwen_vl

    return build_tiny_qwen_vl(str(tmp_path_factory.mktemp("qwen")))


@pytest.fixture(scope="module")
def qwen_model(qwen_dir):
    from smartedit.backbones.assemble import from_qwen_vl

    return from_qwen_vl(qwen_dir, preset="tiny")


def test_qwen_tokenizer_and_chat_template(qwen_model, qwen_dir):
    from transformers import AutoTokenizer

    tok = qwen_model.tokenizer
    base = len(AutoTokenizer.from_pretrained(qwen_dir))
    assert qwen_model.config.mllm.vocab_size == base
    assert [tok.convert_tokens_to_ids(n) for n in new_tokens(32)] == list(range(base, base + 35))
    segments = qwen_model.chat_format().edit("remove the red circle")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": EDIT_TEMPLATES[0].format(
        instruction="remove the red circle")}]}, {"role": "assistant", "content": segments[0][1]}]
    rendered = tok.apply_chat_template(messages, tokenize=False)  # the template's own text of the conversation
    rendered = rendered.replace("<|image_pad|>", "<|image_pad|>" * qwen_model.mllm.num_placeholders)
    ours = tokenize_conversation(tok, segments)["input_ids"].tolist()
    assert ours == tok(rendered.rstrip("\n"), add_special_tokens=False)["input_ids"]
    assert tok.decode(ours).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert ours.count(tok.convert_tokens_to_ids("<|image_pad|>")) == qwen_model.mllm.num_placeholders == 16


def test_qwen_patches_are_the_image_processors(qwen_model, qwen_dir):
    from transformers import AutoImageProcessor

    images = torch.rand(2, 3, 32, 32)
    ours = qwen_model.mllm.preprocess_images(images)  # [B, P, 3·T·p·p]
    proc = AutoImageProcessor.from_pretrained(qwen_dir)
    ref = proc(images=list(images), do_resize=False, do_rescale=False, return_tensors="pt")
    assert ref["image_grid_thw"].tolist() == [[1, 8, 8]] * 2
    torch.testing.assert_close(ours.reshape(-1, ours.shape[-1]), ref["pixel_values"].float(), atol=1e-5, rtol=0)


def test_qwen_states_fed_to_the_qformer_equal_transformers(qwen_model, qwen_dir):
    """The <img_i> hidden states SmartEdit gives the Q-Former = transformers' Qwen2_5_VLForConditionalGeneration
    (loaded from the same folder) on the same sequence, image included; the merged visual tokens too."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    ref = Qwen2_5_VLForConditionalGeneration.from_pretrained(qwen_dir).eval()
    mllm = qwen_model.mllm
    base = qwen_model.config.mllm.vocab_size
    ref.resize_token_embeddings(qwen_model.config.mllm.full_vocab_size)
    with torch.no_grad():  # the reference gets SmartEdit's 35 new rows too (mean-initialised on our side)
        ref.get_input_embeddings().weight[base:] = mllm.llm.get_input_embeddings().weight[base:]
    images = torch.rand(2, 3, 32, 32)
    batch = qwen_model.tokenize_edit(["remove the red circle", "make the square blue please"])
    with torch.no_grad():
        features = mllm.encode_images(mllm.preprocess_images(images))
        assert features.shape == (2, 64, 32)  # the BIM's [B, P, Dv] grid
        ours = mllm(batch["input_ids"], batch["attention_mask"], image_features=features)
        pixels = mllm.preprocess_images(images).reshape(2 * 64, -1)
        out = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], pixel_values=pixels,
                  image_grid_thw=torch.tensor([[1, 8, 8]] * 2), mm_token_type_ids=(
                      batch["input_ids"] == ref.config.image_token_id).int(), output_hidden_states=True)
        merged = torch.cat(ref.model.get_image_features(pixels, torch.tensor([[1, 8, 8]] * 2)).pooler_output)
    is_img = mllm.token_ids.is_output_image_token(batch["input_ids"])
    want = out.hidden_states[-1][is_img].view(2, 32, -1)
    assert ours.img_hidden.shape == (2, 32, 64)
    torch.testing.assert_close(ours.img_hidden, want, atol=1e-5, rtol=1e-5)
    embeds = mllm.embed(batch["input_ids"], features)
    torch.testing.assert_close(embeds[batch["input_ids"] == ref.config.image_token_id], merged, atol=1e-5, rtol=1e-5)


# ---- SDXL InstructPix2Pix ---------------------------------------------------------------------------------------

def test_sdxl_denoising_matches_diffusers_pipeline():
    """Given the same embeddings, SmartEditPipeline's SDXL denoising loop = diffusers'
    StableDiffusionXLInstructPix2PixPipeline (3-branch CFG, time ids, pooled embeddings), within 1e-5."""
    from diffusers import DDIMScheduler, StableDiffusionXLInstructPix2PixPipeline

    from smartedit.config import preset
    from smartedit.model import SmartEditModel
    from smartedit.pipeline import SmartEditPipeline

    model = SmartEditModel.from_config(preset("tiny-sdxl", **{"bim.enabled": False})).eval()
    unet = model.unet
    with torch.no_grad():
        torch.nn.init.normal_(unet.pooled_proj.weight, std=0.5)  # (a trained head: not the zero init)
        model.null_text_embedding.normal_()
    assert type(unet).__name__ == "SDXLEditUNet" and unet.config.in_channels == 8
    pipe = SmartEditPipeline(model)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    image = torch.rand(1, 3, 64, 64)
    context = torch.randn(1, 77, 64)
    cond = pipe.encode(image, None, prompt_embeds=context)
    latents = torch.randn(1, 4, 16, 16)
    with torch.no_grad():
        ours = pipe.denoise(cond, 4, 3.0, 1.5, latents=latents.clone())
        null = model.null_text_embedding
        ref_pipe = StableDiffusionXLInstructPix2PixPipeline(
            vae=model.vae, text_encoder=None, text_encoder_2=None, tokenizer=None, tokenizer_2=None, unet=unet,
            scheduler=DDIMScheduler.from_config(pipe.scheduler.config), add_watermarker=False)
        ref_pipe.set_progress_bar_config(disable=True)
        ref = ref_pipe(image=image, prompt_embeds=context, negative_prompt_embeds=null,
                       pooled_prompt_embeds=unet.pooled_proj(context.mean(1)),
                       negative_pooled_prompt_embeds=unet.pooled_proj(null.mean(1)), num_inference_steps=4,
                       guidance_scale=3.0, image_guidance_scale=1.5, latents=latents.clone(),
                       output_type="latent").images
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)  # (float32 order of the guidance sums)


# ---- presets ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,published", [
    ("llava1.5-7b+sd15", {"mllm": 7_063_427_072, "unet": 859_520_964}),
    ("qwen2.5vl-7b+sdxl", {"mllm": 8_292_166_656, "unet": 2_567_463_684}),
    ("llava1.5-7b+sdxl", {"mllm": 7_063_427_072, "unet": 2_567_463_684}),
    ("qwen2.5vl-7b+sd15", {"mllm": 8_292_166_656, "unet": 859_520_964}),
])
def test_7b_class_presets_match_published_sizes(name, published):
    """llava-hf/llava-1.5-7b-hf 7.06 B, Qwen/Qwen2.5-VL-7B-Instruct 8.29 B, SD-1.5 UNet 859.5 M, SDXL UNet 2.567 B
    (the sizes their model cards and files give)."""
    from smartedit.config import preset
    from smartedit.info import memory_report, report

    info = report(preset(name))
    c = info["components"]
    mllm = c["llm"] + c["vision"] + c["projector"]
    assert abs(mllm / published["mllm"] - 1) < 0.01, mllm
    assert abs(c["unet"] / published["unet"] - 1) < 0.01, c["unet"]
    mem = memory_report(preset(name))
    for part, count in ((mem["parts"]["vision"], c["vision"] + c["projector"]),  # (buffers come on top)
                        (mem["parts"]["llm_linear"] + mem["parts"]["llm_rest"], c["llm"])):
        assert 0 <= part - count < 0.001 * count


# ---- every pair: stage 1 → 2a → 2b through the stage scripts, then an edit ---------------------------------------

@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from smartedit.train.clip_text import build_tiny_clip_text

    return build_tiny_clip_text(str(tmp_path_factory.mktemp("clip")), hidden_size=64)


def _init_folder(mllm, generator, qwen_dir, folder):
    """A stage-1 starting folder (save_pretrained layout): the tiny LLaVA from its preset, or the tiny Qwen2.5-VL
    assembled from its published folder; the generator from ``tiny`` (SD-1.5), ``tiny-sdxl`` or ``tiny-sd3``."""
    from smartedit.backbones.assemble import from_qwen_vl
    from smartedit.config import preset
    from smartedit.model import SmartEditModel

    base = {"sd15": "tiny", "sdxl": "tiny-sdxl", "sd3": "tiny-sd3"}[generator]
    if mllm == "qwen":
        model = from_qwen_vl(qwen_dir, preset=base, **{"bim.enabled": False})
    else:
        model = SmartEditModel.from_config(preset(base, **{"bim.enabled": False}), seed=0)
    model.save_pretrained(folder)
    return model


@pytest.mark.slow
@pytest.mark.parametrize("mllm,generator", [("llava", "sdxl"), ("qwen", "sd15"), ("qwen", "sdxl"), ("llava", "sd3"),
                                            ("qwen", "sd3")])
def test_every_pair_trains_stage1_to_2b_and_edits(mllm, generator, qwen_dir, clip_dir, tmp_path):
    """Tiny random models of each new (MLLM, generator) pair (LLaVA + SD-1.5: tests/test_train_stages.py) go through
    train/stage1_align.py → stage2_mllmsd.py → stage2_smartedit.py, each stage changing only what it trains, and
    edit through SmartEditPipeline; the model folder survives save_pretrained → from_pretrained (meta-device
    loading) with the same weights and the same edit."""
    from PIL import Image

    from helpers import assert_only_stage_parameters_changed, load_script
    from smartedit.model import SmartEditModel, load_weights
    from smartedit.pipeline import SmartEditPipeline

    assembled = _init_folder(mllm, generator, qwen_dir, tmp_path / "init")
    loaded = SmartEditModel.from_pretrained(tmp_path / "init")
    want = {"llava": "llava", "qwen": "qwen2_5_vl"}[mllm]
    assert (loaded.config.backbone.mllm, loaded.config.backbone.generator) == (want, generator)
    assert type(loaded.mllm) is type(assembled.mllm) and type(loaded.unet) is type(assembled.unet)
    ref = assembled.state_dict()
    before = loaded.state_dict()
    assert before.keys() == ref.keys() and all(torch.equal(before[k], ref[k]) for k in ref)
    batch = assembled.tokenize_edit(["remove the red circle"])
    image = torch.rand(1, 3, assembled.config.vision.image_size, assembled.config.vision.image_size)
    with torch.no_grad():
        mllm_a, mllm_b = assembled.mllm, loaded.mllm
        out_a = mllm_a(batch["input_ids"], batch["attention_mask"],
                       image_features=mllm_a.encode_images(mllm_a.preprocess_images(image)))
        out_b = mllm_b(batch["input_ids"], batch["attention_mask"],
                       image_features=mllm_b.encode_images(mllm_b.preprocess_images(image)))
    assert torch.equal(out_a.img_hidden, out_b.img_hidden)  # (buffers rebuilt on loading: RoPE, mRoPE)
    base_vocab = loaded.config.mllm.vocab_size
    del assembled, loaded

    common = ["--preset", "tiny", "--max-steps", "2", "--set", "precision=fp32", "--set", "log.progress=false",
              "--set", "checkpoint.every=2"]
    init = str(tmp_path / "init")
    for stage, script, extra in (("stage1", "stage1_align", ["--clip-text", clip_dir]),
                                 ("stage2a", "stage2_mllmsd", []), ("stage2b", "stage2_smartedit", [])):
        out = str(tmp_path / stage)
        rc = load_script(f"train/{script}.py").main(common + extra + ["--init", init, "--output", out])
        assert rc == 0, stage
        after = load_weights(os.path.join(out, "model"))
        if stage == "stage1":  # (stage 1 sets the null text embedding: the CLIP text encoder's on "")
            before["null_text_embedding"] = after["null_text_embedding"]
        assert_only_stage_parameters_changed(before, after, stage, base_vocab)
        before, init = after, out

    pipe = SmartEditPipeline.from_pretrained(os.path.join(init, "model"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe.model.config.bim.enabled and pipe.model.config.backbone.mllm == want
    source = Image.new("RGB", (48, 40), (20, 40, 200))
    edited = pipe(prompt="make it red", image=source, num_inference_steps=2, seed=0, output_type="np").images
    assert edited.shape == (1, 40, 48, 3) and np_isfinite(edited)
    pipe.save_pretrained(tmp_path / "saved")
    again = SmartEditPipeline.from_pretrained(tmp_path / "saved")
    again.set_progress_bar_config(disable=True)
    assert (again(prompt="make it red", image=source, num_inference_steps=2, seed=0, output_type="np").images
            == edited).all()


def np_isfinite(array) -> bool:
    import numpy as np

    return bool(np.isfinite(array).all())


# ---- published folders of every family through `smartedit assemble` ----------------------------------------------

@pytest.fixture(scope="module")
def sdxl_dir(tmp_path_factory):
    from smartedit.backbones.testing import build_tiny_sdxl_ip2p

    return build_tiny_sdxl_ip2p(str(tmp_path_factory.mktemp("sdxl_ip2p")))


@pytest.mark.parametrize("kind", ["llava-1.5", "llava-next"])
def test_llava_hf_states_fed_to_the_qformer_equal_transformers(kind, sdxl_dir, tmp_path):
    """A llava-hf LLaVA-1.5 / LLaVA-NeXT folder loads through the LLaVA-1.1 code (smartedit.weights.load_llm); the
    <img_i> hidden states equal transformers' model from the same folder on the same sequence. LLaVA-NeXT is read
    at its base tile: its reference sequence is built with its own vision tower and projector on that tile (its
    any-resolution tiles and image_newline are not used)."""
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    from smartedit.backbones.assemble import assemble
    from smartedit.backbones.testing import build_tiny_llava_hf

    folder = build_tiny_llava_hf(str(tmp_path / kind), seed=5, next_=kind == "llava-next")
    model = assemble(folder, sdxl_dir, preset="tiny-sdxl", dtype="float32")
    assert (model.config.backbone.mllm, model.config.backbone.generator) == ("llava", "sdxl")
    cls = LlavaNextForConditionalGeneration if kind == "llava-next" else LlavaForConditionalGeneration
    ref = cls.from_pretrained(folder).eval()
    mllm = model.mllm
    base = model.config.mllm.vocab_size
    assert base == 1024 and mllm.token_ids.image == ref.config.image_token_index  # (<img> is llava-hf's <image>)
    ref.resize_token_embeddings(model.config.mllm.full_vocab_size)
    with torch.no_grad():
        ref.get_input_embeddings().weight[base:] = mllm.llm.get_input_embeddings().weight[base:]
        ref.get_output_embeddings().weight[base:] = mllm.llm.get_output_embeddings().weight[base:]
    images = torch.rand(2, 3, 32, 32)
    batch = model.tokenize_edit(["remove the red circle", "make the square blue please"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    with torch.no_grad():
        pixels = mllm.preprocess_images(images)
        ours = mllm(ids, mask, image_features=mllm.encode_images(pixels))
        if kind == "llava-1.5":
            hidden = ref(input_ids=ids, attention_mask=mask, pixel_values=pixels,
                         output_hidden_states=True).hidden_states[-1]
        else:
            tower = ref.model.vision_tower(pixels, output_hidden_states=True)
            tokens = ref.model.multi_modal_projector(tower.hidden_states[ref.config.vision_feature_layer][:, 1:])
            embeds = ref.get_input_embeddings()(ids)
            embeds[ids == ref.config.image_token_index] = tokens.reshape(-1, tokens.shape[-1])
            hidden = ref.model.language_model(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    want = hidden[mllm.token_ids.is_output_image_token(ids)].view(2, 32, -1)
    torch.testing.assert_close(ours.img_hidden, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("generator", ["sdxl", "sd15"])
def test_assemble_cli_qwen_with_a_generator_folder_then_edit(generator, qwen_dir, sdxl_dir, tmp_path, capsys):
    """`smartedit assemble` from a Qwen2.5-VL folder and an SDXL InstructPix2Pix folder / the shipped SD-1.5-layout
    InstructPix2Pix folder (published layouts) writes a model folder holding their weights, which `smartedit edit`
    uses; a preset whose Q-Former does not fit the generator is one error line."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from smartedit.cli import main
    from smartedit.model import SmartEditModel

    sd = sdxl_dir if generator == "sdxl" else os.path.join(REPO, "checkpoints", "ip2p-tiny")
    out = tmp_path / "model"
    assert main(["assemble", "--llm", qwen_dir, "--sd", sd, "--preset", "tiny-sdxl" if generator == "sdxl" else "tiny",
                 "--dtype", "float32", "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["backbone"] == ["qwen2_5_vl", generator]
    model = SmartEditModel.from_pretrained(out)
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    ours = model.unet.state_dict()
    for key, value in unet.state_dict().items():
        assert torch.equal(ours[key], value), key
    if generator == "sdxl":
        assert torch.equal(ours["pooled_proj.weight"], torch.zeros_like(ours["pooled_proj.weight"]))
        assert torch.equal(model.null_text_embedding, torch.zeros(1, 77, 64))
    else:  # the folder's CLIP text encoder on ""
        assert model.null_text_embedding.abs().sum() > 0
    qwen = load_file(os.path.join(qwen_dir, "model.safetensors"))
    key = next(k for k in qwen if k.endswith("layers.1.mlp.down_proj.weight"))
    assert torch.equal(model.mllm.llm.state_dict()["model.layers.1.mlp.down_proj.weight"], qwen[key])
    from PIL import Image

    Image.new("RGB", (40, 32), (200, 30, 30)).save(tmp_path / "in.png")
    assert main(["edit", "--model", str(out), "--image", str(tmp_path / "in.png"), "--instruction", "make it blue",
                 "--steps", "2", "--device", "cpu",  # (ip2p-tiny predicts x_0: its DDIM sampler is kept)
                 "--output", str(tmp_path / "out.png")]) == 0
    assert Image.open(tmp_path / "out.png").size == (40, 32)
    capsys.readouterr()
    assert main(["assemble", "--llm", qwen_dir, "--sd", sd, "--preset", "7b", "--out", str(tmp_path / "bad")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "(77, 64) context" in err[0], err


def test_info_prints_a_backbone_preset(capsys):
    from smartedit.cli import main

    assert main(["info", "--preset", "qwen2.5vl-7b+sdxl"]) == 0
    text = capsys.readouterr().out
    assert "preset 'qwen2.5vl-7b+sdxl'" in text and "unet                 2.570 B" in text
    assert "GPU memory of the weights during one edit" in text and "bfloat16  int4" in text


@pytest.mark.parametrize("damage,says", [
    ("no_vae", "vae/config.json is missing"), ("bad_json", "unet/config.json is not valid JSON"),
    ("truncated", "cannot read the SDXL weights"), ("no_zeros", "force_zeros_for_empty_prompt false"),
])
def test_assemble_cli_reports_a_broken_sdxl_folder(damage, says, qwen_dir, sdxl_dir, tmp_path, capsys):
    import shutil

    from smartedit.cli import main

    bad = tmp_path / "sdxl"
    shutil.copytree(sdxl_dir, bad)
    if damage == "no_vae":
        shutil.rmtree(bad / "vae")
    elif damage == "bad_json":
        (bad / "unet" / "config.json").write_text("{broken")
    elif damage == "truncated":
        weights = bad / "unet" / "diffusion_pytorch_model.safetensors"
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        index = json.loads((bad / "model_index.json").read_text())
        (bad / "model_index.json").write_text(json.dumps(dict(index, force_zeros_for_empty_prompt=False)))
    assert main(["assemble", "--llm", qwen_dir, "--sd", str(bad), "--preset", "tiny-sdxl",
                 "--out", str(tmp_path / "out")]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and says in err[0], err
    assert not (tmp_path / "out").exists()
