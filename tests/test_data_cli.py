"""``smartedit data …`` (wired through ``smartedit.data.cli.register``) and the data-throughput benchmark."""

import argparse
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers import load_script
from PIL import Image

from smartedit.data.cli import register
from smartedit.data.io import write_samples
from smartedit.data.schema import Sample

ROOT = Path(__file__).resolve().parents[1]


def cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="smartedit")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


def png(seed: int, size=(24, 18), mode="RGB") -> bytes:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture
def data_root(tmp_path):
    root = tmp_path / "data"
    edit = [Sample(f"ip2p/{i}", "ip2p", "edit", instruction=f"turn the cat number {i} into a tiger",
                   source_image=png(i), target_image=png(100 + i)) for i in range(5)]
    mb = [Sample(f"magicbrush/train/{i}-1", "magicbrush", "edit", instruction="add a hat", source_image=png(i),
                 target_image=png(50 + i), mask_image=png(7, mode="L")) for i in range(3)]
    chat = [Sample("llava_instruct/0", "llava_instruct", "chat", source_image=png(9),
                   conversation=[["What is this?", "A noisy picture."]])]
    write_samples(edit, root / "ip2p", "ip2p-train")
    write_samples(mb, root / "magicbrush", "magicbrush-train")
    write_samples(chat, root / "llava_instruct", "llava_instruct-train")
    return root


def test_stats(data_root, capsys):
    assert cli(["data", "stats", str(data_root)]) == 0
    out = capsys.readouterr().out
    assert "9 samples in 3 shard(s)" in out
    assert "magicbrush" in out and "edit 3" in out and "turn the cat number 0 into a tiger" in out
    assert cli(["data", "stats", str(data_root / "magicbrush"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["rows"] == 3 and stats["datasets"]["magicbrush"]["with_mask"] == 3
    assert stats["image_size_probe"]["width_max"] == 24 and stats["image_bytes"]["mask_image"] > 0
    assert cli(["data", "stats", str(data_root / "nope")]) == 2
    assert "error:" in capsys.readouterr().err


def test_validate(data_root, capsys, tmp_path):
    assert cli(["data", "validate", str(data_root)]) == 0
    assert "9 written, 0 skipped" in capsys.readouterr().out
    write_samples([Sample("bad/0", "bad", "edit", instruction="x", source_image=b"junk", target_image=png(1))],
                  data_root / "bad", "bad-train")
    assert cli(["data", "validate", str(data_root), "--report", str(tmp_path / "r.json")]) == 1
    assert "1 x not an image (e.g. bad-train-00000.parquet row 0)" in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["skipped"] == 1


def test_preview_writes_a_grid_of_mixed_samples(data_root, tmp_path, capsys):
    out = tmp_path / "preview.png"
    assert cli(["data", "preview", str(data_root), "--out", str(out), "--n", "6", "--columns", "3",
                "--cell", "64", "--seed", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["preview"] == str(out) and set(info["ratios"]) == {"ip2p", "magicbrush", "llava_instruct"}
    grid = Image.open(out)
    assert grid.width > 3 * 3 * 64 and grid.height > 2 * 64
    # same seed → same picture; the ratio override changes what is drawn
    assert cli(["data", "preview", str(data_root), "--out", str(tmp_path / "again.png"), "--n", "6",
                "--columns", "3", "--cell", "64", "--seed", "2"]) == 0
    assert (tmp_path / "again.png").read_bytes() == out.read_bytes()
    assert cli(["data", "preview", str(data_root / "ip2p"), "--out", str(tmp_path / "one.png"), "--n", "2"]) == 0
    capsys.readouterr()
    assert cli(["data", "preview", str(data_root), "--ratio", "ip2p=0", "--ratio", "magicbrush=0",
                "--out", str(tmp_path / "chat.png"), "--n", "2"]) == 0
    assert json.loads(capsys.readouterr().out)["ratios"] == {"llava_instruct": 1.0}


def test_convert_through_the_data_command(tmp_path, capsys):
    tsv = tmp_path / "cc.tsv"
    tsv.write_text("http://x/1.jpg\ta red circle\nbroken line without a tab\n")
    assert cli(["data", "convert", "cc12m", "--tsv", str(tsv), "--out", str(tmp_path / "cc")]) == 0
    assert "cc12m-train: 1 written, 1 skipped" in capsys.readouterr().out
    assert cli(["data", "convert", "cc12m", "--tsv", str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "x")]) == 2
    with pytest.raises(SystemExit):
        cli(["data", "convert", "no_such_recipe"])


def test_throughput_bench_runs(tmp_path, capsys):
    bench = load_script("bench/data_throughput.py")
    out = tmp_path / "bench.json"
    assert bench.main(["--workers", "0", "--per-source", "2", "--image-size", "64", "--batches", "2",
                       "--warmup", "1", "--batch-size", "4", "--json-out", str(out)]) == 0
    result = json.loads(out.read_text())
    (row,) = result["results"]
    assert row["workers"] == 0 and row["samples"] == 8 and row["samples_per_s"] > 0
    assert row["image_shape"] == [3, 256, 256] and result["resolution"] == 256
    assert "samples/s" in capsys.readouterr().out
