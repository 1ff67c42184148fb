"""Reason-Edit end to end: eval/reason_edit.py on a tiny fixture in the real layout, from outputs and with a model."""

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import load_script

from smartedit.eval import testing
from smartedit.eval.reason_edit import (UNDERSTANDING, find_category_dirs, match_category, parse_line,
                                        read_reason_edit)

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    return load_script(f"eval/{name}.py")


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    d = tmp_path_factory.mktemp("backbones")
    return testing.save_tiny_clip(d / "clip-l14-tiny"), testing.save_random_lpips(d / "lpips")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from smartedit.config import preset
    from smartedit.model import SmartEditModel

    d = tmp_path_factory.mktemp("model") / "tiny"
    SmartEditModel.from_config(preset("tiny"), seed=0).save_pretrained(d)
    return d


# ---- reading ---------------------------------------------------------------------------------------------
def test_reader_layout_rules(tmp_path):
    assert match_category("6-Reasoning") == "6-Reasoning"
    assert match_category("Reasoning-231115") == "6-Reasoning"
    assert match_category("4-Color") == "4-Color" and match_category("outputs") is None
    assert parse_line("remove the left dog CLIP: a cat on grass\n") == ("remove the left dog", "a cat on grass")
    assert parse_line("no phrase here") is None

    data = testing.make_reason_edit_fixture(tmp_path / "bench" / "Reason-Edit", per_category=1)
    (data / "6-Reasoning").rename(data / "Reasoning-231115")
    folder = data / "1-Left-Right"
    for stem in ("10", "2"):  # unpadded numbers: masks are paired by stem, lines by sorted input order
        testing.shapes_image((48, 40), (5, 5, 20, 20), (1, 2, 3)).save(folder / f"{stem}.png")
        Image.new("L", (48, 40), 255 if stem == "10" else 0).save(folder / f"{stem}_mask.jpg")
    (folder / "Left_Right_text.txt").write_text("a CLIP: x\nb CLIP: y\n\nbroken line\n")
    (data / "3-Mirror" / "0_mask.jpg").unlink()
    assert set(find_category_dirs(tmp_path / "bench")) == {"1-Left-Right", "2-Relative-Size", "3-Mirror", "4-Color",
                                                           "5-Multiple-Objects", "6-Reasoning"}
    samples, notes = read_reason_edit(tmp_path / "bench")
    by_id = {s.id: s for s in samples}
    assert [s.stem for s in samples if s.category == "1-Left-Right"] == ["0", "10", "2"]
    assert by_id["1-Left-Right/0"].instruction == "a" and by_id["1-Left-Right/10"].clip_text == "y"
    assert by_id["1-Left-Right/10"].mask_path.name == "10_mask.jpg"
    assert by_id["1-Left-Right/2"].problem[0] == "bad_annotation"
    assert by_id["3-Mirror/0"].problem[0] == "missing_mask"
    assert by_id["6-Reasoning/0"].input_path.parent.name == "Reasoning-231115"
    assert not any(n.startswith("1-Left-Right") for n in notes)


