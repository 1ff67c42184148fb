"""bench/train_step.py runs end to end (a few steps) and writes its table's numbers as JSON."""

import json
import os

import pytest
from helpers import load_script

pytestmark = pytest.mark.slow

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_step_bench_smoke(tmp_path, capsys):
    bench = load_script("bench/train_step.py")
    out = tmp_path / "bench.json"
    assert bench.main(["--steps", "1", "--warmup", "1", "--rounds", "1", "--batch-size", "2", "--threads", "1",
                       "--workers", "0", "--loader-batches", "2", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"ip2p", "stage1", "stage2a", "stage2b"}
    assert report["results"]["ip2p"]["relative_to_ip2p"] == pytest.approx(1.0)
    for r in report["results"].values():
        assert r["samples_per_s"] > 0 and r["trainable_params"] > 0
    assert report["loader_samples_per_s"]["0"] > 0
    assert "vs ip2p" in capsys.readouterr().out
