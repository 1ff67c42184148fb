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


def test_a_sample_reply_is_learned_before_the_image_tokens(tiny_model, tmp_path):
    """A sample's own ``reply`` replaces the stock answer: its words are learned (LM loss) right before the
    ``<img_i>`` tokens, it survives a parquet shard, an older shard without the column reads it as null, and a reply
    where none can be (a chat, image tokens inside it) is refused."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from smartedit.data.io import ParquetSampleDataset, write_samples
    from smartedit.data.schema import COLUMNS

    collate = SampleCollator(tiny_model.config, tiny_model.tokenizer)
    edit = Sample("e1", "shapes", "reasoning", instruction="remove the circle on the left",
                  source_image=_png((0, 0, 255)), target_image=_png((255, 0, 0)), reply="remove the red circle")
    batch = collate([edit], [(0, 0, 0)])
    ids, labels = batch["input_ids"][0], batch["labels"][0]
    learned = tiny_model.tokenizer.decode(ids[labels != -100]).strip()
    assert learned.startswith("remove the red circle <img_0>") and learned.endswith("<img_31></s>")
    stock = collate([Sample(**{**edit.__dict__, "reply": None})], [(0, 0, 0)])
    assert "red circle" not in tiny_model.tokenizer.decode(stock["input_ids"][0])

    write_samples([edit], str(tmp_path / "new"), "shard")
    assert ParquetSampleDataset(str(tmp_path / "new"))[0].reply == "remove the red circle"
    assert ParquetSampleDataset(str(tmp_path / "new")).column("reply") == ["remove the red circle"]
    old = {k: v for k, v in edit.to_row().items() if k in COLUMNS}  # a shard written before the reply column
    (tmp_path / "old").mkdir()
    pq.write_table(pa.Table.from_pylist([old]), tmp_path / "old" / "shard-00000.parquet")
    assert ParquetSampleDataset(str(tmp_path / "old"))[0] == Sample(**{**edit.__dict__, "reply": None})
    assert ParquetSampleDataset(str(tmp_path / "old")).column("reply") == [None]

    chat = Sample("c1", "llava", "chat", conversation=[["q", "a"]], reply="remove it")
    tokens = Sample(**{**edit.__dict__, "reply": "remove <img_3>"})
    assert chat.problems() == ["only edit prompts have a reply before their <img_i> tokens (an edit task, or a "
                               "caption with its source_image)"]
    with pytest.raises(ValueError, match="reply must not hold image tokens"):
        collate([tokens], [(0, 0, 0)])
