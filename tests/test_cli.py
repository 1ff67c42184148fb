"""The ``smartedit`` command: ``info`` on the meta device and ``edit`` with the tiny model."""

import json
import resource
import time

import numpy as np
import pytest
from PIL import Image

from smartedit.cli import main

EXAMPLE = "checkpoints/examples/shapes.png"


def test_info_7b_counts_on_meta_device(capsys):
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    assert main(["info", "--preset", "7b", "--json"]) == 0
    elapsed = time.perf_counter() - start
    info = json.loads(capsys.readouterr().out)
    comps = info["components"]
    assert abs(comps["llm"] - 6.74e9) / 6.74e9 < 0.01
    assert abs(comps["unet"] - 859.5e6) / 859.5e6 < 0.01
    assert abs(comps["vision"] - 303.2e6) / 303.2e6 < 0.01
    assert comps["projector"] == 1024 * 4096 + 4096
    assert info["trainable"]["stage2a"]["parts"]["lora"] == 32 * 2 * 8 * (4096 + 4096)
    assert "bim" not in info["trainable"]["stage2a"]["parts"]
    # built on the meta device: no real allocation (a real 7B model needs > 25 GB)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    assert grown_mb < 2000, grown_mb
    assert elapsed < 120


def test_info_text_output(capsys):
    main(["info", "--preset", "13b"])
    out = capsys.readouterr().out
    assert "llm" in out and "stage2b" in out and "13.016 B" in out


