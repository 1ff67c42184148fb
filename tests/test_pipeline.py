"""SmartEditPipeline basics: determinism, sizes, condition computed once."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smartedit.pipeline import SmartEditPipeline


@pytest.fixture
def pipe(tiny_model):
    p = SmartEditPipeline(tiny_model.eval())
    p.set_progress_bar_config(disable=True)
    return p


def _image(w=70, h=50, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


def test_same_seed_same_output_and_input_size_kept(pipe):
    a = pipe(_image(), "remove the red circle", num_inference_steps=3, seed=5).images[0]
    b = pipe(_image(), "remove the red circle", num_inference_steps=3, seed=5).images[0]
    c = pipe(_image(), "remove the red circle", num_inference_steps=3, seed=6).images[0]
    assert a.size == (70, 50)
    assert np.array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    latent = pipe(_image(), "x y", num_inference_steps=2, seed=1, output_type="latent").images
    assert latent.shape == (1, 4, 16, 16)


def test_condition_computed_once_per_edit(pipe, monkeypatch):
    calls = {"cond": 0, "unet": 0}
    encode = pipe.model.encode_condition
    unet_forward = pipe.model.unet.forward

    def counted_encode(*a, **k):
        calls["cond"] += 1
        return encode(*a, **k)

    def counted_unet(x, *a, **k):
        calls["unet"] += 1
        assert x.shape[0] == 6  # 2 images × 3 CFG branches in one UNet batch
        return unet_forward(x, *a, **k)

    monkeypatch.setattr(pipe.model, "encode_condition", counted_encode)
    monkeypatch.setattr(pipe.model.unet, "forward", counted_unet)
    pipe([_image(), _image(seed=1)], ["make it red", "remove the star"], num_inference_steps=4, seed=0)
    assert calls == {"cond": 1, "unet": 4}


@pytest.mark.parametrize("kwargs, msg", [
    ({"instruction": ""}, "non-empty"),
    ({"num_inference_steps": 0}, ">= 1"),
    ({"text_guidance_scale": float("nan")}, "guidance_scale"),
    ({"image_guidance_scale": -1}, "image_guidance_scale"),
])
def test_bad_inputs(pipe, kwargs, msg):
    args = {"image": _image(), "instruction": "make it red", "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=msg):
        pipe(**args)


def test_mask_given_to_model_without_mask_channels(pipe):
    with pytest.raises(ValueError, match="no region-mask channels"):
        pipe(_image(), "make it red", mask=Image.new("L", (70, 50), 255), num_inference_steps=2)


def test_parity_with_diffusers_instruct_pix2pix(tiny_model):
    """Given prompt_embeds, our loop is diffusers' InstructPix2Pix loop (same components, scheduler, seed)."""
    from diffusers import EulerAncestralDiscreteScheduler, StableDiffusionInstructPix2PixPipeline

    model = tiny_model.eval()
    with torch.no_grad():
        model.null_text_embedding.normal_()
    ours = SmartEditPipeline(model)
    ours.set_progress_bar_config(disable=True)
    ip2p = StableDiffusionInstructPix2PixPipeline(
        vae=model.vae, text_encoder=None, tokenizer=None, unet=model.unet,
        scheduler=EulerAncestralDiscreteScheduler.from_config(model.noise_scheduler.config), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    ip2p.set_progress_bar_config(disable=True)
    image = _image(64, 64)
    emb = torch.randn(1, 77, 64, generator=torch.Generator().manual_seed(0))
    ref = ip2p(image=image, prompt_embeds=emb, negative_prompt_embeds=model.null_text_embedding,
               num_inference_steps=10, guidance_scale=7.5, image_guidance_scale=1.5,
               generator=torch.Generator().manual_seed(0), output_type="np").images
    got = ours(image, prompt_embeds=emb, num_inference_steps=10, seed=0, output_type="np").images
    assert got.shape == ref.shape == (1, 64, 64, 3)
    assert np.abs(got - ref).max() <= 1e-5


def test_batch_equals_single_edits(pipe):
    images = [_image(64, 64, 0), _image(40, 30, 1)]
    batch = pipe(images, ["make it red", "remove the star"], num_inference_steps=4, seed=[3, 4], output_type="np")
    assert batch.seeds == [3, 4]
    for k, (im, text, seed) in enumerate(zip(images, ["make it red", "remove the star"], [3, 4])):
        single = pipe(im, text, num_inference_steps=4, seed=seed, output_type="np").images[0]
        assert np.abs(batch.images[k] - single).max() <= 1e-5
    # an int seed gives sample i the seed seed + i
    assert pipe(images, "make it red", num_inference_steps=1, seed=10).seeds == [10, 11]
    assert len(pipe(images[0], "x y", num_inference_steps=1).seeds) == 1  # random seed reported


def test_multi_turn_session(pipe, tmp_path):
    session = pipe.session(_image(50, 40), seed=7, num_inference_steps=2)
    outs = [session.edit(t) for t in ("make the circle red", "remove the square", "make the star bigger")]
    assert len(session.history) == 4 and all(o.size == (50, 40) for o in outs)
    assert [t.seed for t in session.history] == [None, 7, 8, 9]
    # turn 2 edited turn 1's output: replaying it from that image with its seed gives the same result
    replay = pipe(session.history[1].image, "remove the square", seed=8, num_inference_steps=2).images[0]
    assert np.array_equal(np.asarray(replay), np.asarray(session.history[2].image))
    assert session.undo() is session.history[-1].image and len(session.history) == 3
    path = session.save(str(tmp_path / "session"))
    assert (tmp_path / "session" / "turn_02.png").exists() and "remove the square" in open(path).read()
    assert session.history[1].reply is None and '"reply"' not in open(path).read()  # this model writes none
    # a turn given a step callback still saves (the callback is not a setting a file can hold)
    session.edit("make it blue", callback_on_step_end=lambda pipe, step, t, tensors: {})
    saved = json.loads(open(session.save(str(tmp_path / "session2")), encoding="utf-8").read())
    assert saved[-1]["settings"] == {"num_inference_steps": 2}


@pytest.mark.parametrize("name", ["DDIMScheduler", "DPMSolverMultistepScheduler", "EulerDiscreteScheduler"])
def test_schedulers_swappable(pipe, name):
    import diffusers

    pipe.scheduler = getattr(diffusers, name).from_config(pipe.scheduler.config)
    out = pipe(_image(), "make it red", num_inference_steps=3, seed=0, output_type="np").images
    assert np.isfinite(out).all() and out.shape == (1, 50, 70, 3)


def test_region_edit_with_mask_channels(tiny_config):
    from smartedit.config import preset
    from smartedit.model import SmartEditModel

    model = SmartEditModel.from_config(preset("tiny", **{"unet.mask_channels": 4})).eval()
    pipe = SmartEditPipeline(model)
    pipe.set_progress_bar_config(disable=True)
    mask = Image.new("L", (70, 50), 0)
    mask.paste(255, (0, 0, 35, 50))
    with_mask = pipe(_image(), "make it red", mask=mask, num_inference_steps=2, seed=0, output_type="np").images
    free_form = pipe(_image(), "make it red", num_inference_steps=2, seed=0, output_type="np").images
    assert with_mask.shape == free_form.shape and not np.allclose(with_mask, free_form)
    with pytest.raises(ValueError, match="70x50"):
        pipe(_image(), "make it red", mask=Image.new("L", (20, 20), 255), num_inference_steps=1)


def test_sizes_and_model_size_option(pipe):
    tall = pipe(_image(30, 90), "make it red", num_inference_steps=1, seed=0).images[0]
    assert tall.size == (30, 90)
    square = pipe(_image(30, 90), "make it red", num_inference_steps=1, seed=0, keep_model_size=True,
                  output_type="np").images
    assert square.shape == (1, 64, 64, 3)
    bigger = pipe(_image(30, 90), "make it red", num_inference_steps=1, seed=0, resolution=128,
                  keep_model_size=True, output_type="np").images
    assert bigger.shape == (1, 128, 128, 3)
    with pytest.raises(ValueError, match="multiple of 8"):
        pipe(_image(), "make it red", num_inference_steps=1, resolution=60)


def test_image_inputs_of_every_kind(pipe, tmp_path):
    rgba = Image.new("RGBA", (32, 32), (255, 0, 0, 0))
    path = tmp_path / "in.png"
    rgba.save(path)
    for source in (path, str(path), path.read_bytes(), np.zeros((32, 32), np.uint8), torch.rand(3, 32, 32)):
        out = pipe(source, "make it red", num_inference_steps=1, seed=0).images[0]
        assert out.size == (32, 32)
    bad = tmp_path / "zero.png"
    bad.write_bytes(b"")
    with pytest.raises(ValueError, match="zero-byte"):
        pipe(bad, "make it red", num_inference_steps=1)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pipe(torch.full((3, 8, 8), 3.0), "make it red", num_inference_steps=1)


def test_memory_modes_give_identical_edits(tiny_model):
    pipe = SmartEditPipeline(tiny_model.eval())
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(_image(), "make it red", num_inference_steps=2, seed=1, output_type="np").images
    pipe.enable_llm_offload("cpu")
    assert np.array_equal(ref, pipe(_image(), "make it red", num_inference_steps=2, seed=1, output_type="np").images)
    pipe.enable_model_cpu_offload("cpu")
    assert np.array_equal(ref, pipe(_image(), "make it red", num_inference_steps=2, seed=1, output_type="np").images)
    pipe.enable_llm_offload("free")
    pipe._offload_device = None
    pipe(_image(), "make it red", num_inference_steps=1, seed=1)
    assert pipe.model.mllm is None
    with pytest.raises(RuntimeError, match="freed"):
        pipe(_image(), "make it red", num_inference_steps=1)
    with pytest.raises(ValueError, match="offload mode"):
        pipe.enable_llm_offload("gpu")


def test_bfloat16_pipeline_runs(tiny_model, tmp_path):
    tiny_model.save_pretrained(tmp_path)
    pipe = SmartEditPipeline.from_model_dir(str(tmp_path), dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(_image(), "make it red", num_inference_steps=2, seed=0, output_type="np").images
    assert np.isfinite(out).all()


def test_residual_decode_keeps_the_input_where_nothing_changes():
    """scheduler.decode = "residual": output = input + D(source + change) − D(source), so a zero change gives the
    input back bit for bit at its own size (plain decoding gives the VAE's reconstruction instead)."""
    import diffusers

    from smartedit.config import preset
    from smartedit.model import SmartEditModel

    outputs = {}
    for decode in ("residual", "latent"):
        config = preset("tiny", **{"scheduler.diffuse": "change", "scheduler.decode": decode,
                                   "scheduler.prediction_type": "sample", "scheduler.sampler": "DDIMScheduler"})
        model = SmartEditModel.from_config(config, seed=0).eval()
        with torch.no_grad():  # the UNet predicts x0 = 0: a zero latent change
            model.unet.conv_out.weight.zero_()
            model.unet.conv_out.bias.zero_()
        pipe = SmartEditPipeline(model, scheduler=diffusers.DDIMScheduler.from_config(model.noise_scheduler.config))
        pipe.set_progress_bar_config(disable=True)
        outputs[decode] = pipe(_image(), "make it red", num_inference_steps=3, seed=0, output_type="np").images[0]
    source = np.asarray(_image(), dtype=np.float32) / 255
    assert outputs["residual"].shape == source.shape == (50, 70, 3)
    assert np.abs(outputs["residual"] - source).max() <= 1e-6
    assert np.abs(outputs["latent"] - source).max() > 0.05  # an untrained VAE's reconstruction


def test_residual_decode_needs_a_change_model():
    from smartedit.config import ConfigError, preset

    with pytest.raises(ConfigError, match="decode 'residual'.*diffuse 'change'"):
        preset("tiny", **{"scheduler.decode": "residual"})
    with pytest.raises(ConfigError, match="decode must be one of"):
        preset("tiny", **{"scheduler.diffuse": "change", "scheduler.decode": "pixels"})