# ---- scoring existing outputs ----------------------------------------------------------------------------
def test_outputs_mode_scores_all_categories_and_reports_every_problem(tmp_path, backbones):
    import shutil

    clip, lpips = backbones
    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=3)
    for cat in ("3-Mirror", "4-Color", "5-Multiple-Objects"):  # fewer samples to score: absent categories are noted
        shutil.rmtree(data / cat)
    outs = testing.make_reason_edit_outputs(data, tmp_path / "outs")
    (outs / "1-Left-Right" / "0.png").unlink()                                         # missing output
    (outs / "1-Left-Right" / "1.png").write_bytes(b"\x89PNG not really")               # unreadable
    Image.open(outs / "2-Relative-Size" / "0.png").resize((48, 20)).save(outs / "2-Relative-Size" / "0.png")
    Image.new("L", (48, 40), 0).save(data / "2-Relative-Size" / "1_mask.jpg")           # empty mask
    Image.new("L", (48, 40), 255).save(data / "6-Reasoning" / "0_mask.jpg")             # no background
    report = tmp_path / "report"
    rc = _script("reason_edit").main(["--data", str(data), "--outputs", str(outs), "--clip", str(clip),
                                      "--lpips", str(lpips), "--out", str(report), "--max-visual", "3",
                                      "--allow-partial"])
    assert rc == 0
    summary = json.loads((report / "summary.json").read_text())
    aggs = summary["aggregates"]
    assert list(aggs) == ["1-Left-Right", "2-Relative-Size", "3-Mirror", "4-Color", "5-Multiple-Objects",
                          "6-Reasoning", "understanding", "reasoning"]
    und = aggs["understanding"]
    assert (und["n_samples"], und["n_scored"]) == (6, 2)
    assert und["excluded"] == {"empty_mask": 1, "missing_output": 1, "size_mismatch": 1, "unreadable": 1}
    assert aggs["reasoning"]["excluded"] == {"full_mask": 1}
    assert aggs["reasoning"]["n_scored"] == 2 and aggs["6-Reasoning"]["metrics"]["psnr_bg"]["n"] == 2
    assert aggs["3-Mirror"]["n_samples"] == 0 and "category folder 4-Color not found under the data folder" in \
        summary["notes"]
    assert len(summary["excluded_samples"]) == 5

    samples = json.loads((report / "samples.json").read_text())["samples"]
    ok = [s for s in samples if s["status"] == "ok" and s["group"] != "6-Reasoning"]
    for name in ("psnr_bg", "ssim_bg", "lpips_bg", "mse_bg", "psnr_ref", "ssim_ref", "lpips_ref", "mse_ref",
                 "clip_crop"):
        mean = np.mean([s["metrics"][name] for s in ok])
        assert und["metrics"][name]["mean"] == pytest.approx(mean, rel=1e-9), name
        assert und["metrics"][name]["n"] == 2
    for s in ok:  # the reference convention inflates PSNR over the true background value
        assert s["metrics"]["psnr_ref"] > s["metrics"]["psnr_bg"]

    lp_hash = hashlib.sha256("".join(f"{n} {_sha(lpips / n)}\n" for n in sorted(
        ["squeezenet1_1.safetensors", "squeeze.safetensors"])).encode()).hexdigest()
    for agg in aggs.values():
        assert agg["metrics"]["lpips_bg"]["sha256"] == lp_hash
        assert agg["metrics"]["clip_crop"] == {**agg["metrics"]["clip_crop"], "backbone": "clip-l14-tiny",
                                               "sha256": _sha(clip / "model.safetensors")}
        assert agg["metrics"]["psnr_bg"]["backbone"] is None
    assert summary["backbones"]["clip"]["files"] == {"model.safetensors": _sha(clip / "model.safetensors")}
    assert any("not comparable" in n for n in summary["notes"])  # the tiny CLIP is not ViT-L/14

    # one sample recomputed independently (numpy) from the files: background PSNR at 256²
    s = next(x for x in samples if x["id"] == "6-Reasoning/2")
    size = (256, 256)
    inp = np.asarray(Image.open(s["meta"]["input"]).convert("RGB").resize(size, Image.Resampling.BICUBIC)) / 255.0
    out = np.asarray(Image.open(s["meta"]["output"]).convert("RGB").resize(size, Image.Resampling.BICUBIC)) / 255.0
    mask = np.asarray(Image.open(s["meta"]["mask"]).convert("L").resize(size, Image.Resampling.NEAREST))
    bg = mask <= 127
    mse = ((inp - out) ** 2)[bg].mean()
    assert s["metrics"]["mse_bg"] == pytest.approx(mse, abs=1e-12)
    assert s["metrics"]["psnr_bg"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-6)
    keep = 1 - mask / 255.0
    assert s["metrics"]["mse_ref"] == pytest.approx((((inp - out) * keep[..., None]) ** 2).mean(), abs=1e-12)

    with open(report / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 9
    assert f"clip_crop [clip-l14-tiny sha256:{_sha(clip / 'model.safetensors')[:12]}]" in rows[0]
    assert {r["status"] for r in rows} == {"ok", "missing_output", "unreadable", "size_mismatch", "empty_mask",
                                           "full_mask"}
    md = (report / "summary.md").read_text()
    assert "| PSNR bg (dB) ↑ | — |" in md and "lpips-squeeze-v0.1 sha256:" in md and "6-Reasoning" in md
    html = (report / "report.html").read_text()
    assert "missing_output" in html and "grids/1-Left-Right.png" in html
    assert len(list((report / "grids").glob("*.png"))) == 3


def test_targets_add_edit_iou_and_target_psnr(tmp_path):
    import shutil

    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=2)
    for cat in ("2-Relative-Size", "3-Mirror", "4-Color", "5-Multiple-Objects"):  # absent categories are noted
        shutil.rmtree(data / cat)
    outs = testing.make_reason_edit_outputs(data, tmp_path / "outs")
    targets = testing.make_reason_edit_outputs(data, tmp_path / "targets", color=(40, 40, 160))
    (targets / "1-Left-Right" / "0.png").unlink()
    report = tmp_path / "report"
    rc = _script("reason_edit").main(["--data", str(data), "--outputs", str(outs), "--targets", str(targets),
                                      "--change-threshold", "0.2", "--out", str(report), "--allow-partial"])
    assert rc == 0
    summary = json.loads((report / "summary.json").read_text())
    und = summary["aggregates"]["understanding"]
    assert und["excluded"] == {"missing_target": 1}
    assert 0.8 < und["metrics"]["edit_iou"]["mean"] <= 1.0
    assert und["metrics"]["psnr_fg_target"]["mean"] < und["metrics"]["psnr_target"]["mean"] < 100
    assert "lpips_bg" not in und["metrics"] and "clip_crop" not in und["metrics"]
    assert any("LPIPS metrics not computed" in n for n in summary["notes"])
    assert summary["run"]["change_threshold"] == 0.2
    assert "category folder 3-Mirror not found under the data folder" in summary["notes"]
    assert summary["aggregates"]["3-Mirror"]["n_samples"] == 0
    assert summary["aggregates"]["3-Mirror"]["metrics"]["psnr_bg"]["mean"] is None
    assert summary["aggregates"]["reasoning"]["n_scored"] == 2


