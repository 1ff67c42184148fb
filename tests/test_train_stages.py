"""The three training stages in this process (1 process, DeepSpeed ZeRO-2 and ZeRO-3 on CPU, fp32):
stage 1 → 2a → 2b → an edit, what each stage changes, the LR schedule really applied, ZeRO → safetensors
consolidation, non-finite steps, and a tiny overfit run."""

import json
import os

import pytest
import torch
from PIL import Image

from smartedit.config import ConfigError, preset
from smartedit.model import SmartEditModel, load_weights
from smartedit.pipeline import SmartEditPipeline
from smartedit.train.checkpoint import checkpoint_name
from smartedit.train.consolidate import consolidate
from smartedit.train.metrics import read_jsonl
from smartedit.train.presets import experiment_preset
from smartedit.train.schedule import lr_factor
from smartedit.train.trainer import NonFiniteLossError, Trainer

from helpers import STAGE_TOKEN_MATRICES as TOKEN_MATRICES, assert_only_stage_parameters_changed

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The subprocesses below get OMP_NUM_THREADS=1 for the same reason."""

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def zero3_json(tmp_path_factory):
    """train/ds/zero3.json with stage3_max_reuse_distance 0: DeepSpeed's first complete-trace step walks the whole
    module order for every module when the model is smaller than the reuse window (~10 s for the tiny model)."""
    path = tmp_path_factory.mktemp("ds") / "zero3.json"
    cfg = json.loads(open(os.path.join(REPO, "train", "ds", "zero3.json")).read())
    cfg["zero_optimization"]["stage3_max_reuse_distance"] = 0
    path.write_text(json.dumps(cfg))
    return str(path)


@pytest.fixture
def ds(request, zero3_json):
    return {"zero2": "zero2", "zero3": zero3_json}[request.param]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    from smartedit.train.clip_text import build_tiny_clip_text

    return build_tiny_clip_text(str(tmp_path_factory.mktemp("clip")), hidden_size=64)


def run(stage, init, output, zero="zero2", steps=3, **overrides):
    over = {"log.progress": False, "checkpoint.every": steps, "precision": "fp32", **overrides}  # (exact on GPUs too)
    cfg = experiment_preset("tiny", stage, init=init, output_dir=str(output), max_steps=steps, deepspeed=zero,
                            **over)
    return Trainer(cfg).run()


@pytest.mark.parametrize("ds", ["zero2", "zero3"], indirect=True)
def test_stage1_to_2a_to_2b_to_an_edit(ds, tmp_path, clip_dir):
    zero = ds
    base_vocab = preset("tiny").mllm.vocab_size
    # stage 1 from a random tiny model; a checkpoint after every step
    r1 = run("stage1", "random:tiny", tmp_path / "s1", zero, **{"align.clip_text": clip_dir, "checkpoint.every": 1,
                                                                "checkpoint.keep_last": 5})
    init = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0).state_dict()
    from smartedit.train.clip_text import ClipTextTarget

    init["null_text_embedding"] = ClipTextTarget(clip_dir).null_embedding()
    s1 = load_weights(r1.model_dir)
    assert_only_stage_parameters_changed(init, s1, "stage1", base_vocab)
    assert torch.equal(s1["null_text_embedding"], init["null_text_embedding"])

    # the LR schedule really applies: logged lr and the size of the first Adam update (|Δ| = lr on step 1)
    cfg = experiment_preset("tiny", "stage1")
    metrics = read_jsonl(r1.metrics_path)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert [m["lr"] for m in metrics] == pytest.approx([cfg.optim.lr * lr_factor(s, 3, 2) for s in range(3)])
    assert metrics[0]["lr"] == pytest.approx(cfg.optim.lr / 2)
    step1 = consolidate(os.path.join(r1.output_dir, "checkpoints", checkpoint_name(1)), str(tmp_path / "c1"))
    delta = (load_weights(step1)["qformer.query_tokens"] - init["qformer.query_tokens"]).abs().max().item()
    assert delta == pytest.approx(metrics[0]["lr"], rel=1e-3)
    # ZeRO checkpoint → safetensors gives exactly the exported model
    last = consolidate(os.path.join(r1.output_dir, "checkpoints", checkpoint_name(3)), str(tmp_path / "c3"))
    consolidated = load_weights(last)
    assert consolidated.keys() == s1.keys() and all(torch.equal(consolidated[k], s1[k]) for k in s1)

    # stage 2a reads stage 1's run folder; stage 2b reads stage 2a's
    checkpointing = zero != "zero2"  # activation checkpointing under ZeRO-3 (its gradients: test_train_config)
    r2a = run("stage2a", r1.output_dir, tmp_path / "s2a", zero, gradient_checkpointing=checkpointing)
    s2a = load_weights(r2a.model_dir)
    assert_only_stage_parameters_changed(s1, s2a, "stage2a", base_vocab)
    r2b = run("stage2b", r2a.output_dir, tmp_path / "s2b", zero, gradient_checkpointing=checkpointing)
    s2b = load_weights(r2b.model_dir)
    assert_only_stage_parameters_changed(s2a, s2b, "stage2b", base_vocab)
    assert any(k.startswith("bim.") for k in s2b) and not any(k.startswith("bim.") for k in s2a)
    for m in read_jsonl(r2b.metrics_path):
        assert set(m) >= {"lm_loss", "diffusion_loss", "loss", "lr", "grad_norm", "samples_per_s", "data_wait_s"}
        assert m["skipped"] is False

    model = SmartEditModel.from_pretrained(r2b.model_dir)
    assert model.config.bim.enabled and model.config.lora.r == 8
    pipe = SmartEditPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    image = Image.new("RGB", (48, 40), (20, 40, 200))
    edited = pipe(image, "make it red", num_inference_steps=2, seed=0).images[0]
    assert edited.size == (48, 40)


@pytest.mark.parametrize("ds", ["zero2", "zero3"], indirect=True)
def test_non_finite_steps_are_skipped_then_abort(ds, tmp_path, clip_dir):
    zero = ds
    cfg = experiment_preset("tiny", "stage1", init="random:tiny", output_dir=str(tmp_path / "run"), max_steps=6,
                            deepspeed=zero, precision="fp32",
                            **{"align.clip_text": clip_dir, "log.progress": False, "checkpoint.every": 1,
                               "checkpoint.keep_last": 6})
    trainer = Trainer(cfg).setup()
    forward = trainer.module.forward
    calls = {"n": 0}

    def poisoned(batch, generator=None, text_target=None):
        out = dict(forward(batch, generator=generator, text_target=text_target))
        calls["n"] += 1
        if calls["n"] in (2, 4, 5, 6):  # step 2 alone, then three in a row
            out["lm_loss"] = out["lm_loss"] * float("nan")
            out["loss"] = out["lm_loss"] + out["align_mse"]
        return out

    trainer.module.forward = poisoned
    try:
        with pytest.raises(NonFiniteLossError) as err:
            trainer.train()
    finally:
        trainer.close()
    message = str(err.value)
    assert "step 6" in message and "3 consecutive" in message and "lm_loss=nan" in message and "align_mse=" in message
    metrics = read_jsonl(os.path.join(str(tmp_path / "run"), "metrics.jsonl"))
    assert [m["skipped"] for m in metrics] == [False, True, False, True, True, True]
    assert [m["skipped_total"] for m in metrics] == [0, 1, 1, 2, 3, 4]
    # a skipped step changes nothing: not the weights, and not the learning-rate schedule
    assert metrics[2]["lr"] == metrics[1]["lr"]
    ckpts = os.path.join(str(tmp_path / "run"), "checkpoints")
    w1 = load_weights(consolidate(os.path.join(ckpts, checkpoint_name(1)), str(tmp_path / "c1")))
    w2 = load_weights(consolidate(os.path.join(ckpts, checkpoint_name(2)), str(tmp_path / "c2")))
    w3 = load_weights(consolidate(os.path.join(ckpts, checkpoint_name(3)), str(tmp_path / "c3")))
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    assert not torch.equal(w2["qformer.query_tokens"], w3["qformer.query_tokens"])


def _pretrained_tiny_llm(directory: str) -> str:
    """A tiny model whose LLM already answers the caption template ("Here is the picture"), as Vicuna does: its base
    parameters are trained on the template tokens, the new token rows stay as initialised. (A random LLM cannot
    learn those tokens in stage 1, which freezes it, so they would put a floor under the loss.)"""
    from smartedit.data.collate import SampleCollator
    from smartedit.prompt import IGNORE_INDEX
    from smartedit.data.sources import open_source

    model = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0)
    base = model.config.mllm.vocab_size
    collate = SampleCollator(model.config, model.tokenizer)
    batch = collate([open_source("shapes:caption:1")[0]], [(0, 0, 0)])
    labels = batch["labels"].clone()
    labels[labels >= base] = IGNORE_INDEX
    labels[:, -1] = IGNORE_INDEX  # </s> after <img_31>
    hooks = [w.register_hook(lambda g: torch.cat([g[:base], torch.zeros_like(g[base:])]))
             for w in model.mllm._token_matrices()]
    opt = torch.optim.Adam(model.mllm.llm.parameters(), lr=3e-3)
    for _ in range(40):
        out = model.mllm(batch["input_ids"], batch["attention_mask"], labels=labels)
        opt.zero_grad()
        out.lm_loss.backward()
        opt.step()
    for h in hooks:
        h.remove()
    assert out.lm_loss.item() < 0.2
    model.save_pretrained(directory)
    return directory


def test_tiny_overfit_drives_the_loss_down_tenfold(tmp_path, clip_dir):
    init = _pretrained_tiny_llm(str(tmp_path / "init"))
    result = run("stage1", init, tmp_path / "run", steps=60,
                 **{"align.clip_text": clip_dir, "data.sources.cc12m": "shapes:caption:1", "optim.lr": 1e-2,
                    "optim.schedule": "constant", "optim.warmup_steps": 0, "checkpoint.every": 1000})
    losses = [m["loss"] for m in read_jsonl(result.metrics_path)]
    assert len(losses) == 60
    assert losses[0] / losses[-1] >= 10, losses


def test_bf16_run_exports_fp32_master_weights(tmp_path):
    init = str(tmp_path / "init")
    SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0).save_pretrained(init)
    result = run("stage2a", init, tmp_path / "run", steps=2, precision="bf16",
                 **{"checkpoint.export_dtype": "float32"})
    weights = load_weights(result.model_dir)
    assert all(v.dtype == torch.float32 for v in weights.values())

    def bf16_exact(t):
        return torch.equal(t.to(torch.bfloat16).float(), t)

    # frozen weights went through the bf16 engine; trained ones come from the fp32 master copies
    assert bf16_exact(weights["mllm.projector.weight"]) and bf16_exact(weights["vae.encoder.conv_in.weight"])
    assert not bf16_exact(weights["qformer.query_tokens"]) and not bf16_exact(weights["unet.conv_in.weight"])
    assert all(m["skipped"] is False for m in read_jsonl(result.metrics_path))


def test_stage1_grounded_instructions_align_inside_the_edit_prompt(tmp_path, clip_dir):
    """A caption sample with a source image (ShapesWorld's ``grounded_instruction``) is laid out as an edit prompt with
    that image; stage 1 then feeds the image's patches to the frozen LLM, and the alignment target is the CLIP text
    of the instruction."""
    from smartedit.data.collate import SampleCollator
    from smartedit.shapes.world import training_samples
    from smartedit.train.clip_text import ClipTextTarget
    from smartedit.train.stage_model import StageModule

    samples = list(training_samples("grounded_instruction", 2, seed=0))
    plain = list(training_samples("instruction", 2, seed=0))
    assert [s.caption for s in samples] == [s.caption for s in plain]
    assert all(s.task == "caption" and s.source_image for s in samples) and not any(s.source_image for s in plain)
    model = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0).eval()
    collate = SampleCollator(model.config, model.tokenizer)
    batch = collate(samples, [(0, 0, i) for i in range(2)])
    image_id = model.mllm.token_ids.image
    assert ((batch["input_ids"] == image_id).sum(1) == model.config.vision.num_patches).all()
    assert not (collate(plain, [(0, 0, 0), (0, 0, 1)])["input_ids"] == image_id).any()
    module = StageModule(model, "stage1")
    target = ClipTextTarget(clip_dir)(batch["captions"])
    with torch.no_grad():
        a = module(batch, text_target=target)["align_mse"]
        batch["source_images"] = -batch["source_images"]  # another image, same prompt: another alignment loss
        b = module(batch, text_target=target)["align_mse"]
    assert torch.isfinite(a) and not torch.equal(a, b)
    # and a whole stage-1 run on them trains
    r = run("stage1", "random:tiny", tmp_path / "s1", steps=2, **{
        "align.clip_text": clip_dir, "data.sources": {"cc12m": "shapes:grounded_instruction:8"}})
    assert len(read_jsonl(r.metrics_path)) == 2


def test_stage1_explicit_shows_the_instruction_and_aligns_to_it_said_plainly(tmp_path, clip_dir):
    """``explicit_instruction`` (the recipe's ``stage1_explicit``): the edit prompt is token for token the grounded
    one (the instruction as a user gives it, with its scene), while the alignment target is the CLIP text of the
    instruction said plainly; the probe scores against the same plain texts. A caption sample carrying an
    instruction but no image is refused."""
    from smartedit.data.collate import SampleCollator
    from smartedit.data.schema import Sample
    from smartedit.eval.alignment import alignment_probe
    from smartedit.shapes.pretrain import edit_batch
    from smartedit.shapes.world import training_samples
    from smartedit.train.clip_text import ClipTextTarget

    explicit = list(training_samples("explicit_instruction", 24, seed=0))
    grounded = list(training_samples("grounded_instruction", 24, seed=0))
    assert [s.instruction for s in explicit] == [s.caption for s in grounded]
    changed = [s for s in explicit if s.caption != s.instruction]
    assert changed and all(" on the " not in s.caption and "shape" not in s.caption.split() for s in changed)
    model = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0).eval()
    collate = SampleCollator(model.config, model.tokenizer)
    keys = [(0, 0, i) for i in range(24)]
    a, b = collate(explicit, keys), collate(grounded, keys)
    assert torch.equal(a["input_ids"], b["input_ids"]) and a["captions"] == [s.caption for s in explicit]
    with pytest.raises(ValueError, match="needs the source_image"):
        collate([Sample("x/0", "x", "caption", caption="remove the red circle", instruction="remove it")], keys[:1])
    src, _, texts = edit_batch("reasoning", 0, 0, 8, 64)
    plain = edit_batch("reasoning", 0, 0, 8, 64, explicit=True)[2]
    assert all(t != p for t, p in zip(texts, plain))
    clip = ClipTextTarget(clip_dir)
    model.qformer.forward = lambda states: clip(plain)  # a model that says every instruction plainly
    assert alignment_probe(model, clip, (src + 1) / 2, texts, targets=plain)["mse"] == 0
    assert alignment_probe(model, clip, (src + 1) / 2, texts)["mse"] > 0
    r = run("stage1", "random:tiny", tmp_path / "s1", steps=2, **{
        "align.clip_text": clip_dir, "data.sources": {"cc12m": "shapes:explicit_instruction:8"}})
    assert len(read_jsonl(r.metrics_path)) == 2


def test_alignment_probe_tells_a_copy_from_a_collapse(clip_dir):
    """The probe scores the model's context against the CLIP text of each instruction: a context that IS the CLIP text
    retrieves every instruction with zero error; one collapsed to the mean CLIP text scores the mean-answer error."""
    from smartedit.eval.alignment import alignment_probe
    from smartedit.train.clip_text import ClipTextTarget
    from smartedit.shapes.pretrain import edit_batch

    clip = ClipTextTarget(clip_dir)
    model = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0)
    src, _, texts = edit_batch("any", 0, 0, 6, 64)
    texts = list(dict.fromkeys(texts))
    images = (src[:len(texts)] + 1) / 2
    target = clip(texts)
    model.qformer.forward = lambda states: target  # a perfect Q-Former
    perfect = alignment_probe(model, clip, images, texts)
    assert perfect["mse"] == 0 and perfect["top1_retrieval"] == 1.0 and perfect["mse_of_mean"] > 0
    model.qformer.forward = lambda states: target.mean(0, keepdim=True).expand_as(target)  # collapsed
    collapsed = alignment_probe(model, clip, images, texts)
    assert collapsed["mse"] == pytest.approx(collapsed["mse_of_mean"], rel=1e-5)
    assert collapsed["context_variance"] < 1e-10
    with pytest.raises(ValueError, match="one instruction and one target text each"):
        alignment_probe(model, clip, images, texts[:1])


def test_stage1_keeps_chat_rows_on_the_lm_loss_alone(tmp_path, clip_dir):
    """Chat samples in stage 1 (the ShapesWorld recipe's ``stage1_chat``): their rows train the LM loss and are not
    aligned (they have no caption and no ``<img_i>`` tokens); a micro-batch of chat alone gives an alignment loss of
    0; the aligned rows' loss is the same as without the chat rows beside them."""
    from smartedit.data.collate import SampleCollator
    from smartedit.shapes.world import training_samples
    from smartedit.train.clip_text import ClipTextTarget
    from smartedit.train.stage_model import StageModule

    edits = list(training_samples("explicit_instruction", 2, seed=0, reply=True))
    chats = list(training_samples("chat", 2, seed=0))
    model = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0).eval()
    collate = SampleCollator(model.config, model.tokenizer)
    module = StageModule(model, "stage1")
    clip = ClipTextTarget(clip_dir)
    keys = [(0, 0, i) for i in range(4)]

    def losses(samples):
        batch = collate(samples, keys[:len(samples)])
        batch.update(module.host_inputs(batch))
        captions = [c for c in batch["captions"] if c]
        with torch.no_grad():
            return module(batch, text_target=clip(captions) if captions else None)

    mixed, alone, chat = losses(edits + chats), losses(edits), losses(chats)
    assert torch.allclose(mixed["align_mse"], alone["align_mse"], atol=1e-6)
    assert float(chat["align_mse"]) == 0.0 and float(chat["lm_loss"]) > 0
    # and a whole stage-1 run on the mixture trains
    r = run("stage1", "random:tiny", tmp_path / "s1", steps=2, **{
        "align.clip_text": clip_dir, "data.sources": {"cc12m": "shapes:explicit_instruction:8:0:reply",
                                                      "llava_instruct": "shapes:chat:8"},
        "data.ratios": {"cc12m": 0.5, "llava_instruct": 0.5}})
    assert len(read_jsonl(r.metrics_path)) == 2


def test_also_train_llm_trains_the_decoder_layers_in_stage1(tmp_path, clip_dir):
    """``also_train: ["llm"]`` (the ShapesWorld recipe's stage 1) moves every LLM decoder layer on top of stage 1's
    own parts; the vision side stays frozen and the base token rows stay masked."""
    init = tmp_path / "init"
    SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0).save_pretrained(str(init))
    before = load_weights(str(init))
    result = run("stage1", str(init), tmp_path / "s1", steps=2, also_train=["llm"], **{
        "align.clip_text": clip_dir, "data.sources": {"cc12m": "shapes:grounded_instruction:8"}})
    after = load_weights(result.model_dir)
    layers = [k for k in after if k.startswith("mllm.llm.model.layers.")]
    assert layers and all(not torch.equal(before[k], after[k]) for k in layers if k.endswith("weight")
                          and "norm" not in k)
    for key in after:
        if key.startswith(("mllm.vision_tower.", "mllm.projector.", "unet.", "vae.", "mllm.llm.model.norm")):
            assert torch.equal(before[key], after[key]), f"frozen tensor {key} changed"
    base = preset("tiny").mllm.vocab_size
    for key in TOKEN_MATRICES:
        assert torch.equal(before[key][:base], after[key][:base])
    with pytest.raises(ConfigError, match="unknown parts"):
        experiment_preset("tiny", "stage1", also_train=["decoder"])
