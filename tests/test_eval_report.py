"""Aggregation rules, robust image reading and report files (smartedit.eval.results / images / report)."""

import csv
import json
import math

import pytest
from PIL import Image

from smartedit.eval.backbones import BackboneInfo, combined_sha256
from smartedit.eval.images import check_size, load_rgb, open_image
from smartedit.eval.report import write_report
from smartedit.eval.results import (Aggregate, MetricInfo, SampleProblem, SampleResult, summarize)
from smartedit.eval.runner import score_samples

INFO = BackboneInfo(kind="clip", name="org/clip-x", arch="tiny", path="clip", files={"model.safetensors": "ab" * 32},
                    sha256="ab" * 32)
METRICS = {"psnr": MetricInfo("psnr", "PSNR", "pixel", True),
           "clip": MetricInfo("clip", "CLIP", "backbone metric", True, INFO)}


def _results(tmp_path):
    img = tmp_path / "in.png"
    Image.new("RGB", (20, 10), (10, 200, 30)).save(img)
    (tmp_path / "broken.png").write_bytes(b"nope")
    return [
        SampleResult("a", "g1", metrics={"psnr": 30.0, "clip": 0.5}, meta={"instruction": "make it red"},
                     visuals=[("input", img), ("output", img)]),
        SampleResult("b", "g1", metrics={"psnr": 20.0, "clip": math.nan}, visuals=[("input", img), ("output", None)]),
        SampleResult("c", "g2", status="missing_output", message="no file",
                     visuals=[("input", tmp_path / "broken.png"), ("output", None)]),
        SampleResult("d", "g2", metrics={"psnr": 10.0, "clip": 0.1}, visuals=[("input", b"not an image")]),
    ]


def test_means_use_scored_samples_only_with_counts(tmp_path):
    s = summarize(_results(tmp_path), METRICS, [Aggregate("g1", ("g1",)), Aggregate("all", ("g1", "g2"))])
    assert s["g1"]["metrics"]["psnr"] == {"mean": 25.0, "n": 2, "n_nan": 0, "backbone": None, "sha256": None}
    assert s["g1"]["metrics"]["clip"] == {"mean": 0.5, "n": 1, "n_nan": 1, "backbone": "org/clip-x",
                                          "sha256": "ab" * 32}
    assert (s["all"]["n_samples"], s["all"]["n_scored"], s["all"]["excluded"]) == (4, 3, {"missing_output": 1})
    assert s["all"]["metrics"]["psnr"]["mean"] == pytest.approx(20.0)


def test_scoring_loop_never_stops(tmp_path):
    results = [SampleResult(str(i), "g") for i in range(3)]

    def fn(r):
        if r.id == "1":
            raise SampleProblem("empty_mask", "nothing to crop")
        if r.id == "2":
            raise ZeroDivisionError("boom")
        return {"psnr": 1.0}

    score_samples(results, fn)
    assert [(r.status, r.message) for r in results] == [("ok", ""), ("empty_mask", "nothing to crop"),
                                                         ("error", "ZeroDivisionError: boom")]


def test_report_files(tmp_path):
    out = tmp_path / "report"
    summary = write_report(out, benchmark="unit", title="Unit", results=_results(tmp_path), metrics=METRICS,
                           aggregates=[Aggregate("g1", ("g1",)), Aggregate("g2", ("g2",))],
                           run_info={"outputs": "x", "generation": {"seed": 0}}, notes=["a note"], max_visual=3)
    assert json.loads((out / "summary.json").read_text()) == summary
    assert summary["backbones"] == {"clip": INFO.to_dict()}
    assert summary["excluded_samples"] == [{"id": "c", "group": "g2", "status": "missing_output",
                                            "message": "no file"}]
    samples = json.loads((out / "samples.json").read_text())["samples"]
    assert samples[1]["metrics"]["clip"] is None  # NaN → null
    with open(out / "samples.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    col = f"clip [org/clip-x sha256:{'ab' * 6}]"
    assert rows[0][col] == "0.5" and rows[1][col] == "" and rows[2]["status"] == "missing_output"
    md = (out / "summary.md").read_text()
    assert "| CLIP ↑ | org/clip-x sha256:abababababab | 0.5000 (n=1, 1 n/a) | 0.1000 |" in md
    assert "| excluded | | 0 | missing_output: 1 |" in md and "a note" in md
    assert Image.open(out / "grids" / "g1.png").size[0] > 256
    assert (out / "grids" / "g2.png").is_file() and "missing_output" in (out / "report.html").read_text()


def test_image_reading_statuses(tmp_path):
    with pytest.raises(SampleProblem) as e:
        load_rgb(tmp_path / "none.png", "missing_output", "output")
    assert e.value.status == "missing_output"
    (tmp_path / "zero.png").write_bytes(b"")
    for src in (tmp_path / "zero.png", b"garbage", b""):
        with pytest.raises(SampleProblem) as e:
            open_image(src, "missing_output", "output")
        assert e.value.status == "unreadable"
    rgba = Image.new("RGBA", (4, 4), (1, 2, 3, 4))
    rgba.save(tmp_path / "rgba.png")
    assert load_rgb(tmp_path / "rgba.png", "missing_input", "input").mode == "RGB"
    assert check_size((512, 512), (256, 256), "output") is None
    assert check_size((512, 384), (515, 384), "output") is None  # within 1 %
    with pytest.raises(SampleProblem, match="256x256 but the reference is 512x384") as e:
        check_size((512, 384), (256, 256), "output")
    assert e.value.status == "size_mismatch"
    assert "allow-size-mismatch" in check_size((512, 384), (256, 256), "output", allow=True)


def test_combined_hash_is_order_independent():
    assert combined_sha256({"a": "1"}) == "1"
    assert combined_sha256({"a": "1", "b": "2"}) == combined_sha256({"b": "2", "a": "1"}) != "1"