def test_setup_problems_exit_2_with_the_expected_layout(tmp_path, capsys):
    script = _script("reason_edit")
    assert script.main(["--data", str(tmp_path / "nope"), "--outputs", str(tmp_path), "--out",
                        str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "1-Left-Right" in err and "Traceback" not in err
    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=1)
    assert script.main(["--data", str(data), "--outputs", str(tmp_path), "--lpips", str(tmp_path / "nolpips"),
                        "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "expected layout" in err and "squeeze" in err


# ---- running a model -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_model_mode_runs_the_pipeline_with_a_fixed_seed_per_sample(tmp_path, model_dir):
    from smartedit.eval.generate import sample_seed

    import shutil

    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=1)
    for cat in ("2-Relative-Size", "3-Mirror", "4-Color", "5-Multiple-Objects"):
        shutil.rmtree(data / cat)
    report = tmp_path / "report"
    rc = _script("reason_edit").main(["--data", str(data), "--model", str(model_dir), "--steps", "2",
                                      "--batch-size", "3", "--seed", "7", "--text-guidance", "5.0",
                                      "--out", str(report)])
    assert rc == 0
    summary = json.loads((report / "summary.json").read_text())
    gen = summary["run"]["generation"]
    assert (gen["num_inference_steps"], gen["text_guidance_scale"], gen["image_guidance_scale"], gen["seed"]) == \
           (2, 5.0, 1.5, 7)
    assert gen["weights"] == {"model.safetensors": _sha(model_dir / "model.safetensors")}
    assert summary["aggregates"]["understanding"]["n_scored"] == 1
    assert summary["aggregates"]["reasoning"]["n_scored"] == 1
    for s in json.loads((report / "samples.json").read_text())["samples"]:
        assert s["meta"]["seed"] == sample_seed(7, s["id"])
        assert Image.open(s["meta"]["output"]).size == (48, 40)


@pytest.mark.slow
def test_editor_seed_is_per_sample_and_failures_are_isolated(tmp_path, model_dir):
    from smartedit.eval.generate import EditJob, Editor, GenerationSettings

    image = testing.shapes_image((40, 40), (5, 5, 20, 20), (200, 0, 0))
    one = Editor(model_dir, GenerationSettings(num_inference_steps=2, batch_size=1))
    one.run([EditJob("a", image, "remove the square", tmp_path / "one" / "a.png")])
    two = Editor(model_dir, GenerationSettings(num_inference_steps=2, batch_size=2))
    two.run([EditJob("c", image, "make it blue", tmp_path / "two" / "c.png"),     # one real batch of two
             EditJob("a", image, "remove the square", tmp_path / "two" / "a.png"),
             EditJob("b", image, "", tmp_path / "two" / "b.png")])                 # the model refuses it
    assert one.failures == {} and set(two.failures) == {"b"} and "non-empty" in two.failures["b"]
    # same seed per sample whatever the batch and the position in it
    assert np.array_equal(np.asarray(Image.open(tmp_path / "one" / "a.png")),
                          np.asarray(Image.open(tmp_path / "two" / "a.png")))
    assert (tmp_path / "two" / "c.png").is_file()
    assert not (tmp_path / "two" / "b.png").exists()

    # a batch that raises is retried sample by sample: only the bad sample fails (no model compute needed)
    def fake_edit(images, jobs):
        if any(j.instruction == "bad" for j in jobs):
            raise RuntimeError("model exploded")
        return images

    two._edit = fake_edit
    two.run([EditJob("x", image, "fine", tmp_path / "x.png"), EditJob("y", image, "bad", tmp_path / "y.png"),
             EditJob("z", tmp_path / "missing.png", "fine", tmp_path / "z.png")])
    assert (tmp_path / "x.png").is_file() and not (tmp_path / "y.png").exists()
    assert two.failures["y"] == "RuntimeError: model exploded" and "input not readable" in two.failures["z"]


# ---- outputs in the reference SmartEdit's layout ------------------------------------------------------------
def test_reference_layout_is_scored_completely_with_guidance_from_file_names(tmp_path, capsys):
    from smartedit.eval.reason_edit import parse_reference_name

    assert parse_reference_name("0012_T7.5_I1.5") == (12, 7.5, 1.5) and parse_reference_name("12") is None
    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=2)
    runs = testing.make_reference_outputs(data, tmp_path / "SmartEdit-7B")
    script = _script("reason_edit")
    # the two run folders the reference's test script writes, given as two --outputs
    rc = script.main(["--data", str(data), "--outputs", str(runs / "Understand-15000"), str(runs / "Reason-15000"),
                      "--out", str(tmp_path / "r1")])
    assert rc == 0
    summary = json.loads((tmp_path / "r1" / "summary.json").read_text())
    assert summary["aggregates"]["understanding"]["n_scored"] == 10 and summary["aggregates"]["reasoning"][
        "n_scored"] == 2
    assert any("reference layout" in n for n in summary["notes"])
    samples = json.loads((tmp_path / "r1" / "samples.json").read_text())["samples"]
    s = next(x for x in samples if x["id"] == "3-Mirror/1")
    assert s["meta"]["output"].endswith("Mirror_metrics_3/0002_T7.5_I1.5.png")
    assert (s["meta"]["text_guidance"], s["meta"]["image_guidance"]) == (7.5, 1.5)
    # the parent folder works too and gives the same scores
    assert script.main(["--data", str(data), "--outputs", str(runs), "--out", str(tmp_path / "r2")]) == 0
    again = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert again["aggregates"] == summary["aggregates"]

    # sweep folders with three image guidances: ambiguous until one is chosen
    sweep = testing.make_reference_outputs(data, tmp_path / "sweep", guidance=((7.5, 1.4), (7.5, 1.5), (7.5, 1.6)),
                                           metrics_only=False)
    capsys.readouterr()
    assert script.main(["--data", str(data), "--outputs", str(sweep), "--out", str(tmp_path / "r3")]) == 2
    err = capsys.readouterr().err
    assert "--output-guidance" in err and "(7.5, 1.4)" in err
    assert script.main(["--data", str(data), "--outputs", str(sweep), "--output-guidance", "7.5,1.6",
                        "--out", str(tmp_path / "r3")]) == 0
    s = next(x for x in json.loads((tmp_path / "r3" / "samples.json").read_text())["samples"]
             if x["id"] == "1-Left-Right/0")
    assert s["meta"]["output"].endswith("LeftRight_1/0001_T7.5_I1.6.png") and s["meta"]["image_guidance"] == 1.6


def test_mismatched_outputs_error_names_both_layouts_and_missing_samples_exit_1(tmp_path, capsys):
    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "1").mkdir()
    Image.new("RGB", (8, 8)).save(empty / "1" / "1.png")
    script = _script("reason_edit")
    assert script.main(["--data", str(data), "--outputs", str(empty), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no Reason-Edit outputs found") and "_metrics_" in err and "<category>" in err

    runs = testing.make_reference_outputs(data, tmp_path / "runs")
    (runs / "Understand-15000" / "Color_metrics_4" / "0001_T7.5_I1.5.png").unlink()
    assert script.main(["--data", str(data), "--outputs", str(runs), "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "1 of 12 samples were not scored (missing_output: 1)" in err and "4-Color/0" in err
    assert "--allow-partial" in err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["excluded_samples"] == [{"id": "4-Color/0", "group": "4-Color", "status": "missing_output",
                                            "message": summary["excluded_samples"][0]["message"]}]
    assert "0001_T*_I*.png" in summary["excluded_samples"][0]["message"]
    assert script.main(["--data", str(data), "--outputs", str(runs), "--out", str(tmp_path / "r"),
                        "--allow-partial"]) == 0


def test_unchanged_outputs_are_counted_and_the_psnr_cap_is_explicit(tmp_path):
    from smartedit.eval.reason_edit import evaluate

    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=2)
    outs = testing.make_reason_edit_outputs(data, tmp_path / "outs")
    import shutil

    shutil.copy(data / "4-Color" / "1.png", outs / "4-Color" / "1.png")  # one output left unchanged
    run = evaluate(data, out=tmp_path / "r", outputs=outs)
    und = run.summary["aggregates"]["understanding"]["metrics"]
    assert und["unchanged"]["count"] == 1 and und["unchanged"]["n"] == 10
    for name in ("psnr_bg", "psnr_ref"):  # the unchanged output sits at the cap; the other mean is given too
        assert und[name]["n_at_cap"] == 1
        below = [r.metrics[name] for r in run.results if r.group in UNDERSTANDING and r.metrics[name] < 100]
        assert len(below) == 9 and und[name]["mean_below_cap"] == pytest.approx(np.mean(below))
        assert und[name]["mean"] == pytest.approx((sum(below) + 100) / 10)
    md = (tmp_path / "r" / "summary.md").read_text()
    assert "1 of 10 at the 100.00 cap" in md and "| unchanged outputs | — | 0 of 2 | 0 of 2 | 0 of 2 | 1 of 2" in md


def test_ins_align_by_the_judge_beside_the_pixel_metrics(tmp_path):
    from smartedit.eval.reason_edit import evaluate

    data = testing.make_reason_edit_fixture(tmp_path / "data", per_category=1)
    outs = testing.make_reason_edit_outputs(data, tmp_path / "outs")
    judge = testing.ScriptedJudge(lambda parts: "Yes." if "number 0" in parts[-1] and len(parts) == 3 else "no")
    run = evaluate(data, out=tmp_path / "r", outputs=outs, judge=judge)
    assert run.summary["aggregates"]["understanding"]["metrics"]["ins_align"]["mean"] == 1.0
    assert run.summary["metrics"]["ins_align"]["backbone"] == "scripted-judge"
    assert all(r.meta["judge"][0]["question"] == "ins_align" for r in run.results)
    assert any("not comparable" in n for n in run.summary["notes"])


def test_evaluation_samples_with_the_model_folders_own_settings():
    """No sampling setting given: the benchmark editor uses what the model folder was tuned with (the shipped
    SmartEdit-tiny: DDIM, 20 steps, guidance 1.5 / 1.0), not the 7B fallback (100 steps, 7.5 / 1.5); a given
    value still wins."""
    from smartedit.eval.generate import Editor, GenerationSettings

    editor = Editor("checkpoints/smartedit-tiny", GenerationSettings())
    assert (editor.settings.num_inference_steps, editor.settings.text_guidance_scale,
            editor.settings.image_guidance_scale) == (20, 1.5, 1.0)
    assert type(editor.pipe.scheduler).__name__ == "DDIMScheduler"
    assert {"num_inference_steps", "text_guidance_scale", "image_guidance_scale"} <= set(editor.info["defaulted"])
    given = Editor("checkpoints/smartedit-tiny", GenerationSettings(num_inference_steps=3))
    assert given.settings.num_inference_steps == 3 and given.settings.text_guidance_scale == 1.5
