"""Every process runs the same modules with the same parameters every step, whatever its micro-batch holds.

Two gloo processes train where process 1 only ever draws chat samples (stage 2: no edit row, so no diffusion loss
of its own) or caption samples without an image (stage 1: nothing for the vision tower), while process 0 draws edits
or image-grounded captions. Had process 1 skipped the Q-Former / BIM / VAE / UNet (or the vision tower), ZeRO-2
would reduce different gradient buckets on the two processes and ZeRO-3 would gather different parameters: a
collective mismatch (gloo aborts with "Received data size doesn't match expected size", NCCL hangs)."""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch

from smartedit.model import load_weights
from smartedit.train.metrics import read_jsonl

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BIN = os.path.dirname(sys.executable)

DRIVER = '''
"""One process of the test: each run trains 2 steps on this process's own data (process 1: no edit / no image)."""
import json
import os
import sys

from smartedit.shapes.world import training_samples
from smartedit.train.presets import experiment_preset
from smartedit.train.trainer import Trainer

work, runs = sys.argv[1], json.loads(sys.argv[2])
rank = int(os.environ["RANK"])
for run in runs:
    if run["stage"] == "stage1":
        name, family = "cc12m", ("grounded_instruction" if rank == 0 else "caption")
        extra = {"align.clip_text": os.path.join(work, "clip")}
    else:
        name, family = ("ip2p", "simple") if rank == 0 else ("llava_instruct", "chat")
        extra = {}
    cfg = experiment_preset("tiny", run["stage"], init="random:tiny", output_dir=os.path.join(work, run["name"]),
                            max_steps=2, deepspeed=run["zero"], precision="fp32",
                            **{"log.progress": False, "checkpoint.every": 2, "log.sample_ids": True, **extra})
    Trainer(cfg, sources={name: list(training_samples(family, 8, seed=rank))}).run()
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _zero3(tmp_path) -> str:
    """train/ds/zero3.json with stage3_max_reuse_distance 0 (see tests/test_train_stages.zero3_json)."""
    cfg = json.loads(open(os.path.join(REPO, "train", "ds", "zero3.json")).read())
    cfg["zero_optimization"]["stage3_max_reuse_distance"] = 0
    path = tmp_path / "zero3.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _calls(model: torch.nn.Module, run) -> tuple[list[str], set[str]]:
    """The modules ``run()`` calls, in call order (leaf-level), and the parameters that get a gradient."""
    order, hooks = [], []
    for name, module in model.named_modules():
        if name and not list(module.children()):
            hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: order.append(name)))
    model.zero_grad(set_to_none=True)
    try:
        run().backward()
    finally:
        for h in hooks:
            h.remove()
    return order, {n for n, p in model.named_parameters() if p.grad is not None}


def _stage_model(stage):
    from smartedit.config import preset
    from smartedit.model import SmartEditModel
    from smartedit.train.stage_model import StageModule, prepare_stage_model

    model = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0)
    prepare_stage_model(model, stage)
    return StageModule(model, stage).train()


def test_an_all_chat_micro_batch_runs_the_edit_path_with_zero_weight(make_batch):
    module = _stage_model("stage2b")
    model = module.model
    edit = make_batch(model, 2, seed=1)
    chat = dict(edit, is_edit=torch.zeros(2))
    g = torch.Generator
    order_edit, grads_edit = _calls(module, lambda: module(edit, generator=g().manual_seed(0))["loss"])
    out = module(chat, generator=g().manual_seed(0))
    assert out["diffusion_loss"].item() == 0.0 and torch.equal(out["loss"], out["lm_loss"])
    order_chat, grads_chat = _calls(module, lambda: module(chat, generator=g().manual_seed(0))["loss"])
    assert order_chat == order_edit and grads_chat == grads_edit
    assert any(n.startswith("model.unet.") for n in grads_chat) and any(".bim." in n for n in grads_chat)
    for name, p in module.named_parameters():  # the chat rows' zero-weight diffusion path adds no gradient
        if name.startswith(("model.unet.", "model.bim.", "model.qformer.")):
            assert p.grad is not None and not p.grad.any(), name


def test_an_image_free_stage1_micro_batch_runs_the_vision_tower(tmp_path):
    from smartedit.data.collate import SampleCollator
    from smartedit.shapes.world import training_samples

    module = _stage_model("stage1")
    model = module.model
    collate = SampleCollator(model.config, model.tokenizer)
    target = torch.randn(2, model.config.qformer.num_queries, model.config.qformer.hidden_size)
    orders = {}
    for family in ("grounded_instruction", "caption"):
        batch = collate(list(training_samples(family, 2, seed=0)), [(0, 0, 0), (0, 0, 1)])
        batch.update(module.host_inputs(batch))
        assert bool(batch["image_rows"].all()) == (family == "grounded_instruction")
        orders[family], _ = _calls(module, lambda: module(batch, text_target=target)["loss"])
    assert orders["caption"] == orders["grounded_instruction"]
    assert any(n.startswith("model.mllm.vision_tower.") for n in orders["caption"])
    assert "model.mllm.projector" in orders["caption"]


@pytest.mark.slow
def test_a_process_without_edits_or_images_runs_the_same_collectives(tmp_path):
    from smartedit.train.clip_text import build_tiny_clip_text

    build_tiny_clip_text(str(tmp_path / "clip"), hidden_size=64)
    zero3 = _zero3(tmp_path)
    runs = [{"name": "s2b_zero2", "stage": "stage2b", "zero": "zero2"},
            {"name": "s2b_zero3", "stage": "stage2b", "zero": zero3},
            {"name": "s1_zero3", "stage": "stage1", "zero": zero3}]
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    torchrun = os.path.join(BIN, "torchrun")
    if not os.path.exists(torchrun):
        torchrun = shutil.which("torchrun") or torchrun
    cmd = [torchrun, "--nproc_per_node", "2", "--master_port", str(_free_port()), str(driver), str(tmp_path),
           json.dumps(runs)]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    for run in runs:
        out = tmp_path / run["name"]
        # process 1 really drew only chat (stage 2) / image-free captions (stage 1)
        ids = [i for r in read_jsonl(str(out / "samples-rank00001.jsonl")) for mb in r["ids"] for i in mb]
        want = "shapes_captions/" if run["stage"] == "stage1" else "shapes_chat/"
        assert ids and all(i.startswith(want) for i in ids), ids
        metrics = read_jsonl(str(out / "metrics.jsonl"))
        assert [m["step"] for m in metrics] == [1, 2]
        assert all(m["skipped"] is False and all(v is None or v == v for v in m.values()) for m in metrics)
        weights = load_weights(str(out / "model"))
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point())
        if run["stage"] != "stage1":
            # process 0's edits trained the UNet and the BIM heads (process 1 contributed zero diffusion gradient)
            assert metrics[0]["diffusion_loss"] > 0
            assert weights["bim.text_out.weight"].abs().sum() > 0
