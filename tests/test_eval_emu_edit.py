"""Emu Edit end to end: eval/emu_edit.py on tiny parquet / JSONL fixtures; bad captions dropped and counted."""

import io
import json
from pathlib import Path

import pytest
from PIL import Image

from helpers import load_script

from smartedit.eval import testing
from smartedit.eval.emu_edit import caption_problem, read_emu_edit

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    return load_script(f"eval/{name}.py")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    d = tmp_path_factory.mktemp("backbones")
    return testing.save_tiny_clip(d / "clip"), testing.save_tiny_dino(d / "dino")


@pytest.mark.parametrize("inp, out, bad", [
    ("a dog", "a cat", None),
    ("A dog.", "a  dog", "input_caption == output_caption"),
    ("a dog", "", "output_caption is a placeholder"),
    ("N/A", "a cat", "input_caption is a placeholder"),
    ("a dog", "<output caption>", "placeholder"),
    ("a dog", "...", "placeholder"),
    (None, "a cat", "input_caption is missing"),
])
def test_caption_rules(inp, out, bad):
    why = caption_problem(inp, out)
    assert (why is None) if bad is None else (bad in why)


def test_parquet_scores_and_drops_bad_captions(tmp_path, backbones):
    clip, dino = backbones
    data = testing.make_emu_edit_parquet(tmp_path / "emu" / "data" / "test-00000-of-00001.parquet", n=5)
    samples = read_emu_edit(tmp_path / "emu")
    assert [s.id for s in samples] == ["0", "1", "2", "3", "4"]
    assert [s.problem[0] if s.problem else None for s in samples] == [None, None, None, "bad_caption", "bad_caption"]
    outs = tmp_path / "outs"
    outs.mkdir()
    for s in samples[:2]:  # output for 0 and 1; 2 is missing
        img = Image.open(io.BytesIO(s.input)).convert("RGB")
        img.rotate(180).save(outs / f"{s.id}.png")
    report = tmp_path / "report"
    rc = _script("emu_edit").main(["--data", str(data), "--outputs", str(outs), "--clip", str(clip), "--dino",
                                   str(dino), "--out", str(report)])
    assert rc == 1  # sample 2 has no output; the dropped bad captions alone would not make the run partial
    summary = json.loads((report / "summary.json").read_text())
    assert summary["run"]["bad_captions_dropped"] == 2
    everything = summary["aggregates"]["all"]
    assert (everything["n_samples"], everything["n_scored"]) == (5, 2)
    assert everything["excluded"] == {"bad_caption": 2, "missing_output": 1}
    assert set(summary["aggregates"]) == {"all", "color", "remove"}
    assert set(everything["metrics"]) == {"l1", "clip_i", "dino", "clip_out", "clip_dir"}
    assert any("2 of 5 samples dropped for bad captions" in n for n in summary["notes"])

    from smartedit.eval.clip_score import load_clip_scorer

    c = load_clip_scorer(clip)
    s0 = next(s for s in json.loads((report / "samples.json").read_text())["samples"] if s["id"] == "0")
    inp = Image.open(io.BytesIO(samples[0].input)).convert("RGB")
    out = Image.open(outs / "0.png")
    assert s0["metrics"]["clip_dir"] == pytest.approx(
        c.direction(inp, out, samples[0].input_caption, samples[0].output_caption), abs=1e-6)
    assert s0["metrics"]["clip_out"] == pytest.approx(c.text_similarity(out, samples[0].output_caption), abs=1e-6)
    assert s0["metrics"]["clip_i"] == pytest.approx(c.image_similarity(inp, out), abs=1e-6)
    md = (report / "summary.md").read_text()
    assert "bad_caption: 2" in md and "input_caption == output_caption" in md


def test_jsonl_layout_split_filter_and_extra_placeholder(tmp_path):
    data = testing.make_emu_edit_jsonl(tmp_path / "emu", n=4)
    outs = tmp_path / "outs"
    outs.mkdir()
    for i in range(4):
        Image.open(data / "images" / f"{i}.png").save(outs / f"{i}.png")
    report = tmp_path / "report"
    rc = _script("emu_edit").main(["--data", str(data), "--split", "test", "--outputs", str(outs),
                                   "--placeholder", "A red square number 0", "--out", str(report)])
    assert rc == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["aggregates"]["all"]["excluded"] == {"bad_caption": 3}
    assert summary["aggregates"]["all"]["metrics"]["l1"]["mean"] == 0.0
    assert _script("emu_edit").main(["--data", str(data), "--split", "validation", "--outputs", str(outs),
                                     "--out", str(tmp_path / "r2")]) == 2


@pytest.mark.slow
def test_model_edits_only_samples_with_good_captions(tmp_path):
    from smartedit.config import preset
    from smartedit.model import SmartEditModel

    model_dir = tmp_path / "model"
    SmartEditModel.from_config(preset("tiny"), seed=0).save_pretrained(model_dir)
    data = testing.make_emu_edit_parquet(tmp_path / "emu.parquet", n=4)
    report = tmp_path / "report"
    rc = _script("emu_edit").main(["--data", str(data), "--model", str(model_dir), "--steps", "2",
                                   "--batch-size", "2", "--out", str(report)])
    assert rc == 0
    assert sorted(p.name for p in (report / "outputs").glob("*.png")) == ["0.png", "1.png"]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["aggregates"]["all"]["n_scored"] == 2
    assert summary["aggregates"]["all"]["excluded"] == {"bad_caption": 2}


def test_missing_outputs_folder_is_a_setup_error(tmp_path, capsys):
    data = testing.make_emu_edit_parquet(tmp_path / "emu.parquet", n=2)
    assert _script("emu_edit").main(["--data", str(data), "--outputs", str(tmp_path / "none"), "--out",
                                     str(tmp_path / "r")]) == 2
    assert "OUTPUTS/<idx>.png" in capsys.readouterr().err
