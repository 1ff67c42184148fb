"""The shipped SmartEdit-tiny (``checkpoints/smartedit-tiny``, trained from scratch by ``train/shapes_recipe.py``):
the size budget, the model card, the README's main-job command producing a correct edit of the shipped example, the
reply it writes, and held-out simple edits."""

import json
import os
import re
import shlex
import statistics

import numpy as np
import pytest
import torch
from PIL import Image

SHIPPED = "checkpoints/smartedit-tiny"
IP2P = "checkpoints/ip2p-tiny"


def _files(folder):
    return [os.path.join(base, f) for base, _, files in os.walk(folder) for f in files]


def readme_main_job() -> list[str]:
    """The arguments of the README's first command (``bash scripts/setup.sh && .venv/bin/smartedit ARGS``)."""
    with open("README.md", encoding="utf-8") as f:
        first = re.search(r"```bash\n(.*?)\n```", f.read(), re.S).group(1)
    setup, edit = first.split("&&", 1)
    assert setup.strip() == "bash scripts/setup.sh"
    words = shlex.split(edit)
    assert words[0] == ".venv/bin/smartedit"
    return words[1:]


def _arg(args, name):
    return args[args.index(name) + 1]


def test_both_models_fit_the_40_mb_budget_as_safetensors():
    files = _files(SHIPPED) + _files(IP2P)
    assert sum(os.path.getsize(f) for f in files) <= 40 * 2 ** 20
    weights = [f for f in files if f.endswith((".bin", ".pt", ".pth", ".ckpt", ".safetensors"))]
    assert weights and all(f.endswith(".safetensors") for f in weights), weights


def test_model_card_states_data_steps_time_and_scores():
    with open(os.path.join(SHIPPED, "README.md"), encoding="utf-8") as f:
        card = f.read()
    for needed in ("ShapesWorld", "train/shapes_recipe.py", "Reasoning", "Simple (recolour, remove)", "edit-region IoU",
                   "Paired", "seconds"):
        assert needed in card, needed
    with open(os.path.join(SHIPPED, "ablation.json"), encoding="utf-8") as f:
        table = json.load(f)["table"]
    assert {"identity", "ip2p", "mllmsd", "smartedit"} <= set(table)


@pytest.mark.slow
def test_readme_main_job_edits_the_shipped_example_correctly(tmp_path, capsys, one_torch_thread):
    from smartedit.cli import main
    from smartedit.shapes.world import example_edit
    from smartedit.eval.pixel import as_chw, change_mask, iou, psnr

    args = readme_main_job()
    assert args[0] == "edit" and _arg(args, "--model") == SHIPPED
    out = tmp_path / "edited.png"
    args[args.index("--output") + 1] = str(out)
    assert main(args) == 0
    source, target, mask = example_edit(_arg(args, "--instruction")).images(128)
    assert np.array_equal(np.asarray(Image.open(_arg(args, "--image")).convert("RGB")), source)
    edited = as_chw(Image.open(out).convert("RGB"))
    a, t, m = as_chw(source), as_chw(target), torch.from_numpy(mask)
    assert iou(change_mask(a, edited, 0.1), m) >= 0.6  # the right shape changed, little else
    assert psnr(a, edited, (~m).double()) >= 26.0  # the rest of the scene kept
    assert psnr(edited, t, m.double()) > psnr(edited, a, m.double()) + 3.0  # the region looks like the target
    # and side by side: input | output
    side = Image.open(tmp_path / "edited_side_by_side.png")
    assert side.size[0] >= 2 * Image.open(out).size[0]


def test_the_shipped_model_says_which_shape_it_means(one_torch_thread):
    """As the README says: SmartEdit-tiny writes the instruction plainly before it edits, for a diffusers user in
    ``.replies`` (its words, no ``<img_i>`` tokens), also for a fact it only saw in chat (held out of the edits)."""
    from smartedit.pipeline import SmartEditPipeline
    from smartedit.shapes.world import held_out_facts

    assert "the shape with no corners" in held_out_facts()[1]["circle"]
    pipe = SmartEditPipeline.from_pretrained(SHIPPED)
    image = Image.open("checkpoints/examples/shapes.png")
    out = pipe([image, image], ["remove the red circle", "paint the shape with no corners the colour of a frog"],
               num_inference_steps=1, seed=0)
    assert out.replies == ["remove the red circle", "make the red circle green"]
    assert pipe(image, "remove the red circle", num_inference_steps=1, generate_reply=False).replies is None


