"""Two processes (gloo on CPU): one launch per ZeRO stage runs stage 1 → 2a → 2b through the real scripts —
ZeRO-2 under ``torchrun``, ZeRO-3 under the ``deepspeed`` launcher — then the parent checks what each stage changed,
that the processes saw disjoint samples, the ZeRO-3 consolidation, and edits with the final model."""

import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from PIL import Image

from smartedit.config import preset
from smartedit.model import SmartEditModel, load_weights
from smartedit.pipeline import SmartEditPipeline
from smartedit.train.checkpoint import checkpoint_name
from smartedit.train.consolidate import consolidate
from smartedit.train.metrics import read_jsonl

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
BIN = os.path.dirname(sys.executable)
STEPS = 2

DRIVER = '''
"""Runs the three stage scripts one after the other in this process (launched once per process)."""
import argparse
import importlib.util
import json
import os
import sys

parser = argparse.ArgumentParser()
for name in ("--train-dir", "--work", "--zero", "--clip"):
    parser.add_argument(name)
parser.add_argument("--local_rank", "--local-rank", type=int)
args, _ = parser.parse_known_args()


def script(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(args.train_dir, name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


common = ["--preset", "tiny", "--deepspeed", args.zero, "--max-steps", "{steps}", "--set", "log.sample_ids=true",
          "--set", "log.progress=false", "--set", "checkpoint.every={steps}"]
runs = [("stage1_align", "s1", ["--init", "random:tiny", "--clip-text", args.clip]),
        ("stage2_mllmsd", "s2a", ["--init", os.path.join(args.work, "s1")]),
        ("stage2_smartedit", "s2b", ["--init", os.path.join(args.work, "s2a")])]
for name, out, extra in runs:
    status = script(name).main(common + extra + ["--output", os.path.join(args.work, out)])
    if status:
        sys.exit(status)
'''.replace("{steps}", str(STEPS))


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stage_helpers():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "test_train_stages.py")
    spec = importlib.util.spec_from_file_location("_train_stage_helpers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("zero,launcher", [("zero2", "torchrun"), ("zero3", "deepspeed")])
def test_two_processes_chain_all_stages(zero, launcher, tmp_path):
    from smartedit.train.clip_text import build_tiny_clip_text

    clip = build_tiny_clip_text(str(tmp_path / "clip"), hidden_size=64)
    if zero == "zero3":  # (see test_train_stages.zero3_json)
        cfg = json.loads(open(os.path.join(REPO, "train", "ds", "zero3.json")).read())
        cfg["zero_optimization"]["stage3_max_reuse_distance"] = 0
        (tmp_path / "zero3.json").write_text(json.dumps(cfg))
        zero_arg = str(tmp_path / "zero3.json")
    else:
        zero_arg = zero
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    args = [str(driver), "--train-dir", os.path.join(REPO, "train"), "--work", str(tmp_path), "--zero", zero_arg,
            "--clip", clip]
    port = str(_free_port())
    if launcher == "torchrun":
        cmd = [os.path.join(BIN, "torchrun"), "--nproc_per_node", "2", "--master_port", port, *args]
    else:
        cmd = [os.path.join(BIN, "deepspeed"), "--num_gpus", "2", "--master_port", port, *args]
    if not os.path.exists(cmd[0]):
        cmd[0] = shutil.which(os.path.basename(cmd[0])) or cmd[0]
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}  # (set if this process trained already)
    env.update(OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               PATH=BIN + os.pathsep + os.environ.get("PATH", ""))
    proc = subprocess.run(cmd, cwd=str(tmp_path), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]

    helpers = _stage_helpers()
    base = preset("tiny").mllm.vocab_size
    init = SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=0).state_dict()
    weights = {name: load_weights(str(tmp_path / name / "model")) for name in ("s1", "s2a", "s2b")}
    init["null_text_embedding"] = weights["s1"]["null_text_embedding"]
    helpers.assert_only_stage_parameters_changed(init, weights["s1"], "stage1", base)
    helpers.assert_only_stage_parameters_changed(weights["s1"], weights["s2a"], "stage2a", base)
    helpers.assert_only_stage_parameters_changed(weights["s2a"], weights["s2b"], "stage2b", base)

    # each process saw exactly the samples of its position in the stream (micro-batch k of process r)
    from smartedit.data.loader import StepBatches
    from smartedit.train.presets import experiment_preset
    from smartedit.data.sources import open_sources

    for name, stage, term in (("s1", "stage1", "align_mse"), ("s2a", "stage2a", "diffusion_loss"),
                              ("s2b", "stage2b", "diffusion_loss")):
        metrics = read_jsonl(str(tmp_path / name / "metrics.jsonl"))
        assert [m["step"] for m in metrics] == [1, 2] and all(term in m for m in metrics)
        assert metrics[-1]["samples"] == STEPS * 2 * 2  # 2 processes × micro batch 2
        data = experiment_preset("tiny", stage).data
        sources = open_sources(data)
        for rank in (0, 1):
            stream = StepBatches(sources, data.ratios, None, 2, rank=rank, world_size=2, seed=0)
            logged = read_jsonl(str(tmp_path / name / f"samples-rank{rank:05d}.jsonl"))
            assert [r["ids"] for r in logged] == [[[s.id for s in stream.draw(k)[0]]] for k in range(STEPS)]

    if zero == "zero3":  # a 2-process ZeRO-3 checkpoint consolidates to exactly the exported model
        out = consolidate(str(tmp_path / "s2b" / "checkpoints" / checkpoint_name(STEPS)), str(tmp_path / "c"))
        consolidated = load_weights(out)
        assert all(torch.equal(consolidated[k], weights["s2b"][k]) for k in weights["s2b"])

    pipe = SmartEditPipeline(SmartEditModel.from_pretrained(str(tmp_path / "s2b" / "model")))
    pipe.set_progress_bar_config(disable=True)
    edited = pipe(Image.new("RGB", (64, 64), (200, 30, 30)), "make it red", num_inference_steps=2, seed=0).images[0]
    assert edited.size == (64, 64)
