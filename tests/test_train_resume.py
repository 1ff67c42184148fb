"""Exact resume: a stage-2b run (LoRA dropout, CFG dropout, gradient accumulation, a data-loader worker, and a
parquet source with 1 % corrupt rows, one drawn before the kill and one after) killed with SIGKILL at a random step
and resumed with ``--resume latest`` logs the same per-step losses (fp32 CPU: ≤ 1e-6), sees the same samples in the
same order, skips and reports the same corrupt rows and ends with the same weights (to 1e-4) as an uninterrupted
run."""

import os
import random
import signal
import subprocess
import sys
import time

import dataclasses

import pytest
from helpers import load_script
import torch

from smartedit.config import preset
from smartedit.model import SmartEditModel, load_weights
from smartedit.data.io import write_samples
from smartedit.data.mixture import MixtureDataset
from smartedit.shapes.world import training_samples
from smartedit.train.checkpoint import list_checkpoints
from smartedit.train.metrics import read_jsonl
from smartedit.train.presets import experiment_preset
from smartedit.data.sources import open_sources

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """The subprocesses below get OMP_NUM_THREADS=1 for the same reason."""

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
SCRIPT = os.path.join(REPO, "train", "stage2_smartedit.py")
STEPS = 8


def _load_script(path):
    return load_script(path)


ROWS, MICRO, ACCUM = 200, 2, 2


def _args(init, output, data):
    return ["--preset", "tiny", "--init", init, "--output", output, "--max-steps", str(STEPS),
            "--set", "checkpoint.every=2", "--set", "checkpoint.keep_last=2", "--set", "log.sample_ids=true",
            "--set", "log.progress=false", "--set", f"gradient_accumulation_steps={ACCUM}",
            "--set", "data.num_workers=1", "--set", "precision=fp32", "--source", f"mine={data}",
            "--set", "data.ratios.mine=1.0"]


def _corrupt_source(folder) -> list[str]:
    """A parquet source of ROWS samples, 1 % of them corrupt (truncated source images): the rows that the run's
    first and last steps draw, so one is skipped before any kill and one after the resume. Returns their ids."""
    cfg = experiment_preset("tiny", "stage2b")
    sizes = {name: len(s) for name, s in open_sources(cfg.data).items()} | {"mine": ROWS}
    mixture = MixtureDataset({n: range(k) for n, k in sizes.items()}, {**cfg.data.ratios, "mine": 1.0}, seed=cfg.seed)
    drawn = [mixture.choose(0, g) for g in range(STEPS * ACCUM * MICRO)]  # (one epoch is longer than the run)
    mine = [i for name, i in drawn if name == "mine"]
    bad = {mine[0], mine[-1]}
    assert len(bad) == 2 == ROWS // 100
    samples = list(training_samples("simple", ROWS, seed=9))
    rows = [dataclasses.replace(s, source_image=s.source_image[:100]) if i in bad else s
            for i, s in enumerate(samples)]
    write_samples(rows, folder, "mine-train", shard_size=64)
    return sorted(samples[i].id for i in bad)


def test_sigkill_then_resume_latest_is_exact(tmp_path):
    data = str(tmp_path / "mine")
    bad_ids = _corrupt_source(data)
    init = str(tmp_path / "init")
    SmartEditModel.from_config(preset("tiny", **{"bim.enabled": False}), seed=3).save_pretrained(init)
    main = _load_script(SCRIPT).main

    # the run to be killed: a separate plain-python process
    killed = str(tmp_path / "killed")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}  # (set if this process trained already)
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, SCRIPT, *_args(init, killed, data)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_at = random.Random(os.getpid()).randint(3, STEPS - 2)
    deadline = time.time() + 240
    try:
        while len(read_jsonl(os.path.join(killed, "metrics.jsonl"))) < kill_at:
            assert proc.poll() is None, f"training process ended early:\n{proc.stderr.read()[-3000:]}"
            assert time.time() < deadline, "training process too slow"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = [step for step, _ in list_checkpoints(os.path.join(killed, "checkpoints"))]
    assert saved and max(saved) <= kill_at + 1

    # the uninterrupted reference run and the resumed run, in this process
    reference = str(tmp_path / "reference")
    assert main(_args(init, reference, data)) == 0
    assert main(_args(init, killed, data) + ["--resume", "latest"]) == 0

    ref, res = read_jsonl(os.path.join(reference, "metrics.jsonl")), read_jsonl(os.path.join(killed, "metrics.jsonl"))
    assert [m["step"] for m in res] == list(range(1, STEPS + 1)) == [m["step"] for m in ref]
    for a, b in zip(ref, res):
        for key in ("loss", "lm_loss", "diffusion_loss", "lr", "grad_norm"):
            assert abs(a[key] - b[key]) <= 1e-6 * max(1.0, abs(a[key])), (a["step"], key, a[key], b[key])
    assert [step for step, _ in list_checkpoints(os.path.join(killed, "checkpoints"))] == [6, 8]  # keep_last 2
    ids = "samples-rank00000.jsonl"
    assert read_jsonl(os.path.join(reference, ids)) == read_jsonl(os.path.join(killed, ids))
    # the corrupt rows: skipped, reported with shard, row and id, counted across the kill, replaced identically
    skips = "skipped-rank00000.jsonl"
    ref_skips, res_skips = read_jsonl(os.path.join(reference, skips)), read_jsonl(os.path.join(killed, skips))
    assert ref_skips == res_skips and sorted({s["id"] for s in ref_skips}) == bad_ids
    assert all(s["shard"].endswith(".parquet") and s["reason"] == "truncated" for s in ref_skips)
    assert ref_skips[0]["step"] == 1 and ref_skips[-1]["step"] == STEPS
    assert ref[-1]["skipped_rows"] == res[-1]["skipped_rows"] == len(ref_skips)
    # resuming with another batch layout would not be exact: refused
    assert main(_args(init, killed, data) + ["--resume", "latest", "--set", "micro_batch_size=1"]) == 2
    w_ref, w_res = load_weights(os.path.join(reference, "model")), load_weights(os.path.join(killed, "model"))
    assert w_ref.keys() == w_res.keys()
    for k in w_ref:  # (two processes may round a reduction differently in the last bit; Adam amplifies that a bit)
        torch.testing.assert_close(w_ref[k], w_res[k], rtol=0, atol=1e-4)
