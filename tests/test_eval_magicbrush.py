"""MagicBrush end to end: eval/magicbrush.py on tiny fixtures (test-zip folder and HF parquet layouts)."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import load_script

from smartedit.eval import testing
from smartedit.eval.magicbrush import MULTI, SINGLE, output_stem, read_magicbrush

ROOT = Path(__file__).resolve().parents[1]


def _script(name):
    return load_script(f"eval/{name}.py")


@pytest.fixture(scope="module")
def backbones(tmp_path_factory):
    d = tmp_path_factory.mktemp("backbones")
    return testing.save_tiny_clip(d / "clip-b32-tiny"), testing.save_tiny_dino(d / "dino-s16-tiny")


def _outputs_from_ground_truth(data, outs, perturb=()):
    """Outputs named as MagicBrush's evaluation expects, copied from the ground truth (``perturb``: names to
    alter); the iterative final turn of session 202 is left missing."""
    for sid, n in (("101", 1), ("202", 3)):
        (outs / sid).mkdir(parents=True, exist_ok=True)
        for t in range(1, n + 1):
            gt = data / "images" / sid / f"{sid}-output{t}.png"
            names = [output_stem(sid, t, "inde")] + ([output_stem(sid, t, "iter")] if t > 1 else [])
            for name in names:
                if name == "202_iter_3":
                    continue
                img = Image.open(gt).convert("RGB")
                if name in perturb:
                    img = Image.fromarray(255 - np.asarray(img))
                img.save(outs / sid / f"{name}.png")


def test_folder_layout_single_and_multi_turn(tmp_path, backbones):
    clip, dino = backbones
    data = testing.make_magicbrush_fixture(tmp_path / "MagicBrush" / "test")
    outs = tmp_path / "outs"
    _outputs_from_ground_truth(data, outs, perturb=("202_inde_3",))
    report = tmp_path / "report"
    rc = _script("magicbrush").main(["--data", str(tmp_path / "MagicBrush"), "--outputs", str(outs),
                                     "--clip", str(clip), "--dino", str(dino), "--out", str(report)])
    assert rc == 1  # one final turn has no output: the report is written, the partial score exits 1
    summary = json.loads((report / "summary.json").read_text())
    single, multi = summary["aggregates"][SINGLE], summary["aggregates"][MULTI]
    assert (single["n_samples"], single["n_scored"]) == (4, 4)
    assert (multi["n_samples"], multi["n_scored"], multi["excluded"]) == (2, 1, {"missing_output": 1})
    assert set(single["metrics"]) == {"l1", "l2", "clip_i", "dino", "clip_t", "clip_t_gt"}
    assert single["metrics"]["dino"]["backbone"] == "dino-s16-tiny"
    samples = {s["id"]: s for s in json.loads((report / "samples.json").read_text())["samples"]}
    assert samples["101/turn1"]["metrics"]["l1"] == 0.0 and samples["101/final"]["metrics"]["l2"] == 0.0
    assert samples["101/turn1"]["metrics"]["clip_i"] == pytest.approx(1.0, abs=1e-6)
    bad = samples["202/turn3"]
    gt = np.asarray(Image.open(data / "images" / "202" / "202-output3.png").convert("RGB")) / 255.0
    assert bad["metrics"]["l1"] == pytest.approx(np.abs(1 - 2 * gt).mean(), abs=1e-9)  # |(1−gt) − gt|
    assert bad["metrics"]["l2"] == pytest.approx(((1 - 2 * gt) ** 2).mean(), abs=1e-9)
    assert samples["202/final"]["status"] == "missing_output"
    assert samples["202/turn2"]["meta"]["caption"] == "a red square and 2 green bars"

    from smartedit.eval.clip_score import load_clip_scorer
    from smartedit.eval.dino import load_dino

    c, d = load_clip_scorer(clip), load_dino(dino)
    out = Image.open(outs / "202" / "202_inde_3.png")
    target = Image.open(data / "images" / "202" / "202-output3.png")
    assert bad["metrics"]["clip_i"] == pytest.approx(c.image_similarity(out, target), abs=1e-6)
    assert bad["metrics"]["clip_t"] == pytest.approx(c.text_similarity(out, "a red square and 3 green bars"), abs=1e-6)
    assert bad["metrics"]["dino"] == pytest.approx(d.similarity(out, target), abs=1e-6)
    assert (report / "grids" / "single-turn.png").is_file() and (report / "grids" / "multi-turn.png").is_file()


def test_parquet_layout_and_missing_captions(tmp_path, backbones):
    clip, _ = backbones
    parquet = testing.make_magicbrush_parquet(tmp_path / "hf" / "data" / "test-00000.parquet")
    sessions, with_captions = read_magicbrush(tmp_path / "hf")
    assert [s.id for s in sessions] == ["101", "202"] and not with_captions
    assert [t.turn for t in sessions[1].turns] == [1, 2, 3]
    assert isinstance(sessions[1].turns[2].target, bytes)
    outs = tmp_path / "outs"
    for s in sessions:
        (outs / s.id).mkdir(parents=True)
        for t in s.turns:
            img = Image.open(io.BytesIO(t.target))
            img.save(outs / s.id / f"{output_stem(s.id, t.turn, 'inde')}.png")
            if t.turn > 1:
                img.save(outs / s.id / f"{output_stem(s.id, t.turn, 'iter')}.png")
    (outs / "202" / "202_inde_2.png").write_bytes(b"garbage")
    report = tmp_path / "report"
    assert _script("magicbrush").main(["--data", str(parquet), "--outputs", str(outs), "--clip", str(clip),
                                       "--out", str(report), "--allow-partial"]) == 0
    summary = json.loads((report / "summary.json").read_text())
    assert summary["aggregates"][SINGLE]["excluded"] == {"unreadable": 1}
    assert summary["aggregates"][MULTI]["n_scored"] == 2
    assert summary["aggregates"][MULTI]["metrics"]["l1"]["mean"] == 0.0
    assert "clip_t" not in summary["metrics"] and "dino" not in summary["metrics"]
    assert any("CLIP-T not computed" in n for n in summary["notes"])
    assert any("DINO metrics not computed" in n for n in summary["notes"])


def test_bad_data_exits_2(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"img_id": "1", "instruction": "x"}]), tmp_path / "bad.parquet")
    assert _script("magicbrush").main(["--data", str(tmp_path / "bad.parquet"), "--outputs", str(tmp_path),
                                       "--out", str(tmp_path / "r")]) == 2
    assert "missing ['source_img', 'target_img', 'turn_index']" in capsys.readouterr().err


@pytest.mark.slow
def test_model_runs_independent_and_iterative_turns(tmp_path, backbones):
    from smartedit.config import preset
    from smartedit.model import SmartEditModel

    model_dir = tmp_path / "model"
    SmartEditModel.from_config(preset("tiny"), seed=0).save_pretrained(model_dir)
    data = testing.make_magicbrush_fixture(tmp_path / "test", turns={"101": 1, "202": 2})
    report = tmp_path / "report"
    rc = _script("magicbrush").main(["--data", str(data), "--model", str(model_dir), "--steps", "2",
                                     "--batch-size", "4", "--out", str(report)])
    assert rc == 0
    made = sorted(p.name for p in (report / "outputs").rglob("*.png"))
    assert made == ["101_1.png", "202_1.png", "202_inde_2.png", "202_iter_2.png"]
    summary = json.loads((report / "summary.json").read_text())
    assert summary["aggregates"][SINGLE]["n_scored"] == 3 and summary["aggregates"][MULTI]["n_scored"] == 2
    assert summary["run"]["generation"]["num_inference_steps"] == 2
    final = next(s for s in json.loads((report / "samples.json").read_text())["samples"] if s["id"] == "202/final")
    assert len(final["meta"]["seed"]) == 2  # the seeds of the whole iterative chain
