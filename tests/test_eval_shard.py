"""Evaluation across the processes a launcher starts: the split, resuming a killed rank, and two torchrun processes
giving the same merged report and images as one process."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from smartedit.eval import testing
from smartedit.eval.benchmark import PARTIAL_DIR, run_benchmark
from smartedit.eval.emu_edit import EmuEdit
from smartedit.shard import Shard

ROOT = Path(__file__).resolve().parents[1]


def test_shard_split_and_environment(monkeypatch):
    items = list(range(7))
    parts = [Shard(r, 3).select(items) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4], [2, 5]] and sorted(sum(parts, [])) == items
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    s = Shard.from_env()
    assert (s.rank, s.world_size, s.is_main, s.device("cuda"), s.device("cpu")) == (1, 2, False, "cuda:1", "cpu")
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        Shard.from_env()
    with pytest.raises(ValueError):
        Shard(2, 2)


class CountingEmu(EmuEdit):
    scored: list

    def score(self, result, ctx):
        self.scored.append(result.id)
        return super().score(result, ctx)


def test_a_killed_run_resumes_without_rescoring(tmp_path):
    data = testing.make_emu_edit_parquet(tmp_path / "emu.parquet", n=3)
    bench = CountingEmu(data)
    outs = testing.write_outputs(bench, tmp_path / "outs")
    bench.scored = []
    first = run_benchmark(bench, out=tmp_path / "r", outputs=outs, shard=Shard())
    assert sorted(bench.scored) == ["0", "1", "2"]
    log = tmp_path / "r" / PARTIAL_DIR / "rank0-of-1.jsonl"
    lines = log.read_text().splitlines()
    log.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:25])  # killed while writing the last row
    bench.scored = []
    again = run_benchmark(bench, out=tmp_path / "r", outputs=outs, shard=Shard())
    assert bench.scored == [json.loads(lines[-1])["id"]]                   # only the torn row is scored again
    assert [r.to_dict() for r in again.results] == [r.to_dict() for r in first.results]
    (outs / "0.png").write_bytes((outs / "1.png").read_bytes())             # an output changed: scored again
    os.utime(outs / "0.png", ns=(1, 1))
    bench.scored = []
    run_benchmark(bench, out=tmp_path / "r", outputs=outs, shard=Shard())
    assert bench.scored == ["0"]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_processes_match_one_process_sample_for_sample(tmp_path):
    import shutil

    from smartedit.config import preset
    from smartedit.model import SmartEditModel

    model = tmp_path / "model"
    SmartEditModel.from_config(preset("tiny"), seed=0).save_pretrained(model)
    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=1)
    for cat in ("2-Relative-Size", "3-Mirror", "5-Multiple-Objects"):
        shutil.rmtree(data / cat)
    common = ["--data", str(data), "--model", str(model), "--steps", "2", "--seed", "3", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    script = str(ROOT / "eval" / "reason_edit.py")
    one = subprocess.run([sys.executable, script, *common, "--out", str(tmp_path / "one")], env=env,
                         capture_output=True, text=True, timeout=900)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(_free_port()), script, *common, "--out", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert two.returncode == 0, two.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "two" / PARTIAL_DIR).glob("*.jsonl")) == ["rank0-of-2.jsonl",
                                                                                       "rank1-of-2.jsonl"]
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    assert a["aggregates"] == b["aggregates"] and a["excluded_samples"] == b["excluded_samples"]
    sa, sb = (json.loads((tmp_path / d / "samples.json").read_text())["samples"] for d in ("one", "two"))
    strip = lambda s: {**s, "meta": {k: v for k, v in s["meta"].items() if k != "output"}}  # noqa: E731
    assert [strip(s) for s in sa] == [strip(s) for s in sb] and len(sa) == 3
    for s in sa:  # the same edit, pixel for pixel, whichever process made it
        rel = Path(s["meta"]["output"]).relative_to(tmp_path / "one")
        assert (tmp_path / "one" / rel).read_bytes() == (tmp_path / "two" / rel).read_bytes()


@pytest.mark.slow
def test_batch_editing_under_two_torchrun_processes_matches_one(tmp_path):
    """``smartedit edit --batch`` under torchrun: each rank edits its rows (row i → rank i mod 2) and rank 0 merges
    one report; the images and the report equal a one-process run's, row for row."""
    shutil = __import__("shutil")
    example = ROOT / "checkpoints" / "examples" / "shapes.png"
    jobs_dir = tmp_path / "jobs"
    jobs_dir.mkdir()
    shutil.copy(example, jobs_dir / "a.png")
    lines = [json.dumps({"image": "a.png", "instruction": text})
             for text in ("remove the red circle", "remove the blue square", "remove the green triangle")]
    lines.insert(1, json.dumps({"image": "missing.png", "instruction": "x"}))
    (jobs_dir / "jobs.jsonl").write_text("\n".join(lines) + "\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(var, None)
    common = ["edit", "--model", str(ROOT / "checkpoints" / "smartedit-tiny"), "--batch",
              str(jobs_dir / "jobs.jsonl"), "--batch-size", "1", "--steps", "3", "--device", "cpu"]
    one = subprocess.run([sys.executable, "-m", "smartedit", *common, "--output-dir", str(tmp_path / "one")],
                         env=env, capture_output=True, text=True, timeout=900)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          str(_free_port()), "-m", "smartedit", *common, "--output-dir", str(tmp_path / "two")],
                         env=env, capture_output=True, text=True, timeout=900)
    assert one.returncode == 1 and two.returncode == 1, (one.stderr[-2000:], two.stderr[-2000:])  # the bad row
    a, b = (json.loads((tmp_path / d / "batch_report.json").read_text()) for d in ("one", "two"))
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("output", "seconds")} for r in rows]  # noqa: E731
    assert strip(a["done"]) == strip(b["done"]) and len(a["done"]) == 3
    assert [f["line"] for f in a["failed"]] == [f["line"] for f in b["failed"]] == [2]
    for row in a["done"]:
        name = Path(row["output"]).name
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
