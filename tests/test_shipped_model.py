"""The shipped ShapesWorld models (checkpoints/smartedit-tiny, checkpoints/ip2p-tiny) load, fit the size budget and
really edit: the README's example and a handful of held-out simple edits are scored against exact ground truth."""

import os
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "checkpoints")
MODEL = os.path.join(ROOT, "smartedit-tiny")
IP2P = os.path.join(ROOT, "ip2p-tiny")
EXAMPLE = os.path.join(ROOT, "examples", "shapes.png")

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pipe():
    from smartedit.pipeline import SmartEditPipeline

    return SmartEditPipeline.from_model_dir(MODEL)


def test_shipped_folders_fit_the_budget_and_describe_themselves():
    total = sum(os.path.getsize(os.path.join(base, f)) for folder in (MODEL, IP2P)
                for base, _, files in os.walk(folder) for f in files)
    assert total <= 40 * 2 ** 20, f"shipped models take {total / 2 ** 20:.1f} MiB"
    card = open(os.path.join(MODEL, "README.md"), encoding="utf-8").read()
    for word in ("ShapesWorld", "Training", "Scores", "IP2P-tiny", "SmartEdit-tiny"):
        assert word in card
    assert os.path.isfile(os.path.join(MODEL, "ablation.json"))


def test_readme_example_removes_the_red_circle(pipe):
    source = np.asarray(Image.open(EXAMPLE).convert("RGB")).astype(np.float64) / 255
    out = pipe(EXAMPLE, "remove the red circle", num_inference_steps=20, seed=0).images[0]
    edited = np.asarray(out.convert("RGB")).astype(np.float64) / 255
    red = (np.abs(source - np.array([220, 40, 40]) / 255).max(-1) < 0.05)
    assert red.sum() > 500
    background = source[0, 0]
    # the circle's pixels now look like the background, not red
    assert np.abs(edited[red] - background).max(-1).mean() < 0.15
    # everything else is kept
    mse = ((edited[~red] - source[~red]) ** 2).mean()
    assert 10 * np.log10(1 / mse) > 20


def test_held_out_simple_edits_hit_the_true_edit_region(pipe):
    from smartedit.data.collate import sample_rng
    from smartedit.data.shapes import simple_edit
    from smartedit.eval.pixel import change_mask, iou

    scores = []
    for i in range(8):
        edit = simple_edit(sample_rng(123, 9, i, stream=99))
        src, _, mask = edit.images(64)
        out = pipe(Image.fromarray(src), edit.instruction, num_inference_steps=20, seed=i).images[0]
        a = torch.from_numpy(src).permute(2, 0, 1).double() / 255
        b = torch.from_numpy(np.asarray(out.convert("RGB"))).permute(2, 0, 1).double() / 255
        scores.append(iou(change_mask(a, b, 0.1), torch.from_numpy(mask)))
    assert statistics.median(scores) >= 0.5, scores
