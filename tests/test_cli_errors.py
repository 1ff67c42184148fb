"""User mistakes at the command line end in one clear ``error:`` line, a non-zero exit and no traceback; outputs are
checked before the edit runs; a model with NaN weights is an error, not a black image."""

import builtins
import logging
import os
import shutil
import subprocess
import sys

import pytest
import torch

SHIPPED = "checkpoints/smartedit-tiny"
EXAMPLE = "checkpoints/examples/shapes.png"


def _edit(*extra, model=SHIPPED, image=EXAMPLE, output="out.png"):
    return ["edit", "--model", str(model), "--image", str(image), "--instruction", "remove the red circle",
            "--output", str(output), "--steps", "2", *map(str, extra)]


def _one_error(capsys, rc, *needles):
    err = capsys.readouterr().err
    assert rc not in (0, None), err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


@pytest.fixture(scope="module")
def broken_models(tmp_path_factory):
    """Copies of the shipped model: one with a truncated weights file, one with NaN UNet weights."""
    from safetensors.torch import load_file, save_file

    root = tmp_path_factory.mktemp("models")
    truncated = root / "truncated"
    shutil.copytree(SHIPPED, truncated)
    weights = truncated / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: os.path.getsize(weights) // 2])
    nan = root / "nan"
    shutil.copytree(SHIPPED, nan)
    state = load_file(nan / "model.safetensors")
    key = next(k for k in state if k.startswith("unet.conv_out.weight"))
    state[key] = torch.full_like(state[key], float("nan"))
    save_file(state, nan / "model.safetensors", metadata={"format": "pt"})
    return {"truncated": truncated, "nan": nan}


def test_missing_model_folder(capsys, tmp_path):
    from smartedit.cli import main

    _one_error(capsys, main(_edit(model="nodir", output=tmp_path / "o.png")), "'nodir' does not exist")


def test_truncated_weights_name_the_file(capsys, tmp_path, broken_models):
    from smartedit.cli import main

    rc = main(_edit(model=broken_models["truncated"], output=tmp_path / "o.png"))
    _one_error(capsys, rc, str(broken_models["truncated"] / "model.safetensors"), "truncated")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda(capsys, tmp_path):
    from smartedit.cli import main

    _one_error(capsys, main(_edit("--device", "cuda", output=tmp_path / "o.png")), "CUDA is not available",
               "--device cpu")


@pytest.mark.parametrize("extra, needle", [
    (("--scheduler", "UNet2DModel"), "not a diffusers scheduler"),
    (("--dtype", "float16", "--device", "cpu"), "float16 is not supported"),
    (("--dtype", "int3"), "unknown dtype"),
    (("--device", "tpu9"), "device"),
])
def test_bad_choices(capsys, tmp_path, extra, needle):
    from smartedit.cli import main

    _one_error(capsys, main(_edit(*extra, output=tmp_path / "o.png")), needle)


@pytest.mark.parametrize("output, needle", [
    ("afile.txt/out.png", "cannot write"),     # a folder that is a file
    ("out.xyz", "not an image format"),
    ("adir", "is a folder"),
])
def test_output_checked_before_the_edit(capsys, tmp_path, monkeypatch, output, needle):
    import smartedit.cli as cli

    (tmp_path / "afile.txt").write_text("x")
    (tmp_path / "adir.png").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "_pipeline", lambda args: pytest.fail("the model was loaded before the output check"))
    target = "adir.png" if output == "adir" else output
    _one_error(capsys, cli.main(_edit(image=os.path.abspath(os.path.join(os.path.dirname(__file__), "..", EXAMPLE)),
                                      model=os.path.abspath(os.path.join(os.path.dirname(__file__), "..", SHIPPED)),
                                      output=target)), needle)


def test_permission_denied_image(capsys, tmp_path, monkeypatch):
    from smartedit.cli import main

    secret = tmp_path / "secret.png"
    shutil.copy(EXAMPLE, secret)
    real_open = builtins.open

    def guarded(path, *args, **kwargs):  # the test runs as root, where chmod 000 does not deny reading
        if os.fspath(path) == str(secret):
            raise PermissionError(13, "Permission denied", str(secret))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    _one_error(capsys, main(_edit(image=secret, output=tmp_path / "o.png")), "secret.png")


def test_bad_sampling_values(capsys, tmp_path):
    from smartedit.cli import main

    _one_error(capsys, main(_edit("--steps", "0", output=tmp_path / "o.png")), "num_inference_steps")


def test_nan_weights_are_an_error_not_a_black_image(capsys, tmp_path, broken_models, one_torch_thread):
    from smartedit.cli import main

    out = tmp_path / "o.png"
    rc = main(_edit(model=broken_models["nan"], output=out))
    _one_error(capsys, rc, "non-finite", "unet", "weights")
    assert not out.exists()


def test_verbose_shows_the_traceback(tmp_path):
    from smartedit.cli import main

    with pytest.raises(FileNotFoundError):
        main(_edit("-v", model="nodir", output=tmp_path / "o.png"))


def test_data_convert_help_exits_zero(capsys):
    from smartedit.cli import main

    assert main(["data", "convert", "--help"]) == 0
    assert "magicbrush" in capsys.readouterr().out


@pytest.mark.parametrize("argv, needle", [
    (["--max-steps", "1"], "--set optim.warmup_steps="),
    (["--max-steps", "2", "--set", "log.wandb=true"], "pip install wandb"),
])
def test_training_mistakes(caplog, tmp_path, monkeypatch, argv, needle):
    from smartedit.train.cli import run_stage

    monkeypatch.setitem(sys.modules, "wandb", None)  # W&B not installed, wherever the suite runs

    with caplog.at_level(logging.ERROR, logger="smartedit.train"):
        rc = run_stage("stage2b", ["--init", "random:tiny", "--output", str(tmp_path / "run"), *argv])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1 and needle in errors[0].getMessage() and errors[0].exc_info is None


@pytest.mark.slow
def test_a_real_process_prints_one_line(tmp_path):
    """Outside pytest: the console command itself, as a user types it."""
    exe = os.path.join(os.path.dirname(sys.executable), "smartedit")
    proc = subprocess.run([exe, *_edit(model="nodir", output=tmp_path / "o.png")], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [proc.stderr.strip()]
    assert proc.stderr.startswith("error: model folder 'nodir' does not exist")