@pytest.mark.slow
def test_held_out_simple_edits(one_torch_thread):
    """Recolour / remove edits from the held-out test stream (never seen in training), sampled with the recipe's
    evaluation settings: the shipped model edits the named shape (edit-region IoU; a model that does not edit scores 0,
    the untrained ``random:tiny`` about 0) and keeps the background."""
    from smartedit.data.collate import sample_rng
    from smartedit.shapes.world import simple_edit
    from smartedit.eval.pixel import as_chw, change_mask, iou, psnr
    from smartedit.pipeline import SmartEditPipeline

    pipe = SmartEditPipeline.from_model_dir(SHIPPED)
    edits = []
    for i in range(200):
        edit = simple_edit(sample_rng(0, 1, i, stream=20 + 6))  # the recipe's 7-Simple test stream
        if not edit.instruction.startswith("replace"):
            edits.append(edit)
        if len(edits) == 24:
            break
    images = [Image.fromarray(e.images(64)[0]) for e in edits]
    with open(os.path.join(SHIPPED, "recipe.json"), encoding="utf-8") as f:
        e = json.load(f)["eval"]
    out = pipe(images, [e_.instruction for e_ in edits], num_inference_steps=e["steps"],
               text_guidance_scale=e["text_guidance"], image_guidance_scale=e["image_guidance"],
               seed=list(range(len(edits)))).images
    masks = [torch.from_numpy(e_.images(64)[2]) for e_ in edits]
    scores = [iou(change_mask(as_chw(im), as_chw(o), 0.1), m) for im, o, m in zip(images, out, masks)]
    backgrounds = [psnr(as_chw(im), as_chw(o), (~m).double()) for im, o, m in zip(images, out, masks)]
    # the shipped model's bar on held-out recolour / remove edits: median IoU >= 0.6 with the background kept (>= 28 dB). The
    # scores are bimodal (the named shape edited, IoU 0.6-0.95, or another / none, near 0), so the share of clear
    # hits and the mean are checked too (shipped model on these 24: median 0.79, mean 0.75, 22 hits, 36.5 dB;
    # the ablation's 30 recolour / remove: median 0.77)
    assert statistics.median(scores) >= 0.6, scores
    assert statistics.fmean(scores) >= 0.45, scores
    assert sum(v >= 0.5 for v in scores) >= 0.5 * len(scores), scores
    assert statistics.median(backgrounds) >= 28.0, backgrounds


def test_the_fair_baseline_is_shipped_and_the_readme_states_its_paired_scores():
    """``checkpoints/ip2p-tiny-fair`` is a diffusers InstructPix2Pix folder (fine-tuned from IP2P-tiny on the
    stage-2 edits), and the README's "vs IP2P-tiny fair" row is exactly what the shipped per-sample scores give."""
    from diffusers import StableDiffusionInstructPix2PixPipeline

    from smartedit.shapes.recipe import GROUPS, paired_between

    pipe = StableDiffusionInstructPix2PixPipeline.from_pretrained("checkpoints/ip2p-tiny-fair", safety_checker=None,
                                                                  requires_safety_checker=False, local_files_only=True)
    assert pipe.unet.config.in_channels == 16
    with open("checkpoints/ip2p-tiny-fair/smartedit.json", encoding="utf-8") as f:
        info = json.load(f)
    assert info["family"] == "stage2" and info["init"] == IP2P
    rows = paired_between(os.path.join(SHIPPED, "eval", "smartedit", "samples.json"),
                          os.path.join(SHIPPED, "eval", "ip2p_mix", "samples.json"))
    with open("README.md", encoding="utf-8") as f:
        line = next(ln for ln in f.read().splitlines() if ln.startswith("| vs IP2P-tiny fair |"))
    cells = [c.strip().strip("*").replace("−", "-") for c in line.strip("|").split("|")[1:]]
    groups = [g for g in GROUPS if g not in ("7-Simple",)]
    for group, cell in zip(groups, cells):
        r = rows[group]
        assert cell == f"{r['mean_difference']:+.2f} [{r['ci90'][0]:+.2f}, {r['ci90'][1]:+.2f}]", (group, cell)


def test_the_readme_states_the_shipped_seed_study():
    """The shipped model is one of three seeds (``checkpoints/smartedit-tiny/seeds.json``, written by ``--summarize``)
    and the README's "over seeds" rows are exactly that summary's mean ± standard deviation."""
    from smartedit.shapes.recipe import GROUPS

    with open(os.path.join(SHIPPED, "seeds.json"), encoding="utf-8") as f:
        seeds = json.load(f)
    assert seeds["seeds"] == [0, 1, 2] and seeds["runs"][0] == SHIPPED
    with open("README.md", encoding="utf-8") as f:
        lines = f.read().splitlines()
    groups = [g for g in GROUPS if g != "7-Simple"]
    for label, key in (("| SmartEdit-tiny − IP2P-tiny fair |", "smartedit-ip2p_mix"),
                       ("| SmartEdit-tiny − MLLM-SD-tiny (the BIM) |", "smartedit-mllmsd")):
        line = next(ln for ln in lines if ln.startswith(label))
        cells = [c.strip().replace("−", "-") for c in line.strip("|").split("|")[1:]]
        for group, cell in zip(groups, cells, strict=True):
            r = seeds["paired"][key][group]
            assert cell == f"{r['mean']:+.2f} ± {r['std']:.2f}", (key, group, cell)