@pytest.mark.slow
def test_edit_random_tiny_writes_outputs(tmp_path, capsys):
    out = tmp_path / "edited.png"
    assert main(["edit", "--model", "random:tiny", "--image", EXAMPLE, "--instruction", "remove the red circle",
                 "--steps", "3", "--seed", "7", "--output", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["seed"] == 7 and result["output"] == str(out)
    edited = Image.open(out)
    assert edited.size == Image.open(EXAMPLE).size
    assert Image.open(result["side_by_side"]).size == (2 * edited.width, edited.height)


@pytest.mark.slow
def test_a_model_that_writes_its_reply_reports_it(tmp_path, capsys):
    """A model saved with ``mllm.writes_reply`` decodes its reply by default; ``smartedit edit`` reports the words
    (without the ``<img_i>`` tokens) in its JSON line, and a batch in each row's record."""
    from smartedit.config import SmartEditConfig, preset
    from smartedit.model import SmartEditModel

    data = preset("tiny").to_dict()
    data["mllm"] = {**data["mllm"], "writes_reply": True}
    SmartEditModel.from_config(SmartEditConfig.from_dict(data), seed=0).save_pretrained(tmp_path / "model")
    assert main(["edit", "--model", str(tmp_path / "model"), "--image", EXAMPLE, "--instruction",
                 "remove the circle on the left", "--steps", "2", "--output", str(tmp_path / "o.png")]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert isinstance(result["reply"], str) and "<img_" not in result["reply"]
    Image.open(EXAMPLE).save(tmp_path / "a.png")
    (tmp_path / "jobs.jsonl").write_text(json.dumps({"image": "a.png", "instruction": "remove the circle"}) + "\n")
    assert main(["edit", "--model", str(tmp_path / "model"), "--batch", str(tmp_path / "jobs.jsonl"),
                 "--output-dir", str(tmp_path / "out"), "--steps", "2"]) == 0
    done = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["done"]
    assert isinstance(done[0]["reply"], str) and "<img_" not in done[0]["reply"]


def test_edit_errors_are_clear(tmp_path, capsys):
    def error_of(argv):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and "Traceback" not in err
        return err

    assert "does not exist" in error_of(["edit", "--model", "random:tiny", "--image", str(tmp_path / "nope.png"),
                                         "--instruction", "x", "--output", str(tmp_path / "o.png")])
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"")
    assert "zero-byte" in error_of(["edit", "--model", "random:tiny", "--image", str(bad), "--instruction", "x",
                                    "--output", str(tmp_path / "o.png")])
    assert "real weights" in error_of(["edit", "--model", "random:7b", "--image", EXAMPLE, "--instruction", "x",
                                       "--output", str(tmp_path / "o.png")])


@pytest.mark.slow
def test_batch_edits_report_bad_rows_and_do_the_rest(tmp_path, capsys):
    Image.open(EXAMPLE).save(tmp_path / "a.png")
    Image.new("RGBA", (40, 30), (0, 0, 255, 128)).save(tmp_path / "b.png")
    (tmp_path / "broken.png").write_bytes(b"")
    Image.new("L", (10, 10), 255).save(tmp_path / "small_mask.png")
    lines = [
        json.dumps({"image": "a.png", "instruction": "remove the red circle", "seed": 5}),
        "{not json",
        json.dumps({"image": "broken.png", "instruction": "make it red"}),
        json.dumps({"image": "b.png"}),
        json.dumps({"image": "b.png", "instruction": "make it red", "output": "b_red.png"}),
        json.dumps({"image": "a.png", "instruction": "x", "mask": "small_mask.png"}),
        "",
        json.dumps({"image": "a.png", "instruction": "make the square green", "bogus": 1}),
    ]
    jobs = tmp_path / "jobs.jsonl"
    jobs.write_text("\n".join(lines) + "\n")
    out_dir = tmp_path / "out"
    code = main(["edit", "--model", "random:tiny", "--batch", str(jobs), "--output-dir", str(out_dir),
                 "--steps", "2", "--seed", "100"])
    assert code == 1  # some rows failed, the others were edited
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert [d["line"] for d in summary["done"]] == [1, 5]
    assert [d["seed"] for d in summary["done"]] == [5, 105]
    failed = {f["line"]: f["error"] for f in summary["failed"]}
    assert set(failed) == {2, 3, 4, 6, 8}
    assert "JSON" in failed[2] and "zero-byte" in failed[3] and "instruction" in failed[4]
    assert "10x10" in failed[6] and "bogus" in failed[8]
    assert (out_dir / "b_red.png").exists() and Image.open(out_dir / "b_red.png").size == (40, 30)
    assert json.loads((out_dir / "batch_report.json").read_text())["done"] == summary["done"]
    # a batch row equals the same edit made alone with its reported seed
    main(["edit", "--model", "random:tiny", "--image", EXAMPLE, "--instruction", "remove the red circle",
          "--steps", "2", "--seed", "5", "--output", str(tmp_path / "single.png")])
    single = np.asarray(Image.open(tmp_path / "single.png"), dtype=int)
    batch = np.asarray(Image.open(summary["done"][0]["output"]), dtype=int)
    assert np.abs(single - batch).max() <= 1


def test_demo_edit_callback(tmp_path):
    from smartedit.demo import DemoState, edit
    from smartedit.model import SmartEditModel
    from smartedit.pipeline import SmartEditPipeline

    pipe = SmartEditPipeline(SmartEditModel.from_config(__import__("smartedit").preset("tiny")))
    pipe.set_progress_bar_config(disable=True)
    state, image, status, seed = edit(pipe, DemoState(), Image.open(EXAMPLE), "remove the red circle", steps=1,
                                      seed=3)
    assert image.size == (128, 128) and "seed 3" in status and seed == 3
    assert edit(pipe, DemoState(), None, "x")[2].startswith("Upload an image first")
    _, none, message, _ = edit(pipe, DemoState(), Image.open(EXAMPLE), "   ", steps=1)
    assert none is None and "instruction" in message


@pytest.mark.slow
def test_edit_hardware_flags_from_the_command_line(tmp_path, one_torch_thread):
    """``--device auto``, ``--offload llm|model`` and ``--quantize-llm`` as a user types them: offloading moves
    modules, it does not change the edit; 8-bit LLM weights change it only a little."""
    pytest.importorskip("bitsandbytes")
    common = ["edit", "--model", "checkpoints/smartedit-tiny", "--image", "checkpoints/examples/shapes.png",
              "--instruction", "remove the red circle", "--steps", "4", "--device", "auto"]
    outputs = {}
    for name, extra in [("plain", []), ("model", ["--offload", "model"]), ("llm", ["--offload", "llm"]),
                        ("int8", ["--quantize-llm", "int8"])]:
        path = tmp_path / f"{name}.png"
        assert main([*common, "--output", str(path), *extra]) == 0, name
        outputs[name] = np.asarray(Image.open(path), dtype=np.float32) / 255
    assert np.array_equal(outputs["plain"], outputs["model"]) and np.array_equal(outputs["plain"], outputs["llm"])
    assert np.abs(outputs["int8"] - outputs["plain"]).mean() < 0.02


def test_demo_serves_this_machine_only_unless_asked():
    from smartedit.cli import build_parser

    args = build_parser().parse_args(["demo", "--model", "checkpoints/smartedit-tiny"])
    assert (args.host, args.share, args.device, args.dtype) == ("127.0.0.1", False, "auto", "auto")
    args = build_parser().parse_args(["demo", "--model", "m", "--host", "0.0.0.0", "--share"])
    assert (args.host, args.share) == ("0.0.0.0", True)
