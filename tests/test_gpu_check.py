"""bench/gpu_check.py, the first-GPU-run script, runs on CPU with the tiny preset (what CI can run of it)."""

import json

import pytest
from helpers import load_script

pytestmark = pytest.mark.slow


def test_gpu_check_runs_on_cpu_with_the_tiny_preset(tmp_path, capsys, one_torch_thread):
    out = tmp_path / "gpu_check.json"
    status = load_script("bench/gpu_check.py").main(["--device", "cpu", "--preset", "tiny", "--steps", "2",
                                                     "--large-steps", "2", "--repeats", "1", "--out", str(out)])
    report = json.loads(out.read_text())
    assert status == 0, report
    checks = report["checks"]
    assert set(checks) == {"half_precision_edits", "offload", "stage2b_zero2", "stage2b_zero3", "edit_tiny"}
    assert all(c["ok"] for c in checks.values())
    assert checks["half_precision_edits"]["bfloat16"]["finite"] and checks["half_precision_edits"]["float16"]["finite"]
    assert checks["offload"]["model_cpu_offload"]["max_abs_diff_vs_no_offload"] == 0
    assert checks["stage2b_zero3"]["precision"] == "fp32" and len(checks["stage2b_zero2"]["loss"]) == 3
    assert checks["edit_tiny"]["ours_s"] > 0 and checks["edit_tiny"]["diffusers_ip2p_s"] > 0
    assert "diffusers IP2P (same UNet)" in capsys.readouterr().out


def test_gpu_check_refuses_cuda_without_a_gpu(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(SystemExit, match="no CUDA device"):
        load_script("bench/gpu_check.py").main(["--device", "cuda", "--out", str(tmp_path / "x.json")])
