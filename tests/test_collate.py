"""Uniform sample schema → model batch."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from smartedit.data.collate import SampleCollator
from smartedit.data.schema import Sample, decode_image, encode_png


def _png(color, size=(40, 30), mode="RGB"):
    return encode_png(Image.new(mode, size, color))


@pytest.fixture
def samples():
    mask = Image.new("L", (40, 30), 0)
    mask.paste(255, (0, 0, 20, 30))
    return [
        Sample("e1", "ip2p", "edit", instruction="make it red", source_image=_png((0, 0, 255)),
               target_image=_png((255, 0, 0)), mask_image=encode_png(mask)),
        Sample("c1", "llava", "chat", conversation=[["what colour is it?", "blue"], ["and now?", "still blue"]],
               source_image=_png((0, 0, 255))),
        Sample("t1", "cc12m", "caption", caption="a red circle"),
    ]


def test_collate_mixed_batch_runs_through_the_model(tiny_model, samples):
    collate = SampleCollator(tiny_model.config, tiny_model.tokenizer)
    keys = [(0, 0, i) for i in range(3)]
    batch = collate(samples, keys)
    assert batch["is_edit"].tolist() == [1.0, 0.0, 0.0]
    assert batch["source_images"].shape == (3, 3, 64, 64)
    assert batch["source_images"].min() >= -1 and batch["source_images"].max() <= 1
    torch.testing.assert_close(batch["target_images"][0, 0], torch.ones(64, 64))  # red target
    assert batch["masks"][0, 0, :, :32].min() == 1 and batch["masks"][0, 0, :, 32:].max() == 0
    assert batch["masks"][1].min() == 1  # rows without a mask: blank = free-form
    assert batch["captions"] == [None, None, "a red circle"] and batch["ids"] == ["e1", "c1", "t1"]
    patches = tiny_model.config.vision.num_patches
    n_image = (batch["input_ids"] == tiny_model.mllm.token_ids.image).sum(1).tolist()
    assert n_image == [patches, patches, 0]
    out = tiny_model(batch)
    assert torch.isfinite(out["loss"]) and out["diffusion_loss"] > 0
    # deterministic from (seed, epoch, index)
    again = collate(samples, keys)
    assert torch.equal(batch["input_ids"], again["input_ids"])


def test_bad_sample_is_one_clear_error(tiny_model):
    collate = SampleCollator(tiny_model.config, tiny_model.tokenizer)
    bad = Sample("x", "ip2p", "edit", instruction="", source_image=None, target_image=b"")
    with pytest.raises(ValueError, match="'x': missing instruction; missing source_image"):
        collate([bad], [(0, 0, 0)])


def test_row_round_trip_and_rgba_on_white(samples):
    row = samples[1].to_row()
    assert json.loads(row["conversation"])[0] == ["what colour is it?", "blue"]
    assert Sample.from_row(row) == samples[1]
    rgba = decode_image(_png((10, 20, 30, 0), mode="RGBA"))
    assert np.asarray(rgba)[0, 0].tolist() == [255, 255, 255]


def test_long_chats_are_fitted_not_fatal(tiny_model):
    collate = SampleCollator(tiny_model.config, tiny_model.tokenizer)
    limit = tiny_model.config.mllm.max_position_embeddings
    long_answer = "blue green red " * 300
    turns = [["what colour is it?", "blue"], ["and now?", long_answer]]
    sample = Sample("c2", "llava", "chat", conversation=turns, source_image=_png((0, 0, 255)))
    batch = collate([sample], [(0, 0, 0)])
    assert batch["input_ids"].shape[1] < limit  # the over-long second turn was dropped
    solo = Sample("c3", "llava", "chat", conversation=[["describe it", long_answer]], source_image=_png((1, 2, 3)))
    batch = collate([solo], [(0, 0, 1)])
    assert batch["input_ids"].shape[1] == limit
    assert (batch["input_ids"] == tiny_model.mllm.token_ids.image).sum() == tiny_model.config.vision.num_patches
