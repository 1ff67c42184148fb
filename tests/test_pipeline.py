"""SmartEditPipeline basics: determinism, sizes, condition computed once."""

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
    ({"text_guidance_scale": float("nan")}, "text_guidance_scale"),
    ({"image_guidance_scale": -1}, "image_guidance_scale"),
])
def test_bad_inputs(pipe, kwargs, msg):
    args = {"image": _image(), "instruction": "make it red", "num_inference_steps": 2, **kwargs}
    with pytest.raises(ValueError, match=msg):
        pipe(**args)


def test_mask_given_to_model_without_mask_channels(pipe):
    with pytest.raises(ValueError, match="no region-mask channels"):
        pipe(_image(), "make it red", mask=Image.new("L", (70, 50), 255), num_inference_steps=2)
